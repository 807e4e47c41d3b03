//! The configuration file: TOML, read once at start and again on `SIGHUP`.
//!
//! Every section maps to one struct with `deny_unknown_fields`, so a typo is an error that names the
//! key and the line (the TOML parser reports both), never a silently ignored setting. Checks that
//! involve several keys live in [`Config::validate`] and name the key they are about.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod executor;
mod policy;
mod types;

pub use executor::{ExecutorConfig, PULL_POLICIES};
pub use policy::{ByteSize, ConservativeConfig, InjectConfig, InjectMount, InjectUlimit, InjectValues};
pub use types::{AddressError, FileMode, ListenAddr, Size, Span, SpanOrZero, UpstreamAddr};

/// The configuration ctproxy runs on when no `--config` is given.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: `{key}`: {message}")]
    Invalid { origin: String, key: String, message: String },
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Listeners by name; the name appears in logs and survives reloads.
    #[serde(default)]
    pub listener: BTreeMap<String, ListenerConfig>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Authenticators by name, chained by listeners.
    #[serde(default)]
    pub auth: BTreeMap<String, AuthConfig>,
    /// Policies by name, chained by listeners and identities.
    #[serde(default)]
    pub policy: BTreeMap<String, PolicyConfig>,
    /// Per-identity settings.
    #[serde(default)]
    pub identity: BTreeMap<String, IdentityConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub namespaces: NamespacesConfig,
    /// The registry proxy that namespace images are pushed and pulled through; off when absent.
    pub registry_proxy: Option<RegistryProxyConfig>,
    /// Temporary per-job listeners and their control socket; off when absent.
    pub jobs: Option<JobsConfig>,
    /// The transparent HTTP/HTTPS cache for containers; off when absent.
    pub cache: Option<CacheConfig>,
    /// A `/metrics` listener of its own (the server-wide metrics are also on the cache's
    /// `metrics_listen` when there is a cache); none when absent.
    pub metrics: Option<MetricsConfig>,
}

/// `[metrics]`: where `GET /metrics` (Prometheus text format) is served without a `[cache]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port`, plain HTTP: keep it on loopback or a management network.
    pub listen: SocketAddr,
}

/// `[cache]`: the transparent caching proxy that containers created through ctproxy are pointed at.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Intercepted host names (exact, lower case).
    pub hosts: Vec<String>,
    /// The address containers reach the cache on: an IP, or `auto` for the gateway of dockerd's
    /// default bridge network (reachable from every bridge network's containers).
    #[serde(default = "default_cache_listen")]
    pub listen: String,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    #[serde(default = "default_https_port")]
    pub https_port: u16,
    /// Stored bodies, the CA's private state and the trust files mounted into containers.
    #[serde(default = "default_cache_dir")]
    pub dir: PathBuf,
    /// The byte budget of stored bodies (`"10g"`, `"512m"`, or bytes).
    #[serde(default = "default_cache_max_bytes")]
    pub max_bytes: Size,
    /// How often the CA generation rotates (`"24h"`, `"30m"`, `"10s"`); a job must be shorter.
    #[serde(default = "default_rotate_every")]
    pub rotate_every: Span,
    /// Freshness of immutable artifacts (`.deb`, wheels, blobs by digest) and of mutable indexes.
    #[serde(default = "default_immutable_ttl")]
    pub immutable_ttl: Span,
    #[serde(default = "default_mutable_ttl")]
    pub mutable_ttl: Span,
    /// A revalidation this recent answers requests that ask for a fresh copy (`max-age=0`, as apt
    /// and pip send on every index request); see `cache::rules::RevalidationRules`.
    #[serde(default = "default_revalidate_window")]
    pub revalidate_window: Span,
    /// Per ecosystem (`apt`, `pypi`, `npm`, `cargo`, ...): serve its mutable indexes up to this old
    /// without asking the origin, whatever clients and origins say. Empty by default.
    #[serde(default)]
    pub index_max_age: BTreeMap<String, Span>,
    /// Where `GET /metrics` (Prometheus) is served; none when absent.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// PEM files of extra roots trusted for origins, on top of the system's.
    #[serde(default)]
    pub extra_roots: Vec<PathBuf>,
    /// `"host:port" = "ip:port"`: where to connect for an intercepted host reached on a port,
    /// instead of asking DNS (mirrors, tests).
    #[serde(default)]
    pub origins: BTreeMap<String, SocketAddr>,
    /// Point the CA variables (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, ...) of new containers at
    /// the bundle with the cache's CA, where the client did not set them.
    #[serde(default = "yes")]
    pub set_env: bool,
    /// The HTTP and HTTPS listeners (each its own cap) and the metrics listener (the timeouts; a
    /// cap of its own, [`METRICS_MAX_CONNECTIONS`]): see the keys of the same names of
    /// `[listener.NAME]`.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Span,
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Span,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

