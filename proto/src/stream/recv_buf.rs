//! The receive side of a stream (`spec/transport.md` §6): in-order
//! delivery, a bounded out-of-order buffer, duplicate and overlap trimming,
//! the advertised window (free receive slots, counted in segments), SACK
//! block generation, and FIN ordering.
//!
//! Invariants: every byte handed to the application is handed over exactly
//! once and in order; the ready queue holds at most `queue_segments`
//! segments and `queue_segments × 4096` bytes; the out-of-order buffer at
//! most `ooo_segments` segments and `ooo_segments × 4096` bytes. A FIN takes
//! effect only once every byte before it has arrived (the Go reference acts
//! on it at once and loses missing data).

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

use super::consts::{MAX_SEGMENT_BUDGET, OOO_SEGMENTS, RECV_QUEUE_SEGMENTS};
use super::sack::{MAX_SACK_BLOCKS, SackBlock, SackBlocks};
use super::seq::Seq;

/// Slot-array capacity kept by an emptied queue; larger ones are freed.
const IDLE_SLOTS: usize = 16;

/// Capacities of a [`RecvBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvConfig {
    /// Ready-queue slots (the largest advertised window).
    pub queue_segments: usize,
    /// Out-of-order buffer slots.
    pub ooo_segments: usize,
}

impl Default for RecvConfig {
    fn default() -> Self {
        RecvConfig {
            queue_segments: RECV_QUEUE_SEGMENTS,
            ooo_segments: OOO_SEGMENTS,
        }
    }
}

/// What happened to a received data segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// New in-order bytes became readable (`bytes` of them, including any
    /// out-of-order data that became contiguous).
    Delivered {
        /// Bytes made readable.
        bytes: usize,
    },
    /// Stored in the out-of-order buffer.
    Buffered,
    /// Nothing new (entirely before the cumulative ACK or already held).
    Duplicate,
    /// Dropped: no room, beyond the acceptable range, or after the FIN.
    Dropped,
    /// The receive side is closed; nothing is accepted.
    Closed,
}

/// What happened to a received FIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinOutcome {
    /// Every byte before the FIN has arrived: end of stream now.
    Eof,
    /// Data before the FIN is still missing; it takes effect later.
    Pending,
    /// A FIN was already recorded (a duplicate or a conflicting one).
    Duplicate,
}

/// The receive half of a connection.
#[derive(Clone, Debug)]
pub struct RecvBuffer {
    cfg: RecvConfig,
    rcv_nxt: Seq,
    ready: VecDeque<Bytes>,
    ready_bytes: usize,
    /// Sorted by start sequence; starts are unique.
    ooo: VecDeque<(Seq, Bytes)>,
    ooo_bytes: usize,
    /// Start of the segment most recently placed in the out-of-order
    /// buffer; its block is always reported.
    newest_ooo: Option<Seq>,
    fin: Option<Seq>,
    eof: bool,
    closed: bool,
    /// Ready-queue slots now (the largest window advertised now); starts
    /// at `cfg.queue_segments` and grows by autotuning up to `max_limit`
    /// (`spec/transport.md` §6.2).
    limit: usize,
    max_limit: usize,
}

impl RecvBuffer {
    /// A receive buffer expecting `rcv_nxt` next (the peer's ISN + 1).
    pub fn new(rcv_nxt: Seq, cfg: RecvConfig) -> Self {
        RecvBuffer {
            cfg,
            rcv_nxt,
            ready: VecDeque::new(),
            ready_bytes: 0,
            ooo: VecDeque::new(),
            ooo_bytes: 0,
            newest_ooo: None,
            fin: None,
            eof: false,
            closed: false,
            limit: cfg.queue_segments,
            max_limit: cfg.queue_segments,
        }
    }

    /// Lets autotuning grow the ready queue (and the out-of-order buffer
    /// with it) up to `max_segments` slots (at most `u16::MAX`, the
    /// largest window field); never below the configured size.
    pub fn set_max_segments(&mut self, max_segments: usize) {
        self.max_limit = max_segments
            .min(usize::from(u16::MAX))
            .max(self.cfg.queue_segments);
    }

    /// Ready-queue slots now (the largest window advertised now).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the application keeps up: the ready queue is at most a
    /// quarter full, so a full window per RTT is the sender's limit, not
    /// the reader's.
    pub fn reader_keeps_up(&self) -> bool {
        self.ready.len() <= self.limit / 4
    }

