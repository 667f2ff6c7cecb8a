//! The node's side of the beacon protocol (`spec/beacon.md` §4).
//!
//! [`BeaconClient`] keeps the node's beacon entry fresh (a discover at start
//! and every [`DISCOVER_INTERVAL`]; until the first reply, retried after
//! [`DISCOVER_RETRY`], doubling), learns the node's public endpoint from
//! discover replies, sends punch requests, answers punch commands with
//! [`PUNCH_FRAMES`] PILP frames, and unwraps relay deliveries. Punch
//! commands, relay deliveries, notifies and discover replies are accepted
//! only from the configured beacon address; everything else is dropped and
//! counted. Its output queue holds at most [`CLIENT_QUEUE`] small datagrams.
//!
//! Relay wrapping of outbound frames is [`BeaconClient::wrap_relay`] (or
//! [`relay_header`](crate::wire::beacon::relay_header) for wrapping in
//! place); *whether* to wrap is the [`PathTable`](super::path::PathTable)'s
//! decision.

use core::net::SocketAddr;
use core::time::Duration;
use std::collections::VecDeque;

use super::{DISCOVER_INTERVAL, DISCOVER_RETRY, PUNCH_FRAMES, Transmit, same_endpoint};
use crate::time::Instant;
use crate::wire::EncodeError;
use crate::wire::beacon::{BEACON_TYPE_LIMIT, BeaconMsg, NOTIFY_HANDSHAKE};
use crate::wire::tunnel::MAGIC_PILP;

/// Most datagrams the client queues (`spec/beacon.md` §4).
pub const CLIENT_QUEUE: usize = 64;

/// Where the beacon is and who we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The beacon's UDP address; the only source trusted for beacon
    /// commands.
    pub beacon: SocketAddr,
    /// Our node ID; 0 until registered.
    pub node_id: u32,
    /// Keepalive discover period.
    pub discover_interval: Duration,
}

impl ClientConfig {
    /// A configuration with the default discover period.
    pub fn new(beacon: SocketAddr, node_id: u32) -> Self {
        ClientConfig {
            beacon,
            node_id,
            discover_interval: DISCOVER_INTERVAL,
        }
    }
}

/// What a beacon datagram meant for the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeaconEvent<'a> {
    /// The beacon reported a public endpoint different from the last one.
    PublicEndpoint(SocketAddr),
    /// The beacon asked us to punch towards this endpoint; the PILP frames
    /// are queued.
    Punch(SocketAddr),
    /// A tunnel frame relayed by the beacon. Process `frame` as if it had
    /// arrived directly, but from the beacon; `claimed_source` comes from the
    /// beacon and must not be used as an identity (a PILS frame names and
    /// authenticates its own sender).
    Relayed {
        /// Source node the beacon wrote in the delivery (untrusted).
        claimed_source: u32,
        /// The inner tunnel frame, at least 4 bytes.
        frame: &'a [u8],
    },
    /// The registry holds a relayed trust handshake for us: poll it.
    HandshakeWaiting,
}

/// Counters of dropped or ignored input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Undecodable beacon datagrams.
    pub malformed: u64,
    /// Beacon messages from an address other than the beacon.
    pub not_from_beacon: u64,
    /// Messages a node does not act on (requests, 0x09, unknown notify).
    pub ignored: u64,
    /// Relay deliveries whose inner frame is itself a beacon message.
    pub nested: u64,
    /// Outputs dropped because the queue was full.
    pub queue_full: u64,
    /// Outputs dropped because the caller's buffer was too small.
    pub buffer_too_small: u64,
}

/// A datagram waiting to be polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    Discover,
    PunchRequest(u32),
    Pilp(SocketAddr),
}

/// The node-side beacon state machine (`spec/beacon.md` §4).
#[derive(Clone, Debug)]
pub struct BeaconClient {
    cfg: ClientConfig,
    public: Option<SocketAddr>,
    next_discover: Instant,
    /// Wait before the next discover while no reply has come (doubles
    /// per unanswered discover, capped at the keepalive period).
    retry: Duration,
    queue: VecDeque<Out>,
    stats: ClientStats,
}

impl BeaconClient {
    /// A client that will send its first discover at `now`.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        BeaconClient {
            cfg,
            public: None,
            next_discover: now,
            retry: DISCOVER_RETRY,
            queue: VecDeque::new(),
            stats: ClientStats::default(),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Our public endpoint as last reported by the beacon.
    pub fn public_endpoint(&self) -> Option<SocketAddr> {
        self.public
    }

