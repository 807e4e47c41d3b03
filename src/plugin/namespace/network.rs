//! Networks of a namespace: its own default network, creation with a subnet from the pool, and
//! every field that names a network.
//!
//! The daemon's default `bridge` is shared by everyone who asks for "the default network" (no
//! `NetworkMode`, `default`, `bridge`): there, every job's containers reach each other by address.
//! So in a namespace, `bridge` (and `default`) is the namespace's own network `ctp.<ns>.bridge`,
//! created on first use like any namespace network (labelled, with a subnet from the pool, with
//! the daemon's DNS for container names), shown to the client as `bridge`, and removed with the
//! namespace. `host` and `none` stay the daemon's: they join nothing another namespace can see
//! (policies judge `host`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use hyper::{Method, StatusCode};
use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::daemon::enc;
use super::pool::{host_routes, subnets_in_use};
use super::request::Prepared;
use super::text::Demangler;
use super::{Daemon, Namespace, NsError, NS_LABEL};
use crate::plugin::{Layer, Remedy};

/// The client's name of its namespace's default network.
pub const DEFAULT_NETWORK: &str = "bridge";

/// Names the daemon reserves for its predefined networks (`IsPredefined` on Linux).
pub fn is_predefined(net: &str) -> bool {
    matches!(net, "bridge" | "host" | "none" | "default")
}

/// How often a creation is retried when another creator took the same block of the pool first.
const ALLOCATION_TRIES: usize = 8;

/// One allocation at a time in this process: two creations never pick the same block here (other
/// processes sharing the daemon are told apart by the daemon's overlap error).
static ALLOCATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a namespace remembers between requests, so that the requests that use its default
/// network (every container create, `bridge` in any network field) or a named volume
/// (`-v data:/data`) do not each ask the daemon.
///
/// Only existence is kept: of the default network and of the named volumes seen with the
/// namespace's label. The default network's name, `ctp.<ns>.bridge`, can be made by this
/// namespace alone (every client name is mangled under its own prefix, and `ctp.` is reserved), so
/// once the daemon has shown it with this namespace's label, whose it is cannot change; what can
/// change is whether it still exists (a `docker network prune` in the namespace, the namespace's
/// destruction, an administrator on the daemon's own socket). So the fact is forgotten after a
/// prune and after any answer that is not a success (a create on a network that vanished answers
/// 404: the next request asks the daemon, and makes it again), and a new [`Namespace`] (each job,
/// each reload) starts without it. An answer read before a forgetting is not kept after it: each
/// forgetting starts a new generation, and a fact counts only in the generation it was learnt in.
/// The same holds for a volume `ctp.<ns>.<name>`; its facts are also forgotten after a volume
/// removal or prune in the namespace. A volume remembered that an administrator removed behind the
/// namespace's back is made again by the container create, unlabelled (as before ctproxy labelled
/// them), until the next forgetting.
#[derive(Debug, Default)]
pub struct Known {
    generation: AtomicU64,
    /// The generation (plus one) in which the default network was seen; 0: never.
    default_network: AtomicU64,
    /// Daemon-side names of volumes seen labelled as the namespace's, each with the generation
    /// (plus one) it was seen in; at most [`MAX_KNOWN_VOLUMES`].
    volumes: Mutex<HashMap<String, u64>>,
}

/// Beyond this many remembered volumes, the memory starts afresh (a job rarely has more than a few).
const MAX_KNOWN_VOLUMES: usize = 1024;

impl Known {
    /// The current generation: read before asking the daemon, handed back with what it said.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn default_network(&self) -> bool {
        self.default_network.load(Ordering::Acquire) == self.generation() + 1
    }

    /// The default network was seen in generation `seen` (read before asking the daemon).
    fn saw_default_network(&self, seen: u64) {
        self.default_network.store(seen + 1, Ordering::Release);
    }

    fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether the volume `name` (daemon-side) was seen in this generation.
    pub(super) fn volume(&self, name: &str) -> bool {
        let now = self.generation() + 1;
        self.volumes.lock().unwrap_or_else(PoisonError::into_inner).get(name) == Some(&now)
    }

    /// The volume `name` was seen, labelled, in generation `seen` (read before asking the daemon).
    pub(super) fn saw_volume(&self, seen: u64, name: &str) {
        let mut volumes = self.volumes.lock().unwrap_or_else(PoisonError::into_inner);
        if volumes.len() >= MAX_KNOWN_VOLUMES {
            volumes.clear();
        }
        volumes.insert(name.to_owned(), seen + 1);
    }
}

