//! Per-peer path selection: direct or via the beacon (`spec/beacon.md` §5).
//!
//! [`PathTable`] is owned by the node. The node reports what happened
//! (decrypts, send errors, dial attempts, sends) and asks where a frame for a
//! peer should go ([`PathTable::route`], [`PathTable::key_exchange_route`]).
//! A relay flag is either *unpinned* (set by a dial's direct phase or by
//! inbound relay traffic; cleared by observed direct traffic) or *pinned*
//! (registry says relay-only, blackhole or ICMP heuristics, an explicit pin;
//! cleared only by the periodic re-probe or an explicit request). Relay peers
//! are re-probed every [`REPROBE_INTERVAL`]: drain [`PathTable::poll_event`]
//! for [`PathEvent::Reprobe`] and punch + probe those peers.
//!
//! Bounds: at most `max_peers` peers (new ones refused when full) and
//! `max_relay_peers` relay-flagged peers (a peer that would become relay
//! while the cap is reached stays as it is, and relayed frames from a new
//! peer are refused); the event queue holds at most [`EVENT_QUEUE`] events.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{
    BLACKHOLE_MISSES, BLACKHOLE_SILENCE, DIAL_DIRECT_ATTEMPTS, ICMP_ERROR_LIMIT, MAX_RELAY_PEERS,
    REPROBE_INTERVAL, UNPIN_DIRECT_DECRYPTS, same_endpoint,
};
use crate::time::Instant;

/// Most queued path events (`spec/beacon.md` §5).
pub const EVENT_QUEUE: usize = 8192;

/// Limits and the beacon address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// The beacon; `None` disables relaying (every route is direct).
    pub beacon: Option<SocketAddr>,
    /// Most peers tracked.
    pub max_peers: usize,
    /// Most relay-flagged peers.
    pub max_relay_peers: usize,
    /// Re-probe period for relay peers.
    pub reprobe_interval: Duration,
}

impl PathConfig {
    /// Protocol defaults with the given beacon.
    pub fn new(beacon: Option<SocketAddr>) -> Self {
        PathConfig {
            beacon,
            max_peers: 16_384,
            max_relay_peers: MAX_RELAY_PEERS,
            reprobe_interval: REPROBE_INTERVAL,
        }
    }
}

/// Why a peer is pinned to relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinReason {
    /// The registry says the peer is relay-only.
    RelayOnly,
    /// Nothing came back over the direct path ([`BLACKHOLE_MISSES`] misses).
    Blackhole,
    /// [`ICMP_ERROR_LIMIT`] consecutive unreachable errors.
    Unreachable,
    /// Pinned by the node for another reason (e.g. beacon admission).
    Other,
}

/// The relay flag of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayFlag {
    /// Frames go directly to the peer's endpoint.
    Direct,
    /// Frames go via the beacon; direct traffic can clear this.
    Unpinned,
    /// Frames go via the beacon until a re-probe or an explicit request.
    Pinned(PinReason),
}

/// Where to send a frame for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Send the frame as is to this endpoint.
    Direct(SocketAddr),
    /// Wrap the frame (`05 ‖ own ‖ peer ‖ frame`) and send it to the beacon.
    Relay(SocketAddr),
    /// No endpoint known and no beacon: the frame cannot be sent.
    Unreachable,
}

/// Where a key-exchange frame goes: directly, as a relay copy, or both
/// (`spec/beacon.md` §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyExchangeRoute {
    /// Direct endpoint to send the frame to.
    pub direct: Option<SocketAddr>,
    /// Beacon to send a relay-wrapped copy to.
    pub relay: Option<SocketAddr>,
}

/// Kinds of send error the node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendErrorKind {
    /// ICMP port unreachable (connection refused).
    ConnectionRefused,
    /// ICMP host unreachable.
    HostUnreachable,
    /// ICMP network unreachable.
    NetworkUnreachable,
    /// Anything else; does not count towards the ICMP limit.
    Other,
}

