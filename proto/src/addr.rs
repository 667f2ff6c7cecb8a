//! Virtual addresses and ports (`spec/wire.md` §1).
//!
//! An [`Addr`] is the 48-bit pair (network `u16`, node `u32`). This module
//! owns its 6-byte binary form, its canonical text form
//! `N:NNNN.HHHH.LLLL`, the socket-address text form
//! `N:NNNN.HHHH.LLLL:PORT` ([`PilotSockAddr`]), the special addresses and
//! the port ranges and well-known ports ([`ports`]).
//!
//! Parsing never panics and never allocates; every failure is a variant of
//! [`AddrParseError`] or [`AddrBytesError`].

use core::fmt;
use core::str::FromStr;

/// A virtual address: 16-bit network and 32-bit node (`spec/wire.md` §1.1).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, arbitrary::Arbitrary,
)]
pub struct Addr {
    /// Network ID; 0 is the backbone every node belongs to.
    pub network: u16,
    /// Node ID assigned by the registry; 0 is never a real node.
    pub node: u32,
}

/// Length of the binary address form (`spec/wire.md` §1.1).
pub const ADDR_LEN: usize = 6;

/// Node value that marks a broadcast address on any network
/// (`spec/wire.md` §1.4).
pub const BROADCAST_NODE: u32 = 0xFFFF_FFFF;

impl Addr {
    /// The zero / unspecified address `0:0000.0000.0000` (`spec/wire.md` §1.4).
    pub const ZERO: Addr = Addr::new(0, 0);
    /// The registry's reserved address `0:0000.0000.0001` (`spec/wire.md` §1.4).
    pub const REGISTRY: Addr = Addr::new(0, 1);
    /// The beacon's reserved address `0:0000.0000.0002` (`spec/wire.md` §1.4).
    pub const BEACON: Addr = Addr::new(0, 2);
    /// The nameserver's reserved address `0:0000.0000.0003` (`spec/wire.md` §1.4).
    pub const NAMESERVER: Addr = Addr::new(0, 3);

    /// Builds an address from its two fields.
    pub const fn new(network: u16, node: u32) -> Addr {
        Addr { network, node }
    }

    /// The broadcast address of `network` (node `0xFFFFFFFF`).
    pub const fn broadcast(network: u16) -> Addr {
        Addr::new(network, BROADCAST_NODE)
    }

    /// True if the node field is the broadcast node, whatever the network.
    pub const fn is_broadcast(&self) -> bool {
        self.node == BROADCAST_NODE
    }

    /// True only if both network and node are zero.
    pub const fn is_zero(&self) -> bool {
        self.network == 0 && self.node == 0
    }

    /// The 6-byte big-endian binary form (`spec/wire.md` §1.1).
    pub const fn to_bytes(&self) -> [u8; ADDR_LEN] {
        let n = self.network.to_be_bytes();
        let d = self.node.to_be_bytes();
        [n[0], n[1], d[0], d[1], d[2], d[3]]
    }

    /// Reads an address from the first 6 bytes of `bytes`; further bytes are
    /// not looked at. Fewer than 6 bytes is an error (the reference silently
    /// yields the zero address; see `spec/wire.md` §6).
    pub fn from_bytes(bytes: &[u8]) -> Result<Addr, AddrBytesError> {
        match bytes.first_chunk::<ADDR_LEN>() {
            Some(b) => Ok(Addr::new(
                u16::from_be_bytes([b[0], b[1]]),
                u32::from_be_bytes([b[2], b[3], b[4], b[5]]),
            )),
            None => Err(AddrBytesError::TooShort { len: bytes.len() }),
        }
    }
}

/// Why a binary address could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrBytesError {
    /// Fewer than 6 bytes were given.
    #[error("address needs 6 bytes, got {len}")]
    TooShort {
        /// Number of bytes available.
        len: usize,
    },
}

/// Why an address or socket-address text could not be parsed
/// (`spec/wire.md` §1.2, §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrParseError {
    /// The text has no `:` separating network and hex part.
    #[error("address has no ':'")]
    MissingColon,
    /// The network part is empty or not plain decimal digits.
    #[error("network number is not a plain decimal number")]
    BadNetwork,
    /// The network number is larger than 65535.
    #[error("network number out of range")]
    NetworkOutOfRange,
    /// The hex part does not have exactly three dot-separated groups.
    #[error("expected 3 hex groups, found {found}")]
    WrongGroupCount {
        /// Number of groups found.
        found: usize,
    },
    /// A hex group is not exactly 4 hexadecimal digits.
    #[error("hex group {index} is not 4 hex digits")]
    BadGroup {
        /// 0-based index of the offending group.
        index: usize,
    },
    /// The first hex group differs from the decimal network number.
    #[error("network mismatch: {network} vs {group:04X}")]
    NetworkMismatch {
        /// The decimal network number.
        network: u16,
        /// The value of the first hex group.
        group: u16,
    },
    /// A socket address has no `:` before the port.
    #[error("socket address has no port")]
    MissingPort,
    /// The port is empty or not plain decimal digits.
    #[error("port is not a plain decimal number")]
    BadPort,
    /// The port is larger than 65535.
    #[error("port out of range")]
    PortOutOfRange,
}