impl Namespace {
    /// Whether a daemon message names the default network (daemon-side name).
    pub(super) fn names_default_network(&self, message: &str) -> bool {
        self.name.object(DEFAULT_NETWORK).is_ok_and(|n| message.contains(&n))
    }

    /// Whether `daemon_name` is the namespace's default network's daemon-side name.
    pub(super) fn is_default_network(&self, daemon_name: &str) -> bool {
        self.name.object(DEFAULT_NETWORK).is_ok_and(|n| n == daemon_name)
    }

    /// Forgets what the daemon said (see [`Known`]).
    pub fn forget_known(&self) {
        self.known.forget();
    }

    /// The daemon-side name of the namespace's default network, created if it does not exist yet.
    pub async fn default_network(&self, daemon: &Daemon) -> Result<String, NsError> {
        let name = self.name.object(DEFAULT_NETWORK)?;
        if self.known.default_network() {
            return Ok(name);
        }
        let seen = self.known.generation();
        if let Some(n) = daemon.get(&format!("/networks/{}", enc(&name))).await? {
            if self.owns_labels(n.get("Labels")) {
                self.known.saw_default_network(seen);
                return Ok(name);
            }
            return Err(NsError::Daemon(format!("network {name} exists but is not this namespace's")));
        }
        let mut body = Map::new();
        body.insert("Name".into(), Value::String(name.clone()));
        body.insert("Driver".into(), Value::String("bridge".into()));
        body.insert("Labels".into(), json!({ NS_LABEL: self.name.as_str() }));
        let (status, answer) = self.create_in_pool(daemon, body).await?;
        if status.is_success() {
            self.known.saw_default_network(seen);
            return Ok(name);
        }
        // A concurrent request of the same namespace created it first: that is the one (the next
        // request checks its label).
        if status == StatusCode::CONFLICT {
            return Ok(name);
        }
        let message = answer.get("message").and_then(Value::as_str).unwrap_or("").to_owned();
        Err(NsError::Daemon(format!("cannot create the namespace's default network: {message}")))
    }

