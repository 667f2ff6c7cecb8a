//! A daemon with the machine around it, minus the network: the one harness
//! that drives a [`Daemon`] for tests and the simulator.
//!
//! A [`Machine`] owns the daemon, an in-memory disk ([`MemDisk`]) and one
//! byte pipe per IPC client ([`Socket`]: what the application wrote and the
//! daemon has not read, and what the daemon wrote and the application has
//! not read). [`Machine::step`] drains [`Daemon::poll_output`] once and
//! carries out what needs no network: it completes disk work
//! ([`Daemon::disk_done`]), closes clients ([`Daemon::ipc_closed`]), keeps
//! IPC output for the application and feeds the applications' input while
//! the daemon reads ([`Daemon::ipc_read_paused`]). What needs a network
//! is queued for the owner: UDP datagrams in [`Machine::transmits`],
//! registry-connection work in [`Machine::registry`]. Applications read with
//! [`Machine::read`], which reports the bytes read
//! ([`Daemon::ipc_consumed`]), so back-pressure is that of a real socket.
//!
//! Two owners wire machines into networks: the daemon's unit tests (an
//! instant network with an in-process registry) and the simulator's
//! daemon hosts (the seeded engine, a modelled registry TCP connection, and
//! applications speaking through [`crate::wire::ipc::client::ClientSession`]).
//! Both loop "step, move what the step queued, repeat until nothing moves".
//!
//! Pure and bounded by what the owner drains; no I/O, no clock.

use std::collections::{BTreeMap, VecDeque};

use core::net::SocketAddr;

use rand_core::{CryptoRng, RngCore, SeedableRng};

use crate::crypto::provider::CryptoProvider;
use crate::node::MIN_TRANSMIT_BUFFER;
use crate::services::tasks::TaskEffect;
use crate::time::Instant;

use super::{ClientId, Daemon, DaemonError, DaemonEvent, DiskWork, DiskWrite, Output, WorkToken};

/// Most bytes handed to the daemon per read of a client (a socket read).
pub const READ_CHUNK: usize = 64 * 1024;

/// The machine's disk: path to contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemDisk {
    /// Files by path (`trust.json`, `received/NAME`, `inbox/NAME`,
    /// `profile.json`, `tasks/…`).
    pub files: BTreeMap<String, Vec<u8>>,
    /// When set, every write fails with this text (a full or read-only
    /// disk).
    pub fail: Option<String>,
}

impl MemDisk {
    /// The path a write goes to, and its contents.
    pub fn file_of(w: &DiskWrite) -> (String, Vec<u8>) {
        match w {
            DiskWrite::Trust(t) => ("trust.json".to_owned(), t.as_bytes().to_vec()),
            DiskWrite::Profile(p) => ("profile.json".to_owned(), p.as_bytes().to_vec()),
            DiskWrite::ReceivedFile { name, data, .. } => {
                (format!("received/{name}"), data.clone())
            }
            DiskWrite::Inbox { name, json } => (format!("inbox/{name}"), json.as_bytes().to_vec()),
            DiskWrite::Task(TaskEffect::Create { dir, name, bytes }) => {
                (format!("tasks/{}/{name}", dir.name()), bytes.clone())
            }
            DiskWrite::Task(TaskEffect::Expire {
                task_id, when, to, ..
            }) => (
                format!("tasks/received/{task_id}.expire"),
                format!("{}->{}", when.as_str(), to.as_str()).into_bytes(),
            ),
            DiskWrite::IdentityNext(id) => ("identity.json.next".to_owned(), id.public().to_vec()),
            DiskWrite::IdentityCommit(id) => ("identity.json".to_owned(), id.public().to_vec()),
            DiskWrite::IdentityNextDiscard => ("identity.json.next".to_owned(), Vec::new()),
            DiskWrite::Task(TaskEffect::UpdateSubmitted { task_id, patch, .. }) => (
                format!("tasks/submitted/{task_id}.update"),
                patch.to_string().into_bytes(),
            ),
        }
    }

