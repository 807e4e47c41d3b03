//! The HTTP-caching decisions of the shared package cache: what bypasses it, what may be stored and
//! for how long, how entries are keyed, and how a stored entry answers conditional and range requests.
//!
//! Pure functions over `http` types, with no I/O and no clock, so every rule of
//! `docs/caching.md` §5, §8 and §12 (rules 7–11, 17) is decided here and unit-tested here. The cache
//! is shared by every tenant's CI jobs, so each rule leans towards "not shared": when in doubt a
//! request bypasses, a response is not stored, a URL is not immutable, and a validator does not match.
//! The price of a wrong "no" is one extra upstream fetch; the price of a wrong "yes" is one tenant's
//! bytes served to another, or a package index that stays stale.
//!
//! - [`request_bypass`] and [`has_credentials`]: what a request says before anything is looked up;
//! - [`classify`] and [`storable`]: immutable artifact or mutable index, and the storage decision;
//! - [`primary_key`] and [`vary_key`]: the two halves of a cache key;
//! - [`not_modified`], [`range`]: answering `If-None-Match`/`If-Modified-Since` and `Range` from an entry;
//! - [`url_digest`]: the sha256 a content-addressed URL promises, to verify a body before publishing it;
//! - [`replayed_headers`]: what of a stored response is sent again.

use std::fmt;
use std::time::{Duration, SystemTime};

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, DATE, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, PROXY_AUTHORIZATION, RANGE, SET_COOKIE, VARY,
};
use hyper::{Method, StatusCode};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31 seconds (about 68 years).
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// The scheme of an intercepted request: the same URL over HTTP and HTTPS are different entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(&self) -> &'static str {
        match self {
            Scheme::Http => "80",
            Scheme::Https => "443",
        }
    }
}

// === Requests ===

/// Why a request is passed through without the cache (also a metrics and log label, see [`Bypass::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bypass {
    /// Not GET or HEAD.
    Method,
    /// The request says `Cache-Control: no-store`.
    RequestNoStore,
    /// A token, login or account endpoint (see [`is_auth_endpoint`]): its answers are per-user secrets.
    AuthEndpoint,
}

impl Bypass {
    pub fn as_str(&self) -> &'static str {
        match self {
            Bypass::Method => "method",
            Bypass::RequestNoStore => "request-no-store",
            Bypass::AuthEndpoint => "auth-endpoint",
        }
    }
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a request must go upstream without the cache, and why. `path` may carry a query.
///
/// Only GET and HEAD are served from the cache; a request's `Cache-Control: no-store` is honoured;
/// token and login endpoints ([`is_auth_endpoint`]) always pass through (rpardini #1/#5 cached `/token`).
/// A request's `no-cache` or `max-age=0` does not bypass: it asks for revalidation, the caller's job.
pub fn request_bypass(method: &Method, path: &str, headers: &HeaderMap) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if is_auth_endpoint(path) {
        return Some(Bypass::AuthEndpoint);
    }
    if CacheControl::parse(headers).no_store {
        return Some(Bypass::RequestNoStore);
    }
    None
}

/// Last path segments that name a token, login or account endpoint, compared case-insensitively:
/// OCI token services (`auth.docker.io/token`, `ghcr.io/token`, `gcr.io/v2/token`, Harbor
/// `/service/token`, Quay `/v2/auth`, GitLab `/jwt/auth`), OAuth/OIDC (`/oauth/token`,
/// `/login/oauth/access_token`, `/protocol/openid-connect/auth`), npm (`/-/npm/v1/login`, `/-/npm/v1/tokens`)
/// and crates.io (`/api/v1/tokens`). A package of the same name (npm `token`, `login`) is only a miss.
const AUTH_LAST_SEGMENTS: &[&str] = &["token", "tokens", "access_token", "auth", "authorize", "login", "logout", "whoami"];

/// Path segments that make the whole subtree an OAuth endpoint, wherever they are.
const AUTH_ANY_SEGMENTS: &[&str] = &["oauth", "oauth2"];

/// Path prefixes of account APIs: all of npm's top-level `/-/` API (`/-/user/org.couchdb.user:<name>`,
/// `/-/whoami`, `/-/v1/login`, `/-/v1/done`, `/-/npm/v1/...`; tarballs are `/<pkg>/-/..`, never at the
/// root), crates.io's `/api/v1/me`, PyPI's trusted-publishing `/_/oidc/`.
const AUTH_PREFIXES: &[&str] = &["/-/", "/api/v1/me", "/_/oidc/"];

/// Whether `path` (a query is ignored, `%XX` escapes are decoded) is a token, login or account endpoint, never cached nor stored.
///
/// The list (`AUTH_LAST_SEGMENTS`, `AUTH_ANY_SEGMENTS`, `AUTH_PREFIXES`) is deliberately broad:
/// a false positive costs one miss, a false negative can hand one tenant's token to another.
pub fn is_auth_endpoint(path: &str) -> bool {
    let path = percent_decode_lossy(strip_query(path)).to_ascii_lowercase();
    if AUTH_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
        return true;
    }
    let mut segments = path.split('/').filter(|s| !s.is_empty()).peekable();
    let mut last = "";
    while let Some(segment) = segments.next() {
        if AUTH_ANY_SEGMENTS.contains(&segment) {
            return true;
        }
        if segments.peek().is_none() {
            last = segment;
        }
    }
    AUTH_LAST_SEGMENTS.contains(&last)
}

/// Request headers that carry credentials: the standard ones, and the token headers of GitLab
/// (`Private-Token`, `Job-Token`, `Deploy-Token`), Artifactory (`X-JFrog-Art-Api`) and common APIs.
const CREDENTIAL_HEADERS: &[&str] =
    &["private-token", "job-token", "deploy-token", "x-api-key", "x-auth-token", "x-jfrog-art-api", "x-registry-auth"];

/// Query parameter names (lowercase, percent-decoded) that carry a credential or a signature:
/// OAuth, presigned S3/GCS/Azure/CloudFront URLs, API keys.
const CREDENTIAL_PARAMS: &[&str] = &["sig", "auth", "key", "apikey", "api_key", "api-key", "jwt", "key-pair-id", "policy", "sessionid"];

