//! `allowed_images` of the `conservative` policy: a CI job's own `docker pull` / `docker run` /
//! `docker create` through its socket are held to the administrator's image list (gitlab-runner's
//! glob syntax), refused with a 403 that names the image, the policy and the setting, and the
//! daemon sees nothing of a refused call.

mod support;

use support::jobs::*;
use support::*;

fn host() -> JobHost {
    // The busybox test image only (any spelling), and every tag of one missing repository.
    JobHost::start_custom(r#"allowed_images = ["ctproxy-test/busybox:*", "ctproxy-test-absent/{one,two}"]"#, "", "")
}

#[test]
fn a_jobs_own_pulls_and_runs_are_held_to_the_image_list() {
    require_docker();
    let h = host();
    let job = h.job();
    // Allowed, in every spelling the CLI sends (`busybox` → `:latest`, a fully qualified name).
    let out = job.docker_ok(&["run", "--rm", BUSYBOX, "echo", "allowed-ran"]);
    assert!(out.contains("allowed-ran"), "{out}");
    let short = BUSYBOX.trim_end_matches(":latest");
    assert!(job.docker_ok(&["run", "--rm", short, "echo", "short-ran"]).contains("short-ran"));
    assert!(job.docker_ok(&["pull", short]).contains("up to date"));

    // Not on the list: refused before the daemon sees it.
    let refused = job.docker(&["run", "--name", "not-allowed", DOCKER_CLI_IMAGE, "true"]);
    assert_refused(&refused, "ctproxy: the image \"ctproxy-test/docker-cli:latest\" (Image)");
    assert_refused(&refused, "allowed_images (ctproxy-test/busybox:*, ctproxy-test-absent/{one,two})");
    assert_refused(&refused, "is not allowed by policy conservative");
    let created = job.docker(&["create", "--name", "not-allowed-2", CI_IMAGE]);
    assert_refused(&created, "\"ctproxy-test/ci:latest\" (Image)");
    let pulled = job.docker(&["pull", "ctproxy-test-absent/three:1"]);
    // (The 20.10 CLI sends `docker.io/...`, the 28 CLI the name as typed.)
    assert_refused(&pulled, "ctproxy-test-absent/three:1\" (fromImage)");
    // Every tag of a repository: the bare name must be on the list (it is, for `one`: the pull then
    // fails at the registry, not at the policy).
    let all_tags = job.docker(&["pull", "--all-tags", "ctproxy-test/busybox"]);
    assert_refused(&all_tags, "ctproxy-test/busybox\" (fromImage without tag)");
    // An image ID names no image of the list.
    let id = docker(direct(), &["image", "inspect", "--format", "{{.Id}}", BUSYBOX]);
    assert_refused(&job.docker(&["create", id.trim()]), "(Image)");

    assert!(h.audited("ctproxy-test/docker-cli"), "the refusal is in the audit log: {}", h.log_text());
    assert!(job.on_daemon().is_empty(), "the daemon saw refused creates: {:?}", job.on_daemon());
    let names = docker(direct(), &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("not-allowed"), "{names}");
    job.remove();
}

#[test]
fn a_malformed_pattern_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[listener.a]\naddress = \"unix:///tmp/x.sock\"\n[policy.c]\nkind = \"conservative\"\nallowed_images = [\"ruby:[\"]\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ctproxy"))
        .args(["serve", "--config", path.to_str().expect("utf-8"), "--check"])
        .output()
        .expect("ctproxy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allowed_images") && err.contains("unclosed '['"), "{err}");
}
