//! IP access lists: `allow` and `deny` CIDRs per forward, checked before anything else runs.

use std::net::IpAddr;

/// A network in one address space: IPv4 networks are kept as IPv4-mapped IPv6 (`::ffff:a.b.c.d`)
/// so that a client seen as a mapped address on a dual-stack socket matches IPv4 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: u128,
    mask: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    /// `10.0.0.0/8`, `192.168.1.7` (one address), `fd00::/8`, `::1`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let ip: IpAddr =
            addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.0/8, ::1)"))?;
        let (max, offset) = if ip.is_ipv4() { (32u32, 96u32) } else { (128, 0) };
        let bits = match prefix {
            None => max,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0-{max}"))?,
        };
        let total = bits + offset;
        let mask = if total == 0 { 0 } else { u128::MAX << (128 - total) };
        Ok(Cidr { network: to_u128(ip) & mask, mask })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        to_u128(ip) & self.mask == self.network
    }
}

#[derive(Debug, Clone, Default)]
pub struct AccessList {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessList {
    pub fn compile(cfg: &crate::config::Access) -> Result<Self, String> {
        let parse = |list: &[String]| list.iter().map(|s| Cidr::parse(s)).collect::<Result<Vec<_>, _>>();
        Ok(AccessList { allow: parse(&cfg.allow)?, deny: parse(&cfg.deny)? })
    }

    /// Allowed when inside `allow` (or `allow` is empty) and not inside `deny`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
            && !self.deny.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_match_v4_v6_and_mapped_addresses() {
        let net = Cidr::parse("10.0.1.0/24").unwrap();
        assert!(net.contains(ip("10.0.1.200")));
        assert!(!net.contains(ip("10.0.2.1")));
        assert!(net.contains(ip("::ffff:10.0.1.5")), "IPv4-mapped client address");
        assert!(Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!Cidr::parse("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0", "host", "10.0.0.0/x"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allow_then_deny() {
        let cfg = crate::config::Access {
            allow: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
            deny: vec!["10.6.0.0/16".into()],
        };
        let acl = AccessList::compile(&cfg).unwrap();
        assert!(acl.permits(ip("10.1.2.3")));
        assert!(acl.permits(ip("127.0.0.1")));
        assert!(!acl.permits(ip("10.6.0.1")), "deny wins inside allow");
        assert!(!acl.permits(ip("192.168.1.1")), "outside allow");
        let deny_only =
            AccessList::compile(&crate::config::Access { allow: vec![], deny: vec!["192.168.0.0/16".into()] }).unwrap();
        assert!(deny_only.permits(ip("8.8.8.8")));
        assert!(!deny_only.permits(ip("192.168.3.3")));
    }
}
