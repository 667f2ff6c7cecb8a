//! The beacon server's state machine (`spec/beacon.md` §3).
//!
//! [`BeaconServer`] answers discovers with the observed endpoint, records
//! `node → endpoint`, coordinates hole punches, relays tunnel frames to
//! registered endpoints (or one hop on to a peer beacon that announced the
//! node), gossips its node list to peer beacons and sends notifies on
//! behalf of the registry.
//!
//! Bounds (all in [`ServerConfig`]): tracked nodes (new nodes refused when
//! full; stale ones swept every [`NODE_SWEEP_INTERVAL`]), rate buckets (new
//! sources refused when full; idle, refilled buckets swept every second),
//! peer beacons and their node lists, and the output queue (datagrams and
//! bytes; newest dropped when full). Maps are `BTreeMap`s: ordered, so runs
//! are reproducible, and immune to hash flooding.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::{Signature, VerifyingKey};

use super::{
    GOSSIP_INTERVAL, MAX_NODES, MAX_SYNC_NODES_PER_DATAGRAM, NODE_TTL, PEER_LIST_TTL,
    RELAY_RATE_PER_SEC, Transmit, same_endpoint, wire_endpoint,
};
use crate::time::Instant;
use crate::wire::beacon::{
    BEACON_TYPE_LIMIT, BeaconMsg, MAX_RELAY_PAYLOAD, NOTIFY_HANDSHAKE, NodeIds, PunchGrant,
    punch_grant_message,
};

/// How often stale node entries and peer lists are swept (`spec/beacon.md`
/// §3.1). Lookups never return stale entries in between.
pub const NODE_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often idle rate buckets are swept (`spec/beacon.md` §3.3).
pub const BUCKET_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sent-datagram buffers kept for reuse.
const SPARE_BUFFERS: usize = 256;
/// Largest buffer kept for reuse; buffers of bigger (rare, jumbo) datagrams
/// are freed.
const SPARE_BUFFER_MAX: usize = 2048;

/// Most node IDs waiting in [`BeaconServer::poll_recorded`]'s queue.
pub const MAX_RECORDED: usize = 4096;
/// Most punches forwarded to peer beacons and awaiting their answer.
pub const MAX_PEER_PUNCHES: usize = 1024;
/// How long a forwarded punch waits for the peer beacon's answer.
pub const PEER_PUNCH_TTL: Duration = Duration::from_secs(3);

/// Token units per packet: buckets count in billionths of a packet so the
/// refill is exact in nanoseconds.
const TOKEN: u64 = 1_000_000_000;

/// Punch-grant checking (`spec/beacon.md` §3.2): when configured, a punch
/// request is served only with an unexpired grant signed by `issuer`.
#[derive(Clone, Debug)]
pub struct GrantPolicy {
    issuer: VerifyingKey,
    unix_secs_at_zero: u64,
}

/// The issuer key given to [`GrantPolicy::new`] is not a valid Ed25519 key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("punch-grant issuer key is not a valid Ed25519 public key")]
pub struct BadIssuerKey;

impl GrantPolicy {
    /// Trusts grants signed by `issuer`. Grant expiries are Unix seconds;
    /// `unix_secs_at_zero` is the Unix time at [`Instant::ZERO`], so the
    /// server can compare them with the `now` it is given.
    pub fn new(issuer: [u8; 32], unix_secs_at_zero: u64) -> Result<Self, BadIssuerKey> {
        let issuer = VerifyingKey::from_bytes(&issuer).map_err(|_| BadIssuerKey)?;
        Ok(GrantPolicy {
            issuer,
            unix_secs_at_zero,
        })
    }

    /// Whether `grant` allows `requester` to punch towards `target` at `now`.
    fn allows(&self, now: Instant, requester: u32, target: u32, grant: Option<PunchGrant>) -> bool {
        let Some(grant) = grant else {
            return false;
        };
        let unix_now = self
            .unix_secs_at_zero
            .saturating_add(now.as_nanos() / 1_000_000_000);
        if grant.expiry < unix_now {
            return false;
        }
        let text = punch_grant_message(requester, target, grant.expiry);
        let sig = Signature::from_bytes(&grant.signature);
        self.issuer.verify_strict(text.as_bytes(), &sig).is_ok()
    }
}

/// Limits and identity of a beacon server. `Default` gives the protocol
/// defaults of `spec/beacon.md` §3.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This beacon's ID, sent in sync messages.
    pub beacon_id: u32,
    /// Most node endpoints tracked at once.
    pub max_nodes: usize,
    /// How long an endpoint stays valid without a refresh.
    pub node_ttl: Duration,
    /// Packets per second (and burst) each source may have served; 0 serves
    /// nothing.
    pub rate_per_sec: u32,
    /// Most sources with a live rate bucket.
    pub max_rate_sources: usize,
    /// Most datagrams waiting in the output queue.
    pub max_queue_datagrams: usize,
    /// Most bytes waiting in the output queue.
    pub max_queue_bytes: usize,
    /// Most peer beacons.
    pub max_peers: usize,
    /// How long a peer beacon's node list is used without a fresh sync.
    pub peer_list_ttl: Duration,
    /// How often the node list is sent to peer beacons.
    pub gossip_interval: Duration,
    /// Most node IDs in one outgoing sync.
    pub max_sync_nodes: usize,
    /// Punch-grant checking; `None` (the default) serves every punch request.
    pub grant: Option<GrantPolicy>,
    /// Queue the IDs of the nodes each discover and punch request records,
    /// for [`BeaconServer::poll_recorded`] (the driver writes "this node
    /// uses this beacon" to the shared state, `spec/beacon.md` §3.8). Off by
    /// default.
    pub report_recorded: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            beacon_id: 0,
            max_nodes: MAX_NODES,
            node_ttl: NODE_TTL,
            rate_per_sec: RELAY_RATE_PER_SEC,
            max_rate_sources: 65_536,
            max_queue_datagrams: 4096,
            max_queue_bytes: 8 << 20,
            max_peers: 64,
            peer_list_ttl: PEER_LIST_TTL,
            gossip_interval: GOSSIP_INTERVAL,
            max_sync_nodes: MAX_SYNC_NODES_PER_DATAGRAM,
            grant: None,
            report_recorded: false,
        }
    }
}