/// Something the node must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathEvent {
    /// The peer now goes via the beacon.
    ToRelay {
        /// Peer node.
        peer: u32,
        /// The new flag.
        flag: RelayFlag,
    },
    /// The peer now goes direct.
    ToDirect {
        /// Peer node.
        peer: u32,
    },
    /// Time to look for a direct path to a relay peer: request a punch and
    /// send direct probes to `endpoint` (if known).
    Reprobe {
        /// Peer node.
        peer: u32,
        /// Last known direct endpoint.
        endpoint: Option<SocketAddr>,
    },
}

/// A snapshot of one peer's path state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerPath {
    /// Last known direct endpoint.
    pub endpoint: Option<SocketAddr>,
    /// Relay flag.
    pub flag: RelayFlag,
    /// The registry says the peer is relay-only.
    pub relay_only: bool,
    /// Consecutive ICMP-unreachable errors.
    pub icmp_errors: u8,
    /// Blackhole misses since the last direct decrypt.
    pub misses: u8,
    /// Direct decrypts counted towards clearing an unpinned flag.
    pub direct_decrypts: u8,
    /// Failed direct dial attempts in the current dial.
    pub dial_failures: u8,
}

/// Internal per-peer state.
#[derive(Clone, Copy, Debug)]
struct Peer {
    view: PeerPath,
    /// First direct send since the last direct decrypt.
    silent_since: Option<Instant>,
    /// The relay flag was set by the current dial's direct phase.
    set_by_dial: bool,
    /// Scheduled re-probe, if relay.
    reprobe_at: Option<Instant>,
}

/// Per-peer direct/relay state for one node (`spec/beacon.md` §5).
#[derive(Clone, Debug)]
pub struct PathTable {
    cfg: PathConfig,
    peers: BTreeMap<u32, Peer>,
    relay_count: usize,
    reprobes: BTreeSet<(Instant, u32)>,
    events: VecDeque<PathEvent>,
    refused: u64,
}

impl PathTable {
    /// An empty table.
    pub fn new(cfg: PathConfig) -> Self {
        PathTable {
            cfg,
            peers: BTreeMap::new(),
            relay_count: 0,
            reprobes: BTreeSet::new(),
            events: VecDeque::new(),
            refused: 0,
        }
    }

    /// The state of `peer`, if tracked.
    pub fn peer(&self, peer: u32) -> Option<PeerPath> {
        self.peers.get(&peer).map(|p| p.view)
    }

    /// Number of relay-flagged peers.
    pub fn relay_peer_count(&self) -> usize {
        self.relay_count
    }

    /// Peers or relay marks refused because a cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Forgets `peer`.
    pub fn remove(&mut self, peer: u32) {
        if let Some(p) = self.peers.remove(&peer) {
            if p.view.flag != RelayFlag::Direct {
                self.relay_count -= 1;
            }
            if let Some(at) = p.reprobe_at {
                self.reprobes.remove(&(at, peer));
            }
        }
    }

    /// Sets the peer's direct endpoint (from a registry resolve). False if
    /// the table is full.
    pub fn set_endpoint(&mut self, peer: u32, endpoint: SocketAddr) -> bool {
        match self.entry(peer) {
            Some(p) => {
                p.view.endpoint = Some(endpoint);
                true
            }
            None => false,
        }
    }

    /// Records what the registry says about relay-only. A relay-only peer is
    /// pinned at once and never re-probed; clearing it unpins the flag so the
    /// next re-probe can try direct.
    pub fn set_relay_only(&mut self, now: Instant, peer: u32, relay_only: bool) {
        let Some(p) = self.entry(peer) else {
            return;
        };
        p.view.relay_only = relay_only;
        if relay_only {
            self.mark_relay(now, peer, RelayFlag::Pinned(PinReason::RelayOnly));
        } else if let Some(p) = self.peers.get_mut(&peer) {
            if p.view.flag == RelayFlag::Pinned(PinReason::RelayOnly) {
                p.view.flag = RelayFlag::Unpinned;
                p.view.direct_decrypts = 0;
            }
            self.schedule(now, peer);
        }
    }

    /// Pins `peer` to relay (e.g. beacon admission). False if refused.
    pub fn pin_relay(&mut self, now: Instant, peer: u32, reason: PinReason) -> bool {
        self.entry(peer).is_some() && self.mark_relay(now, peer, RelayFlag::Pinned(reason))
    }

