//! The daemon's mio event loop: one thread, one `Poll`, around the
//! sans-IO [`Daemon`] (`spec/daemon.md` §1.1). It owns the tunnel UDP
//! socket, the registry TCP connection, the IPC listener and its clients,
//! the signal pipe and one timer, and does what each [`Output`] asks
//! (datagrams, registry and IPC bytes, disk writes, logs, exit).
//!
//! Per turn: wait for readiness (or the daemon's timer), read what is
//! ready within per-turn budgets (so one busy source cannot starve the
//! others), run due timers, then drain [`Daemon::poll_output`] until it
//! returns `None`. Writes that would block are kept and retried on the
//! next writable event; a datagram the tunnel socket cannot take yet
//! pauses the drain until it can. Reading an IPC client stops while the
//! daemon says it is paused (back-pressure), and resumes without a new
//! event.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mio::net::{TcpStream, UdpSocket, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};
use pilot_proto::time::Instant;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use pilot_proto::daemon::{ClientId, DaemonEvent, DiskWork, DiskWrite, Output};
use pilot_proto::services::handshake::{AutoReason, TrustEvent};

use super::RealDaemon as Daemon;
use super::files::{SaveDir, write_atomic};
use super::ipc_socket::IpcSocket;
use crate::udp_io::UdpIo;

const UDP: Token = Token(0);
const REGISTRY: Token = Token(1);
const LISTENER: Token = Token(2);
const SIGNALS: Token = Token(3);
const WAKER: Token = Token(4);
const FIRST_CLIENT: usize = 16;
/// At most one debug line about dropped unauthenticated input per this.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Largest UDP datagram read or written.
const DATAGRAM_MAX: usize = 65_536;
/// Datagrams read per turn before other sources get a go.
const UDP_BUDGET: usize = 512;
/// IPC bytes read from one client per turn.
const IPC_READ_BUDGET: usize = 1 << 20;
/// IPC read chunk.
const IPC_CHUNK: usize = 64 * 1024;
/// Registry bytes queued for writing before the connection is dropped
/// (registry requests are small; a backlog this large means it is stuck).
const REGISTRY_WBUF_MAX: usize = 4 << 20;
/// Outputs handled per turn before yielding to the poll (zero timeout).
const MAX_OUTPUTS: usize = 1 << 16;

/// Webhook delivery options (the URL comes from the daemon).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Let internal targets through.
    pub allow_private: bool,
    /// HMAC key.
    pub secret: Option<Vec<u8>>,
    /// Roots for https:// targets (`--webhook-ca` and the system's).
    pub roots: std::sync::Arc<rustls::RootCertStore>,
}

impl Default for WebhookSettings {
    /// Public targets only, no HMAC, no roots (no https target verifies).
    fn default() -> WebhookSettings {
        WebhookSettings {
            allow_private: false,
            secret: None,
            roots: std::sync::Arc::new(rustls::RootCertStore::empty()),
        }
    }
}

/// What the loop needs besides the engine.
#[derive(Debug)]
pub struct LoopParts {
    /// The bound tunnel socket.
    pub udp: UdpSocket,
    /// The bound IPC socket.
    pub ipc: IpcSocket,
    /// Where [`Output::DialRegistry`] connects.
    pub registry: SocketAddr,
    /// `trust.json` path.
    pub trust_path: PathBuf,
    /// The identity file (key rotation replaces it; `<path>.next` holds a
    /// rotation's new key until then, `spec/daemon.md` §2.9).
    pub identity_path: PathBuf,
    /// Where the node's profile (hostname, visibility, tags) is kept.
    pub profile_path: PathBuf,
    /// `received/`.
    pub received: SaveDir,
    /// `inbox/`.
    pub inbox: SaveDir,
    /// `tasks/` (created on first use).
    pub tasks_dir: PathBuf,
    /// How webhooks are delivered.
    pub webhook: WebhookSettings,
    /// Catch SIGTERM/SIGINT (off in unit tests, which use [`LoopStop`]).
    pub handle_signals: bool,
    /// Print the readiness line on stdout at the first registration.
    pub print_ready: bool,
    /// Longest wait for [`DaemonEvent::Stopped`] after a stop request.
    pub shutdown_grace: Duration,
}

