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
use pilot_proto::registry::codec::{
    PUSH_HANDSHAKE, PUSH_TRUST_REVOKED, Response, decode_frame, decode_request, encode_response,
    frame_vec,
};
use pilot_proto::registry::limits::{IDLE_TIMEOUT, MAX_FRAME_LEN};
use pilot_proto::registry::records::ChangeSet;
use pilot_proto::registry::server::{
    Change, Config as RegistryConfig, Effect, Notification, Registry,
};
use pilot_proto::time::Instant;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::store::{RedbStore, Store, StoreError};

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const SIGNALS: Token = Token(2);
const WAKER: Token = Token(3);
const FIRST_CONN: usize = 4;

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

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TCP address of the registry.
    pub registry_addr: SocketAddr,
    /// UDP address of the beacon.
    pub beacon_addr: SocketAddr,
    /// Path of the redb store file.
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
}

impl ServerConfig {
    /// Defaults for everything but the store path.
    pub fn new(store_path: PathBuf) -> Self {
        ServerConfig {
            registry_addr: SocketAddr::from(([127, 0, 0, 1], 9000)),
            beacon_addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            store_path,
            registry: RegistryConfig::default(),
            max_connections: 4096,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            idle_timeout: IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            handle_signals: true,
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
}

/// The wall clock as a registry instant (nanoseconds since the Unix epoch,
/// `spec/registry.md`).
pub fn wall_now() -> Instant {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Instant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
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
    /// number, the framed reply), in order.
    held: VecDeque<(u64, Vec<u8>)>,
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
}

impl Conn {
    fn backlog(&self) -> usize {
        self.wbuf.len() - self.wpos + self.held_bytes
    }

    /// Moves replies whose change set is durable to the write buffer.
    fn release(&mut self, durable: u64) -> bool {
        let mut any = false;
        while self.held.front().is_some_and(|(seq, _)| *seq <= durable) {
            if let Some((_, bytes)) = self.held.pop_front() {
                self.held_bytes -= bytes.len();
                self.wbuf.extend_from_slice(&bytes);
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

/// Connections closed or refused by the limits, for the logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct LimitStats {
    per_ip_refused: u64,
    full_refused: u64,
    evicted: u64,
    frame_timeouts: u64,
    idle_closed: u64,
}

/// What the writer thread reports back.
struct WriterShared {
    /// Highest change-set sequence number that is durable.
    durable: AtomicU64,
    /// Record writes shipped but not yet durable.
    queued_writes: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<StoreError>>,
}

/// The store on its own thread: change sets in, durability reports out.
struct Writer {
    tx: Option<mpsc::Sender<(u64, ChangeSet)>>,
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mut store: Box<dyn Store>, waker: Arc<mio::Waker>) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<(u64, ChangeSet)>();
        let shared = Arc::new(WriterShared {
            durable: AtomicU64::new(0),
            queued_writes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rendezvous-store".into())
            .spawn(move || {
                // Everything queued while a commit ran goes into the next.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let last = batch.last().map_or(0, |(seq, _)| *seq);
                    let writes: u64 = batch.iter().map(|(_, s)| s.writes.len() as u64).sum();
                    let sets: Vec<ChangeSet> = batch.into_iter().map(|(_, s)| s).collect();
                    let result = store.apply(&sets);
                    sh.queued_writes.fetch_sub(writes, Ordering::SeqCst);
                    match result {
                        Ok(()) => sh.durable.store(last, Ordering::SeqCst),
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
                    let _ = waker.wake();
                }
            })?;
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
        match &self.tx {
            Some(tx) => tx.send((seq, set)).map_err(|_| ServerError::WriterGone),
            None => Err(ServerError::WriterGone),
        }
    }

    fn durable(&self) -> u64 {
        self.shared.durable.load(Ordering::SeqCst)
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

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
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
    signals: Option<Signals>,
    stop: StopHandle,
    registry: Registry,
    beacon: BeaconServer,
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
    limit_stats: LimitStats,
    logged_stats: LimitStats,
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
        let store = RedbStore::open(&cfg.store_path, now)?;
        Self::bind_with_store(cfg, Box::new(store))
    }

    /// Restores the registry from `store` and binds both sockets.
    pub fn bind_with_store(
        cfg: ServerConfig,
        store: Box<dyn Store>,
    ) -> Result<Server, ServerError> {
        let now = wall_now();
        let (state, records) = store.load(now)?;
        tracing::info!(
            nodes = state.nodes.len(),
            records,
            store = %cfg.store_path.display(),
            "registry state loaded"
        );
        let registry = Registry::from_state(cfg.registry.clone(), state, now);
        let beacon = BeaconServer::new(BeaconConfig::default(), now);
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(cfg.registry_addr)?;
        let mut udp = UdpSocket::bind(cfg.beacon_addr)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
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
        let writer = Writer::start(store, stop.waker.clone())?;
        Ok(Server {
            cfg,
            poll,
            listener,
            udp,
            signals,
            stop,
            registry,
            beacon,
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
            limit_stats: LimitStats::default(),
            logged_stats: LimitStats::default(),
            push_conn: HashMap::new(),
            push_node: HashMap::new(),
            pushes: Vec::new(),
            last_housekeeping: std::time::Instant::now(),
            shutdown: false,
        })
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
            self.release_durable();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept()?,
                    UDP => self.recv_datagrams(now),
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
                            self.serve_conn(now, token);
                        }
                        if ev.is_writable() {
                            self.dirty.push(token);
                        }
                    }
                }
            }
            self.timers(now);
            self.ship(false)?;
            self.queue_pushes();
            self.flush_conns(now);
            self.send_datagrams(now);
        }
        self.ship(true)?;
        self.writer.finish()?;
        self.durable = self.next_seq.saturating_sub(1);
        for c in self.conns.values_mut() {
            c.release(u64::MAX);
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
        for due in [self.registry.poll_timeout(), self.beacon.poll_timeout()]
            .into_iter()
            .flatten()
        {
            t = t.min(due.saturating_duration_since(now));
        }
        t
    }

    /// Hands replies whose change sets became durable to their
    /// connections, and resumes connections stalled on the writer.
    fn release_durable(&mut self) {
        let durable = self.writer.durable();
        if durable > self.durable {
            self.durable = durable;
            for (token, c) in self.conns.iter_mut() {
                if c.release(durable) {
                    self.dirty.push(*token);
                }
            }
        }
        if !self.stalled.is_empty()
            && self.writer.shared.queued_writes.load(Ordering::SeqCst) < MAX_QUEUED_WRITES / 2
        {
            // flush_conns resumes them (they are still paused).
            let stalled = std::mem::take(&mut self.stalled);
            self.dirty.extend(stalled);
        }
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
    fn serve_conn(&mut self, now: Instant, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        if conn.paused {
            // Resumed by flush_conns or release_durable.
            self.conns.insert(token, conn);
            return;
        }
        let mut chunk = [0u8; READ_CHUNK];
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
                match decode_frame(&conn.rbuf, MAX_FRAME_LEN) {
                    Ok(Some((payload, used))) => {
                        let reply = match decode_request(payload) {
                            Ok(req) => Some(self.handle_request(now, token, conn.peer, req)),
                            Err(e) => {
                                tracing::debug!(peer = %conn.peer, error = %e, "invalid request; closing");
                                None
                            }
                        };
                        conn.rbuf.drain(..used);
                        conn.frame_started = None;
                        conn.last_active = std::time::Instant::now();
                        match reply {
                            Some(bytes) => {
                                if conn.held.is_empty() && self.barrier <= self.durable {
                                    conn.wbuf.extend_from_slice(&bytes);
                                } else {
                                    conn.held_bytes += bytes.len();
                                    conn.held.push_back((self.barrier, bytes));
                                }
                            }
                            None => conn.closing = true,
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "bad frame; closing");
                        conn.closing = true;
                    }
                }
            }
            if conn.closing || conn.paused {
                break;
            }
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    conn.rbuf.extend_from_slice(&chunk[..n]);
                    if conn.frame_started.is_none() {
                        conn.frame_started = Some(std::time::Instant::now());
                    }
                }
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
    }

