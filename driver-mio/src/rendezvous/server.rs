//! The rendezvous event loop: one mio `Poll` driving the registry over TCP
//! and the beacon over UDP, with the durable [`Store`] on a writer thread.
//!
//! Per loop iteration: read every ready connection and datagram, hand the
//! complete requests to the registry, run due timers, and turn the changes
//! they produced into one [`ChangeSet`] for the writer thread. The writer
//! commits everything queued while its previous commit ran in **one**
//! transaction (group commit) and wakes the loop when it is durable. Each
//! reply waits for the change set holding the last non-lazy change made
//! before it (its own, or one it could observe); replies of requests that
//! changed nothing while nothing is in flight go at once. The loop never
//! waits for the disk (`spec/registry.md` §11.2).
//!
//! With a store shared by several frontends (PostgreSQL, §11.3) the loop
//! also applies the records other frontends commit (delivered by the
//! store's follower thread), turns the handshake and revocation hints they
//! imply into pushes for nodes connected here, takes new node IDs from
//! leased blocks, reaps only while it holds the reaper lock, and survives
//! a lost database: requests are refused with `store unavailable` until
//! the writer has reconnected and the state is reloaded.
//!
//! Connection limits (`spec/registry.md` §1.1): a per-source cap, a global
//! cap that evicts the idlest connection of the heaviest source when a
//! lighter source arrives, a deadline for a request frame to arrive in full
//! and an idle timeout that only complete requests reset.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use pilot_proto::beacon::server::{BeaconServer, ServerConfig as BeaconConfig};
use pilot_proto::registry::auth::{PublicKey, check_public_key};
use pilot_proto::registry::framing::{
    self, PushKind, error_frame, next_request, register_keys, reply_frame,
};
use pilot_proto::registry::limits::IDLE_TIMEOUT;
use pilot_proto::registry::records::ChangeSet;
use pilot_proto::registry::server::{
    Change, Config as RegistryConfig, Effect, Notification, Registry, State,
};
use pilot_proto::time::{Instant, UnixTime};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::metrics::{
    Activity, ActivityLog, ConnStats, DashboardShared, Levels, Outcome, RendezvousMetrics,
    dashboard_json, online_count,
};
use super::pgstore::PgStore;
use super::store::{Committed, FollowEvent, FollowSink, RedbStore, RemoteRow, Store, StoreError};
use crate::http_endpoint::{Handler, HttpEndpoint};

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const SIGNALS: Token = Token(2);
const WAKER: Token = Token(3);
const OBSERVER: Token = Token(4);
const FIRST_CONN: usize = 5;

/// Stop reading a connection while this many reply bytes wait for it.
const WBUF_HIGH: usize = 1 << 20;
/// Read chunk size.
const READ_CHUNK: usize = 16 * 1024;
/// Largest UDP datagram.
const DATAGRAM_MAX: usize = 65_544;
/// How often idle connections are swept and lazy changes flushed.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Lazy changes buffered before they are written regardless of the timer.
const MAX_LAZY_PENDING: usize = 10_000;
/// Record writes queued for the writer beyond which no further requests
/// are read until it catches up (bounds memory under overload).
const MAX_QUEUED_WRITES: u64 = 200_000;
/// Default most connections from one source address (IPv6: one /64).
pub const DEFAULT_MAX_CONNS_PER_IP: usize = 64;
/// Default time a request frame may take to arrive in full.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// A new node-ID block is leased when fewer IDs than this are left.
const LEASE_LOW: u32 = 4096;
/// Pause between reconnection attempts to a lost shared store.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);

