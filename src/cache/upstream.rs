//! Fetching from the real origins: where to connect for an intercepted host, with certificates
//! always verified.
//!
//! The host comes from a validated `Host`/SNI that is on the intercepted list; the address is the
//! proxy's own DNS answer (never the container's `/etc/hosts`, which points back at us), or an
//! `origins` override for tests and mirrors. Upstream TLS is verified against the system's roots
//! plus configured extra roots; there is no switch to turn verification off. Redirects are passed
//! to the client, not followed: a redirect to storage carries signed URLs that must not be cached.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::rules::Scheme;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A stalled upstream read fails after this; a large body may take as long as it needs.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream TLS roots: {0}")]
    Roots(String),
    #[error("building the upstream client: {0}")]
    Client(String),
}

/// The client and the address overrides.
pub struct Origins {
    pub client: reqwest::Client,
    overrides: BTreeMap<String, SocketAddr>,
}

impl Origins {
    pub fn new(extra_roots: &[PathBuf], overrides: &BTreeMap<String, SocketAddr>) -> Result<Origins, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for path in extra_roots {
            for cert in crate::transport::tls::load_certs(path).map_err(|e| UpstreamError::Roots(e.to_string()))? {
                roots.add(cert).map_err(|e| UpstreamError::Roots(format!("{}: {e}", path.display())))?;
            }
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| UpstreamError::Roots(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut b = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .pool_max_idle_per_host(32);
        // reqwest resolves per host name; the port of an override goes into the URL (see `url`).
        for (hostport, addr) in overrides {
            let host = hostport.rsplit_once(':').map_or(hostport.as_str(), |(h, _)| h);
            b = b.resolve(host, *addr);
        }
        let client = b.build().map_err(|e| UpstreamError::Client(e.to_string()))?;
        Ok(Origins { client, overrides: overrides.clone() })
    }

    /// The URL to fetch `path_and_query` of `host` from, the client having used `port`.
    /// Without an override only the scheme's standard port is ever used: a client cannot make the
    /// proxy connect to another port of an intercepted host.
    pub fn url(&self, scheme: Scheme, host: &str, port: u16, path_and_query: &str) -> Option<reqwest::Url> {
        let (name, default) = match scheme {
            Scheme::Http => ("http", 80),
            Scheme::Https => ("https", 443),
        };
        let port = match self.overrides.get(&format!("{host}:{port}")) {
            Some(addr) => addr.port(),
            None => default,
        };
        reqwest::Url::parse(&format!("{name}://{host}:{port}{path_and_query}")).ok()
    }
}
