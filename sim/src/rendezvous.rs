//! The rendezvous service inside the simulator: `pilot_proto`'s registry
//! state machine and beacon server behind one endpoint, with an in-memory
//! durable store.
//!
//! Registry connections are [`crate::tcp`] streams (their segments cross
//! the fault chain like every datagram; the stream model turns loss into
//! delay). Requests are framed and decoded with the registry codec,
//! handled by [`Registry::handle`], and every [`Effect::Persist`] change is
//! written to the [`RecordDisk`] as the record set a real store would
//! commit, **before** the reply goes out. Push hints
//! ([`Effect::PushWanted`], [`Effect::Notify`]) go to the connection that
//! asked for them. Other datagrams go to the beacon.
//!
//! A restart is [`Rendezvous::crash`] (the process dies: its connections
//! are reset, the store survives; while down, every segment is refused as
//! a host kernel would) followed by [`Rendezvous::restore`], which loads
//! the state from the store's records alone.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pilot_proto::beacon::server::{BeaconServer, ServerConfig as BeaconConfig};
use pilot_proto::registry::codec::{
    PUSH_HANDSHAKE, PUSH_TRUST_REVOKED, Response, decode_frame, decode_request, encode_response,
    frame_vec,
};
use pilot_proto::registry::limits::MAX_FRAME_LEN;
use pilot_proto::registry::records::{ChangeSet, Loader};
use pilot_proto::registry::server::{
    Config as RegistryConfig, Effect, Notification, Registry, State,
};
use pilot_proto::time::{Instant, UnixTime};

use crate::node::{SimNode, Transmit};
use crate::tcp::{self, Kind, Segment, TcpEnd, TcpState};

/// The endpoint of the (single) rendezvous of a simulated network. A label.
pub const RENDEZVOUS_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)), 9000);

/// The beacon's observer address (`spec/beacon.md` §3.7) in networks
/// whose hosts use it ([`crate::net::Net::with_nats`]). A label.
pub const OBSERVER_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2)), 9001);

/// Unix time of virtual time zero, in seconds (2026-01-01T00:00:00Z). The
/// registry reads its instants as Unix time; the simulator's clock starts
/// at zero, so the rendezvous adds this and daemons are told the same.
pub const UNIX_SECS_AT_ZERO: u64 = 1_767_225_600;

/// The registry's wall-clock time for virtual time `now`.
pub fn registry_time(now: Instant) -> UnixTime {
    UnixTime::of_instant(UnixTime::from_secs(UNIX_SECS_AT_ZERO), now)
}

/// The virtual time of the registry's wall-clock time `t` (its timer).
pub fn virtual_time(t: UnixTime) -> Instant {
    Instant::from_nanos(
        t.saturating_duration_since(registry_time(Instant::ZERO))
            .as_nanos()
            .try_into()
            .unwrap_or(u64::MAX),
    )
}

/// The durable store: encoded record keys and values, as a real store
/// holds them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordDisk {
    /// Key bytes to value bytes.
    pub records: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Change sets committed.
    pub commits: u64,
}

impl RecordDisk {
    fn apply(&mut self, set: ChangeSet) {
        if set.is_empty() {
            return;
        }
        if set.replace_all {
            self.records.clear();
        }
        for (k, v) in set.writes {
            match v {
                Some(v) => self.records.insert(k, v),
                None => self.records.remove(&k),
            };
        }
        self.commits += 1;
    }

    /// The state the records describe (loaded in key order, as a store
    /// does at start-up).
    pub fn load(&self, now: Instant) -> Result<State, String> {
        let mut l = Loader::new(registry_time(now));
        for (k, v) in &self.records {
            l.add(k, v).map_err(|e| e.to_string())?;
        }
        Ok(l.finish())
    }
}

/// One registry connection.
struct ServerConn {
    tcp: TcpEnd,
    inbuf: Vec<u8>,
}

/// Counters of a rendezvous.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Registry requests handled.
    pub requests: u64,
    /// Requests that could not be decoded (answered with an error).
    pub bad_requests: u64,
    /// Push frames sent.
    pub pushes: u64,
    /// Segments refused (no such connection, or down).
    pub refused: u64,
    /// Connections accepted.
    pub accepted: u64,
}

/// What a rendezvous reports to the scenario.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum RendezvousEvent {
    /// A registry connection failed (reset or timed out).
    ConnectionLost(SocketAddr),
    /// The store could not be loaded at a restore (the registry then
    /// starts empty, which a scenario will notice).
    LoadFailed(String),
}

