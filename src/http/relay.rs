//! Layer 1, HTTP: the raw relay that serves connections of transparent listeners, and the requests
//! of checked listeners (job sockets) that their handler checked on the head and would forward
//! unchanged.
//!
//! Why it exists: a listener with no authentication, policy or namespace has nothing to decide about
//! a request, yet serving it through hyper costs more than the hop itself (issue "added p50 latency
//! under 50 µs": hyper's server, then hyper-util's pooled client, which hands each request over a
//! channel to a second task, and the access-log line formatted before the answer was written). This
//! relay does only what a byte copier must do to stay HTTP-correct:
//! - one daemon connection per client connection, dialed lazily and owned by the same task (no pool,
//!   no channel, no second task); re-dialed when dockerd closed it between requests;
//! - per request, the head is parsed (httparse) only to find where the message ends, then written to
//!   dockerd *verbatim*; the body follows by its framing (`Content-Length`, chunked bytes copied as they
//!   are while a small state machine tracks the chunks, or none); the answer comes back the same way.
//!   Since the two connections are paired one to one, hop-by-hop headers (`Connection`, HTTP/1.0
//!   keep-alive, `Expect`) mean the same thing on both hops and are passed through untouched;
//! - every read is written through at once (logs -f, events, pull progress, build contexts), from one
//!   reusable buffer per direction;
//! - `101 Switching Protocols` and dockerd's legacy hijack (a `200` with a Docker stream content type
//!   and no framing) end HTTP: the raw streams are spliced with [`super::hijack::splice`];
//! - the access-log line is written after the answer went out.
//!
//! Between requests the connection is held to the listener's header-read and idle timeouts with one
//! `Sleep` per connection, moved after each answer (a later deadline is a compare-and-swap in tokio's
//! timer, no syscall, no allocation); while a request is being answered, and after a hijack, nothing
//! times out.
//!
//! Before every request the handler is asked whether it may be relayed ([`RelayAsk::Request`]: a
//! `SIGHUP` may have added checks; a checking handler gets the request's target and header fields,
//! runs its checks on them, and says yes only for a request it would forward exactly as it is, with
//! an answer it would not rewrite).
//!
//! A checking handler may instead ask for the request *whole* ([`RelayTo::whole`]: a job socket's
//! container create, list or inspect, whose JSON body and answer its namespace reads whole anyway).
//! The relay reads the body by its `Content-Length`, hands the request to [`Handler::call_whole`]
//! together with its own daemon connection ([`SendWhole`]: the request written with its own length,
//! the answer read whole and de-chunked), and writes the handler's answer with its own length. Why:
//! through hyper such a request crossed hyper's server, the pooled client and the channel between
//! their tasks, 30–60 µs more than the relay's one hop (docs/PERFORMANCE.md).
//!
//! Anything else (and a whole request the relay cannot read whole: a chunked body, one over the
//! limit, `Expect`, HTTP/1.0) makes the relay hand the connection, with the request already read,
//! back to the hyper path, so that this very request and all later ones are served there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderMap};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::body::AccessRecord;
use super::clock::Expired;
use super::forward::{strip_hop_by_hop, ForwardError};
use super::framing::{self, BodyFraming, HeadDetail, HeadError, Progress, RequestHead, ResponseFraming, ResponseHead};
use super::handler::{AccessIdentity, ConnCtx, Handler, RelayAsk, RelayTo, SendWhole, WholeLimits};
use super::hijack::{splice, Prefixed};
use super::respond;
use super::serve::Timeouts;
use crate::transport::{ClientStream, Connector};

/// Each direction's buffer; bodies are relayed through it, so this is also the largest single write.
const BUF_SIZE: usize = 64 * 1024;
/// A head (request or response) larger than this is refused, as hyper does (its default read buffer
/// limit is 8 KiB + 400 KiB).
const MAX_HEAD: usize = 408 * 1024;

/// Per-connection settings from the listener.
pub struct RelayConn<'a> {
    pub listener: &'a Arc<str>,
    pub peer_label: &'a Arc<str>,
    pub access_log: bool,
    pub timeouts: Timeouts,
    /// What [`Handler::call_whole`] is called with.
    pub ctx: &'a Arc<ConnCtx>,
}

/// How a relayed connection ended.
pub enum Relayed {
    /// The connection is over (closed, hijacked stream done, drained).
    Closed,
    /// The listener stopped being transparent: serve the rest (starting with the request already
    /// read, kept in front of the stream) through the checked path.
    HandBack(Prefixed<ClientStream>),
}

