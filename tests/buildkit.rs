//! BuildKit through a job's socket (issue 14): the real docker CLI 28 with buildx 0.29 and compose
//! v2 build in the job's namespace; other namespaces' images and caches stay out of reach, and what
//! ctproxy does not allow is refused with a message the CLI prints.
//!
//! Docker 28 only (the target: CLI 28, buildx 0.29, Docker 28.5): the BuildKit relay is not
//! exercised against dockerd 20.10; there these tests return at once, saying so.

mod support;

use std::process::Output;
use std::time::Duration;

use support::jobs::*;
use support::*;

/// A build context with `dockerfile` as its Dockerfile.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("Dockerfile");
    dir
}

/// The docker CLI 28 on the job's socket, in `dir`, with BuildKit (the default).
fn build(job: &JobSocket, dir: &std::path::Path, args: &[&str]) -> Output {
    let mut c = docker_cmd("docker", &job.host, args);
    c.current_dir(dir).env_remove("DOCKER_BUILDKIT").env("BUILDKIT_PROGRESS", "plain").env("HOME", dir);
    output_within(c, None, Duration::from_secs(300), &args.join(" "))
}

fn build_ok(job: &JobSocket, dir: &std::path::Path, args: &[&str]) -> String {
    let out = build(job, dir, args);
    check(&out, args);
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// A build whose Dockerfile ctproxy refuses: its output. Seen rarely (in parallel runs, on both
/// stores): the daemon's frontend reports its Solve as canceled ("failed to read dockerfile:
/// context canceled") instead of the session's PERMISSION_DENIED for the Dockerfile read; the
/// refusal was made and audited, the build failed. The message must come through on a second try.
fn build_refused_dockerfile(host: &JobHost, job: &JobSocket, dir: &std::path::Path, args: &[&str]) -> Output {
    let out = build(job, dir, args);
    if String::from_utf8_lossy(&out.stderr).contains("failed to read dockerfile: context canceled") {
        assert!(!out.status.success());
        assert!(host.audited("BuildKit Dockerfile refused by namespace"));
        return build(job, dir, args);
    }
    out
}

fn refused(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

/// `docker buildx build --load` and `docker build` from a shared image, then from the job's own
/// image by its own name; multi-stage `COPY --from`, `--build-arg`, `--target`, a cache mount.
/// The results are the job's images, by their own names.
#[test]
fn buildkit_builds_in_the_namespace() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let base = context(&format!("FROM {BUSYBOX}\nRUN echo base > /base\n"));
    build_ok(&job, base.path(), &["buildx", "build", "--load", "-t", "app:1", "."]);
    assert_eq!(job.docker_ok(&["run", "--rm", "app:1", "cat", "/base"]), "base");
    assert!(job.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines().any(|l| l == "app:1"));

    let multi = context(&format!(
        "ARG FROM_TAG=1\nFROM {BUSYBOX} AS builder\nARG GREETING\nRUN --mount=type=cache,target=/cache echo \"$GREETING\" > /out\n\
         FROM app:$FROM_TAG AS final\nCOPY --from=builder /out /out\nFROM final AS other\nRUN false\n"
    ));
    build_ok(&job, multi.path(), &["build", "--build-arg", "GREETING=hello", "--target", "final", "-t", "app:2", "."]);
    assert_eq!(job.docker_ok(&["run", "--rm", "app:2", "cat", "/out", "/base"]), "hello\nbase");
    // On the daemon the image has the namespace's name, not the job's.
    let names = docker(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!names.lines().any(|l| l == "app:2" || l == "docker.io/library/app:2"), "{names}");
    drop(job);
}

/// Heredocs (`RUN <<EOF`, `COPY <<EOF`), which Docker 28's Dockerfile frontend reads, work through a
/// job socket as directly; a heredoc body line that would read as an image-naming instruction is
/// refused with a message the CLI prints.
#[test]
fn buildkit_heredocs_work_and_hide_no_instruction() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let docs = context(&format!(
        "FROM {BUSYBOX}\nRUN <<EOF\nset -e\necho from-a-heredoc > /run-out\nEOF\nCOPY <<-\"END\" /copied\n\tcopied-text\n\tfrom pathlib import Path\n\tEND\n"
    ));
    build_ok(&job, docs.path(), &["buildx", "build", "--load", "-t", "heredoc:1", "."]);
    assert_eq!(
        job.docker_ok(&["run", "--rm", "heredoc:1", "cat", "/run-out", "/copied"]),
        "from-a-heredoc\ncopied-text\nfrom pathlib import Path"
    );
    let hiding = context(&format!("FROM {BUSYBOX}\nRUN <<EOF\nFROM other/image\nEOF\n"));
    let out = build_refused_dockerfile(&host, &job, hiding.path(), &["build", "-t", "heredoc:2", "."]);
    refused(&out, "a heredoc line that reads as a FROM instruction");
}

