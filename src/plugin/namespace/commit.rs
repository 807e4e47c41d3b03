//! `docker commit` in a namespace: the committed image is given without the mount points that
//! ctproxy's CA injection (`crate::cache`) made the daemon create in the container's layer.
//!
//! Why a rewrite: runc creates a bind's missing mount point (and its missing parents) in the
//! container's root file system, which is the container's read-write layer, when the container
//! starts; dockerd's commit takes that layer whole, and no API call removes an entry from it or
//! filters a commit. So after the daemon's commit, ctproxy saves the image, leaves those empty
//! directories out of its top layer (the same filter and the same choice of paths as `docker
//! export`, `super::export`), recomputes the layer's digests, the image config and manifest, loads
//! the result under the name the commit gave, and removes the daemon's image. The client is told
//! the new image's ID. Only the new top layer, config and manifest travel back: the daemon already
//! holds the lower layers (dockerd's legacy loader skips layers it has by chain ID, the containerd
//! store's import skips missing blobs it holds).
//!
//! What differs from the daemon's own commit: the ID (the layer is different, on purpose); a
//! classic-store image has no `Parent` (loaded images have none); an empty directory the job
//! itself made at one of the mount points is left out too (it cannot be told apart).
//!
//! When anything fails the daemon's image is kept and its ID returned (the commit happened), and
//! a warning is logged.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use bytes::BytesMut;
use hyper::{Method, StatusCode};
use ring::digest::{Context as Digest, SHA256};
use serde_json::{json, Value};

use super::daemon::enc;
use super::export::ExportFilter;
use super::{Daemon, NsError};

/// Rewrites the image `image` that the daemon committed from `container` under `reference` (its
/// daemon-side name); returns the new ID, or `None` when the image carries no mount point of
/// ctproxy's (nothing to do).
#[tracing::instrument(skip(daemon), level = "debug")]
pub async fn undecorate(daemon: &Daemon, container: &str, image: &str, reference: &str) -> Result<Option<String>, NsError> {
    // The mount points the daemon created and the parents that changed only for them.
    let paths = super::response::decoration_paths(daemon, container, true).await?;
    if paths.is_empty() {
        return Ok(None);
    }
    let saved = anonymous_file().map_err(io_err)?;
    let mut out = tokio::fs::File::from_std(saved.try_clone().map_err(io_err)?);
    daemon.download(&format!("/images/{}/get", enc(image)), &mut out).await?;
    drop(out);
    let reference_owned = reference.to_owned();
    let archive = tokio::task::spawn_blocking(move || rewrite(saved, &paths, &reference_owned))
        .await
        .map_err(|e| NsError::Daemon(e.to_string()))??;
    let Some(archive) = archive else { return Ok(None) };
    let loaded = daemon.client().send_file(Method::POST, "/images/load?quiet=1", "application/x-tar", archive).await?;
    let (status, body) = (loaded.status, loaded.body);
    if status != StatusCode::OK {
        return Err(NsError::Daemon(format!("load: {status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    for line in body.split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<Value>(line) {
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                return Err(NsError::Daemon(format!("load: {e}")));
            }
        }
    }
    let new = daemon
        .get(&format!("/images/{}/json", enc(reference)))
        .await?
        .and_then(|v| v.get("Id").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| NsError::Daemon(format!("{reference} not found after its load")))?;
    if new != image {
        // Untagged now; its parents stay (they are other images).
        let (status, body) = daemon.call(Method::DELETE, &format!("/images/{}?noprune=1", enc(image)), None).await?;
        if !status.is_success() {
            tracing::warn!(image, status = status.as_u16(), answer = %String::from_utf8_lossy(&body).trim(), "the daemon's committed image was not removed");
        }
    }
    Ok(Some(new))
}

fn io_err(e: std::io::Error) -> NsError {
    NsError::Daemon(format!("commit rewrite: {e}"))
}

fn bad(what: &str) -> NsError {
    NsError::Daemon(format!("commit rewrite: saved image not understood: {what}"))
}

/// A temporary file that is gone once closed.
fn anonymous_file() -> std::io::Result<File> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = std::env::temp_dir().join(format!("ctproxy-commit-{}-{n}-{nanos}", std::process::id()));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn sha256_hex(b: &[u8]) -> String {
    hex(ring::digest::digest(&SHA256, b).as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The members of a saved archive that describe the image.
struct Saved {
    manifest: Value,
    config: Value,
    /// `index.json` and the image manifest it names (containerd store, Docker 25+).
    oci: Option<(Value, Value)>,
}

fn read_member(saved: &mut File, name: &str) -> Result<Option<Vec<u8>>, NsError> {
    saved.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut ar = tar::Archive::new(&mut *saved);
    for entry in ar.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.to_string_lossy().trim_start_matches("./").to_owned();
        if path == name {
            let mut b = Vec::new();
            entry.by_ref().take(64 << 20).read_to_end(&mut b).map_err(io_err)?;
            return Ok(Some(b));
        }
    }
    Ok(None)
}

fn read_json(saved: &mut File, name: &str) -> Result<Option<Value>, NsError> {
    match read_member(saved, name)? {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|_| bad(name)),
        None => Ok(None),
    }
}

fn blob_path(digest: &str) -> Result<String, NsError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| bad("digest"))?;
    Ok(format!("blobs/sha256/{hex}"))
}

