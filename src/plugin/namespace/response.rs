//! What a namespace does to the daemon's answer: filter lists to its own objects, de-mangle every
//! name, drop other namespaces' events.
//!
//! Small JSON answers (lists, inspect, errors) are read whole, up to a limit, and re-encoded.
//! Streams of JSON lines (events, stats, pull/push/build progress) are rewritten line by line as
//! they flow; a line with nothing to rewrite is passed on as the same bytes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use super::filters::{Filters, NameMatch};
use super::resolve::strings;
use super::text::Demangler;
use super::{Daemon, Namespace, NsError, NS_LABEL};
use crate::docker::reference::Reference;
use crate::http::{BoxError, ProxyBody};

/// Which list endpoint an answer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Containers,
    Images,
    Networks,
    Volumes,
}

/// `docker info`'s counts of a namespace: containers (all, running, paused, stopped) and images.
pub type Counts = (usize, usize, usize, usize, usize);

/// What to do with the daemon's answer.
pub enum After {
    /// Streams and hijacks: passed on untouched (errors are still de-mangled).
    Pass,
    /// A JSON answer: de-mangled.
    Json,
    /// A JSON answer to a request that may have removed what the namespace remembers (a network
    /// or volume prune, a volume removal): de-mangled, and the namespace forgets (`network::Known`).
    Forget,
    /// JSON lines (stats, progress): de-mangled line by line.
    Lines,
    /// Build output: JSON lines, de-mangled.
    Build,
    /// `docker save`: the image names inside the tar de-mangled.
    SaveTar,
    /// `docker load`: JSON lines, unless the archive rewrite stopped the load (then its refusal).
    Load(super::archive::LoadGuard),
    /// Container inspect: the alias ctproxy added (the container's own name) not shown twice.
    ContainerInspect,
    /// Image inspect: only the tags the namespace may see.
    ImageInspect,
    /// Image history: only the tags the namespace may see.
    ImageHistory,
    /// The event stream: other namespaces' events dropped, the rest de-mangled.
    Events,
    /// `GET /containers/{id}/changes` of this container: the mount points ctproxy added (and the
    /// parents their creation changed) left out.
    Changes(String),
    /// `docker export` of this container: the same directories left out of the tar.
    Export(String),
    /// `docker commit` of this container into this (daemon-side) reference: the image is
    /// rewritten without those directories (`super::commit`).
    Commit {
        container: String,
        reference: String,
    },
    /// `docker info`: the namespace's counts, asked of the daemon while it answers (BuildKit's
    /// clients ask `/info` before every build).
    Info(tokio::task::JoinHandle<Result<Counts, NsError>>),
    SystemDf,
    NetworkInspect,
    List {
        kind: ListKind,
        names: NameMatch,
        limit: Option<usize>,
        refs: Vec<String>,
        /// The `dangling` filter, applied here: the daemon counts hidden tags as tags.
        dangling: Option<bool>,
        /// API < 1.43: an image without tags lists `<none>:<none>` (dockerd's `useNone`).
        none_placeholder: bool,
    },
}

/// The longest JSON line a stream rewriter holds; longer ones are passed on as they are.
const MAX_LINE: usize = 1 << 20;

