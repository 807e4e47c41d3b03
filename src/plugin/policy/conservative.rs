//! `conservative`: refuse everything that elevates privilege or reaches the host, and every endpoint
//! not known to be safe (fail closed).
//!
//! The list of what is allowed is kept in one place, [`allowed_endpoint`]; everything else about a
//! request is checked on the Go-canonical body, so spelling tricks (`privileged`, `PRIVILEGED`,
//! duplicate keys, `ſ`) cannot hide an option from it. `docs/security.md` explains each rule.
//!
//! Fail closed, at every API version: a query parameter the endpoint's handler does not read
//! ([`crate::docker::params`]), a body field that no schema of [`crate::docker::schema`] describes
//! (anywhere in the body), and a value of an enum-like field that is not on this policy's allowlist
//! (mount types, propagation and consistency modes, namespace modes, restart policies, ulimits...)
//! are refused: a newer daemon may give them a meaning this version of ctproxy cannot judge.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::Policy;
pub use crate::config::ConservativeConfig;
use crate::docker::cidr::{self, Cidr};
use crate::docker::json::{canonicalize, Kind, Raw};
use crate::docker::{params, schema, ApiVersion, BodyKind, Endpoint};
use crate::plugin::{GrantedBind, JsonBody, Refusal, RequestCtx};

/// What the listener's owner lets its containers bind besides `allowed_bind_paths`: a CI job's
/// own socket and the paths ctproxy granted the job ([`RequestCtx::granted_binds`]).
#[derive(Clone, Copy, Default)]
struct Own<'a> {
    socket: Option<&'a Path>,
    grants: &'a [GrantedBind],
}

/// The Docker socket is never mountable, whatever the allowlist says.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];
/// The absolute floor: below it dockerd applies a HostConfig sent to `POST /containers/{id}/start`.
const API_FLOOR: ApiVersion = ApiVersion { major: 1, minor: 24 };

pub struct Conservative {
    name: String,
    config: ConservativeConfig,
    min_api: ApiVersion,
    /// `allowed_bind_paths`, lexically cleaned.
    bind_paths: Vec<PathBuf>,
    /// `allowed_subnets`, parsed.
    subnets: Vec<Cidr>,
}

/// A setting of a `conservative` section that cannot work, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConservativeConfigError {
    pub key: &'static str,
    pub message: String,
}

