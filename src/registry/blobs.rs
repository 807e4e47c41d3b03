//! The registry proxy's blob cache: layer and config blobs kept by digest in the content store
//! (`crate::store`), so a job pulling an image another job already pulled moves no layer bytes from
//! the origin.
//!
//! **Never another namespace's blob.** A blob is content-addressed, but who may read it is decided
//! by the registry, per repository: a cached blob is served to a request only after the upstream
//! accepted that request's own credentials for it: either for an image manifest of that repository
//! that references it (a manifest grant of the token, see `manifest` and `TokenStore::grant_blobs`),
//! or, failing that, for the blob itself (a `HEAD /v2/<repo>/blobs/<digest>` with the grant's auth
//! answering 2xx, or a redirect, which a registry only signs for a reader), checked on that use.
//! The same holds for a blob still being fetched for another request (below).
//!
//! **One upstream fetch per blob.** Concurrent misses of one digest join one fill
//! (`store::fill`): the first request (the leader) fetches it with its own credentials; the
//! upstream body is written to a temporary file by a task detached from any client, and every
//! requester, the leader included, streams that file as it grows. A follower is let in only after
//! its own access check; if the leader's fetch fails before its head, followers start again (one of
//! them becomes the next leader).
//!
//! **Nothing unverified is stored or served whole.** The body is hashed as it is written; it is
//! published into the store only if its SHA-256 is the digest it was fetched as (and its length the
//! announced one). Readers hold back the last chunk until that check is through, so a bad body ends
//! every transfer short of its length and dockerd sees it fail. Entries found at start are hashed
//! again before their first use (`Store::check`).
//!
//! **Which store.** By default the HTTP cache's store (`[cache] dir`), one byte budget (`[cache]
//! max_bytes`) and one LRU for package files and layers. `[registry_proxy] cache_dir` gives the
//! registry proxy a store of its own instead (a host without `[cache]`, or layers that must not
//! compete with packages for room), with its own budget `cache_max_bytes`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body::Frame;

use crate::http::ProxyBody;
use crate::store::fill::{self, Fill, FillWriter, Head, Inflight, Joined};
use crate::store::{Entry, Meta, Store, StoreError, BLOB_KEY_PREFIX};

/// The byte budget of a store of its own when the configuration gives none.
pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `sha256:<64 lower-case hex>` → the hex. Other algorithms and spellings are not cached.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// The store key of a blob.
fn key(hex: &str) -> String {
    format!("{BLOB_KEY_PREFIX}sha256:{hex}")
}

/// Counters of the blob cache, rendered as `ctproxy_registry_blob_*`.
#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    /// Hits served on a manifest grant, without an upstream request (a subset of `hits`).
    granted: AtomicU64,
    misses: AtomicU64,
    /// Requests that joined another request's fetch of the same blob (after their own check).
    coalesced: AtomicU64,
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
    /// Requests served from another request's fetch in flight (neither a hit nor a miss).
    pub coalesced: u64,
    pub denied: u64,
    pub corrupt: u64,
    /// Bytes sent to dockerd from the store or from another request's fetch.
    pub bytes_from_cache: u64,
    /// Bytes fetched from upstream registries (once per fetch, however many requesters).
    pub bytes_from_upstream: u64,
    /// Blob bytes and entries in the store (a shared store holds other entries too).
    pub stored_bytes: u64,
    pub entries: u64,
}

/// Blobs by digest in a content store, with the fills in flight.
pub struct BlobCache {
    store: Arc<Store>,
    inflight: Arc<Inflight>,
    counters: Arc<Counters>,
}

/// A stored blob, checked and ready to be served.
pub struct Stored(Arc<Entry>);

impl Stored {
    pub fn len(&self) -> u64 {
        self.0.len
    }

    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
}

/// What a miss became: the fetch to make, or another request's fetch to join.
pub enum Miss {
    Leader(Leader),
    Follower(Arc<Fill>),
}

