//! Classic builds (`POST /build`) in a namespace: what the daemon would use or fetch because of the
//! Dockerfile, settled while the build context streams by ([`RewrittenContext::with_async`]).
//!
//! - `FROM` and `COPY --from` name the namespace's images (or shared ones), as everywhere.
//! - Each base image is looked up (pulled through the registry proxy first when missing), its
//!   `ONBUILD` triggers are checked (they run at the `FROM`, from the image's config, where no
//!   rewrite reaches them: a `COPY --from` there must name an image of the namespace, an `ADD` there
//!   must not download), and the `FROM` is pinned to the image ID that was checked, so that the
//!   image cannot be swapped for another under the same name before the daemon reads the Dockerfile.
//! - `ADD <url>` is downloaded by ctproxy ([`super::fetch`]) and becomes a `COPY` of the file, added
//!   to the context under [`RESERVED_DIR`]: the daemon never fetches a URL.
//!
//! Refusals end the request body with an error, before the end of the archive, so the daemon builds
//! nothing; the proxy answers the client with the error (403 for a refusal).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hyper::header::HeaderName;
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::daemon::enc;
use super::fetch;
use super::text::Demangler;
use super::{Daemon, Namespace, NsError};
use crate::docker::auth_config::{self, AuthConfig};
use crate::docker::buildctx::add::{parse_add_url, plain_file_name, UNNAMED};
use crate::docker::buildctx::{
    plan_dockerfile, Appended, Appendix, AsyncRewriteFn, BaseImage, BuildContextError, RewriteError, Rewritten, RESERVED_DIR,
};
use crate::docker::reference::Reference;
use crate::plugin::{ns_refusal, Layer, Remedy};

/// What one build's rewrite knows and shares between its Dockerfiles.
struct BuildCtx {
    ns: Namespace,
    daemon: Daemon,
    build_args: HashMap<String, Option<String>>,
    /// Image IDs the namespace may name: those of its own and of shared images.
    ids: Vec<String>,
    /// The build's `platform`, used when a `FROM` has no `--platform`.
    platform: Option<String>,
    /// `pull=1`: ctproxy pulls the base images itself (the daemon then gets pinned IDs, which it
    /// could not pull).
    pull: bool,
    /// Numbers the directories of downloads in the context.
    next_add: AtomicUsize,
    /// Bytes the build may still download.
    budget: Arc<AtomicU64>,
    /// The client's registry logins (`X-Registry-Config`): the base images ctproxy pulls for the
    /// build are pulled with the login for their registry, as the daemon would have.
    logins: Vec<(String, AuthConfig)>,
}

/// A base image as the daemon describes it.
struct Inspected {
    id: String,
    env: Vec<String>,
    triggers: Vec<String>,
}

/// Aborts a download task when the build is dropped (the client went away, a refusal).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Namespace {
    /// The asynchronous Dockerfile rewrite of one classic build. `ids` are the image IDs the
    /// namespace may name; `platform` and `pull` are the build's query parameters.
    pub(super) fn build_rewrite(
        &self,
        daemon: &Daemon,
        build_args: HashMap<String, Option<String>>,
        ids: Vec<String>,
        platform: Option<String>,
        pull: bool,
        logins: Vec<(String, AuthConfig)>,
    ) -> AsyncRewriteFn {
        let ctx = Arc::new(BuildCtx {
            ns: self.clone(),
            daemon: daemon.clone(),
            build_args,
            ids,
            platform: platform.filter(|p| !p.is_empty()),
            pull,
            next_add: AtomicUsize::new(0),
            budget: Arc::new(AtomicU64::new(fetch::MAX_ADD_BYTES)),
            logins,
        });
        Box::new(move |text| {
            let ctx = ctx.clone();
            Box::pin(async move { ctx.rewrite(text).await })
        })
    }
}

