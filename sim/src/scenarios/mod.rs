//! The built-in scenarios over the protocol node ([`crate::pilot::Pilot`]):
//! `datagram`, `ping`, `rekey`, `stream-transfer`, `hostile` and `tunnel-lifecycle`. Each honours the node
//! count, volume, duration, profile and every fault flag of the
//! [`SimConfig`] (the engine applies the faults).

pub mod daemon;
pub mod datagram;
pub mod hostile;
pub mod lifecycle;
pub mod membership;
pub mod nat;
pub mod ping;
pub mod rekey;
pub mod retrust;
pub mod stream;

use crate::config::SimConfig;
use crate::engine::Sim;
use crate::node::{NodeId, node_addr};
use crate::pilot::{Pilot, wire_profile};
use crate::scenario::Registry;
use crate::seed::Seed;
use pilot_proto::time::Instant;

/// Registers every scenario of this module.
pub fn register(r: &mut Registry) {
    r.register(Box::new(datagram::DatagramScenario));
    r.register(Box::new(ping::PingScenario));
    r.register(Box::new(stream::StreamScenario));
    r.register(Box::new(rekey::RekeyScenario));
    r.register(Box::new(hostile::HostileScenario));
    r.register(Box::new(lifecycle::LifecycleScenario));
    r.register(Box::new(daemon::DaemonTrustScenario));
    r.register(Box::new(daemon::DaemonEchoScenario));
    r.register(Box::new(daemon::DaemonRotateScenario));
    r.register(Box::new(daemon::RegistryRestartScenario));
    r.register(Box::new(retrust::DaemonRetrustScenario));
    r.register(Box::new(membership::NetworkMembershipScenario));
    r.register(Box::new(nat::NatMatrixScenario));
    r.register(Box::new(nat::NatRebindScenario));
    r.register(Box::new(nat::NatIdleScenario));
    r.register(Box::new(nat::NatUpgradeScenario));
    r.register(Box::new(nat::NatKxFloodScenario));
}

/// A simulation of `n` mesh members (at least `min`), each knowing every
/// other as a peer, with the configuration's fault chain.
pub fn mesh(cfg: &SimConfig, seed: u64, min: usize) -> (Sim<Pilot>, Vec<NodeId>) {
    let seed = Seed::new(seed);
    let n = cfg.nodes.max(min);
    let addrs: Vec<_> = (0..n).map(node_addr).collect();
    let mut sim = Sim::new(seed, cfg.faults(seed, &addrs));
    let profile = wire_profile(cfg);
    let mut limits = Pilot::mesh_limits(n);
    if let Some(p) = cfg.pending_peers {
        limits.pending_peers = p;
    }
    if let Some(c) = cfg.pmtu_ceiling {
        limits.pmtu_ceiling = c;
    }
    let ids = (0..n)
        .filter_map(|i| {
            sim.add_node(
                node_addr(i),
                Pilot::mesh_member_with(seed, i, n, 0, profile, Instant::ZERO, limits),
            )
            .ok()
        })
        .collect();
    (sim, ids)
}

/// Whether the configuration can lose datagrams (loss, partition, MTU,
/// bandwidth queue overflow).
pub fn lossy(cfg: &SimConfig) -> bool {
    cfg.loss_pct > 0.0
        || cfg.partition_ms.is_some()
        || cfg.mtu.is_some()
        || cfg.bandwidth_mbps.is_some()
}
