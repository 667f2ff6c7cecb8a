//! The crypto provider: the only place that calls cryptographic libraries.
//!
//! [`CryptoProvider`] is deliberately small (X25519, Ed25519, AES-256-GCM in
//! place, SHA-256 and HKDF-SHA256). [`RustCrypto`] is the pure-Rust one
//! (used by the simulator and the fuzzers). With the `ring` feature,
//! [`Ring`] takes AES-256-GCM from `ring` (several times faster where the
//! CPU has AES-NI/VAES) and [`Selected`] picks one of the two at run time,
//! which is what the drivers use. (The fuzzers' provider without security
//! lives in `pilot-conformance`, outside every build of this crate.)

use super::params::{NONCE_LEN, TAG_LEN};

/// An AEAD operation failed (bad tag, or input longer than AES-GCM allows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD authentication failed")]
pub struct AeadFailure;

/// The cryptographic primitives the tunnel layer needs.
///
/// Keys cross this interface as plain byte arrays, except the expanded AEAD
/// key, which the provider keeps in its own type so the AES key schedule is
/// computed once per session rather than once per packet.
pub trait CryptoProvider {
    /// A ready-to-use AEAD key (for AES-GCM: the expanded key schedule).
    type AeadKey;

    /// The X25519 public key for a 32-byte secret.
    fn x25519_public(&self, secret: &[u8; 32]) -> [u8; 32];
    /// X25519(secret, peer_public). May be all zeros for low-order points;
    /// the caller checks.
    fn x25519_dh(&self, secret: &[u8; 32], peer_public: &[u8; 32]) -> [u8; 32];
    /// The Ed25519 public key for a 32-byte seed.
    fn ed25519_public(&self, seed: &[u8; 32]) -> [u8; 32];
    /// Ed25519 signature of `msg` with the key of `seed` (deterministic).
    fn ed25519_sign(&self, seed: &[u8; 32], msg: &[u8]) -> [u8; 64];
    /// Whether `sig` is a valid Ed25519 signature of `msg` under `public`.
    fn ed25519_verify(&self, public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool;
    /// Expands a 32-byte session key for AEAD use.
    fn aead_key(&self, key: &[u8; 32]) -> Self::AeadKey;
    /// Encrypts `buf` in place and returns the tag.
    fn aead_seal_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure>;
    /// Verifies `tag` and decrypts `buf` in place. On failure the contents
    /// of `buf` are unspecified (`ring` zeroes it): the caller drops the
    /// frame.
    fn aead_open_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure>;
    /// SHA-256 of the concatenation of `parts`.
    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32];
    /// HKDF-SHA256 with the given salt (empty = none), 32 bytes of output.
    fn hkdf_sha256(&self, salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32];
}

/// The real provider: RustCrypto `aes-gcm`, `x25519-dalek`,
/// `ed25519-dalek`, `hkdf` and `sha2`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RustCrypto;

impl CryptoProvider for RustCrypto {
    type AeadKey = aes_gcm::Aes256Gcm;

    fn x25519_public(&self, secret: &[u8; 32]) -> [u8; 32] {
        let s = x25519_dalek::StaticSecret::from(*secret);
        x25519_dalek::PublicKey::from(&s).to_bytes()
    }

    fn x25519_dh(&self, secret: &[u8; 32], peer_public: &[u8; 32]) -> [u8; 32] {
        let s = x25519_dalek::StaticSecret::from(*secret);
        s.diffie_hellman(&x25519_dalek::PublicKey::from(*peer_public))
            .to_bytes()
    }

    fn ed25519_public(&self, seed: &[u8; 32]) -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .to_bytes()
    }

    fn ed25519_sign(&self, seed: &[u8; 32], msg: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        ed25519_dalek::SigningKey::from_bytes(seed)
            .sign(msg)
            .to_bytes()
    }

    fn ed25519_verify(&self, public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public) else {
            return false;
        };
        key.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(sig))
            .is_ok()
    }

    fn aead_key(&self, key: &[u8; 32]) -> Self::AeadKey {
        use aes_gcm::KeyInit;
        aes_gcm::Aes256Gcm::new(key.into())
    }

    fn aead_seal_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        use aes_gcm::AeadInPlace;
        key.encrypt_in_place_detached(nonce.into(), aad, buf)
            .map(Into::into)
            .map_err(|_| AeadFailure)
    }

    fn aead_open_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        use aes_gcm::AeadInPlace;
        key.decrypt_in_place_detached(nonce.into(), aad, buf, tag.into())
            .map_err(|_| AeadFailure)
    }

    fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn hkdf_sha256(&self, salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
        let salt = if salt.is_empty() { None } else { Some(salt) };
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(salt, ikm);
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte output limit, so
        // `expand` cannot fail; keep the zero key on the impossible path.
        let _ = hk.expand(info, &mut out);
        out
    }
}

