//! Splicing a hijacked client connection to the daemon's upgraded connection.
//!
//! Half-close is the whole point: when the client finishes stdin (`docker exec -i` with its input at
//! EOF) we shut down the daemon side's write half and keep copying output until the daemon is done.
//! When the daemon closes, the session is over: the client's write half is shut down and the
//! session ends, even if the client still holds its stdin open (as dockerd itself does).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};

/// Large enough that a bulk stream (50 MB through `cat`) costs few syscalls.
const SPLICE_BUF: usize = 64 * 1024;

/// Bytes moved by a spliced session.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpliceStats {
    pub client_to_daemon: u64,
    pub daemon_to_client: u64,
}

/// Copies both ways until the daemon side ends. See the module docs for the half-close rules.
pub async fn splice<C, U>(client: C, upstream: U) -> SpliceStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (upstream_r, mut upstream_w) = tokio::io::split(upstream);
    let mut client_r = BufReader::with_capacity(SPLICE_BUF, client_r);
    let mut upstream_r = BufReader::with_capacity(SPLICE_BUF, upstream_r);

    let mut stats = SpliceStats::default();
    let to_daemon = async {
        let n = tokio::io::copy_buf(&mut client_r, &mut upstream_w).await;
        // Client EOF (or error): tell the daemon stdin is over, keep reading its output.
        let _ = upstream_w.shutdown().await;
        n
    };
    let to_client = async {
        let n = tokio::io::copy_buf(&mut upstream_r, &mut client_w).await;
        let _ = client_w.shutdown().await;
        n
    };
    tokio::pin!(to_daemon, to_client);
    let mut daemon_done = false;
    loop {
        tokio::select! {
            n = &mut to_daemon, if !daemon_done => {
                daemon_done = true;
                stats.client_to_daemon = n.unwrap_or(0);
            }
            n = &mut to_client => {
                stats.daemon_to_client = n.unwrap_or(0);
                break;
            }
        }
    }
    stats
}

/// A stream with bytes already read from it (by the HTTP parser) put back in front.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// The client half-closes after its input; all of the daemon's output must still arrive.
    #[tokio::test]
    async fn half_close_keeps_output_flowing() {
        let (client_near, mut client_far) = tokio::io::duplex(1024);
        let (daemon_near, mut daemon_far) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(splice(Prefixed::new(Bytes::from_static(b"pre:"), client_near), daemon_near));

        client_far.write_all(b"stdin").await.unwrap();
        client_far.shutdown().await.unwrap();
        let mut got = Vec::new();
        daemon_far.read_to_end(&mut got).await.unwrap(); // ends because the proxy half-closed
        assert_eq!(got, b"pre:stdin");

        daemon_far.write_all(b"output after stdin ended").await.unwrap();
        drop(daemon_far);
        let mut out = Vec::new();
        client_far.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"output after stdin ended");
        let stats = proxy.await.unwrap();
        assert_eq!((stats.client_to_daemon, stats.daemon_to_client), (9, 24));
    }

    /// The daemon ends the session while the client still holds stdin open: the client is released.
    #[tokio::test]
    async fn daemon_close_ends_session() {
        let (client_near, mut client_far) = tokio::io::duplex(1024);
        let (daemon_near, daemon_far) = tokio::io::duplex(1024);
        let proxy = tokio::spawn(splice(client_near, daemon_near));
        drop(daemon_far);
        let mut out = Vec::new();
        client_far.read_to_end(&mut out).await.unwrap();
        proxy.await.unwrap();
    }
}
