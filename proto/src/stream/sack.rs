//! Selective acknowledgements (`spec/transport.md` §6.4): the SACK payload
//! codec, the receiver's block selection, and the sender's scoreboard.
//!
//! A SACK travels as the payload of a pure ACK: the ASCII magic `SACK`, a
//! block count `N` in 1..=4, then `N` blocks of two big-endian `u32`
//! sequence numbers `[start, end)`. Trailing bytes after the blocks are
//! ignored on decode.
//!
//! The [`Scoreboard`] remembers which byte ranges above the cumulative ACK
//! the peer has reported, merged into disjoint ranges and bounded in size; a
//! segment counts as SACKed only when it is covered *entirely* (the Go
//! reference marks any overlap, which can strand a partly received segment).

use smallvec::SmallVec;

use super::seq::Seq;

/// The four magic bytes that open a SACK payload (spec/transport.md §6.4).
pub const SACK_MAGIC: [u8; 4] = *b"SACK";

/// Most blocks one SACK payload carries (spec/transport.md §6.4).
pub const MAX_SACK_BLOCKS: usize = 4;

/// Length of the SACK header (magic and count).
pub const SACK_HEADER_LEN: usize = 5;

/// Length of one encoded block.
pub const SACK_BLOCK_LEN: usize = 8;

/// Most disjoint ranges the sender's scoreboard keeps; beyond it the
/// lowest-priority (highest) ranges are forgotten, which only delays their
/// marking until the next SACK.
pub const SCOREBOARD_MAX_RANGES: usize = 128;

/// One SACK block: sequence numbers `[start, end)` the receiver holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SackBlock {
    /// First sequence number received.
    pub start: Seq,
    /// Sequence number after the block (exclusive).
    pub end: Seq,
}

impl SackBlock {
    /// A block `[start, end)`.
    pub const fn new(start: u32, end: u32) -> Self {
        SackBlock {
            start: Seq(start),
            end: Seq(end),
        }
    }

    /// True if the block covers at least one sequence number.
    pub const fn is_valid(&self) -> bool {
        self.end.after(self.start)
    }

    /// Number of sequence numbers covered (0 for an invalid block).
    pub const fn len(&self) -> u32 {
        if self.is_valid() {
            self.end.since(self.start)
        } else {
            0
        }
    }

    /// True if the block covers nothing.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to [`MAX_SACK_BLOCKS`] blocks, stored inline.
pub type SackBlocks = SmallVec<[SackBlock; MAX_SACK_BLOCKS]>;

/// Why a payload is not a SACK. On the wire such a payload is data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SackDecodeError {
    /// Fewer than the 5 header bytes.
    #[error("payload shorter than the SACK header")]
    TooShort,
    /// The first four bytes are not `SACK`.
    #[error("payload does not start with the SACK magic")]
    BadMagic,
    /// Block count outside 1..=4.
    #[error("SACK block count {0} outside 1..=4")]
    BadCount(u8),
    /// Fewer bytes than the block count requires.
    #[error("SACK payload truncated: {needed} bytes needed, {got} present")]
    Truncated {
        /// Bytes the count requires.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
}

/// Why a SACK payload cannot be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SackEncodeError {
    /// No blocks, or more than four.
    #[error("SACK needs 1..=4 blocks, got {0}")]
    BadCount(usize),
    /// The output buffer is too small.
    #[error("buffer of {got} bytes too small for {needed}-byte SACK")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
}

/// Encoded length of a SACK payload with `n` blocks.
pub const fn encoded_len(n: usize) -> usize {
    SACK_HEADER_LEN + SACK_BLOCK_LEN * n
}

