//! Listeners: unix, plain TCP and TLS with client certificates served by one process at once; TLS
//! clients without a valid certificate refused at the handshake; unix socket mode and ownership; the
//! configuration check (`serve --check`) and start-up failures.

#[path = "support/certs.rs"]
mod certs;
#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rawhttp::Conn;
use support::*;

const T: Duration = Duration::from_secs(15);
const VERSION: [&str; 3] = ["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The docker CLI against a TLS endpoint: `--tlsverify` with `client`'s certificate, or `--tls` with
/// only a CA (no client certificate at all: an empty `DOCKER_CERT_PATH` makes sure none is found).
fn tls_docker(cli: &str, host: &str, ca: &Path, client: Option<&certs::Issued>, args: &[&str]) -> Output {
    let empty = tempfile::tempdir().expect("tempdir");
    let mut c = Command::new(cli);
    c.env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env("DOCKER_CERT_PATH", empty.path())
        .env("DOCKER_CONFIG", empty.path())
        .args(["-H", host]);
    match client {
        Some(cl) => c.arg("--tlsverify").arg("--tlscacert").arg(&cl.ca).arg("--tlscert").arg(&cl.cert).arg("--tlskey").arg(&cl.key),
        None => c.arg("--tls").arg("--tlscacert").arg(ca),
    };
    c.args(args).stdin(Stdio::null()).output().expect("run docker")
}

struct Pki {
    _dir: tempfile::TempDir,
    server: certs::Issued,
    client: certs::Issued,
    /// A client certificate from a CA the listener does not trust.
    stranger: certs::Issued,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("ctproxy-listeners-ca");
    let server = ca.server(&dir.path().join("server"));
    let client = ca.client(&dir.path().join("client"), "ctproxy-client", &[]);
    let other = certs::Ca::new("ctproxy-other-ca");
    let stranger = other.client(&dir.path().join("stranger"), "ctproxy-stranger", &[]);
    Pki { _dir: dir, server, client, stranger }
}

fn tls_section(name: &str, pki: &Pki, client_ca: bool) -> String {
    let mut s = format!("[listener.{name}.tls]\ncert = \"{}\"\nkey = \"{}\"\n", pki.server.cert.display(), pki.server.key.display());
    if client_ca {
        s += &format!("client_ca = \"{}\"\n", pki.server.ca.display());
    }
    s
}

/// unix + TCP + TLS (client certificates required), in one process.
fn three_listeners(pki: &Pki) -> (Proxy, u16, u16) {
    // Ports chosen by the kernel, read back; two listeners may not share an address (`:0` too), so
    // the plain one is on 127.0.0.2 (loopback as well).
    let config = format!(
        "[listener.local]\naddress = \"unix://{{dir}}/d.sock\"\nmode = \"0600\"\ngroup = \"0\"\n\
         [listener.plain]\naddress = \"tcp://127.0.0.2:0\"\n\
         [listener.secure]\naddress = \"tcp://127.0.0.1:0\"\n{}",
        tls_section("secure", pki, true)
    );
    let p = Proxy::start_with_config(&config, "d.sock");
    let (tcp, tls) = (p.tcp_port("plain"), p.tcp_port("secure"));
    (p, tcp, tls)
}

fn wait_log_line(p: &Proxy, parts: &[&str]) -> String {
    let deadline = Instant::now() + T;
    loop {
        if let Some(l) = p.log_text().lines().find(|l| parts.iter().all(|x| l.contains(x))) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line with {parts:?}:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unix_tcp_and_tls_listeners_at_once() {
    let pki = pki();
    let (p, tcp, tls) = three_listeners(&pki);
    let expected = docker(direct(), &VERSION);

    assert_eq!(docker(&p.docker_host(), &VERSION), expected, "unix listener");
    assert_eq!(docker(&format!("tcp://127.0.0.2:{tcp}"), &VERSION), expected, "TCP listener");
    for cli in ["docker", DOCKER_2010] {
        for host in [format!("tcp://127.0.0.1:{tls}"), format!("tcp://localhost:{tls}")] {
            let out = tls_docker(cli, &host, &pki.server.ca, Some(&pki.client), &VERSION);
            assert!(out.status.success(), "{cli} --tlsverify -H {host}: {}", text(&out.stderr));
            assert_eq!(text(&out.stdout), expected, "{cli} -H {host}");
        }
    }
    // The access log tells the listeners apart, and names the verified certificate.
    let path = format!("path=/v{}/version", cli_api_version());
    wait_log_line(&p, &["ctproxy::access", "listener=local", "peer=uid=", &path, "status=200"]);
    wait_log_line(&p, &["ctproxy::access", "listener=plain", "peer=127.0.0.1:", &path, "status=200"]);
    wait_log_line(&p, &["ctproxy::access", "listener=secure", ",cn=ctproxy-client", &path, "status=200"]);

    // A hijacked session over TLS: stdin in, output back, EOF through.
    let mut cleanup = Cleanup::new();
    let name = unique("tls-run");
    cleanup.container(&name);
    let empty = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("docker")
        .env_remove("DOCKER_HOST")
        .env("DOCKER_CONFIG", empty.path())
        .args(["-H", &format!("tcp://127.0.0.1:{tls}"), "--tlsverify", "--tlscacert"])
        .arg(&pki.client.ca)
        .arg("--tlscert")
        .arg(&pki.client.cert)
        .arg("--tlskey")
        .arg(&pki.client.key)
        .args(["run", "-i", "--rm", "--name", &name, BUSYBOX, "sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run over TLS");
    child.stdin.take().expect("stdin").write_all(b"over TLS\n").expect("stdin");
    let out = child.wait_with_output().expect("docker run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over TLS\nend\n");

    // Raw HTTP on the plain TCP listener: keep-alive works there too.
    let mut c = Conn::tcp(&format!("127.0.0.2:{tcp}"), T);
    for _ in 0..3 {
        c.send(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n");
        assert_eq!(c.read_response().body_text(), "OK");
    }
}

#[test]
fn tls_handshake_refuses_clients_without_a_valid_certificate() {
    let pki = pki();
    let (p, tcp, tls) = three_listeners(&pki);
    let host = format!("tcp://127.0.0.1:{tls}");
    let refusals = || p.log_text().matches("connection refused at handshake").count();
    let served_on_secure = || p.log_text().lines().filter(|l| l.contains("ctproxy::access") && l.contains("listener=secure")).count();

    type Client<'a> = Box<dyn Fn() -> Output + 'a>;
    let cases: [(&str, Client); 4] = [
        ("no client certificate (docker --tls)", Box::new(|| tls_docker("docker", &host, &pki.server.ca, None, &VERSION))),
        ("no client certificate (Debian's docker --tls)", Box::new(|| tls_docker(DOCKER_2010, &host, &pki.server.ca, None, &VERSION))),
        ("a certificate from another CA", Box::new(|| tls_docker("docker", &host, &pki.server.ca, Some(&pki.stranger), &VERSION))),
        ("plain HTTP on the TLS port", Box::new(|| docker_output(&host, &VERSION))),
    ];
    for (what, run) in &cases {
        let before = refusals();
        let out = run();
        assert!(!out.status.success(), "{what}: must fail, got {}", text(&out.stdout));
        let deadline = Instant::now() + T;
        while refusals() <= before {
            assert!(Instant::now() < deadline, "{what}: no handshake refusal logged:\n{}", p.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(served_on_secure(), 0, "{what}: no request may be served:\n{}", p.log_text());
    }
    let line = wait_log_line(&p, &["connection refused at handshake", "listener=secure"]);
    assert!(line.contains("peer=127.0.0.1:"), "{line}");

    // TLS spoken to the plain TCP listener fails on the client side; the listener is unharmed.
    let out = tls_docker("docker", &format!("tcp://127.0.0.2:{tcp}"), &pki.server.ca, Some(&pki.client), &VERSION);
    assert!(!out.status.success());
    docker(&format!("tcp://127.0.0.2:{tcp}"), &VERSION);

    // After all that, a proper client is served.
    let out = tls_docker("docker", &host, &pki.server.ca, Some(&pki.client), &VERSION);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_log_line(&p, &["ctproxy::access", "listener=secure", ",cn=ctproxy-client", "status=200"]);
}

/// Without `client_ca` the TLS listener serves clients that present no certificate.
#[test]
fn tls_without_client_ca_serves_any_client() {
    let pki = pki();
    let config = format!(
        "[listener.probe]\naddress = \"unix://{{dir}}/probe.sock\"\n[listener.open]\naddress = \"tcp://127.0.0.1:0\"\n{}",
        tls_section("open", &pki, false)
    );
    let p = Proxy::start_with_config(&config, "probe.sock");
    let port = p.tcp_port("open");
    let host = format!("tcp://127.0.0.1:{port}");
    let expected = docker(direct(), &VERSION);
    for client in [None, Some(&pki.client)] {
        let out = tls_docker("docker", &host, &pki.server.ca, client, &VERSION);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected);
    }
    wait_log_line(&p, &["ctproxy::access", "listener=open", "status=200"]);
}

/// `docker version` on `sock` as user and group 65534 (`nobody`/`nogroup`, no supplementary groups).
fn docker_as_nobody(sock: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "docker", "-H", &format!("unix://{}", sock.display())])
        .args(VERSION)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env("DOCKER_CONFIG", "/nonexistent")
        .env("HOME", "/nonexistent")
        .output()
        .expect("setpriv docker")
}

#[test]
fn unix_socket_mode_owner_and_group_are_applied() {
    let config = "\
[listener.private]
address = \"unix://{dir}/private.sock\"
mode = \"0600\"
group = \"0\"
[listener.shared]
address = \"unix://{dir}/shared.sock\"
mode = \"0660\"
owner = \"nobody\"
group = \"nogroup\"
[listener.numeric]
address = \"unix://{dir}/numeric.sock\"
mode = \"0660\"
owner = \"0\"
group = \"65534\"
";
    let p = Proxy::start_with_config(config, "private.sock");
    let stat = |name: &str| {
        let m = std::fs::metadata(p.dir().join(format!("{name}.sock"))).expect("socket");
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    };
    // The harness waited for `private` only: the other sockets may still be being bound, and
    // their owner and mode are set just after: wait for that, not for a fixed time.
    let deadline = Instant::now() + T;
    let settled = |name: &str, want: (u32, u32, u32)| {
        while p.dir().join(format!("{name}.sock")).exists().then(|| stat(name)) != Some(want) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stat(name)
    };
    assert_eq!(settled("private", (0o600, 0, 0)), (0o600, 0, 0));
    assert_eq!(settled("shared", (0o660, 65534, 65534)), (0o660, 65534, 65534));
    assert_eq!(settled("numeric", (0o660, 0, 65534)), (0o660, 0, 65534));

    // The kernel enforces them: nobody may use the shared sockets, not the private one.
    std::fs::set_permissions(p.dir(), std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let expected = docker(direct(), &VERSION);
    for allowed in ["shared", "numeric"] {
        let out = docker_as_nobody(&p.dir().join(format!("{allowed}.sock")));
        assert!(out.status.success(), "{allowed}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected);
    }
    let out = docker_as_nobody(&p.dir().join("private.sock"));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("permission denied"), "{}", text(&out.stderr));
    docker(&p.docker_host(), &["version"]);

    // `--listen` sockets get 0660.
    let q = Proxy::start();
    assert_eq!(std::fs::metadata(&q.sock).expect("socket").permissions().mode() & 0o7777, 0o660);
}

fn check(config: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctproxy.toml");
    std::fs::write(&path, config.replace("{dir}", &dir.path().display().to_string())).expect("write config");
    let out =
        Command::new(env!("CARGO_BIN_EXE_ctproxy")).args(["serve", "--check", "--config"]).arg(&path).output().expect("ctproxy --check");
    (out, dir)
}

#[test]
fn check_accepts_a_valid_configuration_without_binding_anything() {
    let pki = pki();
    // Held unbound-to-listen for the whole test: nothing else can start listening there.
    let closed = ClosedPort::new();
    let port = closed.port;
    let config = format!(
        "[upstream]\nurl = \"unix:///var/run/docker.sock\"\n\
         [listener.local]\naddress = \"unix://{{dir}}/d.sock\"\nmode = \"0600\"\nowner = \"root\"\ngroup = \"0\"\n\
         [listener.secure]\naddress = \"tcp://127.0.0.1:{port}\"\n{}\
         [shutdown]\ngrace_ms = 500\n[log]\nformat = \"json\"\n",
        tls_section("secure", &pki, true)
    );
    let (out, dir) = check(&config);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "configuration OK: 2 listener(s), upstream unix:///var/run/docker.sock\n");
    assert!(!dir.path().join("d.sock").exists(), "--check must not bind");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "--check must not listen");

    // The embedded default, and --listen on the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_ctproxy")).args(["serve", "--check"]).output().expect("ctproxy");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_ctproxy"))
        .args(["serve", "--check", "--listen", "unix:///tmp/x.sock", "--listen", "tcp://127.0.0.1:1", "--upstream", "tcp://127.0.0.1:2"])
        .output()
        .expect("ctproxy");
    assert_eq!(text(&out.stdout), "configuration OK: 2 listener(s), upstream tcp://127.0.0.1:2\n");
}

#[test]
fn check_refuses_broken_configurations_naming_key_and_line() {
    let unix = "[listener.a]\naddress = \"unix:///tmp/ctproxy-check.sock\"\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("unknown key", format!("{unix}mdoe = \"0600\"\n"), vec!["line 3", "mdoe", "unknown field"]),
        ("bad address", "[listener.a]\naddress = \"http://x\"\n".into(), vec!["line 2", "address = \"http://x\"", "invalid address"]),
        ("relative unix path", "[listener.a]\naddress = \"unix://run/d.sock\"\n".into(), vec!["line 2", "invalid address"]),
        ("port out of range", "[listener.a]\naddress = \"tcp://127.0.0.1:70000\"\n".into(), vec!["line 2", "invalid address"]),
        ("bad mode", format!("{unix}mode = \"rw\"\n"), vec!["line 3", "mode", "invalid file mode"]),
        ("wrong type", format!("{unix}[shutdown]\ngrace_ms = \"soon\"\n"), vec!["line 4", "grace_ms", "invalid type"]),
        ("unknown section", format!("{unix}[listenr.b]\naddress = \"unix:///tmp/b.sock\"\n"), vec!["line 3", "listenr"]),
        ("TOML syntax", "[listener.a\n".into(), vec!["line 1"]),
        ("no listener", "[upstream]\nurl = \"unix:///var/run/docker.sock\"\n".into(), vec!["`listener`", "at least one listener"]),
        ("mode on TCP", "[listener.a]\naddress = \"tcp://127.0.0.1:1\"\nmode = \"0600\"\n".into(), vec!["`listener.a.mode`"]),
        ("TLS on unix", format!("{unix}[listener.a.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n"), vec!["`listener.a.tls`"]),
        ("same address twice", format!("{unix}[listener.b]\naddress = \"unix:///tmp/ctproxy-check.sock\"\n"), vec!["`listener.b.address`"]),
        ("unknown owner", format!("{unix}owner = \"ctproxy-no-such-user\"\n"), vec!["`listener.a.owner`", "ctproxy-no-such-user"]),
        ("unknown group", format!("{unix}group = \"ctproxy-no-such-group\"\n"), vec!["`listener.a.group`", "ctproxy-no-such-group"]),
        ("unknown auth", format!("{unix}auth = [\"nope\"]\n"), vec!["`listener.a.auth`", "nope"]),
        ("zero connect timeout", format!("{unix}[upstream]\nconnect_timeout_ms = 0\n"), vec!["`upstream.connect_timeout_ms`"]),
    ];
    for (what, config, needles) in &cases {
        let (out, _dir) = check(config);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: exit status; stderr: {err}");
        assert!(out.stdout.is_empty(), "{what}: {}", text(&out.stdout));
        assert!(err.starts_with("ctproxy: configuration error: "), "{what}: {err}");
        assert!(err.contains("ctproxy.toml"), "{what}: the file must be named: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: {n:?} missing in: {err}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ctproxy"))
        .args(["serve", "--check", "--config", "/nonexistent/ctproxy.toml"])
        .output()
        .expect("ctproxy");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/ctproxy.toml"), "{}", text(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_ctproxy")).args(["serve", "--check", "--listen", "http://x:1"]).output().expect("ctproxy");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid address"), "{}", text(&out.stderr));
}