/// Serves one client connection until it closes, hijacks, drains, or must be handed back.
pub async fn serve<H: Handler>(client: ClientStream, conn: RelayConn<'_>, handler: &H, shutdown: &CancellationToken) -> Relayed {
    // Watched for readability only: no wake-up each time the peer reads what was written.
    let client = client.read_interest_only();
    // The first request's head is due within the header timeout of the connection's start.
    let sleep = tokio::time::sleep(conn.timeouts.header);
    tokio::pin!(sleep);
    let mut clock = Clock { sleep, timeouts: conn.timeouts, idle: false };
    let detail = if handler.relay_checks_heads() {
        HeadDetail::Full
    } else if conn.access_log {
        HeadDetail::Path
    } else {
        HeadDetail::Minimal
    };
    let mut relay = Relay { client, upstream: None, cbuf: Buf::new(BUF_SIZE), ubuf: Buf::new(BUF_SIZE), conn, detail };
    let ended = relay.run(handler, shutdown, &mut clock).await;
    let mut client = relay.client;
    match ended {
        Ended::Close => {
            let _ = client.shutdown().await;
            Relayed::Closed
        }
        Ended::Gone => Relayed::Closed,
        Ended::HandBack => Relayed::HandBack(Prefixed::new(Bytes::copy_from_slice(relay.cbuf.filled()), client)),
    }
}

/// The connection's header-read and idle timeouts: one `Sleep`, moved when the phase changes.
struct Clock<'s> {
    sleep: Pin<&'s mut Sleep>,
    timeouts: Timeouts,
    /// No byte of the next request yet (the idle timeout runs); otherwise a head is awaited (the
    /// header timeout runs).
    idle: bool,
}

impl Clock<'_> {
    /// An answer is done: the next request may take the idle timeout to begin, unless its first
    /// bytes are already here (pipelined).
    fn answered(&mut self, buffered: bool) {
        self.idle = !buffered;
        let wait = if buffered { self.timeouts.header } else { self.timeouts.idle };
        self.sleep.as_mut().reset(tokio::time::Instant::now() + wait);
    }

    /// Bytes of a head arrived but not all of it: from now on the header timeout runs.
    fn head_begun(&mut self) {
        if self.idle {
            self.idle = false;
            self.sleep.as_mut().reset(tokio::time::Instant::now() + self.timeouts.header);
        }
    }

    fn expired(&self) -> Expired {
        if self.idle {
            Expired::Idle
        } else {
            Expired::Header
        }
    }
}

/// What the client did next.
enum Next {
    Request(RequestHead),
    /// It left, or the server is draining and the connection is idle.
    Gone,
    TimedOut(Expired),
}

/// The state of one relayed connection.
struct Relay<'a> {
    client: ClientStream,
    upstream: Option<Upstream>,
    /// Client → daemon: request heads and bodies (and pipelined requests waiting their turn).
    cbuf: Buf,
    /// Daemon → client.
    ubuf: Buf,
    conn: RelayConn<'a>,
    /// How much of each request head the handler needs.
    detail: HeadDetail,
}

/// The daemon connection paired with the client's.
struct Upstream {
    stream: ClientStream,
    /// What dialed it: a reload that changes the daemon's address makes the next request re-dial.
    connector: Connector,
    /// It has carried a request already (so it may have been closed by dockerd while idle).
    reused: bool,
}

enum Ended {
    /// Close the client connection (write half first).
    Close,
    /// Nothing to close politely: the stream was spliced or the client is gone.
    Gone,
    HandBack,
}

