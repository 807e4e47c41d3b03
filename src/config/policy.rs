//! The settings of the policies (`[policy.NAME]` with `kind = "conservative"` or `"inject"`): plain
//! data; `plugin::policy` reads them (and `build` checks what only the policy can judge).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Settings of a `conservative` policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConservativeConfig {
    /// Log what would be refused, refuse nothing, rewrite nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Host paths that containers may bind-mount, each exactly (never a path below one: the daemon
    /// resolves a bind source when the container starts, so a container that can write inside an
    /// allowed directory could plant a symbolic link that a later bind of a sub-path follows). None
    /// may contain another, and none may have a symbolic link in it.
    #[serde(default)]
    pub allowed_bind_paths: Vec<PathBuf>,
    /// On a listener without a namespace, the address ranges (CIDR, IPv4 or IPv6) that an explicit
    /// IPAM configuration of a network (subnet, range, gateway, auxiliary addresses) may use. Empty:
    /// networks get their addresses from the daemon's default pools only. (On a namespaced listener,
    /// the namespace's own network pool decides.)
    #[serde(default)]
    pub allowed_subnets: Vec<String>,
    /// Capabilities that `CapAdd` may name (without `CAP_`). Default: Docker's default set, which
    /// adding changes nothing.
    #[serde(default = "default_caps")]
    pub allowed_capabilities: Vec<String>,
    /// Sysctls containers may set; `prefix.*` allows a whole namespaced tree.
    #[serde(default = "default_sysctls")]
    pub allowed_sysctls: Vec<String>,
    #[serde(default = "default_runtimes")]
    pub allowed_runtimes: Vec<String>,
    #[serde(default = "default_log_drivers")]
    pub allowed_log_drivers: Vec<String>,
    /// Requests with an older `/vX.Y` prefix are refused (never below 1.24: older versions apply a
    /// HostConfig sent to `start`).
    #[serde(default = "default_min_api")]
    pub min_api_version: String,
    /// On a namespaced listener, allow `--volumes-from` and `container:` network/pid/ipc modes: the
    /// namespace resolves them to its own containers only, which were created through this policy.
    /// Leave it off if a namespace is also served by a listener without this policy.
    #[serde(default)]
    pub allow_namespace_containers: bool,
    /// Images that may be pulled and run (container creates, image mounts), as doublestar globs with
    /// gitlab-runner's `allowed_images` syntax; any spelling of a reference may match. Empty: any.
    /// Image IDs match no pattern. See `plugin/policy/images.rs`.
    #[serde(default)]
    pub allowed_images: Vec<String>,
}

impl Default for ConservativeConfig {
    fn default() -> Self {
        ConservativeConfig {
            dry_run: false,
            allowed_bind_paths: Vec::new(),
            allowed_subnets: Vec::new(),
            allowed_capabilities: default_caps(),
            allowed_sysctls: default_sysctls(),
            allowed_runtimes: default_runtimes(),
            allowed_log_drivers: default_log_drivers(),
            min_api_version: default_min_api(),
            allow_namespace_containers: false,
            allowed_images: Vec::new(),
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}
fn default_caps() -> Vec<String> {
    strings(&[
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ])
}
fn default_sysctls() -> Vec<String> {
    strings(&[
        "kernel.shmmax",
        "kernel.shmall",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "fs.mqueue.*",
        "net.*",
    ])
}
fn default_runtimes() -> Vec<String> {
    strings(&["runc"])
}
fn default_log_drivers() -> Vec<String> {
    strings(&["json-file", "local", "none"])
}
fn default_min_api() -> String {
    "1.24".into()
}

/// A set of values to inject.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectValues {
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `host:ip` entries added to /etc/hosts.
    #[serde(default)]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// Host paths mounted read-only (the policy's own choice, not the client's).
    #[serde(default)]
    pub mounts: Vec<InjectMount>,
    /// Memory limit: bytes, or a size such as `"512m"`, `"2g"`.
    pub memory: Option<ByteSize>,
    /// CPU limit in CPUs (`1.5`).
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub ulimits: Vec<InjectUlimit>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectMount {
    pub source: String,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectUlimit {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// A byte count written as a number or with a binary suffix (`k`, `m`, `g`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct ByteSize(pub i64);

impl TryFrom<toml::Value> for ByteSize {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        let size = super::Size::try_from(v)?;
        i64::try_from(size.0).map(ByteSize).map_err(|_| format!("size {} is too large", size.0))
    }
}

/// Settings of an `inject` policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Log what would be refused, refuse nothing, rewrite nothing.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub defaults: InjectValues,
    #[serde(default)]
    pub force: InjectValues,
}
