//! Compatibility through a job socket (issue 17): inside its namespace, a job's Docker API answers
//! as the daemon does. Each test runs on Debian's dockerd 20.10 and on Docker 28.5 with the
//! containerd image store (`CTPROXY_TEST_DOCKER_HOST=unix:///run/ctproxy-d28/docker.sock`).

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use support::jobs::*;
use support::*;

/// The docker CLI 28 on a job's socket, with the classic builder (these tests run on both daemons;
/// BuildKit through a job socket is `tests/buildkit.rs`, Docker 28 only).
fn job_docker(job: &JobSocket, args: &[&str]) -> Output {
    retrying_store_races(args, || {
        let mut c = docker_cmd("docker", &job.host, args);
        c.env("DOCKER_BUILDKIT", "0");
        output_within(c, None, Duration::from_secs(300), &args.join(" "))
    })
}

fn job_ok(job: &JobSocket, args: &[&str]) -> String {
    let out = job_docker(job, args);
    check(&out, args);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A build context with `dockerfile` as its Dockerfile.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    dir
}

fn id_hex(id: &str) -> &str {
    id.trim().strip_prefix("sha256:").unwrap_or(id.trim())
}

/// Item 1: images a namespace made without a name are its own: by full ID, short ID, in lists
/// (`dangling=true`), removed with the namespace; another namespace does not see them.
#[test]
fn untagged_images_are_the_namespaces_own() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let other = host.job();
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo {} > /marker\n", unique("m")));
    let built = job_ok(&job, &["build", "-q", &ctx.path().display().to_string()]);
    let hex = id_hex(&built).to_owned();
    assert_eq!(hex.len(), 64, "build -q prints the ID: {built}");

    // By full ID, short ID and sha256: ID.
    for r in [built.trim(), &hex[..12], &hex] {
        assert!(job_ok(&job, &["run", "--rm", r, "cat", "/marker"]).len() > 1, "run {r}");
    }
    assert_eq!(id_hex(&job_ok(&job, &["image", "inspect", "--format", "{{.Id}}", &hex[..12]])), hex);
    // Dangling for the client: no tag it sees.
    let tags = job_ok(&job, &["image", "inspect", "--format", "{{json .RepoTags}}", &hex]);
    assert!(tags == "[]" || tags == "null", "tags: {tags}");
    let dangling = job_ok(&job, &["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert!(dangling.contains(&hex), "dangling=true lists it: {dangling}");
    let tagged = job_ok(&job, &["images", "-q", "--no-trunc", "--filter", "dangling=false"]);
    assert!(!tagged.contains(&hex), "dangling=false does not: {tagged}");
    assert!(job_ok(&job, &["images", "-q", "--no-trunc"]).contains(&hex));
    assert!(!job_ok(&job, &["images", "--format", "{{.Repository}}"]).contains("ctproxy-untagged"), "hidden tags never show");

    // commit without a name; inspect by the ID it printed.
    job_ok(&job, &["create", "--name", "c1", &hex, "true"]);
    let committed = job_ok(&job, &["commit", "c1"]);
    assert_eq!(id_hex(&job_ok(&job, &["image", "inspect", "--format", "{{.Id}}", &committed])), id_hex(&committed));

    // Another namespace sees none of it.
    for r in [&hex[..12], &hex, id_hex(&committed)] {
        assert!(!other.docker(&["image", "inspect", r]).status.success(), "other namespace sees {r}");
        assert!(!other.docker(&["images", "-q", "--no-trunc"]).stdout.windows(12).any(|w| w == &r.as_bytes()[..12]));
    }

    // tag then rmi the tag: the image goes with its last name, as on the daemon.
    job_ok(&job, &["rm", "c1"]);
    job_ok(&job, &["tag", id_hex(&committed), "named:1"]);
    job_ok(&job, &["rmi", "named:1"]);
    assert!(!docker_output(direct(), &["image", "inspect", id_hex(&committed)]).status.success(), "rmi of the last name removes the image");

    // image prune (dangling) removes the namespace's own untagged images.
    job_ok(&job, &["image", "prune", "-f"]);
    assert!(!docker_output(direct(), &["image", "inspect", &hex]).status.success(), "image prune removed the untagged build");

    // Removed with the namespace.
    let again = job_ok(&job, &["build", "-q", &ctx.path().display().to_string()]);
    let again = id_hex(&again).to_owned();
    assert!(docker_output(direct(), &["image", "inspect", &again]).status.success());
    job.remove();
    assert!(!docker_output(direct(), &["image", "inspect", &again]).status.success(), "namespace removal removed its untagged image");
}

/// Item 1: `docker load` of an untagged archive prints the ID, and the image is the namespace's.
#[test]
fn untagged_loads_are_the_namespaces_own() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo {} > /marker\n", unique("l")));
    let built = job_ok(&job, &["build", "-q", &ctx.path().display().to_string()]);
    let dir = tempfile::tempdir().expect("tempdir");
    let tar = dir.path().join("img.tar");
    job_ok(&job, &["save", "-o", &tar.display().to_string(), id_hex(&built)]);
    job_ok(&job, &["rmi", id_hex(&built)]);
    let loaded = job_ok(&job, &["load", "-i", &tar.display().to_string()]);
    let id = loaded.rsplit(' ').next().unwrap_or("").to_owned();
    assert!(loaded.contains("Loaded image ID: sha256:"), "load: {loaded}");
    job_ok(&job, &["image", "inspect", &id]);
    job_ok(&job, &["run", "--rm", &id, "cat", "/marker"]);
    let other = host.job();
    assert!(!other.docker(&["image", "inspect", &id]).status.success());
}

#[allow(dead_code)]
fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or(Value::Null)
}

/// Item 6: a broken archive gets the daemon's kind of answer (its message, a client error), not a
/// 502 "cannot reach the daemon".
#[test]
fn broken_load_is_the_clients_error() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, random_bytes(3000)).expect("junk");
    let direct_out = docker_output(direct(), &["load", "-i", &junk.display().to_string()]);
    assert!(!direct_out.status.success());
    let out = job.docker(&["load", "-i", &junk.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("invalid tar header"), "the daemon's message: {err}");
    // As the daemon words it, version by version (20.10 wraps it in its untar's failure).
    assert_eq!(err, String::from_utf8_lossy(&direct_out.stderr), "the daemon's own wording");
    assert!(!err.contains("502") && !err.contains("Body stream") && !err.contains("cannot reach"), "{err}");
    // An archive that is a tar but not an image: the daemon's own answer.
    let tar = dir.path().join("empty.tar");
    run_ok(
        {
            let mut c = std::process::Command::new("tar");
            c.args(["-cf", &tar.display().to_string(), "-C", &dir.path().display().to_string(), "junk.tar"]);
            c
        },
        "tar",
    );
    let direct_out = docker_output(direct(), &["load", "-i", &tar.display().to_string()]);
    let out = job.docker(&["load", "-i", &tar.display().to_string()]);
    assert_eq!(out.status.success(), direct_out.status.success());
    let digits = |o: &Output| String::from_utf8_lossy(&o.stderr).replace(|c: char| c.is_ascii_digit(), "");
    assert_eq!(digits(&out), digits(&direct_out));
}

