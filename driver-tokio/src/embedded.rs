//! The embedded node: one driver task owning the UDP socket, the timer and
//! (behind a short-held lock) the `proto` node, plus the per-connection and
//! per-port state the handles park their wakers in.
//!
//! With a beacon ([`NodeConfig::beacon`]) the node's paths are chosen by
//! the same `proto` part as the daemon's ([`pilot_proto::daemon::paths`],
//! `spec/beacon.md` §8): endpoint discovery (the observed endpoint is
//! advertised to the registry), hole punching, racing direct against the
//! beacon relay, upgrade and fallback, NAT keepalives, and peers keyed by
//! node through path labels.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::Selected;
use pilot_proto::daemon::paths::{self, PathKind, PathStats, Paths, PathsConfig, UdpInput};
use pilot_proto::node::{self as pnode, ConnId, Event, Limits, NodeError, NodeStats, ResetCause};
use pilot_proto::stream::conn::StreamError;
use pilot_proto::time::Instant as PInstant;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::io::ReadBuf;
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::error::Error;
use crate::registry::{RegistryConfig, RegistryHandle};
use crate::stream::{Datagram, DatagramSocket, Listener, Stream};
use crate::udp_io::UdpIo;

/// The `proto` node type this driver runs.
pub(crate) type ProtoNode = pnode::Node<Selected, ChaCha20Rng>;

/// Datagrams queued per bound port before new ones are dropped.
pub const DATAGRAM_QUEUE: usize = 256;
/// Datagrams read from the socket per lock acquisition.
const RECV_BATCH: usize = 64;

/// Configuration of an embedded [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Our virtual address. Ignored with [`NodeConfig::registry`], which
    /// assigns it.
    pub addr: Addr,
    /// Local UDP endpoint of the tunnel socket (default `127.0.0.1:0`).
    pub bind: SocketAddr,
    /// Ed25519 identity; a fresh one is generated when `None`.
    pub identity: Option<Identity>,
    /// Tunnel encryption (PILS); on by default.
    pub encrypt: bool,
    /// Wire profile.
    pub profile: WireProfile,
    /// Table and queue bounds of the node.
    pub limits: Limits,
    /// Seed of the node's RNG; drawn from the OS when `None`.
    pub seed: Option<[u8; 32]>,
    /// Join a registry (address assigned by it; unknown peers resolved
    /// through it on `connect` and `send_to`) instead of a static address.
    pub registry: Option<RegistryConfig>,
    /// The AES-256-GCM implementation (default [`Selected::Ring`], the
    /// fastest; [`Selected::RustCrypto`] is pure Rust). Both speak the
    /// same frames.
    pub crypto: Selected,
    /// The beacon (UDP) of the rendezvous: turns on NAT traversal
    /// (`spec/beacon.md` §8) when the tunnel is encrypted. `None`: every
    /// peer is reached directly at the endpoint given or resolved.
    pub beacon: Option<SocketAddr>,
    /// NAT keepalive interval (`None`: off); default
    /// [`paths::KEEPALIVE`].
    pub nat_keepalive: Option<Duration>,
    /// A second beacon address answering discovers (the rendezvous'
    /// observer), to tell the NAT's mapping behaviour
    /// ([`Node::nat_mapping`]).
    pub beacon_observer: Option<SocketAddr>,
}

impl NodeConfig {
    /// A node with address `addr`, loopback UDP and defaults otherwise.
    pub fn new(addr: Addr) -> Self {
        NodeConfig {
            addr,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            identity: None,
            encrypt: true,
            profile: WireProfile::Current,
            limits: Limits::default(),
            seed: None,
            registry: None,
            crypto: Selected::default(),
            beacon: None,
            nat_keepalive: Some(paths::KEEPALIVE),
            beacon_observer: None,
        }
    }

    /// A node that registers with the registry at `registry` (TCP) and
    /// learns its address from it.
    pub fn with_registry(registry: RegistryConfig) -> Self {
        let mut c = NodeConfig::new(Addr::ZERO);
        c.registry = Some(registry);
        c
    }
}

/// 32 bytes from the operating system's entropy source.
pub(crate) fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(seed)
}

/// How a connection ended, as last reported by the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Closed,
    Reset(ResetCause),
}

#[derive(Default)]
struct ConnSlot {
    read: Option<Waker>,
    write: Option<Waker>,
    connected: bool,
    end: Option<End>,
}