    /// Sends `peer` via the beacon until direct traffic clears it (unpinned),
    /// e.g. when key-exchange retransmissions switch to relay. False if
    /// refused (no beacon, table or relay cap full).
    pub fn relay_unpinned(&mut self, now: Instant, peer: u32) -> bool {
        self.cfg.beacon.is_some()
            && self.entry(peer).is_some()
            && self.mark_relay(now, peer, RelayFlag::Unpinned)
    }

    /// Drops any relay flag ("prefer direct"), unless the peer is relay-only.
    pub fn prefer_direct(&mut self, peer: u32) {
        if self.peers.get(&peer).is_some_and(|p| !p.view.relay_only) {
            self.mark_direct(peer);
        }
    }

    /// Where a data frame for `peer` goes.
    pub fn route(&self, peer: u32) -> Route {
        let p = self.peers.get(&peer).map(|p| p.view);
        let endpoint = p.and_then(|p| p.endpoint);
        let relay = p.is_some_and(|p| p.flag != RelayFlag::Direct) || endpoint.is_none();
        match (relay, self.cfg.beacon, endpoint) {
            (true, Some(beacon), _) => Route::Relay(beacon),
            (_, _, Some(ep)) => Route::Direct(ep),
            _ => Route::Unreachable,
        }
    }

    /// Where a key-exchange frame for `peer` goes: a relay peer gets only
    /// the relay copy; otherwise directly and, with a beacon, also relayed.
    pub fn key_exchange_route(&self, peer: u32) -> KeyExchangeRoute {
        match self.route(peer) {
            Route::Relay(beacon) => KeyExchangeRoute {
                direct: None,
                relay: Some(beacon),
            },
            Route::Direct(ep) => KeyExchangeRoute {
                direct: Some(ep),
                relay: self.cfg.beacon,
            },
            Route::Unreachable => KeyExchangeRoute {
                direct: None,
                relay: None,
            },
        }
    }

    /// An authenticated frame from `peer` arrived from `from`. From the
    /// beacon it counts as relayed ([`Self::on_relay_decrypt`]); otherwise
    /// the endpoint follows `from` (NAT rebinding), the blackhole and ICMP
    /// counters reset, and an unpinned flag clears after
    /// [`UNPIN_DIRECT_DECRYPTS`] such decrypts.
    pub fn on_direct_decrypt(&mut self, now: Instant, peer: u32, from: SocketAddr) {
        if self.cfg.beacon.is_some_and(|b| same_endpoint(b, from)) {
            self.on_relay_decrypt(now, peer);
            return;
        }
        let Some(p) = self.entry(peer) else {
            return;
        };
        let v = &mut p.view;
        v.endpoint = Some(from);
        v.icmp_errors = 0;
        v.misses = 0;
        p.silent_since = None;
        let clear = v.flag == RelayFlag::Unpinned && {
            v.direct_decrypts = v.direct_decrypts.saturating_add(1);
            v.direct_decrypts >= UNPIN_DIRECT_DECRYPTS
        };
        if clear {
            self.mark_direct(peer);
        }
    }

    /// A frame attributed to `peer` arrived via the beacon. If no direct
    /// endpoint is known the peer is marked relay (unpinned). Returns false
    /// if the frame must be dropped because the peer table or the relay cap
    /// is full.
    pub fn on_relay_decrypt(&mut self, now: Instant, peer: u32) -> bool {
        let Some(p) = self.entry(peer) else {
            return false;
        };
        p.view.icmp_errors = 0;
        if p.view.flag != RelayFlag::Direct || p.view.endpoint.is_some() {
            return true;
        }
        self.mark_relay(now, peer, RelayFlag::Unpinned)
    }

    /// A frame is being sent directly to `peer`: blackhole accounting. After
    /// [`BLACKHOLE_SILENCE`] of sending without a direct decrypt each send
    /// counts a miss; [`BLACKHOLE_MISSES`] pin the peer to relay.
    pub fn on_direct_send(&mut self, now: Instant, peer: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.view.flag != RelayFlag::Direct || self.cfg.beacon.is_none() {
            return;
        }
        let since = *p.silent_since.get_or_insert(now);
        if now.saturating_duration_since(since) <= BLACKHOLE_SILENCE {
            return;
        }
        p.view.misses = p.view.misses.saturating_add(1);
        if p.view.misses >= BLACKHOLE_MISSES {
            self.mark_relay(now, peer, RelayFlag::Pinned(PinReason::Blackhole));
        }
    }

