//! Layer 2, Docker: the BuildKit protobuf messages ctproxy reads or rewrites.
//!
//! Hand-written `prost` structs for the few messages a namespace must judge, from BuildKit's
//! `api/services/control/control.proto` (moby/buildkit) and fsutil's `types/wire.proto` and
//! `types/stat.proto` (tonistiigi/fsutil), both Apache-2.0 interface definitions. Every field of
//! the modelled messages is declared (nested messages a policy never reads as opaque bytes, which
//! re-encode byte for byte), and [`unknown_fields`] finds fields that are not, so a rewrite never
//! drops what a newer client sent: such a message is refused instead.

use std::collections::HashMap;

use prost::Message;

/// `moby.buildkit.v1.SolveRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct SolveRequest {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    /// `pb.Definition` (raw LLB), opaque.
    #[prost(bytes = "vec", tag = "2")]
    pub definition: Vec<u8>,
    #[prost(string, tag = "3")]
    pub exporter_deprecated: String,
    #[prost(map = "string, string", tag = "4")]
    pub exporter_attrs_deprecated: HashMap<String, String>,
    #[prost(string, tag = "5")]
    pub session: String,
    #[prost(string, tag = "6")]
    pub frontend: String,
    #[prost(map = "string, string", tag = "7")]
    pub frontend_attrs: HashMap<String, String>,
    /// `CacheOptions`, opaque.
    #[prost(bytes = "vec", tag = "8")]
    pub cache: Vec<u8>,
    #[prost(string, repeated, tag = "9")]
    pub entitlements: Vec<String>,
    /// `map<string, pb.Definition>`, values opaque.
    #[prost(map = "string, bytes", tag = "10")]
    pub frontend_inputs: HashMap<String, Vec<u8>>,
    #[prost(bool, tag = "11")]
    pub internal: bool,
    /// `sourcepolicy.Policy`, opaque.
    #[prost(bytes = "vec", tag = "12")]
    pub source_policy: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub exporters: Vec<Exporter>,
    #[prost(bool, tag = "14")]
    pub enable_session_exporter: bool,
    #[prost(string, tag = "15")]
    pub source_policy_session: String,
    #[prost(int64, tag = "16")]
    pub compatibility_version: i64,
    #[prost(bool, tag = "17")]
    pub proxy_network: bool,
}

/// Field numbers of [`SolveRequest`].
pub const SOLVE_FIELDS: std::ops::RangeInclusive<u32> = 1..=17;

/// `moby.buildkit.v1.frontend.SolveRequest`: a solve the client-side frontend (buildx's gateway
/// client) asks for within a build.
#[derive(Clone, PartialEq, Message)]
pub struct GatewaySolveRequest {
    /// `pb.Definition` (raw LLB), opaque.
    #[prost(bytes = "vec", tag = "1")]
    pub definition: Vec<u8>,
    #[prost(string, tag = "2")]
    pub frontend: String,
    #[prost(map = "string, string", tag = "3")]
    pub frontend_opt: HashMap<String, String>,
    #[prost(bool, tag = "5")]
    pub allow_result_return: bool,
    #[prost(bool, tag = "6")]
    pub allow_result_array_ref: bool,
    #[prost(bool, tag = "10")]
    pub r#final: bool,
    #[prost(bytes = "vec", tag = "11")]
    pub exporter_attr: Vec<u8>,
    /// `CacheOptionsEntry`, opaque.
    #[prost(bytes = "vec", repeated, tag = "12")]
    pub cache_imports: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "13")]
    pub frontend_inputs: HashMap<String, Vec<u8>>,
    #[prost(bool, tag = "14")]
    pub evaluate: bool,
    /// `sourcepolicy.Policy`, opaque.
    #[prost(bytes = "vec", repeated, tag = "15")]
    pub source_policies: Vec<Vec<u8>>,
}

/// Field numbers of [`GatewaySolveRequest`].
pub const GATEWAY_SOLVE_FIELDS: [u32; 11] = [1, 2, 3, 5, 6, 10, 11, 12, 13, 14, 15];

/// `moby.buildkit.v1.Exporter`.
#[derive(Clone, PartialEq, Message)]
pub struct Exporter {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(map = "string, string", tag = "2")]
    pub attrs: HashMap<String, String>,
}