#[derive(Default)]
struct PortSlot {
    listening: bool,
    datagrams: bool,
    accept: Option<Waker>,
    recv: Option<Waker>,
    queue: VecDeque<Datagram>,
}

/// One peer's path as the node's path part sees it ([`Node::path`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathInfo {
    /// Path in use: direct, relay, or racing (both).
    pub kind: PathKind,
    /// The peer's direct endpoint (confirmed or candidate).
    pub endpoint: Option<SocketAddr>,
    /// An authenticated frame arrived directly from `endpoint`.
    pub confirmed: bool,
    /// Path changes so far.
    pub changes: u32,
}

/// Counters of the driver (beyond the node's own [`NodeStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverStats {
    /// Datagrams dropped because the port's queue was full.
    pub datagrams_dropped: u64,
    /// UDP sends that failed (other than would-block).
    pub send_errors: u64,
}

pub(crate) struct State {
    pub(crate) node: ProtoNode,
    /// The path part, with a beacon.
    paths: Option<Paths>,
    conns: HashMap<ConnId, ConnSlot>,
    ports: HashMap<u16, PortSlot>,
    stopped: bool,
    stats: DriverStats,
    /// Peers added to the node (statically or after a resolve).
    known: HashSet<u32>,
    /// Peers whose key exchange waits for their identity key.
    identity_wanted: Vec<(u32, bool)>,
    /// Our identity public key (changes with [`Node::rotate_key`]).
    identity: [u8; 32],
    /// A key rotation is in progress.
    rotating: bool,
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl State {
    /// With paths on, gives a peer the node holds at a real address its
    /// label ([`Paths::adopt_peer`]).
    fn adopt(&mut self, now: PInstant, peer: u32, authenticated: bool) {
        if let Some(p) = self.paths.as_mut() {
            p.adopt_peer(&mut self.node, now, peer, authenticated);
        }
    }

    /// One datagram from the tunnel socket.
    fn datagram(
        &mut self,
        now: PInstant,
        from: SocketAddr,
        bytes: &mut [u8],
        reg: Option<&RegistryHandle>,
    ) {
        match self.paths.as_mut() {
            None => self.node.handle_datagram(now, from, bytes),
            Some(p) => match p.handle_udp(&mut self.node, now, from, bytes) {
                UdpInput::PublicEndpoint(ep) => {
                    if let Some(reg) = reg {
                        let _ = reg.set_listen_addr(ep);
                    }
                }
                // No trust handshakes here.
                UdpInput::HandshakeWaiting | UdpInput::None => {}
            },
        }
    }

    /// Runs due timers of the node and the path part.
    fn timers(&mut self, now: PInstant) {
        if self.node.poll_timeout().is_some_and(|(t, _)| t <= now) {
            self.node.handle_timeout(now);
        }
        if let Some(p) = self.paths.as_mut() {
            if p.poll_timeout().is_some_and(|t| t <= now) {
                p.handle_timeout(now);
            }
            let network = self.node.addr().network;
            p.send_probes(&mut self.node, now, |_| network);
            // No webhooks here: relay activations are only counted
            // (`path_stats().to_relay`).
            while p.take_relay_activated().is_some() {}
        }
    }

    /// The next datagram or batch to send, in `buf`.
    fn transmit(
        &mut self,
        now: PInstant,
        buf: &mut [u8],
        max: usize,
    ) -> Option<(SocketAddr, usize, usize)> {
        match self.paths.as_mut() {
            Some(p) => p.poll_transmit_node(&mut self.node, now, buf, max),
            None => self
                .node
                .poll_transmit_batch(now, buf, max)
                .map(|b| (b.dst, b.len, b.segment_size)),
        }
    }

    /// When a timer is due next.
    fn deadline(&self) -> Option<PInstant> {
        let n = self.node.poll_timeout().map(|(t, _)| t);
        let p = self.paths.as_ref().and_then(|p| p.poll_timeout());
        match (n, p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dispatch(&mut self, ev: Event, wake: &mut Vec<Waker>) {
        match ev {
            Event::Readable(id) => {
                if let Some(s) = self.conns.get_mut(&id) {
                    wake.extend(s.read.take());
                }
            }
            Event::Writable(id) => {
                if let Some(s) = self.conns.get_mut(&id) {
                    wake.extend(s.write.take());
                }
            }
            Event::Connected(id) => {
                if let Some(s) = self.conns.get_mut(&id) {
                    s.connected = true;
                    wake.extend(s.read.take());
                    wake.extend(s.write.take());
                }
            }
            Event::Closed(id) | Event::Reset(id, _) => {
                if let Some(s) = self.conns.get_mut(&id) {
                    if s.end.is_none() {
                        s.end = Some(match ev {
                            Event::Reset(_, c) => End::Reset(c),
                            _ => End::Closed,
                        });
                    }
                    wake.extend(s.read.take());
                    wake.extend(s.write.take());
                }
            }
            Event::Incoming { port } => {
                if let Some(p) = self.ports.get_mut(&port) {
                    wake.extend(p.accept.take());
                }
            }
            Event::Datagram {
                src,
                src_port,
                dst_port,
                data,
            } => match self.ports.get_mut(&dst_port) {
                Some(p) if p.datagrams && p.queue.len() < DATAGRAM_QUEUE => {
                    p.queue.push_back(Datagram {
                        src,
                        src_port,
                        dst_port,
                        data,
                    });
                    wake.extend(p.recv.take());
                }
                _ => self.stats.datagrams_dropped += 1,
            },
            Event::IdentityNeeded { peer } => self.identity_wanted.push((peer, false)),
            // The peer may have rotated its key: ask the registry afresh.
            Event::IdentityStale { peer } => self.identity_wanted.push((peer, true)),
            Event::Pong { .. }
            | Event::PingTimeout { .. }
            | Event::SessionUp { .. }
            | Event::SessionDown { .. }
            | Event::KeyExchangeGaveUp { .. }
            // Connection ends reach the application as Closed/Reset.
            | Event::ConnEnded { .. }
            // No registry here: the application's peers are static; a dead
            // peer's streams already ended with `ResetCause::PeerUnreachable`.
            | Event::ResolveNeeded { .. }
            | Event::PeerUnreachable { .. }
            // The embedded node never turns the private-node gate on.
            | Event::AdmissionCheck { .. } => {}
        }
    }

    fn stop(&mut self, wake: &mut Vec<Waker>) {
        self.stopped = true;
        for s in self.conns.values_mut() {
            wake.extend(s.read.take());
            wake.extend(s.write.take());
        }
        for p in self.ports.values_mut() {
            wake.extend(p.accept.take());
            wake.extend(p.recv.take());
        }
    }
}

/// State shared by the driver task and every handle.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the driver after a handle changed the node.
    notify: Notify,
    /// Handles alive; the driver stops when it reaches zero.
    handles: AtomicUsize,
    epoch: tokio::time::Instant,
    local: SocketAddr,
    registry: Option<RegistryHandle>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's clock: time since the driver's epoch.
    pub(crate) fn now(&self) -> PInstant {
        let d = tokio::time::Instant::now().saturating_duration_since(self.epoch);
        PInstant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn to_tokio(&self, t: PInstant) -> tokio::time::Instant {
        self.epoch + Duration::from_nanos(t.as_nanos())
    }

    pub(crate) fn kick(&self) {
        self.notify.notify_one();
    }
}

/// A counted reference to the shared state; the driver task ends when the
/// last handle is dropped.
pub(crate) struct Handle(pub(crate) Arc<Shared>);

impl Handle {
    fn new(shared: Arc<Shared>) -> Self {
        shared.handles.fetch_add(1, Ordering::AcqRel);
        Handle(shared)
    }
}

impl Clone for Handle {
    fn clone(&self) -> Self {
        Handle::new(self.0.clone())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.0.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.kick();
        }
    }
}

impl std::ops::Deref for Handle {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A Pilot node running inside the tokio runtime.
///
/// Cloning is cheap; the driver task runs until the node, and every
/// stream, listener and socket obtained from it, are dropped.
#[derive(Clone)]
pub struct Node {
    h: Handle,
    addr: Addr,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("udp", &self.h.local)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Binds the UDP socket, joins the registry if configured (waiting for
    /// the registration), and spawns the driver task on the current
    /// runtime.
    pub async fn start(cfg: NodeConfig) -> Result<Node, Error> {
        let socket = bind_tunnel_socket(cfg.bind)?;
        let local = socket.local_addr()?;
        let seed = match cfg.seed {
            Some(s) => s,
            None => os_seed()?,
        };
        let mut rng = ChaCha20Rng::from_seed(seed);
        let identity = cfg
            .identity
            .clone()
            .unwrap_or_else(|| Identity::generate(&cfg.crypto, &mut rng));
        let epoch = tokio::time::Instant::now();
        let (addr, registry) = match &cfg.registry {
            Some(rc) => {
                let (node_id, handle) = crate::registry::join(rc, &identity, local, epoch).await?;
                (Addr::new(0, node_id), Some(handle))
            }
            None => (cfg.addr, None),
        };
        let tunnel_key = TunnelKey::generate(&cfg.crypto, &mut rng);
        let node_rng = ChaCha20Rng::from_seed({
            let mut s = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rng, &mut s);
            s
        });
        let identity_public = *identity.public();
        let mut node = ProtoNode::new(
            PInstant::ZERO,
            pnode::NodeConfig {
                addr,
                identity: Some(identity),
                tunnel_key,
                profile: cfg.profile,
                provider: cfg.crypto,
                rng: node_rng,
                encrypt: cfg.encrypt,
                admin_token: Vec::new(),
                limits: cfg.limits,
            },
        );
        let paths = cfg.beacon.filter(|_| cfg.encrypt).map(|beacon| {
            let now = {
                let d = tokio::time::Instant::now().saturating_duration_since(epoch);
                PInstant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            };
            node.set_keepalive_idle(cfg.nat_keepalive);
            let mut p = Paths::new(
                PathsConfig {
                    beacon,
                    keepalive: cfg.nat_keepalive,
                    heartbeat: pilot_proto::registry::client::ClientConfig::default()
                        .heartbeat_interval,
                    endpoint_override: None,
                    observer: cfg.beacon_observer,
                },
                now,
            );
            if addr.node != 0 {
                p.set_node_id(addr.node, now);
            }
            p
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                node,
                paths,
                conns: HashMap::new(),
                ports: HashMap::new(),
                stopped: false,
                stats: DriverStats::default(),
                known: HashSet::new(),
                identity_wanted: Vec::new(),
                identity: identity_public,
                rotating: false,
            }),
            notify: Notify::new(),
            handles: AtomicUsize::new(0),
            epoch,
            local,
            registry,
        });
        let h = Handle::new(shared.clone());
        tokio::spawn(drive(shared, socket));
        Ok(Node { h, addr })
    }

    /// Our virtual address.
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The local UDP endpoint of the tunnel socket.
    pub fn local_udp_addr(&self) -> SocketAddr {
        self.h.local
    }

    /// Our Ed25519 identity public key (what peers pass to
    /// [`Node::add_peer`]).
    pub fn identity_key(&self) -> [u8; 32] {
        self.h.lock().identity
    }

    /// Rotates the node's Ed25519 identity key through the same `proto`
    /// parts as the daemon's `pilotctl rotate-key` (`spec/daemon.md`
    /// §2.9): a fresh identity drawn from the node's RNG, `rotate_key`
    /// signed by the current key at the registry (whose client signs
    /// everything after it with the new key), then the node signs its key
    /// exchanges with the new key and announces it to every peer it holds
    /// a session with ([`pnode::Node::set_identity`]); sessions, streams
    /// and the tunnel key stay. Peers verify the announcement against the
    /// registry's new key. Returns the new identity, for the application
    /// to persist (the embedded node keeps no files).
    ///
    /// Needs a registry. One rotation at a time. When the registry's
    /// answer is lost (the connection broke around it) the outcome is
    /// unknown: the error says so and the node keeps signing with the old
    /// key.
    pub async fn rotate_key(&self) -> Result<Identity, Error> {
        let reg = self
            .h
            .registry
            .as_ref()
            .ok_or_else(|| Error::Registry("rotate_key: no registry configured".into()))?;
        let new = {
            let mut st = self.h.lock();
            if st.rotating {
                return Err(Error::Registry(
                    "rotate_key: a key rotation is already in progress".into(),
                ));
            }
            st.rotating = true;
            st.node.new_identity()
        };
        let r = reg.rotate_key(&new).await;
        let now = self.h.now();
        let mut st = self.h.lock();
        st.rotating = false;
        r?;
        st.node.set_identity(now, &new);
        st.identity = *new.public();
        drop(st);
        self.h.kick();
        Ok(new)
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        self.h.lock().node.stats()
    }

    /// The driver's counters.
    pub fn driver_stats(&self) -> DriverStats {
        self.h.lock().stats
    }

    /// The path to `peer` (with a beacon; `None` without one, or before
    /// the first frame to or from it).
    pub fn path(&self, peer: u32) -> Option<PathInfo> {
        let st = self.h.lock();
        let v = st.paths.as_ref()?.view(peer)?;
        Some(PathInfo {
            kind: v.kind,
            endpoint: v.endpoint,
            confirmed: v.confirmed,
            changes: v.changes,
        })
    }

    /// The public endpoint the beacon observed for the tunnel socket.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        self.h.lock().paths.as_ref()?.public_endpoint()
    }