/// Another namespace's image is not usable by `FROM`: by its name there, its daemon-side name, or
/// its ID; the owning job's same `FROM` works. Cache mounts with the same `id` are separate per job.
#[test]
fn buildkit_other_namespaces_are_out_of_reach() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let a = host.job();
    let b = host.job();
    let tag = unique("mark").replace("ctproxy-test-", "");
    let secret =
        context(&format!("FROM {BUSYBOX}\nRUN echo secret > /secret\nRUN --mount=type=cache,id=shared,target=/c echo {tag} > /c/mark\n"));
    build_ok(&a, secret.path(), &["build", "-t", "secret:1", "."]);
    let id = a.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "secret:1"]);
    let mangled = docker(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .find(|l| l.contains(&a.namespace) && l.ends_with("/secret:1"))
        .expect("the daemon-side name")
        .to_owned();
    let hex = id.trim_start_matches("sha256:").to_owned();
    let by_digest = format!("secret@{id}");
    for from in ["secret:1".to_owned(), mangled, id.clone(), by_digest.clone(), hex] {
        let dir = context(&format!("FROM {from}\nRUN cat /secret\n"));
        let out = build(&b, dir.path(), &["build", "-t", "stolen:1", "."]);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "FROM {from} must fail: {text}");
        // It fails on the image it names (not on something else of the build).
        assert!(text.contains(&from), "FROM {from}: the error does not name the image: {text}");
    }
    assert!(!b.docker(&["image", "inspect", "stolen:1"]).status.success(), "a failed build left an image");
    // Positive control: the owning job's same FROM works, by name, and by digest on the containerd
    // store (there the ID is the manifest's digest; on the classic store it is the config's, which
    // names no manifest: `name@<ID>` fails on the daemon's own socket too). By ID or hex, as
    // `FROM sha256:…` or `FROM <hex>`, BuildKit reads a repository name (on the daemon's own socket
    // too): no control for those.
    let controls: &[&str] = if containerd_store() { &["secret:1", &by_digest] } else { &["secret:1"] };
    for from in controls {
        let dir = context(&format!("FROM {from}\nRUN cat /secret\n"));
        build_ok(&a, dir.path(), &["build", "-t", "own:1", "."]);
        assert_eq!(a.docker_ok(&["run", "--rm", "own:1", "cat", "/secret"]), "secret");
    }

    // The same cache id in another job is another cache. Without --no-cache (it empties the cache
    // mounts a build uses); each probe is a RUN line of its own (the echo), so no step is cached.
    let probe = |test: &str, who: &str| {
        context(&format!("FROM {BUSYBOX}\nRUN --mount=type=cache,id=shared,target=/c {test} && echo probe-{who}-{tag}\n"))
    };
    let other = probe("test ! -e /c/mark || (cat /c/mark; false)", "b");
    build_ok(&b, other.path(), &["build", "-t", "probe:1", "."]);
    // Positive control: the job that wrote it sees its own file in the same cache.
    let own = probe(&format!("grep -qx {tag} /c/mark"), "a");
    build_ok(&a, own.path(), &["build", "-t", "probe:1", "."]);
}

