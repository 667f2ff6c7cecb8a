//! Beacon messages multiplexed on the tunnel socket (`spec/wire.md` §4).
//!
//! A beacon message starts with a type byte below 0x10. [`BeaconMsg`]
//! borrows its variable parts (relayed inner frames, synced node lists) from
//! the input. Decoding follows the minimum lengths of `spec/wire.md` §4;
//! where the spec says trailing bytes are ignored, `encode(decode(b))`
//! reproduces only the prefix the format covers.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{EncodeError, Reader, Writer};

/// Type byte of discover (`spec/wire.md` §4).
pub const TYPE_DISCOVER: u8 = 0x01;
/// Type byte of discover reply (`spec/wire.md` §4).
pub const TYPE_DISCOVER_REPLY: u8 = 0x02;
/// Type byte of punch request (`spec/wire.md` §4).
pub const TYPE_PUNCH_REQUEST: u8 = 0x03;
/// Type byte of punch command (`spec/wire.md` §4).
pub const TYPE_PUNCH_COMMAND: u8 = 0x04;
/// Type byte of relay (`spec/wire.md` §4).
pub const TYPE_RELAY: u8 = 0x05;
/// Type byte of relay deliver (`spec/wire.md` §4).
pub const TYPE_RELAY_DELIVER: u8 = 0x06;
/// Type byte of sync / gossip (`spec/wire.md` §4).
pub const TYPE_SYNC: u8 = 0x07;
/// Type byte of discover-ex (`spec/wire.md` §4).
pub const TYPE_DISCOVER_EX: u8 = 0x08;
/// Type byte of relay deliver with destination (`spec/wire.md` §4).
pub const TYPE_RELAY_DELIVER_TO: u8 = 0x09;
/// Type byte of notify (`spec/wire.md` §4).
pub const TYPE_NOTIFY: u8 = 0x0A;
/// Type byte of a punch forwarded to a peer beacon (ours, `spec/wire.md` §4).
pub const TYPE_PEER_PUNCH: u8 = 0x0E;
/// Type byte of a peer beacon's answer to a forwarded punch (ours,
/// `spec/wire.md` §4).
pub const TYPE_PEER_PUNCH_ANSWER: u8 = 0x0F;

/// Every type byte below this value is a beacon message (`spec/wire.md` §3).
pub const BEACON_TYPE_LIMIT: u8 = 0x10;

/// Bytes a relay (0x05) wrapper adds in front of a tunnel frame
/// (`spec/wire.md` §4.1).
pub const RELAY_OVERHEAD: usize = 9;
/// Bytes a relay-deliver (0x06) wrapper adds (`spec/wire.md` §4.1).
pub const RELAY_DELIVER_OVERHEAD: usize = 5;
/// Smallest inner frame a relay message may carry (`spec/wire.md` §4.1).
pub const MIN_INNER_FRAME: usize = 4;
/// Length of the optional Ed25519 key on discover (`spec/wire.md` §4).
pub const DISCOVER_KEY_LEN: usize = 32;
/// Length of the optional punch grant (`spec/wire.md` §4).
pub const PUNCH_GRANT_LEN: usize = 72;
/// Notify kind: the registry holds a relayed trust-handshake message
/// (`spec/wire.md` §4).
pub const NOTIFY_HANDSHAKE: u8 = 0x01;
/// Largest beacon-relayed payload the beacon accepts (`spec/wire.md` §4).
pub const MAX_RELAY_PAYLOAD: usize = 65535;

/// An optional punch-request grant (`spec/wire.md` §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PunchGrant {
    /// Expiry, Unix seconds.
    pub expiry: u64,
    /// Ed25519 signature over [`punch_grant_message`].
    pub signature: [u8; 64],
}

/// The node IDs of a sync message, borrowed as big-endian bytes.
///
/// Invariant: the length is a multiple of 4 and at most 65535 IDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeIds<'a>(&'a [u8]);

/// Most node IDs one sync message can list (`spec/wire.md` §4).
pub const MAX_SYNC_NODES: usize = u16::MAX as usize;

impl<'a> NodeIds<'a> {
    /// Wraps big-endian node IDs; `None` if the length is not a multiple of
    /// 4 or there are more than [`MAX_SYNC_NODES`] of them.
    pub fn from_be_bytes(bytes: &'a [u8]) -> Option<Self> {
        (bytes.len() % 4 == 0 && bytes.len() / 4 <= MAX_SYNC_NODES).then_some(NodeIds(bytes))
    }

