//! BuildKit builds in a namespace: the gRPC calls of `/grpc` (the client calls the daemon's
//! `moby.buildkit.v1.Control`) and `/session` (the daemon calls the client's session services),
//! relayed call by call ([`crate::http::grpc`]) and judged here.
//!
//! - Control: `Solve` is checked and rewritten ([`solve`]); `Status` is scoped to the namespace's
//!   build refs and its progress text shows the client's names ([`status`]); `ListWorkers` and `Info` pass; build history shows and touches the namespace's
//!   builds only ([`history`]), disk usage and prune its own cache mounts only ([`usage`]); the
//!   content store's `Info` and `Read` serve only the blobs of its build records ([`content`]);
//!   every other method is refused.
//! - Session: the daemon reads files, secrets, SSH agents and registry credentials from the client.
//!   These pass, except that registry authentication for ctproxy's registry proxy is answered by
//!   ctproxy with a token of the namespace ([`auth`]), and the Dockerfile ([`filesync`]) is rewritten on its way to the daemon
//!   ([`dockerfile`]): image references name the namespace's images. Other methods are refused.
//! - Build refs, session IDs and session shared keys are prefixed with the namespace and a `.`
//!   (which no namespace name has), so that no job can watch, use or share another namespace's
//!   build or session, and a build ref says which namespace it is.

mod auth;
mod cache;
mod content;
mod dockerfile;
mod filesync;
mod history;
mod solve;
mod status;
mod usage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use hyper::header::{HeaderMap, HeaderValue};

use super::{Daemon, Namespace, NsError};
use crate::docker::buildkit::StatusRequest;
use crate::docker::Endpoint;
use crate::http::grpc::{self, code, Call, CallPolicy, Callers};
use crate::http::StreamRelay;
use crate::plugin::{ns_refusal, Layer, Remedy};

/// What a `Solve` told the session that serves its files: the build arguments, for expanding the
/// Dockerfile's global `ARG`s in `FROM` as the daemon will.
#[derive(Debug, Clone, Default)]
pub(super) struct SolveFacts {
    pub build_args: HashMap<String, Option<String>>,
}

/// The builds in progress (namespaced IDs).
#[derive(Default)]
struct Builds {
    /// Facts by session ID, from the latest `Solve` that named the session.
    sessions: HashMap<String, SolveFacts>,
    /// Session ID by build ref.
    builds: HashMap<String, String>,
}

fn builds() -> &'static Mutex<Builds> {
    static S: OnceLock<Mutex<Builds>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// The session headers of `POST /session`.
const SESSION_UUID: &str = "x-docker-expose-session-uuid";
const SESSION_SHAREDKEY: &str = "x-docker-expose-session-sharedkey";
/// The gRPC metadata that names the build of a frontend call (BuildKit's `client/buildid`).
const BUILD_ID: &str = "buildkit-controlapi-buildid";

impl Namespace {
    /// A build ref, session ID or shared key as the daemon sees it: unique to the namespace.
    /// Namespace names have no `.`: `<ns>.<id>` belongs to one namespace only.
    pub(super) fn scoped_id(&self, id: &str) -> String {
        format!("{}.{id}", self.name)
    }