/// What ctproxy does not allow is refused with a message the CLI prints, and audit-logged.
#[test]
fn buildkit_refusals_are_printed() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let plain = context(&format!("FROM {BUSYBOX}\nRUN true\n"));
    let out = build(&job, plain.path(), &["buildx", "build", "--allow", "network.host", "--load", "-t", "x:1", "."]);
    refused(&out, "ctproxy: the build entitlements");
    // What, by BuildKit's check of the namespace, and that no setting allows it, through the CLI
    // (issue 17).
    support::jobs::assert_ns_refusal(&String::from_utf8_lossy(&out.stderr), "(--allow) are not available", "the namespace (BuildKit)");
    refused(&out, "network.host");
    // A frontend attribute ctproxy does not know: `--sbom=true` sends `attest:sbom` (an SBOM scanner
    // is an image the daemon would pull and run). On the classic image store buildx's docker driver
    // refuses attestations itself, on the daemon's own socket too, before anything is sent.
    let out = build(&job, plain.path(), &["buildx", "build", "--sbom=true", "--load", "-t", "x:1", "."]);
    refused(&out, if containerd_store() { "attest:sbom" } else { "Attestation is not supported for the docker driver" });
    let out = build(&job, plain.path(), &["buildx", "build", "--build-arg", "BUILDKIT_SYNTAX=evil/frontend", "--load", "-t", "x:1", "."]);
    refused(&out, "BUILDKIT_SYNTAX is not available in a namespace");
    let syntax = context(&format!("# syntax=docker/dockerfile:1\nFROM {BUSYBOX}\n"));
    refused(&build(&job, syntax.path(), &["build", "-t", "x:1", "."]), "a # syntax= directive");
    let mount = context(&format!("FROM {BUSYBOX}\nRUN --mount=type=bind,from=other/image,target=/x true\n"));
    let out = build_refused_dockerfile(&host, &job, mount.path(), &["build", "-t", "x:1", "."]);
    refused(&out, "names no stage of the Dockerfile");
    support::jobs::assert_ns_refusal(&String::from_utf8_lossy(&out.stderr), "names no stage of the Dockerfile", "the namespace (BuildKit)");
    let out = build(&job, plain.path(), &["buildx", "prune", "-f", "--reserved-space", "1gb"]);
    refused(&out, "not available in a namespace");
    support::jobs::assert_ns_refusal(&String::from_utf8_lossy(&out.stderr), "not available in a namespace", "the namespace (BuildKit)");
    assert!(host.audited("BuildKit call refused by namespace"));
    assert!(host.audited("BuildKit Dockerfile refused by namespace"));
}

/// Entitlements and networks: `--allow security.insecure`, `--network host` (buildx asks for the
/// `network.host` entitlement with it) and `RUN --network=host` are refused with a message the CLI
/// prints; `--network` naming another job's network, by its name there or its daemon-side name, is
/// refused (by buildx itself, see below); nothing is built. `--network none` works.
#[test]
fn buildkit_entitlements_and_networks_are_refused() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let (a, b) = (host.job(), host.job());
    let plain = context(&format!("FROM {BUSYBOX}\nRUN true\n"));
    let built = |job: &JobSocket| job.docker(&["image", "inspect", "x:1"]).status.success();

    let out = build(&a, plain.path(), &["buildx", "build", "--allow", "security.insecure", "--load", "-t", "x:1", "."]);
    refused(&out, "ctproxy");
    refused(&out, "security.insecure");
    // `RUN --security=insecure` is a labs flag: Docker 28's built-in Dockerfile frontend does not
    // parse it (it needs `# syntax=docker/dockerfile:1-labs`, which ctproxy refuses), with or without
    // the entitlement (which ctproxy refuses first).
    let insecure = context(&format!("FROM {BUSYBOX}\nRUN --security=insecure true\n"));
    refused(&build(&a, insecure.path(), &["build", "-t", "x:1", "."]), "--security");
    refused(&build(&a, insecure.path(), &["build", "--allow", "security.insecure", "-t", "x:1", "."]), "security.insecure");

    // buildx sends `--network host` as the frontend attribute `force-network-mode=host` *and* the
    // entitlement `network.host`: ctproxy refuses the entitlement.
    for cli in [&["buildx", "build", "--load"][..], &["build"]] {
        let args = [cli, &["--network", "host", "-t", "x:1", "."]].concat();
        let out = build(&a, plain.path(), &args);
        refused(&out, "ctproxy");
        refused(&out, "network.host");
    }
    // In the Dockerfile, without the entitlement in the request: the daemon refuses it.
    let run_host = context(&format!("FROM {BUSYBOX}\nRUN --network=host true\n"));
    refused(&build(&a, run_host.path(), &["build", "-t", "x:1", "."]), "network.host");
    assert!(!built(&a), "a refused build left an image");

    // Another job's network. buildx 0.29 (and compose, through it) accepts only host, none and
    // default and says so before anything reaches the daemon, so ctproxy's own refusal of any other
    // `force-network-mode` (unit-tested in the buildkit module) is not reached by a real client.
    b.docker_ok(&["network", "create", "bnet"]);
    let label = format!("label=io.ctproxy.namespace={}", b.namespace);
    let daemon_side = docker(direct(), &["network", "ls", "--format", "{{.Name}}", "--filter", &label])
        .lines()
        .find(|n| n.ends_with(".bnet"))
        .expect("the daemon-side name of b's network")
        .to_owned();
    for net in ["bnet", daemon_side.as_str()] {
        let out = build(&a, plain.path(), &["buildx", "build", "--network", net, "--load", "-t", "x:1", "."]);
        refused(&out, &format!("network mode \"{net}\" not supported"));
    }
    let compose = context(&format!("FROM {BUSYBOX}\nRUN true\n"));
    let service = format!("services:\n  web:\n    build:\n      context: .\n      network: {daemon_side}\n    image: x:1\n");
    std::fs::write(compose.path().join("compose.yaml"), service).expect("compose file");
    let out = build(&a, compose.path(), &["compose", "-p", "ctpbknet", "build"]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("network mode \"{daemon_side}\" not supported")), "{text}");
    assert!(!built(&a), "a refused build left an image");

    build_ok(&a, plain.path(), &["buildx", "build", "--network", "none", "--load", "-t", "x:1", "."]);
    assert!(built(&a));
    assert!(host.audited("BuildKit call refused by namespace"));
}

