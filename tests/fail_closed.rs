//! `conservative` fails closed, at every API version: what it does not understand (a body field
//! its schemas do not describe, a query parameter the endpoint does not read, a mount type or mode
//! it does not know) is refused; and two escapes through host paths and networks are closed:
//! - a CI job's container cannot bind the directory of the job's socket read-write (it could swap
//!   the socket for a symbolic link to `/`, which the next "Docker socket" bind would follow), nor
//!   anything below or above it;
//! - a bind source must be exactly one of `allowed_bind_paths` (a sub-path can be a link planted by
//!   another container), and explicit network addresses must lie in `allowed_subnets`.
//!
//! Every refusal is checked for its Docker-style 403 message, its audit line, and for having had no
//! effect on the daemon (looked at through the daemon's own socket).

mod support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use support::jobs::*;
use support::*;

/// Beside the job service, a listener with `conservative` and no namespace, with one allowed bind
/// path and two allowed address ranges.
const PLAIN: &str = r#"
[listener.plain]
address = "unix://{dir}/plain.sock"
policies = ["plain"]
[policy.plain]
kind = "conservative"
allowed_bind_paths = ["{dir}/allowed"]
allowed_subnets = ["10.213.0.0/16", "fd00:213::/32"]
"#;

fn host_with_plain() -> (JobHost, PathBuf) {
    let host = JobHost::start_with(PLAIN);
    let plain = host.proxy.dir().join("plain.sock");
    for _ in 0..100 {
        if plain.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (host, plain)
}

/// A 403 from the policy whose message names `needle`, and its audit line.
#[track_caller]
fn assert_403(host: &JobHost, (status, body): (u16, serde_json::Value), needle: &str) {
    let msg = body["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status, 403, "{needle}: {body}");
    let by_policy = msg.contains("is not allowed by policy conservative; ") || msg.contains("is not allowed by policy plain; ");
    // ... and says how an administrator allows it, or that no setting can.
    let remedy = msg.ends_with("no setting allows it)")
        || msg.ends_with("; no setting allows it")
        || msg.contains("; an administrator can allow it by ");
    assert!(msg.starts_with("ctproxy: ") && by_policy && remedy, "{msg}");
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    assert!(host.audited(needle), "no audit line for {needle:?}:\n{}", host.log_text());
}

/// Nothing by this name on the daemon.
#[track_caller]
fn no_container(name: &str) {
    let out = docker(direct(), &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!out.lines().any(|n| n.contains(name)), "container {name} exists: {out}");
}

#[track_caller]
fn no_network(name: &str) {
    let out = docker(direct(), &["network", "ls", "--format", "{{.Name}}"]);
    assert!(!out.lines().any(|n| n.contains(name)), "network {name} exists: {out}");
}

fn is_socket(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.file_type().is_socket()).unwrap_or(false)
}

#[test]
fn unknown_body_fields_are_refused_wherever_they_are() {
    let host = JobHost::start();
    let job = host.job();
    let name = unique("unknown-field");
    let create = format!("/v1.41/containers/create?name={name}");
    for (body, needle) in [
        (format!(r#"{{"Image":"{BUSYBOX}","Foo":1}}"#), "the unknown field Foo"),
        (format!(r#"{{"Image":"{BUSYBOX}","Healthcheck":{{"Test":["NONE"],"Foo":1}}}}"#), "the unknown field Healthcheck.Foo"),
        (
            format!(
                r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Mounts":[{{"Type":"image","Source":"{BUSYBOX}","Target":"/i","ImageOptions":{{"Foo":"x"}}}}]}}}}"#
            ),
            "the unknown field HostConfig.Mounts[0].ImageOptions.Foo",
        ),
        (
            format!(r#"{{"Image":"{BUSYBOX}","NetworkingConfig":{{"EndpointsConfig":{{"x":{{"Foo":1}}}}}}}}"#),
            r#"the unknown field NetworkingConfig.EndpointsConfig["x"].Foo"#,
        ),
        (
            format!(
                r#"{{"Image":"{BUSYBOX}","HostConfig":{{"PortBindings":{{"80/tcp":[{{"HostPort":"0","HostIp":"","Future":true}}]}}}}}}"#
            ),
            r#"the unknown field HostConfig.PortBindings["80/tcp"][0].Future"#,
        ),
    ] {
        assert_403(&host, job.request("POST", &create, Some(&body)), needle);
    }
    let net = unique("unknown-field-net");
    let body = format!(r#"{{"Name":"{net}","IPAM":{{"Config":[{{"Future":"x"}}]}}}}"#);
    assert_403(&host, job.request("POST", "/v1.41/networks/create", Some(&body)), "the unknown field IPAM.Config[0].Future");
    let vol = unique("unknown-field-vol");
    let body = format!(r#"{{"Name":"{vol}","Future":{{}}}}"#);
    assert_403(&host, job.request("POST", "/v1.41/volumes/create", Some(&body)), "the unknown field Future");
    // The message says why nothing allows it.
    let (_, body) = job.request("POST", &create, Some(&format!(r#"{{"Image":"{BUSYBOX}","Foo":1}}"#)));
    assert!(body["message"].as_str().unwrap_or_default().contains("does not know it (no setting allows it)"), "{body}");

    no_container(&name);
    no_network(&net);
    assert!(!docker(direct(), &["volume", "ls", "--format", "{{.Name}}"]).contains(&vol));
    assert!(job.on_daemon().is_empty(), "{:?}", job.on_daemon());
    // What the clients send passes.
    job.docker_ok(&["run", "--rm", "--health-cmd", "true", "--health-start-period", "1s", BUSYBOX, "true"]);
}

#[test]
fn unknown_query_parameters_are_refused() {
    let host = JobHost::start();
    let job = host.job();
    let name = unique("unknown-param");
    assert_403(
        &host,
        job.request("POST", &format!("/v1.41/containers/create?name={name}&future=1"), Some(&format!(r#"{{"Image":"{BUSYBOX}"}}"#))),
        r#"the unknown query parameter "future" of POST /containers/create"#,
    );
    // Go's r.Form is exact-case: `Name` is not `name`.
    assert_403(
        &host,
        job.request("POST", &format!("/v1.41/containers/create?Name={name}"), Some(&format!(r#"{{"Image":"{BUSYBOX}"}}"#))),
        r#"the unknown query parameter "Name""#,
    );
    no_container(&name);
    let tag = unique("unknown-param-build").replace("ctproxy-test-", "ctproxy-test/");
    assert_403(
        &host,
        job.request("POST", &format!("/v1.41/build?t={tag}&entitlements=network.host"), None),
        r#"the unknown query parameter "entitlements" of POST /build"#,
    );
    assert!(!docker_output(direct(), &["image", "inspect", &tag]).status.success());
    assert_403(
        &host,
        job.request("POST", "/v1.41/images/create?fromImage=ctproxy-test/never-pulled&tag=x&fromimage=busybox", None),
        r#"the unknown query parameter "fromimage" of POST /images/create"#,
    );
    assert!(!docker_output(direct(), &["image", "inspect", "ctproxy-test/never-pulled:x"]).status.success());
    // Parameters real clients send (docker-py's trunc_cmd) and old names (filter) pass.
    let (status, _) = job.request("GET", "/v1.41/containers/json?all=1&limit=-1&size=0&trunc_cmd=0", None);
    assert_eq!(status, 200);
    let (status, _) = job.request("GET", "/v1.40/images/json?filter=busybox&only_ids=0", None);
    assert_eq!(status, 200);
    assert!(job.on_daemon().is_empty(), "{:?}", job.on_daemon());
}

#[test]
fn unknown_mount_types_and_modes_are_refused() {
    let host = JobHost::start();
    let job = host.job();
    let name = unique("mount-type");
    let create = format!("/v1.41/containers/create?name={name}");
    for (hc, needle) in [
        (r#"{"Mounts":[{"Type":"npipe","Source":"/run/docker.sock","Target":"/x"}]}"#, r#"mount type "npipe""#),
        (r#"{"Mounts":[{"Type":"cluster","Source":"v","Target":"/x"}]}"#, r#"mount type "cluster""#),
        (r#"{"Mounts":[{"Type":"Bind","Source":"/etc","Target":"/x"}]}"#, r#"mount type "Bind""#),
        (r#"{"Mounts":[{"Type":"volume","Target":"/x","Consistency":"eventual"}]}"#, r#"the mount consistency "eventual""#),
        (r#"{"Binds":["v:/x:ro,future"]}"#, r#"the bind option "future""#),
        (r#"{"IpcMode":"future"}"#, r#"the ipc mode "future""#),
        (r#"{"NetworkMode":"future:x"}"#, r#"the network mode "future:x""#),
        (r#"{"RestartPolicy":{"Name":"sometimes"}}"#, r#"the restart policy "sometimes""#),
        (r#"{"Ulimits":[{"Name":"nice","Soft":-20,"Hard":-20}]}"#, "ulimit nice"),
    ] {
        let body = format!(r#"{{"Image":"{BUSYBOX}","HostConfig":{hc}}}"#);
        assert_403(&host, job.request("POST", &create, Some(&body)), needle);
    }
    no_container(&name);
    assert!(job.on_daemon().is_empty(), "{:?}", job.on_daemon());
    // The known types still work.
    job.docker_ok(&["run", "--rm", "--mount", "type=tmpfs,target=/t", "--mount", "type=volume,target=/v", BUSYBOX, "true"]);
}

/// The reproduced attack: with the directory of the job's socket bound read-write, a container
/// moves `docker.sock` aside and puts a link to `/` in its place; the next bind of "the Docker
/// socket" (redirected to the job's socket path) is resolved by the daemon at start and mounts the
/// host's `/`. The directory may now be bound read-only only.
#[test]
fn the_job_socket_directory_cannot_be_swapped() {
    let host = JobHost::start();
    let job = host.job();
    let sock = job.socket.clone();
    let dir = sock.parent().expect("socket directory").display().to_string();

    // Read-write, in every spelling: refused.
    for bind in [format!("{dir}:/d"), format!("{dir}:/d:rw"), format!("{dir}/.:/d"), format!("{dir}/../sock:/d:rw")] {
        let out = job.docker(&["run", "--rm", "-v", &bind, BUSYBOX, "sh", "-c", "mv /d/docker.sock /d/moved; ln -s / /d/docker.sock"]);
        assert_refused(&out, "a read-write bind of the job's Docker socket directory");
    }
    let out = job.docker(&["run", "--rm", "--mount", &format!("type=bind,source={dir},target=/d"), BUSYBOX, "true"]);
    assert_refused(&out, "a read-write bind of the job's Docker socket directory");
    assert!(host.audited("a read-write bind of the job's Docker socket directory"));
    // Below and above it: refused.
    let out = job.docker(&["run", "--rm", "-v", &format!("{dir}/other:/d:ro"), BUSYBOX, "true"]);
    assert_refused(&out, "inside the job's Docker socket directory");
    let out = job.docker(&["run", "--rm", "-v", &format!("{dir}/..:/d:ro"), BUSYBOX, "true"]);
    assert_refused(&out, "which holds the job's Docker socket");
    assert!(is_socket(&sock), "the job's socket is untouched");

    // Read-only: allowed, and the swap fails inside.
    let out = job.docker_ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{dir}:/d:ro"),
        BUSYBOX,
        "sh",
        "-c",
        "mv /d/docker.sock /d/moved 2>/dev/null || echo mv-refused; ln -s / /d/link 2>/dev/null || echo ln-refused; test -S /d/docker.sock && echo sees-socket",
    ]);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["mv-refused", "ln-refused", "sees-socket"], "{out}");
    assert!(is_socket(&sock), "the job's socket is still a socket");
    assert!(!Path::new(&dir).join("moved").exists() && !Path::new(&dir).join("link").exists());

    // "The Docker socket" is the job's socket, a socket; the file itself binds too.
    let out = job.docker_ok(&["run", "--rm", "-v", "/var/run/docker.sock:/h", BUSYBOX, "sh", "-c", "test -S /h && echo socket"]);
    assert_eq!(out, "socket");
    let out = job.docker_ok(&["run", "--rm", "-v", &format!("{}:/s", sock.display()), BUSYBOX, "sh", "-c", "test -S /s && echo socket"]);
    assert_eq!(out, "socket");
    // A nested client through the redirected socket still works.
    let out = job.docker_ok(&["run", "--rm", "-v", "/var/run/docker.sock:/var/run/docker.sock", DOCKER_CLI_IMAGE, "docker", "ps"]);
    assert!(out.starts_with("CONTAINER ID"), "{out}");
    assert!(job.on_daemon().is_empty(), "{:?}", job.on_daemon());
}

/// A container that can write in an allowed directory can replace a sub-directory by a link
/// between another container's create and start; so only the allowed path itself binds.
#[test]
fn bind_sources_are_exactly_an_allowed_path() {
    let (host, plain) = host_with_plain();
    let plain_host = format!("unix://{}", plain.display());
    let allowed = host.proxy.dir().join("allowed");
    std::fs::create_dir_all(&allowed).expect("allowed dir");
    let a = allowed.display().to_string();

    // The exact path: allowed (and the container prepares a sub-directory and a link in it).
    let out = docker(
        &plain_host,
        &["run", "--rm", "-v", &format!("{a}:/a"), BUSYBOX, "sh", "-c", "mkdir /a/sub && ln -s /etc /a/etc-link && echo ok"],
    );
    assert_eq!(out.trim(), "ok");
    assert!(allowed.join("sub").is_dir());

    let mut cleanup = Cleanup::new();
    let name = unique("subpath");
    cleanup.container(&name);
    for (source, needle) in [
        (
            format!("{a}/sub"),
            "an administrator can allow it by listing the path exactly (not a parent directory) in [policy.plain] allowed_bind_paths",
        ),
        (format!("{a}/etc-link"), "bind mount of host path /etc"),
        (format!("{a}/new/deeper"), "listing the path exactly (not a parent directory)"),
    ] {
        let out = docker_output(&plain_host, &["create", "--name", &name, "-v", &format!("{source}:/s"), BUSYBOX, "true"]);
        assert_refused(&out, needle);
        assert!(host.audited(needle));
        no_container(&name);
    }
    // CreateMountpoint cannot create anything but the allowed path itself.
    let body = format!(
        r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Mounts":[{{"Type":"bind","Source":"{a}/created","Target":"/c","BindOptions":{{"CreateMountpoint":true}}}}]}}}}"#
    );
    assert_403(
        &host,
        http_json(&plain, "POST", &format!("/v1.41/containers/create?name={name}"), Some(&body)),
        "listing the path exactly (not a parent directory)",
    );
    assert!(!allowed.join("created").exists());
    no_container(&name);
    // The same through Mounts: the exact path binds.
    let out = docker(&plain_host, &["run", "--rm", "--mount", &format!("type=bind,source={a},target=/a,readonly"), BUSYBOX, "ls", "/a"]);
    assert!(out.contains("sub"), "{out}");
}

#[test]
fn explicit_network_addresses_must_be_in_allowed_subnets() {
    let (host, plain) = host_with_plain();
    let plain_host = format!("unix://{}", plain.display());
    let net = unique("ipam");
    let mut cleanup = Cleanup::new();
    cleanup.network(&net);
    let third = std::process::id() % 200 + 20;
    // As the CLI sends them...
    for (args, needle) in [
        (vec!["--subnet", "192.168.213.0/24"], "the addresses 192.168.213.0/24 (IPAM.Config[0].Subnet)"),
        (vec!["--subnet", "10.0.0.0/8"], "the addresses 10.0.0.0/8 (IPAM.Config[0].Subnet)"),
        (vec!["--ipv6", "--subnet", "fd00:999::/64"], "the addresses fd00:999::/64"),
    ] {
        let mut cmd = vec!["network", "create"];
        cmd.extend(args.iter().copied());
        cmd.push(&net);
        let out = docker_output(&plain_host, &cmd);
        assert_refused(&out, needle);
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("an administrator can allow it by listing a range that contains them in [policy.plain] allowed_subnets"));
        assert!(host.audited(needle));
        no_network(&net);
    }
    // ...and as any client can (the CLI checks that ranges and gateways lie in the subnet).
    for (pool, needle) in [
        (r#"{"Subnet":"10.213.1.0/24","IPRange":"10.214.1.0/25"}"#, "the addresses 10.214.1.0/25 (IPAM.Config[0].IPRange)"),
        (r#"{"Subnet":"10.213.1.0/24","Gateway":"172.17.0.1"}"#, "the addresses 172.17.0.1 (IPAM.Config[0].Gateway)"),
        (r#"{"Subnet":"10.213.1.0/24","AuxiliaryAddresses":{"router":"10.1.1.1"}}"#, r#"IPAM.Config[0].AuxiliaryAddresses["router"]"#),
        (r#"{"IPRange":"192.168.0.0/16"}"#, "IPAM.Config[0].IPRange"),
        (r#"{"Subnet":"::ffff:10.213.0.0/120"}"#, "the IPv4-mapped IPv6 addresses"),
    ] {
        let body = format!(r#"{{"Name":"{net}","IPAM":{{"Driver":"default","Config":[{pool}]}}}}"#);
        assert_403(&host, http_json(&plain, "POST", "/v1.41/networks/create", Some(&body)), needle);
        no_network(&net);
    }
    // A malformed address is the daemon's 400, decided here.
    let body = format!(r#"{{"Name":"{net}","IPAM":{{"Config":[{{"Subnet":"10.213.0.0/40"}}]}}}}"#);
    let (status, body) = http_json(&plain, "POST", "/v1.41/networks/create", Some(&body));
    assert_eq!(status, 400, "{body}");
    no_network(&net);
    // Inside the allowed range: created.
    let subnet = format!("10.213.{third}.0/24");
    docker(&plain_host, &["network", "create", "--subnet", &subnet, "--gateway", &format!("10.213.{third}.1"), &net]);
    let inspected = docker(direct(), &["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}}{{end}}", &net]);
    assert_eq!(inspected.trim(), subnet);
}
