//! Secure channel on port 443 (`spec/services.md` §11): an end-to-end
//! encryption layer over one ordinary stream. Sans-IO: key agreement and
//! derivation, and sealing/opening records; the caller moves the bytes.
//!
//! Handshake: the client writes its 32-byte ephemeral X25519 public key,
//! the server (after reading exactly 32 bytes) writes its own; both build a
//! [`Channel`] from their secret and the peer's public key. The key
//! derivation and the associated data differ between the wire profiles
//! (legacy = the v1.8 generation, current = later): see [`derive_key`].

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::wire::WireProfile;

/// Length of an X25519 public key (the whole handshake message).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Record header: the big-endian `u32` length.
pub const HEADER_LEN: usize = 4;
/// Nonce: 4-byte role prefix and big-endian `u64` counter.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Largest record length field accepted (nonce + ciphertext + tag).
pub const MAX_RECORD_LEN: usize = 16 * 1024 * 1024;
/// Largest plaintext one record carries.
pub const MAX_PLAINTEXT: usize = MAX_RECORD_LEN - NONCE_LEN - TAG_LEN;
/// Deadline of the whole handshake (drivers enforce it).
pub const HANDSHAKE_TIMEOUT: core::time::Duration = core::time::Duration::from_secs(10);

/// Prefix of the legacy key derivation (16 ASCII bytes).
const LEGACY_PREFIX: &[u8; 16] = b"pilot-secure-v1:";
/// HKDF `info` of the current key derivation.
const HKDF_INFO: &[u8] = b"pilot-secure-v1";

/// Which end of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Dialled the stream; sends its public key first.
    Client,
    /// Accepted the stream.
    Server,
}

impl Role {
    /// The 4-byte nonce prefix of records this role sends.
    pub const fn prefix(self) -> [u8; 4] {
        match self {
            Role::Server => [0, 0, 0, 1],
            Role::Client => [0, 0, 0, 2],
        }
    }

    fn peer(self) -> Role {
        match self {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        }
    }
}

/// Why the channel refused something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecureError {
    /// The peer's key gives an all-zero (non-contributory) shared secret.
    #[error("peer public key is a low-order point")]
    WeakKey,
    /// A record length field below the nonce size or above 16 MiB.
    #[error("record length {0} out of range")]
    BadLength(usize),
    /// A record that does not authenticate (tampered, wrong key, wrong
    /// profile).
    #[error("record failed authentication")]
    BadRecord,
    /// A record whose nonce does not carry the peer's role prefix (for
    /// example one of our own records reflected back).
    #[error("record nonce has the wrong role prefix")]
    WrongRole,
    /// A record counter not above the previous one.
    #[error("record counter {got} not above {last}")]
    Replay {
        /// Counter received.
        got: u64,
        /// Last counter accepted.
        last: u64,
    },
    /// A plaintext longer than [`MAX_PLAINTEXT`].
    #[error("plaintext of {0} bytes is larger than one record")]
    TooLarge(usize),
    /// The send counter is exhausted.
    #[error("record counter exhausted")]
    Exhausted,
}

/// The public key of an X25519 secret.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

/// The X25519 shared secret; refuses a non-contributory result.
pub fn shared_secret(secret: &[u8; 32], peer_public: &[u8; 32]) -> Result<[u8; 32], SecureError> {
    let s = StaticSecret::from(*secret).diffie_hellman(&PublicKey::from(*peer_public));
    if !s.was_contributory() {
        return Err(SecureError::WeakKey);
    }
    Ok(s.to_bytes())
}

/// The AES-256-GCM key: legacy `SHA-256("pilot-secure-v1:" ‖ shared)`;
/// current HKDF-SHA256 (empty salt, info `pilot-secure-v1`).
pub fn derive_key(profile: WireProfile, shared: &[u8; 32]) -> [u8; 32] {
    match profile {
        WireProfile::Legacy => {
            let mut h = Sha256::new();
            h.update(LEGACY_PREFIX);
            h.update(shared);
            h.finalize().into()
        }
        WireProfile::Current => {
            let mut key = [0u8; 32];
            // 32 bytes is always a valid HKDF-SHA256 output length.
            let _ = Hkdf::<Sha256>::new(None, shared).expand(HKDF_INFO, &mut key);
            key
        }
    }
}

/// One direction-aware secure channel: seals what we send, opens what the
/// peer sends.
pub struct Channel {
    cipher: Aes256Gcm,
    profile: WireProfile,
    role: Role,
    send_counter: u64,
    recv_counter: u64,
}

