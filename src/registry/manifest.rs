//! Image manifests, parsed strictly for one purpose: the blobs a manifest references, so that a
//! job whose credentials the upstream accepted for the manifest may be served those blobs from the
//! blob cache without a further upstream check (see `docs/registry-proxy.md`, "Blob cache").
//!
//! Only Docker schema 2 and OCI image manifests are understood. Anything else (indexes, manifest
//! lists, schema 1, artifacts of unknown types, malformed JSON, descriptors with `urls`) yields
//! `None`: no grant is recorded and the blobs fall back to the per-request upstream check. An index
//! grants nothing itself; the child manifest dockerd fetches next records its own blobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::blobs::sha256_hex;

pub const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_V1: &str = "application/vnd.oci.image.manifest.v1+json";

/// Manifests are small (the distribution registry refuses more than 4 MiB); a bigger one is not
/// read for grants.
pub const MAX_BYTES: usize = 4 << 20;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    digest: String,
    /// Required, as the specifications say; its value is not used.
    #[allow(dead_code)]
    size: u64,
    /// Foreign (non-distributable) layers live elsewhere: the registry never checked them.
    #[serde(default)]
    urls: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The sha256 hex digests of the config and layers of an image manifest served with
/// `content_type`, or `None` when this is not a plain Docker schema 2 / OCI image manifest.
pub fn referenced_blobs(content_type: Option<&str>, body: &[u8]) -> Option<Vec<String>> {
    let ct = content_type?.split(';').next()?.trim();
    if ct != DOCKER_V2 && ct != OCI_V1 {
        return None;
    }
    let m: Manifest = serde_json::from_slice(body).ok()?;
    if m.schema_version != 2 {
        return None;
    }
    // A body's own media type, when given, must be the one it was served as; Docker's requires it.
    match m.media_type.as_deref() {
        Some(t) if t != ct => return None,
        None if ct == DOCKER_V2 => return None,
        _ => {}
    }
    let mut out = Vec::with_capacity(m.layers.len() + 1);
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if d.urls.is_some() {
            return None;
        }
        out.push(sha256_hex(&d.digest)?.to_owned());
    }
    Some(out)
}

/// Manifests seen, by the sha256 of their body: what each references. dockerd 20.10 keeps the
/// manifests it pulled and, pulling one again, only asks the registry a `HEAD` by tag; a `HEAD` the
/// upstream answers 200 with a job's credentials grants that job the blobs of the manifest the
/// answer's `Docker-Content-Digest` names, when its body was seen (and hashed) here before.
/// Content-addressed, so shared by all tokens; bounded (emptied when full).
#[derive(Default)]
pub struct Seen {
    by_digest: Mutex<HashMap<String, Arc<[String]>>>,
}

/// Manifests remembered by [`Seen`] (a few hundred bytes each).
const SEEN_MAX: usize = 4096;

impl Seen {
    /// Remembers that the manifest whose body hashes to `hex` references `blobs`.
    pub fn insert(&self, hex: &str, blobs: &[String]) {
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SEEN_MAX && !map.contains_key(hex) {
            map.clear();
        }
        map.insert(hex.to_owned(), Arc::from(blobs));
    }

    /// The blobs of the manifest `hex`, if its body was seen.
    pub fn get(&self, hex: &str) -> Option<Arc<[String]>> {
        self.by_digest.lock().unwrap_or_else(|p| p.into_inner()).get(hex).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn manifest(media: Option<&str>, extra_layer: &str) -> Vec<u8> {
        let mt = media.map(|m| format!("\"mediaType\":\"{m}\",")).unwrap_or_default();
        format!(
            "{{\"schemaVersion\":2,{mt}\"config\":{{\"mediaType\":\"x\",\"digest\":\"{}\",\"size\":10}},\"layers\":[{{\"mediaType\":\"y\",\"digest\":\"{}\",\"size\":20}}{extra_layer}]}}",
            d('a'),
            d('b')
        )
        .into_bytes()
    }

    #[test]
    fn docker_and_oci_manifests_grant_config_and_layers() {
        let want = Some(vec!["a".repeat(64), "b".repeat(64)]);
        assert_eq!(referenced_blobs(Some(DOCKER_V2), &manifest(Some(DOCKER_V2), "")), want);
        assert_eq!(referenced_blobs(Some(OCI_V1), &manifest(Some(OCI_V1), "")), want);
        assert_eq!(referenced_blobs(Some(&format!("{OCI_V1}; charset=utf-8")), &manifest(None, "")), want);
    }

    #[test]
    fn anything_else_grants_nothing() {
        let index = "application/vnd.oci.image.index.v1+json";
        let list = "application/vnd.docker.distribution.manifest.list.v2+json";
        let foreign = format!(",{{\"digest\":\"{}\",\"size\":5,\"urls\":[\"https://x\"]}}", d('c'));
        let bad_digest = ",{\"digest\":\"sha512:00\",\"size\":5}";
        for (ct, body) in [
            (None, manifest(Some(DOCKER_V2), "")),
            (Some(index), manifest(Some(index), "")),
            (Some(list), manifest(Some(list), "")),
            (Some("application/json"), manifest(None, "")),
            (Some(DOCKER_V2), manifest(Some(OCI_V1), "")),
            (Some(DOCKER_V2), manifest(None, "")),
            (Some(OCI_V1), manifest(Some(OCI_V1), &foreign)),
            (Some(OCI_V1), manifest(Some(OCI_V1), bad_digest)),
            (Some(OCI_V1), b"{\"schemaVersion\":1}".to_vec()),
            (
                Some(OCI_V1),
                String::from_utf8(manifest(Some(OCI_V1), "")).unwrap().replace("\"schemaVersion\":2", "\"schemaVersion\":1").into_bytes(),
            ),
            (Some(OCI_V1), b"not json".to_vec()),
        ] {
            assert_eq!(referenced_blobs(ct, &body), None, "{ct:?} {}", String::from_utf8_lossy(&body));
        }
    }
}
