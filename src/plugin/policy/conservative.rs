//! `conservative`: refuse everything that elevates privilege or reaches the host, and every endpoint
//! not known to be safe (fail closed).
//!
//! The list of what is allowed is kept in one place, [`allowed_endpoint`]; everything else about a
//! request is checked on the Go-canonical body, so spelling tricks (`privileged`, `PRIVILEGED`,
//! duplicate keys, `ſ`) cannot hide an option from it. `docs/security.md` explains each rule.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::Policy;
use crate::docker::json::{canonicalize, Kind, Raw};
use crate::docker::{schema, ApiVersion, Endpoint};
use crate::plugin::{JsonBody, Refusal, RequestCtx};

/// Settings of a `conservative` policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConservativeConfig {
    /// Log what would be refused, refuse nothing, rewrite nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Host paths (and everything below them) that containers may bind-mount.
    #[serde(default)]
    pub allowed_bind_paths: Vec<PathBuf>,
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
}

impl Default for ConservativeConfig {
    fn default() -> Self {
        ConservativeConfig {
            dry_run: false,
            allowed_bind_paths: Vec::new(),
            allowed_capabilities: default_caps(),
            allowed_sysctls: default_sysctls(),
            allowed_runtimes: default_runtimes(),
            allowed_log_drivers: default_log_drivers(),
            min_api_version: default_min_api(),
            allow_namespace_containers: false,
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

/// The Docker socket is never mountable, whatever the allowlist says.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];
/// The absolute floor: below it dockerd applies a HostConfig sent to `POST /containers/{id}/start`.
const API_FLOOR: ApiVersion = ApiVersion { major: 1, minor: 24 };

pub struct Conservative {
    name: String,
    config: ConservativeConfig,
    min_api: ApiVersion,
}

impl Conservative {
    pub fn new(name: &str, config: ConservativeConfig) -> Result<Self, String> {
        let parsed = crate::docker::ApiPath::parse(&format!("/v{}/", config.min_api_version))
            .version
            .ok_or_else(|| format!("min_api_version {:?} is not a version like \"1.40\"", config.min_api_version))?;
        Ok(Conservative { name: name.to_owned(), min_api: parsed.max(API_FLOOR), config })
    }
}

/// Every endpoint the conservative policy lets through (with the checks below). Everything else,
/// including routes ctproxy does not know, is refused.
pub fn allowed_endpoint(e: Endpoint) -> bool {
    use Endpoint::*;
    matches!(
        e,
        Ping | PingHead
            | Version
            | Info
            | Events
            | SystemDf
            | Auth
            | Options
            | ContainerList
            | ContainerCreate
            | ContainerPrune
            | ContainerInspect
            | ContainerTop
            | ContainerLogs
            | ContainerChanges
            | ContainerExport
            | ContainerStats
            | ContainerAttachWs
            | ContainerArchiveGet
            | ContainerArchiveHead
            | ContainerArchivePut
            | ContainerResize
            | ContainerStart
            | ContainerStop
            | ContainerRestart
            | ContainerKill
            | ContainerPause
            | ContainerUnpause
            | ContainerUpdate
            | ContainerRename
            | ContainerAttach
            | ContainerWait
            | ContainerExec
            | ContainerDelete
            | ExecStart
            | ExecResize
            | ExecInspect
            | Commit
            | ImageList
            | ImageSearch
            | ImageGetAll
            | ImageLoad
            | ImageCreate
            | ImagePrune
            | ImageGet
            | ImageHistory
            | ImageInspect
            | ImageAttestations
            | ImagePush
            | ImageTag
            | ImageDelete
            | DistributionInspect
            | Build
            | BuildPrune
            | BuildCancel
            | Session
            | NetworkList
            | NetworkListSlash
            | NetworkCreate
            | NetworkPrune
            | NetworkInspect
            | NetworkConnect
            | NetworkDisconnect
            | NetworkDelete
            | VolumeList
            | VolumeCreate
            | VolumePrune
            | VolumeInspect
            | VolumeDelete
    )
}

type Check = Result<(), Refusal>;

fn deny(what: impl Into<String>) -> Check {
    Err(Refusal::forbidden(what))
}

/// A JSON value that dockerd would read as "set": anything but absent, null, false, 0, "" or {} / [].
fn is_set(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

fn str_of(v: Option<&Value>) -> &str {
    v.and_then(Value::as_str).unwrap_or("")
}

/// The strings of a `[]string` or a `strslice.StrSlice` (which also accepts one string).
fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// Ulimits that reach beyond the container: realtime priority, locked memory, scheduling priority.
/// dockerd names the rlimit `"RLIMIT_" + strings.ToUpper(name)`, with Unicode rules (`ı` is `I`,
/// `ſ` is `S`), so `RTPRIO` and `rtprıo` are `rtprio` too.
fn check_ulimits(ulimits: &[Value], field: &str) -> Check {
    for u in ulimits {
        let name = str_of(u.get("Name"));
        if matches!(name.to_uppercase().as_str(), "RTPRIO" | "RTTIME" | "MEMLOCK" | "NICE" | "MSGQUEUE") {
            return deny(format!("ulimit {name} ({field})"));
        }
    }
    Ok(())
}

/// Lexically cleans an absolute path (`/a/../b` → `/b`), as dockerd does before mounting.
fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl Conservative {
    fn deny_option(&self, what: &str, field: &str) -> Check {
        deny(format!("{what} ({field})"))
    }

    /// A host path may be mounted only inside the allowlist, after `..` and symlinks are resolved,
    /// and never the Docker socket.
    fn check_host_path(&self, source: &str, field: &str, own_socket: Option<&Path>) -> Check {
        let lexical = clean(source);
        let resolved = std::fs::canonicalize(&lexical).unwrap_or_else(|_| lexical.clone());
        // A job's own socket, and the directory that holds only it, are the client's own.
        if let Some(own) = own_socket {
            let own_dir = own.parent().unwrap_or(own);
            let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            let mine = [own.to_path_buf(), own_dir.to_path_buf(), canonical(own), canonical(own_dir)];
            if mine.contains(&lexical) && mine.contains(&resolved) {
                return Ok(());
            }
        }
        for p in [&lexical, &resolved] {
            if DOCKER_SOCKETS.iter().any(|s| p == Path::new(s)) {
                return deny(format!("mounting the Docker socket {} ({field})", p.display()));
            }
            // A directory that holds it (`/run`, when the allowlist names it) exposes it just the same.
            if DOCKER_SOCKETS.iter().any(|s| Path::new(s).starts_with(p)) {
                return deny(format!("mounting {}, which holds the Docker socket ({field})", p.display()));
            }
            if !self.config.allowed_bind_paths.iter().any(|allowed| p.starts_with(allowed)) {
                return deny(format!("bind mount of host path {} ({field})", p.display()));
            }
        }
        Ok(())
    }

    fn check_propagation(&self, mode: &str, field: &str) -> Check {
        if matches!(mode, "shared" | "rshared" | "slave" | "rslave") {
            return deny(format!("mount propagation {mode} ({field})"));
        }
        Ok(())
    }

    fn check_bind(&self, bind: &str, i: usize, own_socket: Option<&Path>) -> Check {
        let field = format!("HostConfig.Binds[{i}]");
        let mut parts = bind.split(':');
        let source = parts.next().unwrap_or("");
        let _target = parts.next();
        if source.starts_with('/') {
            self.check_host_path(source, &field, own_socket)?;
            if let Some(opts) = parts.next() {
                for opt in opts.split(',') {
                    self.check_propagation(opt, &field)?;
                    if matches!(opt, "z" | "Z") {
                        return deny(format!("SELinux relabelling of a host path ({field})"));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_mount(&self, m: &Value, i: usize, own_socket: Option<&Path>) -> Check {
        let field = format!("HostConfig.Mounts[{i}]");
        let source = str_of(m.get("Source"));
        match str_of(m.get("Type")) {
            "bind" => {
                self.check_host_path(source, &field, own_socket)?;
                let propagation = str_of(m.get("BindOptions").and_then(|b| b.get("Propagation")));
                self.check_propagation(propagation, &field)
            }
            "volume" => {
                let driver = m.get("VolumeOptions").and_then(|v| v.get("DriverConfig"));
                let name = str_of(driver.and_then(|d| d.get("Name")));
                if !matches!(name, "" | "local") {
                    return deny(format!("volume driver {name:?} ({field}.VolumeOptions.DriverConfig)"));
                }
                if is_set(driver.and_then(|d| d.get("Options"))) {
                    return deny(format!("volume driver options ({field}.VolumeOptions.DriverConfig.Options)"));
                }
                Ok(())
            }
            "tmpfs" | "image" => Ok(()),
            other => deny(format!("mount type {other:?} ({field}.Type)")),
        }
    }

    fn check_host_config(&self, hc: &Value, own_containers: bool, own_socket: Option<&Path>) -> Check {
        let get = |k: &str| hc.get(k);
        if is_set(get("Privileged")) {
            return self.deny_option("privileged mode", "HostConfig.Privileged");
        }
        for cap in string_list(get("CapAdd")) {
            let norm = cap.trim().to_ascii_uppercase();
            let norm = norm.strip_prefix("CAP_").unwrap_or(&norm);
            if norm == "ALL" || !self.config.allowed_capabilities.iter().any(|a| a.eq_ignore_ascii_case(norm)) {
                return deny(format!("capability {cap} (HostConfig.CapAdd)"));
            }
        }
        for (field, what) in [
            ("Capabilities", "a capability set"),
            ("Devices", "host devices"),
            ("DeviceRequests", "device requests"),
            ("DeviceCgroupRules", "device cgroup rules"),
            ("CgroupParent", "a cgroup parent"),
            ("MaskedPaths", "changing masked paths"),
            ("ReadonlyPaths", "changing read-only paths"),
            ("OomKillDisable", "disabling the OOM killer"),
            ("CpuRealtimePeriod", "realtime scheduling"),
            ("CpuRealtimeRuntime", "realtime scheduling"),
            ("BlkioWeightDevice", "host block devices"),
            ("BlkioDeviceReadBps", "host block devices"),
            ("BlkioDeviceWriteBps", "host block devices"),
            ("BlkioDeviceReadIOps", "host block devices"),
            ("BlkioDeviceWriteIOps", "host block devices"),
            ("Annotations", "OCI annotations"),
        ] {
            // An explicit empty list of masked/read-only paths unmasks everything: any non-null counts.
            let set = if matches!(field, "MaskedPaths" | "ReadonlyPaths") {
                get(field).is_some_and(|v| !v.is_null())
            } else {
                is_set(get(field))
            };
            if set {
                return self.deny_option(what, &format!("HostConfig.{field}"));
            }
        }
        for opt in string_list(get("SecurityOpt")) {
            let o = opt.trim();
            if !matches!(o, "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true") {
                return deny(format!("security option {o:?} (HostConfig.SecurityOpt)"));
            }
        }
        for field in ["NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode"] {
            let mode = str_of(get(field));
            let ns = field.trim_end_matches("Mode").to_lowercase();
            if mode == "host" {
                return deny(format!("the host's {ns} namespace (HostConfig.{field})"));
            }
            // The other container may run in the host's namespace (or be privileged): its
            // settings were never checked by this policy.
            if mode.starts_with("container:") && !own_containers {
                return deny(format!("joining another container's {ns} namespace (HostConfig.{field})"));
            }
        }
        // Inherits the other container's mounts, host binds included, unchecked.
        if is_set(get("VolumesFrom")) && !own_containers {
            return self.deny_option("mounts of another container", "HostConfig.VolumesFrom");
        }
        for (i, bind) in string_list(get("Binds")).iter().enumerate() {
            self.check_bind(bind, i, own_socket)?;
        }
        if let Some(Value::Array(mounts)) = get("Mounts") {
            for (i, m) in mounts.iter().enumerate() {
                self.check_mount(m, i, own_socket)?;
            }
        }
        let driver = str_of(get("VolumeDriver"));
        if !matches!(driver, "" | "local") {
            return deny(format!("volume driver {driver:?} (HostConfig.VolumeDriver)"));
        }
        if let Some(Value::Object(sysctls)) = get("Sysctls") {
            for key in sysctls.keys() {
                let ok = self.config.allowed_sysctls.iter().any(|a| match a.strip_suffix('*') {
                    Some(prefix) => key.starts_with(prefix),
                    None => a == key,
                });
                if !ok {
                    return deny(format!("sysctl {key} (HostConfig.Sysctls)"));
                }
            }
        }
        let runtime = str_of(get("Runtime"));
        if !runtime.is_empty() && !self.config.allowed_runtimes.iter().any(|r| r == runtime) {
            return deny(format!("runtime {runtime:?} (HostConfig.Runtime)"));
        }
        if !matches!(str_of(get("Isolation")), "" | "default") {
            return self.deny_option("an isolation technology", "HostConfig.Isolation");
        }
        if get("OomScoreAdj").and_then(Value::as_i64).is_some_and(|n| n < 0) {
            return self.deny_option("a negative OOM score adjustment", "HostConfig.OomScoreAdj");
        }
        if let Some(Value::Array(ulimits)) = get("Ulimits") {
            check_ulimits(ulimits, "HostConfig.Ulimits")?;
        }
        let log = str_of(get("LogConfig").and_then(|l| l.get("Type")));
        if !log.is_empty() && !self.config.allowed_log_drivers.iter().any(|d| d == log) {
            return deny(format!("log driver {log:?} (HostConfig.LogConfig.Type)"));
        }
        Ok(())
    }

    fn check_endpoint_settings(&self, es: &Value, field: &str) -> Check {
        if is_set(es.get("DriverOpts")) {
            return self.deny_option("endpoint driver options", &format!("{field}.DriverOpts"));
        }
        Ok(())
    }

    fn check_create(&self, body: &JsonBody, namespaced: bool, own_socket: Option<&Path>) -> Check {
        let own_containers = namespaced && self.config.allow_namespace_containers;
        if let Some(path) = body.unknown.iter().find(|p| p.starts_with("HostConfig.") || p.starts_with("NetworkingConfig.")) {
            return deny(format!("the unknown field {path}"));
        }
        if let Some(hc) = body.value.get("HostConfig").filter(|v| v.is_object()) {
            self.check_host_config(hc, own_containers, own_socket)?;
        }
        let endpoints = body.value.get("NetworkingConfig").and_then(|n| n.get("EndpointsConfig"));
        if let Some(Value::Object(eps)) = endpoints {
            for (net, es) in eps {
                if net == "host" {
                    return deny("the host network (NetworkingConfig.EndpointsConfig)");
                }
                self.check_endpoint_settings(es, &format!("NetworkingConfig.EndpointsConfig[{net:?}]"))?;
            }
        }
        Ok(())
    }

    fn check_update(&self, body: &JsonBody) -> Check {
        if let Some(path) = body.unknown.first() {
            return deny(format!("the unknown field {path} in an update"));
        }
        for field in [
            "CgroupParent",
            "Devices",
            "DeviceCgroupRules",
            "DeviceRequests",
            "OomKillDisable",
            "CpuRealtimePeriod",
            "CpuRealtimeRuntime",
            "BlkioWeightDevice",
            "BlkioDeviceReadBps",
            "BlkioDeviceWriteBps",
            "BlkioDeviceReadIOps",
            "BlkioDeviceWriteIOps",
            "Ulimits",
            "KernelMemory",
            "KernelMemoryTCP",
        ] {
            if is_set(body.value.get(field)) {
                return deny(format!("updating {field}"));
            }
        }
        Ok(())
    }

    fn check_network_create(&self, body: &JsonBody) -> Check {
        let v = &body.value;
        let driver = str_of(v.get("Driver"));
        if !matches!(driver, "" | "bridge") {
            return deny(format!("network driver {driver:?} (Driver)"));
        }
        if let Some(Value::Object(opts)) = v.get("Options") {
            const SAFE: [&str; 4] = [
                "com.docker.network.driver.mtu",
                "com.docker.network.bridge.enable_icc",
                "com.docker.network.bridge.enable_ip_masquerade",
                "com.docker.network.bridge.host_binding_ipv4",
            ];
            if let Some(k) = opts.keys().find(|k| !SAFE.contains(&k.as_str())) {
                return deny(format!("network option {k} (Options)"));
            }
        }
        let ipam_driver = str_of(v.get("IPAM").and_then(|i| i.get("Driver")));
        if !matches!(ipam_driver, "" | "default") {
            return deny(format!("IPAM driver {ipam_driver:?} (IPAM.Driver)"));
        }
        // `Attachable` only matters to swarm overlays; docker-compose sets it on every network.
        for (field, what) in
            [("Ingress", "an ingress network"), ("ConfigOnly", "a config-only network"), ("ConfigFrom", "a network from a config")]
        {
            if is_set(v.get(field)) {
                return self.deny_option(what, field);
            }
        }
        if matches!(str_of(v.get("Scope")), "swarm" | "global") {
            return self.deny_option("a swarm-scoped network", "Scope");
        }
        Ok(())
    }

    fn check_volume_create(&self, body: &JsonBody) -> Check {
        let v = &body.value;
        let driver = str_of(v.get("Driver"));
        if !matches!(driver, "" | "local") {
            return deny(format!("volume driver {driver:?} (Driver)"));
        }
        if is_set(v.get("DriverOpts")) {
            return self.deny_option("volume driver options such as o=bind or device=", "DriverOpts");
        }
        if is_set(v.get("ClusterVolumeSpec")) {
            return self.deny_option("a cluster volume", "ClusterVolumeSpec");
        }
        Ok(())
    }

    fn check_build(&self, req: &RequestCtx<'_>) -> Check {
        let q = &*req.query;
        let network = q.get("networkmode").unwrap_or("");
        if network == "host" || network.starts_with("container:") {
            return deny(format!("build network mode {network:?} (networkmode)"));
        }
        for (param, what) in [("cgroupparent", "a build cgroup parent"), ("outputs", "build outputs"), ("squash", "squashing")] {
            if q.get(param).is_some_and(|v| !v.is_empty() && v != "[]" && (param != "squash" || crate::docker::query::go_bool(v))) {
                return self.deny_option(what, param);
            }
        }
        if !matches!(q.get("isolation").unwrap_or(""), "" | "default") {
            return self.deny_option("a build isolation technology", "isolation");
        }
        if !matches!(q.get("remote").unwrap_or(""), "" | "client-session") {
            return self.deny_option("a build context fetched by the daemon", "remote");
        }
        if q.get_all("securityopt").next().is_some() {
            return self.deny_option("build security options", "securityopt");
        }
        // The legacy builder gives every `RUN` container these ulimits; decoded as dockerd does.
        if let Some(json) = q.get("ulimits").filter(|v| !v.is_empty()) {
            const KIND: Kind = Kind::Slice(&Kind::PtrStruct(&schema::ULIMIT));
            match Raw::parse(json.as_bytes()).and_then(|raw| canonicalize(raw, &KIND)) {
                Ok(c) => check_ulimits(c.value.as_array().map_or(&[], Vec::as_slice), "ulimits")?,
                Err(_) => return self.deny_option("build ulimits that are not a JSON list of ulimits", "ulimits"),
            }
        }
        Ok(())
    }
}

impl Policy for Conservative {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self, req: &mut RequestCtx<'_>) -> Check {
        let Some(endpoint) = req.endpoint() else {
            return deny(format!("the unknown endpoint {} {}", req.method, req.route.path));
        };
        if !allowed_endpoint(endpoint) {
            return deny(format!("the endpoint {} {} ({})", req.method, req.route.path, endpoint.name()));
        }
        if let Some(v) = req.route.version {
            if v < self.min_api {
                return deny(format!("API version {v} (the minimum is {})", self.min_api));
            }
        }
        match endpoint {
            Endpoint::Build => self.check_build(req),
            Endpoint::ContainerStart if req.query.get("checkpoint").is_some() || req.query.get("checkpoint-dir").is_some() => {
                self.deny_option("starting from a checkpoint", "checkpoint")
            }
            Endpoint::ImageCreate if !matches!(req.query.get("fromSrc").unwrap_or(""), "" | "-") => {
                self.deny_option("importing from a URL fetched by the daemon", "fromSrc")
            }
            Endpoint::NetworkConnect if req.route.target() == Some("host") => deny("connecting to the host network"),
            _ => Ok(()),
        }
    }

    fn reads_body(&self, endpoint: Endpoint) -> bool {
        matches!(
            endpoint,
            Endpoint::ContainerCreate
                | Endpoint::ContainerUpdate
                | Endpoint::ContainerExec
                | Endpoint::NetworkCreate
                | Endpoint::NetworkConnect
                | Endpoint::VolumeCreate
        )
    }

    fn check_body(&self, req: &mut RequestCtx<'_>, body: &mut JsonBody) -> Check {
        match req.endpoint() {
            Some(Endpoint::ContainerCreate) => self.check_create(body, req.namespaced, req.own_socket),
            Some(Endpoint::ContainerUpdate) => self.check_update(body),
            Some(Endpoint::ContainerExec) if is_set(body.value.get("Privileged")) => self.deny_option("a privileged exec", "Privileged"),
            Some(Endpoint::NetworkCreate) => self.check_network_create(body),
            Some(Endpoint::NetworkConnect) => match body.value.get("EndpointConfig") {
                Some(es) if es.is_object() => self.check_endpoint_settings(es, "EndpointConfig"),
                _ => Ok(()),
            },
            Some(Endpoint::VolumeCreate) => self.check_volume_create(body),
            _ => Ok(()),
        }
    }
}
