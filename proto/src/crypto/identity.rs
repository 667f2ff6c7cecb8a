//! Long-term Ed25519 node identity, its on-disk JSON file format
//! (`spec/crypto.md` §1.2), and the per-process X25519 tunnel key
//! (`spec/crypto.md` §1.1).
//!
//! Only bytes are handled here; creating the file with mode 0600 (and its
//! directory with 0700) is the driver's job.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand_core::{CryptoRng, RngCore};

use super::provider::CryptoProvider;

/// The Ed25519 identity key pair of a node.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    seed: [u8; 32],
    public: [u8; 32],
}

impl core::fmt::Debug for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the secret half.
        f.debug_struct("Identity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A fresh identity from `rng`.
    pub fn generate<P: CryptoProvider, R: RngCore + CryptoRng>(provider: &P, rng: &mut R) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self::from_seed(provider, seed)
    }

    /// The identity whose 32-byte Ed25519 seed is `seed`.
    pub fn from_seed<P: CryptoProvider>(provider: &P, seed: [u8; 32]) -> Self {
        let public = provider.ed25519_public(&seed);
        Identity { seed, public }
    }

    /// The 32-byte public key registered with the registry.
    pub const fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The 32-byte secret seed.
    pub const fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Signs `msg` with this identity.
    pub fn sign<P: CryptoProvider>(&self, provider: &P, msg: &[u8]) -> [u8; 64] {
        provider.ed25519_sign(&self.seed, msg)
    }

    /// Writes the identity file (JSON, two-space indent, no trailing
    /// newline) into `out` and returns its length.
    pub fn encode_file(&self, out: &mut [u8]) -> Result<usize, IdentityFileError> {
        let mut private = [0u8; 64];
        private[..32].copy_from_slice(&self.seed);
        private[32..].copy_from_slice(&self.public);
        let text = format!(
            "{{\n  \"private_key\": \"{}\",\n  \"public_key\": \"{}\"\n}}",
            STANDARD.encode(private),
            STANDARD.encode(self.public)
        );
        let dst = out
            .get_mut(..text.len())
            .ok_or(IdentityFileError::BufferTooSmall { need: text.len() })?;
        dst.copy_from_slice(text.as_bytes());
        Ok(text.len())
    }

    /// Parses and validates an identity file.
    pub fn decode_file<P: CryptoProvider>(
        provider: &P,
        bytes: &[u8],
    ) -> Result<Self, IdentityFileError> {
        #[derive(serde::Deserialize)]
        struct File {
            private_key: String,
            public_key: String,
        }
        if bytes.len() > IDENTITY_FILE_MAX {
            return Err(IdentityFileError::TooLarge);
        }
        let f: File = serde_json::from_slice(bytes).map_err(|_| IdentityFileError::Json)?;
        let private = decode_exact::<64>(&f.private_key)?;
        let public = decode_exact::<32>(&f.public_key)?;
        let (seed, embedded) = private.split_at(32);
        let seed: [u8; 32] = seed.try_into().map_err(|_| IdentityFileError::Length)?;
        let id = Self::from_seed(provider, seed);
        if id.public != public || embedded != public {
            return Err(IdentityFileError::KeyMismatch);
        }
        Ok(id)
    }
}

/// Identity files larger than this are refused before parsing.
pub const IDENTITY_FILE_MAX: usize = 4096;

fn decode_exact<const N: usize>(s: &str) -> Result<[u8; N], IdentityFileError> {
    // Base64 of N bytes is at most 4*ceil(N/3) characters; refuse more.
    if s.len() > N.div_ceil(3) * 4 {
        return Err(IdentityFileError::Length);
    }
    let v = STANDARD.decode(s).map_err(|_| IdentityFileError::Base64)?;
    v.try_into().map_err(|_| IdentityFileError::Length)
}

