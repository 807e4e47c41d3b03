//! The GitLab Runner custom-executor stages (`ctproxy executor config|prepare|run|cleanup`), run by
//! gitlab-runner once per stage of every job (protocol: `gitlab-custom-executor.md` of the design
//! docs).
//!
//! A stage process never keeps anything alive itself: the job's socket and namespace belong to the
//! long-running `ctproxy serve`, which the stages drive over its control socket ([`crate::jobs`]).
//! Everything else (network, services, job container, pulls, execs) goes through the job's own
//! socket, so it lives in the job's namespace, under the job's policies, and goes when the job does.
//! Exit codes follow the protocol: 0 done, `BUILD_FAILURE_EXIT_CODE` for the job's own failures,
//! `SYSTEM_FAILURE_EXIT_CODE` for the infrastructure's (gitlab-runner retries those).

pub mod admission;
pub mod docker;
pub mod job_response;
mod prepare;
pub mod pull;
mod run;
mod services;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::jobs::{control_request, ControlError};

pub use prepare::prepare;
pub use run::run;

/// What prepare creates in the job's namespace (the job sees these names, unmangled).
pub const BUILD_CONTAINER: &str = "ctproxy-build";
pub const HELPER_CONTAINER: &str = "ctproxy-helper";
/// The network of the job container and the services: the namespace's own default network (what
/// the job's clients call `bridge`), where the containers the job starts without a network land
/// too, so that a published port of one is reachable from the job container (Testcontainers).
pub const NETWORK: &str = "bridge";
/// The host name that resolves, in the job container, to the gateway of [`NETWORK`] (an address of
/// the daemon's host, where published ports listen); `TESTCONTAINERS_HOST_OVERRIDE` names it.
pub const DOCKER_HOST_NAME: &str = "host.docker.internal";
pub const BUILDS_VOLUME: &str = "ctproxy-builds";
pub const CACHE_VOLUME: &str = "ctproxy-cache";
/// Where the job container sees the directory holding its socket (see [`crate::jobs`] for why a
/// directory); `DOCKER_HOST` points there.
pub const SOCKET_DIR_IN_CONTAINER: &str = "/run/ctproxy";
pub const BUILDS_DIR: &str = "/builds";
pub const CACHE_DIR: &str = "/cache";
/// Where the host's gitlab-runner binary is mounted (read-only): on the `PATH` of every image,
/// and what gitlab-runner's scripts call (`gitlab-runner`, looked up in `PATH`).
pub const RUNNER_BINARY_IN_CONTAINER: &str = "/usr/local/bin/gitlab-runner";

/// The stage options given on the command line (`[runners.custom] *_args`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The control socket of the running `ctproxy serve`.
    pub control: PathBuf,
    /// The image of jobs that name none.
    pub default_image: Option<String>,
    /// An image with git, git-lfs and `gitlab-runner` (the runner's helper image) for the stages
    /// that fetch sources and handle caches and artifacts; without it they run in the job image.
    pub helper_image: Option<String>,
    /// Seconds to wait for every exposed TCP port of the services before the build (the Docker
    /// executor's `wait_for_services_timeout`); 0 or less (-1) does not wait.
    pub wait_for_services_timeout: i64,
}

/// How a stage failed, which decides its exit code.
#[derive(Debug)]
pub enum StageError {
    /// The job's own doing (its script, its image): `BUILD_FAILURE_EXIT_CODE`, with the script's
    /// exit status in `BUILD_EXIT_CODE_FILE` when there is one.
    Build { message: String, exit_code: Option<i64> },
    /// The infrastructure's: `SYSTEM_FAILURE_EXIT_CODE` (gitlab-runner retries prepare).
    System(String),
}

impl StageError {
    pub fn build(message: impl Into<String>) -> StageError {
        StageError::Build { message: message.into(), exit_code: None }
    }

    pub fn system(message: impl Into<String>) -> StageError {
        StageError::System(message.into())
    }

