//! Unit tests of the service host over an in-memory [`StreamIo`].

use super::*;
use crate::services::dataexchange::{FileBody, Frame};
use crate::services::eventstream;

#[derive(Debug, Default)]
struct MockConn {
    input: Vec<u8>,
    read_pos: usize,
    fin: bool,
    output: Vec<u8>,
    room: usize,
    shut: bool,
    closed: bool,
    reset: bool,
}

/// In-memory streams: `input` is what the peer sent, `output` what the
/// host wrote; `room` is how many more bytes a write may take.
#[derive(Debug, Default)]
struct MockIo {
    conns: BTreeMap<ConnId, MockConn>,
    /// Largest single read handed out (0 = no limit).
    max_read: usize,
}

impl MockIo {
    fn conn(&mut self, id: ConnId) -> &mut MockConn {
        self.conns.entry(id).or_default()
    }
}

impl StreamIo for MockIo {
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, IoError> {
        let max_read = self.max_read;
        let c = self.conns.get_mut(&conn).ok_or(IoError::Closed)?;
        if c.reset || c.closed {
            return Err(IoError::Closed);
        }
        let avail = c.input.len() - c.read_pos;
        if avail == 0 {
            return if c.fin {
                Ok(0)
            } else {
                Err(IoError::WouldBlock)
            };
        }
        let mut n = avail.min(buf.len());
        if max_read > 0 {
            n = n.min(max_read);
        }
        buf[..n].copy_from_slice(&c.input[c.read_pos..c.read_pos + n]);
        c.read_pos += n;
        Ok(n)
    }

    fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, IoError> {
        let c = self.conns.get_mut(&conn).ok_or(IoError::Closed)?;
        if c.reset || c.closed || c.shut {
            return Err(IoError::Closed);
        }
        let n = c.room.min(data.len());
        c.room -= n;
        c.output.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn shutdown(&mut self, conn: ConnId) {
        self.conn(conn).shut = true;
    }

    fn close(&mut self, conn: ConnId) {
        self.conn(conn).closed = true;
    }
}

const WALL: WallTime = WallTime {
    unix_secs: 1_772_197_424,
    millis: 0,
    offset_secs: 0,
};

fn remote(n: u32) -> PilotSockAddr {
    PilotSockAddr::new(Addr::new(0, n), 49152)
}

struct Harness {
    host: ServiceHost,
    io: MockIo,
    now: Instant,
    /// Saves answered with this outcome when draining actions.
    save_error: Option<&'static str>,
}

impl Harness {
    fn new(cfg: HostConfig) -> Self {
        Harness {
            host: ServiceHost::new(cfg),
            io: MockIo::default(),
            now: Instant::from_millis(1),
            save_error: None,
        }
    }

    fn accept(&mut self, port: u16, id: u64) -> ConnId {
        let c = ConnId(id);
        self.io.conn(c).room = usize::MAX;
        self.host
            .on_accept(self.now, port, c, remote(id as u32), true)
            .unwrap();
        c
    }

    fn feed(&mut self, c: ConnId, bytes: &[u8]) {
        self.io.conn(c).input.extend_from_slice(bytes);
        self.host.on_readable(&mut self.io, c, self.now, WALL);
    }

    fn fin(&mut self, c: ConnId) {
        self.io.conn(c).fin = true;
        self.host.on_readable(&mut self.io, c, self.now, WALL);
    }

    fn grant(&mut self, c: ConnId, room: usize) {
        self.io.conn(c).room = room;
        self.host.on_writable(&mut self.io, c, self.now, WALL);
    }

    /// Drains actions, answering every save with `save_error`.
    fn actions(&mut self) -> Vec<HostAction> {
        let mut out = Vec::new();
        while let Some(a) = self.host.poll_action() {
            let conn = match &a {
                HostAction::SaveReceivedFile { conn, .. } | HostAction::SaveInbox { conn, .. } => {
                    Some(*conn)
                }
                _ => None,
            };
            out.push(a);
            if let Some(c) = conn {
                let outcome = self.save_error.map_or(Ok(()), Err);
                self.host
                    .save_finished(&mut self.io, c, self.now, WALL, outcome);
            }
        }
        out
    }