impl Relay<'_> {
    async fn run<H: Handler>(&mut self, handler: &H, shutdown: &CancellationToken, clock: &mut Clock<'_>) -> Ended {
        loop {
            let mut head = match self.read_request_head(shutdown, clock).await {
                Ok(Next::Request(h)) => h,
                Ok(Next::Gone) => return Ended::Close,
                Ok(Next::TimedOut(expired)) => {
                    expired.log(self.conn.listener, self.conn.peer_label);
                    return Ended::Close;
                }
                Err(e) => {
                    // Malformed or oversized: answered as hyper would, then the connection closes,
                    // since where the next request starts is unknown.
                    let (status, msg) = match &e {
                        HeadError::TooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "ctproxy: request head too large".to_owned()),
                        HeadError::Malformed(why) => (StatusCode::BAD_REQUEST, format!("ctproxy: malformed request: {why}")),
                    };
                    tracing::warn!(target: "ctproxy::audit", listener = %self.conn.listener, peer = %self.conn.peer_label, status = status.as_u16(), reason = %msg, "request refused: unparseable");
                    let _ = write_flush(&mut self.client, &respond::error_bytes(status, &msg, true, true)).await;
                    return Ended::Close;
                }
            };
            // Checked before every request: policies added by a reload apply from this one on.
            let ask = RelayAsk::Request {
                listener: self.conn.listener,
                method: &head.method,
                path: &head.path,
                head: head.full.as_ref().map(|f| (f.target.as_str(), &f.headers)),
                has_body: head.body != BodyFraming::None,
            };
            let Some(RelayTo { upstream: connector, identity, whole }) = handler.transparent_upstream(ask) else {
                return Ended::HandBack;
            };
            let started = Instant::now();
            if let Some(limits) = whole {
                let Some(whole) = WholeRequest::of(&mut head, limits) else { return Ended::HandBack };
                match self.whole_exchange(handler, &head, whole, connector, limits).await {
                    Some((status, bytes, identity)) => self.log(&head, &identity, status, started, bytes, None),
                    None => return Ended::Gone,
                }
                if !head.keep_alive || shutdown.is_cancelled() {
                    return Ended::Close;
                }
                clock.answered(!self.cbuf.is_empty());
                continue;
            }
            let outcome = self.exchange(&head, connector).await;
            let keep = match outcome {
                Outcome::Done { status, bytes, keep_alive } => {
                    self.log(&head, &identity, status, started, bytes, None);
                    keep_alive
                }
                Outcome::Hijacked { status, out, r#in } => {
                    self.log(&head, &identity, status, started, out, Some(r#in));
                    return Ended::Gone;
                }
                Outcome::Unreachable(e, in_sync) => {
                    tracing::warn!(listener = %self.conn.listener, error = %e, "request not forwarded");
                    let close = !in_sync || !head.keep_alive;
                    let body = respond::error_bytes(StatusCode::BAD_GATEWAY, &format!("ctproxy: {e}"), head.http11, close);
                    let ok = write_flush(&mut self.client, &body).await.is_ok();
                    self.log(&head, &identity, 502, started, body_len(&body), None);
                    ok && !close
                }
                Outcome::Broken { status, bytes } => {
                    self.upstream = None;
                    self.log(&head, &identity, status, started, bytes, None);
                    return Ended::Gone;
                }
            };
            if !keep || shutdown.is_cancelled() {
                return Ended::Close;
            }
            clock.answered(!self.cbuf.is_empty());
        }
    }

    fn log(&self, head: &RequestHead, identity: &Option<Arc<str>>, status: u16, started: Instant, bytes: u64, bytes_in: Option<u64>) {
        if !self.conn.access_log {
            return;
        }
        let record = AccessRecord {
            listener: self.conn.listener.clone(),
            peer: self.conn.peer_label.clone(),
            identity: identity.clone(),
            method: head.method.clone(),
            path: head.path.clone(),
            status,
            started,
        };
        record.emit(bytes, bytes_in);
    }

    /// Reads the next request head into `cbuf`, within `clock`'s timeouts.
    async fn read_request_head(&mut self, shutdown: &CancellationToken, clock: &mut Clock<'_>) -> Result<Next, HeadError> {
        loop {
            if !self.cbuf.is_empty() {
                if let Some(head) = RequestHead::parse(self.cbuf.filled(), self.detail)? {
                    return Ok(Next::Request(head));
                }
                clock.head_begun();
            }
            let idle = self.cbuf.is_empty();
            let read = {
                let Some(spare) = self.cbuf.spare(MAX_HEAD) else { return Err(HeadError::TooLarge) };
                if idle {
                    tokio::select! {
                        biased;
                        r = self.client.read(spare) => r,
                        _ = shutdown.cancelled() => return Ok(Next::Gone),
                        _ = clock.sleep.as_mut() => return Ok(Next::TimedOut(clock.expired())),
                    }
                } else {
                    tokio::select! {
                        biased;
                        r = self.client.read(spare) => r,
                        _ = clock.sleep.as_mut() => return Ok(Next::TimedOut(Expired::Header)),
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => return Ok(Next::Gone),
                Ok(n) => self.cbuf.end += n,
            }
        }
    }

    /// The daemon connection for the next request: the paired one, or a new one if there is none yet,
    /// a reload changed the daemon's address, or (`probe`) dockerd closed it while it was idle.
    async fn upstream(&mut self, connector: &Connector, probe: bool) -> Result<(), ForwardError> {
        let stale = match &mut self.upstream {
            Some(up) => !up.connector.same(connector) || (probe && up.reused && looks_closed(&mut up.stream)),
            None => true,
        };
        if stale {
            self.upstream = None;
            self.ubuf.clear();
            let stream = connector.connect().await.map_err(|e| unreachable(connector, &e))?.read_interest_only();
            self.upstream = Some(Upstream { stream, connector: connector.clone(), reused: false });
        }
        Ok(())
    }

    /// Forwards one request and relays its answer. A request without a body (the hot path: `GET`,
    /// `HEAD`) is sent again on a fresh connection if a reused one turns out to have been closed by
    /// dockerd; one with a body cannot be, so the connection is checked before.
    async fn exchange(&mut self, head: &RequestHead, connector: Connector) -> Outcome {
        let bodyless = head.body == BodyFraming::None;
        for attempt in 0..2 {
            if let Err(e) = self.upstream(&connector, !bodyless).await {
                // A body not read yet leaves the connection out of step: it closes after the 502.
                if bodyless {
                    self.cbuf.consume(head.len);
                }
                return Outcome::Unreachable(e, bodyless);
            }
            let Relay { client, upstream, cbuf, ubuf, .. } = self;
            let Some(up) = upstream.as_mut() else { return Outcome::Broken { status: 0, bytes: 0 } };
            let reused = std::mem::replace(&mut up.reused, true);
            let mut aside = if bodyless {
                Aside::Watch { held: head.len }
            } else {
                let mut progress = Progress::from(&head.body);
                match progress.take(&cbuf.filled()[head.len..]) {
                    Ok(n) => Aside::Body { progress, pending: head.len + n },
                    Err(_) => return Outcome::Broken { status: 0, bytes: 0 },
                }
            };
            let sent = if bodyless { write_flush(&mut up.stream, &cbuf.filled()[..head.len]).await } else { Ok(()) };
            let answered = match sent {
                Ok(()) => answer(&mut up.stream, ubuf, client, cbuf, &mut aside, head).await,
                Err(e) => Err(AnswerError::BeforeHead(e)),
            };
            if bodyless {
                match answered {
                    Err(AnswerError::BeforeHead(_)) if reused && attempt == 0 && !matches!(aside, Aside::Closed) => {
                        self.upstream = None;
                        self.ubuf.clear();
                        continue;
                    }
                    Err(AnswerError::Client { .. }) => {}
                    _ => self.cbuf.consume(head.len),
                }
            }
            // The client's half-close went to dockerd, or the body did not go whole: this exchange
            // is the connection's last.
            let last = !matches!(aside, Aside::Watch { .. } | Aside::Done);
            return match answered {
                Ok(Answered::Done { status, bytes, keep_alive }) => {
                    if !keep_alive || last {
                        self.upstream = None;
                    }
                    Outcome::Done { status, bytes, keep_alive: keep_alive && !last }
                }
                Ok(Answered::Hijack { status, out }) => self.splice(status, out).await,
                Err(AnswerError::BeforeHead(e)) => {
                    self.upstream = None;
                    self.ubuf.clear();
                    Outcome::Unreachable(unreachable(&connector, &e), bodyless && !last)
                }
                Err(AnswerError::Client { status, bytes }) | Err(AnswerError::After { status, bytes }) => Outcome::Broken { status, bytes },
            };
        }
        Outcome::Broken { status: 0, bytes: 0 }
    }

    /// Serves a request whole ([`RelayTo::whole`]): reads its body, lets the handler check and
    /// rewrite it and forward what it decides on this connection's daemon connection, and writes
    /// its answer with its own length. `None`: the client is gone (or broke off).
    async fn whole_exchange<H: Handler>(
        &mut self,
        handler: &H,
        head: &RequestHead,
        whole: WholeRequest,
        connector: Connector,
        limits: WholeLimits,
    ) -> Option<(u16, u64, Option<Arc<str>>)> {
        let total = head.len + whole.body_len;
        while self.cbuf.filled().len() < total {
            let spare = self.cbuf.spare(total.max(MAX_HEAD))?;
            match self.client.read(spare).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.cbuf.end += n,
            }
        }
        let body = Bytes::copy_from_slice(&self.cbuf.filled()[head.len..total]);
        self.cbuf.consume(total);
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = whole.uri;
        *req.headers_mut() = whole.headers;
        let Relay { client, upstream, ubuf, conn, .. } = self;
        let mut daemon = WholeDaemon { upstream, ubuf, connector, max_answer: limits.max_answer };
        let rsp = handler.call_whole(req, conn.ctx, &mut daemon).await;
        let identity = rsp.extensions().get::<AccessIdentity>().map(|i| i.0.clone());
        let (parts, body) = rsp.into_parts();
        let (status, body) = match Limited::new(body, limits.max_answer.saturating_mul(2)).collect().await {
            Ok(b) => (parts.status, Some(b.to_bytes())),
            Err(e) => {
                tracing::warn!(listener = %conn.listener, error = %e, "answer not written: unreadable or too large");
                (StatusCode::BAD_GATEWAY, None)
            }
        };
        let out = match &body {
            Some(b) => answer_bytes(status, parts.headers, b, head.method == Method::HEAD, head.keep_alive),
            None => respond::error_bytes(status, "ctproxy: the answer could not be read", true, !head.keep_alive),
        };
        write_flush(client, &out).await.ok()?;
        Some((status.as_u16(), body.map_or(0, |b| b.len() as u64), identity))
    }

    /// After `101` or a legacy hijack: the two raw streams, both ways, until the daemon's side ends.
    async fn splice(&mut self, status: u16, out: u64) -> Outcome {
        let Some(up) = self.upstream.take() else { return Outcome::Broken { status, bytes: out } };
        // Bytes the client sent right behind the head (stdin) go first.
        let early = Bytes::copy_from_slice(self.cbuf.filled());
        self.cbuf.clear();
        let stats = splice(Prefixed::new(early, &mut self.client), up.stream).await;
        Outcome::Hijacked { status, out: out + stats.daemon_to_client, r#in: stats.client_to_daemon }
    }
}

/// Whether an idle daemon connection has been closed (or says something unasked): checked without
/// waiting, before a request that could not be sent twice.
fn looks_closed(stream: &mut ClientStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut scratch = [0u8; 64];
    let mut rb = ReadBuf::new(&mut scratch);
    !matches!(Pin::new(stream).poll_read(&mut cx, &mut rb), Poll::Pending)
}

fn unreachable(connector: &Connector, e: &io::Error) -> ForwardError {
    ForwardError::Unreachable { upstream: connector.addr().to_string(), cause: e.to_string() }
}

fn body_len(response: &[u8]) -> u64 {
    response.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| (response.len() - i - 4) as u64)
}

/// What became of one request.
enum Outcome {
    Done {
        status: u16,
        bytes: u64,
        keep_alive: bool,
    },
    Hijacked {
        status: u16,
        out: u64,
        r#in: u64,
    },
    /// dockerd could not be reached (or hung up without a word): answered 502 here. `in_sync`: the
    /// request was read whole, so the client connection can go on.
    Unreachable(ForwardError, bool),
    /// Failed half-way (a side vanished): the connection is dropped. What got through is logged.
    Broken {
        status: u16,
        bytes: u64,
    },
}

/// What `answer` did.
enum Answered {
    Done {
        status: u16,
        bytes: u64,
        keep_alive: bool,
    },
    /// The head is written; the streams are raw from here.
    Hijack {
        status: u16,
        out: u64,
    },
}

enum AnswerError {
    /// Nothing of the answer reached the client: a 502 can still be sent.
    BeforeHead(io::Error),
    /// The client broke off (or sent a malformed body).
    Client { status: u16, bytes: u64 },
    /// dockerd broke off after the head was relayed.
    After { status: u16, bytes: u64 },
}

/// What is done on the client's side while dockerd's answer is awaited.
enum Aside {
    /// Relaying the request body: `pending` bytes at the front of `cbuf` still go to dockerd.
    Body { progress: Progress, pending: usize },
    /// Reading ahead (pipelined requests) to notice the client leaving: its EOF is passed on to
    /// dockerd as a half-close, which is how dockerd learns that a `logs -f` or `events` reader left.
    /// The first `held` bytes of `cbuf` are the request being answered.
    Watch { held: usize },
    /// The client half-closed; dockerd was told.
    Closed,
    /// The client half-closed after more bytes (stdin for a hijack, or requests that will not be
    /// answered): dockerd is told only after them, by the splice, if there is one.
    ClosedAfter,
    /// The body stopped half-way (dockerd stopped reading it).
    Incomplete,
    /// Nothing left to read ahead for (the buffer is full).
    Done,
}

enum AsideFault {
    /// The client vanished or sent a malformed body.
    Client,
}

impl Aside {
    /// Makes what progress can be made without waiting; registers for wake-ups otherwise.
    fn poll(&mut self, cx: &mut Context<'_>, client: &mut ClientStream, up: &mut ClientStream, cbuf: &mut Buf) -> Result<(), AsideFault> {
        loop {
            match self {
                Aside::Body { progress, pending } => {
                    if *pending > 0 {
                        match Pin::new(&mut *up).poll_write(cx, &cbuf.filled()[..*pending]) {
                            Poll::Ready(Ok(n)) if n > 0 => {
                                cbuf.consume(n);
                                *pending -= n;
                                if *pending == 0 {
                                    let _ = Pin::new(&mut *up).poll_flush(cx);
                                }
                                continue;
                            }
                            Poll::Ready(_) => *self = Aside::Incomplete,
                            Poll::Pending => return Ok(()),
                        }
                        continue;
                    }
                    if progress.is_done() {
                        *self = Aside::Watch { held: 0 };
                        continue;
                    }
                    if cbuf.is_empty() {
                        cbuf.clear();
                        let mut rb = ReadBuf::new(&mut cbuf.data[..]);
                        match Pin::new(&mut *client).poll_read(cx, &mut rb) {
                            Poll::Ready(Ok(())) if !rb.filled().is_empty() => cbuf.end = rb.filled().len(),
                            Poll::Ready(_) => return Err(AsideFault::Client),
                            Poll::Pending => return Ok(()),
                        }
                    }
                    *pending = progress.take(cbuf.filled()).map_err(|_| AsideFault::Client)?;
                }
                Aside::Watch { held } => {
                    let held = *held;
                    let Some(spare) = cbuf.spare(MAX_HEAD) else {
                        *self = Aside::Done;
                        return Ok(());
                    };
                    let mut rb = ReadBuf::new(spare);
                    let polled = Pin::new(&mut *client).poll_read(cx, &mut rb);
                    let n = rb.filled().len();
                    match polled {
                        Poll::Ready(Ok(())) if n > 0 => cbuf.end += n,
                        Poll::Ready(_) if cbuf.filled().len() > held => *self = Aside::ClosedAfter,
                        Poll::Ready(_) => {
                            let _ = Pin::new(&mut *up).poll_shutdown(cx);
                            *self = Aside::Closed;
                        }
                        Poll::Pending => return Ok(()),
                    }
                }
                Aside::Closed | Aside::ClosedAfter | Aside::Incomplete | Aside::Done => return Ok(()),
            }
        }
    }
}

/// Reads from dockerd into `ubuf` while `aside` goes on. `Ok(0)`: dockerd closed.
async fn read_upstream(
    up: &mut ClientStream,
    ubuf: &mut Buf,
    client: &mut ClientStream,
    cbuf: &mut Buf,
    aside: &mut Aside,
) -> Result<io::Result<usize>, AsideFault> {
    let Some(spare) = ubuf.spare(MAX_HEAD) else {
        return Ok(Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large")));
    };
    let mut rb = ReadBuf::new(spare);
    let r = std::future::poll_fn(|cx| {
        aside.poll(cx, client, up, cbuf)?;
        Pin::new(&mut *up).poll_read(cx, &mut rb).map(Ok)
    })
    .await?;
    let n = rb.filled().len();
    Ok(r.map(|()| {
        ubuf.end += n;
        n
    }))
}

/// Reads dockerd's answer (interim `1xx` heads included) and relays it to the client.
async fn answer(
    up: &mut ClientStream,
    ubuf: &mut Buf,
    client: &mut ClientStream,
    cbuf: &mut Buf,
    aside: &mut Aside,
    req: &RequestHead,
) -> Result<Answered, AnswerError> {
    let head = loop {
        let head = loop {
            match ResponseHead::parse(ubuf.filled(), req.method == Method::HEAD) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(why) => return Err(AnswerError::BeforeHead(io::Error::new(io::ErrorKind::InvalidData, why))),
            }
            match read_upstream(up, ubuf, client, cbuf, aside).await.map_err(|_| AnswerError::Client { status: 0, bytes: 0 })? {
                Ok(0) => {
                    return Err(AnswerError::BeforeHead(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before an answer")))
                }
                Ok(_) => {}
                Err(e) => return Err(AnswerError::BeforeHead(e)),
            }
        };
        if head.status >= 200 || head.status == 101 {
            break head;
        }
        // `100 Continue` and other interim answers: passed on, the real one follows.
        write_flush(client, &ubuf.filled()[..head.len]).await.map_err(|_| AnswerError::Client { status: head.status, bytes: 0 })?;
        ubuf.consume(head.len);
    };
    let status = head.status;
    if status == 101 || head.docker_stream {
        // Written with whatever raw bytes came along; then the streams are spliced.
        let out = (ubuf.filled().len() - head.len) as u64;
        write_flush(client, ubuf.filled()).await.map_err(|_| AnswerError::Client { status, bytes: 0 })?;
        ubuf.clear();
        return Ok(Answered::Hijack { status, out });
    }
    let mut progress = Progress::from_response(&head.body);
    let broken = |p: &Progress| AnswerError::After { status, bytes: p.data() };
    let mut first = head.len;
    loop {
        let n = progress.take(&ubuf.filled()[first..]).map_err(|_| broken(&progress))?;
        write_flush(client, &ubuf.filled()[..first + n]).await.map_err(|_| AnswerError::Client { status, bytes: progress.data() })?;
        ubuf.consume(first + n);
        first = 0;
        if progress.is_done() {
            break;
        }
        // What is left in the buffer past the body is not dockerd's to send: it is dropped below.
        if !ubuf.is_empty() {
            return Err(broken(&progress));
        }
        match read_upstream(up, ubuf, client, cbuf, aside).await {
            Ok(Ok(0)) if matches!(progress, Progress::Close(_)) => break,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Err(broken(&progress)),
            Err(_) => return Err(AnswerError::Client { status, bytes: progress.data() }),
        }
    }
    let keep_alive = req.keep_alive && head.keep_alive && !matches!(head.body, ResponseFraming::Close) && ubuf.is_empty();
    Ok(Answered::Done { status, bytes: progress.data(), keep_alive })
}

// === whole exchanges ===

/// A request the relay may read whole: HTTP/1.1, in origin form, with no body or a
/// `Content-Length` within the limit, and no `Expect` (whose `100 Continue` hyper's server sends).
/// Anything else goes to hyper's server, which serves it streaming.
struct WholeRequest {
    body_len: usize,
    uri: Uri,
    headers: HeaderMap,
}

impl WholeRequest {
    /// Takes the head's fields (the request is served whole from here) when it qualifies.
    fn of(head: &mut RequestHead, limits: WholeLimits) -> Option<WholeRequest> {
        let full = head.full.as_ref()?;
        let body_len = match head.body {
            BodyFraming::None => 0,
            BodyFraming::Length(n) => usize::try_from(n).ok().filter(|n| *n <= limits.max_body)?,
            BodyFraming::Chunked => return None,
        };
        if !head.http11 || !full.target.starts_with('/') || full.headers.contains_key(header::EXPECT) {
            return None;
        }
        let uri: Uri = full.target.parse().ok()?;
        let headers = head.full.take().map(|f| f.headers).unwrap_or_default();
        Some(WholeRequest { body_len, uri, headers })
    }
}

/// The relay's daemon connection, as the handler of a whole exchange sends through it.
struct WholeDaemon<'r> {
    upstream: &'r mut Option<Upstream>,
    ubuf: &'r mut Buf,
    connector: Connector,
    max_answer: usize,
}

impl SendWhole for WholeDaemon<'_> {
    fn send(
        &mut self,
        req: Request<Bytes>,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<Response<Bytes>, ForwardError>> + Send + '_>> {
        Box::pin(self.send_whole(req))
    }
}

/// Why a whole answer was not read.
enum WholeAnswerError {
    /// Nothing of an answer came (the connection was closed, or is not HTTP).
    BeforeHead(io::Error),
    /// It came, but broken, too large, or not one that can be read whole (an upgrade).
    Unusable(String),
}

impl WholeDaemon<'_> {
    async fn send_whole(&mut self, mut req: Request<Bytes>) -> Result<Response<Bytes>, ForwardError> {
        let bytes = request_bytes(&mut req);
        let idempotent = matches!(*req.method(), Method::GET | Method::HEAD);
        let to_head = req.method() == Method::HEAD;
        for attempt in 0..2 {
            let stale = match self.upstream.as_mut() {
                Some(up) => !up.connector.same(&self.connector) || (!idempotent && up.reused && looks_closed(&mut up.stream)),
                None => true,
            };
            if stale {
                *self.upstream = None;
                self.ubuf.clear();
                let stream = self.connector.connect().await.map_err(|e| unreachable(&self.connector, &e))?.read_interest_only();
                *self.upstream = Some(Upstream { stream, connector: self.connector.clone(), reused: false });
            }
            let Some(up) = self.upstream.as_mut() else { break };
            let reused = std::mem::replace(&mut up.reused, true);
            let answered = match write_flush(&mut up.stream, &bytes).await {
                Ok(()) => read_whole_answer(&mut up.stream, self.ubuf, to_head, self.max_answer).await,
                Err(e) => Err(WholeAnswerError::BeforeHead(e)),
            };
            match answered {
                Ok((rsp, keep_alive)) => {
                    if !keep_alive {
                        *self.upstream = None;
                        self.ubuf.clear();
                    }
                    return Ok(rsp);
                }
                // dockerd closed an idle connection as the request went: nothing was done, ask again.
                Err(WholeAnswerError::BeforeHead(_)) if reused && idempotent && attempt == 0 => {}
                Err(WholeAnswerError::BeforeHead(e)) => {
                    *self.upstream = None;
                    self.ubuf.clear();
                    return Err(unreachable(&self.connector, &e));
                }
                Err(WholeAnswerError::Unusable(why)) => {
                    *self.upstream = None;
                    self.ubuf.clear();
                    return Err(ForwardError::Unreachable { upstream: self.connector.addr().to_string(), cause: why });
                }
            }
            *self.upstream = None;
            self.ubuf.clear();
        }
        Err(ForwardError::Unreachable { upstream: self.connector.addr().to_string(), cause: "connection closed before an answer".into() })
    }
}