impl Namespace {
    /// Applies `after` to the daemon's answer.
    pub async fn finish(&self, daemon: &Daemon, after: After, rsp: Response<ProxyBody>) -> Response<ProxyBody> {
        if let After::Load(guard) = &after {
            // The body was cut short on purpose: whatever the daemon said about a truncated archive
            // (or the connection it lost) is not the answer.
            if let Some(e) = guard.take() {
                tracing::warn!(
                    target: "ctproxy::audit",
                    namespace = %self.name,
                    endpoint = "ImageLoad",
                    status = e.status().as_u16(),
                    reason = %e,
                    "request refused by namespace"
                );
                return crate::http::respond::error(e.status(), &e.to_string());
            }
            // Not a tar archive: dockerd answers 200 and ends its progress stream with the error.
            if let Some(m) = guard.take_unreadable() {
                // Until 24.0 the graphdriver store untarred in a re-executed `docker-untar`, whose
                // failure dockerd wrapped; later daemons (both stores) give archive/tar's alone.
                let m = match daemon.major_version().await {
                    Some(major) if major < 24 => format!("Error processing tar file(exit status 1): {m}"),
                    _ => m,
                };
                let line = serde_json::json!({"errorDetail": {"message": m}, "error": m});
                let mut b = serde_json::to_vec(&line).unwrap_or_default();
                b.push(b'\n');
                let mut rsp = Response::new(ProxyBody::full(Bytes::from(b)));
                rsp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                return rsp;
            }
        }
        let status = rsp.status();
        if matches!(after, After::Forget) {
            self.forget_known();
        }
        if status == StatusCode::SWITCHING_PROTOCOLS || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return rsp;
        }
        if !status.is_success() {
            // An error that names the default network (`network ctp.<ns>.bridge not found`): it
            // is gone, whatever the namespace remembered.
            return self
                .rewrite_whole(rsp, |ns, v| {
                    if v.get("message").and_then(Value::as_str).is_some_and(|m| ns.names_default_network(m)) {
                        ns.forget_known();
                    }
                    Ok(v)
                })
                .await;
        }
        match after {
            After::Pass => rsp,
            After::Json => self.rewrite_whole(rsp, |_, v| Ok(v)).await,
            After::ContainerInspect => {
                self.rewrite_whole(rsp, |ns, mut v| {
                    ns.hide_own_alias(&mut v);
                    Ok(v)
                })
                .await
            }
            // A network prune: the namespace's default network is its `bridge`, made again on
            // first use, and the daemon never lists its own `bridge` as pruned.
            After::Forget => {
                self.rewrite_whole(rsp, |ns, mut v| {
                    if let Some(Value::Array(nets)) = v.get_mut("NetworksDeleted") {
                        nets.retain(|n| !n.as_str().is_some_and(|n| ns.is_default_network(n)));
                    }
                    Ok(v)
                })
                .await
            }
            After::Lines | After::Build | After::Load(_) => self.rewrite_lines(rsp, false),
            After::ImageInspect => {
                let users = self.own_users(daemon).await;
                self.rewrite_whole(rsp, move |ns, mut v| {
                    ns.image_users(&mut v, &users);
                    ns.visible_tags(&mut v, "RepoTags");
                    ns.visible_tags(&mut v, "RepoDigests");
                    ns.client_sources(&mut v);
                    ns.scrub_foreign(&mut v);
                    Ok(v)
                })
                .await
            }
            After::ImageHistory => {
                self.rewrite_whole(rsp, |ns, mut v| {
                    for entry in v.as_array_mut().into_iter().flatten() {
                        ns.visible_tags(entry, "Tags");
                    }
                    ns.scrub_foreign(&mut v);
                    Ok(v)
                })
                .await
            }
            After::Events => self.rewrite_lines(rsp, true),
            After::Changes(id) => {
                let added = match daemon.get(&format!("/containers/{}/json", super::daemon::enc(&id))).await {
                    Ok(Some(c)) => decoration_mounts(&c),
                    _ => Vec::new(),
                };
                self.rewrite_whole(rsp, move |_, mut v| {
                    if let Value::Array(changes) = &mut v {
                        hide_decoration(changes, &added);
                    }
                    Ok(v)
                })
                .await
            }
            After::Export(id) => {
                // Only what the daemon created for the mounts: modified parents are the image's.
                let drop = match decoration_paths(daemon, &id, false).await {
                    Ok(d) if !d.is_empty() => d,
                    _ => return rsp,
                };
                let (mut parts, body) = rsp.into_parts();
                parts.headers.remove(header::CONTENT_LENGTH);
                Response::from_parts(parts, ProxyBody::boxed(super::export::ExportFilter::new(body, drop)))
            }
            After::Commit { container, reference } => {
                let (parts, body) = rsp.into_parts();
                let bytes = match Limited::new(body, self.settings.max_response).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => {
                        tracing::warn!(error = %e, "answer not rewritten: unreadable or too large");
                        return crate::http::respond::error(StatusCode::BAD_GATEWAY, "ctproxy: the daemon's answer could not be read");
                    }
                };
                let mut out = bytes.clone();
                if let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(old) = v.get("Id").and_then(Value::as_str).map(str::to_owned) {
                        match super::commit::undecorate(daemon, &container, &old, &reference).await {
                            Ok(Some(new)) => {
                                v["Id"] = Value::String(new);
                                let mut b = serde_json::to_vec(&v).unwrap_or_default();
                                if bytes.ends_with(b"\n") {
                                    b.push(b'\n');
                                }
                                out = Bytes::from(b);
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!(
                                namespace = %self.name,
                                image = %old,
                                error = %e,
                                "committed image keeps the CA mount points: it could not be rewritten"
                            ),
                        }
                    }
                }
                let mut parts = parts;
                parts.headers.remove(header::CONTENT_LENGTH);
                self.rewrite_whole(Response::from_parts(parts, ProxyBody::full(out)), |_, v| Ok(v)).await
            }
            After::SaveTar => self.rewrite_save(rsp),
            After::Info(counts) => {
                let counts = counts.await.unwrap_or_else(|e| Err(NsError::Daemon(format!("counting: {e}"))));
                self.rewrite_whole(rsp, move |_, mut v| {
                    if let (Ok((all, running, paused, stopped, images)), Value::Object(m)) = (&counts, &mut v) {
                        m.insert("Containers".into(), (*all).into());
                        m.insert("ContainersRunning".into(), (*running).into());
                        m.insert("ContainersPaused".into(), (*paused).into());
                        m.insert("ContainersStopped".into(), (*stopped).into());
                        m.insert("Images".into(), (*images).into());
                    }
                    Ok(v)
                })
                .await
            }
            After::SystemDf => {
                let users = self.own_users(daemon).await;
                self.rewrite_whole(rsp, move |ns, mut v| {
                    if let Value::Object(m) = &mut v {
                        if let Some(Value::Array(images)) = m.get_mut("Images") {
                            images.retain_mut(|img| ns.keep_image(img, &[], None));
                            images.iter_mut().for_each(|img| ns.image_users(img, &users));
                        }
                        for key in ["Containers", "Volumes"] {
                            if let Some(Value::Array(items)) = m.get_mut(key) {
                                items.retain(|c| ns.owns_labels(c.get("Labels")));
                            }
                        }
                        m.insert("BuildCache".into(), Value::Array(Vec::new()));
                    }
                    Ok(v)
                })
                .await
            }
            After::NetworkInspect => {
                let own: Vec<String> = match self.own_containers(daemon).await {
                    Ok(list) => list.iter().filter_map(|c| c.get("Id").and_then(Value::as_str).map(str::to_owned)).collect(),
                    Err(_) => Vec::new(),
                };
                self.rewrite_whole(rsp, move |_, mut v| {
                    if let Some(Value::Object(cs)) = v.get_mut("Containers") {
                        cs.retain(|id, _| own.iter().any(|o| o == id));
                    }
                    Ok(v)
                })
                .await
            }
            After::List { kind, names, limit, refs, dangling, none_placeholder } => {
                let users = if kind == ListKind::Images { self.own_users(daemon).await } else { Vec::new() };
                self.rewrite_whole(rsp, move |ns, v| {
                    let mut v = ns.filter_list(kind, &names, limit, &refs, v, dangling)?;
                    if kind == ListKind::Images && none_placeholder {
                        for img in v.as_array_mut().into_iter().flatten() {
                            let empty = |k: &str| img.get(k).and_then(Value::as_array).is_none_or(Vec::is_empty);
                            if empty("RepoTags") && empty("RepoDigests") {
                                img["RepoTags"] = serde_json::json!(["<none>:<none>"]);
                                img["RepoDigests"] = serde_json::json!(["<none>@<none>"]);
                            }
                        }
                    }
                    if kind == ListKind::Images {
                        v.as_array_mut().into_iter().flatten().for_each(|img| ns.image_users(img, &users));
                    }
                    Ok(v)
                })
                .await
            }
        }
    }

    /// The namespace's containers as (ID, image ID): an image's users as the namespace may see them.
    /// None when the daemon cannot say (then no user is shown).
    async fn own_users(&self, daemon: &Daemon) -> Vec<(String, String)> {
        let str_of = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).map(str::to_owned);
        match self.own_containers(daemon).await {
            Ok(list) => list.iter().filter_map(|c| Some((str_of(c, "Id")?, str_of(c, "ImageID").unwrap_or_default()))).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// An image summary or inspect answer counts and lists the containers that use it, in every
    /// namespace (`Containers`, `Manifests[].ImageData.Containers`): only the namespace's own stay.
    fn image_users(&self, img: &mut Value, own: &[(String, String)]) {
        let id = img.get("Id").and_then(Value::as_str).unwrap_or("").to_owned();
        if img.get("Containers").and_then(Value::as_i64).is_some_and(|n| n >= 0) {
            img["Containers"] = own.iter().filter(|(_, image)| *image == id).count().into();
        }
        if let Some(Value::Array(manifests)) = img.get_mut("Manifests") {
            for m in manifests.iter_mut() {
                if let Some(Value::Array(users)) = m.pointer_mut("/ImageData/Containers") {
                    users.retain(|c| c.as_str().is_some_and(|c| own.iter().any(|(o, _)| o == c)));
                }
            }
        }
    }

    /// ctproxy adds a container's client name as an alias on its networks (the daemon knows it
    /// as `ctp.<ns>.<name>`); the daemon never lists a container's own name in `Aliases`, so
    /// that alias is left out of `Aliases`, and out of `DNSNames` (API 1.45+) where the name is
    /// then listed twice (the daemon-side name de-mangles to it). The answer is the daemon's own
    /// for the name the client gave.
    fn hide_own_alias(&self, v: &mut Value) {
        let Some(daemon_name) = v.get("Name").and_then(Value::as_str).map(|n| n.trim_start_matches('/').to_owned()) else { return };
        let Some(client) = self.name.unobject(&daemon_name).map(str::to_owned) else { return };
        let Some(Value::Object(nets)) = v.pointer_mut("/NetworkSettings/Networks") else { return };
        let drop_one = |a: &mut Vec<Value>| {
            if let Some(i) = a.iter().position(|x| x.as_str() == Some(client.as_str())) {
                a.remove(i);
            }
        };
        for ep in nets.values_mut() {
            if let Some(Value::Array(a)) = ep.get_mut("Aliases") {
                drop_one(a);
            }
            if let Some(Value::Array(d)) = ep.get_mut("DNSNames") {
                if d.iter().any(|x| x.as_str() == Some(daemon_name.as_str())) {
                    drop_one(d);
                }
            }
        }
    }

    /// Whether the namespace may see an image reference: its own, or a shared one.
    fn visible_ref(&self, t: &str) -> bool {
        self.name.unimage_str(&self.settings.registry, t).is_some() || self.shared_ref(t)
    }

    /// Whether an image reference is a shared image's (the same for every namespace).
    fn shared_ref(&self, t: &str) -> bool {
        Reference::parse(t).is_ok_and(|r| self.is_shared(&Reference { tag: None, digest: None, ..r }.familiar()))
    }

    /// Keeps only the visible references of the array `key` of `v`.
    fn visible_tags(&self, v: &mut Value, key: &str) {
        if let Some(Value::Array(a)) = v.get_mut(key) {
            a.retain(|t| t.as_str().is_some_and(|t| self.visible_ref(t)));
        }
    }

    /// Removes every string that names another namespace's image (a reference under the registry
    /// proxy outside this namespace's prefix), wherever it is: array items, and object entries whose
    /// key or value it is (descriptor annotations, identity records of newer daemons).
    pub(super) fn scrub_foreign(&self, v: &mut Value) {
        let reg = format!("{}/", self.settings.registry);
        let own = format!("{reg}{}/", self.name);
        let foreign = |s: &str| s.starts_with(&reg) && !s.starts_with(&own);
        match v {
            Value::Array(a) => {
                a.retain(|x| !x.as_str().is_some_and(foreign));
                a.iter_mut().for_each(|x| self.scrub_foreign(x));
            }
            Value::Object(m) => {
                m.retain(|k, x| !foreign(k) && !x.as_str().is_some_and(foreign));
                m.values_mut().for_each(|x| self.scrub_foreign(x));
            }
            _ => {}
        }
    }

    /// Keeps an image summary if the namespace may see it (it has a visible tag, or it is the
    /// namespace's own untagged image), with only the tags it may see; `dangling` selects images
    /// without (`true`) or with (`false`) a tag the client sees.
    fn keep_image(&self, img: &mut Value, refs: &[String], dangling: Option<bool>) -> bool {
        let reg = self.settings.registry.as_str();
        let visible = |t: &str| self.visible_ref(t);
        let tags: Vec<Value> = strings(img.get("RepoTags")).filter(|t| visible(t)).map(|t| Value::String(t.to_owned())).collect();
        if tags.is_empty() && (self.own_tags(img).is_empty() || !refs.is_empty()) {
            return false;
        }
        if dangling.is_some_and(|d| d != tags.is_empty()) {
            return false;
        }
        let digests: Vec<Value> = strings(img.get("RepoDigests")).filter(|t| visible(t)).map(|t| Value::String(t.to_owned())).collect();
        if !refs.is_empty() {
            let d = Demangler::new(&self.name, reg);
            let matches = tags.iter().filter_map(Value::as_str).any(|t| {
                let t = d.text(t);
                let repo = t.rsplit_once(':').map_or(t.as_ref(), |(r, _)| r);
                refs.iter().any(|p| super::glob(p, &t) || super::glob(p, repo))
            });
            if !matches {
                return false;
            }
        }
        if let Value::Object(m) = img {
            m.insert("RepoTags".into(), Value::Array(tags));
            m.insert("RepoDigests".into(), Value::Array(digests));
        }
        self.scrub_foreign(img);
        true
    }

    fn filter_list(
        &self,
        kind: ListKind,
        names: &NameMatch,
        limit: Option<usize>,
        refs: &[String],
        mut v: Value,
        dangling: Option<bool>,
    ) -> Result<Value, NsError> {
        let d = Demangler::new(&self.name, &self.settings.registry);
        let items = match (&kind, &mut v) {
            (ListKind::Volumes, Value::Object(m)) => match m.get_mut("Volumes") {
                Some(Value::Array(a)) => a,
                _ => return Ok(v),
            },
            (_, Value::Array(a)) => a,
            _ => return Ok(v),
        };
        match kind {
            ListKind::Containers => {
                items.retain(|c| {
                    self.owns_labels(c.get("Labels"))
                        && (names.is_empty()
                            || strings(c.get("Names")).any(|n| {
                                let n = d.text(n);
                                names.matches(&n) || names.matches(n.trim_start_matches('/'))
                            }))
                });
                if let Some(l) = limit {
                    items.truncate(l);
                }
            }
            ListKind::Images => items.retain_mut(|img| self.keep_image(img, refs, dangling)),
            ListKind::Networks => {
                items.retain_mut(|n| {
                    let name = n.get("Name").and_then(Value::as_str).unwrap_or("").to_owned();
                    let own = self.owns_labels(n.get("Labels"));
                    // The daemon's `bridge` is replaced by the namespace's own (see `network`).
                    let predefined = matches!(name.as_str(), "host" | "none");
                    if predefined {
                        if let Some(Value::Object(cs)) = n.get_mut("Containers") {
                            cs.clear();
                        }
                    }
                    (own || predefined) && names.matches(&d.text(&name))
                });
            }
            ListKind::Volumes => {
                items.retain(|vol| {
                    self.owns_labels(vol.get("Labels")) && names.matches(&d.text(vol.get("Name").and_then(Value::as_str).unwrap_or("")))
                });
            }
        }
        Ok(v)
    }

    /// Starts counting what `docker info` shows of the namespace (see [`After::Info`]).
    pub(super) fn start_counting(&self, daemon: &Daemon) -> tokio::task::JoinHandle<Result<Counts, NsError>> {
        let (ns, daemon) = (self.clone(), daemon.clone());
        tokio::spawn(tracing::Instrument::in_current_span(async move { ns.counts(&daemon).await }))
    }

    /// The namespace's own counts for `GET /info`: its containers by state, and its own and the
    /// shared images.
    async fn counts(&self, daemon: &Daemon) -> Result<Counts, NsError> {
        let cs = self.own_containers(daemon).await?;
        let state = |s: &str| cs.iter().filter(|c| c.get("State").and_then(Value::as_str) == Some(s)).count();
        let (running, paused) = (state("running"), state("paused"));
        let kept_ids = |mut images: Vec<Value>| -> Vec<String> {
            images.retain_mut(|img| self.keep_image(img, &[], None));
            images.iter().filter_map(|i| i.get("Id").and_then(Value::as_str).map(str::to_owned)).collect()
        };
        let query = |f: Filters| format!("/images/json?filters={}", super::daemon::enc(&f.encode()));
        let mut ids = match shared_candidates(&self.settings.shared_images) {
            Some(shared) => {
                let mut ids = kept_ids(daemon.list(&query(self.own_candidates())).await?);
                let known = self.settings.shared_ids.get();
                let shared_ids = match known {
                    Some(known) => known,
                    // No shared images: an empty filter would list them all.
                    None if shared.0.is_empty() => Vec::new(),
                    None => {
                        // Kept for every namespace: only what makes an image shared counts here.
                        let fresh = daemon
                            .list(&query(shared))
                            .await?
                            .iter()
                            .filter(|img| strings(img.get("RepoTags")).any(|t| self.shared_ref(t)))
                            .filter_map(|img| img.get("Id").and_then(Value::as_str).map(str::to_owned))
                            .collect::<Vec<_>>();
                        self.settings.shared_ids.put(fresh.clone());
                        fresh
                    }
                };
                ids.extend(shared_ids);
                ids
            }
            None => kept_ids(daemon.list("/images/json").await?),
        };
        ids.sort_unstable();
        ids.dedup();
        Ok((cs.len(), running, paused, cs.len() - running - paused, ids.len()))
    }

    /// A `reference` filter that selects every image with a tag of this namespace (hidden ones
    /// included), as [`shared_candidates`] does for the shared images.
    fn own_candidates(&self) -> Filters {
        let mut f = Filters::default();
        let own = format!("{}/{}", self.settings.registry, self.name);
        for depth in 1..=MAX_DEPTH {
            f.add("reference", format!("{own}/{}", stars(depth)));
        }
        f
    }

    /// Reads a JSON answer whole (up to the limit), applies `f`, de-mangles and re-encodes it.
    async fn rewrite_whole<F>(&self, rsp: Response<ProxyBody>, f: F) -> Response<ProxyBody>
    where
        F: FnOnce(&Namespace, Value) -> Result<Value, NsError>,
    {
        let (mut parts, body) = rsp.into_parts();
        let bytes = match Limited::new(body, self.settings.max_response).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, "answer not rewritten: unreadable or too large");
                return crate::http::respond::error(StatusCode::BAD_GATEWAY, "ctproxy: the daemon's answer could not be read");
            }
        };
        let d = Demangler::new(&self.name, &self.settings.registry);
        let out = match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => match f(self, v) {
                Ok(mut v) => {
                    d.value(&mut v);
                    let mut b = serde_json::to_vec(&v).unwrap_or_default();
                    if bytes.ends_with(b"\n") {
                        b.push(b'\n');
                    }
                    Bytes::from(b)
                }
                Err(e) => return crate::http::respond::error(e.status(), &e.to_string()),
            },
            // Not JSON (a plain-text error, an empty body): the text is de-mangled.
            Err(_) => match std::str::from_utf8(&bytes) {
                Ok(s) => Bytes::from(d.text(s).into_owned()),
                Err(_) => bytes,
            },
        };
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Response::from_parts(parts, ProxyBody::full(out))
    }

    fn rewrite_lines(&self, rsp: Response<ProxyBody>, events: bool) -> Response<ProxyBody> {
        let (mut parts, body) = rsp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let ns = self.clone();
        let demangler = Demangler::new(&self.name, &self.settings.registry);
        let hidden = self.name.hidden_repo(&self.settings.registry);
        let map = move |line: &[u8]| -> Option<Bytes> {
            let trimmed = trim_ascii(line);
            if trimmed.is_empty() {
                return (!events).then(|| Bytes::copy_from_slice(line));
            }
            if !events && !demangler.may_contain(line) {
                return Some(Bytes::copy_from_slice(line));
            }
            let Ok(mut v) = serde_json::from_slice::<Value>(trimmed) else {
                return (!events).then(|| Bytes::copy_from_slice(line));
            };
            if events && !ns.sees_event(&v) {
                return None;
            }
            if !events && !hide_line(&mut v, &hidden) {
                return None;
            }
            demangler.value(&mut v);
            let mut out = serde_json::to_vec(&v).ok()?;
            // Keep the line's own terminator (`\n`, `\r\n`).
            let end = line.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(line.len(), |i| i + 1);
            out.extend_from_slice(&line[end..]);
            Some(Bytes::from(out))
        };
        Response::from_parts(parts, ProxyBody::boxed(LineBody::new(body, Box::new(map))))
    }

    /// `docker save`: every name in the archive (`manifest.json`, `repositories`, `index.json`
    /// annotations) becomes the client's, so that loading it again in the namespace gives the same
    /// names (`super::archive`).
    fn rewrite_save(&self, rsp: Response<ProxyBody>) -> Response<ProxyBody> {
        use crate::docker::image_archive::{INDEX_JSON, MANIFEST_JSON, REPOSITORIES_FILE};
        let (mut parts, body) = rsp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let member = |ns: Namespace| move |text: &str| ns.save_member(text);
        let index = |ns: Namespace| move |text: &str| ns.save_index(text);
        let rewritten = super::request::tar_member(body, MANIFEST_JSON, member(self.clone()))
            .and_then(|b| super::request::tar_member(b, REPOSITORIES_FILE, member(self.clone())))
            .and_then(|b| super::request::tar_member(b, INDEX_JSON, index(self.clone())));
        match rewritten {
            Ok(b) => Response::from_parts(parts, ProxyBody::Boxed(b)),
            Err(e) => crate::http::respond::error(e.status(), &e.to_string()),
        }
    }

    /// Whether an event concerns one of the namespace's objects (`docker-api.md` §9).
    fn sees_event(&self, e: &Value) -> bool {
        let attrs = e.pointer("/Actor/Attributes");
        let attr = |k: &str| attrs.and_then(|a| a.get(k)).and_then(Value::as_str);
        let id = e.pointer("/Actor/ID").and_then(Value::as_str).unwrap_or("");
        let reg = &self.settings.registry;
        match e.get("Type").and_then(Value::as_str).unwrap_or("") {
            "container" => attr(NS_LABEL) == Some(self.name.as_str()),
            "network" => attr("name").is_some_and(|n| self.name.unobject(n).is_some()),
            "volume" => self.name.unobject(id).is_some(),
            "image" => attr("name").or(Some(id)).is_some_and(|n| self.name.unimage_str(reg, n).is_some()),
            _ => false,
        }
    }
}

