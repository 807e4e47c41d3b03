//! The running server: listeners from the configuration, signals, reload and graceful stop.
//!
//! `SIGHUP` re-reads the configuration; a bad one is refused with a log line and the running one
//! stays. A good one replaces the upstream (new requests go to it, requests in flight finish where
//! they started) and starts, stops or rebinds only the listeners whose section changed: connections
//! already accepted are never dropped by a reload. `SIGTERM`/`SIGINT` stop accepting, let in-flight
//! requests and hijacked streams finish within the grace time, then exit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use arc_swap::ArcSwap;

use crate::build::{build, Built};
use crate::cache::CacheService;
use crate::config::{CacheConfig, Config, ConfigError, JobsConfig, ListenerConfig, MetricsConfig, Overrides};
use crate::http::serve::{serve_listener, Gate, Limits};
use crate::http::server::{HandlerConns, ServeOptions};
use crate::jobs::{ControlHandler, JobManager};
use crate::plugin::namespace;
use crate::proxy::{DockerProxy, ListenerHandler, Pipeline};
use crate::registry::{RegistryError, RegistryProxy, TokenStore};
use crate::transport::{self, Listener, TransportError, UnixSocketOptions};

/// The control socket's limits: one root client (the executor stages), one request per connection.
const CONTROL_LIMITS: Limits = Limits::plain(Duration::from_secs(30), Duration::from_secs(180), 64);

/// A listener's connection limits from its section.
fn listener_limits(l: &ListenerConfig) -> Limits {
    Limits {
        handshake_timeout: l.handshake_timeout.0,
        header_timeout: l.header_timeout.0,
        idle_timeout: l.idle_timeout.0,
        max_connections: l.max_connections as usize,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {name:?}: {source}")]
    Listener { name: String, source: TransportError },
    #[error("signal handling: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Plugin(String),
    #[error("registry proxy: {0}")]
    Registry(#[from] RegistryError),
}

/// Where the configuration comes from, kept for reloads.
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.overrides)
    }

    /// How errors name this source (the file, or the embedded default).
    pub fn origin(&self) -> String {
        Config::origin(self.path.as_deref())
    }
}

struct RunningListener {
    config: ListenerConfig,
    /// Stops this listener's accept loop (and so closes its socket); its connections live on.
    stop: CancellationToken,
    /// The accept loop; it has closed the socket once this ends.
    task: tokio::task::JoinHandle<()>,
    /// Authentication and policies; replaced in place by a reload.
    pipeline: Arc<ArcSwap<Pipeline>>,
    /// Timeouts and connection cap; replaced in place by a reload.
    gate: Arc<Gate>,
}

pub struct Server {
    source: ConfigSource,
    config: Config,
    proxy: Arc<DockerProxy>,
    listeners: BTreeMap<String, RunningListener>,
    /// Every connection task, so that a stop can wait for them.
    connections: TaskTracker,
    /// Cancelled on stop: connections finish their current request and close.
    draining: CancellationToken,
    /// Registry-proxy tokens; exists (empty) even without a registry proxy, so the Docker side can
    /// be wired the same way either way.
    tokens: TokenStore,
    /// The registry proxy, when `[registry_proxy]` is configured.
    registry: Option<RegistryProxy>,
    /// Temporary job listeners, when `[jobs]` is configured.
    jobs: Option<RunningJobs>,
    /// The transparent cache, when `[cache]` is configured and it could start.
    cache: Option<Arc<CacheService>>,
}

/// Serves `GET /metrics` on the `[metrics]` listener.
struct MetricsHandler {
    source: crate::cache::server::MetricsSource,
}

impl crate::http::Handler for MetricsHandler {
    async fn call(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        _conn: Arc<crate::http::ConnCtx>,
    ) -> hyper::Response<crate::http::ProxyBody> {
        if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
            return crate::http::respond::error(hyper::StatusCode::NOT_FOUND, "ctproxy: only GET /metrics is served here");
        }
        let mut rsp = hyper::Response::new(crate::http::ProxyBody::full((self.source)()));
        rsp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"));
        rsp
    }
}

