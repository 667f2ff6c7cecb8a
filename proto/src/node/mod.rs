//! The node: the sans-IO state machine of one daemon (`spec/node.md`).
//!
//! A [`Node`] owns the peer table (node ID → UDP endpoint and identity
//! key), the crypto [`SessionTable`], the [`PortTable`], datagrams, the
//! control ping of port 0, broadcast expansion, stream connections and one
//! [`TimerTable`] holding every deadline.
//!
//! # Call order
//!
//! Inputs are [`Node::handle_datagram`], [`Node::handle_timeout`] and the
//! application commands ([`Node::send_datagram`], [`Node::ping`],
//! [`Node::connect`], [`Node::write`], ...). After **any** input, drain
//! [`Node::poll_transmit`] and [`Node::poll_event`] until both return
//! `None`, then re-read [`Node::poll_timeout`] and call
//! [`Node::handle_timeout`] at that instant (spurious calls are harmless).
//! Time only comes in as an argument; randomness only from the RNG in the
//! [`NodeConfig`].
//!
//! Every queue is bounded by [`Limits`]; malformed or unwanted input is
//! counted in [`NodeStats`] and dropped, never a panic.

pub mod gate;
mod pool;
pub(crate) mod ports;
pub(crate) mod timer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use core::net::SocketAddr;
use core::time::Duration;

use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::addr::Addr;
use crate::crypto::drops::{AuthDrop, AuthDrops};
use crate::crypto::envelope::{OpenError, PILS_HEADER_LEN, PilsHeader};
use crate::crypto::halfopen::{HALF_OPEN_MAX_AGE, HalfOpen, HeldOutcome};
use crate::crypto::identity::{Identity, TunnelKey};
use crate::crypto::kdf::KdfError;
use crate::crypto::kx::{self, KeyExchange, KxError};
use crate::crypto::provider::CryptoProvider;
use crate::crypto::session::{
    KxAccepted, KxRejected, KxSource, OpenFailure, SendError, SendOutcome, SessionConfig,
    SessionEvent, SessionTable,
};
use crate::stream::conn::{
    self, ConnConfig, ConnStats, Connection, ResetReason, Segment, StreamError,
};
use crate::stream::consts::MAX_SEGMENT_BUDGET;
use crate::stream::seq::Seq;
use crate::time::Instant;
use crate::wire::WireProfile;
use crate::wire::packet::{Flags, HEADER_LEN, Header, MAX_PAYLOAD, Packet, Protocol, VERSION};
use crate::wire::tunnel::{Frame, MAGIC_LEN, MAGIC_PILS, MAGIC_PILT, PILS_OVERHEAD};

pub use gate::{Gate, Verdict};
pub use ports::{PortError, PortTable};
pub use timer::{TimeoutReason, TimerTable};

/// Interval of the NAT-keepalive sweep (`spec/node.md` §7, wire.md §3.6).
pub const KEEPALIVE_SWEEP: Duration = Duration::from_secs(5);
/// Idle time towards a peer after which a keepalive is sent
/// (`spec/node.md` §7).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(25);
/// Default peer timeout: a tunnel peer from which nothing authenticated
/// arrived for this long, despite probes, is dead (`spec/node.md` §7.1).
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the peer's current endpoint must have sent nothing authentic
/// before a data frame from another address moves it there
/// (`spec/crypto.md` §13.2 row 17).
pub const ROAM_QUIET: Duration = Duration::from_secs(1);
/// Smallest accepted peer timeout.
pub const MIN_PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// Payload of a liveness probe (a control ping with sequence 0; any
/// daemon answers it with a pong). spec/node.md §7.1
pub const PROBE_PAYLOAD: &[u8; 10] = b"pilot-live";
/// A dial unanswered for this long asks for the peer's endpoint to be
/// looked up again ([`Event::ResolveNeeded`]).
pub const RESOLVE_AFTER: Duration = Duration::from_secs(1);
/// PILS frames from senders without a session kept for a moment, in
/// case the key exchange that installs the session is just behind them
/// (`spec/node.md` §2). Oldest evicted first.
pub const EARLY_FRAMES: usize = 16;
/// Largest early frame kept, bytes.
pub const EARLY_FRAME_MAX_LEN: usize = 2048;
/// How long an early frame is kept.
pub const EARLY_FRAME_TTL: Duration = Duration::from_secs(2);
/// Bound of the diagnostics queue ([`Node::poll_diagnostic`]).
pub const DIAGNOSTIC_QUEUE: usize = 256;
/// Diagnostics that may be queued at once (token-bucket burst).
pub const DIAGNOSTIC_BURST: f64 = 32.0;
/// Diagnostics per second beyond the burst.
pub const DIAGNOSTIC_RATE: f64 = 16.0;
/// How long a ping waits for its pong (`spec/node.md` §5).
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time a dial holds its SYN retries while the tunnel key exchange
/// is pending (`spec/node.md` §9, transport.md §4.1).
pub const SYN_HOLD_MAX: Duration = Duration::from_secs(10);
/// Prefix of the payload of our pings (opaque to the peer, which echoes
/// it; never empty, so it is not mistaken for a keepalive).
pub const PING_PAYLOAD_PREFIX: &[u8; 4] = b"ping";
/// Smallest buffer [`Node::poll_transmit`] needs: the largest packet plus
/// the PILS overhead.
pub const MIN_TRANSMIT_BUFFER: usize = HEADER_LEN + MAX_PAYLOAD + PILS_OVERHEAD;

/// Queued-packet buffers kept for reuse.
const SPARE_BUFFERS: usize = 64;
/// Capacity of a fresh queued-packet buffer.
const SPARE_BUFFER_MIN: usize = 512;
/// Largest queued-packet buffer kept for reuse (bigger datagrams are rare
/// and not worth holding on to).
const SPARE_BUFFER_MAX: usize = 2048;

/// Bounds on every table and queue of a node (`spec/node.md` §8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Peers in the peer table.
    pub max_peers: usize,
    /// Queued application events.
    pub event_queue: usize,
    /// Queued outbound packets (datagrams, pongs, keepalives, RSTs).
    pub transmit_queue: usize,
    /// Outstanding pings.
    pub max_pings: usize,
    /// Stream connections in total (transport.md §11: 65 536).
    pub max_conns: usize,
    /// Stream connections per local port (transport.md §11: 1024).
    pub max_conns_per_port: usize,
    /// Accept queue per listening port (transport.md §11: 64).
    pub accept_queue: usize,
    /// Per-source SYN bucket: burst (transport.md §11: 64).
    pub syn_source_burst: f64,
    /// Per-source SYN bucket: refill per second (transport.md §11: 10).
    pub syn_source_rate: f64,
    /// Sources tracked by the per-source SYN buckets (4096).
    pub syn_sources: usize,
    /// Global SYN bucket: burst (transport.md §11: 100).
    pub syn_global_burst: f64,
    /// Global SYN bucket: refill per second (transport.md §11: 100).
    pub syn_global_rate: f64,
    /// Key exchanges from strangers (not from a known peer's endpoint)
    /// that may cost a signature check: burst (`spec/crypto.md` §2.3).
    pub kx_stranger_burst: f64,
    /// The same, refill per second.
    pub kx_stranger_rate: f64,
    /// Signed key exchanges held while their key is looked up
    /// (`spec/crypto.md` §2.8).
    pub half_open: usize,
    /// Of those, at most this many per source IP.
    pub half_open_per_source: usize,
    /// Peers that may have packets waiting for a key exchange at once
    /// (`spec/crypto.md` §6.3; the reference's 256). A packet for one more
    /// peer is dropped and counted in [`NodeStats::pending_dropped`].
    pub pending_peers: usize,
    /// Packets waiting for a key exchange, per peer (64).
    pub pending_per_peer: usize,
    /// Bytes waiting for key exchanges, all peers together (4 MiB).
    pub pending_bytes: usize,
    /// Default user timeout of stream connections (`spec/transport.md`
    /// §7.3): dial deadline and give-up silence; 30 s. Per connection see
    /// [`Node::connect_with_timeout`].
    pub user_timeout: Duration,
    /// Memory cap of one stream's receive window (autotuning,
    /// `spec/transport.md` §6.2): the window grows up to this many bytes
    /// ÷ 4096 segments, and the sender keeps as many in flight; 8 MiB
    /// (2048 segments).
    pub conn_window_bytes: usize,
    /// Memory cap of all streams' window growth together: the bytes of
    /// receive window granted beyond the initial 512 segments, summed
    /// over the connections; 64 MiB.
    pub window_bytes_total: usize,
    /// Ceiling of the streams' upward path-MTU search
    /// (`spec/transport.md` §5.5): segments grow from the profile's size
    /// up to this many payload bytes where probes show the path carries
    /// them; 4096 (the largest segment a receiver accepts). At or below
    /// the profile's size (e.g. 0) no connection probes.
    pub pmtu_ceiling: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: 65_536,
            event_queue: 65_536,
            transmit_queue: 8192,
            max_pings: 1024,
            max_conns: 65_536,
            max_conns_per_port: 1024,
            accept_queue: 64,
            syn_source_burst: 64.0,
            syn_source_rate: 10.0,
            syn_sources: 4096,
            syn_global_burst: 100.0,
            syn_global_rate: 100.0,
            kx_stranger_burst: 64.0,
            kx_stranger_rate: 32.0,
            half_open: crate::crypto::halfopen::HALF_OPEN_CAPACITY,
            half_open_per_source: crate::crypto::halfopen::HALF_OPEN_PER_SOURCE,
            pending_peers: crate::crypto::params::PENDING_PEERS,
            pending_per_peer: crate::crypto::params::PENDING_PER_PEER,
            pending_bytes: crate::crypto::pending::PENDING_MAX_BYTES,
            user_timeout: crate::stream::consts::USER_TIMEOUT,
            conn_window_bytes: 8 << 20,
            window_bytes_total: 64 << 20,
            pmtu_ceiling: crate::stream::consts::MAX_ACCEPTED_SEGMENT,
        }
    }
}

/// Configuration of a [`Node`].
pub struct NodeConfig<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    /// Our address: network and node ID.
    pub addr: Addr,
    /// Ed25519 identity (PILA); `None` sends PILK.
    pub identity: Option<Identity>,
    /// The process's X25519 tunnel key.
    pub tunnel_key: TunnelKey,
    /// Wire profile.
    pub profile: WireProfile,
    /// Crypto provider.
    pub provider: P,
    /// Seeded RNG (ISNs, nonce prefixes).
    pub rng: R,
    /// Tunnel encryption (PILS). When off, PILT is sent and accepted.
    pub encrypt: bool,
    /// Admin token for broadcast; empty disables broadcast.
    pub admin_token: Vec<u8>,
    /// Table and queue bounds.
    pub limits: Limits,
}

