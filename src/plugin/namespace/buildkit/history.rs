//! Build history in a namespace (`docker buildx history ls|inspect|rm`): the namespace's own
//! builds only.
//!
//! BuildKit keeps a record per build ref in its history database, on the daemon. A namespace's
//! build refs are scoped (`<ns>.<ref>`, [`Namespace::scoped_id`]), and a namespace name has no
//! `.`, so the ref alone says whose build a record is: `ListenBuildHistory` answers are filtered
//! to the namespace's refs (and shown with the client's ref), `UpdateBuildHistory` (pin, delete)
//! can only name the namespace's refs. Nothing is kept by ctproxy: the records and their
//! attribution survive restarts of ctproxy and of the daemon.

use bytes::Bytes;
use prost::Message;

use super::Namespace;
use crate::docker::buildkit::{
    history, rewrite, unknown_fields, BuildHistoryRequest, Field, HistoryEventHead, StringEntry, Timestamp, UpdateBuildHistoryRequest,
    BUILD_HISTORY_REQUEST_FIELDS, HISTORY_COMPLETE, UPDATE_BUILD_HISTORY_FIELDS,
};
use crate::http::grpc::Answers;

impl Namespace {
    /// Checks and scopes a `BuildHistoryRequest`: the request to forward and how to rewrite the
    /// answer. `Err` says why it is refused.
    pub(super) fn check_history_request(&self, msg: &[u8]) -> Result<(Bytes, HistoryAnswers), String> {
        let unknown = unknown_fields(msg, &BUILD_HISTORY_REQUEST_FIELDS).map_err(|e| format!("invalid BuildHistoryRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("BuildHistoryRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut req = BuildHistoryRequest::decode(msg).map_err(|e| format!("invalid BuildHistoryRequest: {e}"))?;
        // A filter on refs would compare the client's refs with the daemon's (scoped) ones.
        if req.filter.iter().any(|f| f.to_ascii_lowercase().contains("ref")) {
            return Err("build history filters on ref are not available in a namespace".into());
        }
        if !req.r#ref.is_empty() {
            req.r#ref = self.scoped_id(&req.r#ref);
        }
        // The daemon's limit would count other namespaces' records: ctproxy applies it.
        let limit = usize::try_from(req.limit).map_err(|_| format!("invalid build history limit {}", req.limit))?;
        if limit > 0 && !req.early_exit {
            return Err("a build history limit is available in a namespace only with early exit".into());
        }
        req.limit = 0;
        let answers = HistoryAnswers { ns: self.clone(), limit, completed: Vec::new() };
        Ok((req.encode_to_vec().into(), answers))
    }

    /// Checks and scopes an `UpdateBuildHistoryRequest`: it can only name the namespace's refs.
    pub(super) fn check_history_update(&self, msg: &[u8]) -> Result<Bytes, String> {
        let unknown = unknown_fields(msg, &UPDATE_BUILD_HISTORY_FIELDS).map_err(|e| format!("invalid UpdateBuildHistoryRequest: {e}"))?;
        if !unknown.is_empty() {
            return Err(format!("UpdateBuildHistoryRequest fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
        }
        let mut req = UpdateBuildHistoryRequest::decode(msg).map_err(|e| format!("invalid UpdateBuildHistoryRequest: {e}"))?;
        if req.r#ref.is_empty() {
            return Err("a build history update needs a ref".into());
        }
        req.r#ref = self.scoped_id(&req.r#ref);
        Ok(req.encode_to_vec().into())
    }

    /// A `BuildHistoryEvent` as the namespace sees it, or `None` when it is not the namespace's.
    fn history_event(&self, msg: &[u8]) -> Option<Vec<u8>> {
        let mut own = false;
        let out = rewrite(msg, |tag, v| match (tag, v) {
            (history::EVENT_RECORD, Some(rec)) => match self.history_record(rec) {
                Some(r) => {
                    own = true;
                    Field::Bytes(r)
                }
                None => Field::Drop,
            },
            _ => Field::Keep,
        })
        .ok()?;
        own.then_some(out)
    }

    /// A `BuildHistoryRecord` with the client's ref, without ctproxy's own frontend attribute and
    /// with the client's image names; `None` when its ref is not the namespace's.
    fn history_record(&self, rec: &[u8]) -> Option<Vec<u8>> {
        let mut own = false;
        let registry = self.settings.registry.clone();
        let out = rewrite(rec, |tag, v| match (tag, v) {
            (history::REF, Some(r)) => match std::str::from_utf8(r).ok().and_then(|r| self.unscoped_id(r)) {
                Some(r) => {
                    own = true;
                    Field::Bytes(r.as_bytes().to_vec())
                }
                None => Field::Drop,
            },
            (history::FRONTEND_ATTRS, Some(e)) => match StringEntry::decode(e) {
                Ok(entry) if entry.key == super::solve::CACHE_NS => Field::Drop,
                _ => Field::Keep,
            },
            (history::EXPORTERS, Some(e)) => {
                match rewrite(e, |tag, v| match (tag, v) {
                    (history::EXPORTER_ATTRS, Some(a)) => self.names_entry(&registry, a, "name"),
                    _ => Field::Keep,
                }) {
                    Ok(b) => Field::Bytes(b),
                    Err(_) => Field::Drop,
                }
            }
            (history::EXPORTER_RESPONSE, Some(e)) => self.names_entry(&registry, e, "image.name"),
            _ => Field::Keep,
        })
        .ok()?;
        if own {
            self.saw_record(rec);
        }
        own.then_some(out)
    }

    /// A map entry whose value lists image names (`key`), with the client's names; the hidden
    /// tags of the build's images are left out.
    fn names_entry(&self, registry: &str, entry: &[u8], key: &str) -> Field {
        let Ok(mut e) = StringEntry::decode(entry) else { return Field::Drop };
        if e.key != key {
            return Field::Keep;
        }
        let names: Vec<String> = e
            .value
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty() && !self.name.is_hidden(registry, n))
            .map(|n| self.name.unimage_str(registry, n).unwrap_or_else(|| n.to_owned()))
            .collect();
        e.value = names.join(",");
        Field::Bytes(e.encode_to_vec())
    }
}

/// The answer of `ListenBuildHistory`: the namespace's events, and the client's limit applied to
/// the completed records as BuildKit applies it (the newest first).
pub(super) struct HistoryAnswers {
    ns: Namespace,
    limit: usize,
    completed: Vec<(Timestamp, Vec<u8>)>,
}

impl Answers for HistoryAnswers {
    fn message(&mut self, msg: Bytes) -> Vec<Bytes> {
        let Some(out) = self.ns.history_event(&msg) else { return Vec::new() };
        if self.limit > 0 {
            if let Ok(head) = HistoryEventHead::decode(msg.as_ref()) {
                if head.r#type == HISTORY_COMPLETE {
                    let at = head.record.and_then(|r| r.created_at).unwrap_or_default();
                    self.completed.push((at, out));
                    return Vec::new();
                }
            }
        }
        vec![out.into()]
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut done = std::mem::take(&mut self.completed);
        done.sort_by_key(|e| std::cmp::Reverse(e.0));
        done.into_iter().take(self.limit).map(|(_, m)| m.into()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::buildkit::HistoryRecordHead;

    fn ns(name: &str) -> Namespace {
        super::super::tests::namespace(name)
    }

    fn event(r#ref: &str) -> Vec<u8> {
        HistoryEventHead { r#type: HISTORY_COMPLETE, record: Some(HistoryRecordHead { r#ref: r#ref.into(), created_at: None }) }
            .encode_to_vec()
    }

    #[test]
    fn only_the_namespaces_records_are_shown() {
        let a = ns("team");
        let out = a.history_event(&event("team.abc")).expect("own");
        assert_eq!(HistoryEventHead::decode(out.as_slice()).unwrap().record.unwrap().r#ref, "abc");
        assert!(a.history_event(&event("team-a.abc")).is_none());
        assert!(ns("team-a").history_event(&event("team.a.abc")).is_none());
        assert!(a.history_event(&event("abc")).is_none());
    }

    #[test]
    fn refs_are_scoped_and_ref_filters_refused() {
        let a = ns("team");
        let req = BuildHistoryRequest { r#ref: "x".into(), early_exit: true, limit: 5, ..Default::default() };
        let (out, _) = a.check_history_request(&req.encode_to_vec()).unwrap();
        let out = BuildHistoryRequest::decode(out).unwrap();
        assert_eq!((out.r#ref.as_str(), out.limit), ("team.x", 0));
        let req = BuildHistoryRequest { filter: vec!["status==error,ref==x".into()], ..Default::default() };
        assert!(a.check_history_request(&req.encode_to_vec()).is_err());
        let up = UpdateBuildHistoryRequest { r#ref: "x".into(), delete: true, ..Default::default() };
        let out = UpdateBuildHistoryRequest::decode(a.check_history_update(&up.encode_to_vec()).unwrap()).unwrap();
        assert_eq!(out.r#ref, "team.x");
    }
}
