//! Namespaces: two users on one daemon, each seeing only their own world.
//!
//! Every test starts a ctproxy with two namespaced listeners (`a` and `b`, unique namespace names per
//! test) and drives them with the real clients: the docker CLI 28 (and its legacy builder),
//! docker-compose 1.29 with the same project name in both namespaces, and Debian's `docker-registry`
//! with htpasswd behind ctproxy's registry proxy. What the daemon really holds is checked on its own
//! socket. Everything a namespace created is removed by label and name prefix at the end.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(120);

/// A ctproxy with namespaces `<a>` (conservative policy too) and `<b>` (namespace only) on `a.sock`
/// and `b.sock`, and a registry proxy.
struct Pair {
    proxy: Proxy,
    a: String,
    b: String,
    ns_a: String,
    ns_b: String,
    rp: String,
    config: std::path::PathBuf,
}

fn ns_name(tag: &str) -> String {
    // Namespace names are [a-z0-9-]: unique per process and test.
    unique(tag).replace("ctproxy-test-", "t")
}

fn pair(extra: &str) -> Pair {
    let (ns_a, ns_b) = (ns_name("a"), ns_name("b"));
    let toml = format!(
        r#"
[listener.a]
address = "unix://{{dir}}/a.sock"
namespace = "{ns_a}"
policies = ["conservative"]
[listener.b]
address = "unix://{{dir}}/b.sock"
namespace = "{ns_b}"
# No policy here: the namespace alone must keep b away from a's objects.
[policy.conservative]
kind = "conservative"
[namespaces]
shared_images = ["ctproxy-test/*"]
[registry_proxy]
address = "127.0.0.1:0"
{extra}
"#
    );
    let proxy = Proxy::start_with_config(&toml, "b.sock");
    let dir = proxy.dir().to_path_buf();
    let (a, b) = (format!("unix://{}/a.sock", dir.display()), format!("unix://{}/b.sock", dir.display()));
    // Both listeners and the registry proxy are up before the test starts.
    assert!(proxy.wait_log("registry proxy listening", Duration::from_secs(10)), "{}", proxy.log_text());
    // The address the registry proxy bound (port 0 in the configuration) is the registry part of
    // the namespaces' image names.
    let rp = proxy.logged_addr("registry proxy listening").to_string();
    assert!(std::os::unix::net::UnixStream::connect(dir.join("a.sock")).is_ok(), "a.sock is not served");
    Pair { config: dir.join("ctproxy.toml"), proxy, a, b, ns_a, ns_b, rp }
}

impl Drop for Pair {
    /// Removes everything either namespace created, on the daemon's own socket.
    fn drop(&mut self) {
        remove_namespace(&self.ns_a, &self.rp);
        remove_namespace(&self.ns_b, &self.rp);
    }
}

