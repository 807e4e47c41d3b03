//! The build-context body: a tar stream passed through member by member, with the Dockerfile replaced.
//!
//! The tar is read the way dockerd reads it (Go's `archive/tar` plus moby's `Untar`), because a member
//! that ctproxy and the daemon see differently (name, size, type) is a Dockerfile ctproxy did not
//! rewrite: PAX `path`/`size` records and GNU long names override the header, header-only types have no
//! data whatever their size field says, names are `filepath.Clean`ed. Payloads are forwarded as the
//! slices they arrived in; only headers and the Dockerfile itself are copied.
//!
//! The rewrite may be asynchronous ([`RewrittenContext::with_async`]): while its future runs (the
//! caller asks the daemon about base images, or fetches `ADD` URLs), the archive stops where the
//! Dockerfile ends and no more of the request is read, so nothing is buffered but the Dockerfile and
//! the one input chunk it ended in. Its answer may add files ([`Appended`]) to the archive: they are
//! streamed from their (temporary) files just before the end-of-archive blocks, where dockerd's untar
//! still reads them, under [`RESERVED_DIR`], which the client's own members may not use.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use flate2::write::MultiGzDecoder;
use http_body::{Body, Frame};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The callback that rewrites the Dockerfile text.
pub type RewriteFn = Box<dyn FnMut(&str) -> Result<String, String> + Send>;

/// The asynchronous rewrite of one Dockerfile (its text as read from the archive).
pub type AsyncRewriteFn = Box<dyn FnMut(String) -> RewriteFuture + Send>;
pub type RewriteFuture = Pin<Box<dyn Future<Output = Result<Rewritten, BuildContextError>> + Send>>;
/// Files to append to the archive, awaited only when the client's archive has ended: the caller can
/// produce them (download them) while the rest of the context streams by.
pub type Appendix = Pin<Box<dyn Future<Output = Result<Vec<Appended>, BuildContextError>> + Send>>;

/// What an asynchronous rewrite made of a Dockerfile.
pub struct Rewritten {
    pub dockerfile: String,
    pub appendix: Option<Appendix>,
}

/// A regular file added to the archive.
pub struct Appended {
    /// Its path in the archive: under [`RESERVED_DIR`], clean (no `.`/`..`, no leading `/`).
    pub path: String,
    /// Permission bits, as dockerd's untar will set them.
    pub mode: u32,
    /// Modification time in seconds since the epoch, as dockerd's untar will set it.
    pub mtime: u64,
    /// Exactly the number of bytes read from `file`, from its current position.
    pub size: u64,
    pub file: tokio::fs::File,
}

/// The directory of the build context where appended files go. A client archive with a member there
/// is refused when something is appended: its member could stand in for ctproxy's.
pub const RESERVED_DIR: &str = ".ctproxy";
/// Bytes of an appended file read per step (one frame of the body).
const APPEND_CHUNK: usize = 64 * 1024;

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
    /// bzip2, xz and zstd, which dockerd reads: ctproxy only reads plain and gzip contexts (400).
    #[error("{}", compression(.0))]
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
    /// The rewrite refused the build for what it would make the daemon do (answer 403); the
    /// message is the caller's.
    #[error("{0}")]
    Refused(String),
    /// Something the rewrite needed failed on ctproxy's side (answer 502).
    #[error("{0}")]
    Unavailable(String),
    #[error("the build context path {0} is reserved for files ctproxy adds to the context")]
    Reserved(String),
}

fn compression(name: &str) -> String {
    let what = format!("a build context compressed with {name} is not supported through ctproxy (send it uncompressed or gzip-compressed)");
    crate::plugin::ns_refusal(&what, crate::plugin::Layer::Build, &crate::plugin::Remedy::Never)
}