    fn handle_request(
        &mut self,
        now: Instant,
        token: Token,
        peer: SocketAddr,
        req: pilot_proto::registry::codec::Request,
    ) -> Vec<u8> {
        let reply = self.registry.handle(now, peer, req);
        if let Some(err) = &reply.error {
            tracing::debug!(%peer, error = %err, "request refused");
        }
        for e in &reply.effects {
            if let Effect::PushWanted(node) = *e {
                self.subscribe(token, node);
            }
        }
        self.apply_effects(now, reply.effects);
        let json = encode_response(&reply.response)
            .unwrap_or_else(|_| br#"{"error":"request failed","type":"error"}"#.to_vec());
        frame_vec(&json).unwrap_or_default()
    }

    fn apply_effects(&mut self, now: Instant, effects: Vec<Effect>) {
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
                    self.beacon.notify_handshake(now, to);
                    self.push(to, PUSH_HANDSHAKE, from);
                }
                Effect::Notify(Notification::TrustRevoked { to, from }) => {
                    self.push(to, PUSH_TRUST_REVOKED, from);
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
    fn push(&mut self, to: u32, kind: &str, from: u32) {
        if !self.push_conn.contains_key(&to) {
            return;
        }
        let msg = Response::Push {
            kind: kind.to_owned(),
            from,
        };
        if let Some(frame) = encode_response(&msg).ok().and_then(|j| frame_vec(&j).ok()) {
            self.pushes.push((to, frame));
        }
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
                    conn.held.push_back((self.barrier, frame));
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        let effects = self.registry.handle_timeout(now);
        self.apply_effects(now, effects);
        self.beacon.handle_timeout(now);
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
            self.writer.send(seq, set)?;
        }
        self.must_commit = false;
        Ok(())
    }

    fn flush_conns(&mut self, now: Instant) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for token in dirty {
            let resume = {
                let Some(conn) = self.conns.get_mut(&token) else {
                    continue;
                };
                let mut failed = false;
                while conn.wpos < conn.wbuf.len() {
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
                let done = conn.closing && conn.wbuf.is_empty() && conn.held.is_empty();
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

    fn recv_datagrams(&mut self, now: Instant) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => self.beacon.handle_datagram(now, from, &buf[..n]),
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

    fn send_datagrams(&mut self, now: Instant) {
        let mut buf = vec![0u8; DATAGRAM_MAX];
        while let Some(tx) = self.beacon.poll_transmit(now, &mut buf) {
            let Some(bytes) = buf.get(..tx.len) else {
                continue;
            };
            if let Err(e) = self.udp.send_to(bytes, tx.dst) {
                tracing::debug!(error = %e, dst = %tx.dst, "udp send failed; datagram dropped");
            }
        }
    }
}