    /// Number of IDs.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True if there are no IDs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw big-endian bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The IDs in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap_or_default()))
    }
}

/// One beacon message (`spec/wire.md` §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeaconMsg<'a> {
    /// 0x01: a node announces itself; the key is optional.
    Discover {
        /// Node ID.
        node: u32,
        /// Optional Ed25519 public key.
        ed25519: Option<[u8; 32]>,
    },
    /// 0x02: the node's public endpoint as the beacon sees it.
    DiscoverReply {
        /// Observed endpoint.
        endpoint: SocketAddr,
    },
    /// 0x03: ask the beacon to coordinate a hole punch.
    PunchRequest {
        /// Requesting node.
        requester: u32,
        /// Target node.
        target: u32,
        /// Optional grant.
        grant: Option<PunchGrant>,
    },
    /// 0x04: the endpoint the receiving node should punch towards.
    PunchCommand {
        /// Endpoint to punch.
        endpoint: SocketAddr,
    },
    /// 0x05: node asks the beacon to forward a tunnel frame.
    Relay {
        /// Sending node.
        sender: u32,
        /// Destination node.
        destination: u32,
        /// The inner tunnel frame (at least 4 bytes).
        inner: &'a [u8],
    },
    /// 0x06: the beacon delivers a relayed tunnel frame.
    RelayDeliver {
        /// Claimed source node (not trusted for identity).
        source: u32,
        /// The inner tunnel frame (at least 4 bytes).
        inner: &'a [u8],
    },
    /// 0x07: beacon-to-beacon gossip of the nodes one beacon serves.
    Sync {
        /// Sending beacon's ID.
        beacon_id: u32,
        /// The listed nodes.
        nodes: NodeIds<'a>,
    },
    /// 0x08: like discover, for endpoints that want 0x09 deliveries.
    DiscoverEx {
        /// Node ID.
        node: u32,
        /// Optional Ed25519 public key.
        ed25519: Option<[u8; 32]>,
    },
    /// 0x09: relay delivery naming the destination node.
    RelayDeliverTo {
        /// Claimed source node.
        source: u32,
        /// Destination node.
        destination: u32,
        /// The inner tunnel frame (at least 4 bytes).
        inner: &'a [u8],
    },
    /// 0x0A: the beacon tells a node something is waiting for it.
    Notify {
        /// Kind byte; see [`NOTIFY_HANDSHAKE`]. Unknown kinds are kept.
        kind: u8,
    },
    /// 0x0E / 0x0F (ours, beacon to beacon): a punch request whose target
    /// another beacon serves. 0x0E asks that beacon to send the target a
    /// punch command towards `endpoint` (the requester's); 0x0F answers
    /// with the target's `endpoint` for the requester's beacon to pass on.
    PeerPunch {
        /// `false` = 0x0E (forward), `true` = 0x0F (answer).
        answer: bool,
        /// Requesting node.
        requester: u32,
        /// Target node.
        target: u32,
        /// The requester's endpoint (forward) or the target's (answer).
        endpoint: SocketAddr,
    },
}

/// Why bytes are not a beacon message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BeaconError {
    /// No bytes at all.
    #[error("empty beacon message")]
    Empty,
    /// The type byte is not one of 0x01..=0x0A, 0x0E, 0x0F.
    #[error("unknown beacon message type {ty:#04x}")]
    UnknownType {
        /// The type byte.
        ty: u8,
    },
    /// The message is shorter than its type requires.
    #[error("beacon message type {ty:#04x} truncated at {len} bytes")]
    Truncated {
        /// The type byte.
        ty: u8,
        /// Total length of the message.
        len: usize,
    },
    /// Bytes follow the last node ID of a sync message.
    #[error("beacon message type {ty:#04x} has {extra} bytes after its end")]
    TrailingBytes {
        /// The type byte.
        ty: u8,
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// An endpoint's `ip_len` is neither 4 nor 16.
    #[error("endpoint ip_len {ip_len} is not 4 or 16")]
    BadIpLen {
        /// The length byte.
        ip_len: u8,
    },
    /// A relayed inner frame is shorter than 4 bytes.
    #[error("relayed inner frame of {len} bytes is shorter than 4")]
    InnerTooShort {
        /// Inner frame length.
        len: usize,
    },
}

