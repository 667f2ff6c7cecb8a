//! The pair harness: two ends of one stream connection
//! (`pilot_proto::stream::conn::Connection`, below the node and the
//! tunnel) on a simulated path, for transport tests under seeded faults.
//!
//! Each [`ConnEnd`] is a [`SimNode`]: its segments travel through the
//! engine and its fault chain ([`PathSpec::faults`]: latency with
//! reordering jitter, loss, duplication, a bottleneck, a path that dies).
//! [`Pair::run`] runs a transfer to its end and reports what each side
//! received and how each connection ended. Segments use a sim-local
//! encoding ([`encode_segment`]); the node's wire header is not involved.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use pilot_proto::stream::conn::{ConnConfig, Connection, Event, Flags, Segment, State};
use pilot_proto::time::Instant;

use crate::engine::{Sim, SimError};
use crate::fault::{
    Bandwidth, Duplicate, FaultChain, Group, Latency, Partition, PartitionWindow, UniformLoss,
};
use crate::node::{SimNode, Transmit, node_addr};
use crate::seed::Seed;

/// Encodes a segment: `flags[1] seq[4] ack[4] window[2] payload`.
pub fn encode_segment(s: &Segment) -> Vec<u8> {
    let mut v = Vec::with_capacity(11 + s.payload.len());
    v.push(s.flags.bits());
    v.extend_from_slice(&s.seq.0.to_be_bytes());
    v.extend_from_slice(&s.ack.0.to_be_bytes());
    v.extend_from_slice(&s.window.to_be_bytes());
    v.extend_from_slice(&s.payload);
    v
}

/// Decodes [`encode_segment`]'s format.
pub fn decode_segment(b: &[u8]) -> Option<Segment> {
    let flags = Flags::from_bits_truncate(*b.first()?);
    let seq = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    let ack = u32::from_be_bytes(b.get(5..9)?.try_into().ok()?);
    let window = u16::from_be_bytes(b.get(9..11)?.try_into().ok()?);
    Some(Segment::with_payload(flags, seq, ack, window, b.get(11..)?))
}

/// The simulated path between the two ends.
#[derive(Clone, Copy, Debug)]
pub struct PathSpec {
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay uniform in `0..jitter` per segment; segments may
    /// overtake each other.
    pub jitter: Duration,
    /// Loss probability per segment, each way.
    pub loss: f64,
    /// Duplication probability per segment.
    pub dup: f64,
    /// Bottleneck rate each way, bytes per second (FIFO, tail drop).
    pub bandwidth: Option<u64>,
    /// From this instant on nothing crosses the path any more.
    pub dead_after: Option<Instant>,
}

impl Default for PathSpec {
    fn default() -> Self {
        PathSpec {
            latency: Duration::from_millis(20),
            jitter: Duration::ZERO,
            loss: 0.0,
            dup: 0.0,
            bandwidth: Some(12_000_000),
            dead_after: None,
        }
    }
}

impl PathSpec {
    /// A path losing `pct` % of segments each way, otherwise the default.
    pub fn lossy(pct: f64) -> Self {
        PathSpec {
            loss: pct / 100.0,
            ..PathSpec::default()
        }
    }

    /// The fault chain of this path between `a` and `b`.
    pub fn faults(&self, seed: Seed, a: SocketAddr, b: SocketAddr) -> FaultChain {
        let mut c = FaultChain::new();
        if let Some(t) = self.dead_after {
            c.push(Partition::new(vec![PartitionWindow::symmetric(
                t,
                Instant::from_millis(u64::MAX / 2_000_000),
                Group::of([a]),
                Group::of([b]),
            )]));
        }
        if self.loss > 0.0 {
            c.push(UniformLoss::new(self.loss, seed.fork("pair/loss", 0)));
        }
        if let Some(rate) = self.bandwidth {
            c.push(Bandwidth::new(rate, (rate / 10).max(16 * 1024)));
        }
        // Jitter as extra delay in [0, jitter): centre the band on
        // latency + jitter/2.
        let half = self.jitter / 2;
        c.push(
            Latency::new(self.latency + half, half, seed.fork("pair/latency", 0))
                .allow_reordering(),
        );
        if self.dup > 0.0 {
            c.push(Duplicate::new(
                self.dup,
                Duration::from_millis(1).max(self.jitter),
                seed.fork("pair/dup", 0),
            ));
        }
        c
    }
}

