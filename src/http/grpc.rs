//! Layer 1, HTTP: gRPC over HTTP/2 cleartext on a hijacked connection, relayed call by call.
//!
//! Why: BuildKit's `/grpc` and `/session` upgrades carry HTTP/2 gRPC. Splicing bytes would let a
//! client call any method with any message; terminating HTTP/2 on both sides (with the `h2` crate)
//! lets a higher layer see each call's method and messages, refuse, rewrite or pass it.
//!
//! - [`relay`] runs the two HTTP/2 connections. Which side calls is a [`Callers`]: on `/grpc` the
//!   client calls the daemon, on `/session` the daemon calls the client.
//! - A [`CallPolicy`] gets every [`Call`] (request head and body, the response slot, a handle to
//!   open the same call on the other side) and decides. [`pass`] relays a call untouched,
//!   [`refuse`] answers with a gRPC status, [`unary`] relays a call after rewriting its one request
//!   message; [`Messages`] reads length-prefixed gRPC messages, [`frame`] writes one.
//!
//! Compressed messages are refused (a policy could not read them); clients do not compress unless
//! asked.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};

/// A message larger than this is refused (BuildKit's own client limit is 16 MiB).
pub const MAX_MESSAGE: usize = 16 << 20;
/// Stream and connection windows: large enough that a build context streams without stalls.
const WINDOW: u32 = 4 << 20;

/// gRPC status codes used here.
pub mod code {
    pub const UNKNOWN: u32 = 2;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
}

/// Both ends of a hijacked connection, boxed.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Which side of the hijacked connection makes the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callers {
    /// `/grpc`: the client is the HTTP/2 client, the daemon serves.
    Client,
    /// `/session`: the daemon calls the client, which serves its session.
    Daemon,
}

/// One call as the serving side of ctproxy received it.
pub struct Call {
    pub req: Request<RecvStream>,
    pub respond: h2::server::SendResponse<Bytes>,
    /// Opens calls on the side that serves them.
    pub upstream: h2::client::SendRequest<Bytes>,
}

impl Call {
    /// The gRPC method (`/moby.buildkit.v1.Control/Solve`).
    pub fn method(&self) -> &str {
        self.req.uri().path()
    }

    /// A metadata value, if it is text.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.req.headers().get(key).and_then(|v| v.to_str().ok())
    }
}

/// Decides every call of a relayed connection.
pub trait CallPolicy: Send + Sync + 'static {
    fn handle(self: Arc<Self>, call: Call) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// What went wrong in a relayed call.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Serves one hijacked connection until either side ends it. `client` is the hijacking client's
/// stream, `daemon` the daemon's upgraded one.
pub async fn relay(client: BoxIo, daemon: BoxIo, callers: Callers, policy: Arc<dyn CallPolicy>) {
    let (caller, server) = match callers {
        Callers::Client => (client, daemon),
        Callers::Daemon => (daemon, client),
    };
    if let Err(e) = run(caller, server, policy).await {
        tracing::debug!(error = %e, "gRPC relay ended");
    }
}

async fn run(caller: BoxIo, server: BoxIo, policy: Arc<dyn CallPolicy>) -> Result<(), GrpcError> {
    let (upstream, conn) =
        h2::client::Builder::new().initial_window_size(WINDOW).initial_connection_window_size(WINDOW).handshake::<_, Bytes>(server).await?;
    let mut upstream_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "gRPC relay: serving side ended");
        }
    });
    let mut accept =
        h2::server::Builder::new().initial_window_size(WINDOW).initial_connection_window_size(WINDOW).handshake::<_, Bytes>(caller).await?;
    let result = loop {
        tokio::select! {
            next = accept.accept() => match next {
                Some(Ok((req, respond))) => {
                    let call = Call { req, respond, upstream: upstream.clone() };
                    tokio::spawn(policy.clone().handle(call));
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Ok(()),
            },
            // The serving side closed: nothing more can be answered.
            _ = &mut upstream_task => break Ok(()),
        }
    };
    upstream_task.abort();
    result
}

