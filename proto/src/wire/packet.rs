//! The 34-byte packet header and the packet it frames (`spec/wire.md` §2).
//!
//! A packet is the header followed by `payload_len` payload bytes, protected
//! by a CRC-32 over the whole packet with the checksum field zeroed. Bytes
//! after the payload are accepted and ignored by the decoder, so
//! `encode(decode(b))` reproduces only the first `34 + payload_len` bytes.

use core::fmt;
use core::ops::{BitOr, BitOrAssign};

use super::{EncodeError, Reader, WireProfile, Writer};
use crate::addr::Addr;

/// Length of the packet header (`spec/wire.md` §2.1).
pub const HEADER_LEN: usize = 34;
/// Offset of the checksum field (`spec/wire.md` §2.1).
pub const CHECKSUM_OFFSET: usize = 30;
/// Largest payload the format can describe (`spec/wire.md` §2.5).
pub const MAX_PAYLOAD: usize = 65535;
/// Largest packet: header plus largest payload (`spec/wire.md` §2.5).
pub const MAX_PACKET: usize = HEADER_LEN + MAX_PAYLOAD;
/// The only header version spoken (`spec/wire.md` §2.1).
pub const VERSION: u8 = 1;
/// Payload of a path probe, a control packet to port 0 that elicits a pong
/// (`spec/wire.md` §2.6).
pub const PATH_PROBE_PAYLOAD: &[u8] = b"pathprobe.v1";
/// UDP receive buffer size a daemon uses (`spec/wire.md` §2.5).
pub const UDP_RECV_BUFFER: usize = 65_573;
/// Largest UDP payload over IPv4; senders keep frames below it
/// (`spec/wire.md` §2.5).
pub const MAX_UDP_PAYLOAD_V4: usize = 65_507;

/// The flag nibble of byte 0 (`spec/wire.md` §2.1). Only the low 4 bits
/// can be set.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// SYN, bit 0x1 (`spec/wire.md` §2.1).
    pub const SYN: Flags = Flags(0x1);
    /// ACK, bit 0x2 (`spec/wire.md` §2.1).
    pub const ACK: Flags = Flags(0x2);
    /// FIN, bit 0x4 (`spec/wire.md` §2.1).
    pub const FIN: Flags = Flags(0x4);
    /// RST, bit 0x8 (`spec/wire.md` §2.1).
    pub const RST: Flags = Flags(0x8);
    /// Mask of the defined bits.
    const MASK: u8 = 0x0F;

    /// Builds flags from the low 4 bits of `bits`, dropping the rest.
    pub const fn from_bits_truncate(bits: u8) -> Flags {
        Flags(bits & Self::MASK)
    }

    /// Builds flags from `bits`, or `None` if any bit above 0x8 is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Self::MASK == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The raw nibble.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True if every flag of `other` is set here.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both sets.
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

impl<'a> arbitrary::Arbitrary<'a> for Flags {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Flags> {
        Ok(Flags::from_bits_truncate(u8::arbitrary(u)?))
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        *self = self.union(rhs);
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Flags::SYN, "SYN"),
            (Flags::ACK, "ACK"),
            (Flags::FIN, "FIN"),
            (Flags::RST, "RST"),
        ];
        let mut first = true;
        f.write_str("Flags(")?;
        for (flag, name) in names {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str(")")
    }
}

/// The protocol byte (`spec/wire.md` §2.1). Values other than the three
/// constants decode fine and are kept as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Protocol(pub u8);

impl Protocol {
    /// Reliable stream (`spec/wire.md` §2.1).
    pub const STREAM: Protocol = Protocol(0x01);
    /// Datagram (`spec/wire.md` §2.1).
    pub const DATAGRAM: Protocol = Protocol(0x02);
    /// Control: ping/pong, probes, keepalives (`spec/wire.md` §2.1).
    pub const CONTROL: Protocol = Protocol(0x03);

    /// True for one of the three defined protocols.
    pub const fn is_known(self) -> bool {
        matches!(self.0, 1..=3)
    }
}