/// Reads one answer whole (interim `1xx` heads skipped); returns it and whether the connection
/// can carry another request.
async fn read_whole_answer(
    up: &mut ClientStream,
    ubuf: &mut Buf,
    to_head: bool,
    max_answer: usize,
) -> Result<(Response<Bytes>, bool), WholeAnswerError> {
    let head = loop {
        match ResponseHead::parse(ubuf.filled(), to_head) {
            Ok(Some(h)) if (100..200).contains(&h.status) && h.status != 101 => ubuf.consume(h.len),
            Ok(Some(h)) => break h,
            Ok(None) => match read_more(up, ubuf).await {
                Ok(0) => {
                    return Err(WholeAnswerError::BeforeHead(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before an answer",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(WholeAnswerError::BeforeHead(e)),
            },
            Err(why) => return Err(WholeAnswerError::BeforeHead(io::Error::new(io::ErrorKind::InvalidData, why))),
        }
    };
    if head.status == 101 || head.docker_stream {
        return Err(WholeAnswerError::Unusable("the daemon answered with a raw stream where a whole answer was expected".into()));
    }
    let unusable = |why: &str| WholeAnswerError::Unusable(format!("the daemon's answer {why}"));
    let (status, mut headers) = framing::response_fields(&ubuf.filled()[..head.len]).ok_or_else(|| unusable("has a malformed head"))?;
    ubuf.consume(head.len);
    let mut progress = Progress::from_response(&head.body);
    let mut raw = Vec::new();
    loop {
        let n = progress.take(ubuf.filled()).map_err(|_| unusable("has a malformed body"))?;
        raw.extend_from_slice(&ubuf.filled()[..n]);
        ubuf.consume(n);
        if progress.data() > max_answer as u64 {
            return Err(unusable(&format!("is larger than {max_answer} bytes")));
        }
        if progress.is_done() {
            break;
        }
        if !ubuf.is_empty() {
            return Err(unusable("has bytes after its body"));
        }
        match read_more(up, ubuf).await {
            Ok(0) if matches!(progress, Progress::Close(_)) => break,
            Ok(n) if n > 0 => {}
            _ => return Err(unusable("broke off")),
        }
    }
    let body = match head.body {
        ResponseFraming::Chunked => framing::dechunk(&raw).ok_or_else(|| unusable("has a malformed body"))?,
        _ => raw,
    };
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    let mut rsp = Response::new(Bytes::from(body));
    *rsp.status_mut() = status;
    *rsp.headers_mut() = headers;
    let keep_alive = head.keep_alive && !matches!(head.body, ResponseFraming::Close) && ubuf.is_empty();
    Ok((rsp, keep_alive))
}

/// Reads what dockerd sent next into `ubuf`. `Ok(0)`: it closed.
async fn read_more(up: &mut ClientStream, ubuf: &mut Buf) -> io::Result<usize> {
    let Some(spare) = ubuf.spare(MAX_HEAD) else { return Err(io::Error::new(io::ErrorKind::InvalidData, "response head too large")) };
    let n = up.read(spare).await?;
    ubuf.end += n;
    Ok(n)
}

/// A request as sent to dockerd: its head (the handler's fields, hop-by-hop ones dropped from `req`
/// itself, framed by the body's own length) and its body.
fn request_bytes(req: &mut Request<Bytes>) -> Vec<u8> {
    use std::io::Write as _;
    strip_hop_by_hop(req.headers_mut());
    req.headers_mut().remove(header::CONTENT_LENGTH);
    let (body, headers) = (req.body(), req.headers());
    let mut out = Vec::with_capacity(256 + body.len());
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let _ = write!(out, "{} {} HTTP/1.1\r\n", req.method(), target);
    if !headers.contains_key(header::HOST) {
        out.extend_from_slice(b"host: docker\r\n");
    }
    write_fields(&mut out, headers);
    if !body.is_empty() || !matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS) {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// An answer written whole: the status, the handler's fields (framing and connection fields are
/// the relay's), its length, and the body (none to a `HEAD`).
fn answer_bytes(status: StatusCode, mut fields: HeaderMap, body: &[u8], to_head: bool, keep_alive: bool) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
    strip_hop_by_hop(&mut fields);
    fields.remove(header::CONTENT_LENGTH);
    write_fields(&mut out, &fields);
    // hyper's server adds one to every answer; dockerd's answers carry their own.
    if !fields.contains_key(header::DATE) {
        let _ = write!(out, "date: {}\r\n", httpdate::fmt_http_date(std::time::SystemTime::now()));
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let bodyless = status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    if !bodyless {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    if !bodyless && !to_head {
        out.extend_from_slice(body);
    }
    out
}

fn write_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    w.write_all(bytes).await?;
    w.flush().await
}

// === buffers ===

/// A read buffer: `data[start..end]` holds bytes read and not yet relayed.
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    fn new(size: usize) -> Buf {
        Buf { data: vec![0; size], start: 0, end: 0 }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.clear();
        }
    }

    /// Room to read more into, made by moving the kept bytes to the front or by growing up to `max`.
    /// `None`: `max` bytes are kept and none can go.
    fn spare(&mut self, max: usize) -> Option<&mut [u8]> {
        if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.data.len() < max {
                let grown = (self.data.len() * 2).min(max);
                self.data.resize(grown, 0);
            } else {
                return None;
            }
        }
        Some(&mut self.data[self.end..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_request_is_framed_by_its_own_length() {
        let mut req = Request::new(Bytes::from_static(b"{}"));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = "/v1.41/containers/create?name=x".parse().expect("uri");
        let h = req.headers_mut();
        h.insert(header::CONTENT_LENGTH, "99".parse().expect("value"));
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().expect("value"));
        h.insert(header::CONNECTION, "close".parse().expect("value"));
        h.insert(header::CONTENT_TYPE, "application/json".parse().expect("value"));
        let text = String::from_utf8(request_bytes(&mut req)).expect("utf-8");
        assert_eq!(
            text,
            "POST /v1.41/containers/create?name=x HTTP/1.1\r\nhost: docker\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
        let mut get = Request::new(Bytes::new());
        assert_eq!(String::from_utf8(request_bytes(&mut get)).expect("utf-8"), "GET / HTTP/1.1\r\nhost: docker\r\n\r\n");
    }

    #[test]
    fn a_whole_answer_is_framed_by_its_own_length() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "5".parse().expect("value"));
        h.insert(header::DATE, "Mon, 07 Dec 2026 08:00:00 GMT".parse().expect("value"));
        h.insert("api-version", "1.41".parse().expect("value"));
        let text = String::from_utf8(answer_bytes(StatusCode::CREATED, h.clone(), b"{}", false, true)).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let mut lines: Vec<&str> = head.lines().collect();
        lines[1..].sort_unstable();
        assert_eq!(lines, ["HTTP/1.1 201 Created", "api-version: 1.41", "content-length: 2", "date: Mon, 07 Dec 2026 08:00:00 GMT"]);
        assert_eq!(body, "{}", "the daemon's date kept, its length replaced");
        let closing = String::from_utf8(answer_bytes(StatusCode::NO_CONTENT, h.clone(), b"", false, false)).expect("utf-8");
        assert!(closing.ends_with("connection: close\r\n\r\n") && !closing.contains("content-length"), "{closing}");
        let head = answer_bytes(StatusCode::OK, h, b"body", true, true);
        assert!(String::from_utf8_lossy(&head).ends_with("content-length: 4\r\n\r\n"), "a HEAD answer has the length, not the body");
    }
}