/// Identifier of a stream connection, unique within a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Something the application must know.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// The private-node gate dropped a SYN or datagram from authenticated
    /// `peer`, which the local trust store does not trust: ask the
    /// registry whether the two nodes trust each other or share a
    /// network, and call [`Node::gate_mut`]`().vouch` if so (the
    /// sender's retransmission then gets in). Emitted at most once per
    /// peer per [`gate::VOUCH_TTL`].
    AdmissionCheck {
        /// The dropped sender.
        peer: u32,
    },
    /// A datagram arrived on a bound port.
    Datagram {
        /// Source address.
        src: Addr,
        /// Source port.
        src_port: u16,
        /// Local port it was addressed to.
        dst_port: u16,
        /// Payload.
        data: Vec<u8>,
    },
    /// A pong answered our ping.
    Pong {
        /// The ping id returned by [`Node::ping`].
        id: u32,
        /// Who answered.
        from: Addr,
        /// Measured round-trip time.
        rtt: Duration,
    },
    /// A ping got no pong in time.
    PingTimeout {
        /// The ping id.
        id: u32,
    },
    /// A connection is waiting in the accept queue of `port`.
    Incoming {
        /// The listening port.
        port: u16,
    },
    /// A dial completed (or an accepted connection is ready).
    Connected(ConnId),
    /// Data (or end of stream) can be read.
    Readable(ConnId),
    /// Send-buffer room is available.
    Writable(ConnId),
    /// The connection ended normally and was dropped.
    Closed(ConnId),
    /// The connection ended abnormally and was dropped.
    Reset(ConnId, ResetCause),
    /// A tunnel session with `peer` was installed.
    SessionUp {
        /// Peer node ID.
        peer: u32,
        /// Installed from a verified PILA (the peer proved the identity
        /// key we hold for it).
        authenticated: bool,
        /// It replaced a session with another peer tunnel key (the peer
        /// restarted or re-keyed), rather than being the first.
        rekeyed: bool,
    },
    /// A tunnel session with `peer` went away.
    SessionDown {
        /// Peer node ID.
        peer: u32,
    },
    /// The key exchange with `peer` gave up; queued packets were dropped.
    KeyExchangeGaveUp {
        /// Peer node ID.
        peer: u32,
    },
    /// The UDP endpoint held for `peer` may be stale (a dial got no answer
    /// for [`RESOLVE_AFTER`], the key exchange gave up, or the peer went
    /// silent): look its endpoint up again and call [`Node::add_peer`].
    ResolveNeeded {
        /// Peer node ID.
        peer: u32,
    },
    /// Nothing authenticated arrived from `peer` for the peer timeout
    /// despite probes: its session was dropped and its connections failed
    /// with [`ResetCause::PeerUnreachable`].
    PeerUnreachable {
        /// Peer node ID.
        peer: u32,
        /// How long it had been silent.
        silent: Duration,
    },
    /// A signed PILA from `peer` is held because its registered identity
    /// key is unknown: look it up and call [`Node::identity_resolved`] with
    /// it (`spec/node.md` §2, `spec/crypto.md` §2.8). Emitted once per held
    /// sender.
    IdentityNeeded {
        /// Peer node ID.
        peer: u32,
    },
    /// A known peer's signed PILA carries another identity key than the
    /// one we hold for it (it rotated its key, `spec/crypto.md` §2.9): the
    /// frame is held; forget any cached key for `peer`, look it up afresh
    /// in the registry and call [`Node::identity_resolved`]. At most once
    /// per [`KEY_REFETCH_INTERVAL`] per peer.
    IdentityStale {
        /// Peer node ID.
        peer: u32,
    },
    /// A connection the application knew (taken from an accept queue, or
    /// a dial that connected) ended, and how; raised once per connection,
    /// just before its [`Event::Closed`] or [`Event::Reset`], with the
    /// addresses the node is about to forget.
    ConnEnded {
        /// The connection.
        id: ConnId,
        /// Local port.
        local_port: u16,
        /// Remote address.
        remote: Addr,
        /// Remote port.
        remote_port: u16,
        /// How it ended.
        end: ConnEnd,
    },
}

/// How a connection ended ([`Event::ConnEnded`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnEnd {
    /// Orderly: both directions ended with a FIN, whichever side closed
    /// first.
    Fin,
    /// The keepalive gave up on a silent peer (`spec/transport.md` §9.2),
    /// whatever came after its FIN.
    KeepaliveGaveUp,
    /// Abnormally, with this cause.
    Reset(ResetCause),
}

/// The node's record of hostile or suspicious input the daemon reports
/// (`spec/services.md` §13.4): per kind a running count and the latest
/// occurrence only — one slot per node, never per sender.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecurityNotes {
    /// SYNs dropped by the rate limits (as [`NodeStats::syn_rate_limited`]).
    pub syn_rate_limited: u64,
    /// The latest of them: claimed source address and port.
    pub last_syn_limited: Option<(Addr, u16)>,
    /// Authentic PILS frames refused as replays (a counter already seen).
    pub replays: u64,
    /// The latest of them: sender node and nonce counter.
    pub last_replay: Option<(u32, u64)>,
}

/// Keepalive sweeps after a key rotation that repeat the announcement of
/// the new key ([`Node::set_identity`]).
pub const ANNOUNCE_REPEATS: u8 = 3;

/// Shortest time between two registry re-fetches of one known peer's
/// identity key triggered by key exchanges carrying another key.
pub const KEY_REFETCH_INTERVAL: Duration = Duration::from_secs(3);

/// Why a connection was reset (mirrors [`ResetReason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResetCause {
    /// The peer sent RST (for a dial: refused).
    Remote,
    /// The peer stopped answering.
    TimedOut,
    /// The peer kept a zero window too long.
    ZeroWindow,
    /// The dial got no answer.
    DialTimeout,
    /// The application aborted.
    Aborted,
    /// The path MTU is too small for even the smallest segments
    /// (`spec/transport.md` §5.4).
    PathMtu,
    /// The tunnel peer went silent past the peer timeout.
    PeerUnreachable,
    /// The tunnel to the peer was closed locally (trust revoked).
    TunnelClosed,
    /// The peer restarted; the connection belonged to its previous run.
    PeerRestarted,
}

impl ResetCause {
    /// A short human-readable reason, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            ResetCause::Remote => "connection reset by peer",
            ResetCause::TimedOut => "peer stopped acknowledging data",
            ResetCause::ZeroWindow => "peer kept a zero window too long",
            ResetCause::DialTimeout => "dial timeout",
            ResetCause::Aborted => "connection aborted",
            ResetCause::PeerUnreachable => "peer unreachable: no answer within the peer timeout",
            ResetCause::TunnelClosed => "tunnel to the peer closed (trust revoked)",
            ResetCause::PeerRestarted => "peer restarted: connection lost",
            ResetCause::PathMtu => "path MTU too small for the smallest segments",
        }
    }
}

impl From<ResetReason> for ResetCause {
    fn from(r: ResetReason) -> Self {
        match r {
            ResetReason::Remote => ResetCause::Remote,
            ResetReason::TimedOut => ResetCause::TimedOut,
            ResetReason::ZeroWindow => ResetCause::ZeroWindow,
            ResetReason::DialTimeout => ResetCause::DialTimeout,
            ResetReason::Aborted => ResetCause::Aborted,
            ResetReason::PathMtu => ResetCause::PathMtu,
            ResetReason::PeerUnreachable => ResetCause::PeerUnreachable,
            ResetReason::TunnelClosed => ResetCause::TunnelClosed,
            ResetReason::PeerRestarted => ResetCause::PeerRestarted,
        }
    }
}

/// Where a connection goes, from [`Node::conn_info`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote: Addr,
    /// Remote port.
    pub remote_port: u16,
    /// Transport state.
    pub state: conn::State,
    /// Bytes ready to read.
    pub readable: usize,
    /// Current segment size (payload bytes per data segment), after any
    /// path-MTU black-hole reduction (`spec/transport.md` §5.4).
    pub segment_size: usize,
    /// The UDP payload a full data segment takes on the path (segment +
    /// packet header + tunnel framing): the path MTU the connection
    /// currently relies on.
    pub path_mtu: usize,
    /// Segments held out of order.
    pub ooo_segments: usize,
    /// The peer's advertised receive window, bytes.
    pub peer_window: usize,
    /// Our advertised receive window, bytes.
    pub recv_window: usize,
    /// The peer opened it (it came through an accept queue).
    pub inbound: bool,
}

/// One peer-table entry, from [`Node::peer_list`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Peer node ID.
    pub node: u32,
    /// Its UDP endpoint.
    pub endpoint: SocketAddr,
    /// A tunnel session is installed.
    pub encrypted: bool,
    /// Its registered identity key is known.
    pub authenticated: bool,
}

/// A datagram written by [`Node::poll_transmit`] (one type for every
/// state machine that emits UDP, defined in [`crate::wire`]).
pub use crate::wire::Transmit;

/// A batch written by [`Node::poll_transmit_batch`]: `segments` datagrams
/// for one UDP endpoint, back to back in the first `len` bytes of the
/// buffer, each `segment_size` bytes except the last, which may be
/// shorter. This is the layout UDP generic segmentation offload (GSO)
/// sends in one call; without GSO the driver sends the segments one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransmitBatch {
    /// Destination UDP endpoint of every segment.
    pub dst: SocketAddr,
    /// Bytes written, all segments.
    pub len: usize,
    /// Size of every segment but the last.
    pub segment_size: usize,
    /// Number of datagrams.
    pub segments: usize,
}

/// Why an application command failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Broadcast addresses need [`Node::broadcast`].
    #[error("destination is a broadcast address")]
    BroadcastAddress,
    /// The destination node is not in the peer table.
    #[error("unknown peer")]
    UnknownPeer,
    /// Payload larger than a packet can carry.
    #[error("payload too large")]
    TooLarge,
    /// The outbound queue is full.
    #[error("transmit queue full")]
    QueueFull,
    /// A port-table error.
    #[error(transparent)]
    Port(#[from] PortError),
    /// Too many outstanding pings.
    #[error("too many outstanding pings")]
    TooManyPings,
    /// No such connection.
    #[error("unknown connection")]
    UnknownConn,
    /// Connection limits reached.
    #[error("too many connections")]
    TooManyConns,
    /// A stream error.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Broadcast refused (bad token, backbone network, not a member).
    #[error("broadcast not permitted")]
    BroadcastRefused,
}

/// Counters of what the node did and dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// UDP datagrams handed to [`Node::handle_datagram`].
    pub datagrams_in: u64,
    /// UDP datagrams written by [`Node::poll_transmit`].
    pub datagrams_out: u64,
    /// Receive windows grown by autotuning (`spec/transport.md` §6.2).
    pub window_grants: u64,
    /// Undecodable frames or packets.
    pub malformed: u64,
    /// PILS frames that did not open (no session, auth, replay, window).
    pub open_failed: u64,
    /// PILT received while encryption is on.
    pub plaintext_refused: u64,
    /// Inner source node differs from the tunnel sender.
    pub spoofed: u64,
    /// Packets whose destination is not this node.
    pub not_for_us: u64,
    /// Key exchanges refused by the session table (all reasons; the
    /// `kx_*` fields below split the main ones).
    pub kx_rejected: u64,
    /// Liveness probes sent to silent peers.
    pub probes_sent: u64,
    /// Peers declared dead (silent past the peer timeout).
    pub peers_dead: u64,
    /// Tunnels closed locally ([`Node::close_tunnel`]).
    pub tunnels_closed: u64,
    /// Connections failed because their peer restarted.
    pub conns_failed_restart: u64,
    /// Peers whose UDP endpoint moved after an authenticated frame or key
    /// exchange from a new address.
    pub endpoint_moves: u64,
    /// Registry re-fetches of a peer's identity key asked for because its
    /// verified PILA carried another key ([`Event::IdentityStale`]).
    pub identity_refetches: u64,
    /// Key exchanges sent to announce a new identity key of ours
    /// ([`Node::set_identity`]).
    pub identity_announcements: u64,
    /// Diagnostics dropped because their queue was full.
    pub diagnostics_dropped: u64,
    /// Early frames opened once their sender's session was installed.
    pub early_frames_replayed: u64,
    /// NAT keepalives received.
    pub keepalives_in: u64,
    /// NAT keepalives sent.
    pub keepalives_out: u64,
    /// Datagrams delivered to a bound port.
    pub datagrams_delivered: u64,
    /// Datagrams to an unbound port (dropped).
    pub datagrams_unbound: u64,
    /// Datagrams with an empty payload (dropped).
    pub datagrams_empty: u64,
    /// Pings answered.
    pub pongs_sent: u64,
    /// Pongs that matched no outstanding ping.
    pub pongs_unmatched: u64,
    /// Control packets ignored (other ports).
    pub control_ignored: u64,
    /// Beacon or punch frames ignored.
    pub ignored_frames: u64,
    /// Application events dropped because the queue was full.
    pub events_dropped: u64,
    /// Outbound packets dropped (queue full, unknown endpoint, seal error).
    pub transmit_dropped: u64,
    /// RSTs sent for segments to unknown connections or refused SYNs.
    pub rst_sent: u64,
    /// SYNs dropped by the rate limits.
    pub syn_rate_limited: u64,
    /// SYNs from an authenticated session, exempt from the rate limits.
    pub syn_authenticated: u64,
    /// SYNs a private node dropped silently: the sender is not trusted
    /// and not in the reply window (`spec/transport.md` §4.2 step 3).
    pub gate_syn_dropped: u64,
    /// Datagrams a private node dropped: the sender is not trusted
    /// (`spec/transport.md` §6).
    pub gate_datagrams_dropped: u64,
    /// Packets with an unknown protocol.
    pub unknown_protocol: u64,
    /// Stream retransmissions of connections already dropped.
    pub stream_retransmits: u64,
    /// Stream fast retransmits of connections already dropped.
    pub stream_fast_retransmits: u64,
    /// Stream retransmission timeouts of connections already dropped.
    pub stream_rto_timeouts: u64,
    /// Upward path-MTU probes sent by connections already dropped
    /// (`spec/transport.md` §5.5; [`Node::pmtu_totals`] adds live ones).
    pub stream_pmtu_probes: u64,
    /// Of those, probes answered (each raised the segment size).
    pub stream_pmtu_raises: u64,
    /// Largest segment size any stream of this node reached.
    pub stream_max_segment: usize,
    /// Packets dropped while waiting for a key exchange: refused by a full
    /// pending queue (per-peer, peer-count or byte limit), sent during the
    /// give-up cool-down, or discarded when the exchange gave up. Also
    /// counted in `transmit_dropped`.
    pub pending_dropped: u64,
}