/// A TCP listener on loopback that answers every connection with a small HTTP response and counts
/// them: what the daemon would fetch from its own network.
fn fetch_probe() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut [0u8; 4096]);
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nfetched\n");
        }
    });
    (port, count)
}

/// `ADD` of a URL (HTTP, or a Git repository BuildKit would clone) and a remote build context are
/// refused with a message the CLI prints: the daemon never connects to the address (here a
/// listener on the daemon's loopback). On the daemon's own socket the same HTTP `ADD` does fetch it
/// (the probe sees it).
#[test]
fn buildkit_add_of_a_url_is_refused() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let (port, fetched) = fetch_probe();
    let url = format!("http://127.0.0.1:{port}/x");
    for add in [
        format!("ADD {url} /x"),
        format!("ADD [\"{url}\", \"/x\"]"),
        format!("ADD --chmod=644 {url} /x"),
        format!("ADD git://127.0.0.1:{port}/x.git /x"),
        format!("ADD GIT://127.0.0.1:{port}/x.git /x"),
        format!("ADD https://127.0.0.1:{port}/x.git#main /x"),
        format!("ADD ssh://git@127.0.0.1:{port}/x.git /x"),
        "ADD git@127.0.0.1:x.git /x".to_owned(),
    ] {
        let dir = context(&format!("FROM {BUSYBOX}\n{add}\n"));
        let out = build_refused_dockerfile(&host, &job, dir.path(), &["build", "-t", "x:1", "."]);
        refused(&out, "ctproxy");
        refused(&out, "line 2");
        refused(&out, "ADD");
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 0, "{add}: the daemon connected to the probe");
    }
    // A remote build context (`docker build URL`): buildx sends it as the frontend attribute
    // `context`, which ctproxy does not know: refused, on both image stores.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    for remote in [format!("http://127.0.0.1:{port}/ctx.tar"), format!("git://127.0.0.1:{port}/x.git")] {
        let out = build(&job, elsewhere.path(), &["build", "-t", "x:1", &remote]);
        refused(&out, "ctproxy");
        refused(&out, "\"context\"");
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 0, "{remote}: the daemon connected to the probe");
    }
    assert!(!job.docker(&["image", "inspect", "x:1"]).status.success(), "a refused build left an image");
    assert!(host.audited("BuildKit Dockerfile refused by namespace"));
    assert!(host.audited("BuildKit call refused by namespace"));

    // Positive control: on the daemon's own socket BuildKit fetches it, from where the probe listens.
    let mut cleanup = Cleanup::new();
    let direct_tag = unique("bkadd");
    cleanup.image(&direct_tag);
    let dir = context(&format!("FROM {BUSYBOX}\nADD {url} /x\n"));
    let mut c = docker_cmd("docker", direct(), &["build", "-t", &direct_tag, "."]);
    c.current_dir(dir.path()).env_remove("DOCKER_BUILDKIT").env("BUILDKIT_PROGRESS", "plain").env("HOME", dir.path());
    check(&output_within(c, None, Duration::from_secs(300), "direct build with ADD"), &["build", "ADD", &url]);
    assert!(fetched.load(std::sync::atomic::Ordering::SeqCst) > 0, "the probe saw no fetch from the daemon");
}

