//! `stream-transfer`: every node but node 0 opens one stream to node 0 and
//! sends `--bytes` through it, then shuts down; node 0 reads to the end of
//! each stream and closes it. Checks: the SHA-256 of what arrived equals
//! what was sent, and both ends of every stream close cleanly. Figures:
//! goodput over virtual time, retransmissions, fast retransmits, RTO
//! timeouts. `--duration-ms` is the least virtual time run; the run goes on
//! (in 1-s steps, up to [`MAX_RUN`]) until the outcome is decided: every
//! stream end has closed or been reset, and every sender whose dial
//! succeeded has its receiver (a sender whose dial failed has none; the
//! run waits [`ORPHAN_GRACE`] for a SYN still on its way). Failing runs
//! carry the figure `failure_class`: how the first broken stream ended
//! (`dial-timeout`, `timed-out`, `remote-reset`, `zero-window`,
//! `path-mtu`, `not-closed`, `wrong-data`).

use std::collections::BTreeMap;
use std::time::Duration;

use pilot_proto::node::{ConnId, Event, NodeError, ResetCause};
use pilot_proto::stream::conn::StreamError;
use pilot_proto::time::Instant;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::mesh;
use crate::check::CheckResult;
use crate::config::SimConfig;
use crate::engine::{Sim, SimError};
use crate::node::NodeId;
use crate::pilot::{Pilot, pilot_addr};
use crate::scenario::{Outcome, Scenario};

/// Port node 0 listens on.
pub const PORT: u16 = 1000;
/// Longest virtual run.
pub const MAX_RUN: Duration = Duration::from_secs(3600);
/// After every sender has ended, how long the run still waits for the
/// receiver of a stream whose sender never connected.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 * 1024;

/// See the module docs.
pub struct StreamScenario;

/// Byte `k` of the stream of client `c` (deterministic, not periodic in
/// any small window).
fn byte(c: usize, k: u64) -> u8 {
    let x = k
        .wrapping_add((c as u64) << 40)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8
}

#[derive(Default)]
struct Sender {
    conn: Option<ConnId>,
    written: u64,
    hash: Sha256,
    shut: bool,
    connected: bool,
    closed: bool,
    reset: Option<ResetCause>,
    ended_at: Option<Instant>,
}

#[derive(Default)]
struct Receiver {
    src: u32,
    received: u64,
    hash: Sha256,
    eof_at: Option<Instant>,
    closed: bool,
    reset: Option<ResetCause>,
}

struct State {
    total: u64,
    senders: BTreeMap<usize, Sender>,
    receivers: BTreeMap<ConnId, Receiver>,
    start: Instant,
    errors: u64,
}

impl State {
    /// Every stream end has finished and no receiver can still appear.
    fn done(&self, now: Instant) -> bool {
        let senders_ended = self.senders.values().all(|s| s.closed || s.reset.is_some());
        let receivers_ended = self
            .receivers
            .values()
            .all(|r| r.closed || r.reset.is_some());
        let last_end = self.senders.values().filter_map(|s| s.ended_at).max();
        let all_there = self.receivers.len() == self.senders.len()
            || (self.receivers.len() >= self.senders.values().filter(|s| s.connected).count()
                && last_end.is_some_and(|t| now.saturating_duration_since(t) >= ORPHAN_GRACE));
        senders_ended && receivers_ended && all_there
    }
}

