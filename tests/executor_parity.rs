//! What a runner moved from the Docker executor keeps (issue 16), through the runner emulator and
//! the real `ctproxy executor` stages against a real `ctproxy serve` and daemon: the host's
//! gitlab-runner mounted read-only for the cache and artifact stages, the local cache kept per
//! project across jobs (and evicted least recently used first), and services waited for.
//!
//! gitlab-runner is not installable here: `tests/support/gitlab-runner-standin` (a POSIX sh script
//! with tar for zip) stands in for the host's binary; ctproxy mounts it as it mounts the real one,
//! and the emulator's scripts call it as gitlab-runner's do.

mod support;

use std::path::{Path, PathBuf};

use support::jobs::JobHost;
use support::runner::{self, Driver, Image, Job, JobRun, Outcome};
use support::*;

fn standin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/gitlab-runner-standin")
}

/// `ctproxy serve` with the job service (the support's job host); `jobs_extra` goes into `[jobs]`.
fn host(jobs_extra: &str) -> Proxy {
    JobHost::start_with(&format!("project_cache_dir = \"{{dir}}/project-cache\"\n{jobs_extra}")).proxy
}

fn with_standin(extra: &str) -> Proxy {
    host(&format!("runner_binary = {:?}\n{extra}", standin().display().to_string()))
}

fn driver(p: &Proxy, extra_args: &[&str]) -> Driver {
    let exe = Path::new(env!("CARGO_BIN_EXE_ctproxy"));
    let control = p.dir().join("control.sock");
    let mut args = vec!["executor", "--control", control.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra_args);
    let mut d = Driver::same_exec(exe, &args);
    d.retry_interval = std::time::Duration::from_millis(200);
    d
}

fn job_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn cache_job(project: &str, script: &[&str]) -> Job {
    let mut job = Job::new(job_id(), BUSYBOX, script);
    job.project_path = project.into();
    job.with_cache = true;
    job.with_artifacts = true;
    job
}

fn show(run: &JobRun) -> String {
    format!("outcome {:?}\nstages {:?}\n--- job log\n{}\n--- runner log\n{}", run.outcome, run.stages(), run.log, run.runner_log)
}