fn read_saved(saved: &mut File) -> Result<Saved, NsError> {
    let manifest = read_json(saved, "manifest.json")?.ok_or_else(|| bad("no manifest.json"))?;
    let entry = match manifest.as_array().map(Vec::as_slice) {
        Some([one]) => one.clone(),
        _ => return Err(bad("manifest.json")),
    };
    let config_path = entry.get("Config").and_then(Value::as_str).ok_or_else(|| bad("Config"))?;
    let config = read_json(saved, config_path)?.ok_or_else(|| bad("config"))?;
    let oci = match read_json(saved, "index.json")? {
        None => None,
        Some(index) => {
            let desc = match index.get("manifests").and_then(Value::as_array).map(Vec::as_slice) {
                Some([one]) => one.clone(),
                _ => return Err(bad("index.json")),
            };
            let path = blob_path(desc.get("digest").and_then(Value::as_str).unwrap_or(""))?;
            let m = read_json(saved, &path)?.ok_or_else(|| bad("image manifest"))?;
            if m.get("layers").is_none() {
                return Err(bad("not an image manifest"));
            }
            Some((desc, m))
        }
    };
    Ok(Saved { manifest: entry, config, oci })
}

/// A writer that hashes what passes.
struct Hashing<W> {
    inner: W,
    digest: Digest,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.digest.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The filtered top layer: its blob in a temporary file, its blob digest and size, its diff ID.
struct NewLayer {
    blob: File,
    digest: String,
    size: u64,
    diff_id: String,
}

/// Filters the member `name` (a layer, gzip-compressed or not) into a new blob of the same
/// compression; `None` when nothing was left out.
fn filter_layer(saved: &mut File, name: &str, drop: &HashSet<String>) -> Result<Option<NewLayer>, NsError> {
    saved.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut ar = tar::Archive::new(&mut *saved);
    for entry in ar.entries().map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let path = entry.path().map_err(io_err)?.to_string_lossy().trim_start_matches("./").to_owned();
        if path != name {
            continue;
        }
        let mut reader = BufReader::with_capacity(64 << 10, entry);
        let gzip = reader.fill_buf().map_err(io_err)?.starts_with(&[0x1f, 0x8b]);
        let mut input: Box<dyn Read + '_> = if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
        let blob = anonymous_file().map_err(io_err)?;
        let file = Hashing { inner: blob.try_clone().map_err(io_err)?, digest: Digest::new(&SHA256), len: 0 };
        let mut sink: Box<dyn WriteFinish> =
            if gzip { Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::default())) } else { Box::new(Plain(file)) };
        let mut diff = Digest::new(&SHA256);
        let mut filter = ExportFilter::detached(drop.clone());
        let mut buf = vec![0u8; 64 << 10];
        let mut out = BytesMut::new();
        loop {
            let n = input.read(&mut buf).map_err(io_err)?;
            if n == 0 {
                filter.finish(&mut out);
            } else {
                filter.feed(&buf[..n], &mut out);
            }
            diff.update(&out);
            sink.write_all(&out).map_err(io_err)?;
            out.clear();
            if n == 0 {
                break;
            }
        }
        if filter.dropped() == 0 {
            return Ok(None);
        }
        let file = sink.finish_box().map_err(io_err)?;
        let diff_id = format!("sha256:{}", hex(diff.finish().as_ref()));
        return Ok(Some(NewLayer { blob, digest: format!("sha256:{}", hex(file.digest.finish().as_ref())), size: file.len, diff_id }));
    }
    Err(bad("top layer missing"))
}

