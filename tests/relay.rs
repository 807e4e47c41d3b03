//! The raw relay of transparent listeners (`src/http/relay.rs`), byte for byte over the unix socket:
//! chunked bodies both ways, bodiless answers (HEAD, 304), an upgrade with stdin sent along with the
//! head, HTTP/1.0 without keep-alive, a malformed chunked body, an upstream connection dockerd
//! closed, and a reload that adds a policy to a listener whose connections are already open; and
//! the whole exchanges of job sockets (creates, lists and inspects checked and rewritten on the
//! relay), with what they hand to hyper's server instead.

#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use rawhttp::{demux, Conn, End};
use support::jobs::*;
use support::*;

const T: Duration = Duration::from_secs(15);

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: docker\r\n\r\n").into_bytes()
}

fn once(sock: &Path, request: &[u8]) -> rawhttp::Response {
    let mut c = Conn::unix(sock, T);
    c.send(request);
    c.read_response_to(request.starts_with(b"HEAD "))
}

/// A chunked answer (logs of a stopped container) is relayed whole, byte for byte, and the
/// connection goes on: the ping pipelined behind it is answered.
#[test]
fn chunked_response_then_pipelined_request() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("relay-chunked");
    cleanup.container(&name);
    docker(direct(), &["run", "--name", &name, BUSYBOX, "seq", "1", "20000"]);
    let path = format!("/v1.41/containers/{name}/logs?stdout=1");
    let mut c = Conn::unix(&p.sock, T);
    c.send(&[get(&path), get("/_ping")].concat());
    let logs = c.read_response();
    assert_eq!(logs.status, 200, "{logs:?}");
    assert_eq!(logs.header("transfer-encoding"), Some("chunked"), "{logs:?}");
    let direct = once(direct_socket(), &get(&path));
    assert_eq!(logs.body, direct.body);
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&demux(&logs.body).0), expected);
    assert_eq!(c.read_response().body_text(), "OK");
}

/// A chunked request body whose chunk data contains what looks like a request: the framing is
/// followed, not the content, so exactly two answers come.
#[test]
fn chunked_request_body_is_framed_by_its_chunks() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("relay-chunked-req");
    cleanup.container(&name);
    let json = serde_json::json!({"Image": BUSYBOX, "Cmd": ["true"], "Labels": {"x": "GET /_ping HTTP/1.1\r\n\r\n0\r\n\r\n"}}).to_string();
    let mut body = Vec::new();
    for piece in json.as_bytes().chunks(5) {
        body.extend(format!("{:x}\r\n", piece.len()).into_bytes());
        body.extend_from_slice(piece);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\n");
    let mut c = Conn::unix(&p.sock, T);
    let head = format!(
        "POST /v1.41/containers/create?name={name} HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    // The head, then the body in two writes, then the next request.
    c.send(head.as_bytes());
    c.send(&body[..body.len() / 2]);
    std::thread::sleep(Duration::from_millis(50));
    c.send(&body[body.len() / 2..]);
    c.send(&get(&format!("/v1.41/containers/{name}/json")));
    let created = c.read_response();
    assert_eq!(created.status, 201, "{created:?}");
    let inspected = c.read_response();
    assert_eq!(inspected.json()["Config"]["Labels"]["x"], "GET /_ping HTTP/1.1\r\n\r\n0\r\n\r\n");
    c.set_timeout(Duration::from_millis(500));
    assert_eq!(c.read_to_end_or_quiet(), (Vec::new(), End::Open));
}

#[test]
fn malformed_chunked_body_closes_the_connection() {
    let p = Proxy::start();
    let mut c = Conn::unix(&p.sock, T);
    c.send(b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n");
    c.set_timeout(Duration::from_secs(10));
    let (rest, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed, "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(once(&p.sock, &get("/_ping")).body_text(), "OK");
}

/// HEAD and 304 answers have no body even with a length: the request behind each is answered.
#[test]
fn head_and_304_have_no_body() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("relay-304");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let mut c = Conn::unix(&p.sock, T);
    let start = format!("POST /v1.41/containers/{name}/start HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n");
    c.send(&[b"HEAD /_ping HTTP/1.1\r\nHost: d\r\n\r\n".to_vec(), start.into_bytes(), get("/_ping")].concat());
    let head = c.read_response_to(true);
    assert_eq!((head.status, head.body.len()), (200, 0), "{head:?}");
    let started = c.read_response();
    assert_eq!((started.status, started.body.len()), (304, 0), "already started: {started:?}");
    assert_eq!(c.read_response().body_text(), "OK");
}

/// An upgrade whose first stdin bytes come in the same write as the request head.
#[test]
fn upgrade_with_stdin_behind_the_head() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("relay-upgrade");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let create = br#"{"AttachStdin":true,"AttachStdout":true,"Cmd":["cat"]}"#;
    let mut c = Conn::unix(&p.sock, T);
    let id = rawhttp::exec_create(&mut c, &name, create);
    rawhttp::exec_start_upgrade(&mut c, &id, b"stdin along with the head");
    c.shutdown_write();
    let head = c.read_head();
    assert_eq!(head.status, 101, "{head:?}");
    c.set_timeout(Duration::from_secs(10));
    let (raw, end) = c.read_to_end_or_quiet();
    assert_eq!(end, End::Closed);
    assert_eq!(String::from_utf8_lossy(&demux(&raw).0), "stdin along with the head");
}

/// HTTP/1.0 without keep-alive: one answer, in HTTP/1.0, then the connection closes.
#[test]
fn http10_without_keep_alive_closes() {
    let p = Proxy::start();
    let mut c = Conn::unix(&p.sock, T);
    c.send(b"GET /_ping HTTP/1.0\r\n\r\n");
    let rsp = c.read_response();
    assert_eq!((rsp.version.as_str(), rsp.status, rsp.body_text().as_str()), ("HTTP/1.0", 200, "OK"), "{rsp:?}");
    c.set_timeout(Duration::from_secs(10));
    assert_eq!(c.read_to_end_or_quiet(), (Vec::new(), End::Closed));
}

/// A client that leaves a `logs -f` stream makes the daemon's side go too (its EOF is passed on), and
/// the exchange is logged.
#[test]
fn client_leaving_a_follow_stream_is_noticed() {
    let p = Proxy::start();
    let mut cleanup = Cleanup::new();
    let name = unique("relay-follow");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "echo first; sleep 300"]);
    let mut c = Conn::unix(&p.sock, T);
    c.send(&get(&format!("/v1.41/events?filters=%7B%22container%22%3A%5B%22{name}%22%5D%7D")));
    let head = c.read_head();
    assert_eq!(head.status, 200);
    drop(c);
    assert!(p.wait_log("path=/v1.41/events", T), "{}", p.log_text());
}

