//! The prepare stage: the job's socket and namespace (from `ctproxy serve`), then, through that
//! socket, the job's network, its services under the host names the Docker executor gives them, and
//! the job container that the run stages exec into.
//!
//! Idempotent, as gitlab-runner's three preparation attempts need: whatever an earlier attempt
//! left is destroyed first. Images come from the job's own namespace: an image the administrator
//! shares is used as it is on the host; any other is pulled with the job's own credentials into the
//! job's namespace, so no job is handed a private image another job fetched.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

use super::docker::{DockerError, JobDocker};
use super::job_response::{ImageSpec, JobResponse};
use super::RUNNER_BINARY_IN_CONTAINER;
use super::{admission, pull};
use super::{current_job, Options, StageError};
use super::{
    BUILDS_DIR, BUILDS_VOLUME, BUILD_CONTAINER, CACHE_DIR, CACHE_VOLUME, DOCKER_HOST_NAME, HELPER_CONTAINER, NETWORK,
    SOCKET_DIR_IN_CONTAINER,
};
use crate::docker::client::enc;
use crate::jobs::api::{ControlClient, ControlError, CreateJob, JobInfo};

/// Keeps a container alive without work, and ends at once on `docker stop`.
const KEEPALIVE: &str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done";

/// The label that tells what a container is to the executor.
const ROLE_LABEL: &str = "io.ctproxy.executor.role";

fn system(e: DockerError) -> StageError {
    StageError::system(e.to_string())
}

pub async fn prepare(env: &BTreeMap<String, String>, opts: &Options) -> Result<(), StageError> {
    let key = current_job(env)?;
    let response_file = env.get("JOB_RESPONSE_FILE").ok_or_else(|| StageError::system("JOB_RESPONSE_FILE is not set"))?;
    let raw = std::fs::read(response_file).map_err(|e| StageError::system(format!("cannot read {response_file}: {e}")))?;
    let job = JobResponse::parse(&raw).map_err(|e| StageError::system(format!("cannot parse {response_file}: {e}")))?;

    // An earlier attempt's leftovers go first; then a fresh socket and namespace.
    let control = ControlClient::new(&opts.control);
    control.remove(&key, false).await.map_err(|e| refused(e, "DELETE", &key))?;
    let create = CreateJob { timeout_s: Some(job.timeout_s()), project: job.project_key() };
    let created = control.create(&key, &create).await.map_err(|e| refused(e, "PUT", &key))?;
    let socket = created.job.socket.clone();
    let socket_dir = socket.parent().map(|d| d.display().to_string()).unwrap_or_default();
    println!("Job {key}: Docker socket {} (namespace {})", socket.display(), created.job.namespace);

    let docker = JobDocker::new(&socket).map_err(system)?;
    let settings = &created.executor;
    admission::check_job(&job, settings, opts.default_image.as_deref())?;
    let credentials = pull::Credentials::from_job(&job, env.get("CUSTOM_ENV_DOCKER_AUTH_CONFIG").map(String::as_str));
    let mut puller = pull::Puller { docker: &docker, settings, credentials: &credentials, done: Vec::new() };

    let mut image = job.image.clone();
    if image.name.is_empty() {
        image.name =
            opts.default_image.clone().ok_or_else(|| StageError::build("the job names no image and the runner has no default image"))?;
    }
    puller.get(&image, None).await?;
    for service in &job.services {
        puller.get(service, None).await?;
    }

    // The network is the namespace's default one (created by ctproxy on first use, removed with
    // the namespace): the containers the job starts without a network join it too.
    for name in [BUILDS_VOLUME, CACHE_VOLUME] {
        docker
            .call(Method::POST, "/volumes/create", Some(&json!({ "Name": name, "Labels": { ROLE_LABEL: "volume" } })))
            .await
            .map_err(system)?;
    }

    let variables: Vec<String> = job.variables.iter().map(|v| format!("{}={}", v.key, v.value)).collect();
    for (i, service) in job.services.iter().enumerate() {
        start_service(&docker, i, service, &variables).await?;
    }
    if opts.wait_for_services_timeout > 0 {
        let names: Vec<String> = (0..job.services.len()).map(|i| format!("ctproxy-service-{i}")).collect();
        let timeout = std::time::Duration::from_secs(opts.wait_for_services_timeout.unsigned_abs());
        super::services::wait_for_services(&docker, &names, timeout).await.map_err(system)?;
    }

    let mut binds = vec![
        // Redirected by the job's listener to the job's own socket.
        "/var/run/docker.sock:/var/run/docker.sock".to_owned(),
        format!("{socket_dir}:{SOCKET_DIR_IN_CONTAINER}:ro"),
        format!("{BUILDS_VOLUME}:{BUILDS_DIR}"),
    ];
    binds.extend(shared_binds(&created.job));
    binds.dedup();
    let containers = [(BUILD_CONTAINER, &image)];
    let helper = opts.helper_image.as_ref().map(|name| ImageSpec {
        name: name.clone(),
        pull_policy: vec!["if-not-present".into()],
        ..Default::default()
    });
    if let Some(h) = &helper {
        // The runner's own image: the administrator's pull policy, not the job's.
        puller.get(h, Some(vec![pull::PullPolicy::IfNotPresent])).await?;
    }
    let docker_host = docker_host_entry(&docker).await?;
    for (name, spec) in containers.into_iter().chain(helper.as_ref().map(|h| (HELPER_CONTAINER, h))) {
        start_job_container(&docker, name, spec, &binds, docker_host.as_deref()).await?;
    }
    println!("Job container {BUILD_CONTAINER} ready (image {})", image.name);
    Ok(())
}

