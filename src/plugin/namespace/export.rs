//! `docker export` in a namespace: the directories that ctproxy's CA injection made the daemon
//! create (mount points of read-only binds, and parents the image did not have) are left out of
//! the tar as it streams, so an exported file system is the job's own. Which paths those are is
//! read from the container's `changes` (see `response::hide_decoration`): only entries the daemon
//! reports as added, with nothing else of the job's under them.
//!
//! The filter reads tar headers as they pass (512-byte blocks, sizes from the header) and drops a
//! member only when its whole header names one of those paths and it has no data (directories);
//! a PAX extended header is held until the member it describes is known. Everything else passes
//! as the same bytes; an archive it cannot read passes on unchanged from there (the tar is the
//! daemon's, and nothing is dropped on a guess).

use std::collections::HashSet;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};

use crate::http::{BoxError, ProxyBody};

const BLOCK: usize = 512;
/// The largest PAX header held back.
const MAX_PAX: usize = 64 << 10;

enum State {
    /// Collecting a header block.
    Header,
    /// Passing `n` more bytes of data and padding.
    Data(u64),
    /// Holding a PAX header member (header and data) of `total` bytes until the next header.
    Pax { total: usize },
    /// Passing everything on unchanged (end of the archive, or something not understood).
    Pass,
}

pub struct ExportFilter {
    inner: ProxyBody,
    drop: HashSet<String>,
    state: State,
    buf: BytesMut,
    held: BytesMut,
    done: bool,
    /// How many members were left out.
    dropped: usize,
}

impl ExportFilter {
    /// `drop`: paths without leading or trailing `/` (`run/ctproxy-ca`).
    pub fn new(inner: ProxyBody, drop: HashSet<String>) -> ExportFilter {
        ExportFilter { inner, drop, state: State::Header, buf: BytesMut::new(), held: BytesMut::new(), done: false, dropped: 0 }
    }

    /// The same filter over bytes given by the caller ([`ExportFilter::feed`]), not a body: a
    /// committed layer (`super::commit`).
    pub fn detached(drop: HashSet<String>) -> ExportFilter {
        ExportFilter::new(ProxyBody::full(Bytes::new()), drop)
    }

    /// Filters the next piece of the archive into `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut BytesMut) {
        self.buf.extend_from_slice(data);
        self.process(out);
    }

    /// The end of the archive: whatever is held goes on as it is.
    pub fn finish(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(&self.held.split());
        out.extend_from_slice(&self.buf.split());
    }

    /// How many members were left out so far.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// Moves what can be decided from `buf` to the output.
    fn process(&mut self, out: &mut BytesMut) {
        loop {
            match self.state {
                State::Pass => {
                    out.extend_from_slice(&self.held.split());
                    out.extend_from_slice(&self.buf.split());
                    return;
                }
                State::Data(n) => {
                    let take = (n as usize).min(self.buf.len());
                    out.extend_from_slice(&self.buf.split_to(take));
                    let left = n - take as u64;
                    if left > 0 {
                        self.state = State::Data(left);
                        return;
                    }
                    self.state = State::Header;
                }
                State::Pax { total } => {
                    if self.held.len() + self.buf.len() < total {
                        let b = self.buf.split();
                        self.held.extend_from_slice(&b);
                        return;
                    }
                    let need = total - self.held.len();
                    let b = self.buf.split_to(need);
                    self.held.extend_from_slice(&b);
                    self.state = State::Header;
                }
                State::Header => {
                    if self.buf.len() < BLOCK {
                        return;
                    }
                    let h = self.buf.split_to(BLOCK);
                    if h.iter().all(|&b| b == 0) {
                        out.extend_from_slice(&self.held.split());
                        out.extend_from_slice(&h);
                        self.state = State::Pass;
                        continue;
                    }
                    let Some(size) = octal(&h[124..136]) else {
                        out.extend_from_slice(&self.held.split());
                        out.extend_from_slice(&h);
                        self.state = State::Pass;
                        continue;
                    };
                    let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
                    let kind = h[156];
                    if kind == b'x' && self.held.is_empty() && (padded as usize) < MAX_PAX {
                        self.held.extend_from_slice(&h);
                        self.state = State::Pax { total: BLOCK + padded as usize };
                        continue;
                    }
                    let pax_path = pax_path(&self.held);
                    let name = pax_path.unwrap_or_else(|| header_name(&h));
                    let key = name.trim_start_matches("./").trim_matches('/').to_owned();
                    if kind == b'5' && size == 0 && self.drop.contains(&key) {
                        self.dropped += 1;
                        self.held.clear();
                        self.state = State::Header;
                        continue;
                    }
                    out.extend_from_slice(&self.held.split());
                    out.extend_from_slice(&h);
                    self.state = State::Data(padded);
                }
            }
        }
    }
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c == ' ');
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The ustar name (`prefix/name`).
fn header_name(h: &[u8]) -> String {
    let name = cstr(&h[..100]);
    let prefix = if &h[257..262] == b"ustar" { cstr(&h[345..500]) } else { String::new() };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// The `path` record of a held PAX header member.
fn pax_path(held: &[u8]) -> Option<String> {
    let data = held.get(BLOCK..)?;
    let text = String::from_utf8_lossy(data);
    let mut rest: &str = &text;
    while let Some((len, _)) = rest.split_once(' ') {
        let n: usize = len.parse().ok()?;
        let record = rest.get(..n)?;
        let (_, kv) = record.split_once(' ')?;
        if let Some(v) = kv.trim_end_matches('\n').strip_prefix("path=") {
            return Some(v.to_owned());
        }
        rest = rest.get(n..)?;
    }
    None
}

impl Body for ExportFilter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    this.buf.extend_from_slice(&data);
                    let mut out = BytesMut::new();
                    this.process(&mut out);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    // Whatever is left (a truncated archive) goes on as it is.
                    let mut out = BytesMut::new();
                    out.extend_from_slice(&this.held.split());
                    out.extend_from_slice(&this.buf.split());
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: u8, size: usize) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o}\0");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    #[test]
    fn drops_only_the_named_empty_directories() {
        let mut tar = Vec::new();
        tar.extend(header("run/", b'5', 0));
        tar.extend(header("run/ctproxy-ca/", b'5', 0));
        tar.extend(header("etc/f", b'0', 3));
        tar.extend(b"abc".iter().copied().chain(std::iter::repeat_n(0, BLOCK - 3)));
        let pax_rec = "30 path=run/ctproxy-ca-longer\n";
        tar.extend(header("PaxHeaders/x", b'x', pax_rec.len()));
        tar.extend(pax_rec.bytes().chain(std::iter::repeat_n(0, BLOCK - pax_rec.len())));
        tar.extend(header("run/x", b'5', 0));
        tar.extend(vec![0u8; 2 * BLOCK]);
        let drop: HashSet<String> = ["run/ctproxy-ca".to_owned(), "run/ctproxy-ca-longer".to_owned()].into();
        let mut f = ExportFilter::new(ProxyBody::full(Bytes::new()), drop);
        // Fed in odd pieces.
        let mut out = BytesMut::new();
        for chunk in tar.chunks(100) {
            f.buf.extend_from_slice(chunk);
            f.process(&mut out);
        }
        let names: Vec<String> = out.chunks(BLOCK).filter(|b| b[257..262] == *b"ustar").map(header_name).collect();
        assert_eq!(names, vec!["run/", "etc/f"]);
        assert_eq!(out.len(), tar.len() - 4 * BLOCK);
    }
}
