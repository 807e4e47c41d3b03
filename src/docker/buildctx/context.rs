//! The build-context body: a tar stream passed through member by member, with the Dockerfile replaced.
//!
//! The tar is read the way dockerd reads it (Go's `archive/tar` plus moby's `Untar`), because a member
//! that ctproxy and the daemon see differently (name, size, type) is a Dockerfile ctproxy did not
//! rewrite: PAX `path`/`size` records and GNU long names override the header, header-only types have no
//! data whatever their size field says, names are `filepath.Clean`ed. Payloads are forwarded as the
//! slices they arrived in; only headers and the Dockerfile itself are copied.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use flate2::write::MultiGzDecoder;
use http_body::{Body, Frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The callback that rewrites the Dockerfile text.
pub type RewriteFn = Box<dyn FnMut(&str) -> Result<String, String> + Send>;

const BLOCK: usize = 512;
/// Go's `archive/tar` refuses PAX and GNU long-name records larger than this.
const MAX_SPECIAL: u64 = 1 << 20;
/// Decompressed bytes produced per step, so a gzip bomb cannot fill memory between two polls.
const INFLATE_STEP: usize = 256 * 1024;
/// dockerd's default (`builder.DefaultDockerfileName`).
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

/// Why a build context was refused. Every variant is the client's fault (answer 400) except
/// [`BuildContextError::Body`], a failure reading the request.
#[derive(Debug, thiserror::Error)]
pub enum BuildContextError {
    #[error("reading the build context: {0}")]
    Body(#[source] BoxError),
    #[error("build context compressed with {0} is not supported through ctproxy; send it uncompressed or gzip-compressed")]
    Compression(&'static str),
    #[error("build context is not a valid gzip stream: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("build context is not a valid tar archive: {0}")]
    Tar(&'static str),
    #[error("forbidden path outside the build context: {0}")]
    DockerfilePath(String),
    #[error("Dockerfile {path} is larger than {max} bytes")]
    DockerfileTooLarge { path: String, max: usize },
    #[error("Dockerfile {0} is not valid UTF-8")]
    NotUtf8(String),
    #[error("{0} in the build context must be a regular file")]
    NotRegular(String),
    #[error("build context member {path} lies under the symbolic link {link}")]
    UnderSymlink { path: String, link: String },
    /// The rewrite callback refused the Dockerfile; the message is the callback's.
    #[error("{0}")]
    Rewrite(String),
}

/// A build context (`POST /build` body) with its Dockerfile rewritten, as a streaming body.
///
/// A gzip-compressed context comes out uncompressed (dockerd accepts both), so the caller must drop
/// any `Content-Length` and `Content-Encoding` of the original request. On error the body ends with
/// the error, which aborts the request to dockerd before it has read a complete archive.
pub struct RewrittenContext<B> {
    body: Pin<Box<B>>,
    input: Input,
    tar: TarRewriter,
    out: VecDeque<Bytes>,
    finished: bool,
}

enum Input {
    /// Waiting for enough bytes to recognise a compression magic.
    Detect(BytesMut),
    Plain,
    Gzip {
        decoder: Box<MultiGzDecoder<Vec<u8>>>,
        pending: Bytes,
    },
}

impl<B> RewrittenContext<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// `dockerfile` is the `dockerfile` query parameter of `POST /build` (`None` or empty: the
    /// default). When it is the default, a lower-case `dockerfile` member is rewritten too, since
    /// dockerd falls back to it. `max_dockerfile` caps the size of the Dockerfile buffered.
    pub fn new(body: B, dockerfile: Option<&str>, max_dockerfile: usize, rewrite: RewriteFn) -> Result<Self, BuildContextError> {
        let raw = dockerfile.filter(|d| !d.is_empty()).unwrap_or(DEFAULT_DOCKERFILE);
        let path = member_key(raw);
        if path == ".." || path.starts_with("../") {
            return Err(BuildContextError::DockerfilePath(raw.to_string()));
        }
        let mut candidates = vec![path];
        if raw == DEFAULT_DOCKERFILE {
            candidates.push(DEFAULT_DOCKERFILE.to_lowercase());
        }
        Ok(RewrittenContext {
            body: Box::pin(body),
            input: Input::Detect(BytesMut::new()),
            tar: TarRewriter::new(candidates, max_dockerfile, rewrite),
            out: VecDeque::new(),
            finished: false,
        })
    }

    fn push_input(&mut self, data: Bytes, at_end: bool) -> Result<(), BuildContextError> {
        match &mut self.input {
            Input::Detect(buf) => {
                let head = if buf.is_empty() && (data.len() >= 6 || at_end) {
                    data // the usual case: no copy
                } else {
                    buf.extend_from_slice(&data);
                    if buf.len() < 6 && !at_end {
                        return Ok(());
                    }
                    buf.split().freeze()
                };
                self.input = match detect_compression(&head) {
                    None => Input::Plain,
                    Some("gzip") => Input::Gzip { decoder: Box::new(MultiGzDecoder::new(Vec::new())), pending: Bytes::new() },
                    Some(other) => return Err(BuildContextError::Compression(other)),
                };
                self.push_input(head, at_end)
            }
            Input::Plain => self.tar.feed(data, &mut self.out),
            Input::Gzip { pending, .. } => {
                debug_assert!(pending.is_empty());
                *pending = data;
                Ok(())
            }
        }
    }

    /// Inflates some pending gzip input into the tar reader.
    fn inflate_step(&mut self) -> Result<(), BuildContextError> {
        let Input::Gzip { decoder, pending } = &mut self.input else { return Ok(()) };
        while !pending.is_empty() && decoder.get_ref().len() < INFLATE_STEP {
            let n = decoder.write(pending).map_err(BuildContextError::Gzip)?;
            if n == 0 {
                return Err(BuildContextError::Gzip(std::io::Error::other("trailing data after the gzip stream")));
            }
            pending.advance(n);
        }
        decoder.flush().map_err(BuildContextError::Gzip)?;
        let inflated = std::mem::take(decoder.get_mut());
        if !inflated.is_empty() {
            self.tar.feed(Bytes::from(inflated), &mut self.out)?;
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        matches!(&self.input, Input::Gzip { pending, .. } if !pending.is_empty())
    }

    fn finish(&mut self) -> Result<(), BuildContextError> {
        if let Input::Detect(_) = self.input {
            self.push_input(Bytes::new(), true)?;
        }
        while self.has_pending() {
            self.inflate_step()?;
        }
        if let Input::Gzip { decoder, .. } = &mut self.input {
            decoder.try_finish().map_err(BuildContextError::Gzip)?;
            let inflated = std::mem::take(decoder.get_mut());
            if !inflated.is_empty() {
                self.tar.feed(Bytes::from(inflated), &mut self.out)?;
            }
        }
        self.tar.finish(&mut self.out)
    }
}

impl<B> Body for RewrittenContext<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BuildContextError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BuildContextError>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.out.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let step = if this.has_pending() {
                this.inflate_step()
            } else {
                match ready!(this.body.as_mut().poll_frame(cx)) {
                    None => {
                        this.finished = true;
                        this.finish()
                    }
                    Some(Err(e)) => Err(BuildContextError::Body(e.into())),
                    // Trailers are not part of the archive.
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if !data.is_empty() => this.push_input(data, false),
                        _ => Ok(()),
                    },
                }
            };
            if let Err(e) = step {
                this.finished = true;
                this.out.clear();
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.out.is_empty()
    }
}

/// moby's `DetectCompression` magics (zstd from newer versions, with its skippable frames).
fn detect_compression(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Some("gzip")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some("xz")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18])
    {
        Some("zstd")
    } else {
        None
    }
}