/// Substrings of query parameter names that mark a credential (`access_token`, `X-Amz-Security-Token`,
/// `X-Amz-Signature`, `X-Goog-Credential`, `client_secret`, `password`, ...).
const CREDENTIAL_PARAM_PARTS: &[&str] = &["token", "signature", "credential", "secret", "password", "passwd"];

/// Whether a request carries credentials: `Authorization`, `Proxy-Authorization`, `Cookie`, a token
/// header (`CREDENTIAL_HEADERS`), or a query parameter that looks like a token or a URL signature
/// (`CREDENTIAL_PARAMS`, `CREDENTIAL_PARAM_PARTS`). A response to such a request is only served
/// to someone else after an upstream check with their own credentials (`docs/caching.md` rule 10).
pub fn has_credentials(path_and_query: &str, headers: &HeaderMap) -> bool {
    if [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE].iter().any(|name| headers.contains_key(name))
        || CREDENTIAL_HEADERS.iter().any(|name| headers.contains_key(*name))
    {
        return true;
    }
    let Some((_, query)) = path_and_query.split_once('?') else { return false };
    let query = query.split_once('#').map_or(query, |(query, _)| query);
    query.split(['&', ';']).any(|pair| {
        let name = percent_decode_lossy(pair.split_once('=').map_or(pair, |(name, _)| name)).to_ascii_lowercase();
        CREDENTIAL_PARAMS.contains(&name.as_str()) || CREDENTIAL_PARAM_PARTS.iter().any(|part| name.contains(part))
    })
}

// === Cache-Control ===

/// The `Cache-Control` directives the cache acts on, from a request or a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    /// Also set by a qualified `no-cache="field"`: the whole response is then revalidated.
    pub no_cache: bool,
    /// Also set by a qualified `private="field"`: a shared cache never stores it.
    pub private: bool,
    pub public: bool,
    /// Also set by `proxy-revalidate`, which means the same to a shared cache.
    pub must_revalidate: bool,
    pub immutable: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
}

impl CacheControl {
    /// Parses every `Cache-Control` field line as one comma-separated list (commas inside quoted
    /// values do not split). Directive names are case-insensitive; values may be quoted.
    ///
    /// Garbage is ignored: unknown directives, and ages that are not delta-seconds (`max-age=abc`,
    /// `max-age=-1`, `max-age=`). Ages too large are 2^31 s (RFC 9111 §1.2.2). On duplicates, flags
    /// are the most restrictive (any occurrence sets them) and an age is the first valid occurrence
    /// (RFC 9111 §4.2.1 allows "the first"). Undecodable bytes are read lossily, so a line with
    /// `no-store` next to non-UTF-8 bytes still counts.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        let mut cc = CacheControl::default();
        for line in headers.get_all(CACHE_CONTROL) {
            let line = String::from_utf8_lossy(line.as_bytes());
            for directive in split_unquoted_commas(&line) {
                let (name, value) = match directive.split_once('=') {
                    Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                    None => (directive.trim(), None),
                };
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" | "proxy-revalidate" => cc.must_revalidate = true,
                    "immutable" => cc.immutable = true,
                    "max-age" => cc.max_age = cc.max_age.or(value.and_then(delta_seconds)),
                    "s-maxage" => cc.s_maxage = cc.s_maxage.or(value.and_then(delta_seconds)),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// Splits a field value on the commas that are not inside a quoted string (with `\` escapes).
fn split_unquoted_commas(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|part| !part.trim().is_empty()).collect()
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(s)
}

/// RFC 9111 §1.2.2 delta-seconds: digits only; too large saturates at `MAX_DELTA_SECONDS`.
fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)))
}

// === Classification ===

/// How a URL's content changes over time, which sets how long a stored copy is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A versioned or content-addressed artifact: the bytes behind the URL never change.
    Immutable,
    /// An index or metadata file that changes when packages are published.
    Mutable,
    /// Neither is known: the response's own headers decide.
    Unknown,
}

impl Class {
    pub fn as_str(&self) -> &'static str {
        match self {
            Class::Immutable => "immutable",
            Class::Mutable => "mutable",
            Class::Unknown => "unknown",
        }
    }
}

/// Immutable artifact, mutable index, or unknown, by host and path (`docs/caching.md` §5, rule 17).
///
/// `host` may carry a port; `path` may carry a query (ignored: the key keeps it). Hosts with a
/// layout of their own (pypi.org, files.pythonhosted.org, registry.npmjs.org and its mirrors,
/// index.crates.io, static.crates.io) are decided by host. Everything else is decided by path
/// layout, whatever the host, so mirrors and repository managers (Nexus, Artifactory) classify too:
/// - apt: `pool/**/*.deb` (and `.udeb`, `.ddeb`, `.dsc`, source tarballs in `pool/`) and
///   `by-hash/<ALGO>/<hex>` are immutable; everything else under `dists/`, and `InRelease`,
///   `Release(.gpg)`, `Packages*`, `Sources*` anywhere, is mutable;
/// - dnf: `<name>-<ver>-<rel>.<arch>.rpm` and hash-prefixed `repodata/<hex>-*` are immutable;
///   `repomd.xml*`, other `repodata/` files, `metalink`, `mirrorlist` are mutable;
/// - apk: `<name>-<ver>-r<n>.apk` is immutable, `APKINDEX.tar.gz` mutable;
/// - Maven: `<group>/<artifact>/<version>/<artifact>-<version>[-<classifier>].<ext>` is immutable
///   unless the version is a `-SNAPSHOT`; `maven-metadata*` and SNAPSHOT files are mutable;
/// - OCI (`/v2/` anywhere in the path): blobs and manifests by `sha256:`/`sha512:` digest are
///   immutable; tag manifests, `tags/list`, `referrers/`, `_catalog` mutable;
/// - npm tarballs `<pkg>/-/<pkg>-<ver>.tgz`, `<name>/<name>-<ver>.crate`, wheels (`.whl` with a
///   versioned file name), Go `@v/<ver>.{zip,mod,info}` are immutable; `/simple/`, Go `@v/list`
///   and `@latest` mutable.
///
/// Immutable rules check the layout (a version in the file name) because a wrong "immutable" keeps
/// a changed file for [`FreshnessRules::immutable_ttl`]; mutable rules may be broad, since a wrong
/// "mutable" only shortens freshness.
pub fn classify(host: &str, path: &str) -> Class {
    let host = host_without_port(host).to_ascii_lowercase();
    let path = strip_query(path);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match host.trim_end_matches('.') {
        "files.pythonhosted.org" | "test-files.pythonhosted.org" => {
            return if segments.len() >= 2 && segments[0] == "packages" { Class::Immutable } else { Class::Unknown }
        }
        "pypi.org" | "test.pypi.org" => return classify_pypi(&segments),
        "registry.npmjs.org" | "registry.yarnpkg.com" | "registry.npmmirror.com" => return classify_npm(&segments),
        "index.crates.io" => return Class::Mutable,
        "static.crates.io" => {
            return if segments.last().is_some_and(|file| file.ends_with(".crate")) { Class::Immutable } else { Class::Unknown }
        }
        _ => {}
    }
    classify_by_layout(&segments)
}

