//! A full daemon inside the simulator: the **one** module that drives
//! `pilot_proto::daemon::Daemon` (its inputs and its single output
//! channel, `poll_output`). Everything else in the simulator talks to a [`DaemonHost`]
//! through IPC bytes, datagrams and virtual time, so a change of the
//! daemon's API is a change of this file alone.
//!
//! A host is what a machine running `pilot-daemon` looks like from the
//! outside:
//!
//! - **UDP**: the tunnel socket at the host's endpoint. Datagrams that are
//!   simulated TCP segments ([`crate::tcp`]) belong to the registry
//!   connection; everything else goes to the daemon.
//! - **Registry TCP**: [`crate::tcp::TcpEnd`] to [`RENDEZVOUS_ADDR`], opened
//!   when the daemon asks to dial (`registry_connected` once the connect
//!   completes, `registry_disconnected` when it fails or is reset).
//! - **Disk**: [`MemDisk`], an in-memory file tree receiving `trust.json`,
//!   received files, inbox records and the profile; every write is
//!   reported done (or failed, when [`MemDisk::fail`] is set).
//! - **Applications**: IPC clients ([`AppId`]), each a
//!   [`ClientSession`] — the sans-IO client session the blocking client of
//!   `pilot-driver-mio` and the async one of `pilot-driver-tokio` wrap — on
//!   a socket of the machine. An application starts requests
//!   ([`DaemonHost::app_request`]), sends frames that need no reply
//!   ([`DaemonHost::app_send`]) and reads replies, stream data, accepts and
//!   datagrams through its session ([`DaemonHost::session`]). The session
//!   reads from the socket only as much as it has room for, so the daemon
//!   sees a real socket's back-pressure.
//!
//! The daemon, its disk and its sockets are a
//! [`pilot_proto::daemon::machine::Machine`], the harness the daemon's own
//! unit tests run on too. After every input the host steps the machine
//! and carries out what it queued (datagrams, registry-connection work),
//! moves bytes between the sockets and the sessions, and repeats until
//! nothing moves.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::daemon::machine::{Machine, RegistryIo};
use pilot_proto::daemon::{ClientId, Daemon, DaemonConfig, DaemonEvent, Output};
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use pilot_proto::wire::ipc::IpcMessage;
use pilot_proto::wire::ipc::client::{ClientSession, Read, RequestError, frame};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

pub use pilot_proto::daemon::machine::MemDisk;

use crate::node::{SimNode, Transmit};
use crate::rendezvous::{RENDEZVOUS_ADDR, UNIX_SECS_AT_ZERO};
use crate::seed::Seed;
use crate::tcp::{Segment, TcpEnd, TcpState};

/// The concrete daemon type the simulator runs.
pub type SimDaemon = Daemon<RustCrypto, ChaCha8Rng>;

/// An application (IPC client) of one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppId(pub u64);

/// What a host reports.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum HostEvent {
    /// The daemon closed application `app` (after a protocol error).
    AppClosed(AppId),
    /// The registry accepted the node.
    Registered {
        /// Node ID.
        node_id: u32,
        /// Backbone address text.
        address: String,
    },
    /// The registry connection opened.
    RegistryUp,
    /// The registry connection failed or was reset.
    RegistryDown,
    /// A trust event the daemon logged (its `Debug` text).
    Trust(String),
    /// A file was written to the disk.
    Saved(String),
    /// The daemon finished a shutdown.
    Stopped,
}

/// How to build a daemon.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Index of the host (its identity and RNG are forked from the seed by
    /// it).
    pub index: usize,
    /// Restart count (a new tunnel key and RNG; the same identity).
    pub incarnation: u64,
    /// The host's UDP endpoint.
    pub endpoint: SocketAddr,
    /// Visible to every node (otherwise only trusted peers resolve it).
    pub public: bool,
    /// Wire profile.
    pub profile: WireProfile,
    /// The beacon to use (endpoint discovery, punching, relay); `None`:
    /// direct only.
    pub beacon: Option<SocketAddr>,
    /// NAT keepalive interval (`None`: off).
    pub keepalive: Option<std::time::Duration>,
    /// The beacon's observer address (mapping detection).
    pub observer: Option<SocketAddr>,
    /// Admin token the daemon passes on (network creation); empty: none.
    pub admin_token: Vec<u8>,
}

