//! The Docker proxy: the [`Handler`] that answers every request of a listener.
//!
//! Per request, in order: authenticate (the listener's authenticator chain), classify the route,
//! parse the query as Go does, run the policy chain on the head, decode and check the JSON body if a
//! policy reads it, then forward what was checked (re-encoded path, query and body) and take over
//! hijacked connections (attach, exec start, BuildKit `/session`). A listener with no authenticators
//! and no policies skips straight to forwarding: the transparent proxy costs nothing extra.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};

use crate::docker::json::{canonicalize, Kind, Raw};
use crate::docker::schema::normalize_create;
use crate::docker::{store_race, ApiPath, BodyKind, Endpoint, Query, Route};
use crate::http::{
    boxed_body, client_body, full_body, respond, AccessIdentity, ClientBody, ConnCtx, ForwardError, Forwarder, Handler, ProxyBody,
    RelayAsk, RelayTo, SendWhole, UpstreamBody, WholeLimits,
};
use crate::plugin::auth::{self, Authenticator};
use crate::plugin::namespace::request::Prepared;
use crate::plugin::namespace::{self, After, Daemon, Namespace, NsError, NsRequest};
use crate::plugin::policy::{Denied, PolicyChain};
use crate::plugin::{Identity, JsonBody, RequestCtx};

/// What a listener does with a request before forwarding it.
#[derive(Clone, Default)]
pub struct Pipeline {
    pub auth: Vec<Arc<dyn Authenticator>>,
    pub policies: PolicyChain,
    /// Identities with their own policy chain instead of the listener's.
    pub per_identity: HashMap<Arc<str>, PolicyChain>,
    pub max_json_body: usize,
    /// The namespace every client of the listener works in.
    pub namespace: Option<Namespace>,
    /// Identities with a namespace of their own.
    pub per_identity_ns: HashMap<Arc<str>, Namespace>,
    /// The listener's own Docker socket (a job's): binds of the host's Docker socket in container
    /// configs are redirected to it, and policies let containers mount it.
    pub own_socket: Option<Arc<std::path::Path>>,
    /// Host paths its containers may bind besides what the policies allow (a job's project cache).
    pub granted_binds: Arc<Vec<crate::plugin::GrantedBind>>,
    /// Added to every container created through this listener (after the policies).
    pub decorate: Option<Arc<dyn crate::plugin::CreateDecorator>>,
}

impl Pipeline {
    /// Nothing to check or rewrite in any request.
    fn is_passthrough(&self) -> bool {
        self.checks_nothing() && self.decorate.is_none()
    }

    /// No authentication, policy or namespace: only container creates may be rewritten (by the
    /// decorator), every other request can be relayed as it is.
    fn checks_nothing(&self) -> bool {
        self.auth.is_empty()
            && self.policies.is_empty()
            && self.per_identity.is_empty()
            && self.namespace.is_none()
            && self.per_identity_ns.is_empty()
    }

    /// A namespaced listener (a job socket) where every request has the same identity, policies
    /// and namespace (no authentication, nothing per identity): a request's head decides whether
    /// it may be relayed raw ([`ListenerHandler::checked_head_relays`]). Listeners with policies
    /// and no namespace stay on the hyper path.
    fn relays_checked_heads(&self) -> bool {
        self.namespace.is_some() && self.auth.is_empty() && self.per_identity.is_empty() && self.per_identity_ns.is_empty()
    }

    fn chain_for(&self, identity: &Identity) -> &PolicyChain {
        self.per_identity.get(&identity.name).unwrap_or(&self.policies)
    }

    fn namespace_for(&self, identity: &Identity) -> Option<&Namespace> {
        self.per_identity_ns.get(&identity.name).or(self.namespace.as_ref())
    }
}

/// A request that passed the checks: forward it (and let its namespace rewrite the answer), or
/// answer it here.
enum Admitted {
    Forward(Request<UpstreamBody>, Option<Box<(Namespace, After)>>),
    Answer(Response<ProxyBody>),
}

/// Forwards to the daemon that the current configuration names. The forwarder is swapped as a whole
/// on reload; requests in flight keep the one they started with.
pub struct DockerProxy {
    forwarder: ArcSwap<Forwarder>,
}

/// A listener's handler: the shared proxy plus the listener's own pipeline (swapped on reload).
pub struct ListenerHandler {
    pub proxy: Arc<DockerProxy>,
    pub pipeline: Arc<ArcSwap<Pipeline>>,
}

/// A request refused before it reached the daemon.
struct Refused {
    status: StatusCode,
    message: String,
    /// Already in the audit log.
    logged: bool,
}

impl Refused {
    fn bad_request(message: impl std::fmt::Display) -> Refused {
        Refused { status: StatusCode::BAD_REQUEST, message: format!("ctproxy: {message}"), logged: false }
    }
}

