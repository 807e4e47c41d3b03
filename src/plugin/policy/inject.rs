//! `inject`: adds or forces parameters on container creation (and exec): environment, labels, extra
//! hosts, DNS, read-only mounts, resource limits, ulimits, user.
//!
//! `defaults` apply when the client did not say otherwise; `force` applies whatever the client said.
//! Forced resource limits are caps: a client may ask for less, never for more or for "unlimited",
//! and a later `docker update` cannot lift them either.

use serde_json::{json, Map, Value};

use super::Policy;
pub use crate::config::{ByteSize, InjectConfig};
use crate::docker::Endpoint;
use crate::plugin::{JsonBody, Refusal, RequestCtx};

pub struct Inject {
    name: String,
    config: InjectConfig,
}

impl Inject {
    pub fn new(name: &str, config: InjectConfig) -> Self {
        Inject { name: name.to_owned(), config }
    }
}

fn object<'a>(parent: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let Value::Object(map) = parent else { unreachable!("callers pass objects") };
    let slot = map.entry(key).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

fn array<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let slot = parent.entry(key).or_insert(Value::Null);
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    match slot {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

/// Env entries are `NAME=value` (or `NAME` alone): sets `name` unless present, or always if `force`.
fn set_env(env: &mut Vec<Value>, name: &str, value: &str, force: bool) {
    let matches = |e: &Value| e.as_str().is_some_and(|s| s.split_once('=').map_or(s, |(n, _)| n) == name);
    if env.iter().any(matches) {
        if !force {
            return;
        }
        env.retain(|e| !matches(e));
    }
    env.push(Value::String(format!("{name}={value}")));
}

fn num(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

impl Inject {
    fn apply_create(&self, body: &mut Value) {
        if !body.is_object() {
            *body = Value::Object(Map::new());
        }
        for (values, force) in [(&self.config.defaults, false), (&self.config.force, true)] {
            {
                let Value::Object(top) = body else { return };
                let env = array(top, "Env");
                for (k, v) in &values.env {
                    set_env(env, k, v, force);
                }
                if let Some(user) = &values.user {
                    if force || top.get("User").and_then(Value::as_str).unwrap_or("").is_empty() {
                        top.insert("User".into(), Value::String(user.clone()));
                    }
                }
            }
            let labels = object(body, "Labels");
            for (k, v) in &values.labels {
                if force || !labels.contains_key(k) {
                    labels.insert(k.clone(), Value::String(v.clone()));
                }
            }
            let hc = object(body, "HostConfig");
            if !values.extra_hosts.is_empty() {
                let hosts = array(hc, "ExtraHosts");
                for entry in &values.extra_hosts {
                    let host = entry.split(':').next().unwrap_or("");
                    if force {
                        // Host names match case-insensitively in /etc/hosts, and the first line wins.
                        hosts.retain(|h| !h.as_str().and_then(|s| s.split(':').next()).is_some_and(|h| h.eq_ignore_ascii_case(host)));
                    }
                    hosts.push(Value::String(entry.clone()));
                }
            }
            if !values.dns.is_empty() && (force || hc.get("Dns").and_then(Value::as_array).is_none_or(Vec::is_empty)) {
                hc.insert("Dns".into(), json!(values.dns));
            }
            if !values.mounts.is_empty() {
                let mounts = array(hc, "Mounts");
                for m in &values.mounts {
                    mounts.retain(|x| x.get("Target").and_then(Value::as_str) != Some(m.target.as_str()));
                    mounts.push(json!({"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": true}));
                }
                // A bind elsewhere on the same target would shadow the injected one.
                if let Some(Value::Array(binds)) = hc.get_mut("Binds") {
                    binds.retain(|b| {
                        let target = b.as_str().and_then(|s| s.split(':').nth(1));
                        !values.mounts.iter().any(|m| Some(m.target.as_str()) == target)
                    });
                }
            }
            if let Some(ByteSize(cap)) = values.memory {
                let cur = num(hc.get("Memory"));
                if (force && (cur <= 0 || cur > cap)) || (!force && cur == 0) {
                    hc.insert("Memory".into(), json!(cap));
                }
                if force {
                    let mem = num(hc.get("Memory"));
                    let swap = num(hc.get("MemorySwap"));
                    if swap < 0 || swap > mem || swap == 0 {
                        hc.insert("MemorySwap".into(), json!(mem));
                    }
                }
            }
            if let Some(cpus) = values.cpus {
                let cap = (cpus * 1e9) as i64;
                let cur = num(hc.get("NanoCpus"));
                if (force && (cur <= 0 || cur > cap)) || (!force && cur == 0) {
                    hc.insert("NanoCpus".into(), json!(cap));
                }
                if force {
                    // The other way of limiting CPU would let the client bypass NanoCpus.
                    hc.remove("CpuQuota");
                    hc.remove("CpuPeriod");
                }
            }
            if let Some(cap) = values.pids_limit {
                let cur = num(hc.get("PidsLimit"));
                if (force && (cur <= 0 || cur > cap)) || (!force && cur == 0) {
                    hc.insert("PidsLimit".into(), json!(cap));
                }
            }
            if !values.ulimits.is_empty() {
                let ulimits = array(hc, "Ulimits");
                for u in &values.ulimits {
                    let same = |x: &Value| x.get("Name").and_then(Value::as_str) == Some(u.name.as_str());
                    if ulimits.iter().any(same) {
                        if !force {
                            continue;
                        }
                        ulimits.retain(|x| !same(x));
                    }
                    ulimits.push(json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard}));
                }
            }
        }
    }

    fn apply_exec(&self, body: &mut Value) {
        let Value::Object(top) = body else { return };
        for (values, force) in [(&self.config.defaults, false), (&self.config.force, true)] {
            let env = array(top, "Env");
            for (k, v) in &values.env {
                set_env(env, k, v, force);
            }
            if let Some(user) = &values.user {
                if force {
                    top.insert("User".into(), Value::String(user.clone()));
                }
            }
        }
    }

    /// `docker update` may lower forced limits, never raise or remove them.
    fn check_update(&self, v: &Value) -> Result<(), Refusal> {
        let f = &self.config.force;
        let refuse = |what: &str, field: &str, key: &'static str| {
            Err(Refusal::forbidden(format!("raising the {what} limit set by the policy ({field})")).allowed_by("raising", key))
        };
        if let Some(ByteSize(cap)) = f.memory {
            let mem = num(v.get("Memory"));
            let swap = num(v.get("MemorySwap"));
            if mem < 0 || mem > cap || swap < 0 || swap > cap {
                return refuse("memory", "Memory, MemorySwap", "force.memory");
            }
        }
        if let Some(cpus) = f.cpus {
            let nano = num(v.get("NanoCpus"));
            if nano < 0 || nano > (cpus * 1e9) as i64 || num(v.get("CpuQuota")) != 0 || num(v.get("CpuPeriod")) != 0 {
                return refuse("CPU", "NanoCpus, CpuQuota, CpuPeriod", "force.cpus");
            }
        }
        if let Some(cap) = f.pids_limit {
            if let Some(p) = v.get("PidsLimit").filter(|p| !p.is_null()) {
                let p = p.as_i64().unwrap_or(-1);
                if p <= 0 || p > cap {
                    return refuse("pids", "PidsLimit", "force.pids_limit");
                }
            }
        }
        Ok(())
    }
}