    /// The NAT's mapping behaviour, from the endpoints the beacon and its
    /// observer address ([`NodeConfig::beacon_observer`]) observed.
    pub fn nat_mapping(&self) -> Option<paths::Mapping> {
        self.h.lock().paths.as_ref().map(|p| p.mapping())
    }

    /// The path part's counters (with a beacon).
    pub fn path_stats(&self) -> Option<PathStats> {
        self.h.lock().paths.as_ref().map(|p| p.stats())
    }

    /// Number of live connections in the node.
    pub fn conn_count(&self) -> usize {
        self.h.lock().node.conn_count()
    }

    /// Adds a static peer: its virtual address, UDP endpoint and (if known)
    /// Ed25519 identity key.
    pub fn add_peer(
        &self,
        addr: Addr,
        udp: SocketAddr,
        identity: Option<[u8; 32]>,
    ) -> Result<(), Error> {
        let now = self.h.now();
        let mut st = self.h.lock();
        if st.node.add_peer(addr, udp, identity) {
            st.known.insert(addr.node);
            st.adopt(now, addr.node, false);
            Ok(())
        } else {
            Err(Error::Node(NodeError::UnknownPeer))
        }
    }

    /// Makes this node and `other` (both in this process) static peers of
    /// each other, with address, UDP endpoint and identity key: what two
    /// nodes without a registry need before they can talk.
    pub fn introduce(&self, other: &Node) -> Result<(), Error> {
        self.add_peer(
            other.addr(),
            other.local_udp_addr(),
            Some(other.identity_key()),
        )?;
        other.add_peer(
            self.addr(),
            self.local_udp_addr(),
            Some(self.identity_key()),
        )
    }

