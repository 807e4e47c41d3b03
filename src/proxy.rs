//! The Docker proxy: the [`Handler`] that answers every request of a listener by forwarding it to
//! dockerd, taking over hijacked connections (attach, exec start, BuildKit `/session`) on the way.
//!
//! This is where the layers meet: the HTTP machinery below, the Docker API facts of [`crate::docker`],
//! and (later) the authentication, policy and namespace plugins.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};

use crate::docker::ApiPath;
use crate::http::{respond, ConnCtx, ForwardError, Forwarder, Handler, ProxyBody};

/// Forwards to the daemon that the current configuration names. The forwarder is swapped as a whole
/// on reload; requests in flight keep the one they started with.
pub struct DockerProxy {
    forwarder: ArcSwap<Forwarder>,
}

impl DockerProxy {
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        DockerProxy { forwarder: ArcSwap::new(forwarder) }
    }

    pub fn set_forwarder(&self, forwarder: Arc<Forwarder>) {
        self.forwarder.store(forwarder);
    }

    async fn forward(&self, req: Request<Incoming>, conn: &ConnCtx) -> Result<Response<ProxyBody>, ForwardError> {
        let forwarder = self.forwarder.load_full();
        let client_upgrade = requested_upgrade(&req);
        // A legacy client hijacks attach/exec without asking: ask the daemon for it explicitly, so the
        // daemon's side is handed over the same way in both cases.
        let legacy = client_upgrade.is_none() && ApiPath::parse(req.uri().path()).may_hijack(req.method());
        let upgrade = client_upgrade.or_else(|| legacy.then(|| HeaderValue::from_static("tcp")));

        let mut rsp = forwarder.send(req.map(Either::Left), upgrade).await?;
        if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(rsp.map(ProxyBody::Upstream));
        }
        let upstream = forwarder.upgraded(&mut rsp).await?;
        conn.hijack(upstream);
        let (mut parts, _) = rsp.into_parts();
        if legacy {
            // What dockerd answers a client that did not ask for an upgrade: `200 OK`, a content
            // type, then raw bytes. HTTP/1.0 with no length is the only way hyper writes a head
            // without framing the bytes after it.
            parts.status = StatusCode::OK;
            parts.version = Version::HTTP_10;
            drop_upgrade_headers(&mut parts.headers);
            parts.extensions = Default::default();
            return Ok(Response::from_parts(parts, ProxyBody::Unframed));
        }
        // Keep the daemon's reason phrase ("UPGRADED"): hyper carries it in the extensions.
        let reason = parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        parts.extensions = Default::default();
        if let Some(reason) = reason {
            parts.extensions.insert(reason);
        }
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

impl Handler for DockerProxy {
    async fn call(&self, req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ProxyBody> {
        match self.forward(req, &conn).await {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::warn!(listener = %conn.listener, error = %e, "request not forwarded");
                respond::error(StatusCode::BAD_GATEWAY, &format!("ctproxy: {e}"))
            }
        }
    }
}

/// The protocol a client asks to switch to (`Upgrade: tcp`), if any. HTTP/1.0 cannot upgrade.
fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

fn drop_upgrade_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONNECTION);
    headers.remove(header::UPGRADE);
}
