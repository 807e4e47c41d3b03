//! TLS for clients rustls cannot serve: Debian's busybox `wget` (its built-in TLS 1.2 sends no
//! `signature_algorithms` extension, which rustls requires, and RFC 5246 then implies SHA-1
//! signatures, which rustls never makes).
//!
//! Such a ClientHello is recognised by peeking at the socket before any TLS library reads it;
//! only then is the connection handed to OpenSSL, with the same leaf certificate, at a security
//! level that allows the SHA-1 signature those clients expect. Every other client gets rustls.
//! The SNI must still be on the intercepted list: the leaf is minted by the same [`Authority`].

use std::sync::Arc;
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslAcceptor, SslMethod, SslVersion};
use openssl::x509::X509;
use tokio::net::TcpStream;

use super::ca::Authority;

/// The most of a ClientHello that is read before deciding (a hello is a few hundred bytes).
const MAX_HELLO: usize = 16 * 1024;

/// What the first TLS record of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub struct Hello {
    pub sni: Option<String>,
    pub has_sigalgs: bool,
}

/// Parses a ClientHello at the start of `buf`. `Err(true)` when more bytes are needed,
/// `Err(false)` when it is not a parseable ClientHello (rustls will say why).
pub fn parse_hello(buf: &[u8]) -> Result<Hello, bool> {
    let need = |n: usize| if buf.len() < n { Err(true) } else { Ok(()) };
    need(5)?;
    if buf[0] != 0x16 {
        return Err(false);
    }
    let rec_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    need(5 + rec_len)?;
    let mut r = Reader { b: &buf[5..5 + rec_len], at: 0 };
    let parse = |r: &mut Reader| -> Option<Hello> {
        if r.u8()? != 1 {
            return None;
        }
        let len = r.u24()?;
        let body = r.take(len)?;
        let mut h = Reader { b: body, at: 0 };
        h.take(2 + 32)?;
        let sid = h.u8()? as usize;
        h.take(sid)?;
        let cs = h.u16()? as usize;
        h.take(cs)?;
        let comp = h.u8()? as usize;
        h.take(comp)?;
        let mut hello = Hello { sni: None, has_sigalgs: false };
        if h.at == h.b.len() {
            return Some(hello);
        }
        let ext_len = h.u16()? as usize;
        let mut e = Reader { b: h.take(ext_len)?, at: 0 };
        while e.at < e.b.len() {
            let typ = e.u16()?;
            let len = e.u16()? as usize;
            let data = e.take(len)?;
            match typ {
                0x000d => hello.has_sigalgs = true,
                0x0000 => {
                    let mut s = Reader { b: data, at: 0 };
                    let _list = s.u16()?;
                    if s.u8()? == 0 {
                        let n = s.u16()? as usize;
                        hello.sni = std::str::from_utf8(s.take(n)?).ok().map(|x| x.to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
        Some(hello)
    };
    // A hello split over several records is not from the clients this is for.
    parse(&mut r).ok_or(false)
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

/// Peeks at the connection's ClientHello (waiting up to `timeout` for all of it).
pub async fn peek_hello(stream: &TcpStream, timeout: Duration) -> Option<Hello> {
    let mut buf = vec![0u8; MAX_HELLO];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        match parse_hello(&buf[..n]) {
            Ok(h) => return Some(h),
            Err(false) => return None,
            Err(true) if n == buf.len() => return None,
            Err(true) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("no SNI")]
    NoSni,
    #[error(transparent)]
    Ca(#[from] super::ca::CaError),
    #[error("openssl: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    #[error("handshake: {0}")]
    Handshake(String),
}

/// Completes the handshake with OpenSSL for a client that sent no `signature_algorithms`.
pub async fn accept(
    authority: &Arc<Authority>,
    hello: &Hello,
    stream: TcpStream,
) -> Result<tokio_openssl::SslStream<TcpStream>, LegacyError> {
    let host = hello.sni.as_deref().ok_or(LegacyError::NoSni)?;
    let leaf = authority.leaf(host)?;
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    // Level 0 allows the SHA-1 signature a client without signature_algorithms expects.
    b.set_cipher_list("DEFAULT:@SECLEVEL=0")?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    let chain = &leaf.certified.cert;
    let first = chain.first().ok_or_else(|| LegacyError::Handshake("empty chain".into()))?;
    let cert = X509::from_der(first.as_ref())?;
    b.set_certificate(&cert)?;
    for c in &chain[1..] {
        b.add_extra_chain_cert(X509::from_der(c.as_ref())?)?;
    }
    let key = PKey::private_key_from_pkcs8(&leaf.key_der)?;
    b.set_private_key(&key)?;
    let acceptor = b.build();
    let ssl = Ssl::new(acceptor.context())?;
    let mut s = tokio_openssl::SslStream::new(ssl, stream)?;
    std::pin::Pin::new(&mut s).accept().await.map_err(|e| LegacyError::Handshake(e.to_string()))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// busybox 1.35 wget's ClientHello, as captured here (SNI "172.17.0.1", no signature_algorithms).
    const BUSYBOX: &str = "160301005a010000560303038a0df5141fa974496546025084f2eeb7f49ce363c581c1330895f9a5efb6a900001000ffc023c027c02bc02f003c003d009c0100001d0000000f000d00000a3137322e31372e302e31000a000600040017001d";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn busybox_hello_has_no_sigalgs() {
        let h = parse_hello(&hex(BUSYBOX)).unwrap();
        assert_eq!(h, Hello { sni: Some("172.17.0.1".into()), has_sigalgs: false });
    }

    #[test]
    fn short_and_garbage_inputs() {
        let b = hex(BUSYBOX);
        for n in 0..b.len() {
            assert_eq!(parse_hello(&b[..n]), Err(true), "{n}");
        }
        assert_eq!(parse_hello(b"GET / HTTP/1.1\r\n"), Err(false));
        let mut bad = b.clone();
        bad[5] = 2;
        assert_eq!(parse_hello(&bad), Err(false));
    }
}
