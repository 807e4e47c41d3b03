//! The first end-to-end check: the docker CLI talks to the real daemon through ctproxy.

mod support;
use support::*;

#[test]
fn version_through_proxy_matches_direct() {
    let proxy = Proxy::start();
    let fmt = ["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}} {{.Server.Os}}"];
    assert_eq!(docker(&proxy.docker_host(), &fmt), docker(direct(), &fmt));
    assert!(proxy.wait_log("path=/v1.41/version status=200", std::time::Duration::from_secs(2)) || proxy.log_text().contains("/version"));
}