fn classify_pypi(segments: &[&str]) -> Class {
    match segments {
        ["simple", ..] | ["rss", ..] => Class::Mutable,
        ["pypi", _, "json"] | ["pypi", _, _, "json"] => Class::Mutable,
        _ => Class::Unknown,
    }
}

/// registry.npmjs.org: `/<pkg>` and `/@scope/pkg` (or `/@scope%2fpkg`) are packuments, `/<pkg>/<ver>`
/// and `/<pkg>/latest` version documents (all mutable); `/<pkg>/-/<file>.tgz` tarballs (immutable).
fn classify_npm(segments: &[&str]) -> Class {
    let Some(first) = segments.first() else { return Class::Unknown };
    if first.starts_with('-') {
        return Class::Unknown;
    }
    let name_len = if first.starts_with('@') && !first.to_ascii_lowercase().contains("%2f") { 2 } else { 1 };
    match segments.get(name_len..) {
        Some([]) => Class::Mutable,
        Some([version]) if *version != "-" => Class::Mutable,
        Some(["-", file]) if file.ends_with(".tgz") => Class::Immutable,
        _ => Class::Unknown,
    }
}

/// Files of a Debian pool: binary packages and source packages (a pool file name never changes content).
const DEB_POOL_SUFFIXES: &[&str] = &[".deb", ".udeb", ".ddeb", ".dsc", ".diff.gz", ".tar.gz", ".tar.xz", ".tar.bz2"];

fn classify_by_layout(segments: &[&str]) -> Class {
    let Some((&file, dirs)) = segments.split_last() else { return Class::Unknown };
    if let Some(class) = classify_oci(segments) {
        return class;
    }
    // apt
    if let [.., "by-hash", algo, hex] = segments {
        let hex_len = match algo.to_ascii_lowercase().as_str() {
            "md5sum" => 32,
            "sha1" => 40,
            "sha256" => 64,
            "sha512" => 128,
            _ => 0,
        };
        if hex_len > 0 && is_lower_hex(hex, hex_len) {
            return Class::Immutable;
        }
    }
    if dirs.contains(&"dists")
        || ["InRelease", "Release", "Release.gpg"].contains(&file)
        || file.starts_with("Packages")
        || file.starts_with("Sources")
    {
        return Class::Mutable;
    }
    if dirs.contains(&"pool") && DEB_POOL_SUFFIXES.iter().any(|suffix| file.ends_with(suffix)) {
        return Class::Immutable;
    }
    // dnf
    if dirs.last() == Some(&"repodata") {
        let hash_prefixed = file.split_once('-').is_some_and(|(hash, _)| hash.len() >= 32 && is_lower_hex(hash, hash.len()));
        return if hash_prefixed { Class::Immutable } else { Class::Mutable };
    }
    if file == "metalink" || file == "mirrorlist" {
        return Class::Mutable;
    }
    if is_rpm_file(file) {
        return Class::Immutable;
    }
    // apk
    if file == "APKINDEX.tar.gz" {
        return Class::Mutable;
    }
    if is_apk_file(file) {
        return Class::Immutable;
    }
    // Maven
    if file.starts_with("maven-metadata") {
        return Class::Mutable;
    }
    if let [.., artifact, version, file] = segments {
        if segments.len() >= 4 && is_maven_file(artifact, version, file) {
            return if version.ends_with("-SNAPSHOT") { Class::Mutable } else { Class::Immutable };
        }
    }
    // npm tarball and crate outside their registries (mirrors, Nexus, Artifactory)
    if let [.., package, "-", file] = segments {
        if file.ends_with(".tgz") && file.starts_with(&format!("{package}-")) {
            return Class::Immutable;
        }
    }
    if let [.., name, file] = segments {
        if file.ends_with(".crate") && file.starts_with(&format!("{name}-")) {
            return Class::Immutable;
        }
    }
    // Python wheels: `{dist}-{version}(-{build})?-{python}-{abi}-{platform}.whl`
    if file.ends_with(".whl") && file.matches('-').count() >= 4 {
        return Class::Immutable;
    }
    // Go module proxy
    if dirs.last() == Some(&"@v") {
        if file == "list" {
            return Class::Mutable;
        }
        if [".zip", ".mod", ".info"].iter().any(|ext| file.ends_with(ext)) {
            return Class::Immutable;
        }
    }
    if file == "@latest" || segments.contains(&"simple") {
        return Class::Mutable;
    }
    Class::Unknown
}

/// OCI distribution paths, wherever `/v2/` starts (Artifactory prefixes it with its own path).
fn classify_oci(segments: &[&str]) -> Option<Class> {
    let start = segments.iter().position(|s| *s == "v2")?;
    let api = &segments[start + 1..];
    match api {
        ["_catalog"] => Some(Class::Mutable),
        [name @ .., "tags", "list"] if !name.is_empty() => Some(Class::Mutable),
        [name @ .., "referrers", _] if !name.is_empty() => Some(Class::Mutable),
        [name @ .., "manifests", reference] if !name.is_empty() => {
            Some(if is_oci_digest(reference) { Class::Immutable } else { Class::Mutable })
        }
        [name @ .., "blobs", reference] if !name.is_empty() && is_oci_digest(reference) => Some(Class::Immutable),
        _ => None,
    }
}

