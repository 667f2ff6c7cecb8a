//! Segment size of one connection: path-MTU black-hole detection
//! (`spec/transport.md` §5.4) and the upward search (datagram
//! packetization-layer PMTU discovery, RFC 8899; §5.5). This is the one
//! place that decides how large a data segment may be.
//!
//! A path whose MTU is below our segments silently drops every full-size
//! data segment while small packets (handshake, ACKs, probes) get through.
//! The sign is a retransmission timeout after which the peer still answers
//! our probe (sent with each timeout of a segment larger than the floor)
//! but the data is not acknowledged. After
//! [`BLACKHOLE_EVIDENCE`] such timeouts in a row (one once we have already
//! shrunk), the segment size halves, down to [`SEGMENT_FLOOR`]. When even
//! floor-size segments go unanswered that way [`FLOOR_EVIDENCE`] times,
//! the path cannot carry the stream: the connection ends with "path MTU
//! too small" instead of waiting for the user timeout — unless a floor's
//! worth of data was acknowledged at once earlier, which proves the path
//! carries floor-size segments (heavy loss then looks like a black hole
//! and must end by the user timeout instead). A silent peer
//! (partition, dead host) is never evidence: nothing shrinks, and the
//! ordinary give-up rule applies.
//!
//! Upward, the profile's size is the base and the floor of the search:
//! the connection probes sizes up to a ceiling (the largest segment a
//! receiver accepts, [`MAX_ACCEPTED_SEGMENT`](super::consts::MAX_ACCEPTED_SEGMENT)),
//! the ceiling first, then by bisection between the largest confirmed
//! size and the smallest one that went unanswered [`PMTU_MAX_PROBES`]
//! times. A confirmed probe raises the segment size at once. Black-hole
//! detection above the base falls straight back to the base and ends the
//! search. A search that ended (converged, or stopped by a black hole)
//! starts again after [`PMTU_RAISE_TIMER`] (RFC 8899's
//! `PMTU_RAISE_TIMER`), from the size in use up to the ceiling, so a path
//! whose MTU grew later is found again. The connection sends the probes,
//! recognises their answers and keeps that timer (`conn.rs`); this type
//! only keeps the search.

#[cfg(doc)]
use super::consts::PMTU_RAISE_TIMER;
use super::consts::{
    BLACKHOLE_EVIDENCE, FLOOR_EVIDENCE, PMTU_MAX_PROBES, PMTU_SEARCH_STEP, SEGMENT_FLOOR,
};

/// What a retransmission timeout did to the segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtuVerdict {
    /// Nothing changes.
    Keep,
    /// Segments are now at most this many bytes.
    Shrunk(usize),
    /// Even floor-size segments do not get through: give up.
    TooSmall,
}

/// The segment-size state of a connection.
#[derive(Clone, Copy, Debug)]
pub struct SegmentSize {
    max: usize,
    current: usize,
    floor: usize,
    evidence: u32,
    shrunk: bool,
    /// A floor's worth of data was acknowledged in one cumulative advance:
    /// the path carries floor-size segments, so a later run of answered
    /// timeouts is loss, not a black hole, and never ends the connection.
    floor_carried: bool,
    /// Largest size the upward search may try (`max` when it is off).
    ceiling: usize,
    /// Largest size known to cross the path (`max` until a probe succeeds).
    confirmed: usize,
    /// Smallest size found too large (`ceiling + 1` while none is).
    too_large: usize,
    /// Unanswered probes of the current candidate.
    attempts: u32,
    /// The search ended for good (a black hole above the base).
    search_stopped: bool,
    /// Largest size used so far.
    largest: usize,
}

impl SegmentSize {
    /// Starts at `max` (the profile's segment size); never goes below
    /// [`SEGMENT_FLOOR`] (or `max`, if that is smaller).
    pub fn new(max: usize) -> Self {
        Self::with_ceiling(max, max)
    }