    /// The client's ID for a scoped one, if it is the namespace's.
    pub(super) fn unscoped_id<'a>(&self, scoped: &'a str) -> Option<&'a str> {
        scoped.strip_prefix(self.name.as_str())?.strip_prefix('.')
    }

    /// `POST /session`: the session's ID and shared key are made the namespace's.
    pub(super) fn scope_session_headers(&self, headers: &mut HeaderMap) -> Result<(), NsError> {
        for key in [SESSION_UUID, SESSION_SHAREDKEY] {
            let v = headers.get(key).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            if key == SESSION_UUID && v.is_empty() {
                return Err(NsError::Malformed("a BuildKit session needs an X-Docker-Expose-Session-Uuid header".into()));
            }
            let scoped = HeaderValue::from_str(&self.scoped_id(&v)).map_err(|_| NsError::Malformed(format!("invalid {key} header")))?;
            headers.insert(key, scoped);
        }
        Ok(())
    }

    /// The relay of a `/grpc` or `/session` upgrade (`headers` as forwarded), or `None` for other
    /// endpoints.
    pub fn buildkit_relay(&self, daemon: &Daemon, endpoint: Endpoint, headers: &HeaderMap) -> Option<StreamRelay> {
        let (callers, policy): (Callers, Arc<dyn CallPolicy>) = match endpoint {
            Endpoint::Grpc => (Callers::Client, Arc::new(Control { ns: self.clone() })),
            Endpoint::Session => {
                let session = headers.get(SESSION_UUID).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                (Callers::Daemon, Arc::new(Session { ns: self.clone(), daemon: daemon.clone(), session, key: auth::session_key() }))
            }
            _ => return None,
        };
        Some(Box::new(move |client, upstream| Box::pin(grpc::relay(client, upstream, callers, policy))))
    }
}

/// Logs a refused call to the audit log and answers it.
fn refuse(ns: &Namespace, call: Call, status: u32, message: &str) {
    tracing::warn!(
        target: "ctproxy::audit",
        namespace = %ns.name,
        method = %call.method(),
        reason = %message,
        "BuildKit call refused by namespace"
    );
    grpc::refuse(call.respond, status, &refusal_message(status, message));
}

/// The message a BuildKit refusal carries to the client (as `grpc-message`, one line): what was
/// refused, by [`Layer::BuildKit`], and the remedy ([`ns_refusal`]), or `remedy` for one a setting
/// lifts. A malformed call (`INVALID_ARGUMENT`) only says what is wrong, as a 400 does.
pub(super) fn refusal_message(status: u32, message: &str) -> String {
    refusal_message_with(status, message, &Remedy::Never)
}

pub(super) fn refusal_message_with(status: u32, message: &str, remedy: &Remedy) -> String {
    if status == code::INVALID_ARGUMENT {
        return format!("ctproxy: {message}");
    }
    format!("ctproxy: {}", ns_refusal(message, Layer::BuildKit, remedy))
}

/// The client's calls of `moby.buildkit.v1.Control` on `/grpc`.
struct Control {
    ns: Namespace,
}