    fn output(&mut self, c: ConnId) -> Vec<u8> {
        self.io.conn(c).output.clone()
    }
}

fn dx_frame(t: FrameType, payload: &[u8]) -> Vec<u8> {
    let f = Frame {
        frame_type: t,
        payload,
    };
    let mut v = vec![0u8; f.encoded_len()];
    f.encode(&mut v).unwrap();
    v
}

fn file_frame(name: &[u8], data: &[u8]) -> Vec<u8> {
    let b = FileBody::Named { name, data };
    let mut p = vec![0u8; b.encoded_len()];
    b.encode(&mut p).unwrap();
    dx_frame(FrameType::File, &p)
}

/// The TEXT replies in a data-exchange output stream.
fn replies(mut out: &[u8]) -> Vec<String> {
    let mut v = Vec::new();
    while let Some((f, n)) = Frame::parse(out, u32::MAX).unwrap() {
        v.push(String::from_utf8(f.payload.to_vec()).unwrap());
        out = &out[n..];
    }
    assert!(out.is_empty(), "partial reply frame");
    v
}

fn ev(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let e = eventstream::Event { topic, payload };
    let mut v = vec![0u8; e.encoded_len()];
    e.encode(&mut v).unwrap();
    v
}

#[test]
fn ports_follow_the_config() {
    let host = ServiceHost::new(HostConfig::new(WireProfile::Current));
    assert_eq!(host.ports().collect::<Vec<_>>(), vec![7, 444, 1001, 1002]);
    let mut cfg = HostConfig::new(WireProfile::Legacy);
    cfg.echo = false;
    cfg.event_stream = false;
    let mut host = ServiceHost::new(cfg);
    assert_eq!(host.ports().collect::<Vec<_>>(), vec![444, 1001]);
    assert_eq!(
        host.on_accept(Instant::ZERO, 7, ConnId(1), remote(1), true),
        Err(HostError::NotServed(7))
    );
    assert_eq!(
        host.on_accept(Instant::ZERO, 80, ConnId(1), remote(1), true),
        Err(HostError::NotServed(80))
    );
    host.on_accept(Instant::ZERO, 1001, ConnId(1), remote(1), true)
        .unwrap();
    assert_eq!(
        host.on_accept(Instant::ZERO, 444, ConnId(1), remote(1), true),
        Err(HostError::Duplicate(ConnId(1)))
    );
    assert_eq!(host.stats().refused, 3);
}

#[test]
fn connection_limit_per_service() {
    let mut cfg = HostConfig::new(WireProfile::Current);
    cfg.limits.conns_per_service = 2;
    let mut host = ServiceHost::new(cfg);
    for i in 0..2 {
        host.on_accept(Instant::ZERO, 7, ConnId(i), remote(1), true)
            .unwrap();
    }
    assert_eq!(
        host.on_accept(Instant::ZERO, 7, ConnId(9), remote(1), true),
        Err(HostError::TooManyConnections(7))
    );
    // Another service still has room.
    host.on_accept(Instant::ZERO, 444, ConnId(9), remote(1), true)
        .unwrap();
    host.on_closed(ConnId(0));
    host.on_accept(Instant::ZERO, 7, ConnId(10), remote(1), true)
        .unwrap();
}

#[test]
fn echo_with_a_one_byte_window_echoes_everything_in_order() {
    let mut cfg = HostConfig::new(WireProfile::Current);
    cfg.limits.echo_chunk = 5;
    let mut h = Harness::new(cfg);
    let c = h.accept(7, 1);
    h.io.conn(c).room = 0;
    let input: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    h.feed(c, &input);
    // Nothing could be written, so at most one chunk was read.
    assert_eq!(h.io.conn(c).read_pos, 5);
    assert!(h.output(c).is_empty());
    let mut steps = 0;
    while h.output(c).len() < input.len() {
        h.grant(c, 1);
        let m = h.io.conn(c);
        // Never more than one chunk read ahead of what was written back.
        assert!(
            m.read_pos - m.output.len() <= 5,
            "{} {}",
            m.read_pos,
            m.output.len()
        );
        steps += 1;
        assert!(steps <= input.len(), "no progress");
    }
    assert_eq!(h.output(c), input);
    assert!(!h.io.conn(c).closed);
    h.fin(c);
    assert!(h.io.conn(c).closed, "FIN answered once all is echoed");
    assert_eq!(h.host.conn_count(), 0);
}

#[test]
fn echo_half_close_flushes_before_fin() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let c = h.accept(7, 1);
    h.io.conn(c).room = 2;
    h.io.conn(c).fin = true;
    h.feed(c, b"hello");
    // The peer has finished sending, but "llo" is not written back yet:
    // the connection stays open.
    assert_eq!(h.output(c), b"he");
    assert!(!h.io.conn(c).closed);
    h.grant(c, usize::MAX);
    assert_eq!(h.output(c), b"hello");
    assert!(h.io.conn(c).closed);
    // An immediate FIN with no data closes at once.
    let d = h.accept(7, 2);
    h.fin(d);
    assert!(h.io.conn(d).closed && h.output(d).is_empty());
    // A reset connection is forgotten.
    let e = h.accept(7, 3);
    h.io.conn(e).reset = true;
    h.feed(e, b"x");
    assert_eq!(h.host.conn_count(), 0);
}

