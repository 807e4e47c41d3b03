//! The one build step: a parsed [`Config`] becomes everything that runs — the pooled client to the
//! daemon, each listener's TLS and pipeline, the pipeline of the job listeners and the settings
//! every namespace shares.
//!
//! Start, `SIGHUP` reload and `serve --check` all go through [`build`]: what `--check` accepts is
//! what a start or a reload applies, and a reload replaces every pipeline from one source (job
//! sockets included, which once kept the pipeline they were started with). Checks that need the
//! layers above `config` (users and groups, namespace names, the network pool, policy settings,
//! PEM files) happen here, each error naming the key it is about.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{AuthConfig, Config, PolicyConfig};
use crate::http::Forwarder;
use crate::plugin::auth::{Authenticator, HttpAuth, TlsCertAuth, UnixPeerAuth};
use crate::plugin::namespace::pool::NetworkPool;
use crate::plugin::namespace::{self, Namespace, NsName, RegistryTokens};
use crate::plugin::policy::{Conservative, Inject, Policy, PolicyChain};
use crate::proxy::Pipeline;
use crate::registry::TokenStore;
use crate::transport::listener::{resolve_group, resolve_user};
use crate::transport::{self, Connector, TransportError};

/// A configuration that cannot be built; `key` is the configuration key it is about.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

impl BuildError {
    fn new(key: impl Into<String>, message: impl std::fmt::Display) -> BuildError {
        BuildError { key: key.into(), message: message.to_string() }
    }
}

/// Everything that runs, built from one configuration.
pub struct Built {
    /// The pooled client to the configured daemon.
    pub forwarder: Arc<Forwarder>,
    /// Per `[listener.NAME]`: its pipeline and its TLS.
    pub listeners: BTreeMap<String, BuiltListener>,
    /// The pipeline of job listeners (`[jobs]` policies; each job adds its namespace and socket).
    pub jobs: Option<Pipeline>,
    /// What every namespace on this server shares.
    pub namespaces: Arc<namespace::Settings>,
}

/// One listener, ready to bind.
pub struct BuiltListener {
    pub pipeline: Pipeline,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Builds everything that runs from `config`. `tokens` is the registry proxy's token store; it is
/// handed to namespaces only when the configuration has a `[registry_proxy]`.
pub fn build(config: &Config, tokens: &TokenStore) -> Result<Built, BuildError> {
    let tokens = config.registry_proxy.as_ref().map(|_| Arc::new(tokens.clone()) as Arc<dyn RegistryTokens>);
    let namespaces = namespace_settings(config, tokens)?;
    let parts = Parts::new(config, &namespaces)?;
    let mut listeners = BTreeMap::new();
    for (name, l) in &config.listener {
        let tls = match &l.tls {
            Some(t) => Some(
                transport::tls::server_config(&t.cert, &t.key, t.client_ca.as_deref())
                    .map_err(|e| BuildError::new(format!("listener.{name}.tls"), e))?,
            ),
            None => None,
        };
        let namespace = match l.namespace.as_deref() {
            Some(n) => Some(namespace(n, &namespaces).map_err(|m| BuildError::new(format!("listener.{name}.namespace"), m))?),
            None => None,
        };
        let pipeline = parts.pipeline(config, &l.auth, &l.policies, namespace);
        listeners.insert(name.clone(), BuiltListener { pipeline, tls });
    }
    let jobs = config.jobs.as_ref().map(|j| parts.pipeline(config, &[], &j.policies, None));
    Ok(Built { forwarder: forwarder(config)?, listeners, jobs, namespaces })
}

/// The pooled client to the configured daemon (`ctproxy doctor` asks the daemon through the same one).
pub fn forwarder(config: &Config) -> Result<Arc<Forwarder>, BuildError> {
    let tls = match &config.upstream.tls {
        Some(t) => {
            let pair = t.cert.as_deref().zip(t.key.as_deref());
            Some(transport::tls::client_config(&t.ca, pair).map_err(|e| BuildError::new("upstream.tls", e))?)
        }
        None => None,
    };
    let connector =
        Connector::new(config.upstream.url.clone(), tls, config.connect_timeout()).map_err(|e| BuildError::new("upstream.url", e))?;
    Ok(Arc::new(Forwarder::new(connector)))
}

fn namespace(name: &str, settings: &Arc<namespace::Settings>) -> Result<Namespace, String> {
    let name = NsName::new(name).map_err(|e| e.to_string())?;
    Ok(Namespace::new(name, settings.clone()))
}

fn namespace_settings(config: &Config, tokens: Option<Arc<dyn RegistryTokens>>) -> Result<Arc<namespace::Settings>, BuildError> {
    let pool = NetworkPool::parse(&config.namespaces.network_pool, config.namespaces.network_prefix_len)
        .map_err(|e| BuildError::new("namespaces.network_pool", e))?;
    Ok(Arc::new(namespace::Settings {
        registry: config.registry_proxy.as_ref().map_or_else(|| "127.0.0.1:5001".to_owned(), |r| r.address.to_string()),
        shared_images: config.namespaces.shared_images.clone(),
        tokens,
        max_response: config.namespaces.max_response_bytes,
        pool: Some(pool).filter(|p| !p.ranges.is_empty()),
    }))
}

/// The authenticators, policies and identity overrides that pipelines are put together from.
struct Parts<'c> {
    auths: BTreeMap<&'c str, Arc<dyn Authenticator>>,
    policies: BTreeMap<&'c str, (Arc<dyn Policy>, bool)>,
    per_identity: HashMap<Arc<str>, PolicyChain>,
    per_identity_ns: HashMap<Arc<str>, Namespace>,
}

