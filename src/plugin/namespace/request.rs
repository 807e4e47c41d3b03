//! Per-endpoint rewriting of a request for one namespace.
//!
//! Every endpoint a namespace may use is listed here; anything else is refused (swarm, plugins,
//! BuildKit's gRPC tunnels, daemon-wide prunes that cannot be scoped). References in the path are
//! resolved to objects the namespace owns (or answered with the daemon's not-found); names in
//! queries and JSON bodies are mangled; ownership labels are set on everything created.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::Method;
use serde_json::{Map, Value};

use super::archive::LoadGuard;
use super::filters::{Filters, NameMatch};
use super::network::is_predefined;
use super::resolve::{could_be_id_prefix, strings, ImageRef};
use super::response::{After, ListKind};
use super::{Daemon, Namespace, NsError, NS_LABEL};
use crate::docker::auth_config;
use crate::docker::reference::Reference;
use crate::docker::{Endpoint, Query, Route};
use crate::plugin::{Layer, Remedy};

/// A request that passed authentication and the policies, on its way to the namespace stage.
pub struct NsRequest<'a> {
    pub method: &'a Method,
    pub route: &'a mut Route,
    pub query: &'a mut Query,
    pub headers: &'a mut HeaderMap,
    /// The canonical JSON body, for the endpoints [`reads_body`] names.
    pub body: Option<&'a mut Value>,
}

/// A transformation of the client's request body (a build context whose Dockerfile is rewritten).
pub type BodyRewrite = Box<dyn FnOnce(crate::http::ClientBody) -> Result<crate::http::BoxedBody, NsError> + Send>;

/// What the stage decided about a request.
pub enum Prepared {
    /// Forward the rewritten request; then treat the answer as said.
    Forward(After),
    /// The same, with the request body transformed on its way.
    ForwardBody(After, BodyRewrite),
    /// Answer here (a synthetic answer dockerd would have given for the namespace's own view).
    Answer(hyper::StatusCode, Value),
}

/// The endpoints whose JSON body the namespace stage rewrites.
pub fn reads_body(e: Endpoint) -> bool {
    use Endpoint::*;
    matches!(e, ContainerCreate | Commit | NetworkCreate | NetworkConnect | NetworkDisconnect | VolumeCreate)
}

/// The endpoints a namespace forwards exactly as they came, without asking the daemon anything,
/// and whose answers it passes on untouched (they name nothing a namespace owns): the proxy may
/// relay them as raw bytes once the policies have checked their head.
pub fn forwards_untouched(e: Endpoint) -> bool {
    matches!(e, Endpoint::Ping | Endpoint::PingHead | Endpoint::Version)
}

const X_REGISTRY_AUTH: HeaderName = HeaderName::from_static("x-registry-auth");
const X_REGISTRY_CONFIG: HeaderName = HeaderName::from_static("x-registry-config");

