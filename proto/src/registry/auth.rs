//! Request authentication (`spec/registry.md` §5): Ed25519 signatures over
//! the reference's fixed challenge strings (the *legacy* form), our
//! timestamped *strong* form, public-key decoding and admin-token
//! comparison. Ed25519 is used directly through `ed25519-dalek`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// Domain separator that starts every strong-form signed message
/// (`spec/registry.md` §5.2).
pub const STRONG_SIG_DOMAIN: &str = "pilot-registry-sig-v2";

/// A decoded Ed25519 public key (32 bytes).
pub type PublicKey = [u8; 32];

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not standard base64.
    #[error("not valid base64")]
    Base64,
    /// Not 32 bytes after decoding.
    #[error("expected 32 bytes, got {0}")]
    Length(usize),
    /// 32 bytes, but not a point on the curve.
    #[error("not an Ed25519 point")]
    NotAPoint,
}

/// Why a signature was refused. The texts are the reference's reasons
/// (all contain `signature`, so they may be passed through to clients).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `signature` field.
    #[error("signature required for authenticated node")]
    Missing,
    /// The field is not base64 of 64 bytes.
    #[error("invalid signature encoding: expected base64 of 64 bytes")]
    Encoding,
    /// The signature does not verify with the key on file.
    #[error("signature verification failed")]
    Failed,
    /// Strict mode: the legacy (replayable) form was used.
    #[error("signature form refused: strict mode requires sig_ts")]
    StrongRequired,
    /// Strong form: timestamp outside the freshness window.
    #[error("signature timestamp outside the freshness window")]
    Stale,
    /// Strong form: timestamp not newer than the last one accepted.
    #[error("signature timestamp replayed (not newer than last accepted)")]
    Replayed,
}

/// Decodes a base64 public key and checks it is a curve point.
pub fn decode_public_key(b64: &str) -> Result<PublicKey, KeyError> {
    let bytes = B64.decode(b64).map_err(|_| KeyError::Base64)?;
    let key: PublicKey = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))?;
    VerifyingKey::from_bytes(&key).map_err(|_| KeyError::NotAPoint)?;
    Ok(key)
}

/// Standard base64 (with padding) of a public key.
pub fn encode_public_key(key: &PublicKey) -> String {
    B64.encode(key)
}

/// The message a strong-form signature covers:
/// `pilot-registry-sig-v2\n<legacy challenge>\n<sig_ts>`.
pub fn strong_message(challenge: &str, sig_ts: u64) -> String {
    format!("{STRONG_SIG_DOMAIN}\n{challenge}\n{sig_ts}")
}

/// Verifies a base64 signature over `msg` with `key`.
pub fn verify(key: &PublicKey, msg: &[u8], sig_b64: &str) -> Result<(), SigError> {
    if sig_b64.is_empty() {
        return Err(SigError::Missing);
    }
    let raw = B64.decode(sig_b64).map_err(|_| SigError::Encoding)?;
    let raw: [u8; 64] = raw.as_slice().try_into().map_err(|_| SigError::Encoding)?;
    let vk = VerifyingKey::from_bytes(key).map_err(|_| SigError::Failed)?;
    vk.verify_strict(msg, &Signature::from_bytes(&raw))
        .map_err(|_| SigError::Failed)
}

/// A node's signing identity (an Ed25519 seed), used by the client half and
/// by tests.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity with this 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Identity {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.verifying_key().to_bytes()
    }

    /// The public key as standard base64.
    pub fn public_key_b64(&self) -> String {
        encode_public_key(&self.public_key())
    }

    /// Signs `msg`, returning standard base64 of the 64-byte signature.
    pub fn sign_b64(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).to_bytes())
    }
}

/// Compares an admin token in constant time (both sides are hashed first,
/// so neither the content nor the length leaks through timing).
pub fn token_matches(configured: &str, given: &str) -> bool {
    let a = Sha256::digest(configured.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK_B64: &str = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";

    #[test]
    fn reference_key_and_signature() {
        let id = Identity::from_seed(&[1; 32]);
        assert_eq!(id.public_key_b64(), PK_B64);
        let sig = id.sign_b64(b"heartbeat:1");
        assert_eq!(
            sig,
            "mLDV+9VugRIa4NH4Z8Tc46I+E0y3xEk3ZLZd1S4iWU4vLepK7+a1sb05M7edFINQEEslYXbuV0l13D3chK9qBg=="
        );
        let pk = decode_public_key(PK_B64);
        assert_eq!(pk, Ok(id.public_key()));
        assert_eq!(id.public_key()[..2], [0x8a, 0x88]);
        assert_eq!(verify(&id.public_key(), b"heartbeat:1", &sig), Ok(()));
        assert_eq!(
            verify(&id.public_key(), b"heartbeat:2", &sig),
            Err(SigError::Failed)
        );
    }

    #[test]
    fn wrong_key_and_bad_encodings() {
        let a = Identity::from_seed(&[1; 32]);
        let b = Identity::from_seed(&[2; 32]);
        let sig = a.sign_b64(b"x");
        assert_eq!(verify(&b.public_key(), b"x", &sig), Err(SigError::Failed));
        assert_eq!(verify(&a.public_key(), b"x", ""), Err(SigError::Missing));
        assert_eq!(verify(&a.public_key(), b"x", "!!"), Err(SigError::Encoding));
        assert_eq!(
            verify(&a.public_key(), b"x", "AAAA"),
            Err(SigError::Encoding)
        );
    }

    #[test]
    fn public_key_decoding() {
        assert_eq!(decode_public_key("***"), Err(KeyError::Base64));
        assert_eq!(decode_public_key("AAAA"), Err(KeyError::Length(3)));
        // y = 2 is not on the curve.
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        assert_eq!(
            decode_public_key(&encode_public_key(&not_point)),
            Err(KeyError::NotAPoint)
        );
    }

    #[test]
    fn strong_message_shape() {
        assert_eq!(
            strong_message("heartbeat:1", 42),
            "pilot-registry-sig-v2\nheartbeat:1\n42"
        );
    }

    #[test]
    fn tokens() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", "s3cre"));
        assert!(!token_matches("s3cret", ""));
    }
}
