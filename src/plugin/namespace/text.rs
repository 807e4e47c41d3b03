//! De-mangling of everything the daemon says back: JSON values (keys and strings) and free text
//! (error messages, build output, progress `status` lines).
//!
//! The client must only ever see the names it typed: `ctp.alice.db` becomes `db`,
//! `127.0.0.1:5001/alice/docker.io/library/app:1` becomes `app:1`. The namespace label itself is
//! removed from label maps.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::names::{NsName, MARKER, NS_LABEL};

/// Rewrites one namespace's mangled names back to the client's.
/// Owns what it needs, so a stream rewriter builds one for the whole stream.
pub struct Demangler {
    ns: NsName,
    object_prefix: String,
    image_prefix: String,
    registry: String,
}

impl Demangler {
    pub fn new(ns: &NsName, registry: &str) -> Demangler {
        Demangler { ns: ns.clone(), object_prefix: ns.prefix(), image_prefix: format!("{registry}/{ns}/"), registry: registry.to_owned() }
    }

    /// Whether `line` may hold a mangled name at all (most stream lines do not).
    pub fn may_contain(&self, line: &[u8]) -> bool {
        let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
        has(MARKER.as_bytes()) || has(self.image_prefix.as_bytes())
    }

    /// Free text: every mangled object name and image reference in it.
    pub fn text<'s>(&self, s: &'s str) -> Cow<'s, str> {
        if !s.contains(MARKER) && !s.contains(&self.image_prefix) {
            return Cow::Borrowed(s);
        }
        let mut out = s.replace(&self.object_prefix, "");
        while let Some(start) = out.find(&self.image_prefix) {
            let end = out[start..].find(|c: char| !is_ref_char(c)).map_or(out.len(), |i| start + i);
            let token = &out[start..end];
            let familiar = self.ns.unimage_str(&self.registry, token).unwrap_or_else(|| {
                // Not a complete reference (a repository being pushed, a progress id): drop the prefix.
                let rest = &token[self.image_prefix.len()..];
                match rest.split_once('/') {
                    Some((domain, path)) => super::names::decode_domain(domain) + "/" + path,
                    None => rest.to_owned(),
                }
            });
            out.replace_range(start..end, &familiar);
        }
        Cow::Owned(out)
    }

    /// A JSON value, in place: strings, object keys, and the namespace label removed.
    pub fn value(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(new) = self.text(s) {
                    *s = new;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.value(x)),
            Value::Object(map) => {
                map.remove(NS_LABEL);
                let needs_rename = map.keys().any(|k| matches!(self.text(k), Cow::Owned(_)));
                if needs_rename {
                    let old = std::mem::take(map);
                    *map = old.into_iter().map(|(k, v)| (self.text(&k).into_owned(), v)).collect::<Map<_, _>>();
                }
                map.values_mut().for_each(|x| self.value(x));
            }
            _ => {}
        }
    }
}

fn is_ref_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_values() {
        let ns = NsName::new("alice").unwrap();
        let d = Demangler::new(&ns, "127.0.0.1:5001");
        assert_eq!(d.text("No such container: ctp.alice.db"), "No such container: db");
        assert_eq!(d.text("Successfully tagged 127.0.0.1:5001/alice/docker.io/library/app:latest\n"), "Successfully tagged app:latest\n");
        assert_eq!(
            d.text("The push refers to repository [127.0.0.1:5001/alice/localhost__5000/team/app]"),
            "The push refers to repository [localhost:5000/team/app]"
        );
        assert_eq!(d.text("plain"), "plain");
        let mut v = json!({"Names": ["/ctp.alice.db"], "Labels": {NS_LABEL: "alice", "x": "y"},
            "NetworkSettings": {"Networks": {"ctp.alice.backend": {"Aliases": ["db"]}}},
            "Image": "127.0.0.1:5001/alice/docker.io/library/busybox:1"});
        d.value(&mut v);
        assert_eq!(
            v,
            json!({"Names": ["/db"], "Labels": {"x": "y"}, "NetworkSettings": {"Networks": {"backend": {"Aliases": ["db"]}}}, "Image": "busybox:1"})
        );
    }
}