/// The mount points of a container that ctproxy's CA injection added (`crate::cache`: read-only
/// binds at [`crate::cache::TRUST_MOUNT`] and [`crate::cache::LOCAL_CA_MOUNT`]; a namespace cannot
/// bind host paths itself).
fn decoration_mounts(c: &Value) -> Vec<String> {
    strings(c.pointer("/HostConfig/Binds"))
        .filter_map(|b| b.split(':').nth(1))
        .filter(|t| [crate::cache::TRUST_MOUNT, crate::cache::LOCAL_CA_MOUNT].contains(t))
        .map(str::to_owned)
        .collect()
}

/// The paths (without leading `/`) of the directories the daemon made in container `id`'s layer
/// for ctproxy's mount points: the created ones, and with `modified` also the parents that changed
/// only for them. Empty when the container has no such mount.
pub(super) async fn decoration_paths(daemon: &Daemon, id: &str, modified: bool) -> Result<std::collections::HashSet<String>, NsError> {
    let enc_id = super::daemon::enc(id);
    let added = match daemon.get(&format!("/containers/{enc_id}/json")).await? {
        Some(c) => decoration_mounts(&c),
        None => Vec::new(),
    };
    if added.is_empty() {
        return Ok(Default::default());
    }
    let mut changes = match daemon.get(&format!("/containers/{enc_id}/changes")).await? {
        Some(Value::Array(c)) => c,
        _ => Vec::new(),
    };
    Ok(hide_decoration(&mut changes, &added)
        .into_iter()
        .filter(|c| modified || c.get("Kind").and_then(Value::as_i64) == Some(1))
        .filter_map(|c| c.get("Path").and_then(Value::as_str).map(|p| p.trim_matches('/').to_owned()))
        .collect())
}

