//! The send side of a stream (`spec/transport.md` §5): a bounded buffer of
//! data not yet segmented, segmentation into `mss`-byte segments, Nagle's
//! algorithm with Minshall's refinement and a hold timeout, the queue of
//! sent but un-acknowledged segments (with the SACK scoreboard), cumulative
//! ACK processing and the choice of what to retransmit.
//!
//! The buffer never applies the congestion or flow-control window itself;
//! the connection checks the gate before calling [`SendBuffer::pop_segment`].
//! Invariants: unsent data never exceeds the configured capacity; the FIN is
//! sent only after every byte written before it; a segment leaves the queue
//! only when cumulatively acknowledged.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use core::time::Duration;

use super::consts::{NAGLE_HOLD, SEND_BUFFER_CAP, SPURIOUS_ACK_DIVISOR};
use super::sack::{SackBlock, Scoreboard};
use super::seq::Seq;
use crate::time::Instant;

/// Parameters of a [`SendBuffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendConfig {
    /// Largest payload per segment (1152 `current`, 4096 `legacy`).
    pub mss: usize,
    /// Capacity for data written but not yet segmented.
    pub capacity: usize,
    /// Send short segments at once instead of applying Nagle.
    pub nodelay: bool,
}

impl SendConfig {
    /// Reference capacities for `mss`-byte segments, Nagle on.
    pub const fn new(mss: usize) -> Self {
        SendConfig {
            mss,
            capacity: SEND_BUFFER_CAP,
            nodelay: false,
        }
    }
}

/// A segment handed out for (re)transmission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Sequence number of the first byte (or of the FIN).
    pub seq: Seq,
    /// Payload (empty for the FIN).
    pub data: Bytes,
    /// True for the FIN.
    pub fin: bool,
    /// True if this is a retransmission.
    pub retransmission: bool,
}

#[derive(Clone, Debug)]
struct Sent {
    seq: Seq,
    data: Bytes,
    fin: bool,
    first_sent: Instant,
    last_sent: Instant,
    transmissions: u32,
    sacked: bool,
    /// The latest retransmission was of the oldest un-acknowledged
    /// segment, which the cumulative ACK proved missing at the time.
    head_rtx: bool,
}

impl Sent {
    /// Sequence space taken (the FIN takes one).
    fn len(&self) -> usize {
        if self.fin { 1 } else { self.data.len() }
    }
    fn end(&self) -> Seq {
        self.seq.add_len(self.len())
    }

    /// Records a retransmission at `now` and hands the segment out.
    fn retransmit(&mut self, now: Instant, snd_una: Seq) -> Outgoing {
        self.last_sent = now;
        self.transmissions = self.transmissions.saturating_add(1);
        self.head_rtx = self.seq == snd_una;
        Outgoing {
            seq: self.seq,
            data: self.data.clone(),
            fin: self.fin,
            retransmission: true,
        }
    }
}

/// Time-based loss detection state (RACK-style, `spec/transport.md`
/// §7.3.2): which is the most recently *sent* segment known to have
/// arrived, and what spurious retransmissions revealed about reordering.
#[derive(Clone, Copy, Debug, Default)]
struct Rack {
    /// Last send time, end and RTT of the most recently sent segment known
    /// to have arrived (SACKed or cumulatively acknowledged).
    newest: Option<(Instant, Seq, Duration)>,
    /// Smallest RTT sample of the connection.
    min_rtt: Option<Duration>,
    /// Largest reordering delay revealed by a spurious retransmission since
    /// the connection last asked.
    spurious_extent: Option<Duration>,
    /// Spurious retransmissions detected since the connection last asked.
    spurious: u32,
}

impl Rack {
    /// A segment sent at `first_sent` (last at `last_sent`, `transmissions`
    /// times in total) and ending at `end` is now known to have arrived.
    fn delivered(
        &mut self,
        now: Instant,
        first_sent: Instant,
        last_sent: Instant,
        end: Seq,
        transmissions: u32,
        head_rtx: bool,
    ) {
        let rtt = now.saturating_duration_since(last_sent);
        if transmissions > 1 {
            let Some(min) = self.min_rtt else {
                return;
            };
            // Only a retransmission of the oldest segment counts: a hole
            // higher up may just be data whose SACK block the receiver did
            // not repeat (it reports only the highest four).
            if head_rtx && rtt < min / SPURIOUS_ACK_DIVISOR {
                // Far too soon to answer the retransmission: the original
                // arrived, late. Its lateness is the reordering delay.
                let extent = now
                    .saturating_duration_since(first_sent)
                    .saturating_sub(min);
                self.spurious_extent = Some(self.spurious_extent.map_or(extent, |e| e.max(extent)));
                self.spurious = self.spurious.saturating_add(1);
            }
            if rtt < min {
                // Ambiguous: may answer the original; not a timing source.
                return;
            }
        }
        let newer = self
            .newest
            .is_none_or(|(t, e, _)| last_sent > t || (last_sent == t && end.after(e)));
        if newer {
            self.newest = Some((last_sent, end, rtt));
        }
    }
}

