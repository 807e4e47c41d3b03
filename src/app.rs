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

use crate::cache::CacheService;
use crate::config::{AuthConfig, CacheConfig, Config, ConfigError, JobsConfig, ListenerConfig, Overrides, PolicyConfig};
use crate::http::serve::{serve_listener, Gate, Limits};
use crate::http::server::{HandlerConns, ServeOptions};
use crate::http::Forwarder;
use crate::jobs::{ControlHandler, JobManager};
use crate::plugin::auth::{Authenticator, HttpAuth, TlsCertAuth, UnixPeerAuth};
use crate::plugin::namespace::pool::NetworkPool;
use crate::plugin::namespace::{self, Namespace, NsName, RegistryTokens};
use crate::plugin::policy::{Conservative, Inject, Policy, PolicyChain};
use crate::proxy::{DockerProxy, ListenerHandler, Pipeline};
use crate::registry::{RegistryError, RegistryProxy, TokenStore};
use crate::transport::listener::{resolve_group, resolve_user};
use crate::transport::{self, Connector, Listener, TransportError, UnixSocketOptions};

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
    #[error("upstream: {0}")]
    Upstream(TransportError),
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

struct RunningJobs {
    manager: Arc<JobManager>,
    /// Stops the control socket and the reaper.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    reaper: tokio::task::JoinHandle<()>,
}

/// The pooled client to the configured daemon (`ctproxy doctor` asks the daemon through the same one).
pub fn build_forwarder(config: &Config) -> Result<Arc<Forwarder>, AppError> {
    let tls = match &config.upstream.tls {
        Some(t) => {
            let pair = t.cert.as_deref().zip(t.key.as_deref());
            Some(transport::tls::client_config(&t.ca, pair).map_err(AppError::Upstream)?)
        }
        None => None,
    };
    let connector = Connector::new(config.upstream.url.clone(), tls, config.connect_timeout()).map_err(AppError::Upstream)?;
    Ok(Arc::new(Forwarder::new(connector)))
}

/// Every listener's pipeline, built from the `[auth]`, `[policy]` and `[identity]` sections.
fn build_pipelines(config: &Config, tokens: &Option<Arc<dyn RegistryTokens>>) -> Result<BTreeMap<String, Pipeline>, AppError> {
    let plugin_err = |what: String| AppError::Plugin(what);
    let mut auths: BTreeMap<&str, Arc<dyn Authenticator>> = BTreeMap::new();
    for (name, a) in &config.auth {
        let auth: Arc<dyn Authenticator> = match a {
            AuthConfig::UnixPeer { uids, gids } => {
                let ids = |m: &BTreeMap<String, String>, resolve: fn(&str) -> Result<u32, TransportError>| {
                    m.iter()
                        .map(|(k, v)| resolve(k).map(|id| (id, v.clone())))
                        .collect::<Result<std::collections::HashMap<_, _>, _>>()
                        .map_err(|e| plugin_err(format!("auth.{name}: {e}")))
                };
                Arc::new(UnixPeerAuth::new(name, ids(uids, resolve_user)?, ids(gids, resolve_group)?))
            }
            AuthConfig::TlsCert { subjects, cn_as_identity } => {
                Arc::new(TlsCertAuth::new(name, subjects.clone().into_iter().collect(), *cn_as_identity))
            }
            AuthConfig::Http { users, tokens } => {
                Arc::new(HttpAuth::new(name, users.clone().into_iter().collect(), tokens.clone().into_iter().collect()))
            }
        };
        auths.insert(name, auth);
    }
    let mut policies: BTreeMap<&str, (Arc<dyn Policy>, bool)> = BTreeMap::new();
    for (name, p) in &config.policy {
        let policy: Arc<dyn Policy> = match p {
            PolicyConfig::Conservative(c) => {
                Arc::new(Conservative::new(name, c.clone()).map_err(|e| plugin_err(format!("policy.{name}: {e}")))?)
            }
            PolicyConfig::Inject(c) => Arc::new(Inject::new(name, (**c).clone())),
        };
        policies.insert(name, (policy, p.dry_run()));
    }
    let chain = |names: &[String]| {
        let mut chain = PolicyChain::default();
        for n in names {
            if let Some((p, dry)) = policies.get(n.as_str()) {
                chain.push(p.clone(), *dry);
            }
        }
        chain
    };
    let per_identity: std::collections::HashMap<Arc<str>, PolicyChain> =
        config.identity.iter().filter_map(|(id, c)| c.policies.as_ref().map(|p| (Arc::from(id.as_str()), chain(p)))).collect();
    let ns_settings = namespace_settings(config, tokens);
    let ns = |name: &str| -> Result<Namespace, AppError> {
        let name = NsName::new(name).map_err(|e| plugin_err(e.to_string()))?;
        Ok(Namespace::new(name, ns_settings.clone()))
    };
    let mut per_identity_ns = std::collections::HashMap::new();
    for (id, c) in &config.identity {
        if let Some(n) = &c.namespace {
            per_identity_ns.insert(Arc::from(id.as_str()), ns(n)?);
        }
    }
    config
        .listener
        .iter()
        .map(|(name, l)| {
            let identified = !l.auth.is_empty();
            let pipeline = Pipeline {
                auth: l.auth.iter().filter_map(|a| auths.get(a.as_str()).cloned()).collect(),
                policies: chain(&l.policies),
                // Identity overrides only matter where someone is identified.
                per_identity: if identified { per_identity.clone() } else { Default::default() },
                max_json_body: config.limits.max_json_body_bytes,
                namespace: l.namespace.as_deref().map(ns).transpose()?,
                per_identity_ns: if identified { per_identity_ns.clone() } else { Default::default() },
                own_socket: None,
                decorate: None,
            };
            Ok((name.clone(), pipeline))
        })
        .collect()
}

