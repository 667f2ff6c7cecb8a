//! The private-node trust gate (`spec/transport.md` §4.2 step 3, §6): which
//! authenticated peers may open a connection to, or send a datagram to, a
//! private node.
//!
//! The [`Gate`] owns three bounded tables: the peers the local trust
//! store trusts (set by the daemon, each bound to the identity key it was
//! granted for, if known), the peers the registry vouched for (trust pair
//! or shared network, answered to an [`super::Event::AdmissionCheck`];
//! remembered for [`VOUCH_TTL`]) and the reply window (peers this node
//! contacted in the last [`REPLY_WINDOW`]). It is consulted only after the
//! tunnel authenticated the sender, so it never creates state for
//! unauthenticated input.

use std::collections::BTreeMap;

use core::time::Duration;

use crate::time::Instant;

/// How long a node contacted by us may dial back to ports 1001 and 444
/// (`spec/transport.md` §4.2: 5 min).
pub const REPLY_WINDOW: Duration = Duration::from_secs(300);
/// Most peers the reply window remembers (oldest forgotten first).
pub const REPLY_WINDOW_PEERS: usize = 4096;
/// How long the registry's "trusted / shared network" answer admits a
/// peer before it is asked again.
pub const VOUCH_TTL: Duration = Duration::from_secs(30);
/// Most registry answers remembered (oldest forgotten first).
pub const VOUCHED_PEERS: usize = 4096;
/// Most locally trusted peers the gate holds (the trust store's bound is
/// lower in practice).
pub const TRUSTED_PEERS: usize = 65_536;
/// Destination ports the reply window opens (data exchange and trust).
pub const REPLY_PORTS: [u16; 2] = [1001, 444];

/// What the gate decided about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The gate is off (public node) or the peer is admitted.
    Admit,
    /// Dropped; the registry was not asked about this peer recently
    /// (the caller asks it, see [`super::Event::AdmissionCheck`]).
    DropAsk,
    /// Dropped; the registry's answer is pending or was no.
    Drop,
}

/// The private-node trust gate of one node. Off until [`Gate::set_enabled`].
#[derive(Debug, Default)]
pub struct Gate {
    enabled: bool,
    trusted: BTreeMap<u32, Option<[u8; 32]>>,
    vouched: BTreeMap<u32, Instant>,
    /// Peers asked about (answer pending or negative) → when asked.
    asked: BTreeMap<u32, Instant>,
    contacted: BTreeMap<u32, Instant>,
}

/// Inserts `peer → at`, evicting the oldest entry when `cap` is reached.
fn insert_bounded(map: &mut BTreeMap<u32, Instant>, peer: u32, at: Instant, cap: usize) {
    if !map.contains_key(&peer) && map.len() >= cap {
        if let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p) {
            map.remove(&oldest);
        }
    }
    map.insert(peer, at);
}

impl Gate {
    /// Turns the gate on (private node) or off (public node).
    pub fn set_enabled(&mut self, enabled: bool) {
        self.enabled = enabled;
    }

    /// Whether the gate is on.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Replaces the locally trusted peers: node → identity key the trust
    /// was granted for (`None`: key unknown, trust by node ID). At most
    /// [`TRUSTED_PEERS`] are kept.
    pub fn set_trusted(&mut self, peers: impl IntoIterator<Item = (u32, Option<[u8; 32]>)>) {
        self.trusted = peers.into_iter().take(TRUSTED_PEERS).collect();
    }

    /// Forgets everything the registry said about `peer` (its trust or
    /// membership just ended).
    pub fn forget(&mut self, peer: u32) {
        self.vouched.remove(&peer);
        self.asked.remove(&peer);
    }

    /// The registry vouched for `peer` (trust pair or shared network).
    pub fn vouch(&mut self, now: Instant, peer: u32) {
        self.asked.remove(&peer);
        insert_bounded(&mut self.vouched, peer, now, VOUCHED_PEERS);
    }

    /// This node contacted `peer` (a dial or a datagram).
    pub fn contacted(&mut self, now: Instant, peer: u32) {
        if self.enabled {
            insert_bounded(&mut self.contacted, peer, now, REPLY_WINDOW_PEERS);
        }
    }

