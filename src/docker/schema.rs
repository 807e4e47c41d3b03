//! Schemas of the JSON bodies dockerd decodes, for [`super::json::canonicalize`].
//!
//! Transcribed from moby's `api/types` (container.Config, container.HostConfig and the Resources it
//! embeds, mount.Mount, network.EndpointSettings, ...) for API 1.24 to 1.5x. Types that accept either
//! a string or an array (`strslice.StrSlice`: `Cmd`, `Entrypoint`, `CapAdd`, ...) and subtrees that no
//! policy reads are [`Kind::Any`]; everything a policy checks is described exactly.

use super::json::{Kind, Schema};

const S: Kind = Kind::Scalar;
const P: Kind = Kind::PtrScalar;
const ANY: Kind = Kind::Any;
const STRINGS: Kind = Kind::Slice(&Kind::Scalar);
const STRING_MAP: Kind = Kind::Map(&Kind::Scalar);

const fn schema(name: &'static str, fields: &'static [(&'static str, Kind)]) -> Schema {
    Schema { name, fields, embeds: &[] }
}

pub static DEVICE_MAPPING: Schema = schema("DeviceMapping", &[("PathOnHost", S), ("PathInContainer", S), ("CgroupPermissions", S)]);
pub static ULIMIT: Schema = schema("Ulimit", &[("Name", S), ("Hard", S), ("Soft", S)]);
pub static LOG_CONFIG: Schema = schema("LogConfig", &[("Type", S), ("Config", STRING_MAP)]);
pub static RESTART_POLICY: Schema = schema("RestartPolicy", &[("Name", S), ("MaximumRetryCount", S)]);

/// `container.Resources`: embedded in HostConfig, and the body of `update` (with RestartPolicy).
pub static RESOURCES: Schema = schema(
    "Resources",
    &[
        ("CpuShares", S),
        ("Memory", S),
        ("NanoCpus", S),
        ("CgroupParent", S),
        ("BlkioWeight", S),
        ("BlkioWeightDevice", Kind::Slice(&ANY)),
        ("BlkioDeviceReadBps", Kind::Slice(&ANY)),
        ("BlkioDeviceWriteBps", Kind::Slice(&ANY)),
        ("BlkioDeviceReadIOps", Kind::Slice(&ANY)),
        ("BlkioDeviceWriteIOps", Kind::Slice(&ANY)),
        ("CpuPeriod", S),
        ("CpuQuota", S),
        ("CpuRealtimePeriod", S),
        ("CpuRealtimeRuntime", S),
        ("CpusetCpus", S),
        ("CpusetMems", S),
        ("Devices", Kind::Slice(&Kind::Struct(&DEVICE_MAPPING))),
        ("DeviceCgroupRules", STRINGS),
        ("DeviceRequests", Kind::Slice(&ANY)),
        ("KernelMemory", S),
        ("KernelMemoryTCP", S),
        ("MemoryReservation", S),
        ("MemorySwap", S),
        ("MemorySwappiness", P),
        ("OomKillDisable", P),
        ("PidsLimit", P),
        ("Ulimits", Kind::Slice(&Kind::PtrStruct(&ULIMIT))),
        ("CpuCount", S),
        ("CpuPercent", S),
        ("IOMaximumIOps", S),
        ("IOMaximumBandwidth", S),
    ],
);

pub static BIND_OPTIONS: Schema = schema(
    "BindOptions",
    &[("Propagation", S), ("NonRecursive", S), ("CreateMountpoint", S), ("ReadOnlyNonRecursive", S), ("ReadOnlyForceRecursive", S)],
);
pub static DRIVER_CONFIG: Schema = schema("Driver", &[("Name", S), ("Options", STRING_MAP)]);
pub static VOLUME_OPTIONS: Schema =
    schema("VolumeOptions", &[("NoCopy", S), ("Labels", STRING_MAP), ("DriverConfig", Kind::PtrStruct(&DRIVER_CONFIG)), ("Subpath", S)]);
pub static TMPFS_OPTIONS: Schema = schema("TmpfsOptions", &[("SizeBytes", S), ("Mode", S), ("Options", ANY)]);

pub static MOUNT: Schema = schema(
    "Mount",
    &[
        ("Type", S),
        ("Source", S),
        ("Target", S),
        ("ReadOnly", S),
        ("Consistency", S),
        ("BindOptions", Kind::PtrStruct(&BIND_OPTIONS)),
        ("VolumeOptions", Kind::PtrStruct(&VOLUME_OPTIONS)),
        ("ImageOptions", ANY),
        ("TmpfsOptions", Kind::PtrStruct(&TMPFS_OPTIONS)),
        ("ClusterOptions", ANY),
    ],
);

pub static HOST_CONFIG: Schema = Schema {
    name: "HostConfig",
    fields: &[
        ("Binds", STRINGS),
        ("ContainerIDFile", S),
        ("LogConfig", Kind::Struct(&LOG_CONFIG)),
        ("NetworkMode", S),
        ("PortBindings", Kind::Map(&ANY)),
        ("RestartPolicy", Kind::Struct(&RESTART_POLICY)),
        ("AutoRemove", S),
        ("VolumeDriver", S),
        ("VolumesFrom", STRINGS),
        ("ConsoleSize", ANY),
        ("Annotations", STRING_MAP),
        ("CapAdd", ANY),
        ("CapDrop", ANY),
        ("CgroupnsMode", S),
        ("Dns", STRINGS),
        ("DnsOptions", STRINGS),
        ("DnsSearch", STRINGS),
        ("ExtraHosts", STRINGS),
        ("GroupAdd", STRINGS),
        ("IpcMode", S),
        ("Cgroup", S),
        ("Links", STRINGS),
        ("OomScoreAdj", S),
        ("PidMode", S),
        ("Privileged", S),
        ("PublishAllPorts", S),
        ("ReadonlyRootfs", S),
        ("SecurityOpt", STRINGS),
        ("StorageOpt", STRING_MAP),
        ("Tmpfs", STRING_MAP),
        ("UTSMode", S),
        ("UsernsMode", S),
        ("ShmSize", S),
        ("Sysctls", STRING_MAP),
        ("Runtime", S),
        ("Isolation", S),
        ("MaskedPaths", STRINGS),
        ("ReadonlyPaths", STRINGS),
        ("Init", P),
        ("Mounts", Kind::Slice(&Kind::Struct(&MOUNT))),
        ("Capabilities", STRINGS),
    ],
    embeds: &[&RESOURCES],
};

pub static ENDPOINT_SETTINGS: Schema = schema(
    "EndpointSettings",
    &[
        ("IPAMConfig", ANY),
        ("Links", STRINGS),
        ("Aliases", STRINGS),
        ("MacAddress", S),
        ("DriverOpts", STRING_MAP),
        ("GwPriority", S),
        ("NetworkID", S),
        ("EndpointID", S),
        ("Gateway", S),
        ("IPAddress", S),
        ("IPPrefixLen", S),
        ("IPv6Gateway", S),
        ("GlobalIPv6Address", S),
        ("GlobalIPv6PrefixLen", S),
        ("DNSNames", STRINGS),
    ],
);

pub static NETWORKING_CONFIG: Schema = schema("NetworkingConfig", &[("EndpointsConfig", Kind::Map(&Kind::PtrStruct(&ENDPOINT_SETTINGS)))]);

/// `container.Config`: the top level of a create body, and the body of `commit`.
pub static CONFIG: Schema = schema(
    "Config",
    &[
        ("Hostname", S),
        ("Domainname", S),
        ("User", S),
        ("AttachStdin", S),
        ("AttachStdout", S),
        ("AttachStderr", S),
        ("ExposedPorts", Kind::Map(&ANY)),
        ("Tty", S),
        ("OpenStdin", S),
        ("StdinOnce", S),
        ("Env", STRINGS),
        ("Cmd", ANY),
        ("Healthcheck", ANY),
        ("ArgsEscaped", S),
        ("Image", S),
        ("Volumes", Kind::Map(&ANY)),
        ("WorkingDir", S),
        ("Entrypoint", ANY),
        ("NetworkDisabled", S),
        ("MacAddress", S),
        ("OnBuild", STRINGS),
        ("Labels", STRING_MAP),
        ("StopSignal", S),
        ("StopTimeout", P),
        ("Shell", ANY),
    ],
);

/// `POST /containers/create`: moby's `ContainerConfigWrapper`. Besides `*Config`, it embeds a
/// deprecated `*HostConfig` whose fields are read from the *top level* of the body: when there is no
/// `HostConfig` object, they are the container's host configuration (`{"Privileged": true}` at the
/// top level gives a privileged container on dockerd 20.10). [`normalize_create`] folds them into
/// the one `HostConfig` dockerd would use.
pub static CONTAINER_CREATE: Schema = Schema {
    name: "ContainerCreate",
    fields: &[("HostConfig", Kind::PtrStruct(&HOST_CONFIG)), ("NetworkingConfig", Kind::PtrStruct(&NETWORKING_CONFIG)), ("Cpuset", S)],
    embeds: &[&CONFIG, &HOST_CONFIG],
};

/// Rewrites a canonical create body so that the host configuration is only under `HostConfig`,
/// as dockerd's `getHostConfig` computes it: the inner `HostConfig` if present (taking `Memory`,
/// `MemorySwap`, `CpuShares` and `CpusetCpus` from the top level where its own are zero), else the
/// top-level fields; then the deprecated `Cpuset`. The top-level copies are removed, so what the
/// daemon reads is exactly what policies checked.
pub fn normalize_create(body: &mut serde_json::Value) {
    use serde_json::{Map, Value};
    let Value::Object(top) = body else { return };
    let mut outer = Map::new();
    for name in HOST_CONFIG.field_names() {
        if let Some(v) = top.remove(name) {
            outer.insert(name.to_owned(), v);
        }
    }
    let cpuset = top.remove("Cpuset");
    let zero = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => s.is_empty(),
        _ => false,
    };
    let mut hc = match top.remove("HostConfig") {
        Some(Value::Object(mut inner)) => {
            for f in ["Memory", "MemorySwap", "CpuShares", "CpusetCpus"] {
                if !zero(outer.get(f)) && zero(inner.get(f)) {
                    if let Some(v) = outer.remove(f) {
                        inner.insert(f.to_owned(), v);
                    }
                }
            }
            Some(inner)
        }
        _ if !outer.is_empty() => Some(outer),
        _ => None,
    };
    if let (Some(hc), Some(Value::String(c))) = (hc.as_mut(), cpuset) {
        if !c.is_empty() && zero(hc.get("CpusetCpus")) {
            hc.insert("CpusetCpus".to_owned(), Value::String(c));
        }
    }
    if let Some(hc) = hc {
        top.insert("HostConfig".to_owned(), Value::Object(hc));
    }
}

/// `POST /containers/{id}/update`.
pub static CONTAINER_UPDATE: Schema =
    Schema { name: "UpdateConfig", fields: &[("RestartPolicy", Kind::Struct(&RESTART_POLICY))], embeds: &[&RESOURCES] };

/// `POST /containers/{id}/exec`.
pub static EXEC_CREATE: Schema = schema(
    "ExecConfig",
    &[
        ("User", S),
        ("Privileged", S),
        ("Tty", S),
        ("ConsoleSize", ANY),
        ("AttachStdin", S),
        ("AttachStderr", S),
        ("AttachStdout", S),
        ("Detach", S),
        ("DetachKeys", S),
        ("Env", STRINGS),
        ("WorkingDir", S),
        ("Cmd", ANY),
    ],
);

/// `POST /exec/{id}/start`.
pub static EXEC_START: Schema = schema("ExecStartCheck", &[("Detach", S), ("Tty", S), ("ConsoleSize", ANY)]);

pub static IPAM: Schema = schema("IPAM", &[("Driver", S), ("Config", Kind::Slice(&ANY)), ("Options", STRING_MAP)]);
pub static CONFIG_REFERENCE: Schema = schema("ConfigReference", &[("Network", S)]);

/// `POST /networks/create`.
pub static NETWORK_CREATE: Schema = schema(
    "NetworkCreateRequest",
    &[
        ("Name", S),
        ("CheckDuplicate", S),
        ("Driver", S),
        ("Scope", S),
        ("EnableIPv4", P),
        ("EnableIPv6", P),
        ("IPAM", Kind::PtrStruct(&IPAM)),
        ("Internal", S),
        ("Attachable", S),
        ("Ingress", S),
        ("ConfigOnly", S),
        ("ConfigFrom", Kind::PtrStruct(&CONFIG_REFERENCE)),
        ("Options", STRING_MAP),
        ("Labels", STRING_MAP),
    ],
);

/// `POST /networks/{id}/connect` and `/disconnect`.
pub static NETWORK_CONNECT: Schema =
    schema("NetworkConnect", &[("Container", S), ("EndpointConfig", Kind::PtrStruct(&ENDPOINT_SETTINGS)), ("Force", S)]);

/// `POST /volumes/create`.
pub static VOLUME_CREATE: Schema = schema(
    "VolumeCreateBody",
    &[("Name", S), ("Driver", S), ("DriverOpts", STRING_MAP), ("Labels", STRING_MAP), ("ClusterVolumeSpec", ANY)],
);

/// `POST /auth`.
pub static AUTH_CONFIG: Schema = schema(
    "AuthConfig",
    &[("username", S), ("password", S), ("auth", S), ("email", S), ("serveraddress", S), ("identitytoken", S), ("registrytoken", S)],
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::json::{canonicalize, Raw};
    use serde_json::json;

    fn create(s: &str) -> serde_json::Value {
        let mut v = canonicalize(Raw::parse(s.as_bytes()).unwrap(), &Kind::Struct(&CONTAINER_CREATE)).unwrap().value;
        normalize_create(&mut v);
        v
    }

    #[test]
    fn top_level_host_config_is_folded_in() {
        assert_eq!(
            create(r#"{"Image":"x","privileged":true,"Binds":["/etc:/h"]}"#),
            json!({"Image":"x","HostConfig":{"Privileged":true,"Binds":["/etc:/h"]}})
        );
        // With an inner HostConfig, top-level fields are ignored except the four memory/cpu ones.
        assert_eq!(
            create(r#"{"Image":"x","Privileged":true,"Memory":5,"Cpuset":"0","HostConfig":{"PidsLimit":3}}"#),
            json!({"Image":"x","HostConfig":{"PidsLimit":3,"Memory":5,"CpusetCpus":"0"}})
        );
        assert_eq!(create(r#"{"Image":"x"}"#), json!({"Image":"x"}));
        // Resources fields (two levels of embedding) are found at the top level too.
        assert_eq!(
            create(r#"{"Image":"x","devices":[{"PathOnHost":"/dev/sda"}]}"#)["HostConfig"]["Devices"][0]["PathOnHost"],
            json!("/dev/sda")
        );
    }
}