struct RunningJobs {
    manager: Arc<JobManager>,
    /// Stops the control socket and the reaper.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
}

/// Starts the cache on its address (`auto`: the gateway of dockerd's default bridge, which
/// containers on any bridge network reach). A cache that cannot start is logged and left out:
/// containers are then created without it (fail open).
async fn start_cache(config: &CacheConfig, proxy: &DockerProxy, store: Arc<crate::store::Store>) -> Option<Arc<CacheService>> {
    let ip = match config.listen.parse::<std::net::IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match bridge_gateway(&proxy.daemon()).await {
            Some(ip) => ip,
            None => {
                tracing::error!("cache not started: dockerd's bridge network has no gateway to listen on (set cache.listen)");
                return None;
            }
        },
    };
    match CacheService::start(config, ip, store).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cache not started; containers are created without it");
            None
        }
    }
}

/// The gateway address of dockerd's default `bridge` network: from its IPAM configuration, or
/// (dockerd 20.10 leaves it out there) the IPv4 address of its bridge interface on this host.
pub async fn bridge_gateway(daemon: &crate::plugin::namespace::Daemon) -> Option<std::net::IpAddr> {
    let net = daemon.get("/networks/bridge").await.ok()??;
    let configured = net
        .pointer("/IPAM/Config")
        .and_then(|c| c.as_array())
        .and_then(|c| c.iter().find_map(|c| c.get("Gateway")?.as_str()?.parse().ok()));
    if configured.is_some() {
        return configured;
    }
    let ifname = net.pointer("/Options/com.docker.network.bridge.name").and_then(|n| n.as_str()).unwrap_or("docker0");
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        let v4 = a.address.as_ref()?.as_sockaddr_in()?.ip();
        (a.interface_name == ifname).then_some(std::net::IpAddr::V4(v4))
    })
}

impl Server {
    /// A pipeline with the server-wide additions to created containers (the cache's).
    fn decorated(&self, mut p: Pipeline) -> Pipeline {
        p.decorate = self.cache.clone().map(|c| c as Arc<dyn crate::plugin::CreateDecorator>);
        p
    }

