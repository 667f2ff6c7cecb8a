//! Congestion control (`spec/transport.md` §7.4).
//!
//! [`CongestionController`] is the interface the connection drives; it only
//! does window arithmetic and tells the connection when a retransmission is
//! due. [`NewReno`] is the reference algorithm: initial window of ten
//! congestion units, slow start and congestion avoidance with appropriate
//! byte counting (RFC 3465, L = 2), fast retransmit on the third duplicate
//! ACK, NewReno fast recovery with window inflation, and timeout recovery
//! (cwnd back to one congestion unit). Two sender-side departures from the
//! reference: congestion avoidance counts bytes across ACKs (a stretch ACK
//! grows the window as much as the per-segment ACKs it replaces), and with
//! a SACK-reporting peer fast recovery uses the RFC 6675 pipe (window held
//! at ssthresh, SACKed bytes out of flight). Other algorithms (CUBIC, BBR)
//! can implement the same trait.

use core::time::Duration;

use super::consts::{CC_MSS, DUP_ACK_THRESHOLD, INITIAL_CWND, INITIAL_SSTHRESH, MAX_CWND};
use super::seq::Seq;
use crate::time::Instant;

/// Which kind of loss recovery a controller is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryState {
    /// Not recovering.
    Open,
    /// Fast recovery after three duplicate ACKs.
    Fast,
    /// Recovery after a retransmission timeout.
    Timeout,
}

/// A cumulative ACK that acknowledged new data.
#[derive(Clone, Copy, Debug)]
pub struct AckEvent {
    /// Newly acknowledged payload bytes that had not been SACKed before.
    pub bytes_acked: usize,
    /// The new cumulative ACK.
    pub snd_una: Seq,
    /// RTT sample taken from this ACK, if any.
    pub rtt: Option<Duration>,
}

/// What the connection must do after a new ACK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AckOutcome {
    /// Retransmit the first hole now (a partial ACK during recovery).
    pub retransmit_first_hole: bool,
}

/// The congestion-control interface of a stream connection. All byte
/// counts are payload bytes.
pub trait CongestionController {
    /// A cumulative ACK acknowledged new data.
    fn on_ack(&mut self, now: Instant, ack: AckEvent) -> AckOutcome;
    /// A duplicate ACK arrived (pure, with un-SACKed data in flight).
    /// `flight` counts every un-acknowledged byte (SACKed included);
    /// returns true if the first hole must be fast-retransmitted now.
    fn on_dup_ack(&mut self, now: Instant, flight: usize, snd_nxt: Seq) -> bool;
    /// SACK information shows loss (at least three segments' worth of data
    /// SACKed above the first hole) before three duplicate ACKs arrived.
    /// Starts fast recovery if not recovering; returns true if the first
    /// hole must be retransmitted now.
    fn on_sack_loss(&mut self, now: Instant, flight: usize, snd_nxt: Seq) -> bool;
    /// The retransmission timer expired; `flight` as for `on_dup_ack`.
    fn on_rto(&mut self, now: Instant, flight: usize, snd_nxt: Seq);
    /// The congestion window in bytes.
    fn cwnd(&self) -> usize;
    /// The slow-start threshold in bytes.
    fn ssthresh(&self) -> usize;
    /// Current recovery state.
    fn recovery(&self) -> RecoveryState;
    /// True while in any loss recovery.
    fn in_recovery(&self) -> bool {
        self.recovery() != RecoveryState::Open
    }
    /// True while in fast recovery (SACKed bytes then count as in flight).
    fn in_fast_recovery(&self) -> bool {
        self.recovery() == RecoveryState::Fast
    }
    /// Duplicate ACKs counted since the last new ACK.
    fn dup_acks(&self) -> u32;
    /// The peer reports SACK blocks: from now on fast recovery counts only
    /// un-SACKed bytes as in flight (the RFC 6675 pipe) and keeps the
    /// window at ssthresh instead of inflating it per duplicate ACK.
    fn use_sack_pipe(&mut self) {}
    /// True if the window gate must count SACKed bytes as in flight: in
    /// fast recovery without SACK pipe accounting.
    fn counts_sacked_in_flight(&self) -> bool {
        self.in_fast_recovery()
    }
}

