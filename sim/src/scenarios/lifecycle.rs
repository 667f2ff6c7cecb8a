//! `tunnel-lifecycle`: two nodes go through every tunnel lifecycle
//! sequence of `spec/crypto.md` §13, and after each step a dial plus an
//! echo must succeed in both directions within [`STEP_BOUND`] of virtual
//! time.
//!
//! The steps: a plain start; either node restarts (same identity, new
//! tunnel key, sometimes on a new UDP address) and either side dials first;
//! both restart at once (a key rotation on both sides); either side closes
//! the tunnel (trust revoked), with the other side notified or not, then
//! trust is granted again; a long idle period (probes must keep the tunnel
//! up); a partition longer than the peer timeout with a stream carrying
//! data (both ends must fail it with `PeerUnreachable`).
//!
//! What is modelled and what is not: the nodes are bare protocol
//! [`Node`](pilot_proto::node::Node)s. A restarted node knows its peers'
//! endpoints but not their identity keys; the scenario plays the registry:
//! on `IdentityNeeded` it supplies the key (as the daemon's look-up does)
//! and, before a dial to a peer without a session, the peer's current
//! endpoint (as the daemon's re-resolution does). Revoking trust is
//! [`Node::close_tunnel`](pilot_proto::node::Node::close_tunnel), which is
//! what the daemon calls for the trust store's `DropTunnel`; granting trust
//! again needs nothing at node level. A partition is both nodes offline.
//!
//! Checks: every dial + echo completes (`lifecycle`), the partitioned
//! stream fails on both ends, no `PeerUnreachable` during the idle period,
//! and the [`StallWatchdog`] over every stream.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pilot_proto::crypto::identity::TunnelKey;
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::node::{ConnId, Event, Node, NodeConfig, PEER_TIMEOUT, ResetCause};
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::json;

use crate::check::{CheckResult, StallWatchdog};
use crate::config::SimConfig;
use crate::engine::{Sim, SimError};
use crate::node::{NodeId, node_addr};
use crate::pilot::{Pilot, identity, pilot_addr, wire_profile};
use crate::scenario::{Outcome, Scenario};
use crate::seed::Seed;

/// Port of the echo service on both nodes.
pub const ECHO_PORT: u16 = 7;
/// Bytes sent (and echoed) by each dial.
pub const ECHO_BYTES: usize = 4096;
/// Longest a dial + echo may take after a step.
pub const STEP_BOUND: Duration = Duration::from_secs(40);
/// Long idle period.
pub const IDLE: Duration = Duration::from_secs(300);
/// Partition length (longer than the peer timeout).
pub const PARTITION: Duration = Duration::from_secs(45);
/// Stall-watchdog bound: a stream with data to deliver must progress or
/// end within the peer timeout plus a margin for the sweep period.
pub const STALL_BOUND: Duration = Duration::from_secs(40);
const TICK: Duration = Duration::from_millis(100);
const SAMPLE_EVERY: u32 = 5;

/// See the module docs.
pub struct LifecycleScenario;

struct Client {
    node: NodeId,
    conn: ConnId,
    sent: Vec<u8>,
    unsent: usize,
    got: Vec<u8>,
    ended: Option<Option<ResetCause>>,
    /// Shut down once everything is written (unused by the steps, which
    /// close after the echo; kept for experiments).
    shutdown: bool,
}

#[derive(Default)]
struct St {
    seed: u64,
    /// Current incarnation of logical node 0 and 1.
    ids: [Option<NodeId>; 2],
    addrs: [Option<SocketAddr>; 2],
    /// Server-side echo connections: bytes still to write back, and
    /// whether the client's end of stream was seen.
    echo: BTreeMap<(NodeId, ConnId), (Vec<u8>, bool)>,
    /// Ended server-side connections with their cause.
    echo_ended: Vec<(NodeId, Option<ResetCause>)>,
    client: Option<Client>,
    unreachable: Vec<(usize, u32, Instant)>,
    lookups: u64,
    resolves: u64,
    errors: Vec<String>,
}

