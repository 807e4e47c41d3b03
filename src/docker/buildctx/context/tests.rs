use super::*;
use std::convert::Infallible;
use std::io::Read;

/// A request body that yields the given chunks.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunked(input: &Bytes, size: usize) -> Chunks {
    let mut v = VecDeque::new();
    let mut rest = input.clone();
    while !rest.is_empty() {
        v.push_back(rest.split_to(size.min(rest.len())));
    }
    Chunks(v)
}

fn collect<B: Body<Data = Bytes, Error = BuildContextError>>(body: B) -> Result<Vec<Bytes>, BuildContextError> {
    let mut body = Box::pin(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut frames = Vec::new();
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => frames.push(f.into_data().unwrap_or_default()),
            Poll::Ready(Some(Err(e))) => return Err(e),
            Poll::Ready(None) => return Ok(frames),
            Poll::Pending => panic!("test bodies are always ready"),
        }
    }
}

fn upper() -> RewriteFn {
    Box::new(|t: &str| Ok(t.replace("placeholder", "ns.invalid/real")))
}

fn run(input: &Bytes, chunk: usize, dockerfile: Option<&str>, max: usize) -> Result<Vec<u8>, BuildContextError> {
    let body = RewrittenContext::new(chunked(input, chunk), dockerfile, max, upper())?;
    Ok(collect(body)?.concat())
}

fn entries(tar_bytes: &[u8]) -> Vec<(String, u8, Vec<u8>)> {
    let mut ar = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in ar.entries().expect("archive") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let kind = e.header().entry_type().as_byte();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.push((path, kind, data));
    }
    out
}

fn noise(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).expect("append");
}

const DOCKERFILE: &str = "FROM placeholder\nRUN true\n";

fn sample() -> Bytes {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "a.txt", &noise(1000));
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    b.append_data(&mut h, "dir/", &[][..]).expect("dir");
    file(&mut b, "dir/big.bin", &noise(100_000));
    file(&mut b, "Dockerfile", DOCKERFILE.as_bytes());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "link", "a.txt").expect("link");
    file(&mut b, "exact.bin", &noise(512));
    Bytes::from(b.into_inner().expect("tar"))
}

fn expect_rewritten(input: &[u8], output: &[u8], dockerfile: &str) {
    let before = entries(input);
    let after = entries(output);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.0, a.0);
        assert_eq!(b.1, a.1);
        if a.0 == dockerfile {
            assert_eq!(String::from_utf8_lossy(&b.2).replace("placeholder", "ns.invalid/real").as_bytes(), &a.2[..]);
        } else {
            assert_eq!(b.2, a.2, "{} changed", a.0);
        }
    }
    assert!(after.iter().any(|e| e.0 == dockerfile), "no {dockerfile} in output");
}

#[test]
fn rewrites_the_dockerfile_in_chunks_of_any_size() {
    let input = sample();
    for chunk in [1, 7, 511, 512, 513, 4096, 65536, usize::MAX] {
        let out = run(&input, chunk, None, 1 << 20).unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        expect_rewritten(&input, &out, "Dockerfile");
        // Everything before the Dockerfile's header is byte for byte the input.
        let at = input.windows(10).position(|w| w == b"Dockerfile").expect("header");
        assert_eq!(&out[..at], &input[..at]);
        // So is everything after it, shifted by the size change.
        let tail = 512 + 1024 + 1024; // link header, exact.bin header and data, end blocks
        let grow = "ns.invalid/real".len() - "placeholder".len();
        let padded = |n: usize| n.div_ceil(512) * 512;
        assert_eq!(out.len(), input.len() - padded(DOCKERFILE.len()) + padded(DOCKERFILE.len() + grow));
        assert_eq!(&out[out.len() - tail..], &input[input.len() - tail..]);
    }
}

#[test]
fn output_is_read_by_system_tar() {
    let out = run(&sample(), 513, None, 1 << 20).expect("rewrite");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctx.tar");
    std::fs::write(&path, &out).expect("write");
    let listing = std::process::Command::new("tar").arg("-tvf").arg(&path).output().expect("tar runs");
    assert!(listing.status.success(), "{}", String::from_utf8_lossy(&listing.stderr));
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(text.contains("Dockerfile") && text.contains("dir/big.bin") && text.contains("link -> a.txt"), "{text}");
}

