//! The gateway's mapping table: which local IPv4 address stands for which
//! Pilot address. Pure bookkeeping (no sockets, no interfaces), so the
//! assignment rules of `spec/gateway.md` §2 are unit-tested here.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use pilot_proto::addr::Addr;

/// The default subnet of local addresses.
pub const DEFAULT_SUBNET: &str = "10.4.0.0/16";

/// Most mappings one gateway holds (each costs a loopback alias and one
/// listener per port).
pub const MAX_MAPPINGS: usize = 1024;

/// An IPv4 subnet `a.b.c.d/len` (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    base: u32,
    len: u8,
}

impl Subnet {
    /// The mask of the subnet's network bits.
    fn mask(self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.len))
        }
    }

    /// Whether `ip` lies inside the subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.base
    }

    /// The subnet's prefix length.
    pub fn prefix_len(self) -> u8 {
        self.len
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid subnet {s:?} (use a.b.c.d/len)"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("invalid subnet {s:?} (use a.b.c.d/len)"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| (8..=30).contains(l))
            .ok_or_else(|| format!("invalid prefix length in {s:?} (8 to 30)"))?;
        let sub = Subnet { base: 0, len };
        Ok(Subnet {
            base: u32::from(ip) & sub.mask(),
            len,
        })
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.len)
    }
}

/// Why a mapping change was refused. The `Display` text is the message the
/// user sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// The explicit IP is outside the subnet.
    NotInSubnet(Ipv4Addr, Subnet),
    /// The explicit IP already stands for another Pilot address.
    IpTaken(Ipv4Addr, Addr),
    /// The explicit IP is the subnet's network or broadcast address, or
    /// ends in `.0`/`.255`.
    Reserved(Ipv4Addr),
    /// No free address left (or [`MAX_MAPPINGS`] reached).
    Exhausted(Subnet),
    /// `unmap` of an IP that is not mapped.
    NoMapping(Ipv4Addr),
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::NotInSubnet(ip, s) => write!(f, "IP {ip} not in subnet {s}"),
            TableError::IpTaken(ip, a) => write!(f, "IP {ip} already mapped to {a}"),
            TableError::Reserved(ip) => {
                write!(f, "IP {ip} is a network or broadcast address")
            }
            TableError::Exhausted(s) => write!(f, "subnet {s} exhausted"),
            TableError::NoMapping(ip) => write!(f, "no mapping for {ip}"),
        }
    }
}

/// The outcome of [`Table::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapped {
    /// A new mapping: the caller must set it up (alias, listeners).
    New(Ipv4Addr),
    /// The Pilot address was already mapped to this IP; nothing changes.
    Existing(Ipv4Addr),
}

/// Local IPv4 ↔ Pilot address, both directions unique.
#[derive(Clone, Debug)]
pub struct Table {
    subnet: Subnet,
    by_ip: BTreeMap<Ipv4Addr, Addr>,
}

impl Table {
    /// An empty table over `subnet`.
    pub fn new(subnet: Subnet) -> Table {
        Table {
            subnet,
            by_ip: BTreeMap::new(),
        }
    }

    /// The subnet.
    pub fn subnet(&self) -> Subnet {
        self.subnet
    }

    /// The IP mapped to `addr`, if any.
    pub fn ip_of(&self, addr: Addr) -> Option<Ipv4Addr> {
        self.by_ip
            .iter()
            .find_map(|(ip, a)| (*a == addr).then_some(*ip))
    }

    /// The Pilot address mapped to `ip`, if any.
    pub fn addr_of(&self, ip: Ipv4Addr) -> Option<Addr> {
        self.by_ip.get(&ip).copied()
    }

