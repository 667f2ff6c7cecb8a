//! Duplication: with some probability a datagram is delivered twice, the
//! copy arriving up to `max_gap` after the original.

use core::time::Duration;

use pilot_proto::time::Instant;

use super::{FaultRule, InFlight, Verdict};
use crate::seed::SimRng;

/// Duplicates each datagram with probability `p`; see the module docs.
#[derive(Debug)]
pub struct Duplicate {
    p: f64,
    max_gap: Duration,
    rng: SimRng,
}

impl Duplicate {
    /// Probability `p`, copy gap uniform in `[0, max_gap]`.
    pub fn new(p: f64, max_gap: Duration, rng: SimRng) -> Self {
        Duplicate { p, max_gap, rng }
    }
}

impl FaultRule for Duplicate {
    fn name(&self) -> &'static str {
        "dup"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        if self.rng.chance(self.p) {
            let gap = self.rng.duration_between(Duration::ZERO, self.max_gap);
            pkt.add_copy(gap);
        }
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::pkt;
    use super::*;
    use crate::seed::Seed;

    #[test]
    fn five_percent_duplicates_land_near_five_percent() {
        let max_gap = Duration::from_millis(2);
        let mut d = Duplicate::new(0.05, max_gap, Seed::new(1).fork("dup", 0));
        let mut dups = 0;
        for i in 0..10_000 {
            let mut p = pkt(0, 1, 10, i);
            assert_eq!(d.on_send(p.sent_at, &mut p), Verdict::Continue);
            assert!(p.copies().len() <= 1);
            for g in p.copies() {
                assert!(*g <= max_gap);
                dups += 1;
            }
        }
        assert!((400..=600).contains(&dups), "dups {dups}");
    }

    #[test]
    fn zero_probability_never_duplicates() {
        let mut d = Duplicate::new(0.0, Duration::from_millis(1), Seed::new(1).fork("dup", 0));
        for i in 0..1000 {
            let mut p = pkt(0, 1, 10, i);
            d.on_send(p.sent_at, &mut p);
            assert!(p.copies().is_empty());
        }
    }
}
