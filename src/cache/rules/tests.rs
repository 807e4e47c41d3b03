//! The rules' unit and property tests (both halves: URL layouts and HTTP rules).

use std::time::{Duration, UNIX_EPOCH};

use hyper::header::*;
use hyper::{Method, StatusCode};
use proptest::prelude::*;

use super::http::{DAY, MAX_DELTA_SECONDS};
use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    map
}

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const DATE_NOW: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

fn store(host: &str, path: &str, req: &[(&str, &str)], resp: &[(&str, &str)]) -> Result<Storable, NotStorable> {
    storable(&Method::GET, host, path, &headers(req), StatusCode::OK, &headers(resp), &FreshnessRules::default())
}

// --- request_bypass, has_credentials ---

#[test]
fn only_get_and_head_use_the_cache() {
    let none = HeaderMap::new();
    assert_eq!(request_bypass(&Method::GET, "/x", &none), None);
    assert_eq!(request_bypass(&Method::HEAD, "/x", &none), None);
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH, Method::OPTIONS] {
        assert_eq!(request_bypass(&method, "/x", &none), Some(Bypass::Method));
    }
}

#[test]
fn request_no_store_bypasses_but_no_cache_does_not() {
    let h = headers(&[("cache-control", "max-age=0, No-Store")]);
    assert_eq!(request_bypass(&Method::GET, "/x", &h), Some(Bypass::RequestNoStore));
    let h = headers(&[("cache-control", "no-cache"), ("pragma", "no-cache")]);
    assert_eq!(request_bypass(&Method::GET, "/x", &h), None);
    assert_eq!(Bypass::RequestNoStore.as_str(), "request-no-store");
}

#[test]
fn auth_endpoints_bypass() {
    let none = HeaderMap::new();
    for path in [
        "/token",
        "/token?scope=repository:library/alpine:pull&service=registry.docker.io",
        "/v2/token",
        "/v2/auth",
        "/jwt/auth?service=container_registry",
        "/service/token",
        "/oauth/token",
        "/oauth2/v1/authorize",
        "/login/oauth/access_token",
        "/login",
        "/-/npm/v1/login",
        "/-/npm/v1/tokens",
        "/-/user/org.couchdb.user:alice",
        "/-/whoami",
        "/-/v1/done?sessionId=1",
        "/api/v1/me",
        "/api/v1/tokens",
        "/_/oidc/mint-token",
        "/artifactory/api/docker/docker-remote/v2/token",
        "/TOKEN",
        "/v2/token/",
        "/%74oken",
    ] {
        assert_eq!(request_bypass(&Method::GET, path, &none), Some(Bypass::AuthEndpoint), "{path}");
    }
    for path in [
        "/v2/library/alpine/manifests/latest",
        "/v2/token/manifests/latest",
        "/simple/oauthlib/",
        "/left-pad/-/left-pad-1.3.0.tgz",
        "/debian/dists/bookworm/InRelease",
        "/maven2/io/jsonwebtoken/jjwt/0.9.1/jjwt-0.9.1.jar",
        "/packages/tokenizers-0.1.whl",
    ] {
        assert_eq!(request_bypass(&Method::GET, path, &none), None, "{path}");
    }
}

#[test]
fn credentials_in_headers_and_query() {
    let none = HeaderMap::new();
    assert!(!has_credentials("/x", &none));
    assert!(!has_credentials("/x?page=2&n=100&last=abc", &none));
    for name in ["authorization", "proxy-authorization", "cookie", "private-token", "job-token", "x-api-key"] {
        assert!(has_credentials("/x", &headers(&[(name, "v")])), "{name}");
    }
    for query in [
        "access_token=x",
        "token=x",
        "a=1&X-Amz-Signature=abc&X-Amz-Date=1",
        "X-Amz-Security-Token=z",
        "X-Goog-Credential=c",
        "sv=2020&sig=abc",
        "Signature=s&Key-Pair-Id=k&Policy=p",
        "signature=abc",
        "private_token=x",
        "key=AIza",
        "access%5Ftoken=x",
        "a;sig=1",
    ] {
        assert!(has_credentials(&format!("/x?{query}"), &none), "{query}");
    }
    // Only the query is looked at.
    assert!(!has_credentials("/token/x", &none));
}

// --- CacheControl ---

#[test]
fn cache_control_directives() {
    let cc = CacheControl::parse(&headers(&[("cache-control", "public, MAX-AGE=5, s-maxage=\"7\", must-revalidate, immutable, no-cache")]));
    assert_eq!(
        cc,
        CacheControl {
            no_store: false,
            no_cache: true,
            private: false,
            public: true,
            must_revalidate: true,
            immutable: true,
            max_age: Some(5),
            s_maxage: Some(7)
        }
    );
}

#[test]
fn cache_control_garbage_is_ignored() {
    let cc = CacheControl::parse(&headers(&[("cache-control", "max-age=abc, max-age=-1, max-age=, ,,foo=bar, =3, s-maxage")]));
    assert_eq!(cc, CacheControl::default());
    let cc = CacheControl::parse(&headers(&[("cache-control", "max-age=abc, max-age=9")]));
    assert_eq!(cc.max_age, Some(9));
    let cc = CacheControl::parse(&headers(&[("cache-control", "max-age=99999999999999999999999")]));
    assert_eq!(cc.max_age, Some(MAX_DELTA_SECONDS));
    let cc = CacheControl::parse(&headers(&[("cache-control", "  Max-Age = 12 ")]));
    assert_eq!(cc.max_age, Some(12));
}

#[test]
fn cache_control_qualified_private_and_quoted_commas() {
    let cc = CacheControl::parse(&headers(&[("cache-control", "private=\"set-cookie\", max-age=60")]));
    assert!(cc.private);
    assert_eq!(cc.max_age, Some(60));
    let cc = CacheControl::parse(&headers(&[("cache-control", "no-cache=\"set-cookie, x-foo\", max-age=3")]));
    assert!(cc.no_cache);
    assert!(!cc.no_store);
    assert_eq!(cc.max_age, Some(3));
    // A comma in quotes does not start a directive.
    let cc = CacheControl::parse(&headers(&[("cache-control", "ext=\"a, no-store\"")]));
    assert!(!cc.no_store);
}