    /// All mappings in IP order.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, Addr)> + '_ {
        self.by_ip.iter().map(|(i, a)| (*i, *a))
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// Whether there are no mappings.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    fn reserved(&self, ip: Ipv4Addr) -> bool {
        let last = ip.octets()[3];
        let host = u32::from(ip) & !self.subnet.mask();
        last == 0 || last == 255 || host == 0 || host == !self.subnet.mask()
    }

    /// Maps `addr` to `ip` (or to the first free address from `.1` up,
    /// skipping addresses ending in `.0` or `.255`). A Pilot address that
    /// is already mapped keeps its IP.
    pub fn map(&mut self, addr: Addr, ip: Option<Ipv4Addr>) -> Result<Mapped, TableError> {
        if let Some(existing) = self.ip_of(addr) {
            return Ok(Mapped::Existing(existing));
        }
        if self.by_ip.len() >= MAX_MAPPINGS {
            return Err(TableError::Exhausted(self.subnet));
        }
        let ip = match ip {
            Some(ip) => {
                if !self.subnet.contains(ip) {
                    return Err(TableError::NotInSubnet(ip, self.subnet));
                }
                if self.reserved(ip) {
                    return Err(TableError::Reserved(ip));
                }
                if let Some(other) = self.by_ip.get(&ip) {
                    return Err(TableError::IpTaken(ip, *other));
                }
                ip
            }
            None => {
                let hosts = !self.subnet.mask();
                (1..hosts)
                    .map(|h| Ipv4Addr::from(self.subnet.base | h))
                    .find(|ip| !self.reserved(*ip) && !self.by_ip.contains_key(ip))
                    .ok_or(TableError::Exhausted(self.subnet))?
            }
        };
        self.by_ip.insert(ip, addr);
        Ok(Mapped::New(ip))
    }

    /// Removes the mapping of `ip`; returns the Pilot address it had.
    pub fn unmap(&mut self, ip: Ipv4Addr) -> Result<Addr, TableError> {
        self.by_ip.remove(&ip).ok_or(TableError::NoMapping(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn subnet_parses_and_clears_host_bits() {
        let s: Subnet = "10.4.7.9/16".parse().unwrap();
        assert_eq!(s.to_string(), "10.4.0.0/16");
        assert!(s.contains(ip("10.4.255.1")));
        assert!(!s.contains(ip("10.5.0.1")));
        for bad in [
            "10.4.0.0",
            "10.4.0.0/33",
            "10.4.0.0/4",
            "x/16",
            "10.4.0.0/31",
        ] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_assignment_starts_at_one_and_skips_used_and_reserved() {
        let mut t = Table::new(DEFAULT_SUBNET.parse().unwrap());
        assert_eq!(
            t.map(Addr::new(0, 7), None),
            Ok(Mapped::New(ip("10.4.0.1")))
        );
        assert_eq!(
            t.map(Addr::new(0, 8), Some(ip("10.4.0.2"))),
            Ok(Mapped::New(ip("10.4.0.2")))
        );
        assert_eq!(
            t.map(Addr::new(0, 9), None),
            Ok(Mapped::New(ip("10.4.0.3")))
        );
        // Re-mapping keeps the IP.
        assert_eq!(
            t.map(Addr::new(0, 7), None),
            Ok(Mapped::Existing(ip("10.4.0.1")))
        );
        // .255 and .0 are skipped (the reference hands them out).
        let mut t = Table::new("10.4.0.0/23".parse().unwrap());
        for n in 0..254 {
            t.map(Addr::new(0, 100 + n), None).unwrap();
        }
        assert_eq!(
            t.map(Addr::new(0, 1000), None),
            Ok(Mapped::New(ip("10.4.1.1")))
        );
    }

    #[test]
    fn explicit_ip_errors_have_the_reference_wording() {
        let mut t = Table::new(DEFAULT_SUBNET.parse().unwrap());
        t.map(Addr::new(0, 7), Some(ip("10.4.0.5"))).unwrap();
        let e = t.map(Addr::new(0, 8), Some(ip("10.4.0.5"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "IP 10.4.0.5 already mapped to 0:0000.0000.0007"
        );
        let e = t.map(Addr::new(0, 8), Some(ip("10.9.0.5"))).unwrap_err();
        assert_eq!(e.to_string(), "IP 10.9.0.5 not in subnet 10.4.0.0/16");
        assert!(matches!(
            t.map(Addr::new(0, 8), Some(ip("10.4.3.255"))),
            Err(TableError::Reserved(_))
        ));
        assert_eq!(
            t.unmap(ip("10.4.0.6")).unwrap_err().to_string(),
            "no mapping for 10.4.0.6"
        );
        assert_eq!(t.unmap(ip("10.4.0.5")), Ok(Addr::new(0, 7)));
        assert!(t.is_empty());
    }

    #[test]
    fn small_subnet_exhausts() {
        let mut t = Table::new("192.168.9.0/30".parse().unwrap());
        // /30: .0 network, .3 broadcast: two usable hosts.
        t.map(Addr::new(0, 1), None).unwrap();
        t.map(Addr::new(0, 2), None).unwrap();
        assert_eq!(
            t.map(Addr::new(0, 3), None),
            Err(TableError::Exhausted("192.168.9.0/30".parse().unwrap()))
        );
    }
}
