//! Fuzz body for one whole `Daemon`: IPC bytes from several clients, UDP
//! datagrams, registry bytes and timeouts interleaved (`spec/daemon.md`,
//! `spec/ipc.md`, `spec/registry.md`).
//!
//! The input's first byte picks the configuration (bit 0: with a registry,
//! so the node waits for registration; without, it runs at once with a
//! fixed address). The rest is a script of records `ctl ‖ len ‖ len bytes`;
//! the low 3 bits of `ctl` pick the step and `ctl >> 3` its argument:
//!
//! | `ctl & 7` | step |
//! |---|---|
//! | 0 | the record's bytes from IPC client `arg % 4` |
//! | 1 | the record's bytes as a UDP datagram (from a known peer or a stranger) |
//! | 2 | the record's bytes from the registry |
//! | 3 | advance time by `arg × 53 ms` and run the timers |
//! | 4 | a new IPC client |
//! | 5 | IPC client `arg % 4` goes away |
//! | 6 | the registry connection comes up (`arg` even) or drops |
//! | 7 | the daemon is asked to shut down |
//!
//! The script is parsed into [`Step`]s first; [`drive`] is the only code
//! that calls the `Daemon` API, so an API change touches one function.
//! After every step every output is drained. A panic is a found bug.

use std::net::SocketAddr;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::daemon::{Daemon, DaemonConfig, OUT_DATAGRAM_CAP, OUT_HIGH_WATER, Output};
use pilot_proto::node::MIN_TRANSMIT_BUFFER;
use pilot_proto::time::Instant;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

/// Most IPC clients a script names.
const CLIENTS: usize = 4;
/// Most bytes handed to one IPC client and not yet reported written that
/// the daemon may have out at once: its high-water mark plus the datagram
/// allowance plus one largest frame (the body reads only when time
/// passes, so a daemon that ignores back-pressure would exceed it).
const IPC_OUT_CAP: usize = OUT_HIGH_WATER + OUT_DATAGRAM_CAP + (1 << 20);

/// One input to the daemon, independent of the daemon's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes from IPC client slot `n`.
    Ipc(usize, Vec<u8>),
    /// A UDP datagram from a known peer (`false`) or a stranger (`true`).
    Udp(bool, Vec<u8>),
    /// Bytes from the registry connection.
    Registry(Vec<u8>),
    /// Time passes by this many milliseconds.
    Advance(u64),
    /// A new IPC client connects.
    IpcOpen,
    /// IPC client slot `n` goes away.
    IpcClose(usize),
    /// The registry connection comes up (`true`) or drops (`false`).
    RegistryLink(bool),
    /// Shutdown is requested.
    Shutdown,
}

/// The configuration byte and the steps of a script.
pub fn parse(data: &[u8]) -> (bool, Vec<Step>) {
    let Some((&cfg, rest)) = data.split_first() else {
        return (false, Vec::new());
    };
    let mut steps = Vec::new();
    for (ctl, chunk) in super::records(rest) {
        let arg = ctl >> 3;
        steps.push(match ctl & 7 {
            0 => Step::Ipc(usize::from(arg) % CLIENTS, chunk.to_vec()),
            1 => Step::Udp(arg & 1 == 1, chunk.to_vec()),
            2 => Step::Registry(chunk.to_vec()),
            3 => Step::Advance(u64::from(arg) * 53),
            4 => Step::IpcOpen,
            5 => Step::IpcClose(usize::from(arg) % CLIENTS),
            6 => Step::RegistryLink(arg & 1 == 0),
            _ => Step::Shutdown,
        });
    }
    (cfg & 1 == 1, steps)
}

/// Runs the script in `data` (see the module docs).
pub fn run(data: &[u8]) {
    let (registry, steps) = parse(data);
    drive(registry, &steps);
}

/// What a run reached, for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// IPC output bytes the daemon produced.
    pub ipc_bytes: usize,
    /// UDP datagrams it sent.
    pub transmits: usize,
    /// Registry messages it sent.
    pub registry_msgs: usize,
}

