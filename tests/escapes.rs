//! Issue acceptance: a corpus of escape attempts against the `conservative` policy. Each row is a raw
//! request; each must be refused (403 by policy, 400 when malformed, 413 when oversized) with a
//! Docker-style message and an audit line, and the real daemon must show no effect of it.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use support::*;

const CONFIG: &str = r#"
[listener.t]
address = "unix://{dir}/d.sock"
policies = ["strict"]
[policy.strict]
kind = "conservative"
allowed_bind_paths = ["/tmp/ctproxy-allowed"]
"#;

/// What must not exist or must not have changed on the daemon after a refused request.
enum Effect {
    NoContainer(String),
    NoVolume(String),
    NoNetwork(String),
    /// The victim container keeps its settings, is not running, and has no exec instance.
    VictimUntouched,
    /// A read-only or daemon-wide endpoint: the refusal itself is the check.
    Nothing,
}

struct Case {
    label: String,
    request: Vec<u8>,
    status: u16,
    effect: Effect,
}

fn request(method: &str, path: &str, content_type: &str, body: &[u8], chunked: bool) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n").into_bytes();
    if !content_type.is_empty() {
        r.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    if chunked {
        r.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for chunk in body.chunks(7) {
            r.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            r.extend_from_slice(chunk);
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
    } else {
        r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        r.extend_from_slice(body);
    }
    r
}

fn send(sock: &std::path::Path, req: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    // The proxy may answer (413) and close before an oversized body is fully written.
    let _ = s.write_all(req);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

struct Corpus {
    cases: Vec<Case>,
    /// A running container (exec, update, connect rows) and a stopped one (start rows).
    victim: String,
    stopped: String,
}

impl Corpus {
    fn create(&mut self, label: &str, body: &str) {
        self.create_as(label, body, 403, false);
    }

    fn create_as(&mut self, label: &str, body: &str, status: u16, chunked: bool) {
        let name = unique("esc");
        let body = body.replace("IMAGE", BUSYBOX);
        self.cases.push(Case {
            label: label.to_owned(),
            request: request("POST", &format!("/v1.41/containers/create?name={name}"), "application/json", body.as_bytes(), chunked),
            status,
            effect: Effect::NoContainer(name),
        });
    }

    // One argument per column of the table: a row reads like the request it sends.
    #[allow(clippy::too_many_arguments)]
    fn raw(&mut self, label: &str, method: &str, path: &str, ctype: &str, body: &str, status: u16, effect: Effect) {
        let path = path.replace("STOPPED", &self.stopped).replace("VICTIM", &self.victim);
        let body = body.replace("IMAGE", BUSYBOX);
        self.cases.push(Case { label: label.to_owned(), request: request(method, &path, ctype, body.as_bytes(), false), status, effect });
    }
}

fn corpus(victim: &str, stopped: &str) -> Corpus {
    let mut c = Corpus { cases: Vec::new(), victim: victim.to_owned(), stopped: stopped.to_owned() };
    // Privileged, in every spelling dockerd reads.
    c.create("privileged", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#);
    c.create("privileged lower-case keys", r#"{"image":"IMAGE","hostconfig":{"privileged":true}}"#);
    c.create("privileged upper-case", r#"{"Image":"IMAGE","HOSTCONFIG":{"PRIVILEGED":true}}"#);
    c.create("privileged key with \\u escape", r#"{"Image":"IMAGE","HostConfig":{"Privil\u0065ged":true}}"#);
    c.create("HostConfig with long s (U+017F)", r#"{"Image":"IMAGE","Ho\u017ftConfig":{"Privileged":true}}"#);
    c.create("duplicate key, last wins", r#"{"Image":"IMAGE","HostConfig":{"Privileged":false,"Privileged":true}}"#);
    c.create("duplicate HostConfig objects merge", r#"{"Image":"IMAGE","HostConfig":{"Memory":0},"hostConfig":{"Privileged":true}}"#);
    c.create("null does not reset a bool", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true,"Privileged":null}}"#);
    c.create("top-level Privileged (deprecated embedded HostConfig)", r#"{"Image":"IMAGE","Privileged":true}"#);
    c.create("top-level Binds", r#"{"Image":"IMAGE","Binds":["/etc:/h"]}"#);
    c.create_as("privileged in a chunked body", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#, 403, true);
    // Capabilities.
    c.create("CapAdd SYS_ADMIN", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#);
    c.create("CapAdd lower-case with prefix", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["cap_sys_admin"]}}"#);
    c.create("CapAdd ALL", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["ALL"]}}"#);
    c.create("CapAdd as a string", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":"SYS_PTRACE"}}"#);
    c.create("legacy Capabilities", r#"{"Image":"IMAGE","HostConfig":{"Capabilities":["CAP_SYS_ADMIN"]}}"#);
    // Devices.
    c.create(
        "Devices",
        r#"{"Image":"IMAGE","HostConfig":{"Devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda","CgroupPermissions":"rwm"}]}}"#,
    );
    c.create(
        "DeviceRequests",
        r#"{"Image":"IMAGE","HostConfig":{"DeviceRequests":[{"Driver":"nvidia","Count":-1,"Capabilities":[["gpu"]]}]}}"#,
    );
    c.create("DeviceCgroupRules", r#"{"Image":"IMAGE","HostConfig":{"DeviceCgroupRules":["c *:* rwm"]}}"#);
    // Security options.
    c.create("seccomp=unconfined", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#);
    c.create("seccomp:unconfined (legacy separator)", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["seccomp:unconfined"]}}"#);
    c.create("apparmor=unconfined", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["apparmor=unconfined"]}}"#);
    c.create("label=disable", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["label=disable"]}}"#);
    c.create("MaskedPaths emptied", r#"{"Image":"IMAGE","HostConfig":{"MaskedPaths":[]}}"#);
    c.create("ReadonlyPaths emptied", r#"{"Image":"IMAGE","HostConfig":{"ReadonlyPaths":[]}}"#);
    // Host namespaces.
    for (field, value) in [
        ("NetworkMode", "host"),
        ("PidMode", "host"),
        ("IpcMode", "host"),
        ("UTSMode", "host"),
        ("UsernsMode", "host"),
        ("CgroupnsMode", "host"),
    ] {
        c.create(&format!("{field}={value}"), &format!(r#"{{"Image":"IMAGE","HostConfig":{{"{field}":"{value}"}}}}"#));
    }
    c.create("pidmode host, lower-case key", r#"{"Image":"IMAGE","HostConfig":{"pidmode":"host"}}"#);
    c.create(
        "joining another container's pid namespace",
        r#"{"Image":"IMAGE","HostConfig":{"PidMode":"container:VICTIM"}}"#.replace("VICTIM", victim).as_str(),
    );
    c.create("VolumesFrom another container", &r#"{"Image":"IMAGE","HostConfig":{"VolumesFrom":["VICTIM"]}}"#.replace("VICTIM", victim));
    c.create("EndpointsConfig host", r#"{"Image":"IMAGE","NetworkingConfig":{"EndpointsConfig":{"host":{}}}}"#);
    c.create("endpoint DriverOpts", r#"{"Image":"IMAGE","NetworkingConfig":{"EndpointsConfig":{"bridge":{"DriverOpts":{"com.docker.network.endpoint.sysctls":"net.ipv4.conf.all.forwarding=1"}}}}}"#);
    // Host paths.
    for bind in [
        "/:/host",
        "/etc:/h",
        "/var/run/docker.sock:/var/run/docker.sock",
        "/run/docker.sock:/s",
        "/tmp/../etc:/h",
        "/tmp/ctproxy-allowed/../../etc:/h",
        "/tmp/ctproxy-allowed:/a:rshared",
        "/proc:/hp",
    ] {
        c.create(&format!("Binds {bind}"), &format!(r#"{{"Image":"IMAGE","HostConfig":{{"Binds":["{bind}"]}}}}"#));
    }
    c.create("Mounts bind", r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/h"}]}}"#);
    c.create("mounts bind, lower-case keys", r#"{"Image":"IMAGE","hostconfig":{"mounts":[{"type":"bind","source":"/","target":"/h"}]}}"#);
    c.create(
        "Mounts bind of the docker socket",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"/var/run/docker.sock","Target":"/s"}]}}"#,
    );
    c.create("Mounts bind, propagation rshared", r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"/tmp/ctproxy-allowed","Target":"/a","BindOptions":{"Propagation":"rshared"}}]}}"#);
    c.create("Mounts npipe", r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"npipe","Source":"/x","Target":"/x"}]}}"#);
    c.create("Mounts volume with o=bind options", r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"volume","Source":"escvol","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/etc"}}}}]}}"#);
    c.create("Mounts volume with another driver", r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"volume","Source":"escvol","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"sshfs"}}}]}}"#);
    c.create("VolumeDriver", r#"{"Image":"IMAGE","HostConfig":{"VolumeDriver":"convoy","Binds":["v:/v"]}}"#);
    // Kernel and cgroups.
    c.create("sysctl kernel.core_pattern", r#"{"Image":"IMAGE","HostConfig":{"Sysctls":{"kernel.core_pattern":"|/tmp/x"}}}"#);
    c.create("sysctl kernel.modprobe", r#"{"Image":"IMAGE","HostConfig":{"Sysctls":{"kernel.modprobe":"/tmp/x"}}}"#);
    c.create("CgroupParent", r#"{"Image":"IMAGE","HostConfig":{"CgroupParent":"/"}}"#);
    c.create("Runtime", r#"{"Image":"IMAGE","HostConfig":{"Runtime":"io.containerd.runc.v2-unsafe"}}"#);
    c.create("OomKillDisable", r#"{"Image":"IMAGE","HostConfig":{"OomKillDisable":true}}"#);
    c.create("negative OomScoreAdj", r#"{"Image":"IMAGE","HostConfig":{"OomScoreAdj":-1000}}"#);
    c.create("realtime CPU", r#"{"Image":"IMAGE","HostConfig":{"CpuRealtimeRuntime":950000}}"#);
    c.create("ulimit rtprio", r#"{"Image":"IMAGE","HostConfig":{"Ulimits":[{"Name":"rtprio","Soft":99,"Hard":99}]}}"#);
    c.create("blkio device", r#"{"Image":"IMAGE","HostConfig":{"BlkioDeviceReadBps":[{"Path":"/dev/sda","Rate":1}]}}"#);
    c.create(
        "log driver syslog",
        r#"{"Image":"IMAGE","HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"udp://10.0.0.1:514"}}}}"#,
    );
    c.create("OCI annotations", r#"{"Image":"IMAGE","HostConfig":{"Annotations":{"io.kubernetes.cri.x":"y"}}}"#);
    c.create("unknown HostConfig field", r#"{"Image":"IMAGE","HostConfig":{"FutureEscapeHatch":true}}"#);
    // Malformed or oversized bodies (400 / 413: nothing unparseable is forwarded).
    c.create_as("trailing second JSON document", r#"{"Image":"IMAGE"} {"HostConfig":{"Privileged":true}}"#, 400, false);
    c.create_as("HostConfig of the wrong type", r#"{"Image":"IMAGE","HostConfig":"privileged"}"#, 400, false);
    c.create_as("truncated JSON", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true"#, 400, false);
    let big = format!(r#"{{"Image":"IMAGE","Env":["{}"],"HostConfig":{{"Privileged":true}}}}"#, "A".repeat(2 << 20));
    c.create_as("JSON body over the limit", &big, 413, false);
    let name = unique("esc");
    c.raw(
        "form-encoded body",
        "POST",
        &format!("/v1.41/containers/create?name={name}"),
        "application/x-www-form-urlencoded",
        "HostConfig=x",
        400,
        Effect::NoContainer(name),
    );
    let name = unique("esc");
    c.raw(
        "multipart body",
        "POST",
        &format!("/v1.41/containers/create?name={name}"),
        "multipart/form-data; boundary=x",
        "--x--",
        400,
        Effect::NoContainer(name),
    );
    let name = unique("esc");
    c.raw(
        "JSON body without a JSON content type",
        "POST",
        &format!("/v1.41/containers/create?name={name}"),
        "text/plain",
        r#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        400,
        Effect::NoContainer(name),
    );
    // Other endpoints on the victim.
    c.raw(
        "start with a HostConfig body (API 1.23)",
        "POST",
        "/v1.23/containers/STOPPED/start",
        "application/json",
        r#"{"Binds":["/etc:/h"],"Privileged":true}"#,
        403,
        Effect::VictimUntouched,
    );
    c.raw(
        "start with a HostConfig body (API 1.12)",
        "POST",
        "/v1.12/containers/STOPPED/start",
        "application/json",
        r#"{"Privileged":true}"#,
        403,
        Effect::VictimUntouched,
    );
    c.raw(
        "start with a body on a current API",
        "POST",
        "/v1.41/containers/STOPPED/start",
        "application/json",
        r#"{"Privileged":true}"#,
        400,
        Effect::VictimUntouched,
    );
    c.raw("start from a checkpoint", "POST", "/v1.41/containers/STOPPED/start?checkpoint=x", "", "", 403, Effect::VictimUntouched);
    c.raw(
        "privileged exec",
        "POST",
        "/v1.41/containers/VICTIM/exec",
        "application/json",
        r#"{"Cmd":["id"],"Privileged":true}"#,
        403,
        Effect::VictimUntouched,
    );
    c.raw(
        "privileged exec, lower-case",
        "POST",
        "/v1.41/containers/VICTIM/exec",
        "application/json",
        r#"{"cmd":["id"],"privileged":true}"#,
        403,
        Effect::VictimUntouched,
    );
    c.raw(
        "update CgroupParent",
        "POST",
        "/v1.41/containers/VICTIM/update",
        "application/json",
        r#"{"CgroupParent":"/"}"#,
        403,
        Effect::VictimUntouched,
    );
    c.raw(
        "update Devices",
        "POST",
        "/v1.41/containers/VICTIM/update",
        "application/json",
        r#"{"Devices":[{"PathOnHost":"/dev/mem","PathInContainer":"/dev/mem","CgroupPermissions":"rwm"}]}"#,
        403,
        Effect::VictimUntouched,
    );
    // Volumes and networks.
    let vol = unique("escvol");
    c.raw(
        "volume with o=bind device=/etc",
        "POST",
        "/v1.41/volumes/create",
        "application/json",
        &format!(r#"{{"Name":"{vol}","DriverOpts":{{"type":"none","o":"bind","device":"/etc"}}}}"#),
        403,
        Effect::NoVolume(vol),
    );
    let vol = unique("escvol");
    c.raw(
        "volume with another driver",
        "POST",
        "/v1.41/volumes/create",
        "application/json",
        &format!(r#"{{"Name":"{vol}","Driver":"sshfs"}}"#),
        403,
        Effect::NoVolume(vol),
    );
    let net = unique("escnet");
    c.raw(
        "network on the host's docker0 bridge",
        "POST",
        "/v1.41/networks/create",
        "application/json",
        &format!(r#"{{"Name":"{net}","Options":{{"com.docker.network.bridge.name":"docker0"}}}}"#),
        403,
        Effect::NoNetwork(net),
    );
    let net = unique("escnet");
    c.raw(
        "macvlan network",
        "POST",
        "/v1.41/networks/create",
        "application/json",
        &format!(r#"{{"Name":"{net}","Driver":"macvlan","Options":{{"parent":"eth0"}}}}"#),
        403,
        Effect::NoNetwork(net),
    );
    c.raw(
        "connect to the host network",
        "POST",
        "/v1.41/networks/host/connect",
        "application/json",
        r#"{"Container":"VICTIM"}"#,
        403,
        Effect::VictimUntouched,
    );
    // Builds and daemon-side fetches.
    c.raw("build with host network", "POST", "/v1.41/build?networkmode=host&t=esc", "application/x-tar", "", 403, Effect::Nothing);
    c.raw("build with a cgroup parent", "POST", "/v1.41/build?cgroupparent=/&t=esc", "application/x-tar", "", 403, Effect::Nothing);
    c.raw("build from a URL fetched by the daemon", "POST", "/v1.41/build?remote=http://10.0.0.1/x.tar", "", "", 403, Effect::Nothing);
    c.raw(
        "build outputs",
        "POST",
        "/v1.41/build?outputs=%5B%7B%22Type%22%3A%22local%22%7D%5D",
        "application/x-tar",
        "",
        403,
        Effect::Nothing,
    );
    c.raw("import from a URL", "POST", "/v1.41/images/create?fromSrc=http://10.0.0.1/rootfs.tar&repo=esc", "", "", 403, Effect::Nothing);
    // Endpoints outside the allowlist, and framing.
    for (method, path) in [
        ("GET", "/v1.41/swarm"),
        ("POST", "/v1.41/swarm/init"),
        ("POST", "/v1.41/services/create"),
        ("GET", "/v1.41/secrets"),
        ("POST", "/v1.41/configs/create"),
        ("GET", "/v1.41/nodes"),
        ("POST", "/v1.41/plugins/pull?remote=evil/plugin"),
        ("GET", "/v1.41/plugins"),
        ("POST", "/v1.41/grpc"),
        ("GET", "/debug/vars"),
        ("GET", "/debug/pprof/heap"),
        ("GET", "/v1.41/containers/VICTIM/checkpoints"),
        ("GET", "/v1.41/nonexistent/endpoint"),
        ("PUT", "/v1.41/volumes/x"),
    ] {
        c.raw(&format!("endpoint {method} {path}"), method, path, "", "", 403, Effect::Nothing);
    }
    c.raw("query with ';' separator", "GET", "/v1.41/containers/json?all=1;size=1", "", "", 400, Effect::Nothing);
    c.raw("non-canonical path", "GET", "/v1.41/containers/../swarm", "", "", 400, Effect::Nothing);
    c.raw("encoded dot segments", "GET", "/v1.41/containers/%2e%2e/swarm", "", "", 400, Effect::Nothing);
    c.raw("bad percent escape", "GET", "/v1.41/containers/%zz/json", "", "", 400, Effect::Nothing);
    c
}

fn inspect(what: &str, name: &str) -> bool {
    docker_output(direct(), &[what, "inspect", name]).status.success()
}

fn victim_state(victim: &str) -> String {
    docker(direct(), &["inspect", victim, "--format", "{{.State.Running}} {{.HostConfig.Privileged}} {{.HostConfig.Binds}} {{.HostConfig.CgroupParent}} {{.HostConfig.Devices}} {{len .ExecIDs}} {{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}"])
}

#[test]
fn escape_attempts_are_refused_and_have_no_effect() {
    let p = Proxy::start_with_config(CONFIG, "d.sock");
    let mut cleanup = Cleanup::new();
    let (victim, stopped) = (unique("victim"), unique("stopped"));
    cleanup.container(&victim);
    cleanup.container(&stopped);
    docker(direct(), &["run", "-d", "--name", &victim, BUSYBOX, "sleep", "300"]);
    docker(direct(), &["create", "--name", &stopped, BUSYBOX, "sleep", "300"]);
    let state = || format!("{} / {}", victim_state(&victim), victim_state(&stopped));
    let before = state();

    let corpus = corpus(&victim, &stopped);
    assert!(corpus.cases.len() >= 60, "the corpus has {} rows", corpus.cases.len());
    let mut failures = Vec::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        let audits_before = p.log_text().matches("ctproxy::audit").count();
        let (status, body) = send(&p.sock, &case.request);
        let message = serde_json::from_str::<serde_json::Value>(body.trim()).ok().and_then(|v| v["message"].as_str().map(str::to_owned));
        if status != case.status {
            failures.push(format!("#{i} {}: status {status}, expected {} ({body})", case.label, case.status));
        }
        match &message {
            Some(m) if m.starts_with("ctproxy: ") => {}
            _ => failures.push(format!("#{i} {}: no Docker-style message in {body:?}", case.label)),
        }
        if case.status == 403 {
            let logged = (0..100).any(|_| {
                let n = p.log_text().matches("ctproxy::audit").count();
                n > audits_before || {
                    std::thread::sleep(Duration::from_millis(10));
                    false
                }
            });
            if !logged {
                failures.push(format!("#{i} {}: no audit line", case.label));
            }
        }
        let effect = match &case.effect {
            Effect::NoContainer(n) if inspect("container", n) => {
                cleanup.container(n);
                Some("a container was created")
            }
            Effect::NoVolume(n) if inspect("volume", n) => {
                cleanup.volume(n);
                Some("a volume was created")
            }
            Effect::NoNetwork(n) if inspect("network", n) => {
                cleanup.network(n);
                Some("a network was created")
            }
            Effect::VictimUntouched if state() != before => Some("a victim container changed"),
            _ => None,
        };
        if let Some(e) = effect {
            failures.push(format!("#{i} {}: {e}", case.label));
        }
    }
    assert!(failures.is_empty(), "{} of {} escape rows failed:\n{}", failures.len(), corpus.cases.len(), failures.join("\n"));
}

#[test]
fn a_refusal_on_a_keep_alive_connection_after_a_legitimate_request() {
    let p = Proxy::start_with_config(CONFIG, "d.sock");
    let name = unique("esc");
    let mut both = b"GET /v1.41/containers/json HTTP/1.1\r\nHost: d\r\n\r\n".to_vec();
    both.extend(request(
        "POST",
        &format!("/v1.41/containers/create?name={name}"),
        "application/json",
        format!(r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Privileged":true}}}}"#).as_bytes(),
        false,
    ));
    let rsp = String::from_utf8_lossy(&raw_request(&p.sock, &both, Duration::from_secs(10))).into_owned();
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    assert!(rsp.contains("HTTP/1.1 403"), "the second request on the connection must be checked too: {rsp}");
    assert!(!inspect("container", &name));
}