/// The project directories of the server's local cache.
fn project_dirs(p: &Proxy) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(p.dir().join("project-cache"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn the_cache_persists_per_project_through_the_hosts_runner_binary() {
    let p = with_standin("");
    let d = driver(&p, &[]);
    let project = format!("team/app{}", std::process::id());

    let first = runner::run(&d, &cache_job(&project, &["mkdir -p cache artifacts", "echo kept-across-jobs > cache/value"]));
    assert_eq!(first.outcome, Outcome::Success, "{}", show(&first));
    assert!(first.log.contains("Created cache"), "{}", show(&first));
    assert!(first.log.contains("stand-in: uploading artifacts/"), "{}", show(&first));
    assert!(!first.log.contains("WARNING: no gitlab-runner binary"), "{}", show(&first));

    // Same project: the archive of the first job is restored. The binary is read-only.
    let second = runner::run(
        &d,
        &cache_job(&project, &["cat cache/value", "if echo x >> /usr/local/bin/gitlab-runner; then echo binary-writable; exit 9; fi"]),
    );
    assert_eq!(second.outcome, Outcome::Success, "{}", show(&second));
    assert!(second.log.contains("Successfully extracted cache"), "{}", show(&second));
    assert!(second.log.contains("kept-across-jobs"), "{}", show(&second));

    // Another project sees nothing of it, and what it removes is its own.
    let other = runner::run(
        &d,
        &cache_job(
            &format!("team/other{}", std::process::id()),
            &["ls -aR /cache", "test ! -e cache/value", "rm -rf /cache/* /cache/.[!.]*"],
        ),
    );
    assert_eq!(other.outcome, Outcome::Success, "{}", show(&other));
    assert!(other.log.contains("WARNING: Failed to extract cache"), "{}", show(&other));
    assert!(!other.log.contains(&format!("app{}", std::process::id())), "another project's cache is visible: {}", show(&other));

    let again = runner::run(&d, &cache_job(&project, &["cat cache/value"]));
    assert_eq!(again.outcome, Outcome::Success, "{}", show(&again));
    assert!(again.log.contains("kept-across-jobs"), "the other project removed this one's cache: {}", show(&again));
    assert_eq!(project_dirs(&p).len(), 2, "{:?}", project_dirs(&p));
}

#[test]
fn without_a_runner_binary_prepare_warns_once_and_the_job_still_passes() {
    let p = host("runner_binary = \"/nonexistent/gitlab-runner\"");
    let run = runner::run(&driver(&p, &[]), &cache_job("team/nobinary", &["mkdir -p cache", "echo x > cache/x"]));
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert_eq!(run.log.matches("WARNING: no gitlab-runner binary on this host").count(), 1, "{}", show(&run));
    assert!(run.log.contains("Missing gitlab-runner. Creating cache is disabled."), "{}", show(&run));
    assert!(run.log.contains("Missing gitlab-runner. Uploading artifacts is disabled."), "{}", show(&run));
}

#[test]
fn the_least_recently_used_project_cache_goes_when_over_the_limit() {
    let p = with_standin("project_cache_max_bytes = \"300k\"");
    let d = driver(&p, &[]);
    let fill = ["mkdir -p cache", "head -c 204800 /dev/urandom > cache/blob"];
    let old = runner::run(&d, &cache_job("team/old", &fill));
    assert_eq!(old.outcome, Outcome::Success, "{}", show(&old));
    assert_eq!(project_dirs(&p).len(), 1);
    let new = runner::run(&d, &cache_job("team/new", &fill));
    assert_eq!(new.outcome, Outcome::Success, "{}", show(&new));
    let dirs = project_dirs(&p);
    assert!(dirs.len() == 1 && dirs[0].contains("team-new"), "the old project should be gone: {dirs:?}");
}

/// An image that exposes port 8080 (what the wait reads), made from the busybox test image.
struct ExposingImage(String);

impl ExposingImage {
    fn make() -> ExposingImage {
        let name = format!("ctproxy-test/exposes-8080:p{}", std::process::id());
        let container = format!("ctproxy-parity-expose-{}", std::process::id());
        let run = |args: &[&str]| {
            let out = docker_cmd("docker", direct(), args).output().expect("docker");
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&["create", "--name", &container, BUSYBOX, "true"]);
        run(&["commit", "--change", "EXPOSE 8080", &container, &name]);
        run(&["rm", &container]);
        ExposingImage(name)
    }
}

impl Drop for ExposingImage {
    fn drop(&mut self) {
        let _ = docker_cmd("docker", direct(), &["rmi", &self.0]).output();
    }
}

fn service_job(image: &str, command: &[&str]) -> Job {
    let mut job = Job::new(job_id(), BUSYBOX, &["echo build-started"]);
    let mut svc = Image::new(image);
    svc.alias = Some("web".into());
    svc.command = Some(command.iter().map(|s| s.to_string()).collect());
    job.services = vec![svc];
    job
}

#[test]
fn services_are_waited_for_and_a_late_one_gets_the_runners_warning() {
    let image = ExposingImage::make();
    let p = host("");

    let ready = runner::run(&driver(&p, &[]), &service_job(&image.0, &["httpd", "-f", "-p", "8080"]));
    assert_eq!(ready.outcome, Outcome::Success, "{}", show(&ready));
    assert!(ready.log.contains("Waiting for services to be up and running (timeout 30 seconds)"), "{}", show(&ready));
    assert!(!ready.log.contains("probably didn't start properly"), "{}", show(&ready));

    let late = runner::run(&driver(&p, &["--wait-for-services-timeout", "2"]), &service_job(&image.0, &["sleep", "600"]));
    assert_eq!(late.outcome, Outcome::Success, "the job goes on: {}", show(&late));
    assert!(late.log.contains("*** WARNING: Service ctproxy-service-0 probably didn't start properly."), "{}", show(&late));
    assert!(late.log.contains("8080/tcp"), "{}", show(&late));
    assert!(late.log.contains("build-started"), "{}", show(&late));

    let off = runner::run(&driver(&p, &["--wait-for-services-timeout", "-1"]), &service_job(&image.0, &["sleep", "600"]));
    assert_eq!(off.outcome, Outcome::Success, "{}", show(&off));
    assert!(!off.log.contains("Waiting for services"), "{}", show(&off));
}

#[test]
fn with_a_helper_image_sources_and_cache_stages_run_there_sharing_builds_and_cache() {
    let p = with_standin("");
    // The helper image has a docker CLI the job image lacks: where each stage ran is visible.
    let d = driver(&p, &["--helper-image", DOCKER_CLI_IMAGE]);
    let project = format!("team/helper{}", std::process::id());
    let mut job =
        cache_job(&project, &["command -v docker && exit 7", "cat fetched-by-helper", "mkdir -p cache", "echo via-helper > cache/v"]);
    job.get_sources = vec!["command -v docker".into(), "echo from-get-sources > fetched-by-helper".into()];
    let run = runner::run(&d, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("from-get-sources"), "the job container sees what the helper wrote in /builds: {}", show(&run));
    assert!(run.log.contains("Created cache"), "{}", show(&run));

    let mut next = cache_job(&project, &["cat cache/v"]);
    next.get_sources = vec!["command -v docker".into()];
    let run = runner::run(&d, &next);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("via-helper") && run.log.contains("Successfully extracted cache"), "{}", show(&run));
}

/// The job image with testcontainers-python 4.8.2 and the Ryuk image it starts, built once per
/// daemon (see the script).
fn testcontainers_image() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/testcontainers-image.sh");
    let out = std::process::Command::new(script).env("CTPROXY_DIRECT_DOCKER_HOST", direct()).output().expect("testcontainers-image.sh");
    assert!(out.status.success(), "testcontainers images: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// What the daemon still holds of the namespace `ns`, its default network included.
fn namespace_leftovers(ns: &str) -> Vec<String> {
    let label = format!("label=io.ctproxy.namespace={ns}");
    let mut found = Vec::new();
    for args in [
        vec!["ps", "-a", "--format", "container {{.Names}}", "--filter", &label],
        vec!["network", "ls", "--format", "network {{.Name}}", "--filter", &label],
        vec!["volume", "ls", "--format", "volume {{.Name}}", "--filter", &label],
    ] {
        let out = docker_cmd("docker", direct(), &args).output().expect("docker");
        found.extend(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned));
    }
    found
}

/// Testcontainers with its defaults (issue 16): the job's Python test sets nothing, starts a
/// container that publishes a port and reaches it where the library says; Ryuk starts through the
/// socket redirect, and removes what the session left once the session's process ends.
#[test]
fn testcontainers_works_with_its_defaults_and_ryuk_reaps_the_session() {
    let image = testcontainers_image();
    let p = JobHost::start_sharing(&["testcontainers/ryuk"], "").proxy;
    let program = include_str!("python/testcontainers_job.py");
    let job = Job::new(
        job_id(),
        &image,
        &[
            &format!("cat > tc_job.py <<'PYTHON'\n{program}PYTHON"),
            "python3 tc_job.py run",
            "python3 tc_job.py reaped \"$(cat tc-session)\"",
        ],
    );
    let run = runner::run(&driver(&p, &[]), &job);
    eprintln!("{}", show(&run));
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    // The job set nothing: what the library read is the executor's.
    assert!(run.log.contains("settings: ['TESTCONTAINERS_HOST_OVERRIDE']"), "{}", show(&run));
    assert!(run.log.contains("testcontainers picked host.docker.internal:"), "{}", show(&run));
    assert!(run.log.contains("answer: served-by-the-sibling"), "{}", show(&run));
    assert!(run.log.contains("testcontainers-run-passed") && run.log.contains("ryuk-reaped-the-session"), "{}", show(&run));

    let ns = format!("{}-r{}-{}", support::jobs::job_prefix(), job.runner_id, job.id);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut left = namespace_leftovers(&ns);
    while !left.is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(200));
        left = namespace_leftovers(&ns);
    }
    assert!(left.is_empty(), "namespace {ns} left on the daemon: {left:?}");
}
