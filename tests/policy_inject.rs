//! Acceptance: a listener chaining `conservative` then `inject` puts the injected values into every
//! container it creates, as the real daemon's `inspect` (on its own socket) and the container itself
//! show; forced values beat the client's, defaults yield to it, forced limits are caps that neither
//! create nor `docker update` can lift; exec gets the forced environment and user.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const LONG: Duration = Duration::from_secs(120);

/// The `inject` policy runs after `conservative`: its read-only mount of a host directory is the
/// administrator's choice, not subject to `allowed_bind_paths` (which is empty here).
fn config(shared: &std::path::Path) -> String {
    format!(
        r#"
[listener.t]
address = "unix://{{dir}}/d.sock"
policies = ["strict", "ci"]
[policy.strict]
kind = "conservative"
[policy.ci]
kind = "inject"
[policy.ci.defaults]
env = {{ LANG = "C.UTF-8", TIER = "default" }}
labels = {{ team = "platform" }}
[policy.ci.force]
env = {{ CI = "true", CI_JOB = "42" }}
labels = {{ "ci.job" = "42", "ci.runner" = "ctproxy" }}
extra_hosts = ["cache.internal:10.1.2.3"]
dns = ["10.9.9.9"]
mounts = [{{ source = "{}", target = "/ci/shared" }}]
memory = "128m"
cpus = 0.5
pids_limit = 64
ulimits = [{{ name = "nofile", soft = 2048, hard = 2048 }}]
user = "1234:1234"
"#,
        shared.display()
    )
}

const MEM: i64 = 128 << 20;

/// Fields drop in order: the containers go before the proxy and the shared directory.
struct Setup {
    cleanup: Cleanup,
    p: Proxy,
    _shared: tempfile::TempDir,
    shared: String,
}

fn setup() -> Setup {
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("token"), "injected\n").expect("shared file");
    let p = Proxy::start_with_config(&config(shared.path()), "d.sock");
    let path = shared.path().display().to_string();
    Setup { cleanup: Cleanup::new(), p, _shared: shared, shared: path }
}

impl Setup {
    fn host(&self) -> String {
        self.p.docker_host()
    }

    /// `docker ARGS` through the proxy; panics with its output unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = ok_within(docker_cmd("docker", &self.host(), args), None, LONG, &format!("docker {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker run -d --name <unique> EXTRA BUSYBOX sleep 300` through the proxy.
    fn run(&mut self, extra: &[&str]) -> String {
        let name = unique("inj");
        self.cleanup.container(&name);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[BUSYBOX, "sleep", "300"]);
        self.ok(&args);
        name
    }

    /// `POST /containers/create` through the proxy with a raw JSON body, then start it directly.
    fn create_raw(&mut self, body: Value) -> String {
        let name = unique("inj");
        self.cleanup.container(&name);
        let request = http_request(
            "POST",
            &format!("/v1.41/containers/create?name={name}"),
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
            BodyFraming::Length,
        );
        let reply = http_exchange(&self.p.sock, &request, 1, LONG);
        assert_eq!(reply.first().map(|r| r.status), Some(201), "{:?}", reply.first().map(HttpReply::text));
        docker(direct(), &["start", &name]);
        name
    }
}

/// `docker inspect` on the daemon's own socket.
fn inspect(name: &str) -> Value {
    let out = docker(direct(), &["inspect", name]);
    serde_json::from_str::<Value>(&out).expect("inspect JSON")[0].take()
}

fn env_of(v: &Value) -> Vec<String> {
    v["Config"]["Env"].as_array().expect("Env").iter().map(|e| e.as_str().expect("env string").to_owned()).collect()
}

/// The forced values, as the daemon holds them.
fn assert_forced(v: &Value, shared: &str) {
    let env = env_of(v);
    for forced in ["CI=true", "CI_JOB=42"] {
        assert_eq!(env.iter().filter(|e| e.split('=').next() == forced.split('=').next()).collect::<Vec<_>>(), [forced], "{env:?}");
    }
    let labels = &v["Config"]["Labels"];
    assert_eq!((&labels["ci.job"], &labels["ci.runner"]), (&json!("42"), &json!("ctproxy")), "{labels}");
    assert_eq!(v["Config"]["User"], json!("1234:1234"));
    let hc = &v["HostConfig"];
    let hosts: Vec<&str> = hc["ExtraHosts"].as_array().expect("ExtraHosts").iter().filter_map(Value::as_str).collect();
    // /etc/hosts matches names case-insensitively and takes the first line: no other case may stay.
    let cache: Vec<&&str> = hosts.iter().filter(|h| h.to_ascii_lowercase().starts_with("cache.internal:")).collect();
    assert_eq!(cache, [&"cache.internal:10.1.2.3"], "{hosts:?}");
    assert_eq!(hc["Dns"], json!(["10.9.9.9"]));
    assert_eq!(hc["Memory"], json!(MEM), "Memory");
    assert_eq!(hc["NanoCpus"], json!(500_000_000), "NanoCpus");
    assert_eq!(hc["CpuQuota"], json!(0), "CpuQuota");
    assert_eq!(hc["PidsLimit"], json!(64), "PidsLimit");
    assert_eq!(hc["Ulimits"], json!([{"Name": "nofile", "Hard": 2048, "Soft": 2048}]), "Ulimits");
    let mounts = hc["Mounts"].as_array().expect("Mounts");
    let ci: Vec<&Value> = mounts.iter().filter(|m| m["Target"] == json!("/ci/shared")).collect();
    assert_eq!(ci.len(), 1, "{mounts:?}");
    assert_eq!((&ci[0]["Type"], &ci[0]["Source"], &ci[0]["ReadOnly"]), (&json!("bind"), &json!(shared), &json!(true)));
}