    /// Reports the failure on stderr (the job log), writes the exit-code file, and returns the code
    /// the stage exits with.
    pub fn exit_code(&self, stage: &str, codes: &ExitCodes) -> u8 {
        match self {
            StageError::Build { message, exit_code } => {
                if !message.is_empty() {
                    eprintln!("ctproxy executor {stage}: {message}");
                }
                if let (Some(code), Ok(file)) = (exit_code, std::env::var("BUILD_EXIT_CODE_FILE")) {
                    // A bare integer, as gitlab-runner's strconv.Atoi wants it.
                    if let Err(e) = std::fs::write(&file, format!("{code}\n")) {
                        eprintln!("ctproxy executor {stage}: cannot write {file}: {e}");
                    }
                }
                codes.build_failure
            }
            StageError::System(message) => {
                eprintln!("ctproxy executor {stage}: {message}");
                codes.system_failure
            }
        }
    }
}

/// The job's key: the one config handed over in `job_env`, else derived again.
fn current_job(env: &BTreeMap<String, String>) -> Result<String, StageError> {
    env.get("CTPROXY_JOB")
        .filter(|k| !k.is_empty())
        .cloned()
        .or_else(|| job_key(env))
        .ok_or_else(|| StageError::system("no CTPROXY_JOB and no CUSTOM_ENV_CI_JOB_ID: not run by gitlab-runner?"))
}

/// A live job as the control socket describes it.
struct LiveJob {
    socket: PathBuf,
    /// The daemon's own socket, when it is local.
    daemon: Option<PathBuf>,
}

