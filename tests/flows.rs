//! Issue acceptance: every everyday client flow gives the same result through ctproxy as on the
//! daemon's own socket. One test per flow, with the real clients: docker CLI 28, Debian's 20.10 CLI
//! (BuildKit), docker-compose, the Python SDK, and a local registry for push/pull.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::*;

/// `docker` (28) against the proxy and against the daemon, same arguments.
fn both(proxy: &Proxy, args: &[&str]) -> (String, String) {
    (docker(&proxy.docker_host(), args), docker(DIRECT, args))
}

#[test]
fn version_matches() {
    let p = Proxy::start();
    let (a, b) = both(&p, &["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}} {{.Server.MinAPIVersion}} {{.Server.Os}}"]);
    assert_eq!(a, b);
}

#[test]
fn info_matches() {
    let p = Proxy::start();
    let (a, b) = both(&p, &["info", "--format", "{{.ServerVersion}} {{.Driver}} {{.OSType}} {{.ID}} {{.DockerRootDir}}"]);
    assert_eq!(a, b);
}

#[test]
fn run_rm_output_matches() {
    let p = Proxy::start();
    let args = ["run", "--rm", BUSYBOX, "sh", "-c", "echo out; echo err >&2; seq 1 1000 | md5sum"];
    let (a, b) = both(&p, &args);
    assert_eq!(a, b);
    assert!(a.contains("out"));
}

#[test]
fn run_detached_then_logs_follow() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("logs");
    c.container(&name);
    docker(
        &p.docker_host(),
        &["run", "-d", "--name", &name, BUSYBOX, "sh", "-c", "for i in $(seq 1 20); do echo line $i; sleep 0.05; done"],
    );
    let followed = docker(&p.docker_host(), &["logs", "-f", &name]);
    let expected: String = (1..=20).map(|i| format!("line {i}\n")).collect();
    assert_eq!(followed, expected);
    assert_eq!(docker(DIRECT, &["logs", &name]), expected);
}