#[test]
fn data_exchange_saves_files_with_sanitised_names() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let c = h.accept(1001, 1);
    h.feed(c, &file_frame(b"a.txt", b"hi"));
    // No ACK before the save has finished.
    assert!(h.output(c).is_empty());
    let a = h.host.poll_action().unwrap();
    assert_eq!(
        a,
        HostAction::SaveReceivedFile {
            conn: c,
            from: remote(1),
            name: "a.txt".into(),
            original: "a.txt".into(),
            data: b"hi".to_vec(),
        }
    );
    h.host.save_finished(&mut h.io, c, h.now, WALL, Ok(()));
    assert_eq!(replies(&h.output(c)), vec!["ACK FILE 2 bytes"]);
    // Path traversal is refused with an ERR and nothing to save.
    h.feed(c, &file_frame(b"../etc/passwd", b"root"));
    h.feed(c, &file_frame(b"/abs", b"x"));
    assert!(h.actions().is_empty());
    assert_eq!(
        replies(&h.output(c))[1..],
        [
            "ERR FILE save failed: file name contains a forbidden character",
            "ERR FILE save failed: file name contains a forbidden character"
        ]
    );
    // A failed save is reported in the reply.
    h.save_error = Some("disk full");
    h.feed(c, &file_frame(b"b", b"xyz"));
    assert_eq!(h.actions().len(), 1);
    assert_eq!(
        replies(&h.output(c)).last().unwrap(),
        "ERR FILE save failed: disk full"
    );
    // The connection stays open until the peer's FIN.
    assert!(!h.io.conn(c).closed);
    h.fin(c);
    assert!(h.io.conn(c).closed);
}

#[test]
fn data_exchange_messages_go_to_the_inbox_with_acks_in_order() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let c = h.accept(1001, 1);
    let mut stream = dx_frame(FrameType::Text, b"hello");
    stream.extend(dx_frame(FrameType::Json, b"{\"x\":1}"));
    stream.extend(dx_frame(FrameType::Binary, &[0xff, 0]));
    stream.extend(dx_frame(FrameType::Other(9), b"abc"));
    h.feed(c, &stream);
    // One save at a time: the JSON frame waits for the TEXT save.
    let first = h.host.poll_action().unwrap();
    assert!(h.host.poll_action().is_none());
    let HostAction::SaveInbox {
        kind, size, name, ..
    } = &first
    else {
        panic!("{first:?}")
    };
    assert_eq!((*kind, *size), (FrameType::Text, 5));
    assert_eq!(name, "TEXT-20260227-130344.000-000000.json");
    h.host.save_finished(&mut h.io, c, h.now, WALL, Ok(()));
    let rest = h.actions();
    let kinds: Vec<_> = rest
        .iter()
        .map(|a| match a {
            HostAction::SaveInbox { kind, json, .. } => {
                assert!(json.contains("\"from\":\"0:0000.0000.0001\""));
                *kind
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec![FrameType::Json, FrameType::Binary]);
    assert_eq!(
        replies(&h.output(c)),
        vec![
            "ACK TEXT 5 bytes",
            "ACK JSON 7 bytes",
            "ACK BINARY 2 bytes",
            "ACK UNKNOWN(9) 3 bytes"
        ]
    );
    assert_eq!(h.host.stats().frames, 4);
}

#[test]
fn data_exchange_ack_waits_for_room() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let c = h.accept(1001, 1);
    h.io.conn(c).room = 3;
    let mut stream = dx_frame(FrameType::Other(9), b"a");
    stream.extend(dx_frame(FrameType::Other(9), b"bb"));
    h.feed(c, &stream);
    // The first ACK is stuck; the second frame is not handled yet.
    assert_eq!(h.output(c).len(), 3);
    assert_eq!(h.host.stats().frames, 1);
    h.grant(c, usize::MAX);
    assert_eq!(
        replies(&h.output(c)),
        vec!["ACK UNKNOWN(9) 1 bytes", "ACK UNKNOWN(9) 2 bytes"]
    );
}