/// Why an identity file could not be written or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityFileError {
    /// The output buffer is too small.
    #[error("buffer too small: need {need} bytes")]
    BufferTooSmall {
        /// Bytes required.
        need: usize,
    },
    /// The file exceeds [`IDENTITY_FILE_MAX`].
    #[error("identity file too large")]
    TooLarge,
    /// Not a JSON object with string fields `private_key` and `public_key`.
    #[error("identity file is not valid JSON")]
    Json,
    /// A key is not valid standard base64.
    #[error("identity file key is not valid base64")]
    Base64,
    /// A key has the wrong length (64-byte private, 32-byte public).
    #[error("identity file key has the wrong length")]
    Length,
    /// The public key does not match the one derived from the private key.
    #[error("identity file corrupted: public key does not match private key")]
    KeyMismatch,
}

/// The per-process X25519 tunnel key pair, shared by all peers.
#[derive(Clone)]
pub struct TunnelKey {
    secret: [u8; 32],
    public: [u8; 32],
}

impl core::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TunnelKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl TunnelKey {
    /// A fresh tunnel key from `rng` (call once per process start).
    pub fn generate<P: CryptoProvider, R: RngCore + CryptoRng>(provider: &P, rng: &mut R) -> Self {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        Self::from_secret(provider, secret)
    }

    /// The key pair for a given secret (tests and vectors).
    pub fn from_secret<P: CryptoProvider>(provider: &P, secret: [u8; 32]) -> Self {
        let public = provider.x25519_public(&secret);
        TunnelKey { secret, public }
    }

    /// The 32-byte public key sent in PILK/PILA.
    pub const fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The 32-byte secret.
    pub const fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider::RustCrypto;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const EXAMPLE: &str = "{\n  \"private_key\": \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQGKiOPddAnxlf1S2y08ul1yymcJvx2UEhvzdIgBtA9vXA==\",\n  \"public_key\": \"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=\"\n}";

    #[test]
    fn example_file_round_trips() {
        let id = Identity::decode_file(&RustCrypto, EXAMPLE.as_bytes()).unwrap();
        assert_eq!(id.seed(), &[1u8; 32]);
        let mut buf = [0u8; 512];
        let n = id.encode_file(&mut buf).unwrap();
        assert_eq!(&buf[..n], EXAMPLE.as_bytes());
        assert_eq!(
            id.encode_file(&mut buf[..n - 1]),
            Err(IdentityFileError::BufferTooSmall { need: n })
        );
    }

    #[test]
    fn corrupted_files_are_refused() {
        let p = RustCrypto;
        let wrong_pub = EXAMPLE.replace("iojj3X", "iojj3Y");
        assert_eq!(
            Identity::decode_file(&p, wrong_pub.as_bytes()),
            Err(IdentityFileError::KeyMismatch)
        );
        let short = EXAMPLE.replace("vXA==", "v");
        assert!(Identity::decode_file(&p, short.as_bytes()).is_err());
        assert_eq!(
            Identity::decode_file(&p, b"{\"private_key\": 1}"),
            Err(IdentityFileError::Json)
        );
        assert_eq!(
            Identity::decode_file(&p, &[b' '; IDENTITY_FILE_MAX + 1]),
            Err(IdentityFileError::TooLarge)
        );
    }

    #[test]
    fn generated_identity_is_reproducible_and_round_trips() {
        let p = RustCrypto;
        let a = Identity::generate(&p, &mut ChaCha20Rng::seed_from_u64(9));
        let b = Identity::generate(&p, &mut ChaCha20Rng::seed_from_u64(9));
        assert_eq!(a, b);
        let mut buf = [0u8; 512];
        let n = a.encode_file(&mut buf).unwrap();
        assert_eq!(Identity::decode_file(&p, &buf[..n]).unwrap(), a);
        let sig = a.sign(&p, b"msg");
        assert!(p.ed25519_verify(a.public(), b"msg", &sig));
        assert!(!p.ed25519_verify(a.public(), b"msh", &sig));
    }
}