/// Item 6: swarm endpoints on a node that is not part of a swarm answer as dockerd does (503 and
/// its message), so that clients' teardown code works.
#[test]
fn swarm_endpoints_answer_as_on_a_non_swarm_node() {
    require_docker();
    let state = docker(direct(), &["info", "--format", "{{.Swarm.LocalNodeState}}"]);
    assert_eq!(state.trim(), "inactive", "the test daemons are not in a swarm");
    let host = JobHost::start();
    let job = host.job();
    for (method, path) in [
        ("POST", "/v1.41/swarm/leave"),
        ("GET", "/v1.41/swarm"),
        ("GET", "/v1.41/services"),
        ("GET", "/v1.41/nodes"),
        ("GET", "/v1.41/tasks"),
        ("GET", "/v1.41/secrets"),
        ("GET", "/v1.41/configs"),
        ("GET", "/v1.41/swarm/unlockkey"),
        ("GET", "/v1.41/services/x"),
        ("DELETE", "/v1.41/nodes/x"),
        ("GET", "/v1.41/services/x/logs?stdout=1"),
        ("GET", "/v1.41/tasks/x/logs?stderr=true"),
    ] {
        let want = http_json(direct_socket(), method, path, None);
        let got = job.request(method, path, None);
        assert_eq!(want.0, 503, "{method} {path} on the daemon: {want:?}");
        assert_eq!(got, want, "{method} {path}");
    }
    // The logs routes check their streams before anything else (500), and an unlock with a key
    // finds no swarm.
    for (method, path, body) in [
        ("GET", "/v1.41/services/x/logs", None),
        ("GET", "/v1.41/tasks/x/logs?stdout=0", None),
        ("POST", "/v1.41/swarm/unlock", Some(r#"{"UnlockKey":"SWMKEY-1-x"}"#)),
    ] {
        let want = http_json(direct_socket(), method, path, body);
        let got = job.request(method, path, body);
        assert!(want.0 == 500 || want.0 == 503, "{method} {path} on the daemon: {want:?}");
        assert_eq!(got, want, "{method} {path}");
    }
    let out = job.docker(&["swarm", "leave", "--force"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("This node is not part of a swarm"), "{out:?}");
    // Joining a swarm stays refused: it changes the daemon for everyone.
    let (status, _) = job.request("POST", "/v1.41/swarm/init", Some("{}"));
    assert_eq!(status, 403);
}

/// Item 5: dockerd's routes take the rest of the path as the name (`{name:.*}`): removing a link
/// (`docker rm --link /web/db`) reaches the daemon, for the namespace's own containers only. (In a
/// namespace every container is on a user-defined network, where links are network aliases, not
/// names: the daemon then answers its own not-found, as it does on any user-defined network.)
#[test]
fn link_removal_is_routed_like_dockerd() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    job_ok(&job, &["run", "-d", "--name", "db", BUSYBOX, "sleep", "300"]);
    job_ok(&job, &["run", "-d", "--name", "web", "--link", "db:dbalias", BUSYBOX, "sleep", "300"]);
    let out = job_docker(&job, &["rm", "--link", "/web/dbalias"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("endpoint") && !err.contains("ctproxy"), "routed to the daemon: {err}");
    assert!(err.contains("No such container: web/dbalias") || out.status.success(), "the daemon's answer, de-mangled: {err}");
    // Another namespace cannot name it.
    let other = host.job();
    let out = other.docker(&["rm", "--link", "/web/dbalias"]);
    assert_refused(&out, "No such container: web/dbalias");
    // A path with a slash on other container routes gets the daemon's not-found, not "unknown endpoint".
    let (status, body) = job.request("GET", "/v1.41/containers/a/b/json", None);
    assert_eq!(status, 404, "{body}");
    job_ok(&job, &["rm", "-f", "web", "db"]);
}

/// Item 2: a container reports its image as the client wrote it (`Config.Image`, `ps`, events),
/// as the daemon does: `busybox`, not `busybox:latest`.
#[test]
fn image_names_come_back_as_written() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let shared = BUSYBOX.trim_end_matches(":latest");
    job_ok(&job, &["tag", BUSYBOX, "mine"]);
    let since = timestamp_now();
    for (name, image) in [("c-shared", shared), ("c-own", "mine"), ("c-tagged", "mine:latest")] {
        job_ok(&job, &["create", "--name", name, image, "true"]);
        assert_eq!(job_ok(&job, &["inspect", "--format", "{{.Config.Image}}", name]), image);
        assert_eq!(job_ok(&job, &["ps", "-a", "--filter", &format!("name=^{name}$"), "--format", "{{.Image}}"]), image);
    }
    // The daemon itself reports the same for the shared image.
    let direct_name = unique("compat-direct");
    docker(direct(), &["create", "--name", &direct_name, shared, "true"]);
    let want = docker(direct(), &["inspect", "--format", "{{.Config.Image}}", &direct_name]);
    docker(direct(), &["rm", &direct_name]);
    assert_eq!(want.trim(), shared);
    let events =
        job_ok(&job, &["events", "--since", &since, "--until", &timestamp_now(), "--filter", "event=create", "--format", "{{.From}}"]);
    assert!(events.lines().any(|l| l == shared) && events.lines().any(|l| l == "mine"), "events: {events}");
    job_ok(&job, &["rm", "c-shared", "c-own", "c-tagged"]);
}

/// Item 4: names the daemon accepts are accepted (a network name with a space), and names it
/// refuses are refused with its own message; mangling keeps working in filters and answers.
#[test]
fn names_the_daemon_accepts_are_accepted() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let net = "my net";
    job_ok(&job, &["network", "create", net]);
    assert_eq!(job_ok(&job, &["network", "inspect", "--format", "{{.Name}}", net]), net);
    let listed = job_ok(&job, &["network", "ls", "--filter", "name=my net", "--format", "{{.Name}}"]);
    assert_eq!(listed, net);
    job_ok(&job, &["run", "-d", "--name", "c-net", "--network", net, BUSYBOX, "sleep", "300"]);
    let nets = job_ok(&job, &["inspect", "--format", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", "c-net"]);
    assert_eq!(nets, net);
    assert_eq!(job_ok(&job, &["ps", "--filter", "network=my net", "--format", "{{.Names}}"]), "c-net");
    job_ok(&job, &["rm", "-f", "c-net"]);
    job_ok(&job, &["network", "rm", net]);
    // A slash too (dockerd's network routes take the rest of the path).
    job_ok(&job, &["network", "create", "team/net"]);
    assert_eq!(job_ok(&job, &["network", "inspect", "--format", "{{.Name}}", "team/net"]), "team/net");
    job_ok(&job, &["network", "rm", "team/net"]);
    // Refused where the daemon refuses, with its message.
    for (args, name) in [
        (vec!["create", "--name", "x", BUSYBOX, "true"], "x"),
        (vec!["volume", "create", "x"], "x"),
        (vec!["volume", "create", "a b"], "a b"),
    ] {
        let want = docker_output(direct(), &args);
        let got = job.docker(&args);
        assert!(!want.status.success() && !got.status.success(), "{name}");
        assert_eq!(String::from_utf8_lossy(&got.stderr), String::from_utf8_lossy(&want.stderr), "{args:?}");
    }
}

/// A job host whose containers get the cache's CA (the `[cache]` section; no origins are needed
/// for the decoration itself).
fn job_host_with_cache() -> JobHost {
    JobHost::start_with(
        r#"
[cache]
hosts = ["repo.test"]
listen = "127.0.0.1"
http_port = 0
https_port = 0
dir = "{dir}/cache"
metrics_listen = "127.0.0.1:0"
"#,
    )
}

/// Item 3: `docker diff` of a fresh container lists nothing ctproxy's CA injection made.
#[test]
fn decoration_does_not_show_in_diff() {
    require_docker();
    let host = job_host_with_cache();
    let job = host.job();
    job_ok(&job, &["create", "--name", "fresh", BUSYBOX, "true"]);
    let mounts = job_ok(&job, &["inspect", "--format", "{{range .Mounts}}{{.Destination}} {{end}}", "fresh"]);
    assert!(mounts.contains("/run/ctproxy-ca"), "the cache decorates job containers: {mounts}\n{}", host.log_text());
    job_ok(&job, &["start", "fresh"]);
    job_ok(&job, &["wait", "fresh"]);
    let diff = job_ok(&job, &["diff", "fresh"]);
    assert_eq!(diff, "", "a fresh container has no changes");
    // The job's own changes still show, next to the mount points.
    job_ok(&job, &["run", "--name", "busy", BUSYBOX, "sh", "-c", "mkdir -p /run/mine /usr/local/x && touch /run/mine/f"]);
    let diff = job_ok(&job, &["diff", "busy"]);
    // Compared with the same container on the daemon, without the decoration.
    let name = unique("compat-diff");
    docker(direct(), &["run", "--name", &name, BUSYBOX, "sh", "-c", "mkdir -p /run/mine /usr/local/x && touch /run/mine/f"]);
    let want = docker(direct(), &["diff", &name]);
    docker(direct(), &["rm", &name]);
    let sorted = |s: &str| {
        let mut l: Vec<String> = s.lines().map(str::to_owned).collect();
        l.sort();
        l
    };
    assert_eq!(sorted(&diff), sorted(&want));
    assert!(!diff.contains("ctproxy"), "{diff}");
    job_ok(&job, &["rm", "fresh", "busy"]);
}

/// The member names of a tar archive.
fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut c = std::process::Command::new("tar");
    c.args(["-tf", "-"]);
    let out = output_within(c, Some(tar.to_vec()), Duration::from_secs(60), "tar -t");
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
    names.sort();
    names
}

/// Item 3: `docker export` of a decorated container has the file system the daemon would give
/// without the decoration.
#[test]
fn decoration_does_not_show_in_export() {
    require_docker();
    let host = job_host_with_cache();
    let job = host.job();
    // Run once: the daemon makes the mount points when the container starts.
    job_ok(&job, &["run", "--name", "fresh", BUSYBOX, "true"]);
    let via = job_docker(&job, &["export", "fresh"]);
    assert!(via.status.success());
    let name = unique("compat-export");
    docker(direct(), &["run", "--name", &name, BUSYBOX, "true"]);
    let direct_out = docker_output(direct(), &["export", &name]);
    docker(direct(), &["rm", &name]);
    let (got, want) = (tar_names(&via.stdout), tar_names(&direct_out.stdout));
    assert!(!got.iter().any(|n| n.contains("ctproxy")), "{got:?}");
    assert_eq!(got, want);
    job_ok(&job, &["rm", "fresh"]);
}

/// The paths of every layer in a `docker save` archive (legacy `layer.tar` members and OCI blobs,
/// plain or gzip-compressed).
fn saved_layer_paths(archive: &[u8]) -> Vec<String> {
    use std::io::Read;
    let mut paths = Vec::new();
    let mut ar = tar::Archive::new(archive);
    for entry in ar.entries().expect("saved archive") {
        let mut entry = entry.expect("member");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("member data");
        if data.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(data.as_slice()).read_to_end(&mut plain).is_ok() {
                data = plain;
            }
        }
        // A layer is a tar archive ("ustar" at offset 257); JSON members are not.
        if data.len() >= 512 && &data[257..262] == b"ustar" {
            let mut layer = tar::Archive::new(data.as_slice());
            for e in layer.entries().expect("layer") {
                paths.push(e.expect("layer member").path().expect("path").display().to_string());
            }
        }
    }
    paths
}

/// Item 3: an image committed in a job carries none of ctproxy's mount points: what the job wrote
/// is there, the ID the client is told is the image's, it runs, and `docker save` shows no
/// ctproxy path in any layer. Named and unnamed commits.
#[test]
fn decoration_does_not_show_in_commit() {
    require_docker();
    let host = job_host_with_cache();
    let job = host.job();
    let script = "mkdir -p /usr/local/mine && echo hi > /usr/local/mine/f && echo top > /written";
    job_ok(&job, &["run", "--name", "writer", BUSYBOX, "sh", "-c", script]);
    let mounts = job_ok(&job, &["inspect", "--format", "{{range .Mounts}}{{.Destination}} {{end}}", "writer"]);
    assert!(mounts.contains("/run/ctproxy-ca"), "the cache decorates job containers: {mounts}\n{}", host.log_text());
    let id = job_ok(&job, &["commit", "writer", "committed:1"]);
    let inspected = job_ok(&job, &["image", "inspect", "--format", "{{.Id}}", "committed:1"]);
    assert_eq!(id, inspected, "{}", host.log_text());
    // The image's own file system, on the daemon (a container made through the job would be
    // decorated again).
    let found = docker(direct(), &["run", "--rm", &id, "find", "/", "-xdev"]);
    assert!(!found.contains("ctproxy") && !found.lines().any(|l| l == "/run"), "{found}\n{}", host.log_text());
    assert!(found.contains("/usr/local/mine/f") && found.contains("/written"), "{found}");
    let content = docker(direct(), &["run", "--rm", &id, "cat", "/written"]);
    assert_eq!(content.trim(), "top");
    let saved = job_docker(&job, &["save", "committed:1"]);
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let paths = saved_layer_paths(&saved.stdout);
    assert!(paths.iter().any(|p| p.contains("written")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.contains("ctproxy") || p.trim_end_matches('/') == "run"), "{paths:?}");
    // History as the daemon gives it: the base's entries and the commit's.
    let base = job_ok(&job, &["history", "-q", "--no-trunc", BUSYBOX]).lines().count();
    let rows = job_ok(&job, &["history", "-q", "--no-trunc", "committed:1"]);
    assert_eq!(rows.lines().count(), base + 1, "{rows}");
    let history = job_ok(&job, &["history", "--no-trunc", "--format", "{{.CreatedBy}}", "committed:1"]);
    assert!(history.lines().next().unwrap_or("").contains(script), "{history}");
    // The daemon's own image is gone: nothing dangling is left behind.
    assert_eq!(job_ok(&job, &["images", "-q", "--filter", "dangling=true"]), "");
    // Without a name: the ID the client is told names the rewritten image.
    let unnamed = job_ok(&job, &["commit", "writer"]);
    let found = docker(direct(), &["run", "--rm", &unnamed, "find", "/", "-xdev"]);
    assert!(!found.contains("ctproxy") && found.contains("/usr/local/mine/f"), "{found}");
    assert_eq!(job_ok(&job, &["image", "inspect", "--format", "{{.Id}}", &unnamed]), unnamed);
    job_ok(&job, &["run", "--rm", &unnamed, "cat", "/written"]);
    job_ok(&job, &["rm", "writer"]);
    job_ok(&job, &["rmi", "committed:1", &unnamed]);
}

/// Item 8: the Python SDK's usual flows through a job socket (`tests/python/compat_job.py`).
#[test]
fn python_sdk_flows_through_a_job_socket() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let mut c = std::process::Command::new("python3");
    c.arg("tests/python/compat_job.py").env("DOCKER_HOST", &job.host).env("BUSYBOX", BUSYBOX);
    let out = output_within(c, None, Duration::from_secs(300), "python3 tests/python/compat_job.py");
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        host.log_text()
    );
}

