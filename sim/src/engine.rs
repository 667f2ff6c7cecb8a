//! The simulation engine: nodes, virtual time and a delivery queue.
//!
//! One priority queue holds both datagram deliveries and node timers,
//! ordered by (time, sequence number); the sequence number is assigned when
//! an entry is queued, so ties resolve in a fixed order and a run is a pure
//! function of its seed and configuration. Time jumps straight to the next
//! entry. After every input to a node (datagram, timeout, or an application
//! command through [`Sim::with_node`]) the engine drains `poll_transmit`
//! and `poll_event` until they return `None`, then re-reads
//! `poll_timeout`. Timers are kept lazily: a changed deadline queues a new
//! entry and the superseded one is skipped when it surfaces.
//!
//! Every run is bounded: a step budget, a virtual-time horizon, a cap on
//! datagrams in flight, and a cap on polls per input (a node that never
//! stops transmitting is an error, not a hang). In-flight datagrams live
//! in a slab whose slots keep their buffers, so steady-state delivery does
//! not allocate.

use core::cmp::Ordering;
use core::time::Duration;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;

use pilot_proto::time::Instant;

use crate::check::{self, CheckResult, Checker, DatagramRecord, RecordKind, RunSummary};
use crate::fault::{Arrival, DropReason, FaultChain, InFlight, Verdict};
use crate::hashing::FastMap;
use crate::node::{NodeId, SimNode};
use crate::seed::Seed;
use crate::trace::{TraceDigest, TraceHash};

/// Size of the transmit buffer handed to nodes: the largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_535;

/// Bounds that keep every run finite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of queue entries processed.
    pub max_steps: u64,
    /// Virtual time may not be advanced past this instant.
    pub max_time: Instant,
    /// Maximum datagram copies queued at once; more are dropped
    /// ([`DropReason::Overload`]).
    pub max_in_flight: usize,
    /// Maximum transmits or events one node may produce after one input.
    pub max_polls_per_input: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 500_000_000,
            max_time: Instant::from_millis(24 * 3600 * 1000),
            max_in_flight: 1 << 21,
            max_polls_per_input: 1 << 20,
        }
    }
}

/// Engine counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams emitted by nodes.
    pub sent: u64,
    /// Bytes emitted by nodes.
    pub sent_bytes: u64,
    /// Copies handed to receivers.
    pub delivered: u64,
    /// Bytes handed to receivers.
    pub delivered_bytes: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
    /// Copies dropped, by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Copies held back and re-queued (clogging).
    pub deferred: u64,
    /// Timer firings.
    pub timeouts: u64,
    /// Node events.
    pub events: u64,
    /// Queue entries processed.
    pub steps: u64,
}

impl Stats {
    /// Copies dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Copies dropped for `reason`.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).copied().unwrap_or(0)
    }
}

/// Why a run stopped early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// The step budget ran out.
    #[error("step limit of {0} reached")]
    StepLimit(u64),
    /// Asked to run past the virtual-time horizon.
    #[error("virtual time horizon {horizon_ms} ms exceeded (asked for {asked_ms} ms)")]
    TimeLimit {
        /// The horizon, in ms.
        horizon_ms: u64,
        /// The requested deadline, in ms.
        asked_ms: u64,
    },
    /// A node kept producing output after one input.
    #[error("node {node} produced more than {limit} {what} after one input")]
    RunawayNode {
        /// The node's index.
        node: usize,
        /// "transmits" or "events".
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A node claimed to have written more bytes than the buffer holds.
    #[error("node {node} returned a transmit of {len} bytes (buffer {cap})")]
    TransmitTooLong {
        /// The node's index.
        node: usize,
        /// The claimed length.
        len: usize,
        /// The buffer size.
        cap: usize,
    },
    /// Two nodes were given the same endpoint.
    #[error("endpoint {0} is already taken")]
    DuplicateAddr(SocketAddr),
    /// No node with this index.
    #[error("no node {0}")]
    UnknownNode(usize),
}

struct Datagram {
    origin: u64,
    src: SocketAddr,
    dst: SocketAddr,
    sent_at: Instant,
    payload: Vec<u8>,
}

enum Kind {
    Timer(NodeId),
    /// Index into the datagram slab.
    Datagram(usize),
}

