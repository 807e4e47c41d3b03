//! Layer 4, the registry proxy: the Registry API v2 server through which dockerd pushes and pulls
//! namespace images.
//!
//! A namespace's images are stored on the shared daemon as `<rp>/<ns>/<domain>/<path>:<tag>`
//! (see [`crate::plugin::namespace::names`]), with `<rp>` this server's loopback address. dockerd
//! considers loopback registries insecure and speaks plain HTTP to them; this server reads the
//! namespace and the real registry back out of the repository path, checks that the request's token
//! belongs to that namespace, and forwards to the real registry with the client's own credentials,
//! so the image lands there under the name the user typed.
//!
//! - [`token`]: the tokens the Docker API side hands dockerd, and what each grants;
//! - [`route`]: which paths are served, validated before anything is forwarded;
//! - [`upstream`]: registries' addresses (with SSRF checks) and their authentication;
//! - [`rewrite`]: upstream `Location`/`Link` headers and bodies mapped back to the proxy's names;
//! - [`blobs`]: blobs kept by digest, served to a namespace only after the upstream accepted its own
//!   credentials for the repository;
//! - [`manifest`]: the blobs an image manifest references, for the blob cache's manifest grants;
//! - [`error`]: refusals in the Registry API's error format.
//!
//! See `docs/registry-proxy.md` for the design and its security properties.

pub mod blobs;
pub mod error;
pub mod manifest;
pub mod rewrite;
pub mod route;
pub mod token;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::RegistryProxyConfig;
use crate::http::serve::{serve_listener, Gate, Limits};
use crate::http::server::{HandlerConns, ServeOptions};
use crate::http::{AccessIdentity, ConnCtx, Handler, ProxyBody};
use crate::transport::{ListenAddr, Listener, UnixSocketOptions};

pub use blobs::{BlobCache, BlobStats};
pub use error::RegistryError;
pub use route::{Repo, Route};
pub use token::{Grant, TokenStore};

use error::{error_response, API_VERSION_HEADER};
use route::RouteError;
use token::{token_id, TokenId};
use upstream::{read_limited, Outgoing, Upstreams};

/// `tags/list` bodies are read whole to rename the repository; past this they are refused.
const TAGS_BODY_MAX: usize = 4 << 20;
/// Upstream error bodies are read whole to rename the repository; bigger ones pass unchanged.
const ERROR_BODY_MAX: usize = 64 << 10;

/// Request headers forwarded to the upstream registry; everything else (notably `Authorization`,
/// `Cookie`, hop-by-hop headers) stays here.
const REQUEST_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "content-range",
    "range",
    "if-none-match",
    "if-match",
    "user-agent",
    "docker-content-digest",
];

/// Response headers passed back to dockerd (`Location` and `Link` rewritten).
const RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "content-encoding",
    "range",
    "etag",
    "last-modified",
    "accept-ranges",
    "cache-control",
    "docker-content-digest",
    "docker-upload-uuid",
    "oci-subject",
    "oci-filters-applied",
];

