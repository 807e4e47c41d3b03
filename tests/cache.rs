//! The transparent cache against local origins on loopback: what containers created through
//! ctproxy get (hosts entries, CA trust, no option from the user), and the HTTP caching rules a
//! cache shared by many tenants must keep (Vary, no-store, private, revalidation, credentials,
//! ranges, coalescing, budget, restart, truncation), checked by counting what reaches the origin.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::origin::{Origin, Resp};
use support::{docker, docker_cmd, free_port, unique, Proxy, CI_IMAGE};

const HOSTS: [&str; 2] = ["repo.test", "files.test"];

/// ctproxy with a unix listener and a `[cache]` in front of `origin`.
struct Cache {
    proxy: Proxy,
    http: u16,
    https: u16,
    metrics: u16,
    config: std::path::PathBuf,
}

fn cache_config(origin: &Origin, listen: &str, http: u16, https: u16, metrics: u16, extra: &str) -> String {
    let mut origins = String::new();
    for h in HOSTS {
        origins.push_str(&format!("\"{h}:{http}\" = \"{}\"\n\"{h}:{https}\" = \"{}\"\n", origin.http, origin.https));
    }
    format!(
        r#"
[upstream]
url = "{upstream}"

[listener.main]
address = "unix://{{dir}}/docker.sock"

[cache]
hosts = ["repo.test", "files.test"]
listen = "{listen}"
http_port = {http}
https_port = {https}
dir = "{{dir}}/cache"
metrics_listen = "127.0.0.1:{metrics}"
extra_roots = ["{ca}"]
{extra}

[cache.origins]
{origins}"#,
        ca = origin.ca_file.display(),
        upstream = support::direct()
    )
}

fn start_cache(origin: &Origin, listen: &str, extra: &str) -> Cache {
    start_cache_with(|http, https, metrics| cache_config(origin, listen, http, https, metrics, extra), "docker.sock")
}

/// ctproxy on the configuration `toml(http, https, metrics)`, once its cache listens.
fn start_cache_with(toml: impl Fn(u16, u16, u16) -> String, wait_sock: &str) -> Cache {
    // A port from free_port() can be taken by a parallel test before ctproxy binds it: try again.
    for _ in 0..3 {
        let (http, https, metrics) = (free_port(), free_port(), free_port());
        let proxy = Proxy::start_with_config(&toml(http, https, metrics), wait_sock);
        if proxy.wait_log("cache listening", Duration::from_secs(10)) {
            let config = proxy.dir().join("ctproxy.toml");
            return Cache { proxy, http, https, metrics, config };
        }
        assert!(proxy.log_text().contains("Address already in use"), "cache did not start:\n{}", proxy.log_text());
    }
    panic!("no free ports for the cache");
}

impl Cache {
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.proxy.dir().join("cache/trust/ca.pem")).expect("trust/ca.pem")
    }

    /// A client that reaches the intercepted hosts at the cache (on loopback) and trusts only
    /// the cache's CA.
    fn client(&self) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::pem::PemObject::pem_slice_iter(self.ca_pem().as_bytes()) {
            let c: rustls_pki_types::CertificateDer = c.expect("pem");
            roots.add(c).expect("root");
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut b = reqwest::Client::builder().tls_backend_preconfigured(tls).no_proxy().pool_max_idle_per_host(0);
        for h in HOSTS {
            b = b.resolve(h, lo);
        }
        b.build().expect("client")
    }

    fn http_url(&self, path: &str) -> String {
        format!("http://repo.test:{}{path}", self.http)
    }

    fn https_url(&self, path: &str) -> String {
        format!("https://repo.test:{}{path}", self.https)
    }

    /// Restarts ctproxy on the same configuration and directory (the store survives).
    fn restart(&mut self) {
        let _ = self.proxy.child.kill();
        let _ = self.proxy.child.wait();
        let log = std::fs::OpenOptions::new().append(true).open(&self.proxy.log).expect("log");
        self.proxy.child = std::process::Command::new(env!("CARGO_BIN_EXE_ctproxy"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,ctproxy=debug")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("restart ctproxy");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.metrics)).is_err() {
            assert!(std::time::Instant::now() < deadline, "restarted cache not listening:\n{}", self.proxy.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = resp.status().as_u16();
    let x = resp.headers().get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
    (status, x, body)
}

fn body_of(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn second_fetch_is_served_from_the_cache_over_http_and_https() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/pool/a_1.0_amd64.deb", Resp::ok(body_of(100_000, 1)));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        for (url, n) in [(cache.http_url("/pool/a_1.0_amd64.deb"), 1), (cache.https_url("/pool/a_1.0_amd64.deb"), 2)] {
            let (s, x, b) = get(&c, &url, &[]).await;
            assert_eq!((s, x.as_str()), (200, "MISS"), "{url}");
            assert_eq!(b, body_of(100_000, 1));
            settle(&cache).await;
            let (s, x, b) = get(&c, &url, &[]).await;
            assert_eq!((s, x.as_str()), (200, "HIT"), "{url}");
            assert_eq!(b, body_of(100_000, 1));
            // HTTP and HTTPS are different keys: one origin request each.
            assert_eq!(origin.hits("/pool/a_1.0_amd64.deb"), n);
        }
        let m = reqwest::get(format!("http://127.0.0.1:{}/metrics", cache.metrics)).await.expect("metrics").text().await.expect("text");
        for line in [
            "ctproxy_cache_requests_total{scheme=\"http\",outcome=\"hit\"} 1",
            "ctproxy_cache_requests_total{scheme=\"https\",outcome=\"hit\"} 1",
            "ctproxy_cache_requests_total{scheme=\"https\",outcome=\"miss\"} 1",
            "ctproxy_cache_bytes_total{scheme=\"https\",source=\"cache\"} 100000",
        ] {
            assert!(m.contains(line), "{line} not in\n{m}");
        }
    });
}

