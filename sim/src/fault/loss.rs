//! Random loss: uniform (independent per datagram) and bursty
//! (Gilbert-Elliott, a two-state Markov chain per link).

use crate::hashing::{FastMap, LinkKey, link_key};

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

/// Gilbert-Elliott bursty loss. Each link (source, destination) is either
/// in the good or the bad state; before each datagram the state moves
/// (good→bad with `p_bad`, bad→good with `p_good`), then the datagram is
/// lost with the loss probability of the current state. The long-run share
/// of time in the bad state is `p_bad / (p_bad + p_good)`, and the mean
/// length of a bad spell is `1 / p_good` datagrams.
#[derive(Debug)]
pub struct GilbertElliott {
    p_bad: f64,
    p_good: f64,
    loss_good: f64,
    loss_bad: f64,
    bad: FastMap<LinkKey, bool>,
    rng: SimRng,
}

impl GilbertElliott {
    /// The general model: transition and per-state loss probabilities.
    pub fn new(p_bad: f64, p_good: f64, loss_good: f64, loss_bad: f64, rng: SimRng) -> Self {
        GilbertElliott {
            p_bad,
            p_good,
            loss_good,
            loss_bad,
            bad: FastMap::default(),
            rng,
        }
    }

    /// A Gilbert model (no loss when good, total loss when bad) with long-run
    /// loss rate `mean_loss` and a mean burst of `mean_burst` datagrams.
    pub fn with_mean(mean_loss: f64, mean_burst: f64, rng: SimRng) -> Self {
        let mean_loss = mean_loss.clamp(0.0, 0.999);
        let p_good = 1.0 / mean_burst.max(1.0);
        // Stationary bad share π = p_bad / (p_bad + p_good) = mean_loss.
        let p_bad = (p_good * mean_loss / (1.0 - mean_loss)).min(1.0);
        GilbertElliott::new(p_bad, p_good, 0.0, 1.0, rng)
    }
}

impl FaultRule for GilbertElliott {
    fn name(&self) -> &'static str {
        "burst-loss"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        let bad = self
            .bad
            .entry(link_key(&pkt.src, &pkt.dst))
            .or_insert(false);
        *bad = if *bad {
            !self.rng.chance(self.p_good)
        } else {
            self.rng.chance(self.p_bad)
        };
        let p = if *bad { self.loss_bad } else { self.loss_good };
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
        let mut ge = GilbertElliott::with_mean(0.10, 5.0, Seed::new(2).fork("ge", 0));
        let lost = pattern(&mut ge, 100_000);
        let rate = lost.iter().filter(|&&l| l).count() as f64 / lost.len() as f64;
        assert!((0.08..=0.12).contains(&rate), "rate {rate}");
        let run = mean_run(&lost);
        assert!((4.0..=6.0).contains(&run), "mean burst {run}");

        // Uniform loss at the same rate has bursts close to 1/(1-p) ≈ 1.1.
        let mut u = UniformLoss::new(0.10, Seed::new(2).fork("loss", 0));
        let run_u = mean_run(&pattern(&mut u, 100_000));
        assert!(run_u < 1.3, "uniform burst {run_u}");
    }

    #[test]
    fn gilbert_elliott_state_is_per_link() {
        // Two links interleaved: each keeps its own bursts of ~5. A shared
        // state would split every burst between the links (~2.5 each).
        let mut ge = GilbertElliott::with_mean(0.10, 5.0, Seed::new(3).fork("ge", 0));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in 0..100_000 {
            let mut p = pkt(0, 1 + (i % 2) as usize, 10, i);
            let lost = matches!(ge.on_send(p.sent_at, &mut p), Verdict::Drop(_));
            if i % 2 == 0 {
                a.push(lost)
            } else {
                b.push(lost)
            }
        }
        for link in [a, b] {
            let run = mean_run(&link);
            assert!((4.0..=6.0).contains(&run), "per-link burst {run}");
        }
    }
}