/// `sha256:<64 lowercase hex>` or `sha512:<128 lowercase hex>` (the OCI image spec's encodings).
fn is_oci_digest(reference: &str) -> bool {
    match reference.split_once(':') {
        Some(("sha256", hex)) => is_lower_hex(hex, 64),
        Some(("sha512", hex)) => is_lower_hex(hex, 128),
        _ => false,
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `<name>-<version>-<release>.<arch>.rpm`, with a known architecture.
fn is_rpm_file(file: &str) -> bool {
    const ARCHES: &[&str] = &["x86_64", "aarch64", "noarch", "i686", "i386", "ppc64le", "s390x", "armv7hl", "src"];
    let Some(stem) = file.strip_suffix(".rpm") else { return false };
    let Some((nvr, arch)) = stem.rsplit_once('.') else { return false };
    ARCHES.contains(&arch) && nvr.matches('-').count() >= 2
}

/// Alpine's `<name>-<version>-r<n>.apk`.
fn is_apk_file(file: &str) -> bool {
    let Some(stem) = file.strip_suffix(".apk") else { return false };
    let Some((_, release)) = stem.rsplit_once("-r") else { return false };
    !release.is_empty() && release.bytes().all(|b| b.is_ascii_digit()) && stem.matches('-').count() >= 2
}

/// `<artifact>-<version>` followed by `.` or `-` (a classifier), in the `<artifact>/<version>/` directory.
fn is_maven_file(artifact: &str, version: &str, file: &str) -> bool {
    let Some(rest) = file.strip_prefix(artifact).and_then(|rest| rest.strip_prefix('-')) else { return false };
    if version.ends_with("-SNAPSHOT") {
        // Snapshot files are `<artifact>-<base>-<timestamp>-<n>.jar` or `<artifact>-<version>.jar`.
        return rest.starts_with(version.trim_end_matches("-SNAPSHOT"));
    }
    rest.strip_prefix(version).is_some_and(|tail| tail.starts_with('.') || tail.starts_with('-'))
}

// === Ecosystems and the use of a stored entry ===

/// The package ecosystem a URL belongs to: a metrics label, and the unit of
/// [`RevalidationRules::index_max_age`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ecosystem {
    Apt,
    Dnf,
    Apk,
    Pypi,
    Npm,
    Cargo,
    Maven,
    Go,
    Oci,
    Other,
}

impl Ecosystem {
    pub const ALL: [Ecosystem; 10] = [
        Ecosystem::Apt,
        Ecosystem::Dnf,
        Ecosystem::Apk,
        Ecosystem::Pypi,
        Ecosystem::Npm,
        Ecosystem::Cargo,
        Ecosystem::Maven,
        Ecosystem::Go,
        Ecosystem::Oci,
        Ecosystem::Other,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Ecosystem::Apt => "apt",
            Ecosystem::Dnf => "dnf",
            Ecosystem::Apk => "apk",
            Ecosystem::Pypi => "pypi",
            Ecosystem::Npm => "npm",
            Ecosystem::Cargo => "cargo",
            Ecosystem::Maven => "maven",
            Ecosystem::Go => "go",
            Ecosystem::Oci => "oci",
            Ecosystem::Other => "other",
        }
    }

    /// The ecosystem named `name` (as in [`Ecosystem::as_str`]), for the configuration.
    pub fn from_name(name: &str) -> Option<Ecosystem> {
        Ecosystem::ALL.into_iter().find(|e| e.as_str() == name)
    }

    /// Position in [`Ecosystem::ALL`], for per-ecosystem arrays.
    pub fn index(&self) -> usize {
        *self as usize
    }
}

impl fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ecosystem of a URL, by the same host and layout rules as [`classify`] (a URL [`classify`]
/// knows is never `Other`; a URL it does not know may still belong to a known registry host).
pub fn ecosystem(host: &str, path: &str) -> Ecosystem {
    let host = host_without_port(host).to_ascii_lowercase();
    match host.trim_end_matches('.') {
        "files.pythonhosted.org" | "test-files.pythonhosted.org" | "pypi.org" | "test.pypi.org" => return Ecosystem::Pypi,
        "registry.npmjs.org" | "registry.yarnpkg.com" | "registry.npmmirror.com" => return Ecosystem::Npm,
        "index.crates.io" | "static.crates.io" | "crates.io" => return Ecosystem::Cargo,
        _ => {}
    }
    let segments: Vec<&str> = strip_query(path).split('/').filter(|s| !s.is_empty()).collect();
    let Some((&file, dirs)) = segments.split_last() else { return Ecosystem::Other };
    if classify_oci(&segments).is_some() {
        return Ecosystem::Oci;
    }
    if dirs.contains(&"by-hash")
        || dirs.contains(&"dists")
        || ["InRelease", "Release", "Release.gpg"].contains(&file)
        || file.starts_with("Packages")
        || file.starts_with("Sources")
        || (dirs.contains(&"pool") && DEB_POOL_SUFFIXES.iter().any(|suffix| file.ends_with(suffix)))
    {
        return Ecosystem::Apt;
    }
    if dirs.last() == Some(&"repodata") || file == "metalink" || file == "mirrorlist" || is_rpm_file(file) {
        return Ecosystem::Dnf;
    }
    if file == "APKINDEX.tar.gz" || is_apk_file(file) {
        return Ecosystem::Apk;
    }
    if dirs.last() == Some(&"@v") || file == "@latest" {
        return Ecosystem::Go;
    }
    if file.starts_with("maven-metadata") {
        return Ecosystem::Maven;
    }
    if let [.., artifact, version, file] = segments.as_slice() {
        if is_maven_file(artifact, version, file) {
            return Ecosystem::Maven;
        }
    }
    if file.ends_with(".whl") || segments.contains(&"simple") {
        return Ecosystem::Pypi;
    }
    if file.ends_with(".tgz") && dirs.last() == Some(&"-") {
        return Ecosystem::Npm;
    }
    if file.ends_with(".crate") {
        return Ecosystem::Cargo;
    }
    Ecosystem::Other
}

/// How a stored entry answers a request that asks for a fresh copy, and how old an index may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevalidationRules {
    /// A revalidation (or fetch) this recent answers every request that asks for a fresh copy
    /// (`no-cache`, `max-age=0`, `Pragma: no-cache`): apt and pip send `max-age=0` on every index
    /// request, and a client's "fresh" is met by a copy the origin confirmed a moment ago. Concurrent
    /// requests that wait for a revalidation are answered by it whatever this is. Default 5 s.
    pub window: Duration,
    /// Per ecosystem (by [`Ecosystem::index`]): a mutable index validated this recently is served
    /// without asking the origin, whatever the client or the origin's headers say; `ZERO` (the
    /// default) leaves the decision to the usual rules. For admins who accept indexes that many
    /// seconds old in exchange for fewer upstream requests.
    pub index_max_age: [Duration; Ecosystem::ALL.len()],
}