#[test]
fn cache_control_several_lines_first_age_and_restrictive_flags() {
    let cc = CacheControl::parse(&headers(&[
        ("cache-control", "public, max-age=100"),
        ("cache-control", "max-age=5, no-store"),
        ("cache-control", "proxy-revalidate"),
    ]));
    assert!(cc.public && cc.no_store && cc.must_revalidate);
    assert_eq!(cc.max_age, Some(100));
}

#[test]
fn cache_control_non_utf8_line_still_counts() {
    let mut h = HeaderMap::new();
    h.append(CACHE_CONTROL, HeaderValue::from_bytes(b"no-store, x=\xff").unwrap());
    assert!(CacheControl::parse(&h).no_store);
}

// --- classify ---

#[test]
fn classify_apt() {
    let c = |path: &str| classify("deb.debian.org", path);
    assert_eq!(c("/debian/pool/main/c/curl/curl_7.88.1-10_amd64.deb"), Class::Immutable);
    assert_eq!(c("/debian/pool/main/c/curl/curl_7.88.1-10.dsc"), Class::Immutable);
    assert_eq!(c("/debian/pool/main/c/curl/curl_7.88.1.orig.tar.gz"), Class::Immutable);
    assert_eq!(c("/debian/dists/bookworm/InRelease"), Class::Mutable);
    assert_eq!(c("/debian/dists/bookworm/Release"), Class::Mutable);
    assert_eq!(c("/debian/dists/bookworm/Release.gpg"), Class::Mutable);
    assert_eq!(c("/debian/dists/bookworm/main/binary-amd64/Packages.xz"), Class::Mutable);
    assert_eq!(c("/debian/dists/bookworm/main/source/Sources.gz"), Class::Mutable);
    assert_eq!(c("/debian/dists/bookworm/main/i18n/Translation-en.bz2"), Class::Mutable);
    assert_eq!(c(&format!("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{HEX}")), Class::Immutable);
    assert_eq!(c("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/not-hex"), Class::Mutable);
    assert_eq!(classify("security.debian.org", "/debian-security/dists/bookworm-security/InRelease"), Class::Mutable);
    assert_eq!(classify("archive.ubuntu.com:80", "/ubuntu/pool/main/z/zlib/zlib1g_1.3_amd64.deb"), Class::Immutable);
    // A .deb outside a pool may be a "latest" download.
    assert_eq!(classify("example.com", "/releases/latest/tool_amd64.deb"), Class::Unknown);
    // Flat repositories.
    assert_eq!(classify("example.com", "/repo/Packages.gz"), Class::Mutable);
}

#[test]
fn classify_rpm_and_apk() {
    let c = |path: &str| classify("mirror.example.org", path);
    assert_eq!(c("/fedora/linux/releases/39/Everything/x86_64/os/Packages/c/curl-8.2.1-3.fc39.x86_64.rpm"), Class::Immutable);
    assert_eq!(c("/fedora/linux/releases/39/Everything/x86_64/os/repodata/repomd.xml"), Class::Mutable);
    assert_eq!(c(&format!("/f/os/repodata/{HEX}-primary.xml.gz")), Class::Immutable);
    assert_eq!(c("/f/os/repodata/primary.xml.gz"), Class::Mutable);
    assert_eq!(classify("mirrors.fedoraproject.org", "/metalink?repo=fedora-39&arch=x86_64"), Class::Mutable);
    assert_eq!(c("/download/tool-linux-amd64.rpm"), Class::Unknown);

    let a = |path: &str| classify("dl-cdn.alpinelinux.org", path);
    assert_eq!(a("/alpine/v3.19/main/x86_64/curl-8.5.0-r0.apk"), Class::Immutable);
    assert_eq!(a("/alpine/v3.19/main/x86_64/APKINDEX.tar.gz"), Class::Mutable);
    assert_eq!(a("/alpine/latest-stable/releases/x86_64/app.apk"), Class::Unknown);
}

#[test]
fn classify_python() {
    assert_eq!(classify("files.pythonhosted.org", "/packages/ab/cd/x-1.0-py3-none-any.whl"), Class::Immutable);
    assert_eq!(classify("files.pythonhosted.org", "/packages/ab/cd/ef0123/requests-2.31.0.tar.gz#sha256=abc"), Class::Immutable);
    assert_eq!(classify("files.pythonhosted.org", "/"), Class::Unknown);
    assert_eq!(classify("pypi.org", "/simple/requests/"), Class::Mutable);
    assert_eq!(classify("PyPI.org:443", "/simple/"), Class::Mutable);
    assert_eq!(classify("pypi.org", "/pypi/requests/json"), Class::Mutable);
    assert_eq!(classify("pypi.org", "/pypi/requests/2.31.0/json"), Class::Mutable);
    assert_eq!(classify("pypi.org", "/project/requests/"), Class::Unknown);
    assert_eq!(classify("nexus.example", "/repository/pypi/simple/requests/"), Class::Mutable);
    assert_eq!(classify("download.pytorch.org", "/whl/cu118/torch-2.0.0%2Bcu118-cp311-cp311-linux_x86_64.whl"), Class::Immutable);
}

#[test]
fn classify_npm() {
    let c = |path: &str| classify("registry.npmjs.org", path);
    assert_eq!(c("/left-pad"), Class::Mutable);
    assert_eq!(c("/left-pad/-/left-pad-1.3.0.tgz"), Class::Immutable);
    assert_eq!(c("/@types/node"), Class::Mutable);
    assert_eq!(c("/@types%2fnode"), Class::Mutable);
    assert_eq!(c("/@types/node/-/node-20.1.0.tgz"), Class::Immutable);
    assert_eq!(c("/left-pad/latest"), Class::Mutable);
    assert_eq!(c("/-/v1/search?text=x"), Class::Unknown);
    assert_eq!(c("/"), Class::Unknown);
    // Mirrors are classified by layout.
    assert_eq!(classify("nexus.example", "/repository/npm/left-pad/-/left-pad-1.3.0.tgz"), Class::Immutable);
    assert_eq!(classify("nexus.example", "/repository/npm/@types/node/-/node-20.1.0.tgz"), Class::Immutable);
}

