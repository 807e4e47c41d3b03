//! How prepare gets the job's and the services' images, as gitlab-runner's Docker executor does
//! (`executors/docker/internal/pull`): pull policies, registry credentials and platform.
//!
//! - **Pull policies.** The job's own (`pull_policy:` of the image or service), else the runner's
//!   (`[jobs.executor] pull_policy`, default `always`), limited to `allowed_pull_policies` (default:
//!   the runner's `pull_policy`); none left is the job's failure. They are tried in order: `never`
//!   uses what the job's namespace sees or fails, `if-not-present` uses that or pulls, `always`
//!   pulls. A shared image ([`crate::plugin::namespace`]) is the administrator's: the namespace
//!   answers its pull with "up to date" from the host's copy, so `always` never fetches it, and
//!   `never` finds it when the administrator has it.
//! - **Credentials.** `DOCKER_AUTH_CONFIG` first, then the payload's `credentials` (which GitLab
//!   fills with `CI_JOB_TOKEN` for its registry), then `CI_JOB_TOKEN` for `CI_REGISTRY` when the
//!   payload has no entry for it; the first source to name a registry path wins and the longest
//!   path matching the image is used. They go in `X-Registry-Auth` of these pulls only: the job's
//!   socket keeps nothing, so the job's own calls never carry them.
//! - **Platform.** The image's `docker.platform` goes with the pull (`platform` query); the
//!   containers are created with it too ([`create_query`]).

use std::io::Write;

use base64::Engine as _;
use hyper::header::HeaderValue;
use serde_json::Value;

use super::docker::{DockerError, JobDocker, PullError};
use super::job_response::{ImageSpec, JobResponse};
use super::StageError;
use crate::config::ExecutorConfig;
use crate::docker::auth_config::{encode_header, AuthConfig};
use crate::docker::client::enc;
use crate::docker::reference::Reference;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }
}

/// Go's `%v` of a string slice: `[always if-not-present]`.
fn go_list(list: &[PullPolicy]) -> String {
    format!("[{}]", list.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" "))
}

fn parse_list(list: &[String], what: &str) -> Result<Vec<PullPolicy>, String> {
    list.iter().map(|p| PullPolicy::parse(p).ok_or_else(|| format!("unsupported {what} config: {p:?}"))).collect()
}

/// gitlab-runner's `ComputeEffectivePullPolicies`: the job's policies (else the runner's, else
/// `always`) that `allowed_pull_policies` (else the runner's) contains, in the job's order.
pub fn effective_policies(image: &str, job: &[String], settings: &ExecutorConfig) -> Result<Vec<PullPolicy>, String> {
    let invalid = |e: String| format!("invalid pull policy for image {image:?}: {e}");
    let job = parse_list(job, "pull_policy").map_err(invalid)?;
    let mut runner = parse_list(&settings.pull_policy, "pull_policy").map_err(invalid)?;
    if runner.is_empty() {
        runner = vec![PullPolicy::Always];
    }
    let allowed = match parse_list(&settings.allowed_pull_policies, "allowed_pull_policies").map_err(invalid)? {
        a if a.is_empty() => runner.clone(),
        a => a,
    };
    let wanted = if job.is_empty() { runner.clone() } else { job.clone() };
    let effective: Vec<PullPolicy> = wanted.iter().copied().filter(|p| allowed.contains(p)).collect();
    if effective.is_empty() {
        let source = if !job.is_empty() {
            "GitLab pipeline config"
        } else if !settings.pull_policy.is_empty() {
            "Runner config"
        } else {
            "Runner config (default)"
        };
        return Err(invalid(format!(
            "pull_policy ({}) defined in {source} is not one of the allowed_pull_policies ({})",
            go_list(&wanted),
            go_list(&allowed)
        )));
    }
    Ok(effective)
}

/// The registry credentials of the job, by registry path (`registry.example.com`,
/// `registry.example.com/group`, `docker.io`), the first source to name a path winning.
pub struct Credentials {
    by_path: Vec<(String, &'static str, AuthConfig)>,
}

/// gitlab-runner's `convertToRegistryPath`: a URL keeps its host only (`https://index.docker.io/v1/`
/// is `docker.io`); anything else keeps its path, without a tag, with a lower-case host.
fn registry_path(server: &str) -> String {
    let lower = server.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")) {
        let host = rest.split('/').next().unwrap_or(rest);
        return if host == "index.docker.io" { "docker.io".into() } else { host.to_owned() };
    }
    let mut path = server.trim_end_matches('/');
    if let (Some(colon), Some(slash)) = (path.rfind(':'), path.rfind('/')) {
        if colon > slash {
            path = &path[..colon];
        }
    }
    lower_host(path)
}

