//! Property-based fuzzing of the parsers every request goes through before a policy sees it: JSON
//! bodies (`Raw::parse` + `canonicalize` against the real schemas), routes (`Route::classify`) and
//! query strings (`Query::parse`). Runs in CI with a bounded number of cases (`PROPTEST_CASES`
//! overrides the default for a longer local run).
//!
//! Besides "never panics" on arbitrary bytes and on structured, schema-shaped documents (real field
//! names in random case, `ſ`/`K` spellings, duplicates, nulls, nesting, `\u` escapes), it checks:
//! - canonicalisation is idempotent: the forwarded body, decoded again, is what policies judged;
//! - `Privileged: true`, however spelled or hidden behind duplicates and nulls, is visible at
//!   `HostConfig.Privileged` and refused by the conservative policy;
//! - another container's mounts and namespaces (`VolumesFrom`, `container:<id>` modes) are refused;
//! - forced `inject` limits hold on every canonical create body;
//! - `Query::parse(q.encode()) == q`, and a route keeps its classification when re-encoded.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::LazyLock;

use ctproxy::docker::json::{canonicalize, go_fold_eq, Kind, Raw, Schema};
use ctproxy::docker::schema::{self, normalize_create};
use ctproxy::docker::{Endpoint, Query, Route};
use ctproxy::plugin::policy::{Conservative, ConservativeConfig, Inject, InjectConfig, Policy};
use ctproxy::plugin::{Identity, JsonBody, RequestCtx};
use hyper::{HeaderMap, Method};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::Value;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2500);
    ProptestConfig { cases, max_shrink_iters: 2000, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Schemas and field names
// ---------------------------------------------------------------------------------------------

/// Every body schema an endpoint decodes, and the endpoint that decodes it.
const ROOTS: &[(&Schema, Endpoint)] = &[
    (&schema::CONTAINER_CREATE, Endpoint::ContainerCreate),
    (&schema::CONTAINER_UPDATE, Endpoint::ContainerUpdate),
    (&schema::EXEC_CREATE, Endpoint::ContainerExec),
    (&schema::EXEC_START, Endpoint::ExecStart),
    (&schema::CONFIG, Endpoint::Commit),
    (&schema::NETWORK_CREATE, Endpoint::NetworkCreate),
    (&schema::NETWORK_CONNECT, Endpoint::NetworkConnect),
    (&schema::NETWORK_DISCONNECT, Endpoint::NetworkDisconnect),
    (&schema::VOLUME_CREATE, Endpoint::VolumeCreate),
    (&schema::AUTH_CONFIG, Endpoint::Auth),
];

fn collect_kind(kind: &'static Kind, seen: &mut BTreeSet<&'static str>, out: &mut BTreeSet<&'static str>) {
    match kind {
        Kind::Struct(s) | Kind::PtrStruct(s) => collect_schema(s, seen, out),
        Kind::Map(k) | Kind::Slice(k) => collect_kind(k, seen, out),
        Kind::Scalar | Kind::PtrScalar | Kind::Any => {}
    }
}

fn collect_schema(s: &'static Schema, seen: &mut BTreeSet<&'static str>, out: &mut BTreeSet<&'static str>) {
    if !seen.insert(s.name) {
        return;
    }
    for (name, kind) in s.fields {
        out.insert(name);
        collect_kind(kind, seen, out);
    }
    for e in s.embeds {
        collect_schema(e, seen, out);
    }
}

/// Every JSON field name of every schema.
static FIELD_NAMES: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let (mut seen, mut out) = (BTreeSet::new(), BTreeSet::new());
    for (s, _) in ROOTS {
        collect_schema(s, &mut seen, &mut out);
    }
    out.into_iter().collect()
});