/// A running registry proxy. Dropping it does not stop it: call [`RegistryProxy::stop`].
pub struct RegistryProxy {
    tokens: TokenStore,
    blobs: Option<Arc<BlobCache>>,
    addr: SocketAddr,
    stop: CancellationToken,
    draining: CancellationToken,
    connections: TaskTracker,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryProxy {
    /// Binds `config.address` and serves until [`RegistryProxy::stop`]. Tokens issued from
    /// `tokens` (or any clone of it) are accepted. Blobs are cached in a store of their own when
    /// `config.cache_dir` is set, else in `shared` (the HTTP cache's store) when given, else not.
    pub async fn start(
        config: &RegistryProxyConfig,
        tokens: TokenStore,
        shared: Option<Arc<crate::store::Store>>,
    ) -> Result<RegistryProxy, RegistryError> {
        let listen = ListenAddr::Tcp(config.address.to_string());
        let listener = Listener::bind(&listen, &UnixSocketOptions::default(), None)
            .await
            .map_err(|source| RegistryError::Bind { addr: config.address.to_string(), source })?;
        let addr = listener.local_tcp_addr().unwrap_or(config.address);
        let blobs = match (&config.cache_dir, shared) {
            (Some(dir), _) => {
                let max = config.cache_max_bytes.map_or(blobs::DEFAULT_MAX_BYTES, |s| s.0);
                let d = dir.clone();
                let cache = tokio::task::spawn_blocking(move || BlobCache::open(&d, max))
                    .await
                    .map_err(|e| RegistryError::Upstream(format!("blob cache open task: {e}")))?
                    .map_err(|source| RegistryError::Cache { path: dir.clone(), source })?;
                Some(Arc::new(cache))
            }
            (None, Some(store)) => Some(Arc::new(BlobCache::shared(store))),
            (None, None) => None,
        };
        let handler = Arc::new(RegistryHandler::new(config, addr, tokens.clone(), blobs.clone())?);
        let stop = CancellationToken::new();
        let draining = CancellationToken::new();
        let connections = TaskTracker::new();
        let opts = ServeOptions { listener: Arc::from("registry-proxy"), access_log: true };
        let conns = Arc::new(HandlerConns { opts, handler, draining: draining.clone() });
        let limits = Limits::plain(config.header_timeout.0, config.idle_timeout.0, config.max_connections as usize);
        let gate = Gate::new("registry-proxy", limits);
        let task = tokio::spawn(serve_listener(listener, gate, conns, connections.clone(), stop.clone()));
        tracing::info!(address = %addr, "registry proxy listening");
        Ok(RegistryProxy { tokens, blobs, addr, stop, draining, connections, task })
    }

    /// The store whose tokens this proxy accepts.
    pub fn tokens(&self) -> TokenStore {
        self.tokens.clone()
    }

    /// The blob cache's counters, when `cache_dir` is configured.
    pub fn blob_stats(&self) -> Option<BlobStats> {
        self.blobs.as_ref().map(|b| b.stats())
    }

    /// The blob cache's counters in Prometheus' text format (empty without a cache).
    pub fn blob_metrics(&self) -> String {
        self.blobs.as_ref().map(|b| b.render()).unwrap_or_default()
    }

    /// The blob cache's counters as a closure for another component's metrics endpoint.
    pub fn blob_metrics_source(&self) -> Option<Box<dyn Fn() -> String + Send + Sync>> {
        let blobs = self.blobs.clone()?;
        Some(Box::new(move || blobs.render()))
    }

    /// The bound address (with the real port when the configuration said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry part of namespace image names: `127.0.0.1:5001`, for [`crate::plugin::namespace::NsName::image`].
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Stops accepting, lets transfers in flight finish within `grace`, then cuts the rest.
    pub async fn stop(self, grace: Duration) {
        self.stop.cancel();
        let _ = self.task.await;
        self.draining.cancel();
        self.connections.close();
        if tokio::time::timeout(grace, self.connections.wait()).await.is_err() {
            tracing::warn!(connections = self.connections.len(), "registry proxy: grace time over; cutting transfers");
        }
    }
}

/// Serves the registry routes for dockerd.
struct RegistryHandler {
    tokens: TokenStore,
    upstreams: Upstreams,
    blobs: Option<Arc<BlobCache>>,
    /// Image manifests seen, for grants on a manifest `HEAD`.
    seen: manifest::Seen,
    /// `Bearer realm="http://<rp>/token",service="ctproxy"`: what makes dockerd send its token.
    challenge: HeaderValue,
}

impl Handler for RegistryHandler {
    async fn call(&self, req: Request<Incoming>, _conn: Arc<ConnCtx>) -> Response<ProxyBody> {
        let mut rsp = self.handle(req).await;
        rsp.headers_mut().insert(API_VERSION_HEADER, HeaderValue::from_static("registry/2.0"));
        rsp
    }
}

/// The token of an `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl RegistryHandler {
    fn new(
        config: &RegistryProxyConfig,
        addr: SocketAddr,
        tokens: TokenStore,
        blobs: Option<Arc<BlobCache>>,
    ) -> Result<RegistryHandler, RegistryError> {
        let challenge = HeaderValue::try_from(format!("Bearer realm=\"http://{addr}/token\",service=\"ctproxy\""))
            .map_err(|e| RegistryError::Upstream(e.to_string()))?;
        Ok(RegistryHandler { tokens, upstreams: Upstreams::new(config, addr)?, blobs, seen: manifest::Seen::default(), challenge })
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let route = Route::parse(req.uri().path());
        let grant = bearer(req.headers()).and_then(|t| {
            let id = token_id(t);
            self.tokens.lookup_id(&id).map(|g| (id, g))
        });
        let refuse = |e: RegistryError| e.response(&self.challenge);
        match route {
            Ok(Route::Base) => {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return refuse(RegistryError::Method);
                }
                return match grant {
                    Some(_) => json_response(StatusCode::OK, b"{}".to_vec()),
                    None => refuse(RegistryError::Unauthorized("authentication required".into())),
                };
            }
            // dockerd only calls the realm when it has no registry token: there is nothing to hand
            // out, and no challenge is added so that it does not loop.
            Ok(Route::TokenRealm) => {
                return error_response(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "ctproxy: the registry proxy grants no tokens; pull and push through ctproxy's Docker API",
                );
            }
            _ => {}
        }
        let Some((id, grant)) = grant else {
            return refuse(RegistryError::Unauthorized("authentication required".into()));
        };
        let route = match route {
            Ok(Route::Catalog) => {
                return refuse(RegistryError::Unsupported("the catalog is not available through the registry proxy".into()))
            }
            Err(RouteError::Unknown) => return refuse(RegistryError::Unsupported("not a Registry API route served by ctproxy".into())),
            Err(RouteError::Name(n)) => return refuse(RegistryError::NameInvalid(n)),
            Ok(r) => r,
        };
        let Some(repo) = route.repo().cloned() else {
            return refuse(RegistryError::Unsupported("not a Registry API route served by ctproxy".into()));
        };
        // The one check that keeps namespaces apart: the repository's namespace is the token's.
        if repo.namespace != grant.namespace.as_str() {
            tracing::warn!(target: "ctproxy::audit", namespace = %grant.namespace, method = %req.method(), "registry request for another namespace refused");
            return refuse(RegistryError::Unauthorized("the token is not valid for this repository".into()));
        }
        let allowed = match &route {
            Route::Manifest { .. } => matches!(*req.method(), Method::GET | Method::HEAD | Method::PUT | Method::DELETE),
            Route::Blob { .. } => matches!(*req.method(), Method::GET | Method::HEAD),
            Route::UploadStart { .. } => *req.method() == Method::POST,
            Route::Upload { .. } => matches!(*req.method(), Method::GET | Method::PATCH | Method::PUT | Method::DELETE),
            Route::TagsList { .. } | Route::Referrers { .. } => *req.method() == Method::GET,
            Route::Base | Route::TokenRealm | Route::Catalog => false,
        };
        if !allowed {
            return refuse(RegistryError::Method);
        }
        let span = tracing::info_span!(
            "registry",
            namespace = %grant.namespace,
            method = %req.method(),
            upstream = %format_args!("{}/{}", repo.domain, repo.path),
        );
        let ns = grant.namespace.clone();
        let method = req.method().clone();
        let mut rsp = match self.forward(req, &route, &repo, &id, &grant).instrument(span.clone()).await {
            Ok(rsp) => rsp,
            Err(e) => {
                span.in_scope(|| tracing::info!(target: "ctproxy::registry", error = %e, "registry request failed"));
                refuse(e)
            }
        };
        span.in_scope(|| {
            tracing::info!(target: "ctproxy::registry", namespace = %ns, %method, upstream = %format_args!("{}/{}", repo.domain, repo.path), status = rsp.status().as_u16(), "registry request")
        });
        rsp.extensions_mut().insert(AccessIdentity(Arc::from(ns.as_str())));
        rsp
    }

    /// Sends the request to the real registry and maps the answer back.
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
        repo: &Repo,
        id: &TokenId,
        grant: &Grant,
    ) -> Result<Response<ProxyBody>, RegistryError> {
        let origin = self.upstreams.origin(&repo.domain)?;
        let suffix = match route {
            Route::Manifest { reference, .. } => format!("manifests/{reference}"),
            Route::Blob { digest, .. } => format!("blobs/{digest}"),
            Route::UploadStart { .. } => "blobs/uploads/".to_owned(),
            Route::Upload { id, .. } => format!("blobs/uploads/{id}"),
            Route::TagsList { .. } => "tags/list".to_owned(),
            Route::Referrers { digest, .. } => format!("referrers/{digest}"),
            Route::Base | Route::TokenRealm | Route::Catalog => return Err(RegistryError::Unsupported("not forwarded".into())),
        };
        let mut url = origin.join(&format!("/v2/{}/{suffix}", repo.path)).map_err(|e| RegistryError::Upstream(e.to_string()))?;
        let method = req.method().clone();
        let mut scope = match method {
            Method::GET | Method::HEAD => format!("repository:{}:pull", repo.path),
            Method::DELETE => format!("repository:{}:pull,push,delete", repo.path),
            _ => format!("repository:{}:pull,push", repo.path),
        };
        let query = req.uri().query().map(str::to_owned);
        match (route, query) {
            (Route::UploadStart { .. }, Some(q)) => {
                let (q, from) = mount_query(&q, repo);
                if let Some(from) = from {
                    scope.push_str(&format!(" repository:{from}:pull"));
                }
                url.set_query(q.as_deref());
            }
            (_, q) => url.set_query(q.as_deref()),
        }
        let mut headers = HeaderMap::new();
        for name in REQUEST_HEADERS {
            for v in req.headers().get_all(*name) {
                headers.append(HeaderName::from_static(name), v.clone());
            }
        }
        if let (Some(cache), Route::Blob { digest, .. }) = (&self.blobs, route) {
            // Ranged requests (a resumed pull) go upstream as they are.
            let hex = blobs::sha256_hex(digest).filter(|_| method == Method::GET && !headers.contains_key(header::RANGE));
            if let Some(hex) = hex {
                let out = Outgoing { method: Method::GET, url: url.clone(), headers };
                return self.cached_blob(cache, hex, digest, out, route, repo, id, grant, &origin, &scope).await;
            }
        }
        let incoming = req.into_body();
        let body = (!incoming.is_end_stream()).then(|| reqwest::Body::wrap_stream(http_body_util::BodyDataStream::new(incoming)));
        let out = Outgoing { method: method.clone(), url: url.clone(), headers };
        let mut up = self.upstreams.send(id, grant, &origin, &scope, out, body).await?;
        if let (Some(_), Route::Manifest { reference, .. }, StatusCode::OK) = (&self.blobs, route, up.status()) {
            if method == Method::GET {
                up = self.grant_manifest_blobs(up, reference, repo, id).await?;
            } else if method == Method::HEAD {
                self.grant_seen_manifest(&up, reference, repo, id);
            }
        }
        self.respond(up, &method, route, repo, &url).await
    }

    /// A manifest GET the upstream answered 200 with this token's credentials: its body is read
    /// (manifests are small), and if it is a Docker schema 2 or OCI image manifest (and, fetched by
    /// digest, is that digest), the token is granted its config and layers for this repository. The
    /// body goes on to dockerd unchanged.
    async fn grant_manifest_blobs(
        &self,
        up: reqwest::Response,
        reference: &str,
        repo: &Repo,
        id: &TokenId,
    ) -> Result<reqwest::Response, RegistryError> {
        if up.content_length().is_some_and(|l| l > manifest::MAX_BYTES as u64) {
            return Ok(up);
        }
        let status = up.status();
        let headers = up.headers().clone();
        let body = read_limited(up, manifest::MAX_BYTES).await?;
        let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let body_hex = hex_sha256(&body);
        let is_reference = match blobs::sha256_hex(reference) {
            Some(want) => body_hex == want,
            None => !reference.contains(':'),
        };
        match manifest::referenced_blobs(ct, &body).filter(|_| is_reference) {
            Some(hexes) => {
                tracing::debug!(target: "ctproxy::registry", blobs = hexes.len(), "manifest grant recorded");
                self.seen.insert(&body_hex, &hexes);
                self.tokens.grant_blobs(id, &repo_key(repo), hexes.iter().map(String::as_str));
            }
            None => tracing::debug!(target: "ctproxy::registry", "no manifest grant: not a plain image manifest"),
        }
        let mut rebuilt = hyper::Response::new(body);
        *rebuilt.status_mut() = status;
        *rebuilt.headers_mut() = headers;
        Ok(reqwest::Response::from(rebuilt))
    }

    /// A manifest HEAD the upstream answered 200 with this token's credentials: if the manifest it
    /// names (the digest asked for, else the answer's `Docker-Content-Digest`) was seen here
    /// before, the token is granted its blobs for this repository.
    fn grant_seen_manifest(&self, up: &reqwest::Response, reference: &str, repo: &Repo, id: &TokenId) {
        let answered = up.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(blobs::sha256_hex);
        let hex = match (blobs::sha256_hex(reference), answered) {
            (Some(asked), Some(answered)) if asked != answered => None,
            (Some(asked), _) => Some(asked),
            (None, answered) => answered.filter(|_| !reference.contains(':')),
        };
        if let Some(hexes) = hex.and_then(|h| self.seen.get(h)) {
            tracing::debug!(target: "ctproxy::registry", blobs = hexes.len(), "manifest grant recorded from a HEAD");
            self.tokens.grant_blobs(id, &repo_key(repo), hexes.iter().map(String::as_str));
        }
    }

    /// `GET` of a blob by sha256 digest with the cache on. Stored: served once this request's access
    /// is checked ([`RegistryHandler::blob_access`]). Being fetched for another request: the same
    /// check, then this request streams that fetch. Otherwise this request fetches it (with its own
    /// credentials, which is its check), for itself and for whoever joins meanwhile; the body is
    /// stored if its hash is the digest.
    #[allow(clippy::too_many_arguments)]
    async fn cached_blob(
        &self,
        cache: &Arc<BlobCache>,
        hex: &str,
        digest: &str,
        out: Outgoing,
        route: &Route,
        repo: &Repo,
        id: &TokenId,
        grant: &Grant,
        origin: &reqwest::Url,
        scope: &str,
    ) -> Result<Response<ProxyBody>, RegistryError> {
        let url = out.url.clone();
        let access = BlobAccess { hex, digest, route, repo, id, grant, origin, scope, url: &url };
        // A follower whose leader failed before its head tries again; after a few rounds (upstream
        // trouble) the request is passed through uncached.
        for _ in 0..3 {
            if let Some(stored) = cache.lookup(hex).await {
                let len = stored.len();
                let by_grant = match self.blob_access(cache, &access).await? {
                    Ok(by_grant) => by_grant,
                    Err(refused) => return Ok(refused),
                };
                if by_grant {
                    cache.granted();
                }
                let how = if by_grant { "on the job's manifest grant" } else { "after an upstream access check" };
                tracing::info!(target: "ctproxy::registry", %digest, bytes = len, "registry blob served from the cache {how}");
                let body = cache.serve(stored).map_err(|e| RegistryError::Upstream(format!("cached blob: {e}")))?;
                return Ok(blob_response(body, Some(len), digest));
            }
            let miss = cache.miss(hex).map_err(|e| RegistryError::Upstream(format!("blob cache: {e}")))?;
            let leader = match miss {
                blobs::Miss::Follower(fill) => {
                    if let Err(refused) = self.blob_access(cache, &access).await? {
                        return Ok(refused);
                    }
                    if let Some((body, len)) = cache.follow(&fill).await {
                        tracing::info!(target: "ctproxy::registry", %digest, "registry blob streamed from another job's fetch in flight");
                        return Ok(blob_response(body, len, digest));
                    }
                    continue;
                }
                blobs::Miss::Leader(leader) => leader,
            };
            let mut up = self.upstreams.send(id, grant, origin, scope, out, None).await?;
            // Registries on object storage (Docker Hub among them) redirect blobs: the RP follows the
            // redirect itself here, so that the body passes through the cache.
            if up.status().is_redirection() {
                let target = up.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).and_then(|l| url.join(l).ok());
                if let Some(target) = target {
                    up = self.upstreams.follow(target).await?;
                }
            }
            if up.status() != StatusCode::OK {
                // Not for the cache (dropping the leader lets followers try for themselves). A
                // refusal of this request's own credentials is a denied read, as a follower's is.
                if matches!(up.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    cache.denied();
                }
                drop(leader);
                return self.respond(up, &Method::GET, route, repo, &url).await;
            }
            tracing::info!(target: "ctproxy::registry", %digest, "registry blob fetched upstream for the cache");
            let expected = up.content_length();
            let rsp = self.respond(up, &Method::GET, route, repo, &url).await?;
            return Ok(rsp.map(|b| cache.fill(leader, hex, expected, b)));
        }
        tracing::warn!(target: "ctproxy::registry", %digest, "registry blob: the fetches it joined failed; passed through uncached");
        let up = self.upstreams.send(id, grant, origin, scope, out, None).await?;
        self.respond(up, &Method::GET, route, repo, &url).await
    }

    /// Whether this request may read a blob it did not fetch itself: `Ok(true)` on the token's
    /// manifest grant for this repository, `Ok(false)` when an upstream `HEAD` with the grant's own
    /// credentials answered 2xx (or a redirect, which a registry signs only for a reader); otherwise
    /// the answer for dockerd (the HEAD's status and headers, no body).
    async fn blob_access(&self, cache: &BlobCache, a: &BlobAccess<'_>) -> Result<Result<bool, Response<ProxyBody>>, RegistryError> {
        if self.tokens.blob_granted(a.id, &repo_key(a.repo), a.hex) {
            return Ok(Ok(true));
        }
        // No conditional headers: a 304 must never stand for "this job may read it".
        let head = Outgoing { method: Method::HEAD, url: a.url.clone(), headers: HeaderMap::new() };
        let up = self.upstreams.send(a.id, a.grant, a.origin, a.scope, head, None).await?;
        let status = up.status();
        if status.is_success() || (status.is_redirection() && status != StatusCode::NOT_MODIFIED) {
            return Ok(Ok(false));
        }
        cache.denied();
        tracing::warn!(target: "ctproxy::audit", namespace = %a.grant.namespace, digest = %a.digest, status = status.as_u16(), "cached registry blob refused: the upstream did not accept this job's access");
        // The HEAD's status and headers, without its length: this answers a GET, bodiless.
        let mut rsp = self.respond(up, &Method::HEAD, a.route, a.repo, a.url).await?;
        rsp.headers_mut().remove(header::CONTENT_LENGTH);
        Ok(Err(rsp))
    }

    async fn respond(
        &self,
        up: reqwest::Response,
        method: &Method,
        route: &Route,
        repo: &Repo,
        url: &reqwest::Url,
    ) -> Result<Response<ProxyBody>, RegistryError> {
        let status = up.status();
        let mut rsp = Response::builder().status(status);
        let headers = rsp.headers_mut().ok_or_else(|| RegistryError::Upstream("response".into()))?;
        for name in RESPONSE_HEADERS {
            for v in up.headers().get_all(*name) {
                headers.append(HeaderName::from_static(name), v.clone());
            }
        }
        for (name, rewrite) in
            [(header::LOCATION, rewrite::location as fn(&str, &reqwest::Url, &Repo) -> Option<String>), (header::LINK, rewrite::link)]
        {
            for v in up.headers().get_all(&name) {
                let mapped = v.to_str().ok().and_then(|v| rewrite(v, url, repo)).and_then(|v| HeaderValue::try_from(v).ok());
                if let Some(v) = mapped {
                    headers.append(name.clone(), v);
                }
            }
        }
        if status == StatusCode::UNAUTHORIZED {
            // Never show dockerd the upstream's realm: it would not help it, and our token is
            // meant for us only.
            headers.insert(header::WWW_AUTHENTICATE, self.challenge.clone());
        }
        let is_json = up.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("json"));
        let length = up.content_length();
        let body = if *method == Method::HEAD {
            ProxyBody::empty()
        } else if matches!(route, Route::TagsList { .. }) && status.is_success() {
            let bytes = read_limited(up, TAGS_BODY_MAX).await?;
            headers.remove(header::CONTENT_LENGTH);
            ProxyBody::full(rewrite::tags_body(&bytes, repo).unwrap_or(bytes))
        } else if status.is_client_error() && is_json && length.is_none_or(|l| l <= ERROR_BODY_MAX as u64) {
            let bytes = read_limited(up, ERROR_BODY_MAX).await?;
            headers.remove(header::CONTENT_LENGTH);
            ProxyBody::full(rewrite::error_body(&bytes, repo).unwrap_or(bytes))
        } else {
            let body: hyper::Response<reqwest::Body> = up.into();
            ProxyBody::boxed(body.into_body())
        };
        rsp.body(body).map_err(|e| RegistryError::Upstream(e.to_string()))
    }
}