#[test]
fn vary_no_store_and_private() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/simple/pkg/", Resp::ok("index for ").vary_on("accept").cache_control("max-age=300"));
    origin.route("/nostore.deb", Resp::ok("x").cache_control("no-store"));
    origin.route("/private.deb", Resp::ok("x").cache_control("private, max-age=300"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.https_url("/simple/pkg/");
        for _ in 0..2 {
            for accept in ["text/html", "application/vnd.pypi.simple.v1+json"] {
                let (s, _, b) = get(&c, &url, &[("accept", accept)]).await;
                settle(&cache).await;
                assert_eq!(s, 200);
                assert_eq!(String::from_utf8_lossy(&b), format!("index for {accept}"), "a variant served for the wrong Accept");
            }
        }
        assert_eq!(origin.hits("/simple/pkg/"), 2, "one origin request per variant");
        for p in ["/nostore.deb", "/private.deb"] {
            get(&c, &cache.http_url(p), &[]).await;
            let (_, x, _) = get(&c, &cache.http_url(p), &[]).await;
            assert_ne!(x, "HIT");
            assert_eq!(origin.hits(p), 2, "{p} must not be cached");
        }
    });
}

#[test]
fn stale_entries_are_revalidated_with_304() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/dists/stable/InRelease", Resp::ok("release v1").etag("\"v1\"").cache_control("no-cache"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.http_url("/dists/stable/InRelease");
        assert_eq!(get(&c, &url, &[]).await.2, b"release v1");
        settle(&cache).await;
        let (s, x, b) = get(&c, &url, &[]).await;
        assert_eq!((s, x.as_str(), b.as_slice()), (200, "REVALIDATED", &b"release v1"[..]));
        let seen = origin.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].header("if-none-match"), Some("\"v1\""), "a conditional request");
        // Changed upstream: the new body replaces the old.
        origin.route("/dists/stable/InRelease", Resp::ok("release v2").etag("\"v2\"").cache_control("no-cache"));
        assert_eq!(get(&c, &url, &[]).await.2, b"release v2");
        settle(&cache).await;
        assert_eq!(get(&c, &url, &[]).await.2, b"release v2");
        // The client's own conditional request is answered by the cache.
        let (s, _, _) = get(&c, &url, &[("if-none-match", "\"v2\"")]).await;
        assert_eq!(s, 304);
    });
}

#[test]
fn a_response_fetched_with_credentials_is_not_served_to_someone_the_origin_refuses() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/private/pkg-1.0.tgz", Resp::ok("secret bytes").etag("\"s1\"").require_auth("Bearer alice"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.https_url("/private/pkg-1.0.tgz");
        let (s, _, b) = get(&c, &url, &[("authorization", "Bearer alice")]).await;
        assert_eq!((s, b.as_slice()), (200, &b"secret bytes"[..]));
        settle(&cache).await;
        let (s, _, b) = get(&c, &url, &[("authorization", "Bearer bob")]).await;
        assert_eq!(s, 401, "bob is refused by the origin, so by the cache");
        assert!(!String::from_utf8_lossy(&b).contains("secret"));
        let (s, _, b) = get(&c, &url, &[]).await;
        assert_eq!(s, 401, "no credentials, no secret");
        assert!(!String::from_utf8_lossy(&b).contains("secret"));
        // Alice again: checked upstream with her credentials (304), body from the cache.
        let (s, x, b) = get(&c, &url, &[("authorization", "Bearer alice")]).await;
        assert_eq!((s, x.as_str(), b.as_slice()), (200, "REVALIDATED", &b"secret bytes"[..]));
        let seen = origin.requests();
        assert_eq!(seen.last().and_then(|r| r.header("authorization")), Some("Bearer alice"));
    });
}

