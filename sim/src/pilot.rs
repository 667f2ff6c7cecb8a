//! The protocol node inside the simulator: [`Pilot`] wraps
//! `pilot_proto::node::Node` (real crypto, a seeded ChaCha RNG) and
//! implements [`SimNode`], plus helpers that build a full mesh of them.

use std::net::SocketAddr;

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::RustCrypto;
use pilot_proto::node::{Event, Limits, MIN_TRANSMIT_BUFFER, Node, NodeConfig};
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::config::{Profile, SimConfig};
use crate::node::{SimNode, Transmit, node_addr};
use crate::seed::Seed;

/// The concrete node type the simulator runs.
pub type ProtoNode = Node<RustCrypto, ChaCha8Rng>;

/// Network every simulated node joins.
pub const SIM_NETWORK: u16 = 1;

/// A protocol node plus a scratch buffer (the engine hands out `&[u8]`,
/// the node decrypts in place).
pub struct Pilot {
    /// The node.
    pub node: ProtoNode,
    /// Cut off from the network (a partition or a dead host): arriving
    /// datagrams are ignored and whatever it sends is discarded before it
    /// reaches the fault chain. Timers still run.
    pub offline: bool,
    scratch: Vec<u8>,
}

/// The virtual address of node number `index`.
pub fn pilot_addr(index: usize) -> Addr {
    Addr::new(
        SIM_NETWORK,
        u32::try_from(index).unwrap_or(u32::MAX - 1) + 1,
    )
}

/// The wire profile a configuration asks for.
pub fn wire_profile(cfg: &SimConfig) -> WireProfile {
    match cfg.profile {
        Profile::Current => WireProfile::Current,
        Profile::Legacy => WireProfile::Legacy,
    }
}

/// The identity of node `index` (stable across restarts of that node).
pub fn identity(seed: Seed, index: usize) -> Identity {
    let mut rng = seed.fork("pilot/identity", index as u64);
    let mut s = [0u8; 32];
    rng.fill_bytes(&mut s);
    Identity::from_seed(&RustCrypto, s)
}

impl Pilot {
    /// Node `index` of a mesh of `n`, on its `incarnation`-th start (a
    /// restart draws a new tunnel key and RNG, keeps the identity), with
    /// every other node of the mesh as a peer and limits sized for the
    /// mesh ([`Pilot::mesh_limits`]).
    pub fn mesh_member(
        seed: Seed,
        index: usize,
        n: usize,
        incarnation: u64,
        profile: WireProfile,
        now: Instant,
    ) -> Self {
        Self::mesh_member_with(
            seed,
            index,
            n,
            incarnation,
            profile,
            now,
            Self::mesh_limits(n),
        )
    }

    /// The node limits of a mesh member: the defaults, with a pending
    /// queue that can hold packets for every other member at once (a mesh
    /// node may start key exchanges with all of them in the same instant).
    pub fn mesh_limits(n: usize) -> Limits {
        let d = Limits::default();
        Limits {
            pending_peers: d.pending_peers.max(n),
            ..d
        }
    }

    /// Like [`Pilot::mesh_member`] with explicit node limits.
    pub fn mesh_member_with(
        seed: Seed,
        index: usize,
        n: usize,
        incarnation: u64,
        profile: WireProfile,
        now: Instant,
        limits: Limits,
    ) -> Self {
        let mut rng = seed.fork("pilot/node", (index as u64) << 16 | incarnation);
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        let mut chacha = ChaCha8Rng::from_seed(s);
        let tunnel_key = TunnelKey::generate(&RustCrypto, &mut chacha);
        let cfg = NodeConfig {
            addr: pilot_addr(index),
            identity: Some(identity(seed, index)),
            tunnel_key,
            profile,
            provider: RustCrypto,
            rng: chacha,
            encrypt: true,
            admin_token: Vec::new(),
            limits,
        };
        let mut node = Node::new(now, cfg);
        for j in (0..n).filter(|j| *j != index) {
            node.add_peer(
                pilot_addr(j),
                node_addr(j),
                Some(*identity(seed, j).public()),
            );
        }
        Pilot::wrap(node)
    }

    /// Wraps a node built elsewhere (online).
    pub fn wrap(node: ProtoNode) -> Self {
        Pilot {
            node,
            offline: false,
            scratch: vec![0; MIN_TRANSMIT_BUFFER],
        }
    }
}

impl SimNode for Pilot {
    type Event = Event;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if self.offline {
            return;
        }
        let Some(buf) = self.scratch.get_mut(..bytes.len()) else {
            return;
        };
        buf.copy_from_slice(bytes);
        self.node.handle_datagram(now, from, buf);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while self.offline {
            self.node.poll_transmit(now, buf)?;
        }
        self.node.poll_transmit(now, buf).map(|t| Transmit {
            dst: t.dst,
            len: t.len,
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout().map(|(t, _)| t)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.node.poll_event()
    }
}