/// Answers a call with a gRPC status and no message (a "trailers-only" response).
pub fn refuse(mut respond: h2::server::SendResponse<Bytes>, code: u32, message: &str) {
    let rsp = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", code.to_string())
        .header("grpc-message", percent_encode(message))
        .body(());
    if let Ok(rsp) = rsp {
        let _ = respond.send_response(rsp, true);
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, the rest percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A gRPC message with its 5-byte prefix (uncompressed).
pub fn frame(msg: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.len() + 5);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out.freeze()
}

/// Reads the length-prefixed messages of one side of a call.
pub struct Messages {
    recv: RecvStream,
    buf: BytesMut,
}

impl Messages {
    pub fn new(recv: RecvStream) -> Self {
        Messages { recv, buf: BytesMut::new() }
    }

    /// The next message, or `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Bytes>, GrpcError> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(GrpcError::Protocol("compressed gRPC messages are not supported".into()));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(GrpcError::Protocol(format!("a gRPC message of {len} bytes is too large")));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.recv.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(GrpcError::Protocol("a gRPC message was cut short".into())),
            }
        }
    }

    /// The trailers after the last message.
    pub async fn trailers(&mut self) -> Result<Option<HeaderMap>, GrpcError> {
        Ok(self.recv.trailers().await?)
    }
}

/// Sends `data` as flow control allows.
pub async fn send_data(to: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> Result<(), GrpcError> {
    if data.is_empty() {
        to.send_data(data, end)?;
        return Ok(());
    }
    while !data.is_empty() {
        to.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| to.poll_capacity(cx)).await {
            Some(c) => c?,
            None => return Err(GrpcError::Protocol("the stream closed".into())),
        };
        let n = cap.min(data.len());
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n);
        to.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

/// Copies a body with its trailers; on an error the receiving side is reset.
pub async fn pump(mut from: RecvStream, mut to: SendStream<Bytes>) {
    let result: Result<(), GrpcError> = async {
        while let Some(chunk) = from.data().await {
            let chunk = chunk?;
            let _ = from.flow_control().release_capacity(chunk.len());
            send_data(&mut to, chunk, false).await?;
        }
        match from.trailers().await? {
            Some(t) => to.send_trailers(t)?,
            None => to.send_data(Bytes::new(), true)?,
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        to.send_reset(h2::Reason::CANCEL);
    }
}

/// Opens the call on the serving side with `req`'s head; returns the response future and the body
/// sender.
pub async fn open(
    upstream: &mut h2::client::SendRequest<Bytes>,
    head: http::request::Parts,
    end: bool,
) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), GrpcError> {
    let mut ready = upstream.clone().ready().await?;
    let out = ready.send_request(Request::from_parts(head, ()), end)?;
    *upstream = ready;
    Ok(out)
}

/// Relays the serving side's answer to the caller.
pub async fn answer(rsp: h2::client::ResponseFuture, mut respond: h2::server::SendResponse<Bytes>) {
    match rsp.await {
        Ok(rsp) => {
            let (parts, body) = rsp.into_parts();
            let end = body.is_end_stream();
            match respond.send_response(Response::from_parts(parts, ()), end) {
                Ok(send) if !end => pump(body, send).await,
                _ => {}
            }
        }
        Err(e) => refuse(respond, code::UNKNOWN, &format!("ctproxy: the call failed: {e}")),
    }
}

/// Relays a call untouched.
pub async fn pass(call: Call) {
    let Call { req, respond, mut upstream } = call;
    let (head, body) = req.into_parts();
    let end = body.is_end_stream();
    match open(&mut upstream, head, end).await {
        Ok((rsp, send)) => {
            if !end {
                tokio::spawn(pump(body, send));
            }
            answer(rsp, respond).await;
        }
        Err(e) => refuse(respond, code::UNKNOWN, &format!("ctproxy: the call could not be relayed: {e}")),
    }
}

/// Rewrites one response message: `None` drops it.
pub type MapMessage = Box<dyn FnMut(Bytes) -> Option<Bytes> + Send>;
/// Rewrites a text the client prints.
pub type MapText = Box<dyn Fn(&str) -> String + Send>;

/// Rewrites the answer of a call: its messages and the text of its status.
#[derive(Default)]
pub struct Mapper {
    /// Each response message; `None` drops it.
    pub message: Option<MapMessage>,
    /// The `grpc-message` of the call's status (what the client prints for an error).
    pub status: Option<MapText>,
}

impl Mapper {
    /// `grpc-message` in `headers` (a trailers-only answer's head, or trailers) through `status`.
    fn status_in(&self, headers: &mut HeaderMap) {
        let Some(f) = &self.status else { return };
        if let Some(text) = headers.get("grpc-message").and_then(|v| v.to_str().ok()).map(percent_decode) {
            let out = f(&text);
            if out != text {
                if let Ok(v) = http::HeaderValue::from_str(&percent_encode(&out)) {
                    headers.insert("grpc-message", v);
                }
            }
        }
        // gRPC clients read the status from `grpc-status-details-bin` when there is one (a
        // `google.rpc.Status`, unpadded base64): its message (field 2) is rewritten the same way;
        // one that does not parse is dropped rather than passed with the old text.
        if let Some(v) = headers.get("grpc-status-details-bin").cloned() {
            match v.to_str().ok().and_then(|t| details_mapped(t, f)) {
                Some(Some(out)) => {
                    if let Ok(v) = http::HeaderValue::from_str(&out) {
                        headers.insert("grpc-status-details-bin", v);
                    }
                }
                Some(None) => {}
                None => {
                    headers.remove("grpc-status-details-bin");
                }
            }
        }
    }
}

/// A `grpc-status-details-bin` value with its message through `f`: `Some(None)` when unchanged,
/// `None` when it does not parse.
fn details_mapped(value: &str, f: &dyn Fn(&str) -> String) -> Option<Option<String>> {
    use base64::Engine;
    use prost::encoding::{decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};
    let trimmed = value.trim_end_matches('=');
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed).ok()?;
    let mut buf = &raw[..];
    let mut out = Vec::with_capacity(raw.len());
    let mut changed = false;
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire) = decode_key(&mut buf).ok()?;
        if tag == 2 && wire == WireType::LengthDelimited {
            let mut text = Vec::new();
            prost::encoding::bytes::merge(wire, &mut text, &mut buf, DecodeContext::default()).ok()?;
            let old = String::from_utf8_lossy(&text).into_owned();
            let new = f(&old);
            changed |= new != old;
            encode_key(2, wire, &mut out);
            encode_varint(new.len() as u64, &mut out);
            out.extend_from_slice(new.as_bytes());
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
            out.extend_from_slice(&start[..start.len() - buf.len()]);
        }
    }
    Some(changed.then(|| base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)))
}

