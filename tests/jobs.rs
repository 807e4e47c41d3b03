//! Temporary job listeners: created and removed over the root-only control socket, each in a
//! namespace of its own; restored after a crash of ctproxy; reaped past their deadline or when no
//! live job owns their namespace. Driven with the real docker CLI against the real daemon.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The job namespace prefix of this test process: other tests' servers share the daemon, and a
/// reaper only touches its own prefix.
fn prefix() -> String {
    format!("p{}", std::process::id())
}

fn config(dir_marker: &str, extra: &str) -> String {
    let prefix = prefix();
    format!(
        r#"
[listener.main]
address = "unix://{dir_marker}/docker.sock"
[policy.conservative]
kind = "conservative"
[namespaces]
shared_images = ["ctproxy-test/*"]
[jobs]
control_socket = "{dir_marker}/control.sock"
dir = "{dir_marker}/jobs"
policies = ["conservative"]
reap_interval_s = 1
namespace_prefix = "{prefix}"
{extra}
"#
    )
}

/// One control request; returns the status line's code and the JSON body.
fn control(dir: &Path, method: &str, path: &str, body: &str) -> (u16, Value) {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: c\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let raw = raw_request(&dir.join("control.sock"), req.as_bytes(), Duration::from_secs(60));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let json = text.split_once("\r\n\r\n").and_then(|(_, b)| serde_json::from_str(b.trim()).ok()).unwrap_or(Value::Null);
    (status, json)
}

fn job_id() -> String {
    unique("j").replace("ctproxy-test-", "")
}