struct Entry {
    at: Instant,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest (time, seq) first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct Slot<N> {
    node: N,
    addr: SocketAddr,
    timer: Option<Instant>,
    timer_seq: u64,
}

/// A deterministic network of nodes of type `N`.
pub struct Sim<N: SimNode> {
    seed: Seed,
    now: Instant,
    seq: u64,
    next_origin: u64,
    nodes: Vec<Slot<N>>,
    by_addr: FastMap<SocketAddr, NodeId>,
    queue: BinaryHeap<Entry>,
    in_flight: usize,
    faults: FaultChain,
    checkers: Vec<Box<dyn Checker<N::Event>>>,
    trace: TraceHash,
    stats: Stats,
    limits: Limits,
    buf: Vec<u8>,
    /// In-flight datagrams; queue entries point here so heap entries stay
    /// small. Freed slots keep their payload buffer for reuse.
    slab: Vec<Datagram>,
    free: Vec<usize>,
    events: VecDeque<(NodeId, N::Event)>,
}

impl<N: SimNode> Sim<N> {
    /// An empty network at time zero with the given fault chain, the
    /// default [`Limits`] and the [standard](check::standard) checkers.
    pub fn new(seed: Seed, faults: FaultChain) -> Self {
        Sim {
            seed,
            now: Instant::ZERO,
            seq: 0,
            next_origin: 0,
            nodes: Vec::new(),
            by_addr: FastMap::default(),
            queue: BinaryHeap::new(),
            in_flight: 0,
            faults,
            checkers: check::standard(),
            trace: TraceHash::new(),
            stats: Stats::default(),
            limits: Limits::default(),
            buf: vec![0; MAX_DATAGRAM],
            slab: Vec::new(),
            free: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// Replaces the run bounds.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Adds an invariant checker.
    pub fn add_checker(&mut self, checker: Box<dyn Checker<N::Event>>) {
        self.checkers.push(checker);
    }

    /// The run's seed (fork it for node RNGs: [`Seed::node`]).
    pub fn seed(&self) -> Seed {
        self.seed
    }

    /// Current virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Engine counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Trace hash of everything so far.
    pub fn trace_hash(&self) -> TraceDigest {
        self.trace.digest()
    }

    /// Names of the fault rules, in chain order.
    pub fn fault_names(&self) -> Vec<&'static str> {
        self.faults.names()
    }

    /// Datagram copies currently queued.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The endpoint of a node.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.nodes.get(id.0).map(|s| s.addr)
    }

    /// Read access to a node.
    pub fn node(&self, id: NodeId) -> Option<&N> {
        self.nodes.get(id.0).map(|s| &s.node)
    }

    /// Adds a node at `addr` and drains its initial output.
    pub fn add_node(&mut self, addr: SocketAddr, node: N) -> Result<NodeId, SimError> {
        if self.by_addr.contains_key(&addr) {
            return Err(SimError::DuplicateAddr(addr));
        }
        let id = NodeId(self.nodes.len());
        self.nodes.push(Slot {
            node,
            addr,
            timer: None,
            timer_seq: 0,
        });
        self.by_addr.insert(addr, id);
        self.drain(id)?;
        Ok(id)
    }