/// What the container itself sees of the forced values.
fn assert_forced_inside(s: &Setup, name: &str) {
    let script =
        "echo $CI $CI_JOB; id -u; ulimit -n; cat /ci/shared/token; touch /ci/shared/new 2>/dev/null && echo writable || echo read-only; \
                  grep -ci 'cache.internal' /etc/hosts; grep -c '^nameserver 10.9.9.9' /etc/resolv.conf";
    assert_eq!(s.ok(&["exec", name, "sh", "-c", script]), "true 42\n1234\n2048\ninjected\nread-only\n1\n1\n");
}

#[test]
fn forced_and_default_values_reach_the_daemon() {
    let mut s = setup();
    let name = s.run(&[]);
    let v = inspect(&name);
    assert_forced(&v, &s.shared);
    let env = env_of(&v);
    assert!(env.contains(&"LANG=C.UTF-8".to_owned()) && env.contains(&"TIER=default".to_owned()), "{env:?}");
    assert_eq!(v["Config"]["Labels"]["team"], json!("platform"));
    assert_forced_inside(&s, &name);
    assert_eq!(audit_refusals(&s.p), 0, "{}", s.p.log_text());
}

#[test]
fn client_cannot_override_forced_values_but_overrides_defaults() {
    let mut s = setup();
    let vol = unique("injvol");
    s.cleanup.volume(&vol);
    let target = format!("{vol}:/ci/shared");
    let name = s.run(&[
        "-e",
        "CI=false",
        "-e",
        "CI_JOB=0",
        "-e",
        "LANG=fr_FR.UTF-8",
        "-e",
        "TIER=mine",
        "--label",
        "ci.job=spoofed",
        "--label",
        "ci.runner=me",
        "--label",
        "team=mine",
        "--memory",
        "2g",
        "--memory-swap",
        "-1",
        "--pids-limit",
        "-1",
        "--cpus",
        "4",
        "--user",
        "0",
        "--ulimit",
        "nofile=4096:4096",
        "--add-host",
        "cache.internal:6.6.6.6",
        "--add-host",
        "CACHE.Internal:6.6.6.7",
        "--dns",
        "8.8.8.8",
        "-v",
        &target,
    ]);
    let v = inspect(&name);
    assert_forced(&v, &s.shared);
    let env = env_of(&v);
    assert!(env.contains(&"LANG=fr_FR.UTF-8".to_owned()) && env.contains(&"TIER=mine".to_owned()), "defaults yield to the client: {env:?}");
    assert!(!env.iter().any(|e| e.starts_with("TIER=default") || e.starts_with("LANG=C.UTF-8")), "{env:?}");
    assert_eq!(v["Config"]["Labels"]["team"], json!("mine"));
    let binds = &v["HostConfig"]["Binds"];
    assert!(binds.is_null() || binds == &json!([]), "a bind on the forced target is dropped: {binds}");
    assert_forced_inside(&s, &name);

    // Forced limits are caps: asking for less is kept.
    let small = s.run(&["--memory", "64m", "--pids-limit", "10", "--cpus", "0.25", "--ulimit", "nproc=100:100"]);
    let hc = inspect(&small)["HostConfig"].take();
    assert_eq!((&hc["Memory"], &hc["PidsLimit"], &hc["NanoCpus"]), (&json!(64 << 20), &json!(10), &json!(250_000_000)));
    let ulimits = hc["Ulimits"].as_array().expect("Ulimits");
    assert!(ulimits.contains(&json!({"Name": "nproc", "Hard": 100, "Soft": 100})) && ulimits.len() == 2, "{ulimits:?}");
    assert_eq!(audit_refusals(&s.p), 0, "{}", s.p.log_text());
}

