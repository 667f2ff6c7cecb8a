//! Round-trip-time estimation and the retransmission timeout
//! (`spec/transport.md` §7.1, RFC 6298).
//!
//! The caller applies Karn's rule by passing `retransmitted = true` for a
//! sample taken from a segment that was sent more than once; such samples
//! are discarded. Each timeout doubles the RTO (exponential back-off,
//! capped at the larger of [`MAX_BACKOFF_RTO`] and the computed RTO, so a
//! silent peer is probed often enough for the give-up rule to be reliable);
//! the back-off is undone by the next valid sample or when
//! the cumulative ACK advances ([`RttEstimator::reset_backoff`]).

use core::time::Duration;

use super::consts::{CLOCK_GRANULARITY, INITIAL_RTO, MAX_BACKOFF_RTO, MAX_RTO, MIN_RTO};

/// SRTT, RTTVAR and the current RTO of one connection.
#[derive(Clone, Debug)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// RTO computed from the estimates, before back-off.
    base_rto: Duration,
    /// RTO in force (base RTO with back-off applied).
    rto: Duration,
    backoffs: u32,
    /// Smallest valid sample so far.
    min_rtt: Option<Duration>,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl RttEstimator {
    /// A fresh estimator: no samples, RTO = [`INITIAL_RTO`].
    pub const fn new() -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            base_rto: INITIAL_RTO,
            rto: INITIAL_RTO,
            backoffs: 0,
            min_rtt: None,
        }
    }

    /// Smoothed RTT, once a sample exists.
    pub const fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Smallest valid sample so far (used by loss detection to recognise
    /// ACKs that came too soon to be for a retransmission).
    pub const fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// RTT variation.
    pub const fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The retransmission timeout in force.
    pub const fn rto(&self) -> Duration {
        self.rto
    }

    /// Timeouts since the last valid sample or ACK progress.
    pub const fn backoffs(&self) -> u32 {
        self.backoffs
    }

    /// Feeds one RTT measurement. A sample from a retransmitted segment is
    /// ignored (Karn's rule); returns whether the sample was used.
    pub fn on_sample(&mut self, rtt: Duration, retransmitted: bool) -> bool {
        if retransmitted {
            return false;
        }
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                // RTTVAR uses the old SRTT.
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(INITIAL_RTO);
        let var = (self.rttvar * 4).max(CLOCK_GRANULARITY);
        self.base_rto = srtt.saturating_add(var).clamp(MIN_RTO, MAX_RTO);
        self.rto = self.base_rto;
        self.backoffs = 0;
        true
    }

    /// Doubles the RTO after a timeout and adds `jitter` (clamped below a
    /// quarter of the doubled value). Doubling stops at [`MAX_BACKOFF_RTO`]
    /// or the computed RTO, whichever is larger, and never exceeds
    /// [`MAX_RTO`].
    pub fn backoff(&mut self, jitter: Duration) {
        let cap = MAX_BACKOFF_RTO.max(self.base_rto).min(MAX_RTO);
        let doubled = self.rto.saturating_mul(2).min(cap);
        let jitter = jitter.min((doubled / 4).saturating_sub(Duration::from_nanos(1)));
        self.rto = doubled.saturating_add(jitter).min(cap);
        self.backoffs = self.backoffs.saturating_add(1);
    }

    /// Undoes the back-off (the peer acknowledged new data, so the path
    /// works): the RTO returns to the value computed from the estimates.
    pub fn reset_backoff(&mut self) {
        self.rto = self.base_rto;
        self.backoffs = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn reference_examples() {
        let mut r = RttEstimator::new();
        assert_eq!(r.rto(), ms(1000));
        assert!(r.on_sample(ms(100), false));
        assert_eq!(r.srtt(), Some(ms(100)));
        assert_eq!(r.rttvar(), ms(50));
        assert_eq!(r.rto(), ms(300));
        assert!(r.on_sample(ms(120), false));
        assert_eq!(r.min_rtt(), Some(ms(100)));
        assert_eq!(r.rttvar(), Duration::from_micros(42_500));
        assert_eq!(r.srtt(), Some(Duration::from_micros(102_500)));
        assert_eq!(r.rto(), Duration::from_micros(272_500));
    }

    #[test]
    fn clamped_to_min_and_max() {
        let mut r = RttEstimator::new();
        r.on_sample(ms(20), false);
        assert_eq!(r.rto(), ms(200));
        let mut r = RttEstimator::new();
        r.on_sample(ms(8000), false);
        assert_eq!(r.rto(), ms(10_000));
    }

    #[test]
    fn granularity_floor_applies() {
        let mut r = RttEstimator::new();
        // Many identical samples drive RTTVAR towards 0; G keeps a floor.
        for _ in 0..200 {
            r.on_sample(ms(500), false);
        }
        assert!(r.rttvar() < ms(1));
        assert_eq!(r.rto(), ms(510));
    }

    #[test]
    fn backoff_cap_follows_a_large_computed_rto() {
        let mut r = RttEstimator::new();
        r.on_sample(ms(3000), false);
        assert_eq!(r.rto(), ms(9000));
        r.backoff(Duration::ZERO);
        assert_eq!(r.rto(), ms(9000), "never below the computed RTO");
        let mut r = RttEstimator::new();
        r.backoff(Duration::ZERO);
        assert_eq!(r.rto(), ms(2000), "initial 1 s doubles to the cap");
    }

    #[test]
    fn karn_ignores_retransmitted_samples() {
        let mut r = RttEstimator::new();
        assert!(!r.on_sample(ms(100), true));
        assert_eq!(r.srtt(), None);
        assert_eq!(r.min_rtt(), None);
        assert_eq!(r.rto(), ms(1000));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut r = RttEstimator::new();
        r.on_sample(ms(100), false);
        r.backoff(Duration::ZERO);
        assert_eq!(r.rto(), ms(600));
        r.backoff(ms(10_000));
        // jitter clamped below a quarter of 1200 ms
        assert!(r.rto() >= ms(1200) && r.rto() < ms(1500));
        for _ in 0..10 {
            r.backoff(Duration::ZERO);
        }
        assert_eq!(r.rto(), ms(2000), "back-off cap");
        assert_eq!(r.backoffs(), 12);
        r.reset_backoff();
        assert_eq!(r.rto(), ms(300));
        r.backoff(Duration::ZERO);
        r.on_sample(ms(100), false);
        assert_eq!(r.backoffs(), 0);
    }
}
