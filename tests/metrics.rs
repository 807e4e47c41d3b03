//! The server-wide metrics on `/metrics`: a real `ctproxy serve` with the job service and a
//! `[metrics]` listener, a job driven by the runner emulator through `ctproxy executor`, and the
//! text scraped over HTTP: names, types, and that the values moved.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use support::jobs::JobHost;
use support::runner::{self, Driver, Job, Outcome};
use support::*;

/// `GET /metrics` over plain HTTP; the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// The value of the sample `series` (name with labels, exactly as rendered).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

fn driver(control: &Path) -> Driver {
    let exe = Path::new(env!("CARGO_BIN_EXE_ctproxy"));
    let mut d = Driver::same_exec(exe, &["executor", "--control", control.to_str().expect("utf-8 path")]);
    d.retry_interval = Duration::from_millis(200);
    d
}

#[test]
fn metrics_count_jobs_stages_cleanups_refusals_and_job_socket_requests() {
    let host = JobHost::start_with("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let port = host.proxy.logged_addr("metrics listening").port();

    let before = scrape(port);
    for (name, kind) in [
        ("ctproxy_jobs_running", "gauge"),
        ("ctproxy_executor_stage_duration_seconds", "histogram"),
        ("ctproxy_job_cleanup_removed_total", "counter"),
        ("ctproxy_job_cleanups_total", "counter"),
        ("ctproxy_refusals_total", "counter"),
        ("ctproxy_job_socket_requests_total", "counter"),
    ] {
        assert!(before.contains(&format!("# TYPE {name} {kind}\n")), "no {kind} {name} in\n{before}");
    }
    assert_eq!(value(&before, "ctproxy_jobs_running"), 0.0);

    // A live job is counted while it lives.
    let live = host.job();
    assert_eq!(value(&scrape(port), "ctproxy_jobs_running"), 1.0);
    live.remove();
    assert_eq!(value(&scrape(port), "ctproxy_jobs_running"), 0.0);

    let id = std::process::id() as u64 * 1000 + 1;
    let job = Job::new(
        id,
        CI_IMAGE,
        &[
            "docker ps --format '{{.Names}}'",
            "docker run --rm ctproxy-test/busybox echo nested",
            // Left for cleanup to remove.
            "docker run -d ctproxy-test/busybox sleep 600",
            "docker volume create left-for-cleanup",
            // Refused by the conservative policy; the job goes on.
            "docker run --rm --privileged ctproxy-test/busybox true || echo privileged-refused",
        ],
    );
    let run = runner::run(&driver(&host.proxy.dir().join("control.sock")), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}\n{}", run.log, run.runner_log);
    assert!(run.log.contains("privileged-refused"), "{}", run.log);

    // Cleanup's background part (networks, volumes) counts the cleanup when it is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let t = scrape(port);
        let cleanups =
            value(&t, "ctproxy_job_cleanups_total{result=\"complete\"}") + value(&t, "ctproxy_job_cleanups_total{result=\"incomplete\"}");
        let removed = value(&t, "ctproxy_job_cleanup_removed_total{kind=\"volume\"}");
        if cleanups >= 2.0 && removed >= 1.0 {
            break t;
        }
        assert!(Instant::now() < deadline, "the job's cleanup was never counted:\n{t}\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(value(&after, "ctproxy_jobs_running"), 0.0);
    for stage in ["prepare", "run", "cleanup"] {
        let n = value(&after, &format!("ctproxy_executor_stage_duration_seconds_count{{stage=\"{stage}\"}}"));
        assert!(n >= 1.0, "{stage} not reported:\n{after}");
        let inf = value(&after, &format!("ctproxy_executor_stage_duration_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}"));
        assert_eq!(n, inf, "{after}");
    }
    // What the job left running and its volume.
    assert!(value(&after, "ctproxy_job_cleanup_removed_total{kind=\"container\"}") >= 1.0, "{after}");
    assert!(value(&after, "ctproxy_job_cleanup_removed_total{kind=\"volume\"}") >= 1.0, "{after}");
    assert!(value(&after, "ctproxy_refusals_total{policy=\"conservative\",status=\"403\"}") >= 1.0, "{after}");
    assert!(value(&after, "ctproxy_job_socket_requests_total") >= 3.0, "{after}");
}

#[test]
fn a_stage_report_that_makes_no_sense_is_refused() {
    let host = JobHost::start();
    let control = host.proxy.dir().join("control.sock");
    for body in [r#"{"stage":"lunch","seconds":1}"#, r#"{"stage":"run","seconds":-1}"#, "not json"] {
        let (status, v) = jobs::control_request(&control, "POST", "/jobs/x1/stages", Some(body));
        assert_eq!(status, 400, "{body}: {v}");
    }
    let (status, v) = jobs::control_request(&control, "POST", "/jobs/x1/stages", Some(r#"{"stage":"run","seconds":0.5}"#));
    assert_eq!(status, 200, "{v}");
}

/// A cleanup that finds objects the daemon will not remove counts them as left, by kind, and the
/// cleanup as incomplete (here: a job's volume that a container outside the job still uses).
#[test]
fn a_cleanup_that_leaves_objects_counts_them_by_kind() {
    let host = JobHost::start_with("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    let port = host.proxy.logged_addr("metrics listening").port();
    let job = host.job();
    let out = docker_cmd("docker", &job.host, &["volume", "create", "held"]).output().expect("docker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let label = format!("label=io.ctproxy.namespace={}", job.namespace);
    let out = docker_cmd("docker", direct(), &["volume", "ls", "-q", "--filter", &label]).output().expect("docker");
    let volume = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!volume.is_empty() && !volume.contains('\n'), "the job's volume on the daemon: {volume:?}");
    // An administrator's container on the daemon's own socket holds it.
    let holder = unique("holder");
    let out = docker_cmd("docker", direct(), &["create", "--name", &holder, "-v", &format!("{volume}:/v"), BUSYBOX, "true"])
        .output()
        .expect("docker");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let before = scrape(port);
    job.remove();
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let t = scrape(port);
        if value(&t, "ctproxy_job_cleanups_total{result=\"incomplete\"}")
            > value(&before, "ctproxy_job_cleanups_total{result=\"incomplete\"}")
        {
            break t;
        }
        assert!(Instant::now() < deadline, "the incomplete cleanup was never counted:\n{t}\n{}", host.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = docker_cmd("docker", direct(), &["rm", "-f", &holder]).output();
    let _ = docker_cmd("docker", direct(), &["volume", "rm", &volume]).output();
    assert_eq!(value(&after, "ctproxy_job_cleanup_left_total{kind=\"volume\"}"), 1.0, "{after}");
    assert_eq!(value(&after, "ctproxy_job_cleanup_left_total{kind=\"container\"}"), 0.0, "{after}");
}
