//! The internal requests a namespace makes to dockerd: inspect and list calls that tell who owns
//! what, and the few writes it makes on the client's behalf (untagging every tag of an image).
//!
//! They go through the same pooled client as forwarded requests, without a version prefix (the
//! fields read here have not changed across the versions dockerd 20.10 and later serve).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{Method, Request, StatusCode};
use serde_json::Value;

use super::NsError;
use crate::docker::store_race;
use crate::http::{boxed_body, full_body, Forwarder};

/// Answers larger than this are not read (an internal list of a busy daemon is far smaller).
const MAX_INTERNAL: usize = 64 << 20;

/// dockerd, as the namespace stage asks it.
#[derive(Clone)]
pub struct Daemon {
    forwarder: Arc<Forwarder>,
}

impl Daemon {
    pub fn new(forwarder: Arc<Forwarder>) -> Daemon {
        Daemon { forwarder }
    }

    /// Sends one request; returns the status and the whole body.
    pub async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<(StatusCode, Bytes), NsError> {
        self.call_with(method, path_and_query, body, &[]).await
    }

    /// [`Daemon::call`] with extra request headers (a pull's `X-Registry-Auth`).
    pub async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        headers: &[(hyper::header::HeaderName, hyper::header::HeaderValue)],
    ) -> Result<(StatusCode, Bytes), NsError> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| NsError::Daemon(e.to_string()))?),
            None => Bytes::new(),
        };
        let mut req = Request::builder().method(method).uri(path_and_query);
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(full_body(bytes)).map_err(|e| NsError::Daemon(e.to_string()))?;
        let rsp = self.forwarder.send(req, None).await.map_err(|e| NsError::Daemon(e.to_string()))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), MAX_INTERNAL).collect().await.map_err(|e| NsError::Daemon(e.to_string()))?;
        Ok((status, body.to_bytes()))
    }

    /// A GET whose JSON answer is wanted; `None` when the daemon says 404. A read that meets Docker
    /// 28's store race ([`store_race`]) is asked again: a racing removal elsewhere is not an
    /// absence here (an image the namespace owns would otherwise look like another's).
    pub async fn get(&self, path_and_query: &str) -> Result<Option<Value>, NsError> {
        let mut attempt = 1;
        let (status, body) = loop {
            let (status, body) = self.call(Method::GET, path_and_query, None).await?;
            if status.is_success() || attempt == store_race::ATTEMPTS || !store_race::is_store_race(&body) {
                break (status, body);
            }
            tracing::debug!(attempt, path = path_and_query, "the daemon's image store raced a removal; asking again");
            tokio::time::sleep(store_race::backoff(attempt)).await;
            attempt += 1;
        };
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(NsError::Daemon(format!("{path_and_query}: {status}: {}", String::from_utf8_lossy(&body).trim())));
        }
        serde_json::from_slice(&body).map(Some).map_err(|e| NsError::Daemon(format!("{path_and_query}: {e}")))
    }
}

impl Daemon {
    /// Sends `body` (of `content_type`) and returns the status and the whole answer (a load's
    /// progress lines).
    pub async fn send_bytes(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), NsError> {
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(full_body(body))
            .map_err(|e| NsError::Daemon(e.to_string()))?;
        let rsp = self.forwarder.send(req, None).await.map_err(|e| NsError::Daemon(e.to_string()))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), MAX_INTERNAL).collect().await.map_err(|e| NsError::Daemon(e.to_string()))?;
        Ok((status, body.to_bytes()))
    }

    /// Like [`Daemon::send_bytes`] with the body streamed from `file` (from its start), so that a
    /// large archive (a rewritten `docker commit`) is never held in memory.
    pub async fn send_file(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        file: std::fs::File,
    ) -> Result<(StatusCode, Bytes), NsError> {
        use futures_util::TryStreamExt;
        let len = file.metadata().map_err(|e| NsError::Daemon(e.to_string()))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10);
        let body = http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data).map_err(crate::http::BoxError::from));
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::CONTENT_LENGTH, len)
            .body(boxed_body(body.boxed_unsync()))
            .map_err(|e| NsError::Daemon(e.to_string()))?;
        let rsp = self.forwarder.send(req, None).await.map_err(|e| NsError::Daemon(e.to_string()))?;
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), MAX_INTERNAL).collect().await.map_err(|e| NsError::Daemon(e.to_string()))?;
        Ok((status, body.to_bytes()))
    }

    /// A GET whose (large) answer is written to `out` as it streams (`docker save`).
    pub async fn download(&self, path_and_query: &str, out: &mut (impl tokio::io::AsyncWrite + Unpin)) -> Result<(), NsError> {
        use tokio::io::AsyncWriteExt;
        let req = Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .body(full_body(Bytes::new()))
            .map_err(|e| NsError::Daemon(e.to_string()))?;
        let rsp = self.forwarder.send(req, None).await.map_err(|e| NsError::Daemon(e.to_string()))?;
        if !rsp.status().is_success() {
            return Err(NsError::Daemon(format!("{path_and_query}: {}", rsp.status())));
        }
        let mut body = rsp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| NsError::Daemon(format!("{path_and_query}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.map_err(|e| NsError::Daemon(format!("{path_and_query}: {e}")))?;
            }
        }
        out.flush().await.map_err(|e| NsError::Daemon(format!("{path_and_query}: {e}")))?;
        Ok(())
    }

    /// A GET of a list endpoint: its items (none on 404 or a non-list answer), without copying them.
    pub async fn list(&self, path_and_query: &str) -> Result<Vec<Value>, NsError> {
        match self.get(path_and_query).await? {
            Some(Value::Array(items)) => Ok(items),
            _ => Ok(Vec::new()),
        }
    }
}

/// Percent-encodes one path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