#[derive(Clone, Copy, Debug)]
struct Peer {
    network: u16,
    endpoint: SocketAddr,
    identity: Option<[u8; 32]>,
    last_sent: Instant,
    /// Last liveness probe sent.
    last_probe: Option<Instant>,
    /// Last authenticated frame from the peer.
    last_heard: Instant,
    /// Last authenticated frame from `endpoint` itself (or the move to it).
    endpoint_heard: Instant,
    /// Last re-fetch of its identity key asked for (a PILA with another
    /// key, [`Event::IdentityStale`]).
    key_refetch: Option<Instant>,
}

/// Something dropped or changed in the tunnel layer, for debug logs
/// ([`Node::poll_diagnostic`]). Bounded; overflow is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diagnostic {
    /// A tunnel frame or key exchange was dropped (counted in
    /// [`Node::auth_drops`]).
    Dropped {
        /// Claimed sender node (0 if the frame had none).
        peer: u32,
        /// Source endpoint.
        from: SocketAddr,
        /// Why.
        reason: AuthDrop,
    },
    /// A peer proved its identity from a new UDP endpoint; it is used now.
    EndpointMoved {
        /// Peer node.
        peer: u32,
        /// Previous endpoint.
        old: SocketAddr,
        /// New endpoint.
        new: SocketAddr,
    },
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, now: Instant, burst: f64, rate: f64) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now.max(self.at);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ConnKey {
    local_port: u16,
    remote: Addr,
    remote_port: u16,
}

struct ConnEntry {
    conn: Connection,
    key: ConnKey,
    ephemeral: bool,
    /// Sitting in an accept queue, not yet handed to the application.
    queued: bool,
    /// When the connection was created (bounds the SYN hold).
    started: Instant,
    app_closed: bool,
    /// [`Event::ResolveNeeded`] was already raised for this dial.
    resolve_asked: bool,
    /// Tunnel key of the peer run this connection last heard from (a
    /// different key later means that run is gone).
    peer_key: Option<[u8; 32]>,
    /// Receive-window bytes granted to this connection beyond its initial
    /// window (counted in [`Node`]'s `window_granted`).
    window_granted: usize,
    /// The application knows it (accepted, or a dial that connected): its
    /// end is reported once with [`Event::ConnEnded`].
    known: bool,
}

struct Listener {
    accept: VecDeque<ConnId>,
}

struct Ping {
    dst: Addr,
    sent: Instant,
}

/// The node state machine. See the module docs for the call order.
pub struct Node<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    addr: Addr,
    profile: WireProfile,
    encrypt: bool,
    admin_token: Vec<u8>,
    limits: Limits,
    rng: R,
    sessions: SessionTable<P, R>,
    /// Keepalive sweeps that still repeat our key exchange to every
    /// session peer after a key rotation ([`Node::set_identity`]).
    announce_left: u8,
    peers: BTreeMap<u32, Peer>,
    ports: PortTable,
    listeners: BTreeMap<u16, Listener>,
    conns: BTreeMap<ConnId, ConnEntry>,
    conn_index: BTreeMap<ConnKey, ConnId>,
    conns_per_port: BTreeMap<u16, usize>,
    next_conn: u64,
    /// Connections that may have segments to send (each at most once).
    ready: VecDeque<ConnId>,
    in_ready: BTreeSet<ConnId>,
    pings: BTreeMap<u32, Ping>,
    next_ping: u32,
    timers: TimerTable,
    /// Buffers for received stream payloads, reused once read.
    payload_pool: pool::PayloadPool,
    /// Plaintext packets to seal and send: (peer node, packet bytes).
    out: VecDeque<(u32, Vec<u8>)>,
    /// Emptied packet buffers of `out`, reused by the next queued packet
    /// so datagrams, pongs and RSTs do not allocate once warm. At most
    /// [`SPARE_BUFFERS`], each of at most [`SPARE_BUFFER_MAX`] bytes.
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    syn_global: Option<Bucket>,
    syn_sources: BTreeMap<u32, Bucket>,
    /// Latest hostile input of each reported kind ([`SecurityNotes`]).
    security: SecurityNotes,
    kx_strangers: Option<Bucket>,
    half_open: HalfOpen,
    drops: AuthDrops,
    stats: NodeStats,
    gate: Gate,
    /// Peer timeout (`spec/node.md` §7.1).
    peer_timeout: Duration,
    /// Early PILS frames: (claimed sender, source, arrival, bytes).
    early_frames: VecDeque<(u32, SocketAddr, Instant, Vec<u8>)>,
    diagnostics: VecDeque<Diagnostic>,
    diag_bucket: Option<Bucket>,
    /// A datagram written by [`Node::poll_transmit_batch`] that did not
    /// fit the batch (another destination or a larger size): returned
    /// first by the next poll. At most one datagram.
    carry: Vec<u8>,
    carry_dst: Option<SocketAddr>,
    /// Receive-window bytes granted beyond the initial windows, all
    /// connections ([`Limits::window_bytes_total`]).
    window_granted: usize,
    /// Idle time after which a session peer gets a NAT keepalive (`None`:
    /// never).
    keepalive_idle: Option<Duration>,
    /// The last peer that proved itself (a frame opened under its session,
    /// or a verified key exchange installed one), for the owner's path
    /// bookkeeping ([`Node::take_authenticated`]).
    last_authenticated: Option<u32>,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> core::fmt::Debug for Node<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("peers", &self.peers.len())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