/// The most a push's request body (registry credentials, at most) may hold.
const PUSH_BODY_LIMIT: usize = 64 << 10;

/// A read-only listing (`images`, `ps`, `system df`) that Docker 28's containerd image store may
/// fail while another client removes images or containers ("content digest sha256:…: not found",
/// "rw layer snapshot not found for container …", "snapshot … does not exist: not found"; seen on
/// the daemon's own socket too). On a daemon shared by many jobs, one job's removals must not fail
/// another's `docker images`: such a listing is asked again, a few times.
fn is_store_listing(req: &Request<UpstreamBody>) -> bool {
    req.method() == hyper::Method::GET
        && Route::classify(req.method(), req.uri().path())
            .is_ok_and(|r| matches!(r.endpoint, Some(Endpoint::ImageList | Endpoint::ContainerList | Endpoint::SystemDf)))
}

/// Sends a GET listing (no body: dockerd reads none), asking again while the daemon answers with
/// its store race; the last answer is the client's.
async fn retry_store_race(forwarder: &Forwarder, req: Request<UpstreamBody>) -> Result<Response<ProxyBody>, ForwardError> {
    let (parts, _) = req.into_parts();
    let mut attempt = 1;
    loop {
        let mut again = Request::builder().method(parts.method.clone()).uri(parts.uri.clone()).version(parts.version);
        if let Some(h) = again.headers_mut() {
            *h = parts.headers.clone();
        }
        let again = again.body(full_body(Bytes::new())).map_err(|e| ForwardError::Target(e.to_string()))?;
        let rsp = forwarder.send(again, None).await?;
        if !store_race::may_be_race(attempt, rsp.status().as_u16()) {
            return Ok(rsp.map(ProxyBody::Upstream));
        }
        let (head, body) = rsp.into_parts();
        let body = Limited::new(body, 64 << 10).collect().await.map_err(|e| ForwardError::Unreachable {
            upstream: forwarder.upstream().to_owned(),
            cause: format!("reading its error answer: {e}"),
        })?;
        let body = body.to_bytes();
        if !store_race::is_store_race(&body) {
            return Ok(Response::from_parts(head, ProxyBody::full(body)));
        }
        tracing::debug!(attempt, path = %parts.uri, "the daemon's image store raced a removal; listing again");
        tokio::time::sleep(store_race::backoff(attempt)).await;
        attempt += 1;
    }
}

impl DockerProxy {
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        DockerProxy { forwarder: ArcSwap::new(forwarder) }
    }

    pub fn set_forwarder(&self, forwarder: Arc<Forwarder>) {
        self.forwarder.store(forwarder);
    }

    /// dockerd, for the internal requests of namespaces and jobs.
    /// The daemon's address (`unix:///var/run/docker.sock`, `tcp://host:2376`).
    pub fn upstream(&self) -> String {
        self.forwarder.load().upstream().to_owned()
    }

    pub fn daemon(&self) -> Daemon {
        Daemon::new(self.forwarder.load_full())
    }

    async fn forward(&self, req: Request<UpstreamBody>, conn: &ConnCtx) -> Result<Response<ProxyBody>, ForwardError> {
        let forwarder = self.forwarder.load_full();
        let client_upgrade = requested_upgrade(&req);
        // A legacy client hijacks attach/exec without asking: ask the daemon for it explicitly, so the
        // daemon's side is handed over the same way in both cases.
        let legacy = client_upgrade.is_none() && ApiPath::parse(req.uri().path()).may_hijack(req.method());
        let upgrade = client_upgrade.or_else(|| legacy.then(|| HeaderValue::from_static("tcp")));

        if upgrade.is_none() && is_store_listing(&req) {
            return retry_store_race(&forwarder, req).await;
        }
        let mut rsp = forwarder.send(req, upgrade).await?;
        if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(rsp.map(ProxyBody::Upstream));
        }
        let upstream = forwarder.upgraded(&mut rsp).await?;
        conn.hijack(upstream);
        let (mut parts, _) = rsp.into_parts();
        if legacy {
            // What dockerd answers a client that did not ask for an upgrade: `200 OK`, a content
            // type, then raw bytes. HTTP/1.0 with no length is the only way hyper writes a head
            // without framing the bytes after it.
            parts.status = StatusCode::OK;
            parts.version = Version::HTTP_10;
            parts.headers.remove(header::CONNECTION);
            parts.headers.remove(header::UPGRADE);
            parts.extensions = Default::default();
            return Ok(Response::from_parts(parts, ProxyBody::Unframed));
        }
        // Keep the daemon's reason phrase ("UPGRADED"): hyper carries it in the extensions.
        let reason = parts.extensions.remove::<hyper::ext::ReasonPhrase>();
        parts.extensions = Default::default();
        if let Some(reason) = reason {
            parts.extensions.insert(reason);
        }
        Ok(Response::from_parts(parts, ProxyBody::empty()))
    }
}