// === The tar reader ===

enum State {
    /// Collecting a 512-byte header.
    Header(BytesMut),
    /// Forwarding the data and padding of a member untouched.
    Skip(u64),
    /// Buffering a PAX or GNU long-name member (header, data, padding).
    Special { kind: u8, size: usize, total: usize, buf: BytesMut },
    /// Buffering the Dockerfile: header, then data and padding.
    Dockerfile { path: String, header: Bytes, size: usize, total: usize, buf: BytesMut },
    /// After one zero block: a second one ends the archive.
    Zero(BytesMut),
    /// After the end of the archive: dockerd ignores the rest, forwarded as it is.
    End,
}

/// The latest PAX extended header, which applies to the next member.
struct Pax {
    /// Index of its raw member in `held`.
    held: usize,
    records: Vec<(String, String)>,
}

struct TarRewriter {
    state: State,
    candidates: Vec<String>,
    max: usize,
    rewrite: RewriteFn,
    symlinks: HashSet<String>,
    /// Raw PAX/GNU members waiting for the member they describe.
    held: Vec<Bytes>,
    pax: Option<Pax>,
    long_name: Option<String>,
}

impl TarRewriter {
    fn new(candidates: Vec<String>, max: usize, rewrite: RewriteFn) -> Self {
        TarRewriter {
            state: State::Header(BytesMut::with_capacity(BLOCK)),
            candidates,
            max,
            rewrite,
            symlinks: HashSet::new(),
            held: Vec::new(),
            pax: None,
            long_name: None,
        }
    }