/// Item 8: the 20.10 CLI and docker-compose 1.29 through a job socket, compared with the daemon
/// where the answer does not depend on the namespace.
#[test]
fn cli_2010_and_compose_flows_through_a_job_socket() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let old = |args: &[&str]| {
        let mut c = docker_cmd(DOCKER_2010, &job.host, args);
        c.env("DOCKER_BUILDKIT", "0");
        let out = output_within(c, None, Duration::from_secs(300), &args.join(" "));
        check(&out, args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo old > /marker\n"));
    let id = old(&["build", "-q", &ctx.path().display().to_string()]);
    assert_eq!(old(&["run", "--rm", &id, "cat", "/marker"]), "old");
    let dangling = old(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    assert!(dangling.contains(id_hex(&id)), "{dangling}");
    old(&["run", "--name", "c2010", BUSYBOX, "sh", "-c", "echo hi > /f"]);
    assert_eq!(old(&["diff", "c2010"]), "A /f");
    assert_eq!(old(&["logs", "c2010"]), "");
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("f");
    old(&["cp", "c2010:/f", &f.display().to_string()]);
    assert_eq!(std::fs::read_to_string(&f).expect("cp").trim(), "hi");
    let committed = old(&["commit", "c2010"]);
    old(&["image", "inspect", &committed]);
    // import of an export, without a name.
    let tar = dir.path().join("c.tar");
    old(&["export", "-o", &tar.display().to_string(), "c2010"]);
    let imported = old(&["import", &tar.display().to_string()]);
    assert_eq!(old(&["run", "--rm", &imported, "cat", "/f"]), "hi");
    old(&["rm", "c2010"]);
    old(&["image", "prune", "-f"]);
    for gone in [&id, &committed, &imported] {
        assert!(!docker_output(direct(), &["image", "inspect", id_hex(gone)]).status.success(), "pruned: {gone}");
    }
    let (status, _) = job.request("GET", "/v1.41/system/df", None);
    assert_eq!(status, 200);

    // compose v1: up, ps, down.
    let proj = dir.path().join("proj");
    std::fs::create_dir(&proj).expect("proj");
    std::fs::write(
        proj.join("docker-compose.yml"),
        format!("version: '2.4'\nservices:\n  app:\n    image: {BUSYBOX}\n    command: sleep 60\n    networks: [back]\n    volumes: [data:/data]\nnetworks:\n  back: {{}}\nvolumes:\n  data: {{}}\n"),
    )
    .expect("compose file");
    let compose = |args: &[&str]| {
        let mut c = std::process::Command::new("docker-compose");
        c.args(["-p", "compat"]).args(args).current_dir(&proj).env("DOCKER_HOST", &job.host);
        let out = output_within(c, None, Duration::from_secs(300), &args.join(" "));
        check(&out, args);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    compose(&["up", "-d"]);
    assert!(compose(&["ps", "-q"]).len() >= 12);
    assert_eq!(job_ok(&job, &["ps", "--format", "{{.Names}} {{.Image}}"]), format!("compat_app_1 {BUSYBOX}"));
    compose(&["down", "-v", "-t", "0"]);
    assert!(job.on_daemon().is_empty(), "compose down left {:?}", job.on_daemon());
}

/// Item 1: the result of an untagged multi-stage build is the namespace's, and `FROM <its ID>`
/// works in a later build.
#[test]
fn untagged_multi_stage_results_are_the_namespaces_own() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let ctx = context(&format!("FROM {BUSYBOX} AS first\nRUN echo {} > /a\nFROM {BUSYBOX}\nCOPY --from=first /a /b\n", unique("ms")));
    let id = job_ok(&job, &["build", "-q", &ctx.path().display().to_string()]);
    assert!(job_ok(&job, &["run", "--rm", &id, "cat", "/b"]).contains("ms"));
    let next = context(&format!("FROM {}\nRUN cat /b\n", id_hex(&id)));
    let id2 = job_ok(&job, &["build", "-q", &next.path().display().to_string()]);
    job_ok(&job, &["image", "inspect", &id2]);
    let other = host.job();
    let out = job_docker(&other, &["build", "-q", &next.path().display().to_string()]);
    assert!(!out.status.success(), "another namespace builds FROM this namespace's untagged image");
}

/// Compose v2 (the `docker compose` plugin that Docker 23+ ships, 2.40 here) through a job socket:
/// a project with a network, a volume and two services that reach each other by name, up, ps,
/// exec, logs and down, leaving nothing behind in the job's namespace.
#[test]
fn compose_v2_through_a_job_socket() {
    let host = JobHost::start();
    let job = host.job();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("compose.yaml"),
        format!(
            r#"services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", "mkdir -p /www && echo pong > /www/ping && exec httpd -f -p 8080 -h /www"]
    networks: [back]
    volumes: [data:/data]
  client:
    image: {BUSYBOX}
    command: ["sleep", "600"]
    networks: [back]
    depends_on: [web]
networks:
  back: {{}}
volumes:
  data: {{}}
"#
        ),
    )
    .expect("compose file");
    let compose = |args: &[&str]| {
        let mut c = docker_cmd("docker", &job.host, &["compose", "--ansi", "never", "-p", "proj"]);
        c.args(args).current_dir(dir.path());
        let out = output_within(c, None, Duration::from_secs(180), &format!("docker compose {}", args.join(" ")));
        assert!(out.status.success(), "docker compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    compose(&["up", "-d"]);
    let mut services: Vec<String> = compose(&["ps", "--services"]).lines().map(str::to_owned).collect();
    services.sort();
    assert_eq!(services, ["client", "web"]);
    let reach = "for i in $(seq 1 100); do wget -q -O - http://web:8080/ping && exit 0; sleep 0.1; done; exit 1";
    assert_eq!(compose(&["exec", "-T", "client", "sh", "-c", reach]), "pong\n");
    let ps = compose(&["ps", "--format", "{{.Name}} {{.State}}"]);
    assert!(ps.contains("proj-web-1 running") && ps.contains("proj-client-1 running"), "{ps}");
    assert!(job.docker_ok(&["volume", "ls", "--format", "{{.Name}}"]).contains("proj_data"));
    compose(&["logs", "web"]);
    compose(&["down", "-v", "-t", "0"]);
    assert!(job.on_daemon().is_empty(), "compose down left {:?}", job.on_daemon());
}

/// A named volume of `-v data:/x` that does not exist is made with the namespace's label (so
/// `volume ls` lists it and the namespace's end removes it), again after the job removed it:
/// ctproxy remembers the volumes it saw, and a removal makes it forget.
#[test]
fn bound_volumes_are_labelled_again_after_removal() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    for round in 0..3 {
        job_ok(&job, &["run", "--rm", "-v", "data:/x", BUSYBOX, "true"]);
        let ls = job_ok(&job, &["volume", "ls", "-q"]);
        assert!(ls.lines().any(|l| l == "data"), "round {round}: {ls}");
        if round < 2 {
            job_ok(&job, &["volume", "rm", "data"]);
        }
    }
    assert_eq!(job.on_daemon(), vec![format!("ctp.{}.data", job.namespace)], "the labelled volume, by its daemon-side name");
    job.remove();
    assert!(job.on_daemon().is_empty(), "the namespace's end removes it");
}

/// Item e: `image prune` in a namespace applies `dangling`, `until`, `label` and `label!` as dockerd
/// does, to the namespace's own images only, and refuses the filters dockerd refuses, with its message.
#[test]
fn image_prune_honours_filters() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let other = host.job();
    let mark = unique("prune");
    let build = |j: &JobSocket, label: &str, tag: Option<&str>| {
        let ctx = context(&format!("FROM {BUSYBOX}\n{label}\nRUN echo {mark}{label} > /m\n"));
        let dir = ctx.path().display().to_string();
        let mut args = vec!["build", "-q"];
        if let Some(t) = tag {
            args.extend(["-t", t]);
        }
        args.push(&dir);
        let out = job_docker(j, &args);
        check(&out, &args);
        id_hex(&String::from_utf8_lossy(&out.stdout)).to_owned()
    };
    let exists = |hex: &str| docker_output(direct(), &["image", "inspect", hex]).status.success();
    let keep_no = build(&job, "LABEL keep=no", None);
    let keep_yes = build(&job, "LABEL keep=yes", None);
    let plain = build(&job, "", None);
    let tagged_no = build(&job, "LABEL keep=no tagged=1", Some("pruned:1"));
    let others = build(&other, "LABEL keep=no other=1", None);

    // label=k=v: only the untagged keep=no of this namespace.
    let pruned = job_ok(&job, &["image", "prune", "-f", "--filter", "label=keep=no"]);
    let listing = docker(direct(), &["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}} {{.CreatedAt}}"]);
    assert!(!exists(&keep_no), "label=keep=no pruned: {pruned}; {keep_no} in {listing}");
    assert!(exists(&keep_yes) && exists(&plain) && exists(&tagged_no), "the others stay");
    assert!(exists(&others), "another namespace's image stays");

    // label!=keep: the one without the label.
    job_ok(&job, &["image", "prune", "-f", "--filter", "label!=keep"]);
    assert!(!exists(&plain), "label!=keep pruned the unlabelled one");
    assert!(exists(&keep_yes));

    // until: images created after it stay; 0s (now) reaches them.
    job_ok(&job, &["image", "prune", "-f", "--filter", "until=1h"]);
    assert!(exists(&keep_yes), "created within the hour: kept by until=1h");
    job_ok(&job, &["image", "prune", "-f", "--filter", "until=2000-01-01T00:00:00Z"]);
    assert!(exists(&keep_yes), "created after 2000: kept");
    job_ok(&job, &["image", "prune", "-f", "--filter", "until=0s"]);
    assert!(!exists(&keep_yes), "until=0s (now) pruned it");

    // dangling=false (-a) with a label: the tagged image goes too.
    assert!(exists(&tagged_no));
    job_ok(&job, &["image", "prune", "-a", "-f", "--filter", "label=tagged=1"]);
    assert!(!exists(&tagged_no), "-a with label=tagged=1 pruned the tagged image");
    assert!(exists(&others), "another namespace's image stays");

    // What dockerd refuses, refused with its message (validated before anything is pruned).
    let direct_err = docker_output(direct(), &["image", "prune", "-f", "--filter", "foo=bar"]);
    let job_err = job_docker(&job, &["image", "prune", "-f", "--filter", "foo=bar"]);
    assert!(!direct_err.status.success() && !job_err.status.success());
    assert_eq!(String::from_utf8_lossy(&job_err.stderr), String::from_utf8_lossy(&direct_err.stderr));
    let bad = job_docker(&job, &["image", "prune", "-f", "--filter", "until=soon"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invalid value for 'until' filter"), "{bad:?}");
}

/// Item d: `docker push` through a job socket goes to the registry the job named, through the
/// registry proxy, with the job's own login; the registry holds the digest the CLI printed, and
/// another job pulls and runs it.
#[test]
fn push_through_a_job_socket() {
    require_docker();
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let reg = registry.addr.clone();
    let host = JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:0\"\ninsecure = [\"{reg}\"]\n"));
    let job = host.job();
    let cfg = tempfile::tempdir().expect("tempdir");
    let with_login = |j: &JobSocket, args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &j.host, args);
        c.env("DOCKER_CONFIG", cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &format!("docker {}", args.join(" ")))
    };
    let login = with_login(&job, &["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw"));
    check(&login, &["login", &reg]);
    let repo = unique("pushed").replace("ctproxy-test-", "");
    let target = format!("{reg}/compat/{repo}:1");
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo {repo} > /pushed\n"));
    job_ok(&job, &["build", "-t", &target, &ctx.path().display().to_string()]);
    let out = with_login(&job, &["push", &target], None);
    check(&out, &["push", &target]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let digest = text.split_whitespace().skip_while(|w| *w != "digest:").nth(1).unwrap_or_else(|| panic!("no digest: {text}")).to_owned();
    assert!(text.contains(&format!("[{reg}/compat/{repo}]")), "the CLI names the repository as typed: {text}");
    // The registry holds that manifest under the name the job typed.
    let head = std::process::Command::new("curl")
        .args(["-sfI", "-u", "ci:ci-pw", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"])
        .arg(format!("http://{reg}/v2/compat/{repo}/manifests/1"))
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(headers.contains(&format!("docker-content-digest: {digest}")), "registry answer: {headers}");
    // Without a login, a push is refused by the registry (the proxy forwards no credentials of its own).
    let anon = job_docker(&job, &["push", &target]);
    assert!(!anon.status.success(), "push without credentials: {anon:?}");

    // Another job pulls it with the same login and runs it.
    let other = host.job();
    let login = with_login(&other, &["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw"));
    check(&login, &["login", &reg]);
    let out = with_login(&other, &["pull", &target], None);
    check(&out, &["pull", &target]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("Digest: {digest}")), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(other.docker_ok(&["run", "--rm", &target, "cat", "/pushed"]), repo);

    // A classic build in a job that is logged in pulls its private base with that login (the
    // CLI's X-Registry-Config), as dockerd would; without a login the base is not pulled.
    let no_login = tempfile::tempdir().expect("tempdir");
    let classic = |j: &JobSocket, login: bool, tag: &str| {
        let ctx = context(&format!("FROM {target}\nRUN cat /pushed > /built\n"));
        let mut c = docker_cmd("docker", &j.host, &["build", "-t", tag, &ctx.path().display().to_string()]);
        c.env("DOCKER_BUILDKIT", "0");
        c.env("DOCKER_CONFIG", if login { cfg.path() } else { no_login.path() });
        output_within(c, None, Duration::from_secs(300), "docker build")
    };
    let builder = host.job();
    let out = classic(&builder, true, "from-private:1");
    check(&out, &["build", "FROM", &target]);
    assert_eq!(builder.docker_ok(&["run", "--rm", "from-private:1", "cat", "/built"]), repo);
    let anonymous = host.job();
    let out = classic(&anonymous, false, "from-private:1");
    assert!(!out.status.success(), "a build without a login pulled the private base: {out:?}");
}

/// A push's request body through a job socket (issue 14). dockerd 20.10 reads it as the registry
/// credentials when no `X-Registry-Auth` came, so ctproxy takes only a JSON object: `[1]`, `"x"`,
/// `null`, a cut-off object or garbage is refused with a Docker-style 400 that names the rule,
/// audit-logged, and nothing reaches the daemon (no request for the repository reaches the
/// registry, through the registry proxy or at all). The `{}` that buildx's Go client (moby's
/// client module) always sends, framed by length or chunked, pushes as the docker CLI 28's empty
/// body does: in a namespace ctproxy drops it and sends the request on with its own length (a
/// `Content-Length: 2` left over no body made dockerd wait for the body before its first answer
/// byte: the push never answered, which hung `buildx build --push` on the classic image store).
#[test]
fn push_body_must_be_a_json_object() {
    require_docker();
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let reg = registry.addr.clone();
    let host = JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:{}\"\ninsecure = [\"{reg}\"]\n", free_port()));
    let job = host.job();
    let repo = unique("pushbody").replace("ctproxy-test-", "");
    let target = format!("{reg}/compat/{repo}:1");
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo {repo} > /pushed\n"));
    job_ok(&job, &["build", "-t", &target, &ctx.path().display().to_string()]);
    // The job's login, as the CLI sends it (base64url of an AuthConfig).
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE,
        serde_json::json!({"username": "ci", "password": "ci-pw", "serveraddress": reg}).to_string(),
    );
    let push = |body: &[u8], framing: BodyFraming| -> HttpReply {
        let path = format!("/v1.41/images/{reg}/compat/{repo}/push?tag=1");
        let headers = [("Content-Type", "application/json"), ("X-Registry-Auth", auth.as_str()), ("Connection", "close")];
        let mut replies = http_exchange(&job.socket, &http_request("POST", &path, &headers, body, framing), 1, Duration::from_secs(120));
        replies.pop().unwrap_or_else(|| panic!("no answer to a push with body {:?}", String::from_utf8_lossy(body)))
    };

    for body in [&b"[1]"[..], b"\"x\"", b"null", b"{\"username\":", b"garbage\x00\xff"] {
        for framing in [BodyFraming::Length, BodyFraming::Chunked] {
            let reply = push(body, framing);
            let shown = String::from_utf8_lossy(body);
            assert_eq!(reply.status, 400, "push with body {shown:?} ({framing:?}): {}", reply.text());
            let message = reply.message().unwrap_or_else(|| panic!("not a Docker-style error: {}", reply.text()));
            assert!(message.contains("push: the body must be a JSON object"), "{shown:?}: {message}");
        }
    }
    assert!(host.audited("the body must be a JSON object"), "no audit line:\n{}", host.log_text());
    // The daemon pushed nothing: no request for the repository reached the registry proxy or the
    // registry.
    let log = host.log_text();
    assert!(!log.lines().any(|l| l.contains("registry request") && l.contains(&repo)), "{log}");
    assert_eq!(registry.requests(&format!("/v2/compat/{repo}/")), Vec::<String>::new());

    // `{}` (buildx's client), both framings: the push runs to its end and the registry has it.
    for framing in [BodyFraming::Length, BodyFraming::Chunked] {
        let reply = push(b"{}", framing);
        let text = reply.text();
        assert_eq!(reply.status, 200, "{text}");
        assert!(text.contains("digest: sha256:") && !text.contains("errorDetail"), "push with {{}} ({framing:?}): {text}");
    }
    let head = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{http_code}", "-u", "ci:ci-pw", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json"])
        .arg(format!("http://{reg}/v2/compat/{repo}/manifests/1"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&head.stdout), "200", "the registry has no compat/{repo}:1");

    // The docker CLI 28's own `docker push` (an empty body) with the job's login.
    let cfg = tempfile::tempdir().expect("tempdir");
    let with_login = |args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &job.host, args);
        c.env("DOCKER_CONFIG", cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &format!("docker {}", args.join(" ")))
    };
    check(&with_login(&["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw")), &["login", &reg]);
    check(&with_login(&["push", &target], None), &["push", &target]);
}

