//! The pooled HTTP/1.1 client to dockerd.
//!
//! Requests are forwarded with their bodies streaming; hop-by-hop headers are dropped in both
//! directions (RFC 9110 §7.6.1) so a client's `Connection: close` never closes a pooled daemon
//! connection. An upgrade (attach, exec start, BuildKit `/session`) is re-requested explicitly: such a
//! request takes its daemon connection out of the pool for good.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::transport::Connector;

/// A request body on its way to the daemon: the client's stream, bytes a policy re-serialised, or
/// the client's stream transformed (a build context whose Dockerfile a namespace rewrote).
pub type UpstreamBody = http_body_util::Either<Incoming, http_body_util::Either<Full<Bytes>, super::body::BoxedBody>>;

/// The client's body, forwarded as it comes (or as it was read, whole).
pub fn client_body(body: super::body::ClientBody) -> UpstreamBody {
    match body {
        super::body::ClientBody::Streaming(b) => http_body_util::Either::Left(b),
        super::body::ClientBody::Whole(b) => full_body(b.unwrap_or_default()),
    }
}

/// A body made here.
pub fn full_body(bytes: impl Into<Bytes>) -> UpstreamBody {
    http_body_util::Either::Right(http_body_util::Either::Left(Full::new(bytes.into())))
}

/// A transformed body.
pub fn boxed_body(body: super::body::BoxedBody) -> UpstreamBody {
    http_body_util::Either::Right(http_body_util::Either::Right(body))
}

/// Why a request could not be forwarded. Each one becomes a 502 with a message naming the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot reach the Docker daemon at {upstream}: {cause}")]
    Unreachable { upstream: String, cause: String },
    #[error("bad request target: {0}")]
    Target(String),
    #[error("the Docker daemon at {upstream} accepted the upgrade but the connection could not be taken over: {cause}")]
    Upgrade { upstream: String, cause: String },
    /// The request's own body failed while it was sent (a rewritten build context refused, the
    /// client went away): the daemon got an incomplete request. `error` holds the body's error, for
    /// the layer that produced the body to recognise it.
    #[error("the request body could not be sent: {cause}")]
    Body {
        cause: String,
        #[source]
        error: super::BoxError,
    },
}

/// Whether a client error was caused by the request body hyper was sending (hyper's "user" errors).
fn from_request_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_user) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Forwards requests to the one configured daemon over a pool of keep-alive connections.
pub struct Forwarder {
    client: Client<Connector, UpstreamBody>,
    /// Also dials the raw relay's connections (transparent listeners).
    connector: Connector,
    upstream: String,
}

/// Headers that describe one hop, never the message (plus `Upgrade`, which is re-added on purpose).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the headers of one hop (RFC 9110 §7.6.1), those named in `Connection` included, and
/// `Transfer-Encoding` (the body is re-framed from its own length).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    // hyper re-frames the body itself, from the body's own length.
    headers.remove(header::TRANSFER_ENCODING);
}

impl Forwarder {
    pub fn new(connector: Connector) -> Self {
        let upstream = connector.addr().to_string();
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        Forwarder { client, connector, upstream }
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// Sends `req` to the daemon. With `upgrade`, the request asks the daemon to switch to that
    /// protocol (`tcp`, `h2c`, `websocket`) whatever the client's own headers said.
    pub async fn send(&self, req: Request<UpstreamBody>, upgrade: Option<HeaderValue>) -> Result<Response<Incoming>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // The authority only names the pool; the connector always dials the configured daemon.
        parts.uri = Uri::builder()
            .scheme("http")
            .authority("docker")
            .path_and_query(pq)
            .build()
            .map_err(|e| ForwardError::Target(e.to_string()))?;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(proto) = upgrade {
            parts.headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            parts.headers.insert(header::UPGRADE, proto);
        }
        parts.version = hyper::Version::HTTP_11;
        let mut rsp = self.client.request(Request::from_parts(parts, body)).await.map_err(|e| {
            let cause = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            if from_request_body(&e) {
                return ForwardError::Body { cause, error: Box::new(e) };
            }
            ForwardError::Unreachable { upstream: self.upstream.clone(), cause }
        })?;
        if rsp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(rsp.headers_mut());
        }
        Ok(rsp)
    }

    /// Takes over the daemon side of a `101 Switching Protocols` answer.
    pub async fn upgraded(&self, rsp: &mut Response<Incoming>) -> Result<hyper::upgrade::Upgraded, ForwardError> {
        hyper::upgrade::on(rsp).await.map_err(|e| ForwardError::Upgrade { upstream: self.upstream.clone(), cause: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-private"));
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("x-registry-auth", HeaderValue::from_static("e30="));
        strip_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "x-registry-auth"]);
    }
}
