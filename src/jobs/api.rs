//! The control API of `ctproxy serve` as types: what each request carries and each answer holds
//! (serde), and [`ControlClient`], the typed client the executor stages and `ctproxy job` use. The
//! server side ([`super::ControlHandler`]) answers with the same types, so the two cannot drift.
//!
//! HTTP/1.1 on the control socket (mode 0600, peers other than uid 0 refused):
//! - `PUT /jobs/{id}` ([`CreateJob`], idempotent) → [`CreatedJob`]: the [`JobInfo`] and
//!   `[jobs.executor]` for prepare (the stages have no configuration of their own);
//! - `GET /jobs/{id}` → [`JobInfo`] (404 when there is no such job); `GET /jobs` → the live jobs;
//! - `DELETE /jobs/{id}` → [`RemovedJob`] (idempotent; with `?rest=background` it answers once the
//!   job's containers are gone and removes its networks, volumes and images after);
//! - `POST /jobs/{id}/stages` ([`StageReport`]): a stage's wall time, for the metrics.
//!
//! Errors are Docker-style `{"message": ...}` answers.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::config::ExecutorConfig;
use crate::metrics;
use crate::plugin::namespace::destroy::Removed;

/// Answers larger than this are not read (a list of every live job is far smaller).
const MAX_ANSWER: usize = 1 << 20;

/// `PUT /jobs/{id}`: the job's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// The job's GitLab project as the payload names it (server, path and id; see
    /// `JobResponse::project_key`): the key of its local cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// A job as the control API reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobInfo {
    #[serde(default)]
    pub id: String,
    pub socket: PathBuf,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub deadline: u64,
    /// The daemon's own socket when it is local (`unix://...`): the executor runs stage scripts
    /// there, so that a running stage survives a restart of ctproxy.
    #[serde(default)]
    pub daemon: Option<String>,
    /// The host directory of the project's local cache, which the job may bind (read-write) at
    /// its cache directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    /// The host's gitlab-runner binary, which the job may bind read-only; absent when the host
    /// has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_binary: Option<PathBuf>,
}

impl JobInfo {
    /// The daemon's own unix socket, when it is local.
    pub fn daemon_socket(&self) -> Option<PathBuf> {
        self.daemon.as_deref().and_then(|d| d.strip_prefix("unix://")).map(PathBuf::from)
    }
}

/// The answer to `PUT /jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedJob {
    #[serde(flatten)]
    pub job: JobInfo,
    /// `[jobs.executor]`; settings an older or newer server words differently count as the
    /// defaults, as they always did.
    #[serde(default, deserialize_with = "lenient")]
    pub executor: ExecutorConfig,
}

fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned + Default>(d: D) -> Result<T, D::Error> {
    let v = Value::deserialize(d)?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}

/// The answer to `DELETE /jobs/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RemovedJob {
    pub removed: Removed,
}

/// `POST /jobs/{id}/stages`: an executor stage reports its wall time (best-effort, for metrics).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageReport {
    pub stage: metrics::Stage,
    pub seconds: f64,
}

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("ctproxy serve is not running (no control socket at {path}): {source}")]
    NotRunning { path: String, source: std::io::Error },
    #[error("control request failed: {0}")]
    Http(String),
    /// ctproxy answered with an error: its status and message.
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    /// The answer is not what the API says.
    #[error("the control socket's answer is not understood: {0}")]
    Malformed(String),
}

impl ControlError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ControlError::Refused { status: StatusCode::NOT_FOUND, .. })
    }
}

/// The control socket of a running `ctproxy serve`, as a client.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket: PathBuf,
}

impl ControlClient {
    pub fn new(socket: &Path) -> ControlClient {
        ControlClient { socket: socket.to_path_buf() }
    }