#[test]
fn payloads_are_forwarded_without_copies() {
    let input = sample();
    let body = RewrittenContext::new(chunked(&input, usize::MAX), None, 1 << 20, upper()).expect("new");
    let frames = collect(body).expect("rewrite");
    let range = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    let big = frames.iter().find(|f| f.len() >= 100_000).expect("the big member is one frame");
    assert!(range.contains(&(big.as_ptr() as usize)), "payload was copied");
}

#[test]
fn gzip_context_comes_out_uncompressed() {
    let input = sample();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&input).expect("gzip");
    let compressed = Bytes::from(gz.finish().expect("gzip"));
    for chunk in [1, 100, 65536] {
        let out = run(&compressed, chunk, None, 1 << 20).expect("rewrite");
        expect_rewritten(&input, &out, "Dockerfile");
    }
    // Truncated gzip.
    let cut = compressed.slice(..compressed.len() - 4);
    assert!(matches!(run(&cut, 4096, None, 1 << 20), Err(BuildContextError::Gzip(_) | BuildContextError::Tar(_))));
}

#[test]
fn other_compressions_are_refused() {
    for (magic, name) in
        [(&b"BZh91AY"[..], "bzip2"), (&[0xfd, b'7', b'z', b'X', b'Z', 0, 1][..], "xz"), (&[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..], "zstd")]
    {
        let r = run(&Bytes::copy_from_slice(magic), 1, None, 1 << 20);
        assert!(matches!(r, Err(BuildContextError::Compression(n)) if n == name), "{name}: {r:?}");
        let m = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            m.contains(&format!("compressed with {name}")) && m.ends_with("; refused by the namespace (build); no setting allows it"),
            "{m}"
        );
    }
}

#[test]
fn gnu_long_names() {
    let long_dir = "d".repeat(120);
    let path = format!("{long_dir}/Dockerfile");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, &format!("{long_dir}/other-{}", "x".repeat(100)), b"keep me");
    file(&mut b, &path, DOCKERFILE.as_bytes());
    file(&mut b, "Dockerfile", b"FROM placeholder-not-the-one\n");
    let input = Bytes::from(b.into_inner().expect("tar"));
    assert!(input.windows(13).any(|w| w == b"././@LongLink"));
    let out = run(&input, 511, Some(&format!("./{path}")), 1 << 20).expect("rewrite");
    let e = entries(&out);
    assert_eq!(e[1].0, path);
    assert_eq!(e[1].2, b"FROM ns.invalid/real\nRUN true\n");
    assert_eq!(e[2].2, b"FROM placeholder-not-the-one\n", "only the named Dockerfile changes");
    assert_eq!(e[0].2, b"keep me");
}

/// A PAX member whose `path` and `size` records override the ustar header.
fn pax_context(header_size: u64) -> Bytes {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "first", b"1");
    let size = DOCKERFILE.len().to_string();
    b.append_pax_extensions([("path", "sub/Dockerfile".as_bytes()), ("size", size.as_bytes()), ("mtime", b"1.5".as_slice())]).expect("pax");
    let mut h = tar::Header::new_ustar();
    h.set_path("short-name").expect("name");
    h.set_mode(0o644);
    h.set_size(header_size);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    b.append(&h, DOCKERFILE.as_bytes()).expect("append");
    file(&mut b, "last", b"2");
    Bytes::from(b.into_inner().expect("tar"))
}

#[test]
fn pax_path_and_size_records() {
    // The header says 0 bytes, the PAX record says the truth: Go (and dockerd) believe the record.
    let input = pax_context(0);
    for chunk in [1, 512, 65536] {
        let out = run(&input, chunk, Some("sub/Dockerfile"), 1 << 20).expect("rewrite");
        let e = entries(&out);
        let names: Vec<_> = e.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["first", "sub/Dockerfile", "last"]);
        assert_eq!(e[1].2, b"FROM ns.invalid/real\nRUN true\n");
        assert_eq!(e[2].2, b"2");
        // The size record is gone, the other records stay.
        let text = String::from_utf8_lossy(&out);
        assert!(!text.contains(" size=") && text.contains("path=sub/Dockerfile") && text.contains("mtime=1.5"));
    }
    // Not the Dockerfile: passed through untouched, size record and all.
    let out = run(&input, 100, None, 1 << 20).expect("pass");
    assert_eq!(out, input);
}

#[test]
fn lower_case_fallback_only_for_the_default_name() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "dockerfile", DOCKERFILE.as_bytes());
    let input = Bytes::from(b.into_inner().expect("tar"));
    for name in [None, Some(""), Some("Dockerfile")] {
        let out = run(&input, 512, name, 1 << 20).expect("rewrite");
        assert_eq!(entries(&out)[0].2, b"FROM ns.invalid/real\nRUN true\n", "{name:?}");
    }
    assert_eq!(run(&input, 512, Some("Dockerfile.dev"), 1 << 20).expect("pass"), input);
    assert_eq!(run(&input, 512, Some("./Dockerfile"), 1 << 20).expect("pass"), input);
}

