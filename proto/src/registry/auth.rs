//! Request authentication (`spec/registry.md` §5): Ed25519 signatures over
//! the reference's fixed challenge strings (the *legacy* form), our
//! timestamped *strong* form, public-key decoding and admin-token
//! comparison. Ed25519 is used directly through `ed25519-dalek`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use curve25519_dalek::{EdwardsPoint, Scalar};
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
    /// A point of small order (for example the all-zero key): every
    /// signature check against it is meaningless.
    #[error("small-order Ed25519 key")]
    SmallOrder,
    /// A non-canonical encoding of a point (y not reduced).
    #[error("non-canonical Ed25519 key encoding")]
    NonCanonical,
    /// A point with a torsion component: no honest key generator makes one.
    #[error("Ed25519 key outside the prime-order subgroup")]
    Torsion,
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

/// Decodes a base64 public key and checks it is a usable Ed25519 key
/// ([`check_public_key`]).
pub fn decode_public_key(b64: &str) -> Result<PublicKey, KeyError> {
    let key = decode_key_bytes(b64)?;
    check_public_key(&key)?;
    Ok(key)
}

/// Decodes a base64 public key into its 32 bytes without checking that
/// they are a usable key (the caller runs [`check_public_key`] where it
/// is needed).
pub fn decode_key_bytes(b64: &str) -> Result<PublicKey, KeyError> {
    let bytes = B64.decode(b64).map_err(|_| KeyError::Base64)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))
}

/// Checks that 32 bytes are a key an honest node can have: the canonical
/// encoding of a curve point of the prime-order subgroup (so neither small
/// order, like the all-zero key, nor with a torsion component).
pub fn check_public_key(key: &PublicKey) -> Result<(), KeyError> {
    let vk = VerifyingKey::from_bytes(key).map_err(|_| KeyError::NotAPoint)?;
    if vk.is_weak() {
        return Err(KeyError::SmallOrder);
    }
    // The only other non-canonical encodings (x = 0 with the sign bit
    // set) are of small-order points, refused above.
    if !y_is_reduced(key) {
        return Err(KeyError::NonCanonical);
    }
    if !torsion_free(&vk.to_edwards()) {
        return Err(KeyError::Torsion);
    }
    Ok(())
}

/// The encoded y coordinate (the low 255 bits) is below p = 2²⁵⁵ − 19.
fn y_is_reduced(key: &PublicKey) -> bool {
    let top = key[31] & 0x7f;
    !(top == 0x7f && key[1..31].iter().all(|b| *b == 0xff) && key[0] >= 0xed)
}

/// ℓ·P is the identity, tested as (ℓ − 1)·P = −P: ℓ − 1 is a scalar, and
/// a public key may be multiplied in variable time, about twice as fast
/// as the constant-time `is_torsion_free` (which was half the
/// rendezvous's CPU time under a registration burst).
fn torsion_free(p: &EdwardsPoint) -> bool {
    EdwardsPoint::vartime_double_scalar_mul_basepoint(&-Scalar::ONE, p, &Scalar::ZERO) == -p
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

    /// A point of order 8 (the curve's canonical 8-torsion generator).
    const EIGHT_TORSION_1: [u8; 32] = [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ];

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
        // The all-zero key decodes to a point of order 4; the identity
        // (y = 1) has order 1.
        assert_eq!(
            decode_public_key(&encode_public_key(&[0u8; 32])),
            Err(KeyError::SmallOrder)
        );
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            decode_public_key(&encode_public_key(&identity)),
            Err(KeyError::SmallOrder)
        );
        // y = p + 1 encodes the identity again, non-canonically: refused
        // (as small order, which is checked first).
        let mut p_plus_1 = [0xffu8; 32];
        p_plus_1[0] = 0xee;
        p_plus_1[31] = 0x7f;
        assert!(decode_public_key(&encode_public_key(&p_plus_1)).is_err());
        // A genuine key plus a point of order 8 is on the curve but has a
        // torsion component.
        let genuine = Identity::from_seed(&[7; 32]).public_key();
        let good = VerifyingKey::from_bytes(&genuine).unwrap().to_edwards();
        let torsion = VerifyingKey::from_bytes(&EIGHT_TORSION_1)
            .unwrap()
            .to_edwards();
        let mixed = (good + torsion).compress().to_bytes();
        assert_eq!(
            decode_public_key(&encode_public_key(&mixed)),
            Err(KeyError::Torsion)
        );
        assert_eq!(decode_public_key(&encode_public_key(&genuine)), Ok(genuine));
    }

    /// Every torsion component, on a few genuine keys, is refused, and the
    /// fast test agrees with the constant-time one of the library on
    /// every point tried.
    #[test]
    fn every_torsion_component_is_refused() {
        let t8 = VerifyingKey::from_bytes(&EIGHT_TORSION_1)
            .unwrap()
            .to_edwards();
        for seed in 1..=4u8 {
            let genuine = Identity::from_seed(&[seed; 32]).public_key();
            let g = VerifyingKey::from_bytes(&genuine).unwrap().to_edwards();
            assert!(torsion_free(&g) && g.is_torsion_free());
            let mut t = t8;
            for k in 1..8 {
                let mixed = g + t;
                assert!(!torsion_free(&mixed) && !mixed.is_torsion_free(), "k = {k}");
                assert_eq!(
                    check_public_key(&mixed.compress().to_bytes()),
                    Err(KeyError::Torsion),
                    "k = {k}"
                );
                t += t8;
            }
        }
    }

    /// y + p for a small y of a point that is neither small-order nor
    /// off the curve: the same point, encoded non-canonically.
    #[test]
    fn a_non_canonical_y_is_refused() {
        let mut found = 0;
        for y in 2u8..19 {
            let mut canonical = [0u8; 32];
            canonical[0] = y;
            let Ok(vk) = VerifyingKey::from_bytes(&canonical) else {
                continue;
            };
            if vk.is_weak() {
                continue;
            }
            // y + p = y + 2^255 - 19, little-endian (y < 19: no carry
            // past the first byte).
            let mut alias = [0xffu8; 32];
            alias[0] = 0xed + y;
            alias[31] = 0x7f;
            assert!(VerifyingKey::from_bytes(&alias).is_ok(), "y = {y}");
            assert_eq!(check_public_key(&alias), Err(KeyError::NonCanonical));
            assert!(y_is_reduced(&canonical));
            found += 1;
        }
        assert!(found > 0, "no such y below 19");
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