/// Field numbers of [`Exporter`].
pub const EXPORTER_FIELDS: std::ops::RangeInclusive<u32> = 1..=2;
/// The field of [`SolveRequest::exporters`].
pub const SOLVE_EXPORTERS_FIELD: u32 = 13;
/// The field of [`Packet::stat`].
pub const PACKET_STAT_FIELD: u32 = 2;

/// `moby.buildkit.v1.StatusRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct StatusRequest {
    #[prost(string, tag = "1")]
    pub r#ref: String,
}

/// `fsutil.types.Packet`: one message of a filesync `DiffCopy` stream.
#[derive(Clone, PartialEq, Message)]
pub struct Packet {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub stat: Option<Stat>,
    #[prost(uint32, tag = "3")]
    pub id: u32,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// Field numbers of [`Packet`].
pub const PACKET_FIELDS: std::ops::RangeInclusive<u32> = 1..=4;

/// `Packet.type` values.
pub mod packet {
    pub const STAT: i32 = 0;
    pub const REQ: i32 = 1;
    pub const DATA: i32 = 2;
    pub const FIN: i32 = 3;
    pub const ERR: i32 = 4;
}

/// `fsutil.types.Stat`. `mode` is a Go `os.FileMode`.
#[derive(Clone, PartialEq, Message)]
pub struct Stat {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    pub mode: u32,
    #[prost(uint32, tag = "3")]
    pub uid: u32,
    #[prost(uint32, tag = "4")]
    pub gid: u32,
    #[prost(int64, tag = "5")]
    pub size: i64,
    #[prost(int64, tag = "6")]
    pub mod_time: i64,
    #[prost(string, tag = "7")]
    pub linkname: String,
    #[prost(int64, tag = "8")]
    pub devmajor: i64,
    #[prost(int64, tag = "9")]
    pub devminor: i64,
    #[prost(map = "string, bytes", tag = "10")]
    pub xattrs: HashMap<String, Vec<u8>>,
}

/// Field numbers of [`Stat`].
pub const STAT_FIELDS: std::ops::RangeInclusive<u32> = 1..=10;

impl Stat {
    /// Go's `os.ModeType`: directory, symlink, pipe, socket, devices, irregular.
    const MODE_TYPE: u32 = 0x8F28_0000;

    /// A regular file: the only kind whose data the receiver requests.
    pub fn is_regular(&self) -> bool {
        self.mode & Self::MODE_TYPE == 0
    }
}

/// `moby.buildkit.v1.BuildHistoryRequest` (`ListenBuildHistory`).
#[derive(Clone, PartialEq, Message)]
pub struct BuildHistoryRequest {
    #[prost(bool, tag = "1")]
    pub active_only: bool,
    #[prost(string, tag = "2")]
    pub r#ref: String,
    #[prost(bool, tag = "3")]
    pub early_exit: bool,
    #[prost(string, repeated, tag = "4")]
    pub filter: Vec<String>,
    #[prost(int32, tag = "5")]
    pub limit: i32,
}

/// Field numbers of [`BuildHistoryRequest`].
pub const BUILD_HISTORY_REQUEST_FIELDS: std::ops::RangeInclusive<u32> = 1..=5;

/// `moby.buildkit.v1.UpdateBuildHistoryRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct UpdateBuildHistoryRequest {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(bool, tag = "2")]
    pub pinned: bool,
    #[prost(bool, tag = "3")]
    pub delete: bool,
    #[prost(bool, tag = "4")]
    pub finalize: bool,
}

/// Field numbers of [`UpdateBuildHistoryRequest`].
pub const UPDATE_BUILD_HISTORY_FIELDS: std::ops::RangeInclusive<u32> = 1..=4;

/// `moby.buildkit.v1.DiskUsageRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct DiskUsageRequest {
    #[prost(string, repeated, tag = "1")]
    pub filter: Vec<String>,
    #[prost(int64, tag = "2")]
    pub age_limit: i64,
}

/// Field numbers of [`DiskUsageRequest`].
pub const DISK_USAGE_REQUEST_FIELDS: std::ops::RangeInclusive<u32> = 1..=2;

