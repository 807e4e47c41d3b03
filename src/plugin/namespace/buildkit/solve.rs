//! `Control.Solve` in a namespace: only Dockerfile builds of a local context, exported as images
//! named in the namespace; what ctproxy does not know is refused.
//!
//! - Frontend `dockerfile.v0` only: no raw LLB, no frontend inputs, no `BUILDKIT_SYNTAX` (a
//!   custom frontend is an image the daemon would pull and run). Named contexts
//!   (`--build-context`) name images in the namespace or local directories.
//! - No entitlements (`network.host`, `security.insecure`), no host network, no source policies.
//! - Cache import and export of `type=registry` go through the namespace ([`super::cache`]),
//!   `type=inline` export too; other cache types are refused.
//! - Exporters `moby`/`image` only; their image names are mangled like `docker build -t`, plus a
//!   hidden tag so that the image stays the namespace's when its name moves. `push=true` pushes
//!   the mangled names through ctproxy's registry proxy, with a token of the namespace that
//!   carries the job's own credentials (see [`super::auth`]); shared images are never pushed.
//! - Cache mounts get the namespace as their ID namespace (`BUILDKIT_CACHE_MOUNT_NS`): two jobs'
//!   `RUN --mount=type=cache,id=x` are two caches.
//! - The build ref and session ID are prefixed with the namespace.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::super::request::random_hex64;
use super::{Namespace, SolveFacts};

/// A build's ref and session ID, as the daemon knows them (namespaced).
pub(super) struct SolveRef {
    pub build: String,
    pub session: String,
}
use crate::docker::buildkit::{
    unknown_fields, unknown_nested_fields, Exporter, GatewaySolveRequest, SolveRequest, EXPORTER_FIELDS, GATEWAY_SOLVE_FIELDS,
    SOLVE_EXPORTERS_FIELD, SOLVE_FIELDS,
};
use crate::docker::reference::Reference;

/// Why frontend inputs are refused (buildx sends them for a build context naming another build).
const INPUTS_REFUSED: &str =
    "named build contexts from another build's result (frontend inputs) are not available in a namespace: use docker-image:// or a local directory";

/// Frontend capabilities a client may declare (`frontend.caps`).
const FRONTEND_CAPS: [&str; 1] = ["moby.buildkit.frontend.contexts+forward"];

/// The frontend attribute that namespaces cache mount IDs.
pub(super) const CACHE_NS: &str = "build-arg:BUILDKIT_CACHE_MOUNT_NS";

/// Frontend attributes that pass as they are.
const PLAIN_ATTRS: [&str; 12] = [
    "filename",
    "target",
    "platform",
    "no-cache",
    "image-resolve-mode",
    "shm-size",
    "ulimit",
    "add-hosts",
    "multi-platform",
    "hostname",
    "attest:provenance",
    "build-arg:BUILDKIT_INLINE_CACHE",
];

/// Exporter attributes that pass as they are.
const EXPORTER_ATTRS: [&str; 7] =
    ["unpack", "oci-mediatypes", "compression", "compression-level", "force-compression", "store", "rewrite-timestamp"];

/// Only the Dockerfile frontend, or none (the client runs its own, and asks again per solve).
fn check_frontend(frontend: &str) -> Result<(), String> {
    match frontend {
        "" | "dockerfile.v0" => Ok(()),
        f => Err(format!("the BuildKit frontend {f:?} is not available in a namespace: only dockerfile.v0")),
    }
}

