//! Layer 1, HTTP: header-read and idle timeouts for the connections hyper serves.
//!
//! Why not hyper's own `header_read_timeout`: it runs from the end of one response to the end of the
//! next request head, so one duration would have to serve both a slowloris client (seconds) and an
//! idle keep-alive connection of a client's pool (minutes). Here the connection's driver knows which
//! phase the connection is in, from three small pieces:
//! - [`Watched`], around the client's stream, notices the first bytes of a request arriving on an
//!   idle connection (from then on the header timeout runs);
//! - the service marks a request as being answered when hyper hands it the head
//!   ([`Activity::request`]: no timeout at all while a response streams or a body uploads), and
//!   [`Tracked`], around the response body, marks the connection idle when the body is done or
//!   dropped (from then on the idle timeout runs);
//! - [`Deadline`], polled by the driver right after the connection, keeps one `Sleep` per connection
//!   and moves it only when the phase changed.
//!
//! A hijacked connection ([`Activity::hijacked`]) never times out again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::serve::Timeouts;
use super::BoxError;

/// Waiting for (the rest of) a request head: the header timeout runs.
const HEAD: u32 = 0;
/// Between requests, no byte of the next one yet: the idle timeout runs.
const IDLE: u32 = 1;
/// A request is being answered: no timeout.
const BUSY: u32 = 2;
/// Hijacked: no timeout, ever.
const OFF: u32 = 3;
const PHASE: u32 = 3;

/// Where one connection is, shared by its stream, its service, its response bodies and its driver.
///
/// One word: the phase in the low two bits, and above them a count of changes, so that the driver,
/// which looks only after polling the connection, still sees a change that went and came back (an
/// answer ended and the next request began within one poll).
#[derive(Debug)]
pub struct Activity(AtomicU32);

/// A request being answered, to end with [`Activity::answered`] (what [`Tracked`] does).
pub struct Ticket {
    activity: Arc<Activity>,
    word: u32,
}

fn moved(word: u32, phase: u32) -> u32 {
    ((word & !PHASE).wrapping_add(PHASE + 1)) | phase
}

impl Default for Activity {
    fn default() -> Self {
        // The first request's head is awaited from the connection's start.
        Activity(AtomicU32::new(HEAD))
    }
}

impl Activity {
    fn word(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves to `to` if the word is `from(word)`; returns the new word.
    fn shift(&self, to: u32, from: impl Fn(u32) -> bool) -> Option<u32> {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| from(w).then(|| moved(w, to))).ok().map(|w| moved(w, to))
    }

    /// hyper handed a request head to the service: nothing times out until its response is done.
    pub fn request(self: &Arc<Self>) -> Ticket {
        let word = self.shift(BUSY, |w| w & PHASE != OFF).unwrap_or_else(|| self.word());
        Ticket { activity: self.clone(), word }
    }

    /// The response of `ticket` is done: the connection is idle, unless something else happened
    /// since (a hijack, a newer request).
    fn answered(&self, ticket_word: u32) {
        let _ = self.shift(IDLE, |w| w == ticket_word && w & PHASE == BUSY);
    }

    /// Bytes came from the client: on an idle connection, a request head has begun.
    fn read_some(&self) {
        if self.0.load(Ordering::Relaxed) & PHASE == IDLE {
            let _ = self.shift(HEAD, |w| w & PHASE == IDLE);
        }
    }

    /// The connection is hijacked: raw bytes from now on, no timeout.
    pub fn hijacked(&self) {
        let _ = self.shift(OFF, |w| w & PHASE != OFF);
    }
}

/// A client stream that tells its [`Activity`] when bytes arrive.
pub struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched { inner, activity }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A response body that ends its request's [`Ticket`] when it is done or dropped.
pub struct Tracked<B> {
    inner: B,
    ticket: Option<Ticket>,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, ticket: Ticket) -> Self {
        Tracked { inner, ticket: Some(ticket) }
    }

    fn done(&mut self) {
        if let Some(t) = self.ticket.take() {
            t.activity.answered(t.word);
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.done();
    }
}

