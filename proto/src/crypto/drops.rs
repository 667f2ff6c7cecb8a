//! Counted drops of unauthenticated or unwanted tunnel input
//! (`spec/crypto.md` §12): one counter per reason, so an operator can see
//! in `info` what a node refused and why.
//!
//! The rule these counters stand for: a frame that fails authentication
//! (bad tag, bad signature, replay, unknown or unvouched key) is counted
//! here and dropped. It never drops, re-keys, delays or arms a timer on a
//! session, and a stranger creates no per-sender state.
//!
//! [`AuthDrop`] is the list of reasons; add a variant (and its name) to
//! count a new one. [`AuthDrops`] is a fixed array of counters, so it is
//! `Copy` and costs nothing per sender.

/// Why a tunnel frame was dropped without effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthDrop {
    /// Not a decodable tunnel frame (random bytes, bad length).
    Malformed,
    /// PILS from a node we hold no session with.
    PilsNoSession,
    /// PILS whose AEAD tag does not verify (forged or corrupted).
    PilsBadTag,
    /// Authentic PILS whose counter was already seen (a replay).
    PilsReplay,
    /// Authentic PILS whose counter is older than the replay window.
    PilsOutsideWindow,
    /// Authentic PILS under a nonce prefix the peer used before it
    /// re-derived the session (a late or replayed frame of an earlier
    /// receive epoch, `spec/crypto.md` §5.4).
    PilsStaleEpoch,
    /// Opened PILS whose inner source differs from the tunnel sender.
    PilsSpoofedSource,
    /// PILT while encryption is on.
    PlaintextRefused,
    /// Key exchange over the per-source budget.
    KxRateLimited,
    /// Key exchange from a stranger over the global stranger budget.
    KxStrangerBudget,
    /// PILA whose signature does not verify.
    KxBadSignature,
    /// PILA whose identity key differs from the one the registry vouches
    /// for.
    KxIdentityMismatch,
    /// PILK from a node whose identity is known, or from a stranger
    /// (answered at most with our own key exchange, never installed).
    KxUnauthenticated,
    /// Key exchange claiming our own node ID.
    KxOwnNode,
    /// Key exchange whose X25519 key gives an all-zero shared secret.
    KxBadKey,
    /// Key exchange refused because the session table is full.
    KxTooManySessions,
    /// Key exchange carrying a different tunnel key while the installed
    /// session is live (a replayed key exchange of the peer's earlier
    /// process).
    KxStaleKey,
    /// A held (half-open) key exchange pushed out by a newer one.
    KxHeldEvicted,
    /// A held key exchange whose key was never vouched for in time.
    KxHeldExpired,
    /// A held key exchange whose key the registry does not vouch for.
    KxUnvouched,
    /// A held key exchange dropped because the budget of registry look-ups
    /// for strangers was used up (the sender's retransmission gets a new
    /// chance).
    KxLookupBudget,
}

impl AuthDrop {
    /// Every reason, in counter order.
    pub const ALL: [AuthDrop; 21] = [
        AuthDrop::Malformed,
        AuthDrop::PilsNoSession,
        AuthDrop::PilsBadTag,
        AuthDrop::PilsReplay,
        AuthDrop::PilsOutsideWindow,
        AuthDrop::PilsStaleEpoch,
        AuthDrop::PilsSpoofedSource,
        AuthDrop::PlaintextRefused,
        AuthDrop::KxRateLimited,
        AuthDrop::KxStrangerBudget,
        AuthDrop::KxBadSignature,
        AuthDrop::KxIdentityMismatch,
        AuthDrop::KxUnauthenticated,
        AuthDrop::KxOwnNode,
        AuthDrop::KxBadKey,
        AuthDrop::KxTooManySessions,
        AuthDrop::KxStaleKey,
        AuthDrop::KxHeldEvicted,
        AuthDrop::KxHeldExpired,
        AuthDrop::KxUnvouched,
        AuthDrop::KxLookupBudget,
    ];

    /// The snake-case name used in `info` and logs.
    pub fn name(self) -> &'static str {
        match self {
            AuthDrop::Malformed => "malformed",
            AuthDrop::PilsNoSession => "pils_no_session",
            AuthDrop::PilsBadTag => "pils_bad_tag",
            AuthDrop::PilsReplay => "pils_replay",
            AuthDrop::PilsOutsideWindow => "pils_outside_window",
            AuthDrop::PilsStaleEpoch => "pils_stale_epoch",
            AuthDrop::PilsSpoofedSource => "pils_spoofed_source",
            AuthDrop::PlaintextRefused => "plaintext_refused",
            AuthDrop::KxRateLimited => "kx_rate_limited",
            AuthDrop::KxStrangerBudget => "kx_stranger_budget",
            AuthDrop::KxBadSignature => "kx_bad_signature",
            AuthDrop::KxIdentityMismatch => "kx_identity_mismatch",
            AuthDrop::KxUnauthenticated => "kx_unauthenticated",
            AuthDrop::KxOwnNode => "kx_own_node",
            AuthDrop::KxBadKey => "kx_bad_key",
            AuthDrop::KxTooManySessions => "kx_too_many_sessions",
            AuthDrop::KxStaleKey => "kx_stale_key",
            AuthDrop::KxHeldEvicted => "kx_held_evicted",
            AuthDrop::KxHeldExpired => "kx_held_expired",
            AuthDrop::KxUnvouched => "kx_unvouched",
            AuthDrop::KxLookupBudget => "kx_lookup_budget",
        }
    }

    fn index(self) -> usize {
        AuthDrop::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// One counter per [`AuthDrop`] reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthDrops {
    counts: [u64; AuthDrop::ALL.len()],
}

impl AuthDrops {
    /// Counts one drop for `reason`.
    pub fn add(&mut self, reason: AuthDrop) {
        if let Some(c) = self.counts.get_mut(reason.index()) {
            *c = c.saturating_add(1);
        }
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: AuthDrop) -> u64 {
        self.counts.get(reason.index()).copied().unwrap_or(0)
    }

    /// Drops over every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    /// `(reason, count)` for every reason, in counter order.
    pub fn iter(&self) -> impl Iterator<Item = (AuthDrop, u64)> + '_ {
        AuthDrop::ALL.iter().map(|r| (*r, self.get(*r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let mut d = AuthDrops::default();
        for (i, r) in AuthDrop::ALL.iter().enumerate() {
            for _ in 0..=i {
                d.add(*r);
            }
        }
        for (i, (r, n)) in d.iter().enumerate() {
            assert_eq!(n, i as u64 + 1, "{}", r.name());
        }
        let names: std::collections::BTreeSet<_> = AuthDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), AuthDrop::ALL.len());
        assert_eq!(d.total(), (1..=AuthDrop::ALL.len() as u64).sum::<u64>());
    }
}
