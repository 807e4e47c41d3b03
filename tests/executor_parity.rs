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

    // A job of yet another project that names the first project in its own variables (which a
    // `.gitlab-ci.yml` can do: they come after GitLab's predefined ones) still gets its own cache:
    // the key is what the server sent in the payload.
    let mut impostor = cache_job(&format!("team/impostor{}", std::process::id()), &["ls -aR /cache", "test ! -e cache/value"]);
    impostor.project_id = 2;
    impostor.variables = vec![
        ("CI_PROJECT_PATH".into(), project.clone()),
        ("CI_PROJECT_ID".into(), "1".into()),
        ("CI_SERVER_HOST".into(), "gitlab.example.com".into()),
    ];
    let run = runner::run(&d, &impostor);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("WARNING: Failed to extract cache"), "{}", show(&run));
    assert!(!run.log.contains(&format!("app{}", std::process::id())), "another project's cache is visible: {}", show(&run));

    let again = runner::run(&d, &cache_job(&project, &["cat cache/value"]));
    assert_eq!(again.outcome, Outcome::Success, "{}", show(&again));
    assert!(again.log.contains("kept-across-jobs"), "the other project removed this one's cache: {}", show(&again));
    assert_eq!(project_dirs(&p).len(), 3, "{:?}", project_dirs(&p));
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

/// The network-pool acceptance of issue 16 ("20 concurrent jobs with two networks each, every job
/// passing, and nothing left behind after cleanup"; the goal, 50 jobs with three networks each, is
/// the same test with `CTPROXY_POOL_JOBS=50 CTPROXY_POOL_NETWORKS=3`, see docs/PERFORMANCE.md).
/// Scale from the environment, the acceptance figures by default.
fn pool_scale() -> (usize, usize) {
    let read = |key: &str, default: usize| std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (read("CTPROXY_POOL_JOBS", 20), read("CTPROXY_POOL_NETWORKS", 2))
}

/// A rendezvous the jobs reach over HTTP from inside their containers (`host.docker.internal`, the
/// gateway of each job's network): `GET /arrive/<job>` records the job and answers 200 once the
/// test has released everyone, 503 before. So every job holds its networks at the same time.
struct Rendezvous {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<(std::collections::BTreeSet<String>, bool)>>,
}

impl Rendezvous {
    fn start() -> Rendezvous {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the rendezvous");
        let port = listener.local_addr().expect("local addr").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new((std::collections::BTreeSet::new(), false)));
        let shared = state.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut head = [0u8; 1024];
                let n = conn.read(&mut head).unwrap_or(0);
                let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_owned();
                let job = line.split_whitespace().nth(1).and_then(|p| p.strip_prefix("/arrive/")).map(str::to_owned);
                let released = {
                    let mut s = shared.lock().expect("rendezvous state");
                    if let Some(job) = job {
                        s.0.insert(job);
                    }
                    s.1
                };
                let (status, body) = if released { ("200 OK", "released\n") } else { ("503 Service Unavailable", "wait\n") };
                let _ = write!(conn, "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            }
        });
        Rendezvous { port, state }
    }

    fn arrived(&self) -> usize {
        self.state.lock().expect("rendezvous state").0.len()
    }

    fn release(&self) {
        self.state.lock().expect("rendezvous state").1 = true;
    }
}

/// Every daemon object whose namespace label starts with `ns_prefix`, and every daemon network with
/// a subnet inside `pool` (whoever made it): what must be gone after the jobs' cleanups.
fn pool_leftovers(ns_prefix: &str, pool: &ipnet::IpNet) -> Vec<String> {
    let sock = direct_socket();
    let ours = |v: &serde_json::Value| {
        v.get("Labels")
            .and_then(|l| l.get("io.ctproxy.namespace"))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|ns| ns.starts_with(ns_prefix))
    };
    let list = |path: &str| match support::jobs::http_json(sock, "GET", path, None) {
        (200, serde_json::Value::Array(items)) => items,
        (200, serde_json::Value::Object(mut o)) => match o.remove("Volumes") {
            Some(serde_json::Value::Array(items)) => items,
            _ => Vec::new(),
        },
        (status, answer) => panic!("GET {path} on the daemon: {status} {answer}"),
    };
    let name = |v: &serde_json::Value, key: &str| v.get(key).map(|n| n.to_string()).unwrap_or_default();
    let mut found = Vec::new();
    found.extend(list("/containers/json?all=1").iter().filter(|c| ours(c)).map(|c| format!("container {}", name(c, "Names"))));
    found.extend(list("/volumes").iter().filter(|v| ours(v)).map(|v| format!("volume {}", name(v, "Name"))));
    for n in list("/networks") {
        let in_pool = support::jobs::network_subnets(&n).iter().any(|s| pool.contains(s) || s.contains(pool));
        if ours(&n) || in_pool {
            found.push(format!("network {} {:?}", name(&n, "Name"), support::jobs::network_subnets(&n)));
        }
    }
    let marker = format!("/{ns_prefix}");
    for image in list("/images/json") {
        let tags = image.get("RepoTags").and_then(serde_json::Value::as_array).cloned().unwrap_or_default();
        found.extend(tags.iter().filter_map(serde_json::Value::as_str).filter(|t| t.contains(&marker)).map(|t| format!("image {t}")));
    }
    found
}

