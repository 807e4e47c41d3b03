//! Schemas of the JSON bodies dockerd decodes, for [`super::json::canonicalize`].
//!
//! Transcribed from moby's `api/types` for every body of an endpoint ctproxy reads (container
//! create and update, exec create and start, commit, network create, connect and disconnect, volume
//! create, `/auth`), as the union of the fields that dockerd 20.10 to 29 (API 1.24 to 1.52) decode:
//! a field an older daemon knew (`KernelMemory`, `Capabilities`, `Config.MacAddress`) stays known,
//! and a field only newer daemons read (`Mount.ImageOptions`, `EndpointSettings.GwPriority`) is
//! known too, so that what the daemon on the other side will act on is always described. Policies
//! decide what to allow of it. Every Go struct is described field by field, to the leaves, so that
//! a key that is not in this union is reported as unknown wherever it is (`Healthcheck.Foo`,
//! `HostConfig.Mounts[0].ImageOptions.Foo`); [`Kind::Any`] is used only where the Go value is untyped
//! (`interface{}`) or is a `strslice.StrSlice` (a string or an array of strings: `Cmd`,
//! `Entrypoint`, `Shell`, `CapAdd`, `CapDrop`), which has no keys to hide anything in.
//!
//! Go types that decode from a JSON string (`netip.Addr`, `netip.Prefix`, `HardwareAddr`,
//! `time.Duration` from a number, `os.FileMode`) are scalars here.

use super::json::{Kind, Schema};

const S: Kind = Kind::Scalar;
const P: Kind = Kind::PtrScalar;
const ANY: Kind = Kind::Any;
const STRINGS: Kind = Kind::Slice(&Kind::Scalar);
/// `[][]string`.
const STRING_LISTS: Kind = Kind::Slice(&STRINGS);
const STRING_MAP: Kind = Kind::Map(&Kind::Scalar);
/// `[2]uint` (`ConsoleSize`): Go decodes an array of any length into it (extra elements dropped).
const UINT_PAIR: Kind = Kind::Slice(&Kind::Scalar);