impl ListenerHandler {
    /// Policies, body checks and the namespace stage; returns what to do with the request.
    async fn admit(&self, pipeline: &Pipeline, req: Request<ClientBody>, conn: &ConnCtx, identity: &Identity) -> Result<Admitted, Refused> {
        let chain = pipeline.chain_for(identity);
        let namespace = pipeline.namespace_for(identity);
        let decorates = pipeline.decorate.is_some() && may_create_container(req.method(), req.uri().path());
        if chain.is_empty() && namespace.is_none() && !decorates {
            return Ok(Admitted::Forward(req.map(client_body), None));
        }
        let (mut parts, body) = req.into_parts();
        let mut route = Route::classify(&parts.method, parts.uri.path()).map_err(Refused::bad_request)?;
        let mut query = Query::parse(parts.uri.query().unwrap_or("")).map_err(Refused::bad_request)?;
        refuse_form_bodies(&parts.headers)?;
        let mut ctx = RequestCtx {
            identity,
            listener: &conn.listener,
            method: &parts.method,
            route: &route,
            query: &mut query,
            headers: &mut parts.headers,
            namespaced: namespace.is_some(),
            own_socket: pipeline.own_socket.as_deref(),
            granted_binds: &pipeline.granted_binds,
        };
        // Swarm endpoints on a node without a swarm: the daemon's own answer, not a refusal.
        if let (Some(_), Some(e)) = (namespace, route.endpoint) {
            match namespace::swarm::answer(&self.proxy.daemon(), e, ctx.query).await {
                Ok(Some((status, message))) => return Ok(Admitted::Answer(respond::error(status, message))),
                Ok(None) => {}
                Err(e) => return Err(Refused { status: e.status(), message: e.to_string(), logged: false }),
            }
        }
        chain.check(&mut ctx).map_err(|d| refusal(&ctx, d))?;

        let ns_reads = |e| namespace.is_some() && namespace::request::reads_body(e);
        let mut json = None;
        let mut stream = None;
        let body = match route.endpoint.map(|e| (e, e.body())) {
            Some((endpoint, BodyKind::Json(schema)))
                if chain.reads_body(endpoint) || ns_reads(endpoint) || (decorates && endpoint == Endpoint::ContainerCreate) =>
            {
                let bytes = read_limited(body, pipeline.max_json_body).await?;
                let mut decoded = decode_json(&bytes, ctx.headers, schema)?;
                if endpoint == Endpoint::ContainerCreate {
                    normalize_create(&mut decoded.value);
                    if let Some(own) = &pipeline.own_socket {
                        redirect_docker_socket(&mut decoded.value, own);
                    }
                }
                chain.check_body(&mut ctx, &mut decoded).map_err(|d| refusal(&ctx, d))?;
                json = Some((decoded.value, bytes.is_empty()));
                None
            }
            Some((_, BodyKind::Stream)) | Some((_, BodyKind::Json(_))) => {
                stream = Some(body);
                None
            }
            // A push: buildx's Go client (its push with the daemon on the classic image store)
            // sends `{}`, and dockerd 20.10 reads the body as the registry credentials when no
            // `X-Registry-Auth` header came (newer daemons ignore it). A JSON object passes as it
            // is; in a namespace, whose push carries ctproxy's own `X-Registry-Auth`, the daemon
            // never reads it, so it goes. The framing headers follow what is sent: dockerd (Go's
            // server) reads a `Content-Length` worth of body before its first answer byte, so a
            // dropped body under the client's length would hold the push's stream forever.
            Some((Endpoint::ImagePush, _)) => {
                let bytes = read_limited(body, PUSH_BODY_LIMIT).await?;
                if !bytes.iter().all(u8::is_ascii_whitespace)
                    && !matches!(serde_json::from_slice::<serde_json::Value>(&bytes), Ok(serde_json::Value::Object(_)))
                {
                    return Err(Refused::bad_request(format!("{} {}: the body must be a JSON object", parts.method, route.path)));
                }
                let sent = if namespace.is_some() { Bytes::new() } else { bytes };
                set_length(&mut parts.headers, sent.len());
                Some(full_body(sent))
            }
            // dockerd reads no body here; one sent anyway is refused (old APIs applied a HostConfig
            // sent to `start`, for instance).
            _ => {
                let no_body = || Refused::bad_request(format!("{} {} takes no request body", parts.method, route.path));
                match read_limited(body, 0).await {
                    Ok(b) if b.is_empty() => Some(full_body(Bytes::new())),
                    Ok(_) => return Err(no_body()),
                    Err(r) if r.status == StatusCode::PAYLOAD_TOO_LARGE => return Err(no_body()),
                    Err(r) => return Err(r),
                }
            }
        };

        let mut after = None;
        let mut stream_rewritten = None;
        if let Some(ns) = namespace {
            let ns_req = NsRequest {
                method: &parts.method,
                route: &mut route,
                query: &mut query,
                headers: &mut parts.headers,
                body: json.as_mut().map(|(v, _)| v),
            };
            let prepared = ns.prepare(&self.proxy.daemon(), ns_req).await;
            if let (Ok(_), Some(e)) = (&prepared, route.endpoint) {
                if let Some(relay) = ns.buildkit_relay(&self.proxy.daemon(), e, &parts.headers) {
                    conn.relay_hijack_with(relay);
                }
            }
            match prepared {
                Ok(Prepared::Forward(a)) => after = Some((ns.clone(), a)),
                Ok(Prepared::ForwardBody(a, rewrite)) => {
                    after = Some((ns.clone(), a));
                    if let Some(b) = stream.take() {
                        stream_rewritten = Some(rewrite(b).map_err(|e| ns_refusal(identity, conn, &parts.method, &route, e))?);
                    }
                }
                Ok(Prepared::Answer(status, v)) => return Ok(Admitted::Answer(respond::json(status, &v))),
                Err(e) => return Err(ns_refusal(identity, conn, &parts.method, &route, e)),
            }
        }

        // The operator's additions come last: after the policies (never judged as the client's)
        // and after the namespace stage (the image name is the one the daemon will resolve).
        if let (Some(d), Some((value, _)), Some(Endpoint::ContainerCreate)) = (&pipeline.decorate, json.as_mut(), route.endpoint) {
            d.decorate(value, &self.proxy.daemon()).await;
        }

        let body = match (body, json) {
            (Some(b), _) => b,
            (None, _) if stream_rewritten.is_some() => stream_rewritten.map(boxed_body).unwrap_or_else(|| full_body(Bytes::new())),
            (None, _) if stream.is_some() => stream.map(client_body).unwrap_or_else(|| full_body(Bytes::new())),
            (None, Some((value, was_empty))) => {
                let out = match &value {
                    serde_json::Value::Null if was_empty => Bytes::new(),
                    v => Bytes::from(serde_json::to_vec(v).map_err(Refused::bad_request)?),
                };
                set_length(&mut parts.headers, out.len());
                if !out.is_empty() {
                    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                full_body(out)
            }
            (None, None) => full_body(Bytes::new()),
        };
        parts.uri = rebuild_uri(&route, &query)?;
        Ok(Admitted::Forward(Request::from_parts(parts, body), after.map(Box::new)))
    }
}

/// The framing of a body ctproxy sends whole in place of the client's: its own length, never the
/// client's `Content-Length` or `Transfer-Encoding` (hyper keeps a `Content-Length` it is given,
/// even over an empty body).
fn set_length(headers: &mut hyper::HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// The paths under which clients expect the host's Docker socket.
const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// Whether a bind source names the host's Docker socket (lexically, or through symlinks).
/// Whether a request may create a container, which a decorator rewrites: the Docker layer's route
/// table decides (one definition of every endpoint, paths decoded as dockerd decodes them), and
/// a `POST` whose path it cannot classify, or to no known endpoint, counts as one (the checked
/// path then answers it).
fn may_create_container(method: &hyper::Method, path: &str) -> bool {
    let other = |e: Option<Endpoint>| e.is_some_and(|e| e != Endpoint::ContainerCreate);
    method == hyper::Method::POST && !matches!(Route::classify(method, path), Ok(r) if other(r.endpoint))
}

fn is_docker_socket(source: &str) -> bool {
    if !source.starts_with('/') {
        return false;
    }
    let mut lexical = std::path::PathBuf::from("/");
    for c in std::path::Path::new(source).components() {
        match c {
            std::path::Component::Normal(n) => lexical.push(n),
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            _ => {}
        }
    }
    let resolved = std::fs::canonicalize(&lexical).ok();
    DOCKER_SOCKETS.iter().any(|s| lexical == std::path::Path::new(s) || resolved.as_deref() == Some(std::path::Path::new(s)))
}

/// In a container config (canonical field names), points every bind of the host's Docker socket
/// at `own` instead: a CI job's nested container (Testcontainers' Ryuk, a `docker` client) that
/// mounts `/var/run/docker.sock` gets the job's socket, with the job's namespace and policies.
fn redirect_docker_socket(body: &mut serde_json::Value, own: &std::path::Path) {
    use serde_json::Value;
    let Some(Value::Object(host)) = body.get_mut("HostConfig") else { return };
    let own = own.display().to_string();
    if let Some(Value::Array(binds)) = host.get_mut("Binds") {
        for bind in binds.iter_mut() {
            let Some(s) = bind.as_str() else { continue };
            let (source, rest) = s.split_once(':').unwrap_or((s, ""));
            if is_docker_socket(source) {
                *bind = Value::String(if rest.is_empty() { own.clone() } else { format!("{own}:{rest}") });
            }
        }
    }
    if let Some(Value::Array(mounts)) = host.get_mut("Mounts") {
        for m in mounts.iter_mut() {
            let is_bind = m.get("Type").and_then(Value::as_str) == Some("bind");
            let source = m.get("Source").and_then(Value::as_str).unwrap_or("");
            if is_bind && is_docker_socket(source) {
                m["Source"] = Value::String(own.clone());
            }
        }
    }
}

/// A namespace's answer in place of the daemon's. Refusals are audit-logged; not-found answers are
/// the daemon's own and are not refusals.
fn ns_refusal(identity: &Identity, conn: &ConnCtx, method: &hyper::Method, route: &Route, e: NsError) -> Refused {
    if !matches!(e, NsError::NotFound(_)) {
        tracing::warn!(
            target: "ctproxy::audit",
            identity = %identity.name,
            listener = %conn.listener,
            %method,
            endpoint = route.endpoint.map_or("unknown", Endpoint::name),
            path = %route.path,
            status = e.status().as_u16(),
            reason = %e,
            "request refused by namespace"
        );
    }
    let logged = !matches!(e, NsError::NotFound(_));
    if logged {
        crate::metrics::server().refusal("namespace", e.status().as_u16());
    }
    Refused { status: e.status(), message: e.to_string(), logged }
}

impl ListenerHandler {
    /// Whether a request of a checked listener may be relayed as raw bytes: it is one that the
    /// namespace forwards untouched ([`namespace::request::forwards_untouched`]: `/_ping`,
    /// `/version`), without a body, on a namespaced listener whose identity is the same for every
    /// request ([`Pipeline::relays_checked_heads`]), and the policy chain, run on its head as the
    /// checked path runs it, admits it without rewriting anything. Anything else (a refusal included: the
    /// checked path then refuses and logs it) is served by [`Handler::call`]. Returns the identity
    /// for the access log.
    fn checked_head_relays(
        &self,
        p: &Pipeline,
        listener: &str,
        method: &hyper::Method,
        path: &str,
        head: Option<(&str, &HeaderMap)>,
        has_body: bool,
    ) -> Option<Arc<str>> {
        let (target, headers) = head?;
        if has_body || !p.relays_checked_heads() {
            return None;
        }
        let route = Route::classify(method, path).ok()?;
        if !route.endpoint.is_some_and(namespace::request::forwards_untouched) {
            return None;
        }
        // Origin form only, parsed as hyper's server parses it (what it refuses, it refuses).
        let uri: Uri = target.parse().ok()?;
        if !target.starts_with('/') || uri.path() != path {
            return None;
        }
        let mut query = Query::parse(uri.query().unwrap_or("")).ok()?;
        refuse_form_bodies(headers).ok()?;
        let identity = Identity::anonymous();
        let (sent_query, mut checked_headers) = (query.clone(), headers.clone());
        let mut ctx = RequestCtx {
            identity: &identity,
            listener,
            method,
            route: &route,
            query: &mut query,
            headers: &mut checked_headers,
            namespaced: p.namespace.is_some(),
            own_socket: p.own_socket.as_deref(),
            granted_binds: &p.granted_binds,
        };
        p.policies.check(&mut ctx).ok()?;
        // A policy that rewrote the head wants its version forwarded: the checked path does that.
        (query == sent_query && checked_headers == *headers).then_some(identity.name)
    }
}

/// The endpoints a job socket serves whole on its relay ([`RelayTo::whole`]): a JSON body read
/// whole anyway (create), and answers the namespace reads whole anyway (lists, inspects). None of
/// them streams or hijacks.
const SERVED_WHOLE: [Endpoint; 9] = [
    Endpoint::ContainerCreate,
    Endpoint::ContainerList,
    Endpoint::ContainerInspect,
    Endpoint::ImageList,
    Endpoint::ImageInspect,
    Endpoint::NetworkList,
    Endpoint::NetworkInspect,
    Endpoint::VolumeList,
    Endpoint::VolumeInspect,
];

/// Whether a request of a checked listener may be served whole on the relay: a namespaced
/// listener whose identity is the same for every request ([`Pipeline::relays_checked_heads`]), an
/// endpoint of [`SERVED_WHOLE`], and a head hyper would accept. Its body (within the pipeline's
/// JSON limit) and its answer (within the namespace's) are read whole; the checks are the checked
/// path's own ([`ListenerHandler::answer`]).
fn whole_limits(p: &Pipeline, method: &hyper::Method, path: &str, head: Option<(&str, &HeaderMap)>) -> Option<WholeLimits> {
    let ns = p.namespace.as_ref().filter(|_| p.relays_checked_heads())?;
    let (target, headers) = head?;
    let route = Route::classify(method, path).ok()?;
    if !route.endpoint.is_some_and(|e| SERVED_WHOLE.contains(&e)) || headers.contains_key(header::UPGRADE) {
        return None;
    }
    let uri: Uri = target.parse().ok()?;
    (target.starts_with('/') && uri.path() == path)
        .then_some(WholeLimits { max_body: p.max_json_body, max_answer: ns.settings.max_response })
}

impl Handler for ListenerHandler {
    fn transparent_upstream(&self, ask: RelayAsk) -> Option<RelayTo> {
        let p = self.pipeline.load();
        let identity = match ask {
            RelayAsk::Connection => (p.checks_nothing() || p.relays_checked_heads()).then_some(None)?,
            RelayAsk::Request { method, path, .. } if p.checks_nothing() => {
                (p.is_passthrough() || !may_create_container(method, path)).then_some(None)?
            }
            RelayAsk::Request { listener, method, path, head, has_body } => {
                match self.checked_head_relays(&p, listener, method, path, head, has_body) {
                    Some(identity) => {
                        if listener.starts_with(crate::jobs::JOB_LISTENER_PREFIX) {
                            crate::metrics::server().job_socket_request();
                        }
                        Some(identity)
                    }
                    None => {
                        let whole = whole_limits(&p, method, path, head)?;
                        let upstream = self.proxy.forwarder.load().connector().clone();
                        return Some(RelayTo { upstream, identity: None, whole: Some(whole) });
                    }
                }
            }
        };
        Some(RelayTo { upstream: self.proxy.forwarder.load().connector().clone(), identity, whole: None })
    }

    fn relay_checks_heads(&self) -> bool {
        !self.pipeline.load().checks_nothing()
    }

    async fn call(&self, req: Request<Incoming>, conn: Arc<ConnCtx>) -> Response<ProxyBody> {
        self.answer(req.map(ClientBody::Streaming), &conn, Via::Pool).await
    }

    fn call_whole<'a>(
        &'a self,
        req: Request<Bytes>,
        conn: &'a Arc<ConnCtx>,
        daemon: &'a mut dyn SendWhole,
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a {
        self.answer(req.map(|b| ClientBody::Whole(Some(b))), conn, Via::Whole(daemon))
    }
}

/// How a checked request reaches the daemon.
enum Via<'a> {
    /// The pooled client, for requests hyper's server read: bodies and answers stream.
    Pool,
    /// The relay's own daemon connection, for a request it read whole: the answer is read whole.
    Whole(&'a mut dyn SendWhole),
}

impl ListenerHandler {
    /// Authenticates, checks and forwards one request, and lets its namespace rewrite the answer.
    async fn answer(&self, mut req: Request<ClientBody>, conn: &Arc<ConnCtx>, via: Via<'_>) -> Response<ProxyBody> {
        if conn.listener.starts_with(crate::jobs::JOB_LISTENER_PREFIX) {
            crate::metrics::server().job_socket_request();
        }
        let pipeline = self.pipeline.load_full();
        if pipeline.is_passthrough() {
            return self.forward_or_502(req.map(client_body), conn, via).await;
        }
        let identity = match auth::authenticate(&pipeline.auth, &conn.peer, req.headers()) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(
                    target: "ctproxy::audit",
                    listener = %conn.listener,
                    peer = %conn.peer,
                    method = %req.method(),
                    path = %req.uri().path(),
                    reason = %e,
                    "request refused: not authenticated"
                );
                return respond::error(StatusCode::UNAUTHORIZED, &format!("ctproxy: {e}"));
            }
        };
        tracing::Span::current().record("identity", &*identity.name);
        if !pipeline.auth.is_empty() {
            // The credentials were for ctproxy; the daemon has no use for them.
            req.headers_mut().remove(header::AUTHORIZATION);
        }
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let mut rsp = match self.admit(&pipeline, req, conn, &identity).await {
            Ok(Admitted::Forward(req, None)) => self.forward_or_502(req, conn, via).await,
            Ok(Admitted::Forward(req, Some(plan))) => {
                let (ns, after) = *plan;
                let rsp = match self.forward_via(req, conn, via).await {
                    Ok(rsp) => rsp,
                    Err(e) => body_refusal(&identity, conn, &method, &path, e),
                };
                ns.finish(&self.proxy.daemon(), after, rsp).await
            }
            Ok(Admitted::Answer(rsp)) => rsp,
            Err(r) => {
                // Policy and namespace refusals were logged already; malformed and oversized ones here.
                if r.status != StatusCode::FORBIDDEN && r.status != StatusCode::NOT_FOUND && !r.logged {
                    tracing::warn!(
                        target: "ctproxy::audit",
                        identity = %identity.name,
                        listener = %conn.listener,
                        %method,
                        %path,
                        status = r.status.as_u16(),
                        reason = %r.message,
                        "request refused: malformed"
                    );
                }
                respond::error(r.status, &r.message)
            }
        };
        rsp.extensions_mut().insert(AccessIdentity(identity.name.clone()));
        rsp
    }

