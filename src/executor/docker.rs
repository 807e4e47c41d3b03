//! The executor's Docker client: the job's own socket, so that everything prepare creates (network,
//! services, the job container, pulled images) belongs to the job's namespace, is checked by the
//! job's policies and is destroyed with the job.
//!
//! Its calls go through the one internal Docker client ([`crate::docker::client`]: encoding, size
//! limits, typed errors) over the job's unix socket; what is the executor's own is the stages' view
//! of errors ([`DockerError`]), a streamed pull that reports progress lines, and an exec whose stdin
//! is a file and whose output is demultiplexed onto the stage's stdout and stderr as it comes.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::client::{enc, message_of, Client, ClientError};
use crate::http::full_body;

/// Whole answers larger than this are not read (the executor's inspects and creates are small).
const MAX_ANSWER: usize = 16 << 20;
/// Error answers of streamed calls (pull, exec start) are read up to this.
const MAX_ERROR: usize = 1 << 20;

/// Why a Docker call failed: the daemon (or the proxy) could not be reached, or it said no.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("the job's Docker socket does not answer: {0}")]
    Unreachable(String),
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
}

impl DockerError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::Refused { status: StatusCode::NOT_FOUND, .. })
    }
}

/// The one place the client's errors become the stages' view: a refusal keeps the daemon's
/// status and message, anything else is the socket not answering.
impl From<ClientError> for DockerError {
    fn from(e: ClientError) -> DockerError {
        match e {
            ClientError::Status { status, body, .. } => DockerError::Refused { status, message: message_of(&body) },
            e => DockerError::Unreachable(e.to_string()),
        }
    }
}

/// A pull that failed: the daemon's own words about the image.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Docker(#[from] DockerError),
    #[error("{0}")]
    Failed(String),
}

impl From<ClientError> for PullError {
    fn from(e: ClientError) -> PullError {
        PullError::Docker(e.into())
    }
}

/// The job's Docker socket (or the daemon's own), through [`crate::docker::client`].
pub struct JobDocker {
    client: Client,
}

impl JobDocker {
    pub fn new(socket: &Path) -> Result<JobDocker, DockerError> {
        let client = Client::unix(socket, Duration::from_secs(10))?.with_max_answer(MAX_ANSWER);
        Ok(JobDocker { client })
    }