fn fork_rng<R: RngCore + SeedableRng>(rng: &mut R) -> R {
    let mut seed = R::Seed::default();
    rng.fill_bytes(seed.as_mut());
    R::from_seed(seed)
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Node<P, R> {
    /// A node with no peers, no bound ports and no sessions.
    pub fn new(now: Instant, cfg: NodeConfig<P, R>) -> Self {
        let mut rng = cfg.rng;
        let session_rng = fork_rng(&mut rng);
        let mut scfg = SessionConfig::new(cfg.addr.node, cfg.profile);
        scfg.pending = crate::crypto::pending::PendingLimits {
            per_peer: cfg.limits.pending_per_peer,
            peers: cfg.limits.pending_peers,
            bytes: cfg.limits.pending_bytes,
        };
        let sessions = SessionTable::new(
            cfg.provider,
            session_rng,
            scfg,
            cfg.identity.as_ref(),
            cfg.tunnel_key,
        );
        let mut timers = TimerTable::new();
        timers.set(TimeoutReason::Keepalive, now + KEEPALIVE_SWEEP);
        Node {
            addr: cfg.addr,
            profile: cfg.profile,
            encrypt: cfg.encrypt,
            admin_token: cfg.admin_token,
            limits: cfg.limits,
            rng,
            sessions,
            announce_left: 0,
            peers: BTreeMap::new(),
            ports: PortTable::new(),
            listeners: BTreeMap::new(),
            conns: BTreeMap::new(),
            conn_index: BTreeMap::new(),
            conns_per_port: BTreeMap::new(),
            next_conn: 1,
            ready: VecDeque::new(),
            in_ready: BTreeSet::new(),
            pings: BTreeMap::new(),
            next_ping: 1,
            timers,
            payload_pool: pool::PayloadPool::default(),
            out: VecDeque::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            syn_global: None,
            syn_sources: BTreeMap::new(),
            security: SecurityNotes::default(),
            kx_strangers: None,
            half_open: HalfOpen::new(
                cfg.limits.half_open,
                cfg.limits.half_open_per_source,
                HALF_OPEN_MAX_AGE,
            ),
            drops: AuthDrops::default(),
            stats: NodeStats::default(),
            gate: Gate::default(),
            peer_timeout: PEER_TIMEOUT,
            early_frames: VecDeque::new(),
            diagnostics: VecDeque::new(),
            diag_bucket: None,
            carry: Vec::new(),
            carry_dst: None,
            window_granted: 0,
            keepalive_idle: Some(KEEPALIVE_IDLE),
            last_authenticated: None,
        }
    }

    /// Sets the idle time after which a peer with a session gets a NAT
    /// keepalive (`None` turns keepalives off; default [`KEEPALIVE_IDLE`]).
    pub fn set_keepalive_idle(&mut self, idle: Option<Duration>) {
        self.keepalive_idle = idle;
    }

    /// The peer whose frame or key exchange last authenticated (since the
    /// previous call), then forgets it. An owner that routes frames itself
    /// (`spec/beacon.md` §6) calls this after [`Node::handle_datagram`] to
    /// learn which path just proved to work.
    pub fn take_authenticated(&mut self) -> Option<u32> {
        self.last_authenticated.take()
    }

    /// Replaces the UDP endpoint of a known peer without any check: the
    /// owner decides (e.g. a path label it routes itself). False if the
    /// peer is unknown.
    pub fn set_peer_endpoint(&mut self, peer: u32, endpoint: SocketAddr) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) => {
                p.endpoint = endpoint;
                true
            }
            None => false,
        }
    }

    /// Sets the peer timeout (at least [`MIN_PEER_TIMEOUT`]): a peer with
    /// a session that sends nothing authenticated for this long, although
    /// it was probed, is dead (`spec/node.md` §7.1).
    pub fn set_peer_timeout(&mut self, now: Instant, timeout: Duration) {
        self.peer_timeout = timeout.max(MIN_PEER_TIMEOUT);
        let next = now + self.sweep_period();
        if self
            .timers
            .get(TimeoutReason::Keepalive)
            .is_none_or(|t| t > next)
        {
            self.timers.set(TimeoutReason::Keepalive, next);
        }
    }

    /// The peer timeout in force.
    pub fn peer_timeout(&self) -> Duration {
        self.peer_timeout
    }

    /// Period of the keepalive/liveness sweep: 5 s, or an eighth of the
    /// peer timeout when that is shorter.
    fn sweep_period(&self) -> Duration {
        KEEPALIVE_SWEEP.min(self.peer_timeout / 8)
    }

    /// The next tunnel-layer diagnostic (drops with their reasons,
    /// endpoint moves), for debug logging.
    pub fn poll_diagnostic(&mut self) -> Option<Diagnostic> {
        self.diagnostics.pop_front()
    }

    /// Queues a diagnostic: at most [`DIAGNOSTIC_BURST`] at once and
    /// [`DIAGNOSTIC_RATE`] per second, so a flood of forged frames cannot
    /// flood the log; the rest are counted in `diagnostics_dropped`.
    fn diag(&mut self, now: Instant, d: Diagnostic) {
        let b = self
            .diag_bucket
            .get_or_insert(Bucket::full(DIAGNOSTIC_BURST, now));
        if self.diagnostics.len() >= DIAGNOSTIC_QUEUE
            || !b.take(now, DIAGNOSTIC_BURST, DIAGNOSTIC_RATE)
        {
            self.stats.diagnostics_dropped += 1;
        } else {
            self.diagnostics.push_back(d);
        }
    }

    /// Closes the tunnel to `peer` at once (trust revoked): the session
    /// and everything queued for it are dropped, and every connection to
    /// the peer fails with [`ResetCause::TunnelClosed`] without sending
    /// anything. The peer entry stays, so a later send (after trust is
    /// granted again) runs a fresh key exchange, with a key request so a
    /// peer still holding its session answers at once. Returns whether a
    /// session or a connection was affected.
    pub fn close_tunnel(&mut self, now: Instant, peer: u32) -> bool {
        let had = self.sessions.remove(peer);
        let failed = self.fail_peer_conns(peer, ResetReason::TunnelClosed);
        if had || failed > 0 {
            self.stats.tunnels_closed += 1;
        }
        self.after_session(now);
        had || failed > 0
    }

    /// A session with `peer` was installed. If its tunnel key differs from
    /// the one a connection last heard from, that peer process restarted:
    /// the connection is dead there and fails now
    /// ([`ResetCause::PeerRestarted`]). Dials still waiting for their first
    /// answer carry on with the new run.
    fn fail_restarted_peer_conns(&mut self, peer: u32) {
        let Some(key) = self.sessions.session(peer).map(|s| s.peer_x25519) else {
            return;
        };
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                e.key.remote.node == peer
                    && !e.conn.is_closed()
                    && e.conn.state() != conn::State::SynSent
                    && e.peer_key.is_some_and(|k| k != key)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stats.conns_failed_restart += 1;
            if let Some(e) = self.conns.get_mut(&id) {
                e.conn.fail(ResetReason::PeerRestarted);
            }
            self.drain_conn_events(id);
            self.touch(id);
        }
    }

    /// Fails every connection to `peer` with `reason`; returns how many.
    fn fail_peer_conns(&mut self, peer: u32, reason: ResetReason) -> usize {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| e.key.remote.node == peer && !e.conn.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(e) = self.conns.get_mut(id) {
                e.conn.fail(reason);
            }
            self.drain_conn_events(*id);
            self.touch(*id);
        }
        ids.len()
    }

    /// Our address.
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The private-node trust gate (`spec/transport.md` §4.2).
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The private-node trust gate, to configure (`spec/transport.md` §4.2).
    pub fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Drops of unauthenticated or unwanted tunnel input, per reason.
    pub fn auth_drops(&self) -> AuthDrops {
        self.drops
    }

    /// Signed key exchanges currently held for a key look-up.
    pub fn half_open_len(&self) -> usize {
        self.half_open.len()
    }

    /// Number of peers in the peer table.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn drop_frame(&mut self, reason: AuthDrop) {
        self.drops.add(reason);
    }

    /// Counts and latest occurrences of the hostile input the daemon
    /// reports as security events.
    pub fn security_notes(&self) -> SecurityNotes {
        self.security
    }

    /// Whether a tunnel session with `peer` is installed.
    pub fn has_session(&self, peer: u32) -> bool {
        self.sessions.session(peer).is_some()
    }

    /// The session table (read-only, for diagnostics).
    pub fn sessions(&self) -> &SessionTable<P, R> {
        &self.sessions
    }

    /// Adds (or updates) a peer: its address, UDP endpoint and, if known,
    /// its registered Ed25519 identity key. Returns `false` if the table is
    /// full.
    pub fn add_peer(
        &mut self,
        addr: Addr,
        endpoint: SocketAddr,
        identity: Option<[u8; 32]>,
    ) -> bool {
        if addr.node == self.addr.node {
            return false;
        }
        if let Some(p) = self.peers.get_mut(&addr.node) {
            p.endpoint = endpoint;
            p.network = addr.network;
            if identity.is_some() {
                p.identity = identity;
            }
            return true;
        }
        if self.peers.len() >= self.limits.max_peers {
            return false;
        }
        self.peers.insert(
            addr.node,
            Peer {
                network: addr.network,
                endpoint,
                identity,
                last_sent: Instant::ZERO,
                last_probe: None,
                last_heard: Instant::ZERO,
                endpoint_heard: Instant::ZERO,
                key_refetch: None,
            },
        );
        true
    }

    /// The identity key a PILA held for `peer` carries (waiting for the
    /// registry, [`Event::IdentityNeeded`] / [`Event::IdentityStale`]).
    pub fn held_identity(&self, peer: u32) -> Option<[u8; 32]> {
        self.half_open.key_of(peer)
    }

    /// The identity key the peer table holds for `peer` (the registry's,
    /// or one a verified key exchange proved after the registry vouched).
    pub fn peer_identity(&self, peer: u32) -> Option<[u8; 32]> {
        self.peers.get(&peer).and_then(|p| p.identity)
    }

    /// The UDP endpoint the peer table holds for `peer`.
    pub fn peer_endpoint(&self, peer: u32) -> Option<SocketAddr> {
        self.peers.get(&peer).map(|p| p.endpoint)
    }

    /// The owner learnt from the registry (an authenticated source, not
    /// tunnel input) that `peer` now has another endpoint: it probably
    /// restarted and holds no session with us, so our frames there are
    /// dropped unanswered. With a session, our unchanged key exchange goes
    /// to the new endpoint (at most once per 3 s, no timer); the peer's
    /// verified reply replaces the session (`spec/crypto.md` §13 row 16).
    /// Without one, a key exchange starts as [`Node::connect_tunnel`].
    pub fn endpoint_changed(&mut self, now: Instant, peer: u32) {
        if !self.encrypt || !self.peers.contains_key(&peer) {
            return;
        }
        if self.sessions.session(peer).is_some() {
            self.sessions.resend_key_exchange(now, peer);
        } else {
            self.sessions.connect(now, peer);
        }
        self.after_session(now);
    }

    /// Starts a key exchange with a known peer now (optional: sending to it
    /// does so too). A peer's key exchange held for want of its identity
    /// key is processed through [`Node::identity_resolved`] instead.
    pub fn connect_tunnel(&mut self, now: Instant, peer: u32) {
        if !self.encrypt || !self.peers.contains_key(&peer) {
            return;
        }
        self.sessions.connect(now, peer);
        self.after_session(now);
        self.replay_early_frames(now);
    }

    // ----- ports ----------------------------------------------------------

    /// Binds `port` for datagrams and incoming streams.
    pub fn bind(&mut self, port: u16) -> Result<(), NodeError> {
        self.ports.bind(port)?;
        self.listeners.insert(
            port,
            Listener {
                accept: VecDeque::new(),
            },
        );
        Ok(())
    }

    /// Same as [`Node::bind`] (streams and datagrams share the port table).
    pub fn listen(&mut self, port: u16) -> Result<(), NodeError> {
        self.bind(port)
    }

    /// Unbinds `port`; connections still in its accept queue are reset.
    pub fn unbind(&mut self, now: Instant, port: u16) -> Result<(), NodeError> {
        self.ports.unbind(port)?;
        if let Some(l) = self.listeners.remove(&port) {
            for id in l.accept {
                if let Some(e) = self.conns.get_mut(&id) {
                    e.conn.abort();
                    e.app_closed = true;
                    self.mark_ready(id);
                }
            }
        }
        self.refresh_all_conn_timers(now);
        Ok(())
    }

    /// Whether `port` is bound.
    pub fn is_bound(&self, port: u16) -> bool {
        self.ports.is_bound(port)
    }

    // ----- datagrams ------------------------------------------------------

    fn push_event(&mut self, ev: Event) {
        if self.events.len() >= self.limits.event_queue {
            self.stats.events_dropped += 1;
        } else {
            self.events.push_back(ev);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn queue_packet(&mut self, peer: u32, header: Header, payload: &[u8]) -> Result<(), NodeError> {
        if self.out.len() >= self.limits.transmit_queue {
            self.stats.transmit_dropped += 1;
            return Err(NodeError::QueueFull);
        }
        let pkt = Packet::new(header, payload).map_err(|_| NodeError::TooLarge)?;
        // Fresh buffers start at a size that fits pongs, RSTs and small
        // datagrams, so a reused one rarely has to grow.
        let len = pkt.encoded_len();
        let mut bytes = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(len.max(SPARE_BUFFER_MIN)));
        bytes.clear();
        bytes.resize(len, 0);
        if pkt.encode(&mut bytes).is_err() {
            self.recycle(bytes);
            return Err(NodeError::TooLarge);
        }
        self.out.push_back((peer, bytes));
        Ok(())
    }

    /// Keeps an emptied packet buffer for reuse (bounded count and size).
    fn recycle(&mut self, bytes: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && bytes.capacity() <= SPARE_BUFFER_MAX {
            self.spare.push(bytes);
        }
    }

    fn header(
        &self,
        protocol: Protocol,
        src: Addr,
        dst: Addr,
        src_port: u16,
        dst_port: u16,
    ) -> Header {
        Header {
            version: VERSION,
            flags: Flags::NONE,
            protocol,
            payload_len: 0,
            src,
            dst,
            src_port,
            dst_port,
            seq: 0,
            ack: 0,
            window: 0,
        }
    }

    /// Sends a datagram (protocol 0x02) to `dst:dst_port`. Without
    /// `src_port`, an ephemeral port is allocated for this send and freed
    /// at once (`spec/node.md` §4.3).
    pub fn send_datagram(
        &mut self,
        now: Instant,
        dst: Addr,
        dst_port: u16,
        src_port: Option<u16>,
        data: &[u8],
    ) -> Result<(), NodeError> {
        if dst.is_broadcast() {
            return Err(NodeError::BroadcastAddress);
        }
        if data.len() > MAX_PAYLOAD {
            return Err(NodeError::TooLarge);
        }
        if !self.peers.contains_key(&dst.node) {
            return Err(NodeError::UnknownPeer);
        }
        let sport = match src_port {
            Some(p) => p,
            None => {
                let p = self.ports.alloc_ephemeral()?;
                self.ports.free_ephemeral(p);
                p
            }
        };
        let src = Addr::new(dst.network, self.addr.node);
        let h = self.header(Protocol::DATAGRAM, src, dst, sport, dst_port);
        self.queue_packet(dst.node, h, data)?;
        self.gate.contacted(now, dst.node);
        Ok(())
    }

    /// Broadcast (`spec/node.md` §6): one unicast copy per known peer on
    /// `network`, sharing one ephemeral source port. Needs the configured,
    /// non-empty admin token; network 0 is refused and we must be a member.
    /// Returns the number of copies queued.
    pub fn broadcast(
        &mut self,
        now: Instant,
        network: u16,
        dst_port: u16,
        data: &[u8],
        admin_token: &[u8],
    ) -> Result<usize, NodeError> {
        if self.admin_token.is_empty()
            || !ct_eq(&self.admin_token, admin_token)
            || network == 0
            || network != self.addr.network
        {
            return Err(NodeError::BroadcastRefused);
        }
        let sport = self.ports.alloc_ephemeral()?;
        self.ports.free_ephemeral(sport);
        let members: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| p.network == network)
            .map(|(n, _)| *n)
            .collect();
        let mut n = 0;
        for node in members {
            if self
                .send_datagram(now, Addr::new(network, node), dst_port, Some(sport), data)
                .is_ok()
            {
                n += 1;
            }
        }
        Ok(n)
    }

    // ----- ping -----------------------------------------------------------

    /// Sends a control ping to port 0 of `dst`; the answer arrives as
    /// [`Event::Pong`] (or [`Event::PingTimeout`]). Returns the ping id.
    pub fn ping(&mut self, now: Instant, dst: Addr) -> Result<u32, NodeError> {
        if !self.peers.contains_key(&dst.node) {
            return Err(NodeError::UnknownPeer);
        }
        if self.pings.len() >= self.limits.max_pings {
            return Err(NodeError::TooManyPings);
        }
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1).max(1);
        let mut h = self.header(
            Protocol::CONTROL,
            Addr::new(dst.network, self.addr.node),
            dst,
            0,
            0,
        );
        h.seq = id;
        let mut payload = [0u8; 8];
        payload[..4].copy_from_slice(PING_PAYLOAD_PREFIX);
        payload[4..].copy_from_slice(&id.to_be_bytes());
        self.queue_packet(dst.node, h, &payload)?;
        self.pings.insert(id, Ping { dst, sent: now });
        self.timers.set(TimeoutReason::Ping(id), now + PING_TIMEOUT);
        Ok(id)
    }

    // ----- streams ----------------------------------------------------------

    fn conn_config(&mut self) -> ConnConfig {
        ConnConfig {
            mss: self.profile.segment_size(),
            seed: self.rng.next_u64(),
            user_timeout: self.limits.user_timeout,
            window_cap_segments: (self.limits.conn_window_bytes / MAX_SEGMENT_BUDGET)
                .max(crate::stream::consts::RECV_QUEUE_SEGMENTS),
            pmtu_ceiling: self.limits.pmtu_ceiling,
            ..ConnConfig::default()
        }
    }

    fn insert_conn(
        &mut self,
        now: Instant,
        key: ConnKey,
        conn: Connection,
        ephemeral: bool,
        queued: bool,
    ) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conn_index.insert(key, id);
        *self.conns_per_port.entry(key.local_port).or_default() += 1;
        self.conns.insert(
            id,
            ConnEntry {
                conn,
                key,
                ephemeral,
                queued,
                started: now,
                app_closed: false,
                resolve_asked: false,
                peer_key: None,
                window_granted: 0,
                known: false,
            },
        );
        self.mark_ready(id);
        id
    }

    /// Opens a stream to `dst:port` from a fresh ephemeral port, with the
    /// node's default user timeout ([`Limits::user_timeout`]).
    pub fn connect(&mut self, now: Instant, dst: Addr, port: u16) -> Result<ConnId, NodeError> {
        let t = self.limits.user_timeout;
        self.connect_with_timeout(now, dst, port, t)
    }

    /// Like [`Node::connect`] with this connection's own user timeout: the
    /// dial retries until `user_timeout` has passed, and the established
    /// connection gives up after that much silence (`spec/transport.md`
    /// §4.1, §7.3).
    pub fn connect_with_timeout(
        &mut self,
        now: Instant,
        dst: Addr,
        port: u16,
        user_timeout: Duration,
    ) -> Result<ConnId, NodeError> {
        if dst.is_broadcast() {
            return Err(NodeError::BroadcastAddress);
        }
        if !self.peers.contains_key(&dst.node) {
            return Err(NodeError::UnknownPeer);
        }
        if self.conns.len() >= self.limits.max_conns {
            return Err(NodeError::TooManyConns);
        }
        let local_port = self.ports.alloc_ephemeral()?;
        let cfg = ConnConfig {
            user_timeout,
            ..self.conn_config()
        };
        let isn = self.rng.next_u32();
        let conn = Connection::connect(now, cfg, isn);
        let key = ConnKey {
            local_port,
            remote: dst,
            remote_port: port,
        };
        let id = self.insert_conn(now, key, conn, true, false);
        self.refresh_conn_timer(id);
        self.gate.contacted(now, dst.node);
        Ok(id)
    }

    /// Takes the next connection from the accept queue of `port`.
    pub fn accept(&mut self, port: u16) -> Option<ConnId> {
        let id = self.listeners.get_mut(&port)?.accept.pop_front()?;
        if let Some(e) = self.conns.get_mut(&id) {
            e.queued = false;
            e.known = true;
        }
        Some(id)
    }

    /// Writes to a connection; returns how much was accepted.
    pub fn write(&mut self, now: Instant, id: ConnId, data: &[u8]) -> Result<usize, NodeError> {
        let e = self.conns.get_mut(&id).ok_or(NodeError::UnknownConn)?;
        let n = e.conn.write(now, data)?;
        self.touch(id);
        Ok(n)
    }

    /// Bytes a [`Node::read`] of `id` could return now (0 for an unknown
    /// connection).
    pub fn readable(&self, id: ConnId) -> usize {
        self.conns.get(&id).map_or(0, |e| e.conn.readable())
    }

    /// Reads from a connection. `Ok(0)` means end of stream.
    pub fn read(&mut self, id: ConnId, buf: &mut [u8]) -> Result<usize, NodeError> {
        let e = self.conns.get_mut(&id).ok_or(NodeError::UnknownConn)?;
        let pool = &mut self.payload_pool;
        let n = e.conn.read_recycling(buf, &mut |b| pool.put(b))?;
        self.touch(id);
        Ok(n)
    }

    /// Closes the sending direction (FIN after the written data).
    pub fn shutdown(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let e = self.conns.get_mut(&id).ok_or(NodeError::UnknownConn)?;
        e.conn.shutdown(now);
        self.touch(id);
        Ok(())
    }

    /// Closes the connection; the node drops it once it is finished.
    pub fn close(&mut self, now: Instant, id: ConnId) -> Result<(), NodeError> {
        let e = self.conns.get_mut(&id).ok_or(NodeError::UnknownConn)?;
        e.conn.close(now);
        e.app_closed = true;
        self.touch(id);
        Ok(())
    }

    /// Counters of a connection.
    pub fn conn_stats(&self, id: ConnId) -> Option<ConnStats> {
        self.conns.get(&id).map(|e| e.conn.stats())
    }

    /// Stream loss-recovery totals over every connection, live or
    /// dropped: (retransmissions, fast retransmits, RTO timeouts).
    pub fn stream_totals(&self) -> (u64, u64, u64) {
        self.conns.values().map(|e| e.conn.stats()).fold(
            (
                self.stats.stream_retransmits,
                self.stats.stream_fast_retransmits,
                self.stats.stream_rto_timeouts,
            ),
            |(a, b, c), s| {
                (
                    a + s.retransmissions,
                    b + s.fast_retransmits,
                    c + s.timeouts,
                )
            },
        )
    }

    /// Upward path-MTU search totals over every connection, live or
    /// dropped: (probes sent, probes answered, largest segment size
    /// reached).
    pub fn pmtu_totals(&self) -> (u64, u64, usize) {
        self.conns.values().map(|e| e.conn.stats()).fold(
            (
                self.stats.stream_pmtu_probes,
                self.stats.stream_pmtu_raises,
                self.stats.stream_max_segment,
            ),
            |(a, b, c), s| (a + s.pmtu_probes, b + s.pmtu_raises, c.max(s.max_segment)),
        )
    }

    /// Where a connection goes and its state (for status reports).
    pub fn conn_info(&self, id: ConnId) -> Option<ConnInfo> {
        let framing = if self.encrypt {
            PILS_OVERHEAD
        } else {
            MAGIC_LEN
        };
        self.conns.get(&id).map(|e| {
            let segment_size = e.conn.stats().segment_size;
            let w = e.conn.window_figures();
            ConnInfo {
                local_port: e.key.local_port,
                remote: e.key.remote,
                remote_port: e.key.remote_port,
                state: e.conn.state(),
                readable: e.conn.readable(),
                segment_size,
                path_mtu: segment_size + HEADER_LEN + framing,
                ooo_segments: w.ooo_segments,
                peer_window: w.peer_window_bytes,
                recv_window: w.recv_window_bytes,
                inbound: !e.ephemeral,
            }
        })
    }

    /// Peers in the table: node ID, UDP endpoint, whether a session is
    /// installed and whether the registered identity key is known.
    pub fn peer_list(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(&node, p)| PeerInfo {
                node,
                endpoint: p.endpoint,
                encrypted: self.sessions.session(node).is_some(),
                authenticated: p.identity.is_some(),
            })
            .collect()
    }

    /// Number of live connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    fn touch(&mut self, id: ConnId) {
        self.mark_ready(id);
        self.refresh_conn_timer(id);
    }

    fn mark_ready(&mut self, id: ConnId) {
        if self.in_ready.insert(id) {
            self.ready.push_back(id);
        }
    }

    fn refresh_conn_timer(&mut self, id: ConnId) {
        let at = self
            .conns
            .get(&id)
            .and_then(|e| e.conn.poll_timeout())
            .map(|(t, _)| t);
        self.timers.set_opt(TimeoutReason::Conn(id.0), at);
    }

    /// The tunnel to `peer` came up: dials to it restart their SYN
    /// back-off (`spec/transport.md` §4.1).
    fn tunnel_up(&mut self, now: Instant, peer: u32) {
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| e.key.remote.node == peer && e.conn.state() == conn::State::SynSent)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(e) = self.conns.get_mut(&id) {
                e.conn.tunnel_up(now);
            }
            self.refresh_conn_timer(id);
        }
    }

    fn refresh_all_conn_timers(&mut self, _now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.refresh_conn_timer(id);
        }
    }

    /// Moves a connection's events to the node queue and drops it when it
    /// is finished.
    fn drain_conn_events(&mut self, id: ConnId) {
        let mut evs = Vec::new();
        if let Some(e) = self.conns.get_mut(&id) {
            while let Some(ev) = e.conn.poll_event() {
                evs.push(ev);
            }
        }
        for ev in evs {
            let end = match ev {
                conn::Event::Closed => Some(ConnEnd::Fin),
                conn::Event::Reset(r) => Some(ConnEnd::Reset(r.into())),
                _ => None,
            };
            if let Some(end) = end {
                self.report_end(id, end);
            }
            let out = match ev {
                conn::Event::Connected => Some(Event::Connected(id)),
                conn::Event::Readable => Some(Event::Readable(id)),
                conn::Event::Writable => Some(Event::Writable(id)),
                conn::Event::TryRelay => None,
                conn::Event::Closed => Some(Event::Closed(id)),
                conn::Event::Reset(r) => Some(Event::Reset(id, r.into())),
            };
            let queued = self.conns.get(&id).is_some_and(|e| e.queued);
            if let Some(ev) = out {
                // Connections in an accept queue report once accepted.
                if !(queued && matches!(ev, Event::Connected(_) | Event::Writable(_))) {
                    if matches!(ev, Event::Connected(_)) {
                        if let Some(e) = self.conns.get_mut(&id) {
                            e.known = true;
                        }
                    }
                    self.push_event(ev);
                }
            }
        }
    }

    /// Raises [`Event::ConnEnded`] for a connection the application
    /// knows, once.
    fn report_end(&mut self, id: ConnId, end: ConnEnd) {
        let Some(e) = self.conns.get_mut(&id).filter(|e| e.known) else {
            return;
        };
        e.known = false;
        let end = if e.conn.keepalive_closed() {
            ConnEnd::KeepaliveGaveUp
        } else {
            end
        };
        let ev = Event::ConnEnded {
            id,
            local_port: e.key.local_port,
            remote: e.key.remote,
            remote_port: e.key.remote_port,
            end,
        };
        self.push_event(ev);
    }

    /// Grants a connection the larger receive window autotuning asks
    /// for, within [`Limits::window_bytes_total`] (`spec/transport.md`
    /// §6.2).
    fn autotune(&mut self, id: ConnId) {
        let room = self
            .limits
            .window_bytes_total
            .saturating_sub(self.window_granted);
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(want) = e.conn.window_growth_wanted() else {
            return;
        };
        let now_limit = e.conn.window_limit();
        let extra = want
            .saturating_sub(now_limit)
            .min(room / MAX_SEGMENT_BUDGET);
        e.conn.grow_window(now_limit + extra);
        let bytes = extra * MAX_SEGMENT_BUDGET;
        e.window_granted += bytes;
        self.window_granted += bytes;
        if extra > 0 {
            self.stats.window_grants += 1;
        }
    }

    fn maybe_reap(&mut self, id: ConnId) {
        let done = self
            .conns
            .get(&id)
            .is_some_and(|e| e.conn.is_closed() && (e.app_closed || e.conn.readable() == 0));
        if !done {
            return;
        }
        if let Some(e) = self.conns.remove(&id) {
            self.window_granted = self.window_granted.saturating_sub(e.window_granted);
            let st = e.conn.stats();
            self.stats.stream_retransmits += st.retransmissions;
            self.stats.stream_fast_retransmits += st.fast_retransmits;
            self.stats.stream_rto_timeouts += st.timeouts;
            self.stats.stream_pmtu_probes += st.pmtu_probes;
            self.stats.stream_pmtu_raises += st.pmtu_raises;
            self.stats.stream_max_segment = self.stats.stream_max_segment.max(st.max_segment);
            self.conn_index.remove(&e.key);
            if let Some(c) = self.conns_per_port.get_mut(&e.key.local_port) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.conns_per_port.remove(&e.key.local_port);
                }
            }
            if e.ephemeral {
                self.ports.free_ephemeral(e.key.local_port);
            }
            if let Some(l) = self.listeners.get_mut(&e.key.local_port) {
                l.accept.retain(|c| *c != id);
            }
            self.timers.cancel(TimeoutReason::Conn(id.0));
        }
    }

    // ----- input ----------------------------------------------------------

    /// Handles one UDP datagram from `from`. PILS frames are decrypted in
    /// place, so `bytes` is modified.
    ///
    /// Input that fails authentication is counted in [`Node::auth_drops`]
    /// and changes nothing else (`spec/crypto.md` §12): no session is
    /// dropped or re-keyed, no timer is armed, and no peer entry is created
    /// for a sender that has not proven its identity.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        // Tunnel frames carry the claimed sender right after the magic.
        let claimed = bytes
            .get(4..8)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_be_bytes);
        let before = self.drops;
        self.handle_datagram_inner(now, from, bytes);
        if self.drops != before {
            let now_drops = self.drops;
            for ((reason, after), (_, was)) in now_drops.iter().zip(before.iter()) {
                if after > was {
                    self.diag(
                        now,
                        Diagnostic::Dropped {
                            peer: claimed,
                            from,
                            reason,
                        },
                    );
                }
            }
        }
    }

    fn handle_datagram_inner(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        self.stats.datagrams_in += 1;
        if bytes.get(..MAGIC_LEN) == Some(&MAGIC_PILS[..]) {
            if !self.encrypt {
                self.stats.malformed += 1;
                self.drop_frame(AuthDrop::Malformed);
                return;
            }
            self.handle_pils(now, from, bytes, true);
            self.after_session(now);
            self.replay_early_frames(now);
            return;
        }
        let frame = match Frame::decode(bytes) {
            Ok(f) => f,
            Err(_) => {
                self.stats.malformed += 1;
                self.drop_frame(AuthDrop::Malformed);
                return;
            }
        };
        match frame {
            Frame::Pilk { .. } | Frame::Pila { .. } => {
                let Some(kx) = KeyExchange::from_frame(&frame) else {
                    self.stats.malformed += 1;
                    self.drop_frame(AuthDrop::Malformed);
                    return;
                };
                if !self.encrypt {
                    self.stats.ignored_frames += 1;
                    return;
                }
                self.handle_kx(now, from, &kx);
                self.after_session(now);
                self.replay_early_frames(now);
            }
            Frame::Pilt { packet } => {
                if self.encrypt {
                    self.stats.plaintext_refused += 1;
                    self.drop_frame(AuthDrop::PlaintextRefused);
                    return;
                }
                match Packet::decode_with(packet, self.profile) {
                    Ok(pkt) => {
                        let sender = pkt.header.src.node;
                        self.handle_packet(now, sender, &pkt, false);
                    }
                    Err(_) => self.stats.malformed += 1,
                }
            }
            Frame::Pils { .. } => {
                self.stats.malformed += 1;
                self.drop_frame(AuthDrop::Malformed);
            }
            Frame::Pilp | Frame::Beacon(_) => self.stats.ignored_frames += 1,
        }
    }

    /// Opens a PILS frame and handles its packet. A frame that does not
    /// open is counted and dropped and changes nothing (`spec/crypto.md`
    /// §5.3, §12). A frame from a *known* peer without a session is kept
    /// (when `keep`) in the small early-frame stash — it may have overtaken
    /// the key exchange that installs the session (`spec/node.md` §2) —
    /// and answered with a rate-limited rekey request. An authentic frame
    /// of an authenticated session that is the newest the session has
    /// received moves the peer's endpoint to its source once the current
    /// endpoint has been silent for [`ROAM_QUIET`]: otherwise it may be a
    /// copy of a frame still on its way to us or lost, replayed by whoever
    /// captured it (`spec/crypto.md` §13.2 row 17).
    fn handle_pils(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8], keep: bool) {
        let opened = match self.sessions.open_in_place(now, bytes) {
            Ok(o) => o,
            Err(e) => {
                self.stats.open_failed += 1;
                let reason = match e {
                    OpenFailure::Malformed | OpenFailure::Rejected(OpenError::Malformed) => {
                        AuthDrop::Malformed
                    }
                    OpenFailure::NoSession => AuthDrop::PilsNoSession,
                    OpenFailure::Rejected(OpenError::Auth) => AuthDrop::PilsBadTag,
                    OpenFailure::Rejected(OpenError::Replay) => {
                        if let Ok(h) = PilsHeader::parse(bytes) {
                            self.security.replays += 1;
                            self.security.last_replay = Some((h.sender, h.counter()));
                        }
                        AuthDrop::PilsReplay
                    }
                    OpenFailure::Rejected(OpenError::Outside) => AuthDrop::PilsOutsideWindow,
                    OpenFailure::Rejected(OpenError::StaleEpoch) => AuthDrop::PilsStaleEpoch,
                };
                self.drop_frame(reason);
                if e == OpenFailure::NoSession {
                    // A peer we know lost its session (it restarted or we
                    // did): ask it to re-key, rate-limited, without a
                    // timer, and keep the frame a moment in case it
                    // overtook the key exchange. Strangers get nothing.
                    let sender = PilsHeader::parse(bytes).ok().map(|h| h.sender);
                    if let Some(peer) = sender.filter(|p| self.peers.contains_key(p)) {
                        self.sessions.request_rekey(now, peer);
                        if keep && bytes.len() <= EARLY_FRAME_MAX_LEN {
                            if self.early_frames.len() >= EARLY_FRAMES {
                                self.early_frames.pop_front();
                            }
                            self.early_frames
                                .push_back((peer, from, now, bytes.to_vec()));
                        }
                    }
                }
                return;
            }
        };
        let sender = opened.sender;
        let mut roam = false;
        if let Some(p) = self.peers.get_mut(&sender) {
            p.last_heard = now;
            self.last_authenticated = Some(sender);
            if p.endpoint == from {
                p.endpoint_heard = now;
            } else {
                roam = opened.newest
                    && opened.authenticated
                    && now.saturating_duration_since(p.endpoint_heard) >= ROAM_QUIET;
            }
        }
        if roam {
            self.move_endpoint(now, sender, from);
        }
        let Some(pt) = bytes.get(opened.plaintext) else {
            return;
        };
        match Packet::decode_with(pt, self.profile) {
            Ok(pkt) => {
                // Identity binding (wire.md §3.2).
                let keepalive_v0 = pkt.is_nat_keepalive() && pkt.header.src.node == 0;
                if pkt.header.src.node != sender && !keepalive_v0 {
                    self.stats.spoofed += 1;
                    self.drop_frame(AuthDrop::PilsSpoofedSource);
                } else {
                    self.handle_packet(now, sender, &pkt, true);
                }
            }
            Err(_) => self.stats.malformed += 1,
        }
    }

    /// Opens again the kept early frames whose sender now has a session
    /// (in arrival order); drops the expired ones.
    fn replay_early_frames(&mut self, now: Instant) {
        if self.early_frames.is_empty() {
            return;
        }
        self.early_frames
            .retain(|f| now.saturating_duration_since(f.2) < EARLY_FRAME_TTL);
        let ready: Vec<_> = {
            let sessions = &self.sessions;
            let (ready, keep): (VecDeque<_>, VecDeque<_>) = self
                .early_frames
                .drain(..)
                .partition(|f| sessions.session(f.0).is_some());
            self.early_frames = keep;
            ready.into_iter().collect()
        };
        for (_, from, _, mut bytes) in ready {
            self.stats.early_frames_replayed += 1;
            self.handle_pils(now, from, &mut bytes, false);
            self.after_session(now);
        }
    }

    fn kx_refused(&mut self, e: KxRejected) {
        self.stats.kx_rejected += 1;
        let reason = match e {
            KxRejected::RateLimited => AuthDrop::KxRateLimited,
            KxRejected::Auth(KxError::BadSignature) => AuthDrop::KxBadSignature,
            KxRejected::Auth(KxError::IdentityMismatch) => AuthDrop::KxIdentityMismatch,
            KxRejected::Auth(_) => AuthDrop::KxUnvouched,
            KxRejected::Kdf(KdfError::ZeroSharedSecret) => AuthDrop::KxBadKey,
            KxRejected::Unauthenticated => AuthDrop::KxUnauthenticated,
            KxRejected::TooManySessions => AuthDrop::KxTooManySessions,
            KxRejected::OwnNode => AuthDrop::KxOwnNode,
            KxRejected::StaleKey => AuthDrop::KxStaleKey,
        };
        self.drop_frame(reason);
    }

    /// A PILA or PILK (`spec/crypto.md` §2.3, §2.8). Known peers (frames
    /// from the endpoint the peer table holds) are charged to their own
    /// bucket; everyone else to the per-source-IP bucket and the global
    /// stranger budget, before any signature check. A stranger's PILA is
    /// held in the bounded half-open table until the registry vouches for
    /// its key; a stranger's PILK is dropped.
    fn handle_kx(&mut self, now: Instant, from: SocketAddr, kx: &KeyExchange) {
        if kx.sender == self.addr.node {
            self.kx_refused(KxRejected::OwnNode);
            return;
        }
        let known = self.peers.get(&kx.sender).copied();
        let from_known = known.is_some_and(|p| p.endpoint == from);
        let source = if from_known {
            KxSource::Known(kx.sender)
        } else {
            KxSource::Direct(from.ip())
        };
        if !self.sessions.admit_key_exchange(now, source) {
            self.kx_refused(KxRejected::RateLimited);
            return;
        }
        let identity = known.and_then(|p| p.identity);
        match (&kx.auth, identity) {
            (Some(auth), Some(key)) => {
                // Cheap check first: a frame carrying another key costs no
                // signature verification, unless the peer may have rotated
                // its key (once per KEY_REFETCH_INTERVAL).
                if auth.ed25519 != key {
                    self.kx_other_key(now, from, from_known, kx);
                    return;
                }
                if !from_known && !self.stranger_budget(now) {
                    return;
                }
                let res = self
                    .sessions
                    .handle_admitted_key_exchange(now, kx, Some(&key));
                match res {
                    // A verified PILA that installed a session (first, or
                    // the peer restarted with a new key) proves the peer
                    // is at `from` now (`spec/crypto.md` §13, row 17). A
                    // kept session's PILA moves nothing: it could be a
                    // replayed copy; authentic PILS move the endpoint.
                    Ok(KxAccepted::Installed { .. }) => {
                        self.last_authenticated = Some(kx.sender);
                        self.move_endpoint(now, kx.sender, from)
                    }
                    Ok(KxAccepted::Kept { .. }) => {}
                    Err(e) => self.kx_refused(e),
                }
            }
            (Some(auth), None) => {
                // No vouched key yet: verify the signature under the key
                // the frame carries (budgeted), then hold it until the
                // registry answers. No peer entry is created.
                if !from_known && !self.stranger_budget(now) {
                    return;
                }
                let ok = kx::verify_pila(
                    self.sessions.provider(),
                    kx.sender,
                    &kx.x25519,
                    auth,
                    Some(&auth.ed25519),
                );
                if let Err(e) = ok {
                    self.kx_refused(KxRejected::Auth(e));
                    return;
                }
                match self.half_open.insert(now, from, *kx) {
                    HeldOutcome::New => {}
                    HeldOutcome::Replaced => return,
                    HeldOutcome::Evicted(n) => {
                        for _ in 0..n {
                            self.drop_frame(AuthDrop::KxHeldEvicted);
                        }
                    }
                }
                self.push_event(Event::IdentityNeeded { peer: kx.sender });
            }
            (None, _) if known.is_none() => {
                // A PILK from a stranger creates nothing (reference:
                // an unauthenticated session and a peer entry).
                self.kx_refused(KxRejected::Unauthenticated);
            }
            (None, _) => {
                let res = self
                    .sessions
                    .handle_admitted_key_exchange(now, kx, identity.as_ref());
                if let Err(e) = res {
                    self.kx_refused(e);
                }
            }
        }
    }

    /// A known peer's PILA carries another identity key than ours for it.
    /// If a re-fetch is allowed (paced per peer; strangers' budget for
    /// frames from elsewhere) and the frame verifies under the key it
    /// carries, it is held and the owner asked to look the key up afresh
    /// ([`Event::IdentityStale`]); the registry's answer decides in
    /// [`Node::identity_resolved`]. The session, and the streams on it,
    /// are untouched meanwhile. Otherwise it is refused as a mismatch.
    fn kx_other_key(&mut self, now: Instant, from: SocketAddr, from_known: bool, kx: &KeyExchange) {
        let Some(auth) = kx.auth else {
            return;
        };
        let due = self.peers.get(&kx.sender).is_some_and(|p| {
            p.key_refetch
                .is_none_or(|at| now.saturating_duration_since(at) >= KEY_REFETCH_INTERVAL)
        });
        if !due {
            self.kx_refused(KxRejected::Auth(KxError::IdentityMismatch));
            return;
        }
        if !from_known && !self.stranger_budget(now) {
            return;
        }
        let ok = kx::verify_pila(
            self.sessions.provider(),
            kx.sender,
            &kx.x25519,
            &auth,
            Some(&auth.ed25519),
        );
        if let Err(e) = ok {
            self.kx_refused(KxRejected::Auth(e));
            return;
        }
        if let Some(p) = self.peers.get_mut(&kx.sender) {
            p.key_refetch = Some(now);
        }
        match self.half_open.insert(now, from, *kx) {
            HeldOutcome::New | HeldOutcome::Replaced => {}
            HeldOutcome::Evicted(n) => {
                for _ in 0..n {
                    self.drop_frame(AuthDrop::KxHeldEvicted);
                }
            }
        }
        self.stats.identity_refetches += 1;
        self.push_event(Event::IdentityStale { peer: kx.sender });
    }

    /// A fresh identity drawn from the node's (driver-seeded) RNG, for a
    /// key rotation.
    pub fn new_identity(&mut self) -> Identity {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        Identity::from_seed(self.sessions.provider(), seed)
    }

    /// Signs our key exchanges with `identity` from now on (a key rotation,
    /// `spec/crypto.md` §2.9) and sends the new key exchange to every peer
    /// we hold a session with, now and at the next
    /// [`ANNOUNCE_REPEATS`] keepalive sweeps (a lost copy is repaired; a
    /// peer that misses them all learns the new key at its next key
    /// exchange with us). Sessions, streams and the tunnel key are
    /// unchanged.
    pub fn set_identity(&mut self, now: Instant, identity: &Identity) {
        self.sessions.set_identity(identity);
        if self.encrypt {
            self.stats.identity_announcements += self.sessions.announce() as u64;
            self.announce_left = ANNOUNCE_REPEATS;
        }
        self.after_session(now);
    }

    /// The peer proved its identity from `from` (verified PILA, or a frame
    /// of an authenticated session): use that endpoint from now on.
    fn move_endpoint(&mut self, now: Instant, peer: u32, from: SocketAddr) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.endpoint_heard = now;
            if p.endpoint != from {
                let old = p.endpoint;
                p.endpoint = from;
                self.stats.endpoint_moves += 1;
                self.diag(
                    now,
                    Diagnostic::EndpointMoved {
                        peer,
                        old,
                        new: from,
                    },
                );
            }
        }
    }

    /// Takes one token of the global stranger budget; counts a drop if
    /// there is none.
    fn stranger_budget(&mut self, now: Instant) -> bool {
        let l = self.limits;
        let b = self
            .kx_strangers
            .get_or_insert(Bucket::full(l.kx_stranger_burst, now));
        if b.take(now, l.kx_stranger_burst, l.kx_stranger_rate) {
            true
        } else {
            self.stats.kx_rejected += 1;
            self.drop_frame(AuthDrop::KxStrangerBudget);
            false
        }
    }

    /// The registry vouches for `key` as the identity of node `peer` (on
    /// `network`): a PILA held for it in the half-open table is accepted if
    /// it carries that key — the peer is added with the frame's source as
    /// its endpoint and the session installed — and dropped if not. Without
    /// a held frame, a peer already in the table learns its key (and a key
    /// exchange starts). Returns whether a held frame was accepted.
    pub fn identity_resolved(
        &mut self,
        now: Instant,
        peer: u32,
        network: u16,
        key: [u8; 32],
    ) -> bool {
        let held = self.half_open.take(now, peer);
        let mut accepted = false;
        match held {
            Some(h) if h.kx.auth.is_some_and(|a| a.ed25519 == key) => {
                let addr = Addr::new(network, peer);
                let endpoint = self.peers.get(&peer).map_or(h.from, |p| p.endpoint);
                if self.add_peer(addr, endpoint, Some(key)) {
                    match self
                        .sessions
                        .handle_admitted_key_exchange(now, &h.kx, Some(&key))
                    {
                        Ok(res) => {
                            accepted = true;
                            // Verified under the vouched key and installed:
                            // the peer is where the frame came from.
                            if matches!(res, KxAccepted::Installed { .. }) {
                                self.last_authenticated = Some(peer);
                                self.move_endpoint(now, peer, h.from);
                            }
                        }
                        Err(e) => self.kx_refused(e),
                    }
                } else {
                    self.kx_refused(KxRejected::TooManySessions);
                }
            }
            Some(_) => self.drop_frame(AuthDrop::KxUnvouched),
            None => {
                if let Some(p) = self.peers.get(&peer).copied() {
                    self.add_peer(Addr::new(p.network, peer), p.endpoint, Some(key));
                    self.connect_tunnel(now, peer);
                }
            }
        }
        self.after_session(now);
        accepted
    }

    /// The registry has no key for `peer` (or the look-up failed): a PILA
    /// held for it is dropped.
    pub fn identity_unknown(&mut self, now: Instant, peer: u32) {
        if self.half_open.take(now, peer).is_some() {
            self.drop_frame(AuthDrop::KxUnvouched);
        }
    }

    /// The owner will not look `peer`'s key up now (its look-up budget is
    /// spent): a PILA held for it is dropped, so the sender's
    /// retransmission is held afresh and asks again.
    pub fn identity_lookup_refused(&mut self, now: Instant, peer: u32) {
        if self.half_open.take(now, peer).is_some() {
            self.drop_frame(AuthDrop::KxLookupBudget);
        }
    }

    /// Drops held key exchanges that waited too long (called from the
    /// keepalive sweep).
    fn expire_half_open(&mut self, now: Instant) {
        for _ in 0..self.half_open.expire(now) {
            self.drop_frame(AuthDrop::KxHeldExpired);
        }
    }

    /// `sealed`: the packet arrived in a PILS frame that opened under
    /// `sender`'s session (so `sender` is authentic), not as PILT.
    fn handle_packet(&mut self, now: Instant, sender: u32, pkt: &Packet<'_>, sealed: bool) {
        let h = pkt.header;
        if pkt.is_nat_keepalive() {
            self.stats.keepalives_in += 1;
            return;
        }
        if h.dst.node != self.addr.node {
            self.stats.not_for_us += 1;
            return;
        }
        match h.protocol {
            Protocol::CONTROL => self.handle_control(now, sender, pkt),
            Protocol::DATAGRAM => {
                if pkt.payload.is_empty() {
                    self.stats.datagrams_empty += 1;
                } else if !self.gate_admits(now, sender, sealed, h.dst_port, true) {
                    self.stats.gate_datagrams_dropped += 1;
                } else if !self.ports.is_bound(h.dst_port) {
                    self.stats.datagrams_unbound += 1;
                } else {
                    self.stats.datagrams_delivered += 1;
                    self.push_event(Event::Datagram {
                        src: h.src,
                        src_port: h.src_port,
                        dst_port: h.dst_port,
                        data: pkt.payload.to_vec(),
                    });
                }
            }
            Protocol::STREAM => self.handle_stream(now, sender, pkt, sealed),
            _ => self.stats.unknown_protocol += 1,
        }
    }

    fn handle_control(&mut self, now: Instant, sender: u32, pkt: &Packet<'_>) {
        let h = pkt.header;
        if h.dst_port != 0 {
            self.stats.control_ignored += 1;
            return;
        }
        if h.flags.contains(Flags::ACK) {
            // A pong (or a relay-upgrade probe): never answered.
            let matched = self
                .pings
                .get(&h.seq)
                .is_some_and(|p| p.dst.node == sender && h.ack == h.seq.wrapping_add(1));
            if matched {
                if let Some(p) = self.pings.remove(&h.seq) {
                    self.timers.cancel(TimeoutReason::Ping(h.seq));
                    self.push_event(Event::Pong {
                        id: h.seq,
                        from: h.src,
                        rtt: now.saturating_duration_since(p.sent),
                    });
                }
            } else {
                self.stats.pongs_unmatched += 1;
            }
            return;
        }
        // A ping or a path probe: answer with a pong.
        let src = if h.dst.node == 0 {
            Addr::new(h.dst.network, self.addr.node)
        } else {
            h.dst
        };
        let mut r = self.header(Protocol::CONTROL, src, h.src, 0, h.src_port);
        r.flags = Flags::ACK;
        r.seq = h.seq;
        r.ack = h.seq.wrapping_add(1);
        if self.queue_packet(sender, r, pkt.payload).is_ok() {
            self.stats.pongs_sent += 1;
        }
    }

    /// The private-node gate for a SYN or datagram from `sender` to
    /// `port`; a drop of an authenticated sender asks for a registry
    /// check ([`Event::AdmissionCheck`]).
    fn gate_admits(
        &mut self,
        now: Instant,
        sender: u32,
        sealed: bool,
        port: u16,
        datagram: bool,
    ) -> bool {
        if !self.gate.enabled() {
            return true;
        }
        let authentic = sealed
            && self
                .sessions
                .session(sender)
                .is_some_and(|s| s.authenticated);
        // An unauthenticated sender (plaintext or an unverified key
        // exchange, legacy peers) is judged by its node ID, as the
        // reference does, but never matches a key-bound trust and never
        // makes us ask the registry.
        let identity = self.peer_identity(sender).filter(|_| authentic);
        match self
            .gate
            .check(now, sender, identity, authentic, port, datagram)
        {
            Verdict::Admit => true,
            Verdict::Drop => false,
            Verdict::DropAsk => {
                self.push_event(Event::AdmissionCheck { peer: sender });
                false
            }
        }
    }

    fn syn_allowed(&mut self, now: Instant, src: u32) -> bool {
        let l = self.limits;
        let g = self
            .syn_global
            .get_or_insert(Bucket::full(l.syn_global_burst, now));
        if !g.take(now, l.syn_global_burst, l.syn_global_rate) {
            return false;
        }
        if !self.syn_sources.contains_key(&src) && self.syn_sources.len() >= l.syn_sources {
            // Forget sources idle long enough to be full again.
            let idle = Duration::from_secs(10);
            self.syn_sources
                .retain(|_, b| now.saturating_duration_since(b.at) < idle);
            if self.syn_sources.len() >= l.syn_sources {
                return false;
            }
        }
        self.syn_sources
            .entry(src)
            .or_insert(Bucket::full(l.syn_source_burst, now))
            .take(now, l.syn_source_burst, l.syn_source_rate)
    }

    fn send_rst(&mut self, sender: u32, h: &Header, ack: u32) {
        let mut r = self.header(Protocol::STREAM, h.dst, h.src, h.dst_port, h.src_port);
        r.flags = Flags::RST;
        r.ack = ack;
        if self.queue_packet(sender, r, &[]).is_ok() {
            self.stats.rst_sent += 1;
        }
    }

    fn handle_stream(&mut self, now: Instant, sender: u32, pkt: &Packet<'_>, sealed: bool) {
        let h = pkt.header;
        let key = ConnKey {
            local_port: h.dst_port,
            remote: h.src,
            remote_port: h.src_port,
        };
        let seg = Segment {
            flags: h.flags,
            seq: Seq(h.seq),
            ack: Seq(h.ack),
            window: h.window,
            payload: self.payload_pool.copy(pkt.payload),
        };
        let peer_key = self.sessions.session(sender).map(|s| s.peer_x25519);
        if let Some(&id) = self.conn_index.get(&key) {
            if let Some(e) = self.conns.get_mut(&id) {
                e.peer_key = peer_key.or(e.peer_key);
                e.conn.handle_segment(now, seg);
            }
            self.autotune(id);
            self.drain_conn_events(id);
            self.touch(id);
            return;
        }
        let is_rst = h.flags.contains(Flags::RST);
        if is_rst {
            return;
        }
        let syn_only = h.flags.contains(Flags::SYN) && !h.flags.contains(Flags::ACK);
        if !syn_only {
            self.send_rst(sender, &h, h.seq.wrapping_add(1));
            return;
        }
        // transport.md §4.2 step 3: a private node admits only trusted
        // senders (and replies to its own contacts); silently, so an
        // untrusted node cannot even learn the port is open.
        if self.listeners.contains_key(&h.dst_port)
            && !self.gate_admits(now, sender, sealed, h.dst_port, false)
        {
            self.stats.gate_syn_dropped += 1;
            return;
        }
        // The SYN buckets guard against floods from sources we cannot hold
        // to account. A SYN sealed under a session set up by a verified
        // PILA (the peer proved its registered identity) skips them: that
        // peer is bounded by the per-port and total connection limits
        // instead, so many concurrent dials between trusted nodes work.
        let accountable = sealed
            && self
                .sessions
                .session(sender)
                .is_some_and(|s| s.authenticated);
        if accountable {
            self.stats.syn_authenticated += 1;
        } else if !self.syn_allowed(now, sender) {
            self.stats.syn_rate_limited += 1;
            self.security.syn_rate_limited += 1;
            self.security.last_syn_limited = Some((h.src, h.src_port));
            return;
        }
        let per_port = self.conns_per_port.get(&h.dst_port).copied().unwrap_or(0);
        let listening = self.listeners.get(&h.dst_port).map(|l| l.accept.len());
        let Some(queue_len) = listening else {
            self.send_rst(sender, &h, h.seq.wrapping_add(1));
            return;
        };
        if per_port >= self.limits.max_conns_per_port || self.conns.len() >= self.limits.max_conns {
            self.send_rst(sender, &h, h.seq.wrapping_add(1));
            return;
        }
        let cfg = self.conn_config();
        let isn = self.rng.next_u32();
        let mut c = Connection::accept(now, cfg, &seg, isn);
        let full = queue_len >= self.limits.accept_queue;
        if full {
            // transport.md §11: RST after SYN+ACK.
            c.abort();
        }
        let id = self.insert_conn(now, key, c, false, !full);
        if let Some(e) = self.conns.get_mut(&id) {
            e.peer_key = peer_key;
        }
        if full {
            if let Some(e) = self.conns.get_mut(&id) {
                e.app_closed = true;
            }
        } else {
            if let Some(l) = self.listeners.get_mut(&h.dst_port) {
                l.accept.push_back(id);
            }
            self.push_event(Event::Incoming { port: h.dst_port });
        }
        self.drain_conn_events(id);
        self.refresh_conn_timer(id);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for key in self.timers.expire(now) {
            match key {
                TimeoutReason::Session => {
                    self.sessions.handle_timeout(now);
                }
                TimeoutReason::Keepalive => {
                    if self.announce_left > 0 {
                        self.announce_left -= 1;
                        self.stats.identity_announcements += self.sessions.announce() as u64;
                    }
                    self.keepalive_sweep(now);
                    self.liveness_sweep(now);
                    self.payload_pool.sweep();
                    self.expire_half_open(now);
                    self.timers
                        .set(TimeoutReason::Keepalive, now + self.sweep_period());
                }
                TimeoutReason::Ping(id) => {
                    if self.pings.remove(&id).is_some() {
                        self.push_event(Event::PingTimeout { id });
                    }
                }
                TimeoutReason::Conn(c) => {
                    let id = ConnId(c);
                    let peer = self.conns.get(&id).map(|e| e.key.remote.node);
                    let kx_pending =
                        self.encrypt && peer.is_some_and(|p| self.sessions.session(p).is_none());
                    if let Some(e) = self.conns.get_mut(&id) {
                        // Hold SYN retries while the tunnel is still keying.
                        let young = now.saturating_duration_since(e.started) < SYN_HOLD_MAX;
                        e.conn.hold_syn_retries(kx_pending && young);
                        e.conn.handle_timeout(now);
                        let ask = e.conn.state() == conn::State::SynSent
                            && !e.resolve_asked
                            && now.saturating_duration_since(e.started) >= RESOLVE_AFTER;
                        if ask {
                            e.resolve_asked = true;
                        }
                        self.drain_conn_events(id);
                        self.touch(id);
                        if let (true, Some(peer)) = (ask, peer) {
                            self.push_event(Event::ResolveNeeded { peer });
                        }
                    }
                }
            }
        }
        self.after_session(now);
    }

    fn keepalive_sweep(&mut self, now: Instant) {
        let Some(idle) = self.keepalive_idle.filter(|_| self.encrypt) else {
            return;
        };
        let due: Vec<u32> = self
            .sessions
            .peers()
            .filter(|n| {
                self.peers
                    .get(n)
                    .is_some_and(|p| now.saturating_duration_since(p.last_sent) >= idle)
            })
            .collect();
        for peer in due {
            let h = self.header(
                Protocol::CONTROL,
                Addr::new(0, self.addr.node),
                Addr::ZERO,
                0,
                0,
            );
            if self.queue_packet(peer, h, &[]).is_ok() {
                self.stats.keepalives_out += 1;
            }
        }
    }

    /// Dead-peer detection (`spec/node.md` §7.1). For every peer with a
    /// session: silent (nothing authenticated received) for half the peer
    /// timeout → a probe (control ping, answered by any daemon), repeated
    /// every eighth of the timeout; silent for the whole timeout → dead:
    /// session dropped, connections failed, [`Event::PeerUnreachable`].
    fn liveness_sweep(&mut self, now: Instant) {
        if !self.encrypt {
            return;
        }
        let timeout = self.peer_timeout;
        let mut dead = Vec::new();
        let mut probe = Vec::new();
        // Watched: peers with a session, and peers with connections that
        // have heard from them (their session may have been dropped).
        let mut watched: BTreeSet<u32> = self.sessions.peers().collect();
        watched.extend(
            self.conns
                .values()
                .filter(|e| !e.conn.is_closed() && e.conn.state() != conn::State::SynSent)
                .map(|e| e.key.remote.node),
        );
        for peer in watched {
            let heard = self
                .peers
                .get(&peer)
                .map_or(Instant::ZERO, |p| p.last_heard);
            let last = self
                .sessions
                .session(peer)
                .map_or(heard, |s| s.last_inbound.max(heard));
            let silent = now.saturating_duration_since(last);
            if silent >= timeout {
                dead.push((peer, silent));
            } else if silent >= timeout / 2 {
                let due = self.peers.get(&peer).is_some_and(|p| {
                    p.last_probe
                        .is_none_or(|t| now.saturating_duration_since(t) >= timeout / 8)
                });
                if due {
                    probe.push(peer);
                }
            }
        }
        for peer in probe {
            let network = self.peers.get(&peer).map_or(0, |p| p.network);
            let h = self.header(
                Protocol::CONTROL,
                Addr::new(network, self.addr.node),
                Addr::new(network, peer),
                0,
                0,
            );
            if self.queue_packet(peer, h, PROBE_PAYLOAD).is_ok() {
                self.stats.probes_sent += 1;
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.last_probe = Some(now);
                }
            }
        }
        for (peer, silent) in dead {
            self.stats.peers_dead += 1;
            self.sessions.remove(peer);
            self.fail_peer_conns(peer, ResetReason::PeerUnreachable);
            if let Some(p) = self.peers.get_mut(&peer) {
                p.last_probe = None;
            }
            self.push_event(Event::PeerUnreachable { peer, silent });
            self.push_event(Event::ResolveNeeded { peer });
        }
    }

    /// Turns session-table events into node events and re-arms its timer.
    fn after_session(&mut self, now: Instant) {
        while let Some(ev) = self.sessions.poll_event() {
            let out = match ev {
                SessionEvent::Installed {
                    peer,
                    authenticated,
                    replaced,
                } => {
                    self.fail_restarted_peer_conns(peer);
                    self.tunnel_up(now, peer);
                    Event::SessionUp {
                        peer,
                        authenticated,
                        rekeyed: replaced,
                    }
                }
                SessionEvent::Dropped { peer, .. } => Event::SessionDown { peer },
                SessionEvent::PreferRelay { .. } => continue,
                SessionEvent::GaveUp { peer, discarded } => {
                    self.stats.pending_dropped += discarded as u64;
                    self.push_event(Event::ResolveNeeded { peer });
                    Event::KeyExchangeGaveUp { peer }
                }
            };
            self.push_event(out);
        }
        self.timers
            .set_opt(TimeoutReason::Session, self.sessions.poll_timeout());
    }

    // ----- output ---------------------------------------------------------

    /// The next deadline and why. Re-read after draining the polls.
    pub fn poll_timeout(&self) -> Option<(Instant, TimeoutReason)> {
        self.timers.next()
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn endpoint(&mut self, now: Instant, peer: u32) -> Option<SocketAddr> {
        let p = self.peers.get_mut(&peer)?;
        p.last_sent = now;
        Some(p.endpoint)
    }

    /// Writes up to `max_segments` datagrams for one destination into
    /// `buf`, back to back, all of the size of the first except a shorter
    /// last one (see [`TransmitBatch`]). The batch takes at most
    /// `buf.len() - MIN_TRANSMIT_BUFFER` bytes beyond its first datagram:
    /// each further datagram is written behind the batch, and one that
    /// does not belong to it (another destination, a larger size, no room
    /// left) is kept and returned first by the next poll, so nothing is
    /// lost or reordered. `buf` needs at least [`MIN_TRANSMIT_BUFFER`]
    /// bytes; a driver sizes it as its largest batch plus that.
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<TransmitBatch> {
        let first = self.poll_transmit(now, buf)?;
        let (dst, seg) = (first.dst, first.len);
        let mut batch = TransmitBatch {
            dst,
            len: seg,
            segment_size: seg,
            segments: 1,
        };
        let room = buf.len().saturating_sub(MIN_TRANSMIT_BUFFER);
        while batch.segments < max_segments && batch.len.saturating_add(seg) <= room {
            let Some(rest) = buf.get_mut(batch.len..) else {
                break;
            };
            let Some(t) = self.poll_transmit(now, rest) else {
                break;
            };
            if t.dst != dst || t.len > seg {
                if let Some(bytes) = rest.get(..t.len) {
                    self.carry.clear();
                    self.carry.extend_from_slice(bytes);
                    self.carry_dst = Some(t.dst);
                }
                break;
            }
            batch.len += t.len;
            batch.segments += 1;
            if t.len < seg {
                break;
            }
        }
        Some(batch)
    }

    /// Writes the next datagram into `buf` (at least
    /// [`MIN_TRANSMIT_BUFFER`] bytes to carry every packet).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(dst) = self.carry_dst.take() {
            let len = self.carry.len();
            if let Some(out) = buf.get_mut(..len) {
                out.copy_from_slice(&self.carry);
                if self.carry.capacity() > SPARE_BUFFER_MAX {
                    self.carry = Vec::new();
                }
                return Some(Transmit { dst, len });
            }
            self.stats.transmit_dropped += 1;
        }
        loop {
            // 1. Key exchanges and flushed or salvaged packets.
            if self.encrypt {
                if let Some(t) = self.sessions.poll_transmit(now, buf) {
                    self.after_session(now);
                    match self.endpoint(now, t.peer) {
                        Some(dst) => {
                            self.stats.datagrams_out += 1;
                            return Some(Transmit { dst, len: t.len });
                        }
                        None => {
                            self.stats.transmit_dropped += 1;
                            continue;
                        }
                    }
                }
            }
            // 2. Queued packets (datagrams, pongs, keepalives, RSTs).
            if let Some((peer, pkt)) = self.out.pop_front() {
                let sent = self.emit(now, peer, &pkt, buf);
                self.recycle(pkt);
                if let Some(t) = sent {
                    return Some(t);
                }
                continue;
            }
            // 3. Stream segments.
            let id = self.ready.pop_front()?;
            self.in_ready.remove(&id);
            let (seg, needed_until) = match self.conns.get_mut(&id) {
                Some(e) => (
                    e.conn.poll_segment(now).map(|s| (s, e.key)),
                    e.conn.tunnel_needed_until(),
                ),
                None => continue,
            };
            self.drain_conn_events(id);
            self.refresh_conn_timer(id);
            let Some((seg, key)) = seg else {
                self.maybe_reap(id);
                continue;
            };
            if self.in_ready.insert(id) {
                self.ready.push_front(id);
            }
            let header = Header {
                version: VERSION,
                flags: seg.flags,
                protocol: Protocol::STREAM,
                payload_len: 0,
                src: Addr::new(key.remote.network, self.addr.node),
                dst: key.remote,
                src_port: key.local_port,
                dst_port: key.remote_port,
                seq: seg.seq.0,
                ack: seg.ack.0,
                window: seg.window,
            };
            let Ok(p) = Packet::new(header, &seg.payload) else {
                self.stats.transmit_dropped += 1;
                continue;
            };
            let off = if self.encrypt {
                PILS_HEADER_LEN
            } else {
                MAGIC_LEN
            };
            let len = match buf.get_mut(off..).map(|b| p.encode(b)) {
                Some(Ok(n)) => n,
                _ => {
                    self.stats.transmit_dropped += 1;
                    continue;
                }
            };
            let sent = self.seal_at(now, key.remote.node, buf, len);
            if let (true, Some(until)) = (self.encrypt, needed_until) {
                // The stream keeps a pending key exchange going past its
                // regular attempts while it still needs the tunnel.
                self.sessions.need_tunnel_until(now, key.remote.node, until);
            }
            if let Some(t) = sent {
                return Some(t);
            }
        }
    }

    /// Frames the packet `pkt` for `peer` into `buf`.
    fn emit(&mut self, now: Instant, peer: u32, pkt: &[u8], buf: &mut [u8]) -> Option<Transmit> {
        let off = if self.encrypt {
            PILS_HEADER_LEN
        } else {
            MAGIC_LEN
        };
        match buf.get_mut(off..off.saturating_add(pkt.len())) {
            Some(dst) => dst.copy_from_slice(pkt),
            None => {
                self.stats.transmit_dropped += 1;
                return None;
            }
        }
        self.seal_at(now, peer, buf, pkt.len())
    }

    /// The packet of `len` bytes sits after the frame header in `buf`:
    /// seal it (PILS) or prefix it (PILT).
    fn seal_at(&mut self, now: Instant, peer: u32, buf: &mut [u8], len: usize) -> Option<Transmit> {
        if !self.encrypt {
            let Some(m) = buf.get_mut(..MAGIC_LEN) else {
                self.stats.transmit_dropped += 1;
                return None;
            };
            m.copy_from_slice(&MAGIC_PILT);
            let dst = self.endpoint(now, peer)?;
            self.stats.datagrams_out += 1;
            return Some(Transmit {
                dst,
                len: MAGIC_LEN + len,
            });
        }
        let res = self.sessions.seal_in_place(now, peer, buf, len);
        self.after_session(now);
        match res {
            Ok(SendOutcome::Sealed(n)) => match self.endpoint(now, peer) {
                Some(dst) => {
                    self.stats.datagrams_out += 1;
                    Some(Transmit { dst, len: n })
                }
                None => {
                    self.stats.transmit_dropped += 1;
                    None
                }
            },
            Ok(SendOutcome::Queued) => None,
            Err(e) => {
                if matches!(e, SendError::Pending(_) | SendError::GaveUp) {
                    self.stats.pending_dropped += 1;
                }
                self.stats.transmit_dropped += 1;
                None
            }
        }
    }
}

/// Constant-time equality of two byte strings (length may leak).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
