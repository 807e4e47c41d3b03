//! The registry proxy's blob cache: layer and config blobs kept on disk by digest, so a job pulling
//! an image another job already pulled moves no layer bytes from the origin.
//!
//! **Never another namespace's blob.** A blob is content-addressed, but who may read it is decided
//! by the registry, per repository: a cached blob is served to a request only after the upstream
//! accepted that request's own credentials for it: either for an image manifest of that repository
//! that references it (a manifest grant of the token, see `manifest` and `TokenStore::grant_blobs`),
//! or, failing that, for the blob itself (a `HEAD /v2/<repo>/blobs/<digest>` with the grant's auth
//! answering 2xx, or a redirect, which a registry only signs for a reader), checked on that use.
//!
//! **Nothing unverified is stored or served.** A body is written to a temporary file while it streams
//! to dockerd and hashed on the way; it is renamed into place only if its SHA-256 is the digest it was
//! fetched as. A mismatch fails the transfer (dockerd retries) and stores nothing. Files found at
//! start are hashed again before their first use (streamed, never read whole into memory).
//!
//! **Why its own store.** `cache::store` is layer 5 and keys HTTP responses with Vary and freshness;
//! a blob needs none of that (its name is its hash), so this is a directory of `<hex>` files with an
//! LRU byte budget. Concurrent misses for one digest each fetch for themselves (not coalesced): the
//! first to finish publishes, the others' identical files replace it harmlessly.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use http_body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::http::ProxyBody;

/// Bytes per read of a stored blob.
const CHUNK: usize = 256 * 1024;
/// The byte budget when the configuration gives none.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `sha256:<64 lower-case hex>` → the hex. Other algorithms and spellings are not cached.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// Counters of the blob cache, rendered as `ctproxy_registry_blob_*`.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    /// Hits served on a manifest grant, without an upstream request (a subset of `hits`).
    granted: AtomicU64,
    misses: AtomicU64,
    /// A cached blob asked for by a request whose credentials the upstream refused.
    denied: AtomicU64,
    /// Upstream bodies that were not the digest they were fetched as (never stored).
    corrupt: AtomicU64,
    bytes_from_cache: AtomicU64,
    bytes_from_upstream: AtomicU64,
}

/// A snapshot of the counters and of what is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobStats {
    pub hits: u64,
    /// Hits served on a manifest grant, without an upstream request (a subset of `hits`).
    pub granted: u64,
    pub misses: u64,
    pub denied: u64,
    pub corrupt: u64,
    pub bytes_from_cache: u64,
    pub bytes_from_upstream: u64,
    pub stored_bytes: u64,
    pub entries: u64,
}

struct Slot {
    len: u64,
    last_use: u64,
    /// Hashed since it was found on disk (or written by this process).
    verified: bool,
}

#[derive(Default)]
struct Index {
    slots: HashMap<String, Slot>,
    total: u64,
}

/// Blobs on disk by digest, with an LRU byte budget.
pub struct BlobCache {
    blobs: PathBuf,
    tmp: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
    tick: AtomicU64,
    counters: Counters,
}

