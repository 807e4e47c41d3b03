//! Listening sockets: unix (with file mode and ownership), TCP, and TLS over TCP.
//!
//! Accepting is split in two: [`Listener::accept`] only takes the socket off the queue and reads the
//! peer's address or credentials; the TLS handshake runs later in [`Accepted::into_stream`], inside
//! the connection's own task, so one slow client can never stall the accept loop.

use std::fmt;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;

use super::{ClientStream, ListenAddr, TransportError};

/// What [`Accepted::refuse`] reads (and drops) at most from a refused client before closing.
const LINGER_BYTES: usize = 64 * 1024;

/// File mode and ownership applied to a unix socket right after it is bound.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSocketOptions {
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

/// Who is on the other end of an accepted connection. Authentication plugins read this.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: PeerAddr,
    /// The verified client certificate of a TLS connection, if one was presented.
    pub tls_client: Option<TlsClientId>,
}

#[derive(Debug, Clone)]
pub enum PeerAddr {
    /// Credentials from `SO_PEERCRED`, read at accept time (they cannot be forged by the client).
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    Tcp {
        addr: SocketAddr,
    },
}

/// The names in a client certificate that rustls has already verified against the configured CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClientId {
    pub common_name: Option<String>,
    /// DNS names, e-mail addresses and URIs from the subjectAltName extension.
    pub alt_names: Vec<String>,
}

impl fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            PeerAddr::Unix { uid, gid, pid: Some(pid) } => write!(f, "uid={uid},gid={gid},pid={pid}")?,
            PeerAddr::Unix { uid, gid, pid: None } => write!(f, "uid={uid},gid={gid}")?,
            PeerAddr::Tcp { addr } => write!(f, "{addr}")?,
        }
        if let Some(cn) = self.tls_client.as_ref().and_then(|c| c.common_name.as_deref()) {
            write!(f, ",cn={cn}")?;
        }
        Ok(())
    }
}

/// A bound listening socket.
pub struct Listener {
    inner: Inner,
    addr: ListenAddr,
}

enum Inner {
    Unix(UnixListener),
    Tcp(TcpListener, Option<TlsAcceptor>),
}

/// A connection taken off the accept queue, before any TLS handshake.
pub struct Accepted {
    raw: Raw,
    pub peer: PeerInfo,
}

enum Raw {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(TcpStream, TlsAcceptor),
}