    /// One call whose whole (small) answer is wanted; non-2xx answers are errors.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, DockerError> {
        let answer = self.client.call_ok(method, path, body).await?;
        // An empty answer (204) is no value; a success whose body is not JSON is taken as none.
        Ok(if answer.body.is_empty() { Value::Null } else { serde_json::from_slice(&answer.body).unwrap_or(Value::Null) })
    }

    /// An inspect: `None` when there is no such object.
    pub async fn inspect(&self, path: &str) -> Result<Option<Value>, DockerError> {
        match self.call(Method::GET, path, None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pulls `image`, writing one line per layer event worth reading to `out` (the job log).
    pub async fn pull(&self, image: &str, auth: Option<&HeaderValue>, out: &mut impl Write) -> Result<(), PullError> {
        self.pull_with(image, auth, "", out).await
    }

    /// [`JobDocker::pull`] for `platform` (`os/arch[/variant]`; empty: the daemon's).
    pub async fn pull_with(&self, image: &str, auth: Option<&HeaderValue>, platform: &str, out: &mut impl Write) -> Result<(), PullError> {
        let (from, tag) = split_tag(image);
        let mut path = format!("/images/create?fromImage={}", enc(from));
        if let Some(t) = tag {
            path.push_str(&format!("&tag={}", enc(t)));
        }
        if !platform.is_empty() {
            path.push_str(&format!("&platform={}", enc(platform)));
        }
        let mut req = Request::builder().method(Method::POST).uri(&path);
        if let Some(a) = auth {
            req = req.header(HeaderName::from_static("x-registry-auth"), a.clone());
        }
        let req = req.body(full_body(Bytes::new())).map_err(|e| DockerError::Unreachable(e.to_string()))?;
        let rsp = self.client.send(req, None).await?;
        if !rsp.status().is_success() {
            let answer = Client::read(&path, rsp, MAX_ERROR).await?;
            return Err(PullError::Failed(answer.message()));
        }
        let mut body = rsp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| DockerError::Unreachable(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                report_progress(&line, out)?;
            }
        }
        report_progress(&pending, out)
    }

    /// Runs `cmd` in `container` with `stdin` (then end of input) and the stage's stdout and stderr;
    /// returns its exit status. `env` is added to the container's environment.
    pub async fn exec(
        &self,
        container: &str,
        cmd: &[&str],
        env: &[String],
        user: Option<&str>,
        stdin: Option<tokio::fs::File>,
    ) -> Result<i64, DockerError> {
        let mut spec = json!({
            "AttachStdin": stdin.is_some(), "AttachStdout": true, "AttachStderr": true, "Tty": false,
            "Cmd": cmd, "Env": env,
        });
        if let Some(u) = user {
            spec["User"] = json!(u);
        }
        let created = self.call(Method::POST, &format!("/containers/{}/exec", enc(container)), Some(&spec)).await?;
        let id = created.get("Id").and_then(Value::as_str).unwrap_or("").to_owned();
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("/exec/{}/start", enc(&id)))
            .header(CONTENT_TYPE, "application/json")
            .body(full_body(Bytes::from_static(br#"{"Detach":false,"Tty":false}"#)))
            .map_err(|e| DockerError::Unreachable(e.to_string()))?;
        let mut rsp = self.client.send(req, Some(HeaderValue::from_static("tcp"))).await?;
        let status = rsp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS && !status.is_success() {
            let answer = Client::read("exec start", rsp, MAX_ERROR).await?;
            return Err(DockerError::Refused { status, message: answer.message() });
        }
        let upgraded = self.client.upgraded(&mut rsp).await?;
        let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
        let feeder = async move {
            if let Some(mut file) = stdin {
                tokio::io::copy(&mut file, &mut wr).await?;
            }
            // End of input: the shell reads the script to its end and exits.
            wr.shutdown().await
        };
        let (fed, demuxed) = tokio::join!(feeder, demux(&mut rd));
        demuxed.map_err(|e| DockerError::Unreachable(format!("exec output: {e}")))?;
        if let Err(e) = fed {
            // The process may exit without reading all its input (`exit 0` early): not an error.
            tracing::debug!(error = %e, "exec stdin not fully written");
        }
        // The stream ends when the process does; its exit code may lag a moment behind.
        for _ in 0..100 {
            let v = self.call(Method::GET, &format!("/exec/{}/json", enc(&id)), None).await?;
            if v.get("Running").and_then(Value::as_bool) != Some(true) {
                return Ok(v.get("ExitCode").and_then(Value::as_i64).unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(DockerError::Unreachable("the exec's output ended but it is still running".into()))
    }
}

/// `name:tag` → (`name`, `tag`); a digest stays with the name.
fn split_tag(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, None),
    }
}

/// One line of pull progress: errors end the pull, status lines without a progress bar are shown.
fn report_progress(line: &[u8], out: &mut impl Write) -> Result<(), PullError> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() {
        return Ok(());
    }
    let Ok(v) = serde_json::from_slice::<Value>(trimmed) else { return Ok(()) };
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(PullError::Failed(e.to_owned()));
    }
    if v.get("progressDetail").and_then(|p| p.get("current")).is_some() {
        return Ok(());
    }
    if let Some(status) = v.get("status").and_then(Value::as_str) {
        let _ = match v.get("id").and_then(Value::as_str) {
            Some(id) => writeln!(out, "{id}: {status}"),
            None => writeln!(out, "{status}"),
        };
    }
    Ok(())
}

/// Copies Docker's multiplexed stream (8-byte frame headers: stream, 0, 0, 0, big-endian length)
/// to this process's stdout and stderr, frame by frame, with one reused buffer.
async fn demux(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut header = [0u8; 8];
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match rd.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        while left > 0 {
            let n = left.min(buf.len());
            rd.read_exact(&mut buf[..n]).await?;
            if header[0] == 2 {
                stderr.write_all(&buf[..n]).await?;
            } else {
                stdout.write_all(&buf[..n]).await?;
            }
            left -= n;
        }
        stdout.flush().await?;
        stderr.flush().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_like_the_cli() {
        assert_eq!(split_tag("busybox"), ("busybox", None));
        assert_eq!(split_tag("localhost:5000/a/b:1.2"), ("localhost:5000/a/b", Some("1.2")));
        assert_eq!(split_tag("localhost:5000/a"), ("localhost:5000/a", None));
        assert_eq!(split_tag("a@sha256:00"), ("a@sha256:00", None));
    }

    #[test]
    fn progress_errors_end_the_pull() {
        let mut out = Vec::new();
        report_progress(br#"{"status":"Pulling from team/app","id":"1"}"#, &mut out).unwrap();
        report_progress(br#"{"status":"Downloading","progressDetail":{"current":1,"total":2},"id":"l"}"#, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "1: Pulling from team/app\n");
        assert!(
            matches!(report_progress(br#"{"error":"manifest unknown"}"#, &mut Vec::new()), Err(PullError::Failed(m)) if m == "manifest unknown")
        );
    }
}
