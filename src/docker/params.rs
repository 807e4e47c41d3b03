//! The query parameters dockerd reads, per endpoint.
//!
//! Transcribed from moby's routers (`api/server/router`, `daemon/server/router`): every
//! `r.Form.Get("…")`, `r.Form["…"]`, `r.Form.Has("…")`, `r.URL.Query().Get("…")` and
//! `httputils.BoolValue(r, "…")`/`Int64ValueOrZero(r, "…")` of the endpoint's handler and of the
//! helpers it calls, as the union over dockerd 17.06 to 29 (API 1.24 to 1.52) and moby master: a
//! parameter that only some daemon or API versions read is listed with a note saying which. Go's
//! `r.Form` keys are exact-case, so names are compared exactly (`fromimage` is not `fromImage`:
//! dockerd ignores it).
//!
//! A few parameters that no dockerd reads are listed too, because real clients send them
//! ([`Read::ClientOnly`]): dockerd ignores them, and refusing them would break the client.
//!
//! A policy that must understand everything a request can make the daemon do refuses a parameter
//! that is not listed here: a newer daemon may read it (and it may grant something).

use super::Endpoint;

/// Who reads a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Every dockerd from 20.10 on, at every API version.
    Always,
    /// Some daemon or API versions only (which ones: the note).
    Some(&'static str),
    /// No dockerd; sent by the named client, and ignored by the daemon.
    ClientOnly(&'static str),
}

/// One query parameter of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    pub read: Read,
}

const fn all(name: &'static str) -> Param {
    Param { name, read: Read::Always }
}

const fn some(name: &'static str, note: &'static str) -> Param {
    Param { name, read: Read::Some(note) }
}

const fn client(name: &'static str, who: &'static str) -> Param {
    Param { name, read: Read::ClientOnly(who) }
}

const NONE: &[Param] = &[];
const FILTERS: &[Param] = &[all("filters")];
const ARCHIVE: &[Param] = &[all("path")];
const RESIZE: &[Param] = &[all("h"), all("w")];
const ATTACH: &[Param] = &[all("detachKeys"), all("logs"), all("stream"), all("stdin"), all("stdout"), all("stderr")];
const ATTACH_WS: &[Param] = &[
    all("detachKeys"),
    all("logs"),
    all("stream"),
    some("stdin", "dockerd 23+ (API 1.42+); older daemons attach every stream"),
    some("stdout", "dockerd 23+ (API 1.42+)"),
    some("stderr", "dockerd 23+ (API 1.42+)"),
];
const STOP: &[Param] = &[all("t"), some("signal", "API 1.42+")];
const IMAGE_SAVE: &[Param] = &[all("names"), some("platform", "dockerd 28+ (API 1.48+), repeatable since 1.52")];
const SERVICE_LOGS: &[Param] = &[all("details"), all("follow"), all("since"), all("stderr"), all("stdout"), all("tail"), all("timestamps")];
const VERSION: &[Param] = &[all("version")];

/// `POST /build` (`newImageBuildOptions`).
const BUILD: &[Param] = &[
    all("buildargs"),
    some("buildid", "dockerd 19.03+"),
    all("cachefrom"),
    all("cgroupparent"),
    all("cpuperiod"),
    all("cpuquota"),
    all("cpusetcpus"),
    all("cpusetmems"),
    all("cpushares"),
    all("dockerfile"),
    all("extrahosts"),
    all("forcerm"),
    all("isolation"),
    all("labels"),
    all("memory"),
    all("memswap"),
    all("networkmode"),
    all("nocache"),
    some("outputs", "dockerd 19.03+, BuildKit"),
    some("platform", "API 1.32+"),
    all("pull"),
    all("q"),
    all("remote"),
    all("rm"),
    all("securityopt"),
    some("session", "dockerd 19.03+, BuildKit"),
    all("shmsize"),
    all("squash"),
    all("t"),
    all("target"),
    all("ulimits"),
    some("version", "dockerd 19.03+: the builder (1 or 2)"),
];

