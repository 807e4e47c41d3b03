//! Escapes through the classic builder (`DOCKER_BUILDKIT=0 docker build`) on a CI job's socket, and
//! the legitimate uses that must keep working:
//!
//! - `ADD <url>`: dockerd would fetch the URL itself, from the host's network namespace (the host's
//!   loopback services, private networks, the metadata endpoint). ctproxy downloads it instead, with
//!   the SSRF rules of its registry proxy, and hands the daemon a `COPY` of the file: a loopback URL
//!   is refused without anything contacting it; a public URL gives exactly the daemon's own result.
//! - `ONBUILD` triggers of a base image run in the build that uses it, from the image's config where
//!   no Dockerfile rewrite reaches: one that names another namespace's image is refused, one that
//!   names the job's own (or a shared) image works.
//!
//! Every refusal must be a Docker-style error the CLI prints, an audit line, and no effect on the
//! daemon (no image, no leftover container).

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::jobs::*;
use support::*;

const LIMIT: Duration = Duration::from_secs(300);
/// A small file on a public host (120 bytes, no `Last-Modified`).
const PUBLIC_URL: &str = "http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Release";

/// The docker CLI 28 with the classic builder.
fn cli(host: &str, args: &[&str]) -> Output {
    let mut c = docker_cmd("docker", host, args);
    c.env("DOCKER_BUILDKIT", "0");
    output_within(c, None, LIMIT, &format!("docker {}", args.join(" ")))
}

fn ok(host: &str, args: &[&str]) -> String {
    let out = cli(host, args);
    check(&out, args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base the builds here start from instead of `BUSYBOX`: busybox committed once per test
/// process (a shared `ctproxy-test/*` image, so jobs see it), removed when the process exits.
///
/// On Docker 28's containerd store the classic builder looks for a cached step among every child
/// image of the step's parent, and fails the build ("unable to find image \"sha256:…\"") when one
/// of them is removed while it looks: with `FROM busybox`, any other test that removes an image
/// built on busybox at that moment. A parent only this process builds on has only its children.
fn base() -> &'static str {
    static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let image = format!("ctproxy-test/build-escapes-base:{}", std::process::id());
        let container = unique("base");
        docker(direct(), &["create", "--name", &container, BUSYBOX, "true"]);
        let committed =
            docker_output(direct(), &["commit", "--change", &format!("LABEL ctproxy-test-run={container}"), &container, &image]);
        let _ = docker_output(direct(), &["rm", "-f", &container]);
        check(&committed, &["commit", "base"]);
        extern "C" fn remove_base() {
            let image = format!("ctproxy-test/build-escapes-base:{}", std::process::id());
            let _ = docker_output(direct(), &["rmi", "-f", &image]);
        }
        // SAFETY: registers a plain function to run at exit; it only runs the docker CLI.
        unsafe { libc::atexit(remove_base) };
        image
    })
}

/// A build context with `dockerfile`, its `FROM {BUSYBOX}` stages on [`base`].
fn context(dockerfile: &str) -> tempfile::TempDir {
    let text = dockerfile.replace(&format!("FROM {BUSYBOX}"), &format!("FROM {}", base()));
    let dir = tempfile::tempdir().expect("context dir");
    std::fs::write(dir.path().join("Dockerfile"), text).expect("Dockerfile");
    dir
}

fn build(host: &str, tag: &str, dir: &Path) -> Output {
    cli(host, &["build", "--rm", "--force-rm", "-t", tag, &dir.display().to_string()])
}

