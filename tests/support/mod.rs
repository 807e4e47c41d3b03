//! Test support: a real ctproxy process in front of the real dockerd, and the real clients.
//!
//! Integration tests never skip: if dockerd or a client is missing, they fail and say what to run
//! (`scripts/test-env`). Every resource a test creates carries a unique name from [`unique`], so tests
//! run in parallel and a rerun after a crash never trips over leftovers.
#![allow(dead_code)]

pub mod jobs;
pub mod origin;
pub mod runner;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// The daemon's own socket: the reference every proxied result is compared with, and ctproxy's
/// upstream in every test. `CTPROXY_TEST_DOCKER_HOST` picks another daemon (`scripts/test` runs the
/// suites once against Debian's dockerd 20.10 and once against Docker 28.5).
pub fn direct() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| std::env::var("CTPROXY_TEST_DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned()))
}

/// The path of [`direct`]'s unix socket.
pub fn direct_socket() -> &'static Path {
    Path::new(direct().strip_prefix("unix://").unwrap_or("/var/run/docker.sock"))
}
/// The daemon under test's own `docker version` (`{{json .Server}}`): `Version`, `ApiVersion` (the
/// newest API version it speaks), `MinAPIVersion`. Expectations that differ between daemons (20.10
/// speaks API 1.41, Docker 28.5 1.51) read it instead of naming one.
pub fn daemon_version() -> &'static serde_json::Value {
    static V: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let out = docker(direct(), &["version", "--format", "{{json .Server}}"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("docker version: {e}: {out}"))
    })
}

/// `daemon_version()["ApiVersion"]`.
pub fn daemon_api_version() -> &'static str {
    daemon_version()["ApiVersion"].as_str().expect("ApiVersion")
}

/// The API version the docker CLI 28 (first on PATH) settles on with the daemon under test: its
/// requests go to `/v<this>/...` (20.10: 1.41; Docker 28.5: the CLI's own newest, 1.50 for 28.2).
pub fn cli_api_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| docker(direct(), &["version", "--format", "{{.Client.APIVersion}}"]).trim().to_owned())
}

/// The busybox image built by `scripts/test-env`.
pub const BUSYBOX: &str = "ctproxy-test/busybox:latest";
/// busybox plus the static docker CLI: a CI job image.
pub const DOCKER_CLI_IMAGE: &str = "ctproxy-test/docker-cli:latest";
/// busybox, the docker CLI and Debian's docker-compose: the image of CI jobs in the executor tests.
pub const CI_IMAGE: &str = "ctproxy-test/ci:latest";
/// Debian's docker 20.10 CLI (the static 28.x one is first on PATH as `docker`).
pub const DOCKER_2010: &str = "/usr/bin/docker";
/// Debian's docker 28.5 CLI, unpacked by `scripts/test-env` beside the Docker 28 daemon; its buildx
/// and compose v2 plugins are in /usr/local/lib/docker/cli-plugins, where every CLI here finds them.
pub const DOCKER_28: &str = "/opt/ctproxy-docker28/usr/bin/docker";
/// busybox, the docker 28.5 CLI and its buildx and compose v2 plugins: a CI job image for BuildKit.
pub const CI28_IMAGE: &str = "ctproxy-test/ci28:latest";

static ENV_CHECK: Once = Once::new();

/// Fails loudly unless the daemon and the test images are there.
pub fn require_docker() {
    ENV_CHECK.call_once(|| {
        let out = Command::new("docker")
            .args(["image", "inspect", BUSYBOX, DOCKER_CLI_IMAGE, CI_IMAGE, CI28_IMAGE])
            .env("DOCKER_HOST", direct())
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "the daemon under test ({}) or the test images are missing ({}); run scripts/test-env first",
                direct(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run the docker CLI ({e}); run scripts/test-env first"),
        }
    });
}

/// Whether the daemon under test is Docker 28 (BuildKit through job sockets is tested there only);
/// on 20.10 the caller returns, saying so.
pub fn on_docker_28() -> bool {
    require_docker();
    let v = daemon_version()["Version"].as_str().unwrap_or("").to_owned();
    if v.starts_with("20.") {
        eprintln!("BuildKit through a job socket is tested on Docker 28 only; daemon is {v}: skipped");
        return false;
    }
    true
}