    /// `POST /networks/create`, done here (the pool's subnet may need a retry): the name mangled,
    /// the namespace's label, `ConfigFrom` resolved, chosen subnets checked against the pool.
    pub(super) async fn network_create(&self, daemon: &Daemon, body: Option<&mut Value>) -> Result<Prepared, NsError> {
        let Some(Value::Object(body)) = body else { return Err(NsError::Malformed("network create needs a JSON body".into())) };
        let typed = body.get("Name").and_then(Value::as_str).unwrap_or("").to_owned();
        if is_predefined(&typed) {
            return Ok(Prepared::Answer(
                StatusCode::FORBIDDEN,
                json!({ "message": format!("operation is not permitted on predefined {typed} network ") }),
            ));
        }
        body.insert("Name".into(), Value::String(self.name.network(&typed)?));
        self.set_label(body.entry("Labels").or_insert(Value::Null));
        if let Some(Value::Object(from)) = body.get_mut("ConfigFrom") {
            if let Some(n) = from.get("Network").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned) {
                from.insert("Network".into(), Value::String(self.network(daemon, &n).await?));
            }
        }
        self.check_chosen_subnets(body)?;
        let (status, mut answer) = self.create_in_pool(daemon, std::mem::take(body)).await?;
        Demangler::new(&self.name, &self.settings.registry).value(&mut answer);
        Ok(Prepared::Answer(status, answer))
    }

    /// Subnets, ranges, gateways and auxiliary addresses a client chose (`IPAM.Config`) must lie
    /// inside the pool; without a pool, a namespace may not choose any.
    fn check_chosen_subnets(&self, body: &Map<String, Value>) -> Result<(), NsError> {
        let Some(configs) = body.get("IPAM").and_then(|i| i.get("Config")).and_then(Value::as_array) else { return Ok(()) };
        for (i, c) in configs.iter().enumerate() {
            let field = |k: &str| format!("IPAM.Config[{i}].{k}");
            let mut chosen: Vec<(String, IpNet)> = Vec::new();
            for key in ["Subnet", "IPRange"] {
                if let Some(s) = c.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
                    let net = s.parse::<IpNet>().map_err(|_| NsError::Malformed(format!("invalid {}: {s:?} is not a CIDR", field(key))))?;
                    chosen.push((field(key), net));
                }
            }
            let mut addresses: Vec<(String, String)> = Vec::new();
            if let Some(g) = c.get("Gateway").and_then(Value::as_str).filter(|s| !s.is_empty()) {
                addresses.push((field("Gateway"), g.to_owned()));
            }
            if let Some(Value::Object(aux)) = c.get("AuxiliaryAddresses") {
                for (k, v) in aux {
                    addresses.push((format!("{}[{k:?}]", field("AuxiliaryAddresses")), v.as_str().unwrap_or("").to_owned()));
                }
            }
            for (what, a) in addresses {
                let ip: std::net::IpAddr =
                    a.parse().map_err(|_| NsError::Malformed(format!("invalid {what}: {a:?} is not an IP address")))?;
                chosen.push((what, IpNet::from(ip)));
            }
            for (what, net) in chosen {
                let inside = self.settings.pool.as_ref().is_some_and(|p| p.contains(&net));
                if !inside {
                    let pool = match &self.settings.pool {
                        Some(p) => {
                            let ranges: Vec<String> = p.ranges.iter().map(ToString::to_string).collect();
                            format!("outside the namespaces' network pool ({})", ranges.join(", "))
                        }
                        None => "while no network pool is configured ([namespaces] network_pool)".to_owned(),
                    };
                    return Err(NsError::refused(format!("the address {net} ({what}) is not allowed in a namespace: it is {pool}"))
                        .remedy(Remedy::Config("adding a range that contains it to [namespaces] network_pool")));
                }
            }
        }
        Ok(())
    }

    /// Creates a network on the daemon; with a pool and no IPv4 subnet chosen, with the pool's
    /// first free block, retried when another creator took it first.
    async fn create_in_pool(&self, daemon: &Daemon, mut body: Map<String, Value>) -> Result<(StatusCode, Value), NsError> {
        let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).unwrap_or(Value::Null);
        let chose_v4 = body
            .get("IPAM")
            .and_then(|i| i.get("Config"))
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c.get("Subnet").and_then(Value::as_str).is_some_and(|s| s.contains('.'))));
        let Some(pool) = self.settings.pool.as_ref().filter(|_| !chose_v4) else {
            let (status, bytes) = daemon.call(Method::POST, "/networks/create", Some(&Value::Object(body))).await?;
            return Ok((status, parse(&bytes)));
        };
        let _one_at_a_time = ALLOCATING.lock().await;
        let mut taken: Vec<IpNet> = Vec::new();
        let mut last = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
        for _ in 0..ALLOCATION_TRIES {
            let mut used = subnets_in_use(&daemon.list("/networks").await?);
            used.extend(host_routes());
            used.extend(taken.iter().copied());
            let Some(block) = pool.allocate(&used) else {
                return Err(NsError::refused(
                    "a new network is not available in a namespace while the namespaces' network pool is exhausted (no free block is left)",
                )
                .remedy(Remedy::Config("enlarging [namespaces] network_pool or raising network_prefix_len")));
            };
            set_ipv4_subnet(&mut body, block);
            let (status, bytes) = daemon.call(Method::POST, "/networks/create", Some(&Value::Object(body.clone()))).await?;
            let answer = parse(&bytes);
            let message = answer.get("message").and_then(Value::as_str).unwrap_or("");
            // Another daemon client took the block between the list and the create.
            if !status.is_success() && message.to_ascii_lowercase().contains("overlap") {
                taken.push(IpNet::V4(block));
                last = (status, answer);
                continue;
            }
            return Ok((status, answer));
        }
        Ok(last)
    }

    /// `NetworkingConfig.EndpointsConfig[*].NetworkID` (create) and `EndpointConfig.NetworkID`
    /// (connect): the daemon attaches by this ID when it is set, whatever network the key or the
    /// path names, so it is resolved in the namespace like any network reference and must name the
    /// same network as `resolved` (the key's or the path's network, daemon-side name).
    pub(super) async fn endpoint_network_id(&self, daemon: &Daemon, ep: &mut Value, resolved: &str) -> Result<(), NsError> {
        let Some(typed) = ep.get("NetworkID").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned) else {
            return Ok(());
        };
        let named = self.network(daemon, &typed).await?;
        let (Some(a), Some(b)) = (self.network_id(daemon, &named).await?, self.network_id(daemon, resolved).await?) else {
            return Err(NsError::no_network(&typed));
        };
        if a != b {
            return Err(NsError::Malformed(format!("NetworkID {typed} names another network than its endpoint's")));
        }
        if let Value::Object(e) = ep {
            e.insert("NetworkID".into(), Value::String(a));
        }
        Ok(())
    }

    async fn network_id(&self, daemon: &Daemon, name: &str) -> Result<Option<String>, NsError> {
        Ok(daemon.get(&format!("/networks/{}", enc(name))).await?.and_then(|n| n.get("Id").and_then(Value::as_str).map(str::to_owned)))
    }

    /// Build `networkmode`: the network a classic build's `RUN` containers join, resolved like a
    /// container's `NetworkMode` (the default is the namespace's own default network).
    pub(super) async fn build_network(&self, daemon: &Daemon, mode: &str) -> Result<String, NsError> {
        match mode {
            "" | "default" | "bridge" => self.default_network(daemon).await,
            "none" | "host" => Ok(mode.to_owned()),
            m if m.starts_with("container:") => Err(NsError::refused(
                "a build in another container's network namespace (networkmode container:…) is not available in a namespace",
            )
            .by(Layer::Build)),
            m => self.network(daemon, m).await,
        }
    }
}

