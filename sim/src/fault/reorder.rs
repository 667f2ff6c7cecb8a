//! Reordering: with some probability a datagram is held back by an extra
//! delay, so datagrams sent after it on the same link overtake it.

use core::time::Duration;

use pilot_proto::time::Instant;

use super::{FaultRule, InFlight, Verdict};
use crate::seed::SimRng;

/// Holds back each datagram with probability `p` by an extra delay drawn
/// uniformly from `[extra_min, extra_max]`.
#[derive(Debug)]
pub struct Reorder {
    p: f64,
    extra_min: Duration,
    extra_max: Duration,
    rng: SimRng,
}

impl Reorder {
    /// Probability `p`, extra delay uniform in `[extra_min, extra_max]`.
    pub fn new(p: f64, extra_min: Duration, extra_max: Duration, rng: SimRng) -> Self {
        Reorder {
            p,
            extra_min,
            extra_max,
            rng,
        }
    }
}

impl FaultRule for Reorder {
    fn name(&self) -> &'static str {
        "reorder"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        if self.rng.chance(self.p) {
            let extra = self.rng.duration_between(self.extra_min, self.extra_max);
            pkt.delay = pkt.delay.saturating_add(extra);
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
    fn held_back_share_matches_and_later_packets_overtake() {
        let ms = Duration::from_millis;
        let mut r = Reorder::new(0.10, ms(5), ms(20), Seed::new(1).fork("reorder", 0));
        // One datagram per millisecond, no other delay.
        let arrivals: Vec<Instant> = (0..10_000)
            .map(|i| {
                let mut p = pkt(0, 1, 10, i);
                r.on_send(p.sent_at, &mut p);
                assert!(p.delay == Duration::ZERO || (p.delay >= ms(5) && p.delay <= ms(20)));
                p.arrival()
            })
            .collect();
        let held = arrivals
            .iter()
            .enumerate()
            .filter(|(i, a)| a.as_nanos() != *i as u64 * 1_000_000)
            .count();
        assert!((800..=1200).contains(&held), "held {held}");
        // Every held datagram is overtaken by its successor unless that one
        // is held too; so out-of-order pairs are common.
        let overtaken = arrivals.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(overtaken > 700, "overtaken {overtaken}");
    }
}
