//! Build cache in a namespace (`docker buildx du`, `docker builder prune`, `docker buildx prune`):
//! only what the namespace can prove is its own is shown, and only that is pruned.
//!
//! BuildKit's cache records (`UsageRecord`) carry no owner: a layer made by one namespace's
//! `RUN` is reused by any other build with the same step, and a record says nothing of the build
//! that made it. What a namespace can prove is its own are its **cache mounts**: every one of its
//! builds gets `BUILDKIT_CACHE_MOUNT_NS=ctproxy-<ns>` ([`Namespace::cache_mount_ns`]), which no
//! client can set, so the Dockerfile frontend names each of its cache mounts
//! `ctproxy-<ns>/<id>`, and BuildKit writes that ID, Go-quoted, at the end of the record's
//! description (`cached mount /c from exec … with id "ctproxy-<ns>/<id>"`). A namespace name has
//! no `/`, so the attribution is unambiguous; it lives in the daemon's cache metadata and survives
//! restarts of ctproxy and of the daemon.
//!
//! - `DiskUsage`: the daemon's answer with only the namespace's records, their cache IDs as the
//!   client wrote them, and parent IDs only where the parent is the namespace's too.
//! - `Prune`: ctproxy asks the daemon's `DiskUsage` with the client's filters, keeps the
//!   namespace's records, and sends `Prune` with one `id==<ID>` filter per record (BuildKit ORs
//!   filters), with the client's `all` and `keepDuration`; with no records, nothing is sent (a
//!   prune without filters would take every namespace's cache). The size-driven options
//!   (`--reserved-space`, `--max-used-space`, `--min-free-space`) measure the daemon's whole
//!   cache and are refused.
//! - Everything else (layers, local context copies, frontends) cannot be attributed: hidden from
//!   the namespace, never pruned by it; the daemon's own garbage collection keeps it in bounds.

use bytes::Bytes;
use prost::Message;

use super::Namespace;
use crate::docker::buildkit::{
    rewrite, unknown_fields, usage, DiskUsageRequest, Field, PruneRequest, UsageRecordHead, DISK_USAGE_RECORDS_FIELD,
    DISK_USAGE_REQUEST_FIELDS, PRUNE_REQUEST_FIELDS,
};
use crate::http::grpc::Answers;

/// BuildKit's record type of cache mounts.
const CACHE_MOUNT: &str = "exec.cachemount";
/// What BuildKit writes before the quoted cache ID in a cache mount's description.
const WITH_ID: &str = " with id ";

impl Namespace {
    /// The cache-ID namespace of the namespace's builds (`BUILDKIT_CACHE_MOUNT_NS`).
    pub(super) fn cache_mount_ns(&self) -> String {
        format!("ctproxy-{}", self.name)
    }

    /// Where the namespace's cache ID starts in a record's description (after the opening quote of
    /// the Go-quoted ID that ends it), if the record is one of its cache mounts.
    fn own_cache_id_at(&self, record_type: &str, description: &str) -> Option<usize> {
        if record_type != CACHE_MOUNT {
            return None;
        }
        self.cache_id_at(description)
    }

    /// Where the namespace's cache ID starts in a cache mount's description.
    fn cache_id_at(&self, description: &str) -> Option<usize> {
        let quoted = description.strip_suffix('"')?;
        // The opening quote: the last `"` not escaped by an odd run of backslashes (Go's %q
        // escapes every `"` and `\` inside).
        let bytes = quoted.as_bytes();
        let mut at = None;
        for i in (0..bytes.len()).rev() {
            if bytes[i] == b'"' && bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0 {
                at = Some(i);
                break;
            }
        }
        let at = at?;
        let prefix = format!("{}/", self.cache_mount_ns());
        (quoted[..at].ends_with(WITH_ID) && quoted[at + 1..].starts_with(&prefix)).then_some(at + 1)
    }

    /// The record's ID if it is the namespace's.
    fn own_record(&self, record: &[u8]) -> Option<String> {
        let head = UsageRecordHead::decode(record).ok()?;
        self.own_cache_id_at(&head.record_type, &head.description).map(|_| head.id)
    }