#[test]
fn classify_maven() {
    let c = |path: &str| classify("repo.maven.apache.org", path);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar"), Class::Immutable);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.pom"), Class::Immutable);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0.jar.sha1"), Class::Immutable);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/3.14.0/commons-lang3-3.14.0-sources.jar.asc"), Class::Immutable);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/maven-metadata.xml"), Class::Mutable);
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/maven-metadata.xml.sha1"), Class::Mutable);
    assert_eq!(c("/maven2/com/example/lib/1.0-SNAPSHOT/maven-metadata.xml"), Class::Mutable);
    assert_eq!(c("/maven2/com/example/lib/1.0-SNAPSHOT/lib-1.0-SNAPSHOT.jar"), Class::Mutable);
    assert_eq!(c("/maven2/com/example/lib/1.0-SNAPSHOT/lib-1.0-20240101.120000-3.jar"), Class::Mutable);
    // Not the Maven layout.
    assert_eq!(c("/maven2/org/apache/commons/commons-lang3/3.14.0/other-3.14.0.jar"), Class::Unknown);
}

#[test]
fn classify_crates() {
    assert_eq!(classify("index.crates.io", "/se/rd/serde"), Class::Mutable);
    assert_eq!(classify("index.crates.io", "/config.json"), Class::Mutable);
    assert_eq!(classify("static.crates.io", "/crates/serde/serde-1.0.0.crate"), Class::Immutable);
    assert_eq!(classify("static.crates.io", "/crates/serde/"), Class::Unknown);
    assert_eq!(classify("mirror.example", "/api/v1/crates/serde/serde-1.0.0.crate"), Class::Immutable);
}

#[test]
fn classify_oci() {
    let c = |path: &str| classify("registry-1.docker.io", path);
    assert_eq!(c(&format!("/v2/library/alpine/blobs/sha256:{HEX}")), Class::Immutable);
    assert_eq!(c(&format!("/v2/library/alpine/manifests/sha256:{HEX}")), Class::Immutable);
    assert_eq!(c("/v2/library/alpine/manifests/3.19"), Class::Mutable);
    assert_eq!(c("/v2/library/alpine/manifests/latest"), Class::Mutable);
    assert_eq!(c("/v2/library/alpine/tags/list?n=100"), Class::Mutable);
    assert_eq!(c(&format!("/v2/library/alpine/referrers/sha256:{HEX}")), Class::Mutable);
    assert_eq!(c("/v2/_catalog"), Class::Mutable);
    assert_eq!(c("/v2/"), Class::Unknown);
    assert_eq!(c("/v2/library/alpine/blobs/uploads/"), Class::Unknown);
    // Uppercase or short hex is not a digest.
    assert_eq!(c(&format!("/v2/library/alpine/blobs/sha256:{}", HEX.to_uppercase())), Class::Unknown);
    assert_eq!(c("/v2/library/alpine/blobs/sha256:abc"), Class::Unknown);
    assert_eq!(c(&format!("/v2/library/alpine/manifests/sha512:{HEX}{HEX}")), Class::Immutable);
    assert_eq!(classify("ghcr.io", &format!("/v2/org/a/b/c/blobs/sha256:{HEX}")), Class::Immutable);
    assert_eq!(classify("art.example", &format!("/artifactory/api/docker/hub/v2/library/alpine/blobs/sha256:{HEX}")), Class::Immutable);
}

#[test]
fn classify_go_and_unknown() {
    let c = |path: &str| classify("proxy.golang.org", path);
    assert_eq!(c("/github.com/pkg/errors/@v/v0.9.1.zip"), Class::Immutable);
    assert_eq!(c("/github.com/pkg/errors/@v/v0.9.1.mod"), Class::Immutable);
    assert_eq!(c("/github.com/pkg/errors/@v/list"), Class::Mutable);
    assert_eq!(c("/github.com/pkg/errors/@latest"), Class::Mutable);
    assert_eq!(classify("example.com", "/"), Class::Unknown);
    assert_eq!(classify("example.com", ""), Class::Unknown);
    assert_eq!(classify("example.com", "/index.html"), Class::Unknown);
}

// --- storable ---

#[test]
fn only_get_200_is_stored() {
    let rules = FreshnessRules::default();
    let none = HeaderMap::new();
    let s =
        |method: &Method, status: u16| storable(method, "example.com", "/a", &none, StatusCode::from_u16(status).unwrap(), &none, &rules);
    assert!(s(&Method::GET, 200).is_ok());
    assert_eq!(s(&Method::HEAD, 200), Err(NotStorable::Method));
    assert_eq!(s(&Method::POST, 200), Err(NotStorable::Method));
    for status in [206, 301, 302, 304, 307, 401, 403, 404, 407, 429, 500, 502, 503] {
        assert_eq!(s(&Method::GET, status), Err(NotStorable::Status), "{status}");
    }
}

#[test]
fn refusals() {
    assert_eq!(store("a.org", "/x", &[], &[("cache-control", "no-store")]), Err(NotStorable::NoStore));
    assert_eq!(store("a.org", "/x", &[("cache-control", "no-store")], &[]), Err(NotStorable::NoStore));
    assert_eq!(store("a.org", "/x", &[], &[("cache-control", "private=\"set-cookie\"")]), Err(NotStorable::Private));
    assert_eq!(store("a.org", "/x", &[], &[("cache-control", "public"), ("cache-control", "private")]), Err(NotStorable::Private));
    assert_eq!(store("a.org", "/x", &[], &[("set-cookie", "a=b")]), Err(NotStorable::SetCookie));
    assert_eq!(store("a.org", "/x", &[], &[("vary", "accept, *")]), Err(NotStorable::VaryStar));
    assert_eq!(store("a.org", "/x", &[], &[("vary", "Cookie")]), Err(NotStorable::VaryCredentials));
    assert_eq!(store("a.org", "/x", &[], &[("vary", "accept, Authorization")]), Err(NotStorable::VaryCredentials));
    assert_eq!(store("a.org", "/x", &[], &[("vary", "bad header")]), Err(NotStorable::VaryInvalid));
    assert_eq!(store("auth.docker.io", "/token?scope=x", &[], &[("cache-control", "max-age=300")]), Err(NotStorable::AuthEndpoint));
    let deb = "/debian/pool/main/c/curl/curl_7.88.1-10_amd64.deb";
    assert_eq!(store("deb.debian.org", deb, &[], &[("content-type", "text/html; charset=utf-8")]), Err(NotStorable::UnexpectedHtml));
    assert_eq!(NotStorable::VaryStar.as_str(), "vary-star");
}

#[test]
fn vary_names_are_normalized() {
    let s = store("a.org", "/x", &[], &[("vary", "Accept-Encoding, Accept"), ("vary", "accept-encoding,,x-Foo")]).unwrap();
    let names: Vec<&str> = s.vary.iter().map(HeaderName::as_str).collect();
    assert_eq!(names, ["accept", "accept-encoding", "x-foo"]);
}

