//! Image archives in a namespace: every image name the daemon reads from a `docker load` body
//! becomes the namespace's, and every name in a `docker save` answer becomes the client's.
//!
//! Which members and fields name images is in [`crate::docker::image_archive`]. A load is rewritten
//! as it streams: each member that names images (`manifest.json`, `repositories`, `index.json`) is
//! decoded with Go's rules (field names fold, duplicates merge) against the type the daemon decodes
//! it into, its names are replaced, and the canonical JSON is what the daemon receives, so the daemon
//! cannot read a name the rewrite did not see. What the rewrite does not understand (a field or an
//! annotation it does not know, a name that does not parse) stops the load: its body is cut before
//! the end of the archive, so the daemon imports nothing, and the client gets the refusal from
//! [`LoadGuard`] instead of the daemon's answer.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use serde_json::{Map, Value};

use super::text::Demangler;
use super::{Namespace, NsError};
use crate::docker::image_archive::{self as ia, INDEX_JSON, MANIFEST_JSON, NAME_ANNOTATIONS, REPOSITORIES_FILE};
use crate::docker::json::{canonicalize, Kind, Raw};
use crate::docker::reference::Reference;
use crate::http::BoxError;
use crate::plugin::Remedy;

/// Why a `docker load` body was cut short, shared by its member rewriters and the answer's handling.
#[derive(Clone, Default)]
pub struct LoadGuard(Arc<Mutex<Option<NsError>>>, Arc<Mutex<Option<String>>>);

impl LoadGuard {
    /// Records the refusal (the first one wins: later errors are its consequences).
    pub fn stop(&self, e: NsError) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// The refusal, if the load was stopped.
    pub fn take(&self) -> Option<NsError> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// The archive was not a tar archive: dockerd's own message for it (Go's `archive/tar`), which
    /// the answer gives as dockerd does, as an error line of the load's progress stream.
    pub fn take_unreadable(&self) -> Option<String> {
        self.1.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// A member rewriter for [`super::request::tar_member`] that records its refusal here.
    pub fn member(
        &self,
        ns: Namespace,
        rewrite: fn(&Namespace, &str) -> Result<String, NsError>,
    ) -> impl FnMut(&str) -> Result<String, String> + Send + 'static {
        let guard = self.clone();
        move |text: &str| {
            rewrite(&ns, text).map_err(|e| {
                let message = e.to_string();
                guard.stop(e);
                message
            })
        }
    }

    /// `body`, with any error it ends with (a tar the rewriters cannot read) recorded here.
    pub fn watch<B>(&self, body: B) -> Watched<B> {
        Watched { inner: body, guard: self.clone() }
    }
}