impl BuildCtx {
    async fn rewrite(&self, text: String) -> Result<Rewritten, BuildContextError> {
        let plan = plan_dockerfile(&text, &self.build_args, &mut |r| self.resolve(r)).map_err(|e| self.refusal(e))?;
        let mut pins = vec![None; plan.froms.len()];
        let mut bases = vec![None; plan.froms.len()];
        for (i, from) in plan.froms.iter().enumerate() {
            match &from.image {
                Some(name) => {
                    let img = self.base(name, from.platform.as_deref(), from.line).await?;
                    plan.check_triggers(i, &img.triggers, &mut |r| self.allowed(r)).map_err(|e| self.refusal(e))?;
                    pins[i] = Some(img.id);
                    bases[i] = Some(BaseImage { env: img.env, triggers: !img.triggers.is_empty() });
                }
                None => plan.check_triggers(i, plan.stage_triggers(i), &mut |r| self.allowed(r)).map_err(|e| self.refusal(e))?,
            }
        }
        if self.pull {
            // `--pull` also refreshes the images of `COPY --from`; the daemon no longer does it.
            for (line, image) in plan.copy_images() {
                if self.owned(image) {
                    self.pull_image(image, None, line).await?;
                }
            }
        }
        let adds = plan.add_urls(&bases).map_err(|e| self.refusal(e))?;
        let mut replacements = Vec::new();
        let mut downloads = Vec::new();
        for add in &adds {
            let mut paths = Vec::new();
            for url in &add.urls {
                let fail = |why: String| self.refused_build(&format!("Dockerfile line {}: ADD {url}: {why}", add.line), &Remedy::Never);
                let src = parse_add_url(url).map_err(fail)?;
                let started = fetch::start(&src).await.map_err(fail)?;
                let name = match (started.filename.clone(), add.dest_dir) {
                    (Some(name), _) => name,
                    (None, Some(false)) => UNNAMED.to_owned(),
                    (None, Some(true)) => return Err(fail(format!("cannot determine filename for source {url}"))),
                    (None, None) => return Err(fail("its file name depends on a destination ctproxy cannot expand".into())),
                };
                if !plain_file_name(&name) {
                    return Err(fail(format!("the file name {name:?} cannot be passed on through ctproxy")));
                }
                let path = format!("{RESERVED_DIR}/add/{}/{name}", self.next_add.fetch_add(1, Ordering::Relaxed));
                tracing::info!(namespace = %self.ns.name, url = %url, path = %path, "ADD <url> of a build downloaded by ctproxy");
                let mtime = started.mtime;
                let task = AbortOnDrop(tokio::spawn(started.save(self.budget.clone())));
                downloads.push((path.clone(), mtime, url.clone(), add.line, task));
                paths.push(path);
            }
            replacements.push((add.id, paths));
        }
        let dockerfile = plan.finish(&pins, &replacements).map_err(|e| self.refusal(e))?;
        let appendix = (!downloads.is_empty()).then(|| {
            let demangle = Demangler::new(&self.ns.name, &self.ns.settings.registry);
            Box::pin(async move {
                let mut out = Vec::new();
                for (path, mtime, url, line, mut task) in downloads {
                    let saved =
                        (&mut task.0).await.map_err(|e| BuildContextError::Unavailable(format!("ctproxy: downloading {url}: {e}")))?;
                    let (file, size) = saved.map_err(|why| {
                        let what = demangle.text(&format!("Dockerfile line {line}: ADD {url}: {why}")).into_owned();
                        BuildContextError::Refused(ns_refusal(&what, Layer::Build, &Remedy::Never))
                    })?;
                    out.push(Appended { path, mode: 0o600, mtime, size, file });
                }
                Ok(out)
            }) as Appendix
        });
        Ok(Rewritten { dockerfile, appendix })
    }