    /// The slots autotuning would like next (twice the limit, capped),
    /// or `None` at the cap.
    pub fn growth_wanted(&self) -> Option<usize> {
        let want = self.limit.saturating_mul(2).min(self.max_limit);
        (want > self.limit).then_some(want)
    }

    /// Grows the limit to `segments` (never shrinks, never above the cap).
    pub fn grow(&mut self, segments: usize) {
        self.limit = segments.min(self.max_limit).max(self.limit);
    }

    /// Out-of-order slots: the configured number, grown by as many slots
    /// as autotuning added to the ready queue.
    fn ooo_limit(&self) -> usize {
        self.cfg
            .ooo_segments
            .saturating_add(self.limit.saturating_sub(self.cfg.queue_segments))
    }

    /// Next in-order sequence number expected (not counting a FIN).
    pub fn rcv_nxt(&self) -> Seq {
        self.rcv_nxt
    }

    /// The cumulative ACK to send: `rcv_nxt`, plus one once the FIN has
    /// taken effect.
    pub fn ack_number(&self) -> Seq {
        if self.eof {
            self.rcv_nxt.add(1)
        } else {
            self.rcv_nxt
        }
    }

    fn ready_byte_cap(&self) -> usize {
        self.limit.saturating_mul(MAX_SEGMENT_BUDGET)
    }

    fn ooo_byte_cap(&self) -> usize {
        self.ooo_limit().saturating_mul(MAX_SEGMENT_BUDGET)
    }

    /// Furthest distance ahead of `rcv_nxt` accepted into the OOO buffer.
    fn horizon(&self) -> u32 {
        let segs = self.limit.saturating_add(self.ooo_limit());
        u32::try_from(segs.saturating_mul(MAX_SEGMENT_BUDGET)).unwrap_or(u32::MAX / 2)
    }

    /// The window to advertise: free ready-queue slots (in segments),
    /// reduced if the byte budget is nearly used up, clamped to `u16`.
    pub fn window(&self) -> u16 {
        let free_slots = self.limit.saturating_sub(self.ready.len());
        let free_bytes = self.ready_byte_cap().saturating_sub(self.ready_bytes);
        let w = free_slots.min(free_bytes / MAX_SEGMENT_BUDGET);
        u16::try_from(w).unwrap_or(u16::MAX)
    }

    /// Bytes ready for the application.
    pub fn readable(&self) -> usize {
        self.ready_bytes
    }

    /// Segments in the out-of-order buffer.
    pub fn ooo_len(&self) -> usize {
        self.ooo.len()
    }

    /// True once the FIN has taken effect and every byte has been read.
    pub fn is_eof(&self) -> bool {
        self.eof && self.ready.is_empty()
    }

    /// True once the FIN has taken effect (data may still be unread).
    pub fn fin_received(&self) -> bool {
        self.eof
    }

    /// True after [`RecvBuffer::close`].
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closes the receive side (local close): buffered data is discarded
    /// and nothing more is accepted.
    pub fn close(&mut self) {
        self.closed = true;
        self.ready.clear();
        self.ready_bytes = 0;
        self.ooo.clear();
        self.ooo_bytes = 0;
    }

    fn push_ready(&mut self, data: Bytes) -> bool {
        if self.ready.len() >= self.limit
            || self.ready_bytes.saturating_add(data.len()) > self.ready_byte_cap()
        {
            return false;
        }
        self.rcv_nxt = self.rcv_nxt.add_len(data.len());
        self.ready_bytes += data.len();
        self.ready.push_back(data);
        true
    }

    /// Trims `data` at `seq` to what lies in `[rcv_nxt, fin)`; `None` if
    /// nothing is left.
    fn trim(&self, seq: Seq, mut data: Bytes) -> Option<(Seq, Bytes)> {
        let mut seq = seq;
        if seq.before(self.rcv_nxt) {
            let skip = self.rcv_nxt.since(seq) as usize;
            if skip >= data.len() {
                return None;
            }
            data.advance(skip);
            seq = self.rcv_nxt;
        }
        if let Some(fin) = self.fin {
            if seq.after_eq(fin) {
                return None;
            }
            let room = fin.since(seq) as usize;
            data.truncate(room);
        }
        if data.is_empty() {
            None
        } else {
            Some((seq, data))
        }
    }

