//! TLS material: server configurations for listeners and client configurations for a remote dockerd.
//!
//! Both follow what the docker CLI expects from `--tlsverify`: the server presents a certificate
//! chain; client certificates, when a CA bundle is configured, are required and verified against it.
//! Only the `ring` provider is compiled in, so the choice of algorithms is made here, once.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::TransportError;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn material_err(path: &Path, reason: impl ToString) -> TransportError {
    TransportError::TlsMaterial { path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads every certificate of a PEM file; an empty file is an error, not an empty chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| material_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| material_err(path, e))?;
    if certs.is_empty() {
        return Err(material_err(path, "no PEM certificate found"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| material_err(path, e))
}

pub fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| material_err(path, e))?;
    }
    Ok(roots)
}

/// A listener's TLS configuration. With `client_ca`, a client without a certificate signed by that
/// CA is refused during the handshake, before any HTTP is read.
pub fn server_config(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, TransportError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(load_roots(ca)?), provider())
                .build()
                .map_err(|e| material_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration used to dial a remote dockerd over TLS (`tcp://host:2376` with `--tlsverify`).
pub fn client_config(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> Result<Arc<rustls::ClientConfig>, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(load_roots(ca)?);
    let config = match cert_and_key {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name to verify the remote dockerd's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TransportError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| TransportError::Address(host.to_owned()))
}

/// The names of a (verified) client certificate: subject common name and subjectAltNames.
/// A certificate that cannot be parsed yields no names, so it can match no identity.
pub fn client_id(cert: &CertificateDer<'_>) -> super::TlsClientId {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return super::TlsClientId::default();
    };
    let common_name = x509.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned);
    let mut alt_names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => alt_names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    super::TlsClientId { common_name, alt_names }
}