/// Live connections to the cache's metrics listener (a scraper needs one).
pub const METRICS_MAX_CONNECTIONS: u32 = 16;

fn default_cache_listen() -> String {
    "auto".into()
}

fn default_http_port() -> u16 {
    80
}

fn default_https_port() -> u16 {
    443
}

fn default_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/ctproxy/cache")
}

fn default_cache_max_bytes() -> Size {
    Size(10 << 30)
}

fn default_rotate_every() -> Span {
    Span(Duration::from_secs(24 * 3600))
}

fn default_immutable_ttl() -> Span {
    Span(Duration::from_secs(30 * 24 * 3600))
}

fn default_revalidate_window() -> Span {
    Span(Duration::from_secs(5))
}

fn default_mutable_ttl() -> Span {
    Span(Duration::from_secs(60))
}

fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9180)))
}

/// How long a TLS handshake may take.
fn default_handshake_timeout() -> Span {
    Span(Duration::from_secs(10))
}

/// How long a request head may take to arrive: generous for any real client (they send a head in one
/// write), short enough that a slowloris client holds a connection for seconds, not forever.
fn default_header_timeout() -> Span {
    Span(Duration::from_secs(30))
}

/// How long a keep-alive connection may wait for its next request. Longer than the pauses of real
/// clients between two calls, so their pools mostly reuse connections; every Docker client copes
/// with a server that closes an idle one (Go's transport notices the close at once, urllib3 checks
/// before reuse).
fn default_idle_timeout() -> Span {
    Span(Duration::from_secs(180))
}

/// Live connections per listener of `[listener.NAME]`.
fn default_max_connections() -> u32 {
    1024
}

/// Live connections per job socket: a job with compose, BuildKit and `logs -f` uses tens.
fn default_job_max_connections() -> u32 {
    256
}

/// Live connections to the registry proxy: dockerd pulls and pushes a few layers at a time per image.
fn default_registry_max_connections() -> u32 {
    512
}

/// `[jobs]`: temporary listeners, one per CI job, each in a namespace of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// The root-only control socket the executor stages talk to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Where job sockets and records live (`<dir>/<id>/sock/docker.sock`, `<dir>/<id>/job.json`).
    #[serde(default = "default_jobs_dir")]
    pub dir: PathBuf,
    /// Policies of every job listener (names of `[policy.NAME]` sections).
    #[serde(default)]
    pub policies: Vec<String>,
    /// A job's lifetime when its creator gives none (`"1h"`; the old `timeout_s`, seconds, too).
    #[serde(default = "default_job_timeout", alias = "timeout_s")]
    pub timeout: SpanOrZero,
    /// Added to a job's timeout before it is reaped (cleanup may run late; old key `grace_s`).
    #[serde(default = "default_job_grace", alias = "grace_s")]
    pub grace: SpanOrZero,
    /// How often expired jobs and orphaned job namespaces are looked for (old key
    /// `reap_interval_s`).
    #[serde(default = "default_reap_interval", alias = "reap_interval_s")]
    pub reap_interval: SpanOrZero,
    /// Job namespaces are `<prefix>-<job id>`. The reaper only ever touches namespaces with this
    /// prefix: two ctproxy servers sharing a daemon need different prefixes.
    #[serde(default = "default_job_prefix")]
    pub namespace_prefix: String,
    /// Every job socket: see the keys of the same names of `[listener.NAME]`.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Span,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
    /// Live connections per job socket (each job has its own count).
    #[serde(default = "default_job_max_connections")]
    pub max_connections: u32,
    /// The host's `gitlab-runner`, mounted read-only at `/usr/local/bin/gitlab-runner` in job
    /// containers for the cache and artifact stages. Default: the first of `/usr/bin/gitlab-runner`
    /// and `/usr/local/bin/gitlab-runner` that exists.
    #[serde(default)]
    pub runner_binary: Option<PathBuf>,
    /// Where the local cache of each GitLab project is kept across its jobs (`/cache` in a job).
    #[serde(default = "default_project_cache_dir")]
    pub project_cache_dir: PathBuf,
    /// The size limit of all projects' caches; least recently used projects are removed first.
    #[serde(default = "default_project_cache_max_bytes")]
    pub project_cache_max_bytes: Size,
    /// `[jobs.executor]`: the allow-lists and pull policies the executor's prepare stage applies.
    #[serde(default)]
    pub executor: ExecutorConfig,
}

fn default_project_cache_dir() -> PathBuf {
    PathBuf::from("/var/lib/ctproxy/project-cache")
}