/// Puts `subnet` as the IPv4 subnet of `IPAM.Config`, keeping IPv6 entries the client chose, with
/// its first address as the gateway: the address dockerd would pick, named as dockerd names it when
/// it picks the subnet itself (clients such as Testcontainers read the gateway from there).
fn set_ipv4_subnet(body: &mut Map<String, Value>, subnet: ipnet::Ipv4Net) {
    let ipam = body.entry("IPAM").or_insert_with(|| json!({}));
    if !ipam.is_object() {
        *ipam = json!({});
    }
    let Value::Object(ipam) = ipam else { return };
    let configs = ipam.entry("Config").or_insert_with(|| json!([]));
    if !configs.is_array() {
        *configs = json!([]);
    }
    let Value::Array(configs) = configs else { return };
    configs.retain(|c| c.get("Subnet").and_then(Value::as_str).is_some_and(|s| s.contains(':')));
    let mut config = json!({ "Subnet": subnet.to_string() });
    if subnet.prefix_len() < 31 {
        if let Some(gateway) = subnet.hosts().next() {
            config["Gateway"] = json!(gateway.to_string());
        }
    }
    configs.insert(0, config);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_subnet_comes_with_its_first_address_as_gateway_and_keeps_ipv6() {
        let mut body = Map::new();
        body.insert("IPAM".into(), json!({"Config": [{"Subnet": "fd00::/64"}, {"Gateway": "10.9.9.9"}]}));
        set_ipv4_subnet(&mut body, "10.200.7.0/24".parse().unwrap());
        assert_eq!(body["IPAM"]["Config"], json!([{"Subnet": "10.200.7.0/24", "Gateway": "10.200.7.1"}, {"Subnet": "fd00::/64"}]));
        // Too small for a gateway of its own: left to the daemon.
        let mut body = Map::new();
        set_ipv4_subnet(&mut body, "10.200.7.0/31".parse().unwrap());
        assert_eq!(body["IPAM"]["Config"], json!([{"Subnet": "10.200.7.0/31"}]));
    }

    #[test]
    fn a_fact_counts_only_in_the_generation_it_was_learnt_in() {
        let k = Known::default();
        assert!(!k.default_network(), "nothing is known at first");
        let seen = k.generation();
        k.saw_default_network(seen);
        assert!(k.default_network());
        k.forget();
        assert!(!k.default_network(), "forgotten");
        // An answer read before a forgetting (a prune raced the inspect) is not kept after it.
        let stale = k.generation();
        k.forget();
        k.saw_default_network(stale);
        assert!(!k.default_network(), "a stale answer is not kept");
        let fresh = k.generation();
        k.saw_default_network(fresh);
        assert!(k.default_network());
    }
}
