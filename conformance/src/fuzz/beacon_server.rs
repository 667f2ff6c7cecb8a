//! Fuzz body for the beacon server state machine (`spec/beacon.md` §3).
//!
//! The input is a script of records `ctl ‖ len ‖ len bytes`. `ctl` picks a
//! synthetic source (low 3 bits: IPv4, IPv6, IPv4-mapped, two peer beacons),
//! an action (bit 3: datagram, or timeout + notify for the node named by
//! the first 4 bytes) and how far time advances (high 4 bits × 137 ms). The
//! server runs with small limits so the caps, eviction and expiry paths are
//! reached. After each record every output is drained and checked.

use std::net::SocketAddr;

use pilot_proto::beacon::server::{BeaconServer, ServerConfig, ServerStats};
use pilot_proto::time::Instant;
use pilot_proto::wire::beacon::{BeaconMsg, MAX_RELAY_PAYLOAD};

/// Queue bound used by the body.
const MAX_QUEUE: usize = 16;
/// Node table bound used by the body.
const MAX_NODES: usize = 8;

/// The synthetic sources; the last two are the configured peer beacons.
fn sources() -> [SocketAddr; 8] {
    [
        "192.0.2.1:1000",
        "192.0.2.2:2000",
        "198.51.100.3:3000",
        "[2001:db8::4]:4000",
        "[2001:db8::5]:5000",
        "[::ffff:192.0.2.6]:6000",
        "192.0.2.200:9001",
        "[2001:db8::c8]:9001",
    ]
    .map(|s| s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9))))
}

/// Runs the script in `data`; panics only if the server breaks a bound or
/// emits something that is not a beacon message.
pub fn run(data: &[u8]) {
    run_with_stats(data);
}

/// [`run`], returning the server's counters so tests can check which paths
/// the inputs reached.
pub fn run_with_stats(data: &[u8]) -> ServerStats {
    let cfg = ServerConfig {
        beacon_id: 1,
        max_nodes: MAX_NODES,
        rate_per_sec: 20,
        max_rate_sources: 4,
        max_queue_datagrams: MAX_QUEUE,
        max_queue_bytes: 1 << 20,
        max_peers: 2,
        ..ServerConfig::default()
    };
    let src = sources();
    let mut server = BeaconServer::new(cfg, Instant::ZERO);
    server.set_peers(&src[6..]);
    let mut now_ms = 0u64;
    let mut buf = vec![0u8; MAX_RELAY_PAYLOAD + 16];
    for (ctl, chunk) in super::records(data) {
        now_ms += u64::from(ctl >> 4) * 137;
        let now = Instant::from_millis(now_ms);
        let from = src[usize::from(ctl & 7)];
        if ctl & 8 == 0 {
            server.handle_datagram(now, from, chunk);
        } else {
            server.handle_timeout(now);
            let node = chunk
                .get(..4)
                .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
            server.notify_handshake(now, node);
        }
        assert!(server.queued() <= MAX_QUEUE, "queue over its bound");
        assert!(
            server.node_count() <= MAX_NODES,
            "node table over its bound"
        );
        let mut n = 0;
        while let Some(tx) = server.poll_transmit(now, &mut buf) {
            n += 1;
            let out = &buf[..tx.len];
            let msg = BeaconMsg::decode(out);
            assert!(msg.is_ok(), "server emitted a non-message {out:02x?}");
            if let Ok(BeaconMsg::Sync { .. } | BeaconMsg::Relay { .. }) = msg {
                assert!(
                    src[6..].contains(&tx.dst),
                    "beacon-to-beacon message to a node"
                );
            }
        }
        assert!(n <= MAX_QUEUE, "more outputs than the queue holds");
        if let Some(t) = server.poll_timeout() {
            // Timers never lie more than one gossip period ahead.
            assert!(t <= Instant::from_millis(now_ms + 10_000));
        }
    }
    server.stats()
}