fn lower_host(path: &str) -> String {
    match path.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.to_ascii_lowercase()),
        None => path.to_ascii_lowercase(),
    }
}

/// gitlab-runner's `normalizeImageRef`: without tag, `docker.io/` added to Docker Hub names (no
/// `library/`), `index.docker.io` spelled `docker.io`.
fn image_path(image: &str) -> String {
    let image = image.split('@').next().unwrap_or(image);
    let (dir, last) = match image.rfind('/') {
        Some(i) => (&image[..=i], &image[i + 1..]),
        None => ("", image),
    };
    let normalized = format!("{dir}{}", last.split(':').next().unwrap_or(last));
    let first = normalized.split('/').next().unwrap_or("");
    let docker_io = !normalized.contains('/') || (!first.contains('.') && !first.contains(':') && !first.eq_ignore_ascii_case("localhost"));
    let normalized = if docker_io {
        format!("docker.io/{normalized}")
    } else if first.eq_ignore_ascii_case("index.docker.io") {
        normalized["index.".len()..].to_owned()
    } else {
        normalized
    };
    lower_host(&normalized)
}

impl Credentials {
    /// The sources in gitlab-runner's order: `DOCKER_AUTH_CONFIG` (a job variable, else the stage's
    /// `CUSTOM_ENV_DOCKER_AUTH_CONFIG`), the payload's `credentials`, then `CI_JOB_TOKEN` for
    /// `CI_REGISTRY`. (gitlab-runner also reads the runner user's `~/.docker/config.json` second;
    /// ctproxy does not hand the host's credentials to jobs.)
    pub fn from_job(job: &JobResponse, env_docker_auth_config: Option<&str>) -> Credentials {
        let var = |k: &str| job.variables.iter().rev().find(|v| v.key == k).map(|v| v.value.as_str()).filter(|v| !v.is_empty());
        let mut c = Credentials { by_path: Vec::new() };
        if let Some(cfg) = var("DOCKER_AUTH_CONFIG").or(env_docker_auth_config) {
            for (server, auth) in docker_auth_config(cfg) {
                c.add(&server, "$DOCKER_AUTH_CONFIG", auth);
            }
        }
        for cr in job.credentials.iter().filter(|c| c.kind == "registry") {
            let auth = AuthConfig {
                username: cr.username.clone(),
                password: cr.password.clone(),
                serveraddress: cr.url.clone(),
                ..Default::default()
            };
            c.add(&cr.url, "job payload (GitLab Registry)", auth);
        }
        if let (Some(registry), Some(token)) = (var("CI_REGISTRY"), var("CI_JOB_TOKEN")) {
            let auth = AuthConfig {
                username: "gitlab-ci-token".into(),
                password: token.to_owned(),
                serveraddress: registry.to_owned(),
                ..Default::default()
            };
            c.add(registry, "CI_JOB_TOKEN for CI_REGISTRY", auth);
        }
        c
    }

    fn add(&mut self, server: &str, source: &'static str, auth: AuthConfig) {
        let path = registry_path(server);
        if !path.is_empty() && !self.by_path.iter().any(|(p, _, _)| *p == path) {
            self.by_path.push((path, source, auth));
        }
    }

    /// The credentials for `image` (the longest registry path it is under) and their source.
    pub fn for_image(&self, image: &str) -> Option<(HeaderValue, &'static str)> {
        let mut path = image_path(image);
        loop {
            if let Some((_, source, auth)) = self.by_path.iter().find(|(p, _, _)| *p == path) {
                return Some((encode_header(auth), source));
            }
            path = path.rsplit_once('/')?.0.to_owned();
        }
    }
}

/// The `auths` of a Docker config (`auth` as base64 `user:password`, or `username`/`password`),
/// sorted by server as gitlab-runner reads them. Credential helpers and stores are not run.
fn docker_auth_config(text: &str) -> Vec<(String, AuthConfig)> {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let Some(Value::Object(auths)) = parsed.as_ref().and_then(|v| v.get("auths")) else {
        if parsed.is_none() {
            println!("WARNING: Failed to resolve credentials from $DOCKER_AUTH_CONFIG: not valid JSON. Credentials from this source will not be used.");
        }
        return Vec::new();
    };
    let mut out = Vec::new();
    for (server, entry) in auths {
        let field = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let (mut username, mut password) = (field("username"), field("password"));
        if let Some(decoded) = base64::engine::general_purpose::STANDARD.decode(field("auth")).ok().and_then(|b| String::from_utf8(b).ok())
        {
            if let Some((u, p)) = decoded.split_once(':') {
                (username, password) = (u.to_owned(), p.to_owned());
            }
        }
        out.push((server.clone(), AuthConfig { username, password, serveraddress: server.clone(), ..Default::default() }));
    }
    out
}