#[test]
fn malformed_or_oversized_frame_closes_only_that_connection() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let bad = h.accept(1001, 1);
    let good = h.accept(1001, 2);
    // A declared length of 4 GiB: refused as soon as the header is in,
    // without buffering or allocating for it.
    h.feed(bad, &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, b'x']);
    assert!(h.io.conn(bad).closed);
    assert!(h.output(bad).is_empty());
    assert_eq!(h.host.stats().protocol_errors, 1);
    assert_eq!(h.host.service_of(bad), None);
    h.feed(good, &dx_frame(FrameType::Other(0), b""));
    assert_eq!(replies(&h.output(good)), vec!["ACK UNKNOWN(0) 0 bytes"]);
    assert!(!h.io.conn(good).closed);
    // A large but legal declared length allocates only for what arrived.
    let big = h.accept(1001, 3);
    let mut head = dx_frame(FrameType::Binary, b"");
    head[4..8].copy_from_slice(&(16u32 << 20).to_be_bytes());
    head.extend_from_slice(&[7; 100]);
    h.feed(big, &head);
    assert!(!h.io.conn(big).closed);
    assert!(
        h.host.buffered_bytes() < 4 * READ_CHUNK,
        "{}",
        h.host.buffered_bytes()
    );
    // The peer gives up mid-frame: closed, nothing saved.
    h.fin(big);
    assert!(h.io.conn(big).closed);
    assert!(h.actions().is_empty());
}

#[test]
fn large_file_is_handed_over_whole() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    h.io.max_read = 1152;
    let c = h.accept(1001, 1);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    h.feed(c, &file_frame(b"big.bin", &data));
    let acts = h.actions();
    let [HostAction::SaveReceivedFile { data: got, .. }] = &acts[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(got, &data);
    assert_eq!(replies(&h.output(c)), vec!["ACK FILE 300000 bytes"]);
}

#[test]
fn trace_frames_get_a_json_ack_in_the_current_profile() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let c = h.accept(1001, 1);
    let tp = crate::services::dataexchange::TracePayload {
        inner_type: FrameType::Text,
        sent_at_ns: 42,
        inner: b"hello",
    };
    let mut p = vec![0u8; 17];
    tp.encode(&mut p).unwrap();
    h.feed(c, &dx_frame(FrameType::Trace, &p));
    assert_eq!(h.actions().len(), 1);
    let out = h.output(c);
    let (f, _) = Frame::parse(&out, u32::MAX).unwrap().unwrap();
    assert_eq!(f.frame_type, FrameType::Json);
    let ack = TraceAck::from_json(f.payload).unwrap();
    assert_eq!(ack.inner_ack, "ACK TEXT 5 bytes");
    assert_eq!(ack.sent_at_ns, 42);
    assert_eq!(ack.received_at_ns, 1_772_197_424_000_000_000);
}

#[test]
fn data_exchange_idle_timeout() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let c = h.accept(1001, 1);
    let deadline = h.host.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + DATA_IDLE_TIMEOUT);
    h.host
        .handle_timeout(&mut h.io, deadline.saturating_sub(Duration::from_nanos(1)));
    assert!(!h.io.conn(c).closed);
    h.host.handle_timeout(&mut h.io, deadline);
    assert!(h.io.conn(c).closed);
    assert_eq!(h.host.stats().timeouts, 1);
    assert_eq!(h.host.poll_timeout(), None);
}

fn published(acts: &[HostAction]) -> usize {
    acts.iter()
        .filter(|a| matches!(a, HostAction::Event(ServiceEvent::Published { .. })))
        .count()
}

#[test]
fn event_stream_exact_topic_and_wildcard() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let news = h.accept(1002, 1);
    let star = h.accept(1002, 2);
    let sport = h.accept(1002, 3);
    let publ = h.accept(1002, 4);
    h.feed(news, &ev(b"news", b""));
    h.feed(star, &ev(b"*", b""));
    h.feed(sport, &ev(b"sport", b""));
    h.feed(publ, &ev(b"news", b""));
    let subs = h.actions();
    assert_eq!(subs.len(), 4);
    assert!(matches!(
        &subs[0],
        HostAction::Event(ServiceEvent::Subscribed { conn, topic, .. }) if *conn == news && &topic[..] == b"news"
    ));
    let p = ev(b"news", b"hi");
    h.feed(publ, &p);
    assert_eq!(h.output(news), p);
    assert_eq!(h.output(star), p);
    assert!(h.output(sport).is_empty());
    // Never back to the publisher, although it is subscribed to "news".
    assert!(h.output(publ).is_empty());
    let acts = h.actions();
    assert!(matches!(
        &acts[..],
        [HostAction::Event(ServiceEvent::Published {
            size: 2,
            delivered: 2,
            ..
        })]
    ));
    // No prefix matching; "*" publications reach only "*" subscribers.
    h.feed(publ, &ev(b"new", b"x"));
    h.feed(publ, &ev(b"*", b"y"));
    assert_eq!(h.output(news), p);
    let mut both = p.clone();
    both.extend(ev(b"new", b"x"));
    both.extend(ev(b"*", b"y"));
    assert_eq!(h.output(star), both);
}