/// Why the loop failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// Poll or socket setup failed.
    #[error("event loop: {0}")]
    Io(#[from] io::Error),
}

/// How the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The daemon reported [`DaemonEvent::Stopped`].
    Stopped,
    /// The shutdown grace period ran out.
    GraceExpired,
    /// A second signal forced the exit.
    Forced,
}

/// Requests a graceful stop of a running loop from another thread (what
/// SIGTERM does).
#[derive(Clone, Debug)]
pub struct LoopStop {
    waker: Arc<Waker>,
    flag: Arc<AtomicBool>,
}

impl LoopStop {
    /// Requests the stop; returns at once.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

struct RegConn {
    stream: TcpStream,
    connected: bool,
    wbuf: Vec<u8>,
    wpos: usize,
}

struct Client {
    stream: UnixStream,
    id: ClientId,
    /// Readiness seen (or reading stopped early) and not yet drained.
    want_read: bool,
    /// A write returned WouldBlock; wait for a writable event.
    write_blocked: bool,
    /// [`Output::Ipc`] buffers not yet (fully) written, oldest first,
    /// written with one vectored write; `wpos` marks the written part of
    /// the front one. Buffers are queued as the daemon hands them over,
    /// never copied together.
    wbuf: VecDeque<Vec<u8>>,
    wpos: usize,
}

/// Most buffers one vectored IPC write takes.
const IPC_IOVECS: usize = 16;

/// After a write of `n` bytes from the front of `q` (the first buffer
/// from offset `pos`): drops the buffers written in full and leaves `pos`
/// at the written part of the new front.
fn advance_written(q: &mut VecDeque<Vec<u8>>, pos: &mut usize, n: usize) {
    let mut left = n;
    while let Some(front) = q.front() {
        let rest = front.len().saturating_sub(*pos);
        if left < rest {
            *pos += left;
            return;
        }
        left -= rest;
        *pos = 0;
        q.pop_front();
    }
}

/// The mio token of an IPC client: ids are unique for the daemon's
/// lifetime, so the token needs no table.
fn client_token(id: ClientId) -> Token {
    Token(FIRST_CLIENT.saturating_add(usize::try_from(id.0).unwrap_or(usize::MAX)))
}

/// The event loop.
pub struct EventLoop {
    engine: Daemon,
    poll: Poll,
    parts: LoopParts,
    signals: Option<Signals>,
    stop: LoopStop,
    start: std::time::Instant,
    reg: Option<RegConn>,
    /// Registry dials or connections that failed since it last worked: the
    /// first is a warning, the repeats are summarised when it comes back.
    reg_failures: u32,
    clients: BTreeMap<Token, Client>,
    /// The daemon's timer, from the last [`Output::Timeout`].
    timer: Option<Instant>,
    /// The last drain stopped at its bound with outputs left.
    more_output: bool,
    udp_more: bool,
    udp_writable: bool,
    /// Batched I/O of the tunnel socket.
    udp_io: UdpIo,
    /// Registry read buffer.
    rx_buf: Vec<u8>,
    /// IPC read buffer, allocated (and zeroed) once, reused every turn.
    ipc_buf: Vec<u8>,
    stopping_deadline: Option<Instant>,
    exit: Option<Exit>,
    /// The webhook deliverer, while a URL is set.
    hook: Option<crate::webhook::Webhook>,
    ready_printed: bool,
    ready_line: Option<String>,
    /// Drop totals at the last drop log line.
    drops_logged: Vec<(&'static str, u64)>,
    next_drop_log: Instant,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("clients", &self.clients.len())
            .field(
                "registry_connected",
                &self.reg.as_ref().map(|r| r.connected),
            )
            .finish_non_exhaustive()
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl EventLoop {
    /// Registers every socket; `start` is the instant the daemon's clock
    /// counts from ([`Instant::ZERO`]).
    pub fn new(
        mut engine: Daemon,
        mut parts: LoopParts,
        start: std::time::Instant,
    ) -> Result<Self, LoopError> {
        let poll = Poll::new()?;
        let udp_io = UdpIo::new(&parts.udp)?;
        // As many datagrams per transmit as one GSO send can carry here.
        engine.set_max_segments(udp_io.max_segments());
        poll.registry()
            .register(&mut parts.udp, UDP, Interest::READABLE | Interest::WRITABLE)?;
        poll.registry()
            .register(&mut parts.ipc.listener, LISTENER, Interest::READABLE)?;
        let signals = if parts.handle_signals {
            let mut s = Signals::new([SIGTERM, SIGINT])?;
            poll.registry()
                .register(&mut s, SIGNALS, Interest::READABLE)?;
            Some(s)
        } else {
            None
        };
        let stop = LoopStop {
            waker: Arc::new(Waker::new(poll.registry(), WAKER)?),
            flag: Arc::default(),
        };
        Ok(EventLoop {
            engine,
            poll,
            parts,
            signals,
            stop,
            start,
            reg: None,
            reg_failures: 0,
            clients: BTreeMap::new(),
            timer: None,
            more_output: false,
            udp_more: true,
            udp_writable: true,
            udp_io,
            rx_buf: vec![0u8; DATAGRAM_MAX],
            ipc_buf: vec![0u8; IPC_CHUNK],
            stopping_deadline: None,
            exit: None,
            hook: None,
            ready_printed: false,
            ready_line: None,
            drops_logged: Vec::new(),
            next_drop_log: Instant::ZERO,
        })
    }

    /// A handle that stops the loop gracefully from another thread.
    pub fn stop_handle(&self) -> LoopStop {
        self.stop.clone()
    }

    /// The daemon (for tests and diagnostics).
    pub fn engine(&self) -> &Daemon {
        &self.engine
    }

    fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// Runs until the engine stops (after SIGTERM/SIGINT or [`LoopStop`]).
    pub fn run(mut self) -> Result<Exit, LoopError> {
        let mut events = Events::with_capacity(1024);
        // Initial outputs (e.g. the first DialRegistry).
        let now = self.now();
        self.drain(now);
        loop {
            if let Some(exit) = self.exit {
                return Ok(exit);
            }
            let timeout = self.next_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
            let now = self.now();
            for ev in events.iter() {
                match ev.token() {
                    UDP => {
                        if ev.is_readable() || ev.is_error() {
                            self.udp_more = true;
                        }
                        if ev.is_writable() {
                            self.udp_writable = true;
                        }
                    }
                    REGISTRY => self.registry_event(now),
                    LISTENER => self.accept(now),
                    SIGNALS => self.signal(now),
                    WAKER => {
                        if self.stop.flag.swap(false, Ordering::SeqCst) {
                            self.begin_stop(now, "stop requested");
                        }
                    }
                    token => {
                        if let Some(c) = self.clients.get_mut(&token) {
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.want_read = true;
                            }
                            if ev.is_writable() || ev.is_write_closed() {
                                c.write_blocked = false;
                            }
                        }
                    }
                }
            }
            self.read_udp(now);
            self.read_clients(now);
            self.write_clients(now);
            if self.timer.is_some_and(|t| t <= now) {
                self.timer = None;
                self.engine.handle_timeout(now);
            }
            self.drain(now);
            self.udp_io.release_if_idle(std::time::Instant::now());
            self.log_drops(now);
            if let Some(deadline) = self.stopping_deadline {
                if self.exit.is_none() && now >= deadline {
                    tracing::warn!("shutdown did not finish in time; exiting");
                    self.exit = Some(Exit::GraceExpired);
                }
            }
        }
    }

    /// Logs, at debug level and at most once per [`DROP_LOG_INTERVAL`],
    /// how many unauthenticated frames were dropped since the last line,
    /// per reason (a flood costs one log line per interval, not one per
    /// frame).
    fn log_drops(&mut self, now: Instant) {
        if now < self.next_drop_log || !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        self.next_drop_log = now + DROP_LOG_INTERVAL;
        let current: Vec<(&'static str, u64)> = self.engine.node().map_or_else(Vec::new, |n| {
            n.auth_drops().iter().map(|(r, c)| (r.name(), c)).collect()
        });
        let mut parts = Vec::new();
        for (name, n) in &current {
            let before = self
                .drops_logged
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0, |(_, v)| *v);
            if *n > before {
                parts.push(format!("{name}={}", n - before));
            }
        }
        if !parts.is_empty() {
            tracing::debug!(dropped = %parts.join(" "), "unauthenticated tunnel input dropped");
        }
        self.drops_logged = current;
    }

