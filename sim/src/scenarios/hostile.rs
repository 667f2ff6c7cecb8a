//! `hostile`: two trusted nodes (0 and 1) move `--bytes` over a stream
//! (1 → 0), written in [`CHUNKS`] equal chunks every [`CHUNK_EVERY`] from
//! [`START`] on (so the pair lives for seconds, past every age threshold
//! the reference reacts to), while two attacker nodes, from time zero,
//! flood both of them with every kind of
//! forged input: random bytes, PILS with valid framing and a bad tag
//! (claiming the trusted peer or a random node), replays of captured
//! PILS and PILA frames, PILKs with random or spoofed sender IDs, and
//! PILAs with valid signatures from a key nobody vouches for (random or
//! spoofed sender IDs). The attack rate depends on the seed: 10, 100,
//! 1 000 or 10 000 frames/s per attacker, or [`LINE_RATE`].
//!
//! The same seed also runs without attackers (the baseline). Checks:
//! * `sha256-equal`: the bytes arrive exactly;
//! * `goodput`: at least 90 % of the baseline's, and no chunk takes more
//!   than twice (plus 50 ms) the baseline's slowest chunk to arrive;
//! * `no-disturbance`: each trusted node installs its session once and
//!   never loses it (no drop, no rekey caused by the attack);
//! * `bounded-state`: each trusted node's peer table holds only its
//!   trusted peer, one session, and the half-open table stays within its
//!   configured bound;
//! * `drops-counted`: the forged input is counted in the drop counters.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use pilot_proto::crypto::drops::AuthDrop;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::kx::{PILA_LEN, PILK_LEN, build_pila, build_pilk};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::node::{ConnId, Event, Limits as NodeLimits, NodeError};
use pilot_proto::stream::conn::StreamError;
use pilot_proto::time::Instant;
use pilot_proto::wire::tunnel::{MAGIC_PILA, MAGIC_PILS};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::check::{CheckResult, Checker, DatagramRecord, RecordKind, RunSummary};
use crate::config::SimConfig;
use crate::engine::{Sim, SimError};
use crate::node::{NodeId, SimNode, Transmit, node_addr};
use crate::pilot::{Pilot, pilot_addr, wire_profile};
use crate::scenario::{Outcome, Scenario};
use crate::seed::Seed;

/// Port node 0 listens on.
pub const PORT: u16 = 1000;
/// "Line rate" of one attacker, frames per second.
pub const LINE_RATE: u64 = 20_000;
/// Attack rates per seed class (`seed % 5`), frames per second per
/// attacker.
pub const RATES: [u64; 5] = [10, 100, 1_000, 10_000, LINE_RATE];
/// Longest virtual run.
pub const MAX_RUN: Duration = Duration::from_secs(600);
/// Number of attacker nodes.
pub const ATTACKERS: usize = 2;
const CHUNK: usize = 64 * 1024;
/// The stream is written in this many chunks.
pub const CHUNKS: u64 = 50;
/// One chunk is written this often.
pub const CHUNK_EVERY: Duration = Duration::from_millis(100);
/// The first chunk is written (and the dial made) at this time, with the
/// attack already under way.
pub const START: Duration = Duration::from_millis(500);
const CAPTURED: usize = 64;

/// Frames captured from the trusted nodes, for replay.
type Captured = Rc<RefCell<VecDeque<(SocketAddr, Vec<u8>)>>>;

/// A trusted node or an attacker in one simulation.
pub enum HostileNode {
    /// A trusted protocol node.
    Trusted(Box<Pilot>),
    /// An attacker.
    Attacker(Box<Attacker>),
}

impl HostileNode {
    fn pilot(&mut self) -> Option<&mut Pilot> {
        match self {
            HostileNode::Trusted(p) => Some(p),
            HostileNode::Attacker(_) => None,
        }
    }
}

