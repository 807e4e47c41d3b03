//! Build cache import and export (`--cache-from`, `--cache-to`) in a namespace.
//!
//! Only what stays inside the namespace is allowed:
//! - `type=inline` export: the cache metadata rides in the image the build exports (a namespace
//!   image, or a push through the registry proxy);
//! - `type=registry` import and export: `ref` names a repository as the job typed it and is
//!   mangled like an image name, so the daemon reads and writes it through ctproxy's registry proxy
//!   with a token of the namespace carrying the job's own credentials ([`super::auth`]);
//! - every other type is refused: `local` reads and writes the client's directories through a
//!   session content store ctproxy does not relay, and `gha`, `s3`, `azblob` send the daemon to
//!   services with credentials ctproxy cannot scope.

use std::collections::HashMap;

use prost::Message;
use serde_json::{Map, Value};

use super::Namespace;
use crate::docker::buildkit::{
    unknown_fields, unknown_nested_fields, CacheOptions, CacheOptionsEntry, CACHE_ENTRY_FIELDS, CACHE_OPTIONS_FIELDS,
};
use crate::docker::reference::Reference;

/// Attributes of a registry cache export that pass as they are.
const REGISTRY_EXPORT_ATTRS: [&str; 7] =
    ["mode", "oci-mediatypes", "image-manifest", "compression", "compression-level", "force-compression", "ignore-error"];

/// Whether an entry is an import or an export.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Import,
    Export,
}

impl Namespace {
    /// Checks and rewrites a `SolveRequest`'s `CacheOptions` (encoded).
    pub(super) fn check_cache_options(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let unknown = unknown_fields(msg, &CACHE_OPTIONS_FIELDS).map_err(|e| format!("invalid CacheOptions: {e}"))?;
        let nested = [4, 5].iter().map(|f| unknown_nested_fields(msg, *f, &CACHE_ENTRY_FIELDS)).collect::<Result<Vec<_>, _>>();
        let nested = nested.map_err(|e| format!("invalid CacheOptions: {e}"))?;
        if !unknown.is_empty() || nested.iter().any(|n| !n.is_empty()) {
            return Err(format!("CacheOptions fields unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut c = CacheOptions::decode(msg).map_err(|e| format!("invalid CacheOptions: {e}"))?;
        if !c.export_ref_deprecated.is_empty() || !c.import_refs_deprecated.is_empty() || !c.export_attrs_deprecated.is_empty() {
            return Err("the deprecated cache options of BuildKit before v0.4 are not available in a namespace".into());
        }
        for e in &mut c.exports {
            self.check_cache_entry(e, Way::Export)?;
        }
        for e in &mut c.imports {
            self.check_cache_entry(e, Way::Import)?;
        }
        Ok(c.encode_to_vec())
    }

    /// Checks and rewrites one encoded cache import of a gateway solve.
    pub(super) fn check_cache_import(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let unknown = unknown_fields(msg, &CACHE_ENTRY_FIELDS).map_err(|e| format!("invalid CacheOptionsEntry: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("CacheOptionsEntry fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut e = CacheOptionsEntry::decode(msg).map_err(|e| format!("invalid CacheOptionsEntry: {e}"))?;
        self.check_cache_entry(&mut e, Way::Import)?;
        Ok(e.encode_to_vec())
    }

    /// The `cache-imports` frontend attribute: the same imports as JSON (`[{"Type", "Attrs"}]`).
    pub(super) fn check_cache_imports_attr(&self, json: &str) -> Result<String, String> {
        let entries: Vec<Map<String, Value>> = serde_json::from_str(json).map_err(|e| format!("invalid cache-imports: {e}"))?;
        let mut out = Vec::new();
        for mut m in entries {
            if m.keys().any(|k| k != "Type" && k != "Attrs") {
                return Err(format!(
                    "cache-imports entries with fields other than Type and Attrs are unknown to ctproxy {}",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            let r#type = m.remove("Type").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
            let attrs: HashMap<String, String> = match m.remove("Attrs") {
                None | Some(Value::Null) => HashMap::new(),
                Some(v) => serde_json::from_value(v).map_err(|e| format!("invalid cache-imports: {e}"))?,
            };
            let mut e = CacheOptionsEntry { r#type, attrs };
            self.check_cache_entry(&mut e, Way::Import)?;
            out.push(serde_json::json!({ "Type": e.r#type, "Attrs": e.attrs }));
        }
        serde_json::to_string(&out).map_err(|e| e.to_string())
    }

    fn check_cache_entry(&self, e: &mut CacheOptionsEntry, way: Way) -> Result<(), String> {
        let flag = if way == Way::Import { "--cache-from" } else { "--cache-to" };
        match (e.r#type.as_str(), way) {
            ("inline", Way::Export) => {
                if let Some(k) = e.attrs.keys().next() {
                    return Err(format!("the inline cache attribute {k:?} is unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
                }
                Ok(())
            }
            ("registry", _) => {
                let mut sorted: Vec<&String> = e.attrs.keys().collect();
                sorted.sort();
                for k in sorted {
                    let known = k == "ref" || (way == Way::Export && REGISTRY_EXPORT_ATTRS.contains(&k.as_str()));
                    if !known {
                        return Err(format!("the {flag} type=registry attribute {k:?} is not available in a namespace"));
                    }
                }
                let typed = e.attrs.get("ref").cloned().unwrap_or_default();
                let r = Reference::parse(&typed).map_err(|err| format!("invalid {flag} ref {typed:?}: {err}"))?.with_default_tag();
                let repo = Reference { tag: None, digest: None, ..r.clone() }.familiar();
                let name = if way == Way::Export || !self.is_shared(&repo) {
                    // A cache export is a push: always into the job's own repository.
                    self.name.image(&self.settings.registry, &r).map_err(|err| err.to_string())?.to_string()
                } else {
                    self.image_name(&r).map_err(|err| err.to_string())?
                };
                e.attrs.insert("ref".into(), name);
                Ok(())
            }
            (t, _) => Err(format!(
                "the build cache {flag} type={t} is not available in a namespace: only type=registry (through ctproxy's registry proxy, with your registry login){}",
                if way == Way::Export { " and type=inline" } else { "" }
            )),
        }
    }
}
