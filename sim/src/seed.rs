//! Seeds and random streams.
//!
//! A run owns exactly one [`Seed`]. Every consumer of randomness (each fault
//! rule, each node) gets its own [`SimRng`] forked from that seed under a
//! stable label, so the streams are independent: adding, removing or
//! reordering one rule never changes the numbers another rule draws.
//! Forking hashes `(seed, label, index)` with SHA-256 and seeds a ChaCha8
//! generator with the digest, so it is stable across platforms and releases
//! of this crate (changing it changes every trace hash).

use core::time::Duration;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};

/// Domain separator mixed into every fork, so the derivation is versioned.
const FORK_DOMAIN: &[u8] = b"pilot-sim/seed-fork/v1";

/// The one master seed of a simulation run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Seed(u64);

impl Seed {
    /// Wraps a numeric seed (as given on the command line).
    pub const fn new(value: u64) -> Self {
        Seed(value)
    }

    /// The numeric value of the seed.
    pub const fn value(self) -> u64 {
        self.0
    }

    /// An independent random stream for the consumer named `label`; `index`
    /// distinguishes several consumers of the same kind (node 0, node 1, ...).
    pub fn fork(self, label: &str, index: u64) -> SimRng {
        let mut h = Sha256::new();
        h.update(FORK_DOMAIN);
        h.update(self.0.to_le_bytes());
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update(index.to_le_bytes());
        let digest: [u8; 32] = h.finalize().into();
        SimRng(ChaCha8Rng::from_seed(digest))
    }

    /// The stream reserved for node number `index` (its ISNs, keys, nonces).
    pub fn node(self, index: usize) -> SimRng {
        self.fork("node", index as u64)
    }
}

/// A deterministic random stream forked from a [`Seed`].
///
/// Implements [`RngCore`], so it can be handed to node configurations that
/// take an injected RNG.
#[derive(Clone, Debug)]
pub struct SimRng(ChaCha8Rng);

impl SimRng {
    /// A uniform `f64` in `[0, 1)` with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p` (values outside `[0, 1]` are clamped).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.unit() < p
        }
    }

    /// A uniform integer in `[0, n)`; returns 0 when `n == 0`.
    ///
    /// Uses the widening-multiply method; its bias is below `n / 2^64`,
    /// irrelevant for simulation.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform duration in `[lo, hi]` (nanosecond resolution); `lo` if
    /// `hi <= lo`.
    pub fn duration_between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_ns = u64::try_from(lo.as_nanos()).unwrap_or(u64::MAX);
        let hi_ns = u64::try_from(hi.as_nanos()).unwrap_or(u64::MAX);
        if hi_ns <= lo_ns {
            return lo;
        }
        let span = hi_ns - lo_ns;
        let off = if span == u64::MAX {
            self.0.next_u64()
        } else {
            self.below(span + 1)
        };
        Duration::from_nanos(lo_ns + off)
    }
}

impl RngCore for SimRng {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.0.try_fill_bytes(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(mut r: SimRng) -> Vec<u64> {
        (0..8).map(|_| r.next_u64()).collect()
    }

    #[test]
    fn same_seed_label_index_gives_same_stream() {
        let s = Seed::new(42);
        assert_eq!(draw(s.fork("fault/loss", 0)), draw(s.fork("fault/loss", 0)));
    }

    #[test]
    fn forks_are_distinct_by_seed_label_and_index() {
        let base = draw(Seed::new(42).fork("fault/loss", 0));
        assert_ne!(base, draw(Seed::new(43).fork("fault/loss", 0)));
        assert_ne!(base, draw(Seed::new(42).fork("fault/dup", 0)));
        assert_ne!(base, draw(Seed::new(42).fork("fault/loss", 1)));
        assert_ne!(draw(Seed::new(7).node(0)), draw(Seed::new(7).node(1)));
    }

    #[test]
    fn label_and_index_do_not_alias() {
        // "ab",1 and "a",... must not collide through naive concatenation.
        let s = Seed::new(1);
        assert_ne!(draw(s.fork("ab", 1)), draw(s.fork("a", 0x62_01)));
    }

    #[test]
    fn forking_one_stream_does_not_disturb_another() {
        let s = Seed::new(9);
        let mut a = s.fork("a", 0);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        // Drawing heavily from an unrelated stream in between changes nothing.
        let mut b = s.fork("b", 0);
        for _ in 0..1000 {
            b.next_u64();
        }
        let mut a2 = s.fork("a", 0);
        let again: Vec<u64> = (0..4).map(|_| a2.next_u64()).collect();
        assert_eq!(first, again);
    }

    #[test]
    fn helpers_stay_in_range() {
        let mut r = Seed::new(3).fork("t", 0);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(7) < 7);
            let d = r.duration_between(Duration::from_millis(2), Duration::from_millis(5));
            assert!(d >= Duration::from_millis(2) && d <= Duration::from_millis(5));
        }
        assert_eq!(r.below(0), 0);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
        assert_eq!(
            r.duration_between(Duration::from_millis(5), Duration::from_millis(1)),
            Duration::from_millis(5)
        );
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Seed::new(11).fork("t", 0);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            counts[r.below(10) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "bucket {c}");
        }
    }
}
