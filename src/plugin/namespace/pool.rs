//! The address pool of namespace networks.
//!
//! A network's subnet decides which addresses its containers answer on the host: a caller that may
//! choose any subnet can claim the addresses of the host's own networks or of the company's (its
//! bridge then captures the host's traffic to them). And dockerd's default pools hold about 31
//! networks, which a few dozen concurrent CI jobs exhaust. So with a pool configured, every network
//! a namespace creates gets its subnet from the pool (a free block of `prefix_len`), and a subnet a
//! client chooses itself must lie inside the pool. Without a pool, namespaces may not choose
//! subnets at all (the daemon picks them from its own pools).
//!
//! Allocation is a pure function of the subnets already in use (every daemon network's and the
//! host's routes), so ctproxy keeps no state; two creators racing for the same block are told
//! apart by the daemon's overlap error, and the loser takes the next block.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;

/// The networks namespaces may use, from `[namespaces] network_pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPool {
    /// The address ranges (IPv4 ranges are allocated from; IPv6 ones only admit chosen subnets).
    pub ranges: Vec<IpNet>,
    /// The prefix length of each allocated IPv4 network (24: 254 addresses).
    pub prefix_len: u8,
}

/// Why a configured pool is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("network_pool entry {0:?} is not a CIDR such as \"10.213.0.0/16\"")]
    Cidr(String),
    #[error("network_prefix_len {0} does not fit inside the IPv4 ranges of network_pool")]
    PrefixLen(u8),
}

impl NetworkPool {
    pub fn parse(ranges: &[String], prefix_len: u8) -> Result<NetworkPool, PoolError> {
        let ranges = ranges
            .iter()
            .map(|r| r.parse::<IpNet>().map(|n| n.trunc()).map_err(|_| PoolError::Cidr(r.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let fits = ranges.iter().any(|r| matches!(r, IpNet::V4(v4) if v4.prefix_len() <= prefix_len)) && prefix_len <= 30;
        if !fits && ranges.iter().any(|r| r.addr().is_ipv4()) {
            return Err(PoolError::PrefixLen(prefix_len));
        }
        Ok(NetworkPool { ranges, prefix_len })
    }

    /// Whether `net` lies entirely inside one of the pool's ranges.
    pub fn contains(&self, net: &IpNet) -> bool {
        self.ranges.iter().any(|r| r.contains(net))
    }

    /// Whether `addr` lies inside one of the pool's ranges.
    pub fn contains_addr(&self, addr: &IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(addr))
    }

    /// The first IPv4 block of the pool that overlaps nothing in `used`.
    pub fn allocate(&self, used: &[IpNet]) -> Option<Ipv4Net> {
        self.candidates().find(|c| !used.iter().any(|u| overlaps(&IpNet::V4(*c), u)))
    }

    /// Every block of the pool, in order.
    fn candidates(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.ranges
            .iter()
            .filter_map(|r| match r {
                IpNet::V4(v4) => v4.subnets(self.prefix_len).ok(),
                IpNet::V6(_) => None,
            })
            .flatten()
    }
}

/// Whether two networks share an address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The subnets of a `GET /networks` answer (every network on the daemon, whoever owns it).
pub fn subnets_in_use(networks: &[Value]) -> Vec<IpNet> {
    networks
        .iter()
        .filter_map(|n| n.pointer("/IPAM/Config").and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("Subnet").and_then(Value::as_str))
        .filter_map(|s| s.parse::<IpNet>().ok())
        .collect()
}

/// The IPv4 networks the host routes (`/proc/net/route`): a bridge on one of them would capture
/// the host's own traffic, as dockerd's own allocator knows. Empty where the file can't be read
/// (a remote daemon: its host's routes are not ours to see).
pub fn host_routes() -> Vec<IpNet> {
    let Ok(text) = std::fs::read_to_string("/proc/net/route") else { return Vec::new() };
    parse_routes(&text)
}

fn parse_routes(text: &str) -> Vec<IpNet> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, mask) = (f.get(1)?, f.get(7)?);
            // The kernel prints addresses as little-endian hex words.
            let dest = u32::from_str_radix(dest, 16).ok()?.swap_bytes();
            let mask = u32::from_str_radix(mask, 16).ok()?.swap_bytes();
            if mask == 0 {
                return None; // the default route covers everything; it is no network of the host's
            }
            Ipv4Net::with_netmask(Ipv4Addr::from(dest), Ipv4Addr::from(mask)).ok().map(IpNet::V4)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(r: &[&str], len: u8) -> NetworkPool {
        NetworkPool::parse(&r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(), len).unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_the_first_free_block() {
        let p = pool(&["10.213.0.0/16"], 24);
        assert_eq!(p.allocate(&[]), Some("10.213.0.0/24".parse().unwrap()));
        assert_eq!(p.allocate(&[net("10.213.0.0/24"), net("10.213.1.0/25")]), Some("10.213.2.0/24".parse().unwrap()));
        // A wider network in use takes every block inside it.
        assert_eq!(p.allocate(&[net("10.213.0.0/23")]), Some("10.213.2.0/24".parse().unwrap()));
        assert_eq!(p.allocate(&[net("10.0.0.0/8")]), None);
    }

    #[test]
    fn contains_and_refuses_bad_settings() {
        let p = pool(&["10.213.0.0/16", "fd00:ab::/48"], 24);
        assert!(p.contains(&net("10.213.7.0/24")));
        assert!(!p.contains(&net("10.212.0.0/15")));
        assert!(!p.contains(&net("192.168.1.0/24")));
        assert!(p.contains(&net("fd00:ab:0:1::/64")));
        assert!(NetworkPool::parse(&["10.0.0.0/33".into()], 24).is_err());
        assert!(NetworkPool::parse(&["10.0.0.0/24".into()], 16).is_err());
        assert_eq!(NetworkPool::parse(&["10.1.2.3/16".into()], 24).unwrap().ranges, vec![net("10.1.0.0/16")]);
    }

    #[test]
    fn reads_subnets_and_routes() {
        let nets = [json!({"IPAM": {"Config": [{"Subnet": "172.17.0.0/16", "Gateway": "172.17.0.1"}]}}), json!({"IPAM": {"Config": null}})];
        assert_eq!(subnets_in_use(&nets), vec![net("172.17.0.0/16")]);
        let routes = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                      eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                      eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_routes(routes), vec![net("192.168.0.0/24")]);
    }
}