    fn next_timeout(&self) -> Option<Duration> {
        let busy = self.udp_more
            || self.more_output
            || self
                .clients
                .values()
                .any(|c| c.want_read && !self.engine.ipc_read_paused(c.id));
        if busy {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        // Idle batch buffers are freed on the first turn after they have
        // been quiet long enough; make sure there is one.
        let release = self
            .udp_io
            .release_due()
            .map(|t| t.saturating_duration_since(std::time::Instant::now()));
        let due = [self.timer, self.stopping_deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|due| due.saturating_duration_since(now));
        let d = match (due, release) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        // Round up to whole milliseconds so a sub-millisecond wait does
        // not spin.
        Some(Duration::from_millis(
            u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
        ))
    }

    fn signal(&mut self, now: Instant) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let got: Vec<i32> = signals.pending().collect();
        for sig in got {
            if self.stopping_deadline.is_some() {
                tracing::warn!(signal = sig, "second signal; exiting now");
                self.exit = Some(Exit::Forced);
            } else {
                self.begin_stop(now, "signal received");
            }
        }
    }

    fn begin_stop(&mut self, now: Instant, why: &str) {
        if self.stopping_deadline.is_some() {
            return;
        }
        tracing::info!(reason = why, "shutting down");
        self.stopping_deadline = Some(now.saturating_add(self.parts.shutdown_grace));
        self.engine.shutdown(now);
    }

