//! Networks through job sockets, tried as an attacker in a CI job would: another job's network by
//! its daemon-side name or ID (build `networkmode`, `NetworkID` of an endpoint on create and on
//! connect), the daemon's shared default `bridge`, and subnets of the host's or company's networks.
//! Each attempt is checked on the daemon's own socket: nothing was created, nothing joined.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::jobs::{assert_ns_refusal, assert_refused, JobHost, JobSocket};
use support::*;

fn inspect(what: &str, name: &str) -> Value {
    let out = docker_output(direct(), &[what, "inspect", name]);
    serde_json::from_slice::<Value>(&out.stdout).ok().and_then(|v| v.get(0).cloned()).unwrap_or(Value::Null)
}

/// The daemon-side name and ID of a network a job created.
fn daemon_network(job: &JobSocket, name: &str) -> (String, String) {
    let daemon_name = format!("ctp.{}.{name}", job.namespace);
    let id = inspect("network", &daemon_name)["Id"].as_str().expect("network on the daemon").to_owned();
    (daemon_name, id)
}

/// A build context with one Dockerfile, as a tar.
fn context(dockerfile: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "Dockerfile", dockerfile.as_bytes()).expect("tar");
    b.into_inner().expect("tar")
}

fn build_request(job: &JobSocket, query: &str, dockerfile: &str) -> (u16, String) {
    let ctx = context(dockerfile);
    let mut req = format!(
        "POST /v1.41/build?{query} HTTP/1.1\r\nHost: d\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        ctx.len()
    )
    .into_bytes();
    req.extend_from_slice(&ctx);
    let raw = raw_request(&job.socket, &req, Duration::from_secs(120));
    let text = String::from_utf8_lossy(&raw).into_owned();
    (text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0), text)
}

#[test]
fn a_build_cannot_join_another_jobs_network() {
    let host = JobHost::start();
    let (a, b) = (host.job(), host.job());
    b.docker_ok(&["network", "create", "secret"]);
    let (b_name, b_id) = daemon_network(&b, "secret");
    let tag = unique("netbuild");
    for mode in [b_name.as_str(), b_id.as_str(), &b_id[..12]] {
        let (status, text) = build_request(&a, &format!("networkmode={mode}&t={tag}"), "FROM ctproxy-test/busybox\nRUN echo hi\n");
        assert_eq!(status, 404, "build with networkmode={mode}: {text}");
        // The daemon's own answer for a network that does not exist, with what the client typed.
        assert!(text.contains(&format!("network {mode} not found")), "{text}");
    }
    assert!(docker(direct(), &["image", "ls", "-q", "--filter", &format!("reference=*/{}/*/{tag}", a.namespace)]).is_empty());
    // Its own network and the default work.
    a.docker_ok(&["network", "create", "mine"]);
    for mode in ["mine", "bridge", ""] {
        let (status, text) =
            build_request(&a, &format!("networkmode={mode}"), "FROM ctproxy-test/busybox\nRUN echo built-on-$(hostname)\n");
        assert_eq!(status, 200, "build with networkmode={mode:?}: {text}");
        assert!(text.contains("Successfully built"), "{text}");
    }
}

#[test]
fn an_endpoints_network_id_cannot_name_another_jobs_network() {
    let host = JobHost::start();
    let (a, b) = (host.job(), host.job());
    b.docker_ok(&["network", "create", "secret"]);
    let (_, b_id) = daemon_network(&b, "secret");
    a.docker_ok(&["network", "create", "mine"]);
    let name = unique("nid");
    let body = json!({
        "Image": BUSYBOX, "Cmd": ["sleep", "60"],
        "HostConfig": {"NetworkMode": "mine"},
        "NetworkingConfig": {"EndpointsConfig": {"mine": {"NetworkID": b_id}}}
    });
    let (status, answer) = a.request("POST", &format!("/v1.41/containers/create?name={name}"), Some(&body.to_string()));
    assert_eq!(status, 404, "{answer}");
    assert!(answer["message"].as_str().unwrap_or("").contains("not found"), "{answer}");
    // Spelled another way (Go folds the key's case): the same.
    let body = body.to_string().replace("NetworkID", "networkid");
    let (status, answer) = a.request("POST", &format!("/v1.41/containers/create?name={name}"), Some(&body));
    assert_eq!(status, 404, "{answer}");
    assert!(inspect("container", &format!("ctp.{}.{name}", a.namespace)).is_null(), "the daemon created the container");

    // On connect: the same field, the same answer, and the container joins nothing.
    a.docker_ok(&["create", "--name", &name, "--network", "mine", BUSYBOX, "sleep", "60"]);
    let body = json!({"Container": name, "EndpointConfig": {"NetworkID": b_id}});
    let (status, answer) = a.request("POST", "/v1.41/networks/mine/connect", Some(&body.to_string()));
    assert!(status == 404 || status == 400, "{status} {answer}");
    let c = inspect("container", &format!("ctp.{}.{name}", a.namespace));
    let nets: Vec<&String> =
        c.pointer("/NetworkSettings/Networks").and_then(Value::as_object).map(|m| m.keys().collect()).unwrap_or_default();
    assert!(nets.iter().all(|n| n.starts_with(&format!("ctp.{}.", a.namespace))), "joined {nets:?}");
    // Its own network's ID is fine.
    let (_, own_id) = daemon_network(&a, "mine");
    let body = json!({"Image": BUSYBOX, "NetworkingConfig": {"EndpointsConfig": {"mine": {"NetworkID": own_id}}}, "HostConfig": {"NetworkMode": "mine"}});
    let (status, answer) = a.request("POST", &format!("/v1.41/containers/create?name={}", unique("own")), Some(&body.to_string()));
    assert_eq!(status, 201, "{answer}");
}

