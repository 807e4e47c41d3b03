//! Layer 5, the transparent HTTP/HTTPS cache: package downloads served locally for every container
//! created through ctproxy, with no setup by the user.
//!
//! At container creation ([`CacheService`] as a [`CreateDecorator`]) the intercepted domains get
//! `/etc/hosts` entries pointing at the cache's listeners, and the container is given a short-lived
//! CA additively: a read-only directory with the CA and a complete bundle, the variables each
//! runtime reads (only where the client set none), and a `.crt` in a directory of its own under
//! `/usr/local/share/ca-certificates` so an `update-ca-certificates` in the job keeps it. Never a
//! bind mount over a distribution's bundle file: that breaks `update-ca-certificates` and apt.
//!
//! The pieces: [`ca`] (generations, rotation, leaves per SNI), [`rules`] (what HTTP lets a shared
//! cache do), [`store`] (bodies on disk, budget, restart; `crate::store`, one budget with the registry
//! proxy's blobs), [`fill`] (one upstream fetch per URL, followers stream it), [`upstream`] (verified origins), [`server`] (request handling),
//! [`metrics`] (Prometheus counters).
//!
//! **Fail open.** If the cache cannot start (its address is taken, the CA cannot be written) or
//! stops being able to serve, containers are created without the redirection: slower, never
//! broken by an endless certificate error.

pub mod ca;
/// The content store and coalesced fills, shared with the registry proxy's blob cache (`crate::store`).
pub use crate::store::fill;
pub mod legacy_tls;
pub mod metrics;
pub mod rules;
pub mod server;
pub use crate::store;
pub mod upstream;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::future::Future;
use std::pin::Pin;

use crate::config::{CacheConfig, METRICS_MAX_CONNECTIONS};
use crate::http::clock::{serve_hyper, Activity, Tracked};
use crate::http::serve::{serve_listener, ConnServer, Gate, Limits, Timeouts};
use crate::plugin::namespace::Daemon;
use crate::plugin::CreateDecorator;
use crate::transport::{Accepted, ClientStream, ListenAddr, Listener, PeerAddr, PeerInfo, TransportError, UnixSocketOptions};

/// Where the trust directory is mounted in containers.
pub const TRUST_MOUNT: &str = "/run/ctproxy-ca";
/// A directory of its own among Debian's/Alpine's local CA sources: `update-ca-certificates`
/// picks up `*.crt` below `/usr/local/share/ca-certificates`, so a job that runs it keeps trusting.
pub const LOCAL_CA_MOUNT: &str = "/usr/local/share/ca-certificates/ctproxy";

/// Variables pointed at the complete bundle (each of them replaces its tool's default roots).
const BUNDLE_VARS: [&str; 7] =
    ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "GIT_SSL_CAINFO", "CARGO_HTTP_CAINFO", "AWS_CA_BUNDLE"];
/// Variables pointed at the CA alone (Node adds it to its bundled roots).
const CA_VARS: [&str; 1] = ["NODE_EXTRA_CA_CERTS"];

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// The running cache: its listeners, CA and store.
pub struct CacheService {
    core: Arc<server::Core>,
    authority: Arc<ca::Authority>,
    ip: IpAddr,
    /// The intercepted names, as containers are decorated with them (replaced by a reload).
    hosts: arc_swap::ArcSwap<Vec<String>>,
    set_env: bool,
    healthy: AtomicBool,
    stop: CancellationToken,
}

impl CacheService {
    /// Adds `source`'s text to the metrics listener's `/metrics` (once; later calls are ignored).
    pub fn add_metrics(&self, source: server::MetricsSource) {
        let _ = self.core.extra_metrics.set(source);
    }

    /// Opens the content store under `[cache] dir` with the `[cache] max_bytes` budget; the
    /// registry proxy's blob cache shares it (one budget, one LRU).
    pub async fn open_store(config: &CacheConfig) -> Result<Arc<store::Store>, CacheError> {
        let dir = config.dir.clone();
        let max = config.max_bytes.0;
        let store = tokio::task::spawn_blocking(move || store::Store::open(&dir.join("store"), max))
            .await
            .map_err(|e| store::StoreError::Dir { path: PathBuf::new(), source: std::io::Error::other(e) })??;
        Ok(Arc::new(store))
    }