/// Removes a namespace's containers, networks, volumes and image tags (registry proxy `rp`).
fn remove_namespace(ns: &str, rp: &str) {
    let label = format!("label=io.ctproxy.namespace={ns}");
    let quiet = |args: &[&str]| {
        let out =
            docker_cmd("docker", direct(), args).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        out.split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let rm = |args: &[&str]| {
        let _ = docker_cmd("docker", direct(), args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    };
    for c in quiet(&["ps", "-aq", "--filter", &label]) {
        rm(&["rm", "-f", "-v", &c]);
    }
    for n in quiet(&["network", "ls", "-q", "--filter", &label]) {
        rm(&["network", "rm", &n]);
    }
    for v in quiet(&["volume", "ls", "-q", "--filter", &label]) {
        rm(&["volume", "rm", "-f", &v]);
    }
    let prefix = format!("{rp}/{ns}/");
    for i in quiet(&["images", "--format", "{{.Repository}}:{{.Tag}}"]) {
        if i.starts_with(&prefix) {
            rm(&["rmi", "-f", &i]);
        }
    }
}

fn cli(host: &str, args: &[&str]) -> Output {
    let mut c = docker_cmd("docker", host, args);
    c.env("DOCKER_BUILDKIT", "0");
    output_within(c, None, LIMIT, &format!("docker {}", args.join(" ")))
}

fn ok(host: &str, args: &[&str]) -> String {
    let out = cli(host, args);
    check(&out, args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    v.sort();
    v
}

fn write_context(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).expect("context dir");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("Dockerfile");
}

const COMPOSE: &str = r#"
version: "3"
services:
  db:
    image: ctproxy-test/busybox
    command: ["sleep", "300"]
    volumes: ["store:/data"]
  app:
    image: ctproxy-test/busybox
    command: ["sh", "-c", "ping -c1 -W5 db && sleep 300"]
    depends_on: ["db"]
volumes:
  store: {}
"#;

/// The same scripted session in both namespaces at once: same names everywhere, no collision.
fn session(host: &str, ctx: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    ok(host, &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
    ok(host, &["network", "create", "backend"]);
    ok(host, &["volume", "create", "data"]);
    ok(
        host,
        &["run", "-d", "--name", "web", "--network", "backend", "-v", "data:/data", BUSYBOX, "sh", "-c", "echo hello > /data/f; sleep 300"],
    );
    // The container answers by the name its namespace knows, on its namespace's network.
    seen.push(ok(host, &["run", "--rm", "--network", "backend", BUSYBOX, "ping", "-c1", "-W5", "web"]));
    seen.push(ok(host, &["exec", "db", "hostname"]));
    write_context(&ctx.join("one"), "FROM ctproxy-test/busybox\nRUN echo built > /built\n");
    seen.push(ok(host, &["build", "-t", "app:latest", &ctx.join("one").display().to_string()]));
    // FROM the namespace's own image: resolved to its own tag, not another namespace's.
    write_context(&ctx.join("two"), "FROM app:latest\nRUN cat /built\n");
    seen.push(ok(host, &["build", "-t", "app2", &ctx.join("two").display().to_string()]));
    seen.push(ok(host, &["run", "--rm", "app2", "cat", "/built"]));
    seen
}

#[test]
fn two_namespaces_run_the_same_session_without_colliding() {
    let p = pair("");
    let ctx = tempfile::tempdir().expect("tempdir");
    let compose_a = Compose::new(COMPOSE);
    let mut compose_b = Compose::new(COMPOSE);
    compose_b.project = compose_a.project.clone();
    let since = timestamp_now();

    let (a, b) = (p.a.clone(), p.b.clone());
    let (ctx_a, ctx_b) = (ctx.path().join("a"), ctx.path().join("b"));
    let ta = std::thread::spawn(move || session(&a, &ctx_a));
    let tb = std::thread::spawn(move || session(&b, &ctx_b));
    let (out_a, out_b) = (ta.join().expect("session a"), tb.join().expect("session b"));
    for out in out_a.iter().chain(&out_b) {
        assert!(!out.contains("ctp.") && !out.contains(&p.rp), "a mangled name leaked: {out}");
    }
    assert!(out_a.last().is_some_and(|o| o.contains("built")));
    let (ca, cb) = (compose_a.cmd(&p.a, &["up", "-d"]), compose_b.cmd(&p.b, &["up", "-d"]));
    let (ha, hb) = (
        std::thread::spawn(move || ok_within(ca, None, LIMIT, "compose up a")),
        std::thread::spawn(move || ok_within(cb, None, LIMIT, "compose up b")),
    );
    ha.join().expect("compose a");
    hb.join().expect("compose b");

    let proj = &compose_a.project;
    for (host, other_ns) in [(&p.a, &p.ns_b), (&p.b, &p.ns_a)] {
        let ps = lines(&ok(host, &["ps", "-a", "--format", "{{.Names}}"]));
        assert_eq!(ps, lines(&format!("db\n{proj}_app_1\n{proj}_db_1\nweb\n")), "ps -a through {host}");
        let ps_compose = compose_a.cmd(host, &["ps"]);
        let out = ok_within(ps_compose, None, LIMIT, "compose ps");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("{proj}_db_1")) && text.contains("Up"), "compose ps: {text}");
        let images = ok(host, &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        let images = lines(&images);
        assert!(images.contains(&"app:latest".to_owned()) && images.contains(&"app2:latest".to_owned()), "{images:?}");
        assert!(images.iter().all(|i| !i.contains("ctp.") && !i.contains(&p.rp) && !i.contains(other_ns)), "{images:?}");
        let vols = lines(&ok(host, &["volume", "ls", "--format", "{{.Name}}"]));
        assert_eq!(vols, lines(&format!("data\n{proj}_store\n")), "volume ls through {host}");
        let nets = lines(&ok(host, &["network", "ls", "--format", "{{.Name}}"]));
        assert_eq!(nets, lines(&format!("backend\nbridge\n{proj}_default\nhost\nnone\n")), "network ls through {host}");
        let inspect = ok(
            host,
            &[
                "inspect",
                "web",
                "--format",
                "{{.Name}} {{.Config.Image}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}} {{range .Mounts}}{{.Name}}{{end}}",
            ],
        );
        assert_eq!(inspect.trim(), format!("/web {BUSYBOX} backend data"));
        let events =
            ok(host, &["events", "--since", &since, "--until", &timestamp_now(), "--format", "{{.Type}} {{.Actor.Attributes.name}}"]);
        assert!(events.contains("container db") && events.contains("network backend") && events.contains("volume"), "events: {events}");
        assert!(!events.contains("ctp.") && !events.contains(&p.rp), "events leak mangled names: {events}");
        let info = ok(host, &["info", "--format", "{{.Containers}}"]);
        assert_eq!(info.trim(), "4", "info counts only the namespace's containers");
    }
    // Both namespaces' data are there on the daemon, separately.
    for ns in [&p.ns_a, &p.ns_b] {
        let out = ok(direct(), &["ps", "-a", "--filter", &format!("label=io.ctproxy.namespace={ns}"), "--format", "{{.Names}}"]);
        assert_eq!(lines(&out).len(), 4, "{out}");
    }
    compose_a.run(&p.a, &["down", "-v", "-t", "0"]);
    let ps_b = lines(&ok(&p.b, &["ps", "-a", "--format", "{{.Names}}"]));
    assert_eq!(ps_b.len(), 4, "compose down in a must not touch b: {ps_b:?}");
}

/// Asserts that `args` through `host` fails with the daemon's not-found answer, naming `typed`.
fn not_found(host: &str, args: &[&str], count: &mut usize) {
    let out = cli(host, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "`docker {}` should fail", args.join(" "));
    assert!(
        err.contains("No such") || err.contains("not found") || err.contains("no such"),
        "`docker {}` should answer not found, got: {err}",
        args.join(" ")
    );
    // The answer names what the client typed, and nothing else.
    if !args.iter().any(|a| a.contains("ctp.")) {
        assert!(!err.contains("ctp."), "mangled name in an error: {err}");
    }
    *count += 1;
}

#[test]
fn another_namespace_is_unreachable_by_name_id_and_prefix() {
    let p = pair("");
    ok(&p.a, &["run", "-d", "--name", "secret", BUSYBOX, "sh", "-c", "echo s3cret; sleep 300"]);
    ok(&p.a, &["network", "create", "private"]);
    ok(&p.a, &["volume", "create", "vault"]);
    let ctx = tempfile::tempdir().expect("tempdir");
    write_context(ctx.path(), "FROM ctproxy-test/busybox\nRUN echo a > /a\n");
    ok(&p.a, &["build", "-t", "mine:1", &ctx.path().display().to_string()]);
    let cid = ok(&p.a, &["inspect", "secret", "--format", "{{.Id}}"]).trim().to_owned();
    let nid = ok(&p.a, &["network", "inspect", "private", "--format", "{{.Id}}"]).trim().to_owned();
    let iid = ok(&p.a, &["image", "inspect", "mine:1", "--format", "{{.Id}}"]).trim().to_owned();
    let exec = {
        let raw = raw_request(
            Path::new(p.a.trim_start_matches("unix://")),
            b"POST /containers/secret/exec HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: 16\r\nConnection: close\r\n\r\n{\"Cmd\":[\"true\"]}",
            Duration::from_secs(10),
        );
        let text = String::from_utf8_lossy(&raw).into_owned();
        let start = text.find("\"Id\":\"").expect("exec id") + 6;
        text[start..start + 64].to_owned()
    };
    let mangled = format!("ctp.{}.secret", p.ns_a);
    let b = p.b.as_str();
    let mut n = 0;
    for c in [&cid[..], &cid[..12], &cid[..4], "secret", mangled.as_str()] {
        not_found(b, &["container", "inspect", c], &mut n);
        not_found(b, &["logs", c], &mut n);
        not_found(b, &["exec", c, "true"], &mut n);
        not_found(b, &["stop", "-t", "0", c], &mut n);
        not_found(b, &["rm", c], &mut n);
        // `rm -f` succeeds on a missing container (the CLI ignores not-found): a's must survive it.
        ok(b, &["rm", "-f", c]);
        ok(&p.a, &["container", "inspect", "secret"]);
    }
    not_found(b, &["cp", "secret:/etc/hostname", "-"], &mut n);
    not_found(b, &["cp", &format!("{}:/etc/hostname", &cid[..12]), "-"], &mut n);
    not_found(b, &["commit", &cid[..12], "stolen"], &mut n);
    not_found(b, &["attach", &cid[..12]], &mut n);
    not_found(b, &["top", "secret"], &mut n);
    not_found(b, &["stats", "--no-stream", &cid[..12]], &mut n);
    not_found(b, &["run", "--rm", "--volumes-from", &cid[..12], BUSYBOX, "true"], &mut n);
    not_found(b, &["run", "--rm", "--network", &format!("container:{}", &cid[..12]), BUSYBOX, "true"], &mut n);
    for net in [&nid[..], &nid[..12], "private"] {
        not_found(b, &["network", "inspect", net], &mut n);
        not_found(b, &["network", "rm", net], &mut n);
        not_found(b, &["network", "connect", net, &cid[..12]], &mut n);
    }
    not_found(b, &["run", "--rm", "--network", "private", BUSYBOX, "true"], &mut n);
    not_found(b, &["volume", "inspect", "vault"], &mut n);
    not_found(b, &["volume", "rm", "vault"], &mut n);
    let short_iid = iid.trim_start_matches("sha256:")[..12].to_owned();
    for img in [&iid[..], &short_iid[..], "mine:1"] {
        not_found(b, &["image", "inspect", img], &mut n);
        not_found(b, &["image", "history", img], &mut n);
        not_found(b, &["tag", img, "stolen:1"], &mut n);
        not_found(b, &["rmi", img], &mut n);
    }
    not_found(b, &["run", "--rm", "--pull", "never", &short_iid, "true"], &mut n);
    // Exec instances by their full ID.
    let out = raw_request(
        Path::new(b.trim_start_matches("unix://")),
        format!("GET /exec/{exec}/json HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 404") && text.contains("No such exec instance"), "{text}");
    n += 1;
    // A build cannot start from another namespace's image by ID.
    write_context(&ctx.path().join("steal"), &format!("FROM {iid}\nRUN cat /a\n"));
    let out = cli(b, &["build", "-t", "steal", &ctx.path().join("steal").display().to_string()]);
    assert!(!out.status.success(), "build FROM another namespace's image ID must fail");
    n += 1;
    // Events and lists show nothing of a; prunes in b leave a's objects alone.
    let events = ok(b, &["events", "--since", "10m", "--until", &timestamp_now(), "--format", "{{json .}}"]);
    assert!(!events.contains(&cid) && !events.contains("secret") && !events.contains("private") && !events.contains("vault"), "{events}");
    n += 1;
    ok(&p.a, &["stop", "-t", "0", "secret"]);
    ok(b, &["container", "prune", "-f"]);
    ok(b, &["network", "prune", "-f"]);
    ok(b, &["volume", "prune", "-f"]);
    ok(b, &["image", "prune", "-a", "-f"]);
    n += 4;
    ok(&p.a, &["container", "inspect", "secret"]);
    ok(&p.a, &["network", "inspect", "private"]);
    ok(&p.a, &["volume", "inspect", "vault"]);
    ok(&p.a, &["image", "inspect", "mine:1"]);
    assert!(ok(b, &["ps", "-a", "-q"]).trim().is_empty());
    assert!(n >= 30, "only {n} cross-namespace attempts");
}

#[test]
fn reserved_and_invalid_names_are_refused_clearly() {
    let p = pair("");
    for args in [
        vec!["run", "--rm", "--name", "ctp.other.db", BUSYBOX, "true"],
        vec!["volume", "create", "ctp.x.data"],
        vec!["network", "create", "CTP.x.net"],
        vec!["run", "--rm", "-v", "ctp.x.y:/data", BUSYBOX, "true"],
    ] {
        let out = cli(&p.a, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("reserved"), "{args:?}: {err}");
        // The name, by the namespace, and that no setting allows it (issue 17).
        support::jobs::assert_ns_refusal(&err, "names starting with \"ctp.\" are reserved", "the namespace");
    }
    let out = cli(&p.a, &["volume", "create", "a/b"]);
    // The daemon's own message (issue 17).
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("includes invalid characters for a local volume name"));
    let out = cli(&p.a, &["run", "--rm", "--name", "x", BUSYBOX, "true"]);
    assert!(!out.status.success(), "a one-character name is refused, as dockerd does");
    // BuildKit's build and session are refused in a namespace, with a reason.
    let sock = p.proxy.dir().join("a.sock");
    let raw = raw_request(
        &sock,
        b"POST /v1.41/build?version=2&t=bk HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        LIMIT,
    );
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 403") && text.contains("{\"message\":") && text.contains("BuildKit"), "{text}");
    // The legacy session-in-build form is what is refused: buildx's own gRPC path is served.
    support::jobs::assert_ns_refusal(&text, "(POST /build version=2, the legacy form)", "the namespace (build)");
    assert!(text.contains("build with buildx"), "{text}");
    // BuildKit's endpoints without the HTTP/2 upgrade say so.
    let raw = raw_request(&sock, b"POST /v1.41/session HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", LIMIT);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    support::jobs::assert_ns_refusal(&text, "Session without Upgrade: h2c", "the namespace (BuildKit)");
    // A network name with a control character (dockerd takes it; a namespace does not): the
    // network rule, not the container one.
    let body = r#"{"Name":"a\u0001b"}"#;
    let req = format!(
        "POST /v1.41/networks/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let text = String::from_utf8_lossy(&raw_request(&sock, req.as_bytes(), LIMIT)).into_owned();
    assert!(text.starts_with("HTTP/1.1 400") && !text.contains("[a-zA-Z0-9]"), "{text}");
    assert!(text.contains("the network name"), "{text}");
    support::jobs::assert_ns_refusal(&text, "contains control characters", "the namespace");
    // Every refusal above is in the audit log, and none had an effect on the daemon.
    assert!(wait_audit_refusals(&p.proxy, 6, Duration::from_secs(5)).is_some(), "{}", p.proxy.log_text());
    for ns in [&p.ns_a, &p.ns_b] {
        let label = format!("label=io.ctproxy.namespace={ns}");
        for args in [
            vec!["ps", "-aq", "--filter", &label],
            vec!["volume", "ls", "-q", "--filter", &label],
            vec!["network", "ls", "-q", "--filter", &label],
        ] {
            assert!(ok(direct(), &args).trim().is_empty(), "{args:?} on the daemon");
        }
    }
    assert!(!ok(direct(), &["images", "--format", "{{.Repository}}"]).contains(&format!("{}/{}/docker.io/library/bk", p.rp, p.ns_a)));
}

#[test]
fn push_and_pull_go_through_the_registry_proxy_with_each_namespace_credentials() {
    let registry = Registry::start_with_users(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let p = pair(&format!("insecure = [\"{}\"]", registry.addr));
    let cfg_a = tempfile::tempdir().expect("tempdir");
    let cfg_b = tempfile::tempdir().expect("tempdir");
    let with_config = |host: &str, cfg: &Path, args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", host, args);
        c.env("DOCKER_CONFIG", cfg);
        output_within(c, input.map(<[u8]>::to_vec), LIMIT, &format!("docker {}", args.join(" ")))
    };
    let reg = &registry.addr;
    let login = |host: &str, cfg: &Path, user: &str, pw: &str| {
        let out = with_config(host, cfg, &["login", "-u", user, "--password-stdin", reg], Some(pw.as_bytes()));
        check(&out, &["login", reg]);
    };
    login(&p.a, cfg_a.path(), "alice", "alice-pw");
    let target = format!("{reg}/team/app:1");
    ok(&p.a, &["tag", BUSYBOX, &target]);
    let out = with_config(&p.a, cfg_a.path(), &["push", &target], None);
    check(&out, &["push", &target]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("[{reg}/team/app]")) && !text.contains(&p.rp), "push output: {text}");
    // The registry holds it under the name the user typed.
    let tags =
        Command::new("curl").args(["-sf", "-u", "alice:alice-pw", &format!("http://{reg}/v2/team/app/tags/list")]).output().expect("curl");
    assert!(String::from_utf8_lossy(&tags.stdout).contains("\"1\""), "{}", String::from_utf8_lossy(&tags.stdout));
    let on_daemon = ok(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(on_daemon.contains(&format!("{}/{}/{}/team/app:1", p.rp, p.ns_a, reg.replace(':', "__"))), "{on_daemon}");

    // b without credentials cannot pull it; with its own, it can.
    let out = with_config(&p.b, cfg_b.path(), &["pull", &target], None);
    assert!(!out.status.success(), "pull without credentials must fail");
    assert!(ok(&p.b, &["images", "-q", &target]).trim().is_empty());
    login(&p.b, cfg_b.path(), "bob", "bob-pw");
    let out = with_config(&p.b, cfg_b.path(), &["pull", &target], None);
    check(&out, &["pull", &target]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Downloaded newer image for {target}")));
    ok(&p.b, &["run", "--rm", &target, "true"]);
    // a's copy and b's are separate tags: removing b's leaves a's.
    ok(&p.b, &["rmi", &target]);
    ok(&p.a, &["image", "inspect", &target]);
}

#[test]
fn a_restarted_proxy_gives_every_namespace_exactly_its_own_world() {
    let mut p = pair("");
    ok(&p.a, &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
    ok(&p.b, &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
    ok(&p.a, &["network", "create", "n1"]);
    ok(&p.b, &["volume", "create", "v1"]);
    ok(&p.a, &["tag", BUSYBOX, "mine:1"]);
    // What each namespace sees: containers (ID and name), volumes, networks, images.
    let world = |h: &str| {
        [
            lines(&ok(h, &["ps", "-a", "--format", "{{.ID}} {{.Names}}"])),
            lines(&ok(h, &["volume", "ls", "-q"])),
            lines(&ok(h, &["network", "ls", "--format", "{{.Name}}"])),
            lines(&ok(h, &["images", "--format", "{{.Repository}}:{{.Tag}}"])),
        ]
    };
    let before = [world(&p.a), world(&p.b)];
    // Killed, not stopped: nothing is written anywhere on the way out.
    p.proxy.signal("KILL");
    p.proxy.wait_exit(Duration::from_secs(10));
    // The same registry proxy address as before (the image names hold it), not a new port 0.
    let text = std::fs::read_to_string(&p.config).expect("config");
    std::fs::write(&p.config, text.replace("address = \"127.0.0.1:0\"", &format!("address = \"{}\"", p.rp))).expect("config");
    let restarted =
        Proxy::spawn(tempfile::tempdir().expect("tempdir"), p.proxy.dir().join("b.sock"), &["--config", p.config.to_str().expect("utf-8")]);
    let after = [world(&p.a), world(&p.b)];
    assert_eq!(before, after);
    assert_ne!(before[0][0], before[1][0], "each namespace has its own db");
    ok(&p.a, &["exec", "db", "true"]);
    drop(restarted);
}

#[test]
fn save_and_load_stay_in_the_namespace() {
    let p = pair("");
    ok(&p.a, &["tag", BUSYBOX, "mine:1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("mine.tar");
    ok(&p.a, &["save", "-o", &tar.display().to_string(), "mine:1"]);
    // The tar names the image as the user knows it: in manifest.json, and in the OCI index.json
    // that the containerd image store (Docker 28) writes too (`io.containerd.image.name`).
    let member = |name: &str| {
        let out = Command::new("tar").args(["-xOf", &tar.display().to_string(), name]).output().expect("tar");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let manifest = member("manifest.json").expect("manifest.json");
    assert!(manifest.contains("\"mine:1\"") && !manifest.contains(&p.rp), "{manifest}");
    if let Some(index) = member("index.json") {
        assert!(!index.contains(&p.rp) && !index.contains(&p.ns_a), "index.json names the daemon's real image: {index}");
    }
    // b loads it into its own namespace; a's tag and the daemon's real names are untouched.
    let out = ok(&p.b, &["load", "-i", &tar.display().to_string()]);
    assert!(out.contains("Loaded image: mine:1"), "{out}");
    assert!(lines(&ok(&p.b, &["images", "--format", "{{.Repository}}:{{.Tag}}"])).contains(&"mine:1".to_owned()));
    let on_daemon = ok(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(on_daemon.contains(&format!("{}/{}/docker.io/library/mine:1", p.rp, p.ns_b)), "{on_daemon}");
    assert!(!lines(&on_daemon).contains(&"mine:1".to_owned()), "a load must never create a real name");
    // Loading a tar that names a shared image does not replace the shared image.
    let shared = dir.path().join("shared.tar");
    ok(&p.a, &["save", "-o", &shared.display().to_string(), BUSYBOX]);
    let before = ok(direct(), &["image", "inspect", BUSYBOX, "--format", "{{.Id}}"]);
    ok(&p.b, &["load", "-i", &shared.display().to_string()]);
    assert_eq!(before, ok(direct(), &["image", "inspect", BUSYBOX, "--format", "{{.Id}}"]));
    assert!(
        ok(direct(), &["images", "--format", "{{.Repository}}"]).contains(&format!("{}/{}/docker.io/ctproxy-test/busybox", p.rp, p.ns_b))
    );
}

#[test]
fn own_containers_can_be_joined_when_the_policy_allows_it_in_a_namespace() {
    let ns = ns_name("own");
    let proxy = Proxy::start_with_config(
        &format!(
            r#"
[listener.ns]
address = "unix://{{dir}}/ns.sock"
namespace = "{ns}"
policies = ["conservative"]
[listener.plain]
address = "unix://{{dir}}/plain.sock"
policies = ["conservative"]
[policy.conservative]
kind = "conservative"
allow_namespace_containers = true
[namespaces]
shared_images = ["ctproxy-test/*"]
"#
        ),
        "plain.sock",
    );
    let host = format!("unix://{}/ns.sock", proxy.dir().display());
    let plain = format!("unix://{}/plain.sock", proxy.dir().display());
    let _cleanup = NsCleanup(ns.clone());
    ok(&host, &["run", "-d", "--name", "db", "-v", "/data", BUSYBOX, "sleep", "300"]);
    ok(&host, &["run", "--rm", "--volumes-from", "db", BUSYBOX, "ls", "/data"]);
    ok(&host, &["run", "--rm", "--network", "container:db", BUSYBOX, "true"]);
    // Without a namespace, the same policy still refuses them.
    let out = cli(&plain, &["run", "--rm", "--volumes-from", "x", BUSYBOX, "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("policy"));
}

/// Removes a namespace's objects at the end of a test, whatever happened.
struct NsCleanup(String);

impl Drop for NsCleanup {
    fn drop(&mut self) {
        remove_namespace(&self.0, "127.0.0.1:5001");
    }
}