/// The right (and duty) to fetch a blob for everyone who asks meanwhile. Dropped without
/// [`BlobCache::fill`] (the upstream did not answer 200), its temporary file is removed and the
/// followers start again.
pub struct Leader {
    /// `None` once handed to the write task.
    writer: Option<FillWriter>,
    fill: Arc<Fill>,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.fill.path);
        }
    }
}

impl BlobCache {
    /// A store of its own in `dir` (`objects/`, `tmp/`), with budget `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<BlobCache, StoreError> {
        Ok(BlobCache::shared(Arc::new(Store::open(dir, max_bytes)?)))
    }

    /// Blobs in `store`, which the HTTP cache uses too.
    pub fn shared(store: Arc<Store>) -> BlobCache {
        let (bytes, entries) = store.usage_of(BLOB_KEY_PREFIX);
        tracing::info!(entries, bytes, "registry blob cache ready");
        BlobCache { store, inflight: Arc::default(), counters: Arc::default() }
    }

    /// The stored blob, after checking its length and (once per load from disk) its hash. A damaged
    /// entry is dropped and `None` returned: the request is then a miss.
    pub async fn lookup(&self, hex: &str) -> Option<Stored> {
        let entry = self.store.get(&key(hex))?;
        let (store, e) = (self.store.clone(), entry.clone());
        let ok = tokio::task::spawn_blocking(move || store.check(&e)).await.unwrap_or(false);
        ok.then_some(Stored(entry))
    }

    /// A stored blob's body; counts a hit.
    pub fn serve(&self, stored: Stored) -> Result<ProxyBody, std::io::Error> {
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        let entry = stored.0;
        if let Some(b) = entry.inline() {
            self.counters.bytes_from_cache.fetch_add(b.len() as u64, Ordering::Relaxed);
            return Ok(ProxyBody::full(b));
        }
        let file = std::fs::File::open(&entry.path)?;
        Ok(body_of(self.counted(fill::read_file(file, 0, entry.len))))
    }

    /// Joins the fill of `hex` in flight, or becomes its leader.
    pub fn miss(&self, hex: &str) -> Result<Miss, std::io::Error> {
        let store = self.store.clone();
        Ok(match self.inflight.join(&key(hex), move || store.temp_file().map_err(std::io::Error::other))? {
            Joined::Leader(writer, fill) => Miss::Leader(Leader { writer: Some(writer), fill }),
            Joined::Follower(fill) => Miss::Follower(fill),
        })
    }

    /// The leader's upstream answer (200): its body is written to the fill by a detached task,
    /// hashed, and published if it is `hex` (and `expected` bytes long, when announced). Returns the
    /// leader's own body, read from the fill. Counts a miss.
    pub fn fill(&self, leader: Leader, hex: &str, expected: Option<u64>, body: ProxyBody) -> ProxyBody {
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let mut leader = leader;
        let fill = leader.fill.clone();
        let Some(mut writer) = leader.writer.take() else {
            return body; // not reachable: only `fill` takes the writer, and it consumes the leader
        };
        writer.set_head(Head { headers: Default::default(), len: expected, shareable: true, vary: vec![], leader_vary_key: String::new() });
        let (store, counters, hex_owned, path) = (self.store.clone(), self.counters.clone(), hex.to_owned(), fill.path.clone());
        let upstream = http_body_util::BodyDataStream::new(body).map(move |r| {
            if let Ok(b) = &r {
                counters.bytes_from_upstream.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            r
        });
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let result = match writer.write_body(Box::pin(upstream)).await {
                Ok((written, ctx)) => {
                    let got = crate::store::finish_hex(ctx);
                    if got != hex_owned || expected.is_some_and(|n| n != written) {
                        counters.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(target: "ctproxy::audit", digest = %format_args!("sha256:{hex_owned}"), got = %format_args!("sha256:{got}"), bytes = written, "registry blob cache: the upstream sent a body that is not its digest; not stored");
                        Err(format!("ctproxy: the upstream blob is not sha256:{hex_owned} (got sha256:{got})"))
                    } else {
                        Ok(written)
                    }
                }
                Err(e) => Err(e),
            };
            let published = match &result {
                Ok(len) => {
                    let meta = blob_meta(&hex_owned, *len);
                    let (s, p) = (store.clone(), path.clone());
                    match tokio::task::spawn_blocking(move || s.publish(&p, meta)).await {
                        Ok(Ok(_)) => {
                            tracing::debug!(digest = %format_args!("sha256:{hex_owned}"), bytes = len, "registry blob cache: stored");
                            true
                        }
                        Ok(Err(e)) => {
                            tracing::info!(error = %e, "registry blob cache: blob not stored");
                            false
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "registry blob cache: publish task failed");
                            false
                        }
                    }
                }
                Err(_) => false,
            };
            if !published {
                // Readers keep their open handle; the name goes before anyone is told the end.
                let _ = std::fs::remove_file(&path);
            }
            writer.finish(result);
        });
        self.read_fill(&fill)
    }

    /// A follower's body, once its access was checked: `None` if the fill failed before its head
    /// (the caller tries again). Counts a coalesced request.
    pub async fn follow(&self, fill: &Fill) -> Option<(ProxyBody, Option<u64>)> {
        let head = fill.head().await?;
        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
        Some((self.read_fill(fill), head.len))
    }

    fn read_fill(&self, fill: &Fill) -> ProxyBody {
        body_of(hold_last(self.counted(fill.reader(0, None))))
    }

    /// Counts the bytes of a body that did not come from upstream for this request.
    fn counted<S>(&self, s: S) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let counters = self.counters.clone();
        s.map(move |r| {
            if let Ok(b) = &r {
                counters.bytes_from_cache.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
            r
        })
    }

    /// Counts a hit that needed no upstream request: the job's manifest grant covered the blob.
    pub fn granted(&self) {
        self.counters.granted.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused upstream for a cached blob (or one being fetched).
    pub fn denied(&self) {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> BlobStats {
        let c = &self.counters;
        let (stored_bytes, entries) = self.store.usage_of(BLOB_KEY_PREFIX);
        BlobStats {
            hits: c.hits.load(Ordering::Relaxed),
            granted: c.granted.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            bytes_from_cache: c.bytes_from_cache.load(Ordering::Relaxed),
            bytes_from_upstream: c.bytes_from_upstream.load(Ordering::Relaxed),
            stored_bytes,
            entries: entries as u64,
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
            ("ctproxy_registry_blob_requests_total{outcome=\"coalesced\"}", "", "", s.coalesced),
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

/// The store's record of a blob: no headers (the answer is built from the digest), never stale,
/// `credentialed` (every use is checked by the registry proxy; the HTTP cache never looks it up).
fn blob_meta(hex: &str, len: u64) -> Meta {
    let key = key(hex);
    Meta {
        primary: key.clone(),
        key,
        headers: vec![],
        len,
        sha256: hex.to_owned(),
        stored_at: crate::store::now_secs(),
        fresh_until: u64::MAX,
        etag: None,
        last_modified: None,
        credentialed: true,
        vary: vec![],
    }
}

/// Holds the latest chunk back until the next one (or the clean end) arrives: a fill that ends in
/// an error (a digest mismatch found after the last byte was written) then ends the transfer short
/// of its length, so the client sees it fail instead of a complete, unverified body.
fn hold_last<S>(s: S) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    futures_util::stream::unfold((Box::pin(s), None::<Bytes>, false), |(mut s, mut held, done)| async move {
        if done {
            return None;
        }
        loop {
            match s.next().await {
                Some(Ok(chunk)) => {
                    if let Some(previous) = held.replace(chunk) {
                        return Some((Ok(previous), (s, held, false)));
                    }
                }
                Some(Err(e)) => return Some((Err(e), (s, None, true))),
                None => return held.take().map(|last| (Ok(last), (s, None, true))),
            }
        }
    })
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
        crate::store::hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    async fn collect(body: ProxyBody) -> Result<Vec<u8>, String> {
        body.collect().await.map(|c| c.to_bytes().to_vec()).map_err(|e| e.to_string())
    }

    fn leader(cache: &BlobCache, hex: &str) -> Leader {
        match cache.miss(hex).unwrap() {
            Miss::Leader(l) => l,
            Miss::Follower(_) => panic!("no fill in flight"),
        }
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
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let good = vec![7u8; 300_000];
        let hex = digest_of(&good);
        let body = cache.fill(leader(&cache, &hex), &hex, Some(good.len() as u64), ProxyBody::full(good.clone()));
        assert_eq!(collect(body).await.unwrap(), good);
        let stored = cache.lookup(&hex).await.expect("stored");
        assert_eq!(collect(cache.serve(stored).unwrap()).await.unwrap(), good);

        // A body that is not its digest fails the transfer and leaves nothing behind.
        let other = digest_of(b"other");
        let body = cache.fill(leader(&cache, &other), &other, None, ProxyBody::full(good.clone()));
        assert!(collect(body).await.is_err());
        assert!(cache.lookup(&other).await.is_none());
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let s = cache.stats();
        assert_eq!((s.hits, s.misses, s.corrupt, s.entries), (1, 2, 1, 1));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let data = vec![3u8; 200_000];
        let hex = digest_of(&data);
        let first = leader(&cache, &hex);
        let Miss::Follower(fill) = cache.miss(&hex).unwrap() else { panic!("the second miss must join the first") };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let upstream = ProxyBody::boxed(http_body_util::StreamBody::new(tokio_stream(rx).map(|r| r.map(Frame::data))));
        let lead = cache.fill(first, &hex, Some(data.len() as u64), upstream);
        let (follow, len) = cache.follow(&fill).await.expect("the head is known");
        assert_eq!(len, Some(data.len() as u64));
        let readers = tokio::spawn(async move { (collect(lead).await, collect(follow).await) });
        for c in data.chunks(50_000) {
            tx.send(Ok(Bytes::copy_from_slice(c))).await.unwrap();
        }
        drop(tx);
        let (a, b) = readers.await.unwrap();
        assert_eq!((a.unwrap(), b.unwrap()), (data.clone(), data));
        let s = cache.stats();
        assert_eq!((s.misses, s.coalesced, s.entries, s.bytes_from_upstream), (1, 1, 1, 200_000));
    }

    #[test]
    fn an_abandoned_fetch_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 1 << 20).unwrap();
        let hex = digest_of(b"x");
        drop(leader(&cache, &hex));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(matches!(cache.miss(&hex).unwrap(), Miss::Leader(_)), "the next miss leads again");
    }

    fn tokio_stream<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn restart_rehashes_and_the_budget_evicts_lru() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        let blobs: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 40]).collect();
        let hexes: Vec<String> = blobs.iter().map(|b| digest_of(b)).collect();
        for (b, h) in blobs.iter().zip(&hexes).take(2) {
            collect(cache.fill(leader(&cache, h), h, None, ProxyBody::full(b.clone()))).await.unwrap();
        }
        let path0 = cache.lookup(&hexes[0]).await.expect("stored").0.path.clone();
        collect(cache.fill(leader(&cache, &hexes[2]), &hexes[2], None, ProxyBody::full(blobs[2].clone()))).await.unwrap();
        assert!(cache.lookup(&hexes[0]).await.is_some() && cache.lookup(&hexes[2]).await.is_some());
        assert!(cache.lookup(&hexes[1]).await.is_none(), "least recently used goes first");
        drop(cache);
        // Damaged on disk while stopped: detected at first use, dropped, never served.
        std::fs::write(&path0, [9u8; 40]).unwrap();
        let cache = BlobCache::open(dir.path(), 100).unwrap();
        assert!(cache.lookup(&hexes[0]).await.is_none());
        assert!(cache.lookup(&hexes[2]).await.is_some());
        assert_eq!(cache.stats().entries, 1);
    }
}