#[test]
fn ranges_are_served_from_cached_objects() {
    let origin = Origin::start_blocking(&HOSTS);
    let body = body_of(50_000, 7);
    origin.route("/blob.tar", Resp::ok(body.clone()).no_ranges().cache_control("max-age=3600"));
    origin.route("/cold.tar", Resp::ok(body.clone()).no_ranges().cache_control("max-age=3600"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.http_url("/blob.tar");
        get(&c, &url, &[]).await;
        settle(&cache).await;
        let resp = c.get(&url).header("range", "bytes=100-199").send().await.expect("range");
        assert_eq!(resp.status().as_u16(), 206);
        assert_eq!(resp.headers().get("content-range").and_then(|v| v.to_str().ok()), Some("bytes 100-199/50000"));
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &body[100..200]);
        let resp = c.get(&url).header("range", "bytes=-10").send().await.expect("suffix");
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &body[49_990..]);
        let resp = c.get(&url).header("range", "bytes=60000-").send().await.expect("416");
        assert_eq!(resp.status().as_u16(), 416);
        assert_eq!(origin.hits("/blob.tar"), 1);
        // A range on a cold URL: the whole object is fetched once, the range served from it.
        let resp = c.get(cache.https_url("/cold.tar")).header("range", "bytes=49000-").send().await.expect("cold range");
        assert_eq!(resp.status().as_u16(), 206);
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &body[49_000..]);
        settle(&cache).await;
        assert_eq!(get(&c, &cache.https_url("/cold.tar"), &[]).await.2, body);
        assert_eq!(origin.hits("/cold.tar"), 1);
        assert!(origin.requests().iter().all(|r| r.header("range").is_none()), "fills fetch whole objects");
    });
}

#[test]
fn fifty_concurrent_clients_on_a_cold_url_make_one_origin_request() {
    let origin = Origin::start_blocking(&HOSTS);
    let body = body_of(2 << 20, 3);
    origin.route("/pool/big_2.0_amd64.deb", Resp::ok(body.clone()).chunk_delay(64 * 1024, Duration::from_millis(10)));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.https_url("/pool/big_2.0_amd64.deb");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move { get(&c, &url, &[]).await })
            })
            .collect();
        for t in tasks {
            let (s, _, b) = t.await.expect("task");
            assert_eq!(s, 200);
            assert!(b == body, "identical bytes for every client");
        }
        assert_eq!(origin.hits("/pool/big_2.0_amd64.deb"), 1, "exactly one origin request");
    });
}

#[test]
fn truncated_bodies_are_not_cached_and_the_budget_is_kept() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/cut.deb", Resp::ok(body_of(100_000, 9)).truncate_at(30_000));
    for i in 0..6 {
        origin.route(&format!("/pool/o/obj{i}.deb"), Resp::ok(body_of(300_000, i)));
    }
    let cache = start_cache(&origin, "127.0.0.1", "max_bytes = \"1m\"");
    let c = cache.client();
    rt().block_on(async {
        let url = cache.http_url("/cut.deb");
        for _ in 0..2 {
            let r = c.get(&url).send().await.expect("headers");
            assert!(r.bytes().await.is_err(), "a truncated body reaches the client as an error");
        }
        assert_eq!(origin.hits("/cut.deb"), 2, "never cached");
        for i in 0..6u8 {
            assert_eq!(get(&c, &cache.http_url(&format!("/pool/o/obj{i}.deb")), &[]).await.2, body_of(300_000, i));
            settle(&cache).await;
        }
        let stored = stored_bytes(&cache).await;
        assert!(stored <= 1 << 20, "budget kept: {stored}");
        // The most recent objects are there, the oldest went.
        assert_eq!(get(&c, &cache.http_url("/pool/o/obj5.deb"), &[]).await.1, "HIT");
        assert_eq!(get(&c, &cache.http_url("/pool/o/obj0.deb"), &[]).await.1, "MISS");
    });
}

