//! Layer 1, HTTP: the one way a listening socket is served, by every kind of server (Docker
//! listeners and job sockets, the registry proxy, the cache and its metrics, the control socket).
//!
//! Why one entry point: every listener faces clients that may not be well-behaved (a CI job is an
//! attacker's seat), and what protects ctproxy's file descriptors must hold for all of them alike:
//! - a **connection cap** per listener (so per job socket): live connections are counted, hijacked
//!   ones included, until their task ends. One more is answered `503` with a Docker-style JSON body
//!   and closed (see [`Gate`] for how that stays cheap), and the refusal is audit-logged;
//! - a **TLS handshake timeout**, where the listener (or the server itself) does TLS;
//! - a **header-read timeout** and an **idle timeout**, handed to the server's connection driver as
//!   [`Timeouts`]: the raw relay keeps them itself ([`super::relay`]), hyper-served connections
//!   through [`super::clock`];
//! - accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`...) back off, doubling from 5 ms to 1 s, instead
//!   of spinning on a listener that stays readable.
//!
//! What a server does with a connection is its [`ConnServer`]: the handshake (TLS, or nothing) and
//! then serving it.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hyper::StatusCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::respond;
use crate::transport::{Accepted, Listener, PeerInfo};

/// The first pause after a failed accept; it doubles up to [`ACCEPT_BACKOFF_MAX`] while accepts
/// keep failing (as Go's net/http does).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Over-cap connections being answered at once, per listener; past that they are closed unanswered.
/// Each answer holds a descriptor for at most [`REFUSAL_LINGER`], so a flood holds at most this many
/// descriptors beyond the cap.
const REFUSAL_SLOTS: usize = 32;
/// How long an over-cap client is given to read its answer and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// At most one refusal line per listener in this time; the next one says how many went unlogged.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// What a listener's connections are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TLS handshakes (the listener's or the server's own).
    pub handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Live connections at most.
    pub max_connections: usize,
}

impl Limits {
    /// The limits of a listener without TLS (its handshake is nothing, so needs no timeout of its
    /// own; the one set here only bounds reading the peer's credentials).
    pub const fn plain(header_timeout: Duration, idle_timeout: Duration, max_connections: usize) -> Limits {
        Limits { handshake_timeout: header_timeout, header_timeout, idle_timeout, max_connections }
    }

    pub fn timeouts(&self) -> Timeouts {
        Timeouts { header: self.header_timeout, idle: self.idle_timeout }
    }
}

/// What a connection's driver enforces between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From the first byte of a request head to its end; for a connection's first request, from
    /// the connection's start (after any TLS handshake). Closes slowloris connections.
    pub header: Duration,
    /// From the end of a response to the first byte of the next request. Not running while a
    /// request is answered (streams, long bodies) nor after a hijack.
    pub idle: Duration,
}

/// One listener's door: its limits (replaced in place by a reload), its live connections and its
/// refusals.
///
/// An over-cap connection is answered with a `503` written right after accept, the write half shut,
/// and the client's request read and dropped until the client closes (at most [`REFUSAL_LINGER`]):
/// closing at once would reset the connection under the client's request and it would report a
/// reset or a broken pipe (Go's transport even retries such a request) instead of the reason. Those
/// answers run in tasks of their own, at most [`REFUSAL_SLOTS`] at a time per listener; past that,
/// and on TLS connections (where nothing can be said before a handshake that costs the server more
/// than the client), the connection is closed right after accept.
pub struct Gate {
    name: Arc<str>,
    limits: ArcSwap<Limits>,
    live: AtomicUsize,
    refusing: AtomicUsize,
    /// When the gate was made: the clock of `last_log_ms`.
    born: Instant,
    /// Milliseconds after `born` (plus one, so that 0 means never) of the last refusal line.
    last_log_ms: AtomicU64,
    /// Refusals not logged since the last line.
    unlogged: AtomicU64,
}