fn system(e: DockerError) -> StageError {
    StageError::system(e.to_string())
}

/// What prepare needs to get images.
pub struct Puller<'a> {
    pub docker: &'a JobDocker,
    pub settings: &'a ExecutorConfig,
    pub credentials: &'a Credentials,
    /// Images already got by this stage (gitlab-runner's "used images"): not fetched twice.
    pub done: Vec<String>,
}

impl Puller<'_> {
    /// Gets `spec`'s image with its effective pull policies, tried in order as gitlab-runner does.
    /// `policies`: the policies to use instead of the job's (the runner's own helper image).
    pub async fn get(&mut self, spec: &ImageSpec, policies: Option<Vec<PullPolicy>>) -> Result<(), StageError> {
        let name = spec.name.as_str();
        if self.done.iter().any(|d| d == name) {
            return Ok(());
        }
        if Reference::parse(name).is_err() {
            return Err(StageError::build(format!("image {name:?} is not a valid image reference")));
        }
        let policies = match policies {
            Some(p) => p,
            None => effective_policies(name, &spec.pull_policy, self.settings).map_err(|e| {
                println!("ERROR: {e}");
                StageError::build(String::new())
            })?,
        };
        println!("Using effective pull policy of {} for container {name}", go_list(&policies));
        let platform = spec.executor_opts.docker.platform.as_str();
        let mut last = String::new();
        for (i, policy) in policies.iter().enumerate() {
            if i > 0 {
                println!("Attempt #{}: Trying {:?} pull policy", i + 1, policy.as_str());
            }
            match self.attempt(name, platform, *policy).await {
                Ok(()) => {
                    self.done.push(name.to_owned());
                    return Ok(());
                }
                Err(Attempt::System(e)) => return Err(e),
                Err(Attempt::Failed(e)) => {
                    println!("WARNING: Failed to pull image with policy {:?}: {e}", policy.as_str());
                    last = e;
                }
            }
        }
        println!("ERROR: failed to pull image {name:?} with specified policies {}: {last}", go_list(&policies));
        Err(StageError::build(String::new()))
    }

    async fn inspect(&self, name: &str) -> Result<Option<Value>, Attempt> {
        self.docker.inspect(&format!("/images/{}/json", enc(name))).await.map_err(|e| Attempt::System(system(e)))
    }

    async fn attempt(&self, name: &str, platform: &str, policy: PullPolicy) -> Result<(), Attempt> {
        let found = self.inspect(name).await?;
        match (policy, found) {
            (PullPolicy::Never, None) => return Err(Attempt::Failed(format!("Error response from daemon: No such image: {name}"))),
            (PullPolicy::Never, Some(img)) => return used(name, &img),
            (PullPolicy::IfNotPresent, Some(img)) => {
                println!("Using locally found image version due to \"if-not-present\" pull policy");
                return used(name, &img);
            }
            // An image given by its ID is not pulled.
            (_, Some(img)) if img.get("Id").and_then(Value::as_str) == Some(name) => return used(name, &img),
            _ => {}
        }
        match platform {
            "" => println!("Pulling docker image {name} ..."),
            p => println!("Pulling docker image {name} for platform {p} ..."),
        }
        let auth = self.credentials.for_image(name);
        if let Some((_, source)) = &auth {
            println!("Authenticating with credentials from {source}");
        }
        // As gitlab-runner: `:latest` when the name has no tag nor digest (never every tag).
        let reference = if name.contains([':', '@']) { name.to_owned() } else { format!("{name}:latest") };
        let mut out = std::io::stdout().lock();
        let pulled = self.docker.pull_with(&reference, auth.as_ref().map(|(h, _)| h), platform, &mut out).await;
        let _ = out.flush();
        match pulled {
            Ok(()) => {}
            Err(PullError::Docker(e @ DockerError::Unreachable(_))) => return Err(Attempt::System(system(e))),
            Err(e) => return Err(Attempt::Failed(e.to_string())),
        }
        match self.inspect(name).await? {
            Some(img) => used(name, &img),
            None => Err(Attempt::Failed(format!("inspecting image {name:?} after pull: No such image: {name}"))),
        }
    }
}

enum Attempt {
    System(StageError),
    Failed(String),
}

