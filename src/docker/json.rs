//! Decoding JSON bodies the way dockerd (Go's `encoding/json`) decodes them, and re-encoding them.
//!
//! A policy that reads a body differently from dockerd is a bypass: `{"privileged": true}` and
//! `{"Privileged": false, "PRIVILEGED": true}` both give a privileged container. So bodies are not
//! checked as sent; they are first *canonicalised* against a [`Kind`] schema of the Go types, with
//! Go's rules, and the canonical form is what policies see and what is forwarded:
//! - struct field names match case-insensitively, with Go's folding (`ſ` is `s`, the Kelvin sign `K`
//!   is `k`); map keys match exactly;
//! - a key given twice: the later one wins, but a struct or map given twice is *merged*;
//! - `null` resets pointers, maps, slices and interfaces, and does nothing to other values;
//! - a value of the wrong JSON type is an error (dockerd refuses the request too).
//!
//! Keys that match no field of a struct are kept as sent and reported in
//! [`Canonical::unknown`]: the daemon may know them (a newer API) even if this schema does not, so a
//! strict policy can refuse them. An unknown key whose value is `null` is dropped instead: whatever
//! Go type a newer daemon decodes it into, `null` either resets it to its zero value or does
//! nothing, which is what leaving the key out does (an earlier non-null occurrence of the same key
//! is itself reported). Clients send such keys: docker-py 7.1's `run(network=X)` sends
//! `NetworkingConfig: {"X": null}`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// How a Go value decodes, as far as merging and `null` are concerned.
#[derive(Debug)]
pub enum Kind {
    /// A non-pointer bool, number or string: `null` is ignored.
    Scalar,
    /// A pointer to a scalar (`*bool`, `*int64`): `null` resets it.
    PtrScalar,
    /// `interface{}` or a type whose insides no policy reads: replaced as a whole.
    Any,
    /// A struct value: merged field by field; `null` is ignored.
    Struct(&'static Schema),
    /// A pointer to a struct: merged into the existing one; `null` resets it.
    PtrStruct(&'static Schema),
    /// `map[string]T`: exact keys, merged across duplicates; each element decoded afresh.
    Map(&'static Kind),
    /// `[]T`: replaced by each occurrence.
    Slice(&'static Kind),
}

/// The fields of a Go struct by their JSON names, and the structs it embeds (whose fields Go
/// promotes to this level).
#[derive(Debug)]
pub struct Schema {
    pub name: &'static str,
    pub fields: &'static [(&'static str, Kind)],
    pub embeds: &'static [&'static Schema],
}

impl Schema {
    /// Own fields first, then embedded structs' fields, shallowest first (Go promotes the
    /// shallowest field of a name). Two levels of embedding is as deep as Docker's types go.
    fn all_fields(&'static self) -> impl Iterator<Item = &'static (&'static str, Kind)> {
        let level1 = self.embeds.iter().flat_map(|e| e.fields.iter());
        let level2 = self.embeds.iter().flat_map(|e| e.embeds.iter()).flat_map(|e| e.fields.iter());
        self.fields.iter().chain(level1).chain(level2)
    }

    /// The field a JSON key decodes into: an exact match first, then a case-folded one (Go's order).
    pub fn field(&'static self, key: &str) -> Option<&'static (&'static str, Kind)> {
        self.all_fields().find(|(name, _)| *name == key).or_else(|| self.all_fields().find(|(name, _)| go_fold_eq(key, name)))
    }

    /// Every field name, embedded ones included.
    pub fn field_names(&'static self) -> impl Iterator<Item = &'static str> {
        self.all_fields().map(|(name, _)| *name)
    }
}

/// A JSON value as sent: every key of an object in order, duplicates included.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Raw>),
    Object(Vec<(String, Raw)>),
}

/// Why a body could not be decoded. dockerd would refuse such a body too (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("cannot decode {found} into {path} ({expected} expected)")]
    Type { path: String, expected: &'static str, found: &'static str },
    #[error("JSON nested too deeply")]
    TooDeep,
}

/// The result of canonicalising a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Canonical {
    pub value: Value,
    /// Paths (`HostConfig.Foo`) of struct keys that match no known field.
    pub unknown: Vec<String>,
}

/// Deeper than any Docker body; guards the recursion against hostile input.
const MAX_DEPTH: usize = 64;

impl Raw {
    /// Parses one JSON document. Trailing content is refused (newer dockerd refuses it too).
    pub fn parse(bytes: &[u8]) -> Result<Raw, JsonError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw = Raw::deserialize(&mut de).map_err(|e| {
            if e.to_string().contains("recursion limit") {
                JsonError::TooDeep
            } else {
                JsonError::Syntax(e.to_string())
            }
        })?;
        de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
        Ok(raw)
    }

