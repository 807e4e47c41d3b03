//! Issue acceptance: with the `conservative` policy, the everyday developer workflow still works
//! untouched; `dry_run` refuses nothing; `inject` puts its values into every container, as the
//! real daemon's `inspect` shows, and forced values beat the client's.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const STRICT: &str = r#"
[listener.t]
address = "unix://{dir}/d.sock"
policies = ["strict"]
[policy.strict]
kind = "conservative"
"#;

#[test]
fn everyday_workflows_pass_the_conservative_policy() {
    let p = Proxy::start_with_config(STRICT, "d.sock");
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let (vol, net, name, tag) = (unique("vol"), unique("net"), unique("legit"), format!("{}:1", unique("legit-img")));
    c.volume(&vol);
    c.network(&net);
    c.container(&name);
    c.image(&tag);

    docker(&h, &["volume", "create", &vol]);
    docker(&h, &["network", "create", &net]);
    assert!(docker(&h, &["volume", "ls", "-q"]).lines().any(|l| l == vol));
    assert!(docker(&h, &["network", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == net));
    let out = docker(
        &h,
        &[
            "run",
            "--rm",
            "--network",
            &net,
            "-v",
            &format!("{vol}:/data"),
            "--tmpfs",
            "/scratch",
            "-p",
            "127.0.0.1::8080",
            "-e",
            "A=1",
            "--cap-add",
            "NET_BIND_SERVICE",
            "--security-opt",
            "no-new-privileges",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--read-only",
            "--user",
            "65534",
            "--ulimit",
            "nofile=1024:1024",
            "--memory",
            "64m",
            "--pids-limit",
            "100",
            BUSYBOX,
            "sh",
            "-c",
            "echo $A; id -u; ulimit -n",
        ],
    );
    assert_eq!(out, "1\n65534\n1024\n");

    docker(&h, &["run", "-d", "--name", &name, "-v", &format!("{vol}:/data"), BUSYBOX, "sh", "-c", "echo started; sleep 300"]);
    let mut exec = docker_cmd("docker", &h, &["exec", "-i", &name, "sh", "-c", "cat > /data/f; echo written"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("exec");
    exec.stdin.take().expect("stdin").write_all(b"through exec\n").expect("write");
    assert_eq!(String::from_utf8_lossy(&exec.wait_with_output().expect("exec").stdout), "written\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("f");
    docker(&h, &["cp", &format!("{name}:/data/f"), local.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read_to_string(&local).expect("read"), "through exec\n");
    docker(&h, &["cp", local.to_str().expect("utf-8"), &format!("{name}:/tmp/g")]);
    assert_eq!(docker(&h, &["exec", &name, "cat", "/tmp/g"]), "through exec\n");
    assert_eq!(docker(&h, &["logs", &name]), "started\n");
    docker(&h, &["stop", "-t", "1", &name]);

    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {BUSYBOX}\nRUN echo built > /b\nCMD cat /b\n")).expect("Dockerfile");
    let mut legacy = docker_cmd("docker", &h, &["build", "-q", "-t", &tag, dir.path().to_str().expect("utf-8")]);
    legacy.env("DOCKER_BUILDKIT", "0");
    run_ok(legacy, "legacy build under conservative");
    let mut bk = docker_cmd(DOCKER_2010, &h, &["build", "-t", &tag, dir.path().to_str().expect("utf-8")]);
    bk.env("DOCKER_BUILDKIT", "1");
    run_ok(bk, "BuildKit build under conservative");
    assert_eq!(docker(&h, &["run", "--rm", &tag]), "built\n");

    let project = unique("legitc").replace('-', "");
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!("version: '3'\nservices:\n  a:\n    image: {BUSYBOX}\n    command: sleep 300\n    volumes: [d:/d]\n  b:\n    image: {BUSYBOX}\n    command: sh -c 'ping -c1 a && sleep 300'\nvolumes:\n  d: {{}}\n"),
    )
    .expect("compose file");
    let compose = |args: &[&str]| {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", &project]).args(args).current_dir(dir.path()).env("DOCKER_HOST", &h);
        run_ok(cmd, &format!("docker-compose {}", args.join(" ")))
    };
    compose(&["up", "-d"]);
    assert!(compose(&["ps"]).contains(&format!("{project}_b_1")));
    compose(&["down", "-v"]);
    assert!(!p.log_text().contains("request refused"), "a legitimate request was refused:\n{}", p.log_text());
}

#[test]
fn dry_run_logs_but_refuses_nothing() {
    let p = Proxy::start_with_config(&format!("{STRICT}dry_run = true\n"), "d.sock");
    let mut c = Cleanup::new();
    let name = unique("dry");
    c.container(&name);
    docker(&p.docker_host(), &["create", "--privileged", "--name", &name, BUSYBOX, "true"]);
    assert_eq!(docker(direct(), &["inspect", &name, "--format", "{{.HostConfig.Privileged}}"]).trim(), "true");
    assert!(p.wait_log("would be refused (dry run)", Duration::from_secs(5)), "{}", p.log_text());
    assert!(p.log_text().contains("privileged mode"));
}

#[test]
fn inject_sets_and_forces_values() {
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::write(shared.path().join("ca.pem"), "injected\n").expect("file");
    let config = format!(
        r#"
[listener.t]
address = "unix://{{dir}}/d.sock"
policies = ["strict", "ci"]
[policy.strict]
kind = "conservative"
[policy.ci]
kind = "inject"
[policy.ci.defaults]
env = {{ LANG = "C.UTF-8" }}
user = "65534"
[policy.ci.force]
env = {{ CI = "true" }}
labels = {{ "ci.job" = "42" }}
extra_hosts = ["cache.example:10.1.2.3"]
dns = ["10.9.9.9"]
mounts = [{{ source = "{}", target = "/etc/ctproxy-ca" }}]
memory = "128m"
cpus = 0.5
pids_limit = 64
ulimits = [{{ name = "nofile", soft = 2048, hard = 2048 }}]
"#,
        shared.path().display()
    );
    let p = Proxy::start_with_config(&config, "d.sock");
    let h = p.docker_host();
    let mut c = Cleanup::new();
    let (plain, greedy) = (unique("inj"), unique("inj"));
    c.container(&plain);
    c.container(&greedy);

    docker(&h, &["run", "-d", "--name", &plain, BUSYBOX, "sleep", "300"]);
    let fmt = "{{json .Config.Env}}|{{index .Config.Labels \"ci.job\"}}|{{.HostConfig.ExtraHosts}}|{{.HostConfig.Dns}}|{{.HostConfig.Memory}}|{{.HostConfig.NanoCpus}}|{{.HostConfig.PidsLimit}}|{{range .HostConfig.Ulimits}}{{.Name}}={{.Soft}}:{{.Hard}}{{end}}|{{.Config.User}}";
    let got = docker(direct(), &["inspect", &plain, "--format", fmt]);
    let fields: Vec<&str> = got.trim().split('|').collect();
    assert!(fields[0].contains("CI=true") && fields[0].contains("LANG=C.UTF-8"), "{got}");
    assert_eq!(&fields[1..], ["42", "[cache.example:10.1.2.3]", "[10.9.9.9]", "134217728", "500000000", "64", "nofile=2048:2048", "65534"]);
    assert_eq!(docker(&h, &["exec", &plain, "cat", "/etc/ctproxy-ca/ca.pem"]), "injected\n");
    assert!(
        docker_output(&h, &["exec", &plain, "sh", "-c", "echo x > /etc/ctproxy-ca/new"]).status.code() != Some(0),
        "the mount must be read-only"
    );
    assert!(docker(&h, &["exec", &plain, "sh", "-c", "echo $CI"]).contains("true"), "exec gets the forced env");

    // The client tries to override forced values; defaults yield to the client.
    docker(
        &h,
        &[
            "run",
            "-d",
            "--name",
            &greedy,
            "-e",
            "CI=false",
            "-e",
            "LANG=fr",
            "--label",
            "ci.job=spoofed",
            "--memory",
            "2g",
            "--pids-limit",
            "-1",
            "--user",
            "0",
            "--add-host",
            "cache.example:6.6.6.6",
            BUSYBOX,
            "sleep",
            "300",
        ],
    );
    let got = docker(direct(), &["inspect", &greedy, "--format", fmt]);
    let fields: Vec<&str> = got.trim().split('|').collect();
    assert!(fields[0].contains("CI=true") && !fields[0].contains("CI=false") && fields[0].contains("LANG=fr"), "{got}");
    assert_eq!(&fields[1..], ["42", "[cache.example:10.1.2.3]", "[10.9.9.9]", "134217728", "500000000", "64", "nofile=2048:2048", "0"]);

    // `docker update` cannot lift the forced limit, and the limit stays.
    let out = docker_output(&h, &["update", "--memory", "1g", "--memory-swap", "1g", &plain]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not allowed by policy ci"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(docker(direct(), &["inspect", &plain, "--format", "{{.HostConfig.Memory}}"]).trim(), "134217728");
    docker(&h, &["update", "--memory", "64m", "--memory-swap", "64m", &plain]);
    assert_eq!(docker(direct(), &["inspect", &plain, "--format", "{{.HostConfig.Memory}}"]).trim(), "67108864");
}
