//! The half-open table (`spec/crypto.md` §2.8): signed key exchanges from
//! nodes whose registry key we do not know yet, held until the key is
//! looked up. It is the only state an unauthenticated sender can create,
//! and it is small, shared and fairly evicted:
//!
//! * at most `capacity` entries in total, one per claimed sender (a newer
//!   frame for the same sender replaces the older one);
//! * at most `per_source` entries per source IP;
//! * when full, the oldest entry of the source IP holding the most
//!   entries is evicted, so one flooding source cannot push out the frame
//!   of another;
//! * entries older than `max_age` are dropped.
//!
//! Only frames whose signature already verified under the key they carry
//! are held, so a later look-up result costs a key comparison, not a
//! second signature check.

use std::collections::BTreeMap;

use core::net::{IpAddr, SocketAddr};
use core::time::Duration;

use super::kx::KeyExchange;
use crate::time::Instant;

/// Default number of held key exchanges.
pub const HALF_OPEN_CAPACITY: usize = 256;
/// Default number of held key exchanges per source IP.
pub const HALF_OPEN_PER_SOURCE: usize = 16;
/// How long a held key exchange waits for its key.
pub const HALF_OPEN_MAX_AGE: Duration = Duration::from_secs(10);

/// One held key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The frame (always a PILA with a self-consistent signature).
    pub kx: KeyExchange,
    /// Where it came from (becomes the peer's endpoint if it is vouched
    /// for).
    pub from: SocketAddr,
    /// When it arrived.
    pub at: Instant,
}

/// What [`HalfOpen::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldOutcome {
    /// First frame held for this sender: the key should be looked up.
    New,
    /// Replaced an older frame of the same sender (a look-up is already
    /// under way).
    Replaced,
    /// Held after evicting (or expiring) this many other entries.
    Evicted(usize),
}

/// See the module docs.
#[derive(Debug)]
pub struct HalfOpen {
    capacity: usize,
    per_source: usize,
    max_age: Duration,
    entries: BTreeMap<u32, Held>,
    per_ip: BTreeMap<IpAddr, usize>,
}

impl Default for HalfOpen {
    fn default() -> Self {
        Self::new(HALF_OPEN_CAPACITY, HALF_OPEN_PER_SOURCE, HALF_OPEN_MAX_AGE)
    }
}

impl HalfOpen {
    /// An empty table with these bounds (`capacity` and `per_source` are
    /// at least 1).
    pub fn new(capacity: usize, per_source: usize, max_age: Duration) -> Self {
        HalfOpen {
            capacity: capacity.max(1),
            per_source: per_source.max(1),
            max_age,
            entries: BTreeMap::new(),
            per_ip: BTreeMap::new(),
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether a frame of `sender` is held.
    #[cfg(test)]
    pub fn contains(&self, sender: u32) -> bool {
        self.entries.contains_key(&sender)
    }

    /// The identity key the frame held for `sender` carries.
    pub fn key_of(&self, sender: u32) -> Option<[u8; 32]> {
        self.entries
            .get(&sender)
            .and_then(|h| h.kx.auth.map(|a| a.ed25519))
    }

    fn remove_entry(&mut self, sender: u32) -> Option<Held> {
        let h = self.entries.remove(&sender)?;
        let ip = h.from.ip();
        if let Some(c) = self.per_ip.get_mut(&ip) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.per_ip.remove(&ip);
            }
        }
        Some(h)
    }

    /// Drops entries older than the maximum age; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let old: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.at) >= self.max_age)
            .map(|(s, _)| *s)
            .collect();
        for s in &old {
            self.remove_entry(*s);
        }
        old.len()
    }

    /// The oldest entry of `ip` (ties: lowest sender).
    fn oldest_of(&self, ip: IpAddr) -> Option<u32> {
        self.entries
            .iter()
            .filter(|(_, h)| h.from.ip() == ip)
            .min_by_key(|(s, h)| (h.at, **s))
            .map(|(s, _)| *s)
    }

    /// Holds `kx` from `from`. Never refuses: room is made by fair
    /// eviction. Returns what happened.
    pub fn insert(&mut self, now: Instant, from: SocketAddr, kx: KeyExchange) -> HeldOutcome {
        let mut evicted = self.expire(now);
        let replaced = self.remove_entry(kx.sender).is_some();
        let ip = from.ip();
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.per_source {
            if let Some(s) = self.oldest_of(ip) {
                self.remove_entry(s);
                evicted += 1;
            }
        }
        if self.entries.len() >= self.capacity {
            // The source holding the most entries pays (ties: lowest IP).
            let heavy = self
                .per_ip
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(ip, _)| *ip);
            if let Some(s) = heavy.and_then(|ip| self.oldest_of(ip)) {
                self.remove_entry(s);
                evicted += 1;
            }
        }
        self.entries.insert(kx.sender, Held { kx, from, at: now });
        *self.per_ip.entry(ip).or_default() += 1;
        if replaced {
            HeldOutcome::Replaced
        } else if evicted > 0 {
            HeldOutcome::Evicted(evicted)
        } else {
            HeldOutcome::New
        }
    }

    /// Removes and returns the frame held for `sender` if it is still
    /// fresh.
    pub fn take(&mut self, now: Instant, sender: u32) -> Option<Held> {
        let h = self.remove_entry(sender)?;
        (now.saturating_duration_since(h.at) < self.max_age).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;

    fn kx(sender: u32) -> KeyExchange {
        KeyExchange {
            sender,
            x25519: [sender as u8; 32],
            auth: None,
        }
    }

    fn src(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, ip)), port)
    }

    #[test]
    fn bounded_with_fair_eviction() {
        let mut t = HalfOpen::new(8, 6, Duration::from_secs(10));
        let t0 = Instant::from_millis(1000);
        // A legitimate sender from its own IP.
        assert_eq!(t.insert(t0, src(1, 1), kx(7)), HeldOutcome::New);
        // A flood from one IP with many sender IDs.
        for i in 0..1000u32 {
            t.insert(
                t0 + Duration::from_millis(u64::from(i)),
                src(2, 9),
                kx(100 + i),
            );
        }
        assert!(t.len() <= 8);
        assert!(t.contains(7), "the flood only evicts its own entries");
        // A second flooding IP shares the room, and still cannot push out 7.
        for i in 0..1000u32 {
            t.insert(
                t0 + Duration::from_millis(u64::from(i)),
                src(3, 9),
                kx(5000 + i),
            );
        }
        assert_eq!(t.len(), 8);
        assert!(t.contains(7));
        let h = t.take(t0 + Duration::from_secs(1), 7).unwrap();
        assert_eq!(h.from, src(1, 1));
        assert!(t.take(t0, 7).is_none());
    }

    #[test]
    fn replace_and_expire() {
        let mut t = HalfOpen::new(4, 4, Duration::from_secs(10));
        let t0 = Instant::from_millis(0);
        assert_eq!(t.insert(t0, src(1, 1), kx(1)), HeldOutcome::New);
        assert_eq!(t.insert(t0, src(2, 1), kx(1)), HeldOutcome::Replaced);
        assert_eq!(t.len(), 1);
        assert_eq!(t.take(t0, 1).unwrap().from, src(2, 1));
        t.insert(t0, src(1, 1), kx(2));
        assert!(t.take(t0 + Duration::from_secs(10), 2).is_none(), "too old");
        t.insert(t0, src(1, 1), kx(3));
        assert_eq!(
            t.insert(t0 + Duration::from_secs(11), src(1, 1), kx(4)),
            HeldOutcome::Evicted(1)
        );
        assert_eq!(t.len(), 1);
    }
}
