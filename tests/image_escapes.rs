//! Image escapes through a job socket (Docker 28.5 with the containerd image store, and Debian's
//! dockerd 20.10): every way a CI job named an image outside its namespace, each with its fix's
//! regression test. Each test checks on the daemon's own socket that the attack had no effect: the
//! shared image keeps its ID, no container was created, nothing was fetched from the test's trap.
//!
//! Run against Docker 28: `CTPROXY_TEST_DOCKER_HOST=unix:///run/ctproxy-d28/docker.sock cargo
//! nextest run --test image_escapes`. Where the daemons differ (image mounts need API 1.48,
//! `index.json` is read by the containerd store only), each test asserts what each daemon does.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::jobs::*;
use support::*;

/// The registry proxy's name when a job host configures none (the namespace's image prefix).
const RP: &str = "127.0.0.1:5001";

/// The daemon's API version (`1.51` for 28.5, `1.41` for 20.10).
fn daemon_api() -> (u32, u32) {
    let v = docker(direct(), &["version", "--format", "{{.Server.APIVersion}}"]);
    let (major, minor) = v.trim().split_once('.').expect("API version");
    (major.parse().expect("major"), minor.parse().expect("minor"))
}

fn api_path(path: &str) -> String {
    let (major, minor) = daemon_api();
    format!("/v{major}.{minor}{path}")
}

/// An image's ID on the daemon, if it exists.
fn image_id(name: &str) -> Option<String> {
    let out = docker_output(direct(), &["image", "inspect", "--format", "{{.Id}}", name]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Every `repository:tag` on the daemon.
fn daemon_tags() -> Vec<String> {
    docker(direct(), &["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines().map(str::to_owned).collect()
}

/// The `repository:tag` names of the image with ID `id` on the daemon.
fn tags_of(id: &str) -> Vec<String> {
    docker(direct(), &["images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(i, _)| *i == id)
        .map(|(_, t)| t.to_owned())
        .collect()
}

fn container_exists(daemon_name: &str) -> bool {
    docker_output(direct(), &["container", "inspect", daemon_name]).status.success()
}

/// A loopback TCP port that counts the connections made to it (dockerd fetching what it should not).
struct Trap {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Trap {
    fn start() -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("trap");
        let port = listener.local_addr().expect("trap address").port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                counted.fetch_add(1, Ordering::SeqCst);
                // Answer like a web server with an archive, so that a fetch would succeed.
                if let Ok(mut c) = conn {
                    let mut buf = [0u8; 4096];
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n");
                    let _ = c.write_all(&[0u8; 1024]);
                }
            }
        });
        Trap { port, hits }
    }

    fn hits(&self) -> usize {
        // dockerd may still be on its way.
        std::thread::sleep(Duration::from_millis(300));
        self.hits.load(Ordering::SeqCst)
    }
}

// === Archives ===

/// A one-layer image as an archive both daemons load: an OCI layout (`oci-layout`, `index.json`,
/// `blobs/`) for the containerd store, and a `manifest.json` over the same blobs for the classic one.
struct Archive {
    tar: Vec<u8>,
    /// The OCI manifest's digest: the image ID on the containerd store.
    manifest: String,
    /// The config's digest: the image ID on the classic store.
    config: String,
}

impl Archive {
    /// `index` builds `index.json` from the manifest descriptor (`mediaType`, `digest`, `size`);
    /// `repo_tags` are `manifest.json`'s.
    fn new(index: impl FnOnce(Value) -> String, repo_tags: &[&str]) -> Archive {
        let marker = unique("pwned");
        let mut layer = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(marker.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        layer.append_data(&mut h, "pwned", marker.as_bytes()).expect("layer");
        let layer = layer.into_inner().expect("layer");
        let layer_digest = format!("sha256:{}", sha256_hex(&layer));
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let config = serde_json::to_vec(&json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/pwned"], "Labels": {"ctproxy-test": marker}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "ctproxy test"}]
        }))
        .expect("config");
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
        }))
        .expect("manifest");
        let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
        let descriptor =
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len()});
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let docker_manifest = json!([{"Config": blob(&config_digest), "RepoTags": repo_tags, "Layers": [blob(&layer_digest)]}]);

        let mut b = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).expect("member");
        };
        add(&blob(&layer_digest), &layer);
        add(&blob(&config_digest), &config);
        add(&blob(&manifest_digest), &manifest);
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
        add("index.json", index(descriptor).as_bytes());
        add("manifest.json", docker_manifest.to_string().as_bytes());
        Archive { tar: b.into_inner().expect("archive"), manifest: manifest_digest, config: config_digest }
    }

    /// `index.json` with one descriptor carrying `annotations`.
    fn named(annotations: Value, repo_tags: &[&str]) -> Archive {
        Archive::new(
            move |mut d| {
                d["annotations"] = annotations;
                json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [d]}).to_string()
            },
            repo_tags,
        )
    }

    fn write(&self, dir: &Path) -> String {
        let p = dir.join(format!("{}.tar", unique("archive")));
        std::fs::write(&p, &self.tar).expect("write archive");
        p.display().to_string()
    }

    /// The image's ID on this daemon's store.
    fn id(&self) -> &str {
        if containerd_store() {
            &self.manifest
        } else {
            &self.config
        }
    }

    /// Whether the daemon holds the image (under any name, or none).
    fn loaded(&self) -> bool {
        image_id(self.id()).is_some()
    }

    /// Removes the image (dangling ones included) from the daemon.
    fn remove(&self) {
        let _ = docker_output(direct(), &["rmi", "-f", self.id()]);
    }
}

