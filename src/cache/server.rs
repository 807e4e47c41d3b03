//! The caching proxy's request handling: which host a request is for, whether the cache may answer
//! it, and answering from storage, from a fill in flight, or from the origin.
//!
//! Order of checks for every request (on every keep-alive request, not once per connection):
//! the `Host` must be on the intercepted list and, over TLS, equal the SNI the certificate was
//! minted for (421 otherwise: a container must not use one host's connection to poison another's
//! entries). Then GET/HEAD that [`rules`] lets through are looked up; everything else goes to the
//! origin untouched.
//!
//! An entry fetched with credentials is never served without an upstream check made with the
//! current requester's own credentials (a conditional request: 304 serves the cached body, a
//! refusal is passed on). Stale entries are revalidated the same way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::fill::{self, Head, Inflight, Joined};
use super::metrics::{Metrics, Outcome};
use super::rules::{self, Ecosystem, EntryUse, FreshnessRules, RangeAnswer, RevalidationRules, Scheme};
use super::store::{now_ms, now_secs, Entry, Meta, Store};
use super::upstream::Origins;
use crate::http::forward::strip_hop_by_hop;

pub type CacheBody = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// How long a follower waits for the leader's response head before fetching for itself.
const FOLLOW_WAIT: Duration = Duration::from_secs(30);

/// Everything the handlers share.
pub struct Core {
    pub hosts: arc_swap::ArcSwap<std::collections::HashSet<String>>,
    pub store: Arc<Store>,
    pub inflight: Arc<Inflight>,
    /// Replaced by a reload that changes `origins` or `extra_roots`.
    pub origins: arc_swap::ArcSwap<Origins>,
    pub rules: FreshnessRules,
    pub revalidation: RevalidationRules,
    /// One upstream revalidation at a time per key.
    pub revalidations: Revalidations,
    pub metrics: Metrics,
    /// More Prometheus text appended to `/metrics` (the registry proxy's blob cache, handed in by
    /// `app.rs`: the cache never imports the registry).
    pub extra_metrics: std::sync::OnceLock<MetricsSource>,
}

/// Renders a component's counters in Prometheus' text format.
pub type MetricsSource = Box<dyn Fn() -> String + Send + Sync>;

/// Per-key locks for revalidations, so that concurrent requests for a stale (or asked-fresh) entry
/// make one conditional request upstream and are all answered by it. Entries are dropped when no
/// request holds them (weak references, pruned as the map grows).
#[derive(Default)]
pub struct Revalidations {
    locks: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>>,
}