#[test]
fn explicit_freshness_precedence() {
    let date = ("date", DATE_NOW);
    let expires = ("expires", "Sun, 06 Nov 1994 09:49:37 GMT");
    let fresh = |resp: &[(&str, &str)]| store("a.org", "/x", &[], resp).unwrap().fresh_for.as_secs();
    assert_eq!(fresh(&[("cache-control", "max-age=10, s-maxage=20"), date, expires]), 20);
    assert_eq!(fresh(&[("cache-control", "max-age=10"), date, expires]), 10);
    assert_eq!(fresh(&[date, expires]), 3600);
    assert_eq!(fresh(&[date, ("expires", "0")]), 0);
    assert_eq!(fresh(&[expires]), 0);
    assert_eq!(fresh(&[date, ("expires", "Sun, 06 Nov 1994 07:49:37 GMT")]), 0);
    assert_eq!(fresh(&[("cache-control", "max-age=100"), ("age", "30")]), 70);
    assert_eq!(fresh(&[("cache-control", "max-age=100"), ("age", "300")]), 0);
    assert_eq!(fresh(&[("cache-control", "max-age=100, no-cache")]), 0);
    assert_eq!(fresh(&[("cache-control", "max-age=100, must-revalidate")]), 100);
    assert!(store("a.org", "/x", &[], &[("cache-control", "must-revalidate")]).unwrap().must_revalidate);
}

#[test]
fn heuristic_freshness_for_unknown() {
    let fresh = |resp: &[(&str, &str)]| store("a.org", "/x", &[], resp).unwrap().fresh_for.as_secs();
    // Modified 10 000 s before Date: fresh for 1 000 s.
    assert_eq!(fresh(&[("date", DATE_NOW), ("last-modified", "Sun, 06 Nov 1994 06:02:57 GMT")]), 1000);
    // Capped at a day.
    assert_eq!(fresh(&[("date", DATE_NOW), ("last-modified", "Thu, 01 Jan 1970 00:00:00 GMT")]), 86400);
    assert_eq!(fresh(&[("date", DATE_NOW)]), 0);
    assert_eq!(fresh(&[("last-modified", DATE_NOW)]), 0);
    assert_eq!(fresh(&[("date", DATE_NOW), ("last-modified", "Mon, 07 Nov 1994 08:49:37 GMT")]), 0);
    let off = FreshnessRules { default_ttl: Duration::ZERO, ..FreshnessRules::default() };
    let resp = headers(&[("date", DATE_NOW), ("last-modified", "Sun, 06 Nov 1994 06:03:57 GMT")]);
    let s = storable(&Method::GET, "a.org", "/x", &HeaderMap::new(), StatusCode::OK, &resp, &off).unwrap();
    assert_eq!(s.fresh_for, Duration::ZERO);
}

#[test]
fn freshness_per_class() {
    let blob = format!("/v2/library/alpine/blobs/sha256:{HEX}");
    let fresh = |path: &str, resp: &[(&str, &str)]| store("registry-1.docker.io", path, &[], resp).unwrap();
    let s = fresh(&blob, &[("cache-control", "max-age=60")]);
    assert_eq!((s.class, s.fresh_for), (Class::Immutable, 30 * DAY));
    assert_eq!(fresh(&blob, &[("cache-control", "max-age=31536000")]).fresh_for, Duration::from_secs(31536000));
    assert_eq!(fresh(&blob, &[("cache-control", "max-age=0")]).fresh_for, 30 * DAY);
    assert_eq!(fresh(&blob, &[("cache-control", "no-cache")]).fresh_for, Duration::ZERO);

    let tag = "/v2/library/alpine/manifests/latest";
    let s = fresh(tag, &[]);
    assert_eq!((s.class, s.fresh_for), (Class::Mutable, Duration::from_secs(60)));
    assert_eq!(fresh(tag, &[("cache-control", "max-age=3600")]).fresh_for, Duration::from_secs(60));
    assert_eq!(fresh(tag, &[("cache-control", "max-age=10")]).fresh_for, Duration::from_secs(10));
    assert_eq!(fresh(tag, &[("cache-control", "no-cache")]).fresh_for, Duration::ZERO);
}

#[test]
fn credentialed_requests_are_flagged() {
    let blob = format!("/v2/library/alpine/blobs/sha256:{HEX}");
    let s = store("ghcr.io", &blob, &[("authorization", "Bearer x")], &[]).unwrap();
    assert!(s.credentialed);
    assert!(store("ghcr.io", &format!("{blob}?X-Amz-Signature=1"), &[], &[]).unwrap().credentialed);
    assert!(!store("ghcr.io", &blob, &[], &[]).unwrap().credentialed);
    assert_eq!(store("ghcr.io", &blob, &[("authorization", "Bearer x")], &[("cache-control", "private")]), Err(NotStorable::Private));
}

// --- keys ---

#[test]
fn primary_keys() {
    assert_eq!(primary_key(Scheme::Https, "PyPI.org", "/simple/requests/"), "GET https://pypi.org/simple/requests/");
    assert_eq!(primary_key(Scheme::Https, "pypi.org:443", "/simple/"), primary_key(Scheme::Https, "pypi.org", "/simple/"));
    assert_eq!(primary_key(Scheme::Http, "deb.debian.org:80", "/x"), "GET http://deb.debian.org/x");
    assert_eq!(primary_key(Scheme::Http, "deb.debian.org.", "/x"), "GET http://deb.debian.org/x");
    assert_eq!(primary_key(Scheme::Https, "registry.local:5000", "/v2/"), "GET https://registry.local:5000/v2/");
    assert_eq!(primary_key(Scheme::Http, "[::1]:80", "/x"), "GET http://[::1]/x");
    assert_ne!(primary_key(Scheme::Http, "a.org", "/x"), primary_key(Scheme::Https, "a.org", "/x"));
    assert_ne!(primary_key(Scheme::Http, "a.org", "/x?a=1"), primary_key(Scheme::Http, "a.org", "/x?a=2"));
    assert_ne!(primary_key(Scheme::Http, "a.org", "/x?a=1&b=2"), primary_key(Scheme::Http, "a.org", "/x?b=2&a=1"));
    assert_eq!(primary_key(Scheme::Http, "a.org", ""), "GET http://a.org/");
}

fn names(list: &[&str]) -> Vec<HeaderName> {
    list.iter().map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap()).collect()
}