/// Reads `ip_len ‖ ip ‖ port` (`spec/wire.md` §4).
fn read_endpoint(r: &mut Reader<'_>, trunc: BeaconError) -> Result<SocketAddr, BeaconError> {
    let ip_len = r.u8().ok_or(trunc)?;
    let ip = match ip_len {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok_or(trunc)?)),
        16 => IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok_or(trunc)?)),
        _ => return Err(BeaconError::BadIpLen { ip_len }),
    };
    let port = r.u16().ok_or(trunc)?;
    Ok(SocketAddr::new(ip, port))
}

/// Writes `ip_len ‖ ip ‖ port`; flow info and scope of IPv6 are not sent.
fn write_endpoint(w: &mut Writer<'_>, ep: &SocketAddr) -> Result<(), EncodeError> {
    match ep.ip() {
        IpAddr::V4(ip) => {
            w.u8(4)?;
            w.bytes(&ip.octets())?;
        }
        IpAddr::V6(ip) => {
            w.u8(16)?;
            w.bytes(&ip.octets())?;
        }
    }
    w.u16(ep.port())
}

/// Encoded size of an endpoint.
fn endpoint_len(ep: &SocketAddr) -> usize {
    1 + if ep.is_ipv4() { 4 } else { 16 } + 2
}

/// Reads the inner frame of a relay message (the rest, at least 4 bytes).
fn read_inner<'a>(r: &Reader<'a>) -> Result<&'a [u8], BeaconError> {
    let inner = r.rest();
    if inner.len() < MIN_INNER_FRAME {
        return Err(BeaconError::InnerTooShort { len: inner.len() });
    }
    Ok(inner)
}

/// Refuses to encode an inner frame that would not decode.
fn check_inner(inner: &[u8]) -> Result<(), EncodeError> {
    if inner.len() < MIN_INNER_FRAME {
        return Err(EncodeError::InnerFrameTooShort { len: inner.len() });
    }
    Ok(())
}

impl<'a> BeaconMsg<'a> {
    /// The type byte of this message.
    pub fn msg_type(&self) -> u8 {
        match self {
            BeaconMsg::Discover { .. } => TYPE_DISCOVER,
            BeaconMsg::DiscoverReply { .. } => TYPE_DISCOVER_REPLY,
            BeaconMsg::PunchRequest { .. } => TYPE_PUNCH_REQUEST,
            BeaconMsg::PunchCommand { .. } => TYPE_PUNCH_COMMAND,
            BeaconMsg::Relay { .. } => TYPE_RELAY,
            BeaconMsg::RelayDeliver { .. } => TYPE_RELAY_DELIVER,
            BeaconMsg::Sync { .. } => TYPE_SYNC,
            BeaconMsg::DiscoverEx { .. } => TYPE_DISCOVER_EX,
            BeaconMsg::RelayDeliverTo { .. } => TYPE_RELAY_DELIVER_TO,
            BeaconMsg::Notify { .. } => TYPE_NOTIFY,
            BeaconMsg::PeerPunch { answer: false, .. } => TYPE_PEER_PUNCH,
            BeaconMsg::PeerPunch { answer: true, .. } => TYPE_PEER_PUNCH_ANSWER,
        }
    }

