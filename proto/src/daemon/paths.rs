//! The daemon's path part (`spec/beacon.md` §6): endpoint discovery, hole
//! punching, and the choice per peer between the direct path and the
//! beacon relay.
//!
//! [`Paths`] owns the node's [`BeaconClient`] and one [`PeerState`] per
//! peer. The node's peer table does not hold real addresses while this
//! part is active: every peer's endpoint there is its *path label*
//! ([`path_label`], an address of the IPv6 discard prefix `100::/64`
//! carrying the node ID), so every frame the node emits names its peer,
//! and [`Paths::route`] decides where it goes: directly, wrapped for the
//! beacon (`05 ‖ own ‖ peer ‖ frame`), or both while the paths race. The
//! tunnel, its sessions and streams are keyed by node ID, so switching the
//! path never touches them. A path is *confirmed* only by an authenticated
//! frame ([`Paths::on_authenticated`]); the direct endpoint moves only then.
//!
//! States of a peer: `Both` (racing, for [`RACE_WINDOW`] after first
//! contact or a fallback, or for [`PROBE_WINDOW`] on each background probe:
//! every frame goes via the relay, and small ones — key exchanges, pings,
//! acknowledgements, at most one per [`PROBE_COPY_GAP`], plus a ping every
//! [`PROBE_PING`] — also go directly, so the direct path is tested without
//! copying the data), `Direct` (an authenticated frame arrived directly;
//! falls back to `Both` when nothing authenticated came back directly for
//! [`DIRECT_SILENCE`] after a send) and `Relay` (probed again every
//! [`PROBE_INTERVAL`] while in use: a punch request through the beacon plus
//! a [`PROBE_WINDOW`] of racing).
//!
//! The part drives a [`Node`] it is given (the daemon's, or driver-tokio's
//! embedded node): [`Paths::handle_udp`] takes every tunnel-socket
//! datagram, [`Paths::adopt_peer`] turns a peer the node learnt with a real
//! address into a labelled one, [`Paths::send_probes`] pings the peers it
//! wants probed, and [`Paths::poll_transmit_node`] routes the node's output.
//! Both owners use these, so the behaviour is the same everywhere.
//!
//! Bounds: at most [`MAX_PATH_PEERS`] peers (frames for more go by relay,
//! counted), [`COPY_QUEUE`] duplicate datagrams waiting, [`PUNCH_PENDING`]
//! punch requests awaiting their command.

use core::net::{IpAddr, Ipv6Addr, SocketAddr};
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::addr::Addr;
use crate::beacon::client::{BeaconClient, BeaconEvent, ClientConfig as BeaconClientConfig};
use crate::beacon::same_endpoint;
use crate::crypto::provider::CryptoProvider;
use crate::node::Node;
use crate::time::Instant;
use crate::wire::beacon::{RELAY_DELIVER_OVERHEAD, RELAY_OVERHEAD, relay_header};

/// How long a new peer's paths race before an unproven direct path is
/// given up for relay (`spec/beacon.md` §6.3).
pub const RACE_WINDOW: Duration = Duration::from_secs(3);
/// Sending directly without anything authenticated coming back directly
/// for this long makes the paths race again (`spec/beacon.md` §8.3)...
pub const DIRECT_SILENCE: Duration = Duration::from_secs(3);
/// ...once at least this many datagrams went out unanswered (one-way
/// keepalives alone do not count as silence).
pub const SILENT_SENDS: u32 = 4;
/// Most peers waiting for an authenticated probe (a ping).
pub const PROBE_QUEUE: usize = 64;
/// A relay peer in use is probed for a direct path this often.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a probe races.
pub const PROBE_WINDOW: Duration = Duration::from_millis(1500);
/// While racing, a datagram this small or smaller (a key exchange, a
/// ping, an acknowledgement; never a full data segment) is also sent
/// directly as a probe of the direct path.
pub const PROBE_COPY_MAX: usize = 256;
/// While racing, at most one direct probe copy per peer this often.
pub const PROBE_COPY_GAP: Duration = Duration::from_millis(50);
/// While racing, the owner is asked to ping the peer this often (the ping
/// is a small authenticated frame, so it also goes directly).
pub const PROBE_PING: Duration = Duration::from_millis(250);
/// A peer counts as in use this long after the last frame either way.
pub const IN_USE: Duration = Duration::from_secs(60);
/// Default NAT keepalive interval: under the common 30 s UDP binding
/// timeout (`spec/beacon.md` §6.5).
pub const KEEPALIVE: Duration = Duration::from_secs(25);
/// Most peers with path state.
pub const MAX_PATH_PEERS: usize = 16_384;
/// Most duplicate datagrams waiting to be sent.
pub const COPY_QUEUE: usize = 64;
/// Most punch requests waiting for the beacon's command.
pub const PUNCH_PENDING: usize = 16;
/// Most peers waiting to be reported as newly relayed
/// ([`Paths::take_relay_activated`]); further ones are counted and dropped.
pub const RELAY_EVENTS: usize = 64;
/// A punch command answers a request of ours sent at most this long ago.
pub const PUNCH_MATCH: Duration = Duration::from_secs(3);
/// While a peer races with no endpoint to try (first contact through the
/// relay), its punch request is repeated this often: a lost request or
/// command would otherwise leave the whole race without a candidate.
pub const PUNCH_RETRY: Duration = Duration::from_millis(500);

/// The path label of `peer`: the endpoint the node's peer table holds for
/// it while [`Paths`] routes (`100::<node id>`, port 1; RFC 6666 discard
/// prefix, never sent to).
pub fn path_label(peer: u32) -> SocketAddr {
    let ip = Ipv6Addr::new(0x0100, 0, 0, 0, 0, 0, (peer >> 16) as u16, peer as u16);
    SocketAddr::new(IpAddr::V6(ip), 1)
}

/// The peer a path label names.
pub fn label_peer(ep: SocketAddr) -> Option<u32> {
    match ep.ip() {
        IpAddr::V6(v6) if ep.port() == 1 => {
            let s = v6.segments();
            (s[..6] == [0x0100, 0, 0, 0, 0, 0]).then(|| (u32::from(s[6]) << 16) | u32::from(s[7]))
        }
        _ => None,
    }
}

/// The path in use for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Frames go directly to the confirmed endpoint.
    Direct,
    /// Frames go via the beacon.
    Relay,
    /// Racing or probing: frames go via the relay, small ones also
    /// directly.
    Both,
}

