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

use crate::cache::rules::Ecosystem;
use crate::config::{AuthConfig, Config, ConfigError, PolicyConfig};
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

    /// The same error as the configuration loader reports its own: naming the file (`origin`,
    /// see [`Config::origin`]) and the key.
    pub fn at(self, origin: &str) -> ConfigError {
        ConfigError::Invalid { origin: origin.to_owned(), key: self.key, message: self.message }
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
    check(config)?;
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

/// What `serve --check` and `ctproxy doctor` run: [`build`] with a token store of its own (nothing
/// is bound, started or asked of the daemon), its error naming `origin`.
pub fn check_config(config: &Config, origin: &str) -> Result<(), ConfigError> {
    build(config, &TokenStore::new()).map(drop).map_err(|e| e.at(origin))
}

/// The checks of values that only the layers above `config` can judge, and that nothing below
/// builds from (the rest fail where they are built).
fn check(config: &Config) -> Result<(), BuildError> {
    for (name, l) in &config.listener {
        // Resolved here, not at bind time, so that a reload naming an unknown user or group is
        // refused before any listener is stopped.
        if let Some(owner) = &l.owner {
            resolve_user(owner).map_err(|e| BuildError::new(format!("listener.{name}.owner"), e))?;
        }
        if let Some(group) = &l.group {
            resolve_group(group).map_err(|e| BuildError::new(format!("listener.{name}.group"), e))?;
        }
    }
    if let Some(j) = &config.jobs {
        NsName::new(&format!("{}-x", j.namespace_prefix))
            .map_err(|_| BuildError::new("jobs.namespace_prefix", "use lower-case letters, digits and single dashes"))?;
        for (key, list) in [("allowed_images", &j.executor.allowed_images), ("allowed_services", &j.executor.allowed_services)] {
            for p in list {
                crate::docker::image_glob::validate(p).map_err(|e| BuildError::new(format!("jobs.executor.{key}"), e.to_string()))?;
            }
        }
    }
    if let Some(rp) = &config.registry_proxy {
        for path in &rp.ca {
            transport::tls::load_roots(path).map_err(|e| BuildError::new("registry_proxy.ca", e))?;
        }
    }
    if let Some(c) = &config.cache {
        for name in c.index_max_age.keys() {
            if Ecosystem::from_name(name).is_none() {
                let known: Vec<&str> = Ecosystem::ALL.iter().map(|e| e.as_str()).collect();
                return Err(BuildError::new(format!("cache.index_max_age.{name}"), format!("not an ecosystem ({})", known.join(", "))));
            }
        }
        for path in &c.extra_roots {
            transport::tls::load_roots(path).map_err(|e| BuildError::new("cache.extra_roots", e))?;
        }
    }
    Ok(())
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
        shared_ids: Default::default(),
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
            granted_binds: Default::default(),
            decorate: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration as `serve --check` judges it: loaded, validated, built.
    fn checked(text: &str) -> Result<(), String> {
        let c = Config::parse(text, "t").map_err(|e| e.to_string())?;
        c.validate("t").map_err(|e| e.to_string())?;
        check_config(&c, "t").map_err(|e| e.to_string())
    }

    #[test]
    fn wrong_executor_patterns_and_policies_are_refused_at_load() {
        let check =
            |executor: &str| checked(&format!("[listener.a]\naddress = \"unix:///tmp/a.sock\"\n[jobs]\n[jobs.executor]\n{executor}\n"));
        check("allowed_images = [\"ruby:*\"]\nallowed_services = [\"postgres:1{5,6}\"]\npull_policy = [\"always\", \"never\"]").unwrap();
        let e = check("allowed_services = [\"redis:[\"]").unwrap_err();
        assert!(e.contains("jobs.executor.allowed_services") && e.contains("unclosed '['"), "{e}");
        let e = check("allowed_pull_policies = [\"sometimes\"]").unwrap_err();
        assert!(e.contains("jobs.executor.allowed_pull_policies") && e.contains("\"sometimes\""), "{e}");
        assert!(check("allowed_image = []").unwrap_err().contains("allowed_image"));
    }

    #[test]
    fn conservative_settings_are_checked_at_load() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\npolicies = [\"p\"]\n[policy.p]\nkind = \"conservative\"\n";
        let err = |extra: &str| checked(&format!("{base}{extra}\n")).err();
        assert_eq!(err("allowed_bind_paths = [\"/srv/a\", \"/srv/b\"]\nallowed_subnets = [\"10.9.0.0/16\", \"fd00::/8\"]"), None);
        let e = err("allowed_bind_paths = [\"/srv\", \"/srv/a\"]").unwrap();
        assert!(e.contains("policy.p.allowed_bind_paths") && e.contains("overlap"), "{e}");
        let e = err("allowed_subnets = [\"10.9.0.0/99\"]").unwrap();
        assert!(e.contains("policy.p.allowed_subnets"), "{e}");
        let jobs = "[jobs]\ncontrol_socket = \"/run/c.sock\"\ndir = \"/srv/ctproxy/jobs\"\npolicies = [\"p\"]\n";
        let e = checked(&format!("{base}allowed_bind_paths = [\"/srv/ctproxy\"]\n{jobs}")).unwrap_err();
        assert!(e.contains("jobs directory"), "{e}");
        checked(&format!("{base}allowed_bind_paths = [\"/srv/data\"]\n{jobs}")).unwrap();
    }

    #[test]
    fn files_and_names_are_checked_by_the_build_step() {
        let base = "[listener.a]\naddress = \"unix:///tmp/a.sock\"\n";
        let e = checked(&format!("{base}[registry_proxy]\nca = [\"/nonexistent/ca.pem\"]\n")).unwrap_err();
        assert!(e.contains("registry_proxy.ca"), "{e}");
        let e = checked(&format!("{base}[cache]\nhosts = [\"a\"]\n[cache.index_max_age]\nrubygems = \"1m\"\n")).unwrap_err();
        assert!(e.contains("cache.index_max_age.rubygems"), "{e}");
        let e = checked(&format!("{base}owner = \"ctproxy-no-such-user\"\n")).unwrap_err();
        assert!(e.contains("`listener.a.owner`"), "{e}");
        let e = checked(&format!("{base}namespace = \"Bad_Name\"\n")).unwrap_err();
        assert!(e.contains("`listener.a.namespace`"), "{e}");
        let e = checked(&format!("{base}[namespaces]\nnetwork_pool = [\"10.0.0.0/99\"]\n")).unwrap_err();
        assert!(e.contains("`namespaces.network_pool`"), "{e}");
        let e = checked(&format!("{base}[jobs]\nnamespace_prefix = \"A\"\n")).unwrap_err();
        assert!(e.contains("`jobs.namespace_prefix`"), "{e}");
        checked(&format!("{base}[cache]\nhosts = [\"a\"]\n[cache.index_max_age]\napt = \"5m\"\n")).unwrap();
    }
}