#[test]
fn vary_keys() {
    let vary = names(&["Accept", "accept-encoding"]);
    let key = |req: &[(&str, &str)]| vary_key(&vary, &headers(req));
    let json = key(&[("accept", "application/vnd.pypi.simple.v1+json"), ("accept-encoding", "gzip")]);
    let html = key(&[("accept", "text/html"), ("accept-encoding", "gzip")]);
    assert_ne!(json, html);
    assert_eq!(html, "accept=text/html\naccept-encoding=gzip");
    assert_eq!(key(&[("accept", "  text/html  "), ("accept-encoding", "GZIP;q=1.0")]), html);
    // Whitespace runs collapse.
    assert_eq!(key(&[("accept", "a,  \t b")]), key(&[("accept", "a, b")]));
    // Absent is not empty.
    assert_eq!(key(&[]), "accept\naccept-encoding");
    assert_ne!(key(&[("accept", "")]), key(&[]));
    // Several lines.
    assert_eq!(key(&[("accept", "a"), ("accept", "b")]), key(&[("accept", "a, b")]));
    // Order of vary names does not matter.
    assert_eq!(vary_key(&names(&["accept-encoding", "accept", "accept"]), &headers(&[("accept", "x")])), key(&[("accept", "x")]));
    assert_eq!(vary_key(&[], &headers(&[("accept", "x")])), "");
}

#[test]
fn accept_encoding_is_reduced_to_codings() {
    let vary = names(&["accept-encoding"]);
    let key = |value: &str| vary_key(&vary, &headers(&[("accept-encoding", value)]));
    assert_eq!(key("gzip, deflate, br"), key("br;q=0.9, deflate,gzip"));
    assert_eq!(key("gzip, br, zstd"), "accept-encoding=br,gzip,zstd");
    assert_eq!(key("x-gzip"), key("gzip"));
    assert_eq!(key("gzip, br;q=0"), key("gzip"));
    assert_eq!(key("identity"), "accept-encoding=");
    assert_eq!(key(""), key("identity"));
    assert_ne!(key("identity"), key("gzip"));
    assert_ne!(key("deflate"), key("identity"));
    assert_eq!(key("*"), "accept-encoding=*");
    assert_ne!(vary_key(&vary, &HeaderMap::new()), key(""));
}

#[test]
fn vary_values_are_escaped() {
    let vary = names(&["x-a"]);
    let mut a = HeaderMap::new();
    a.insert("x-a", HeaderValue::from_bytes(b"v\xff").unwrap());
    let mut b = HeaderMap::new();
    b.insert("x-a", HeaderValue::from_bytes(b"v\xfe").unwrap());
    assert_ne!(vary_key(&vary, &a), vary_key(&vary, &b));
    assert_eq!(vary_key(&vary, &a), "x-a=v%FF");
    assert_eq!(vary_key(&vary, &headers(&[("x-a", "100%")])), "x-a=100%25");
    // Credentials: presence only.
    assert_eq!(vary_key(&names(&["authorization"]), &headers(&[("authorization", "Bearer secret")])), "authorization=<present>");
}

// --- not_modified ---

#[test]
fn if_none_match() {
    let inm = |value: &str, etag: Option<&str>| not_modified(&headers(&[("if-none-match", value)]), etag, None);
    assert!(inm("\"x\"", Some("\"x\"")));
    assert!(inm("W/\"x\"", Some("\"x\"")));
    assert!(inm("\"x\"", Some("W/\"x\"")));
    assert!(!inm("\"x\"", Some("\"y\"")));
    assert!(inm("\"a\", W/\"b\", \"x\"", Some("\"x\"")));
    assert!(inm("\"a,b\", \"c\"", Some("\"a,b\"")));
    assert!(!inm("\"a\", \"b\"", Some("\"a,b\"")));
    assert!(inm("*", Some("\"x\"")));
    assert!(inm("*", None));
    assert!(!inm("\"x\"", None));
    assert!(!inm("x", Some("x")));
    assert!(inm("garbage, \"x\"", Some("\"x\"")));
    assert!(!inm("\"x", Some("\"x\"")));
    let lines = headers(&[("if-none-match", "\"a\""), ("if-none-match", "\"x\"")]);
    assert!(not_modified(&lines, Some("\"x\""), None));
}