impl Default for RevalidationRules {
    fn default() -> Self {
        RevalidationRules { window: Duration::from_secs(5), index_max_age: [Duration::ZERO; Ecosystem::ALL.len()] }
    }
}

/// What the cache knows of a stored entry when a request for it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryState {
    pub class: Class,
    pub ecosystem: Ecosystem,
    /// Fetched with credentials ([`Storable::credentialed`]).
    pub credentialed: bool,
    /// Within the freshness [`storable`] gave it (extended by each revalidation).
    pub fresh: bool,
    /// Since the origin last sent or confirmed (304) this body.
    pub since_validated: Duration,
}

/// Whether a stored entry is served as it is, or revalidated upstream first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryUse {
    Serve,
    Revalidate,
}

/// The oldest copy (since its last validation) the client accepts: `Some(ZERO)` for `no-cache`,
/// `max-age=0` or `Pragma: no-cache` (without any `Cache-Control`, RFC 9111 §5.4), `Some(n)` for
/// `max-age=n`, `None` when the client leaves it to the cache.
pub fn client_max_age(req: &HeaderMap) -> Option<Duration> {
    let cc = CacheControl::parse(req);
    if cc.no_cache {
        return Some(Duration::ZERO);
    }
    if let Some(seconds) = cc.max_age {
        return Some(Duration::from_secs(seconds));
    }
    let pragma_no_cache = req
        .get_all(hyper::header::PRAGMA)
        .iter()
        .any(|v| String::from_utf8_lossy(v.as_bytes()).split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")));
    (pragma_no_cache && !req.contains_key(CACHE_CONTROL)).then_some(Duration::ZERO)
}

/// Serve a stored entry, or revalidate it upstream first (`docs/cache.md`, "Revalidation"):
///
/// 1. fetched with credentials: always revalidated, with the current requester's credentials;
/// 2. a mutable index of an ecosystem with an `index_max_age` it is within: served;
/// 3. stale by its own freshness: revalidated;
/// 4. immutable (content-addressed or versioned): served, whatever `no-cache`/`max-age` the client
///    sends, since a conditional request could only confirm the same bytes;
/// 5. otherwise the client's limit ([`client_max_age`]), but never below `window`: a client's
///    `max-age=0` is met by a validation that recent.
pub fn entry_use(req: &HeaderMap, state: &EntryState, rules: &RevalidationRules) -> EntryUse {
    if state.credentialed {
        return EntryUse::Revalidate;
    }
    let index_max_age = rules.index_max_age.get(state.ecosystem.index()).copied().unwrap_or(Duration::ZERO);
    if state.class == Class::Mutable && !index_max_age.is_zero() && state.since_validated <= index_max_age {
        return EntryUse::Serve;
    }
    if !state.fresh {
        return EntryUse::Revalidate;
    }
    if state.class == Class::Immutable {
        return EntryUse::Serve;
    }
    match client_max_age(req) {
        Some(limit) if state.since_validated > limit.max(rules.window) => EntryUse::Revalidate,
        _ => EntryUse::Serve,
    }
}

// === Storing ===

/// How long stored responses stay fresh, per [`Class`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshnessRules {
    /// The least an immutable artifact stays fresh, whatever its headers say. Default 30 days.
    pub immutable_ttl: Duration,
    /// The most a mutable index stays fresh, whatever its headers say. Default 60 s.
    pub mutable_ttl: Duration,
    /// The cap on heuristic freshness for [`Class::Unknown`] responses without explicit freshness:
    /// 10 % of `Date - Last-Modified` (RFC 9111 §4.2.2), no more than this; without both dates, 0.
    /// `Duration::ZERO` turns heuristic freshness off. Default 1 day.
    pub default_ttl: Duration,
}

impl Default for FreshnessRules {
    fn default() -> Self {
        FreshnessRules { immutable_ttl: 30 * DAY, mutable_ttl: Duration::from_secs(60), default_ttl: DAY }
    }
}

/// A response that may be stored, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// How long the entry may be served without asking upstream, counted from when it was received
    /// (explicit lifetimes are already reduced by the response's `Age`). Zero: revalidate every time.
    pub fresh_for: Duration,
    pub class: Class,
    /// The request carried credentials ([`has_credentials`]): before serving the entry to anyone,
    /// revalidate upstream with that requester's own credentials (`docs/caching.md` rule 10).
    pub credentialed: bool,
    /// The response said `must-revalidate`/`proxy-revalidate`: never serve it stale, even when
    /// upstream fails.
    pub must_revalidate: bool,
    /// The response's `Vary` names, lowercase, sorted, deduplicated: give them to [`vary_key`].
    pub vary: Vec<HeaderName>,
}