impl Conservative {
    pub fn new(name: &str, config: ConservativeConfig) -> Result<Self, ConservativeConfigError> {
        let invalid = |key, message: String| ConservativeConfigError { key, message };
        let parsed = crate::docker::ApiPath::parse(&format!("/v{}/", config.min_api_version))
            .version
            .ok_or_else(|| invalid("min_api_version", format!("{:?} is not a version like \"1.40\"", config.min_api_version)))?;
        let mut bind_paths: Vec<PathBuf> = Vec::new();
        for p in &config.allowed_bind_paths {
            let text = p.to_string_lossy();
            if !text.starts_with('/') {
                return Err(invalid("allowed_bind_paths", format!("{text:?} is not an absolute path")));
            }
            let cleaned = clean(&text);
            if let Some(other) = bind_paths.iter().find(|o| o.starts_with(&cleaned) || cleaned.starts_with(o)) {
                return Err(invalid(
                    "allowed_bind_paths",
                    format!(
                        "{} and {} overlap: a container that can write in the outer one could plant a symbolic link \
                         that a bind of the inner one follows; list paths that do not contain each other",
                        other.display(),
                        cleaned.display()
                    ),
                ));
            }
            let resolved = resolve(&cleaned);
            if resolved != cleaned {
                return Err(invalid(
                    "allowed_bind_paths",
                    format!("{} has a symbolic link in it (it is {}); list the path without links", cleaned.display(), resolved.display()),
                ));
            }
            bind_paths.push(cleaned);
        }
        for p in &config.allowed_images {
            crate::docker::image_glob::validate(p).map_err(|e| invalid("allowed_images", e.to_string()))?;
        }
        let mut subnets = Vec::new();
        for s in &config.allowed_subnets {
            subnets.push(Cidr::parse(s).map_err(|e| invalid("allowed_subnets", e.to_string()))?);
        }
        Ok(Conservative { name: name.to_owned(), min_api: parsed.max(API_FLOOR), config, bind_paths, subnets })
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

/// The ulimits a container may set: those that bound the container's own processes. Not `rtprio`,
/// `rttime`, `nice` (realtime and scheduling priority), `memlock` (locked memory) or `msgqueue`
/// (POSIX message queue bytes): those reach beyond the container (host-wide denial of service).
/// dockerd names the rlimit `"RLIMIT_" + strings.ToUpper(name)`, with Unicode rules (`ſ` is `S`),
/// so names are compared upper-cased the same way.
const ALLOWED_ULIMITS: [&str; 11] = ["AS", "CORE", "CPU", "DATA", "FSIZE", "LOCKS", "NOFILE", "NPROC", "RSS", "SIGPENDING", "STACK"];

fn check_ulimits(ulimits: &[Value], field: &str) -> Check {
    for u in ulimits {
        let name = str_of(u.get("Name"));
        if !ALLOWED_ULIMITS.contains(&name.to_uppercase().as_str()) {
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

/// The path with every symbolic link of its existing part resolved: the longest existing ancestor,
/// canonicalized, then the rest as written. Equal to the (clean) input exactly when no component
/// that exists is a link.
fn resolve(clean: &Path) -> PathBuf {
    let mut existing = clean;
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(existing) {
            let mut out = canonical;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return clean.to_path_buf(),
        }
    }
}

/// `net.IP.IsLinkLocalUnicast`: 169.254.0.0/16 and fe80::/10.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[..2] == [169, 254],
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Bind options (`Binds` mode, after the second `:`) as dockerd's Linux parser knows them, that are
/// safe: read-only/read-write, no copy of the image's content into a new volume, private propagation,
/// and the macOS consistency hints (ignored on Linux).
const SAFE_BIND_OPTIONS: [&str; 8] = ["ro", "rw", "nocopy", "private", "rprivate", "consistent", "cached", "delegated"];
/// Propagation modes that let mounts cross between the container and the host.
const SHARED_PROPAGATION: [&str; 4] = ["shared", "rshared", "slave", "rslave"];

/// The namespaces a `HostConfig` mode field selects, with the modes dockerd accepts besides `host`
/// and `container:<name>` (`IpcMode.Valid`, `PidMode.Valid`, ...), and whether it accepts
/// `container:<name>` at all. `NetworkMode` is handled apart: it also names user-defined networks.
const MODES: [(&str, &str, &[&str], bool); 6] = [
    ("PidMode", "pid", &[""], true),
    ("IpcMode", "ipc", &["", "none", "private", "shareable"], true),
    ("UTSMode", "uts", &[""], false),
    ("UsernsMode", "userns", &[""], false),
    ("CgroupnsMode", "cgroupns", &["", "private"], false),
    ("Cgroup", "cgroup", &[""], true),
];

impl Conservative {
    fn deny_option(&self, what: &str, field: &str) -> Check {
        deny(format!("{what} ({field})"))
    }

    /// A host path may be bound only if it is exactly one of `allowed_bind_paths`, contains no
    /// symbolic link, and is neither the Docker socket nor holds it. On a job's listener, the job's
    /// own socket may be bound as the file itself, and its directory read-only only (see
    /// [`RequestCtx::own_socket`]).
    fn check_host_path(&self, source: &str, field: &str, read_only: bool, own: Own<'_>) -> Check {
        let lexical = clean(source);
        let resolved = resolve(&lexical);
        if let Some(own) = own.socket {
            let own_dir = own.parent().unwrap_or(own);
            // The job's paths as configured, and with the links of the jobs directory resolved.
            let is = |p: &Path, target: &Path| p == target || resolve(target) == p;
            if is(&lexical, own) {
                return Ok(());
            }
            // The directory survives a ctproxy restart (a new socket file appears in it); a
            // read-write one would let the container put a symbolic link to `/` in place of the
            // socket, which the next bind of "the Docker socket" (redirected to this path) follows.
            if is(&lexical, own_dir) {
                if read_only {
                    return Ok(());
                }
                return deny(format!(
                    "a read-write bind of the job's Docker socket directory {} ({field}); bind it read-only",
                    own_dir.display()
                ));
            }
            let inside = |p: &Path| p.starts_with(own_dir) || p.starts_with(resolve(own_dir));
            let holds = |p: &Path| own_dir.starts_with(p) || resolve(own_dir).starts_with(p);
            if inside(&lexical) || inside(&resolved) {
                return deny(format!("bind mount of {}, inside the job's Docker socket directory ({field})", lexical.display()));
            }
            if holds(&lexical) || holds(&resolved) {
                return deny(format!("mounting {}, which holds the job's Docker socket ({field})", lexical.display()));
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
        }
        // What ctproxy itself granted this listener (a CI job's project cache, the runner binary):
        // exactly that path, unlinked, and read-only where the grant says so.
        if resolved == lexical {
            if let Some(g) = own.grants.iter().find(|g| g.path == lexical) {
                if g.read_only && !read_only {
                    return deny(format!("a read-write bind of {}, which this job may bind read-only only ({field})", lexical.display()));
                }
                return Ok(());
            }
        }
        // The daemon resolves the source again when the container starts: a link that pointed at an
        // allowed path at create time may point elsewhere then.
        if resolved != lexical {
            return deny(format!(
                "bind mount of host path {} ({field}: {} passes through a symbolic link)",
                resolved.display(),
                lexical.display()
            ));
        }
        if !self.bind_paths.contains(&lexical) {
            return Err(Refusal::forbidden(format!("bind mount of host path {} ({field})", lexical.display()))
                .allowed_by("listing the path exactly (not a parent directory) in", "allowed_bind_paths"));
        }
        Ok(())
    }

    fn check_propagation(&self, mode: &str, field: &str) -> Check {
        match mode {
            "" | "private" | "rprivate" => Ok(()),
            m if SHARED_PROPAGATION.contains(&m) => deny(format!("mount propagation {m} ({field})")),
            m => Err(Refusal::forbidden(format!("the mount propagation {m:?} ({field})")).unknown()),
        }
    }

    /// `source:target[:mode]`, split as dockerd's Linux parser splits it (at most four parts, four
    /// is an error).
    fn check_bind(&self, bind: &str, i: usize, own: Own<'_>) -> Check {
        let field = format!("HostConfig.Binds[{i}]");
        let parts: Vec<&str> = bind.splitn(4, ':').collect();
        let (source, mode) = match parts.as_slice() {
            // A path in the container only: an anonymous volume.
            [_] => return Ok(()),
            [source, _] => (*source, ""),
            [source, _, mode] => (*source, *mode),
            _ => return deny(format!("the bind {bind:?}, which has more than three parts, ({field})")),
        };
        let opts: Vec<&str> = if mode.is_empty() { Vec::new() } else { mode.split(',').collect() };
        for opt in &opts {
            match *opt {
                o if SAFE_BIND_OPTIONS.contains(&o) => {}
                "z" | "Z" => return deny(format!("SELinux relabelling of a host path ({field})")),
                o if SHARED_PROPAGATION.contains(&o) => return deny(format!("mount propagation {o} ({field})")),
                o => return Err(Refusal::forbidden(format!("the bind option {o:?} ({field})")).unknown()),
            }
        }
        if source.starts_with('/') {
            self.check_host_path(source, &field, opts.contains(&"ro"), own)?;
        }
        Ok(())
    }

    fn check_mount(&self, m: &Value, i: usize, own: Own<'_>) -> Check {
        let field = format!("HostConfig.Mounts[{i}]");
        let source = str_of(m.get("Source"));
        match str_of(m.get("Consistency")) {
            "" | "default" | "consistent" | "cached" | "delegated" => {}
            c => return Err(Refusal::forbidden(format!("the mount consistency {c:?} ({field}.Consistency)")).unknown()),
        }
        let kind = str_of(m.get("Type"));
        // Options of another type are refused by dockerd since API 1.42 and dropped before: never
        // needed, refused here so that nothing unchecked rides along.
        for (options, of) in [
            ("BindOptions", "bind"),
            ("VolumeOptions", "volume"),
            ("ImageOptions", "image"),
            ("TmpfsOptions", "tmpfs"),
            ("ClusterOptions", "cluster"),
        ] {
            if kind != of && m.get(options).is_some_and(|v| !v.is_null()) {
                return deny(format!("{options} on a mount of type {kind:?} ({field}.{options})"));
            }
        }
        match kind {
            "bind" => {
                let bind_options = m.get("BindOptions");
                let propagation = str_of(bind_options.and_then(|b| b.get("Propagation")));
                self.check_propagation(propagation, &format!("{field}.BindOptions.Propagation"))?;
                // NonRecursive, ReadOnlyNonRecursive and ReadOnlyForceRecursive only change which
                // submounts come along and how read-only they are. CreateMountpoint creates the source
                // if it is missing: the source is exactly an allowed path (or the job's socket or its
                // directory, which exist), so it can create nothing else.
                let read_only = m.get("ReadOnly") == Some(&Value::Bool(true));
                self.check_host_path(source, &field, read_only, own)
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
                // VolumeOptions.Subpath: dockerd (26+, which alone reads it) opens the sub-path with
                // `safepath.Join` (no link may leave the volume, and the opened directory itself is
                // mounted, so it cannot be swapped between the check and the mount).
                Ok(())
            }
            "tmpfs" => {
                // TmpfsOptions.Options: `[name]` or `[name, value]`; dockerd accepts exec/noexec.
                if let Some(Value::Array(opts)) = m.get("TmpfsOptions").and_then(|t| t.get("Options")) {
                    for o in opts {
                        let name = str_of(o.get(0));
                        if !matches!(name, "exec" | "noexec") {
                            return Err(Refusal::forbidden(format!("the tmpfs option {name:?} ({field}.TmpfsOptions.Options)")).unknown());
                        }
                    }
                }
                Ok(())
            }
            // An image's content, read-only; ImageOptions.Subpath is opened with `safepath.Join`.
            "image" => Ok(()),
            other => deny(format!("mount type {other:?} ({field}.Type)")),
        }
    }

    /// `NetworkMode`: the default network, `bridge`, `none`, a user-defined network's name or ID, or
    /// (for the namespace's own containers) `container:<name>`. Not `host`, and nothing else with a
    /// `:` (a mode syntax this version of ctproxy does not know).
    fn check_network_mode(&self, mode: &str, own_containers: bool) -> Check {
        const FIELD: &str = "HostConfig.NetworkMode";
        if mode == "host" {
            return deny(format!("the host's network namespace ({FIELD})"));
        }
        if let Some(other) = mode.strip_prefix("container:") {
            if !own_containers || other.is_empty() {
                return Err(Refusal::forbidden(format!("joining another container's network namespace ({FIELD})"))
                    .allowed_by("setting, on a namespaced listener,", "allow_namespace_containers = true"));
            }
            return Ok(());
        }
        if mode.contains(':') {
            return Err(Refusal::forbidden(format!("the network mode {mode:?} ({FIELD})")).unknown());
        }
        Ok(())
    }

    /// The other namespace modes, each against the values dockerd accepts for it.
    fn check_modes(&self, hc: &Value, own_containers: bool) -> Check {
        for (field, ns, plain, joins) in MODES {
            let mode = str_of(hc.get(field));
            if mode == "host" {
                return deny(format!("the host's {ns} namespace (HostConfig.{field})"));
            }
            if let Some(other) = mode.strip_prefix("container:") {
                if joins {
                    // The other container may run in the host's namespace (or be privileged): its
                    // settings were never checked by this policy.
                    if !own_containers || other.is_empty() {
                        return Err(Refusal::forbidden(format!("joining another container's {ns} namespace (HostConfig.{field})"))
                            .allowed_by("setting, on a namespaced listener,", "allow_namespace_containers = true"));
                    }
                    continue;
                }
            }
            if !plain.contains(&mode) {
                return Err(Refusal::forbidden(format!("the {ns} mode {mode:?} (HostConfig.{field})")).unknown());
            }
        }
        Ok(())
    }

    fn check_host_config(&self, hc: &Value, own_containers: bool, own: Own<'_>) -> Check {
        let get = |k: &str| hc.get(k);
        if is_set(get("Privileged")) {
            return self.deny_option("privileged mode", "HostConfig.Privileged");
        }
        for cap in string_list(get("CapAdd")) {
            let norm = cap.trim().to_ascii_uppercase();
            let norm = norm.strip_prefix("CAP_").unwrap_or(&norm);
            if norm == "ALL" {
                return deny(format!("capability {cap} (HostConfig.CapAdd)"));
            }
            if !self.config.allowed_capabilities.iter().any(|a| a.eq_ignore_ascii_case(norm)) {
                return Err(
                    Refusal::forbidden(format!("capability {cap} (HostConfig.CapAdd)")).allowed_by("listing it in", "allowed_capabilities")
                );
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
        self.check_network_mode(str_of(get("NetworkMode")), own_containers)?;
        self.check_modes(hc, own_containers)?;
        // Inherits the other container's mounts, host binds included, unchecked.
        if is_set(get("VolumesFrom")) && !own_containers {
            return Err(Refusal::forbidden("mounts of another container (HostConfig.VolumesFrom)")
                .allowed_by("setting, on a namespaced listener,", "allow_namespace_containers = true"));
        }
        for (i, bind) in string_list(get("Binds")).iter().enumerate() {
            self.check_bind(bind, i, own)?;
        }
        if let Some(Value::Array(mounts)) = get("Mounts") {
            for (i, m) in mounts.iter().enumerate() {
                self.check_mount(m, i, own)?;
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
                    return Err(
                        Refusal::forbidden(format!("sysctl {key} (HostConfig.Sysctls)")).allowed_by("listing it in", "allowed_sysctls")
                    );
                }
            }
        }
        let runtime = str_of(get("Runtime"));
        if !runtime.is_empty() && !self.config.allowed_runtimes.iter().any(|r| r == runtime) {
            return Err(
                Refusal::forbidden(format!("runtime {runtime:?} (HostConfig.Runtime)")).allowed_by("listing it in", "allowed_runtimes")
            );
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
            return Err(Refusal::forbidden(format!("log driver {log:?} (HostConfig.LogConfig.Type)"))
                .allowed_by("listing it in", "allowed_log_drivers"));
        }
        check_restart_policy(get("RestartPolicy"), "HostConfig.RestartPolicy")?;
        // Per-container storage-driver options: `size` is the only one a driver documents for
        // containers; drivers interpret others as they like.
        if let Some(Value::Object(opts)) = get("StorageOpt") {
            if let Some(k) = opts.keys().find(|k| k.as_str() != "size") {
                return deny(format!("the storage option {k:?} (HostConfig.StorageOpt)"));
            }
        }
        Ok(())
    }

    /// One endpoint's settings (create's `NetworkingConfig.EndpointsConfig`, connect's
    /// `EndpointConfig`).
    ///
    /// `IPAMConfig.IPv4Address`/`IPv6Address` need no check of their own: dockerd assigns a static
    /// address only on a network whose subnet was configured explicitly, and only from that subnet
    /// (20.10: "user specified IP address is supported only when connecting to networks with user
    /// configured subnets", then the IPAM pool refuses an address outside it; 29: "no configured
    /// subnet contains IP address"). Those subnets are the ones this policy (or the namespace, or
    /// the administrator) allowed when the network was created. `LinkLocalIPs` are added to the
    /// container's interface as they are: they must be link-local (dockerd checks it too).
    fn check_endpoint_settings(&self, es: &Value, field: &str) -> Check {
        if is_set(es.get("DriverOpts")) {
            return self.deny_option("endpoint driver options", &format!("{field}.DriverOpts"));
        }
        if let Some(Value::Array(ips)) = es.get("IPAMConfig").and_then(|c| c.get("LinkLocalIPs")) {
            for (i, ip) in ips.iter().enumerate() {
                let text = ip.as_str().unwrap_or("");
                let f = format!("{field}.IPAMConfig.LinkLocalIPs[{i}]");
                let addr = cidr::parse_ip(text).map_err(|e| Refusal::bad_request(format!("{e} ({f})")))?;
                if !is_link_local(addr) {
                    return deny(format!("the address {text}, which is not link-local, ({f})"));
                }
            }
        }
        Ok(())
    }

    fn check_create(&self, body: &JsonBody, namespaced: bool, own: Own<'_>) -> Check {
        super::images::check_create(&self.config.allowed_images, &body.value)?;
        let own_containers = namespaced && self.config.allow_namespace_containers;
        if let Some(hc) = body.value.get("HostConfig").filter(|v| v.is_object()) {
            self.check_host_config(hc, own_containers, own)?;
        }
        let endpoints = body.value.get("NetworkingConfig").and_then(|n| n.get("EndpointsConfig"));
        if let Some(Value::Object(eps)) = endpoints {
            for (net, es) in eps {
                if net == "host" {
                    return deny("the host network (NetworkingConfig.EndpointsConfig)");
                }
                if es.is_object() {
                    self.check_endpoint_settings(es, &format!("NetworkingConfig.EndpointsConfig[{net:?}]"))?;
                }
            }
        }
        Ok(())
    }

    fn check_update(&self, body: &JsonBody) -> Check {
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
        check_restart_policy(body.value.get("RestartPolicy"), "RestartPolicy")
    }

    fn check_network_create(&self, body: &JsonBody, namespaced: bool) -> Check {
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
        let ipam = v.get("IPAM");
        let ipam_driver = str_of(ipam.and_then(|i| i.get("Driver")));
        if !matches!(ipam_driver, "" | "default") {
            return deny(format!("IPAM driver {ipam_driver:?} (IPAM.Driver)"));
        }
        if is_set(ipam.and_then(|i| i.get("Options"))) {
            return self.deny_option("IPAM driver options", "IPAM.Options");
        }
        // `Attachable` only matters to swarm overlays; docker-compose sets it on every network.
        for (field, what) in
            [("Ingress", "an ingress network"), ("ConfigOnly", "a config-only network"), ("ConfigFrom", "a network from a config")]
        {
            if is_set(v.get(field)) {
                return self.deny_option(what, field);
            }
        }
        match str_of(v.get("Scope")) {
            "" | "local" => {}
            "swarm" | "global" => return self.deny_option("a swarm-scoped network", "Scope"),
            other => return Err(Refusal::forbidden(format!("the network scope {other:?} (Scope)")).unknown()),
        }
        // On a namespaced listener, the namespace stage holds explicit subnets to its own pool.
        if !namespaced {
            if let Some(Value::Array(pools)) = ipam.and_then(|i| i.get("Config")) {
                for (i, pool) in pools.iter().enumerate() {
                    self.check_ipam_pool(pool, &format!("IPAM.Config[{i}]"))?;
                }
            }
        }
        Ok(())
    }

    /// Every address an IPAM pool names explicitly must lie in one of `allowed_subnets`: a network
    /// with the host's, the company's or another tenant's addresses would route or answer for them.
    fn check_ipam_pool(&self, pool: &Value, field: &str) -> Check {
        let malformed = |e: cidr::CidrError, f: &str| Refusal::bad_request(format!("{e} ({f})"));
        for key in ["Subnet", "IPRange"] {
            let text = str_of(pool.get(key));
            if !text.is_empty() {
                let f = format!("{field}.{key}");
                let net = Cidr::parse(text).map_err(|e| malformed(e, &f))?;
                self.check_range(net, text, &f)?;
            }
        }
        let gateway = str_of(pool.get("Gateway"));
        if !gateway.is_empty() {
            let f = format!("{field}.Gateway");
            let ip = cidr::parse_ip(gateway).map_err(|e| malformed(e, &f))?;
            self.check_range(Cidr::host(ip), gateway, &f)?;
        }
        if let Some(Value::Object(aux)) = pool.get("AuxiliaryAddresses") {
            for (name, addr) in aux {
                let text = addr.as_str().unwrap_or("");
                let f = format!("{field}.AuxiliaryAddresses[{name:?}]");
                let ip = cidr::parse_ip(text).map_err(|e| malformed(e, &f))?;
                self.check_range(Cidr::host(ip), text, &f)?;
            }
        }
        Ok(())
    }

    fn check_range(&self, net: Cidr, text: &str, field: &str) -> Check {
        // Software may treat `::ffff:a.b.c.d` as the IPv4 address it maps.
        if !net.is_ipv4() && net.touches_ipv4_mapped() {
            return deny(format!("the IPv4-mapped IPv6 addresses {text} ({field})"));
        }
        if self.subnets.iter().any(|allowed| allowed.contains(&net)) {
            return Ok(());
        }
        Err(Refusal::forbidden(format!("the addresses {text} ({field})"))
            .allowed_by("listing a range that contains them in", "allowed_subnets"))
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
        // Otherwise `default`, `bridge`, `none` or a network's name: nothing with another `:` syntax.
        if network.contains(':') {
            return Err(Refusal::forbidden(format!("the build network mode {network:?} (networkmode)")).unknown());
        }
        // The builder: 1 (legacy) or 2 (BuildKit, over `/session`).
        if !matches!(q.get("version").unwrap_or(""), "" | "1" | "2") {
            return Err(Refusal::forbidden(format!("the builder version {:?} (version)", q.get("version").unwrap_or(""))).unknown());
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
                Ok(c) if c.unknown.is_empty() => check_ulimits(c.value.as_array().map_or(&[], Vec::as_slice), "ulimits")?,
                _ => return self.deny_option("build ulimits that are not a JSON list of ulimits", "ulimits"),
            }
        }
        Ok(())
    }

    /// Every query parameter must be one the endpoint's handler reads (or a real client sends and
    /// dockerd ignores): a newer daemon may read one this version of ctproxy does not know.
    fn check_query(&self, req: &RequestCtx<'_>, endpoint: Endpoint) -> Check {
        for (name, _) in req.query.pairs() {
            if params::find(endpoint, name).is_none() {
                return Err(
                    Refusal::forbidden(format!("the unknown query parameter {name:?} of {} {}", req.method, req.route.path)).unknown()
                );
            }
        }
        Ok(())
    }
}

/// `RestartPolicy.Name`: the modes `ValidateRestartPolicy` knows.
fn check_restart_policy(rp: Option<&Value>, field: &str) -> Check {
    match str_of(rp.and_then(|r| r.get("Name"))) {
        "" | "no" | "always" | "on-failure" | "unless-stopped" => Ok(()),
        other => Err(Refusal::forbidden(format!("the restart policy {other:?} ({field}.Name)")).unknown()),
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
        // BuildKit's control API: only where a namespace checks each of its calls.
        let namespaced_grpc = endpoint == Endpoint::Grpc && req.namespaced;
        if !allowed_endpoint(endpoint) && !namespaced_grpc {
            return deny(format!("the endpoint {} {} ({})", req.method, req.route.path, endpoint.name()));
        }
        if let Some(v) = req.route.version {
            if v < self.min_api {
                return Err(Refusal::forbidden(format!("API version {v} (the minimum is {})", self.min_api))
                    .allowed_by("lowering (never below 1.24)", "min_api_version"));
            }
        }
        self.check_query(req, endpoint)?;
        match endpoint {
            Endpoint::Build => self.check_build(req),
            Endpoint::ContainerStart if req.query.get("checkpoint").is_some() || req.query.get("checkpoint-dir").is_some() => {
                self.deny_option("starting from a checkpoint", "checkpoint")
            }
            // Classified as dockerd does: `fromImage` wins over `fromSrc` (a pull, not an import).
            Endpoint::ImageCreate
                if matches!(
                    crate::docker::image_create::classify(req.query),
                    crate::docker::image_create::ImageCreate::ImportUrl { .. }
                ) =>
            {
                self.deny_option("importing from a URL fetched by the daemon", "fromSrc")
            }
            Endpoint::NetworkConnect if req.route.target() == Some("host") => {
                deny("connecting to the host network (the network named in the path)")
            }
            Endpoint::ImageCreate => super::images::check_pull(&self.config.allowed_images, req.query),
            _ => Ok(()),
        }
    }

    /// Every JSON body of an allowed endpoint: unknown fields are refused wherever they are.
    fn reads_body(&self, endpoint: Endpoint) -> bool {
        allowed_endpoint(endpoint) && matches!(endpoint.body(), BodyKind::Json(_))
    }

    fn check_body(&self, req: &mut RequestCtx<'_>, body: &mut JsonBody) -> Check {
        if let Some(path) = body.unknown.first() {
            return Err(Refusal::forbidden(format!("the unknown field {path}")).unknown());
        }
        match req.endpoint() {
            Some(Endpoint::ContainerCreate) => {
                self.check_create(body, req.namespaced, Own { socket: req.own_socket, grants: req.granted_binds })
            }
            Some(Endpoint::ContainerUpdate) => self.check_update(body),
            Some(Endpoint::ContainerExec) if is_set(body.value.get("Privileged")) => self.deny_option("a privileged exec", "Privileged"),
            Some(Endpoint::NetworkCreate) => self.check_network_create(body, req.namespaced),
            Some(Endpoint::NetworkConnect) => match body.value.get("EndpointConfig") {
                Some(es) if es.is_object() => self.check_endpoint_settings(es, "EndpointConfig"),
                _ => Ok(()),
            },
            Some(Endpoint::VolumeCreate) => self.check_volume_create(body),
            // Exec start, commit (a container.Config holds no host settings), network disconnect
            // and `/auth`: every field they have is harmless; unknown ones were refused above.
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::json::Schema;
    use crate::docker::{Query, Route};
    use crate::plugin::Identity;
    use hyper::{HeaderMap, Method, StatusCode};

    struct Req<'a> {
        method: Method,
        path: &'a str,
        body: &'a str,
        namespaced: bool,
        own_socket: Option<&'a Path>,
        grants: &'a [GrantedBind],
    }

    fn req<'a>(method: Method, path: &'a str, body: &'a str) -> Req<'a> {
        Req { method, path, body, namespaced: false, own_socket: None, grants: &[] }
    }

    fn create(body: &str) -> Req<'_> {
        req(Method::POST, "/v1.45/containers/create", body)
    }

    /// Runs the policy on a request as the proxy does: head, then the canonical body.
    fn run(p: &Conservative, r: Req<'_>) -> Result<(), Refusal> {
        let (path, query) = r.path.split_once('?').unwrap_or((r.path, ""));
        let route = Route::classify(&r.method, path).unwrap();
        let mut query = Query::parse(query).unwrap();
        let mut headers = HeaderMap::new();
        let identity = Identity::anonymous();
        let mut ctx = RequestCtx {
            identity: &identity,
            listener: "t",
            method: &r.method,
            route: &route,
            query: &mut query,
            headers: &mut headers,
            namespaced: r.namespaced,
            own_socket: r.own_socket,
            granted_binds: r.grants,
        };
        p.check(&mut ctx)?;
        let Some(endpoint) = route.endpoint else { return Ok(()) };
        if !p.reads_body(endpoint) || r.body.is_empty() {
            return Ok(());
        }
        let BodyKind::Json(schema) = endpoint.body() else { unreachable!("reads_body") };
        let schema: &'static Schema = schema;
        let c = canonicalize(Raw::parse(r.body.as_bytes()).unwrap(), &Kind::Struct(schema)).unwrap();
        let mut body = JsonBody { value: c.value, unknown: c.unknown };
        if endpoint == Endpoint::ContainerCreate {
            schema::normalize_create(&mut body.value);
        }
        p.check_body(&mut ctx, &mut body)
    }

    fn policy(config: ConservativeConfig) -> Conservative {
        Conservative::new("c", config).unwrap()
    }

    fn refused(r: Result<(), Refusal>, needle: &str) {
        let e = r.expect_err(needle);
        assert_eq!(e.status, StatusCode::FORBIDDEN, "{e:?}");
        assert!(e.reason("conservative").contains(needle), "{needle:?} not in {:?}", e.reason("conservative"));
    }

    #[test]
    fn unknown_fields_are_refused_anywhere_in_every_body() {
        let p = policy(ConservativeConfig::default());
        for (body, field) in [
            (r#"{"Image":"x","Foo":1}"#, "the unknown field Foo;"),
            (r#"{"Image":"x","Healthcheck":{"Test":["NONE"],"Foo":1}}"#, "Healthcheck.Foo"),
            (
                r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"image","Source":"x","Target":"/i","ImageOptions":{"Foo":1}}]}}"#,
                "HostConfig.Mounts[0].ImageOptions.Foo",
            ),
            (r#"{"Image":"x","NetworkingConfig":{"EndpointsConfig":{"x":{"Foo":1}}}}"#, "NetworkingConfig.EndpointsConfig[\"x\"].Foo"),
            (
                r#"{"Image":"x","HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"","HostPort":"1","Foo":1}]}}}"#,
                "PortBindings[\"80/tcp\"][0].Foo",
            ),
        ] {
            refused(run(&p, create(body)), field);
        }
        refused(run(&p, req(Method::POST, "/containers/c/update", r#"{"Memory":1,"Foo":1}"#)), "the unknown field Foo");
        refused(run(&p, req(Method::POST, "/containers/c/exec", r#"{"Cmd":["true"],"Foo":1}"#)), "the unknown field Foo");
        refused(run(&p, req(Method::POST, "/exec/e/start", r#"{"Detach":true,"Foo":1}"#)), "the unknown field Foo");
        refused(run(&p, req(Method::POST, "/commit?container=c", r#"{"Labels":{},"HostConfig":{}}"#)), "the unknown field HostConfig");
        refused(run(&p, req(Method::POST, "/networks/create", r#"{"Name":"n","IPAM":{"Config":[{"Foo":"x"}]}}"#)), "IPAM.Config[0].Foo");
        refused(run(&p, req(Method::POST, "/networks/n/connect", r#"{"Container":"c","Force":true}"#)), "the unknown field Force");
        refused(run(&p, req(Method::POST, "/networks/n/disconnect", r#"{"Container":"c","EndpointConfig":{}}"#)), "EndpointConfig");
        refused(run(&p, req(Method::POST, "/volumes/create", r#"{"Name":"v","Foo":{}}"#)), "the unknown field Foo");
        refused(run(&p, req(Method::POST, "/auth", r#"{"username":"u","Foo":""}"#)), "the unknown field Foo");
        let e = run(&p, create(r#"{"Image":"x","Foo":1}"#)).unwrap_err();
        assert!(e.reason("c").contains("ctproxy ") && e.reason("c").contains("does not know it (no setting allows it)"), "{e:?}");
    }

    #[test]
    fn new_fields_are_known_and_judged() {
        let p = policy(ConservativeConfig { allowed_subnets: vec!["10.0.0.0/8".into()], ..Default::default() });
        for body in [
            r#"{"Image":"x","Healthcheck":{"Test":["CMD","true"],"StartInterval":1000000}}"#,
            r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"volume","Source":"v","Target":"/v","VolumeOptions":{"Subpath":"a"}}]}}"#,
            r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"image","Source":"busybox","Target":"/i","ImageOptions":{"Subpath":"etc"}}]}}"#,
            r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"Options":[["noexec"]]}}]}}"#,
            r#"{"Image":"x","NetworkingConfig":{"EndpointsConfig":{"n":{"GwPriority":5,"DNSNames":["a"]}}}}"#,
            r#"{"Image":"x","HostConfig":{"RestartPolicy":{"Name":"unless-stopped"},"CgroupnsMode":"private","IpcMode":"shareable","StorageOpt":{"size":"1G"}}}"#,
        ] {
            run(&p, create(body)).unwrap();
        }
        run(&p, req(Method::POST, "/networks/create", r#"{"Name":"n","EnableIPv4":true,"EnableIPv6":false}"#)).unwrap();
        refused(run(&p, create(r#"{"Image":"x","HostConfig":{"Annotations":{"a":"b"}}}"#)), "OCI annotations");
        refused(
            run(
                &p,
                create(r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/t","TmpfsOptions":{"Options":[["suid"]]}}]}}"#),
            ),
            "the tmpfs option \"suid\"",
        );
    }

    #[test]
    fn query_parameters_must_be_read_by_the_endpoint() {
        let p = policy(ConservativeConfig::default());
        run(&p, req(Method::POST, "/v1.41/containers/create?name=a&platform=linux", r#"{"Image":"x"}"#)).unwrap();
        run(&p, req(Method::POST, "/images/create?fromImage=busybox&tag=latest&platform=", "")).unwrap();
        run(&p, req(Method::GET, "/containers/json?all=1&limit=-1&size=0&trunc_cmd=0", "")).unwrap();
        run(&p, req(Method::GET, "/images/json?only_ids=0&all=0&filter=x", "")).unwrap();
        refused(
            run(&p, req(Method::POST, "/containers/create?name=a&future=1", r#"{"Image":"x"}"#)),
            "the unknown query parameter \"future\"",
        );
        refused(run(&p, req(Method::POST, "/images/create?fromimage=busybox", "")), "\"fromimage\"");
        refused(run(&p, req(Method::POST, "/build?t=x&entitlements=network.host", "")), "\"entitlements\"");
        refused(run(&p, req(Method::GET, "/_ping?x=1", "")), "\"x\" of GET /_ping");
    }

    #[test]
    fn enum_fields_are_allow_listed() {
        let p = policy(ConservativeConfig::default());
        let hc = |hc: &str| format!(r#"{{"Image":"x","HostConfig":{hc}}}"#);
        for ok in [
            r#"{"NetworkMode":"default"}"#,
            r#"{"NetworkMode":"bridge"}"#,
            r#"{"NetworkMode":"none"}"#,
            r#"{"NetworkMode":"my_net"}"#,
            r#"{"IpcMode":"none"}"#,
            r#"{"IpcMode":"private"}"#,
            r#"{"RestartPolicy":{"Name":"on-failure","MaximumRetryCount":3}}"#,
            r#"{"Binds":["v:/v:ro,nocopy","/t","v2:/w:rw,cached"]}"#,
            r#"{"Ulimits":[{"Name":"nofile","Soft":1,"Hard":2},{"Name":"ſtack","Soft":1,"Hard":2}]}"#,
            r#"{"Mounts":[{"Type":"volume","Source":"v","Target":"/v","Consistency":"delegated"}]}"#,
        ] {
            run(&p, create(&hc(ok))).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for (bad, why) in [
            (r#"{"NetworkMode":"ns:x"}"#, "the network mode \"ns:x\""),
            (r#"{"PidMode":"private"}"#, "the pid mode \"private\""),
            (r#"{"IpcMode":"container:"}"#, "joining another container's ipc namespace"),
            (r#"{"UTSMode":"container:x"}"#, "the uts mode \"container:x\""),
            (r#"{"UsernsMode":"private"}"#, "the userns mode"),
            (r#"{"CgroupnsMode":"host"}"#, "the host's cgroupns namespace"),
            (r#"{"Cgroup":"container:x"}"#, "joining another container's cgroup namespace"),
            (r#"{"RestartPolicy":{"Name":"sometimes"}}"#, "the restart policy \"sometimes\""),
            (r#"{"Mounts":[{"Type":"npipe","Source":"x","Target":"/x"}]}"#, "mount type \"npipe\""),
            (r#"{"Mounts":[{"Type":"cluster","Source":"x","Target":"/x"}]}"#, "mount type \"cluster\""),
            (r#"{"Mounts":[{"Type":"volume","Source":"v","Target":"/v","Consistency":"eventual"}]}"#, "the mount consistency"),
            (r#"{"Mounts":[{"Type":"volume","Source":"v","Target":"/v","BindOptions":{}}]}"#, "BindOptions on a mount of type \"volume\""),
            (r#"{"Binds":["v:/v:ro,future"]}"#, "the bind option \"future\""),
            (r#"{"Binds":["v:/v:ro:x"]}"#, "more than three parts"),
            (r#"{"Ulimits":[{"Name":"memlock","Soft":1,"Hard":1}]}"#, "ulimit memlock"),
            (r#"{"Ulimits":[{"Name":"newlimit","Soft":1,"Hard":1}]}"#, "ulimit newlimit"),
            (r#"{"StorageOpt":{"dm.basesize":"1"}}"#, "the storage option"),
        ] {
            refused(run(&p, create(&hc(bad))), why);
        }
        refused(run(&p, req(Method::POST, "/containers/c/update", r#"{"RestartPolicy":{"Name":"x"}}"#)), "the restart policy");
        refused(run(&p, req(Method::POST, "/networks/create", r#"{"Name":"n","Scope":"cluster"}"#)), "the network scope");
        refused(run(&p, req(Method::POST, "/networks/create", r#"{"Name":"n","IPAM":{"Options":{"x":"y"}}}"#)), "IPAM driver options");
        refused(run(&p, req(Method::POST, "/build?ulimits=%5B%7B%22Name%22%3A%22rtprio%22%7D%5D", "")), "ulimit rtprio");
        refused(run(&p, req(Method::POST, "/build?version=3", "")), "the builder version \"3\"");
        refused(run(&p, req(Method::POST, "/build?networkmode=ns:x", "")), "the build network mode");
        run(&p, req(Method::POST, "/build?version=2&networkmode=none&session=s&buildid=b", "")).unwrap();
    }

    #[test]
    fn bind_sources_are_exactly_an_allowed_path() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::os::unix::fs::symlink(&allowed, dir.path().join("link")).unwrap();
        let p = policy(ConservativeConfig { allowed_bind_paths: vec![allowed.clone()], ..Default::default() });
        let bind = |src: &str| format!(r#"{{"Image":"x","HostConfig":{{"Binds":["{src}:/a"]}}}}"#);
        let a = allowed.display().to_string();
        run(&p, create(&bind(&a))).unwrap();
        run(&p, create(&bind(&format!("{a}/sub/..")))).unwrap();
        refused(run(&p, create(&bind(&format!("{a}/sub")))), "listing the path exactly");
        refused(run(&p, create(&bind(&format!("{a}/missing")))), "listing the path exactly");
        refused(run(&p, create(&bind(&dir.path().join("link").display().to_string()))), "passes through a symbolic link");
        let mount = |src: &str| {
            format!(
                r#"{{"Image":"x","HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{src}","Target":"/a","BindOptions":{{"CreateMountpoint":true}}}}]}}}}"#
            )
        };
        run(&p, create(&mount(&a))).unwrap();
        refused(run(&p, create(&mount(&format!("{a}/new")))), "listing the path exactly");
    }

    #[test]
    fn granted_paths_bind_as_granted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let tool = dir.path().join("gitlab-runner");
        std::fs::create_dir_all(cache.join("sub")).unwrap();
        std::fs::write(&tool, "").unwrap();
        let grants: &'static [GrantedBind] = Box::leak(Box::new([
            GrantedBind { path: cache.clone(), read_only: false },
            GrantedBind { path: tool.clone(), read_only: true },
        ]));
        let p = policy(ConservativeConfig::default());
        let with = |bind: String| {
            let body: &'static str = Box::leak(format!(r#"{{"Image":"x","HostConfig":{{"Binds":["{bind}"]}}}}"#).into_boxed_str());
            Req { grants, namespaced: true, ..create(body) }
        };
        run(&p, with(format!("{}:/cache", cache.display()))).unwrap();
        run(&p, with(format!("{}:/usr/local/bin/gitlab-runner:ro", tool.display()))).unwrap();
        refused(run(&p, with(format!("{}:/usr/local/bin/gitlab-runner", tool.display()))), "read-only only");
        refused(run(&p, with(format!("{}/sub:/c", cache.display()))), "listing the path exactly");
        refused(run(&p, with(format!("{}:/d", dir.path().display()))), "listing the path exactly");
        // Without the grant (another listener), the same path is an ordinary host path.
        let body: &'static str =
            Box::leak(format!(r#"{{"Image":"x","HostConfig":{{"Binds":["{}:/cache"]}}}}"#, cache.display()).into_boxed_str());
        refused(run(&p, create(body)), "listing the path exactly");
    }

    #[test]
    fn a_jobs_socket_directory_binds_read_only_only() {
        let dir = tempfile::tempdir().unwrap();
        let sock_dir = dir.path().join("jobs/j1/sock");
        std::fs::create_dir_all(&sock_dir).unwrap();
        let own = sock_dir.join("docker.sock");
        std::fs::write(&own, "").unwrap();
        let p = policy(ConservativeConfig::default());
        let on_job = |body: &'static str| {
            let body = body.replace("SOCK", &own.display().to_string()).replace("DIR", &sock_dir.display().to_string());
            let body: &'static str = Box::leak(body.into_boxed_str());
            Req { own_socket: Some(Box::leak(own.clone().into_boxed_path())), namespaced: true, ..create(body) }
        };
        run(&p, on_job(r#"{"Image":"x","HostConfig":{"Binds":["SOCK:/var/run/docker.sock"]}}"#)).unwrap();
        run(&p, on_job(r#"{"Image":"x","HostConfig":{"Binds":["DIR:/d:ro"]}}"#)).unwrap();
        run(&p, on_job(r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"DIR","Target":"/d","ReadOnly":true}]}}"#)).unwrap();
        run(&p, on_job(r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"SOCK","Target":"/s"}]}}"#)).unwrap();
        for (body, why) in [
            (r#"{"Image":"x","HostConfig":{"Binds":["DIR:/d"]}}"#, "a read-write bind of the job's Docker socket directory"),
            (r#"{"Image":"x","HostConfig":{"Binds":["DIR:/d:rw"]}}"#, "a read-write bind"),
            (r#"{"Image":"x","HostConfig":{"Binds":["DIR/.:/d:rw"]}}"#, "a read-write bind"),
            (r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"DIR","Target":"/d"}]}}"#, "a read-write bind"),
            (
                r#"{"Image":"x","HostConfig":{"Mounts":[{"Type":"bind","Source":"DIR","Target":"/d","ReadOnly":false,"BindOptions":{"ReadOnlyNonRecursive":true}}]}}"#,
                "a read-write bind",
            ),
            (r#"{"Image":"x","HostConfig":{"Binds":["DIR/other:/d:ro"]}}"#, "inside the job's Docker socket directory"),
            (r#"{"Image":"x","HostConfig":{"Binds":["DIR/..:/d:ro"]}}"#, "which holds the job's Docker socket"),
        ] {
            refused(run(&p, on_job(body)), why);
        }
    }

    #[test]
    fn explicit_network_addresses_must_be_in_allowed_subnets() {
        let p = policy(ConservativeConfig { allowed_subnets: vec!["10.10.0.0/16".into(), "fd00:10::/32".into()], ..Default::default() });
        let net = |ipam: &str| format!(r#"{{"Name":"n","IPAM":{{"Driver":"default","Config":[{ipam}]}}}}"#);
        let create_net = |ipam: &str| req(Method::POST, "/networks/create", Box::leak(net(ipam).into_boxed_str()));
        for ok in [
            r#"{"Subnet":"10.10.1.0/24","IPRange":"10.10.1.0/25","Gateway":"10.10.1.1","AuxiliaryAddresses":{"h":"10.10.1.5"}}"#,
            r#"{"Subnet":"10.10.0.0/16"}"#,
            r#"{"Subnet":"fd00:10:1::/64","Gateway":"fd00:10:1::1"}"#,
            r#"{}"#,
        ] {
            run(&p, create_net(ok)).unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        }
        for (bad, why) in [
            (r#"{"Subnet":"10.0.0.0/8"}"#, "IPAM.Config[0].Subnet"),
            (r#"{"Subnet":"192.168.1.0/24"}"#, "listing a range that contains them in [policy.conservative] allowed_subnets"),
            (r#"{"Subnet":"10.10.1.0/24","IPRange":"10.11.0.0/24"}"#, "IPAM.Config[0].IPRange"),
            (r#"{"Subnet":"10.10.1.0/24","Gateway":"10.11.0.1"}"#, "IPAM.Config[0].Gateway"),
            (r#"{"Subnet":"10.10.1.0/24","AuxiliaryAddresses":{"x":"172.17.0.1"}}"#, "AuxiliaryAddresses[\"x\"]"),
            (r#"{"Subnet":"fd00:11::/64"}"#, "fd00:11::/64"),
            (r#"{"Subnet":"::ffff:10.10.0.0/112"}"#, "IPv4-mapped"),
        ] {
            refused(run(&p, create_net(bad)), why);
        }
        let e = run(&p, create_net(r#"{"Subnet":"10.10.1.0/33"}"#)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        // A namespaced listener leaves them to the namespace's own pool.
        run(&p, Req { namespaced: true, ..create_net(r#"{"Subnet":"192.168.7.0/24"}"#) }).unwrap();
        // The default: no explicit addresses at all.
        refused(run(&policy(ConservativeConfig::default()), create_net(r#"{"Subnet":"10.10.1.0/24"}"#)), "allowed_subnets");
    }

    #[test]
    fn endpoint_link_local_addresses_must_be_link_local() {
        let p = policy(ConservativeConfig::default());
        let ep = |ips: &str| {
            format!(
                r#"{{"Image":"x","NetworkingConfig":{{"EndpointsConfig":{{"n":{{"IPAMConfig":{{"IPv4Address":"10.1.2.3","LinkLocalIPs":[{ips}]}}}}}}}}}}"#
            )
        };
        run(&p, create(&ep(r#""169.254.10.1","fe80::5""#))).unwrap();
        refused(run(&p, create(&ep(r#""10.0.0.1""#))), "not link-local");
        refused(
            run(
                &p,
                req(
                    Method::POST,
                    "/networks/n/connect",
                    r#"{"Container":"c","EndpointConfig":{"IPAMConfig":{"LinkLocalIPs":["8.8.8.8"]}}}"#,
                ),
            ),
            "not link-local",
        );
        assert_eq!(run(&p, create(&ep(r#""nope""#))).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let with_paths =
            |paths: &[&str]| ConservativeConfig { allowed_bind_paths: paths.iter().map(PathBuf::from).collect(), ..Default::default() };
        let key = |c: ConservativeConfig| Conservative::new("c", c).err().map(|e| (e.key, e.message));
        assert!(key(with_paths(&["/srv/a", "/srv/b"])).is_none());
        let (k, m) = key(with_paths(&["/srv", "/srv/a"])).unwrap();
        assert_eq!(k, "allowed_bind_paths");
        assert!(m.contains("overlap"), "{m}");
        assert!(key(with_paths(&["/srv/a/../a", "/srv/a"])).is_some(), "the same path twice, once unclean");
        assert!(key(with_paths(&["srv"])).unwrap().1.contains("absolute"));
        let link = dir.path().join("link/x").display().to_string();
        assert!(key(with_paths(&[&link])).unwrap().1.contains("symbolic link"));
        let subnets = |s: &str| ConservativeConfig { allowed_subnets: vec![s.into()], ..Default::default() };
        assert!(key(subnets("10.0.0.0/8")).is_none());
        assert_eq!(key(subnets("10.0.0.0/40")).unwrap().0, "allowed_subnets");
        assert_eq!(key(subnets("10.0.0.0")).unwrap().0, "allowed_subnets");
        assert_eq!(key(ConservativeConfig { min_api_version: "x".into(), ..Default::default() }).unwrap().0, "min_api_version");
    }
}