    /// Moves out-of-order data that became contiguous into the ready queue;
    /// returns the bytes moved.
    fn drain_ooo(&mut self) -> usize {
        let mut moved = 0;
        while let Some((seq, _)) = self.ooo.front() {
            if seq.after(self.rcv_nxt) {
                break;
            }
            let Some((seq, data)) = self.ooo.pop_front() else {
                break;
            };
            self.ooo_bytes -= data.len();
            let Some((_, data)) = self.trim(seq, data) else {
                continue;
            };
            let len = data.len();
            if !self.push_ready(data.clone()) {
                // No room: keep it for later.
                self.ooo_bytes += data.len();
                self.ooo.push_front((self.rcv_nxt, data));
                break;
            }
            moved += len;
        }
        moved
    }

    fn check_fin(&mut self) {
        if let Some(fin) = self.fin {
            if !self.eof && self.rcv_nxt == fin {
                self.eof = true;
                self.ooo.clear();
                self.ooo_bytes = 0;
            }
        }
    }

    /// Processes a received data segment starting at `seq`.
    pub fn on_data(&mut self, seq: Seq, data: Bytes) -> DataOutcome {
        if self.closed {
            return DataOutcome::Closed;
        }
        if data.is_empty() || self.eof {
            return DataOutcome::Duplicate;
        }
        let end = seq.add_len(data.len());
        if end.before_eq(self.rcv_nxt) {
            return DataOutcome::Duplicate;
        }
        if seq.after(self.rcv_nxt) && seq.since(self.rcv_nxt) > self.horizon() {
            return DataOutcome::Dropped;
        }
        let Some((seq, data)) = self.trim(seq, data) else {
            return DataOutcome::Dropped;
        };
        if seq == self.rcv_nxt {
            let len = data.len();
            if !self.push_ready(data) {
                return DataOutcome::Dropped;
            }
            let bytes = len + self.drain_ooo();
            self.check_fin();
            return DataOutcome::Delivered { bytes };
        }
        // Out of order.
        match self.ooo.binary_search_by(|(s, _)| {
            if s.before(seq) {
                core::cmp::Ordering::Less
            } else if s.after(seq) {
                core::cmp::Ordering::Greater
            } else {
                core::cmp::Ordering::Equal
            }
        }) {
            Ok(i) => {
                let Some((_, old)) = self.ooo.get(i) else {
                    return DataOutcome::Dropped;
                };
                if old.len() >= data.len() {
                    return DataOutcome::Duplicate;
                }
                let grow = data.len() - old.len();
                if self.ooo_bytes + grow > self.ooo_byte_cap() {
                    return DataOutcome::Dropped;
                }
                self.ooo_bytes += grow;
                if let Some(slot) = self.ooo.get_mut(i) {
                    slot.1 = data;
                }
                self.newest_ooo = Some(seq);
                DataOutcome::Buffered
            }
            Err(i) => {
                if self.ooo.len() >= self.ooo_limit()
                    || self.ooo_bytes + data.len() > self.ooo_byte_cap()
                {
                    return DataOutcome::Dropped;
                }
                self.ooo_bytes += data.len();
                self.ooo.insert(i, (seq, data));
                self.newest_ooo = Some(seq);
                DataOutcome::Buffered
            }
        }
    }

    /// Processes a FIN at sequence `seq`.
    pub fn on_fin(&mut self, seq: Seq) -> FinOutcome {
        if self.eof {
            return FinOutcome::Duplicate;
        }
        if let Some(held) = self.fin {
            // A peer that closed first sends its FIN at x and later its
            // FIN+ACK reply at x + 1 (`spec/transport.md` §8.2). If the
            // reply overtook the FIN, the FIN's own position, one lower, is
            // the end of the stream (only the FIN lies between the two).
            if !(seq.add(1) == held && seq.after_eq(self.rcv_nxt)) {
                return FinOutcome::Duplicate;
            }
        }
        // A FIN below what we already hold cannot retract data; it ends the
        // stream where we are.
        let fin = if seq.before(self.rcv_nxt) {
            self.rcv_nxt
        } else {
            seq
        };
        self.fin = Some(fin);
        // Drop buffered data at or beyond the FIN.
        self.ooo.retain_mut(|(s, d)| {
            if s.before(fin) {
                d.truncate(fin.since(*s) as usize);
                true
            } else {
                false
            }
        });
        self.ooo_bytes = self.ooo.iter().map(|(_, d)| d.len()).sum();
        self.check_fin();
        if self.eof {
            FinOutcome::Eof
        } else {
            FinOutcome::Pending
        }
    }