/// The binds ctproxy granted the job: the project's local cache at the cache directory (else a
/// volume of the job's own), and the host's gitlab-runner read-only for the cache and artifact
/// stages (else a warning, once: those stages then skip their transfers).
fn shared_binds(created: &JobInfo) -> Vec<String> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string()).filter(|p| !p.is_empty());
    let mut binds = vec![match path(&created.cache_dir) {
        Some(dir) => format!("{dir}:{CACHE_DIR}"),
        None => format!("{CACHE_VOLUME}:{CACHE_DIR}"),
    }];
    match path(&created.runner_binary) {
        Some(bin) => binds.push(format!("{bin}:{RUNNER_BINARY_IN_CONTAINER}:ro")),
        None => println!(
            "WARNING: no gitlab-runner binary on this host ([jobs] runner_binary of ctproxy, default /usr/bin/gitlab-runner or \
             /usr/local/bin/gitlab-runner): the cache and artifact stages will skip their transfers (\"Missing gitlab-runner\")"
        ),
    }
    binds
}

/// The `ExtraHosts` entry that makes [`DOCKER_HOST_NAME`] the gateway of the job's network: an
/// address of the daemon's host on the bridge the job's own containers join, where their published
/// ports answer (dockerd's userland proxy, or its hairpin NAT without it). `None` (with a note in
/// the log) when the network has no IPv4 gateway.
///
/// Testcontainers picks `localhost` for a Unix socket (Python) or the default gateway (Java, Go);
/// `TESTCONTAINERS_HOST_OVERRIDE` set to this name works for all of them. A name, not the address:
/// testcontainers-python gives the container port instead of the published one when the host it
/// was told equals the container's gateway address.
async fn docker_host_entry(docker: &JobDocker) -> Result<Option<String>, StageError> {
    let net = docker.inspect(&format!("/networks/{}", enc(NETWORK))).await.map_err(system)?;
    let configs = net.as_ref().and_then(|n| n.pointer("/IPAM/Config")).and_then(Value::as_array).cloned().unwrap_or_default();
    let gateway = configs.iter().filter_map(|c| c.get("Gateway").and_then(Value::as_str)?.parse::<std::net::Ipv4Addr>().ok()).next();
    match gateway {
        Some(g) => Ok(Some(format!("{DOCKER_HOST_NAME}:{g}"))),
        None => {
            println!("Note: the job network has no IPv4 gateway: {DOCKER_HOST_NAME} and TESTCONTAINERS_HOST_OVERRIDE are not set");
            Ok(None)
        }
    }
}

/// A control request that failed; ctproxy not running is a system failure that says so.
fn refused(e: ControlError, method: &str, key: &str) -> StageError {
    match e {
        ControlError::Refused { status, message } => {
            StageError::system(format!("ctproxy refused {method} of job {key}: {status}: {message}"))
        }
        e @ ControlError::NotRunning { .. } => StageError::system(format!("{e}; start it (systemctl start ctproxy)")),
        e => StageError::system(e.to_string()),
    }
}