/// The rendezvous node. See the module docs.
pub struct Rendezvous {
    cfg: RegistryConfig,
    registry: Option<Registry>,
    beacon: BeaconServer,
    /// The durable store (survives [`Rendezvous::crash`]).
    pub disk: RecordDisk,
    conns: BTreeMap<(SocketAddr, u32), ServerConn>,
    push_conn: BTreeMap<u32, (SocketAddr, u32)>,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<RendezvousEvent>,
    /// Counters.
    pub stats: RendezvousStats,
}

impl Rendezvous {
    /// A fresh rendezvous (empty store) at `now`.
    pub fn new(cfg: RegistryConfig, now: Instant) -> Self {
        let registry = Registry::new(cfg.clone(), registry_time(now));
        let mut r = Self::with(cfg, Some(registry), RecordDisk::default(), now);
        // The backbone network a fresh state starts with is durable too.
        if let Some(reg) = r.registry.as_ref() {
            if let Ok(set) = ChangeSet::full(reg.state()) {
                r.disk.apply(set);
            }
        }
        r
    }

    /// A rendezvous restarted from `disk` at `now`.
    pub fn restore(cfg: RegistryConfig, disk: RecordDisk, now: Instant) -> Self {
        let mut events = VecDeque::new();
        let state = match disk.load(now) {
            Ok(s) => s,
            Err(e) => {
                events.push_back(RendezvousEvent::LoadFailed(e));
                State::new(registry_time(now))
            }
        };
        let registry = Registry::from_state(cfg.clone(), state, registry_time(now));
        let mut r = Self::with(cfg, Some(registry), disk, now);
        r.events = events;
        r
    }

    fn with(
        cfg: RegistryConfig,
        registry: Option<Registry>,
        disk: RecordDisk,
        now: Instant,
    ) -> Self {
        Rendezvous {
            cfg,
            registry,
            beacon: BeaconServer::new(BeaconConfig::default(), now),
            disk,
            conns: BTreeMap::new(),
            push_conn: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: RendezvousStats::default(),
        }
    }

    /// The process dies: every connection is reset (the kernel closes the
    /// sockets), the store is kept, and until [`Rendezvous::restore`]
    /// replaces this node every segment is refused.
    pub fn crash(&mut self) {
        for c in self.conns.values_mut() {
            c.tcp.reset();
            while let Some(t) = c.tcp.poll_transmit() {
                self.out.push_back(t);
            }
        }
        self.conns.clear();
        self.push_conn.clear();
        self.registry = None;
    }

    /// Whether the registry is running.
    pub fn is_up(&self) -> bool {
        self.registry.is_some()
    }