impl Namespace {
    /// Rewrites `req` for this namespace.
    pub async fn prepare(&self, daemon: &Daemon, req: NsRequest<'_>) -> Result<Prepared, NsError> {
        use Endpoint::*;
        let Some(endpoint) = req.route.endpoint else {
            return Err(NsError::refused(format!(
                "{} {} is not an endpoint of the Docker API that ctproxy knows, so it is not available in a namespace (it could act outside the namespace)",
                req.method,
                req.route.path
            ))
            .remedy(Remedy::Unknown));
        };
        let typed = req.route.target().unwrap_or("").to_owned();
        let after = match endpoint {
            e if forwards_untouched(e) => After::Pass,
            Options => After::Pass,
            Info => After::Info(self.start_counting(daemon)),
            SystemDf => After::SystemDf,
            Events => self.events_query(daemon, req.query).await?,
            Auth => After::Pass,
            ImageSearch => {
                search_on_hub(req.query.get("term").unwrap_or(""))?;
                After::Pass
            }
            // dockerd asks the image's registry itself: through the registry proxy, as a pull.
            DistributionInspect => {
                let r = Reference::parse(&typed).map_err(|e| NsError::Malformed(format!("invalid reference format: {e}")))?;
                req.route.set_target(&self.name.image(&self.settings.registry, &r)?.to_string());
                self.registry_auth(req.headers, &X_REGISTRY_AUTH)?;
                After::Json
            }

            ContainerList => self.list_query(req.query, ListKind::Containers, daemon, req.route.version).await?,
            ContainerCreate => {
                let name = match req.query.get("name").filter(|n| !n.is_empty()) {
                    Some(n) => n.to_owned(),
                    None => generated_name(),
                };
                req.query.set("name", &self.name.container(&name)?);
                if let Some(body) = req.body {
                    self.create_body(daemon, body, &name).await?;
                }
                After::Json
            }
            ContainerPrune => {
                self.scope_prune(req.query)?;
                After::Json
            }
            // `docker rm --link /web/db`: the link's name is `/<parent>/<alias>` (dockerd's route
            // takes the rest of the path); the parent must be the namespace's, and is named as the
            // daemon knows it.
            ContainerDelete if req.query.bool("link") && typed.trim_start_matches('/').contains('/') => {
                let (parent, alias) = typed.trim_start_matches('/').rsplit_once('/').unwrap_or(("", ""));
                let id = self.container(daemon, parent).await.map_err(|_| NsError::no_container(&typed))?;
                let c = daemon.get(&format!("/containers/{id}/json")).await?.ok_or_else(|| NsError::no_container(&typed))?;
                let name = c.get("Name").and_then(Value::as_str).unwrap_or("").trim_start_matches('/').to_owned();
                if name.is_empty() || alias.is_empty() {
                    return Err(NsError::no_container(&typed));
                }
                req.route.set_target(&format!("{name}/{alias}"));
                After::Json
            }
            ContainerChanges | ContainerExport => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                if endpoint == ContainerChanges {
                    After::Changes(id)
                } else {
                    After::Export(id)
                }
            }
            ContainerInspect => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                After::ContainerInspect
            }
            ContainerTop | ContainerResize | ContainerStart | ContainerStop | ContainerRestart | ContainerKill
            | ContainerPause | ContainerUnpause | ContainerUpdate | ContainerDelete | ContainerExec => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                After::Json
            }
            // Streams: `wait` sends its head at once and its body when the container stops.
            ContainerLogs | ContainerAttach | ContainerAttachWs | ContainerWait => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                After::Pass
            }
            // Docker 28's archive errors name the container as the request did ("Could not find
            // the file /x in container web"): a name the client typed goes to the daemon as its
            // daemon-side name (resolved in the namespace first), which the error de-mangles back.
            ContainerArchiveGet | ContainerArchiveHead | ContainerArchivePut => {
                let id = self.container(daemon, &typed).await?;
                match self.name.object(&typed) {
                    Ok(mangled) if !id.starts_with(typed.as_str()) => req.route.set_target(&mangled),
                    _ => req.route.set_target(&id),
                }
                After::Pass
            }
            ContainerStats => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                After::Lines
            }
            ContainerRename => {
                let id = self.container(daemon, &typed).await?;
                req.route.set_target(&id);
                let new = req.query.get("name").unwrap_or("").to_owned();
                req.query.set("name", &self.name.container(&new)?);
                After::Json
            }
            ExecStart | ExecResize | ExecInspect => {
                self.exec(daemon, &typed).await?;
                if endpoint == ExecStart {
                    After::Pass
                } else {
                    After::Json
                }
            }
            Commit => {
                let id = self.container(daemon, req.query.get("container").unwrap_or("")).await?;
                req.query.set("container", &id);
                self.mangle_repo_tag(req.query)?;
                self.hide_unnamed(req.query);
                if let Some(Value::Object(cfg)) = req.body {
                    strip_reserved_labels(cfg.get_mut("Labels"));
                }
                let repo = req.query.get("repo").unwrap_or("");
                let tag = req.query.get("tag").filter(|t| !t.is_empty()).unwrap_or("latest");
                After::Commit { container: id, reference: format!("{repo}:{tag}") }
            }

            ImageList => self.list_query(req.query, ListKind::Images, daemon, req.route.version).await?,
            ImageInspect | ImageHistory => {
                let img = self.image(daemon, &typed).await?;
                req.route.set_target(img.daemon_name());
                // By ID, the answer carries every namespace's tags of the image.
                if endpoint == ImageInspect {
                    After::ImageInspect
                } else {
                    After::ImageHistory
                }
            }
            ImageTag => {
                let img = self.image(daemon, &typed).await?;
                req.route.set_target(img.daemon_name());
                self.mangle_repo_tag(req.query)?;
                After::Json
            }
            ImageDelete => {
                return match self.image(daemon, &typed).await? {
                    ImageRef::Shared(_) => Err(NsError::refused(format!(
                        "removing image {typed} is not available in a namespace: it is shared by the administrator ([namespaces] shared_images) and read-only there (tag it to have a copy of your own)"
                    ))),
                    ImageRef::Owned(name) => {
                        // The last name the client sees: the image goes, as the daemon removes an
                        // image with its last tag, hidden tags and all.
                        if let Some(img) = daemon.get(&format!("/images/{}/json", super::daemon::enc(&name))).await? {
                            let tags = self.own_tags(&img);
                            let all_own = strings(img.get("RepoTags")).all(|t| tags.iter().any(|o| o == t));
                            if self.visible_own_tags(&img).len() == 1 && tags.len() > 1 && all_own {
                                return self.untag_all(daemon, &tags, req.query).await;
                            }
                        }
                        req.route.set_target(&name);
                        Ok(Prepared::Forward(After::Json))
                    }
                    // By ID: untag the namespace's own tags of it (the daemon would also remove other
                    // namespaces' tags, or refuse because they exist).
                    ImageRef::Id { tags, .. } => self.untag_all(daemon, &tags, req.query).await,
                };
            }
            ImagePush => {
                let r = Reference::parse(&typed).map_err(|_| NsError::no_image(&typed))?;
                let r = match req.query.get("tag").filter(|t| !t.is_empty()) {
                    Some(t) => Reference { tag: Some(t.to_owned()), ..r },
                    None => r,
                };
                let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
                if self.is_shared(&repo) {
                    return Err(NsError::refused(format!(
                        "pushing image {typed} is not available in a namespace: it is shared by the administrator ([namespaces] shared_images) and read-only there (tag it first)"
                    )));
                }
                // The name as typed (its tag too: without one, dockerd pushes every tag), `tag` as sent.
                let typed_ref = Reference::parse(&typed).map_err(|_| NsError::no_image(&typed))?;
                let m = self.name.image(&self.settings.registry, &typed_ref)?;
                req.route.set_target(&m.to_string());
                self.registry_auth(req.headers, &X_REGISTRY_AUTH)?;
                After::Lines
            }
            ImageCreate => return self.image_create(daemon, req.query, req.headers).await,
            ImagePrune => return self.image_prune(daemon, req.query).await,
            Build => {
                if req.query.get("version") == Some("2") {
                    return Err(NsError::refused(
                        "a build with its BuildKit session inside the request (POST /build version=2, the legacy form) is not available in a namespace: build with buildx (its own gRPC path, /grpc and /session, is served) or the classic builder (DOCKER_BUILDKIT=0)",
                    )
                    .by(Layer::Build));
                }
                if req.query.get("remote").is_some_and(|r| !r.is_empty()) {
                    return Err(NsError::refused(
                        "a build from a remote context (remote, a Git or HTTP URL) is not available in a namespace: the daemon would download it itself; send the context in the request body",
                    )
                    .by(Layer::Build));
                }
                // `RUN` steps join a network like a container does: the namespace's own, never
                // another's by its daemon-side name or ID.
                let mode = req.query.get("networkmode").unwrap_or("").to_owned();
                let network = self.build_network(daemon, &mode).await?;
                req.query.set("networkmode", &network);
                let tags: Vec<String> = req.query.get_all("t").map(str::to_owned).collect();
                req.query.remove("t");
                for t in tags {
                    let r = Reference::parse(&t).map_err(|e| NsError::Malformed(format!("invalid tag {t:?}: {e}")))?;
                    req.query.push("t", &self.name.image(&self.settings.registry, &r.with_default_tag())?.to_string());
                }
                // Every image a build makes is the namespace's, even once its name moves to a newer
                // build (then it is dangling, as on the daemon).
                req.query.push("t", &self.hidden_tag(&random_hex64()));
                if let Some(cf) = req.query.get("cachefrom").filter(|c| !c.is_empty()) {
                    let refs: Vec<String> = serde_json::from_str(cf).map_err(|e| NsError::Malformed(format!("invalid cachefrom: {e}")))?;
                    let mut out = Vec::new();
                    for r in refs {
                        if let Ok(parsed) = Reference::parse(&r) {
                            out.push(self.image_name(&parsed)?);
                        }
                    }
                    req.query.set("cachefrom", &serde_json::to_string(&out).unwrap_or_default());
                }
                for key in ["buildid", "session"] {
                    if let Some(v) = req.query.get(key).filter(|v| !v.is_empty()) {
                        let scoped = format!("{}-{v}", self.name);
                        req.query.set(key, &scoped);
                    }
                }
                let logins = req.headers.get(X_REGISTRY_CONFIG).map(auth_config::decode_config_header).unwrap_or_default();
                self.registry_config(req.headers)?;
                let rewrite = self.dockerfile_rewrite(daemon, req.query, logins).await?;
                // The context may shrink, grow or be decompressed: it goes on chunked.
                req.headers.remove(hyper::header::CONTENT_LENGTH);
                req.headers.remove(hyper::header::CONTENT_ENCODING);
                return Ok(Prepared::ForwardBody(After::Build, rewrite));
            }
            BuildCancel => {
                if let Some(v) = req.query.get("id").filter(|v| !v.is_empty()) {
                    let scoped = format!("{}-{v}", self.name);
                    req.query.set("id", &scoped);
                }
                After::Pass
            }
            // BuildKit: the upgraded connection is relayed call by call (see `buildkit`).
            Session | Grpc => {
                let h2c = req.headers.get(hyper::header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"));
                if !h2c {
                    return Err(NsError::refused(format!(
                        "{} without Upgrade: h2c (the Upgrade header) is not available in a namespace: BuildKit's gRPC is relayed only as an HTTP/2 upgrade",
                        endpoint.name()
                    ))
                    .by(Layer::BuildKit));
                }
                if endpoint == Session {
                    self.scope_session_headers(req.headers)?;
                }
                After::Pass
            }
            BuildPrune => {
                return Ok(Prepared::Answer(hyper::StatusCode::OK, serde_json::json!({"CachesDeleted": null, "SpaceReclaimed": 0})));
            }

            NetworkList | NetworkListSlash => self.list_query(req.query, ListKind::Networks, daemon, req.route.version).await?,
            NetworkInspect => {
                let name = self.network(daemon, &typed).await?;
                req.route.set_target(&name);
                After::NetworkInspect
            }
            NetworkDelete => {
                if is_predefined(&typed) {
                    return Ok(Prepared::Answer(
                        hyper::StatusCode::FORBIDDEN,
                        serde_json::json!({ "message": format!("{typed} is a pre-defined network and cannot be removed") }),
                    ));
                }
                let name = self.network(daemon, &typed).await?;
                req.route.set_target(&name);
                After::Json
            }
            NetworkCreate => return self.network_create(daemon, req.body).await,
            NetworkConnect | NetworkDisconnect => {
                let net = self.network(daemon, &typed).await?;
                req.route.set_target(&net);
                if let Some(Value::Object(body)) = req.body {
                    let c = body.get("Container").and_then(Value::as_str).unwrap_or("").to_owned();
                    let id = self.container(daemon, &c).await?;
                    body.insert("Container".into(), Value::String(id.clone()));
                    if let Some(ep) = body.get_mut("EndpointConfig").filter(|ep| ep.is_object()) {
                        self.mangle_links(ep.get_mut("Links"))?;
                        self.endpoint_network_id(daemon, ep, &net).await?;
                    }
                    if endpoint == NetworkConnect && !is_predefined(&net) {
                        // The container answers to the name its namespace knows it by: its name,
                        // also when the client named it by ID (the Python SDK, compose), never
                        // the ID itself.
                        let name = if id.starts_with(c.as_str()) {
                            daemon
                                .get(&format!("/containers/{}/json", super::daemon::enc(&id)))
                                .await?
                                .and_then(|v| v.get("Name").and_then(Value::as_str).and_then(|n| self.name.unobject(n)).map(str::to_owned))
                        } else {
                            self.name.object(&c).is_ok().then(|| c.clone())
                        };
                        if let Some(name) = name {
                            let ep = body.entry("EndpointConfig").or_insert_with(|| Value::Object(Map::new()));
                            add_alias(ep, &name);
                        }
                    }
                }
                After::Json
            }
            NetworkPrune | VolumePrune => {
                self.scope_prune(req.query)?;
                // A prune may remove the namespace's default network or volumes it remembers.
                After::Forget
            }

            VolumeList => self.list_query(req.query, ListKind::Volumes, daemon, req.route.version).await?,
            VolumeCreate => {
                if let Some(Value::Object(body)) = req.body {
                    let name = body.get("Name").and_then(Value::as_str).filter(|n| !n.is_empty()).map(str::to_owned);
                    // An anonymous volume still needs a name of the namespace: a random one, as the
                    // daemon would make.
                    let name = name.unwrap_or_else(random_hex64);
                    body.insert("Name".into(), Value::String(self.name.volume(&name)?));
                    self.set_label(body.entry("Labels").or_insert(Value::Null));
                }
                After::Json
            }
            VolumeInspect | VolumeDelete => {
                let name = self.volume(daemon, &typed).await?;
                req.route.set_target(&name);
                // A removed volume is no longer one the namespace remembers.
                if endpoint == VolumeDelete {
                    After::Forget
                } else {
                    After::Json
                }
            }

            // `docker inspect X` tries every object type in turn and wants a not-found from each.
            PluginInspect => return Err(NsError::NotFound(format!("plugin {typed:?} not found"))),
            ImageGet => {
                let img = self.image(daemon, &typed).await?;
                req.route.set_target(img.daemon_name());
                After::SaveTar
            }
            ImageGetAll => {
                let names: Vec<String> = req.query.get_all("names").map(str::to_owned).collect();
                req.query.remove("names");
                for n in names {
                    let img = self.image(daemon, &n).await?;
                    req.query.push("names", img.daemon_name());
                }
                After::SaveTar
            }
            ImageLoad => {
                req.headers.remove(hyper::header::CONTENT_LENGTH);
                req.headers.remove(hyper::header::CONTENT_ENCODING);
                let guard = LoadGuard::default();
                return Ok(Prepared::ForwardBody(After::Load(guard.clone()), self.load_rewrite(guard)));
            }
            _ => {
                return Err(NsError::refused(format!(
                    "{} is not available in a namespace: it acts on the daemon as a whole (swarm, plugins, daemon-wide state), which a namespace cannot scope",
                    endpoint.name()
                ))
                .remedy(Remedy::Outside))
            }
        };
        Ok(Prepared::Forward(after))
    }

    /// The build context's Dockerfile, with every image it names (`FROM`, `COPY --from`) turned
    /// into the namespace's own reference: the daemon would resolve them against every namespace's
    /// images, by name and by ID prefix. Base images are checked and pinned, and `ADD <url>` is
    /// downloaded by ctproxy (`build.rs`). `pull` is taken out of the query: ctproxy pulls the base
    /// images itself, and the daemon could not pull the image IDs the `FROM`s are pinned to.
    async fn dockerfile_rewrite(
        &self,
        daemon: &Daemon,
        q: &mut Query,
        logins: Vec<(String, crate::docker::auth_config::AuthConfig)>,
    ) -> Result<BodyRewrite, NsError> {
        use crate::docker::buildctx::RewrittenContext;
        let build_args: std::collections::HashMap<String, Option<String>> = match q.get("buildargs").filter(|b| !b.is_empty()) {
            Some(b) => serde_json::from_str(b).map_err(|e| NsError::Malformed(format!("invalid buildargs: {e}")))?,
            None => Default::default(),
        };
        // dockerd's httputils.BoolValue.
        let pull =
            q.get("pull").map(|p| p.trim().to_ascii_lowercase()).is_some_and(|p| !matches!(p.as_str(), "" | "0" | "no" | "false" | "none"));
        q.remove("pull");
        // Image IDs the namespace may name: those of its own and of shared images.
        let images = daemon.list("/images/json").await?;
        let ids: Vec<String> = images
            .iter()
            .filter(|img| !self.own_tags(img).is_empty() || self.shared_tags(img).next().is_some())
            .filter_map(|img| img.get("Id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let rewrite = self.build_rewrite(daemon, build_args, ids, q.get("platform").map(str::to_owned), pull, logins);
        let dockerfile = q.get("dockerfile").map(str::to_owned);
        Ok(Box::new(move |body| {
            let ctx = RewrittenContext::with_async(body, dockerfile.as_deref(), 1 << 20, rewrite)
                .map_err(|e| NsError::Malformed(e.to_string()))?;
            Ok(http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(ctx, |e| Box::new(e) as crate::http::BoxError)))
        }))
    }

    /// `docker load`: every image name the daemon reads from the tar (`manifest.json` tags,
    /// `repositories` keys, `index.json` annotations) becomes the namespace's, so a load can never
    /// create or overwrite a name outside it (`super::archive`). A refusal cuts the body short and
    /// is recorded in `guard`, which answers the client instead of the daemon.
    fn load_rewrite(&self, guard: LoadGuard) -> BodyRewrite {
        use crate::docker::image_archive::{INDEX_JSON, MANIFEST_JSON, REPOSITORIES_FILE};
        let ns = self.clone();
        Box::new(move |body| {
            let b = tar_member(body, MANIFEST_JSON, guard.member(ns.clone(), Namespace::load_manifest))?;
            let b = tar_member(b, REPOSITORIES_FILE, guard.member(ns.clone(), Namespace::load_repositories))?;
            let b = tar_member(b, INDEX_JSON, guard.member(ns, Namespace::load_index))?;
            Ok(http_body_util::BodyExt::boxed_unsync(guard.watch(b)))
        })
    }

    /// `commit` and `import` without a repository: the image gets a hidden tag of the namespace
    /// (`Namespace::hidden_tag`), which makes it the namespace's own on the daemon.
    fn hide_unnamed(&self, q: &mut Query) {
        if q.get("repo").is_none_or(str::is_empty) {
            q.set("repo", &self.name.hidden_repo(&self.settings.registry));
            q.set("tag", &random_hex64());
        }
    }

    /// Labels a namespace object as its own (and drops any reserved label the client set).
    pub(super) fn set_label(&self, labels: &mut Value) {
        if !labels.is_object() {
            *labels = Value::Object(Map::new());
        }
        strip_reserved_labels(Some(labels));
        if let Value::Object(m) = labels {
            m.insert(NS_LABEL.into(), Value::String(self.name.to_string()));
        }
    }

    /// `repo` and `tag` of commit, tag and import: the target image name. A digest stays, for
    /// dockerd to refuse it as it does (`cannot import digest reference`).
    fn mangle_repo_tag(&self, q: &mut Query) -> Result<(), NsError> {
        let Some(repo) = q.get("repo").filter(|r| !r.is_empty()).map(str::to_owned) else { return Ok(()) };
        let r = Reference::parse(&repo).map_err(|e| NsError::Malformed(format!("invalid reference {repo:?}: {e}")))?;
        let tag = q.get("tag").filter(|t| !t.is_empty()).map(str::to_owned).or(r.tag.clone());
        let m = self.name.image(&self.settings.registry, &Reference { tag: None, ..r })?;
        q.set("repo", &m.to_string());
        if let Some(t) = tag {
            q.set("tag", &t);
        }
        Ok(())
    }

    /// Replaces the client's registry credentials by a token of the registry proxy that carries them.
    fn registry_auth(&self, headers: &mut HeaderMap, name: &HeaderName) -> Result<(), NsError> {
        let tokens = self.settings.tokens.as_ref().ok_or_else(|| {
            NsError::refused(
                "a pull or push is not available in a namespace without a registry proxy: pulls and pushes in a namespace go through ctproxy's registry proxy, and none is configured",
            )
            .remedy(Remedy::Config("setting [registry_proxy]"))
        })?;
        let value = tokens.issue(&self.name, headers.get(name));
        headers.insert(name.clone(), value);
        Ok(())
    }

    /// Builds pull their base images through the registry proxy with a token of the namespace.
    fn registry_config(&self, headers: &mut HeaderMap) -> Result<(), NsError> {
        headers.remove(X_REGISTRY_CONFIG);
        let Some(tokens) = &self.settings.tokens else { return Ok(()) };
        let token = tokens.issue(&self.name, None);
        // The token is an encoded AuthConfig; the build header wants a map of them by registry.
        let auth = crate::docker::auth_config::decode_header(&token).unwrap_or_default();
        let map = serde_json::json!({ self.settings.registry.clone(): auth });
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, serde_json::to_vec(&map).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            headers.insert(X_REGISTRY_CONFIG, v);
        }
        Ok(())
    }

    /// Prune endpoints: only the namespace's objects.
    fn scope_prune(&self, q: &mut Query) -> Result<(), NsError> {
        let mut f = Filters::parse(q.get("filters"))?;
        f.take("label");
        f.add("label", self.label_filter());
        q.set("filters", &f.encode());
        Ok(())
    }

    /// List endpoints: the namespace's label as a filter, and the filters on names (which the daemon
    /// would match against mangled names) applied here instead.
    async fn list_query(
        &self,
        q: &mut Query,
        kind: ListKind,
        daemon: &Daemon,
        version: Option<crate::docker::ApiVersion>,
    ) -> Result<After, NsError> {
        let mut f = Filters::parse(q.get("filters"))?;
        let names = NameMatch::new(&f.take("name"))?;
        let mut refs = Vec::new();
        let mut dangling = None;
        match kind {
            ListKind::Containers => {
                f.add("label", self.label_filter());
                for key in ["before", "since"] {
                    let values = f.take(key);
                    for v in values {
                        f.add(key, self.container(daemon, &v).await?);
                    }
                }
                for v in f.take("network") {
                    f.add("network", self.network(daemon, &v).await?);
                }
                for v in f.take("volume") {
                    let mapped = if v.starts_with('/') { v } else { self.name.object(&v)? };
                    f.add("volume", mapped);
                }
                for v in f.take("ancestor") {
                    f.add("ancestor", self.image_filter(daemon, &v).await?);
                }
            }
            ListKind::Volumes => f.add("label", self.label_filter()),
            // Predefined networks have no label: ownership is judged on the answer. The
            // namespace's own `bridge` is listed as soon as it is asked for, as the daemon's is.
            ListKind::Networks => {
                self.default_network(daemon).await?;
            }
            ListKind::Images => {
                refs = f.take("reference");
                // Dangling means "no tag the client sees": judged on the answer (hidden tags).
                for d in f.take("dangling") {
                    dangling = Some(crate::docker::query::go_bool(&d));
                }
                for key in ["before", "since"] {
                    for v in f.take(key) {
                        f.add(key, self.image(daemon, &v).await?.daemon_name().to_owned());
                    }
                }
            }
        }
        // `limit` counts before filtering by name: apply it here too when names are filtered.
        let mut limit = None;
        if kind == ListKind::Containers && !names.is_empty() {
            limit = q.get("limit").and_then(|l| l.parse::<i64>().ok()).filter(|&l| l > 0).map(|l| l as usize);
            q.remove("limit");
        }
        q.set("filters", &f.encode());
        let none_placeholder = version.is_some_and(|v| v < crate::docker::ApiVersion { major: 1, minor: 43 });
        Ok(After::List { kind, names, limit, refs, dangling, none_placeholder })
    }

    /// `GET /events`: the filters on objects are mangled; ownership is judged per event.
    async fn events_query(&self, daemon: &Daemon, q: &mut Query) -> Result<After, NsError> {
        let mut f = Filters::parse(q.get("filters"))?;
        for key in ["container", "volume", "network"] {
            for v in f.take(key) {
                let mangled = if key == "network" { self.name.network(&v) } else { self.name.object(&v) };
                match mangled {
                    Ok(m) => f.add(key, m),
                    Err(_) => f.add(key, v),
                }
            }
        }
        for v in f.take("image") {
            f.add("image", self.image_filter(daemon, &v).await?);
        }
        if !f.0.is_empty() {
            q.set("filters", &f.encode());
        }
        Ok(After::Events)
    }

    /// `POST /images/create`, in the branch dockerd takes (`docker::image_create`: `fromImage`
    /// first): a pull goes through the registry proxy with the namespace's token, an import of the
    /// request body gets the namespace's name, and an import of a URL is refused (dockerd would
    /// download it itself, from wherever it can reach, past the registry proxy's SSRF check).
    async fn image_create(&self, daemon: &Daemon, q: &mut Query, headers: &mut HeaderMap) -> Result<Prepared, NsError> {
        use crate::docker::image_create::{classify, ImageCreate};
        let (from_image, tag) = match classify(q) {
            ImageCreate::ImportUrl { url } => {
                return Err(NsError::refused(format!(
                    "importing an image from a URL the daemon downloads (fromSrc={url}) is not available in a namespace: send the archive in the request body (fromSrc=-)"
                )))
            }
            ImageCreate::ImportBody => {
                self.mangle_repo_tag(q)?;
                self.hide_unnamed(q);
                return Ok(Prepared::Forward(After::Lines));
            }
            ImageCreate::Pull { from_image, tag } => (from_image.to_owned(), tag.to_owned()),
        };
        let typed = Reference::parse(&from_image).map_err(|e| NsError::Malformed(format!("invalid reference format: {e}")))?;
        let r = pull_target(&typed, &tag);
        let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
        if self.is_shared(&repo) {
            // Shared images are the administrator's: a namespace uses the local copy, never refreshes it.
            let r = r.with_default_tag();
            return match daemon.get(&format!("/images/{}/json", super::daemon::enc(&r.to_string()))).await? {
                Some(_) => Ok(Prepared::Answer(
                    hyper::StatusCode::OK,
                    serde_json::json!({"status": format!("Status: Image is up to date for {}", r.familiar())}),
                )),
                None => Err(NsError::refused(format!(
                    "pulling image {}, which is shared by the administrator ([namespaces] shared_images) but not present on the daemon, is not available in a namespace (a namespace does not pull shared images)",
                    r.familiar()
                ))
                .remedy(Remedy::Config("pulling it on the daemon"))),
            };
        }
        // `fromImage` as typed (tag and digest included), `tag` as sent: dockerd combines them into
        // the same reference as it would have, in the namespace's repository.
        let m = self.name.image(&self.settings.registry, &typed)?;
        q.set("fromImage", &m.to_string());
        self.registry_auth(headers, &X_REGISTRY_AUTH)?;
        Ok(Prepared::Forward(After::Lines))
    }

    /// An image a container uses (`Config.Image`, an image mount's `Source`) → the daemon-side
    /// name: an image the namespace owns or shares (by name, ID or ID prefix), else, for a name, the
    /// namespace's own (missing) name so that the daemon answers its own not-found with it. An ID
    /// the namespace does not hold is not found, whoever holds it.
    async fn image_to_use(&self, daemon: &Daemon, typed: &str) -> Result<String, NsError> {
        if typed.starts_with("sha256:") || (typed.len() == 64 && typed.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Ok(self.image(daemon, typed).await?.daemon_name().to_owned());
        }
        let r = Reference::parse(typed).map_err(|e| NsError::Malformed(format!("invalid reference format: {e}")))?;
        if !could_be_id_prefix(typed) {
            // A name that cannot be read as an ID prefix resolves by name only: found or not, the
            // daemon is given the same string (the namespace's mangled name, or a shared image's
            // real one), which only ever names an image the namespace may use. Asking the daemon
            // first (an image inspect per create) would change nothing.
            return self.image_name(&r);
        }
        match self.image(daemon, typed).await {
            // As the client wrote it (`alpine`, not `alpine:latest`): the daemon records the
            // string in `Config.Image`, `ps` and events, and resolves the same image from it.
            Ok(ImageRef::Owned(m) | ImageRef::Shared(m)) if r.tag.is_none() && r.digest.is_none() => {
                Ok(m.strip_suffix(":latest").map_or(m.clone(), str::to_owned))
            }
            Ok(found) => Ok(found.daemon_name().to_owned()),
            Err(NsError::NotFound(_)) => self.image_name(&r),
            Err(e) => Err(e),
        }
    }

    /// `HostConfig.Mounts` of type `image` (API 1.48): the container reads the `Source` image, which
    /// dockerd resolves by name, ID or ID prefix like `Config.Image`, so it is resolved the same way.
    async fn image_mounts(&self, daemon: &Daemon, host: &mut Map<String, Value>) -> Result<(), NsError> {
        let Some(Value::Array(mounts)) = host.get_mut("Mounts") else { return Ok(()) };
        for m in mounts.iter_mut() {
            // dockerd compares the type exactly (`mount.TypeImage`); any other spelling is refused by it.
            if m.get("Type").and_then(Value::as_str) != Some("image") {
                continue;
            }
            let Some(src) = m.get("Source").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned) else { continue };
            let resolved = self.image_to_use(daemon, &src).await?;
            m["Source"] = Value::String(resolved);
        }
        Ok(())
    }

    /// An image in a list or events filter (`ancestor`, `image`): the daemon-side name of an image
    /// the namespace may use; anything else becomes a name that exists nowhere, so the filter
    /// matches nothing, as the daemon's filter does for an image that does not exist (an ID or
    /// prefix of another namespace's image must not select anything).
    async fn image_filter(&self, daemon: &Daemon, typed: &str) -> Result<String, NsError> {
        match self.image(daemon, typed).await {
            Ok(img) => Ok(img.daemon_name().to_owned()),
            Err(NsError::NotFound(_)) => {
                let nothing = Reference::parse(typed).unwrap_or_else(|_| Reference {
                    domain: crate::docker::reference::DEFAULT_DOMAIN.into(),
                    path: "ctproxy/no-such-image".into(),
                    tag: None,
                    digest: None,
                });
                Ok(self.name.image(&self.settings.registry, &nothing)?.to_string())
            }
            Err(e) => Err(e),
        }
    }

    /// `DELETE /images/{id}` by ID: each of the namespace's tags is removed; the daemon deletes the
    /// image when its last tag goes.
    async fn untag_all(&self, daemon: &Daemon, tags: &[String], q: &Query) -> Result<Prepared, NsError> {
        let mut out = Vec::new();
        for t in tags {
            let path = format!("/images/{}?force={}&noprune={}", super::daemon::enc(t), q.bool("force"), q.bool("noprune"));
            let (status, body) = daemon.call(Method::DELETE, &path, None).await?;
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            // A reference that went with an earlier one (a digest of a removed tag) is no error.
            if status == hyper::StatusCode::NOT_FOUND && !out.is_empty() {
                continue;
            }
            if !status.is_success() {
                return Ok(Prepared::Answer(status, v));
            }
            if let Value::Array(items) = v {
                out.extend(self.client_delete_items(items));
            }
        }
        Ok(Prepared::Answer(hyper::StatusCode::OK, Value::Array(out)))
    }

    /// The items of an image removal's answer as the client sees them (these answers are made
    /// here, not de-mangled on their way back): hidden tags left out, the namespace's tags and
    /// digests under the client's names (`untagged: app:1`, not the daemon-side reference), an
    /// image ID deleted by several removals listed once.
    fn client_delete_items(&self, items: Vec<Value>) -> Vec<Value> {
        let reg = &self.settings.registry;
        let mut out: Vec<Value> = Vec::new();
        for mut i in items {
            if let Some(t) = i.get("Untagged").and_then(Value::as_str).map(str::to_owned) {
                if self.name.is_hidden(reg, &t) {
                    continue;
                }
                if let Some(client) = self.name.unimage_str(reg, &t) {
                    i["Untagged"] = Value::String(client);
                }
            }
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// `POST /images/prune`: the daemon would prune every namespace's images, so it is done here,
    /// with dockerd's filters (`dangling`, `until`, `label`, `label!`). Its images that no container
    /// uses and that have no tag the client sees (only hidden ones) go; with `dangling=false`, all
    /// its images that no container uses.
    async fn image_prune(&self, daemon: &Daemon, q: &Query) -> Result<Prepared, NsError> {
        let f = Filters::parse(q.get("filters"))?;
        let prune = match PruneFilter::new(&f, std::time::SystemTime::now()) {
            Ok(p) => p,
            // dockerd before 23.0 spells it "Invalid filter".
            Err(NsError::Invalid(m)) if m.starts_with("invalid filter") => {
                let major = daemon.major_version().await;
                return Err(NsError::Invalid(if major.is_some_and(|m| m < 23) { format!("I{}", &m[1..]) } else { m }));
            }
            Err(e) => return Err(e),
        };
        let used: Vec<String> =
            self.own_containers(daemon).await?.iter().filter_map(|c| c.get("ImageID").and_then(Value::as_str).map(str::to_owned)).collect();
        let images = daemon.list("/images/json").await?;
        let mut deleted: Vec<Value> = Vec::new();
        for img in &images {
            let id = img.get("Id").and_then(Value::as_str).unwrap_or("");
            if used.iter().any(|u| u == id) || (prune.dangling_only && !self.visible_own_tags(img).is_empty()) || !prune.matches(img) {
                continue;
            }
            for t in self.own_tags(img) {
                let (status, body) = daemon.call(Method::DELETE, &format!("/images/{}", super::daemon::enc(&t)), None).await?;
                if status.is_success() {
                    if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) {
                        for i in self.client_delete_items(items) {
                            if !deleted.contains(&i) {
                                deleted.push(i);
                            }
                        }
                    }
                }
            }
        }
        let deleted = if deleted.is_empty() { Value::Null } else { Value::Array(deleted) };
        Ok(Prepared::Answer(hyper::StatusCode::OK, serde_json::json!({"ImagesDeleted": deleted, "SpaceReclaimed": 0})))
    }

    /// A named volume of `HostConfig.Binds` (`-v data:/data`) that does not exist yet is created
    /// here, with the namespace's label, before the container: dockerd would create it without
    /// one (`Binds` carry no volume options), so it would be missing from the namespace's
    /// `volume ls`, `system df` and prunes, and outlive the namespace. Same driver as the daemon
    /// would use (`HostConfig.VolumeDriver`, else `local`). A create the daemon refuses is left
    /// to the container create, which then gets the daemon's own error.
    async fn label_bound_volume(&self, daemon: &Daemon, volume: &str, driver: &str) -> Result<(), NsError> {
        use super::daemon::enc;
        if self.known.volume(volume) {
            return Ok(());
        }
        let seen = self.known.generation();
        if let Some(v) = daemon.get(&format!("/volumes/{}", enc(volume))).await? {
            if self.owns_labels(v.get("Labels")) {
                self.known.saw_volume(seen, volume);
            }
            return Ok(());
        }
        let mut labels = Value::Null;
        self.set_label(&mut labels);
        let body = serde_json::json!({ "Name": volume, "Driver": driver, "Labels": labels });
        let (status, answer) = daemon.call(Method::POST, "/volumes/create", Some(&body)).await?;
        if status.is_success() {
            self.known.saw_volume(seen, volume);
        } else {
            tracing::debug!(%volume, %status, answer = %String::from_utf8_lossy(&answer), "bound volume not created ahead");
        }
        Ok(())
    }

    /// `POST /containers/create`: every name in the body, and the ownership label.
    async fn create_body(&self, daemon: &Daemon, body: &mut Value, name: &str) -> Result<(), NsError> {
        let Value::Object(body) = body else { return Ok(()) };
        // The default network is the namespace's own, even when the body has no HostConfig.
        if !body.get("HostConfig").is_some_and(Value::is_object) {
            body.insert("HostConfig".into(), Value::Object(Map::new()));
        }
        self.set_label(body.entry("Labels").or_insert(Value::Null));
        if let Some(img) = body.get("Image").and_then(Value::as_str).filter(|i| !i.is_empty()).map(str::to_owned) {
            body.insert("Image".into(), Value::String(self.image_to_use(daemon, &img).await?));
        }
        let Some(Value::Object(host)) = body.get_mut("HostConfig") else { return Ok(()) };
        self.image_mounts(daemon, host).await?;
        let mut named = Vec::new();
        if let Some(Value::Array(binds)) = host.get_mut("Binds") {
            for b in binds.iter_mut() {
                let Some(s) = b.as_str() else { continue };
                let (src, rest) = s.split_once(':').unwrap_or((s, ""));
                if !src.is_empty() && !src.starts_with('/') {
                    let m = self.name.object(src)?;
                    named.push(m.clone());
                    *b = Value::String(if rest.is_empty() { m } else { format!("{m}:{rest}") });
                }
            }
        }
        let driver = host.get("VolumeDriver").and_then(Value::as_str).filter(|d| !d.is_empty()).unwrap_or("local").to_owned();
        for volume in named {
            self.label_bound_volume(daemon, &volume, &driver).await?;
        }
        if let Some(Value::Array(mounts)) = host.get_mut("Mounts") {
            for m in mounts.iter_mut() {
                let Value::Object(m) = m else { continue };
                if m.get("Type").and_then(Value::as_str) != Some("volume") {
                    continue;
                }
                if let Some(src) = m.get("Source").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned) {
                    m.insert("Source".into(), Value::String(self.name.object(&src)?));
                    // A volume created by this mount is the namespace's too.
                    let opts = m.entry("VolumeOptions").or_insert_with(|| Value::Object(Map::new()));
                    if !opts.is_object() {
                        *opts = Value::Object(Map::new());
                    }
                    if let Value::Object(o) = opts {
                        self.set_label(o.entry("Labels").or_insert(Value::Null));
                    }
                }
            }
        }
        if let Some(Value::Array(from)) = host.get_mut("VolumesFrom") {
            for v in from.iter_mut() {
                let Some(s) = v.as_str().map(str::to_owned) else { continue };
                let (c, mode) = s.split_once(':').map_or((s.as_str(), None), |(c, m)| (c, Some(m)));
                let id = self.container(daemon, c).await?;
                *v = Value::String(mode.map_or(id.clone(), |m| format!("{id}:{m}")));
            }
        }
        for key in ["PidMode", "IpcMode", "Cgroup"] {
            if let Some(c) = host.get(key).and_then(Value::as_str).and_then(|m| m.strip_prefix("container:")).map(str::to_owned) {
                let id = self.container(daemon, &c).await?;
                host.insert(key.into(), Value::String(format!("container:{id}")));
            }
        }
        self.mangle_links(host.get_mut("Links"))?;
        let mode = host.get("NetworkMode").and_then(Value::as_str).unwrap_or("").to_owned();
        let network = if let Some(c) = mode.strip_prefix("container:") {
            let id = self.container(daemon, c).await?;
            host.insert("NetworkMode".into(), Value::String(format!("container:{id}")));
            None
        } else if matches!(mode.as_str(), "host" | "none") {
            None
        } else {
            // No mode, `default` and `bridge` are the namespace's own default network, as dockerd
            // turns them into its default `bridge`.
            let net = if mode.is_empty() { self.default_network(daemon).await? } else { self.network(daemon, &mode).await? };
            host.insert("NetworkMode".into(), Value::String(net.clone()));
            Some((mode, net))
        };
        self.endpoints(daemon, body, network, name).await
    }

    /// `NetworkingConfig.EndpointsConfig`: network names as keys, links, and the container's own
    /// name as an alias on the namespace's networks (its daemon-side name is the mangled one).
    async fn endpoints(
        &self,
        daemon: &Daemon,
        body: &mut Map<String, Value>,
        mode: Option<(String, String)>,
        name: &str,
    ) -> Result<(), NsError> {
        let mut eps = match body.get_mut("NetworkingConfig").and_then(|n| n.get_mut("EndpointsConfig")) {
            Some(Value::Object(m)) => std::mem::take(m),
            _ => Map::new(),
        };
        let mut out = Map::new();
        for (net, mut ep) in std::mem::take(&mut eps) {
            let resolved = match &mode {
                Some((typed, resolved)) if *typed == net => resolved.clone(),
                _ => self.network(daemon, &net).await?,
            };
            if let Value::Object(e) = &mut ep {
                self.mangle_links(e.get_mut("Links"))?;
            }
            self.endpoint_network_id(daemon, &mut ep, &resolved).await?;
            if !is_predefined(&resolved) {
                add_alias(&mut ep, name);
            }
            out.insert(resolved, ep);
        }
        // The mode's network gets the container's name as an alias too, unless the client named
        // other networks only (one endpoint is all an API < 1.44 create may have).
        if let Some((_, resolved)) = mode {
            if out.is_empty() {
                let mut ep = Value::Object(Map::new());
                add_alias(&mut ep, name);
                out.insert(resolved, ep);
            }
        }
        if !out.is_empty() {
            let nc = body.entry("NetworkingConfig").or_insert_with(|| Value::Object(Map::new()));
            if !nc.is_object() {
                *nc = Value::Object(Map::new());
            }
            if let Value::Object(nc) = nc {
                nc.insert("EndpointsConfig".into(), Value::Object(out));
            }
        }
        Ok(())
    }

    /// `Links` entries `name[:alias]`: the target is the namespace's container; the alias defaults
    /// to the name the client typed.
    fn mangle_links(&self, links: Option<&mut Value>) -> Result<(), NsError> {
        let Some(Value::Array(links)) = links else { return Ok(()) };
        for l in links.iter_mut() {
            let Some(s) = l.as_str() else { continue };
            let (target, alias) = s.split_once(':').unwrap_or((s, s));
            let target = target.trim_start_matches('/');
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            *l = Value::String(format!("{}:{alias}", self.name.object(target)?));
        }
        Ok(())
    }
}