/// The query parameters dockerd reads for `endpoint` (and the ones real clients send that it
/// ignores).
pub fn params(endpoint: Endpoint) -> &'static [Param] {
    use Endpoint::*;
    match endpoint {
        Ping | PingHead | Version | Info | Auth | Options => NONE,
        Events => const { &[all("filters"), all("since"), all("until")] },
        SystemDf => const { &[some("type", "API 1.42+, repeatable"), some("verbose", "API 1.52+")] },

        ContainerList => {
            const {
                &[
                    all("all"),
                    all("filters"),
                    all("limit"),
                    all("size"),
                    some("since", "dockerd up to 28"),
                    some("before", "dockerd up to 28"),
                    client("trunc_cmd", "docker-py (docker-compose v1): containers(trunc=...)"),
                ]
            }
        }
        ContainerCreate => const { &[all("name"), some("platform", "API 1.41+")] },
        ContainerPrune | ImagePrune | NetworkPrune | VolumePrune => FILTERS,
        ContainerInspect => const { &[all("size")] },
        ContainerTop => const { &[all("ps_args")] },
        ContainerLogs => {
            const {
                &[
                    all("details"),
                    all("follow"),
                    all("since"),
                    all("stderr"),
                    all("stdout"),
                    all("tail"),
                    all("timestamps"),
                    some("until", "API 1.35+"),
                    some("format", "moby master"),
                ]
            }
        }
        ContainerChanges | ContainerExport | ContainerPause | ContainerUnpause | ContainerUpdate | ContainerExec => NONE,
        ContainerStats => const { &[all("stream"), some("one-shot", "API 1.41+")] },
        ContainerAttachWs => ATTACH_WS,
        ContainerAttach => ATTACH,
        ContainerArchiveGet | ContainerArchiveHead => ARCHIVE,
        ContainerArchivePut => const { &[all("path"), all("noOverwriteDirNonDir"), all("copyUIDGID")] },
        ContainerResize | ExecResize => RESIZE,
        ContainerStart => const { &[all("checkpoint"), all("checkpoint-dir")] },
        ContainerStop | ContainerRestart => STOP,
        ContainerKill => const { &[all("signal")] },
        ContainerRename => const { &[all("name")] },
        ContainerWait => const { &[all("condition")] },
        ContainerDelete => const { &[all("force"), all("link"), all("v")] },
        CheckpointList | CheckpointDelete => const { &[all("dir")] },
        CheckpointCreate => NONE,

        ExecStart | ExecInspect => NONE,
        Commit => const { &[all("author"), all("changes"), all("comment"), all("container"), all("pause"), all("repo"), all("tag")] },

        ImageList => {
            const {
                &[
                    all("all"),
                    all("filters"),
                    some("filter", "API 1.40 and older (20.10), 1.24 and older (master): a reference glob"),
                    some("shared-size", "API 1.42+"),
                    some("manifests", "API 1.47+"),
                    some("identity", "API 1.54+"),
                    client("only_ids", "docker-py (docker-compose v1): images(quiet=...)"),
                ]
            }
        }
        ImageSearch => const { &[all("term"), all("limit"), all("filters")] },
        ImageGetAll | ImageGet => IMAGE_SAVE,
        ImageLoad => const { &[all("quiet"), some("platform", "dockerd 28+ (API 1.48+), repeatable since 1.52")] },
        ImageCreate => {
            const { &[all("fromImage"), all("fromSrc"), all("repo"), all("tag"), all("message"), all("changes"), some("platform", "API 1.32+")] }
        }
        ImageHistory => const { &[some("platform", "dockerd 28+ (API 1.48+)")] },
        ImageInspect => const { &[some("manifests", "dockerd 28+ (API 1.48+)"), some("platform", "dockerd 28+ (API 1.49+)")] },
        ImageAttestations => const { &[all("platform"), all("type"), all("statement")] },
        ImagePush => const { &[all("tag"), some("platform", "dockerd 27+ (API 1.46+)")] },
        ImageTag => const { &[all("repo"), all("tag"), client("force", "docker-py (docker-compose v1): tag(force=...)")] },
        ImageDelete => const { &[all("force"), all("noprune"), some("platforms", "dockerd 28+ (API 1.50+), repeatable")] },
        DistributionInspect => NONE,

        Build => BUILD,
        BuildPrune => {
            const {
                &[
                    all("all"),
                    all("filters"),
                    some("keep-storage", "API 1.51 and older"),
                    some("reserved-space", "dockerd 28+ (API 1.48+)"),
                    some("max-used-space", "dockerd 28+ (API 1.48+)"),
                    some("min-free-space", "dockerd 28+ (API 1.48+)"),
                ]
            }
        }
        BuildCancel => const { &[all("id")] },
        Session | Grpc => NONE,

        NetworkList | NetworkListSlash => FILTERS,
        NetworkCreate | NetworkConnect | NetworkDisconnect | NetworkDelete => NONE,
        NetworkInspect => const { &[all("verbose"), all("scope")] },

        VolumeList => FILTERS,
        VolumeCreate | VolumeInspect => NONE,
        VolumeUpdate => VERSION,
        VolumeDelete => const { &[all("force")] },

        PluginList => FILTERS,
        PluginPrivileges => const { &[all("remote")] },
        PluginPull => const { &[all("remote"), all("name")] },
        PluginCreate => const { &[all("name")] },
        PluginInspect | PluginPush | PluginSet => NONE,
        PluginDelete | PluginDisable => const { &[all("force")] },
        PluginEnable => const { &[all("timeout")] },
        PluginUpgrade => const { &[all("remote")] },

        SwarmInspect | SwarmInit | SwarmJoin | SwarmUnlockKey | SwarmUnlock => NONE,
        SwarmLeave => const { &[all("force")] },
        SwarmUpdate => const { &[all("version"), all("rotateWorkerToken"), all("rotateManagerToken"), all("rotateManagerUnlockKey")] },
        ServiceList => const { &[all("filters"), some("status", "API 1.41+")] },
        ServiceCreate => const { &[some("version", "dockerd 19.03 and older")] },
        ServiceInspect => const { &[all("insertDefaults")] },
        ServiceUpdate => const { &[all("version"), all("registryAuthFrom"), all("rollback")] },
        ServiceDelete => NONE,
        ServiceLogs | TaskLogs => SERVICE_LOGS,
        NodeList | TaskList | SecretList | ConfigList => FILTERS,
        NodeInspect | TaskInspect | SecretCreate | SecretInspect | SecretDelete | ConfigCreate | ConfigInspect | ConfigDelete => NONE,
        NodeDelete => const { &[all("force")] },
        NodeUpdate | SecretUpdate | ConfigUpdate => VERSION,

        DebugVars | DebugPprof => NONE,
    }
}