    async fn forward_via(&self, req: Request<UpstreamBody>, conn: &ConnCtx, via: Via<'_>) -> Result<Response<ProxyBody>, ForwardError> {
        match via {
            Via::Pool => self.proxy.forward(req, conn).await,
            Via::Whole(daemon) => forward_whole(daemon, req).await,
        }
    }

    async fn forward_or_502(&self, req: Request<UpstreamBody>, conn: &ConnCtx, via: Via<'_>) -> Response<ProxyBody> {
        match self.forward_via(req, conn, via).await {
            Ok(rsp) => rsp,
            Err(e) => {
                tracing::warn!(listener = %conn.listener, error = %e, "request not forwarded");
                respond::error(StatusCode::BAD_GATEWAY, &format!("ctproxy: {e}"))
            }
        }
    }
}

/// A request body made or checked here, whole (each kind collected as itself: `Either`'s error
/// conversion trips the compiler's `Send` proof in this async context).
async fn whole_body(body: UpstreamBody) -> Result<Bytes, ForwardError> {
    use http_body_util::Either;
    let failed = |cause: String, error: crate::http::BoxError| ForwardError::Body { cause, error };
    match body {
        Either::Left(b) => b.collect().await.map(|c| c.to_bytes()).map_err(|e| failed(e.to_string(), Box::new(e))),
        Either::Right(Either::Left(b)) => Ok(b.collect().await.map(|c| c.to_bytes()).unwrap_or_default()),
        Either::Right(Either::Right(b)) => b.collect().await.map(|c| c.to_bytes()).map_err(|e| failed(e.to_string(), e)),
    }
}

