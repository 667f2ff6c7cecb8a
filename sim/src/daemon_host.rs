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
//! - **Applications**: IPC clients ([`AppId`]). An application writes
//!   encoded IPC frames ([`DaemonHost::app_send`]) and every complete
//!   frame the daemon writes back is reported as [`HostEvent::Ipc`]
//!   (bytes, decoded by the scenario with the IPC wire codec). Input is
//!   fed only while the daemon does not pause reading, as a socket would.
//!
//! After every input the host drains `poll_output` until `None`, carries
//! out each output (datagrams, registry bytes, IPC bytes, client closes,
//! disk work, events, the timer), reports the completions back
//! (`ipc_consumed`, `disk_done`, `ipc_closed`) and repeats until nothing
//! moves.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::daemon::{
    ClientId, Daemon, DaemonConfig, DaemonEvent, DiskWrite, Output, WorkToken,
};
use pilot_proto::node::MIN_TRANSMIT_BUFFER;
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use pilot_proto::wire::ipc::{IpcMessage, encode_frame, parse_frame};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

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
    /// One complete IPC frame body the daemon wrote to application `app`.
    Ipc {
        /// The application.
        app: AppId,
        /// The frame body (command byte and payload).
        body: Vec<u8>,
    },
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

/// The host's disk: path to contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisk {
    /// Files by path (`trust.json`, `received/NAME`, `inbox/NAME`,
    /// `profile.json`).
    pub files: BTreeMap<String, Vec<u8>>,
    /// When set, every write fails with this text (a full or read-only
    /// disk).
    pub fail: Option<String>,
}

impl MemDisk {
    /// Performs one write the daemon asked for; the path written.
    pub fn write(&mut self, w: &DiskWrite) -> Result<String, String> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let (path, data) = match w {
            DiskWrite::Trust(t) => ("trust.json".to_owned(), t.as_bytes().to_vec()),
            DiskWrite::Profile(p) => ("profile.json".to_owned(), p.as_bytes().to_vec()),
            DiskWrite::ReceivedFile { name, data, .. } => {
                (format!("received/{name}"), data.clone())
            }
            DiskWrite::Inbox { name, json } => (format!("inbox/{name}"), json.as_bytes().to_vec()),
            DiskWrite::Task(pilot_proto::services::tasks::TaskEffect::Create {
                dir,
                name,
                bytes,
            }) => (format!("tasks/{}/{name}", dir.name()), bytes.clone()),
            DiskWrite::Task(pilot_proto::services::tasks::TaskEffect::UpdateSubmitted {
                task_id,
                patch,
                ..
            }) => (
                format!("tasks/submitted/{task_id}.update"),
                patch.to_string().into_bytes(),
            ),
            DiskWrite::Task(pilot_proto::services::tasks::TaskEffect::Expire {
                task_id,
                when,
                to,
                ..
            }) => (
                format!("tasks/received/{task_id}.expire"),
                format!("{}->{}", when.as_str(), to.as_str()).into_bytes(),
            ),
        };
        self.files.insert(path.clone(), data);
        Ok(path)
    }
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
    /// Admin token the daemon passes on (network creation); empty: none.
    pub admin_token: Vec<u8>,
}

struct App {
    id: ClientId,
    /// Frames written by the application, not yet read by the daemon.
    tx: VecDeque<u8>,
    /// Bytes the daemon wrote, not yet a complete frame.
    rx: Vec<u8>,
    closed: bool,
}

/// Most bytes handed to the daemon per read (a socket read's size).
const READ_CHUNK: usize = 64 * 1024;