#[test]
fn if_modified_since() {
    let lm = Some("Sun, 06 Nov 1994 08:49:37 GMT");
    let ims = |value: &str| not_modified(&headers(&[("if-modified-since", value)]), Some("\"x\""), lm);
    assert!(ims("Sun, 06 Nov 1994 08:49:37 GMT"));
    assert!(ims("Mon, 07 Nov 1994 08:49:37 GMT"));
    assert!(!ims("Sat, 05 Nov 1994 08:49:37 GMT"));
    assert!(ims("Sunday, 06-Nov-94 08:49:37 GMT"));
    assert!(ims("Sun Nov  6 08:49:37 1994"));
    assert!(!ims("yesterday"));
    assert!(!not_modified(&headers(&[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]), None, None));
    // If-None-Match present: If-Modified-Since is ignored, even when the tag does not match.
    let both = headers(&[("if-none-match", "\"y\""), ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")]);
    assert!(!not_modified(&both, Some("\"x\""), lm));
    assert!(!not_modified(&HeaderMap::new(), Some("\"x\""), lm));
}

// --- range ---

fn r(value: &str, len: u64) -> RangeAnswer {
    range(&headers(&[("range", value)]), len, None, None)
}

#[test]
fn single_ranges() {
    use RangeAnswer::*;
    assert_eq!(range(&HeaderMap::new(), 10, None, None), Full);
    assert_eq!(r("bytes=0-0", 10), Partial { start: 0, end_inclusive: 0 });
    assert_eq!(r("bytes=2-5", 10), Partial { start: 2, end_inclusive: 5 });
    assert_eq!(r("bytes=2-100", 10), Partial { start: 2, end_inclusive: 9 });
    assert_eq!(r("bytes=7-", 10), Partial { start: 7, end_inclusive: 9 });
    assert_eq!(r("bytes=-3", 10), Partial { start: 7, end_inclusive: 9 });
    assert_eq!(r("bytes=-30", 10), Partial { start: 0, end_inclusive: 9 });
    assert_eq!(r("Bytes=1-1", 10), Partial { start: 1, end_inclusive: 1 });
    assert_eq!(r(" bytes=1-2 , ", 10), Partial { start: 1, end_inclusive: 2 });
    assert_eq!(r("bytes=0-99999999999999999999999", 10), Partial { start: 0, end_inclusive: 9 });
    assert_eq!(r("bytes=-99999999999999999999999", 10), Partial { start: 0, end_inclusive: 9 });
    assert_eq!(r(&format!("bytes={}-", u64::MAX - 1), u64::MAX), Partial { start: u64::MAX - 1, end_inclusive: u64::MAX - 1 });
}

#[test]
fn unsatisfiable_ranges() {
    use RangeAnswer::*;
    assert_eq!(r("bytes=-0", 10), Unsatisfiable);
    assert_eq!(r("bytes=10-", 10), Unsatisfiable);
    assert_eq!(r("bytes=10-20", 10), Unsatisfiable);
    assert_eq!(r("bytes=99999999999999999999999-", 10), Unsatisfiable);
    assert_eq!(r("bytes=0-", 0), Unsatisfiable);
    assert_eq!(r("bytes=-5", 0), Unsatisfiable);
}

#[test]
fn ignored_ranges() {
    use RangeAnswer::*;
    for value in [
        "bytes=5-2",
        "bytes=0-1,3-4",
        "items=0-1",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1",
        "bytes=+1-2",
        "bytes=1 -2",
        "bytes=--1",
        "bytes=1-2-3",
        "0-1",
        "",
    ] {
        assert_eq!(r(value, 10), Full, "{value}");
    }
    let two_lines = headers(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]);
    assert_eq!(range(&two_lines, 10, None, None), Full);
}

#[test]
fn if_range() {
    use RangeAnswer::*;
    let lm = Some("Sun, 06 Nov 1994 08:49:37 GMT");
    let with = |if_range: &str, etag: Option<&str>| range(&headers(&[("range", "bytes=0-1"), ("if-range", if_range)]), 10, etag, lm);
    let part = Partial { start: 0, end_inclusive: 1 };
    assert_eq!(with("\"x\"", Some("\"x\"")), part);
    assert_eq!(with("\"x\"", Some("\"y\"")), Full);
    assert_eq!(with("W/\"x\"", Some("W/\"x\"")), Full);
    assert_eq!(with("\"x\"", Some("W/\"x\"")), Full);
    assert_eq!(with("\"x\"", None), Full);
    assert_eq!(with("Sun, 06 Nov 1994 08:49:37 GMT", None), part);
    assert_eq!(with("Mon, 07 Nov 1994 08:49:37 GMT", None), Full);
    assert_eq!(with("garbage", Some("\"x\"")), Full);
    // A failed If-Range ignores even an unsatisfiable range.
    let h = headers(&[("range", "bytes=50-"), ("if-range", "\"y\"")]);
    assert_eq!(range(&h, 10, Some("\"x\""), None), Full);
}

// --- url_digest, replayed_headers, dates ---

#[test]
fn url_digests() {
    let mut expected = [0u8; 32];
    for (i, byte) in expected.iter_mut().enumerate() {
        *byte = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][i % 8];
    }
    assert_eq!(url_digest(&format!("/v2/library/alpine/blobs/sha256:{HEX}")), Some(expected));
    assert_eq!(url_digest(&format!("/v2/a/b/c/manifests/sha256:{HEX}?x=1")), Some(expected));
    assert_eq!(url_digest(&format!("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{HEX}")), Some(expected));
    assert_eq!(url_digest(&format!("/v2/blobs/sha256:{HEX}")), None);
    assert_eq!(url_digest(&format!("/v2/a/blobs/sha512:{HEX}{HEX}")), None);
    assert_eq!(url_digest(&format!("/v2/a/blobs/sha256:{}", HEX.to_uppercase())), None);
    assert_eq!(url_digest(&format!("/v2/a/blobs/sha256:{}", &HEX[1..])), None);
    assert_eq!(url_digest(&format!("/x/blobs/sha256:{HEX}")), None);
    assert_eq!(url_digest(&format!("/d/by-hash/MD5Sum/{HEX}")), None);
    assert_eq!(url_digest("/v2/a/manifests/latest"), None);
}

#[test]
fn replayed_headers_are_an_allowlist() {
    let resp = headers(&[
        ("content-type", "application/vnd.oci.image.manifest.v1+json"),
        ("etag", "\"x\""),
        ("docker-content-digest", "sha256:abc"),
        ("link", "</v2/x/tags/list?last=a>; rel=\"next\""),
        ("vary", "accept"),
        ("vary", "accept-encoding"),
        ("set-cookie", "a=b"),
        ("www-authenticate", "Bearer"),
        ("connection", "close"),
        ("transfer-encoding", "chunked"),
        ("content-length", "3"),
        ("date", DATE_NOW),
        ("age", "3"),
        ("accept-ranges", "none"),
        ("x-amz-request-id", "1"),
    ]);
    let out = replayed_headers(&resp);
    let mut kept: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
    kept.sort();
    assert_eq!(kept, ["content-type", "docker-content-digest", "etag", "link", "vary"]);
    assert_eq!(out.get_all(VARY).iter().count(), 2);
}

#[test]
fn http_dates() {
    let t = UNIX_EPOCH + Duration::from_secs(784111777);
    assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(t));
    assert_eq!(parse_http_date(" Sun, 06 Nov 1994 08:49:37 GMT "), Some(t));
    assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), Some(t));
    assert_eq!(parse_http_date("Sun Nov  6 08:49:37 1994"), Some(t));
    assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(UNIX_EPOCH));
    for bad in [
        "",
        "0",
        "-1",
        "Sun, 06 Nov 1994 08:49:37",
        "Mon, 06 Nov 1994 08:49:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Wed, 31 Dec 1969 23:59:59 GMT",
    ] {
        assert_eq!(parse_http_date(bad), None, "{bad}");
    }
}

// --- no panics on arbitrary input ---

