//! The sans-IO daemon (`spec/daemon.md`): one [`Daemon`] composes the
//! [`Node`] (tunnel, ports, streams, datagrams), the [`RegistryClient`]
//! (registration, heartbeats, look-ups, pass-through requests), the
//! [`TrustStore`] of the trust handshake, the IPC client sessions and the
//! built-in services.
//!
//! # Call order
//!
//! Inputs are [`Daemon::handle_udp`], [`Daemon::handle_registry_bytes`],
//! [`Daemon::registry_connected`], [`Daemon::registry_disconnected`],
//! [`Daemon::ipc_open`], [`Daemon::handle_ipc_bytes`],
//! [`Daemon::ipc_consumed`], [`Daemon::ipc_closed`],
//! [`Daemon::disk_done`], [`Daemon::handle_timeout`] and
//! [`Daemon::shutdown`]; each takes `now`. After **any** input the driver
//! drains [`Daemon::poll_output`] until it returns `None` (the last
//! output of a drain is always [`Output::Timeout`]), doing what each
//! [`Output`] asks, and sleeps until that timeout or the next input. It
//! does not read a client for which [`Daemon::ipc_read_paused`] holds.
//! Time comes in only as an argument; the wall clock is
//! `unix_ms_at_epoch` plus the instant.
//!
//! Every queue is bounded (`spec/daemon.md` §7): stream data is read from
//! an overlay connection only while its client's output is below a high
//! water mark, and a client's input is not processed while the connection
//! it sends on has no room, so bulk transfers flow with bounded memory.

mod calls;
mod client;
mod conns;
mod info;
mod lifecycle;
pub mod machine;
mod network;
mod output;
pub mod paths;
mod rotate;
mod tasks;
mod trust;
mod webhook;
mod work;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use core::net::SocketAddr;
use core::time::Duration;

use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::addr::{Addr, PilotSockAddr};
use crate::crypto::identity::{Identity, TunnelKey};
use crate::crypto::provider::CryptoProvider;
use crate::node::{ConnId, Event, Limits, Node, NodeConfig, NodeError, ResetCause};
use crate::registry::auth::Identity as RegistryIdentity;
use crate::registry::client::{Call, CallId, ClientConfig, ClientEvent, RegistryClient};
use crate::registry::codec::{self, Response};
use crate::resolve::{KeyFetch, ResolveEvent, Resolver, ResolverConfig};
use crate::services::handshake::{TrustFile, TrustStore};
use crate::services::host::{HostAction, HostConfig, IoError, ServiceHost, StreamIo};
use crate::services::walltime::WallTime;
use crate::stream::conn::StreamError;
use crate::time::Instant;
use crate::wire::WireProfile;
use crate::wire::ipc::{
    Command, Direction, IpcError, IpcMessage, LENGTH_PREFIX_LEN, MAX_BODY_LEN, MAX_CLIENTS,
    MAX_CONNS_PER_CLIENT, MAX_INFLIGHT_PER_CLIENT, MAX_SEND_DATA, MAX_TAGS, parse_frame,
};

use calls::{Calls, Purpose};
pub use client::ClientId;
use client::{Client, Sending};
use conns::{ConnTable, Role, TrustOutbound, service_conn_id};
use lifecycle::Lifecycle;
pub use output::{DaemonEvent, DiskWork, DiskWrite, Output, WebhookOutput, WorkToken};
use paths::{Paths, PathsConfig, UdpInput};

/// Largest chunk read from a connection into one `Recv` push
/// (`spec/daemon.md` §7).
pub const RECV_CHUNK: usize = 64 * 1024;
/// Output bytes of a client above which the daemon stops reading that
/// client's connections and its input (`spec/daemon.md` §7).
pub const OUT_HIGH_WATER: usize = 256 * 1024;
/// Output bytes of a client above which `RecvFrom` pushes to it are dropped
/// (`spec/daemon.md` §7).
pub const OUT_DATAGRAM_CAP: usize = 4 * 1024 * 1024;
/// Most unprocessed input bytes of a client: one complete frame plus one
/// driver read of 1 MiB (`spec/daemon.md` §7).
pub const IN_MAX: usize = 2 * (LENGTH_PREFIX_LEN + crate::wire::ipc::MAX_BODY_LEN);
pub use crate::resolve::{
    KEY_LOOKUP_BURST, KEY_LOOKUP_RATE, MAX_KEY_FETCHES, MAX_PEER_KEYS, MAX_RESOLUTIONS,
    REGISTRY_UNREACHABLE, RESOLVE_TIMEOUT, RESOLVE_WAITERS,
};
/// Longest a graceful shutdown waits for FINs and the deregistration
/// (`spec/daemon.md` §8).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Registry heartbeat period by default (`spec/daemon.md` §4).
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long after a revoke push's first "no pair" answer the registry is
/// asked again before the peer is forgotten (`spec/daemon.md` §6).
pub const REVOKE_RECHECK: Duration = Duration::from_secs(2);
/// Most revoke pushes waiting for that second answer.
pub const MAX_REVOKE_RECHECKS: usize = 1024;

/// Which built-in services run (`spec/daemon.md` §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services {
    /// Echo on port 7.
    pub echo: bool,
    /// Data exchange on port 1001.
    pub dataexchange: bool,
    /// Event stream on port 1002.
    pub eventstream: bool,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            echo: true,
            dataexchange: true,
            eventstream: true,
        }
    }
}

/// Everything a [`Daemon`] is configured with.
pub struct DaemonConfig<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    /// Long-term Ed25519 identity (registry key, PILA, trust signatures).
    pub identity: Identity,
    /// Per-process X25519 tunnel key.
    pub tunnel_key: TunnelKey,
    /// Crypto provider.
    pub provider: P,
    /// Seeded RNG.
    pub rng: R,
    /// Wire profile.
    pub profile: WireProfile,
    /// Tunnel encryption.
    pub encrypt: bool,
    /// Node table and queue bounds.
    pub node_limits: Limits,
    /// Admin token for broadcast (empty disables it).
    pub admin_token: Vec<u8>,
    /// Use a registry: the driver is asked to dial it
    /// ([`Output::DialRegistry`]) and the node's address comes from the
    /// registration.
    pub registry: bool,
    /// Without a registry: this node's address (peers come from
    /// [`Daemon::add_peer`]). Ignored when `registry` is set.
    pub address: Option<Addr>,
    /// Advertised UDP endpoint `ip:port` sent to the registry.
    pub listen_addr: String,
    /// Hostname requested at registration (empty = none).
    pub hostname: String,
    /// Make the node public after registering.
    pub public: bool,
    /// Tags to set after registering (empty = leave them).
    pub tags: Vec<String>,
    /// Owner string for identity reclaim (empty = none).
    pub owner: String,
    /// Built-in services.
    pub services: Services,
    /// `trust.json` as loaded by the driver.
    pub trust: Option<TrustFile>,
    /// Whether the identity is persisted (Info `identity`).
    pub identity_persisted: bool,
    /// Unix time in milliseconds at `Instant::ZERO`.
    pub unix_ms_at_epoch: u64,
    /// Local UTC offset for the timestamps of `trust.json`, seconds.
    pub utc_offset_secs: i32,
    /// Registry heartbeat period (also the handshake-inbox poll period).
    pub heartbeat: Duration,
    /// Sign registry requests with the strong (timestamped) form.
    pub strong_signatures: bool,
    /// Most IPC clients at once.
    pub max_clients: usize,
    /// Longest a graceful shutdown waits.
    pub shutdown_grace: Duration,
    /// Peer timeout of the node (`spec/node.md` §7.1; pilot-daemon
    /// `--idle-timeout`): a silent peer's connections fail after this.
    pub peer_timeout: Duration,
    /// The beacon (UDP): endpoint discovery, hole punching and relay
    /// (`spec/beacon.md` §6). `None`: every peer is reached directly.
    pub beacon: Option<SocketAddr>,
    /// A second beacon address answering discovers only (the rendezvous'
    /// observer): the observed endpoints are compared to tell the NAT's
    /// mapping behaviour (`spec/beacon.md` §8.1).
    pub beacon_observer: Option<SocketAddr>,
    /// `--endpoint`: advertise this endpoint, not the observed one.
    pub endpoint_override: Option<SocketAddr>,
    /// NAT keepalive interval (`None`: off), default
    /// [`paths::KEEPALIVE`].
    pub keepalive: Option<Duration>,
    /// The identity in `<identity file>.next` (a key rotation that did not
    /// finish, `spec/daemon.md` §2.9): adopted if the registry answers
    /// that the identity's key was retired, else the file is removed.
    pub next_identity: Option<Identity>,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> DaemonConfig<P, R> {
    /// A configuration with defaults: registry on, current profile,
    /// encryption on, every service, heartbeat 30 s.
    pub fn new(identity: Identity, tunnel_key: TunnelKey, provider: P, rng: R) -> Self {
        DaemonConfig {
            identity,
            tunnel_key,
            provider,
            rng,
            profile: WireProfile::Current,
            encrypt: true,
            node_limits: Limits::default(),
            admin_token: Vec::new(),
            registry: true,
            address: None,
            listen_addr: String::new(),
            hostname: String::new(),
            public: false,
            tags: Vec::new(),
            owner: String::new(),
            services: Services::default(),
            trust: None,
            identity_persisted: false,
            unix_ms_at_epoch: 0,
            utc_offset_secs: 0,
            heartbeat: HEARTBEAT,
            strong_signatures: false,
            max_clients: MAX_CLIENTS,
            shutdown_grace: SHUTDOWN_GRACE,
            peer_timeout: crate::node::PEER_TIMEOUT,
            beacon: None,
            beacon_observer: None,
            endpoint_override: None,
            keepalive: Some(paths::KEEPALIVE),
            next_identity: None,
        }
    }
}

/// Why the daemon refused an operation of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DaemonError {
    /// The IPC client limit is reached; close the new connection.
    #[error("too many IPC clients")]
    TooManyClients,
    /// The daemon is shutting down.
    #[error("daemon is shutting down")]
    ShuttingDown,
    /// The peer table is full or the address is our own.
    #[error("peer not added")]
    PeerRefused,
    /// The node does not exist yet (not registered).
    #[error("node not ready")]
    NotReady,
}

/// Owner of a bound port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortOwner {
    Client(ClientId),
    Host,
}

/// A request waiting for a peer to be resolved.
#[derive(Debug)]
enum Waiter {
    Dial {
        client: ClientId,
        network: u16,
        port: u16,
    },
    SendTo {
        network: u16,
        port: u16,
        data: Vec<u8>,
    },
    TrustSend(TrustOutbound),
    /// The node asked for a fresh endpoint ([`Event::ResolveNeeded`]):
    /// updating the peer table is all there is to do.
    Refresh,
}

/// A handshake "wait for trust" request.
#[derive(Debug)]
struct TrustWaiter {
    client: ClientId,
    node: u32,
    deadline: Instant,
}

/// Parts of the node kept until the address is known
/// ([`Lifecycle::Starting`]).
struct NodeSeed<P, R> {
    provider: P,
    rng: R,
    tunnel_key: TunnelKey,
    /// `trust.json` as loaded, for the trust store.
    trust_file: Option<TrustFile>,
}

/// What exists once the address is known ([`Lifecycle::Running`]).
struct Live<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    node: Node<P, R>,
    address: Addr,
    trust: TrustStore,
}

/// The daemon's lifecycle with its node parts.
type Life<P, R> = Lifecycle<NodeSeed<P, R>, Live<P, R>>;

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Life<P, R> {
    /// The node, once the address is known.
    fn node(&self) -> Option<&Node<P, R>> {
        self.live().map(|l| &l.node)
    }

    /// The node, mutably.
    fn node_mut(&mut self) -> Option<&mut Node<P, R>> {
        self.live_mut().map(|l| &mut l.node)
    }

    /// Our address, once known.
    fn address(&self) -> Option<Addr> {
        self.live().map(|l| l.address)
    }

    /// The trust store, once the address is known.
    fn trust(&self) -> Option<&TrustStore> {
        self.live().map(|l| &l.trust)
    }

    /// The trust store, mutably.
    fn trust_mut(&mut self) -> Option<&mut TrustStore> {
        self.live_mut().map(|l| &mut l.trust)
    }
}