    fn feed(&mut self, mut data: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        while !data.is_empty() {
            match &mut self.state {
                State::Header(buf) | State::Zero(buf) => {
                    let n = (BLOCK - buf.len()).min(data.len());
                    buf.extend_from_slice(&data.split_to(n));
                    if buf.len() == BLOCK {
                        let block = buf.split().freeze();
                        if matches!(self.state, State::Zero(_)) {
                            if block.iter().any(|&b| b != 0) {
                                return Err(BuildContextError::Tar("a zero block followed by a header"));
                            }
                            out.push_back(block);
                            self.state = State::End;
                        } else {
                            self.on_header(block, out)?;
                        }
                    }
                }
                State::Skip(remaining) => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    out.push_back(data.split_to(n));
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header(BytesMut::with_capacity(BLOCK));
                    }
                }
                State::Special { total, buf, .. } | State::Dockerfile { total, buf, .. } => {
                    let n = (*total - buf.len()).min(data.len());
                    buf.extend_from_slice(&data.split_to(n));
                    if buf.len() == *total {
                        let state = std::mem::replace(&mut self.state, State::Header(BytesMut::with_capacity(BLOCK)));
                        match state {
                            State::Special { kind, size, buf, .. } => self.on_special(kind, size, buf.freeze(), out)?,
                            State::Dockerfile { path, header, size, buf, .. } => {
                                self.on_dockerfile(path, header, buf.freeze().slice(..size), out)?
                            }
                            _ => unreachable!("state checked above"),
                        }
                    }
                }
                State::End => {
                    out.push_back(data);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        match &self.state {
            // Go's reader takes a clean end of stream at a header boundary as the end of the archive.
            State::Header(buf) | State::Zero(buf) if buf.is_empty() => {}
            State::End => {}
            _ => return Err(BuildContextError::Tar("unexpected end of the archive")),
        }
        out.extend(self.held.drain(..));
        Ok(())
    }

    fn on_header(&mut self, block: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        if block.iter().all(|&b| b == 0) {
            out.extend(self.held.drain(..));
            self.pax = None;
            self.long_name = None;
            out.push_back(block);
            self.state = State::Zero(BytesMut::with_capacity(BLOCK));
            return Ok(());
        }
        let hdr = Header::parse(&block)?;
        match hdr.typeflag {
            b'x' | b'g' | b'L' | b'K' => {
                if hdr.size > MAX_SPECIAL {
                    return Err(BuildContextError::Tar("PAX or GNU long-name record too large"));
                }
                let size = hdr.size as usize;
                let mut buf = BytesMut::with_capacity(BLOCK + size + padding(size as u64) as usize);
                buf.extend_from_slice(&block);
                let total = BLOCK + size + padding(size as u64) as usize;
                self.state = State::Special { kind: hdr.typeflag, size, total, buf };
                if total == BLOCK {
                    let State::Special { kind, size, buf, .. } =
                        std::mem::replace(&mut self.state, State::Header(BytesMut::with_capacity(BLOCK)))
                    else {
                        unreachable!("just set")
                    };
                    self.on_special(kind, size, buf.freeze(), out)?;
                }
                return Ok(());
            }
            b'S' => return Err(BuildContextError::Tar("GNU sparse files are not supported")),
            _ => {}
        }
        // The member proper: apply the pending PAX records and GNU long name, as Go's reader does.
        let mut name = hdr.name;
        let mut size = hdr.size as i64;
        if let Some(pax) = &self.pax {
            for (k, v) in &pax.records {
                if v.is_empty() {
                    continue;
                }
                match k.as_str() {
                    "path" => name = v.clone(),
                    "size" => size = v.parse::<i64>().map_err(|_| BuildContextError::Tar("invalid PAX size record"))?,
                    _ => {}
                }
            }
        }
        if let Some(long) = &self.long_name {
            name = long.clone();
        }
        let mut typeflag = hdr.typeflag;
        if typeflag == 0 {
            typeflag = if name.ends_with('/') { b'5' } else { b'0' };
        }
        let data_len: u64 = if matches!(typeflag, b'1'..=b'6') {
            0
        } else {
            u64::try_from(size).map_err(|_| BuildContextError::Tar("negative member size"))?
        };
        let path = member_key(&name);
        self.check_symlinks(&path, typeflag)?;

        if self.candidates.contains(&path) && typeflag != b'5' {
            if typeflag != b'0' {
                return Err(BuildContextError::NotRegular(path));
            }
            if data_len > self.max as u64 {
                return Err(BuildContextError::DockerfileTooLarge { path, max: self.max });
            }
            let size = data_len as usize;
            let total = size + padding(data_len) as usize;
            self.state = State::Dockerfile { path, header: block, size, total, buf: BytesMut::with_capacity(total) };
            if total == 0 {
                let State::Dockerfile { path, header, .. } =
                    std::mem::replace(&mut self.state, State::Header(BytesMut::with_capacity(BLOCK)))
                else {
                    unreachable!("just set")
                };
                self.on_dockerfile(path, header, Bytes::new(), out)?;
            }
            return Ok(());
        }
        out.extend(self.held.drain(..));
        self.pax = None;
        self.long_name = None;
        out.push_back(block);
        let skip = data_len + padding(data_len);
        if skip > 0 {
            self.state = State::Skip(skip);
        }
        Ok(())
    }

    /// Refuses members written through a symbolic link of the archive (moby's untar follows them
    /// inside the context), and symbolic links over the directories of the Dockerfile path.
    fn check_symlinks(&mut self, path: &str, typeflag: u8) -> Result<(), BuildContextError> {
        for (i, _) in path.match_indices('/') {
            let dir = &path[..i];
            if self.symlinks.contains(dir) {
                return Err(BuildContextError::UnderSymlink { path: path.to_string(), link: dir.to_string() });
            }
        }
        if typeflag == b'2' {
            for c in &self.candidates {
                if c.starts_with(path) && c.as_bytes().get(path.len()) == Some(&b'/') {
                    return Err(BuildContextError::UnderSymlink { path: c.clone(), link: path.to_string() });
                }
            }
            self.symlinks.insert(path.to_string());
        }
        Ok(())
    }

    fn on_special(&mut self, kind: u8, size: usize, raw: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        let data = &raw[BLOCK..BLOCK + size];
        match kind {
            b'x' | b'g' => {
                let records = parse_pax(data)?;
                if records.iter().any(|(k, _)| k.starts_with("GNU.sparse.")) {
                    return Err(BuildContextError::Tar("GNU sparse files are not supported"));
                }
                if kind == b'g' {
                    // A global header is a member of its own to Go's reader, and ends whatever was pending.
                    out.extend(self.held.drain(..));
                    self.pax = None;
                    self.long_name = None;
                    out.push_back(raw);
                } else {
                    self.pax = Some(Pax { held: self.held.len(), records });
                    self.held.push(raw);
                }
            }
            b'L' => {
                self.long_name = Some(parse_string(data));
                self.held.push(raw);
            }
            _ => self.held.push(raw),
        }
        Ok(())
    }

    fn on_dockerfile(&mut self, path: String, header: Bytes, content: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        let text = std::str::from_utf8(&content).map_err(|_| BuildContextError::NotUtf8(path.clone()))?;
        let new = (self.rewrite)(text).map_err(BuildContextError::Rewrite)?;
        let new = Bytes::from(new.into_bytes());
        if let Some(pax) = self.pax.take() {
            if pax.records.iter().any(|(k, v)| k == "size" && !v.is_empty()) {
                // Drop the size record: the header's size field says it from now on.
                let kept: Vec<_> = pax.records.into_iter().filter(|(k, _)| k != "size").collect();
                let data = encode_pax(&kept);
                let mut pax_header = BytesMut::from(&self.held[pax.held][..BLOCK]);
                set_size(&mut pax_header, data.len() as u64);
                let mut member = BytesMut::with_capacity(BLOCK + data.len() + BLOCK);
                member.extend_from_slice(&pax_header);
                member.extend_from_slice(&data);
                member.resize(member.len() + padding(data.len() as u64) as usize, 0);
                self.held[pax.held] = member.freeze();
            }
        }
        self.long_name = None;
        let mut header = BytesMut::from(&header[..]);
        set_size(&mut header, new.len() as u64);
        out.extend(self.held.drain(..));
        out.push_back(header.freeze());
        let pad = padding(new.len() as u64) as usize;
        if !new.is_empty() {
            out.push_back(new);
        }
        if pad > 0 {
            out.push_back(Bytes::from(vec![0u8; pad]));
        }
        Ok(())
    }
}

fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// What Go's `readHeader` reads from a header block.
struct Header {
    name: String,
    typeflag: u8,
    size: u64,
}

impl Header {
    fn parse(b: &[u8]) -> Result<Header, BuildContextError> {
        let stored = parse_octal(&b[148..156]).ok_or(BuildContextError::Tar("invalid header checksum"))?;
        let (unsigned, signed) = checksums(b);
        if stored != unsigned && stored as i64 != signed {
            return Err(BuildContextError::Tar("invalid header checksum"));
        }
        let magic = &b[257..263];
        let mut name = parse_string(&b[0..100]);
        if magic == b"ustar\0" {
            let prefix = if &b[508..512] == b"tar\0" { &b[345..476] } else { &b[345..500] };
            let prefix = parse_string(prefix);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        // GNU (`ustar  \0`) and V7 headers have no prefix field.
        let size = parse_numeric(&b[124..136]).ok_or(BuildContextError::Tar("invalid size field"))?;
        Ok(Header { name, typeflag: b[156], size })
    }
}

fn checksums(b: &[u8]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &c) in b.iter().enumerate() {
        let c = if (148..156).contains(&i) { b' ' } else { c };
        unsigned += u64::from(c);
        signed += i64::from(c as i8);
    }
    (unsigned, signed)
}

/// Go's `parser.parseString`: up to the first NUL.
fn parse_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Go's `parseOctal`: spaces and NULs trimmed at both ends, cut at a NUL, strict octal.
fn parse_octal(b: &[u8]) -> Option<u64> {
    let start = b.iter().position(|&c| c != b' ' && c != 0).unwrap_or(b.len());
    let end = b.iter().rposition(|&c| c != b' ' && c != 0).map_or(start, |i| i + 1);
    let b = &b[start..end.max(start)];
    let b = &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())];
    if b.is_empty() {
        return Some(0);
    }
    if !b.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(b).ok()?, 8).ok()
}