/// Issue 15, image pulls: the registry proxy's blob cache across jobs, through job sockets, with a
/// 100 MiB image in a private (htpasswd) repository of Debian's `docker-registry`. Job 1 builds and
/// pushes it, removes it and pulls it back (the blobs are fetched and stored after their digest
/// check), and removes it again, so the daemon no longer has the layer. Job 2, with its own login,
/// pulls it: the origin moves no blob byte (ctproxy's `ctproxy_registry_blob_bytes_total{source=
/// "upstream"}` unchanged) and every blob is served on job 2's manifest grant, without an upstream
/// request. Job 3, without a login, gets nothing of it. The blobs are kept in the `[cache]`'s own
/// store (no `[registry_proxy] cache_dir`): its `ctproxy_cache_stored_bytes` holds the layer.
#[test]
fn registry_blob_cache_across_jobs() {
    require_docker();
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let reg = registry.addr.clone();
    // The `[cache]` section: its store keeps the blobs, its metrics listener shows the counters.
    let host = JobHost::start_with(&format!(
        "[registry_proxy]\naddress = \"127.0.0.1:0\"\ninsecure = [\"{reg}\"]\n\
         [cache]\nhosts = [\"repo.test\"]\nlisten = \"127.0.0.1\"\nhttp_port = 0\nhttps_port = 0\n\
         dir = \"{{dir}}/cache\"\nmetrics_listen = \"127.0.0.1:0\"\n"
    ));
    let metrics = host.proxy.logged_addr("cache metrics listening").port();
    let cfg = tempfile::tempdir().expect("tempdir");
    let with_login = |j: &JobSocket, args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &j.host, args);
        c.env("DOCKER_CONFIG", cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &format!("docker {}", args.join(" ")))
    };
    let login = |j: &JobSocket| check(&with_login(j, &["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw")), &["login", &reg]);
    let counter = |name: &str| -> u64 {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", &format!("http://127.0.0.1:{metrics}/metrics")])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} in:\n{text}\ncurl: {:?} {}", out.status, String::from_utf8_lossy(&out.stderr)))
    };
    const UPSTREAM: &str = "ctproxy_registry_blob_bytes_total{source=\"upstream\"}";
    const FROM_CACHE: &str = "ctproxy_registry_blob_bytes_total{source=\"cache\"}";
    const GRANTED: &str = "ctproxy_registry_blob_manifest_grant_hits_total";
    const LAYER: u64 = 100 << 20;
    let repo = unique("cached").replace("ctproxy-test-", "");
    let target = format!("{reg}/compat/{repo}:1");
    let job1 = host.job();
    login(&job1);
    // A 100 MiB layer of random bytes nobody else has.
    let ctx = context(&format!("FROM {BUSYBOX}\nRUN head -c {LAYER} /dev/urandom > /blob\n"));
    job_ok(&job1, &["build", "-t", &target, &ctx.path().display().to_string()]);
    check(&with_login(&job1, &["push", &target], None), &["push", &target]);
    let sum1 = job1.docker_ok(&["run", "--rm", &target, "md5sum", "/blob"]);
    job_ok(&job1, &["rmi", &target]);
    assert_eq!(counter(UPSTREAM), 0, "uploads are not cached");
    check(&with_login(&job1, &["pull", &target], None), &["pull", &target]);
    job_ok(&job1, &["rmi", &target]);
    let filled = counter(UPSTREAM);
    assert!(filled >= LAYER, "job 1's pull filled the cache: {filled} bytes");
    assert!(counter("ctproxy_cache_stored_bytes") >= LAYER, "the blobs are in the cache's one store (one budget)");

    let job2 = host.job();
    login(&job2);
    let (cache_before, granted_before) = (counter(FROM_CACHE), counter(GRANTED));
    check(&with_login(&job2, &["pull", &target], None), &["pull", &target]);
    let log = host.log_text();
    assert_eq!(counter(UPSTREAM), filled, "job 2's pull moved no blob byte from the origin:\n{log}");
    assert!(counter(FROM_CACHE) >= cache_before + LAYER, "job 2's layer came from the cache:\n{log}");
    assert!(counter(GRANTED) >= granted_before + 2, "config and layer served on job 2's manifest grant:\n{log}");
    assert_eq!(job2.docker_ok(&["run", "--rm", &target, "md5sum", "/blob"]), sum1);
    job_ok(&job2, &["rmi", &target]);

    // Without a login, the repository is refused upstream and nothing of it reaches the job.
    let served = counter(FROM_CACHE);
    let job3 = host.job();
    let anon = job3.docker(&["pull", &target]);
    assert!(!anon.status.success(), "pull without credentials: {anon:?}");
    assert!(job3.docker(&["image", "inspect", &target]).status.code() != Some(0));
    assert_eq!(counter(FROM_CACHE), served, "no blob byte served to job 3");
}