impl Listener {
    /// Binds `addr`. A stale unix socket file left by a crashed process is replaced; any other
    /// kind of file at that path is an error (we never delete what we did not create).
    pub async fn bind(addr: &ListenAddr, unix: &UnixSocketOptions, tls: Option<Arc<rustls::ServerConfig>>) -> Result<Self, TransportError> {
        let inner = match addr {
            ListenAddr::Unix(path) => Inner::Unix(bind_unix(path, unix)?),
            ListenAddr::Tcp(hostport) => {
                let l =
                    TcpListener::bind(hostport.as_str()).await.map_err(|source| TransportError::Bind { addr: addr.to_string(), source })?;
                Inner::Tcp(l, tls.map(TlsAcceptor::from))
            }
        };
        Ok(Listener { inner, addr: addr.clone() })
    }

    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }

    /// The bound TCP address (useful with port 0), if this is a TCP listener.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Inner::Tcp(l, _) => l.local_addr().ok(),
            Inner::Unix(_) => None,
        }
    }

    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match &self.inner {
            Inner::Unix(l) => {
                let (s, _) = l.accept().await?;
                let cred = s.peer_cred()?;
                let peer = PeerInfo { addr: PeerAddr::Unix { uid: cred.uid(), gid: cred.gid(), pid: cred.pid() }, tls_client: None };
                Ok(Accepted { raw: Raw::Unix(s), peer })
            }
            Inner::Tcp(l, tls) => {
                let (s, addr) = l.accept().await?;
                // Latency matters more than packet count for an RPC-style API.
                s.set_nodelay(true)?;
                let raw = match tls {
                    Some(acceptor) => Raw::Tls(s, acceptor.clone()),
                    None => Raw::Tcp(s),
                };
                Ok(Accepted { raw, peer: PeerInfo { addr: PeerAddr::Tcp { addr }, tls_client: None } })
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let ListenAddr::Unix(path) = &self.addr {
            // Only remove the file if it is still ours (a reload may have bound a new one there).
            if let Inner::Unix(l) = &self.inner {
                let ours = l.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf));
                if ours.as_deref() == Some(path.as_path()) && is_socket(path) {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

impl Accepted {
    /// Whether the connection starts with a TLS handshake (nothing can be said to it before).
    pub fn is_tls(&self) -> bool {
        matches!(self.raw, Raw::Tls(..))
    }

    /// Says `answer` and closes, for a connection that will not be served: the answer is written,
    /// the write half shut, and what the client sends is read and dropped until it closes, for at
    /// most `linger` and `LINGER_BYTES`. Why not close at once: closing a socket whose request is
    /// unread resets the connection (TCP sends RST; a unix socket gives the peer `ECONNRESET`), and
    /// a client that is still writing gets `EPIPE`, so it would see an error of its own instead
    /// of the answer. TLS connections are closed without a word (there is no handshake to say it
    /// in).
    pub async fn refuse(self, answer: &[u8], linger: Duration) {
        async fn say<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, answer: &[u8]) {
            if s.write_all(answer).await.is_err() || s.shutdown().await.is_err() {
                return;
            }
            let mut scratch = [0u8; 4096];
            let mut left = LINGER_BYTES;
            while left > 0 {
                match s.read(&mut scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        }
        let said = async {
            match self.raw {
                Raw::Unix(s) => say(s, answer).await,
                Raw::Tcp(s) => say(s, answer).await,
                Raw::Tls(..) => {}
            }
        };
        let _ = tokio::time::timeout(linger, said).await;
    }

    /// Finishes the connection setup: the TLS handshake for TLS listeners (which also tells who
    /// the client certificate names), nothing otherwise.
    pub async fn into_stream(self) -> std::io::Result<(ClientStream, PeerInfo)> {
        let mut peer = self.peer;
        let stream = match self.raw {
            Raw::Unix(s) => ClientStream::Unix(s),
            Raw::Tcp(s) => ClientStream::Tcp(s),
            Raw::Tls(s, acceptor) => {
                let tls = acceptor.accept(s).await?;
                peer.tls_client = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(super::tls::client_id);
                ClientStream::TlsServer(Box::new(tls))
            }
        };
        Ok((stream, peer))
    }
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).map(|m| m.file_type().is_socket()).unwrap_or(false)
}

fn bind_unix(path: &Path, opts: &UnixSocketOptions) -> Result<UnixListener, TransportError> {
    let err = |what: &'static str| move |source| TransportError::UnixSetup { path: path.display().to_string(), what, source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err("create parent directory"))?;
    }
    if is_socket(path) {
        // A live listener answers a connect: refuse to steal its path.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(TransportError::UnixSetup {
                path: path.display().to_string(),
                what: "bind",
                source: std::io::Error::new(std::io::ErrorKind::AddrInUse, "another process is listening there"),
            });
        }
        std::fs::remove_file(path).map_err(err("remove stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(err("bind"))?;
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err("chmod"))?;
    }
    if opts.owner.is_some() || opts.group.is_some() {
        let uid = opts.owner.as_deref().map(resolve_user).transpose()?;
        let gid = opts.group.as_deref().map(resolve_group).transpose()?;
        std::os::unix::fs::chown(path, uid, gid).map_err(err("chown"))?;
    }
    Ok(listener)
}

/// A user name or a numeric uid.
pub fn resolve_user(name: &str) -> Result<u32, TransportError> {
    if let Ok(uid) = name.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        _ => Err(TransportError::UnknownId { kind: "user", name: name.to_owned() }),
    }
}

/// A group name or a numeric gid.
pub fn resolve_group(name: &str) -> Result<u32, TransportError> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(TransportError::UnknownId { kind: "group", name: name.to_owned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(ListenAddr::parse("unix:///run/x.sock").unwrap(), ListenAddr::Unix("/run/x.sock".into()));
        assert_eq!(ListenAddr::parse("tcp://127.0.0.1:2375").unwrap(), ListenAddr::Tcp("127.0.0.1:2375".into()));
        assert_eq!(ListenAddr::parse("tcp://[::1]:0").unwrap(), ListenAddr::Tcp("[::1]:0".into()));
        for bad in ["unix://relative", "tcp://nohost", "tcp://:80", "http://x:1", "tcp://h:99999", ""] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad}");
        }
    }
}