/// What [`RegistryHandler::blob_access`] checks: one request for one blob.
struct BlobAccess<'a> {
    hex: &'a str,
    digest: &'a str,
    route: &'a Route,
    repo: &'a Repo,
    id: &'a TokenId,
    grant: &'a Grant,
    origin: &'a reqwest::Url,
    scope: &'a str,
    url: &'a reqwest::Url,
}

/// A blob not fetched by this request (stored, or another request's fetch) as the answer to a GET.
fn blob_response(body: ProxyBody, len: Option<u64>, digest: &str) -> Response<ProxyBody> {
    let mut rsp = Response::new(body);
    let h = rsp.headers_mut();
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(d) = HeaderValue::try_from(digest) {
        h.insert("docker-content-digest", d.clone());
        h.insert(header::ETAG, d);
    }
    rsp
}

/// The key of manifest grants: the upstream repository, `<domain>/<path>`.
fn repo_key(repo: &Repo) -> String {
    format!("{}/{}", repo.domain, repo.path)
}

fn hex_sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A cross-repository mount (`?mount=<digest>&from=<repo>`): `from` is a mangled name too. It is
/// honoured only within the same namespace and registry (then rewritten to the upstream path, which
/// is returned for the token scope); otherwise `mount` and `from` are dropped, so the registry starts
/// an ordinary upload and dockerd sends the blob, which it has.
fn mount_query(query: &str, repo: &Repo) -> (Option<String>, Option<String>) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let from = pairs.iter().find(|(k, _)| k == "from").and_then(|(_, v)| Repo::parse(v));
    let from = from.filter(|f| f.namespace == repo.namespace && f.domain == repo.domain).map(|f| f.path);
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        match (k.as_str(), &from) {
            ("from", Some(path)) => ser.append_pair(k, path),
            ("from" | "mount", None) => continue,
            _ => ser.append_pair(k, v),
        };
    }
    let q = ser.finish();
    ((!q.is_empty()).then_some(q), from)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_stay_in_the_namespace() {
        let repo = Repo::parse("alice/reg.io/team/x").unwrap();
        assert_eq!(
            mount_query("mount=sha256%3Aab&from=alice%2Freg.io%2Fteam%2Fy", &repo),
            (Some("mount=sha256%3Aab&from=team%2Fy".into()), Some("team/y".into()))
        );
        // Another namespace, another registry, garbage: the mount is dropped, the upload goes on.
        for from in ["bob%2Freg.io%2Fteam%2Fy", "alice%2Fother.io%2Fteam%2Fy", "team%2Fy", ""] {
            assert_eq!(mount_query(&format!("mount=sha256%3Aab&from={from}&x=1"), &repo), (Some("x=1".into()), None), "{from}");
        }
        assert_eq!(mount_query("mount=sha256%3Aab", &repo), (None, None));
        assert_eq!(mount_query("digest=sha256%3Aab", &repo), (Some("digest=sha256%3Aab".into()), None));
    }

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }
}