/// `moby.buildkit.v1.PruneRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct PruneRequest {
    #[prost(string, repeated, tag = "1")]
    pub filter: Vec<String>,
    #[prost(bool, tag = "2")]
    pub all: bool,
    #[prost(int64, tag = "3")]
    pub keep_duration: i64,
    #[prost(int64, tag = "4")]
    pub reserved_space: i64,
    #[prost(int64, tag = "5")]
    pub max_used_space: i64,
    #[prost(int64, tag = "6")]
    pub min_free_space: i64,
}

/// Field numbers of [`PruneRequest`].
pub const PRUNE_REQUEST_FIELDS: std::ops::RangeInclusive<u32> = 1..=6;

/// The fields of `moby.buildkit.v1.UsageRecord` (a `DiskUsageResponse` entry, a `Prune` answer)
/// that a namespace reads. Decoding skips the others; answers are rewritten with [`rewrite`],
/// which keeps every field it is not told to change.
#[derive(Clone, PartialEq, Message)]
pub struct UsageRecordHead {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "9")]
    pub description: String,
    #[prost(string, tag = "10")]
    pub record_type: String,
}

/// [`UsageRecordHead`] field numbers: ID, deprecated Parent, Description, Parents.
pub mod usage {
    pub const ID: u32 = 1;
    pub const PARENT: u32 = 5;
    pub const DESCRIPTION: u32 = 9;
    pub const PARENTS: u32 = 12;
}

/// The field of `DiskUsageResponse` that holds its records.
pub const DISK_USAGE_RECORDS_FIELD: u32 = 1;

/// The fields of `moby.buildkit.v1.BuildHistoryEvent` and `BuildHistoryRecord` a namespace reads.
pub mod history {
    /// `BuildHistoryEvent.record`.
    pub const EVENT_RECORD: u32 = 2;
    /// `BuildHistoryRecord.Ref`, `.FrontendAttrs`, `.Exporters`, `.ExporterResponse`.
    pub const REF: u32 = 1;
    pub const FRONTEND_ATTRS: u32 = 3;
    pub const EXPORTERS: u32 = 4;
    pub const EXPORTER_RESPONSE: u32 = 9;
    /// `Exporter.Attrs`.
    pub const EXPORTER_ATTRS: u32 = 2;
}

/// The fields of `moby.buildkit.v1.BuildHistoryEvent` a namespace reads (to sort and limit).
#[derive(Clone, PartialEq, Message)]
pub struct HistoryEventHead {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(message, optional, tag = "2")]
    pub record: Option<HistoryRecordHead>,
}

/// [`HistoryEventHead::type`]: `COMPLETE`.
pub const HISTORY_COMPLETE: i32 = 1;

/// The fields of `moby.buildkit.v1.BuildHistoryRecord` a namespace reads.
#[derive(Clone, PartialEq, Message)]
pub struct HistoryRecordHead {
    #[prost(string, tag = "1")]
    pub r#ref: String,
    #[prost(message, optional, tag = "6")]
    pub created_at: Option<Timestamp>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// What [`rewrite`] does with one field.
pub enum Field {
    Keep,
    Drop,
    /// A length-delimited field with these bytes instead.
    Bytes(Vec<u8>),
}

/// `msg` with each top-level field as `f` says (`f` gets the field number and, for a
/// length-delimited field, its bytes); the other fields are copied byte for byte, so nothing
/// that ctproxy does not model is lost.
pub fn rewrite(msg: &[u8], mut f: impl FnMut(u32, Option<&[u8]>) -> Field) -> Result<Vec<u8>, prost::DecodeError> {
    use prost::encoding::{bytes, decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};
    let mut buf = msg;
    let mut out = Vec::with_capacity(msg.len());
    while !buf.is_empty() {
        let start = msg.len() - buf.len();
        let (tag, wire) = decode_key(&mut buf)?;
        let mut inner = Vec::new();
        let value = if wire == WireType::LengthDelimited {
            bytes::merge(wire, &mut inner, &mut buf, DecodeContext::default())?;
            Some(inner.as_slice())
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())?;
            None
        };
        let end = msg.len() - buf.len();
        match f(tag, value) {
            Field::Keep => out.extend_from_slice(&msg[start..end]),
            Field::Drop => {}
            Field::Bytes(b) => {
                encode_key(tag, WireType::LengthDelimited, &mut out);
                encode_varint(b.len() as u64, &mut out);
                out.extend_from_slice(&b);
            }
        }
    }
    Ok(out)
}