/// Relays the serving side's answer to the caller through `map`.
pub async fn answer_mapped(rsp: h2::client::ResponseFuture, mut respond: h2::server::SendResponse<Bytes>, mut map: Mapper) {
    let rsp = match rsp.await {
        Ok(rsp) => rsp,
        Err(e) => return refuse(respond, code::UNKNOWN, &format!("ctproxy: the call failed: {e}")),
    };
    let (mut parts, body) = rsp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    map.status_in(&mut parts.headers);
    let end = body.is_end_stream();
    let Ok(mut send) = respond.send_response(Response::from_parts(parts, ()), end) else { return };
    if end {
        return;
    }
    let mut msgs = Messages::new(body);
    let result: Result<(), GrpcError> = async {
        while let Some(msg) = msgs.next().await? {
            let out = match &mut map.message {
                Some(f) => f(msg),
                None => Some(msg),
            };
            if let Some(out) = out {
                send_data(&mut send, frame(&out), false).await?;
            }
        }
        match msgs.trailers().await? {
            Some(mut t) => {
                map.status_in(&mut t);
                send.send_trailers(t)?
            }
            None => send.send_data(Bytes::new(), true)?,
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        send.send_reset(h2::Reason::CANCEL);
    }
}

/// `grpc-message` decoding: `%XX` escapes to bytes, read as UTF-8 (lossily).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a unary call with one message and status OK.
pub async fn reply(mut respond: h2::server::SendResponse<Bytes>, msg: &[u8]) {
    let rsp = Response::builder().status(200).header("content-type", "application/grpc").body(());
    let Ok(rsp) = rsp else { return };
    let Ok(mut send) = respond.send_response(rsp, false) else { return };
    if send_data(&mut send, frame(msg), false).await.is_err() {
        return send.send_reset(h2::Reason::CANCEL);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let _ = send.send_trailers(trailers);
}

/// Makes a unary call of `path` on the serving side (ctproxy asking the same peer a question of
/// its own, with `like`'s authority and metadata): its one response message.
pub async fn request(
    upstream: &mut h2::client::SendRequest<Bytes>,
    like: &http::request::Parts,
    path: &str,
    msg: &[u8],
) -> Result<Bytes, GrpcError> {
    let mut uri = http::Uri::builder().path_and_query(path);
    if let Some(s) = like.uri.scheme() {
        uri = uri.scheme(s.clone());
    }
    if let Some(a) = like.uri.authority() {
        uri = uri.authority(a.clone());
    }
    let uri = uri.build().map_err(|e| GrpcError::Protocol(e.to_string()))?;
    let mut req = Request::builder().method("POST").uri(uri).body(()).map_err(|e| GrpcError::Protocol(e.to_string()))?;
    req.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    req.headers_mut().insert("te", http::HeaderValue::from_static("trailers"));
    let (head, ()) = req.into_parts();
    let (rsp, mut send) = open(upstream, head, false).await?;
    send_data(&mut send, frame(msg), true).await?;
    let rsp = rsp.await?;
    let status = rsp.headers().get("grpc-status").cloned();
    let mut msgs = Messages::new(rsp.into_body());
    let out = msgs.next().await?;
    let trailers = msgs.trailers().await?;
    let status = trailers.as_ref().and_then(|t| t.get("grpc-status").cloned()).or(status);
    match (status.as_ref().and_then(|s| s.to_str().ok()), out) {
        (Some("0"), Some(m)) => Ok(m),
        (Some("0"), None) => Ok(Bytes::new()),
        (s, _) => Err(GrpcError::Protocol(format!("{path} answered gRPC status {}", s.unwrap_or("none")))),
    }
}

/// Relays a call with one request message (unary or server-streaming) after `rewrite` checked it:
/// `Err((code, message))` answers the caller with that status instead.
pub async fn unary(call: Call, rewrite: impl FnOnce(Bytes) -> Result<Bytes, (u32, String)>) {
    unary_mapped(call, rewrite, None).await
}

/// [`unary`], with the response messages through `map` when there is one.
pub async fn unary_mapped(call: Call, rewrite: impl FnOnce(Bytes) -> Result<Bytes, (u32, String)>, map: Option<Mapper>) {
    let mut u = match read_unary(call).await {
        Ok(u) => u,
        Err((respond, e)) => return refuse(respond, code::INVALID_ARGUMENT, &format!("ctproxy: {e}")),
    };
    u.msg = match rewrite(std::mem::take(&mut u.msg)) {
        Ok(m) => m,
        Err((c, m)) => return refuse(u.respond, c, &m),
    };
    forward(u, map).await
}

/// A call with one request message, read.
pub struct UnaryCall {
    pub head: http::request::Parts,
    pub msg: Bytes,
    pub respond: h2::server::SendResponse<Bytes>,
    pub upstream: h2::client::SendRequest<Bytes>,
}

/// Reads the one request message of `call`; `Err` gives back the response slot and why.
pub async fn read_unary(call: Call) -> Result<UnaryCall, (h2::server::SendResponse<Bytes>, String)> {
    let Call { req, respond, upstream } = call;
    let (head, body) = req.into_parts();
    let mut msgs = Messages::new(body);
    let msg = match msgs.next().await {
        Ok(Some(m)) => m,
        Ok(None) => Bytes::new(),
        Err(e) => return Err((respond, e.to_string())),
    };
    match msgs.next().await {
        Ok(None) => Ok(UnaryCall { head, msg, respond, upstream }),
        Ok(Some(_)) => Err((respond, "more than one request message".into())),
        Err(e) => Err((respond, e.to_string())),
    }
}

/// Relays a read call with its (possibly rewritten) message, the answer through `map` if any.
pub async fn forward(u: UnaryCall, map: Option<Mapper>) {
    let UnaryCall { mut head, msg, respond, mut upstream } = u;
    head.headers.remove(http::header::CONTENT_LENGTH);
    match open(&mut upstream, head, false).await {
        Ok((rsp, mut send)) => {
            if send_data(&mut send, frame(&msg), true).await.is_err() {
                send.send_reset(h2::Reason::CANCEL);
            }
            match map {
                Some(map) => answer_mapped(rsp, respond, map).await,
                None => answer(rsp, respond).await,
            }
        }
        Err(e) => refuse(respond, code::UNKNOWN, &format!("ctproxy: the call could not be relayed: {e}")),
    }
}

/// Rewrites the answer messages of a call: `message` gets each, `end` runs after the last; each
/// returns the messages to send the caller instead (none hides it).
pub trait Answers: Send {
    fn message(&mut self, msg: Bytes) -> Vec<Bytes>;
    fn end(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

/// Relays a call with one request message (`msg`, already checked) and rewrites its answer
/// messages with `answers`; the answer's headers and trailers pass as they are.
pub async fn relay_rewritten(
    mut upstream: h2::client::SendRequest<Bytes>,
    mut head: http::request::Parts,
    respond: h2::server::SendResponse<Bytes>,
    msg: Bytes,
    mut answers: impl Answers,
) {
    head.headers.remove(http::header::CONTENT_LENGTH);
    let rsp = match open(&mut upstream, head, false).await {
        Ok((rsp, mut send)) => {
            if send_data(&mut send, frame(&msg), true).await.is_err() {
                send.send_reset(h2::Reason::CANCEL);
            }
            rsp
        }
        Err(e) => return refuse(respond, code::UNKNOWN, &format!("ctproxy: the call could not be relayed: {e}")),
    };
    let mut respond = respond;
    let rsp = match rsp.await {
        Ok(r) => r,
        Err(e) => return refuse(respond, code::UNKNOWN, &format!("ctproxy: the call failed: {e}")),
    };
    let (parts, body) = rsp.into_parts();
    let end = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(s) if !end => s,
        _ => return,
    };
    let mut msgs = Messages::new(body);
    let result: Result<(), GrpcError> = async {
        while let Some(m) = msgs.next().await? {
            for out in answers.message(m) {
                send_data(&mut send, frame(&out), false).await?;
            }
        }
        for out in answers.end() {
            send_data(&mut send, frame(&out), false).await?;
        }
        match msgs.trailers().await? {
            Some(t) => send.send_trailers(t)?,
            None => send.send_data(Bytes::new(), true)?,
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "rewritten gRPC answer ended");
        send.send_reset(h2::Reason::CANCEL);
    }
}

/// A unary call ctproxy makes itself on the serving side, with `head`'s metadata and `path` as
/// its method: the answer's messages, or the gRPC status the server answered.
pub async fn call(
    upstream: &mut h2::client::SendRequest<Bytes>,
    head: &http::request::Parts,
    path: &str,
    msg: Bytes,
) -> Result<Vec<Bytes>, GrpcError> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = head.uri.scheme().cloned();
    uri.authority = head.uri.authority().cloned();
    uri.path_and_query = Some(http::uri::PathAndQuery::try_from(path).map_err(|e| GrpcError::Protocol(e.to_string()))?);
    let mut req =
        Request::builder().method(http::Method::POST).uri(http::Uri::from_parts(uri).map_err(|e| GrpcError::Protocol(e.to_string()))?);
    for (k, v) in &head.headers {
        if k != http::header::CONTENT_LENGTH {
            req = req.header(k, v);
        }
    }
    let (parts, ()) = req.body(()).map_err(|e| GrpcError::Protocol(e.to_string()))?.into_parts();
    let (rsp, mut send) = open(upstream, parts, false).await?;
    send_data(&mut send, frame(&msg), true).await?;
    let rsp = rsp.await?;
    status(rsp.headers())?;
    let mut msgs = Messages::new(rsp.into_body());
    let mut out = Vec::new();
    while let Some(m) = msgs.next().await? {
        out.push(m);
    }
    if let Some(t) = msgs.trailers().await? {
        status(&t)?;
    }
    Ok(out)
}

/// `Err` with the server's message when `headers` carry a non-zero `grpc-status`.
fn status(headers: &HeaderMap) -> Result<(), GrpcError> {
    match headers.get("grpc-status").and_then(|v| v.to_str().ok()) {
        None | Some("0") => Ok(()),
        Some(c) => {
            let m = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("");
            Err(GrpcError::Protocol(format!("status {c}: {m}")))
        }
    }
}

/// [`read_unary`], a malformed call answered here (`None`).
pub async fn read_unary_or_refuse(call: Call) -> Option<UnaryCall> {
    match read_unary(call).await {
        Ok(u) => Some(u),
        Err((respond, why)) => {
            refuse(respond, code::INVALID_ARGUMENT, &format!("ctproxy: {why}"));
            None
        }
    }
}

/// Answers a call with an OK status and no message.
pub fn answer_empty(mut respond: h2::server::SendResponse<Bytes>) {
    let rsp = Response::builder().status(200).header("content-type", "application/grpc").header("grpc-status", "0").body(());
    if let Ok(rsp) = rsp {
        let _ = respond.send_response(rsp, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%é"), "a b%25%C3%A9");
        assert_eq!(percent_decode("a b%25%C3%A9"), "a b%é");
        assert_eq!(percent_decode("50%"), "50%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn frame_has_prefix() {
        assert_eq!(&frame(b"ab")[..], &[0, 0, 0, 0, 2, b'a', b'b']);
    }
}