/// A listener that cannot be set up stops the start with a clear error, and leaves no socket file.
#[test]
fn start_fails_cleanly_when_a_listener_cannot_bind() {
    require_docker();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ctproxy.toml");
    std::fs::write(
        &config,
        format!("[listener.a]\naddress = \"unix://{}/a.sock\"\n[listener.z]\naddress = \"tcp://127.0.0.1:{port}\"\n", dir.path().display()),
    )
    .expect("config");
    let run = |config: &Path| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ctproxy");
        let deadline = Instant::now() + T;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ctproxy kept running with a listener it could not bind");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    };
    let out = run(&config);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("listener \"z\"") && err.contains(&format!("cannot bind tcp://127.0.0.1:{port}")), "{err}");
    assert!(!dir.path().join("a.sock").exists(), "the other listener's socket must be gone");

    // A unix path another live process listens on is never taken over.
    let held = dir.path().join("held.sock");
    let _holder = std::os::unix::net::UnixListener::bind(&held).expect("bind");
    std::fs::write(&config, format!("[listener.a]\naddress = \"unix://{}\"\n", held.display())).expect("config");
    let out = run(&config);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("another process is listening there"), "{}", text(&out.stderr));
    assert!(std::os::unix::net::UnixStream::connect(&held).is_ok(), "the other process keeps its socket");

    // A stale socket file (its process died) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists());
    let p = Proxy::spawn(tempfile::tempdir().expect("tempdir"), stale.clone(), &["--listen", &format!("unix://{}", stale.display())]);
    docker(&format!("unix://{}", stale.display()), &["version"]);
    drop(p);
}
