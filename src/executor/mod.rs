//! The GitLab Runner custom-executor stages (`ctproxy executor config|prepare|run|cleanup`), run by
//! gitlab-runner once per stage of every job (protocol: `gitlab-custom-executor.md` of the design
//! docs).
//!
//! A stage process never keeps anything alive itself: the job's socket and namespace belong to the
//! long-running `ctproxy serve`, which the stages drive over its control socket ([`crate::jobs`]).
//! Everything else (network, services, job container, pulls, execs) goes through the job's own
//! socket, so it lives in the job's namespace, under the job's policies, and goes when the job does.
//! Exit codes follow the protocol: 0 done, `BUILD_FAILURE_EXIT_CODE` for the job's own failures,
//! `SYSTEM_FAILURE_EXIT_CODE` for the infrastructure's (gitlab-runner retries those); each stage's
//! error type says which it is, and [`exit::exit_code`] alone turns that into the code.

pub mod admission;
pub mod docker;
pub mod exit;
pub mod job_response;
mod prepare;
pub mod pull;
mod run;
mod services;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::jobs::api::{ControlClient, ControlError, StageReport};
use job_response::JobResponse;

pub use exit::{exit_code, ExitCodes, Failure, StageFailure};
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

/// How prepare or run failed (the two stages that drive the job's containers share their helpers,
/// and so their error type); which failure it is decides the exit code ([`exit::exit_code`]).
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
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Build { message, .. } | StageError::System(message) => f.write_str(message),
        }
    }
}

impl StageFailure for StageError {
    fn failure(&self) -> Failure {
        match self {
            StageError::Build { exit_code, .. } => Failure::Build { exit_code: *exit_code },
            StageError::System(_) => Failure::System,
        }
    }
}

/// How the config stage failed: always the infrastructure's (the job is not run by gitlab-runner,
/// or its answer cannot be written).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("CUSTOM_ENV_CI_JOB_ID is not set: not run by gitlab-runner?")]
    NoJob,
    #[error("{0}")]
    Output(String),
}

impl StageFailure for ConfigError {
    fn failure(&self) -> Failure {
        Failure::System
    }
}

/// How the cleanup stage failed: always the infrastructure's (the job stays for the reaper).
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// ctproxy answered, and did not remove the job.
    #[error("job {key} not removed: {status}: {message}")]
    Refused { key: String, status: hyper::StatusCode, message: String },
    /// ctproxy is not running, or its answer broke off.
    #[error("{0}")]
    Control(ControlError),
    #[error("{0}")]
    Runtime(String),
}

impl StageFailure for CleanupError {
    fn failure(&self) -> Failure {
        Failure::System
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

/// The live job `key`. A ctproxy that is restarting (its control socket missing for a moment) is
/// waited for, up to 15 s: a restart must not fail the stages of running jobs.
async fn live_job(control: &Path, key: &str) -> Result<crate::jobs::JobInfo, StageError> {
    let client = ControlClient::new(control);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match client.get(key).await {
            Err(ControlError::NotRunning { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Ok(job) => return Ok(job),
            Err(ControlError::Refused { status, message }) => {
                return Err(StageError::system(format!(
                    "job {key} is not live in ctproxy ({status}: {message}): was prepare run, or was the job reaped?"
                )))
            }
            Err(e @ ControlError::Malformed(_)) => return Err(StageError::system(format!("job {key}: {e}"))),
            Err(e) => return Err(StageError::system(e.to_string())),
        }
    }
}

/// The job's key on this host: `r<runner id>-<job id>`. Job IDs are unique per GitLab instance;
/// the runner ID keeps two runners' jobs apart. The job ID is the payload's `id`
/// (`JOB_RESPONSE_FILE`, written by gitlab-runner before every stage), which only the server sets:
/// `CUSTOM_ENV_CI_JOB_ID` is a job variable, and a job's own `variables:` come after GitLab's and
/// win, so a job could name a running job's ID there, and its prepare would remove that job and
/// take its key (the victim's next stages would run in the newcomer's container). The variable is
/// used only when there is no payload file (a runner older than 14.1).
pub fn job_key(env: &BTreeMap<String, String>) -> Option<String> {
    let clean = |v: &str| -> String { v.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase() };
    let job = match env.get("JOB_RESPONSE_FILE").filter(|f| !f.is_empty()) {
        Some(file) => {
            std::fs::read(file).ok().and_then(|raw| JobResponse::parse(&raw).ok()).map(|j| j.id).filter(|id| *id > 0)?.to_string()
        }
        None => env.get("CUSTOM_ENV_CI_JOB_ID").map(|v| clean(v)).filter(|v| !v.is_empty())?,
    };
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
pub fn config(env: &BTreeMap<String, String>, control: &Path) -> Result<ConfigOutput, ConfigError> {
    let key = job_key(env).ok_or(ConfigError::NoJob)?;
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
    let report = StageReport { stage, seconds: took.as_secs_f64() };
    let client = ControlClient::new(control);
    match tokio::time::timeout(std::time::Duration::from_secs(2), client.report_stage(&key, &report)).await {
        Ok(Ok(())) => {}
        Ok(Err(ControlError::Refused { status, .. })) => eprintln!("ctproxy executor: stage metrics not reported: {status}"),
        Ok(Err(e)) => eprintln!("ctproxy executor: stage metrics not reported: {e}"),
        Err(_) => eprintln!("ctproxy executor: stage metrics not reported: no answer in 2 s"),
    }
}

/// The cleanup stage: removes the job's socket and everything the job created. Tolerates a job
/// that was never prepared (config failed, job_env empty) and runs any number of times.
pub async fn cleanup(env: &BTreeMap<String, String>, control: &Path) -> Result<String, CleanupError> {
    let key = match env.get("CTPROXY_JOB").cloned().or_else(|| job_key(env)) {
        Some(k) => k,
        None => return Ok("no job to clean up (no CTPROXY_JOB, no CUSTOM_ENV_CI_JOB_ID)".into()),
    };
    // The job's containers are gone when this answers; its networks, volumes and images follow in
    // ctproxy (dockerd's network removal is slow, and the job's status waits for cleanup).
    match ControlClient::new(control).remove(&key, true).await {
        Ok(answer) => Ok(format!("job {key} removed: {}", serde_json::json!(answer.removed))),
        Err(ControlError::Refused { status, message }) => Err(CleanupError::Refused { key, status, message }),
        Err(e) => Err(CleanupError::Control(e)),
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

    #[test]
    fn the_job_id_is_the_payloads_not_a_variable_the_job_can_set() {
        let dir = std::env::temp_dir().join(format!("ctproxy-jobkey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("response.json");
        std::fs::write(&file, br#"{"id":77,"token":"t"}"#).unwrap();
        let path = file.display().to_string();
        let vars = [("JOB_RESPONSE_FILE", path.as_str()), ("CUSTOM_ENV_CI_JOB_ID", "12"), ("CUSTOM_ENV_CI_RUNNER_ID", "3")];
        assert_eq!(job_key(&env(&vars)).as_deref(), Some("r3-77"));
        std::fs::write(&file, b"{}").unwrap();
        assert_eq!(job_key(&env(&vars)), None, "a payload without an id names no job");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