impl SimNode for HostileNode {
    type Event = Event;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let HostileNode::Trusted(p) = self {
            p.handle_datagram(now, from, bytes);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            HostileNode::Trusted(p) => p.handle_timeout(now),
            HostileNode::Attacker(a) => a.tick(now),
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        match self {
            HostileNode::Trusted(p) => p.poll_transmit(now, buf),
            HostileNode::Attacker(a) => a.poll_transmit(buf),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            HostileNode::Trusted(p) => p.poll_timeout(),
            HostileNode::Attacker(a) => (a.next < a.stop).then_some(a.next),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        match self {
            HostileNode::Trusted(p) => p.poll_event(),
            HostileNode::Attacker(_) => None,
        }
    }
}

/// One victim of an attacker: its endpoint and the node ID of its trusted
/// peer (to spoof).
#[derive(Clone, Copy)]
struct Victim {
    endpoint: SocketAddr,
    peer_node: u32,
}

/// A node that sends forged frames at a fixed rate.
pub struct Attacker {
    rng: ChaCha8Rng,
    victims: Vec<Victim>,
    tick: Duration,
    per_tick: u64,
    next: Instant,
    stop: Instant,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Signed PILAs under the attacker's own key: random sender IDs.
    random_pilas: Vec<Vec<u8>>,
    /// Signed PILAs under the attacker's own key claiming each victim's
    /// trusted peer.
    spoofed_pilas: Vec<Vec<u8>>,
    captured: Captured,
    counter: u64,
    /// Frames emitted.
    pub sent: u64,
}

impl Attacker {
    fn new(seed: Seed, index: usize, rate: u64, victims: Vec<Victim>, captured: Captured) -> Self {
        let mut rng = seed.fork("hostile/attacker", index as u64);
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let mut rng = ChaCha8Rng::from_seed(s);
        let mut id_seed = [0u8; 32];
        rng.fill_bytes(&mut id_seed);
        let id = Identity::from_seed(&RustCrypto, id_seed);
        let tunnel = TunnelKey::generate(&RustCrypto, &mut rng);
        let pila = |sender: u32| {
            let mut f = vec![0u8; PILA_LEN];
            let _ = build_pila(&RustCrypto, sender, &tunnel, &id, &mut f);
            f
        };
        let random_pilas = (0..32)
            .map(|_| pila(rng.next_u32() | 0x4000_0000))
            .collect();
        let spoofed_pilas = victims.iter().map(|v| pila(v.peer_node)).collect();
        let rate = rate.max(1);
        let tick_ms = (1000 / rate).max(1);
        Attacker {
            rng,
            victims,
            tick: Duration::from_millis(tick_ms),
            per_tick: (rate * tick_ms / 1000).max(1),
            next: Instant::ZERO,
            stop: Instant::ZERO + MAX_RUN,
            queue: VecDeque::new(),
            random_pilas,
            spoofed_pilas,
            captured,
            counter: 0,
            sent: 0,
        }
    }

    fn tick(&mut self, now: Instant) {
        while self.next <= now && self.next < self.stop {
            for _ in 0..self.per_tick {
                self.forge();
            }
            self.next = self.next + self.tick;
        }
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.rng.fill_bytes(&mut v);
        v
    }