fn pump_writes(sim: &mut Sim<Pilot>, node: NodeId, st: &mut State) -> Result<(), SimError> {
    let total = st.total;
    let Some(s) = st.senders.get_mut(&node.0) else {
        return Ok(());
    };
    let Some(id) = s.conn else { return Ok(()) };
    let c = node.0;
    let mut errors = 0;
    sim.with_node(node, |p, now| {
        let mut buf = vec![0u8; CHUNK];
        while s.written < total {
            let n = (total - s.written).min(CHUNK as u64) as usize;
            for (i, b) in buf.iter_mut().take(n).enumerate() {
                *b = byte(c, s.written + i as u64);
            }
            match p.node.write(now, id, &buf[..n]) {
                Ok(0) => break,
                Ok(w) => {
                    s.hash.update(&buf[..w]);
                    s.written += w as u64;
                }
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        if s.written >= total && !s.shut {
            s.shut = true;
            if p.node.shutdown(now, id).is_err() {
                errors += 1;
            }
        }
    })?;
    st.errors += errors;
    Ok(())
}

fn pump_reads(
    sim: &mut Sim<Pilot>,
    node: NodeId,
    id: ConnId,
    st: &mut State,
) -> Result<(), SimError> {
    let Some(r) = st.receivers.get_mut(&id) else {
        return Ok(());
    };
    let mut errors = 0;
    sim.with_node(node, |p, now| {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match p.node.read(id, &mut buf) {
                Ok(0) => {
                    if r.eof_at.is_none() {
                        r.eof_at = Some(now);
                        if p.node.close(now, id).is_err() {
                            errors += 1;
                        }
                    }
                    break;
                }
                Ok(n) => {
                    r.hash.update(&buf[..n]);
                    r.received += n as u64;
                }
                Err(NodeError::Stream(StreamError::WouldBlock)) => break,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
    })?;
    st.errors += errors;
    Ok(())
}

fn on_event(sim: &mut Sim<Pilot>, node: NodeId, ev: Event, st: &mut State) -> Result<(), SimError> {
    if node.0 == 0 {
        match ev {
            Event::Incoming { port } => {
                let accepted = sim.with_node(node, |p, _| {
                    let mut v = Vec::new();
                    while let Some(id) = p.node.accept(port) {
                        v.push(id);
                    }
                    v
                })?;
                for id in accepted {
                    st.receivers.entry(id).or_default();
                    pump_reads(sim, node, id, st)?;
                }
            }
            Event::Readable(id) => pump_reads(sim, node, id, st)?,
            Event::Closed(id) => {
                if let Some(r) = st.receivers.get_mut(&id) {
                    r.closed = true;
                }
            }
            Event::Reset(id, cause) => {
                if let Some(r) = st.receivers.get_mut(&id) {
                    r.reset = Some(cause);
                }
            }
            _ => {}
        }
        return Ok(());
    }
    let now = sim.now();
    match ev {
        Event::Connected(id) => {
            if let Some(s) = st.senders.get_mut(&node.0).filter(|s| s.conn == Some(id)) {
                s.connected = true;
            }
            pump_writes(sim, node, st)?;
        }
        Event::Writable(_) => pump_writes(sim, node, st)?,
        Event::Closed(id) => {
            if let Some(s) = st.senders.get_mut(&node.0).filter(|s| s.conn == Some(id)) {
                s.closed = true;
                s.ended_at = Some(now);
            }
        }
        Event::Reset(id, cause) => {
            if let Some(s) = st.senders.get_mut(&node.0).filter(|s| s.conn == Some(id)) {
                s.reset = Some(cause);
                s.ended_at = Some(now);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The name of a reset cause in `failure_class`.
fn cause_class(c: ResetCause) -> &'static str {
    match c {
        ResetCause::DialTimeout => "dial-timeout",
        ResetCause::TimedOut => "timed-out",
        ResetCause::Remote => "remote-reset",
        ResetCause::ZeroWindow => "zero-window",
        ResetCause::Aborted => "aborted",
        ResetCause::PathMtu => "path-mtu",
        ResetCause::PeerUnreachable => "peer-unreachable",
        ResetCause::TunnelClosed => "tunnel-closed",
        ResetCause::PeerRestarted => "peer-restarted",
    }
}

/// How the first broken stream ended, or `None` if none broke.
fn failure_class(st: &State, mismatched: usize) -> Option<&'static str> {
    // The sender's view first: it is the end that knows why it gave up.
    if let Some(c) = st.senders.values().find_map(|s| s.reset) {
        return Some(cause_class(c));
    }
    if let Some(c) = st.receivers.values().find_map(|r| r.reset) {
        return Some(cause_class(c));
    }
    if mismatched > 0 {
        return Some("wrong-data");
    }
    let unclean = st.senders.values().any(|s| !s.closed)
        || st.receivers.values().any(|r| !r.closed)
        || st.receivers.len() != st.senders.len()
        || st.errors > 0;
    unclean.then_some("not-closed")
}

impl Scenario for StreamScenario {
    fn name(&self) -> &'static str {
        "stream-transfer"
    }

    fn about(&self) -> &'static str {
        "streams carry --bytes from every node to node 0; SHA-256 equal, clean close, goodput"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let (mut sim, ids) = mesh(cfg, seed, 2);
        let mut st = State {
            total: cfg.bytes,
            senders: BTreeMap::new(),
            receivers: BTreeMap::new(),
            start: sim.now(),
            errors: 0,
        };
        let mut result = sim.with_node(ids[0], |p, _| p.node.listen(PORT)).map(|r| {
            if r.is_err() {
                st.errors += 1;
            }
        });
        for &nid in ids.iter().skip(1) {
            if result.is_err() {
                break;
            }
            match sim.with_node(nid, |p, now| p.node.connect(now, pilot_addr(0), PORT)) {
                Ok(Ok(c)) => {
                    st.senders.insert(
                        nid.0,
                        Sender {
                            conn: Some(c),
                            ..Sender::default()
                        },
                    );
                }
                Ok(Err(_)) => st.errors += 1,
                Err(e) => result = Err(e),
            }
        }
        let min_end = Instant::from_millis(cfg.duration_ms);
        let cap = Instant::ZERO + MAX_RUN.max(Duration::from_millis(cfg.duration_ms));
        while result.is_ok() {
            let next = sim.now() + Duration::from_secs(1);
            result = sim.run_until(next.min(cap), |sim, node, ev| {
                on_event(sim, node, ev, &mut st)
            });
            if (st.done(sim.now()) && sim.now() >= min_end) || sim.now() >= cap {
                break;
            }
        }
        let mut out = Outcome::from_sim(&mut sim, result);
        let mut mismatched = 0;
        let mut received = 0u64;
        let sent_hashes: Vec<[u8; 32]> = st
            .senders
            .values()
            .map(|s| s.hash.clone().finalize().into())
            .collect();
        let mut last_eof = st.start;
        for r in st.receivers.values() {
            let h: [u8; 32] = r.hash.clone().finalize().into();
            if r.received != st.total || !sent_hashes.contains(&h) {
                mismatched += 1;
            }
            received += r.received;
            if let Some(t) = r.eof_at {
                last_eof = last_eof.max(t);
            }
            let _ = r.src;
        }
        out.checks.push(CheckResult::new(
            "sha256-equal",
            mismatched == 0 && st.receivers.len() == st.senders.len() && !st.senders.is_empty(),
            format!(
                "{} streams sent, {} received, {mismatched} with wrong length or digest",
                st.senders.len(),
                st.receivers.len()
            ),
        ));
        let unclean = st.senders.values().filter(|s| !s.closed).count()
            + st.receivers.values().filter(|r| !r.closed).count()
            + st.senders.len().saturating_sub(st.receivers.len());
        out.checks.push(CheckResult::new(
            "clean-close",
            unclean == 0 && st.errors == 0,
            format!(
                "{unclean} stream ends not closed cleanly, {} API errors",
                st.errors
            ),
        ));
        let secs = last_eof.saturating_duration_since(st.start).as_secs_f64();
        let goodput = if secs > 0.0 {
            received as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        };
        let (mut rtx, mut fast, mut rto, mut grants) = (0, 0, 0, 0);
        let (mut probes, mut max_segment) = (0, 0);
        for &nid in &ids {
            if let Some(p) = sim.node(nid) {
                let (pr, _, largest) = p.node.pmtu_totals();
                probes += pr;
                max_segment = max_segment.max(largest);
                let (a, b, c) = p.node.stream_totals();
                rtx += a;
                fast += b;
                rto += c;
                grants += p.node.stats().window_grants;
            }
        }
        if let Some(class) = failure_class(&st, mismatched) {
            out.figures.insert("failure_class".into(), json!(class));
        }
        out.figures.insert("goodput_mbps".into(), json!(goodput));
        out.figures.insert("transfer_ms".into(), json!(secs * 1e3));
        out.figures.insert("bytes_received".into(), json!(received));
        out.figures.insert("retransmits".into(), json!(rtx));
        out.figures.insert("fast_retransmits".into(), json!(fast));
        out.figures.insert("rto_timeouts".into(), json!(rto));
        out.figures.insert("window_grants".into(), json!(grants));
        out.figures.insert("pmtu_probes".into(), json!(probes));
        out.figures.insert("max_segment".into(), json!(max_segment));
        out
    }
}