/// Every header the module reads, set to `value`, through every function that reads them.
fn exercise(value: HeaderValue, text: &str, other: &str, len: u64) {
    let mut h = HeaderMap::new();
    for name in [CACHE_CONTROL, RANGE, IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE, ACCEPT_ENCODING, VARY, EXPIRES, DATE, AGE] {
        h.insert(name.clone(), value.clone());
        h.append(name, HeaderValue::from_static("\"x\", bytes=0-1"));
    }
    let _ = CacheControl::parse(&h);
    let _ = range(&h, len, Some(other), Some(text));
    let _ = not_modified(&h, Some(other), Some(text));
    let _ = vary_key(&names(&["accept", "accept-encoding", "cache-control", "authorization"]), &h);
    let _ = storable(&Method::GET, other, text, &h, StatusCode::OK, &h, &FreshnessRules::default());
    let _ = replayed_headers(&h);
    let mut single = HeaderMap::new();
    for name in [CACHE_CONTROL, RANGE, IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE, ACCEPT_ENCODING, VARY, EXPIRES, DATE, AGE] {
        single.insert(name, value.clone());
    }
    let _ = CacheControl::parse(&single);
    let _ = range(&single, len, Some(other), Some(text));
    let _ = not_modified(&single, Some(text), Some(other));
    let _ = storable(&Method::GET, other, text, &HeaderMap::new(), StatusCode::OK, &single, &FreshnessRules::default());
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?s).{0,80}",
        "[ -~]{0,80}",
        "(bytes|=|-|,| |[0-9]|99999999999999999999|W/|\"|\\*|;|q=0|max-age|no-store|private=|sha256:|/v2/|/by-hash/SHA256/|/-/|\\?|&|%|GMT|Sun, 06 Nov 1994 ){0,16}",
    ]
}

// --- ecosystem, entry_use ---

#[test]
fn urls_belong_to_their_ecosystem() {
    let sha = format!("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{HEX}");
    for (host, path, eco) in [
        ("deb.debian.org", "/debian/dists/bookworm/InRelease", Ecosystem::Apt),
        ("deb.debian.org", sha.as_str(), Ecosystem::Apt),
        ("deb.debian.org", "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb", Ecosystem::Apt),
        ("mirror.example", "/ubuntu/dists/jammy/main/binary-amd64/Packages.xz", Ecosystem::Apt),
        ("pypi.org", "/simple/requests/", Ecosystem::Pypi),
        ("files.pythonhosted.org", "/packages/aa/bb/requests-2.32.3-py3-none-any.whl", Ecosystem::Pypi),
        ("nexus.example", "/repository/pypi/simple/requests/", Ecosystem::Pypi),
        ("registry.npmjs.org", "/left-pad", Ecosystem::Npm),
        ("registry.npmjs.org", "/left-pad/-/left-pad-1.3.0.tgz", Ecosystem::Npm),
        ("nexus.example", "/repository/npm/left-pad/-/left-pad-1.3.0.tgz", Ecosystem::Npm),
        ("index.crates.io", "/3/c/cfg-if", Ecosystem::Cargo),
        ("index.crates.io", "/config.json", Ecosystem::Cargo),
        ("static.crates.io", "/crates/cfg-if/cfg-if-1.0.0.crate", Ecosystem::Cargo),
        ("mirror.example", "/fedora/repodata/repomd.xml", Ecosystem::Dnf),
        ("mirror.example", "/fedora/Packages/b/bash-5.2.15-3.fc38.x86_64.rpm", Ecosystem::Dnf),
        ("dl-cdn.alpinelinux.org", "/alpine/v3.19/main/x86_64/APKINDEX.tar.gz", Ecosystem::Apk),
        ("repo1.maven.org", "/maven2/junit/junit/4.13.2/junit-4.13.2.jar", Ecosystem::Maven),
        ("repo1.maven.org", "/maven2/junit/junit/maven-metadata.xml", Ecosystem::Maven),
        ("proxy.golang.org", "/golang.org/x/text/@v/list", Ecosystem::Go),
        ("registry-1.docker.io", "/v2/library/debian/manifests/bookworm", Ecosystem::Oci),
        ("example.org", "/index.html", Ecosystem::Other),
        ("example.org", "/", Ecosystem::Other),
    ] {
        assert_eq!(ecosystem(host, path), eco, "{host}{path}");
    }
    for eco in Ecosystem::ALL {
        assert_eq!(Ecosystem::from_name(eco.as_str()), Some(eco));
        assert_eq!(Ecosystem::ALL[eco.index()], eco);
    }
    assert_eq!(Ecosystem::from_name("rubygems"), None);
}

fn state(host: &str, path: &str, fresh: bool, since_validated: u64) -> EntryState {
    EntryState {
        class: classify(host, path),
        ecosystem: ecosystem(host, path),
        credentialed: false,
        fresh,
        since_validated: Duration::from_secs(since_validated),
    }
}

/// What apt, pip, npm and cargo send on index requests (apt: `max-age=0`; pip: `max-age=0`;
/// old clients: `Pragma: no-cache`), and a plain request.
fn client_headers() -> Vec<HeaderMap> {
    vec![
        headers(&[("cache-control", "max-age=0")]),
        headers(&[("cache-control", "no-cache")]),
        headers(&[("pragma", "no-cache")]),
        headers(&[("cache-control", "max-age=0"), ("pragma", "no-cache")]),
        HeaderMap::new(),
    ]
}

#[test]
fn content_addressed_urls_are_served_whatever_the_client_asks() {
    let rules = RevalidationRules::default();
    let by_hash = format!("/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{HEX}");
    for (host, path) in [
        ("deb.debian.org", by_hash.as_str()),
        ("deb.debian.org", "/debian/pool/main/h/hello/hello_2.10-3_amd64.deb"),
        ("files.pythonhosted.org", "/packages/aa/bb/cc/requests-2.32.3-py3-none-any.whl"),
        ("files.pythonhosted.org", "/packages/source/r/requests/requests-2.32.3.tar.gz"),
        ("registry.npmjs.org", "/left-pad/-/left-pad-1.3.0.tgz"),
        ("registry.npmjs.org", "/@types/node/-/node-20.0.0.tgz"),
        ("static.crates.io", "/crates/cfg-if/cfg-if-1.0.0.crate"),
        ("mirror.example", "/fedora/Packages/b/bash-5.2.15-3.fc38.x86_64.rpm"),
        ("repo1.maven.org", "/maven2/junit/junit/4.13.2/junit-4.13.2.jar"),
        ("proxy.golang.org", "/golang.org/x/text/@v/v0.14.0.zip"),
    ] {
        assert_eq!(classify(host, path), Class::Immutable, "{host}{path}");
        for req in client_headers() {
            // Stored days ago: an immutable URL never needs the origin while fresh.
            assert_eq!(entry_use(&req, &state(host, path, true, 86_400), &rules), EntryUse::Serve, "{host}{path} {req:?}");
        }
        // Past its freshness (immutable_ttl, or the origin's no-cache): asked again.
        assert_eq!(entry_use(&HeaderMap::new(), &state(host, path, false, 86_400), &rules), EntryUse::Revalidate);
    }
}

