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
//! an answer it would not rewrite). If not, the connection, with the request already read, is handed
//! back to the hyper path so that this very request and all later ones are served there.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::body::AccessRecord;
use super::clock::Expired;
use super::forward::ForwardError;
use super::framing::{BodyFraming, HeadDetail, HeadError, Progress, RequestHead, ResponseFraming, ResponseHead};
use super::handler::{Handler, RelayAsk, RelayTo};
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
            let head = match self.read_request_head(shutdown, clock).await {
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
            let Some(RelayTo { upstream: connector, identity }) = handler.transparent_upstream(ask) else {
                return Ended::HandBack;
            };
            let started = Instant::now();
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