/// Feeds `steps` to one daemon and drains it after each; the only code
/// that touches the `Daemon` API.
pub fn drive(registry: bool, steps: &[Step]) -> Reach {
    let identity = Identity::from_seed(&RustCrypto, [5; 32]);
    let mut rng = ChaCha8Rng::from_seed([5; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    let mut cfg = DaemonConfig::new(identity, tunnel_key, RustCrypto, rng);
    cfg.registry = registry;
    if !registry {
        cfg.address = Some(Addr::new(0, 5));
    }
    let mut now = Instant::ZERO;
    let mut d = Daemon::new(now, cfg);
    let peer = Addr::new(0, 6);
    let peer_ep = SocketAddr::from(([192, 0, 2, 6], 4006));
    let stranger = SocketAddr::from(([198, 51, 100, 9], 999));
    let peer_key = *Identity::from_seed(&RustCrypto, [6; 32]).public();
    let _ = d.add_peer(now, peer, peer_ep, Some(peer_key));
    let mut clients = Vec::new();
    let mut reach = Reach::default();
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER.max(65_536)];
    let mut disk_writes = 0u64;
    let mut unread = std::collections::BTreeMap::new();
    for step in steps {
        match step {
            Step::Ipc(n, bytes) => {
                if let Some(&c) = clients.get(*n % clients.len().max(1)) {
                    if !d.ipc_read_paused(c) {
                        d.handle_ipc_bytes(now, c, bytes);
                    }
                }
            }
            Step::Udp(strange, bytes) => {
                let mut b = bytes.clone();
                d.handle_udp(now, if *strange { stranger } else { peer_ep }, &mut b);
            }
            Step::Registry(bytes) => d.handle_registry_bytes(now, bytes),
            Step::Advance(ms) => {
                now = now + core::time::Duration::from_millis(*ms);
                // The clients read what they were given.
                for (c, n) in std::mem::take(&mut unread) {
                    d.ipc_consumed(now, c, n);
                }
                if d.poll_timeout().is_some_and(|t| t <= now) {
                    d.handle_timeout(now);
                }
            }
            Step::IpcOpen => {
                if clients.len() < CLIENTS {
                    if let Ok(c) = d.ipc_open(now) {
                        clients.push(c);
                    }
                }
            }
            Step::IpcClose(n) => {
                if *n < clients.len() {
                    let c = clients.remove(*n);
                    unread.remove(&c);
                    d.ipc_closed(now, c);
                }
            }
            Step::RegistryLink(true) => d.registry_connected(now),
            Step::RegistryLink(false) => d.registry_disconnected(now),
            Step::Shutdown => d.shutdown(now),
        }
        // Drain every output (the daemon's one output channel). Disk work
        // completes at once; every third write fails, as a full disk would.
        let mut outputs = 0usize;
        while let Some(o) = d.poll_output(&mut buf) {
            outputs += 1;
            assert!(outputs < 1_000_000, "poll_output never ends");
            match o {
                Output::Transmit(t) => {
                    assert!(t.len <= buf.len(), "transmit longer than the buffer");
                    reach.transmits += 1;
                }
                Output::TransmitBatch(b) => {
                    assert!(b.len <= buf.len(), "batch longer than the buffer");
                    reach.transmits += b.segments;
                }
                Output::RegistryBytes(_) => reach.registry_msgs += 1,
                Output::Ipc { client, data } => {
                    reach.ipc_bytes += data.len();
                    let held = unread.entry(client).or_insert(0);
                    *held += data.len();
                    assert!(*held <= IPC_OUT_CAP, "IPC output ignores back-pressure");
                }
                Output::CloseClient(c) => {
                    clients.retain(|&x| x != c);
                    unread.remove(&c);
                    d.ipc_closed(now, c);
                }
                Output::Disk(w) => {
                    disk_writes += 1;
                    let outcome = if disk_writes % 3 == 0 {
                        Err("no space left on device".to_owned())
                    } else {
                        Ok(())
                    };
                    d.disk_done(now, w.token, outcome);
                }
                Output::DialRegistry
                | Output::CloseRegistry
                | Output::Event(_)
                | Output::Timeout(_) => {}
            }
        }
    }
    reach
}

/// Seed scripts: a client asks for info, binds, dials the known peer and
/// sends datagrams, with time passing; once without and once with a
/// registry link.
pub fn seeds() -> Vec<Vec<u8>> {
    use pilot_proto::wire::ipc::IpcMessage;
    use pilot_proto::wire::ipc::client::frame;
    let mut s = vec![0u8];
    let mut rec = |ctl: u8, chunk: &[u8]| super::record(&mut s, ctl, chunk);
    let msgs = [
        IpcMessage::Info,
        IpcMessage::Health,
        IpcMessage::Bind { port: 1000 },
        IpcMessage::Dial {
            addr: Addr::new(0, 6),
            port: 7,
        },
        IpcMessage::SendTo {
            dst: Addr::new(0, 6),
            dst_port: 1000,
            data: b"hi",
        },
    ];
    rec(4, &[]);
    for m in &msgs {
        rec(0, &frame(m).unwrap_or_default());
        rec(3 | (4 << 3), &[]);
    }
    rec(1, b"PILT not really");
    rec(3 | (31 << 3), &[]);
    rec(5, &[]);
    let without = s.clone();
    let mut with = s;
    with[0] = 1;
    with.extend_from_slice(&[6, 0, 2, 3, 1, 2, 3, 3 | (31 << 3), 0, 7, 0]);
    vec![without, with]
}