/// The key-exchange half of a provider that takes X25519 and Ed25519
/// from [`RustCrypto`] (they run once per key exchange, not per packet):
/// one definition for every such provider.
#[cfg(feature = "ring")]
macro_rules! rustcrypto_key_exchange {
    () => {
        fn x25519_public(&self, secret: &[u8; 32]) -> [u8; 32] {
            RustCrypto.x25519_public(secret)
        }
        fn x25519_dh(&self, secret: &[u8; 32], peer_public: &[u8; 32]) -> [u8; 32] {
            RustCrypto.x25519_dh(secret, peer_public)
        }
        fn ed25519_public(&self, seed: &[u8; 32]) -> [u8; 32] {
            RustCrypto.ed25519_public(seed)
        }
        fn ed25519_sign(&self, seed: &[u8; 32], msg: &[u8]) -> [u8; 64] {
            RustCrypto.ed25519_sign(seed, msg)
        }
        fn ed25519_verify(&self, public: &[u8; 32], msg: &[u8], sig: &[u8; 64]) -> bool {
            RustCrypto.ed25519_verify(public, msg, sig)
        }
    };
}

/// SHA-256 and HKDF from [`RustCrypto`], likewise.
#[cfg(feature = "ring")]
macro_rules! rustcrypto_hashes {
    () => {
        fn sha256(&self, parts: &[&[u8]]) -> [u8; 32] {
            RustCrypto.sha256(parts)
        }
        fn hkdf_sha256(&self, salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; 32] {
            RustCrypto.hkdf_sha256(salt, ikm, info)
        }
    };
}

/// AES-256-GCM from `ring`; X25519, Ed25519, SHA-256 and HKDF as
/// [`RustCrypto`] (they run once per key exchange, not per packet, and
/// `ring` has no X25519 with a static secret). Interoperates frame for
/// frame with [`RustCrypto`]: AES-GCM is deterministic.
#[cfg(feature = "ring")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring;

#[cfg(feature = "ring")]
impl CryptoProvider for Ring {
    /// `None` only if ring refused a 32-byte AES-256 key (it cannot); every
    /// operation with it then fails instead of panicking.
    type AeadKey = Option<ring::aead::LessSafeKey>;

    rustcrypto_key_exchange!();

    fn aead_key(&self, key: &[u8; 32]) -> Self::AeadKey {
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key)
            .ok()
            .map(ring::aead::LessSafeKey::new)
    }

    fn aead_seal_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        let tag = key
            .as_ref()
            .ok_or(AeadFailure)?
            .seal_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| AeadFailure)?;
        tag.as_ref().try_into().map_err(|_| AeadFailure)
    }

    fn aead_open_in_place(
        &self,
        key: &Self::AeadKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        key.as_ref()
            .ok_or(AeadFailure)?
            .open_in_place_separate_tag(
                ring::aead::Nonce::assume_unique_for_key(*nonce),
                ring::aead::Aad::from(aad),
                ring::aead::Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadFailure)
    }

    rustcrypto_hashes!();
}

/// Which AEAD implementation a [`Selected`] provider uses.
#[cfg(feature = "ring")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selected {
    /// [`RustCrypto`] (pure Rust).
    RustCrypto,
    /// [`Ring`] (the fastest here; the drivers' default).
    #[default]
    Ring,
}

#[cfg(feature = "ring")]
impl Selected {
    /// Parses `rustcrypto` or `ring` (the `--crypto` flag's values).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rustcrypto" => Some(Selected::RustCrypto),
            "ring" => Some(Selected::Ring),
            _ => None,
        }
    }

    /// The flag value naming this provider.
    pub const fn name(self) -> &'static str {
        match self {
            Selected::RustCrypto => "rustcrypto",
            Selected::Ring => "ring",
        }
    }
}

/// The expanded AEAD key of a [`Selected`] provider.
#[cfg(feature = "ring")]
// One per session, used for every packet: keeping it inline saves a
// pointer chase per seal/open, and 1 KB per session is nothing.
#[allow(clippy::large_enum_variant)]
pub enum SelectedKey {
    /// A [`RustCrypto`] key.
    RustCrypto(aes_gcm::Aes256Gcm),
    /// A [`Ring`] key.
    Ring(Option<ring::aead::LessSafeKey>),
}

#[cfg(feature = "ring")]
impl core::fmt::Debug for SelectedKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            SelectedKey::RustCrypto(_) => "SelectedKey::RustCrypto(..)",
            SelectedKey::Ring(_) => "SelectedKey::Ring(..)",
        })
    }
}

#[cfg(feature = "ring")]
impl CryptoProvider for Selected {
    type AeadKey = SelectedKey;

    rustcrypto_key_exchange!();
    fn aead_key(&self, key: &[u8; 32]) -> SelectedKey {
        match self {
            Selected::RustCrypto => SelectedKey::RustCrypto(RustCrypto.aead_key(key)),
            Selected::Ring => SelectedKey::Ring(Ring.aead_key(key)),
        }
    }
    fn aead_seal_in_place(
        &self,
        key: &SelectedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadFailure> {
        // The key's variant decides; `self` only decides at key creation.
        match key {
            SelectedKey::RustCrypto(k) => RustCrypto.aead_seal_in_place(k, nonce, aad, buf),
            SelectedKey::Ring(k) => Ring.aead_seal_in_place(k, nonce, aad, buf),
        }
    }
    fn aead_open_in_place(
        &self,
        key: &SelectedKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadFailure> {
        match key {
            SelectedKey::RustCrypto(k) => RustCrypto.aead_open_in_place(k, nonce, aad, buf, tag),
            SelectedKey::Ring(k) => Ring.aead_open_in_place(k, nonce, aad, buf, tag),
        }
    }
    rustcrypto_hashes!();
}