impl Revalidations {
    /// The lock of `key`, shared with every request for it that holds it now.
    pub fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = locks.get(key).and_then(std::sync::Weak::upgrade) {
            return lock;
        }
        if locks.len() >= 1024 {
            locks.retain(|_, lock| lock.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct Conn {
    pub scheme: Scheme,
    /// The TLS server name the client asked for (HTTPS only).
    pub sni: Option<Arc<str>>,
    pub peer: SocketAddr,
}

/// The metrics labels of a request: its scheme and its package ecosystem.
#[derive(Debug, Clone, Copy)]
struct Label {
    scheme: Scheme,
    eco: Ecosystem,
}

/// A request's validated target.
struct Target {
    host: String,
    port: u16,
    /// `Host` as the client sent it (forwarded upstream).
    host_header: HeaderValue,
    path_and_query: String,
}

fn text(status: StatusCode, msg: &str) -> Response<CacheBody> {
    let body = format!("{msg}\n");
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn full(b: Bytes) -> CacheBody {
    Full::new(b).map_err(|e: Infallible| match e {}).boxed_unsync()
}

fn empty() -> CacheBody {
    Empty::new().map_err(|e: Infallible| match e {}).boxed_unsync()
}

fn stream_body<S>(s: S) -> CacheBody
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    StreamBody::new(s.map_ok(Frame::data)).boxed_unsync()
}

/// Counts body bytes into the metrics as they are sent.
fn counted<S>(s: S, core: &Arc<Core>, l: Label, from_cache: bool) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let core = core.clone();
    s.inspect_ok(move |b| core.metrics.bytes(l.scheme, l.eco, from_cache, b.len() as u64))
}

/// Validates the target of a request: intercepted host, `Host` equal to SNI over TLS, and an
/// absolute-form target (if any) naming the same host.
fn target(core: &Core, conn: &Conn, req: &Request<Incoming>) -> Result<Target, (StatusCode, &'static str)> {
    let refuse = |status, msg: &'static str| Err((status, msg));
    let Some(host_header) = req.headers().get(header::HOST).cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "a Host header is required");
    };
    let Ok(hh) = host_header.to_str() else { return refuse(StatusCode::BAD_REQUEST, "malformed Host header") };
    let Ok(auth) = hh.parse::<hyper::http::uri::Authority>() else { return refuse(StatusCode::BAD_REQUEST, "malformed Host header") };
    let host = auth.host().trim_end_matches('.').to_ascii_lowercase();
    if let Some(a) = req.uri().authority() {
        if a.host().trim_end_matches('.').to_ascii_lowercase() != host {
            return refuse(StatusCode::BAD_REQUEST, "the request target names another host than Host");
        }
    }
    let default_port = match conn.scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    if let Some(sni) = &conn.sni {
        if **sni != *host {
            return refuse(StatusCode::MISDIRECTED_REQUEST, "Host does not match the TLS server name of this connection");
        }
    } else if conn.scheme == Scheme::Https {
        return refuse(StatusCode::MISDIRECTED_REQUEST, "TLS without a server name");
    }
    if !core.hosts.load().contains(&host) {
        return refuse(StatusCode::FORBIDDEN, "this host is not intercepted by the cache");
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if !path_and_query.starts_with('/') {
        return refuse(StatusCode::BAD_REQUEST, "request target must be a path");
    }
    Ok(Target { host, port: auth.port_u16().unwrap_or(default_port), host_header, path_and_query })
}

/// Entry point of every request.
pub async fn handle(core: Arc<Core>, conn: Conn, req: Request<Incoming>) -> Result<Response<CacheBody>, Infallible> {
    let t = match target(&core, &conn, &req) {
        Ok(t) => t,
        Err((status, msg)) => {
            core.metrics.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(target: "ctproxy::audit", peer = %conn.peer, %status, "cache refused a request: {msg}");
            return Ok(text(status, msg));
        }
    };
    let span = tracing::debug_span!("cache", peer = %conn.peer, host = %t.host, path = %t.path_and_query, method = %req.method());
    let label = Label { scheme: conn.scheme, eco: rules::ecosystem(&t.host, &t.path_and_query) };
    Ok(tracing::Instrument::instrument(async move { with_first_frame(answer(core, label, t, req).await).await }, span).await)
}

/// The answer with its body's first frame already read, so that a body that fails before its first
/// byte becomes a 502 that says why. hyper writes the head together with the first frame: a body
/// whose first poll fails closes the connection with nothing written (`curl: (52) Empty reply
/// from server`), which a client cannot tell from a cache that crashed. Once the head is out, a
/// failure can only cut the body short (the client sees fewer bytes than `Content-Length`).
async fn with_first_frame(resp: Response<CacheBody>) -> Response<CacheBody> {
    if hyper::body::Body::is_end_stream(resp.body()) {
        return resp;
    }
    let (parts, mut body) = resp.into_parts();
    match body.frame().await {
        None => Response::from_parts(parts, empty()),
        Some(Ok(first)) => {
            let rest = http_body_util::BodyStream::new(body);
            let stream = futures_util::stream::once(std::future::ready(Ok(first))).chain(rest);
            Response::from_parts(parts, StreamBody::new(stream).boxed_unsync())
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, status = %parts.status, "cache: the body failed before its first byte");
            text(StatusCode::BAD_GATEWAY, &format!("ctproxy cache: the response body failed before its first byte: {e}"))
        }
    }
}