/// `body` with its tar member `name` (a small JSON file) rewritten by `f`.
pub fn tar_member<B>(
    body: B,
    name: &str,
    f: impl FnMut(&str) -> Result<String, String> + Send + 'static,
) -> Result<http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::http::BoxError>, NsError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::http::BoxError>,
{
    let ctx = crate::docker::buildctx::RewrittenContext::new(body, Some(name), 16 << 20, Box::new(f))
        .map_err(|e| NsError::Malformed(e.to_string()))?;
    Ok(http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(ctx, |e| Box::new(e) as crate::http::BoxError)))
}

/// The reference dockerd pulls for `fromImage` and `tag` (moby `postImagesCreate`): a `tag` that
/// is a digest replaces tag and digest, any other `tag` replaces the tag.
fn pull_target(from_image: &Reference, tag: &str) -> Reference {
    if tag.is_empty() {
        return from_image.clone();
    }
    if Reference::parse(&format!("x@{tag}")).is_ok() {
        return Reference { tag: None, digest: Some(tag.to_owned()), ..from_image.clone() };
    }
    Reference { tag: Some(tag.to_owned()), ..from_image.clone() }
}

/// `GET /images/search`: dockerd queries the registry named in the term itself (plain HTTP for
/// loopback and insecure registries), past the registry proxy: only Docker Hub is searched from a
/// namespace (moby `splitReposSearchTerm`, `normalizeIndexName`).
fn search_on_hub(term: &str) -> Result<(), NsError> {
    let index = match term.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => return Ok(()),
    };
    if matches!(index, "docker.io" | "index.docker.io") {
        return Ok(());
    }
    Err(NsError::refused(format!(
        "searching the registry {index} (term) is not available in a namespace: the daemon would contact it directly, past the registry proxy; only Docker Hub is searched"
    )))
}