#[test]
fn slow_subscriber_drops_without_affecting_others() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let fast = h.accept(1002, 1);
    let slow = h.accept(1002, 2);
    let publ = h.accept(1002, 3);
    h.feed(fast, &ev(b"t", b""));
    h.feed(slow, &ev(b"t", b""));
    h.feed(publ, &ev(b"p", b""));
    h.io.conn(slow).room = 0;
    let total = eventstream::QUEUE_EVENTS + 50;
    let mut sent = Vec::new();
    for i in 0..total as u32 {
        let e = ev(b"t", &i.to_be_bytes());
        sent.extend_from_slice(&e);
        h.feed(publ, &e);
    }
    assert_eq!(published(&h.actions()), total);
    assert_eq!(h.output(fast), sent);
    assert!(h.output(slow).is_empty());
    let dropped = h.host.subscriber_dropped(slow) as usize;
    assert!(dropped > 0 && dropped < total, "{dropped}");
    assert_eq!(h.host.stats().subscriber_drops as usize, dropped);
    // Memory for the slow one is bounded by its queue.
    h.grant(slow, usize::MAX);
    let got = h.output(slow);
    let kept = total - dropped;
    assert_eq!(got, sent[..got.len()]);
    assert_eq!(got.len(), kept * ev(b"t", &[0; 4]).len());
}

#[test]
fn closing_unsubscribes() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let a = h.accept(1002, 1);
    let b = h.accept(1002, 2);
    let publ = h.accept(1002, 3);
    h.feed(a, &ev(b"t", b""));
    h.feed(b, &ev(b"t", b""));
    h.feed(publ, &ev(b"t", b""));
    h.actions();
    h.host.on_closed(a);
    assert_eq!(
        h.actions(),
        vec![HostAction::Event(ServiceEvent::Unsubscribed {
            conn: a,
            remote: remote(1),
            topic: Some(Bytes::from_static(b"t")),
        })]
    );
    h.feed(publ, &ev(b"t", b"1"));
    assert!(h.output(a).is_empty());
    assert_eq!(h.output(b), ev(b"t", b"1"));
    assert_eq!(published(&h.actions()), 1);
    // The peer's FIN also unsubscribes (and closes).
    h.fin(b);
    assert!(h.io.conn(b).closed);
    let acts = h.actions();
    assert!(
        matches!(&acts[..], [HostAction::Event(ServiceEvent::Unsubscribed { conn, .. })] if *conn == b)
    );
    // A bad frame closes only the offender.
    h.feed(publ, &[0xff, 0xff]);
    assert!(h.io.conn(publ).closed);
    assert_eq!(h.host.conn_count(), 0);
}

#[test]
fn untrusted_subscriber_refused_in_current_profile() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Current));
    let c = ConnId(5);
    h.io.conn(c).room = usize::MAX;
    h.host.on_accept(h.now, 1002, c, remote(5), false).unwrap();
    h.feed(c, &ev(b"t", b""));
    assert!(h.io.conn(c).closed);
    assert_eq!(h.host.conn_count(), 0);
}

fn trust_msg(justification: &str) -> Vec<u8> {
    format!(
        r#"{{"type":"handshake_request","node_id":1,"public_key":"","justification":"{justification}","signature":"","reason":"","timestamp":1767225600}}"#
    )
    .into_bytes()
}

#[test]
fn trust_message_split_across_many_reads() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let c = h.accept(444, 7);
    // Braces and quotes inside the text must not end the object early.
    let msg = trust_msg(r#"hi {\"x\": [1]} }"#);
    for b in &msg {
        assert!(h.host.poll_action().is_none());
        h.feed(c, &[*b]);
    }
    assert_eq!(
        h.actions(),
        vec![HostAction::TrustMessage {
            from: Addr::new(0, 7),
            bytes: msg.clone()
        }]
    );
    assert!(h.io.conn(c).closed);
    // The message parses with the handshake codec.
    assert!(
        crate::services::handshake::HandshakeMessage::decode(&msg, WireProfile::Legacy).is_ok()
    );
}

