//! The per-peer session table (`spec/crypto.md` §2–§7): which peers have a
//! session, the key-exchange rules around them (replies, key requests,
//! recovery replies, retransmission, give-up), the receive side (failed
//! frames change nothing, §5.3; a live session's key is not replaced,
//! §2.4), the pending queue and the salvage ring.
//!
//! It is a sans-IO component owned by the node state machine:
//!
//! * inputs: [`SessionTable::handle_key_exchange`] (a decoded PILK/PILA plus
//!   the identity key the registry holds for its sender),
//!   [`SessionTable::open_in_place`] (a received PILS frame),
//!   [`SessionTable::seal_in_place`] / [`SessionTable::seal`] (a packet to
//!   send), [`SessionTable::connect`] and [`SessionTable::handle_timeout`];
//! * outputs: [`SessionTable::poll_transmit`] (key exchanges, flushed and
//!   salvaged packets, sealed into the caller's buffer),
//!   [`SessionTable::poll_event`] and [`SessionTable::poll_timeout`].
//!
//! After any input, drain `poll_transmit` and `poll_event` until `None`.
//! Every map and queue is bounded; time only comes in as an argument and
//! randomness only from the RNG handed to [`SessionTable::new`].

use std::collections::{BTreeMap, VecDeque};

use core::ops::Range;

use rand_core::{CryptoRng, RngCore};

use super::envelope::{Envelope, OpenError, PILS_HEADER_LEN, PilsHeader, SealError};
use super::identity::{Identity, TunnelKey};
use super::kdf::{KdfError, derive_session_key};
use super::kx::{self, KeyExchange, KxError, PILA_LEN, PILK_LEN};
use super::params::*;
use super::pending::{PendingError, PendingLimits, PendingQueues};
use super::profile::ProfileRules;
use super::provider::CryptoProvider;
use super::ratelimit::RateLimiter;
use super::replay::ReplayWindow;
use super::salvage::SalvageRing;
use crate::time::Instant;
use crate::wire::WireProfile;

/// Configuration of a [`SessionTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our own node ID (frame header and AAD of what we seal).
    pub local_node: u32,
    /// Wire profile of this node.
    pub profile: WireProfile,
    /// Installed sessions above which a PILK may not create a new one.
    pub max_unauth_sessions: usize,
    /// Hard cap on installed sessions of any kind.
    pub max_sessions: usize,
    /// Pending-queue limits.
    pub pending: PendingLimits,
    /// Largest plaintext packet accepted for sealing or queueing.
    pub max_plaintext: usize,
    /// Capacity of the transmit queue (items).
    pub transmit_queue: usize,
    /// Capacity of the event queue.
    pub event_queue: usize,
}

/// Largest plaintext packet: 34-byte header + 65 535 payload. spec/wire.md §2.5
pub const MAX_PLAINTEXT: usize = 34 + 65_535;

impl SessionConfig {
    /// Defaults from `spec/crypto.md` §7 for `local_node` and `profile`.
    pub fn new(local_node: u32, profile: WireProfile) -> Self {
        SessionConfig {
            local_node,
            profile,
            max_unauth_sessions: MAX_UNAUTH_SESSIONS,
            max_sessions: MAX_SESSIONS,
            pending: PendingLimits::default(),
            max_plaintext: MAX_PLAINTEXT,
            transmit_queue: 8192,
            event_queue: 1024,
        }
    }
}

/// Where a key exchange came from, for rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KxSource {
    /// Directly from this source IP address.
    Direct(core::net::IpAddr),
    /// Relayed by the beacon on behalf of this node ID.
    Relayed(u32),
    /// From the endpoint the owner's peer table holds for this node (a
    /// peer we chose to contact or have authenticated): its own bucket, so
    /// strangers sharing its IP cannot use up its budget.
    Known(u32),
}

/// What a handled key exchange did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KxAccepted {
    /// A session was installed (first one, or the peer key changed).
    Installed {
        /// The previous session had a different peer key.
        replaced: bool,
    },
    /// Same key as the installed session; it was kept untouched.
    Kept {
        /// Arrived within the debounce interval: no side effects at all.
        duplicate: bool,
    },
}

/// Why a key exchange was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KxRejected {
    /// The per-source token bucket is empty (or the table is full).
    #[error("rate limited")]
    RateLimited,
    /// PILA identity/signature check failed.
    #[error(transparent)]
    Auth(#[from] KxError),
    /// The peer key gives an all-zero shared secret.
    #[error(transparent)]
    Kdf(#[from] KdfError),
    /// A PILK from a node with a registered identity; answered with our key
    /// exchange (it acts as a key request).
    #[error("unauthenticated key exchange from a node with an identity")]
    Unauthenticated,
    /// Session caps reached.
    #[error("too many sessions")]
    TooManySessions,
    /// The frame claims to come from our own node ID.
    #[error("key exchange from our own node ID")]
    OwnNode,
    /// The frame carries a different tunnel key while the installed
    /// session is live (an authentic frame opened under it less than
    /// [`KEY_CHANGE_QUIET`] ago): a replayed key exchange of an earlier
    /// process of the peer. A restarted peer cannot keep the old session
    /// alive, so its exchange is accepted once the old session is quiet.
    #[error("key change while the session is live")]
    StaleKey,
}

/// Why a PILS frame was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    /// Too short or not PILS (no side effects).
    #[error("malformed frame")]
    Malformed,
    /// No session for the sender (no side effects; the owner may call
    /// [`SessionTable::request_rekey`] for a peer it knows).
    #[error("no session for the sender")]
    NoSession,
    /// Envelope rejected the frame (bad tag, replay, outside the window).
    /// The session is never changed by it.
    #[error(transparent)]
    Rejected(OpenError),
}

/// A successfully opened PILS frame. The plaintext packet lies in the
/// caller's buffer at `plaintext`. The caller still decodes the packet and
/// enforces identity binding (`spec/crypto.md` §4.2 steps 6-7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Tunnel-level sender (authenticated under the current profile).
    pub sender: u32,
    /// Range of the plaintext in the frame buffer.
    pub plaintext: Range<usize>,
    /// The frame is the newest the session has received (it raised the
    /// receive window's top, or opened a new epoch).
    pub newest: bool,
    /// The session was set up by a verified PILA (the peer proved its
    /// identity key).
    pub authenticated: bool,
}

/// What happened to a packet handed to [`SessionTable::seal_in_place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// Sealed; the frame is the first `n` bytes of the buffer.
    Sealed(usize),
    /// No session yet: queued until the key exchange completes.
    Queued,
}

/// Why a packet could not be sent or queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The key exchange with this peer gave up recently.
    #[error("pending dropped: key exchange gave up")]
    GaveUp,
    /// The pending queue refused the packet.
    #[error("pending dropped: {0}")]
    Pending(#[from] PendingError),
    /// Sealing failed (buffer too small, counter exhausted).
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The packet exceeds the configured maximum.
    #[error("packet too large")]
    TooLarge,
}

/// Kind of a frame produced by [`SessionTable::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// Our key exchange (PILA, or PILK without an identity).
    KeyExchange,
    /// A key-request PILK following a key exchange.
    KeyRequest,
    /// A sealed PILS frame (pending flush or salvage resend).
    Data,
}

/// A frame written into the caller's buffer by [`SessionTable::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedFrame {
    /// Destination node; the caller picks the path (direct, relay, both).
    pub peer: u32,
    /// Frame length in the buffer.
    pub len: usize,
    /// What the frame is.
    pub kind: TransmitKind,
}

/// Why a session went away. Failed authentication is never a reason
/// (`spec/crypto.md` §5.3): only the owner removes sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Removed by the owner.
    Removed,
}

/// Something the owner of the table should know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEvent {
    /// A session was installed.
    Installed {
        /// Peer node.
        peer: u32,
        /// Installed from a verified PILA.
        authenticated: bool,
        /// It replaced a session with a different peer key.
        replaced: bool,
    },
    /// A session was dropped.
    Dropped {
        /// Peer node.
        peer: u32,
        /// Why.
        reason: DropReason,
    },
    /// Key-exchange retransmissions should now travel via the relay.
    PreferRelay {
        /// Peer node.
        peer: u32,
    },
    /// The key exchange gave up: reset the path (fresh resolve + punch).
    GaveUp {
        /// Peer node.
        peer: u32,
        /// Queued packets discarded with it.
        discarded: usize,
    },
}

/// Counters for observability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Transmit items dropped (queue full, buffer too small, stale session).
    pub transmit_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Rekey requests suppressed by the 3-s rule or the tracking cap.
    pub rekey_suppressed: u64,
}

