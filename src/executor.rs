//! The GitLab Runner custom-executor stages (`ctproxy executor config|cleanup`), run by
//! gitlab-runner once per stage of every job (protocol: `gitlab-custom-executor.md` of the design
//! docs).
//!
//! A stage process never keeps anything alive itself: the job's socket and namespace belong to the
//! long-running `ctproxy serve`, which the stages drive over its control socket ([`crate::jobs`]).
//! Exit codes follow the protocol: 0 done, `BUILD_FAILURE_EXIT_CODE` for the job's own failures,
//! `SYSTEM_FAILURE_EXIT_CODE` for the infrastructure's (gitlab-runner retries those).
//!
//! `prepare` and `run` are not implemented yet.

use std::collections::BTreeMap;
use std::path::Path;

use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::jobs::{control_request, ControlError};

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
        builds_dir: "/builds",
        cache_dir: "/cache",
        builds_dir_is_shared: false,
        hostname,
        driver: Driver { name: "ctproxy", version: env!("CARGO_PKG_VERSION") },
        job_env,
    })
}

/// The cleanup stage: removes the job's socket and everything the job created. Tolerates a job
/// that was never prepared (config failed, job_env empty) and runs any number of times.
pub async fn cleanup(env: &BTreeMap<String, String>, control: &Path) -> Result<String, (bool, String)> {
    let key = match env.get("CTPROXY_JOB").cloned().or_else(|| job_key(env)) {
        Some(k) => k,
        None => return Ok("no job to clean up (no CTPROXY_JOB, no CUSTOM_ENV_CI_JOB_ID)".into()),
    };
    match control_request(control, Method::DELETE, &format!("/jobs/{key}"), None).await {
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