    /// Performs one write the daemon asked for; the path written, or the
    /// failure text.
    pub fn write(&mut self, w: &DiskWrite) -> Result<String, String> {
        if let Some(e) = &self.fail {
            return Err(e.clone());
        }
        let (path, data) = Self::file_of(w);
        match w {
            // The commit replaces the identity and drops `.next`; the
            // discard only drops `.next`.
            DiskWrite::IdentityNextDiscard => {
                self.files.remove(&path);
            }
            DiskWrite::IdentityCommit(_) => {
                self.files.remove("identity.json.next");
                self.files.insert(path.clone(), data);
            }
            _ => {
                self.files.insert(path.clone(), data);
            }
        }
        Ok(path)
    }
}

/// One IPC client's socket, seen from the machine.
#[derive(Clone, Debug, Default)]
pub struct Socket {
    /// Bytes the application wrote that the daemon has not read yet.
    input: VecDeque<u8>,
    /// Bytes the daemon wrote that the application has not read yet.
    output: VecDeque<u8>,
    /// Largest unread output seen (what the daemon let pile up).
    pub max_backlog: usize,
    /// Whether the daemon ever paused reading while input waited.
    pub paused_seen: bool,
    /// The daemon closed the socket ([`Output::CloseClient`]).
    pub closed: bool,
    /// Bytes handed to the daemon per read (`0`: [`READ_CHUNK`]).
    pub feed: usize,
    /// Most unprocessed input the daemon held for this client after a read.
    pub max_in: usize,
}

impl Socket {
    /// Bytes the daemon wrote that the application has not read yet.
    pub fn unread(&self) -> usize {
        self.output.len()
    }

    /// Bytes the application wrote that the daemon has not read yet.
    pub fn backlog(&self) -> usize {
        self.input.len()
    }
}

/// Registry-connection work a step asks of the owner, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryIo {
    /// Open the connection; report [`Daemon::registry_connected`] or
    /// [`Daemon::registry_disconnected`].
    Dial,
    /// Close it (not reported back).
    Close,
    /// Write these bytes to it.
    Bytes(Vec<u8>),
}

/// A daemon, its disk and its clients' sockets (see the module docs).
pub struct Machine<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> {
    /// The daemon.
    pub daemon: Daemon<P, R>,
    /// The disk disk work goes to.
    pub disk: MemDisk,
    /// When set, disk work is kept in [`Machine::held`] instead of being
    /// performed; the owner completes it with [`Daemon::disk_done`].
    pub hold_disk: bool,
    /// Disk work held back (see [`Machine::hold_disk`]).
    pub held: Vec<DiskWork>,
    /// UDP datagrams to send: (destination, bytes).
    pub transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Registry-connection work to do.
    pub registry: VecDeque<RegistryIo>,
    /// Events and performed disk work ([`Output::Event`],
    /// [`Output::Disk`]), in order; the owner drains or inspects it.
    pub log: Vec<Output>,
    /// The daemon's timer (its last [`Output::Timeout`]).
    pub timer: Option<Instant>,
    sockets: BTreeMap<ClientId, Socket>,
    buf: Vec<u8>,
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> core::fmt::Debug for Machine<P, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Machine")
            .field("daemon", &self.daemon)
            .field("sockets", &self.sockets.len())
            .field("timer", &self.timer)
            .finish_non_exhaustive()
    }
}

impl<P: CryptoProvider, R: RngCore + CryptoRng + SeedableRng> Machine<P, R> {
    /// A machine around `daemon`, with an empty disk.
    pub fn new(daemon: Daemon<P, R>) -> Self {
        Machine {
            daemon,
            disk: MemDisk::default(),
            hold_disk: false,
            held: Vec::new(),
            transmits: VecDeque::new(),
            registry: VecDeque::new(),
            log: Vec::new(),
            timer: None,
            sockets: BTreeMap::new(),
            buf: vec![0; MIN_TRANSMIT_BUFFER],
        }
    }

    /// An application connects; the daemon's id for it.
    pub fn open(&mut self, now: Instant) -> Result<ClientId, DaemonError> {
        let id = self.daemon.ipc_open(now)?;
        self.sockets.insert(id, Socket::default());
        Ok(id)
    }