/// Whether the daemon under test stores images in containerd (Docker 28's default store here).
pub fn containerd_store() -> bool {
    docker(direct(), &["info", "--format", "{{json .DriverStatus}}"]).contains("io.containerd.snapshotter")
}

/// A name no other test (or earlier run) uses: `ctproxy-test-<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("ctproxy-test-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A free TCP port on loopback, for what can only be configured with a fixed port. Racy by nature:
/// another process may take it before it is used. A ctproxy listener binds `127.0.0.1:0` instead
/// and the test reads the port back ([`Proxy::tcp_port`], [`Proxy::logged_addr`]); a test that
/// needs a port nothing listens on takes a [`ClosedPort`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A loopback TCP port on which nothing listens, for as long as this value lives: a socket bound
/// to it without `SO_REUSEADDR` and never listening. Connections to it are refused, and no other
/// socket can bind it meanwhile (a bind conflicts with a socket that does not allow reuse; the
/// kernel never hands it out as a client's port either), so unlike a [`free_port`] that was
/// closed again, it cannot start answering halfway through a test.
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr structures
        // are fully initialised and their sizes given.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, &addr as *const libc::sockaddr_in as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut bound: libc::sockaddr_in = std::mem::zeroed();
            let mut blen = len;
            let rc = libc::getsockname(fd, &mut bound as *mut libc::sockaddr_in as *mut libc::sockaddr, &mut blen);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort { _socket: socket, port: u16::from_be(bound.sin_port) }
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A configuration that forwards to the daemon under test: `toml` with an `[upstream]` naming
/// [`direct`] after it (line numbers in errors stay the test's), unless it has an `[upstream]` of its
/// own. For every configuration a test writes, at the start and before a reload (a reloaded file
/// without `[upstream]` would switch ctproxy to the default socket, dockerd 20.10's).
pub fn with_upstream(toml: &str) -> String {
    if toml.contains("[upstream") {
        toml.to_owned()
    } else {
        format!("{toml}\n[upstream]\nurl = \"{}\"\n", direct())
    }
}

/// A running `ctproxy serve`, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub log: PathBuf,
}

impl Proxy {
    /// ctproxy with one unix listener in a fresh directory, forwarding to the real daemon.
    pub fn start() -> Proxy {
        require_docker();
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("docker.sock");
        let listen = format!("unix://{}", sock.display());
        Self::spawn(dir, sock, &["--listen", &listen])
    }

    /// ctproxy on a configuration file written into its directory. `{dir}` in the text is replaced
    /// by that directory. The listener to wait for is `wait_sock` (relative to the directory).
    pub fn start_with_config(toml: &str, wait_sock: &str) -> Proxy {
        require_docker();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("ctproxy.toml");
        std::fs::write(&config, with_upstream(&toml.replace("{dir}", &dir.path().display().to_string()))).expect("write config");
        let sock = dir.path().join(wait_sock);
        Self::spawn(dir, sock, &["--config", config.to_str().expect("utf-8 path")])
    }

