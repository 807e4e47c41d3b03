//! HTTP `Authorization`: Basic (user and password, checked against a bcrypt hash) and Bearer tokens
//! (stored as SHA-256 hashes: tokens are long random strings, so a fast hash is enough).
//!
//! The docker CLI sends these from the `HttpHeaders` of its `config.json`. bcrypt is slow on
//! purpose, and a keep-alive client sends the header on every request, so a successful check is
//! remembered by the SHA-256 of the header value (never the secret itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hyper::header::AUTHORIZATION;
use hyper::HeaderMap;

use super::{AuthError, Authenticator};
use crate::plugin::Identity;
use crate::transport::PeerInfo;

/// Remembered successful Basic checks; beyond this many the cache starts afresh.
const CACHE_MAX: usize = 1024;

pub struct HttpAuth {
    name: String,
    /// User → bcrypt hash (`$2b$...`, as `htpasswd -B` writes it).
    passwords: HashMap<String, String>,
    /// SHA-256 (hex) of a token → identity.
    tokens: HashMap<String, Arc<str>>,
    verified: Mutex<HashMap<[u8; 32], Arc<str>>>,
}

/// The hex SHA-256 of a bearer token, as stored in the configuration (`ctproxy hash-token`).
pub fn hash_token(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn digest32(s: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl HttpAuth {
    pub fn new(name: &str, passwords: HashMap<String, String>, tokens: HashMap<String, String>) -> Self {
        let tokens = tokens.into_iter().map(|(hash, id)| (hash.to_ascii_lowercase(), Arc::from(id))).collect();
        HttpAuth { name: name.to_owned(), passwords, tokens, verified: Mutex::new(HashMap::new()) }
    }

    fn basic(&self, header: &str, encoded: &str) -> Result<Option<Identity>, AuthError> {
        let key = digest32(header.as_bytes());
        if let Some(id) = self.verified.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(Identity { name: id, via: "http" }));
        }
        let decoded = base64_decode(encoded.trim()).ok_or(AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        let hash = self.passwords.get(user).ok_or(AuthError::Invalid)?;
        // bcrypt takes a quarter of a second on purpose: tell the runtime, so that the other
        // connections of this worker move elsewhere instead of waiting (wrong passwords are not
        // cached, so this is also what a password-guessing client costs).
        if !tokio::task::block_in_place(|| bcrypt::verify(password, hash).unwrap_or(false)) {
            return Err(AuthError::Invalid);
        }
        let id: Arc<str> = Arc::from(user);
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= CACHE_MAX {
                m.clear();
            }
            m.insert(key, id.clone());
        }
        Ok(Some(Identity { name: id, via: "http" }))
    }
}

impl Authenticator for HttpAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn authenticate(&self, _: &PeerInfo, headers: &HeaderMap) -> Result<Option<Identity>, AuthError> {
        let Some(value) = headers.get(AUTHORIZATION) else { return Ok(None) };
        let header = value.to_str().map_err(|_| AuthError::Invalid)?;
        let (scheme, rest) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        if scheme.eq_ignore_ascii_case("basic") {
            self.basic(header, rest)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let id = self.tokens.get(&hash_token(rest.trim())).ok_or(AuthError::Invalid)?;
            Ok(Some(Identity { name: id.clone(), via: "http" }))
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// Standard base64 with padding (what `Authorization: Basic` uses).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        match chunk.len() {
            4 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]),
            3 => out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8]),
            2 => out.push((n >> 16) as u8),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{PeerAddr, PeerInfo};
    use hyper::header::HeaderValue;

    fn peer() -> PeerInfo {
        PeerInfo { addr: PeerAddr::Unix { uid: 0, gid: 0, pid: None }, tls_client: None }
    }

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn basic_and_bearer() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let a = HttpAuth::new("h", [("alice".to_owned(), hash)].into(), [(hash_token("tok-123"), "ci-bot".to_owned())].into());
        // "alice:s3cret"
        let ok = with_auth("Basic YWxpY2U6czNjcmV0");
        assert_eq!(a.authenticate(&peer(), &ok).unwrap().unwrap().name.as_ref(), "alice");
        assert_eq!(a.authenticate(&peer(), &ok).unwrap().unwrap().name.as_ref(), "alice"); // cached
                                                                                           // "alice:wrong"
        assert_eq!(a.authenticate(&peer(), &with_auth("Basic YWxpY2U6d3Jvbmc=")), Err(AuthError::Invalid));
        assert_eq!(a.authenticate(&peer(), &with_auth("Bearer tok-123")).unwrap().unwrap().name.as_ref(), "ci-bot");
        assert_eq!(a.authenticate(&peer(), &with_auth("Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(a.authenticate(&peer(), &HeaderMap::new()), Ok(None));
        assert_eq!(a.authenticate(&peer(), &with_auth("Digest x")), Err(AuthError::Invalid));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWxpY2U6czNjcmV0").unwrap(), b"alice:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("!!!!").is_none());
    }
}