/// The fields of a schema, embedded ones included, with their kinds.
fn fields_of(s: &'static Schema) -> Vec<&'static (&'static str, Kind)> {
    let names: BTreeSet<&str> = s.field_names().collect();
    names.into_iter().filter_map(|n| s.field(n)).collect()
}

// ---------------------------------------------------------------------------------------------
// JSON documents with duplicate keys, and a writer with random \u escapes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    /// The number as written in the document.
    Num(String),
    Str(String),
    Arr(Vec<Node>),
    /// Keys in order, duplicates allowed.
    Obj(Vec<(String, Node)>),
}

/// Decides per character whether to write it as a `\u` escape (a tiny xorshift on the seed).
struct Escaper(u64);

impl Escaper {
    fn escape_this(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % 7 == 0
    }
}

fn write_str(out: &mut String, s: &str, esc: &mut Escaper) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || esc.escape_this() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04X}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_node(out: &mut String, n: &Node, esc: &mut Escaper) {
    match n {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Num(s) => out.push_str(s),
        Node::Str(s) => write_str(out, s, esc),
        Node::Arr(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_node(out, x, esc);
            }
            out.push(']');
        }
        Node::Obj(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(if esc.0 % 3 == 0 { ", " } else { "," });
                }
                write_str(out, k, esc);
                out.push(':');
                write_node(out, v, esc);
            }
            out.push('}');
        }
    }
}

fn to_json(n: &Node, seed: u64) -> String {
    let mut out = String::new();
    write_node(&mut out, n, &mut Escaper(seed));
    out
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// `name` as a client might spell it so that Go still matches it: case changes, `ſ` for `s`, the
/// Kelvin sign for `k`.
fn spell(name: &str, bits: u64, mode: u8) -> String {
    match mode {
        0 => name.to_owned(),
        1 => name.to_ascii_lowercase(),
        2 => name.to_ascii_uppercase(),
        _ => name
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let flip = bits >> (i % 64) & 1 == 1;
                let exotic = bits.rotate_left(i as u32 * 7) & 3 == 0;
                match c {
                    's' | 'S' if exotic => '\u{017F}',
                    'k' | 'K' if exotic => '\u{212A}',
                    c if flip && c.is_ascii_lowercase() => c.to_ascii_uppercase(),
                    c if flip => c.to_ascii_lowercase(),
                    c => c,
                }
            })
            .collect(),
    }
}

fn spelled(name: &'static str) -> impl Strategy<Value = String> {
    (any::<u64>(), 0u8..6).prop_map(move |(bits, mode)| spell(name, bits, mode))
}

/// Keys: real field names in any spelling, near misses, or anything.
fn any_key() -> BoxedStrategy<String> {
    prop_oneof![
        5 => select(FIELD_NAMES.as_slice()).prop_flat_map(spelled),
        1 => (select(FIELD_NAMES.as_slice()), prop_oneof![Just("x"), Just("\u{0130}"), Just(" "), Just("\u{0}")])
            .prop_map(|(n, suffix)| format!("{n}{suffix}")),
        2 => "(?s).{0,10}",
    ]
    .boxed()
}

fn number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-3i64..3).prop_map(|n| n.to_string()),
        // Exactly representable fractions, so that re-serialising cannot round them.
        (any::<i16>(), 0i32..12).prop_map(|(n, k)| format!("{:?}", f64::from(n) / 2f64.powi(k))),
        (1u32..1000, -6i32..6).prop_map(|(m, e)| format!("{m}e{e}")),
        select(&["-0", "0.0", "1E2", "1e+2", "-1.5e-3", "123456789012345678901234567890"][..]).prop_map(str::to_owned),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<Node> {
    prop_oneof![any::<bool>().prop_map(Node::Bool), number().prop_map(Node::Num), "(?s).{0,12}".prop_map(Node::Str),].boxed()
}

/// Any JSON value, keys from the field names or random.
fn any_json() -> BoxedStrategy<Node> {
    let leaf = prop_oneof![1 => Just(Node::Null), 4 => scalar()];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Node::Arr),
            proptest::collection::vec((any_key(), inner), 0..5).prop_map(Node::Obj),
        ]
    })
    .boxed()
}

