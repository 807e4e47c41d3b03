//! THE internal Docker client: every call ctproxy itself makes to a Docker daemon goes through it,
//! the namespace stage's inspect and list calls ([`crate::plugin::namespace::daemon`]) and the
//! executor's calls on a job's socket ([`crate::executor::docker`]) alike.
//!
//! It owns what each of them did on its own before: path segments and query values
//! percent-encoded ([`enc`]), answers read whole only up to a size limit, errors as a type
//! ([`ClientError`]: unreachable, the daemon's status and message, malformed or too large an
//! answer), and Docker 28's store race ([`store_race`]): a read that meets it is asked again.
//!
//! It sits on [`Forwarder`] (the http layer's pooled client), so it speaks to whatever a
//! [`Connector`] dials: the configured daemon, or a job's own unix socket.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::store_race;
use crate::http::{boxed_body, full_body, ForwardError, Forwarder, UpstreamBody};
use crate::transport::{Connector, UpstreamAddr};

/// Answers larger than this are not read by default (an internal list of a busy daemon is far
/// smaller).
pub const DEFAULT_MAX_ANSWER: usize = 64 << 20;

/// Why an internal call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon (or the socket in front of it) could not be reached, or dropped the connection
    /// before answering.
    #[error("{0}")]
    Unreachable(#[from] ForwardError),
    /// The request could not be made (a body that does not serialise, a file that cannot be read).
    #[error("{0}")]
    Request(String),
    /// The daemon answered with an error status; `body` is its answer (`{"message": ...}`).
    #[error("{path}: {status}{}", detail(.body))]
    Status { path: String, status: StatusCode, body: Bytes },
    /// The answer broke off while it was read.
    #[error("{path}: {cause}")]
    Read { path: String, cause: String },
    /// The answer is larger than the client reads whole.
    #[error("{path}: the answer is larger than {limit} bytes")]
    TooLarge { path: String, limit: usize },
    /// The answer is not the JSON asked for.
    #[error("{path}: {cause}")]
    Malformed { path: String, cause: String },
}

impl ClientError {
    /// The daemon's status, when it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }
}

/// The text of an error answer after its status, if it has one.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.trim() {
        "" => String::new(),
        t => format!(": {t}"),
    }
}

/// The daemon's message in an error answer (`{"message": ...}`), else the answer as text.
pub fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

/// A whole answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The daemon's message, for an error answer.
    pub fn message(&self) -> String {
        message_of(&self.body)
    }
}

/// A Docker client over one daemon connection pool.
#[derive(Clone)]
pub struct Client {
    forwarder: Arc<Forwarder>,
    max_answer: usize,
}

impl Client {
    /// A client over `forwarder`'s pool (the configured daemon).
    pub fn new(forwarder: Arc<Forwarder>) -> Client {
        Client { forwarder, max_answer: DEFAULT_MAX_ANSWER }
    }

    /// A client of the daemon (or proxy) listening on the unix socket `socket`.
    pub fn unix(socket: &Path, connect_timeout: Duration) -> Result<Client, ClientError> {
        let connector = Connector::new(UpstreamAddr::Unix(socket.to_path_buf()), None, connect_timeout)
            .map_err(|e| ClientError::Request(e.to_string()))?;
        Ok(Client::new(Arc::new(Forwarder::new(connector))))
    }

    /// The same client reading whole answers up to `limit` bytes only.
    pub fn with_max_answer(mut self, limit: usize) -> Client {
        self.max_answer = limit;
        self
    }