    // ---- UDP ----

    fn read_udp(&mut self, now: Instant) {
        if !self.udp_more {
            return;
        }
        let mut read = 0;
        while read < UDP_BUDGET {
            let engine = &mut self.engine;
            match self.udp_io.recv(&self.parts.udp, |from, bytes| {
                engine.handle_udp(now, from, bytes);
            }) {
                Ok(n) => read += n.max(1),
                Err(e) if would_block(&e) => {
                    self.udp_more = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors can surface here; they are consumed by
                    // the failed call, so keep reading.
                    tracing::debug!(error = %e, "udp receive error");
                }
            }
        }
        // Budget used up: more may be waiting (udp_more stays set).
    }

    /// Sends the batch waiting in the UDP layer, if any. Returns `false`
    /// while the socket cannot take it (the drain waits for writable).
    fn send_pending(&mut self) -> bool {
        loop {
            if !self.udp_io.has_pending() {
                return true;
            }
            if !self.udp_writable {
                return false;
            }
            match self.udp_io.flush(&self.parts.udp) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {
                    self.udp_writable = false;
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The failed datagram is dropped (the transport
                    // retransmits); the rest of the batch still goes.
                    tracing::debug!(error = %e, "udp send failed; datagram dropped");
                }
            }
        }
    }

    // ---- registry ----

    fn dial_registry(&mut self, now: Instant) {
        self.drop_registry();
        match TcpStream::connect(self.parts.registry) {
            Ok(mut stream) => {
                if let Err(e) = self.poll.registry().register(
                    &mut stream,
                    REGISTRY,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    tracing::warn!(error = %e, "registry socket registration failed");
                    self.engine.registry_disconnected(now);
                    return;
                }
                self.reg = Some(RegConn {
                    stream,
                    connected: false,
                    wbuf: Vec::new(),
                    wpos: 0,
                });
            }
            Err(e) => {
                self.registry_failed("registry connect failed", &e.to_string());
                self.engine.registry_disconnected(now);
            }
        }
    }

    fn drop_registry(&mut self) {
        if let Some(mut r) = self.reg.take() {
            let _ = self.poll.registry().deregister(&mut r.stream);
        }
    }