/// Issue 16, "A network pool": concurrent jobs through the runner emulator and the real executor,
/// each creating networks without a subnet and running a container on each, all pass with every
/// network (their default networks included) in a block of its own from the configured pool, all
/// held at the same time (more networks than dockerd's ~31 default pools hold); after the cleanups
/// the daemon holds nothing of theirs and no network in the pool.
#[test]
fn concurrent_jobs_each_with_networks_of_their_own_all_pass_from_the_pool_and_leave_it_free() {
    let (jobs, networks) = pool_scale();
    // A range of this test's own per daemon kind (the daemons share the host's routes).
    let pool: ipnet::IpNet = if on_docker_28() { "10.188.0.0/16" } else { "10.187.0.0/16" }.parse().expect("pool");
    let pool_prefix = pool.network().to_string().trim_end_matches(".0.0").to_owned() + ".";
    let p = JobHost::start_with_namespaces(&format!("network_pool = [\"{pool}\"]\nnetwork_prefix_len = 24"), "").proxy;
    let d = driver(&p, &[]);
    let rendezvous = Rendezvous::start();
    let image = if on_docker_28() { CI28_IMAGE } else { CI_IMAGE };
    // The runner ID sets these jobs' namespaces apart from the other tests' of this process.
    const RUNNER: u64 = 16;
    let ns_prefix = format!("{}-r{RUNNER}-", support::jobs::job_prefix());
    let script = [
        format!(
            "for n in $(seq {networks}); do docker network create net$n > /dev/null && docker run -d --name c$n --network net$n {BUSYBOX} sleep 600 > /dev/null || exit 1; done"
        ),
        // Each network's subnet is a block of the pool, and its container's address lies in it.
        format!(
            "for n in $(seq {networks}); do s=$(docker network inspect -f '{{{{range .IPAM.Config}}}}{{{{.Subnet}}}}{{{{end}}}}' net$n); \
             ip=$(docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' c$n); echo \"net$n $s c$n $ip\"; \
             case \"$s\" in {pool_prefix}*.0/24) ;; *) echo \"net$n: $s is outside the pool\"; exit 1;; esac; \
             case \"$ip\" in \"${{s%.0/24}}\".*) ;; *) echo \"c$n: $ip is outside $s\"; exit 1;; esac; done"
        ),
        "echo job-network $(hostname -i)".to_owned(),
        format!(
            "ok=; for i in $(seq 1200); do if wget -q -O- http://host.docker.internal:{}/arrive/$CI_JOB_ID; then ok=1; break; fi; sleep 0.5; done; test -n \"$ok\"",
            rendezvous.port
        ),
    ];
    let script: Vec<&str> = script.iter().map(String::as_str).collect();
    let all: Vec<Job> = (0..jobs)
        .map(|_| {
            let mut job = Job::new(job_id(), image, &script);
            job.runner_id = RUNNER;
            job
        })
        .collect();
    let started = std::time::Instant::now();
    let handles: Vec<runner::Handle> = all.iter().map(|j| runner::start(&d, j)).collect();

    // Every job holds its networks and containers: the daemon shows them all at once.
    while rendezvous.arrived() < jobs && !handles.iter().any(runner::Handle::is_finished) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let gathered = started.elapsed();
    let held = if rendezvous.arrived() == jobs {
        let (status, answer) = support::jobs::http_json(direct_socket(), "GET", "/networks", None);
        assert_eq!(status, 200, "{answer}");
        let mut subnets: Vec<ipnet::IpNet> = answer
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| {
                n.pointer("/Labels/io.ctproxy.namespace").and_then(serde_json::Value::as_str).is_some_and(|ns| ns.starts_with(&ns_prefix))
            })
            .flat_map(support::jobs::network_subnets)
            .collect();
        let count = subnets.len();
        assert!(subnets.iter().all(|s| pool.contains(s)), "a job network outside {pool}: {subnets:?}");
        subnets.sort();
        subnets.dedup();
        assert_eq!(subnets.len(), count, "two job networks share a block");
        count
    } else {
        0
    };
    rendezvous.release();
    let runs: Vec<JobRun> = handles.into_iter().map(runner::Handle::join).collect();
    let passed = runs.iter().filter(|r| r.outcome == Outcome::Success).count();
    for run in &runs {
        assert_eq!(run.outcome, Outcome::Success, "{passed} of {jobs} jobs passed; this one:\n{}", show(run));
        assert!(run.log.contains(&format!("job-network {pool_prefix}")), "{}", show(run));
    }
    // The jobs' own networks and their default networks, all at once: more than dockerd's default
    // pools hold (about 31) at the acceptance scale.
    assert_eq!(held, jobs * (networks + 1), "networks held at the rendezvous");
    let ran = started.elapsed();

    // Cleanup answers once a job's containers are gone; its networks and volumes follow.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(180);
    let mut left = pool_leftovers(&ns_prefix, &pool);
    while !left.is_empty() && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(500));
        left = pool_leftovers(&ns_prefix, &pool);
    }
    assert!(left.is_empty(), "left on the daemon after the cleanups: {left:?}");
    eprintln!(
        "{jobs} jobs x {networks} networks: {held} networks held at once after {gathered:?}, all passed after {ran:?}, clean after {:?}",
        started.elapsed()
    );
}

