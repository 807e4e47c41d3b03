//! The cache tests' origin server (`tests/support/origin.rs`) checked on its own with reqwest, over
//! HTTP and HTTPS (its test CA trusted, `repo.test` resolved to 127.0.0.1): routes, request
//! counting, validators (304), required credentials (401), varying bodies, ranges, slow and
//! truncated bodies. The cache tests rely on all of it to tell hits from misses.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use support::origin::{Origin, Resp};

const HOST: &str = "repo.test";

/// A client that trusts `ca_pem` only (none: no roots at all) and reaches `repo.test` and
/// `files.test` on 127.0.0.1, at the port of the URL.
fn client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add root");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let lo = "127.0.0.1:0".parse().expect("addr");
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .resolve(HOST, lo)
        .resolve("files.test", lo)
        .resolve("other.test", lo)
        .build()
        .expect("client")
}

/// What one request got: status, headers, and the body bytes received (with the error that ended
/// the body early, if one did).
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    cut: Option<String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn fetch(c: &reqwest::Client, method: reqwest::Method, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = c.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut rsp = req.send().await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
    let (status, headers) = (rsp.status().as_u16(), rsp.headers().clone());
    let mut body = Vec::new();
    let cut = loop {
        match rsp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break None,
            Err(e) => break Some(format!("{e:?}")),
        }
    };
    Got { status, headers, body, cut }
}

/// A runtime for the client side of the synchronous tests (the origin has its own).
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    rt().block_on(fetch(c, reqwest::Method::GET, url, headers))
}

#[test]
fn http_and_https_answer_routes_and_count_requests() {
    let o = Origin::start_blocking(&[HOST, "files.test"]);
    let c = client(Some(&o.ca_pem));
    assert_eq!(std::fs::read_to_string(&o.ca_file).expect("ca_file"), o.ca_pem);
    o.route("/a.txt", Resp::ok("hello").cache_control("max-age=60").header("X-Origin", "1"));
    o.route("/q?x=1", Resp::ok("query"));

    let g = get(&c, &o.http_url(HOST, "/a.txt"), &[]);
    assert_eq!((g.status, g.text().as_str()), (200, "hello"));
    assert_eq!(g.header("cache-control"), Some("max-age=60"));
    assert_eq!(g.header("x-origin"), Some("1"));
    assert_eq!(g.header("content-length"), Some("5"));
    let g = get(&c, &o.https_url("files.test", "/a.txt"), &[("X-Probe", "p")]);
    assert_eq!((g.status, g.text().as_str()), (200, "hello"));
    assert_eq!(get(&c, &o.http_url(HOST, "/q?x=1"), &[]).text(), "query");
    assert_eq!(get(&c, &o.http_url(HOST, "/q?x=2"), &[]).status, 404, "the query is part of the route");
    assert_eq!(get(&c, &o.http_url(HOST, "/nothing"), &[]).status, 404);

    assert_eq!(o.hits("/a.txt"), 2);
    assert_eq!(o.hits("/q?x=1"), 1);
    assert_eq!(o.hits("/q?x=2"), 1);
    assert_eq!(o.hits("/nothing"), 1, "unrouted requests are counted too");
    let seen = o.requests();
    assert_eq!(seen.len(), 5);
    assert_eq!((seen[0].method.as_str(), seen[0].scheme, seen[0].sni.as_deref()), ("GET", "http", None));
    assert_eq!(seen[0].host.as_deref(), Some(format!("{HOST}:{}", o.http.port()).as_str()));
    assert_eq!((seen[1].scheme, seen[1].sni.as_deref()), ("https", Some("files.test")));
    assert_eq!(seen[1].header("x-probe"), Some("p"));

    // A route can be replaced and removed while the origin runs.
    o.route("/a.txt", Resp::status(410, "gone"));
    assert_eq!(get(&c, &o.http_url(HOST, "/a.txt"), &[]).status, 410);
    o.unroute("/a.txt");
    assert_eq!(get(&c, &o.http_url(HOST, "/a.txt"), &[]).status, 404);
    o.clear_requests();
    assert_eq!(o.hits("/a.txt"), 0);
    assert!(o.origins_toml().contains(&format!("\"repo.test:443\" = \"{}\"", o.https)), "{}", o.origins_toml());
}

