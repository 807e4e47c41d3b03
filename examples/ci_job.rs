//! The README's example CI job: plays gitlab-runner's side of the custom-executor protocol (the
//! emulator the tests use, `tests/support/runner.rs`) for one job, through the real stages
//! `ctproxy executor config|prepare|run|cleanup` of a running `ctproxy serve`, and prints the job log.
//!
//!   ci_job [--ctproxy PATH] [--control PATH]
//!
//! The job builds an image and runs it, starts a two-service docker-compose project, talks to a
//! service by its alias, and lists what it sees of the daemon: only its own objects.

#[allow(dead_code)]
#[path = "../tests/support/runner.rs"]
mod runner;

use std::path::PathBuf;
use std::process::ExitCode;

use runner::{Driver, Image, Job, Outcome};

const DOCKERFILE: &str = "FROM ctproxy-test/busybox\nCOPY greeting /greeting\nCMD [\"cat\", \"/greeting\"]\n";

const COMPOSE: &str = "version: '3'
services:
  web:
    image: ctproxy-test/busybox
    command: [\"sh\", \"-c\", \"mkdir -p /www && echo hello from the compose web service > /www/index.html && exec httpd -f -p 80 -h /www\"]
  probe:
    image: ctproxy-test/busybox
    command: [\"sh\", \"-c\", \"until wget -qO- http://web/; do sleep 0.2; done; sleep 300\"]
";

fn main() -> ExitCode {
    let mut ctproxy = PathBuf::from("target/release/ctproxy");
    let mut control = PathBuf::from("/run/ctproxy/control.sock");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--ctproxy", Some(v)) => ctproxy = PathBuf::from(v),
            ("--control", Some(v)) => control = PathBuf::from(v),
            _ => {
                eprintln!("usage: ci_job [--ctproxy PATH] [--control PATH]");
                return ExitCode::from(2);
            }
        }
    }
    // gitlab-runner starts the stages in the job's temporary directory: the path must be absolute.
    let ctproxy = std::fs::canonicalize(&ctproxy).unwrap_or(ctproxy);
    let control = control.display().to_string();
    let mut driver = Driver::same_exec(&ctproxy, &["executor", "--control", &control]);
    driver.shell = "bash".into();

    let mut job = Job::new(
        std::process::id().into(),
        "ctproxy-test/ci:latest",
        &[
            "docker build -t hello:latest .",
            "docker run --rm hello:latest",
            "docker-compose up -d",
            "for i in $(seq 1 50); do docker-compose logs probe | grep -q 'compose web' && break; sleep 0.2; done",
            "docker-compose logs probe",
            "wget -qO- http://db/",
            "docker ps --format '{{.Names}}\\t{{.Image}}'",
            "docker images --format '{{.Repository}}:{{.Tag}}'",
            "docker network ls --format '{{.Name}}'",
            "docker-compose down",
            // The transparent cache (when ctproxy runs one): package hosts lead to it, its CA is trusted.
            "grep -m1 deb.debian.org /etc/hosts || echo 'no cache configured'",
            "echo \"SSL_CERT_FILE=${SSL_CERT_FILE:-unset}\"",
        ],
    );
    job.get_sources = vec![
        format!("cat > Dockerfile <<'EOF'\n{DOCKERFILE}EOF"),
        "echo 'hello from an image built inside the job' > greeting".into(),
        format!("cat > docker-compose.yml <<'EOF'\n{COMPOSE}EOF"),
    ];
    let serve = "mkdir -p /www && echo hello from the db service > /www/index.html && exec httpd -f -p 80 -h /www";
    job.services = vec![Image {
        alias: Some("db".into()),
        command: Some(vec!["sh".into(), "-c".into(), serve.into()]),
        ..Image::new("ctproxy-test/busybox:latest")
    }];
    job.after_script = vec!["echo \"after_script: job status $CI_JOB_STATUS\"".into()];

    let run = runner::run(&driver, &job);
    println!("{}", run.log);
    println!("--- stages: {}", run.stages().join(" → "));
    println!("--- cleanup (runner log): {}", run.runner_log.trim());
    match run.outcome {
        Outcome::Success => ExitCode::SUCCESS,
        other => {
            eprintln!("job outcome: {other:?}");
            ExitCode::FAILURE
        }
    }
}
