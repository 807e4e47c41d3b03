//! Which addresses a request made on a user's behalf may reach.
//!
//! The registry proxy (registry domains come from image names) and the build-context rewriter (`ADD
//! <url>` of a classic build) both fetch URLs a user chose, from ctproxy's network position: the
//! host's loopback, its private networks and the cloud metadata endpoint must stay out of reach. Host
//! names are judged when they are resolved ([`PublicOnly`]), so a name cannot be re-pointed between a
//! check and the connection (DNS rebinding); IP literals never reach a resolver and are judged with
//! [`is_internal`] by the caller before each request and each redirect.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Is `ip` somewhere a user must not make ctproxy connect to (loopback, private, link-local, CGNAT,
/// reserved, multicast, and the IPv6 forms that embed such IPv4 addresses)?
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // shared address space (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
                || (o[0] == 198 && (18..20).contains(&o[1])) // benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) reaches IPv4 addresses: judge the embedded one.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_internal(IpAddr::V4(std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15])));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible and other reserved
        }
    }
}

/// The resolver's refusal: a host name with no public address. Callers find it again in the error
/// chain of a failed request ([`internal_address`]) to say why.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves to no public address")]
pub struct InternalAddress {
    pub host: String,
}

/// The resolver's refusal somewhere in `err`'s source chain.
pub fn internal_address<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a InternalAddress> {
    let mut source = Some(err);
    while let Some(s) = source {
        if let Some(refusal) = s.downcast_ref::<InternalAddress>() {
            return Some(refusal);
        }
        source = s.source();
    }
    None
}

/// A reqwest resolver that never yields internal addresses (nor `own_ip`, the address of a service
/// of ctproxy's own that must not be reached through itself).
pub struct PublicOnly {
    own_ip: Option<IpAddr>,
}

impl PublicOnly {
    pub fn new(own_ip: Option<IpAddr>) -> PublicOnly {
        PublicOnly { own_ip }
    }
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let own_ip = self.own_ip;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.filter(|a| !is_internal(a.ip()) && Some(a.ip()) != own_ip).collect();
            if addrs.is_empty() {
                return Err(Box::new(InternalAddress { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The IP literal of a URL host (`[::1]` without its brackets), if it is one.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok()
}

/// A reqwest error with its causes (the resolver's refusal is in the source chain), without the URL
/// (whose query may hold upload state or credentials).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn resolver_refuses_internal_names() {
        let r = PublicOnly::new(None);
        let err = r.resolve("localhost".parse().unwrap()).await.err().expect("localhost is refused");
        assert!(internal_address(err.as_ref()).is_some(), "{err}");
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("example.com"), None);
    }
}