#[test]
fn trust_message_oversized_or_garbage_or_late_is_dropped() {
    let mut h = Harness::new(HostConfig::new(WireProfile::Legacy));
    let c = h.accept(444, 1);
    let long = trust_msg(&"a".repeat(crate::services::handshake::MAX_MESSAGE_LEGACY));
    h.feed(c, &long);
    assert!(h.io.conn(c).closed);
    assert!(h.actions().is_empty());
    assert_eq!(
        h.io.conn(c).read_pos,
        crate::services::handshake::MAX_MESSAGE_LEGACY
    );
    let g = h.accept(444, 2);
    h.feed(g, b"GET / HTTP/1.0");
    assert!(h.io.conn(g).closed);
    let t = h.accept(444, 3);
    h.feed(t, b"{\"type\":");
    assert_eq!(h.host.poll_timeout(), Some(h.now + TRUST_TIMEOUT));
    h.host.handle_timeout(&mut h.io, h.now + TRUST_TIMEOUT);
    assert!(h.io.conn(t).closed);
    let e = h.accept(444, 4);
    h.feed(e, b"{\"type\":");
    h.fin(e);
    assert!(h.io.conn(e).closed);
    assert!(h.actions().is_empty());
    assert_eq!(h.host.stats().protocol_errors, 2);
}

mod chunking {
    use super::*;
    use proptest::prelude::*;

    /// Runs `stream` into a fresh connection on `port`, cut at `cuts`;
    /// returns the actions and what was written back to that connection
    /// and to a subscriber of topic `t`.
    fn run(port: u16, stream: &[u8], cuts: &[usize]) -> (Vec<HostAction>, Vec<u8>, Vec<u8>) {
        let mut h = Harness::new(HostConfig::new(WireProfile::Current));
        let sub = h.accept(1002, 100);
        h.feed(sub, &ev(b"t", b""));
        h.actions();
        let c = h.accept(port, 1);
        let mut at = 0;
        for &cut in cuts {
            let cut = cut.clamp(at, stream.len());
            h.feed(c, &stream[at..cut]);
            at = cut;
        }
        h.feed(c, &stream[at..]);
        h.fin(c);
        let acts = h.actions();
        (acts, h.output(c), h.output(sub))
    }

    fn dx_stream(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut s = Vec::new();
        for (kind, body) in msgs {
            s.extend(match kind % 5 {
                0 => dx_frame(FrameType::Text, body),
                1 => dx_frame(FrameType::Json, body),
                2 => dx_frame(FrameType::Binary, body),
                3 => file_frame(b"f.txt", body),
                _ => file_frame(b"../x", body),
            });
        }
        s
    }

    fn ev_stream(msgs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut s = ev(b"me", b"");
        for (kind, body) in msgs {
            s.extend(ev(if kind % 2 == 0 { b"t" } else { b"u" }, body));
        }
        s
    }

    fn arb_msgs() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        proptest::collection::vec(
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)),
            0..8,
        )
    }

    fn arb_cuts() -> impl Strategy<Value = Vec<usize>> {
        proptest::collection::vec(0usize..400, 0..30).prop_map(|mut v| {
            v.sort_unstable();
            v
        })
    }

    proptest! {
        #[test]
        fn data_exchange(msgs in arb_msgs(), cuts in arb_cuts()) {
            let s = dx_stream(&msgs);
            let whole = run(1001, &s, &[]);
            prop_assert_eq!(replies(&whole.1).len(), msgs.len());
            prop_assert_eq!(run(1001, &s, &cuts), whole);
        }

        #[test]
        fn event_stream(msgs in arb_msgs(), cuts in arb_cuts()) {
            let s = ev_stream(&msgs);
            let whole = run(1002, &s, &[]);
            prop_assert_eq!(published(&whole.0), msgs.len());
            prop_assert_eq!(run(1002, &s, &cuts), whole);
        }

        #[test]
        fn echo(bytes in proptest::collection::vec(any::<u8>(), 0..400), cuts in arb_cuts()) {
            let whole = run(7, &bytes, &[]);
            prop_assert_eq!(&whole.1, &bytes);
            prop_assert_eq!(run(7, &bytes, &cuts), whole);
        }

        #[test]
        fn trust(j in "[a-z{}\\[\\] ]{0,200}", cuts in arb_cuts()) {
            let s = trust_msg(&j);
            let whole = run(444, &s, &[]);
            prop_assert_eq!(whole.0.len(), 1);
            prop_assert_eq!(run(444, &s, &cuts), whole);
        }
    }
}

/// The host driven by a real server [`crate::node::Node`], talking to a
/// real client node over an instant in-memory network.
mod over_nodes {
    use super::*;
    use crate::crypto::identity::{Identity, TunnelKey};
    use crate::crypto::provider::RustCrypto;
    use crate::node::{
        Event as NodeEvent, Limits, MIN_TRANSMIT_BUFFER, Node, NodeConfig, NodeError,
    };
    use crate::stream::conn::StreamError;
    use core::net::SocketAddr;
    use rand_chacha::ChaCha8Rng;
    use rand_core::SeedableRng;

    type N = Node<RustCrypto, ChaCha8Rng>;