    /// A `FROM` or `COPY --from` reference → the namespace's own (or a shared image, or an ID the
    /// namespace holds).
    fn resolve(&self, typed: &str) -> Result<String, String> {
        if let Some(full) = full_id(typed) {
            return self.ids.iter().find(|id| **id == full).cloned().ok_or_else(|| format!("No such image: {typed}"));
        }
        let r = Reference::parse(typed).map_err(|e| format!("{typed}: {e}"))?;
        let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
        if self.ns.is_shared(&repo) {
            return Ok(r.familiar());
        }
        self.ns.name.image(&self.ns.settings.registry, &r).map(|m| m.to_string()).map_err(|e| {
            let what = format!("{typed}: {e}");
            ns_refusal(&what, Layer::Build, &Remedy::Never)
        })
    }

    /// Whether a trigger's `COPY --from` reference, read as the daemon reads it, names an image of
    /// the namespace (by its daemon-side name, or an ID it holds) or a shared one.
    fn allowed(&self, typed: &str) -> Result<(), String> {
        if let Some(full) = full_id(typed) {
            return if self.ids.contains(&full) { Ok(()) } else { Err("it is not an image of this namespace".into()) };
        }
        let r = Reference::parse(typed).map_err(|e| e.to_string())?;
        if r.tag.is_none() && r.digest.is_none() && typed.len() <= 64 && typed.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The daemon falls back to a search by ID prefix for a name it does not hold.
            return Err("it could name any image by an ID prefix".into());
        }
        if self.owned(typed) {
            return Ok(());
        }
        if self.ns.is_shared(&Reference { tag: None, digest: None, ..r }.familiar()) {
            return Ok(());
        }
        Err("it is not an image of this namespace, nor a shared one".into())
    }

    /// Whether `name` is a daemon-side name of this namespace's.
    fn owned(&self, name: &str) -> bool {
        Reference::parse(name).is_ok_and(|r| self.ns.name.unimage(&self.ns.settings.registry, &r).is_some())
    }

    /// The image a `FROM` resolved to, as the daemon holds it for the platform the build will use:
    /// a namespace image is pulled first when it is missing (or on `pull=1`), through the registry
    /// proxy with a token of the namespace; a shared image must be there (a namespace does not
    /// fetch or update shared images, as for `docker pull`).
    async fn base(&self, name: &str, from_platform: Option<&str>, line: usize) -> Result<Inspected, BuildContextError> {
        let platform = from_platform.or(self.platform.as_deref()).filter(|p| !p.is_empty());
        let by_id = full_id(name).is_some();
        let owned = self.owned(name);
        let mut img = if self.pull && owned { None } else { self.inspect(name, platform).await? };
        if let (Some(found), Some(p)) = (&img, platform) {
            if !by_id && !platform_matches(found, p) {
                img = None;
            }
        }
        let img = match img {
            Some(img) => img,
            None if by_id => return Err(self.refused(line, format!("No such image: {name}"))),
            // As for `docker pull`: shared images are the administrator's, a namespace never fetches them.
            None if !owned => {
                return Err(self.refused_build(
                    &format!(
                        "Dockerfile line {line}: pulling image {name}, which is shared by the administrator but not present (for this platform), is not available in a namespace"
                    ),
                    &Remedy::Config("pulling it on the daemon"),
                ))
            }
            None => {
                self.pull_image(name, platform, line).await?;
                self.inspect(name, platform).await?.ok_or_else(|| self.refused(line, format!("No such image: {name}")))?
            }
        };
        // The daemon resolves a name it does not hold by ID prefix: the image must really be the named one.
        if !designates(name, &img) {
            return Err(self.refused(line, format!("No such image: {name}")));
        }
        let id = img.get("Id").and_then(Value::as_str).unwrap_or_default().to_owned();
        if full_id(&id).as_deref() != Some(id.as_str()) {
            return Err(BuildContextError::Unavailable(format!("ctproxy: the daemon described {name} without a valid image ID")));
        }
        let strings = |v: Option<&Value>| super::resolve::strings(v).map(str::to_owned).collect::<Vec<_>>();
        let config = img.get("Config");
        Ok(Inspected { id, env: strings(config.and_then(|c| c.get("Env"))), triggers: strings(config.and_then(|c| c.get("OnBuild"))) })
    }

    async fn inspect(&self, name: &str, platform: Option<&str>) -> Result<Option<Value>, BuildContextError> {
        let mut path = format!("/images/{}/json", enc(name));
        if let Some(p) = platform.and_then(platform_json) {
            // Docker 28 (API 1.49+) describes the variant for this platform; older daemons ignore it.
            path.push_str(&format!("?platform={}", enc(&p)));
        }
        self.daemon.get(&path).await.map_err(|e| BuildContextError::Unavailable(e.to_string()))
    }

    /// Pulls a namespace image through the daemon as its build would have: from the registry proxy,
    /// with a token of the namespace.
    async fn pull_image(&self, name: &str, platform: Option<&str>, line: usize) -> Result<(), BuildContextError> {
        let r = Reference::parse(name).map_err(|e| self.refused(line, format!("{name}: {e}")))?;
        let tag = r.digest.clone().or(r.tag.clone()).unwrap_or_else(|| "latest".into());
        let mut path = format!("/images/create?fromImage={}&tag={}", enc(&r.name()), enc(&tag));
        if let Some(p) = platform {
            path.push_str(&format!("&platform={}", enc(p)));
        }
        let tokens = self.ns.settings.tokens.as_ref().ok_or_else(|| {
            self.refused_build(
                &format!("Dockerfile line {line}: pulling the base image {name} is not available in a namespace without a registry proxy"),
                &Remedy::Config("setting [registry_proxy]"),
            )
        })?;
        // The login the client has for the image's own registry (the name is the daemon-side one).
        let login = self
            .ns
            .name
            .unimage(&self.ns.settings.registry, &r)
            .and_then(|client| auth_config::for_registry(&self.logins, &client.domain))
            .filter(|a| !a.is_anonymous())
            .map(auth_config::encode_header);
        let headers = [(HeaderName::from_static("x-registry-auth"), tokens.issue(&self.ns.name, login.as_ref()))];
        let answer = self.daemon.client().call_with(Method::POST, &path, None, &headers).await;
        let (status, body) =
            answer.map(|a| (a.status, a.body)).map_err(|e| BuildContextError::Unavailable(NsError::from(e).to_string()))?;
        let error = if status != StatusCode::OK {
            Some(
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| status.to_string()),
            )
        } else {
            body.split(|&b| b == b'\n')
                .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
                .find_map(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        };
        match error {
            Some(e) => Err(self.refused(line, format!("pulling {name}: {e}"))),
            None => Ok(()),
        }
    }

    /// A base image the build cannot have (missing, or its pull failed): the daemon's words, as a
    /// build that cannot find its base image fails on the daemon.
    fn refused(&self, line: usize, message: String) -> BuildContextError {
        BuildContextError::Refused(self.text(&format!("Dockerfile line {line}: {message}")))
    }

    /// A refusal of the build on purpose, in the client's names: what (with its Dockerfile line
    /// and instruction), by [`Layer::Build`], and the remedy ([`ns_refusal`]).
    fn refused_build(&self, what: &str, remedy: &Remedy) -> BuildContextError {
        BuildContextError::Refused(ns_refusal(&self.text(what), Layer::Build, remedy))
    }

    /// A Dockerfile that cannot be read is the client's mistake (400); a reference the resolver
    /// refused is answered in its words (a missing image, an invalid reference); everything else
    /// is a refusal of the build ([`Self::refused_build`]).
    fn refusal(&self, e: RewriteError) -> BuildContextError {
        match e {
            RewriteError::Syntax { .. } => BuildContextError::Rewrite(self.text(&e.to_string())),
            RewriteError::Resolve { .. } => BuildContextError::Refused(self.text(&e.to_string())),
            e => self.refused_build(&e.to_string(), &Remedy::Never),
        }
    }

    /// Daemon-side names in a message, in the client's terms.
    fn text(&self, s: &str) -> String {
        Demangler::new(&self.ns.name, &self.ns.settings.registry).text(s).into_owned()
    }
}