/// The layer sink: plain or gzip, finished into the hashing file.
trait WriteFinish: Write {
    fn finish_box(self: Box<Self>) -> std::io::Result<Hashing<File>>;
}

struct Plain(Hashing<File>);

impl Write for Plain {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl WriteFinish for Plain {
    fn finish_box(self: Box<Self>) -> std::io::Result<Hashing<File>> {
        let mut h = self.0;
        h.flush()?;
        Ok(h)
    }
}

impl WriteFinish for flate2::write::GzEncoder<Hashing<File>> {
    fn finish_box(self: Box<Self>) -> std::io::Result<Hashing<File>> {
        let mut h = (*self).finish()?;
        h.flush()?;
        Ok(h)
    }
}

fn append<W: Write>(b: &mut tar::Builder<W>, name: &str, data: impl Read, size: u64) -> Result<(), NsError> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).map_err(io_err)
}

/// The archive to load (a temporary file, rewound): the new top layer, config and manifest, named
/// `reference`; `None` when the top layer holds none of `drop`.
fn rewrite(mut saved: File, drop: &HashSet<String>, reference: &str) -> Result<Option<File>, NsError> {
    let s = read_saved(&mut saved)?;
    let layers: Vec<String> = s
        .manifest
        .get("Layers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("Layers"))?
        .iter()
        .filter_map(|l| l.as_str().map(str::to_owned))
        .collect();
    let top = layers.last().ok_or_else(|| bad("no layer"))?.clone();
    let Some(mut layer) = filter_layer(&mut saved, &top, drop)? else { return Ok(None) };
    let mut config = s.config;
    let diff_ids = config.pointer_mut("/rootfs/diff_ids").and_then(Value::as_array_mut).ok_or_else(|| bad("rootfs"))?;
    if diff_ids.len() != layers.len() {
        return Err(bad("rootfs and layers differ"));
    }
    if let Some(last) = diff_ids.last_mut() {
        *last = Value::String(layer.diff_id.clone());
    }
    let config_bytes = serde_json::to_vec(&config).map_err(|_| bad("config"))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config_bytes));
    let layer_path = blob_path(&layer.digest)?;
    let config_path = blob_path(&config_digest)?;

    let mut b = tar::Builder::new(anonymous_file().map_err(io_err)?);
    for dir in ["blobs", "blobs/sha256"] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty()).map_err(io_err)?;
    }
    layer.blob.seek(SeekFrom::Start(0)).map_err(io_err)?;
    append(&mut b, &layer_path, &mut layer.blob, layer.size)?;
    append(&mut b, &config_path, config_bytes.as_slice(), config_bytes.len() as u64)?;
    let mut new_layers: Vec<Value> = layers[..layers.len() - 1].iter().cloned().map(Value::String).collect();
    new_layers.push(Value::String(layer_path.clone()));
    let manifest = json!([{"Config": config_path, "RepoTags": [reference], "Layers": new_layers}]);
    if let Some((desc, mut m)) = s.oci {
        let cfg_media = m.pointer("/config/mediaType").cloned().unwrap_or(Value::Null);
        m["config"] = json!({"mediaType": cfg_media, "digest": config_digest, "size": config_bytes.len()});
        let last = m.get_mut("layers").and_then(Value::as_array_mut).and_then(|l| l.last_mut()).ok_or_else(|| bad("layers"))?;
        last["digest"] = Value::String(layer.digest.clone());
        last["size"] = json!(layer.size);
        let m_bytes = serde_json::to_vec(&m).map_err(|_| bad("manifest"))?;
        let m_digest = format!("sha256:{}", sha256_hex(&m_bytes));
        append(&mut b, &blob_path(&m_digest)?, m_bytes.as_slice(), m_bytes.len() as u64)?;
        let tag = reference.rsplit_once(':').map_or("latest", |(_, t)| t);
        let mut d = desc;
        d["digest"] = Value::String(m_digest);
        d["size"] = json!(m_bytes.len());
        d["annotations"] = json!({"io.containerd.image.name": reference, "org.opencontainers.image.ref.name": tag});
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [d]});
        let ib = serde_json::to_vec(&index).map_err(|_| bad("index"))?;
        append(&mut b, "index.json", ib.as_slice(), ib.len() as u64)?;
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append(&mut b, "oci-layout", &layout[..], layout.len() as u64)?;
    }
    let mb = serde_json::to_vec(&manifest).map_err(|_| bad("manifest.json"))?;
    append(&mut b, "manifest.json", mb.as_slice(), mb.len() as u64)?;
    let mut out = b.into_inner().map_err(io_err)?;
    out.seek(SeekFrom::Start(0)).map_err(io_err)?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).expect("dir");
    }

    fn layer() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for d in ["run/", "run/ctproxy-ca/", "etc/"] {
            dir(&mut b, d);
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "etc/f", &b"hi"[..]).expect("file");
        b.into_inner().expect("tar")
    }

    fn saved(layer: &[u8]) -> File {
        let diff = format!("sha256:{}", sha256_hex(layer));
        let config = serde_json::to_vec(&json!({"rootfs": {"type": "layers", "diff_ids": ["sha256:aa", diff]}})).expect("json");
        let mut b = tar::Builder::new(Vec::new());
        append(&mut b, "lower/layer.tar", &b""[..], 0).expect("a");
        append(&mut b, "top/layer.tar", layer, layer.len() as u64).expect("a");
        append(&mut b, "c.json", config.as_slice(), config.len() as u64).expect("a");
        let m = serde_json::to_vec(&json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["lower/layer.tar", "top/layer.tar"]}]))
            .expect("json");
        append(&mut b, "manifest.json", m.as_slice(), m.len() as u64).expect("a");
        let mut f = anonymous_file().expect("tmp");
        f.write_all(&b.into_inner().expect("tar")).expect("write");
        f
    }

    fn names(tar: &[u8]) -> Vec<String> {
        tar::Archive::new(tar).entries().expect("tar").map(|e| e.expect("entry").path().expect("p").display().to_string()).collect()
    }

    #[test]
    fn the_top_layer_loses_the_mount_points_and_the_config_follows() {
        let drop: HashSet<String> = ["run".to_owned(), "run/ctproxy-ca".to_owned()].into();
        let out = rewrite(saved(&layer()), &drop, "reg/ns/x:1").expect("rewrite").expect("changed");
        let mut ar = tar::Archive::new(out);
        let mut layer_names = Vec::new();
        let mut config = Value::Null;
        let mut manifest = Value::Null;
        let mut layer_digest = String::new();
        for e in ar.entries().expect("tar") {
            let mut e = e.expect("entry");
            let p = e.path().expect("p").display().to_string();
            let mut b = Vec::new();
            e.read_to_end(&mut b).expect("read");
            if p == "manifest.json" {
                manifest = serde_json::from_slice(&b).expect("json");
            } else if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                config = v;
            } else if p.starts_with("blobs/sha256/") && !b.is_empty() {
                layer_names = names(&b);
                layer_digest = format!("sha256:{}", sha256_hex(&b));
                assert_eq!(p, blob_path(&layer_digest).expect("path"));
            }
        }
        assert_eq!(layer_names, vec!["etc/", "etc/f"]);
        assert_eq!(config.pointer("/rootfs/diff_ids/1").and_then(Value::as_str), Some(layer_digest.as_str()));
        assert_eq!(manifest[0]["RepoTags"][0], "reg/ns/x:1");
        assert_eq!(manifest[0]["Layers"][0], "lower/layer.tar");
    }

    #[test]
    fn a_layer_without_the_mount_points_is_left_alone() {
        let drop: HashSet<String> = ["usr/local/share/ca-certificates/ctproxy".to_owned()].into();
        assert!(rewrite(saved(&layer()), &drop, "reg/ns/x:1").expect("rewrite").is_none());
    }
}