/// How an end reads what arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// Everything, after every input.
    Greedy,
    /// One read of `bite` bytes every `every`, only during the first
    /// `on` of each `period` (a slow, intermittent application).
    Slow {
        /// Bytes per read.
        bite: usize,
        /// Time between reads.
        every: Duration,
        /// Reading part of each period.
        on: Duration,
        /// Period.
        period: Duration,
    },
}

/// When an end ends its side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// `close` once everything is written (the dialer of a bulk transfer).
    CloseAfterWrite,
    /// `shutdown` once everything is written and `expect` bytes arrived.
    ShutdownWhenDone {
        /// Bytes to receive first.
        expect: usize,
    },
    /// Never on its own (the receiver of a bulk transfer closes when the
    /// peer's FIN arrives; the connection does that itself).
    Passive,
}

/// What one end reports (the connection's events, by name).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PairEvent(pub String);

/// One end: a connection (the acceptor's is created by the first SYN),
/// data to write, and what was read.
pub struct ConnEnd {
    conn: Option<Connection>,
    accept: Option<(ConnConfig, u32)>,
    peer: SocketAddr,
    data: Vec<u8>,
    written: usize,
    finish: Finish,
    finished: bool,
    reader: Reader,
    next_read: Option<Instant>,
    /// Bytes read so far.
    pub received: Vec<u8>,
    /// The connection's events so far.
    pub events: Vec<Event>,
    queue: VecDeque<PairEvent>,
}

impl ConnEnd {
    /// The dialing end (sends a SYN at `now`).
    pub fn dial(now: Instant, cfg: ConnConfig, isn: u32, peer: SocketAddr) -> Self {
        let mut e = Self::blank(peer);
        e.conn = Some(Connection::connect(now, cfg, isn));
        e
    }

    /// The accepting end (waits for a SYN).
    pub fn listen(cfg: ConnConfig, isn: u32, peer: SocketAddr) -> Self {
        let mut e = Self::blank(peer);
        e.accept = Some((cfg, isn));
        e
    }