/// `containerd.services.content.v1.InfoRequest`; `ReadContentRequest` starts with the same
/// field (then `offset` 2, `size` 3).
#[derive(Clone, PartialEq, Message)]
pub struct InfoRequest {
    #[prost(string, tag = "1")]
    pub digest: String,
}

/// A `map<string, string>` entry.
#[derive(Clone, PartialEq, Message)]
pub struct StringEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `moby.buildkit.v1.CacheOptions` (`--cache-from`, `--cache-to`).
#[derive(Clone, PartialEq, Message)]
pub struct CacheOptions {
    #[prost(string, tag = "1")]
    pub export_ref_deprecated: String,
    #[prost(string, repeated, tag = "2")]
    pub import_refs_deprecated: Vec<String>,
    #[prost(map = "string, string", tag = "3")]
    pub export_attrs_deprecated: HashMap<String, String>,
    #[prost(message, repeated, tag = "4")]
    pub exports: Vec<CacheOptionsEntry>,
    #[prost(message, repeated, tag = "5")]
    pub imports: Vec<CacheOptionsEntry>,
}

/// Field numbers of [`CacheOptions`].
pub const CACHE_OPTIONS_FIELDS: std::ops::RangeInclusive<u32> = 1..=5;

/// `moby.buildkit.v1.CacheOptionsEntry`: one cache import or export (`type=registry,ref=...`).
#[derive(Clone, PartialEq, Message)]
pub struct CacheOptionsEntry {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(map = "string, string", tag = "2")]
    pub attrs: HashMap<String, String>,
}

/// Field numbers of [`CacheOptionsEntry`] (the same shape as [`Exporter`]).
pub const CACHE_ENTRY_FIELDS: std::ops::RangeInclusive<u32> = 1..=2;

/// `moby.filesync.v1.CredentialsRequest` (session `Auth.Credentials`).
#[derive(Clone, PartialEq, Message)]
pub struct CredentialsRequest {
    #[prost(string, tag = "1")]
    pub host: String,
}

/// `moby.filesync.v1.CredentialsResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct CredentialsResponse {
    #[prost(string, tag = "1")]
    pub username: String,
    #[prost(string, tag = "2")]
    pub secret: String,
}

/// `moby.filesync.v1.FetchTokenRequest` (session `Auth.FetchToken`).
#[derive(Clone, PartialEq, Message)]
pub struct FetchTokenRequest {
    #[prost(string, tag = "1")]
    pub client_id: String,
    #[prost(string, tag = "2")]
    pub host: String,
    #[prost(string, tag = "3")]
    pub realm: String,
    #[prost(string, tag = "4")]
    pub service: String,
    #[prost(string, repeated, tag = "5")]
    pub scopes: Vec<String>,
}

/// `moby.filesync.v1.FetchTokenResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct FetchTokenResponse {
    #[prost(string, tag = "1")]
    pub token: String,
    #[prost(int64, tag = "2")]
    pub expires_in: i64,
    #[prost(int64, tag = "3")]
    pub issued_at: i64,
}