/// An origin that sends a head and then closes before the first body byte: the cache cannot
/// answer 200 with nothing, so the client gets a 502 that says why (never an empty reply, which
/// hyper gives when a body fails before its head is written), over HTTP and HTTPS.
#[test]
fn a_body_that_fails_before_its_first_byte_is_a_502() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/empty-cut.deb", Resp::ok(body_of(100_000, 4)).truncate_at(0));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        for url in [cache.http_url("/empty-cut.deb"), cache.https_url("/empty-cut.deb")] {
            let r = c.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: a head is expected: {e:?}"));
            assert_eq!(r.status(), 502, "{url}");
            let text = r.text().await.expect("the 502's body");
            assert!(text.contains("failed before its first byte"), "{text}");
        }
        assert_eq!(origin.hits("/empty-cut.deb"), 2, "never cached");
    });
}

/// Waits until no fetch is in flight: a body is published just after its last byte is sent.
async fn settle(cache: &Cache) {
    for _ in 0..500 {
        if metric(cache, "ctproxy_cache_fills_in_flight").await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("fetches still in flight");
}

async fn metric(cache: &Cache, name: &str) -> u64 {
    let m = reqwest::get(format!("http://127.0.0.1:{}/metrics", cache.metrics)).await.expect("metrics").text().await.expect("text");
    let prefix = format!("{name} ");
    m.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok()).expect("metric")
}

async fn stored_bytes(cache: &Cache) -> u64 {
    let m = reqwest::get(format!("http://127.0.0.1:{}/metrics", cache.metrics)).await.expect("metrics").text().await.expect("text");
    m.lines().find_map(|l| l.strip_prefix("ctproxy_cache_stored_bytes ")).and_then(|v| v.parse().ok()).expect("stored bytes")
}

#[test]
fn a_restart_keeps_a_warm_cache_and_a_damaged_entry_is_refetched() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/pool/w/warm.deb", Resp::ok(body_of(200_000, 4)));
    origin.route("/pool/d/damaged.deb", Resp::ok(body_of(200_000, 5)));
    let mut cache = start_cache(&origin, "127.0.0.1", "");
    let r = rt();
    r.block_on(async {
        let c = cache.client();
        get(&c, &cache.http_url("/pool/w/warm.deb"), &[]).await;
        get(&c, &cache.http_url("/pool/d/damaged.deb"), &[]).await;
        settle(&cache).await;
    });
    // Flip a byte of one stored body, keeping its length.
    let objects = cache.proxy.dir().join("cache/store/objects");
    let mut damaged = false;
    for e in std::fs::read_dir(&objects).expect("objects").flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "body") {
            let mut b = std::fs::read(&p).expect("body");
            if b == body_of(200_000, 5) {
                b[1000] ^= 0xff;
                std::fs::write(&p, b).expect("write");
                damaged = true;
            }
        }
    }
    assert!(damaged, "stored body found");
    cache.restart();
    r.block_on(async {
        let c = cache.client();
        let (_, x, b) = get(&c, &cache.http_url("/pool/w/warm.deb"), &[]).await;
        assert_eq!((x.as_str(), b == body_of(200_000, 4)), ("HIT", true), "warm after restart");
        let (_, x, b) = get(&c, &cache.http_url("/pool/d/damaged.deb"), &[]).await;
        assert_eq!(x, "MISS", "damage detected");
        assert!(b == body_of(200_000, 5), "never served damaged bytes");
    });
    assert_eq!(origin.hits("/pool/w/warm.deb"), 1);
    assert_eq!(origin.hits("/pool/d/damaged.deb"), 2);
}

#[test]
fn hosts_not_intercepted_and_host_sni_mismatches_are_refused() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/x", Resp::ok("x"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        let r = c.get(format!("http://127.0.0.1:{}/x", cache.http)).header("host", "example.org").send().await.expect("send");
        assert_eq!(r.status().as_u16(), 403);
        let r = c.get(cache.https_url("/x")).header("host", "files.test").send().await.expect("send");
        assert_eq!(r.status().as_u16(), 421, "Host must equal the SNI");
        // Other methods go to the origin with their bodies, uncached.
        let r = c.post(cache.https_url("/upload")).body("payload").send().await.expect("post");
        assert_eq!(r.headers().get("x-cache").and_then(|v| v.to_str().ok()), Some("BYPASS"));
        let seen = origin.requests();
        assert_eq!(seen.last().map(|s| (s.method.as_str(), s.body.as_ref())), Some(("POST", &b"payload"[..])));
    });
    // A TLS server name not on the list gets no certificate.
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{}", cache.https), "-servername", "example.org"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("BEGIN CERTIFICATE"), "no certificate for example.org");
    assert!(cache.proxy.wait_log("cache refused a request", Duration::from_secs(5)), "refusals are logged:\n{}", cache.proxy.log_text());
    assert_eq!(origin.hits("/x"), 0);
    assert_eq!(origin.hits("/upload"), 1);
}