/// Answers a request for a validated target.
async fn answer(core: Arc<Core>, l: Label, t: Target, req: Request<Incoming>) -> Response<CacheBody> {
    if let Some(why) = rules::request_bypass(req.method(), &t.path_and_query, req.headers()) {
        tracing::debug!(reason = why.as_str(), "cache bypass");
        core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
        return passthrough(&core, l, &t, req).await;
    }
    let (parts, _body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let primary = rules::primary_key(l.scheme, &t.host, &t.path_and_query);
    let vary = store_vary(&core.store, &primary);
    let key = full_key(&primary, &vary, &parts.headers);

    if let Some(entry) = core.store.get(&key) {
        match answer_from_entry(&core, l, &t, &parts, &key, &entry).await {
            Some(r) => return r,
            None => { /* damaged or gone: fetch below */ }
        }
    }
    if head_only {
        core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
        return fetch_uncached(&core, l, &t, Method::HEAD, &parts.headers).await;
    }
    miss(&core, l, &t, &parts, &primary, &key).await
}

fn store_vary(store: &Store, primary: &str) -> Vec<HeaderName> {
    store.vary_names(primary).iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect()
}

fn full_key(primary: &str, vary: &[HeaderName], req: &HeaderMap) -> String {
    if vary.is_empty() {
        primary.to_owned()
    } else {
        format!("{primary}\n{}", rules::vary_key(vary, req))
    }
}

/// What the rules need to know of `entry` for a request to `t` arriving at `now_ms`.
fn entry_state(t: &Target, entry: &Entry, now_ms: u64) -> rules::EntryState {
    rules::EntryState {
        class: rules::classify(&t.host, &t.path_and_query),
        ecosystem: rules::ecosystem(&t.host, &t.path_and_query),
        credentialed: entry.credentialed(),
        fresh: entry.is_fresh(now_ms / 1000),
        since_validated: Duration::from_millis(now_ms.saturating_sub(entry.validated_at_ms())),
    }
}

/// Answers from a stored entry, revalidating first when [`rules::entry_use`] says so; `None` when
/// the entry turned out unusable, or a new body for it is being fetched (the caller then joins that
/// fetch or makes its own).
async fn answer_from_entry(
    core: &Arc<Core>,
    l: Label,
    t: &Target,
    req: &hyper::http::request::Parts,
    key: &str,
    entry: &Arc<Entry>,
) -> Option<Response<CacheBody>> {
    let checked = if entry.inline().is_some() {
        true
    } else {
        let (c, e) = (core.clone(), entry.clone());
        tokio::task::spawn_blocking(move || c.store.check(&e)).await.unwrap_or(false)
    };
    if !checked {
        return None;
    }
    let arrived = now_ms();
    // The common hit (fresh, shared, no client directive) skips classifying the URL.
    let plain_hit = !entry.credentialed() && entry.is_fresh(arrived / 1000) && rules::client_max_age(&req.headers).is_none();
    if plain_hit || rules::entry_use(&req.headers, &entry_state(t, entry, arrived), &core.revalidation) == EntryUse::Serve {
        core.metrics.request(l.scheme, l.eco, Outcome::Hit);
        return Some(serve_entry(core, l, req, entry, "HIT"));
    }
    // One revalidation at a time per key (credentialed entries aside: each requester is checked
    // with their own credentials). Whoever waited for it is answered by it.
    let _turn = if entry.credentialed() {
        None
    } else {
        let lock = core.revalidations.lock(key);
        // A revalidation that hangs does not hold the others back longer than a fill would.
        let guard = tokio::time::timeout(FOLLOW_WAIT, lock.lock_owned()).await.ok();
        match core.store.get(key) {
            Some(current) if current.validated_at_ms() >= arrived && !current.credentialed() => {
                core.metrics.request(l.scheme, l.eco, Outcome::Hit);
                return Some(serve_entry(core, l, req, &current, "HIT-REVALIDATED"));
            }
            // The revalidation we waited for brought a new body, still being fetched: follow it.
            _ if core.inflight.contains(key) => return None,
            _ => {}
        }
        guard
    };
    let meta = entry.meta();
    let mut h = upstream_headers(&req.headers, &t.host_header);
    let mut conditional = false;
    if let Some(etag) = meta.etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(header::IF_NONE_MATCH, etag);
        conditional = true;
    } else if let Some(lm) = meta.last_modified.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        h.insert(header::IF_MODIFIED_SINCE, lm);
        conditional = true;
    }
    let Some(url) = core.origins.load_full().url(l.scheme, &t.host, t.port, &t.path_and_query) else {
        return Some(text(StatusCode::BAD_REQUEST, "bad target"));
    };
    let sent = core.origins.load_full().client.get(url).headers(h).send().await;
    match sent {
        Ok(resp) if conditional && resp.status() == StatusCode::NOT_MODIFIED => {
            // Authorized (with this requester's credentials, if any) and unchanged.
            let mut merged = entry.headers.clone();
            for (k, v) in resp.headers() {
                if rules::replayed_headers(resp.headers()).contains_key(k) {
                    merged.insert(k.clone(), v.clone());
                }
            }
            merged.insert(
                header::DATE,
                HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())).unwrap_or(HeaderValue::from_static("")),
            );
            let fresh_for = rules::storable(&Method::GET, &t.host, &t.path_and_query, &req.headers, StatusCode::OK, &merged, &core.rules)
                .map(|s| s.fresh_for.as_secs())
                .unwrap_or(0);
            let etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
            let lm = resp.headers().get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_owned);
            core.store.refresh(entry, now_secs().saturating_add(fresh_for), etag, lm);
            core.metrics.request(l.scheme, l.eco, Outcome::Revalidated);
            Some(serve_entry(core, l, req, entry, "REVALIDATED"))
        }
        Ok(resp) if resp.status() == StatusCode::OK => {
            // Changed upstream, or the entry had no validator to ask with: store the new body (when
            // allowed) while serving it.
            core.metrics.request(l.scheme, l.eco, Outcome::Miss);
            core.metrics.refetch(l.eco, conditional);
            let primary = rules::primary_key(l.scheme, &t.host, &t.path_and_query);
            let key = meta.key.clone();
            let temp = || core.store.temp_file().map_err(std::io::Error::other);
            match core.inflight.join(&key, temp) {
                Ok(Joined::Leader(writer, fill)) => Some(store_and_serve(core, l, t, req, &primary, writer, fill, resp)),
                _ => Some(from_reqwest(core, l, resp, false)),
            }
        }
        Ok(resp) => {
            if matches!(resp.status(), StatusCode::NOT_FOUND | StatusCode::GONE) && !meta.credentialed {
                core.store.remove_if_same(&meta.key, entry);
            }
            // A refusal (401/403/...) of this requester, or an error: theirs to see, nothing cached.
            if resp.status().is_server_error() && !meta.credentialed {
                tracing::warn!(status = %resp.status(), "origin failed; serving a stale copy");
                core.metrics.request(l.scheme, l.eco, Outcome::Stale);
                return Some(serve_entry(core, l, req, entry, "STALE"));
            }
            core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
            Some(from_reqwest(core, l, resp, req.method == Method::HEAD))
        }
        Err(e) if !meta.credentialed => {
            tracing::warn!(error = %e, "origin unreachable; serving a stale copy");
            core.metrics.request(l.scheme, l.eco, Outcome::Stale);
            Some(serve_entry(core, l, req, entry, "STALE"))
        }
        Err(e) => Some(bad_gateway(&e)),
    }
}