/// The job socket remembers that its default network exists; what removes it makes it ask again:
/// a `network prune` in the job, and a removal behind its back on the daemon's own socket (the
/// first container started then may get the daemon's not-found, under the client's name; the next
/// makes the network again).
#[test]
fn a_removed_default_network_is_made_again() {
    let host = JobHost::start();
    let job = host.job();
    let daemon_name = format!("ctp.{}.bridge", job.namespace);
    // Containers made and removed synchronously: an unused network can be pruned and removed.
    let made_and_removed = || {
        let id = job.docker_ok(&["create", BUSYBOX, "true"]);
        job.docker_ok(&["rm", &id]);
    };
    made_and_removed();
    assert!(!inspect("network", &daemon_name).is_null(), "the default network was made");

    job.docker_ok(&["network", "prune", "-f"]);
    assert!(inspect("network", &daemon_name).is_null(), "an unused default network is pruned");
    made_and_removed();
    let made = inspect("network", &daemon_name);
    assert_eq!(made["Labels"]["io.ctproxy.namespace"], json!(job.namespace), "made again, the job's: {made}");

    docker(direct(), &["network", "rm", &daemon_name]);
    // dockerd looks the network up when the container starts: that first start may fail.
    let first = job.docker(&["run", "--rm", BUSYBOX, "true"]);
    if !first.status.success() {
        let err = String::from_utf8_lossy(&first.stderr);
        assert!(err.contains("bridge") && err.contains("not found") && !err.contains(&daemon_name), "{err}");
    }
    job.docker_ok(&["run", "--rm", BUSYBOX, "true"]);
    assert_eq!(inspect("network", &daemon_name)["Labels"]["io.ctproxy.namespace"], json!(job.namespace), "made again");
}

#[test]
fn each_job_has_its_own_default_network() {
    let host = JobHost::start();
    let (a, b) = (host.job(), host.job());
    // A server in job a on the default network, reached by name there (as on any namespace network).
    a.docker_ok(&["run", "-d", "--name", "web", BUSYBOX, "httpd", "-f", "-p", "8080", "-h", "/etc"]);
    // (busybox wget's -T crashes in this build.)
    let fetch = "for i in $(seq 1 50); do wget -q -O - http://web:8080/passwd && break; sleep 0.2; done";
    let out = a.docker_ok(&["run", "--rm", BUSYBOX, "sh", "-c", fetch]);
    assert!(out.contains("root:"), "{out}");
    let web = inspect("container", &format!("ctp.{}.web", a.namespace));
    let nets = web.pointer("/NetworkSettings/Networks").and_then(Value::as_object).expect("networks");
    assert_eq!(nets.keys().collect::<Vec<_>>(), vec![&format!("ctp.{}.bridge", a.namespace)]);
    let ip = nets.values().next().and_then(|n| n["IPAddress"].as_str()).expect("ip").to_owned();
    // Job b's containers don't reach it by address, whichever way they ask for the default.
    for args in [vec!["run", "--rm"], vec!["run", "--rm", "--network", "bridge"], vec!["run", "--rm", "--network", "default"]] {
        let mut args = args.clone();
        // (busybox `timeout` does not stop a wget stuck in connect; nc's own -w does.)
        let fetch = format!("printf 'GET /passwd HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip} 8080");
        args.extend([BUSYBOX, "sh", "-c", &fetch]);
        let out = b.docker(&args);
        assert!(!out.status.success(), "job b reached job a's container at {ip}: {}", String::from_utf8_lossy(&out.stdout));
    }
    // The client sees `bridge`, never the daemon's own or a mangled name.
    let ls = a.docker_ok(&["network", "ls", "--format", "{{.Name}}"]);
    let mut names: Vec<&str> = ls.lines().collect();
    names.sort();
    assert_eq!(names, ["bridge", "host", "none"]);
    let inspected = a.docker_ok(&["network", "inspect", "bridge", "--format", "{{.Name}} {{range .IPAM.Config}}{{.Subnet}}{{end}}"]);
    assert!(inspected.starts_with("bridge 10.200."), "{inspected}");
    let daemon_bridge = inspect("network", "bridge")["Id"].as_str().unwrap_or("").to_owned();
    assert!(!a.docker_ok(&["network", "inspect", "bridge", "--format", "{{.Id}}"]).contains(&daemon_bridge));
    let mode = a.docker_ok(&[
        "inspect",
        "web",
        "--format",
        "{{.HostConfig.NetworkMode}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
    ]);
    assert_eq!(mode, "bridge bridge");
    // Predefined names answer as the daemon does.
    assert_refused(&a.docker(&["network", "rm", "bridge"]), "bridge is a pre-defined network and cannot be removed");
    assert_refused(&a.docker(&["network", "create", "bridge"]), "operation is not permitted on predefined bridge network");
    // The default network goes with the job.
    let ns = a.namespace.clone();
    drop(a);
    assert!(inspect("network", &format!("ctp.{ns}.bridge")).is_null(), "the job's default network outlived it");
}

