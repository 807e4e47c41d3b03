//! The registry proxy against the real dockerd and a real `docker-registry` with htpasswd auth.
//!
//! The proxy runs in this test process (`RegistryProxy::start` with a `TokenStore`), so tests issue
//! tokens themselves and drive dockerd directly over its socket with
//! `X-Registry-Auth: base64url({"registrytoken": ...})`, as ctproxy's Docker side will. dockerd then
//! pushes and pulls `127.0.0.1:<rp>/<ns>/127.0.0.1__<port>/team/app:<tag>` through the proxy.

mod support;

use std::time::Duration;

use ctproxy::config::RegistryProxyConfig;
use ctproxy::docker::auth_config::{encode_header, AuthConfig};
use ctproxy::plugin::namespace::NsName;
use ctproxy::registry::{RegistryProxy, TokenStore};
use support::*;

const ALICE: (&str, &str) = ("alice", "alice-pw");
const BOB: (&str, &str) = ("bob", "bob-pw");

/// A registry with two users, and the registry proxy in front of it.
struct Fixture {
    rt: tokio::runtime::Runtime,
    rp: Option<RegistryProxy>,
    tokens: TokenStore,
    registry: Registry,
    /// `127.0.0.1:<rp port>`
    rp_host: String,
    /// `127.0.0.1__<registry port>`, the registry as a path component.
    reg_component: String,
    http: reqwest::Client,
}

