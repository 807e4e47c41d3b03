//! Downloading the URLs of a classic build's `ADD <url>` in dockerd's place.
//!
//! dockerd would fetch them itself, from the host's network namespace, with nothing refused: the
//! host's loopback services, its private networks and the cloud metadata endpoint would all be
//! reachable from a job's Dockerfile. ctproxy fetches them instead, with the same rules as its registry
//! proxy (`transport::ssrf`): names are resolved to public addresses only, IP literals (also in
//! redirects) are checked, no HTTP proxy is used; redirects are followed as Go's client does (at most
//! 10). The body goes to an unlinked temporary file, never to memory, within a byte budget per build.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::docker::buildctx::add::{download_filename, download_mtime, AddSource};
use crate::transport::ssrf::{internal_address, is_internal, PublicOnly};

/// Bytes one build may download through `ADD <url>`, all URLs together.
pub const MAX_ADD_BYTES: u64 = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A stalled download fails after this.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// Go's client stops after this many redirects.
const MAX_REDIRECTS: usize = 10;
/// The part of an error answer's body quoted back (dockerd quotes all of it).
const ERROR_BODY: usize = 1024;

/// Why a redirect was not followed.
#[derive(Debug, thiserror::Error)]
enum RedirectRefused {
    #[error("stopped after {MAX_REDIRECTS} redirects")]
    TooMany,
    #[error("redirected to {0}, which is not an http(s) URL")]
    Scheme(String),
    #[error("redirected to {0}, an internal address")]
    Internal(String),
}

/// The HTTP client for downloads, built once.
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT.get_or_init(build_client).as_ref().map_err(Clone::clone)
}

fn build_client() -> Result<reqwest::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let redirects = reqwest::redirect::Policy::custom(|attempt| match redirect_refusal(attempt.url(), attempt.previous().len()) {
        Some(refusal) => attempt.error(refusal),
        None => attempt.follow(),
    });
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(redirects)
        .no_proxy()
        .dns_resolver(Arc::new(PublicOnly::new(None)))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("ctproxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// Why a redirect to `url`, after `hops` requests, is not followed (host names are left to the
/// resolver, which refuses internal addresses).
fn redirect_refusal(url: &reqwest::Url, hops: usize) -> Option<RedirectRefused> {
    if hops >= MAX_REDIRECTS {
        return Some(RedirectRefused::TooMany);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Some(RedirectRefused::Scheme(url.to_string()));
    }
    internal_host(url).then(|| RedirectRefused::Internal(url.to_string()))
}

/// Whether a URL's host is an IP literal on an internal address (names are left to the resolver).
fn internal_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => is_internal(ip.into()),
        Some(url::Host::Ipv6(ip)) => is_internal(ip.into()),
        Some(url::Host::Domain(_)) => false,
        None => true,
    }
}

/// A download whose answer has begun: what dockerd would name and date the file.
pub struct Started {
    /// `None`: dockerd could not determine a file name either.
    pub filename: Option<String>,
    pub mtime: u64,
    response: reqwest::Response,
}

/// Sends the request for `src` and reads the answer's head. Every error says why, for the client.
pub async fn start(src: &AddSource) -> Result<Started, String> {
    let url = reqwest::Url::parse(&src.url).map_err(|e| format!("invalid URL: {e}"))?;
    if internal_host(&url) {
        return Err(format!("{} is an internal address; only public addresses may be downloaded from", src.host));
    }
    // ctproxy's URL parser must read the host and port as Go's did (dockerd would have fetched that).
    let default_port = if src.url.starts_with("https://") { 443 } else { 80 };
    if !url.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&src.host))
        || url.port_or_known_default() != Some(src.port.unwrap_or(default_port))
    {
        return Err("its host is read differently by ctproxy's HTTP client than by dockerd's".into());
    }
    let response = client()?.get(url).send().await.map_err(describe)?;
    let status = response.status();
    if status.as_u16() >= 400 {
        let mut body = Vec::new();
        let mut response = response;
        while let Ok(Some(chunk)) = response.chunk().await {
            body.extend_from_slice(&chunk);
            if body.len() >= ERROR_BODY {
                body.truncate(ERROR_BODY);
                break;
            }
        }
        let reason = status.canonical_reason().map_or_else(|| status.as_str().to_owned(), |r| format!("{} {r}", status.as_str()));
        return Err(format!("failed to GET {} with status {reason}: {}", src.url, String::from_utf8_lossy(&body).trim()));
    }
    let header = |name: reqwest::header::HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let filename = download_filename(&src.path, header(reqwest::header::CONTENT_DISPOSITION).as_deref())?;
    let mtime = download_mtime(header(reqwest::header::LAST_MODIFIED).as_deref());
    Ok(Started { filename, mtime, response })
}