struct App {
    id: ClientId,
    session: ClientSession,
    closed: bool,
}

/// A daemon, its registry connection, its disk and its applications.
pub struct DaemonHost {
    machine: Machine<RustCrypto, ChaCha8Rng>,
    endpoint: SocketAddr,
    public: bool,
    tcp: Option<TcpEnd>,
    tcp_reported_open: bool,
    next_conn: u32,
    apps: BTreeMap<AppId, App>,
    next_app: u64,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<HostEvent>,
    /// Debug-log lines the daemon produced (counted, not kept).
    pub diagnostics: u64,
    /// Registry connections dialled.
    pub registry_dials: u64,
}

/// The identity of host `index` (stable across restarts).
pub fn host_identity(seed: Seed, index: usize) -> Identity {
    let mut rng = seed.fork("daemon/identity", index as u64);
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    Identity::from_seed(&RustCrypto, s)
}

impl DaemonHost {
    /// Starts a daemon at `now` (it dials the registry at once).
    pub fn new(seed: Seed, cfg: &HostConfig, now: Instant) -> Self {
        let mut rng = seed.fork("daemon/rng", (cfg.index as u64) << 16 | cfg.incarnation);
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let mut chacha = ChaCha8Rng::from_seed(s);
        let tunnel_key = TunnelKey::generate(&RustCrypto, &mut chacha);
        let mut dc = DaemonConfig::new(
            host_identity(seed, cfg.index),
            tunnel_key,
            RustCrypto,
            chacha,
        );
        dc.profile = cfg.profile;
        dc.listen_addr = cfg.endpoint.to_string();
        dc.public = cfg.public;
        dc.unix_ms_at_epoch = UNIX_SECS_AT_ZERO * 1000;
        dc.beacon = cfg.beacon;
        dc.beacon_observer = cfg.observer;
        dc.keepalive = cfg.keepalive;
        dc.admin_token.clone_from(&cfg.admin_token);
        let machine = Machine::new(Daemon::new(now, dc));
        let mut h = DaemonHost {
            machine,
            endpoint: cfg.endpoint,
            public: cfg.public,
            tcp: None,
            tcp_reported_open: false,
            next_conn: 1,
            apps: BTreeMap::new(),
            next_app: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            diagnostics: 0,
            registry_dials: 0,
        };
        h.pump(now);
        h
    }

    /// The daemon's virtual address, once registered.
    pub fn address(&self) -> Option<Addr> {
        self.machine.daemon.address()
    }

    /// The daemon (read-only: paths, node, trust).
    pub fn daemon(&self) -> &SimDaemon {
        &self.machine.daemon
    }

    /// The daemon's counters.
    pub fn daemon_stats(&self) -> pilot_proto::daemon::DaemonStats {
        self.machine.daemon.stats()
    }

    /// The host's disk.
    pub fn disk(&self) -> &MemDisk {
        &self.machine.disk
    }

    /// The host's disk, to make it fail ([`MemDisk::fail`]).
    pub fn disk_mut(&mut self) -> &mut MemDisk {
        &mut self.machine.disk
    }

    /// Whether the daemon was configured public.
    pub fn public(&self) -> bool {
        self.public
    }