    /// SACK blocks describing the out-of-order buffer: contiguous and
    /// overlapping segments merged; the block holding the segment buffered
    /// last and the highest others, four in all, ascending. (The reference
    /// keeps the highest four, so a segment arriving below them is never
    /// reported and looks lost to the sender; `spec/transport.md` §6.4.)
    pub fn sack_blocks(&self) -> SackBlocks {
        fn keep_highest(out: &mut SackBlocks, b: SackBlock) {
            if out.len() == MAX_SACK_BLOCKS {
                out.remove(0);
            }
            out.push(b);
        }
        let holds_newest = |b: &SackBlock| {
            self.newest_ooo
                .is_some_and(|n| b.start.before_eq(n) && n.before(b.end))
        };
        let mut out = SackBlocks::new();
        let mut newest: Option<SackBlock> = None;
        let mut cur: Option<SackBlock> = None;
        for (s, d) in &self.ooo {
            let e = s.add_len(d.len());
            match cur.as_mut() {
                Some(c) if s.before_eq(c.end) => c.end = c.end.max(e),
                _ => {
                    if let Some(done) = cur.replace(SackBlock { start: *s, end: e }) {
                        if holds_newest(&done) {
                            newest = Some(done);
                        }
                        keep_highest(&mut out, done);
                    }
                }
            }
        }
        if let Some(done) = cur {
            keep_highest(&mut out, done);
        }
        if let Some(nb) = newest.filter(|nb| !out.contains(nb)) {
            // Below the highest four: it replaces the lowest of them.
            if out.len() == MAX_SACK_BLOCKS {
                out.remove(0);
            }
            out.insert(0, nb);
        }
        out
    }