/// Removes from a `changes` answer the mount points `added` (when the daemon created them: kind
/// 1, "added", so the image did not have them) and the parent directories that only changed
/// because of them: created ones (kind 1) and modified ones (kind 0) under which nothing else
/// changed.
fn hide_decoration(changes: &mut Vec<Value>, added: &[String]) -> Vec<Value> {
    let mut removed = Vec::new();
    let path = |c: &Value| c.get("Path").and_then(Value::as_str).unwrap_or("").to_owned();
    let kind = |c: &Value| c.get("Kind").and_then(Value::as_i64).unwrap_or(-1);
    for m in added {
        if !changes.iter().any(|c| path(c) == *m && kind(c) == 1) {
            continue;
        }
        while let Some(i) = changes.iter().position(|c| path(c) == *m) {
            removed.push(changes.remove(i));
        }
        // Parents, deepest first.
        let mut p = m.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            let prefix = format!("{parent}/");
            let others = changes.iter().any(|c| path(c).starts_with(&prefix));
            let Some(i) = changes.iter().position(|c| path(c) == parent) else { break };
            if others {
                break;
            }
            if kind(&changes[i]) == 1 || kind(&changes[i]) == 0 {
                removed.push(changes.remove(i));
            }
            p = parent;
        }
    }
    removed
}

