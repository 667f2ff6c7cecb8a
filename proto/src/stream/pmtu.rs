//! Segment size of one connection and path-MTU black-hole detection
//! (`spec/transport.md` §5.4). This is the one place that decides how
//! large a data segment may be; upward probing (a later PMTU search) would
//! extend it here.
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
//! too small" instead of waiting for the user timeout. A silent peer
//! (partition, dead host) is never evidence: nothing shrinks, and the
//! ordinary give-up rule applies.

use super::consts::{BLACKHOLE_EVIDENCE, FLOOR_EVIDENCE, SEGMENT_FLOOR};

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
}

impl SegmentSize {
    /// Starts at `max` (the profile's segment size); never goes below
    /// [`SEGMENT_FLOOR`] (or `max`, if that is smaller).
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        SegmentSize {
            max,
            current: max,
            floor: SEGMENT_FLOOR.min(max),
            evidence: 0,
            shrunk: false,
        }
    }

    /// The largest payload of a data segment now.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The configured (largest) segment size.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether a timeout of a segment of `len` bytes should carry a probe
    /// (so that a black hole can be told from a silent peer).
    pub fn wants_probe(&self, len: usize) -> bool {
        len > self.floor / 2
    }

    /// The cumulative ACK advanced: data gets through at this size.
    pub fn on_progress(&mut self) {
        self.evidence = 0;
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
            if self.evidence >= need {
                self.current = (self.current / 2).max(self.floor);
                self.shrunk = true;
                self.evidence = 0;
                return MtuVerdict::Shrunk(self.current);
            }
            return MtuVerdict::Keep;
        }
        if self.evidence >= FLOOR_EVIDENCE {
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
        s.on_progress();
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
}