    /// Tells the registry that this node trusts `peer` (`report_trust`):
    /// from then on `peer` may resolve this node even while it is private.
    /// Needs a registry.
    pub async fn report_trust(&self, peer: u32) -> Result<(), Error> {
        let reg = self
            .h
            .registry
            .as_ref()
            .ok_or_else(|| Error::Registry("no registry configured".into()))?;
        reg.call(pilot_proto::registry::client::Call::ReportTrust(peer))
            .await
    }

    /// Opens a stream to `dst:port`. With a registry, an unknown peer is
    /// resolved first. Cancel-safe: dropping the future abandons the dial.
    pub async fn connect(&self, dst: Addr, port: u16) -> Result<Stream, Error> {
        ensure_peer(&self.h, dst).await?;
        let conn = EmbeddedConn::dial(&self.h, dst, port)?;
        std::future::poll_fn(|cx| conn.poll_connected(cx)).await?;
        Ok(Stream::from_embedded(conn))
    }

    /// Listens for streams on `port`.
    pub fn listen(&self, port: u16) -> Result<Listener, Error> {
        let port = PortClaim::claim(&self.h, port, PortUse::Listen)?;
        Ok(Listener::from_embedded(EmbeddedListener { port }))
    }

    /// Binds `port` for datagrams.
    pub fn bind_datagram(&self, port: u16) -> Result<DatagramSocket, Error> {
        let port = PortClaim::claim(&self.h, port, PortUse::Datagram)?;
        Ok(DatagramSocket::from_embedded(EmbeddedDatagrams { port }))
    }