    /// The pool under this client (for a caller that takes over an upgraded connection).
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Sends `req` as it is and returns the answer unread, to be streamed (pull progress, an
    /// exec's output, `docker save`); with `upgrade` the daemon is asked to switch protocols.
    pub async fn send(&self, req: Request<UpstreamBody>, upgrade: Option<HeaderValue>) -> Result<Response<Incoming>, ClientError> {
        Ok(self.forwarder.send(req, upgrade).await?)
    }

    /// Takes over the daemon's side of a `101 Switching Protocols` answer.
    pub async fn upgraded(&self, rsp: &mut Response<Incoming>) -> Result<hyper::upgrade::Upgraded, ClientError> {
        Ok(self.forwarder.upgraded(rsp).await?)
    }

    /// Reads an answer whole, up to `limit` bytes.
    pub async fn read(path: &str, rsp: Response<Incoming>, limit: usize) -> Result<Answer, ClientError> {
        let status = rsp.status();
        let body = Limited::new(rsp.into_body(), limit).collect().await.map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                ClientError::TooLarge { path: path.to_owned(), limit }
            } else {
                ClientError::Read { path: path.to_owned(), cause: e.to_string() }
            }
        })?;
        Ok(Answer { status, body: body.to_bytes() })
    }

    async fn answer(&self, path: &str, req: Request<UpstreamBody>) -> Result<Answer, ClientError> {
        let rsp = self.send(req, None).await?;
        Client::read(path, rsp, self.max_answer).await
    }

    /// One call; returns its whole answer, whatever its status.
    pub async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<Answer, ClientError> {
        self.call_with(method, path_and_query, body, &[]).await
    }

    /// [`Client::call`] with extra request headers (a pull's `X-Registry-Auth`).
    pub async fn call_with(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
        headers: &[(HeaderName, HeaderValue)],
    ) -> Result<Answer, ClientError> {
        let bytes = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v).map_err(|e| ClientError::Request(e.to_string()))?),
            None => Bytes::new(),
        };
        let mut req = Request::builder().method(method).uri(path_and_query);
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(full_body(bytes)).map_err(|e| ClientError::Request(e.to_string()))?;
        self.answer(path_and_query, req).await
    }

    /// A call whose success is wanted: an error status is [`ClientError::Status`].
    pub async fn call_ok(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<Answer, ClientError> {
        let answer = self.call(method, path_and_query, body).await?;
        if !answer.status.is_success() {
            return Err(ClientError::Status { path: path_and_query.to_owned(), status: answer.status, body: answer.body });
        }
        Ok(answer)
    }

    /// A GET whose JSON answer is wanted; `None` when the daemon says 404. A read that meets Docker
    /// 28's store race ([`store_race`]) is asked again: a racing removal elsewhere is not an
    /// absence here (an image a namespace owns would otherwise look like another's).
    pub async fn get(&self, path_and_query: &str) -> Result<Option<Value>, ClientError> {
        let mut attempt = 1;
        let answer = loop {
            let answer = self.call(Method::GET, path_and_query, None).await?;
            if answer.status.is_success() || attempt == store_race::ATTEMPTS || !store_race::is_store_race(&answer.body) {
                break answer;
            }
            tracing::debug!(attempt, path = path_and_query, "the daemon's image store raced a removal; asking again");
            tokio::time::sleep(store_race::backoff(attempt)).await;
            attempt += 1;
        };
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(ClientError::Status { path: path_and_query.to_owned(), status: answer.status, body: answer.body });
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|e| ClientError::Malformed { path: path_and_query.to_owned(), cause: e.to_string() })
    }

    /// A GET of a list endpoint: its items (none on 404 or a non-list answer), without copying them.
    pub async fn list(&self, path_and_query: &str) -> Result<Vec<Value>, ClientError> {
        match self.get(path_and_query).await? {
            Some(Value::Array(items)) => Ok(items),
            _ => Ok(Vec::new()),
        }
    }

    /// Sends a body of `content_type` streamed from `file` (from its start) and returns the whole
    /// answer (a load's progress lines), so that a large archive (a rewritten `docker commit`) is
    /// never held in memory.
    pub async fn send_file(
        &self,
        method: Method,
        path_and_query: &str,
        content_type: &str,
        file: std::fs::File,
    ) -> Result<Answer, ClientError> {
        use futures_util::TryStreamExt;
        let len = file.metadata().map_err(|e| ClientError::Request(e.to_string()))?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10);
        let body = http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data).map_err(crate::http::BoxError::from));
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len)
            .body(boxed_body(body.boxed_unsync()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.answer(path_and_query, req).await
    }

    /// A GET whose (large) answer is written to `out` as it streams (`docker save`).
    pub async fn download(&self, path_and_query: &str, out: &mut (impl tokio::io::AsyncWrite + Unpin)) -> Result<(), ClientError> {
        use tokio::io::AsyncWriteExt;
        let read = |cause: String| ClientError::Read { path: path_and_query.to_owned(), cause };
        let req = Request::builder()
            .method(Method::GET)
            .uri(path_and_query)
            .body(full_body(Bytes::new()))
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let rsp = self.send(req, None).await?;
        if !rsp.status().is_success() {
            // The answer's body is not read: a save's error is short, and its status says enough.
            return Err(ClientError::Status { path: path_and_query.to_owned(), status: rsp.status(), body: Bytes::new() });
        }
        let mut body = rsp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| read(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).await.map_err(|e| read(e.to_string()))?;
            }
        }
        out.flush().await.map_err(|e| read(e.to_string()))?;
        Ok(())
    }
}

/// Percent-encodes one path segment or query value (everything but RFC 3986's unreserved
/// characters), so that a name never adds a path segment or a query parameter.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_add_segments_or_parameters() {
        assert_eq!(enc("ctp.ns.app"), "ctp.ns.app");
        assert_eq!(enc("a/b?c=d&e#f"), "a%2Fb%3Fc%3Dd%26e%23f");
        assert_eq!(enc("é ~"), "%C3%A9%20~");
    }

    #[test]
    fn error_answers_say_the_daemons_words() {
        assert_eq!(message_of(br#"{"message":"No such container: x"}"#), "No such container: x");
        assert_eq!(message_of(b" page not found\n"), "page not found");
        let e =
            ClientError::Status { path: "/x".into(), status: StatusCode::CONFLICT, body: Bytes::from_static(b"{\"message\":\"busy\"}\n") };
        assert_eq!(e.to_string(), "/x: 409 Conflict: {\"message\":\"busy\"}");
        assert_eq!(e.status(), Some(StatusCode::CONFLICT));
        assert!(!e.is_not_found());
    }
}
