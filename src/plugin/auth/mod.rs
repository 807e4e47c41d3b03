//! Authentication plugins: establish an [`Identity`] from the connection and the request head.
//!
//! A listener chains any number of them; the first that recognises the request decides. A listener
//! with a chain where nobody recognises the request answers 401; one without a chain treats every
//! caller as `anonymous` (a unix socket's file mode is then the only gate).

mod http;
mod peer;
mod tls_cert;

pub use http::{hash_token, HttpAuth};
pub use peer::UnixPeerAuth;
pub use tls_cert::TlsCertAuth;

use hyper::HeaderMap;

use super::Identity;
use crate::transport::PeerInfo;

/// Why a request was refused authentication (401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
}

/// One way of telling who is calling.
pub trait Authenticator: Send + Sync {
    fn name(&self) -> &str;
    /// `Ok(Some)`: this is who it is. `Ok(None)`: not mine to tell, ask the next one.
    /// `Err`: credentials of my kind were presented and are wrong (no other authenticator is asked).
    fn authenticate(&self, peer: &PeerInfo, headers: &HeaderMap) -> Result<Option<Identity>, AuthError>;
}

/// Runs a chain: the first authenticator that answers decides.
pub fn authenticate(chain: &[std::sync::Arc<dyn Authenticator>], peer: &PeerInfo, headers: &HeaderMap) -> Result<Identity, AuthError> {
    if chain.is_empty() {
        return Ok(Identity::anonymous());
    }
    for a in chain {
        if let Some(id) = a.authenticate(peer, headers)? {
            return Ok(id);
        }
    }
    Err(AuthError::Missing)
}
