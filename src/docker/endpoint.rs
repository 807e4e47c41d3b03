//! Every route dockerd registers, and the classification of a request into one of them.
//!
//! The path is matched the way dockerd's router matches it: percent-decoded (`%2F` is a `/`), with
//! the optional `/vX.Y` prefix removed. A path dockerd would answer with a redirect (`//`, `/./`,
//! `/../`) is refused rather than guessed at. Names of images, plugins and distribution references
//! contain `/`: their routes take everything up to the last segment.

use hyper::Method;

use super::json::Schema;
use super::route::{ApiPath, ApiVersion};
use super::schema;

macro_rules! endpoints {
    ($($variant:ident = $method:ident $pattern:literal,)*) => {
        /// One route of the Engine API (moby `daemon/server/router`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Endpoint {
            $($variant,)*
        }

        /// Method, path pattern and endpoint. Literal routes come before patterns that could also
        /// match them (`/images/json` before `/images/{name*}/json`), as in dockerd.
        pub const ROUTES: &[(Method, &str, Endpoint)] = &[
            $((Method::$method, $pattern, Endpoint::$variant),)*
        ];

        impl Endpoint {
            pub fn name(self) -> &'static str {
                match self {
                    $(Endpoint::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

endpoints! {
    Ping = GET "/_ping",
    PingHead = HEAD "/_ping",
    Version = GET "/version",
    Info = GET "/info",
    Events = GET "/events",
    SystemDf = GET "/system/df",
    Auth = POST "/auth",
    Options = OPTIONS "/{any*}",

    ContainerList = GET "/containers/json",
    ContainerCreate = POST "/containers/create",
    ContainerPrune = POST "/containers/prune",
    // dockerd registers the checkpoint router before the container router.
    CheckpointDelete = DELETE "/containers/{id}/checkpoints/{checkpoint}",
    ContainerInspect = GET "/containers/{id*}/json",
    ContainerTop = GET "/containers/{id*}/top",
    ContainerLogs = GET "/containers/{id*}/logs",
    ContainerChanges = GET "/containers/{id*}/changes",
    ContainerExport = GET "/containers/{id*}/export",
    ContainerStats = GET "/containers/{id*}/stats",
    ContainerAttachWs = GET "/containers/{id*}/attach/ws",
    ContainerArchiveGet = GET "/containers/{id*}/archive",
    ContainerArchiveHead = HEAD "/containers/{id*}/archive",
    ContainerArchivePut = PUT "/containers/{id*}/archive",
    ContainerResize = POST "/containers/{id*}/resize",
    ContainerStart = POST "/containers/{id*}/start",
    ContainerStop = POST "/containers/{id*}/stop",
    ContainerRestart = POST "/containers/{id*}/restart",
    ContainerKill = POST "/containers/{id*}/kill",
    ContainerPause = POST "/containers/{id*}/pause",
    ContainerUnpause = POST "/containers/{id*}/unpause",
    ContainerUpdate = POST "/containers/{id*}/update",
    ContainerRename = POST "/containers/{id*}/rename",
    ContainerAttach = POST "/containers/{id*}/attach",
    ContainerWait = POST "/containers/{id*}/wait",
    ContainerExec = POST "/containers/{id*}/exec",
    ContainerDelete = DELETE "/containers/{id*}",
    CheckpointList = GET "/containers/{id*}/checkpoints",
    CheckpointCreate = POST "/containers/{id*}/checkpoints",

    ExecStart = POST "/exec/{id*}/start",
    ExecResize = POST "/exec/{id*}/resize",
    ExecInspect = GET "/exec/{id*}/json",
    Commit = POST "/commit",

    ImageList = GET "/images/json",
    ImageSearch = GET "/images/search",
    ImageGetAll = GET "/images/get",
    ImageLoad = POST "/images/load",
    ImageCreate = POST "/images/create",
    ImagePrune = POST "/images/prune",
    ImageGet = GET "/images/{name*}/get",
    ImageHistory = GET "/images/{name*}/history",
    ImageInspect = GET "/images/{name*}/json",
    ImageAttestations = GET "/images/{name*}/attestations",
    ImagePush = POST "/images/{name*}/push",
    ImageTag = POST "/images/{name*}/tag",
    ImageDelete = DELETE "/images/{name*}",
    DistributionInspect = GET "/distribution/{name*}/json",

    Build = POST "/build",
    BuildPrune = POST "/build/prune",
    BuildCancel = POST "/build/cancel",
    Session = POST "/session",
    Grpc = POST "/grpc",

    NetworkList = GET "/networks",
    NetworkListSlash = GET "/networks/",
    NetworkCreate = POST "/networks/create",
    NetworkPrune = POST "/networks/prune",
    NetworkInspect = GET "/networks/{id*}",
    NetworkConnect = POST "/networks/{id*}/connect",
    NetworkDisconnect = POST "/networks/{id*}/disconnect",
    NetworkDelete = DELETE "/networks/{id*}",

    VolumeList = GET "/volumes",
    VolumeCreate = POST "/volumes/create",
    VolumePrune = POST "/volumes/prune",
    VolumeInspect = GET "/volumes/{name*}",
    VolumeUpdate = PUT "/volumes/{name*}",
    VolumeDelete = DELETE "/volumes/{name*}",

    PluginList = GET "/plugins",
    PluginPrivileges = GET "/plugins/privileges",
    PluginPull = POST "/plugins/pull",
    PluginCreate = POST "/plugins/create",
    PluginInspect = GET "/plugins/{name*}/json",
    PluginDelete = DELETE "/plugins/{name*}",
    PluginEnable = POST "/plugins/{name*}/enable",
    PluginDisable = POST "/plugins/{name*}/disable",
    PluginPush = POST "/plugins/{name*}/push",
    PluginUpgrade = POST "/plugins/{name*}/upgrade",
    PluginSet = POST "/plugins/{name*}/set",

    SwarmInspect = GET "/swarm",
    SwarmInit = POST "/swarm/init",
    SwarmJoin = POST "/swarm/join",
    SwarmLeave = POST "/swarm/leave",
    SwarmUnlockKey = GET "/swarm/unlockkey",
    SwarmUpdate = POST "/swarm/update",
    SwarmUnlock = POST "/swarm/unlock",
    ServiceList = GET "/services",
    ServiceCreate = POST "/services/create",
    ServiceInspect = GET "/services/{id}",
    ServiceUpdate = POST "/services/{id}/update",
    ServiceDelete = DELETE "/services/{id}",
    ServiceLogs = GET "/services/{id}/logs",
    NodeList = GET "/nodes",
    NodeInspect = GET "/nodes/{id}",
    NodeDelete = DELETE "/nodes/{id}",
    NodeUpdate = POST "/nodes/{id}/update",
    TaskList = GET "/tasks",
    TaskInspect = GET "/tasks/{id}",
    TaskLogs = GET "/tasks/{id}/logs",
    SecretList = GET "/secrets",
    SecretCreate = POST "/secrets/create",
    SecretInspect = GET "/secrets/{id}",
    SecretUpdate = POST "/secrets/{id}/update",
    SecretDelete = DELETE "/secrets/{id}",
    ConfigList = GET "/configs",
    ConfigCreate = POST "/configs/create",
    ConfigInspect = GET "/configs/{id}",
    ConfigUpdate = POST "/configs/{id}/update",
    ConfigDelete = DELETE "/configs/{id}",

    DebugVars = GET "/debug/vars",
    DebugPprof = GET "/debug/{any*}",
}

/// What the body of a request to an endpoint is.
#[derive(Debug, Clone, Copy)]
pub enum BodyKind {
    /// No body is read by dockerd (one sent anyway is suspicious: see `POST /start` on old APIs).
    None,
    /// A JSON document of this Go type.
    Json(&'static Schema),
    /// A byte stream (tar archive, build context) passed through untouched.
    Stream,
}

impl Endpoint {
    pub fn body(self) -> BodyKind {
        use Endpoint::*;
        match self {
            ContainerCreate => BodyKind::Json(&schema::CONTAINER_CREATE),
            ContainerUpdate => BodyKind::Json(&schema::CONTAINER_UPDATE),
            ContainerExec => BodyKind::Json(&schema::EXEC_CREATE),
            ExecStart => BodyKind::Json(&schema::EXEC_START),
            Commit => BodyKind::Json(&schema::CONFIG),
            NetworkCreate => BodyKind::Json(&schema::NETWORK_CREATE),
            NetworkConnect => BodyKind::Json(&schema::NETWORK_CONNECT),
            NetworkDisconnect => BodyKind::Json(&schema::NETWORK_DISCONNECT),
            VolumeCreate => BodyKind::Json(&schema::VOLUME_CREATE),
            Auth => BodyKind::Json(&schema::AUTH_CONFIG),
            ContainerArchivePut | Build | ImageLoad | ImageCreate | PluginCreate | Session | Grpc => BodyKind::Stream,
            // Bodies of these are JSON the proxy does not model; policies refuse the endpoints.
            PluginPull | PluginUpgrade | PluginSet | PluginPush | SwarmInit | SwarmJoin | SwarmUpdate | SwarmUnlock | ServiceCreate
            | ServiceUpdate | NodeUpdate | SecretCreate | SecretUpdate | ConfigCreate | ConfigUpdate | CheckpointCreate | VolumeUpdate => {
                BodyKind::Stream
            }
            // `POST /containers/{id}/start` included: below API 1.24 dockerd applied a HostConfig sent
            // there (policies refuse those versions), from 1.24 on it refuses a body.
            _ => BodyKind::None,
        }
    }
}

/// A classified request: the endpoint and the path parameters (`{id}`, `{name*}`), decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub endpoint: Option<Endpoint>,
    pub version: Option<ApiVersion>,
    /// The decoded route without version prefix, e.g. `/containers/abc/json`.
    pub path: String,
    pub params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("invalid escape in path")]
    Escape,
    #[error("path is not in canonical form (dockerd would redirect it)")]
    NotClean,
}

impl Route {
    /// Classifies `raw_path` (as received, percent-encoded). An unknown route is not an error:
    /// `endpoint` is `None` and policies decide (the conservative policy refuses it).
    pub fn classify(method: &Method, raw_path: &str) -> Result<Route, PathError> {
        let decoded = percent_decode(raw_path)?;
        if !is_clean(&decoded) {
            return Err(PathError::NotClean);
        }
        let api = ApiPath::parse(&decoded);
        let version = api.version;
        let path = api.route.to_owned();
        for (m, pattern, endpoint) in ROUTES {
            if m != method {
                continue;
            }
            if let Some(params) = match_pattern(pattern, &path) {
                return Ok(Route { endpoint: Some(*endpoint), version, params, path });
            }
        }
        Ok(Route { endpoint: None, version, params: Vec::new(), path })
    }

    /// The first path parameter (the container, image, network, volume or exec reference).
    pub fn target(&self) -> Option<&str> {
        self.params.first().map(String::as_str)
    }

    /// Replaces the first path parameter (a name resolved to an ID, a name mangled) and rebuilds
    /// `path` from the endpoint's pattern.
    pub fn set_target(&mut self, value: &str) {
        let Some(endpoint) = self.endpoint else { return };
        let Some((_, pattern, _)) = ROUTES.iter().find(|(_, _, e)| *e == endpoint) else { return };
        match self.params.first_mut() {
            Some(first) => *first = value.to_owned(),
            None => return,
        }
        let mut params = self.params.iter();
        let segments: Vec<&str> =
            pattern.split('/').map(|seg| if seg.starts_with('{') { params.next().map_or("", String::as_str) } else { seg }).collect();
        self.path = segments.join("/");
    }
}

fn percent_decode(s: &str) -> Result<String, PathError> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits exactly: `u8::from_str_radix` alone would take `%+1` (Go refuses it).
            let hex = b.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
            out.push(hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or(PathError::Escape)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::Escape)
}

/// What Go's `path.Clean` leaves unchanged (a trailing slash is kept, as gorilla/mux keeps it).
fn is_clean(p: &str) -> bool {
    if !p.starts_with('/') {
        return false;
    }
    let inner = p.strip_suffix('/').unwrap_or(p);
    if inner.is_empty() {
        return p == "/";
    }
    inner[1..].split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

fn match_pattern(pattern: &str, path: &str) -> Option<Vec<String>> {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    if let Some(star) = pat.iter().position(|p| p.ends_with("*}")) {
        // Greedy parameter: the segments before and after it must match exactly.
        let after = pat.len() - star - 1;
        if segs.len() < pat.len() {
            return None;
        }
        let (head, tail) = (&segs[..star], &segs[segs.len() - after..]);
        let mid = &segs[star..segs.len() - after];
        if !segments_match(&pat[..star], head, &mut Vec::new()) {
            return None;
        }
        let mut params = Vec::new();
        let name = mid.join("/");
        if name.is_empty() {
            return None;
        }
        params.push(name);
        if !segments_match(&pat[star + 1..], tail, &mut params) {
            return None;
        }
        return Some(params);
    }
    if pat.len() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    segments_match(&pat, &segs, &mut params).then_some(params)
}

fn segments_match(pat: &[&str], segs: &[&str], params: &mut Vec<String>) -> bool {
    pat.len() == segs.len()
        && pat.iter().zip(segs).all(|(p, s)| {
            if p.starts_with('{') {
                if s.is_empty() {
                    return false;
                }
                params.push((*s).to_owned());
                true
            } else {
                p == s
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(m: Method, p: &str) -> Option<Endpoint> {
        Route::classify(&m, p).unwrap().endpoint
    }

    #[test]
    fn classifies_routes() {
        assert_eq!(ep(Method::GET, "/v1.41/containers/json"), Some(Endpoint::ContainerList));
        assert_eq!(ep(Method::POST, "/containers/create"), Some(Endpoint::ContainerCreate));
        assert_eq!(ep(Method::GET, "/containers/abc/json"), Some(Endpoint::ContainerInspect));
        assert_eq!(ep(Method::GET, "/images/json"), Some(Endpoint::ImageList));
        let r = Route::classify(&Method::GET, "/v1.41/images/docker.io/library/busybox:latest/json").unwrap();
        assert_eq!((r.endpoint, r.params), (Some(Endpoint::ImageInspect), vec!["docker.io/library/busybox:latest".to_owned()]));
        let r = Route::classify(&Method::DELETE, "/images/localhost:5000/a/b").unwrap();
        assert_eq!((r.endpoint, r.target()), (Some(Endpoint::ImageDelete), Some("localhost:5000/a/b")));
        assert_eq!(ep(Method::GET, "/images/a%2Fb/json"), Some(Endpoint::ImageInspect));
        assert_eq!(ep(Method::POST, "/containers/x/nope"), None);
        assert_eq!(ep(Method::GET, "/debug/pprof/heap"), Some(Endpoint::DebugPprof));
        assert_eq!(ep(Method::POST, "/v1.041/exec/e/start"), Some(Endpoint::ExecStart));
        assert_eq!(ep(Method::OPTIONS, "/anything/at/all"), Some(Endpoint::Options));
        assert_eq!(ep(Method::GET, "/networks/"), Some(Endpoint::NetworkListSlash));
        // dockerd's `{name:.*}`: the rest of the path is the name (link removal: `/web/db`).
        let r = Route::classify(&Method::DELETE, "/v1.41/containers/web/db").unwrap();
        assert_eq!((r.endpoint, r.target()), (Some(Endpoint::ContainerDelete), Some("web/db")));
        let r = Route::classify(&Method::GET, "/containers/a/b/json").unwrap();
        assert_eq!((r.endpoint, r.target()), (Some(Endpoint::ContainerInspect), Some("a/b")));
        assert_eq!(ep(Method::DELETE, "/containers/c/checkpoints/k"), Some(Endpoint::CheckpointDelete));
        assert_eq!(ep(Method::GET, "/containers/json"), Some(Endpoint::ContainerList));
        assert_eq!(ep(Method::DELETE, "/volumes/a/b"), Some(Endpoint::VolumeDelete));
        assert_eq!(ep(Method::GET, "/networks/a/b"), Some(Endpoint::NetworkInspect));
    }

    #[test]
    fn refuses_unclean_paths() {
        for p in ["/v1.41/containers/../images/json", "/containers/./json", "//containers/json", "/containers%2F..%2Fimages/json"] {
            assert_eq!(Route::classify(&Method::GET, p), Err(PathError::NotClean), "{p}");
        }
        assert_eq!(Route::classify(&Method::GET, "/a%zz"), Err(PathError::Escape));
        assert_eq!(Route::classify(&Method::GET, "/containers/%+a/json"), Err(PathError::Escape));
    }
}