// ---------------------------------------------------------------------------------------------
// Differential checks (issue 17, "what must hold"): the same client runs the same scenario on the
// daemon's own socket and through a job socket, with the same names, and must see the same thing
// (IDs, digests, temporary paths and registry addresses aside). The only differences allowed are
// the documented policy refusals listed with each scenario.
//
// | operation | CLI 28 | CLI 20.10 | compose v1 | compose v2 | Python SDK |
// |---|---|---|---|---|---|
// | build (tagged, untagged, labels) | differential_cli_28 | differential_cli_2010 | | (compose build: buildkit::buildkit_compose_build) | differential_python_sdk |
// | commit (named, unnamed, --change) | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | save / load | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | import (named, unnamed) | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | tag, images --filter reference | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | push / pull (local registry) | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | run, logs, exec, cp (both ways), diff, export | differential_cli_* | differential_cli_* | compose_differential_v1 (run, exec, logs) | compose_differential_v2 (run, exec, logs) | differential_python_sdk |
// | events (filtered by the job's container, network and volume names) | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | networks: IPAM (subnet, range, gateway, aux), connect --alias, disconnect, aliases resolve | differential_cli_* | differential_cli_* | compose_differential_v1 | compose_differential_v2 | differential_python_sdk |
// | volumes: local driver, labels, driver options (documented refusal) | differential_cli_* | differential_cli_* | compose_differential_v1 | compose_differential_v2 | differential_python_sdk |
// | prune: containers, networks, volumes, images (label filters) | differential_cli_* | differential_cli_* | | | differential_python_sdk |
// | system df (only the namespace's objects) | system_df_answers_only_the_namespaces_objects | | | | differential_python_sdk (job side) |
// ---------------------------------------------------------------------------------------------

/// One side of a differential run: a client binary and a `DOCKER_HOST`, its own temporary
/// directory and registry, and the transcript of what the client saw.
struct Side {
    cli: &'static str,
    host: String,
    dir: tempfile::TempDir,
    reg: String,
    steps: Vec<(String, String)>,
}