    /// `PUT /jobs/{id}`: creates the job, or returns the live one.
    pub async fn create(&self, id: &str, job: &CreateJob) -> Result<CreatedJob, ControlError> {
        let body = serde_json::to_value(job).map_err(|e| ControlError::Http(e.to_string()))?;
        self.request(Method::PUT, &format!("/jobs/{id}"), Some(body)).await
    }

    /// `GET /jobs/{id}`.
    pub async fn get(&self, id: &str) -> Result<JobInfo, ControlError> {
        self.request(Method::GET, &format!("/jobs/{id}"), None).await
    }

    /// `GET /jobs`.
    pub async fn list(&self) -> Result<Vec<JobInfo>, ControlError> {
        self.request(Method::GET, "/jobs", None).await
    }

    /// `DELETE /jobs/{id}`; with `background`, answered once the job's containers are gone.
    pub async fn remove(&self, id: &str, background: bool) -> Result<RemovedJob, ControlError> {
        let query = if background { "?rest=background" } else { "" };
        self.request(Method::DELETE, &format!("/jobs/{id}{query}"), None).await
    }

    /// `POST /jobs/{id}/stages`.
    pub async fn report_stage(&self, id: &str, report: &StageReport) -> Result<(), ControlError> {
        let body = serde_json::to_value(report).map_err(|e| ControlError::Http(e.to_string()))?;
        let _: Value = self.request(Method::POST, &format!("/jobs/{id}/stages"), Some(body)).await?;
        Ok(())
    }

    /// One request: a 200 answer is decoded as `T`, any other is [`ControlError::Refused`].
    async fn request<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Value>) -> Result<T, ControlError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if status != StatusCode::OK {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let message = v.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(ControlError::Refused { status, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ControlError::Malformed(format!("{path}: {e}")))
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Result<(StatusCode, bytes::Bytes), ControlError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ControlError::NotRunning { path: self.socket.display().to_string(), source })?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| ControlError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "ctproxy")
            .body(http_body_util::Full::new(bytes::Bytes::from(bytes)))
            .map_err(|e| ControlError::Http(e.to_string()))?;
        let rsp = send.send_request(req).await.map_err(|e| ControlError::Http(e.to_string()))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), MAX_ANSWER).collect().await.map_err(|e| ControlError::Http(e.to_string()))?.to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_job_reads_back_with_its_executor_settings() {
        let answer = serde_json::json!({
            "id": "r1-2", "socket": "/run/ctproxy/jobs/r1-2/sock/docker.sock", "namespace": "job-r1-2", "deadline": 9,
            "daemon": "unix:///var/run/docker.sock", "executor": { "allowed_images": ["alpine:*"] },
        });
        let created: CreatedJob = serde_json::from_value(answer).unwrap();
        assert_eq!(created.job.namespace, "job-r1-2");
        assert_eq!(created.job.daemon_socket(), Some(PathBuf::from("/var/run/docker.sock")));
        assert_eq!(created.executor.allowed_images, ["alpine:*"]);
        // Settings this version does not know are the defaults, not a failed prepare.
        let odd = serde_json::json!({ "socket": "/s", "executor": { "later_key": 1 } });
        let created: CreatedJob = serde_json::from_value(odd).unwrap();
        assert_eq!(created.executor, ExecutorConfig::default());
        assert_eq!(created.job.daemon_socket(), None);
    }

    #[test]
    fn a_job_without_a_socket_is_not_understood() {
        assert!(serde_json::from_value::<JobInfo>(serde_json::json!({ "id": "x" })).is_err());
    }

    #[test]
    fn requests_serialise_as_the_server_reads_them() {
        let create = CreateJob { timeout_s: Some(60), project: None };
        assert_eq!(serde_json::to_value(&create).unwrap(), serde_json::json!({ "timeout_s": 60 }));
        let report = StageReport { stage: metrics::Stage::Run, seconds: 0.5 };
        assert_eq!(serde_json::to_value(&report).unwrap(), serde_json::json!({ "stage": "run", "seconds": 0.5 }));
    }
}