/// Parameters of [`NewReno`].
#[derive(Clone, Copy, Debug)]
pub struct NewRenoConfig {
    /// Congestion unit (ABC limit, ssthresh floor, post-timeout cwnd).
    pub mss: usize,
    /// Segment size: window inflation per duplicate ACK.
    pub segment: usize,
    /// Initial congestion window.
    pub initial_cwnd: usize,
    /// Largest congestion window.
    pub max_cwnd: usize,
    /// Initial slow-start threshold.
    pub initial_ssthresh: usize,
}

impl NewRenoConfig {
    /// The reference constants for a sender cutting `segment`-byte segments.
    pub const fn for_segment(segment: usize) -> Self {
        NewRenoConfig {
            mss: CC_MSS,
            segment,
            initial_cwnd: INITIAL_CWND,
            max_cwnd: MAX_CWND,
            initial_ssthresh: INITIAL_SSTHRESH,
        }
    }
}

/// NewReno / AIMD with appropriate byte counting.
#[derive(Clone, Debug)]
pub struct NewReno {
    cfg: NewRenoConfig,
    cwnd: usize,
    ssthresh: usize,
    state: RecoveryState,
    recovery_point: Seq,
    dup_acks: u32,
    /// Fast recovery uses the SACK pipe ([`CongestionController::use_sack_pipe`]).
    sack_pipe: bool,
    /// Bytes acknowledged in congestion avoidance not yet turned into
    /// window growth (RFC 3465 byte counting).
    ca_acked: usize,
}

impl NewReno {
    /// A controller in slow start with the initial window.
    pub fn new(cfg: NewRenoConfig) -> Self {
        NewReno {
            cwnd: cfg.initial_cwnd.min(cfg.max_cwnd),
            ssthresh: cfg.initial_ssthresh,
            cfg,
            state: RecoveryState::Open,
            recovery_point: Seq(0),
            dup_acks: 0,
            sack_pipe: false,
            ca_acked: 0,
        }
    }

    fn inflate(&mut self) {
        if self.sack_pipe {
            return;
        }
        self.cwnd = self
            .cwnd
            .saturating_add(self.cfg.segment)
            .min(self.cfg.max_cwnd);
    }

    /// The window on entering fast recovery: ssthresh plus the three
    /// segments the duplicate ACKs reported gone (NewReno), or just
    /// ssthresh when the SACK pipe already leaves them out.
    fn recovery_cwnd(&self) -> usize {
        let extra = if self.sack_pipe {
            0
        } else {
            3 * self.cfg.segment
        };
        self.ssthresh.saturating_add(extra).min(self.cfg.max_cwnd)
    }

    fn halve(&self, flight: usize) -> usize {
        (flight / 2).max(2 * self.cfg.mss)
    }
}