/// The parameter `name` of `endpoint`, if dockerd (or a real client) knows it. Exact case.
pub fn find(endpoint: Endpoint, name: &str) -> Option<&'static Param> {
    params(endpoint).iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::endpoint::ROUTES;

    #[test]
    fn names_are_exact() {
        assert!(find(Endpoint::ImageCreate, "fromImage").is_some());
        assert!(find(Endpoint::ImageCreate, "fromimage").is_none(), "r.Form keys are exact-case");
        assert!(find(Endpoint::ImageCreate, "fromSrc").is_some());
        assert!(find(Endpoint::ContainerCreate, "name").is_some());
        assert!(find(Endpoint::ContainerCreate, "Name").is_none());
        assert!(find(Endpoint::ContainerCreate, "hostconfig").is_none());
        assert!(find(Endpoint::Ping, "x").is_none());
        assert!(matches!(find(Endpoint::ImageList, "filter").map(|p| p.read), Some(Read::Some(_))));
        assert!(matches!(find(Endpoint::ContainerList, "trunc_cmd").map(|p| p.read), Some(Read::ClientOnly(_))));
    }

    #[test]
    fn every_endpoint_lists_each_name_once() {
        for (_, pattern, e) in ROUTES {
            let ps = params(*e);
            for (i, p) in ps.iter().enumerate() {
                assert!(!p.name.is_empty(), "{pattern}");
                assert!(ps[i + 1..].iter().all(|q| q.name != p.name), "{pattern}: {} twice", p.name);
            }
        }
    }

    #[test]
    fn what_real_clients_send_is_known() {
        // The docker CLI (20.10 and 28) and docker-py, as they build their queries.
        let sent: &[(Endpoint, &[&str])] = &[
            (Endpoint::ContainerList, &["all", "limit", "size", "trunc_cmd", "since", "before", "filters"]),
            (Endpoint::ContainerCreate, &["name", "platform"]),
            (Endpoint::ContainerLogs, &["stdout", "stderr", "since", "until", "timestamps", "details", "follow", "tail"]),
            (Endpoint::ContainerStats, &["stream", "one-shot"]),
            (Endpoint::ContainerStop, &["t", "signal"]),
            (Endpoint::ImageList, &["all", "filters", "filter", "shared-size", "manifests", "only_ids"]),
            (Endpoint::ImageCreate, &["fromImage", "tag", "platform", "fromSrc", "repo", "message", "changes"]),
            (Endpoint::ImageTag, &["repo", "tag", "force"]),
            (Endpoint::ImageDelete, &["force", "noprune", "platforms"]),
            (Endpoint::ImageLoad, &["quiet", "platform"]),
            (Endpoint::ImageGet, &["names", "platform"]),
            (Endpoint::BuildPrune, &["all", "keep-storage", "reserved-space", "max-used-space", "min-free-space", "filters"]),
            (
                Endpoint::Build,
                &[
                    "t",
                    "remote",
                    "q",
                    "nocache",
                    "rm",
                    "forcerm",
                    "pull",
                    "dockerfile",
                    "buildargs",
                    "labels",
                    "platform",
                    "version",
                    "session",
                    "buildid",
                    "outputs",
                ],
            ),
            (Endpoint::Commit, &["container", "repo", "tag", "comment", "author", "changes", "pause"]),
            (Endpoint::SystemDf, &["type"]),
        ];
        for (e, names) in sent {
            for n in *names {
                assert!(find(*e, n).is_some(), "{} {n}", e.name());
            }
        }
    }
}