    /// Queues the next forged frame (kinds in rotation).
    fn forge(&mut self) {
        let k = self.counter;
        self.counter += 1;
        let vi = (k / 9) as usize % self.victims.len().max(1);
        let Some(v) = self.victims.get(vi).copied() else {
            return;
        };
        let frame = match k % 9 {
            0 => {
                let len = 1 + (self.rng.next_u32() % 200) as usize;
                self.random_bytes(len)
            }
            1 | 2 => {
                // Valid framing, bad tag: claiming the trusted peer, or a
                // random node.
                let len = 36 + (self.rng.next_u32() % 120) as usize;
                let mut f = self.random_bytes(len);
                f[..4].copy_from_slice(&MAGIC_PILS);
                let sender = if k % 9 == 1 {
                    v.peer_node
                } else {
                    self.rng.next_u32()
                };
                f[4..8].copy_from_slice(&sender.to_be_bytes());
                f
            }
            3 => {
                // A replay of a captured frame, sent to its original
                // destination.
                let cap = self.captured.borrow();
                if cap.is_empty() {
                    return;
                }
                let i = (self.rng.next_u32() as usize) % cap.len();
                let Some((dst, f)) = cap.get(i).cloned() else {
                    return;
                };
                drop(cap);
                self.queue.push_back((dst, f));
                return;
            }
            4 | 5 => {
                // PILK with a random or a spoofed sender ID.
                let mut secret = [0u8; 32];
                self.rng.fill_bytes(&mut secret);
                let tk = TunnelKey::from_secret(&RustCrypto, secret);
                let sender = if k % 9 == 4 {
                    self.rng.next_u32()
                } else {
                    v.peer_node
                };
                let mut f = vec![0u8; PILK_LEN];
                let _ = build_pilk(sender, &tk, &mut f);
                f
            }
            6 => {
                // Valid signature from a key nobody vouches for, random ID.
                let i = (self.rng.next_u32() as usize) % self.random_pilas.len().max(1);
                self.random_pilas.get(i).cloned().unwrap_or_default()
            }
            7 => self.spoofed_pilas.get(vi).cloned().unwrap_or_default(),
            _ => {
                // PILA-shaped garbage: bad signature, random ID.
                let mut f = self.random_bytes(PILA_LEN);
                f[..4].copy_from_slice(&MAGIC_PILA);
                f
            }
        };
        self.queue.push_back((v.endpoint, frame));
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Option<Transmit> {
        let (dst, f) = self.queue.pop_front()?;
        let out = buf.get_mut(..f.len())?;
        out.copy_from_slice(&f);
        self.sent += 1;
        Some(Transmit { dst, len: f.len() })
    }
}

/// Records the trusted nodes' PILS and PILA frames for the attackers.
struct Capture {
    trusted: [SocketAddr; 2],
    captured: Captured,
    seen: u64,
}

impl<E> Checker<E> for Capture {
    fn name(&self) -> &str {
        "capture"
    }

    fn on_datagram(&mut self, rec: &DatagramRecord<'_>) {
        if rec.kind != RecordKind::Sent || !self.trusted.contains(&rec.src) {
            return;
        }
        let magic = rec.bytes.get(..4);
        if magic == Some(&MAGIC_PILS[..]) || magic == Some(&MAGIC_PILA[..]) {
            self.seen += 1;
            let mut c = self.captured.borrow_mut();
            if c.len() >= CAPTURED {
                c.pop_front();
            }
            c.push_back((rec.dst, rec.bytes.to_vec()));
        }
    }