/// The sans-IO daemon. See the module docs for the call order.
pub struct Daemon<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    profile: WireProfile,
    identity: Identity,
    encrypt: bool,
    node_limits: Limits,
    admin_token: Vec<u8>,
    identity_persisted: bool,
    unix_ms_at_epoch: u64,
    utc_offset_secs: i32,
    max_clients: usize,
    shutdown_grace: Duration,
    peer_timeout: Duration,
    started: Instant,
    now: Instant,

    /// The phase, and the node, address and trust store once they exist.
    life: Life<P, R>,
    hostname: String,
    public: bool,
    tags: Vec<String>,
    owner: String,
    /// Non-backbone networks this node belongs to, as last heard.
    networks: BTreeSet<u16>,
    /// The next membership check of network-granted trust, and where the
    /// last one stopped (`network.rs`, `spec/services.md` §4.8).
    membership_due: Option<Instant>,
    membership_cursor: u32,
    /// Revoke pushes answered "no pair" once, to be asked again when due
    /// (peer → due, trust-store revision when first asked).
    revoke_rechecks: BTreeMap<u32, (Instant, u64)>,
    /// Membership check period (the heartbeat period).
    membership_period: Duration,

    registry: Option<RegistryClient>,
    /// The registry connection is up or being dialled (a disconnect report
    /// after our own `CloseRegistry` is ignored).
    reg_live: bool,
    registered_once: bool,
    /// Outstanding registry calls and what each is for.
    calls: Calls,
    /// Key rotation in progress and a new key not yet known to be the
    /// registry's (`rotate`).
    keys: rotate::KeyState,

    host: ServiceHost,
    trust_waiters: Vec<TrustWaiter>,
    peers: BTreeMap<u32, u16>,
    /// Peer resolutions, identity-key look-ups and what the registry told
    /// us about other nodes.
    resolver: Resolver<Waiter>,

    clients: BTreeMap<ClientId, Client>,
    next_client: u64,
    conns: ConnTable,
    ports: BTreeMap<u16, PortOwner>,

    /// Outputs other than transmits, registry and IPC bytes, in order.
    outputs: VecDeque<Output>,
    diagnostics: VecDeque<String>,
    /// Disk work handed out, and the data-exchange connection waiting for
    /// each received file or inbox record (`work.rs`).
    jobs: work::DiskJobs,
    /// Webhook events to send once their disk write succeeded
    /// (`file.received`, `message.received`), by token.
    saved_events: BTreeMap<WorkToken, webhook::Pending>,
    /// Task service state (`tasks.rs`).
    tasks: tasks::TaskState,
    /// Webhook URL, event numbering and delivery counters (`webhook.rs`).
    webhook: webhook::WebhookState,
    /// The IPC client served last (round robin of [`Output::Ipc`]).
    ipc_cursor: ClientId,
    /// The closing [`Output::Timeout`] of this drain was given.
    timeout_given: bool,
    /// Most datagrams in one transmit output ([`Self::set_max_segments`]).
    max_segments: usize,
    /// Path selection (direct, relay) when a beacon is configured and the
    /// tunnel is encrypted (`spec/beacon.md` §8).
    paths: Option<Paths>,
    keepalive: Option<Duration>,

    stats: DaemonStats,
}

/// Counters of the daemon (tunnel bytes, drops).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// UDP bytes received.
    pub bytes_recv: u64,
    /// UDP bytes sent.
    pub bytes_sent: u64,
    /// UDP datagrams received.
    pub pkts_recv: u64,
    /// UDP datagrams sent.
    pub pkts_sent: u64,
    /// `Send`/`SendTo` requests that failed (never answered).
    pub send_failures: u64,
    /// `RecvFrom` pushes dropped because a client's output was full.
    pub datagrams_dropped: u64,
    /// Peer endpoints looked up again because the node suspected them stale.
    pub endpoint_refreshes: u64,
    /// Such look-ups that failed.
    pub refresh_failures: u64,
    /// Peers declared dead (silent past the peer timeout).
    pub peers_dead: u64,
    /// Tunnels closed because trust was revoked.
    pub tunnels_revoked: u64,
    /// Revoke messages left unsent because trust was granted or asked for
    /// again before they could be written.
    pub revokes_unsent: u64,
    /// Registry `check_trust` calls for peers the private-node gate
    /// dropped (`spec/daemon.md` §6.1).
    pub gate_checks: u64,
    /// Of those, answers that admitted the peer (trust pair or shared
    /// network).
    pub gate_vouched: u64,
    /// Trust entries a network had granted, ended with that membership.
    pub network_grants_ended: u64,
    /// Diagnostic lines dropped because their queue was full.
    pub diagnostics_dropped: u64,
    /// Disk writes the driver reported failed.
    pub disk_failures: u64,
}

/// Most diagnostic lines queued for the driver's debug log.
pub const DIAGNOSTIC_QUEUE: usize = 256;

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> core::fmt::Debug for Daemon<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Daemon")
            .field("address", &self.life.address())
            .field("clients", &self.clients.len())
            .field("conns", &self.conns.len())
            .finish_non_exhaustive()
    }
}