impl CallPolicy for Control {
    fn handle(self: Arc<Self>, call: Call) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let ns = &self.ns;
            match call.method() {
                "/moby.buildkit.v1.Control/Solve" => {
                    let mut ids = None;
                    // A failed build's error may name the daemon's names (`failed to push ...`).
                    let errors = status::StatusText::error_mapper(ns);
                    grpc::unary_mapped(
                        call,
                        |msg| {
                            let (out, solve, facts) = ns.check_solve(&msg).map_err(|m| denied(ns, "Solve", m))?;
                            if let Ok(mut s) = builds().lock() {
                                s.sessions.insert(solve.session.clone(), facts);
                                s.builds.insert(solve.build.clone(), solve.session.clone());
                            }
                            ids = Some(solve);
                            Ok(out)
                        },
                        Some(errors),
                    )
                    .await;
                    if let (Some(solve), Ok(mut s)) = (ids, builds().lock()) {
                        s.sessions.remove(&solve.session);
                        s.builds.remove(&solve.build);
                    }
                }
                m if m.starts_with("/moby.buildkit.v1.frontend.LLBBridge/") => self.gateway(call).await,
                "/moby.buildkit.v1.Control/Status" => {
                    // The progress names what the daemon did by the daemon's names: shown as the
                    // client's own ([`status`]).
                    let map = status::StatusText::mapper(ns);
                    grpc::unary_mapped(
                        call,
                        |msg| {
                            let mut req: StatusRequest = prost::Message::decode(msg)
                                .map_err(|e| (code::INVALID_ARGUMENT, format!("ctproxy: invalid StatusRequest: {e}")))?;
                            req.r#ref = ns.scoped_id(&req.r#ref);
                            Ok(prost::Message::encode_to_vec(&req).into())
                        },
                        Some(map),
                    )
                    .await
                }
                "/moby.buildkit.v1.Control/ListWorkers" | "/moby.buildkit.v1.Control/Info" => grpc::pass(call).await,
                "/moby.buildkit.v1.Control/ListenBuildHistory" => {
                    let Some(u) = grpc::read_unary_or_refuse(call).await else { return };
                    match ns.check_history_request(&u.msg) {
                        Ok((msg, answers)) => grpc::relay_rewritten(u.upstream, u.head, u.respond, msg, answers).await,
                        Err(m) => deny(ns, "ListenBuildHistory", u.respond, m),
                    }
                }
                "/moby.buildkit.v1.Control/UpdateBuildHistory" => {
                    grpc::unary(call, |msg| ns.check_history_update(&msg).map_err(|m| denied(ns, "UpdateBuildHistory", m))).await
                }
                "/moby.buildkit.v1.Control/DiskUsage" => {
                    let Some(u) = grpc::read_unary_or_refuse(call).await else { return };
                    match ns.check_disk_usage(&u.msg) {
                        Ok(_) => grpc::relay_rewritten(u.upstream, u.head, u.respond, u.msg, usage::DiskUsageAnswers(ns.clone())).await,
                        Err(m) => deny(ns, "DiskUsage", u.respond, m),
                    }
                }
                "/moby.buildkit.v1.Control/Prune" => self.prune(call).await,
                "/containerd.services.content.v1.Content/Info" | "/containerd.services.content.v1.Content/Read" => {
                    let fields = if call.method().ends_with("/Info") { 1 } else { 3 };
                    grpc::unary(call, |msg| match ns.check_content(&msg, fields) {
                        Ok(out) => Ok(out),
                        Err((true, m)) => Err((code::NOT_FOUND, m)),
                        Err((false, m)) => Err(denied(ns, "Content", m)),
                    })
                    .await
                }
                m => {
                    let msg = format!("the BuildKit method {m} is not available in a namespace");
                    refuse(ns, call, code::UNIMPLEMENTED, &msg)
                }
            }
        })
    }
}

impl Control {
    /// `Prune`: the daemon's `DiskUsage` with the client's filters finds the namespace's records,
    /// then `Prune` names exactly those (see [`usage`]).
    async fn prune(&self, call: Call) {
        let ns = &self.ns;
        let Some(mut u) = grpc::read_unary_or_refuse(call).await else { return };
        let (req, du) = match ns.check_prune(&u.msg) {
            Ok(r) => r,
            Err(m) => return deny(ns, "Prune", u.respond, m),
        };
        let answer = match grpc::call(&mut u.upstream, &u.head, "/moby.buildkit.v1.Control/DiskUsage", du).await {
            Ok(a) => a,
            Err(e) => return grpc::refuse(u.respond, code::UNKNOWN, &format!("ctproxy: reading the build cache's disk usage: {e}")),
        };
        let mut own = Vec::new();
        for msg in &answer {
            match ns.own_ids(msg) {
                Ok(ids) => own.extend(ids),
                Err(e) => return grpc::refuse(u.respond, code::INTERNAL, &format!("ctproxy: invalid DiskUsageResponse: {e}")),
            }
        }
        if own.is_empty() {
            return grpc::answer_empty(u.respond);
        }
        match ns.scoped_prune(&req, &own) {
            Ok(msg) => grpc::relay_rewritten(u.upstream, u.head, u.respond, msg, usage::PruneAnswers { ns: ns.clone(), own }).await,
            Err(m) => grpc::refuse(u.respond, code::INTERNAL, &format!("ctproxy: {m}")),
        }
    }