fn bad_gateway(e: &reqwest::Error) -> Response<CacheBody> {
    tracing::warn!(error = %e, "cache: origin unreachable");
    text(StatusCode::BAD_GATEWAY, &format!("ctproxy cache: origin unreachable: {}", error_chain(e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// A stored entry as a response: 304 for a matching conditional, 206/416 for ranges.
fn serve_entry(
    core: &Arc<Core>,
    l: Label,
    req: &hyper::http::request::Parts,
    entry: &Arc<Entry>,
    x_cache: &'static str,
) -> Response<CacheBody> {
    let (stored_at, etag, last_modified) = {
        let m = entry.lock_meta();
        (m.stored_at, m.etag.clone(), m.last_modified.clone())
    };
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(now_secs().saturating_sub(stored_at)));
    headers.insert("x-cache", HeaderValue::from_static(x_cache));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = entry.len;
    respond_with_body(core, l, req, headers, Some(len), etag.as_deref(), last_modified.as_deref(), true, |start, end| {
        if let Some(b) = entry.inline() {
            return Ok(full(b.slice(start as usize..end as usize)));
        }
        let f = std::fs::File::open(&entry.path)?;
        Ok(stream_body(fill::read_file(f, start, end)))
    })
}

/// The common tail of every cached answer: conditional (304), range (206/416), HEAD, full.
#[allow(clippy::too_many_arguments)]
fn respond_with_body(
    core: &Arc<Core>,
    l: Label,
    req: &hyper::http::request::Parts,
    mut headers: HeaderMap,
    len: Option<u64>,
    etag: Option<&str>,
    last_modified: Option<&str>,
    from_cache: bool,
    body: impl FnOnce(u64, u64) -> std::io::Result<CacheBody>,
) -> Response<CacheBody> {
    let mut resp = Response::new(empty());
    if rules::not_modified(&req.headers, etag, last_modified) {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        headers.remove(header::CONTENT_LENGTH);
        *resp.headers_mut() = headers;
        return resp;
    }
    let (status, start, end) = match len {
        Some(len) => match rules::range(&req.headers, len, etag, last_modified) {
            RangeAnswer::Full => (StatusCode::OK, 0, len),
            RangeAnswer::Partial { start, end_inclusive } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end_inclusive}/{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
                (StatusCode::PARTIAL_CONTENT, start, end_inclusive + 1)
            }
            RangeAnswer::Unsatisfiable => {
                let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        },
        None => (StatusCode::OK, 0, u64::MAX),
    };
    *resp.status_mut() = status;
    if len.is_some() {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    } else {
        headers.remove(header::CONTENT_LENGTH);
    }
    *resp.headers_mut() = headers;
    if req.method == Method::HEAD {
        return resp;
    }
    let b = match body(start, end) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cache: reading a body failed");
            return text(StatusCode::BAD_GATEWAY, "ctproxy cache: reading the cached body failed");
        }
    };
    if from_cache {
        let n = end.saturating_sub(start);
        if n != u64::MAX {
            core.metrics.bytes(l.scheme, l.eco, true, n);
        }
    }
    *resp.body_mut() = b;
    resp
}

/// Request headers sent upstream for a fetch of our own: the client's end-to-end headers
/// (credentials included: the answer is theirs) without conditionals and ranges, which the cache
/// answers itself.
fn upstream_headers(client: &HeaderMap, host: &HeaderValue) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    for n in
        [header::RANGE, header::IF_RANGE, header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_MATCH, header::IF_UNMODIFIED_SINCE]
    {
        h.remove(n);
    }
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::HOST, host.clone());
    h
}

