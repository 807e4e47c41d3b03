//! The HTTP caching rules of the shared cache (RFC 9110/9111 as a shared cache must apply them):
//! bypass and credentials, `Cache-Control`, storing and freshness, keys and `Vary`, conditionals
//! and ranges, digests in URLs, replayed headers. See `mod.rs` for the principles.

use std::fmt;
use std::time::{Duration, SystemTime};

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, DATE, EXPIRES,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, PROXY_AUTHORIZATION, RANGE, SET_COOKIE, VARY,
};
use hyper::{Method, StatusCode};

use super::ecosystem::{classify, is_lower_hex, strip_query, Class, Ecosystem};

pub(super) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31 seconds (about 68 years).
pub(super) const MAX_DELTA_SECONDS: u64 = 1 << 31;

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
/// to someone else after an upstream check with their own credentials (`docs/cache.md`).
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
    /// revalidate upstream with that requester's own credentials (`docs/cache.md`).
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
    /// (`docs/cache.md`).
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
/// port; the caller has already checked it equals the SNI and is allowed (`docs/cache.md`).
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

/// The sha256 digest a URL addresses, to verify a body before publishing it (`docs/cache.md`):
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

/// Response headers replayed from a stored entry (`docs/cache.md`): what describes the body
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