/// `FROM` an image the job pulled, by the name it pulled it by, works (`docker buildx build --load`
/// and `docker build`), also when the registry is gone (the local image is used); another job's
/// same `FROM` cannot use it.
#[test]
fn buildkit_from_an_image_the_job_pulled() {
    if !on_docker_28() {
        return;
    }
    let mut registry = Some(Registry::start_with_users(&[("ci", "ci-pw")]));
    let reg = registry.as_ref().map(|r| r.addr.clone()).unwrap_or_default();
    let host = JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:0\"\ninsecure = [\"{reg}\"]\n"));
    let (a, b) = (host.job(), host.job());
    let repo = unique("bkpulled").replace("ctproxy-test-", "");
    let image = format!("{reg}/team/{repo}:1");
    // The registry gets the image from the daemon's own socket (busybox with a file of its own).
    let cfg = tempfile::tempdir().expect("tempdir");
    let seed = context(&format!("FROM {BUSYBOX}\nRUN echo pulled-{repo} > /pulled\n"));
    let mut cleanup = Cleanup::new();
    cleanup.image(&image);
    let on_direct = |args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", direct(), args);
        c.current_dir(seed.path()).env_remove("DOCKER_BUILDKIT").env("DOCKER_CONFIG", cfg.path());
        let out = output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &args.join(" "));
        check(&out, args);
    };
    on_direct(&["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw"));
    on_direct(&["build", "-t", &image, "."], None);
    on_direct(&["push", &image], None);
    on_direct(&["rmi", &image], None);

    // Job a logs in and pulls it.
    let a_cfg = tempfile::tempdir().expect("tempdir");
    let as_a = |args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &a.host, args);
        c.env("DOCKER_CONFIG", a_cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &args.join(" "))
    };
    check(&as_a(&["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw")), &["login", &reg]);
    check(&as_a(&["pull", &image], None), &["pull", &image]);
    // From now on only the local copy can serve the builds.
    drop(registry.take());

    let user = context(&format!("FROM {image}\nRUN cat /pulled > /seen\n"));
    build_ok(&a, user.path(), &["buildx", "build", "--load", "-t", "user:1", "."]);
    assert_eq!(a.docker_ok(&["run", "--rm", "user:1", "cat", "/seen"]), format!("pulled-{repo}"));
    build_ok(&a, user.path(), &["build", "-t", "user:2", "."]);
    assert_eq!(a.docker_ok(&["run", "--rm", "user:2", "cat", "/seen"]), format!("pulled-{repo}"));

    let out = build(&b, user.path(), &["build", "-t", "user:1", "."]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another job built FROM a's pulled image: {text}");
    assert!(text.contains(&format!("team/{repo}")), "the error does not name the image: {text}");
    assert!(!b.docker(&["image", "inspect", "user:1"]).status.success());
}

/// The refs of the job's builds, as `docker buildx history ls` lists them.
fn history_refs(job: &JobSocket, dir: &std::path::Path) -> Vec<String> {
    build_ok(job, dir, &["buildx", "history", "ls", "--format", "{{.Ref}}"]).lines().map(str::to_owned).collect()
}

/// The IDs and descriptions of the build cache records `docker buildx du --verbose` shows the job.
fn du_records(job: &JobSocket, dir: &std::path::Path) -> Vec<(String, String)> {
    let out = build_ok(job, dir, &["buildx", "du", "--verbose"]);
    let mut records = Vec::new();
    let mut id = None;
    for line in out.lines() {
        if let Some(v) = line.strip_prefix("ID:") {
            id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("Description:") {
            records.extend(id.take().map(|id| (id, v.trim().to_owned())));
        }
    }
    records
}

/// `docker buildx history ls`, `docker buildx du` and `docker builder prune` in two jobs: each sees
/// and touches only its own builds and cache mounts; one job's `builder prune -af` leaves the
/// other's cache (its rebuild is still cached, its cache mount still full) and cannot remove the
/// other's history.
#[test]
fn buildkit_history_du_and_prune_are_the_namespaces_own() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let (a, b) = (host.job(), host.job());
    let tag = std::process::id();
    let dockerfile = |who: &str| {
        format!("FROM {BUSYBOX}\nRUN --mount=type=cache,id=c,target=/c echo {who}-{tag} > /c/{who} && echo {who}-{tag} > /{who}\n")
    };
    let (da, db) = (context(&dockerfile("a")), context(&dockerfile("b")));
    build_ok(&a, da.path(), &["buildx", "build", "--load", "-t", "hist:1", "."]);
    build_ok(&b, db.path(), &["build", "-t", "hist:1", "."]);

    let (ra, rb) = (history_refs(&a, da.path()), history_refs(&b, db.path()));
    assert_eq!((ra.len(), rb.len()), (1, 1), "{ra:?} {rb:?}");
    assert_ne!(ra, rb);
    assert!(!ra[0].contains(&a.namespace), "the client's own ref: {ra:?}");

    let (ua, ub) = (du_records(&a, da.path()), du_records(&b, db.path()));
    assert_eq!((ua.len(), ub.len()), (1, 1), "{ua:?} {ub:?}");
    assert_ne!(ua[0].0, ub[0].0);
    for (_, d) in ua.iter().chain(&ub) {
        assert!(d.starts_with("cached mount /c from exec") && d.ends_with("with id \"c\""), "{d}");
    }

    // A job cannot remove another job's build record.
    let out = build(&b, db.path(), &["buildx", "history", "rm", &ra[0]]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(history_refs(&a, da.path()), ra);

    let pruned = build_ok(&a, da.path(), &["builder", "prune", "-af"]);
    assert!(pruned.contains(&ua[0].0[..12]), "{pruned}");
    assert!(du_records(&a, da.path()).is_empty());
    assert_eq!(du_records(&b, db.path()), ub);
    // b's cache mount still holds what it wrote, a's is empty. On the classic store b's rebuild is
    // still cached. On the containerd store it is not, whoever prunes: any Prune that removes a
    // record makes BuildKit drop the links of the results it cannot load (ReleaseUnreferenced),
    // as the daemon's own garbage collection does; b's records stay (du above), its steps run again.
    let again = build_ok(&b, db.path(), &["build", "-t", "hist:2", "."]);
    let step = again.lines().find(|l| l.contains("RUN --mount=type=cache")).and_then(|l| l.split(' ').next()).unwrap_or("?");
    let run_cached = again.lines().any(|l| l.trim() == format!("{step} CACHED"));
    let containerd_store = containerd_store();
    assert!(run_cached || containerd_store, "{again}");
    // (Without --no-cache: it empties the cache mounts a build uses.)
    let probe = |who: &str, test: &str| {
        context(&format!("FROM {BUSYBOX}\nRUN --mount=type=cache,id=c,target=/c {test} /c/{who} && echo probe-{tag}\n"))
    };
    let kept = probe("b", "test -e");
    build_ok(&b, kept.path(), &["build", "-t", "probe:1", "."]);
    let gone = probe("a", "test ! -e");
    build_ok(&a, gone.path(), &["build", "-t", "probe:1", "."]);

    // history rm of its own build works.
    build_ok(&a, da.path(), &["buildx", "history", "rm", &ra[0]]);
    assert!(!history_refs(&a, da.path()).contains(&ra[0]));
}

/// `docker compose build` builds the services' images into the job's namespace.
#[test]
fn buildkit_compose_build() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let dir = context(&format!("FROM {BUSYBOX}\nRUN echo composed > /c\n"));
    std::fs::write(dir.path().join("compose.yaml"), "services:\n  web:\n    build: .\n    image: composed:1\n").expect("compose file");
    build_ok(&job, dir.path(), &["compose", "-p", "ctpbk", "build"]);
    assert_eq!(job.docker_ok(&["run", "--rm", "composed:1", "cat", "/c"]), "composed");
}