    /// Sends one datagram from an ephemeral port.
    pub async fn send_datagram(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        ensure_peer(&self.h, dst).await?;
        send_datagram(&self.h, dst, port, None, data)
    }
}

/// With a registry, resolves a peer the node does not know yet.
async fn ensure_peer(h: &Handle, dst: Addr) -> Result<(), Error> {
    let Some(reg) = h.registry.as_ref() else {
        return Ok(());
    };
    if dst.is_broadcast() || h.lock().known.contains(&dst.node) {
        return Ok(());
    }
    let (endpoint, key) = reg.resolve(dst).await?;
    let now = h.now();
    let mut st = h.lock();
    if st.node.add_peer(dst, endpoint, key) {
        st.known.insert(dst.node);
        st.adopt(now, dst.node, false);
    }
    Ok(())
}

/// A peer's key exchange is held until its registered identity key is
/// known: look it up and give it to the node, which installs the session
/// if the held frame carries that key (`spec/crypto.md` §2.8) or drops it.
async fn fetch_identity(shared: Arc<Shared>, peer: u32, fresh: bool) {
    let Some(reg) = shared.registry.as_ref() else {
        return;
    };
    let key = reg.key(peer, fresh).await;
    {
        let now = shared.now();
        let mut st = shared.lock();
        match key {
            Ok(Some(key)) => {
                // A stranger is added on our own network.
                let network = st.node.addr().network;
                let _ = st.node.take_authenticated();
                st.node.identity_resolved(now, peer, network, key);
                let proved = st.node.take_authenticated() == Some(peer);
                if st.node.peer_endpoint(peer).is_some() {
                    st.known.insert(peer);
                    st.adopt(now, peer, proved);
                }
            }
            Ok(None) => st.node.identity_unknown(now, peer),
            Err(_) => st.node.identity_lookup_refused(now, peer),
        }
    }
    shared.kick();
}