/// Runs a shell script in a fresh container created through the cache's ctproxy.
fn in_container(cache: &Cache, script: &str) -> String {
    docker(&cache.proxy.docker_host(), &["run", "--rm", CI_IMAGE, "sh", "-c", script])
}

#[test]
fn a_container_fetches_through_the_cache_over_http_and_https_and_trusts_it_without_options() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/pool/main/h/hello.deb", Resp::ok("plain bytes\n"));
    origin.route("/packages/hello.whl", Resp::ok("tls bytes\n").cache_control("max-age=3600"));
    let cache = start_cache(&origin, "auto", "");
    let (h, s) = (cache.http, cache.https);
    let script = format!(
        "set -e
         wget -qO- http://repo.test:{h}/pool/main/h/hello.deb
         wget -qO- http://repo.test:{h}/pool/main/h/hello.deb
         curl -fsS https://files.test:{s}/packages/hello.whl
         curl -fsS https://files.test:{s}/packages/hello.whl
         wget -qO- https://files.test:{s}/packages/hello.whl
         python3 -c 'import requests; print(requests.get(\"https://files.test:{s}/packages/hello.whl\").text, end=\"\")'
         env | grep -c '^SSL_CERT_FILE=/run/ctproxy-ca/bundle.pem$'
         ls /usr/local/share/ca-certificates/ctproxy/"
    );
    let out = in_container(&cache, &script);
    assert_eq!(
        out,
        "plain bytes\nplain bytes\ntls bytes\ntls bytes\ntls bytes\ntls bytes\n1\nbundle.pem\nca.pem\nctproxy-ca.crt\n",
        "log:\n{}",
        cache.proxy.log_text()
    );
    assert_eq!(origin.hits("/pool/main/h/hello.deb"), 1);
    assert_eq!(origin.hits("/packages/hello.whl"), 1, "curl, wget and requests share the HTTPS entry");
    // Variables the user set are left alone, in the request or in the image.
    let out = docker(
        &cache.proxy.docker_host(),
        &["run", "--rm", "-e", "SSL_CERT_FILE=/mine.pem", CI_IMAGE, "sh", "-c", "echo $SSL_CERT_FILE $CURL_CA_BUNDLE"],
    );
    assert_eq!(out, "/mine.pem /run/ctproxy-ca/bundle.pem\n");
    let base = unique("envimg");
    let image = format!("{base}:latest");
    docker(support::direct(), &["create", "--name", &base, CI_IMAGE, "true"]);
    docker(support::direct(), &["commit", "--change", "ENV NODE_EXTRA_CA_CERTS=/img.pem", &base, &image]);
    let out =
        docker_cmd("docker", &cache.proxy.docker_host(), &["run", "--rm", &image, "sh", "-c", "echo $NODE_EXTRA_CA_CERTS $SSL_CERT_FILE"])
            .output();
    let _ = docker_cmd("docker", support::direct(), &["rm", "-f", &base]).output();
    let _ = docker_cmd("docker", support::direct(), &["rmi", &image]).output();
    assert_eq!(String::from_utf8_lossy(&out.expect("run").stdout), "/img.pem /run/ctproxy-ca/bundle.pem\n");
    // A client mount where the CA directory would go wins.
    let out = docker(
        &cache.proxy.docker_host(),
        &["run", "--rm", "--tmpfs", "/run/ctproxy-ca", CI_IMAGE, "sh", "-c", "ls /run/ctproxy-ca | wc -l"],
    );
    assert_eq!(out.trim(), "0");
}

#[test]
fn a_container_created_before_a_ca_rotation_keeps_trusting_the_cache() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/a", Resp::ok("before\n"));
    origin.route("/b", Resp::ok("after\n"));
    let cache = start_cache(&origin, "auto", "rotate_every = \"3s\"");
    let host = cache.proxy.docker_host();
    let name = unique("rot");
    // Removed at the end; its life must not end on a timer while a loaded machine runs the steps
    // (a `sleep 60` once ran out just as the last exec ran).
    docker(&host, &["run", "-d", "--name", &name, CI_IMAGE, "sleep", "3600"]);
    let s = cache.https;
    // The trust the container had at creation, frozen: it must be enough after the rotation.
    let first = docker(
        &host,
        &["exec", &name, "sh", "-c", &format!("cp /run/ctproxy-ca/bundle.pem /tmp/at-creation.pem && curl -fsS https://repo.test:{s}/a")],
    );
    assert_eq!(first, "before\n");
    let rotated = cache.proxy.wait_log("cache CA rotated", Duration::from_secs(10));
    let after = docker_cmd(
        "docker",
        &host,
        &["exec", &name, "curl", "-fsS", "--cacert", "/tmp/at-creation.pem", &format!("https://repo.test:{s}/b")],
    )
    .output();
    let _ = docker_cmd("docker", &host, &["rm", "-f", &name]).output();
    assert!(rotated, "no rotation seen:\n{}", cache.proxy.log_text());
    let after = after.expect("docker exec");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "after\n", "{}: {}", after.status, String::from_utf8_lossy(&after.stderr));
}