    /// The registry configuration.
    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// The registry, while up.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.as_ref()
    }

    /// Open registry connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn on_segment(&mut self, now: Instant, from: SocketAddr, seg: &Segment<'_>) {
        let key = (from, seg.conn);
        if self.registry.is_none() {
            if seg.kind != Kind::Reset {
                self.stats.refused += 1;
                self.out.push_back((from, tcp::refuse(seg.conn)));
            }
            return;
        }
        if !self.conns.contains_key(&key) {
            match seg.kind {
                Kind::Syn => {
                    self.stats.accepted += 1;
                    let tcp = TcpEnd::accept(now, from, seg.conn);
                    self.conns.insert(
                        key,
                        ServerConn {
                            tcp,
                            inbuf: Vec::new(),
                        },
                    );
                }
                Kind::Reset => {}
                _ => {
                    self.stats.refused += 1;
                    self.out.push_back((from, tcp::refuse(seg.conn)));
                }
            }
        } else if let Some(c) = self.conns.get_mut(&key) {
            c.tcp.handle(now, seg);
        }
        self.serve(now, key);
    }

    /// Reads complete requests of one connection and answers them.
    fn serve(&mut self, now: Instant, key: (SocketAddr, u32)) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let fresh = c.tcp.read();
        c.inbuf.extend_from_slice(&fresh);
        let mut start = 0;
        let mut frames = Vec::new();
        let mut broken = false;
        loop {
            match decode_frame(c.inbuf.get(start..).unwrap_or(&[]), MAX_FRAME_LEN) {
                Ok(Some((payload, used))) => {
                    frames.push(payload.to_vec());
                    start += used;
                }
                Ok(None) => break,
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        c.inbuf.drain(..start.min(c.inbuf.len()));
        for payload in frames {
            let reply = self.request(now, key, &payload);
            if let Some(c) = self.conns.get_mut(&key) {
                c.tcp.write(now, &reply);
            }
        }
        if broken {
            if let Some(c) = self.conns.get_mut(&key) {
                c.tcp.reset();
            }
        }
        self.collect(key);
    }

    fn request(&mut self, now: Instant, key: (SocketAddr, u32), payload: &[u8]) -> Vec<u8> {
        self.stats.requests += 1;
        let Some(reg) = self.registry.as_mut() else {
            return Vec::new();
        };
        let response = match decode_request(payload) {
            Ok(req) => {
                let reply = reg.handle(registry_time(now), key.0, req);
                self.effects(now, Some(key), reply.effects);
                reply.response
            }
            Err(e) => {
                self.stats.bad_requests += 1;
                Response::Error {
                    error: e.to_string(),
                }
            }
        };
        encode_response(&response)
            .ok()
            .and_then(|j| frame_vec(&j).ok())
            .unwrap_or_default()
    }

    /// Persists the changes (at once: the reply that follows may reveal
    /// them), then binds and sends pushes.
    fn effects(&mut self, now: Instant, conn: Option<(SocketAddr, u32)>, effects: Vec<Effect>) {
        let changes: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Persist(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        if !changes.is_empty() {
            if let Some(reg) = self.registry.as_ref() {
                if let Ok(set) = ChangeSet::from_changes(reg.state(), &changes) {
                    self.disk.apply(set);
                }
            }
        }
        for e in effects {
            match e {
                Effect::Persist(_) | Effect::Notify(Notification::Invite { .. }) => {}
                Effect::PushWanted(node) => {
                    if let Some(k) = conn {
                        self.push_conn.insert(node, k);
                    }
                }
                Effect::Notify(
                    Notification::HandshakeRequest { to, from }
                    | Notification::HandshakeResponse { to, from, .. },
                ) => {
                    self.beacon.notify_handshake(now, to);
                    self.push(now, to, PUSH_HANDSHAKE, from);
                }
                Effect::Notify(Notification::TrustRevoked { to, from }) => {
                    self.push(now, to, PUSH_TRUST_REVOKED, from);
                }
            }
        }
    }

    fn push(&mut self, now: Instant, to: u32, kind: &str, from: u32) {
        let Some(&key) = self.push_conn.get(&to) else {
            return;
        };
        let msg = Response::Push {
            kind: kind.to_owned(),
            from,
        };
        let Some(frame) = encode_response(&msg).ok().and_then(|j| frame_vec(&j).ok()) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            self.stats.pushes += 1;
            c.tcp.write(now, &frame);
            self.collect(key);
        }
    }

    /// Moves a connection's segments to the output; forgets it if failed.
    fn collect(&mut self, key: (SocketAddr, u32)) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while let Some(t) = c.tcp.poll_transmit() {
            self.out.push_back(t);
        }
        if c.tcp.state() == TcpState::Failed {
            self.conns.remove(&key);
            self.push_conn.retain(|_, k| *k != key);
            self.events
                .push_back(RendezvousEvent::ConnectionLost(key.0));
        }
    }
}

impl SimNode for Rendezvous {
    type Event = RendezvousEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Some(seg) = Segment::decode(bytes) {
            self.on_segment(now, from, &seg);
        } else if self.registry.is_some() {
            self.beacon.handle_datagram(now, from, bytes);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(reg) = self.registry.as_mut() {
            let effects = reg.handle_timeout(registry_time(now));
            self.effects(now, None, effects);
            self.beacon.handle_timeout(now);
        }
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            if let Some(c) = self.conns.get_mut(&k) {
                c.tcp.handle_timeout(now);
            }
            self.collect(k);
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((dst, bytes)) = self.out.pop_front() {
            let dst_buf = buf.get_mut(..bytes.len())?;
            dst_buf.copy_from_slice(&bytes);
            return Some(Transmit {
                dst,
                len: bytes.len(),
            });
        }
        if self.registry.is_some() {
            let t = self.beacon.poll_transmit(now, buf)?;
            return Some(Transmit {
                dst: t.dst,
                len: t.len,
            });
        }
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let reg = self
            .registry
            .as_ref()
            .and_then(|r| r.poll_timeout())
            .map(virtual_time);
        let beacon = self
            .registry
            .is_some()
            .then(|| self.beacon.poll_timeout())
            .flatten();
        let conns = self.conns.values().filter_map(|c| c.tcp.poll_timeout());
        reg.into_iter().chain(beacon).chain(conns).min()
    }

    fn poll_event(&mut self) -> Option<RendezvousEvent> {
        self.events.pop_front()
    }
}