/// A job's own variables come after GitLab's and win: a job that names a running job's ID as its
/// `CI_JOB_ID` must still get a key of its own (the payload's `id`), so its prepare neither removes
/// the running job nor takes its key (the running job's next stages would run in its container).
#[test]
fn a_job_that_sets_another_jobs_id_in_its_variables_gets_its_own_key() {
    let p = host("");
    let d = driver(&p, &[]);
    let rendezvous = Rendezvous::start();
    let image = if on_docker_28() { CI28_IMAGE } else { CI_IMAGE };
    let wait = format!(
        "ok=; for i in $(seq 600); do if wget -q -O- http://host.docker.internal:{}/arrive/victim; then ok=1; break; fi; sleep 0.5; done; test -n \"$ok\"",
        rendezvous.port
    );
    let victim = Job::new(job_id(), image, &["echo victims-own > /tmp/mark", &wait, "cat /tmp/mark"]);
    let running = runner::start(&d, &victim);
    while rendezvous.arrived() == 0 && !running.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut impostor = Job::new(job_id(), image, &["test ! -e /tmp/mark", "echo impostor-ran"]);
    impostor.variables = vec![("CI_JOB_ID".into(), victim.id.to_string())];
    let run = runner::run(&d, &impostor);
    rendezvous.release();
    let victim_run = running.join();
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("impostor-ran"), "{}", show(&run));
    assert!(run.log.contains(&format!("Job r1-{}:", impostor.id)), "the impostor's key is its payload's id: {}", show(&run));
    assert_eq!(victim_run.outcome, Outcome::Success, "the running job was disturbed:\n{}", show(&victim_run));
    assert!(victim_run.log.contains("victims-own"), "{}", show(&victim_run));
}

