//! Fuzz body for one whole [`Node`]: interleaved datagrams, timeouts and
//! application calls (`spec/transport.md`, `spec/crypto.md`).
//!
//! Two honest nodes, A (0:1) and B (0:2), know each other; what each sends
//! waits in a bounded in-flight queue. The input is a script of records
//! `ctl ‖ len ‖ len bytes`; the low 3 bits of `ctl` pick the step:
//!
//! | `ctl & 7` | step |
//! |---|---|
//! | 0 | deliver B's next datagram to A, with one byte changed when the record says so |
//! | 1 | deliver A's next datagram to B |
//! | 2 | hand A the record's bytes as a datagram from B's endpoint (or a stranger's) |
//! | 3 | advance time by `(ctl >> 3) × 37 ms` and run both nodes' timers |
//! | 4, 5 | an application call on A (4) or B (5), chosen by the record |
//! | 6 | lose B's next datagram |
//! | 7 | duplicate B's next datagram |
//!
//! After every step both nodes' outputs are drained and the bounds checked:
//! transmits fit the buffer, connection and half-open tables stay within
//! their limits, and no call panics. A panic is a found bug.

use std::collections::VecDeque;
use std::net::SocketAddr;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::node::{ConnId, Event, Limits, MIN_TRANSMIT_BUFFER, Node, NodeConfig};
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;

type FuzzNode = Node<RustCrypto, ChaCha8Rng>;

/// Most datagrams in flight per direction.
const IN_FLIGHT: usize = 64;
/// Most connection ids each side remembers for application calls.
const KNOWN_CONNS: usize = 16;
/// Ports the script uses (small, so calls meet each other).
const PORTS: [u16; 3] = [7, 1000, 1001];
/// Connection table bound of both nodes (small, so it is reached).
const MAX_CONNS: usize = 8;

fn endpoint(i: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i], 4000 + u16::from(i)))
}

fn node(i: u8, peer: u8, now: Instant) -> FuzzNode {
    let id = |k: u8| Identity::from_seed(&RustCrypto, [k; 32]);
    let mut rng = ChaCha8Rng::from_seed([i; 32]);
    let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
    let limits = Limits {
        max_conns: MAX_CONNS,
        ..Limits::default()
    };
    let mut n = Node::new(
        now,
        NodeConfig {
            addr: Addr::new(0, u32::from(i)),
            identity: Some(id(i)),
            tunnel_key,
            profile: WireProfile::Current,
            provider: RustCrypto,
            rng,
            encrypt: true,
            admin_token: Vec::new(),
            limits,
        },
    );
    n.add_peer(
        Addr::new(0, u32::from(peer)),
        endpoint(peer),
        Some(*id(peer).public()),
    );
    n
}

/// One side: the node, what it sent that is still in flight, and the
/// connections the script may name.
struct Side {
    node: FuzzNode,
    out: VecDeque<Vec<u8>>,
    conns: Vec<ConnId>,
    peer: Addr,
    reach: Reach,
}

/// How deep a script got, so tests can check the body reaches the stream
/// paths and not only the decoders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// Tunnel sessions that came up.
    pub sessions: u32,
    /// Streams that connected.
    pub connected: u32,
    /// Stream bytes the application read.
    pub bytes_read: usize,
}

impl Reach {
    /// Adds `o` to `self`.
    pub fn add(&mut self, o: Reach) {
        self.sessions += o.sessions;
        self.connected += o.connected;
        self.bytes_read += o.bytes_read;
    }
}

impl Side {
    /// Drains transmits and events; checks the bounds.
    fn drain(&mut self, now: Instant, buf: &mut [u8]) {
        while let Some(t) = self.node.poll_transmit(now, buf) {
            assert!(t.len <= buf.len(), "transmit longer than the buffer");
            if self.out.len() < IN_FLIGHT {
                self.out
                    .push_back(buf.get(..t.len).unwrap_or_default().to_vec());
            }
        }
        while let Some(ev) = self.node.poll_event() {
            match ev {
                Event::Connected(id) => {
                    self.reach.connected += 1;
                    self.remember(id);
                }
                Event::SessionUp { .. } => self.reach.sessions += 1,
                _ => {}
            }
        }
        assert!(
            self.node.conn_count() <= MAX_CONNS,
            "connection table over its bound"
        );
    }

    fn remember(&mut self, id: ConnId) {
        if !self.conns.contains(&id) {
            if self.conns.len() >= KNOWN_CONNS {
                self.conns.remove(0);
            }
            self.conns.push(id);
        }
    }