/// Why a response is not stored (also a metrics and log label, see [`NotStorable::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotStorable {
    /// Not a GET (a HEAD response has no body to store).
    Method,
    /// A token or login endpoint ([`is_auth_endpoint`]).
    AuthEndpoint,
    /// Not 200: partial content, redirects (which may point to signed URLs), errors.
    Status,
    /// `Cache-Control: no-store` on the request or the response.
    NoStore,
    /// `Cache-Control: private`: meant for one user, and this cache is shared.
    Private,
    /// The response sets a cookie: it belongs to one session.
    SetCookie,
    /// `Vary: *`: no key can tell the variants apart.
    VaryStar,
    /// The response varies on `Authorization`, `Cookie` or `Proxy-Authorization`: the key would have
    /// to hold a credential.
    VaryCredentials,
    /// A `Vary` line that is not a list of header names.
    VaryInvalid,
    /// HTML where an immutable artifact was expected: a captive portal or an error page
    /// (`docs/caching.md` rule 16).
    UnexpectedHtml,
}

impl NotStorable {
    pub fn as_str(&self) -> &'static str {
        match self {
            NotStorable::Method => "method",
            NotStorable::AuthEndpoint => "auth-endpoint",
            NotStorable::Status => "status",
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::VaryStar => "vary-star",
            NotStorable::VaryCredentials => "vary-credentials",
            NotStorable::VaryInvalid => "vary-invalid",
            NotStorable::UnexpectedHtml => "unexpected-html",
        }
    }
}

impl fmt::Display for NotStorable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a response may be stored in the shared cache, and for how long it is fresh.
///
/// Only a GET answered 200 is stored: never 206, 3xx (signed redirects), 4xx or 5xx; never an auth
/// endpoint's answer, a response with `Set-Cookie`, `no-store` (request or response), `private`,
/// `Vary: *` or a `Vary` on credentials; never HTML for an immutable URL. `no-cache` stores with
/// `fresh_for` 0; `must-revalidate` stores and is reported.
///
/// Explicit freshness is `s-maxage`, else `max-age`, else `Expires - Date` (an `Expires` that does
/// not parse, or without a valid `Date`, means already expired), minus `Age`. Then by class:
/// - Immutable: the larger of explicit and `immutable_ttl` (0 if `no-cache`);
/// - Mutable: explicit or `mutable_ttl`, at most `mutable_ttl`;
/// - Unknown: explicit, else the heuristic of [`FreshnessRules::default_ttl`].
///
/// The caller should add a `Date` to a response that lacks one before asking (RFC 9110 §6.6.1);
/// there is no clock here. A request with credentials is stored with `credentialed: true`; unlike
/// RFC 9111 §3.5 this does not need `public`, because the caller revalidates such entries upstream
/// with each requester's own credentials.
pub fn storable(
    method: &Method,
    host: &str,
    path_and_query: &str,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    rules: &FreshnessRules,
) -> Result<Storable, NotStorable> {
    if method != Method::GET {
        return Err(NotStorable::Method);
    }
    if is_auth_endpoint(path_and_query) {
        return Err(NotStorable::AuthEndpoint);
    }
    if status != StatusCode::OK {
        return Err(NotStorable::Status);
    }
    let cc = CacheControl::parse(resp);
    if cc.no_store || CacheControl::parse(req).no_store {
        return Err(NotStorable::NoStore);
    }
    if cc.private {
        return Err(NotStorable::Private);
    }
    if resp.contains_key(SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let vary = vary_names(resp)?;
    let class = classify(host, path_and_query);
    if class == Class::Immutable && is_html(resp) {
        return Err(NotStorable::UnexpectedHtml);
    }

    let explicit = explicit_lifetime(&cc, resp).map(|lifetime| lifetime.saturating_sub(age(resp)));
    let fresh_for = if cc.no_cache {
        Duration::ZERO
    } else {
        match class {
            Class::Immutable => explicit.unwrap_or(Duration::ZERO).max(rules.immutable_ttl),
            Class::Mutable => explicit.unwrap_or(rules.mutable_ttl).min(rules.mutable_ttl),
            Class::Unknown => explicit.unwrap_or_else(|| heuristic_lifetime(resp, rules.default_ttl)),
        }
    };
    Ok(Storable { fresh_for, class, credentialed: has_credentials(path_and_query, req), must_revalidate: cc.must_revalidate, vary })
}

/// The response's `Vary` names, lowercase, sorted, deduplicated; refused if `*`, credentials, or not names.
fn vary_names(resp: &HeaderMap) -> Result<Vec<HeaderName>, NotStorable> {
    let mut names = Vec::new();
    for line in resp.get_all(VARY) {
        let line = line.to_str().map_err(|_| NotStorable::VaryInvalid)?;
        for name in line.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            if name == "*" {
                return Err(NotStorable::VaryStar);
            }
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| NotStorable::VaryInvalid)?;
            if is_credential_header(&name) {
                return Err(NotStorable::VaryCredentials);
            }
            names.push(name);
        }
    }
    sort_names(&mut names);
    Ok(names)
}

fn sort_names(names: &mut Vec<HeaderName>) {
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
}

fn is_credential_header(name: &HeaderName) -> bool {
    name == AUTHORIZATION || name == PROXY_AUTHORIZATION || name == COOKIE || CREDENTIAL_HEADERS.contains(&name.as_str())
}

fn is_html(resp: &HeaderMap) -> bool {
    resp.get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().to_ascii_lowercase().starts_with("text/html"))
}