impl St {
    fn logical(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|x| *x == Some(id))
    }
}

fn new_node(
    seed: u64,
    index: usize,
    incarnation: u64,
    profile: WireProfile,
    now: Instant,
    st: &St,
) -> Pilot {
    let seed = Seed::new(seed);
    let mut rng = seed.fork("lifecycle/node", (index as u64) << 16 | incarnation);
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    let mut chacha = ChaCha8Rng::from_seed(s);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut chacha);
    let mut node = Node::new(
        now,
        NodeConfig {
            addr: pilot_addr(index),
            identity: Some(identity(seed, index)),
            tunnel_key,
            profile,
            provider: RustCrypto,
            rng: chacha,
            encrypt: true,
            admin_token: Vec::new(),
            limits: Default::default(),
        },
    );
    let other = 1 - index;
    let ep = st.addrs[other].unwrap_or(node_addr(other));
    // The first start knows the peer's key (trust.json); a restart knows
    // only its endpoint and must look the key up.
    let key = (incarnation == 0).then(|| *identity(seed, other).public());
    node.add_peer(pilot_addr(other), ep, key);
    let _ = node.listen(ECHO_PORT);
    Pilot::wrap(node)
}

fn pattern(seed: u64, step: usize, n: usize) -> Vec<u8> {
    let mut r = Seed::new(seed).fork("lifecycle/data", step as u64);
    let mut v = vec![0u8; n];
    r.fill_bytes(&mut v);
    v
}

fn flush_echo(p: &mut Pilot, now: Instant, pending: &mut Vec<u8>, conn: ConnId) {
    while !pending.is_empty() {
        match p.node.write(now, conn, pending) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.drain(..n);
            }
        }
    }
}