/// A cold URL: lead a fill, or follow one in flight.
async fn miss(core: &Arc<Core>, l: Label, t: &Target, req: &hyper::http::request::Parts, primary: &str, key: &str) -> Response<CacheBody> {
    let temp = || core.store.temp_file().map_err(std::io::Error::other);
    match core.inflight.join(key, temp) {
        Err(e) => {
            tracing::warn!(error = %e, "cache: no temporary file; fetching without caching");
            core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
            fetch_uncached(core, l, t, Method::GET, &req.headers).await
        }
        Ok(Joined::Follower(fill)) => {
            let head = tokio::time::timeout(FOLLOW_WAIT, fill.head()).await.ok().flatten();
            match head {
                Some(h) if h.shareable && rules::vary_key(&names(&h.vary), &req.headers) == h.leader_vary_key => {
                    // A leader whose body fails before its first byte leaves nothing to share:
                    // this client is fetched for on its own instead.
                    if let Ok(Err(why)) = tokio::time::timeout(FOLLOW_WAIT, fill.first_byte()).await {
                        tracing::info!(error = %why, "cache: the fill followed failed before its first byte; fetching alone");
                        core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
                        return fetch_uncached(core, l, t, Method::GET, &req.headers).await;
                    }
                    core.metrics.request(l.scheme, l.eco, Outcome::Coalesced);
                    serve_fill(core, l, req, &fill, &h, "MISS-COALESCED", true)
                }
                // Another variant than the leader's: fetched (and stored) under its own key.
                Some(h) if h.shareable && full_key(primary, &names(&h.vary), &req.headers) != key => {
                    let key = full_key(primary, &names(&h.vary), &req.headers);
                    Box::pin(miss(core, l, t, req, primary, &key)).await
                }
                _ => {
                    core.metrics.request(l.scheme, l.eco, Outcome::Bypass);
                    fetch_uncached(core, l, t, Method::GET, &req.headers).await
                }
            }
        }
        Ok(Joined::Leader(writer, fill)) => {
            core.metrics.request(l.scheme, l.eco, Outcome::Miss);
            let Some(url) = core.origins.load_full().url(l.scheme, &t.host, t.port, &t.path_and_query) else {
                return text(StatusCode::BAD_REQUEST, "bad target");
            };
            match core.origins.load_full().client.get(url).headers(upstream_headers(&req.headers, &t.host_header)).send().await {
                Ok(resp) => store_and_serve(core, l, t, req, primary, writer, fill, resp),
                Err(e) => bad_gateway(&e),
            }
        }
    }
}