#[test]
fn containers_are_created_without_the_cache_when_it_cannot_start() {
    let origin = Origin::start_blocking(&HOSTS);
    // The cache's port is taken: ctproxy serves anyway, containers get no redirection.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let toml = cache_config(&origin, "127.0.0.1", port, free_port(), free_port(), "");
    let proxy = Proxy::start_with_config(&toml, "docker.sock");
    assert!(proxy.wait_log("cache not started", Duration::from_secs(10)), "{}", proxy.log_text());
    let out =
        docker(&proxy.docker_host(), &["run", "--rm", CI_IMAGE, "sh", "-c", "grep -c repo.test /etc/hosts; echo ${SSL_CERT_FILE:-unset}"]);
    assert_eq!(out, "0\nunset\n");
}

#[test]
fn a_job_container_and_what_the_job_starts_are_pointed_at_the_cache() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/pool/j/job.deb", Resp::ok("from the cache\n"));
    let prefix = format!("c{}", std::process::id());
    let jobs = format!(
        r#"
[policy.conservative]
kind = "conservative"
[namespaces]
shared_images = ["ctproxy-test/*"]
[jobs]
control_socket = "{{dir}}/control.sock"
dir = "{{dir}}/jobs"
policies = ["conservative"]
namespace_prefix = "{prefix}"
"#
    );
    let cache = start_cache_with(
        |http, https, metrics| format!("{jobs}{}", cache_config(&origin, "auto", http, https, metrics, "")),
        "control.sock",
    );
    let (proxy, http, https) = (&cache.proxy, cache.http, cache.https);
    let id = unique("cj").replace("ctproxy-test-", "");
    let control = |method: &str| {
        let req = format!("{method} /jobs/{id} HTTP/1.1\r\nHost: c\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        String::from_utf8_lossy(&support::raw_request(&proxy.dir().join("control.sock"), req.as_bytes(), Duration::from_secs(60)))
            .into_owned()
    };
    assert!(control("PUT").starts_with("HTTP/1.1 200"), "job created");
    let job_host = format!("unix://{}", proxy.dir().join(format!("jobs/{id}/sock/docker.sock")).display());
    // A container created through the job's socket, under the conservative policy and the job's
    // namespace, reaches the intercepted host through the cache; an IPv6 lookup gets the cache's
    // address too (IPv4-mapped), never the origin's.
    let script = format!(
        "grep -c 'repo.test$' /etc/hosts; curl -fsS http://repo.test:{http}/pool/j/job.deb; curl -fsS https://repo.test:{https}/pool/j/job.deb
         python3 -c 'import socket; print(socket.getaddrinfo(\"repo.test\", 443, socket.AF_INET6)[0][4][0])'"
    );
    let out = docker_cmd("docker", &job_host, &["run", "--rm", CI_IMAGE, "sh", "-c", &script]).output().expect("docker run");
    let removed = control("DELETE");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (fetched, v6) = stdout.rsplit_once("from the cache\n").unwrap_or_default();
    assert_eq!(fetched, "2\nfrom the cache\n", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(v6.starts_with("::ffff:") && v6.trim().parse::<std::net::Ipv6Addr>().is_ok(), "IPv6 lookup: {v6:?}");
    assert!(removed.starts_with("HTTP/1.1 200") || removed.starts_with("HTTP/1.1 204"), "{removed}");
    assert_eq!(origin.hits("/pool/j/job.deb"), 2, "one fetch per scheme");
}

#[test]
fn an_origin_whose_certificate_does_not_verify_is_never_cached() {
    let origin = Origin::start_blocking(&HOSTS);
    let other = Origin::start_blocking(&HOSTS);
    origin.route("/pool/m/mitm.deb", Resp::ok("bytes from an unverified origin"));
    // The cache trusts another CA than the one that signed the origin's certificate.
    let cache = start_cache_with(
        |http, https, metrics| {
            cache_config(&origin, "127.0.0.1", http, https, metrics, "")
                .replace(&origin.ca_file.display().to_string(), &other.ca_file.display().to_string())
        },
        "docker.sock",
    );
    let c = cache.client();
    rt().block_on(async {
        let (s, _, b) = get(&c, &cache.https_url("/pool/m/mitm.deb"), &[]).await;
        assert_eq!(s, 502);
        assert!(!String::from_utf8_lossy(&b).contains("unverified origin"));
    });
    assert_eq!(origin.hits("/pool/m/mitm.deb"), 0, "the TLS handshake with the origin failed before any request");
}

#[test]
fn a_blob_is_stored_only_when_its_body_matches_the_digest_in_its_url() {
    let hex = ring_hex;
    let good = body_of(40_000, 11);
    let bad = body_of(40_000, 12);
    let good_path = format!("/v2/library/app/blobs/sha256:{}", hex(&good));
    // The URL names the digest of `good`, the origin sends other bytes.
    let bad_path = format!("/v2/library/other/blobs/sha256:{}", hex(&good));
    let origin = Origin::start_blocking(&HOSTS);
    origin.route(&good_path, Resp::ok(good.clone()));
    origin.route(&bad_path, Resp::ok(bad));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    rt().block_on(async {
        for _ in 0..2 {
            assert_eq!(get(&c, &cache.https_url(&good_path), &[]).await.2, good);
            settle(&cache).await;
            // The requester gets what the origin sent (as it would without the cache; registry
            // clients check digests themselves), but it is not kept for anyone.
            let (_, x, _) = get(&c, &cache.https_url(&bad_path), &[]).await;
            assert_ne!(x, "HIT");
            settle(&cache).await;
        }
    });
    assert_eq!(origin.hits(&good_path), 1, "verified blob stored");
    assert_eq!(origin.hits(&bad_path), 2, "mismatching blob never stored");
}

fn ring_hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[test]
fn a_reload_applies_a_new_host_list() {
    let origin = Origin::start_blocking(&HOSTS);
    origin.route("/pool/n/new.deb", Resp::ok("new host"));
    let cache = start_cache(&origin, "127.0.0.1", "");
    let c = cache.client();
    let url = format!("http://127.0.0.1:{}/pool/n/new.deb", cache.http);
    rt().block_on(async {
        let r = c.get(&url).header("host", "new.test").send().await.expect("send");
        assert_eq!(r.status().as_u16(), 403, "not intercepted yet");
    });
    let text = std::fs::read_to_string(&cache.config).expect("config");
    let text = text.replace(r#"hosts = ["repo.test", "files.test"]"#, r#"hosts = ["repo.test", "files.test", "new.test"]"#)
        + &format!("\"new.test:{}\" = \"{}\"\n", cache.http, origin.http);
    std::fs::write(&cache.config, text).expect("write config");
    cache.proxy.signal("HUP");
    assert!(cache.proxy.wait_log("cache hosts reloaded", Duration::from_secs(10)), "{}", cache.proxy.log_text());
    rt().block_on(async {
        let r = c.get(&url).header("host", "new.test").send().await.expect("send");
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.expect("body"), "new host");
    });
}

/// What apt and pip send on index requests (and old clients' `Pragma`).
const ASK_FRESH: [(&str, &str); 2] = [("cache-control", "max-age=0"), ("pragma", "no-cache")];

#[test]
fn clients_asking_for_fresh_copies_get_immutable_urls_from_the_cache_and_indexes_revalidated_once() {
    let by_hash_body = body_of(30_000, 21);
    let by_hash = format!("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{}", ring_hex(&by_hash_body));
    let immutable = [by_hash.as_str(), "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb", "/npm/left-pad/-/left-pad-1.3.0.tgz"];
    let index = "/debian/dists/bookworm/InRelease";
    let origin = Origin::start_blocking(&HOSTS);
    origin.route(&by_hash, Resp::ok(by_hash_body.clone()).etag("\"h\""));
    origin.route(immutable[1], Resp::ok(body_of(50_000, 22)).etag("\"d\""));
    origin.route(immutable[2], Resp::ok(body_of(5_000, 23)).cache_control("max-age=0"));
    // The origin answers slowly, so that concurrent revalidations would overlap.
    origin.route(index, Resp::ok("release v1").etag("\"r1\"").cache_control("max-age=300").delay_first_byte(Duration::from_millis(300)));
    let cache = start_cache(&origin, "127.0.0.1", "revalidate_window = \"2s\"");
    let c = cache.client();
    rt().block_on(async {
        for path in immutable.iter().chain([&index]) {
            assert_eq!(get(&c, &cache.http_url(path), &ASK_FRESH).await.1, "MISS", "{path}");
        }
        settle(&cache).await;
        // Content-addressed and versioned URLs: never asked again, whatever the client says.
        for _ in 0..3 {
            for path in immutable {
                let (s, x, _) = get(&c, &cache.http_url(path), &ASK_FRESH).await;
                assert_eq!((s, x.as_str()), (200, "HIT"), "{path}");
                assert_eq!(origin.hits(path), 1, "{path}");
            }
        }
        // An index asked fresh within the window: the fetch a moment ago answers it.
        let (s, x, b) = get(&c, &cache.http_url(index), &ASK_FRESH).await;
        assert_eq!((s, x.as_str(), b.as_slice()), (200, "HIT", &b"release v1"[..]));
        assert_eq!(origin.hits(index), 1);
        // Past the window: revalidated, and twenty concurrent requests make one conditional request.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let all = (0..20).map(|_| {
            let (c, url) = (c.clone(), cache.http_url(index));
            tokio::spawn(async move { get(&c, &url, &ASK_FRESH).await })
        });
        let mut labels = Vec::new();
        for r in futures_util::future::join_all(all).await {
            let (s, x, b) = r.expect("join");
            assert_eq!((s, b.as_slice()), (200, &b"release v1"[..]));
            labels.push(x);
        }
        assert_eq!(origin.hits(index), 2, "one revalidation for twenty clients: {labels:?}");
        assert_eq!(origin.requests().last().and_then(|r| r.header("if-none-match").map(str::to_owned)).as_deref(), Some("\"r1\""));
        assert_eq!(labels.iter().filter(|x| *x == "REVALIDATED").count(), 1, "{labels:?}");
        // A plain request for a fresh index is a hit.
        assert_eq!(get(&c, &cache.http_url(index), &[]).await.1, "HIT");
        let m = reqwest::get(format!("http://127.0.0.1:{}/metrics", cache.metrics)).await.expect("metrics").text().await.expect("text");
        for line in [
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"apt\",outcome=\"revalidated\"} 1",
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"apt\",outcome=\"miss\"} 3",
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"npm\",outcome=\"hit\"} 3",
            "ctproxy_cache_ecosystem_requests_total{ecosystem=\"npm\",outcome=\"miss\"} 1",
        ] {
            assert!(m.contains(line), "{line} not in\n{m}");
        }
    });
}