    /// Logs a registry failure: a warning the first time, then quietly
    /// (debug) until it works again.
    fn registry_failed(&mut self, what: &str, why: &str) {
        if self.reg_failures == 0 {
            tracing::warn!(registry = %self.parts.registry, reason = why,
                "{what}; retrying with back-off (requests that need it fail with \"registry unreachable\")");
        } else {
            tracing::debug!(registry = %self.parts.registry, reason = why, failures = self.reg_failures + 1, "{what}");
        }
        self.reg_failures = self.reg_failures.saturating_add(1);
    }

    fn registry_lost(&mut self, now: Instant, why: &str) {
        let what = if self.reg.as_ref().is_some_and(|r| r.connected) {
            "registry connection lost"
        } else {
            "registry connect failed"
        };
        self.registry_failed(what, why);
        self.drop_registry();
        self.engine.registry_disconnected(now);
    }

    fn registry_event(&mut self, now: Instant) {
        let Some(r) = self.reg.as_mut() else {
            return;
        };
        if !r.connected {
            match r.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    let why = e.to_string();
                    self.registry_lost(now, &why);
                    return;
                }
                Ok(None) => {}
            }
            match r.stream.peer_addr() {
                Ok(_) => {
                    r.connected = true;
                    let _ = r.stream.set_nodelay(true);
                    if self.reg_failures > 0 {
                        tracing::info!(registry = %self.parts.registry, failed_attempts = self.reg_failures,
                            "registry reachable again");
                        self.reg_failures = 0;
                    } else {
                        tracing::debug!(registry = %self.parts.registry, "registry connected");
                    }
                    self.engine.registry_connected(now);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    let why = e.to_string();
                    self.registry_lost(now, &why);
                    return;
                }
            }
        }
        self.read_registry(now);
        self.flush_registry(now);
    }

    fn read_registry(&mut self, now: Instant) {
        loop {
            let Some(r) = self.reg.as_mut() else {
                return;
            };
            match r.stream.read(&mut self.rx_buf) {
                Ok(0) => return self.registry_lost(now, "closed by the registry"),
                Ok(n) => {
                    if let Some(b) = self.rx_buf.get(..n) {
                        self.engine.handle_registry_bytes(now, b);
                    }
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.registry_lost(now, &e.to_string()),
            }
        }
    }

    /// Queues registry bytes of the daemon and writes what the socket
    /// takes.
    fn registry_bytes(&mut self, now: Instant, bytes: &[u8]) {
        match self.reg.as_mut() {
            Some(r) => r.wbuf.extend_from_slice(bytes),
            None => tracing::debug!("registry bytes without a connection; dropped"),
        }
        self.flush_registry(now);
    }

    /// Writes what the registry socket takes of the queued bytes.
    fn flush_registry(&mut self, now: Instant) {
        let Some(r) = self.reg.as_mut() else {
            return;
        };
        if !r.connected {
            return;
        }
        while r.wpos < r.wbuf.len() {
            let Some(rest) = r.wbuf.get(r.wpos..) else {
                break;
            };
            match r.stream.write(rest) {
                Ok(0) => {
                    self.registry_lost(now, "write returned 0");
                    return;
                }
                Ok(n) => r.wpos += n,
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.registry_lost(now, &e.to_string());
                    return;
                }
            }
        }
        if r.wpos == r.wbuf.len() {
            r.wbuf.clear();
            r.wpos = 0;
        } else if r.wbuf.len() - r.wpos > REGISTRY_WBUF_MAX {
            self.registry_lost(now, "registry not reading");
        }
    }

    // ---- IPC ----

    fn accept(&mut self, now: Instant) {
        loop {
            match self.parts.ipc.listener.accept() {
                Ok((mut stream, _)) => {
                    let id = match self.engine.ipc_open(now) {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::warn!(error = %e, "IPC client refused; connection closed");
                            continue;
                        }
                    };
                    let token = client_token(id);
                    if let Err(e) = self.poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(error = %e, "IPC client registration failed");
                        self.engine.ipc_closed(now, id);
                        continue;
                    }
                    tracing::debug!(client = id.0, "IPC client connected");
                    self.clients.insert(
                        token,
                        Client {
                            stream,
                            id,
                            want_read: true,
                            write_blocked: false,
                            wbuf: VecDeque::new(),
                            wpos: 0,
                        },
                    );
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: try again on the next event.
                    tracing::warn!(error = %e, "IPC accept failed");
                    return;
                }
            }
        }
    }

    fn close_client(&mut self, now: Instant, token: Token) {
        if let Some(mut c) = self.clients.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            tracing::debug!(client = c.id.0, "IPC client closed");
            self.engine.ipc_closed(now, c.id);
        }
    }

    fn read_clients(&mut self, now: Instant) {
        let tokens: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| c.want_read)
            .map(|(t, _)| *t)
            .collect();
        // One buffer for the loop's lifetime: a fresh zeroed 64 KiB every
        // turn showed up as ~9 % of the daemon's time in memset.
        // Taken out for the loop (the loop body needs `&mut self`) and put
        // back below; `take` leaves an empty Vec, which does not allocate.
        let mut chunk = std::mem::take(&mut self.ipc_buf);
        for token in tokens {
            let mut budget = IPC_READ_BUDGET;
            while let Some(c) = self.clients.get_mut(&token) {
                if self.engine.ipc_read_paused(c.id) {
                    break;
                }
                if budget == 0 {
                    break;
                }
                match c.stream.read(&mut chunk) {
                    Ok(0) => {
                        self.close_client(now, token);
                        break;
                    }
                    Ok(n) => {
                        budget = budget.saturating_sub(n);
                        let id = c.id;
                        if let Some(b) = chunk.get(..n) {
                            self.engine.handle_ipc_bytes(now, id, b);
                        }
                    }
                    Err(e) if would_block(&e) => {
                        c.want_read = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close_client(now, token);
                        break;
                    }
                }
            }
        }
        self.ipc_buf = chunk;
    }

    /// Writes what every client's socket takes of its pending output.
    fn write_clients(&mut self, now: Instant) {
        let tokens: Vec<Token> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.write_blocked && !c.wbuf.is_empty())
            .map(|(t, _)| *t)
            .collect();
        for token in tokens {
            self.write_client(now, token);
        }
    }

    /// Writes what the client's socket takes and reports it to the
    /// daemon; a failed write closes the client.
    fn write_client(&mut self, now: Instant, token: Token) {
        let Some(c) = self.clients.get_mut(&token) else {
            return;
        };
        let mut written = 0usize;
        let mut failed = false;
        while !c.write_blocked && !c.wbuf.is_empty() {
            let mut iov = [IoSlice::new(&[]); IPC_IOVECS];
            let mut n_iov = 0;
            for (slot, (i, b)) in iov.iter_mut().zip(c.wbuf.iter().enumerate()) {
                let from = if i == 0 { c.wpos } else { 0 };
                *slot = IoSlice::new(b.get(from..).unwrap_or_default());
                n_iov += 1;
            }
            match c
                .stream
                .write_vectored(iov.get(..n_iov).unwrap_or_default())
            {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(n) => {
                    written += n;
                    advance_written(&mut c.wbuf, &mut c.wpos, n);
                }
                Err(e) if would_block(&e) => c.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let id = c.id;
        if written > 0 {
            self.engine.ipc_consumed(now, id, written);
        }
        if failed {
            self.close_client(now, token);
        }
    }

    // ---- outputs ----

    /// Does what the daemon asks until it has nothing more (or a datagram
    /// waits for the socket, or the per-turn bound is reached).
    fn drain(&mut self, now: Instant) {
        self.more_output = true;
        for _ in 0..MAX_OUTPUTS {
            if !self.send_pending() {
                // Resumed when the socket is writable.
                self.more_output = false;
                return;
            }
            let Some(out) = self.engine.poll_output(self.udp_io.tx_buf()) else {
                self.more_output = false;
                break;
            };
            self.output(now, out);
            if self.exit.is_some() {
                return;
            }
        }
        if let Some(line) = self.ready_line.take() {
            println!("{line}");
            let _ = io::stdout().flush();
        }
    }

    fn output(&mut self, now: Instant, out: Output) {
        match out {
            Output::Transmit(t) => self.udp_io.queue(t.dst, t.len, t.len),
            Output::TransmitBatch(b) => self.udp_io.queue(b.dst, b.len, b.segment_size),
            Output::DialRegistry => self.dial_registry(now),
            Output::CloseRegistry => self.drop_registry(),
            Output::RegistryBytes(bytes) => self.registry_bytes(now, &bytes),
            Output::Ipc { client, data } => {
                let token = client_token(client);
                if let Some(c) = self.clients.get_mut(&token) {
                    if !data.is_empty() {
                        c.wbuf.push_back(data);
                    }
                    self.write_client(now, token);
                }
            }
            Output::CloseClient(client) => self.close_client(now, client_token(client)),
            Output::Disk(work) => self.disk(now, work),
            Output::Event(ev) => self.event(ev),
            Output::Timeout(t) => self.timer = t,
        }
    }

    /// Performs a disk write and reports its outcome to the daemon.
    fn disk(&mut self, now: Instant, work: DiskWork) {
        let outcome = match work.write {
            DiskWrite::Trust(text) => write_atomic(&self.parts.trust_path, text.as_bytes())
                .map_err(|e| {
                    tracing::error!(path = %self.parts.trust_path.display(), error = %e,
                        "saving trust.json failed");
                    e.to_string()
                }),
            DiskWrite::Profile(text) => write_atomic(&self.parts.profile_path, text.as_bytes())
                .map_err(|e| {
                    tracing::error!(path = %self.parts.profile_path.display(), error = %e,
                        "saving the node profile failed");
                    e.to_string()
                }),
            DiskWrite::ReceivedFile { name, data, from } => {
                match self.parts.received.save(&name, &data) {
                    Ok(p) => {
                        tracing::info!(path = %p.display(), bytes = data.len(), %from, "file received");
                        crate::daemon::files::record_received(&p, data.len(), from);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(name, error = %e, "received file not saved");
                        Err(e.to_string())
                    }
                }
            }
            DiskWrite::Task(effect) => {
                match crate::daemon::task_files::apply(&self.parts.tasks_dir, &effect) {
                    Ok(Some(p)) => {
                        tracing::info!(path = %p.display(), "task file written");
                        Ok(())
                    }
                    Ok(None) => {
                        tracing::debug!(?effect, "task update for no task of ours");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "task file not written");
                        Err(e.to_string())
                    }
                }
            }
            DiskWrite::IdentityNext(id) => {
                let next = crate::daemon::files::next_identity_path(&self.parts.identity_path);
                crate::daemon::files::save_identity(&next, &id).map_err(|e| {
                    tracing::error!(path = %next.display(), error = %e,
                        "saving the rotation's new key failed");
                    e.to_string()
                })
            }
            DiskWrite::IdentityCommit(id) => {
                let path = &self.parts.identity_path;
                let next = crate::daemon::files::next_identity_path(path);
                let r = crate::daemon::files::save_identity(path, &id)
                    .and_then(|()| crate::daemon::files::remove_durably(&next));
                match r {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "identity file replaced by the rotated key");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), error = %e,
                            "replacing the identity file failed; the new key stays in the .next file");
                        Err(e.to_string())
                    }
                }
            }
            DiskWrite::IdentityNextDiscard => {
                let next = crate::daemon::files::next_identity_path(&self.parts.identity_path);
                crate::daemon::files::remove_durably(&next).map_err(|e| {
                    tracing::warn!(path = %next.display(), error = %e, "removing the .next identity failed");
                    e.to_string()
                })
            }
            DiskWrite::Inbox { name, json } => {
                match self.parts.inbox.save(&name, json.as_bytes()) {
                    Ok(p) => {
                        tracing::info!(path = %p.display(), "message received");
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(name, error = %e, "inbox message not saved");
                        Err(e.to_string())
                    }
                }
            }
        };
        self.engine.disk_done(now, work.token, outcome);
    }

    fn event(&mut self, ev: DaemonEvent) {
        match ev {
            DaemonEvent::Registered { node_id, address } => {
                let udp = self
                    .parts
                    .udp
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                tracing::info!(node_id, %address, %udp, "registered");
                if self.parts.print_ready && !self.ready_printed {
                    self.ready_printed = true;
                    // Printed at the end of this drain, after the requests
                    // that follow registration (visibility, hostname).
                    self.ready_line = Some(format!(
                        "ready node_id={node_id} address={address} socket={} udp={udp} registry={}",
                        self.parts.ipc.path().display(),
                        self.parts.registry
                    ));
                }
            }
            DaemonEvent::Trust(ev) => {
                let (event, node, message) = describe_trust(ev);
                tracing::info!(event, node, "{message}");
            }
            DaemonEvent::Diagnostic(line) => tracing::debug!(target: "pilot::tunnel", "{line}"),
            DaemonEvent::Stopped => {
                tracing::info!("stopped");
                self.exit = Some(Exit::Stopped);
            }
            DaemonEvent::Webhook(w) => self.webhook(w),
        }
    }
}