/// `RUN --mount=type=secret` with `--secret id=x,src=file`, `RUN --mount=type=ssh` with
/// `--ssh default` (a throwaway ssh-agent; skipped with a reason when the host has none), and
/// `--platform` of the host: the daemon reads secrets and the agent from the job's client only.
#[test]
fn buildkit_secrets_ssh_and_platform() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let dir = context(&format!("FROM {BUSYBOX}\nRUN --mount=type=secret,id=x,required=true cp /run/secrets/x /copied\n"));
    std::fs::write(dir.path().join("secret.txt"), "the-job-secret").expect("secret");
    build_ok(&job, dir.path(), &["build", "--secret", "id=x,src=secret.txt", "-t", "secret-use:1", "."]);
    assert_eq!(job.docker_ok(&["run", "--rm", "secret-use:1", "cat", "/copied"]), "the-job-secret");

    let platform = format!("linux/{}", daemon_version()["Arch"].as_str().unwrap_or("amd64"));
    let plain = context(&format!("FROM {BUSYBOX}\nRUN echo platform > /p\n"));
    build_ok(&job, plain.path(), &["build", "--platform", &platform, "-t", "plat:1", "."]);
    assert_eq!(job.docker_ok(&["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", "plat:1"]), platform);

    if which("ssh-agent").is_none() {
        eprintln!("no ssh-agent on this host: the --ssh case is skipped");
        return;
    }
    let agent_dir = tempfile::tempdir().expect("tempdir");
    let sock = agent_dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    while !sock.exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ssh = context(&format!("FROM {BUSYBOX}\nRUN --mount=type=ssh test -S \"$SSH_AUTH_SOCK\" && echo agent-seen > /ssh\n"));
    let mut c = docker_cmd("docker", &job.host, &["build", "--ssh", "default", "-t", "ssh-use:1", "."]);
    c.current_dir(ssh.path()).env_remove("DOCKER_BUILDKIT").env("BUILDKIT_PROGRESS", "plain").env("HOME", ssh.path());
    c.env("SSH_AUTH_SOCK", &sock);
    let out = output_within(c, None, Duration::from_secs(300), "docker build --ssh default");
    let _ = agent.kill();
    let _ = agent.wait();
    check(&out, &["build", "--ssh", "default"]);
    assert_eq!(job.docker_ok(&["run", "--rm", "ssh-use:1", "cat", "/ssh"]), "agent-seen");
}