impl PathKind {
    /// The name shown by `pilotctl peers`.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
            PathKind::Both => "racing",
        }
    }
}

/// Configuration of the path part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathsConfig {
    /// The beacon (UDP).
    pub beacon: SocketAddr,
    /// NAT keepalive interval (`None`: off; discovery then follows the
    /// heartbeat period only).
    pub keepalive: Option<Duration>,
    /// The registry heartbeat period.
    pub heartbeat: Duration,
    /// `--endpoint`: advertise this instead of the observed endpoint.
    pub endpoint_override: Option<SocketAddr>,
    /// A second beacon address that answers discovers (`--beacon-observer`):
    /// discovery goes to both and the observed endpoints are compared
    /// ([`Paths::mapping`]).
    pub observer: Option<SocketAddr>,
}

/// Where one frame for a peer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Send it directly here.
    pub direct: Option<SocketAddr>,
    /// Send a relay-wrapped copy to the beacon.
    pub relay: bool,
}

/// What a beacon datagram meant for the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeaconInput {
    /// Nothing more to do.
    None,
    /// The observed public endpoint changed (first one included).
    PublicEndpoint(SocketAddr),
    /// The registry holds a relayed trust handshake: poll the inbox.
    HandshakeWaiting,
    /// A relayed tunnel frame sits at `bytes[RELAY_DELIVER_OVERHEAD..]`;
    /// process it as coming from `path_label(sender)`.
    Relayed {
        /// The sender the frame names (untrusted until it authenticates).
        sender: u32,
    },
}

/// The NAT mapping behaviour seen from two destinations (the beacon and
/// its observer address), `spec/beacon.md` §8.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// Both destinations saw the same public endpoint: the mapping does
    /// not depend on the destination (hole punching works towards peers
    /// whose filtering allows it).
    EndpointIndependent,
    /// The two destinations saw different public endpoints (a symmetric
    /// NAT): peers cannot predict our endpoint; expect the relay unless
    /// the peer's NAT admits any source.
    DestinationDependent,
    /// Not known, with the reason.
    Unknown(&'static str),
}

impl Mapping {
    /// The name shown by `pilotctl info`.
    pub fn name(self) -> &'static str {
        match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::DestinationDependent => "destination-dependent",
            Mapping::Unknown(_) => "unknown",
        }
    }

    /// Why it is unknown.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Mapping::Unknown(r) => Some(r),
            _ => None,
        }
    }
}

/// A snapshot of one peer's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// Path in use.
    pub kind: PathKind,
    /// Direct endpoint (confirmed or candidate).
    pub endpoint: Option<SocketAddr>,
    /// An authenticated frame arrived from `endpoint`.
    pub confirmed: bool,
    /// When the path last changed.
    pub changed: Instant,
    /// Path changes so far.
    pub changes: u32,
}

/// Counters of the path part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Datagrams sent directly.
    pub direct_out: u64,
    /// Bytes sent on direct paths (frames, probe copies and punch
    /// probes; what a relayed peer costs in direct attempts).
    pub direct_bytes: u64,
    /// Datagrams sent via the beacon.
    pub relay_out: u64,
    /// Relayed frames received.
    pub relay_in: u64,
    /// Moves to the direct path.
    pub to_direct: u64,
    /// Moves to the relay path.
    pub to_relay: u64,
    /// Direct paths that went silent (back to racing).
    pub direct_lost: u64,
    /// Punch requests sent.
    pub punches: u64,
    /// Observed public endpoint changes.
    pub endpoint_changes: u64,
    /// Datagrams dropped: copy queue full, no room to wrap, or peer cap.
    pub dropped: u64,
    /// Relay activations not reported: their queue was full.
    pub relay_events_dropped: u64,
}

/// Per-peer path state (see the module docs).
#[derive(Clone, Copy, Debug)]
struct PeerState {
    kind: PathKind,
    direct: Option<SocketAddr>,
    confirmed: bool,
    /// End of the current race or probe window (`Both`).
    window_end: Instant,
    /// Next probe (`Relay`).
    next_probe: Instant,
    /// Earliest next direct probe copy (`Both`).
    next_copy: Instant,
    /// Next ping asked for (`Both`).
    next_ping: Instant,
    /// Earliest repeat of the punch request while racing without an
    /// endpoint (`Both`, `direct` unknown).
    next_punch: Instant,
    changed: Instant,
    changes: u32,
    last_rx: Instant,
    last_tx: Instant,
    /// First direct send after the last direct authenticated frame.
    silent_since: Option<Instant>,
    /// Direct sends since the last direct authenticated frame.
    silent_sends: u32,
    /// The peer settled on the relay and was reported so; cleared when a
    /// direct path is confirmed (so a relayed peer's background probes do
    /// not report it again).
    relayed: bool,
}

/// The path part of the daemon; see the module docs.
#[derive(Clone, Debug)]
pub struct Paths {
    cfg: PathsConfig,
    client: BeaconClient,
    /// Discovers through the observer address (`cfg.observer`).
    observer: Option<BeaconClient>,
    node_id: u32,
    peers: BTreeMap<u32, PeerState>,
    copies: VecDeque<(SocketAddr, Vec<u8>, usize)>,
    punch_pending: VecDeque<(u32, Instant)>,
    probes: VecDeque<u32>,
    /// Peers that settled on the relay, to report (bounded by
    /// [`RELAY_EVENTS`]).
    relay_events: VecDeque<u32>,
    public_history: u32,
    stats: PathStats,
}

