//! A loopback origin server for the cache tests: HTTP and HTTPS on random ports of 127.0.0.1, a
//! certificate for the intercepted host names signed by a test CA made here with rcgen, and routes a
//! test sets and changes while it runs. Every request that reaches it is recorded, so a test can
//! tell a cache hit (the origin saw nothing) from a miss or a revalidation.
//!
//! What a route answers is a [`Resp`]: a status, headers and a body, plus the behaviours a cache has
//! to cope with: validators (`ETag`, `Last-Modified`, answered with 304), an `Authorization` it
//! requires, a body that varies with a request header, a slow first byte, a slow body and a body cut
//! short. Single byte ranges are served (206) unless a route says otherwise.
//!
//! [`Origin::start`] runs on the caller's runtime (async tests); [`Origin::start_blocking`] brings
//! its own, for the synchronous tests that make up most of `tests/`. Dropping the origin stops it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a truncated body waits after its last bytes before failing, so that hyper flushes them
/// before it closes the connection.
const TRUNCATE_FLUSH: Duration = Duration::from_millis(50);

/// A running origin; stopped on drop.
pub struct Origin {
    /// `127.0.0.1:<port>` of the plain HTTP listener.
    pub http: SocketAddr,
    /// `127.0.0.1:<port>` of the HTTPS listener.
    pub https: SocketAddr,
    /// The host names (and IP addresses) the HTTPS certificate is valid for.
    pub hosts: Vec<String>,
    /// The test CA that signed the HTTPS certificate (PEM): what a client of the origin, or the
    /// cache's `extra_roots`, must trust.
    pub ca_pem: String,
    /// `ca_pem` written to a file in a temporary directory that lives as long as the origin.
    pub ca_file: PathBuf,
    state: Arc<State>,
    stop: CancellationToken,
    /// The runtime of [`Origin::start_blocking`]; None when the origin runs on the caller's.
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

/// Routes and the record of requests, shared with the connection tasks.
#[derive(Default)]
struct State {
    routes: Mutex<HashMap<String, Resp>>,
    seen: Mutex<Vec<Seen>>,
}

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as in the request line.
    pub path: String,
    /// The `Host` header.
    pub host: Option<String>,
    /// `"http"` or `"https"`: which listener took the request.
    pub scheme: &'static str,
    /// The TLS server name the client sent (HTTPS only).
    pub sni: Option<String>,
    /// Every request header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The request body (read in full before answering).
    pub body: Bytes,
}

impl Seen {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What a route answers. Built with [`Resp::ok`] or [`Resp::status`] and the builder methods.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Sent as given, after (and replacing) the headers the origin sets itself (`Content-Length`,
    /// `ETag`, `Last-Modified`, `Vary`, `Accept-Ranges`).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Sent as `ETag` (verbatim: include the quotes); a request whose `If-None-Match` lists it (or
    /// `*`) is answered 304.
    pub etag: Option<String>,
    /// Sent as `Last-Modified`; a request without `If-None-Match` whose `If-Modified-Since` equals it
    /// is answered 304.
    pub last_modified: Option<String>,
    /// The `Authorization` value required: anything else is answered 401.
    pub require_auth: Option<String>,
    /// A request header the body varies with: the body is `body` followed by that header's value
    /// (nothing if absent), and `Vary` names it.
    pub vary_on: Option<String>,
    /// Waited before the response head is sent.
    pub delay_first_byte: Duration,
    /// The body is sent in pieces of this many bytes with this pause before each piece but the first.
    pub chunk_delay: Option<(usize, Duration)>,
    /// The head announces the full length, but the connection is closed after this many body bytes.
    pub truncate_at: Option<usize>,
    /// Single byte ranges (`Range: bytes=a-b`, `a-`, `-n`) are answered 206 (or 416); off, `Range`
    /// is ignored. Only for status 200.
    pub ranges: bool,
}

// === impl Resp ===

impl Resp {
    /// 200 with `body`.
    pub fn ok(body: impl Into<Bytes>) -> Resp {
        Resp::status(200, body)
    }