impl Drop for Archive {
    /// A failing test must not leave its image on the shared daemon.
    fn drop(&mut self) {
        self.remove();
    }
}

/// The shared image's ID at the start of a test; if a regression replaced it, it is put back on
/// drop (the daemon keeps the replaced image, dangling), so that other tests on the daemon go on.
struct SharedImage(String);

impl SharedImage {
    fn record() -> SharedImage {
        SharedImage(image_id(BUSYBOX).expect("the shared test image"))
    }
}

impl Drop for SharedImage {
    fn drop(&mut self) {
        if image_id(BUSYBOX).as_deref() != Some(self.0.as_str()) {
            let _ = docker_output(direct(), &["tag", &self.0, BUSYBOX]);
        }
    }
}

/// The members of a tar that name images, as text.
fn members(tar: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut a = tar::Archive::new(tar);
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        if matches!(name.as_str(), "index.json" | "manifest.json" | "repositories") {
            let mut s = String::new();
            e.read_to_string(&mut s).expect("member");
            out.push((name, s));
        }
    }
    out
}

// === 3. docker load cannot take over a shared image ===

#[test]
fn load_cannot_take_over_a_shared_image() {
    let host = JobHost::start();
    let job = host.job();
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = SharedImage::record();
    let shared = guard.0.clone();
    let decoy = format!("{}:1", unique("decoy"));
    let copy = format!("{RP}/{}/docker.io/ctproxy-test/busybox:latest", job.namespace);

    // The containerd name, the OCI name alone, case-folded and duplicated fields, a nested index's
    // spelling: each names the shared image, and each must land in the namespace instead.
    let attacks: Vec<(&str, Archive)> = vec![
        (
            "io.containerd.image.name",
            Archive::named(
                json!({"io.containerd.image.name": "docker.io/ctproxy-test/busybox:latest", "org.opencontainers.image.ref.name": "latest"}),
                &[&decoy],
            ),
        ),
        ("org.opencontainers.image.ref.name alone", Archive::named(json!({"org.opencontainers.image.ref.name": BUSYBOX}), &[&decoy])),
        (
            "case-folded field names",
            Archive::new(
                |mut d| {
                    d["Annotations"] = json!({"io.containerd.image.name": "docker.io/ctproxy-test/busybox:latest"});
                    json!({"schemaVersion": 2, "MANIFESTS": [d]}).to_string()
                },
                &[&decoy],
            ),
        ),
        (
            "a duplicate manifests array",
            Archive::new(
                |d| {
                    let mut named = d.clone();
                    named["annotations"] = json!({"io.containerd.image.name": "docker.io/ctproxy-test/busybox:latest"});
                    format!(r#"{{"schemaVersion":2,"manifests":[{}],"manifests":[{}]}}"#, d, named)
                },
                &[&decoy],
            ),
        ),
        ("manifest.json RepoTags", Archive::named(json!({}), &[BUSYBOX])),
    ];
    for (what, archive) in &attacks {
        let path = archive.write(dir.path());
        let out = job.docker_ok(&["load", "-i", &path]);
        assert!(!out.contains(RP) && !out.contains(&job.namespace), "{what}: the daemon's names leak: {out}");
        assert_eq!(image_id(BUSYBOX).as_deref(), Some(shared.as_str()), "{what}: the shared image was replaced");
        assert!(archive.loaded(), "{what}: the image was not loaded at all");
        // Every name the load created is the namespace's.
        for tag in tags_of(archive.id()) {
            assert!(
                tag.starts_with(&format!("{RP}/{}/", job.namespace)) || tag == "<none>:<none>",
                "{what}: the load created the name {tag}"
            );
        }
        if containerd_store() && !what.starts_with("manifest.json") {
            assert_eq!(image_id(&copy).as_deref(), Some(archive.id()), "{what}: the namespace's copy");
        }
        // The job still runs the shared image.
        assert_eq!(job.docker_ok(&["image", "inspect", "--format", "{{.Id}}", BUSYBOX]), shared, "{what}");
        archive.remove();
    }
}

#[test]
fn load_refuses_what_it_does_not_understand() {
    let host = JobHost::start();
    let job = host.job();
    let dir = tempfile::tempdir().expect("tempdir");
    let guard = SharedImage::record();
    let shared = guard.0.clone();
    let cases: Vec<(&str, Archive, &str)> = vec![
        (
            "an unknown annotation",
            Archive::named(json!({"com.example.image.name": BUSYBOX, "io.containerd.image.name": "mine:1"}), &[]),
            "is not understood in a namespace",
        ),
        ("an unparseable name", Archive::named(json!({"io.containerd.image.name": "Not A Name"}), &[]), "invalid image name"),
        (
            "an unknown descriptor field",
            Archive::new(
                |mut d| {
                    d["names"] = json!([BUSYBOX]);
                    json!({"schemaVersion": 2, "manifests": [d]}).to_string()
                },
                &[],
            ),
            "is not understood in a namespace",
        ),
    ];
    for (what, archive, why) in &cases {
        let path = archive.write(dir.path());
        let out = job.docker(&["load", "-i", &path]);
        assert_refused(&out, why);
        assert!(host.audited(why), "{what}: no audit line\n{}", host.log_text());
        assert!(!archive.loaded(), "{what}: the daemon loaded the image anyway");
        assert_eq!(image_id(BUSYBOX).as_deref(), Some(shared.as_str()), "{what}");
        archive.remove();
    }
    // The same request through a raw socket: a Docker-style JSON error with the status.
    let archive = Archive::named(json!({"com.example.image.name": BUSYBOX}), &[]);
    let reply = post_tar(&job.socket, "/images/load?quiet=1", &archive.tar);
    assert_eq!(reply.0, 403, "{}", reply.1);
    assert!(reply.1.contains(r#""message":"ctproxy: docker load: index.json"#), "{}", reply.1);
    assert!(!archive.loaded());
}

/// An unnamed image a namespace loads is that namespace's own (a hidden tag, issue 17), and no
/// other namespace's: not listed, not found by ID.
#[test]
fn unnamed_loads_are_the_loading_namespaces_only() {
    let host = JobHost::start();
    let (job, other) = (host.job(), host.job());
    let dir = tempfile::tempdir().expect("tempdir");
    // No name anywhere: containerd makes it a dangling image, the classic store an untagged one.
    let archive = Archive::named(json!({"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}), &[]);
    let path = archive.write(dir.path());
    job.docker_ok(&["load", "-i", &path]);
    assert!(archive.loaded());
    let listed = job.docker_ok(&["images", "-a", "--no-trunc", "--format", "{{.ID}}"]);
    assert!(listed.contains(archive.id()), "the loading namespace lists its unnamed image: {listed}");
    job.docker_ok(&["image", "inspect", archive.id()]);
    let listed = other.docker_ok(&["images", "-a", "--no-trunc", "--format", "{{.ID}}"]);
    assert!(!listed.contains(archive.id()), "another namespace lists an unnamed image: {listed}");
    let out = other.docker(&["image", "inspect", archive.id()]);
    assert_refused(&out, "No such image");
    archive.remove();
}

/// `POST` of a tar on a unix socket: the status and the body text.
fn post_tar(sock: &Path, path: &str, body: &[u8]) -> (u16, String) {
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        api_path(path),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    let raw = raw_request(sock, &req, Duration::from_secs(60));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

// === 4. docker save gives the client's names, and loads back to the same names ===

#[test]
fn save_names_are_the_clients_and_load_round_trips() {
    let host = JobHost::start();
    let job = host.job();
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("{}:1", unique("mine").replace("ctproxy-test-", "m"));
    job.docker_ok(&["tag", BUSYBOX, &name]);
    let path = dir.path().join("mine.tar").display().to_string();
    job.docker_ok(&["save", "-o", &path, &name]);
    let tar = std::fs::read(&path).expect("saved");
    let saved = members(&tar);
    assert!(saved.iter().any(|(m, _)| m == "manifest.json"), "{saved:?}");
    for (member, text) in &saved {
        assert!(!text.contains(&format!("{RP}/")) && !text.contains(&job.namespace), "{member} leaks the namespace: {text}");
        assert!(text.contains(&name.replace(":1", "")), "{member} does not name the image: {text}");
    }
    if containerd_store() {
        let (_, index) = saved.iter().find(|(m, _)| m == "index.json").expect("index.json from the containerd store");
        let index: Value = serde_json::from_str(index).expect("index.json");
        let a = &index["manifests"][0]["annotations"];
        assert_eq!(a["io.containerd.image.name"], format!("docker.io/library/{name}"), "{index}");
        assert_eq!(a["org.opencontainers.image.ref.name"], "1", "{index}");
    }
    let id = job.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &name]);
    job.docker_ok(&["rmi", &name]);
    let out = job.docker_ok(&["load", "-i", &path]);
    assert!(out.contains(&format!("Loaded image: {name}")), "{out}");
    assert_eq!(job.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &name]), id);
    let tags = daemon_tags();
    assert!(tags.contains(&format!("{RP}/{}/docker.io/library/{name}", job.namespace)), "{tags:?}");
    assert!(!tags.contains(&name), "a real name was created: {tags:?}");

    // A shared image saves under its real name, and shows nothing of any namespace.
    let shared = dir.path().join("shared.tar").display().to_string();
    job.docker_ok(&["save", "-o", &shared, BUSYBOX]);
    for (member, text) in members(&std::fs::read(&shared).expect("saved")) {
        assert!(!text.contains(&format!("{RP}/")) && !text.contains(&job_prefix()), "{member} leaks a namespace: {text}");
        assert!(text.contains("ctproxy-test/busybox"), "{member}: {text}");
    }
}

// === 2. Image mounts resolve in the namespace ===

#[test]
fn image_mount_sources_resolve_in_the_namespace() {
    let host = JobHost::start();
    let (victim, attacker) = (host.job(), host.job());
    // The victim's own image, distinct from every shared one.
    let w = unique("w").replace("ctproxy-test-", "w");
    victim.docker_ok(&["run", "--name", &w, BUSYBOX, "sh", "-c", "echo s3cret > /secret"]);
    victim.docker_ok(&["commit", &w, "secret:1"]);
    let daemon_name = format!("{RP}/{}/docker.io/library/secret:1", victim.namespace);
    let id = image_id(&daemon_name).expect("the victim's image");
    let hex = id.trim_start_matches("sha256:").to_owned();
    let image_mounts = daemon_api() >= (1, 48);

    for source in [daemon_name.as_str(), id.as_str(), hex.as_str(), &hex[..12], &hex[..5], "secret:1"] {
        let name = unique("m").replace("ctproxy-test-", "m");
        let body = json!({"Image": BUSYBOX, "Cmd": ["cat", "/m/secret"],
                          "HostConfig": {"Mounts": [{"Type": "image", "Source": source, "Target": "/m"}]}});
        let (status, reply) = attacker.request("POST", &api_path(&format!("/containers/create?name={name}")), Some(&body.to_string()));
        if image_mounts {
            assert_eq!(status, 404, "{source}: {reply}");
            let message = reply["message"].as_str().unwrap_or("");
            // The daemon's own not-found, with the client's string (or its own name, normalised).
            assert!(message.starts_with("No such image: "), "{source}: {reply}");
            assert!(!message.contains(&victim.namespace) || source == daemon_name, "{source}: {reply}");
        } else {
            // 20.10 knows no image mounts: refused one way or the other, never created.
            assert!(status == 400 || status == 404, "{source}: {status} {reply}");
        }
        assert!(!container_exists(&format!("ctp.{}.{name}", attacker.namespace)), "{source}: a container was created");
    }

    // The attacker's own image, and a shared one, can be mounted (where the daemon has image mounts).
    let aw = unique("w").replace("ctproxy-test-", "w");
    attacker.docker_ok(&["run", "--name", &aw, BUSYBOX, "sh", "-c", "echo mine > /secret"]);
    attacker.docker_ok(&["commit", &aw, "own:1"]);
    for source in ["own:1", BUSYBOX] {
        let name = unique("m").replace("ctproxy-test-", "m");
        let body = json!({"Image": BUSYBOX, "Cmd": ["ls", "/m/bin"],
                          "HostConfig": {"Mounts": [{"Type": "image", "Source": source, "Target": "/m"}]}});
        let (status, reply) = attacker.request("POST", &api_path(&format!("/containers/create?name={name}")), Some(&body.to_string()));
        if image_mounts {
            assert_eq!(status, 201, "{source}: {reply}");
            let inspect = attacker.docker_ok(&["inspect", "--format", "{{json .Mounts}}", &name]);
            assert!(!inspect.contains(RP), "the daemon-side name leaks: {inspect}");
            attacker.docker_ok(&["rm", "-f", &name]);
        } else {
            assert_eq!(status, 400, "{source}: {reply}");
            assert!(reply["message"].as_str().unwrap_or("").contains("mount type unknown"), "{reply}");
        }
    }
}

// === 7. POST /images/create is classified as dockerd classifies it ===

#[test]
fn a_pull_disguised_as_an_import_goes_through_the_registry_proxy() {
    let host = JobHost::start_with("[registry_proxy]\naddress = \"127.0.0.1:0\"\n");
    let job = host.job();
    let trap = Trap::start();
    let target = format!("127.0.0.1:{}/x/y", trap.port);
    let path = api_path(&format!("/images/create?fromSrc=-&fromImage={target}&tag=latest"));
    let (status, reply) = job.request("POST", &path, Some(""));
    // A pull through the registry proxy, which refuses the loopback registry (SSRF).
    assert!(status == 200 || status >= 400, "{status} {reply}");
    assert_eq!(trap.hits(), 0, "dockerd reached the loopback address: {reply}");
    assert!(image_id(&format!("{target}:latest")).is_none(), "an image was pulled under the real name");
    assert!(!daemon_tags().iter().any(|t| t.starts_with(&target)), "an image was pulled");
}

/// The namespace refuses what the daemon would download itself, with no policy configured.
#[test]
fn url_imports_are_refused_by_the_namespace_alone() {
    let trap = Trap::start();
    let toml = format!(
        r#"
[listener.main]
address = "unix://{{dir}}/docker.sock"
[namespaces]
shared_images = ["ctproxy-test/*"]
[jobs]
control_socket = "{{dir}}/control.sock"
dir = "{{dir}}/jobs"
policies = []
reap_interval_s = 5
namespace_prefix = "{prefix}"
"#,
        prefix = job_prefix()
    );
    let host = JobHost { proxy: Proxy::start_with_config(&toml, "control.sock") };
    let job = host.job();
    let tag = unique("imported").replace("ctproxy-test-", "i");
    for src in [format!("http://127.0.0.1:{}/x.tar", trap.port), format!("127.0.0.1:{}/x.tar", trap.port), String::new()] {
        let (status, reply) = job.request("POST", &api_path(&format!("/images/create?fromSrc={src}&repo={tag}")), Some(""));
        assert_eq!(status, 403, "fromSrc={src}: {reply}");
        assert!(reply["message"].as_str().unwrap_or("").contains("from a URL the daemon downloads"), "{reply}");
    }
    assert!(host.audited("from a URL the daemon downloads"), "{}", host.log_text());
    assert_eq!(trap.hits(), 0);
    assert!(!daemon_tags().iter().any(|t| t.contains(&tag)), "an image was imported");

    // An import of the body lands in the namespace (`changes` may carry ONBUILD triggers: they are
    // judged when a build uses the image, tests/build_escapes.rs).
    let layer = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", &b"hi"[..]).expect("tar");
        b.into_inner().expect("tar")
    };
    let reply = post_tar(&job.socket, &format!("/images/create?fromSrc=-&repo={tag}&changes={}", urlencode("ENV A=1")), &layer);
    assert_eq!(reply.0, 200, "{}", reply.1);
    assert!(image_id(&format!("{RP}/{}/docker.io/library/{tag}:latest", job.namespace)).is_some(), "{}", reply.1);
    assert!(!daemon_tags().contains(&format!("{tag}:latest")));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

// === The rest of the class ===

/// By ID, the daemon's answers carry every namespace's tags of an image: the namespace sees only
/// its own and the shared ones; filters naming another namespace's image select nothing.
#[test]
fn another_namespaces_tags_and_ids_stay_hidden() {
    let host = JobHost::start();
    let (victim, attacker) = (host.job(), host.job());
    let secret = unique("secret").replace("ctproxy-test-", "s");
    victim.docker_ok(&["tag", BUSYBOX, &format!("{secret}:1")]);
    let id = image_id(BUSYBOX).expect("shared image");
    let inspect = attacker.docker_ok(&["image", "inspect", &id]);
    assert!(!inspect.contains(&secret) && !inspect.contains(&victim.namespace), "{inspect}");
    assert!(inspect.contains("ctproxy-test/busybox"), "{inspect}");
    let history = attacker.docker_ok(&["history", "--no-trunc", "--format", "{{json .}}", &id]);
    assert!(!history.contains(&secret) && !history.contains(&victim.namespace), "{history}");

    // The containers that use an image are counted and listed (28: `Manifests[].ImageData`) for the
    // namespace's own only.
    let vc = unique("vc").replace("ctproxy-test-", "v");
    victim.docker_ok(&["create", "--name", &vc, BUSYBOX, "true"]);
    let vc_id = docker(direct(), &["inspect", "--format", "{{.Id}}", &format!("ctp.{}.{vc}", victim.namespace)]).trim().to_owned();
    for path in ["/images/json?manifests=1", &format!("/images/{id}/json?manifests=1"), "/system/df"] {
        let (status, reply) = attacker.request("GET", &api_path(path), None);
        assert_eq!(status, 200, "{path}: {reply}");
        assert!(!reply.to_string().contains(&vc_id), "{path} shows the victim's container: {reply}");
        let images = if path == "/system/df" { reply["Images"].clone() } else { reply.clone() };
        for img in images.as_array().into_iter().flatten() {
            if img["Id"] == id {
                assert!(img["Containers"].as_i64().unwrap_or(0) <= 0, "{path} counts the victim's container: {img}");
            }
        }
    }

    // The victim's own image by ID: not found, in every filter that names an image.
    let w = unique("w").replace("ctproxy-test-", "w");
    victim.docker_ok(&["run", "--name", &w, BUSYBOX, "true"]);
    victim.docker_ok(&["commit", &w, "private:1"]);
    let private = image_id(&format!("{RP}/{}/docker.io/library/private:1", victim.namespace)).expect("private image");
    let short = &private.trim_start_matches("sha256:")[..12];
    let dir = tempfile::tempdir().expect("tempdir");
    let saved = dir.path().join("stolen.tar").display().to_string();
    for args in [
        vec!["image", "inspect", short],
        vec!["history", short],
        vec!["save", "-o", &saved, short],
        vec!["tag", short, "stolen:1"],
        vec!["rmi", short],
        vec!["images", "--filter", &format!("since={short}")],
    ] {
        let args: Vec<&str> = args.iter().map(|s| &**s).collect();
        assert_refused(&attacker.docker(&args), "No such image");
    }
    for image in [short, private.as_str()] {
        let name = unique("r").replace("ctproxy-test-", "r");
        let body = json!({"Image": image, "Cmd": ["true"]}).to_string();
        let (status, reply) = attacker.request("POST", &api_path(&format!("/containers/create?name={name}")), Some(&body));
        assert_eq!(status, 404, "{image}: {reply}");
        assert!(reply["message"].as_str().unwrap_or("").starts_with("No such image"), "{reply}");
        assert!(!container_exists(&format!("ctp.{}.{name}", attacker.namespace)));
    }
    let c = unique("c").replace("ctproxy-test-", "c");
    attacker.docker_ok(&["create", "--name", &c, BUSYBOX, "true"]);
    let listed = attacker.docker_ok(&["ps", "-a", "--filter", &format!("ancestor={short}"), "--format", "{{.Names}}"]);
    assert!(listed.is_empty(), "an ancestor filter on another namespace's image selected {listed}");
    assert_eq!(image_id(&format!("{RP}/{}/docker.io/library/private:1", victim.namespace)).as_deref(), Some(private.as_str()));
}

/// Endpoints where dockerd talks to a registry itself go through the registry proxy or are refused.
#[test]
fn distribution_inspect_and_search_do_not_reach_other_registries() {
    let host = JobHost::start_with("[registry_proxy]\naddress = \"127.0.0.1:0\"\n");
    let job = host.job();
    let trap = Trap::start();
    let (status, reply) = job.request("GET", &api_path(&format!("/distribution/127.0.0.1:{}/x/json", trap.port)), None);
    assert!(status >= 400, "{status} {reply}");
    let (status, reply) = job.request("GET", &api_path(&format!("/images/search?term=127.0.0.1:{}/x", trap.port)), None);
    assert_eq!(status, 403, "{reply}");
    assert!(host.audited("searching the registry"), "{}", host.log_text());
    assert_eq!(trap.hits(), 0, "dockerd reached the loopback address");
}
