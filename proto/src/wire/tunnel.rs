//! Tunnel frames: what one UDP datagram on the tunnel socket carries
//! (`spec/wire.md` §3).
//!
//! [`Frame::decode`] dispatches on the first byte(s) exactly as
//! `spec/wire.md` §3 says: beacon messages (first byte below 0x10) and the
//! five `PIL?` magics. Frames borrow their variable parts from the input.
//! PILK, PILA and PILP ignore bytes past their fixed size, so for those
//! `encode(decode(b))` reproduces only the covered prefix; PILT and PILS
//! keep everything after their header.
//!
//! Cryptography is not done here: a PILS frame exposes the nonce and the
//! sealed bytes, and [`pils_header`] / [`pila_signed_message`] give the
//! crypto layer the bytes it needs.

use super::beacon::{BEACON_TYPE_LIMIT, BeaconError, BeaconMsg};
use super::packet::HEADER_LEN;
use super::{EncodeError, Reader, Writer};

/// Magic of a plaintext packet frame (`spec/wire.md` §3.1).
pub const MAGIC_PILT: [u8; 4] = *b"PILT";
/// Magic of an encrypted packet frame (`spec/wire.md` §3.2).
pub const MAGIC_PILS: [u8; 4] = *b"PILS";
/// Magic of an unauthenticated key exchange (`spec/wire.md` §3.3).
pub const MAGIC_PILK: [u8; 4] = *b"PILK";
/// Magic of an authenticated key exchange (`spec/wire.md` §3.4).
pub const MAGIC_PILA: [u8; 4] = *b"PILA";
/// Magic of a NAT punch (`spec/wire.md` §3.5).
pub const MAGIC_PILP: [u8; 4] = *b"PILP";

/// Length of a magic (`spec/wire.md` §3).
pub const MAGIC_LEN: usize = 4;
/// Length of an AES-GCM nonce in PILS (`spec/wire.md` §3.2).
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag that ends a PILS frame (`spec/wire.md` §3.2).
pub const TAG_LEN: usize = 16;
/// Magic + sender + nonce: what precedes the ciphertext (`spec/wire.md` §3.2).
pub const PILS_HEADER_LEN: usize = 20;
/// Bytes PILS adds around a packet: header + tag (`spec/wire.md` §3.2).
pub const PILS_OVERHEAD: usize = PILS_HEADER_LEN + TAG_LEN;
/// Smallest PILS frame accepted: header + tag (`spec/wire.md` §3.2).
pub const PILS_MIN_LEN: usize = PILS_HEADER_LEN + TAG_LEN;
/// Smallest PILT frame accepted: magic + packet header (`spec/wire.md` §3.1).
pub const PILT_MIN_LEN: usize = MAGIC_LEN + HEADER_LEN;
/// Length of a PILK frame (`spec/wire.md` §3.3).
pub const PILK_LEN: usize = 40;
/// Length of a PILA frame (`spec/wire.md` §3.4).
pub const PILA_LEN: usize = 136;
/// Length of a PILP frame (`spec/wire.md` §3.5).
pub const PILP_LEN: usize = 4;
/// Prefix of the message a PILA signature covers; no colon
/// (`spec/wire.md` §3.4).
pub const PILA_SIGNED_PREFIX: [u8; 4] = *b"auth";
/// Length of the message a PILA signature covers (`spec/wire.md` §3.4).
pub const PILA_SIGNED_LEN: usize = 40;

/// Which kind of `PIL?` frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Plaintext packet.
    Pilt,
    /// Encrypted packet.
    Pils,
    /// Unauthenticated key exchange.
    Pilk,
    /// Authenticated key exchange.
    Pila,
    /// NAT punch.
    Pilp,
}

impl FrameKind {
    /// The frame's magic.
    pub const fn magic(self) -> [u8; 4] {
        match self {
            FrameKind::Pilt => MAGIC_PILT,
            FrameKind::Pils => MAGIC_PILS,
            FrameKind::Pilk => MAGIC_PILK,
            FrameKind::Pila => MAGIC_PILA,
            FrameKind::Pilp => MAGIC_PILP,
        }
    }

    /// The smallest length a frame of this kind may have.
    pub const fn min_len(self) -> usize {
        match self {
            FrameKind::Pilt => PILT_MIN_LEN,
            FrameKind::Pils => PILS_MIN_LEN,
            FrameKind::Pilk => PILK_LEN,
            FrameKind::Pila => PILA_LEN,
            FrameKind::Pilp => PILP_LEN,
        }
    }