/// Counters of what the server did and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Datagrams handed to [`BeaconServer::handle_datagram`].
    pub received: u64,
    /// Datagrams that were not a beacon message.
    pub malformed: u64,
    /// Well-formed messages a beacon does not act on (replies, deliveries,
    /// sync from a non-peer).
    pub ignored: u64,
    /// Datagrams refused by a source's rate bucket or because the rate
    /// table was full.
    pub rate_limited: u64,
    /// New nodes not recorded because the node table was full.
    pub table_full: u64,
    /// Punch requests refused by the grant policy.
    pub grant_refused: u64,
    /// Punch requests and relays for a node nobody knows.
    pub unknown_destination: u64,
    /// Relays whose inner frame exceeds 65535 bytes.
    pub oversized: u64,
    /// Relays whose inner frame is a beacon message.
    pub nested: u64,
    /// Relays handed to a peer beacon.
    pub forwarded: u64,
    /// Relays delivered to a registered endpoint.
    pub delivered: u64,
    /// Inner-frame bytes of the relays delivered or forwarded.
    pub relayed_bytes: u64,
    /// Outputs dropped because the queue was full.
    pub queue_full: u64,
    /// Outputs dropped because the caller's buffer was too small.
    pub buffer_too_small: u64,
    /// Punch requests handed to the peer beacon that serves the target.
    pub punches_forwarded: u64,
    /// Recorded node IDs dropped because the report queue was full.
    pub recorded_dropped: u64,
}

/// A node's registration.
#[derive(Clone, Copy, Debug)]
struct NodeEntry {
    endpoint: SocketAddr,
    last_seen: Instant,
    /// Registered with discover-ex (0x08): deliveries use 0x09.
    wants_dest: bool,
}

/// A token bucket, in [`TOKEN`] units.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: u64,
    last: Instant,
}

/// A peer beacon and the nodes it last announced.
#[derive(Clone, Debug)]
struct PeerBeacon {
    addr: SocketAddr,
    nodes: BTreeSet<u32>,
    last_sync: Option<Instant>,
}

/// An encoded datagram waiting to be polled.
#[derive(Clone, Debug)]
struct Queued {
    dst: SocketAddr,
    bytes: Vec<u8>,
}

/// The beacon state machine (`spec/beacon.md` §3).
#[derive(Debug)]
pub struct BeaconServer {
    cfg: ServerConfig,
    nodes: BTreeMap<u32, NodeEntry>,
    buckets: BTreeMap<SocketAddr, Bucket>,
    peers: Vec<PeerBeacon>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    /// Buffers of sent datagrams, reused so steady relaying does not
    /// allocate; at most [`SPARE_BUFFERS`].
    spare: Vec<Vec<u8>>,
    next_node_sweep: Instant,
    next_bucket_sweep: Instant,
    next_gossip: Instant,
    stats: ServerStats,
    /// Nodes recorded since the driver last drained them (only with
    /// `report_recorded`), at most [`MAX_RECORDED`].
    recorded: VecDeque<u32>,
    /// Punches forwarded to a peer beacon: (sent at, requester, target,
    /// peer address), oldest first, at most [`MAX_PEER_PUNCHES`].
    peer_punches: VecDeque<(Instant, u32, u32, SocketAddr)>,
}