fn flush_client(p: &mut Pilot, now: Instant, c: &mut Client) {
    while c.unsent > 0 {
        let off = c.sent.len() - c.unsent;
        match p.node.write(now, c.conn, &c.sent[off..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => c.unsent -= n,
        }
    }
    if c.unsent == 0 && c.shutdown {
        let _ = p.node.shutdown(now, c.conn);
    }
}

fn read_client(p: &mut Pilot, cl: &mut Client) {
    let mut buf = [0u8; 2048];
    loop {
        match p.node.read(cl.conn, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => cl.got.extend_from_slice(&buf[..n]),
        }
    }
}

fn on_event(sim: &mut Sim<Pilot>, st: &mut St, id: NodeId, ev: Event) -> Result<(), SimError> {
    let Some(me) = st.logical(id) else {
        return Ok(()); // a dead incarnation
    };
    match ev {
        Event::Incoming { port } => {
            let accepted = sim.with_node(id, |p, _| {
                core::iter::from_fn(|| p.node.accept(port)).collect::<Vec<_>>()
            })?;
            for c in accepted {
                st.echo.insert((id, c), (Vec::new(), false));
            }
        }
        Event::Readable(c) | Event::Writable(c) | Event::Connected(c) => {
            if let Some(cl) = st
                .client
                .as_mut()
                .filter(|cl| cl.node == id && cl.conn == c)
            {
                sim.with_node(id, |p, now| {
                    flush_client(p, now, cl);
                    read_client(p, cl);
                })?;
            } else if let Some((pending, eof)) = st.echo.get_mut(&(id, c)) {
                sim.with_node(id, |p, now| {
                    let mut buf = [0u8; 2048];
                    while !*eof {
                        match p.node.read(c, &mut buf) {
                            Ok(0) => *eof = true,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                    flush_echo(p, now, pending, c);
                    if *eof && pending.is_empty() {
                        let _ = p.node.close(now, c);
                    }
                })?;
            }
        }
        Event::Closed(c) | Event::Reset(c, _) => {
            let cause = match ev {
                Event::Reset(_, r) => Some(r),
                _ => None,
            };
            if let Some(cl) = st
                .client
                .as_mut()
                .filter(|cl| cl.node == id && cl.conn == c)
            {
                sim.with_node(id, |p, _| read_client(p, cl))?;
                cl.ended = Some(cause);
            } else if st.echo.remove(&(id, c)).is_some() {
                st.echo_ended.push((id, cause));
            }
        }
        Event::IdentityNeeded { peer } | Event::IdentityStale { peer } => {
            // The registry look-up of the daemon.
            let j = (peer as usize).wrapping_sub(1);
            if j < 2 && j != me {
                st.lookups += 1;
                let ep = st.addrs[j].unwrap_or(node_addr(j));
                let key = *identity(Seed::new(st.seed), j).public();
                sim.with_node(id, |p, now| {
                    if !p
                        .node
                        .identity_resolved(now, peer, pilot_addr(j).network, key)
                    {
                        // Nothing held (expired, or a PILK): learn the key
                        // and start our own exchange.
                        p.node.add_peer(pilot_addr(j), ep, Some(key));
                        p.node.connect_tunnel(now, peer);
                    }
                })?;
            }
        }
        Event::ResolveNeeded { peer } => {
            // The daemon's registry re-resolution.
            let j = (peer as usize).wrapping_sub(1);
            if j < 2 && j != me {
                st.resolves += 1;
                let ep = st.addrs[j].unwrap_or(node_addr(j));
                sim.with_node(id, |p, _| p.node.add_peer(pilot_addr(j), ep, None))?;
            }
        }
        Event::PeerUnreachable { peer, .. } => {
            let now = sim.now();
            st.unreachable.push((me, peer, now));
        }
        _ => {}
    }
    Ok(())
}

struct World {
    sim: Sim<Pilot>,
    st: St,
    profile: WireProfile,
    incarnation: [u64; 2],
    next_addr: usize,
    watchdog: StallWatchdog,
    ticks: u32,
    steps: Vec<serde_json::Value>,
}

impl World {
    fn id(&self, i: usize) -> Result<NodeId, SimError> {
        self.st.ids[i].ok_or(SimError::UnknownNode(i))
    }

    fn run_for(&mut self, d: Duration) -> Result<(), SimError> {
        let end = self.sim.now() + d;
        while self.sim.now() < end {
            let t = (self.sim.now() + TICK).min(end);
            let st = &mut self.st;
            self.sim
                .run_until(t, |sim, id, ev| on_event(sim, st, id, ev))?;
            self.ticks += 1;
            if self.ticks % SAMPLE_EVERY == 0 {
                self.sample();
            }
        }
        Ok(())
    }

    /// Feeds the stall watchdog with every live stream.
    fn sample(&mut self) {
        let now = self.sim.now();
        if let Some(cl) = &self.st.client {
            if cl.ended.is_none() {
                if let Some(s) = self
                    .sim
                    .node(cl.node)
                    .and_then(|p| p.node.conn_stats(cl.conn))
                {
                    let pending = cl.unsent > 0 || s.in_flight > 0 || cl.got.len() < cl.sent.len();
                    let what = format!(
                        "client sent={} got={} in_flight={} rto={:?}",
                        cl.sent.len() - cl.unsent,
                        cl.got.len(),
                        s.in_flight,
                        s.rto
                    );
                    self.watchdog.observe(
                        now,
                        &format!("client {:?}/{}", cl.node, cl.conn.0),
                        pending,
                        s.bytes_sent + s.bytes_received,
                        &what,
                    );
                }
            } else {
                self.watchdog
                    .ended(&format!("client {:?}/{}", cl.node, cl.conn.0));
            }
        }
        for ((node, conn), (pending_bytes, _)) in &self.st.echo {
            if let Some(s) = self.sim.node(*node).and_then(|p| p.node.conn_stats(*conn)) {
                let pending = !pending_bytes.is_empty() || s.in_flight > 0;
                let what = format!(
                    "echo in_flight={} to_write={}",
                    s.in_flight,
                    pending_bytes.len()
                );
                self.watchdog.observe(
                    now,
                    &format!("echo {node:?}/{}", conn.0),
                    pending,
                    s.bytes_sent + s.bytes_received,
                    &what,
                );
            }
        }
    }

    fn restart(&mut self, i: usize, new_addr: bool) -> Result<(), SimError> {
        self.incarnation[i] += 1;
        let old = self.id(i)?;
        self.st.echo.retain(|(n, _), _| *n != old);
        if let Some(cl) = &self.st.client {
            if cl.node == old {
                self.st.client = None;
            }
        }
        let now = self.sim.now();
        if new_addr {
            self.sim.with_node(old, |p, _| p.offline = true)?;
            let addr = node_addr(self.next_addr);
            self.next_addr += 1;
            let fresh = new_node(
                self.st.seed,
                i,
                self.incarnation[i],
                self.profile,
                now,
                &self.st,
            );
            self.st.ids[i] = None;
            let id = self.sim.add_node(addr, fresh)?;
            self.st.ids[i] = Some(id);
            self.st.addrs[i] = Some(addr);
        } else {
            let fresh = new_node(
                self.st.seed,
                i,
                self.incarnation[i],
                self.profile,
                now,
                &self.st,
            );
            self.sim.replace_node(old, fresh)?;
        }
        Ok(())
    }

    /// Starts a stream from `from` to the echo port of the other node.
    fn open(
        &mut self,
        from: usize,
        step: usize,
        shutdown: bool,
    ) -> Result<Result<(), String>, SimError> {
        let to = 1 - from;
        let id = self.id(from)?;
        let data = pattern(self.st.seed, step * 2 + from, ECHO_BYTES);
        let r = self
            .sim
            .with_node(id, |p, now| p.node.connect(now, pilot_addr(to), ECHO_PORT))?;
        let conn = match r {
            Ok(c) => c,
            Err(e) => return Ok(Err(format!("dial refused: {e}"))),
        };
        let mut cl = Client {
            node: id,
            conn,
            unsent: data.len(),
            sent: data,
            got: Vec::new(),
            ended: None,
            shutdown,
        };
        self.sim
            .with_node(id, |p, now| flush_client(p, now, &mut cl))?;
        self.st.client = Some(cl);
        Ok(Ok(()))
    }

    /// Dial + echo from `from`; Ok(elapsed) or a description of the failure.
    fn dial_echo(
        &mut self,
        from: usize,
        step: usize,
    ) -> Result<Result<Duration, String>, SimError> {
        let t0 = self.sim.now();
        // No half-close: a FIN ends both directions in this transport
        // (transport.md), so the client closes only after the echo.
        if let Err(e) = self.open(from, step, false)? {
            return Ok(Err(e));
        }
        loop {
            self.run_for(TICK)?;
            let elapsed = self.sim.now().saturating_duration_since(t0);
            let Some(cl) = self.st.client.as_ref() else {
                return Ok(Err("client lost".into()));
            };
            if cl.got.len() >= cl.sent.len() {
                let ok = cl.got[..cl.sent.len()] == cl.sent[..];
                let (node, conn) = (cl.node, cl.conn);
                self.st.client = None;
                self.sim.with_node(node, |p, now| {
                    let _ = p.node.close(now, conn);
                })?;
                return Ok(if ok {
                    Ok(elapsed)
                } else {
                    Err("echo differs".into())
                });
            }
            if let Some(cause) = cl.ended {
                let got = cl.got.len();
                self.st.client = None;
                return Ok(Err(format!("stream ended ({cause:?}) after {got} bytes")));
            }
            if elapsed > STEP_BOUND {
                let got = cl.got.len();
                let unsent = cl.unsent;
                self.st.client = None;
                return Ok(Err(format!(
                    "no echo within {STEP_BOUND:?} (got {got}, unsent {unsent})"
                )));
            }
        }
    }

    /// Runs one step: its action, then dial + echo from `first`, then from
    /// the other side.
    fn step(&mut self, n: usize, name: &str, first: usize) -> Result<(), SimError> {
        for (k, from) in [first, 1 - first].into_iter().enumerate() {
            let at = self.sim.now();
            match self.dial_echo(from, n * 2 + k)? {
                Ok(d) => self
                    .steps
                    .push(json!({"step": name, "from": from, "ms": d.as_millis() as u64})),
                Err(e) => {
                    self.st.errors.push(format!(
                        "step {n} {name}: dial from node {from} at {} ms: {e}",
                        at.as_nanos() / 1_000_000
                    ));
                    self.steps
                        .push(json!({"step": name, "from": from, "error": e}));
                }
            }
        }
        Ok(())
    }
}

impl Scenario for LifecycleScenario {
    fn name(&self) -> &'static str {
        "tunnel-lifecycle"
    }

    fn about(&self) -> &'static str {
        "restarts, revoke/re-trust, key rotation, idle, partition: dial + echo recovers after each"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let s = Seed::new(seed);
        let addrs: Vec<SocketAddr> = (0..2).map(node_addr).collect();
        let sim = Sim::new(s, cfg.faults(s, &addrs));
        let profile = wire_profile(cfg);
        let mut w = World {
            sim,
            st: St {
                seed,
                ..St::default()
            },
            profile,
            incarnation: [0; 2],
            next_addr: 2,
            watchdog: StallWatchdog::new(STALL_BOUND),
            ticks: 0,
            steps: Vec::new(),
        };
        let result = run_steps(&mut w, seed);
        let mut out = Outcome::from_sim(&mut w.sim, result);
        out.checks.push(w.watchdog.result(&out.trace_hash));
        out.checks.push(CheckResult::new(
            "lifecycle",
            w.st.errors.is_empty(),
            if w.st.errors.is_empty() {
                format!(
                    "{} dial+echo rounds ok, {} key look-ups",
                    w.steps.len(),
                    w.st.lookups
                )
            } else {
                w.st.errors.join("; ")
            },
        ));
        out.figures.insert("rounds".into(), json!(w.steps));
        out.figures.insert("lookups".into(), json!(w.st.lookups));
        out.figures.insert("resolves".into(), json!(w.st.resolves));
        out.figures.insert(
            "peer_timeout_ms".into(),
            json!(PEER_TIMEOUT.as_millis() as u64),
        );
        out
    }
}

fn run_steps(w: &mut World, seed: u64) -> Result<(), SimError> {
    for i in 0..2 {
        let fresh = new_node(seed, i, 0, w.profile, w.sim.now(), &w.st);
        let id = w.sim.add_node(node_addr(i), fresh)?;
        w.st.ids[i] = Some(id);
        w.st.addrs[i] = Some(node_addr(i));
    }
    // Which restarts move to a new UDP address depends on the seed.
    let moves = Seed::new(seed).fork("lifecycle/moves", 0).next_u32();
    let mut n = 0usize;
    w.step(n, "start", 0)?;
    // Either side restarts, either side dials first.
    for (r, first) in [(0usize, 1usize), (1, 1), (0, 0), (1, 0)] {
        n += 1;
        let new_addr = moves >> n & 1 == 1;
        w.restart(r, new_addr)?;
        let name = format!(
            "restart-{r}{}-then-{first}-dials",
            if new_addr { "-new-addr" } else { "" }
        );
        w.step(n, &name, first)?;
    }
    // Key rotation on both sides at once.
    n += 1;
    w.restart(0, false)?;
    w.restart(1, false)?;
    w.step(n, "rotate-both", (moves >> 8 & 1) as usize)?;
    // Revoke then re-trust, from either side, with and without the peer
    // hearing of it.
    for (by, notified, first) in [
        (0usize, true, 0usize),
        (1, true, 1),
        (0, false, 1),
        (1, false, 0),
    ] {
        n += 1;
        let a = w.id(by)?;
        w.sim
            .with_node(a, |p, now| p.node.close_tunnel(now, 2 - by as u32))?;
        if notified {
            let b = w.id(1 - by)?;
            w.sim
                .with_node(b, |p, now| p.node.close_tunnel(now, by as u32 + 1))?;
        }
        w.run_for(Duration::from_millis(500))?;
        let name = format!(
            "revoke-by-{by}{}-then-{first}-dials",
            if notified { "" } else { "-unnotified" }
        );
        w.step(n, &name, first)?;
    }
    // Long idle: probes keep the tunnel alive.
    n += 1;
    let before = w.st.unreachable.len();
    w.run_for(IDLE)?;
    if w.st.unreachable.len() != before {
        w.st.errors.push(format!(
            "idle: peer declared dead: {:?}",
            &w.st.unreachable[before..]
        ));
    }
    w.step(n, "long-idle", 1)?;
    // Partition longer than the peer timeout with a stream carrying data.
    n += 1;
    if let Err(e) = w.open(0, 1000, false)? {
        w.st.errors.push(format!("partition: {e}"));
    }
    // Cut only once the stream carried its first echo.
    let t_open = w.sim.now();
    while w
        .st
        .client
        .as_ref()
        .is_some_and(|c| c.got.len() < c.sent.len() && c.ended.is_none())
        && w.sim.now().saturating_duration_since(t_open) < STEP_BOUND
    {
        w.run_for(TICK)?;
    }
    let echoed =
        w.st.client
            .as_ref()
            .is_some_and(|c| c.got.len() >= c.sent.len());
    if !echoed {
        w.st.errors
            .push("partition: the stream did not carry its first echo".into());
    }
    let a = w.id(0)?;
    let b = w.id(1)?;
    w.sim.with_node(a, |p, _| p.offline = true)?;
    w.sim.with_node(b, |p, _| p.offline = true)?;
    let t_cut = w.sim.now();
    let echo_before = w.st.echo_ended.len();
    if let Some(mut cl) = w.st.client.take() {
        // More data while cut off: it can only fail.
        cl.sent.extend(pattern(seed, 2000, ECHO_BYTES));
        cl.unsent += ECHO_BYTES;
        w.sim
            .with_node(cl.node, |p, now| flush_client(p, now, &mut cl))?;
        w.st.client = Some(cl);
    }
    w.run_for(PARTITION)?;
    let bound = PEER_TIMEOUT + PEER_TIMEOUT / 4;
    let client_end = w.st.client.as_ref().and_then(|c| c.ended);
    // The stream's own retransmission limit may fail it first; either way
    // it must end with an error within the bound.
    let failed = |c: Option<ResetCause>| {
        matches!(c, Some(ResetCause::PeerUnreachable | ResetCause::TimedOut))
    };
    if !client_end.is_some_and(failed) {
        w.st.errors.push(format!(
            "partition: dialler's stream ended {client_end:?}, want PeerUnreachable"
        ));
    }
    let server_ends: Vec<_> = w.st.echo_ended[echo_before..]
        .iter()
        .map(|(_, c)| *c)
        .collect();
    if !server_ends.iter().any(|c| failed(*c)) {
        w.st.errors.push(format!(
            "partition: echo stream ends {server_ends:?}, want PeerUnreachable"
        ));
    }
    let dead: Vec<_> = w.st.unreachable.iter().filter(|u| u.2 >= t_cut).collect();
    if dead.len() < 2
        || dead
            .iter()
            .any(|u| u.2.saturating_duration_since(t_cut) > bound)
    {
        w.st.errors.push(format!(
            "partition: peers declared dead {dead:?}, want both within {bound:?}"
        ));
    }
    w.st.client = None;
    w.sim.with_node(a, |p, _| p.offline = false)?;
    w.sim.with_node(b, |p, _| p.offline = false)?;
    w.step(n, "partition", 0)?;
    Ok(())
}