/// `sha256:<64 hex>` for an image ID in either spelling (`sha256:…` or 64 hex digits).
fn full_id(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| format!("sha256:{hex}"))
}

/// Whether an inspected image is the one `name` designates (a tag or digest it carries, or its ID).
fn designates(name: &str, img: &Value) -> bool {
    if let Some(id) = full_id(name) {
        return img.get("Id").and_then(Value::as_str) == Some(id.as_str());
    }
    let Ok(r) = Reference::parse(name) else { return false };
    let same = |field: &str, want: &dyn Fn(&Reference) -> bool| {
        super::resolve::strings(img.get(field)).filter_map(|s| Reference::parse(s).ok()).any(|t| want(&t))
    };
    match &r.digest {
        Some(d) => same("RepoDigests", &|t| t.name() == r.name() && t.digest.as_ref() == Some(d)),
        None => {
            let want = r.clone().with_default_tag();
            same("RepoTags", &|t| t.name() == want.name() && t.tag == want.tag)
        }
    }
}

/// `os/arch[/variant]` as the JSON platform image inspect takes.
fn platform_json(p: &str) -> Option<String> {
    let (os, arch, variant) = split_platform(p)?;
    let mut v = serde_json::json!({ "os": os, "architecture": arch });
    if let Some(variant) = variant {
        v["variant"] = Value::String(variant);
    }
    Some(v.to_string())
}