/// The decoded fields of a packet header, without the checksum
/// (`spec/wire.md` §2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, arbitrary::Arbitrary)]
pub struct Header {
    /// Version nibble; always 1 when sending.
    pub version: u8,
    /// Flag nibble.
    pub flags: Flags,
    /// Protocol byte.
    pub protocol: Protocol,
    /// Number of payload bytes after the header.
    pub payload_len: u16,
    /// Source address.
    pub src: Addr,
    /// Destination address.
    pub dst: Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Stream byte sequence number (0 for datagrams).
    pub seq: u32,
    /// Cumulative acknowledgment: next byte expected.
    pub ack: u32,
    /// Receive window in segments (free receive slots).
    pub window: u16,
}

impl Header {
    /// Writes the 34 header bytes with a zero checksum field into `out`
    /// (`spec/wire.md` §2.1, §2.2). Call [`write_checksum`] once the
    /// payload follows it.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if self.version > 0x0F {
            return Err(EncodeError::VersionTooLarge {
                version: self.version,
            });
        }
        let mut w = Writer::new(out, HEADER_LEN)?;
        w.u8((self.version << 4) | self.flags.bits())?;
        w.u8(self.protocol.0)?;
        w.u16(self.payload_len)?;
        w.bytes(&self.src.to_bytes())?;
        w.bytes(&self.dst.to_bytes())?;
        w.u16(self.src_port)?;
        w.u16(self.dst_port)?;
        w.u32(self.seq)?;
        w.u32(self.ack)?;
        w.u16(self.window)?;
        w.u32(0)?;
        Ok(w.finish())
    }

    /// Reads the header fields from the first 34 bytes; checks nothing.
    fn read(buf: &[u8]) -> Option<Header> {
        let mut r = Reader::new(buf);
        let b0 = r.u8()?;
        Some(Header {
            version: b0 >> 4,
            flags: Flags::from_bits_truncate(b0),
            protocol: Protocol(r.u8()?),
            payload_len: r.u16()?,
            src: Addr::from_bytes(r.take(6)?).ok()?,
            dst: Addr::from_bytes(r.take(6)?).ok()?,
            src_port: r.u16()?,
            dst_port: r.u16()?,
            seq: r.u32()?,
            ack: r.u32()?,
            window: r.u16()?,
        })
    }
}

/// CRC-32 (IEEE) of a packet with its checksum field taken as zero
/// (`spec/wire.md` §2.3). `packet` must hold at least the header.
pub fn checksum(packet: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(packet.get(..CHECKSUM_OFFSET).unwrap_or(packet));
    h.update(&[0; 4]);
    h.update(packet.get(HEADER_LEN..).unwrap_or_default());
    h.finalize()
}

/// Computes the checksum over `packet` (header + payload, checksum field
/// ignored) and stores it at offset 30 (`spec/wire.md` §2.3). Returns the
/// value written; does nothing if `packet` is shorter than a header.
pub fn write_checksum(packet: &mut [u8]) -> u32 {
    let crc = checksum(packet);
    if let Some(field) = packet.get_mut(CHECKSUM_OFFSET..HEADER_LEN) {
        field.copy_from_slice(&crc.to_be_bytes());
    }
    crc
}

/// A packet: header plus borrowed payload (`spec/wire.md` §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Header fields; `payload_len` equals `payload.len()`.
    pub header: Header,
    /// Payload bytes (empty for "no payload").
    pub payload: &'a [u8],
}

/// Why bytes are not a packet (`spec/wire.md` §2.4). Receivers drop such
/// packets silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer than 34 bytes.
    #[error("packet of {len} bytes is shorter than the 34-byte header")]
    TooShort {
        /// Input length.
        len: usize,
    },
    /// Fewer bytes than the header's payload length announces.
    #[error("packet truncated: {len} bytes, header announces {needed}")]
    Truncated {
        /// Input length.
        len: usize,
        /// 34 + payload length.
        needed: usize,
    },
    /// The CRC-32 does not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Value in the header.
        stored: u32,
        /// Value computed over the packet.
        computed: u32,
    },
    /// Version nibble other than 1 (current profile only).
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The version nibble.
        version: u8,
    },
}