#[test]
fn no_dockerfile_is_not_an_error() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "x", b"y");
    let input = Bytes::from(b.into_inner().expect("tar"));
    assert_eq!(run(&input, 3, None, 10).expect("pass"), input);
    assert_eq!(run(&Bytes::new(), 1, None, 10).expect("empty body"), Vec::<u8>::new());
}

#[test]
fn refusals() {
    let input = sample();
    assert!(matches!(run(&input, 512, None, 10), Err(BuildContextError::DockerfileTooLarge { max: 10, .. })));
    assert!(matches!(
        RewrittenContext::new(chunked(&input, 1), Some("../Dockerfile"), 10, upper()),
        Err(BuildContextError::DockerfilePath(_))
    ));
    let refuse: RewriteFn = Box::new(|_| Err("FROM placeholder: access denied".into()));
    let r = collect(RewrittenContext::new(chunked(&input, 100), None, 1 << 20, refuse).expect("new"));
    assert_eq!(r.expect_err("refused").to_string(), "FROM placeholder: access denied");
    // Garbage, a broken checksum, a truncated archive.
    assert!(matches!(run(&Bytes::from(noise(2048)), 100, None, 10), Err(BuildContextError::Tar(_))));
    let mut broken = input.to_vec();
    broken[0] ^= 1;
    assert!(matches!(run(&Bytes::from(broken), 100, None, 10), Err(BuildContextError::Tar(_))));
    assert!(matches!(run(&input.slice(..1500), 100, None, 1 << 20), Err(BuildContextError::Tar(_))));
    assert!(matches!(run(&input.slice(..1000), 100, None, 1 << 20), Err(BuildContextError::Tar(_))));
    // A zero block followed by a header.
    let mut zero_then = vec![0u8; 512];
    zero_then.extend_from_slice(&input);
    assert!(matches!(run(&Bytes::from(zero_then), 100, None, 1 << 20), Err(BuildContextError::Tar(_))));
    // Not UTF-8.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "Dockerfile", b"FROM \xff\n");
    assert!(matches!(run(&Bytes::from(b.into_inner().expect("tar")), 100, None, 1 << 20), Err(BuildContextError::NotUtf8(_))));
}

#[test]
fn symlinks_cannot_redirect_the_dockerfile() {
    let link = |b: &mut tar::Builder<Vec<u8>>, name: &str, target: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, name, target).expect("link");
    };
    // The Dockerfile itself a symlink to a file with other contents.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "evil", b"FROM victim\n");
    link(&mut b, "Dockerfile", "evil");
    let r = run(&Bytes::from(b.into_inner().expect("tar")), 512, None, 1 << 20);
    assert!(matches!(r, Err(BuildContextError::NotRegular(_))), "{r:?}");
    // A member written through a symlinked directory lands on the Dockerfile's path.
    let mut b = tar::Builder::new(Vec::new());
    link(&mut b, "here", ".");
    file(&mut b, "here/Dockerfile", b"FROM victim\n");
    let r = run(&Bytes::from(b.into_inner().expect("tar")), 512, None, 1 << 20);
    assert!(matches!(r, Err(BuildContextError::UnderSymlink { .. })), "{r:?}");
    // A directory of the Dockerfile path replaced by a symlink afterwards.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "sub/Dockerfile", DOCKERFILE.as_bytes());
    link(&mut b, "sub", "other");
    let r = run(&Bytes::from(b.into_inner().expect("tar")), 512, Some("sub/Dockerfile"), 1 << 20);
    assert!(matches!(r, Err(BuildContextError::UnderSymlink { .. })), "{r:?}");
    // A hard link named Dockerfile.
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "evil", b"FROM victim\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "Dockerfile", "evil").expect("hardlink");
    let r = run(&Bytes::from(b.into_inner().expect("tar")), 512, None, 1 << 20);
    assert!(matches!(r, Err(BuildContextError::NotRegular(_))), "{r:?}");
}

#[test]
fn header_only_types_have_no_data() {
    // A symlink whose size field claims data: Go reads none, and so must we, or we lose sync.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("l").expect("path");
    h.set_link_name("x").expect("link");
    h.set_size(512);
    h.set_cksum();
    b.append(&h, &[][..]).expect("append");
    file(&mut b, "Dockerfile", DOCKERFILE.as_bytes());
    let input = Bytes::from(b.into_inner().expect("tar"));
    let out = run(&input, 512, None, 1 << 20).expect("rewrite");
    assert!(String::from_utf8_lossy(&out).contains("FROM ns.invalid/real"));
}