fn add_alias(ep: &mut Value, alias: &str) {
    if !ep.is_object() {
        *ep = Value::Object(Map::new());
    }
    let Value::Object(e) = ep else { return };
    let aliases = e.entry("Aliases").or_insert_with(|| Value::Array(Vec::new()));
    if !aliases.is_array() {
        *aliases = Value::Array(Vec::new());
    }
    if let Value::Array(a) = aliases {
        if !a.iter().any(|x| x.as_str() == Some(alias)) {
            a.push(Value::String(alias.to_owned()));
        }
    }
}

/// Drops labels in ctproxy's reserved key space (`io.ctproxy.`), which only ctproxy sets.
fn strip_reserved_labels(labels: Option<&mut Value>) {
    if let Some(Value::Object(m)) = labels {
        m.retain(|k, _| !k.to_ascii_lowercase().starts_with("io.ctproxy."));
    }
}

/// A name for a container created without one: the daemon's own names would not carry the
/// namespace, and the client must be able to use the name it is shown.
fn generated_name() -> String {
    const LEFT: [&str; 12] = ["brave", "calm", "eager", "fervent", "gifted", "happy", "jolly", "keen", "lucid", "nifty", "quirky", "zen"];
    const RIGHT: [&str; 12] =
        ["babbage", "curie", "darwin", "euler", "fermat", "gauss", "hopper", "lovelace", "noether", "pascal", "turing", "wozniak"];
    let mut b = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let suffix: String = b[2..].iter().map(|x| format!("{x:02x}")).collect();
    format!("{}_{}_{suffix}", LEFT[b[0] as usize % LEFT.len()], RIGHT[b[1] as usize % RIGHT.len()])
}