impl Started {
    /// Streams the body into an unlinked temporary file, taking its size from `budget`. Returns the
    /// file, positioned at its start, and its size.
    pub async fn save(mut self, budget: Arc<AtomicU64>) -> Result<(tokio::fs::File, u64), String> {
        let over = || format!("the downloads of this build exceed {MAX_ADD_BYTES} bytes");
        if let Some(len) = self.response.content_length() {
            if len > budget.load(Ordering::Relaxed) {
                return Err(over());
            }
        }
        let mut file = temp_file().await.map_err(|e| format!("cannot create a temporary file: {e}"))?;
        let mut size = 0u64;
        while let Some(chunk) = self.response.chunk().await.map_err(describe)? {
            let n = chunk.len() as u64;
            budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(n)).map_err(|_| over())?;
            file.write_all(&chunk).await.map_err(|e| format!("cannot write a temporary file: {e}"))?;
            size += n;
        }
        file.flush().await.map_err(|e| format!("cannot write a temporary file: {e}"))?;
        file.seek(std::io::SeekFrom::Start(0)).await.map_err(|e| format!("cannot read a temporary file: {e}"))?;
        Ok((file, size))
    }
}

/// A new file in the temporary directory, readable by ctproxy only, already unlinked: nothing is
/// left behind whatever happens to the build.
async fn temp_file() -> std::io::Result<tokio::fs::File> {
    let mut random = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random).map_err(|_| std::io::Error::other("no randomness"))?;
    let name: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let path = std::env::temp_dir().join(format!(".ctproxy-add-{}-{name}", std::process::id()));
    let file = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path).await?;
    tokio::fs::remove_file(&path).await?;
    Ok(file)
}

/// A failed download, with the resolver's or the redirect policy's refusal when there is one.
fn describe(e: reqwest::Error) -> String {
    if let Some(refusal) = internal_address(&e) {
        return format!("{refusal}; only public addresses may be downloaded from");
    }
    crate::transport::ssrf::describe(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    #[test]
    fn redirects_to_internal_addresses_are_not_followed() {
        assert!(redirect_refusal(&url("https://deb.debian.org/x"), 0).is_none());
        // Names are judged by the resolver, not here.
        assert!(redirect_refusal(&url("http://localhost/x"), 0).is_none());
        for bad in
            ["http://127.0.0.1/x", "http://[::1]/x", "http://169.254.169.254/", "http://10.0.0.1/", "http://0x7f.1/", "file:///etc/passwd"]
        {
            assert!(redirect_refusal(&url(bad), 1).is_some(), "{bad}");
        }
        assert!(matches!(redirect_refusal(&url("https://deb.debian.org/x"), MAX_REDIRECTS), Some(RedirectRefused::TooMany)));
    }

    #[tokio::test]
    async fn internal_addresses_are_refused_before_any_request() {
        let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        trap.set_nonblocking(true).expect("nonblocking");
        let port = trap.local_addr().expect("addr").port();
        for u in [format!("http://127.0.0.1:{port}/x"), format!("http://localhost:{port}/x"), format!("http://[::ffff:127.0.0.1]:{port}/x")]
        {
            let src = crate::docker::buildctx::add::parse_add_url(&u).expect("parse");
            let err = start(&src).await.err().expect("refused");
            assert!(err.contains("public addresses"), "{u}: {err}");
        }
        assert!(trap.accept().is_err(), "something connected to the loopback listener");
    }

    #[tokio::test]
    async fn temporary_files_are_private_and_unlinked() {
        use std::os::unix::fs::PermissionsExt;
        let f = temp_file().await.expect("temp file");
        let meta = f.metadata().await.expect("metadata");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&meta), 0);
    }
}