/// Forwards a request whole through the relay's daemon connection. Only requests that neither
/// stream nor hijack are served whole (`ListenerHandler::whole_limits`); a listing that meets the
/// containerd store's race is asked again, as on the pooled path.
async fn forward_whole(daemon: &mut dyn SendWhole, req: Request<UpstreamBody>) -> Result<Response<ProxyBody>, ForwardError> {
    if requested_upgrade(&req).is_some() {
        return Err(ForwardError::Target("an upgrade cannot be served whole".into()));
    }
    let listing = is_store_listing(&req);
    let (parts, body) = req.into_parts();
    let body = whole_body(body).await?;
    // Kept for asking again only when it may be needed (a listing).
    let again = listing.then(|| (parts.method.clone(), parts.uri.clone(), parts.headers.clone()));
    let mut req = Some(Request::from_parts(parts, body.clone()));
    let mut attempt = 1;
    loop {
        let sent = match (req.take(), &again) {
            (Some(r), _) => r,
            (None, Some((method, uri, headers))) => {
                let mut r = Request::new(body.clone());
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.headers_mut() = headers.clone();
                r
            }
            (None, None) => return Err(ForwardError::Target("asked again without a listing".into())),
        };
        let rsp = daemon.send(sent).await?;
        let raced = listing && store_race::may_be_race(attempt, rsp.status().as_u16()) && store_race::is_store_race(rsp.body());
        if !raced {
            return Ok(rsp.map(ProxyBody::full));
        }
        tracing::debug!(attempt, path = ?again.as_ref().map(|a| &a.1), "the daemon's image store raced a removal; listing again");
        tokio::time::sleep(store_race::backoff(attempt)).await;
        attempt += 1;
    }
}