/// A daemon, its registry connection, its disk and its applications.
pub struct DaemonHost {
    daemon: SimDaemon,
    endpoint: SocketAddr,
    public: bool,
    tcp: Option<TcpEnd>,
    tcp_reported_open: bool,
    next_conn: u32,
    apps: BTreeMap<AppId, App>,
    next_app: u64,
    /// The disk.
    pub disk: MemDisk,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<HostEvent>,
    /// The daemon's timer (its last [`Output::Timeout`]).
    timer: Option<Instant>,
    buf: Vec<u8>,
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
        dc.keepalive = cfg.keepalive;
        dc.admin_token.clone_from(&cfg.admin_token);
        let daemon = Daemon::new(now, dc);
        let mut h = DaemonHost {
            daemon,
            endpoint: cfg.endpoint,
            public: cfg.public,
            tcp: None,
            tcp_reported_open: false,
            next_conn: 1,
            apps: BTreeMap::new(),
            next_app: 1,
            disk: MemDisk::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            timer: None,
            buf: vec![0; MIN_TRANSMIT_BUFFER],
            diagnostics: 0,
            registry_dials: 0,
        };
        h.pump(now);
        h
    }

    /// The daemon's virtual address, once registered.
    pub fn address(&self) -> Option<Addr> {
        self.daemon.address()
    }

    /// The daemon (read-only: paths, node, trust).
    pub fn daemon(&self) -> &SimDaemon {
        &self.daemon
    }

    /// The daemon's counters.
    pub fn daemon_stats(&self) -> pilot_proto::daemon::DaemonStats {
        self.daemon.stats()
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
        let id = self.daemon.ipc_open(now).ok()?;
        let app = AppId(self.next_app);
        self.next_app += 1;
        self.apps.insert(
            app,
            App {
                id,
                tx: VecDeque::new(),
                rx: Vec::new(),
                closed: false,
            },
        );
        self.pump(now);
        Some(app)
    }

    /// The application writes one IPC message (encoded with the wire
    /// codec). Returns `false` if the message cannot be encoded or the
    /// application is gone.
    pub fn app_send(&mut self, now: Instant, app: AppId, msg: &IpcMessage<'_>) -> bool {
        let mut frame = vec![0u8; msg.encoded_len()];
        if encode_frame(msg, &mut frame).is_err() {
            return false;
        }
        self.app_write(now, app, &frame)
    }

    /// The application writes raw bytes to its IPC socket.
    pub fn app_write(&mut self, now: Instant, app: AppId, bytes: &[u8]) -> bool {
        let Some(a) = self.apps.get_mut(&app).filter(|a| !a.closed) else {
            return false;
        };
        a.tx.extend(bytes);
        self.pump(now);
        true
    }

    /// Bytes the application wrote that the daemon has not read yet.
    pub fn app_backlog(&self, app: AppId) -> usize {
        self.apps.get(&app).map_or(0, |a| a.tx.len())
    }

    /// The application disconnects.
    pub fn app_close(&mut self, now: Instant, app: AppId) {
        if let Some(a) = self.apps.remove(&app) {
            if !a.closed {
                self.daemon.ipc_closed(now, a.id);
            }
        }
        self.pump(now);
    }

    /// Graceful stop of the daemon ([`HostEvent::Stopped`] follows).
    pub fn shutdown(&mut self, now: Instant) {
        self.daemon.shutdown(now);
        self.pump(now);
    }

    /// Drains the daemon's output channel until nothing moves: every
    /// [`Output`] is carried out, then the completions it implies (IPC
    /// bytes written, disk work done, clients closed) and the registry
    /// connection's news go back in, and the applications' input is fed
    /// while the daemon reads.
    fn pump(&mut self, now: Instant) {
        for _ in 0..1_000_000 {
            let mut written: Vec<(ClientId, usize)> = Vec::new();
            let mut disk_done: Vec<(WorkToken, Result<(), String>)> = Vec::new();
            let mut closed: Vec<ClientId> = Vec::new();
            while let Some(o) = self.daemon.poll_output(&mut self.buf) {
                match o {
                    Output::Transmit(t) => {
                        if let Some(b) = self.buf.get(..t.len) {
                            self.out.push_back((t.dst, b.to_vec()));
                        }
                    }
                    // Batches come only after `set_max_segments`, which the
                    // simulator never calls; split one anyway.
                    Output::TransmitBatch(b) => {
                        if let Some(bytes) = self.buf.get(..b.len) {
                            for seg in bytes.chunks(b.segment_size.max(1)) {
                                self.out.push_back((b.dst, seg.to_vec()));
                            }
                        }
                    }
                    Output::DialRegistry => self.dial_registry(now),
                    Output::CloseRegistry => {
                        if let Some(mut old) = self.tcp.take() {
                            old.reset();
                            self.flush_tcp(&mut old);
                        }
                    }
                    Output::RegistryBytes(bytes) => {
                        if let Some(t) = self.tcp.as_mut() {
                            t.write(now, &bytes);
                        }
                    }
                    Output::Ipc { client, data } => {
                        // The application reads everything at once.
                        if let Some(a) = self.apps.values_mut().find(|a| a.id == client) {
                            a.rx.extend_from_slice(&data);
                        }
                        written.push((client, data.len()));
                    }
                    Output::CloseClient(client) => closed.push(client),
                    Output::Disk(work) => {
                        let r = self.disk.write(&work.write);
                        if let Ok(path) = &r {
                            self.events.push_back(HostEvent::Saved(path.clone()));
                        }
                        disk_done.push((work.token, r.map(|_| ())));
                    }
                    Output::Event(ev) => self.event(ev),
                    Output::Timeout(t) => self.timer = t,
                }
            }
            let mut moved = !(written.is_empty() && disk_done.is_empty() && closed.is_empty());
            for (client, n) in written {
                self.daemon.ipc_consumed(now, client, n);
            }
            for (token, r) in disk_done {
                self.daemon.disk_done(now, token, r);
            }
            for client in closed {
                if let Some((app, a)) = self.apps.iter_mut().find(|(_, a)| a.id == client) {
                    a.closed = true;
                    self.events.push_back(HostEvent::AppClosed(*app));
                }
                self.daemon.ipc_closed(now, client);
            }
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
                self.daemon.registry_connected(now);
                return true;
            }
            TcpState::Failed => {
                self.events.push_back(HostEvent::RegistryDown);
                self.daemon.registry_disconnected(now);
                return true;
            }
            _ => {}
        }
        let bytes = t.read();
        self.tcp = Some(t);
        if !bytes.is_empty() {
            moved = true;
            self.daemon.handle_registry_bytes(now, &bytes);
        }
        moved
    }

    fn pump_apps(&mut self, now: Instant) -> bool {
        let mut moved = false;
        for (app, a) in self.apps.iter_mut() {
            if a.closed {
                continue;
            }
            // Input, while the daemon reads.
            while !a.tx.is_empty() && !self.daemon.ipc_read_paused(a.id) {
                let n = a.tx.len().min(READ_CHUNK);
                let chunk: Vec<u8> = a.tx.drain(..n).collect();
                self.daemon.handle_ipc_bytes(now, a.id, &chunk);
                moved = true;
            }
            let mut pos = 0;
            while let Ok(Some((body, used))) = parse_frame(a.rx.get(pos..).unwrap_or(&[])) {
                self.events.push_back(HostEvent::Ipc {
                    app: *app,
                    body: body.to_vec(),
                });
                pos += used;
            }
            a.rx.drain(..pos.min(a.rx.len()));
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
        } else if let Some(b) = self.buf.get_mut(..bytes.len()) {
            b.copy_from_slice(bytes);
            self.daemon.handle_udp(now, from, b);
        }
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.tcp.as_mut() {
            t.handle_timeout(now);
        }
        if self.timer.is_some_and(|t| t <= now) {
            self.daemon.handle_timeout(now);
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
        self.timer.into_iter().chain(t).min()
    }

    fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }
}