impl core::fmt::Debug for Channel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("profile", &self.profile)
            .field("role", &self.role)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The channel of `role` after the key exchange.
    pub fn new(
        profile: WireProfile,
        role: Role,
        own_secret: &[u8; 32],
        peer_public: &[u8; 32],
    ) -> Result<Channel, SecureError> {
        let shared = shared_secret(own_secret, peer_public)?;
        Ok(Channel::from_key(
            profile,
            role,
            &derive_key(profile, &shared),
        ))
    }

    /// A channel with an already derived key.
    pub fn from_key(profile: WireProfile, role: Role, key: &[u8; 32]) -> Channel {
        Channel {
            cipher: Aes256Gcm::new(key.into()),
            profile,
            role,
            send_counter: 0,
            recv_counter: 0,
        }
    }

    fn aad(&self, sender: Role) -> [u8; 4] {
        sender.prefix()
    }

    /// Appends one record carrying `plaintext` to `out`.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SecureError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(SecureError::TooLarge(plaintext.len()));
        }
        let counter = self
            .send_counter
            .checked_add(1)
            .ok_or(SecureError::Exhausted)?;
        self.send_counter = counter;
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.role.prefix());
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let aad = self.aad(self.role);
        let payload = Payload {
            msg: plaintext,
            aad: match self.profile {
                WireProfile::Legacy => &[],
                WireProfile::Current => &aad,
            },
        };
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .map_err(|_| SecureError::TooLarge(plaintext.len()))?;
        let len = (NONCE_LEN + ct.len()) as u32;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(())
    }

    /// Opens the record at the front of `buf`: `Ok(None)` if it is not
    /// complete yet, else the plaintext and the bytes consumed.
    pub fn open(&mut self, buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SecureError> {
        let Some(head) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(NONCE_LEN..=MAX_RECORD_LEN).contains(&len) {
            return Err(SecureError::BadLength(len));
        }
        let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let (nonce, ct) = body.split_at(NONCE_LEN);
        let peer = self.role.peer();
        if nonce[..4] != peer.prefix() {
            return Err(SecureError::WrongRole);
        }
        let mut c = [0u8; 8];
        c.copy_from_slice(&nonce[4..]);
        let counter = u64::from_be_bytes(c);
        if counter <= self.recv_counter {
            return Err(SecureError::Replay {
                got: counter,
                last: self.recv_counter,
            });
        }
        let aad = self.aad(peer);
        let payload = Payload {
            msg: ct,
            aad: match self.profile {
                WireProfile::Legacy => &[],
                WireProfile::Current => &aad,
            },
        };
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), payload)
            .map_err(|_| SecureError::BadRecord)?;
        self.recv_counter = counter;
        Ok(Some((plain, HEADER_LEN + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    const CLIENT: [u8; 32] = [0x11; 32];
    const SERVER: [u8; 32] = [0x22; 32];

    /// The test vector of `spec/services.md` §11.3.
    #[test]
    fn vector_keys_and_first_record() {
        let cp = public_key(&CLIENT);
        let sp = public_key(&SERVER);
        assert_eq!(
            cp.to_vec(),
            h("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
        );
        assert_eq!(
            sp.to_vec(),
            h("0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20")
        );
        let shared = shared_secret(&CLIENT, &sp).unwrap();
        assert_eq!(shared, shared_secret(&SERVER, &cp).unwrap());
        assert_eq!(
            shared.to_vec(),
            h("9e004098efc091d4ec2663b4e9f5cfd4d7064571690b4bea97ab146ab9f35056")
        );
        assert_eq!(
            derive_key(WireProfile::Legacy, &shared).to_vec(),
            h("a7404ff42a4e07cef5e035eeab1362d0b86fca6a2262a6d94bb0534bfb237d77")
        );
        assert_eq!(
            derive_key(WireProfile::Current, &shared).to_vec(),
            h("93cb815a26737b8b9ef893fc4ab8209648f339140436ba61a7714fe963d1b2cf")
        );
        for (profile, record) in [
            (
                WireProfile::Legacy,
                "00000021 000000020000000000000001 895a87c0aeaafaf4c1d4669f561e9ee1486812b6c2",
            ),
            (
                WireProfile::Current,
                "00000021 000000020000000000000001 31137989759c7b095fd695e35eeb45c9f1c2b797c0",
            ),
        ] {
            let mut client = Channel::new(profile, Role::Client, &CLIENT, &sp).unwrap();
            let mut out = Vec::new();
            client.seal(b"hello", &mut out).unwrap();
            assert_eq!(out, h(record), "{profile:?}");
            let mut server = Channel::new(profile, Role::Server, &SERVER, &cp).unwrap();
            let (plain, used) = server.open(&out).unwrap().unwrap();
            assert_eq!((plain.as_slice(), used), (&b"hello"[..], out.len()));
        }
    }

    #[test]
    fn tampering_reflection_replay_and_profile_mismatch_are_refused() {
        let sp = public_key(&SERVER);
        let cp = public_key(&CLIENT);
        let mut client = Channel::new(WireProfile::Current, Role::Client, &CLIENT, &sp).unwrap();
        let mut server = Channel::new(WireProfile::Current, Role::Server, &SERVER, &cp).unwrap();
        let mut rec = Vec::new();
        client.seal(b"payload", &mut rec).unwrap();
        for i in HEADER_LEN..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x01;
            assert!(server.open(&bad).is_err(), "flip at {i} accepted");
        }
        // Incomplete input waits.
        assert_eq!(server.open(&rec[..rec.len() - 1]), Ok(None));
        assert!(server.open(&rec).unwrap().is_some());
        // The same record again is a replay.
        assert!(matches!(server.open(&rec), Err(SecureError::Replay { .. })));
        // Our own record reflected back.
        let mut own = Vec::new();
        server.seal(b"x", &mut own).unwrap();
        assert_eq!(server.open(&own), Err(SecureError::WrongRole));
        // A legacy peer's record does not open under the current profile.
        let mut legacy = Channel::new(WireProfile::Legacy, Role::Client, &CLIENT, &sp).unwrap();
        let mut fresh = Channel::new(WireProfile::Current, Role::Server, &SERVER, &cp).unwrap();
        let mut l = Vec::new();
        legacy.seal(b"x", &mut l).unwrap();
        assert_eq!(fresh.open(&l), Err(SecureError::BadRecord));
        // Length limits.
        assert_eq!(fresh.open(&[0, 0, 0, 11]), Err(SecureError::BadLength(11)));
        assert!(matches!(
            fresh.open(&[0x01, 0, 0, 1]),
            Err(SecureError::BadLength(_))
        ));
        // A low-order peer key.
        assert_eq!(
            Channel::new(WireProfile::Current, Role::Client, &CLIENT, &[0u8; 32]).err(),
            Some(SecureError::WeakKey)
        );
    }
}
