//! Dialing dockerd: a unix socket, plain TCP, or TCP with TLS, as a `DOCKER_HOST`-style URL says.
//!
//! [`Connector`] is the `tower::Service<Uri>` that hyper-util's pooled client calls whenever it needs a
//! fresh connection. It ignores the URI: every request goes to the one configured daemon, so the pool
//! keeps one set of idle connections to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use super::{ClientStream, TransportError, UpstreamAddr};

/// Opens connections to dockerd, with a bounded connect time so a dead daemon gives an error, never a hang.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    addr: UpstreamAddr,
    tls: Option<(TlsConnector, rustls_pki_types::ServerName<'static>)>,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(addr: UpstreamAddr, tls: Option<Arc<rustls::ClientConfig>>, connect_timeout: Duration) -> Result<Self, TransportError> {
        let tls = match (&addr, tls) {
            (UpstreamAddr::Tcp { host, .. }, Some(cfg)) => Some((TlsConnector::from(cfg), super::tls::server_name(host)?)),
            _ => None,
        };
        Ok(Connector { inner: Arc::new(ConnectorInner { addr, tls, connect_timeout }) })
    }

    pub fn addr(&self) -> &UpstreamAddr {
        &self.inner.addr
    }

    /// Whether both are the same connector (clones of one), i.e. dial the same configured daemon.
    pub fn same(&self, other: &Connector) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// One new connection to the daemon.
    pub async fn connect(&self) -> std::io::Result<ClientStream> {
        let inner = &self.inner;
        let dial = async {
            match &inner.addr {
                UpstreamAddr::Unix(path) => Ok(ClientStream::Unix(UnixStream::connect(path).await?)),
                UpstreamAddr::Tcp { host, port } => {
                    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), *port)).await?;
                    tcp.set_nodelay(true)?;
                    match &inner.tls {
                        Some((connector, name)) => Ok(ClientStream::TlsClient(Box::new(connector.connect(name.clone(), tcp).await?))),
                        None => Ok(ClientStream::Tcp(tcp)),
                    }
                }
            }
        };
        match tokio::time::timeout(inner.connect_timeout, dial).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}
