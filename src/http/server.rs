//! Serving one client connection: HTTP/1.0 and 1.1 keep-alive, access log, graceful drain, hijacks.
//!
//! Upgrades are taken over *manually* (hyper's `poll_without_shutdown` + `into_parts`) rather than
//! with `with_upgrades()`. That gives one code path for both ways Docker clients hijack a connection:
//! the `Upgrade: tcp` → `101` form and the legacy form where a plain `200` is followed by raw bytes,
//! which hyper's upgrade API cannot express. A handler that wants the socket parks the daemon's side in
//! [`ConnCtx::hijack`]; once hyper has written the response head and stopped, this module splices the
//! client's raw socket (plus whatever bytes hyper had already read) to it.
//!
//! A connection whose handler could have requests relayed as raw bytes
//! ([`Handler::transparent_upstream`]: a listener with nothing to check, or one that checks a
//! request's head and relays what it would forward unchanged, such as a job socket's pings) starts
//! on the raw relay ([`super::relay`]); the relay hands the connection back here, for good, at the
//! first request the handler wants to see whole (or after a reload that adds checks).
//!
//! Between requests the connection is held to the listener's header-read and idle timeouts
//! ([`super::clock`]); a request being answered and a hijacked stream never are.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::body::{AccessRecord, LoggedBody};
use super::clock::{Activity, Deadline, Tracked, Watched};
use super::handler::{AccessIdentity, ConnCtx, Handler, RelayAsk};
use super::hijack::{splice, Prefixed};
use super::relay::{self, RelayConn, Relayed};
use super::serve::{ConnServer, Timeouts};
use crate::transport::{Accepted, ClientStream, PeerInfo};

/// Options that apply to every connection of a listener.
#[derive(Clone)]
pub struct ServeOptions {
    pub listener: Arc<str>,
    pub access_log: bool,
}

/// The connections of a listener served with a [`Handler`]: Docker listeners, job sockets, the
/// registry proxy, the control socket.
pub struct HandlerConns<H> {
    pub opts: ServeOptions,
    pub handler: Arc<H>,
    /// Cancelled on stop: connections finish their current request and close.
    pub draining: CancellationToken,
}

impl<H: Handler> ConnServer for HandlerConns<H> {
    type Stream = ClientStream;

    async fn handshake(&self, accepted: Accepted) -> std::io::Result<(ClientStream, PeerInfo)> {
        accepted.into_stream().await
    }

    async fn serve(self: Arc<Self>, stream: ClientStream, peer: PeerInfo, timeouts: Timeouts) {
        serve_connection(stream, peer, self.opts.clone(), self.handler.clone(), self.draining.clone(), timeouts).await
    }
}

/// Serves one accepted connection until the client leaves, the handler hijacks it, it waits too
/// long for a request (`timeouts`), or `shutdown` is cancelled (then in-flight requests finish and
/// keep-alive stops).
pub async fn serve_connection<H: Handler>(
    stream: ClientStream,
    peer: PeerInfo,
    opts: ServeOptions,
    handler: Arc<H>,
    shutdown: CancellationToken,
    timeouts: Timeouts,
) {
    let peer_label: Arc<str> = Arc::from(peer.to_string());
    let activity = Arc::new(Activity::default());
    let ctx = Arc::new(ConnCtx {
        listener: opts.listener,
        peer_label,
        peer,
        access_log: opts.access_log,
        hijacked: Mutex::new(None),
        stream_relay: Mutex::new(None),
        activity: activity.clone(),
    });
    let stream = if handler.transparent_upstream(RelayAsk::Connection).is_some() {
        let conn = RelayConn { listener: &ctx.listener, peer_label: &ctx.peer_label, access_log: ctx.access_log, timeouts, ctx: &ctx };
        match relay::serve(stream, conn, &*handler, &shutdown).await {
            Relayed::Closed => return,
            Relayed::HandBack(stream) => stream,
        }
    } else {
        Prefixed::new(bytes::Bytes::new(), stream)
    };
    let svc = ConnService { handler, ctx: ctx.clone() };
    let io = TokioIo::new(Watched::new(stream, activity.clone()));
    let mut conn = http1::Builder::new().keep_alive(true).serve_connection(io, svc);

    let mut deadline = Deadline::new(timeouts);
    let mut draining = false;
    let result = loop {
        tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break Ok(r),
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            expired = std::future::poll_fn(|cx| deadline.poll_expired(cx, &activity)) => break Err(expired),
        }
    };
    match result {
        // Malformed requests were already answered 400 by hyper; this is for the debug log only.
        Ok(Err(e)) => tracing::debug!(listener = %ctx.listener, peer = %ctx.peer_label, error = %e, "connection ended with an error"),
        Ok(Ok(())) => {}
        Err(expired) => expired.log(&ctx.listener, &ctx.peer_label),
    }
    let parts = conn.into_parts();
    let hijacked = ctx.hijacked.lock().ok().and_then(|mut s| s.take());
    let mut client = parts.io.into_inner().into_inner();
    match hijacked {
        Some(h) => {
            if let Some(relay) = ctx.stream_relay.lock().ok().and_then(|mut s| s.take()) {
                relay(Box::new(Prefixed::new(parts.read_buf, client)), Box::new(TokioIo::new(h.upstream))).await;
                if let Some(record) = h.record {
                    record.emit(0, None);
                }
                return;
            }
            let stats = splice(Prefixed::new(parts.read_buf, client), TokioIo::new(h.upstream)).await;
            if let Some(record) = h.record {
                record.emit(stats.daemon_to_client, Some(stats.client_to_daemon));
            }
        }
        None => {
            let _ = client.shutdown().await;
        }
    }
}

/// The hyper service of one connection: wraps the handler with the access log and a tracing span.
struct ConnService<H> {
    handler: Arc<H>,
    ctx: Arc<ConnCtx>,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for ConnService<H> {
    type Response = Response<Tracked<LoggedBody>>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let ticket = self.ctx.activity.request();
        let handler = self.handler.clone();
        let ctx = self.ctx.clone();
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let span = tracing::debug_span!(
            "request",
            listener = %ctx.listener,
            peer = %ctx.peer_label,
            %method,
            %path,
            identity = tracing::field::Empty
        );
        Box::pin(
            async move {
                let rsp = handler.call(req, ctx.clone()).await;
                let record = ctx.access_log.then(|| AccessRecord {
                    listener: ctx.listener.clone(),
                    peer: ctx.peer_label.clone(),
                    identity: rsp.extensions().get::<AccessIdentity>().map(|i| i.0.clone()),
                    method,
                    path,
                    status: rsp.status().as_u16(),
                    started,
                });
                let (parts, body) = rsp.into_parts();
                // A hijacked exchange is logged when the raw stream ends, with both byte counts.
                let record = if ctx.is_hijacked() {
                    if let Ok(mut slot) = ctx.hijacked.lock() {
                        if let Some(h) = slot.as_mut() {
                            h.record = record;
                        }
                    }
                    None
                } else {
                    record
                };
                Ok(Response::from_parts(parts, Tracked::new(LoggedBody::new(body, record), ticket)))
            }
            .instrument(span),
        )
    }
}
