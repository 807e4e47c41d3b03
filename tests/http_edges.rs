//! HTTP edge cases, byte for byte over the unix socket: the daemon unreachable, unparseable input,
//! HTTP/1.0 and 1.1 keep-alive and pipelining, HEAD, versioned paths, chunked and `Expect` request
//! bodies, both hijack forms with half-close, and the access log in text and JSON.

#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rawhttp::{demux, Conn, End};
use support::*;

/// The longest any single read may take before a test fails (a hang is a failure, never a wait).
const T: Duration = Duration::from_secs(15);

/// ctproxy on one unix listener with extra command-line arguments.
fn proxy_with(args: &[&str]) -> Proxy {
    require_docker();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("d.sock");
    let listen = format!("unix://{}", sock.display());
    let mut all = vec!["--listen", listen.as_str()];
    all.extend_from_slice(args);
    Proxy::spawn(dir, sock, &all)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n").into_bytes()
}

/// One request on a fresh connection to `sock`, response parsed.
fn once(sock: &Path, request: &[u8]) -> rawhttp::Response {
    let mut c = Conn::unix(sock, T);
    c.send(request);
    c.read_response_to(request.starts_with(b"HEAD "))
}

/// Waits for an access-log line containing every one of `parts`.
fn wait_access(p: &Proxy, parts: &[&str]) -> String {
    let deadline = Instant::now() + T;
    loop {
        if let Some(line) = p.log_text().lines().find(|l| l.contains("ctproxy::access") && parts.iter().all(|x| l.contains(x))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no access-log line with {parts:?}; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_502_unreachable(p: &Proxy, upstream: &str) {
    let mut c = Conn::unix(&p.sock, T);
    // Two pipelined requests: both are answered, the connection stays usable after a 502.
    let t = Instant::now();
    c.send(&[get("/_ping"), get("/v1.41/containers/json")].concat());
    for _ in 0..2 {
        let rsp = c.read_response();
        assert_eq!(rsp.status, 502, "{rsp:?}");
        assert_eq!(rsp.header("content-type"), Some("application/json"));
        let message = rsp.json()["message"].as_str().expect("message string").to_owned();
        let expected = format!("ctproxy: cannot reach the Docker daemon at {upstream}");
        assert!(message.starts_with(&expected), "{message:?} should start with {expected:?}");
    }
    assert!(t.elapsed() < Duration::from_secs(10), "the 502s took {:?}", t.elapsed());
    // The docker CLI shows the message.
    let out = docker_output(&p.docker_host(), &["version", "--format", "{{.Server.Version}}"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Docker daemon"), "{}", String::from_utf8_lossy(&out.stderr));
    wait_access(p, &["path=/_ping", "status=502"]);
}

#[test]
fn daemon_socket_missing_gives_502_with_a_docker_style_message() {
    let p = proxy_with(&["--upstream", "unix:///nonexistent.sock"]);
    assert_502_unreachable(&p, "unix:///nonexistent.sock");
}

#[test]
fn daemon_port_closed_gives_502_with_a_docker_style_message() {
    let closed = ClosedPort::new();
    let upstream = format!("tcp://127.0.0.1:{}", closed.port);
    let p = proxy_with(&["--upstream", &upstream]);
    assert_502_unreachable(&p, &upstream);
}

/// A daemon that accepts, reads the request and hangs up without a word: 502, not a hang.
#[test]
fn daemon_hanging_up_without_an_answer_gives_502() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("fake-dockerd.sock");
    let listener = UnixListener::bind(&fake).expect("bind fake daemon");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            drop(conn);
        }
    });
    let upstream = format!("unix://{}", fake.display());
    let p = proxy_with(&["--upstream", &upstream]);
    let t = Instant::now();
    let rsp = once(&p.sock, &get("/_ping"));
    assert_eq!(rsp.status, 502, "{rsp:?}");
    assert!(rsp.json()["message"].as_str().expect("message").starts_with("ctproxy: "), "{}", rsp.body_text());
    assert!(t.elapsed() < Duration::from_secs(10), "the 502 took {:?}", t.elapsed());
}

#[test]
fn unparseable_requests_get_400_and_the_connection_closes() {
    let p = Proxy::start();
    let cases: [&[u8]; 7] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /_ping\r\n\r\n",
        b"GET /_ping HTTP/9.9\r\nHost: d\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nHost: d\r\nContent-Length: nope\r\n\r\n",
    ];
    for bad in cases {
        let mut c = Conn::unix(&p.sock, T);
        c.send(bad);
        let rsp = c.read_response();
        assert_eq!(rsp.status, 400, "{:?} → {rsp:?}", String::from_utf8_lossy(bad));
        assert!(rsp.version == "HTTP/1.1" || rsp.version == "HTTP/1.0", "{rsp:?}");
        assert!(rsp.json()["message"].is_string(), "a Docker-style error: {rsp:?}");
        c.set_timeout(Duration::from_secs(10));
        let (rest, end) = c.read_to_end_or_quiet();
        assert_eq!(end, End::Closed, "after a 400 the connection must close; got {:?}", String::from_utf8_lossy(&rest));
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    assert!(p.wait_log("request refused: unparseable", Duration::from_secs(5)), "every refusal is logged:\n{}", p.log_text());
    // Headers past hyper's limit: refused (431), never forwarded, never a hang.
    let mut huge = b"GET /_ping HTTP/1.1\r\nHost: d\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 600_000));
    huge.extend_from_slice(b"\r\n\r\n");
    let mut c = Conn::unix(&p.sock, T);
    let _ = c.stream.write_all(&huge); // the proxy may close before reading all of it
    let rsp = c.read_response();
    assert!(rsp.status == 431 || rsp.status == 400, "{rsp:?}");
    // None of that disturbed the proxy.
    assert_eq!(once(&p.sock, &get("/_ping")).body_text(), "OK");
    docker(&p.docker_host(), &["version"]);
}

/// `Content-Length` together with `Transfer-Encoding: chunked` (a smuggling attempt): chunked wins,
/// exactly one request is served and the connection closes, so the bytes after it are never a request.
#[test]
fn content_length_with_chunked_is_one_request_then_close() {
    let p = Proxy::start();
    let mut c = Conn::unix(&p.sock, T);
    c.send(b"GET /_ping HTTP/1.1\r\nHost: d\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1.41/info HTTP/1.1\r\nHost: d\r\n\r\n");
    let first = c.read_response();
    assert!(first.status == 200 || first.status == 400, "{first:?}");
    c.set_timeout(Duration::from_secs(10));
    let (rest, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed);
    assert!(!String::from_utf8_lossy(&rest).contains("HTTP/1.1"), "a second response came: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn http10_keep_alive_gets_two_responses_on_one_connection() {
    let p = Proxy::start();
    let mut c = Conn::unix(&p.sock, T);
    c.send(b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let first = c.read_response();
    assert_eq!((first.version.as_str(), first.status, first.body_text().as_str()), ("HTTP/1.0", 200, "OK"), "{first:?}");
    assert!(first.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")), "{first:?}");
    // The second request does not ask for keep-alive: answered, then the connection closes.
    c.send(b"GET /v1.41/version HTTP/1.0\r\n\r\n");
    let second = c.read_response();
    assert_eq!((second.version.as_str(), second.status), ("HTTP/1.0", 200), "{second:?}");
    let direct = once(direct_socket(), &get("/v1.41/version"));
    assert_eq!(second.json(), direct.json());
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(c.read_to_end_or_quiet().1, End::Closed);
}

/// A body the daemon streams (chunked) cannot be chunked to an HTTP/1.0 client: it must come whole,
/// delimited by the end of the connection.
#[test]
fn http10_keep_alive_with_a_streamed_body_ends_with_close() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("h10logs");
    cleanup.container(&name);
    docker(direct(), &["run", "--name", &name, BUSYBOX, "seq", "1", "3000"]);
    let path = format!("/v1.41/containers/{name}/logs?stdout=1");
    let mut c = Conn::unix(&p.sock, T);
    c.send(format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes());
    let rsp = c.read_response();
    assert_eq!(rsp.status, 200, "{rsp:?}");
    let expected: String = (1..=3000).map(|i| format!("{i}\n")).collect();
    let (stdout, _) = demux(&rsp.body);
    assert_eq!(String::from_utf8_lossy(&stdout), expected);
    let direct = once(direct_socket(), &get(&path));
    assert_eq!(rsp.body, direct.body, "the body must be the daemon's, byte for byte");
}

#[test]
fn http11_keep_alive_sequential_and_pipelined() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("pipeline");
    cleanup.container(&name);
    docker(direct(), &["create", "--name", &name, "--label", "ctproxy-test=pipeline", BUSYBOX, "true"]);

    // Sequential: ten requests, one connection.
    let mut c = Conn::unix(&p.sock, T);
    for i in 0..10 {
        c.send(&get(if i % 2 == 0 { "/_ping" } else { "/v1.41/version" }));
        let rsp = c.read_response();
        assert_eq!(rsp.status, 200, "request {i}: {rsp:?}");
    }

    // Pipelined: everything in one write, answers in order, the last one closes.
    let create = br#"{"Image":"ctproxy-test/busybox:latest","Cmd":["true"],"Labels":{"ctproxy-test":"pipelined"}}"#;
    let created = unique("pipelined");
    cleanup.container(&created);
    let mut batch = Vec::new();
    batch.extend(get("/_ping"));
    batch.extend_from_slice(b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n");
    batch.extend(get(&format!("/v1.41/containers/{name}/json")));
    batch.extend(
        format!(
            "POST /v1.41/containers/create?name={created} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            create.len()
        )
        .into_bytes(),
    );
    batch.extend_from_slice(create);
    batch.extend(get("/v1.41/containers/nonexistent-ctproxy-test/json"));
    batch.extend(get(&format!("/v1.41/containers/{created}/json")));
    batch.extend(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    let mut c = Conn::unix(&p.sock, T);
    c.send(&batch);
    let r = c.read_response();
    assert_eq!((r.status, r.body_text().as_str()), (200, "OK"));
    let r = c.read_response_to(true);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert!(r.header("api-version").is_some());
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Name"], format!("/{name}"));
    let r = c.read_response();
    assert_eq!(r.status, 201, "{r:?}");
    let id = r.json()["Id"].as_str().expect("Id").to_owned();
    let r = c.read_response();
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.json()["message"].as_str().expect("message").contains("No such container"));
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["Id"], id.as_str());
    assert_eq!(r.json()["Config"]["Labels"]["ctproxy-test"], "pipelined");
    let r = c.read_response();
    assert_eq!((r.status, r.body_text().as_str()), (200, "OK"));
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(c.read_to_end_or_quiet(), (Vec::new(), End::Closed));
}

#[test]
fn head_ping_has_the_daemon_headers_and_no_body() {
    let p = Proxy::start();
    let head = b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n";
    let direct = once(direct_socket(), head);
    let mut c = Conn::unix(&p.sock, T);
    // A GET right behind the HEAD: if the HEAD answer carried a body, this would not parse.
    c.send(&[&head[..], &get("/_ping")].concat());
    let via = c.read_response_to(true);
    assert_eq!(via.status, direct.status);
    for h in ["api-version", "server", "docker-experimental", "ostype", "content-type", "cache-control"] {
        assert!(via.header(h).is_some(), "{h} missing: {via:?}");
        assert_eq!(via.header(h), direct.header(h), "{h}");
    }
    let next = c.read_response();
    assert_eq!((next.status, next.body_text().as_str()), (200, "OK"), "{next:?}");
    assert_eq!(next.header("api-version"), direct.header("api-version"));
}

#[test]
fn versioned_and_unversioned_paths_answer_like_the_daemon() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("versions");
    cleanup.container(&name);
    docker(direct(), &["create", "--name", &name, "--label", "ctproxy-test=versions", BUSYBOX, "true"]);
    // Only this test's container, so parallel tests cannot change the list between the two calls.
    let filter = format!("%7B%22name%22%3A%5B%22{name}%22%5D%7D");
    for prefix in ["", "/v1.41", "/v1.40", "/v1.25"] {
        for path in [
            format!("{prefix}/containers/json?all=1&filters={filter}"),
            format!("{prefix}/containers/{name}/json"),
            format!("{prefix}/version"),
            format!("{prefix}/containers/nonexistent-ctproxy-test/json"),
        ] {
            let via = once(&p.sock, &get(&path));
            let direct = once(direct_socket(), &get(&path));
            assert_eq!(via.status, direct.status, "{path}");
            assert_eq!(via.header("api-version"), direct.header("api-version"), "{path}");
            assert_eq!(via.header("content-type"), direct.header("content-type"), "{path}");
            assert_eq!(via.json(), direct.json(), "{path}");
        }
    }
    let list = once(&p.sock, &get(&format!("/v1.40/containers/json?all=1&filters={filter}")));
    assert_eq!(list.json().as_array().map(Vec::len), Some(1), "{}", list.body_text());
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).min(rest.len());
        // Upper-case hex and a chunk extension: both legal, both seen in the wild.
        out.extend(format!("{n:X};ctproxy=test\r\n").into_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn chunked_and_expect_continue_request_bodies_reach_the_daemon() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let body = |label: &str| {
        serde_json::json!({"Image": BUSYBOX, "Cmd": ["echo", "chunked body"], "Labels": {"ctproxy-test": label}, "Env": ["X=".to_owned() + &"y".repeat(20_000)]})
            .to_string()
            .into_bytes()
    };

    // Chunked, in odd chunk sizes, followed by a pipelined GET on the same connection.
    let name = unique("chunked");
    cleanup.container(&name);
    let json = body("chunked");
    let mut c = Conn::unix(&p.sock, T);
    let mut req = format!(
        "POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    req.extend(chunked(&json, &[1, 7, 4096, 3, 10_000]));
    req.extend(get(&format!("/v1.41/containers/{name}/json")));
    c.send(&req);
    let created = c.read_response();
    assert_eq!(created.status, 201, "{created:?}");
    let inspected = c.read_response();
    assert_eq!(inspected.status, 200, "{inspected:?}");
    let config = &inspected.json()["Config"];
    assert_eq!(config["Labels"]["ctproxy-test"], "chunked");
    assert_eq!(config["Cmd"], serde_json::json!(["echo", "chunked body"]));
    assert!(
        config["Env"].as_array().expect("Env").iter().any(|e| e.as_str().is_some_and(|s| s.len() == 20_002)),
        "the whole body must arrive"
    );
    assert_eq!(docker(direct(), &["start", "-a", &name]), "chunked body\n");

    // `Expect: 100-continue` (curl does this for large bodies): 100 first, then the body, then 201.
    let name = unique("expect");
    cleanup.container(&name);
    let json = body("expect");
    let mut c = Conn::unix(&p.sock, T);
    c.send(
        format!(
            "POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            json.len()
        )
        .as_bytes(),
    );
    let cont = c.read_head();
    assert_eq!(cont.status, 100, "{cont:?}");
    c.send(&json);
    let created = c.read_response();
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(docker(direct(), &["inspect", "--format", "{{index .Config.Labels \"ctproxy-test\"}}", &name]).trim(), "expect");
}

/// `docker create -i` (stdin open, `StdinOnce`) running `cat`, started on the daemon directly.
fn cat_container(cleanup: &mut Cleanup, what: &str) -> String {
    let name = unique(what);
    cleanup.container(&name);
    docker(direct(), &["create", "-i", "--name", &name, BUSYBOX, "cat"]);
    docker(direct(), &["start", &name]);
    name
}

/// Writes `input` on a hijacked attach, reads the echo, half-closes and expects the session to end
/// with nothing lost; then the container has exited cleanly (its stdin was closed by our EOF).
fn echo_then_half_close(c: &mut Conn<std::os::unix::net::UnixStream>, name: &str, input: &[u8]) {
    c.send(input);
    let mut got = Vec::new();
    while demux(&got[..rawhttp::whole_frames(&got)]).0.len() < input.len() {
        got.extend(c.read_some(1));
    }
    c.shutdown_write();
    c.set_timeout(Duration::from_secs(10));
    let (rest, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed, "after stdin EOF the attach must end (container stdin closed, cat exits)");
    got.extend(rest);
    let (stdout, stderr) = demux(&got);
    assert_eq!(stdout, input);
    assert!(stderr.is_empty(), "{stderr:?}");
    let deadline = Instant::now() + T;
    loop {
        let state = docker(direct(), &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name]);
        if state.trim() == "exited 0" {
            break;
        }
        assert!(Instant::now() < deadline, "container state {state:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn legacy_hijack_without_upgrade_header() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = cat_container(&mut cleanup, "legacy");
    let mut c = Conn::unix(&p.sock, T);
    c.send(format!("POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes());
    let head = c.read_head();
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-type"), Some("application/vnd.docker.raw-stream"), "{head:?}");
    assert!(head.header("content-length").is_none() && head.header("transfer-encoding").is_none(), "a raw stream has no framing: {head:?}");
    echo_then_half_close(&mut c, &name, b"through the legacy hijack\n");
    let line = wait_access(&p, &[&format!("path=/v1.41/containers/{name}/attach"), "status=200"]);
    assert!(line.contains("bytes_in=26"), "{line}");

    // All at once, as `printf 'POST ...\r\n\r\nstdin' | socat - UNIX-CONNECT:...` sends it: the head,
    // stdin bytes hyper reads along with it, and EOF. The bytes reach the container, then EOF does.
    let name = cat_container(&mut cleanup, "legacy-oneshot");
    let mut c = Conn::unix(&p.sock, T);
    c.send(
        format!("POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: d\r\n\r\nsent with the head\n")
            .as_bytes(),
    );
    c.shutdown_write();
    let head = c.read_head();
    assert_eq!(head.status, 200, "{head:?}");
    c.set_timeout(Duration::from_secs(10));
    let (raw, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed);
    assert_eq!(String::from_utf8_lossy(&demux(&raw).0), "sent with the head\n");
}

#[test]
fn upgrade_tcp_hijack_gives_101() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = cat_container(&mut cleanup, "upgrade");
    let mut c = Conn::unix(&p.sock, T);
    c.send(
        format!(
            "POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
        )
        .as_bytes(),
    );
    let head = c.read_head();
    assert_eq!((head.version.as_str(), head.status), ("HTTP/1.1", 101), "{head:?}");
    assert!(head.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("tcp")), "{head:?}");
    assert!(head.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("upgrade")), "{head:?}");
    assert_eq!(head.header("content-type"), Some("application/vnd.docker.raw-stream"), "{head:?}");
    echo_then_half_close(&mut c, &name, b"through the upgrade\n");
    wait_access(&p, &[&format!("path=/v1.41/containers/{name}/attach"), "status=101", "bytes_in=20"]);
}

/// stdin EOF must reach the process, and what it writes after EOF must still come back.
#[test]
fn exec_stdin_half_close_then_output() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("exec-eof");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    for cli in ["docker", DOCKER_2010] {
        let mut child = docker_cmd(cli, &p.docker_host(), &["exec", "-i", &name, "sh", "-c", "cat; echo done"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker exec");
        child.stdin.take().expect("stdin").write_all(b"data").expect("write stdin");
        let out = child.wait_with_output().expect("docker exec");
        assert!(out.status.success(), "{cli}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "datadone\n", "{cli}");
    }

    // The same on the wire: exec create, start with Upgrade, write, half-close, read to the end.
    let create = br#"{"AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Cmd":["sh","-c","cat; echo done; echo err >&2"]}"#;
    let mut c = Conn::unix(&p.sock, T);
    let id = rawhttp::exec_create(&mut c, &name, create);
    rawhttp::exec_start_upgrade(&mut c, &id, b"");
    let head = c.read_head();
    assert_eq!(head.status, 101, "{head:?}");
    c.send(b"wire data");
    c.shutdown_write();
    c.set_timeout(Duration::from_secs(10));
    let (raw, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed);
    let (stdout, stderr) = demux(&raw);
    assert_eq!(String::from_utf8_lossy(&stdout), "wire datadone\n");
    assert_eq!(String::from_utf8_lossy(&stderr), "err\n");
    let inspect = once(&p.sock, &get(&format!("/v1.41/exec/{id}/json")));
    assert_eq!(inspect.json()["ExitCode"], 0, "{}", inspect.body_text());
}

#[test]
fn access_log_text_lines() {
    let config =
        "[listener.edge]\naddress = \"unix://{dir}/d.sock\"\n[listener.quiet]\naddress = \"unix://{dir}/quiet.sock\"\naccess_log = false\n";
    let p = Proxy::start_with_config(config, "d.sock");
    let uid = nix_uid();
    assert_eq!(once(&p.sock, &get("/_ping")).body_text(), "OK");
    let line = wait_access(&p, &["listener=edge", "path=/_ping"]);
    for part in [&format!("peer=uid={uid},gid="), ",pid=", "method=GET", "path=/_ping", "status=200", "bytes=2", "duration_us="] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    let us: u64 = field(&line, "duration_us").parse().expect("duration_us is a number");
    assert!(us > 0, "{line}");

    // A daemon error: its status and the exact body size.
    let missing = once(&p.sock, &get("/v1.41/containers/nonexistent-ctproxy-test/json"));
    assert_eq!(missing.status, 404);
    let line = wait_access(&p, &["listener=edge", "path=/v1.41/containers/nonexistent-ctproxy-test/json"]);
    assert!(line.contains("status=404") && line.contains(&format!("bytes={}", missing.body.len())), "{line}");

    // HEAD and POST are logged with their method.
    let _ = once(&p.sock, b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n");
    wait_access(&p, &["listener=edge", "method=HEAD", "path=/_ping", "status=200", "bytes=0"]);

    // access_log = false: answered, not logged.
    let quiet = p.dir().join("quiet.sock");
    assert_eq!(once(&quiet, &get("/_ping?quiet-listener=1")).status, 200);
    assert_eq!(once(&p.sock, &get("/_ping?after-quiet=1")).status, 200);
    // Lines are written in order: once a later request is logged, the quiet one would have been.
    let deadline = Instant::now() + T;
    while p.log_text().matches("listener=edge").count() < 4 {
        assert!(Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!p.log_text().contains("listener=quiet method="), "{}", p.log_text());
}

/// A client that walks away from a streaming response: the proxy notices, logs the exchange, and
/// keeps serving.
#[test]
fn client_leaving_a_stream_is_logged() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("leave");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "echo first; sleep 300"]);
    let mut c = Conn::unix(&p.sock, T);
    c.send(get(&format!("/v1.41/containers/{name}/logs?stdout=1&follow=1")).as_slice());
    let head = c.read_head();
    assert_eq!(head.status, 200);
    let _ = c.read_some(1);
    drop(c);
    let line = wait_access(&p, &[&format!("path=/v1.41/containers/{name}/logs"), "status=200"]);
    assert!(!line.contains("bytes=0"), "{line}");
    assert_eq!(once(&p.sock, &get("/_ping")).body_text(), "OK");
}

#[test]
fn json_log_format() {
    for how in ["flag", "config"] {
        let p = if how == "flag" {
            proxy_with(&["--log-format", "json"])
        } else {
            Proxy::start_with_config("[log]\nformat = \"json\"\n[listener.j]\naddress = \"unix://{dir}/d.sock\"\n", "d.sock")
        };
        assert_eq!(once(&p.sock, &get("/_ping")).body_text(), "OK");
        assert_eq!(once(&p.sock, &get("/v1.41/containers/nonexistent-ctproxy-test/json")).status, 404);
        let deadline = Instant::now() + T;
        while !p.log_text().contains("nonexistent-ctproxy-test") {
            assert!(Instant::now() < deadline, "{}", p.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = p.log_text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{how}: not a JSON line ({e}): {l:?}\n{text}")))
            .collect();
        assert!(lines.iter().any(|l| l["message"] == "listening" || l["fields"]["message"] == "listening"), "{how}: {text}");
        let access: Vec<&serde_json::Value> = lines.iter().filter(|l| l["target"] == "ctproxy::access").collect();
        assert_eq!(access.len(), 2, "{how}: {text}");
        let ping = access.iter().find(|l| l["path"] == "/_ping").expect("ping line");
        assert_eq!(ping["method"], "GET");
        assert_eq!(ping["status"], 200);
        assert_eq!(ping["bytes"], 2);
        assert!(ping["duration_us"].as_u64().is_some(), "{ping}");
        assert!(ping["peer"].as_str().is_some_and(|s| s.starts_with("uid=")), "{ping}");
        assert!(ping["listener"].as_str().is_some_and(|s| !s.is_empty()), "{ping}");
        assert!(ping["level"] == "INFO" && ping["timestamp"].is_string(), "{ping}");
        let missing = access.iter().find(|l| l["status"] == 404).expect("404 line");
        assert_eq!(missing["path"], "/v1.41/containers/nonexistent-ctproxy-test/json");
    }
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("{name} missing in {line}")) + name.len() + 2;
    line[start..].split(' ').next().unwrap_or_default()
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).expect("/proc/self")
}