/// Read-only facts about one installed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Peer's X25519 tunnel key.
    pub peer_x25519: [u8; 32],
    /// Installed from a verified PILA.
    pub authenticated: bool,
    /// When it was installed.
    pub installed_at: Instant,
    /// Our nonce prefix.
    pub prefix: [u8; 4],
    /// Counter of the last frame we sealed.
    pub send_counter: u64,
    /// Highest counter received.
    pub recv_max: u64,
    /// Last authenticated inbound frame (or the install time).
    pub last_inbound: Instant,
}

struct Session<P: CryptoProvider> {
    env: Envelope<P>,
    generation: u64,
    peer_x25519: [u8; 32],
    authenticated: bool,
    installed_at: Instant,
    last_inbound: Instant,
    last_recovery_reply: Option<Instant>,
    /// Last time a frame with a bad tag made us resend our key exchange.
    last_confirm_kx: Option<Instant>,
    /// Signature of the PILA this session was verified from (a byte-equal
    /// copy needs no second verification).
    verified_sig: Option<[u8; 64]>,
    /// Last authentic frame opened under this session.
    last_authentic: Option<Instant>,
    salvage: SalvageRing,
}

/// A key exchange with a different tunnel key replaces a session only if
/// no authentic frame opened under it for this long (`spec/crypto.md`
/// §2.4).
pub const KEY_CHANGE_QUIET: core::time::Duration = core::time::Duration::from_secs(2);

/// Key-exchange progress towards one peer.
#[derive(Debug, Clone, Copy, Default)]
struct PeerKx {
    /// Key exchanges sent while pending (1 = first send only).
    sends: u32,
    /// Next retransmission time while pending.
    next: Option<Instant>,
    /// Gave up; no new exchange before this time.
    gave_up_until: Option<Instant>,
    /// The peer sent PILS we could not decrypt: add a key request.
    flagged: bool,
    /// A connection of the owner needs the tunnel until this time: the
    /// exchange goes on past its last regular attempt, with back-off
    /// (`spec/crypto.md` §2.6, [`SessionTable::need_tunnel_until`]).
    needed_until: Option<Instant>,
}

impl PeerKx {
    fn is_idle(&self, now: Instant) -> bool {
        self.next.is_none() && !self.flagged && self.gave_up_until.is_none_or(|t| now >= t)
    }
}

enum Tx {
    KeyExchange {
        peer: u32,
    },
    KeyRequest {
        peer: u32,
    },
    Data {
        peer: u32,
        generation: u64,
        salvage: bool,
        packet: Vec<u8>,
    },
}

