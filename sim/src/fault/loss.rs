//! Random loss: uniform (independent per datagram) and bursty
//! (Gilbert-Elliott, a two-state Markov chain per link).

use crate::hashing::{FastMap, LinkKey, link_key};

use core::time::Duration;

use pilot_proto::time::Instant;

use super::{DropReason, FaultRule, InFlight, Verdict};
use crate::seed::SimRng;

/// Drops each datagram independently with probability `p`.
#[derive(Debug)]
pub struct UniformLoss {
    p: f64,
    rng: SimRng,
}

impl UniformLoss {
    /// Loss probability `p` in `[0, 1]`.
    pub fn new(p: f64, rng: SimRng) -> Self {
        UniformLoss { p, rng }
    }
}

impl FaultRule for UniformLoss {
    fn name(&self) -> &'static str {
        "loss"
    }

    fn on_send(&mut self, _now: Instant, _pkt: &mut InFlight) -> Verdict {
        if self.rng.chance(self.p) {
            Verdict::Drop(DropReason::Loss)
        } else {
            Verdict::Continue
        }
    }
}

/// Gilbert-Elliott bursty loss in continuous time. Each link (source,
/// destination) alternates between a good and a bad state; the time spent
/// in each state is exponentially distributed (mean `mean_good` and
/// `mean_bad`), independent of the traffic. A datagram sent while its link
/// is bad is lost with `loss_bad`, otherwise with `loss_good`.
///
/// The state moves with time, not per datagram: a link that carries no
/// traffic (a partition, an idle connection, a sender backing off) still
/// leaves a bad spell after its mean duration. A per-datagram chain would
/// freeze a bad spell for as long as the link is quiet, so a sender that
/// backs off would meet the same burst again seconds later — a loss model
/// no real path has. The long-run share of time in the bad state is
/// `mean_bad / (mean_bad + mean_good)`.
#[derive(Debug)]
pub struct GilbertElliott {
    mean_good: Duration,
    mean_bad: Duration,
    loss_good: f64,
    loss_bad: f64,
    /// Per link: in the bad state, and when the current spell ends.
    links: FastMap<LinkKey, (bool, Instant)>,
    rng: SimRng,
}

/// A link idle for this many mean cycles (good + bad) is taken to have
/// forgotten its state: it restarts from the stationary distribution
/// (exact up to `e^-CYCLES`, and it bounds the work per datagram).
const FORGET_CYCLES: u32 = 32;

impl GilbertElliott {
    /// The general model: mean spell durations and per-state loss
    /// probabilities.
    pub fn new(
        mean_good: Duration,
        mean_bad: Duration,
        loss_good: f64,
        loss_bad: f64,
        rng: SimRng,
    ) -> Self {
        GilbertElliott {
            mean_good: mean_good.max(Duration::from_nanos(1)),
            mean_bad: mean_bad.max(Duration::from_nanos(1)),
            loss_good,
            loss_bad,
            links: FastMap::default(),
            rng,
        }
    }

    /// A Gilbert model (no loss when good, total loss when bad) with a
    /// long-run loss rate `mean_loss` and bad spells of `mean_burst` on
    /// average.
    pub fn with_mean(mean_loss: f64, mean_burst: Duration, rng: SimRng) -> Self {
        let mean_loss = mean_loss.clamp(0.000_001, 0.999);
        // Stationary bad share mean_bad / (mean_bad + mean_good) = mean_loss.
        let mean_good = mean_burst.mul_f64((1.0 - mean_loss) / mean_loss);
        GilbertElliott::new(mean_good, mean_burst, 0.0, 1.0, rng)
    }

    /// An exponentially distributed spell with mean `mean`.
    fn spell(&mut self, mean: Duration) -> Duration {
        // 1 - unit() is in (0, 1]: ln is finite.
        let x = -(1.0 - self.rng.unit()).ln();
        mean.mul_f64(x.min(64.0))
    }

    /// Draws a state from the stationary distribution at `now`; by
    /// memorylessness the remaining spell has the state's full mean.
    fn fresh(&mut self, now: Instant) -> (bool, Instant) {
        let share = self.mean_bad.as_secs_f64()
            / (self.mean_bad.as_secs_f64() + self.mean_good.as_secs_f64());
        let bad = self.rng.chance(share);
        let mean = if bad { self.mean_bad } else { self.mean_good };
        let spell = self.spell(mean);
        (bad, now.saturating_add(spell))
    }

    /// Whether the link `key` is in the bad state at `now`.
    fn state_at(&mut self, now: Instant, key: LinkKey) -> bool {
        let cycle = self.mean_good + self.mean_bad;
        let (mut bad, mut until) = match self.links.get(&key).copied() {
            Some((bad, until)) if now.saturating_duration_since(until) < cycle * FORGET_CYCLES => {
                (bad, until)
            }
            _ => self.fresh(now),
        };
        while until <= now {
            bad = !bad;
            let mean = if bad { self.mean_bad } else { self.mean_good };
            let spell = self.spell(mean).max(Duration::from_nanos(1));
            until = until.saturating_add(spell);
        }
        self.links.insert(key, (bad, until));
        bad
    }
}

