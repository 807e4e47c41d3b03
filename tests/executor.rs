//! The GitLab custom executor end to end: the runner emulator (`support::runner`, gitlab-runner's
//! side of the protocol) drives `ctproxy executor config|prepare|run|cleanup` against a real
//! `ctproxy serve` with `[jobs]` and the real daemon. Job images are the local test images; jobs
//! use the docker CLI and docker-compose inside their container, through their own socket.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::runner::{self, Driver, Image, Job, JobRun, Outcome};
use support::*;

/// The job namespace prefix of this test process (reapers only touch their own prefix).
fn prefix() -> String {
    format!("e{}", std::process::id())
}

fn config(registry_proxy_extra: &str) -> String {
    let prefix = prefix();
    format!(
        r#"
[listener.main]
address = "unix://{{dir}}/docker.sock"
[policy.conservative]
kind = "conservative"
[namespaces]
shared_images = ["ctproxy-test/*"]
[registry_proxy]
address = "127.0.0.1:0"
{registry_proxy_extra}
[jobs]
control_socket = "{{dir}}/control.sock"
dir = "{{dir}}/jobs"
policies = ["conservative"]
reap_interval_s = 1
grace_s = 2
namespace_prefix = "{prefix}"
"#
    )
}

/// `ctproxy serve` with the job service.
fn host() -> Proxy {
    Proxy::start_with_config(&config(""), "docker.sock")
}

fn control(p: &Proxy) -> PathBuf {
    p.dir().join("control.sock")
}

/// The emulated runner's `[runners.custom]`: every stage is `ctproxy executor --control ... <stage>`.
fn driver_for(control: &Path) -> Driver {
    let exe = Path::new(env!("CARGO_BIN_EXE_ctproxy"));
    let control = control.to_str().expect("utf-8 path");
    let mut d = Driver::same_exec(exe, &["executor", "--control", control]);
    d.retry_interval = Duration::from_millis(200);
    d
}

fn driver(p: &Proxy) -> Driver {
    driver_for(&control(p))
}

/// A job id no other test of this process uses.
fn job_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn ci_job(script: &[&str]) -> Job {
    let mut job = Job::new(job_id(), CI_IMAGE, script);
    job.after_script = vec!["echo after-script-ran".into()];
    job.with_artifacts = true;
    job
}

fn namespace(job: &Job) -> String {
    format!("{}-r{}-{}", prefix(), job.runner_id, job.id)
}

/// Everything on the daemon that belongs to the namespace: containers, networks, volumes (by label)
/// and image tags (under any registry-proxy name).
fn leftovers(ns: &str) -> Vec<String> {
    let label = format!("label=io.ctproxy.namespace={ns}");
    let list = |args: &[&str]| {
        let out = docker_cmd("docker", direct(), args).output().expect("docker");
        String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>()
    };
    let mut found = Vec::new();
    found.extend(list(&["ps", "-aq", "--filter", &label]).into_iter().map(|c| format!("container {c}")));
    found.extend(list(&["network", "ls", "-q", "--filter", &label]).into_iter().map(|n| format!("network {n}")));
    found.extend(list(&["volume", "ls", "-q", "--filter", &label]).into_iter().map(|v| format!("volume {v}")));
    let marker = format!("/{ns}/");
    found.extend(
        list(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).into_iter().filter(|i| i.contains(&marker)).map(|i| format!("image {i}")),
    );
    found
}

/// Cleanup returns once the job's containers are gone; ctproxy removes its networks, volumes and
/// images right after.
fn assert_clean(ns: &str) {
    // A generous bound: under load (five jobs cleaning up at once, other tests on the daemon) the
    // removals take a while; the condition is what is waited for.
    let end = Instant::now() + Duration::from_secs(120);
    let mut left = leftovers(ns);
    while !left.is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(200));
        left = leftovers(ns);
    }
    assert!(left.is_empty(), "namespace {ns} left on the daemon: {left:?}");
}