    /// Any status with `body`.
    pub fn status(status: u16, body: impl Into<Bytes>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            etag: None,
            last_modified: None,
            require_auth: None,
            vary_on: None,
            delay_first_byte: Duration::ZERO,
            chunk_delay: None,
            truncate_at: None,
            ranges: true,
        }
    }

    /// Adds a response header (several with the same name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Cache-Control: value`.
    pub fn cache_control(self, value: &str) -> Resp {
        self.header("Cache-Control", value)
    }

    /// `ETag: tag` (verbatim, e.g. `"\"v1\""`), and 304 for a matching `If-None-Match`.
    pub fn etag(mut self, tag: &str) -> Resp {
        self.etag = Some(tag.to_owned());
        self
    }

    /// `Last-Modified: date` (an HTTP date), and 304 for an `If-Modified-Since` equal to it.
    pub fn last_modified(mut self, date: &str) -> Resp {
        self.last_modified = Some(date.to_owned());
        self
    }

    /// 401 unless the request's `Authorization` is exactly `value`.
    pub fn require_auth(mut self, value: &str) -> Resp {
        self.require_auth = Some(value.to_owned());
        self
    }

    /// The body varies with request header `name` (appended to the body; `Vary: name`).
    pub fn vary_on(mut self, name: &str) -> Resp {
        self.vary_on = Some(name.to_owned());
        self
    }

    /// Waits `delay` before sending the response head.
    pub fn delay_first_byte(mut self, delay: Duration) -> Resp {
        self.delay_first_byte = delay;
        self
    }

    /// Sends the body `size` bytes at a time, pausing `delay` between pieces.
    pub fn chunk_delay(mut self, size: usize, delay: Duration) -> Resp {
        self.chunk_delay = Some((size.max(1), delay));
        self
    }

    /// Announces the full length, then closes the connection after `n` body bytes.
    pub fn truncate_at(mut self, n: usize) -> Resp {
        self.truncate_at = Some(n);
        self
    }

    /// Ignores `Range` (always the whole body).
    pub fn no_ranges(mut self) -> Resp {
        self.ranges = false;
        self
    }
}

// === impl Origin ===

impl Origin {
    /// Starts both listeners on the current tokio runtime. The HTTPS certificate has a
    /// subjectAltName for every entry of `hosts` (DNS names; IP addresses as IP SANs).
    pub async fn start(hosts: &[&str]) -> Origin {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, tls) = test_pki(hosts);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca_pem).expect("write ca.pem");
        let http_l = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let https_l = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        let (http, https) = (http_l.local_addr().expect("addr"), https_l.local_addr().expect("addr"));
        let state = Arc::new(State::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept(http_l, None, state.clone(), stop.clone()));
        tokio::spawn(accept(https_l, Some(tokio_rustls::TlsAcceptor::from(tls)), state.clone(), stop.clone()));
        Origin { http, https, hosts: hosts.iter().map(|h| (*h).to_owned()).collect(), ca_pem, ca_file, state, stop, rt: None, _dir: dir }
    }

    /// [`Origin::start`] on a runtime of its own (two worker threads), for synchronous tests.
    pub fn start_blocking(hosts: &[&str]) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let mut origin = rt.block_on(Origin::start(hosts));
        origin.rt = Some(rt);
        origin
    }

    /// Sets (or replaces) what `path` (path and query, e.g. `/pkg/a.deb?x=1`) answers.
    pub fn route(&self, path: &str, resp: Resp) {
        self.state.routes.lock().expect("routes").insert(path.to_owned(), resp);
    }

    /// Removes the route of `path`: it answers 404 again.
    pub fn unroute(&self, path: &str) {
        self.state.routes.lock().expect("routes").remove(path);
    }

    /// How many requests for `path` (any method, either listener) reached the origin.
    pub fn hits(&self, path: &str) -> usize {
        self.state.seen.lock().expect("seen").iter().filter(|s| s.path == path).count()
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// Forgets the requests seen so far (routes stay).
    pub fn clear_requests(&self) {
        self.state.seen.lock().expect("seen").clear();
    }

    /// `http://<host>:<http port><path>`: the origin reached directly.
    pub fn http_url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.http.port())
    }

    /// `https://<host>:<https port><path>`: the origin reached directly.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.https.port())
    }

    /// Lines for ctproxy's `[cache.origins]`: every host on ports 80 and 443 mapped to this origin's
    /// listeners.
    pub fn origins_toml(&self) -> String {
        self.hosts.iter().map(|h| format!("\"{h}:80\" = \"{}\"\n\"{h}:443\" = \"{}\"\n", self.http, self.https)).collect()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A CA and a server configuration whose certificate it signed for `hosts`.
fn test_pki(hosts: &[&str]) -> (String, Arc<rustls::ServerConfig>) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, "ctproxy test origin CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign CA");

    let mut leaf = CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).expect("origin cert params");
    leaf.distinguished_name.push(DnType::CommonName, hosts.first().copied().unwrap_or("origin"));
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().expect("origin key");
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("sign origin cert");

    let chain = vec![CertificateDer::from(cert.der().to_vec()), CertificateDer::from(ca_cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("origin TLS config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    (ca_cert.pem(), Arc::new(config))
}

/// Accepts connections until stopped; TLS first when `tls` is set.
async fn accept(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, state: Arc<State>, stop: CancellationToken) {
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let (tls, state, stop) = (tls.clone(), state.clone(), stop.clone());
        tokio::spawn(async move {
            match tls {
                None => serve(tcp, "http", None, state, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)) => r,
                        _ = stop.cancelled() => return,
                    };
                    if let Ok(Ok(stream)) = handshake {
                        let sni = stream.get_ref().1.server_name().map(str::to_owned);
                        serve(stream, "https", sni, state, stop).await;
                    }
                }
            }
        });
    }
}