/// The answer to a namespaced request that could not be forwarded. When the request body was a
/// rewritten build context (or `docker load` tar) that stopped with an error, the daemon got an
/// incomplete archive and built nothing: the client gets that error with its status (403 for a
/// refusal, in the audit log), as if the daemon had refused; anything else is a 502.
fn body_refusal(identity: &Identity, conn: &ConnCtx, method: &hyper::Method, path: &str, e: ForwardError) -> Response<ProxyBody> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<crate::docker::buildctx::BuildContextError>() {
            let status = b.status();
            tracing::warn!(
                target: "ctproxy::audit",
                identity = %identity.name,
                listener = %conn.listener,
                %method,
                %path,
                status = status.as_u16(),
                reason = %b,
                "request refused by namespace"
            );
            return respond::error(status, &format!("ctproxy: {b}"));
        }
        source = s.source();
    }
    tracing::warn!(listener = %conn.listener, error = %e, "request not forwarded");
    respond::error(StatusCode::BAD_GATEWAY, &format!("ctproxy: {e}"))
}

/// Logs a policy refusal to the audit log and turns it into the client's answer.
fn refusal(ctx: &RequestCtx<'_>, d: Denied) -> Refused {
    let message = d.message();
    tracing::warn!(
        target: "ctproxy::audit",
        identity = %ctx.identity.name,
        listener = ctx.listener,
        method = %ctx.method,
        endpoint = ctx.route.endpoint.map_or("unknown", Endpoint::name),
        path = %ctx.route.path,
        policy = %d.policy,
        reason = %d.refusal.reason(&d.policy),
        "request refused by policy"
    );
    crate::metrics::server().refusal(&d.policy, d.refusal.status.as_u16());
    Refused { status: d.refusal.status, message, logged: true }
}