impl EventLoop {
    /// Starts, stops or feeds the webhook deliverer, then reports its
    /// counters to the daemon (`health`).
    fn webhook(&mut self, w: pilot_proto::daemon::WebhookOutput) {
        use pilot_proto::daemon::WebhookOutput;
        match w {
            WebhookOutput::Url(None) => self.hook = None,
            WebhookOutput::Url(Some(url)) => {
                let cfg = crate::webhook::WebhookConfig {
                    allow_private: self.parts.webhook.allow_private,
                    secret: self.parts.webhook.secret.clone(),
                    roots: std::sync::Arc::clone(&self.parts.webhook.roots),
                    ..crate::webhook::WebhookConfig::new(&url)
                };
                self.hook = match crate::webhook::Webhook::start(cfg) {
                    Ok(h) => {
                        tracing::info!(%url, "webhook set");
                        Some(h)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook not started");
                        None
                    }
                };
            }
            WebhookOutput::Event(body) => {
                if let Some(h) = &self.hook {
                    if !h.push(body.into_bytes()) {
                        tracing::debug!("webhook queue full: event dropped");
                    }
                }
            }
        }
        if let Some(h) = &self.hook {
            use std::sync::atomic::Ordering::Relaxed;
            let s = h.stats();
            self.engine
                .set_webhook_counters(s.dropped.load(Relaxed), s.circuit_skips.load(Relaxed));
        }
    }
}