    /// Opens the CA and binds the listeners on `ip` (the address containers reach), serving from
    /// `store` (see [`CacheService::open_store`]).
    pub async fn start(config: &CacheConfig, ip: IpAddr, store: Arc<store::Store>) -> Result<Arc<CacheService>, CacheError> {
        let authority = ca::Authority::open(ca::CaSettings {
            dir: config.dir.join("ca"),
            trust_dir: config.dir.join("trust"),
            rotate_every: config.rotate_every.0,
            hosts: config.hosts.clone(),
        })?;
        let origins = upstream::Origins::new(&config.extra_roots, &config.origins)?;
        let rules =
            rules::FreshnessRules { immutable_ttl: config.immutable_ttl.0, mutable_ttl: config.mutable_ttl.0, ..Default::default() };
        let core = Arc::new(server::Core {
            hosts: arc_swap::ArcSwap::from_pointee(config.hosts.iter().cloned().collect::<HashSet<_>>()),
            store,
            inflight: Arc::default(),
            origins: arc_swap::ArcSwap::from_pointee(origins),
            rules,
            revalidation: revalidation_rules(config),
            revalidations: server::Revalidations::default(),
            metrics: metrics::Metrics::default(),
            extra_metrics: std::sync::OnceLock::new(),
        });
        let http = bind(SocketAddr::new(ip, config.http_port)).await?;
        let https = bind(SocketAddr::new(ip, config.https_port)).await?;
        let metrics = match config.metrics_listen {
            Some(a) => Some(bind(a).await?),
            None => None,
        };
        let http_addr = http.local_tcp_addr().unwrap_or(SocketAddr::new(ip, config.http_port));
        let https_addr = https.local_tcp_addr().unwrap_or(SocketAddr::new(ip, config.https_port));
        let service = Arc::new(CacheService {
            core,
            authority,
            ip,
            hosts: arc_swap::ArcSwap::from_pointee(config.hosts.clone()),
            set_env: config.set_env,
            healthy: AtomicBool::new(true),
            stop: CancellationToken::new(),
        });
        let limits = Limits {
            handshake_timeout: config.handshake_timeout.0,
            header_timeout: config.header_timeout.0,
            idle_timeout: config.idle_timeout.0,
            max_connections: config.max_connections as usize,
        };
        // Nothing waits for the cache's connections at a stop: they end with the process.
        let connections = TaskTracker::new();
        let stop = service.stop.clone();
        let http_conns = Arc::new(CacheHttp { core: service.core.clone(), stop: stop.clone() });
        tokio::spawn(serve_listener(http, Gate::new("cache-http", limits), http_conns, connections.clone(), stop.clone()));
        let https_conns = Arc::new(CacheHttps {
            core: service.core.clone(),
            authority: service.authority.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(service.authority.server_config()),
            handshake_timeout: limits.handshake_timeout,
            stop: stop.clone(),
        });
        tokio::spawn(serve_listener(https, Gate::new("cache-https", limits), https_conns, connections.clone(), stop.clone()));
        if let Some(m) = metrics {
            tracing::info!(address = %m.local_tcp_addr().map(|a| a.to_string()).unwrap_or_default(), "cache metrics listening");
            let gate = Gate::new("cache-metrics", Limits { max_connections: METRICS_MAX_CONNECTIONS as usize, ..limits });
            let conns = Arc::new(MetricsConns { core: service.core.clone(), stop: stop.clone() });
            tokio::spawn(serve_listener(m, gate, conns, connections, stop));
        }
        tokio::spawn(service.clone().rotate(config.rotate_every.0));
        tracing::info!(%http_addr, %https_addr, hosts = config.hosts.len(), ca_generation = service.authority.current_generation(), "cache listening");
        Ok(service)
    }

    /// Applies a new list of intercepted names (a reload): new containers get their entries, the
    /// cache serves them, and the CA covers them (a name the current generations' constraints do
    /// not permit makes a fresh pair; see `ca::Authority::set_hosts`).
    /// Applies new origin overrides and extra roots (a reload).
    pub fn set_origins(&self, config: &CacheConfig) -> Result<(), CacheError> {
        let origins = upstream::Origins::new(&config.extra_roots, &config.origins)?;
        self.core.origins.store(Arc::new(origins));
        Ok(())
    }

