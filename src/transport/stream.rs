//! The byte streams a connection can run on, as one enum so the hot path has no dynamic dispatch.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected byte stream: to a client (accepted) or to dockerd (dialed).
#[derive(Debug)]
pub enum ClientStream {
    Unix(UnixStream),
    Tcp(TcpStream),
    /// Boxed: a TLS session is large and rarely the common case.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A plain socket watched for readability only (see [`ReadInterest`]).
    UnixRead(ReadInterest<std::os::unix::net::UnixStream>),
    TcpRead(ReadInterest<std::net::TcpStream>),
}

impl ClientStream {
    /// The same connection, registered with the reactor for readability only when it is a plain
    /// socket (TLS streams are returned as they are). For the raw relay's request/answer loop.
    pub fn read_interest_only(self) -> ClientStream {
        let converted = match self {
            ClientStream::Unix(s) => s.into_std().and_then(ReadInterest::new).map(ClientStream::UnixRead),
            ClientStream::Tcp(s) => s.into_std().and_then(ReadInterest::new).map(ClientStream::TcpRead),
            other => return other,
        };
        match converted {
            Ok(s) => s,
            // The socket is gone with the error: the caller sees a dead stream and ends it.
            Err(e) => {
                tracing::debug!(error = %e, "socket could not be re-registered");
                ClientStream::UnixRead(ReadInterest::dead())
            }
        }
    }
}

/// A plain socket that the reactor watches for readability only.
///
/// Why: tokio registers sockets for reads *and* writes, edge-triggered, so every time the peer
/// consumes what was written (dockerd reading a request, a client reading an answer) the socket
/// turns writable and the runtime thread parked in `epoll_wait` wakes up for nothing. On a
/// sequential keep-alive connection that is two extra wake-ups per request, each costing tens of
/// microseconds on a small VM. Here writes go straight to the non-blocking socket; only if one
/// would block is a duplicate descriptor registered for writability, and used from then on.
#[derive(Debug)]
pub struct ReadInterest<S: std::os::fd::AsRawFd> {
    read: Option<AsyncFd<S>>,
    write: Option<AsyncFd<OwnedFd>>,
}

/// What [`ReadInterest`] needs of a socket type.
pub trait PlainSocket: std::os::fd::AsRawFd + AsFd + Send + Sync + Unpin + 'static
where
    for<'a> &'a Self: Read + Write,
{
    fn shutdown_write(&self) -> io::Result<()>;
}

impl PlainSocket for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl PlainSocket for std::net::TcpStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Registers `fd` with the reactor for `interest`.
fn register<T: std::os::fd::AsRawFd + AsFd>(fd: T, interest: Interest) -> io::Result<AsyncFd<T>> {
    // SAFETY: `fd` owns its descriptor (a std socket or an `OwnedFd`) and the `AsyncFd` owns `fd`
    // until it is dropped, so the descriptor stays open and the same for the registration's life.
    unsafe { AsyncFd::register_with_interest(fd, interest).map_err(|e| e.into()) }
}

fn closed() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl<S: PlainSocket> ReadInterest<S>
where
    for<'a> &'a S: Read + Write,
{
    fn new(sock: S) -> io::Result<Self> {
        Ok(ReadInterest { read: Some(register(sock, Interest::READABLE)?), write: None })
    }

    fn dead() -> Self {
        ReadInterest { read: None, write: None }
    }

    fn writer(&mut self) -> io::Result<()> {
        if self.write.is_none() {
            let sock = self.read.as_ref().ok_or_else(closed)?.get_ref();
            let dup = sock.as_fd().try_clone_to_owned()?;
            self.write = Some(register(dup, Interest::WRITABLE)?);
        }
        Ok(())
    }

    fn poll_read_inner(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let fd = self.read.as_ref().ok_or_else(closed)?;
        loop {
            let mut guard = ready!(fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.write.is_none() {
            let mut sock = self.read.as_ref().ok_or_else(closed)?.get_ref();
            match sock.write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
            self.writer()?;
        }
        let (Some(read), Some(w)) = (self.read.as_ref(), self.write.as_ref()) else { return Poll::Ready(Err(closed())) };
        let mut sock = read.get_ref();
        loop {
            let mut guard = ready!(w.poll_write_ready(cx))?;
            match guard.try_io(|_| sock.write(data)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn shutdown_inner(&self) -> io::Result<()> {
        self.read.as_ref().ok_or_else(closed)?.get_ref().shutdown_write()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            ClientStream::Unix($s) => $e,
            ClientStream::Tcp($s) => $e,
            ClientStream::TlsServer($s) => $e,
            ClientStream::TlsClient($s) => $e,
            ClientStream::UnixRead($s) => $e,
            ClientStream::TcpRead($s) => $e,
        }
    };
}

impl<S: PlainSocket> AsyncRead for ReadInterest<S>
where
    for<'a> &'a S: Read + Write,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_inner(cx, buf)
    }
}

impl<S: PlainSocket> AsyncWrite for ReadInterest<S>
where
    for<'a> &'a S: Read + Write,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_inner(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().shutdown_inner())
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Unix(s) => s.is_write_vectored(),
            ClientStream::Tcp(s) => s.is_write_vectored(),
            ClientStream::TlsServer(s) => s.is_write_vectored(),
            ClientStream::TlsClient(s) => s.is_write_vectored(),
            ClientStream::UnixRead(s) => s.is_write_vectored(),
            ClientStream::TcpRead(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    /// Half-close: for plain sockets this is `shutdown(SHUT_WR)`, which is what a hijacked
    /// `docker exec -i` relies on to tell the daemon that stdin has ended.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl hyper_util::client::legacy::connect::Connection for ClientStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}
