//! Event stream on port 1002 (`spec/services.md` §6): the event frame, an
//! incremental reader, and the publish/subscribe broker with bounded
//! per-subscriber queues.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::{EncodeError, take_out};
use crate::addr::PilotSockAddr;
use crate::time::Instant;
use crate::wire::WireProfile;

/// Longest topic accepted, in bytes (`spec/services.md` §6.1).
pub const MAX_TOPIC: usize = 1024;
/// Longest payload accepted: 16 MiB (`spec/services.md` §6.1).
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// The wildcard topic (`spec/services.md` §6.2).
pub const WILDCARD: &[u8] = b"*";
/// Events a subscriber queue holds before dropping (`spec/services.md` §6.3).
pub const QUEUE_EVENTS: usize = 256;
/// Bytes a subscriber queue holds before dropping (`spec/services.md` §6.3).
pub const QUEUE_BYTES: usize = 32 << 20;
/// Connections a broker admits at once (`spec/services.md` §6.3).
pub const MAX_CONNECTIONS: usize = 1024;
/// Publications per second per publisher, current profile (`spec/services.md` §6.2).
pub const RATE_PER_SEC: u32 = 100;
/// Publication burst per publisher, current profile (`spec/services.md` §6.2).
pub const RATE_BURST: u32 = 200;
/// Consecutive failed writes after which the current profile drops a
/// subscriber (legacy: 1) (`spec/services.md` §6.2).
pub const MAX_WRITE_FAILURES: u8 = 3;

/// Why an event frame did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before the frame does.
    #[error("truncated event frame")]
    Truncated,
    /// `topic_len` is over [`MAX_TOPIC`].
    #[error("topic of {0} bytes exceeds 1024")]
    TopicTooLong(u16),
    /// `payload_len` is over [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds 16 MiB")]
    PayloadTooLarge(u32),
    /// The topic is not UTF-8 (checked by the current profile only).
    #[error("topic is not UTF-8")]
    TopicNotUtf8,
    /// Bytes follow the frame.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
}

/// One event, borrowing topic and payload (`spec/services.md` §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// Topic bytes.
    pub topic: &'a [u8],
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl<'a> Event<'a> {
    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        6 + self.topic.len() + self.payload.len()
    }

    /// Writes `[u16 topic_len][topic][u32 payload_len][payload]` into `out`.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if self.topic.len() > MAX_TOPIC {
            return Err(EncodeError::FieldTooLong {
                len: self.topic.len(),
                max: MAX_TOPIC,
            });
        }
        if self.payload.len() > MAX_PAYLOAD as usize {
            return Err(EncodeError::FieldTooLong {
                len: self.payload.len(),
                max: MAX_PAYLOAD as usize,
            });
        }
        let n = self.encoded_len();
        let o = take_out(out, n)?;
        let t = self.topic.len();
        o[..2].copy_from_slice(&(t as u16).to_be_bytes());
        o[2..2 + t].copy_from_slice(self.topic);
        o[2 + t..6 + t].copy_from_slice(&(self.payload.len() as u32).to_be_bytes());
        o[6 + t..].copy_from_slice(self.payload);
        Ok(n)
    }

    /// Incremental parse from the front of a receive buffer: `Ok(None)`
    /// when more bytes are needed. Limits are checked as soon as each length
    /// field is complete.
    pub fn parse(
        buf: &'a [u8],
        profile: WireProfile,
    ) -> Result<Option<(Event<'a>, usize)>, DecodeError> {
        let Some(tl) = buf.get(..2) else {
            return Ok(None);
        };
        let tl = u16::from_be_bytes([tl[0], tl[1]]);
        if tl as usize > MAX_TOPIC {
            return Err(DecodeError::TopicTooLong(tl));
        }
        let t = tl as usize;
        let Some(topic) = buf.get(2..2 + t) else {
            return Ok(None);
        };
        if profile == WireProfile::Current && core::str::from_utf8(topic).is_err() {
            return Err(DecodeError::TopicNotUtf8);
        }
        let Some(pl) = buf.get(2 + t..6 + t) else {
            return Ok(None);
        };
        let pl = u32::from_be_bytes([pl[0], pl[1], pl[2], pl[3]]);
        if pl > MAX_PAYLOAD {
            return Err(DecodeError::PayloadTooLarge(pl));
        }
        let end = 6 + t + pl as usize;
        Ok(buf
            .get(6 + t..end)
            .map(|payload| (Event { topic, payload }, end)))
    }

    /// Decodes exactly one event that fills `buf`.
    pub fn decode(buf: &'a [u8], profile: WireProfile) -> Result<Event<'a>, DecodeError> {
        match Event::parse(buf, profile)? {
            Some((e, n)) if n == buf.len() => Ok(e),
            Some((_, n)) => Err(DecodeError::TrailingBytes(buf.len() - n)),
            None => Err(DecodeError::Truncated),
        }
    }
}