fn send_datagram(
    h: &Handle,
    dst: Addr,
    port: u16,
    src_port: Option<u16>,
    data: &[u8],
) -> Result<(), Error> {
    let now = h.now();
    {
        let mut st = h.lock();
        if st.stopped {
            return Err(Error::Stopped);
        }
        st.node.send_datagram(now, dst, port, src_port, data)?;
    }
    h.kick();
    Ok(())
}

/// Receive and send buffer asked for on the tunnel socket (as the
/// daemon does): the default ~208 KiB holds less than one congestion
/// window of a bulk stream, so bursts were dropped by the kernel and each
/// drop cost a retransmission and a halved window. The kernel caps it at
/// `net.core.{r,w}mem_max`.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Binds the tunnel socket with large kernel buffers (best effort).
fn bind_tunnel_socket(bind: SocketAddr) -> io::Result<UdpSocket> {
    let std_socket = std::net::UdpSocket::bind(bind)?;
    let sock = socket2::SockRef::from(&std_socket);
    let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    std_socket.set_nonblocking(true)?;
    UdpSocket::from_std(std_socket)
}

// ----- the driver task ------------------------------------------------------

async fn drive(shared: Arc<Shared>, socket: UdpSocket) {
    let mut udp = match UdpIo::new(&socket) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "udp socket setup failed");
            return;
        }
    };
    let mut wake: Vec<Waker> = Vec::new();
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    loop {
        // Run due timers, then drain the node's outputs (spec/node.md §1).
        let mut blocked = false;
        udp.release_if_idle(std::time::Instant::now());
        let deadline;
        let closing = shared.handles.load(Ordering::Acquire) == 0;
        {
            let mut st = shared.lock();
            let now = shared.now();
            st.timers(now);
            loop {
                while let Some(ev) = st.node.poll_event() {
                    st.dispatch(ev, &mut wake);
                }
                let max = udp.max_segments();
                let Some((dst, len, seg)) = st.transmit(now, udp.tx_buf(), max) else {
                    break;
                };
                udp.queue(dst, len, seg);
                match udp.flush(&socket) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) => {
                        st.stats.send_errors += 1;
                        tracing::debug!(error = %e, %dst, "udp send failed");
                    }
                }
            }
            deadline = st.deadline();
            if shared.registry.is_some() {
                for (peer, fresh) in st.identity_wanted.drain(..) {
                    tokio::spawn(fetch_identity(shared.clone(), peer, fresh));
                }
            } else {
                st.identity_wanted.clear();
            }
            if closing {
                st.stop(&mut wake);
            }
        }
        for w in wake.drain(..) {
            w.wake();
        }
        if blocked {
            while udp.has_pending() {
                if let Err(e) = socket.writable().await {
                    tracing::debug!(error = %e, "udp socket failed");
                    break;
                }
                match udp.flush(&socket) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => tracing::debug!(error = %e, "udp send failed"),
                    Ok(()) => {}
                }
            }
            continue;
        }
        if closing {
            return;
        }
        let mut at = deadline.map_or_else(
            || tokio::time::Instant::now() + Duration::from_secs(3600),
            |t| shared.to_tokio(t),
        );
        // Wake up to free idle batch buffers even when no timer is due.
        if let Some(release) = udp.release_due() {
            at = at.min(tokio::time::Instant::from_std(release));
        }
        sleep.as_mut().reset(at);
        // Incoming packets first: handle work is drained at the top of
        // every iteration anyway, so a steady stream of nudges from busy
        // handles must not starve the socket (ACKs would stall).
        tokio::select! {
            biased;
            r = socket.readable() => match r {
                Ok(()) => {
                    let mut st = shared.lock();
                    let now = shared.now();
                    let reg = shared.registry.as_ref();
                    let mut read = 0;
                    while read < RECV_BATCH {
                        match udp.recv(&socket, |from, b| st.datagram(now, from, b, reg)) {
                            Ok(n) => read += n.max(1),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "udp receive failed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "udp socket failed"),
            },
            () = shared.notify.notified() => {}
            () = &mut sleep => {}
        }
    }
}

// ----- ports ----------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum PortUse {
    Listen,
    Datagram,
}