/// Runs `f` on response headers that carry a `Date` (the rules count freshness from it; an origin
/// that sends none is taken to have answered now).
fn with_date<T>(h: &HeaderMap, f: impl FnOnce(&HeaderMap) -> T) -> T {
    if h.contains_key(header::DATE) {
        return f(h);
    }
    let mut h = h.clone();
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now())) {
        h.insert(header::DATE, v);
    }
    f(&h)
}

fn names(v: &[String]) -> Vec<HeaderName> {
    v.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect()
}

/// Given the origin's answer to a leader: store it while serving it when the rules allow, else
/// hand it to the leader alone (followers then fetch for themselves).
#[allow(clippy::too_many_arguments)]
fn store_and_serve(
    core: &Arc<Core>,
    l: Label,
    t: &Target,
    req: &hyper::http::request::Parts,
    primary: &str,
    mut writer: fill::FillWriter,
    fill: Arc<fill::Fill>,
    resp: reqwest::Response,
) -> Response<CacheBody> {
    let status = resp.status();
    let storable =
        with_date(resp.headers(), |h| rules::storable(&Method::GET, &t.host, &t.path_and_query, &req.headers, status, h, &core.rules));
    let mut s = match storable {
        Ok(s) if status == StatusCode::OK => s,
        other => {
            if let Err(why) = other {
                tracing::debug!(reason = why.as_str(), %status, "cache: response not stored");
            }
            writer.set_head(Head { headers: HeaderMap::new(), len: None, shareable: false, vary: vec![], leader_vary_key: String::new() });
            writer.finish(Ok(0));
            let _ = std::fs::remove_file(&fill.path);
            return from_reqwest(core, l, resp, false);
        }
    };
    // A coded body is only for clients that asked for that coding.
    if resp.headers().contains_key(header::CONTENT_ENCODING) && !s.vary.contains(&header::ACCEPT_ENCODING) {
        s.vary.push(header::ACCEPT_ENCODING);
        s.vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    }
    let vary: Vec<String> = s.vary.iter().map(|n| n.as_str().to_owned()).collect();
    let leader_vary_key = rules::vary_key(&s.vary, &req.headers);
    let key = if vary.is_empty() { primary.to_owned() } else { format!("{primary}\n{leader_vary_key}") };
    let len = resp.content_length();
    let replay = rules::replayed_headers(resp.headers());
    let meta_headers: Vec<(String, String)> =
        replay.iter().filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned()))).collect();
    let etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let last_modified = resp.headers().get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let head = Head { headers: replay, len, shareable: !s.credentialed, vary: vary.clone(), leader_vary_key };
    let head = Arc::new(head);
    writer.set_head(Head {
        headers: head.headers.clone(),
        len: head.len,
        shareable: head.shareable,
        vary: head.vary.clone(),
        leader_vary_key: head.leader_vary_key.clone(),
    });
    let digest = rules::url_digest(&t.path_and_query);
    let store_core = core.clone();
    let primary = primary.to_owned();
    let path = fill.path.clone();
    let credentialed = s.credentialed;
    let fresh_for = s.fresh_for.as_secs();
    let url = format!("{}{}", t.host, t.path_and_query);
    // Detached: the body is written (and published) even if the leader's client goes away.
    tokio::spawn(async move {
        let body = resp.bytes_stream();
        let result = writer.write_body(body).await;
        let outcome = match result {
            Err(e) => Err(e),
            Ok((n, _)) if len.is_some_and(|l| l != n) => Err(format!("upstream body truncated: {n} of {} bytes", len.unwrap_or(0))),
            Ok((n, ctx)) => {
                let sha = super::store::finish_hex(ctx);
                match digest {
                    Some(d) if super::store::hex(&d) != sha => Err(format!("body does not match the digest in the URL ({url})")),
                    _ => {
                        let now = now_secs();
                        let meta = Meta {
                            key: key.clone(),
                            primary,
                            headers: meta_headers,
                            len: n,
                            sha256: sha,
                            stored_at: now,
                            fresh_until: now.saturating_add(fresh_for),
                            etag,
                            last_modified,
                            credentialed,
                            vary,
                        };
                        let store = store_core.clone();
                        let p = path.clone();
                        match tokio::task::spawn_blocking(move || store.store.publish(&p, meta)).await {
                            Ok(Ok(_)) => Ok(n),
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, "cache: not stored");
                                Ok(n)
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                }
            }
        };
        if let Err(e) = &outcome {
            tracing::warn!(error = %e, url, "cache: fetch failed; nothing stored");
            let _ = std::fs::remove_file(&path);
        } else if path.exists() {
            let _ = std::fs::remove_file(&path);
        }
        writer.finish(outcome);
    });
    serve_fill(core, l, req, &fill, &head, "MISS", false)
}