type Reply = Result<String, String>;

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// A daemon at `now`. With a registry it asks to dial it at once
    /// ([`Output::DialRegistry`]); without one the node starts with the
    /// configured address.
    pub fn new(now: Instant, cfg: DaemonConfig<P, R>) -> Self {
        let registry = cfg.registry.then(|| {
            let rcfg = ClientConfig {
                listen_addr: cfg.listen_addr.clone(),
                owner: cfg.owner.clone(),
                hostname: cfg.hostname.clone(),
                heartbeat_interval: cfg.heartbeat,
                inbox_poll_interval: Some(cfg.heartbeat),
                push: true,
                strong_signatures: cfg.strong_signatures,
                unix_ms_at_epoch: Some(cfg.unix_ms_at_epoch),
                ..ClientConfig::default()
            };
            let mut c =
                RegistryClient::new(rcfg, RegistryIdentity::from_seed(cfg.identity.seed()), now);
            c.set_fallback_identity(
                cfg.next_identity
                    .as_ref()
                    .map(|n| RegistryIdentity::from_seed(n.seed())),
            );
            c
        });
        let mut d = Daemon {
            profile: cfg.profile,
            identity: cfg.identity,
            encrypt: cfg.encrypt,
            node_limits: cfg.node_limits,
            admin_token: cfg.admin_token,
            identity_persisted: cfg.identity_persisted,
            unix_ms_at_epoch: cfg.unix_ms_at_epoch,
            utc_offset_secs: cfg.utc_offset_secs,
            max_clients: cfg.max_clients,
            shutdown_grace: cfg.shutdown_grace,
            peer_timeout: cfg.peer_timeout,
            started: now,
            now,
            life: Lifecycle::Starting(NodeSeed {
                provider: cfg.provider,
                rng: cfg.rng,
                tunnel_key: cfg.tunnel_key,
                trust_file: cfg.trust,
            }),
            hostname: cfg.hostname,
            public: cfg.public,
            tags: cfg.tags,
            owner: cfg.owner,
            networks: BTreeSet::new(),
            membership_due: None,
            revoke_rechecks: BTreeMap::new(),
            membership_cursor: 0,
            membership_period: cfg.heartbeat,
            registry,
            reg_live: false,
            registered_once: false,
            calls: Calls::default(),
            keys: rotate::KeyState {
                next_on_disk: cfg.next_identity,
                ..Default::default()
            },
            host: ServiceHost::new(HostConfig {
                echo: cfg.services.echo,
                trust: true,
                data_exchange: cfg.services.dataexchange,
                event_stream: cfg.services.eventstream,
                tasks: true,
                ..HostConfig::new(cfg.profile)
            }),
            trust_waiters: Vec::new(),
            peers: BTreeMap::new(),
            resolver: Resolver::new(ResolverConfig::default(), now),
            clients: BTreeMap::new(),
            next_client: 1,
            conns: ConnTable::default(),
            ports: BTreeMap::new(),
            outputs: VecDeque::new(),
            diagnostics: VecDeque::new(),
            jobs: work::DiskJobs::new(),
            saved_events: BTreeMap::new(),
            tasks: tasks::TaskState::default(),
            webhook: webhook::WebhookState::default(),
            ipc_cursor: ClientId(0),
            timeout_given: false,
            max_segments: 1,
            paths: cfg.beacon.filter(|_| cfg.encrypt).map(|beacon| {
                Paths::new(
                    PathsConfig {
                        beacon,
                        keepalive: cfg.keepalive,
                        heartbeat: cfg.heartbeat,
                        endpoint_override: cfg.endpoint_override,
                        observer: cfg.beacon_observer,
                    },
                    now,
                )
            }),
            keepalive: cfg.keepalive,
            stats: DaemonStats::default(),
        };
        if d.registry.is_none() {
            if let Some(addr) = cfg.address {
                d.start_node(now, addr);
            }
        }
        d.drive(now);
        d
    }

    // ----- accessors --------------------------------------------------

    /// Our address, once known.
    pub fn address(&self) -> Option<Addr> {
        self.life.address()
    }

    /// The node, once the address is known (read-only diagnostics).
    pub fn node(&self) -> Option<&Node<P, R>> {
        self.life.node()
    }

    /// The trust store, once the address is known.
    pub fn trust(&self) -> Option<&TrustStore> {
        self.life.trust()
    }

    /// Asserts the invariants of the daemon's parts (tests).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.conns.check();
        self.jobs.check();
        let reg = self.registry.as_ref();
        self.calls.check(
            |id| reg.is_some_and(|r| r.holds_call(id)),
            |c| self.clients.contains_key(&c),
        );
        self.resolver
            .check(|id| reg.is_some_and(|r| r.holds_call(id)));
    }

    /// Counters.
    pub fn stats(&self) -> DaemonStats {
        self.stats
    }

    /// The wall clock at `now`.
    fn wall(&self, now: Instant) -> WallTime {
        let ms = crate::time::UnixTime::of_instant(
            crate::time::UnixTime::from_millis(self.unix_ms_at_epoch),
            now,
        )
        .as_millis();
        WallTime {
            unix_secs: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
            millis: (ms % 1000) as u16,
            offset_secs: self.utc_offset_secs,
        }
    }

    /// `Starting → Running`: builds the node and the trust store at
    /// `addr` (nothing happens in any other phase).
    fn start_node(&mut self, now: Instant, addr: Addr) {
        let wall = self.wall(now);
        let (identity, profile) = (&self.identity, self.profile);
        let (encrypt, admin_token, limits) = (self.encrypt, &self.admin_token, self.node_limits);
        let peer_timeout = self.peer_timeout;
        let keepalive = self.keepalive;
        let started = self.life.start(|seed| {
            let mut node = Node::new(
                now,
                NodeConfig {
                    addr,
                    identity: Some(identity.clone()),
                    tunnel_key: seed.tunnel_key,
                    profile,
                    provider: seed.provider,
                    rng: seed.rng,
                    encrypt,
                    admin_token: admin_token.clone(),
                    limits,
                },
            );
            node.set_peer_timeout(now, peer_timeout);
            node.set_keepalive_idle(keepalive);
            let mut trust = TrustStore::from_identity(profile, addr.node, identity);
            if let Some(file) = seed.trust_file {
                trust.load(&file, wall);
            }
            Live {
                node,
                address: addr,
                trust,
            }
        });
        if !started {
            return;
        }
        // Trusted peers' identity keys from trust.json: a key exchange
        // from one of them verifies without waiting for the registry.
        let keys: Vec<(u32, [u8; 32])> = self
            .life
            .trust()
            .map(|t| {
                t.trusted()
                    .iter()
                    .filter_map(|(n, t)| {
                        crate::registry::auth::decode_public_key(&t.public_key)
                            .ok()
                            .map(|k| (*n, k))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (n, k) in keys {
            self.remember_key(n, k);
        }
        self.sync_gate();
        // Built-in services are bound before any client can bind.
        let builtin: Vec<u16> = self.host.ports().collect();
        if let Some(node) = self.life.node_mut() {
            for port in builtin {
                if node.bind(port).is_ok() {
                    self.ports.insert(port, PortOwner::Host);
                }
            }
        }
    }

    /// Adds a static peer (no registry needed): its address, UDP endpoint
    /// and, if known, its Ed25519 identity key.
    pub fn add_peer(
        &mut self,
        now: Instant,
        addr: Addr,
        endpoint: SocketAddr,
        identity: Option<[u8; 32]>,
    ) -> Result<(), DaemonError> {
        self.input(now);
        let new = !self.has_peer(addr.node);
        let node = self.life.node_mut().ok_or(DaemonError::NotReady)?;
        if !node.add_peer(addr, endpoint, identity) {
            return Err(DaemonError::PeerRefused);
        }
        if new {
            self.webhook_peer_added(now, addr.node, endpoint.to_string());
        }
        self.adopt_peer(now, addr.node, false);
        self.peers.insert(addr.node, addr.network);
        if let Some(k) = identity {
            self.remember_key(addr.node, k);
        }
        self.drive(now);
        Ok(())
    }

    fn remember_key(&mut self, node: u32, key: [u8; 32]) {
        self.resolver.remember_key(node, key);
    }

    // ----- tunnel -------------------------------------------------------

    /// One UDP datagram from the tunnel socket (beacon messages share it
    /// and are ignored). PILS frames are decrypted in place.
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        self.input(now);
        self.stats.pkts_recv += 1;
        self.stats.bytes_recv += bytes.len() as u64;
        if self.paths.is_some() {
            self.routed_udp(now, from, bytes);
        } else if let Some(node) = self.life.node_mut() {
            node.handle_datagram(now, from, bytes);
        }
        self.drive(now);
    }

    /// A datagram while [`Paths`] routes ([`Paths::handle_udp`]).
    fn routed_udp(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]) {
        let (Some(paths), Some(node)) = (self.paths.as_mut(), self.life.node_mut()) else {
            return;
        };
        match paths.handle_udp(node, now, from, bytes) {
            UdpInput::None => {}
            UdpInput::PublicEndpoint(ep) => self.on_public_endpoint(now, ep),
            UdpInput::HandshakeWaiting => {
                if let Some(reg) = self.registry.as_mut() {
                    let _ = reg.poll_inbox(now);
                }
            }
        }
    }

    /// [`Paths::adopt_peer`] for the daemon's node.
    fn adopt_peer(&mut self, now: Instant, peer: u32, authenticated: bool) {
        if let (Some(paths), Some(node)) = (self.paths.as_mut(), self.life.node_mut()) {
            paths.adopt_peer(node, now, peer, authenticated);
        }
    }

    /// Pings the peers the path part wants probed ([`Paths::send_probes`]).
    fn send_probes(&mut self, now: Instant) {
        let own = self.life.address().map_or(0, |a| a.network);
        let (Some(paths), Some(node)) = (self.paths.as_mut(), self.life.node_mut()) else {
            return;
        };
        let peers = &self.peers;
        paths.send_probes(node, now, |p| peers.get(&p).copied().unwrap_or(own));
    }

    /// The beacon observed a new public endpoint: advertise it (unless
    /// `--endpoint` overrides), registering again if it changed.
    fn on_public_endpoint(&mut self, now: Instant, ep: SocketAddr) {
        let over = self
            .paths
            .as_ref()
            .and_then(|p| p.config().endpoint_override);
        if over.is_some() {
            return;
        }
        self.diagnostics_push(format!("public endpoint {ep} (observed by the beacon)"));
        if let Some(reg) = self.registry.as_mut() {
            reg.set_listen_addr(now, crate::beacon::wire_endpoint(ep).to_string());
        }
    }

    /// The path part's view of the peers (for Info).
    pub fn paths(&self) -> Option<&Paths> {
        self.paths.as_ref()
    }

    /// The next datagram to send.
    fn next_transmit(&mut self, buf: &mut [u8]) -> Option<Output> {
        let now = self.now;
        let max = self.max_segments;
        let (dst, len, seg) = match self.paths.as_mut() {
            Some(paths) => {
                let node = self.life.node_mut();
                match node {
                    Some(node) => paths.poll_transmit_node(node, now, buf, max)?,
                    None => paths.poll_transmit(now, buf)?,
                }
            }
            None => {
                let node = self.life.node_mut()?;
                if max > 1 {
                    let b = node.poll_transmit_batch(now, buf, max)?;
                    (b.dst, b.len, b.segment_size)
                } else {
                    let t = node.poll_transmit(now, buf)?;
                    (t.dst, t.len, t.len)
                }
            }
        };
        let out = self.transmit_output(dst, len, seg);
        // Sending may have produced events (writable room, closes).
        self.drive(now);
        Some(out)
    }

    /// A transmit output of `len` bytes in `seg`-byte datagrams.
    fn transmit_output(&mut self, dst: SocketAddr, len: usize, seg: usize) -> Output {
        let seg = seg.max(1);
        let segments = len.div_ceil(seg).max(1);
        self.stats.pkts_sent += segments as u64;
        self.stats.bytes_sent += len as u64;
        if self.max_segments > 1 {
            Output::TransmitBatch(crate::node::TransmitBatch {
                dst,
                len,
                segment_size: seg,
                segments,
            })
        } else {
            Output::Transmit(crate::node::Transmit { dst, len })
        }
    }

    /// Every input starts here: time only moves forward, and the drain
    /// that follows ends with a fresh [`Output::Timeout`].
    fn input(&mut self, now: Instant) {
        self.now = now.max(self.now);
        self.timeout_given = false;
    }

    /// The next thing the driver must do (`buf` should hold
    /// [`crate::node::MIN_TRANSMIT_BUFFER`] bytes: an
    /// [`Output::Transmit`] is written into it). Call after every input
    /// until it returns `None`; the last output of a drain is
    /// [`Output::Timeout`].
    pub fn poll_output(&mut self, buf: &mut [u8]) -> Option<Output> {
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if let Some(line) = self.next_diagnostic() {
            return Some(Output::Event(DaemonEvent::Diagnostic(line)));
        }
        if let Some(bytes) = self.next_registry_bytes() {
            return Some(Output::RegistryBytes(bytes));
        }
        if let Some(o) = self.next_ipc_output() {
            return Some(o);
        }
        if let Some(t) = self.next_transmit(buf) {
            return Some(t);
        }
        // A transmit may have queued more (events of the node).
        if let Some(o) = self.outputs.pop_front() {
            return Some(o);
        }
        if self.life.take_stop_announcement() {
            return Some(Output::Event(DaemonEvent::Stopped));
        }
        if !self.timeout_given {
            self.timeout_given = true;
            return Some(Output::Timeout(self.poll_timeout()));
        }
        None
    }

    /// The driver finished the disk work `token` ([`Output::Disk`]):
    /// `Err(text)` when it failed. A received file or inbox record is
    /// acknowledged to its sender only now, and a failure is reported to
    /// the sender as an error (`spec/daemon.md` §1.1).
    pub fn disk_done(&mut self, now: Instant, token: WorkToken, outcome: Result<(), String>) {
        self.input(now);
        if outcome.is_err() {
            self.stats.disk_failures += 1;
        }
        if self.rotation_disk_done(now, token, &outcome) {
            self.drive(now);
            return;
        }
        if let (Some((name, data)), Ok(())) = (self.saved_events.remove(&token), &outcome) {
            self.webhook_event(now, name, data);
        }
        if let Some(conn) = self.jobs.finished(token) {
            let wall = self.wall(now);
            if let Some(node) = self.life.node_mut() {
                let mut io = NodeIo { node, now };
                let outcome = outcome.as_ref().map(|_| ()).map_err(|e| e.as_str());
                self.host.save_finished(&mut io, conn, now, wall, outcome);
            }
            self.host_actions(now);
        }
        self.drive(now);
    }

    /// Queues disk work; `waiter` is the data-exchange connection to
    /// answer once it is done.
    fn disk_for(&mut self, write: DiskWrite, waiter: Option<ConnId>) -> WorkToken {
        let work = self.jobs.request(write, waiter);
        let token = work.token;
        self.outputs.push_back(Output::Disk(work));
        token
    }

    /// Queues disk work no connection waits for; the token tells its
    /// completion apart.
    fn disk(&mut self, write: DiskWrite) -> WorkToken {
        self.disk_for(write, None)
    }

    /// Hands over the output of the next client that has some (round
    /// robin), or asks to close a client that is done.
    fn next_ipc_output(&mut self) -> Option<Output> {
        use core::ops::Bound::{Excluded, Unbounded};
        let cursor = self.ipc_cursor;
        let pick = self
            .clients
            .range((Excluded(cursor), Unbounded))
            .chain(self.clients.range(..=cursor))
            .find(|(_, c)| !c.out.is_empty() || c.close_due())
            .map(|(id, _)| *id)?;
        self.ipc_cursor = pick;
        let c = self.clients.get_mut(&pick)?;
        if c.out.is_empty() {
            c.close_given = true;
            return Some(Output::CloseClient(pick));
        }
        let data = c.take_out();
        Some(Output::Ipc { client: pick, data })
    }

    /// Lets one [`Output::TransmitBatch`] carry up to `n` datagrams for one
    /// destination (the driver's GSO limit); 1, the default, gives only
    /// [`Output::Transmit`].
    pub fn set_max_segments(&mut self, n: usize) {
        self.max_segments = n.max(1);
    }

    // ----- registry connection -----------------------------------------

    /// The registry connection asked for by [`Action::DialRegistry`] is up.
    pub fn registry_connected(&mut self, now: Instant) {
        self.input(now);
        if let Some(r) = self.registry.as_mut() {
            r.connected(now);
        }
        self.drive(now);
    }

    /// The registry connection failed or closed. Resolutions waiting for
    /// it fail at once ([`REGISTRY_UNREACHABLE`]).
    pub fn registry_disconnected(&mut self, now: Instant) {
        self.input(now);
        if self.reg_live {
            self.reg_live = false;
            if let Some(r) = self.registry.as_mut() {
                r.disconnected(now);
            }
        }
        self.resolver.fail_all(REGISTRY_UNREACHABLE);
        self.resolver_events(now);
        self.drive(now);
    }

    /// Bytes read from the registry connection (any split; the registry
    /// client reassembles and decodes them). A stream that is not the
    /// registry's closes the connection ([`Output::CloseRegistry`]).
    pub fn handle_registry_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.input(now);
        if !self.reg_live {
            return;
        }
        if let Some(reg) = self.registry.as_mut() {
            // An error is reported by the client as a close request.
            let _ = reg.handle_bytes(now, bytes);
        }
        self.drive(now);
    }

    /// The next framed request to write to the registry connection.
    fn next_registry_bytes(&mut self) -> Option<Vec<u8>> {
        self.registry.as_mut()?.poll_bytes()
    }

    // ----- IPC ------------------------------------------------------------

    /// A new IPC client connected. Refused above the client limit and
    /// during shutdown (close the connection).
    pub fn ipc_open(&mut self, now: Instant) -> Result<ClientId, DaemonError> {
        self.input(now);
        if self.life.is_stopping() {
            return Err(DaemonError::ShuttingDown);
        }
        if self.clients.len() >= self.max_clients {
            return Err(DaemonError::TooManyClients);
        }
        let id = ClientId(self.next_client);
        self.next_client += 1;
        self.clients.insert(id, Client::default());
        Ok(id)
    }

    /// Bytes read from an IPC client (any split). The driver should not
    /// read while [`Daemon::ipc_read_paused`] holds; input beyond
    /// [`IN_MAX`] unprocessed bytes is a protocol error that closes the
    /// client.
    pub fn handle_ipc_bytes(&mut self, now: Instant, client: ClientId, bytes: &[u8]) {
        self.input(now);
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if c.should_close {
            return;
        }
        let mut bytes = bytes;
        if c.in_len() == 0
            && c.blocked.is_none()
            && c.inflight < MAX_INFLIGHT_PER_CLIENT
            && c.out_len() < OUT_HIGH_WATER
        {
            if let Some(mut s) = c.sending {
                // Inside a `Send`'s data with nothing queued before it: the
                // bytes go from the driver's read buffer straight into the
                // stream's send buffer, never through the input buffer.
                let (taken, full) =
                    Self::write_through(self.life.node_mut(), &mut self.stats, now, &mut s, bytes);
                c.sending = (s.left > 0).then_some(s);
                if full {
                    c.blocked = s.conn.map(|cid| (cid, 0));
                }
                bytes = bytes.get(taken..).unwrap_or(&[]);
            }
        }
        if c.in_len().saturating_add(bytes.len()) > IN_MAX {
            c.push_error(&"ipc: input overflow (client ignored back-pressure)");
            c.should_close = true;
            c.inbuf.clear();
            c.in_start = 0;
            return;
        }
        c.inbuf.extend_from_slice(bytes);
        self.process_input(now, client);
        self.drive(now);
    }

    /// The client disconnected: close its connections, release its ports,
    /// forget its requests (`spec/daemon.md` §2.5).
    pub fn ipc_closed(&mut self, now: Instant, client: ClientId) {
        self.input(now);
        let Some(c) = self.clients.remove(&client) else {
            return;
        };
        for cid in self.conns.detach_client(client) {
            if let Some(node) = self.life.node_mut() {
                let _ = node.close(now, cid);
            }
        }
        for port in c.ports {
            self.ports.remove(&port);
            if let Some(node) = self.life.node_mut() {
                let _ = node.unbind(now, port);
            }
        }
        self.resolver
            .retain_waiters(|w| !matches!(w, Waiter::Dial { client: c, .. } if *c == client));
        self.trust_waiters.retain(|w| w.client != client);
        self.calls.forget_client(client);
        self.rotation_forget_client(client);
        self.drive(now);
    }

    /// Whether the driver should stop reading this client for now
    /// (back-pressure, too many requests in progress, or closing).
    pub fn ipc_read_paused(&self, client: ClientId) -> bool {
        self.clients.get(&client).is_none_or(|c| {
            c.should_close
                || c.blocked.is_some()
                || c.inflight >= MAX_INFLIGHT_PER_CLIENT
                || c.out_len() >= OUT_HIGH_WATER
                || c.in_len() >= IN_MAX / 2
        })
    }

    /// The driver wrote `n` more bytes of the [`Output::Ipc`] data of
    /// `client` to its socket.
    pub fn ipc_consumed(&mut self, now: Instant, client: ClientId, n: usize) {
        self.input(now);
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        c.consumed(n);
        if c.out_len() < OUT_HIGH_WATER / 2 {
            let paused: Vec<ConnId> = core::mem::take(&mut c.paused).into_iter().collect();
            for cid in paused {
                self.pump_rx(now, cid);
            }
            self.process_input(now, client);
            self.drive(now);
        }
    }

    // ----- time -------------------------------------------------------------

    /// When to call [`Daemon::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut take = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        take(self.life.node().and_then(|n| n.poll_timeout()).map(|x| x.0));
        take(self.registry.as_ref().and_then(|r| r.poll_timeout()));
        take(self.paths.as_ref().and_then(|p| p.poll_timeout()));
        take(self.resolver.poll_timeout());
        take(self.host.poll_timeout());
        for w in &self.trust_waiters {
            take(Some(w.deadline));
        }
        take(self.life.drain_deadline());
        take(self.membership_due);
        take(self.revoke_rechecks.values().map(|(t, _)| *t).min());
        take(self.tasks.timers.poll_timeout());
        take(self.webhook.poll_timeout());
        t
    }

    /// Runs everything due at `now` (spurious calls are harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.input(now);
        if let Some(node) = self.life.node_mut() {
            if node.poll_timeout().is_some_and(|(t, _)| t <= now) {
                node.handle_timeout(now);
            }
        }
        if let Some(reg) = self.registry.as_mut() {
            reg.handle_timeout(now);
        }
        if let Some(p) = self.paths.as_mut() {
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
        }
        self.send_probes(now);
        // Resolutions that took too long.
        self.resolver.handle_timeout(now);
        self.resolver_events(now);
        // Service connections past their deadline.
        if self.host.poll_timeout().is_some_and(|t| t <= now) {
            if let Some(node) = self.life.node_mut() {
                let mut io = NodeIo { node, now };
                self.host.handle_timeout(&mut io, now);
            }
            self.host_actions(now);
        }
        self.expire_trust_waiters(now);
        if self.membership_due.is_some_and(|t| t <= now) {
            self.membership_check(now);
        }
        self.revoke_rechecks_due(now);
        self.task_deadlines(now);
        self.drive(now);
    }

    /// Asks the registry again about revoke pushes whose first answer
    /// said "no pair" ([`REVOKE_RECHECK`]).
    fn revoke_rechecks_due(&mut self, now: Instant) {
        let due: Vec<(u32, u64)> = self
            .revoke_rechecks
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(n, (_, rev))| (*n, *rev))
            .collect();
        for (node, asked_at) in due {
            self.revoke_rechecks.remove(&node);
            let _ = self.call(
                now,
                Call::CheckTrust(node),
                Purpose::RevokeCheck(node, asked_at, true),
            );
        }
    }

    // ----- actions and shutdown --------------------------------------------

    /// The next line for the driver's debug log: every dropped key
    /// exchange and frame with its reason, endpoint moves, dead peers and
    /// tunnels closed by a revoke. Bounded; overflow is counted.
    fn next_diagnostic(&mut self) -> Option<String> {
        if let Some(d) = self.diagnostics.pop_front() {
            return Some(d);
        }
        use crate::node::Diagnostic;
        let d = self.life.node_mut()?.poll_diagnostic()?;
        Some(match d {
            Diagnostic::Dropped { peer, from, reason } => format!(
                "tunnel frame claiming node {peer} from {from} dropped: {}",
                reason.name()
            ),
            Diagnostic::EndpointMoved { peer, old, new } => {
                format!("node {peer} proved its identity from {new}; endpoint moved from {old}")
            }
        })
    }

    fn diagnostics_push(&mut self, line: String) {
        if self.diagnostics.len() >= DIAGNOSTIC_QUEUE {
            self.stats.diagnostics_dropped += 1;
        } else {
            self.diagnostics.push_back(line);
        }
    }

    /// Graceful stop: FIN on every connection, deregister, then
    /// [`DaemonEvent::Stopped`] once done or after the shutdown grace period.
    pub fn shutdown(&mut self, now: Instant) {
        self.input(now);
        if self.life.is_stopping() {
            return;
        }
        let ids: Vec<ConnId> = self.conns.iter().map(|(c, _)| c).collect();
        if let Some(node) = self.life.node_mut() {
            for cid in ids {
                let _ = node.close(now, cid);
            }
        }
        let mut deregistering = false;
        if let Some(reg) = self.registry.as_mut().filter(|r| r.is_registered()) {
            deregistering = self
                .calls
                .start(reg, now, Call::Deregister, Purpose::ShutdownDeregister)
                .is_ok();
        }
        self.life.drain(now + self.shutdown_grace, deregistering);
        self.drive(now);
    }

    /// `Draining → Stopped` when the deadline passed or every connection
    /// is closed and the deregistration answered.
    fn check_stopped(&mut self, now: Instant) {
        let conns = &self.conns;
        self.life.finish_if(now, |live| {
            live.is_none_or(|l| {
                conns.iter().all(|(cid, _)| {
                    l.node.conn_info(cid).is_none_or(|i| {
                        matches!(
                            i.state,
                            crate::stream::conn::State::TimeWait
                                | crate::stream::conn::State::Closed
                        )
                    })
                })
            })
        });
    }

    // ----- the event loop ------------------------------------------------------

    /// Handles node and registry events until both are quiet.
    fn drive(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.life.node_mut().and_then(|n| n.poll_event()) {
                progressed = true;
                self.on_node_event(now, ev);
            }
            while let Some(ev) = self.registry.as_mut().and_then(|r| r.poll_event()) {
                progressed = true;
                self.on_registry_event(now, ev);
            }
            // Calls whose answer the registry client decided but could not
            // report (its event queue overflowed) fail now.
            let reg = self.registry.as_ref();
            let lost = self
                .calls
                .reconcile(|id| reg.is_some_and(|r| r.holds_call(id)));
            for (_, purpose) in lost {
                progressed = true;
                self.on_call_answer(now, purpose, Err(calls::ANSWER_LOST.to_owned()));
            }
            let reg = self.registry.as_ref();
            self.resolver
                .reconcile(now, |id| reg.is_some_and(|r| r.holds_call(id)));
            if self.resolver.has_events() {
                progressed = true;
                self.resolver_events(now);
            }
            if !progressed {
                break;
            }
        }
        self.path_events(now);
        if let Some(notes) = self.life.node().map(|n| n.security_notes()) {
            self.webhook_security(now, notes);
        }
        self.check_stopped(now);
    }

    /// `tunnel.relay_activated` for the peers the path part moved to the
    /// relay.
    fn path_events(&mut self, now: Instant) {
        while let Some(peer) = self.paths.as_mut().and_then(|p| p.take_relay_activated()) {
            self.webhook_event(
                now,
                "tunnel.relay_activated",
                serde_json::json!({"peer_node_id": peer}),
            );
        }
    }

    /// Whether the node's peer table has an entry for `peer`.
    fn has_peer(&self, peer: u32) -> bool {
        self.life
            .node()
            .is_some_and(|n| n.peer_endpoint(peer).is_some())
    }

    /// Where `peer` is reached, for `tunnel.peer_added`: its real
    /// endpoint, or `relay` when the node holds only its path label (its
    /// first frame came through the beacon).
    fn peer_endpoint_text(&self, peer: u32) -> String {
        let ep = self.life.node().and_then(|n| n.peer_endpoint(peer));
        match ep {
            Some(ep) if paths::label_peer(ep) == Some(peer) => "relay".to_owned(),
            Some(ep) => ep.to_string(),
            None => String::new(),
        }
    }

    fn on_node_event(&mut self, now: Instant, ev: Event) {
        match ev {
            Event::Datagram {
                src,
                src_port,
                dst_port,
                data,
            } => {
                if self.webhook.wanted() {
                    let ev = serde_json::json!({
                        "src_addr": src.to_string(),
                        "src_port": src_port,
                        "dst_port": dst_port,
                        "size": data.len(),
                    });
                    self.webhook_event(now, "data.datagram", ev);
                }
                let msg = IpcMessage::RecvFrom {
                    src,
                    src_port,
                    dst_port,
                    data: &data,
                };
                for c in self.clients.values_mut() {
                    if c.should_close || c.out_len() >= OUT_DATAGRAM_CAP {
                        self.stats.datagrams_dropped += 1;
                        continue;
                    }
                    let _ = c.push(&msg);
                }
            }
            Event::Incoming { port } => self.on_incoming(now, port),
            Event::Connected(cid) => self.on_connected(now, cid),
            Event::Readable(cid) => self.pump_rx(now, cid),
            Event::Writable(cid) => self.on_writable(now, cid),
            Event::Closed(cid) => self.on_closed(now, cid, None),
            Event::Reset(cid, cause) => self.on_closed(now, cid, Some(cause)),
            Event::IdentityNeeded { peer } => self.identity_needed(now, peer),
            Event::AdmissionCheck { peer } => {
                self.stats.gate_checks += 1;
                let _ = self.call(now, Call::CheckTrust(peer), Purpose::Admission(peer));
            }
            Event::IdentityStale { peer } => {
                // The peer may have rotated its key: only the registry's
                // current answer counts (`spec/crypto.md` §2.9).
                self.resolver.forget_key(peer);
                self.identity_needed(now, peer);
            }
            Event::ResolveNeeded { peer } => {
                // The endpoint may be stale (peer restarted elsewhere):
                // look it up again; a resolution in progress covers it.
                let registered = self.registry.as_ref().is_some_and(|r| r.is_registered());
                if registered && !self.resolver.is_resolving(peer) {
                    let network = self.peers.get(&peer).copied().unwrap_or(0);
                    self.stats.endpoint_refreshes += 1;
                    self.resolve_then(now, peer, network, Waiter::Refresh);
                }
            }
            Event::PeerUnreachable { peer, silent } => {
                self.stats.peers_dead += 1;
                self.diagnostics_push(format!(
                    "peer {peer} unreachable: nothing authenticated for {} ms; its connections failed and its tunnel closed",
                    silent.as_millis()
                ));
            }
            Event::SessionUp {
                peer,
                authenticated,
                rekeyed,
            } => {
                let relay = self
                    .paths
                    .as_ref()
                    .and_then(|p| p.view(peer))
                    .is_some_and(|v| v.kind == paths::PathKind::Relay);
                self.webhook_event(
                    now,
                    "tunnel.established",
                    serde_json::json!({
                        "peer_node_id": peer,
                        "authenticated": authenticated,
                        "relay": relay,
                        "rekeyed": rekeyed,
                    }),
                );
            }
            Event::ConnEnded {
                id,
                local_port,
                remote,
                remote_port,
                end,
            } => self.webhook_conn_end(now, id, local_port, remote, remote_port, end),
            Event::Pong { .. }
            | Event::PingTimeout { .. }
            | Event::SessionDown { .. }
            | Event::KeyExchangeGaveUp { .. } => {}
        }
    }

    /// A peer's key exchange needs its registered identity key: use the
    /// one we know or look it up (paced, `spec/daemon.md` §4).
    fn identity_needed(&mut self, now: Instant, peer: u32) {
        // A remembered key (trust.json, an earlier look-up) that the held
        // frame does not carry may be stale: the peer may have rotated its
        // key (`spec/crypto.md` §2.9). Only the registry's answer counts.
        let held = self.life.node().and_then(|n| n.held_identity(peer));
        if let (Some(h), Some(k)) = (held, self.resolver.key(peer)) {
            if h != k {
                self.resolver.forget_key(peer);
            }
        }
        match self.resolver.fetch_key(self.registry.as_mut(), now, peer) {
            KeyFetch::Known(key) => self.install_peer_key(now, peer, key),
            KeyFetch::Started => {}
            KeyFetch::Refused => {
                if let Some(n) = self.life.node_mut() {
                    n.identity_lookup_refused(now, peer);
                }
            }
        }
    }

    /// The registry vouches for `key` as `peer`'s identity: the node
    /// accepts a key exchange it held for it (creating the peer entry only
    /// now), or a peer it already knows learns its key.
    fn install_peer_key(&mut self, now: Instant, peer: u32, key: [u8; 32]) {
        let network = self.life.address().map_or(0, |a| a.network);
        let network = self.peers.get(&peer).copied().unwrap_or(network);
        let new = !self.has_peer(peer);
        let Some(node) = self.life.node_mut() else {
            return;
        };
        let _ = node.take_authenticated();
        if node.identity_resolved(now, peer, network, key) {
            self.peers.entry(peer).or_insert(network);
        }
        let proved = node.take_authenticated() == Some(peer);
        if new && self.has_peer(peer) {
            let endpoint = self.peer_endpoint_text(peer);
            self.webhook_peer_added(now, peer, endpoint);
        }
        self.adopt_peer(now, peer, proved);
    }

    /// Gives connection `cid` an IPC id and records it as owned by
    /// `client`.
    fn attach_client_conn(&mut self, cid: ConnId, client: ClientId, dialing: bool) -> u32 {
        self.conns.attach_client(cid, client, dialing)
    }

    fn on_incoming(&mut self, now: Instant, port: u16) {
        loop {
            let Some(cid) = self.life.node_mut().and_then(|n| n.accept(port)) else {
                return;
            };
            let info = self.life.node().and_then(|n| n.conn_info(cid));
            let Some(info) = info else {
                continue;
            };
            if self.webhook.wanted() {
                let ev = serde_json::json!({
                    "src_addr": info.remote.to_string(),
                    "src_port": info.remote_port,
                    "dst_port": port,
                    "conn_id": cid.0,
                });
                self.webhook_event(now, "conn.syn_received", ev.clone());
                // The handshake may have completed while it was queued
                // (its `Connected` is not reported then).
                if info.state == crate::stream::conn::State::Established {
                    self.webhook_event(now, "conn.established", ev);
                }
            }
            let owner = self.ports.get(&port).copied();
            match owner {
                Some(PortOwner::Client(client)) => {
                    let full = !self.clients.contains_key(&client)
                        || self.conns.client_count(client) >= MAX_CONNS_PER_CLIENT;
                    if full {
                        if let Some(node) = self.life.node_mut() {
                            let _ = node.close(now, cid);
                        }
                        continue;
                    }
                    let ipc_id = self.attach_client_conn(cid, client, false);
                    if let Some(c) = self.clients.get_mut(&client) {
                        let _ = c.push(&IpcMessage::Accept {
                            local_port: port,
                            conn_id: ipc_id,
                            remote: info.remote,
                            remote_port: info.remote_port,
                        });
                    }
                    self.pump_rx(now, cid);
                }
                Some(PortOwner::Host) => {
                    let trusted = self
                        .life
                        .trust()
                        .is_some_and(|t| t.trusted().contains_key(&info.remote.node));
                    let remote = PilotSockAddr::new(info.remote, info.remote_port);
                    if self.host.on_accept(now, port, cid, remote, trusted).is_ok() {
                        self.conns.attach(cid, Role::Host);
                        self.host_io(now, cid, true);
                        self.host_io(now, cid, false);
                    } else if let Some(node) = self.life.node_mut() {
                        let _ = node.close(now, cid);
                    }
                }
                None => {
                    if let Some(node) = self.life.node_mut() {
                        let _ = node.close(now, cid);
                    }
                }
            }
        }
    }

    fn on_connected(&mut self, now: Instant, cid: ConnId) {
        if self.webhook.wanted() {
            let info = self.life.node().and_then(|n| n.conn_info(cid));
            if let Some(info) = info.filter(|i| i.inbound) {
                let ev = serde_json::json!({
                    "src_addr": info.remote.to_string(),
                    "src_port": info.remote_port,
                    "dst_port": info.local_port,
                    "conn_id": cid.0,
                });
                self.webhook_event(now, "conn.established", ev);
            }
        }
        let Some(role) = self.conns.get_mut(cid) else {
            return;
        };
        match role {
            Role::Client {
                client,
                ipc_id,
                dialing,
            } if *dialing => {
                *dialing = false;
                let (client, ipc_id) = (*client, *ipc_id);
                self.reply_msg(now, client, &IpcMessage::DialOk { conn_id: ipc_id });
            }
            Role::TrustOut { connected, .. } => {
                *connected = true;
                self.on_writable(now, cid);
            }
            _ => {}
        }
    }

    /// Sends a deferred reply and frees the request slot.
    fn reply_msg(&mut self, now: Instant, client: ClientId, msg: &IpcMessage<'_>) {
        if let Some(c) = self.clients.get_mut(&client) {
            let _ = c.push(msg);
            let was_full = c.inflight >= MAX_INFLIGHT_PER_CLIENT;
            c.inflight = c.inflight.saturating_sub(1);
            if was_full {
                self.process_input(now, client);
            }
        }
    }

    fn reply_error(&mut self, now: Instant, client: ClientId, text: &str) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.push_error(&text);
            let was_full = c.inflight >= MAX_INFLIGHT_PER_CLIENT;
            c.inflight = c.inflight.saturating_sub(1);
            if was_full {
                self.process_input(now, client);
            }
        }
    }

    /// Reads what a connection has, as far as its consumer has room.
    fn pump_rx(&mut self, now: Instant, cid: ConnId) {
        if matches!(self.conns.get(cid), Some(Role::Host)) {
            self.host_io(now, cid, false);
            return;
        }
        let Some(role) = self.conns.get_mut(cid) else {
            return;
        };
        let Some(node) = self.life.node_mut() else {
            return;
        };
        match role {
            Role::Client {
                client,
                ipc_id,
                dialing,
            } => {
                if *dialing {
                    return;
                }
                let (client, ipc_id) = (*client, *ipc_id);
                let Some(c) = self.clients.get_mut(&client) else {
                    return;
                };
                let mut eof = false;
                loop {
                    if c.out_len() >= OUT_HIGH_WATER {
                        c.paused.insert(cid);
                        break;
                    }
                    let old = c.out.len();
                    let head = LENGTH_PREFIX_LEN + 1 + 4;
                    // Room for what is ready, not a whole chunk: the room is
                    // zero-filled first (a 64 KiB fill per read was 5 % of a
                    // daemon's time in the echo bench). At least one byte,
                    // so the read still reports the end or an error.
                    let want = node.readable(cid).clamp(1, RECV_CHUNK.min(MAX_SEND_DATA));
                    c.out.resize(old + head + want, 0);
                    let res = match c.out.get_mut(old + head..) {
                        Some(b) => node.read(cid, b),
                        None => Err(NodeError::UnknownConn),
                    };
                    match res {
                        Ok(0) => {
                            c.out.truncate(old);
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            let body = (1 + 4 + n) as u32;
                            if let Some(h) = c.out.get_mut(old..old + head) {
                                h[..4].copy_from_slice(&body.to_be_bytes());
                                h[4] = Command::Recv.byte();
                                h[5..9].copy_from_slice(&ipc_id.to_be_bytes());
                            }
                            c.out.truncate(old + head + n);
                        }
                        Err(NodeError::Stream(StreamError::WouldBlock)) => {
                            c.out.truncate(old);
                            break;
                        }
                        Err(_) => {
                            c.out.truncate(old);
                            eof = true;
                            break;
                        }
                    }
                }
                if eof {
                    // End of stream: one CloseOk push, then the connection
                    // is finished for the client.
                    let _ = c.push(&IpcMessage::CloseOk { conn_id: ipc_id });
                    c.paused.remove(&cid);
                    // The Send at the front can never complete: drop it.
                    c.abandon_send(cid);
                    self.conns.detach(cid);
                    let _ = node.close(now, cid);
                    self.process_input(now, client);
                }
            }
            Role::Host => {}
            Role::TrustOut { .. } => {
                // Nothing is expected back; discard.
                let mut chunk = [0u8; 1024];
                while let Ok(n) = node.read(cid, &mut chunk) {
                    if n == 0 {
                        break;
                    }
                }
            }
        }
    }

    fn on_writable(&mut self, now: Instant, cid: ConnId) {
        if matches!(self.conns.get(cid), Some(Role::Host)) {
            self.host_io(now, cid, true);
            return;
        }
        let unsent_revoke = match self.conns.get(cid) {
            Some(Role::TrustOut {
                out,
                written: 0,
                connected: true,
            }) => self.revoke_obsolete(out),
            _ => false,
        };
        if unsent_revoke {
            self.conns.detach(cid);
            if let Some(node) = self.life.node_mut() {
                let _ = node.close(now, cid);
            }
            self.stats.revokes_unsent += 1;
            return;
        }
        let Some(role) = self.conns.get_mut(cid) else {
            return;
        };
        let Some(node) = self.life.node_mut() else {
            return;
        };
        match role {
            Role::Client { client, .. } => {
                let client = *client;
                let blocked = self
                    .clients
                    .get(&client)
                    .is_some_and(|c| c.blocked.is_some_and(|(b, _)| b == cid));
                if blocked {
                    self.process_input(now, client);
                }
            }
            Role::Host => {}
            Role::TrustOut {
                out,
                written,
                connected,
            } => {
                if !*connected || *written >= out.msg.len() {
                    return;
                }
                let rest = out.msg.get(*written..).unwrap_or(&[]);
                let w = node.write(now, cid, rest).unwrap_or(0);
                *written += w;
                if *written >= out.msg.len() {
                    // Message written: close (the FIN follows the data).
                    // The role stays until the stream ends: if it breaks
                    // before the peer had it all (the tunnel dropped by a
                    // revoke it read first), the fallback still runs.
                    let _ = node.close(now, cid);
                    if let Some((client, peer)) = out.notify.take() {
                        self.handshake_sent(now, client, peer);
                    }
                }
            }
        }
    }

    fn on_closed(&mut self, now: Instant, cid: ConnId, cause: Option<ResetCause>) {
        let Some(role) = self.conns.get(cid) else {
            return;
        };
        match *role {
            Role::Client {
                client,
                dialing: true,
                ..
            } => {
                self.conns.detach(cid);
                let text = match cause {
                    Some(ResetCause::DialTimeout) => "dial timeout",
                    Some(ResetCause::PathMtu) => {
                        "path MTU too small: even the smallest segments are lost on the way"
                    }
                    Some(ResetCause::Remote) | None => "connection refused",
                    // Dead peer, tunnel closed by a revoke, peer restarted.
                    Some(c) => c.describe(),
                };
                self.reply_error(now, client, text);
            }
            Role::Client { .. } => {
                // Deliver what is left and end the stream.
                self.pump_rx(now, cid);
            }
            Role::Host => {
                // Let the service see the end of stream, then forget it.
                self.host_io(now, cid, false);
                self.host.on_closed(cid);
                self.conns.detach(cid);
            }
            Role::TrustOut { connected, .. } => {
                if let Some(Role::TrustOut { out, written, .. }) = self.conns.detach(cid) {
                    // Written and closed normally: the peer has it.
                    if cause.is_none() && written >= out.msg.len() {
                        return;
                    }
                    let reason = if connected {
                        "connection reset"
                    } else {
                        "connection refused"
                    };
                    self.trust_failed(now, out, reason);
                }
            }
        }
    }

    // ----- IPC request processing ---------------------------------------------

    /// Processes complete frames at the front of the client's input while
    /// nothing holds it back.
    fn process_input(&mut self, now: Instant, client: ClientId) {
        loop {
            let Some(c) = self.clients.get_mut(&client) else {
                return;
            };
            if c.should_close
                || c.inflight >= MAX_INFLIGHT_PER_CLIENT
                || c.out_len() >= OUT_HIGH_WATER
            {
                return;
            }
            let resume = c.blocked.take();
            if let Some(mut s) = c.sending {
                // The front is the data of a `Send` being written through.
                let avail = c.in_len().min(s.left);
                if avail == 0 {
                    return;
                }
                let start = c.in_start;
                let data = c
                    .inbuf
                    .get(start..start.saturating_add(avail))
                    .unwrap_or(&[]);
                let (taken, full) =
                    Self::write_through(self.life.node_mut(), &mut self.stats, now, &mut s, data);
                c.input_consumed(taken);
                c.sending = (s.left > 0).then_some(s);
                if full {
                    c.blocked = s.conn.map(|cid| (cid, 0));
                    return;
                }
                continue;
            }
            let inbuf = core::mem::take(&mut c.inbuf);
            let start = c.in_start;
            let rest = inbuf.get(start..).unwrap_or(&[]);
            let step = match parse_frame(rest) {
                Ok(None) => match send_head(rest) {
                    // A `Send` whose data is still arriving: its data is
                    // written through as it comes (`spec/daemon.md` §7).
                    Some((conn_id, left)) if Command::Send.is_available_in(self.profile) => {
                        Step::WriteThrough(self.send_target(client, conn_id), left)
                    }
                    _ => Step::NeedMore,
                },
                Err(e) => Step::Fatal(e),
                Ok(Some((body, used))) => {
                    if body.is_empty() {
                        Step::Done(used)
                    } else {
                        match self.handle_frame(now, client, body, resume) {
                            Some(b) => Step::Blocked(b),
                            None => Step::Done(used),
                        }
                    }
                }
            };
            let Some(c) = self.clients.get_mut(&client) else {
                return;
            };
            c.inbuf = inbuf;
            match step {
                Step::NeedMore => return,
                Step::Fatal(e) => {
                    c.push_error(&e);
                    c.should_close = true;
                    c.inbuf.clear();
                    c.in_start = 0;
                    return;
                }
                Step::Done(used) => c.input_consumed(used),
                Step::WriteThrough(conn, left) => {
                    c.input_consumed(SEND_HEAD_LEN);
                    c.sending = Some(Sending { conn, left });
                }
                Step::Blocked(b) => {
                    c.blocked = Some(b);
                    return;
                }
            }
        }
    }

    /// Handles one frame body. Returns `Some` when a `Send` could not be
    /// completed (the connection is full): the frame stays at the front.
    fn handle_frame(
        &mut self,
        now: Instant,
        client: ClientId,
        body: &[u8],
        resume: Option<(ConnId, usize)>,
    ) -> Option<(ConnId, usize)> {
        let msg = match IpcMessage::decode(body) {
            Ok(m) => m,
            Err(e) => {
                if e.needs_reply() {
                    self.push_error(client, &e);
                }
                return None;
            }
        };
        let cmd = msg.command();
        if !msg.is_available_in(self.profile) || cmd.direction() == Direction::FromDaemon {
            self.push_error(client, &IpcError::UnknownCommand(cmd.byte()));
            return None;
        }
        match msg {
            IpcMessage::Bind { port } => self.ipc_bind(client, port),
            IpcMessage::Dial { addr, port } => self.ipc_dial(now, client, addr, port),
            IpcMessage::Send { conn_id, data } => {
                return self.ipc_send(now, client, conn_id, data, resume);
            }
            IpcMessage::Close { conn_id } => self.ipc_close(now, client, conn_id),
            IpcMessage::SendTo {
                dst,
                dst_port,
                data,
            } => self.ipc_send_to(now, dst, dst_port, data),
            IpcMessage::Info => {
                let json = self.info_json(now);
                self.push(client, &IpcMessage::InfoOk(&json));
            }
            IpcMessage::Health => {
                let json = self.health_json(now);
                self.push(client, &IpcMessage::HealthOk(&json));
            }
            IpcMessage::Handshake(h) => self.ipc_handshake(now, client, h),
            IpcMessage::ResolveHostname(h) => self.ipc_call(
                now,
                client,
                Command::ResolveHostnameOk,
                "resolve_hostname",
                Call::ResolveHostname(h.to_owned()),
            ),
            IpcMessage::SetHostname(h) => self.ipc_call(
                now,
                client,
                Command::SetHostnameOk,
                "set_hostname",
                Call::SetHostname(h.to_owned()),
            ),
            IpcMessage::SetVisibility(f) => self.ipc_call(
                now,
                client,
                Command::SetVisibilityOk,
                "set_visibility",
                Call::SetVisibility(f.is_set()),
            ),
            IpcMessage::Deregister => self.ipc_call(
                now,
                client,
                Command::DeregisterOk,
                "deregister",
                Call::Deregister,
            ),
            IpcMessage::SetTags(json) => match serde_json::from_str::<Vec<String>>(json) {
                Err(e) => self.push_error(client, &format!("set_tags: invalid JSON: {e}")),
                Ok(tags) if tags.len() > MAX_TAGS => self.push_error(
                    client,
                    &format!("set_tags: maximum {MAX_TAGS} tags allowed"),
                ),
                Ok(tags) => self.ipc_call(
                    now,
                    client,
                    Command::SetTagsOk,
                    "set_tags",
                    Call::SetTags(tags),
                ),
            },
            IpcMessage::Network(n) => self.ipc_network(now, client, n),
            IpcMessage::Managed(m) => self.ipc_managed(now, client, m),
            IpcMessage::Broadcast {
                network,
                port,
                token,
                data,
            } => self.ipc_broadcast(now, client, network, port, token.as_bytes(), data),
            IpcMessage::SetTaskExec(f) => self.ipc_set_task_exec(client, f.is_set()),
            IpcMessage::SetWebhook(url) => self.ipc_set_webhook(client, url),
            IpcMessage::Cancel(_) => {}
            IpcMessage::PreferDirect { node_id } => self.ipc_prefer_direct(now, client, node_id),
            IpcMessage::RotateKey => self.ipc_rotate_key(now, client),
            other => {
                let name = other.command().name();
                self.push_error(client, &format!("{name}: not supported by this daemon"));
            }
        }
        None
    }

    fn push(&mut self, client: ClientId, msg: &IpcMessage<'_>) {
        if let Some(c) = self.clients.get_mut(&client) {
            let _ = c.push(msg);
        }
    }

    fn push_error(&mut self, client: ClientId, reason: &dyn core::fmt::Display) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.push_error(reason);
        }
    }

    fn ipc_bind(&mut self, client: ClientId, port: u16) {
        let Some(node) = self.life.node_mut() else {
            self.push_error(client, &"bind: daemon not registered yet");
            return;
        };
        match node.bind(port) {
            Ok(()) => {
                self.ports.insert(port, PortOwner::Client(client));
                if let Some(c) = self.clients.get_mut(&client) {
                    c.ports.insert(port);
                }
                self.push(client, &IpcMessage::BindOk { port });
            }
            Err(NodeError::Port(e)) => self.push_error(client, &e),
            Err(e) => self.push_error(client, &format!("bind: {e}")),
        }
    }

    fn ipc_dial(&mut self, now: Instant, client: ClientId, addr: Addr, port: u16) {
        if self.life.node().is_none() {
            self.push_error(client, &"dial: daemon not registered yet");
            return;
        }
        let quota = self.conns.client_count(client) >= MAX_CONNS_PER_CLIENT;
        if quota {
            self.push_error(
                client,
                &format!("dial: per-client connection quota ({MAX_CONNS_PER_CLIENT}) reached"),
            );
            return;
        }
        if addr.is_broadcast()
            || addr.node == 0
            || Some(addr.node) == self.life.address().map(|a| a.node)
        {
            self.push_error(client, &format!("dial: cannot dial {addr}"));
            return;
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.inflight += 1;
        }
        if self.peers.contains_key(&addr.node) {
            self.start_dial(now, client, addr, port);
        } else {
            self.resolve_then(
                now,
                addr.node,
                addr.network,
                Waiter::Dial {
                    client,
                    network: addr.network,
                    port,
                },
            );
        }
    }

    fn start_dial(&mut self, now: Instant, client: ClientId, addr: Addr, port: u16) {
        let Some(node) = self.life.node_mut() else {
            return;
        };
        if !self.clients.contains_key(&client) {
            return;
        }
        match node.connect(now, addr, port) {
            Ok(cid) => {
                self.attach_client_conn(cid, client, true);
            }
            Err(e) => self.reply_error(now, client, &format!("dial: {e}")),
        }
    }

    fn ipc_send(
        &mut self,
        now: Instant,
        client: ClientId,
        conn_id: u32,
        data: &[u8],
        resume: Option<(ConnId, usize)>,
    ) -> Option<(ConnId, usize)> {
        let cid = self.send_target(client, conn_id)?;
        let node = self.life.node_mut()?;
        let mut off = match resume {
            Some((r, o)) if r == cid => o,
            _ => 0,
        };
        while off < data.len() {
            match node.write(now, cid, data.get(off..).unwrap_or(&[])) {
                Ok(0) => return Some((cid, off)),
                Ok(n) => off += n,
                Err(_) => {
                    self.stats.send_failures += 1;
                    return None;
                }
            }
        }
        None
    }

    /// The connection a `Send` of `client` on `conn_id` writes to: one
    /// the client owns and has finished dialling. Otherwise the send
    /// fails (counted).
    fn send_target(&mut self, client: ClientId, conn_id: u32) -> Option<ConnId> {
        self.life.node()?;
        let cid = self.conns.by_ipc(conn_id).filter(|&cid| {
            matches!(
                self.conns.get(cid),
                Some(Role::Client { client: o, dialing: false, .. }) if *o == client
            )
        });
        if cid.is_none() {
            self.stats.send_failures += 1;
        }
        cid
    }

    /// Writes `data`, the next bytes of the `Send` being written through
    /// (`s`), to its connection; bytes beyond the frame are left. Returns
    /// the bytes taken and whether the connection is full (the rest waits
    /// for room). Data for no connection is taken and dropped; a write
    /// error counts one send failure and drops the rest of the frame.
    fn write_through(
        node: Option<&mut Node<P, R>>,
        stats: &mut DaemonStats,
        now: Instant,
        s: &mut Sending,
        data: &[u8],
    ) -> (usize, bool) {
        let data = data.get(..s.left.min(data.len())).unwrap_or(&[]);
        if let Some(cid) = s.conn {
            let Some(node) = node else {
                s.conn = None;
                stats.send_failures += 1;
                s.left -= data.len();
                return (data.len(), false);
            };
            let mut off = 0;
            while off < data.len() {
                match node.write(now, cid, data.get(off..).unwrap_or(&[])) {
                    Ok(0) => {
                        s.left -= off;
                        return (off, true);
                    }
                    Ok(n) => off += n,
                    Err(_) => {
                        stats.send_failures += 1;
                        s.conn = None;
                        break;
                    }
                }
            }
        }
        s.left -= data.len();
        (data.len(), false)
    }

    /// Closes connection `conn_id` (the id `info` lists). The IPC socket is
    /// private to the daemon's user, so any client may close any of the
    /// daemon's connections (ours, `spec/daemon.md` §2.3): another client's
    /// stream ends for its owner with a `CloseOk` push, a service's stream
    /// is closed like any other.
    fn ipc_close(&mut self, now: Instant, client: ClientId, conn_id: u32) {
        if let Some(cid) = self.conns.by_ipc(conn_id) {
            let owner = match self.conns.detach(cid) {
                Some(Role::Client { client: o, .. }) => Some(o),
                _ => None,
            };
            let mut resume = None;
            if let Some(o) = owner {
                if let Some(c) = self.clients.get_mut(&o) {
                    c.paused.remove(&cid);
                    if o != client {
                        let _ = c.push(&IpcMessage::CloseOk { conn_id });
                    }
                    // The Send at the front can never complete: drop it.
                    if c.abandon_send(cid) {
                        resume = Some(o);
                    }
                }
            }
            if let Some(node) = self.life.node_mut() {
                let _ = node.close(now, cid);
            }
            if let Some(o) = resume {
                self.process_input(now, o);
            }
        } else {
            let other = self.conns.own_by_listed_id(conn_id);
            if let (Some(cid), Some(node)) = (other, self.life.node_mut()) {
                // A service's or a trust message's stream: its owner sees
                // the close through the node's events.
                let _ = node.close(now, cid);
            }
        }
        // Always answered, even for unknown ids (`spec/daemon.md` §2.3).
        self.push(client, &IpcMessage::CloseOk { conn_id });
    }

    /// PreferDirect (`spec/daemon.md` §3.2): race the direct path against
    /// the relay again at once (punch through the beacon) and look the
    /// peer's endpoint up again. The reply names the path in use now.
    fn ipc_prefer_direct(&mut self, now: Instant, client: ClientId, node_id: u32) {
        let raced = self
            .paths
            .as_mut()
            .is_some_and(|p| p.prefer_direct(now, node_id));
        self.send_probes(now);
        let network = self.peers.get(&node_id).copied();
        if let (Some(network), true) = (network, self.registry.is_some()) {
            self.resolve_then(now, node_id, network, Waiter::Refresh);
        }
        let path = match self.paths.as_ref() {
            Some(p) => p.view(node_id).map_or("relay", |v| v.kind.name()),
            None => "direct",
        };
        let json = serde_json::json!({
            "node_id": node_id,
            "path": path,
            "probing": raced,
        })
        .to_string();
        self.push(client, &IpcMessage::PreferDirectOk(&json));
    }

    fn ipc_send_to(&mut self, now: Instant, dst: Addr, port: u16, data: &[u8]) {
        if self.life.node().is_none() || dst.is_broadcast() {
            self.stats.send_failures += 1;
            return;
        }
        if self.peers.contains_key(&dst.node) {
            self.send_datagram(now, dst, port, data);
        } else {
            self.resolve_then(
                now,
                dst.node,
                dst.network,
                Waiter::SendTo {
                    network: dst.network,
                    port,
                    data: data.to_vec(),
                },
            );
        }
    }

    fn send_datagram(&mut self, now: Instant, dst: Addr, port: u16, data: &[u8]) {
        if let Some(node) = self.life.node_mut() {
            if node.send_datagram(now, dst, port, None, data).is_err() {
                self.stats.send_failures += 1;
            }
        }
    }

    fn ipc_call(
        &mut self,
        now: Instant,
        client: ClientId,
        reply: Command,
        op: &'static str,
        call: Call,
    ) {
        let Some(reg) = self.registry.as_mut() else {
            self.push_error(client, &format!("{op}: no registry configured"));
            return;
        };
        if reg.is_unreachable() {
            self.push_error(client, &format!("{op}: {REGISTRY_UNREACHABLE}"));
            return;
        }
        match self
            .calls
            .start(reg, now, call, Purpose::Ipc { client, reply, op })
        {
            Ok(_) => {
                if let Some(c) = self.clients.get_mut(&client) {
                    c.inflight += 1;
                }
            }
            Err(e) => self.push_error(client, &format!("{op}: registry: {}", e.error)),
        }
    }

    // ----- peer resolution ------------------------------------------------------

    /// Resolves `node` at the registry (lookup for the key and, for a
    /// public node, the endpoint; then resolve for a private one) and runs
    /// `waiter` once done.
    fn resolve_then(&mut self, now: Instant, node: u32, network: u16, waiter: Waiter) {
        let peer = Addr::new(network, node);
        if let Err((w, reason)) = self
            .resolver
            .resolve(self.registry.as_mut(), now, peer, waiter)
        {
            self.fail_waiter(now, node, w, &reason);
        }
    }

    /// Carries out what the resolver decided.
    fn resolver_events(&mut self, now: Instant) {
        while let Some(ev) = self.resolver.poll_event() {
            match ev {
                ResolveEvent::Found {
                    node,
                    network,
                    endpoint,
                    key,
                    waiters,
                } => self.resolution_done(now, node, network, endpoint, key, waiters),
                ResolveEvent::Failed {
                    node,
                    reason,
                    waiters,
                } => {
                    for w in waiters {
                        self.fail_waiter(now, node, w, &reason);
                    }
                }
                ResolveEvent::KeyFound { node, key } => self.install_peer_key(now, node, key),
                ResolveEvent::KeyUnknown { node } => {
                    if let Some(n) = self.life.node_mut() {
                        n.identity_unknown(now, node);
                    }
                }
            }
        }
    }

    fn fail_waiter(&mut self, now: Instant, node: u32, waiter: Waiter, reason: &str) {
        match waiter {
            Waiter::Dial { client, .. } => {
                self.reply_error(now, client, &format!("resolve node {node}: {reason}"));
            }
            Waiter::SendTo { .. } => self.stats.send_failures += 1,
            Waiter::TrustSend(out) => self.trust_failed(now, out, reason),
            Waiter::Refresh => self.stats.refresh_failures += 1,
        }
    }

    fn resolution_done(
        &mut self,
        now: Instant,
        node: u32,
        network: u16,
        endpoint: SocketAddr,
        key: Option<[u8; 32]>,
        waiters: Vec<Waiter>,
    ) {
        let addr = Addr::new(network, node);
        let before = match self.paths.as_ref() {
            Some(p) => p.view(node).and_then(|v| v.endpoint),
            None => self.life.node().and_then(|n| n.peer_endpoint(node)),
        };
        let new = !self.has_peer(node);
        let added = self
            .life
            .node_mut()
            .is_some_and(|n| n.add_peer(addr, endpoint, key));
        if added && new {
            self.webhook_peer_added(now, node, endpoint.to_string());
        }
        if added {
            self.adopt_peer(now, node, false);
        }
        if added && before.is_some_and(|b| b != endpoint) {
            // The registry has the peer elsewhere: it probably restarted
            // and holds no session with us (`spec/crypto.md` §13 row 16).
            if let Some(n) = self.life.node_mut() {
                n.endpoint_changed(now, node);
            }
        }
        if !added {
            for w in waiters {
                self.fail_waiter(now, node, w, "peer table full");
            }
            return;
        }
        self.peers.insert(node, network);
        for w in waiters {
            match w {
                Waiter::Dial {
                    client,
                    network,
                    port,
                } => self.start_dial(now, client, Addr::new(network, node), port),
                Waiter::SendTo {
                    network,
                    port,
                    data,
                } => self.send_datagram(now, Addr::new(network, node), port, &data),
                Waiter::TrustSend(out) => self.open_trust_out(now, node, out),
                Waiter::Refresh => {}
            }
        }
    }

    // ----- registry events ---------------------------------------------------------

    fn on_registry_event(&mut self, now: Instant, ev: ClientEvent) {
        match ev {
            ClientEvent::Dial => {
                self.reg_live = true;
                self.outputs.push_back(Output::DialRegistry);
            }
            ClientEvent::CloseConnection => {
                self.reg_live = false;
                self.outputs.push_back(Output::CloseRegistry);
            }
            ClientEvent::Registered {
                node_id, address, ..
            } => {
                self.rotation_on_registered();
                self.on_registered(now, node_id, address);
            }
            ClientEvent::IdentityAdopted { public_key } => {
                self.on_identity_adopted(now, &public_key);
            }
            ClientEvent::HandshakeInbox {
                requests,
                responses,
            } => {
                let wall = self.wall(now);
                let mut fx = Vec::new();
                if let Some(store) = self.life.trust_mut() {
                    for r in requests {
                        fx.extend(store.on_relayed_request(r.from_node_id, &r.justification, wall));
                    }
                    for r in responses {
                        fx.extend(store.on_relayed_response(r.from_node_id, r.accept, wall));
                    }
                }
                self.apply_trust(now, fx);
            }
            ClientEvent::TrustRevoked { by } => {
                let asked_at = self
                    .life
                    .trust()
                    .filter(|t| t.trusted().contains_key(&by))
                    .map(|t| t.revision());
                if let Some(rev) = asked_at {
                    let _ = self.call(
                        now,
                        Call::CheckTrust(by),
                        Purpose::RevokeCheck(by, rev, false),
                    );
                }
            }
            ClientEvent::CallDone { id, result } if self.resolver.owns(id) => {
                self.resolver
                    .on_call_done(self.registry.as_mut(), now, id, result);
                self.resolver_events(now);
            }
            ClientEvent::CallDone { id, result } => self.on_call_done(now, id, result),
            ClientEvent::RegistrationFailed { .. }
            | ClientEvent::Reregistering
            | ClientEvent::RequestDropped { .. } => {}
        }
    }

    fn on_registered(&mut self, now: Instant, node_id: u32, address: String) {
        let addr = address
            .parse::<Addr>()
            .unwrap_or_else(|_| Addr::new(0, node_id));
        if self.life.node().is_none() {
            self.start_node(now, addr);
        }
        if let Some(p) = self.paths.as_mut() {
            p.set_node_id(node_id, now);
        }
        self.sync_gate();
        let again = self.registered_once;
        self.registered_once = true;
        self.refresh_own_networks(now, node_id);
        self.membership_due = Some(now + self.membership_period);
        // A public daemon announces itself only once the registry says it
        // is public: before that, dials to it are refused as private.
        let mut announce_later = false;
        if self.public {
            let announce = Purpose::Announce {
                node_id,
                address: address.clone(),
            };
            announce_later = matches!(
                self.call(now, Call::SetVisibility(true), announce),
                Some(Ok(_))
            );
        }
        if !self.tags.is_empty() {
            let tags = self.tags.clone();
            self.fire(now, Call::SetTags(tags));
        }
        if again {
            if !self.hostname.is_empty() {
                let h = self.hostname.clone();
                self.fire(now, Call::SetHostname(h));
            }
            let peers: Vec<u32> = self
                .life
                .trust()
                .map(|t| t.trusted().keys().copied().collect())
                .unwrap_or_default();
            for p in peers {
                self.fire(now, Call::ReportTrust(p));
            }
        }
        if !announce_later {
            self.webhook_registered(now, &address);
            self.outputs
                .push_back(Output::Event(DaemonEvent::Registered { node_id, address }));
        }
    }

    /// Asks the driver to persist hostname, visibility, tags, whether
    /// tasks are enabled and the webhook URL (`spec/daemon.md` §1.2).
    pub(super) fn save_profile(&mut self) {
        let j = serde_json::json!({
            "hostname": self.hostname,
            "public": self.public,
            "tags": self.tags,
            "task_exec": self.tasks.enabled,
            "webhook": self.webhook.url.as_deref().unwrap_or_default(),
        });
        self.disk(DiskWrite::Profile(j.to_string()));
    }

    /// A registry call whose answer is not needed.
    fn fire(&mut self, now: Instant, call: Call) {
        let _ = self.call(now, call, Purpose::Fire);
    }

    /// Makes a registry call for `purpose` (`None`: no registry).
    fn call(
        &mut self,
        now: Instant,
        call: Call,
        purpose: Purpose,
    ) -> Option<Result<CallId, calls::Refused>> {
        let reg = self.registry.as_mut()?;
        Some(self.calls.start(reg, now, call, purpose))
    }

    fn on_call_done(&mut self, now: Instant, id: CallId, result: Result<Response, String>) {
        if let Some(purpose) = self.calls.finish(id) {
            self.on_call_answer(now, purpose, result);
        }
    }

    /// Acts on the answer of a call made for `purpose`.
    fn on_call_answer(&mut self, now: Instant, purpose: Purpose, result: Result<Response, String>) {
        match purpose {
            Purpose::Announce { node_id, address } => {
                if let Err(e) = &result {
                    self.diagnostics_push(format!("set_visibility after registration failed: {e}"));
                }
                self.webhook_registered(now, &address);
                self.outputs
                    .push_back(Output::Event(DaemonEvent::Registered { node_id, address }));
            }
            Purpose::Ipc { client, reply, op } => {
                let out: Reply = match result {
                    Ok(resp) => {
                        match &resp {
                            Response::SetHostnameOk { hostname, .. } => {
                                self.hostname = hostname.clone();
                                self.save_profile();
                            }
                            Response::SetVisibilityOk { visibility, .. } => {
                                self.public = visibility == "public";
                                self.save_profile();
                                self.sync_gate();
                            }
                            Response::SetTagsOk { tags, .. } => {
                                self.tags = tags.clone().unwrap_or_default();
                                self.save_profile();
                            }
                            other => self.note_network_reply(now, other),
                        }
                        codec::encode_response(&resp)
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                            .ok_or_else(|| format!("{op}: bad registry reply"))
                    }
                    Err(e) => Err(format!("{op}: registry: {e}")),
                };
                match out {
                    Ok(json) => {
                        let msg = match reply {
                            Command::ResolveHostnameOk => IpcMessage::ResolveHostnameOk(&json),
                            Command::SetHostnameOk => IpcMessage::SetHostnameOk(&json),
                            Command::SetVisibilityOk => IpcMessage::SetVisibilityOk(&json),
                            Command::DeregisterOk => IpcMessage::DeregisterOk(&json),
                            Command::NetworkOk => IpcMessage::NetworkOk(&json),
                            Command::ManagedOk => IpcMessage::ManagedOk(&json),
                            _ => IpcMessage::SetTagsOk(&json),
                        };
                        self.reply_msg(now, client, &msg);
                    }
                    Err(text) => self.reply_error(now, client, &text),
                }
            }
            Purpose::TrustKey {
                bytes,
                source,
                known,
            } => {
                let (key, networks) = match result {
                    Ok(Response::LookupOk(ok)) => (
                        crate::registry::auth::decode_public_key(&ok.public_key).ok(),
                        ok.networks,
                    ),
                    _ => (None, Vec::new()),
                };
                if let Some((n, k)) = key.and_then(|k| {
                    crate::services::handshake::HandshakeMessage::decode(&bytes, self.profile)
                        .ok()
                        .map(|m| (m.node_id, k))
                }) {
                    self.remember_key(n, k);
                }
                self.on_trust_sender_lookup(now, bytes, source, key.or(known), networks);
            }
            Purpose::TrustOwnNetworks {
                bytes,
                source,
                key,
                peer_networks,
            } => {
                let shared = match result {
                    Ok(Response::LookupOk(ok)) => {
                        trust::smallest_shared_network(&ok.networks, &peer_networks)
                    }
                    _ => None,
                };
                self.process_trust_message(now, &bytes, source, key, shared);
            }
            Purpose::KeyBackfill(node) => {
                if let Ok(Response::LookupOk(ok)) = result {
                    if let Ok(k) = crate::registry::auth::decode_public_key(&ok.public_key) {
                        self.remember_key(node, k);
                        let fx = self
                            .life
                            .trust_mut()
                            .map(|t| t.key_learned(node, &k))
                            .unwrap_or_default();
                        self.apply_trust(now, fx);
                    }
                }
            }
            Purpose::Admission(node) => {
                if let Ok(Response::CheckTrustOk { trusted: true }) = result {
                    self.stats.gate_vouched += 1;
                    if let Some(n) = self.life.node_mut() {
                        n.gate_mut().vouch(now, node);
                    }
                }
            }
            // A first "no pair" may be a moment of the registry's between
            // the peer's revoke and its report of the trust it gave again
            // (a request and an accept crossed the revoke): ask once more
            // before forgetting the peer (at once if too many wait).
            Purpose::RevokeCheck(node, asked_at, false)
                if matches!(result, Ok(Response::CheckTrustOk { trusted: false }))
                    && (self.revoke_rechecks.len() < MAX_REVOKE_RECHECKS
                        || self.revoke_rechecks.contains_key(&node)) =>
            {
                self.revoke_rechecks
                    .insert(node, (now + REVOKE_RECHECK, asked_at));
            }
            Purpose::RevokeCheck(node, asked_at, _) => {
                if let Ok(Response::CheckTrustOk { trusted: false }) = result {
                    let fx = self
                        .life
                        .trust_mut()
                        .map(|t| t.on_registry_revoke(node, asked_at))
                        .unwrap_or_default();
                    self.apply_trust(now, fx);
                }
            }
            Purpose::Broadcast(b) => self.broadcast_members(now, *b, result),
            Purpose::OwnNetworks => {
                if let Ok(resp) = &result {
                    self.note_network_reply(now, resp);
                    if matches!(resp, Response::LookupOk(_)) {
                        self.end_grants_outside(now);
                    }
                }
            }
            Purpose::PeerMembership { peer, network } => {
                if let Ok(Response::LookupOk(ok)) = &result {
                    if ok.node_id == peer && !ok.networks.contains(&network) {
                        self.end_network_grant(now, peer, network);
                    }
                }
            }
            Purpose::HandshakeRelay { client, peer } => match result {
                Ok(_) => self.handshake_sent(now, client, peer),
                // Our earlier request still waits in the peer's inbox at
                // the registry (one per sender): it is on its way.
                Err(e) if e.contains("handshake request already pending") => {
                    self.handshake_sent(now, client, peer)
                }
                Err(e) => {
                    self.reply_error(now, client, &format!("handshake request: registry: {e}"))
                }
            },
            Purpose::Fire => {}
            Purpose::Rotate => self.on_rotate_answer(now, result),
            Purpose::ShutdownDeregister => {
                if result.is_ok() {
                    self.webhook_event(now, "node.deregistered", serde_json::Value::Null);
                }
                self.life.deregistered();
            }
        }
    }
}