/// Removes a temporary file unless it was published.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl BlobCache {
    /// Opens (or creates) the cache in `dir`: `blobs/<hex>` and `tmp/` (emptied). Files whose name
    /// is not a digest are removed; the others are re-hashed at first use.
    pub fn open(dir: &Path, max_bytes: u64) -> std::io::Result<BlobCache> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        for d in [&blobs, &tmp] {
            std::fs::create_dir_all(d)?;
        }
        for e in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let mut index = Index::default();
        for e in std::fs::read_dir(&blobs)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            match (sha256_hex(&format!("sha256:{name}")), len) {
                (Some(_), Some(len)) => {
                    index.total += len;
                    index.slots.insert(name, Slot { len, last_use: 0, verified: false });
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        tracing::info!(entries = index.slots.len(), bytes = index.total, dir = %dir.display(), "registry blob cache loaded");
        let cache = BlobCache { blobs, tmp, max_bytes, index: Mutex::new(index), tick: AtomicU64::new(1), counters: Counters::default() };
        cache.evict(0);
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `hex` is stored (touching it for the LRU).
    pub fn contains(&self, hex: &str) -> bool {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut idx = self.lock();
        match idx.slots.get_mut(hex) {
            Some(s) => {
                s.last_use = tick;
                true
            }
            None => false,
        }
    }

    /// The stored blob, opened, after checking its length and (once per load from disk) its hash.
    /// A damaged file is dropped and `None` returned: the request is then a miss.
    pub async fn open_blob(&self, hex: &str) -> Option<(tokio::fs::File, u64)> {
        let (len, verified) = {
            let idx = self.lock();
            let s = idx.slots.get(hex)?;
            (s.len, s.verified)
        };
        let path = self.blobs.join(hex);
        let want = hex.to_owned();
        let checked = tokio::task::spawn_blocking(move || -> Option<std::fs::File> {
            let mut f = std::fs::File::open(&path).ok()?;
            if f.metadata().ok()?.len() != len {
                return None;
            }
            if !verified {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = f.read(&mut buf).ok()?;
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                }
                if hex_of(ctx) != want {
                    return None;
                }
            }
            Some(f)
        })
        .await
        .ok()
        .flatten();
        match checked {
            Some(f) => {
                if let Some(s) = self.lock().slots.get_mut(hex) {
                    s.verified = true;
                }
                Some((tokio::fs::File::from_std(f), len))
            }
            None => {
                tracing::warn!(digest = %format_args!("sha256:{hex}"), "registry blob cache: stored blob damaged or gone; dropped, it will be fetched again");
                self.remove(hex);
                None
            }
        }
    }

    /// A stored blob's body, streamed from its file; counts a hit.
    pub fn serve(self: &Arc<Self>, file: tokio::fs::File, len: u64) -> ProxyBody {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let cache = self.clone();
        let stream = futures_util::stream::unfold((file, len), move |(mut file, left)| {
            let cache = cache.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let mut buf = BytesMut::with_capacity(CHUNK.min(left as usize));
                match file.read_buf(&mut buf).await {
                    Ok(0) => Some((Err(std::io::Error::other("cached blob shorter than stored")), (file, 0))),
                    Ok(n) => {
                        cache.counters.bytes_from_cache.fetch_add(n as u64, Ordering::Relaxed);
                        Some((Ok(buf.freeze()), (file, left.saturating_sub(n as u64))))
                    }
                    Err(e) => Some((Err(e), (file, 0))),
                }
            }
        });
        body_of(stream)
    }

    /// Counts a hit that needed no upstream request: the job's manifest grant covered the blob.
    pub fn granted(&self) {
        self.counters.granted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused upstream for a cached blob.
    pub fn denied(&self) {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Wraps an upstream blob body: it streams on to dockerd unchanged while it is written to a
    /// temporary file and hashed; at its end the file is published if the hash is `hex` (and the
    /// length `expected`, when announced), otherwise the transfer fails and nothing is stored.
    /// Counts a miss.
    pub fn tee(self: &Arc<Self>, hex: &str, expected: Option<u64>, body: ProxyBody) -> ProxyBody {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let temp = self.temp_path();
        let file = std::fs::File::options().write(true).create_new(true).open(&temp).ok().map(tokio::fs::File::from_std);
        if file.is_none() {
            tracing::warn!(path = %temp.display(), "registry blob cache: cannot create a temporary file; not caching");
        }
        let state = Tee {
            cache: self.clone(),
            hex: hex.to_owned(),
            expected,
            upstream: Box::pin(http_body_util::BodyDataStream::new(body)),
            guard: TempGuard(file.as_ref().map(|_| temp)),
            file,
            ctx: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            written: 0,
            held: None,
        };
        // The last chunk is held back until the digest is checked, so that a bad body ends the
        // transfer short of its length and dockerd sees it fail (at most one chunk is held).
        let stream = futures_util::stream::unfold(state, |mut t| async move {
            loop {
                let ctx = t.ctx.as_mut()?;
                match t.upstream.next().await {
                    Some(Ok(chunk)) => {
                        ctx.update(&chunk);
                        t.written += chunk.len() as u64;
                        t.cache.counters.bytes_from_upstream.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        if let Some(f) = t.file.as_mut() {
                            if let Err(e) = f.write_all(&chunk).await {
                                tracing::warn!(error = %e, "registry blob cache: write failed; this blob is not cached");
                                t.file = None;
                            }
                        }
                        if let Some(previous) = t.held.replace(chunk) {
                            return Some((Ok(previous), t));
                        }
                    }
                    Some(Err(e)) => {
                        t.ctx = None;
                        return Some((Err(e), t));
                    }
                    None => {
                        let got = hex_of(t.ctx.take()?);
                        if got != t.hex || t.expected.is_some_and(|n| n != t.written) {
                            t.cache.counters.corrupt.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target: "ctproxy::audit", digest = %format_args!("sha256:{}", t.hex), got = %format_args!("sha256:{got}"), bytes = t.written, "registry blob cache: the upstream sent a body that is not its digest; not stored");
                            let e: BoxError = format!("ctproxy: the upstream blob is not sha256:{} (got sha256:{got})", t.hex).into();
                            return Some((Err(e), t));
                        }
                        if let Some(mut f) = t.file.take() {
                            let flushed = f.flush().await.and(f.sync_data().await);
                            match (flushed, t.guard.0.take()) {
                                (Ok(()), Some(temp)) => t.cache.publish(&temp, &t.hex, t.written),
                                (Err(e), temp) => {
                                    t.guard.0 = temp;
                                    tracing::warn!(error = %e, "registry blob cache: write failed; this blob is not cached");
                                }
                                (Ok(()), None) => {}
                            }
                        }
                        let last = t.held.take()?;
                        return Some((Ok(last), t));
                    }
                }
            }
        });
        body_of(stream)
    }

    fn temp_path(&self) -> PathBuf {
        let mut rnd = [0u8; 12];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut rnd);
        self.tmp.join(format!("{}.part", rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }

    /// Moves a complete, checked body into place, evicting as needed. A blob over the whole budget
    /// is not kept.
    fn publish(&self, temp: &Path, hex: &str, len: u64) {
        if len > self.max_bytes {
            let _ = std::fs::remove_file(temp);
            return;
        }
        self.remove(hex);
        self.evict(len);
        if let Err(e) = std::fs::rename(temp, self.blobs.join(hex)) {
            tracing::warn!(error = %e, "registry blob cache: could not publish a blob");
            let _ = std::fs::remove_file(temp);
            return;
        }
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut idx = self.lock();
        idx.total += len;
        if let Some(old) = idx.slots.insert(hex.to_owned(), Slot { len, last_use: tick, verified: true }) {
            idx.total -= old.len;
        }
        tracing::debug!(digest = %format_args!("sha256:{hex}"), bytes = len, "registry blob cache: stored");
    }

    fn remove(&self, hex: &str) {
        let mut idx = self.lock();
        if let Some(s) = idx.slots.remove(hex) {
            idx.total -= s.len;
            let _ = std::fs::remove_file(self.blobs.join(hex));
        }
    }

    /// Makes room for `incoming` bytes, least recently used first. Readers of an evicted blob keep
    /// their open file.
    fn evict(&self, incoming: u64) {
        let mut idx = self.lock();
        if idx.total + incoming <= self.max_bytes {
            return;
        }
        let mut order: Vec<(u64, String)> = idx.slots.iter().map(|(k, s)| (s.last_use, k.clone())).collect();
        order.sort_unstable();
        for (_, hex) in order {
            if idx.total + incoming <= self.max_bytes {
                break;
            }
            if let Some(s) = idx.slots.remove(&hex) {
                idx.total -= s.len;
                let _ = std::fs::remove_file(self.blobs.join(&hex));
                tracing::debug!(digest = %format_args!("sha256:{hex}"), "registry blob cache: evicted");
            }
        }
    }

    pub fn stats(&self) -> BlobStats {
        let c = &self.counters;
        let (stored_bytes, entries) = {
            let idx = self.lock();
            (idx.total, idx.slots.len() as u64)
        };
        BlobStats {
            hits: c.hits.load(Ordering::Relaxed),
            granted: c.granted.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            bytes_from_cache: c.bytes_from_cache.load(Ordering::Relaxed),
            bytes_from_upstream: c.bytes_from_upstream.load(Ordering::Relaxed),
            stored_bytes,
            entries,
        }
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let s = self.stats();
        let mut out = String::new();
        for (name, kind, help, v) in [
            ("ctproxy_registry_blob_requests_total{outcome=\"hit\"}", "counter", "Blob GETs by outcome.", s.hits),
            ("ctproxy_registry_blob_requests_total{outcome=\"miss\"}", "", "", s.misses),
            ("ctproxy_registry_blob_requests_total{outcome=\"denied\"}", "", "", s.denied),
            (
                "ctproxy_registry_blob_manifest_grant_hits_total",
                "counter",
                "Blob hits served on the job's manifest grant, without an upstream request.",
                s.granted,
            ),
            ("ctproxy_registry_blob_corrupt_total", "counter", "Upstream blobs whose body was not their digest (not stored).", s.corrupt),
            (
                "ctproxy_registry_blob_bytes_total{source=\"cache\"}",
                "counter",
                "Blob bytes sent to dockerd, by source.",
                s.bytes_from_cache,
            ),
            ("ctproxy_registry_blob_bytes_total{source=\"upstream\"}", "", "", s.bytes_from_upstream),
            ("ctproxy_registry_blob_stored_bytes", "gauge", "Bytes of blobs stored.", s.stored_bytes),
            ("ctproxy_registry_blob_stored_entries", "gauge", "Blobs stored.", s.entries),
        ] {
            if !kind.is_empty() {
                let base = name.split('{').next().unwrap_or(name);
                let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} {kind}");
            }
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

struct Tee {
    cache: Arc<BlobCache>,
    hex: String,
    expected: Option<u64>,
    upstream: std::pin::Pin<Box<http_body_util::BodyDataStream<ProxyBody>>>,
    file: Option<tokio::fs::File>,
    guard: TempGuard,
    /// `None` once the stream has ended (or failed).
    ctx: Option<ring::digest::Context>,
    written: u64,
    /// The latest chunk, sent once the next one (or the digest check) is through.
    held: Option<Bytes>,
}

fn hex_of(ctx: ring::digest::Context) -> String {
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn body_of<S, E>(stream: S) -> ProxyBody
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError>,
{
    ProxyBody::boxed(http_body_util::StreamBody::new(stream.map(|r| r.map(Frame::data).map_err(Into::into))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn digest_of(b: &[u8]) -> String {
        hex_of({
            let mut c = ring::digest::Context::new(&ring::digest::SHA256);
            c.update(b);
            c
        })
    }

    async fn collect(body: ProxyBody) -> Result<Vec<u8>, String> {
        body.collect().await.map(|c| c.to_bytes().to_vec()).map_err(|e| e.to_string())
    }

    #[test]
    fn digests() {
        let h = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{h}")), Some(h.as_str()));
        for bad in [format!("sha256:{}", "A".repeat(64)), format!("sha512:{h}"), "sha256:ab".into(), format!("sha256:{h}/")] {
            assert_eq!(sha256_hex(&bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn verified_bodies_are_stored_and_bad_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::open(dir.path(), 1 << 20).unwrap());
        let good = vec![7u8; 300_000];
        let hex = digest_of(&good);
        let body = cache.tee(&hex, Some(good.len() as u64), ProxyBody::full(good.clone()));
        assert_eq!(collect(body).await.unwrap(), good);
        assert!(cache.contains(&hex));
        let (f, len) = cache.open_blob(&hex).await.unwrap();
        assert_eq!(collect(cache.serve(f, len)).await.unwrap(), good);

        // A body that is not its digest fails the transfer and leaves nothing behind.
        let other = digest_of(b"other");
        let body = cache.tee(&other, None, ProxyBody::full(good.clone()));
        assert!(collect(body).await.is_err());
        assert!(!cache.contains(&other));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.corrupt, s.entries), (1, 2, 1, 1));
    }

    #[tokio::test]
    async fn restart_rehashes_and_the_budget_evicts_lru() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(BlobCache::open(dir.path(), 100).unwrap());
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
        let hexes: Vec<String> = blobs.iter().map(|b| digest_of(b)).collect();
        for (b, h) in blobs.iter().zip(&hexes).take(2) {
            collect(cache.tee(h, None, ProxyBody::full(b.clone()))).await.unwrap();
        }
        assert!(cache.contains(&hexes[0]));
        collect(cache.tee(&hexes[2], None, ProxyBody::full(blobs[2].clone()))).await.unwrap();
        assert!(cache.contains(&hexes[0]) && cache.contains(&hexes[2]));
        assert!(!cache.contains(&hexes[1]), "least recently used goes first");
        drop(cache);
        // Damaged on disk while stopped: detected at first use, dropped, never served.
        std::fs::write(dir.path().join("blobs").join(&hexes[0]), [9u8; 40]).unwrap();
        std::fs::write(dir.path().join("blobs").join("junk"), b"x").unwrap();
        let cache = Arc::new(BlobCache::open(dir.path(), 100).unwrap());
        assert!(cache.open_blob(&hexes[0]).await.is_none());
        assert!(!cache.contains(&hexes[0]));
        assert!(cache.open_blob(&hexes[2]).await.is_some());
        assert!(!dir.path().join("blobs").join("junk").exists());
    }
}