impl<'c> Parts<'c> {
    fn new(config: &'c Config, namespaces: &Arc<namespace::Settings>) -> Result<Parts<'c>, BuildError> {
        let mut auths: BTreeMap<&str, Arc<dyn Authenticator>> = BTreeMap::new();
        for (name, a) in &config.auth {
            let auth: Arc<dyn Authenticator> = match a {
                AuthConfig::UnixPeer { uids, gids } => {
                    let ids = |what: &str, m: &BTreeMap<String, String>, resolve: fn(&str) -> Result<u32, TransportError>| {
                        m.iter()
                            .map(|(k, v)| {
                                resolve(k).map(|id| (id, v.clone())).map_err(|e| BuildError::new(format!("auth.{name}.{what}.{k}"), e))
                            })
                            .collect::<Result<HashMap<_, _>, _>>()
                    };
                    Arc::new(UnixPeerAuth::new(name, ids("uids", uids, resolve_user)?, ids("gids", gids, resolve_group)?))
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
                PolicyConfig::Conservative(c) => Arc::new(
                    Conservative::new(name, c.clone()).map_err(|e| BuildError::new(format!("policy.{name}.{}", e.key), e.message))?,
                ),
                PolicyConfig::Inject(c) => Arc::new(Inject::new(name, (**c).clone())),
            };
            policies.insert(name, (policy, p.dry_run()));
        }
        let mut parts = Parts { auths, policies, per_identity: HashMap::new(), per_identity_ns: HashMap::new() };
        for (id, c) in &config.identity {
            if let Some(p) = &c.policies {
                parts.per_identity.insert(Arc::from(id.as_str()), parts.chain(p));
            }
            if let Some(n) = &c.namespace {
                let ns = namespace(n, namespaces).map_err(|m| BuildError::new(format!("identity.{id}.namespace"), m))?;
                parts.per_identity_ns.insert(Arc::from(id.as_str()), ns);
            }
        }
        Ok(parts)
    }

    /// The policies named, in order (`Config::validate` made sure each exists).
    fn chain(&self, names: &[String]) -> PolicyChain {
        let mut chain = PolicyChain::default();
        for n in names {
            if let Some((p, dry)) = self.policies.get(n.as_str()) {
                chain.push(p.clone(), *dry);
            }
        }
        chain
    }

    fn pipeline(&self, config: &Config, auth: &[String], policies: &[String], namespace: Option<Namespace>) -> Pipeline {
        let identified = !auth.is_empty();
        Pipeline {
            auth: auth.iter().filter_map(|a| self.auths.get(a.as_str()).cloned()).collect(),
            policies: self.chain(policies),
            // Identity overrides only matter where someone is identified.
            per_identity: if identified { self.per_identity.clone() } else { Default::default() },
            max_json_body: config.limits.max_json_body_bytes,
            namespace,
            per_identity_ns: if identified { self.per_identity_ns.clone() } else { Default::default() },
            own_socket: None,
            decorate: None,
        }
    }
}
