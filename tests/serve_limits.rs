//! What one CI job could do to starve every other of ctproxy's file descriptors, and what stops it
//! (`src/http/serve.rs`, `src/http/clock.rs`, the relay's clock): a slowloris request head is cut
//! after the header timeout, an idle keep-alive connection after the idle timeout, and connections
//! over a listener's (or a job socket's) cap are answered 503 and closed. Hijacked sessions and
//! streams idle longer than both timeouts are not cut, and the real clients' connection pools
//! (docker CLI 28 and 20.10, docker-py, docker-compose 1.29) cope with the idle closes. Each case
//! runs on the raw relay (a listener that checks nothing) and on the hyper path (a listener with a
//! policy); the registry proxy and the cache (with its metrics) are served by the same entry point.

#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rawhttp::{demux, whole_frames, Conn};
use support::jobs::JobHost;
use support::*;

const T: Duration = Duration::from_secs(20);

/// Which connection driver serves the listener.
#[derive(Clone, Copy, Debug)]
enum Driver {
    /// No authentication, policy or namespace: the raw relay.
    Relay,
    /// A policy: hyper.
    Hyper,
}

/// ctproxy with one listener `main` on `docker.sock`, served by `path`, with `settings` (TOML keys of
/// `[listener.main]`).
fn proxy(path: Driver, settings: &str) -> Proxy {
    let policy = match path {
        Driver::Relay => "",
        Driver::Hyper => "policies = [\"conservative\"]",
    };
    let toml = format!(
        "[listener.main]\naddress = \"unix://{{dir}}/docker.sock\"\n{policy}\n{settings}\n[policy.conservative]\nkind = \"conservative\"\n"
    );
    Proxy::start_with_config(&toml, "docker.sock")
}

fn ping() -> &'static [u8] {
    b"GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
}

/// A keep-alive connection that has had one request answered: an idle member of a client's pool.
fn pinged(sock: &Path) -> Conn<UnixStream> {
    let mut c = Conn::unix(sock, T);
    c.send(ping());
    let r = c.read_response();
    assert_eq!((r.status, r.body_text().as_str()), (200, "OK"), "{r:?}");
    c
}

/// Reads `s` until the peer closes it; how long that took. Panics if it stays open for `limit`.
fn closed_within<S: Read>(s: &mut S, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("still open after {:?} (limit {limit:?})", started.elapsed())
            }
            Err(_) => return started.elapsed(),
        }
        assert!(started.elapsed() < limit, "still open after {:?}", started.elapsed());
    }
}

/// Whether a log line has all of `parts` (log lines are written asynchronously: waits up to 10 s).
fn wait_line(p: &Proxy, parts: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if p.log_text().lines().any(|l| parts.iter().all(|part| l.contains(part))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A request head sent a few bytes at a time, never finished (slowloris): the connection must be
/// closed about `header` after its first byte, although bytes keep coming.
fn slowloris<S: Read + Write + Send + 'static>(mut s: S, writer: S, header: Duration) -> Duration {
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\n").expect("first bytes");
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        // A header line every 200 ms, until the server closes the connection.
        for i in 0.. {
            std::thread::sleep(Duration::from_millis(200));
            if w.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).is_err() {
                return;
            }
        }
    });
    let took = closed_within(&mut s, header * 8);
    let _ = trickle.join();
    took
}

fn unix_pair(sock: &Path) -> (UnixStream, UnixStream) {
    let s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let w = s.try_clone().expect("clone");
    (s, w)
}

fn tcp_pair(addr: &str) -> (TcpStream, TcpStream) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(T)).expect("timeout");
    let w = s.try_clone().expect("clone");
    (s, w)
}

// === header timeout ===

fn slowloris_is_cut_after_the_header_timeout(path: Driver) {
    let header = Duration::from_secs(1);
    let p = proxy(path, "header_timeout = \"1s\"\nidle_timeout = \"60s\"");
    let (s, w) = unix_pair(&p.sock);
    let took = slowloris(s, w, header);
    assert!(took >= header.mul_f32(0.8) && took < header * 5, "closed after {took:?} (header timeout {header:?})");
    assert!(wait_line(&p, &["no complete request head within the header timeout", "listener=main"]), "{}", p.log_text());

    // A connection that says nothing at all is held to the same timeout, not the idle one.
    let mut silent = UnixStream::connect(&p.sock).expect("connect");
    silent.set_read_timeout(Some(T)).expect("timeout");
    let took = closed_within(&mut silent, header * 5);
    assert!(took >= header.mul_f32(0.8), "closed after {took:?}");

    // Real requests are not affected.
    drop(pinged(&p.sock));
    assert!(!docker(&p.docker_host(), &["version", "--format", "{{.Server.Version}}"]).trim().is_empty());
}