fn exec_pipe_50mb(cli: &str) {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("exec");
    c.container(&name);
    docker(&p.docker_host(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let data: Vec<u8> = (0..50_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut child = docker_cmd(cli, &p.docker_host(), &["exec", "-i", &name, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker exec");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        stdin.write_all(&data).expect("write stdin");
        data
    });
    let out = child.wait_with_output().expect("exec output");
    let data = writer.join().expect("writer");
    assert!(out.status.success(), "exec failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout.len(), data.len(), "all 50 MB must come back after stdin closed");
    assert!(out.stdout == data, "bytes differ");
}

#[test]
fn exec_stdin_50mb_through_cat() {
    exec_pipe_50mb("docker");
}

#[test]
fn exec_stdin_50mb_through_cat_debian_cli() {
    exec_pipe_50mb(DOCKER_2010);
}

#[test]
fn attach_to_running_container() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("attach");
    c.container(&name);
    docker(&p.docker_host(), &["create", "-i", "--name", &name, BUSYBOX, "sh", "-c", "read x; echo got $x; echo bye"]);
    // `start -a -i` attaches (hijack) before the start, then feeds stdin.
    let mut child = docker_cmd("docker", &p.docker_host(), &["start", "-a", "-i", &name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("docker start -a");
    child.stdin.take().expect("stdin").write_all(b"hello\n").expect("write");
    let out = child.wait_with_output().expect("output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got hello\nbye\n");
    // And `docker attach` to an already running container.
    let name2 = unique("attach2");
    c.container(&name2);
    docker(&p.docker_host(), &["run", "-d", "--name", &name2, BUSYBOX, "sh", "-c", "sleep 1; echo late output"]);
    let out = docker_output(&p.docker_host(), &["attach", &name2]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "late output\n");
}

#[test]
fn cp_both_ways() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("cp");
    c.container(&name);
    docker(&p.docker_host(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("in");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("a.txt"), b"alpha\n").expect("write");
    std::fs::write(src.join("sub/b.bin"), vec![7u8; 300_000]).expect("write");
    docker(&p.docker_host(), &["cp", src.to_str().expect("utf-8"), &format!("{name}:/tmp/in")]);
    assert_eq!(docker(DIRECT, &["exec", &name, "cat", "/tmp/in/a.txt"]), "alpha\n");
    docker(DIRECT, &["exec", &name, "sh", "-c", "echo made inside > /tmp/in/c.txt"]);
    let back = dir.path().join("back");
    docker(&p.docker_host(), &["cp", &format!("{name}:/tmp/in"), back.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(back.join("sub/b.bin")).expect("read"), vec![7u8; 300_000]);
    assert_eq!(std::fs::read_to_string(back.join("c.txt")).expect("read"), "made inside\n");
}

fn build_context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {BUSYBOX}\nCOPY data.txt /data.txt\nRUN wc -c /data.txt > /size\nCMD cat /size\n"),
    )
    .expect("Dockerfile");
    std::fs::write(dir.path().join("data.txt"), vec![b'x'; 1_000_000]).expect("context");
    dir
}

#[test]
fn build_legacy_builder() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let tag = format!("{}:1", unique("legacy"));
    c.image(&tag);
    let ctx = build_context();
    let mut cmd = docker_cmd("docker", &p.docker_host(), &["build", "-q", "-t", &tag, ctx.path().to_str().expect("utf-8")]);
    cmd.env("DOCKER_BUILDKIT", "0");
    run_ok(cmd, "docker build (legacy)");
    assert_eq!(docker(&p.docker_host(), &["run", "--rm", &tag]).trim(), "1000000 /data.txt");
}

#[test]
fn build_buildkit_debian_cli() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let tag = format!("{}:1", unique("buildkit"));
    c.image(&tag);
    let ctx = build_context();
    let mut cmd = docker_cmd(DOCKER_2010, &p.docker_host(), &["build", "-t", &tag, ctx.path().to_str().expect("utf-8")]);
    cmd.env("DOCKER_BUILDKIT", "1");
    run_ok(cmd, "DOCKER_BUILDKIT=1 docker build (20.10, /session)");
    assert_eq!(docker(&p.docker_host(), &["run", "--rm", &tag]).trim(), "1000000 /data.txt");
    assert!(p.log_text().contains("path=/session status=101"), "BuildKit must have used a /session upgrade");
}

#[test]
fn events_while_containers_start_and_stop() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("events");
    c.container(&name);
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let mut events =
        docker_cmd("docker", &p.docker_host(), &["events", "--filter", &format!("container={name}"), "--format", "{{.Action}}"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker events");
    std::thread::sleep(std::time::Duration::from_millis(500));
    docker(&p.docker_host(), &["run", "--name", &name, BUSYBOX, "true"]);
    docker(&p.docker_host(), &["rm", &name]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = events.kill();
    let streamed = String::from_utf8_lossy(&events.wait_with_output().expect("events").stdout).into_owned();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let until = (now + 1).to_string();
    let since = start.to_string();
    let args = ["events", "--since", &since, "--until", &until, "--filter", &format!("container={name}"), "--format", "{{.Action}}"];
    let (replayed, direct) = (docker(&p.docker_host(), &args), docker(DIRECT, &args));
    assert_eq!(replayed, direct);
    for action in ["create", "start", "die", "destroy"] {
        assert!(streamed.lines().any(|l| l == action), "{action} missing from the live stream: {streamed}");
    }
}

#[test]
fn stats_no_stream() {
    let p = Proxy::start();
    let mut c = Cleanup::new();
    let name = unique("stats");
    c.container(&name);
    docker(&p.docker_host(), &["run", "-d", "--name", &name, BUSYBOX, "sleep", "300"]);
    let out = docker(&p.docker_host(), &["stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", &name]);
    assert_eq!(out.trim(), format!("{name} 1"));
}

#[test]
fn volumes_and_networks() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let (vol, net) = (unique("vol"), unique("net"));
    c.volume(&vol);
    c.network(&net);
    docker(&h, &["volume", "create", "--label", "t=1", &vol]);
    docker(&h, &["network", "create", "--label", "t=1", &net]);
    let fmt_v = ["volume", "ls", "--filter", &format!("name={vol}"), "--format", "{{.Name}} {{.Driver}}"];
    assert_eq!(both(&p, &fmt_v).0, format!("{vol} local\n"));
    let fmt_n = ["network", "ls", "--filter", &format!("name={net}"), "--format", "{{.Name}} {{.Driver}}"];
    assert_eq!(both(&p, &fmt_n).0, format!("{net} bridge\n"));
    let (a, b) = both(&p, &["volume", "inspect", &vol, "--format", "{{.Labels}} {{.Mountpoint}}"]);
    assert_eq!(a, b);
    docker(&h, &["run", "--rm", "--network", &net, "-v", &format!("{vol}:/data"), BUSYBOX, "sh", "-c", "echo kept > /data/f"]);
    assert_eq!(docker(&h, &["run", "--rm", "-v", &format!("{vol}:/data"), BUSYBOX, "cat", "/data/f"]), "kept\n");
    docker(&h, &["volume", "rm", &vol]);
    docker(&h, &["network", "rm", &net]);
    assert!(docker(DIRECT, &["volume", "ls", "-q"]).lines().all(|l| l != vol));
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
    docker(&h, &["tag", BUSYBOX, &tagged]);
    let pushed = docker(&h, &["push", &tagged]);
    assert!(pushed.contains("digest: sha256:"), "{pushed}");
    docker(&h, &["rmi", &tagged]);
    let pulled = docker(&h, &["pull", &tagged]);
    assert!(pulled.contains("Downloaded newer image") || pulled.contains("Image is up to date"), "{pulled}");
    assert_eq!(docker(&h, &["run", "--rm", &tagged, "echo", "pulled"]), "pulled\n");
    let (a, b) = both(&p, &["image", "inspect", &tagged, "--format", "{{.Id}} {{.RepoDigests}}"]);
    assert_eq!(a, b);
}

#[test]
fn save_and_load() {
    let p = Proxy::start();
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let tag = format!("{}:saved", unique("save"));
    c.image(&tag);
    docker(&h, &["tag", BUSYBOX, &tag]);
    let id = docker(&h, &["image", "inspect", &tag, "--format", "{{.Id}}"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("img.tar");
    docker(&h, &["save", "-o", tar.to_str().expect("utf-8"), &tag]);
    assert!(std::fs::metadata(&tar).expect("tar").len() > 1_000_000);
    docker(&h, &["rmi", &tag]);
    let loaded = docker(&h, &["load", "-i", tar.to_str().expect("utf-8")]);
    assert!(loaded.contains(&tag), "{loaded}");
    assert_eq!(docker(DIRECT, &["image", "inspect", &tag, "--format", "{{.Id}}"]), id);
}

#[test]
fn compose_up_ps_down() {
    let p = Proxy::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let project = unique("compose").replace('-', "");
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            "version: '3'\nservices:\n  db:\n    image: {BUSYBOX}\n    command: sh -c 'echo ready > /srv/state; httpd -f -p 8080 -h /srv'\n    volumes: [data:/srv]\n  app:\n    image: {BUSYBOX}\n    command: sh -c 'sleep 1; wget -q -O - http://db:8080/state; sleep 300'\n    depends_on: [db]\nvolumes:\n  data: {{}}\n"
        ),
    )
    .expect("compose file");
    let compose = |args: &[&str]| {
        let mut c = Command::new("docker-compose");
        c.args(["-p", &project]).args(args).current_dir(dir.path()).env("DOCKER_HOST", p.docker_host());
        run_ok(c, &format!("docker-compose {}", args.join(" ")))
    };
    compose(&["up", "-d"]);
    let ps = compose(&["ps"]);
    assert!(ps.contains(&format!("{project}_db_1")) && ps.contains(&format!("{project}_app_1")), "{ps}");
    // The app reached the db by its service name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let logs = compose(&["logs", "app"]);
        if logs.contains("ready") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "app never reached db: {logs}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    compose(&["down", "-v"]);
    let left = docker(DIRECT, &["ps", "-a", "--filter", &format!("label=com.docker.compose.project={project}"), "-q"]);
    assert!(left.trim().is_empty(), "compose down left {left}");
}

#[test]
fn python_sdk_flows() {
    let p = Proxy::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_flows.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, &p.docker_host(), BUSYBOX, &unique("sdk")]);
    let out = run_ok(cmd, "python3 tests/python/sdk_flows.py");
    assert!(out.contains("all SDK flows passed"), "{out}");
}