    fn ep(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 4000))
    }

    fn ident(i: u8) -> Identity {
        Identity::from_seed(&RustCrypto, [i; 32])
    }

    fn node(i: u8) -> N {
        let mut rng = ChaCha8Rng::from_seed([i; 32]);
        let tunnel_key = TunnelKey::generate(&RustCrypto, &mut rng);
        let mut n = Node::new(
            Instant::ZERO,
            NodeConfig {
                addr: Addr::new(1, u32::from(i)),
                identity: Some(ident(i)),
                tunnel_key,
                profile: WireProfile::Current,
                provider: RustCrypto,
                rng,
                encrypt: true,
                admin_token: Vec::new(),
                limits: Limits::default(),
            },
        );
        let other = 3 - i;
        n.add_peer(
            Addr::new(1, u32::from(other)),
            ep(other),
            Some(*ident(other).public()),
        );
        n
    }

    /// [`StreamIo`] over a node, as the daemon implements it.
    struct NodeIo<'a> {
        node: &'a mut N,
        now: Instant,
    }

    fn map(e: NodeError) -> IoError {
        match e {
            NodeError::Stream(StreamError::WouldBlock) => IoError::WouldBlock,
            _ => IoError::Closed,
        }
    }

    impl StreamIo for NodeIo<'_> {
        fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, IoError> {
            self.node.read(conn, buf).map_err(map)
        }
        fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, IoError> {
            self.node.write(self.now, conn, data).map_err(map)
        }
        fn shutdown(&mut self, conn: ConnId) {
            let _ = self.node.shutdown(self.now, conn);
        }
        fn close(&mut self, conn: ConnId) {
            let _ = self.node.close(self.now, conn);
        }
    }

    struct World {
        client: N,
        server: N,
        host: ServiceHost,
        now: Instant,
        actions: Vec<HostAction>,
        client_events: Vec<NodeEvent>,
    }

    impl World {
        fn new() -> Self {
            let mut server = node(2);
            let host = ServiceHost::new(HostConfig::new(WireProfile::Current));
            for p in host.ports() {
                server.listen(p).unwrap();
            }
            World {
                client: node(1),
                server,
                host,
                now: Instant::ZERO,
                actions: Vec::new(),
                client_events: Vec::new(),
            }
        }

        /// Moves datagrams, runs the server's host on node events, and
        /// advances time to the next timer when nothing else moves.
        fn step(&mut self) -> bool {
            let mut moved = false;
            let mut buf = vec![0u8; MIN_TRANSMIT_BUFFER];
            while let Some(t) = self.client.poll_transmit(self.now, &mut buf) {
                self.server
                    .handle_datagram(self.now, ep(1), &mut buf[..t.len]);
                moved = true;
            }
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                self.client
                    .handle_datagram(self.now, ep(2), &mut buf[..t.len]);
                moved = true;
            }
            let (now, wall) = (self.now, WALL);
            while let Some(ev) = self.server.poll_event() {
                moved = true;
                let mut io = NodeIo {
                    node: &mut self.server,
                    now,
                };
                match ev {
                    NodeEvent::Incoming { port } => {
                        while let Some(c) = io.node.accept(port) {
                            let from = PilotSockAddr::new(Addr::new(1, 1), 49152);
                            self.host.on_accept(now, port, c, from, true).unwrap();
                        }
                    }
                    NodeEvent::Readable(c) => self.host.on_readable(&mut io, c, now, wall),
                    NodeEvent::Writable(c) | NodeEvent::Connected(c) => {
                        self.host.on_writable(&mut io, c, now, wall)
                    }
                    NodeEvent::Closed(c) | NodeEvent::Reset(c, _) => self.host.on_closed(c),
                    _ => {}
                }
                while let Some(a) = self.host.poll_action() {
                    if let HostAction::SaveReceivedFile { conn, .. }
                    | HostAction::SaveInbox { conn, .. } = &a
                    {
                        self.host.save_finished(&mut io, *conn, now, wall, Ok(()));
                    }
                    self.actions.push(a);
                }
            }
            while let Some(ev) = self.client.poll_event() {
                self.client_events.push(ev);
            }
            if !moved {
                let next = [self.client.poll_timeout(), self.server.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .map(|(t, _)| t)
                    .chain(self.host.poll_timeout())
                    .min();
                let Some(next) = next else { return false };
                self.now = self.now.max(next);
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
                let mut io = NodeIo {
                    node: &mut self.server,
                    now: self.now,
                };
                self.host.handle_timeout(&mut io, self.now);
            }
            true
        }
    }

    /// Sends `data` from the client on a new stream to `port`, sends its
    /// FIN once `expect_back` bytes came back, and returns everything the
    /// client reads until the server's FIN.
    fn exchange(w: &mut World, port: u16, data: &[u8], expect_back: usize) -> Vec<u8> {
        let c = w.client.connect(w.now, Addr::new(1, 2), port).unwrap();
        let (mut sent, mut got, mut eof, mut fin_sent) = (0, Vec::new(), false, false);
        let mut buf = vec![0u8; 8192];
        for _ in 0..200_000 {
            if sent < data.len() {
                if let Ok(n) = w.client.write(w.now, c, &data[sent..]) {
                    sent += n;
                }
            } else if !fin_sent && got.len() >= expect_back {
                // The transport has no half-close (spec/transport.md §8):
                // once our FIN takes effect the server cannot write any
                // more, so a client reads its replies before its FIN.
                fin_sent = w.client.shutdown(w.now, c).is_ok();
            }
            loop {
                match w.client.read(c, &mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(_) => break,
                }
            }
            if eof || !w.step() {
                break;
            }
        }
        got
    }

    #[test]
    fn echo_over_real_nodes() {
        let mut w = World::new();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        let got = exchange(&mut w, 7, &data, data.len());
        assert_eq!(got.len(), data.len());
        assert!(got == data);
        assert!(w.host.buffered_bytes() <= ECHO_CHUNK);
    }

    #[test]
    fn data_exchange_over_real_nodes() {
        let mut w = World::new();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let mut stream = file_frame(b"report.pdf", &data);
        stream.extend(dx_frame(FrameType::Text, b"done"));
        let acks = (8 + "ACK FILE 100000 bytes".len()) + (8 + "ACK TEXT 4 bytes".len());
        let got = exchange(&mut w, 1001, &stream, acks);
        assert_eq!(
            replies(&got),
            vec!["ACK FILE 100000 bytes", "ACK TEXT 4 bytes"]
        );
        let [
            HostAction::SaveReceivedFile {
                original,
                data: saved,
                ..
            },
            HostAction::SaveInbox {
                kind: FrameType::Text,
                ..
            },
        ] = &w.actions[..]
        else {
            panic!("{:?}", w.actions.len())
        };
        assert_eq!(original, "report.pdf");
        assert!(saved == &data);
    }
}