/// Encodes `blocks` (1..=4 of them, in the given order) into `out`,
/// returning the number of bytes written.
pub fn encode(blocks: &[SackBlock], out: &mut [u8]) -> Result<usize, SackEncodeError> {
    let n = blocks.len();
    if n == 0 || n > MAX_SACK_BLOCKS {
        return Err(SackEncodeError::BadCount(n));
    }
    let needed = encoded_len(n);
    let got = out.len();
    let Some(dst) = out.get_mut(..needed) else {
        return Err(SackEncodeError::BufferTooSmall { needed, got });
    };
    let (head, body) = dst.split_at_mut(SACK_HEADER_LEN);
    head[..4].copy_from_slice(&SACK_MAGIC);
    head[4] = n as u8;
    for (chunk, b) in body.chunks_exact_mut(SACK_BLOCK_LEN).zip(blocks) {
        chunk[..4].copy_from_slice(&b.start.0.to_be_bytes());
        chunk[4..].copy_from_slice(&b.end.0.to_be_bytes());
    }
    Ok(needed)
}

/// Decodes a SACK payload. Blocks are returned as sent (possibly empty or
/// inverted; the [`Scoreboard`] ignores those).
pub fn decode(payload: &[u8]) -> Result<SackBlocks, SackDecodeError> {
    let Some((head, body)) = payload.split_at_checked(SACK_HEADER_LEN) else {
        return Err(SackDecodeError::TooShort);
    };
    if head.get(..4) != Some(&SACK_MAGIC[..]) {
        return Err(SackDecodeError::BadMagic);
    }
    let n = head.get(4).copied().unwrap_or(0);
    if n == 0 || usize::from(n) > MAX_SACK_BLOCKS {
        return Err(SackDecodeError::BadCount(n));
    }
    let needed = encoded_len(usize::from(n));
    if payload.len() < needed {
        return Err(SackDecodeError::Truncated {
            needed,
            got: payload.len(),
        });
    }
    let mut blocks = SackBlocks::new();
    for chunk in body.chunks_exact(SACK_BLOCK_LEN).take(usize::from(n)) {
        let (s, e) = chunk.split_at(4);
        let start = u32::from_be_bytes(s.try_into().unwrap_or([0; 4]));
        let end = u32::from_be_bytes(e.try_into().unwrap_or([0; 4]));
        blocks.push(SackBlock::new(start, end));
    }
    Ok(blocks)
}

/// Chooses the blocks to send from `ranges`, which must be disjoint and in
/// ascending order: the highest (newest) [`MAX_SACK_BLOCKS`], kept in
/// ascending order (spec/transport.md §6.4).
pub fn select_blocks<I>(ranges: I) -> SackBlocks
where
    I: IntoIterator<Item = SackBlock>,
{
    let mut out = SackBlocks::new();
    for b in ranges {
        if out.len() == MAX_SACK_BLOCKS {
            out.remove(0);
        }
        out.push(b);
    }
    out
}

/// The sender's record of what the peer reported via SACK above the
/// cumulative ACK: disjoint ranges in ascending order, bounded.
#[derive(Clone, Debug, Default)]
pub struct Scoreboard {
    ranges: SmallVec<[SackBlock; 8]>,
}

impl Scoreboard {
    /// An empty scoreboard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything (for example after a retransmission timeout, when
    /// the peer may have discarded what it reported).
    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The disjoint SACKed ranges, in ascending order.
    pub fn ranges(&self) -> &[SackBlock] {
        &self.ranges
    }

    /// True if nothing is SACKed.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Records `block`, clipped to `[snd_una, snd_nxt)` (anything outside
    /// the sent, un-acknowledged window is ignored). Returns true if the
    /// scoreboard changed.
    pub fn add(&mut self, block: SackBlock, snd_una: Seq, snd_nxt: Seq) -> bool {
        if !block.is_valid() {
            return false;
        }
        let start = block.start.max(snd_una);
        let end = block.end.min(snd_nxt);
        if !end.after(start) {
            return false;
        }
        if self.covers(start, end) {
            return false;
        }
        // Merge with every range that overlaps or touches [start, end).
        let mut new = SackBlock { start, end };
        let mut i = 0;
        let mut insert_at = self.ranges.len();
        while let Some(r) = self.ranges.get(i).copied() {
            if r.end.before(new.start) {
                i += 1;
                continue;
            }
            if r.start.after(new.end) {
                insert_at = i;
                break;
            }
            new.start = new.start.min(r.start);
            new.end = new.end.max(r.end);
            self.ranges.remove(i);
            insert_at = i;
        }
        if insert_at > self.ranges.len() {
            insert_at = self.ranges.len();
        }
        self.ranges.insert(insert_at, new);
        while self.ranges.len() > SCOREBOARD_MAX_RANGES {
            self.ranges.pop();
        }
        true
    }