impl BeaconServer {
    /// A server with no nodes and no peers, started at `now`.
    pub fn new(cfg: ServerConfig, now: Instant) -> Self {
        BeaconServer {
            next_node_sweep: now + NODE_SWEEP_INTERVAL,
            next_bucket_sweep: now + BUCKET_SWEEP_INTERVAL,
            next_gossip: now + cfg.gossip_interval,
            cfg,
            nodes: BTreeMap::new(),
            buckets: BTreeMap::new(),
            peers: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            spare: Vec::new(),
            stats: ServerStats::default(),
            recorded: VecDeque::new(),
            peer_punches: VecDeque::new(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    /// Number of node entries held (some may be stale until the next sweep).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of peer beacons configured.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The live endpoint registered for `node`, if any.
    pub fn endpoint_of(&self, node: u32, now: Instant) -> Option<SocketAddr> {
        self.live(node, now).map(|e| e.endpoint)
    }

    /// Replaces the set of peer beacons (static configuration or the
    /// registry's beacon list). Node lists of peers that stay are kept;
    /// at most `max_peers` are used.
    pub fn set_peers(&mut self, addrs: &[SocketAddr]) {
        let mut old = core::mem::take(&mut self.peers);
        for &addr in addrs.iter().take(self.cfg.max_peers) {
            if self.peers.iter().any(|p| same_endpoint(p.addr, addr)) {
                continue;
            }
            let kept = old
                .iter()
                .position(|p| same_endpoint(p.addr, addr))
                .map(|i| old.swap_remove(i));
            self.peers.push(kept.unwrap_or(PeerBeacon {
                addr,
                nodes: BTreeSet::new(),
                last_sync: None,
            }));
        }
    }

    /// The next node ID a discover or punch request recorded (only with
    /// [`ServerConfig::report_recorded`]); IDs repeat as nodes refresh.
    pub fn poll_recorded(&mut self) -> Option<u32> {
        self.recorded.pop_front()
    }

    /// Handles one datagram received from `from` (`spec/beacon.md` §3.2).
    /// A beacon that shares its nodes' whereabouts with other beacons uses
    /// [`BeaconServer::handle_datagram_located`] instead.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        self.handle_datagram_located(now, from, bytes, &mut |_| None);
    }

    /// [`BeaconServer::handle_datagram`] with `locate`, which names the
    /// beacon the shared state says a node uses (`spec/beacon.md` §3.8). A
    /// punch request or relay whose target is not served here goes to that
    /// beacon if it is one of the configured peers.
    pub fn handle_datagram_located(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        locate: &mut dyn FnMut(u32) -> Option<SocketAddr>,
    ) {
        self.stats.received += 1;
        let Ok(msg) = BeaconMsg::decode(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let peer = self.peers.iter().position(|p| same_endpoint(p.addr, from));
        match msg {
            BeaconMsg::Sync { beacon_id, nodes } => match peer {
                Some(i) if beacon_id != self.cfg.beacon_id || beacon_id == 0 => {
                    self.apply_sync(now, i, nodes);
                }
                _ => self.stats.ignored += 1,
            },
            BeaconMsg::Relay {
                destination,
                sender,
                inner,
            } => {
                if inner.len() > MAX_RELAY_PAYLOAD {
                    self.stats.oversized += 1;
                    return;
                }
                // Only tunnel frames are relayed: a wrapped beacon message
                // would reach the destination as if the beacon sent it.
                if inner.first().is_none_or(|&b| b < BEACON_TYPE_LIMIT) {
                    self.stats.nested += 1;
                    return;
                }
                // Peer beacons are trusted to have rate-limited their own
                // sources; everyone else pays a token per relay.
                if peer.is_none() && !self.take_token(now, from) {
                    return;
                }
                self.relay(
                    now,
                    peer.is_some(),
                    bytes,
                    (sender, destination, inner),
                    locate,
                );
            }
            BeaconMsg::Discover { node, .. } | BeaconMsg::DiscoverEx { node, .. } => {
                if !self.take_token(now, from) {
                    return;
                }
                let wants_dest = matches!(msg, BeaconMsg::DiscoverEx { .. });
                self.record(now, node, from, Some(wants_dest));
                let endpoint = wire_endpoint(from);
                self.push(from, &BeaconMsg::DiscoverReply { endpoint });
            }
            BeaconMsg::PunchRequest {
                requester,
                target,
                grant,
            } => {
                if !self.take_token(now, from) {
                    return;
                }
                if let Some(policy) = &self.cfg.grant {
                    if !policy.allows(now, requester, target, grant) {
                        self.stats.grant_refused += 1;
                        return;
                    }
                }
                self.record(now, requester, from, None);
                let Some(target_ep) = self.live(target, now).map(|e| e.endpoint) else {
                    self.forward_punch(now, requester, target, from, locate);
                    return;
                };
                self.push(
                    from,
                    &BeaconMsg::PunchCommand {
                        endpoint: wire_endpoint(target_ep),
                    },
                );
                let endpoint = wire_endpoint(from);
                self.push(target_ep, &BeaconMsg::PunchCommand { endpoint });
            }
            BeaconMsg::PeerPunch {
                answer,
                requester,
                target,
                endpoint,
            } => match peer {
                Some(_) if answer => self.peer_punch_answer(now, from, requester, target, endpoint),
                Some(_) => self.peer_punch(now, from, requester, target, endpoint),
                None => self.stats.ignored += 1,
            },
            BeaconMsg::DiscoverReply { .. }
            | BeaconMsg::PunchCommand { .. }
            | BeaconMsg::RelayDeliver { .. }
            | BeaconMsg::RelayDeliverTo { .. }
            | BeaconMsg::Notify { .. } => self.stats.ignored += 1,
        }
    }

    /// Tells `node` that the registry holds a relayed handshake for it
    /// (notify 0x0A, `spec/beacon.md` §3.5). Returns whether the node has a
    /// live endpoint (and so whether a notify was queued).
    pub fn notify_handshake(&mut self, now: Instant, node: u32) -> bool {
        let Some(ep) = self.live(node, now).map(|e| e.endpoint) else {
            return false;
        };
        self.push(
            ep,
            &BeaconMsg::Notify {
                kind: NOTIFY_HANDSHAKE,
            },
        )
    }

    /// Runs the timers that are due: sweeps and gossip.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_bucket_sweep {
            self.next_bucket_sweep = now + BUCKET_SWEEP_INTERVAL;
            // A bucket idle for a full refill period is full again and
            // carries no information.
            let refill = Duration::from_secs(1);
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < refill);
        }
        if now >= self.next_node_sweep {
            self.next_node_sweep = now + NODE_SWEEP_INTERVAL;
            let ttl = self.cfg.node_ttl;
            self.nodes
                .retain(|_, e| now.saturating_duration_since(e.last_seen) < ttl);
            let peer_ttl = self.cfg.peer_list_ttl;
            for p in &mut self.peers {
                if p.last_sync
                    .is_some_and(|t| now.saturating_duration_since(t) >= peer_ttl)
                {
                    p.nodes.clear();
                    p.last_sync = None;
                }
            }
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.cfg.gossip_interval;
            self.gossip(now);
        }
    }

    /// When [`BeaconServer::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |active: bool, at: Instant| {
            if active {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        consider(!self.buckets.is_empty(), self.next_bucket_sweep);
        consider(
            !self.nodes.is_empty() || self.peers.iter().any(|p| p.last_sync.is_some()),
            self.next_node_sweep,
        );
        consider(!self.peers.is_empty(), self.next_gossip);
        next
    }