/// Result of processing a cumulative ACK number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// Older than the current cumulative ACK: ignored.
    Old,
    /// Equal to the current cumulative ACK.
    Duplicate,
    /// Acknowledges something never sent: ignored.
    Invalid,
    /// New data acknowledged.
    New {
        /// Acknowledged payload bytes that were not SACKed before.
        bytes_acked: usize,
        /// RTT sample: from the newest acknowledged segment sent exactly once
        /// and not SACKed earlier, if it was sent after every retransmission
        /// this ACK covers.
        rtt: Option<Duration>,
        /// The FIN is now acknowledged.
        fin_acked: bool,
    },
}

/// The send half of a connection.
#[derive(Clone, Debug)]
pub struct SendBuffer {
    cfg: SendConfig,
    unsent: Unsent,
    snd_una: Seq,
    snd_nxt: Seq,
    queue: VecDeque<Sent>,
    /// Payload bytes of the queued segments (kept with the queue, so the
    /// window gate does not walk it for every segment). The counters are
    /// checked against the queue in debug builds; release builds saturate
    /// rather than wrap.
    queued_bytes: usize,
    /// Payload bytes of the queued segments that are SACKed.
    sacked_bytes: usize,
    /// Queued data segments shorter than `mss` and not SACKed (Minshall).
    short_unsacked: usize,
    scoreboard: Scoreboard,
    rack: Rack,
    /// The tail may go out without waiting (the write that produced it was
    /// at least one segment long).
    push_tail: bool,
    /// When the current short tail started waiting.
    tail_since: Option<Instant>,
    fin_queued: bool,
    fin_sent: bool,
    fin_acked: bool,
}

impl SendBuffer {
    /// A send buffer whose next sequence number is `snd_nxt` (ISN + 1).
    pub fn new(snd_nxt: Seq, cfg: SendConfig) -> Self {
        SendBuffer {
            cfg: SendConfig {
                mss: cfg.mss.max(1),
                ..cfg
            },
            unsent: Unsent::default(),
            snd_una: snd_nxt,
            snd_nxt,
            queue: VecDeque::new(),
            queued_bytes: 0,
            sacked_bytes: 0,
            short_unsacked: 0,
            scoreboard: Scoreboard::new(),
            rack: Rack::default(),
            push_tail: false,
            tail_since: None,
            fin_queued: false,
            fin_sent: false,
            fin_acked: false,
        }
    }

    /// Segment size.
    pub fn mss(&self) -> usize {
        self.cfg.mss
    }