#[test]
fn path_cleaning() {
    assert_eq!(member_key("./Dockerfile"), "Dockerfile");
    assert_eq!(member_key("/a/../b//c/."), "b/c");
    assert_eq!(member_key("../x"), "../x");
    assert_eq!(member_key("/../x"), "x");
    assert_eq!(member_key(""), ".");
    assert_eq!(member_key("/"), ".");
    let input = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(DOCKERFILE.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        // Bypass the tar crate's path normalisation.
        h.as_old_mut().name[..12].copy_from_slice(b"./Dockerfile");
        h.set_cksum();
        b.append(&h, DOCKERFILE.as_bytes()).expect("append");
        Bytes::from(b.into_inner().expect("tar"))
    };
    let out = run(&input, 512, None, 1 << 20).expect("rewrite");
    assert!(String::from_utf8_lossy(&out).contains("FROM ns.invalid/real"));
}

#[test]
fn numeric_fields() {
    assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
    assert_eq!(parse_octal(b"  12 \0"), Some(0o12));
    assert_eq!(parse_octal(b"\0\0\0"), Some(0));
    assert_eq!(parse_octal(b"+12"), None);
    assert_eq!(parse_octal(b"19"), None);
    assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
    assert_eq!(parse_numeric(&[0xff; 12]), None);
    let recs = vec![("path".to_string(), "a".repeat(95)), ("x".to_string(), String::new())];
    assert_eq!(parse_pax(&encode_pax(&recs)).expect("round trip"), recs);
    assert!(parse_pax(b"5 a=b\n").is_err());
    assert!(parse_pax(b"6 a=b\n").is_ok());
}

// === Asynchronous rewrites and appended files ===

/// A temporary file holding `data`, opened for reading from its start.
fn temp_with(data: &[u8]) -> tokio::fs::File {
    let mut f = tempfile::tempfile().expect("tempfile");
    std::io::Write::write_all(&mut f, data).expect("write");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0)).expect("seek");
    tokio::fs::File::from_std(f)
}

/// Rewrites like [`upper`], later, and appends `files` (path, content, mtime).
fn async_upper(files: Vec<(String, Vec<u8>, u64)>, gate: Option<tokio::sync::oneshot::Receiver<()>>) -> AsyncRewriteFn {
    let mut gate = gate;
    let mut files = Some(files);
    Box::new(move |text: String| {
        let gate = gate.take();
        let files = files.take().unwrap_or_default();
        Box::pin(async move {
            if let Some(g) = gate {
                let _ = g.await;
            }
            let appendix = (!files.is_empty()).then(|| {
                Box::pin(async move {
                    Ok(files
                        .into_iter()
                        .map(|(path, data, mtime)| Appended { path, mode: 0o600, mtime, size: data.len() as u64, file: temp_with(&data) })
                        .collect())
                }) as Appendix
            });
            Ok(Rewritten { dockerfile: text.replace("placeholder", "ns.invalid/real"), appendix })
        })
    })
}

async fn run_async(input: &Bytes, chunk: usize, rewrite: AsyncRewriteFn) -> Result<Vec<u8>, BuildContextError> {
    let body = RewrittenContext::with_async(chunked(input, chunk), None, 1 << 20, rewrite)?;
    let collected = http_body_util::BodyExt::collect(body).await?;
    Ok(collected.to_bytes().to_vec())
}

#[tokio::test]
async fn async_rewrite_appends_files_before_the_end_of_the_archive() {
    let input = sample();
    let long = format!(".ctproxy/add/1/{}", "n".repeat(120));
    for chunk in [1, 513, 65536, usize::MAX] {
        let files = vec![(".ctproxy/add/0/README".to_string(), noise(1500), 784111777), (long.clone(), b"x".to_vec(), 0)];
        let out = run_async(&input, chunk, async_upper(files, None)).await.unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
        let after = entries(&out);
        let names: Vec<&str> = after.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a.txt", "dir/", "dir/big.bin", "Dockerfile", "link", "exact.bin", ".ctproxy/add/0/README", long.as_str()]);
        assert_eq!(after[3].2, DOCKERFILE.replace("placeholder", "ns.invalid/real").as_bytes());
        assert_eq!(after[6].2, noise(1500));
        let mut ar = tar::Archive::new(&out[..]);
        let e = ar.entries().expect("archive").nth(6).expect("entry").expect("entry");
        assert_eq!((e.header().mode().ok(), e.header().mtime().ok(), e.header().uid().ok()), (Some(0o600), Some(784111777), Some(0)));
        // Still one well-formed archive: two zero blocks at the very end.
        assert!(out.len() % 512 == 0 && out[out.len() - 1024..].iter().all(|&b| b == 0));
    }
}

