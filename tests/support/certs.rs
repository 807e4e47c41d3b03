//! Test PKI with rcgen: a CA, a server certificate for 127.0.0.1 and client certificates, written as
//! PEM files in the layout `docker --tlsverify` expects (`ca.pem`, `cert.pem`, `key.pem`).
//!
//! Included by the tests that need it with `#[path = "support/certs.rs"] mod certs;`.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

/// Paths of one certificate, its key and the CA that signed it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The directory holding `ca.pem`, `cert.pem` and `key.pem` (for `docker --tlsverify` or `DOCKER_CERT_PATH`).
    pub dir: PathBuf,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, dir: &Path, params: CertificateParams) -> Issued {
        std::fs::create_dir_all(dir).expect("cert dir");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let issued = Issued { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem"), dir: dir.to_owned() };
        std::fs::write(&issued.ca, self.cert.pem()).expect("write ca.pem");
        std::fs::write(&issued.cert, cert.pem()).expect("write cert.pem");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key.pem");
        issued
    }

    /// A server certificate for `127.0.0.1` and `localhost`, written into `dir`.
    pub fn server(&self, dir: &Path) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.distinguished_name.push(DnType::CommonName, "ctproxy-test-server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, params)
    }

    /// A client certificate with common name `cn` and the DNS subjectAltNames `sans`, written into `dir`.
    pub fn client(&self, dir: &Path, cn: &str, sans: &[&str]) -> Issued {
        let mut params = CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, params)
    }
}