    pub fn spawn(dir: tempfile::TempDir, sock: PathBuf, args: &[&str]) -> Proxy {
        let log = dir.path().join("ctproxy.log");
        let logf = std::fs::File::create(&log).expect("log file");
        // Every test's ctproxy forwards to the daemon under test, unless the test says otherwise
        // (configurations get an `[upstream]` in `start_with_config`).
        let upstream: &[&str] = if args.iter().any(|a| *a == "--upstream" || *a == "--config") { &[] } else { &["--upstream", direct()] };
        let child = Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .arg("serve")
            .args(args)
            .args(upstream)
            .env("RUST_LOG", "info,ctproxy=debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log file"))
            .stderr(logf)
            .spawn()
            .expect("spawn ctproxy");
        let proxy = Proxy { child, dir, sock, log };
        proxy.wait_ready();
        proxy
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if UnixStream::connect(&self.sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("ctproxy did not listen on {} in time; log:\n{}", self.sock.display(), self.log_text());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the process (`"HUP"`, `"TERM"`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit, returning its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The port a TCP listener (`address = "tcp://127.0.0.1:0"`) was given by the kernel, from
    /// its `listening` line (written once it is bound; listeners may start after the one the
    /// harness waited for, so the line is waited for).
    pub fn tcp_port(&self, listener: &str) -> u16 {
        let needle = format!("listener=\"{listener}\" address=tcp://");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            let port = log.lines().filter(|l| l.contains("listening")).find_map(|l| {
                let rest = &l[l.find(&needle)? + needle.len()..];
                rest.split_whitespace().next()?.rsplit(':').next()?.parse::<u16>().ok()
            });
            match port {
                Some(p) => return p,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("no listening line for TCP listener {listener}; log:\n{log}"),
            }
        }
    }

    /// The `address=` of the first log line containing `message`: what a component that binds
    /// once at start logs when bound ("registry proxy listening", "metrics listening", "cache
    /// metrics listening"), with the port the kernel gave for port 0. Waited for.
    pub fn logged_addr(&self, message: &str) -> std::net::SocketAddr {
        self.logged_field_addr(message, "address")
    }

    /// The address in field `field` of the first log line containing `message` (the cache's
    /// "cache listening" line has `http_addr` and `https_addr`). Waited for.
    pub fn logged_field_addr(&self, message: &str, field: &str) -> std::net::SocketAddr {
        let needle = format!(" {field}=");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            let addr = log.lines().filter(|l| l.contains(message)).find_map(|l| {
                let rest = &l[l.find(&needle)? + needle.len()..];
                rest.split_whitespace().next()?.trim_matches('"').parse().ok()
            });
            match addr {
                Some(a) => return a,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                None => panic!("no \"{message}\" line with an address in {field}; log:\n{log}"),
            }
        }
    }