/// What a client prints, with what legitimately differs between two runs replaced: digests and
/// IDs (full, short), the side's temporary directory and registry address, durations and sizes
/// in compose's progress.
fn normalize(text: &str, dir: &str, reg: &str) -> String {
    use std::sync::OnceLock;
    static RES: OnceLock<Vec<(regex::Regex, &'static str)>> = OnceLock::new();
    let res = RES.get_or_init(|| {
        [
            (r"sha256:[0-9a-f]{64}", "<digest>"),
            (r"[0-9a-f]{64}", "<id>"),
            (r"\b[0-9a-f]{12}\b", "<id>"),
            (r"\b[0-9a-f]{10}\b", "<id>"),
            (r"\b\d+(\.\d+)?s\b", "<t>"),
            (r#"time="[^"]*""#, "time=<t>"),
        ]
        .into_iter()
        .map(|(re, to)| (regex::Regex::new(re).expect("regex"), to))
        .collect()
    });
    let mut t = text.replace(dir, "<dir>");
    if !reg.is_empty() {
        t = t.replace(reg, "<reg>");
    }
    for (re, to) in res {
        t = re.replace_all(&t, *to).into_owned();
    }
    t
}

/// How a step's output is compared.
#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    /// As printed.
    Exact,
    /// Its lines in any order (listings and prunes the daemon prints in map order).
    Sorted,
    /// As JSON, keys sorted (archive members ctproxy re-encodes).
    Json,
    /// An image prune: the names it untagged. Documented difference: ctproxy prunes tag by
    /// tag, so the answer's `deleted:` lines are what those removals reported (the containerd
    /// store reports several per image, and a dangling image's `untagged: sha256:…`), and
    /// `SpaceReclaimed` is 0. Whether anything was deleted must agree.
    ImagePrune,
}

impl Side {
    fn new(cli: &'static str, host: &str, reg: &str) -> Side {
        Side { cli, host: host.to_owned(), dir: tempfile::tempdir().expect("tempdir"), reg: reg.to_owned(), steps: Vec::new() }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn record(&mut self, label: String, out: &Output, cmp: Cmp) -> String {
        let dir = self.dir.path().display().to_string();
        let reg = self.reg.clone();
        let shape = |b: &[u8]| {
            let t = normalize(String::from_utf8_lossy(b).trim(), &dir, &reg);
            match cmp {
                Cmp::Exact => t,
                Cmp::Sorted => {
                    let mut l: Vec<&str> = t.lines().map(str::trim_end).collect();
                    l.sort_unstable();
                    l.join("\n")
                }
                Cmp::Json => serde_json::from_str::<Value>(&t).map(|v| v.to_string()).unwrap_or(t),
                Cmp::ImagePrune => {
                    let mut l: Vec<&str> = t.lines().filter(|l| l.starts_with("untagged: ") && !l.contains("<digest>")).collect();
                    l.sort_unstable();
                    format!("deleted something: {}\n{}", t.contains("deleted: "), l.join("\n"))
                }
            }
        };
        let text = format!("exit {:?}\nstdout: {}\nstderr: {}", out.status.code(), shape(&out.stdout), shape(&out.stderr));
        self.steps.push((label, text));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs the client with `args`, records what it printed, returns its stdout.
    fn cli_as(&mut self, cmp: Cmp, args: &[&str]) -> String {
        let run = || {
            let mut c = docker_cmd(self.cli, &self.host, args);
            c.env("DOCKER_BUILDKIT", "0").env("DOCKER_CONFIG", self.dir.path().join(".docker"));
            output_within(c, None, Duration::from_secs(300), &args.join(" "))
        };
        let mut out = run();
        // Docker 28's containerd store fails a build or commit now and then while other tests
        // remove images (on its own socket too): such a step did nothing and is run again.
        for _ in 0..3 {
            let err = String::from_utf8_lossy(&out.stderr);
            let race = err.contains("unable to find image \"sha256:")
                || err.contains("failed to export layer")
                || store_race(args, &err)
                || (err.contains("content digest sha256:") && err.contains("not found"));
            if out.status.success() || !race {
                break;
            }
            out = run();
        }
        self.record(args.join(" "), &out, cmp)
    }

    fn cli(&mut self, args: &[&str]) -> String {
        self.cli_as(Cmp::Exact, args)
    }

    /// A shell command on the test host (reading what the client wrote), recorded like a step.
    fn host_sh(&mut self, cmp: Cmp, script: &str) -> String {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", script]).current_dir(self.dir.path());
        let out = output_within(c, None, Duration::from_secs(60), script);
        self.record(format!("host: {script}"), &out, cmp)
    }
}

/// The names a differential scenario uses (the same on both sides).
struct Names {
    p: String,
    img: String,
    c: String,
    c2: String,
    c3: String,
    net: String,
    net2: String,
    vol: String,
    vol2: String,
    subnet: String,
    gateway: String,
    range: String,
    aux: String,
    ip: String,
    /// Holds the scenario's /24 for this process (see [`reserve_subnet`]).
    _subnet: std::fs::File,
}

/// A /24 of 10.200.128.0/17 (the upper half of the job hosts' pool, which its first-free
/// allocation does not reach while other tests run) for one scenario: locked with `flock` across
/// the test processes that run scenarios at the same time (the differentials run direct and through
/// a job with the same subnet; two processes picking the same one made the daemon refuse the second
/// network as overlapping), and not in use by any network on the daemon. The lock goes with the file.
fn reserve_subnet() -> (u8, std::fs::File) {
    use std::os::fd::AsRawFd;
    let start = std::process::id() % 127;
    for i in 0..127 {
        let third = 128 + ((start + i) % 127) as u8;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(format!("/tmp/ctproxy-compat-subnet-10.200.{third}.lock"))
            .expect("subnet lock file");
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let subnet: ipnet::IpNet = format!("10.200.{third}.0/24").parse().expect("subnet");
        let (status, networks) = support::jobs::http_json(direct_socket(), "GET", "/networks", None);
        assert_eq!(status, 200, "{networks}");
        let used = networks
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(support::jobs::network_subnets)
            .any(|s| s.contains(&subnet.network()) || subnet.contains(&s.network()));
        if !used {
            return (third, file);
        }
    }
    panic!("no free /24 in 10.200.128.0/17 for the compatibility scenario");
}

impl Names {
    fn new() -> Names {
        let p = unique("d").replace("ctproxy-test-", "cmp-");
        let (third, lock) = reserve_subnet();
        Names {
            img: format!("{p}-img"),
            c: format!("{p}-c"),
            c2: format!("{p}-c2"),
            c3: format!("{p}-c3"),
            net: format!("{p}-net"),
            net2: format!("{p}-net2"),
            vol: format!("{p}-vol"),
            vol2: format!("{p}-opts"),
            subnet: format!("10.200.{third}.0/24"),
            gateway: format!("10.200.{third}.254"),
            range: format!("10.200.{third}.128/25"),
            aux: format!("10.200.{third}.250"),
            ip: format!("10.200.{third}.130"),
            p,
            _subnet: lock,
        }
    }
}

/// The CLI scenario: every operation of issue 17's list, as a CI script uses them.
fn cli_scenario(s: &mut Side, n: &Names) {
    let label = format!("cmp={}", n.p);
    let lf = format!("label={label}");
    let ctx = s.dir.path().join("ctx");
    std::fs::create_dir_all(&ctx).expect("ctx");
    std::fs::write(ctx.join("Dockerfile"), format!("FROM {BUSYBOX}\nRUN echo {} > /marker\nCMD [\"cat\", \"/marker\"]\n", n.p))
        .expect("Dockerfile");
    let ctx = ctx.display().to_string();
    let img1 = format!("{}:1", n.img);
    let img2 = format!("{}:2", n.img);
    // Each subscription also names an object made and removed at the very end: its `destroy`
    // is the last event the subscription gets (a prune's removals log no `destroy` for volumes).
    let (endc, endn, endv) = (format!("{}-endc", n.p), format!("{}-endn", n.p), format!("{}-endv", n.p));
    let (fc, fn2, fv) = (format!("container={}", n.c), format!("network={}", n.net2), format!("volume={}", n.vol));
    let watches = vec![
        (
            fc.clone(),
            format!("destroy {endc}"),
            EventWatch::start(
                s,
                &[&fc, &format!("container={endc}"), "type=container"],
                "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.image}}",
            ),
        ),
        (
            fn2.clone(),
            format!("destroy {endn}"),
            EventWatch::start(
                s,
                &[&fn2, &format!("network={endn}")],
                "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.type}}",
            ),
        ),
        (
            fv.clone(),
            format!("destroy {endv}"),
            EventWatch::start(s, &[&fv, &format!("volume={endv}")], "{{.Type}} {{.Action}} {{.Actor.ID}} {{.Actor.Attributes.driver}}"),
        ),
    ];

    // build, tag, images
    s.cli(&["build", "-q", "--label", &label, "-t", &img1, &ctx]);
    let untagged = s.cli(&["build", "-q", "--label", &label, "--build-arg", "X=1", &ctx]);
    s.cli(&["run", "--rm", &untagged]);
    s.cli(&["tag", &img1, &img2]);
    s.cli_as(Cmp::Sorted, &["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter", &format!("reference={}", n.img)]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}} {{json .Config.Labels}} {{json .Config.Cmd}}", &img1]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}}", &untagged]);

    // run, logs, exec, cp, diff
    s.cli(&["run", "--name", &n.c, "--label", &label, &img1, "sh", "-c", "echo out; echo err >&2; echo hi > /f; exit 3"]);
    s.cli(&["inspect", "--format", "{{.Name}} {{.Config.Image}} {{.State.ExitCode}} {{json .Config.Labels}}", &n.c]);
    s.cli(&["logs", &n.c]);
    s.cli(&["diff", &n.c]);
    s.cli(&["cp", &format!("{}:/f", n.c), &s.path("f")]);
    s.host_sh(Cmp::Exact, "cat f");
    std::fs::write(s.path("in"), "in\n").expect("in");
    s.cli(&["cp", &s.path("in"), &format!("{}:/in", n.c)]);
    s.cli(&["cp", &s.path("in"), &format!("{}:/nowhere/in", n.c)]);
    s.cli_as(Cmp::Sorted, &["diff", &n.c]);
    s.cli(&["run", "-d", "--name", &n.c2, "--label", &label, BUSYBOX, "sleep", "300"]);
    s.cli(&["exec", &n.c2, "sh", "-c", "echo $((6*7))"]);
    s.cli(&["exec", "-e", "X=y", "-w", "/tmp", "-u", "nobody", &n.c2, "sh", "-c", "echo $X $(pwd) $(id -un)"]);
    s.cli(&["exec", &n.c2, "sh", "-c", "exit 5"]);
    s.cli(&["exec", &n.c2, "no-such-binary"]);
    s.cli(&["exec", "no-such-container", "true"]);

    // commit, export, import
    s.cli(&["commit", "-m", "msg", "-c", "ENV A=b", &n.c, &format!("{}:c", n.img)]);
    s.cli(&["run", "--rm", &format!("{}:c", n.img), "sh", "-c", "cat /f /in; echo $A"]);
    let unnamed = s.cli(&["commit", &n.c]);
    s.cli(&["run", "--rm", &unnamed, "cat", "/f"]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}} {{.Comment}}", &unnamed]);
    s.cli(&["export", "-o", &s.path("c.tar"), &n.c]);
    s.host_sh(Cmp::Sorted, "tar -tf c.tar");
    s.cli(&["import", "-m", "imported", &s.path("c.tar"), &format!("{}:imp", n.img)]);
    s.cli(&["run", "--rm", &format!("{}:imp", n.img), "cat", "/f"]);
    let imported = s.cli(&["import", "-c", "CMD [\"cat\", \"/in\"]", &s.path("c.tar")]);
    s.cli(&["run", "--rm", &imported]);
    s.cli(&["import", "-c", "ONBUILD RUN true", &s.path("c.tar")]);

    // save, load
    s.cli(&["save", "-o", &s.path("s.tar"), &img1]);
    s.host_sh(Cmp::Sorted, "tar -tf s.tar | grep -v '^blobs/sha256/.'");
    s.host_sh(Cmp::Json, "tar -xOf s.tar manifest.json");
    s.host_sh(Cmp::Json, "tar -xOf s.tar repositories");
    s.cli(&["rmi", &img1]);
    s.cli(&["load", "-i", &s.path("s.tar")]);
    s.cli(&["run", "--rm", &img1]);
    s.cli(&["save", "-o", &s.path("u.tar"), &unnamed]);
    s.cli(&["rmi", &unnamed]);
    s.cli(&["load", "-q", "-i", &s.path("u.tar")]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}}", &unnamed]);

    // push, pull (a registry of this side's own)
    let remote = format!("{}/{}/img:1", s.reg, n.p);
    s.cli(&["tag", &img1, &remote]);
    s.cli(&["push", "-q", &remote]);
    s.cli_as(Cmp::Sorted, &["rmi", &remote]);
    s.cli(&["pull", "-q", &remote]);
    s.cli(&["run", "--rm", &remote]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}} {{len .RepoDigests}}", &remote]);
    s.cli(&["pull", "-q", &format!("{}/{}/missing:1", s.reg, n.p)]);

    // networks: IPAM, aliases, connect, disconnect
    s.cli(&[
        "network",
        "create",
        "--label",
        &label,
        "--subnet",
        &n.subnet,
        "--gateway",
        &n.gateway,
        "--ip-range",
        &n.range,
        "--aux-address",
        &format!("host1={}", n.aux),
        "--opt",
        "com.docker.network.bridge.enable_icc=true",
        &n.net,
    ]);
    s.cli(&[
        "network",
        "inspect",
        "--format",
        "{{.Name}} {{.Driver}} {{json .IPAM}} {{json .Labels}} {{json .Options}} {{.Internal}}",
        &n.net,
    ]);
    s.cli(&["network", "create", "--label", &label, "--internal", &n.net2]);
    s.cli(&["network", "inspect", "--format", "{{.Name}} {{.Driver}} {{.Internal}} {{json .Labels}}", &n.net2]);
    s.cli(&[
        "run",
        "-d",
        "--name",
        &n.c3,
        "--label",
        &label,
        "--network",
        &n.net,
        "--network-alias",
        "a1",
        "--ip",
        &n.ip,
        BUSYBOX,
        "sleep",
        "300",
    ]);
    s.cli(&["network", "connect", "--alias", "a2", &n.net2, &n.c3]);
    // The address on the network created without a subnet is the pool's (documented), not shown.
    let nets = format!(
        "{{{{range $k, $v := .NetworkSettings.Networks}}}}{{{{$k}}}} {{{{if eq $k \"{}\"}}}}{{{{$v.IPAddress}}}}{{{{end}}}} {{{{$v.IPAMConfig}}}} {{{{json $v.Aliases}}}} {{{{json $v.DNSNames}}}};{{{{end}}}}",
        n.net
    );
    s.cli(&["inspect", "--format", &nets, &n.c3]);
    let resolve = "for a in a1 a2; do nslookup $a >/dev/null 2>&1 && echo $a; done; true";
    s.cli(&[
        "run",
        "--rm",
        "--network",
        &n.net,
        BUSYBOX,
        "sh",
        "-c",
        &format!("nslookup a1 >/dev/null && ping -c1 -W5 {} >/dev/null && echo reach", n.ip),
    ]);
    s.cli(&["run", "--rm", "--network", &n.net2, BUSYBOX, "sh", "-c", resolve]);
    s.cli(&["network", "connect", &n.net2, "no-such-container"]);
    s.cli(&["network", "disconnect", &n.net2, &n.c3]);
    s.cli(&["network", "disconnect", &n.net2, &n.c3]);
    s.cli(&["inspect", "--format", "{{len .NetworkSettings.Networks}}", &n.c3]);
    s.cli_as(Cmp::Sorted, &["network", "ls", "--filter", &lf, "--format", "{{.Name}} {{.Driver}} {{.Scope}}"]);
    s.cli(&["network", "create", "--subnet", &n.subnet, &format!("{}-overlap", n.p)]);

    // volumes: drivers, labels, options
    s.cli(&["volume", "create", "--driver", "local", "--label", &label, &n.vol]);
    s.cli(&["volume", "inspect", "--format", "{{.Name}} {{.Driver}} {{.Scope}} {{json .Labels}} {{json .Options}}", &n.vol]);
    s.cli(&["run", "--rm", "-v", &format!("{}:/v", n.vol), BUSYBOX, "sh", "-c", "echo x > /v/x"]);
    s.cli(&["run", "--rm", "--mount", &format!("type=volume,src={},dst=/v,readonly", n.vol), BUSYBOX, "cat", "/v/x"]);
    s.cli(&["volume", "create", "--driver", "local", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=size=1m", &n.vol2]);
    s.cli(&["volume", "create", "--driver", "no-such-driver", &format!("{}-nd", n.p)]);
    s.cli_as(Cmp::Sorted, &["volume", "ls", "--filter", &lf, "--format", "{{.Name}} {{.Driver}}"]);

    // (events, filtered by the names the client knows, are compared at the end: what the
    // subscriptions made at the start received; a `--since` replay would read the daemon's
    // 256-event buffer, which other tests' events overrun.)

    // prune, each kind, by the scenario's label
    s.cli(&["rm", "-f", &n.c2]);
    s.cli(&["rm", "-f", &n.c3]);
    s.cli(&["container", "prune", "-f", "--filter", &lf]);
    s.cli(&["ps", "-a", "--filter", &lf, "--format", "{{.Names}}"]);
    s.cli_as(Cmp::Sorted, &["network", "prune", "-f", "--filter", &lf]);
    let mut vp = vec!["volume", "prune", "-f", "--filter", &lf];
    if s.cli != DOCKER_2010 {
        vp.insert(2, "-a");
    }
    s.cli_as(Cmp::Sorted, &vp);
    s.cli(&["volume", "ls", "-q", "--filter", &lf]);
    s.cli_as(Cmp::ImagePrune, &["image", "prune", "-f", "--filter", &lf]);
    s.cli(&["image", "inspect", "--format", "{{json .RepoTags}}", &untagged]);
    s.cli(&["rmi", &remote, &format!("{}:c", n.img), &format!("{}:imp", n.img), &imported, &unnamed]);
    s.cli_as(Cmp::ImagePrune, &["image", "prune", "-a", "-f", "--filter", &lf]);
    s.cli(&["images", "-q", "--filter", &format!("reference={}", n.img)]);
    s.cli(&["create", "--name", &endc, BUSYBOX, "true"]);
    s.cli(&["rm", &endc]);
    s.cli(&["network", "create", &endn]);
    s.cli(&["network", "rm", &endn]);
    s.cli(&["volume", "create", &endv]);
    s.cli(&["volume", "rm", &endv]);
    for (what, last, watch) in watches {
        let text = watch.until(&what, &last);
        let out = Output { status: std::process::ExitStatus::default(), stdout: text.into_bytes(), stderr: Vec::new() };
        s.record(format!("events --filter {what}"), &out, Cmp::Exact);
    }
}

/// A `docker events` subscription running in the background, its lines collected.
struct EventWatch {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<String>>,
}

impl EventWatch {
    fn start(s: &Side, filters: &[&str], format: &str) -> EventWatch {
        let mut args = vec!["events", "--format", format];
        for f in filters {
            args.extend(["--filter", f]);
        }
        let mut c = docker_cmd(s.cli, &s.host, &args);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().expect("docker events");
        let stdout = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        EventWatch { child, lines }
    }

    /// The lines received once a line containing `last` (the scenario's last event) has arrived.
    fn until(mut self, what: &str, last: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let text = self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if text.lines().any(|l| l.contains(last)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "no {last:?} event for {what}:\n{text}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removes, on the daemon's own socket, what a direct run of [`cli_scenario`] may have left.
fn direct_cleanup(n: &Names) -> Cleanup {
    let mut c = Cleanup::new();
    for i in [":1", ":2", ":c", ":imp"] {
        c.image(&format!("{}{i}", n.img));
    }
    for ctr in [&n.c, &n.c2, &n.c3] {
        c.container(ctr);
    }
    for net in [&n.net, &n.net2, &format!("{}-overlap", n.p)] {
        c.network(net);
    }
    for v in [&n.vol, &n.vol2, &format!("{}-nd", n.p), &format!("{}-endv", n.p)] {
        c.volume(v);
    }
    c.container(&format!("{}-endc", n.p));
    c.network(&format!("{}-endn", n.p));
    c
}

/// The steps whose answer through the job socket is a documented refusal (`docs/namespaces.md`,
/// *Differences from the daemon that remain*), with what the refusal must say.
const CLI_REFUSALS: &[(&str, &[&str])] = &[
    ("volume create --driver local --opt", &["driver options", "not allowed by policy conservative", "allow"]),
    ("volume create --driver no-such-driver", &["volume driver \"no-such-driver\" (Driver) is not allowed by policy conservative"]),
];

/// Compares two transcripts step by step; a step listed in `refusals` must be refused through
/// the job socket with each of its needles and succeed on the daemon.
fn assert_same(direct: &Side, job: &Side, refusals: &[(&str, &[&str])]) {
    assert_eq!(direct.steps.len(), job.steps.len());
    let mut diffs = Vec::new();
    for ((label, want), (_, got)) in direct.steps.iter().zip(&job.steps) {
        if let Some((_, needles)) = refusals.iter().find(|(l, _)| label.starts_with(l)) {
            let refused = !got.starts_with("exit Some(0)") && needles.iter().all(|n| got.contains(n)) && got.contains("ctproxy");
            if !refused {
                diffs.push(format!("== {label}: expected a documented refusal {needles:?}\n-- job:\n{got}\n-- direct:\n{want}"));
            }
            continue;
        }
        if want != got {
            diffs.push(format!("== {label}\n-- direct:\n{want}\n-- job:\n{got}"));
        }
    }
    assert!(diffs.is_empty(), "{} difference(s) between the daemon and the job socket:\n{}", diffs.len(), diffs.join("\n"));
}

fn differential_cli(cli: &'static str) {
    require_docker();
    let n = Names::new();
    let direct_reg = Registry::start();
    let job_reg = Registry::start();
    let host =
        JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:{}\"\ninsecure = [\"{}\"]\n", free_port(), job_reg.addr));
    let mut d = Side::new(cli, direct(), &direct_reg.addr);
    {
        let _cleanup = direct_cleanup(&n);
        cli_scenario(&mut d, &n);
    }
    let job = host.job();
    let mut j = Side::new(cli, &job.host, &job_reg.addr);
    cli_scenario(&mut j, &n);
    // What is left afterwards is compared by the transcript's own listings (`ps`, `volume ls`,
    // `network ls` after the prunes): CLI 28's `volume prune -a` on dockerd 20.10 keeps named
    // volumes, on the daemon's socket as through the job.
    assert_same(&d, &j, CLI_REFUSALS);
}

/// The CLI 28 scenario, direct and through a job socket (see the table above).
#[test]
fn differential_cli_28() {
    differential_cli("docker");
}

/// The same with Debian's CLI 20.10 (API 1.41 on both daemons).
#[test]
fn differential_cli_2010() {
    differential_cli(DOCKER_2010);
}

/// `system df` through a job socket lists exactly the namespace's images, containers and volumes
/// (what its own lists show), none of another namespace's or the daemon's.
#[test]
fn system_df_answers_only_the_namespaces_objects() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let other = host.job();
    for j in [&job, &other] {
        let ctx = context(&format!("FROM {BUSYBOX}\nRUN echo {} > /m\n", j.namespace));
        job_ok(j, &["build", "-q", "-t", "dfimg:1", &ctx.path().display().to_string()]);
        job_ok(j, &["create", "--name", "dfc", "-v", "dfvol:/v", "dfimg:1"]);
    }
    let (status, df) = job.request("GET", "/v1.41/system/df", None);
    assert_eq!(status, 200, "{df}");
    let ids = |v: &Value, key: &str| -> Vec<String> {
        let mut l: Vec<String> = v.as_array().into_iter().flatten().filter_map(|e| e[key].as_str().map(str::to_owned)).collect();
        l.sort();
        l
    };
    let (_, images) = job.request("GET", "/v1.41/images/json", None);
    let (_, containers) = job.request("GET", "/v1.41/containers/json?all=1", None);
    let (_, volumes) = job.request("GET", "/v1.41/volumes", None);
    assert_eq!(ids(&df["Images"], "Id"), ids(&images, "Id"), "df images are the job's image list");
    assert_eq!(ids(&df["Containers"], "Id"), ids(&containers, "Id"), "df containers are the job's");
    assert_eq!(ids(&df["Volumes"], "Name"), ids(&volumes["Volumes"], "Name"), "df volumes are the job's");
    assert_eq!(ids(&df["Volumes"], "Name"), ["dfvol"]);
    assert_eq!(df["Containers"].as_array().map(Vec::len), Some(1));
    let text = df.to_string();
    assert!(!text.contains("ctp.") && !text.contains(&other.namespace) && !text.contains(&job.namespace), "{text}");
    let mine = job_ok(&job, &["image", "inspect", "--format", "{{.Id}}", "dfimg:1"]);
    let theirs = job_ok(&other, &["image", "inspect", "--format", "{{.Id}}", "dfimg:1"]);
    assert!(text.contains(&mine) && !text.contains(&theirs), "{text}");
    // The CLI's summary counts the same.
    let summary = job_ok(&job, &["system", "df", "--format", "{{.Type}} {{.TotalCount}}"]);
    let images_n = ids(&images, "Id").len();
    assert!(
        summary.contains(&format!("Images {images_n}")) && summary.contains("Containers 1") && summary.contains("Local Volumes 1"),
        "{summary}"
    );
}

/// Runs `tests/python/compat_diff.py` on one side; each output line is a step.
fn python_side(host: &str, reg: &str, n: &Names, job: bool) -> Side {
    let mut s = Side::new("python3", host, reg);
    let mut c = std::process::Command::new("python3");
    c.arg("tests/python/compat_diff.py")
        .env("DOCKER_HOST", host)
        .env("BUSYBOX", BUSYBOX)
        .env("PREFIX", &n.p)
        .env("REG", reg)
        .env("SUBNET", &n.subnet)
        .env("GATEWAY", &n.gateway)
        .env("IP", &n.ip);
    if job {
        c.env("JOB", "1");
    }
    let out = output_within(c, None, Duration::from_secs(600), "python3 tests/python/compat_diff.py");
    assert!(
        out.status.success(),
        "compat_diff.py on {host}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = s.dir.path().display().to_string();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let (label, result) = line.split_once('\t').unwrap_or((line, ""));
        s.steps.push((label.to_owned(), normalize(result, &dir, reg)));
    }
    s
}

/// The SDK steps whose answer through the job socket is a documented refusal.
const SDK_REFUSALS: &[(&str, &[&str])] = &[
    ("volume driver options", &["driver options", "not allowed by policy conservative", "allow"]),
    ("volume unknown driver", &["(Driver) is not allowed by policy conservative"]),
];

/// The Python SDK's calls, direct and through a job socket (see the table above); through the
/// job, `system df` lists exactly the namespace's images, containers and volumes.
#[test]
fn differential_python_sdk() {
    require_docker();
    let n = Names::new();
    let direct_reg = Registry::start();
    let job_reg = Registry::start();
    let host =
        JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:{}\"\ninsecure = [\"{}\"]\n", free_port(), job_reg.addr));
    let d = {
        let mut cleanup = direct_cleanup(&n);
        cleanup.network(&format!("{} net", n.p));
        cleanup.container(&format!("{}-c0", n.p));
        python_side(direct(), &direct_reg.addr, &n, false)
    };
    let job = host.job();
    let mut j = python_side(&job.host, &job_reg.addr, &n, true);
    let df = j.steps.pop().expect("steps");
    assert_eq!(df, ("system df".to_owned(), "[true, true, true]".to_owned()), "system df through the job: images, containers, volumes");
    assert_same(&d, &j, SDK_REFUSALS);
}