/// Outcome of parsing a plain decimal `u16` (digits only, leading zeros ok).
enum DecimalError {
    /// Empty or a non-digit character.
    Syntax,
    /// More than 65535.
    Range,
}

/// Parses plain ASCII decimal digits into a `u16` (`spec/wire.md` §1.2 step 2).
fn parse_decimal_u16(s: &str) -> Result<u16, DecimalError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DecimalError::Syntax);
    }
    let mut value: u16 = 0;
    for b in s.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u16::from(b - b'0')))
            .ok_or(DecimalError::Range)?;
    }
    Ok(value)
}

/// Parses exactly 4 ASCII hex digits, any case (`spec/wire.md` §1.2 step 3).
fn parse_hex_group(s: &str) -> Option<u16> {
    let bytes: &[u8; 4] = s.as_bytes().try_into().ok()?;
    let mut value: u16 = 0;
    for &b in bytes {
        let digit = char::from(b).to_digit(16)?;
        // 4 digits of at most 0xF always fit in 16 bits.
        value = (value << 4) | digit as u16;
    }
    Some(value)
}

impl FromStr for Addr {
    type Err = AddrParseError;

    /// Parses `N:NNNN.HHHH.LLLL` exactly as `spec/wire.md` §1.2 describes.
    fn from_str(s: &str) -> Result<Addr, AddrParseError> {
        let (net_text, hex_text) = s.split_once(':').ok_or(AddrParseError::MissingColon)?;
        let network = parse_decimal_u16(net_text).map_err(|e| match e {
            DecimalError::Syntax => AddrParseError::BadNetwork,
            DecimalError::Range => AddrParseError::NetworkOutOfRange,
        })?;
        let found = hex_text.split('.').count();
        let mut groups = hex_text.split('.');
        let (Some(g0), Some(g1), Some(g2), None) =
            (groups.next(), groups.next(), groups.next(), groups.next())
        else {
            return Err(AddrParseError::WrongGroupCount { found });
        };
        let mut values = [0u16; 3];
        for (index, (text, slot)) in [g0, g1, g2].into_iter().zip(&mut values).enumerate() {
            *slot = parse_hex_group(text).ok_or(AddrParseError::BadGroup { index })?;
        }
        let [group_net, hi, lo] = values;
        if group_net != network {
            return Err(AddrParseError::NetworkMismatch {
                network,
                group: group_net,
            });
        }
        Ok(Addr::new(network, (u32::from(hi) << 16) | u32::from(lo)))
    }
}

impl fmt::Display for Addr {
    /// Canonical form: decimal network, then upper-case hex groups
    /// (`spec/wire.md` §1.2).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:04X}.{:04X}.{:04X}",
            self.network,
            self.network,
            self.node >> 16,
            self.node & 0xFFFF
        )
    }
}

/// A virtual address plus a port (`spec/wire.md` §1.3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, arbitrary::Arbitrary,
)]
pub struct PilotSockAddr {
    /// The virtual address.
    pub addr: Addr,
    /// The port.
    pub port: u16,
}

impl PilotSockAddr {
    /// Builds a socket address.
    pub const fn new(addr: Addr, port: u16) -> PilotSockAddr {
        PilotSockAddr { addr, port }
    }
}

impl FromStr for PilotSockAddr {
    type Err = AddrParseError;

    /// Splits at the last `:`; left is an address, right a decimal port.
    fn from_str(s: &str) -> Result<PilotSockAddr, AddrParseError> {
        let (addr_text, port_text) = s.rsplit_once(':').ok_or(AddrParseError::MissingPort)?;
        let addr = addr_text.parse()?;
        let port = parse_decimal_u16(port_text).map_err(|e| match e {
            DecimalError::Syntax => AddrParseError::BadPort,
            DecimalError::Range => AddrParseError::PortOutOfRange,
        })?;
        Ok(PilotSockAddr { addr, port })
    }
}

