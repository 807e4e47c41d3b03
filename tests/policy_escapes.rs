//! Acceptance corpus for the `conservative` policy against the real dockerd: every row is one raw
//! HTTP request (or a pipelined sequence ending in one) over the proxy's unix socket that tries to
//! elevate privilege or reach the host. Each row states the status it must get (403 refused by the
//! policy, 400 malformed, 413 oversized), and the test checks, per row:
//! - the status, and a Docker-style JSON `message` (`ctproxy: ... is not allowed by policy strict; <remedy>`
//!   for 403, naming the reason the row expects);
//! - a new audit line in the proxy's log;
//! - that the daemon shows no effect: the uniquely named container / volume / network / image does
//!   not exist, the victim containers' host configuration, exec instances, networks and state are
//!   unchanged, the daemon fetched nothing from the test's HTTP trap, the node joined no swarm.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;

/// `/run` is allowed on purpose: the Docker socket and the directories holding it stay refused.
const CONFIG: &str = r#"
[listener.t]
address = "unix://{dir}/d.sock"
policies = ["strict"]
[policy.strict]
kind = "conservative"
allowed_bind_paths = ["{dir}/allowed", "/run"]
"#;

const JSON: (&str, &str) = ("Content-Type", "application/json");
const TAR: (&str, &str) = ("Content-Type", "application/x-tar");

/// What must not have happened on the daemon after a row.
enum Effect {
    NoContainer(String),
    NoVolume(String),
    NoNetwork(String),
    NoImage(String),
    /// The running victim: same host configuration, no exec instance, same networks.
    Victim,
    /// The stopped victim: still not running, same host configuration.
    Stopped,
    /// The node is still outside any swarm.
    NoSwarm,
    /// A plugin of this name is not installed.
    NoPlugin(String),
    /// Refusal of a read-only endpoint: the status, message and audit line are the check.
    Nothing,
    /// Every one of these.
    All(Vec<Effect>),
}

struct Row {
    label: String,
    /// The bytes written on one connection: zero or more pipelined requests, then the one under test.
    request: Vec<u8>,
    /// Statuses of the pipelined requests before the one under test.
    before: Vec<u16>,
    status: u16,
    /// A substring the refusal message must contain (the reason it was refused).
    why: String,
    effect: Effect,
}

struct Corpus {
    rows: Vec<Row>,
    victim: String,
    stopped: String,
    allowed: String,
    trap: String,
    tar: Vec<u8>,
}

impl Corpus {
    fn fill(&self, s: &str) -> String {
        s.replace("IMAGE", BUSYBOX)
            .replace("VICTIM", &self.victim)
            .replace("STOPPED", &self.stopped)
            .replace("ALLOWED", &self.allowed)
            .replace("TRAP", &self.trap)
    }

    /// `POST /v1.41/containers/create?name=<unique>` with a JSON body: refused (403) for `why`.
    fn create(&mut self, label: &str, body: &str, why: &str) {
        self.create_framed(label, "/v1.41", &[JSON], body.as_bytes(), BodyFraming::Length, 403, why);
    }

    #[allow(clippy::too_many_arguments)]
    fn create_framed(
        &mut self,
        label: &str,
        prefix: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        framing: BodyFraming,
        status: u16,
        why: &str,
    ) {
        let name = unique("esc");
        let body = self.fill(&String::from_utf8_lossy(body));
        let request = http_request("POST", &format!("{prefix}/containers/create?name={name}"), headers, body.as_bytes(), framing);
        self.rows.push(Row {
            label: label.to_owned(),
            request,
            before: Vec::new(),
            status,
            why: why.to_owned(),
            effect: Effect::NoContainer(name),
        });
    }

    /// Any request with a `Content-Length` body.
    #[allow(clippy::too_many_arguments)]
    fn req(&mut self, label: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str, status: u16, why: &str, effect: Effect) {
        let request = http_request(method, &self.fill(path), headers, self.fill(body).as_bytes(), BodyFraming::Length);
        self.rows.push(Row { label: label.to_owned(), request, before: Vec::new(), status, why: why.to_owned(), effect });
    }

    /// A request under test, built by the caller.
    fn raw(&mut self, label: &str, request: Vec<u8>, before: Vec<u16>, status: u16, why: &str, effect: Effect) {
        self.rows.push(Row { label: label.to_owned(), request, before, status, why: why.to_owned(), effect });
    }

    fn volume(&mut self, label: &str, body: &str, why: &str) {
        let name = unique("escvol");
        let body = self.fill(body).replace("NAME", &name);
        self.req(label, "POST", "/v1.41/volumes/create", &[JSON], &body, 403, why, Effect::NoVolume(name));
    }

    fn network(&mut self, label: &str, body: &str, why: &str) {
        let name = unique("escnet");
        let body = self.fill(body).replace("NAME", &name);
        self.req(label, "POST", "/v1.41/networks/create", &[JSON], &body, 403, why, Effect::NoNetwork(name));
    }

    /// `POST /build` with extra query parameters and a real build context: refused before it runs.
    fn build(&mut self, label: &str, query: &str, why: &str) {
        let tag = unique("escimg");
        let path = format!("/v1.41/build?t={tag}&{}", self.fill(query));
        let request = http_request("POST", &path, &[TAR], &self.tar, BodyFraming::Length);
        self.rows.push(Row {
            label: label.to_owned(),
            request,
            before: Vec::new(),
            status: 403,
            why: why.to_owned(),
            effect: Effect::NoImage(tag),
        });
    }
}

