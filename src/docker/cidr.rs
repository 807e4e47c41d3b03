//! IP networks and addresses of IPAM configurations (`Subnet`, `IPRange`, `Gateway`,
//! `AuxiliaryAddresses`), parsed no more leniently than dockerd parses them.
//!
//! dockerd 20.10 to 28 parse them with Go's `net.ParseCIDR`/`net.ParseIP`, dockerd 29 with
//! `netip.ParsePrefix`/`netip.ParseAddr` (JSON `netip` types). Both refuse zones, IPv4 octets with
//! leading zeros and anything but decimal prefix lengths; `netip` also refuses a prefix length with a
//! leading zero (`/08`), and so does this parser. A network keeps its host bits as written
//! (`10.1.2.3/8`); what it covers is the masked network (`10.0.0.0/8`), which is what containment is
//! computed on.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP network: an address and a prefix length, host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR address: {0:?}")]
    Cidr(String),
    #[error("invalid IP address: {0:?}")]
    Ip(String),
}

/// Parses one address (`net.ParseIP` without zones).
pub fn parse_ip(s: &str) -> Result<IpAddr, CidrError> {
    s.parse::<IpAddr>().map_err(|_| CidrError::Ip(s.to_owned()))
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// The `len` leading bits of a `width`-bit value.
fn mask(value: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (128 - u32::from(len));
    let shifted = value << (128 - u32::from(width));
    (shifted & keep) >> (128 - u32::from(width))
}

impl Cidr {
    /// Parses `address/length`.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let err = || CidrError::Cidr(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let valid_len = !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) && (len == "0" || !len.starts_with('0'));
        if !valid_len || len.len() > 3 {
            return Err(err());
        }
        let len: u8 = len.parse().map_err(|_| err())?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let (value, width) = bits(addr);
        if len > width {
            return Err(err());
        }
        Ok(Cidr::from_bits(mask(value, len, width), len, addr.is_ipv4()))
    }

    /// The network of one address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let (_, width) = bits(addr);
        Cidr { addr, len: width }
    }

    fn from_bits(value: u128, len: u8, v4: bool) -> Cidr {
        let addr = if v4 {
            // The value was masked to 32 bits by `bits`.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(0)))
        } else {
            IpAddr::V6(Ipv6Addr::from(value))
        };
        Cidr { addr, len }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether every address of `other` is in `self` (same family only: an IPv4-mapped IPv6
    /// network is not inside an IPv4 one).
    pub fn contains(&self, other: &Cidr) -> bool {
        if self.is_ipv4() != other.is_ipv4() || other.len < self.len {
            return false;
        }
        let (width, a, b) = (bits(self.addr).1, bits(self.addr).0, bits(other.addr).0);
        mask(b, self.len, width) == a
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// Whether this IPv6 network reaches into `::ffff:0:0/96`, the IPv4-mapped addresses, which
    /// software may treat as the IPv4 addresses they map.
    pub fn touches_ipv4_mapped(&self) -> bool {
        let mapped = Cidr { addr: IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)), len: 96 };
        self.overlaps(&mapped)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parses_like_go_or_stricter() {
        assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("192.168.0.0/16").to_string(), "192.168.0.0/16");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("fd00:1::5/64").to_string(), "fd00:1::/64");
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(c("10.0.0.1/32").to_string(), "10.0.0.1/32");
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "010.0.0.0/8",
            "10.0.0/8",
            "fe80::1%eth0/64",
            "::/129",
            "x/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/1000",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_ip("10.0.0.1").is_ok());
        assert!(parse_ip("010.0.0.1").is_err());
        assert!(parse_ip("fe80::1%eth0").is_err());
        assert!(parse_ip("10.0.0.1/8").is_err());
    }

    #[test]
    fn containment() {
        assert!(c("10.0.0.0/8").contains(&c("10.200.0.0/16")));
        assert!(c("10.0.0.0/8").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("11.0.0.0/16")));
        assert!(c("0.0.0.0/0").contains(&c("192.168.1.0/24")));
        assert!(!c("0.0.0.0/0").contains(&c("::/0")), "families never mix");
        assert!(!c("0.0.0.0/0").contains(&c("::ffff:10.0.0.0/104")));
        assert!(c("fd00::/8").contains(&c("fd12:3456::/48")));
        assert!(!c("fd00::/8").contains(&c("fe80::/10")));
        assert!(c("172.30.0.0/16").contains(&Cidr::host(parse_ip("172.30.5.1").unwrap())));
        assert!(!c("172.30.0.0/16").contains(&Cidr::host(parse_ip("172.31.5.1").unwrap())));
        assert!(c("10.0.0.0/8").overlaps(&c("10.1.0.0/16")) && c("10.1.0.0/16").overlaps(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/16").overlaps(&c("10.1.0.0/16")));
    }

    #[test]
    fn ipv4_mapped() {
        assert!(c("::ffff:10.0.0.0/104").touches_ipv4_mapped());
        assert!(c("::/0").touches_ipv4_mapped());
        assert!(Cidr::host(parse_ip("::ffff:a00:1").unwrap()).touches_ipv4_mapped());
        assert!(!c("fd00::/8").touches_ipv4_mapped());
        assert!(!c("10.0.0.0/8").touches_ipv4_mapped());
    }
}