/// Issue 16: "everything runs through `runner-config/config.toml` and `ctproxy-runner.toml`, as
/// gitlab-runner drives them". The shipped files themselves (only the daemon, paths, ports and the
/// runner binary replaced, see `JobHost::start_from_runner_config`; the driver's executables,
/// arguments and timeouts read from `config.toml`): a job with a service that is waited for, its own
/// containers and networks, a cache restored by the next job of the project, artifacts, and nothing
/// of it left on the daemon after cleanup.
#[test]
fn jobs_run_through_the_shipped_runner_config_files() {
    let image = ExposingImage::make();
    let host = JobHost::start_from_runner_config(Some(&standin()));
    let control = host.proxy.dir().join("control.sock");
    let config = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("runner-config/config.toml")).expect("config.toml");
    let exe = Path::new(env!("CARGO_BIN_EXE_ctproxy"));
    let d = Driver::from_config_toml(&config, exe, &[("CTPROXY_CONTROL", control.to_str().expect("utf-8 path"))]);
    assert_eq!(d.builds_dir.as_deref(), Some("/builds"));
    let project = format!("team/shipped{}", std::process::id());
    let ci_image = if on_docker_28() { CI28_IMAGE } else { CI_IMAGE };

    let mut job = cache_job(
        &project,
        &[
            "nc -w 3 web 8080 < /dev/null && echo service-reached",
            &format!("docker network create shipped-net && docker run --rm --network shipped-net {BUSYBOX} echo inner-container-ran"),
            "mkdir -p cache artifacts && echo from-the-first-job > cache/value && echo a > artifacts/a",
        ],
    );
    job.image = Some(Image::new(ci_image));
    let mut svc = Image::new(&image.0);
    svc.alias = Some("web".into());
    svc.command = Some(["httpd", "-f", "-p", "8080"].iter().map(|s| s.to_string()).collect());
    job.services = vec![svc];
    let first = runner::run(&d, &job);
    assert_eq!(first.outcome, Outcome::Success, "{}", show(&first));
    assert!(first.log.contains("Waiting for services to be up and running (timeout 30 seconds)"), "{}", show(&first));
    assert!(!first.log.contains("probably didn't start properly"), "{}", show(&first));
    assert!(first.log.contains("service-reached"), "{}", show(&first));
    assert!(first.log.contains("inner-container-ran"), "{}", show(&first));
    assert!(first.log.contains("Created cache"), "{}", show(&first));
    assert!(first.log.contains("stand-in: uploading artifacts/"), "{}", show(&first));

    let mut next = cache_job(&project, &["cat cache/value"]);
    next.image = Some(Image::new(ci_image));
    let second = runner::run(&d, &next);
    assert_eq!(second.outcome, Outcome::Success, "{}", show(&second));
    assert!(second.log.contains("from-the-first-job"), "{}", show(&second));

    let ns_prefix = format!("{}-", support::jobs::job_prefix());
    let pool: ipnet::IpNet = "10.200.0.0/16".parse().expect("pool");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut left: Vec<String>;
    loop {
        left = pool_leftovers(&ns_prefix, &pool)
            .into_iter()
            .filter(|l| {
                [job.id, next.id].iter().any(|id| {
                    let ns = format!("{ns_prefix}r1-{id}");
                    l.match_indices(&ns).any(|(i, _)| !l[i + ns.len()..].starts_with(|c: char| c.is_ascii_digit()))
                })
            })
            .collect();
        if left.is_empty() || std::time::Instant::now() > end {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert!(left.is_empty(), "left on the daemon after cleanup: {left:?}");
}

/// Serves the files under `root` over plain HTTP/1.0 on all addresses (port 0, read back), for
/// git's dumb HTTP protocol: what a helper container clones from `host.docker.internal`.
fn serve_files(root: PathBuf) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the file server");
    let port = listener.local_addr().expect("local addr").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let mut head = [0u8; 4096];
            let n = conn.read(&mut head).unwrap_or(0);
            let line = String::from_utf8_lossy(&head[..n]).lines().next().unwrap_or("").to_owned();
            let path = line.split_whitespace().nth(1).unwrap_or("/").split('?').next().unwrap_or("/").to_owned();
            let file = (!path.contains("..")).then(|| root.join(path.trim_start_matches('/'))).filter(|f| f.is_file());
            match file.and_then(|f| std::fs::read(f).ok()) {
                Some(body) => {
                    let _ = write!(conn, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = conn.write_all(&body);
                }
                None => {
                    let _ = write!(conn, "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    port
}

/// Issue 16, "Git sources": a job whose image has no git (busybox) gets its sources from a real
/// `git clone` in the helper container (a Debian image with git, as `docs/gitlab-runner.md` asks
/// the administrator to provide), which shares `/builds` with the job container.
#[test]
fn a_job_image_without_git_gets_its_sources_cloned_by_the_helper() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/client-image.sh");
    let out = std::process::Command::new(script)
        .args(["git", "git"])
        .env("CTPROXY_DIRECT_DOCKER_HOST", direct())
        .output()
        .expect("client-image.sh");
    assert!(out.status.success(), "helper image with git: {}", String::from_utf8_lossy(&out.stderr));
    let helper = String::from_utf8_lossy(&out.stdout).trim().to_owned();

    // A repository with one commit, bare, prepared for git's dumb HTTP protocol.
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("work");
    let bare = dir.path().join("repo.git");
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .env("GIT_AUTHOR_NAME", "ci")
            .env("GIT_AUTHOR_EMAIL", "ci@example.com")
            .env("GIT_COMMITTER_NAME", "ci")
            .env("GIT_COMMITTER_EMAIL", "ci@example.com")
            .output()
            .expect("git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let w = work.to_str().expect("utf-8 path");
    git(&["init", "-q", "-b", "main", w]);
    std::fs::write(work.join("source.txt"), "from-the-repository\n").expect("write");
    git(&["-C", w, "add", "source.txt"]);
    git(&["-C", w, "commit", "-q", "-m", "the commit"]);
    git(&["clone", "-q", "--bare", w, bare.to_str().expect("utf-8 path")]);
    git(&["-C", bare.to_str().expect("utf-8 path"), "update-server-info"]);
    let port = serve_files(dir.path().to_path_buf());

    let p = host("");
    let d = driver(&p, &["--helper-image", &helper]);
    let mut job = Job::new(job_id(), BUSYBOX, &["command -v git && exit 7", "cat source.txt"]);
    job.get_sources =
        vec![format!("git clone -q http://host.docker.internal:{port}/repo.git ."), "git log -1 --format='cloned: %s'".into()];
    let run = runner::run(&d, &job);
    assert_eq!(run.outcome, Outcome::Success, "{}", show(&run));
    assert!(run.log.contains("cloned: the commit"), "{}", show(&run));
    assert!(run.log.lines().any(|l| l.trim() == "from-the-repository"), "the job container sees the checkout: {}", show(&run));
}