#[test]
fn a_task_connection_hands_over_one_frame_writes_the_answer_and_closes() {
    let mut cfg = HostConfig::new(WireProfile::Current);
    cfg.tasks = true;
    let mut h = Harness::new(cfg);
    assert!(h.host.ports().any(|p| p == tasks::PORT));
    let c = h.accept(tasks::PORT, 7);
    let frame = tasks::encode_frame(tasks::FrameType::Submit, br#"{"task_id":"x"}"#).unwrap();
    // Split: nothing until the frame is complete; a second frame after it
    // is ignored.
    h.feed(c, &frame[..5]);
    assert!(h.actions().is_empty());
    let mut rest = frame[5..].to_vec();
    rest.extend_from_slice(&frame);
    h.feed(c, &rest);
    let acts = h.actions();
    assert_eq!(
        acts,
        vec![HostAction::TaskFrame {
            conn: c,
            from: Addr::new(0, 7),
            frame_type: tasks::FrameType::Submit,
            payload: br#"{"task_id":"x"}"#.to_vec(),
        }]
    );
    // Waiting for the daemon: no deadline closes it meanwhile.
    assert_eq!(h.host.poll_timeout(), None);
    assert!(!h.io.conn(c).closed);
    h.host
        .task_reply(&mut h.io, c, h.now, WALL, Some(b"answer".to_vec()));
    assert_eq!(h.output(c), b"answer");
    assert!(h.io.conn(c).closed);
    assert_eq!(h.host.conn_count(), 0);

    // No answer to give (a status update): closed at once all the same.
    let e = h.accept(tasks::PORT, 9);
    h.feed(
        e,
        &tasks::encode_frame(tasks::FrameType::StatusUpdate, b"{}").unwrap(),
    );
    assert_eq!(h.actions().len(), 1);
    h.host.task_reply(&mut h.io, e, h.now, WALL, None);
    assert!(h.io.conn(e).closed);
    assert!(h.output(e).is_empty());

    // A bad header closes the connection and is counted.
    let d = h.accept(tasks::PORT, 8);
    h.feed(d, &[0, 0, 0, 9, 0, 0, 0, 0]);
    assert!(h.io.conn(d).closed);
    assert_eq!(h.host.stats().protocol_errors, 1);
    // Off by default: port 1003 is not served.
    let mut host = ServiceHost::new(HostConfig::new(WireProfile::Current));
    assert_eq!(
        host.on_accept(Instant::ZERO, tasks::PORT, ConnId(1), remote(1), true),
        Err(HostError::NotServed(tasks::PORT))
    );
}