    /// A send to `peer` failed. [`ICMP_ERROR_LIMIT`] consecutive
    /// unreachable errors pin it to relay.
    pub fn on_send_error(&mut self, now: Instant, peer: u32, kind: SendErrorKind) {
        if kind == SendErrorKind::Other || self.cfg.beacon.is_none() {
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.view.icmp_errors = p.view.icmp_errors.saturating_add(1);
        if p.view.icmp_errors >= ICMP_ERROR_LIMIT && p.view.flag == RelayFlag::Direct {
            self.mark_relay(now, peer, RelayFlag::Pinned(PinReason::Unreachable));
        }
    }

    /// A direct dial attempt to `peer` went unanswered. After
    /// [`DIAL_DIRECT_ATTEMPTS`] the peer goes to relay (unpinned) and the
    /// remaining attempts use the beacon. Returns whether it switched now.
    pub fn on_dial_attempt_failed(&mut self, now: Instant, peer: u32) -> bool {
        if self.cfg.beacon.is_none() {
            return false;
        }
        let Some(p) = self.entry(peer) else {
            return false;
        };
        if p.view.flag != RelayFlag::Direct {
            return false;
        }
        p.view.dial_failures = p.view.dial_failures.saturating_add(1);
        if p.view.dial_failures < DIAL_DIRECT_ATTEMPTS {
            return false;
        }
        let switched = self.mark_relay(now, peer, RelayFlag::Unpinned);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.set_by_dial = switched;
        }
        switched
    }

