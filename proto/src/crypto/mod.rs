//! Tunnel cryptography (`spec/crypto.md`): node identity and tunnel keys,
//! the PILK/PILA key exchange, session-key derivation for both wire
//! profiles, the AES-256-GCM envelope of PILS frames, the replay window,
//! and the per-peer session table that ties them together.
//!
//! Everything here is sans-IO: randomness comes from an injected
//! `rand_core` RNG, time is a [`crate::time::Instant`] passed in, and every
//! primitive goes through a [`provider::CryptoProvider`] so the fuzzer can
//! swap in a no-security provider.

pub mod drops;
pub mod envelope;
pub(crate) mod halfopen;
pub mod identity;
pub mod kdf;
pub mod kx;
pub mod params;
pub(crate) mod pending;
pub(crate) mod profile;
pub mod provider;
pub(crate) mod ratelimit;
pub mod replay;
pub(crate) mod salvage;
pub mod session;
