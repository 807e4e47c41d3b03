//! The response body type handed to hyper, and the access-log record that rides along with it.
//!
//! Bodies from dockerd are passed through frame by frame (no copy, no buffering): logs, events, pull
//! progress and tar streams flow at the speed the client reads them. The access-log line is written
//! when the body is dropped, i.e. when the last byte went out or the client went away, so its byte
//! count and duration are those of the whole exchange.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The error of a body that is not hyper's own (a rewriter that met bad input, for instance).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body rewritten on its way (namespace de-mangling of a stream, for instance).
pub type BoxedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// What was answered: a passthrough stream from dockerd, or a body made here.
pub enum ProxyBody {
    Upstream(Incoming),
    Full(Option<Bytes>),
    /// A stream transformed by a higher layer.
    Boxed(BoxedBody),
    /// No bytes and *no framing*: with an HTTP/1.0 response this leaves the socket raw after the head,
    /// which is how dockerd answers a legacy (no `Upgrade` header) attach before hijacking it.
    Unframed,
}

impl ProxyBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        ProxyBody::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Boxed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Unframed => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Boxed(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Unframed => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Boxed(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Unframed => SizeHint::default(),
        }
    }
}

/// A request's body as a handler gets it: streaming from the client (hyper's server), or read whole
/// already (the relay's whole exchanges, [`super::RelayTo::whole`]).
pub enum ClientBody {
    Streaming(Incoming),
    Whole(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ClientBody::Streaming(b) => Pin::new(b).poll_frame(cx),
            ClientBody::Whole(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Streaming(b) => b.is_end_stream(),
            ClientBody::Whole(b) => b.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Streaming(b) => b.size_hint(),
            ClientBody::Whole(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// One request as the access log sees it.
pub struct AccessRecord {
    pub listener: Arc<str>,
    pub peer: Arc<str>,
    pub identity: Option<Arc<str>>,
    pub method: hyper::Method,
    pub path: String,
    pub status: u16,
    pub started: Instant,
}

impl AccessRecord {
    /// Writes the access-log line. `bytes_in` is only known for hijacked streams (client to daemon).
    pub fn emit(self, bytes_out: u64, bytes_in: Option<u64>) {
        if !tracing::enabled!(target: "ctproxy::access", tracing::Level::INFO) {
            return;
        }
        let duration_us = self.started.elapsed().as_micros() as u64;
        deferred::push(Pending { record: self, bytes_out, bytes_in, duration_us });
    }

    fn write(&self, bytes_out: u64, bytes_in: Option<u64>, duration_us: u64) {
        tracing::info!(
            target: "ctproxy::access",
            listener = %self.listener,
            peer = %self.peer,
            identity = self.identity.as_deref(),
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = bytes_out,
            bytes_in,
            duration_us,
        );
    }
}

/// An access-log line waiting to be written.
struct Pending {
    record: AccessRecord,
    bytes_out: u64,
    bytes_in: Option<u64>,
    duration_us: u64,
}

/// Writes every access-log line still waiting (at a stop, before the process exits).
pub fn flush_access_log() {
    deferred::drain();
}

/// Access-log lines are formatted and written by a thread of their own, a few milliseconds later.
///
/// Why: formatting and writing a line costs ~10 µs of CPU, and on a sequential keep-alive
/// connection the relay would spend it between one answer and the next request, on the same two
/// cores dockerd and the client need. Handing the record over costs a channel send; the writer wakes
/// on a timer, not per line, so it adds no wake-up per request either.
mod deferred {
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use super::Pending;

    const TICK: Duration = Duration::from_millis(5);

    struct Queue {
        tx: Sender<Pending>,
        rx: Mutex<Receiver<Pending>>,
    }

    static QUEUE: OnceLock<Queue> = OnceLock::new();

    fn queue() -> &'static Queue {
        QUEUE.get_or_init(|| {
            let (tx, rx) = channel();
            let spawned = std::thread::Builder::new().name("access-log".into()).spawn(|| loop {
                std::thread::sleep(TICK);
                drain();
            });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no access-log thread; lines are written when the server stops");
            }
            Queue { tx, rx: Mutex::new(rx) }
        })
    }

    pub fn push(p: Pending) {
        if let Err(e) = queue().tx.send(p) {
            let p = e.0;
            p.record.write(p.bytes_out, p.bytes_in, p.duration_us);
        }
    }

    pub fn drain() {
        let Some(q) = QUEUE.get() else { return };
        let rx = q.rx.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(p) = rx.try_recv() {
            p.record.write(p.bytes_out, p.bytes_in, p.duration_us);
        }
    }
}

/// A [`ProxyBody`] that counts what it yields and logs the request when dropped.
pub struct LoggedBody {
    inner: ProxyBody,
    bytes: u64,
    record: Option<AccessRecord>,
}

impl LoggedBody {
    pub fn new(inner: ProxyBody, record: Option<AccessRecord>) -> Self {
        LoggedBody { inner, bytes: 0, record }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes += data.len() as u64;
            }
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

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            record.emit(self.bytes, None);
        }
    }
}
