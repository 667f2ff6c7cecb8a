//! Per-source-IP token buckets (`spec/registry.md` §8). A bucket holds at
//! most `capacity` tokens and refills continuously at `capacity` per
//! `window`. The set of buckets is bounded: when it is full, the bucket
//! that was used least recently is forgotten.

use core::time::Duration;
use std::collections::HashMap;
use std::net::IpAddr;

use crate::time::Instant;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Credit in units of `1 / window_nanos` tokens, so refilling is exact
    /// integer arithmetic: `capacity × elapsed_nanos` units per step.
    credit: u128,
    last: Instant,
}

/// A bounded family of token buckets keyed by IP address.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    capacity: u32,
    window: Duration,
    max_buckets: usize,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    /// `capacity` requests per `window` per IP, at most `max_buckets` IPs
    /// remembered.
    pub fn new(capacity: u32, window: Duration, max_buckets: usize) -> Self {
        RateLimiter {
            capacity,
            window,
            max_buckets: max_buckets.max(1),
            buckets: HashMap::new(),
        }
    }

    fn unit(&self) -> u128 {
        self.window.as_nanos().max(1)
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.last).as_nanos();
        let cap = u128::from(self.capacity).saturating_mul(self.unit());
        let add = u128::from(self.capacity).saturating_mul(elapsed);
        b.credit = b.credit.saturating_add(add).min(cap);
        if now > b.last {
            b.last = now;
        }
    }

    /// Takes one token for `ip` if available. Returns `false` when the
    /// request must be refused.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_buckets {
            if let Some(oldest) = self
                .buckets
                .iter()
                .min_by_key(|(_, b)| b.last)
                .map(|(k, _)| *k)
            {
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
        self.buckets.insert(ip, b);
        ok
    }

    /// Drops buckets idle for more than two windows.
    pub fn sweep(&mut self, now: Instant) {
        let idle = self.window.saturating_mul(2);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) <= idle);
    }

    /// Number of buckets currently remembered.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// `true` if no bucket is remembered.
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
        let t0 = Instant::from_millis(1_000);
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
        let t = Instant::from_millis(0);
        assert!(rl.allow(ip(1), t));
        assert!(rl.allow(ip(2), t + Duration::from_secs(1)));
        assert!(rl.allow(ip(3), t + Duration::from_secs(2)));
        assert_eq!(rl.len(), 2);
        // ip(1) was evicted (oldest), so it starts with a full bucket again.
        assert!(rl.allow(ip(1), t + Duration::from_secs(3)));
        rl.sweep(t + Duration::from_secs(200));
        assert!(rl.is_empty());
    }
}