    /// The dial to `peer` ended. A failed dial clears the relay flag its own
    /// direct phase set; either way the attempt count restarts.
    pub fn on_dial_finished(&mut self, peer: u32, success: bool) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.view.dial_failures = 0;
        let undo = !success && p.set_by_dial && p.view.flag == RelayFlag::Unpinned;
        p.set_by_dial = false;
        if undo {
            self.mark_direct(peer);
        }
    }

    /// Runs due re-probes: each relay peer (not relay-only) gets a
    /// [`PathEvent::Reprobe`] every `reprobe_interval`; a pinned flag is
    /// first turned into an unpinned one so direct traffic can clear it.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, peer)) = self.reprobes.first() {
            if at > now {
                break;
            }
            self.reprobes.remove(&(at, peer));
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            p.reprobe_at = None;
            if p.view.flag == RelayFlag::Direct || p.view.relay_only {
                continue;
            }
            if matches!(p.view.flag, RelayFlag::Pinned(_)) {
                p.view.flag = RelayFlag::Unpinned;
                p.view.direct_decrypts = 0;
            }
            let endpoint = p.view.endpoint;
            self.emit(PathEvent::Reprobe { peer, endpoint });
            self.schedule(now, peer);
        }
    }

    /// The next re-probe, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.reprobes.first().map(|&(at, _)| at)
    }

    /// The next event for the node.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    /// The entry for `peer`, created if there is room.
    fn entry(&mut self, peer: u32) -> Option<&mut Peer> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.cfg.max_peers {
            self.refused += 1;
            return None;
        }
        Some(self.peers.entry(peer).or_insert(Peer {
            view: PeerPath {
                endpoint: None,
                flag: RelayFlag::Direct,
                relay_only: false,
                icmp_errors: 0,
                misses: 0,
                direct_decrypts: 0,
                dial_failures: 0,
            },
            silent_since: None,
            set_by_dial: false,
            reprobe_at: None,
        }))
    }

    /// Sets a relay flag on a tracked peer. A pinned flag is never weakened
    /// to unpinned. False if the relay cap refuses a new relay peer.
    fn mark_relay(&mut self, now: Instant, peer: u32, flag: RelayFlag) -> bool {
        let cap_reached = self.relay_count >= self.cfg.max_relay_peers;
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        // A relay-only peer is only ever pinned for that reason.
        let flag = if p.view.relay_only {
            RelayFlag::Pinned(PinReason::RelayOnly)
        } else {
            flag
        };
        let was = p.view.flag;
        match (was, flag) {
            (RelayFlag::Direct, _) if cap_reached => {
                self.refused += 1;
                return false;
            }
            (RelayFlag::Pinned(_), RelayFlag::Unpinned) => return true,
            (RelayFlag::Direct, _) => self.relay_count += 1,
            _ => {}
        }
        p.view.flag = flag;
        p.view.direct_decrypts = 0;
        if was != flag {
            self.emit(PathEvent::ToRelay { peer, flag });
        }
        if was == RelayFlag::Direct {
            self.schedule(now, peer);
        }
        true
    }

    /// Clears a relay flag.
    fn mark_direct(&mut self, peer: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.view.flag == RelayFlag::Direct {
            return;
        }
        p.view.flag = RelayFlag::Direct;
        p.view.direct_decrypts = 0;
        p.view.misses = 0;
        p.view.icmp_errors = 0;
        p.silent_since = None;
        p.set_by_dial = false;
        if let Some(at) = p.reprobe_at.take() {
            self.reprobes.remove(&(at, peer));
        }
        self.relay_count -= 1;
        self.emit(PathEvent::ToDirect { peer });
    }

    /// Schedules the next re-probe of a relay peer (not relay-only).
    fn schedule(&mut self, now: Instant, peer: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.view.flag == RelayFlag::Direct || p.view.relay_only || p.reprobe_at.is_some() {
            return;
        }
        let at = now + self.cfg.reprobe_interval;
        p.reprobe_at = Some(at);
        self.reprobes.insert((at, peer));
    }

    /// Queues an event unless the queue is full.
    fn emit(&mut self, ev: PathEvent) {
        if self.events.len() < EVENT_QUEUE {
            self.events.push_back(ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BEACON: &str = "192.0.2.100:9001";

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn table() -> PathTable {
        PathTable::new(PathConfig::new(Some(ep(BEACON))))
    }

    fn events(p: &mut PathTable) -> Vec<PathEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    fn flag(p: &PathTable, peer: u32) -> RelayFlag {
        p.peer(peer).unwrap().flag
    }

    const PEER_EP: &str = "198.51.100.9:4000";

    #[test]
    fn direct_by_default_relay_when_nothing_known() {
        let mut p = table();
        assert_eq!(p.route(9), Route::Relay(ep(BEACON)));
        p.set_endpoint(9, ep(PEER_EP));
        assert_eq!(p.route(9), Route::Direct(ep(PEER_EP)));
        assert_eq!(
            p.key_exchange_route(9),
            KeyExchangeRoute {
                direct: Some(ep(PEER_EP)),
                relay: Some(ep(BEACON))
            }
        );
        let no_beacon = PathTable::new(PathConfig::new(None));
        assert_eq!(no_beacon.route(9), Route::Unreachable);
    }

    #[test]
    fn three_failed_dial_attempts_switch_to_unpinned_relay() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        assert!(!p.on_dial_attempt_failed(t(0), 9));
        assert!(!p.on_dial_attempt_failed(t(250), 9));
        assert!(p.on_dial_attempt_failed(t(750), 9));
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        assert_eq!(p.route(9), Route::Relay(ep(BEACON)));
        assert_eq!(
            p.key_exchange_route(9),
            KeyExchangeRoute {
                direct: None,
                relay: Some(ep(BEACON))
            }
        );
        assert_eq!(
            events(&mut p),
            vec![PathEvent::ToRelay {
                peer: 9,
                flag: RelayFlag::Unpinned
            }]
        );
        assert_eq!(p.relay_peer_count(), 1);
    }

    #[test]
    fn failed_dial_clears_its_own_relay_flag_only() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        for i in 0..3 {
            p.on_dial_attempt_failed(t(i), 9);
        }
        p.on_dial_finished(9, false);
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        assert_eq!(p.relay_peer_count(), 0);
        // A successful dial keeps it.
        for i in 0..3 {
            p.on_dial_attempt_failed(t(i), 9);
        }
        p.on_dial_finished(9, true);
        p.on_dial_finished(9, false);
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
    }

    #[test]
    fn unpinned_relay_clears_after_three_direct_decrypts() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        for i in 0..3 {
            p.on_dial_attempt_failed(t(i), 9);
        }
        p.on_dial_finished(9, true);
        events(&mut p);
        // Decrypts from the beacon do not count.
        for _ in 0..5 {
            p.on_direct_decrypt(t(1000), 9, ep(BEACON));
        }
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        p.on_direct_decrypt(t(1000), 9, ep(PEER_EP));
        p.on_direct_decrypt(t(1001), 9, ep(PEER_EP));
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        p.on_direct_decrypt(t(1002), 9, ep(PEER_EP));
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        assert_eq!(events(&mut p), vec![PathEvent::ToDirect { peer: 9 }]);
        assert_eq!(p.poll_timeout(), None, "no re-probe for direct peers");
    }

    #[test]
    fn direct_decrypt_follows_nat_rebinding() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        p.on_direct_decrypt(t(0), 9, ep("198.51.100.9:4555"));
        assert_eq!(p.route(9), Route::Direct(ep("198.51.100.9:4555")));
    }

    #[test]
    fn blackhole_pins_after_silence_and_three_misses() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        p.on_direct_send(t(0), 9);
        p.on_direct_send(t(8000), 9);
        assert_eq!(p.peer(9).unwrap().misses, 0, "8 s is not more than 8 s");
        p.on_direct_send(t(8001), 9);
        p.on_direct_send(t(8500), 9);
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        // A direct decrypt resets the count and the silence clock.
        p.on_direct_decrypt(t(8600), 9, ep(PEER_EP));
        p.on_direct_send(t(9000), 9);
        p.on_direct_send(t(17_000), 9);
        assert_eq!(p.peer(9).unwrap().misses, 0);
        for i in 0..3 {
            p.on_direct_send(t(17_001 + i), 9);
        }
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::Blackhole));
        // Pinned: direct decrypts do not clear it.
        for i in 0..5 {
            p.on_direct_decrypt(t(18_000 + i), 9, ep(PEER_EP));
        }
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::Blackhole));
    }

    #[test]
    fn icmp_errors_pin_and_any_decrypt_resets_the_count() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        p.on_send_error(t(0), 9, SendErrorKind::ConnectionRefused);
        p.on_send_error(t(0), 9, SendErrorKind::HostUnreachable);
        p.on_relay_decrypt(t(0), 9);
        p.on_send_error(t(0), 9, SendErrorKind::NetworkUnreachable);
        p.on_send_error(t(0), 9, SendErrorKind::Other);
        p.on_send_error(t(0), 9, SendErrorKind::ConnectionRefused);
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        p.on_send_error(t(0), 9, SendErrorKind::HostUnreachable);
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::Unreachable));
    }

    #[test]
    fn reprobe_every_15_s_unpins_pinned_peers() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        assert!(p.pin_relay(t(1000), 9, PinReason::Other));
        events(&mut p);
        assert_eq!(p.poll_timeout(), Some(t(16_000)));
        p.handle_timeout(t(15_999));
        assert!(events(&mut p).is_empty());
        p.handle_timeout(t(16_000));
        assert_eq!(
            events(&mut p),
            vec![PathEvent::Reprobe {
                peer: 9,
                endpoint: Some(ep(PEER_EP))
            }]
        );
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        assert_eq!(p.poll_timeout(), Some(t(31_000)));
        // The re-probe's direct replies now clear the flag.
        for i in 0..3 {
            p.on_direct_decrypt(t(16_100 + i), 9, ep(PEER_EP));
        }
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn relay_only_peers_stay_pinned_and_are_not_reprobed() {
        let mut p = table();
        p.set_relay_only(t(0), 9, true);
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::RelayOnly));
        assert_eq!(p.poll_timeout(), None);
        p.prefer_direct(9);
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::RelayOnly));
        p.set_relay_only(t(5000), 9, false);
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        assert_eq!(p.poll_timeout(), Some(t(20_000)));
        p.prefer_direct(9);
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn inbound_relay_marks_unknown_peers_but_keeps_known_direct_ones() {
        let mut p = table();
        assert!(p.on_relay_decrypt(t(0), 7));
        assert_eq!(flag(&p, 7), RelayFlag::Unpinned);
        p.set_endpoint(9, ep(PEER_EP));
        assert!(p.on_relay_decrypt(t(0), 9));
        assert_eq!(flag(&p, 9), RelayFlag::Direct);
        assert_eq!(p.route(9), Route::Direct(ep(PEER_EP)));
    }

    #[test]
    fn relay_peer_cap_refuses_new_relay_peers() {
        let mut cfg = PathConfig::new(Some(ep(BEACON)));
        cfg.max_relay_peers = 2;
        let mut p = PathTable::new(cfg);
        assert!(p.on_relay_decrypt(t(0), 1));
        assert!(p.on_relay_decrypt(t(0), 2));
        assert!(!p.on_relay_decrypt(t(0), 3), "third relay source dropped");
        assert!(p.on_relay_decrypt(t(0), 1), "known relay peer still fine");
        p.set_endpoint(4, ep(PEER_EP));
        assert!(!p.pin_relay(t(0), 4, PinReason::Other));
        assert_eq!(p.route(4), Route::Direct(ep(PEER_EP)));
        p.remove(1);
        assert!(p.on_relay_decrypt(t(0), 3));
        assert_eq!(p.relay_peer_count(), 2);
        assert_eq!(p.refused(), 2);
    }

    #[test]
    fn peer_table_cap() {
        let mut cfg = PathConfig::new(Some(ep(BEACON)));
        cfg.max_peers = 2;
        let mut p = PathTable::new(cfg);
        assert!(p.set_endpoint(1, ep(PEER_EP)));
        assert!(p.set_endpoint(2, ep(PEER_EP)));
        assert!(!p.set_endpoint(3, ep(PEER_EP)));
        assert!(p.set_endpoint(2, ep("198.51.100.9:1")));
        assert_eq!(p.peer(3), None);
    }

    #[test]
    fn unpinned_mark_never_weakens_a_pin() {
        let mut p = table();
        p.set_endpoint(9, ep(PEER_EP));
        assert!(p.relay_unpinned(t(0), 9));
        assert_eq!(flag(&p, 9), RelayFlag::Unpinned);
        assert!(p.pin_relay(t(0), 9, PinReason::Other));
        assert!(p.relay_unpinned(t(0), 9));
        assert_eq!(flag(&p, 9), RelayFlag::Pinned(PinReason::Other));
        assert_eq!(p.relay_peer_count(), 1);
        assert!(!PathTable::new(PathConfig::new(None)).relay_unpinned(t(0), 9));
    }

    /// One call into the table, for the state-machine property test.
    #[derive(Clone, Debug)]
    enum Op {
        Endpoint(u32, u16),
        RelayOnly(u32, bool),
        Pin(u32),
        Unpinned(u32),
        PreferDirect(u32),
        Direct(u32, bool),
        Relayed(u32),
        Send(u32),
        Error(u32, u8),
        DialFailed(u32),
        DialDone(u32, bool),
        Remove(u32),
        Advance(u16),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let peer = 0u32..6;
        prop_oneof![
            (peer.clone(), 1u16..4).prop_map(|(p, e)| Op::Endpoint(p, e)),
            (peer.clone(), any::<bool>()).prop_map(|(p, b)| Op::RelayOnly(p, b)),
            peer.clone().prop_map(Op::Pin),
            peer.clone().prop_map(Op::Unpinned),
            peer.clone().prop_map(Op::PreferDirect),
            (peer.clone(), any::<bool>()).prop_map(|(p, b)| Op::Direct(p, b)),
            peer.clone().prop_map(Op::Relayed),
            peer.clone().prop_map(Op::Send),
            (peer.clone(), 0u8..4).prop_map(|(p, k)| Op::Error(p, k)),
            peer.clone().prop_map(Op::DialFailed),
            (peer.clone(), any::<bool>()).prop_map(|(p, b)| Op::DialDone(p, b)),
            peer.prop_map(Op::Remove),
            (0u16..20_000).prop_map(Op::Advance),
        ]
    }

    /// Counters and the re-probe schedule agree with the per-peer state.
    fn check_invariants(p: &PathTable, cfg: &PathConfig) {
        let relay: Vec<u32> = p
            .peers
            .iter()
            .filter(|(_, x)| x.view.flag != RelayFlag::Direct)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(p.relay_count, relay.len());
        assert!(p.relay_count <= cfg.max_relay_peers);
        assert!(p.peers.len() <= cfg.max_peers);
        for (id, x) in &p.peers {
            match x.reprobe_at {
                Some(at) => {
                    assert!(p.reprobes.contains(&(at, *id)));
                    assert_ne!(x.view.flag, RelayFlag::Direct);
                }
                None => assert!(
                    x.view.flag == RelayFlag::Direct || x.view.relay_only,
                    "relay peer {id} without a re-probe: {x:?}"
                ),
            }
            if x.view.relay_only {
                // Direct only if the relay cap refused the pin.
                assert!(matches!(
                    x.view.flag,
                    RelayFlag::Pinned(PinReason::RelayOnly) | RelayFlag::Direct
                ));
            }
        }
        assert_eq!(
            p.reprobes.len(),
            p.peers.values().filter(|x| x.reprobe_at.is_some()).count()
        );
        assert!(p.events.len() <= EVENT_QUEUE);
    }

    proptest! {
        #[test]
        fn path_table_invariants_hold(ops in proptest::collection::vec(arb_op(), 0..200)) {
            let mut cfg = PathConfig::new(Some(ep(BEACON)));
            cfg.max_peers = 5;
            cfg.max_relay_peers = 3;
            let mut p = PathTable::new(cfg);
            let mut now = 0u64;
            for op in ops {
                let n = t(now);
                let peer_ep = |e: u16| SocketAddr::from(([198, 51, 100, 9], e));
                match op {
                    Op::Endpoint(x, e) => { p.set_endpoint(x, peer_ep(e)); }
                    Op::RelayOnly(x, b) => p.set_relay_only(n, x, b),
                    Op::Pin(x) => { p.pin_relay(n, x, PinReason::Other); }
                    Op::Unpinned(x) => { p.relay_unpinned(n, x); }
                    Op::PreferDirect(x) => p.prefer_direct(x),
                    Op::Direct(x, via_beacon) => {
                        let from = if via_beacon { ep(BEACON) } else { peer_ep(7) };
                        p.on_direct_decrypt(n, x, from);
                    }
                    Op::Relayed(x) => { p.on_relay_decrypt(n, x); }
                    Op::Send(x) => p.on_direct_send(n, x),
                    Op::Error(x, k) => {
                        let kind = [
                            SendErrorKind::ConnectionRefused,
                            SendErrorKind::HostUnreachable,
                            SendErrorKind::NetworkUnreachable,
                            SendErrorKind::Other,
                        ][usize::from(k)];
                        p.on_send_error(n, x, kind);
                    }
                    Op::DialFailed(x) => { p.on_dial_attempt_failed(n, x); }
                    Op::DialDone(x, ok) => p.on_dial_finished(x, ok),
                    Op::Remove(x) => p.remove(x),
                    Op::Advance(ms) => {
                        now += u64::from(ms);
                        p.handle_timeout(t(now));
                        if let Some(at) = p.poll_timeout() {
                            prop_assert!(at > t(now), "a due re-probe was left");
                        }
                    }
                }
                check_invariants(&p, &cfg);
                // A relay-flagged peer is routed via the beacon.
                for x in 0..6 {
                    if p.peer(x).is_some_and(|v| v.flag != RelayFlag::Direct) {
                        prop_assert_eq!(p.route(x), Route::Relay(ep(BEACON)));
                    }
                }
            }
        }
    }

    #[test]
    fn without_a_beacon_nothing_goes_to_relay() {
        let mut p = PathTable::new(PathConfig::new(None));
        p.set_endpoint(9, ep(PEER_EP));
        for i in 0..5 {
            p.on_dial_attempt_failed(t(i), 9);
            p.on_send_error(t(i), 9, SendErrorKind::ConnectionRefused);
            p.on_direct_send(t(i * 10_000), 9);
        }
        assert_eq!(p.route(9), Route::Direct(ep(PEER_EP)));
        assert_eq!(
            p.key_exchange_route(9),
            KeyExchangeRoute {
                direct: Some(ep(PEER_EP)),
                relay: None
            }
        );
    }
}
