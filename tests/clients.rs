//! Every real client gives the same result through ctproxy as on the daemon's own socket.
//!
//! One test per everyday flow, with the real clients: the docker CLI 28 (first on PATH), Debian's
//! 20.10 CLI (`DOCKER_2010`, also for BuildKit), docker-compose 1.29, the Python docker SDK
//! (`tests/python/sdk_flows.py`) and a local `docker-registry` for push and pull. Where a flow can be
//! run twice, it runs once through a fresh ctproxy and once on `support::direct()`, and the two results are
//! compared (IDs and timestamps normalised or left out); where it cannot (a push, a build), the
//! result through the proxy is checked against what the daemon itself reports.
//!
//! Every name comes from `unique()` and is removed by a `Cleanup` (or `Compose`) guard, even when an
//! assertion fails. Streams run under `output_within`, so a hang fails the test instead of the suite.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Upper bound for any one client command (a hang, not a slow machine, should trip it).
const LIMIT: Duration = Duration::from_secs(120);

/// `cli` against `host`, panicking with its output unless it succeeds; returns stdout.
fn cli_ok(cli: &str, host: &str, args: &[&str]) -> String {
    let out = ok_within(docker_cmd(cli, host, args), None, LIMIT, &format!("{cli} {} (DOCKER_HOST={host})", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cli` against `host` with `input` on stdin, whatever the exit status.
fn cli_with_stdin(cli: &str, host: &str, args: &[&str], input: &[u8]) -> Output {
    output_within(docker_cmd(cli, host, args), Some(input.to_vec()), LIMIT, &format!("{cli} {} (DOCKER_HOST={host})", args.join(" ")))
}

/// The same docker CLI 28 command through the proxy and directly.
fn both(proxy: &Proxy, args: &[&str]) -> (String, String) {
    (docker(&proxy.docker_host(), args), docker(support::direct(), args))
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn version() {
    let p = Proxy::start();
    for cli in ["docker", DOCKER_2010] {
        // The whole server half of `docker version`, and the API version the client negotiated from
        // the `/_ping` answer (the CLI 28 downgrades to what the daemon speaks).
        for fmt in ["{{json .Server}}", "{{.Client.APIVersion}}"] {
            let args = ["version", "--format", fmt];
            let (via, direct) = (cli_ok(cli, &p.docker_host(), &args), cli_ok(cli, support::direct(), &args));
            assert_eq!(via, direct, "{cli} version --format {fmt}");
        }
        let server: Value =
            serde_json::from_str(&cli_ok(cli, &p.docker_host(), &["version", "--format", "{{json .Server}}"])).expect("json");
        assert_eq!(server["Os"], "linux", "{server}");
        assert!(server["ApiVersion"].as_str().is_some_and(|v| v.starts_with("1.")), "{server}");
    }
}

#[test]
fn info() {
    let p = Proxy::start();
    // Counters (containers, images, goroutines, fds, system time) move with the parallel tests.
    const STABLE: &[&str] = &[
        "ID",
        "Name",
        "ServerVersion",
        "Driver",
        "DriverStatus",
        "OSType",
        "OperatingSystem",
        "OSVersion",
        "KernelVersion",
        "Architecture",
        "NCPU",
        "MemTotal",
        "DockerRootDir",
        "LoggingDriver",
        "CgroupDriver",
        "CgroupVersion",
        "Plugins",
        "SecurityOptions",
        "Runtimes",
        "DefaultRuntime",
        "RegistryConfig",
        "IndexServerAddress",
        "ExperimentalBuild",
        "LiveRestoreEnabled",
        "InitBinary",
    ];
    for cli in ["docker", DOCKER_2010] {
        let args = ["info", "--format", "{{json .}}"];
        let via: Value = serde_json::from_str(&cli_ok(cli, &p.docker_host(), &args)).expect("info json (proxy)");
        let direct: Value = serde_json::from_str(&cli_ok(cli, support::direct(), &args)).expect("info json (direct)");
        for key in STABLE {
            assert!(!direct[key].is_null(), "{cli} info has no {key}");
            assert_eq!(via[key], direct[key], "{cli} info .{key}");
        }
        assert_eq!(via["Swarm"]["LocalNodeState"], direct["Swarm"]["LocalNodeState"]);
        assert!(via.get("ServerErrors").is_none_or(Value::is_null), "info through the proxy reported errors: {via}");
    }
}

#[test]
fn run_rm() {
    let p = Proxy::start();
    let h = p.docker_host();
    // stdout and stderr demultiplexed separately, and the exit code carried through.
    let args = ["run", "--rm", BUSYBOX, "sh", "-c", "echo out; echo err >&2; seq 1 20000 | md5sum; exit 3"];
    let (via, direct) = (docker_output(&h, &args), docker_output(support::direct(), &args));
    assert_eq!(via.status.code(), Some(3), "stderr: {}", utf8(&via.stderr));
    assert_eq!(via.status.code(), direct.status.code());
    assert_eq!(utf8(&via.stdout), utf8(&direct.stdout));
    assert_eq!(utf8(&via.stderr), utf8(&direct.stderr));
    assert!(utf8(&via.stdout).starts_with("out\n"), "{}", utf8(&via.stdout));
    assert_eq!(utf8(&via.stderr), "err\n");
    // `run -i`: stdin through the attach hijack, EOF (half-close) ends the container's stdin.
    let input = random_bytes(1 << 20);
    let args = ["run", "--rm", "-i", BUSYBOX, "sh", "-c", "sha256sum; echo after-eof"];
    let via = cli_with_stdin("docker", &h, &args, &input);
    let direct = cli_with_stdin("docker", support::direct(), &args, &input);
    assert!(via.status.success(), "run -i through the proxy: {}", utf8(&via.stderr));
    assert_eq!(utf8(&via.stdout), format!("{}  -\nafter-eof\n", sha256_hex(&input)));
    assert_eq!(utf8(&via.stdout), utf8(&direct.stdout));
}

#[test]
fn run_detached_then_logs_follow() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let name = unique("logs");
    c.container(&name);
    docker(
        &h,
        &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "for i in $(seq 1 100); do echo out $i; echo err $i >&2; sleep 0.01; done"],
    );
    // Started while the container still writes; ends when it exits.
    let followed = ok_within(docker_cmd("docker", &h, &["logs", "-f", &name]), None, LIMIT, "docker logs -f");
    let expect = |stream: &str| (1..=100).map(|i| format!("{stream} {i}\n")).collect::<String>();
    assert_eq!(utf8(&followed.stdout), expect("out"));
    assert_eq!(utf8(&followed.stderr), expect("err"));
    assert_eq!(docker(&h, &["wait", &name]).trim(), "0");
    for args in [
        &["logs", "--timestamps", &name][..],
        &["logs", "--tail", "5", &name],
        &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", &name],
    ] {
        let (via, direct) = both(&p, args);
        assert_eq!(via, direct, "docker {}", args.join(" "));
    }
}

fn exec_pipe_50mb(cli: &str) {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let name = unique("exec");
    c.container(&name);
    docker(&h, &["run", "-d", "--name", &name, BUSYBOX, "sleep", "600"]);
    let input = random_bytes(50 << 20);
    let out = cli_with_stdin(cli, &h, &["exec", "-i", &name, "cat"], &input);
    assert!(out.status.success(), "{cli} exec -i failed ({}): {}", out.status, utf8(&out.stderr));
    assert_eq!(out.stdout.len(), input.len(), "{cli} exec -i: every byte must come back after stdin closed");
    assert_eq!(sha256_hex(&out.stdout), sha256_hex(&input), "{cli} exec -i: bytes differ");
    // Exit codes of exec are read from the daemon after the stream ends.
    let args = ["exec", &name, "sh", "-c", "echo x; exit 7"];
    let via = output_within(docker_cmd(cli, &h, &args), None, LIMIT, "exec exit 7");
    let direct = output_within(docker_cmd(cli, support::direct(), &args), None, LIMIT, "exec exit 7");
    assert_eq!((via.status.code(), utf8(&via.stdout)), (Some(7), "x\n".to_owned()));
    assert_eq!(via.status.code(), direct.status.code());
}

#[test]
fn exec_stdin_50mb_through_cat() {
    exec_pipe_50mb("docker");
}

#[test]
fn exec_stdin_50mb_through_cat_docker_2010() {
    exec_pipe_50mb(DOCKER_2010);
}

#[test]
fn attach() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let script = "read a; echo got:$a; read b; echo got:$b; echo bye >&2; exit 5";
    let mut results = Vec::new();
    for host in [p.docker_host(), support::direct().to_owned()] {
        // `start -a -i`: the CLI attaches (hijack) before the start, then feeds stdin.
        let name = unique("attach-start");
        c.container(&name);
        docker(&host, &["create", "-i", "--name", &name, BUSYBOX, "sh", "-c", script]);
        let started = cli_with_stdin("docker", &host, &["start", "-a", "-i", &name], b"one\ntwo\n");
        // `attach` to a container already running with an open stdin, with both CLIs.
        let mut attached = Vec::new();
        for cli in ["docker", DOCKER_2010] {
            let name = unique("attach-run");
            c.container(&name);
            docker(&host, &["run", "-d", "-i", "--name", &name, BUSYBOX, "sh", "-c", script]);
            // stdin stays open: on its EOF dockerd would end this attach (not StdinOnce) at once.
            let cmd = docker_cmd(cli, &host, &["attach", &name]);
            attached.push(output_holding_stdin(cmd, b"three\nfour\n".to_vec(), LIMIT, &format!("{cli} attach (DOCKER_HOST={host})")));
        }
        results.push((started, attached));
    }
    let (started, attached) = &results[0];
    assert_eq!(
        (started.status.code(), utf8(&started.stdout), utf8(&started.stderr)),
        (Some(5), "got:one\ngot:two\n".into(), "bye\n".into())
    );
    for a in attached {
        assert_eq!((a.status.code(), utf8(&a.stdout), utf8(&a.stderr)), (Some(5), "got:three\ngot:four\n".into(), "bye\n".into()));
    }
    let summary = |(s, a): &(Output, Vec<Output>)| {
        std::iter::once(s).chain(a).map(|o| (o.status.code(), o.stdout.clone(), o.stderr.clone())).collect::<Vec<_>>()
    };
    assert_eq!(summary(&results[0]), summary(&results[1]), "attach through the proxy differs from direct");
}

/// Every file and directory under `root`, relative, with its content (`None` for directories).
fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Vec<u8>>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path.strip_prefix(root).expect("prefix").display().to_string();
            if path.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                out.insert(rel, Some(std::fs::read(&path).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn cp_both_ways() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let name = unique("cp");
    c.container(&name);
    docker(&h, &["run", "-d", "--name", &name, BUSYBOX, "sleep", "600"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("in");
    std::fs::create_dir_all(src.join("sub/empty")).expect("mkdir");
    std::fs::write(src.join("a.txt"), b"alpha\n").expect("write");
    let blob = random_bytes(3 << 20);
    std::fs::write(src.join("sub/b.bin"), &blob).expect("write");
    let single = dir.path().join("single.txt");
    std::fs::write(&single, b"just one file\n").expect("write");

    // Host to container, through the proxy; checked inside the container on the direct socket.
    docker(&h, &["cp", path_str(&single), &format!("{name}:/tmp/single.txt")]);
    docker(&h, &["cp", path_str(&src), &format!("{name}:/tmp/in")]);
    assert_eq!(docker(support::direct(), &["exec", &name, "cat", "/tmp/single.txt"]), "just one file\n");
    assert_eq!(
        docker(support::direct(), &["exec", &name, "sha256sum", "/tmp/in/sub/b.bin"]),
        format!("{}  /tmp/in/sub/b.bin\n", sha256_hex(&blob))
    );
    assert_eq!(docker(support::direct(), &["exec", &name, "find", "/tmp/in", "-type", "d"]).lines().count(), 3, "in, in/sub, in/sub/empty");
    docker(support::direct(), &["exec", &name, "sh", "-c", "echo made inside > /tmp/in/c.txt"]);

    // Container to host: a directory and a file, through the proxy and directly.
    let (via, direct) = (dir.path().join("via"), dir.path().join("direct"));
    for (host, out) in [(&h[..], &via), (support::direct(), &direct)] {
        std::fs::create_dir(out).expect("mkdir");
        docker(host, &["cp", &format!("{name}:/tmp/in"), path_str(&out.join("in"))]);
        docker(host, &["cp", &format!("{name}:/tmp/single.txt"), path_str(&out.join("single.txt"))]);
    }
    let (tv, td) = (tree(&via), tree(&direct));
    assert_eq!(tv, td, "docker cp from the container differs through the proxy");
    assert_eq!(tv["in/sub/b.bin"].as_deref(), Some(&blob[..]));
    assert_eq!(tv["in/c.txt"].as_deref(), Some(&b"made inside\n"[..]));
    assert_eq!(tv["single.txt"].as_deref(), Some(&b"just one file\n"[..]));
    assert_eq!(tv["in/sub/empty"], None);
    // The raw archive (`docker cp CONTAINER:PATH -`) is byte for byte the daemon's.
    let args = ["cp", &format!("{name}:/tmp/in"), "-"];
    let via = ok_within(docker_cmd("docker", &h, &args), None, LIMIT, "docker cp - (proxy)");
    let direct = ok_within(docker_cmd("docker", support::direct(), &args), None, LIMIT, "docker cp - (direct)");
    assert!(via.stdout.len() > blob.len());
    assert_eq!(sha256_hex(&via.stdout), sha256_hex(&direct.stdout));
}

/// A build context: a Dockerfile with COPY and RUN, a 1 MB context file, and a marker that keeps the
/// build cache of other tests (and earlier runs) out of the way.
fn build_context(marker: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {BUSYBOX}\nCOPY data.bin /data.bin\nRUN echo running-{marker} && echo {marker} > /marker && sha256sum /data.bin > /sum\nCMD cat /marker /sum\n"
        ),
    )
    .expect("Dockerfile");
    let data = random_bytes(1 << 20);
    std::fs::write(dir.path().join("data.bin"), &data).expect("context file");
    let expected = format!("{marker}\n{}  /data.bin\n", sha256_hex(&data));
    (dir, expected)
}

/// Checks the built image through the proxy: it runs, and the proxy and the daemon agree on it.
fn check_built_image(p: &Proxy, tag: &str, expected: &str) {
    assert_eq!(docker(&p.docker_host(), &["run", "--rm", tag]), expected);
    let (via, direct) = both(p, &["image", "inspect", "--format", "{{.Id}} {{.Config.Cmd}} {{len .RootFS.Layers}}", tag]);
    assert_eq!(via, direct);
}

#[test]
fn build_legacy_builder() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let tag = format!("{}:1", unique("legacy"));
    c.image(&tag);
    let marker = unique("m");
    let (ctx, expected) = build_context(&marker);
    let mut cmd = docker_cmd("docker", &p.docker_host(), &["build", "-t", &tag, path_str(ctx.path())]);
    cmd.env("DOCKER_BUILDKIT", "0");
    let out = ok_within(cmd, None, LIMIT, "DOCKER_BUILDKIT=0 docker build");
    let log = utf8(&out.stdout);
    // The JSON progress stream arrived whole: the RUN step's output and the final message.
    assert!(log.contains(&format!("running-{marker}")), "{log}");
    assert!(log.contains(&format!("Successfully tagged {tag}")), "{log}");
    check_built_image(&p, &tag, &expected);
}

#[test]
fn build_buildkit_docker_2010() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let tag = format!("{}:1", unique("buildkit"));
    c.image(&tag);
    let marker = unique("m");
    let (ctx, expected) = build_context(&marker);
    let mut cmd = docker_cmd(DOCKER_2010, &p.docker_host(), &["build", "--progress", "plain", "-t", &tag, path_str(ctx.path())]);
    cmd.env("DOCKER_BUILDKIT", "1");
    let out = ok_within(cmd, None, LIMIT, "DOCKER_BUILDKIT=1 /usr/bin/docker build");
    let log = utf8(&out.stderr);
    assert!(log.contains(&format!("running-{marker}")), "{log}");
    check_built_image(&p, &tag, &expected);
    // BuildKit fetched the context over its /session stream (a hijacked upgrade) through the proxy.
    assert!(p.wait_log("path=/session status=101", Duration::from_secs(5)), "no /session upgrade in the proxy log:\n{}", p.log_text());
}

#[test]
fn events_while_containers_start_and_stop() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let name = unique("events");
    c.container(&name);
    let since = timestamp_now();
    let filter = format!("container={name}");
    let fmt = "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}";
    // Follow in the background. `--since` makes the daemon replay what it has already sent, so
    // nothing is lost however late the subscription lands; the rest streams live.
    let mut follow = docker_cmd("docker", &h, &["events", "--since", &since, "--filter", &filter, "--format", fmt])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker events");
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    docker(&h, &["run", "--name", &name, BUSYBOX, "true"]);
    docker(&h, &["rm", &name]);
    let mut streamed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !streamed.iter().any(|l: &String| l.starts_with("container destroy ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => streamed.push(line),
            Err(_) => {
                let _ = follow.kill();
                let _ = follow.wait();
                panic!("the followed event stream never delivered destroy; got {streamed:?}");
            }
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    for action in ["create", "start", "die", "destroy"] {
        assert!(streamed.contains(&format!("container {action} {name}")), "{action} missing from the live stream: {streamed:?}");
    }
    // The same window replayed with --until: through the proxy, directly and live all agree.
    let until = timestamp_now();
    let args = ["events", "--since", &since, "--until", &until, "--filter", &filter, "--format", fmt];
    let (via, direct) = both(&p, &args);
    assert_eq!(via, direct);
    assert_eq!(via.lines().collect::<Vec<_>>(), streamed, "replayed vs streamed");
}

#[test]
fn stats_no_stream() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let name = unique("stats");
    c.container(&name);
    let id = docker(&h, &["run", "-d", "--name", &name, BUSYBOX, "sleep", "600"]).trim().to_owned();
    for cli in ["docker", DOCKER_2010] {
        let args = ["stats", "--no-stream", "--format", "{{.Name}} {{.ID}} {{.PIDs}}", &name];
        let (via, direct) = (cli_ok(cli, &h, &args), cli_ok(cli, support::direct(), &args));
        assert_eq!(via, direct, "{cli} stats");
        assert_eq!(via, format!("{name} {} 1\n", &id[..12]));
        let table = cli_ok(cli, &h, &["stats", "--no-stream", &name]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("CONTAINER ID") && lines[0].contains("MEM USAGE"), "{table}");
        assert!(lines[1].starts_with(&format!("{}   {name}   ", &id[..12])) && lines[1].ends_with(" 1"), "{table}");
    }
}

#[test]
fn volumes_and_networks() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let (vol, net) = (unique("vol"), unique("net"));
    c.volume(&vol);
    c.network(&net);
    assert_eq!(docker(&h, &["volume", "create", "--label", "ctproxy.test=1", &vol]).trim(), vol);
    let net_id = docker(&h, &["network", "create", "--label", "ctproxy.test=1", &net]).trim().to_owned();

    let (via, direct) = both(&p, &["volume", "ls", "--filter", &format!("name={vol}"), "--format", "{{.Name}} {{.Driver}} {{.Labels}}"]);
    assert_eq!(via, direct);
    assert_eq!(via, format!("{vol} local ctproxy.test=1\n"));
    let (via, direct) = both(&p, &["network", "ls", "--filter", &format!("name={net}"), "--format", "{{.ID}} {{.Name}} {{.Driver}}"]);
    assert_eq!(via, direct);
    assert_eq!(via, format!("{} {net} bridge\n", &net_id[..12]));
    for args in [&["volume", "inspect", &vol][..], &["network", "inspect", &net]] {
        let (via, direct) = both(&p, args);
        assert_eq!(via, direct, "docker {}", args.join(" "));
        let v: Value = serde_json::from_str(&via).expect("inspect json");
        assert_eq!(v[0]["Labels"]["ctproxy.test"], "1", "{via}");
    }

    // Used by containers through the proxy: data kept in the volume, the network attached.
    let vol_mount = format!("{vol}:/data");
    docker(&h, &["run", "--rm", "--network", &net, "-v", &vol_mount, BUSYBOX, "sh", "-c", "echo kept > /data/f"]);
    assert_eq!(docker(&h, &["run", "--rm", "--network", &net, "-v", &vol_mount, BUSYBOX, "cat", "/data/f"]), "kept\n");

    docker(&h, &["volume", "rm", &vol]);
    docker(&h, &["network", "rm", &net]);
    assert!(!docker(support::direct(), &["volume", "ls", "-q"]).lines().any(|l| l == vol), "volume still there");
    assert!(!docker(support::direct(), &["network", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == net), "network still there");
    assert!(!docker_output(&h, &["volume", "inspect", &vol]).status.success());
}

#[test]
fn tag_push_pull_through_a_local_registry() {
    let p = Proxy::start();
    let h = p.docker_host();
    let reg = Registry::start();
    let mut c = Cleanup::new();
    let repo = format!("{}/{}", reg.addr, unique("pushed"));
    let tagged = format!("{repo}:v1");
    c.image(&tagged);
    let image_id = docker(support::direct(), &["image", "inspect", "--format", "{{.Id}}", BUSYBOX]);

    docker(&h, &["tag", BUSYBOX, &tagged]);
    let pushed = docker(&h, &["push", &tagged]);
    let digest = pushed
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in the push output: {pushed}"))
        .to_owned();
    assert!(digest.starts_with("sha256:"), "{pushed}");
    let by_digest = format!("{repo}@{digest}");
    c.image(&by_digest);

    docker(&h, &["rmi", &tagged]);
    assert!(!docker_output(support::direct(), &["image", "inspect", &tagged]).status.success(), "tag not removed");
    let pulled = docker(&h, &["pull", &tagged]);
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    assert_eq!(docker(&h, &["run", "--rm", &tagged, "echo", "pulled"]), "pulled\n");
    // Pulled by digest with the 20.10 CLI too.
    cli_ok(DOCKER_2010, &h, &["pull", &by_digest]);

    let (via, direct) = both(&p, &["image", "inspect", "--format", "{{.Id}} {{.RepoDigests}}", &tagged]);
    assert_eq!(via, direct);
    assert!(via.starts_with(image_id.trim()) && via.contains(&by_digest), "{via}");
}

#[test]
fn save_and_load() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let tag = format!("{}:saved", unique("save"));
    c.image(&tag);
    docker(&h, &["tag", BUSYBOX, &tag]);
    let id = docker(support::direct(), &["image", "inspect", "--format", "{{.Id}}", &tag]);

    // The archive streamed to stdout is byte for byte the daemon's.
    let via = ok_within(docker_cmd("docker", &h, &["save", &tag]), None, LIMIT, "docker save (proxy)");
    let direct = ok_within(docker_cmd("docker", support::direct(), &["save", &tag]), None, LIMIT, "docker save (direct)");
    assert!(via.stdout.len() > 1_000_000, "{} bytes", via.stdout.len());
    assert_eq!(sha256_hex(&via.stdout), sha256_hex(&direct.stdout));

    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("img.tar");
    docker(&h, &["save", "-o", path_str(&tar), &tag]);
    assert_eq!(sha256_hex(&std::fs::read(&tar).expect("tar")), sha256_hex(&via.stdout));

    docker(&h, &["rmi", &tag]);
    let loaded = docker(&h, &["load", "-i", path_str(&tar)]);
    assert!(loaded.contains(&format!("Loaded image: {tag}")), "{loaded}");
    assert_eq!(docker(support::direct(), &["image", "inspect", "--format", "{{.Id}}", &tag]), id);

    // And loaded from stdin with the 20.10 CLI.
    docker(&h, &["rmi", &tag]);
    let out = cli_with_stdin(DOCKER_2010, &h, &["load"], &via.stdout);
    assert!(out.status.success() && utf8(&out.stdout).contains(&tag), "{}{}", utf8(&out.stdout), utf8(&out.stderr));
    assert_eq!(docker(support::direct(), &["image", "inspect", "--format", "{{.Id}}", &tag]), id);
}

#[test]
fn compose_up_ps_down() {
    let p = Proxy::start();
    let h = p.docker_host();
    let project = Compose::new(&format!(
        r#"version: "2.4"
services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8080 -h /www"]
  client:
    image: {BUSYBOX}
    command: ["sleep", "600"]
    depends_on: [web]
"#
    ));
    project.run(&h, &["up", "-d"]);
    let names = |host: &str| {
        let mut n: Vec<String> = project.run(host, &["ps", "--services"]).lines().map(str::to_owned).collect();
        n.sort();
        n
    };
    assert_eq!(names(&h), ["client", "web"]);
    let (via, direct) = (project.run(&h, &["ps"]), project.run(support::direct(), &["ps"]));
    assert_eq!(via, direct, "docker-compose ps");
    for svc in ["web", "client"] {
        assert!(via.contains(&format!("{}_{svc}_1", project.project)) && via.contains("Up"), "{via}");
    }
    let (via, direct) = (project.run(&h, &["ps", "-q"]), project.run(support::direct(), &["ps", "-q"]));
    assert_eq!(via, direct);

    // One service reaches the other by its name on the project network (compose exec: a hijacked
    // exec through the proxy). httpd may still be starting: retry inside the container.
    let reach =
        "ping -c1 -W5 web >/dev/null && for i in $(seq 1 100); do wget -q -O - http://web:8080/ping && exit 0; sleep 0.1; done; exit 1";
    assert_eq!(project.run(&h, &["exec", "-T", "client", "sh", "-c", reach]), "pong\n");

    project.run(&h, &["down", "-v", "-t", "0"]);
    let label = format!("label=com.docker.compose.project={}", project.project);
    assert_eq!(docker(support::direct(), &["ps", "-a", "-q", "--filter", &label]), "", "compose down left containers");
    assert_eq!(docker(support::direct(), &["network", "ls", "-q", "--filter", &label]), "", "compose down left networks");
}

#[test]
fn python_sdk_flows() {
    let p = Proxy::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_flows.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, &p.docker_host(), BUSYBOX, &unique("sdk")]).env("CTPROXY_TEST_DOCKER_HOST", support::direct());
    let out = ok_within(
        cmd,
        None,
        Duration::from_secs(180),
        "python3 tests/python/sdk_flows.py (if the docker module is missing, run scripts/test-env)",
    );
    assert!(utf8(&out.stdout).contains("all SDK flows passed"), "{}", utf8(&out.stdout));
}