    /// The host's UDP endpoint.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoint
    }

    /// Whether the registry connection is open.
    pub fn registry_open(&self) -> bool {
        self.tcp
            .as_ref()
            .is_some_and(|t| t.state() == TcpState::Open)
    }

    /// A new application connects to the daemon's IPC socket; `None` if
    /// the daemon refuses it.
    pub fn app_open(&mut self, now: Instant) -> Option<AppId> {
        let id = self.machine.open(now).ok()?;
        let app = AppId(self.next_app);
        self.next_app += 1;
        self.apps.insert(
            app,
            App {
                id,
                session: ClientSession::default(),
                closed: false,
            },
        );
        self.pump(now);
        Some(app)
    }

    /// The client session of application `app` (replies, stream data,
    /// accepts, datagrams).
    pub fn session(&mut self, app: AppId) -> Option<&mut ClientSession> {
        self.apps.get_mut(&app).map(|a| &mut a.session)
    }

    /// Application `app` starts a request that expects a reply (take it
    /// from its [`DaemonHost::session`]).
    pub fn app_request(
        &mut self,
        now: Instant,
        app: AppId,
        msg: &IpcMessage<'_>,
    ) -> Result<(), RequestError> {
        let a = self
            .apps
            .get_mut(&app)
            .filter(|a| !a.closed)
            .ok_or(RequestError::Closed)?;
        let bytes = a.session.request(msg)?;
        self.app_write(now, app, &bytes);
        Ok(())
    }

    /// Application `app` writes one IPC message that expects no reply
    /// (`Send`, `SendTo`). Returns `false` if the message cannot be
    /// encoded or the application is gone.
    pub fn app_send(&mut self, now: Instant, app: AppId, msg: &IpcMessage<'_>) -> bool {
        match frame(msg) {
            Ok(bytes) => self.app_write(now, app, &bytes),
            Err(_) => false,
        }
    }

    /// Application `app` takes what its stream `conn_id` received so far;
    /// `true` with it once the stream ended (or the session did).
    pub fn app_read(&mut self, now: Instant, app: AppId, conn_id: u32) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut ended = true;
        if let Some(a) = self.apps.get_mut(&app) {
            ended = loop {
                match a.session.read_chunk(conn_id) {
                    Read::Data(d) => got.extend_from_slice(&d),
                    Read::Eof | Read::Closed => break true,
                    Read::Pending => break false,
                }
            };
        }
        // Reading made room in the session: the daemon may write on.
        self.pump(now);
        (got, ended)
    }

    /// Application `app` closes its stream `conn_id` (the session sees the
    /// end of stream once the daemon's `CloseOk` arrives).
    pub fn app_close_conn(&mut self, now: Instant, app: AppId, conn_id: u32) -> bool {
        let Some(a) = self.apps.get_mut(&app) else {
            return false;
        };
        let bytes = a.session.close(conn_id);
        self.app_write(now, app, &bytes)
    }

    /// The application writes raw bytes to its IPC socket.
    pub fn app_write(&mut self, now: Instant, app: AppId, bytes: &[u8]) -> bool {
        let Some(a) = self.apps.get(&app).filter(|a| !a.closed) else {
            return false;
        };
        let ok = self.machine.write(a.id, bytes);
        self.pump(now);
        ok
    }

    /// Bytes the application wrote that the daemon has not read yet.
    pub fn app_backlog(&self, app: AppId) -> usize {
        self.apps
            .get(&app)
            .and_then(|a| self.machine.socket(a.id))
            .map_or(0, |s| s.backlog())
    }

    /// The application disconnects.
    pub fn app_close(&mut self, now: Instant, app: AppId) {
        if let Some(a) = self.apps.remove(&app) {
            self.machine.close(now, a.id);
        }
        self.pump(now);
    }

    /// Graceful stop of the daemon ([`HostEvent::Stopped`] follows).
    pub fn shutdown(&mut self, now: Instant) {
        self.machine.daemon.shutdown(now);
        self.pump(now);
    }

    /// Steps the machine until nothing moves: its registry work goes to
    /// the modelled TCP connection, its datagrams out, its events to the
    /// host's, and bytes move between the sockets and the applications'
    /// sessions.
    fn pump(&mut self, now: Instant) {
        for _ in 0..1_000_000 {
            let mut moved = self.machine.step(now);
            while let Some(io) = self.machine.registry.pop_front() {
                moved = true;
                match io {
                    RegistryIo::Dial => self.dial_registry(now),
                    RegistryIo::Close => {
                        if let Some(mut old) = self.tcp.take() {
                            old.reset();
                            self.flush_tcp(&mut old);
                        }
                    }
                    RegistryIo::Bytes(bytes) => {
                        if let Some(t) = self.tcp.as_mut() {
                            t.write(now, &bytes);
                        }
                    }
                }
            }
            for o in std::mem::take(&mut self.machine.log) {
                match o {
                    Output::Event(ev) => self.event(ev),
                    Output::Disk(w) if self.machine.disk.fail.is_none() => self
                        .events
                        .push_back(HostEvent::Saved(MemDisk::file_of(&w.write).0)),
                    _ => {}
                }
            }
            self.out.extend(self.machine.transmits.drain(..));
            moved |= self.pump_tcp(now);
            moved |= self.pump_apps(now);
            if !moved {
                return;
            }
        }
    }

    fn dial_registry(&mut self, now: Instant) {
        if let Some(mut old) = self.tcp.take() {
            old.reset();
            self.flush_tcp(&mut old);
        }
        self.registry_dials += 1;
        let conn = self.next_conn;
        self.next_conn = self.next_conn.wrapping_add(1);
        self.tcp = Some(TcpEnd::connect(now, RENDEZVOUS_ADDR, conn));
        self.tcp_reported_open = false;
    }

    fn event(&mut self, ev: DaemonEvent) {
        match ev {
            DaemonEvent::Registered { node_id, address } => self
                .events
                .push_back(HostEvent::Registered { node_id, address }),
            DaemonEvent::Trust(t) => self.events.push_back(HostEvent::Trust(format!("{t:?}"))),
            DaemonEvent::Diagnostic(_) => self.diagnostics += 1,
            DaemonEvent::Stopped => self.events.push_back(HostEvent::Stopped),
            DaemonEvent::Webhook(_) => {}
        }
    }

    fn flush_tcp(&mut self, t: &mut TcpEnd) {
        while let Some(s) = t.poll_transmit() {
            self.out.push_back(s);
        }
    }

    fn pump_tcp(&mut self, now: Instant) -> bool {
        let Some(mut t) = self.tcp.take() else {
            return false;
        };
        let mut moved = false;
        self.flush_tcp(&mut t);
        match t.state() {
            TcpState::Open if !self.tcp_reported_open => {
                self.tcp_reported_open = true;
                self.tcp = Some(t);
                self.events.push_back(HostEvent::RegistryUp);
                self.machine.daemon.registry_connected(now);
                return true;
            }
            TcpState::Failed => {
                self.events.push_back(HostEvent::RegistryDown);
                self.machine.daemon.registry_disconnected(now);
                return true;
            }
            _ => {}
        }
        let bytes = t.read();
        self.tcp = Some(t);
        if !bytes.is_empty() {
            moved = true;
            self.machine.daemon.handle_registry_bytes(now, &bytes);
        }
        moved
    }

    /// Moves bytes between each application's socket and its session: what
    /// the daemon wrote, as far as the session has room; what the session
    /// itself wants sent (a `Close` for a refused accept). A socket the
    /// daemon closed ends the session.
    fn pump_apps(&mut self, now: Instant) -> bool {
        let mut moved = false;
        for (app, a) in self.apps.iter_mut() {
            if a.closed {
                continue;
            }
            let room = a.session.input_room();
            let bytes = self.machine.read(now, a.id, room);
            if !bytes.is_empty() {
                a.session.handle_input(&bytes);
                moved = true;
            }
            while let Some(f) = a.session.poll_transmit() {
                moved |= self.machine.write(a.id, &f);
            }
            let sock_closed = self.machine.socket(a.id).is_none_or(|s| s.closed);
            if sock_closed && self.machine.socket(a.id).is_none_or(|s| s.unread() == 0) {
                a.closed = true;
                a.session.handle_closed(None);
                self.events.push_back(HostEvent::AppClosed(*app));
                moved = true;
            }
        }
        moved
    }
}

impl SimNode for DaemonHost {
    type Event = HostEvent;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if let Some(seg) = Segment::decode(bytes) {
            if from == RENDEZVOUS_ADDR {
                if let Some(t) = self.tcp.as_mut().filter(|t| t.conn() == seg.conn) {
                    t.handle(now, &seg);
                }
            }
        } else {
            let mut b = bytes.to_vec();
            self.machine.daemon.handle_udp(now, from, &mut b);
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.tcp.as_mut() {
            t.handle_timeout(now);
        }
        if self.machine.timer.is_some_and(|t| t <= now) {
            self.machine.daemon.handle_timeout(now);
        }
        self.pump(now);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (dst, bytes) = self.out.pop_front()?;
        buf.get_mut(..bytes.len())?.copy_from_slice(&bytes);
        Some(Transmit {
            dst,
            len: bytes.len(),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let t = self.tcp.as_ref().and_then(|t| t.poll_timeout());
        self.machine.timer.into_iter().chain(t).min()
    }

    fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }
}
