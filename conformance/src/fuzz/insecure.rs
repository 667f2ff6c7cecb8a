//! A crypto provider with no security at all, for fuzzing only: a
//! fuzzer can forge frames that the tunnel layer accepts and so reach its
//! deep states. It lives here, not in `pilot-proto`, so no build of the
//! protocol crate (the daemon's included) contains it.

use pilot_proto::crypto::params::{NONCE_LEN, TAG_LEN};
use pilot_proto::crypto::provider::{AeadFailure, CryptoProvider};

/// Public keys equal secrets, DH is XOR, signatures are the public key
/// repeated, "encryption" is the identity and the tag a cheap checksum.
/// Everything a fuzzer feeds in is therefore easy to make valid.
#[derive(Debug, Clone, Copy, Default)]
pub struct InsecureProvider;

fn mix(parts: &[&[u8]]) -> [u8; 32] {
    // FNV-1a spread over 32 bytes: deterministic, not cryptographic.
    let mut out = [0u8; 32];
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    for chunk in out.chunks_mut(8) {
        h = h.wrapping_mul(0x0000_0100_0000_01b3) ^ 0x9e37_79b9;
        for (o, b) in chunk.iter_mut().zip(h.to_be_bytes()) {
            *o = b;
        }
    }
    out
}

fn tag(key: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &[u8]) -> [u8; TAG_LEN] {
    let m = mix(&[key, nonce, aad, buf]);
    let mut t = [0u8; TAG_LEN];
    for (o, b) in t.iter_mut().zip(m) {
        *o = b;
    }
    t
}

impl CryptoProvider for InsecureProvider {
    type AeadKey = [u8; 32];

    fn x25519_public(&self, secret: &[u8; 32]) -> [u8; 32] {
        *secret
    }
    fn x25519_dh(&self, secret: &[u8; 32], peer_public: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for ((o, a), b) in out.iter_mut().zip(secret).zip(peer_public) {
            *o = a ^ b;
        }
        out
    }
    fn ed25519_public(&self, seed: &[u8; 32]) -> [u8; 32] {
        *seed
    }
    fn ed25519_sign(&self, seed: &[u8; 32], _msg: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        for (o, b) in sig.iter_mut().zip(seed.iter().chain(seed.iter())) {
            *o = *b;
        }
        sig
    }
    fn ed25519_verify(&self, public: &[u8; 32], _msg: &[u8], sig: &[u8; 64]) -> bool {
        sig.get(..32) == Some(&public[..]) && sig.get(32..) == Some(&public[..])
    }
    fn aead_key(&self, key: &[u8; 32]) -> [u8; 32] {
        *key
    }
    fn aead_seal_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        Ok(tag(key, nonce, aad, buf))
    }
    fn aead_open_in_place(
        &self,
        key: &[u8; 32],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        t: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        if tag(key, nonce, aad, buf) == *t {
            Ok(())
        } else {
            Err(AeadFailure)
        }
    }
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        mix(parts)
    }
    fn hkdf_sha256(&self, salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
        mix(&[salt, ikm, info])
    }
}