    pub fn set_hosts(&self, hosts: &[String]) {
        self.authority.set_hosts(hosts.to_vec());
        self.core.hosts.store(Arc::new(hosts.iter().cloned().collect()));
        self.hosts.store(Arc::new(hosts.to_vec()));
        tracing::info!(hosts = hosts.len(), "cache hosts reloaded");
    }

    /// Stops the listeners (connections in flight finish on their own).
    pub fn stop(&self) {
        self.healthy.store(false, Ordering::Release);
        self.stop.cancel();
    }

    /// Rotates the CA generation on time.
    async fn rotate(self: Arc<Self>, every: Duration) {
        let tick = (every / 8).clamp(Duration::from_millis(500), Duration::from_secs(60));
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let authority = self.authority.clone();
            match tokio::task::spawn_blocking(move || authority.rotate_if_due(SystemTime::now())).await {
                Ok(Ok(true)) => tracing::info!(generation = self.authority.current_generation(), "cache CA rotated"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cache CA rotation failed; the current generation stays"),
                Err(e) => tracing::error!(error = %e, "cache CA rotation task failed"),
            }
        }
    }
}

/// Binds one of the cache's TCP listeners.
async fn bind(addr: SocketAddr) -> Result<Listener, CacheError> {
    Listener::bind(&ListenAddr::Tcp(addr.to_string()), &UnixSocketOptions::default(), None).await.map_err(|e| CacheError::Bind {
        addr,
        source: match e {
            TransportError::Bind { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        },
    })
}

/// The TCP stream of a connection accepted on a plain TCP listener.
async fn plain_tcp(accepted: Accepted) -> std::io::Result<(TcpStream, PeerInfo)> {
    match accepted.into_stream().await? {
        (ClientStream::Tcp(s), peer) => Ok((s, peer)),
        _ => Err(std::io::Error::other("not a plain TCP connection")),
    }
}

fn peer_addr(peer: &PeerInfo) -> SocketAddr {
    match peer.addr {
        PeerAddr::Tcp { addr } => addr,
        PeerAddr::Unix { .. } => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// A stream the cache serves HTTP on: plain TCP, or TLS by rustls or (legacy clients) OpenSSL.
trait CacheIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> CacheIo for T {}

/// Serves one cache connection (HTTP or HTTPS) until it ends or waits too long for a request.
async fn serve_cache<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    core: Arc<server::Core>,
    io: I,
    conn: server::Conn,
    timeouts: Timeouts,
    stop: &CancellationToken,
) {
    let peer = conn.peer;
    let activity = Arc::new(Activity::default());
    let a = activity.clone();
    let svc = service_fn(move |req| {
        let ticket = a.request();
        let (core, conn) = (core.clone(), conn.clone());
        async move { server::handle(core, conn, req).await.map(|rsp| rsp.map(|b| Tracked::new(b, ticket))) }
    });
    if let Err(expired) = serve_hyper(io, activity, svc, timeouts, stop).await {
        expired.log("cache", &peer);
    }
}

/// The cache's plain HTTP listener.
struct CacheHttp {
    core: Arc<server::Core>,
    stop: CancellationToken,
}

impl ConnServer for CacheHttp {
    type Stream = TcpStream;

    async fn handshake(&self, accepted: Accepted) -> std::io::Result<(TcpStream, PeerInfo)> {
        plain_tcp(accepted).await
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: PeerInfo, timeouts: Timeouts) {
        let conn = server::Conn { scheme: rules::Scheme::Http, sni: None, peer: peer_addr(&peer) };
        serve_cache(self.core.clone(), stream, conn, timeouts, &self.stop).await
    }
}

/// The cache's HTTPS listener: TLS is done here (rustls, or OpenSSL for a ClientHello rustls cannot
/// serve), so an over-cap connection is closed unanswered.
struct CacheHttps {
    core: Arc<server::Core>,
    authority: Arc<ca::Authority>,
    acceptor: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
    stop: CancellationToken,
}

impl ConnServer for CacheHttps {
    type Stream = (Box<dyn CacheIo>, Option<Arc<str>>);
    const PLAIN_HTTP: bool = false;

    async fn handshake(&self, accepted: Accepted) -> std::io::Result<(Self::Stream, PeerInfo)> {
        let (stream, peer) = plain_tcp(accepted).await?;
        // A client rustls cannot serve (no signature_algorithms) gets OpenSSL.
        if let Some(hello) = legacy_tls::peek_hello(&stream, self.handshake_timeout).await {
            if !hello.has_sigalgs {
                let tls = legacy_tls::accept(&self.authority, &hello, stream)
                    .await
                    .map_err(|e| std::io::Error::other(format!("legacy client: {e}")))?;
                let sni = hello.sni.map(Arc::<str>::from);
                return Ok(((Box::new(tls), sni), peer));
            }
        }
        let tls = self.acceptor.accept(stream).await?;
        let sni = tls.get_ref().1.server_name().map(|s| Arc::<str>::from(s.to_ascii_lowercase()));
        Ok(((Box::new(tls), sni), peer))
    }

    async fn serve(self: Arc<Self>, (stream, sni): Self::Stream, peer: PeerInfo, timeouts: Timeouts) {
        let conn = server::Conn { scheme: rules::Scheme::Https, sni, peer: peer_addr(&peer) };
        serve_cache(self.core.clone(), stream, conn, timeouts, &self.stop).await
    }
}

/// `GET /metrics` for Prometheus.
struct MetricsConns {
    core: Arc<server::Core>,
    stop: CancellationToken,
}

impl ConnServer for MetricsConns {
    type Stream = TcpStream;

    async fn handshake(&self, accepted: Accepted) -> std::io::Result<(TcpStream, PeerInfo)> {
        plain_tcp(accepted).await
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, peer: PeerInfo, timeouts: Timeouts) {
        let core = self.core.clone();
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let ticket = a.request();
            let core = core.clone();
            async move {
                use http_body_util::Full;
                let mut resp = hyper::Response::new(Full::new(bytes::Bytes::new()));
                if req.uri().path() == "/metrics" {
                    let (bytes, entries) = core.store.usage();
                    let mut text = core.metrics.render(bytes, entries, core.inflight.len());
                    if let Some(extra) = core.extra_metrics.get() {
                        text.push_str(&extra());
                    }
                    *resp.body_mut() = Full::new(bytes::Bytes::from(text));
                    resp.headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
                } else {
                    *resp.status_mut() = hyper::StatusCode::NOT_FOUND;
                }
                Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, ticket)))
            }
        });
        if let Err(expired) = serve_hyper(stream, activity, svc, timeouts, &self.stop).await {
            expired.log("cache-metrics", &peer);
        }
    }
}

