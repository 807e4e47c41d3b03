//! TLS client certificates: the listener's rustls configuration has already verified the chain
//! against its CA; this maps the certificate's common name or a subjectAltName to an identity.

use std::collections::HashMap;
use std::sync::Arc;

use hyper::HeaderMap;

use super::{AuthError, Authenticator};
use crate::plugin::Identity;
use crate::transport::PeerInfo;

pub struct TlsCertAuth {
    name: String,
    /// Certificate name (CN or SAN) → identity.
    subjects: HashMap<String, Arc<str>>,
    /// With no explicit mapping entry, use the common name itself as the identity.
    cn_as_identity: bool,
}

impl TlsCertAuth {
    pub fn new(name: &str, subjects: HashMap<String, String>, cn_as_identity: bool) -> Self {
        let subjects = subjects.into_iter().map(|(k, v)| (k, Arc::from(v))).collect();
        TlsCertAuth { name: name.to_owned(), subjects, cn_as_identity }
    }
}

impl Authenticator for TlsCertAuth {
    fn name(&self) -> &str {
        &self.name
    }

    fn authenticate(&self, peer: &PeerInfo, _: &HeaderMap) -> Result<Option<Identity>, AuthError> {
        let Some(cert) = &peer.tls_client else { return Ok(None) };
        let names = cert.common_name.iter().chain(cert.alt_names.iter());
        for n in names {
            if let Some(id) = self.subjects.get(n) {
                return Ok(Some(Identity { name: id.clone(), via: "tls-cert" }));
            }
        }
        if self.cn_as_identity {
            if let Some(cn) = &cert.common_name {
                return Ok(Some(Identity { name: Arc::from(cn.as_str()), via: "tls-cert" }));
            }
        }
        // A verified certificate that maps to nobody is a wrong credential, not a missing one.
        Err(AuthError::Invalid)
    }
}