    /// Drops everything at or below the new cumulative ACK `snd_una`.
    pub fn advance(&mut self, snd_una: Seq) {
        self.ranges.retain(|r| r.end.after(snd_una));
        if let Some(first) = self.ranges.first_mut() {
            first.start = first.start.max(snd_una);
        }
    }

    /// True if `[start, end)` lies entirely inside one SACKed range.
    pub fn covers(&self, start: Seq, end: Seq) -> bool {
        self.ranges
            .iter()
            .any(|r| r.start.before_eq(start) && end.before_eq(r.end))
    }

    /// The highest SACKed sequence number (exclusive end), if any.
    pub fn highest(&self) -> Option<Seq> {
        self.ranges.last().map(|r| r.end)
    }

    /// Total SACKed sequence numbers.
    pub fn sacked_len(&self) -> u64 {
        self.ranges.iter().map(|r| u64::from(r.len())).sum()
    }

    /// The holes the SACK information reveals: ranges from `snd_una` up to
    /// the highest SACKed sequence that the peer has not reported. These,
    /// and only these, are retransmission candidates while SACK information
    /// exists.
    pub fn gaps(&self, snd_una: Seq) -> impl Iterator<Item = SackBlock> + '_ {
        let mut cursor = snd_una;
        self.ranges.iter().filter_map(move |r| {
            let gap = if r.start.after(cursor) {
                Some(SackBlock {
                    start: cursor,
                    end: r.start,
                })
            } else {
                None
            };
            cursor = cursor.max(r.end);
            gap
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIRE: [u8; 21] = [
        0x53, 0x41, 0x43, 0x4b, 0x02, 0x00, 0x00, 0x09, 0x01, 0x00, 0x00, 0x0d, 0x81, 0x00, 0x00,
        0x12, 0x01, 0x00, 0x00, 0x16, 0x81,
    ];

    #[test]
    fn encodes_reference_example() {
        let blocks = [SackBlock::new(2305, 3457), SackBlock::new(4609, 5761)];
        let mut buf = [0u8; 64];
        let n = encode(&blocks, &mut buf).unwrap();
        assert_eq!(&buf[..n], &WIRE[..]);
        assert_eq!(decode(&WIRE).unwrap().as_slice(), &blocks[..]);
    }

    #[test]
    fn decode_errors_are_typed() {
        assert_eq!(decode(b"SACK"), Err(SackDecodeError::TooShort));
        assert_eq!(decode(b"SACX\x01"), Err(SackDecodeError::BadMagic));
        assert_eq!(decode(b"SACK\x00"), Err(SackDecodeError::BadCount(0)));
        assert_eq!(decode(b"SACK\x05"), Err(SackDecodeError::BadCount(5)));
        assert_eq!(
            decode(&WIRE[..20]),
            Err(SackDecodeError::Truncated {
                needed: 21,
                got: 20
            })
        );
        let mut long = WIRE.to_vec();
        long.extend_from_slice(b"trailing");
        assert_eq!(decode(&long).unwrap().len(), 2);
    }

    #[test]
    fn encode_errors_are_typed() {
        let mut buf = [0u8; 64];
        assert_eq!(encode(&[], &mut buf), Err(SackEncodeError::BadCount(0)));
        let five = [SackBlock::new(1, 2); 5];
        assert_eq!(encode(&five, &mut buf), Err(SackEncodeError::BadCount(5)));
        assert_eq!(
            encode(&five[..2], &mut buf[..20]),
            Err(SackEncodeError::BufferTooSmall {
                needed: 21,
                got: 20
            })
        );
    }

    #[test]
    fn selection_keeps_highest_four_ascending() {
        let ranges = (0..6u32).map(|i| SackBlock::new(i * 100 + 10, i * 100 + 20));
        let sel = select_blocks(ranges);
        let starts: Vec<u32> = sel.iter().map(|b| b.start.0).collect();
        assert_eq!(starts, vec![210, 310, 410, 510]);
        assert_eq!(select_blocks([SackBlock::new(5, 6)]).len(), 1);
    }

    #[test]
    fn scoreboard_merges_clips_and_advances() {
        let mut sb = Scoreboard::new();
        let una = Seq(1);
        let nxt = Seq(5761);
        assert!(sb.add(SackBlock::new(2305, 3457), una, nxt));
        assert!(sb.add(SackBlock::new(4609, 9999), una, nxt));
        assert!(!sb.add(SackBlock::new(2305, 3457), una, nxt));
        assert!(!sb.add(SackBlock::new(10, 5), una, nxt), "inverted ignored");
        assert_eq!(
            sb.ranges(),
            &[SackBlock::new(2305, 3457), SackBlock::new(4609, 5761)]
        );
        assert!(sb.covers(Seq(2305), Seq(3457)));
        assert!(!sb.covers(Seq(1153), Seq(2305)));
        assert!(
            !sb.covers(Seq(3000), Seq(3500)),
            "partial overlap is not coverage"
        );
        let gaps: Vec<_> = sb.gaps(una).collect();
        assert_eq!(
            gaps,
            vec![SackBlock::new(1, 2305), SackBlock::new(3457, 4609)]
        );
        // Filling the middle merges into one range.
        assert!(sb.add(SackBlock::new(3457, 4609), una, nxt));
        assert_eq!(sb.ranges(), &[SackBlock::new(2305, 5761)]);
        assert_eq!(sb.highest(), Some(Seq(5761)));
        sb.advance(Seq(3000));
        assert_eq!(sb.ranges(), &[SackBlock::new(3000, 5761)]);
        assert_eq!(sb.sacked_len(), 2761);
        sb.advance(Seq(6000));
        assert!(sb.is_empty());
    }

    #[test]
    fn scoreboard_works_across_wrap_and_stays_bounded() {
        let mut sb = Scoreboard::new();
        let una = Seq(u32::MAX - 100);
        let nxt = una.add(100_000);
        assert!(sb.add(
            SackBlock {
                start: una.add(50),
                end: una.add(200)
            },
            una,
            nxt
        ));
        assert!(sb.covers(una.add(60), una.add(200)));
        for i in 0..100u32 {
            let s = una.add(1000 + i * 10);
            sb.add(
                SackBlock {
                    start: s,
                    end: s.add(5),
                },
                una,
                nxt,
            );
        }
        assert!(sb.ranges().len() <= SCOREBOARD_MAX_RANGES);
        assert_eq!(
            sb.gaps(una).next(),
            Some(SackBlock {
                start: una,
                end: una.add(50)
            })
        );
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_encode_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            // Make most inputs look like SACK so the interesting path runs.
            let mut b = bytes;
            if b.len() >= 5 && b[0] % 4 != 0 {
                b[..4].copy_from_slice(&SACK_MAGIC);
                b[4] = 1 + b[4] % 4;
            }
            if let Ok(blocks) = decode(&b) {
                let mut out = [0u8; 64];
                let n = encode(&blocks, &mut out).unwrap();
                prop_assert_eq!(&out[..n], &b[..n]);
                prop_assert_eq!(decode(&out[..n]).unwrap(), blocks);
            }
        }

        #[test]
        fn scoreboard_stays_sorted_disjoint_and_bounded(
            una in any::<u32>(),
            blocks in prop::collection::vec((0u32..100_000, 0u32..5_000), 0..80),
        ) {
            let una = Seq(una);
            let nxt = una.add(90_000);
            let mut sb = Scoreboard::new();
            for (off, len) in blocks {
                let start = una.add(off);
                sb.add(SackBlock { start, end: start.add(len) }, una, nxt);
                prop_assert!(sb.ranges().len() <= SCOREBOARD_MAX_RANGES);
                for r in sb.ranges() {
                    prop_assert!(r.is_valid());
                    prop_assert!(r.start.after_eq(una) && r.end.before_eq(nxt));
                }
                for w in sb.ranges().windows(2) {
                    prop_assert!(w[0].end.before(w[1].start), "{:?}", sb.ranges());
                }
            }
        }
    }
}