/// Names and describes a trust event for the log: its name
/// (`handshake.pending`, …), the peer and a sentence for people.
fn describe_trust(ev: TrustEvent) -> (&'static str, u32, String) {
    match ev {
        TrustEvent::Received { node, .. } => (
            "handshake.received",
            node,
            format!("trust request from node {node}"),
        ),
        TrustEvent::Pending { node, .. } => (
            "handshake.pending",
            node,
            format!("trust request from node {node} is pending (pilotctl approve {node})"),
        ),
        TrustEvent::AutoApproved { node, reason } => {
            let why = match reason {
                AutoReason::Mutual => "both sides asked".to_owned(),
                AutoReason::SameNetwork(n) => format!("shared network {n}"),
            };
            (
                "handshake.auto_approved",
                node,
                format!("node {node} trusted automatically: {why}"),
            )
        }
        TrustEvent::Approved { node } => {
            ("handshake.approved", node, format!("approved node {node}"))
        }
        TrustEvent::Rejected { node, reason } => (
            "handshake.rejected",
            node,
            format!("rejected node {node}: {reason}"),
        ),
        TrustEvent::Revoked { node } => (
            "trust.revoked",
            node,
            format!("revoked trust in node {node}"),
        ),
        TrustEvent::RevokedByPeer { node } => (
            "trust.revoked_by_peer",
            node,
            format!("node {node} revoked its trust"),
        ),
        TrustEvent::NetworkEnded { node, network } => (
            "trust.revoked",
            node,
            format!(
                "trust in node {node} ended: it came from network {network}, which one of us left"
            ),
        ),
        TrustEvent::AcceptedByPeer { node } => (
            "handshake.accepted",
            node,
            format!("node {node} accepted our trust request"),
        ),
        TrustEvent::RejectedByPeer { node } => (
            "handshake.rejected_by_peer",
            node,
            format!("node {node} rejected our trust request"),
        ),
        TrustEvent::StaleRevoke { node } => (
            "trust.stale_revoke_ignored",
            node,
            format!("ignored a revoke from node {node} older than its later request or accept"),
        ),
    }
}

#[cfg(test)]
mod tests;