    /// Switches Nagle off (`true`) or on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.cfg.nodelay = nodelay;
    }

    /// Oldest un-acknowledged sequence number.
    pub fn snd_una(&self) -> Seq {
        self.snd_una
    }

    /// Next sequence number to send.
    pub fn snd_nxt(&self) -> Seq {
        self.snd_nxt
    }

    /// Room for more written data.
    pub fn free(&self) -> usize {
        if self.fin_queued {
            return 0;
        }
        self.cfg.capacity.saturating_sub(self.unsent.len())
    }

    /// Bytes written but not yet segmented.
    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    /// Accepts as much of `data` as fits and returns how much.
    pub fn write(&mut self, now: Instant, data: &[u8]) -> usize {
        let n = data.len().min(self.free());
        if n == 0 {
            return 0;
        }
        self.unsent.push(&data[..n]);
        if n >= self.cfg.mss {
            self.push_tail = true;
        }
        if self.tail_since.is_none() {
            self.tail_since = Some(now);
        }
        n
    }

    /// Queues the FIN after all written data. Further writes are refused.
    pub fn close(&mut self) {
        self.fin_queued = true;
    }

    /// True if the next thing to send is the FIN (all data is segmented).
    pub fn next_is_fin(&self) -> bool {
        self.unsent.is_empty() && self.fin_queued && !self.fin_sent
    }

    /// Abandons everything not yet acknowledged (the connection is ending
    /// without delivering it).
    pub fn abandon(&mut self) {
        self.unsent = Unsent::default();
        self.queue = VecDeque::new();
        self.recount();
        self.scoreboard.clear();
        self.snd_una = self.snd_nxt;
        self.fin_queued = true;
        self.fin_sent = true;
        self.fin_acked = true;
    }

    /// True once [`SendBuffer::close`] was called.
    pub fn fin_queued(&self) -> bool {
        self.fin_queued
    }

    /// True once the FIN has been sent.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// True once the FIN has been acknowledged.
    pub fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// True if nothing is queued or in flight (all written data and any
    /// FIN acknowledged).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.unsent.is_empty() && (!self.fin_queued || self.fin_acked)
    }

    /// Sent, un-acknowledged segments (SACKed ones and the FIN included).
    pub fn unacked_segments(&self) -> usize {
        self.queue.len()
    }

    /// True if anything sent is still un-acknowledged.
    pub fn has_unacked(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Payload bytes in flight; SACKed segments count only if
    /// `include_sacked`.
    pub fn flight_bytes(&self, include_sacked: bool) -> usize {
        if include_sacked {
            self.queued_bytes
        } else {
            self.queued_bytes.saturating_sub(self.sacked_bytes)
        }
    }

    /// True if a short (less than one segment) data segment that is not
    /// SACKed is outstanding (Minshall's rule).
    pub fn short_outstanding(&self) -> bool {
        self.short_unsacked > 0
    }

    /// Whether a queued segment counts as short and un-SACKed.
    fn is_short(&self, s: &Sent) -> bool {
        !s.fin && !s.sacked && s.data.len() < self.cfg.mss
    }

    /// The queue's counters computed from the queue: payload bytes,
    /// SACKed payload bytes, short un-SACKed segments.
    fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for s in &self.queue {
            c.0 += s.data.len();
            if s.sacked {
                c.1 += s.data.len();
            }
            if self.is_short(s) {
                c.2 += 1;
            }
        }
        c
    }

    /// Recomputes the queue's counters from the queue.
    fn recount(&mut self) {
        (self.queued_bytes, self.sacked_bytes, self.short_unsacked) = self.counts();
    }

    /// Debug builds check the running counters against the queue (short
    /// queues only, to keep debug-build tests linear).
    fn debug_check_counts(&self) {
        #[cfg(debug_assertions)]
        if self.queue.len() <= 256 {
            debug_assert_eq!(
                self.counts(),
                (self.queued_bytes, self.sacked_bytes, self.short_unsacked),
                "send queue counters"
            );
        }
    }

    /// True if the FIN, or a full segment, or a tail Nagle allows, could be
    /// sent now (window permitting).
    pub fn can_send(&self, now: Instant) -> bool {
        self.next_len(now).is_some()
    }

    /// Length of the next segment, `Some(0)` for the FIN, `None` if
    /// nothing may be sent.
    fn next_len(&self, now: Instant) -> Option<usize> {
        let n = self.unsent.len();
        if n >= self.cfg.mss {
            return Some(self.cfg.mss);
        }
        if n > 0 {
            let held_long = self
                .tail_since
                .is_some_and(|t| now.saturating_duration_since(t) >= NAGLE_HOLD);
            if self.cfg.nodelay
                || self.push_tail
                || self.fin_queued
                || held_long
                || !self.short_outstanding()
            {
                return Some(n);
            }
            return None;
        }
        if self.fin_queued && !self.fin_sent {
            return Some(0);
        }
        None
    }

    /// When a held Nagle tail must be released at the latest (`None` if no
    /// tail is being held back by Nagle).
    pub fn nagle_deadline(&self) -> Option<Instant> {
        let n = self.unsent.len();
        if n == 0
            || n >= self.cfg.mss
            || self.cfg.nodelay
            || self.push_tail
            || self.fin_queued
            || !self.short_outstanding()
        {
            return None;
        }
        self.tail_since.map(|t| t + NAGLE_HOLD)
    }

    /// Cuts and records the next segment, if Nagle allows one. The caller
    /// has checked the window.
    pub fn pop_segment(&mut self, now: Instant) -> Option<Outgoing> {
        let len = self.next_len(now)?;
        let seq = self.snd_nxt;
        let (data, fin) = if len == 0 {
            self.fin_sent = true;
            (Bytes::new(), true)
        } else {
            // Split off its chunk without copying (see [`Unsent`]).
            let data = self.unsent.pop(len);
            if self.unsent.is_empty() {
                self.push_tail = false;
                self.tail_since = None;
            } else if self.unsent.len() < self.cfg.mss {
                self.tail_since = Some(now);
            }
            (data, false)
        };
        let sent = Sent {
            seq,
            data: data.clone(),
            fin,
            first_sent: now,
            last_sent: now,
            transmissions: 1,
            sacked: false,
            head_rtx: false,
        };
        self.snd_nxt = sent.end();
        self.queued_bytes += sent.data.len();
        if self.is_short(&sent) {
            self.short_unsacked += 1;
        }
        self.queue.push_back(sent);
        self.debug_check_counts();
        Some(Outgoing {
            seq,
            data,
            fin,
            retransmission: false,
        })
    }

    /// Processes the cumulative ACK number `ack`.
    pub fn on_ack(&mut self, now: Instant, ack: Seq) -> AckKind {
        if ack.before(self.snd_una) {
            return AckKind::Old;
        }
        if ack == self.snd_una {
            return AckKind::Duplicate;
        }
        if ack.after(self.snd_nxt) {
            return AckKind::Invalid;
        }
        let mut bytes_acked = 0;
        let mut rtt: Option<Duration> = None;
        let mut fin_acked = false;
        // Latest retransmission among the covered segments, and the first
        // send time of the newest covered segment sent once.
        let mut last_rtx: Option<Instant> = None;
        let mut sample_from: Option<Instant> = None;
        while let Some(front) = self.queue.front_mut() {
            let end = front.end();
            if end.before_eq(ack) {
                if front.transmissions > 1 {
                    last_rtx = Some(last_rtx.map_or(front.last_sent, |t| t.max(front.last_sent)));
                }
                self.queued_bytes = self.queued_bytes.saturating_sub(front.data.len());
                if front.sacked {
                    self.sacked_bytes = self.sacked_bytes.saturating_sub(front.data.len());
                } else if !front.fin && front.data.len() < self.cfg.mss {
                    self.short_unsacked = self.short_unsacked.saturating_sub(1);
                }
                if front.fin {
                    fin_acked = true;
                } else if !front.sacked {
                    bytes_acked += front.data.len();
                    if front.transmissions == 1 {
                        sample_from = Some(front.first_sent);
                    }
                    self.rack.delivered(
                        now,
                        front.first_sent,
                        front.last_sent,
                        end,
                        front.transmissions,
                        front.head_rtx,
                    );
                }
                self.queue.pop_front();
            } else {
                if ack.after(front.seq) && !front.fin {
                    let n = ack.since(front.seq) as usize;
                    let was_short = front.data.len() < self.cfg.mss;
                    self.queued_bytes = self.queued_bytes.saturating_sub(n);
                    if front.sacked {
                        self.sacked_bytes = self.sacked_bytes.saturating_sub(n);
                    } else {
                        bytes_acked += n;
                    }
                    front.data.advance(n);
                    front.seq = ack;
                    if !front.sacked && !was_short && front.data.len() < self.cfg.mss {
                        self.short_unsacked += 1;
                    }
                }
                break;
            }
        }
        // Karn: a sample is only valid if the segment it times was sent after
        // every repair this ACK depended on; otherwise it includes the wait.
        if let Some(sent) = sample_from {
            if last_rtx.is_none_or(|r| sent >= r) {
                rtt = Some(now.saturating_duration_since(sent));
            }
        }
        self.snd_una = ack;
        self.scoreboard.advance(ack);
        if fin_acked {
            self.fin_acked = true;
        }
        if self.queue.is_empty() && self.unsent.is_empty() {
            self.release();
        }
        self.debug_check_counts();
        AckKind::New {
            bytes_acked,
            rtt,
            fin_acked,
        }
    }

    /// Records SACK blocks received at `now`; returns how many segments
    /// became SACKed.
    pub fn on_sack(&mut self, now: Instant, blocks: &[SackBlock]) -> usize {
        let mut changed = false;
        for b in blocks {
            changed |= self.scoreboard.add(*b, self.snd_una, self.snd_nxt);
        }
        if !changed {
            return 0;
        }
        let mut n = 0;
        // Only segments touching a reported block can have become covered.
        for s in self.queue.iter_mut().filter(|s| !s.sacked && !s.fin) {
            let (start, end) = (s.seq, s.end());
            let touched = blocks
                .iter()
                .any(|b| b.start.before(end) && start.before(b.end));
            if touched && self.scoreboard.covers(start, end) {
                s.sacked = true;
                n += 1;
                self.sacked_bytes += s.data.len();
                if s.data.len() < self.cfg.mss {
                    self.short_unsacked = self.short_unsacked.saturating_sub(1);
                }
                self.rack.delivered(
                    now,
                    s.first_sent,
                    s.last_sent,
                    end,
                    s.transmissions,
                    s.head_rtx,
                );
            }
        }
        self.debug_check_counts();
        n
    }

    /// The SACK scoreboard.
    pub fn scoreboard(&self) -> &Scoreboard {
        &self.scoreboard
    }

    /// Forgets SACK information (after a retransmission timeout, in case
    /// the receiver discarded what it reported).
    pub fn clear_sacks(&mut self) {
        self.scoreboard.clear();
        for s in &mut self.queue {
            s.sacked = false;
        }
        self.recount();
    }

    /// Frees the buffers of an idle send side (nothing unsent or in
    /// flight), so a connection that carried a burst does not keep its
    /// peak allocations.
    fn release(&mut self) {
        self.unsent = Unsent::default();
        if self.queue.capacity() > IDLE_QUEUE_SLOTS {
            self.queue = VecDeque::new();
        }
    }

    /// Transmissions so far of the oldest un-acknowledged segment.
    pub fn head_transmissions(&self) -> u32 {
        self.queue.front().map_or(0, |s| s.transmissions)
    }

    /// Payload bytes SACKed above the first un-SACKed segment.
    pub fn sacked_above_first_hole(&self) -> usize {
        self.queue
            .iter()
            .skip_while(|s| s.sacked)
            .filter(|s| s.sacked)
            .map(|s| s.data.len())
            .sum()
    }

    /// Resends the first hole at or after `from` that lies below the highest
    /// SACKed sequence number (a segment SACK shows to be missing).
    pub fn retransmit_hole_from(&mut self, now: Instant, from: Seq) -> Option<Outgoing> {
        let highest = self.scoreboard.highest()?;
        let una = self.snd_una;
        let s = self
            .queue
            .iter_mut()
            .find(|s| !s.sacked && !s.fin && s.seq.after_eq(from) && s.end().before_eq(highest))?;
        Some(s.retransmit(now, una))
    }

    /// Tells loss detection the connection's smallest RTT sample.
    pub fn set_min_rtt(&mut self, min_rtt: Option<Duration>) {
        self.rack.min_rtt = min_rtt;
    }

    /// Spurious retransmissions detected since the last call (an ACK for a
    /// retransmitted segment arrived less than half the smallest RTT after
    /// the retransmission, so it answered the late original), with the
    /// largest reordering delay they revealed.
    pub fn take_spurious(&mut self) -> Option<(u32, Duration)> {
        let n = core::mem::take(&mut self.rack.spurious);
        let extent = self.rack.spurious_extent.take();
        extent.filter(|_| n > 0).map(|e| (n, e))
    }

    /// Time-based loss detection (`spec/transport.md` §7.3.2): a segment
    /// that is neither SACKed nor the FIN is lost once a segment sent after
    /// it has arrived and `reo_wnd` has passed beyond the RTT of that later
    /// segment since it was (last) sent. Resends up to `max` lost segments
    /// and returns them with the earliest moment a not-yet-lost candidate
    /// becomes lost (when to look again).
    pub fn retransmit_lost(
        &mut self,
        now: Instant,
        reo_wnd: Duration,
        max: usize,
    ) -> (Vec<Outgoing>, Option<Instant>) {
        let mut out = Vec::new();
        let mut next: Option<Instant> = None;
        let Some((newest_sent, newest_end, rtt)) = self.rack.newest else {
            return (out, None);
        };
        let una = self.snd_una;
        for s in self.queue.iter_mut() {
            // Segments were first sent in sequence order: from here on
            // every one was (last) sent after the newest delivered one.
            if s.first_sent > newest_sent {
                break;
            }
            // Nothing (re)sent at this very instant is known lost yet: a
            // peer answering at once (no time passes) must not make the
            // same segment go out again and again.
            if s.sacked || s.fin || s.last_sent >= now {
                continue;
            }
            let end = s.end();
            let sent_before = s.last_sent < newest_sent
                || (s.last_sent == newest_sent && end.before_eq(newest_end));
            if !sent_before {
                continue;
            }
            let deadline = s.last_sent + rtt + reo_wnd;
            if now < deadline {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            if out.len() >= max {
                continue;
            }
            out.push(s.retransmit(now, una));
        }
        (out, next)
    }

    /// Resends the first segment not covered by SACK if SACK proves it
    /// missing (something above it arrived) and its last transmission is
    /// at least `min_age` old (a younger one may still be on its way).
    pub fn retransmit_proven_head(&mut self, now: Instant, min_age: Duration) -> Option<Outgoing> {
        let highest = self.scoreboard.highest()?;
        let una = self.snd_una;
        let s = self.queue.iter_mut().find(|s| !s.sacked)?;
        if s.fin
            || !s.end().before_eq(highest)
            || now.saturating_duration_since(s.last_sent) < min_age
        {
            return None;
        }
        Some(s.retransmit(now, una))
    }

    /// Resends the last segment not covered by SACK (a tail loss probe,
    /// `spec/transport.md` §7.3.3), if any; its answer is not used to
    /// detect spurious retransmissions.
    pub fn retransmit_last(&mut self, now: Instant) -> Option<Outgoing> {
        let una = self.snd_una;
        let s = self.queue.iter_mut().rev().find(|s| !s.sacked)?;
        let o = s.retransmit(now, una);
        // A probe is no verdict that the segment was lost: an answer that
        // follows it closely is no sign of reordering (§7.3.2).
        s.head_rtx = false;
        Some(o)
    }

    /// Resends the first segment not covered by SACK (a hole), if any.
    pub fn retransmit_first_hole(&mut self, now: Instant) -> Option<Outgoing> {
        let una = self.snd_una;
        let s = self.queue.iter_mut().find(|s| !s.sacked)?;
        Some(s.retransmit(now, una))
    }

    /// Payload length of the first segment a timeout would resend (the
    /// first one not SACKed), if any.
    pub fn first_hole_len(&self) -> Option<usize> {
        self.queue.iter().find(|s| !s.sacked).map(|s| s.data.len())
    }

    /// Changes the segment size (path-MTU black-hole recovery,
    /// `spec/transport.md` §5.4): new data is cut at `mss`, and sent,
    /// un-acknowledged segments longer than `mss` are split into pieces
    /// that keep their send times, transmission counts and SACK state, so
    /// that retransmissions fit the path too. Sequence numbers do not
    /// change; the receiver reassembles any segmentation.
    pub fn set_mss(&mut self, mss: usize) {
        let mss = mss.max(1);
        self.cfg.mss = mss;
        if self.queue.iter().all(|s| s.fin || s.data.len() <= mss) {
            // Which segments count as short may have changed.
            self.recount();
            return;
        }
        let old = core::mem::take(&mut self.queue);
        for s in old {
            if s.fin || s.data.len() <= mss {
                self.queue.push_back(s);
                continue;
            }
            let mut off = 0;
            while off < s.data.len() {
                let end = (off + mss).min(s.data.len());
                self.queue.push_back(Sent {
                    seq: s.seq.add_len(off),
                    data: s.data.slice(off..end),
                    head_rtx: s.head_rtx && off == 0,
                    ..s.clone()
                });
                off = end;
            }
        }
        self.recount();
        self.debug_check_counts();
    }
}