#[test]
fn concurrent_revalidations_that_bring_a_new_body_make_one_download_and_index_max_age_is_applied() {
    let index = "/simple/pkg/";
    let apt = "/debian/dists/bookworm/InRelease";
    let origin = Origin::start_blocking(&HOSTS);
    origin.route(index, Resp::ok("index v1").etag("\"1\"").cache_control("no-cache"));
    origin.route(apt, Resp::ok("release v1").etag("\"a1\"").cache_control("no-cache"));
    let cache = start_cache(&origin, "127.0.0.1", "[cache.index_max_age]\napt = \"1h\"");
    let c = cache.client();
    rt().block_on(async {
        for path in [index, apt] {
            assert_eq!(get(&c, &cache.http_url(path), &ASK_FRESH).await.1, "MISS");
        }
        settle(&cache).await;
        // Changed upstream, and slow: ten concurrent requests for the stale index make one
        // conditional request, and share the new body it brings.
        let v2 = body_of(200_000, 31);
        origin.route(index, Resp::ok(v2.clone()).etag("\"2\"").cache_control("no-cache").delay_first_byte(Duration::from_millis(300)));
        let all = (0..10).map(|_| {
            let (c, url) = (c.clone(), cache.http_url(index));
            tokio::spawn(async move { get(&c, &url, &[]).await })
        });
        for r in futures_util::future::join_all(all).await {
            let (s, x, b) = r.expect("join");
            assert_eq!(s, 200, "{x}");
            assert!(b == v2, "every client gets the new body ({x})");
        }
        assert_eq!(origin.hits(index), 2, "one upstream request for ten clients");
        // apt's indexes may be an hour old here: no revalidation although the origin says no-cache
        // and the client max-age=0; other ecosystems keep the rules.
        origin.route(apt, Resp::ok("release v2").etag("\"a2\"").cache_control("no-cache"));
        let (s, x, b) = get(&c, &cache.http_url(apt), &ASK_FRESH).await;
        assert_eq!((s, x.as_str(), b.as_slice()), (200, "HIT", &b"release v1"[..]));
        assert_eq!(origin.hits(apt), 1);
    });
}