fn explicit_lifetime(cc: &CacheControl, resp: &HeaderMap) -> Option<Duration> {
    if let Some(seconds) = cc.s_maxage.or(cc.max_age) {
        return Some(Duration::from_secs(seconds));
    }
    let expires = resp.get(EXPIRES)?;
    // RFC 9111 §5.3: an invalid Expires (notably "0") means already expired.
    let (Some(expires), Some(date)) = (header_date(Some(expires)), header_date(resp.get(DATE))) else {
        return Some(Duration::ZERO);
    };
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// RFC 9111 §4.2.2: a tenth of the time since the last modification, at most `cap`.
fn heuristic_lifetime(resp: &HeaderMap, cap: Duration) -> Duration {
    let (Some(date), Some(modified)) = (header_date(resp.get(DATE)), header_date(resp.get(LAST_MODIFIED))) else {
        return Duration::ZERO;
    };
    (date.duration_since(modified).unwrap_or(Duration::ZERO) / 10).min(cap)
}

fn age(resp: &HeaderMap) -> Duration {
    let seconds = resp.get(AGE).and_then(|value| value.to_str().ok()).and_then(|value| delta_seconds(value.trim()));
    Duration::from_secs(seconds.unwrap_or(0))
}

fn header_date(value: Option<&HeaderValue>) -> Option<SystemTime> {
    parse_http_date(value?.to_str().ok()?)
}

// === Keys ===

/// The primary cache key: `GET <scheme>://<host><path_and_query>`.
///
/// The method is always `GET`, so a HEAD is answered from a GET's entry (HEAD responses are never
/// stored, see [`storable`]). The host is lowercased, without a trailing dot or the scheme's default
/// port; the caller has already checked it equals the SNI and is allowed (`docs/caching.md` rule 1).
/// The path and query are kept exactly as sent: `?a=1` and `?a=2` are different entries, and so are
/// `%7E` and `~` (fewer hits, never a wrong one).
pub fn primary_key(scheme: Scheme, host: &str, path_and_query: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port == scheme.default_port() && (!name.contains(':') || name.ends_with(']')) => name,
        _ => host.as_str(),
    };
    let host = host.trim_end_matches('.');
    let path = if path_and_query.is_empty() { "/" } else { path_and_query };
    format!("GET {}://{host}{path}", scheme.as_str())
}