impl Paths {
    /// The path part at `now`; the first discover goes out at once.
    pub fn new(cfg: PathsConfig, now: Instant) -> Self {
        let mut bc = BeaconClientConfig::new(cfg.beacon, 0);
        bc.discover_interval = cfg.keepalive.unwrap_or(cfg.heartbeat).min(cfg.heartbeat);
        let observer = cfg.observer.map(|o| {
            let mut oc = BeaconClientConfig::new(o, 0);
            oc.discover_interval = bc.discover_interval;
            BeaconClient::new(oc, now)
        });
        Paths {
            cfg,
            client: BeaconClient::new(bc, now),
            observer,
            node_id: 0,
            peers: BTreeMap::new(),
            copies: VecDeque::new(),
            punch_pending: VecDeque::new(),
            probes: VecDeque::new(),
            relay_events: VecDeque::new(),
            public_history: 0,
            stats: PathStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PathsConfig {
        &self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> PathStats {
        self.stats
    }

    /// The beacon client's counters.
    pub fn beacon_stats(&self) -> crate::beacon::client::ClientStats {
        self.client.stats()
    }

    /// The public endpoint the beacon last reported.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        self.client.public_endpoint()
    }

    /// The public endpoint the observer address last reported.
    pub fn observed_by_observer(&self) -> Option<SocketAddr> {
        self.observer.as_ref().and_then(|o| o.public_endpoint())
    }

    /// The NAT's mapping behaviour: the endpoints the beacon and the
    /// observer address observed, compared (`spec/beacon.md` §8.1).
    pub fn mapping(&self) -> Mapping {
        let Some(o) = self.observer.as_ref() else {
            return Mapping::Unknown(
                "one beacon address: a second (--beacon-observer) is needed to compare",
            );
        };
        match (self.public_endpoint(), o.public_endpoint()) {
            (None, _) => Mapping::Unknown("no discover reply from the beacon yet"),
            (_, None) => Mapping::Unknown("no discover reply from the observer address yet"),
            (Some(a), Some(b)) if a == b => Mapping::EndpointIndependent,
            _ => Mapping::DestinationDependent,
        }
    }

    /// The endpoint to advertise to the registry: the override, else the
    /// observed one.
    pub fn advertised(&self) -> Option<SocketAddr> {
        self.cfg.endpoint_override.or(self.public_endpoint())
    }

    /// Whether `from` is the beacon.
    pub fn is_beacon(&self, from: SocketAddr) -> bool {
        same_endpoint(from, self.cfg.beacon)
    }

    /// Adopts our node ID (registration) and discovers again at once.
    pub fn set_node_id(&mut self, node_id: u32, now: Instant) {
        self.node_id = node_id;
        self.client.set_node_id(node_id, now);
        if let Some(o) = self.observer.as_mut() {
            o.set_node_id(node_id, now);
        }
    }

    /// A snapshot of `peer`'s path.
    pub fn view(&self, peer: u32) -> Option<PeerView> {
        self.peers.get(&peer).map(|p| PeerView {
            kind: p.kind,
            endpoint: p.direct,
            confirmed: p.confirmed,
            changed: p.changed,
            changes: p.changes,
        })
    }

    /// Forgets `peer`.
    pub fn forget(&mut self, peer: u32) {
        self.peers.remove(&peer);
    }

    fn state(&mut self, now: Instant, peer: u32) -> Option<&mut PeerState> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PATH_PEERS {
            return None;
        }
        Some(self.peers.entry(peer).or_insert(PeerState {
            kind: PathKind::Relay,
            direct: None,
            confirmed: false,
            window_end: now,
            next_probe: now,
            next_copy: now,
            next_ping: now,
            next_punch: now,
            changed: now,
            changes: 0,
            last_rx: now,
            last_tx: now,
            silent_since: None,
            silent_sends: 0,
            relayed: false,
        }))
    }

    fn set_kind(&mut self, now: Instant, peer: u32, kind: PathKind) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.kind == kind {
            return;
        }
        p.kind = kind;
        p.changed = now;
        p.changes = p.changes.saturating_add(1);
        match kind {
            PathKind::Direct => {
                p.silent_since = None;
                p.silent_sends = 0;
                p.relayed = false;
                self.stats.to_direct += 1;
            }
            PathKind::Relay => {
                p.next_probe = now + PROBE_INTERVAL;
                self.stats.to_relay += 1;
                if !p.relayed {
                    p.relayed = true;
                    if self.relay_events.len() >= RELAY_EVENTS {
                        self.stats.relay_events_dropped += 1;
                    } else {
                        self.relay_events.push_back(peer);
                    }
                }
            }
            PathKind::Both => {}
        }
    }

    /// The next peer that settled on the relay path (the race or a lost
    /// direct path ended without a direct path proven): reported once
    /// until a direct path is confirmed again, so background probes of a
    /// relayed peer do not repeat it.
    pub fn take_relay_activated(&mut self) -> Option<u32> {
        self.relay_events.pop_front()
    }