/// A load body whose failure is recorded in its [`LoadGuard`].
pub struct Watched<B> {
    inner: B,
    guard: LoadGuard,
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
            let mut unreadable = None;
            while let Some(s) = source {
                if let Some(crate::docker::buildctx::BuildContextError::Tar(why)) = s.downcast_ref() {
                    // What Go's archive/tar says of the same bytes.
                    unreadable = Some(if why.contains("unexpected end") { "unexpected EOF" } else { "archive/tar: invalid tar header" });
                }
                source = s.source();
            }
            match unreadable {
                Some(m) if this.guard.0.lock().unwrap_or_else(PoisonError::into_inner).is_none() => {
                    this.guard.1.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert_with(|| m.to_owned());
                }
                _ => {
                    // The tar reader is the build context's: its messages say "build context".
                    let message = e.to_string().replace("build context", "archive");
                    this.guard.stop(NsError::Malformed(format!("docker load: {message}")));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Namespace {
    /// `index.json` of a loaded archive: the names of its top-level descriptors (the only ones
    /// containerd reads) become the namespace's; unknown fields and annotations are refused.
    pub fn load_index(&self, text: &str) -> Result<String, NsError> {
        let mut v = decode(INDEX_JSON, text, &ia::INDEX)?;
        if let Value::Object(index) = &mut v {
            if let Some(Value::Array(manifests)) = index.get_mut("manifests") {
                for (i, d) in manifests.iter_mut().enumerate() {
                    if let Some(a) = d.get_mut("annotations") {
                        self.load_annotations(a, &format!("manifests[{i}]"))?;
                    }
                    // An unnamed image gets a hidden tag of the namespace named after its digest
                    // (its ID on the containerd store), so that it is the namespace's.
                    let named = |k: &str| d.pointer(&format!("/annotations/{}", k.replace('~', "~0").replace('/', "~1"))).is_some();
                    let unnamed = !named(ia::IMAGE_NAME) && !named(ia::REF_NAME);
                    let hex = d.get("digest").and_then(Value::as_str).and_then(|s| s.strip_prefix("sha256:")).and_then(config_hex);
                    if let (true, Some(hex), Value::Object(m)) = (unnamed, hex, &mut *d) {
                        let a = m.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
                        if let Value::Object(a) = a {
                            a.insert(ia::IMAGE_NAME.into(), Value::String(self.hidden_tag(&hex)));
                        }
                    }
                }
            }
            if let Some(a) = index.get_mut("subject").and_then(|s| s.get_mut("annotations")) {
                self.load_annotations(a, "subject")?;
            }
            if let Some(a) = index.get_mut("annotations") {
                self.load_annotations(a, "the index")?;
            }
        }
        encode(&v)
    }

    /// `manifest.json` of a loaded archive: every `RepoTags` entry becomes the namespace's.
    pub fn load_manifest(&self, text: &str) -> Result<String, NsError> {
        let mut v = decode(MANIFEST_JSON, text, &ia::MANIFEST)?;
        for entry in v.as_array_mut().into_iter().flatten() {
            // An untagged image gets a hidden tag of the namespace named after its config (its ID
            // on the daemon's own store), so that it is the namespace's (`names::HIDDEN_REPO`).
            let untagged = entry.get("RepoTags").and_then(Value::as_array).is_none_or(Vec::is_empty);
            let config = entry.get("Config").and_then(Value::as_str).map(config_hex);
            if let (true, Some(Some(hex)), Value::Object(m)) = (untagged, config, &mut *entry) {
                m.insert("RepoTags".into(), Value::Array(vec![Value::String(self.hidden_tag(&hex))]));
                continue;
            }
            if let Some(Value::Array(tags)) = entry.get_mut("RepoTags") {
                for t in tags.iter_mut() {
                    let typed = t
                        .as_str()
                        .ok_or_else(|| NsError::Malformed(format!("docker load: {MANIFEST_JSON}: a RepoTags entry is not a string")))?;
                    *t = Value::String(self.load_ref(MANIFEST_JSON, typed)?.to_string());
                }
            }
        }
        encode(&v)
    }

    /// `repositories` of a loaded (legacy) archive: every repository becomes the namespace's.
    pub fn load_repositories(&self, text: &str) -> Result<String, NsError> {
        let v = decode(REPOSITORIES_FILE, text, &ia::REPOSITORIES)?;
        let Value::Object(repos) = v else { return encode(&v) };
        let mut out = Map::new();
        for (repo, tags) in repos {
            let name = self.load_ref(REPOSITORIES_FILE, &repo)?.name();
            // Two spellings of one repository (`busybox`, `docker.io/library/busybox`) keep all their tags.
            match (out.get_mut(&name), tags) {
                (Some(Value::Object(have)), Value::Object(more)) => have.extend(more),
                (_, tags) => {
                    out.insert(name, tags);
                }
            }
        }
        encode(&Value::Object(out))
    }

    /// The annotations of one index descriptor (or of the index): names rewritten, anything
    /// unknown refused (it could be a name some daemon reads).
    fn load_annotations(&self, annotations: &mut Value, at: &str) -> Result<(), NsError> {
        let Value::Object(map) = annotations else { return Ok(()) };
        // Repositories at registries, read by nothing on load: dropped rather than judged.
        map.retain(|k, _| !k.starts_with(ia::DISTRIBUTION_SOURCE));
        if let Some(key) = map.keys().find(|k| !NAME_ANNOTATIONS.contains(&k.as_str()) && !ia::PLAIN_ANNOTATIONS.contains(&k.as_str())) {
            return Err(NsError::refused(format!(
                "docker load: {INDEX_JSON}: {at}: the annotation {key:?} is not understood in a namespace (it could name an image outside it); remove it from the archive"
            )));
        }
        let named = map.get(ia::IMAGE_NAME).and_then(Value::as_str).is_some_and(|n| !n.is_empty());
        for key in NAME_ANNOTATIONS {
            let Some(v) = map.get_mut(key) else { continue };
            let typed = match v {
                // Go decodes `null` into a map of strings as "": no name.
                Value::Null => continue,
                Value::String(s) if s.is_empty() => continue,
                Value::String(s) => s.clone(),
                _ => return Err(NsError::Malformed(format!("docker load: {INDEX_JSON}: {at}: the annotation {key:?} is not a string"))),
            };
            // Next to a containerd name, the OCI name is the tag alone (what `docker save` writes),
            // and containerd does not read it.
            if key == ia::REF_NAME && named && ia::is_bare_tag(&typed) {
                continue;
            }
            *v = Value::String(self.load_ref(INDEX_JSON, &typed)?.to_string());
        }
        Ok(())
    }

    /// A name inside a loaded archive: always the namespace's (even a shared image's name, so a
    /// load can never replace a shared image).
    fn load_ref(&self, member: &str, typed: &str) -> Result<Reference, NsError> {
        let bad = |e: &dyn std::fmt::Display| NsError::Malformed(format!("docker load: {member}: invalid image name {typed:?}: {e}"));
        let r = Reference::parse(typed).map_err(|e| bad(&e))?;
        self.name.image(&self.settings.registry, &r).map_err(|e| bad(&e))
    }

    /// `index.json` of a saved archive: each name annotation becomes the client's full reference
    /// (`docker.io/library/app:1`, as the daemon writes it for an image of that name), so that
    /// loading the archive again in the namespace gives the same names.
    pub fn save_index(&self, text: &str) -> Result<String, String> {
        let mut v: Value = serde_json::from_str(text).map_err(|e| format!("{INDEX_JSON}: {e}"))?;
        let reg = self.settings.registry.as_str();
        let names = |a: Option<&mut Value>| {
            let Some(Value::Object(map)) = a else { return };
            for key in NAME_ANNOTATIONS {
                let Some(Value::String(s)) = map.get_mut(key) else { continue };
                if let Some(client) = Reference::parse(s).ok().and_then(|r| self.name.unimage(reg, &r)) {
                    *s = client.to_string();
                }
            }
        };
        if let Some(Value::Array(manifests)) = v.get_mut("manifests") {
            manifests.iter_mut().for_each(|d| names(d.get_mut("annotations")));
        }
        names(v.get_mut("subject").and_then(|s| s.get_mut("annotations")));
        names(v.get_mut("annotations"));
        self.client_sources(&mut v);
        self.scrub_foreign(&mut v);
        Demangler::new(&self.name, reg).value(&mut v);
        serde_json::to_string(&v).map_err(|e| e.to_string())
    }

    /// Every `containerd.io/distribution.source.<host>` annotation in `v`, as the client would see
    /// it: the registry proxy's host lists the namespaces' repositories there (`<ns>/<registry>/<path>`);
    /// this namespace's become repositories of their real registries, other namespaces' are removed.
    pub fn client_sources(&self, v: &mut Value) {
        match v {
            Value::Array(a) => a.iter_mut().for_each(|x| self.client_sources(x)),
            Value::Object(map) => {
                let key = format!("{}{}", ia::DISTRIBUTION_SOURCE, host_of(&self.settings.registry));
                if let Some(Value::String(list)) = map.get(&key).cloned() {
                    map.remove(&key);
                    let mut moved: Vec<(String, String)> = Vec::new();
                    let mut kept = Vec::new();
                    for repo in list.split(',') {
                        match super::names::split_repository(repo) {
                            Some((ns, domain, path)) if ns == self.name.as_str() => {
                                moved.push((format!("{}{}", ia::DISTRIBUTION_SOURCE, host_of(&domain)), path.to_owned()))
                            }
                            Some(_) => {}
                            None => kept.push(repo.to_owned()),
                        }
                    }
                    if !kept.is_empty() {
                        moved.push((key, kept.join(",")));
                    }
                    for (k, repo) in moved {
                        match map.get_mut(&k) {
                            Some(Value::String(have)) if !have.split(',').any(|r| r == repo) => {
                                have.push(',');
                                have.push_str(&repo);
                            }
                            Some(_) => {}
                            None => {
                                map.insert(k, Value::String(repo));
                            }
                        }
                    }
                }
                map.values_mut().for_each(|x| self.client_sources(x));
            }
            _ => {}
        }
    }

    /// `manifest.json` or `repositories` of a saved archive: familiar names, as the daemon writes them.
    pub fn save_member(&self, text: &str) -> Result<String, String> {
        let mut v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Demangler::new(&self.name, &self.settings.registry).value(&mut v);
        serde_json::to_string(&v).map_err(|e| e.to_string())
    }
}

/// A member decoded as the daemon decodes it; fields the daemon's type does not have are refused
/// (a newer daemon could read them).
fn decode(member: &str, text: &str, kind: &Kind) -> Result<Value, NsError> {
    let raw = Raw::parse(text.as_bytes()).map_err(|e| NsError::Malformed(format!("docker load: {member}: {e}")))?;
    let c = canonicalize(raw, kind).map_err(|e| NsError::Malformed(format!("docker load: {member}: {e}")))?;
    if let Some(field) = c.unknown.first() {
        return Err(NsError::refused(format!(
            "docker load: {member}: the field {field:?} is not understood in a namespace; remove it from the archive"
        ))
        .remedy(Remedy::Unknown));
    }
    Ok(c.value)
}

/// A registry's host name without its port, as containerd keys distribution sources (`url.Hostname`).
fn host_of(domain: &str) -> &str {
    match domain.rsplit_once(':') {
        Some((host, port)) if !domain.starts_with('[') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => domain,
    }
}

fn encode(v: &Value) -> Result<String, NsError> {
    serde_json::to_string(v).map_err(|e| NsError::Malformed(e.to_string()))
}

/// The hex digest of a `manifest.json` `Config` path (`<hex>.json`, `blobs/sha256/<hex>`), if it is one.
fn config_hex(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let hex = file.strip_suffix(".json").unwrap_or(file);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| hex.to_owned())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::{NsName, Settings};
    use super::*;

    const RP: &str = "127.0.0.1:5001";

    fn ns(name: &str) -> Namespace {
        let settings = Settings {
            registry: RP.into(),
            shared_images: vec!["ctproxy-test/*".into()],
            tokens: None,
            pool: None,
            max_response: 1 << 20,
            shared_ids: Default::default(),
        };
        Namespace::new(NsName::new(name).unwrap(), Arc::new(settings))
    }

    fn index(annotations: Value) -> String {
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:aa", "size": 1, "annotations": annotations}]})
        .to_string()
    }

    fn annotations_of(out: &str) -> Value {
        serde_json::from_str::<Value>(out).unwrap()["manifests"][0]["annotations"].clone()
    }

    #[test]
    fn loaded_index_names_become_the_namespace() {
        let a = ns("job-7");
        // The attack: a shared image's name in the containerd annotation.
        let out = a
            .load_index(&index(json!({"io.containerd.image.name": "docker.io/ctproxy-test/busybox:latest",
                                              "org.opencontainers.image.ref.name": "latest"})))
            .unwrap();
        assert_eq!(
            annotations_of(&out),
            json!({"io.containerd.image.name": "127.0.0.1:5001/job-7/docker.io/ctproxy-test/busybox:latest",
                   "org.opencontainers.image.ref.name": "latest"})
        );
        // The OCI name alone is the image's name: rewritten, even as a bare tag.
        let out = a.load_index(&index(json!({"org.opencontainers.image.ref.name": "ctproxy-test/busybox:latest"}))).unwrap();
        assert_eq!(annotations_of(&out)["org.opencontainers.image.ref.name"], "127.0.0.1:5001/job-7/docker.io/ctproxy-test/busybox:latest");
        let out = a.load_index(&index(json!({"io.containerd.image.name": "", "org.opencontainers.image.ref.name": "1.0"}))).unwrap();
        assert_eq!(annotations_of(&out)["org.opencontainers.image.ref.name"], "127.0.0.1:5001/job-7/docker.io/library/1.0");
        // Another namespace's name lands under this one.
        let out = a.load_index(&index(json!({"io.containerd.image.name": "127.0.0.1:5001/job-8/docker.io/library/app:1"}))).unwrap();
        assert_eq!(annotations_of(&out)["io.containerd.image.name"], "127.0.0.1:5001/job-7/127.0.0.1__5001/job-8/docker.io/library/app:1");
        // Unnamed descriptors stay unnamed (dangling: no namespace sees them).
        let out = a.load_index(&index(json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}))).unwrap();
        assert_eq!(annotations_of(&out), json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}));
    }

    #[test]
    fn loaded_index_is_read_as_go_reads_it() {
        let a = ns("job-7");
        // A case-folded field name is the annotations field to Go: rewritten, and forwarded canonical.
        let text = r#"{"schemaVersion":2,"Manifests":[{"digest":"sha256:aa","ANNOTATIONS":{"io.containerd.image.name":"busybox:1"}}]}"#;
        let out: Value = serde_json::from_str(&a.load_index(text).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({"schemaVersion":2,"manifests":[{"digest":"sha256:aa","annotations":{"io.containerd.image.name":"127.0.0.1:5001/job-7/docker.io/library/busybox:1"}}]})
        );
        // Duplicated manifests arrays: only the canonical (last) one reaches the daemon.
        let text = r#"{"manifests":[{"digest":"sha256:aa","annotations":{"io.containerd.image.name":"evil:1"}}],"manifests":[{"digest":"sha256:aa"}]}"#;
        let out = a.load_index(text).unwrap();
        assert!(!out.contains("evil"), "{out}");
        // The subject and the index's own annotations are held to the same rules.
        let text = r#"{"manifests":[],"annotations":{"io.containerd.image.name":"x:1"},"subject":{"digest":"sha256:aa","annotations":{"org.opencontainers.image.ref.name":"y/z:2"}}}"#;
        let out = a.load_index(text).unwrap();
        assert!(
            out.contains("127.0.0.1:5001/job-7/docker.io/library/x:1") && out.contains("127.0.0.1:5001/job-7/docker.io/y/z:2"),
            "{out}"
        );
    }

    #[test]
    fn loaded_index_fails_closed() {
        let a = ns("job-7");
        for (annotations, status) in [
            (json!({"com.example.image": "busybox"}), 403),
            (json!({"io.containerd.image.name ": "busybox"}), 403),
            (json!({"IO.CONTAINERD.IMAGE.NAME": "busybox"}), 403),
            (json!({"io.containerd.image.name": "Not A Reference"}), 400),
            (json!({"io.containerd.image.name": 5}), 400),
            (json!({"org.opencontainers.image.base.name": "::"}), 400),
        ] {
            let e = a.load_index(&index(annotations.clone())).unwrap_err();
            assert_eq!(e.status().as_u16(), status, "{annotations}: {e}");
        }
        let e = a.load_index(r#"{"manifests":[{"digest":"sha256:aa","names":["busybox"]}]}"#).unwrap_err();
        assert_eq!(e.status().as_u16(), 403, "{e}");
        for bad in ["", "[", r#"{"manifests":{}}"#, r#"{"manifests":[]} x"#] {
            assert_eq!(a.load_index(bad).unwrap_err().status().as_u16(), 400, "{bad:?}");
        }
    }

    #[test]
    fn loaded_manifest_and_repositories() {
        let a = ns("job-7");
        let out = a.load_manifest(r#"[{"Config":"c.json","repotags":["ctproxy-test/busybox:latest"],"Layers":["l.tar"]}]"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!([{"Config":"c.json","RepoTags":["127.0.0.1:5001/job-7/docker.io/ctproxy-test/busybox:latest"],"Layers":["l.tar"]}])
        );
        assert_eq!(a.load_manifest(r#"[{"Config":"c","RepoTags":[1]}]"#).unwrap_err().status().as_u16(), 400);
        assert_eq!(a.load_manifest(r#"[{"Config":"c","Names":["x"]}]"#).unwrap_err().status().as_u16(), 403);
        assert_eq!(a.load_manifest("null").unwrap(), "null");
        let out = a.load_repositories(r#"{"busybox":{"1":"aa"},"docker.io/library/busybox":{"2":"bb"}}"#).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, json!({"127.0.0.1:5001/job-7/docker.io/library/busybox": {"1":"aa","2":"bb"}}));
    }

    #[test]
    fn save_then_load_gives_the_same_names() {
        let a = ns("job-7");
        let saved = index(json!({"io.containerd.image.name": "127.0.0.1:5001/job-7/docker.io/library/app:1",
                                 "org.opencontainers.image.ref.name": "1"}));
        let client = a.save_index(&saved).unwrap();
        assert_eq!(
            annotations_of(&client),
            json!({"io.containerd.image.name": "docker.io/library/app:1", "org.opencontainers.image.ref.name": "1"})
        );
        assert!(!client.contains(RP) && !client.contains("job-7"), "{client}");
        let reloaded = a.load_index(&client).unwrap();
        assert_eq!(annotations_of(&reloaded), annotations_of(&saved));
        // By digest, the OCI name is the full reference.
        let d = format!("sha256:{}", "a".repeat(64));
        let saved = index(json!({"io.containerd.image.name": format!("127.0.0.1:5001/job-7/localhost__5000/x@{d}"),
                                 "org.opencontainers.image.ref.name": format!("127.0.0.1:5001/job-7/localhost__5000/x@{d}")}));
        let client = annotations_of(&a.save_index(&saved).unwrap());
        assert_eq!(client["org.opencontainers.image.ref.name"], format!("localhost:5000/x@{d}"));
        assert_eq!(client["io.containerd.image.name"], format!("localhost:5000/x@{d}"));
        // Distribution sources: this namespace's repositories at their real registries, others gone.
        let saved = index(json!({"io.containerd.image.name": "127.0.0.1:5001/job-7/docker.io/library/app:1",
            "containerd.io/distribution.source.127.0.0.1": "job-7/docker.io/library/app,job-8/docker.io/library/secret,job-7/localhost__5000/t/x,other-repo",
            "containerd.io/distribution.source.docker.io": "library/app"}));
        let client = annotations_of(&a.save_index(&saved).unwrap());
        assert_eq!(client["containerd.io/distribution.source.docker.io"], "library/app");
        assert_eq!(client["containerd.io/distribution.source.localhost"], "t/x");
        assert_eq!(client["containerd.io/distribution.source.127.0.0.1"], "other-repo");
        assert!(!client.to_string().contains("job-"), "{client}");
        // On load they are dropped, not judged.
        let loaded = annotations_of(&a.load_index(&index(client)).unwrap());
        assert_eq!(loaded, json!({"io.containerd.image.name": "127.0.0.1:5001/job-7/docker.io/library/app:1"}));
        // Shared names stay as they are.
        let shared = index(json!({"io.containerd.image.name": "docker.io/ctproxy-test/busybox:latest"}));
        assert_eq!(annotations_of(&a.save_index(&shared).unwrap())["io.containerd.image.name"], "docker.io/ctproxy-test/busybox:latest");
        assert_eq!(
            a.save_member(r#"[{"RepoTags":["127.0.0.1:5001/job-7/docker.io/library/app:1"]}]"#).unwrap(),
            r#"[{"RepoTags":["app:1"]}]"#
        );
    }
}