/// A reload that gives a transparent listener a policy: the connection opened before it is checked
/// from its next request on (the relay hands it over), and so are new ones.
#[test]
fn reload_adding_a_policy_applies_to_open_connections() {
    let plain = "[listener.l]\naddress = \"unix://{dir}/l.sock\"\n";
    let p = Proxy::start_with_config(plain, "l.sock");
    let mut c = Conn::unix(&p.sock, T);
    for _ in 0..3 {
        c.send(&get("/_ping"));
        assert_eq!(c.read_response().body_text(), "OK");
    }
    let strict = format!("{plain}policies = [\"strict\"]\n[policy.strict]\nkind = \"conservative\"\n");
    std::fs::write(p.dir().join("ctproxy.toml"), strict.replace("{dir}", &p.dir().display().to_string())).expect("write config");
    let before = p.log_text().matches("configuration reloaded").count();
    p.signal("HUP");
    let deadline = Instant::now() + T;
    while p.log_text().matches("configuration reloaded").count() <= before {
        assert!(Instant::now() < deadline, "no reload; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let create = br#"{"Image":"ctproxy-test/busybox:latest","HostConfig":{"Privileged":true}}"#;
    let request = [
        format!(
            "POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            create.len()
        )
        .into_bytes(),
        create.to_vec(),
    ]
    .concat();
    // The connection opened before the reload: refused, and still usable.
    c.send(&request);
    let refused = c.read_response();
    assert_eq!(refused.status, 403, "{refused:?}");
    c.send(&get("/_ping"));
    assert_eq!(c.read_response().body_text(), "OK");
    // A new connection.
    assert_eq!(once(&p.sock, &request).status, 403);
}

fn post_json(path: &str, json: &str, extra: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{json}", json.len())
        .into_bytes()
}

/// A job socket serves creates, lists and inspects whole on its relay (`RelayTo::whole`): pipelined
/// behind each other and behind a relayed ping on one connection, checked and rewritten as on the
/// checked path (the namespace's names, the policy's refusal, which leaves the connection usable),
/// with the daemon's chunked answer to a long list read whole. What cannot be read whole goes to
/// hyper's server on the same connection: `Expect: 100-continue`, a chunked body, HTTP/1.0, a body
/// over the limit.
#[test]
fn job_socket_serves_checked_requests_whole() {
    let host = JobHost::start();
    let job = host.job();
    let create =
        |name: &str| post_json(&format!("/v1.41/containers/create?name={name}"), &format!(r#"{{"Image":"{BUSYBOX}","Cmd":["true"]}}"#), "");
    let mut c = Conn::unix(&job.socket, T);
    c.send(&[get("/_ping"), create("first"), get("/v1.41/containers/first/json"), get("/v1.41/containers/json?all=1")].concat());
    assert_eq!(c.read_response().body_text(), "OK");
    let created = c.read_response();
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.json()["Id"].as_str().expect("Id").to_owned();
    let inspect = c.read_response();
    assert_eq!((inspect.status, inspect.json()["Name"].as_str()), (200, Some("/first")), "{inspect:?}");
    assert_eq!(inspect.json()["Id"].as_str(), Some(id.as_str()));
    let list = c.read_response();
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.json()[0]["Names"][0].as_str(), Some("/first"), "the job's name, as written");

    // Refused by the policy: 403, and the connection goes on.
    let privileged = post_json("/v1.41/containers/create", &format!(r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Privileged":true}}}}"#), "");
    c.send(&[privileged, get("/v1.41/containers/nosuch/json")].concat());
    let refused = c.read_response();
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body_text().contains("Privileged"), "{refused:?}");
    let missing = c.read_response();
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.json()["message"].as_str(), Some("No such container: nosuch"), "the client's name in the daemon's message");

    // A list longer than dockerd's write buffer comes chunked from it; the client gets it whole.
    for i in 0..25 {
        c.send(&create(&format!("c{i}")));
        assert_eq!(c.read_response().status, 201);
    }
    c.send(&get("/v1.41/containers/json?all=1"));
    let long = c.read_response();
    assert_eq!(long.status, 200, "{long:?}");
    assert!(long.body.len() > 8192 && long.header("content-length").is_some(), "{:?}", long.header("transfer-encoding"));
    let names: Vec<String> =
        long.json().as_array().expect("list").iter().map(|c| c["Names"][0].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(names.len(), 26, "{names:?}");
    assert!(names.iter().all(|n| n == "/first" || n.starts_with("/c")), "{names:?}");
    let direct = once(
        direct_socket(),
        &get(&format!("/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22io.ctproxy.namespace%3D{}%22%5D%7D", job.namespace)),
    );
    assert_eq!(direct.json().as_array().map(Vec::len), Some(26), "the daemon's own list of the namespace");

    // Not read whole, served by hyper's server on the same connection (which stays there).
    c.send(&post_json("/v1.41/containers/create?name=expect", &format!(r#"{{"Image":"{BUSYBOX}"}}"#), "Expect: 100-continue\r\n"));
    let mut answered = c.read_response();
    if answered.status == 100 {
        answered = c.read_response();
    }
    assert_eq!(answered.status, 201, "{answered:?}");
    let json = format!(r#"{{"Image":"{BUSYBOX}"}}"#);
    let chunked = format!(
        "POST /v1.41/containers/create?name=chunked HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{json}\r\n0\r\n\r\n",
        json.len()
    );
    c.send(chunked.as_bytes());
    assert_eq!(c.read_response().status, 201);
    // A body over the JSON limit: refused with 413 (the connection may close before all of it is
    // written, so the write's error is not the test's).
    let big = format!(r#"{{"Image":"{BUSYBOX}","Labels":{{"x":"{}"}}}}"#, "a".repeat(2 << 20));
    let mut raw = std::os::unix::net::UnixStream::connect(&job.socket).expect("connect");
    raw.set_read_timeout(Some(T)).expect("timeout");
    let _ = std::io::Write::write_all(&mut raw, &post_json("/v1.41/containers/create", &big, ""));
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut raw, &mut status).expect("an answer");
    assert_eq!(&status, b"HTTP/1.1 413", "over the JSON body limit");
    let mut c3 = Conn::unix(&job.socket, T);
    c3.send(
        format!(
            "POST /v1.41/containers/create?name=http10 HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )
        .as_bytes(),
    );
    assert_eq!(c3.read_response().status, 201);
    assert!(host.log_text().contains("path=/v1.41/containers/json"), "whole exchanges are in the access log");
    job.remove();
}