    /// The kind whose magic is `magic`, if any.
    pub fn from_magic(magic: [u8; 4]) -> Option<FrameKind> {
        [
            FrameKind::Pilt,
            FrameKind::Pils,
            FrameKind::Pilk,
            FrameKind::Pila,
            FrameKind::Pilp,
        ]
        .into_iter()
        .find(|k| k.magic() == magic)
    }
}

/// One tunnel-socket datagram (`spec/wire.md` §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Plaintext packet; `packet` is every byte after the magic (decode it
    /// with [`super::packet::Packet::decode`]).
    Pilt {
        /// Raw packet bytes (at least 34).
        packet: &'a [u8],
    },
    /// Encrypted packet.
    Pils {
        /// Tunnel-level sender node.
        sender: u32,
        /// AES-GCM nonce.
        nonce: [u8; 12],
        /// Ciphertext followed by the 16-byte tag.
        sealed: &'a [u8],
    },
    /// Unauthenticated key exchange / key request.
    Pilk {
        /// Sender node.
        sender: u32,
        /// Sender's X25519 public key.
        x25519: [u8; 32],
    },
    /// Authenticated key exchange.
    Pila {
        /// Sender node.
        sender: u32,
        /// Sender's X25519 public key.
        x25519: [u8; 32],
        /// Sender's Ed25519 identity key.
        ed25519: [u8; 32],
        /// Signature over [`pila_signed_message`].
        signature: [u8; 64],
    },
    /// NAT punch.
    Pilp,
    /// A beacon message sharing the socket.
    Beacon(BeaconMsg<'a>),
}

/// Why a datagram is not a tunnel frame. Receivers drop such datagrams
/// silently (`spec/wire.md` §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// 1 to 3 bytes that are not a beacon message: no room for a magic.
    #[error("datagram of {len} bytes is too short for a magic")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Four bytes that are no known magic.
    #[error("unknown frame magic {magic:02x?}")]
    UnknownMagic {
        /// The first four bytes.
        magic: [u8; 4],
    },
    /// A known magic with fewer bytes than the frame needs.
    #[error("{kind:?} frame of {len} bytes is shorter than {min}")]
    Truncated {
        /// The frame kind.
        kind: FrameKind,
        /// Datagram length.
        len: usize,
        /// Minimum length for this kind.
        min: usize,
    },
    /// The first byte says beacon message, and it does not decode.
    #[error("beacon message: {0}")]
    Beacon(#[from] BeaconError),
}

impl<'a> Frame<'a> {
    /// Decodes one datagram with the dispatch rules of `spec/wire.md` §3.
    pub fn decode(buf: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let &first = buf.first().ok_or(FrameError::Empty)?;
        if first < BEACON_TYPE_LIMIT {
            return Ok(Frame::Beacon(BeaconMsg::decode(buf)?));
        }
        let mut r = Reader::new(buf);
        let magic = r
            .array::<MAGIC_LEN>()
            .ok_or(FrameError::TooShort { len: buf.len() })?;
        let kind = FrameKind::from_magic(magic).ok_or(FrameError::UnknownMagic { magic })?;
        let trunc = FrameError::Truncated {
            kind,
            len: buf.len(),
            min: kind.min_len(),
        };
        if buf.len() < kind.min_len() {
            return Err(trunc);
        }
        let frame = match kind {
            FrameKind::Pilt => Frame::Pilt { packet: r.rest() },
            FrameKind::Pils => {
                let sender = r.u32().ok_or(trunc)?;
                let nonce = r.array::<NONCE_LEN>().ok_or(trunc)?;
                Frame::Pils {
                    sender,
                    nonce,
                    sealed: r.rest(),
                }
            }
            FrameKind::Pilk => Frame::Pilk {
                sender: r.u32().ok_or(trunc)?,
                x25519: r.array().ok_or(trunc)?,
            },
            FrameKind::Pila => Frame::Pila {
                sender: r.u32().ok_or(trunc)?,
                x25519: r.array().ok_or(trunc)?,
                ed25519: r.array().ok_or(trunc)?,
                signature: r.array().ok_or(trunc)?,
            },
            FrameKind::Pilp => Frame::Pilp,
        };
        Ok(frame)
    }

