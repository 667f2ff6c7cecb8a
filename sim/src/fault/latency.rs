//! One-way latency with uniform jitter.
//!
//! Each datagram is delayed by a value drawn uniformly from
//! `[base - jitter, base + jitter]` (floored at zero). With `fifo` on
//! (the default), a link (source, destination pair) never reorders: a
//! datagram never arrives before one sent earlier on the same link, so
//! jitter only bunches packets and reordering is left to
//! [`Reorder`](super::Reorder). With `fifo` off, jitter reorders freely.

use crate::hashing::{FastMap, LinkKey, link_key};
use core::time::Duration;

use pilot_proto::time::Instant;

use super::{FaultRule, InFlight, Verdict};
use crate::seed::SimRng;

/// One-way latency with jitter; see the module docs.
#[derive(Debug)]
pub struct Latency {
    base: Duration,
    jitter: Duration,
    fifo: bool,
    last_arrival: FastMap<LinkKey, Instant>,
    rng: SimRng,
}

impl Latency {
    /// A per-link FIFO latency of `base ± jitter`.
    pub fn new(base: Duration, jitter: Duration, rng: SimRng) -> Self {
        Latency {
            base,
            jitter,
            fifo: true,
            last_arrival: FastMap::default(),
            rng,
        }
    }

    /// Lets jitter reorder datagrams on the same link.
    pub fn allow_reordering(mut self) -> Self {
        self.fifo = false;
        self
    }
}

impl FaultRule for Latency {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        let lo = self.base.saturating_sub(self.jitter);
        let hi = self.base.saturating_add(self.jitter);
        let d = self.rng.duration_between(lo, hi);
        pkt.delay = pkt.delay.saturating_add(d);
        if self.fifo {
            let arrival = pkt.arrival();
            let last = self
                .last_arrival
                .entry(link_key(&pkt.src, &pkt.dst))
                .or_insert(arrival);
            if *last > arrival {
                pkt.delay = last.saturating_duration_since(pkt.sent_at);
            } else {
                *last = arrival;
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::pkt;
    use super::*;
    use crate::seed::Seed;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn no_jitter_is_exact() {
        let mut l = Latency::new(ms(30), Duration::ZERO, Seed::new(1).fork("l", 0));
        for t in 0..100 {
            let mut p = pkt(0, 1, 100, t);
            assert_eq!(l.on_send(p.sent_at, &mut p), Verdict::Continue);
            assert_eq!(p.delay, ms(30));
        }
    }

    #[test]
    fn jitter_stays_in_bounds_and_averages_to_base() {
        let mut l = Latency::new(ms(50), ms(20), Seed::new(2).fork("l", 0)).allow_reordering();
        let mut sum = 0u128;
        let n = 10_000u64;
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        for i in 0..n {
            let mut p = pkt(0, 1, 100, i);
            l.on_send(p.sent_at, &mut p);
            min = min.min(p.delay);
            max = max.max(p.delay);
            sum += p.delay.as_nanos();
        }
        assert!(min >= ms(30) && max <= ms(70), "{min:?}..{max:?}");
        // The extremes are actually reached (the jitter is not ignored).
        assert!(min < ms(32) && max > ms(68), "{min:?}..{max:?}");
        let mean = Duration::from_nanos((sum / u128::from(n)) as u64);
        assert!(mean > ms(49) && mean < ms(51), "mean {mean:?}");
    }

    #[test]
    fn jitter_floor_is_zero() {
        let mut l = Latency::new(ms(1), ms(5), Seed::new(3).fork("l", 0)).allow_reordering();
        for i in 0..1000 {
            let mut p = pkt(0, 1, 10, i);
            l.on_send(p.sent_at, &mut p);
            assert!(p.delay <= ms(6));
        }
    }

    fn inversions(fifo: bool) -> usize {
        let mut l = Latency::new(ms(20), ms(15), Seed::new(4).fork("l", 0));
        if !fifo {
            l = l.allow_reordering();
        }
        let mut last = Instant::ZERO;
        let mut inv = 0;
        // One datagram every 100 µs: far below the jitter spread.
        for i in 0..5_000u64 {
            let mut p = InFlight::new(
                crate::node::node_addr(0),
                crate::node::node_addr(1),
                10,
                Instant::from_nanos(i * 100_000),
            );
            l.on_send(p.sent_at, &mut p);
            if p.arrival() < last {
                inv += 1;
            }
            last = last.max(p.arrival());
        }
        inv
    }

    #[test]
    fn fifo_links_never_reorder_but_free_jitter_does() {
        assert_eq!(inversions(true), 0);
        assert!(inversions(false) > 1000);
    }

    #[test]
    fn fifo_is_per_link() {
        let mut l = Latency::new(ms(10), ms(9), Seed::new(5).fork("l", 0));
        // A slow packet on link 0->1 must not hold back link 0->2.
        let mut worst = Duration::ZERO;
        for i in 0..1000 {
            let mut a = pkt(0, 1, 10, i);
            l.on_send(a.sent_at, &mut a);
            let mut b = pkt(0, 2, 10, i);
            l.on_send(b.sent_at, &mut b);
            worst = worst.max(b.delay);
        }
        assert!(worst <= ms(19));
    }
}