/// The per-peer session table of one node.
pub struct SessionTable<P: CryptoProvider, R: RngCore + CryptoRng> {
    provider: P,
    rng: R,
    cfg: SessionConfig,
    rules: ProfileRules,
    tunnel: TunnelKey,
    kx_frame: Vec<u8>,
    pilk_frame: [u8; PILK_LEN],
    has_identity: bool,
    sessions: BTreeMap<u32, Session<P>>,
    peers: BTreeMap<u32, PeerKx>,
    rekey_sent: BTreeMap<u32, Instant>,
    pending: PendingQueues,
    rate_direct: RateLimiter<core::net::IpAddr>,
    rate_relay: RateLimiter<u32>,
    rate_known: RateLimiter<u32>,
    tx: VecDeque<Tx>,
    events: VecDeque<SessionEvent>,
    next_generation: u64,
    stats: SessionStats,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng> core::fmt::Debug for SessionTable<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SessionTable")
            .field("local_node", &self.cfg.local_node)
            .field("sessions", &self.sessions.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng> SessionTable<P, R> {
    /// A table for our node. `identity` is `None` only for tools and tests
    /// without one (they send PILK instead of PILA). `tunnel` is this
    /// process's X25519 key; `rng` supplies nonce prefixes.
    pub fn new(
        provider: P,
        rng: R,
        cfg: SessionConfig,
        identity: Option<&Identity>,
        tunnel: TunnelKey,
    ) -> Self {
        let mut pilk_frame = [0u8; PILK_LEN];
        let _ = kx::build_pilk(cfg.local_node, &tunnel, &mut pilk_frame);
        // Our key exchange never changes during the process: build it once.
        let kx_frame = match identity {
            Some(id) => {
                let mut f = vec![0u8; PILA_LEN];
                let _ = kx::build_pila(&provider, cfg.local_node, &tunnel, id, &mut f);
                f
            }
            None => pilk_frame.to_vec(),
        };
        SessionTable {
            provider,
            rng,
            rules: ProfileRules::of(cfg.profile),
            cfg,
            tunnel,
            kx_frame,
            pilk_frame,
            has_identity: identity.is_some(),
            sessions: BTreeMap::new(),
            peers: BTreeMap::new(),
            rekey_sent: BTreeMap::new(),
            pending: PendingQueues::new(cfg.pending),
            rate_direct: RateLimiter::default(),
            rate_relay: RateLimiter::default(),
            rate_known: RateLimiter::default(),
            tx: VecDeque::new(),
            events: VecDeque::new(),
            next_generation: 0,
            stats: SessionStats::default(),
        }
    }

    /// Signs our key exchange with a new identity from now on (a key
    /// rotation, `spec/crypto.md` §2.9); the tunnel key and every session
    /// stay as they are. Without an identity before, nothing changes.
    pub fn set_identity(&mut self, identity: &Identity) {
        if !self.has_identity {
            return;
        }
        let mut f = vec![0u8; PILA_LEN];
        if kx::build_pila(
            &self.provider,
            self.cfg.local_node,
            &self.tunnel,
            identity,
            &mut f,
        )
        .is_ok()
        {
            self.kx_frame = f;
        }
    }

    /// Queues our key exchange once to every peer we hold a session with,
    /// without marking them pending: it tells them our new identity key
    /// and changes no session (`spec/crypto.md` §2.9). Returns how many
    /// were queued (bounded by the transmit queue).
    pub fn announce(&mut self) -> usize {
        let peers: Vec<u32> = self.sessions.keys().copied().collect();
        let before = self.tx.len();
        for peer in peers {
            self.push_tx(Tx::KeyExchange { peer });
        }
        self.tx.len() - before
    }

    /// The crypto provider (for checks the owner runs before the table).
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Observability counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Number of installed sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is installed.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Facts about the session with `peer`, if any.
    pub fn session(&self, peer: u32) -> Option<SessionInfo> {
        self.sessions.get(&peer).map(|s| SessionInfo {
            peer_x25519: s.peer_x25519,
            authenticated: s.authenticated,
            installed_at: s.installed_at,
            prefix: s.env.prefix(),
            send_counter: s.env.counter(),
            recv_max: s.env.window().max(),
            last_inbound: s.last_inbound,
        })
    }

    /// Node IDs of all peers with an installed session, in ascending order
    /// (for keepalives and path watchdogs).
    pub fn peers(&self) -> impl Iterator<Item = u32> + '_ {
        self.sessions.keys().copied()
    }

    /// Whether a key exchange to `peer` is awaiting an answer.
    pub fn is_pending(&self, peer: u32) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.next.is_some())
    }

    /// Packets queued for `peer` while no session is ready.
    pub fn pending_len(&self, peer: u32) -> usize {
        self.pending.len(peer)
    }

    // ----- outputs -------------------------------------------------------

    fn push_tx(&mut self, tx: Tx) {
        if self.tx.len() >= self.cfg.transmit_queue {
            self.stats.transmit_dropped += 1;
        } else {
            self.tx.push_back(tx);
        }
    }

    fn push_event(&mut self, ev: SessionEvent) {
        if self.events.len() >= self.cfg.event_queue {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(ev);
        }
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Writes the next outgoing frame into `buf` (size it for the largest
    /// packet plus [`super::envelope::PILS_OVERHEAD`]). Items that no longer
    /// apply (session changed) or do not fit are dropped and counted.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<SealedFrame> {
        while let Some(item) = self.tx.pop_front() {
            let (peer, kind, res) = match item {
                Tx::KeyExchange { peer } => {
                    let n = self.kx_frame.len();
                    let res = buf.get_mut(..n).map(|d| {
                        d.copy_from_slice(&self.kx_frame);
                        n
                    });
                    (peer, TransmitKind::KeyExchange, res)
                }
                Tx::KeyRequest { peer } => {
                    let res = buf.get_mut(..PILK_LEN).map(|d| {
                        d.copy_from_slice(&self.pilk_frame);
                        PILK_LEN
                    });
                    (peer, TransmitKind::KeyRequest, res)
                }
                Tx::Data {
                    peer,
                    generation,
                    salvage,
                    packet,
                } => {
                    let local = self.cfg.local_node;
                    let res = match self.sessions.get_mut(&peer) {
                        Some(s) if s.generation == generation => {
                            if !salvage {
                                s.salvage.record(now, &packet);
                            }
                            s.env.seal_to(&self.provider, local, &packet, buf).ok()
                        }
                        _ => None,
                    };
                    (peer, TransmitKind::Data, res)
                }
            };
            match res {
                Some(len) => return Some(SealedFrame { peer, len, kind }),
                None => self.stats.transmit_dropped += 1,
            }
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next).min()
    }

    // ----- key exchange: sending ------------------------------------------

    /// Queues our key exchange to `peer`, plus a key-request PILK when the
    /// rules of `spec/crypto.md` §2.2 call for one. With `mark_pending` the
    /// peer enters (or stays in) the retransmit loop.
    fn send_kx(&mut self, now: Instant, peer: u32, retransmission: bool, mark_pending: bool) {
        self.push_tx(Tx::KeyExchange { peer });
        let flagged = self.peers.get(&peer).is_some_and(|p| p.flagged);
        if self.rules.key_request_pilk
            && self.has_identity
            && !self.sessions.contains_key(&peer)
            && (retransmission || flagged)
        {
            self.push_tx(Tx::KeyRequest { peer });
        }
        if mark_pending {
            if let Some(p) = self.peer_entry(now, peer) {
                if p.next.is_none() {
                    p.sends = 1;
                }
                p.next = Some(now + KX_RETRANSMIT_INTERVAL);
            }
        }
    }

    /// The KX state of `peer`, created if there is room (bounded by the
    /// session cap; idle entries are pruned first).
    fn peer_entry(&mut self, now: Instant, peer: u32) -> Option<&mut PeerKx> {
        if !self.peers.contains_key(&peer) && self.peers.len() >= self.cfg.max_sessions {
            // Under pressure a mere key-request flag does not keep an entry.
            self.peers
                .retain(|_, p| p.next.is_some() || p.gave_up_until.is_some_and(|t| now < t));
            if self.peers.len() >= self.cfg.max_sessions {
                return None;
            }
        }
        Some(self.peers.entry(peer).or_default())
    }

    fn clear_pending(&mut self, peer: u32) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next = None;
            p.sends = 0;
            p.needed_until = None;
        }
    }

    /// The owner has a connection that needs the tunnel to `peer` until
    /// `until` (a dial's deadline, an established stream's user timeout).
    /// While the key exchange to `peer` is pending and `until` has not
    /// passed, it does not give up after the regular attempts: it goes on
    /// every 4 s (the back-off cap of the dial's own SYN) until an answer
    /// or `until` (`spec/crypto.md` §2.6). It only extends an exchange already
    /// pending (no new state), and only the owner's own connections call
    /// it, so it is bounded by them.
    pub fn need_tunnel_until(&mut self, now: Instant, peer: u32, until: Instant) {
        if until <= now || self.sessions.contains_key(&peer) {
            return;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.next.is_some() {
                p.needed_until = Some(p.needed_until.map_or(until, |t| t.max(until)));
            }
        }
    }

    fn gave_up(&self, now: Instant, peer: u32) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.gave_up_until)
            .is_some_and(|t| now < t)
    }

    /// Starts a key exchange to `peer` unless a session is already
    /// installed, one is pending, or the peer is in the gave-up cool-down (a
    /// peer endpoint was added, `spec/crypto.md` §2.2 item 2). Returns
    /// whether a key exchange was queued.
    pub fn connect(&mut self, now: Instant, peer: u32) -> bool {
        if peer == self.cfg.local_node
            || self.sessions.contains_key(&peer)
            || self.is_pending(peer)
            || self.gave_up(now, peer)
        {
            return false;
        }
        self.send_kx(now, peer, false, true);
        true
    }

    /// A rekey request (`spec/crypto.md` §2.2 item 5): our key exchange
    /// plus a key request, at most one per peer per 3 s, at most 4096 peers
    /// tracked. The owner calls it when a PILS arrives from a peer *it
    /// knows* and no session exists; the peer is not marked pending (no
    /// timer), since unauthenticated input caused it. Returns whether a
    /// request was queued.
    pub fn request_rekey(&mut self, now: Instant, peer: u32) -> bool {
        if peer == self.cfg.local_node || self.sessions.contains_key(&peer) {
            return false;
        }
        if let Some(last) = self.rekey_sent.get(&peer) {
            if now.saturating_duration_since(*last) < REKEY_REQUEST_INTERVAL {
                self.stats.rekey_suppressed += 1;
                return false;
            }
        } else if self.rekey_sent.len() >= REKEY_REQUEST_TRACKED {
            self.rekey_sent
                .retain(|_, t| now.saturating_duration_since(*t) < REKEY_REQUEST_INTERVAL);
            if self.rekey_sent.len() >= REKEY_REQUEST_TRACKED {
                self.stats.rekey_suppressed += 1;
                return false;
            }
        }
        self.rekey_sent.insert(peer, now);
        self.push_tx(Tx::KeyExchange { peer });
        if self.rules.key_request_pilk && self.has_identity {
            self.push_tx(Tx::KeyRequest { peer });
        }
        true
    }

    /// Sends our unchanged key exchange to `peer` although a session is
    /// installed, at most once per 3 s per session (shared with the bad-tag
    /// resend, `spec/crypto.md` §2.2 item 7); no timer. The owner calls it
    /// on authenticated news that the peer moved (a registry look-up).
    /// Returns whether a key exchange was queued.
    pub fn resend_key_exchange(&mut self, now: Instant, peer: u32) -> bool {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return false;
        };
        if s.last_confirm_kx
            .is_some_and(|t| now.saturating_duration_since(t) < REKEY_REQUEST_INTERVAL)
        {
            self.stats.rekey_suppressed += 1;
            return false;
        }
        s.last_confirm_kx = Some(now);
        self.push_tx(Tx::KeyExchange { peer });
        true
    }

    /// Retransmits pending key exchanges that are due (at most 64 peers per
    /// call) and gives up on peers after the last attempt.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| p.next.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .take(KX_RETRANSMIT_PER_PASS)
            .collect();
        for peer in due {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let sends = p.sends;
            let needed_until = p.needed_until.filter(|t| now < *t);
            if sends > KX_MAX_RETRANSMITS && needed_until.is_some() {
                // A connection still needs the tunnel: go on at the same
                // interval until its deadline instead of giving up.
                p.sends = sends.saturating_add(1);
                let until = needed_until.unwrap_or(now);
                self.send_kx(now, peer, true, true);
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.next = Some((now + KX_RETRANSMIT_INTERVAL).min(until).max(now));
                }
                continue;
            }
            if sends > KX_MAX_RETRANSMITS {
                p.next = None;
                p.sends = 0;
                p.needed_until = None;
                p.gave_up_until = Some(now + KX_GIVE_UP_COOLDOWN);
                let discarded = self.pending.take(peer).len();
                self.push_event(SessionEvent::GaveUp { peer, discarded });
                continue;
            }
            p.sends = sends + 1;
            if sends == KX_RELAY_FROM_ATTEMPT {
                self.push_event(SessionEvent::PreferRelay { peer });
            }
            self.send_kx(now, peer, true, true);
        }
        // Forget state that no longer matters.
        self.peers.retain(|_, p| !p.is_idle(now));
    }

    /// The owner switched `peer` to the relay because of a blackhole/ICMP
    /// heuristic: the relay path gets a full set of attempts.
    pub fn restart_attempts(&mut self, peer: u32) {
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.next.is_some() {
                p.sends = 1;
            }
        }
    }

    // ----- key exchange: receiving ---------------------------------------

    /// Handles a decoded PILK or PILA from `source`. `registry_key` is the
    /// Ed25519 key the registry (or the owner's cache) holds for
    /// `kx.sender`. On [`KxError::IdentityMismatch`] the owner should
    /// refresh that key from the registry once and call again.
    pub fn handle_key_exchange(
        &mut self,
        now: Instant,
        source: KxSource,
        kx: &KeyExchange,
        registry_key: Option<&[u8; 32]>,
    ) -> Result<KxAccepted, KxRejected> {
        if !self.admit_key_exchange(now, source) {
            return Err(KxRejected::RateLimited);
        }
        self.handle_admitted_key_exchange(now, kx, registry_key)
    }

    /// Takes one token from the per-source bucket of `source`
    /// (`spec/crypto.md` §2.3); false means drop the frame unread.
    pub fn admit_key_exchange(&mut self, now: Instant, source: KxSource) -> bool {
        match source {
            KxSource::Direct(ip) => self.rate_direct.allow(now, ip),
            KxSource::Relayed(node) => self.rate_relay.allow(now, node),
            KxSource::Known(node) => self.rate_known.allow(now, node),
        }
    }

    /// [`handle_key_exchange`](Self::handle_key_exchange) without the
    /// per-source bucket (the owner already charged it with
    /// [`admit_key_exchange`](Self::admit_key_exchange)). A PILA that is a
    /// byte-equal copy of the one the installed session was verified from
    /// is not verified again.
    pub fn handle_admitted_key_exchange(
        &mut self,
        now: Instant,
        kx: &KeyExchange,
        registry_key: Option<&[u8; 32]>,
    ) -> Result<KxAccepted, KxRejected> {
        let peer = kx.sender;
        if peer == self.cfg.local_node {
            return Err(KxRejected::OwnNode);
        }
        let live_other_key = self.sessions.get(&peer).is_some_and(|s| {
            s.peer_x25519 != kx.x25519
                && s.last_authentic
                    .is_some_and(|t| now.saturating_duration_since(t) < KEY_CHANGE_QUIET)
        });
        if live_other_key {
            return Err(KxRejected::StaleKey);
        }
        match &kx.auth {
            Some(auth) => {
                let already = self.sessions.get(&peer).is_some_and(|s| {
                    s.peer_x25519 == kx.x25519
                        && s.verified_sig == Some(auth.signature)
                        && registry_key == Some(&auth.ed25519)
                });
                if !already {
                    kx::verify_pila(&self.provider, peer, &kx.x25519, auth, registry_key)?;
                }
                let out = self.install(now, peer, &kx.x25519, true)?;
                if let Some(s) = self.sessions.get_mut(&peer) {
                    s.verified_sig = Some(auth.signature);
                }
                if out == (KxAccepted::Kept { duplicate: false }) {
                    self.maybe_recovery_reply(now, peer);
                }
                self.clear_pending(peer);
                Ok(out)
            }
            None => {
                if self.has_identity && registry_key.is_some() {
                    // A key request: answer with our authenticated exchange.
                    self.send_kx(now, peer, false, false);
                    return Err(KxRejected::Unauthenticated);
                }
                if !self.sessions.contains_key(&peer)
                    && self.sessions.len() >= self.cfg.max_unauth_sessions
                {
                    return Err(KxRejected::TooManySessions);
                }
                let out = self.install(now, peer, &kx.x25519, false)?;
                self.clear_pending(peer);
                Ok(out)
            }
        }
    }

    fn maybe_recovery_reply(&mut self, now: Instant, peer: u32) {
        let Some(s) = self.sessions.get_mut(&peer) else {
            return;
        };
        let silent = now.saturating_duration_since(s.last_inbound) >= RECOVERY_REPLY_SILENCE;
        let spaced = s
            .last_recovery_reply
            .is_none_or(|t| now.saturating_duration_since(t) >= RECOVERY_REPLY_INTERVAL);
        if silent && spaced {
            s.last_recovery_reply = Some(now);
            self.send_kx(now, peer, false, false);
        }
    }

    /// Derives a session from `x_pub` and installs or keeps it
    /// (`spec/crypto.md` §2.4 steps 5-9, §2.7). A real install queues our
    /// reply key exchange, then the salvaged and pending packets.
    fn install(
        &mut self,
        now: Instant,
        peer: u32,
        x_pub: &[u8; 32],
        authenticated: bool,
    ) -> Result<KxAccepted, KxRejected> {
        if let Some(old) = self.sessions.get_mut(&peer) {
            if old.peer_x25519 == *x_pub {
                let duplicate =
                    now.saturating_duration_since(old.installed_at) < DUPLICATE_KX_DEBOUNCE;
                // A verified PILA upgrades a session first set up by PILK.
                old.authenticated |= authenticated;
                if !duplicate {
                    self.flush_pending(peer);
                }
                return Ok(KxAccepted::Kept { duplicate });
            }
        } else if self.sessions.len() >= self.cfg.max_sessions {
            return Err(KxRejected::TooManySessions);
        }
        let key = derive_session_key(
            &self.provider,
            self.cfg.profile,
            self.tunnel.secret(),
            x_pub,
        )?;
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        self.rng.fill_bytes(&mut prefix);
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let session = Session {
            env: Envelope::new(&self.provider, self.cfg.profile, &key, prefix),
            generation,
            peer_x25519: *x_pub,
            authenticated,
            installed_at: now,
            last_inbound: now,
            last_recovery_reply: None,
            last_confirm_kx: None,
            verified_sig: None,
            last_authentic: None,
            salvage: SalvageRing::new(),
        };
        let old = self.sessions.insert(peer, session);
        let replaced = old.is_some();
        if let Some(p) = self.peers.get_mut(&peer) {
            p.flagged = false;
        }
        self.push_event(SessionEvent::Installed {
            peer,
            authenticated,
            replaced,
        });
        // Reply first, so the peer can install before our data arrives.
        self.send_kx(now, peer, false, false);
        if let Some(mut old) = old {
            for packet in old.salvage.take_fresh(now) {
                self.push_tx(Tx::Data {
                    peer,
                    generation,
                    salvage: true,
                    packet,
                });
            }
        }
        self.flush_pending(peer);
        Ok(KxAccepted::Installed { replaced })
    }

    fn flush_pending(&mut self, peer: u32) {
        let Some(generation) = self.sessions.get(&peer).map(|s| s.generation) else {
            return;
        };
        for packet in self.pending.take(peer) {
            self.push_tx(Tx::Data {
                peer,
                generation,
                salvage: false,
                packet,
            });
        }
    }

    // ----- data ----------------------------------------------------------

    /// Seals the packet at `frame[PILS_HEADER_LEN..PILS_HEADER_LEN + len]`
    /// for `peer` in place, or queues a copy and starts a key exchange if no
    /// session is ready (`spec/crypto.md` §6.1, §6.3).
    pub fn seal_in_place(
        &mut self,
        now: Instant,
        peer: u32,
        frame: &mut [u8],
        len: usize,
    ) -> Result<SendOutcome, SendError> {
        if len > self.cfg.max_plaintext {
            return Err(SendError::TooLarge);
        }
        let local = self.cfg.local_node;
        if let Some(s) = self.sessions.get_mut(&peer) {
            let packet = frame
                .get(PILS_HEADER_LEN..PILS_HEADER_LEN.saturating_add(len))
                .ok_or(SealError::BufferTooSmall {
                    need: len.saturating_add(super::envelope::PILS_OVERHEAD),
                })?;
            s.salvage.record(now, packet);
            let n = s.env.seal_in_place(&self.provider, local, frame, len)?;
            return Ok(SendOutcome::Sealed(n));
        }
        let packet = frame
            .get(PILS_HEADER_LEN..PILS_HEADER_LEN.saturating_add(len))
            .ok_or(SealError::BufferTooSmall {
                need: len.saturating_add(super::envelope::PILS_OVERHEAD),
            })?;
        if self.gave_up(now, peer) {
            return Err(SendError::GaveUp);
        }
        let res = self.pending.push(peer, packet);
        if !self.is_pending(peer) && peer != local {
            self.send_kx(now, peer, false, true);
        }
        res?;
        Ok(SendOutcome::Queued)
    }

    /// Like [`seal_in_place`](Self::seal_in_place) but copies `packet` into
    /// `out` first.
    pub fn seal(
        &mut self,
        now: Instant,
        peer: u32,
        packet: &[u8],
        out: &mut [u8],
    ) -> Result<SendOutcome, SendError> {
        let need = packet.len().saturating_add(super::envelope::PILS_OVERHEAD);
        if out.len() < need {
            return Err(SendError::Seal(SealError::BufferTooSmall { need }));
        }
        let dst = out
            .get_mut(PILS_HEADER_LEN..PILS_HEADER_LEN.saturating_add(packet.len()))
            .ok_or(SealError::BufferTooSmall { need })?;
        dst.copy_from_slice(packet);
        self.seal_in_place(now, peer, out, packet.len())
    }

    /// Opens a received PILS frame in place (`spec/crypto.md` §4.2 steps
    /// 1-5 and 8). A frame that does not open changes nothing: no drop, no
    /// rekey, no timer, no counter of the session (§5.3). The one reaction
    /// allowed to a bad tag is a resend of our own, unchanged key exchange
    /// to the peer, at most once per 3 s per session (the peer may hold a
    /// different key for us, or have missed our reply).
    pub fn open_in_place(&mut self, now: Instant, frame: &mut [u8]) -> Result<Opened, OpenFailure> {
        let header = PilsHeader::parse(frame).map_err(|_| OpenFailure::Malformed)?;
        let peer = header.sender;
        let Some(s) = self.sessions.get_mut(&peer) else {
            return Err(OpenFailure::NoSession);
        };
        match s.env.open_in_place(&self.provider, frame) {
            Ok((header, plaintext)) => {
                let newest = s.env.window().max() == header.counter();
                let authenticated = s.authenticated;
                s.last_authentic = Some(now);
                s.last_inbound = now;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.next = None;
                    p.sends = 0;
                    p.gave_up_until = None;
                    p.flagged = false;
                }
                Ok(Opened {
                    sender: peer,
                    plaintext,
                    newest,
                    authenticated,
                })
            }
            Err(OpenError::Malformed) => Err(OpenFailure::Malformed),
            Err(e) => {
                let resend = e == OpenError::Auth
                    && s.last_confirm_kx
                        .is_none_or(|t| now.saturating_duration_since(t) >= REKEY_REQUEST_INTERVAL);
                if resend {
                    s.last_confirm_kx = Some(now);
                    self.push_tx(Tx::KeyExchange { peer });
                }
                Err(OpenFailure::Rejected(e))
            }
        }
    }

    /// Removes the session with `peer` (trust revoked, peer dead) and
    /// discards what was queued for it. The peer probably still holds its
    /// session, which it keeps when it sees our unchanged key again, so the
    /// peer is flagged: our next key exchange to it carries a key request
    /// and the peer answers at once (`spec/crypto.md` §2.2, §13). Returns
    /// whether there was a session.
    pub fn remove(&mut self, peer: u32) -> bool {
        let had = self.sessions.remove(&peer).is_some();
        self.pending.take(peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.next = None;
            p.sends = 0;
            p.gave_up_until = None;
        }
        if had {
            if self.peers.contains_key(&peer) || self.peers.len() < self.cfg.max_sessions {
                self.peers.entry(peer).or_default().flagged = true;
            }
            self.push_event(SessionEvent::Dropped {
                peer,
                reason: DropReason::Removed,
            });
        }
        had
    }

    /// The replay window of `peer`'s session (tests and diagnostics).
    pub fn replay_window(&self, peer: u32) -> Option<&ReplayWindow> {
        self.sessions.get(&peer).map(|s| s.env.window())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider::RustCrypto;
    use core::time::Duration;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    type Table = SessionTable<RustCrypto, ChaCha20Rng>;

    const IP_A: KxSource = KxSource::Direct(core::net::IpAddr::V4(core::net::Ipv4Addr::LOCALHOST));
    const IP_B: KxSource = KxSource::Direct(core::net::IpAddr::V6(core::net::Ipv6Addr::LOCALHOST));

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    struct Node {
        t: Table,
        id: Identity,
    }

    fn node(n: u32, seed: u64, profile: WireProfile) -> Node {
        let p = RustCrypto;
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let id = Identity::generate(&p, &mut rng);
        let tunnel = TunnelKey::generate(&p, &mut rng);
        let t = SessionTable::new(p, rng, SessionConfig::new(n, profile), Some(&id), tunnel);
        Node { t, id }
    }

    fn parse_kx(f: &[u8]) -> Option<KeyExchange> {
        KeyExchange::from_frame(&crate::wire::tunnel::Frame::decode(f).ok()?)
    }

    fn drain(t: &mut Table, now: Instant) -> Vec<(SealedFrame, Vec<u8>)> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Some(tx) = t.poll_transmit(now, &mut buf) {
            out.push((tx, buf[..tx.len].to_vec()));
        }
        out
    }

    fn events(t: &mut Table) -> Vec<SessionEvent> {
        core::iter::from_fn(|| t.poll_event()).collect()
    }

    /// Delivers every frame of `from` to `to`; returns opened plaintexts.
    fn deliver(from: &mut Node, to: &mut Node, now: Instant, src: KxSource) -> Vec<Vec<u8>> {
        let key = *from.id.public();
        let mut got = Vec::new();
        for (_, mut f) in drain(&mut from.t, now) {
            if f.starts_with(b"PILS") {
                if let Ok(o) = to.t.open_in_place(now, &mut f) {
                    got.push(f[o.plaintext].to_vec());
                }
            } else if let Some(kx) = parse_kx(&f) {
                let _ = to.t.handle_key_exchange(now, src, &kx, Some(&key));
            }
        }
        got
    }

    fn handshake(a: &mut Node, b: &mut Node, now: Instant) {
        assert!(a.t.connect(now, 2));
        deliver(a, b, now, IP_A);
        deliver(b, a, now, IP_B);
        assert!(a.t.session(2).is_some() && b.t.session(1).is_some());
        assert!(!a.t.connect(now, 2), "a ready session needs no exchange");
        assert!(!a.t.is_pending(2) && !b.t.is_pending(1));
    }

    #[test]
    fn first_send_queues_then_handshake_flushes() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        let mut buf = [0u8; 256];
        assert_eq!(
            a.t.seal(ms(0), 2, b"syn", &mut buf),
            Ok(SendOutcome::Queued)
        );
        assert_eq!(
            a.t.seal(ms(0), 2, b"data", &mut buf),
            Ok(SendOutcome::Queued)
        );
        let sent = drain(&mut a.t, ms(0));
        // Exactly one PILA: the second packet does not start another exchange,
        // and a first send carries no key-request PILK.
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0.kind, TransmitKind::KeyExchange);
        assert_eq!(sent[0].1.len(), PILA_LEN);
        assert!(a.t.is_pending(2));
        let kx = parse_kx(&sent[0].1).unwrap();
        assert_eq!(
            b.t.handle_key_exchange(ms(10), IP_A, &kx, Some(a.id.public())),
            Ok(KxAccepted::Installed { replaced: false })
        );
        assert_eq!(
            events(&mut b.t),
            vec![SessionEvent::Installed {
                peer: 1,
                authenticated: true,
                replaced: false
            }]
        );
        deliver(&mut b, &mut a, ms(20), IP_B);
        assert!(!a.t.is_pending(2));
        assert_eq!(a.t.pending_len(2), 0);
        let got = deliver(&mut a, &mut b, ms(30), IP_A);
        assert_eq!(got, vec![b"syn".to_vec(), b"data".to_vec()]);
        // Now sends are sealed immediately, counters continue.
        let n = match a.t.seal(ms(40), 2, b"more", &mut buf).unwrap() {
            SendOutcome::Sealed(n) => n,
            other => panic!("{other:?}"),
        };
        assert_eq!(a.t.session(2).unwrap().send_counter, 3);
        let o = b.t.open_in_place(ms(41), &mut buf[..n]).unwrap();
        assert_eq!(&buf[o.plaintext], b"more");
        assert_eq!(b.t.session(1).unwrap().recv_max, 3);
        assert_eq!(b.t.session(1).unwrap().last_inbound, ms(41));
        assert_eq!(b.t.peers().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn pila_identity_checks() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        a.t.connect(ms(0), 2);
        let kx = parse_kx(&drain(&mut a.t, ms(0))[0].1).unwrap();
        let now = ms(0);
        assert_eq!(
            b.t.handle_key_exchange(now, IP_A, &kx, None),
            Err(KxRejected::Auth(KxError::UnknownIdentity))
        );
        assert_eq!(
            b.t.handle_key_exchange(now, IP_A, &kx, Some(b.id.public())),
            Err(KxRejected::Auth(KxError::IdentityMismatch))
        );
        let mut forged = kx;
        forged.x25519[0] ^= 1;
        assert_eq!(
            b.t.handle_key_exchange(now, IP_A, &forged, Some(a.id.public())),
            Err(KxRejected::Auth(KxError::BadSignature))
        );
        assert!(b.t.is_empty());
        assert!(drain(&mut b.t, now).is_empty());
    }

    #[test]
    fn pilk_is_a_key_request_when_identity_known_else_unauthenticated_session() {
        let mut b = node(2, 2, WireProfile::Current);
        let pilk = KeyExchange {
            sender: 1,
            x25519: *TunnelKey::from_secret(&RustCrypto, [4; 32]).public(),
            auth: None,
        };
        assert_eq!(
            b.t.handle_key_exchange(ms(0), IP_A, &pilk, Some(&[1; 32])),
            Err(KxRejected::Unauthenticated)
        );
        let tx = drain(&mut b.t, ms(0));
        assert_eq!(
            tx.len(),
            1,
            "our PILA only: a first reply carries no key-request PILK"
        );
        assert_eq!(tx[0].1.len(), PILA_LEN);
        assert!(b.t.is_empty());
        assert_eq!(
            b.t.handle_key_exchange(ms(1), IP_A, &pilk, None),
            Ok(KxAccepted::Installed { replaced: false })
        );
        assert!(!b.t.session(1).unwrap().authenticated);
        assert_eq!(drain(&mut b.t, ms(1)).len(), 1);
    }

    #[test]
    fn unauthenticated_session_cap() {
        let p = RustCrypto;
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let tunnel = TunnelKey::generate(&p, &mut rng);
        let mut cfg = SessionConfig::new(9, WireProfile::Current);
        cfg.max_unauth_sessions = 1;
        let mut t = SessionTable::new(p, rng, cfg, None, tunnel);
        let k = |s| *TunnelKey::from_secret(&RustCrypto, [s; 32]).public();
        let pilk = |sender, s| KeyExchange {
            sender,
            x25519: k(s),
            auth: None,
        };
        assert!(
            t.handle_key_exchange(ms(0), IP_A, &pilk(1, 1), None)
                .is_ok()
        );
        assert_eq!(
            t.handle_key_exchange(ms(0), IP_A, &pilk(2, 2), None),
            Err(KxRejected::TooManySessions)
        );
        // An existing peer may still change its key.
        assert_eq!(
            t.handle_key_exchange(ms(0), IP_A, &pilk(1, 3), None),
            Ok(KxAccepted::Installed { replaced: true })
        );
        // Without an identity we send PILK, never PILA.
        assert!(
            drain(&mut t, ms(0))
                .iter()
                .all(|(_, f)| f.len() == PILK_LEN)
        );
    }

    #[test]
    fn duplicate_debounce_and_recovery_reply() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        a.t.connect(ms(0), 2);
        let kx = parse_kx(&drain(&mut a.t, ms(0))[0].1).unwrap();
        let key = *a.id.public();
        b.t.handle_key_exchange(ms(0), IP_A, &kx, Some(&key))
            .unwrap();
        let prefix = b.t.session(1).unwrap().prefix;
        drain(&mut b.t, ms(0));
        events(&mut b.t);
        assert_eq!(
            b.t.handle_key_exchange(ms(249), IP_A, &kx, Some(&key)),
            Ok(KxAccepted::Kept { duplicate: true })
        );
        assert!(drain(&mut b.t, ms(249)).is_empty());
        // Same key, not a duplicate, but the peer is not silent: no reply.
        assert_eq!(
            b.t.handle_key_exchange(ms(600), IP_A, &kx, Some(&key)),
            Ok(KxAccepted::Kept { duplicate: false })
        );
        assert!(drain(&mut b.t, ms(600)).is_empty());
        // 1 s without a decrypt: one recovery reply, then not within 1 s.
        b.t.handle_key_exchange(ms(1000), IP_A, &kx, Some(&key))
            .unwrap();
        assert_eq!(drain(&mut b.t, ms(1000)).len(), 1);
        b.t.handle_key_exchange(ms(1999), IP_A, &kx, Some(&key))
            .unwrap();
        assert!(drain(&mut b.t, ms(1999)).is_empty());
        b.t.handle_key_exchange(ms(2000), IP_A, &kx, Some(&key))
            .unwrap();
        assert_eq!(drain(&mut b.t, ms(2000)).len(), 1);
        // The session itself was never replaced.
        assert_eq!(b.t.session(1).unwrap().prefix, prefix);
        assert!(events(&mut b.t).is_empty());
    }

    #[test]
    fn retransmission_relay_hint_and_give_up() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut buf = [0u8; 128];
        assert_eq!(
            a.t.seal(ms(0), 2, b"syn", &mut buf),
            Ok(SendOutcome::Queued)
        );
        assert_eq!(drain(&mut a.t, ms(0)).len(), 1);
        assert_eq!(a.t.poll_timeout(), Some(ms(4000)));
        a.t.handle_timeout(ms(3999));
        assert!(drain(&mut a.t, ms(3999)).is_empty());
        let mut kinds = Vec::new();
        for i in 1..=5u64 {
            let now = ms(4000 * i);
            a.t.handle_timeout(now);
            let tx = drain(&mut a.t, now);
            kinds.push(tx.iter().map(|(t, _)| t.kind).collect::<Vec<_>>());
            let ev = events(&mut a.t);
            assert_eq!(
                ev == vec![SessionEvent::PreferRelay { peer: 2 }],
                i == 2,
                "{i}"
            );
        }
        // Every retransmission carries the key-request PILK.
        for k in &kinds {
            assert_eq!(k, &[TransmitKind::KeyExchange, TransmitKind::KeyRequest]);
        }
        a.t.handle_timeout(ms(24_000));
        assert!(drain(&mut a.t, ms(24_000)).is_empty());
        assert_eq!(
            events(&mut a.t),
            vec![SessionEvent::GaveUp {
                peer: 2,
                discarded: 1
            }]
        );
        assert_eq!(a.t.poll_timeout(), None);
        assert_eq!(
            a.t.seal(ms(28_999), 2, b"x", &mut buf),
            Err(SendError::GaveUp)
        );
        assert!(!a.t.connect(ms(28_999), 2));
        assert_eq!(
            a.t.seal(ms(29_000), 2, b"x", &mut buf),
            Ok(SendOutcome::Queued)
        );
        assert!(a.t.is_pending(2));
    }

    /// Issue #21: a dial whose deadline is 30 s out kept the tunnel's key
    /// exchange for only 24 s, then the 5-s cool-down refused its SYNs, so
    /// a 21-s outage at the start of a dial failed it. While a connection
    /// needs the tunnel the exchange goes on every 4 s until its deadline,
    /// then gives up.
    #[test]
    fn a_needed_tunnel_keeps_its_key_exchange_until_the_deadline() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut buf = [0u8; 128];
        assert_eq!(
            a.t.seal(ms(0), 2, b"syn", &mut buf),
            Ok(SendOutcome::Queued)
        );
        a.t.need_tunnel_until(ms(0), 2, ms(30_000));
        drain(&mut a.t, ms(0));
        for i in 1..=5u64 {
            a.t.handle_timeout(ms(4000 * i));
            drain(&mut a.t, ms(4000 * i));
        }
        events(&mut a.t);
        // The regular attempts are over; the exchange goes on.
        for now in [ms(24_000), ms(28_000)] {
            assert_eq!(a.t.poll_timeout(), Some(now));
            a.t.handle_timeout(now);
            let kinds: Vec<_> = drain(&mut a.t, now).iter().map(|(t, _)| t.kind).collect();
            assert_eq!(kinds, [TransmitKind::KeyExchange, TransmitKind::KeyRequest]);
            assert!(events(&mut a.t).is_empty());
            assert!(a.t.is_pending(2));
        }
        // The next attempt would fall after the deadline: the timer stops
        // at the deadline and the exchange gives up there.
        assert_eq!(a.t.poll_timeout(), Some(ms(30_000)));
        a.t.handle_timeout(ms(30_000));
        assert!(drain(&mut a.t, ms(30_000)).is_empty());
        assert_eq!(
            events(&mut a.t),
            vec![SessionEvent::GaveUp {
                peer: 2,
                discarded: 1
            }]
        );
        // Without a pending exchange the call creates nothing.
        a.t.need_tunnel_until(ms(30_000), 3, ms(60_000));
        assert!(!a.t.is_pending(3));
        assert_eq!(a.t.poll_timeout(), None);
    }

    #[test]
    fn restart_attempts_gives_the_relay_a_full_set() {
        let mut a = node(1, 1, WireProfile::Current);
        a.t.connect(ms(0), 2);
        for i in 1..=4u64 {
            a.t.handle_timeout(ms(4000 * i));
        }
        a.t.restart_attempts(2);
        let mut gave_up_at = None;
        for i in 5..=12u64 {
            a.t.handle_timeout(ms(4000 * i));
            if events(&mut a.t)
                .iter()
                .any(|e| matches!(e, SessionEvent::GaveUp { .. }))
            {
                gave_up_at = Some(i);
                break;
            }
        }
        assert_eq!(gave_up_at, Some(10));
    }

    #[test]
    fn pils_without_session_does_nothing_and_rekey_requests_are_rate_limited() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        handshake(&mut a, &mut b, ms(0));
        let mut buf = [0u8; 128];
        let SendOutcome::Sealed(n) = a.t.seal(ms(100), 2, b"hi", &mut buf).unwrap() else {
            panic!()
        };
        b.t.remove(1);
        drain(&mut b.t, ms(100));
        events(&mut b.t);
        let mut f = buf;
        assert_eq!(
            b.t.open_in_place(ms(100), &mut f[..n]),
            Err(OpenFailure::NoSession)
        );
        assert!(drain(&mut b.t, ms(100)).is_empty(), "no reaction by itself");
        assert!(events(&mut b.t).is_empty());
        // The owner knows peer 1: it asks for a rekey (PILA + key request),
        // without arming a retransmission timer.
        assert!(b.t.request_rekey(ms(100), 1));
        let kinds: Vec<_> = drain(&mut b.t, ms(100))
            .iter()
            .map(|(t, _)| t.kind)
            .collect();
        assert_eq!(kinds, [TransmitKind::KeyExchange, TransmitKind::KeyRequest]);
        assert_eq!(b.t.poll_timeout(), None);
        assert!(!b.t.is_pending(1));
        assert!(!b.t.request_rekey(ms(3099), 1));
        assert!(drain(&mut b.t, ms(3099)).is_empty());
        assert_eq!(b.t.stats().rekey_suppressed, 1);
        assert!(b.t.request_rekey(ms(3100), 1));
        assert_eq!(drain(&mut b.t, ms(3100)).len(), 2);
        // Never while a session exists.
        assert!(!a.t.request_rekey(ms(9000), 2));
    }

    /// Forged frames (bad tag), replays and frames behind the window, in
    /// any number and at any session age, change nothing: same session,
    /// same prefix and counters, no event, no frame, no timer.
    #[test]
    fn failed_frames_never_drop_rekey_or_arm_a_timer() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        handshake(&mut a, &mut b, ms(0));
        let mut frames = Vec::new();
        let mut buf = [0u8; 128];
        for i in 0..300u64 {
            let SendOutcome::Sealed(n) = a.t.seal(ms(i), 2, b"hi", &mut buf).unwrap() else {
                panic!()
            };
            frames.push(buf[..n].to_vec());
        }
        for f in &frames {
            let mut f = f.clone();
            b.t.open_in_place(ms(500), &mut f).unwrap();
        }
        drain(&mut b.t, ms(500));
        events(&mut b.t);
        let before = b.t.session(1).unwrap();
        for (i, at) in [1_000u64, 4_000, 61_000, 600_000].into_iter().enumerate() {
            for k in 0..40 {
                let mut forged = frames[k].clone();
                let last = forged.len() - 1;
                forged[last] ^= 1 + i as u8;
                assert_eq!(
                    b.t.open_in_place(ms(at), &mut forged),
                    Err(OpenFailure::Rejected(OpenError::Auth))
                );
                let mut replay = frames[299 - k].clone();
                assert_eq!(
                    b.t.open_in_place(ms(at), &mut replay),
                    Err(OpenFailure::Rejected(OpenError::Replay))
                );
                let mut old = frames[k].clone();
                assert_eq!(
                    b.t.open_in_place(ms(at), &mut old),
                    Err(OpenFailure::Rejected(OpenError::Outside))
                );
            }
            assert_eq!(b.t.session(1), Some(before), "at {at} ms");
            assert!(events(&mut b.t).is_empty());
            // At most our own unchanged key exchange, once.
            let tx = drain(&mut b.t, ms(at));
            assert!(tx.len() <= 1 && tx.iter().all(|(t, _)| t.kind == TransmitKind::KeyExchange));
            assert_eq!(b.t.poll_timeout(), None);
        }
        // The genuine peer still gets through.
        let SendOutcome::Sealed(n) = a.t.seal(ms(600_001), 2, b"ok", &mut buf).unwrap() else {
            panic!()
        };
        let o = b.t.open_in_place(ms(600_001), &mut buf[..n]).unwrap();
        assert_eq!(&buf[o.plaintext], b"ok");
    }

    /// Frames with bad tags are answered with our unchanged key exchange,
    /// at most once per 3 s (the peer may hold another key for us or have
    /// missed our reply); nothing else changes.
    #[test]
    fn bad_tags_resend_our_key_exchange_at_most_every_3_s() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        a.t.connect(ms(0), 2);
        deliver(&mut a, &mut b, ms(0), IP_A);
        drain(&mut b.t, ms(0));
        events(&mut b.t);
        let prefix = b.t.session(1).unwrap().prefix;
        let mut forged = vec![0u8; 64];
        forged[..4].copy_from_slice(b"PILS");
        forged[4..8].copy_from_slice(&1u32.to_be_bytes());
        forged[19] = 1;
        let mut sent = 0;
        for i in 0..100u64 {
            let now = ms(100 * i);
            let mut f = forged.clone();
            assert!(b.t.open_in_place(now, &mut f).is_err());
            let tx = drain(&mut b.t, now);
            assert!(tx.iter().all(|(t, _)| t.kind == TransmitKind::KeyExchange));
            sent += tx.len();
        }
        assert_eq!(sent, 4, "at 0, 3, 6 and 9 s");
        assert_eq!(b.t.session(1).unwrap().prefix, prefix);
        assert!(events(&mut b.t).is_empty());
    }

    /// A replayed key exchange of the peer's earlier process (another
    /// tunnel key) cannot replace a live session; once the session is
    /// quiet for 2 s (a restarted peer cannot keep it alive) it can.
    #[test]
    fn key_change_is_refused_while_the_session_is_live() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        handshake(&mut a, &mut b, ms(0));
        let mut sig_frame = [0u8; PILA_LEN];
        let tk = TunnelKey::from_secret(&RustCrypto, [8; 32]);
        kx::build_pila(&RustCrypto, 2, &tk, &b.id, &mut sig_frame).unwrap();
        let stale = parse_kx(&sig_frame).unwrap();
        let mut buf = [0u8; 128];
        let SendOutcome::Sealed(n) = b.t.seal(ms(1000), 1, b"hi", &mut buf).unwrap() else {
            panic!()
        };
        a.t.open_in_place(ms(1000), &mut buf[..n]).unwrap();
        let key = *b.id.public();
        assert_eq!(
            a.t.handle_key_exchange(ms(2999), IP_B, &stale, Some(&key)),
            Err(KxRejected::StaleKey)
        );
        assert_eq!(
            a.t.handle_key_exchange(ms(3000), IP_B, &stale, Some(&key)),
            Ok(KxAccepted::Installed { replaced: true })
        );
    }

    #[test]
    fn peer_rederiving_the_same_key_gets_a_fresh_receive_epoch_at_once() {
        for profile in [WireProfile::Current, WireProfile::Legacy] {
            let mut a = node(1, 1, profile);
            let mut b = node(2, 2, profile);
            handshake(&mut a, &mut b, ms(0));
            drain(&mut a.t, ms(0));
            drain(&mut b.t, ms(0));
            let mut buf = [0u8; 128];
            let mut old = Vec::new();
            for i in 0..10u64 {
                let SendOutcome::Sealed(n) = a.t.seal(ms(i), 2, b"old", &mut buf).unwrap() else {
                    panic!()
                };
                let mut f = buf;
                b.t.open_in_place(ms(i), &mut f[..n]).unwrap();
                old.push(buf[..n].to_vec());
            }
            // A drops its session (revoke, dead peer) and installs again
            // from B's unchanged key: counter back to 1 under a new prefix.
            assert!(a.t.remove(2));
            assert!(a.t.connect(ms(2000), 2));
            deliver(&mut a, &mut b, ms(2000), IP_A);
            deliver(&mut b, &mut a, ms(2000), IP_B);
            assert!(a.t.session(2).is_some());
            assert_eq!(a.t.session(2).unwrap().send_counter, 0);
            for i in 0..10u64 {
                let at = ms(70_000 + i);
                let SendOutcome::Sealed(n) = a.t.seal(at, 2, b"new", &mut buf).unwrap() else {
                    panic!()
                };
                let mut f = buf;
                let o =
                    b.t.open_in_place(at, &mut f[..n])
                        .expect("new epoch accepted");
                assert_eq!(&f[o.plaintext], b"new");
            }
            assert!(b.t.session(1).is_some(), "no drop, no rekey needed");
            // Frames of the retired epoch are refused without harm.
            for f in &old {
                let mut f = f.clone();
                assert_eq!(
                    b.t.open_in_place(ms(80_000), &mut f),
                    Err(OpenFailure::Rejected(OpenError::StaleEpoch))
                );
            }
            assert!(b.t.session(1).is_some(), "stale epochs feed no drop rule");
        }
    }

    #[test]
    fn peer_restart_replaces_session_and_resends_salvage() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        handshake(&mut a, &mut b, ms(0));
        drain(&mut a.t, ms(0));
        events(&mut a.t);
        let mut buf = [0u8; 128];
        for (i, p) in [b"p1", b"p2"].iter().enumerate() {
            a.t.seal(ms(1000 + i as u64), 2, *p, &mut buf).unwrap();
        }
        let SendOutcome::Sealed(n) = a.t.seal(ms(2000), 2, b"p3", &mut buf).unwrap() else {
            panic!()
        };
        // B restarts with a new tunnel key (same identity) and gets p3.
        let p = RustCrypto;
        let mut rng = ChaCha20Rng::seed_from_u64(77);
        let tunnel = TunnelKey::generate(&p, &mut rng);
        let t = SessionTable::new(
            p,
            rng,
            SessionConfig::new(2, WireProfile::Current),
            Some(&b.id),
            tunnel,
        );
        let mut b2 = Node {
            t,
            id: b.id.clone(),
        };
        assert_eq!(
            b2.t.open_in_place(ms(2001), &mut buf[..n]),
            Err(OpenFailure::NoSession)
        );
        assert!(b2.t.request_rekey(ms(2001), 1), "B2 knows A");
        // B2's rekey request reaches A: the key changed, A replaces the
        // session, resends its salvage ring and replies.
        deliver(&mut b2, &mut a, ms(2002), IP_B);
        assert_eq!(
            events(&mut a.t),
            vec![SessionEvent::Installed {
                peer: 2,
                authenticated: true,
                replaced: true
            }]
        );
        assert_eq!(a.t.session(2).unwrap().send_counter, 0);
        let got = deliver(&mut a, &mut b2, ms(2003), IP_A);
        assert_eq!(got, vec![b"p1".to_vec(), b"p2".to_vec(), b"p3".to_vec()]);
        assert!(b2.t.session(1).is_some());
    }

    #[test]
    fn pending_queue_refuses_the_newest() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut buf = [0u8; 64];
        for i in 0..PENDING_PER_PEER {
            assert_eq!(
                a.t.seal(ms(0), 2, &[i as u8], &mut buf),
                Ok(SendOutcome::Queued)
            );
        }
        assert_eq!(
            a.t.seal(ms(0), 2, b"late", &mut buf),
            Err(SendError::Pending(PendingError::PeerFull))
        );
        assert_eq!(a.t.pending_len(2), PENDING_PER_PEER);
    }

    #[test]
    fn key_exchanges_are_rate_limited_per_source() {
        let mut a = node(1, 1, WireProfile::Current);
        let mut b = node(2, 2, WireProfile::Current);
        a.t.connect(ms(0), 2);
        let kx = parse_kx(&drain(&mut a.t, ms(0))[0].1).unwrap();
        for _ in 0..5 {
            assert!(
                b.t.handle_key_exchange(ms(0), IP_A, &kx, Some(a.id.public()))
                    .is_ok()
            );
        }
        assert_eq!(
            b.t.handle_key_exchange(ms(0), IP_A, &kx, Some(a.id.public())),
            Err(KxRejected::RateLimited)
        );
        assert!(
            b.t.handle_key_exchange(ms(0), KxSource::Relayed(1), &kx, Some(a.id.public()))
                .is_ok()
        );
    }

    #[test]
    fn profiles_do_not_interoperate_but_each_works_with_itself() {
        for (pa, pb, works) in [
            (WireProfile::Legacy, WireProfile::Legacy, true),
            (WireProfile::Current, WireProfile::Legacy, false),
        ] {
            let mut a = node(1, 1, pa);
            let mut b = node(2, 2, pb);
            handshake(&mut a, &mut b, ms(0));
            drain(&mut a.t, ms(0));
            let mut buf = [0u8; 64];
            a.t.seal(ms(1), 2, b"x", &mut buf).unwrap();
            let SendOutcome::Sealed(n) = a.t.seal(ms(1), 2, b"x", &mut buf).unwrap() else {
                panic!()
            };
            assert_eq!(b.t.open_in_place(ms(1), &mut buf[..n]).is_ok(), works);
        }
    }

    mod chaos {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        #[derive(Debug, Clone)]
        enum Step {
            Send { from_a: bool },
            Deliver { pick: usize, keep_copy: bool },
            Lose { pick: usize },
            Advance { ms: u16 },
            Timeout,
            RestartB,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => any::<bool>().prop_map(|from_a| Step::Send { from_a }),
                6 => (any::<usize>(), any::<bool>())
                    .prop_map(|(pick, keep_copy)| Step::Deliver { pick, keep_copy }),
                1 => any::<usize>().prop_map(|pick| Step::Lose { pick }),
                2 => any::<u16>().prop_map(|ms| Step::Advance { ms }),
                1 => Just(Step::Timeout),
                1 => Just(Step::RestartB),
            ]
        }

        struct World {
            a: Node,
            b: Node,
            now: Instant,
            /// In flight: (to_b, frame).
            net: Vec<(bool, Vec<u8>)>,
            /// Payload ids sealed, indexed by "sender is A".
            sealed: [BTreeSet<u64>; 2],
            accepted: BTreeSet<(bool, [u8; 4], [u8; 12])>,
            next_id: u64,
            restarts: u64,
            opened_by_b: Vec<u64>,
        }

        impl World {
            fn pump(&mut self) {
                for to_b in [true, false] {
                    let from = if to_b { &mut self.a } else { &mut self.b };
                    for (tx, f) in drain(&mut from.t, self.now) {
                        assert_eq!(tx.peer, if to_b { 2 } else { 1 });
                        self.net.push((to_b, f));
                    }
                    while from.t.poll_event().is_some() {}
                }
            }

            fn send(&mut self, from_a: bool) {
                self.next_id += 1;
                let id = self.next_id;
                let (node, peer) = if from_a {
                    (&mut self.a, 2)
                } else {
                    (&mut self.b, 1)
                };
                let mut buf = [0u8; 64];
                if let Ok(SendOutcome::Sealed(n)) =
                    node.t.seal(self.now, peer, &id.to_be_bytes(), &mut buf)
                {
                    self.net.push((from_a, buf[..n].to_vec()));
                }
                self.sealed[usize::from(from_a)].insert(id);
                self.pump();
            }

            fn deliver(&mut self, i: usize, keep_copy: bool) {
                if self.net.is_empty() {
                    return;
                }
                let i = i % self.net.len();
                let (to_b, mut f) = if keep_copy {
                    self.net[i].clone()
                } else {
                    self.net.remove(i)
                };
                let now = self.now;
                let (to, from_key, src) = if to_b {
                    (&mut self.b, *self.a.id.public(), IP_A)
                } else {
                    (&mut self.a, *self.b.id.public(), IP_B)
                };
                if f.starts_with(b"PILS") {
                    let peer = if to_b { 1 } else { 2 };
                    let prefix = to.t.session(peer).map(|s| s.prefix);
                    let res = to.t.open_in_place(now, &mut f);
                    if res == Err(OpenFailure::NoSession) {
                        // Both know each other (the node's peer table).
                        to.t.request_rekey(now, peer);
                    }
                    if let Ok(o) = res {
                        let nonce: [u8; 12] = f[8..20].try_into().unwrap();
                        // Never accept the same frame twice in one session.
                        assert!(
                            self.accepted.insert((to_b, prefix.unwrap(), nonce)),
                            "replay accepted"
                        );
                        let id = u64::from_be_bytes(f[o.plaintext].try_into().unwrap());
                        // Only what the peer really sealed comes out.
                        assert!(self.sealed[usize::from(to_b)].contains(&id));
                        if to_b {
                            self.opened_by_b.push(id);
                        }
                    }
                } else if let Some(kx) = parse_kx(&f) {
                    let _ = to.t.handle_key_exchange(now, src, &kx, Some(&from_key));
                }
                self.pump();
            }

            fn restart_b(&mut self) {
                self.restarts += 1;
                let p = RustCrypto;
                let mut rng = ChaCha20Rng::seed_from_u64(1000 + self.restarts);
                let tunnel = TunnelKey::generate(&p, &mut rng);
                let cfg = SessionConfig::new(2, WireProfile::Current);
                self.b.t = SessionTable::new(p, rng, cfg, Some(&self.b.id), tunnel);
                // Old-session acceptances do not constrain the new table.
                self.accepted.retain(|(to_b, _, _)| !*to_b);
            }

            fn advance(&mut self, d: Duration) {
                self.now = self.now + d;
                self.a.t.handle_timeout(self.now);
                self.b.t.handle_timeout(self.now);
                self.pump();
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(96))]

            /// Under loss, duplication, reordering, delay and restarts no
            /// frame is accepted twice and nothing foreign comes out; once
            /// the network heals, A reaches B again.
            #[test]
            fn no_replays_and_recovery_after_healing(
                steps in proptest::collection::vec(step(), 1..60),
            ) {
                let mut w = World {
                    a: node(1, 1, WireProfile::Current),
                    b: node(2, 2, WireProfile::Current),
                    now: ms(1000),
                    net: Vec::new(),
                    sealed: [BTreeSet::new(), BTreeSet::new()],
                    accepted: BTreeSet::new(),
                    next_id: 0,
                    restarts: 0,
                    opened_by_b: Vec::new(),
                };
                for s in steps {
                    match s {
                        Step::Send { from_a } => w.send(from_a),
                        Step::Deliver { pick, keep_copy } => w.deliver(pick, keep_copy),
                        Step::Lose { pick } => {
                            if !w.net.is_empty() {
                                let i = pick % w.net.len();
                                w.net.remove(i);
                            }
                        }
                        Step::Advance { ms } => w.advance(Duration::from_millis(u64::from(ms))),
                        Step::Timeout => w.advance(Duration::ZERO),
                        Step::RestartB => w.restart_b(),
                    }
                }
                // Heal: drop what is in flight, then probe in rounds.
                w.net.clear();
                let mut reached = false;
                for _ in 0..8 {
                    w.advance(Duration::from_secs(6));
                    w.send(true);
                    let probe = w.next_id;
                    let mut guard = 0;
                    while !w.net.is_empty() && guard < 200 {
                        w.deliver(0, false);
                        guard += 1;
                    }
                    if w.opened_by_b.contains(&probe) {
                        reached = true;
                        break;
                    }
                }
                prop_assert!(reached, "A could not reach B after healing");
            }
        }
    }
}