    /// Starts at `max` and searches upward up to `ceiling` (no search when
    /// `ceiling <= max`).
    pub fn with_ceiling(max: usize, ceiling: usize) -> Self {
        let max = max.max(1);
        let ceiling = ceiling.max(max);
        SegmentSize {
            max,
            current: max,
            floor: SEGMENT_FLOOR.min(max),
            evidence: 0,
            shrunk: false,
            floor_carried: false,
            ceiling,
            confirmed: max,
            too_large: ceiling.saturating_add(1),
            attempts: 0,
            search_stopped: ceiling == max,
            largest: max,
        }
    }

    /// The size the next upward probe should have, or `None` when the
    /// search is over (converged, off, or stopped by a black hole).
    pub fn probe_candidate(&self) -> Option<usize> {
        if self.search_stopped || self.current < self.confirmed {
            return None;
        }
        let c = if self.too_large > self.ceiling {
            self.ceiling
        } else {
            self.confirmed.saturating_add(self.too_large) / 2
        };
        (c >= self.confirmed.saturating_add(PMTU_SEARCH_STEP) && c < self.too_large).then_some(c)
    }

    /// Whether an enabled search has ended (converged, or stopped by a
    /// black hole): the moment the re-search timer starts.
    pub fn search_over(&self) -> bool {
        self.ceiling > self.max && self.probe_candidate().is_none()
    }

    /// Starts the search again (the re-search timer fired): the size in use
    /// is taken as confirmed and every size above it up to the ceiling is
    /// a candidate again, the ceiling first. Returns whether a search
    /// started (never where probing is off).
    pub fn restart_search(&mut self) -> bool {
        if self.ceiling <= self.max || self.current >= self.ceiling {
            return false;
        }
        self.confirmed = self.current;
        self.too_large = self.ceiling.saturating_add(1);
        self.attempts = 0;
        self.search_stopped = false;
        self.probe_candidate().is_some()
    }

    /// A probe of `size` bytes was answered: the path carries it. Returns
    /// whether the segment size grew.
    pub fn on_probe_acked(&mut self, size: usize) -> bool {
        if self.search_stopped || size <= self.confirmed || size > self.ceiling {
            return false;
        }
        self.confirmed = size;
        self.attempts = 0;
        if size > self.current {
            self.current = size;
            self.largest = self.largest.max(size);
            return true;
        }
        false
    }

    /// A probe of `size` bytes went unanswered; after
    /// [`PMTU_MAX_PROBES`] of them the size counts as too large.
    pub fn on_probe_lost(&mut self, size: usize) {
        self.attempts = self.attempts.saturating_add(1);
        if self.attempts >= PMTU_MAX_PROBES {
            self.attempts = 0;
            self.too_large = self.too_large.min(size);
        }
    }

    /// The largest size confirmed so far (the base until a probe succeeds).
    pub fn confirmed(&self) -> usize {
        self.confirmed
    }

    /// The largest segment size used so far.
    pub fn largest(&self) -> usize {
        self.largest
    }

    /// The largest payload of a data segment now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The profile's segment size: the base of the upward search and the
    /// start of black-hole halving.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a timeout of a segment of `len` bytes should carry a probe
    /// (so that a black hole can be told from a silent peer).
    pub fn wants_probe(&self, len: usize) -> bool {
        len > self.floor / 2
    }

    /// The cumulative ACK advanced by `acked` bytes: data gets through at
    /// this size. An advance of at least a floor's worth proves the path
    /// carries floor-size segments.
    pub fn on_progress(&mut self, acked: usize) {
        self.evidence = 0;
        if acked >= self.floor {
            self.floor_carried = true;
        }
    }

