//! The two wire profiles and the single table of what differs between them
//! (`spec/crypto.md` §9).
//!
//! All profile-dependent behaviour of the crypto layer asks
//! [`ProfileRules::of`]; nothing else matches on the profile.

use crate::wire::WireProfile;

/// How the session key is derived from the X25519 shared secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivation {
    /// HKDF-SHA256, no salt, info `pilot-tunnel-v1`. spec/crypto.md §3
    HkdfSha256,
    /// SHA-256(`pilot-tunnel-v1:` ‖ shared). spec/crypto.md §3
    PrefixedSha256,
}

/// The complete list of behaviour that depends on the wire profile.
///
/// Legacy flaws that are *not* reproduced (plaintext fallback while a key
/// exchange is pending, accepting PILT with encryption on, drop-oldest
/// pending queue, replay window consulted before the AEAD, no inner-source
/// binding) are policy, not wire format; both profiles use the safe rule
/// (see `spec/crypto.md` §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileRules {
    /// Session-key derivation.
    pub derivation: Derivation,
    /// Whether the sender's node ID (u32 BE) is authenticated as AEAD AAD.
    pub sender_id_aad: bool,
    /// Whether a key exchange sent to a peer without a session may be
    /// followed by a key-request PILK. Both generations answer a PILK from
    /// a node whose identity they know with their own PILA (a v1.8 daemon
    /// always has an identity and looks the sender up), so it is on in
    /// both; the field stays so a profile could turn it off.
    pub key_request_pilk: bool,
}

impl ProfileRules {
    /// The rules of `profile`. This is the one switch.
    pub const fn of(profile: WireProfile) -> ProfileRules {
        match profile {
            WireProfile::Current => ProfileRules {
                derivation: Derivation::HkdfSha256,
                sender_id_aad: true,
                key_request_pilk: true,
            },
            WireProfile::Legacy => ProfileRules {
                derivation: Derivation::PrefixedSha256,
                sender_id_aad: false,
                key_request_pilk: true,
            },
        }
    }
}