/// `true` when `store` names a PostgreSQL database rather than a file.
pub fn is_store_url(store: &std::path::Path) -> bool {
    store
        .to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

/// The store `cfg` names: a PostgreSQL URL (`postgres://…`) or a redb
/// file path.
pub fn open_store(cfg: &ServerConfig, now: UnixTime) -> Result<Box<dyn Store>, StoreError> {
    if is_store_url(&cfg.store_path) {
        let url = cfg.store_path.to_str().unwrap_or_default();
        Ok(Box::new(PgStore::open(url, now)?))
    } else {
        Ok(Box::new(RedbStore::open(&cfg.store_path, now)?))
    }
}

/// How a store is named in logs: a URL without its user and password.
fn store_label(store: &std::path::Path) -> String {
    if is_store_url(store) {
        let s = store.to_str().unwrap_or_default();
        let rest = s.split_once("://").map_or(s, |(_, r)| r);
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        format!("postgresql://{host}")
    } else {
        store.display().to_string()
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TCP address of the registry.
    pub registry_addr: SocketAddr,
    /// UDP address of the beacon.
    pub beacon_addr: SocketAddr,
    /// A second UDP address answering beacon discovers only (the
    /// *observer*, `spec/beacon.md` §3.7), so daemons can tell whether
    /// their NAT's mapping depends on the destination; `None`: off.
    pub observer_addr: Option<SocketAddr>,
    /// Peer beacons of the same network (`spec/beacon.md` §3.4, §3.8).
    /// When set, the beacon records each node it serves in the registry
    /// (`NodeRecord::beacon`), and hands punches and relays for nodes the
    /// shared state places on a peer to that peer.
    pub beacon_peers: Vec<SocketAddr>,
    /// This beacon's address as its peers know it; `None`: the bound
    /// beacon address unless it is a wildcard (then nothing is recorded).
    pub beacon_advertise: Option<SocketAddr>,
    /// Path of the redb store file, or a `postgres://` URL of a database
    /// shared by several frontends.
    pub store_path: PathBuf,
    /// Registry behaviour (admin token, strict signatures, …).
    pub registry: RegistryConfig,
    /// Most concurrent registry connections. When full, a source with
    /// fewer connections than the heaviest one evicts that one's idlest
    /// connection; otherwise the new connection is closed at once.
    pub max_connections: usize,
    /// Most concurrent connections from one source address (IPv6: /64).
    pub max_conns_per_ip: usize,
    /// A connection that completes no request for this long is closed
    /// (`spec/registry.md` §1.1); trickled bytes do not count.
    pub idle_timeout: Duration,
    /// A request frame must arrive in full within this time of its first
    /// byte, or the connection is closed.
    pub frame_timeout: Duration,
    /// Stop on SIGTERM/SIGINT. Off when the server runs inside another
    /// program (the daemon's embedded registry), which stops it with a
    /// [`StopHandle`] instead.
    pub handle_signals: bool,
    /// Where to serve the Prometheus text endpoint (`/metrics`); `None`:
    /// not served.
    pub metrics_addr: Option<SocketAddr>,
    /// Where to serve the HTML dashboard (`/`, `/dashboard.json`); `None`:
    /// not served.
    pub http_addr: Option<SocketAddr>,
    /// Serve the registry over TLS with this PEM certificate chain and
    /// private key; `None`: plain TCP.
    pub tls: Option<(PathBuf, PathBuf)>,
}

impl ServerConfig {
    /// Defaults for everything but the store path.
    pub fn new(store_path: PathBuf) -> Self {
        ServerConfig {
            registry_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            beacon_addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            observer_addr: None,
            beacon_peers: Vec::new(),
            beacon_advertise: None,
            store_path,
            registry: RegistryConfig::default(),
            max_connections: 4096,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            idle_timeout: IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            handle_signals: true,
            metrics_addr: None,
            http_addr: None,
            tls: None,
        }
    }
}

/// Failures that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Socket or poll failure.
    #[error("io: {0}")]
    Io(#[from] io::Error),
    /// The store failed; no reply is sent for unsaved changes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's writer thread is gone.
    #[error("store writer stopped unexpectedly")]
    WriterGone,
    /// The TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

/// The wall clock as a registry instant (nanoseconds since the Unix epoch,
/// `spec/registry.md`).
pub fn wall_now() -> UnixTime {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixTime::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The beacon's monotonic-style clock at wall time `now`. The beacon only
/// measures intervals, so any epoch does; here it is the Unix epoch, and
/// this is the one place the two kinds of time are converted.
fn beacon_time(now: UnixTime) -> Instant {
    Instant::from_nanos(now.as_nanos())
}

/// Asks a running [`Server`] to commit what is pending and return from
/// [`Server::run`], from any thread.
#[derive(Clone, Debug)]
pub struct StopHandle {
    waker: std::sync::Arc<mio::Waker>,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StopHandle {
    /// Requests the stop; returns at once.
    pub fn stop(&self) {
        self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    source: IpAddr,
    rbuf: Vec<u8>,
    /// Replies ready to write.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Replies waiting for a change set to be durable: (its sequence
    /// number, the framed reply, the request it answers or `None` for a
    /// push), in order.
    held: VecDeque<(u64, Vec<u8>, Option<ReqMark>)>,
    held_bytes: usize,
    /// Accepted, or last complete request handled.
    last_active: std::time::Instant,
    /// When the first byte of the incomplete frame in `rbuf` was seen.
    frame_started: Option<std::time::Instant>,
    /// Stop reading; close once the queued replies are written.
    closing: bool,
    /// Reading suspended because too many replies wait, or the writer is
    /// too far behind.
    paused: bool,
    /// The peer's FIN was reported: read until `WouldBlock` (or 0), since
    /// no further readiness event will come.
    read_closed: bool,
    /// The TLS session when the listener serves TLS (`--tls-cert`).
    tls: Option<Box<rustls::ServerConnection>>,
    /// What this loop turn's early read ([`Server::prefetch`]) found;
    /// cleared at the end of the turn.
    pre_read: Option<PreRead>,
}

/// The outcome of a connection's early read in this loop turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PreRead {
    /// Bytes came and the socket may hold more.
    More,
    /// Bytes came and the socket is empty (the read did not fill the
    /// chunk): no read until the next readiness event.
    Drained,
    /// Nothing to read.
    WouldBlock,
    /// End of stream, or a read error: close.
    Closed,
}

/// Checks the keys of new registrations on a second thread while the
/// event loop checks its own share (the check, a scalar multiplication,
/// is most of a new registration's CPU, `Registry::key_checked`).
struct KeyChecker {
    to: mpsc::Sender<Vec<PublicKey>>,
    from: mpsc::Receiver<Vec<PublicKey>>,
}

/// Fewer keys than this in a loop turn are left to the registry
/// (`spec/registry.md` §12).
const MIN_PARALLEL_KEYS: usize = 4;

impl KeyChecker {
    fn start() -> io::Result<KeyChecker> {
        let (to, jobs) = mpsc::channel::<Vec<PublicKey>>();
        let (done, from) = mpsc::channel();
        std::thread::Builder::new()
            .name("rv-keycheck".into())
            .spawn(move || {
                for mut keys in jobs {
                    keys.retain(|k| check_public_key(k).is_ok());
                    if done.send(keys).is_err() {
                        return;
                    }
                }
            })?;
        Ok(KeyChecker { to, from })
    }

    /// The keys of `keys` that pass `check_public_key`: half checked on
    /// the helper thread, half on this one.
    fn check(&self, mut keys: Vec<PublicKey>) -> Vec<PublicKey> {
        let theirs = keys.split_off(keys.len() / 2);
        let sent = self.to.send(theirs).is_ok();
        keys.retain(|k| check_public_key(k).is_ok());
        if sent && let Ok(more) = self.from.recv() {
            keys.extend(more);
        }
        keys
    }
}

impl Conn {
    /// Keeps the `n` bytes a read put at the start of `chunk`; returns
    /// whether the socket is now empty: a plain-TCP read that did not fill
    /// the chunk emptied it, and the next byte raises a new (edge-triggered)
    /// readiness event — unless the peer's FIN was reported.
    fn took(&mut self, chunk: &[u8], n: usize) -> bool {
        self.rbuf.extend_from_slice(&chunk[..n]);
        if self.frame_started.is_none() {
            self.frame_started = Some(std::time::Instant::now());
        }
        n < chunk.len() && self.tls.is_none() && !self.read_closed
    }

    fn backlog(&self) -> usize {
        self.wbuf.len() - self.wpos + self.held_bytes
    }

    /// Moves replies whose change set is settled (up to `settled`) to the
    /// write buffer; a reply whose change set failed (`failed` ranges) is
    /// replaced by `error`, a push of one is dropped.
    fn release(
        &mut self,
        settled: u64,
        failed: &[(u64, u64)],
        error: &[u8],
        metrics: &RendezvousMetrics,
    ) -> bool {
        let mut any = false;
        while self.held.front().is_some_and(|(seq, _, _)| *seq <= settled) {
            if let Some((seq, bytes, req)) = self.held.pop_front() {
                self.held_bytes -= bytes.len();
                let lost = failed.iter().any(|(a, b)| (*a..=*b).contains(&seq));
                if !lost {
                    self.wbuf.extend_from_slice(&bytes);
                } else if req.is_some() {
                    self.wbuf.extend_from_slice(error);
                }
                if let Some(mut m) = req {
                    if lost {
                        m.outcome = Outcome::Unavailable;
                    }
                    m.done(metrics);
                }
                any = true;
            }
        }
        any
    }
}

/// The connection-limit key of a source: the address, or its /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// A request whose reply is on its way: counted and timed when the reply
/// is handed to the socket buffer.
#[derive(Clone, Copy, Debug)]
struct ReqMark {
    ty: Option<usize>,
    outcome: Outcome,
    started: std::time::Instant,
}

impl ReqMark {
    fn done(self, metrics: &RendezvousMetrics) {
        metrics.request(self.ty, self.outcome);
        metrics.latency(self.ty, self.started.elapsed());
    }
}

/// A request to the writer thread.
enum WriterMsg {
    /// Commit this change set (sequence number, set).
    Commit(u64, ChangeSet),
    /// Lease a fresh block of node IDs (shared stores).
    Lease,
    /// Reconnect if needed, then load the whole state again.
    Reload,
}

/// What the writer thread reports, in order.
enum WriterEvent {
    /// Every change set up to this sequence number is durable, in a
    /// commit that reported `done` (key revisions of a shared store).
    Committed { upto: u64, done: Committed },
    /// The change sets `from..=upto` were not stored.
    Failed { from: u64, upto: u64, error: String },
    /// A leased node-ID block.
    Lease(u32, u32),
    /// No block could be leased (asked again later).
    LeaseFailed,
    /// The state reloaded after [`WriterMsg::Reload`].
    Reloaded(Box<State>),
}

/// What the writer thread shares with the loop.
struct WriterShared {
    /// Record writes shipped but not yet durable.
    queued_writes: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<StoreError>>,
    events: Mutex<Vec<WriterEvent>>,
}

/// The store on its own thread: change sets in, durability reports out.
struct Writer {
    tx: Option<mpsc::Sender<WriterMsg>>,
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(
        store: Box<dyn Store>,
        waker: Arc<mio::Waker>,
        metrics: Arc<RendezvousMetrics>,
    ) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<WriterMsg>();
        let shared = Arc::new(WriterShared {
            queued_writes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            events: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rendezvous-store".into())
            .spawn(move || writer_loop(store, rx, &sh, &waker, &metrics))?;
        Ok(Writer {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    fn send(&self, seq: u64, set: ChangeSet) -> Result<(), ServerError> {
        self.shared
            .queued_writes
            .fetch_add(set.writes.len() as u64, Ordering::SeqCst);
        self.msg(WriterMsg::Commit(seq, set))
    }

    fn msg(&self, m: WriterMsg) -> Result<(), ServerError> {
        match &self.tx {
            Some(tx) => tx.send(m).map_err(|_| ServerError::WriterGone),
            None => Err(ServerError::WriterGone),
        }
    }

    fn events(&self) -> Vec<WriterEvent> {
        self.shared
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// The writer's failure, if it failed.
    fn failure(&self) -> Option<ServerError> {
        if !self.shared.failed.load(Ordering::SeqCst) {
            return None;
        }
        let err = self.shared.error.lock().ok().and_then(|mut e| e.take());
        Some(err.map_or(ServerError::WriterGone, ServerError::Store))
    }

    /// Commits everything queued and stops the thread.
    fn finish(&mut self) -> Result<(), ServerError> {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The writer thread: commits everything queued while its previous commit
/// ran in one transaction (group commit). After a recoverable failure it
/// fails every change set until the loop asks for a reload, then
/// reconnects and reloads.
fn writer_loop(
    mut store: Box<dyn Store>,
    rx: mpsc::Receiver<WriterMsg>,
    sh: &WriterShared,
    waker: &mio::Waker,
    metrics: &RendezvousMetrics,
) {
    let report = |ev: WriterEvent| {
        if let Ok(mut e) = sh.events.lock() {
            e.push(ev);
        }
        let _ = waker.wake();
    };
    let mut down: Option<String> = None;
    let mut queue: VecDeque<WriterMsg> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(m) => queue.push_back(m),
                Err(_) => return,
            }
        }
        while let Ok(m) = rx.try_recv() {
            queue.push_back(m);
        }
        // The leading run of commits goes into one transaction.
        let mut batch: Vec<(u64, ChangeSet)> = Vec::new();
        while let Some(WriterMsg::Commit(..)) = queue.front() {
            if let Some(WriterMsg::Commit(seq, set)) = queue.pop_front() {
                batch.push((seq, set));
            }
        }
        if !batch.is_empty() {
            let first = batch.first().map_or(0, |(seq, _)| *seq);
            let last = batch.last().map_or(0, |(seq, _)| *seq);
            let writes: u64 = batch.iter().map(|(_, s)| s.writes.len() as u64).sum();
            let sets: Vec<ChangeSet> = batch.into_iter().map(|(_, s)| s).collect();
            let started = std::time::Instant::now();
            let result = match &down {
                Some(why) => Err(StoreError::Db(why.clone())),
                None => store.apply_committed(&sets),
            };
            metrics.commit(started.elapsed(), writes, result.is_ok());
            sh.queued_writes.fetch_sub(writes, Ordering::SeqCst);
            match result {
                Ok(done) => report(WriterEvent::Committed { upto: last, done }),
                Err(e) if down.is_some() || store.recoverable() => {
                    if down.is_none() {
                        tracing::error!(error = %e, "store commit failed; refusing requests until it is back");
                        down = Some(e.to_string());
                    }
                    report(WriterEvent::Failed {
                        from: first,
                        upto: last,
                        error: e.to_string(),
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed; stopping");
                    if let Ok(mut slot) = sh.error.lock() {
                        *slot = Some(e);
                    }
                    sh.failed.store(true, Ordering::SeqCst);
                    let _ = waker.wake();
                    return;
                }
            }
            continue;
        }
        match queue.pop_front() {
            Some(WriterMsg::Lease) if down.is_some() => report(WriterEvent::LeaseFailed),
            Some(WriterMsg::Lease) => match store.lease_node_ids() {
                Ok(Some((a, b))) => report(WriterEvent::Lease(a, b)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "node-ID lease failed");
                    report(WriterEvent::LeaseFailed);
                }
            },
            Some(WriterMsg::Reload) => {
                // Reconnect (if needed) and load, until it works or the
                // server stops.
                loop {
                    let again = if down.is_some() || store.recoverable() {
                        store.reconnect()
                    } else {
                        Ok(())
                    };
                    let loaded = again.and_then(|()| store.load(wall_now()));
                    match loaded {
                        Ok((state, _)) => {
                            if down.take().is_some() {
                                tracing::info!("store is back; state reloaded");
                            }
                            report(WriterEvent::Reloaded(Box::new(state)));
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "store still unavailable");
                            down = Some(e.to_string());
                            std::thread::sleep(RECONNECT_PAUSE);
                            match rx.try_recv() {
                                Err(mpsc::TryRecvError::Disconnected) => return,
                                Ok(WriterMsg::Commit(seq, set)) => {
                                    // Shipped before the loop knew: fail it.
                                    sh.queued_writes
                                        .fetch_sub(set.writes.len() as u64, Ordering::SeqCst);
                                    report(WriterEvent::Failed {
                                        from: seq,
                                        upto: seq,
                                        error: e.to_string(),
                                    });
                                }
                                Ok(_) | Err(mpsc::TryRecvError::Empty) => {}
                            }
                        }
                    }
                }
            }
            Some(_) | None => {}
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The follower thread of a shared store and what it maintains.
struct Follower {
    rx: mpsc::Receiver<FollowEvent>,
    reaper: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bound, ready-to-run server.
pub struct Server {
    cfg: ServerConfig,
    poll: Poll,
    listener: TcpListener,
    udp: UdpSocket,
    /// The observer socket (`ServerConfig::observer_addr`).
    observer: Option<UdpSocket>,
    signals: Option<Signals>,
    stop: StopHandle,
    registry: Registry,
    beacon: BeaconServer,
    /// With peer beacons: this beacon's address as recorded for the nodes
    /// it serves (`NodeRecord::beacon`, `spec/beacon.md` §3.8).
    beacon_self: Option<String>,
    writer: Writer,
    conns: HashMap<Token, Conn>,
    /// Open connections per source key.
    per_source: HashMap<IpAddr, usize>,
    next_token: usize,
    /// Changes not yet shipped to the writer, in order.
    pending: Vec<Change>,
    /// `pending` holds a change that must be durable before the next reply.
    must_commit: bool,
    /// Sequence number the next shipped change set gets.
    next_seq: u64,
    /// Replies produced now wait for this change set.
    barrier: u64,
    /// Highest durable change set the connections were released for.
    durable: u64,
    /// Connections with replies to write.
    dirty: Vec<Token>,
    /// Connections paused until the writer catches up.
    stalled: Vec<Token>,
    limit_stats: ConnStats,
    logged_stats: ConnStats,
    /// Push subscriptions (`spec/registry.md` §3.13): node → the connection
    /// that last proved it speaks for the node and asked for pushes. At
    /// most one entry per connection.
    push_conn: HashMap<u32, Token>,
    /// The reverse of `push_conn`, to forget a closed connection.
    push_node: HashMap<Token, u32>,
    /// Push frames to queue after the next commit: (node, frame).
    pushes: Vec<(u32, Vec<u8>)>,
    last_housekeeping: std::time::Instant,
    shutdown: bool,
    /// Follower of a shared store (`None`: this process is the only
    /// writer).
    follower: Option<Follower>,
    /// Why requests are refused (a shared store is down or the state is
    /// being reloaded).
    store_down: Option<String>,
    /// Change sets that were not stored: inclusive sequence ranges.
    failed: Vec<(u64, u64)>,
    /// Shared store: keys shipped but not yet settled → the last sequence
    /// number that wrote them.
    inflight: HashMap<Vec<u8>, u64>,
    /// Shared store: remote rows for keys in flight, decided once they
    /// settle.
    deferred: Vec<RemoteRow>,
    /// Shared store: our settled writes, key → (revision, commit's
    /// transaction number), kept until the follower's horizon passes the
    /// commit; a remote row at or below that revision is older than our
    /// write (read in a snapshot taken before it) and is dropped.
    own_revs: HashMap<Vec<u8>, (u64, u64)>,
    /// A node-ID lease was asked for and not yet delivered.
    lease_pending: bool,
    /// No lease is asked for before this (after a failed one).
    lease_retry: std::time::Instant,
    /// Every metric (`--metrics-addr`).
    metrics: Arc<RendezvousMetrics>,
    /// The `/metrics` endpoint, if served.
    metrics_http: Option<HttpEndpoint>,
    /// The dashboard's snapshot slot and endpoint, if served.
    dashboard: Option<(Arc<DashboardShared>, HttpEndpoint)>,
    /// Recent state-changing or refused requests, for the dashboard.
    activity: ActivityLog,
    /// TLS configuration of the registry listener, if it serves TLS.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// `serve_conn`'s read buffer ([`READ_CHUNK`] bytes once used).
    read_chunk: Vec<u8>,
    /// Checks new registrations' keys in parallel (`None`: the thread
    /// could not start; the registry checks every key itself).
    key_checker: Option<KeyChecker>,
    /// Connections read early in this loop turn.
    prefetched: Vec<Token>,
    /// The registry's own key checks already counted in the metrics.
    inline_checks_seen: u64,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("registry_addr", &self.listener.local_addr().ok())
            .field("beacon_addr", &self.udp.local_addr().ok())
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Server {
    /// Opens the redb store, restores the registry and binds both sockets.
    pub fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        let now = wall_now();
        let store = open_store(&cfg, now)?;
        Self::bind_with_store(cfg, store)
    }

    /// Restores the registry from `store` and binds both sockets.
    pub fn bind_with_store(
        cfg: ServerConfig,
        mut store: Box<dyn Store>,
    ) -> Result<Server, ServerError> {
        let now = wall_now();
        let (state, records) = store.load(now)?;
        tracing::info!(
            nodes = state.nodes.len(),
            records,
            store = %store_label(&cfg.store_path),
            "registry state loaded"
        );
        let mut registry = Registry::from_state(cfg.registry.clone(), state, now);
        if let Some((start, end)) = store.lease_node_ids()? {
            registry.lease_node_ids(start, end);
        }
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.registry_addr)?;
        let mut udp = UdpSocket::bind(cfg.beacon_addr)?;
        let bound = udp.local_addr()?;
        let beacon_self = (!cfg.beacon_peers.is_empty())
            .then(|| {
                cfg.beacon_advertise
                    .or((!bound.ip().is_unspecified()).then_some(bound))
            })
            .flatten()
            .map(|a| a.to_string());
        let beacon_cfg = BeaconConfig {
            report_recorded: beacon_self.is_some(),
            ..BeaconConfig::default()
        };
        let mut beacon = BeaconServer::new(beacon_cfg, beacon_time(now));
        beacon.set_peers(&cfg.beacon_peers);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        let observer = match cfg.observer_addr {
            Some(a) => {
                let mut s = UdpSocket::bind(a)?;
                poll.registry()
                    .register(&mut s, OBSERVER, Interest::READABLE)?;
                Some(s)
            }
            None => None,
        };
        let signals = if cfg.handle_signals {
            let mut signals = Signals::new([SIGTERM, SIGINT])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let stop = StopHandle {
            waker: std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER)?),
            flag: std::sync::Arc::default(),
        };
        let (ftx, frx) = mpsc::channel();
        let sink = FollowSink {
            tx: ftx,
            waker: stop.waker.clone(),
            reaper: Arc::default(),
            stop: Arc::default(),
        };
        let follower = store.start_follower(sink.clone())?.map(|t| Follower {
            rx: frx,
            reaper: sink.reaper.clone(),
            stop: sink.stop.clone(),
            thread: Some(t),
        });
        if follower.is_some() {
            // Until the follower holds the reaper lock.
            registry.set_reaping(false);
        }
        let tls = match &cfg.tls {
            Some((cert, key)) => {
                Some(super::tls::server_config(cert, key).map_err(ServerError::Tls)?)
            }
            None => None,
        };
        let metrics = Arc::new(RendezvousMetrics::new());
        let metrics_http = match cfg.metrics_addr {
            Some(addr) => {
                let m = metrics.clone();
                let handler: Arc<Handler> =
                    Arc::new(move |path: &str| (path == "/metrics").then(|| m.page()));
                Some(HttpEndpoint::start(addr, "rendezvous-metrics", handler)?)
            }
            None => None,
        };
        let dashboard = match cfg.http_addr {
            Some(addr) => {
                let shared = Arc::new(DashboardShared::new(stop.waker.clone()));
                let d = shared.clone();
                let handler: Arc<Handler> = Arc::new(move |path: &str| d.page(path));
                Some((
                    shared,
                    HttpEndpoint::start(addr, "rendezvous-dashboard", handler)?,
                ))
            }
            None => None,
        };
        let writer = Writer::start(store, stop.waker.clone(), metrics.clone())?;
        Ok(Server {
            cfg,
            poll,
            listener,
            udp,
            observer,
            signals,
            stop,
            registry,
            beacon,
            beacon_self,
            writer,
            conns: HashMap::new(),
            per_source: HashMap::new(),
            next_token: FIRST_CONN,
            pending: Vec::new(),
            must_commit: false,
            next_seq: 1,
            barrier: 0,
            durable: 0,
            dirty: Vec::new(),
            stalled: Vec::new(),
            limit_stats: ConnStats::default(),
            logged_stats: ConnStats::default(),
            push_conn: HashMap::new(),
            push_node: HashMap::new(),
            pushes: Vec::new(),
            last_housekeeping: std::time::Instant::now(),
            shutdown: false,
            follower,
            store_down: None,
            failed: Vec::new(),
            inflight: HashMap::new(),
            deferred: Vec::new(),
            own_revs: HashMap::new(),
            lease_pending: false,
            lease_retry: std::time::Instant::now(),
            metrics,
            metrics_http,
            dashboard,
            activity: ActivityLog::default(),
            tls,
            read_chunk: Vec::new(),
            key_checker: KeyChecker::start()
                .inspect_err(|e| tracing::warn!(error = %e, "key-check thread not started"))
                .ok(),
            prefetched: Vec::new(),
            inline_checks_seen: 0,
        })
    }

    /// The bound `/metrics` address, if served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_http.as_ref().map(HttpEndpoint::local_addr)
    }

    /// The bound dashboard address, if served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.dashboard.as_ref().map(|(_, e)| e.local_addr())
    }

    /// The current gauge values (online counting walks every node).
    fn levels(&self, now: UnixTime, count_online: bool) -> Levels {
        let state = self.registry.state();
        Levels {
            registered: state.nodes.len(),
            online: if count_online {
                online_count(state, now)
            } else {
                0
            },
            networks: state.networks.len(),
            connections: self.conns.len(),
            push_subscribers: self.push_conn.len(),
            beacon_nodes: self.beacon.node_count(),
            beacon_peers: self.beacon.peer_count(),
        }
    }

    /// Builds and hands over a dashboard snapshot if the HTTP thread asked.
    fn serve_dashboard(&mut self, now: UnixTime) {
        let Some((shared, _)) = &self.dashboard else {
            return;
        };
        if !shared.take_wanted() {
            return;
        }
        let shared = shared.clone();
        let levels = self.levels(now, true);
        let json = dashboard_json(self.registry.state(), now, levels, &self.activity);
        shared.publish(json.to_string());
    }

    /// The bound registry (TCP) address.
    pub fn registry_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops [`Server::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The bound beacon (UDP) address.
    pub fn beacon_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Runs until SIGTERM or SIGINT, then writes every pending change and
    /// returns.
    pub fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        while !self.shutdown {
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if let Some(e) = self.writer.failure() {
                return Err(e);
            }
            let now = wall_now();
            self.release_durable(now)?;
            self.follow(now)?;
            if self.key_checker.is_some() {
                for ev in events.iter() {
                    if ev.token().0 >= FIRST_CONN && (ev.is_readable() || ev.is_read_closed()) {
                        self.prefetch(ev.token(), ev.is_read_closed() || ev.is_error());
                    }
                }
                self.precheck_keys();
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept()?,
                    UDP => self.recv_datagrams(now),
                    OBSERVER => self.observe(),
                    SIGNALS => {
                        if let Some(signals) = self.signals.as_mut() {
                            for sig in signals.pending() {
                                tracing::info!(signal = sig, "shutting down");
                                self.shutdown = true;
                            }
                        }
                    }
                    WAKER => {
                        if self.stop.flag.load(Ordering::SeqCst) {
                            tracing::info!("stop requested; shutting down");
                            self.shutdown = true;
                        }
                    }
                    token => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            if ev.is_read_closed() || ev.is_error() {
                                if let Some(c) = self.conns.get_mut(&token) {
                                    c.read_closed = true;
                                }
                            }
                            self.serve_conn(now, token);
                        }
                        if ev.is_writable() {
                            self.dirty.push(token);
                        }
                    }
                }
            }
            for token in self.prefetched.drain(..) {
                if let Some(c) = self.conns.get_mut(&token) {
                    c.pre_read = None;
                }
            }
            // (A registry rebuilt from the store starts counting at 0.)
            let inline = self.registry.key_checks();
            self.metrics
                .key_checks(0, inline.saturating_sub(self.inline_checks_seen));
            self.inline_checks_seen = inline;
            self.timers(now);
            self.serve_dashboard(now);
            self.ship(false)?;
            self.queue_pushes();
            self.flush_conns(now);
            self.send_datagrams(now);
        }
        self.ship(true)?;
        self.writer.finish()?;
        for ev in self.writer.events() {
            if let WriterEvent::Failed { from, upto, .. } = ev {
                self.failed.push((from, upto));
            }
        }
        self.durable = self.next_seq.saturating_sub(1);
        let err = error_frame("store unavailable: not stored");
        for c in self.conns.values_mut() {
            c.release(u64::MAX, &self.failed, &err, &self.metrics);
        }
        self.dirty.extend(self.conns.keys().copied());
        let now = wall_now();
        self.flush_conns(now);
        self.send_datagrams(now);
        tracing::info!("store flushed; bye");
        Ok(())
    }

    fn next_timeout(&self) -> Duration {
        if !self.dirty.is_empty() || self.must_commit {
            return Duration::ZERO;
        }
        let now = wall_now();
        let mut t = HOUSEKEEPING;
        if let Some(due) = self.registry.poll_timeout() {
            t = t.min(due.saturating_duration_since(now));
        }
        if let Some(due) = self.beacon.poll_timeout() {
            t = t.min(due.saturating_duration_since(beacon_time(now)));
        }
        t
    }

    /// Takes the writer's reports: hands replies whose change sets
    /// settled to their connections (an error for those not stored),
    /// installs leases and reloaded states, and resumes connections
    /// stalled on the writer.
    fn release_durable(&mut self, now: UnixTime) -> Result<(), ServerError> {
        let mut settled = self.durable;
        let mut committed = false;
        for ev in self.writer.events() {
            match ev {
                WriterEvent::Committed { upto, done } => {
                    settled = settled.max(upto);
                    committed = true;
                    if self.follower.is_some() {
                        for (k, rev) in done.keys {
                            let e = self.own_revs.entry(k).or_insert((rev, done.txn));
                            if rev >= e.0 {
                                *e = (rev, done.txn);
                            }
                        }
                    }
                }
                WriterEvent::Failed { from, upto, error } => {
                    settled = settled.max(upto);
                    self.failed.push((from, upto));
                    if self.store_down.is_none() {
                        // Memory now holds changes the store lacks: refuse
                        // requests until the state is reloaded from it.
                        self.store_down = Some(error);
                        self.pending.clear();
                        self.must_commit = false;
                        self.writer.msg(WriterMsg::Reload)?;
                    }
                }
                WriterEvent::Lease(a, b) => {
                    self.registry.lease_node_ids(a, b);
                    self.lease_pending = false;
                }
                WriterEvent::LeaseFailed => {
                    self.lease_pending = false;
                    self.lease_retry = std::time::Instant::now() + RECONNECT_PAUSE;
                }
                WriterEvent::Reloaded(state) => {
                    let reaping = self.follower.is_none()
                        || self
                            .follower
                            .as_ref()
                            .is_some_and(|f| f.reaper.load(Ordering::SeqCst));
                    // The lease stays valid: no other frontend gets its IDs.
                    let lease = self.registry.node_id_lease();
                    self.registry = Registry::from_state(self.cfg.registry.clone(), *state, now);
                    self.registry.set_reaping(reaping);
                    if let Some((next, end)) = lease {
                        self.registry.lease_node_ids(next, end);
                    }
                    self.store_down = None;
                    self.deferred.clear();
                    self.inflight.clear();
                    self.own_revs.clear();
                    tracing::info!(
                        nodes = self.registry.state().nodes.len(),
                        "registry state reloaded from the store"
                    );
                }
            }
        }
        if committed && !self.inflight.is_empty() {
            self.settle_inflight(settled);
        }
        if settled > self.durable {
            self.durable = settled;
            let err = error_frame(&format!(
                "store unavailable: {}",
                self.store_down.as_deref().unwrap_or("change not stored")
            ));
            for (token, c) in self.conns.iter_mut() {
                if c.release(settled, &self.failed, &err, &self.metrics) {
                    self.dirty.push(*token);
                }
            }
            // Ranges wholly below every held reply are no longer needed.
            let oldest = self
                .conns
                .values()
                .filter_map(|c| c.held.front().map(|h| h.0))
                .min()
                .unwrap_or(u64::MAX);
            self.failed.retain(|(_, upto)| *upto >= oldest);
        }
        if !self.stalled.is_empty()
            && self.writer.shared.queued_writes.load(Ordering::SeqCst) < MAX_QUEUED_WRITES / 2
        {
            // flush_conns resumes them (they are still paused).
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
        }
        Ok(())
    }

    /// Shared store: forgets keys whose writes settled, and decides the
    /// remote rows deferred on them: a row committed after our write
    /// (higher revision of its key) wins, an older one is already
    /// overwritten ([`Server::apply_remote`] compares with `own_revs`).
    fn settle_inflight(&mut self, settled: u64) {
        self.inflight.retain(|_, seq| *seq > settled);
        if self.deferred.is_empty() {
            return;
        }
        let deferred = std::mem::take(&mut self.deferred);
        let mut apply = Vec::new();
        for row in deferred {
            if self.inflight.contains_key(&row.0) {
                self.deferred.push(row);
            } else {
                apply.push(row);
            }
        }
        self.apply_remote(wall_now(), apply);
    }

    /// Applies records other frontends committed (deferring those whose
    /// key has a write of ours in flight) and pushes the hints they imply.
    fn apply_remote(&mut self, now: UnixTime, rows: Vec<RemoteRow>) {
        for row in rows {
            if self.inflight.contains_key(&row.0) {
                self.deferred.push(row);
                continue;
            }
            if self
                .own_revs
                .get(&row.0)
                .is_some_and(|(rev, _)| row.2 <= *rev)
            {
                // Read before our later write of the key committed.
                continue;
            }
            match self.registry.apply_remote_record(&row.0, row.1.as_deref()) {
                Ok(Some(Notification::TrustRevoked { to, from })) => {
                    // Either side may be connected here; each hears of it.
                    self.apply_effects(
                        now,
                        vec![
                            Effect::Notify(Notification::TrustRevoked { to, from }),
                            Effect::Notify(Notification::TrustRevoked { to: from, from: to }),
                        ],
                    );
                }
                Ok(Some(n)) => self.apply_effects(now, vec![Effect::Notify(n)]),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "remote record ignored"),
            }
        }
    }

    /// Takes what the follower of a shared store delivered.
    fn follow(&mut self, now: UnixTime) -> Result<(), ServerError> {
        let Some(f) = &self.follower else {
            return Ok(());
        };
        let reaper = f.reaper.load(Ordering::SeqCst);
        let mut rows = Vec::new();
        let mut resync = false;
        let mut horizon = None;
        while let Ok(ev) = f.rx.try_recv() {
            match ev {
                FollowEvent::Rows {
                    rows: r,
                    horizon: h,
                } => {
                    rows.extend(r);
                    horizon = Some(h);
                }
                FollowEvent::Resync => resync = true,
            }
        }
        self.registry.set_reaping(reaper);
        if self.store_down.is_none() {
            if resync {
                self.store_down = Some("resynchronising with the shared store".into());
                self.pending.clear();
                self.must_commit = false;
                self.writer.msg(WriterMsg::Reload)?;
            } else {
                self.apply_remote(now, rows);
                if let Some(h) = horizon {
                    // Later snapshots see our commits below `h`.
                    self.own_revs.retain(|_, (_, txn)| *txn >= h);
                }
            }
        }
        if self.store_down.is_none()
            && !self.lease_pending
            && std::time::Instant::now() >= self.lease_retry
            && self
                .registry
                .leased_node_ids_left()
                .is_some_and(|n| n < LEASE_LOW)
        {
            self.lease_pending = true;
            self.writer.msg(WriterMsg::Lease)?;
        }
        Ok(())
    }

    fn accept(&mut self) -> Result<(), ServerError> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    let source = source_key(peer.ip());
                    let from_source = self.per_source.get(&source).copied().unwrap_or(0);
                    if from_source >= self.cfg.max_conns_per_ip {
                        self.limit_stats.per_ip_refused += 1;
                        tracing::debug!(%peer, "per-source connection limit reached; closing");
                        continue;
                    }
                    if self.conns.len() >= self.cfg.max_connections && !self.evict_for(from_source)
                    {
                        self.limit_stats.full_refused += 1;
                        tracing::debug!(%peer, "connection limit reached; closing");
                        continue;
                    }
                    let tls = match &self.tls {
                        Some(cfg) => match super::tls::accept(cfg) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                tracing::warn!(error = %e, "TLS session setup failed; closing");
                                continue;
                            }
                        },
                        None => None,
                    };
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let _ = stream.set_nodelay(true);
                    *self.per_source.entry(source).or_default() += 1;
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            peer,
                            source,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            wpos: 0,
                            held: VecDeque::new(),
                            held_bytes: 0,
                            last_active: std::time::Instant::now(),
                            frame_started: None,
                            closing: false,
                            paused: false,
                            read_closed: false,
                            tls,
                            pre_read: None,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Transient (e.g. EMFILE): log and try again on the next event.
                    tracing::warn!(error = %e, "accept failed");
                    return Ok(());
                }
            }
        }
    }

    /// The table is full and a source holding `newcomer` connections
    /// arrives: if another source holds more, close that source's idlest
    /// connection to make room. Returns whether room was made.
    fn evict_for(&mut self, newcomer: usize) -> bool {
        let Some((&heavy, &count)) = self.per_source.iter().max_by_key(|(_, n)| **n) else {
            return false;
        };
        if count <= newcomer.saturating_add(1) {
            return false;
        }
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| c.source == heavy)
            .min_by_key(|(_, c)| c.last_active)
            .map(|(t, _)| *t);
        match victim {
            Some(t) => {
                self.limit_stats.evicted += 1;
                tracing::debug!(source = %heavy, "evicting the idlest connection of the heaviest source");
                self.close(t);
                true
            }
            None => false,
        }
    }

    /// Handles every complete frame buffered for `token`, reading more while
    /// the reply backlog allows.
    fn serve_conn(&mut self, now: UnixTime, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if conn.paused {
            // Resumed by flush_conns or release_durable.
            self.conns.insert(token, conn);
            return;
        }
        // One read buffer, kept between calls: zeroing a fresh 16 KiB
        // array per call was ~1.3 % of the server's time under lookups.
        let mut chunk = std::mem::take(&mut self.read_chunk);
        chunk.resize(READ_CHUNK, 0);
        // After a read that emptied the socket (`Conn::took`), the read
        // that would only say `WouldBlock` is skipped.
        let mut drained = false;
        loop {
            // Handle complete frames.
            while !conn.closing {
                if conn.backlog() > WBUF_HIGH {
                    conn.paused = true;
                    break;
                }
                if self.writer.shared.queued_writes.load(Ordering::SeqCst) >= MAX_QUEUED_WRITES {
                    conn.paused = true;
                    self.stalled.push(token);
                    break;
                }
                match next_request(&conn.rbuf) {
                    Ok(Some((decoded, used))) => {
                        let reply = match decoded {
                            Ok(req) => Some(self.handle_request(now, token, conn.peer, req)),
                            Err(e) => {
                                tracing::debug!(peer = %conn.peer, error = %e, "invalid request; closing");
                                self.limit_stats.bad_frames += 1;
                                None
                            }
                        };
                        conn.rbuf.drain(..used);
                        conn.frame_started = None;
                        conn.last_active = std::time::Instant::now();
                        match reply {
                            Some((bytes, mark)) => {
                                if conn.held.is_empty() && self.barrier <= self.durable {
                                    conn.wbuf.extend_from_slice(&bytes);
                                    mark.done(&self.metrics);
                                } else {
                                    conn.held_bytes += bytes.len();
                                    conn.held.push_back((self.barrier, bytes, Some(mark)));
                                }
                            }
                            None => conn.closing = true,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "bad frame; closing");
                        self.limit_stats.bad_frames += 1;
                        conn.closing = true;
                    }
                }
            }
            if conn.closing || conn.paused || drained {
                break;
            }
            match conn.pre_read.take() {
                Some(PreRead::Drained) | Some(PreRead::WouldBlock) => break,
                Some(PreRead::Closed) => {
                    conn.closing = true;
                    break;
                }
                Some(PreRead::More) | None => {}
            }
            let got = match conn.tls.as_deref_mut() {
                Some(tls) => super::tls::read_plain(tls, &mut conn.stream, &mut chunk),
                None => conn.stream.read(&mut chunk),
            };
            match got {
                Ok(0) => {
                    conn.closing = true;
                    break;
                }
                Ok(n) => drained = conn.took(&chunk, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.closing = true;
                    break;
                }
            }
        }
        if conn.rbuf.is_empty() {
            conn.frame_started = None;
        } else if conn.frame_started.is_none() {
            // The rest of a frame that arrived behind a complete one.
            conn.frame_started = Some(std::time::Instant::now());
        }
        self.conns.insert(token, conn);
        self.dirty.push(token);
        self.read_chunk = chunk;
    }

    /// Reads what a plain-TCP connection has (one chunk) before any
    /// request of this loop turn is handled, so that the keys of every
    /// `register` frame of the turn can be checked in parallel
    /// ([`Server::precheck_keys`]). `serve_conn` then starts from what
    /// was read ([`PreRead`]).
    fn prefetch(&mut self, token: Token, read_closed: bool) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.tls.is_some() || conn.paused || conn.closing || conn.pre_read.is_some() {
            return;
        }
        if read_closed {
            conn.read_closed = true;
        }
        let mut chunk = std::mem::take(&mut self.read_chunk);
        chunk.resize(READ_CHUNK, 0);
        let got = loop {
            match conn.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        conn.pre_read = Some(match got {
            Ok(0) => PreRead::Closed,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => PreRead::WouldBlock,
            Err(_) => PreRead::Closed,
            Ok(n) if conn.took(&chunk, n) => PreRead::Drained,
            Ok(_) => PreRead::More,
        });
        self.read_chunk = chunk;
        self.prefetched.push(token);
    }

    /// Checks the keys of this turn's new registrations in parallel and
    /// tells the registry which passed.
    fn precheck_keys(&mut self) {
        let Some(checker) = &self.key_checker else {
            return;
        };
        let mut keys = Vec::new();
        for token in &self.prefetched {
            if let Some(c) = self.conns.get(token) {
                register_keys(&c.rbuf, &mut keys);
            }
        }
        let state = self.registry.state();
        keys.retain(|k| !state.pub_key_idx.contains_key(k) && !state.retired_keys.contains_key(k));
        keys.sort_unstable();
        keys.dedup();
        if keys.len() >= MIN_PARALLEL_KEYS {
            self.metrics.key_checks(keys.len() as u64, 0);
            for k in checker.check(keys) {
                self.registry.key_checked(k);
            }
        }
    }

    fn handle_request(
        &mut self,
        now: UnixTime,
        token: Token,
        peer: SocketAddr,
        req: pilot_proto::registry::server::Request,
    ) -> (Vec<u8>, ReqMark) {
        let mut mark = ReqMark {
            ty: req.type_index(),
            outcome: Outcome::Ok,
            started: std::time::Instant::now(),
        };
        if let Some(why) = &self.store_down {
            mark.outcome = Outcome::Unavailable;
            return (error_frame(&format!("store unavailable: {why}")), mark);
        }
        let reply = self.registry.handle(now, peer, req);
        if let Some(err) = &reply.error {
            tracing::debug!(%peer, error = %err, "request refused");
            mark.outcome = Outcome::Refused;
        }
        let changed = reply
            .effects
            .iter()
            .any(|e| matches!(e, Effect::Persist(c) if !c.is_lazy()));
        if changed || mark.outcome == Outcome::Refused {
            self.activity.push(Activity {
                at: now.as_nanos() / 1_000_000_000,
                request: pilot_proto::registry::server::REQUEST_TYPES
                    .get(mark.ty.unwrap_or(usize::MAX))
                    .copied()
                    .unwrap_or("unknown"),
                outcome: if mark.outcome == Outcome::Ok {
                    "ok"
                } else {
                    "refused"
                },
            });
        }
        for e in &reply.effects {
            if let Effect::PushWanted(node) = *e {
                self.subscribe(token, node);
            }
        }
        self.apply_effects(now, reply.effects);
        (reply_frame(&reply.response), mark)
    }

    fn apply_effects(&mut self, now: UnixTime, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Persist(change) => {
                    if !change.is_lazy() {
                        self.must_commit = true;
                        // Whatever is answered from now on may reveal it.
                        self.barrier = self.next_seq;
                    }
                    self.pending.push(change);
                }
                Effect::Notify(
                    Notification::HandshakeRequest { to, from }
                    | Notification::HandshakeResponse { to, from, .. },
                ) => {
                    self.beacon.notify_handshake(beacon_time(now), to);
                    self.push(to, PushKind::Handshake, from);
                }
                Effect::Notify(Notification::TrustRevoked { to, from }) => {
                    self.push(to, PushKind::TrustRevoked, from);
                }
                Effect::Notify(Notification::Invite { .. }) | Effect::PushWanted(_) => {}
            }
        }
    }

    /// Binds `node`'s pushes to `token` (replacing an older connection).
    fn subscribe(&mut self, token: Token, node: u32) {
        if let Some(old) = self.push_node.insert(token, node) {
            if old != node {
                self.push_conn.remove(&old);
            }
        }
        if let Some(prev) = self.push_conn.insert(node, token) {
            if prev != token {
                self.push_node.remove(&prev);
            }
        }
    }

    /// Queues a push hint for `to`, if a connection asked for it; it is
    /// written after the changes it describes are committed.
    fn push(&mut self, to: u32, kind: PushKind, from: u32) {
        if !self.push_conn.contains_key(&to) {
            return;
        }
        self.pushes.push((to, framing::push_frame(kind, from)));
    }

    /// Appends the queued push frames to their connections (after a commit).
    /// Queues push frames behind the change set they announce: a push is
    /// written once that change is durable, like the reply it goes with.
    fn queue_pushes(&mut self) {
        for (node, frame) in std::mem::take(&mut self.pushes) {
            let Some(&token) = self.push_conn.get(&node) else {
                continue;
            };
            if let Some(conn) = self.conns.get_mut(&token) {
                // A peer that does not read gets no unbounded backlog.
                if conn.backlog() > WBUF_HIGH {
                    continue;
                }
                if conn.held.is_empty() && self.barrier <= self.durable {
                    conn.wbuf.extend_from_slice(&frame);
                    self.dirty.push(token);
                } else {
                    conn.held_bytes += frame.len();
                    conn.held.push_back((self.barrier, frame, None));
                }
            }
        }
    }

    fn timers(&mut self, now: UnixTime) {
        if self.store_down.is_none() {
            let effects = self.registry.handle_timeout(now);
            self.apply_effects(now, effects);
        }
        self.beacon.handle_timeout(beacon_time(now));
        if self.last_housekeeping.elapsed() >= HOUSEKEEPING {
            self.last_housekeeping = std::time::Instant::now();
            let idle = self.cfg.idle_timeout;
            let frame = self.cfg.frame_timeout;
            let mut slow = Vec::new();
            let mut stale = Vec::new();
            for (t, c) in &self.conns {
                // A paused connection is not being read: its frame cannot
                // complete, through no fault of the client.
                if !c.paused && c.frame_started.is_some_and(|s| s.elapsed() > frame) {
                    slow.push(*t);
                } else if c.last_active.elapsed() > idle && c.held.is_empty() {
                    stale.push(*t);
                }
            }
            self.limit_stats.frame_timeouts += slow.len() as u64;
            self.limit_stats.idle_closed += stale.len() as u64;
            for t in slow {
                tracing::debug!("request frame not complete in time; closing");
                self.close(t);
            }
            for t in stale {
                tracing::debug!("closing idle connection");
                self.close(t);
            }
            if self.metrics_http.is_some() {
                let levels = self.levels(now, true);
                self.metrics
                    .tick(levels, self.beacon.stats(), self.limit_stats);
            }
            if self.limit_stats != self.logged_stats {
                let s = self.limit_stats;
                tracing::info!(
                    per_source_refused = s.per_ip_refused,
                    full_refused = s.full_refused,
                    evicted = s.evicted,
                    frame_timeouts = s.frame_timeouts,
                    idle_closed = s.idle_closed,
                    "connection limits (totals since start)"
                );
                self.logged_stats = s;
            }
            if !self.pending.is_empty() {
                // Flush lazy (heartbeat) changes at least once per tick.
                self.must_commit = true;
            }
        }
        if self.pending.len() >= MAX_LAZY_PENDING {
            self.must_commit = true;
        }
    }

    /// Ships the pending changes to the writer as one change set if needed
    /// (or `force`).
    fn ship(&mut self, force: bool) -> Result<(), ServerError> {
        if (self.must_commit || force) && !self.pending.is_empty() {
            let set = ChangeSet::from_changes(self.registry.state(), &self.pending)
                .map_err(StoreError::from)?;
            self.pending.clear();
            let seq = self.next_seq;
            self.next_seq += 1;
            if self.follower.is_some() {
                for (k, _) in &set.writes {
                    self.inflight.insert(k.clone(), seq);
                }
            }
            self.writer.send(seq, set)?;
        }
        self.must_commit = false;
        Ok(())
    }

    fn flush_conns(&mut self, now: UnixTime) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty {
            let resume = {
                let Some(conn) = self.conns.get_mut(&token) else {
                    continue;
                };
                let mut failed = false;
                if let Some(tls) = conn.tls.as_deref_mut() {
                    // Handshake records go out even with no reply pending.
                    loop {
                        match super::tls::write_out(tls, &mut conn.stream, &conn.wbuf[conn.wpos..])
                        {
                            Ok(n) => conn.wpos += n,
                            Err(_) => failed = true,
                        }
                        if failed || conn.wpos == conn.wbuf.len() || tls.wants_write() {
                            break;
                        }
                    }
                }
                while conn.tls.is_none() && conn.wpos < conn.wbuf.len() {
                    match conn.stream.write(&conn.wbuf[conn.wpos..]) {
                        Ok(0) => {
                            failed = true;
                            break;
                        }
                        Ok(n) => conn.wpos += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                if conn.wpos == conn.wbuf.len() {
                    conn.wbuf.clear();
                    conn.wpos = 0;
                } else if conn.wpos > WBUF_HIGH {
                    conn.wbuf.drain(..conn.wpos);
                    conn.wpos = 0;
                }
                let done = conn.closing
                    && conn.wbuf.is_empty()
                    && conn.held.is_empty()
                    && !conn.tls.as_ref().is_some_and(|t| t.wants_write());
                if failed || done {
                    None
                } else {
                    Some(conn.paused && conn.backlog() <= WBUF_HIGH)
                }
            };
            match resume {
                None => self.close(token),
                Some(true) => {
                    if self.stalled.contains(&token) {
                        continue;
                    }
                    if let Some(c) = self.conns.get_mut(&token) {
                        c.paused = false;
                    }
                    self.serve_conn(now, token);
                }
                Some(false) => {}
            }
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(node) = self.push_node.remove(&token) {
            self.push_conn.remove(&node);
        }
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(n) = self.per_source.get_mut(&conn.source) {
                *n -= 1;
                if *n == 0 {
                    self.per_source.remove(&conn.source);
                }
            }
        }
    }

    fn recv_datagrams(&mut self, now: UnixTime) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let registry = &self.registry;
                    // Where the shared state says a node's beacon is.
                    let mut locate = |node: u32| {
                        let rec = registry.state().nodes.get(&node)?;
                        rec.beacon.parse::<SocketAddr>().ok()
                    };
                    self.beacon.handle_datagram_located(
                        beacon_time(now),
                        from,
                        &buf[..n],
                        &mut locate,
                    );
                    self.note_beacons(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surface here on some systems; keep serving.
                    tracing::debug!(error = %e, "udp receive error");
                    return;
                }
            }
        }
    }

    /// Answers discovers on the observer socket (stateless, nothing else
    /// is answered).
    fn observe(&mut self) {
        let Some(sock) = self.observer.as_ref() else {
            return;
        };
        let mut buf = [0u8; 1500];
        let mut out = [0u8; 64];
        loop {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let reply = buf
                        .get(..n)
                        .and_then(|b| pilot_proto::beacon::observe(from, b, &mut out));
                    if let Some(len) = reply {
                        let _ = sock.send_to(&out[..len], from);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// The bound observer address, if any.
    pub fn observer_addr(&self) -> Option<SocketAddr> {
        self.observer.as_ref().and_then(|s| s.local_addr().ok())
    }

    /// Records in the registry that this beacon serves the nodes it just
    /// recorded (only with peer beacons; a change is persisted only when a
    /// node's beacon changes).
    fn note_beacons(&mut self, now: UnixTime) {
        let Some(me) = self.beacon_self.as_deref() else {
            return;
        };
        let mut effects = Vec::new();
        while let Some(node) = self.beacon.poll_recorded() {
            if self.store_down.is_none() {
                effects.extend(self.registry.note_beacon(node, me));
            }
        }
        if !effects.is_empty() {
            self.apply_effects(now, effects);
        }
    }

    fn send_datagrams(&mut self, now: UnixTime) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        while let Some(tx) = self.beacon.poll_transmit(beacon_time(now), &mut buf) {
            let Some(bytes) = buf.get(..tx.len) else {
                continue;
            };
            if let Err(e) = self.udp.send_to(bytes, tx.dst) {
                tracing::debug!(error = %e, dst = %tx.dst, "udp send failed; datagram dropped");
            }
        }
    }
}