#[test]
fn mutable_indexes_are_revalidated_when_asked_but_one_validation_answers_a_window() {
    let rules = RevalidationRules::default();
    for (host, path) in [
        ("deb.debian.org", "/debian/dists/bookworm/InRelease"),
        ("deb.debian.org", "/debian/dists/bookworm/Release"),
        ("deb.debian.org", "/debian/dists/bookworm/main/binary-amd64/Packages.xz"),
        ("pypi.org", "/simple/requests/"),
        ("registry.npmjs.org", "/left-pad"),
        ("registry.npmjs.org", "/@types%2fnode"),
        ("index.crates.io", "/3/c/cfg-if"),
        ("index.crates.io", "/config.json"),
    ] {
        assert_eq!(classify(host, path), Class::Mutable, "{host}{path}");
        for req in client_headers() {
            let asks = client_max_age(&req).is_some();
            // Validated 2 s ago: inside the 5 s window, served to everyone.
            assert_eq!(entry_use(&req, &state(host, path, true, 2), &rules), EntryUse::Serve, "{host}{path} {req:?}");
            // Validated 30 s ago, still fresh: revalidated only for clients that ask.
            let expected = if asks { EntryUse::Revalidate } else { EntryUse::Serve };
            assert_eq!(entry_use(&req, &state(host, path, true, 30), &rules), expected, "{host}{path} {req:?}");
            // Stale: always revalidated.
            assert_eq!(entry_use(&req, &state(host, path, false, 2), &rules), EntryUse::Revalidate);
        }
    }
    // A client's max-age=n counts from the last validation, never below the window.
    let path = "/simple/requests/";
    let max_age_60 = headers(&[("cache-control", "max-age=60")]);
    assert_eq!(entry_use(&max_age_60, &state("pypi.org", path, true, 59), &rules), EntryUse::Serve);
    assert_eq!(entry_use(&max_age_60, &state("pypi.org", path, true, 61), &rules), EntryUse::Revalidate);
    let window_0 = RevalidationRules { window: Duration::ZERO, ..RevalidationRules::default() };
    let max_age_0 = headers(&[("cache-control", "max-age=0")]);
    assert_eq!(entry_use(&max_age_0, &state("pypi.org", path, true, 1), &window_0), EntryUse::Revalidate);
    // Pragma only counts without Cache-Control (RFC 9111 §5.4).
    assert_eq!(client_max_age(&headers(&[("pragma", "no-cache"), ("cache-control", "max-age=60")])), Some(Duration::from_secs(60)));
    assert_eq!(client_max_age(&headers(&[("pragma", "x, No-Cache")])), Some(Duration::ZERO));
    assert_eq!(client_max_age(&headers(&[("cache-control", "public")])), None);
}

#[test]
fn an_index_max_age_serves_indexes_of_that_ecosystem_up_to_that_age() {
    let mut rules = RevalidationRules::default();
    rules.index_max_age[Ecosystem::Apt.index()] = Duration::from_secs(300);
    let in_release = ("deb.debian.org", "/debian/dists/bookworm/InRelease");
    let max_age_0 = headers(&[("cache-control", "max-age=0")]);
    // Stale by the origin's headers and asked fresh by apt: still served within 300 s.
    assert_eq!(entry_use(&max_age_0, &state(in_release.0, in_release.1, false, 299), &rules), EntryUse::Serve);
    assert_eq!(entry_use(&max_age_0, &state(in_release.0, in_release.1, false, 301), &rules), EntryUse::Revalidate);
    // Other ecosystems keep the usual rules.
    assert_eq!(entry_use(&max_age_0, &state("pypi.org", "/simple/requests/", false, 10), &rules), EntryUse::Revalidate);
    // Unknown URLs of the same layout are not indexes.
    assert_eq!(entry_use(&max_age_0, &state("deb.debian.org", "/debian/README", false, 10), &rules), EntryUse::Revalidate);
}

#[test]
fn credentialed_entries_are_always_revalidated_with_the_requesters_credentials() {
    let rules = RevalidationRules { index_max_age: [Duration::from_secs(3600); Ecosystem::ALL.len()], ..RevalidationRules::default() };
    for (host, path) in [("static.crates.io", "/crates/cfg-if/cfg-if-1.0.0.crate"), ("pypi.org", "/simple/requests/")] {
        let s = EntryState { credentialed: true, ..state(host, path, true, 0) };
        for req in client_headers() {
            assert_eq!(entry_use(&req, &s, &rules), EntryUse::Revalidate, "{host}{path}");
        }
    }
}

#[test]
fn unknown_urls_follow_the_client_and_the_window() {
    let rules = RevalidationRules::default();
    let max_age_0 = headers(&[("cache-control", "max-age=0")]);
    assert_eq!(entry_use(&max_age_0, &state("example.org", "/file.bin", true, 1), &rules), EntryUse::Serve);
    assert_eq!(entry_use(&max_age_0, &state("example.org", "/file.bin", true, 10), &rules), EntryUse::Revalidate);
    assert_eq!(entry_use(&HeaderMap::new(), &state("example.org", "/file.bin", true, 10), &rules), EntryUse::Serve);
}

proptest! {
    #[test]
    fn parsers_never_panic(value in text(), other in text(), raw in proptest::collection::vec(any::<u8>(), 0..60), len in any::<u64>()) {
        let _ = parse_http_date(&value);
        let _ = classify(&other, &value);
        let _ = url_digest(&value);
        let _ = is_auth_endpoint(&value);
        let _ = has_credentials(&value, &HeaderMap::new());
        let _ = primary_key(Scheme::Https, &other, &value);
        if let Ok(v) = HeaderValue::from_str(&value) {
            exercise(v, &value, &other, len);
        }
        if let Ok(v) = HeaderValue::from_bytes(&raw) {
            exercise(v, &value, &other, len);
        }
    }

    #[test]
    fn ranges_stay_inside_the_body(first in proptest::option::of(0u64..50), last in proptest::option::of(0u64..50), len in 0u64..40) {
        let spec = format!("bytes={}-{}", first.map(|n| n.to_string()).unwrap_or_default(), last.map(|n| n.to_string()).unwrap_or_default());
        if let RangeAnswer::Partial { start, end_inclusive } = r(&spec, len) {
            prop_assert!(start <= end_inclusive && end_inclusive < len);
        }
    }
}