/// `moby.filesync.v1.GetTokenAuthorityRequest`, and `VerifyTokenAuthorityRequest` (whose field 2
/// is the payload to sign, field 3 the salt).
#[derive(Clone, PartialEq, Message)]
pub struct TokenAuthorityRequest {
    #[prost(string, tag = "1")]
    pub host: String,
    /// `GetTokenAuthority`: the salt; `VerifyTokenAuthority`: the payload.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// `moby.filesync.v1.GetTokenAuthorityResponse` (a public key) and `VerifyTokenAuthorityResponse`
/// (a signed payload): one bytes field.
#[derive(Clone, PartialEq, Message)]
pub struct TokenAuthorityResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// What [`edit_status`] does with one text field of a `StatusResponse`.
#[derive(Debug, PartialEq, Eq)]
pub enum Edit {
    Keep,
    Replace(Vec<u8>),
    /// Drop the vertex, status, log or warning that holds the field.
    Drop,
}

/// The text fields of `moby.buildkit.v1.StatusResponse`'s entries: (entry field, its text fields).
/// `vertexes` (Vertex: name, error), `statuses` (VertexStatus: ID, name), `logs` (VertexLog: msg),
/// `warnings` (VertexWarning: short, detail, url).
const STATUS_TEXT: [(u32, &[u32]); 4] = [(1, &[3, 7]), (2, &[1, 3]), (3, &[4]), (4, &[3, 4, 5])];

/// Rewrites the text of a `StatusResponse` (build progress) field by field at the wire level:
/// everything else, fields unknown to ctproxy included, is kept byte for byte, so nothing the
/// client reads (digests, timestamps, progress groups) changes but the text `edit` changes.
pub fn edit_status(msg: &[u8], mut edit: impl FnMut(&[u8]) -> Edit) -> Result<Vec<u8>, prost::DecodeError> {
    use prost::encoding::{bytes, decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};
    let mut buf = msg;
    let mut out = Vec::with_capacity(msg.len());
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire) = decode_key(&mut buf)?;
        let texts = STATUS_TEXT.iter().find(|(f, _)| *f == tag).map(|(_, t)| *t);
        match texts {
            Some(texts) if wire == WireType::LengthDelimited => {
                let mut entry = Vec::new();
                bytes::merge(wire, &mut entry, &mut buf, DecodeContext::default())?;
                if let Some(entry) = edit_entry(&entry, texts, &mut edit)? {
                    encode_key(tag, wire, &mut out);
                    encode_varint(entry.len() as u64, &mut out);
                    out.extend_from_slice(&entry);
                }
            }
            _ => {
                skip_field(wire, tag, &mut buf, DecodeContext::default())?;
                out.extend_from_slice(&start[..start.len() - buf.len()]);
            }
        }
    }
    Ok(out)
}

/// One entry of a `StatusResponse`, its `texts` fields edited; `None` when it is dropped.
fn edit_entry(msg: &[u8], texts: &[u32], edit: &mut impl FnMut(&[u8]) -> Edit) -> Result<Option<Vec<u8>>, prost::DecodeError> {
    use prost::encoding::{bytes, decode_key, encode_key, encode_varint, skip_field, DecodeContext, WireType};
    let mut buf = msg;
    let mut out = Vec::with_capacity(msg.len());
    while !buf.is_empty() {
        let start = buf;
        let (tag, wire) = decode_key(&mut buf)?;
        if texts.contains(&tag) && wire == WireType::LengthDelimited {
            let mut text = Vec::new();
            bytes::merge(wire, &mut text, &mut buf, DecodeContext::default())?;
            let text = match edit(&text) {
                Edit::Keep => text,
                Edit::Replace(t) => t,
                Edit::Drop => return Ok(None),
            };
            encode_key(tag, wire, &mut out);
            encode_varint(text.len() as u64, &mut out);
            out.extend_from_slice(&text);
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())?;
            out.extend_from_slice(&start[..start.len() - buf.len()]);
        }
    }
    Ok(Some(out))
}

/// The field numbers of `msg`'s top level that are not in `known`; `Err` when it does not parse.
pub fn unknown_fields(msg: &[u8], known: &impl Known) -> Result<Vec<u32>, prost::DecodeError> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let mut buf = msg;
    let mut unknown = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if !known.knows(tag) {
            unknown.push(tag);
        }
        skip_field(wire, tag, &mut buf, DecodeContext::default())?;
    }
    Ok(unknown)
}

/// The unknown field numbers inside the embedded messages of field `field` of `msg` (each
/// occurrence, as a repeated or optional message field), checked against `known`. Re-encoding
/// drops unknown fields silently, so a nested message must be checked before it is, as the outer
/// one is.
pub fn unknown_nested_fields(msg: &[u8], field: u32, known: &impl Known) -> Result<Vec<u32>, prost::DecodeError> {
    use prost::encoding::{bytes, decode_key, skip_field, DecodeContext, WireType};
    let mut buf = msg;
    let mut unknown = Vec::new();
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf)?;
        if tag == field && wire == WireType::LengthDelimited {
            let mut inner = Vec::new();
            bytes::merge(wire, &mut inner, &mut buf, DecodeContext::default())?;
            unknown.extend(unknown_fields(&inner, known)?);
        } else {
            skip_field(wire, tag, &mut buf, DecodeContext::default())?;
        }
    }
    Ok(unknown)
}

/// A set of field numbers.
pub trait Known {
    fn knows(&self, tag: u32) -> bool;
}

impl Known for std::ops::RangeInclusive<u32> {
    fn knows(&self, tag: u32) -> bool {
        self.contains(&tag)
    }
}