impl fmt::Display for PilotSockAddr {
    /// Address text, `:`, decimal port.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

pub mod ports {
    //! Port ranges and well-known ports (`spec/wire.md` §1.5).

    use core::ops::RangeInclusive;

    /// Reserved / well-known ports (`spec/wire.md` §1.5).
    pub const WELL_KNOWN: RangeInclusive<u16> = 0..=1023;
    /// Registered ports (`spec/wire.md` §1.5).
    pub const REGISTERED: RangeInclusive<u16> = 1024..=49151;
    /// Ephemeral ports, used as dial and datagram source ports
    /// (`spec/wire.md` §1.5).
    pub const EPHEMERAL: RangeInclusive<u16> = 49152..=65535;
    /// Number of ephemeral ports (`spec/wire.md` §1.5).
    pub const EPHEMERAL_COUNT: u32 = 16_384;

    /// Control-protocol echo: ping/pong, path probes, NAT keepalives
    /// (`spec/wire.md` §1.5).
    pub const PING: u16 = 0;
    /// Reserved control port (`spec/wire.md` §1.5).
    pub const CONTROL: u16 = 1;
    /// Built-in stream echo service (`spec/wire.md` §1.5).
    pub const ECHO: u16 = 7;
    /// Name service (`spec/wire.md` §1.5).
    pub const NAMESERVER: u16 = 53;
    /// HTTP over streams (`spec/wire.md` §1.5).
    pub const HTTP: u16 = 80;
    /// Application-level secure channel (`spec/wire.md` §1.5).
    pub const SECURE: u16 = 443;
    /// Trust handshake requests (`spec/wire.md` §1.5).
    pub const HANDSHAKE: u16 = 444;
    /// Stdio piping (`spec/wire.md` §1.5).
    pub const STDIO: u16 = 1000;
    /// Framed data exchange (`spec/wire.md` §1.5).
    pub const DATA_EXCHANGE: u16 = 1001;
    /// Pub/sub event stream (`spec/wire.md` §1.5).
    pub const EVENT_STREAM: u16 = 1002;
    /// Verify service; the legacy profile calls this port "tasksubmit"
    /// (`spec/wire.md` §1.5).
    pub const VERIFY: u16 = 1003;

    /// The class of a port number (`spec/wire.md` §1.5).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PortClass {
        /// 0..=1023.
        WellKnown,
        /// 1024..=49151.
        Registered,
        /// 49152..=65535.
        Ephemeral,
    }

    /// Classifies a port into its range.
    pub const fn class(port: u16) -> PortClass {
        if port <= *WELL_KNOWN.end() {
            PortClass::WellKnown
        } else if port <= *REGISTERED.end() {
            PortClass::Registered
        } else {
            PortClass::Ephemeral
        }
    }