    fn finish(&mut self, _s: &RunSummary) -> CheckResult {
        CheckResult::new(
            "capture",
            true,
            format!("{} trusted frames seen by the attackers", self.seen),
        )
    }
}

/// Byte `k` of the stream (deterministic, not periodic).
fn byte(k: u64) -> u8 {
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

#[derive(Default)]
struct Transfer {
    total: u64,
    conn: Option<ConnId>,
    written: u64,
    sent_hash: Sha256,
    shut: bool,
    rx: Option<ConnId>,
    received: u64,
    recv_hash: Sha256,
    eof_at: Option<Instant>,
    /// Bytes the application has released for writing so far.
    allowed: u64,
    /// Write time of each chunk, and its arrival time.
    chunk_sent: Vec<Instant>,
    chunk_done: Vec<Instant>,
    errors: u64,
    /// (node, up) session events of the trusted nodes.
    session_events: Vec<(usize, bool)>,
}

fn pump_writes(sim: &mut Sim<HostileNode>, t: &mut Transfer) -> Result<(), SimError> {
    let Some(id) = t.conn else { return Ok(()) };
    let total = t.total;
    let allowed = t.allowed;
    sim.with_node(NodeId(1), |n, now| {
        let Some(p) = n.pilot() else { return };
        let mut buf = vec![0u8; CHUNK];
        while t.written < allowed {
            let len = (allowed - t.written).min(CHUNK as u64) as usize;
            for (i, b) in buf.iter_mut().take(len).enumerate() {
                *b = byte(t.written + i as u64);
            }
            match p.node.write(now, id, &buf[..len]) {
                Ok(0) | Err(NodeError::Stream(StreamError::NotEstablished)) => break,
                Ok(w) => {
                    t.sent_hash.update(&buf[..w]);
                    t.written += w as u64;
                }
                Err(_) => {
                    t.errors += 1;
                    break;
                }
            }
        }
        if t.written >= total && !t.shut {
            t.shut = true;
            if p.node.shutdown(now, id).is_err() {
                t.errors += 1;
            }
        }
    })
}

fn pump_reads(sim: &mut Sim<HostileNode>, t: &mut Transfer) -> Result<(), SimError> {
    let Some(id) = t.rx else { return Ok(()) };
    sim.with_node(NodeId(0), |n, now| {
        let Some(p) = n.pilot() else { return };
        let mut buf = vec![0u8; CHUNK];
        loop {
            match p.node.read(id, &mut buf) {
                Ok(0) => {
                    if t.eof_at.is_none() {
                        t.eof_at = Some(now);
                        let _ = p.node.close(now, id);
                    }
                    break;
                }
                Ok(n) => {
                    t.recv_hash.update(&buf[..n]);
                    t.received += n as u64;
                    let per = (t.total / CHUNKS).max(1);
                    while (t.chunk_done.len() as u64) < CHUNKS
                        && t.received >= per * (t.chunk_done.len() as u64 + 1)
                    {
                        t.chunk_done.push(now);
                    }
                }
                Err(NodeError::Stream(StreamError::WouldBlock)) => break,
                Err(_) => {
                    t.errors += 1;
                    break;
                }
            }
        }
    })
}

fn on_event(
    sim: &mut Sim<HostileNode>,
    node: NodeId,
    ev: Event,
    t: &mut Transfer,
) -> Result<(), SimError> {
    match (node.0, ev) {
        (n, Event::SessionUp { .. }) => t.session_events.push((n, true)),
        (n, Event::SessionDown { .. }) => t.session_events.push((n, false)),
        (0, Event::Incoming { port }) => {
            let id = sim.with_node(node, |n, _| n.pilot().and_then(|p| p.node.accept(port)))?;
            if t.rx.is_none() {
                t.rx = id;
            }
            pump_reads(sim, t)?;
        }
        (0, Event::Readable(_)) => pump_reads(sim, t)?,
        (1, Event::Connected(_) | Event::Writable(_)) => pump_writes(sim, t)?,
        _ => {}
    }
    Ok(())
}

/// What one run measured.
struct Run {
    outcome: Outcome,
    transfer: Transfer,
    secs: f64,
    /// Per trusted node: (peers, sessions, half-open, drops total).
    state: Vec<(usize, usize, usize, u64)>,
    drops: Vec<(String, u64)>,
    attack_sent: u64,
}

fn run_once(cfg: &SimConfig, seed: u64, rate: Option<u64>) -> Run {
    let s = Seed::new(seed);
    let trusted = [node_addr(0), node_addr(1)];
    let mut addrs: Vec<SocketAddr> = trusted.to_vec();
    if rate.is_some() {
        addrs.extend((0..ATTACKERS).map(|i| node_addr(2 + i)));
    }
    let mut sim: Sim<HostileNode> = Sim::new(s, cfg.faults(s, &addrs));
    let captured: Captured = Rc::default();
    if rate.is_some() {
        sim.add_checker(Box::new(Capture {
            trusted,
            captured: captured.clone(),
            seen: 0,
        }));
    }
    let profile = wire_profile(cfg);
    let mut result = Ok(());
    for i in 0..2 {
        let p = Pilot::mesh_member(s, i, 2, 0, profile, Instant::ZERO);
        if let Err(e) = sim.add_node(node_addr(i), HostileNode::Trusted(Box::new(p))) {
            result = Err(e);
        }
    }
    if let Some(rate) = rate {
        let victims = vec![
            Victim {
                endpoint: trusted[0],
                peer_node: pilot_addr(1).node,
            },
            Victim {
                endpoint: trusted[1],
                peer_node: pilot_addr(0).node,
            },
        ];
        for i in 0..ATTACKERS {
            let a = Attacker::new(s, i, rate, victims.clone(), captured.clone());
            if let Err(e) = sim.add_node(node_addr(2 + i), HostileNode::Attacker(Box::new(a))) {
                result = Err(e);
            }
        }
    }
    let mut t = Transfer {
        total: cfg.bytes,
        ..Transfer::default()
    };
    result = result.and_then(|_| {
        sim.with_node(NodeId(0), |n, _| {
            n.pilot().map(|p| p.node.listen(PORT).is_ok())
        })
        .map(|_| ())
    });
    result = result.and_then(|_| {
        sim.run_until(Instant::ZERO + START, |sim, node, ev| {
            on_event(sim, node, ev, &mut t)
        })
    });
    if result.is_ok() {
        match sim.with_node(NodeId(1), |n, now| {
            n.pilot().map(|p| p.node.connect(now, pilot_addr(0), PORT))
        }) {
            Ok(Some(Ok(c))) => t.conn = Some(c),
            Ok(_) => t.errors += 1,
            Err(e) => result = Err(e),
        }
    }
    let cap = Instant::ZERO + MAX_RUN;
    let start = Instant::ZERO + START;
    while result.is_ok() {
        // Release the next chunk on schedule.
        if sim.now() >= start && (t.chunk_sent.len() as u64) < CHUNKS {
            let k = t.chunk_sent.len() as u64 + 1;
            t.allowed = if k == CHUNKS {
                t.total
            } else {
                t.total / CHUNKS * k
            };
            t.chunk_sent.push(sim.now());
            result = pump_writes(&mut sim, &mut t);
        }
        let next = sim.now() + CHUNK_EVERY;
        result = result.and_then(|_| {
            sim.run_until(next.min(cap), |sim, node, ev| {
                on_event(sim, node, ev, &mut t)
            })
        });
        if t.eof_at.is_some() || sim.now() >= cap {
            break;
        }
    }
    let secs = t
        .eof_at
        .map_or(0.0, |e| e.saturating_duration_since(start).as_secs_f64());
    let mut state = Vec::new();
    let mut drops: Vec<(String, u64)> = AuthDrop::ALL
        .iter()
        .map(|r| (r.name().to_owned(), 0))
        .collect();
    let mut attack_sent = 0;
    for i in 0..addrs.len() {
        match sim.node(NodeId(i)) {
            Some(HostileNode::Trusted(p)) => {
                let d = p.node.auth_drops();
                for (slot, (_, n)) in drops.iter_mut().zip(d.iter()) {
                    slot.1 += n;
                }
                state.push((
                    p.node.peer_count(),
                    p.node.sessions().len(),
                    p.node.half_open_len(),
                    d.total(),
                ));
            }
            Some(HostileNode::Attacker(a)) => attack_sent += a.sent,
            None => {}
        }
    }
    let outcome = Outcome::from_sim(&mut sim, result);
    Run {
        outcome,
        transfer: t,
        secs,
        state,
        drops,
        attack_sent,
    }
}

/// See the module docs.
pub struct HostileScenario;

impl Scenario for HostileScenario {
    fn name(&self) -> &'static str {
        "hostile"
    }

    fn about(&self) -> &'static str {
        "attackers flood two trusted nodes with forged frames; bytes exact, goodput >= 90 %, no rekey, bounded state"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let rate = RATES[(seed % RATES.len() as u64) as usize];
        let goodput = |r: &Run| {
            if r.secs > 0.0 {
                r.transfer.received as f64 * 8.0 / r.secs / 1e6
            } else {
                0.0
            }
        };
        let base = run_once(cfg, seed, None);
        let att = run_once(cfg, seed, Some(rate));
        let (g_base, g_att) = (goodput(&base), goodput(&att));
        let slowest = |r: &Run| {
            r.transfer
                .chunk_sent
                .iter()
                .zip(&r.transfer.chunk_done)
                .map(|(s, d)| d.saturating_duration_since(*s))
                .max()
                .unwrap_or(Duration::MAX)
        };
        let (l_base, l_att) = (slowest(&base), slowest(&att));
        let mut out = att.outcome;
        let t = &att.transfer;
        let sent: [u8; 32] = t.sent_hash.clone().finalize().into();
        let got: [u8; 32] = t.recv_hash.clone().finalize().into();
        let exact = t.received == t.total && sent == got && t.errors == 0 && t.eof_at.is_some();
        out.checks.push(CheckResult::new(
            "sha256-equal",
            exact,
            format!(
                "{} of {} bytes, digest {}, {} API errors",
                t.received,
                t.total,
                if sent == got { "equal" } else { "different" },
                t.errors
            ),
        ));
        out.checks.push(CheckResult::new(
            "goodput",
            g_base > 0.0
                && g_att >= 0.9 * g_base
                && l_att <= l_base.saturating_mul(2) + Duration::from_millis(50),
            format!(
                "{g_att:.3} Mbit/s under attack vs {g_base:.3} Mbit/s without ({:.1} %); slowest chunk {:.1} ms vs {:.1} ms",
                if g_base > 0.0 { g_att / g_base * 100.0 } else { 0.0 },
                l_att.as_secs_f64() * 1e3,
                l_base.as_secs_f64() * 1e3
            ),
        ));
        let ups = |n: usize| t.session_events.iter().filter(|e| **e == (n, true)).count();
        let downs = t.session_events.iter().filter(|e| !e.1).count();
        out.checks.push(CheckResult::new(
            "no-disturbance",
            ups(0) == 1 && ups(1) == 1 && downs == 0,
            format!(
                "session installs {}/{}, session drops {downs}",
                ups(0),
                ups(1)
            ),
        ));
        let limit = NodeLimits::default().half_open;
        let bounded = att.state.len() == 2
            && att
                .state
                .iter()
                .all(|(peers, sessions, half, _)| *peers == 1 && *sessions == 1 && *half <= limit);
        out.checks.push(CheckResult::new(
            "bounded-state",
            bounded,
            format!("(peers, sessions, half-open, drops) per trusted node: {:?}; half-open bound {limit}", att.state),
        ));
        let dropped: u64 = att.state.iter().map(|s| s.3).sum();
        // Replays of authentic frames to a live session are refused too,
        // so every delivered attack frame is either counted or a harmless
        // copy of a genuine key exchange (kept, no effect).
        out.checks.push(CheckResult::new(
            "drops-counted",
            att.attack_sent > 0 && dropped > 0,
            format!(
                "{} attack frames sent, {dropped} counted drops",
                att.attack_sent
            ),
        ));
        out.figures
            .insert("attack_rate_per_attacker".into(), json!(rate));
        out.figures
            .insert("attack_frames".into(), json!(att.attack_sent));
        out.figures.insert("goodput_mbps".into(), json!(g_att));
        out.figures
            .insert("baseline_goodput_mbps".into(), json!(g_base));
        out.figures
            .insert("transfer_ms".into(), json!(att.secs * 1e3));
        out.figures
            .insert("baseline_transfer_ms".into(), json!(base.secs * 1e3));
        out.figures.insert(
            "auth_drops".into(),
            json!(
                att.drops
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(k, n)| (k.clone(), json!(n)))
                    .collect::<serde_json::Map<_, _>>()
            ),
        );
        out
    }
}