/// reqwest is built without a default TLS provider (ctproxy hands it a ring-based config); the
/// test's own plain clients need one installed.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Fixture {
    fn start() -> Fixture {
        Fixture::start_with(None)
    }

    /// With the blob cache on, in `dir`.
    fn start_with(cache_dir: Option<&std::path::Path>) -> Fixture {
        require_docker();
        install_tls_provider();
        let registry = Registry::start_with_users(&[ALICE, BOB]);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let config = RegistryProxyConfig {
            address: "127.0.0.1:0".parse().expect("addr"),
            insecure: vec![registry.addr.clone()],
            allow_private: vec![],
            ca: vec![],
            cache_dir: cache_dir.map(std::path::Path::to_path_buf),
            ..RegistryProxyConfig::default()
        };
        let tokens = TokenStore::new();
        let rp = rt.block_on(RegistryProxy::start(&config, tokens.clone(), None)).expect("start registry proxy");
        let rp_host = rp.host();
        let reg_component = registry.addr.replace(':', "__");
        Fixture { rt, rp: Some(rp), tokens, registry, rp_host, reg_component, http: reqwest::Client::new() }
    }

    fn token(&self, ns: &str, creds: Option<(&str, &str)>) -> String {
        let upstream = creds.map(|(u, p)| AuthConfig { username: u.into(), password: p.into(), ..Default::default() });
        self.tokens.issue(NsName::new(ns).expect("ns"), upstream, Duration::from_secs(600))
    }

    /// `127.0.0.1:<rp>/<ns>/127.0.0.1__<reg>/<path>`
    fn mangled(&self, ns: &str, path: &str) -> String {
        format!("{}/{ns}/{}/{path}", self.rp_host, self.reg_component)
    }

    /// A request to any HTTP server from the test: (status, headers, body).
    fn get(&self, method: reqwest::Method, url: &str, auth: Auth) -> (u16, reqwest::header::HeaderMap, String) {
        self.rt.block_on(async {
            // Manifests as dockerd asks for them: Docker 28's containerd image store pushes OCI
            // manifests, which distribution answers with 404 to a client that does not accept them.
            let accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, */*";
            let mut req = self.http.request(method, url).header(reqwest::header::ACCEPT, accept);
            req = match auth {
                Auth::None => req,
                Auth::Bearer(t) => req.bearer_auth(t),
                Auth::Basic(u, p) => req.basic_auth(u, Some(p)),
            };
            let rsp = req.send().await.expect("request");
            let (status, headers) = (rsp.status().as_u16(), rsp.headers().clone());
            (status, headers, rsp.text().await.expect("body"))
        })
    }

    /// Tags of `path` in the real registry, asked with alice's credentials.
    fn upstream_tags(&self, path: &str) -> Vec<String> {
        let (status, _, body) =
            self.get(reqwest::Method::GET, &format!("http://{}/v2/{path}/tags/list", self.registry.addr), Auth::Basic(ALICE.0, ALICE.1));
        if status == 404 {
            return vec![];
        }
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["tags"].as_array().map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()).unwrap_or_default()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(rp) = self.rp.take() {
            self.rt.block_on(rp.stop(Duration::from_secs(1)));
        }
    }
}

enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

/// One request to dockerd's own socket.
fn daemon(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpReply {
    let req = http_request(method, target, headers, body, BodyFraming::Length);
    http_exchange(direct_socket(), &req, 1, Duration::from_secs(180)).pop().expect("no response from dockerd")
}

fn registry_auth(token: &str) -> String {
    let h = encode_header(&AuthConfig { registrytoken: token.into(), ..Default::default() });
    h.to_str().expect("ascii").to_owned()
}

/// The error of a progress stream (push/pull), or the digest a push reported: in its `aux` message
/// (graph drivers), or only in its last status, `TAG: digest: sha256:... size: N` (the containerd
/// image store of Docker 28 sends no `aux`).
fn progress_outcome(reply: &HttpReply) -> Result<Option<String>, String> {
    if reply.status != 200 {
        return Err(format!("HTTP {}: {}", reply.status, reply.text()));
    }
    let mut digest = None;
    for line in reply.text().lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(e) = v.get("errorDetail").or_else(|| v.get("error")) {
            return Err(e.to_string());
        }
        if let Some(d) = v.pointer("/aux/Digest").and_then(|d| d.as_str()) {
            digest = Some(d.to_owned());
        } else if let Some(d) = v.get("status").and_then(|s| s.as_str()).and_then(|s| s.split(": digest: ").nth(1)) {
            digest = digest.or_else(|| d.split(' ').next().map(str::to_owned));
        }
    }
    Ok(digest)
}

fn push(name: &str, tag: &str, token: &str) -> Result<Option<String>, String> {
    let auth = registry_auth(token);
    progress_outcome(&daemon("POST", &format!("/images/{name}/push?tag={tag}"), &[("X-Registry-Auth", &auth)], b""))
}

fn pull(name: &str, tag: &str, token: &str) -> Result<(), String> {
    let auth = registry_auth(token);
    progress_outcome(&daemon("POST", &format!("/images/create?fromImage={name}&tag={tag}"), &[("X-Registry-Auth", &auth)], b"")).map(|_| ())
}

fn tag_image(source: &str, repo: &str, tag: &str) {
    let r = daemon("POST", &format!("/images/{source}/tag?repo={repo}&tag={tag}"), &[], b"");
    assert_eq!(r.status, 201, "tag {source} as {repo}:{tag}: {}", r.text());
}

fn inspect(name: &str) -> Option<serde_json::Value> {
    let r = daemon("GET", &format!("/images/{name}/json"), &[], b"");
    (r.status == 200).then(|| serde_json::from_slice(&r.body).expect("inspect json"))
}

fn untag(name: &str) {
    let r = daemon("DELETE", &format!("/images/{name}?noprune=0"), &[], b"");
    assert!(r.status == 200 || r.status == 404, "rmi {name}: {} {}", r.status, r.text());
}

/// An image of busybox plus a layer holding `data` at /blob.bin, committed as `repo:tag`.
fn image_with_layer(repo: &str, tag: &str, data: &[u8]) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("blob.bin"), data).expect("write");
    let mut tar = std::process::Command::new("tar");
    tar.args(["-C", dir.path().to_str().expect("utf-8"), "-cf", "-", "blob.bin"]);
    let archive = tar.output().expect("tar").stdout;
    let create = daemon(
        "POST",
        "/containers/create",
        &[("Content-Type", "application/json")],
        format!(r#"{{"Image":"{BUSYBOX}","Cmd":["true"]}}"#).as_bytes(),
    );
    assert_eq!(create.status, 201, "{}", create.text());
    let id = serde_json::from_slice::<serde_json::Value>(&create.body).expect("json")["Id"].as_str().expect("id").to_owned();
    let put = daemon("PUT", &format!("/containers/{id}/archive?path=/"), &[("Content-Type", "application/x-tar")], &archive);
    assert_eq!(put.status, 200, "{}", put.text());
    let commit = daemon("POST", &format!("/commit?container={id}&repo={repo}&tag={tag}"), &[], b"");
    assert_eq!(commit.status, 201, "{}", commit.text());
    let _ = daemon("DELETE", &format!("/containers/{id}?force=1"), &[], b"");
}

fn layers(image: &serde_json::Value) -> Vec<String> {
    image["RootFS"]["Layers"].as_array().expect("layers").iter().map(|l| l.as_str().expect("layer").to_owned()).collect()
}

/// Unique repository path in the registry (tests share nothing, but names stay readable).
fn repo_path(what: &str) -> String {
    format!("team/{}", unique(what))
}

#[test]
fn push_and_pull_through_the_proxy_with_namespaces_apart() {
    let f = Fixture::start();
    let mut cleanup = Cleanup::new();
    let path = repo_path("app");
    let ns1_name = f.mangled("ns1", &path);
    let ns2_name = f.mangled("ns2", &path);
    for n in [&ns1_name, &ns2_name] {
        cleanup.image(&format!("{n}:1"));
    }
    let ns1 = f.token("ns1", Some(ALICE));

    // A busybox plus a random 8000-byte layer, pushed as ns1's image.
    let data = random_bytes(8000);
    image_with_layer(&ns1_name, "1", &data);
    let local = inspect(&format!("{ns1_name}:1")).expect("committed image");
    let pushed = push(&ns1_name, "1", &ns1).expect("push through the proxy").expect("push digest");
    assert_eq!(f.upstream_tags(&path), ["1"], "the image must land upstream as {path}:1");
    // The plain test image, tagged with a namespace name, pushes as well (layers the registry lacks).
    let bb_path = format!("{path}-bb");
    let bb_name = f.mangled("ns1", &bb_path);
    cleanup.image(&format!("{bb_name}:1"));
    tag_image(BUSYBOX, &bb_name, "1");
    push(&bb_name, "1", &ns1).expect("push busybox through the proxy");
    assert_eq!(f.upstream_tags(&bb_path), ["1"]);

    // Another namespace's token can neither push to nor pull from ns1's repositories.
    let ns2_alice = f.token("ns2", Some(ALICE));
    let e = push(&ns1_name, "1", &ns2_alice).expect_err("ns2 token pushing to ns1");
    assert!(e.to_lowercase().contains("unauthorized") || e.contains("authentication"), "{e}");

    // Pulled back after the local tag is gone: same layers, same manifest digest.
    untag(&format!("{ns1_name}:1"));
    assert!(inspect(&format!("{ns1_name}:1")).is_none());
    let e = pull(&ns1_name, "1", &ns2_alice).expect_err("ns2 token pulling ns1's path");
    assert!(e.to_lowercase().contains("unauthorized") || e.contains("authentication"), "{e}");
    pull(&ns1_name, "1", &ns1).expect("pull through the proxy");
    let back = inspect(&format!("{ns1_name}:1")).expect("pulled image");
    assert_eq!(layers(&back), layers(&local), "layers must round-trip");
    assert_eq!(back["Id"], local["Id"]);
    let digests: Vec<&str> = back["RepoDigests"].as_array().expect("digests").iter().filter_map(|d| d.as_str()).collect();
    assert!(digests.contains(&format!("{ns1_name}@{pushed}").as_str()), "{digests:?} vs {pushed}");

    // No or wrong upstream credentials: the pull fails.
    for token in [f.token("ns2", None), f.token("ns2", Some((BOB.0, "wrong")))] {
        let e = pull(&ns2_name, "1", &token).expect_err("pull without valid upstream credentials");
        assert!(e.to_lowercase().contains("unauthorized") || e.contains("denied") || e.contains("authentication"), "{e}");
    }
    assert!(inspect(&format!("{ns2_name}:1")).is_none());

    // ns2 with its own good credentials pulls the same upstream image under its own name.
    let ns2 = f.token("ns2", Some(BOB));
    pull(&ns2_name, "1", &ns2).expect("ns2 pull with its own credentials");
    let ns2_image = inspect(&format!("{ns2_name}:1")).expect("ns2 image");
    assert_eq!(ns2_image["Id"], local["Id"]);

    // Tags listed through the proxy carry the mangled name.
    let (status, _, body) =
        f.get(reqwest::Method::GET, &format!("http://{}/v2/ns2/{}/{path}/tags/list", f.rp_host, f.reg_component), Auth::Bearer(&ns2));
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["name"], format!("ns2/{}/{path}", f.reg_component));
    assert_eq!(v["tags"], serde_json::json!(["1"]));

    // Cross-repository mounts: within ns1 honoured (201), from ns1 into ns2 dropped (202, upload).
    let (status, _, manifest) =
        f.get(reqwest::Method::GET, &format!("http://{}/v2/{path}/manifests/1", f.registry.addr), Auth::Basic(ALICE.0, ALICE.1));
    assert_eq!(status, 200);
    let m: serde_json::Value = serde_json::from_str(&manifest).expect("manifest");
    let layer = m["layers"][0]["digest"].as_str().or_else(|| m["fsLayers"][0]["blobSum"].as_str()).expect("a layer digest").to_owned();
    // HEAD on a blob keeps the upstream's length (dockerd reads the size from it).
    let (status, headers, _) =
        f.get(reqwest::Method::HEAD, &format!("http://{}/v2/ns1/{}/{path}/blobs/{layer}", f.rp_host, f.reg_component), Auth::Bearer(&ns1));
    assert_eq!(status, 200);
    if let Some(size) = m["layers"][0]["size"].as_u64() {
        assert_eq!(headers["content-length"], size.to_string().as_str());
    }
    let mount = |ns: &str, token: &str, to: &str| {
        let url = format!(
            "http://{}/v2/{ns}/{}/{to}/blobs/uploads/?mount={layer}&from=ns1/{}/{path}",
            f.rp_host, f.reg_component, f.reg_component
        );
        let (status, headers, body) = f.get(reqwest::Method::POST, &url, Auth::Bearer(token));
        (status, headers.get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_owned(), body)
    };
    let (status, location, body) = mount("ns1", &ns1, &format!("{path}-copy"));
    assert_eq!(status, 201, "same-namespace mount: {body}");
    assert!(location.starts_with(&format!("/v2/ns1/{}/{path}-copy/blobs/", f.reg_component)), "{location}");
    let (status, location, body) = mount("ns2", &ns2, &format!("{path}-stolen"));
    assert_eq!(status, 202, "cross-namespace mount must become an upload: {body}");
    assert!(location.starts_with(&format!("/v2/ns2/{}/{path}-stolen/blobs/uploads/", f.reg_component)), "{location}");
    // The upload location works through the proxy (and only for ns2).
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("http://{}{location}", f.rp_host), Auth::Bearer(&ns2));
    assert_eq!(status, 204);
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("http://{}{location}", f.rp_host), Auth::Bearer(&ns1));
    assert_eq!(status, 401);
}

#[test]
fn refusals_in_registry_format() {
    let f = Fixture::start();
    let base = format!("http://{}", f.rp_host);
    let ns1 = f.token("ns1", Some(ALICE));
    let code =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned));

    // The version check: a challenge without a token, 200 with one.
    let (status, headers, body) = f.get(reqwest::Method::GET, &format!("{base}/v2/"), Auth::None);
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], format!("Bearer realm=\"http://{}/token\",service=\"ctproxy\"", f.rp_host));
    assert_eq!(headers["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(code(&body).as_deref(), Some("UNAUTHORIZED"));
    let (status, _, body) = f.get(reqwest::Method::GET, &format!("{base}/v2/"), Auth::Bearer(&ns1));
    assert_eq!((status, body.as_str()), (200, "{}"));
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("{base}/v2/"), Auth::Bearer("0123"));
    assert_eq!(status, 401);
    // The realm hands out nothing.
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("{base}/token?service=ctproxy&scope=x"), Auth::Basic("a", "b"));
    assert_eq!(status, 401);

    let repo = format!("{}/team/x", f.reg_component);
    // Another namespace's path, a revoked token, no token: 401 with the challenge.
    let (status, headers, body) = f.get(reqwest::Method::GET, &format!("{base}/v2/ns2/{repo}/tags/list"), Auth::Bearer(&ns1));
    assert_eq!((status, code(&body).as_deref()), (401, Some("UNAUTHORIZED")), "{body}");
    assert!(headers.contains_key("www-authenticate"));
    let revoked = f.token("ns1", Some(ALICE));
    f.tokens.revoke(&revoked);
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("{base}/v2/ns1/{repo}/tags/list"), Auth::Bearer(&revoked));
    assert_eq!(status, 401);
    let (status, _, _) = f.get(reqwest::Method::GET, &format!("{base}/v2/ns1/{repo}/tags/list"), Auth::None);
    assert_eq!(status, 401);

    // The catalog and unknown routes are not served.
    for path in ["/v2/_catalog", "/v2/ns1/x", "/v1/search", &format!("/v2/ns1/{repo}/blobs/uploads/..")] {
        let (status, _, body) = f.get(reqwest::Method::GET, &format!("{base}{path}"), Auth::Bearer(&ns1));
        assert_eq!((status, code(&body).as_deref()), (404, Some("UNSUPPORTED")), "{path}: {body}");
    }
    let (status, _, body) = f.get(reqwest::Method::DELETE, &format!("{base}/v2/ns1/{repo}/blobs/sha256:00"), Auth::Bearer(&ns1));
    assert_eq!(status, 405, "{body}");

    // SSRF: loopback registries not listed in the configuration, and the proxy itself, are refused.
    let other_port = ClosedPort::new();
    let other = other_port.port;
    let rp_component = f.rp_host.replace(':', "__");
    for domain in [format!("127.0.0.1__{other}"), rp_component, "localhost__5000".into(), "169.254.169.254".into()] {
        let (status, _, body) = f.get(reqwest::Method::GET, &format!("{base}/v2/ns1/{domain}/team/x/manifests/1"), Auth::Bearer(&ns1));
        assert_eq!((status, code(&body).as_deref()), (403, Some("DENIED")), "{domain}: {body}");
    }

    // The upstream's own errors come back with the mangled name.
    let (status, _, body) = f.get(reqwest::Method::GET, &format!("{base}/v2/ns1/{repo}/manifests/nope"), Auth::Bearer(&ns1));
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("\"team/x\""), "{body}");
}

/// The binary starts the registry proxy from `[registry_proxy]` next to its listeners.
#[test]
fn binary_serves_the_registry_proxy_from_config() {
    install_tls_provider();
    let p = Proxy::start_with_config(
        "[listener.main]\naddress = \"unix://{dir}/docker.sock\"\n[registry_proxy]\naddress = \"127.0.0.1:0\"\n",
        "docker.sock",
    );
    let port = p.logged_addr("registry proxy listening").port();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let rsp = rt.block_on(async {
        let mut last = None;
        for _ in 0..100 {
            match reqwest::get(format!("http://127.0.0.1:{port}/v2/")).await {
                Ok(r) => return r,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("registry proxy not reachable: {last:?}\n{}", p.log_text());
    });
    assert_eq!(rsp.status(), 401);
    assert!(rsp.headers()["www-authenticate"].to_str().expect("ascii").starts_with("Bearer realm="));
}

impl Fixture {
    fn blob_stats(&self) -> ctproxy::registry::BlobStats {
        self.rp.as_ref().and_then(|rp| rp.blob_stats()).expect("the blob cache is on")
    }

    /// A blob through the proxy as dockerd asks for it: (status, body, or the body's error).
    fn blob(&self, ns: &str, path: &str, digest: &str, token: &str) -> (u16, Result<Vec<u8>, String>) {
        let url = format!("http://{}/v2/{ns}/{}/{path}/blobs/{digest}", self.rp_host, self.reg_component);
        self.rt.block_on(async {
            let rsp = self.http.get(&url).bearer_auth(token).send().await.expect("request");
            let status = rsp.status().as_u16();
            (status, rsp.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("{e:?}")))
        })
    }

    /// The digests of the config and layers of `path:tag` upstream (asked with alice's credentials).
    fn upstream_blobs(&self, path: &str, tag: &str) -> Vec<String> {
        let (status, _, body) = self.get(
            reqwest::Method::GET,
            &format!("http://{}/v2/{path}/manifests/{tag}", self.registry.addr),
            Auth::Basic(ALICE.0, ALICE.1),
        );
        assert_eq!(status, 200, "{body}");
        let m: serde_json::Value = serde_json::from_str(&body).expect("manifest");
        let mut out = vec![m["config"]["digest"].as_str().expect("config digest").to_owned()];
        out.extend(m["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("digest").to_owned()));
        out
    }
}

/// Two jobs (namespaces) pull the same image: the second moves no blob bytes from the origin and,
/// its manifest GET having succeeded with its own credentials, makes no blob request upstream; a job without valid credentials for the (auth-protected)
/// repository gets nothing of the cached blobs.
#[test]
fn blob_cache_serves_a_repeat_pull_only_to_jobs_the_upstream_accepts() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let f = Fixture::start_with(Some(cache_dir.path()));
    let mut cleanup = Cleanup::new();
    let path = repo_path("cached");
    let ns1_name = f.mangled("ns1", &path);
    let ns2_name = f.mangled("ns2", &path);
    for n in [&ns1_name, &ns2_name] {
        cleanup.image(&format!("{n}:1"));
    }
    let ns1 = f.token("ns1", Some(ALICE));
    let data = random_bytes(2 << 20);
    image_with_layer(&ns1_name, "1", &data);
    push(&ns1_name, "1", &ns1).expect("push through the proxy");
    let blobs = f.upstream_blobs(&path, "1");
    let unique_layer = blobs.last().expect("a layer").clone();
    // Uploads are not cached: nothing stored yet.
    assert_eq!(f.blob_stats().entries, 0, "{:?}", f.blob_stats());

    // Job 1 pulls (dockerd no longer has the image): misses, stored after the digest check.
    untag(&format!("{ns1_name}:1"));
    pull(&ns1_name, "1", &ns1).expect("job 1 pull");
    let after1 = f.blob_stats();
    assert!(after1.misses >= 2 && after1.entries >= 2, "config and the new layer are stored: {after1:?}");
    assert!(after1.bytes_from_upstream >= data.len() as u64, "{after1:?}");
    let image = inspect(&format!("{ns1_name}:1")).expect("pulled");
    untag(&format!("{ns1_name}:1"));

    // Job 2, another namespace with its own credentials: everything from the cache.
    let ns2 = f.token("ns2", Some(BOB));
    pull(&ns2_name, "1", &ns2).expect("job 2 pull");
    let after2 = f.blob_stats();
    assert_eq!(inspect(&format!("{ns2_name}:1")).expect("pulled")["Id"], image["Id"]);
    assert_eq!(after2.misses, after1.misses, "no blob fetched upstream again: {after2:?}");
    assert_eq!(after2.bytes_from_upstream, after1.bytes_from_upstream, "{after2:?}");
    assert!(after2.hits >= 2 && after2.bytes_from_cache >= data.len() as u64, "{after2:?}");
    // Job 2's manifest GET (200 with its credentials) granted it the config and layers: no HEAD.
    assert_eq!(after2.granted - after1.granted, after2.hits - after1.hits, "every hit on job 2's manifest grant: {after2:?}");

    // A job without credentials, or with wrong ones, gets no byte of the cached layer.
    for creds in [None, Some((BOB.0, "wrong"))] {
        let token = f.token("ns3", creds);
        // Its manifest GET is refused upstream: no grant is recorded.
        let manifest = format!("http://{}/v2/ns3/{}/{path}/manifests/1", f.rp_host, f.reg_component);
        assert_eq!(f.get(reqwest::Method::GET, &manifest, Auth::Bearer(&token)).0, 401, "{creds:?}");
        let (status, body) = f.blob("ns3", &path, &unique_layer, &token);
        assert_eq!(status, 401, "{creds:?}");
        assert!(body.unwrap_or_default().len() < 1024, "no blob bytes");
    }
    let after3 = f.blob_stats();
    assert_eq!(after3.denied, after2.denied + 2, "{after3:?}");
    assert_eq!(after3.bytes_from_cache, after2.bytes_from_cache, "{after3:?}");
    // The same request with valid credentials is a hit with the right bytes.
    let ns3 = f.token("ns3", Some(ALICE));
    let (status, body) = f.blob("ns3", &path, &unique_layer, &ns3);
    assert_eq!(status, 200);
    let body = body.expect("body");
    assert_eq!(format!("sha256:{}", hex_sha256(&body)), unique_layer);
    let after4 = f.blob_stats();
    assert_eq!(after4.hits, after3.hits + 1);
    assert_eq!(after4.granted, after3.granted, "no manifest fetched by this token: checked upstream with a HEAD");
}

/// An upstream blob whose bytes are not its digest is never stored (and the transfer fails).
#[test]
fn blob_cache_never_stores_a_corrupted_upstream_blob() {
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let f = Fixture::start_with(Some(cache_dir.path()));
    let mut cleanup = Cleanup::new();
    let path = repo_path("corrupt");
    let name = f.mangled("ns1", &path);
    cleanup.image(&format!("{name}:1"));
    let ns1 = f.token("ns1", Some(ALICE));
    image_with_layer(&name, "1", &random_bytes(100_000));
    push(&name, "1", &ns1).expect("push through the proxy");
    let layer = f.upstream_blobs(&path, "1").last().expect("a layer").clone();
    // Same length, other bytes, in the registry's own storage.
    let file = f.registry.blob_file(&layer);
    let mut bytes = std::fs::read(&file).expect("registry blob file");
    for b in bytes.iter_mut().take(64) {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).expect("damage the blob");

    for round in 1..=2u64 {
        let (status, body) = f.blob("ns1", &path, &layer, &ns1);
        assert_eq!(status, 200, "the head came before the body was known to be bad");
        assert!(body.is_err(), "the transfer must fail: {:?}", body.map(|b| b.len()));
        let s = f.blob_stats();
        assert_eq!((s.misses, s.corrupt, s.entries, s.hits), (round, round, 0, 0), "{s:?}");
    }
    assert_eq!(std::fs::read_dir(cache_dir.path().join("tmp")).expect("tmp").count(), 0, "no leftover temporary file");
}

/// Jobs pulling the same private image at the same time cause one upstream GET per blob, and each
/// is served only after its own access check. Through dockerd: one daemon may merge identical
/// layer downloads itself, so the same is also asked the way several hosts' dockerds would ask:
/// concurrent blob GETs with each job's token, plus one without credentials that must get nothing.
#[test]
fn blob_cache_coalesces_concurrent_pulls_into_one_upstream_fetch() {
    const JOBS: usize = 4;
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let f = Fixture::start_with(Some(cache_dir.path()));
    let mut cleanup = Cleanup::new();
    let path = repo_path("coalesced");
    let pusher = f.mangled("ns0", &path);
    cleanup.image(&format!("{pusher}:1"));
    cleanup.image(&format!("{pusher}:2"));
    let ns0 = f.token("ns0", Some(ALICE));
    image_with_layer(&pusher, "1", &random_bytes(8 << 20));
    push(&pusher, "1", &ns0).expect("push image 1");
    image_with_layer(&pusher, "2", &random_bytes(16 << 20));
    push(&pusher, "2", &ns0).expect("push image 2");
    untag(&format!("{pusher}:1"));
    untag(&format!("{pusher}:2"));
    let blobs = f.upstream_blobs(&path, "1");
    let before: Vec<usize> = blobs.iter().map(|d| f.registry.blob_gets(&path, d)).collect();

    // JOBS jobs pull image 1 at once, each under its own namespace with its own credentials.
    let jobs: Vec<(String, String)> = (0..JOBS)
        .map(|i| {
            let ns = format!("job{i}");
            let name = f.mangled(&ns, &path);
            cleanup.image(&format!("{name}:1"));
            (name, f.token(&ns, Some(if i % 2 == 0 { ALICE } else { BOB })))
        })
        .collect();
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|(name, token)| s.spawn(move || pull(name, "1", token))).collect();
        handles.into_iter().map(|h| h.join().expect("pull thread")).collect()
    });
    for (r, (name, _)) in results.iter().zip(&jobs) {
        assert!(r.is_ok(), "{name}: {r:?}");
    }
    let ids: Vec<serde_json::Value> = jobs.iter().map(|(n, _)| inspect(&format!("{n}:1")).expect("pulled")["Id"].clone()).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The config and the new layer once each; busybox's layer, which dockerd has, at most once.
    for (i, (d, b)) in blobs.iter().zip(&before).enumerate() {
        let gets = f.registry.blob_gets(&path, d) - b;
        let must_fetch = i == 0 || i == blobs.len() - 1;
        assert!(gets == 1 || (gets == 0 && !must_fetch), "{gets} upstream GETs of {d}: {:?}", f.blob_stats());
    }

    // Image 2's new layer, asked for at once by every job's token and by one without credentials.
    let layer = f.upstream_blobs(&path, "2").last().expect("a layer").clone();
    let stats = f.blob_stats();
    let mut tokens: Vec<(String, String, bool)> =
        (0..JOBS).map(|i| (format!("job{i}"), f.token(&format!("job{i}"), Some(if i % 2 == 0 { BOB } else { ALICE })), true)).collect();
    tokens.insert(JOBS / 2, ("intruder".to_owned(), f.token("intruder", None), false));
    let answers: Vec<(bool, u16, Result<Vec<u8>, String>)> = f.rt.block_on(async {
        let asks = tokens.iter().map(|(ns, token, creds)| {
            let url = format!("http://{}/v2/{ns}/{}/{path}/blobs/{layer}", f.rp_host, f.reg_component);
            let (http, creds) = (f.http.clone(), *creds);
            let token = token.clone();
            async move {
                let rsp = http.get(&url).bearer_auth(token).send().await.expect("request");
                let status = rsp.status().as_u16();
                (creds, status, rsp.bytes().await.map(|b| b.to_vec()).map_err(|e| format!("{e:?}")))
            }
        });
        futures_util::future::join_all(asks).await
    });
    for (creds, status, body) in answers {
        if creds {
            assert_eq!(status, 200);
            assert_eq!(format!("sha256:{}", hex_sha256(&body.expect("body"))), layer);
        } else {
            assert_eq!(status, 401, "no credentials: refused");
            assert!(body.unwrap_or_default().len() < 1024, "no blob bytes");
        }
    }
    assert_eq!(f.registry.blob_gets(&path, &layer), 1, "one upstream GET of the layer: {:?}", f.registry.blob_log(&path, &layer));
    let after = f.blob_stats();
    assert_eq!(after.misses - stats.misses, 1, "{after:?}");
    assert_eq!((after.coalesced - stats.coalesced) + (after.hits - stats.hits), JOBS as u64 - 1, "{after:?}");
    assert_eq!(after.denied - stats.denied, 1, "{after:?}");
}

fn hex_sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