/// A live connection, counted by its gate until dropped.
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(name: impl Into<Arc<str>>, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            name: name.into(),
            limits: ArcSwap::from_pointee(limits),
            live: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            born: Instant::now(),
            last_log_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// New limits for the connections accepted from now on (a reload); live ones keep theirs, and
    /// a lower cap refuses new connections until enough live ones have ended.
    pub fn set_limits(&self, limits: Limits) {
        if **self.limits.load() != limits {
            self.limits.store(Arc::new(limits));
        }
    }

    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    /// Live connections right now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    fn admit(self: &Arc<Self>, cap: usize) -> Option<Admitted> {
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if before >= cap {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admitted(self.clone()))
    }

    /// Answers (or just closes) a connection over the cap, and logs it.
    fn refuse(self: &Arc<Self>, accepted: Accepted, cap: usize, answerable: bool) {
        self.log_refusal(&accepted.peer, cap);
        if !answerable || accepted.is_tls() {
            return;
        }
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= REFUSAL_SLOTS {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let gate = self.clone();
        tokio::spawn(async move {
            let message = format!("ctproxy: too many connections to this listener (cap {cap})");
            let answer = respond::error_bytes(StatusCode::SERVICE_UNAVAILABLE, &message, true, true);
            accepted.refuse(&answer, REFUSAL_LINGER).await;
            gate.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// The audit line of a refusal: the first one, then at most one per [`REFUSAL_LOG_EVERY`] with
    /// the count of those in between (a flood must not flood the log too).
    fn log_refusal(&self, peer: &PeerInfo, cap: usize) {
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.last_log_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < REFUSAL_LOG_EVERY.as_millis() as u64 {
            self.unlogged.fetch_add(1, Ordering::AcqRel);
            return;
        }
        self.last_log_ms.store(now, Ordering::Release);
        let unlogged = self.unlogged.swap(0, Ordering::AcqRel);
        tracing::warn!(
            target: "ctproxy::audit",
            listener = %self.name,
            %peer,
            cap,
            refused_unlogged = unlogged,
            "connection refused: too many connections to this listener"
        );
    }
}

/// What a server does with the connections of its listener.
pub trait ConnServer: Send + Sync + 'static {
    /// A connection ready for HTTP.
    type Stream: Send + 'static;

    /// Whether an over-cap connection may be answered in plain HTTP right after accept: false for
    /// a server that does TLS itself on a plain listener.
    const PLAIN_HTTP: bool = true;

    /// Finishes setting up an accepted connection (a TLS handshake, or nothing); bounded by the
    /// listener's handshake timeout.
    fn handshake(&self, accepted: Accepted) -> impl Future<Output = io::Result<(Self::Stream, PeerInfo)>> + Send;

    /// Serves the connection until it ends, holding it to `timeouts` between requests.
    fn serve(self: Arc<Self>, stream: Self::Stream, peer: PeerInfo, timeouts: Timeouts) -> impl Future<Output = ()> + Send;
}

/// Accepts connections on `listener` until `stop` and serves each with `server` in a task of
/// `connections`, within the limits of `gate`. Dropping the listener at the end closes the socket
/// (and removes a unix socket file); accepted connections live on.
pub async fn serve_listener<S: ConnServer>(
    listener: Listener,
    gate: Arc<Gate>,
    server: Arc<S>,
    connections: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let accepted = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) => {
                // Out of file descriptors and the like: the listener stays readable, so accepting
                // again at once would spin.
                tracing::warn!(listener = %gate.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let limits = gate.limits();
        let Some(admitted) = gate.admit(limits.max_connections) else {
            gate.refuse(accepted, limits.max_connections, S::PLAIN_HTTP);
            continue;
        };
        let server = server.clone();
        let name = gate.name.clone();
        connections.spawn(async move {
            let _admitted = admitted;
            let peer = accepted.peer.clone();
            match tokio::time::timeout(limits.handshake_timeout, server.handshake(accepted)).await {
                Ok(Ok((stream, peer))) => server.serve(stream, peer, limits.timeouts()).await,
                Ok(Err(e)) => tracing::info!(listener = %name, %peer, error = %e, "connection refused at handshake"),
                Err(_) => tracing::info!(listener = %name, %peer, "handshake timed out"),
            }
        });
    }
    drop(listener);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(cap: usize) -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: cap,
        }
    }

    #[test]
    fn the_cap_counts_live_connections() {
        let gate = Gate::new("t", limits(2));
        let a = gate.admit(2).expect("first");
        let b = gate.admit(2).expect("second");
        assert!(gate.admit(2).is_none(), "over the cap");
        assert_eq!(gate.live(), 2);
        drop(a);
        let c = gate.admit(2).expect("a place was freed");
        drop((b, c));
        assert_eq!(gate.live(), 0);
    }

    #[test]
    fn limits_are_replaced_in_place() {
        let gate = Gate::new("t", limits(2));
        gate.set_limits(limits(5));
        assert_eq!(gate.limits().max_connections, 5);
    }
}
