//! The job payload gitlab-runner writes to `JOB_RESPONSE_FILE`: the only place the image's
//! entrypoint, command, pull policy and user, the services' full settings and the registry
//! credentials are given to a custom executor.
//!
//! Parsed leniently, as the protocol asks: unknown fields are ignored, missing ones take their zero
//! value, and Go's `null` for an empty list is an empty list. Older runners wrote fewer fields.

use serde::{Deserialize, Deserializer};

/// `null` (Go's nil slice or map) reads as the type's default.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct JobResponse {
    pub id: u64,
    #[serde(deserialize_with = "nullable")]
    pub job_info: JobInfo,
    #[serde(deserialize_with = "nullable")]
    pub git_info: GitInfo,
    #[serde(deserialize_with = "nullable")]
    pub runner_info: RunnerInfo,
    #[serde(deserialize_with = "nullable")]
    pub variables: Vec<Variable>,
    #[serde(deserialize_with = "nullable")]
    pub image: ImageSpec,
    #[serde(deserialize_with = "nullable")]
    pub services: Vec<ImageSpec>,
    #[serde(deserialize_with = "nullable")]
    pub credentials: Vec<Credential>,
}

/// What GitLab says of the job's project. Unlike `CI_PROJECT_ID` and `CI_PROJECT_PATH` among the
/// variables, which a job's own `variables:` can override, these come from the server alone.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct JobInfo {
    pub project_id: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct GitInfo {
    /// `https://gitlab-ci-token:<token>@host/group/project.git`, built by the server (or by the
    /// runner's `clone_url`, an administrator's setting).
    #[serde(deserialize_with = "nullable")]
    pub repo_url: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunnerInfo {
    /// The job timeout in seconds (0 or less: the runner's default, 7200 s).
    pub timeout: i64,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Variable {
    #[serde(deserialize_with = "nullable")]
    pub key: String,
    #[serde(deserialize_with = "nullable")]
    pub value: String,
}

/// `image:` or one entry of `services:`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ImageSpec {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Comma- or space-separated host names (services).
    #[serde(deserialize_with = "nullable")]
    pub alias: String,
    /// `None`: the image's own; `Some([""])`: none at all.
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    #[serde(deserialize_with = "nullable")]
    pub pull_policy: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub variables: Vec<Variable>,
    #[serde(deserialize_with = "nullable")]
    pub executor_opts: ExecutorOpts,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ExecutorOpts {
    #[serde(deserialize_with = "nullable")]
    pub docker: DockerOpts,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DockerOpts {
    #[serde(deserialize_with = "nullable")]
    pub platform: String,
    #[serde(deserialize_with = "nullable")]
    pub user: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Credential {
    #[serde(rename = "type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub url: String,
    #[serde(deserialize_with = "nullable")]
    pub username: String,
    #[serde(deserialize_with = "nullable")]
    pub password: String,
}

impl JobResponse {
    pub fn parse(bytes: &[u8]) -> Result<JobResponse, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The key of the project's local cache: the server and path of `git_info.repo_url` (the
    /// runner's own `<cache_dir>/<slug>` is that path) with `job_info.project_id`, so that a
    /// renamed project's old path never hands its cache to a newcomer. Only what the server sent
    /// counts: a job that sets `CI_PROJECT_PATH` or `CI_SERVER_HOST` in its own variables
    /// cannot reach another project's cache. `None` when the payload names no project.
    pub fn project_key(&self) -> Option<String> {
        let url = self.git_info.repo_url.trim();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let id = self.job_info.project_id;
        match (host.is_empty() || path.is_empty(), id) {
            (true, 0) => None,
            (true, id) => Some(format!("project-{id}")),
            (false, 0) => Some(format!("{host}/{path}")),
            (false, id) => Some(format!("{host}/{path}#{id}")),
        }
    }

    /// The job timeout, with the runner's default.
    pub fn timeout_s(&self) -> u64 {
        if self.runner_info.timeout > 0 {
            self.runner_info.timeout as u64
        } else {
            7200
        }
    }
}

impl ImageSpec {
    /// The service's host names as the Docker executor gives them: the image name without tag,
    /// digest and registry port, with `/` as `__` and as `-`, then every alias.
    pub fn host_names(&self) -> Vec<String> {
        let name = self.name.split('@').next().unwrap_or("");
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let name = match name[last_slash..].rfind(':') {
            Some(i) => &name[..last_slash + i],
            None => name,
        };
        // A registry port (`registry:5000/x`) is not part of a host name.
        let name: String = match name.split_once('/') {
            Some((domain, rest)) if domain.contains(':') => format!("{}/{rest}", domain.split(':').next().unwrap_or(domain)),
            _ => name.to_owned(),
        };
        let mut out = Vec::new();
        let mut add = |n: String| {
            if !n.is_empty() && !out.contains(&n) {
                out.push(n);
            }
        };
        add(name.replace('/', "__"));
        add(name.replace('/', "-"));
        for a in self.alias.split([',', ' ']).map(str::trim) {
            add(a.to_owned());
        }
        out
    }

    /// Whether the job's pull policies allow pulling at all.
    pub fn may_pull(&self) -> bool {
        self.pull_policy.is_empty() || self.pull_policy.iter().any(|p| p != "never")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_runner_payload_leniently() {
        let raw = br#"{"id":42,"token":"x","runner_info":{"timeout":600},"variables":[{"key":"A","value":"1","public":true}],
            "image":{"name":"alpine:3","entrypoint":null,"pull_policy":["if-not-present"],"executor_opts":{"docker":{"platform":"","user":"1000"}}},
            "services":null,"credentials":[{"type":"registry","url":"r.example","username":"u","password":"p"}],"features":{}}"#;
        let j = JobResponse::parse(raw).unwrap();
        assert_eq!(j.id, 42);
        assert_eq!(j.timeout_s(), 600);
        assert_eq!(j.image.executor_opts.docker.user, "1000");
        assert!(j.image.entrypoint.is_none());
        assert!(j.services.is_empty());
        assert_eq!(j.credentials[0].kind, "registry");
        assert_eq!(JobResponse::parse(b"{}").unwrap().timeout_s(), 7200);
    }

    #[test]
    fn the_project_key_comes_from_what_the_server_sent_not_from_variables() {
        let raw =
            br#"{"job_info":{"project_id":7},"git_info":{"repo_url":"https://gitlab-ci-token:t@ok@gitlab.example:8443/group/sub/app.git"},
            "variables":[{"key":"CI_PROJECT_PATH","value":"victim/app"},{"key":"CI_SERVER_HOST","value":"other.example"}]}"#;
        assert_eq!(JobResponse::parse(raw).unwrap().project_key().as_deref(), Some("gitlab.example:8443/group/sub/app#7"));
        let key = |json: &str| JobResponse::parse(json.as_bytes()).unwrap().project_key();
        assert_eq!(key(r#"{"job_info":{"project_id":7}}"#).as_deref(), Some("project-7"));
        assert_eq!(key(r#"{"git_info":{"repo_url":"https://h/g/p.git/"}}"#).as_deref(), Some("h/g/p"));
        assert_eq!(key(r#"{"variables":[{"key":"CI_PROJECT_PATH","value":"victim/app"}]}"#), None);
        assert_eq!(key(r#"{"job_info":null,"git_info":{"repo_url":null}}"#), None);
    }

    #[test]
    fn service_host_names_follow_the_docker_executor() {
        let s = |name: &str, alias: &str| ImageSpec { name: name.into(), alias: alias.into(), ..Default::default() };
        assert_eq!(s("postgres:15", "").host_names(), ["postgres"]);
        assert_eq!(
            s("registry.example.com:5000/group/redis:7@sha256:abc", "cache, kv").host_names(),
            ["registry.example.com__group__redis", "registry.example.com-group-redis", "cache", "kv"]
        );
    }
}
