//! What a higher layer plugs into the HTTP layer: the [`Handler`] that answers requests (and says
//! which may be relayed raw, [`RelayAsk`]), and the per-connection context ([`ConnCtx`]) it is
//! called with, through which it parks a hijacked daemon connection. `server.rs` and `relay.rs`
//! drive connections; this module is what they share with `proxy`, `registry` and `jobs`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use super::body::AccessRecord;
use super::clock::Activity;
use super::forward::ForwardError;
use super::grpc::BoxIo;
use super::ProxyBody;
use crate::transport::{Connector, PeerInfo};

/// What a higher layer plugs in to answer requests.
pub trait Handler: Send + Sync + 'static {
    fn call(&self, req: Request<Incoming>, conn: Arc<ConnCtx>) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// The daemon to relay a request to as raw bytes, when this handler would neither change it
    /// nor its answer: a listener with no authentication, policy or namespace, or a request that
    /// the handler checked on its head ([`RelayAsk::Request::head`]) and would forward as it is.
    /// Asked when a connection starts ([`RelayAsk::Connection`]: could any request be relayed?)
    /// and again before every request of a relayed connection: once it says `None`, the connection
    /// is served by [`Handler::call`]. With [`RelayTo::whole`] the request is not relayed as bytes
    /// but read whole and answered by [`Handler::call_whole`].
    fn transparent_upstream(&self, _ask: RelayAsk<'_>) -> Option<RelayTo> {
        None
    }

    /// Whether [`RelayAsk::Request`] should carry the request's target and header fields
    /// ([`RelayAsk::Request::head`]): the handler checks requests before they are relayed.
    fn relay_checks_heads(&self) -> bool {
        false
    }

    /// Answers a request the relay read whole ([`RelayTo::whole`]), forwarding what it decides
    /// through `daemon`: the relay's own daemon connection. The answer is written whole, with its
    /// own length.
    fn call_whole<'a>(
        &'a self,
        _req: Request<Bytes>,
        _conn: &'a Arc<ConnCtx>,
        _daemon: &'a mut dyn SendWhole,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
        async { super::respond::error(StatusCode::INTERNAL_SERVER_ERROR, "ctproxy: this listener reads no request whole") }
    }
}

/// Where a relayed request goes, and who made it (for the access log).
#[derive(Clone)]
pub struct RelayTo {
    pub upstream: Connector,
    pub identity: Option<Arc<str>>,
    /// Not relayed as bytes: the request is read whole (a body of at most `max_body` bytes, by its
    /// `Content-Length`) and answered by [`Handler::call_whole`], whose daemon answers are read
    /// whole too, up to `max_answer` bytes. Why: a request the handler checks and rewrites (a
    /// container create, a list it filters) then costs one hop, the relay's, instead of hyper's
    /// server, its pooled client and the wake-ups between their tasks.
    pub whole: Option<WholeLimits>,
}

/// The limits of a request served whole.
#[derive(Debug, Clone, Copy)]
pub struct WholeLimits {
    pub max_body: usize,
    pub max_answer: usize,
}

/// The daemon, for a request served whole: sends a request and reads its answer whole.
pub trait SendWhole: Send {
    fn send(&mut self, req: Request<Bytes>) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, ForwardError>> + Send + '_>>;
}

/// What [`Handler::transparent_upstream`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayAsk<'a> {
    Connection,
    /// A request whose head has been read: its method and path (without the query) as the client
    /// wrote them. The handler classifies them (the relay knows no endpoints).
    Request {
        /// The listener's name (for the checks' audit lines).
        listener: &'a str,
        method: &'a Method,
        path: &'a str,
        /// The target (path and query) and header fields, when the handler asked for them
        /// ([`Handler::relay_checks_heads`]) and hyper would accept them all; the relay then
        /// forwards exactly these bytes.
        head: Option<(&'a str, &'a hyper::HeaderMap)>,
        /// A body follows the head (a length or chunks).
        has_body: bool,
    },
}

/// Who made a request, as a handler established it: put in the response's extensions, it goes into
/// the access-log line.
#[derive(Debug, Clone)]
pub struct AccessIdentity(pub Arc<str>);

/// Per-connection facts shared with the handler.
pub struct ConnCtx {
    pub listener: Arc<str>,
    pub peer: PeerInfo,
    pub(super) peer_label: Arc<str>,
    pub(super) access_log: bool,
    pub(super) hijacked: Mutex<Option<Hijacked>>,
    /// Replaces the byte splice of a hijacked exchange (BuildKit's gRPC, relayed for a policy).
    pub(super) stream_relay: Mutex<Option<StreamRelay>>,
    /// Where the connection is, for its timeouts.
    pub(super) activity: Arc<Activity>,
}

/// What takes over a hijacked exchange instead of the splice: (client stream, daemon stream).
pub type StreamRelay = Box<dyn FnOnce(BoxIo, BoxIo) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub(super) struct Hijacked {
    pub(super) upstream: hyper::upgrade::Upgraded,
    pub(super) record: Option<AccessRecord>,
}

impl ConnCtx {
    /// Parks the daemon's side of a hijacked exchange. The response the handler returns next is the
    /// last one on this connection: after its head is written, the socket is spliced to `upstream`.
    pub fn hijack(&self, upstream: hyper::upgrade::Upgraded) {
        // A hijacked session may be silent for hours (`docker run -it`, BuildKit): no timeout.
        self.activity.hijacked();
        if let Ok(mut slot) = self.hijacked.lock() {
            *slot = Some(Hijacked { upstream, record: None });
        }
    }

    /// Has the next hijacked exchange relayed by `relay` instead of spliced: it gets the client's
    /// stream and the daemon's.
    pub fn relay_hijack_with(&self, relay: StreamRelay) {
        if let Ok(mut slot) = self.stream_relay.lock() {
            *slot = Some(relay);
        }
    }

    pub(super) fn is_hijacked(&self) -> bool {
        self.hijacked.lock().map(|s| s.is_some()).unwrap_or(false)
    }
}