#[tokio::test]
async fn async_rewrite_of_a_late_dockerfile_streams_what_comes_before() {
    // The Dockerfile comes after 100 kB: those are emitted while the rewrite has not answered.
    let input = sample();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut body =
        Box::pin(RewrittenContext::with_async(chunked(&input, 4096), None, 1 << 20, async_upper(Vec::new(), Some(rx))).expect("new"));
    let mut seen = 0;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(f))) => seen += f.into_data().map(|d| d.len()).unwrap_or(0),
            Poll::Pending => break,
            other => panic!("unexpected {:?}", other.map(|o| o.map(|r| r.map(|_| ()))),),
        }
    }
    let at = input.windows(10).position(|w| w == b"Dockerfile").expect("header");
    assert!(seen >= 100_000 && seen <= at, "{seen} bytes before the rewrite answered");
    tx.send(()).expect("gate");
    let rest = http_body_util::BodyExt::collect(body).await.expect("rest").to_bytes();
    assert_eq!(seen + rest.len(), run(&input, 4096, None, 1 << 20).expect("sync").len());
}

#[tokio::test]
async fn appended_files_need_the_reserved_directory_free() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "Dockerfile", DOCKERFILE.as_bytes());
    file(&mut b, "./.ctproxy/add/0/README", b"mine");
    let input = Bytes::from(b.into_inner().expect("tar"));
    let files = vec![(".ctproxy/add/0/README".to_string(), b"theirs".to_vec(), 0)];
    let r = run_async(&input, 512, async_upper(files, None)).await;
    assert!(matches!(r, Err(BuildContextError::Reserved(ref p)) if p == ".ctproxy/add/0/README"), "{r:?}");
    // Nothing appended: the directory is the client's business.
    assert!(run_async(&input, 512, async_upper(Vec::new(), None)).await.is_ok());
    // Appended paths must be clean and under the reserved directory.
    let r = run_async(&sample(), 512, async_upper(vec![("../x".to_string(), b"x".to_vec(), 0)], None)).await;
    assert!(matches!(r, Err(BuildContextError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn appended_files_without_end_blocks_and_from_gzip() {
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "Dockerfile", DOCKERFILE.as_bytes());
    let mut raw = b.into_inner().expect("tar");
    raw.truncate(raw.len() - 1024); // a clean end of stream at a header boundary, no end blocks
    let files = || vec![(".ctproxy/add/0/f".to_string(), b"hello".to_vec(), 5)];
    let out = run_async(&Bytes::from(raw.clone()), 100, async_upper(files(), None)).await.expect("rewrite");
    let names: Vec<String> = entries(&out).into_iter().map(|e| e.0).collect();
    assert_eq!(names, ["Dockerfile", ".ctproxy/add/0/f"]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&sample()).expect("gzip");
    let out = run_async(&Bytes::from(gz.finish().expect("gzip")), 333, async_upper(files(), None)).await.expect("rewrite");
    assert_eq!(entries(&out).last().map(|e| (e.0.clone(), e.2.clone())), Some((".ctproxy/add/0/f".to_string(), b"hello".to_vec())));
}

#[tokio::test]
async fn async_refusal_ends_the_body_with_its_error() {
    let refuse: AsyncRewriteFn = Box::new(|_| Box::pin(async { Err(BuildContextError::Refused("no".into())) }));
    let r = run_async(&sample(), 4096, refuse).await;
    assert!(matches!(r, Err(BuildContextError::Refused(ref m)) if m == "no"), "{r:?}");
    let late: AsyncRewriteFn = Box::new(|t| {
        Box::pin(async move {
            let appendix = Box::pin(async { Err(BuildContextError::Refused("late".into())) }) as Appendix;
            Ok(Rewritten { dockerfile: t, appendix: Some(appendix) })
        })
    });
    let r = run_async(&sample(), 4096, late).await;
    assert!(matches!(r, Err(BuildContextError::Refused(ref m)) if m == "late"), "{r:?}");
    assert_eq!(BuildContextError::Refused(String::new()).status(), hyper::StatusCode::FORBIDDEN);
}