fn default_project_cache_max_bytes() -> Size {
    Size(20 << 30)
}

impl JobsConfig {
    /// The runner binary to mount, resolved (no symbolic link in the path): `None` when there is
    /// none on this host.
    pub fn runner_binary(&self) -> Option<PathBuf> {
        let candidates = match &self.runner_binary {
            Some(p) => vec![p.clone()],
            None => vec![PathBuf::from("/usr/bin/gitlab-runner"), PathBuf::from("/usr/local/bin/gitlab-runner")],
        };
        candidates.iter().filter_map(|p| std::fs::canonicalize(p).ok()).find(|p| p.is_file())
    }
}

fn default_job_prefix() -> String {
    "job".into()
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/ctproxy/control.sock")
}

fn default_jobs_dir() -> PathBuf {
    PathBuf::from("/run/ctproxy/jobs")
}

fn default_job_timeout() -> SpanOrZero {
    SpanOrZero(Duration::from_secs(3600))
}

fn default_job_grace() -> SpanOrZero {
    SpanOrZero(Duration::from_secs(300))
}

fn default_reap_interval() -> SpanOrZero {
    SpanOrZero(Duration::from_secs(60))
}

/// `[registry_proxy]`: the Registry API v2 server dockerd pushes and pulls namespace images through.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryProxyConfig {
    /// Where it listens. A loopback address, because dockerd speaks plain HTTP only to registries it
    /// considers insecure, and `127.0.0.0/8` is insecure by default.
    #[serde(default = "default_registry_address")]
    pub address: SocketAddr,
    /// Registries (`host` or `host:port`) reached over plain `http://`; they may also be on
    /// private or loopback addresses.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Registries (`host` or `host:port`) reached over HTTPS although they are on private, loopback
    /// or link-local addresses. Anything else on such an address is refused (SSRF).
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// PEM files of extra CA certificates trusted for upstream registries, on top of the system's.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// See the keys of the same names of `[listener.NAME]` (dockerd is the only client).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Span,
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
    #[serde(default = "default_registry_max_connections")]
    pub max_connections: u32,
    /// Blobs kept by digest (`crate::registry::blobs`) in a store of their own here, budget
    /// `cache_max_bytes` (default 10g). Absent: in the `[cache]`'s store (one budget, `[cache]
    /// max_bytes`, and one LRU with package files), or not cached without a `[cache]` section.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub cache_max_bytes: Option<Size>,
}

impl Default for RegistryProxyConfig {
    /// What an empty `[registry_proxy]` section means.
    fn default() -> Self {
        RegistryProxyConfig {
            address: default_registry_address(),
            insecure: Vec::new(),
            allow_private: Vec::new(),
            ca: Vec::new(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_registry_max_connections(),
            cache_dir: None,
            cache_max_bytes: None,
        }
    }
}

fn default_registry_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5001))
}

/// Is `s` a registry domain as distribution/reference writes one: a host name or IPv4 address
/// (lower case), optionally with `:port`? IPv6 literals are refused: namespace image names cannot
/// spell them.
pub fn valid_registry_domain(s: &str) -> bool {
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

/// What every namespace shares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespacesConfig {
    /// Repository names (glob, `*` matches anything, `ctproxy-test/*`) of images every namespace may
    /// use read-only under their real names.
    #[serde(default)]
    pub shared_images: Vec<String>,
    /// Answers larger than this are not rewritten (lists of a very busy daemon).
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Address ranges (CIDR) of namespace networks: every network a namespace creates gets a free
    /// block of `network_prefix_len` from here, and a subnet a client chooses must lie inside.
    /// Empty: the daemon's own pools, and namespaces may not choose subnets.
    #[serde(default)]
    pub network_pool: Vec<String>,
    #[serde(default = "default_network_prefix_len")]
    pub network_prefix_len: u8,
}

impl Default for NamespacesConfig {
    fn default() -> Self {
        NamespacesConfig {
            shared_images: Vec::new(),
            max_response_bytes: default_max_response(),
            network_pool: Vec::new(),
            network_prefix_len: default_network_prefix_len(),
        }
    }
}

fn default_network_prefix_len() -> u8 {
    24
}

fn default_max_response() -> usize {
    64 << 20
}

/// One authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `SO_PEERCRED` of unix-socket clients: uid (or user name) → identity, gid (or group) → identity.
    UnixPeer {
        #[serde(default)]
        uids: BTreeMap<String, String>,
        #[serde(default)]
        gids: BTreeMap<String, String>,
    },
    /// Verified TLS client certificates: common name or subjectAltName → identity.
    TlsCert {
        #[serde(default)]
        subjects: BTreeMap<String, String>,
        /// Without a mapping entry, the common name is the identity.
        #[serde(default)]
        cn_as_identity: bool,
    },
    /// `Authorization: Basic` (user → bcrypt hash) and `Bearer` (SHA-256 hex of the token → identity).
    Http {
        #[serde(default)]
        users: BTreeMap<String, String>,
        #[serde(default)]
        tokens: BTreeMap<String, String>,
    },
}