/// A connection handle chosen by the daemon.
pub type ConnId = u64;

/// Something the daemon must do or report after a broker call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerEffect {
    /// The connection subscribed (`pubsub.subscribed`).
    Subscribed {
        /// Subscriber.
        conn: ConnId,
        /// Topic.
        topic: Bytes,
    },
    /// A publication was fanned out (`pubsub.published`).
    Published {
        /// Publisher.
        conn: ConnId,
        /// Topic.
        topic: Bytes,
        /// Payload size.
        size: usize,
        /// Subscribers it was queued for.
        delivered: usize,
    },
    /// New bytes are queued for `conn`; drain with [`Broker::pop_outgoing`].
    Writable(ConnId),
    /// An event was dropped because `conn`'s queue was full.
    QueueFull(ConnId),
    /// A publication was dropped by the rate limit (`pubsub.rate_limited`).
    RateLimited(ConnId),
    /// A subscription was refused; close the connection.
    Refused(ConnId),
    /// The connection left (`pubsub.unsubscribed` if it had subscribed);
    /// close it.
    Unsubscribed {
        /// The connection.
        conn: ConnId,
        /// Its topic, if it had subscribed.
        topic: Option<Bytes>,
    },
}

/// Why [`Broker::open`] refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// [`MAX_CONNECTIONS`] are open.
    #[error("broker is full")]
    Full,
    /// The handle is already in use.
    #[error("connection {0} already open")]
    Duplicate(ConnId),
}

#[derive(Debug)]
struct Conn {
    remote: PilotSockAddr,
    trusted: bool,
    topic: Option<Bytes>,
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    dropped: u64,
    failures: u8,
    tokens: u32,
    refill_at: Instant,
}

/// The event-stream broker (`spec/services.md` §6.2): one subscription per
/// connection, exact topic match plus the `*` wildcard, never echoing to
/// the publisher; per-subscriber queues bounded by [`QUEUE_EVENTS`] and
/// [`QUEUE_BYTES`] with tail drop.
#[derive(Debug, Default)]
pub struct Broker {
    profile: WireProfile,
    conns: BTreeMap<ConnId, Conn>,
}

impl Broker {
    /// A broker applying `profile`'s rules.
    pub fn new(profile: WireProfile) -> Self {
        Broker {
            profile,
            conns: BTreeMap::new(),
        }
    }

    /// Registers an accepted connection from `remote`; `trusted` says
    /// whether the daemon trusts the peer (gates subscriptions in the
    /// current profile).
    pub fn open(
        &mut self,
        conn: ConnId,
        remote: PilotSockAddr,
        trusted: bool,
        now: Instant,
    ) -> Result<(), OpenError> {
        if self.conns.contains_key(&conn) {
            return Err(OpenError::Duplicate(conn));
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            return Err(OpenError::Full);
        }
        self.conns.insert(
            conn,
            Conn {
                remote,
                trusted,
                topic: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
                dropped: 0,
                failures: 0,
                tokens: RATE_BURST,
                refill_at: now,
            },
        );
        Ok(())
    }