    /// A retransmission timeout for a first hole of `len` payload bytes.
    /// `answered`: the peer was heard, with an open window, since the
    /// previous timeout (it answered our probe) although the data was not
    /// acknowledged.
    pub fn on_timeout(&mut self, len: usize, answered: bool) -> MtuVerdict {
        if !answered || !self.wants_probe(len) {
            self.evidence = 0;
            return MtuVerdict::Keep;
        }
        self.evidence = self.evidence.saturating_add(1);
        if self.current > self.floor && len > self.floor {
            let need = if self.shrunk { 1 } else { BLACKHOLE_EVIDENCE };
            if self.evidence >= need && self.current > self.max {
                // A probed size stopped getting through: back to the base
                // (never proven bad), and no more searching.
                self.too_large = self.current;
                self.current = self.max;
                self.confirmed = self.max;
                self.search_stopped = true;
                self.evidence = 0;
                return MtuVerdict::Shrunk(self.current);
            }
            if self.evidence >= need {
                self.current = (self.current / 2).max(self.floor);
                self.shrunk = true;
                self.evidence = 0;
                return MtuVerdict::Shrunk(self.current);
            }
            return MtuVerdict::Keep;
        }
        if self.evidence >= FLOOR_EVIDENCE && !self.floor_carried {
            return MtuVerdict::TooSmall;
        }
        MtuVerdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shrinks_on_answered_timeouts_only() {
        let mut s = SegmentSize::new(1152);
        // A silent peer is no evidence.
        for _ in 0..10 {
            assert_eq!(s.on_timeout(1152, false), MtuVerdict::Keep);
        }
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Keep);
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Shrunk(576));
        // Once shrunk, one more answered timeout is enough.
        assert_eq!(s.on_timeout(576, true), MtuVerdict::Shrunk(SEGMENT_FLOOR));
        for _ in 1..FLOOR_EVIDENCE {
            assert_eq!(s.on_timeout(SEGMENT_FLOOR, true), MtuVerdict::Keep);
        }
        assert_eq!(s.on_timeout(SEGMENT_FLOOR, true), MtuVerdict::TooSmall);
    }

    #[test]
    fn progress_and_silence_reset_the_evidence() {
        let mut s = SegmentSize::new(1152);
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Keep);
        s.on_progress(100);
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Keep);
        assert_eq!(s.on_timeout(1152, false), MtuVerdict::Keep);
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Keep);
        assert_eq!(s.current(), 1152);
        // Small segments (a tail) are no evidence about the MTU.
        let mut t = SegmentSize::new(1152);
        for _ in 0..20 {
            assert_eq!(t.on_timeout(100, true), MtuVerdict::Keep);
        }
    }

    #[test]
    fn legacy_size_halves_down_to_the_floor() {
        let mut s = SegmentSize::new(4096);
        let mut sizes = vec![];
        s.on_timeout(4096, true);
        while let MtuVerdict::Shrunk(n) = s.on_timeout(s.current(), true) {
            sizes.push(n);
        }
        assert_eq!(sizes, vec![2048, 1024, 512, SEGMENT_FLOOR]);
        assert_eq!(s.max(), 4096);
    }

    /// Issue #21 long grid: at 35 % loss a connection that had delivered
    /// 180 kB through floor-size segments ended with "path MTU too small"
    /// after four answered timeouts in a row. Once the path carried a
    /// floor's worth at once, answered timeouts are loss.
    #[test]
    fn a_path_that_carried_the_floor_is_never_too_small() {
        let mut s = SegmentSize::new(1152);
        s.on_progress(1152);
        for _ in 0..20 {
            assert_ne!(s.on_timeout(s.current(), true), MtuVerdict::TooSmall);
        }
        assert_eq!(s.current(), SEGMENT_FLOOR);
        // Small advances (tails, ACKs of probes) prove nothing.
        let mut t = SegmentSize::new(1152);
        t.on_progress(SEGMENT_FLOOR - 1);
        let verdicts: Vec<_> = (0..20).map(|_| t.on_timeout(t.current(), true)).collect();
        assert!(verdicts.contains(&MtuVerdict::TooSmall));
    }

    /// Runs the upward search against a path that carries segments up to
    /// `limit` bytes; returns the final size and the probes it took.
    fn search(limit: usize) -> (usize, usize) {
        let mut s = SegmentSize::with_ceiling(1152, 4096);
        let mut probes = 0;
        while let Some(c) = s.probe_candidate() {
            probes += 1;
            assert!(probes < 100, "the search must end");
            if c <= limit {
                s.on_probe_acked(c);
            } else {
                s.on_probe_lost(c);
            }
        }
        (s.current(), probes)
    }

    #[test]
    fn upward_search_converges_below_the_path_limit() {
        for limit in [1000, 1152, 1200, 1300, 1430, 2000, 3000, 4095, 4096, 9000] {
            let (size, probes) = search(limit);
            let want = limit.clamp(1152, 4096);
            assert!(size <= want, "limit {limit}: {size}");
            assert!(
                want - size < 2 * PMTU_SEARCH_STEP,
                "limit {limit}: {size} too far below"
            );
            assert!(probes <= 3 * 8, "limit {limit}: {probes} probes");
        }
        // An open path takes one probe.
        assert_eq!(search(9000), (4096, 1));
    }

    #[test]
    fn a_peer_that_never_answers_stays_at_the_base() {
        let (size, probes) = search(0);
        assert_eq!(size, 1152);
        assert!(probes > 0 && probes <= 3 * 8);
        // No search where the ceiling is the profile's size (legacy).
        assert_eq!(
            SegmentSize::with_ceiling(4096, 4096).probe_candidate(),
            None
        );
        assert_eq!(SegmentSize::new(1152).probe_candidate(), None);
    }

    #[test]
    fn a_black_hole_above_the_base_falls_back_to_the_base() {
        let mut s = SegmentSize::with_ceiling(1152, 4096);
        assert_eq!(s.probe_candidate(), Some(4096));
        assert!(s.on_probe_acked(4096));
        assert_eq!(s.current(), 4096);
        assert_eq!(s.on_timeout(4096, true), MtuVerdict::Keep);
        assert_eq!(s.on_timeout(4096, true), MtuVerdict::Shrunk(1152));
        assert_eq!(s.probe_candidate(), None, "the search ends");
        assert!(!s.on_probe_acked(4096));
        // Below the base, halving still needs the full evidence.
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Keep);
        assert_eq!(s.on_timeout(1152, true), MtuVerdict::Shrunk(576));
    }

    #[test]
    fn a_restarted_search_finds_a_path_that_grew() {
        let mut s = SegmentSize::with_ceiling(1152, 4096);
        while let Some(c) = s.probe_candidate() {
            if c <= 1430 {
                s.on_probe_acked(c);
            } else {
                s.on_probe_lost(c);
            }
        }
        let before = s.current();
        assert!(s.search_over() && before <= 1430);
        // The path now carries everything: the ceiling is tried first.
        assert!(s.restart_search());
        assert!(!s.search_over());
        assert_eq!(s.probe_candidate(), Some(4096));
        assert!(s.on_probe_acked(4096));
        assert_eq!(s.current(), 4096);
        // At the ceiling there is nothing left to search.
        assert!(s.search_over());
        assert!(!s.restart_search());
    }

    #[test]
    fn a_restarted_search_on_an_unchanged_path_keeps_the_size() {
        let mut s = SegmentSize::with_ceiling(1152, 4096);
        let run = |s: &mut SegmentSize| {
            let mut probes = 0;
            while let Some(c) = s.probe_candidate() {
                probes += 1;
                if c <= 2000 {
                    s.on_probe_acked(c);
                } else {
                    s.on_probe_lost(c);
                }
            }
            probes
        };
        run(&mut s);
        let size = s.current();
        assert!(s.restart_search());
        let probes = run(&mut s);
        assert_eq!(s.current(), size, "nothing lost, nothing gained");
        assert!((1..=24).contains(&probes), "{probes} probes");
    }

    #[test]
    fn a_search_stopped_by_a_black_hole_restarts_from_the_base() {
        let mut s = SegmentSize::with_ceiling(1152, 4096);
        assert!(s.on_probe_acked(4096));
        s.on_timeout(4096, true);
        assert_eq!(s.on_timeout(4096, true), MtuVerdict::Shrunk(1152));
        assert!(s.search_over());
        assert!(s.restart_search());
        assert_eq!(s.probe_candidate(), Some(4096));
        // No search where probing is off.
        let mut off = SegmentSize::new(1152);
        assert!(!off.search_over());
        assert!(!off.restart_search());
        assert_eq!(off.probe_candidate(), None);
    }
}