    /// Decodes one beacon message (`spec/wire.md` §4).
    ///
    /// Optional extensions (discover key, punch grant) are present only if
    /// all their bytes are; a shorter tail is ignored. Trailing bytes after
    /// fixed-size messages are ignored; a sync message must end right after
    /// its last node ID.
    pub fn decode(buf: &'a [u8]) -> Result<BeaconMsg<'a>, BeaconError> {
        let (&ty, body) = buf.split_first().ok_or(BeaconError::Empty)?;
        let trunc = BeaconError::Truncated { ty, len: buf.len() };
        let mut r = Reader::new(body);
        let msg = match ty {
            TYPE_DISCOVER | TYPE_DISCOVER_EX => {
                let node = r.u32().ok_or(trunc)?;
                let ed25519 = r.array::<DISCOVER_KEY_LEN>();
                if ty == TYPE_DISCOVER {
                    BeaconMsg::Discover { node, ed25519 }
                } else {
                    BeaconMsg::DiscoverEx { node, ed25519 }
                }
            }
            TYPE_DISCOVER_REPLY => BeaconMsg::DiscoverReply {
                endpoint: read_endpoint(&mut r, trunc)?,
            },
            TYPE_PUNCH_REQUEST => {
                let requester = r.u32().ok_or(trunc)?;
                let target = r.u32().ok_or(trunc)?;
                let grant = match (r.u64(), r.array::<64>()) {
                    (Some(expiry), Some(signature)) => Some(PunchGrant { expiry, signature }),
                    _ => None,
                };
                BeaconMsg::PunchRequest {
                    requester,
                    target,
                    grant,
                }
            }
            TYPE_PUNCH_COMMAND => BeaconMsg::PunchCommand {
                endpoint: read_endpoint(&mut r, trunc)?,
            },
            TYPE_RELAY | TYPE_RELAY_DELIVER_TO => {
                let first = r.u32().ok_or(trunc)?;
                let destination = r.u32().ok_or(trunc)?;
                let inner = read_inner(&r)?;
                if ty == TYPE_RELAY {
                    BeaconMsg::Relay {
                        sender: first,
                        destination,
                        inner,
                    }
                } else {
                    BeaconMsg::RelayDeliverTo {
                        source: first,
                        destination,
                        inner,
                    }
                }
            }
            TYPE_RELAY_DELIVER => {
                let source = r.u32().ok_or(trunc)?;
                let inner = read_inner(&r)?;
                BeaconMsg::RelayDeliver { source, inner }
            }
            TYPE_SYNC => {
                let beacon_id = r.u32().ok_or(trunc)?;
                let count = usize::from(r.u16().ok_or(trunc)?);
                let ids = r.take(count * 4).ok_or(trunc)?;
                let nodes = NodeIds::from_be_bytes(ids).ok_or(trunc)?;
                // The count must describe the message exactly.
                if !r.rest().is_empty() {
                    return Err(BeaconError::TrailingBytes {
                        ty,
                        extra: r.rest().len(),
                    });
                }
                BeaconMsg::Sync { beacon_id, nodes }
            }
            TYPE_NOTIFY => BeaconMsg::Notify {
                kind: r.u8().ok_or(trunc)?,
            },
            TYPE_PEER_PUNCH | TYPE_PEER_PUNCH_ANSWER => BeaconMsg::PeerPunch {
                answer: ty == TYPE_PEER_PUNCH_ANSWER,
                requester: r.u32().ok_or(trunc)?,
                target: r.u32().ok_or(trunc)?,
                endpoint: read_endpoint(&mut r, trunc)?,
            },
            _ => return Err(BeaconError::UnknownType { ty }),
        };
        Ok(msg)
    }

    /// Number of bytes [`BeaconMsg::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            BeaconMsg::Discover { ed25519, .. } | BeaconMsg::DiscoverEx { ed25519, .. } => {
                4 + ed25519.map_or(0, |_| DISCOVER_KEY_LEN)
            }
            BeaconMsg::DiscoverReply { endpoint } | BeaconMsg::PunchCommand { endpoint } => {
                endpoint_len(endpoint)
            }
            BeaconMsg::PunchRequest { grant, .. } => 8 + grant.map_or(0, |_| PUNCH_GRANT_LEN),
            BeaconMsg::Relay { inner, .. } | BeaconMsg::RelayDeliverTo { inner, .. } => {
                8 + inner.len()
            }
            BeaconMsg::RelayDeliver { inner, .. } => 4 + inner.len(),
            BeaconMsg::Sync { nodes, .. } => 6 + nodes.as_bytes().len(),
            BeaconMsg::Notify { .. } => 1,
            BeaconMsg::PeerPunch { endpoint, .. } => 8 + endpoint_len(endpoint),
        }
    }

    /// Writes the message into `out` and returns its length.
    ///
    /// Refuses relay messages whose inner frame is shorter than 4 bytes, so
    /// every successful encoding decodes back to `self`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if let BeaconMsg::Relay { inner, .. }
        | BeaconMsg::RelayDeliver { inner, .. }
        | BeaconMsg::RelayDeliverTo { inner, .. } = self
        {
            check_inner(inner)?;
        }
        let mut w = Writer::new(out, self.encoded_len())?;
        w.u8(self.msg_type())?;
        match self {
            BeaconMsg::Discover { node, ed25519 } | BeaconMsg::DiscoverEx { node, ed25519 } => {
                w.u32(*node)?;
                if let Some(key) = ed25519 {
                    w.bytes(key)?;
                }
            }
            BeaconMsg::DiscoverReply { endpoint } | BeaconMsg::PunchCommand { endpoint } => {
                write_endpoint(&mut w, endpoint)?;
            }
            BeaconMsg::PunchRequest {
                requester,
                target,
                grant,
            } => {
                w.u32(*requester)?;
                w.u32(*target)?;
                if let Some(g) = grant {
                    w.u64(g.expiry)?;
                    w.bytes(&g.signature)?;
                }
            }
            BeaconMsg::Relay {
                sender: first,
                destination,
                inner,
            }
            | BeaconMsg::RelayDeliverTo {
                source: first,
                destination,
                inner,
            } => {
                w.u32(*first)?;
                w.u32(*destination)?;
                w.bytes(inner)?;
            }
            BeaconMsg::RelayDeliver { source, inner } => {
                w.u32(*source)?;
                w.bytes(inner)?;
            }
            BeaconMsg::Sync { beacon_id, nodes } => {
                w.u32(*beacon_id)?;
                // NodeIds guarantees at most u16::MAX entries.
                w.u16(u16::try_from(nodes.len()).unwrap_or(u16::MAX))?;
                w.bytes(nodes.as_bytes())?;
            }
            BeaconMsg::Notify { kind } => w.u8(*kind)?,
            BeaconMsg::PeerPunch {
                requester,
                target,
                endpoint,
                ..
            } => {
                w.u32(*requester)?;
                w.u32(*target)?;
                write_endpoint(&mut w, endpoint)?;
            }
        }
        Ok(w.finish())
    }
}