/// [`StreamIo`] for the service host over the node.
struct NodeIo<'a, P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    node: &'a mut Node<P, R>,
    now: Instant,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> StreamIo for NodeIo<'_, P, R> {
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, IoError> {
        match self.node.read(conn, buf) {
            Ok(n) => Ok(n),
            Err(NodeError::Stream(StreamError::WouldBlock)) => Err(IoError::WouldBlock),
            Err(_) => Err(IoError::Closed),
        }
    }

    fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, IoError> {
        match self.node.write(self.now, conn, data) {
            Ok(n) => Ok(n),
            Err(NodeError::Stream(StreamError::NotEstablished)) => Err(IoError::WouldBlock),
            Err(_) => Err(IoError::Closed),
        }
    }

    fn shutdown(&mut self, conn: ConnId) {
        let _ = self.node.shutdown(self.now, conn);
    }

    fn close(&mut self, conn: ConnId) {
        let _ = self.node.close(self.now, conn);
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Daemon<P, R> {
    /// Lets the service host work on `cid` (`writable`: room to write,
    /// else: data or end of stream to read), then carries out its actions.
    fn host_io(&mut self, now: Instant, cid: ConnId, writable: bool) {
        let wall = self.wall(now);
        if let Some(node) = self.life.node_mut() {
            let mut io = NodeIo { node, now };
            if writable {
                self.host.on_writable(&mut io, cid, now, wall);
            } else {
                self.host.on_readable(&mut io, cid, now, wall);
            }
        }
        self.host_actions(now);
    }

    /// Carries out what the service host asked for. Files and inbox
    /// records become disk work ([`DiskWrite::ReceivedFile`],
    /// [`DiskWrite::Inbox`]); the connection waits for
    /// [`Daemon::disk_done`] before its ACK (or error) goes out.
    fn host_actions(&mut self, now: Instant) {
        while let Some(a) = self.host.poll_action() {
            match a {
                HostAction::SaveReceivedFile {
                    conn,
                    name,
                    data,
                    from,
                    original,
                } => {
                    // `file.received` once the file is on disk.
                    let event = self.webhook.wanted().then(|| {
                        let data = serde_json::json!({
                            "filename": original,
                            "size": data.len(),
                            "path": format!("received/{name}"),
                        });
                        ("file.received", data)
                    });
                    let token = self.disk_for(
                        DiskWrite::ReceivedFile {
                            name,
                            data,
                            from: from.addr,
                        },
                        Some(conn),
                    );
                    if let Some(event) = event {
                        self.saved_events.insert(token, event);
                    }
                }
                HostAction::SaveInbox {
                    conn,
                    name,
                    json,
                    from,
                    kind,
                    size,
                } => {
                    // `message.received` once the record is on disk.
                    let event = self.webhook.wanted().then(|| {
                        let data = serde_json::json!({
                            "type": kind.to_string(),
                            "from": from.addr.to_string(),
                            "size": size,
                        });
                        ("message.received", data)
                    });
                    let token = self.disk_for(DiskWrite::Inbox { name, json }, Some(conn));
                    if let Some(event) = event {
                        self.saved_events.insert(token, event);
                    }
                }
                HostAction::TrustMessage { from, bytes } => {
                    self.on_trust_bytes(now, bytes, from.node);
                }
                HostAction::TaskFrame {
                    conn,
                    from,
                    frame_type,
                    payload,
                } => self.on_task_frame(now, conn, from, frame_type, &payload),
                HostAction::Event(e) => self.webhook_pubsub(now, e),
            }
        }
    }
}

enum Step {
    NeedMore,
    Fatal(IpcError),
    Done(usize),
    Blocked((ConnId, usize)),
    /// A `Send` header (to this connection, `None`: dropped) with this
    /// many data bytes still arriving.
    WriteThrough(Option<ConnId>, usize),
}

/// Bytes of a `Send` frame before its data: length prefix, command byte,
/// connection id.
const SEND_HEAD_LEN: usize = LENGTH_PREFIX_LEN + 1 + 4;

/// The connection id and data length of the incomplete `Send` frame at the
/// front of `rest`, once its header is in and it carries data.
fn send_head(rest: &[u8]) -> Option<(u32, usize)> {
    let head = rest.get(..SEND_HEAD_LEN)?;
    let (prefix, body) = head.split_first_chunk::<LENGTH_PREFIX_LEN>()?;
    let len = u32::from_be_bytes(*prefix) as usize;
    let (&cmd, id) = body.split_first()?;
    let id: [u8; 4] = id.try_into().ok()?;
    (cmd == Command::Send.byte() && len > 1 + 4 && len <= MAX_BODY_LEN)
        .then(|| (u32::from_be_bytes(id), len - 1 - 4))
}