pub(super) fn random_hex64() -> String {
    let mut b = [0u8; 32];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The filters of `POST /images/prune`, checked and applied as dockerd does
/// (`daemon/images/image_prune.go`): only `dangling`, `until`, `label` and `label!` are accepted.
struct PruneFilter {
    dangling_only: bool,
    /// Images created after this (Unix seconds) are kept.
    until: Option<f64>,
    labels: Vec<String>,
    not_labels: Vec<String>,
}

impl PruneFilter {
    fn new(f: &Filters, now: std::time::SystemTime) -> Result<PruneFilter, NsError> {
        let invalid = |m: String| NsError::Invalid(m);
        if let Some(k) = f.0.keys().find(|k| !matches!(k.as_str(), "dangling" | "until" | "label" | "label!")) {
            return Err(invalid(format!("invalid filter '{k}'")));
        }
        let dangling_only = match f.0.get("dangling") {
            None => true,
            Some(v) => {
                let is_false = v.iter().any(|x| x == "0" || x == "false");
                let is_true = v.iter().any(|x| x == "1" || x == "true");
                if is_false == is_true {
                    return Err(invalid(format!("invalid filter 'dangling=[{}]'", v.join(" "))));
                }
                is_true
            }
        };
        let until = match f.0.get("until").map(Vec::as_slice) {
            None | Some([]) => None,
            Some([one]) => {
                let now = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                Some(crate::docker::timestamp::parse(one, now).map_err(|e| invalid(format!("invalid value for 'until' filter: {e}")))?)
            }
            Some(_) => return Err(invalid("more than one until filter specified".into())),
        };
        let list = |k: &str| f.0.get(k).cloned().unwrap_or_default();
        Ok(PruneFilter { dangling_only, until, labels: list("label"), not_labels: list("label!") })
    }

    /// An image of `GET /images/json` (`Created`, `Labels`) passes `until` and the label filters.
    fn matches(&self, img: &Value) -> bool {
        if let Some(until) = self.until {
            match img.get("Created").and_then(Value::as_f64) {
                Some(created) if created <= until => {}
                _ => return false,
            }
        }
        let labels = img.get("Labels").and_then(Value::as_object);
        // `filters.MatchKVList`: every `k` or `k=v` holds; none given always holds.
        let all = |conds: &[String]| {
            conds.iter().all(|c| {
                let (k, v) = c.split_once('=').map_or((c.as_str(), None), |(k, v)| (k, Some(v)));
                labels.and_then(|l| l.get(k)).and_then(Value::as_str).is_some_and(|have| v.is_none_or(|v| v == have))
            })
        };
        all(&self.labels) && (self.not_labels.is_empty() || !all(&self.not_labels))
    }
}

#[cfg(test)]
mod image_tests {
    use super::*;

    #[test]
    fn pull_target_combines_like_dockerd() {
        let r = |s: &str| Reference::parse(s).unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(pull_target(&r("busybox:1"), ""), r("busybox:1"));
        assert_eq!(pull_target(&r("busybox:1"), "2"), r("busybox:2"));
        // A digest replaces tag and digest; a tag keeps the digest.
        assert_eq!(pull_target(&r("busybox:1"), &d), r(&format!("busybox@{d}")));
        assert_eq!(pull_target(&r(&format!("busybox@{d}")), "3").to_string(), format!("docker.io/library/busybox:3@{d}"));
    }

    #[test]
    fn search_stays_on_docker_hub() {
        for ok in ["busybox", "team/app", "docker.io/library/x", "index.docker.io/x", "a_b/c"] {
            assert!(search_on_hub(ok).is_ok(), "{ok}");
        }
        for bad in ["127.0.0.1:8080/x", "localhost/x", "registry.example.com/x", "host:5000/a/b"] {
            assert_eq!(search_on_hub(bad).unwrap_err().status(), hyper::StatusCode::FORBIDDEN, "{bad}");
        }
    }
}
