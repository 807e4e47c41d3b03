//! Registry-proxy tokens: what lets dockerd act for one namespace at the registry proxy.
//!
//! The API side of ctproxy issues a token per pull or push and puts it in the `X-Registry-Auth` it
//! forwards (`{"registrytoken": "<token>"}`); dockerd then sends it to the registry proxy verbatim as
//! `Authorization: Bearer <token>`. The token maps to a [`Grant`]: the namespace whose repository
//! paths it may use and the client's own credentials for the real registry, which never reach the
//! daemon.
//!
//! Tokens are 32 random bytes, so guessing one is hopeless; the store keys its map by the SHA-256 of
//! the token rather than the token, which makes a lookup's timing independent of how much of a
//! guessed token is right (no constant-time compare needed) and keeps tokens out of memory dumps of
//! the map. Tokens never appear in logs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::docker::AuthConfig;
use crate::plugin::namespace::NsName;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The only namespace whose repositories (`<ns>/<domain>/<path>`) the token reaches.
    pub namespace: NsName,
    /// The client's credentials for the real registry; `None` is an anonymous pull.
    pub upstream: Option<AuthConfig>,
}

/// The SHA-256 of a token: the map key, and the identity of a grant in the upstream token cache.
pub(crate) type TokenId = [u8; 32];

struct Entry {
    grant: Grant,
    expires: Instant,
    /// Blobs this token may be served from the blob cache without asking upstream: see
    /// [`TokenStore::grant_blobs`]. Dies with the entry.
    blobs: ManifestGrants,
}

/// Blob digests (sha256 hex) per upstream repository (`<domain>/<path>`), each recorded because
/// the upstream answered this token's own credentials with 200 for a manifest that references it.
#[derive(Default)]
struct ManifestGrants {
    by_repo: HashMap<String, HashSet<String>>,
    count: usize,
}

/// At most this many granted digests per token (about 100 bytes each); past it, further blobs fall
/// back to the per-request upstream check.
pub const MAX_GRANTED_BLOBS: usize = 4096;

/// Issued tokens. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct TokenStore {
    inner: Arc<Mutex<HashMap<TokenId, Entry>>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").field("tokens", &self.inner.lock().map(|m| m.len()).unwrap_or(0)).finish()
    }
}

pub(crate) fn token_id(token: &str) -> TokenId {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut id = [0u8; 32];
    id.copy_from_slice(d.as_ref());
    id
}

impl Default for TokenStore {
    fn default() -> Self {
        TokenStore { inner: Arc::default(), rng: SystemRandom::new() }
    }
}

impl TokenStore {
    pub fn new() -> TokenStore {
        TokenStore::default()
    }

    /// A new token for `namespace`, valid for `ttl`. The token is 64 lower-case hex digits.
    pub fn issue(&self, namespace: NsName, upstream: Option<AuthConfig>, ttl: Duration) -> String {
        let mut bytes = [0u8; 32];
        // The kernel's generator does not fail on a running Linux system; if it ever did, handing out
        // a predictable token would be worse than stopping.
        self.rng.fill(&mut bytes).expect("the system random generator failed");
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        if let Ok(mut map) = self.inner.lock() {
            // Lazy purge: issuing is rare next to lookups, and this keeps the map at the live tokens.
            map.retain(|_, e| e.expires > now);
            map.insert(
                token_id(&token),
                Entry { grant: Grant { namespace, upstream }, expires: now + ttl, blobs: ManifestGrants::default() },
            );
        }
        token
    }