impl CongestionController for NewReno {
    fn on_ack(&mut self, _now: Instant, ack: AckEvent) -> AckOutcome {
        self.dup_acks = 0;
        let was = self.state;
        if was != RecoveryState::Open && ack.snd_una.after_eq(self.recovery_point) {
            self.state = RecoveryState::Open;
        }
        let mut out = AckOutcome::default();
        let mut partial_fast = false;
        match (was, self.state) {
            (RecoveryState::Fast, RecoveryState::Open) => {
                // Full ACK: deflate.
                self.cwnd = self.ssthresh;
            }
            (RecoveryState::Fast, _) => {
                // Partial ACK: deflate by what was acked, re-inflate by one
                // segment, retransmit the next hole.
                if self.sack_pipe {
                    self.cwnd = self.ssthresh;
                } else {
                    self.cwnd = self.cwnd.saturating_sub(ack.bytes_acked);
                    if ack.bytes_acked >= self.cfg.segment {
                        self.cwnd = self.cwnd.saturating_add(self.cfg.segment);
                    }
                    self.cwnd = self.cwnd.max(self.ssthresh);
                }
                out.retransmit_first_hole = true;
                partial_fast = true;
            }
            (RecoveryState::Timeout, RecoveryState::Timeout) => {
                out.retransmit_first_hole = true;
            }
            _ => {}
        }
        if ack.bytes_acked > 0 && !partial_fast {
            if self.cwnd < self.ssthresh {
                self.cwnd = self
                    .cwnd
                    .saturating_add(ack.bytes_acked.min(2 * self.cfg.mss));
            } else {
                // One congestion unit per window's worth of acknowledged
                // bytes, however many segments each ACK covers (a
                // receiver that acknowledges a whole batch at once must
                // not slow the growth down).
                self.ca_acked = self.ca_acked.saturating_add(ack.bytes_acked);
                let cwnd = self.cwnd.max(1);
                if self.ca_acked >= cwnd {
                    let units = self.ca_acked / cwnd;
                    self.ca_acked -= units * cwnd;
                    self.cwnd = self.cwnd.saturating_add(units.saturating_mul(self.cfg.mss));
                }
            }
            self.cwnd = self.cwnd.min(self.cfg.max_cwnd);
        }
        out
    }

    fn on_dup_ack(&mut self, _now: Instant, flight: usize, snd_nxt: Seq) -> bool {
        self.dup_acks = self.dup_acks.saturating_add(1);
        let fast = self.state == RecoveryState::Fast;
        if self.dup_acks < DUP_ACK_THRESHOLD {
            if fast {
                self.inflate();
            }
            return false;
        }
        if self.dup_acks == DUP_ACK_THRESHOLD {
            if self.state == RecoveryState::Open || snd_nxt.after(self.recovery_point) {
                self.ssthresh = self.halve(flight);
                self.ca_acked = 0;
                self.state = RecoveryState::Fast;
                self.recovery_point = snd_nxt;
                self.cwnd = self.recovery_cwnd();
            } else if fast {
                self.inflate();
            }
            return true;
        }
        if fast {
            self.inflate();
        }
        false
    }

    fn on_sack_loss(&mut self, _now: Instant, flight: usize, snd_nxt: Seq) -> bool {
        if self.state != RecoveryState::Open {
            return false;
        }
        self.dup_acks = DUP_ACK_THRESHOLD;
        self.ssthresh = self.halve(flight);
        self.ca_acked = 0;
        self.state = RecoveryState::Fast;
        self.recovery_point = snd_nxt;
        self.cwnd = self.recovery_cwnd();
        true
    }

    fn on_rto(&mut self, _now: Instant, flight: usize, snd_nxt: Seq) {
        self.ssthresh = self.halve(flight);
        self.ca_acked = 0;
        self.state = RecoveryState::Timeout;
        self.recovery_point = snd_nxt;
        self.cwnd = self.cfg.mss.min(self.cfg.max_cwnd);
        self.dup_acks = 0;
    }

    fn cwnd(&self) -> usize {
        self.cwnd
    }

    fn ssthresh(&self) -> usize {
        self.ssthresh
    }

    fn recovery(&self) -> RecoveryState {
        self.state
    }

    fn dup_acks(&self) -> u32 {
        self.dup_acks
    }

    fn use_sack_pipe(&mut self) {
        self.sack_pipe = true;
    }

