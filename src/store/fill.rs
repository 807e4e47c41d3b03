//! Coalesced fetches: concurrent misses for one URL make one upstream request, and every client
//! streams the body from the file being written as it arrives.
//!
//! **Why a growing file.** nginx's cache lock makes followers wait for the whole object, which is
//! minutes for a large layer; here the writer publishes how far the file is written on a `watch`
//! channel and readers follow with positional reads of the same file handle. The upstream body is
//! written by a task detached from any client, so one client going away does not fail the others.
//!
//! **Never another tenant's bytes.** The leader's response is shared only if it is storable and
//! was fetched without credentials, and only with followers whose request selects the same variant
//! (`Vary`). Everyone else fetches for themselves.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use hyper::header::HeaderMap;
use tokio::sync::watch;

/// How many bytes one read of a body file returns at most.
pub const CHUNK: usize = 256 * 1024;

/// The response head of a fill, as it will be replayed.
#[derive(Debug)]
pub struct Head {
    pub headers: HeaderMap,
    /// Content-Length announced upstream.
    pub len: Option<u64>,
    /// Followers may read it (storable, fetched without credentials).
    pub shareable: bool,
    /// The Vary names of the response and the leader's secondary key under them.
    pub vary: Vec<String>,
    pub leader_vary_key: String,
}

/// How a fill is getting on.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    pub head: Option<Arc<Head>>,
    pub written: u64,
    /// `Some(Ok(total))` once the whole body is written, `Some(Err(why))` when it failed.
    pub end: Option<Result<u64, Arc<str>>>,
}

/// One fetch in flight, shared by its readers.
pub struct Fill {
    pub file: Arc<File>,
    pub path: PathBuf,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Waits for the response head; `None` when the fill failed before it.
    pub async fn head(&self) -> Option<Arc<Head>> {
        let mut rx = self.progress.clone();
        let p = rx.wait_for(|p| p.head.is_some() || p.end.is_some()).await.ok()?;
        p.head.clone()
    }

    /// Waits until the body has a first byte, or ended; `Err(why)` when it failed before writing
    /// any (a follower then has nothing to share and fetches on its own).
    pub async fn first_byte(&self) -> Result<(), Arc<str>> {
        let mut rx = self.progress.clone();
        let Ok(p) = rx.wait_for(|p| p.written > 0 || p.end.is_some()).await else {
            return Err(Arc::from("the fetch ended"));
        };
        match &p.end {
            Some(Err(why)) if p.written == 0 => Err(why.clone()),
            _ => Ok(()),
        }
    }

    /// The body from `start` to `end` (exclusive; `None` = to the end), as it gets written.
    pub fn reader(&self, start: u64, end: Option<u64>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        read_growing(self.file.clone(), self.progress.clone(), start, end)
    }
}

/// The writer side, owned by the leader until it hands the body to the detached write task.
pub struct FillWriter {
    tx: watch::Sender<Progress>,
    file: Arc<File>,
    registry: Arc<Inflight>,
    key: String,
    finished: bool,
}

/// Fills in flight by key.
#[derive(Default)]
pub struct Inflight {
    fills: Mutex<HashMap<String, Arc<Fill>>>,
}

pub enum Joined {
    Leader(FillWriter, Arc<Fill>),
    Follower(Arc<Fill>),
}

impl Inflight {
    /// Joins the fill for `key`, or becomes its leader with a new temporary file from `temp`.
    pub fn join(self: &Arc<Self>, key: &str, temp: impl FnOnce() -> std::io::Result<(PathBuf, File)>) -> std::io::Result<Joined> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fills.get(key) {
            return Ok(Joined::Follower(f.clone()));
        }
        let (path, file) = temp()?;
        let file = Arc::new(file);
        let (tx, rx) = watch::channel(Progress::default());
        let fill = Arc::new(Fill { file: file.clone(), path, progress: rx });
        fills.insert(key.to_owned(), fill.clone());
        let writer = FillWriter { tx, file, registry: self.clone(), key: key.to_owned(), finished: false };
        Ok(Joined::Leader(writer, fill))
    }

    fn remove(&self, key: &str) {
        self.fills.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    /// Whether a fill for `key` is in flight (joining it then makes a follower, unless it ends first).
    pub fn contains(&self, key: &str) -> bool {
        self.fills.lock().map(|f| f.contains_key(key)).unwrap_or(false)
    }

    pub fn len(&self) -> usize {
        self.fills.lock().map(|f| f.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FillWriter {
    pub fn set_head(&self, head: Head) {
        self.tx.send_modify(|p| p.head = Some(Arc::new(head)));
    }

    /// Writes `body` to the file, publishing progress; returns the byte count and SHA-256 context.
    /// Small chunks are gathered so that a write (a blocking-pool round trip) moves up to
    /// [`CHUNK`] bytes.
    pub async fn write_body<S, E>(&mut self, mut body: S) -> Result<(u64, ring::digest::Context), String>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut written = 0u64;
        let mut buf = BytesMut::new();
        let mut ended = false;
        while !ended {
            // Gather what is ready now, up to CHUNK; wait only when nothing is buffered.
            loop {
                let next = if buf.is_empty() { Some(body.next().await) } else { body.next().now_or_never() };
                match next {
                    None => break, // nothing ready right now
                    Some(None) => {
                        ended = true;
                        break;
                    }
                    Some(Some(Ok(b))) => {
                        buf.extend_from_slice(&b);
                        if buf.len() >= CHUNK {
                            break;
                        }
                    }
                    Some(Some(Err(e))) => return Err(format!("upstream body: {e}")),
                }
            }
            if buf.is_empty() {
                continue;
            }
            let data = buf.split().freeze();
            ctx.update(&data);
            let file = self.file.clone();
            let at = written;
            let n = data.len() as u64;
            tokio::task::spawn_blocking(move || file.write_all_at(&data, at))
                .await
                .map_err(|e| format!("write task: {e}"))?
                .map_err(|e| format!("writing the cache file: {e}"))?;
            written += n;
            self.tx.send_modify(|p| p.written = written);
        }
        Ok((written, ctx))
    }

    /// Ends the fill: readers see the result; the key is free for the next miss.
    pub fn finish(mut self, result: Result<u64, String>) {
        self.finished = true;
        self.registry.remove(&self.key);
        self.tx.send_modify(|p| p.end = Some(result.map_err(Arc::from)));
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.registry.remove(&self.key);
            self.tx.send_modify(|p| {
                if p.end.is_none() {
                    p.end = Some(Err(Arc::from("the fetch was abandoned")));
                }
            });
        }
    }
}

/// Reads `[start, end)` of a file that may still be growing, following `progress`.
fn read_growing(
    file: Arc<File>,
    progress: watch::Receiver<Progress>,
    start: u64,
    end: Option<u64>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((file, progress, start), move |(file, mut progress, pos)| async move {
        loop {
            let (avail, done) = {
                let p = progress.borrow_and_update();
                (p.written, p.end.clone())
            };
            let limit = end.map_or(avail, |e| e.min(avail));
            if pos < limit {
                let want = ((limit - pos) as usize).min(CHUNK);
                let f = file.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = BytesMut::zeroed(want);
                    let n = f.read_at(&mut buf, pos)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>(buf.freeze())
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok(b) if b.is_empty() => {
                        Some((Err(std::io::Error::other("cache file shorter than written")), (file, progress, u64::MAX)))
                    }
                    Ok(b) => {
                        let n = b.len() as u64;
                        Some((Ok(b), (file, progress, pos + n)))
                    }
                    Err(e) => Some((Err(e), (file, progress, u64::MAX))),
                };
            }
            if pos == u64::MAX || end.is_some_and(|e| pos >= e) {
                return None;
            }
            match done {
                Some(Ok(_)) => return None,
                Some(Err(why)) => return Some((Err(std::io::Error::other(why.to_string())), (file, progress, u64::MAX))),
                None => {
                    if progress.changed().await.is_err() {
                        return Some((Err(std::io::Error::other("the fetch ended")), (file, progress, u64::MAX)));
                    }
                }
            }
        }
    })
}