    /// Races the paths for `window`, asks the beacon to punch and asks
    /// for an authenticated probe (the owner pings the peer, so an idle
    /// peer answers on whichever path works).
    fn race(&mut self, now: Instant, peer: u32, window: Duration) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.window_end = now + window;
            if p.kind != PathKind::Direct {
                p.kind = PathKind::Both;
            }
        }
        self.punch(now, peer);
        self.ask_ping(now, peer);
    }

    /// Queues an authenticated probe (a ping by the owner) of `peer` and
    /// lets its next small datagram go directly.
    fn ask_ping(&mut self, now: Instant, peer: u32) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next_copy = now;
            p.next_ping = now + PROBE_PING;
        }
        if !self.probes.contains(&peer) {
            if self.probes.len() >= PROBE_QUEUE {
                self.probes.pop_front();
            }
            self.probes.push_back(peer);
        }
    }

    /// The next peer to probe with an authenticated frame (a ping).
    pub fn take_probe(&mut self) -> Option<u32> {
        self.probes.pop_front()
    }

    fn punch(&mut self, now: Instant, peer: u32) {
        if self.node_id == 0 {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next_punch = now + PUNCH_RETRY;
        }
        self.client.request_punch(peer);
        self.stats.punches += 1;
        if self.punch_pending.len() >= PUNCH_PENDING {
            self.punch_pending.pop_front();
        }
        self.punch_pending.push_back((peer, now));
    }

    /// The registry says `peer` is at `endpoint` (first contact or a
    /// refresh): race direct against relay unless a direct path is
    /// already confirmed there.
    pub fn add_candidate(&mut self, now: Instant, peer: u32, endpoint: SocketAddr) {
        let Some(p) = self.state(now, peer) else {
            self.stats.dropped += 1;
            return;
        };
        if p.confirmed && p.kind == PathKind::Direct {
            return;
        }
        if !p.confirmed || p.direct.is_none() {
            p.direct = Some(endpoint);
        }
        self.race(now, peer, RACE_WINDOW);
    }

    /// "Prefer direct" (IPC): race again at once, with a punch.
    pub fn prefer_direct(&mut self, now: Instant, peer: u32) -> bool {
        if self.state(now, peer).is_none() {
            return false;
        }
        self.race(now, peer, RACE_WINDOW);
        true
    }

    /// A frame of `peer` authenticated; it came directly from `from`, or
    /// via the beacon (`None`). Only this moves the direct endpoint.
    pub fn on_authenticated(&mut self, now: Instant, peer: u32, from: Option<SocketAddr>) {
        let Some(p) = self.state(now, peer) else {
            return;
        };
        p.last_rx = now;
        match from {
            Some(ep) => {
                p.direct = Some(ep);
                p.confirmed = true;
                p.silent_since = None;
                p.silent_sends = 0;
                self.set_kind(now, peer, PathKind::Direct);
            }
            None => {
                // First contact through the relay: look for a direct
                // path at once.
                if p.direct.is_none() && p.changes == 0 && p.kind == PathKind::Relay {
                    p.changes = 1;
                    self.race(now, peer, PROBE_WINDOW);
                }
            }
        }
    }

    /// Where the next datagram for `peer` goes (`small`: a single datagram
    /// of at most [`PROBE_COPY_MAX`] bytes, which may probe the direct path
    /// while racing); records the send.
    pub fn route(&mut self, now: Instant, peer: u32, small: bool) -> Route {
        let Some(p) = self.state(now, peer) else {
            self.stats.dropped += 1;
            return Route {
                direct: None,
                relay: true,
            };
        };
        p.last_tx = now;
        let r = match (p.kind, p.direct) {
            (PathKind::Direct, Some(ep)) => Route {
                direct: Some(ep),
                relay: false,
            },
            (PathKind::Both, Some(ep)) if small && now >= p.next_copy => {
                p.next_copy = now + PROBE_COPY_GAP;
                Route {
                    direct: Some(ep),
                    relay: true,
                }
            }
            _ => Route {
                direct: None,
                relay: true,
            },
        };
        if r.direct.is_some() && !r.relay {
            p.silent_since.get_or_insert(now);
            p.silent_sends = p.silent_sends.saturating_add(1);
        }
        r
    }

    /// Sends due discovers and moves races, silences and probes on.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        if let Some(o) = self.observer.as_mut() {
            o.handle_timeout(now);
        }
        let mut race = Vec::new();
        let mut relay = Vec::new();
        let mut lost = Vec::new();
        let mut ping = Vec::new();
        let mut repunch = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            match p.kind {
                PathKind::Both if now >= p.window_end => relay.push(id),
                PathKind::Both if p.direct.is_none() && now >= p.next_punch => repunch.push(id),
                PathKind::Both if now >= p.next_ping => ping.push(id),
                PathKind::Direct
                    if p.silent_sends >= SILENT_SENDS
                        && p.silent_since.is_some_and(|t| {
                            now.saturating_duration_since(t) >= DIRECT_SILENCE
                        }) =>
                {
                    lost.push(id);
                }
                PathKind::Relay if now >= p.next_probe => {
                    let used = now.saturating_duration_since(p.last_tx.max(p.last_rx)) < IN_USE;
                    if used {
                        race.push(id);
                    }
                    p.next_probe = now + PROBE_INTERVAL;
                }
                _ => {}
            }
        }
        for id in relay {
            self.set_kind(now, id, PathKind::Relay);
        }
        for id in lost {
            self.stats.direct_lost += 1;
            self.set_kind(now, id, PathKind::Both);
            self.race(now, id, RACE_WINDOW);
        }
        for id in race {
            self.race(now, id, PROBE_WINDOW);
        }
        for id in ping {
            self.ask_ping(now, id);
        }
        for id in repunch {
            self.punch(now, id);
        }
        let late = |t: &(u32, Instant)| now.saturating_duration_since(t.1) >= PUNCH_MATCH;
        while self.punch_pending.front().is_some_and(late) {
            self.punch_pending.pop_front();
        }
    }

    /// When [`Self::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.client.poll_timeout();
        let mut take = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(x) = self.observer.as_ref().and_then(|o| o.poll_timeout()) {
            take(x);
        }
        for p in self.peers.values() {
            match p.kind {
                PathKind::Both if p.direct.is_none() => {
                    take(p.window_end.min(p.next_ping).min(p.next_punch));
                }
                PathKind::Both => take(p.window_end.min(p.next_ping)),
                PathKind::Relay => take(p.next_probe),
                PathKind::Direct => {
                    if let Some(s) = p.silent_since.filter(|_| p.silent_sends >= SILENT_SENDS) {
                        take(s + DIRECT_SILENCE);
                    }
                }
            }
        }
        if let Some(&(_, at)) = self.punch_pending.front() {
            take(at + PUNCH_MATCH);
        }
        t
    }

    /// Handles a beacon message (first byte below 0x10) from `from`.
    pub fn handle_beacon(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) -> BeaconInput {
        if let Some(o) = self.observer.as_mut() {
            if same_endpoint(from, o.config().beacon) {
                // The observer only ever answers discovers.
                let _ = o.handle_datagram(now, from, bytes);
                return BeaconInput::None;
            }
        }
        match self.client.handle_datagram(now, from, bytes) {
            None => BeaconInput::None,
            Some(BeaconEvent::PublicEndpoint(ep)) => {
                self.public_history = self.public_history.saturating_add(1);
                if self.public_history > 1 {
                    self.stats.endpoint_changes += 1;
                }
                BeaconInput::PublicEndpoint(ep)
            }
            Some(BeaconEvent::HandshakeWaiting) => BeaconInput::HandshakeWaiting,
            Some(BeaconEvent::Punch(ep)) => {
                // The command answering our oldest pending request names
                // that peer's endpoint: a candidate, proven only by an
                // authenticated frame.
                while let Some((peer, at)) = self.punch_pending.pop_front() {
                    if now.saturating_duration_since(at) < PUNCH_MATCH {
                        // A working direct path keeps its endpoint; any
                        // other takes the fresh one (the peer's mapping
                        // may have changed while idle).
                        if let Some(p) = self.peers.get_mut(&peer) {
                            if p.kind != PathKind::Direct && p.direct != Some(ep) {
                                p.direct = Some(ep);
                                p.confirmed = false;
                            }
                        }
                        break;
                    }
                }
                BeaconInput::None
            }
            Some(BeaconEvent::Relayed {
                claimed_source,
                frame,
            }) => {
                self.stats.relay_in += 1;
                // The frame names its own sender after its magic.
                let sender = frame
                    .get(4..8)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(claimed_source, u32::from_be_bytes);
                BeaconInput::Relayed { sender }
            }
        }
    }

    /// The next datagram of the path part itself (discover, punch
    /// request, punch probes, a duplicate copy), written into `buf`.
    /// Returns the destination, length and segment size.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<(SocketAddr, usize, usize)> {
        if let Some(t) = self
            .observer
            .as_mut()
            .and_then(|o| o.poll_transmit(now, buf))
        {
            // Only discovers go to the observer.
            return Some((t.dst, t.len, t.len));
        }
        if let Some(t) = self.client.poll_transmit(now, buf) {
            if !self.is_beacon(t.dst) {
                self.stats.direct_bytes += t.len as u64;
            }
            return Some((t.dst, t.len, t.len));
        }
        while let Some((dst, bytes, seg)) = self.copies.pop_front() {
            if let Some(out) = buf.get_mut(..bytes.len()) {
                self.stats.direct_bytes += bytes.len() as u64;
                out.copy_from_slice(&bytes);
                return Some((dst, bytes.len(), seg));
            }
            self.stats.dropped += 1;
        }
        None
    }

    /// Routes `len` bytes in `buf` (`segment_size`-byte datagrams for
    /// `peer`, the last possibly shorter) as [`Self::route`] says: returns
    /// the destination, new length and segment size of what is in `buf`
    /// afterwards, with a direct probe copy queued when the paths race and
    /// this is one small datagram. `None`: the datagrams were dropped
    /// (counted).
    pub fn route_in_place(
        &mut self,
        now: Instant,
        peer: u32,
        buf: &mut [u8],
        len: usize,
        segment_size: usize,
    ) -> Option<Transmit2> {
        let segments = len.div_ceil(segment_size.max(1)).max(1);
        let r = self.route(now, peer, segments == 1 && len <= PROBE_COPY_MAX);
        if let Some(ep) = r.direct {
            self.stats.direct_out += segments as u64;
            if !r.relay {
                self.stats.direct_bytes += len as u64;
                return Some(Transmit2 {
                    dst: ep,
                    len,
                    segment_size,
                });
            }
            if self.copies.len() >= COPY_QUEUE {
                self.stats.dropped += segments as u64;
            } else if let Some(b) = buf.get(..len) {
                self.copies.push_back((ep, b.to_vec(), segment_size));
            }
        }
        match wrap_relay(buf, len, segment_size, self.node_id, peer) {
            Some((len, seg)) => {
                self.stats.relay_out += segments as u64;
                Some(Transmit2 {
                    dst: self.cfg.beacon,
                    len,
                    segment_size: seg,
                })
            }
            None => {
                self.stats.dropped += segments as u64;
                // The direct copy, if any, still goes.
                self.copies.pop_back().map(|(dst, bytes, seg)| {
                    let n = bytes.len();
                    if let Some(b) = buf.get_mut(..n) {
                        b.copy_from_slice(&bytes);
                    }
                    Transmit2 {
                        dst,
                        len: n,
                        segment_size: seg,
                    }
                })
            }
        }
    }
}