/// One policy. Each kind's settings include `dry_run`: log what would be refused, refuse nothing,
/// rewrite nothing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicyConfig {
    Conservative(ConservativeConfig),
    Inject(Box<InjectConfig>),
}

impl PolicyConfig {
    pub fn dry_run(&self) -> bool {
        match self {
            PolicyConfig::Conservative(c) => c.dry_run,
            PolicyConfig::Inject(c) => c.dry_run,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Replaces the listener's policies for this identity.
    pub policies: Option<Vec<String>>,
    /// Puts this identity in a namespace (overrides the listener's).
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// JSON bodies a policy must read are refused (413) past this size.
    #[serde(default = "default_max_json")]
    pub max_json_body_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_json_body_bytes: default_max_json() }
    }
}

fn default_max_json() -> usize {
    1 << 20
}

/// The dockerd that every listener forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default = "default_upstream")]
    pub url: UpstreamAddr,
    /// TLS towards a remote dockerd (`tcp://host:2376`), as `docker --tlsverify` would use it.
    pub tls: Option<UpstreamTls>,
    /// How long to wait for a connection to the daemon before answering 502 (`"5s"`, the
    /// default); see [`Config::connect_timeout`].
    pub connect_timeout: Option<Span>,
    /// The old spelling of `connect_timeout`, in milliseconds; still accepted.
    pub connect_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// CA bundle that signed the daemon's certificate.
    pub ca: PathBuf,
    /// Client certificate and key, for a daemon started with `--tlsverify`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `unix:///path/to.sock` or `tcp://host:port`.
    pub address: ListenAddr,
    /// Unix sockets only: file mode as an octal string, e.g. `"0660"`.
    pub mode: Option<FileMode>,
    /// Unix sockets only: owner and group (names or numbers).
    pub owner: Option<String>,
    pub group: Option<String>,
    /// TCP only: serve TLS.
    pub tls: Option<ListenerTls>,
    /// Write one access-log line per request (default true).
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Authenticators tried in order (names of `[auth.NAME]` sections). None: everyone is `anonymous`.
    #[serde(default)]
    pub auth: Vec<String>,
    /// Policies applied in order (names of `[policy.NAME]` sections).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Every client of this listener works in this namespace (unless its identity names another).
    pub namespace: Option<String>,
    /// TLS only: a handshake not finished in this time is abandoned.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Span,
    /// A request head must be complete this long after its first byte (the first request's: after
    /// the connection opened); otherwise the connection is closed (slowloris).
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Span,
    /// A keep-alive connection that sends no byte of a next request for this long is closed.
    /// Streams, hijacked sessions and request bodies are never cut by it.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Span,
    /// Live connections at most (hijacked ones included); one more is answered 503 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl ListenerConfig {
    /// A listener on `address` with every other setting at its default.
    pub fn at(address: ListenAddr) -> ListenerConfig {
        ListenerConfig {
            address,
            mode: None,
            owner: None,
            group: None,
            tls: None,
            access_log: true,
            auth: Vec::new(),
            policies: Vec::new(),
            namespace: None,
            handshake_timeout: default_handshake_timeout(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
        }
    }

    /// Do two configurations describe the same socket? (Then a reload keeps it open; timeouts and
    /// the connection cap are applied to it in place.)
    pub fn same_socket(&self, other: &ListenerConfig) -> bool {
        (&self.address, &self.mode, &self.owner, &self.group, &self.tls, self.access_log)
            == (&other.address, &other.mode, &other.owner, &other.group, &other.tls, other.access_log)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (`docker --tlsverify`).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter (`info`, `ctproxy=debug`); `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM/SIGINT: how long in-flight requests may run before they are cut (`"30s"`, the
    /// default); see [`Config::grace`].
    pub grace: Option<SpanOrZero>,
    /// The old spelling of `grace`, in milliseconds; still accepted.
    pub grace_ms: Option<u64>,
}

fn default_upstream() -> UpstreamAddr {
    UpstreamAddr::Unix("/var/run/docker.sock".into())
}
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
fn default_level() -> String {
    "info".into()
}
fn yes() -> bool {
    true
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig { url: default_upstream(), tls: None, connect_timeout: None, connect_timeout_ms: None }
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: default_level() }
    }
}

/// Command-line settings that replace parts of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<ListenAddr>,
    pub upstream: Option<UpstreamAddr>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Reads the file at `path`, or the embedded default when `None`, then applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let origin = Self::origin(path);
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.display().to_string(), source })?,
            None => DEFAULT_TOML.to_owned(),
        };
        let mut config = Self::parse(&text, &origin)?;
        if path.is_none() && !overrides.listen.is_empty() {
            // `serve --listen X` without a file asks for a plain proxy on X: the embedded default's
            // job service and registry proxy (fixed sockets and ports) are not started.
            config.jobs = None;
            config.registry_proxy = None;
            config.cache = None;
        }
        config.apply(overrides);
        config.validate(&origin)?;
        Ok(config)
    }

    /// How errors name where the configuration came from: the file, or the embedded default.
    pub fn origin(path: Option<&Path>) -> String {
        path.map_or_else(|| "embedded default configuration".to_owned(), |p| p.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: e.to_string() })
    }

    fn apply(&mut self, o: &Overrides) {
        if !o.listen.is_empty() {
            self.listener = o
                .listen
                .iter()
                .enumerate()
                .map(|(i, addr)| {
                    let l = ListenerConfig {
                        mode: matches!(addr, ListenAddr::Unix(_)).then_some(FileMode(0o660)),
                        ..ListenerConfig::at(addr.clone())
                    };
                    (format!("listen-{}", i + 1), l)
                })
                .collect();
        }
        if let Some(u) = &o.upstream {
            self.upstream.url = u.clone();
            self.upstream.tls = None;
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
    }

    /// Checks that span several keys and need nothing but the configuration itself (what needs
    /// the layers above, users, groups, namespace names, policies, PEM files, is checked by the
    /// build step, `crate::build`). Each error names the key it is about.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| ConfigError::Invalid { origin: origin.to_owned(), key, message: message.to_owned() };
        if self.listener.is_empty() {
            return Err(invalid("listener".into(), "at least one listener is needed"));
        }
        let mut seen = BTreeMap::new();
        for (name, l) in &self.listener {
            let key = |k: &str| format!("listener.{name}.{k}");
            let unix = matches!(l.address, ListenAddr::Unix(_));
            if !unix && (l.mode.is_some() || l.owner.is_some() || l.group.is_some()) {
                return Err(invalid(key("mode"), "mode, owner and group apply to unix:// listeners only"));
            }
            if unix && l.tls.is_some() {
                return Err(invalid(key("tls"), "TLS applies to tcp:// listeners only"));
            }
            if let Some(other) = seen.insert(l.address.to_string(), name) {
                return Err(invalid(key("address"), &format!("the same address as listener {other:?}")));
            }
            if let Some(a) = l.auth.iter().find(|a| !self.auth.contains_key(*a)) {
                return Err(invalid(key("auth"), &format!("no [auth.{a}] section")));
            }
            if let Some(p) = l.policies.iter().find(|p| !self.policy.contains_key(*p)) {
                return Err(invalid(key("policies"), &format!("no [policy.{p}] section")));
            }
        }
        if let Some(j) = &self.jobs {
            j.executor.check().map_err(|(key, message)| invalid(format!("jobs.executor.{key}"), &message))?;
            if let Some(p) = j.policies.iter().find(|p| !self.policy.contains_key(*p)) {
                return Err(invalid("jobs.policies".into(), &format!("no [policy.{p}] section")));
            }
        }
        for (name, id) in &self.identity {
            if let Some(p) = id.policies.iter().flatten().find(|p| !self.policy.contains_key(*p)) {
                return Err(invalid(format!("identity.{name}.policies"), &format!("no [policy.{p}] section")));
            }
        }
        for (name, p) in &self.policy {
            if let PolicyConfig::Conservative(c) = p {
                // A bind of the jobs directory (or of a directory holding it) would let a container
                // swap another job's socket for a symbolic link.
                if let Some(j) = &self.jobs {
                    if let Some(p) = c.allowed_bind_paths.iter().find(|p| p.starts_with(&j.dir) || j.dir.starts_with(p)) {
                        return Err(invalid(
                            format!("policy.{name}.allowed_bind_paths"),
                            &format!(
                                "{} overlaps the jobs directory {} (jobs.dir), which holds the jobs' sockets",
                                p.display(),
                                j.dir.display()
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(tls) = &self.upstream.tls {
            if !matches!(self.upstream.url, UpstreamAddr::Tcp { .. }) {
                return Err(invalid("upstream.tls".into(), "TLS applies to a tcp:// upstream only"));
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(invalid("upstream.tls".into(), "cert and key go together"));
            }
        }
        if let Some(rp) = &self.registry_proxy {
            for (key, list) in [("insecure", &rp.insecure), ("allow_private", &rp.allow_private)] {
                if let Some(bad) = list.iter().find(|d| !valid_registry_domain(d)) {
                    return Err(invalid(
                        format!("registry_proxy.{key}"),
                        &format!("{bad:?} is not a registry domain: write host or host:port, lower case, no scheme"),
                    ));
                }
            }
        }
        if let Some(c) = &self.cache {
            if c.hosts.is_empty() {
                return Err(invalid("cache.hosts".into(), "list the host names to intercept"));
            }
            for h in &c.hosts {
                let ok = !h.is_empty()
                    && h.len() <= 253
                    && h.split('.').all(|l| {
                        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    });
                if !ok {
                    return Err(invalid("cache.hosts".into(), &format!("{h:?} is not a lower-case DNS name")));
                }
            }
            if c.listen != "auto" && c.listen.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("cache.listen".into(), "an IP address, or \"auto\" for dockerd's bridge gateway"));
            }
            for k in c.origins.keys() {
                if !k.rsplit_once(':').is_some_and(|(h, p)| c.hosts.iter().any(|x| x == h) && p.parse::<u16>().is_ok()) {
                    return Err(invalid(format!("cache.origins.{k}"), "keys are \"host:port\" of an intercepted host"));
                }
            }
        }
        let caps = self
            .listener
            .iter()
            .map(|(name, l)| (format!("listener.{name}.max_connections"), l.max_connections))
            .chain(self.jobs.iter().map(|j| ("jobs.max_connections".to_owned(), j.max_connections)))
            .chain(self.registry_proxy.iter().map(|r| ("registry_proxy.max_connections".to_owned(), r.max_connections)))
            .chain(self.cache.iter().map(|c| ("cache.max_connections".to_owned(), c.max_connections)));
        for (key, cap) in caps {
            if cap == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.upstream.connect_timeout_ms == Some(0) {
            return Err(invalid("upstream.connect_timeout_ms".into(), "must be more than 0"));
        }
        if self.upstream.connect_timeout.is_some() && self.upstream.connect_timeout_ms.is_some() {
            return Err(invalid("upstream.connect_timeout_ms".into(), "the old spelling of connect_timeout: write one of them"));
        }
        if self.shutdown.grace.is_some() && self.shutdown.grace_ms.is_some() {
            return Err(invalid("shutdown.grace_ms".into(), "the old spelling of grace: write one of them"));
        }
        Ok(())
    }

    /// `[upstream] connect_timeout` (or the old `connect_timeout_ms`), 5 s by default.
    pub fn connect_timeout(&self) -> Duration {
        let old = self.upstream.connect_timeout_ms.map(Duration::from_millis);
        old.or(self.upstream.connect_timeout.map(|s| s.0)).unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// `[shutdown] grace` (or the old `grace_ms`), 30 s by default.
    pub fn grace(&self) -> Duration {
        let old = self.shutdown.grace_ms.map(Duration::from_millis);
        old.or(self.shutdown.grace.map(|s| s.0)).unwrap_or(DEFAULT_GRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.upstream.url, UpstreamAddr::Unix("/var/run/docker.sock".into()));
        assert_eq!(c.listener["default"].address, ListenAddr::Unix("/run/ctproxy/docker.sock".into()));
        assert_eq!(c.listener["default"].mode, Some(FileMode(0o660)));
        assert!(c.jobs.is_some() && c.registry_proxy.is_some());
        let plain = Config::load(None, &Overrides { listen: vec![ListenAddr::Unix("/tmp/x.sock".into())], ..Default::default() }).unwrap();
        assert!(plain.jobs.is_none() && plain.registry_proxy.is_none());
    }

    #[test]
    fn runner_config_is_valid() {
        let text = include_str!("../../runner-config/ctproxy-runner.toml");
        let c = Config::parse(text, "runner-config/ctproxy-runner.toml").unwrap();
        c.validate("runner-config/ctproxy-runner.toml").unwrap();
        assert!(c.jobs.is_some());
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../runner-config/ctproxy.toml");
        let c = Config::parse(text, "runner-config/ctproxy.toml").unwrap();
        c.validate("runner-config/ctproxy.toml").unwrap();
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = Config::parse("[listener.a]\naddress = \"unix:///x\"\nmdoe = \"0600\"\n", "t.toml").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("mdoe"), "{msg}");

        let e = Config::parse("[listener.a]\naddress = \"http://x\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("invalid address"), "{e}");

        let e = Config::parse("[listener.a]\naddress = \"unix:///x\"\nmode = \"999\"\n", "t.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("file mode"), "{e}");

        let c = Config::parse("[listener.a]\naddress = \"tcp://127.0.0.1:1\"\nmode = \"0600\"\n", "t.toml").unwrap();
        let e = c.validate("t.toml").unwrap_err().to_string();
        assert!(e.contains("listener.a.mode"), "{e}");
    }

    #[test]
    fn cache_section() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let c = Config::parse(&format!("{base}[cache]\nhosts = [\"deb.debian.org\"]\nmax_bytes = \"2g\"\nrotate_every = \"90m\"\n"), "t")
            .unwrap();
        let cache = c.cache.clone().unwrap();
        assert_eq!((cache.max_bytes.0, cache.rotate_every.0), (2 << 30, Duration::from_secs(5400)));
        assert_eq!((cache.listen.as_str(), cache.http_port, cache.https_port), ("auto", 80, 443));
        c.validate("t").unwrap();
        for (bad, key) in [
            ("hosts = []", "cache.hosts"),
            ("hosts = [\"Deb.debian.org\"]", "cache.hosts"),
            ("hosts = [\"a\"]\nlisten = \"eth0\"", "cache.listen"),
            ("hosts = [\"a\"]\n[cache.origins]\n\"b:80\" = \"127.0.0.1:1\"", "cache.origins"),
        ] {
            let e = Config::parse(&format!("{base}[cache]\n{bad}\n"), "t").unwrap().validate("t").unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        for bad in ["max_bytes = \"lots\"", "rotate_every = \"0s\"", "rotate_every = \"1w\"", "hots = []"] {
            assert!(Config::parse(&format!("{base}[cache]\nhosts = [\"a\"]\n{bad}\n"), "t").is_err(), "{bad}");
        }
        let plain = Config::load(None, &Overrides { listen: vec![ListenAddr::Unix("/tmp/x.sock".into())], ..Default::default() }).unwrap();
        assert!(plain.cache.is_none(), "--listen without a file runs a plain proxy");
    }

    #[test]
    fn durations_are_humantime_and_the_old_keys_still_work() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let c = Config::parse(base, "t").unwrap();
        assert_eq!((c.connect_timeout(), c.grace()), (Duration::from_secs(5), Duration::from_secs(30)));
        let c = Config::parse(&format!("{base}[upstream]\nconnect_timeout = \"2s\"\n[shutdown]\ngrace = \"1m 30s\"\n[jobs]\ntimeout = \"2h\"\ngrace = \"0s\"\nreap_interval = \"10s\"\n"), "t").unwrap();
        c.validate("t").unwrap();
        assert_eq!((c.connect_timeout(), c.grace()), (Duration::from_secs(2), Duration::from_secs(90)));
        let j = c.jobs.unwrap();
        assert_eq!((j.timeout.0, j.grace.0, j.reap_interval.0), (Duration::from_secs(7200), Duration::ZERO, Duration::from_secs(10)));
        let old = format!("{base}[upstream]\nconnect_timeout_ms = 1500\n[shutdown]\ngrace_ms = 500\n[jobs]\ntimeout_s = 600\ngrace_s = 0\nreap_interval_s = 1\n");
        let c = Config::parse(&old, "t").unwrap();
        c.validate("t").unwrap();
        assert_eq!((c.connect_timeout(), c.grace()), (Duration::from_millis(1500), Duration::from_millis(500)));
        let j = c.jobs.unwrap();
        assert_eq!((j.timeout.0, j.grace.0, j.reap_interval.0), (Duration::from_secs(600), Duration::ZERO, Duration::from_secs(1)));
        let both = format!("{base}[upstream]\nconnect_timeout = \"1s\"\nconnect_timeout_ms = 1000\n");
        let e = Config::parse(&both, "t").unwrap().validate("t").unwrap_err().to_string();
        assert!(e.contains("upstream.connect_timeout_ms"), "{e}");
    }

    #[test]
    fn connection_limits() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let c = Config::parse(base, "t").unwrap();
        let l = &c.listener["a"];
        assert_eq!(
            (l.header_timeout.0, l.idle_timeout.0, l.handshake_timeout.0),
            (Duration::from_secs(30), Duration::from_secs(180), Duration::from_secs(10))
        );
        assert_eq!(l.max_connections, 1024);
        let c = Config::parse(
            &format!("{base}header_timeout = \"500ms\"\nidle_timeout = \"5m\"\nmax_connections = 3\n[jobs]\nheader_timeout = 2\nmax_connections = 7\n"),
            "t",
        )
        .unwrap();
        c.validate("t").unwrap();
        let l = &c.listener["a"];
        assert_eq!((l.header_timeout.0, l.idle_timeout.0, l.max_connections), (Duration::from_millis(500), Duration::from_secs(300), 3));
        let j = c.jobs.as_ref().unwrap();
        assert_eq!((j.header_timeout.0, j.idle_timeout.0, j.max_connections), (Duration::from_secs(2), Duration::from_secs(180), 7));
        for bad in ["header_timeout = \"0s\"", "idle_timeout = \"5 minutes\"", "header_timeout = \"ms\"", "max_connections = -1"] {
            assert!(Config::parse(&format!("{base}{bad}\n"), "t").is_err(), "{bad}");
        }
        let e = Config::parse(&format!("{base}max_connections = 0\n"), "t").unwrap().validate("t").unwrap_err().to_string();
        assert!(e.contains("listener.a.max_connections"), "{e}");
        let e = Config::parse(&format!("{base}[jobs]\nmax_connections = 0\n"), "t").unwrap().validate("t").unwrap_err().to_string();
        assert!(e.contains("jobs.max_connections"), "{e}");
    }

    #[test]
    fn plugin_sections() {
        let text = r#"
            [listener.a]
            address = "unix:///tmp/a.sock"
            auth = ["peers", "web"]
            policies = ["strict", "ci"]
            [auth.peers]
            kind = "unix-peer"
            uids = { "0" = "root" }
            [auth.web]
            kind = "http"
            tokens = { "abcd" = "bot" }
            [policy.strict]
            kind = "conservative"
            dry_run = true
            allowed_bind_paths = ["/srv"]
            [policy.ci]
            kind = "inject"
            force = { env = { CI = "true" }, memory = "1g" }
            [identity.root]
            policies = []
        "#;
        let c = Config::parse(text, "t").unwrap();
        c.validate("t").unwrap();
        let PolicyConfig::Conservative(s) = &c.policy["strict"] else { panic!("kind") };
        assert!(s.dry_run && c.policy["strict"].dry_run());
        assert_eq!(s.allowed_bind_paths, [std::path::PathBuf::from("/srv")]);

        let typo = text.replace("allowed_bind_paths", "allowed_bind_path");
        assert!(Config::parse(&typo, "t").unwrap_err().to_string().contains("allowed_bind_path"));
        let bad_kind = text.replace("kind = \"inject\"", "kind = \"injekt\"");
        assert!(Config::parse(&bad_kind, "t").is_err());
        let dangling = text.replace("\"strict\", \"ci\"", "\"strict\", \"nope\"");
        let e = Config::parse(&dangling, "t").unwrap().validate("t").unwrap_err().to_string();
        assert!(e.contains("listener.a.policies") && e.contains("nope"), "{e}");
    }

    #[test]
    fn registry_proxy_section() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let c = Config::parse(base, "t").unwrap();
        assert!(c.registry_proxy.is_none());
        let c = Config::parse(&format!("{base}[registry_proxy]\n"), "t").unwrap();
        c.validate("t").unwrap();
        let rp = c.registry_proxy.unwrap();
        assert_eq!(rp.address, "127.0.0.1:5001".parse().unwrap());
        let text = format!("{base}[registry_proxy]\naddress = \"127.0.0.1:6000\"\ninsecure = [\"localhost:5000\", \"reg.lan\"]\nallow_private = [\"10.1.2.3:443\"]\n");
        let c = Config::parse(&text, "t").unwrap();
        c.validate("t").unwrap();
        assert_eq!(c.registry_proxy.as_ref().unwrap().insecure, ["localhost:5000", "reg.lan"]);
        let e = Config::parse(&format!("{base}[registry_proxy]\ninsecur = []\n"), "t").unwrap_err().to_string();
        assert!(e.contains("insecur"), "{e}");
        assert!(Config::parse(&format!("{base}[registry_proxy]\naddress = \"nohost\"\n"), "t").is_err());
        for bad in ["http://reg.io", "Reg.io", "reg.io:99999", "reg.io/x", "[::1]:5000", ""] {
            let c = Config::parse(&format!("{base}[registry_proxy]\ninsecure = [\"{bad}\"]\n"), "t").unwrap();
            let e = c.validate("t").unwrap_err().to_string();
            assert!(e.contains("registry_proxy.insecure"), "{bad}: {e}");
        }
    }

    #[test]
    fn overrides_replace_listeners_and_upstream() {
        let o = Overrides {
            listen: vec![ListenAddr::parse("tcp://127.0.0.1:0").unwrap(), ListenAddr::parse("unix:///tmp/a.sock").unwrap()],
            upstream: Some(UpstreamAddr::parse("tcp://10.0.0.1:2375").unwrap()),
            log_format: Some(LogFormat::Json),
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.listener.len(), 2);
        assert!(c.listener["listen-1"].mode.is_none());
        assert_eq!(c.listener["listen-2"].mode, Some(FileMode(0o660)));
        assert_eq!(c.log.format, LogFormat::Json);
    }
}