/// One use (listening or datagrams) of a bound port; the node's port is
/// unbound when the last use is dropped.
pub(crate) struct PortClaim {
    h: Handle,
    port: u16,
    kind: PortUse,
}

impl PortClaim {
    fn claim(h: &Handle, port: u16, kind: PortUse) -> Result<PortClaim, Error> {
        let mut st = h.lock();
        if st.stopped {
            return Err(Error::Stopped);
        }
        let fresh = !st.ports.contains_key(&port);
        if fresh {
            st.node.bind(port).map_err(|e| match e {
                NodeError::Port(pilot_proto::node::PortError::AlreadyBound(_)) => {
                    Error::PortInUse(port)
                }
                e => Error::Node(e),
            })?;
        }
        let slot = st.ports.entry(port).or_default();
        let used = match kind {
            PortUse::Listen => &mut slot.listening,
            PortUse::Datagram => &mut slot.datagrams,
        };
        if *used {
            return Err(Error::PortInUse(port));
        }
        *used = true;
        Ok(PortClaim {
            h: h.clone(),
            port,
            kind,
        })
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let now = self.h.now();
        let mut st = self.h.lock();
        let remove = match st.ports.get_mut(&self.port) {
            Some(slot) => {
                match self.kind {
                    PortUse::Listen => {
                        slot.listening = false;
                        slot.accept = None;
                    }
                    PortUse::Datagram => {
                        slot.datagrams = false;
                        slot.recv = None;
                        slot.queue.clear();
                    }
                }
                !slot.listening && !slot.datagrams
            }
            None => false,
        };
        if remove {
            st.ports.remove(&self.port);
            let _ = st.node.unbind(now, self.port);
        }
        drop(st);
        self.h.kick();
    }
}

/// The embedded half of a [`Listener`].
pub(crate) struct EmbeddedListener {
    port: PortClaim,
}

impl EmbeddedListener {
    pub(crate) fn port(&self) -> u16 {
        self.port.port
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<EmbeddedConn, Error>> {
        let h = &self.port.h;
        let mut st = h.lock();
        if let Some(id) = st.node.accept(self.port.port) {
            let (local_port, remote, remote_port) = st
                .node
                .conn_info(id)
                .map_or((self.port.port, Addr::ZERO, 0), |i| {
                    (i.local_port, i.remote, i.remote_port)
                });
            st.conns.insert(
                id,
                ConnSlot {
                    connected: true,
                    ..ConnSlot::default()
                },
            );
            drop(st);
            return Poll::Ready(Ok(EmbeddedConn {
                h: h.clone(),
                id,
                local_port,
                remote,
                remote_port,
                shut: false,
            }));
        }
        if st.stopped {
            return Poll::Ready(Err(Error::Stopped));
        }
        if let Some(slot) = st.ports.get_mut(&self.port.port) {
            set_waker(&mut slot.accept, cx);
        }
        Poll::Pending
    }
}

/// The embedded half of a [`DatagramSocket`].
pub(crate) struct EmbeddedDatagrams {
    port: PortClaim,
}

impl EmbeddedDatagrams {
    pub(crate) fn port(&self) -> u16 {
        self.port.port
    }

    pub(crate) async fn send_to(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        ensure_peer(&self.port.h, dst).await?;
        send_datagram(&self.port.h, dst, port, Some(self.port.port), data)
    }

    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Datagram, Error>> {
        let mut st = self.port.h.lock();
        let stopped = st.stopped;
        let Some(slot) = st.ports.get_mut(&self.port.port) else {
            return Poll::Ready(Err(Error::Stopped));
        };
        if let Some(d) = slot.queue.pop_front() {
            return Poll::Ready(Ok(d));
        }
        if stopped {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker(&mut slot.recv, cx);
        Poll::Pending
    }
}

// ----- connections ----------------------------------------------------------

/// The embedded half of a [`Stream`]: a connection id in the shared node.
pub(crate) struct EmbeddedConn {
    h: Handle,
    id: ConnId,
    pub(crate) local_port: u16,
    pub(crate) remote: Addr,
    pub(crate) remote_port: u16,
    shut: bool,
}

fn io_err(kind: io::ErrorKind, what: &'static str) -> io::Error {
    io::Error::new(kind, what)
}

impl EmbeddedConn {
    fn dial(h: &Handle, dst: Addr, port: u16) -> Result<EmbeddedConn, Error> {
        let now = h.now();
        let mut st = h.lock();
        if st.stopped {
            return Err(Error::Stopped);
        }
        let id = st.node.connect(now, dst, port)?;
        let local_port = st.node.conn_info(id).map_or(0, |i| i.local_port);
        st.conns.insert(id, ConnSlot::default());
        drop(st);
        h.kick();
        Ok(EmbeddedConn {
            h: h.clone(),
            id,
            local_port,
            remote: dst,
            remote_port: port,
            shut: false,
        })
    }