/// A progress line that names a hidden tag (`super::names::HIDDEN_REPO`): the build's
/// "Successfully tagged" goes (false), and `docker load`'s "Loaded image: <hidden>:<id>" becomes
/// what the daemon says of an untagged image, "Loaded image ID: sha256:<id>".
fn hide_line(v: &mut Value, hidden: &str) -> bool {
    let Some(Value::String(s)) = v.get_mut("stream") else { return true };
    if !s.contains(hidden) {
        return true;
    }
    if s.starts_with("Successfully tagged ") {
        return false;
    }
    *s = s.replace(&format!("Loaded image: {hidden}:"), "Loaded image ID: sha256:");
    true
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &b[start..end]
}

type LineMap = Box<dyn FnMut(&[u8]) -> Option<Bytes> + Send>;

/// A body rewritten one `\n`-terminated line at a time.
struct LineBody {
    inner: ProxyBody,
    partial: BytesMut,
    map: LineMap,
    done: bool,
}

impl LineBody {
    fn new(inner: ProxyBody, map: LineMap) -> LineBody {
        LineBody { inner, partial: BytesMut::new(), map, done: false }
    }

    /// Rewrites every complete line held; `all` also flushes an unterminated last line.
    fn drain(&mut self, all: bool) -> Bytes {
        let mut out = BytesMut::new();
        while let Some(nl) = self.partial.iter().position(|&c| c == b'\n') {
            let line = self.partial.split_to(nl + 1);
            if let Some(b) = (self.map)(&line) {
                out.extend_from_slice(&b);
            }
        }
        if self.partial.len() > MAX_LINE || (all && !self.partial.is_empty()) {
            let line = self.partial.split();
            if let Some(b) = (self.map)(&line) {
                out.extend_from_slice(&b);
            }
        }
        out.freeze()
    }
}