    /// Copies readable bytes into `buf`; returns how many.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        self.read_recycling(buf, &mut |_| {})
    }

    /// [`RecvBuffer::read`], handing each segment buffer it empties to
    /// `recycle` (the node reuses them for later payloads).
    pub fn read_recycling(&mut self, buf: &mut [u8], recycle: &mut dyn FnMut(Bytes)) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(front) = self.ready.front_mut() else {
                break;
            };
            let take = front.len().min(buf.len() - n);
            buf[n..n + take].copy_from_slice(&front[..take]);
            front.advance(take);
            n += take;
            if front.is_empty() {
                if let Some(done) = self.ready.pop_front() {
                    recycle(done);
                }
            }
        }
        self.ready_bytes -= n;
        self.after_read();
        n
    }

    /// Reading freed slots: out-of-order data that waited for room (it is
    /// already contiguous) moves up, and a FIN behind it may take effect.
    fn after_read(&mut self) {
        if self
            .ooo
            .front()
            .is_some_and(|(s, _)| s.before_eq(self.rcv_nxt))
        {
            self.drain_ooo();
            self.check_fin();
        }
        // Release the queues' slot arrays once drained after a burst, so
        // an idle connection holds no memory sized for its peak window.
        if self.ready.is_empty() && self.ready.capacity() > IDLE_SLOTS {
            self.ready = VecDeque::new();
        }
        if self.ooo.is_empty() && self.ooo.capacity() > IDLE_SLOTS {
            self.ooo = VecDeque::new();
        }
    }

    /// Takes the next readable chunk without copying.
    pub fn read_chunk(&mut self) -> Option<Bytes> {
        let b = self.ready.pop_front()?;
        self.ready_bytes -= b.len();
        self.after_read();
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf() -> RecvBuffer {
        RecvBuffer::new(Seq(1), RecvConfig::default())
    }

    fn seg(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    fn read_all(r: &mut RecvBuffer) -> Vec<u8> {
        let mut out = vec![0u8; r.readable()];
        let n = r.read(&mut out);
        out.truncate(n);
        out
    }

    #[test]
    fn in_order_delivery_and_window() {
        let mut r = buf();
        assert_eq!(r.window(), 512);
        assert_eq!(
            r.on_data(Seq(1), Bytes::from_static(b"hello")),
            DataOutcome::Delivered { bytes: 5 }
        );
        assert_eq!(r.ack_number(), Seq(6));
        assert_eq!(r.window(), 511);
        assert_eq!(read_all(&mut r), b"hello");
        assert_eq!(r.window(), 512);
    }

    #[test]
    fn reference_loss_scenario_sack() {
        let mut r = buf();
        r.on_data(Seq(1), seg(1152, 1));
        assert_eq!(r.on_data(Seq(2305), seg(1152, 3)), DataOutcome::Buffered);
        assert_eq!(r.sack_blocks().as_slice(), &[SackBlock::new(2305, 3457)]);
        r.on_data(Seq(4609), seg(1152, 5));
        assert_eq!(
            r.sack_blocks().as_slice(),
            &[SackBlock::new(2305, 3457), SackBlock::new(4609, 5761)]
        );
        assert_eq!(r.ack_number(), Seq(1153));
        assert_eq!(r.window(), 511, "OOO buffer does not count");
        // Fill the first hole: contiguous OOO data follows.
        assert_eq!(
            r.on_data(Seq(1153), seg(1152, 2)),
            DataOutcome::Delivered { bytes: 2304 }
        );
        assert_eq!(r.ack_number(), Seq(3457));
        assert_eq!(r.sack_blocks().as_slice(), &[SackBlock::new(4609, 5761)]);
        r.on_data(Seq(3457), seg(1152, 4));
        assert_eq!(r.ack_number(), Seq(5761));
        assert!(r.sack_blocks().is_empty());
        let all = read_all(&mut r);
        let expect: Vec<u8> = (1..=5u8).flat_map(|i| vec![i; 1152]).collect();
        assert_eq!(all, expect);
    }

    #[test]
    fn duplicates_and_overlaps_are_trimmed() {
        let mut r = buf();
        r.on_data(Seq(1), Bytes::from_static(b"abcd"));
        assert_eq!(
            r.on_data(Seq(1), Bytes::from_static(b"abcd")),
            DataOutcome::Duplicate
        );
        assert_eq!(
            r.on_data(Seq(3), Bytes::from_static(b"cdef")),
            DataOutcome::Delivered { bytes: 2 }
        );
        // Overlapping OOO segments.
        r.on_data(Seq(10), Bytes::from_static(b"JK"));
        r.on_data(Seq(9), Bytes::from_static(b"IJKL"));
        r.on_data(Seq(10), Bytes::from_static(b"J"));
        assert_eq!(r.sack_blocks().as_slice(), &[SackBlock::new(9, 13)]);
        r.on_data(Seq(7), Bytes::from_static(b"gh"));
        assert_eq!(read_all(&mut r), b"abcdefghIJKL");
        assert_eq!(r.ooo_len(), 0);
    }

    #[test]
    fn ooo_buffer_is_bounded() {
        let mut r = RecvBuffer::new(
            Seq(1),
            RecvConfig {
                queue_segments: 512,
                ooo_segments: 4,
            },
        );
        for i in 0..4u32 {
            assert_eq!(
                r.on_data(Seq(100 + i * 10), seg(5, 0)),
                DataOutcome::Buffered
            );
        }
        assert_eq!(r.on_data(Seq(200), seg(5, 0)), DataOutcome::Dropped);
        // Far beyond the horizon.
        assert_eq!(r.on_data(Seq(1 << 30), seg(5, 0)), DataOutcome::Dropped);
        // Oversized segment beyond the byte budget.
        let mut r = buf();
        let big = Bytes::from(vec![0u8; OOO_SEGMENTS * MAX_SEGMENT_BUDGET + 1]);
        assert_eq!(r.on_data(Seq(100), big), DataOutcome::Dropped);
    }

    #[test]
    fn ready_queue_is_bounded_and_window_reaches_zero() {
        let mut r = RecvBuffer::new(
            Seq(0),
            RecvConfig {
                queue_segments: 3,
                ooo_segments: 8,
            },
        );
        for i in 0..3u32 {
            assert!(matches!(
                r.on_data(Seq(i * 10), seg(10, 0)),
                DataOutcome::Delivered { .. }
            ));
        }
        assert_eq!(r.window(), 0);
        assert_eq!(r.on_data(Seq(30), seg(10, 0)), DataOutcome::Dropped);
        // OOO beyond it still buffered, and drained once room appears.
        assert_eq!(r.on_data(Seq(40), seg(10, 0)), DataOutcome::Buffered);
        let mut tmp = [0u8; 10];
        assert_eq!(r.read(&mut tmp), 10);
        assert_eq!(r.window(), 1);
        assert!(matches!(
            r.on_data(Seq(30), seg(10, 0)),
            DataOutcome::Delivered { bytes: 10 }
        ));
        assert_eq!(r.ooo_len(), 1, "no slot for the OOO segment yet");
        assert_eq!(r.ack_number(), Seq(40));
        assert_eq!(r.read_chunk().map(|b| b.len()), Some(10));
        // Reading made room: the waiting segment moved up by itself.
        assert_eq!(r.ooo_len(), 0);
        assert_eq!(r.ack_number(), Seq(50));
        assert!(matches!(
            r.on_data(Seq(30), seg(10, 0)),
            DataOutcome::Duplicate
        ));
    }

    #[test]
    fn fin_waits_for_missing_data() {
        let mut r = buf();
        r.on_data(Seq(1), Bytes::from_static(b"ab"));
        r.on_data(Seq(5), Bytes::from_static(b"ef"));
        assert_eq!(r.on_fin(Seq(7)), FinOutcome::Pending);
        assert!(!r.fin_received());
        assert_eq!(r.ack_number(), Seq(3));
        assert_eq!(r.on_fin(Seq(7)), FinOutcome::Duplicate);
        // Data past the FIN is refused.
        assert_eq!(
            r.on_data(Seq(7), Bytes::from_static(b"zz")),
            DataOutcome::Dropped
        );
        r.on_data(Seq(3), Bytes::from_static(b"cde"));
        assert!(r.fin_received());
        assert_eq!(r.ack_number(), Seq(8));
        assert_eq!(read_all(&mut r), b"abcdef");
        assert!(r.is_eof());
    }

    #[test]
    fn fin_ack_reply_overtaking_the_fin_is_corrected_by_the_fin() {
        let mut r = buf();
        r.on_data(Seq(1), Bytes::from_static(b"abc"));
        // The peer's FIN at 4 was lost; its FIN+ACK reply (seq 5) arrives.
        assert_eq!(r.on_fin(Seq(5)), FinOutcome::Pending);
        assert_eq!(r.ack_number(), Seq(4));
        // Only one lower, and never below what we hold, moves the end.
        assert_eq!(r.on_fin(Seq(3)), FinOutcome::Duplicate);
        assert_eq!(r.on_fin(Seq(4)), FinOutcome::Eof);
        assert_eq!(r.ack_number(), Seq(5));
        assert_eq!(read_all(&mut r), b"abc");
        assert!(r.is_eof());
    }

    #[test]
    fn fin_in_order_is_immediate() {
        let mut r = buf();
        r.on_data(Seq(1), Bytes::from_static(b"hello"));
        assert_eq!(r.on_fin(Seq(6)), FinOutcome::Eof);
        assert_eq!(r.ack_number(), Seq(7));
        assert!(!r.is_eof(), "unread data first");
        assert_eq!(read_all(&mut r), b"hello");
        assert!(r.is_eof());
    }

    #[test]
    fn sack_blocks_merge_overlaps_and_keep_highest_four() {
        let mut r = buf();
        // A long segment covering later short ones merges into one block.
        r.on_data(Seq(10), seg(300, 0));
        r.on_data(Seq(20), seg(5, 0));
        r.on_data(Seq(200), seg(5, 0));
        assert_eq!(r.sack_blocks().as_slice(), &[SackBlock::new(10, 310)]);
        for i in 0..6u32 {
            r.on_data(Seq(1000 + i * 100), seg(10, 0));
        }
        let starts: Vec<u32> = r.sack_blocks().iter().map(|b| b.start.0).collect();
        assert_eq!(starts, vec![1200, 1300, 1400, 1500]);
        // A segment arriving below the highest four is still reported: its
        // block replaces the lowest of them.
        r.on_data(Seq(1110), seg(5, 0));
        let blocks: Vec<(u32, u32)> = r
            .sack_blocks()
            .iter()
            .map(|b| (b.start.0, b.end.0))
            .collect();
        assert_eq!(
            blocks,
            vec![(1100, 1115), (1300, 1310), (1400, 1410), (1500, 1510)]
        );
        // Then it is the highest four again once that block is not newest.
        r.on_data(Seq(1600), seg(10, 0));
        let starts: Vec<u32> = r.sack_blocks().iter().map(|b| b.start.0).collect();
        assert_eq!(starts, vec![1300, 1400, 1500, 1600]);
    }

    #[test]
    fn closed_side_accepts_nothing() {
        let mut r = buf();
        r.on_data(Seq(1), Bytes::from_static(b"x"));
        r.close();
        assert_eq!(r.readable(), 0);
        assert_eq!(
            r.on_data(Seq(2), Bytes::from_static(b"y")),
            DataOutcome::Closed
        );
    }

    #[test]
    fn wraps_around_sequence_space() {
        let start = Seq(u32::MAX - 2);
        let mut r = RecvBuffer::new(start, RecvConfig::default());
        r.on_data(start.add(4), Bytes::from_static(b"EF"));
        r.on_data(start, Bytes::from_static(b"ABCD"));
        assert_eq!(r.ack_number(), start.add(6));
        assert_eq!(read_all(&mut r), b"ABCDEF");
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any segmentation, order and duplication of a stream reassembles
        /// to exactly that stream.
        #[test]
        fn reassembles_any_arrival_order(
            len in 1usize..6000,
            cuts in prop::collection::vec(1usize..1500, 1..40),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
            start in any::<u32>(),
        ) {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            // Cut into (possibly overlapping) pieces.
            let mut pieces = vec![];
            let mut pos = 0;
            let mut k = 0;
            while pos < len {
                let n = cuts[k % cuts.len()].min(len - pos);
                pieces.push((pos, n));
                // Every third piece also arrives extended (overlap).
                if k % 3 == 0 {
                    pieces.push((pos.saturating_sub(7), (n + 20).min(len - pos.saturating_sub(7))));
                }
                pos += n;
                k += 1;
            }
            let mut r = RecvBuffer::new(Seq(start), RecvConfig::default());
            let mut out = vec![];
            let feed = |r: &mut RecvBuffer, out: &mut Vec<u8>, (p, n): (usize, usize)| {
                r.on_data(Seq(start).add_len(p), Bytes::copy_from_slice(&data[p..p + n]));
                while let Some(c) = r.read_chunk() {
                    out.extend_from_slice(&c);
                }
            };
            for i in &order {
                feed(&mut r, &mut out, pieces[i.index(pieces.len())]);
            }
            for &p in &pieces {
                feed(&mut r, &mut out, p);
            }
            prop_assert_eq!(out, data);
            prop_assert_eq!(r.ooo_len(), 0);
            prop_assert_eq!(r.ack_number(), Seq(start).add_len(len));
        }
    }

    /// Issue #14 autotuning: the limit doubles up to the cap and never
    /// shrinks; the out-of-order buffer grows with it; a slow reader is
    /// told apart.
    #[test]
    fn window_limit_grows_to_the_cap_only() {
        let cfg = RecvConfig {
            queue_segments: 8,
            ooo_segments: 4,
        };
        let mut r = RecvBuffer::new(Seq(0), cfg);
        assert_eq!(r.growth_wanted(), None, "no cap above the configured size");
        r.set_max_segments(20);
        assert_eq!(r.growth_wanted(), Some(16));
        r.grow(16);
        assert_eq!((r.limit(), r.window()), (16, 16));
        assert_eq!(r.growth_wanted(), Some(20));
        r.grow(1000);
        r.grow(3);
        assert_eq!(r.limit(), 20);
        assert_eq!(r.growth_wanted(), None);
        // Out of order: 4 + 12 slots now.
        for i in 0..16u32 {
            let d = Bytes::from(vec![1u8; 10]);
            assert_eq!(r.on_data(Seq(100 + i * 10), d), DataOutcome::Buffered);
        }
        assert_eq!(
            r.on_data(Seq(1000), Bytes::from(vec![1u8; 10])),
            DataOutcome::Dropped
        );
        let mut s = RecvBuffer::new(Seq(0), cfg);
        assert!(s.reader_keeps_up());
        for i in 0..3u32 {
            s.on_data(Seq(i * 10), Bytes::from(vec![1u8; 10]));
        }
        assert!(!s.reader_keeps_up());
    }
}