    /// One application call chosen by `arg`.
    fn call(&mut self, now: Instant, arg: &[u8]) {
        let pick = |i: usize| arg.get(i).copied().unwrap_or(0);
        let port = PORTS[usize::from(pick(1)) % PORTS.len()];
        let conn =
            (!self.conns.is_empty()).then(|| self.conns[usize::from(pick(2)) % self.conns.len()]);
        let data = arg.get(3..).unwrap_or_default();
        match pick(0) % 8 {
            0 => {
                let _ = self.node.listen(port);
            }
            1 => {
                if let Ok(id) = self.node.connect(now, self.peer, port) {
                    self.remember(id);
                }
            }
            2 => {
                if let Some(id) = self.node.accept(port) {
                    self.remember(id);
                }
            }
            3 => {
                if let Some(id) = conn {
                    let _ = self.node.write(now, id, data);
                }
            }
            4 => {
                if let Some(id) = conn {
                    let mut b = [0u8; 4096];
                    if let Ok(n) = self.node.read(id, &mut b) {
                        assert!(n <= b.len());
                        self.reach.bytes_read += n;
                    }
                }
            }
            5 => {
                if let Some(id) = conn {
                    let _ = self.node.shutdown(now, id);
                }
            }
            6 => {
                if let Some(id) = conn {
                    let _ = self.node.close(now, id);
                }
            }
            _ => {
                let _ = self.node.bind(port);
                let _ = self
                    .node
                    .send_datagram(now, self.peer, port, Some(port), data);
            }
        }
    }
}

/// Runs the script in `data` (see the module docs).
pub fn run(data: &[u8]) {
    run_with_reach(data);
}

/// [`run`], returning how deep the script got on both sides.
pub fn run_with_reach(data: &[u8]) -> Reach {
    let mut now = Instant::ZERO;
    let mut a = Side {
        node: node(1, 2, now),
        out: VecDeque::new(),
        conns: Vec::new(),
        peer: Addr::new(0, 2),
        reach: Reach::default(),
    };
    let mut b = Side {
        node: node(2, 1, now),
        out: VecDeque::new(),
        conns: Vec::new(),
        peer: Addr::new(0, 1),
        reach: Reach::default(),
    };
    let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER.max(65_536)];
    for (ctl, chunk) in super::records(data) {
        match ctl & 7 {
            0 => {
                if let Some(mut d) = b.out.pop_front() {
                    if let (Some(&at), Some(&x)) = (chunk.first(), chunk.get(1)) {
                        let i = usize::from(at) % d.len().max(1);
                        if let Some(byte) = d.get_mut(i) {
                            *byte ^= x;
                        }
                    }
                    a.node.handle_datagram(now, endpoint(2), &mut d);
                }
            }
            1 => {
                if let Some(mut d) = a.out.pop_front() {
                    b.node.handle_datagram(now, endpoint(1), &mut d);
                }
            }
            2 => {
                let from = if ctl & 8 == 0 {
                    endpoint(2)
                } else {
                    endpoint(9)
                };
                let mut d = chunk.to_vec();
                a.node.handle_datagram(now, from, &mut d);
            }
            3 => {
                now = now + core::time::Duration::from_millis(u64::from(ctl >> 3) * 37);
                for s in [&mut a, &mut b] {
                    if s.node.poll_timeout().is_some_and(|(t, _)| t <= now) {
                        s.node.handle_timeout(now);
                    }
                }
            }
            4 => a.call(now, chunk),
            5 => b.call(now, chunk),
            6 => {
                b.out.pop_front();
            }
            _ => {
                if let Some(d) = b.out.front().cloned() {
                    if b.out.len() < IN_FLIGHT {
                        b.out.push_front(d);
                    }
                }
            }
        }
        a.drain(now, &mut buf);
        b.drain(now, &mut buf);
    }
    let mut r = a.reach;
    r.add(b.reach);
    r
}

use super::record as rec;

/// Lets the two nodes talk: `rounds` deliveries each way with a little
/// time passing.
fn exchange(out: &mut Vec<u8>, rounds: usize) {
    for _ in 0..rounds {
        rec(out, 1, &[]);
        rec(out, 0, &[]);
        rec(out, 3 | (1 << 3), &[]);
    }
}

/// Seed scripts: an honest exchange (B listens on port 7, A dials it,
/// writes, B accepts and reads, both close), the same with a corrupted
/// datagram and loss, and a datagram exchange.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut honest = Vec::new();
    rec(&mut honest, 5, &[0, 0]); // B listens on 7
    rec(&mut honest, 4, &[1, 0]); // A dials 0:2:7
    exchange(&mut honest, 12);
    rec(&mut honest, 5, &[2, 0]); // B accepts
    rec(&mut honest, 4, &[3, 0, 0, b'h', b'e', b'l', b'l', b'o']);
    exchange(&mut honest, 8);
    rec(&mut honest, 5, &[4, 0, 0]); // B reads
    rec(&mut honest, 4, &[6, 0, 0]); // A closes
    exchange(&mut honest, 8);
    rec(&mut honest, 3 | (15 << 3), &[]);

    let mut hostile = honest.clone();
    // Corrupt B's 3rd datagram, lose one, duplicate one, then a stranger.
    let at = hostile.len() / 3;
    let mut extra = Vec::new();
    rec(&mut extra, 0, &[5, 0x40]);
    rec(&mut extra, 6, &[]);
    rec(&mut extra, 7, &[]);
    rec(&mut extra, 2 | 8, b"PILT garbage from a stranger");
    hostile.splice(at..at, extra);

    let mut dgrams = Vec::new();
    rec(&mut dgrams, 5, &[7, 1, 0, b'x']); // B binds 1000, sends
    rec(&mut dgrams, 4, &[7, 1, 0, b'y']); // A binds 1000, sends
    exchange(&mut dgrams, 10);
    vec![honest, hostile, dgrams]
}