/// Which wait was too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request head did not arrive whole in time (or nothing at all on a new connection).
    Header,
    /// No new request on a keep-alive connection.
    Idle,
}

impl Expired {
    /// The log line of a connection closed for it: a header timeout is what a slowloris client
    /// meets (info), an idle close is routine (debug).
    pub fn log(self, listener: &str, peer: &dyn std::fmt::Display) {
        match self {
            Expired::Header => {
                tracing::info!(%listener, %peer, "connection closed: no complete request head within the header timeout")
            }
            Expired::Idle => tracing::debug!(%listener, %peer, "connection closed: idle longer than the idle timeout"),
        }
    }
}

/// The one timer of a hyper-served connection.
pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
    seen: u32,
    timeouts: Timeouts,
}

impl Deadline {
    /// Armed for the first request head.
    pub fn new(timeouts: Timeouts) -> Deadline {
        Deadline { sleep: Box::pin(tokio::time::sleep(timeouts.header)), seen: HEAD, timeouts }
    }

    /// Ready once the connection waited too long in its phase. Poll it right after the
    /// connection, so that it sees what that poll changed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Poll<Expired> {
        let word = activity.word();
        if word != self.seen {
            self.seen = word;
            match word & PHASE {
                HEAD => self.sleep.as_mut().reset(Instant::now() + self.timeouts.header),
                IDLE => self.sleep.as_mut().reset(Instant::now() + self.timeouts.idle),
                _ => {}
            }
        }
        let expired = match word & PHASE {
            HEAD => Expired::Header,
            IDLE => Expired::Idle,
            _ => return Poll::Pending,
        };
        ready!(self.sleep.as_mut().poll(cx));
        Poll::Ready(expired)
    }
}

/// Serves one connection with hyper (keep-alive, no upgrades) until it ends, `shutdown` asks it to
/// finish (the request in flight completes), or it waits too long for a request. The service must
/// call [`Activity::request`] on `activity` for each request and wrap the response body in
/// [`Tracked`] with the ticket. For servers whose requests are plain request/response exchanges (the
/// cache, its metrics); Docker connections have their own driver, which also hands over hijacks
/// (`super::server`).
pub async fn serve_hyper<I, S, B>(
    io: I,
    activity: Arc<Activity>,
    service: S,
    timeouts: Timeouts,
    shutdown: &CancellationToken,
) -> Result<(), Expired>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + 'static,
    B::Error: Into<BoxError>,
{
    let conn = http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(Watched::new(io, activity.clone())), service);
    tokio::pin!(conn);
    let mut deadline = Deadline::new(timeouts);
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return Ok(());
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            expired = std::future::poll_fn(|cx| deadline.poll_expired(cx, &activity)) => return Err(expired),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_requests() {
        let a = Arc::new(Activity::default());
        assert_eq!(a.word() & PHASE, HEAD);
        a.read_some();
        assert_eq!(a.word() & PHASE, HEAD, "bytes of a head already awaited change nothing");
        let t = a.request();
        assert_eq!(a.word() & PHASE, BUSY);
        a.read_some();
        assert_eq!(a.word() & PHASE, BUSY, "body bytes do not start a head");
        let before = a.word();
        a.answered(t.word);
        assert_eq!(a.word() & PHASE, IDLE);
        a.read_some();
        assert_eq!(a.word() & PHASE, HEAD);
        assert_ne!(a.word(), before);
        let t2 = a.request();
        a.answered(t.word);
        assert_eq!(a.word() & PHASE, BUSY, "an old ticket does not end a newer request");
        a.hijacked();
        a.answered(t2.word);
        assert_eq!(a.word() & PHASE, OFF, "a hijacked connection stays without timeouts");
    }

    #[test]
    fn a_change_that_came_back_is_still_seen() {
        let a = Arc::new(Activity::default());
        let t = a.request();
        a.answered(t.word);
        let idle = a.word();
        a.read_some();
        let t = a.request();
        a.answered(t.word);
        assert_eq!(a.word() & PHASE, IDLE);
        assert_ne!(a.word(), idle);
    }
}