/// Queue slots an idle send side keeps (more are freed when it idles).
const IDLE_QUEUE_SLOTS: usize = 64;

/// Capacity of one chunk of [`Unsent`].
const CHUNK: usize = 64 * 1024;

/// Written bytes not yet segmented, in chunks of [`CHUNK`] bytes. A
/// segment is split off the front chunk without copying and shares that
/// chunk until it is acknowledged; one that would span two chunks is
/// copied. Writes fill the last chunk's spare room, then start a new chunk,
/// so every byte is stored once and a chunk is freed with the last
/// segment cut from it: what queued segments pin is bounded by the bytes
/// in flight plus two chunks (splitting one growing buffer instead pinned
/// a whole reallocated buffer per few segments).
#[derive(Clone, Debug, Default)]
struct Unsent {
    chunks: VecDeque<BytesMut>,
    len: usize,
    /// Chunks allocated so far (tests bound the memory with it).
    #[cfg(test)]
    allocated: usize,
}

impl Unsent {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`.
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.chunks.back().map_or(0, |c| c.capacity() - c.len());
            if room == 0 {
                if self.chunks.back().is_some_and(BytesMut::is_empty) {
                    self.chunks.pop_back();
                }
                self.chunks.push_back(BytesMut::with_capacity(CHUNK));
                #[cfg(test)]
                {
                    self.allocated += 1;
                }
                continue;
            }
            let n = room.min(data.len());
            if let Some(c) = self.chunks.back_mut() {
                c.extend_from_slice(&data[..n]);
            }
            self.len += n;
            data = &data[n..];
        }
    }

    /// Takes the first `len` bytes (at most what is held).
    fn pop(&mut self, len: usize) -> Bytes {
        let len = len.min(self.len);
        self.len -= len;
        let more = self.chunks.len() > 1;
        if let Some(front) = self.chunks.front_mut() {
            if front.len() >= len {
                let seg = front.split_to(len).freeze();
                if front.is_empty() && more {
                    self.chunks.pop_front();
                }
                return seg;
            }
        }
        let mut seg = BytesMut::with_capacity(len);
        while seg.len() < len {
            let more = self.chunks.len() > 1;
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let n = (len - seg.len()).min(front.len());
            seg.extend_from_slice(&front[..n]);
            front.advance(n);
            if front.is_empty() && more {
                self.chunks.pop_front();
            }
        }
        seg.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Instant {
        Instant::from_millis(v)
    }

    fn buf(mss: usize) -> SendBuffer {
        SendBuffer::new(Seq(1), SendConfig::new(mss))
    }

    fn drain(b: &mut SendBuffer, now: Instant) -> Vec<Outgoing> {
        core::iter::from_fn(|| b.pop_segment(now)).collect()
    }

    #[test]
    fn queued_segments_pin_at_most_the_bytes_in_flight_plus_two_chunks() {
        // Small writes, everything segmented and nothing acknowledged:
        // each byte is stored once, in chunks (splitting one growing
        // buffer reallocated it per few writes, and the queued segments
        // pinned every copy: 73 MiB for 8 MiB in flight).
        let mut b = SendBuffer::new(
            Seq(1),
            SendConfig {
                capacity: 1 << 20,
                ..SendConfig::new(1000)
            },
        );
        let total = 4 * CHUNK + 123;
        let mut sent = 0;
        let mut written = 0;
        while written < total {
            written += b.write(ms(0), &[7u8; 777][..777.min(total - written)]);
            sent += drain(&mut b, ms(0))
                .iter()
                .map(|o| o.data.len())
                .sum::<usize>();
        }
        b.close();
        sent += drain(&mut b, ms(0))
            .iter()
            .map(|o| o.data.len())
            .sum::<usize>();
        assert_eq!(sent, total);
        assert!(
            b.unsent.allocated <= total / CHUNK + 1,
            "{} chunks",
            b.unsent.allocated
        );
        // Segments are split off, not copied, except where one spans two
        // chunks.
        let copies = b.queue.iter().filter(|s| s.data.is_unique()).count();
        assert!(copies <= b.unsent.allocated, "{copies} copied segments");
    }

    #[test]
    fn an_idle_send_side_frees_its_buffers() {
        let mut b = buf(1000);
        b.write(ms(0), &[1u8; 100_000]);
        let segs = drain(&mut b, ms(0));
        assert_eq!(segs.len(), 100);
        assert!(b.queue.capacity() >= 100);
        drop(segs);
        let end = b.snd_nxt();
        b.on_ack(ms(1), end);
        assert!(b.is_idle());
        assert!(b.unsent.chunks.is_empty() && b.unsent.chunks.capacity() == 0);
        assert!(b.queue.capacity() <= IDLE_QUEUE_SLOTS);
        // And it works again afterwards.
        assert_eq!(b.write(ms(2), b"again"), 5);
        let o = b.pop_segment(ms(2)).expect("segment");
        assert_eq!(&o.data[..], b"again");
    }

    #[test]
    fn write_is_bounded() {
        let mut b = SendBuffer::new(
            Seq(1),
            SendConfig {
                capacity: 10,
                ..SendConfig::new(4)
            },
        );
        assert_eq!(b.write(ms(0), b"0123456789abc"), 10);
        assert_eq!(b.write(ms(0), b"x"), 0);
        assert_eq!(b.free(), 0);
        drain(&mut b, ms(0));
        assert_eq!(b.free(), 10);
        b.close();
        assert_eq!(b.write(ms(0), b"x"), 0, "no writes after close");
    }

    #[test]
    fn segments_at_mss_and_tracks_sequence() {
        let mut b = buf(1152);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        assert_eq!(b.write(ms(0), &data), 3000);
        let segs = drain(&mut b, ms(0));
        let lens: Vec<usize> = segs.iter().map(|s| s.data.len()).collect();
        assert_eq!(
            lens,
            vec![1152, 1152, 696],
            "whole write >= mss pushes tail"
        );
        assert_eq!(segs[1].seq, Seq(1153));
        assert_eq!(b.snd_nxt(), Seq(3001));
        assert_eq!(b.flight_bytes(true), 3000);
        assert_eq!(b.unacked_segments(), 3);
        let joined: Vec<u8> = segs.iter().flat_map(|s| s.data.to_vec()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn nagle_holds_short_tail_until_ack_or_timeout() {
        let mut b = buf(1152);
        b.write(ms(0), b"hello");
        let first = drain(&mut b, ms(0));
        assert_eq!(first.len(), 1, "nothing short outstanding: sent at once");
        b.write(ms(1), b"x");
        assert!(b.pop_segment(ms(1)).is_none(), "held behind un-ACKed short");
        assert_eq!(b.nagle_deadline(), Some(ms(41)));
        b.write(ms(2), b"y");
        assert!(b.pop_segment(ms(40)).is_none());
        // Released by the hold timeout ...
        let s = b.pop_segment(ms(41)).unwrap();
        assert_eq!(&s.data[..], b"xy");
        // ... or by the ACK of the short segment.
        b.write(ms(50), b"z");
        assert!(b.pop_segment(ms(50)).is_none());
        assert!(matches!(b.on_ack(ms(60), Seq(8)), AckKind::New { .. }));
        assert_eq!(&b.pop_segment(ms(60)).unwrap().data[..], b"z");
    }

    #[test]
    fn nodelay_sends_short_segments() {
        let mut b = buf(1152);
        b.set_nodelay(true);
        b.write(ms(0), b"a");
        b.write(ms(0), b"b");
        assert_eq!(drain(&mut b, ms(0)).len(), 1);
        b.write(ms(0), b"c");
        assert_eq!(drain(&mut b, ms(0)).len(), 1);
        assert_eq!(b.unacked_segments(), 2);
    }

    #[test]
    fn cumulative_ack_and_rtt_sample() {
        let mut b = buf(100);
        b.write(ms(0), &[0u8; 300]);
        drain(&mut b, ms(0));
        assert_eq!(b.on_ack(ms(5), Seq(0)), AckKind::Old);
        assert_eq!(b.on_ack(ms(5), Seq(1)), AckKind::Duplicate);
        assert_eq!(b.on_ack(ms(5), Seq(999)), AckKind::Invalid);
        assert_eq!(
            b.on_ack(ms(30), Seq(201)),
            AckKind::New {
                bytes_acked: 200,
                rtt: Some(Duration::from_millis(30)),
                fin_acked: false
            }
        );
        // Partial ACK trims the segment.
        assert_eq!(
            b.on_ack(ms(40), Seq(251)),
            AckKind::New {
                bytes_acked: 50,
                rtt: None,
                fin_acked: false
            }
        );
        assert_eq!(b.flight_bytes(true), 50);
        // Retransmitted segment gives no RTT sample (Karn).
        let r = b.retransmit_first_hole(ms(0)).unwrap();
        assert_eq!((r.seq, r.data.len()), (Seq(251), 50));
        assert_eq!(b.head_transmissions(), 2);
        assert_eq!(
            b.on_ack(ms(50), Seq(301)),
            AckKind::New {
                bytes_acked: 50,
                rtt: None,
                fin_acked: false
            }
        );
        assert!(b.is_idle());
    }

    #[test]
    fn sack_marks_only_covered_segments_and_holes_are_retransmitted() {
        let mut b = buf(1152);
        b.write(ms(0), &[7u8; 5 * 1152]);
        drain(&mut b, ms(0));
        b.on_ack(ms(1), Seq(1153));
        let n = b.on_sack(
            ms(0),
            &[SackBlock::new(2305, 3457), SackBlock::new(4609, 5761)],
        );
        assert_eq!(n, 2);
        assert_eq!(b.flight_bytes(false), 2 * 1152);
        assert_eq!(b.flight_bytes(true), 4 * 1152);
        // Partial coverage does not mark.
        assert_eq!(b.on_sack(ms(0), &[SackBlock::new(3457, 4000)]), 0);
        let r = b.retransmit_first_hole(ms(0)).unwrap();
        assert_eq!(r.seq, Seq(1153));
        // ACK of the first hole; SACKed bytes are not counted again.
        assert_eq!(
            b.on_ack(ms(2), Seq(3457)),
            AckKind::New {
                bytes_acked: 1152,
                rtt: None,
                fin_acked: false
            }
        );
        assert_eq!(b.retransmit_first_hole(ms(0)).unwrap().seq, Seq(3457));
        assert_eq!(b.sacked_above_first_hole(), 1152);
        assert_eq!(
            b.retransmit_hole_from(ms(0), Seq(3457)).unwrap().seq,
            Seq(3457)
        );
        assert!(
            b.retransmit_hole_from(ms(0), Seq(4609)).is_none(),
            "nothing missing above"
        );
        b.clear_sacks();
        assert_eq!(b.flight_bytes(false), 2 * 1152);
    }

    #[test]
    fn fin_follows_data_and_is_acknowledged() {
        let mut b = buf(1152);
        b.write(ms(0), b"hello");
        b.close();
        let segs = drain(&mut b, ms(0));
        assert_eq!(segs.len(), 2);
        assert!(segs[1].fin);
        assert_eq!(segs[1].seq, Seq(6));
        assert_eq!(b.snd_nxt(), Seq(7));
        assert!(b.fin_sent() && !b.fin_acked());
        assert!(b.pop_segment(ms(0)).is_none());
        assert_eq!(
            b.on_ack(ms(1), Seq(6)),
            AckKind::New {
                bytes_acked: 5,
                rtt: Some(Duration::from_millis(1)),
                fin_acked: false
            }
        );
        let r = b.retransmit_first_hole(ms(0)).unwrap();
        assert!(r.fin && r.seq == Seq(6));
        assert!(matches!(
            b.on_ack(ms(2), Seq(7)),
            AckKind::New {
                fin_acked: true,
                ..
            }
        ));
        assert!(b.is_idle());
    }

    #[test]
    fn close_flushes_held_tail_before_fin() {
        let mut b = buf(1152);
        b.write(ms(0), b"a");
        drain(&mut b, ms(0));
        b.write(ms(0), b"b");
        assert!(b.pop_segment(ms(0)).is_none());
        b.close();
        let segs = drain(&mut b, ms(0));
        assert_eq!(segs.len(), 2);
        assert_eq!(&segs[0].data[..], b"b");
        assert!(segs[1].fin);
    }
}
