//! Building and verifying the key-exchange frames PILK and PILA
//! (`spec/crypto.md` §2.1), including the 40-byte PILA challenge
//! `"auth" ‖ node u32 BE ‖ x25519_pub` (no colon).

use super::identity::{Identity, TunnelKey};
use super::provider::CryptoProvider;
use crate::wire::tunnel::Frame;
pub use crate::wire::tunnel::{PILA_LEN, PILK_LEN};

/// The authentication part of a PILA frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PilaAuth {
    /// The sender's Ed25519 identity public key.
    pub ed25519: [u8; 32],
    /// Signature over [`challenge`]`(sender, x25519)`.
    pub signature: [u8; 64],
}

/// A decoded key exchange: PILK (`auth == None`) or PILA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyExchange {
    /// The sender's node ID.
    pub sender: u32,
    /// The sender's X25519 tunnel public key.
    pub x25519: [u8; 32],
    /// Present for PILA.
    pub auth: Option<PilaAuth>,
}

impl KeyExchange {
    /// The key exchange carried by a decoded tunnel frame, if it is one.
    pub fn from_frame(frame: &Frame<'_>) -> Option<Self> {
        match *frame {
            Frame::Pilk { sender, x25519 } => Some(KeyExchange {
                sender,
                x25519,
                auth: None,
            }),
            Frame::Pila {
                sender,
                x25519,
                ed25519,
                signature,
            } => Some(KeyExchange {
                sender,
                x25519,
                auth: Some(PilaAuth { ed25519, signature }),
            }),
            _ => None,
        }
    }
}

/// Why a key exchange was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KxError {
    /// The output buffer is too small.
    #[error("buffer too small: need {need} bytes")]
    BufferTooSmall {
        /// Bytes required.
        need: usize,
    },
    /// The registry holds no identity key for the sender.
    #[error("no identity key known for the sender")]
    UnknownIdentity,
    /// The frame's Ed25519 key differs from the registry's. The caller
    /// should refresh the key from the registry once and retry.
    #[error("identity key differs from the registry's")]
    IdentityMismatch,
    /// The signature does not verify.
    #[error("bad PILA signature")]
    BadSignature,
}

/// The 40-byte message signed in a PILA frame: `"auth"` ‖ sender u32 BE ‖
/// X25519 key (no colon). The wire module owns the layout.
pub fn challenge(sender: u32, x25519: &[u8; 32]) -> [u8; 40] {
    crate::wire::tunnel::pila_signed_message(sender, x25519)
}

/// Writes a PILK frame for `sender` and returns its length.
pub fn build_pilk(sender: u32, tunnel: &TunnelKey, out: &mut [u8]) -> Result<usize, KxError> {
    Frame::Pilk {
        sender,
        x25519: *tunnel.public(),
    }
    .encode(out)
    .map_err(|_| KxError::BufferTooSmall { need: PILK_LEN })
}

/// Writes a signed PILA frame for `sender` and returns its length.
pub fn build_pila<P: CryptoProvider>(
    provider: &P,
    sender: u32,
    tunnel: &TunnelKey,
    identity: &Identity,
    out: &mut [u8],
) -> Result<usize, KxError> {
    if out.len() < PILA_LEN {
        return Err(KxError::BufferTooSmall { need: PILA_LEN });
    }
    Frame::Pila {
        sender,
        x25519: *tunnel.public(),
        ed25519: *identity.public(),
        signature: identity.sign(provider, &challenge(sender, tunnel.public())),
    }
    .encode(out)
    .map_err(|_| KxError::BufferTooSmall { need: PILA_LEN })
}

/// Checks a PILA against the identity key the registry holds for its
/// sender (`spec/crypto.md` §2.4 steps 2-4): key present, equal, and the
/// signature valid under it.
pub fn verify_pila<P: CryptoProvider>(
    provider: &P,
    sender: u32,
    x25519: &[u8; 32],
    auth: &PilaAuth,
    registry_key: Option<&[u8; 32]>,
) -> Result<(), KxError> {
    let expected = registry_key.ok_or(KxError::UnknownIdentity)?;
    if *expected != auth.ed25519 {
        return Err(KxError::IdentityMismatch);
    }
    if provider.ed25519_verify(expected, &challenge(sender, x25519), &auth.signature) {
        Ok(())
    } else {
        Err(KxError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider::RustCrypto;

    fn seq_seed() -> [u8; 32] {
        core::array::from_fn(|i| i as u8)
    }

    fn tunnel_a() -> TunnelKey {
        let s = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        TunnelKey::from_secret(&RustCrypto, s.try_into().unwrap())
    }

    #[test]
    fn spec_pilk_and_pila_bytes() {
        let p = RustCrypto;
        let t = tunnel_a();
        let mut buf = [0u8; 200];
        let n = build_pilk(1, &t, &mut buf).unwrap();
        assert_eq!(
            hex::encode(&buf[..n]),
            "50494c4b000000018520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let id = Identity::from_seed(&p, seq_seed());
        assert_eq!(
            hex::encode(challenge(1, t.public())),
            "61757468000000018520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let n = build_pila(&p, 1, &t, &id, &mut buf).unwrap();
        assert_eq!(n, PILA_LEN);
        assert_eq!(
            hex::encode(&buf[40..72]),
            "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
        );
        assert_eq!(
            hex::encode(&buf[72..136]),
            "051bd95c608909e739f5dd4569aa2e2816ce36ca0ad4bbc9ea8ed411942ce776\
             ac25a51253d45cb97b50680deeb9b073b30dfc804e897050429ed615b07e4f03"
        );
        assert_eq!(
            build_pila(&p, 1, &t, &id, &mut buf[..135]),
            Err(KxError::BufferTooSmall { need: PILA_LEN })
        );
    }

    #[test]
    fn verification_rules() {
        let p = RustCrypto;
        let t = tunnel_a();
        let id = Identity::from_seed(&p, seq_seed());
        let auth = PilaAuth {
            ed25519: *id.public(),
            signature: id.sign(&p, &challenge(1, t.public())),
        };
        assert_eq!(
            verify_pila(&p, 1, t.public(), &auth, Some(id.public())),
            Ok(())
        );
        assert_eq!(
            verify_pila(&p, 1, t.public(), &auth, None),
            Err(KxError::UnknownIdentity)
        );
        assert_eq!(
            verify_pila(&p, 1, t.public(), &auth, Some(&[9; 32])),
            Err(KxError::IdentityMismatch)
        );
        // Signed for node 1, claimed by node 2; or a different tunnel key.
        assert_eq!(
            verify_pila(&p, 2, t.public(), &auth, Some(id.public())),
            Err(KxError::BadSignature)
        );
        assert_eq!(
            verify_pila(&p, 1, &[5; 32], &auth, Some(id.public())),
            Err(KxError::BadSignature)
        );
        // The colon variant of the challenge is not what we sign.
        let mut colon = b"auth:".to_vec();
        colon.extend_from_slice(&1u32.to_be_bytes());
        colon.extend_from_slice(t.public());
        let bad = PilaAuth {
            signature: id.sign(&p, &colon),
            ..auth
        };
        assert_eq!(
            verify_pila(&p, 1, t.public(), &bad, Some(id.public())),
            Err(KxError::BadSignature)
        );
    }
}