fn namespace_settings(config: &Config, tokens: &Option<Arc<dyn RegistryTokens>>) -> Arc<namespace::Settings> {
    Arc::new(namespace::Settings {
        registry: config.registry_proxy.as_ref().map_or_else(|| "127.0.0.1:5001".to_owned(), |r| r.address.to_string()),
        shared_images: config.namespaces.shared_images.clone(),
        tokens: tokens.clone(),
        max_response: config.namespaces.max_response_bytes,
        // Checked by `Config::validate`.
        pool: NetworkPool::parse(&config.namespaces.network_pool, config.namespaces.network_prefix_len)
            .ok()
            .filter(|p| !p.ranges.is_empty()),
    })
}

/// The pipeline of job listeners: the `[jobs]` policies (each job adds its own namespace).
fn job_pipeline(config: &Config, jobs: &JobsConfig, tokens: &Option<Arc<dyn RegistryTokens>>) -> Result<Pipeline, AppError> {
    let mut c = config.clone();
    let listener =
        ListenerConfig { policies: jobs.policies.clone(), ..ListenerConfig::at(transport::ListenAddr::Unix(jobs.dir.join("docker.sock"))) };
    c.listener = BTreeMap::from([("jobs".to_owned(), listener)]);
    Ok(build_pipelines(&c, tokens)?.remove("jobs").unwrap_or_default())
}

/// Starts the cache on its address (`auto`: the gateway of dockerd's default bridge, which
/// containers on any bridge network reach). A cache that cannot start is logged and left out:
/// containers are then created without it (fail open).
async fn start_cache(config: &CacheConfig, proxy: &DockerProxy) -> Option<Arc<CacheService>> {
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
    match CacheService::start(config, ip).await {
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

    /// The token issuer namespaces hand to dockerd, when a registry proxy runs to honour them.
    fn registry_tokens(&self) -> Option<Arc<dyn RegistryTokens>> {
        self.registry.as_ref().map(|_| Arc::new(self.tokens.clone()) as Arc<dyn RegistryTokens>)
    }

    /// Loads the configuration and binds every listener; nothing is served until [`Server::run`].
    pub async fn start(source: ConfigSource) -> Result<Server, AppError> {
        let config = source.load()?;
        let proxy = Arc::new(DockerProxy::new(build_forwarder(&config)?));
        let tokens = TokenStore::new();
        let registry = match &config.registry_proxy {
            Some(rp) => Some(RegistryProxy::start(rp, tokens.clone()).await?),
            None => None,
        };
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
        if let Some(c) = &config.cache {
            server.cache = start_cache(c, &server.proxy).await;
            if let (Some(cache), Some(blobs)) = (&server.cache, server.registry.as_ref().and_then(RegistryProxy::blob_metrics_source)) {
                cache.add_metrics(blobs);
            }
        }
        let mut pipelines = build_pipelines(&config, &server.registry_tokens())?;
        for (name, l) in &config.listener {
            let pipeline = server.decorated(pipelines.remove(name).unwrap_or_default());
            server.start_listener(name, l, pipeline).await?;
        }
        if let Some(jobs) = &config.jobs {
            server.start_jobs(jobs).await?;
        }
        tracing::info!(upstream = %config.upstream.url, "ctproxy started");
        Ok(server)
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
    async fn start_jobs(&mut self, jobs: &JobsConfig) -> Result<(), AppError> {
        let tokens = self.registry_tokens();
        let manager = Arc::new(JobManager::new(
            jobs.clone(),
            self.proxy.clone(),
            self.decorated(job_pipeline(&self.config, jobs, &tokens)?),
            namespace_settings(&self.config, &tokens),
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

    async fn start_listener(&mut self, name: &str, config: &ListenerConfig, pipeline: Pipeline) -> Result<(), AppError> {
        let err = |source| AppError::Listener { name: name.to_owned(), source };
        let tls = match &config.tls {
            Some(t) => Some(transport::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref()).map_err(err)?),
            None => None,
        };
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
        let new = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                return;
            }
        };
        let mut pipelines = match build_pipelines(&new, &self.registry_tokens()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                return;
            }
        };
        // TLS material of the listeners about to be (re)started must load before any is stopped.
        for (name, l) in &new.listener {
            let unchanged = self.listeners.get(name).is_some_and(|running| l.same_socket(&running.config));
            if let (false, Some(t)) = (unchanged, &l.tls) {
                if let Err(source) = transport::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref()) {
                    let e = AppError::Listener { name: name.clone(), source };
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                    return;
                }
            }
        }
        if new.upstream != self.config.upstream {
            match build_forwarder(&new) {
                Ok(f) => self.proxy.set_forwarder(f),
                Err(e) => {
                    tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                    return;
                }
            }
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
            let pipeline = self.decorated(pipelines.remove(name).unwrap_or_default());
            match self.listeners.get_mut(name) {
                // Same socket: its authentication and policies change for new requests, its
                // timeouts and cap for new connections.
                Some(running) => {
                    running.pipeline.store(Arc::new(pipeline));
                    running.gate.set_limits(listener_limits(l));
                    running.config = l.clone();
                }
                None => {
                    if let Err(e) = self.start_listener(name, l, pipeline).await {
                        tracing::error!(error = %e, "listener could not be started by reload");
                    }
                }
            }
        }
        let mut new = new;
        if new.registry_proxy != self.config.registry_proxy {
            tracing::warn!("[registry_proxy] changed: the change takes effect at the next restart");
            // The running configuration keeps saying what actually runs.
            new.registry_proxy = self.config.registry_proxy.clone();
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
            jobs.manager.stop_listeners().await;
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