impl FaultRule for GilbertElliott {
    fn name(&self) -> &'static str {
        "burst-loss"
    }

    fn on_send(&mut self, now: Instant, pkt: &mut InFlight) -> Verdict {
        let bad = self.state_at(now, link_key(&pkt.src, &pkt.dst));
        let p = if bad { self.loss_bad } else { self.loss_good };
        if self.rng.chance(p) {
            Verdict::Drop(DropReason::BurstLoss)
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::pkt;
    use super::*;
    use crate::seed::Seed;

    /// Loss pattern of `n` datagrams on one link.
    fn pattern(rule: &mut dyn FaultRule, n: u64) -> Vec<bool> {
        (0..n)
            .map(|i| {
                let mut p = pkt(0, 1, 100, i);
                matches!(rule.on_send(p.sent_at, &mut p), Verdict::Drop(_))
            })
            .collect()
    }

    fn mean_run(lost: &[bool]) -> f64 {
        let (mut runs, mut total, mut cur) = (0u32, 0u32, 0u32);
        for &l in lost {
            if l {
                cur += 1;
            } else if cur > 0 {
                runs += 1;
                total += cur;
                cur = 0;
            }
        }
        f64::from(total) / f64::from(runs.max(1))
    }

    #[test]
    fn uniform_ten_percent_lands_near_ten_percent() {
        let mut r = UniformLoss::new(0.10, Seed::new(1).fork("loss", 0));
        let lost = pattern(&mut r, 10_000).iter().filter(|&&l| l).count();
        assert!((800..=1200).contains(&lost), "lost {lost}");
    }

    #[test]
    fn uniform_extremes() {
        let mut none = UniformLoss::new(0.0, Seed::new(1).fork("loss", 0));
        assert!(pattern(&mut none, 1000).iter().all(|&l| !l));
        let mut all = UniformLoss::new(1.0, Seed::new(1).fork("loss", 0));
        assert!(pattern(&mut all, 1000).iter().all(|&l| l));
    }

    #[test]
    fn gilbert_elliott_hits_mean_and_is_bursty() {
        // One datagram per ms, bad spells of 5 ms on average: runs of
        // about 5 lost datagrams.
        let mut ge = GilbertElliott::with_mean(0.10, ms(5), Seed::new(2).fork("ge", 0));
        let lost = pattern(&mut ge, 100_000);
        let rate = lost.iter().filter(|&&l| l).count() as f64 / lost.len() as f64;
        assert!((0.08..=0.12).contains(&rate), "rate {rate}");
        let run = mean_run(&lost);
        assert!((4.0..=7.0).contains(&run), "mean burst {run}");

        // Uniform loss at the same rate has bursts close to 1/(1-p) ≈ 1.1.
        let mut u = UniformLoss::new(0.10, Seed::new(2).fork("loss", 0));
        let run_u = mean_run(&pattern(&mut u, 100_000));
        assert!(run_u < 1.3, "uniform burst {run_u}");
    }

    #[test]
    fn gilbert_elliott_state_is_per_link() {
        // Two links interleaved: each keeps its own bursts of ~5. A shared
        // state would split every burst between the links (~2.5 each).
        let mut ge = GilbertElliott::with_mean(0.10, ms(5), Seed::new(3).fork("ge", 0));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..200_000 {
            let mut p = pkt(0, 1 + (i % 2) as usize, 10, i / 2);
            let lost = matches!(ge.on_send(p.sent_at, &mut p), Verdict::Drop(_));
            if i % 2 == 0 {
                a.push(lost)
            } else {
                b.push(lost)
            }
        }
        for link in [a, b] {
            let run = mean_run(&link);
            assert!((4.0..=7.0).contains(&run), "per-link burst {run}");
        }
    }

    /// A bad spell ends with time, not with traffic: a datagram sent a
    /// second after a lost one (200 mean spells later) is lost at the
    /// long-run rate, not at the in-burst rate. A per-datagram chain kept
    /// the link bad through the silence and lost ~80 % of them.
    #[test]
    fn gilbert_elliott_bursts_end_while_the_link_is_quiet() {
        let mut ge = GilbertElliott::with_mean(0.10, ms(5), Seed::new(4).fork("ge", 0));
        let (mut after_loss, mut lost_again) = (0u32, 0u32);
        let mut t = 0u64;
        let mut last_lost = false;
        for _ in 0..200_000 {
            let mut p = pkt(0, 1, 10, t);
            let lost = matches!(ge.on_send(p.sent_at, &mut p), Verdict::Drop(_));
            if last_lost {
                after_loss += 1;
                lost_again += u32::from(lost);
            }
            last_lost = lost;
            // Back-to-back (1 ms) until a loss, then a quiet second.
            t += if lost { 1000 } else { 1 };
        }
        let share = f64::from(lost_again) / f64::from(after_loss.max(1));
        assert!(after_loss > 1000, "{after_loss} samples");
        assert!(
            (0.05..=0.16).contains(&share),
            "loss after a quiet second {share}"
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}