    /// Waits until the log contains `needle` (log lines are written asynchronously).
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proxy {
    /// Stops ctproxy as its service manager does (SIGTERM), so that the removals of jobs whose
    /// cleanup already answered finish instead of leaving their networks and volumes on the test
    /// daemon; SIGKILL if it has not exited after 10 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: a plain kill(2) of our own child's pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A docker CLI invocation against `host`.
pub fn docker_cmd(cli: &str, host: &str, args: &[&str]) -> Command {
    let mut c = Command::new(cli);
    c.args(args).env("DOCKER_HOST", host).env_remove("DOCKER_CONTEXT").env_remove("DOCKER_TLS_VERIFY");
    c
}

/// Runs the docker CLI 28 against `host`; panics (with stderr) if it fails. A listing that fails
/// with [`store_race`] is asked again.
pub fn docker(host: &str, args: &[&str]) -> String {
    let out = retrying_store_races(args, || docker_cmd("docker", host, args).output().expect("run docker"));
    check(&out, args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a read-only listing (`images`, `image ls`, `ps`, `system df`) failed with a race of
/// Docker 28's containerd image store: while other tests remove images or containers, the daemon
/// answers a list with "content digest sha256:...: not found", "rw layer snapshot not found for
/// container ..." or "snapshot ... does not exist: not found" now and then (on its own socket too:
/// 2 of 165 direct `image ls` while another shell committed and removed images).
///
/// A classic build (`DOCKER_BUILDKIT=0`) on that store also loses its own intermediate image now
/// and then while other tests remove images ("unable to find image \"sha256:...\"" right after a
/// step, moby#29011's class: the legacy builder does not protect its intermediates), or the lease
/// that guards a step's commit ("failed commit on ref \"sha256:...\": commit failed: lease does not
/// exist", seen once in CI on a `LABEL` step); a build is idempotent, so it is asked again too.
pub fn store_race(args: &[&str], stderr: &str) -> bool {
    let listing = matches!(args, ["images", ..] | ["image", "ls", ..] | ["ps", ..] | ["container", "ls", ..] | ["system", "df", ..]);
    let build = matches!(args, ["build", ..] | ["image", "build", ..]);
    (listing
        && ((stderr.contains("content digest sha256:") && stderr.contains("not found"))
            || stderr.contains("snapshot not found for container")
            || stderr.contains("does not exist: not found")))
        || (build
            && (stderr.contains("unable to find image \"sha256:")
                || (stderr.contains("failed commit on ref") && stderr.contains("lease does not exist"))))
}

/// Runs `run` and runs it again (up to four more times) while it fails with [`store_race`].
pub fn retrying_store_races(args: &[&str], run: impl Fn() -> Output) -> Output {
    let mut out = run();
    for _ in 0..4 {
        if out.status.success() || !store_race(args, &String::from_utf8_lossy(&out.stderr)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        out = run();
    }
    out
}

/// Runs the docker CLI 28 against `host`, returning the raw output whatever the exit status.
pub fn docker_output(host: &str, args: &[&str]) -> Output {
    docker_cmd("docker", host, args).output().expect("run docker")
}

pub fn check(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "`docker {}` failed ({}):\nstdout: {}\nstderr: {}",
        what.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes containers, volumes, networks and images by name on the direct socket, ignoring errors.
pub struct Cleanup(pub Vec<(&'static str, String)>);

impl Cleanup {
    pub fn new() -> Self {
        Cleanup(Vec::new())
    }
    pub fn container(&mut self, n: &str) {
        self.0.push(("container", n.to_owned()));
    }
    pub fn volume(&mut self, n: &str) {
        self.0.push(("volume", n.to_owned()));
    }
    pub fn network(&mut self, n: &str) {
        self.0.push(("network", n.to_owned()));
    }
    pub fn image(&mut self, n: &str) {
        self.0.push(("image", n.to_owned()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, name) in self.0.iter().rev() {
            let args: Vec<&str> = match *kind {
                "container" => vec!["rm", "-f", "-v", name],
                "volume" => vec!["volume", "rm", "-f", name],
                "network" => vec!["network", "rm", name],
                _ => vec!["rmi", "-f", name],
            };
            let _ = docker_cmd("docker", direct(), &args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// Reads a whole HTTP exchange from a raw unix-socket request (for framing tests).
pub fn raw_request(sock: &Path, request: &[u8], timeout: Duration) -> Vec<u8> {
    use std::io::Write;
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// A `docker-registry` (Debian's distribution 2.8) on a free loopback port, stopped on drop.
/// dockerd treats 127.0.0.0/8 registries as insecure, so plain HTTP works.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: String,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with_users(&[])
    }

    /// With `users` (name, password), the registry requires HTTP Basic auth against an htpasswd
    /// file (bcrypt, written here); without, it is open.
    pub fn start_with_users(users: &[(&str, &str)]) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut auth = String::new();
        if !users.is_empty() {
            let htpasswd = dir.path().join("htpasswd");
            let lines: String = users
                .iter()
                .map(|(u, p)| {
                    let hash = bcrypt::hash_with_result(p, 5).expect("bcrypt").format_for_version(bcrypt::Version::TwoY);
                    format!("{u}:{hash}\n")
                })
                .collect();
            std::fs::write(&htpasswd, lines).expect("htpasswd");
            auth = format!("auth:\n  htpasswd:\n    realm: ctproxy-test\n    path: {}\n", htpasswd.display());
        }
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        // Its access log (combined format, on stdout) is kept: tests count the requests it served.
        let access_log = std::fs::File::create(dir.path().join("access.log")).expect("registry access log");
        let child = Command::new("docker-registry")
            .args(["serve", config.to_str().expect("utf-8")])
            .stdout(access_log)
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry is missing: run scripts/test-env");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Registry { child, _dir: dir, addr }
    }
}

impl Registry {
    /// The file holding a blob in the registry's filesystem storage (to damage it in a test).
    pub fn blob_file(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir.path().join(format!("data/docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }
}

impl Registry {
    /// How many `GET`s of `/v2/<path>/blobs/<digest>` the registry answered so far (from its access
    /// log, a line written when a response is complete).
    /// The registry's access-log lines of GETs of one blob (for failure messages).
    pub fn blob_log(&self, path: &str, digest: &str) -> Vec<String> {
        self.requests(&format!("\"GET /v2/{path}/blobs/{digest} "))
    }

    /// The registry's access-log lines (one per answered request, whatever its status) that
    /// contain `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self._dir.path().join("access.log")).unwrap_or_default();
        log.lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
    }

    /// GETs of one blob the origin answered with its bytes (200): a refused attempt (a 401
    /// challenge, a request without credentials) moves nothing.
    pub fn blob_gets(&self, path: &str, digest: &str) -> usize {
        self.blob_log(path, digest).iter().filter(|l| l.split("\" ").nth(1).is_some_and(|rest| rest.starts_with("200 "))).count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd`, panicking with its output if it fails; returns stdout.
pub fn run_ok(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` with `input` written to its stdin (then closed), collecting stdout and stderr; kills it
/// and panics with what it printed so far if it has not exited within `timeout` (a hung stream must
/// fail the test, not hang the suite). The exit status is the caller's to check.
pub fn output_within(cmd: Command, input: Option<Vec<u8>>, timeout: Duration, what: &str) -> Output {
    run_within(cmd, input, false, timeout, what)
}

/// Like [`output_within`], but stdin stays open after `input` until the command exits: what an
/// interactive user does, and what `docker attach` needs (on stdin EOF, dockerd ends an attach that
/// is not `StdinOnce` at once, dropping the output still to come).
pub fn output_holding_stdin(cmd: Command, input: Vec<u8>, timeout: Duration, what: &str) -> Output {
    run_within(cmd, Some(input), true, timeout, what)
}

fn run_within(mut cmd: Command, input: Option<Vec<u8>>, hold_stdin: bool, timeout: Duration, what: &str) -> Output {
    use std::io::Write;
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: cannot run: {e} (missing? run scripts/test-env)"));
    let writer = child.stdin.take().zip(input).map(|(mut stdin, data)| {
        std::thread::spawn(move || {
            // The child may legitimately exit before reading everything; its status tells.
            let _ = stdin.write_all(&data);
            hold_stdin.then_some(stdin)
        })
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
            panic!(
                "{what}: still running after {timeout:?}, killed\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o[..o.len().min(4096)]),
                String::from_utf8_lossy(&e[..e.len().min(4096)])
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join(); // closes a held stdin
    }
    Output { status, stdout: out.join().expect("stdout reader"), stderr: err.join().expect("stderr reader") }
}

/// Like [`output_within`], but panics (with both streams) unless the command succeeded.
pub fn ok_within(cmd: Command, input: Option<Vec<u8>>, timeout: Duration, what: &str) -> Output {
    let out = output_within(cmd, input, timeout, what);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(4096)]),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes from the kernel's random generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf
}

/// Seconds since the epoch, with nanoseconds, as `docker events --since/--until` accept them.
pub fn timestamp_now() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// A docker-compose (1.29) project in its own directory, under a unique project name. On drop it is
/// taken down on the daemon's own socket (containers, networks, volumes), whatever happened.
pub struct Compose {
    pub dir: tempfile::TempDir,
    pub project: String,
}

impl Compose {
    /// Writes `yaml` as the project's `docker-compose.yml`.
    pub fn new(yaml: &str) -> Compose {
        require_docker();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("docker-compose.yml"), yaml).expect("compose file");
        Compose { dir, project: unique("compose") }
    }

    /// `docker-compose -p PROJECT ARGS` against `host`, stdin closed.
    pub fn cmd(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("docker-compose");
        c.args(["--ansi", "never", "-p", &self.project])
            .args(args)
            .current_dir(self.dir.path())
            .env("DOCKER_HOST", host)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_FILE");
        c
    }

    /// Runs `docker-compose ARGS` against `host` (panics with its output unless it succeeds).
    pub fn run(&self, host: &str, args: &[&str]) -> String {
        let what = format!("docker-compose {}", args.join(" "));
        let out = ok_within(self.cmd(host, args), None, Duration::from_secs(120), &what);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.cmd(direct(), &["down", "-v", "-t", "0", "--remove-orphans"]).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 client for policy corpora: requests are built byte for byte (Content-Length or
// chunked framing, any header, any body) and responses parsed by hand, pipelined ones included.

/// How [`http_request`] frames a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// `Content-Length: N` (also for an empty body).
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of 7 bytes (so keys are split across chunks).
    Chunked,
}

/// One request, as bytes. `headers` come after `Host`; the framing header is added last.
pub fn http_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8], framing: BodyFraming) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: docker\r\n").into_bytes();
    for (k, v) in headers {
        r.extend_from_slice(k.as_bytes());
        r.extend_from_slice(b": ");
        r.extend_from_slice(v.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    match framing {
        BodyFraming::Length => {
            r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            r.extend_from_slice(body);
        }
        BodyFraming::Chunked => {
            r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for chunk in body.chunks(7) {
                r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                r.extend_from_slice(chunk);
                r.extend_from_slice(b"\r\n");
            }
            r.extend_from_slice(b"0\r\n\r\n");
        }
    }
    r
}

/// One parsed response of [`http_exchange`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `message` of a Docker-style JSON error body, if it is one.
    pub fn message(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body).ok()?.get("message")?.as_str().map(str::to_owned)
    }
}

/// Writes `request` (possibly several pipelined requests) to the unix socket `sock` from a separate
/// thread, so a peer that answers before reading everything (413) cannot deadlock the test, and
/// reads up to `responses` responses. Stops early when the connection closes; a read that
/// times out fails the test.
pub fn http_exchange(sock: &Path, request: &[u8], responses: usize, timeout: Duration) -> Vec<HttpReply> {
    use std::io::Write;
    let stream = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    stream.set_read_timeout(Some(timeout)).expect("read timeout");
    stream.set_write_timeout(Some(timeout)).expect("write timeout");
    let mut writer = stream.try_clone().expect("clone socket");
    let data = request.to_vec();
    // The peer may answer and close before the whole request is written: that is not an error here.
    let w = std::thread::spawn(move || {
        let _ = writer.write_all(&data);
        let _ = writer.flush();
    });
    let mut reader = HttpReader { stream, buf: Vec::new() };
    let mut out = Vec::new();
    while out.len() < responses {
        match reader.response() {
            Some(r) => out.push(r),
            None => break,
        }
    }
    let _ = reader.stream.shutdown(std::net::Shutdown::Both);
    let _ = w.join();
    out
}

struct HttpReader {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl HttpReader {
    /// More bytes into the buffer; false at EOF or reset.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("timed out waiting for a response; read so far: {:?}", String::from_utf8_lossy(&self.buf))
            }
            Err(_) => false,
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).collect();
                return Some(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill() {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// One response, or None if the connection closed before a status line.
    fn response(&mut self) -> Option<HttpReply> {
        let status_line = self.line()?;
        let status =
            status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let l = self.line().unwrap_or_else(|| panic!("connection closed in the headers after {status_line:?}"));
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("bad header line {l:?}"));
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        let mut reply = HttpReply { status, headers, body: Vec::new() };
        let chunked = reply.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length = reply.header("content-length").map(|v| v.parse::<usize>().expect("content-length"));
        reply.body = if status == 204 || status == 304 || status / 100 == 1 {
            Vec::new()
        } else if chunked {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().expect("chunk size");
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
                if size == 0 {
                    while !self.line().expect("trailer").is_empty() {}
                    break;
                }
                body.extend(self.exact(size).expect("chunk data"));
                assert_eq!(self.line().as_deref(), Some(""), "chunk not followed by CRLF");
            }
            body
        } else if let Some(n) = length {
            self.exact(n).expect("body")
        } else {
            while self.fill() {}
            std::mem::take(&mut self.buf)
        };
        Some(reply)
    }
}

/// Audit lines of a proxy's log that record a refusal: by a policy (`request refused by policy`),
/// as malformed or oversized (`request refused: malformed`), or what a dry run would refuse.
pub fn audit_refusals(p: &Proxy) -> usize {
    p.log_text()
        .lines()
        .filter(|l| l.contains("ctproxy::audit") && (l.contains("request refused") || l.contains("would be refused")))
        .count()
}

/// Waits (log lines are written asynchronously) until the proxy has logged more than `before`
/// audit refusals; returns the new count, or None if none came within `timeout`.
pub fn wait_audit_refusals(p: &Proxy, before: usize, timeout: Duration) -> Option<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let n = audit_refusals(p);
        if n > before {
            return Some(n);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
