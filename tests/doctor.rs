//! `ctproxy doctor` against the real daemon: its lines, the fixes it prints and its exit status.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A host layout for one doctor run: ctproxy's configuration, gitlab-runner's, and a fake
/// gitlab-runner binary on PATH (CI machines have none; doctor looks in PATH after /usr/bin).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(shared_images: &str) -> Host {
        require_docker();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        let config = format!(
            r#"
[upstream]
url = "{}"
[listener.default]
address = "unix://{d}/docker.sock"
[namespaces]
shared_images = {shared_images}
network_pool = ["10.231.0.0/16"]
network_prefix_len = 24
[registry_proxy]
address = "127.0.0.1:0"
[jobs]
control_socket = "{d}/control.sock"
dir = "{d}/jobs"
"#,
            direct(),
        );
        std::fs::write(dir.path().join("ctproxy.toml"), config).expect("write config");
        let exe = env!("CARGO_BIN_EXE_ctproxy");
        let stage = |s: &str| format!("{s}_exec = \"{exe}\"\n{s}_args = [\"executor\", \"--control\", \"{d}/control.sock\", \"{s}\"]\n");
        let runner = format!(
            "concurrent = 2\n[[runners]]\nname = \"t\"\nexecutor = \"custom\"\n[runners.custom]\n{}{}{}{}",
            stage("config"),
            stage("prepare"),
            stage("run"),
            stage("cleanup")
        );
        std::fs::write(dir.path().join("config.toml"), runner).expect("write runner config");
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).expect("bin dir");
        let fake = bin.join("gitlab-runner");
        std::fs::write(&fake, "#!/bin/sh\necho 'Version:      17.2.0'\necho 'Git revision: 6428c288'\n").expect("fake runner");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        Host { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn doctor(&self, config: &Path, runner: &Path) -> (Output, String) {
        let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
        let out = Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .args(["doctor", "--config"])
            .arg(config)
            .arg("--runner-config")
            .arg(runner)
            .env("PATH", path)
            .output()
            .expect("run ctproxy doctor");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
        (out, text)
    }
}

fn line<'t>(text: &'t str, prefix: &str) -> &'t str {
    text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
}

#[test]
fn missing_shared_image_fails_with_the_pull_to_run() {
    let host = Host::new(r#"["ctproxy-test/busybox", "ctproxy-doctor-missing/none"]"#);
    let (out, text) = host.doctor(&host.path("ctproxy.toml"), &host.path("config.toml"));
    assert_eq!(out.status.code(), Some(1), "{text}");
    let shared = line(&text, "FAIL shared images:");
    assert!(shared.contains("ctproxy-doctor-missing/none") && !shared.contains("ctproxy-test/busybox,"), "{shared}");
    assert!(shared.contains("-> fix: docker pull ctproxy-doctor-missing/none"), "{shared}");
    // Everything else about this host is fine, and says so.
    line(&text, "ok   daemon: reachable");
    line(&text, "ok   daemon version: dockerd");
    assert!(line(&text, "ok   gitlab-runner:").contains("17.2.0"), "{text}");
    line(&text, "ok   runner config:");
    assert!(line(&text, "ok   address pool:").contains("for 2 concurrent job(s)"), "{text}");
    line(&text, "ok   registry proxy port:");
    assert_eq!(text.lines().filter(|l| l.starts_with("FAIL")).count(), 1, "{text}");
}

#[test]
fn healthy_host_passes() {
    let host = Host::new(r#"["ctproxy-test/*"]"#);
    let (out, text) = host.doctor(&host.path("ctproxy.toml"), &host.path("config.toml"));
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    line(&text, "ok   shared images:");
    // One line per check: config, daemon, version, storage, cgroups, pool, cache, registry proxy,
    // gitlab-runner, runner config, shared images.
    assert_eq!(text.lines().count(), 11, "{text}");
}

#[test]
fn runner_that_calls_another_binary_is_reported() {
    let host = Host::new(r#"["ctproxy-test/*"]"#);
    let other =
        std::fs::read_to_string(host.path("config.toml")).expect("read").replace(env!("CARGO_BIN_EXE_ctproxy"), "/opt/other/ctproxy");
    std::fs::write(host.path("other.toml"), other).expect("write");
    let (out, text) = host.doctor(&host.path("ctproxy.toml"), &host.path("other.toml"));
    assert_eq!(out.status.code(), Some(1), "{text}");
    let l = line(&text, "FAIL runner config:");
    assert!(l.contains("/opt/other/ctproxy") && l.contains("-> fix: point every *_exec at"), "{l}");
    let (out, text) = host.doctor(&host.path("ctproxy.toml"), &host.path("absent.toml"));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "FAIL runner config:").contains("register the runner"), "{text}");
}

#[test]
fn unreadable_configuration_exits_2() {
    let host = Host::new("[]");
    std::fs::write(host.path("bad.toml"), "[upstream\n").expect("write");
    let (out, text) = host.doctor(&host.path("bad.toml"), &host.path("config.toml"));
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(line(&text, "FAIL config:").contains("--check"), "{text}");
    assert_eq!(text.lines().count(), 1, "one line, nothing else checked: {text}");
}