/// An HTTP server on loopback that counts the connections it gets and answers "secret".
struct Trap {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trap");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.read(&mut [0u8; 4096]);
                let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nsecret\n");
            }
        });
        Trap { port, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The daemon has no image `tag` of the job, and no container of it is left over.
fn no_effect(job: &JobSocket, tag: &str) {
    let images = docker(direct(), &["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mangled = format!("/{}/docker.io/library/{tag}", job.namespace);
    assert!(!images.lines().any(|l| l.contains(&mangled)), "an image {tag} of the job exists:\n{images}");
    assert!(job.on_daemon().is_empty(), "the job has objects on the daemon: {:?}", job.on_daemon());
}

#[test]
fn add_of_internal_urls_is_refused_and_nothing_is_contacted() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let trap = Trap::start();
    let p = trap.port;
    let cases = [
        // (Dockerfile after FROM, what the refusal says)
        (format!("ADD http://127.0.0.1:{p}/secret /secret\n"), "internal address".to_string()),
        (format!("ADD http://localhost:{p}/secret /secret\n"), "resolves to no public address".to_string()),
        (format!("ADD http://[::ffff:127.0.0.1]:{p}/secret /secret\n"), "internal address".to_string()),
        ("ADD http://169.254.169.254/latest/meta-data/ /meta/\n".to_string(), "internal address".to_string()),
        // Variables and quotes do not hide the URL.
        (format!("ARG H=127.0.0.1\nADD http://$H:{p}/secret /secret\n"), "internal address".to_string()),
        (format!("ADD [\"h\\u0074tp://127.0.0.1:{p}/secret\", \"/secret\"]\n"), "internal address".to_string()),
        // A URL mixed with local files cannot become a COPY (ADD would extract the local archives).
        (format!("ADD http://127.0.0.1:{p}/secret Dockerfile /d/\n"), "not supported through ctproxy".to_string()),
    ];
    for (i, (rest, needle)) in cases.iter().enumerate() {
        let tag = format!("leak{i}");
        let dir = context(&format!("FROM {BUSYBOX}\n{rest}RUN cat /secret || true\n"));
        let out = build(&job.host, &tag, dir.path());
        // What (the Dockerfile line and instruction), by the build's check, and that no setting
        // allows it (issue 17).
        assert_ns_refused(&out, needle, "the namespace (build)");
        assert_refused(&out, &format!("Dockerfile line {}: ADD ", rest.lines().count() + 1));
        no_effect(&job, &tag);
    }
    assert!(host.audited("ADD http://127.0.0.1"), "no audit line:\n{}", host.log_text());
    // A base image whose trigger downloads: refused at the FROM that would run it.
    ok(&job.host, &["create", "--name", "cc", BUSYBOX, "true"]);
    ok(&job.host, &["commit", "--change", &format!("ONBUILD ADD http://127.0.0.1:{p}/secret /secret"), "cc", "addbase:1"]);
    ok(&job.host, &["rm", "cc"]);
    let dir = context("FROM addbase:1\nRUN cat /secret\n");
    let out = build(&job.host, "leak-trigger", dir.path());
    assert_ns_refused(&out, "would make the daemon download", "the namespace (build)");
    no_effect(&job, "leak-trigger");
    assert_eq!(trap.hits(), 0, "the loopback server was contacted");
}

#[test]
fn add_of_a_public_url_gives_what_the_daemon_gives() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let dockerfile = format!(
        "FROM {BUSYBOX}\nADD {PUBLIC_URL} /dir/\nADD --chown=1:2 [\"{PUBLIC_URL}\", \"/file\"]\nADD {PUBLIC_URL} {PUBLIC_URL} /two/\nADD {PUBLIC_URL} /dir\n"
    );
    let dir = context(&dockerfile);
    let show = "cd / && for f in dir/Release file two/Release; do stat -c '%n %a %s %Y %u:%g %F' $f; done && md5sum dir/Release file";
    // The daemon itself (the reference).
    let direct_tag = unique("add-direct");
    let out = build(direct(), &direct_tag, dir.path());
    check(&out, &["build", "direct"]);
    let want = docker(direct(), &["run", "--rm", &direct_tag, "sh", "-c", show]);
    let _ = docker_output(direct(), &["rmi", "-f", &direct_tag]);
    // Through the job's socket: ctproxy downloads, the daemon copies.
    let out = build(&job.host, "fetched:1", dir.path());
    check(&out, &["build", "job"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(".ctproxy/add/") || text.contains("COPY"), "{text}");
    let got = ok(&job.host, &["run", "--rm", "fetched:1", "sh", "-c", show]);
    assert_eq!(got, want, "job build differs from the daemon's own");
    // dockerd's rules: mode 0600, the epoch without Last-Modified, --chown applied.
    assert!(got.contains("dir/Release 600 ") && got.contains(" 0 0:0 regular file") && got.contains(" 0 1:2 regular file"), "{got}");
    // Nothing of ctproxy's is left in the image.
    let ls = ok(&job.host, &["run", "--rm", "fetched:1", "ls", "-a", "/"]);
    assert!(!ls.contains(".ctproxy"), "{ls}");
}

#[test]
fn onbuild_trigger_naming_another_namespace_image_is_refused() {
    require_docker();
    let host = JobHost::start();
    let a = host.job();
    let b = host.job();
    // Job a has a secret image.
    let dir = context(&format!("FROM {BUSYBOX}\nRUN echo topsecret > /s\n"));
    check(&build(&a.host, "secret:1", dir.path()), &["build", "secret"]);
    let a_name = format!("127.0.0.1:5001/{}/docker.io/library/secret:1", a.namespace);
    docker(direct(), &["image", "inspect", &a_name]);
    // Job b cannot name it in a Dockerfile, but can write its daemon-side name into a trigger.
    ok(&b.host, &["create", "--name", "cc", BUSYBOX, "true"]);
    ok(&b.host, &["commit", "--change", &format!("ONBUILD COPY --from={a_name} /s /stolen"), "cc", "evil:1"]);
    ok(&b.host, &["rm", "cc"]);
    let dir = context("FROM evil:1\nRUN cat /stolen\n");
    let out = build(&b.host, "loot:1", dir.path());
    assert_ns_refused(&out, "ONBUILD COPY --from=", "the namespace (build)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an image of this namespace"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(host.audited("build trigger"), "no audit line:\n{}", host.log_text());
    no_effect(&b, "loot");
    // A trigger written in a Dockerfile names b's own images only (the name is mangled into b's
    // namespace): the build fails, nothing of a's is copied.
    let dir = context(&format!("FROM {BUSYBOX}\nONBUILD COPY --from={a_name} /s /stolen\n"));
    check(&build(&b.host, "evil2:1", dir.path()), &["build", "evil2"]);
    let dir = context("FROM evil2:1\nRUN cat /stolen\n");
    let out = build(&b.host, "loot2:1", dir.path());
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("topsecret"));
    no_effect(&b, "loot2");
    // The same base, by ID: refused too (the ID is pinned and its config checked).
    let id = ok(&b.host, &["image", "inspect", "-f", "{{.Id}}", "evil:1"]);
    let dir = context(&format!("FROM {}\nRUN cat /stolen\n", id.trim()));
    assert_refused(&build(&b.host, "loot3:1", dir.path()), "ONBUILD COPY --from=");
    no_effect(&b, "loot3");
}

#[test]
fn onbuild_triggers_with_legitimate_references_still_work() {
    require_docker();
    let host = JobHost::start();
    let job = host.job();
    let dir = context(&format!("FROM {BUSYBOX}\nRUN echo tool > /tool\n"));
    check(&build(&job.host, "tools:1", dir.path()), &["build", "tools"]);
    // A trigger from a Dockerfile (its reference becomes the job's own image name)...
    let dir = context(&format!("FROM {BUSYBOX}\nONBUILD COPY --from=tools:1 /tool /tool\n"));
    check(&build(&job.host, "base:1", dir.path()), &["build", "base"]);
    // ...and from docker commit, naming a shared image.
    ok(&job.host, &["create", "--name", "cc", BUSYBOX, "true"]);
    ok(&job.host, &["commit", "--change", &format!("ONBUILD COPY --from={BUSYBOX} /bin/busybox /bb"), "cc", "base2:1"]);
    ok(&job.host, &["rm", "cc"]);
    let dir = context("FROM base:1\nRUN cat /tool\n");
    let out = build(&job.host, "app:1", dir.path());
    check(&out, &["build", "app"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Executing 1 build trigger"), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ok(&job.host, &["run", "--rm", "app:1", "cat", "/tool"]).trim(), "tool");
    let dir = context("FROM base2:1\nRUN test -x /bb\n");
    check(&build(&job.host, "app2:1", dir.path()), &["build", "app2"]);
    // A stage of the same Dockerfile with a trigger naming an earlier stage.
    let dir = context(&format!(
        "FROM {BUSYBOX} AS files\nRUN echo staged > /f\nFROM {BUSYBOX} AS base\nONBUILD COPY --from=files /f /f\nFROM base\nRUN cat /f\n"
    ));
    check(&build(&job.host, "app3:1", dir.path()), &["build", "app3"]);
    assert_eq!(ok(&job.host, &["run", "--rm", "app3:1", "cat", "/f"]).trim(), "staged");
    // `--pull` still works (ctproxy does the pulling; a shared base is used as it is).
    let dir = context(&format!(
        "FROM {BUSYBOX}
RUN true
"
    ));
    let out = cli(&job.host, &["build", "--pull", "-t", "pulled:1", &dir.path().display().to_string()]);
    check(&out, &["build", "--pull"]);
}