    /// The calls of a client-side frontend (buildx's gateway client) within a build, which
    /// build ID metadata names: scoped to the namespace's builds.
    async fn gateway(&self, mut call: Call) {
        let ns = &self.ns;
        let Some(build) = call.metadata(BUILD_ID).filter(|b| !b.is_empty()).map(|b| ns.scoped_id(b)) else {
            return refuse(ns, call, code::INVALID_ARGUMENT, "a frontend call without build ID metadata");
        };
        match HeaderValue::from_str(&build) {
            Ok(v) => call.req.headers_mut().insert(BUILD_ID, v),
            Err(_) => return refuse(ns, call, code::INVALID_ARGUMENT, "invalid buildid metadata"),
        };
        let method = call.method().rsplit('/').next().unwrap_or("").to_owned();
        match method.as_str() {
            "Solve" => {
                grpc::unary(call, |msg| {
                    let (out, facts) = ns.check_gateway_solve(&msg).map_err(|m| denied(ns, "LLBBridge.Solve", m))?;
                    if let Ok(mut s) = builds().lock() {
                        if let Some(session) = s.builds.get(&build).cloned() {
                            s.sessions.insert(session, facts);
                        }
                    }
                    Ok(out)
                })
                .await
            }
            "Ping" | "Return" | "Inputs" | "Warn" | "ReadFile" | "ReadDir" | "StatFile" | "Evaluate" => grpc::pass(call).await,
            m => {
                let msg = format!("the BuildKit frontend method {m} is not available in a namespace");
                refuse(ns, call, code::UNIMPLEMENTED, &msg)
            }
        }
    }
}

/// A refused request message: audit-logged and answered.
fn deny(ns: &Namespace, method: &str, respond: h2::server::SendResponse<bytes::Bytes>, message: String) {
    let (status, message) = denied(ns, method, message);
    grpc::refuse(respond, status, &message);
}

/// A refused message: audit-logged, and the status the client prints.
fn denied(ns: &Namespace, method: &str, message: String) -> (u32, String) {
    tracing::warn!(target: "ctproxy::audit", namespace = %ns.name, method, reason = %message, "BuildKit call refused by namespace");
    (code::PERMISSION_DENIED, refusal_message(code::PERMISSION_DENIED, &message))
}

/// The daemon's calls of the client's session services on `/session`.
struct Session {
    ns: Namespace,
    daemon: Daemon,
    /// The session ID as the daemon knows it (namespaced).
    session: String,
    /// This session's token authority key for the registry proxy ([`auth`]).
    key: Vec<u8>,
}

impl Session {
    /// `moby.filesync.v1.Auth`: for the registry proxy's host ctproxy answers ([`auth`]); for
    /// other registries the client does.
    async fn auth(&self, call: Call) {
        let method = call.method().rsplit('/').next().unwrap_or("").to_owned();
        if !matches!(method.as_str(), "Credentials" | "FetchToken" | "GetTokenAuthority" | "VerifyTokenAuthority") {
            let msg = format!("the session method {} is not available in a namespace", call.method());
            return refuse(&self.ns, call, code::UNIMPLEMENTED, &msg);
        }
        let u = match grpc::read_unary(call).await {
            Ok(u) => u,
            Err((respond, e)) => return grpc::refuse(respond, code::INVALID_ARGUMENT, &format!("ctproxy: {e}")),
        };
        match auth::host_of(&method, &u.msg) {
            Some(host) if host == self.ns.settings.registry => self.ns.registry_proxy_auth(u, &method, &self.key).await,
            Some(_) => grpc::forward(u, None).await,
            None => grpc::refuse(u.respond, code::INVALID_ARGUMENT, &format!("ctproxy: an invalid Auth.{method} request")),
        }
    }
}

impl CallPolicy for Session {
    fn handle(self: Arc<Self>, call: Call) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            match call.method() {
                "/moby.filesync.v1.FileSync/DiffCopy" if call.metadata("dir-name") == Some("dockerfile") => {
                    let facts = builds().lock().ok().and_then(|s| s.sessions.get(&self.session).cloned()).unwrap_or_default();
                    filesync::dockerfile(&self.ns, &self.daemon, facts, call).await
                }
                m if m.starts_with("/moby.filesync.v1.Auth/") => self.auth(call).await,
                "/moby.filesync.v1.FileSync/DiffCopy"
                | "/moby.buildkit.secrets.v1.Secrets/GetSecret"
                | "/moby.sshforward.v1.SSH/CheckAgent"
                | "/moby.sshforward.v1.SSH/ForwardAgent"
                | "/grpc.health.v1.Health/Check" => grpc::pass(call).await,
                m => {
                    let msg = format!("the session method {m} is not available in a namespace");
                    refuse(&self.ns, call, code::UNIMPLEMENTED, &msg)
                }
            }
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use super::super::{NsName, Settings};
    use super::Namespace;

