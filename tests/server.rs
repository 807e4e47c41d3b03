//! Issue acceptance: several listeners at once (unix, TCP, TLS with client certificates), SIGHUP
//! reload and SIGTERM drain, and the answers to bad input (daemon down, unparseable HTTP), HTTP/1.0
//! keep-alive and the legacy raw hijack.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn tls_docker(cli: &str, port: u16, client: Option<&certs::Issued>, ca: &std::path::Path, args: &[&str]) -> std::process::Output {
    let host = format!("tcp://127.0.0.1:{port}");
    let mut c = Command::new(cli);
    c.env_remove("DOCKER_HOST").arg("-H").arg(&host);
    match client {
        Some(cl) => c.args(["--tlsverify", "--tlscacert"]).arg(&cl.ca).arg("--tlscert").arg(&cl.cert).arg("--tlskey").arg(&cl.key),
        None => c.args(["--tls", "--tlscacert"]).arg(ca),
    };
    c.args(args).output().expect("docker over TLS")
}

#[test]
fn unix_tcp_and_tls_listeners_together() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("ctproxy-listeners-ca");
    let server = ca.server(&pki.path().join("server"));
    let client = ca.client(&pki.path().join("client"), "someone", &[]);
    // Ports chosen by the kernel, read back; two listeners may not share an address (`:0` too), so
    // the plain one is on 127.0.0.2 (loopback as well).
    let config = format!(
        r#"
[listener.local]
address = "unix://{{dir}}/d.sock"
mode = "0600"
[listener.plain]
address = "tcp://127.0.0.2:0"
[listener.secure]
address = "tcp://127.0.0.1:0"
[listener.secure.tls]
cert = "{}"
key = "{}"
client_ca = "{}"
"#,
        server.cert.display(),
        server.key.display(),
        server.ca.display()
    );
    let p = Proxy::start_with_config(&config, "d.sock");
    let (tcp_port, tls_port) = (p.tcp_port("plain"), p.tcp_port("secure"));
    let version = ["version", "--format", "{{.Server.Version}}"];
    let expected = docker(direct(), &version);
    assert_eq!(docker(&p.docker_host(), &version), expected);
    assert_eq!(docker(&format!("tcp://127.0.0.2:{tcp_port}"), &version), expected);
    for cli in ["docker", DOCKER_2010] {
        let out = tls_docker(cli, tls_port, Some(&client), &server.ca, &version);
        assert!(out.status.success(), "{cli} --tlsverify: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p.sock).expect("socket").permissions());
    assert_eq!(mode & 0o777, 0o600);

    // Without a client certificate the handshake itself fails: no HTTP request is ever read.
    // (Access-log lines are written a few milliseconds after their request: both CLIs' `version`
    // lines must have landed first.)
    let deadline = Instant::now() + Duration::from_secs(5);
    let versions = |log: String| {
        log.lines().filter(|l| l.contains("ctproxy::access") && l.contains("listener=secure") && l.contains("/version")).count()
    };
    while versions(p.log_text()) < 2 {
        assert!(Instant::now() < deadline, "the TLS clients' access-log lines never landed:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = p.log_text().matches("listener=secure").count();
    let out = tls_docker("docker", tls_port, None, &server.ca, &version);
    assert!(!out.status.success(), "a client without a certificate must be refused");
    assert!(p.wait_log("connection refused at handshake", Duration::from_secs(5)), "{}", p.log_text());
    assert_eq!(p.log_text().matches("listener=secure").count() - p.log_text().matches("refused at handshake").count(), before);
}

fn config_with(listeners: &[&str]) -> String {
    listeners.iter().map(|n| format!("[listener.{n}]\naddress = \"unix://{{dir}}/{n}.sock\"\n")).collect()
}

fn write_config(p: &Proxy, text: &str) {
    std::fs::write(p.dir().join("ctproxy.toml"), with_upstream(&text.replace("{dir}", &p.dir().display().to_string()))).expect("config");
}

#[test]
fn sighup_reloads_without_dropping_connections() {
    let p = Proxy::start_with_config(&config_with(&["a"]), "a.sock");
    let a = format!("unix://{}/a.sock", p.dir().display());
    let b = format!("unix://{}/b.sock", p.dir().display());
    let mut c = Cleanup::new();
    let name = unique("reload");
    c.container(&name);
    docker(&a, &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "for i in $(seq 1 30); do echo tick $i; sleep 0.1; done"]);
    let follower = docker_cmd("docker", &a, &["logs", "-f", &name]).stdout(Stdio::piped()).spawn().expect("logs -f");

    // Add a listener: it answers, the old one too, and the stream started before goes on.
    write_config(&p, &config_with(&["a", "b"]));
    p.signal("HUP");
    assert!(p.wait_log("configuration reloaded", Duration::from_secs(5)), "{}", p.log_text());
    docker(&b, &["version"]);
    docker(&a, &["version"]);

    // A broken file is refused and changes nothing.
    std::fs::write(p.dir().join("ctproxy.toml"), "[listener.a]\naddress = 42\n").expect("config");
    p.signal("HUP");
    assert!(p.wait_log("configuration reload refused", Duration::from_secs(5)), "{}", p.log_text());
    docker(&a, &["version"]);
    docker(&b, &["version"]);

    // Removing a listener closes it.
    write_config(&p, &config_with(&["a"]));
    p.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.dir().join("b.sock").exists() {
        assert!(Instant::now() < deadline, "listener b still open after its removal");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!docker_output(&b, &["version"]).status.success());

    let out = follower.wait_with_output().expect("logs -f");
    let expected: String = (1..=30).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected, "the stream across reloads lost data");
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("term");
    c.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "sleep 2; exit 7"]);
    let waiter = docker_cmd("docker", &p.docker_host(), &["wait", &name]).stdout(Stdio::piped()).spawn().expect("docker wait");
    assert!(
        p.wait_log("/wait", Duration::from_secs(5)) || {
            std::thread::sleep(Duration::from_millis(500));
            true
        }
    );
    std::thread::sleep(Duration::from_millis(300));
    p.signal("TERM");
    let out = waiter.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "the in-flight wait must complete");
    let status = p.wait_exit(Duration::from_secs(10)).expect("ctproxy must exit after draining");
    assert!(status.success(), "exit status {status}");
    assert!(!p.sock.exists(), "the socket file must be removed");
}