    /// Ends a token before its time (the pull or push it was issued for is over).
    pub fn revoke(&self, token: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&token_id(token));
        }
    }

    /// The grant of a live token.
    pub fn lookup(&self, token: &str) -> Option<Grant> {
        self.lookup_id(&token_id(token))
    }

    pub(crate) fn lookup_id(&self, id: &TokenId) -> Option<Grant> {
        let mut map = self.inner.lock().ok()?;
        match map.get(id) {
            Some(e) if e.expires > Instant::now() => Some(e.grant.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Records that the upstream accepted this token's credentials (status 200) for a manifest of
    /// `repo` (`<domain>/<path>`) that references the blobs `hexes`. Up to [`MAX_GRANTED_BLOBS`]
    /// per token; the rest are not recorded (their GETs are checked upstream). Nothing for a dead
    /// token.
    pub(crate) fn grant_blobs<'a>(&self, id: &TokenId, repo: &str, hexes: impl IntoIterator<Item = &'a str>) {
        let Ok(mut map) = self.inner.lock() else { return };
        let Some(e) = map.get_mut(id).filter(|e| e.expires > Instant::now()) else { return };
        let g = &mut e.blobs;
        for hex in hexes {
            if g.count >= MAX_GRANTED_BLOBS {
                break;
            }
            if g.by_repo.entry(repo.to_owned()).or_default().insert(hex.to_owned()) {
                g.count += 1;
            }
        }
    }

    /// Whether this live token was granted the blob `hex` of `repo` by a manifest.
    pub(crate) fn blob_granted(&self, id: &TokenId, repo: &str, hex: &str) -> bool {
        let Ok(map) = self.inner.lock() else { return false };
        map.get(id).filter(|e| e.expires > Instant::now()).and_then(|e| e.blobs.by_repo.get(repo)).is_some_and(|s| s.contains(hex))
    }
}

/// How long a token handed to dockerd for one pull, push or build stays valid. Long enough for a
/// slow pull of a large image; the grant only ever reaches the namespace's own repositories.
const DAEMON_TOKEN_TTL: Duration = Duration::from_secs(3 * 3600);

impl crate::plugin::namespace::RegistryTokens for TokenStore {
    fn issue(&self, namespace: &NsName, client: Option<&hyper::header::HeaderValue>) -> hyper::header::HeaderValue {
        // Credentials the client sent are used upstream by the registry proxy, never by dockerd.
        let upstream = client.and_then(crate::docker::auth_config::decode_header).filter(|a| !a.is_anonymous());
        let token = TokenStore::issue(self, namespace.clone(), upstream, DAEMON_TOKEN_TTL);
        crate::docker::auth_config::encode_header(&AuthConfig { registrytoken: token, ..Default::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_lookup_revoke_expire() {
        let store = TokenStore::new();
        let ns = NsName::new("alice").unwrap();
        let creds = AuthConfig { username: "u".into(), password: "p".into(), ..Default::default() };
        let t = store.issue(ns.clone(), Some(creds.clone()), Duration::from_secs(60));
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        let g = store.clone().lookup(&t).unwrap();
        assert_eq!(g.namespace, ns);
        assert_eq!(g.upstream, Some(creds));
        assert!(store.lookup(&t[..63]).is_none());
        assert!(store.lookup("").is_none());

        let t2 = store.issue(ns.clone(), None, Duration::from_secs(60));
        assert_ne!(t, t2);
        store.revoke(&t);
        assert!(store.lookup(&t).is_none());
        assert!(store.lookup(&t2).is_some());

        let short = store.issue(ns, None, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(store.lookup(&short).is_none());
        assert!(!format!("{store:?}").contains(&t2));
    }

    #[test]
    fn manifest_grants_are_per_token_and_repo_bounded_and_die_with_it() {
        let store = TokenStore::new();
        let ns = NsName::new("alice").unwrap();
        let t = store.issue(ns.clone(), None, Duration::from_secs(60));
        let other = store.issue(ns, None, Duration::from_secs(60));
        let (id, oid) = (token_id(&t), token_id(&other));
        store.grant_blobs(&id, "reg.io/a", ["aa", "bb"]);
        assert!(store.blob_granted(&id, "reg.io/a", "aa"));
        assert!(!store.blob_granted(&id, "reg.io/b", "aa"), "another repository");
        assert!(!store.blob_granted(&oid, "reg.io/a", "aa"), "another token");
        let many: Vec<String> = (0..MAX_GRANTED_BLOBS + 10).map(|i| format!("{i:x}")).collect();
        store.grant_blobs(&id, "reg.io/c", many.iter().map(String::as_str));
        assert!(store.blob_granted(&id, "reg.io/c", "0"));
        assert!(!store.blob_granted(&id, "reg.io/c", &many[MAX_GRANTED_BLOBS + 5]), "bounded");
        store.revoke(&t);
        assert!(!store.blob_granted(&id, "reg.io/a", "aa"));
        store.grant_blobs(&id, "reg.io/a", ["aa"]);
        assert!(!store.blob_granted(&id, "reg.io/a", "aa"), "nothing recorded for a dead token");
    }
}
