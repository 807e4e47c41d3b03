//! Talking to the real registries: where a domain lives, which addresses may be reached, and
//! authenticating with the credentials of a grant.
//!
//! **SSRF.** The registry domain comes from an image name, i.e. from the user. Unless a domain is
//! listed in `insecure` or `allow_private`, the proxy refuses to connect to loopback, private,
//! link-local and similar addresses: IP literals are checked before a request, and host names are
//! resolved by a resolver that drops such addresses, so a name cannot be re-pointed between a check
//! and the connection (DNS rebinding). The proxy's own address is never an upstream. Redirects are
//! not followed (they are passed to dockerd), and no system HTTP proxy is used.
//!
//! **Auth.** Like dockerd does it: a `/v2/` ping learns the registry's challenge; `Basic` sends the
//! grant's username and password; `Bearer` fetches a token from the realm for the *upstream*
//! repository scope (with the credentials, or anonymously without), cached per (grant, registry,
//! scope) for its lifetime. A grant holding a `registrytoken` sends it directly.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(test)]
use hyper::header::HeaderValue;
use hyper::header::{HeaderMap, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use reqwest::Url;

use super::error::RegistryError;
use super::token::{Grant, TokenId};
use crate::config::RegistryProxyConfig;
use crate::docker::AuthConfig;
pub use crate::transport::ssrf::is_internal;
use crate::transport::ssrf::{describe, internal_address, PublicOnly};

/// How long to wait for a TCP (and TLS) connection to a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A stalled upstream read fails after this; blobs themselves may take as long as they need.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// A registry's `/v2/` challenge rarely changes; re-asked after this.
const CHALLENGE_TTL: Duration = Duration::from_secs(300);
/// Token responses are small; anything bigger is not a token response.
const TOKEN_BODY_MAX: usize = 64 * 1024;
/// Used when a token response gives no `expires_in` (the distribution spec's default).
const DEFAULT_TOKEN_TTL: u64 = 60;

/// What an upstream request authenticates with.
#[derive(Clone)]
enum UpAuth {
    Anonymous,
    Basic(String, String),
    Bearer(String),
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    None,
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Reads the first usable challenge (Bearer preferred) of a response's `WWW-Authenticate` headers.
pub fn parse_challenge(headers: &HeaderMap) -> Challenge {
    let mut basic = false;
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(v) = v.to_str() else { continue };
        let v = v.trim();
        let (scheme, params) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let p = parse_params(params);
            if let Some(realm) = p.get("realm") {
                return Challenge::Bearer { realm: realm.clone(), service: p.get("service").cloned(), scope: p.get("scope").cloned() };
            }
        }
    }
    if basic {
        Challenge::Basic
    } else {
        Challenge::None
    }
}

/// `key="quoted \" value",key2=token` → map (keys lower-cased).
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_owned();
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

struct CachedAuth {
    auth: UpAuth,
    expires: Instant,
}

/// The upstream side: HTTP clients, the allow-lists, and the auth caches.
pub struct Upstreams {
    /// For registries not allow-listed: its resolver refuses internal addresses.
    public: reqwest::Client,
    /// For allow-listed registries (and their realms).
    open: reqwest::Client,
    insecure: HashSet<String>,
    allow_private: HashSet<String>,
    /// The registry proxy's own address: never an upstream, allow-listed or not.
    own: SocketAddr,
    challenges: Mutex<HashMap<String, (Challenge, Instant)>>,
    auth: Mutex<HashMap<(TokenId, String, String), CachedAuth>>,
}

/// Everything needed to send one upstream request, except the body.
pub struct Outgoing {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
}

/// `host[:port]` of a URL as it would be written in the allow-lists.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    }
}

/// Is the URL's registry in `list`? The URL parser drops a scheme's default port, so
/// `reg.lan:443` in the list also matches `https://reg.lan`.
fn listed(list: &HashSet<String>, url: &Url) -> bool {
    list.contains(&authority(url))
        || (url.port().is_none()
            && url.port_or_known_default().is_some_and(|p| list.contains(&format!("{}:{p}", url.host_str().unwrap_or_default()))))
}