    /// A record of the namespace as the client sees it: its cache ID as the client wrote it, and
    /// only the parents in `own`. `None` if it is not the namespace's: by its type and
    /// description, or, for `Prune`'s answers (which have no record type), by its ID in `own`.
    fn usage_record(&self, record: &[u8], own: &[String], by_id: bool) -> Option<Vec<u8>> {
        let head = UsageRecordHead::decode(record).ok()?;
        let at = if by_id {
            if !own.contains(&head.id) {
                return None;
            }
            self.cache_id_at(&head.description)?
        } else {
            self.own_cache_id_at(&head.record_type, &head.description)?
        };
        let mut description = head.description.clone();
        description.replace_range(at..at + self.cache_mount_ns().len() + 1, "");
        rewrite(record, |tag, v| match (tag, v) {
            (usage::DESCRIPTION, _) => Field::Bytes(description.clone().into_bytes()),
            (usage::PARENT | usage::PARENTS, Some(p)) => {
                if own.iter().any(|o| o.as_bytes() == p) {
                    Field::Keep
                } else {
                    Field::Drop
                }
            }
            _ => Field::Keep,
        })
        .ok()
    }

    /// Checks a `DiskUsageRequest` (passed as it is: its filters only narrow the answer).
    pub(super) fn check_disk_usage(&self, msg: &[u8]) -> Result<DiskUsageRequest, String> {
        let unknown = unknown_fields(msg, &DISK_USAGE_REQUEST_FIELDS).map_err(|e| format!("invalid DiskUsageRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("DiskUsageRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        DiskUsageRequest::decode(msg).map_err(|e| format!("invalid DiskUsageRequest: {e}"))
    }

    /// A `DiskUsageResponse` with the namespace's records only (other fields are dropped).
    pub(super) fn disk_usage_answer(&self, msg: &[u8]) -> Result<Vec<u8>, prost::DecodeError> {
        let own = self.own_ids(msg)?;
        rewrite(msg, |tag, v| match (tag, v) {
            (DISK_USAGE_RECORDS_FIELD, Some(r)) => self.usage_record(r, &own, false).map_or(Field::Drop, Field::Bytes),
            _ => Field::Drop,
        })
    }

    /// The IDs of the namespace's records in a `DiskUsageResponse`.
    pub(super) fn own_ids(&self, msg: &[u8]) -> Result<Vec<String>, prost::DecodeError> {
        let mut own = Vec::new();
        rewrite(msg, |tag, v| {
            if let (DISK_USAGE_RECORDS_FIELD, Some(r)) = (tag, v) {
                own.extend(self.own_record(r));
            }
            Field::Keep
        })?;
        Ok(own)
    }

    /// Checks a `PruneRequest`: the `DiskUsageRequest` that finds the records it may take.
    pub(super) fn check_prune(&self, msg: &[u8]) -> Result<(PruneRequest, Bytes), String> {
        let unknown = unknown_fields(msg, &PRUNE_REQUEST_FIELDS).map_err(|e| format!("invalid PruneRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("PruneRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let req = PruneRequest::decode(msg).map_err(|e| format!("invalid PruneRequest: {e}"))?;
        if req.reserved_space != 0 || req.max_used_space != 0 || req.min_free_space != 0 {
            return Err("--reserved-space, --max-used-space and --min-free-space measure the daemon's whole build cache: not available in a namespace".into());
        }
        let du = DiskUsageRequest { filter: req.filter.clone(), age_limit: 0 };
        Ok((req, du.encode_to_vec().into()))
    }

    /// The `PruneRequest` to send for the namespace's records `own` (never empty).
    pub(super) fn scoped_prune(&self, req: &PruneRequest, own: &[String]) -> Result<Bytes, String> {
        if own.is_empty() {
            return Err("nothing to prune".into());
        }
        let mut filter = Vec::with_capacity(own.len());
        for id in own {
            // BuildKit's IDs are alphanumeric: nothing else can reach the filter syntax.
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("unexpected build cache record ID {id:?}"));
            }
            filter.push(format!("id=={id}"));
        }
        let out = PruneRequest { filter, all: req.all, keep_duration: req.keep_duration, ..Default::default() };
        Ok(out.encode_to_vec().into())
    }
}

/// The answer of `DiskUsage`: the namespace's records.
pub(super) struct DiskUsageAnswers(pub Namespace);

impl Answers for DiskUsageAnswers {
    fn message(&mut self, msg: Bytes) -> Vec<Bytes> {
        match self.0.disk_usage_answer(&msg) {
            Ok(out) => vec![out.into()],
            Err(_) => vec![Bytes::new()],
        }
    }
}

/// The answer of `Prune`: each record pruned, if it is one the namespace's named (BuildKit's
/// records pruned have no record type).
pub(super) struct PruneAnswers {
    pub ns: Namespace,
    pub own: Vec<String>,
}

impl Answers for PruneAnswers {
    fn message(&mut self, msg: Bytes) -> Vec<Bytes> {
        self.ns.usage_record(&msg, &self.own, true).map(|r| vec![r.into()]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::buildkit::DISK_USAGE_RECORDS_FIELD;

    fn record(id: &str, kind: &str, description: &str) -> Vec<u8> {
        UsageRecordHead { id: id.into(), description: description.into(), record_type: kind.into() }.encode_to_vec()
    }

    fn response(records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            prost::encoding::bytes::encode(DISK_USAGE_RECORDS_FIELD, r, &mut out);
        }
        out
    }

    #[test]
    fn only_the_namespaces_cache_mounts_are_its_own() {
        let a = super::super::tests::namespace("team");
        let own = record("a1", CACHE_MOUNT, r#"cached mount /c from exec /bin/sh -c x with id "ctproxy-team/shared""#);
        let other = record("b1", CACHE_MOUNT, r#"cached mount /c from exec /bin/sh -c x with id "ctproxy-team-a/shared""#);
        // The command is the client's: a forged suffix inside it is escaped in BuildKit's quoting.
        let forged = record(
            "b2",
            CACHE_MOUNT,
            r#"cached mount /c from exec echo with id "ctproxy-team/x" with id "ctproxy-b/y\" with id \"ctproxy-team/z""#,
        );
        let layer = record("l1", "regular", r#"mount / from exec /bin/sh -c echo with id "ctproxy-team/x""#);
        let du = response(&[own, other, forged, layer]);
        assert_eq!(a.own_ids(&du).unwrap(), vec!["a1".to_owned()]);
        let shown = a.disk_usage_answer(&du).unwrap();
        let ids = a.own_ids(&shown).unwrap_or_default();
        assert!(ids.is_empty(), "descriptions are the client's after rewriting");
        let mut descriptions = Vec::new();
        rewrite(&shown, |_, v| {
            descriptions.push(UsageRecordHead::decode(v.unwrap_or_default()).unwrap().description);
            Field::Keep
        })
        .unwrap();
        assert_eq!(descriptions, vec![r#"cached mount /c from exec /bin/sh -c x with id "shared""#.to_owned()]);
    }

    #[test]
    fn prune_names_only_own_records() {
        let a = super::super::tests::namespace("team");
        let req = PruneRequest { filter: vec![String::new()], all: true, ..Default::default() };
        let (req, _) = a.check_prune(&req.encode_to_vec()).unwrap();
        assert!(a.scoped_prune(&req, &[]).is_err());
        assert!(a.scoped_prune(&req, &["a,b".into()]).is_err());
        let out = PruneRequest::decode(a.scoped_prune(&req, &["a1".into(), "a2".into()]).unwrap()).unwrap();
        assert_eq!(out.filter, vec!["id==a1", "id==a2"]);
        assert!(out.all);
        let sized = PruneRequest { max_used_space: 1, ..Default::default() };
        assert!(a.check_prune(&sized.encode_to_vec()).is_err());
    }
}
