//! Fuzz body for the stream transport (`spec/transport.md`): two
//! [`Connection`]s joined by a hostile network that the input scripts.
//!
//! The input is decoded (with `arbitrary`) into a list of [`Op`]s: writes,
//! reads, time steps, and deliveries, drops, duplicates and reorders of the
//! segments in flight. After the script the network heals: both sides
//! shut down, every segment is delivered, and time runs on. The body
//! asserts, at every step, that bytes read are a prefix of bytes written
//! (per direction), and at the end that every connection either completed
//! (closed with all data delivered) or failed cleanly (a reset it
//! reported), and that end of stream was only ever seen after the whole
//! stream. Any panic is a found bug.

use std::collections::VecDeque;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use pilot_proto::stream::conn::{
    ConnConfig, Connection, Event, Flags, Segment, State, StreamError,
};
use pilot_proto::time::Instant;

/// Most segments in flight per direction; more are dropped, like a full queue.
const IN_FLIGHT_CAP: usize = 256;
/// Most operations taken from one input.
const MAX_OPS: usize = 512;
/// Most polls of one connection per drain (a connection that emits more is
/// a bug: its queues are bounded).
const MAX_POLLS: usize = 10_000;
/// How long the healed network runs before the end state is judged.
const HEAL_TIME: Duration = Duration::from_secs(600);

/// One scripted step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// The side writes `len` bytes of its pattern.
    Write {
        /// `false` = dialer, `true` = acceptor.
        side: bool,
        /// Bytes to offer.
        len: u16,
    },
    /// The side reads up to `max` bytes.
    Read {
        /// Which side.
        side: bool,
        /// Buffer size (0 reads everything ready).
        max: u16,
    },
    /// Time passes and timers fire.
    Step {
        /// Milliseconds.
        ms: u16,
    },
    /// Deliver one segment in flight (chosen by index) now.
    Deliver {
        /// `false` = dialer to acceptor.
        dir: bool,
        /// Index into the in-flight queue (modulo its length).
        idx: u8,
    },
    /// Lose one segment in flight.
    Drop {
        /// Direction.
        dir: bool,
        /// Index.
        idx: u8,
    },
    /// Duplicate one segment in flight.
    Duplicate {
        /// Direction.
        dir: bool,
        /// Index.
        idx: u8,
    },
    /// Move one segment to the back of its queue.
    Reorder {
        /// Direction.
        dir: bool,
        /// Index.
        idx: u8,
    },
    /// Half-close the side's sending direction.
    Shutdown {
        /// Which side.
        side: bool,
    },
    /// Toggle Nagle on a side.
    NoDelay {
        /// Which side.
        side: bool,
        /// `true` disables Nagle.
        on: bool,
    },
}

/// One endpoint: its connection (the acceptor's appears with the first
/// SYN) and what its application wrote and read.
#[derive(Default)]
struct Side {
    conn: Option<Connection>,
    written: Vec<u8>,
    read: Vec<u8>,
    eof: bool,
    reset: bool,
}

struct Harness {
    now: Instant,
    sides: [Side; 2],
    /// In flight: `[0]` dialer to acceptor, `[1]` acceptor to dialer.
    wire: [VecDeque<Segment>; 2],
    cfg: ConnConfig,
    trace: bool,
}

/// The byte a side writes at stream offset `i`: distinct per side, so a
/// crossed stream is caught.
fn pattern(side: usize, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(side as u8 * 101)
}

impl Harness {
    fn new(trace: bool) -> Self {
        let cfg = ConnConfig {
            // Small buffers reach the window and full-queue paths quickly.
            send_capacity: 16 * 1024,
            ..ConnConfig::default()
        };
        let now = Instant::from_millis(1_000);
        let mut h = Harness {
            now,
            sides: [Side::default(), Side::default()],
            wire: [VecDeque::new(), VecDeque::new()],
            cfg,
            trace,
        };
        h.sides[0].conn = Some(Connection::connect(now, cfg, 0x1000_0000));
        h.drain();
        h
    }

    /// Moves every pending segment onto the wire and handles events.
    fn drain(&mut self) {
        for s in 0..2 {
            let Some(conn) = self.sides[s].conn.as_mut() else {
                continue;
            };
            let mut polls = 0;
            while let Some(seg) = conn.poll_segment(self.now) {
                polls += 1;
                assert!(polls < MAX_POLLS, "connection {s} emits without end");
                if self.wire[s].len() < IN_FLIGHT_CAP {
                    self.wire[s].push_back(seg);
                } else if self.trace {
                    eprintln!("[{:?}] side {s} segment lost to the cap", self.now);
                }
            }
            while let Some(ev) = conn.poll_event() {
                if self.trace {
                    eprintln!("[{:?}] side {s} event {ev:?} ({conn:?})", self.now);
                }
                polls += 1;
                assert!(
                    polls < MAX_POLLS,
                    "connection {s} raises events without end"
                );
                if let Event::Reset(_) = ev {
                    self.sides[s].reset = true;
                }
            }
        }
    }

