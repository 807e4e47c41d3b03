//! The first end-to-end check: the docker CLI talks to the real daemon through ctproxy.

mod support;
use std::time::Duration;

use support::*;

#[test]
fn version_through_proxy_matches_direct() {
    let proxy = Proxy::start();
    let fmt = ["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}} {{.Server.Os}}"];
    assert_eq!(docker(&proxy.docker_host(), &fmt), docker(direct(), &fmt));

    // The CLI's request is in the access log, with the path it used and the daemon's status.
    let line = format!("path=/v{}/version status=200", cli_api_version());
    assert!(proxy.wait_log(&line, Duration::from_secs(5)), "no access-log line with {line:?}; log:\n{}", proxy.log_text());
    let logged = proxy.log_text();
    let access = logged.lines().find(|l| l.contains(&line)).unwrap_or_default();
    assert!(access.contains("ctproxy::access") && access.contains("method=GET path="), "not an access-log line: {access}");
}

/// The daemon's own headers come back through ctproxy as the daemon sent them.
#[test]
fn the_daemons_headers_come_through() {
    let proxy = Proxy::start();
    let ping = http_request("GET", "/_ping", &[], b"", BodyFraming::Length);
    let [through] = &http_exchange(&proxy.sock, &ping, 1, Duration::from_secs(30))[..] else { panic!("one answer to /_ping") };
    let [own] = &http_exchange(direct_socket(), &ping, 1, Duration::from_secs(30))[..] else { panic!("one answer to /_ping") };
    assert_eq!((through.status, through.text()), (200, "OK".to_owned()));
    assert_eq!(through.header("Api-Version"), Some(daemon_api_version()), "{:?}", through.headers);
    for h in ["Api-Version", "Server", "Ostype", "Docker-Experimental"] {
        assert_eq!(through.header(h), own.header(h), "{h} through ctproxy and on the daemon's socket");
    }
    assert!(through.header("Server").is_some_and(|s| s.starts_with("Docker/")), "{:?}", through.headers);
}

/// A write through ctproxy happens on the daemon: a volume made through it is on the daemon's
/// own socket, and removed through it, is gone there.
#[test]
fn a_write_through_the_proxy_reaches_the_daemon() {
    let proxy = Proxy::start();
    let name = unique("smoke-vol");
    let mut cleanup = Cleanup::new();
    cleanup.volume(&name);
    assert_eq!(docker(&proxy.docker_host(), &["volume", "create", "--label", "ctproxy-test=smoke", &name]).trim(), name);
    let label = docker(direct(), &["volume", "inspect", "--format", "{{index .Labels \"ctproxy-test\"}}", &name]);
    assert_eq!(label.trim(), "smoke", "the volume is on the daemon, as made through ctproxy");
    let line = format!("method=POST path=/v{}/volumes/create status=201", cli_api_version());
    assert!(proxy.wait_log(&line, Duration::from_secs(5)), "no access-log line with {line:?}; log:\n{}", proxy.log_text());
    docker(&proxy.docker_host(), &["volume", "rm", &name]);
    let left = docker(direct(), &["volume", "ls", "-q", "--filter", &format!("name=^{name}$")]);
    assert_eq!(left.trim(), "", "removed through ctproxy, gone on the daemon");
}