impl Body for LineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    this.partial.extend_from_slice(&data);
                    let out = this.drain(false);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let out = this.drain(true);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

/// Path components spelled out after a namespace's prefix, or after a shared pattern's `*`, in the
/// `reference` filters below.
const MAX_DEPTH: usize = 12;

fn stars(n: usize) -> String {
    vec!["*"; n].join("/")
}

/// A `reference` filter that selects at least every shared image (a superset: the caller still
/// applies [`Namespace::keep_image`]), so that the daemon lists only those. Why: on Docker 28's
/// containerd store an image list costs several milliseconds per image on the daemon (sizes are
/// computed from snapshots), and BuildKit's clients ask `/info` before every build; the daemon
/// applies the filter before that work. dockerd matches each pattern with Go's `path.Match`
/// against the image's familiar reference and name, where `*` stops at `/`, so every depth is
/// spelled out, up to `MAX_DEPTH`. `None` (list everything) when a pattern has a `*` other than at
/// its end, or one of `path.Match`'s other metacharacters.
fn shared_candidates(patterns: &[String]) -> Option<Filters> {
    let mut f = Filters::default();
    for p in patterns {
        if p.contains(['?', '[', '\\']) {
            return None;
        }
        match p.find('*') {
            None => f.add("reference", p.clone()),
            Some(i) if i == p.len() - 1 => {
                for depth in 1..=MAX_DEPTH {
                    f.add("reference", format!("{}{}", &p[..i], stars(depth)));
                }
            }
            Some(_) => return None,
        }
    }
    Some(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_patterns_become_reference_filters_at_every_depth() {
        let f = shared_candidates(&["ctproxy-test/*".into(), "alpine".into()]).expect("expressible");
        let refs = &f.0["reference"];
        assert_eq!(refs.len(), MAX_DEPTH + 1);
        assert!(refs.contains(&"ctproxy-test/*".to_owned()) && refs.contains(&"ctproxy-test/*/*".to_owned()));
        assert!(refs.contains(&"alpine".to_owned()));
        // `*` inside a pattern, or `path.Match`'s other metacharacters: list everything instead.
        assert!(shared_candidates(&["team/*/app".into()]).is_none());
        assert!(shared_candidates(&["team/app?".into()]).is_none());
        assert!(shared_candidates(&["team/[a]pp".into()]).is_none());
        assert!(shared_candidates(&[]).is_some_and(|f| f.0.is_empty()));
    }
}