/// HTTP/1.1 (keep-alive) on one connection until it ends or the origin stops.
async fn serve<I>(io: I, scheme: &'static str, sni: Option<String>, state: Arc<State>, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let (state, sni) = (state.clone(), sni.clone());
        async move { Ok::<_, Infallible>(answer(req, scheme, sni, &state).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        _ = conn => {}
        _ = stop.cancelled() => {}
    }
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Records the request, then answers it from its route.
async fn answer(req: Request<Incoming>, scheme: &'static str, sni: Option<String>, state: &State) -> Response<Body> {
    let (head, body) = req.into_parts();
    let path = head.uri.path_and_query().map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let headers: Vec<(String, String)> =
        head.headers.iter().map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let seen = Seen {
        method: head.method.to_string(),
        path: path.clone(),
        host: head.headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned),
        scheme,
        sni,
        headers,
        body,
    };
    state.seen.lock().expect("seen").push(seen.clone());

    let Some(resp) = state.routes.lock().expect("routes").get(&path).cloned() else {
        return plain(StatusCode::NOT_FOUND, format!("origin: no route for {path}\n"));
    };
    if !resp.delay_first_byte.is_zero() {
        tokio::time::sleep(resp.delay_first_byte).await;
    }
    if let Some(want) = &resp.require_auth {
        if seen.header("authorization") != Some(want.as_str()) {
            let mut rsp = plain(StatusCode::UNAUTHORIZED, "origin: unauthorized\n".to_owned());
            rsp.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"origin\""));
            return rsp;
        }
    }

    let mut data = resp.body.clone();
    if let Some(name) = &resp.vary_on {
        let mut v = data.to_vec();
        v.extend_from_slice(seen.header(name).unwrap_or_default().as_bytes());
        data = Bytes::from(v);
    }
    let mut own: Vec<(&str, String)> = Vec::new();
    if let Some(tag) = &resp.etag {
        own.push(("etag", tag.clone()));
    }
    if let Some(date) = &resp.last_modified {
        own.push(("last-modified", date.clone()));
    }
    if let Some(name) = &resp.vary_on {
        own.push(("vary", name.clone()));
    }

    let not_modified = match (seen.header("if-none-match"), &resp.etag, seen.header("if-modified-since"), &resp.last_modified) {
        (Some(inm), Some(tag), _, _) => etag_listed(inm, tag),
        (Some(_), None, _, _) => false,
        (None, _, Some(ims), Some(lm)) => ims == lm,
        _ => false,
    };
    let mut status = resp.status;
    let mut range = None;
    if not_modified {
        status = 304;
    } else if resp.status == 200 && resp.ranges {
        own.push(("accept-ranges", "bytes".to_owned()));
        if let Some(spec) = seen.header("range") {
            match byte_range(spec, data.len()) {
                Some(Ok((start, end))) => {
                    status = 206;
                    own.push(("content-range", format!("bytes {start}-{}/{}", end - 1, data.len())));
                    range = Some(start..end);
                }
                Some(Err(())) => {
                    let mut rsp = plain(StatusCode::RANGE_NOT_SATISFIABLE, String::new());
                    rsp.headers_mut().insert("content-range", HeaderValue::from_str(&format!("bytes */{}", data.len())).expect("header"));
                    return rsp;
                }
                None => {}
            }
        }
    }
    if let Some(r) = range {
        data = data.slice(r);
    }
    let bodyless = status == 304 || status == 204 || head.method == Method::HEAD;
    if status != 304 && status != 204 {
        own.push(("content-length", data.len().to_string()));
    }

    let mut rsp = Response::new(if bodyless {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        body_stream(data, resp.chunk_delay, resp.truncate_at)
    });
    *rsp.status_mut() = StatusCode::from_u16(status).expect("status code");
    let h = rsp.headers_mut();
    for (k, v) in own {
        h.insert(k, HeaderValue::from_str(&v).expect("header value"));
    }
    for (k, _) in &resp.headers {
        h.remove(k.as_str());
    }
    for (k, v) in &resp.headers {
        h.append(HeaderName::from_bytes(k.as_bytes()).expect("header name"), HeaderValue::from_str(v).expect("header value"));
    }
    rsp
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    rsp
}