/// dockerd lets form-encoded bodies override query parameters; no Docker client sends them.
fn refuse_form_bodies(headers: &HeaderMap) -> Result<(), Refused> {
    // Go lower-cases the media type with Unicode rules (`appl\u{130}cation/...` is a form) and reads
    // the form even when a parameter is malformed (`; charset=\xff`): only plain ASCII is judged.
    let ct = match headers.get(header::CONTENT_TYPE).map(HeaderValue::to_str) {
        None => "",
        Some(Ok(ct)) => ct,
        Some(Err(_)) => return Err(Refused::bad_request("a content type that is not plain ASCII is not accepted")),
    };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media == "application/x-www-form-urlencoded" || media == "multipart/form-data" {
        return Err(Refused::bad_request(format!("content type {media} is not accepted")));
    }
    Ok(())
}

/// Reads a whole body, refusing it with 413 past `limit` bytes.
async fn read_limited(body: ClientBody, limit: usize) -> Result<Bytes, Refused> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("ctproxy: request body larger than {limit} bytes"),
            logged: false,
        }),
        Err(e) => Err(Refused::bad_request(format!("cannot read the request body: {e}"))),
    }
}

/// Decodes a JSON body the way dockerd will (see `docker::json`). An empty body is no body.
fn decode_json(bytes: &[u8], headers: &HeaderMap, schema: &'static crate::docker::json::Schema) -> Result<JsonBody, Refused> {
    if bytes.is_empty() {
        return Ok(JsonBody { value: serde_json::Value::Null, unknown: Vec::new() });
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.split(';').next().unwrap_or("").trim() != "application/json" {
        return Err(Refused::bad_request(format!("content type {ct:?} is not supported: expected application/json")));
    }
    let raw = Raw::parse(bytes).map_err(Refused::bad_request)?;
    let c = canonicalize(raw, &Kind::Struct(schema)).map_err(Refused::bad_request)?;
    Ok(JsonBody { value: c.value, unknown: c.unknown })
}

/// The request target forwarded to dockerd: the canonical path and the re-encoded query.
fn rebuild_uri(route: &Route, query: &Query) -> Result<Uri, Refused> {
    let mut pq = String::with_capacity(route.path.len() + 16);
    if let Some(v) = route.version {
        let _ = write!(pq, "/v{v}");
    }
    for b in route.path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~:@!$&'()*+,;=".contains(&b) {
            pq.push(b as char);
        } else {
            let _ = write!(pq, "%{b:02X}");
        }
    }
    if !query.is_empty() {
        pq.push('?');
        pq.push_str(&query.encode());
    }
    pq.parse().map_err(Refused::bad_request)
}

