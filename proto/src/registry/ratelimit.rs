//! Per-source-IP token buckets (`spec/registry.md` §8). A bucket holds at
//! most `capacity` tokens and refills continuously at `capacity` per
//! `window`. The set of buckets is bounded: when it is full, the bucket
//! that was used least recently is forgotten.
//!
//! The keys are source addresses an attacker chooses, so the maps are
//! ordered ones (`BTreeMap`/`BTreeSet`): O(log n) per operation whatever
//! the keys (no hash flooding), and the same iteration order on every run
//! (no `RandomState`, so seeded simulations replay exactly). A second index
//! ordered by last use finds the bucket to forget in O(log n) instead of a
//! scan of every bucket per new source.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::time::UnixTime;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Credit in units of `1 / window_nanos` tokens, so refilling is exact
    /// integer arithmetic: `capacity × elapsed_nanos` units per step.
    credit: u128,
    last: UnixTime,
}

/// A bounded family of token buckets keyed by IP address.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    capacity: u32,
    window: Duration,
    max_buckets: usize,
    buckets: BTreeMap<IpAddr, Bucket>,
    /// `(last use, ip)` of every bucket: the first entry is the one to
    /// forget. Kept in step with `buckets` by [`RateLimiter::put`] and
    /// [`RateLimiter::sweep`] only.
    by_last: BTreeSet<(UnixTime, IpAddr)>,
}

impl RateLimiter {
    /// `capacity` requests per `window` per IP, at most `max_buckets` IPs
    /// remembered.
    pub fn new(capacity: u32, window: Duration, max_buckets: usize) -> Self {
        RateLimiter {
            capacity,
            window,
            max_buckets: max_buckets.max(1),
            buckets: BTreeMap::new(),
            by_last: BTreeSet::new(),
        }
    }

    fn unit(&self) -> u128 {
        self.window.as_nanos().max(1)
    }

    fn refill(&self, b: &mut Bucket, now: UnixTime) {
        let elapsed = now.saturating_duration_since(b.last).as_nanos();
        let cap = u128::from(self.capacity).saturating_mul(self.unit());
        let add = u128::from(self.capacity).saturating_mul(elapsed);
        b.credit = b.credit.saturating_add(add).min(cap);
        if now > b.last {
            b.last = now;
        }
    }

    /// Stores `b` for `ip`, keeping the last-use index in step.
    fn put(&mut self, ip: IpAddr, b: Bucket) {
        if let Some(old) = self.buckets.insert(ip, b) {
            self.by_last.remove(&(old.last, ip));
        }
        self.by_last.insert((b.last, ip));
    }

    /// Takes one token for `ip` if available. Returns `false` when the
    /// request must be refused.
    pub fn allow(&mut self, ip: IpAddr, now: UnixTime) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_buckets {
            if let Some((_, oldest)) = self.by_last.pop_first() {
                self.buckets.remove(&oldest);
            }
        }
        let unit = self.unit();
        let cap = u128::from(self.capacity).saturating_mul(unit);
        let mut b = self.buckets.get(&ip).copied().unwrap_or(Bucket {
            credit: cap,
            last: now,
        });
        self.refill(&mut b, now);
        let ok = b.credit >= unit;
        if ok {
            b.credit -= unit;
        }
        self.put(ip, b);
        ok
    }

    /// Drops buckets idle for more than two windows.
    pub fn sweep(&mut self, now: UnixTime) {
        let idle = self.window.saturating_mul(2);
        while let Some(&(last, ip)) = self.by_last.first() {
            if now.saturating_duration_since(last) <= idle {
                break;
            }
            self.by_last.pop_first();
            self.buckets.remove(&ip);
        }
    }

    /// Number of buckets currently remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// `true` if no bucket is remembered.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn ten_per_minute_with_refill() {
        let mut rl = RateLimiter::new(10, Duration::from_secs(60), 16);
        let t0 = UnixTime::from_millis(1_000);
        for i in 0..10 {
            assert!(rl.allow(ip(1), t0), "request {i}");
        }
        assert!(!rl.allow(ip(1), t0));
        // Another IP has its own bucket.
        assert!(rl.allow(ip(2), t0));
        // 5.9 s later: not yet a whole token (1 token per 6 s).
        assert!(!rl.allow(ip(1), t0 + Duration::from_millis(5_900)));
        assert!(rl.allow(ip(1), t0 + Duration::from_secs(6)));
        assert!(!rl.allow(ip(1), t0 + Duration::from_secs(6)));
        // A long pause refills only up to capacity.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..10 {
            assert!(rl.allow(ip(1), later));
        }
        assert!(!rl.allow(ip(1), later));
    }

    #[test]
    fn bounded_and_swept() {
        let mut rl = RateLimiter::new(1, Duration::from_secs(60), 2);
        let t = UnixTime::from_millis(0);
        assert!(rl.allow(ip(1), t));
        assert!(rl.allow(ip(2), t + Duration::from_secs(1)));
        assert!(rl.allow(ip(3), t + Duration::from_secs(2)));
        assert_eq!(rl.len(), 2);
        // ip(1) was evicted (oldest), so it starts with a full bucket again.
        assert!(rl.allow(ip(1), t + Duration::from_secs(3)));
        rl.sweep(t + Duration::from_secs(200));
        assert!(rl.is_empty());
    }

    #[test]
    fn eviction_follows_last_use_and_the_index_stays_in_step() {
        let mut rl = RateLimiter::new(100, Duration::from_secs(60), 3);
        let t = UnixTime::from_millis(0);
        let at = |s| t + Duration::from_secs(s);
        assert!(rl.allow(ip(1), at(0)));
        assert!(rl.allow(ip(2), at(1)));
        assert!(rl.allow(ip(3), at(2)));
        // ip(1) used again: ip(2) is now the least recently used.
        assert!(rl.allow(ip(1), at(3)));
        assert!(rl.allow(ip(4), at(4)));
        let kept: Vec<IpAddr> = rl.buckets.keys().copied().collect();
        assert_eq!(kept, vec![ip(1), ip(3), ip(4)]);
        assert_eq!(rl.by_last.len(), rl.buckets.len());
        // A sweep at 125 s drops what was idle for more than 120 s.
        rl.sweep(at(123));
        let kept: Vec<IpAddr> = rl.buckets.keys().copied().collect();
        assert_eq!(kept, vec![ip(1), ip(4)]);
        assert_eq!(rl.by_last.len(), 2);
        // Many new sources: the set stays bounded and consistent.
        for i in 0..=255u8 {
            rl.allow(IpAddr::from([10, 0, 0, i]), at(200 + u64::from(i)));
            assert!(rl.len() <= 3);
            assert_eq!(rl.by_last.len(), rl.len());
        }
    }
}
