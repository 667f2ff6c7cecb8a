//! Session-key derivation from the X25519 shared secret, for both profiles
//! (`spec/crypto.md` §3).

use super::params::{HKDF_INFO, LEGACY_KDF_PREFIX};
use super::profile::{Derivation, ProfileRules};
use super::provider::CryptoProvider;
use crate::wire::WireProfile;

/// Why no session key could be derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KdfError {
    /// The X25519 result was all zeros (low-order peer key).
    #[error("X25519 shared secret is all zeros")]
    ZeroSharedSecret,
}

/// Derives the 32-byte session key from our tunnel secret and the peer's
/// tunnel public key under `profile`.
pub fn derive_session_key<P: CryptoProvider>(
    provider: &P,
    profile: WireProfile,
    our_secret: &[u8; 32],
    peer_public: &[u8; 32],
) -> Result<[u8; 32], KdfError> {
    let shared = provider.x25519_dh(our_secret, peer_public);
    key_from_shared(provider, profile, &shared)
}

/// Derives the session key from an already computed shared secret.
pub fn key_from_shared<P: CryptoProvider>(
    provider: &P,
    profile: WireProfile,
    shared: &[u8; 32],
) -> Result<[u8; 32], KdfError> {
    // Constant-time-ish zero test: fold all bytes before branching.
    if shared.iter().fold(0u8, |acc, b| acc | b) == 0 {
        return Err(KdfError::ZeroSharedSecret);
    }
    Ok(match ProfileRules::of(profile).derivation {
        Derivation::HkdfSha256 => provider.hkdf_sha256(&[], shared, HKDF_INFO),
        Derivation::PrefixedSha256 => provider.sha256(&[LEGACY_KDF_PREFIX, shared]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider::RustCrypto;

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    #[test]
    fn rfc7748_and_both_derivations() {
        let p = RustCrypto;
        let a = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let b_pub = h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(
            p.x25519_dh(&a, &b_pub),
            h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        );
        assert_eq!(
            derive_session_key(&p, WireProfile::Current, &a, &b_pub).unwrap(),
            h32("3e765a2f49fe2a9185dd5d57c08a3525060d2d2c2b2a356fadef25f614d38662")
        );
        assert_eq!(
            derive_session_key(&p, WireProfile::Legacy, &a, &b_pub).unwrap(),
            h32("7fba3471bc8efe5a218c59651ad860926646b44c842bb2747ad11d976d60c50e")
        );
    }

    #[test]
    fn low_order_point_is_rejected() {
        let p = RustCrypto;
        let a = [7u8; 32];
        // The identity point (u = 0) and u = 1 are low order.
        let mut one = [0u8; 32];
        one[0] = 1;
        for bad in [[0u8; 32], one] {
            assert_eq!(
                derive_session_key(&p, WireProfile::Current, &a, &bad),
                Err(KdfError::ZeroSharedSecret)
            );
        }
    }
}
