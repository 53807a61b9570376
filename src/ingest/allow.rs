//! Which UDP senders are trusted: `ingest.udp_allow`, a list of networks
//! (CIDR), checked per datagram before it is parsed.
//!
//! Written with std only (no `ipnet`): the whole need is parsing
//! `addr/len` and one masked comparison, and the check runs on the receive
//! thread's hot path, so each network is kept as a precomputed integer
//! network and mask, and a check allocates nothing.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// One network, `10.0.0.0/8` or `fd00::/8`; a bare address is one host
/// (`/32` or `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cidr {
    V4 { network: u32, prefix: u8 },
    V6 { network: u128, prefix: u8 },
}

impl Cidr {
    /// Whether `addr` is in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4
    /// sender) is judged as the IPv4 address it carries.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr.to_canonical()) {
            (Cidr::V4 { network, prefix }, IpAddr::V4(addr)) => {
                u32::from(addr) & mask_v4(*prefix) == *network
            }
            (Cidr::V6 { network, prefix }, IpAddr::V6(addr)) => {
                u128::from(addr) & mask_v6(*prefix) == *network
            }
            _ => false,
        }
    }

    /// Whether every address of the network is a loopback address.
    pub fn is_loopback(&self) -> bool {
        match *self {
            Cidr::V4 { network, prefix } => prefix >= 8 && network >> 24 == 127,
            Cidr::V6 { network, prefix } => prefix == 128 && network == 1,
        }
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not a network (`10.0.0.0/8`, `fd00::/8`) or an IP address")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        let (cidr, exact) = match addr {
            IpAddr::V4(addr) => {
                let network = u32::from(addr) & mask_v4(prefix);
                (Cidr::V4 { network, prefix }, network == u32::from(addr))
            }
            IpAddr::V6(addr) => {
                let network = u128::from(addr) & mask_v6(prefix);
                (Cidr::V6 { network, prefix }, network == u128::from(addr))
            }
        };
        // `10.1.2.3/8` is a typo as often as it is `10.0.0.0/8`: say so.
        if !exact {
            return Err(format!(
                "{text:?} has bits set past its prefix length; the network is {cidr}"
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Cidr::V4 { network, prefix } => write!(f, "{}/{prefix}", Ipv4Addr::from(network)),
            Cidr::V6 { network, prefix } => write!(f, "{}/{prefix}", Ipv6Addr::from(network)),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.trim().parse().map_err(serde::de::Error::custom)
    }
}

/// What the UDP receive threads admit: any sender, or those in the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFilter {
    Any,
    Only(Vec<Cidr>),
}

impl SourceFilter {
    /// Whether a datagram from `source` is admitted; one without a source
    /// address (never seen from a UDP socket) only when any is.
    pub fn admits(&self, source: Option<IpAddr>) -> bool {
        match self {
            SourceFilter::Any => true,
            SourceFilter::Only(networks) => {
                source.is_some_and(|addr| networks.iter().any(|n| n.contains(addr)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(text: &str) -> Cidr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_single_hosts() {
        assert_eq!(
            cidr("10.0.0.0/8"),
            Cidr::V4 {
                network: 0x0a00_0000,
                prefix: 8
            }
        );
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("fd00::/8").to_string(), "fd00::/8");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::1").to_string(), "::1/128");
    }

    #[test]
    fn refuses_typos() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host/8",
            "10.1.2.3/8",
            "10.0.0.0/-1",
            "fd00::1/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} accepted");
        }
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn contains_by_prefix_and_maps_ipv4_in_ipv6() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.255.1.2")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("fd00::1")));
        assert!(cidr("127.0.0.1/32").contains(ip("127.0.0.1")));
        assert!(!cidr("127.0.0.1/32").contains(ip("127.0.0.2")));
        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("fd00::/8").contains(ip("fd12::1")));
    }

    #[test]
    fn loopback_networks() {
        assert!(cidr("127.0.0.0/8").is_loopback());
        assert!(cidr("127.0.0.1/32").is_loopback());
        assert!(cidr("::1/128").is_loopback());
        assert!(!cidr("0.0.0.0/0").is_loopback());
        assert!(!cidr("10.0.0.0/8").is_loopback());
        assert!(!cidr("::/0").is_loopback());
    }

    #[test]
    fn a_filter_admits_only_its_networks() {
        let only = SourceFilter::Only(vec![cidr("127.0.0.1/32")]);
        assert!(only.admits(Some(ip("127.0.0.1"))));
        assert!(!only.admits(Some(ip("127.0.0.2"))));
        assert!(!only.admits(None));
        assert!(SourceFilter::Any.admits(None));
    }

    proptest! {
        #[test]
        fn a_network_contains_exactly_the_addresses_sharing_its_prefix(
            a in any::<u32>(), b in any::<u32>(), prefix in 0u8..=32
        ) {
            let net: Cidr = format!("{}/{prefix}", Ipv4Addr::from(a & mask_v4(prefix))).parse().unwrap();
            let same = (a ^ b) & mask_v4(prefix) == 0;
            prop_assert_eq!(net.contains(IpAddr::V4(Ipv4Addr::from(b))), same);
        }
    }
}