/// A finished file (a stored entry) read as a stream of chunks.
pub fn read_file(file: File, start: u64, end: u64) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let (tx, rx) = watch::channel(Progress { head: None, written: end, end: Some(Ok(end)) });
    // The sender must outlive the stream only as long as it is needed: a finished progress never
    // changes, so dropping it is fine.
    drop(tx);
    read_growing(Arc::new(file), rx, start, Some(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> std::io::Result<(PathBuf, File)> {
        let f = tempfile::tempfile()?;
        Ok((PathBuf::from("/nonexistent"), f))
    }

    #[tokio::test]
    async fn followers_stream_while_the_leader_writes() {
        let inflight = Arc::new(Inflight::default());
        let Joined::Leader(mut writer, fill) = inflight.join("k", temp).unwrap() else { panic!("leader") };
        let Joined::Follower(follower) = inflight.join("k", temp).unwrap() else { panic!("follower") };
        assert!(Arc::ptr_eq(&fill, &follower));
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
        let reader = follower.reader(0, None);
        let collect = tokio::spawn(async move { reader.map(|r| r.unwrap()).collect::<Vec<_>>().await.concat() });
        let write = tokio::spawn(async move {
            let body = tokio_stream_from(rx);
            let r = writer.write_body(body).await.map(|(n, _)| n);
            writer.finish(r);
        });
        for i in 0..50u8 {
            tx.send(Ok(Bytes::from(vec![i; 10_000]))).await.unwrap();
        }
        drop(tx);
        write.await.unwrap();
        let got = collect.await.unwrap();
        assert_eq!(got.len(), 500_000);
        assert!(got.chunks(10_000).enumerate().all(|(i, c)| c.iter().all(|b| *b == i as u8)));
        assert!(inflight.is_empty());
    }

    #[tokio::test]
    async fn a_failed_fill_fails_its_readers() {
        let inflight = Arc::new(Inflight::default());
        let Joined::Leader(mut writer, fill) = inflight.join("k", temp).unwrap() else { panic!() };
        let reader = fill.reader(0, None);
        let body = futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err("reset")]);
        let r = writer.write_body(body).await.map(|(n, _)| n);
        assert!(r.is_err());
        writer.finish(r);
        let items: Vec<_> = reader.collect().await;
        assert!(items.last().unwrap().is_err());
    }

    #[tokio::test]
    async fn first_byte_tells_a_fill_that_failed_empty_from_one_that_started() {
        let inflight = Arc::new(Inflight::default());
        let Joined::Leader(mut writer, fill) = inflight.join("k", temp).unwrap() else { panic!() };
        let body = futures_util::stream::iter(vec![Err::<Bytes, _>("reset")]);
        let r = writer.write_body(body).await.map(|(n, _)| n);
        writer.finish(r);
        assert!(fill.first_byte().await.is_err(), "nothing was written");
        let Joined::Leader(mut writer, fill) = inflight.join("k", temp).unwrap() else { panic!() };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(4);
        let write = tokio::spawn(async move {
            let r = writer.write_body(tokio_stream_from(rx)).await.map(|(n, _)| n);
            writer.finish(r);
        });
        tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        assert!(fill.first_byte().await.is_ok(), "the body has started");
        tx.send(Err("reset".into())).await.unwrap();
        write.await.unwrap();
        assert!(fill.first_byte().await.is_ok(), "the body had started before it failed");
    }

    fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