/// The protocol a client asks to switch to (`Upgrade: tcp`), if any. HTTP/1.0 cannot upgrade.
fn requested_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_creates_are_recognised_as_dockerd_routes_them() {
        for path in ["/containers/create", "/v1.41/containers/create", "/v1.41/containers%2Fcreate", "/v1.41/containers/create/"] {
            assert!(may_create_container(&hyper::Method::POST, path), "{path}");
        }
        assert!(!may_create_container(&hyper::Method::GET, "/v1.41/containers/create"));
        assert!(!may_create_container(&hyper::Method::POST, "/v1.41/containers/x/start"));
    }
    use serde_json::json;

    #[test]
    fn docker_socket_binds_are_redirected_to_the_listeners_own() {
        let own = std::path::Path::new("/run/ctproxy/jobs/j/sock/docker.sock");
        let mut body = json!({"HostConfig": {
            "Binds": ["/var/run/docker.sock:/var/run/docker.sock:ro", "/run/../var/run/docker.sock", "/srv/data:/data", "vol:/v"],
            "Mounts": [{"Type": "bind", "Source": "/run/docker.sock", "Target": "/d.sock"}, {"Type": "volume", "Source": "/run/docker.sock"}],
        }});
        redirect_docker_socket(&mut body, own);
        let own = own.display().to_string();
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!([format!("{own}:/var/run/docker.sock:ro"), own.clone(), "/srv/data:/data", "vol:/v"])
        );
        assert_eq!(body["HostConfig"]["Mounts"][0]["Source"], json!(own));
        assert_eq!(body["HostConfig"]["Mounts"][1]["Source"], json!("/run/docker.sock"), "only binds");
    }
}