/// Writes the 9-byte relay (0x05) header `05 ‖ sender ‖ destination` so a
/// tunnel frame can be placed right after it (`spec/wire.md` §4.1).
pub fn relay_header(out: &mut [u8], sender: u32, destination: u32) -> Result<usize, EncodeError> {
    let mut w = Writer::new(out, RELAY_OVERHEAD)?;
    w.u8(TYPE_RELAY)?;
    w.u32(sender)?;
    w.u32(destination)?;
    Ok(w.finish())
}

/// The text a punch grant signs: `punch-grant:<requester>:<target>:<expiry>`
/// in decimal (`spec/wire.md` §4), held in a fixed buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantText {
    buf: [u8; GRANT_TEXT_MAX],
    len: usize,
}

/// Longest grant text: prefix 12 + 10 + 1 + 10 + 1 + 20 digits.
const GRANT_TEXT_MAX: usize = 54;

impl GrantText {
    /// The text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

/// Builds the message a punch grant's signature covers (`spec/wire.md` §4).
pub fn punch_grant_message(requester: u32, target: u32, expiry: u64) -> GrantText {
    let mut text = GrantText {
        buf: [0; GRANT_TEXT_MAX],
        len: 0,
    };
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = text.buf.get_mut(text.len) {
                *slot = b;
                text.len += 1;
            }
        }
    };
    let mut digits = [0u8; 20];
    push(b"punch-grant:");
    push(decimal(u64::from(requester), &mut digits));
    push(b":");
    push(decimal(u64::from(target), &mut digits));
    push(b":");
    push(decimal(expiry, &mut digits));
    text
}

