//! Layer 1 (beside `http`, imports nothing above it), the content store: one body file and one
//! metadata file per entry on disk, an in-memory index, and a byte budget kept by evicting the least
//! recently used entries. [`fill`] makes concurrent misses of one key a single upstream fetch.
//!
//! **Why one store for two users.** The HTTP cache (`cache`, layer 5) keeps responses under
//! `GET <url>` keys; the registry proxy (`registry::blobs`, layer 4) keeps blobs under
//! [`BLOB_KEY_PREFIX`]`sha256:<hex>`. Both are bodies checked against a SHA-256 and evicted by use, so
//! one store gives a host one byte budget (`[cache] max_bytes`) and one LRU across package files and
//! image layers, instead of two budgets that each must be sized for the worst case.
//!
//! **Why files.** Bodies go from 10 KB indexes to multi-GB layers; a file per body streams with
//! positional reads (`read_at`), so any number of readers share it without a cursor, and an
//! entry replaced or evicted while someone reads it lives on until the last reader closes it.
//!
//! **Nothing half-written is ever served.** A body is written to a temporary file and published
//! only once complete and checked (length, and digest where the URL names one): the metadata file
//! is written first (temp + rename), then the body renamed into place; on start, an entry whose
//! body is missing or of the wrong length is dropped. Bodies loaded at start are hashed again on
//! their first use, so a damaged file is detected and refetched, never served.

pub mod fill;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

/// The key prefix of registry blobs (`registry-blob sha256:<hex>`): no HTTP cache key (always
/// `GET <scheme>://...`) can take this form.
pub const BLOB_KEY_PREFIX: &str = "registry-blob ";

/// Bodies up to this size are kept in memory once used: small hits never touch the disk.
pub const INLINE_MAX: u64 = 64 * 1024;
/// At most this much memory holds such bodies; beyond it small bodies are read from disk too.
pub const INLINE_BUDGET: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cache file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("object of {len} bytes does not fit the cache budget of {max} bytes")]
    TooBig { len: u64, max: u64 },
}

/// What is known about a stored response, persisted next to its body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Primary key plus the secondary (Vary) key.
    pub key: String,
    /// The primary key alone, to find the Vary names of a URL after a restart.
    pub primary: String,
    /// Headers replayed to clients (names lowercase).
    pub headers: Vec<(String, String)>,
    pub len: u64,
    /// Hex SHA-256 of the body.
    pub sha256: String,
    /// Seconds since the epoch.
    pub stored_at: u64,
    pub fresh_until: u64,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Fetched with credentials: every use needs an upstream check with the user's own.
    pub credentialed: bool,
    /// Lowercase names of the request headers the response varies on.
    pub vary: Vec<String>,
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub meta: Mutex<Meta>,
    pub path: PathBuf,
    pub len: u64,
    /// `meta.headers` parsed once, for every answer from this entry.
    pub headers: HeaderMap,
    last_access: AtomicU64,
    /// Its body has been hashed since it was loaded from disk (or was written by this process).
    verified: AtomicBool,
    inline: OnceLock<Bytes>,
    /// Milliseconds since the epoch when the origin last sent or confirmed (304) this body: what
    /// the revalidation window counts from. In memory only: after a restart it is `stored_at`, so an
    /// index is asked for again rather than trusted across a pause of unknown length.
    validated_at_ms: AtomicU64,
}

impl Entry {
    pub fn meta(&self) -> Meta {
        self.lock_meta().clone()
    }

    /// The metadata in place (no copy), for the hit path.
    pub fn lock_meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_fresh(&self, now: u64) -> bool {
        self.meta.lock().map(|m| now < m.fresh_until).unwrap_or(false)
    }

    /// See `validated_at_ms`.
    pub fn validated_at_ms(&self) -> u64 {
        self.validated_at_ms.load(Ordering::Relaxed)
    }

    pub fn credentialed(&self) -> bool {
        self.meta.lock().map(|m| m.credentialed).unwrap_or(true)
    }

    /// The body in memory, for small entries already read once.
    pub fn inline(&self) -> Option<Bytes> {
        self.inline.get().cloned()
    }
}