fn used(name: &str, img: &Value) -> Result<(), Attempt> {
    let id = img.get("Id").and_then(Value::as_str).unwrap_or("");
    match img.get("RepoDigests").and_then(|d| d.get(0)).and_then(Value::as_str) {
        Some(digest) => println!("Using docker image {id} for {name} with digest {digest} ..."),
        None => println!("Using docker image {id} for {name} ..."),
    }
    Ok(())
}

/// The query of a container create of `spec`'s image: its name, and its platform when it has one.
pub fn create_query(container: &str, spec: &ImageSpec) -> String {
    let mut q = format!("name={}", enc(container));
    let platform = spec.executor_opts.docker.platform.as_str();
    if !platform.is_empty() {
        q.push_str(&format!("&platform={}", enc(platform)));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::super::job_response::{Credential, Variable};
    use super::*;

    fn settings(pull: &[&str], allowed: &[&str]) -> ExecutorConfig {
        ExecutorConfig {
            pull_policy: pull.iter().map(|s| s.to_string()).collect(),
            allowed_pull_policies: allowed.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pull_policies_as_gitlab_runner_computes_them() {
        use PullPolicy::*;
        assert_eq!(effective_policies("a", &[], &settings(&[], &[])).unwrap(), [Always]);
        assert_eq!(effective_policies("a", &list(&["never"]), &settings(&["never", "always"], &[])).unwrap(), [Never]);
        assert_eq!(
            effective_policies("a", &list(&["always", "if-not-present"]), &settings(&[], &["if-not-present", "always"])).unwrap(),
            [Always, IfNotPresent]
        );
        let e = effective_policies("alpine", &list(&["never"]), &settings(&[], &[])).unwrap_err();
        assert_eq!(
            e,
            "invalid pull policy for image \"alpine\": pull_policy ([never]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([always])"
        );
        let e = effective_policies("a", &[], &settings(&["always"], &["never"])).unwrap_err();
        assert!(e.contains("defined in Runner config is not"), "{e}");
        assert!(effective_policies("a", &list(&["sometimes"]), &settings(&[], &[])).unwrap_err().contains("unsupported pull_policy"));
    }

    #[test]
    fn credentials_follow_gitlab_runner_precedence() {
        let job = JobResponse {
            credentials: vec![
                Credential { kind: "registry".into(), url: "registry.example.com".into(), username: "payload".into(), password: "p".into() },
                Credential { kind: "registry".into(), url: "other.example.com:5000".into(), username: "payload".into(), password: "p".into() },
            ],
            variables: vec![
                Variable { key: "DOCKER_AUTH_CONFIG".into(), value: r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"},"https://index.docker.io/v1/":{"username":"hub","password":"h"},"registry.example.com/team":{"username":"team","password":"t"}}}"#.into() },
                Variable { key: "CI_REGISTRY".into(), value: "gitlab.example.com:5050".into() },
                Variable { key: "CI_JOB_TOKEN".into(), value: "tok".into() },
            ],
            ..Default::default()
        };
        let c = Credentials::from_job(&job, None);
        let user = |image: &str| c.for_image(image).map(|(h, s)| (crate::docker::auth_config::decode_header(&h).unwrap().username, s));
        // DOCKER_AUTH_CONFIG wins over the payload for the same registry.
        assert_eq!(user("registry.example.com/app:1"), Some(("user".into(), "$DOCKER_AUTH_CONFIG")));
        // The longest path wins.
        assert_eq!(user("registry.example.com/team/app"), Some(("team".into(), "$DOCKER_AUTH_CONFIG")));
        assert_eq!(user("other.example.com:5000/x/y:2"), Some(("payload".into(), "job payload (GitLab Registry)")));
        assert_eq!(user("busybox"), Some(("hub".into(), "$DOCKER_AUTH_CONFIG")));
        assert_eq!(user("gitlab.example.com:5050/group/app:1"), Some(("gitlab-ci-token".into(), "CI_JOB_TOKEN for CI_REGISTRY")));
        assert_eq!(user("elsewhere.example.com/app"), None);
    }

    #[test]
    fn registry_paths_as_gitlab_runner_spells_them() {
        assert_eq!(image_path("ruby:3"), "docker.io/ruby");
        assert_eq!(image_path("Registry.Example.com:5000/Team/app:1@sha256:00"), "registry.example.com:5000/Team/app");
        assert_eq!(image_path("index.docker.io/library/ruby"), "docker.io/library/ruby");
        assert_eq!(registry_path("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_path("registry.example.com:5000/"), "registry.example.com:5000");
        assert_eq!(registry_path("registry.example.com/team:x"), "registry.example.com/team");
    }
}