impl BuildContextError {
    /// The HTTP status of the answer to a client whose build context failed this way.
    pub fn status(&self) -> hyper::StatusCode {
        match self {
            BuildContextError::Refused(_) => hyper::StatusCode::FORBIDDEN,
            BuildContextError::Unavailable(_) => hyper::StatusCode::BAD_GATEWAY,
            _ => hyper::StatusCode::BAD_REQUEST,
        }
    }
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
    /// The client's body has ended; what is left is being finished ([`Self::finish_step`]).
    body_done: bool,
    /// Everything has been produced (or an error ended the body).
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
        Self::build(body, dockerfile, max_dockerfile, Rewriter::Sync(rewrite))
    }

    /// The same with an asynchronous rewrite, which may also add files to the archive.
    pub fn with_async(
        body: B,
        dockerfile: Option<&str>,
        max_dockerfile: usize,
        rewrite: AsyncRewriteFn,
    ) -> Result<Self, BuildContextError> {
        Self::build(body, dockerfile, max_dockerfile, Rewriter::Async(rewrite))
    }

    fn build(body: B, dockerfile: Option<&str>, max_dockerfile: usize, rewrite: Rewriter) -> Result<Self, BuildContextError> {
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
            body_done: false,
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

    /// One step of finishing after the client's body ended; `true` once nothing is left to do.
    /// Steps, because each may stop at an asynchronous rewrite or appendix.
    fn finish_step(&mut self) -> Result<bool, BuildContextError> {
        if let Input::Detect(_) = self.input {
            self.push_input(Bytes::new(), true)?;
            return Ok(false);
        }
        if self.has_pending() {
            self.inflate_step()?;
            return Ok(false);
        }
        if let Input::Gzip { decoder, .. } = &mut self.input {
            decoder.try_finish().map_err(BuildContextError::Gzip)?;
            let inflated = std::mem::take(decoder.get_mut());
            self.input = Input::Plain;
            if !inflated.is_empty() {
                self.tar.feed(Bytes::from(inflated), &mut self.out)?;
            }
            return Ok(false);
        }
        if !self.tar.finished {
            self.tar.finish(&mut self.out)?;
            return Ok(false);
        }
        Ok(true)
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
            let step = if this.tar.busy() {
                // A rewrite in flight or files being appended: no input is read meanwhile.
                match this.tar.poll_busy(cx, &mut this.out) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => r,
                }
            } else if this.tar.has_backlog() {
                this.tar.resume(&mut this.out)
            } else if this.has_pending() {
                this.inflate_step()
            } else if this.body_done {
                match this.finish_step() {
                    Ok(true) => {
                        this.finished = true;
                        Ok(())
                    }
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            } else {
                match ready!(this.body.as_mut().poll_frame(cx)) {
                    None => {
                        this.body_done = true;
                        Ok(())
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

enum Rewriter {
    Sync(RewriteFn),
    Async(AsyncRewriteFn),
}

/// An asynchronous rewrite in flight: the Dockerfile member waits for its new text.
struct Waiting {
    header: Bytes,
    future: RewriteFuture,
}

/// Files being appended before the end of the archive.
struct Appending {
    /// Appendices not settled yet, in order.
    pending: VecDeque<Appendix>,
    members: VecDeque<Appended>,
    /// The file being copied: what is left of it, then its padding.
    current: Option<(tokio::fs::File, u64, usize)>,
    /// The first end-of-archive block, emitted after the appended members.
    end_block: Option<Bytes>,
}

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
    rewrite: Rewriter,
    symlinks: HashSet<String>,
    /// Raw PAX/GNU members waiting for the member they describe.
    held: Vec<Bytes>,
    pax: Option<Pax>,
    long_name: Option<String>,
    waiting: Option<Waiting>,
    appending: Option<Appending>,
    /// Input not read yet because the reader stopped (a rewrite or an appendix in flight).
    backlog: Bytes,
    /// Appendices of the rewrites so far, awaited at the end of the archive.
    appendices: Vec<Appendix>,
    /// The first client member under [`RESERVED_DIR`].
    reserved: Option<String>,
    /// [`Self::finish`] ran.
    finished: bool,
}

impl TarRewriter {
    fn new(candidates: Vec<String>, max: usize, rewrite: Rewriter) -> Self {
        TarRewriter {
            state: State::Header(BytesMut::with_capacity(BLOCK)),
            candidates,
            max,
            rewrite,
            symlinks: HashSet::new(),
            held: Vec::new(),
            pax: None,
            long_name: None,
            waiting: None,
            appending: None,
            backlog: Bytes::new(),
            appendices: Vec::new(),
            reserved: None,
            finished: false,
        }
    }

    /// Whether the reader is stopped until [`Self::poll_busy`] says otherwise.
    fn busy(&self) -> bool {
        self.waiting.is_some() || self.appending.is_some()
    }

    fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Reads on from where the reader stopped.
    fn resume(&mut self, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        let data = std::mem::take(&mut self.backlog);
        self.feed(data, out)
    }

    /// Drives a rewrite in flight, then the appended files (one chunk per call, so that the body
    /// emits it before the next is read). `Ready(Ok)` whenever there is output or nothing is left.
    fn poll_busy(&mut self, cx: &mut Context<'_>, out: &mut VecDeque<Bytes>) -> Poll<Result<(), BuildContextError>> {
        if let Some(w) = &mut self.waiting {
            let rewritten = ready!(w.future.as_mut().poll(cx));
            let Some(w) = self.waiting.take() else { return Poll::Ready(Ok(())) };
            let rewritten = rewritten?;
            if let Some(a) = rewritten.appendix {
                self.appendices.push(a);
            }
            return Poll::Ready(self.emit_dockerfile(w.header, Bytes::from(rewritten.dockerfile.into_bytes()), out));
        }
        let Some(app) = &mut self.appending else { return Poll::Ready(Ok(())) };
        loop {
            if let Some(next) = app.pending.front_mut() {
                let members = ready!(next.as_mut().poll(cx))?;
                app.pending.pop_front();
                app.members.extend(members);
                continue;
            }
            if let Some((file, left, pad)) = &mut app.current {
                if *left > 0 {
                    let want = (*left).min(APPEND_CHUNK as u64) as usize;
                    let mut buf = vec![0u8; want];
                    let mut rb = tokio::io::ReadBuf::new(&mut buf);
                    ready!(tokio::io::AsyncRead::poll_read(Pin::new(file), cx, &mut rb))
                        .map_err(|e| BuildContextError::Unavailable(format!("reading a file added to the build context: {e}")))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(BuildContextError::Unavailable(
                            "a file added to the build context is shorter than announced".into(),
                        )));
                    }
                    buf.truncate(n);
                    *left -= n as u64;
                    out.push_back(Bytes::from(buf));
                    return Poll::Ready(Ok(()));
                }
                if *pad > 0 {
                    out.push_back(Bytes::from(vec![0u8; *pad]));
                }
                app.current = None;
                continue;
            }
            if let Some(m) = app.members.pop_front() {
                out.extend(member_headers(&m)?);
                app.current = Some((m.file, m.size, padding(m.size) as usize));
                return Poll::Ready(Ok(()));
            }
            if let Some(end) = app.end_block.take() {
                out.push_back(end);
            }
            self.appending = None;
            return Poll::Ready(Ok(()));
        }
    }

    /// Starts appending the files of every rewrite so far, if there are any; `end_block` is the
    /// client's first end-of-archive block, which goes after them.
    fn start_appending(&mut self, end_block: Option<Bytes>, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        if self.appendices.is_empty() {
            out.extend(end_block);
            return Ok(());
        }
        if let Some(path) = self.reserved.take() {
            return Err(BuildContextError::Reserved(path));
        }
        self.appending =
            Some(Appending { pending: self.appendices.drain(..).collect(), members: VecDeque::new(), current: None, end_block });
        Ok(())
    }

    fn feed(&mut self, mut data: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        while !data.is_empty() {
            if self.busy() {
                self.backlog = if self.backlog.is_empty() {
                    data
                } else {
                    let mut joined = BytesMut::from(&self.backlog[..]);
                    joined.extend_from_slice(&data);
                    joined.freeze()
                };
                return Ok(());
            }
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
        self.finished = true;
        out.extend(self.held.drain(..));
        if matches!(self.state, State::End) {
            return Ok(());
        }
        // No end-of-archive blocks: the appended members are the last ones.
        self.start_appending(None, out)
    }

    fn on_header(&mut self, block: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
        if block.iter().all(|&b| b == 0) {
            out.extend(self.held.drain(..));
            self.pax = None;
            self.long_name = None;
            self.state = State::Zero(BytesMut::with_capacity(BLOCK));
            return self.start_appending(Some(block), out);
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
        if self.reserved.is_none() && (path == RESERVED_DIR || path.strip_prefix(RESERVED_DIR).is_some_and(|r| r.starts_with('/'))) {
            self.reserved = Some(path.clone());
        }

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
        match &mut self.rewrite {
            Rewriter::Sync(f) => {
                let new = f(text).map_err(BuildContextError::Rewrite)?;
                self.emit_dockerfile(header, Bytes::from(new.into_bytes()), out)
            }
            Rewriter::Async(f) => {
                let future = f(text.to_owned());
                self.waiting = Some(Waiting { header, future });
                Ok(())
            }
        }
    }

    /// The Dockerfile member with its new content, after the PAX and GNU records held for it.
    fn emit_dockerfile(&mut self, header: Bytes, new: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), BuildContextError> {
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

/// The header of an appended member (ustar; a PAX `path` record first when the path does not fit).
fn member_headers(m: &Appended) -> Result<Vec<Bytes>, BuildContextError> {
    let bad = |why: &str| BuildContextError::Unavailable(format!("cannot add {:?} to the build context: {why}", m.path));
    if member_key(&m.path) != m.path || !m.path.starts_with(RESERVED_DIR) || m.path.contains('\0') {
        return Err(bad("not a clean path under the reserved directory"));
    }
    if m.size >= 1 << 33 || m.mtime >= 1 << 33 || m.mode > 0o7777 {
        return Err(bad("size, time or mode out of range"));
    }
    let mut out = Vec::new();
    let mut name = m.path.as_bytes();
    if name.len() > 100 {
        let data = encode_pax(&[("path".to_string(), m.path.clone())]);
        let mut h = ustar_header(b"././@PaxHeader", 0o644, data.len() as u64, 0, b'x');
        h.extend_from_slice(&data);
        h.resize(h.len() + padding(data.len() as u64) as usize, 0);
        out.push(Bytes::from(h));
        name = &name[..100];
    }
    out.push(Bytes::from(ustar_header(name, m.mode, m.size, m.mtime, b'0')));
    Ok(out)
}

/// A ustar header block; `name` at most 100 bytes, numbers in range.
fn ustar_header(name: &[u8], mode: u32, size: u64, mtime: u64, typeflag: u8) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&c| u64::from(c)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
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