fn env_name(entry: &serde_json::Value) -> Option<&str> {
    entry.as_str().map(|s| s.split_once('=').map_or(s, |(k, _)| k))
}

impl CreateDecorator for CacheService {
    fn decorate<'a>(&'a self, body: &'a mut serde_json::Value, daemon: &'a Daemon) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if !self.healthy.load(Ordering::Acquire) {
                tracing::warn!("cache not available: container created without it");
                return;
            }
            // Variables the image sets itself are the image author's choice: left alone too.
            let image_env = match body.get("Image").and_then(|i| i.as_str()) {
                Some(image) if self.set_env => image_env_names(daemon, image).await,
                _ => HashSet::new(),
            };
            self.decorate_now(body, &image_env);
        })
    }
}

/// The names of the variables an image's config sets (none when it cannot be inspected).
async fn image_env_names(daemon: &Daemon, image: &str) -> HashSet<String> {
    let path = format!("/images/{}/json", crate::docker::client::enc(image));
    match daemon.get(&path).await {
        Ok(Some(v)) => v
            .pointer("/Config/Env")
            .and_then(|e| e.as_array())
            .map(|e| e.iter().filter_map(env_name).map(str::to_owned).collect())
            .unwrap_or_default(),
        _ => HashSet::new(),
    }
}