/// A tar archive holding one file called `Dockerfile` (ustar, written by hand).
fn tar_with_dockerfile(content: &str) -> Vec<u8> {
    let mut header = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, s: &[u8]| h[at..at + s.len()].copy_from_slice(s);
    field(&mut header, 0, b"Dockerfile");
    field(&mut header, 100, b"0000644\0");
    field(&mut header, 108, b"0000000\0");
    field(&mut header, 116, b"0000000\0");
    field(&mut header, 124, format!("{:011o}\0", content.len()).as_bytes());
    field(&mut header, 136, b"00000000000\0");
    field(&mut header, 156, b"0");
    field(&mut header, 257, b"ustar\0");
    field(&mut header, 263, b"00");
    field(&mut header, 148, b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    field(&mut header, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content.as_bytes());
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// An HTTP server on loopback that counts connections: a daemon-side fetch (`fromSrc=`, `remote=`)
/// that got through would show up here. dockerd shares the test's network namespace.
struct Trap {
    hits: Arc<AtomicUsize>,
    url: String,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trap");
        let url = format!("http://{}", listener.local_addr().expect("trap address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Ok(mut c) = conn {
                    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
                    let _ = c.read(&mut [0u8; 4096]);
                    let _ = c.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n");
                }
            }
        });
        Trap { hits, url }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn corpus(victim: &str, stopped: &str, allowed: &Path, trap: &str) -> Vec<Row> {
    let mut c = Corpus {
        rows: Vec::new(),
        victim: victim.to_owned(),
        stopped: stopped.to_owned(),
        allowed: allowed.display().to_string(),
        trap: trap.to_owned(),
        tar: Vec::new(),
    };
    c.tar = tar_with_dockerfile(&format!("FROM {BUSYBOX}\nRUN cat /proc/net/dev > /netdev\n"));

    // --- Privileged, in every spelling dockerd reads. ---
    let pm = "privileged mode";
    c.create("Privileged", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#, pm);
    c.create("privileged, lower-case keys", r#"{"image":"IMAGE","hostconfig":{"privileged":true}}"#, pm);
    c.create("PRIVILEGED, upper-case keys", r#"{"Image":"IMAGE","HOSTCONFIG":{"PRIVILEGED":true}}"#, pm);
    c.create("Privileg\\u0065d (JSON escape in the key)", r#"{"Image":"IMAGE","HostConfig":{"Privileg\u0065d":true}}"#, pm);
    c.create("Ho\\u017ftConfig (long s folds to s)", r#"{"Image":"IMAGE","Ho\u017ftConfig":{"Privileged":true}}"#, pm);
    c.create("HostConfig with a raw UTF-8 long s", "{\"Image\":\"IMAGE\",\"Ho\u{17f}tConfig\":{\"Privileged\":true}}", pm);
    c.create("duplicate key, the last one wins", r#"{"Image":"IMAGE","HostConfig":{"Privileged":false,"Privileged":true}}"#, pm);
    c.create("duplicate key in another case", r#"{"Image":"IMAGE","HostConfig":{"Privileged":false,"pRiViLeGeD":true}}"#, pm);
    c.create(
        "duplicate HostConfig objects are merged",
        r#"{"Image":"IMAGE","HostConfig":{"Privileged":true},"hostconfig":{"Memory":0}}"#,
        pm,
    );
    c.create("null does not reset a bool", r#"{"Image":"IMAGE","HostConfig":{"Privileged":true,"Privileged":null}}"#, pm);
    c.create("Privileged as a number", r#"{"Image":"IMAGE","HostConfig":{"Privileged":1}}"#, pm);
    c.create("top-level Privileged (deprecated embedded HostConfig)", r#"{"Image":"IMAGE","PRIVILEGED":true}"#, pm);
    c.create("top-level Privileged after a null HostConfig", r#"{"Image":"IMAGE","HostConfig":null,"Privileged":true}"#, pm);
    c.create(
        "HostConfig reset to null, then top-level",
        r#"{"Image":"IMAGE","HostConfig":{"Memory":1},"HostConfig":null,"privileged":true}"#,
        pm,
    );
    c.create_framed(
        "Privileged in a chunked body (keys split across chunks)",
        "/v1.41",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Chunked,
        403,
        pm,
    );
    c.create_framed(
        "Privileged without a version prefix",
        "",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        403,
        pm,
    );
    c.create_framed(
        "Privileged on /v1.041/",
        "/v1.041",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        403,
        pm,
    );
    c.create_framed(
        "Privileged on /v1.41.0/",
        "/v1.41.0",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        403,
        pm,
    );

    // --- Capabilities. ---
    c.create("CapAdd SYS_ADMIN", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["SYS_ADMIN"]}}"#, "capability SYS_ADMIN");
    c.create("CapAdd sys_admin", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["sys_admin"]}}"#, "capability sys_admin");
    c.create("CapAdd CAP_SYS_ADMIN", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["CAP_SYS_ADMIN"]}}"#, "capability CAP_SYS_ADMIN");
    c.create("CapAdd ALL", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["ALL"]}}"#, "capability ALL");
    c.create("CapAdd as one string", r#"{"Image":"IMAGE","HostConfig":{"CapAdd":"SYS_PTRACE"}}"#, "capability SYS_PTRACE");
    c.create(
        "CapAdd with a long s (Go upper-cases it to SYS_ADMIN)",
        r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["\u017fys_admin"]}}"#,
        "capability",
    );
    c.create(
        "CapAdd NET_ADMIN after an allowed one",
        r#"{"Image":"IMAGE","HostConfig":{"CapAdd":["CHOWN","NET_ADMIN"]}}"#,
        "capability NET_ADMIN",
    );
    c.create("top-level CapAdd", r#"{"Image":"IMAGE","CapAdd":["SYS_MODULE"]}"#, "capability SYS_MODULE");
    c.create("Capabilities (whole set)", r#"{"Image":"IMAGE","HostConfig":{"Capabilities":["CAP_SYS_ADMIN"]}}"#, "a capability set");

    // --- Devices. ---
    c.create(
        "Devices",
        r#"{"Image":"IMAGE","HostConfig":{"Devices":[{"PathOnHost":"/dev/mem","PathInContainer":"/dev/mem","CgroupPermissions":"rwm"}]}}"#,
        "host devices",
    );
    c.create(
        "Device\\u017f (long s)",
        r#"{"Image":"IMAGE","HostConfig":{"Device\u017f":[{"PathOnHost":"/dev/kmsg","PathInContainer":"/dev/kmsg"}]}}"#,
        "host devices",
    );
    c.create(
        "DeviceRequests",
        r#"{"Image":"IMAGE","HostConfig":{"DeviceRequests":[{"Driver":"nvidia","Count":-1,"Capabilities":[["gpu"]]}]}}"#,
        "device requests",
    );
    c.create("DeviceCgroupRules", r#"{"Image":"IMAGE","HostConfig":{"DeviceCgroupRules":["c *:* rwm"]}}"#, "device cgroup rules");
    c.create(
        "top-level devices",
        r#"{"Image":"IMAGE","devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda"}]}"#,
        "host devices",
    );
    c.create(
        "BlkioDeviceReadBps",
        r#"{"Image":"IMAGE","HostConfig":{"BlkioDeviceReadBps":[{"Path":"/dev/sda","Rate":1}]}}"#,
        "host block devices",
    );

    // --- Security options and masked paths. ---
    c.create("seccomp=unconfined", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["seccomp=unconfined"]}}"#, "security option");
    c.create(
        "seccomp:unconfined (legacy separator)",
        r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["seccomp:unconfined"]}}"#,
        "security option",
    );
    c.create("apparmor=unconfined", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["apparmor=unconfined"]}}"#, "security option");
    c.create("label=disable", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["label=disable"]}}"#, "security option");
    c.create("systempaths=unconfined", r#"{"Image":"IMAGE","HostConfig":{"SecurityOpt":["systempaths=unconfined"]}}"#, "security option");
    c.create(
        "\\u017fecurityOpt after no-new-privileges",
        r#"{"Image":"IMAGE","HostConfig":{"\u017fecurityOpt":["no-new-privileges","seccomp=unconfined"]}}"#,
        "security option",
    );
    c.create("MaskedPaths emptied", r#"{"Image":"IMAGE","HostConfig":{"MaskedPaths":[]}}"#, "changing masked paths");
    c.create(
        "Ma\\u017f\\u212aedPaths (long s, Kelvin sign)",
        r#"{"Image":"IMAGE","HostConfig":{"Ma\u017f\u212aedPaths":[]}}"#,
        "changing masked paths",
    );
    c.create("ReadonlyPaths emptied", r#"{"Image":"IMAGE","HostConfig":{"ReadonlyPaths":[]}}"#, "changing read-only paths");

    // --- Host namespaces, and other containers' namespaces. ---
    for (field, ns) in [
        ("NetworkMode", "network"),
        ("PidMode", "pid"),
        ("IpcMode", "ipc"),
        ("UTSMode", "uts"),
        ("UsernsMode", "userns"),
        ("CgroupnsMode", "cgroupns"),
    ] {
        let why = format!("the host's {ns} namespace");
        c.create(&format!("{field}=host"), &format!(r#"{{"Image":"IMAGE","HostConfig":{{"{field}":"host"}}}}"#), &why);
    }
    c.create("pidmode=host, lower-case key", r#"{"Image":"IMAGE","HostConfig":{"pidmode":"host"}}"#, "the host's pid namespace");
    c.create(
        "U\\u017fern\\u017fMode=host",
        r#"{"Image":"IMAGE","HostConfig":{"U\u017fern\u017fMode":"host"}}"#,
        "the host's userns namespace",
    );
    c.create("top-level NetworkMode=host", r#"{"Image":"IMAGE","NetworkMode":"host"}"#, "the host's network namespace");
    c.create(
        "PidMode=container:VICTIM",
        r#"{"Image":"IMAGE","HostConfig":{"PidMode":"container:VICTIM"}}"#,
        "joining another container's pid",
    );
    c.create(
        "NetworkMode=container:VICTIM",
        r#"{"Image":"IMAGE","HostConfig":{"NetworkMode":"container:VICTIM"}}"#,
        "joining another container's network",
    );
    c.create(
        "IpcMode=container:VICTIM",
        r#"{"Image":"IMAGE","HostConfig":{"IpcMode":"container:VICTIM"}}"#,
        "joining another container's ipc",
    );
    c.create("VolumesFrom VICTIM", r#"{"Image":"IMAGE","HostConfig":{"VolumesFrom":["VICTIM:ro"]}}"#, "mounts of another container");
    c.create("EndpointsConfig host", r#"{"Image":"IMAGE","NetworkingConfig":{"EndpointsConfig":{"host":{}}}}"#, "the host network");
    c.create(
        "endpoint DriverOpts",
        r#"{"Image":"IMAGE","NetworkingConfig":{"EndpointsConfig":{"bridge":{"DriverOpts":{"com.docker.network.endpoint.sysctls":"net.ipv4.conf.all.forwarding=1"}}}}}"#,
        "endpoint driver options",
    );

    // --- Host paths: Binds. ---
    for (bind, why) in [
        ("/:/host", "mounting /, which holds the Docker socket"),
        ("/etc:/h", "bind mount of host path /etc"),
        ("/etc:/h:ro", "bind mount of host path /etc"),
        ("/var/run/docker.sock:/var/run/docker.sock", "Docker socket"),
        ("/run/docker.sock:/s", "Docker socket"),
        ("/run:/r", "mounting /run, which holds the Docker socket"),
        ("/var/run:/r", "mounting /var/run, which holds the Docker socket"),
        ("/run/../run/docker.sock:/s", "Docker socket"),
        ("/tmp/../etc:/h", "bind mount of host path /etc"),
        ("ALLOWED/../../../../etc:/h", "bind mount of host path /etc"),
        ("ALLOWED/etc-link:/h", "bind mount of host path /etc"),
        ("ALLOWED:/a:rshared", "mount propagation rshared"),
        ("ALLOWED:/a:ro,slave", "mount propagation slave"),
        ("ALLOWED:/a:z", "SELinux relabelling"),
        ("/proc:/hp", "bind mount of host path /proc"),
    ] {
        c.create(&format!("Binds {bind}"), &format!(r#"{{"Image":"IMAGE","HostConfig":{{"Binds":["{bind}"]}}}}"#), why);
    }
    c.create("Bind\\u017f (long s) /etc", r#"{"Image":"IMAGE","HostConfig":{"Bind\u017f":["/etc:/h"]}}"#, "bind mount of host path /etc");
    c.create("top-level Binds", r#"{"Image":"IMAGE","Binds":["/etc:/h"]}"#, "bind mount of host path /etc");
    c.create(
        "Binds: a volume first, then /etc",
        r#"{"Image":"IMAGE","HostConfig":{"Binds":["data:/d","/etc:/h"]}}"#,
        "HostConfig.Binds[1]",
    );

    // --- Host paths: Mounts. ---
    c.create(
        "Mounts bind /etc",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"/etc","Target":"/h"}]}}"#,
        "bind mount of host path /etc",
    );
    c.create(
        "mounts/type/source, lower-case keys",
        r#"{"Image":"IMAGE","hostconfig":{"mounts":[{"type":"bind","source":"/","target":"/h"}]}}"#,
        "mounting /, which holds the Docker socket",
    );
    c.create(
        "MOUNTS/TYPE, upper-case keys",
        r#"{"Image":"IMAGE","HostConfig":{"MOUNTS":[{"TYPE":"bind","SOURCE":"/root","TARGET":"/h"}]}}"#,
        "bind mount of host path /root",
    );
    c.create(
        "Mounts bind of the docker socket",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"/var/run/docker.sock","Target":"/s"}]}}"#,
        "Docker socket",
    );
    c.create(
        "Mounts bind, propagation rshared",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"bind","Source":"ALLOWED","Target":"/a","BindOptions":{"Propagation":"rshared"}}]}}"#,
        "mount propagation rshared",
    );
    c.create(
        "Mounts type Bind (not a type dockerd knows)",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"Bind","Source":"/etc","Target":"/h"}]}}"#,
        "mount type",
    );
    c.create(
        "Mounts npipe",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"npipe","Source":"/run/docker.sock","Target":"/x"}]}}"#,
        "mount type \"npipe\"",
    );
    c.create(
        "Mounts volume with o=bind device=/etc",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"volume","Source":"escvol","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/etc"}}}}]}}"#,
        "volume driver options",
    );
    c.create(
        "Mounts volume, lower-case driverconfig options",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"type":"volume","target":"/v","volumeoptions":{"driverconfig":{"options":{"o":"bind","device":"/"}}}}]}}"#,
        "volume driver options",
    );
    c.create(
        "Mounts volume with another driver",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"volume","Source":"escvol","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"vieux/sshfs"}}}]}}"#,
        "volume driver",
    );
    c.create(
        "unknown key in a mount",
        r#"{"Image":"IMAGE","HostConfig":{"Mounts":[{"Type":"tmpfs","Target":"/t","HostPath":"/etc"}]}}"#,
        "the unknown field",
    );
    c.create("VolumeDriver", r#"{"Image":"IMAGE","HostConfig":{"VolumeDriver":"convoy","Binds":["v:/v"]}}"#, "volume driver");

    // --- Kernel, cgroups, runtime, logging. ---
    c.create(
        "sysctl kernel.core_pattern",
        r#"{"Image":"IMAGE","HostConfig":{"Sysctls":{"kernel.core_pattern":"|/tmp/x"}}}"#,
        "sysctl kernel.core_pattern",
    );
    c.create(
        "sysctl kernel.modprobe",
        r#"{"Image":"IMAGE","HostConfig":{"Sysctls":{"kernel.modprobe":"/tmp/x"}}}"#,
        "sysctl kernel.modprobe",
    );
    c.create(
        "sysctl in slash form",
        r#"{"Image":"IMAGE","HostConfig":{"Sysctls":{"kernel/core_pattern":"|/tmp/x"}}}"#,
        "sysctl kernel/core_pattern",
    );
    c.create(
        "Sy\\u017fctls after an allowed one",
        r#"{"Image":"IMAGE","HostConfig":{"Sy\u017fctls":{"net.ipv4.ip_forward":"1","vm.overcommit_memory":"1"}}}"#,
        "sysctl vm.",
    );
    c.create("CgroupParent", r#"{"Image":"IMAGE","HostConfig":{"CgroupParent":"/"}}"#, "a cgroup parent");
    c.create("top-level CgroupParent", r#"{"Image":"IMAGE","CgroupParent":"system.slice"}"#, "a cgroup parent");
    c.create("Runtime other than runc", r#"{"Image":"IMAGE","HostConfig":{"Runtime":"runsc"}}"#, "runtime \"runsc\"");
    c.create("OomKillDisable", r#"{"Image":"IMAGE","HostConfig":{"OomKillDisable":true}}"#, "disabling the OOM killer");
    c.create(
        "Oom\\u212aillDisable (Kelvin sign)",
        r#"{"Image":"IMAGE","HostConfig":{"Oom\u212aillDisable":true}}"#,
        "disabling the OOM killer",
    );
    c.create("negative OomScoreAdj", r#"{"Image":"IMAGE","HostConfig":{"OomScoreAdj":-1000}}"#, "negative OOM score");
    c.create("CpuRealtimeRuntime", r#"{"Image":"IMAGE","HostConfig":{"CpuRealtimeRuntime":950000}}"#, "realtime scheduling");
    c.create("ulimit rtprio", r#"{"Image":"IMAGE","HostConfig":{"Ulimits":[{"Name":"rtprio","Soft":99,"Hard":99}]}}"#, "ulimit rtprio");
    c.create(
        "ulimit RTPRIO (dockerd upper-cases the name)",
        r#"{"Image":"IMAGE","HostConfig":{"Ulimits":[{"Name":"RTPRIO","Soft":99,"Hard":99}]}}"#,
        "ulimit RTPRIO",
    );
    c.create(
        "ulimit rtpr\\u0131o (dotless i upper-cases to I)",
        r#"{"Image":"IMAGE","HostConfig":{"Ulimits":[{"Name":"rtpr\u0131o","Soft":99,"Hard":99}]}}"#,
        "ulimit rtpr",
    );
    c.create(
        "ulimit Memlock after nofile",
        r#"{"Image":"IMAGE","HostConfig":{"Ulimits":[{"Name":"nofile","Soft":1024,"Hard":1024},{"name":"Memlock","soft":-1,"hard":-1}]}}"#,
        "ulimit Memlock",
    );
    c.create(
        "LogConfig syslog",
        r#"{"Image":"IMAGE","HostConfig":{"LogConfig":{"Type":"syslog","Config":{"syslog-address":"udp://10.0.0.1:514"}}}}"#,
        "log driver \"syslog\"",
    );
    c.create(
        "LogConfig gelf, lower-case keys",
        r#"{"Image":"IMAGE","HostConfig":{"logconfig":{"type":"gelf","config":{"gelf-address":"udp://10.0.0.1:12201"}}}}"#,
        "log driver \"gelf\"",
    );
    c.create("Isolation hyperv", r#"{"Image":"IMAGE","HostConfig":{"Isolation":"hyperv"}}"#, "an isolation technology");
    c.create("OCI Annotations", r#"{"Image":"IMAGE","HostConfig":{"Annotations":{"io.kubernetes.cri.x":"y"}}}"#, "OCI annotations");
    c.create(
        "unknown HostConfig field",
        r#"{"Image":"IMAGE","HostConfig":{"FutureField":true}}"#,
        "the unknown field HostConfig.FutureField",
    );
    c.create(
        "unknown NetworkingConfig field",
        r#"{"Image":"IMAGE","NetworkingConfig":{"FutureField":{}}}"#,
        "the unknown field NetworkingConfig.FutureField",
    );

    // --- Malformed, oversized and form bodies (400 / 413: nothing that dockerd could read differently is forwarded). ---
    c.create_framed(
        "trailing second JSON document",
        "/v1.41",
        &[JSON],
        br#"{"Image":"IMAGE"} {"HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        400,
        "invalid JSON",
    );
    c.create_framed(
        "truncated JSON",
        "/v1.41",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true"#,
        BodyFraming::Length,
        400,
        "invalid JSON",
    );
    c.create_framed(
        "HostConfig of the wrong type",
        "/v1.41",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":"privileged"}"#,
        BodyFraming::Length,
        400,
        "cannot decode",
    );
    c.create_framed(
        "Binds as a string",
        "/v1.41",
        &[JSON],
        br#"{"Image":"IMAGE","HostConfig":{"Binds":"/:/host"}}"#,
        BodyFraming::Length,
        400,
        "cannot decode",
    );
    c.create_framed(
        "JSON body with a text/plain content type",
        "/v1.41",
        &[("Content-Type", "text/plain")],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        400,
        "content type",
    );
    c.create_framed(
        "JSON body without a content type",
        "/v1.41",
        &[],
        br#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        BodyFraming::Length,
        400,
        "content type",
    );
    let big = format!(r#"{{"Image":"IMAGE","Env":["PAD={}"],"HostConfig":{{"Privileged":true}}}}"#, "A".repeat(2 << 20));
    c.create_framed("JSON body over the 1 MiB limit", "/v1.41", &[JSON], big.as_bytes(), BodyFraming::Length, 413, "larger than");
    c.create_framed("chunked JSON body over the limit", "/v1.41", &[JSON], big.as_bytes(), BodyFraming::Chunked, 413, "larger than");
    c.create_framed(
        "form-encoded create",
        "/v1.41",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"HostConfig=privileged",
        BodyFraming::Length,
        400,
        "application/x-www-form-urlencoded",
    );
    c.create_framed(
        "multipart create",
        "/v1.41",
        &[("Content-Type", "multipart/form-data; boundary=x")],
        b"--x--\r\n",
        BodyFraming::Length,
        400,
        "multipart/form-data",
    );

    // Go lower-cases the media type with Unicode rules (U+0130 is `i`) and reads the form even if a
    // parameter is malformed: dockerd then takes `fromSrc` (or build options) from the body.
    let repo = unique("escimp");
    let form = format!("fromSrc={}/rootfs.tar&repo={repo}", c.trap);
    for (label, ct) in [
        ("form body overriding the query (fromSrc)", "application/x-www-form-urlencoded"),
        ("form body, upper-case content type", "Application/X-WWW-Form-Urlencoded"),
        ("form body, content type with U+0130 (Go lower-cases it to i)", "appl\u{130}cation/x-www-form-urlencoded"),
        ("form body, content type with a non-ASCII parameter", "application/x-www-form-urlencoded; charset=@XFF@"),
    ] {
        let mut request = http_request("POST", "/v1.41/images/create", &[("Content-Type", ct)], form.as_bytes(), BodyFraming::Length);
        replace_marker(&mut request);
        let why = if ct.is_ascii() { "is not accepted" } else { "not plain ASCII" };
        c.raw(label, request, Vec::new(), 400, why, Effect::NoImage(repo.clone()));
    }
    let tag = unique("escimg");
    c.raw(
        "multipart body with U+0130 in the content type, overriding build options",
        http_request(
            "POST",
            &format!("/v1.41/build?t={tag}&version=2&remote=client-session&session=x"),
            &[("Content-Type", "mult\u{130}part/form-data; boundary=b")],
            b"--b\r\nContent-Disposition: form-data; name=\"networkmode\"\r\n\r\nhost\r\n--b--\r\n",
            BodyFraming::Length,
        ),
        Vec::new(),
        400,
        "not plain ASCII",
        Effect::NoImage(tag),
    );
    let tag = unique("escimg");
    let mut request = http_request(
        "POST",
        &format!("/v1.41/build?t={tag}&version=2&remote=client-session&session=x"),
        &[("Content-Type", "application/x-www-form-urlencoded; charset=@XFF@")],
        b"networkmode=host&cgroupparent=/",
        BodyFraming::Length,
    );
    replace_marker(&mut request);
    c.raw(
        "form body with a non-ASCII content type, overriding build options",
        request,
        Vec::new(),
        400,
        "not plain ASCII",
        Effect::NoImage(tag),
    );

    // --- The running victim: exec, update, network connect. ---
    let exec = "/v1.41/containers/VICTIM/exec";
    c.req("privileged exec", "POST", exec, &[JSON], r#"{"Cmd":["id"],"Privileged":true}"#, 403, "a privileged exec", Effect::Victim);
    c.req(
        "privileged exec, lower-case",
        "POST",
        exec,
        &[JSON],
        r#"{"cmd":["id"],"privileged":true}"#,
        403,
        "a privileged exec",
        Effect::Victim,
    );
    c.req(
        "privileged exec, duplicate keys",
        "POST",
        exec,
        &[JSON],
        r#"{"Cmd":["id"],"Privileged":false,"PRIVILEGED":true}"#,
        403,
        "a privileged exec",
        Effect::Victim,
    );
    c.raw(
        "privileged exec, chunked",
        http_request("POST", &c.fill(exec), &[JSON], br#"{"Cmd":["id"],"Privileged":true}"#, BodyFraming::Chunked),
        Vec::new(),
        403,
        "a privileged exec",
        Effect::Victim,
    );
    c.req(
        "exec with a form body",
        "POST",
        exec,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "Privileged=1",
        400,
        "is not accepted",
        Effect::Victim,
    );
    let update = "/v1.41/containers/VICTIM/update";
    c.req("update CgroupParent", "POST", update, &[JSON], r#"{"CgroupParent":"/"}"#, 403, "updating CgroupParent", Effect::Victim);
    c.req(
        "update Devices",
        "POST",
        update,
        &[JSON],
        r#"{"devices":[{"PathOnHost":"/dev/mem","PathInContainer":"/dev/mem","CgroupPermissions":"rwm"}]}"#,
        403,
        "updating Devices",
        Effect::Victim,
    );
    c.req(
        "update DeviceCgroupRules",
        "POST",
        update,
        &[JSON],
        r#"{"DeviceCgroupRules":["a *:* rwm"]}"#,
        403,
        "updating DeviceCgroupRules",
        Effect::Victim,
    );
    c.req("update OomKillDisable", "POST", update, &[JSON], r#"{"OomKillDisable":true}"#, 403, "updating OomKillDisable", Effect::Victim);
    c.req(
        "update Ulimits",
        "POST",
        update,
        &[JSON],
        r#"{"Ulimits":[{"Name":"memlock","Soft":-1,"Hard":-1}]}"#,
        403,
        "updating Ulimits",
        Effect::Victim,
    );
    c.req(
        "update with an unknown field",
        "POST",
        update,
        &[JSON],
        r#"{"Privileged":true}"#,
        403,
        "the unknown field Privileged",
        Effect::Victim,
    );
    c.req(
        "connect VICTIM to the host network",
        "POST",
        "/v1.41/networks/host/connect",
        &[JSON],
        r#"{"Container":"VICTIM"}"#,
        403,
        "connecting to the host network",
        Effect::Victim,
    );
    c.req(
        "connect with endpoint DriverOpts",
        "POST",
        "/v1.41/networks/bridge/connect",
        &[JSON],
        r#"{"Container":"VICTIM","EndpointConfig":{"DriverOpts":{"com.docker.network.endpoint.sysctls":"x"}}}"#,
        403,
        "endpoint driver options",
        Effect::Victim,
    );

    // --- The stopped victim: old APIs apply a HostConfig sent to start. ---
    let body = r#"{"Binds":["/:/host"],"Privileged":true}"#;
    c.req(
        "start with a HostConfig body on API 1.23",
        "POST",
        "/v1.23/containers/STOPPED/start",
        &[JSON],
        body,
        403,
        "API version 1.23",
        Effect::Stopped,
    );
    c.req(
        "start with a HostConfig body on API 1.12",
        "POST",
        "/v1.12/containers/STOPPED/start",
        &[JSON],
        body,
        403,
        "API version 1.12",
        Effect::Stopped,
    );
    c.req(
        "start with a body on API 1.41",
        "POST",
        "/v1.41/containers/STOPPED/start",
        &[JSON],
        body,
        400,
        "takes no request body",
        Effect::Stopped,
    );
    c.raw(
        "start with a chunked body, no version prefix",
        http_request("POST", &c.fill("/containers/STOPPED/start"), &[JSON], body.as_bytes(), BodyFraming::Chunked),
        Vec::new(),
        400,
        "takes no request body",
        Effect::Stopped,
    );
    c.req(
        "start from a checkpoint",
        "POST",
        "/v1.41/containers/STOPPED/start?checkpoint=cp",
        &[],
        "",
        403,
        "starting from a checkpoint",
        Effect::Stopped,
    );
    c.create_framed("create on API 1.23", "/v1.23", &[JSON], br#"{"Image":"IMAGE"}"#, BodyFraming::Length, 403, "API version 1.23");

    // --- Volumes and networks. ---
    c.volume(
        "volume with o=bind device=/etc",
        r#"{"Name":"NAME","DriverOpts":{"type":"none","o":"bind","device":"/etc"}}"#,
        "volume driver options",
    );
    c.volume(
        "volume, lower-case driveropts",
        r#"{"name":"NAME","driveropts":{"type":"none","o":"bind","device":"/"}}"#,
        "volume driver options",
    );
    c.volume(
        "volume over NFS",
        r#"{"Name":"NAME","DriverOpts":{"type":"nfs","o":"addr=10.0.0.1","device":":/export"}}"#,
        "volume driver options",
    );
    c.volume("volume with another driver", r#"{"Name":"NAME","Driver":"vieux/sshfs"}"#, "volume driver \"vieux/sshfs\"");
    c.network("network with driver host", r#"{"Name":"NAME","Driver":"host"}"#, "network driver \"host\"");
    c.network("macvlan network", r#"{"Name":"NAME","Driver":"macvlan","Options":{"parent":"eth0"}}"#, "network driver \"macvlan\"");
    c.network(
        "ipvlan network, lower-case keys",
        r#"{"name":"NAME","driver":"ipvlan","options":{"parent":"eth0"}}"#,
        "network driver \"ipvlan\"",
    );
    c.network(
        "bridge network on docker0",
        r#"{"Name":"NAME","Options":{"com.docker.network.bridge.name":"docker0"}}"#,
        "network option com.docker.network.bridge.name",
    );
    c.network("IPAM driver", r#"{"Name":"NAME","IPAM":{"Driver":"evil"}}"#, "IPAM driver");
    c.network("ingress network", r#"{"Name":"NAME","Ingress":true}"#, "an ingress network");
    c.network("ConfigFrom", r#"{"Name":"NAME","ConfigFrom":{"Network":"host"}}"#, "a network from a config");

    // --- Builds and fetches by the daemon. ---
    c.build("build with networkmode=host", "networkmode=host", "build network mode");
    c.build("BuildKit build with networkmode=host", "networkmode=host&version=2&remote=client-session&session=x", "build network mode");
    c.build("build in another container's network", "networkmode=container:VICTIM", "build network mode");
    c.build("build, second networkmode ignored but the first is host", "networkmode=host&networkmode=default", "build network mode");
    c.build("build with a cgroup parent", "cgroupparent=/", "a build cgroup parent");
    c.build(
        "build with outputs",
        "outputs=%5B%7B%22Type%22%3A%22local%22%2C%22Attrs%22%3A%7B%22dest%22%3A%22%2Ftmp%22%7D%7D%5D",
        "build outputs",
    );
    c.build("build with squash", "squash=1", "squashing");
    c.build("build with isolation", "isolation=hyperv", "a build isolation");
    c.build("build with security options", "securityopt=seccomp%3Dunconfined", "build security options");
    c.build(
        "build with ulimit memlock",
        "ulimits=%5B%7B%22Name%22%3A%22memlock%22%2C%22Hard%22%3A-1%2C%22Soft%22%3A-1%7D%5D",
        "ulimit memlock",
    );
    c.build(
        "build with ulimit MEMLOCK, lower-case key",
        "ulimits=%5B%7B%22name%22%3A%22MEMLOCK%22%2C%22hard%22%3A-1%7D%5D",
        "ulimit MEMLOCK",
    );
    c.build("build with unparseable ulimits", "ulimits=%5Bnope", "build ulimits");
    let tag = unique("escimg");
    c.req(
        "build context fetched by the daemon",
        "POST",
        &format!("/v1.41/build?t={tag}&remote=TRAP/Dockerfile"),
        &[],
        "",
        403,
        "a build context fetched by the daemon",
        Effect::NoImage(tag),
    );
    let repo = unique("escimp");
    c.req(
        "import from a URL",
        "POST",
        &format!("/v1.41/images/create?fromSrc=TRAP/rootfs.tar&repo={repo}"),
        &[],
        "",
        403,
        "importing from a URL",
        Effect::NoImage(repo),
    );
    let repo = unique("escimp");
    c.req(
        "import from a URL, after an empty fromImage",
        "POST",
        &format!("/v1.41/images/create?fromImage=&fromSrc=TRAP/rootfs.tar&repo={repo}"),
        &[],
        "",
        403,
        "importing from a URL",
        Effect::NoImage(repo),
    );

    // --- Endpoints outside the allowlist. ---
    let plugin = unique("escplugin");
    for (method, path, effect) in [
        ("GET", "/v1.41/swarm".to_owned(), Effect::Nothing),
        ("POST", "/v1.41/swarm/init".to_owned(), Effect::NoSwarm),
        ("POST", "/v1.41/swarm/join".to_owned(), Effect::NoSwarm),
        ("POST", "/v1.41/services/create".to_owned(), Effect::Nothing),
        ("GET", "/v1.41/services".to_owned(), Effect::Nothing),
        ("GET", "/v1.41/tasks".to_owned(), Effect::Nothing),
        ("POST", "/v1.41/secrets/create".to_owned(), Effect::Nothing),
        ("POST", "/v1.41/configs/create".to_owned(), Effect::Nothing),
        ("GET", "/v1.41/nodes".to_owned(), Effect::Nothing),
        ("GET", "/v1.41/plugins".to_owned(), Effect::Nothing),
        ("POST", format!("/v1.41/plugins/pull?remote=vieux/sshfs&name={plugin}"), Effect::NoPlugin(plugin.clone())),
        ("POST", format!("/v1.41/plugins/create?name={plugin}"), Effect::NoPlugin(plugin.clone())),
        ("POST", "/v1.41/containers/VICTIM/checkpoints".to_owned(), Effect::Victim),
        ("PUT", "/v1.41/volumes/x".to_owned(), Effect::Nothing),
        ("GET", "/debug/vars".to_owned(), Effect::Nothing),
        ("GET", "/debug/pprof/heap".to_owned(), Effect::Nothing),
    ] {
        c.req(&format!("endpoint {method} {path}"), method, &path, &[], "", 403, "the endpoint", effect);
    }
    c.req(
        "endpoint POST /grpc",
        "POST",
        "/grpc",
        &[("Upgrade", "h2c"), ("Connection", "Upgrade")],
        "",
        403,
        "the endpoint",
        Effect::Nothing,
    );
    c.req("unknown endpoint", "GET", "/v1.41/nonexistent/endpoint", &[], "", 403, "the unknown endpoint", Effect::Nothing);
    c.req(
        "deprecated POST /containers/{id}/copy",
        "POST",
        "/v1.41/containers/VICTIM/copy",
        &[JSON],
        r#"{"Resource":"/etc/passwd"}"#,
        403,
        "the unknown endpoint",
        Effect::Victim,
    );
    c.req(
        "lower-case method",
        "post",
        "/v1.41/containers/create",
        &[JSON],
        r#"{"Image":"IMAGE","HostConfig":{"Privileged":true}}"#,
        403,
        "the unknown endpoint",
        Effect::Nothing,
    );
    c.req(
        "version with a patch level",
        "POST",
        "/v1.41.1/containers/create",
        &[JSON],
        r#"{"Image":"IMAGE"}"#,
        403,
        "the unknown endpoint",
        Effect::Nothing,
    );

    // --- Paths and queries dockerd would read differently (400). ---
    c.req("query with a ';' separator", "GET", "/v1.41/containers/json?all=1;size=1", &[], "", 400, "semicolon", Effect::Nothing);
    c.req("bad escape in the query", "POST", "/v1.41/images/create?fromSrc=%zz", &[], "", 400, "escape", Effect::Nothing);
    c.req("dot-dot segment", "GET", "/v1.41/containers/../images/json", &[], "", 400, "canonical form", Effect::Nothing);
    c.req("dot-dot segment to swarm", "POST", "/v1.41/containers/../swarm/init", &[], "", 400, "canonical form", Effect::NoSwarm);
    c.req("encoded dot-dot segment", "GET", "/v1.41/containers/%2e%2e/swarm", &[], "", 400, "canonical form", Effect::Nothing);
    c.req("encoded slash and dot-dot", "GET", "/v1.41/containers%2F..%2Fswarm", &[], "", 400, "canonical form", Effect::Nothing);
    c.req("double slash", "POST", "//containers/create", &[JSON], r#"{"Image":"IMAGE"}"#, 400, "canonical form", Effect::Nothing);
    c.req("bad escape in the path", "GET", "/v1.41/containers/%zz/json", &[], "", 400, "invalid escape", Effect::Nothing);

    // --- Several requests on one keep-alive connection, written at once. ---
    let privileged = |name: &str| {
        http_request(
            "POST",
            &format!("/v1.41/containers/create?name={name}"),
            &[JSON, ("Connection", "close")],
            format!(r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Privileged":true}}}}"#).as_bytes(),
            BodyFraming::Length,
        )
    };
    let name = unique("esc");
    let mut both = http_request("GET", "/_ping", &[], b"", BodyFraming::Length);
    both.extend(privileged(&name));
    c.raw("ping, then a privileged create on the same connection", both, vec![200], 403, "privileged mode", Effect::NoContainer(name));
    let name = unique("esc");
    let mut both = http_request("GET", "/v1.41/containers/json?all=1", &[], b"", BodyFraming::Chunked);
    both.extend(privileged(&name));
    c.raw("container list (chunked), then a privileged create", both, vec![200], 403, "privileged mode", Effect::NoContainer(name));
    let name = unique("esc");
    let mut both =
        http_request("POST", "/v1.41/containers/create", &[JSON], br#"{"Image":"x","HostConfig":{"CapAdd":["ALL"]}}"#, BodyFraming::Length);
    both.extend(privileged(&name));
    c.raw("a refused create, then another one on the same connection", both, vec![403], 403, "privileged mode", Effect::NoContainer(name));
    let name = unique("esc");
    let vol = unique("escvol");
    let mut both = http_request("GET", "/v1.41/version", &[], b"", BodyFraming::Length);
    both.extend(http_request(
        "POST",
        "/v1.41/volumes/create",
        &[JSON],
        format!(r#"{{"Name":"{vol}","DriverOpts":{{"o":"bind","device":"/","type":"none"}}}}"#).as_bytes(),
        BodyFraming::Chunked,
    ));
    both.extend(privileged(&name));
    c.raw(
        "version, a bind volume, then a privileged create",
        both,
        vec![200, 403],
        403,
        "privileged mode",
        Effect::All(vec![Effect::NoVolume(vol), Effect::NoContainer(name)]),
    );
    // The body of a refused form request holds a whole privileged create: it must never be read as
    // the next request on the connection without being checked.
    let name = unique("esc");
    let smuggled = privileged(&name);
    let request = http_request(
        "POST",
        "/v1.41/images/create",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &smuggled,
        BodyFraming::Length,
    );
    c.raw(
        "privileged create smuggled in the body of a refused form request",
        request,
        Vec::new(),
        400,
        "is not accepted",
        Effect::NoContainer(name),
    );

    c.rows
}

/// `@XFF@` in a built request becomes the byte 0xFF (header values given as `&str` cannot hold it).
fn replace_marker(request: &mut Vec<u8>) {
    while let Some(i) = request.windows(5).position(|w| w == b"@XFF@") {
        request.splice(i..i + 5, [0xFFu8]);
    }
}

fn exists(kind: &str, name: &str) -> bool {
    docker_output(direct(), &[kind, "inspect", name]).status.success()
}

/// What a refused request must not change about a victim container.
fn snapshot(name: &str) -> String {
    docker(
        direct(),
        &[
            "inspect",
            name,
            "--format",
            "{{.State.Running}} {{.State.StartedAt}} {{json .ExecIDs}} {{json .HostConfig}} {{json .NetworkSettings.Networks}}",
        ],
    )
}

fn swarm_state() -> String {
    docker(direct(), &["info", "--format", "{{.Swarm.LocalNodeState}}"]).trim().to_owned()
}

/// Checks one row's effect on the daemon; registers anything that was created for cleanup.
fn effect_failure(effect: &Effect, victims: &[(&str, String)], cleanup: &mut Cleanup) -> Option<String> {
    match effect {
        Effect::NoContainer(n) if exists("container", n) => {
            cleanup.container(n);
            Some(format!("container {n} was created"))
        }
        Effect::NoVolume(n) if exists("volume", n) => {
            cleanup.volume(n);
            Some(format!("volume {n} was created"))
        }
        Effect::NoNetwork(n) if exists("network", n) => {
            cleanup.network(n);
            Some(format!("network {n} was created"))
        }
        Effect::NoImage(n) if exists("image", n) => {
            cleanup.image(n);
            Some(format!("image {n} was created"))
        }
        Effect::Victim | Effect::Stopped => {
            let (name, before) = &victims[usize::from(matches!(effect, Effect::Stopped))];
            let now = snapshot(name);
            (now != *before).then(|| format!("{name} changed:\nbefore: {before}\nafter:  {now}"))
        }
        Effect::NoSwarm if swarm_state() != "inactive" => Some(format!("the node is in a swarm ({})", swarm_state())),
        Effect::All(all) => {
            let failed: Vec<String> = all.iter().filter_map(|e| effect_failure(e, victims, cleanup)).collect();
            (!failed.is_empty()).then(|| failed.join("; "))
        }
        Effect::NoPlugin(n) if docker(direct(), &["plugin", "ls", "--format", "{{.Name}}"]).lines().any(|l| l.contains(n.as_str())) => {
            Some(format!("plugin {n} was installed"))
        }
        _ => None,
    }
}

#[test]
fn escape_corpus_is_refused_without_effect() {
    let p = Proxy::start_with_config(CONFIG, "d.sock");
    let allowed = p.dir().join("allowed");
    std::fs::create_dir(&allowed).expect("allowed dir");
    std::os::unix::fs::symlink("/etc", allowed.join("etc-link")).expect("symlink");
    let trap = Trap::start();
    let mut cleanup = Cleanup::new();
    let (victim, stopped) = (unique("victim"), unique("stopped"));
    cleanup.container(&victim);
    cleanup.container(&stopped);
    docker(direct(), &["run", "-d", "--name", &victim, BUSYBOX, "sleep", "600"]);
    docker(direct(), &["create", "--name", &stopped, BUSYBOX, "sleep", "600"]);
    assert_eq!(swarm_state(), "inactive", "the test daemon must not be in a swarm");
    let victims = [(victim.as_str(), snapshot(&victim)), (stopped.as_str(), snapshot(&stopped))];

    let rows = corpus(&victim, &stopped, &allowed, &trap.url);
    assert!(rows.len() >= 60, "the corpus has only {} rows", rows.len());
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let fail = |failures: &mut Vec<String>, what: String| failures.push(format!("#{i} {}: {what}", row.label));
        let (audits, hits) = (audit_refusals(&p), trap.hits());
        let replies = http_exchange(&p.sock, &row.request, row.before.len() + 1, Duration::from_secs(30));
        let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
        let mut expected = row.before.clone();
        expected.push(row.status);
        if statuses != expected {
            let last = replies.last().map(HttpReply::text).unwrap_or_default();
            fail(&mut failures, format!("statuses {statuses:?}, expected {expected:?} (last body: {last})"));
        }
        if let Some(reply) = replies.get(row.before.len()) {
            match reply.message() {
                Some(m) if !m.starts_with("ctproxy: ") => fail(&mut failures, format!("message not from ctproxy: {m:?}")),
                Some(m)
                    if row.status == 403
                        && !(m.contains("is not allowed by policy strict; ")
                            && (m.ends_with("no setting allows it)")
                                || m.ends_with("; no setting allows it")
                                || m.contains("; an administrator can allow it by "))) =>
                {
                    fail(&mut failures, format!("message {m:?}"))
                }
                Some(m) if !m.contains(row.why.as_str()) => fail(&mut failures, format!("message {m:?} does not say {:?}", row.why)),
                Some(_) => {}
                None => fail(&mut failures, format!("no Docker-style JSON message: {:?}", reply.text())),
            }
            if reply.header("content-type") != Some("application/json") {
                fail(&mut failures, format!("content type {:?}", reply.header("content-type")));
            }
        }
        if wait_audit_refusals(&p, audits, Duration::from_secs(5)).is_none() {
            fail(&mut failures, "no audit line".to_owned());
        }
        if trap.hits() != hits {
            fail(&mut failures, "the daemon fetched from the trap URL".to_owned());
        }
        if let Some(e) = effect_failure(&row.effect, &victims, &mut cleanup) {
            fail(&mut failures, e);
        }
    }
    assert!(failures.is_empty(), "{} of {} escape rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    // Every refusal is one audit line (pipelined rows refuse more than one request).
    let refused: usize = rows.iter().map(|r| 1 + r.before.iter().filter(|s| **s >= 400).count()).sum();
    assert!(audit_refusals(&p) >= refused, "{} audit lines for {refused} refusals", audit_refusals(&p));
}

/// The checks above are not vacuous: the same requests without the escape do reach the daemon, and
/// the same effect checks see what they did.
#[test]
fn harness_sees_effects_of_allowed_requests() {
    let p = Proxy::start_with_config(CONFIG, "d.sock");
    let mut cleanup = Cleanup::new();
    let (name, vol, net, victim) = (unique("ctl"), unique("ctlvol"), unique("ctlnet"), unique("victim"));
    for n in [&name, &victim] {
        cleanup.container(n);
    }
    cleanup.volume(&vol);
    cleanup.network(&net);
    docker(direct(), &["run", "-d", "--name", &victim, BUSYBOX, "sleep", "600"]);
    let victims = [(victim.as_str(), snapshot(&victim)), (victim.as_str(), snapshot(&victim))];
    let send = |method: &str, path: &str, body: String| {
        let r =
            http_exchange(&p.sock, &http_request(method, path, &[JSON], body.as_bytes(), BodyFraming::Length), 1, Duration::from_secs(30));
        r.first().map(|r| r.status).unwrap_or(0)
    };
    let audits = audit_refusals(&p);
    assert_eq!(
        send(
            "POST",
            &format!("/v1.41/containers/create?name={name}"),
            format!(r#"{{"Image":"{BUSYBOX}","HostConfig":{{"Privileged":false}}}}"#)
        ),
        201
    );
    assert_eq!(send("POST", "/v1.41/volumes/create", format!(r#"{{"Name":"{vol}"}}"#)), 201);
    assert_eq!(send("POST", "/v1.41/networks/create", format!(r#"{{"Name":"{net}"}}"#)), 201);
    assert_eq!(send("POST", &format!("/v1.41/containers/{victim}/exec"), r#"{"Cmd":["id"],"Privileged":false}"#.to_owned()), 201);
    let mut scratch = Cleanup::new();
    assert!(effect_failure(&Effect::NoContainer(name.clone()), &victims, &mut scratch).is_some());
    assert!(effect_failure(&Effect::NoVolume(vol.clone()), &victims, &mut scratch).is_some());
    assert!(effect_failure(&Effect::NoNetwork(net.clone()), &victims, &mut scratch).is_some());
    assert!(effect_failure(&Effect::Victim, &victims, &mut scratch).is_some(), "an exec instance must show in the victim's snapshot");
    assert_eq!(audit_refusals(&p), audits, "allowed requests were audited as refused:\n{}", p.log_text());
}