/// The path of `program` on PATH, if any.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|f| f.is_file()))
}

/// The build progress (`--progress plain`) names the job's images by the job's own names: no
/// daemon-side name, namespace prefix or hidden tag shows, for `docker buildx build` and
/// `docker build`, `FROM` the job's own image included.
#[test]
fn buildkit_progress_shows_the_jobs_names() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let job = host.job();
    let base = context(&format!("FROM {BUSYBOX}\nRUN echo base > /base\n"));
    let first = build_ok(&job, base.path(), &["buildx", "build", "--progress", "plain", "--load", "-t", "app:1", "."]);
    let own = context("FROM app:1\nRUN cat /base\n");
    let second = build_ok(&job, own.path(), &["build", "--progress", "plain", "-t", "app:2", "-t", "localhost:5000/team/app:3", "."]);
    for out in [&first, &second] {
        for leak in [job.namespace.as_str(), "ctproxy-untagged", "ctp."] {
            assert!(!out.contains(leak), "{leak:?} shows in the progress:\n{out}");
        }
        assert!(!out.contains("127.0.0.1:"), "the registry proxy's address shows in the progress:\n{out}");
    }
    assert!(first.contains("naming to app:1"), "{first}");
    assert!(second.contains("FROM app:1") || second.contains("load metadata for app:1"), "{second}");
    assert!(second.contains("naming to localhost:5000/team/app:3"), "{second}");
}

/// `docker buildx build --push` goes to the registry the job named, through ctproxy's registry
/// proxy, with the job's own login (Debian's `docker-registry` with htpasswd on loopback); without
/// a login the registry refuses it. The progress names the pushed image as the job typed it.
#[test]
fn buildkit_push_goes_through_the_registry_proxy() {
    if !on_docker_28() {
        return;
    }
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let reg = registry.addr.clone();
    let host = JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:0\"\ninsecure = [\"{reg}\"]\n"));
    let job = host.job();
    let cfg = tempfile::tempdir().expect("tempdir");
    let repo = unique("bkpush").replace("ctproxy-test-", "");
    let target = format!("{reg}/team/{repo}:1");
    let dir = context(&format!("FROM {BUSYBOX}\nRUN echo {repo} > /pushed\n"));
    let with_login = |args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &job.host, args);
        c.current_dir(dir.path()).env_remove("DOCKER_BUILDKIT").env("BUILDKIT_PROGRESS", "plain").env("DOCKER_CONFIG", cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &args.join(" "))
    };
    // Without a login the registry refuses the push.
    let anon = build(&job, dir.path(), &["buildx", "build", "--push", "-t", &target, "."]);
    let anon_text = String::from_utf8_lossy(&anon.stderr);
    assert!(!anon.status.success(), "a push without credentials must fail: {anon_text}");
    // The error names the image as the job typed it, not its daemon-side name.
    assert!(anon_text.contains(&target) && !anon_text.contains(&job.namespace), "{anon_text}");
    check(&with_login(&["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw")), &["login", &reg]);
    let out = with_login(&["buildx", "build", "--progress", "plain", "--push", "-t", &target, "."], None);
    check(&out, &["buildx", "build", "--push", &target]);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!text.contains(&job.namespace) && !text.contains("ctproxy-untagged"), "{text}");
    assert!(text.contains(&format!("pushing {target}")) || text.contains(&format!("naming to {target}")), "{text}");
    // The registry holds it under the name the job typed.
    let head = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-w", "%{http_code}", "-u", "ci:ci-pw", "-H", "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json"])
        .arg(format!("http://{reg}/v2/team/{repo}/manifests/1"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&head.stdout), "200", "the registry has no team/{repo}:1");
    // Another job pulls and runs it with its own login.
    let other = host.job();
    let mut c = docker_cmd("docker", &other.host, &["pull", &target]);
    c.env("DOCKER_CONFIG", cfg.path());
    check(&output_within(c, None, Duration::from_secs(300), "pull"), &["pull", &target]);
    assert_eq!(other.docker_ok(&["run", "--rm", &target, "cat", "/pushed"]), repo);
}