/// The secondary key: the request's values of the headers a response varies on.
///
/// One `name=value` line per name of `vary` (lowercased, sorted, deduplicated here too), joined by
/// `\n`, which a header value cannot contain; a header absent from the request is its bare `name`,
/// distinct from an empty `name=`. Several field lines are joined with `, `; values are trimmed,
/// whitespace runs become one space, and bytes outside printable ASCII (and `%`) are `%XX`-escaped,
/// so different values never share an entry.
///
/// `Accept-Encoding` is reduced to the set of codings it accepts (q > 0), lowercase and sorted, with
/// `x-gzip` as `gzip` and `identity` dropped: `gzip, br` and `br;q=0.9,gzip` share an entry, while
/// a client that accepts no coding never gets a compressed entry (rule 9). Credential headers (which
/// [`storable`] refuses to vary on) only contribute whether they are present, never their value.
pub fn vary_key(vary: &[HeaderName], req: &HeaderMap) -> String {
    let mut names = vary.to_vec();
    sort_names(&mut names);
    let lines: Vec<String> = names
        .iter()
        .map(|name| {
            let mut values = req.get_all(name).iter().peekable();
            if values.peek().is_none() {
                return name.as_str().to_owned();
            }
            let mut joined = Vec::new();
            for (i, value) in values.enumerate() {
                if i > 0 {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(value.as_bytes());
            }
            let value = if is_credential_header(name) {
                "<present>".to_owned()
            } else if name == ACCEPT_ENCODING {
                accepted_codings(&String::from_utf8_lossy(&joined))
            } else {
                escape_value(&joined)
            };
            format!("{}={value}", name.as_str())
        })
        .collect();
    lines.join("\n")
}

/// The codings an `Accept-Encoding` value accepts, sorted and joined by `,` (`*` stays `*`).
fn accepted_codings(value: &str) -> String {
    let mut codings: Vec<String> = value
        .split(',')
        .filter_map(|element| {
            let mut params = element.split(';');
            let coding = params.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = params.any(|param| {
                param
                    .split_once('=')
                    .is_some_and(|(name, q)| name.trim().eq_ignore_ascii_case("q") && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
            });
            let coding = match coding.as_str() {
                "x-gzip" => "gzip".to_owned(),
                "x-compress" => "compress".to_owned(),
                _ => coding,
            };
            (!refused && !coding.is_empty() && coding != "identity").then_some(coding)
        })
        .collect();
    codings.sort();
    codings.dedup();
    escape_value(codings.join(",").as_bytes())
}

/// Trims, collapses whitespace runs to one space, and `%XX`-escapes bytes outside printable ASCII and `%`.
fn escape_value(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut pending_space = false;
    for &b in bytes {
        if b == b' ' || b == b'\t' {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        if (0x21..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// === Answering from an entry ===

/// An entity tag: weak or strong, and its opaque part with the quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a str,
}

/// The entity tags of a list (`"a", W/"b"`); members that are not entity tags are skipped.
fn entity_tags(mut rest: &str) -> Vec<EntityTag<'_>> {
    let mut tags = Vec::new();
    loop {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return tags;
        }
        let (weak, tag) = match rest.strip_prefix("W/") {
            Some(tag) => (true, tag),
            None => (false, rest),
        };
        if let Some(after_quote) = tag.strip_prefix('"') {
            let Some(end) = after_quote.find('"') else { return tags };
            tags.push(EntityTag { weak, opaque: &tag[..end + 2] });
            rest = &after_quote[end + 1..];
        } else {
            let Some(comma) = rest.find(',') else { return tags };
            rest = &rest[comma + 1..];
        }
    }
}

fn first_entity_tag(value: &str) -> Option<EntityTag<'_>> {
    entity_tags(value).into_iter().next()
}

/// Whether a client's conditional GET or HEAD is answered 304 Not Modified from a stored entry with
/// these validators (RFC 9110 §13.1.2, §13.1.3, §13.2.2).
///
/// `If-None-Match` (all field lines) wins: `*` matches any stored entry, otherwise any listed tag
/// matching the entry's ETag by weak comparison (`W/"x"` matches `"x"`). Only without it,
/// `If-Modified-Since`: the entry's `Last-Modified` is not later than the given date. Unparseable
/// validators never match, so the client gets the full response.
pub fn not_modified(req: &HeaderMap, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let mut if_none_match = req.get_all(IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        let stored = etag.and_then(first_entity_tag);
        return if_none_match.filter_map(|value| value.to_str().ok()).any(|value| {
            value.trim() == "*" || stored.is_some_and(|stored| entity_tags(value).iter().any(|tag| tag.opaque == stored.opaque))
        });
    }
    let since = header_date(req.get(IF_MODIFIED_SINCE));
    let modified = last_modified.and_then(parse_http_date);
    matches!((since, modified), (Some(since), Some(modified)) if modified <= since)
}

/// How to answer a request's `Range` from a stored entry of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole body: no `Range`, or one to ignore.
    Full,
    /// 206 with these bytes.
    Partial { start: u64, end_inclusive: u64 },
    /// 416 with `Content-Range: bytes */<len>`.
    Unsatisfiable,
}

/// Answers a single byte range (RFC 9110 §14): `bytes=a-b`, `bytes=a-`, `bytes=-n`.
///
/// Ignored (Full): several ranges (no multipart answers), another unit, a malformed one (including
/// `5-2`, several `Range` lines, or an `If-Range` that does not hold). `If-Range` holds for a strong
/// ETag equal to the entry's strong ETag, or a date equal to its `Last-Modified`. Unsatisfiable: a
/// first byte at or past the end, or `-0`. A last byte past the end is clamped, and numbers too
/// large for u64 count as "past the end".
pub fn range(req: &HeaderMap, len: u64, etag: Option<&str>, last_modified: Option<&str>) -> RangeAnswer {
    let mut lines = req.get_all(RANGE).iter();
    let (Some(value), None) = (lines.next(), lines.next()) else { return RangeAnswer::Full };
    let Ok(value) = value.to_str() else { return RangeAnswer::Full };
    if let Some(if_range) = req.get(IF_RANGE) {
        if !if_range_holds(if_range, etag, last_modified) {
            return RangeAnswer::Full;
        }
    }
    let Some((unit, specs)) = value.trim().split_once('=') else { return RangeAnswer::Full };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = specs.split(',').map(str::trim).filter(|spec| !spec.is_empty());
    let (Some(spec), None) = (specs.next(), specs.next()) else { return RangeAnswer::Full };
    let Some((first, last)) = spec.split_once('-') else { return RangeAnswer::Full };
    match (digits(first), digits(last)) {
        // `-n`: the last n bytes.
        (None, Some(suffix)) if first.is_empty() => {
            if suffix == 0 || len == 0 {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial { start: len - suffix.min(len), end_inclusive: len - 1 }
            }
        }
        // `a-` and `a-b`.
        (Some(start), end) if end.is_some() || last.is_empty() => {
            if end.is_some_and(|end| end < start) {
                RangeAnswer::Full
            } else if start >= len {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Partial { start, end_inclusive: end.unwrap_or(u64::MAX).min(len - 1) }
            }
        }
        _ => RangeAnswer::Full,
    }
}

/// Digits only, saturating at u64::MAX; `None` if empty or anything else.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

fn if_range_holds(if_range: &HeaderValue, etag: Option<&str>, last_modified: Option<&str>) -> bool {
    let Ok(if_range) = if_range.to_str() else { return false };
    let if_range = if_range.trim();
    if if_range.starts_with('"') || if_range.starts_with("W/") {
        let wanted = first_entity_tag(if_range);
        let stored = etag.and_then(first_entity_tag);
        return matches!((wanted, stored), (Some(w), Some(s)) if !w.weak && !s.weak && w.opaque == s.opaque);
    }
    matches!((parse_http_date(if_range), last_modified.and_then(parse_http_date)), (Some(a), Some(b)) if a == b)
}

// === Integrity and replay ===

/// The sha256 digest a URL addresses, to verify a body before publishing it (`docs/caching.md` rule 8):
/// OCI `/v2/<name>/blobs/sha256:<hex>` and `/v2/<name>/manifests/sha256:<hex>`, apt
/// `/by-hash/SHA256/<hex>`. Lowercase hex only, as both specs write it; a query is ignored.
pub fn url_digest(path: &str) -> Option<[u8; 32]> {
    let segments: Vec<&str> = strip_query(path).split('/').filter(|s| !s.is_empty()).collect();
    let hex = match segments.as_slice() {
        [.., "by-hash", "SHA256", hex] => *hex,
        [.., kind, reference] if *kind == "blobs" || *kind == "manifests" => {
            let start = segments.iter().position(|s| *s == "v2")?;
            // A repository name between `v2` and `blobs`/`manifests`.
            if segments.len() < start + 4 {
                return None;
            }
            reference.strip_prefix("sha256:")?
        }
        _ => return None,
    };
    if !is_lower_hex(hex, 64) {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(digest)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Response headers replayed from a stored entry (`docs/caching.md` rule 15): what describes the body
/// and its validators, and what registry clients check. Not replayed: hop-by-hop headers,
/// `Set-Cookie`, authentication headers, `Date`, `Age` and `Content-Length` (the caller sets them for
/// the answer it sends), and `Accept-Ranges` (the caller answers ranges itself, whatever upstream did).
const REPLAYED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "etag",
    "last-modified",
    "cache-control",
    "expires",
    "vary",
    // Registries: the digest clients verify, the API version dockerd checks, and `tags/list` pagination.
    "docker-content-digest",
    "docker-distribution-api-version",
    "link",
    // Maven Central's checksums.
    "x-checksum-sha1",
    "x-checksum-md5",
    "x-content-type-options",
];

/// The headers of a stored response that are sent again with it, all field lines of each
/// (`REPLAYED_HEADERS`).
pub fn replayed_headers(resp: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in REPLAYED_HEADERS {
        for value in resp.get_all(*name) {
            out.append(HeaderName::from_static(name), value.clone());
        }
    }
    out
}

// === Helpers ===

/// An HTTP date (RFC 9110 §5.6.7): IMF-fixdate, and the obsolete RFC 850 and asctime forms.
/// Surrounding whitespace is ignored; the weekday must be right; dates before 1970 are `None`.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(s.trim()).ok()
}

fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` without the port.
fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Decodes `%XX` escapes; anything else, including broken escapes, is kept as is.
fn percent_decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&high), Some(&low)) => {
                hex_value(high.to_ascii_lowercase()).zip(hex_value(low.to_ascii_lowercase())).map(|(h, l)| (h << 4) | l)
            }
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::UNIX_EPOCH;

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
        let cc =
            CacheControl::parse(&headers(&[("cache-control", "public, MAX-AGE=5, s-maxage=\"7\", must-revalidate, immutable, no-cache")]));
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
        let s = |method: &Method, status: u16| {
            storable(method, "example.com", "/a", &none, StatusCode::from_u16(status).unwrap(), &none, &rules)
        };
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
}