/// A value that decodes into `kind` (or `null`, which every kind accepts), nested at most `depth`.
fn value_for(kind: &'static Kind, depth: u32) -> BoxedStrategy<Node> {
    let null = Just(Node::Null);
    match kind {
        Kind::Scalar | Kind::PtrScalar => prop_oneof![1 => null, 8 => scalar()].boxed(),
        Kind::Any => any_json(),
        _ if depth == 0 => null.boxed(),
        Kind::Struct(s) | Kind::PtrStruct(s) => prop_oneof![1 => null, 6 => struct_of(s, depth)].boxed(),
        Kind::Map(elem) => prop_oneof![
            1 => null,
            4 => proptest::collection::vec(("(?s).{0,8}", value_for(elem, depth - 1)), 0..4).prop_map(Node::Obj),
        ]
        .boxed(),
        Kind::Slice(elem) => {
            prop_oneof![1 => null, 4 => proptest::collection::vec(value_for(elem, depth - 1), 0..4).prop_map(Node::Arr)].boxed()
        }
    }
}

/// A key that matches no field of `s` (a near miss of a real name, or anything).
fn unknown_key(s: &'static Schema) -> BoxedStrategy<String> {
    prop_oneof![
        (select(FIELD_NAMES.as_slice()), select(&["x", "\u{0130}", " ", "\u{0}", "_"][..])).prop_map(|(n, suffix)| format!("{n}{suffix}")),
        "(?s).{0,10}",
    ]
    .prop_filter("the key must match no field", move |k| s.field(k).is_none())
    .boxed()
}

/// One entry of a struct: a known field in some spelling with a value of its kind, or an unknown key.
fn entry_of(s: &'static Schema, depth: u32) -> BoxedStrategy<(String, Node)> {
    let fields = fields_of(s);
    prop_oneof![
        10 => select(fields).prop_flat_map(move |f| (spelled(f.0), value_for(&f.1, depth - 1))),
        1 => (unknown_key(s), any_json()),
    ]
    .boxed()
}

/// An object for a struct schema: known fields in random spellings (duplicates likely), a few unknown keys.
fn struct_of(s: &'static Schema, depth: u32) -> BoxedStrategy<Node> {
    // `struct{}` (the values of ExposedPorts and Volumes, ClusterOptions) has no field to pick.
    if depth == 0 || s.field_names().next().is_none() {
        return Just(Node::Obj(Vec::new())).boxed();
    }
    proptest::collection::vec(entry_of(s, depth), 0..8).prop_map(Node::Obj).boxed()
}

/// A root schema, a document for it, and the seed of its `\u` escapes.
fn document() -> impl Strategy<Value = (usize, Node, u64)> {
    (0..ROOTS.len()).prop_flat_map(|i| (Just(i), struct_of(ROOTS[i].0, 4), any::<u64>()))
}

/// Strings made of `alphabet` and of escapes good and bad (`%41`, `%+1`, `%4`, `%zz`, `%C3%A9`, `%FF`).
fn escape_soup(alphabet: &'static [&'static str]) -> impl Strategy<Value = String> {
    let escapes: &'static [&'static str] = &["%41", "%+1", "%-1", "%4", "%zz", "%C3%A9", "%FF", "%2f", "%25", "%20", "%3B", "%26"];
    proptest::collection::vec(prop_oneof![2 => select(alphabet), 1 => select(escapes)], 0..12).prop_map(|v| v.concat())
}