/// Go's `parseNumeric`: base-256 when the high bit is set, octal otherwise. Negative or
/// overflowing sizes are errors to Go as well.
fn parse_numeric(b: &[u8]) -> Option<u64> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        if b[0] & 0x40 != 0 {
            return None;
        }
        let mut x: u64 = 0;
        for (i, &c) in b.iter().enumerate() {
            let c = if i == 0 { c & 0x7f } else { c };
            if x >> 56 > 0 {
                return None;
            }
            x = x << 8 | u64::from(c);
        }
        return (x >> 63 == 0).then_some(x);
    }
    parse_octal(b).filter(|&x| x >> 63 == 0)
}

/// Writes `size` in octal into a header and recomputes its checksum.
fn set_size(header: &mut [u8], size: u64) {
    let field = format!("{size:011o}\0");
    header[124..136].copy_from_slice(field.as_bytes());
    header[148..156].copy_from_slice(b"        ");
    let sum: u64 = header[..BLOCK].iter().map(|&c| u64::from(c)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Go's `parsePAX` records (`"%d %s=%s\n"`), in order.
fn parse_pax(mut s: &[u8]) -> Result<Vec<(String, String)>, BuildContextError> {
    const BAD: BuildContextError = BuildContextError::Tar("invalid PAX record");
    let mut records = Vec::new();
    while !s.is_empty() {
        let sp = s.iter().position(|&c| c == b' ').ok_or(BAD)?;
        let n: i64 = std::str::from_utf8(&s[..sp]).ok().and_then(|n| n.parse().ok()).ok_or(BAD)?;
        if n < 5 || n as u64 > s.len() as u64 {
            return Err(BAD);
        }
        let n = n as usize;
        if n <= sp + 1 || s[n - 1] != b'\n' {
            return Err(BAD);
        }
        let rec = &s[sp + 1..n - 1];
        let eq = rec.iter().position(|&c| c == b'=').ok_or(BAD)?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        let nul_checked = if matches!(k, b"path" | b"linkpath" | b"uname" | b"gname") { v } else { k };
        if k.is_empty() || nul_checked.contains(&0) {
            return Err(BAD);
        }
        let k = std::str::from_utf8(k).map_err(|_| BAD)?;
        let v = std::str::from_utf8(v).map_err(|_| BAD)?;
        records.push((k.to_string(), v.to_string()));
        s = &s[n..];
    }
    Ok(records)
}

fn encode_pax(records: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut n = body + 1;
        while n != body + n.to_string().len() {
            n = body + n.to_string().len();
        }
        out.extend_from_slice(format!("{n} {k}={v}\n").as_bytes());
    }
    out
}

/// The path moby's untar writes a member to, relative to the context root: `filepath.Clean`, then
/// joined under the root (a leading `/` is dropped).
pub(crate) fn member_key(name: &str) -> String {
    let cleaned = go_clean(name);
    match cleaned.trim_start_matches('/') {
        "" => ".".to_string(),
        rest => rest.to_string(),
    }
}

/// Go's `path/filepath.Clean` on Unix.
fn go_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|&l| l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests;