    /// The `PIL?` kind, or `None` for a beacon message.
    pub fn kind(&self) -> Option<FrameKind> {
        Some(match self {
            Frame::Pilt { .. } => FrameKind::Pilt,
            Frame::Pils { .. } => FrameKind::Pils,
            Frame::Pilk { .. } => FrameKind::Pilk,
            Frame::Pila { .. } => FrameKind::Pila,
            Frame::Pilp => FrameKind::Pilp,
            Frame::Beacon(_) => return None,
        })
    }

    /// Number of bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Pilt { packet } => MAGIC_LEN + packet.len(),
            Frame::Pils { sealed, .. } => PILS_HEADER_LEN + sealed.len(),
            Frame::Pilk { .. } => PILK_LEN,
            Frame::Pila { .. } => PILA_LEN,
            Frame::Pilp => PILP_LEN,
            Frame::Beacon(msg) => msg.encoded_len(),
        }
    }

    /// Writes the frame into `out` and returns its length.
    ///
    /// Refuses frames that would not decode back (a PILT packet shorter than
    /// a header, a PILS sealed part shorter than the tag).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        match self {
            Frame::Pilt { packet } if packet.len() < HEADER_LEN => {
                return Err(EncodeError::PacketTooShort { len: packet.len() });
            }
            Frame::Pils { sealed, .. } if sealed.len() < TAG_LEN => {
                return Err(EncodeError::SealedTooShort { len: sealed.len() });
            }
            Frame::Beacon(msg) => return msg.encode(out),
            _ => {}
        }
        let mut w = Writer::new(out, self.encoded_len())?;
        match self {
            Frame::Pilt { packet } => {
                w.bytes(&MAGIC_PILT)?;
                w.bytes(packet)?;
            }
            Frame::Pils {
                sender,
                nonce,
                sealed,
            } => {
                w.bytes(&MAGIC_PILS)?;
                w.u32(*sender)?;
                w.bytes(nonce)?;
                w.bytes(sealed)?;
            }
            Frame::Pilk { sender, x25519 } => {
                w.bytes(&MAGIC_PILK)?;
                w.u32(*sender)?;
                w.bytes(x25519)?;
            }
            Frame::Pila {
                sender,
                x25519,
                ed25519,
                signature,
            } => {
                w.bytes(&MAGIC_PILA)?;
                w.u32(*sender)?;
                w.bytes(x25519)?;
                w.bytes(ed25519)?;
                w.bytes(signature)?;
            }
            Frame::Pilp => w.bytes(&MAGIC_PILP)?,
            Frame::Beacon(_) => {}
        }
        Ok(w.finish())
    }
}

/// Writes the 20-byte PILS header (magic ‖ sender ‖ nonce) at the start of
/// `out`, so the crypto layer can seal the packet in place right after it
/// (`spec/wire.md` §3.2).
pub fn pils_header(out: &mut [u8], sender: u32, nonce: &[u8; 12]) -> Result<usize, EncodeError> {
    let mut w = Writer::new(out, PILS_HEADER_LEN)?;
    w.bytes(&MAGIC_PILS)?;
    w.u32(sender)?;
    w.bytes(nonce)?;
    Ok(w.finish())
}

