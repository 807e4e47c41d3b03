//! The daemon's content store over `/grpc` (`containerd.services.content.v1.Content`), which
//! `docker buildx history inspect` and `docker compose build` (bake's provenance) read the blobs
//! of a build record from: `Info` and `Read` only, of the blobs the namespace's own history
//! records name.
//!
//! The digests are collected from the records a namespace was shown ([`super::history`]), in
//! memory: after a restart of ctproxy a client lists the record again before it reads a blob
//! (as buildx and compose do). Any other digest is answered as the content store answers an
//! unknown one; other methods are refused.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use prost::Message;

use super::Namespace;
use crate::docker::buildkit::{rewrite, unknown_fields, Field, InfoRequest};

/// At most this many digests per namespace, and this many namespaces, are remembered; past that
/// the oldest are forgotten (their blobs are refused until the record is listed again).
const MAX_DIGESTS: usize = 4096;
const MAX_NAMESPACES: usize = 1024;

fn seen() -> &'static Mutex<HashMap<String, HashSet<String>>> {
    static S: OnceLock<Mutex<HashMap<String, HashSet<String>>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

/// `sha256:` and 64 lower-case hex digits.
fn is_digest(s: &[u8]) -> bool {
    s.len() == 71 && s.starts_with(b"sha256:") && s[7..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// Every digest string inside `msg`, at any depth of its nested messages.
fn digests(msg: &[u8], depth: usize, out: &mut Vec<String>) {
    if is_digest(msg) {
        out.push(String::from_utf8_lossy(msg).into_owned());
        return;
    }
    if depth == 0 {
        return;
    }
    let _ = rewrite(msg, |_, v| {
        if let Some(v) = v {
            digests(v, depth - 1, out);
        }
        Field::Keep
    });
}

impl Namespace {
    /// Remembers the blobs a history record shown to the namespace names.
    pub(super) fn saw_record(&self, record: &[u8]) {
        let mut found = Vec::new();
        digests(record, 6, &mut found);
        if found.is_empty() {
            return;
        }
        let Ok(mut s) = seen().lock() else { return };
        if !s.contains_key(self.name.as_str()) && s.len() >= MAX_NAMESPACES {
            s.clear();
        }
        let set = s.entry(self.name.as_str().to_owned()).or_default();
        if set.len() + found.len() > MAX_DIGESTS {
            set.clear();
        }
        set.extend(found);
    }

    /// Checks a content `Info` or `Read` request: `Ok` if it names a blob of the namespace's
    /// records, `Err((not_found, message))` otherwise.
    pub(super) fn check_content(&self, msg: &[u8], fields: u32) -> Result<Bytes, (bool, String)> {
        let unknown = unknown_fields(msg, &(1..=fields)).map_err(|e| (false, format!("invalid content request: {e}")))?;
        if !unknown.is_empty() {
            return Err((false, format!("content request fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION"))));
        }
        let req = InfoRequest::decode(msg).map_err(|e| (false, format!("invalid content request: {e}")))?;
        let own = seen().lock().ok().and_then(|s| s.get(self.name.as_str()).map(|d| d.contains(&req.digest))).unwrap_or(false);
        if !own {
            return Err((true, format!("content digest {}: not found", req.digest)));
        }
        Ok(Bytes::copy_from_slice(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blobs_of_shown_records_are_readable() {
        let a = super::super::tests::namespace("contenta");
        let b = super::super::tests::namespace("contentb");
        let digest = format!("sha256:{}", "a".repeat(64));
        // A record with a Descriptor (field 8: digest in its field 2).
        let desc = crate::docker::buildkit::StringEntry { key: String::new(), value: digest.clone() }.encode_to_vec();
        let mut record = Vec::new();
        prost::encoding::bytes::encode(8, &desc, &mut record);
        a.saw_record(&record);
        let req = InfoRequest { digest: digest.clone() }.encode_to_vec();
        assert!(a.check_content(&req, 1).is_ok());
        assert!(matches!(b.check_content(&req, 1), Err((true, _))));
        let other = InfoRequest { digest: format!("sha256:{}", "b".repeat(64)) }.encode_to_vec();
        assert!(a.check_content(&other, 1).is_err());
    }
}