/// The in-memory index.
#[derive(Default)]
struct Index {
    entries: HashMap<String, Arc<Entry>>,
    /// Primary key → Vary names of the latest stored response for it.
    vary: HashMap<String, Vec<String>>,
    total: u64,
}

pub struct Store {
    objects: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    /// LRU clock.
    tick: AtomicU64,
    /// Bytes of bodies held in memory (see [`INLINE_BUDGET`]).
    inline_bytes: AtomicU64,
}

/// Milliseconds since the epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// File name stem of a key: its SHA-256, so any key maps to a safe, fixed-length name.
fn stem(key: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
}

fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| StoreError::File { path: path.clone(), source };
    let mut f = File::create(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_data().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

impl Store {
    /// Opens (or creates) the store in `dir`, loading what a previous run left: entries whose
    /// body is missing or of the wrong length are dropped, temporary files removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Store, StoreError> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [&objects, &tmp] {
            std::fs::create_dir_all(d).map_err(|source| StoreError::Dir { path: d.clone(), source })?;
        }
        if let Ok(rd) = std::fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let store = Store {
            objects,
            tmp,
            max_bytes,
            index: Mutex::new(Index::default()),
            tick: AtomicU64::new(1),
            inline_bytes: AtomicU64::new(0),
        };
        let rd = std::fs::read_dir(&store.objects).map_err(|source| StoreError::Dir { path: store.objects.clone(), source })?;
        let mut loaded = Vec::new();
        for e in rd.flatten() {
            let path = e.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
            if name.starts_with('.') {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(name_stem) = name.strip_suffix(".meta") else { continue };
            let body = store.objects.join(format!("{name_stem}.body"));
            let meta: Option<Meta> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
            let ok = meta
                .as_ref()
                .is_some_and(|m| stem(&m.key) == name_stem && std::fs::metadata(&body).map(|md| md.len() == m.len).unwrap_or(false));
            match (ok, meta) {
                (true, Some(m)) => loaded.push((m, body)),
                _ => {
                    tracing::warn!(entry = name_stem, "dropping a damaged cache entry");
                    let _ = std::fs::remove_file(&path);
                    let _ = std::fs::remove_file(&body);
                }
            }
        }
        // Orphan bodies (a crash between the two renames of a publish).
        if let Ok(rd) = std::fs::read_dir(&store.objects) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "body") && !p.with_extension("meta").exists() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        {
            let mut idx = store.lock();
            for (m, path) in loaded {
                idx.total += m.len;
                idx.vary.insert(m.primary.clone(), m.vary.clone());
                let len = m.len;
                let entry = Arc::new(Entry {
                    headers: header_map(&m.headers),
                    meta: Mutex::new(m.clone()),
                    path,
                    len,
                    last_access: AtomicU64::new(0),
                    verified: AtomicBool::new(false),
                    inline: OnceLock::new(),
                    validated_at_ms: AtomicU64::new(m.stored_at.saturating_mul(1000)),
                });
                idx.entries.insert(m.key, entry);
            }
            tracing::info!(entries = idx.entries.len(), bytes = idx.total, "cache store loaded");
        }
        store.evict(0);
        Ok(store)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Vary names last seen for a URL (none when it was never stored).
    pub fn vary_names(&self, primary: &str) -> Vec<String> {
        self.lock().vary.get(primary).cloned().unwrap_or_default()
    }

    pub fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let e = self.lock().entries.get(key).cloned()?;
        e.last_access.store(self.tick.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        Some(e)
    }

    /// Checks an entry before it is served: the body file still has its length and, once per
    /// load from disk, its hash. Small bodies are kept in memory after this. A damaged entry is
    /// removed and `false` returned.
    pub fn check(&self, entry: &Arc<Entry>) -> bool {
        if entry.inline.get().is_some() {
            return true;
        }
        let ok = (|| {
            let f = File::open(&entry.path).ok()?;
            if f.metadata().ok()?.len() != entry.len {
                return None;
            }
            let small = entry.len <= INLINE_MAX && self.inline_bytes.load(Ordering::Relaxed) + entry.len <= INLINE_BUDGET;
            if entry.verified.load(Ordering::Acquire) && !small {
                return Some(());
            }
            let want = entry.meta().sha256;
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut kept = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut off = 0u64;
            while off < entry.len {
                let n = f.read_at(&mut buf, off).ok()?;
                if n == 0 {
                    return None;
                }
                ctx.update(&buf[..n]);
                if small {
                    kept.extend_from_slice(&buf[..n]);
                }
                off += n as u64;
            }
            if hex(ctx.finish().as_ref()) != want {
                return None;
            }
            entry.verified.store(true, Ordering::Release);
            if small && entry.inline.set(Bytes::from(kept)).is_ok() {
                self.inline_bytes.fetch_add(entry.len, Ordering::Relaxed);
            }
            Some(())
        })()
        .is_some();
        if !ok {
            tracing::warn!(path = %entry.path.display(), "cache entry damaged on disk: dropped, it will be fetched again");
            let key = entry.meta().key;
            self.remove_if_same(&key, entry);
        }
        ok
    }

    /// A new temporary file for a body being fetched.
    pub fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        let mut rnd = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
        let path = self.tmp.join(format!("{}.part", hex(&rnd)));
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| StoreError::File { path: path.clone(), source })?;
        Ok((path, f))
    }

    /// Publishes a complete, checked body (at `temp`) under `meta.key`, evicting as needed.
    /// Replaces an older entry for the same key.
    pub fn publish(&self, temp: &Path, meta: Meta) -> Result<Arc<Entry>, StoreError> {
        if meta.len > self.max_bytes / 2 {
            return Err(StoreError::TooBig { len: meta.len, max: self.max_bytes / 2 });
        }
        self.evict(meta.len);
        let stem = stem(&meta.key);
        let body = self.objects.join(format!("{stem}.body"));
        let json = serde_json::to_vec(&meta).map_err(|e| StoreError::File { path: body.clone(), source: e.into() })?;
        write_atomically(&self.objects, &format!("{stem}.meta"), &json)?;
        std::fs::rename(temp, &body).map_err(|source| StoreError::File { path: body.clone(), source })?;
        let entry = Arc::new(Entry {
            len: meta.len,
            headers: header_map(&meta.headers),
            meta: Mutex::new(meta.clone()),
            path: body,
            last_access: AtomicU64::new(self.tick.fetch_add(1, Ordering::Relaxed)),
            verified: AtomicBool::new(true),
            inline: OnceLock::new(),
            validated_at_ms: AtomicU64::new(now_ms()),
        });
        let mut idx = self.lock();
        idx.vary.insert(meta.primary.clone(), meta.vary.clone());
        if let Some(old) = idx.entries.insert(meta.key, entry.clone()) {
            idx.total -= old.len;
            self.release_inline(&old);
        }
        idx.total += entry.len;
        Ok(entry)
    }

    /// After a successful revalidation: new freshness and validators, persisted.
    pub fn refresh(&self, entry: &Entry, fresh_until: u64, etag: Option<String>, last_modified: Option<String>) {
        entry.validated_at_ms.store(now_ms(), Ordering::Relaxed);
        let meta = {
            let Ok(mut m) = entry.meta.lock() else { return };
            m.fresh_until = fresh_until;
            if etag.is_some() {
                m.etag = etag;
            }
            if last_modified.is_some() {
                m.last_modified = last_modified;
            }
            m.clone()
        };
        if let Ok(json) = serde_json::to_vec(&meta) {
            if let Err(e) = write_atomically(&self.objects, &format!("{}.meta", stem(&meta.key)), &json) {
                tracing::warn!(error = %e, "cache: could not persist a revalidation");
            }
        }
    }

    /// Drops `key` if it still maps to `entry` (a newer entry is left alone).
    pub fn remove_if_same(&self, key: &str, entry: &Arc<Entry>) {
        let mut idx = self.lock();
        if idx.entries.get(key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            idx.entries.remove(key);
            idx.total -= entry.len;
            drop(idx);
            self.release_inline(entry);
            let stem = stem(key);
            let _ = std::fs::remove_file(self.objects.join(format!("{stem}.meta")));
            let _ = std::fs::remove_file(self.objects.join(format!("{stem}.body")));
        }
    }

    /// Makes room for `incoming` bytes: least recently used entries go first.
    fn evict(&self, incoming: u64) {
        let mut victims = Vec::new();
        {
            let mut idx = self.lock();
            if idx.total + incoming <= self.max_bytes {
                return;
            }
            let mut order: Vec<(u64, String)> =
                idx.entries.iter().map(|(k, e)| (e.last_access.load(Ordering::Relaxed), k.clone())).collect();
            order.sort_unstable();
            for (_, key) in order {
                if idx.total + incoming <= self.max_bytes {
                    break;
                }
                if let Some(e) = idx.entries.remove(&key) {
                    idx.total -= e.len;
                    self.release_inline(&e);
                    victims.push(key);
                }
            }
        }
        for key in victims {
            tracing::debug!(key, "cache: evicted");
            let stem = stem(&key);
            let _ = std::fs::remove_file(self.objects.join(format!("{stem}.meta")));
            let _ = std::fs::remove_file(self.objects.join(format!("{stem}.body")));
        }
    }

    /// An entry leaves the index: its in-memory body no longer counts (readers holding the entry
    /// keep it alive until they are done).
    fn release_inline(&self, entry: &Entry) {
        if entry.inline.get().is_some() {
            self.inline_bytes.fetch_sub(entry.len, Ordering::Relaxed);
        }
    }

    /// Bytes and entries held.
    pub fn usage(&self) -> (u64, usize) {
        let idx = self.lock();
        (idx.total, idx.entries.len())
    }

    /// Bytes and entries held under keys starting with `prefix` (a walk of the index: for metrics).
    pub fn usage_of(&self, prefix: &str) -> (u64, usize) {
        let idx = self.lock();
        idx.entries.iter().filter(|(k, _)| k.starts_with(prefix)).fold((0, 0), |(b, n), (_, e)| (b + e.len, n + 1))
    }
}