    /// Gives `f` mutable access to a node (to issue application commands),
    /// then drains the node's output.
    pub fn with_node<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut N, Instant) -> R,
    ) -> Result<R, SimError> {
        let now = self.now;
        let slot = self
            .nodes
            .get_mut(id.0)
            .ok_or(SimError::UnknownNode(id.0))?;
        let r = f(&mut slot.node, now);
        self.drain(id)?;
        Ok(r)
    }

    /// Replaces a node with `node` (a restart: the new state keeps the same
    /// endpoint), returns the old one, and drains the new one's output.
    /// The old node's pending timer is cancelled; datagrams already in
    /// flight to the endpoint reach the new node.
    pub fn replace_node(&mut self, id: NodeId, node: N) -> Result<N, SimError> {
        let slot = self
            .nodes
            .get_mut(id.0)
            .ok_or(SimError::UnknownNode(id.0))?;
        let old = core::mem::replace(&mut slot.node, node);
        slot.timer = None;
        self.drain(id)?;
        Ok(old)
    }

    /// Takes the oldest event not yet handed out (when driving with
    /// [`Sim::step`] directly; [`Sim::run_until`] hands events to its
    /// callback instead).
    pub fn take_event(&mut self) -> Option<(NodeId, N::Event)> {
        self.events.pop_front()
    }

    /// Processes the earliest queued entry if it is due by `deadline`.
    /// Returns `false` when nothing is due.
    pub fn step(&mut self, deadline: Instant) -> Result<bool, SimError> {
        match self.queue.peek() {
            Some(e) if e.at <= deadline => {}
            _ => return Ok(false),
        }
        let Some(entry) = self.queue.pop() else {
            return Ok(false);
        };
        self.stats.steps += 1;
        if self.stats.steps > self.limits.max_steps {
            return Err(SimError::StepLimit(self.limits.max_steps));
        }
        self.now = self.now.max(entry.at);
        match entry.kind {
            Kind::Timer(id) => {
                let Some(slot) = self.nodes.get_mut(id.0) else {
                    return Ok(true);
                };
                if slot.timer.is_none() || slot.timer_seq != entry.seq {
                    return Ok(true); // superseded
                }
                slot.timer = None;
                self.stats.timeouts += 1;
                slot.node.handle_timeout(self.now);
                self.drain(id)?;
            }
            Kind::Datagram(idx) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.arrive(idx)?;
            }
        }
        Ok(true)
    }

    /// Runs until virtual time `deadline`, handing each node event to
    /// `on_event` (which may issue commands through [`Sim::with_node`]).
    /// Time ends exactly at `deadline`.
    pub fn run_until<F>(&mut self, deadline: Instant, mut on_event: F) -> Result<(), SimError>
    where
        F: FnMut(&mut Self, NodeId, N::Event) -> Result<(), SimError>,
    {
        if deadline > self.limits.max_time {
            return Err(SimError::TimeLimit {
                horizon_ms: self.limits.max_time.as_nanos() / 1_000_000,
                asked_ms: deadline.as_nanos() / 1_000_000,
            });
        }
        loop {
            while let Some((id, ev)) = self.events.pop_front() {
                on_event(self, id, ev)?;
            }
            if !self.step(deadline)? {
                break;
            }
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// [`Sim::run_until`] `now + d`.
    pub fn run_for<F>(&mut self, d: Duration, on_event: F) -> Result<(), SimError>
    where
        F: FnMut(&mut Self, NodeId, N::Event) -> Result<(), SimError>,
    {
        self.run_until(self.now + d, on_event)
    }

    /// The figures of the run so far.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            seed: self.seed.value(),
            virtual_time: self.now,
            trace_hash: self.trace.digest(),
            stats: self.stats.clone(),
            in_flight: self.in_flight as u64,
        }
    }

    /// Runs every checker's final verdict (call once, at the end).
    pub fn check(&mut self) -> Vec<CheckResult> {
        let summary = self.summary();
        self.checkers
            .iter_mut()
            .map(|c| c.finish(&summary))
            .collect()
    }

    fn record(
        &mut self,
        kind: RecordKind,
        origin: u64,
        src: SocketAddr,
        dst: SocketAddr,
        bytes: &[u8],
    ) {
        if let RecordKind::Dropped(r) = kind {
            if let Some(c) = self.stats.dropped.get_mut(r.index()) {
                *c += 1;
            }
        }
        let rec = DatagramRecord {
            kind,
            origin,
            at: self.now,
            src,
            dst,
            bytes,
        };
        for c in &mut self.checkers {
            c.on_datagram(&rec);
        }
    }

    fn push(&mut self, at: Instant, kind: Kind) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        self.queue.push(Entry { at, seq, kind });
        seq
    }

    fn arrive(&mut self, idx: usize) -> Result<(), SimError> {
        let Some(d) = self.slab.get_mut(idx) else {
            return Ok(());
        };
        // Borrow the payload out of its slot for the duration (no copy).
        let payload = core::mem::take(&mut d.payload);
        let origin = d.origin;
        let mut arr = Arrival {
            src: d.src,
            dst: d.dst,
            len: payload.len(),
            sent_at: d.sent_at,
        };
        let res = self.arrive_with(idx, origin, &mut arr, &payload);
        if let Some(d) = self.slab.get_mut(idx) {
            d.payload = payload;
        }
        // Free the slot only now: while the receiver was drained, its
        // replies must not be scheduled into this slot, or restoring the
        // borrowed payload above would overwrite theirs.
        match res {
            Ok(true) => {
                self.free.push(idx);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                self.free.push(idx);
                Err(e)
            }
        }
    }

    fn arrive_with(
        &mut self,
        idx: usize,
        origin: u64,
        arr: &mut Arrival,
        payload: &[u8],
    ) -> Result<bool, SimError> {
        match self.faults.on_deliver(self.now, arr) {
            Verdict::Drop(r) => {
                self.record(RecordKind::Dropped(r), origin, arr.src, arr.dst, payload);
                return Ok(true);
            }
            Verdict::Defer(t) if t > self.now => {
                self.stats.deferred += 1;
                self.in_flight += 1;
                if let Some(d) = self.slab.get_mut(idx) {
                    d.src = arr.src;
                    d.dst = arr.dst;
                }
                self.push(t, Kind::Datagram(idx));
                return Ok(false);
            }
            _ => {}
        }
        let Some(&id) = self.by_addr.get(&arr.dst) else {
            let r = RecordKind::Dropped(DropReason::NoRoute);
            self.record(r, origin, arr.src, arr.dst, payload);
            return Ok(true);
        };
        self.stats.delivered += 1;
        self.stats.delivered_bytes += payload.len() as u64;
        self.trace
            .record_delivery(self.now, arr.src, arr.dst, payload);
        self.record(RecordKind::Delivered, origin, arr.src, arr.dst, payload);
        if let Some(slot) = self.nodes.get_mut(id.0) {
            slot.node.handle_datagram(self.now, arr.src, payload);
        }
        self.drain(id).map(|()| true)
    }

    fn send(&mut self, from: NodeId, dst: SocketAddr, bytes: &[u8]) {
        let Some(src) = self.addr(from) else { return };
        let origin = self.next_origin;
        self.next_origin += 1;
        self.stats.sent += 1;
        self.stats.sent_bytes += bytes.len() as u64;
        self.record(RecordKind::Sent, origin, src, dst, bytes);
        let mut pkt = InFlight::new(src, dst, bytes.len(), self.now);
        if let Verdict::Drop(r) = self.faults.on_send(self.now, &mut pkt) {
            self.record(RecordKind::Dropped(r), origin, pkt.src, pkt.dst, bytes);
            return;
        }
        let arrival = pkt.arrival();
        self.schedule(origin, &pkt, arrival, bytes);
        for &gap in pkt.copies() {
            self.stats.duplicated += 1;
            self.record(RecordKind::Duplicated, origin, pkt.src, pkt.dst, bytes);
            self.schedule(origin, &pkt, arrival + gap, bytes);
        }
    }

    fn schedule(&mut self, origin: u64, pkt: &InFlight, at: Instant, bytes: &[u8]) {
        if self.in_flight >= self.limits.max_in_flight {
            let r = RecordKind::Dropped(DropReason::Overload);
            self.record(r, origin, pkt.src, pkt.dst, bytes);
            return;
        }
        self.in_flight += 1;
        let idx = match self.free.pop() {
            Some(i) if i < self.slab.len() => i,
            _ => {
                self.slab.push(Datagram {
                    origin,
                    src: pkt.src,
                    dst: pkt.dst,
                    sent_at: pkt.sent_at,
                    payload: Vec::with_capacity(bytes.len()),
                });
                self.slab.len() - 1
            }
        };
        if let Some(d) = self.slab.get_mut(idx) {
            d.origin = origin;
            d.src = pkt.src;
            d.dst = pkt.dst;
            d.sent_at = pkt.sent_at;
            d.payload.clear();
            d.payload.extend_from_slice(bytes);
        }
        self.push(at.max(self.now), Kind::Datagram(idx));
    }

    fn drain(&mut self, id: NodeId) -> Result<(), SimError> {
        let limit = self.limits.max_polls_per_input;
        let mut buf = core::mem::take(&mut self.buf);
        let mut n = 0usize;
        let res = loop {
            let Some(slot) = self.nodes.get_mut(id.0) else {
                break Err(SimError::UnknownNode(id.0));
            };
            let Some(t) = slot.node.poll_transmit(self.now, &mut buf) else {
                break Ok(());
            };
            n += 1;
            if n > limit {
                break Err(SimError::RunawayNode {
                    node: id.0,
                    what: "transmits",
                    limit,
                });
            }
            let Some(bytes) = buf.get(..t.len) else {
                break Err(SimError::TransmitTooLong {
                    node: id.0,
                    len: t.len,
                    cap: buf.len(),
                });
            };
            self.send(id, t.dst, bytes);
        };
        self.buf = buf;
        res?;

        let mut n = 0usize;
        loop {
            let Some(slot) = self.nodes.get_mut(id.0) else {
                return Err(SimError::UnknownNode(id.0));
            };
            let Some(ev) = slot.node.poll_event() else {
                break;
            };
            n += 1;
            if n > limit {
                return Err(SimError::RunawayNode {
                    node: id.0,
                    what: "events",
                    limit,
                });
            }
            self.stats.events += 1;
            self.trace.record_event(self.now, id, &ev);
            for c in &mut self.checkers {
                c.on_event(self.now, id, &ev);
            }
            self.events.push_back((id, ev));
        }

        let now = self.now;
        let Some(slot) = self.nodes.get_mut(id.0) else {
            return Err(SimError::UnknownNode(id.0));
        };
        let next = slot.node.poll_timeout();
        if next != slot.timer {
            slot.timer = next;
            if let Some(t) = next {
                let seq = self.seq;
                slot.timer_seq = seq;
                self.push(t.max(now), Kind::Timer(id));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: u64, seq: u64) -> Entry {
        Entry {
            at: Instant::from_nanos(at),
            seq,
            kind: Kind::Timer(NodeId(0)),
        }
    }

    #[test]
    fn queue_pops_by_time_then_sequence() {
        let mut h = BinaryHeap::new();
        for (at, seq) in [(5, 3), (1, 9), (5, 1), (3, 0), (1, 2), (5, 2)] {
            h.push(entry(at, seq));
        }
        let order: Vec<(u64, u64)> = std::iter::from_fn(|| h.pop())
            .map(|e| (e.at.as_nanos(), e.seq))
            .collect();
        assert_eq!(order, [(1, 2), (1, 9), (3, 0), (5, 1), (5, 2), (5, 3)]);
    }
}