/// What a tunnel-socket datagram meant for the owner, beyond the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpInput {
    /// Nothing more to do.
    None,
    /// The observed public endpoint changed (first one included):
    /// advertise it unless an override is configured.
    PublicEndpoint(SocketAddr),
    /// The registry holds a relayed trust handshake: poll the inbox.
    HandshakeWaiting,
}

impl Paths {
    /// One datagram from the tunnel socket while this part routes: beacon
    /// messages go to the part, relayed and direct frames to `node`, and
    /// whatever authenticates tells the part which path works
    /// (`spec/beacon.md` §8.2, §8.3). PILS frames are decrypted in place.
    pub fn handle_udp<P, R>(
        &mut self,
        node: &mut Node<P, R>,
        now: Instant,
        from: SocketAddr,
        bytes: &mut [u8],
    ) -> UdpInput
    where
        P: CryptoProvider,
        R: RngCore + CryptoRng + SeedableRng,
    {
        if bytes
            .first()
            .is_some_and(|&b| b < crate::wire::beacon::BEACON_TYPE_LIMIT)
        {
            return match self.handle_beacon(now, from, bytes) {
                BeaconInput::None => UdpInput::None,
                BeaconInput::PublicEndpoint(ep) => UdpInput::PublicEndpoint(ep),
                BeaconInput::HandshakeWaiting => UdpInput::HandshakeWaiting,
                BeaconInput::Relayed { sender } => {
                    let _ = node.take_authenticated();
                    if let Some(frame) = bytes.get_mut(DELIVER_OFFSET..) {
                        node.handle_datagram(now, path_label(sender), frame);
                    }
                    if let Some(p) = node.take_authenticated() {
                        self.adopt_peer(node, now, p, true);
                    }
                    UdpInput::None
                }
            };
        }
        // A PILS frame names its sender; it is opened as coming from the
        // sender's label (where the node's peer table has it) and proves
        // the path only if it opens. Key exchanges keep their source for
        // the node's per-source limits.
        let sender = bytes
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes);
        let pils = bytes.get(..4) == Some(&crate::wire::tunnel::MAGIC_PILS[..]);
        // A key exchange from the direct endpoint this part already holds
        // for its sender is that peer's own (charged to the peer's bucket,
        // as without paths); from anywhere else it keeps its real source
        // and pays the per-source and stranger budgets, so a flood of
        // forged key exchanges from one address cannot delay a known
        // peer's (sim scenario `nat-kx-flood`; daemon_hostile's
        // first-ping-during-a-flood).
        let kx = matches!(
            bytes.get(..4),
            Some(m) if m == crate::wire::tunnel::MAGIC_PILA || m == crate::wire::tunnel::MAGIC_PILK
        );
        let feed = match sender {
            Some(s) if pils => path_label(s),
            Some(s)
                if kx
                    && self.view(s).and_then(|v| v.endpoint) == Some(from)
                    && node.peer_endpoint(s).and_then(label_peer) == Some(s) =>
            {
                path_label(s)
            }
            _ => from,
        };
        let _ = node.take_authenticated();
        node.handle_datagram(now, feed, bytes);
        let proved = node.take_authenticated();
        let direct = !self.is_beacon(from);
        if let Some(p) = proved {
            if Some(p) == sender && direct {
                self.on_authenticated(now, p, Some(from));
            }
            self.adopt_peer(node, now, p, Some(p) != sender || !direct);
        }
        UdpInput::None
    }

    /// Puts `peer`'s label into `node`'s peer table if it holds a real
    /// address there (a registry endpoint, a static peer, or where a
    /// verified key exchange came from), taking that address as the
    /// peer's candidate (or, if `authenticated`, confirmed) direct
    /// endpoint; `authenticated` frames that came via the relay count for
    /// the relay path.
    pub fn adopt_peer<P, R>(
        &mut self,
        node: &mut Node<P, R>,
        now: Instant,
        peer: u32,
        authenticated: bool,
    ) where
        P: CryptoProvider,
        R: RngCore + CryptoRng + SeedableRng,
    {
        let Some(ep) = node.peer_endpoint(peer) else {
            return;
        };
        if label_peer(ep) == Some(peer) {
            if authenticated {
                self.on_authenticated(now, peer, None);
            }
            return;
        }
        if authenticated {
            self.on_authenticated(now, peer, Some(ep));
        } else {
            self.add_candidate(now, peer, ep);
        }
        node.set_peer_endpoint(peer, path_label(peer));
    }

    /// Pings the peers this part wants probed (`network_of` names a peer's
    /// network): the answer comes back authenticated on whichever path
    /// works (`spec/beacon.md` §8.3).
    pub fn send_probes<P, R>(
        &mut self,
        node: &mut Node<P, R>,
        now: Instant,
        network_of: impl Fn(u32) -> u16,
    ) where
        P: CryptoProvider,
        R: RngCore + CryptoRng + SeedableRng,
    {
        while let Some(peer) = self.take_probe() {
            if node.has_session(peer) {
                let _ = node.ping(now, Addr::new(network_of(peer), peer));
            }
        }
    }

    /// The next datagram (or batch of up to `max_segments`) to send, in
    /// `buf`: this part's own first (discover, punch, probe copies), then
    /// the node's, routed for the peer its label names. Returns the
    /// destination, length and segment size.
    pub fn poll_transmit_node<P, R>(
        &mut self,
        node: &mut Node<P, R>,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<(SocketAddr, usize, usize)>
    where
        P: CryptoProvider,
        R: RngCore + CryptoRng + SeedableRng,
    {
        if let Some(t) = self.poll_transmit(now, buf) {
            return Some(t);
        }
        loop {
            let (dst, len, seg) = if max_segments > 1 {
                let b = node.poll_transmit_batch(now, buf, max_segments)?;
                (b.dst, b.len, b.segment_size)
            } else {
                let t = node.poll_transmit(now, buf)?;
                (t.dst, t.len, t.len)
            };
            let Some(peer) = label_peer(dst) else {
                return Some((dst, len, seg));
            };
            if let Some(t) = self.route_in_place(now, peer, buf, len, seg) {
                return Some((t.dst, t.len, t.segment_size));
            }
        }
    }
}