impl Policy for Inject {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, _req: &mut RequestCtx<'_>) -> Result<(), Refusal> {
        Ok(())
    }

    fn reads_body(&self, endpoint: Endpoint) -> bool {
        matches!(endpoint, Endpoint::ContainerCreate | Endpoint::ContainerExec | Endpoint::ContainerUpdate)
    }

    fn check_body(&self, req: &mut RequestCtx<'_>, body: &mut JsonBody) -> Result<(), Refusal> {
        match req.endpoint() {
            Some(Endpoint::ContainerCreate) => self.apply_create(&mut body.value),
            Some(Endpoint::ContainerExec) => self.apply_exec(&mut body.value),
            Some(Endpoint::ContainerUpdate) => return self.check_update(&body.value),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Inject {
        Inject::new("t", toml::from_str(toml_text).unwrap())
    }

    #[test]
    fn defaults_yield_and_force_wins() {
        let p = policy(
            r#"
            [defaults]
            env = { A = "1", B = "2" }
            user = "1000"
            [force]
            env = { B = "forced" }
            labels = { "ci.job" = "42" }
            memory = "512m"
            pids_limit = 100
            extra_hosts = ["deb.debian.org:10.0.0.1"]
            "#,
        );
        let mut v = json!({"Env": ["A=client", "B=client"], "Labels": {"ci.job": "spoof"}, "HostConfig": {"Memory": 0, "PidsLimit": 1000, "ExtraHosts": ["deb.debian.org:1.2.3.4"]}});
        p.apply_create(&mut v);
        assert_eq!(v["Env"], json!(["A=client", "B=forced"]));
        assert_eq!(v["User"], json!("1000"));
        assert_eq!(v["Labels"]["ci.job"], json!("42"));
        assert_eq!(v["HostConfig"]["Memory"], json!(512 << 20));
        assert_eq!(v["HostConfig"]["MemorySwap"], json!(512 << 20));
        assert_eq!(v["HostConfig"]["PidsLimit"], json!(100));
        assert_eq!(v["HostConfig"]["ExtraHosts"], json!(["deb.debian.org:10.0.0.1"]));
    }

    #[test]
    fn forced_limits_are_caps() {
        let p = policy("[force]\nmemory = 1073741824\ncpus = 2.0\npids_limit = 100\n");
        let mut v = json!({"HostConfig": {"Memory": 1024, "NanoCpus": 500000000, "PidsLimit": 50}});
        p.apply_create(&mut v);
        assert_eq!(v["HostConfig"]["Memory"], json!(1024));
        assert_eq!(v["HostConfig"]["NanoCpus"], json!(500000000));
        assert_eq!(v["HostConfig"]["PidsLimit"], json!(50));
        assert!(p.check_update(&json!({"Memory": 2048})).is_ok());
        assert!(p.check_update(&json!({"Memory": 4294967296i64})).is_err());
        assert!(p.check_update(&json!({"PidsLimit": -1})).is_err());
        assert!(p.check_update(&json!({"CpuQuota": 400000})).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::try_from(toml::Value::String("512m".into())), Ok(ByteSize(512 << 20)));
        assert_eq!(ByteSize::try_from(toml::Value::String("2G".into())), Ok(ByteSize(2 << 30)));
        assert!(ByteSize::try_from(toml::Value::String("lots".into())).is_err());
    }
}