/// A compose project with everything compose makes: a network with IPAM and labels, a volume of
/// the local driver with labels, a service with an alias and a fixed address.
fn compose_project(n: &Names) -> String {
    format!(
        r#"version: "2.4"
services:
  web:
    image: {BUSYBOX}
    command: ["sh", "-c", "echo started; echo x > /data/x; exec sleep 300"]
    labels: {{cmp: "{p}"}}
    networks:
      back:
        aliases: [webalias]
    volumes: [data:/data]
networks:
  back:
    labels: {{cmp: "{p}"}}
    ipam:
      config:
        - subnet: {subnet}
          gateway: {gateway}
volumes:
  data:
    driver: local
    labels: {{cmp: "{p}"}}
"#,
        p = n.p,
        subnet = n.subnet,
        gateway = n.gateway
    )
}

/// The compose scenario: up, ps, exec (the alias resolves, the volume is mounted), run, logs,
/// inspect of what compose made, down.
fn compose_scenario(s: &mut Side, n: &Names, v2: bool) {
    let file = s.path("compose.yaml");
    std::fs::write(&file, compose_project(n)).expect("compose file");
    let base: Vec<String> = if v2 {
        ["compose", "--ansi", "never", "--progress", "plain", "-f", &file, "-p", &n.p].iter().map(|a| a.to_string()).collect()
    } else {
        ["--no-ansi", "-f", &file, "-p", &n.p].iter().map(|a| a.to_string()).collect()
    };
    let compose = |s: &mut Side, cmp: Cmp, args: &[&str]| {
        let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
        all.extend(args);
        s.cli_as(cmp, &all)
    };
    compose(s, Cmp::Sorted, &["up", "-d"]);
    if v2 {
        compose(s, Cmp::Sorted, &["ps", "--format", "{{.Name}} {{.Service}} {{.State}} {{.Image}}"]);
        compose(s, Cmp::Exact, &["images", "--format", "{{.ContainerName}} {{.Repository}}"]);
    } else {
        compose(s, Cmp::Sorted, &["ps"]);
    }
    let wait =
        "for i in $(seq 1 100); do test -f /data/x && break; sleep 0.1; done; nslookup webalias >/dev/null && echo alias; cat /data/x";
    compose(s, Cmp::Exact, &["exec", "-T", "web", "sh", "-c", wait]);
    compose(s, Cmp::Exact, &["run", "--rm", "--no-deps", "web", "sh", "-c", "nslookup webalias >/dev/null && cat /data/x"]);
    compose(s, Cmp::Exact, &["logs", "--no-color", "web"]);
    let sep = if v2 { "-" } else { "_" };
    let ctr = format!("{}{sep}web{sep}1", n.p);
    let net = format!("{}_back", n.p);
    let fmt =
        format!("{{{{.Name}}}} {{{{.Config.Image}}}} {{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}} {{{{json .Mounts}}}}");
    let (cli, host) = (s.cli, s.host.clone());
    s.cli = "docker";
    s.cli(&["inspect", "--format", &fmt, &ctr]);
    s.cli(&["network", "inspect", "--format", "{{.Name}} {{json .IPAM.Config}} {{json .Labels}}", &net]);
    s.cli(&["volume", "inspect", "--format", "{{.Name}} {{.Driver}} {{json .Labels}}", &format!("{}_data", n.p)]);
    s.cli = cli;
    s.host = host;
    compose(s, Cmp::Sorted, &["down", "-v", "-t", "0"]);
}

fn compose_differential(v2: bool) {
    require_docker();
    let n = Names::new();
    let host = JobHost::start();
    let cli: &'static str = if v2 { "docker" } else { "docker-compose" };
    let mut d = Side::new(cli, direct(), "");
    {
        let mut cleanup = Cleanup::new();
        for c in ["-web-1", "_web_1"] {
            cleanup.container(&format!("{}{c}", n.p));
        }
        cleanup.network(&format!("{}_back", n.p));
        cleanup.volume(&format!("{}_data", n.p));
        compose_scenario(&mut d, &n, v2);
    }
    let job = host.job();
    let mut j = Side::new(cli, &job.host, "");
    compose_scenario(&mut j, &n, v2);
    assert_same(&d, &j, &[]);
    assert!(job.on_daemon().is_empty(), "compose down left {:?}", job.on_daemon());
}

/// docker-compose 1.29 (compose v1), direct and through a job socket.
#[test]
fn compose_differential_v1() {
    compose_differential(false);
}

/// Compose v2 (2.40, the CLI 28 plugin), direct and through a job socket.
#[test]
fn compose_differential_v2() {
    compose_differential(true);
}
