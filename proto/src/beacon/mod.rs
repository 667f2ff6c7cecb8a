//! The beacon (`spec/beacon.md`): the rendezvous server's state machine
//! ([`server`]) and the node-side halves ([`client`] for talking to the
//! beacon, [`path`] for choosing direct or relay per peer).
//!
//! Like the rest of `proto` this is sans-IO: datagrams and the current
//! [`Instant`](crate::time::Instant) go in through `handle_*` calls, and
//! datagrams to send come out of `poll_transmit`. After any input, drain
//! `poll_transmit` (and `poll_event` where present) until it returns `None`,
//! then arm a timer from `poll_timeout`. Every table and queue here has a
//! configured bound; the message codec is [`crate::wire::beacon`].

use core::net::SocketAddr;
use core::time::Duration;

pub mod client;
pub mod path;
pub mod server;

/// One datagram written into the caller's buffer by a `poll_transmit`.
pub use crate::wire::Transmit;

/// A node endpoint stays known this long after its last discover or punch
/// request (`spec/beacon.md` §3.1).
pub const NODE_TTL: Duration = Duration::from_secs(600);
/// Default cap on tracked node endpoints (`spec/beacon.md` §3.1).
pub const MAX_NODES: usize = 500_000;
/// Relay rate per source, packets per second, also the burst size
/// (`spec/beacon.md` §3.3).
pub const RELAY_RATE_PER_SEC: u32 = 4000;
/// Beacons send their node list to each peer beacon this often
/// (`spec/beacon.md` §3.4).
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(10);
/// A peer beacon's node list is forgotten if not renewed within this time
/// (`spec/beacon.md` §3.4).
pub const PEER_LIST_TTL: Duration = Duration::from_secs(30);
/// Most node IDs one sync datagram carries so that it fits a UDP datagram:
/// (65507 − 7) / 4 (`spec/beacon.md` §3.4).
pub const MAX_SYNC_NODES_PER_DATAGRAM: usize = 16_375;
/// A node sends discover this often to keep its NAT mapping and its beacon
/// entry fresh (`spec/beacon.md` §4.1).
pub const DISCOVER_INTERVAL: Duration = Duration::from_secs(60);
/// First wait before a discover is repeated while the beacon has not
/// answered yet; it doubles per unanswered discover up to the discover
/// period (`spec/beacon.md` §4.1).
pub const DISCOVER_RETRY: Duration = Duration::from_secs(1);
/// PILP frames sent in answer to one punch command (`spec/beacon.md` §4.2).
pub const PUNCH_FRAMES: usize = 3;
/// Failed direct dial attempts before a peer goes to relay (unpinned)
/// (`spec/beacon.md` §5).
pub const DIAL_DIRECT_ATTEMPTS: u8 = 3;
/// Silence on the direct path after which a send counts as a blackhole
/// miss (`spec/beacon.md` §5).
pub const BLACKHOLE_SILENCE: Duration = Duration::from_secs(8);
/// Blackhole misses that pin a peer to relay (`spec/beacon.md` §5).
pub const BLACKHOLE_MISSES: u8 = 3;
/// Consecutive ICMP-unreachable send errors that pin a peer to relay
/// (`spec/beacon.md` §5).
pub const ICMP_ERROR_LIMIT: u8 = 3;
/// Decrypts from a non-beacon address that clear an unpinned relay flag
/// (`spec/beacon.md` §5).
pub const UNPIN_DIRECT_DECRYPTS: u8 = 3;
/// Relay peers are re-probed for a direct path this often
/// (`spec/beacon.md` §5).
pub const REPROBE_INTERVAL: Duration = Duration::from_secs(15);
/// Most peers marked relay at once (`spec/beacon.md` §5).
pub const MAX_RELAY_PEERS: usize = 4096;

/// The endpoint as it should be reported on the wire: an IPv4-mapped IPv6
/// address (what a dual-stack socket reports for an IPv4 peer) becomes the
/// plain IPv4 address, so it is sent as 4 bytes (`spec/beacon.md` §1).
pub fn wire_endpoint(ep: SocketAddr) -> SocketAddr {
    SocketAddr::new(ep.ip().to_canonical(), ep.port())
}

/// Whether two endpoints are the same, treating an IPv4-mapped IPv6 address
/// (as a dual-stack socket reports it) as the IPv4 address it maps.
pub fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// The answer of an *observer* address of the beacon (`spec/beacon.md`
/// §3.7): a second UDP address that answers discovers only, so a node can
/// compare the public endpoints two destinations see. To a discover from
/// `from` it writes the discover reply naming `from` into `out` and returns
/// its length; anything else gets no answer. Stateless: nothing is kept per
/// sender.
pub fn observe(from: SocketAddr, bytes: &[u8], out: &mut [u8]) -> Option<usize> {
    use crate::wire::beacon::BeaconMsg;
    match BeaconMsg::decode(bytes).ok()? {
        BeaconMsg::Discover { .. } => BeaconMsg::DiscoverReply {
            endpoint: wire_endpoint(from),
        }
        .encode(out)
        .ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observer_answers_discovers_only() {
        let from: SocketAddr = "[::ffff:203.0.113.7]:40000".parse().unwrap();
        let mut out = [0u8; 64];
        let n = observe(from, &[1, 0, 0, 0, 5], &mut out).unwrap();
        assert_eq!(&out[..n], &[0x02, 4, 203, 0, 113, 7, 0x9c, 0x40]);
        // Punch requests, relays, replies, garbage: no answer.
        for bytes in [
            &[3u8, 0, 0, 0, 5, 0, 0, 0, 9][..],
            &[2, 4, 1, 2, 3, 4, 0, 1],
            &[0xff],
            &[],
        ] {
            assert_eq!(observe(from, bytes, &mut out), None, "{bytes:?}");
        }
        assert_eq!(observe(from, &[1, 0, 0, 0, 5], &mut [0u8; 3]), None);
    }

    #[test]
    fn mapped_and_plain_ipv4_are_the_same_endpoint() {
        let a: SocketAddr = "[::ffff:192.0.2.1]:9001".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:9001".parse().unwrap();
        assert!(same_endpoint(a, b));
        assert!(!same_endpoint(a, "192.0.2.1:9002".parse().unwrap()));
        assert!(!same_endpoint(b, "192.0.2.2:9001".parse().unwrap()));
        assert_eq!(wire_endpoint(a), b);
        let v6: SocketAddr = "[2001:db8::1]:9001".parse().unwrap();
        assert_eq!(wire_endpoint(v6), v6);
    }
}