/// Mutations of a valid document's text: byte flips, insertions, deletions, truncation.
fn mutate(text: &str, ops: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    for &(pos, op, byte) in ops {
        let at = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        match op % 4 {
            0 if at < b.len() => b[at] = byte,
            1 => b.insert(at, byte),
            2 if at < b.len() => {
                b.remove(at);
            }
            3 => b.truncate(at),
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------------------------------------
// Checks shared by the properties
// ---------------------------------------------------------------------------------------------

fn route_for(endpoint: Endpoint) -> Route {
    let path = match endpoint {
        Endpoint::ContainerCreate => "/v1.41/containers/create",
        Endpoint::ContainerUpdate => "/v1.41/containers/c/update",
        Endpoint::ContainerExec => "/v1.41/containers/c/exec",
        Endpoint::ExecStart => "/v1.41/exec/e/start",
        Endpoint::Commit => "/v1.41/commit",
        Endpoint::NetworkCreate => "/v1.41/networks/create",
        Endpoint::NetworkConnect => "/v1.41/networks/n/connect",
        Endpoint::NetworkDisconnect => "/v1.41/networks/n/disconnect",
        Endpoint::VolumeCreate => "/v1.41/volumes/create",
        Endpoint::Auth => "/v1.41/auth",
        other => panic!("no route for {other:?}"),
    };
    let route = Route::classify(&Method::POST, path).expect("route");
    assert_eq!(route.endpoint, Some(endpoint));
    route
}

static STRICT: LazyLock<Conservative> = LazyLock::new(|| Conservative::new("strict", ConservativeConfig::default()).expect("conservative"));

const MEMORY_CAP: i64 = 1 << 30;
const PIDS_CAP: i64 = 100;
const NANO_CPUS_CAP: i64 = 1_500_000_000;

static CI: LazyLock<Inject> = LazyLock::new(|| {
    let config: InjectConfig = toml::from_str(
        r#"
        defaults = { env = { LANG = "C" }, dns = ["9.9.9.9"] }
        force = { env = { CI = "true" }, labels = { ci = "1" }, memory = "1g", cpus = 1.5, pids_limit = 100, user = "1000", ulimits = [{ name = "nofile", soft = 1024, hard = 2048 }], mounts = [{ source = "/srv/cache", target = "/cache" }] }
        "#,
    )
    .expect("inject config");
    Inject::new("ci", config)
});

/// Runs a policy on a body as the proxy would. Returns the refusal, if any.
fn run_policy(policy: &dyn Policy, endpoint: Endpoint, body: &mut JsonBody) -> Option<ctproxy::plugin::Refusal> {
    let identity = Identity::anonymous();
    let route = route_for(endpoint);
    let (mut query, mut headers) = (Query::default(), HeaderMap::new());
    let mut ctx = RequestCtx {
        identity: &identity,
        listener: "fuzz",
        method: &Method::POST,
        route: &route,
        query: &mut query,
        headers: &mut headers,
        namespaced: false,
        own_socket: None,
        granted_binds: &[],
    };
    if let Err(r) = policy.check(&mut ctx) {
        return Some(r);
    }
    if policy.reads_body(endpoint) {
        return policy.check_body(&mut ctx, body).err();
    }
    None
}

fn canon(bytes: &[u8], s: &'static Schema) -> Option<ctproxy::docker::json::Canonical> {
    canonicalize(Raw::parse(bytes).ok()?, &Kind::Struct(s)).ok()
}

/// Decodes `bytes` against every schema and runs both policies on whatever decodes: nothing may panic.
fn exercise_body(bytes: &[u8]) {
    let Ok(raw) = Raw::parse(bytes) else { return };
    for &(s, endpoint) in ROOTS {
        let Ok(c) = canonicalize(raw.clone(), &Kind::Struct(s)) else { continue };
        let mut value = c.value;
        if endpoint == Endpoint::ContainerCreate {
            normalize_create(&mut value);
        }
        let body = JsonBody { value, unknown: c.unknown };
        let _ = run_policy(&*STRICT, endpoint, &mut body.clone());
        let _ = run_policy(&*CI, endpoint, &mut body.clone());
    }
}

/// The body the proxy forwards for `endpoint` (canonical, normalised, re-serialised) decodes to itself.
fn assert_idempotent(text: &str, index: usize) -> Result<(), TestCaseError> {
    let (s, endpoint) = ROOTS[index];
    let raw = Raw::parse(text.as_bytes()).map_err(|e| TestCaseError::fail(format!("generated JSON does not parse: {e}\n{text}")))?;
    let c1 =
        canonicalize(raw, &Kind::Struct(s)).map_err(|e| TestCaseError::fail(format!("a well-typed document was refused: {e}\n{text}")))?;
    let once = serde_json::to_vec(&c1.value).unwrap();
    let c2 = canon(&once, s).ok_or_else(|| TestCaseError::fail(format!("canonical form does not decode: {}", c1.value)))?;
    prop_assert_eq!(&c2.value, &c1.value, "canonicalisation is not idempotent for {}", text);
    let before: BTreeSet<&String> = c1.unknown.iter().collect();
    prop_assert!(c2.unknown.iter().all(|u| before.contains(u)), "new unknown keys {:?} ⊄ {:?}", c2.unknown, c1.unknown);

    if endpoint == Endpoint::ContainerCreate {
        let mut n1 = c1.value.clone();
        normalize_create(&mut n1);
        let mut n2 = canon(&serde_json::to_vec(&n1).unwrap(), s).expect("normalised body decodes").value;
        normalize_create(&mut n2);
        prop_assert_eq!(&n2, &n1, "normalize_create is not idempotent for {}", text);
        // Nothing of the host configuration is left at the top level.
        if let Value::Object(top) = &n1 {
            for name in schema::HOST_CONFIG.field_names() {
                prop_assert!(!top.contains_key(name), "top-level {} left after normalisation", name);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        exercise_body(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Query::parse(&text);
        for m in [Method::GET, Method::POST, Method::DELETE, Method::HEAD, Method::PUT] {
            let _ = Route::classify(&m, &text);
            let _ = Route::classify(&m, &format!("/{text}"));
        }
    }

    #[test]
    fn schema_shaped_documents_canonicalise_idempotently((index, doc, seed) in document()) {
        let text = to_json(&doc, seed);
        assert_idempotent(&text, index)?;
        exercise_body(text.as_bytes());
    }

    #[test]
    fn mutated_documents_never_panic(
        (_, doc, seed) in document(),
        ops in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = mutate(&to_json(&doc, seed), &ops);
        exercise_body(&bytes);
    }

    #[test]
    fn free_form_json_never_panics(doc in any_json(), seed in any::<u64>()) {
        exercise_body(to_json(&doc, seed).as_bytes());
    }

    /// `{"HostConfig": {"Privileged": true}}` however it is spelled, wherever duplicates and nulls
    /// put it, is seen by policies at `HostConfig.Privileged` and refused by `conservative`.
    #[test]
    fn privileged_in_any_spelling_is_seen_and_refused(
        before in proptest::collection::vec(entry_of(&schema::CONTAINER_CREATE, 3), 0..5),
        inner_before in proptest::collection::vec(entry_of(&schema::HOST_CONFIG, 2), 0..5),
        inner_after in proptest::collection::vec(entry_of(&schema::HOST_CONFIG, 2), 0..5),
        after in proptest::collection::vec(entry_of(&schema::CONTAINER_CREATE, 3), 0..5),
        hc_key in spelled("HostConfig"),
        priv_key in spelled("Privileged"),
        null_key in spelled("Privileged"),
        trailing_null in any::<bool>(),
        top_level in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let folds = |k: &str, name: &str| go_fold_eq(k, name);
        let mut inner = inner_before;
        inner.push((priv_key.clone(), Node::Bool(true)));
        if trailing_null {
            // A non-pointer bool ignores a later null: still privileged.
            inner.push((null_key, Node::Null));
        }
        inner.extend(inner_after.into_iter().filter(|(k, _)| !folds(k, "Privileged")));
        let mut top = before;
        if top_level {
            // No HostConfig object at all: the top-level (deprecated) fields are the host config.
            // (Keys unknown to HostConfig may be Config fields at the top level: leave them out.)
            top.retain(|(k, _)| !folds(k, "HostConfig"));
            top.extend(inner.into_iter().filter(|(k, _)| schema::HOST_CONFIG.field(k).is_some()));
            top.extend(after.into_iter().filter(|(k, _)| !folds(k, "HostConfig") && !folds(k, "Privileged")));
        } else {
            top.push((hc_key, Node::Obj(inner)));
            top.extend(after.into_iter().filter(|(k, _)| !folds(k, "HostConfig")));
        }
        let text = to_json(&Node::Obj(top), seed);
        let c = canon(text.as_bytes(), &schema::CONTAINER_CREATE);
        prop_assert!(c.is_some(), "not decoded: {}", text);
        let c = c.unwrap();
        let mut value = c.value;
        normalize_create(&mut value);
        prop_assert_eq!(&value["HostConfig"]["Privileged"], &Value::Bool(true), "{} → {}", text, value);
        let refusal = run_policy(&*STRICT, Endpoint::ContainerCreate, &mut JsonBody { value, unknown: c.unknown });
        prop_assert!(refusal.is_some_and(|r| r.status == 403), "conservative let {} through", text);

        // The same for a privileged exec.
        let exec = to_json(&Node::Obj(vec![("Cmd".into(), Node::Arr(vec![])), (priv_key, Node::Bool(true))]), seed);
        let c = canon(exec.as_bytes(), &schema::EXEC_CREATE).expect("exec body");
        prop_assert_eq!(&c.value["Privileged"], &Value::Bool(true));
        let refusal = run_policy(&*STRICT, Endpoint::ContainerExec, &mut JsonBody { value: c.value, unknown: c.unknown });
        prop_assert!(refusal.is_some(), "conservative let a privileged exec through: {}", exec);
    }

    /// Options that reach outside the container through *another* container (its mounts, its
    /// namespaces) are refused however they are spelled, inside `HostConfig` or at the top level.
    #[test]
    fn other_containers_cannot_be_borrowed(
        field in select(&["VolumesFrom", "NetworkMode", "PidMode", "IpcMode"][..]),
        bits in any::<u64>(),
        mode in 0u8..6,
        top_level in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let key = spell(field, bits, mode);
        let value = if field == "VolumesFrom" {
            Node::Arr(vec![Node::Str("other:ro".into())])
        } else {
            Node::Str("container:other".into())
        };
        let mut top = vec![("Image".to_owned(), Node::Str("busybox".into()))];
        if top_level {
            top.push((key, value));
        } else {
            top.push(("HostConfig".to_owned(), Node::Obj(vec![(key, value)])));
        }
        let text = to_json(&Node::Obj(top), seed);
        let c = canon(text.as_bytes(), &schema::CONTAINER_CREATE).expect("create body");
        let mut value = c.value;
        normalize_create(&mut value);
        let refusal = run_policy(&*STRICT, Endpoint::ContainerCreate, &mut JsonBody { value, unknown: c.unknown });
        prop_assert!(refusal.is_some_and(|r| r.status == 403), "conservative let {} through", text);
    }

    /// After `inject` with forced limits, every create body stays within them, and the rewritten
    /// body (what is forwarded) decodes to itself.
    #[test]
    fn forced_inject_limits_hold(doc in struct_of(&schema::CONTAINER_CREATE, 4), seed in any::<u64>()) {
        let text = to_json(&doc, seed);
        let c = canon(text.as_bytes(), &schema::CONTAINER_CREATE).expect("well-typed create body");
        let mut value = c.value;
        normalize_create(&mut value);
        let mut body = JsonBody { value, unknown: c.unknown };
        prop_assert!(run_policy(&*CI, Endpoint::ContainerCreate, &mut body).is_none());
        let hc = &body.value["HostConfig"];
        let within = |field: &str, cap: i64| hc[field].as_i64().is_some_and(|n| n > 0 && n <= cap);
        prop_assert!(within("Memory", MEMORY_CAP), "Memory {} from {}", hc["Memory"], text);
        prop_assert!(within("MemorySwap", MEMORY_CAP), "MemorySwap {} from {}", hc["MemorySwap"], text);
        prop_assert!(within("PidsLimit", PIDS_CAP), "PidsLimit {} from {}", hc["PidsLimit"], text);
        prop_assert!(within("NanoCpus", NANO_CPUS_CAP), "NanoCpus {} from {}", hc["NanoCpus"], text);
        prop_assert!(hc.get("CpuQuota").is_none() && hc.get("CpuPeriod").is_none());
        prop_assert_eq!(&body.value["User"], &Value::from("1000"));
        let env: Vec<&str> = body.value["Env"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        prop_assert_eq!(env.iter().filter(|e| e.starts_with("CI=")).collect::<Vec<_>>(), vec![&"CI=true"]);
        // What is forwarded decodes to exactly what the policy produced.
        let again = canon(&serde_json::to_vec(&body.value).unwrap(), &schema::CONTAINER_CREATE).expect("forwarded body decodes");
        let mut again = again.value;
        normalize_create(&mut again);
        prop_assert_eq!(&again, &body.value);
    }

    #[test]
    fn query_parse_of_encode_round_trips(raw in "(?s)[a-zA-Z0-9=&%+;._~ \\-\u{e9}\u{1F600}]{0,40}") {
        if let Ok(q) = Query::parse(&raw) {
            let encoded = q.encode();
            prop_assert!(!encoded.contains(';'));
            prop_assert_eq!(Query::parse(&encoded), Ok(q.clone()), "{:?} → {:?}", raw, encoded);
            // The first value is what a Go handler reads, before and after.
            let again = Query::parse(&encoded).unwrap();
            for (k, _) in q.pairs() {
                prop_assert_eq!(again.get(k), q.get(k));
            }
        }
    }

    /// Query::parse accepts exactly what Go's `url.ParseQuery` accepts (minus invalid UTF-8, which
    /// no Docker parameter needs), with the same pairs.
    #[test]
    fn query_parse_follows_go(raw in escape_soup(&["a", "=", "&", ";", "+", "%", "1", "A", "f", "g", "-", "é"])) {
        prop_assert_eq!(Query::parse(&raw).ok().map(|q| q.pairs().to_vec()), go_parse_query(&raw), "{:?}", raw);
    }

    /// A path with a bad `%` escape is refused, as Go's HTTP server refuses it.
    #[test]
    fn path_escapes_follow_go(raw in escape_soup(&["a", "+", "%", "1", "A", "f", "g", "-", " ", "é"]).prop_map(|s| format!("/containers/x{s}/json"))) {
        let go_ok = go_unescape(&raw, false).is_some();
        let ours = Route::classify(&Method::GET, &raw);
        prop_assert_eq!(!matches!(ours, Err(ctproxy::docker::endpoint::PathError::Escape)), go_ok, "{:?}: {:?}", raw, ours);
    }

    #[test]
    fn query_built_from_any_pairs_round_trips(pairs in proptest::collection::vec(("(?s).{0,8}", "(?s).{0,12}"), 0..6)) {
        let mut q = Query::default();
        for (k, v) in &pairs {
            q.set(k, v);
        }
        let encoded = q.encode();
        prop_assert_eq!(Query::parse(&encoded), Ok(q.clone()), "{:?}", encoded);
        for (k, v) in q.pairs() {
            prop_assert_eq!(q.get(k), Some(v.as_str()));
        }
    }

    /// Paths built from the real route table, with versions, parameters that need escaping, dot
    /// segments and double slashes. A path that classifies keeps its classification when re-encoded
    /// the way the proxy forwards it.
    #[test]
    fn routes_classify_stably(
        (method, pattern) in select(ctproxy::docker::endpoint::ROUTES).prop_map(|(m, p, _)| (m.clone(), p)),
        version in prop_oneof![Just(String::new()), (0u32..3, 0u32..60).prop_map(|(a, b)| format!("/v{a}.{b}")), Just("/v1.041".to_owned()), Just("/v1".to_owned())],
        params in proptest::collection::vec("(?s)[a-z0-9/.%:@ ?#\u{e9}-]{0,12}", 4),
        noise in prop_oneof![4 => Just(""), 1 => Just("/"), 1 => Just("//"), 1 => Just("/./"), 1 => Just("/../")],
        escape in any::<bool>(),
    ) {
        let mut p = params.into_iter();
        let mut path = version;
        for seg in pattern.trim_start_matches('/').split('/') {
            path.push('/');
            if seg.starts_with('{') {
                let v = p.next().unwrap_or_default();
                if escape {
                    for b in v.bytes() {
                        let _ = write!(path, "%{b:02X}");
                    }
                } else {
                    path.push_str(&v);
                }
            } else {
                path.push_str(seg);
            }
        }
        path.push_str(noise);
        let Ok(route) = Route::classify(&method, &path) else { return Ok(()) };
        let again = Route::classify(&method, &forwarded_path(&route));
        prop_assert_eq!(again.as_ref(), Ok(&route), "{} re-encoded as {}", path, forwarded_path(&route));
    }
}

/// Go's `url.unescape` (query mode turns `+` into a space), plus the UTF-8 check ctproxy adds.
fn go_unescape(s: &str, query: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (h, l) = (*b.get(i + 1)?, *b.get(i + 2)?);
                if !h.is_ascii_hexdigit() || !l.is_ascii_hexdigit() {
                    return None;
                }
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(h) << 4 | hex(l));
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Go's `url.ParseQuery`: `&`-separated, a `;` is an error, any bad escape fails the whole query.
fn go_parse_query(raw: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for part in raw.split('&') {
        if part.contains(';') {
            return None;
        }
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((go_unescape(k, true)?, go_unescape(v, true)?));
    }
    Some(pairs)
}

/// The request path the proxy forwards for a classified route (mirrors `proxy::rebuild_uri`).
fn forwarded_path(route: &Route) -> String {
    let mut pq = String::new();
    if let Some(v) = route.version {
        let _ = write!(pq, "/v{v}");
    }
    for b in route.path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~:@!$&'()*+,;=".contains(&b) {
            pq.push(b as char);
        } else {
            let _ = write!(pq, "%{b:02X}");
        }
    }
    pq
}

/// Nesting far beyond any real body is an error, never a stack overflow.
#[test]
fn deep_nesting_is_an_error() {
    for depth in [63, 64, 65, 100, 127, 128, 129, 1000, 100_000] {
        for (open, close) in [("[", "]"), ("{\"Labels\":", "}"), ("{\"HostConfig\":", "}"), ("{\"x\":", "}")] {
            let text = format!("{}1{}", open.repeat(depth), close.repeat(depth));
            exercise_body(text.as_bytes());
            let text = format!("{{\"Zzz\":{}null{}}}", open.repeat(depth), close.repeat(depth));
            exercise_body(text.as_bytes());
        }
    }
}

/// The generators produce what they claim: known keys in exotic spellings do decode into fields.
#[test]
fn spellings_match_their_field() {
    for name in FIELD_NAMES.iter() {
        for mode in 0..6 {
            for bits in [0, u64::MAX, 0x5555_5555_5555_5555, 0xdead_beef_cafe_f00d] {
                let k = spell(name, bits, mode);
                assert!(go_fold_eq(&k, name), "{k:?} does not fold to {name}");
            }
        }
    }
    let c = canon("{\"Ho\u{017F}tConfig\":{\"PRIVILEGED\":true},\"\u{212A}ernelMemory\":1}".as_bytes(), &schema::CONTAINER_CREATE).unwrap();
    assert_eq!(c.value["HostConfig"]["Privileged"], Value::Bool(true));
    assert_eq!(c.value["KernelMemory"], Value::from(1));
}