    /// The application of `client` writes `bytes` (read by the daemon in
    /// later steps, while it reads). False if the socket is gone or closed.
    pub fn write(&mut self, client: ClientId, bytes: &[u8]) -> bool {
        match self.sockets.get_mut(&client).filter(|s| !s.closed) {
            Some(s) => {
                s.input.extend(bytes);
                true
            }
            None => false,
        }
    }

    /// The application of `client` reads up to `max` bytes of what the
    /// daemon wrote; the daemon is told they were consumed.
    pub fn read(&mut self, now: Instant, client: ClientId, max: usize) -> Vec<u8> {
        let Some(s) = self.sockets.get_mut(&client) else {
            return Vec::new();
        };
        let n = max.min(s.output.len());
        let out: Vec<u8> = s.output.drain(..n).collect();
        if n > 0 && !s.closed {
            self.daemon.ipc_consumed(now, client, n);
        }
        out
    }

    /// The application of `client` hangs up.
    pub fn close(&mut self, now: Instant, client: ClientId) {
        if let Some(s) = self.sockets.remove(&client) {
            if !s.closed {
                self.daemon.ipc_closed(now, client);
            }
        }
    }

    /// The socket of `client`.
    pub fn socket(&self, client: ClientId) -> Option<&Socket> {
        self.sockets.get(&client)
    }

    /// The socket of `client`, to change how it is read.
    pub fn socket_mut(&mut self, client: ClientId) -> Option<&mut Socket> {
        self.sockets.get_mut(&client)
    }

    /// One round: drains the daemon's output channel, performs (or holds)
    /// disk work, closes clients the daemon closed, then feeds the
    /// applications' input while the daemon reads. Returns whether anything
    /// moved apart from datagrams and the timer (which the owner sees in
    /// [`Machine::transmits`] and [`Machine::timer`]).
    pub fn step(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let mut done: Vec<(WorkToken, Result<(), String>)> = Vec::new();
        let mut closed: Vec<ClientId> = Vec::new();
        while let Some(o) = self.daemon.poll_output(&mut self.buf) {
            match o {
                Output::Transmit(t) => {
                    if let Some(b) = self.buf.get(..t.len) {
                        self.transmits.push_back((t.dst, b.to_vec()));
                    }
                }
                // Batches come only after `set_max_segments`; split one.
                Output::TransmitBatch(b) => {
                    if let Some(bytes) = self.buf.get(..b.len) {
                        for seg in bytes.chunks(b.segment_size.max(1)) {
                            self.transmits.push_back((b.dst, seg.to_vec()));
                        }
                    }
                }
                Output::Timeout(t) => self.timer = t,
                Output::DialRegistry => {
                    moved = true;
                    self.registry.push_back(RegistryIo::Dial);
                }
                Output::CloseRegistry => {
                    moved = true;
                    self.registry.push_back(RegistryIo::Close);
                }
                Output::RegistryBytes(b) => {
                    moved = true;
                    self.registry.push_back(RegistryIo::Bytes(b));
                }
                Output::Ipc { client, data } => {
                    moved = true;
                    if let Some(s) = self.sockets.get_mut(&client) {
                        s.output.extend(data);
                        s.max_backlog = s.max_backlog.max(s.output.len());
                    }
                }
                Output::CloseClient(client) => {
                    moved = true;
                    closed.push(client);
                }
                Output::Disk(w) if self.hold_disk => {
                    moved = true;
                    self.held.push(w);
                }
                Output::Disk(w) => {
                    moved = true;
                    let outcome = self.disk.write(&w.write).map(|_| ());
                    done.push((w.token, outcome));
                    self.log.push(Output::Disk(w));
                }
                Output::Event(ev) => {
                    moved = true;
                    self.log.push(Output::Event(ev));
                }
            }
        }
        for (token, outcome) in done {
            self.daemon.disk_done(now, token, outcome);
        }
        for client in closed {
            if let Some(s) = self.sockets.get_mut(&client) {
                s.closed = true;
            }
            self.daemon.ipc_closed(now, client);
        }
        for (id, s) in self.sockets.iter_mut().filter(|(_, s)| !s.closed) {
            while !s.input.is_empty() {
                if self.daemon.ipc_read_paused(*id) {
                    s.paused_seen = true;
                    break;
                }
                let feed = if s.feed == 0 { READ_CHUNK } else { s.feed };
                let n = s.input.len().min(feed);
                let chunk: Vec<u8> = s.input.drain(..n).collect();
                self.daemon.handle_ipc_bytes(now, *id, &chunk);
                let held = self.daemon.clients.get(id).map_or(0, |c| c.in_len());
                s.max_in = s.max_in.max(held);
                moved = true;
            }
        }
        moved
    }