    /// The remote address of a connection.
    pub fn remote(&self, conn: ConnId) -> Option<PilotSockAddr> {
        self.conns.get(&conn).map(|c| c.remote)
    }

    /// The topic `conn` subscribed to.
    pub fn topic(&self, conn: ConnId) -> Option<&[u8]> {
        self.conns.get(&conn)?.topic.as_deref()
    }

    /// Events dropped for `conn` because its queue was full.
    pub fn dropped(&self, conn: ConnId) -> u64 {
        self.conns.get(&conn).map_or(0, |c| c.dropped)
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Handles one whole event frame `frame` (as read off `conn`; it is
    /// forwarded byte-for-byte). Frames that do not decode close the
    /// connection.
    pub fn on_frame(&mut self, conn: ConnId, frame: &[u8], now: Instant) -> Vec<BrokerEffect> {
        self.on_frame_bytes(conn, Bytes::copy_from_slice(frame), now)
    }

    /// Like [`Broker::on_frame`], taking ownership of the frame so a
    /// publication is queued for its subscribers without another copy.
    pub fn on_frame_bytes(
        &mut self,
        conn: ConnId,
        frame: Bytes,
        now: Instant,
    ) -> Vec<BrokerEffect> {
        let Ok(ev) = Event::decode(&frame, self.profile) else {
            return self.close(conn).into_iter().collect();
        };
        let profile = self.profile;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let topic = Bytes::copy_from_slice(ev.topic);
        if c.topic.is_none() {
            if profile == WireProfile::Current && !c.trusted {
                self.conns.remove(&conn);
                return vec![BrokerEffect::Refused(conn)];
            }
            c.topic = Some(topic.clone());
            return vec![BrokerEffect::Subscribed { conn, topic }];
        }
        if profile == WireProfile::Current && !take_token(c, now) {
            return vec![BrokerEffect::RateLimited(conn)];
        }
        let shared = frame.clone();
        let wildcard_too = ev.topic != WILDCARD;
        let mut effects = Vec::new();
        let mut delivered = 0;
        for (&id, sub) in self.conns.iter_mut() {
            let Some(t) = sub.topic.as_deref() else {
                continue;
            };
            if id == conn || !(t == ev.topic || (wildcard_too && t == WILDCARD)) {
                continue;
            }
            if sub.queue.len() >= QUEUE_EVENTS || sub.queued_bytes + shared.len() > QUEUE_BYTES {
                sub.dropped += 1;
                effects.push(BrokerEffect::QueueFull(id));
                continue;
            }
            sub.queued_bytes += shared.len();
            sub.queue.push_back(shared.clone());
            delivered += 1;
            effects.push(BrokerEffect::Writable(id));
        }
        effects.insert(
            0,
            BrokerEffect::Published {
                conn,
                topic,
                size: ev.payload.len(),
                delivered,
            },
        );
        effects
    }

    /// Next frame to write to `conn`, if any.
    pub fn pop_outgoing(&mut self, conn: ConnId) -> Option<Bytes> {
        let c = self.conns.get_mut(&conn)?;
        let b = c.queue.pop_front()?;
        c.queued_bytes = c.queued_bytes.saturating_sub(b.len());
        Some(b)
    }

    /// Reports a successful write to `conn`.
    pub fn write_ok(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.failures = 0;
        }
    }

    /// Reports a failed write to `conn`. The legacy profile drops the
    /// subscriber at once; the current one after [`MAX_WRITE_FAILURES`]
    /// consecutive failures (the daemon retries in between).
    pub fn write_failed(&mut self, conn: ConnId) -> Option<BrokerEffect> {
        let limit = match self.profile {
            WireProfile::Legacy => 1,
            WireProfile::Current => MAX_WRITE_FAILURES,
        };
        let c = self.conns.get_mut(&conn)?;
        c.failures = c.failures.saturating_add(1);
        if c.failures >= limit {
            self.close(conn)
        } else {
            None
        }
    }

    /// Removes a connection (peer closed, read error, bad frame).
    pub fn close(&mut self, conn: ConnId) -> Option<BrokerEffect> {
        let c = self.conns.remove(&conn)?;
        Some(BrokerEffect::Unsubscribed {
            conn,
            topic: c.topic,
        })
    }
}

/// Token bucket: [`RATE_PER_SEC`] refill, [`RATE_BURST`] capacity.
fn take_token(c: &mut Conn, now: Instant) -> bool {
    let per_token = 1_000_000_000 / u64::from(RATE_PER_SEC);
    let elapsed = now.as_nanos().saturating_sub(c.refill_at.as_nanos());
    let new = elapsed / per_token;
    if new > 0 {
        c.tokens = (u64::from(c.tokens) + new).min(u64::from(RATE_BURST)) as u32;
        c.refill_at = Instant::from_nanos(c.refill_at.as_nanos() + new * per_token);
    }
    if c.tokens == 0 {
        return false;
    }
    c.tokens -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Addr;
    use proptest::prelude::*;

    fn ev(topic: &[u8], payload: &[u8]) -> Vec<u8> {
        let e = Event { topic, payload };
        let mut out = vec![0u8; e.encoded_len()];
        e.encode(&mut out).unwrap();
        out
    }

    fn remote(n: u32) -> PilotSockAddr {
        PilotSockAddr::new(Addr::new(0, n), 49152)
    }

    fn broker(profile: WireProfile, subs: &[(ConnId, &[u8])]) -> Broker {
        let mut b = Broker::new(profile);
        for &(id, topic) in subs {
            b.open(id, remote(id as u32), true, Instant::ZERO).unwrap();
            let fx = b.on_frame(id, &ev(topic, b""), Instant::ZERO);
            assert!(matches!(&fx[..], [BrokerEffect::Subscribed { .. }]));
        }
        b
    }

    fn drain(b: &mut Broker, id: ConnId) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| b.pop_outgoing(id).map(|x| x.to_vec())).collect()
    }

    #[test]
    fn reference_example_bytes() {
        assert_eq!(hex::encode(ev(b"news", b"")), "00046e65777300000000");
        assert_eq!(hex::encode(ev(b"news", b"hi")), "00046e657773000000026869");
        assert_eq!(hex::encode(ev(b"*", b"")), "00012a00000000");
    }

    #[test]
    fn fan_out_exact_and_wildcard_never_to_publisher() {
        let mut b = broker(
            WireProfile::Legacy,
            &[(1, b"news"), (2, b"*"), (3, b"sport"), (4, b"news")],
        );
        let publ = ev(b"news", b"hi");
        let fx = b.on_frame(4, &publ, Instant::ZERO);
        assert!(matches!(
            fx[0],
            BrokerEffect::Published {
                delivered: 2,
                size: 2,
                ..
            }
        ));
        assert_eq!(drain(&mut b, 1), vec![publ.clone()]);
        assert_eq!(drain(&mut b, 2), vec![publ.clone()]);
        assert!(drain(&mut b, 3).is_empty());
        assert!(drain(&mut b, 4).is_empty());
        // A publication to "*" reaches only "*" subscribers, once.
        let star = ev(b"*", b"x");
        b.on_frame(1, &star, Instant::ZERO);
        assert_eq!(drain(&mut b, 2), vec![star]);
        assert!(drain(&mut b, 4).is_empty());
        // No prefix matching.
        b.on_frame(1, &ev(b"new", b""), Instant::ZERO);
        assert!(drain(&mut b, 4).is_empty());
    }

    #[test]
    fn queue_is_bounded_with_tail_drop() {
        let mut b = broker(WireProfile::Legacy, &[(1, b"t"), (2, b"x")]);
        for i in 0..QUEUE_EVENTS + 5 {
            b.on_frame(2, &ev(b"t", &(i as u32).to_be_bytes()), Instant::ZERO);
        }
        assert_eq!(b.dropped(1), 5);
        let got = drain(&mut b, 1);
        assert_eq!(got.len(), QUEUE_EVENTS);
        assert_eq!(got[0], ev(b"t", &0u32.to_be_bytes()));
    }

    #[test]
    fn write_failures_and_close() {
        let mut b = broker(WireProfile::Legacy, &[(1, b"t")]);
        assert!(matches!(
            b.write_failed(1),
            Some(BrokerEffect::Unsubscribed {
                conn: 1,
                topic: Some(_)
            })
        ));
        assert!(b.is_empty());
        let mut b = broker(WireProfile::Current, &[(1, b"t")]);
        assert_eq!(b.write_failed(1), None);
        b.write_ok(1);
        assert_eq!(b.write_failed(1), None);
        assert_eq!(b.write_failed(1), None);
        assert!(b.write_failed(1).is_some());
    }

    #[test]
    fn current_profile_refuses_untrusted_and_rate_limits() {
        let mut b = Broker::new(WireProfile::Current);
        b.open(1, remote(1), false, Instant::ZERO).unwrap();
        assert_eq!(
            b.on_frame(1, &ev(b"t", b""), Instant::ZERO),
            vec![BrokerEffect::Refused(1)]
        );
        let mut b = broker(WireProfile::Current, &[(1, b"t")]);
        let mut limited = 0;
        for _ in 0..RATE_BURST + 10 {
            if b.on_frame(1, &ev(b"u", b""), Instant::ZERO) == vec![BrokerEffect::RateLimited(1)] {
                limited += 1;
            }
        }
        assert_eq!(limited, 10);
        // One second later, 100 more are allowed.
        let later = Instant::from_millis(1000);
        let ok = (0..RATE_PER_SEC + 1)
            .filter(|_| b.on_frame(1, &ev(b"u", b""), later) != vec![BrokerEffect::RateLimited(1)])
            .count();
        assert_eq!(ok, RATE_PER_SEC as usize);
    }

    #[test]
    fn limits_and_bad_frames_close() {
        let mut big = vec![0x04, 0x01];
        big.extend_from_slice(&[0; 10]);
        assert_eq!(
            Event::parse(&big, WireProfile::Legacy),
            Err(DecodeError::TopicTooLong(1025))
        );
        let over = [0, 0, 0x01, 0, 0, 1];
        assert_eq!(
            Event::parse(&over, WireProfile::Legacy),
            Err(DecodeError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
        let bad_utf8 = [0, 1, 0xff, 0, 0, 0, 0];
        assert!(Event::decode(&bad_utf8, WireProfile::Legacy).is_ok());
        assert_eq!(
            Event::decode(&bad_utf8, WireProfile::Current),
            Err(DecodeError::TopicNotUtf8)
        );
        let mut b = broker(WireProfile::Legacy, &[(1, b"t")]);
        assert!(matches!(
            b.on_frame(1, &[0, 5], Instant::ZERO)[..],
            [BrokerEffect::Unsubscribed { conn: 1, .. }]
        ));
        assert!(b.is_empty());
    }

    proptest! {
        #[test]
        fn event_round_trip(topic in proptest::collection::vec(any::<u8>(), 0..40),
                            payload in proptest::collection::vec(any::<u8>(), 0..40)) {
            let bytes = ev(&topic, &payload);
            prop_assert_eq!(Event::decode(&bytes, WireProfile::Legacy), Ok(Event { topic: &topic, payload: &payload }));
            for cut in 0..bytes.len() {
                prop_assert_eq!(Event::parse(&bytes[..cut], WireProfile::Legacy), Ok(None));
            }
        }

        #[test]
        fn event_bytes_reencode(bytes in proptest::collection::vec(any::<u8>(), 0..30)) {
            if let Ok(e) = Event::decode(&bytes, WireProfile::Legacy) {
                prop_assert_eq!(ev(e.topic, e.payload), bytes);
            }
        }
    }
}