    /// Decides about a SYN (`datagram` false) or a datagram from `peer`
    /// to local port `port`. `identity` is the peer's current identity
    /// key if the session proved it; `authentic` whether the session
    /// authenticated the sender (only then may the registry be asked).
    pub fn check(
        &mut self,
        now: Instant,
        peer: u32,
        identity: Option<[u8; 32]>,
        authentic: bool,
        port: u16,
        datagram: bool,
    ) -> Verdict {
        if !self.enabled {
            return Verdict::Admit;
        }
        let trusted = match self.trusted.get(&peer) {
            Some(None) => true,
            Some(Some(k)) => identity == Some(*k),
            None => false,
        };
        if trusted {
            return Verdict::Admit;
        }
        let fresh = |t: Option<&Instant>, ttl: Duration| {
            t.is_some_and(|t| now.saturating_duration_since(*t) < ttl)
        };
        if !datagram
            && REPLY_PORTS.contains(&port)
            && fresh(self.contacted.get(&peer), REPLY_WINDOW)
        {
            return Verdict::Admit;
        }
        if fresh(self.vouched.get(&peer), VOUCH_TTL) {
            return Verdict::Admit;
        }
        self.vouched.remove(&peer);
        if !authentic || fresh(self.asked.get(&peer), VOUCH_TTL) {
            return Verdict::Drop;
        }
        insert_bounded(&mut self.asked, peer, now, VOUCHED_PEERS);
        Verdict::DropAsk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Instant {
        Instant::from_nanos(s * 1_000_000_000)
    }

    #[test]
    fn off_admits_everyone_on_admits_only_trusted() {
        let mut g = Gate::default();
        assert_eq!(g.check(t(0), 5, None, true, 7, false), Verdict::Admit);
        g.set_enabled(true);
        assert_eq!(g.check(t(0), 5, None, true, 7, false), Verdict::DropAsk);
        assert_eq!(g.check(t(1), 5, None, true, 7, false), Verdict::Drop);
        g.set_trusted([(5, Some([1; 32])), (6, None)]);
        assert_eq!(
            g.check(t(1), 5, Some([1; 32]), true, 7, false),
            Verdict::Admit
        );
        // Trust is bound to the key it was granted for.
        assert_eq!(
            g.check(t(1), 5, Some([2; 32]), true, 7, false),
            Verdict::Drop
        );
        assert_eq!(
            g.check(t(1), 6, Some([2; 32]), true, 7, true),
            Verdict::Admit
        );
        // An unauthenticated sender never triggers a registry check.
        assert_eq!(g.check(t(1), 8, None, false, 7, true), Verdict::Drop);
    }

    #[test]
    fn reply_window_opens_only_reply_ports_for_streams_and_expires() {
        let mut g = Gate::default();
        g.set_enabled(true);
        g.contacted(t(0), 9);
        assert_eq!(g.check(t(10), 9, None, true, 1001, false), Verdict::Admit);
        assert_eq!(g.check(t(10), 9, None, true, 444, false), Verdict::Admit);
        assert_eq!(g.check(t(10), 9, None, true, 7, false), Verdict::DropAsk);
        assert_eq!(g.check(t(10), 9, None, true, 1001, true), Verdict::Drop);
        assert_eq!(
            g.check(t(301), 9, None, true, 1001, false),
            Verdict::DropAsk
        );
    }

    #[test]
    fn registry_vouch_admits_for_a_while_and_forget_ends_it() {
        let mut g = Gate::default();
        g.set_enabled(true);
        g.vouch(t(0), 3);
        assert_eq!(g.check(t(29), 3, None, true, 7, true), Verdict::Admit);
        assert_eq!(g.check(t(30), 3, None, true, 7, true), Verdict::DropAsk);
        g.vouch(t(31), 3);
        g.forget(3);
        assert_eq!(g.check(t(32), 3, None, true, 7, false), Verdict::DropAsk);
    }

    #[test]
    fn tables_stay_bounded() {
        let mut g = Gate::default();
        g.set_enabled(true);
        for p in 0..(REPLY_WINDOW_PEERS as u32 + 10) {
            g.contacted(t(u64::from(p)), p);
            let _ = g.check(t(u64::from(p)), p, None, true, 7, false);
            g.vouch(t(u64::from(p)), p);
        }
        assert_eq!(g.contacted.len(), REPLY_WINDOW_PEERS);
        assert!(g.asked.len() <= VOUCHED_PEERS);
        assert_eq!(g.vouched.len(), VOUCHED_PEERS);
        // The oldest were forgotten.
        assert!(!g.contacted.contains_key(&0));
    }
}