fn show(run: &JobRun) -> String {
    format!("outcome {:?}\nstages {:?}\n--- job log\n{}\n--- runner log\n{}", run.outcome, run.stages(), run.log, run.runner_log)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_passing_job_runs_every_stage_in_its_container_and_leaves_nothing() {
    let p = host();
    let job = ci_job(&[
        "docker version --format 'server {{.Server.Version}}'",
        "docker run --rm ctproxy-test/busybox echo hello-from-nested",
        "docker ps --format '{{.Names}}'",
        // A nested client that mounts the Docker socket (Ryuk, docker-in-docker clients) gets the job's.
        "docker run --rm -v /var/run/docker.sock:/var/run/docker.sock ctproxy-test/docker-cli docker ps --format 'nested-sees {{.Names}}'",
    ]);
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    let stages = run.stages();
    assert_eq!(
        stages,
        [
            "config",
            "prepare",
            "prepare_script",
            "get_sources",
            "build_script",
            "after_script",
            "upload_artifacts_on_success",
            "cleanup_file_variables",
            "cleanup"
        ],
        "{}",
        show(&run)
    );
    assert!(run.log.contains("hello-from-nested"), "{}", show(&run));
    assert!(run.log.contains("nested-sees ctproxy-build"), "the nested client reached the job's socket: {}", show(&run));
    assert!(run.log.contains("after-script-ran"), "{}", show(&run));
    // The job's own view: its container, nothing of anyone else's.
    assert!(run.log.contains("ctproxy-build"), "{}", show(&run));
    assert!(!run.log.contains("ctp."), "a mangled name reached the job: {}", show(&run));
    assert_eq!(run.job_env.get("CTPROXY_JOB").map(String::as_str), Some(format!("r1-{}", job.id).as_str()));
    assert_clean(&namespace(&job));
}

#[test]
fn a_failing_script_reports_its_exit_code_and_after_script_still_runs() {
    let p = host();
    let mut job = ci_job(&["echo about-to-fail", "exit 42"]);
    job.with_artifacts = true;
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 42 }, "{}", show(&run));
    let stages = run.stages();
    assert!(stages.contains(&"after_script".to_owned()) && stages.contains(&"upload_artifacts_on_failure".to_owned()), "{}", show(&run));
    assert_eq!(stages.last().map(String::as_str), Some("cleanup"));
    assert!(run.log.contains("after-script-ran"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn prepare_without_ctproxy_is_a_system_failure_retried_with_cleanup_between() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = ci_job(&["echo never"]);
    let run = runner::run(&driver_for(&dir.path().join("control.sock")), &job);
    assert!(matches!(run.outcome, Outcome::SystemFailure(_)), "{}", show(&run));
    assert_eq!(
        run.stages(),
        ["config", "prepare", "cleanup", "config", "prepare", "cleanup", "config", "prepare", "cleanup"],
        "{}",
        show(&run)
    );
    assert!(run.log.contains("ctproxy serve is not running"), "{}", show(&run));
    assert!(run.calls_of("prepare").iter().all(|c| c.exit == Some(2)), "{}", show(&run));
}

#[test]
fn a_missing_job_image_is_a_build_failure_that_names_it() {
    let p = host();
    let mut job = ci_job(&["echo never"]);
    job.image = Some(Image { pull_policy: vec!["never".into()], ..Image::new("ctproxy-test-absent/nothing:1") });
    let run = runner::run(&driver(&p), &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    assert_eq!(run.calls_of("prepare").len(), 1, "a build failure is not retried: {}", show(&run));
    assert!(run.log.contains("ctproxy-test-absent/nothing:1"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn cancel_during_build_script_stops_it_then_after_script_and_failure_stages_run() {
    let p = host();
    let mut job = ci_job(&["echo started", "sleep 300", "echo not-reached"]);
    job.after_script =
        vec!["if ps | grep -v grep | grep -q 'sleep 300'; then echo STAGE-STILL-RUNNING; else echo stage-stopped; fi".into()];
    let handle = runner::start(&driver(&p), &job);
    assert!(handle.wait_stage("build_script", Duration::from_secs(60)), "build_script never started");
    // Cancelled once the script is in its `sleep 300` (seen in the job's build container).
    let build = format!("ctp.{}.ctproxy-build", namespace(&job));
    wait_until("the script to reach its sleep", Duration::from_secs(120), || {
        docker_cmd("docker", direct(), &["exec", &build, "ps"])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.contains("sleep 300") && !l.contains("grep")))
    });
    let cancelled = Instant::now();
    handle.cancel();
    let run = handle.join();
    assert_eq!(run.outcome, Outcome::Canceled, "{}", show(&run));
    let build = &run.calls_of("build_script")[0];
    assert!(build.sent_sigterm && !build.sent_sigkill, "stopped on SIGTERM, without SIGKILL: {build:?}");
    assert!(build.duration < Duration::from_secs(60));
    let stages = run.stages();
    let after = stages.iter().position(|s| s == "after_script").expect("after_script ran");
    assert!(
        stages[after..].starts_with(&[
            "after_script".into(),
            "upload_artifacts_on_failure".into(),
            "cleanup_file_variables".into(),
            "cleanup".into()
        ]),
        "{}",
        show(&run)
    );
    let line = |l: &str| run.log.lines().any(|x| x.trim() == l);
    assert!(line("stage-stopped") && !line("STAGE-STILL-RUNNING"), "{}", show(&run));
    assert!(!line("not-reached"), "{}", show(&run));
    assert!(cancelled.elapsed() < Duration::from_secs(90));
    assert_clean(&namespace(&job));
}

#[test]
fn a_job_timeout_ends_the_stage_and_cleans_up() {
    let p = host();
    let mut job = ci_job(&["sleep 300"]);
    job.timeout = Duration::from_secs(8);
    let started = Instant::now();
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Timedout, "{}", show(&run));
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    assert_eq!(run.stages().last().map(String::as_str), Some("cleanup"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn services_are_reached_by_their_aliases_and_image_names() {
    let p = host();
    let serve = |text: &str| {
        vec!["sh".to_owned(), "-c".to_owned(), format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www")]
    };
    let mut job = ci_job(&[
        "for h in db cache; do for i in $(seq 1 50); do wget -qO- http://$h/ && break; sleep 0.2; done; done",
        "ping -c1 ctproxy-test__busybox >/dev/null && echo image-name-resolves",
    ]);
    job.services = vec![
        Image { alias: Some("db".into()), command: Some(serve("answer-from-db")), ..Image::new(BUSYBOX) },
        Image { alias: Some("cache,kv".into()), command: Some(serve("answer-from-cache")), ..Image::new(BUSYBOX) },
    ];
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("answer-from-db") && run.log.contains("answer-from-cache"), "{}", show(&run));
    assert!(run.log.contains("image-name-resolves"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn a_job_builds_an_image_and_runs_it() {
    let p = host();
    let mut job =
        ci_job(&["docker build -t app:latest .", "docker run --rm app:latest", "docker images --format '{{.Repository}}:{{.Tag}}'"]);
    job.get_sources = vec![
        "printf 'FROM ctproxy-test/busybox\\nCOPY greeting /greeting\\nCMD [\"cat\", \"/greeting\"]\\n' > Dockerfile".into(),
        "echo built-and-run-inside-the-job > greeting".into(),
    ];
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("built-and-run-inside-the-job"), "{}", show(&run));
    assert!(run.log.contains("app:latest"), "{}", show(&run));
    assert!(!run.log.contains(&format!("/{}/", namespace(&job))), "a mangled image name reached the job: {}", show(&run));
    assert_clean(&namespace(&job));
}

const COMPOSE_PROJECT: &str = "services:
  web:
    image: ctproxy-test/busybox
    command: [\"sh\", \"-c\", \"mkdir -p /www && echo compose-web-answer > /www/index.html && exec httpd -f -p 80 -h /www\"]
  probe:
    image: ctproxy-test/busybox
    command: [\"sh\", \"-c\", \"until wget -qO- http://web/; do sleep 0.2; done; sleep 300\"]
";

fn compose_sources() -> Vec<String> {
    vec![format!("cat > docker-compose.yml <<'EOF'\nversion: '3'\n{COMPOSE_PROJECT}EOF")]
}

#[test]
fn a_job_runs_a_two_service_compose_project() {
    let p = host();
    let mut job = ci_job(&[
        "docker-compose up -d",
        "docker-compose ps",
        "for i in $(seq 1 50); do docker-compose logs probe | grep -q compose-web-answer && break; sleep 0.2; done",
        "docker-compose logs probe",
        "docker-compose down",
    ]);
    job.get_sources = compose_sources();
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("compose-web-answer"), "{}", show(&run));
    assert!(run.log.contains("example_web_1") || run.log.contains("example-web-1"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn a_busybox_only_image_runs_its_scripts_with_sh() {
    let p = host();
    let mut job = Job::new(job_id(), BUSYBOX, &["test ! -e /bin/bash && echo no-bash-here", "echo \"running in $(pwd)\"", "exit 7"]);
    job.after_script = vec!["echo after-in-busybox".into()];
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::BuildFailure { exit_code: 7 }, "{}", show(&run));
    assert!(run.log.contains("no-bash-here") && run.log.contains("running in /builds/ci/example"), "{}", show(&run));
    assert!(run.log.contains("after-in-busybox"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn five_concurrent_jobs_with_identical_scripts_do_not_see_each_other() {
    let p = host();
    let script = [
        "docker network create backend",
        "docker volume create data",
        "docker build -t app:1 .",
        "docker run -d --name db --network backend -v data:/data app:1 sleep 300",
        "docker run --rm --network backend ctproxy-test/busybox ping -c1 db",
        "echo containers=$(docker ps -aq | wc -l) networks=$(docker network ls -q --filter name=backend | wc -l) volumes=$(docker volume ls -q --filter name=data | wc -l) images=$(docker images -q app | wc -l)",
        "docker-compose up -d && docker-compose ps",
    ];
    let drv = driver(&p);
    let jobs: Vec<Job> = (0..5)
        .map(|_| {
            let mut j = ci_job(&script);
            let mut sources = compose_sources();
            sources.push("printf 'FROM ctproxy-test/busybox\\nRUN echo one > /one\\n' > Dockerfile".into());
            j.get_sources = sources;
            j
        })
        .collect();
    let handles: Vec<_> = jobs.iter().map(|j| runner::start(&drv, j)).collect();
    let runs: Vec<JobRun> = handles.into_iter().map(runner::Handle::join).collect();
    for run in &runs {
        assert_eq!(run.outcome, Outcome::Success, "{}", show(run));
        // ctproxy-build, db, and the two compose services are not yet up when counted: 2 containers.
        assert!(run.log.contains("containers=2 networks=1 volumes=1 images=1"), "{}", show(run));
    }
    for job in &jobs {
        assert_clean(&namespace(job));
    }
}

#[test]
fn a_restarted_ctproxy_gives_the_running_job_its_socket_back() {
    let p = host();
    let config_path = p.dir().join("ctproxy.toml");
    let mut job = ci_job(&[
        "docker run --rm ctproxy-test/busybox echo before-restart",
        "touch /tmp/waiting; while [ ! -e /tmp/restarted ]; do sleep 0.2; done",
        "for i in $(seq 1 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done",
        "docker run --rm ctproxy-test/busybox echo after-restart",
        "docker ps --format '{{.Names}}'",
    ]);
    job.timeout = Duration::from_secs(300);
    let ns = namespace(&job);
    let build = format!("ctp.{ns}.ctproxy-build");
    let handle = runner::start(&driver(&p), &job);
    wait_until("the job to wait for the restart", Duration::from_secs(120), || {
        docker_cmd("docker", direct(), &["exec", &build, "test", "-e", "/tmp/waiting"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    let mut p = p;
    p.signal("KILL");
    p.wait_exit(Duration::from_secs(10));
    let restarted = Proxy::spawn(
        tempfile::tempdir().expect("tempdir"),
        p.dir().join("docker.sock"),
        &["--config", config_path.to_str().expect("utf-8")],
    );
    check(&docker_output(direct(), &["exec", &build, "touch", "/tmp/restarted"]), &["exec", "touch"]);
    let run = handle.join();
    assert_eq!(run.outcome, Outcome::Success, "{}\n--- ctproxy log\n{}", show(&run), restarted.log_text());
    assert!(run.log.contains("before-restart") && run.log.contains("after-restart"), "{}", show(&run));
    assert_clean(&ns);
    drop(restarted);
    drop(p);
}

#[test]
fn a_runner_that_dies_without_cleanup_has_its_job_reaped() {
    let p = Proxy::start_with_config(&config(""), "docker.sock");
    let mut job = ci_job(&[
        "docker volume create keep-me",
        "docker run -d --name held ctproxy-test/busybox sleep 300",
        "touch /tmp/ready; sleep 300",
    ]);
    // Long enough for the job to make its objects under any load (the reaper only acts once it is
    // over: a short one could expire the job while it is still setting up, or before the
    // leftovers are checked below).
    job.timeout = Duration::from_secs(45);
    let ns = namespace(&job);
    let handle = runner::start(&driver(&p), &job);
    let build = format!("ctp.{ns}.ctproxy-build");
    wait_until("the job to create its objects", Duration::from_secs(120), || {
        docker_cmd("docker", direct(), &["exec", &build, "test", "-e", "/tmp/ready"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    handle.abandon();
    let run = handle.join();
    assert_eq!(run.outcome, Outcome::Abandoned);
    assert!(!run.stages().contains(&"cleanup".to_owned()));
    for pgid in run.left_running() {
        runner::kill_group(pgid);
    }
    assert!(!leftovers(&ns).is_empty(), "the job's objects exist until the reaper comes");
    // Deadline: the job's timeout (45 s) plus grace (2 s), then the reaper (every second); the
    // bound only says when to give up.
    wait_until("the reaper to remove the job", Duration::from_secs(300), || leftovers(&ns).is_empty());
    assert!(p.log_text().contains("reaping"), "{}", p.log_text());
}

/// Puts the busybox test image into `registry` (user `ci`) as `image`, and nowhere on the host.
fn push_private(registry: &Registry, image: &str) {
    let cfg = tempfile::tempdir().expect("tempdir");
    let cfg_dir = cfg.path().to_str().expect("utf-8");
    let login = docker_cmd("docker", direct(), &["--config", cfg_dir, "login", "-u", "ci", "--password-stdin", &registry.addr]);
    ok_within(login, Some(b"ci-pw".to_vec()), Duration::from_secs(30), "login");
    check(&docker_output(direct(), &["tag", BUSYBOX, image]), &["tag"]);
    ok_within(docker_cmd("docker", direct(), &["--config", cfg_dir, "push", image]), None, Duration::from_secs(60), "push");
    check(&docker_output(direct(), &["rmi", image]), &["rmi"]);
}

#[test]
fn a_private_image_is_pulled_with_the_jobs_own_credentials_and_never_handed_to_another_job() {
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let image = format!("{}/private/app:1", registry.addr);
    push_private(&registry, &image);

    let p = Proxy::start_with_config(&config(&format!("insecure = [\"{}\"]", registry.addr)), "docker.sock");
    let drv = driver(&p);
    let mut with_creds =
        Job::new(job_id(), &image, &["echo private-image-runs", "touch /tmp/ready; while [ ! -e /tmp/go ]; do sleep 0.2; done"]);
    with_creds.credentials = vec![runner::Credential { url: registry.addr.clone(), username: "ci".into(), password: "ci-pw".into() }];
    let handle = runner::start(&drv, &with_creds);
    let build = format!("ctp.{}.ctproxy-build", namespace(&with_creds));
    wait_until("the job with credentials to run", Duration::from_secs(120), || {
        docker_cmd("docker", direct(), &["exec", &build, "test", "-e", "/tmp/ready"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    // While the first job holds the image, a job without credentials cannot have it.
    let without = Job::new(job_id(), &image, &["echo must-not-run"]);
    let refused = runner::run(&drv, &without);
    assert!(matches!(refused.outcome, Outcome::BuildFailure { .. }), "{}", show(&refused));
    assert!(refused.log.contains(&image), "the failure names the image: {}", show(&refused));
    assert!(!refused.log.lines().any(|l| l.trim() == "must-not-run"), "{}", show(&refused));
    check(&docker_output(direct(), &["exec", &build, "touch", "/tmp/go"]), &["exec"]);
    let run = handle.join();
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("Pulling docker image") && run.log.lines().any(|l| l.trim() == "private-image-runs"), "{}", show(&run));
    // The host never had it under its own name.
    assert!(!docker_output(direct(), &["image", "inspect", &image]).status.success(), "the private image reached the host's own names");
    assert_clean(&namespace(&with_creds));
    assert_clean(&namespace(&without));
}

/// The payload's credentials serve prepare's pulls only: the job's own `docker pull` through its
/// socket carries none of them (it needs its own `docker login`, as with the Docker executor).
#[test]
fn the_jobs_own_pulls_get_none_of_prepares_credentials() {
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let image = format!("{}/private/own-pull:1", registry.addr);
    push_private(&registry, &image);

    let p = Proxy::start_with_config(&config(&format!("insecure = [\"{}\"]", registry.addr)), "docker.sock");
    let pull = format!("docker pull {image} && echo own-pull-worked || echo own-pull-refused");
    let login = format!(
        "echo ci-pw | docker login -u ci --password-stdin {} > /dev/null && docker pull -q {image} && echo pull-after-login",
        registry.addr
    );
    let mut job = Job::new(job_id(), CI_IMAGE, &[&pull, &login]);
    job.credentials = vec![runner::Credential { url: registry.addr.clone(), username: "ci".into(), password: "ci-pw".into() }];
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.lines().any(|l| l.trim() == "own-pull-refused"), "the job's own pull used prepare's credentials: {}", show(&run));
    assert!(run.log.lines().any(|l| l.trim() == "pull-after-login"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

// === Allow-lists, pull policies, credentials and platform (issue 16) ===

/// `ctproxy serve` with `[jobs.executor]` set to `executor` (and the registry proxy's `extra`).
fn host_with_executor(executor: &str, registry_proxy_extra: &str) -> Proxy {
    Proxy::start_with_config(&format!("{}[jobs.executor]\n{executor}\n", config(registry_proxy_extra)), "docker.sock")
}

fn with_service(mut job: Job, image: &str) -> Job {
    job.services.push(Image { command: Some(vec!["sleep".into(), "600".into()]), ..Image::new(image) });
    job
}

#[test]
fn allow_lists_refuse_images_and_services_in_prepare_with_gitlab_runners_wording() {
    let p = host_with_executor(
        "allowed_images = [\"ctproxy-test/ci:*\"]\nallowed_services = [\"ctproxy-test/busybox:*\", \"postgres:1{5,6}\"]",
        "",
    );
    let drv = driver(&p);

    let job = Job::new(job_id(), BUSYBOX, &["echo must-not-run"]);
    let run = runner::run(&drv, &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    let wording = "ERROR: The \"ctproxy-test/busybox:latest\" image is not present on list of allowed images:\n- ctproxy-test/ci:*\n";
    assert!(run.log.contains(wording), "{}", show(&run));
    assert!(run.log.contains("Please check runner's allowed_images configuration"), "{}", show(&run));
    assert!(!run.log.lines().any(|l| l.trim() == "must-not-run"), "{}", show(&run));
    assert_clean(&namespace(&job));

    let job = with_service(ci_job(&["echo must-not-run"]), DOCKER_CLI_IMAGE);
    let run = runner::run(&drv, &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    let wording = "The \"ctproxy-test/docker-cli:latest\" image is not present on list of allowed services:\n- ctproxy-test/busybox:*\n- postgres:1{5,6}\n";
    assert!(run.log.contains(wording), "{}", show(&run));
    assert_clean(&namespace(&job));

    // On both lists: the job runs, with its service.
    let job = with_service(ci_job(&["ping -c1 -W5 ctproxy-test__busybox >/dev/null && echo service-reached"]), BUSYBOX);
    let run = runner::run(&drv, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.lines().any(|l| l.trim() == "service-reached"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn pull_policies_are_the_jobs_within_the_allowed_ones_as_gitlab_runner_computes_them() {
    let p = host_with_executor("pull_policy = [\"if-not-present\"]\nallowed_pull_policies = [\"if-not-present\", \"never\"]", "");
    let drv = driver(&p);

    // The runner's policy: the shared image is used as the host has it.
    let job = ci_job(&["echo default-policy-ran"]);
    let run = runner::run(&drv, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains(&format!("Using effective pull policy of [if-not-present] for container {CI_IMAGE}")), "{}", show(&run));
    assert!(run.log.contains("Using locally found image version due to \"if-not-present\" pull policy"), "{}", show(&run));

    // The job's own `never`, allowed: a shared image the host has is used.
    let mut job = ci_job(&["echo never-ran"]);
    job.image = Some(Image { pull_policy: vec!["never".into()], ..Image::new(CI_IMAGE) });
    let run = runner::run(&drv, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));

    // `never` and a missing image: gitlab-runner's words.
    let mut job = ci_job(&["echo must-not-run"]);
    job.image = Some(Image { pull_policy: vec!["never".into()], ..Image::new("ctproxy-test-absent/nothing:1") });
    let run = runner::run(&drv, &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    assert!(run.log.contains("WARNING: Failed to pull image with policy \"never\""), "{}", show(&run));
    assert!(
        run.log.contains("failed to pull image \"ctproxy-test-absent/nothing:1\" with specified policies [never]: Error response from daemon: No such image"),
        "{}",
        show(&run)
    );
    assert_clean(&namespace(&job));

    // A policy the administrator does not allow, for a service.
    let mut job = ci_job(&["echo must-not-run"]);
    job.services.push(Image { pull_policy: vec!["always".into()], ..Image::new(BUSYBOX) });
    let run = runner::run(&drv, &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    let wording = format!("invalid pull policy for image \"{BUSYBOX}\": pull_policy ([always]) defined in GitLab pipeline config is not one of the allowed_pull_policies ([if-not-present never])");
    assert!(run.log.contains(&wording), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn the_jobs_platform_reaches_the_container_creates() {
    let p = host();
    let drv = driver(&p);
    let native = if cfg!(target_arch = "aarch64") { "linux/arm64" } else { "linux/amd64" };
    let foreign = if cfg!(target_arch = "aarch64") { "linux/amd64" } else { "linux/arm64" };
    let mut job = ci_job(&["echo native-platform-ran"]);
    job.image = Some(Image { platform: Some(native.into()), ..Image::new(CI_IMAGE) });
    let run = runner::run(&drv, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    // gitlab-runner's default policy, `always`, on a shared image: the namespace answers the pull
    // from the administrator's copy, which it never refreshes.
    assert!(run.log.contains(&format!("Using effective pull policy of [always] for container {CI_IMAGE}")), "{}", show(&run));
    assert!(run.log.contains("Image is up to date for ctproxy-test/ci:latest"), "{}", show(&run));
    // The shared image exists for the host's platform only: a create for another one is refused
    // by the daemon, which shows that the platform reached it.
    let mut job = ci_job(&["echo must-not-run"]);
    job.image = Some(Image { platform: Some(foreign.into()), ..Image::new(CI_IMAGE) });
    let run = runner::run(&drv, &job);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    assert!(run.log.contains("platform"), "{}", show(&run));
    assert!(!run.log.lines().any(|l| l.trim() == "must-not-run"), "{}", show(&run));
    assert_clean(&namespace(&job));
}

#[test]
fn always_pulls_with_the_jobs_token_or_docker_auth_config_and_its_platform() {
    let mut by_token = Job::new(job_id(), "", &["echo pulled-with-job-token"]);
    let registry = Registry::start_with_users(&[("gitlab-ci-token", &by_token.token), ("deploy", "deploy-pw")]);
    let image = format!("{}/group/app:1", registry.addr);
    let cfg = tempfile::tempdir().expect("tempdir");
    let cfg_dir = cfg.path().to_str().expect("utf-8");
    let login = docker_cmd("docker", direct(), &["--config", cfg_dir, "login", "-u", "deploy", "--password-stdin", &registry.addr]);
    ok_within(login, Some(b"deploy-pw".to_vec()), Duration::from_secs(30), "login");
    check(&docker_output(direct(), &["tag", BUSYBOX, &image]), &["tag"]);
    ok_within(docker_cmd("docker", direct(), &["--config", cfg_dir, "push", &image]), None, Duration::from_secs(60), "push");
    check(&docker_output(direct(), &["rmi", &image]), &["rmi"]);

    let p = host_with_executor("pull_policy = [\"always\"]", &format!("insecure = [\"{}\"]", registry.addr));
    let drv = driver(&p);
    // CI_JOB_TOKEN for CI_REGISTRY, as GitLab's own registry takes it.
    by_token.image = Some(Image::new(&image));
    by_token.variables.push(("CI_REGISTRY".into(), registry.addr.clone()));
    let run = runner::run(&drv, &by_token);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains(&format!("Pulling docker image {image} ...")), "{}", show(&run));
    assert!(run.log.contains("Authenticating with credentials from CI_JOB_TOKEN for CI_REGISTRY"), "{}", show(&run));
    assert!(run.log.lines().any(|l| l.trim() == "pulled-with-job-token"), "{}", show(&run));
    assert_clean(&namespace(&by_token));

    // DOCKER_AUTH_CONFIG, and a platform the registry does not have: the pull asks for it.
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "deploy:deploy-pw");
    let docker_auth_config = format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, registry.addr);
    let foreign = if cfg!(target_arch = "aarch64") { "linux/amd64" } else { "linux/arm64" };
    let mut by_config = Job::new(job_id(), "", &["echo must-not-run"]);
    by_config.image = Some(Image { platform: Some(foreign.into()), ..Image::new(&image) });
    by_config.variables.push(("DOCKER_AUTH_CONFIG".into(), docker_auth_config.clone()));
    by_config.masked_keys.push("DOCKER_AUTH_CONFIG".into());
    let run = runner::run(&drv, &by_config);
    assert!(matches!(run.outcome, Outcome::BuildFailure { .. }), "{}", show(&run));
    assert!(run.log.contains(&format!("Pulling docker image {image} for platform {foreign} ...")), "{}", show(&run));
    assert!(run.log.contains("Authenticating with credentials from $DOCKER_AUTH_CONFIG"), "{}", show(&run));
    // Both daemons pull a single-platform image whatever platform is asked for, then refuse the
    // create for that platform: the error names it again.
    assert!(run.log.matches(foreign).count() >= 2, "the failure names the platform: {}", show(&run));
    assert!(!run.log.lines().any(|l| l.trim() == "must-not-run"), "{}", show(&run));
    assert_clean(&namespace(&by_config));

    // The same credentials on the host's platform: pulled.
    let mut native = Job::new(job_id(), "", &["echo pulled-with-docker-auth-config"]);
    native.image = Some(Image::new(&image));
    native.variables.push(("DOCKER_AUTH_CONFIG".into(), docker_auth_config));
    let run = runner::run(&drv, &native);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("Authenticating with credentials from $DOCKER_AUTH_CONFIG"), "{}", show(&run));
    assert_clean(&namespace(&native));
}

/// A CI job in the CLI 28 image (buildx and compose v2 plugins) builds with BuildKit, the CLI's
/// default: `docker build`, `docker run` of the result, `docker compose build` and
/// `docker compose up --build`, all in the job's namespace. Docker 28 only.
#[test]
fn a_ci28_job_builds_with_buildkit_and_compose_v2() {
    if !on_docker_28() {
        return;
    }
    let p = host();
    let mut job = Job::new(
        job_id(),
        CI28_IMAGE,
        &[
            "docker build --progress plain -t app:1 .",
            "docker run --rm app:1",
            "docker buildx build --load -t app:2 --build-arg WHO=buildx .",
            "docker run --rm app:2",
            "cd project && docker compose build && docker compose up --build --abort-on-container-exit",
            "docker images --format '{{.Repository}}:{{.Tag}}'",
        ],
    );
    job.get_sources = vec![
        "printf 'FROM ctproxy-test/busybox AS base\\nARG WHO=build\\nRUN echo \"built-by-$WHO\" > /greeting\\nFROM base\\nCMD [\"cat\", \"/greeting\"]\\n' > Dockerfile"
            .into(),
        "mkdir -p project && printf 'FROM ctproxy-test/busybox\\nRUN echo compose-built-answer > /a\\nCMD [\"cat\", \"/a\"]\\n' > project/Dockerfile".into(),
        "printf 'services:\\n  web:\\n    build: .\\n    image: composed:1\\n' > project/compose.yaml".into(),
    ];
    let run = runner::run(&driver(&p), &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    for needle in ["built-by-build", "built-by-buildx", "compose-built-answer", "app:1", "app:2", "composed:1"] {
        assert!(run.log.contains(needle), "{needle} missing: {}", show(&run));
    }
    // No line shows a daemon-side name of the job's images: BuildKit's progress lines
    // (`#6 naming to app:1`) included, as ctproxy rewrites the Status stream into the job's names
    // (tests/buildkit.rs: buildkit_progress_shows_the_jobs_names).
    let marker = format!("/{}/", namespace(&job));
    let leaked: Vec<&str> = run.log.lines().filter(|l| l.contains(&marker) || l.contains("ctproxy-untagged")).collect();
    assert!(leaked.is_empty(), "a mangled image name reached the job: {leaked:?}\n{}", show(&run));
    assert_clean(&namespace(&job));
}