    /// Writes the next queued datagram into `buf`. A datagram larger than
    /// `buf` is dropped (counted); a buffer of 65 544 bytes fits everything.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(q) = self.queue.pop_front() {
            let len = q.bytes.len();
            self.queued_bytes = self.queued_bytes.saturating_sub(len);
            let fits = match buf.get_mut(..len) {
                Some(dst) => {
                    dst.copy_from_slice(&q.bytes);
                    true
                }
                None => false,
            };
            self.recycle(q.bytes);
            if fits {
                return Some(Transmit { dst: q.dst, len });
            }
            self.stats.buffer_too_small += 1;
        }
        None
    }

    /// Number of datagrams waiting in the output queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The entry for `node` if it has not expired.
    fn live(&self, node: u32, now: Instant) -> Option<&NodeEntry> {
        self.nodes
            .get(&node)
            .filter(|e| now.saturating_duration_since(e.last_seen) < self.cfg.node_ttl)
    }

    /// Records `node → from`. `wants_dest` is `Some` for discovers (which
    /// say whether 0x09 is wanted) and `None` for punch requests (which keep
    /// the flag if the endpoint did not change). Node 0 is never recorded.
    fn record(&mut self, now: Instant, node: u32, from: SocketAddr, wants_dest: Option<bool>) {
        if node == 0 {
            return;
        }
        if self.cfg.report_recorded {
            if self.recorded.len() < MAX_RECORDED {
                self.recorded.push_back(node);
            } else {
                self.stats.recorded_dropped += 1;
            }
        }
        let len = self.nodes.len();
        match self.nodes.get_mut(&node) {
            Some(e) => {
                let keep = e.wants_dest && e.endpoint == from;
                e.wants_dest = wants_dest.unwrap_or(keep);
                e.endpoint = from;
                e.last_seen = now;
            }
            None if len >= self.cfg.max_nodes => self.stats.table_full += 1,
            None => {
                self.nodes.insert(
                    node,
                    NodeEntry {
                        endpoint: from,
                        last_seen: now,
                        wants_dest: wants_dest.unwrap_or(false),
                    },
                );
                // A node now served here is no longer routed via a peer.
                for p in &mut self.peers {
                    p.nodes.remove(&node);
                }
            }
        }
    }

    /// Takes one token from `from`'s bucket; false (counted) if empty or if
    /// the bucket table is full.
    fn take_token(&mut self, now: Instant, from: SocketAddr) -> bool {
        let cap = u64::from(self.cfg.rate_per_sec).saturating_mul(TOKEN);
        let tracked = self.buckets.len();
        let ok = match self.buckets.get_mut(&from) {
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.last).as_nanos();
                let refill = elapsed.saturating_mul(u128::from(self.cfg.rate_per_sec));
                let refill = u64::try_from(refill).unwrap_or(u64::MAX);
                b.tokens = b.tokens.saturating_add(refill).min(cap);
                b.last = now;
                if b.tokens >= TOKEN {
                    b.tokens -= TOKEN;
                    true
                } else {
                    false
                }
            }
            None if tracked >= self.cfg.max_rate_sources => false,
            None if cap < TOKEN => false,
            None => {
                self.buckets.insert(
                    from,
                    Bucket {
                        tokens: cap - TOKEN,
                        last: now,
                    },
                );
                true
            }
        };
        if !ok {
            self.stats.rate_limited += 1;
        }
        ok
    }

    /// Routes a relay: to the destination's endpoint if registered here,
    /// else (only if it did not come from a peer beacon) unchanged to a
    /// peer beacon that announced the destination.
    fn relay(
        &mut self,
        now: Instant,
        from_peer: bool,
        raw: &[u8],
        (sender, destination, inner): (u32, u32, &[u8]),
        locate: &mut dyn FnMut(u32) -> Option<SocketAddr>,
    ) {
        if let Some(e) = self.live(destination, now).copied() {
            let msg = if e.wants_dest {
                BeaconMsg::RelayDeliverTo {
                    source: sender,
                    destination,
                    inner,
                }
            } else {
                BeaconMsg::RelayDeliver {
                    source: sender,
                    inner,
                }
            };
            if self.push(e.endpoint, &msg) {
                self.stats.delivered += 1;
                self.stats.relayed_bytes += inner.len() as u64;
            }
            return;
        }
        let ttl = self.cfg.peer_list_ttl;
        let via = (!from_peer)
            .then(|| {
                self.peers.iter().find(|p| {
                    p.last_sync
                        .is_some_and(|t| now.saturating_duration_since(t) < ttl)
                        && p.nodes.contains(&destination)
                })
            })
            .flatten()
            .map(|p| p.addr)
            .or_else(|| {
                (!from_peer)
                    .then(|| self.located_peer(destination, locate))
                    .flatten()
            });
        match via {
            Some(addr) => {
                if self.push_raw(addr, raw) {
                    self.stats.forwarded += 1;
                    self.stats.relayed_bytes += inner.len() as u64;
                }
            }
            None => self.stats.unknown_destination += 1,
        }
    }

    /// The configured peer beacon that `locate` says serves `node`, if any
    /// (never this beacon: only configured peers qualify).
    fn located_peer(
        &self,
        node: u32,
        locate: &mut dyn FnMut(u32) -> Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let at = locate(node)?;
        self.peers
            .iter()
            .find(|p| same_endpoint(p.addr, at))
            .map(|p| p.addr)
    }

    /// A punch request for a target not served here: hand it to the peer
    /// beacon that serves the target (0x0E) and remember it, so that
    /// beacon's answer (0x0F) reaches the requester.
    fn forward_punch(
        &mut self,
        now: Instant,
        requester: u32,
        target: u32,
        from: SocketAddr,
        locate: &mut dyn FnMut(u32) -> Option<SocketAddr>,
    ) {
        let Some(peer) = self.located_peer(target, locate) else {
            self.stats.unknown_destination += 1;
            return;
        };
        self.expire_peer_punches(now);
        if self.peer_punches.len() >= MAX_PEER_PUNCHES {
            self.stats.queue_full += 1;
            return;
        }
        let msg = BeaconMsg::PeerPunch {
            answer: false,
            requester,
            target,
            endpoint: wire_endpoint(from),
        };
        if self.push(peer, &msg) {
            self.peer_punches.push_back((now, requester, target, peer));
            self.stats.punches_forwarded += 1;
        }
    }

    /// A peer beacon forwards a punch (0x0E): command our target to punch
    /// towards the requester and answer with the target's endpoint.
    fn peer_punch(
        &mut self,
        now: Instant,
        from: SocketAddr,
        requester: u32,
        target: u32,
        endpoint: SocketAddr,
    ) {
        let Some(target_ep) = self.live(target, now).map(|e| e.endpoint) else {
            self.stats.unknown_destination += 1;
            return;
        };
        self.push(target_ep, &BeaconMsg::PunchCommand { endpoint });
        let answer = BeaconMsg::PeerPunch {
            answer: true,
            requester,
            target,
            endpoint: wire_endpoint(target_ep),
        };
        self.push(from, &answer);
    }

    /// A peer beacon answers a punch we forwarded (0x0F): pass the target's
    /// endpoint to the requester. Unasked answers are ignored.
    fn peer_punch_answer(
        &mut self,
        now: Instant,
        from: SocketAddr,
        requester: u32,
        target: u32,
        endpoint: SocketAddr,
    ) {
        self.expire_peer_punches(now);
        let asked = self
            .peer_punches
            .iter()
            .position(|&(_, r, t, p)| r == requester && t == target && same_endpoint(p, from));
        let Some(i) = asked else {
            self.stats.ignored += 1;
            return;
        };
        self.peer_punches.remove(i);
        let Some(requester_ep) = self.live(requester, now).map(|e| e.endpoint) else {
            self.stats.unknown_destination += 1;
            return;
        };
        self.push(requester_ep, &BeaconMsg::PunchCommand { endpoint });
    }

    /// Forgets forwarded punches older than [`PEER_PUNCH_TTL`].
    fn expire_peer_punches(&mut self, now: Instant) {
        while self
            .peer_punches
            .front()
            .is_some_and(|&(at, ..)| now.saturating_duration_since(at) >= PEER_PUNCH_TTL)
        {
            self.peer_punches.pop_front();
        }
    }

    /// Replaces peer `i`'s node list with the listed nodes not served here.
    fn apply_sync(&mut self, now: Instant, i: usize, nodes: NodeIds<'_>) {
        let ttl = self.cfg.node_ttl;
        let local = &self.nodes;
        let is_local = |n: &u32| {
            local
                .get(n)
                .is_some_and(|e| now.saturating_duration_since(e.last_seen) < ttl)
        };
        let Some(p) = self.peers.get_mut(i) else {
            return;
        };
        p.nodes.clear();
        p.nodes
            .extend(nodes.iter().filter(|n| *n != 0 && !is_local(n)));
        p.last_sync = Some(now);
    }

    /// Sends the live local node list to every peer beacon.
    fn gossip(&mut self, now: Instant) {
        if self.peers.is_empty() {
            return;
        }
        let max = self.cfg.max_sync_nodes.min(MAX_SYNC_NODES_PER_DATAGRAM);
        let ttl = self.cfg.node_ttl;
        let ids: Vec<u8> = self
            .nodes
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) < ttl)
            .take(max)
            .flat_map(|(id, _)| id.to_be_bytes())
            .collect();
        let Some(nodes) = NodeIds::from_be_bytes(&ids) else {
            return;
        };
        let msg = BeaconMsg::Sync {
            beacon_id: self.cfg.beacon_id,
            nodes,
        };
        let mut bytes = vec![0u8; msg.encoded_len()];
        if msg.encode(&mut bytes).is_err() {
            return;
        }
        let addrs: Vec<SocketAddr> = self.peers.iter().map(|p| p.addr).collect();
        for addr in addrs {
            self.push_raw(addr, &bytes);
        }
    }

    /// Encodes and queues `msg` for `dst`; false (counted) if it could not.
    fn push(&mut self, dst: SocketAddr, msg: &BeaconMsg<'_>) -> bool {
        let len = msg.encoded_len();
        if !self.has_room(len) {
            return false;
        }
        let mut bytes = self.buffer();
        bytes.resize(len, 0);
        if msg.encode(&mut bytes).is_err() {
            self.recycle(bytes);
            return false;
        }
        self.enqueue(dst, bytes);
        true
    }

    /// Queues `bytes` unchanged for `dst`; false (counted) if full.
    fn push_raw(&mut self, dst: SocketAddr, bytes: &[u8]) -> bool {
        if !self.has_room(bytes.len()) {
            return false;
        }
        let mut owned = self.buffer();
        owned.extend_from_slice(bytes);
        self.enqueue(dst, owned);
        true
    }

    /// An empty buffer, reused if one is spare.
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b
    }

    /// Keeps a sent datagram's buffer for reuse, up to [`SPARE_BUFFERS`]
    /// of them and only if it is not oversized.
    fn recycle(&mut self, b: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && b.capacity() <= SPARE_BUFFER_MAX {
            self.spare.push(b);
        }
    }

    /// Whether a datagram of `len` bytes fits the queue's bounds.
    fn has_room(&mut self, len: usize) -> bool {
        let ok = self.queue.len() < self.cfg.max_queue_datagrams
            && self.queued_bytes.saturating_add(len) <= self.cfg.max_queue_bytes;
        if !ok {
            self.stats.queue_full += 1;
        }
        ok
    }

    /// Appends a datagram already checked by [`Self::has_room`].
    fn enqueue(&mut self, dst: SocketAddr, bytes: Vec<u8>) {
        self.queued_bytes += bytes.len();
        self.queue.push_back(Queued { dst, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn drain(s: &mut BeaconServer) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 70_000];
        let mut out = Vec::new();
        while let Some(tx) = s.poll_transmit(Instant::ZERO, &mut buf) {
            out.push((tx.dst, buf[..tx.len].to_vec()));
        }
        out
    }

    fn server() -> BeaconServer {
        BeaconServer::new(ServerConfig::default(), t(0))
    }

    fn discover(node: u32) -> Vec<u8> {
        let mut b = vec![0x01];
        b.extend_from_slice(&node.to_be_bytes());
        b
    }

    fn relay(sender: u32, dest: u32, inner: &[u8]) -> Vec<u8> {
        let mut b = vec![0x05];
        b.extend_from_slice(&sender.to_be_bytes());
        b.extend_from_slice(&dest.to_be_bytes());
        b.extend_from_slice(inner);
        b
    }

    #[test]
    fn discover_replies_with_observed_v4_and_v6_endpoints() {
        let mut s = server();
        let a = ep("203.0.113.7:40000");
        s.handle_datagram(t(0), a, &discover(5));
        assert_eq!(
            drain(&mut s),
            vec![(a, vec![0x02, 4, 203, 0, 113, 7, 0x9c, 0x40])]
        );
        assert_eq!(s.endpoint_of(5, t(1)), Some(a));

        let b = ep("[2001:db8::1]:9001");
        s.handle_datagram(t(0), b, &discover(6));
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, b);
        let mut want = vec![0x02, 16, 0x20, 0x01, 0x0d, 0xb8];
        want.extend_from_slice(&[0; 11]);
        want.extend_from_slice(&[1, 0x23, 0x29]);
        assert_eq!(out[0].1, want);
        assert_eq!(s.endpoint_of(6, t(1)), Some(b));
    }

    #[test]
    fn ipv4_mapped_sources_are_reported_as_ipv4() {
        let mut s = server();
        let mapped = ep("[::ffff:203.0.113.7]:40000");
        s.handle_datagram(t(0), mapped, &discover(5));
        assert_eq!(
            drain(&mut s),
            vec![(mapped, vec![0x02, 4, 203, 0, 113, 7, 0x9c, 0x40])]
        );
    }

    #[test]
    fn node_zero_is_answered_but_not_recorded() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(0));
        assert_eq!(drain(&mut s).len(), 1);
        assert_eq!(s.node_count(), 0);
    }

    #[test]
    fn rediscover_moves_the_endpoint() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(5));
        s.handle_datagram(t(1000), ep("192.0.2.1:2"), &discover(5));
        assert_eq!(s.endpoint_of(5, t(1000)), Some(ep("192.0.2.1:2")));
    }

    #[test]
    fn punch_request_commands_both_sides() {
        let mut s = server();
        let five = ep("192.0.2.5:1000");
        let nine = ep("198.51.100.10:5000");
        s.handle_datagram(t(0), nine, &discover(9));
        drain(&mut s);
        s.handle_datagram(t(10), five, &[0x03, 0, 0, 0, 5, 0, 0, 0, 9]);
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![
                (five, vec![0x04, 4, 198, 51, 100, 10, 0x13, 0x88]),
                (nine, vec![0x04, 4, 192, 0, 2, 5, 0x03, 0xe8]),
            ]
        );
        // The requester's endpoint was recorded.
        assert_eq!(s.endpoint_of(5, t(10)), Some(five));
    }

    #[test]
    fn punch_to_unknown_target_is_dropped() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.5:1"), &[0x03, 0, 0, 0, 5, 0, 0, 0, 9]);
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().unknown_destination, 1);
    }

    #[test]
    fn relay_is_delivered_as_06_or_09() {
        let mut s = server();
        let nine = ep("192.0.2.9:9");
        let ten = ep("192.0.2.10:10");
        s.handle_datagram(t(0), nine, &discover(9));
        s.handle_datagram(t(0), ten, &[0x08, 0, 0, 0, 10]);
        assert_eq!(drain(&mut s).len(), 2, "discover-ex is answered too");
        let src = ep("192.0.2.5:5");
        s.handle_datagram(t(1), src, &relay(5, 9, b"PILSxyz"));
        s.handle_datagram(t(1), src, &relay(5, 10, b"PILSxyz"));
        let out = drain(&mut s);
        assert_eq!(out[0], (nine, b"\x06\x00\x00\x00\x05PILSxyz".to_vec()));
        assert_eq!(
            out[1],
            (ten, b"\x09\x00\x00\x00\x05\x00\x00\x00\x0aPILSxyz".to_vec())
        );
        // A plain discover switches node 10 back to 0x06.
        s.handle_datagram(t(2), ten, &discover(10));
        drain(&mut s);
        s.handle_datagram(t(3), src, &relay(5, 10, b"PILS"));
        assert_eq!(drain(&mut s)[0].1, b"\x06\x00\x00\x00\x05PILS");
        assert_eq!(s.stats().delivered, 3);
        assert_eq!(s.stats().relayed_bytes, 7 + 7 + 4, "inner bytes");
    }

    #[test]
    fn relay_to_unknown_or_oversized_is_dropped() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.9:9"), &discover(9));
        drain(&mut s);
        s.handle_datagram(t(0), ep("192.0.2.5:5"), &relay(5, 7, b"PILS"));
        assert!(drain(&mut s).is_empty());
        s.handle_datagram(
            t(0),
            ep("192.0.2.5:5"),
            &relay(5, 9, &[4, 4, 1, 2, 3, 4, 0, 1]),
        );
        assert!(drain(&mut s).is_empty(), "nested beacon message");
        assert_eq!(s.stats().nested, 1);
        let big = vec![0x50; MAX_RELAY_PAYLOAD + 1];
        s.handle_datagram(t(0), ep("192.0.2.5:5"), &relay(5, 9, &big));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().oversized, 1);
        let max = vec![0x50; MAX_RELAY_PAYLOAD];
        s.handle_datagram(t(0), ep("192.0.2.5:5"), &relay(5, 9, &max));
        assert_eq!(drain(&mut s)[0].1.len(), 5 + MAX_RELAY_PAYLOAD);
    }

    #[test]
    fn relay_rate_limit_per_source_refills_with_time() {
        let cfg = ServerConfig {
            rate_per_sec: 10,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        s.handle_datagram(t(0), ep("192.0.2.9:9"), &discover(9));
        drain(&mut s);
        let a = ep("192.0.2.5:5");
        let b = ep("192.0.2.6:6");
        for _ in 0..15 {
            s.handle_datagram(t(0), a, &relay(5, 9, b"PILS"));
        }
        assert_eq!(drain(&mut s).len(), 10, "burst is the rate");
        // Another source has its own bucket.
        s.handle_datagram(t(0), b, &relay(6, 9, b"PILS"));
        assert_eq!(drain(&mut s).len(), 1);
        // 300 ms later, 3 more tokens.
        for _ in 0..5 {
            s.handle_datagram(t(300), a, &relay(5, 9, b"PILS"));
        }
        assert_eq!(drain(&mut s).len(), 3);
        assert_eq!(s.stats().rate_limited, 7);
    }

    #[test]
    fn rate_table_is_bounded_and_swept() {
        let cfg = ServerConfig {
            max_rate_sources: 2,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        for port in 1..=3 {
            s.handle_datagram(t(0), ep(&format!("192.0.2.1:{port}")), &discover(0));
        }
        assert_eq!(drain(&mut s).len(), 2, "third source refused while full");
        assert_eq!(s.poll_timeout(), Some(t(1000)));
        s.handle_timeout(t(1000));
        s.handle_datagram(t(1000), ep("192.0.2.1:3"), &discover(0));
        assert_eq!(drain(&mut s).len(), 1, "idle buckets were swept");
    }

    #[test]
    fn entries_expire_after_ttl() {
        let mut s = server();
        let nine = ep("192.0.2.9:9");
        s.handle_datagram(t(0), nine, &discover(9));
        drain(&mut s);
        let ttl_ms = NODE_TTL.as_millis() as u64;
        assert_eq!(s.endpoint_of(9, t(ttl_ms - 1)), Some(nine));
        assert_eq!(s.endpoint_of(9, t(ttl_ms)), None);
        // Stale entries route nothing even before the sweep.
        s.handle_datagram(t(ttl_ms), ep("192.0.2.5:5"), &relay(5, 9, b"PILS"));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.node_count(), 1);
        s.handle_timeout(t(ttl_ms + 10_000));
        assert_eq!(s.node_count(), 0);
    }

    #[test]
    fn node_table_cap_refuses_new_nodes_but_refreshes_known_ones() {
        let cfg = ServerConfig {
            max_nodes: 2,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        for n in 1..=3 {
            s.handle_datagram(t(0), ep(&format!("192.0.2.{n}:1")), &discover(n));
        }
        assert_eq!(drain(&mut s).len(), 3, "every discover is answered");
        assert_eq!(s.node_count(), 2);
        assert_eq!(s.endpoint_of(3, t(0)), None);
        assert_eq!(s.stats().table_full, 1);
        s.handle_datagram(t(5), ep("192.0.2.9:1"), &discover(1));
        assert_eq!(s.endpoint_of(1, t(5)), Some(ep("192.0.2.9:1")));
    }

    #[test]
    fn output_queue_is_bounded() {
        let cfg = ServerConfig {
            max_queue_datagrams: 3,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        for n in 1..=5 {
            s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(n));
        }
        assert_eq!(s.queued(), 3);
        assert_eq!(s.stats().queue_full, 2);
        let cfg = ServerConfig {
            max_queue_bytes: 20,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        for n in 1..=5 {
            s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(n));
        }
        assert_eq!(s.queued(), 2, "8-byte replies, 20-byte budget");
    }

    #[test]
    fn small_buffer_drops_the_datagram() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(1));
        assert_eq!(s.poll_transmit(t(0), &mut [0u8; 4]), None);
        assert_eq!(s.stats().buffer_too_small, 1);
        assert_eq!(s.queued(), 0);
    }

    #[test]
    fn notify_goes_to_the_registered_endpoint() {
        let mut s = server();
        assert!(!s.notify_handshake(t(0), 9));
        s.handle_datagram(t(0), ep("192.0.2.9:9"), &discover(9));
        drain(&mut s);
        assert!(s.notify_handshake(t(1), 9));
        assert_eq!(drain(&mut s), vec![(ep("192.0.2.9:9"), vec![0x0a, 0x01])]);
    }

    #[test]
    fn ignores_garbage_and_client_bound_messages() {
        let mut s = server();
        for b in [
            &[][..],
            &[0x00],
            &[0x02, 4, 1, 2, 3, 4, 0, 1],
            &[0x0a, 1],
            &[0x50],
        ] {
            s.handle_datagram(t(0), ep("192.0.2.1:1"), b);
        }
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().malformed, 3);
        assert_eq!(s.stats().ignored, 2);
    }

    fn gossip_pair() -> (BeaconServer, SocketAddr) {
        let peer = ep("192.0.2.200:9001");
        let cfg = ServerConfig {
            beacon_id: 2,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        s.set_peers(&[peer]);
        (s, peer)
    }

    #[test]
    fn gossip_lists_live_local_nodes_every_interval() {
        let (mut s, peer) = gossip_pair();
        s.handle_datagram(t(0), ep("192.0.2.9:1"), &discover(9));
        s.handle_datagram(t(0), ep("192.0.2.5:1"), &discover(5));
        drain(&mut s);
        assert_eq!(s.poll_timeout(), Some(t(1000)));
        s.handle_timeout(t(1000));
        assert!(drain(&mut s).is_empty());
        s.handle_timeout(t(10_000));
        let out = drain(&mut s);
        assert_eq!(
            out,
            vec![(peer, vec![7, 0, 0, 0, 2, 0, 2, 0, 0, 0, 5, 0, 0, 0, 9])]
        );
        s.handle_timeout(t(15_000));
        assert!(drain(&mut s).is_empty(), "next gossip only at 20 s");
    }

    #[test]
    fn sync_from_peer_routes_relays_one_hop() {
        let (mut s, peer) = gossip_pair();
        s.handle_datagram(t(0), ep("192.0.2.3:1"), &discover(3));
        drain(&mut s);
        // Peer beacon 4 announces nodes 3 (ours, ignored) and 9.
        let sync = [7, 0, 0, 0, 4, 0, 2, 0, 0, 0, 3, 0, 0, 0, 9];
        s.handle_datagram(t(1), peer, &sync);
        let r = relay(5, 9, b"PILSabc");
        s.handle_datagram(t(2), ep("192.0.2.5:5"), &r);
        assert_eq!(
            drain(&mut s),
            vec![(peer, r.clone())],
            "forwarded unchanged"
        );
        assert_eq!(s.stats().relayed_bytes, 7, "forwarded inner bytes");
        let r3 = relay(5, 3, b"PILS");
        s.handle_datagram(t(2), ep("192.0.2.5:5"), &r3);
        assert_eq!(drain(&mut s)[0].0, ep("192.0.2.3:1"), "local node wins");
        // A relay arriving from the peer itself is never sent back out.
        s.handle_datagram(t(3), peer, &r);
        assert!(drain(&mut s).is_empty());
        // A sync replaces the previous list.
        s.handle_datagram(t(4), peer, &[7, 0, 0, 0, 4, 0, 0]);
        s.handle_datagram(t(5), ep("192.0.2.5:5"), &r);
        assert!(drain(&mut s).is_empty());
    }

    #[test]
    fn peer_lists_go_stale_and_strangers_cannot_sync() {
        let (mut s, peer) = gossip_pair();
        let sync = [7, 0, 0, 0, 4, 0, 1, 0, 0, 0, 9];
        s.handle_datagram(t(0), ep("192.0.2.66:9001"), &sync);
        assert_eq!(s.stats().ignored, 1);
        s.handle_datagram(t(0), peer, &sync);
        let r = relay(5, 9, b"PILS");
        s.handle_datagram(t(29_999), ep("192.0.2.5:5"), &r);
        assert_eq!(drain(&mut s).len(), 1);
        s.handle_datagram(t(30_000), ep("192.0.2.5:5"), &r);
        assert!(drain(&mut s).is_empty(), "list older than 30 s is not used");
    }

    /// Two beacons that know each other as peers; node 5 is on `b1`, node
    /// 9 on `b2`, and the shared state (`locate`) says so.
    fn located_pair() -> (BeaconServer, BeaconServer, [SocketAddr; 4]) {
        let (a1, a2) = (ep("192.0.2.201:9001"), ep("192.0.2.202:9001"));
        let (five, nine) = (ep("192.0.2.5:1000"), ep("198.51.100.10:5000"));
        let mut b1 = BeaconServer::new(ServerConfig::default(), t(0));
        let mut b2 = BeaconServer::new(ServerConfig::default(), t(0));
        b1.set_peers(&[a2]);
        b2.set_peers(&[a1]);
        b1.handle_datagram(t(0), five, &discover(5));
        b2.handle_datagram(t(0), nine, &discover(9));
        drain(&mut b1);
        drain(&mut b2);
        (b1, b2, [a1, a2, five, nine])
    }

    fn shared(a1: SocketAddr, a2: SocketAddr) -> impl FnMut(u32) -> Option<SocketAddr> {
        move |n| match n {
            5 => Some(a1),
            9 => Some(a2),
            _ => None,
        }
    }

    #[test]
    fn punch_across_beacons_goes_through_the_target_beacon() {
        let (mut b1, mut b2, [a1, a2, five, nine]) = located_pair();
        let mut locate = shared(a1, a2);
        // 5 asks its beacon to punch towards 9, which b1 does not serve.
        b1.handle_datagram_located(t(10), five, &[3, 0, 0, 0, 5, 0, 0, 0, 9], &mut locate);
        let out = drain(&mut b1);
        let fwd = vec![0x0e, 0, 0, 0, 5, 0, 0, 0, 9, 4, 192, 0, 2, 5, 0x03, 0xe8];
        assert_eq!(out, vec![(a2, fwd.clone())]);
        assert_eq!(b1.stats().punches_forwarded, 1);
        // b2 commands 9 (from its own address) and answers with 9's endpoint.
        b2.handle_datagram_located(t(11), a1, &fwd, &mut locate);
        let answer = vec![
            0x0f, 0, 0, 0, 5, 0, 0, 0, 9, 4, 198, 51, 100, 10, 0x13, 0x88,
        ];
        assert_eq!(
            drain(&mut b2),
            vec![
                (nine, vec![0x04, 4, 192, 0, 2, 5, 0x03, 0xe8]),
                (a1, answer.clone()),
            ]
        );
        // b1 passes 9's endpoint to 5, once.
        b1.handle_datagram_located(t(12), a2, &answer, &mut locate);
        assert_eq!(
            drain(&mut b1),
            vec![(five, vec![0x04, 4, 198, 51, 100, 10, 0x13, 0x88])]
        );
        b1.handle_datagram_located(t(13), a2, &answer, &mut locate);
        assert!(drain(&mut b1).is_empty(), "an answer is used once");
    }

    #[test]
    fn peer_punches_only_from_peers_and_only_when_asked() {
        let (mut b1, mut b2, [a1, a2, five, _]) = located_pair();
        let mut locate = shared(a1, a2);
        let stranger = ep("192.0.2.66:9001");
        let fwd = [0x0e, 0, 0, 0, 5, 0, 0, 0, 9, 4, 192, 0, 2, 5, 0x03, 0xe8];
        b2.handle_datagram_located(t(1), stranger, &fwd, &mut locate);
        assert!(drain(&mut b2).is_empty(), "a stranger cannot forward");
        let answer = [0x0f, 0, 0, 0, 5, 0, 0, 0, 9, 4, 203, 0, 113, 1, 0, 1];
        b1.handle_datagram_located(t(1), a2, &answer, &mut locate);
        assert!(drain(&mut b1).is_empty(), "an unasked answer is ignored");
        // An answer after the wait is over is ignored too.
        b1.handle_datagram_located(t(10), five, &[3, 0, 0, 0, 5, 0, 0, 0, 9], &mut locate);
        drain(&mut b1);
        b1.handle_datagram_located(t(3010), a2, &answer, &mut locate);
        assert!(drain(&mut b1).is_empty());
        // A beacon that is not a configured peer is never forwarded to.
        let mut elsewhere = |_| Some(stranger);
        b1.handle_datagram_located(t(4000), five, &[3, 0, 0, 0, 5, 0, 0, 0, 9], &mut elsewhere);
        assert!(drain(&mut b1).is_empty());
        assert_eq!(b1.stats().unknown_destination, 1);
    }

    #[test]
    fn relay_across_beacons_follows_the_shared_state_one_hop() {
        let (mut b1, mut b2, [a1, a2, five, nine]) = located_pair();
        let mut locate = shared(a1, a2);
        let r = relay(5, 9, b"PILSabc");
        b1.handle_datagram_located(t(1), five, &r, &mut locate);
        assert_eq!(drain(&mut b1), vec![(a2, r.clone())], "forwarded unchanged");
        b2.handle_datagram_located(t(2), a1, &r, &mut locate);
        let mut want = vec![0x06, 0, 0, 0, 5];
        want.extend_from_slice(b"PILSabc");
        assert_eq!(drain(&mut b2), vec![(nine, want)]);
        // Stale shared state on b2 (it thinks 7 is on b1) does not bounce a
        // relay that came from b1 back to it.
        let mut stale = |_| Some(a1);
        b2.handle_datagram_located(t(3), a1, &relay(5, 7, b"PILS"), &mut stale);
        assert!(drain(&mut b2).is_empty());
    }

    #[test]
    fn recorded_nodes_are_reported_when_asked_and_bounded() {
        let mut s = server();
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(5));
        assert_eq!(s.poll_recorded(), None, "off by default");
        let cfg = ServerConfig {
            report_recorded: true,
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(5));
        s.handle_datagram(t(0), ep("192.0.2.1:1"), &discover(0));
        s.handle_datagram(t(0), ep("192.0.2.2:1"), &[3, 0, 0, 0, 6, 0, 0, 0, 5]);
        assert_eq!(s.poll_recorded(), Some(5));
        assert_eq!(s.poll_recorded(), Some(6));
        assert_eq!(s.poll_recorded(), None);
        for n in 1..=(MAX_RECORDED as u32 + 3) {
            s.record(t(1), n, ep("192.0.2.1:1"), Some(false));
        }
        assert_eq!(s.stats().recorded_dropped, 3);
    }

    fn grant_server(key: &SigningKey) -> BeaconServer {
        let cfg = ServerConfig {
            grant: Some(GrantPolicy::new(key.verifying_key().to_bytes(), 1_000_000).unwrap()),
            ..ServerConfig::default()
        };
        let mut s = BeaconServer::new(cfg, t(0));
        s.handle_datagram(t(0), ep("192.0.2.9:9"), &discover(9));
        drain(&mut s);
        s
    }

    fn punch_with_grant(key: &SigningKey, expiry: u64, signed_target: u32) -> Vec<u8> {
        let sig = key.sign(punch_grant_message(5, signed_target, expiry).as_bytes());
        let mut b = vec![0x03, 0, 0, 0, 5, 0, 0, 0, 9];
        b.extend_from_slice(&expiry.to_be_bytes());
        b.extend_from_slice(&sig.to_bytes());
        b
    }

    #[test]
    fn punch_grants_are_checked_when_configured() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut s = grant_server(&key);
        let five = ep("192.0.2.5:5");
        // No grant.
        s.handle_datagram(t(0), five, &[0x03, 0, 0, 0, 5, 0, 0, 0, 9]);
        // Grant for another target.
        s.handle_datagram(t(0), five, &punch_with_grant(&key, 1_000_100, 8));
        // Expired: now is Unix 1_000_200.
        s.handle_datagram(t(200_000), five, &punch_with_grant(&key, 1_000_100, 9));
        // Wrong issuer.
        let other = SigningKey::from_bytes(&[8; 32]);
        s.handle_datagram(t(0), five, &punch_with_grant(&other, 1_000_100, 9));
        assert!(drain(&mut s).is_empty());
        assert_eq!(s.stats().grant_refused, 4);
        s.handle_datagram(t(0), five, &punch_with_grant(&key, 1_000_100, 9));
        assert_eq!(drain(&mut s).len(), 2);
        // Without a policy a grant is ignored.
        let mut plain = server();
        plain.handle_datagram(t(0), ep("192.0.2.9:9"), &discover(9));
        drain(&mut plain);
        plain.handle_datagram(t(0), five, &punch_with_grant(&other, 0, 1));
        assert_eq!(drain(&mut plain).len(), 2);
    }

    #[test]
    fn bad_issuer_key_is_refused() {
        // y = 2 is not on the curve.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert_eq!(GrantPolicy::new(bad, 0).err(), Some(BadIssuerKey));
    }

    #[test]
    fn idle_server_has_no_timer() {
        assert_eq!(server().poll_timeout(), None);
    }
}
