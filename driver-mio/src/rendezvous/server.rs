//! The rendezvous event loop: one mio `Poll` driving the registry over TCP
//! and the beacon over UDP, with the durable [`Store`] in between.
//!
//! Per loop iteration: read every ready connection and datagram, hand the
//! complete requests to the registry, run due timers, commit every change
//! they produced in **one** write transaction (group commit), and only then
//! write the replies. A reply is therefore never sent before the changes it
//! acknowledges are durable (`spec/registry.md` §11).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use pilot_proto::beacon::server::{BeaconServer, ServerConfig as BeaconConfig};
use pilot_proto::registry::codec::{
    PUSH_HANDSHAKE, PUSH_TRUST_REVOKED, Response, decode_frame, decode_request, encode_response,
    frame_vec,
};
use pilot_proto::registry::limits::{IDLE_TIMEOUT, MAX_FRAME_LEN};
use pilot_proto::registry::server::{
    Change, Config as RegistryConfig, Effect, Notification, Registry,
};
use pilot_proto::time::Instant;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::store::{Store, StoreError};

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
    /// Most concurrent registry connections; further ones are closed at once.
    pub max_connections: usize,
    /// A connection silent this long is closed (`spec/registry.md` §1.1).
    pub idle_timeout: Duration,
    /// Compact the change log into a snapshot after this many entries.
    pub compact_every: u64,
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
            idle_timeout: IDLE_TIMEOUT,
            compact_every: 50_000,
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
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    last_active: std::time::Instant,
    /// Stop reading; close once the queued replies are written.
    closing: bool,
    /// Reading suspended because too many replies wait.
    paused: bool,
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
    store: Store,
    conns: HashMap<Token, Conn>,
    next_token: usize,
    /// Changes not yet written, in order.
    pending: Vec<Change>,
    /// `pending` holds a change that must be durable before the next reply.
    must_commit: bool,
    /// Connections with replies to write after the commit.
    dirty: Vec<Token>,
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
    /// Opens the store, restores the registry and binds both sockets.
    pub fn bind(cfg: ServerConfig) -> Result<Server, ServerError> {
        let store = Store::open(&cfg.store_path)?;
        let now = wall_now();
        let (state, replayed) = store.load(now)?;
        tracing::info!(
            nodes = state.nodes.len(),
            replayed,
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
        Ok(Server {
            cfg,
            poll,
            listener,
            udp,
            signals,
            stop,
            registry,
            beacon,
            store,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            pending: Vec::new(),
            must_commit: false,
            dirty: Vec::new(),
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
            let now = wall_now();
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
                        if self.stop.flag.load(std::sync::atomic::Ordering::SeqCst) {
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
            self.commit(false)?;
            self.queue_pushes();
            self.flush_conns(now);
            self.send_datagrams(now);
        }
        self.commit(true)?;
        let now = wall_now();
        self.flush_conns(now);
        self.send_datagrams(now);
        tracing::info!("store flushed; bye");
        Ok(())
    }

    fn next_timeout(&self) -> Duration {
        if !self.dirty.is_empty() || self.must_commit {
            // Replies of resumed connections wait for the next commit.
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

    fn accept(&mut self) -> Result<(), ServerError> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    if self.conns.len() >= self.cfg.max_connections {
                        tracing::warn!(%peer, "connection limit reached; closing");
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
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            peer,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            wpos: 0,
                            last_active: std::time::Instant::now(),
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

    /// Handles every complete frame buffered for `token`, reading more while
    /// the reply backlog allows.
    fn serve_conn(&mut self, now: Instant, token: Token) {
        let Some(mut conn) = self.conns.remove(&token) else {
            return;
        };
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            // Handle complete frames.
            while !conn.closing {
                if conn.wbuf.len() - conn.wpos > WBUF_HIGH {
                    conn.paused = true;
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
                        match reply {
                            Some(bytes) => conn.wbuf.extend_from_slice(&bytes),
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
                    conn.last_active = std::time::Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    conn.closing = true;
                    break;
                }
            }
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
    fn queue_pushes(&mut self) {
        if self.must_commit {
            // Not committed yet (the store failed or was skipped): wait.
            return;
        }
        for (node, frame) in std::mem::take(&mut self.pushes) {
            let Some(&token) = self.push_conn.get(&node) else {
                continue;
            };
            if let Some(conn) = self.conns.get_mut(&token) {
                // A peer that does not read gets no unbounded backlog.
                if conn.wbuf.len() - conn.wpos <= WBUF_HIGH {
                    conn.wbuf.extend_from_slice(&frame);
                    self.dirty.push(token);
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
            let stale: Vec<Token> = self
                .conns
                .iter()
                .filter(|(_, c)| c.last_active.elapsed() > idle)
                .map(|(t, _)| *t)
                .collect();
            for t in stale {
                tracing::debug!("closing idle connection");
                self.close(t);
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

    /// Writes the pending changes in one transaction if needed (or `force`).
    fn commit(&mut self, force: bool) -> Result<(), ServerError> {
        if (self.must_commit || force) && !self.pending.is_empty() {
            self.store.commit(&self.pending)?;
            self.pending.clear();
            if self.store.since_snapshot() >= self.cfg.compact_every {
                self.store.compact(self.registry.state())?;
                tracing::info!("change log compacted into a snapshot");
            }
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
                let done = conn.closing && conn.wbuf.is_empty();
                if failed || done {
                    None
                } else {
                    Some(conn.paused && conn.wbuf.len() <= WBUF_HIGH)
                }
            };
            match resume {
                None => self.close(token),
                Some(true) => {
                    if let Some(c) = self.conns.get_mut(&token) {
                        c.paused = false;
                    }
                    // Replies produced now are written on the next iteration,
                    // after their changes are committed.
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