    fn counts_sacked_in_flight(&self) -> bool {
        self.in_fast_recovery() && !self.sack_pipe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Instant = Instant::ZERO;

    fn reno() -> NewReno {
        NewReno::new(NewRenoConfig::for_segment(1152))
    }

    fn ack(bytes: usize, una: u32) -> AckEvent {
        AckEvent {
            bytes_acked: bytes,
            snd_una: Seq(una),
            rtt: None,
        }
    }

    #[test]
    fn slow_start_with_abc() {
        let mut c = reno();
        assert_eq!(c.cwnd(), 40_960);
        assert_eq!(c.ssthresh(), 524_288);
        c.on_ack(T, ack(2304, 2305));
        assert_eq!(c.cwnd(), 43_264);
        c.on_ack(T, ack(11_520, 13_825));
        assert_eq!(c.cwnd(), 43_264 + 8192, "ABC caps growth at 2 units");
        c.on_ack(T, ack(0, 13_825));
        assert_eq!(c.cwnd(), 51_456, "no growth without acked bytes");
    }

    #[test]
    fn congestion_avoidance_growth() {
        let mut c = NewReno::new(NewRenoConfig {
            initial_cwnd: 600_000,
            initial_ssthresh: 100_000,
            ..NewRenoConfig::for_segment(1152)
        });
        c.on_ack(T, ack(2304, 100));
        assert_eq!(c.cwnd(), 600_000, "less than a window acked: no growth yet");
        c.on_ack(T, ack(600_000 - 2304, 200));
        assert_eq!(c.cwnd(), 604_096, "a window's worth acked: one unit");
        c.on_ack(T, ack(3 * 604_096 + 10, 300));
        assert_eq!(c.cwnd(), 604_096 + 3 * 4096, "one ACK, three windows");
        // The cap holds.
        let mut c = NewReno::new(NewRenoConfig {
            initial_cwnd: MAX_CWND,
            initial_ssthresh: 1,
            ..NewRenoConfig::for_segment(1152)
        });
        c.on_ack(T, ack(1, 100));
        c.on_ack(T, ack(3 * MAX_CWND, 200));
        assert_eq!(c.cwnd(), MAX_CWND);
    }

    /// A receiver that acknowledges a batch of segments at once (one ACK
    /// per read of many datagrams) must not slow congestion avoidance:
    /// per window, growth is one unit either way.
    #[test]
    fn stretch_acks_grow_the_window_as_fast_as_per_segment_acks() {
        let cfg = NewRenoConfig {
            initial_cwnd: 40 * 4096,
            initial_ssthresh: 1,
            ..NewRenoConfig::for_segment(4096)
        };
        let (mut each, mut batch) = (NewReno::new(cfg), NewReno::new(cfg));
        let mut una = 1u32;
        for _ in 0..100 {
            for _ in 0..16 {
                una += 4096;
                each.on_ack(T, ack(4096, una));
            }
            batch.on_ack(T, ack(16 * 4096, una));
        }
        assert_eq!(batch.cwnd(), each.cwnd());
        assert!(batch.cwnd() >= 65 * 4096, "{}", batch.cwnd());
    }

    /// With SACK, fast recovery keeps the window at ssthresh and the
    /// connection counts only un-SACKed bytes against it (RFC 6675):
    /// no inflation, no deflation, ssthresh when recovery ends.
    #[test]
    fn sack_pipe_recovery_holds_the_window_at_ssthresh() {
        let mut c = reno();
        c.use_sack_pipe();
        let flight = 20 * 1152;
        let nxt = Seq(1 + flight as u32);
        assert!(c.on_sack_loss(T, flight, nxt));
        assert_eq!(c.ssthresh(), 11_520);
        assert_eq!(c.cwnd(), 11_520, "no +3 segments");
        assert!(!c.counts_sacked_in_flight());
        for _ in 0..5 {
            c.on_dup_ack(T, flight, nxt);
        }
        assert_eq!(c.cwnd(), 11_520, "no inflation");
        let out = c.on_ack(T, ack(2304, 2305));
        assert!(out.retransmit_first_hole);
        assert_eq!(c.cwnd(), 11_520, "no deflation");
        c.on_ack(T, ack(1152, nxt.0));
        assert_eq!(c.recovery(), RecoveryState::Open);
        assert_eq!(c.cwnd(), 11_520);
        // Without SACK the same episode inflates, and SACKed bytes count.
        let mut c = reno();
        assert!(c.on_sack_loss(T, flight, nxt));
        assert_eq!(c.cwnd(), 11_520 + 3 * 1152);
        assert!(c.counts_sacked_in_flight());
    }

    #[test]
    fn fast_retransmit_and_recovery() {
        let mut c = reno();
        let flight = 20 * 1152;
        let nxt = Seq(1 + flight as u32);
        assert!(!c.on_dup_ack(T, flight, nxt));
        assert!(!c.on_dup_ack(T, flight, nxt));
        assert_eq!(c.cwnd(), 40_960, "no inflation before recovery");
        assert!(c.on_dup_ack(T, flight, nxt));
        assert_eq!(c.ssthresh(), 11_520);
        assert_eq!(c.cwnd(), 14_976);
        assert_eq!(c.recovery(), RecoveryState::Fast);
        assert!(!c.on_dup_ack(T, flight, nxt));
        assert_eq!(c.cwnd(), 16_128);
        // Partial ACK: deflate by 2304, +1152, floor ssthresh, retransmit.
        let out = c.on_ack(T, ack(2304, 2305));
        assert!(out.retransmit_first_hole);
        assert_eq!(c.cwnd(), 16_128 - 2304 + 1152);
        assert_eq!(c.dup_acks(), 0);
        assert!(c.in_fast_recovery());
        // Duplicate ACKs after a partial ACK inflate again.
        assert!(!c.on_dup_ack(T, flight, nxt));
        assert_eq!(c.cwnd(), 16_128);
        // Full ACK: leave recovery, cwnd = ssthresh, then normal growth.
        let out = c.on_ack(T, ack(1152, nxt.0));
        assert!(!out.retransmit_first_hole);
        assert_eq!(c.recovery(), RecoveryState::Open);
        assert_eq!(c.cwnd(), 11_520, "1152 of 11 520 bytes: no growth yet");
    }

    #[test]
    fn third_dup_in_same_episode_does_not_halve_again() {
        let mut c = reno();
        let nxt = Seq(50_000);
        for _ in 0..3 {
            c.on_dup_ack(T, 40_000, nxt);
        }
        let ss = c.ssthresh();
        c.on_ack(T, ack(1152, 2000));
        for _ in 0..2 {
            c.on_dup_ack(T, 30_000, nxt);
        }
        assert!(c.on_dup_ack(T, 30_000, nxt), "third dup retransmits");
        assert_eq!(c.ssthresh(), ss, "same episode: no second reduction");
    }

    #[test]
    fn sack_loss_enters_fast_recovery_once() {
        let mut c = reno();
        assert!(c.on_sack_loss(T, 23_040, Seq(23_041)));
        assert_eq!(c.recovery(), RecoveryState::Fast);
        assert_eq!(c.cwnd(), 11_520 + 3456);
        assert!(
            !c.on_sack_loss(T, 23_040, Seq(23_041)),
            "already recovering"
        );
        assert_eq!(c.dup_acks(), 3);
    }

    #[test]
    fn timeout_recovery() {
        let mut c = reno();
        c.on_rto(T, 23_040, Seq(23_041));
        assert_eq!(c.ssthresh(), 11_520);
        assert_eq!(c.cwnd(), 4096);
        assert_eq!(c.recovery(), RecoveryState::Timeout);
        assert!(!c.in_fast_recovery());
        let out = c.on_ack(T, ack(1152, 1153));
        assert!(out.retransmit_first_hole, "partial ACK in timeout recovery");
        assert_eq!(c.cwnd(), 4096 + 1152, "slow start continues");
        let out = c.on_ack(T, ack(1152, 23_041));
        assert!(!out.retransmit_first_hole);
        assert_eq!(c.recovery(), RecoveryState::Open);
        // Floor of two units.
        c.on_rto(T, 100, Seq(23_041));
        assert_eq!(c.ssthresh(), 8192);
    }
}