#[test]
fn https_is_trusted_only_through_the_test_ca_and_for_its_hosts() {
    let o = Origin::start_blocking(&[HOST]);
    o.route("/", Resp::ok("x"));
    let untrusting = client(None);
    let err = rt().block_on(untrusting.get(o.https_url(HOST, "/")).send()).expect_err("no roots: must fail");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    let c = client(Some(&o.ca_pem));
    let err = rt().block_on(c.get(o.https_url("other.test", "/")).send()).expect_err("name not in the certificate");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    assert_eq!(o.hits("/"), 0, "failed handshakes never reach the routes");
    assert_eq!(get(&c, &o.https_url(HOST, "/"), &[]).text(), "x");
}

#[test]
fn validators_answer_304() {
    let o = Origin::start_blocking(&[HOST]);
    let c = client(Some(&o.ca_pem));
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
    o.route("/e", Resp::ok("etagged").etag("\"v1\"").cache_control("no-cache"));
    o.route("/m", Resp::ok("dated").last_modified(lm));

    let g = get(&c, &o.https_url(HOST, "/e"), &[]);
    assert_eq!((g.status, g.header("etag")), (200, Some("\"v1\"")));
    let g = get(&c, &o.https_url(HOST, "/e"), &[("If-None-Match", "\"v1\"")]);
    assert_eq!((g.status, g.body.len(), g.header("etag")), (304, 0, Some("\"v1\"")));
    assert_eq!(g.header("cache-control"), Some("no-cache"), "304 carries the route's headers");
    assert_eq!(get(&c, &o.https_url(HOST, "/e"), &[("If-None-Match", "\"v0\", W/\"v1\"")]).status, 304);
    assert_eq!(get(&c, &o.https_url(HOST, "/e"), &[("If-None-Match", "*")]).status, 304);
    assert_eq!(get(&c, &o.https_url(HOST, "/e"), &[("If-None-Match", "\"v2\"")]).status, 200);
    assert_eq!(o.requests().last().and_then(|s| s.header("if-none-match").map(str::to_owned)).as_deref(), Some("\"v2\""));

    let g = get(&c, &o.http_url(HOST, "/m"), &[("If-Modified-Since", lm)]);
    assert_eq!((g.status, g.header("last-modified")), (304, Some(lm)));
    assert_eq!(get(&c, &o.http_url(HOST, "/m"), &[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]).status, 200);
    // If-None-Match wins over If-Modified-Since; a route without an ETag never matches it.
    assert_eq!(get(&c, &o.http_url(HOST, "/m"), &[("If-None-Match", "\"x\""), ("If-Modified-Since", lm)]).status, 200);
    assert_eq!(o.hits("/e") + o.hits("/m"), 8);
}

#[test]
fn credentials_are_required_when_the_route_says_so() {
    let o = Origin::start_blocking(&[HOST]);
    let c = client(Some(&o.ca_pem));
    o.route("/private", Resp::ok("secret").require_auth("Bearer t0k"));
    let g = get(&c, &o.https_url(HOST, "/private"), &[]);
    assert_eq!((g.status, g.header("www-authenticate")), (401, Some("Basic realm=\"origin\"")));
    assert_eq!(get(&c, &o.https_url(HOST, "/private"), &[("Authorization", "Bearer nope")]).status, 401);
    let g = get(&c, &o.https_url(HOST, "/private"), &[("Authorization", "Bearer t0k")]);
    assert_eq!((g.status, g.text().as_str()), (200, "secret"));
    assert_eq!(o.hits("/private"), 3);
    assert_eq!(o.requests()[2].header("authorization"), Some("Bearer t0k"));
}