    fn deliver(&mut self, dir: usize, idx: usize) {
        let Some(seg) = self.wire[dir].remove(idx) else {
            return;
        };
        let to = 1 - dir;
        if self.trace {
            eprintln!(
                "[{:?}] {dir}->{to} {:?} seq={} ack={} win={} len={}",
                self.now,
                seg.flags,
                seg.seq.0,
                seg.ack.0,
                seg.window,
                seg.payload.len()
            );
        }
        match self.sides[to].conn.as_mut() {
            Some(c) => c.handle_segment(self.now, seg),
            None => {
                // The acceptor exists once a SYN (without ACK) reaches it.
                if seg.flags.contains(Flags::SYN) && !seg.flags.contains(Flags::ACK) {
                    self.sides[to].conn =
                        Some(Connection::accept(self.now, self.cfg, &seg, 0x7000_0000));
                }
            }
        }
        self.drain();
    }

    /// Reads up to `max` bytes once, or with `max == 0` everything ready.
    fn read(&mut self, s: usize, max: usize) {
        let Some(conn) = self.sides[s].conn.as_mut() else {
            return;
        };
        let all = max == 0;
        let before = self.sides[s].read.len();
        let mut buf = vec![0u8; if all { 64 * 1024 } else { max }];
        loop {
            match conn.read(&mut buf) {
                Ok(0) => {
                    self.sides[s].eof = true;
                    break;
                }
                Ok(n) => {
                    self.sides[s].read.extend_from_slice(&buf[..n]);
                    if !all {
                        break;
                    }
                }
                Err(StreamError::Reset) => {
                    self.sides[s].reset = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if self.trace && (self.sides[s].read.len() > before || self.sides[s].eof) {
            eprintln!(
                "[{:?}] side {s} read {} (total {}, eof {})",
                self.now,
                self.sides[s].read.len() - before,
                self.sides[s].read.len(),
                self.sides[s].eof
            );
        }
        self.check_prefixes();
        self.drain();
    }

    fn write(&mut self, s: usize, len: usize) {
        let Some(conn) = self.sides[s].conn.as_mut() else {
            return;
        };
        let start = self.sides[s].written.len();
        let data: Vec<u8> = (start..start + len).map(|i| pattern(s, i)).collect();
        if let Ok(n) = conn.write(self.now, &data) {
            assert!(n <= len, "write accepted more than offered");
            self.sides[s].written.extend_from_slice(&data[..n]);
            if self.trace {
                eprintln!("[{:?}] side {s} wrote {n}/{len}", self.now);
            }
        }
        self.drain();
    }

    /// Advances time to `until`, firing every timer due on the way.
    fn run_until(&mut self, until: Instant) {
        loop {
            let next = self
                .sides
                .iter()
                .filter_map(|s| s.conn.as_ref()?.poll_timeout().map(|(t, _)| t))
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    for s in 0..2 {
                        if let Some(c) = self.sides[s].conn.as_mut() {
                            c.handle_timeout(self.now);
                        }
                    }
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = self.now.max(until);
    }

    fn check_prefixes(&self) {
        for s in 0..2 {
            let sent = &self.sides[s].written;
            let got = &self.sides[1 - s].read;
            assert!(
                got.len() <= sent.len() && sent[..got.len()] == got[..],
                "side {} read bytes that side {s} did not write at that offset",
                1 - s
            );
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Write { side, len } => self.write(side as usize, usize::from(len)),
            Op::Read { side, max } => self.read(side as usize, usize::from(max)),
            Op::Step { ms } => {
                let until = self.now + Duration::from_millis(u64::from(ms));
                self.run_until(until);
            }
            Op::Deliver { dir, idx } => {
                let d = dir as usize;
                if !self.wire[d].is_empty() {
                    let i = usize::from(idx) % self.wire[d].len();
                    self.deliver(d, i);
                }
            }
            Op::Drop { dir, idx } => {
                let d = dir as usize;
                if !self.wire[d].is_empty() {
                    let i = usize::from(idx) % self.wire[d].len();
                    self.wire[d].remove(i);
                }
            }
            Op::Duplicate { dir, idx } => {
                let d = dir as usize;
                if !self.wire[d].is_empty() && self.wire[d].len() < IN_FLIGHT_CAP {
                    let i = usize::from(idx) % self.wire[d].len();
                    let copy = self.wire[d][i].clone();
                    self.wire[d].push_back(copy);
                }
            }
            Op::Reorder { dir, idx } => {
                let d = dir as usize;
                if !self.wire[d].is_empty() {
                    let i = usize::from(idx) % self.wire[d].len();
                    if let Some(seg) = self.wire[d].remove(i) {
                        self.wire[d].push_back(seg);
                    }
                }
            }
            Op::Shutdown { side } => {
                if let Some(c) = self.sides[side as usize].conn.as_mut() {
                    c.shutdown(self.now);
                }
                self.drain();
            }
            Op::NoDelay { side, on } => {
                if let Some(c) = self.sides[side as usize].conn.as_mut() {
                    c.set_nodelay(on);
                }
            }
        }
    }

    /// The network heals: each side shuts down once established, every
    /// segment is delivered at once and in order, both sides read all they
    /// can, and time jumps from timer to timer.
    fn heal(&mut self) {
        let end = self.now + HEAL_TIME;
        for _ in 0..100_000 {
            for s in 0..2 {
                if let Some(c) = self.sides[s].conn.as_mut() {
                    if c.state() == State::Established {
                        c.shutdown(self.now);
                    }
                }
            }
            self.drain();
            self.read(0, 0);
            self.read(1, 0);
            while !self.wire[0].is_empty() || !self.wire[1].is_empty() {
                for d in 0..2 {
                    if !self.wire[d].is_empty() {
                        self.deliver(d, 0);
                    }
                }
                self.read(0, 0);
                self.read(1, 0);
            }
            let next = self
                .sides
                .iter()
                .filter_map(|s| s.conn.as_ref()?.poll_timeout().map(|(t, _)| t))
                .min();
            match next {
                Some(t) if t <= end => self.run_until(t.max(self.now)),
                _ => break,
            }
        }
        self.judge();
    }

    fn judge(&self) {
        let Some(acceptor) = self.sides[1].conn.as_ref() else {
            // No SYN ever reached the acceptor: the dialer must have ended.
            let dialer = self.sides[0].conn.as_ref().map(Connection::state);
            assert_eq!(
                dialer,
                Some(State::Closed),
                "dialer neither connected nor failed"
            );
            return;
        };
        // End of stream claims the whole stream, even if a reset came later
        // (a FIN is sent only after every byte written before it).
        for s in 0..2 {
            if self.sides[1 - s].eof {
                assert_eq!(
                    self.sides[1 - s].read.len(),
                    self.sides[s].written.len(),
                    "side {} saw end of stream before everything side {s} wrote",
                    1 - s
                );
            }
        }
        let any_reset = self.sides.iter().any(|s| s.reset);
        for (s, c) in [(0, self.sides[0].conn.as_ref()), (1, Some(acceptor))] {
            let state = c.map(Connection::state);
            assert!(
                matches!(state, Some(State::Closed | State::TimeWait)),
                "side {s} still {state:?} after the network healed for {HEAL_TIME:?}"
            );
        }
        if !any_reset {
            for s in 0..2 {
                assert_eq!(
                    self.sides[1 - s].read.len(),
                    self.sides[s].written.len(),
                    "clean close but side {} did not receive everything side {s} wrote",
                    1 - s
                );
                assert!(self.sides[1 - s].eof, "clean close without end of stream");
            }
        }
    }
}

/// Decodes `data` into the operations [`run`] applies (at most `MAX_OPS`).
pub fn decode(data: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    for _ in 0..MAX_OPS {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        ops.push(op);
        if u.is_empty() {
            break;
        }
    }
    ops
}

/// Runs `ops`, heals, and checks (what [`run`] does after decoding); with
/// `trace`, every segment delivered and every event is printed to stderr,
/// for minimising and explaining a failing script.
pub fn run_ops(ops: &[Op], trace: bool) {
    let mut h = Harness::new(trace);
    for op in ops {
        if h.trace {
            eprintln!("[{:?}] op {op:?}", h.now);
        }
        h.apply(op.clone());
    }
    if h.trace {
        eprintln!("[{:?}] heal", h.now);
    }
    h.heal();
}

/// Decodes `data` into operations, runs them, heals, and checks.
pub fn run(data: &[u8]) {
    run_ops(&decode(data), false);
}