/// Serves a fill (being written) to one client.
fn serve_fill(
    core: &Arc<Core>,
    l: Label,
    req: &hyper::http::request::Parts,
    fill: &Arc<fill::Fill>,
    head: &Head,
    x_cache: &'static str,
    from_cache: bool,
) -> Response<CacheBody> {
    let mut headers = head.headers.clone();
    headers.insert("x-cache", HeaderValue::from_static(x_cache));
    if head.len.is_some() {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let etag = head.headers.get(header::ETAG).and_then(|v| v.to_str().ok());
    let lm = head.headers.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok());
    let fill = fill.clone();
    let core2 = core.clone();
    respond_with_body(core, l, req, headers, head.len, etag, lm, false, move |start, end| {
        let end = (end != u64::MAX).then_some(end);
        Ok(stream_body(counted(fill.reader(start, end), &core2, l, from_cache)))
    })
}

/// The origin's answer passed on as it is (hop-by-hop headers removed).
fn from_reqwest(core: &Arc<Core>, l: Label, resp: reqwest::Response, head_only: bool) -> Response<CacheBody> {
    let mut out = Response::new(empty());
    *out.status_mut() = resp.status();
    let mut h = resp.headers().clone();
    strip_hop_by_hop(&mut h);
    h.insert("x-cache", HeaderValue::from_static("BYPASS"));
    *out.headers_mut() = h;
    if !head_only {
        let s = resp.bytes_stream().map_err(std::io::Error::other);
        *out.body_mut() = stream_body(counted(s, core, l, false));
    }
    out
}

/// A GET or HEAD fetched for this client alone.
async fn fetch_uncached(core: &Arc<Core>, l: Label, t: &Target, method: Method, client: &HeaderMap) -> Response<CacheBody> {
    let Some(url) = core.origins.load_full().url(l.scheme, &t.host, t.port, &t.path_and_query) else {
        return text(StatusCode::BAD_REQUEST, "bad target");
    };
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    h.insert(header::HOST, t.host_header.clone());
    let head_only = method == Method::HEAD;
    match core.origins.load_full().client.request(method, url).headers(h).send().await {
        Ok(resp) => from_reqwest(core, l, resp, head_only),
        Err(e) => bad_gateway(&e),
    }
}

/// Any request the cache does not handle: forwarded with its body, answered with the origin's.
async fn passthrough(core: &Arc<Core>, l: Label, t: &Target, req: Request<Incoming>) -> Response<CacheBody> {
    let Some(url) = core.origins.load_full().url(l.scheme, &t.host, t.port, &t.path_and_query) else {
        return text(StatusCode::BAD_REQUEST, "bad target");
    };
    let (parts, body) = req.into_parts();
    let mut h = parts.headers;
    strip_hop_by_hop(&mut h);
    h.insert(header::HOST, t.host_header.clone());
    let head_only = parts.method == Method::HEAD;
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    match core.origins.load_full().client.request(parts.method, url).headers(h).body(body).send().await {
        Ok(resp) => from_reqwest(core, l, resp, head_only),
        Err(e) => bad_gateway(&e),
    }
}