impl Upstreams {
    pub fn new(config: &RegistryProxyConfig, own: SocketAddr) -> Result<Upstreams, RegistryError> {
        let tls = tls_config(config)?;
        let build = |resolver: Option<Arc<PublicOnly>>| {
            let mut b = reqwest::Client::builder()
                .tls_backend_preconfigured(tls.clone())
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .user_agent(concat!("ctproxy/", env!("CARGO_PKG_VERSION")));
            if let Some(r) = resolver {
                b = b.dns_resolver(r);
            }
            b.build().map_err(|e| RegistryError::Tls(e.to_string()))
        };
        Ok(Upstreams {
            public: build(Some(Arc::new(PublicOnly::new(Some(own.ip())))))?,
            open: build(None)?,
            insecure: config.insecure.iter().cloned().collect(),
            allow_private: config.allow_private.iter().cloned().collect(),
            own,
            challenges: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL of a registry domain (`docker.io` → `https://registry-1.docker.io`).
    pub fn origin(&self, domain: &str) -> Result<Url, RegistryError> {
        let text = if domain == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else if self.insecure.contains(domain) {
            format!("http://{domain}")
        } else {
            format!("https://{domain}")
        };
        Url::parse(&text).map_err(|_| RegistryError::NameInvalid(domain.to_owned()))
    }

    fn allow_listed(&self, url: &Url) -> bool {
        listed(&self.insecure, url) || listed(&self.allow_private, url)
    }

    /// Refuses URLs the proxy must not fetch: plain HTTP to a registry not listed as insecure, IP
    /// literals on internal addresses, and the proxy itself. Host names are checked at resolution.
    async fn check(&self, url: &Url) -> Result<&reqwest::Client, RegistryError> {
        let auth = authority(url);
        let is_listed = self.allow_listed(url);
        match url.scheme() {
            "https" => {}
            "http" if listed(&self.insecure, url) => {}
            _ => return Err(RegistryError::Denied(format!("{auth}: only https is allowed for registries not listed as insecure"))),
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok();
        if let Some(ip) = literal {
            if !is_listed && (is_internal(ip) || ip == self.own.ip()) {
                return Err(RegistryError::Denied(format!(
                    "registry {auth} is on an internal address; list it in registry_proxy.allow_private"
                )));
            }
        }
        if is_listed {
            // Allow-listed names may be internal, but never the proxy itself (a request loop).
            let addrs: Vec<SocketAddr> = match literal {
                Some(ip) => vec![SocketAddr::new(ip, port)],
                None => tokio::net::lookup_host((host, port)).await.map(|a| a.collect()).unwrap_or_default(),
            };
            let own_any = self.own.ip().is_unspecified();
            if addrs.iter().any(|a| a.port() == self.own.port() && (a.ip() == self.own.ip() || (own_any && is_internal(a.ip())))) {
                return Err(RegistryError::Denied(format!("registry {auth} is the registry proxy itself")));
            }
            return Ok(&self.open);
        }
        Ok(&self.public)
    }

    /// Sends one request upstream with the grant's credentials. `body` is `None` for requests
    /// without one; only those are retried after a 401 (a streamed body cannot be sent twice), so
    /// authentication is settled before a body is sent.
    pub async fn send(
        &self,
        token_id: &TokenId,
        grant: &Grant,
        origin: &Url,
        scope: &str,
        out: Outgoing,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, RegistryError> {
        let client = self.check(&out.url).await?;
        let key = (*token_id, origin.to_string(), scope.to_owned());
        let auth = match self.cached(&key) {
            Some(a) => a,
            None => {
                let (a, ttl) = self.authenticate(grant, origin, scope, None).await?;
                self.remember(key.clone(), a.clone(), ttl);
                a
            }
        };
        let replayable = body.is_none();
        let rsp = self.request(client, &out, &auth, body).await?;
        if rsp.status() != StatusCode::UNAUTHORIZED || !replayable {
            return Ok(rsp);
        }
        // A token that expired early, or a registry that wants another scope: one fresh try.
        let challenge = parse_challenge(rsp.headers());
        if challenge == Challenge::None {
            return Ok(rsp);
        }
        self.forget(&key, origin);
        let (auth, ttl) = self.authenticate(grant, origin, scope, Some(challenge)).await?;
        self.remember(key, auth.clone(), ttl);
        self.request(client, &out, &auth, None).await
    }

    /// Follows a blob's redirect (a registry's `307` to its storage or a CDN) for the blob cache:
    /// without credentials (such URLs are signed for the reader the registry accepted) and with the
    /// same SSRF checks as any upstream.
    pub async fn follow(&self, url: Url) -> Result<reqwest::Response, RegistryError> {
        let client = self.check(&url).await?;
        client.get(url).send().await.map_err(upstream_err)
    }

    async fn request(
        &self,
        client: &reqwest::Client,
        out: &Outgoing,
        auth: &UpAuth,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut req = client.request(out.method.clone(), out.url.clone()).headers(out.headers.clone());
        req = match auth {
            UpAuth::Anonymous => req,
            UpAuth::Basic(u, p) => req.basic_auth(u, Some(p)),
            UpAuth::Bearer(t) => req.bearer_auth(t),
        };
        if let Some(b) = body {
            req = req.body(b);
        }
        req.send().await.map_err(upstream_err)
    }

    fn cached(&self, key: &(TokenId, String, String)) -> Option<UpAuth> {
        let map = self.auth.lock().ok()?;
        map.get(key).filter(|c| c.expires > Instant::now()).map(|c| c.auth.clone())
    }

    fn remember(&self, key: (TokenId, String, String), auth: UpAuth, ttl: Duration) {
        if let Ok(mut map) = self.auth.lock() {
            let now = Instant::now();
            map.retain(|_, c| c.expires > now);
            map.insert(key, CachedAuth { auth, expires: now + ttl });
        }
    }

    fn forget(&self, key: &(TokenId, String, String), origin: &Url) {
        if let Ok(mut map) = self.auth.lock() {
            map.remove(key);
        }
        if let Ok(mut map) = self.challenges.lock() {
            map.remove(origin.as_str());
        }
    }

    /// The registry's challenge from a `/v2/` ping, cached per registry.
    async fn challenge(&self, origin: &Url) -> Result<Challenge, RegistryError> {
        if let Some((c, at)) = self.challenges.lock().ok().and_then(|m| m.get(origin.as_str()).cloned()) {
            if at.elapsed() < CHALLENGE_TTL {
                return Ok(c);
            }
        }
        let url = origin.join("/v2/").map_err(|e| RegistryError::Upstream(e.to_string()))?;
        let client = self.check(&url).await?;
        let rsp = client.get(url).send().await.map_err(upstream_err)?;
        let c = match rsp.status() {
            StatusCode::UNAUTHORIZED => parse_challenge(rsp.headers()),
            s if s.is_success() => Challenge::None,
            s => return Err(RegistryError::Upstream(format!("{origin}v2/ answered {s}"))),
        };
        if let Ok(mut m) = self.challenges.lock() {
            m.insert(origin.to_string(), (c.clone(), Instant::now()));
        }
        Ok(c)
    }

    /// Settles how to authenticate for `scope`; with a `challenge` from a 401, that one is used
    /// (its scope is added to ours: a cross-repository mount asks for the source repository too).
    /// Returns how long the result may be reused.
    async fn authenticate(
        &self,
        grant: &Grant,
        origin: &Url,
        scope: &str,
        challenge: Option<Challenge>,
    ) -> Result<(UpAuth, Duration), RegistryError> {
        let creds = grant.upstream.clone().unwrap_or_default();
        if !creds.registrytoken.is_empty() {
            return Ok((UpAuth::Bearer(creds.registrytoken), CHALLENGE_TTL));
        }
        let challenge = match challenge {
            Some(c) => c,
            None => self.challenge(origin).await?,
        };
        match challenge {
            Challenge::None => Ok((UpAuth::Anonymous, CHALLENGE_TTL)),
            Challenge::Basic => Ok((creds.basic_credentials().map_or(UpAuth::Anonymous, |(u, p)| UpAuth::Basic(u, p)), CHALLENGE_TTL)),
            Challenge::Bearer { realm, service, scope: theirs } => {
                let mut scopes: Vec<&str> = scope.split(' ').filter(|s| !s.is_empty()).collect();
                for s in theirs.as_deref().unwrap_or("").split(' ') {
                    if !s.is_empty() && !scopes.contains(&s) {
                        scopes.push(s);
                    }
                }
                let (token, ttl) = self.fetch_token(&creds, &realm, service.as_deref(), &scopes).await?;
                // Renewed a little early, so a token does not expire between cache and use.
                Ok((UpAuth::Bearer(token), Duration::from_secs(ttl.saturating_sub(10).max(5))))
            }
        }
    }

    /// The token endpoint: GET with basic credentials (or anonymous), or the OAuth refresh-token
    /// POST for an `identitytoken`. Returns the token and its lifetime in seconds.
    async fn fetch_token(
        &self,
        creds: &AuthConfig,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> Result<(String, u64), RegistryError> {
        let mut url = Url::parse(realm).map_err(|_| RegistryError::Upstream(format!("invalid token realm {realm:?}")))?;
        let client = self.check(&url).await?;
        let req = if !creds.identitytoken.is_empty() {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "refresh_token")
                .append_pair("refresh_token", &creds.identitytoken)
                .append_pair("client_id", "ctproxy");
            if let Some(s) = service {
                form.append_pair("service", s);
            }
            if !scopes.is_empty() {
                form.append_pair("scope", &scopes.join(" "));
            }
            client.post(url).header(hyper::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(form.finish())
        } else {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let req = client.get(url);
            match creds.basic_credentials() {
                Some((u, p)) => req.basic_auth(u, Some(p)),
                None => req,
            }
        };
        let rsp = req.send().await.map_err(upstream_err)?;
        let status = rsp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::UpstreamUnauthorized(format!("token endpoint answered {status}")));
        }
        if !status.is_success() {
            return Err(RegistryError::Upstream(format!("token endpoint answered {status}")));
        }
        let body = read_limited(rsp, TOKEN_BODY_MAX).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| RegistryError::Upstream("token endpoint answered no JSON".into()))?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Upstream("token endpoint answered no token".into()))?;
        let ttl = v.get("expires_in").and_then(|e| e.as_u64()).filter(|e| *e > 0).unwrap_or(DEFAULT_TOKEN_TTL);
        Ok((token.to_owned(), ttl))
    }
}

/// Reads a whole (small) response body, refusing more than `max` bytes.
pub async fn read_limited(mut rsp: reqwest::Response, max: usize) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = rsp.chunk().await.map_err(upstream_err)? {
        if out.len() + chunk.len() > max {
            return Err(RegistryError::Upstream(format!("response larger than {max} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A failed upstream exchange: `DENIED` when the resolver refused the address, else a gateway error.
fn upstream_err(e: reqwest::Error) -> RegistryError {
    if let Some(refusal) = internal_address(&e) {
        return RegistryError::Denied(format!(
            "registry {} resolves to no public address; list it in registry_proxy.allow_private if it is meant to be reached",
            refusal.host
        ));
    }
    RegistryError::Upstream(describe(e))
}

/// rustls for upstream registries: the system's roots plus the configured extra CAs, ring provider.
fn tls_config(config: &RegistryProxyConfig) -> Result<rustls::ClientConfig, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    for path in &config.ca {
        for cert in crate::transport::tls::load_certs(path).map_err(|e| RegistryError::Tls(e.to_string()))? {
            roots.add(cert).map_err(|e| RegistryError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The header value of the grant's upstream `Authorization`, for tests of the auth selection.
#[cfg(test)]
fn auth_header(a: &UpAuth) -> Option<HeaderValue> {
    use base64::Engine;
    match a {
        UpAuth::Anonymous => None,
        UpAuth::Basic(u, p) => {
            HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")))).ok()
        }
        UpAuth::Bearer(t) => HeaderValue::from_str(&format!("Bearer {t}")).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull""#,
            ),
        );
        assert_eq!(
            parse_challenge(&h),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/x:pull".into())
            }
        );
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Basic realm="Registry Realm""#));
        assert_eq!(parse_challenge(&h), Challenge::Basic);
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static(r#"bearer realm=http://x/t, service="a \"b\"""#));
        assert_eq!(parse_challenge(&h), Challenge::Bearer { realm: "http://x/t".into(), service: Some("a \"b\"".into()), scope: None });
        assert_eq!(parse_challenge(&HeaderMap::new()), Challenge::None);
        assert_eq!(auth_header(&UpAuth::Basic("a".into(), "b".into())).unwrap(), "Basic YTpi");
    }

    #[tokio::test]
    async fn ssrf_checks() {
        let config: RegistryProxyConfig = toml::from_str(
            r#"
                address = "127.0.0.1:5001"
                insecure = ["127.0.0.1:5000"]
                allow_private = ["10.0.0.1:443"]
            "#,
        )
        .unwrap();
        let u = Upstreams::new(&config, config.address).unwrap();
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(u.origin("docker.io").unwrap().as_str(), "https://registry-1.docker.io/");
        assert_eq!(u.origin("127.0.0.1:5000").unwrap().as_str(), "http://127.0.0.1:5000/");
        assert_eq!(u.origin("reg.io:8443").unwrap().as_str(), "https://reg.io:8443/");
        assert!(u.check(&url("http://127.0.0.1:5000/v2/")).await.is_ok());
        assert!(u.check(&url("https://10.0.0.1:443/v2/")).await.is_ok());
        for bad in [
            "https://127.0.0.1:5002/v2/",
            "https://10.0.0.1:444/v2/",
            "https://169.254.169.254/v2/",
            "https://[::1]/v2/",
            "http://reg.io/v2/",
            "http://127.0.0.1:5001/v2/",
            "ftp://reg.io/",
        ] {
            assert!(matches!(u.check(&url(bad)).await, Err(RegistryError::Denied(_))), "{bad}");
        }
        // The proxy itself, even when allow-listed.
        let config = RegistryProxyConfig { insecure: vec!["127.0.0.1:5001".into()], ..config };
        let u = Upstreams::new(&config, config.address).unwrap();
        assert!(matches!(u.check(&url("http://127.0.0.1:5001/v2/")).await, Err(RegistryError::Denied(_))));
        // Names are judged by the resolver.
        let r = PublicOnly::new(Some("127.0.0.1".parse().unwrap()));
        assert!(reqwest::dns::Resolve::resolve(&r, "localhost".parse().unwrap()).await.is_err());
    }
}
