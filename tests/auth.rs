//! Authentication end to end, with the real docker CLI: TLS client certificates (`tls-cert`), HTTP
//! `Authorization` headers sent from the CLI's `config.json` (`http`), and unix peer credentials
//! (`unix-peer`); plus per-identity policy overrides (`[identity.NAME] policies`).

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Once;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(5);

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The access log's `path=` of a request the docker CLI 28 sends to `rest` (`/v<negotiated>/rest`).
fn cli_path(rest: &str) -> String {
    format!("path=/v{}/{rest}", cli_api_version())
}

/// Asserts that the access log of `proxy` shows a request answered `status` for `identity`.
fn assert_logged(proxy: &Proxy, identity: &str, status: u16) {
    let needle = format!("identity=\"{identity}\"");
    let ok = proxy.wait_log(&needle, WAIT)
        && proxy.wait_log(&format!("status={status}"), WAIT)
        && proxy.log_text().lines().any(|l| l.contains(&needle) && l.contains(&format!("status={status}")));
    assert!(ok, "no access-log line with {needle} and status={status}; log:\n{}", proxy.log_text());
}

/// Waits for an access-log line containing every one of `parts`.
fn wait_line(proxy: &Proxy, parts: &[&str]) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if proxy.log_text().lines().any(|l| parts.iter().all(|p| l.contains(p))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// TLS client certificates
// ---------------------------------------------------------------------------------------------

/// `docker --tlsverify --tlscacert --tlscert --tlskey -H tcp://127.0.0.1:PORT ARGS...`
fn tls_docker(port: u16, client: &certs::Issued, args: &[&str]) -> Output {
    let host = format!("tcp://127.0.0.1:{port}");
    let (ca, cert, key) = (client.ca.to_str().unwrap(), client.cert.to_str().unwrap(), client.key.to_str().unwrap());
    let mut all = vec!["--tlsverify", "--tlscacert", ca, "--tlscert", cert, "--tlskey", key, "-H", &host];
    all.extend_from_slice(args);
    docker_cmd("docker", &host, &all).env_remove("DOCKER_CERT_PATH").output().expect("run docker")
}

#[test]
fn tls_client_certificates_map_to_identities_with_their_own_policies() {
    let pki = tempfile::tempdir().unwrap();
    let ca = certs::Ca::new("ctproxy-test-ca");
    let server = ca.server(&pki.path().join("server"));
    let alice = ca.client(&pki.path().join("alice"), "alice", &[]);
    // Mapped through a subjectAltName, not the common name.
    let bob = ca.client(&pki.path().join("bob"), "bob", &["bob.ci.example"]);
    // Same CA, but no mapping: a valid certificate is not enough.
    let mallory = ca.client(&pki.path().join("mallory"), "mallory", &["mallory.example"]);
    // An impostor CA with the same name as the real one (so the docker CLI does present its
    // certificate, whose issuer name matches what the server asks for): refused at the handshake.
    let impostor = certs::Ca::new("ctproxy-test-ca");
    let mut stranger = impostor.client(&pki.path().join("stranger"), "alice", &[]);
    stranger.ca = server.ca.clone(); // trusts the proxy's server certificate, presents a forged one

    let config = format!(
        r#"
[listener.a-tls]
address = "tcp://127.0.0.1:0"
auth = ["certs"]
[listener.a-tls.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"

# Only here so the harness can tell when the proxy is up (listeners bind in name order).
[listener.b-local]
address = "unix://{{dir}}/docker.sock"

[auth.certs]
kind = "tls-cert"
subjects = {{ alice = "alice", "bob.ci.example" = "admin" }}

[policy.strict]
kind = "conservative"

[identity.alice]
policies = ["strict"]

[identity.admin]
policies = []
"#,
        cert = server.cert.display(),
        key = server.key.display(),
        ca = server.ca.display(),
    );
    let proxy = Proxy::start_with_config(&config, "docker.sock");
    let port = proxy.tcp_port("a-tls");
    let mut cleanup = Cleanup::new();

    // alice: version and ps work, and the access log names her.
    let out = tls_docker(port, &alice, &["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(out.status.success(), "{}\nlog:\n{}", text(&out), proxy.log_text());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), daemon_api_version());
    let out = tls_docker(port, &alice, &["ps", "-a", "--format", "{{.ID}}"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_logged(&proxy, "alice", 200);
    assert!(wait_line(&proxy, &["identity=\"alice\"", &cli_path("containers/json"), "status=200"]), "{}", proxy.log_text());

    // alice runs under `strict`: an ordinary container is fine, a privileged one is refused (403).
    let plain = unique("tls-plain");
    cleanup.container(&plain);
    let out = tls_docker(port, &alice, &["create", "--name", &plain, BUSYBOX, "true"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tls_docker(port, &alice, &["rm", &plain]);
    assert!(out.status.success(), "{}", text(&out));

    let refused = unique("tls-priv-alice");
    cleanup.container(&refused);
    let out = tls_docker(port, &alice, &["run", "--rm", "--privileged", "--name", &refused, BUSYBOX, "true"]);
    assert!(!out.status.success(), "privileged run was allowed for alice: {}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("privileged mode (HostConfig.Privileged) is not allowed by policy strict"), "{msg}");
    assert!(wait_line(&proxy, &["identity=\"alice\"", &cli_path("containers/create"), "status=403"]), "{}", proxy.log_text());
    assert!(wait_line(&proxy, &["request refused by policy", "identity=alice", "policy=strict"]), "{}", proxy.log_text());
    assert!(!docker_output(direct(), &["container", "inspect", &refused]).status.success(), "the refused container exists");

    // admin (bob's certificate, mapped by SAN) has `policies = []`: the same create goes through.
    let allowed = unique("tls-priv-admin");
    cleanup.container(&allowed);
    let out = tls_docker(port, &bob, &["create", "--privileged", "--name", &allowed, BUSYBOX, "true"]);
    assert!(out.status.success(), "privileged create refused for admin: {}\nlog:\n{}", text(&out), proxy.log_text());
    let out = tls_docker(port, &bob, &["container", "inspect", "--format", "{{.HostConfig.Privileged}}", &allowed]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true");
    let out = tls_docker(port, &bob, &["rm", &allowed]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_line(&proxy, &["identity=\"admin\"", &cli_path("containers/create"), "status=201"]), "{}", proxy.log_text());

    // mallory: verified certificate, no mapping → 401 invalid credentials.
    let out = tls_docker(port, &mallory, &["version"]);
    assert!(!out.status.success(), "unmapped certificate accepted: {}", text(&out));
    assert!(text(&out).contains("ctproxy: invalid credentials"), "{}", text(&out));
    assert!(wait_line(&proxy, &["status=401", "cn=mallory"]), "{}", proxy.log_text());
    assert!(wait_line(&proxy, &["request refused: not authenticated", "cn=mallory"]), "{}", proxy.log_text());

    // A certificate from another CA never gets past the handshake, whatever its CN.
    let out = tls_docker(port, &stranger, &["version"]);
    assert!(!out.status.success(), "forged certificate accepted: {}", text(&out));
    assert!(text(&out).contains("tls: "), "{}", text(&out));
    assert!(wait_line(&proxy, &["connection refused at handshake", "invalid peer certificate"]), "{}", proxy.log_text());
    assert!(!proxy.log_text().lines().any(|l| l.contains("identity=\"alice\"") && l.contains("status=401")));

    // No certificate at all: refused during the handshake too.
    let empty = pki.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let host = format!("tcp://127.0.0.1:{port}");
    let out = docker_cmd("docker", &host, &["--tlsverify", "--tlscacert", server.ca.to_str().unwrap(), "-H", &host, "version"])
        .env("DOCKER_CERT_PATH", &empty)
        .output()
        .unwrap();
    assert!(!out.status.success(), "client without certificate accepted: {}", text(&out));
    assert!(text(&out).contains("tls: certificate required"), "{}", text(&out));
    assert!(wait_line(&proxy, &["connection refused at handshake", "peer sent no certificates"]), "{}", proxy.log_text());
    assert!(!proxy.log_text().contains("identity=\"mallory\""), "{}", proxy.log_text());
}

// ---------------------------------------------------------------------------------------------
// HTTP Authorization headers from the CLI's config.json
// ---------------------------------------------------------------------------------------------

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A docker config directory whose `config.json` sends `Authorization: <value>` (or nothing).
fn config_dir(parent: &Path, name: &str, authorization: Option<&str>) -> std::path::PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let json = match authorization {
        Some(v) => serde_json::json!({ "HttpHeaders": { "Authorization": v } }),
        None => serde_json::json!({}),
    };
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    dir
}

fn docker_with_config(proxy: &Proxy, config: &Path, args: &[&str]) -> Output {
    let host = proxy.docker_host();
    let mut all = vec!["--config", config.to_str().unwrap(), "-H", &host];
    all.extend_from_slice(args);
    docker_cmd("docker", &host, &all).output().expect("run docker")
}

const TOKEN: &str = "ctproxy-test-token-8f14e45fceea167a5a36dedd4bea2543";

fn http_auth_proxy() -> Proxy {
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let config = format!(
        r#"
[listener.local]
address = "unix://{{dir}}/docker.sock"
auth = ["web"]

[auth.web]
kind = "http"
users = {{ alice = "{hash}" }}
tokens = {{ "{token}" = "ci-bot" }}
"#,
        token = ctproxy::plugin::auth::hash_token(TOKEN),
    );
    Proxy::start_with_config(&config, "docker.sock")
}

#[test]
fn http_basic_and_bearer_from_cli_config() {
    let proxy = http_auth_proxy();
    let tmp = tempfile::tempdir().unwrap();
    let basic_ok = config_dir(tmp.path(), "basic-ok", Some(&format!("Basic {}", base64(b"alice:s3cret"))));
    let basic_bad = config_dir(tmp.path(), "basic-bad", Some(&format!("Basic {}", base64(b"alice:wrong"))));
    let basic_nobody = config_dir(tmp.path(), "basic-nobody", Some(&format!("Basic {}", base64(b"bob:s3cret"))));
    let bearer_ok = config_dir(tmp.path(), "bearer-ok", Some(&format!("Bearer {TOKEN}")));
    let bearer_bad = config_dir(tmp.path(), "bearer-bad", Some("Bearer not-the-token"));
    let none = config_dir(tmp.path(), "none", None);

    let fmt = ["version", "--format", "{{.Server.APIVersion}}"];
    let out = docker_with_config(&proxy, &basic_ok, &fmt);
    assert!(out.status.success(), "{}\nlog:\n{}", text(&out), proxy.log_text());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), daemon_api_version());
    assert_logged(&proxy, "alice", 200);

    for (dir, what) in [(&basic_bad, "wrong password"), (&basic_nobody, "unknown user"), (&bearer_bad, "wrong token")] {
        let out = docker_with_config(&proxy, dir, &fmt);
        assert!(!out.status.success(), "{what}: accepted: {}", text(&out));
        assert!(text(&out).contains("ctproxy: invalid credentials"), "{what}: {}", text(&out));
    }

    let out = docker_with_config(&proxy, &bearer_ok, &fmt);
    assert!(out.status.success(), "{}", text(&out));
    assert_logged(&proxy, "ci-bot", 200);

    let out = docker_with_config(&proxy, &none, &fmt);
    assert!(!out.status.success(), "no credentials accepted: {}", text(&out));
    assert!(text(&out).contains("ctproxy: authentication required"), "{}", text(&out));
    // Without a ping the CLI cannot negotiate, so it asks for its own newest version: still 401.
    assert!(wait_line(&proxy, &["status=401", "/version"]), "{}", proxy.log_text());
    assert!(proxy.wait_log("request refused: not authenticated", WAIT));

    // `docker ps` pings, then lists: both requests authenticate.
    let out = docker_with_config(&proxy, &basic_ok, &["ps", "-a", "--format", "{{.ID}}"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_line(&proxy, &["identity=\"alice\"", "path=/_ping", "status=200"]), "{}", proxy.log_text());
    assert!(wait_line(&proxy, &["identity=\"alice\"", &cli_path("containers/json"), "status=200"]), "{}", proxy.log_text());
}

/// Several requests on one keep-alive connection: each is authenticated on its own (a good header
/// on the first request does not authenticate the connection).
#[test]
fn http_auth_on_one_keep_alive_connection() {
    let proxy = http_auth_proxy();
    let good = format!("Basic {}", base64(b"alice:s3cret"));
    let bad = format!("Basic {}", base64(b"alice:nope"));
    let bearer = format!("Bearer {TOKEN}");
    let script = r#"
import http.client, json, socket, sys
class UnixConn(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path
    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        self.sock = s
path, headers = sys.argv[1], json.loads(sys.argv[2])
c = UnixConn(path)
c.connect()
first = c.sock
for h in headers:
    hs = {"Authorization": h} if h else {}
    c.request("GET", "/v1.41/containers/json?all=1", headers=hs)
    r = c.getresponse()
    body = r.read()
    print(r.status, c.sock is first, json.loads(body).get("message", "") if r.status != 200 else "")
"#;
    let headers = serde_json::json!([good, good, "", good, bad, bearer, good, good]);
    let out = Command::new("python3").args(["-c", script, proxy.sock.to_str().unwrap(), &headers.to_string()]).output().expect("python3");
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    let expect = [
        "200 True ",
        "200 True ",
        "401 True ctproxy: authentication required",
        "200 True ",
        "401 True ctproxy: invalid credentials",
        "200 True ",
        "200 True ",
        "200 True ",
    ];
    assert_eq!(lines, expect, "log:\n{}", proxy.log_text());
    // The same connection (one peer label) carried every request; the log names each identity.
    assert!(wait_line(&proxy, &["identity=\"ci-bot\"", "status=200"]), "{}", proxy.log_text());
    let deadline = std::time::Instant::now() + WAIT;
    let count = || proxy.log_text().lines().filter(|l| l.contains("identity=\"alice\"") && l.contains("status=200")).count();
    while count() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(), 5, "{}", proxy.log_text());
}

// ---------------------------------------------------------------------------------------------
// Unix peer credentials
// ---------------------------------------------------------------------------------------------

const TEST_USER: &str = "ctproxy-test-user";

/// Creates the system user the peer tests connect as (once per run; an existing one is fine).
fn test_user() -> (u32, u32) {
    static CREATE: Once = Once::new();
    CREATE.call_once(|| {
        let exists = Command::new("id").args(["-u", TEST_USER]).output().is_ok_and(|o| o.status.success());
        if !exists {
            let out = Command::new("useradd").args(["-r", "-M", "-U", "-s", "/usr/sbin/nologin", TEST_USER]).output().expect("useradd");
            // 9: the user exists (another test binary made it meanwhile).
            assert!(out.status.success() || out.status.code() == Some(9), "useradd failed: {}", text(&out));
        }
    });
    let id = |flag: &str| {
        let out = Command::new("id").args([flag, TEST_USER]).output().expect("id");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Starts ctproxy with one unix-peer listener whose socket everyone can reach.
fn peer_proxy(mapping: &str) -> Proxy {
    let config = format!(
        r#"
[listener.shared]
address = "unix://{{dir}}/docker.sock"
mode = "0666"
auth = ["peers"]

[auth.peers]
kind = "unix-peer"
{mapping}
"#
    );
    let proxy = Proxy::start_with_config(&config, "docker.sock");
    // The temporary directory is 0700: let the unprivileged user reach the socket inside.
    std::fs::set_permissions(proxy.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    proxy
}

/// The docker CLI run as the test user (no supplementary groups, a config dir it may read).
fn docker_as_user(proxy: &Proxy, uid: u32, gid: u32, args: &[&str]) -> Output {
    let host = proxy.docker_host();
    let mut c = Command::new("setpriv");
    c.args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "docker", "-H", &host])
        .args(args)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env("DOCKER_CONFIG", proxy.dir().join("no-such-config"))
        .env("HOME", "/nonexistent");
    c.output().expect("setpriv docker")
}

#[test]
fn unix_peer_uid_and_gid_mapping() {
    let (uid, gid) = test_user();
    let fmt = ["version", "--format", "{{.Server.APIVersion}}"];

    // Only root is mapped: the other user is refused, root gets its identity.
    let proxy = peer_proxy(r#"uids = { "0" = "root-id" }"#);
    let out = docker_as_user(&proxy, uid, gid, &fmt);
    assert!(!out.status.success(), "unmapped uid accepted: {}", text(&out));
    assert!(text(&out).contains("ctproxy: authentication required"), "{}", text(&out));
    assert!(wait_line(&proxy, &["status=401", &format!("uid={uid},gid={gid}")]), "{}", proxy.log_text());
    let out = docker_cmd("docker", &proxy.docker_host(), &fmt).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), daemon_api_version());
    assert_logged(&proxy, "root-id", 200);
    drop(proxy);

    // The user mapped by name.
    let proxy = peer_proxy(&format!(r#"uids = {{ "0" = "root-id", "{TEST_USER}" = "tester" }}"#));
    let out = docker_as_user(&proxy, uid, gid, &fmt);
    assert!(out.status.success(), "mapped user refused: {}\nlog:\n{}", text(&out), proxy.log_text());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), daemon_api_version());
    assert_logged(&proxy, "tester", 200);
    assert!(wait_line(&proxy, &["identity=\"tester\"", &format!("uid={uid},gid={gid}")]), "{}", proxy.log_text());
    drop(proxy);

    // The user's primary group mapped by number (no uid entry for it).
    let proxy = peer_proxy(&format!("uids = {{ \"0\" = \"root-id\" }}\ngids = {{ \"{gid}\" = \"testers\" }}"));
    let out = docker_as_user(&proxy, uid, gid, &["ps", "-a", "--format", "{{.ID}}"]);
    assert!(out.status.success(), "mapped group refused: {}\nlog:\n{}", text(&out), proxy.log_text());
    assert!(wait_line(&proxy, &["identity=\"testers\"", &cli_path("containers/json"), "status=200"]), "{}", proxy.log_text());
    // uid wins over gid: root (gid 0 unmapped) is still root-id.
    let out = docker_cmd("docker", &proxy.docker_host(), &fmt).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_logged(&proxy, "root-id", 200);
}

/// Several authenticators in a chain: a unix peer that is not mapped can still authenticate with a
/// header; a wrong header is refused even if the peer would not have matched anyway.
#[test]
fn chain_of_peer_and_http_auth() {
    let (uid, gid) = test_user();
    let hash = bcrypt::hash("pw", 4).unwrap();
    let config = format!(
        r#"
[listener.shared]
address = "unix://{{dir}}/docker.sock"
mode = "0666"
auth = ["peers", "web"]

[auth.peers]
kind = "unix-peer"
uids = {{ "0" = "root-id" }}

[auth.web]
kind = "http"
users = {{ carol = "{hash}" }}
"#
    );
    let proxy = Proxy::start_with_config(&config, "docker.sock");
    std::fs::set_permissions(proxy.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = proxy.dir().join("carol");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o755)).unwrap();
    let header = format!("Basic {}", base64(b"carol:pw"));
    std::fs::write(cfg.join("config.json"), serde_json::json!({"HttpHeaders": {"Authorization": header}}).to_string()).unwrap();
    std::fs::set_permissions(cfg.join("config.json"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let fmt = ["version", "--format", "{{.Server.APIVersion}}"];
    let out = docker_as_user(&proxy, uid, gid, &fmt);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("authentication required"), "{}", text(&out));
    let out = docker_as_user(&proxy, uid, gid, &["--config", cfg.to_str().unwrap(), "version", "--format", "{{.Server.APIVersion}}"]);
    assert!(out.status.success(), "{}\nlog:\n{}", text(&out), proxy.log_text());
    assert_logged(&proxy, "carol", 200);
    // Root is recognised by the first authenticator of the chain.
    let out = docker_cmd("docker", &proxy.docker_host(), &fmt).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_logged(&proxy, "root-id", 200);
}