/// Formats `v` in decimal into the end of `buf` and returns the digits.
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        if let Some(slot) = buf.get_mut(start) {
            // v % 10 < 10, so the cast cannot truncate.
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || start == 0 {
            break;
        }
    }
    buf.get(start..).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(msg: &BeaconMsg<'_>) -> Vec<u8> {
        let mut out = vec![0u8; msg.encoded_len()];
        let n = msg.encode(&mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    #[test]
    fn grant_text() {
        let t = punch_grant_message(1, 4_294_967_295, u64::MAX);
        assert_eq!(
            t.as_bytes(),
            b"punch-grant:1:4294967295:18446744073709551615"
        );
        assert_eq!(
            punch_grant_message(0, 2, 0).as_bytes(),
            b"punch-grant:0:2:0"
        );
    }

    #[test]
    fn relay_header_matches_message() {
        let mut buf = [0u8; 13];
        assert_eq!(relay_header(&mut buf, 1, 2).unwrap(), RELAY_OVERHEAD);
        buf[9..].copy_from_slice(b"PILP");
        assert_eq!(
            BeaconMsg::decode(&buf).unwrap(),
            BeaconMsg::Relay {
                sender: 1,
                destination: 2,
                inner: b"PILP"
            }
        );
    }

    #[test]
    fn errors() {
        assert_eq!(BeaconMsg::decode(&[]), Err(BeaconError::Empty));
        assert_eq!(
            BeaconMsg::decode(&[0x00, 1, 2]),
            Err(BeaconError::UnknownType { ty: 0 })
        );
        assert_eq!(
            BeaconMsg::decode(&[0x0b]),
            Err(BeaconError::UnknownType { ty: 0x0b })
        );
        assert_eq!(
            BeaconMsg::decode(&[0x01, 0, 0, 1]),
            Err(BeaconError::Truncated { ty: 1, len: 4 })
        );
        assert_eq!(
            BeaconMsg::decode(&[0x02, 6, 1, 2, 3, 4, 5, 6, 0, 1]),
            Err(BeaconError::BadIpLen { ip_len: 6 })
        );
        assert_eq!(
            BeaconMsg::decode(&[0x06, 0, 0, 0, 1, 0x50, 0x49, 0x4c]),
            Err(BeaconError::InnerTooShort { len: 3 })
        );
        // count says 2, only one ID present.
        assert_eq!(
            BeaconMsg::decode(&[0x07, 0, 0, 0, 7, 0, 2, 0, 0, 0, 1]),
            Err(BeaconError::Truncated { ty: 7, len: 11 })
        );
        // count says 1, two IDs present.
        assert_eq!(
            BeaconMsg::decode(&[0x07, 0, 0, 0, 7, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2]),
            Err(BeaconError::TrailingBytes { ty: 7, extra: 4 })
        );
        assert_eq!(
            BeaconMsg::decode(&[0x0a]),
            Err(BeaconError::Truncated { ty: 0x0a, len: 1 })
        );
        for ty in [0x0c, 0x0d, 0x10] {
            assert_eq!(
                BeaconMsg::decode(&[ty]),
                Err(BeaconError::UnknownType { ty })
            );
        }
        assert_eq!(
            BeaconMsg::decode(&[0x0e, 0, 0, 0, 1, 0, 0, 0, 2, 4, 1, 2]),
            Err(BeaconError::Truncated { ty: 0x0e, len: 12 })
        );
    }

    #[test]
    fn peer_punch_layout() {
        let m = BeaconMsg::PeerPunch {
            answer: true,
            requester: 5,
            target: 9,
            endpoint: SocketAddr::from(([198, 51, 100, 10], 5000)),
        };
        assert_eq!(
            round(&m),
            [
                0x0f, 0, 0, 0, 5, 0, 0, 0, 9, 4, 198, 51, 100, 10, 0x13, 0x88
            ]
        );
    }

    #[test]
    fn partial_extensions_are_ignored() {
        let mut b = vec![0x01, 0, 0, 0, 9];
        b.extend_from_slice(&[0xaa; 31]);
        assert_eq!(
            BeaconMsg::decode(&b).unwrap(),
            BeaconMsg::Discover {
                node: 9,
                ed25519: None
            }
        );
        let mut b = vec![0x03, 0, 0, 0, 1, 0, 0, 0, 2];
        b.extend_from_slice(&[0xaa; 71]);
        assert!(matches!(
            BeaconMsg::decode(&b).unwrap(),
            BeaconMsg::PunchRequest { grant: None, .. }
        ));
        b.push(0xbb);
        let BeaconMsg::PunchRequest { grant: Some(g), .. } = BeaconMsg::decode(&b).unwrap() else {
            panic!("grant expected")
        };
        assert_eq!(g.expiry, 0xaaaa_aaaa_aaaa_aaaa);
        assert_eq!(g.signature[63], 0xbb);
    }

    #[test]
    fn encode_refuses_short_inner_and_small_buffers() {
        let m = BeaconMsg::RelayDeliver {
            source: 1,
            inner: b"PIL",
        };
        assert_eq!(
            m.encode(&mut [0u8; 64]),
            Err(EncodeError::InnerFrameTooShort { len: 3 })
        );
        let m = BeaconMsg::Notify { kind: 1 };
        assert_eq!(
            m.encode(&mut [0u8; 1]),
            Err(EncodeError::BufferTooSmall {
                needed: 2,
                available: 1
            })
        );
    }

    fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        ]
    }

    /// Owned inputs from which a message is built.
    #[derive(Debug, Clone)]
    enum Spec {
        Discover(bool, u32, Option<[u8; 32]>),
        Endpoint(bool, SocketAddr),
        Punch(u32, u32, Option<(u64, Vec<u8>)>),
        Relay(u8, u32, u32, Vec<u8>),
        Sync(u32, Vec<u8>),
        Notify(u8),
        PeerPunch(bool, u32, u32, SocketAddr),
    }

    fn arb_spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (any::<bool>(), any::<u32>(), any::<Option<[u8; 32]>>())
                .prop_map(|(ex, n, k)| Spec::Discover(ex, n, k)),
            (any::<bool>(), arb_endpoint()).prop_map(|(c, e)| Spec::Endpoint(c, e)),
            (
                any::<u32>(),
                any::<u32>(),
                proptest::option::of((any::<u64>(), proptest::collection::vec(any::<u8>(), 64)))
            )
                .prop_map(|(a, b, g)| Spec::Punch(a, b, g)),
            (
                5u8..=9,
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 4..64)
            )
                .prop_filter("relay types", |(t, ..)| *t != 7 && *t != 8)
                .prop_map(|(t, a, b, i)| Spec::Relay(t, a, b, i)),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20)).prop_map(
                |(id, mut v)| {
                    v.truncate(v.len() / 4 * 4);
                    Spec::Sync(id, v)
                }
            ),
            any::<u8>().prop_map(Spec::Notify),
            (any::<bool>(), any::<u32>(), any::<u32>(), arb_endpoint())
                .prop_map(|(a, r, t, e)| Spec::PeerPunch(a, r, t, e)),
        ]
    }

    fn build(spec: &Spec) -> BeaconMsg<'_> {
        match spec {
            Spec::Discover(false, node, k) => BeaconMsg::Discover {
                node: *node,
                ed25519: *k,
            },
            Spec::Discover(true, node, k) => BeaconMsg::DiscoverEx {
                node: *node,
                ed25519: *k,
            },
            Spec::Endpoint(false, e) => BeaconMsg::DiscoverReply { endpoint: *e },
            Spec::Endpoint(true, e) => BeaconMsg::PunchCommand { endpoint: *e },
            Spec::Punch(a, b, g) => BeaconMsg::PunchRequest {
                requester: *a,
                target: *b,
                grant: g.as_ref().map(|(expiry, sig)| PunchGrant {
                    expiry: *expiry,
                    signature: sig.as_slice().try_into().unwrap(),
                }),
            },
            Spec::Relay(5, a, b, i) => BeaconMsg::Relay {
                sender: *a,
                destination: *b,
                inner: i,
            },
            Spec::Relay(6, a, _, i) => BeaconMsg::RelayDeliver {
                source: *a,
                inner: i,
            },
            Spec::Relay(_, a, b, i) => BeaconMsg::RelayDeliverTo {
                source: *a,
                destination: *b,
                inner: i,
            },
            Spec::Sync(id, v) => BeaconMsg::Sync {
                beacon_id: *id,
                nodes: NodeIds::from_be_bytes(v).unwrap(),
            },
            Spec::Notify(k) => BeaconMsg::Notify { kind: *k },
            Spec::PeerPunch(answer, requester, target, endpoint) => BeaconMsg::PeerPunch {
                answer: *answer,
                requester: *requester,
                target: *target,
                endpoint: *endpoint,
            },
        }
    }

    proptest! {
        #[test]
        fn decode_encode_round_trip(spec in arb_spec()) {
            let msg = build(&spec);
            let bytes = round(&msg);
            prop_assert_eq!(BeaconMsg::decode(&bytes), Ok(msg));
        }

        #[test]
        fn encode_reproduces_covered_prefix(
            ty in 0u8..=16,
            tail in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut b = vec![ty];
            b.extend_from_slice(&tail);
            if let Ok(msg) = BeaconMsg::decode(&b) {
                let again = round(&msg);
                prop_assert!(again.len() <= b.len());
                prop_assert_eq!(&b[..again.len()], &again[..]);
            }
        }
    }
}
