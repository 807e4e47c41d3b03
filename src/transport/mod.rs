//! Layer 0, transport: sockets in (listeners) and sockets out (the upstream dockerd).
//!
//! Everything above this layer sees a connection as an [`AsyncRead`](tokio::io::AsyncRead) + [`AsyncWrite`](tokio::io::AsyncWrite) byte stream plus
//! a [`PeerInfo`] saying who is on the other end. Unix sockets, TCP and TLS are interchangeable here, so
//! the HTTP layer never branches on the kind of socket.

pub mod listener;
pub mod ssrf;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use crate::config::{ListenAddr, UpstreamAddr};
pub use listener::{Accepted, Listener, PeerAddr, PeerInfo, TlsClientId, UnixSocketOptions};
pub use stream::ClientStream;
pub use upstream::Connector;

/// Errors of the transport layer: binding, accepting, connecting, TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("unix socket {path}: {what}: {source}")]
    UnixSetup { path: String, what: &'static str, source: std::io::Error },
    #[error("unknown {kind} {name:?}")]
    UnknownId { kind: &'static str, name: String },
    #[error("TLS material {path}: {reason}")]
    TlsMaterial { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid address {0:?}: expected unix:///path or tcp://host:port")]
    Address(String),
}

impl From<crate::config::AddressError> for TransportError {
    fn from(e: crate::config::AddressError) -> TransportError {
        TransportError::Address(e.0)
    }
}