    fn poll_connected(&self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut st = self.h.lock();
        let stopped = st.stopped;
        let Some(slot) = st.conns.get_mut(&self.id) else {
            return Poll::Ready(Err(Error::Stopped));
        };
        if slot.connected {
            return Poll::Ready(Ok(()));
        }
        match slot.end {
            Some(End::Reset(ResetCause::DialTimeout)) => return Poll::Ready(Err(Error::TimedOut)),
            Some(End::Reset(ResetCause::Remote)) | Some(End::Closed) => {
                return Poll::Ready(Err(Error::Refused));
            }
            Some(End::Reset(c)) => return Poll::Ready(Err(Error::Reset(c))),
            None => {}
        }
        if stopped {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker(&mut slot.write, cx);
        Poll::Pending
    }

    /// How the connection ended, once the node has dropped it.
    fn end(st: &State, id: ConnId) -> Option<End> {
        st.conns.get(&id).and_then(|s| s.end)
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.h.lock();
        let r = st.node.read(self.id, buf.initialize_unfilled());
        match r {
            Ok(n) => {
                buf.advance(n);
                drop(st);
                if n > 0 {
                    // Freed receive space may need a window update.
                    self.h.kick();
                }
                Poll::Ready(Ok(()))
            }
            Err(NodeError::Stream(StreamError::WouldBlock)) => {
                if st.stopped {
                    return Poll::Ready(Err(io_err(io::ErrorKind::NotConnected, "node stopped")));
                }
                if let Some(s) = st.conns.get_mut(&self.id) {
                    set_waker(&mut s.read, cx);
                }
                Poll::Pending
            }
            Err(NodeError::Stream(StreamError::Reset)) => Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionReset,
                "connection reset",
            ))),
            Err(NodeError::UnknownConn) => match Self::end(&st, self.id) {
                Some(End::Reset(_)) => Poll::Ready(Err(io_err(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                ))),
                _ => Poll::Ready(Ok(())),
            },
            Err(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let now = self.h.now();
        let mut st = self.h.lock();
        match st.node.write(now, self.id, buf) {
            Ok(0) => {
                if st.stopped {
                    return Poll::Ready(Err(io_err(io::ErrorKind::NotConnected, "node stopped")));
                }
                if let Some(s) = st.conns.get_mut(&self.id) {
                    set_waker(&mut s.write, cx);
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(st);
                self.h.kick();
                Poll::Ready(Ok(n))
            }
            Err(NodeError::Stream(StreamError::Reset)) => Poll::Ready(Err(io_err(
                io::ErrorKind::ConnectionReset,
                "connection reset",
            ))),
            Err(NodeError::UnknownConn)
                if matches!(Self::end(&st, self.id), Some(End::Reset(_))) =>
            {
                Poll::Ready(Err(io_err(
                    io::ErrorKind::ConnectionReset,
                    "connection reset",
                )))
            }
            Err(NodeError::Stream(StreamError::NotEstablished)) | Err(NodeError::UnknownConn) => {
                Poll::Ready(Err(io_err(
                    io::ErrorKind::BrokenPipe,
                    "stream closed for writing",
                )))
            }
            Err(e) => Poll::Ready(Err(io::Error::other(e))),
        }
    }

    pub(crate) fn poll_shutdown(&mut self) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            let now = self.h.now();
            let _ = self.h.lock().node.shutdown(now, self.id);
            self.h.kick();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for EmbeddedConn {
    fn drop(&mut self) {
        let now = self.h.now();
        {
            let mut st = self.h.lock();
            let _ = st.node.close(now, self.id);
            st.conns.remove(&self.id);
        }
        self.h.kick();
    }
}