/// The live job `key`. A ctproxy that is restarting (its control socket missing for a moment) is
/// waited for, up to 15 s: a restart must not fail the stages of running jobs.
async fn live_job(control: &Path, key: &str) -> Result<LiveJob, StageError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let answer = loop {
        match control_request(control, Method::GET, &format!("/jobs/{key}"), None).await {
            Err(ControlError::NotRunning { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(StageError::system(e.to_string())),
            Ok(a) => break a,
        }
    };
    match answer {
        (StatusCode::OK, v) => {
            let socket = v.get("socket").and_then(|s| s.as_str()).map(PathBuf::from);
            let socket = socket.ok_or_else(|| StageError::system("the control socket answered without a job socket"))?;
            let daemon = v.get("daemon").and_then(|d| d.as_str()).and_then(|d| d.strip_prefix("unix://")).map(PathBuf::from);
            Ok(LiveJob { socket, daemon })
        }
        (status, v) => Err(StageError::system(format!(
            "job {key} is not live in ctproxy ({status}: {}): was prepare run, or was the job reaped?",
            v.get("message").and_then(|m| m.as_str()).unwrap_or("")
        ))),
    }
}

/// The protocol's exit codes, from the environment gitlab-runner gives every stage.
pub struct ExitCodes {
    pub build_failure: u8,
    pub system_failure: u8,
}

impl ExitCodes {
    pub fn from_env() -> ExitCodes {
        let code = |k: &str, d: u8| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        ExitCodes { build_failure: code("BUILD_FAILURE_EXIT_CODE", 1), system_failure: code("SYSTEM_FAILURE_EXIT_CODE", 2) }
    }
}

/// The job's key on this host: `r<runner id>-<job id>`, from the `CUSTOM_ENV_*` variables. Job IDs
/// are unique per GitLab instance; the runner ID keeps two runners' jobs apart.
pub fn job_key(env: &BTreeMap<String, String>) -> Option<String> {
    let clean = |v: &str| -> String { v.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase() };
    let job = env.get("CUSTOM_ENV_CI_JOB_ID").map(|v| clean(v)).filter(|v| !v.is_empty())?;
    let runner = env.get("CUSTOM_ENV_CI_RUNNER_ID").map(|v| clean(v)).filter(|v| !v.is_empty()).unwrap_or_else(|| "0".into());
    Some(format!("r{runner}-{job}"))
}

#[derive(Serialize)]
struct Driver {
    name: &'static str,
    version: &'static str,
}

/// What the config stage prints: exactly one JSON object, nothing else on stdout.
#[derive(Serialize)]
pub struct ConfigOutput {
    builds_dir: &'static str,
    cache_dir: &'static str,
    builds_dir_is_shared: bool,
    hostname: String,
    driver: Driver,
    job_env: BTreeMap<String, String>,
}

/// The config stage's answer for this job.
pub fn config(env: &BTreeMap<String, String>, control: &Path) -> Result<ConfigOutput, String> {
    let key = job_key(env).ok_or("CUSTOM_ENV_CI_JOB_ID is not set: not run by gitlab-runner?")?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let job_env = BTreeMap::from([("CTPROXY_JOB".to_owned(), key), ("CTPROXY_CONTROL".to_owned(), control.display().to_string())]);
    Ok(ConfigOutput {
        builds_dir: BUILDS_DIR,
        cache_dir: CACHE_DIR,
        builds_dir_is_shared: false,
        hostname,
        driver: Driver { name: "ctproxy", version: env!("CARGO_PKG_VERSION") },
        job_env,
    })
}

/// Reports a stage's wall time to `ctproxy serve` for its metrics. Best-effort: a report that
/// fails (ctproxy restarting, an older ctproxy) is logged to stderr and never fails the stage.
pub async fn report_stage(env: &BTreeMap<String, String>, control: &Path, stage: crate::metrics::Stage, took: std::time::Duration) {
    let Some(key) = env.get("CTPROXY_JOB").filter(|k| !k.is_empty()).cloned().or_else(|| job_key(env)) else { return };
    let body = serde_json::json!({ "stage": stage, "seconds": took.as_secs_f64() });
    let path = format!("/jobs/{key}/stages");
    let report = control_request(control, Method::POST, &path, Some(body));
    match tokio::time::timeout(std::time::Duration::from_secs(2), report).await {
        Ok(Ok((StatusCode::OK, _))) => {}
        Ok(Ok((status, _))) => eprintln!("ctproxy executor: stage metrics not reported: {status}"),
        Ok(Err(e)) => eprintln!("ctproxy executor: stage metrics not reported: {e}"),
        Err(_) => eprintln!("ctproxy executor: stage metrics not reported: no answer in 2 s"),
    }
}

/// The cleanup stage: removes the job's socket and everything the job created. Tolerates a job
/// that was never prepared (config failed, job_env empty) and runs any number of times.
pub async fn cleanup(env: &BTreeMap<String, String>, control: &Path) -> Result<String, (bool, String)> {
    let key = match env.get("CTPROXY_JOB").cloned().or_else(|| job_key(env)) {
        Some(k) => k,
        None => return Ok("no job to clean up (no CTPROXY_JOB, no CUSTOM_ENV_CI_JOB_ID)".into()),
    };
    // The job's containers are gone when this answers; its networks, volumes and images follow in
    // ctproxy (dockerd's network removal is slow, and the job's status waits for cleanup).
    match control_request(control, Method::DELETE, &format!("/jobs/{key}?rest=background"), None).await {
        Ok((StatusCode::OK, v)) => Ok(format!("job {key} removed: {}", v.get("removed").cloned().unwrap_or_default())),
        Ok((status, v)) => {
            Err((true, format!("job {key} not removed: {status}: {}", v.get("message").and_then(|m| m.as_str()).unwrap_or(""))))
        }
        Err(e @ ControlError::NotRunning { .. }) => Err((true, e.to_string())),
        Err(e) => Err((true, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn job_keys() {
        assert_eq!(job_key(&env(&[("CUSTOM_ENV_CI_JOB_ID", "1234"), ("CUSTOM_ENV_CI_RUNNER_ID", "7")])).as_deref(), Some("r7-1234"));
        assert_eq!(job_key(&env(&[("CUSTOM_ENV_CI_JOB_ID", "12/34;x")])).as_deref(), Some("r0-1234x"));
        assert_eq!(job_key(&env(&[])), None);
    }

    #[test]
    fn config_is_one_json_object() {
        let out = config(&env(&[("CUSTOM_ENV_CI_JOB_ID", "9")]), Path::new("/run/ctproxy/control.sock")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(v["builds_dir"], "/builds");
        assert_eq!(v["job_env"]["CTPROXY_JOB"], "r0-9");
        assert_eq!(v["driver"]["name"], "ctproxy");
    }
}