fn in_namespace(ns: &str) -> Vec<String> {
    let label = format!("label=io.ctproxy.namespace={ns}");
    let mut all = Vec::new();
    for args in [
        vec!["ps", "-aq", "--filter", &label],
        vec!["network", "ls", "-q", "--filter", &label],
        vec!["volume", "ls", "-q", "--filter", &label],
    ] {
        all.extend(docker(direct(), &args).split_whitespace().map(str::to_owned));
    }
    all
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_gets_its_own_socket_and_namespace_and_cleanup_removes_everything() {
    let p = Proxy::start_with_config(&config("{dir}", ""), "control.sock");
    let dir = p.dir().to_path_buf();
    let (a, b) = (job_id(), job_id());
    let (status, job) = control(&dir, "PUT", &format!("/jobs/{a}"), r#"{"timeout_s": 600}"#);
    assert_eq!(status, 200, "{job}");
    // Idempotent: prepare may run three times.
    let (status, again) = control(&dir, "PUT", &format!("/jobs/{a}"), "");
    assert_eq!((status, &again["socket"]), (200, &job["socket"]));
    control(&dir, "PUT", &format!("/jobs/{b}"), "");
    let host = |id: &str| format!("unix://{}", dir.join("jobs").join(id).join("sock").join("docker.sock").display());
    // Both jobs use the same names, without seeing each other.
    for id in [&a, &b] {
        docker(&host(id), &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
        docker(&host(id), &["network", "create", "backend"]);
        docker(&host(id), &["volume", "create", "data"]);
        docker(&host(id), &["tag", BUSYBOX, "built:1"]);
        assert_eq!(docker(&host(id), &["ps", "-a", "--format", "{{.Names}}"]).trim(), "db");
    }
    // The conservative policy of [jobs] applies to job sockets.
    let out = docker_output(&host(&a), &["run", "--rm", "--privileged", BUSYBOX, "true"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("privileged"));
    let (status, removed) = control(&dir, "DELETE", &format!("/jobs/{a}"), "");
    assert_eq!(status, 200);
    assert_eq!(removed["removed"]["containers"], 1, "{removed}");
    assert!(in_namespace(&format!("{}-{a}", prefix())).is_empty(), "job {a} left things behind");
    assert!(!docker(direct(), &["images", "--format", "{{.Repository}}"]).contains(&format!("/{}-{a}/", prefix())));
    assert!(!dir.join("jobs").join(&a).exists(), "the job's socket directory is removed");
    // Removing again is fine (cleanup is idempotent); the other job is untouched.
    assert_eq!(control(&dir, "DELETE", &format!("/jobs/{a}"), "").0, 200);
    assert_eq!(docker(&host(&b), &["ps", "-a", "--format", "{{.Names}}"]).trim(), "db");
    control(&dir, "DELETE", &format!("/jobs/{b}"), "");
    assert!(in_namespace(&format!("{}-{b}", prefix())).is_empty());
    assert_eq!(control(&dir, "PUT", "/jobs/Bad_Id", "").0, 400);
}

#[test]
fn jobs_survive_a_crash_of_ctproxy_and_dead_ones_are_reaped() {
    let state = tempfile::tempdir().expect("tempdir");
    let state_dir: PathBuf = state.path().to_path_buf();
    let cfg = config(&state_dir.display().to_string(), "grace_s = 0");
    let cfg_path = state_dir.join("ctproxy.toml");
    std::fs::write(&cfg_path, with_upstream(&cfg)).expect("config");
    let start = || {
        Proxy::spawn(
            tempfile::tempdir().expect("tempdir"),
            state_dir.join("control.sock"),
            &["--config", cfg_path.to_str().expect("utf-8")],
        )
    };
    let (live, short, orphan) = (job_id(), job_id(), job_id());
    let mut p = start();
    control(&state_dir, "PUT", &format!("/jobs/{live}"), r#"{"timeout_s": 600}"#);
    control(&state_dir, "PUT", &format!("/jobs/{short}"), r#"{"timeout_s": 3}"#);
    control(&state_dir, "PUT", &format!("/jobs/{orphan}"), r#"{"timeout_s": 600}"#);
    let host = |id: &str| format!("unix://{}", state_dir.join("jobs").join(id).join("sock").join("docker.sock").display());
    for id in [&live, &short, &orphan] {
        docker(&host(id), &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
    }
    // A crash: no cleanup of anything. The orphan's record is lost with it.
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10));
    std::fs::remove_dir_all(state_dir.join("jobs").join(&orphan)).expect("remove record");
    let _p = start();
    // The live job's socket works again, with its namespace intact.
    wait_until("the live job's socket", Duration::from_secs(10), || {
        state_dir.join("jobs").join(&live).join("sock").join("docker.sock").exists()
    });
    assert_eq!(docker(&host(&live), &["ps", "--format", "{{.Names}}"]).trim(), "db");
    // The orphan (no record) and the expired job are reaped.
    wait_until("the orphaned namespace reaped", Duration::from_secs(30), || in_namespace(&format!("{}-{orphan}", prefix())).is_empty());
    wait_until("the expired job reaped", Duration::from_secs(30), || in_namespace(&format!("{}-{short}", prefix())).is_empty());
    assert!(!in_namespace(&format!("{}-{live}", prefix())).is_empty(), "the live job must not be reaped");
    control(&state_dir, "DELETE", &format!("/jobs/{live}"), "");
    assert!(in_namespace(&format!("{}-{live}", prefix())).is_empty());
}

#[test]
fn the_job_command_talks_to_the_control_socket_and_says_when_ctproxy_is_not_running() {
    let p = Proxy::start_with_config(&config("{dir}", ""), "control.sock");
    let control = p.dir().join("control.sock");
    let id = job_id();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .arg("job")
            .arg("--control")
            .arg(&control)
            .args(args)
            .output()
            .expect("ctproxy job")
    };
    let out = run(&["create", &id, "--timeout-s", "600"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job: Value = serde_json::from_slice(&out.stdout).expect("job JSON");
    assert_eq!(job["namespace"], format!("{}-{id}", prefix()));
    let list: Value = serde_json::from_slice(&run(&["list"]).stdout).expect("list JSON");
    assert!(list.as_array().is_some_and(|l| l.iter().any(|j| j["id"] == id.as_str())));
    assert!(run(&["remove", &id]).status.success());
    drop(p);
    let out = run(&["create", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ctproxy serve is not running"));
}

#[test]
fn executor_config_prints_one_json_object_and_cleanup_removes_the_job() {
    let p = Proxy::start_with_config(&config("{dir}", ""), "control.sock");
    let control_sock = p.dir().join("control.sock");
    let job = format!("{}", std::process::id());
    let stage = |stage: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .args(["executor", "--control"])
            .arg(&control_sock)
            .arg(stage)
            .env("CUSTOM_ENV_CI_JOB_ID", &job)
            .env("CUSTOM_ENV_CI_RUNNER_ID", "9")
            .env("SYSTEM_FAILURE_EXIT_CODE", "2")
            .output()
            .expect("ctproxy executor")
    };
    let out = stage("config");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("exactly one JSON value on stdout");
    assert_eq!(v["job_env"]["CTPROXY_JOB"], format!("r9-{job}"));
    let key = format!("r9-{job}");
    control(p.dir(), "PUT", &format!("/jobs/{key}"), "");
    let host = format!("unix://{}", p.dir().join("jobs").join(&key).join("sock").join("docker.sock").display());
    docker(&host, &["run", "-d", "--name", "svc", BUSYBOX, "sleep", "300"]);
    let out = stage("cleanup");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Containers are gone when cleanup answers; the job's networks (its default one) right after.
    wait_until("the job's namespace to be empty", Duration::from_secs(30), || in_namespace(&format!("{}-{key}", prefix())).is_empty());
    // Again (cleanup is idempotent), and with ctproxy gone: a system failure, said plainly.
    assert!(stage("cleanup").status.success());
    drop(p);
    let out = stage("cleanup");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}