#[test]
fn job_networks_get_subnets_from_the_pool_and_cannot_claim_others() {
    let host = JobHost::start();
    let job = host.job();
    for subnet in ["192.168.77.0/24", "10.28.0.0/24", "10.0.0.0/8", "10.199.255.0/24"] {
        let name = unique("sub");
        let out = job.docker(&["network", "create", "--subnet", subnet, &name]);
        assert_refused(&out, "not allowed in a namespace");
        // The field, by the namespace, and the setting that allows it (issue 17).
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ns_refusal(&err, "(IPAM.Config[0].Subnet) is not allowed in a namespace", "the namespace");
        assert!(err.contains("an administrator can allow it by adding a range that contains it to [namespaces] network_pool"), "{err}");
        assert!(inspect("network", &format!("ctp.{}.{name}", job.namespace)).is_null(), "{subnet} was created");
    }
    // The CLI checks that ranges and gateways lie in the subnet; a raw request need not.
    for (key, value) in [("IPRange", "\"10.201.0.0/24\""), ("Gateway", "\"192.168.1.1\""), ("AuxiliaryAddresses", r#"{"h":"192.168.1.2"}"#)]
    {
        let body = format!(r#"{{"Name":"{}","IPAM":{{"Config":[{{"Subnet":"10.200.250.0/24","{key}":{value}}}]}}}}"#, unique("x"));
        let (status, answer) = job.request("POST", "/v1.41/networks/create", Some(&body));
        assert_eq!(status, 403, "{key}: {answer}");
        assert!(answer["message"].as_str().unwrap_or("").contains(key), "{answer}");
    }
    assert!(host.audited("not allowed in a namespace"));
    // Inside the pool: allowed. Without a subnet: a free block of the pool.
    job.docker_ok(&["network", "create", "--subnet", "10.200.251.0/24", "chosen"]);
    job.docker_ok(&["network", "create", "picked"]);
    let subnet = job.docker_ok(&["network", "inspect", "picked", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"]);
    assert!(subnet.starts_with("10.200.") && subnet.ends_with("/24"), "{subnet}");
    // compose-style creates (labels, driver options the policy allows) get a block too.
    let (status, answer) = job.request("POST", "/v1.41/networks/create", Some(r#"{"Name":"raw","CheckDuplicate":true,"Driver":"bridge"}"#));
    assert_eq!(status, 201, "{answer}");
    let raw = job.docker_ok(&["network", "inspect", "raw", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"]);
    assert!(raw.starts_with("10.200.") && raw != subnet, "{raw} vs {subnet}");
}

#[test]
fn concurrent_jobs_never_share_a_block() {
    let host = JobHost::start();
    let jobs: Vec<JobSocket> = (0..6).map(|_| host.job()).collect();
    let subnets: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| {
                s.spawn(move || {
                    j.docker_ok(&["network", "create", "one"]);
                    j.docker_ok(&["network", "create", "two"]);
                    ["one", "two", "bridge"]
                        .iter()
                        .map(|n| j.docker_ok(&["network", "inspect", n, "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}"]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("job thread")).collect()
    });
    let mut unique_subnets = subnets.clone();
    unique_subnets.sort();
    unique_subnets.dedup();
    assert_eq!(unique_subnets.len(), subnets.len(), "{subnets:?}");
}