    /// Counters so far.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Adopts the node ID from registration and re-announces at once.
    pub fn set_node_id(&mut self, node_id: u32, now: Instant) {
        self.cfg.node_id = node_id;
        self.next_discover = now;
        self.retry = DISCOVER_RETRY;
    }

    /// Queues a discover now (e.g. after a successful heartbeat) and
    /// restarts the keepalive period; until the beacon has answered once,
    /// the next discover follows after the retry back-off instead
    /// ([`DISCOVER_RETRY`], doubling up to the period), so one lost
    /// datagram does not leave the public endpoint unknown for a whole
    /// period (`spec/beacon.md` §4.1).
    pub fn discover_now(&mut self, now: Instant) {
        self.push(Out::Discover);
        let interval = self.cfg.discover_interval;
        if self.public.is_none() {
            let wait = self.retry.min(interval);
            self.retry = self.retry.saturating_mul(2).min(interval);
            self.next_discover = now + wait;
        } else {
            self.next_discover = now + interval;
        }
    }

    /// Asks the beacon to coordinate a hole punch with `target`.
    pub fn request_punch(&mut self, target: u32) {
        self.push(Out::PunchRequest(target));
    }

    /// Handles a beacon message (first byte below 0x10) that arrived on the
    /// tunnel socket from `from` (`spec/beacon.md` §4.2).
    pub fn handle_datagram<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &'a [u8],
    ) -> Option<BeaconEvent<'a>> {
        let Ok(msg) = BeaconMsg::decode(bytes) else {
            self.stats.malformed += 1;
            return None;
        };
        let from_beacon = same_endpoint(from, self.cfg.beacon);
        let acts = matches!(
            msg,
            BeaconMsg::DiscoverReply { .. }
                | BeaconMsg::PunchCommand { .. }
                | BeaconMsg::RelayDeliver { .. }
                | BeaconMsg::Notify { .. }
        );
        if !acts {
            self.stats.ignored += 1;
            return None;
        }
        if !from_beacon {
            self.stats.not_from_beacon += 1;
            return None;
        }
        match msg {
            BeaconMsg::DiscoverReply { endpoint } => {
                if self.public == Some(endpoint) {
                    return None;
                }
                if self.public.is_none() {
                    // The first answer ends the retries: the keepalive
                    // period runs from here.
                    self.next_discover = now + self.cfg.discover_interval;
                }
                self.public = Some(endpoint);
                Some(BeaconEvent::PublicEndpoint(endpoint))
            }
            BeaconMsg::PunchCommand { endpoint } => {
                if CLIENT_QUEUE - self.queue.len() < PUNCH_FRAMES {
                    self.stats.queue_full += 1;
                    return None;
                }
                for _ in 0..PUNCH_FRAMES {
                    self.push(Out::Pilp(endpoint));
                }
                Some(BeaconEvent::Punch(endpoint))
            }
            // A beacon message nested in a delivery would let any node
            // speak with the beacon's authority: only tunnel frames count.
            BeaconMsg::RelayDeliver { inner, .. }
                if inner.first().is_none_or(|&b| b < BEACON_TYPE_LIMIT) =>
            {
                self.stats.nested += 1;
                None
            }
            BeaconMsg::RelayDeliver { source, inner } => Some(BeaconEvent::Relayed {
                claimed_source: source,
                frame: inner,
            }),
            BeaconMsg::Notify { kind } if kind == NOTIFY_HANDSHAKE => {
                Some(BeaconEvent::HandshakeWaiting)
            }
            _ => {
                self.stats.ignored += 1;
                None
            }
        }
    }

    /// Sends the keepalive discover when it is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_discover {
            self.discover_now(now);
        }
    }

    /// When the next keepalive discover is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_discover)
    }

    /// Writes the next queued datagram into `buf` (13 bytes always
    /// suffice); a datagram that does not fit is dropped and counted.
    pub fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(out) = self.queue.pop_front() {
            let (dst, written) = match out {
                Out::Discover => (
                    self.cfg.beacon,
                    BeaconMsg::Discover {
                        node: self.cfg.node_id,
                        ed25519: None,
                    }
                    .encode(buf),
                ),
                Out::PunchRequest(target) => (
                    self.cfg.beacon,
                    BeaconMsg::PunchRequest {
                        requester: self.cfg.node_id,
                        target,
                        grant: None,
                    }
                    .encode(buf),
                ),
                Out::Pilp(ep) => (ep, crate::wire::put(buf, &MAGIC_PILP)),
            };
            match written {
                Ok(len) => return Some(Transmit { dst, len }),
                Err(_) => self.stats.buffer_too_small += 1,
            }
        }
        None
    }

    /// Wraps a tunnel frame for `peer` as `05 ‖ own ‖ peer ‖ frame` into
    /// `out`; send the result to the beacon (`spec/beacon.md` §4.3).
    pub fn wrap_relay(
        &self,
        peer: u32,
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncodeError> {
        BeaconMsg::Relay {
            sender: self.cfg.node_id,
            destination: peer,
            inner: frame,
        }
        .encode(out)
    }

    /// Queues `out` unless the queue is full (counted).
    fn push(&mut self, out: Out) {
        if self.queue.len() >= CLIENT_QUEUE {
            self.stats.queue_full += 1;
        } else {
            self.queue.push_back(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEACON: &str = "192.0.2.100:9001";

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn client() -> BeaconClient {
        BeaconClient::new(ClientConfig::new(ep(BEACON), 5), t(0))
    }

    fn drain(c: &mut BeaconClient) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        while let Some(tx) = c.poll_transmit(t(0), &mut buf) {
            out.push((tx.dst, buf[..tx.len].to_vec()));
        }
        out
    }

    /// A discover reply from the beacon naming `203.0.113.7:40000`.
    const REPLY: [u8; 8] = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x40];

    #[test]
    fn discovers_at_start_and_every_interval() {
        let mut c = client();
        assert_eq!(c.poll_timeout(), Some(t(0)));
        c.handle_timeout(t(0));
        assert_eq!(drain(&mut c), vec![(ep(BEACON), vec![1, 0, 0, 0, 5])]);
        assert!(c.handle_datagram(t(0), ep(BEACON), &REPLY).is_some());
        assert_eq!(c.poll_timeout(), Some(t(60_000)));
        c.handle_timeout(t(59_999));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t(60_000));
        assert_eq!(drain(&mut c).len(), 1);
        // Registration: new ID, immediate discover.
        c.set_node_id(77, t(61_000));
        c.handle_timeout(t(61_000));
        assert_eq!(drain(&mut c), vec![(ep(BEACON), vec![1, 0, 0, 0, 77])]);
        assert_eq!(c.poll_timeout(), Some(t(121_000)));
    }

    #[test]
    fn unanswered_discover_is_retried_with_back_off() {
        let mut c = client();
        // No reply: 1 s, then 2, 4, 8, 16, 32, then the 60 s period.
        let mut at = 0;
        let mut gaps = Vec::new();
        for _ in 0..8 {
            c.handle_timeout(t(at));
            assert_eq!(drain(&mut c).len(), 1);
            let next = c.poll_timeout().unwrap().as_nanos() / 1_000_000;
            gaps.push(next - at);
            at = next;
        }
        assert_eq!(
            gaps,
            vec![1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
        );
        // The first reply ends the retries: the period runs from it.
        assert!(c.handle_datagram(t(at + 30), ep(BEACON), &REPLY).is_some());
        assert_eq!(c.poll_timeout(), Some(t(at + 30 + 60_000)));
        // Registration restarts the back-off (the endpoint is known, so
        // the period follows).
        c.set_node_id(9, t(at + 100));
        c.handle_timeout(t(at + 100));
        assert_eq!(drain(&mut c).len(), 1);
        assert_eq!(c.poll_timeout(), Some(t(at + 100 + 60_000)));
    }

    #[test]
    fn learns_public_endpoint_from_the_beacon_only() {
        let mut c = client();
        let reply = [0x02, 4, 203, 0, 113, 7, 0x9c, 0x40];
        assert_eq!(c.handle_datagram(t(0), ep("192.0.2.66:9001"), &reply), None);
        assert_eq!(c.public_endpoint(), None);
        assert_eq!(c.stats().not_from_beacon, 1);
        let want = ep("203.0.113.7:40000");
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), &reply),
            Some(BeaconEvent::PublicEndpoint(want))
        );
        assert_eq!(c.public_endpoint(), Some(want));
        assert_eq!(
            c.handle_datagram(t(1), ep(BEACON), &reply),
            None,
            "unchanged"
        );
    }

    #[test]
    fn punch_command_sends_three_pilp_frames() {
        let mut c = client();
        let cmd = [0x04, 4, 198, 51, 100, 10, 0x13, 0x88];
        let target = ep("198.51.100.10:5000");
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), &cmd),
            Some(BeaconEvent::Punch(target))
        );
        assert_eq!(drain(&mut c), vec![(target, b"PILP".to_vec()); 3]);
    }

    #[test]
    fn commands_from_other_sources_are_dropped() {
        let mut c = client();
        let stranger = ep("192.0.2.66:9001");
        let cmd = [0x04, 4, 198, 51, 100, 10, 0x13, 0x88];
        assert_eq!(c.handle_datagram(t(0), stranger, &cmd), None);
        assert_eq!(
            c.handle_datagram(t(0), stranger, b"\x06\0\0\0\x09PILS"),
            None
        );
        assert_eq!(c.handle_datagram(t(0), stranger, &[0x0a, 1]), None);
        // Same IP, other port: still not the beacon.
        assert_eq!(c.handle_datagram(t(0), ep("192.0.2.100:9002"), &cmd), None);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.stats().not_from_beacon, 4);
        // A dual-stack socket's mapped form of the beacon is the beacon.
        let mapped = ep("[::ffff:192.0.2.100]:9001");
        assert!(c.handle_datagram(t(0), mapped, &cmd).is_some());
    }

    #[test]
    fn relay_delivery_is_unwrapped_and_notify_reported() {
        let mut c = client();
        let d = b"\x06\0\0\0\x09PILSrest";
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), d),
            Some(BeaconEvent::Relayed {
                claimed_source: 9,
                frame: b"PILSrest"
            })
        );
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), &[0x0a, 1, 0xff]),
            Some(BeaconEvent::HandshakeWaiting)
        );
        assert_eq!(c.handle_datagram(t(0), ep(BEACON), &[0x0a, 2]), None);
        // 0x09 and node-bound requests are ignored; short inner is malformed.
        let to = b"\x09\0\0\0\x09\0\0\0\x05PILS";
        assert_eq!(c.handle_datagram(t(0), ep(BEACON), to), None);
        assert_eq!(c.handle_datagram(t(0), ep(BEACON), &[1, 0, 0, 0, 1]), None);
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), b"\x06\0\0\0\x09PIL"),
            None
        );
        assert_eq!(c.stats().ignored, 3);
        assert_eq!(c.stats().malformed, 1);
    }

    #[test]
    fn nested_beacon_messages_in_a_delivery_are_dropped() {
        let mut c = client();
        // A node relays a punch command to us: it must not act as one.
        let d = [6, 0, 0, 0, 9, 0x04, 4, 198, 51, 100, 10, 0x13, 0x88];
        assert_eq!(c.handle_datagram(t(0), ep(BEACON), &d), None);
        let d = b"\x06\0\0\0\x09\x06\0\0\0\x05PILS";
        assert_eq!(c.handle_datagram(t(0), ep(BEACON), d), None);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.stats().nested, 2);
    }

    #[test]
    fn punch_request_and_relay_wrap() {
        let mut c = client();
        c.request_punch(9);
        assert_eq!(
            drain(&mut c),
            vec![(ep(BEACON), vec![3, 0, 0, 0, 5, 0, 0, 0, 9])]
        );
        let mut out = [0u8; 32];
        let n = c.wrap_relay(9, b"PILSxy", &mut out).unwrap();
        assert_eq!(&out[..n], b"\x05\0\0\0\x05\0\0\0\x09PILSxy");
        assert!(c.wrap_relay(9, b"PILSxy", &mut out[..10]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn strangers_cannot_make_the_client_act(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            ty in 0u8..16,
            port in 1u16..,
        ) {
            let mut c = client();
            let mut b = bytes;
            b.insert(0, ty);
            let stranger = SocketAddr::from(([192, 0, 2, 66], port));
            proptest::prop_assert_eq!(c.handle_datagram(t(0), stranger, &b), None);
            proptest::prop_assert!(drain(&mut c).is_empty());
            proptest::prop_assert_eq!(c.public_endpoint(), None);
        }
    }

    #[test]
    fn queue_is_bounded() {
        let mut c = client();
        for i in 0..100 {
            c.request_punch(i);
        }
        assert_eq!(drain(&mut c).len(), CLIENT_QUEUE);
        assert_eq!(c.stats().queue_full, 100 - CLIENT_QUEUE as u64);
        for i in 0..CLIENT_QUEUE as u32 - 2 {
            c.request_punch(i);
        }
        let cmd = [0x04, 4, 198, 51, 100, 10, 0x13, 0x88];
        assert_eq!(
            c.handle_datagram(t(0), ep(BEACON), &cmd),
            None,
            "no room for 3"
        );
    }
}
