//! Query strings, parsed the way Go's `url.ParseQuery` parses them for dockerd.
//!
//! Only `&` separates pairs (a `;` makes dockerd answer 400, so it is an error here too), `+` is a
//! space, a bad `%` escape is an error, and a handler reading one value gets the *first* one. The
//! query forwarded to dockerd is always re-encoded from this parsed form, so the daemon reads
//! exactly what policies read.

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid semicolon separator in query")]
    Semicolon,
    #[error("invalid URL escape in query: {0:?}")]
    Escape(String),
}

/// A parsed query: every pair, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: &str) -> Result<Query, QueryError> {
        let mut pairs = Vec::new();
        for part in raw.split('&') {
            if part.contains(';') {
                return Err(QueryError::Semicolon);
            }
            if part.is_empty() {
                continue;
            }
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((unescape(k)?, unescape(v)?));
        }
        Ok(Query { pairs })
    }

    /// The value a Go handler reads with `r.Form.Get(key)`: the first one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// `httputils.BoolValue`: absent, empty, `0`, `no`, `false`, `none` are false, anything else true.
    pub fn bool(&self, key: &str) -> bool {
        self.get(key).is_some_and(go_bool)
    }

    pub fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    /// Replaces every value of `key` by one.
    pub fn set(&mut self, key: &str, value: &str) {
        self.remove(key);
        self.pairs.push((key.to_owned(), value.to_owned()));
    }

    /// Adds one more value (repeatable parameters such as `t`).
    pub fn push(&mut self, key: &str, value: &str) {
        self.pairs.push((key.to_owned(), value.to_owned()));
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The canonical encoding forwarded to dockerd.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            escape_into(&mut out, k);
            out.push('=');
            escape_into(&mut out, v);
        }
        out
    }
}

/// `httputils.BoolValue` on one value.
pub fn go_bool(v: &str) -> bool {
    !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "no" | "false" | "none")
}

fn unescape(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly: `u8::from_str_radix` alone would take `%+1` (Go refuses it).
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                let hex = hex.and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or_else(|| QueryError::Escape(s.to_owned()))?;
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    // Go keeps invalid UTF-8 as bytes; a Rust string cannot, and no Docker parameter needs it.
    String::from_utf8(out).map_err(|_| QueryError::Escape(s.to_owned()))
}

fn escape_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_go() {
        let q = Query::parse("limit=abc&limit=1&all=1&name=a+b%2Fc&flag").unwrap();
        assert_eq!(q.get("limit"), Some("abc"));
        assert_eq!(q.get_all("limit").collect::<Vec<_>>(), ["abc", "1"]);
        assert_eq!(q.get("name"), Some("a b/c"));
        assert_eq!(q.get("flag"), Some(""));
        assert!(q.bool("all") && !q.bool("flag") && !q.bool("missing"));
        assert_eq!(Query::parse("all=1;size=1"), Err(QueryError::Semicolon));
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("a=%4").is_err());
        assert!(Query::parse("a=%+1").is_err());
    }

    #[test]
    fn go_booleans() {
        for t in ["1", "true", "off", "yes", "x"] {
            assert!(go_bool(t), "{t:?}");
        }
        for f in ["", "0", "no", "FALSE", "False ", " none "] {
            assert!(!go_bool(f), "{f:?}");
        }
    }

    #[test]
    fn encoding_round_trips() {
        let q = Query::parse("filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D&t=x:1&t=y+z").unwrap();
        assert_eq!(Query::parse(&q.encode()).unwrap(), q);
    }
}