/// `--build-context NAME=docker-image://REF` names images in the job's namespace: the job's own
/// image works; another job's image, by its name there or its daemon-side name, is out of reach.
/// Git and HTTP contexts (fetched by the daemon) are refused with a message.
#[test]
fn buildkit_named_contexts_stay_in_the_namespace() {
    if !on_docker_28() {
        return;
    }
    let host = JobHost::start();
    let a = host.job();
    let b = host.job();
    let base = context(&format!("FROM {BUSYBOX}\nRUN echo ctx-base > /base\n"));
    build_ok(&a, base.path(), &["build", "-t", "ctxbase:1", "."]);
    let user = context("FROM base\nRUN cat /base > /seen\n");
    build_ok(&a, user.path(), &["buildx", "build", "--build-context", "base=docker-image://ctxbase:1", "--load", "-t", "ctxuser:1", "."]);
    assert_eq!(a.docker_ok(&["run", "--rm", "ctxuser:1", "cat", "/seen"]), "ctx-base");
    // A shared image as a named context.
    let shared = context("FROM tools\nRUN echo ok > /ok\n");
    build_ok(&a, shared.path(), &["build", "--build-context", &format!("tools=docker-image://{BUSYBOX}"), "-t", "ctxshared:1", "."]);

    let mangled = docker(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .lines()
        .find(|l| l.contains(&a.namespace) && l.ends_with("/ctxbase:1"))
        .expect("the daemon-side name")
        .to_owned();
    for image in ["ctxbase:1".to_owned(), mangled] {
        let out = build(&b, user.path(), &["build", "--build-context", &format!("base=docker-image://{image}"), "-t", "stolen:1", "."]);
        assert!(!out.status.success(), "another job's {image} must be out of reach: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = build(&b, user.path(), &["build", "--build-context", "base=https://example.com/ctx.tar", "-t", "x:1", "."]);
    refused(&out, "the build context base=https… is not available in a namespace");
}

/// `--cache-to type=inline` and registry caches (through the registry proxy with the job's login)
/// work; local and other cache types are refused with a message that says what is allowed.
#[test]
fn buildkit_cache_import_and_export() {
    if !on_docker_28() {
        return;
    }
    let registry = Registry::start_with_users(&[("ci", "ci-pw")]);
    let reg = registry.addr.clone();
    let host = JobHost::start_with(&format!("[registry_proxy]\naddress = \"127.0.0.1:0\"\ninsecure = [\"{reg}\"]\n"));
    let job = host.job();
    let cfg = tempfile::tempdir().expect("tempdir");
    let repo = unique("bkcache").replace("ctproxy-test-", "");
    let dir = context(&format!("FROM {BUSYBOX}\nRUN echo {repo} > /c\n"));
    let run = |args: &[&str], input: Option<&[u8]>| {
        let mut c = docker_cmd("docker", &job.host, args);
        c.current_dir(dir.path()).env_remove("DOCKER_BUILDKIT").env("BUILDKIT_PROGRESS", "plain").env("DOCKER_CONFIG", cfg.path());
        output_within(c, input.map(<[u8]>::to_vec), Duration::from_secs(300), &args.join(" "))
    };
    check(&run(&["login", "-u", "ci", "--password-stdin", &reg], Some(b"ci-pw")), &["login", &reg]);
    let inline = run(&["buildx", "build", "--cache-to", "type=inline", "--load", "-t", "inl:1", "."], None);
    check(&inline, &["buildx", "build", "--cache-to", "type=inline"]);

    let cache = format!("{reg}/team/{repo}-cache:1");
    let to = format!("type=registry,ref={cache},mode=max");
    let out = run(&["buildx", "build", "--cache-to", &to, "--load", "-t", "regcache:1", "."], None);
    if !containerd_store() {
        // The classic image store: buildx's docker driver exports no cache at all, on the daemon's own
        // socket too; it says so before anything reaches the daemon (or ctproxy).
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && text.contains("Cache export is not supported for the docker driver"), "{text}");
        return;
    }
    check(&out, &["buildx", "build", "--cache-to", &to]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!text.contains(&job.namespace), "{text}");
    let head = std::process::Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-u",
            "ci:ci-pw",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{reg}/v2/team/{repo}-cache/manifests/1"))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&head.stdout), "200", "the registry has no cache manifest");
    let from = format!("type=registry,ref={cache}");
    let out = run(&["buildx", "build", "--cache-from", &from, "--load", "-t", "regcache:2", "."], None);
    check(&out, &["buildx", "build", "--cache-from", &from]);

    let local = tempfile::tempdir().expect("tempdir");
    let dest = format!("type=local,dest={}", local.path().display());
    refused(
        &run(&["buildx", "build", "--cache-to", &dest, "--load", "-t", "x:1", "."], None),
        "type=local is not available in a namespace",
    );
    let s3 = "type=s3,region=x,bucket=y";
    refused(&run(&["buildx", "build", "--cache-from", s3, "--load", "-t", "x:1", "."], None), "type=s3 is not available in a namespace");
}