/// Whether `If-None-Match: list` matches `tag` (weak comparison, or `*`).
fn etag_listed(list: &str, tag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    list.split(',').any(|t| t.trim() == "*" || strip(t) == strip(tag))
}

/// The single byte range `spec` asks of a body of `len` bytes, as start..end: None if the header is
/// not one range this origin understands (then it is ignored), Err if it cannot be satisfied.
fn byte_range(spec: &str, len: usize) -> Option<Result<(usize, usize), ()>> {
    let r = spec.trim().strip_prefix("bytes=")?;
    if r.contains(',') {
        return None;
    }
    let (a, b) = r.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        if n == 0 {
            return Some(Err(()));
        }
        (len.saturating_sub(n), len)
    } else {
        let start: usize = a.parse().ok()?;
        let end = if b.is_empty() { len } else { b.parse::<usize>().ok()?.saturating_add(1).min(len) };
        (start, end)
    };
    Some(if start < end { Ok((start, end)) } else { Err(()) })
}

/// The body: whole, or in delayed pieces, and cut short (an error after the last bytes, which makes
/// hyper close the connection) when `truncate_at` is below its length.
fn body_stream(data: Bytes, chunk: Option<(usize, Duration)>, truncate_at: Option<usize>) -> Body {
    let end = truncate_at.map_or(data.len(), |t| t.min(data.len()));
    let truncated = end < data.len();
    if chunk.is_none() && !truncated {
        return Full::new(data).map_err(|never| match never {}).boxed_unsync();
    }
    let (size, delay) = chunk.unwrap_or((end.max(1), Duration::ZERO));
    let pieces = futures_util::stream::unfold((0usize, truncated), move |(pos, fail)| {
        let data = data.clone();
        async move {
            if pos < end {
                if pos > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let n = size.min(end - pos);
                Some((Ok(Frame::data(data.slice(pos..pos + n))), (pos + n, fail)))
            } else if fail {
                tokio::time::sleep(TRUNCATE_FLUSH).await;
                Some((Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "origin: body truncated on purpose")), (pos, false)))
            } else {
                None
            }
        }
    });
    StreamBody::new(pieces).boxed_unsync()
}