/// Header pairs as stored in a [`Meta`], as a map (pairs that are not valid headers are skipped).
pub fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.append(k, v);
        }
    }
    h
}

/// Hex SHA-256 of a finished digest context.
pub fn finish_hex(ctx: ring::digest::Context) -> String {
    hex(ctx.finish().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, body: &[u8]) -> Meta {
        Meta {
            key: key.into(),
            primary: key.into(),
            headers: vec![],
            len: body.len() as u64,
            sha256: hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref()),
            stored_at: 0,
            fresh_until: u64::MAX,
            etag: None,
            last_modified: None,
            credentialed: false,
            vary: vec![],
        }
    }

    fn put(store: &Store, key: &str, body: &[u8]) -> Arc<Entry> {
        let (path, mut f) = store.temp_file().unwrap();
        f.write_all(body).unwrap();
        store.publish(&path, meta(key, body)).unwrap()
    }

    #[test]
    fn publish_get_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let e = put(&store, "k1", b"hello");
        assert!(store.check(&e));
        assert_eq!(e.inline().unwrap(), Bytes::from_static(b"hello"));
        drop(store);
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let e = store.get("k1").unwrap();
        assert!(store.check(&e));
        assert_eq!(store.usage(), (5, 1));
    }

    #[test]
    fn damaged_bodies_are_dropped_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let a = put(&store, "same-length", b"abcdef");
        put(&store, "truncated", b"abcdef");
        let path_a = a.path.clone();
        drop((a, store));
        std::fs::write(&path_a, b"abcdeX").unwrap();
        let t = dir.path().join("objects").join(format!("{}.body", stem("truncated")));
        std::fs::write(&t, b"abc").unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        assert!(store.get("truncated").is_none(), "wrong length: dropped at load");
        let a = store.get("same-length").unwrap();
        assert!(!store.check(&a), "same length, wrong hash: detected at first use");
        assert!(store.get("same-length").is_none());
    }

    #[test]
    fn eviction_keeps_the_budget_and_spares_recent_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 100).unwrap();
        put(&store, "a", &[1; 40]);
        put(&store, "b", &[2; 40]);
        store.get("a");
        put(&store, "c", &[3; 40]);
        assert!(store.get("a").is_some() && store.get("c").is_some());
        assert!(store.get("b").is_none(), "least recently used goes first");
        assert!(store.usage().0 <= 100);
        let (path, _f) = store.temp_file().unwrap();
        assert!(matches!(store.publish(&path, meta("big", &[0; 60])), Err(StoreError::TooBig { .. })));
    }
}