impl<const N: usize> Known for [u32; N] {
    fn knows(&self, tag: u32) -> bool {
        self.contains(&tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_found() {
        let mut msg = StatusRequest { r#ref: "abc".into() }.encode_to_vec();
        // field 99, varint 1
        msg.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(unknown_fields(&msg, &(1..=1)).unwrap(), vec![99]);
    }

    #[test]
    fn unknown_nested_fields_are_found() {
        let e = Exporter { r#type: "moby".into(), attrs: HashMap::new() };
        let mut inner = e.encode_to_vec();
        inner.extend_from_slice(&[0x98, 0x06, 0x01]);
        let mut msg = SolveRequest { r#ref: "r".into(), ..Default::default() }.encode_to_vec();
        prost::encoding::encode_key(SOLVE_EXPORTERS_FIELD, prost::encoding::WireType::LengthDelimited, &mut msg);
        prost::encoding::encode_varint(inner.len() as u64, &mut msg);
        msg.extend_from_slice(&inner);
        assert_eq!(unknown_fields(&msg, &SOLVE_FIELDS).unwrap(), Vec::<u32>::new());
        assert_eq!(unknown_nested_fields(&msg, SOLVE_EXPORTERS_FIELD, &EXPORTER_FIELDS).unwrap(), vec![99]);
        let ok = SolveRequest { exporters: vec![e], ..Default::default() }.encode_to_vec();
        assert!(unknown_nested_fields(&ok, SOLVE_EXPORTERS_FIELD, &EXPORTER_FIELDS).unwrap().is_empty());
        let p = Packet { stat: Some(Stat::default()), ..Default::default() }.encode_to_vec();
        assert!(unknown_nested_fields(&p, PACKET_STAT_FIELD, &STAT_FIELDS).unwrap().is_empty());
    }

    #[test]
    fn rewrite_keeps_what_it_is_not_told_to_change() {
        let mut msg = StatusRequest { r#ref: "abc".into() }.encode_to_vec();
        msg.extend_from_slice(&[0x98, 0x06, 0x01]);
        let out = rewrite(&msg, |tag, v| match (tag, v) {
            (1, Some(b)) => Field::Bytes([b, b"-x"].concat()),
            _ => Field::Keep,
        })
        .unwrap();
        assert_eq!(StatusRequest::decode(out.as_slice()).unwrap().r#ref, "abc-x");
        assert_eq!(unknown_fields(&out, &(1..=1)).unwrap(), vec![99]);
        let dropped = rewrite(&msg, |tag, _| if tag == 99 { Field::Drop } else { Field::Keep }).unwrap();
        assert_eq!(dropped, StatusRequest { r#ref: "abc".into() }.encode_to_vec());
    }

    #[test]
    fn regular_files() {
        let f = Stat { mode: 0o644, ..Default::default() };
        assert!(f.is_regular());
        let d = Stat { mode: 0x8000_01ed, ..Default::default() };
        assert!(!d.is_regular());
    }

    #[test]
    fn status_text_is_edited_and_the_rest_kept() {
        use prost::encoding::{encode_key, encode_varint, WireType};
        fn field(tag: u32, v: &[u8], out: &mut Vec<u8>) {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(v.len() as u64, out);
            out.extend_from_slice(v);
        }
        let mut vertex = Vec::new();
        field(1, b"sha256:d", &mut vertex);
        field(3, b"[1/2] FROM secret/app:1", &mut vertex);
        let mut status = Vec::new();
        field(1, b"naming to hidden:x", &mut status);
        let mut msg = Vec::new();
        field(1, &vertex, &mut msg);
        field(2, &status, &mut msg);
        // an unknown top-level field stays
        msg.extend_from_slice(&[0x98, 0x06, 0x01]);
        let out = edit_status(&msg, |t| {
            let t = String::from_utf8_lossy(t);
            if t.contains("hidden") {
                Edit::Drop
            } else if t.contains("secret/") {
                Edit::Replace(t.replace("secret/", "").into_bytes())
            } else {
                Edit::Keep
            }
        })
        .unwrap();
        let mut vertex2 = Vec::new();
        field(1, b"sha256:d", &mut vertex2);
        field(3, b"[1/2] FROM app:1", &mut vertex2);
        let mut want = Vec::new();
        field(1, &vertex2, &mut want);
        want.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(out, want);
    }
}
