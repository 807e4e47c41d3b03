//! The build-context rewriter against the real dockerd: a context whose Dockerfile names a base image
//! that does not exist builds once the rewriter has replaced it, and a refused reference aborts the build.

mod support;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use ctproxy::docker::buildctx::{rewrite_dockerfile, RewriteFn, RewrittenContext};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;

/// A request body delivered in fixed-size chunks, as a client on a slow link would send it.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A gzip-compressed context with `Dockerfile` and one more file, cut into 1000-byte chunks.
fn context(dockerfile: &str) -> Chunks {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("Dockerfile", dockerfile.as_bytes()), ("hello.txt", b"hello\n".as_slice())] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).expect("tar");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b.into_inner().expect("tar")).expect("gzip");
    let mut rest = Bytes::from(gz.finish().expect("gzip"));
    let mut chunks = VecDeque::new();
    while !rest.is_empty() {
        chunks.push_back(rest.split_to(1000.min(rest.len())));
    }
    Chunks(chunks)
}

/// Maps the one name the test knows to the local busybox, refuses everything else.
fn rewriter() -> RewriteFn {
    Box::new(|text: &str| {
        let mut resolve = |r: &str| match r {
            "placeholder-base" => Ok(BUSYBOX.to_string()),
            other => Err(format!("pull access denied for {other}")),
        };
        rewrite_dockerfile(text, &HashMap::new(), &mut resolve).map_err(|e| e.to_string())
    })
}

/// `POST /build` straight to dockerd; returns the build output, or the client error.
async fn build(tag: &str, dockerfile: &str) -> Result<String, String> {
    let stream = tokio::net::UnixStream::connect(direct_socket()).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = RewrittenContext::new(context(dockerfile), None, 1 << 20, rewriter()).map_err(|e| e.to_string())?;
    let req = hyper::Request::post(format!("/v1.41/build?t={tag}&rm=1&forcerm=1"))
        .header("Host", "docker")
        .header("Content-Type", "application/x-tar")
        .body(body)
        .map_err(|e| e.to_string())?;
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let bytes = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

#[tokio::test]
async fn rewritten_context_builds_on_the_real_daemon() {
    require_docker();
    let tag = unique("buildctx");
    let out = build(&tag, "FROM placeholder-base\nCOPY hello.txt /\nRUN true\n").await;
    let listed = docker(direct(), &["image", "ls", "-q", &tag]);
    let _ = docker_output(direct(), &["rmi", "-f", &tag]);
    let out = out.expect("build request");
    assert!(!out.contains("errorDetail"), "{out}");
    assert!(out.contains("Step 1/3 : FROM ctproxy-test/busybox:latest"), "{out}");
    assert!(out.contains(&format!("Successfully tagged {tag}:latest")), "{out}");
    assert!(!listed.trim().is_empty(), "image {tag} not found after the build");
}

#[tokio::test]
async fn refused_reference_aborts_the_build() {
    require_docker();
    let tag = unique("buildctx-refused");
    let out = build(&tag, "FROM placeholder-base\nCOPY --from=someone-elses/private /x /x\n").await;
    let listed = docker(direct(), &["image", "ls", "-q", &tag]);
    let _ = docker_output(direct(), &["rmi", "-f", &tag]);
    if let Ok(text) = &out {
        assert!(!text.contains("Successfully"), "{text}");
    }
    assert!(listed.trim().is_empty(), "image {tag} was built");
}
