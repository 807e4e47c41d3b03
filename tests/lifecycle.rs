//! The process lifecycle: SIGHUP reloads (listeners added, rebound, removed; broken files refused;
//! connections and hijacked sessions never dropped) and SIGTERM/SIGINT (in-flight requests finish,
//! idle connections close at once, the grace time cuts what is left, sockets disappear).

#[path = "support/certs.rs"]
mod certs;
#[path = "support/rawhttp.rs"]
mod rawhttp;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rawhttp::{Conn, End};
use support::*;

const T: Duration = Duration::from_secs(15);

fn unix_listener(name: &str, extra: &str) -> String {
    format!("[listener.{name}]\naddress = \"unix://{{dir}}/{name}.sock\"\n{extra}")
}

fn write_config(p: &Proxy, text: &str) {
    std::fs::write(p.dir().join("ctproxy.toml"), with_upstream(&text.replace("{dir}", &p.dir().display().to_string())))
        .expect("write config");
}

/// Sends SIGHUP and waits for one more log line containing `outcome` than there was before.
fn hup(p: &Proxy, outcome: &str) {
    let before = p.log_text().matches(outcome).count();
    p.signal("HUP");
    let deadline = Instant::now() + T;
    while p.log_text().matches(outcome).count() <= before {
        assert!(Instant::now() < deadline, "no {outcome:?} after SIGHUP; log:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sock(p: &Proxy, name: &str) -> PathBuf {
    p.dir().join(format!("{name}.sock"))
}

fn host(p: &Proxy, name: &str) -> String {
    format!("unix://{}", sock(p, name).display())
}

fn ping(path: &Path) {
    let mut c = Conn::unix(path, T);
    c.send(b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n");
    let rsp = c.read_response();
    assert_eq!((rsp.status, rsp.body_text().as_str()), (200, "OK"), "{}", path.display());
}

/// A GET /_ping on an already open keep-alive connection.
fn ping_on<S: std::io::Read + std::io::Write>(c: &mut Conn<S>) {
    c.send(b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n");
    let rsp = c.read_response();
    assert_eq!((rsp.status, rsp.body_text().as_str()), (200, "OK"));
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).ino()
}

fn wait_gone(path: &Path) {
    let deadline = Instant::now() + T;
    while path.exists() {
        assert!(Instant::now() < deadline, "{} still exists", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of a child's stdout, read on a thread so a test can wait for each with a timeout.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(T).unwrap_or_else(|e| panic!("no line from {what}: {e}"))
}

/// A container command prefix that waits until [`go`] is called for it.
const UNTIL_GO: &str = "while [ ! -e /tmp/go ]; do sleep 0.05; done";

fn go(container: &str) {
    docker(direct(), &["exec", container, "touch", "/tmp/go"]);
}

/// (a) A listener added by a reload answers; the one that was there keeps its very socket.
#[test]
fn sighup_adds_a_listener_and_keeps_the_unchanged_one() {
    let p = Proxy::start_with_config(&unix_listener("a", "mode = \"0600\"\n"), "a.sock");
    let ino = inode(&sock(&p, "a"));
    let mut keep = Conn::unix(&sock(&p, "a"), T);
    ping_on(&mut keep);

    write_config(&p, &(unix_listener("a", "mode = \"0600\"\n") + &unix_listener("b", "")));
    hup(&p, "configuration reloaded");
    ping(&sock(&p, "b"));
    ping(&sock(&p, "a"));
    ping_on(&mut keep);
    let version = ["version", "--format", "{{.Server.Version}}"];
    assert_eq!(docker(&host(&p, "b"), &version), docker(direct(), &version));
    assert_eq!(docker(&host(&p, "a"), &version), docker(direct(), &version));
    assert_eq!(inode(&sock(&p, "a")), ino, "an unchanged listener must not be rebound");

    // The same file again: nothing is rebound at all.
    let ino_b = inode(&sock(&p, "b"));
    hup(&p, "configuration reloaded");
    assert_eq!((inode(&sock(&p, "a")), inode(&sock(&p, "b"))), (ino, ino_b));
    ping_on(&mut keep);
    assert!(!p.log_text().contains("listener stopped by reload"), "{}", p.log_text());
}

/// (b) A reload that rebinds the very listener a session came through (its mode changed) drops
/// nothing: a keep-alive connection, an interactive `docker run -i` and a `docker logs -f` go on.
#[test]
fn sessions_survive_a_reload_that_rebinds_their_listener() {
    let p = Proxy::start_with_config(&unix_listener("a", "mode = \"0600\"\n"), "a.sock");
    let a = host(&p, "a");
    let mut cleanup = Cleanup::new();
    let mut keep = Conn::unix(&sock(&p, "a"), T);
    ping_on(&mut keep);

    let interactive = unique("reload-run");
    cleanup.container(&interactive);
    let mut run = docker_cmd(
        "docker",
        &a,
        &["run", "-i", "--rm", "--name", &interactive, BUSYBOX, "sh", "-c", "while read l; do echo got $l; done; echo bye"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("docker run -i");
    let mut stdin = run.stdin.take().expect("stdin");
    let run_out = lines(run.stdout.take().expect("stdout"));
    writeln!(stdin, "one").expect("stdin");
    assert_eq!(next_line(&run_out, "docker run -i"), "got one");

    let ticking = unique("reload-logs");
    cleanup.container(&ticking);
    // The ticks start only when the test says so (after the reload).
    docker(
        direct(),
        &[
            "run",
            "-d",
            "--name",
            &ticking,
            BUSYBOX,
            "sh",
            "-c",
            &format!("echo ready; {UNTIL_GO}; for i in $(seq 1 5); do echo tick $i; done"),
        ],
    );
    let mut follow =
        docker_cmd("docker", &a, &["logs", "-f", &ticking]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("logs -f");
    let follow_out = lines(follow.stdout.take().expect("stdout"));
    // The stream is established before the reload.
    assert_eq!(next_line(&follow_out, "docker logs -f"), "ready");

    let ino = inode(&sock(&p, "a"));
    write_config(&p, &(unix_listener("a", "mode = \"0666\"\n") + &unix_listener("b", "")));
    hup(&p, "configuration reloaded");
    assert!(p.log_text().contains("listener stopped by reload listener=a"), "{}", p.log_text());
    let meta = std::fs::metadata(sock(&p, "a")).expect("a.sock");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o666, "the new mode applies");
    assert_ne!(meta.ino(), ino, "a changed listener is rebound");
    ping(&sock(&p, "a"));
    ping(&sock(&p, "b"));

    // Everything accepted before the reload still works.
    ping_on(&mut keep);
    writeln!(stdin, "two").expect("stdin");
    assert_eq!(next_line(&run_out, "docker run -i"), "got two");
    drop(stdin);
    assert_eq!(next_line(&run_out, "docker run -i"), "bye");
    let status = run.wait().expect("docker run");
    assert!(status.success(), "docker run -i across the reload: {status}");

    go(&ticking);
    for i in 1..=5 {
        assert_eq!(next_line(&follow_out, "docker logs -f"), format!("tick {i}"));
    }
    let status = follow.wait().expect("logs -f");
    assert!(status.success(), "docker logs -f across the reload: {status}");
}

/// (c) Broken files are refused: the log says so and why, and every listener keeps answering on the
/// socket it had.
#[test]
fn broken_configs_are_refused_and_change_nothing() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = certs::Ca::new("ctproxy-lifecycle-ca");
    let server = ca.server(&pki.path().join("server"));
    // Port 0: the kernel's port is read back (a reload of the same address keeps the listener).
    let tcp = "[listener.t]\naddress = \"tcp://127.0.0.1:0\"\n".to_owned();
    let good = unix_listener("a", "mode = \"0600\"\n") + &unix_listener("b", "") + &tcp;
    let p = Proxy::start_with_config(&good, "a.sock");
    let port = p.tcp_port("t");
    let inodes = (inode(&sock(&p, "a")), inode(&sock(&p, "b")));
    let mut keep = Conn::unix(&sock(&p, "a"), T);
    ping_on(&mut keep);

    let tls_missing = format!(
        "[listener.t]\naddress = \"tcp://127.0.0.1:0\"\n[listener.t.tls]\ncert = \"{}/missing.pem\"\nkey = \"{}\"\n",
        pki.path().display(),
        server.key.display()
    );
    // What is wrong, the file, and what the refusal must name.
    let broken: Vec<(&str, String, &str)> = vec![
        ("TOML syntax", "[listener.a\naddress = \"unix://{dir}/a.sock\"\n".to_owned(), "line 1"),
        ("unknown key", good.replace("mode = \"0600\"", "mdoe = \"0600\""), "mdoe"),
        ("bad address", good.replace("tcp://127.0.0.1", "http://127.0.0.1"), "invalid address"),
        ("bad mode", good.replace("\"0600\"", "\"0999\""), "0999"),
        ("no listener", "[upstream]\nurl = \"unix:///var/run/docker.sock\"\n".to_owned(), "`listener`"),
        ("same address twice", good.replace("{dir}/b.sock", "{dir}/a.sock"), "listener.b.address"),
        (
            "TLS on a unix socket",
            good.clone() + &format!("[listener.b.tls]\ncert = \"{}\"\nkey = \"{}\"\n", server.cert.display(), server.key.display()),
            "listener.b.tls",
        ),
        (
            "unknown owner of a changed listener",
            good.replace("mode = \"0600\"\n", "mode = \"0600\"\nowner = \"ctproxy-no-such-user\"\n"),
            "ctproxy-no-such-user",
        ),
        (
            "unknown group of a new listener",
            good.clone() + &unix_listener("c", "group = \"ctproxy-no-such-group\"\n"),
            "ctproxy-no-such-group",
        ),
        ("missing TLS certificate of a changed listener", good.replace(&tcp, &tls_missing), "missing.pem"),
        ("no file", String::new(), "cannot read"),
    ];
    for (what, text, named) in &broken {
        let before = p.log_text().len();
        if text.is_empty() {
            std::fs::remove_file(p.dir().join("ctproxy.toml")).expect("remove config");
        } else {
            write_config(&p, text);
        }
        hup(&p, "configuration reload refused");
        let added = p.log_text()[before..].to_owned();
        assert!(added.contains(named), "{what}: the refusal must name {named:?}:\n{added}");
        assert!(
            !p.log_text().contains("listener stopped by reload") && !p.log_text().contains("configuration reloaded"),
            "{what}: a refused configuration must change nothing; log:\n{}",
            p.log_text()
        );
        ping(&sock(&p, "a"));
        ping(&sock(&p, "b"));
        ping_on(&mut keep);
        let mut t = Conn::tcp(&format!("127.0.0.1:{port}"), T);
        ping_on(&mut t);
        assert_eq!((inode(&sock(&p, "a")), inode(&sock(&p, "b"))), inodes, "{what}: sockets must not be rebound");
        assert!(!sock(&p, "c").exists(), "{what}");
    }
    assert_eq!(p.log_text().matches("configuration reload refused").count(), broken.len());

    // And a good file after all that is taken.
    write_config(&p, &good);
    hup(&p, "configuration reloaded");
    ping(&sock(&p, "a"));
}

/// A new listener whose port is taken cannot start: that is logged, the others carry on, and the
/// next SIGHUP (the port free again) starts it.
#[test]
fn a_new_listener_that_cannot_bind_is_retried_on_the_next_reload() {
    let p = Proxy::start_with_config(&unix_listener("a", ""), "a.sock");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    write_config(&p, &(unix_listener("a", "") + &format!("[listener.t]\naddress = \"tcp://127.0.0.1:{port}\"\n")));
    hup(&p, "configuration reloaded");
    assert!(p.log_text().contains("listener could not be started by reload"), "{}", p.log_text());
    ping(&sock(&p, "a"));

    drop(busy);
    hup(&p, "configuration reloaded");
    let mut t = Conn::tcp(&format!("127.0.0.1:{port}"), T);
    ping_on(&mut t);
    ping(&sock(&p, "a"));
}

/// (d) Removing a listener closes its socket; connections it had accepted carry on.
#[test]
fn removing_a_listener_closes_it_but_not_its_connections() {
    let tcp = "[listener.t]\naddress = \"tcp://127.0.0.1:0\"\n";
    let p = Proxy::start_with_config(&(unix_listener("a", "") + &unix_listener("b", "") + tcp), "a.sock");
    let port = p.tcp_port("t");
    let mut cleanup = Cleanup::new();
    let mut on_b = Conn::unix(&sock(&p, "b"), T);
    ping_on(&mut on_b);
    let mut on_t = Conn::tcp(&format!("127.0.0.1:{port}"), T);
    ping_on(&mut on_t);
    let name = unique("removed");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", &format!("echo ready; {UNTIL_GO}; echo after removal")]);
    let mut follow = docker_cmd("docker", &host(&p, "b"), &["logs", "-f", &name]).stdout(Stdio::piped()).spawn().expect("logs -f");
    let follow_out = lines(follow.stdout.take().expect("stdout"));
    assert_eq!(next_line(&follow_out, "docker logs -f"), "ready");

    write_config(&p, &unix_listener("a", ""));
    hup(&p, "configuration reloaded");
    wait_gone(&sock(&p, "b"));
    assert!(UnixStream::connect(sock(&p, "b")).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "the TCP listener must be closed");
    assert!(!docker_output(&host(&p, "b"), &["version"]).status.success());
    ping(&sock(&p, "a"));

    ping_on(&mut on_b);
    ping_on(&mut on_t);
    go(&name);
    assert_eq!(next_line(&follow_out, "docker logs -f"), "after removal");
    let status = follow.wait().expect("logs -f");
    assert!(status.success(), "docker logs -f on a removed listener: {status}");
}

/// A unix listener and a TCP listener, for the signal tests.
fn two_listeners(extra: &str) -> (Proxy, u16) {
    let text = unix_listener("a", "") + "[listener.t]\naddress = \"tcp://127.0.0.1:0\"\n" + extra;
    let p = Proxy::start_with_config(&text, "a.sock");
    let port = p.tcp_port("t");
    (p, port)
}

/// SIGTERM while a `wait` is in flight: new connections are refused at once (socket file gone, port
/// closed), the wait completes with the right exit code, then ctproxy exits 0.
#[test]
fn sigterm_lets_an_in_flight_wait_finish() {
    let (mut p, port) = two_listeners("");
    let mut cleanup = Cleanup::new();
    let name = unique("term-wait");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", &format!("{UNTIL_GO}; exit 7")]);

    let mut waiting = Conn::unix(&sock(&p, "a"), T);
    waiting.send(format!("POST /v1.41/containers/{name}/wait HTTP/1.1\r\nHost: d\r\n\r\n").as_bytes());
    // dockerd sends the head as soon as the wait is registered: from here the request is in flight.
    let head = waiting.read_head();
    assert_eq!(head.status, 200, "{head:?}");
    // The CLI too, over TCP: it pings first, then sends its wait on the same connection right away.
    let cli_wait =
        docker_cmd("docker", &format!("tcp://127.0.0.1:{port}"), &["wait", &name]).stdout(Stdio::piped()).spawn().expect("docker wait");
    wait_log_line(&p, &["listener=t", "path=/_ping"]);
    std::thread::sleep(Duration::from_millis(500));

    p.signal("TERM");
    wait_gone(&sock(&p, "a"));
    assert!(UnixStream::connect(sock(&p, "a")).is_err(), "no new unix connections while draining");
    let deadline = Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "the TCP listener must stop accepting on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(p.child.try_wait().expect("try_wait").is_none(), "ctproxy must wait for the in-flight requests");

    go(&name);
    waiting.set_timeout(T);
    let mut body = Vec::new();
    // The rest of the chunked body: one chunk with the JSON, then the last chunk.
    loop {
        let (bytes, end) = waiting.read_to_end_or_quiet();
        body.extend(bytes);
        if end == End::Closed || body.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(r#""StatusCode":7"#), "{text:?}");
    let out = cli_wait.wait_with_output().expect("docker wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "docker wait over TCP across SIGTERM");
    drop(waiting);

    let status = p.wait_exit(T).expect("ctproxy must exit once the requests are done");
    assert_eq!(status.code(), Some(0), "{}", p.log_text());
    assert!(p.log_text().contains("stopped"), "{}", p.log_text());
}

/// Waits for a log line with all of `parts`.
fn wait_log_line(p: &Proxy, parts: &[&str]) {
    let deadline = Instant::now() + T;
    while !p.log_text().lines().any(|l| parts.iter().all(|x| l.contains(x))) {
        assert!(Instant::now() < deadline, "no log line with {parts:?}:\n{}", p.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Idle keep-alive connections do not hold up a stop: they are closed at once, long before the
/// default 30 s grace time. SIGINT behaves like SIGTERM.
#[test]
fn sigterm_and_sigint_close_idle_connections_at_once() {
    for sig in ["TERM", "INT"] {
        let (mut p, port) = two_listeners("");
        let mut idle_unix = Conn::unix(&sock(&p, "a"), T);
        ping_on(&mut idle_unix);
        let mut idle_tcp = Conn::tcp(&format!("127.0.0.1:{port}"), T);
        ping_on(&mut idle_tcp);
        let t = Instant::now();
        p.signal(sig);
        let status = p.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| panic!("SIG{sig}: idle connections held up the stop"));
        assert_eq!(status.code(), Some(0), "SIG{sig}: {}", p.log_text());
        assert!(t.elapsed() < Duration::from_secs(10));
        assert_eq!(idle_unix.read_to_end_or_quiet().1, End::Closed, "SIG{sig}");
        assert_eq!(idle_tcp.read_to_end_or_quiet().1, End::Closed, "SIG{sig}");
        assert!(!sock(&p, "a").exists(), "SIG{sig}: the socket file must be removed");
    }
}

/// `[shutdown] grace_ms`: streams that would never end by themselves (`logs -f`, an attach) are cut
/// when it is over, and ctproxy exits within a few seconds, never hanging.
#[test]
fn sigterm_grace_time_cuts_endless_streams() {
    let (mut p, _) = two_listeners("[shutdown]\ngrace_ms = 500\n");
    let a = host(&p, "a");
    let mut cleanup = Cleanup::new();
    let name = unique("grace");
    cleanup.container(&name);
    docker(direct(), &["run", "-d", "-i", "--name", &name, BUSYBOX, "sh", "-c", "echo started; exec cat"]);
    let mut follow =
        docker_cmd("docker", &a, &["logs", "-f", &name]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("logs -f");
    let follow_out = lines(follow.stdout.take().expect("stdout"));
    assert_eq!(next_line(&follow_out, "logs -f"), "started");
    let mut attach = docker_cmd("docker", &a, &["attach", "--sig-proxy=false", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("attach");
    let attach_out = lines(attach.stdout.take().expect("stdout"));
    let mut attach_in = attach.stdin.take().expect("stdin");
    writeln!(attach_in, "echoed").expect("stdin");
    assert_eq!(next_line(&attach_out, "attach"), "echoed");

    let t = Instant::now();
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(10)).expect("ctproxy must exit after the grace time");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(status.code(), Some(0), "{}", p.log_text());
    assert!(p.log_text().contains("grace time over"), "{}", p.log_text());

    // Both clients see the end of their streams instead of hanging.
    let deadline = Instant::now() + T;
    for (what, child) in [("logs -f", &mut follow), ("attach", &mut attach)] {
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "{what} still running after ctproxy exited");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(attach_in);
    // The container is untouched by the proxy going away.
    assert_eq!(docker(direct(), &["inspect", "--format", "{{.State.Running}}", &name]).trim(), "true");
}

/// A SIGHUP that tightens a job policy applies to every job socket: one already open (on the
/// connection that was open before, which is not dropped) and one made after the reload. Before
/// the fix, job sockets kept the pipeline they were started with.
#[test]
fn a_reload_that_tightens_a_job_policy_applies_to_open_and_new_job_sockets() {
    let host = support::jobs::JobHost::start();
    let before = host.job();
    let versioned = b"GET /v1.40/version HTTP/1.1\r\nHost: d\r\n\r\n";
    let mut open = Conn::unix(&before.socket, T);
    open.send(versioned);
    assert_eq!(open.read_response().status, 200, "allowed before the reload; log:\n{}", host.log_text());

    host.reload_with("min_api_version = \"1.41\"", "", "");
    let after = host.job();
    // The same keep-alive connection: still served, now refused.
    open.send(versioned);
    let rsp = open.read_response();
    assert_eq!(rsp.status, 403, "open job socket after the reload: {}", rsp.body_text());
    assert!(rsp.body_text().contains("1.41"), "{}", rsp.body_text());
    ping_on(&mut open);
    for job in [&before, &after] {
        let (status, body) = job.request("GET", "/v1.40/version", None);
        assert_eq!(status, 403, "job {} after the reload: {body}", job.id);
    }
    assert!(host.audited("min_api_version"), "{}", host.log_text());
    let (status, _) = after.request("GET", "/_ping", None);
    assert_eq!(status, 200);
}