#[test]
fn raw_api_spellings_do_not_escape_the_caps() {
    let mut s = setup();
    // The deprecated top-level memory fields, other key spellings, the other CPU limit, unlimited swap.
    let name = s.create_raw(json!({
        "Image": BUSYBOX, "Cmd": ["sleep", "300"], "Memory": 4i64 << 30, "env": ["CI=false"], "ENV": ["CI=no", "CI_JOB=x"],
        "labels": {"ci.job": "x"}, "user": "0",
        "HostConfig": {"MemorySwap": -1, "CpuQuota": 400000, "CpuPeriod": 100000, "pidslimit": 0, "Dns": ["1.1.1.1"]}
    }));
    let v = inspect(&name);
    assert_forced(&v, &s.shared);
    assert_eq!(v["HostConfig"]["CpuPeriod"], json!(0), "CpuPeriod");
    assert_forced_inside(&s, &name);
    // A ulimit named in upper case is the same rlimit for dockerd; the forced one comes last and wins.
    let upper = s.create_raw(json!({
        "Image": BUSYBOX, "Cmd": ["sleep", "300"], "HostConfig": {"Ulimits": [{"Name": "NOFILE", "Soft": 10000, "Hard": 10000}]}
    }));
    assert_eq!(s.ok(&["exec", &upper, "sh", "-c", "ulimit -n"]), "2048\n");
    assert_eq!(audit_refusals(&s.p), 0, "{}", s.p.log_text());
}

#[test]
fn update_cannot_lift_forced_limits() {
    let mut s = setup();
    let name = s.run(&[]);
    for args in [
        &["--memory", "1g", "--memory-swap", "1g"][..],
        &["--memory-swap", "-1"],
        &["--pids-limit", "-1"],
        &["--pids-limit", "1000"],
        &["--cpus", "2"],
        &["--cpu-quota", "400000"],
    ] {
        let mut cmd = vec!["update"];
        cmd.extend_from_slice(args);
        cmd.push(&name);
        let out = docker_output(&s.host(), &cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "docker {} was not refused", cmd.join(" "));
        assert!(
            err.contains("limit set by the policy (")
                && err.contains("is not allowed by policy ci; an administrator can allow it by raising [policy.ci] force."),
            "docker {}: {err}",
            cmd.join(" ")
        );
    }
    let hc = inspect(&name)["HostConfig"].take();
    assert_eq!(
        (&hc["Memory"], &hc["PidsLimit"], &hc["NanoCpus"], &hc["CpuQuota"]),
        (&json!(MEM), &json!(64), &json!(500_000_000), &json!(0))
    );
    assert!(s.p.wait_log("policy=ci", Duration::from_secs(5)), "refusals by ci are audited:\n{}", s.p.log_text());
    assert!(audit_refusals(&s.p) >= 6);

    // Lowering is allowed.
    s.ok(&["update", "--memory", "64m", "--memory-swap", "64m", "--pids-limit", "32", "--cpus", "0.25", &name]);
    let hc = inspect(&name)["HostConfig"].take();
    assert_eq!((&hc["Memory"], &hc["PidsLimit"], &hc["NanoCpus"]), (&json!(64 << 20), &json!(32), &json!(250_000_000)));
}

#[test]
fn exec_gets_forced_env_and_user() {
    let mut s = setup();
    let name = s.run(&[]);
    assert_eq!(s.ok(&["exec", &name, "sh", "-c", "echo $CI $CI_JOB $LANG"]), "true 42 C.UTF-8\n");
    assert_eq!(
        s.ok(&["exec", "-e", "CI=false", "-e", "CI_JOB=0", "-e", "LANG=fr", &name, "sh", "-c", "echo $CI $CI_JOB $LANG"]),
        "true 42 fr\n"
    );
    assert_eq!(s.ok(&["exec", "-u", "0", &name, "id", "-u"]), "1234\n");
    let out = ok_within(
        docker_cmd("docker", &s.host(), &["exec", "-i", &name, "sh", "-c", "cat; echo $CI"]),
        Some(b"in\n".to_vec()),
        LONG,
        "docker exec -i",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "in\ntrue\n");
}

#[test]
fn conservative_still_refuses_first() {
    let s = setup();
    for (args, why) in [
        (&["--privileged"][..], "privileged mode"),
        (&["-v", "/etc:/h"], "bind mount of host path /etc"),
        (&["-v", &format!("{}:/other", s.shared)], "bind mount of host path"),
        (&["--cap-add", "SYS_ADMIN"], "capability"),
    ] {
        let name = unique("inj");
        let mut cmd = vec!["create", "--name", &name];
        cmd.extend_from_slice(args);
        cmd.push(BUSYBOX);
        let out = docker_output(&s.host(), &cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && err.contains("is not allowed by policy strict"), "docker {}: {err}", cmd.join(" "));
        assert!(!docker_output(direct(), &["inspect", &name]).status.success(), "{name} was created");
    }
}