/// A service: its image with its own entrypoint and command, the job's variables and its own, on
/// the job network (the namespace's default network) under its host names.
async fn start_service(docker: &JobDocker, i: usize, spec: &ImageSpec, job_vars: &[String]) -> Result<(), StageError> {
    let name = format!("ctproxy-service-{i}");
    let mut env = job_vars.to_vec();
    env.extend(spec.variables.iter().map(|v| format!("{}={}", v.key, v.value)));
    let aliases = spec.host_names();
    let mut body = json!({
        "Image": spec.name,
        "Env": env,
        "Labels": { ROLE_LABEL: "service" },
        "HostConfig": { "NetworkMode": NETWORK, "RestartPolicy": { "Name": "no" } },
        "NetworkingConfig": { "EndpointsConfig": { NETWORK: { "Aliases": aliases } } },
    });
    if let Some(e) = &spec.entrypoint {
        body["Entrypoint"] = json!(e);
    }
    if let Some(c) = &spec.command {
        body["Cmd"] = json!(c);
    }
    if !spec.executor_opts.docker.user.is_empty() {
        body["User"] = json!(spec.executor_opts.docker.user);
    }
    create_and_start(docker, &name, &body, spec).await?;
    println!("Service {} started as {}", spec.name, aliases.join(", "));
    Ok(())
}

/// The container the run stages exec into: the job image, kept alive, with the builds and cache
/// volumes, the job's socket at `/var/run/docker.sock` and its directory for `DOCKER_HOST`.
async fn start_job_container(
    docker: &JobDocker,
    name: &str,
    spec: &ImageSpec,
    binds: &[String],
    docker_host: Option<&str>,
) -> Result<(), StageError> {
    let mut env = vec![format!("DOCKER_HOST=unix://{SOCKET_DIR_IN_CONTAINER}/docker.sock")];
    let mut extra_hosts = Vec::new();
    if let Some(entry) = docker_host {
        // The job's own variables, exported by its script, still win.
        env.push(format!("TESTCONTAINERS_HOST_OVERRIDE={DOCKER_HOST_NAME}"));
        extra_hosts.push(entry.to_owned());
    }
    let mut body = json!({
        "Image": spec.name,
        "Cmd": ["sh", "-c", KEEPALIVE],
        "Env": env,
        "WorkingDir": BUILDS_DIR,
        "Labels": { ROLE_LABEL: name },
        "HostConfig": {
            "Binds": binds, "NetworkMode": NETWORK, "ExtraHosts": extra_hosts, "Init": true, "RestartPolicy": { "Name": "no" }
        },
    });
    // The Docker executor runs the image's own entrypoint with the shell as its command; an
    // entrypoint that is not a wrapper needs `entrypoint: [""]` there as here.
    if let Some(e) = &spec.entrypoint {
        body["Entrypoint"] = json!(e);
    }
    let user = spec.executor_opts.docker.user.as_str();
    if !user.is_empty() {
        body["User"] = json!(user);
    }
    create_and_start(docker, name, &body, spec).await?;
    // An entrypoint that exits at once would fail every stage later: say why now.
    let state = docker.inspect(&format!("/containers/{}/json", enc(name))).await.map_err(system)?;
    let running = state.as_ref().and_then(|s| s.pointer("/State/Running")).and_then(Value::as_bool) == Some(true);
    if !running {
        let code = state.as_ref().and_then(|s| s.pointer("/State/ExitCode")).and_then(Value::as_i64).unwrap_or(-1);
        return Err(StageError::build(format!(
            "the job container of image {} exited at once (status {code}): does its entrypoint run its command? (set `entrypoint: [\"\"]`)",
            spec.name
        )));
    }
    // A non-root job user must be able to write the builds and cache directories.
    if !user.is_empty() {
        let chmod = ["chmod", "0777", BUILDS_DIR, CACHE_DIR];
        docker.exec(name, &chmod, &[], Some("0"), None).await.map_err(system)?;
    }
    Ok(())
}

/// Created with the image's platform, if the job gives one ([`pull::create_query`]).
async fn create_and_start(docker: &JobDocker, name: &str, body: &Value, spec: &ImageSpec) -> Result<(), StageError> {
    let image = spec.name.as_str();
    let created = docker.call(Method::POST, &format!("/containers/create?{}", pull::create_query(name, spec)), Some(body)).await;
    match created {
        Ok(_) => {}
        Err(DockerError::Refused { status, message }) if status == StatusCode::FORBIDDEN => {
            return Err(StageError::build(format!("the job's policies refuse the container of image {image}: {message}")))
        }
        // No such image, or none for the job's platform: the job's.
        Err(DockerError::Refused { status, message }) if status == StatusCode::NOT_FOUND => {
            return Err(StageError::build(format!("the container of image {image} cannot be created: {message}")))
        }
        Err(e) => return Err(system(e)),
    }
    match docker.call(Method::POST, &format!("/containers/{}/start", enc(name)), None).await {
        Ok(_) => Ok(()),
        // The image's fault (no such command, bad user): the job's.
        Err(DockerError::Refused { status, message }) if status.is_client_error() || message.contains("OCI runtime") => {
            Err(StageError::build(format!("the container of image {image} does not start: {message}")))
        }
        Err(e) => Err(system(e)),
    }
}