    /// The name of a well-known port in the current profile, if it has one.
    pub const fn name(port: u16) -> Option<&'static str> {
        Some(match port {
            PING => "ping",
            CONTROL => "control",
            ECHO => "echo",
            NAMESERVER => "nameserver",
            HTTP => "http",
            SECURE => "secure",
            HANDSHAKE => "handshake",
            STDIO => "stdio",
            DATA_EXCHANGE => "dataexchange",
            EVENT_STREAM => "eventstream",
            VERIFY => "verify",
            _ => return None,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ranges_partition_u16() {
            assert_eq!(class(0), PortClass::WellKnown);
            assert_eq!(class(1023), PortClass::WellKnown);
            assert_eq!(class(1024), PortClass::Registered);
            assert_eq!(class(49151), PortClass::Registered);
            assert_eq!(class(49152), PortClass::Ephemeral);
            assert_eq!(class(65535), PortClass::Ephemeral);
            let eph = u32::from(*EPHEMERAL.end()) - u32::from(*EPHEMERAL.start()) + 1;
            assert_eq!(eph, EPHEMERAL_COUNT);
        }

        #[test]
        fn names() {
            assert_eq!(name(VERIFY), Some("verify"));
            assert_eq!(name(444), Some("handshake"));
            assert_eq!(name(2), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn display_is_canonical_upper_case() {
        assert_eq!(Addr::new(1, 0xF291_0004).to_string(), "1:0001.F291.0004");
        assert_eq!(Addr::new(0, 42).to_string(), "0:0000.0000.002A");
        assert_eq!(Addr::broadcast(5).to_string(), "5:0005.FFFF.FFFF");
    }

    #[test]
    fn parse_accepts_lower_case_and_leading_zeros() {
        assert_eq!("1:0001.f291.0004".parse(), Ok(Addr::new(1, 0xF291_0004)));
        assert_eq!("007:0007.0000.0001".parse(), Ok(Addr::new(7, 1)));
    }

    #[test]
    fn parse_errors_are_specific() {
        use AddrParseError::*;
        let cases: &[(&str, AddrParseError)] = &[
            ("", MissingColon),
            ("0000.0000.0001", MissingColon),
            (":0000.0000.0001", BadNetwork),
            ("+1:0001.0000.0001", BadNetwork),
            (" 1:0001.0000.0001", BadNetwork),
            ("0x1:0001.0000.0001", BadNetwork),
            ("65536:0000.0000.0001", NetworkOutOfRange),
            ("99999999999999999999:0000.0000.0001", NetworkOutOfRange),
            ("1:0001.0000", WrongGroupCount { found: 2 }),
            ("1:0001.0000.0000.0001", WrongGroupCount { found: 4 }),
            ("1:0001.0000.001", BadGroup { index: 2 }),
            ("1:+001.0000.0001", BadGroup { index: 0 }),
            ("1:0001.00g0.0001", BadGroup { index: 1 }),
            ("1:0001.0000.0é", BadGroup { index: 2 }),
            ("0:0000.0000.0001:1000", BadGroup { index: 2 }),
            (
                "1:0000.0000.0001",
                NetworkMismatch {
                    network: 1,
                    group: 0,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Addr>(), Err(*want), "{text:?}");
        }
    }

    #[test]
    fn sock_addr_splits_at_last_colon() {
        let sa: PilotSockAddr = "0:0000.0000.0001:1000".parse().unwrap();
        assert_eq!(sa, PilotSockAddr::new(Addr::REGISTRY, 1000));
        assert_eq!(sa.to_string(), "0:0000.0000.0001:1000");
        use AddrParseError::*;
        assert_eq!("abc".parse::<PilotSockAddr>(), Err(MissingPort));
        assert_eq!("0:0000.0000.0001:".parse::<PilotSockAddr>(), Err(BadPort));
        assert_eq!("0:0000.0000.0001:x".parse::<PilotSockAddr>(), Err(BadPort));
        assert_eq!(
            "0:0000.0000.0001:65536".parse::<PilotSockAddr>(),
            Err(PortOutOfRange)
        );
        // A plain address has its last colon between network and hex part.
        assert_eq!(
            "0:0000.0000.0001".parse::<PilotSockAddr>(),
            Err(MissingColon)
        );
    }

    #[test]
    fn specials() {
        assert!(Addr::ZERO.is_zero());
        assert!(!Addr::new(1, 0).is_zero());
        assert!(Addr::broadcast(9).is_broadcast());
        assert!(Addr::new(0, BROADCAST_NODE).is_broadcast());
        assert!(!Addr::REGISTRY.is_broadcast());
        assert_eq!(Addr::NAMESERVER.to_string(), "0:0000.0000.0003");
        assert_eq!(Addr::BEACON.to_bytes(), [0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn short_bytes_are_an_error() {
        assert_eq!(
            Addr::from_bytes(&[0, 1, 0, 0, 0]),
            Err(AddrBytesError::TooShort { len: 5 })
        );
        assert_eq!(
            Addr::from_bytes(&[0, 1, 0, 0, 0, 2, 9]),
            Ok(Addr::new(1, 2))
        );
    }

    proptest! {
        #[test]
        fn text_round_trip(network: u16, node: u32) {
            let a = Addr::new(network, node);
            prop_assert_eq!(a.to_string().parse::<Addr>(), Ok(a));
            prop_assert_eq!(a.to_string().to_lowercase().parse::<Addr>(), Ok(a));
        }

        #[test]
        fn bytes_round_trip(network: u16, node: u32) {
            let a = Addr::new(network, node);
            prop_assert_eq!(Addr::from_bytes(&a.to_bytes()), Ok(a));
        }

        #[test]
        fn sock_round_trip(network: u16, node: u32, port: u16) {
            let s = PilotSockAddr::new(Addr::new(network, node), port);
            prop_assert_eq!(s.to_string().parse::<PilotSockAddr>(), Ok(s));
        }

        #[test]
        fn parse_never_panics_and_reformats(s in "\\PC{0,24}") {
            if let Ok(a) = s.parse::<Addr>() {
                // Whatever parses re-formats to something that parses to the same.
                prop_assert_eq!(a.to_string().parse::<Addr>(), Ok(a));
            }
            let _ = s.parse::<PilotSockAddr>();
        }
    }
}