impl CacheService {
    /// Adds the hosts entries, the trust directory and the variables (not those in `taken`).
    fn decorate_now(&self, body: &mut serde_json::Value, taken: &HashSet<String>) {
        use serde_json::{Map, Value};
        let Value::Object(obj) = body else { return };
        let trust = self.authority.trust_dir().display().to_string();
        if self.set_env {
            let env = obj.entry("Env").or_insert_with(|| Value::Array(vec![]));
            if env.is_null() {
                *env = Value::Array(vec![]);
            }
            if let Value::Array(env) = env {
                let mut set: HashSet<String> = env.iter().filter_map(env_name).map(str::to_owned).collect();
                set.extend(taken.iter().cloned());
                for (vars, file) in [(&BUNDLE_VARS[..], "bundle.pem"), (&CA_VARS[..], "ca.pem")] {
                    for v in vars {
                        if !set.contains(*v) {
                            env.push(Value::String(format!("{v}={TRUST_MOUNT}/{file}")));
                        }
                    }
                }
            }
        }
        let host = obj.entry("HostConfig").or_insert_with(|| Value::Object(Map::new()));
        if host.is_null() {
            *host = Value::Object(Map::new());
        }
        let Value::Object(host) = host else { return };
        let extra = host.entry("ExtraHosts").or_insert_with(|| Value::Array(vec![]));
        if extra.is_null() {
            *extra = Value::Array(vec![]);
        }
        if let Value::Array(extra) = extra {
            // A name the client maps itself is left to the client.
            let own: HashSet<String> =
                extra.iter().filter_map(|e| e.as_str()).filter_map(|e| e.split_once(':')).map(|(h, _)| h.to_ascii_lowercase()).collect();
            for h in self.hosts.load().iter() {
                if !own.contains(h) {
                    extra.push(Value::String(format!("{h}:{}", self.ip)));
                    // IPv6 lookups get the same address, IPv4-mapped: no AAAA escape to the origin.
                    if let IpAddr::V4(v4) = self.ip {
                        extra.push(Value::String(format!("{h}:{}", v4.to_ipv6_mapped())));
                    }
                }
            }
        }
        let mounts: Vec<Value> = host.get("Mounts").and_then(|m| m.as_array()).cloned().unwrap_or_default();
        let tmpfs: Vec<String> = host.get("Tmpfs").and_then(|m| m.as_object()).map(|m| m.keys().cloned().collect()).unwrap_or_default();
        let binds = host.entry("Binds").or_insert_with(|| Value::Array(vec![]));
        if binds.is_null() {
            *binds = Value::Array(vec![]);
        }
        if let Value::Array(binds) = binds {
            // A client mount at the same place wins (two mounts on one target fail the create).
            let targets: HashSet<String> = binds
                .iter()
                .filter_map(|b| b.as_str()?.split(':').nth(1).map(str::to_owned))
                .chain(mounts.iter().filter_map(|m| m.get("Target")?.as_str().map(str::to_owned)))
                .chain(tmpfs.iter().cloned())
                .map(|t| t.trim_end_matches('/').to_owned())
                .collect();
            for target in [TRUST_MOUNT, LOCAL_CA_MOUNT] {
                if !targets.contains(target) {
                    binds.push(Value::String(format!("{trust}:{target}:ro")));
                }
            }
        }
    }
}

/// The revalidation settings of `[cache]` as the rules take them (unknown ecosystems are refused
/// by the build step, and ignored here).
pub fn revalidation_rules(config: &CacheConfig) -> rules::RevalidationRules {
    let mut rules = rules::RevalidationRules { window: config.revalidate_window.0, ..Default::default() };
    for (name, age) in &config.index_max_age {
        if let Some(e) = rules::Ecosystem::from_name(name) {
            rules.index_max_age[e.index()] = age.0;
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::rules::{Ecosystem, RevalidationRules};
    use crate::config::Config;

    #[test]
    fn revalidation_rules_from_the_cache_section() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let c = Config::parse(&format!("{base}[cache]\nhosts = [\"deb.debian.org\"]\n"), "t").unwrap();
        assert_eq!(super::revalidation_rules(&c.cache.unwrap()), RevalidationRules::default(), "5 s window, no index_max_age");
        let c = Config::parse(
            &format!("{base}[cache]\nhosts = [\"a\"]\nrevalidate_window = \"2s\"\n[cache.index_max_age]\napt = \"5m\"\npypi = \"30s\"\n"),
            "t",
        )
        .unwrap();
        c.validate("t").unwrap();
        let rules = super::revalidation_rules(&c.cache.unwrap());
        assert_eq!(rules.window, Duration::from_secs(2));
        assert_eq!(rules.index_max_age[Ecosystem::Apt.index()], Duration::from_secs(300));
        assert_eq!(rules.index_max_age[Ecosystem::Pypi.index()], Duration::from_secs(30));
        assert_eq!(rules.index_max_age[Ecosystem::Npm.index()], Duration::ZERO);
    }

    #[test]
    fn env_names() {
        assert_eq!(super::env_name(&serde_json::json!("A=b=c")), Some("A"));
        assert_eq!(super::env_name(&serde_json::json!("A")), Some("A"));
    }
}
