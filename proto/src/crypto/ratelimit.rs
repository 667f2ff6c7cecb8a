//! Token buckets that limit PILA/PILK per source (`spec/crypto.md` §7):
//! capacity 5, refill 5 per second, a new source starts with 4 tokens
//! after its first frame, at most 4096 sources tracked; when full, sources
//! idle for 10 s are pruned, and if still full the frame is refused.

use std::collections::BTreeMap;

use core::time::Duration;

use super::params::{
    KX_BUCKET_CAPACITY, KX_BUCKET_IDLE, KX_BUCKET_REFILL_PER_SEC, KX_BUCKET_TRACKED,
};
use crate::time::Instant;

/// Time it takes to refill one token.
const TOKEN: Duration = Duration::from_nanos(1_000_000_000 / KX_BUCKET_REFILL_PER_SEC as u64);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Stored refill time; one token is worth [`TOKEN`].
    credit: Duration,
    last: Instant,
}

/// One token bucket per key.
#[derive(Debug)]
pub struct RateLimiter<K: Ord + Copy> {
    buckets: BTreeMap<K, Bucket>,
    tracked: usize,
}

impl<K: Ord + Copy> Default for RateLimiter<K> {
    fn default() -> Self {
        Self::new(KX_BUCKET_TRACKED)
    }
}

impl<K: Ord + Copy> RateLimiter<K> {
    /// A limiter tracking at most `tracked` keys.
    pub fn new(tracked: usize) -> Self {
        RateLimiter {
            buckets: BTreeMap::new(),
            tracked,
        }
    }

    /// Number of tracked keys.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Takes one token for `key`; false if the frame must be dropped.
    pub fn allow(&mut self, now: Instant, key: K) -> bool {
        let full = TOKEN * KX_BUCKET_CAPACITY;
        if let Some(b) = self.buckets.get_mut(&key) {
            b.credit = (b.credit + now.saturating_duration_since(b.last)).min(full);
            b.last = now;
            return match b.credit.checked_sub(TOKEN) {
                Some(rest) => {
                    b.credit = rest;
                    true
                }
                None => false,
            };
        }
        if self.buckets.len() >= self.tracked {
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < KX_BUCKET_IDLE);
            if self.buckets.len() >= self.tracked {
                return false;
            }
        }
        self.buckets.insert(
            key,
            Bucket {
                credit: full - TOKEN,
                last: now,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_per_second_burst_then_refill() {
        let mut r = RateLimiter::new(16);
        let t = Instant::from_millis(10_000);
        for _ in 0..5 {
            assert!(r.allow(t, 1u32));
        }
        assert!(!r.allow(t, 1));
        assert!(r.allow(t, 2), "other keys are independent");
        assert!(!r.allow(t + Duration::from_millis(199), 1));
        assert!(r.allow(t + Duration::from_millis(400), 1));
        // Long idle refills to the capacity, not beyond.
        let later = t + Duration::from_secs(100);
        for _ in 0..5 {
            assert!(r.allow(later, 1));
        }
        assert!(!r.allow(later, 1));
    }

    #[test]
    fn table_is_bounded_and_prunes_idle() {
        let mut r = RateLimiter::new(2);
        let t = Instant::from_millis(0);
        assert!(r.allow(t, 1u32));
        assert!(r.allow(t, 2));
        assert!(
            !r.allow(t + Duration::from_secs(9), 3),
            "nobody idle for 10 s yet"
        );
        assert!(r.allow(t + Duration::from_secs(10), 3));
        assert_eq!(r.len(), 1);
    }
}