    fn blank(peer: SocketAddr) -> Self {
        ConnEnd {
            conn: None,
            accept: None,
            peer,
            data: Vec::new(),
            written: 0,
            finish: Finish::Passive,
            finished: false,
            reader: Reader::Greedy,
            next_read: None,
            received: Vec::new(),
            events: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    /// Writes `data` once established, then ends as `finish` says.
    pub fn sending(mut self, data: Vec<u8>, finish: Finish) -> Self {
        self.data = data;
        self.finish = finish;
        self
    }

    /// Reads as `reader` says.
    pub fn reading(mut self, reader: Reader) -> Self {
        self.reader = reader;
        self
    }

    /// The connection, once it exists.
    pub fn conn(&self) -> Option<&Connection> {
        self.conn.as_ref()
    }

    /// Whether the connection exists and is closed.
    pub fn is_closed(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.is_closed())
    }

    fn step(&mut self, now: Instant) {
        let Some(c) = self.conn.as_mut() else { return };
        if c.state() == State::Established && self.written < self.data.len() {
            let rest = self.data.get(self.written..).unwrap_or(&[]);
            self.written += c.write(now, rest).unwrap_or(0);
        }
        let mut buf = [0u8; 8192];
        match self.reader {
            Reader::Greedy => loop {
                match c.read(&mut buf) {
                    Ok(n) if n > 0 => self.received.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            },
            Reader::Slow {
                bite,
                every,
                on,
                period,
            } => {
                let due = self.next_read.is_none_or(|t| t <= now);
                let ms = now.as_nanos() / 1_000_000;
                let reading =
                    period.as_millis() > 0 && u128::from(ms) % period.as_millis() < on.as_millis();
                if due {
                    if reading {
                        let b = bite.min(buf.len());
                        if let Ok(n) = c.read(&mut buf[..b]) {
                            self.received.extend_from_slice(&buf[..n]);
                        }
                    }
                    self.next_read = Some(now + every);
                }
            }
        }
        let all_written = self.written == self.data.len();
        if !self.finished {
            match self.finish {
                Finish::CloseAfterWrite if all_written => {
                    c.close(now);
                    self.finished = true;
                }
                Finish::ShutdownWhenDone { expect }
                    if all_written
                        && self.received.len() == expect
                        && c.state() == State::Established =>
                {
                    c.shutdown(now);
                    self.finished = true;
                }
                _ => {}
            }
        }
        while let Some(ev) = c.poll_event() {
            self.queue.push_back(PairEvent(format!("{ev:?}")));
            self.events.push(ev);
        }
    }
}

impl SimNode for ConnEnd {
    type Event = PairEvent;

    fn handle_datagram(&mut self, now: Instant, _from: SocketAddr, bytes: &[u8]) {
        let Some(seg) = decode_segment(bytes) else {
            return;
        };
        match self.conn.as_mut() {
            Some(c) => c.handle_segment(now, seg),
            None if seg.flags == Flags::SYN => {
                if let Some((cfg, isn)) = self.accept {
                    self.conn = Some(Connection::accept(now, cfg, &seg, isn));
                }
            }
            None => {}
        }
        self.step(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(c) = self.conn.as_mut() {
            if c.poll_timeout().is_some_and(|(t, _)| t <= now) {
                c.handle_timeout(now);
            }
        }
        self.step(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let s = self.conn.as_mut()?.poll_segment(now)?;
        let bytes = encode_segment(&s);
        buf.get_mut(..bytes.len())?.copy_from_slice(&bytes);
        Some(Transmit {
            dst: self.peer,
            len: bytes.len(),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let c = self.conn.as_ref()?;
        let t = c.poll_timeout().map(|x| x.0);
        let r = (!c.is_closed()).then_some(self.next_read).flatten();
        t.into_iter().chain(r).min()
    }

    fn poll_event(&mut self) -> Option<PairEvent> {
        self.queue.pop_front()
    }
}

/// Two [`ConnEnd`]s on a [`PathSpec`].
pub struct Pair {
    /// The simulation (node 0 dials node 1).
    pub sim: Sim<ConnEnd>,
}

/// How a [`Pair::run`] ended.
#[derive(Debug)]
pub struct PairResult {
    /// Virtual time at the end.
    pub end: Instant,
    /// The engine's verdict.
    pub engine: Result<(), SimError>,
}

impl Pair {
    /// A pair with `a` at node 0 (endpoint [`node_addr`]`(0)`) and `b` at
    /// node 1 on `path`.
    pub fn new(seed: u64, path: PathSpec, a: ConnEnd, b: ConnEnd) -> Result<Pair, SimError> {
        let seed = Seed::new(seed);
        let (ea, eb) = (node_addr(0), node_addr(1));
        let mut sim = Sim::new(seed, path.faults(seed, ea, eb));
        sim.add_node(ea, a)?;
        sim.add_node(eb, b)?;
        Ok(Pair { sim })
    }

    /// The dialing end of [`Pair::bulk`] and [`Pair::exchange`].
    pub fn a(&self) -> Option<&ConnEnd> {
        self.sim.node(crate::NodeId(0))
    }

    /// The accepting end.
    pub fn b(&self) -> Option<&ConnEnd> {
        self.sim.node(crate::NodeId(1))
    }

    /// A bulk transfer a → b of `data`: a closes after writing, b reads
    /// with `reader` and its connection uses `b_cfg`.
    pub fn bulk(
        seed: u64,
        path: PathSpec,
        data: Vec<u8>,
        b_cfg: ConnConfig,
        reader: Reader,
    ) -> Result<Pair, SimError> {
        let a = ConnEnd::dial(Instant::ZERO, ConnConfig::default(), 1000, node_addr(1))
            .sending(data, Finish::CloseAfterWrite);
        let b = ConnEnd::listen(b_cfg, 5000, node_addr(0)).reading(reader);
        Pair::new(seed, path, a, b)
    }

    /// Both sides send `data` to each other at once and shut down once
    /// they have sent and received it all.
    pub fn exchange(seed: u64, path: PathSpec, data: Vec<u8>) -> Result<Pair, SimError> {
        let finish = Finish::ShutdownWhenDone { expect: data.len() };
        let a = ConnEnd::dial(Instant::ZERO, ConnConfig::default(), 77, node_addr(1))
            .sending(data.clone(), finish);
        let b = ConnEnd::listen(ConnConfig::default(), 99, node_addr(0)).sending(data, finish);
        Pair::new(seed, path, a, b)
    }

    /// Runs in 10-ms steps until `done` holds for both ends (or `limit`
    /// of virtual time passes).
    pub fn run(
        &mut self,
        limit: Duration,
        done: impl Fn(&ConnEnd, &ConnEnd) -> bool,
    ) -> PairResult {
        let end = Instant::ZERO + limit;
        let mut engine = Ok(());
        while self.sim.now() < end {
            if let (Some(a), Some(b)) = (self.a(), self.b()) {
                if done(a, b) {
                    break;
                }
            }
            let next = (self.sim.now() + Duration::from_millis(10)).min(end);
            if let Err(e) = self.sim.run_until(next, |_, _, _| Ok(())) {
                engine = Err(e);
                break;
            }
        }
        PairResult {
            end: self.sim.now(),
            engine,
        }
    }
}