#[test]
fn sigterm_grace_time_cuts_endless_streams() {
    let mut p = Proxy::start_with_config("[listener.a]\naddress = \"unix://{dir}/d.sock\"\n[shutdown]\ngrace_ms = 500\n", "d.sock");
    let mut c = Cleanup::new();
    let name = unique("grace");
    c.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let mut follower = docker_cmd("docker", &p.docker_host(), &["logs", "-f", &name]).spawn().expect("logs -f");
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some(), "ctproxy must exit after the grace time");
    assert!(t.elapsed() < Duration::from_secs(10));
    let _ = follower.kill();
    let _ = follower.wait();
}

fn raw_unix(sock: &std::path::Path, request: &[u8]) -> String {
    String::from_utf8_lossy(&raw_request(sock, request, Duration::from_secs(15))).into_owned()
}

#[test]
fn daemon_down_gives_502_not_a_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("d.sock");
    let listen = format!("unix://{}", sock.display());
    let closed_port = ClosedPort::new();
    let closed = format!("tcp://127.0.0.1:{}", closed_port.port);
    for upstream in ["unix:///nonexistent/docker.sock", closed.as_str()] {
        let d = tempfile::tempdir().expect("tempdir");
        let s = d.path().join("d.sock");
        let p = Proxy::spawn(d, s.clone(), &["--listen", &format!("unix://{}", s.display()), "--upstream", upstream]);
        let t = Instant::now();
        let rsp = raw_unix(&p.sock, b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(rsp.starts_with("HTTP/1.1 502"), "{rsp}");
        let body = &rsp[rsp.find("\r\n\r\n").expect("head") + 4..];
        let v: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON body");
        assert!(v["message"].as_str().expect("message").contains("cannot reach the Docker daemon"), "{v}");
    }
    drop(listen);
}

#[test]
fn unparseable_http_gets_400() {
    let p = Proxy::start();
    for garbage in [
        &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET /_ping HTTP/9.9\r\n\r\n",
        b"GET /_ping HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let rsp = raw_unix(&p.sock, garbage);
        assert!(rsp.starts_with("HTTP/1.1 400") || rsp.starts_with("HTTP/1.0 400"), "{garbage:?} → {rsp:?}");
    }
    // The proxy is still fine.
    docker(&p.docker_host(), &["version"]);
}

#[test]
fn keep_alive_http10_and_http11_pipelined() {
    let p = Proxy::start();
    let two10 = b"GET /_ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /_ping HTTP/1.0\r\n\r\n";
    let rsp = raw_unix(&p.sock, two10);
    assert_eq!(rsp.matches("HTTP/1.0 200 OK").count(), 2, "{rsp}");
    let three11 = b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\nGET /v1.41/containers/json HTTP/1.1\r\nHost: d\r\n\r\nHEAD /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n";
    let rsp = raw_unix(&p.sock, three11);
    assert_eq!(rsp.matches("HTTP/1.1 200 OK").count(), 3, "{rsp}");
    assert!(rsp.to_ascii_lowercase().contains(&format!("api-version: {}", daemon_api_version())), "{rsp}");
}

#[test]
fn legacy_raw_hijack_and_upgrade_form() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("hijack");
    c.container(&name);
    docker(direct(), &["run", "-d", "-i", "--name", &name, BUSYBOX, "cat"]);
    // The legacy form is answered as dockerd answers it (a transparent listener relays its bytes).
    for (upgrade, status) in [("", "HTTP/1.1 200 OK"), ("Connection: Upgrade\r\nUpgrade: tcp\r\n", "HTTP/1.1 101")] {
        let mut s = UnixStream::connect(&p.sock).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        write!(s, "POST /v1.41/containers/{name}/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\nHost: d\r\n{upgrade}\r\n").expect("write");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("response head");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with(status), "{head}");
        assert!(head.to_ascii_lowercase().contains("application/vnd.docker"), "{head}");
        s.write_all(b"echo me\n").expect("stdin");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("echo me") {
            let n = s.read(&mut buf).expect("stream");
            assert!(n > 0, "stream ended early: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        s.shutdown(std::net::Shutdown::Write).expect("half-close");
    }
}

