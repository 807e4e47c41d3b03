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

/// Errors a response body can fail with while streaming (hyper's, or another client's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What was answered: a passthrough stream from dockerd, or a body made here.
pub enum ProxyBody {
    Upstream(Incoming),
    /// A stream from somewhere else than dockerd (the registry proxy's upstream registries).
    Stream(http_body_util::combinators::BoxBody<Bytes, BoxError>),
    Full(Option<Bytes>),
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
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            ProxyBody::Stream(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Unframed => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b) => b.is_end_stream(),
            ProxyBody::Stream(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Unframed => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b) => b.size_hint(),
            ProxyBody::Stream(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Unframed => SizeHint::default(),
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
    pub fn emit(&self, bytes_out: u64, bytes_in: Option<u64>) {
        let duration_us = self.started.elapsed().as_micros() as u64;
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