impl<'a> Packet<'a> {
    /// Builds a packet, filling `payload_len` from the payload.
    pub fn new(mut header: Header, payload: &'a [u8]) -> Result<Packet<'a>, EncodeError> {
        header.payload_len = u16::try_from(payload.len())
            .map_err(|_| EncodeError::PayloadTooLarge { len: payload.len() })?;
        Ok(Packet { header, payload })
    }

    /// Decodes with the current profile's rules (`spec/wire.md` §2.4).
    pub fn decode(buf: &'a [u8]) -> Result<Packet<'a>, PacketError> {
        Self::decode_with(buf, WireProfile::Current)
    }

    /// Decodes in the order of `spec/wire.md` §2.4: length, truncation,
    /// checksum, then (current profile only) version. Bytes after the
    /// payload are ignored.
    pub fn decode_with(buf: &'a [u8], profile: WireProfile) -> Result<Packet<'a>, PacketError> {
        let too_short = PacketError::TooShort { len: buf.len() };
        if buf.len() < HEADER_LEN {
            return Err(too_short);
        }
        let header = Header::read(buf).ok_or(too_short)?;
        let needed = HEADER_LEN + usize::from(header.payload_len);
        let packet = buf.get(..needed).ok_or(PacketError::Truncated {
            len: buf.len(),
            needed,
        })?;
        let stored = packet
            .get(CHECKSUM_OFFSET..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or(too_short)?;
        let computed = checksum(packet);
        if stored != computed {
            return Err(PacketError::ChecksumMismatch { stored, computed });
        }
        if profile.checks_version() && header.version != VERSION {
            return Err(PacketError::UnsupportedVersion {
                version: header.version,
            });
        }
        let payload = packet.get(HEADER_LEN..).unwrap_or_default();
        Ok(Packet { header, payload })
    }

    /// True for a NAT keepalive as receivers recognise it: protocol
    /// control, destination port 0, empty payload (`spec/wire.md` §2.6).
    pub fn is_nat_keepalive(&self) -> bool {
        self.header.protocol == Protocol::CONTROL
            && self.header.dst_port == 0
            && self.payload.is_empty()
    }

    /// Number of bytes [`Packet::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header, payload and checksum (computed last) into `out`
    /// (`spec/wire.md` §2.2).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(EncodeError::PayloadTooLarge {
                len: self.payload.len(),
            });
        }
        if usize::from(self.header.payload_len) != self.payload.len() {
            return Err(EncodeError::PayloadLenMismatch {
                header: self.header.payload_len,
                actual: self.payload.len(),
            });
        }
        let len = self.encoded_len();
        let available = out.len();
        let dst = out.get_mut(..len).ok_or(EncodeError::BufferTooSmall {
            needed: len,
            available,
        })?;
        let (head, body) = dst.split_at_mut(HEADER_LEN);
        self.header.write(head)?;
        body.copy_from_slice(self.payload);
        write_checksum(dst);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn crc_of_zero_header() {
        assert_eq!(crc32fast::hash(&[0u8; 34]), 0x4171_6c2a);
        assert_eq!(checksum(&[0u8; 34]), 0x4171_6c2a);
    }

    fn syn() -> Header {
        Header {
            version: 1,
            flags: Flags::SYN,
            protocol: Protocol::STREAM,
            payload_len: 0,
            src: Addr::new(0, 1),
            dst: Addr::new(0, 2),
            src_port: 49152,
            dst_port: 1000,
            seq: 0,
            ack: 0,
            window: 512,
        }
    }

    #[test]
    fn decode_order() {
        let p = Packet::new(syn(), b"abc").unwrap();
        let mut buf = vec![0u8; p.encoded_len()];
        p.encode(&mut buf).unwrap();
        assert_eq!(
            Packet::decode(&buf[..33]),
            Err(PacketError::TooShort { len: 33 })
        );
        assert_eq!(
            Packet::decode(&buf[..36]),
            Err(PacketError::Truncated {
                len: 36,
                needed: 37
            })
        );
        // Extra bytes are ignored.
        let mut long = buf.clone();
        long.extend_from_slice(b"junk");
        assert_eq!(Packet::decode(&long), Ok(p));
        // A flipped payload bit fails the checksum.
        let mut bad = buf.clone();
        bad[35] ^= 1;
        assert!(matches!(
            Packet::decode(&bad),
            Err(PacketError::ChecksumMismatch { .. })
        ));
        // Version 2 with a valid checksum: current rejects, legacy accepts.
        let mut v2 = buf.clone();
        v2[0] = 0x21;
        write_checksum(&mut v2);
        assert_eq!(
            Packet::decode(&v2),
            Err(PacketError::UnsupportedVersion { version: 2 })
        );
        let legacy = Packet::decode_with(&v2, WireProfile::Legacy).unwrap();
        assert_eq!(legacy.header.version, 2);
        // Checksum is checked before version.
        v2[35] ^= 1;
        assert!(matches!(
            Packet::decode(&v2),
            Err(PacketError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn encode_errors() {
        let mut h = syn();
        h.payload_len = 2;
        let p = Packet {
            header: h,
            payload: b"a",
        };
        assert_eq!(
            p.encode(&mut [0; 64]),
            Err(EncodeError::PayloadLenMismatch {
                header: 2,
                actual: 1
            })
        );
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            Packet::new(syn(), &big),
            Err(EncodeError::PayloadTooLarge { len: 65536 })
        );
        let p = Packet::new(syn(), b"").unwrap();
        assert!(matches!(
            p.encode(&mut [0; 33]),
            Err(EncodeError::BufferTooSmall { needed: 34, .. })
        ));
        let mut h = syn();
        h.version = 16;
        assert_eq!(
            Packet::new(h, b"").unwrap().encode(&mut [0; 34]),
            Err(EncodeError::VersionTooLarge { version: 16 })
        );
    }

    #[test]
    fn keepalive_recognition() {
        let mut h = syn();
        h.protocol = Protocol::CONTROL;
        h.dst_port = 0;
        assert!(Packet::new(h, b"").unwrap().is_nat_keepalive());
        assert!(
            !Packet::new(h, PATH_PROBE_PAYLOAD)
                .unwrap()
                .is_nat_keepalive()
        );
        h.dst_port = 7;
        assert!(!Packet::new(h, b"").unwrap().is_nat_keepalive());
        h.dst_port = 0;
        h.protocol = Protocol::DATAGRAM;
        assert!(!Packet::new(h, b"").unwrap().is_nat_keepalive());
    }

    #[test]
    fn flags_debug_and_ops() {
        let f = Flags::SYN | Flags::ACK;
        assert_eq!(f.bits(), 3);
        assert!(f.contains(Flags::ACK) && !f.contains(Flags::FIN));
        assert_eq!(format!("{f:?}"), "Flags(SYN|ACK)");
        assert_eq!(Flags::from_bits(0x10), None);
        assert_eq!(Flags::from_bits_truncate(0x1f).bits(), 0x0f);
    }

    prop_compose! {
        fn arb_header()(
            version in 0u8..16, flags in 0u8..16, protocol: u8,
            sn: u16, snode: u32, dn: u16, dnode: u32,
            src_port: u16, dst_port: u16, seq: u32, ack: u32, window: u16,
        ) -> Header {
            Header {
                version, flags: Flags::from_bits_truncate(flags), protocol: Protocol(protocol),
                payload_len: 0, src: Addr::new(sn, snode), dst: Addr::new(dn, dnode),
                src_port, dst_port, seq, ack, window,
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(h in arb_header(), payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = Packet::new(h, &payload).unwrap();
            let mut buf = vec![0u8; p.encoded_len()];
            prop_assert_eq!(p.encode(&mut buf), Ok(buf.len()));
            prop_assert_eq!(Packet::decode_with(&buf, WireProfile::Legacy), Ok(p));
            let current = Packet::decode(&buf);
            if h.version == 1 {
                prop_assert_eq!(current, Ok(p));
            } else {
                prop_assert_eq!(current, Err(PacketError::UnsupportedVersion { version: h.version }));
            }
        }

        #[test]
        fn reencode_reproduces_prefix(mut b in proptest::collection::vec(any::<u8>(), 34..120), fix: bool) {
            if fix {
                // Make the length and checksum consistent so decoding gets far.
                let room = u16::try_from(b.len() - 34).unwrap();
                let len = u16::from_be_bytes([b[2], b[3]]) % (room + 1);
                b[2..4].copy_from_slice(&len.to_be_bytes());
                let end = 34 + usize::from(len);
                write_checksum(&mut b[..end]);
            }
            if let Ok(p) = Packet::decode_with(&b, WireProfile::Legacy) {
                let mut out = vec![0u8; p.encoded_len()];
                p.encode(&mut out).unwrap();
                prop_assert_eq!(&b[..out.len()], &out[..]);
            }
        }
    }
}