#[test]
fn bodies_vary_ranges_and_head() {
    let o = Origin::start_blocking(&[HOST]);
    let c = client(Some(&o.ca_pem));
    o.route("/v", Resp::ok("lang=").vary_on("Accept-Language"));
    let g = get(&c, &o.http_url(HOST, "/v"), &[("Accept-Language", "fr")]);
    assert_eq!((g.text().as_str(), g.header("vary")), ("lang=fr", Some("Accept-Language")));
    assert_eq!(get(&c, &o.http_url(HOST, "/v"), &[]).text(), "lang=");

    o.route("/r", Resp::ok("0123456789"));
    let g = get(&c, &o.http_url(HOST, "/r"), &[("Range", "bytes=2-4")]);
    assert_eq!((g.status, g.text().as_str(), g.header("content-range")), (206, "234", Some("bytes 2-4/10")));
    assert_eq!(get(&c, &o.http_url(HOST, "/r"), &[("Range", "bytes=7-")]).text(), "789");
    assert_eq!(get(&c, &o.http_url(HOST, "/r"), &[("Range", "bytes=-2")]).text(), "89");
    let g = get(&c, &o.http_url(HOST, "/r"), &[("Range", "bytes=20-")]);
    assert_eq!((g.status, g.header("content-range")), (416, Some("bytes */10")));
    o.route("/r", Resp::ok("0123456789").no_ranges());
    assert_eq!(get(&c, &o.http_url(HOST, "/r"), &[("Range", "bytes=2-4")]).status, 200);

    let g = rt().block_on(fetch(&c, reqwest::Method::HEAD, &o.https_url(HOST, "/r"), &[]));
    assert_eq!((g.status, g.body.len(), g.header("content-length")), (200, 0, Some("10")));
    assert_eq!(o.requests().last().map(|s| s.method.clone()).as_deref(), Some("HEAD"));
}

#[test]
fn slow_first_byte_and_slow_body() {
    let o = Origin::start_blocking(&[HOST]);
    let c = client(Some(&o.ca_pem));
    o.route("/late", Resp::ok("late").delay_first_byte(Duration::from_millis(300)));
    o.route("/drip", Resp::ok(vec![b'd'; 50]).chunk_delay(10, Duration::from_millis(60)));
    let t = Instant::now();
    assert_eq!(get(&c, &o.https_url(HOST, "/late"), &[]).text(), "late");
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    let t = Instant::now();
    let g = get(&c, &o.https_url(HOST, "/drip"), &[]);
    assert_eq!((g.body.len(), g.header("content-length"), g.cut.as_deref()), (50, Some("50"), None));
    assert!(t.elapsed() >= Duration::from_millis(240), "four pauses between five pieces: {:?}", t.elapsed());
}

#[test]
fn truncated_bodies_announce_the_full_length_and_stop_short() {
    let o = Origin::start_blocking(&[HOST]);
    let c = client(Some(&o.ca_pem));
    let body = support::random_bytes(200_000);
    o.route("/cut", Resp::ok(body.clone()).truncate_at(70_000));
    o.route("/cut-slow", Resp::ok(body.clone()).chunk_delay(16_384, Duration::from_millis(5)).truncate_at(50_000));
    for (url, n) in [(o.http_url(HOST, "/cut"), 70_000), (o.https_url(HOST, "/cut"), 70_000), (o.https_url(HOST, "/cut-slow"), 50_000)] {
        let g = get(&c, &url, &[]);
        assert_eq!((g.status, g.header("content-length")), (200, Some("200000")), "{url}");
        assert!(g.cut.is_some(), "{url}: the body must end in an error");
        assert_eq!(g.body.len(), n, "{url}: every byte before the cut arrives");
        assert!(g.body[..] == body[..n], "{url}: the bytes are the body's");
    }
    // The connection was closed, not left open: the next request still works (a new connection).
    o.route("/cut", Resp::ok(body.clone()));
    assert_eq!(get(&c, &o.http_url(HOST, "/cut"), &[]).body, body);
}

#[tokio::test]
async fn runs_on_the_callers_runtime() {
    let o = Origin::start(&[HOST, "127.0.0.1"]).await;
    o.route("/p", Resp::ok("posted"));
    let c = client(Some(&o.ca_pem));
    let rsp = c.post(format!("https://127.0.0.1:{}/p", o.https.port())).body("payload").send().await.expect("post by IP");
    assert_eq!(rsp.text().await.expect("body"), "posted");
    let seen = o.requests();
    assert_eq!((seen[0].method.as_str(), &seen[0].body[..], seen[0].sni.as_deref()), ("POST", &b"payload"[..], None));
    let https = o.https;
    drop(o);
    // Its listener task ends soon after the drop: wait for that, not for a fixed time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(https).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "a dropped origin stops listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