/// A routed datagram or batch in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit2 {
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes in the buffer.
    pub len: usize,
    /// Size of each datagram but the last.
    pub segment_size: usize,
}

/// Wraps each `seg`-byte datagram of the `len` bytes in `buf` as
/// `05 ‖ sender ‖ dest ‖ frame`, in place (from the back). Returns the new
/// length and segment size, or `None` if `buf` has no room.
fn wrap_relay(
    buf: &mut [u8],
    len: usize,
    seg: usize,
    sender: u32,
    dest: u32,
) -> Option<(usize, usize)> {
    let seg = seg.max(1);
    let segments = len.div_ceil(seg).max(1);
    let new_len = len.checked_add(segments.checked_mul(RELAY_OVERHEAD)?)?;
    if buf.len() < new_len || len == 0 {
        return None;
    }
    for i in (0..segments).rev() {
        let start = i * seg;
        let end = (start + seg).min(len);
        let to = i * (seg + RELAY_OVERHEAD);
        buf.copy_within(start..end, to + RELAY_OVERHEAD);
        relay_header(buf.get_mut(to..)?, sender, dest).ok()?;
    }
    Some((new_len, seg + RELAY_OVERHEAD))
}

/// Bytes in front of the frame of a relay delivery.
pub const DELIVER_OFFSET: usize = RELAY_DELIVER_OVERHEAD;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }
    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const BEACON: &str = "192.0.2.100:9001";

    fn paths() -> Paths {
        let mut p = Paths::new(
            PathsConfig {
                beacon: ep(BEACON),
                keepalive: Some(KEEPALIVE),
                heartbeat: Duration::from_secs(30),
                endpoint_override: None,
                observer: None,
            },
            t(0),
        );
        p.set_node_id(5, t(0));
        p
    }

    fn drain(p: &mut Paths, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 256];
        let mut out = Vec::new();
        while let Some((dst, len, _)) = p.poll_transmit(now, &mut buf) {
            out.push((dst, buf[..len].to_vec()));
        }
        out
    }

    #[test]
    fn labels_round_trip_and_are_not_real_addresses() {
        for n in [0, 1, 0xffff, 0x1_0000, u32::MAX] {
            assert_eq!(label_peer(path_label(n)), Some(n));
        }
        assert_eq!(label_peer(ep("10.0.0.1:1")), None);
        assert_eq!(label_peer(ep("[100::5]:2")), None);
        assert_eq!(label_peer(ep("[101::5]:1")), None);
    }

    #[test]
    fn discovers_at_start_and_after_registration() {
        let mut p = paths();
        p.handle_timeout(t(0));
        let out = drain(&mut p, t(0));
        assert_eq!(out, vec![(ep(BEACON), vec![1, 0, 0, 0, 5])]);
        // Unanswered so far: retried after 1 s (spec/beacon.md §4.1).
        assert_eq!(p.poll_timeout(), Some(t(1_000)), "retry back-off");
        let reply = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x40];
        assert_eq!(
            p.handle_beacon(t(1), ep(BEACON), &reply),
            BeaconInput::PublicEndpoint(ep("203.0.113.7:40000"))
        );
        assert_eq!(p.poll_timeout(), Some(t(25_001)), "keepalive period");
        assert_eq!(p.advertised(), Some(ep("203.0.113.7:40000")));
        // Rebinding: a new observed endpoint is reported and counted.
        let moved = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x41];
        assert!(matches!(
            p.handle_beacon(t(2), ep(BEACON), &moved),
            BeaconInput::PublicEndpoint(_)
        ));
        assert_eq!(p.stats().endpoint_changes, 1);
    }

    #[test]
    fn mapping_compares_two_destinations() {
        let mut p = paths();
        assert_eq!(p.mapping().name(), "unknown");
        assert!(p.mapping().reason().unwrap().contains("one beacon address"));
        let obs = ep("192.0.2.101:9001");
        let mut q = Paths::new(
            PathsConfig {
                observer: Some(obs),
                ..*p.config()
            },
            t(0),
        );
        q.set_node_id(5, t(0));
        q.handle_timeout(t(0));
        let sent = drain(&mut q, t(0));
        assert!(sent.contains(&(obs, vec![1, 0, 0, 0, 5])), "{sent:?}");
        assert!(
            sent.contains(&(ep(BEACON), vec![1, 0, 0, 0, 5])),
            "{sent:?}"
        );
        let reply = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x40];
        q.handle_beacon(t(1), ep(BEACON), &reply);
        assert!(q.mapping().reason().unwrap().contains("observer"));
        // The observer's reply is missing: its discover is repeated after
        // 1 s, not a keepalive period later (nat-matrix seed 6 under loss).
        assert_eq!(q.poll_timeout(), Some(t(1_000)));
        q.handle_timeout(t(1_000));
        assert_eq!(drain(&mut q, t(1_000)), vec![(obs, vec![1, 0, 0, 0, 5])]);
        // The observer's reply does not change the advertised endpoint.
        let other = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x41];
        assert_eq!(q.handle_beacon(t(2), obs, &other), BeaconInput::None);
        assert_eq!(q.public_endpoint(), Some(ep("203.0.113.7:40000")));
        assert_eq!(q.mapping(), Mapping::DestinationDependent);
        q.handle_beacon(t(3), obs, &reply);
        assert_eq!(q.mapping(), Mapping::EndpointIndependent);
        p.handle_beacon(t(1), ep(BEACON), &reply);
        assert!(matches!(p.mapping(), Mapping::Unknown(_)));
    }

    #[test]
    fn first_contact_races_then_falls_back_to_relay() {
        let mut p = paths();
        drain(&mut p, t(0));
        let peer_ep = ep("198.51.100.9:4000");
        p.add_candidate(t(0), 9, peer_ep);
        // Punch request goes to the beacon.
        assert_eq!(
            drain(&mut p, t(0)),
            vec![(ep(BEACON), vec![3, 0, 0, 0, 5, 0, 0, 0, 9])]
        );
        assert_eq!(
            p.route(t(1), 9, true),
            Route {
                direct: Some(peer_ep),
                relay: true
            }
        );
        // Data is not copied: only small datagrams probe the direct path.
        assert_eq!(
            p.route(t(2), 9, false),
            Route {
                direct: None,
                relay: true
            }
        );
        p.handle_timeout(t(3_000));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Relay);
        assert_eq!(
            p.route(t(3_001), 9, true),
            Route {
                direct: None,
                relay: true
            }
        );
        // Background probe while in use: punch + direct copies again.
        p.handle_timeout(t(8_000));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Both);
        assert_eq!(p.stats().punches, 2);
        // A direct authenticated frame upgrades without anything else.
        p.on_authenticated(t(8_100), 9, Some(ep("198.51.100.9:4001")));
        let v = p.view(9).unwrap();
        assert_eq!(v.kind, PathKind::Direct);
        assert_eq!(v.endpoint, Some(ep("198.51.100.9:4001")));
        assert_eq!(
            p.route(t(8_200), 9, false),
            Route {
                direct: Some(ep("198.51.100.9:4001")),
                relay: false
            }
        );
    }

    /// `tunnel.relay_activated`'s source: a peer settling on the relay is
    /// reported once, not again when a background probe ends back on the
    /// relay, and again only after a confirmed direct path was lost.
    #[test]
    fn settling_on_the_relay_is_reported_once_per_direct_loss() {
        let mut p = paths();
        p.add_candidate(t(0), 9, ep("198.51.100.9:4000"));
        assert_eq!(p.take_relay_activated(), None, "racing is not relay");
        p.handle_timeout(t(3_000));
        assert_eq!(p.take_relay_activated(), Some(9));
        // Probes every 5 s while in use, each ending on the relay again.
        for k in 1..=4u64 {
            p.route(t(k * 6_500), 9, false);
            p.handle_timeout(t(3_000 + k * 5_000));
            p.handle_timeout(t(3_000 + k * 5_000 + 1_500));
        }
        assert!(p.stats().to_relay >= 3, "{:?}", p.stats());
        assert_eq!(p.take_relay_activated(), None);
        // Direct, then silent: back to racing and, failing, the relay.
        let a = ep("198.51.100.9:4001");
        p.on_authenticated(t(30_000), 9, Some(a));
        for ms in [30_100, 30_150, 30_200, 30_250] {
            p.route(t(ms), 9, false);
        }
        p.handle_timeout(t(33_100));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Both);
        p.handle_timeout(t(36_100));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Relay);
        assert_eq!(p.take_relay_activated(), Some(9));
        assert_eq!(p.take_relay_activated(), None);
        // The queue is bounded: further activations are counted.
        for peer in 100..100 + RELAY_EVENTS as u32 + 5 {
            p.add_candidate(t(40_000), peer, ep("198.51.100.10:4000"));
        }
        p.handle_timeout(t(43_000));
        assert_eq!(p.stats().relay_events_dropped, 5);
    }

    #[test]
    fn first_contact_through_the_relay_repeats_a_lost_punch_request() {
        let mut p = paths();
        p.handle_timeout(t(0));
        drain(&mut p, t(0));
        let req = vec![3, 0, 0, 0, 5, 0, 0, 0, 9];
        // A relayed frame of peer 9 authenticates: race with a punch.
        p.on_authenticated(t(10), 9, None);
        assert_eq!(p.view(9).unwrap().kind, PathKind::Both);
        assert_eq!(drain(&mut p, t(10)), vec![(ep(BEACON), req.clone())]);
        // The request (or its command) was lost: no endpoint to try, so
        // the request is repeated within the window (nat-matrix seed 26).
        assert_eq!(p.poll_timeout(), Some(t(260)), "ping first");
        p.handle_timeout(t(260));
        assert!(drain(&mut p, t(260)).is_empty());
        assert_eq!(p.poll_timeout(), Some(t(510)));
        p.handle_timeout(t(510));
        assert_eq!(drain(&mut p, t(510)), vec![(ep(BEACON), req.clone())]);
        assert_eq!(p.stats().punches, 2);
        // The command names the peer's endpoint: no more repeats.
        let cmd = [0x04, 4, 198, 51, 100, 9, 0x0f, 0xa0];
        p.handle_beacon(t(540), ep(BEACON), &cmd);
        assert_eq!(p.view(9).unwrap().endpoint, Some(ep("198.51.100.9:4000")));
        drain(&mut p, t(540));
        p.handle_timeout(t(1_010));
        p.handle_timeout(t(1_400));
        assert!(
            drain(&mut p, t(1_400))
                .iter()
                .all(|(_, b)| b.first() != Some(&3)),
            "no punch request once a candidate is known"
        );
        assert_eq!(p.stats().punches, 2);
    }

    #[test]
    fn silent_direct_path_races_again_and_relay_frames_do_not_move_it() {
        let mut p = paths();
        let a = ep("198.51.100.9:4000");
        p.add_candidate(t(0), 9, a);
        p.on_authenticated(t(10), 9, Some(a));
        p.on_authenticated(t(20), 9, None);
        assert_eq!(p.view(9).unwrap().kind, PathKind::Direct);
        assert_eq!(p.view(9).unwrap().endpoint, Some(a));
        // One unanswered send (a keepalive) is not silence.
        p.route(t(100), 9, true);
        p.handle_timeout(t(3_200));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Direct);
        for ms in [150, 200, 250] {
            p.route(t(ms), 9, false);
        }
        p.handle_timeout(t(3_099));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Direct);
        p.handle_timeout(t(3_100));
        assert_eq!(p.view(9).unwrap().kind, PathKind::Both);
        assert_eq!(p.stats().direct_lost, 1);
        // Racing: data goes via the relay, so nothing is lost while it
        // races; a small datagram also probes the direct path.
        assert_eq!(
            p.route(t(3_200), 9, false),
            Route {
                direct: None,
                relay: true
            }
        );
        assert_eq!(
            p.route(t(3_201), 9, true),
            Route {
                direct: Some(a),
                relay: true
            }
        );
    }

    #[test]
    fn punch_command_gives_the_requested_peer_a_candidate() {
        let mut p = paths();
        p.prefer_direct(t(0), 7);
        drain(&mut p, t(0));
        let cmd = [0x04, 4, 198, 51, 100, 10, 0x13, 0x88];
        assert_eq!(p.handle_beacon(t(5), ep(BEACON), &cmd), BeaconInput::None);
        assert_eq!(p.view(7).unwrap().endpoint, Some(ep("198.51.100.10:5000")));
        assert!(!p.view(7).unwrap().confirmed);
        // The three punch probes.
        assert_eq!(drain(&mut p, t(5)).len(), 3);
    }

    #[test]
    fn relay_wrapping_in_place_keeps_every_segment() {
        let mut p = paths();
        let mut buf = vec![0u8; 64];
        buf[..10].copy_from_slice(b"PILSabPILS");
        // Two segments: 6 and 4 bytes.
        let out = p.route_in_place(t(0), 9, &mut buf, 10, 6).unwrap();
        assert_eq!(out.dst, ep(BEACON));
        assert_eq!(out.segment_size, 15);
        assert_eq!(out.len, 28);
        assert_eq!(&buf[..15], b"\x05\0\0\0\x05\0\0\0\x09PILSab");
        assert_eq!(&buf[15..28], b"\x05\0\0\0\x05\0\0\0\x09PILS");
        // No room: dropped and counted.
        let mut small = vec![0u8; 13];
        small[..4].copy_from_slice(b"PILS");
        assert!(p.route_in_place(t(0), 9, &mut small, 4, 4).is_some());
        let mut tiny = vec![0u8; 8];
        assert!(p.route_in_place(t(0), 9, &mut tiny, 4, 4).is_none());
        assert_eq!(p.stats().dropped, 1);
    }

    #[test]
    fn racing_queues_a_direct_copy() {
        let mut p = paths();
        drain(&mut p, t(0));
        let a = ep("198.51.100.9:4000");
        p.add_candidate(t(0), 9, a);
        drain(&mut p, t(0));
        let mut buf = vec![0u8; 64];
        buf[..6].copy_from_slice(b"PILSxy");
        let out = p.route_in_place(t(1), 9, &mut buf, 6, 6).unwrap();
        assert_eq!(out.dst, ep(BEACON));
        let copies = drain(&mut p, t(1));
        assert_eq!(copies, vec![(a, b"PILSxy".to_vec())]);
    }

    #[test]
    fn racing_copies_only_small_datagrams_at_a_bounded_rate() {
        let mut p = paths();
        drain(&mut p, t(0));
        let a = ep("198.51.100.9:4000");
        p.add_candidate(t(0), 9, a);
        drain(&mut p, t(0));
        assert_eq!(p.take_probe(), Some(9), "a ping is asked for at once");
        let before = p.stats().direct_bytes;
        // A full data segment and a batch are relayed only.
        let mut buf = vec![0u8; 4096];
        let out = p.route_in_place(t(1), 9, &mut buf, 1200, 1200).unwrap();
        assert_eq!(out.dst, ep(BEACON));
        let out = p.route_in_place(t(2), 9, &mut buf, 200, 100).unwrap();
        assert_eq!(out.dst, ep(BEACON));
        assert!(drain(&mut p, t(2)).is_empty());
        // Small ones: the first goes directly too, the next within the gap
        // does not.
        for ms in [3, 4] {
            buf[..4].copy_from_slice(b"PILS");
            p.route_in_place(t(ms), 9, &mut buf, 60, 60).unwrap();
        }
        assert_eq!(drain(&mut p, t(4)).len(), 1);
        p.route_in_place(t(3 + 50), 9, &mut buf, 60, 60).unwrap();
        assert_eq!(drain(&mut p, t(53)).len(), 1);
        assert_eq!(p.stats().direct_bytes - before, 120);
        // Another ping is asked for every PROBE_PING while racing.
        assert!(p.poll_timeout().is_some_and(|d| d <= t(250)));
        p.handle_timeout(t(250));
        assert_eq!(p.take_probe(), Some(9));
    }

    #[test]
    fn peer_table_is_bounded() {
        let mut p = paths();
        for i in 0..MAX_PATH_PEERS as u32 + 10 {
            p.add_candidate(t(0), i + 1, ep("198.51.100.9:4000"));
        }
        assert_eq!(p.peers.len(), MAX_PATH_PEERS);
        assert_eq!(p.stats().dropped, 10);
        assert!(p.copies.len() <= COPY_QUEUE);
    }
}