    /// Loads the configuration and binds every listener; nothing is served until [`Server::run`].
    pub async fn start(source: ConfigSource) -> Result<Server, AppError> {
        let mut config = source.load()?;
        let tokens = TokenStore::new();
        // Checked before anything is bound; built again below if the registry proxy's address
        // changes when it binds.
        let mut built = build(&config, &tokens).map_err(|e| e.at(&source.origin()))?;
        // One content store for the HTTP cache and the registry proxy's blobs (unless
        // `[registry_proxy] cache_dir` gives the blobs a store of their own).
        let store = match &config.cache {
            Some(c) => match CacheService::open_store(c).await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cache not started: its store cannot be opened; containers are created without it");
                    None
                }
            },
            None => None,
        };
        let registry = match &config.registry_proxy {
            Some(rp) => Some(RegistryProxy::start(rp, tokens.clone(), store.clone()).await?),
            None => None,
        };
        // Namespaces name the registry proxy by the address it bound: with port 0 in the
        // configuration, the port the kernel gave (image names hold it).
        if let (Some(rp), Some(r)) = (config.registry_proxy.as_mut(), &registry) {
            if rp.address != r.local_addr() {
                rp.address = r.local_addr();
                built = build(&config, &tokens).map_err(|e| e.at(&source.origin()))?;
            }
        }
        let Built { forwarder, listeners, jobs, namespaces } = built;
        let proxy = Arc::new(DockerProxy::new(forwarder));
        let mut server = Server {
            source,
            config: config.clone(),
            proxy,
            listeners: BTreeMap::new(),
            connections: TaskTracker::new(),
            draining: CancellationToken::new(),
            tokens,
            registry,
            jobs: None,
            cache: None,
        };
        if let (Some(c), Some(store)) = (&config.cache, store) {
            server.cache = start_cache(c, &server.proxy, store).await;
            if let Some(cache) = &server.cache {
                cache.add_metrics(server.metrics_source());
            }
        }
        if let Some(m) = &config.metrics {
            server.start_metrics(m).await?;
        }
        for (name, built) in listeners {
            let Some(l) = config.listener.get(&name) else { continue };
            let pipeline = server.decorated(built.pipeline);
            server.start_listener(&name, l, pipeline, built.tls).await?;
        }
        if let (Some(c), Some(pipeline)) = (&config.jobs, jobs) {
            let pipeline = server.decorated(pipeline);
            server.start_jobs(c, pipeline, namespaces).await?;
        }
        tracing::info!(upstream = %config.upstream.url, "ctproxy started");
        Ok(server)
    }

    /// The server-wide metrics, and the registry proxy's blob cache's, as one text source.
    fn metrics_source(&self) -> crate::cache::server::MetricsSource {
        let blobs = self.registry.as_ref().and_then(RegistryProxy::blob_metrics_source);
        Box::new(move || {
            let mut text = crate::metrics::server().render();
            if let Some(b) = &blobs {
                text.push_str(&b());
            }
            text
        })
    }

    /// The `[metrics]` listener: `GET /metrics` and nothing else. Applied at start only.
    async fn start_metrics(&mut self, config: &MetricsConfig) -> Result<(), AppError> {
        let err = |source| AppError::Listener { name: "metrics".into(), source };
        let addr = transport::ListenAddr::Tcp(config.listen.to_string());
        let listener = Listener::bind(&addr, &UnixSocketOptions::default(), None).await.map_err(err)?;
        // The bound address: with port 0 in the configuration, the port the kernel gave.
        let bound = listener.local_tcp_addr().unwrap_or(config.listen);
        tracing::info!(address = %bound, "metrics listening");
        let opts = ServeOptions { listener: Arc::from("metrics"), access_log: false };
        let handler = Arc::new(MetricsHandler { source: self.metrics_source() });
        let conns = Arc::new(HandlerConns { opts, handler, draining: self.draining.clone() });
        let limits = Limits::plain(Duration::from_secs(30), Duration::from_secs(120), crate::config::METRICS_MAX_CONNECTIONS as usize);
        // Like the cache's metrics listener: it ends with the process.
        tokio::spawn(serve_listener(listener, Gate::new("metrics", limits), conns, TaskTracker::new(), CancellationToken::new()));
        Ok(())
    }

    /// The token store of the registry proxy: tokens issued from it (or a clone) are what dockerd
    /// presents to the registry proxy.
    pub fn tokens(&self) -> TokenStore {
        self.tokens.clone()
    }

    /// The registry proxy's address (`127.0.0.1:5001`), the registry part of namespace image names;
    /// `None` without a `[registry_proxy]` section.
    pub fn registry_address(&self) -> Option<std::net::SocketAddr> {
        self.registry.as_ref().map(RegistryProxy::local_addr)
    }

    /// The job manager, its control socket and its reaper; live jobs' listeners are restored.
    async fn start_jobs(&mut self, jobs: &JobsConfig, pipeline: Pipeline, settings: Arc<namespace::Settings>) -> Result<(), AppError> {
        let manager = Arc::new(JobManager::new(
            jobs.clone(),
            self.proxy.clone(),
            pipeline,
            settings,
            self.connections.clone(),
            self.draining.clone(),
        ));
        std::fs::create_dir_all(&jobs.dir).map_err(|e| AppError::Plugin(format!("jobs.dir {}: {e}", jobs.dir.display())))?;
        manager.restore().await;
        let err = |source| AppError::Listener { name: "control".into(), source };
        let unix = UnixSocketOptions { mode: Some(0o600), owner: None, group: None };
        let listener = Listener::bind(&transport::ListenAddr::Unix(jobs.control_socket.clone()), &unix, None).await.map_err(err)?;
        tracing::info!(socket = %jobs.control_socket.display(), jobs = %jobs.dir.display(), "control socket listening");
        let stop = CancellationToken::new();
        let opts = ServeOptions { listener: Arc::from("control"), access_log: true };
        let handler = Arc::new(ControlHandler { jobs: manager.clone() });
        let conns = Arc::new(HandlerConns { opts, handler, draining: self.draining.clone() });
        let gate = Gate::new("control", CONTROL_LIMITS);
        let task = tokio::spawn(serve_listener(listener, gate, conns, self.connections.clone(), stop.clone()));
        let reaper = tokio::spawn(manager.clone().reaper(stop.clone()));
        self.jobs = Some(RunningJobs { manager, stop, task, reaper });
        Ok(())
    }

    async fn start_listener(
        &mut self,
        name: &str,
        config: &ListenerConfig,
        pipeline: Pipeline,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<(), AppError> {
        let err = |source| AppError::Listener { name: name.to_owned(), source };
        let unix = UnixSocketOptions { mode: config.mode.map(|m| m.0), owner: config.owner.clone(), group: config.group.clone() };
        let listener = Listener::bind(&config.address, &unix, tls).await.map_err(err)?;
        let shown = listener.local_tcp_addr().map_or_else(|| config.address.to_string(), |a| format!("tcp://{a}"));
        tracing::info!(listener = name, address = %shown, tls = config.tls.is_some(), "listening");
        let stop = CancellationToken::new();
        let opts = ServeOptions { listener: Arc::from(name), access_log: config.access_log };
        let pipeline = Arc::new(ArcSwap::from_pointee(pipeline));
        let handler = Arc::new(ListenerHandler { proxy: self.proxy.clone(), pipeline: pipeline.clone() });
        let conns = Arc::new(HandlerConns { opts, handler, draining: self.draining.clone() });
        let gate = Gate::new(name, listener_limits(config));
        let task = tokio::spawn(serve_listener(listener, gate.clone(), conns, self.connections.clone(), stop.clone()));
        self.listeners.insert(name.to_owned(), RunningListener { config: config.clone(), stop, task, pipeline, gate });
        Ok(())
    }

    /// Serves until SIGTERM or SIGINT, reloading on SIGHUP.
    pub async fn run(mut self) -> Result<(), AppError> {
        let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
        let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AppError::Signal)?;
        loop {
            tokio::select! {
                _ = hup.recv() => self.reload().await,
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Re-reads the configuration and applies what changed. Never leaves the server without a
    /// working configuration: on any error the old one stays in force.
    pub async fn reload(&mut self) {
        let mut new = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                return;
            }
        };
        // Port 0 in the file names the port the running registry proxy was given.
        if let (Some(rp), Some(bound)) = (new.registry_proxy.as_mut(), self.registry_address()) {
            if rp.address.port() == 0 && rp.address.ip() == bound.ip() {
                rp.address = bound;
            }
        }
        if new.registry_proxy != self.config.registry_proxy {
            tracing::warn!("[registry_proxy] changed: the change takes effect at the next restart");
            // The running configuration keeps saying what actually runs (and namespaces keep
            // naming the registry proxy that runs).
            new.registry_proxy = self.config.registry_proxy.clone();
        }
        if new.metrics != self.config.metrics {
            tracing::warn!("[metrics] changed: the change takes effect at the next restart");
            new.metrics = self.config.metrics.clone();
        }
        match (&self.config.jobs, &mut new.jobs) {
            (Some(old), Some(j)) if *j != *old => {
                // The policies apply at once, to running jobs too; anything else at the next start.
                let policies = j.policies.clone();
                if (JobsConfig { policies: old.policies.clone(), ..j.clone() }) != *old {
                    tracing::warn!("[jobs] changed: only its policies take effect now, the rest at the next restart");
                }
                *j = JobsConfig { policies, ..old.clone() };
            }
            (old, j) if old != j => {
                tracing::warn!("[jobs] added or removed: the change takes effect at the next restart");
                *j = old.clone();
            }
            _ => {}
        }
        let Built { forwarder, listeners: mut built, jobs: job_pipeline, namespaces } = match build(&new, &self.tokens) {
            Ok(b) => b,
            Err(e) => {
                let e = e.at(&self.source.origin());
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                return;
            }
        };
        if new.upstream != self.config.upstream {
            self.proxy.set_forwarder(forwarder);
        }
        // Listeners that disappeared or changed stop accepting first, so a changed one can rebind
        // the same address.
        let changed: Vec<String> = self
            .listeners
            .iter()
            .filter(|(name, running)| !new.listener.get(*name).is_some_and(|l| l.same_socket(&running.config)))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &changed {
            if let Some(running) = self.listeners.remove(name) {
                running.stop.cancel();
                let _ = running.task.await;
                tracing::info!(listener = %name, "listener stopped by reload");
            }
        }
        for (name, l) in &new.listener {
            let Some(b) = built.remove(name) else { continue };
            let pipeline = self.decorated(b.pipeline);
            match self.listeners.get_mut(name) {
                // Same socket: its authentication and policies change for new requests, its
                // timeouts and cap for new connections.
                Some(running) => {
                    running.pipeline.store(Arc::new(pipeline));
                    running.gate.set_limits(listener_limits(l));
                    running.config = l.clone();
                }
                None => {
                    if let Err(e) = self.start_listener(name, l, pipeline, b.tls).await {
                        tracing::error!(error = %e, "listener could not be started by reload");
                    }
                }
            }
        }
        // Job sockets, running or to come, take the new pipeline for their next request.
        if let (Some(running), Some(pipeline)) = (&self.jobs, job_pipeline) {
            running.manager.reconfigure(self.decorated(pipeline), namespaces).await;
        }
        if new.cache != self.config.cache {
            // Hosts, origins and extra roots apply at once; anything else (addresses, directory...)
            // at the next start.
            let live = |a: &CacheConfig, b: &CacheConfig| {
                CacheConfig { hosts: b.hosts.clone(), origins: b.origins.clone(), extra_roots: b.extra_roots.clone(), ..a.clone() } == *b
            };
            match (&self.cache, &self.config.cache, &new.cache) {
                (Some(running), Some(old), Some(c)) if live(old, c) => match running.set_origins(c) {
                    Ok(()) => running.set_hosts(&c.hosts),
                    Err(e) => {
                        tracing::error!(error = %e, "[cache] reload refused; the running cache settings stay");
                        new.cache = self.config.cache.clone();
                    }
                },
                _ => {
                    tracing::warn!("[cache] changed: the change takes effect at the next restart");
                    new.cache = self.config.cache.clone();
                }
            }
        }
        self.config = new;
        tracing::info!("configuration reloaded");
    }

    /// Stops accepting, then waits up to the grace time for connections to finish.
    pub async fn stop(mut self) {
        // Job listeners close with the rest; their records restore them at the next start.
        if let Some(jobs) = self.jobs.take() {
            jobs.stop.cancel();
            let _ = jobs.task.await;
            let _ = jobs.reaper.await;
            jobs.manager.stop_listeners(self.config.grace()).await;
        }
        for running in self.listeners.values() {
            running.stop.cancel();
        }
        // Each accept loop closes its socket (and removes a unix socket file) as it ends.
        for running in self.listeners.into_values() {
            let _ = running.task.await;
        }
        self.draining.cancel();
        self.connections.close();
        let grace = self.config.grace();
        // The registry proxy drains alongside the Docker connections, within the same grace time.
        let registry = tokio::spawn(async move {
            if let Some(registry) = self.registry {
                registry.stop(grace).await;
            }
        });
        tracing::info!(connections = self.connections.len(), grace_ms = grace.as_millis() as u64, "stopping");
        if tokio::time::timeout(grace, self.connections.wait()).await.is_err() {
            tracing::warn!(connections = self.connections.len(), "grace time over; cutting the remaining connections");
        }
        let _ = registry.await;
        if let Some(c) = &self.cache {
            c.stop();
        }
        crate::http::body::flush_access_log();
        tracing::info!("stopped");
    }
}