fn split_platform(p: &str) -> Option<(String, String, Option<String>)> {
    let mut parts = p.split('/').map(str::to_ascii_lowercase);
    let os = parts.next().filter(|s| !s.is_empty())?;
    let arch = parts.next().filter(|s| !s.is_empty())?;
    let arch = match arch.as_str() {
        "x86_64" | "x86-64" => "amd64".to_owned(),
        "aarch64" => "arm64".to_owned(),
        "i386" | "i686" => "386".to_owned(),
        _ => arch,
    };
    Some((os, arch, parts.next().filter(|s| !s.is_empty())))
}

/// Whether an inspected image is for the platform a build asks for (otherwise dockerd would pull).
fn platform_matches(img: &Value, p: &str) -> bool {
    let Some((os, arch, variant)) = split_platform(p) else { return true };
    let field = |k: &str| img.get(k).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let v = field("Variant");
    field("Os") == os && field("Architecture") == arch && variant.is_none_or(|want| v.is_empty() || v == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ids_and_designation() {
        let hex = "a".repeat(64);
        assert_eq!(full_id(&hex), Some(format!("sha256:{hex}")));
        assert_eq!(full_id(&format!("sha256:{hex}")), Some(format!("sha256:{hex}")));
        assert_eq!(full_id("abc"), None);
        let img = serde_json::json!({"Id": format!("sha256:{hex}"), "RepoTags": ["127.0.0.1:5001/ns/docker.io/library/app:1", "busybox:latest"],
            "RepoDigests": ["busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000"]});
        assert!(designates("127.0.0.1:5001/ns/docker.io/library/app:1", &img));
        assert!(designates("busybox", &img));
        assert!(designates("docker.io/library/busybox:latest", &img));
        assert!(!designates("busybox:1", &img));
        assert!(designates("busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000", &img));
        assert!(designates(&hex, &img));
        assert!(!designates(&"b".repeat(64), &img));
    }

    #[test]
    fn platforms() {
        let img = serde_json::json!({"Os": "linux", "Architecture": "amd64"});
        assert!(platform_matches(&img, "linux/amd64"));
        assert!(platform_matches(&img, "linux/x86_64"));
        assert!(!platform_matches(&img, "linux/arm64"));
        assert_eq!(platform_json("linux/arm64/v8").as_deref(), Some(r#"{"architecture":"arm64","os":"linux","variant":"v8"}"#));
    }
}