/// The 40 bytes a PILA signature covers: `"auth"` ‖ sender node (BE) ‖
/// X25519 key (`spec/wire.md` §3.4).
pub fn pila_signed_message(sender: u32, x25519: &[u8; 32]) -> [u8; PILA_SIGNED_LEN] {
    let mut msg = [0u8; PILA_SIGNED_LEN];
    let (prefix, rest) = msg.split_at_mut(4);
    prefix.copy_from_slice(&PILA_SIGNED_PREFIX);
    let (node, key) = rest.split_at_mut(4);
    node.copy_from_slice(&sender.to_be_bytes());
    key.copy_from_slice(x25519);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(f: &Frame<'_>) -> Vec<u8> {
        let mut out = vec![0u8; f.encoded_len()];
        assert_eq!(f.encode(&mut out).unwrap(), out.len());
        out
    }

    #[test]
    fn dispatch_errors() {
        assert_eq!(Frame::decode(&[]), Err(FrameError::Empty));
        assert_eq!(Frame::decode(b"PIL"), Err(FrameError::TooShort { len: 3 }));
        assert_eq!(
            Frame::decode(b"PILX"),
            Err(FrameError::UnknownMagic { magic: *b"PILX" })
        );
        assert_eq!(
            Frame::decode(&[0x0d]),
            Err(FrameError::Beacon(BeaconError::UnknownType { ty: 0x0d }))
        );
        let mut pilk = b"PILK".to_vec();
        pilk.extend_from_slice(&[0; 35]);
        assert_eq!(
            Frame::decode(&pilk),
            Err(FrameError::Truncated {
                kind: FrameKind::Pilk,
                len: 39,
                min: 40
            })
        );
        let mut pils = b"PILS".to_vec();
        pils.extend_from_slice(&[0; 31]);
        assert!(matches!(
            Frame::decode(&pils),
            Err(FrameError::Truncated {
                kind: FrameKind::Pils,
                ..
            })
        ));
        pils.push(0);
        assert!(matches!(
            Frame::decode(&pils),
            Ok(Frame::Pils { sealed, .. }) if sealed.len() == TAG_LEN
        ));
        let mut pilt = b"PILT".to_vec();
        pilt.extend_from_slice(&[0; 33]);
        assert!(Frame::decode(&pilt).is_err());
    }

    #[test]
    fn excess_is_ignored_for_fixed_frames() {
        let mut b = b"PILP".to_vec();
        b.extend_from_slice(b"xyz");
        assert_eq!(Frame::decode(&b), Ok(Frame::Pilp));
        let mut pilk = b"PILK".to_vec();
        pilk.extend_from_slice(&[7; 40]);
        let f = Frame::decode(&pilk).unwrap();
        assert_eq!(enc(&f), pilk[..PILK_LEN]);
    }

    #[test]
    fn pils_header_and_signed_message() {
        let mut buf = [0u8; PILS_MIN_LEN];
        let nonce = [9u8; 12];
        assert_eq!(pils_header(&mut buf, 0x0102_0304, &nonce).unwrap(), 20);
        assert_eq!(
            Frame::decode(&buf).unwrap(),
            Frame::Pils {
                sender: 0x0102_0304,
                nonce,
                sealed: &[0; 16]
            }
        );
        let m = pila_signed_message(1, &[0xab; 32]);
        assert_eq!(&m[..8], b"auth\0\0\0\x01");
        assert_eq!(&m[8..], &[0xab; 32]);
        assert!(pils_header(&mut [0u8; 19], 1, &nonce).is_err());
    }

    #[test]
    fn encode_refuses_undecodable() {
        assert_eq!(
            Frame::Pilt { packet: &[0; 33] }.encode(&mut [0; 64]),
            Err(EncodeError::PacketTooShort { len: 33 })
        );
        let f = Frame::Pils {
            sender: 1,
            nonce: [0; 12],
            sealed: &[0; 15],
        };
        assert_eq!(
            f.encode(&mut [0; 64]),
            Err(EncodeError::SealedTooShort { len: 15 })
        );
    }

    fn arb_owned() -> impl Strategy<Value = (u8, u32, Vec<u8>, Vec<u8>)> {
        (
            0u8..5,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 128),
            proptest::collection::vec(any::<u8>(), 36..100),
        )
    }

    proptest! {
        #[test]
        fn decode_encode_round_trip((k, sender, fixed, var) in arb_owned()) {
            let a32: [u8; 32] = fixed[..32].try_into().unwrap();
            let b32: [u8; 32] = fixed[32..64].try_into().unwrap();
            let s64: [u8; 64] = fixed[64..128].try_into().unwrap();
            let f = match k {
                0 => Frame::Pilt { packet: &var },
                1 => Frame::Pils { sender, nonce: fixed[..12].try_into().unwrap(), sealed: &var },
                2 => Frame::Pilk { sender, x25519: a32 },
                3 => Frame::Pila { sender, x25519: a32, ed25519: b32, signature: s64 },
                _ => Frame::Pilp,
            };
            let bytes = enc(&f);
            prop_assert_eq!(Frame::decode(&bytes), Ok(f));
        }

        #[test]
        fn encode_reproduces_covered_prefix(
            magic in 0usize..6,
            tail in proptest::collection::vec(any::<u8>(), 0..160),
        ) {
            let mut b = match magic {
                0 => MAGIC_PILT.to_vec(),
                1 => MAGIC_PILS.to_vec(),
                2 => MAGIC_PILK.to_vec(),
                3 => MAGIC_PILA.to_vec(),
                4 => MAGIC_PILP.to_vec(),
                _ => vec![],
            };
            b.extend_from_slice(&tail);
            if let Ok(f) = Frame::decode(&b) {
                let again = enc(&f);
                prop_assert!(again.len() <= b.len());
                prop_assert_eq!(&b[..again.len()], &again[..]);
            }
        }
    }
}