    /// The events in [`Machine::log`], in order.
    pub fn events(&self) -> impl Iterator<Item = &DaemonEvent> {
        self.log.iter().filter_map(|o| match o {
            Output::Event(e) => Some(e),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr;
    use crate::crypto::identity::{Identity, TunnelKey};
    use crate::crypto::provider::RustCrypto;
    use crate::daemon::DaemonConfig;
    use crate::wire::ipc::{IpcMessage, encode_frame, parse_frame};
    use rand_chacha::ChaCha8Rng;

    fn machine() -> Machine<RustCrypto, ChaCha8Rng> {
        let mut rng = ChaCha8Rng::from_seed([9; 32]);
        let tk = TunnelKey::generate(&RustCrypto, &mut rng);
        let id = Identity::from_seed(&RustCrypto, [9; 32]);
        let mut c = DaemonConfig::new(id, tk, RustCrypto, rng);
        c.registry = false;
        c.address = Some(Addr::new(0, 9));
        Machine::new(Daemon::new(Instant::ZERO, c))
    }

    #[test]
    fn a_request_is_read_answered_and_consumed() {
        let mut m = machine();
        let now = Instant::ZERO;
        while m.step(now) {}
        let c = m.open(now).unwrap();
        let msg = IpcMessage::Info;
        let mut f = vec![0u8; msg.encoded_len()];
        encode_frame(&msg, &mut f).unwrap();
        assert!(m.write(c, &f));
        assert_eq!(m.socket(c).unwrap().backlog(), f.len());
        while m.step(now) {}
        assert_eq!(m.socket(c).unwrap().backlog(), 0, "the daemon read it");
        let unread = m.socket(c).unwrap().unread();
        assert!(unread > 0, "the daemon answered");
        // Reading part of it leaves the rest; reading all of it empties.
        let head = m.read(now, c, 3);
        assert_eq!(head.len(), 3);
        let mut all = head;
        all.extend(m.read(now, c, usize::MAX));
        assert_eq!(all.len(), unread);
        assert_eq!(m.socket(c).unwrap().unread(), 0);
        let (body, used) = parse_frame(&all).unwrap().unwrap();
        assert_eq!(used, all.len());
        assert!(matches!(
            IpcMessage::decode(body).unwrap(),
            IpcMessage::InfoOk(_)
        ));
    }

    #[test]
    fn disk_work_is_performed_or_held_and_failures_reported() {
        let mut disk = MemDisk::default();
        let w = DiskWrite::Trust("{}".into());
        assert_eq!(disk.write(&w), Ok("trust.json".into()));
        assert_eq!(disk.files.get("trust.json").map(Vec::len), Some(2));
        disk.fail = Some("full".into());
        assert_eq!(disk.write(&w), Err("full".into()));
        // A client sending an oversized frame is closed and its socket
        // marked so.
        let mut m = machine();
        let now = Instant::ZERO;
        let c = m.open(now).unwrap();
        assert!(m.write(c, &[0x00, 0x10, 0x00, 0x01, 0x06]));
        for _ in 0..10 {
            m.step(now);
            let _ = m.read(now, c, usize::MAX);
        }
        assert!(m.socket(c).unwrap().closed);
        assert!(!m.write(c, b"more"), "a closed socket takes nothing");
    }
}
