//! A deliberately small HTTP/1.x client for framing tests: it writes exactly the bytes it is given
//! and parses responses itself (status line, headers, `Content-Length`, chunked, close-delimited), so
//! a test sees precisely what went over the wire, pipelined or not.
//!
//! Included by the tests that need it with `#[path = "support/rawhttp.rs"] mod rawhttp;`.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_text()))
    }
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

/// What reading the rest of a connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed the connection (read returned 0) or reset it.
    Closed,
    /// Nothing more arrived within the timeout: the connection is still open.
    Open,
}

/// A client connection with its own read buffer (bytes read past one response stay for the next).
pub struct Conn<S: Read + Write> {
    pub stream: S,
    buf: Vec<u8>,
}

impl Conn<UnixStream> {
    /// Connects to a unix socket; reads time out after `timeout` (a test failure, never a hang).
    pub fn unix(path: &Path, timeout: Duration) -> Conn<UnixStream> {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(timeout)).expect("read timeout");
        Conn::new(s)
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(std::net::Shutdown::Write).expect("half-close");
    }

    pub fn set_timeout(&self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

impl Conn<std::net::TcpStream> {
    pub fn tcp(addr: &str, timeout: Duration) -> Conn<std::net::TcpStream> {
        let s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(timeout)).expect("read timeout");
        Conn::new(s)
    }
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
        self.stream.flush().expect("flush");
    }

    /// Reads more bytes into the buffer; false at EOF. Panics on a timeout.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("timed out waiting for the proxy; read so far: {:?}", String::from_utf8_lossy(&self.buf))
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Takes exactly `n` bytes, reading as needed.
    pub fn read_exact_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "connection closed after {} of {n} bytes: {:?}", self.buf.len(), String::from_utf8_lossy(&self.buf));
        }
        self.buf.drain(..n).collect()
    }

    fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return String::from_utf8_lossy(&line[..i]).into_owned();
            }
            assert!(self.fill(), "connection closed in the middle of a line: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// Reads a status line and headers. Panics if the connection closes first.
    pub fn read_head(&mut self) -> Response {
        let status_line = self.read_line();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!(version.starts_with("HTTP/1."), "bad status line {status_line:?}");
        let mut headers = Vec::new();
        loop {
            let line = self.read_line();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Response { version, status, headers, body: Vec::new() }
    }

    /// How the body after `head` is delimited (`head_request`: the request was a HEAD).
    pub fn framing(head: &Response, head_request: bool) -> Framing {
        if head_request || head.status / 100 == 1 || head.status == 204 || head.status == 304 {
            Framing::None
        } else if head.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Framing::Chunked
        } else if let Some(n) = head.header("content-length") {
            Framing::Length(n.parse().unwrap_or_else(|_| panic!("bad content-length {n:?}")))
        } else {
            Framing::Close
        }
    }

    /// Reads one whole response to a request that was not HEAD.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Reads one whole response; `head_request` says whether it answers a HEAD (then it has no body).
    pub fn read_response_to(&mut self, head_request: bool) -> Response {
        let mut rsp = self.read_head();
        rsp.body = match Self::framing(&rsp, head_request) {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_bytes(n),
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.read_line();
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
                    if size == 0 {
                        // Trailers, then the empty line.
                        while !self.read_line().is_empty() {}
                        break;
                    }
                    body.extend(self.read_exact_bytes(size));
                    assert_eq!(self.read_line(), "", "chunk not followed by CRLF");
                }
                body
            }
            Framing::Close => {
                while self.fill() {}
                std::mem::take(&mut self.buf)
            }
        };
        rsp
    }

    /// Reads until at least `n` bytes beyond what was consumed are buffered, then takes what is there.
    pub fn read_some(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill(), "connection closed after {} bytes", self.buf.len());
        }
        std::mem::take(&mut self.buf)
    }

    /// Reads until the peer closes or `quiet` passes without a byte; returns what came and which.
    /// The stream's read timeout is used as `quiet`.
    pub fn read_to_end_or_quiet(&mut self) -> (Vec<u8>, End) {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return (std::mem::take(&mut self.buf), End::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return (std::mem::take(&mut self.buf), End::Open)
                }
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return (std::mem::take(&mut self.buf), End::Closed),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Bytes received but not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }
}

/// `POST /containers/{container}/exec` with `create` as body on `c`; returns the exec ID.
pub fn exec_create<S: Read + Write>(c: &mut Conn<S>, container: &str, create: &[u8]) -> String {
    c.send(
        &[
            format!(
                "POST /v1.41/containers/{container}/exec HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                create.len()
            )
            .as_bytes(),
            create,
        ]
        .concat(),
    );
    let created = c.read_response();
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["Id"].as_str().expect("exec id").to_owned()
}

/// `POST /exec/{id}/start` with `Upgrade: tcp` on `c`, followed in the same write by `stdin`.
pub fn exec_start_upgrade<S: Read + Write>(c: &mut Conn<S>, id: &str, stdin: &[u8]) {
    let start = br#"{"Detach":false,"Tty":false}"#;
    c.send(
        &[
            format!(
                "POST /v1.41/exec/{id}/start HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: {}\r\n\r\n",
                start.len()
            )
            .as_bytes(),
            start,
            stdin,
        ]
        .concat(),
    );
}

/// Splits a multiplexed attach/logs stream (8-byte headers: stream, 0, 0, 0, big-endian length)
/// into stdout and stderr. Panics on a malformed or truncated frame.
pub fn demux(mut raw: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while !raw.is_empty() {
        assert!(raw.len() >= 8, "truncated frame header: {raw:?}");
        let len = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        assert!(raw[1..4] == [0, 0, 0] && raw.len() >= 8 + len, "malformed frame: {raw:?}");
        match raw[0] {
            1 => out.extend_from_slice(&raw[8..8 + len]),
            2 => err.extend_from_slice(&raw[8..8 + len]),
            s => panic!("unexpected stream id {s} in {raw:?}"),
        }
        raw = &raw[8 + len..];
    }
    (out, err)
}

/// A complete multiplexed frame prefix of `raw`: how many bytes of whole frames it holds.
pub fn whole_frames(raw: &[u8]) -> usize {
    let mut at = 0;
    while raw.len() >= at + 8 {
        let len = u32::from_be_bytes([raw[at + 4], raw[at + 5], raw[at + 6], raw[at + 7]]) as usize;
        if raw.len() < at + 8 + len {
            break;
        }
        at += 8 + len;
    }
    at
}