#[test]
fn json_logs_on_request() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = d.path().join("d.sock");
    let p = Proxy::spawn(d, s.clone(), &["--listen", &format!("unix://{}", s.display()), "--log-format", "json"]);
    docker(&p.docker_host(), &["version"]);
    assert!(p.wait_log("\"status\":200", Duration::from_secs(5)), "{}", p.log_text());
    let access = p.log_text().lines().find(|l| l.contains("ctproxy::access")).map(str::to_owned).expect("access line");
    let v: serde_json::Value = serde_json::from_str(&access).expect("JSON log line");
    for field in ["listener", "peer", "method", "path", "status", "bytes", "duration_us"] {
        assert!(v.get(field).is_some(), "{field} missing in {access}");
    }
}

/// A remote dockerd over TLS with a client certificate, as `DOCKER_HOST=tcp://host:2376` with
/// `--tlsverify`: here the remote daemon is a second ctproxy serving TLS with `client_ca` in front of
/// the real daemon, so both ends of ctproxy's TLS are exercised.
#[test]
fn upstream_over_tls_with_a_client_certificate() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("ctproxy-upstream-ca");
    let server = ca.server(&pki.path().join("server"));
    let client = ca.client(&pki.path().join("client"), "front-proxy", &[]);
    let remote = format!(
        "[listener.remote]\naddress = \"tcp://127.0.0.1:0\"\n[listener.remote.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n[listener.probe]\naddress = \"unix://{{dir}}/probe.sock\"\n",
        server.cert.display(),
        server.key.display(),
        server.ca.display()
    );
    let remote = Proxy::start_with_config(&remote, "probe.sock");
    let port = remote.tcp_port("remote");
    let front = format!(
        "[upstream]\nurl = \"tcp://localhost:{port}\"\n[upstream.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[listener.local]\naddress = \"unix://{{dir}}/d.sock\"\n",
        client.ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let front = Proxy::start_with_config(&front, "d.sock");
    let version = ["version", "--format", "{{.Server.Version}}"];
    assert_eq!(docker(&front.docker_host(), &version), docker(direct(), &version));
    assert_eq!(docker(&front.docker_host(), &["run", "--rm", BUSYBOX, "echo", "via TLS"]), "via TLS\n");
    assert!(remote.log_text().contains("listener=remote"), "the request must have crossed the TLS hop");

    // Without the client certificate, the remote end refuses the handshake and the front answers 502.
    let bare = format!("[upstream]\nurl = \"tcp://localhost:{port}\"\n[upstream.tls]\nca = \"{}\"\n[listener.local]\naddress = \"unix://{{dir}}/d.sock\"\n", client.ca.display());
    let bare = Proxy::start_with_config(&bare, "d.sock");
    let out = docker_output(&bare.docker_host(), &version);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the Docker daemon"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every API version the daemon accepts passes, with or without the prefix, spelled as dockerd
/// reads it (`/v1.040/` is 1.40); the daemon's own answers for versions it refuses come through too
/// (1.12 is too old for Docker 28, whose oldest is 1.24).
#[test]
fn all_api_versions_pass_through() {
    let p = Proxy::start();
    let minor = |v: &str| -> u32 { v.strip_prefix("1.").and_then(|m| m.split('.').next()).and_then(|m| m.parse().ok()).expect("1.N") };
    let oldest = minor(daemon_version()["MinAPIVersion"].as_str().expect("MinAPIVersion"));
    for path in ["/_ping", "/v1.12/_ping", "/v1.24/version", "/v1.040/version", "/v1.41/version", "/containers/json", "/v1.41.0/_ping"] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
        let (via, direct) = (raw_unix(&p.sock, req.as_bytes()), raw_request(direct_socket(), req.as_bytes(), Duration::from_secs(10)));
        let status = |r: &str| r.get(..12).map(str::to_owned);
        assert_eq!(status(&via), status(&String::from_utf8_lossy(&direct)), "{path}");
        let too_old = path.strip_prefix("/v").and_then(|v| v.split('/').next()).is_some_and(|v| minor(v) < oldest);
        if too_old {
            assert!(via.starts_with("HTTP/1.1 400") && via.contains("is too old"), "{path}: {via}");
        } else {
            assert!(via.starts_with("HTTP/1.1 200"), "{path}: {via}");
        }
    }
    let too_new = raw_unix(&p.sock, b"GET /v1.99/version HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    assert!(too_new.starts_with("HTTP/1.1 400") && too_new.contains("is too new"), "{too_new}");
}