const fn schema(name: &'static str, fields: &'static [(&'static str, Kind)]) -> Schema {
    Schema { name, fields, embeds: &[] }
}

/// `struct{}`: the values of `ExposedPorts` (`nat.PortSet`), `Volumes`, and `TypeBlock`. Any key
/// inside is unknown.
pub static EMPTY: Schema = schema("struct{}", &[]);
/// `map[string]struct{}`.
const SET: Kind = Kind::Map(&Kind::Struct(&EMPTY));

pub static DEVICE_MAPPING: Schema = schema("DeviceMapping", &[("PathOnHost", S), ("PathInContainer", S), ("CgroupPermissions", S)]);
/// `units.Ulimit` (go-units).
pub static ULIMIT: Schema = schema("Ulimit", &[("Name", S), ("Hard", S), ("Soft", S)]);
pub static LOG_CONFIG: Schema = schema("LogConfig", &[("Type", S), ("Config", STRING_MAP)]);
pub static RESTART_POLICY: Schema = schema("RestartPolicy", &[("Name", S), ("MaximumRetryCount", S)]);
/// `blkiodev.WeightDevice`.
pub static WEIGHT_DEVICE: Schema = schema("WeightDevice", &[("Path", S), ("Weight", S)]);
/// `blkiodev.ThrottleDevice`.
pub static THROTTLE_DEVICE: Schema = schema("ThrottleDevice", &[("Path", S), ("Rate", S)]);
pub static DEVICE_REQUEST: Schema = schema(
    "DeviceRequest",
    &[("Driver", S), ("Count", S), ("DeviceIDs", STRINGS), ("Capabilities", STRING_LISTS), ("Options", STRING_MAP)],
);
const THROTTLE_DEVICES: Kind = Kind::Slice(&Kind::PtrStruct(&THROTTLE_DEVICE));

/// `container.Resources`: embedded in HostConfig, and the body of `update` (with RestartPolicy).
/// `KernelMemory` and `KernelMemoryTCP` were removed in API 1.52 (dockerd 29).
pub static RESOURCES: Schema = schema(
    "Resources",
    &[
        ("CpuShares", S),
        ("Memory", S),
        ("NanoCpus", S),
        ("CgroupParent", S),
        ("BlkioWeight", S),
        ("BlkioWeightDevice", Kind::Slice(&Kind::PtrStruct(&WEIGHT_DEVICE))),
        ("BlkioDeviceReadBps", THROTTLE_DEVICES),
        ("BlkioDeviceWriteBps", THROTTLE_DEVICES),
        ("BlkioDeviceReadIOps", THROTTLE_DEVICES),
        ("BlkioDeviceWriteIOps", THROTTLE_DEVICES),
        ("CpuPeriod", S),
        ("CpuQuota", S),
        ("CpuRealtimePeriod", S),
        ("CpuRealtimeRuntime", S),
        ("CpusetCpus", S),
        ("CpusetMems", S),
        ("Devices", Kind::Slice(&Kind::Struct(&DEVICE_MAPPING))),
        ("DeviceCgroupRules", STRINGS),
        ("DeviceRequests", Kind::Slice(&Kind::Struct(&DEVICE_REQUEST))),
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

/// `mount.BindOptions`: `CreateMountpoint` since API 1.42, the two read-only modes since 1.44.
pub static BIND_OPTIONS: Schema = schema(
    "BindOptions",
    &[("Propagation", S), ("NonRecursive", S), ("CreateMountpoint", S), ("ReadOnlyNonRecursive", S), ("ReadOnlyForceRecursive", S)],
);
pub static DRIVER_CONFIG: Schema = schema("Driver", &[("Name", S), ("Options", STRING_MAP)]);
/// `mount.VolumeOptions`: `Subpath` since API 1.45.
pub static VOLUME_OPTIONS: Schema =
    schema("VolumeOptions", &[("NoCopy", S), ("Labels", STRING_MAP), ("Subpath", S), ("DriverConfig", Kind::PtrStruct(&DRIVER_CONFIG))]);
/// `mount.ImageOptions` (mounts of type `image`, API 1.48): `Subpath` since dockerd 28.
pub static IMAGE_OPTIONS: Schema = schema("ImageOptions", &[("Subpath", S)]);
/// `mount.TmpfsOptions`: `Options` (`[][]string`) since API 1.46.
pub static TMPFS_OPTIONS: Schema = schema("TmpfsOptions", &[("SizeBytes", S), ("Mode", S), ("Options", STRING_LISTS)]);
/// `mount.ClusterOptions`: an empty struct (swarm cluster volumes).
pub static CLUSTER_OPTIONS: Schema = schema("ClusterOptions", &[]);

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
        ("ImageOptions", Kind::PtrStruct(&IMAGE_OPTIONS)),
        ("TmpfsOptions", Kind::PtrStruct(&TMPFS_OPTIONS)),
        ("ClusterOptions", Kind::PtrStruct(&CLUSTER_OPTIONS)),
    ],
);

/// `nat.PortBinding` / `network.PortBinding` (`HostIP` is spelt `HostIp` in JSON).
pub static PORT_BINDING: Schema = schema("PortBinding", &[("HostIp", S), ("HostPort", S)]);

/// `container.HostConfig`. `Annotations` since API 1.43; `Capabilities` was read by dockerd 19.03
/// only, and refused with a message by newer daemons.
pub static HOST_CONFIG: Schema = Schema {
    name: "HostConfig",
    fields: &[
        ("Binds", STRINGS),
        ("ContainerIDFile", S),
        ("LogConfig", Kind::Struct(&LOG_CONFIG)),
        ("NetworkMode", S),
        ("PortBindings", Kind::Map(&Kind::Slice(&Kind::Struct(&PORT_BINDING)))),
        ("RestartPolicy", Kind::Struct(&RESTART_POLICY)),
        ("AutoRemove", S),
        ("VolumeDriver", S),
        ("VolumesFrom", STRINGS),
        ("ConsoleSize", UINT_PAIR),
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

/// `network.EndpointIPAMConfig`: the static addresses of one endpoint.
pub static ENDPOINT_IPAM_CONFIG: Schema =
    schema("EndpointIPAMConfig", &[("IPv4Address", S), ("IPv6Address", S), ("LinkLocalIPs", STRINGS)]);

/// `network.EndpointSettings`: `DNSNames` since API 1.44, `GwPriority` since 1.48. The operational
/// fields (`NetworkID` to `GlobalIPv6PrefixLen`) are output; dockerd ignores them in requests.
pub static ENDPOINT_SETTINGS: Schema = schema(
    "EndpointSettings",
    &[
        ("IPAMConfig", Kind::PtrStruct(&ENDPOINT_IPAM_CONFIG)),
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

/// `container.HealthConfig` (`dockerspec.HealthcheckConfig` since dockerd 25): `StartInterval` since
/// API 1.44.
pub static HEALTHCHECK: Schema =
    schema("HealthConfig", &[("Test", STRINGS), ("Interval", S), ("Timeout", S), ("StartPeriod", S), ("StartInterval", S), ("Retries", S)]);

/// `container.Config`: the top level of a create body, and the body of `commit`. `MacAddress`
/// moved to the endpoint settings in API 1.44 and is no longer read from here since 1.52.
pub static CONFIG: Schema = schema(
    "Config",
    &[
        ("Hostname", S),
        ("Domainname", S),
        ("User", S),
        ("AttachStdin", S),
        ("AttachStdout", S),
        ("AttachStderr", S),
        ("ExposedPorts", SET),
        ("Tty", S),
        ("OpenStdin", S),
        ("StdinOnce", S),
        ("Env", STRINGS),
        ("Cmd", ANY),
        ("Healthcheck", Kind::PtrStruct(&HEALTHCHECK)),
        ("ArgsEscaped", S),
        ("Image", S),
        ("Volumes", SET),
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

/// `POST /containers/{id}/exec`: `ExecConfig` (`ExecOptions`, `ExecCreateRequest`). `ConsoleSize`
/// since API 1.42; `Detach` is sent by clients and was read by dockerd up to 28. `Container` is
/// sent by the Python SDK (`exec_run`) and read by no dockerd since 1.13 (the URL names the
/// container); refusing it broke every SDK exec.
pub static EXEC_CREATE: Schema = schema(
    "ExecConfig",
    &[
        ("Container", S),
        ("User", S),
        ("Privileged", S),
        ("Tty", S),
        ("ConsoleSize", UINT_PAIR),
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

/// `POST /exec/{id}/start`: `ExecStartCheck` (`ExecStartOptions`, `ExecStartRequest`).
pub static EXEC_START: Schema = schema("ExecStartCheck", &[("Detach", S), ("Tty", S), ("ConsoleSize", UINT_PAIR)]);

/// `network.IPAMConfig`: one pool of a network. The Go field `AuxAddress` is `AuxiliaryAddresses`
/// in JSON.
pub static IPAM_CONFIG: Schema = schema("IPAMConfig", &[("Subnet", S), ("IPRange", S), ("Gateway", S), ("AuxiliaryAddresses", STRING_MAP)]);
pub static IPAM: Schema = schema("IPAM", &[("Driver", S), ("Config", Kind::Slice(&Kind::Struct(&IPAM_CONFIG))), ("Options", STRING_MAP)]);
pub static CONFIG_REFERENCE: Schema = schema("ConfigReference", &[("Network", S)]);

/// `POST /networks/create`: `NetworkCreateRequest` (`CreateOptions`, `CreateRequest`).
/// `CheckDuplicate` is ignored since API 1.44; `EnableIPv4` is read since 1.48.
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

/// `POST /networks/{id}/connect`: `NetworkConnect` (`ConnectOptions`, `ConnectRequest`).
pub static NETWORK_CONNECT: Schema = schema("NetworkConnect", &[("Container", S), ("EndpointConfig", Kind::PtrStruct(&ENDPOINT_SETTINGS))]);

/// `POST /networks/{id}/disconnect`: `NetworkDisconnect` (`DisconnectOptions`, `DisconnectRequest`).
pub static NETWORK_DISCONNECT: Schema = schema("NetworkDisconnect", &[("Container", S), ("Force", S)]);

/// `volume.TypeMount`.
pub static CLUSTER_TYPE_MOUNT: Schema = schema("TypeMount", &[("FsType", S), ("MountFlags", STRINGS)]);
/// `volume.AccessMode` (`BlockVolume` is the empty `TypeBlock`).
pub static CLUSTER_ACCESS_MODE: Schema = schema(
    "AccessMode",
    &[("Scope", S), ("Sharing", S), ("MountVolume", Kind::PtrStruct(&CLUSTER_TYPE_MOUNT)), ("BlockVolume", Kind::PtrStruct(&EMPTY))],
);
/// `volume.Topology`.
pub static CLUSTER_TOPOLOGY: Schema = schema("Topology", &[("Segments", STRING_MAP)]);
/// `volume.TopologyRequirement`.
pub static CLUSTER_TOPOLOGY_REQUIREMENT: Schema = schema(
    "TopologyRequirement",
    &[("Requisite", Kind::Slice(&Kind::Struct(&CLUSTER_TOPOLOGY))), ("Preferred", Kind::Slice(&Kind::Struct(&CLUSTER_TOPOLOGY)))],
);
/// `volume.CapacityRange`.
pub static CLUSTER_CAPACITY_RANGE: Schema = schema("CapacityRange", &[("RequiredBytes", S), ("LimitBytes", S)]);
/// `volume.Secret`.
pub static CLUSTER_SECRET: Schema = schema("Secret", &[("Key", S), ("Secret", S)]);
/// `volume.ClusterVolumeSpec` (API 1.42).
pub static CLUSTER_VOLUME_SPEC: Schema = schema(
    "ClusterVolumeSpec",
    &[
        ("Group", S),
        ("AccessMode", Kind::PtrStruct(&CLUSTER_ACCESS_MODE)),
        ("AccessibilityRequirements", Kind::PtrStruct(&CLUSTER_TOPOLOGY_REQUIREMENT)),
        ("CapacityRange", Kind::PtrStruct(&CLUSTER_CAPACITY_RANGE)),
        ("Secrets", Kind::Slice(&Kind::Struct(&CLUSTER_SECRET))),
        ("Availability", S),
    ],
);

/// `POST /volumes/create`: `VolumeCreateBody` (`CreateOptions`, `CreateRequest`).
pub static VOLUME_CREATE: Schema = schema(
    "VolumeCreateBody",
    &[
        ("Name", S),
        ("Driver", S),
        ("DriverOpts", STRING_MAP),
        ("Labels", STRING_MAP),
        ("ClusterVolumeSpec", Kind::PtrStruct(&CLUSTER_VOLUME_SPEC)),
    ],
);

/// `POST /auth`: `registry.AuthConfig` (`email` was dropped in dockerd 29; clients still send it).
pub static AUTH_CONFIG: Schema = schema(
    "AuthConfig",
    &[("username", S), ("password", S), ("auth", S), ("email", S), ("serveraddress", S), ("identitytoken", S), ("registrytoken", S)],
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::json::{canonicalize, Raw};
    use serde_json::json;

    fn unknown(schema: &'static Schema, s: &str) -> Vec<String> {
        canonicalize(Raw::parse(s.as_bytes()).unwrap(), &Kind::Struct(schema)).unwrap().unknown
    }

    /// Every place an opaque value remains, as `Schema.field` paths from the roots.
    fn any_paths(kind: &'static Kind, at: &str, out: &mut Vec<String>, depth: usize) {
        assert!(depth < 12, "schemas nest too deeply at {at}");
        match kind {
            Kind::Any => out.push(at.to_owned()),
            Kind::Scalar | Kind::PtrScalar => {}
            Kind::Struct(s) | Kind::PtrStruct(s) => {
                for name in s.field_names() {
                    let (_, k) = s.field(name).unwrap();
                    any_paths(k, &format!("{}.{name}", s.name), out, depth + 1);
                }
            }
            Kind::Map(e) | Kind::Slice(e) => any_paths(e, at, out, depth + 1),
        }
    }

    #[test]
    fn only_untyped_values_and_string_or_array_types_are_opaque() {
        let mut found = Vec::new();
        for root in [
            &CONTAINER_CREATE,
            &CONTAINER_UPDATE,
            &EXEC_CREATE,
            &EXEC_START,
            &CONFIG,
            &NETWORK_CREATE,
            &NETWORK_CONNECT,
            &NETWORK_DISCONNECT,
            &VOLUME_CREATE,
            &AUTH_CONFIG,
        ] {
            any_paths(Box::leak(Box::new(Kind::Struct(root))), root.name, &mut found, 0);
        }
        found.sort();
        found.dedup();
        // strslice.StrSlice: a string or an array of strings (`ContainerCreate.*`: promoted from the
        // embedded Config and HostConfig).
        let str_slices = [
            "Config.Cmd",
            "Config.Entrypoint",
            "Config.Shell",
            "ContainerCreate.CapAdd",
            "ContainerCreate.CapDrop",
            "ContainerCreate.Cmd",
            "ContainerCreate.Entrypoint",
            "ContainerCreate.Shell",
            "ExecConfig.Cmd",
            "HostConfig.CapAdd",
            "HostConfig.CapDrop",
        ];
        assert_eq!(found, str_slices);
    }

    #[test]
    fn the_newest_fields_are_known() {
        let create = r#"{"Image":"x","Healthcheck":{"Test":["CMD","true"],"StartInterval":1,"StartPeriod":2,"Interval":3,"Timeout":4,"Retries":1},
            "ExposedPorts":{"80/tcp":{}},"Volumes":{"/v":{}},"MacAddress":"02:42:ac:11:00:02",
            "HostConfig":{"Annotations":{"a":"b"},"ConsoleSize":[24,80],"CgroupnsMode":"private","KernelMemoryTCP":0,
              "PortBindings":{"80/tcp":[{"HostIp":"127.0.0.1","HostPort":"8080"}]},
              "DeviceRequests":[{"Driver":"nvidia","Count":-1,"DeviceIDs":["0"],"Capabilities":[["gpu"]],"Options":{}}],
              "BlkioWeightDevice":[{"Path":"/dev/sda","Weight":10}],"BlkioDeviceReadBps":[{"Path":"/dev/sda","Rate":1}],
              "Mounts":[
                {"Type":"bind","Source":"/s","Target":"/t","BindOptions":{"Propagation":"rprivate","NonRecursive":true,"CreateMountpoint":true,"ReadOnlyNonRecursive":true,"ReadOnlyForceRecursive":false}},
                {"Type":"volume","Source":"v","Target":"/v","VolumeOptions":{"NoCopy":true,"Labels":{},"Subpath":"a/b","DriverConfig":{"Name":"local","Options":{}}}},
                {"Type":"image","Source":"busybox","Target":"/i","ImageOptions":{"Subpath":"etc"}},
                {"Type":"tmpfs","Target":"/tm","TmpfsOptions":{"SizeBytes":1,"Mode":448,"Options":[["exec"]]}},
                {"Type":"cluster","Target":"/c","ClusterOptions":{}}]},
            "NetworkingConfig":{"EndpointsConfig":{"n":{"GwPriority":1,"DNSNames":["a"],"IPAMConfig":{"IPv4Address":"10.0.0.2","IPv6Address":"fd00::2","LinkLocalIPs":["169.254.1.1"]}}}}}"#;
        assert_eq!(unknown(&CONTAINER_CREATE, create), Vec::<String>::new());
        let network = r#"{"Name":"n","EnableIPv4":true,"EnableIPv6":true,"CheckDuplicate":true,
            "IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.0.0.0/24","IPRange":"10.0.0.0/25","Gateway":"10.0.0.1","AuxiliaryAddresses":{"h":"10.0.0.5"}}]}}"#;
        assert_eq!(unknown(&NETWORK_CREATE, network), Vec::<String>::new());
        let volume = r#"{"Name":"v","ClusterVolumeSpec":{"Group":"g","AccessMode":{"Scope":"single","Sharing":"none","MountVolume":{"FsType":"ext4","MountFlags":[]},"BlockVolume":{}},
            "AccessibilityRequirements":{"Requisite":[{"Segments":{"a":"b"}}],"Preferred":[]},"CapacityRange":{"RequiredBytes":1,"LimitBytes":2},
            "Secrets":[{"Key":"k","Secret":"s"}],"Availability":"active"}}"#;
        assert_eq!(unknown(&VOLUME_CREATE, volume), Vec::<String>::new());
        assert_eq!(unknown(&EXEC_START, r#"{"Detach":false,"Tty":true,"ConsoleSize":[1,2]}"#), Vec::<String>::new());
    }

    #[test]
    fn unknown_keys_are_found_at_any_depth() {
        let u = unknown(
            &CONTAINER_CREATE,
            r#"{"Image":"x","Foo":1,"Healthcheck":{"Foo":1},"ExposedPorts":{"80/tcp":{"Foo":1}},
                "HostConfig":{"Mounts":[{"Type":"image","ImageOptions":{"Foo":1}},{"TmpfsOptions":{"Foo":1}},{"ClusterOptions":{"Foo":1}}],
                  "PortBindings":{"80/tcp":[{"Foo":1}]},"DeviceRequests":[{"Foo":1}],"BlkioDeviceWriteIOps":[{"Foo":1}],"Ulimits":[{"Foo":1}]},
                "NetworkingConfig":{"EndpointsConfig":{"x":{"Foo":1,"IPAMConfig":{"Foo":1}}}}}"#,
        );
        assert_eq!(
            u,
            [
                "Foo",
                "Healthcheck.Foo",
                "ExposedPorts[\"80/tcp\"].Foo",
                "HostConfig.Mounts[0].ImageOptions.Foo",
                "HostConfig.Mounts[1].TmpfsOptions.Foo",
                "HostConfig.Mounts[2].ClusterOptions.Foo",
                "HostConfig.PortBindings[\"80/tcp\"][0].Foo",
                "HostConfig.DeviceRequests[0].Foo",
                "HostConfig.BlkioDeviceWriteIOps[0].Foo",
                "HostConfig.Ulimits[0].Foo",
                "NetworkingConfig.EndpointsConfig[\"x\"].Foo",
                "NetworkingConfig.EndpointsConfig[\"x\"].IPAMConfig.Foo",
            ]
        );
        assert_eq!(unknown(&NETWORK_CREATE, r#"{"IPAM":{"Config":[{"AuxAddress":{}}]}}"#), ["IPAM.Config[0].AuxAddress"]);
        assert_eq!(unknown(&NETWORK_DISCONNECT, r#"{"Container":"c","EndpointConfig":{}}"#), ["EndpointConfig"]);
        assert_eq!(unknown(&NETWORK_CONNECT, r#"{"Container":"c","Force":true}"#), ["Force"]);
        assert_eq!(
            unknown(&VOLUME_CREATE, r#"{"ClusterVolumeSpec":{"AccessMode":{"BlockVolume":{"x":1}}}}"#),
            ["ClusterVolumeSpec.AccessMode.BlockVolume.x"]
        );
        assert_eq!(unknown(&AUTH_CONFIG, r#"{"Username":"u","Foo":""}"#), ["Foo"]);
    }

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