    fn type_name(&self) -> &'static str {
        match self {
            Raw::Null => "null",
            Raw::Bool(_) => "a boolean",
            Raw::Number(_) => "a number",
            Raw::String(_) => "a string",
            Raw::Array(_) => "an array",
            Raw::Object(_) => "an object",
        }
    }

    /// Plain conversion, for values whose insides no schema describes (last duplicate wins, as Go
    /// does for `interface{}`).
    fn into_value(self) -> Value {
        match self {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(b),
            Raw::Number(n) => Value::Number(n),
            Raw::String(s) => Value::String(s),
            Raw::Array(a) => Value::Array(a.into_iter().map(Raw::into_value).collect()),
            Raw::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, v.into_value())).collect()),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Raw, E> {
                Ok(Raw::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Raw, E> {
                Ok(Raw::Number(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Raw, E> {
                serde_json::Number::from_f64(n).map(Raw::Number).ok_or_else(|| E::custom("number out of range"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
                Ok(Raw::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Raw, E> {
                Ok(Raw::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = a.next_element()? {
                    v.push(x);
                }
                Ok(Raw::Array(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some((k, x)) = a.next_entry::<String, Raw>()? {
                    v.push((k, x));
                }
                Ok(Raw::Object(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's case folding for matching a JSON key to a field name: ASCII case-insensitive, plus the two
/// non-ASCII letters whose simple folding reaches an ASCII letter. Any other non-ASCII character
/// cannot match an (ASCII) Docker field name.
pub fn go_fold_eq(key: &str, field: &str) -> bool {
    let mut k = key.chars();
    for f in field.chars() {
        let Some(c) = k.next() else { return false };
        let c = match c {
            '\u{017F}' => 's',
            '\u{212A}' => 'k',
            c => c,
        };
        if !c.eq_ignore_ascii_case(&f) {
            return false;
        }
    }
    k.next().is_none()
}

/// Canonicalises `raw` as a value of `kind`: see the module documentation.
pub fn canonicalize(raw: Raw, kind: &Kind) -> Result<Canonical, JsonError> {
    let mut unknown = Vec::new();
    let mut out = Value::Null;
    let mut path = String::new();
    apply(&mut out, raw, kind, &mut path, &mut unknown, 0)?;
    Ok(Canonical { value: out, unknown })
}

/// Decodes `raw` into the slot `dst` as Go would decode a later occurrence over an earlier one.
fn apply(dst: &mut Value, raw: Raw, kind: &Kind, path: &mut String, unknown: &mut Vec<String>, depth: usize) -> Result<(), JsonError> {
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    let type_err = |raw: &Raw, expected: &'static str, path: &str| JsonError::Type {
        path: if path.is_empty() { "the body".to_owned() } else { path.to_owned() },
        expected,
        found: raw.type_name(),
    };
    match (kind, raw) {
        (Kind::Scalar | Kind::Struct(_), Raw::Null) => {}
        (Kind::PtrScalar | Kind::PtrStruct(_) | Kind::Map(_) | Kind::Slice(_) | Kind::Any, Raw::Null) => *dst = Value::Null,
        (Kind::Scalar | Kind::PtrScalar, raw @ (Raw::Array(_) | Raw::Object(_))) => return Err(type_err(&raw, "a scalar", path)),
        (Kind::Scalar | Kind::PtrScalar | Kind::Any, raw) => *dst = raw.into_value(),
        (Kind::Struct(schema) | Kind::PtrStruct(schema), Raw::Object(entries)) => {
            if !dst.is_object() {
                *dst = Value::Object(Map::new());
            }
            let Value::Object(map) = dst else { unreachable!("just made an object") };
            for (key, val) in entries {
                let field = schema.field(&key);
                let base = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                match field {
                    Some((name, fkind)) => {
                        path.push_str(name);
                        let slot = map.entry(*name).or_insert(Value::Null);
                        apply(slot, val, fkind, path, unknown, depth + 1)?;
                        // A scalar `null` over nothing leaves nothing.
                        if slot.is_null() && matches!(fkind, Kind::Scalar | Kind::Struct(_)) {
                            map.remove(*name);
                        }
                    }
                    None if matches!(val, Raw::Null) => {}
                    None => {
                        path.push_str(&key);
                        unknown.push(path.clone());
                        map.insert(key, val.into_value());
                    }
                }
                path.truncate(base);
            }
        }
        (Kind::Struct(_) | Kind::PtrStruct(_), raw) => return Err(type_err(&raw, "an object", path)),
        (Kind::Map(elem), Raw::Object(entries)) => {
            if !dst.is_object() {
                *dst = Value::Object(Map::new());
            }
            let Value::Object(map) = dst else { unreachable!("just made an object") };
            for (key, val) in entries {
                let base = path.len();
                path.push_str(&format!("[{key:?}]"));
                let mut fresh = Value::Null;
                apply(&mut fresh, val, elem, path, unknown, depth + 1)?;
                map.insert(key, fresh);
                path.truncate(base);
            }
        }
        (Kind::Map(_), raw) => return Err(type_err(&raw, "an object", path)),
        (Kind::Slice(elem), Raw::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                let base = path.len();
                path.push_str(&format!("[{i}]"));
                let mut fresh = Value::Null;
                apply(&mut fresh, item, elem, path, unknown, depth + 1)?;
                out.push(fresh);
                path.truncate(base);
            }
            *dst = Value::Array(out);
        }
        (Kind::Slice(_), raw) => return Err(type_err(&raw, "an array", path)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    static RES: Schema = Schema { name: "Res", fields: &[("PidsLimit", Kind::PtrScalar)], embeds: &[] };
    static INNER: Schema = Schema {
        name: "Inner",
        fields: &[("Privileged", Kind::Scalar), ("Binds", Kind::Slice(&Kind::Scalar)), ("Sysctls", Kind::Map(&Kind::Scalar))],
        embeds: &[&RES],
    };
    static OUTER: Schema = Schema {
        name: "Outer",
        fields: &[("Image", Kind::Scalar), ("HostConfig", Kind::PtrStruct(&INNER)), ("Labels", Kind::Map(&Kind::Scalar))],
        embeds: &[],
    };
    static ROOT: Kind = Kind::Struct(&OUTER);

    fn canon(s: &str) -> Value {
        canonicalize(Raw::parse(s.as_bytes()).unwrap(), &ROOT).unwrap().value
    }

    #[test]
    fn field_names_fold_like_go() {
        assert_eq!(canon(r#"{"hostconfig":{"PRIVILEGED":true}}"#), json!({"HostConfig":{"Privileged":true}}));
        assert_eq!(canon(r#"{"Ho\u017ftConfig":{"Privileged":true}}"#), json!({"HostConfig":{"Privileged":true}}));
        assert_eq!(canon(r#"{"HostConfig":{"Sysctls":{"\u212Aey":"v"}}}"#), json!({"HostConfig":{"Sysctls":{"\u{212A}ey":"v"}}}));
        assert_eq!(canon(r#"{"\u0048ostConfig":{"privileged":true}}"#), json!({"HostConfig":{"Privileged":true}}));
        assert!(go_fold_eq("PIDSLIMIT", "PidsLimit"));
        assert!(!go_fold_eq("PidsLimits", "PidsLimit"));
        assert!(!go_fold_eq("Pid\u{0130}Limit", "PidiLimit"));
    }

    #[test]
    fn duplicates_merge_and_last_wins() {
        assert_eq!(
            canon(r#"{"HostConfig":{"Privileged":true},"hostconfig":{"PidsLimit":5}}"#),
            json!({"HostConfig":{"Privileged":true,"PidsLimit":5}})
        );
        assert_eq!(canon(r#"{"HostConfig":{"Privileged":false,"privileged":true}}"#), json!({"HostConfig":{"Privileged":true}}));
        assert_eq!(canon(r#"{"Labels":{"a":"1"},"labels":{"b":"2","a":"3"}}"#), json!({"Labels":{"a":"3","b":"2"}}));
        assert_eq!(canon(r#"{"HostConfig":{"Binds":["/a:/a"],"Binds":["v:/v"]}}"#), json!({"HostConfig":{"Binds":["v:/v"]}}));
    }

    #[test]
    fn unknown_null_keys_are_dropped_not_reported() {
        let c = canonicalize(Raw::parse(br#"{"Net1":null,"HostConfig":{"Frob":null}}"#).unwrap(), &ROOT).unwrap();
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
        assert_eq!(c.value, json!({"HostConfig":{}}));
        // A non-null occurrence is still reported, before or after a null one.
        let c = canonicalize(Raw::parse(br#"{"HostConfig":{"Frob":1,"frob":null}}"#).unwrap(), &ROOT).unwrap();
        assert_eq!(c.unknown, vec!["HostConfig.Frob".to_owned()]);
    }

    #[test]
    fn null_follows_go() {
        // A non-pointer scalar ignores null: privileged stays true.
        assert_eq!(canon(r#"{"HostConfig":{"Privileged":true,"Privileged":null}}"#), json!({"HostConfig":{"Privileged":true}}));
        assert_eq!(canon(r#"{"HostConfig":{"PidsLimit":5,"PidsLimit":null}}"#), json!({"HostConfig":{"PidsLimit":null}}));
        assert_eq!(canon(r#"{"HostConfig":{"Privileged":true},"HostConfig":null}"#), json!({"HostConfig":null}));
        assert_eq!(canon(r#"{"HostConfig":null,"HostConfig":{"Privileged":true}}"#), json!({"HostConfig":{"Privileged":true}}));
    }

    #[test]
    fn unknown_keys_are_kept_and_reported() {
        let c = canonicalize(Raw::parse(br#"{"HostConfig":{"Annotations":{"x":"y"}},"Zzz":1}"#).unwrap(), &ROOT).unwrap();
        assert_eq!(c.unknown, ["HostConfig.Annotations", "Zzz"]);
        assert_eq!(c.value["HostConfig"]["Annotations"], json!({"x":"y"}));
    }

    #[test]
    fn wrong_types_and_bad_documents_are_errors() {
        let e = |s: &str| canonicalize(Raw::parse(s.as_bytes())?, &ROOT).map(|_| ());
        assert!(matches!(e(r#"{"HostConfig":"x"}"#), Err(JsonError::Type { .. })));
        assert!(matches!(e(r#"{"HostConfig":{"Binds":"/:/h"}}"#), Err(JsonError::Type { .. })));
        assert!(matches!(e(r#"{"HostConfig":{"Privileged":[true]}}"#), Err(JsonError::Type { .. })));
        assert!(matches!(e(r#"[]"#), Err(JsonError::Type { .. })));
        assert!(matches!(e(r#"{"Image":"a"} {"x":1}"#), Err(JsonError::Syntax(_))));
        assert!(matches!(e(r#"{"Image":"a""#), Err(JsonError::Syntax(_))));
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(e(&format!(r#"{{"Labels":{{}},"Zzz":{deep}}}"#)).is_err());
    }
}