#[test]
fn slowloris_is_cut_after_the_header_timeout_relay() {
    slowloris_is_cut_after_the_header_timeout(Driver::Relay);
}

#[test]
fn slowloris_is_cut_after_the_header_timeout_hyper() {
    slowloris_is_cut_after_the_header_timeout(Driver::Hyper);
}

// === idle timeout ===

fn idle_connection_is_closed_after_the_idle_timeout(path: Driver) {
    // The idle timeout is longer than the header timeout: an idle connection must outlive the latter.
    let (header, idle) = (Duration::from_secs(1), Duration::from_secs(3));
    let p = proxy(path, "header_timeout = \"1s\"\nidle_timeout = \"3s\"");
    let mut c = pinged(&p.sock);
    // Requests within the idle timeout keep the connection.
    c.send(ping());
    assert_eq!(c.read_response().status, 200);
    let took = closed_within(&mut c.stream, idle * 4);
    assert!(took > header * 2 && took >= idle.mul_f32(0.8), "closed after {took:?} (idle {idle:?}, header {header:?})");
    assert!(wait_line(&p, &["idle longer than the idle timeout", "listener=main"]), "{}", p.log_text());
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout_relay() {
    idle_connection_is_closed_after_the_idle_timeout(Driver::Relay);
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout_hyper() {
    idle_connection_is_closed_after_the_idle_timeout(Driver::Hyper);
}

// === what must not be cut ===

/// An exec session (hijacked) and a `docker events` stream, both silent for longer than the header
/// and the idle timeout, still carry their bytes afterwards.
fn sessions_and_streams_outlive_the_timeouts(path: Driver) {
    let p = proxy(path, "header_timeout = \"1s\"\nidle_timeout = \"1s\"");
    let mut cleanup = Cleanup::new();
    let box_name = unique("limits-box");
    let later = unique("limits-later");
    cleanup.container(&box_name);
    cleanup.container(&later);
    docker(direct(), &["run", "-d", "--name", &box_name, BUSYBOX, "sleep", "300"]);

    let mut exec = Conn::unix(&p.sock, T);
    let create = br#"{"AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Cmd":["sh","-c","read line; echo got $line"]}"#;
    let id = rawhttp::exec_create(&mut exec, &box_name, create);
    rawhttp::exec_start_upgrade(&mut exec, &id, b"");
    assert_eq!(exec.read_head().status, 101);

    let mut events = Conn::unix(&p.sock, T);
    let filters = format!("%7B%22container%22%3A%5B%22{later}%22%5D%7D");
    events.send(format!("GET /v1.41/events?filters={filters} HTTP/1.1\r\nHost: docker\r\n\r\n").as_bytes());
    assert_eq!(events.read_head().status, 200);

    // Clocks: a connection that sends nothing is cut by the header timeout, one that went idle by
    // the idle timeout. Once both are closed, the session and the stream (opened before them) have
    // been silent longer than either timeout.
    let mut silent = UnixStream::connect(&p.sock).expect("connect");
    silent.set_read_timeout(Some(T)).expect("timeout");
    let mut idle = pinged(&p.sock);
    closed_within(&mut silent, T);
    closed_within(&mut idle.stream, T);

    exec.send(b"hello\n");
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&demux(&out[..whole_frames(&out)]).0).contains("got hello") {
        out.extend(exec.read_some(1));
    }

    docker(direct(), &["create", "--name", &later, BUSYBOX, "true"]);
    let mut seen = Vec::new();
    while !(String::from_utf8_lossy(&seen).contains(&later) && String::from_utf8_lossy(&seen).contains("\"create\"")) {
        seen.extend(events.read_some(1));
    }
}

#[test]
fn sessions_and_streams_outlive_the_timeouts_relay() {
    sessions_and_streams_outlive_the_timeouts(Driver::Relay);
}

#[test]
fn sessions_and_streams_outlive_the_timeouts_hyper() {
    sessions_and_streams_outlive_the_timeouts(Driver::Hyper);
}

/// The real clients keep working when the proxy closes their pooled connections: the docker CLIs
/// (Go's net/http) call exec inspect on a connection idle while the exec ran; docker-py (urllib3)
/// sends a non-idempotent POST on its pool after its connection was closed; docker-compose 1.29
/// removes the container of `run --rm` on a connection idle while the container ran.
fn client_pools_survive_idle_closes(path: Driver) {
    let p = proxy(path, "header_timeout = \"1s\"\nidle_timeout = \"1s\"");
    let host = p.docker_host();
    let mut cleanup = Cleanup::new();
    let box_name = unique("limits-pool");
    cleanup.container(&box_name);
    docker(direct(), &["run", "-d", "--name", &box_name, BUSYBOX, "sleep", "300"]);

    for cli in ["docker", DOCKER_2010] {
        let out = ok_within(
            docker_cmd(cli, &host, &["exec", &box_name, "sh", "-c", "sleep 3; echo done"]),
            None,
            Duration::from_secs(60),
            &format!("{cli} exec"),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done", "{cli}");
    }

    let script = r#"
import os, sys, docker
c = docker.DockerClient(base_url=sys.argv[1])
assert c.ping()
print(os.getpid(), flush=True)
sys.stdin.readline()
out = c.containers.run(sys.argv[2], ["echo", "pooled"], remove=True)
print(out.decode().strip(), flush=True)
"#;
    let mut py = Command::new("python3")
        .args(["-c", script, &host, BUSYBOX])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (run scripts/test-env)");
    let mut lines = BufReader::new(py.stdout.take().expect("stdout")).lines();
    let pid = lines.next().expect("pid line").expect("read");
    // The pool's connection is closed by the proxy before the next call.
    let peer = format!(",pid={pid}");
    assert!(wait_line(&p, &["idle longer than the idle timeout", &peer]), "{}", p.log_text());
    py.stdin.as_mut().expect("stdin").write_all(b"go\n").expect("write");
    let status = py.wait().expect("python");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let mut err = String::new();
    let _ = py.stderr.take().expect("stderr").read_to_string(&mut err);
    assert!(status.success() && rest.iter().any(|l| l == "pooled"), "docker-py: {status}\n{rest:?}\n{err}");

    let compose = Compose::new(&format!(
        "version: \"2.4\"\nservices:\n  svc:\n    image: {BUSYBOX}\n    command: [\"sh\", \"-c\", \"sleep 3; echo done\"]\n"
    ));
    let out = compose.run(&host, &["run", "-T", "--rm", "svc"]);
    assert!(out.contains("done"), "{out}");
}

#[test]
fn client_pools_survive_idle_closes_relay() {
    client_pools_survive_idle_closes(Driver::Relay);
}

#[test]
fn client_pools_survive_idle_closes_hyper() {
    client_pools_survive_idle_closes(Driver::Hyper);
}

// === connection cap ===

/// Asks for a ping on a new connection; the answer.
fn ping_once(sock: &Path) -> rawhttp::Response {
    let mut c = Conn::unix(sock, T);
    c.send(ping());
    c.read_response()
}

fn assert_refused(r: &rawhttp::Response, cap: usize) {
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.json()["message"], format!("ctproxy: too many connections to this listener (cap {cap})"), "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

/// Waits until a new connection is served again (the proxy notices closed connections by itself).
fn wait_served(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ping_once(sock);
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "still refused: {r:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With three connections held (one of them a hijacked exec session), a fourth is refused with a
/// Docker-style 503, the docker CLI shows why, and the refusal is audit-logged; once a held one
/// closes, connections are served again.
fn over_the_cap_is_refused_until_one_closes(path: Driver) {
    let p = proxy(path, "max_connections = 3");
    let mut cleanup = Cleanup::new();
    let box_name = unique("limits-cap");
    cleanup.container(&box_name);
    docker(direct(), &["run", "-d", "--name", &box_name, BUSYBOX, "sleep", "300"]);

    let mut exec = Conn::unix(&p.sock, T);
    let create = br#"{"AttachStdin":true,"AttachStdout":true,"Cmd":["cat"]}"#;
    let id = rawhttp::exec_create(&mut exec, &box_name, create);
    rawhttp::exec_start_upgrade(&mut exec, &id, b"");
    assert_eq!(exec.read_head().status, 101);
    let second = pinged(&p.sock);
    let _third = pinged(&p.sock);

    let mut c = Conn::unix(&p.sock, T);
    c.send(ping());
    assert_refused(&c.read_response(), 3);
    closed_within(&mut c.stream, T);
    let out = docker_output(&p.docker_host(), &["version", "--format", "{{.Server.Version}}"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("too many connections to this listener (cap 3)"),
        "{out:?}"
    );
    assert!(wait_line(&p, &["ctproxy::audit", "connection refused: too many connections", "cap=3"]), "{}", p.log_text());

    drop(second);
    wait_served(&p.sock);
    // The hijacked session was never disturbed.
    exec.send(b"still here\n");
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&demux(&out[..whole_frames(&out)]).0).contains("still here") {
        out.extend(exec.read_some(1));
    }
}

#[test]
fn over_the_cap_is_refused_until_one_closes_relay() {
    over_the_cap_is_refused_until_one_closes(Driver::Relay);
}

#[test]
fn over_the_cap_is_refused_until_one_closes_hyper() {
    over_the_cap_is_refused_until_one_closes(Driver::Hyper);
}

/// Every job socket has its own cap (and timeouts) from `[jobs]`: a job at its cap is refused more,
/// another job is not affected.
#[test]
fn each_job_socket_has_its_own_cap() {
    let host = JobHost::start_with("max_connections = 2\nheader_timeout = \"1s\"\n");
    let (a, b) = (host.job(), host.job());
    let held = [pinged(&a.socket), pinged(&a.socket)];
    assert_refused(&ping_once(&a.socket), 2);
    let out = a.docker(&["ps"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cap 2"), "{out:?}");
    assert!(host.audited(&format!("listener=job-{}", a.id)), "{}", host.log_text());
    // The other job has its own places.
    let b1 = pinged(&b.socket);
    assert_eq!(b.docker_ok(&["ps", "-q"]), "");
    drop(b1);
    drop(held);
    wait_served(&a.socket);
    assert_eq!(a.docker_ok(&["ps", "-q"]), "");

    // And the header timeout of `[jobs]`.
    let (s, w) = unix_pair(&a.socket);
    let took = slowloris(s, w, Duration::from_secs(1));
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
}

// === the other servers ===

/// The registry proxy, the cache's HTTP and HTTPS listeners and its metrics listener are held to
/// their section's limits too.
#[test]
fn registry_proxy_and_cache_are_held_to_their_limits() {
    // Every listener on port 0: the addresses are read back from the log.
    let toml = r#"
[listener.main]
address = "unix://{dir}/docker.sock"
[registry_proxy]
address = "127.0.0.1:0"
header_timeout = "1s"
idle_timeout = "1s"
max_connections = 2
[cache]
hosts = ["repo.test"]
listen = "127.0.0.1"
http_port = 0
https_port = 0
metrics_listen = "127.0.0.1:0"
dir = "{dir}/cache"
handshake_timeout = "1s"
header_timeout = "1s"
idle_timeout = "1s"
"#;
    let p = Proxy::start_with_config(toml, "docker.sock");
    let limit = Duration::from_secs(5);

    // Registry proxy: slowloris, idle, cap.
    let rp_addr = p.logged_addr("registry proxy listening").to_string();
    let http = p.logged_field_addr("cache listening", "http_addr").port();
    let https = p.logged_field_addr("cache listening", "https_addr").port();
    let metrics = p.logged_addr("cache metrics listening").port();
    let (s, w) = tcp_pair(&rp_addr);
    assert!(slowloris(s, w, Duration::from_secs(1)) < limit);
    let mut c = Conn::tcp(&rp_addr, T);
    c.send(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n");
    assert_eq!(c.read_response().status, 401);
    closed_within(&mut c.stream, limit);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut c = Conn::tcp(&rp_addr, T);
            c.send(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n");
            assert_eq!(c.read_response().status, 401);
            c
        })
        .collect();
    let mut over = Conn::tcp(&rp_addr, T);
    over.send(b"GET /v2/ HTTP/1.1\r\nHost: r\r\n\r\n");
    assert_refused(&over.read_response(), 2);
    drop(held);

    // Cache: a silent HTTP client, a client that never starts its TLS handshake.
    let mut silent = TcpStream::connect(format!("127.0.0.1:{http}")).expect("connect");
    silent.set_read_timeout(Some(T)).expect("timeout");
    assert!(closed_within(&mut silent, limit) >= Duration::from_millis(800));
    let mut no_hello = TcpStream::connect(format!("127.0.0.1:{https}")).expect("connect");
    no_hello.set_read_timeout(Some(T)).expect("timeout");
    assert!(closed_within(&mut no_hello, limit) >= Duration::from_millis(800));

    // Metrics: answered, then closed once idle.
    let mut m = Conn::tcp(&format!("127.0.0.1:{metrics}"), T);
    m.send(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(m.read_response().status, 200);
    closed_within(&mut m.stream, limit);
    drop(p);
}