impl Namespace {
    /// Checks and rewrites a `SolveRequest`: the message to forward, the namespaced session ID and
    /// what the session's Dockerfile rewrite needs. `Err` says why the build is refused.
    pub(super) fn check_solve(&self, msg: &[u8]) -> Result<(Bytes, SolveRef, SolveFacts), String> {
        let unknown = unknown_fields(msg, &SOLVE_FIELDS).map_err(|e| format!("invalid SolveRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("SolveRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let unknown =
            unknown_nested_fields(msg, SOLVE_EXPORTERS_FIELD, &EXPORTER_FIELDS).map_err(|e| format!("invalid SolveRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("Exporter fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut req = SolveRequest::decode(msg).map_err(|e| format!("invalid SolveRequest: {e}"))?;
        if !req.definition.is_empty() {
            return Err(
                "raw LLB builds (a Definition in the SolveRequest) are not available in a namespace: build from a Dockerfile".into()
            );
        }
        // No frontend: the client runs it (buildx's gateway client) and asks for its solves with
        // `LLBBridge.Solve`, checked by [`Namespace::check_gateway_solve`].
        check_frontend(&req.frontend)?;
        if !req.entitlements.is_empty() {
            return Err(format!("the build entitlements {:?} (--allow) are not available in a namespace", req.entitlements));
        }
        if !req.frontend_inputs.is_empty() {
            return Err(INPUTS_REFUSED.into());
        }
        if !req.cache.is_empty() {
            req.cache = self.check_cache_options(&req.cache)?;
        }
        if !req.source_policy.is_empty() || !req.source_policy_session.is_empty() {
            return Err("BuildKit source policies are not available in a namespace".into());
        }
        if req.proxy_network {
            return Err("a proxied build network is not available in a namespace".into());
        }
        let facts = self.check_frontend_attrs(&mut req.frontend_attrs)?;
        self.check_exporters(&mut req)?;
        if req.r#ref.is_empty() {
            return Err("a build needs a ref".into());
        }
        req.r#ref = self.scoped_id(&req.r#ref);
        if req.session.is_empty() {
            return Err("a build needs a session (the daemon reads the Dockerfile from it)".into());
        }
        req.session = self.scoped_id(&req.session);
        let ids = SolveRef { build: req.r#ref.clone(), session: req.session.clone() };
        Ok((req.encode_to_vec().into(), ids, facts))
    }

    /// Checks and rewrites a gateway `SolveRequest` (`LLBBridge.Solve`) of a build: the message
    /// to forward and the build arguments it gives the Dockerfile.
    pub(super) fn check_gateway_solve(&self, msg: &[u8]) -> Result<(Bytes, SolveFacts), String> {
        let unknown = unknown_fields(msg, &GATEWAY_SOLVE_FIELDS).map_err(|e| format!("invalid gateway SolveRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("gateway SolveRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut req = GatewaySolveRequest::decode(msg).map_err(|e| format!("invalid gateway SolveRequest: {e}"))?;
        if !req.definition.is_empty() {
            return Err(
                "raw LLB builds (a Definition in the SolveRequest) are not available in a namespace: build from a Dockerfile".into()
            );
        }
        check_frontend(&req.frontend)?;
        if !req.frontend_inputs.is_empty() {
            return Err(INPUTS_REFUSED.into());
        }
        for c in &mut req.cache_imports {
            *c = self.check_cache_import(c)?;
        }
        if !req.source_policies.is_empty() {
            return Err("BuildKit source policies are not available in a namespace".into());
        }
        if req.r#final || !req.exporter_attr.is_empty() {
            return Err("a final gateway solve with exporter attributes is not available in a namespace".into());
        }
        let facts = self.check_frontend_attrs(&mut req.frontend_opt)?;
        Ok((req.encode_to_vec().into(), facts))
    }

    fn check_frontend_attrs(&self, attrs: &mut HashMap<String, String>) -> Result<SolveFacts, String> {
        let mut facts = SolveFacts::default();
        // (attribute as sent, as forwarded, value)
        let mut rewritten = Vec::new();
        // In name order: a map's order is random, and the same request must always get the same
        // refusal (`build-arg:BUILDKIT_SYNTAX` comes with the `cmdline` it sets).
        let mut sorted: Vec<(&String, &String)> = attrs.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            if PLAIN_ATTRS.contains(&k.as_str()) || k.starts_with("label:") {
                continue;
            }
            if k == "force-network-mode" {
                if !matches!(v.as_str(), "" | "none" | "default") {
                    return Err(format!("the build network {v:?} is not available in a namespace (only the default network or none)"));
                }
                continue;
            }
            if let Some(arg) = k.strip_prefix("build-arg:") {
                if arg.starts_with("BUILDKIT_") {
                    return Err(format!("the build argument {arg} is not available in a namespace"));
                }
                facts.build_args.insert(arg.to_owned(), Some(v.clone()));
                continue;
            }
            if k == "frontend.caps" {
                // The client's declared capabilities: named contexts are forwarded to the frontend
                // as `context:` attributes (checked below), not resolved into inputs.
                if let Some(c) = v.split(',').find(|c| !FRONTEND_CAPS.contains(c)) {
                    return Err(format!("the frontend capability {c:?} is unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
                }
                continue;
            }
            if k == "cache-imports" {
                let v = self.check_cache_imports_attr(v)?;
                rewritten.push((k.clone(), k.clone(), v));
                continue;
            }
            if let Some(name) = k.strip_prefix("context:") {
                let (key, value) = self.check_named_context(name, v)?;
                rewritten.push((k.clone(), key, value));
                continue;
            }
            return Err(format!("the frontend attribute {k:?} is unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        for (from, to, v) in rewritten {
            attrs.remove(&from);
            attrs.insert(to, v);
        }
        attrs.insert(CACHE_NS.to_owned(), self.cache_mount_ns());
        Ok(facts)
    }

    /// A named build context (`--build-context NAME=VALUE`, the frontend attribute
    /// `context:NAME[::platform]`): the attribute as forwarded and its value. The Dockerfile's
    /// `FROM NAME` reaches the frontend in the namespace's name ([`super::dockerfile`]), and the
    /// frontend looks its context up by that name (familiar, without `:latest`), so `NAME` is
    /// renamed the same way. `docker-image://REF` names an image in the namespace; `local:DIR` is a
    /// directory the client's own session serves; the rest (Git, HTTP, OCI layouts, frontend
    /// inputs) is refused.
    fn check_named_context(&self, name: &str, value: &str) -> Result<(String, String), String> {
        let (base, platform) = match name.split_once("::") {
            Some((b, p)) => (b, Some(p)),
            None => (name, None),
        };
        let r = Reference::parse(base).map_err(|e| format!("invalid named build context {base:?}: {e}"))?;
        let resolved = self.image_name(&r.with_default_tag()).map_err(|e| e.to_string())?;
        let resolved = Reference::parse(&resolved).map_err(|e| e.to_string())?.familiar();
        let mut key = format!("context:{}", resolved.strip_suffix(":latest").unwrap_or(&resolved));
        if let Some(p) = platform {
            key = format!("{key}::{p}");
        }
        let value = if let Some(image) = value.strip_prefix("docker-image://") {
            let r = Reference::parse(image).map_err(|e| format!("invalid image {image:?} for the build context {base:?}: {e}"))?;
            format!("docker-image://{}", self.image_name(&r.with_default_tag()).map_err(|e| e.to_string())?)
        } else if value.starts_with("local:") {
            value.to_owned()
        } else {
            let kind = value.split_once("://").map_or(value, |(k, _)| k);
            return Err(format!(
                "the build context {base}={kind}… is not available in a namespace: only docker-image:// (an image of the namespace or a shared one) and local directories"
            ));
        };
        Ok((key, value))
    }

    fn check_exporters(&self, req: &mut SolveRequest) -> Result<(), String> {
        if !req.exporter_deprecated.is_empty() || !req.exporter_attrs_deprecated.is_empty() {
            let mut e = Exporter {
                r#type: std::mem::take(&mut req.exporter_deprecated),
                attrs: std::mem::take(&mut req.exporter_attrs_deprecated),
            };
            self.check_exporter(&mut e)?;
            req.exporter_deprecated = e.r#type;
            req.exporter_attrs_deprecated = e.attrs;
        }
        for e in &mut req.exporters {
            self.check_exporter(e)?;
        }
        if req.enable_session_exporter {
            return Err("exporting to the client (--output type=local or tar) is not available in a namespace".into());
        }
        Ok(())
    }

    fn check_exporter(&self, e: &mut Exporter) -> Result<(), String> {
        if !matches!(e.r#type.as_str(), "moby" | "image") {
            return Err(format!("the build output {:?} is not available in a namespace: only images (--load, --push)", e.r#type));
        }
        let push = match e.attrs.get("push").map(String::as_str) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(v) => return Err(format!("invalid push value {v:?}")),
        };
        let mut names = Vec::new();
        let mut sorted: Vec<(&String, &String)> = e.attrs.iter().collect();
        sorted.sort();
        for (k, v) in sorted {
            match k.as_str() {
                "name" => {
                    for n in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        let r = Reference::parse(n).map_err(|err| format!("invalid image name {n:?}: {err}"))?.with_default_tag();
                        let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
                        if push && self.is_shared(&repo) {
                            return Err(format!(
                                "image {n} is shared by the administrator ([namespaces] shared_images) and cannot be pushed from a namespace: name the build's image in your own repository"
                            ));
                        }
                        names.push(self.image_name(&r).map_err(|err| err.to_string())?);
                    }
                }
                "push" => {}
                k if EXPORTER_ATTRS.contains(&k) || k.starts_with("annotation") => {}
                k => return Err(format!("the build output attribute {k:?} is unknown to ctproxy {}", env!("CARGO_PKG_VERSION"))),
            }
        }
        if push && names.is_empty() {
            return Err("a push (--push) needs an image name (-t)".into());
        }
        // Every image a build makes is the namespace's, even once its name moves to a newer build.
        // A pushed build is named by what it pushes (BuildKit pushes every name, and the hidden one
        // is no registry's): it has no hidden tag.
        if !push {
            names.push(self.hidden_tag(&random_hex64()));
        }
        e.attrs.insert("name".into(), names.join(","));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Dockerfile build as buildx sends it, with `attrs` as frontend attributes.
    fn solve(attrs: &[(&str, &str)], entitlements: &[&str]) -> Vec<u8> {
        SolveRequest {
            r#ref: "r1".into(),
            session: "s1".into(),
            frontend: "dockerfile.v0".into(),
            frontend_attrs: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            entitlements: entitlements.iter().map(|e| (*e).to_owned()).collect(),
            exporters: vec![Exporter { r#type: "moby".into(), attrs: [("name".to_owned(), "app:1".to_owned())].into() }],
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn a_plain_build_passes_scoped() {
        let ns = super::super::tests::namespace("team");
        let (out, ids, _) = ns.check_solve(&solve(&[("filename", "Dockerfile"), ("build-arg:X", "1")], &[])).expect("allowed");
        assert_eq!((ids.build.as_str(), ids.session.as_str()), ("team.r1", "team.s1"));
        let out = SolveRequest::decode(out).expect("decodes");
        assert_eq!(out.frontend_attrs.get(CACHE_NS), Some(&ns.cache_mount_ns()));
    }

    /// Frontend attributes ctproxy does not know are refused with a message naming them; so are
    /// entitlements and build networks other than the default or none, which real clients send
    /// only with an entitlement (host) or not at all (buildx refuses other networks itself).
    #[test]
    fn unknown_attributes_entitlements_and_networks_are_refused() {
        let ns = super::super::tests::namespace("team");
        let err = ns.check_solve(&solve(&[("frobnicate", "1")], &[])).err().expect("refused");
        assert!(err.contains("\"frobnicate\""), "{err}");
        let err = ns.check_solve(&solve(&[("frontend.caps", "moby.buildkit.frontend.frobnicate")], &[])).err().expect("refused");
        assert!(err.contains("moby.buildkit.frontend.frobnicate"), "{err}");
        for e in ["security.insecure", "network.host", "device"] {
            let err = ns.check_solve(&solve(&[], &[e])).err().expect("refused");
            assert!(err.contains(e), "{err}");
        }
        for net in ["host", "ctp.other.bnet", "bnet", "container:x"] {
            let err = ns.check_solve(&solve(&[("force-network-mode", net)], &[])).err().expect("refused");
            assert!(err.contains(net), "{err}");
        }
        for net in ["", "none", "default"] {
            assert!(ns.check_solve(&solve(&[("force-network-mode", net)], &[])).is_ok(), "{net}");
        }
        let err = ns.check_solve(&solve(&[("build-arg:BUILDKIT_SYNTAX", "evil/frontend")], &[])).err().expect("refused");
        assert!(err.contains("BUILDKIT_SYNTAX"), "{err}");
    }
}