    /// A namespace with the test settings.
    pub fn namespace(name: &str) -> Namespace {
        let settings = Settings {
            registry: "127.0.0.1:5001".into(),
            shared_images: Vec::new(),
            tokens: None,
            max_response: 1 << 20,
            pool: None,
            shared_ids: Default::default(),
        };
        Namespace::new(NsName::new(name).expect("namespace name"), Arc::new(settings))
    }

    /// A method of no known service, or unknown in the Control service (the real CLI never sends
    /// one), is refused with gRPC status UNIMPLEMENTED and a message naming it; the daemon never
    /// sees the call.
    #[tokio::test]
    async fn unknown_methods_are_refused_by_name() {
        use crate::http::grpc::{self, Callers};
        let (client, client_end) = tokio::io::duplex(1 << 16);
        let (daemon, daemon_end) = tokio::io::duplex(1 << 16);
        let policy = Arc::new(super::Control { ns: namespace("team") });
        tokio::spawn(grpc::relay(Box::new(client_end), Box::new(daemon_end), Callers::Client, policy));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let daemon_seen = seen.clone();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(daemon).await.expect("daemon handshake");
            while let Some(Ok((req, _respond))) = conn.accept().await {
                daemon_seen.lock().expect("lock").push(req.uri().path().to_owned());
            }
        });
        let (mut send, conn) = h2::client::handshake(client).await.expect("client handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for method in [
            "/moby.buildkit.v1.Control/Frobnicate",
            "/moby.buildkit.v1.Control/solve",
            "/moby.buildkit.v1.Other/Solve",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            let req = http::Request::post(format!("http://daemon{method}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let (rsp, mut body) = send.send_request(req, false).expect("send");
            body.send_data(grpc::frame(b""), true).expect("message");
            let rsp = rsp.await.expect("response");
            let header = |k: &str| rsp.headers().get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            assert_eq!(header("grpc-status"), grpc::code::UNIMPLEMENTED.to_string(), "{method}");
            let message = header("grpc-message");
            assert!(message.starts_with("ctproxy: ") && message.contains(method), "{method}: {message}");
        }
        assert!(seen.lock().expect("lock").is_empty(), "the daemon saw {:?}", seen.lock().expect("lock"));
    }

    #[test]
    fn refusals_name_the_layer_and_the_remedy() {
        use super::{code, refusal_message};
        let m = refusal_message(code::PERMISSION_DENIED, "the build output \"local\" is not available in a namespace");
        assert_eq!(
            m,
            "ctproxy: the build output \"local\" is not available in a namespace; refused by the namespace (BuildKit); no setting allows it"
        );
        let m = refusal_message(code::UNIMPLEMENTED, "the BuildKit method /x/Y is not available in a namespace");
        assert!(m.ends_with("; refused by the namespace (BuildKit); no setting allows it"), "{m}");
        // A malformed call only says what is wrong.
        assert_eq!(refusal_message(code::INVALID_ARGUMENT, "invalid buildid metadata"), "ctproxy: invalid buildid metadata");
    }

    #[test]
    fn scoped_ids_name_one_namespace() {
        let (a, b) = (namespace("team"), namespace("team-a"));
        assert_eq!(a.scoped_id("a-x"), "team.a-x");
        assert_ne!(a.scoped_id("a-x"), b.scoped_id("x"));
        assert_eq!(a.unscoped_id("team.a-x"), Some("a-x"));
        assert_eq!(b.unscoped_id("team.a-x"), None);
        assert_eq!(a.unscoped_id("team-a.x"), None);
    }
}
