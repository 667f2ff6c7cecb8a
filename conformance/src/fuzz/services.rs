//! Fuzz body for the built-in services (`spec/services.md`). The first
//! input byte picks the codec, the rest is its input:
//!
//! | byte % 8 | codec |
//! |---|---|
//! | 0 | data-exchange frame stream, typed payloads, receiving service |
//! | 1 | event-stream frame stream and the broker |
//! | 2 | handshake message and the trust store |
//! | 3 | `trust.json` |
//! | 4 | inbox record and TRACE acknowledgement |
//! | 5 | received file-name sanitising |
//! | 6 | nameserver request and response lines, store file |
//! | 7 | RFC 3339 timestamps |
//!
//! What decodes must re-encode to the covered bytes (binary codecs) or to
//! a canonical form that decodes to the same value (JSON and text codecs).

use pilot_proto::addr::{Addr, PilotSockAddr};
use pilot_proto::services::dataexchange::{
    DataExchangeService, FileBody, FileStreamMsg, Frame, FrameType, InboxMessage, TraceAck,
    TracePayload, sanitize_file_name,
};
use pilot_proto::services::eventstream::{Broker, Event};
use pilot_proto::services::handshake::{
    HandshakeMessage, Inbound, SigningKey, TrustFile, TrustStore,
};
use pilot_proto::services::nameserver::{RecordStore, Request, Response, StoreFile};
use pilot_proto::services::walltime::WallTime;
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use serde_json::Value;

/// Frame-size bound used while fuzzing (keeps inputs cheap).
const MAX: u32 = 1 << 16;

/// Runs the services round-trip checks over arbitrary bytes.
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        0 => dataexchange(rest),
        1 => eventstream(rest),
        2 => handshake(rest),
        3 => trust_file(rest),
        4 => inbox(rest),
        5 => file_name(rest),
        6 => nameserver(rest),
        _ => walltime(rest),
    }
}

fn dataexchange(mut rest: &[u8]) {
    let mut svc = DataExchangeService::new(WireProfile::Current);
    let at = WallTime::new(1_767_225_600, 3600);
    while let Ok(Some((f, used))) = Frame::parse(rest, MAX) {
        let mut out = vec![0u8; f.encoded_len()];
        assert_eq!(f.encode(&mut out), Ok(used));
        assert_eq!(out.as_slice(), &rest[..used]);
        assert_eq!(FrameType::from_u32(f.frame_type.to_u32()), f.frame_type);
        match f.frame_type {
            FrameType::File => {
                let b = FileBody::decode(f.payload);
                let mut o = vec![0u8; b.encoded_len()];
                assert_eq!(b.encode(&mut o), Ok(f.payload.len()));
                assert_eq!(o, f.payload);
            }
            FrameType::Trace => {
                if let Ok(t) = TracePayload::decode(f.payload) {
                    let mut o = vec![0u8; f.payload.len()];
                    assert_eq!(t.encode(&mut o), Ok(f.payload.len()));
                    assert_eq!(o, f.payload);
                }
            }
            FrameType::FileStream => {
                if let Ok(m) = FileStreamMsg::decode(f.payload) {
                    let mut o = vec![0u8; m.encoded_len()];
                    assert_eq!(m.encode(&mut o), Ok(f.payload.len()));
                    assert_eq!(o, f.payload);
                }
            }
            _ => {}
        }
        let r = svc.on_frame(f, Addr::new(0, 9), at);
        let reply = r.reply_text(Ok(()));
        assert!(reply.starts_with("ACK ") || reply.starts_with("ERR "));
        rest = &rest[used..];
    }
}

fn eventstream(data: &[u8]) {
    for profile in [WireProfile::Legacy, WireProfile::Current] {
        let mut broker = Broker::new(profile);
        let mut frames = Vec::new();
        let mut rest = data;
        let mut i = 0u64;
        while let Ok(Some((e, used))) = Event::parse(rest, profile) {
            let mut out = vec![0u8; e.encoded_len()];
            assert_eq!(e.encode(&mut out), Ok(used));
            assert_eq!(out.as_slice(), &rest[..used]);
            let conn = i % 3;
            if broker.remote(conn).is_none() {
                let remote = PilotSockAddr::new(Addr::new(0, conn as u32), 1);
                let _ = broker.open(conn, remote, conn != 2, Instant::from_millis(i));
            }
            broker.on_frame(conn, &out, Instant::from_millis(i));
            frames.push(out);
            rest = &rest[used..];
            i += 1;
        }
        for conn in 0..3 {
            while let Some(b) = broker.pop_outgoing(conn) {
                assert!(frames.iter().any(|f| f.as_slice() == b.as_ref()));
            }
        }
    }
}

fn handshake(data: &[u8]) {
    let Ok(m) = HandshakeMessage::decode(data, WireProfile::Current) else {
        return;
    };
    let canon = m.to_json();
    assert_eq!(
        HandshakeMessage::decode(canon.as_bytes(), WireProfile::Current),
        Ok(m.clone())
    );
    let key = ed25519_key();
    let mut store = TrustStore::new(WireProfile::Current, 2, key);
    let now = WallTime::new(m.timestamp, 0);
    store.on_message(data, Inbound::default(), now);
    // A replay of the same message never changes anything.
    assert!(store.on_message(data, Inbound::default(), now).is_empty());
}

fn ed25519_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

fn trust_file(data: &[u8]) {
    let Ok(f) = TrustFile::from_json(data) else {
        return;
    };
    let text = f.to_json();
    assert_eq!(TrustFile::from_json(text.as_bytes()).ok(), Some(f.clone()));
    let mut store = TrustStore::new(WireProfile::Current, 2, ed25519_key());
    store.load(&f, WallTime::new(1_767_225_600, 0));
    assert!(store.pending().len() <= pilot_proto::services::handshake::PENDING_CAP);
}

fn inbox(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = InboxMessage::from_json(text) {
        assert_eq!(InboxMessage::from_json(&m.to_json()).ok(), Some(m));
    }
    if let Ok(a) = TraceAck::from_json(data) {
        assert_eq!(TraceAck::from_json(a.to_json().as_bytes()).ok(), Some(a));
    }
}

fn file_name(data: &[u8]) {
    if let Ok(s) = sanitize_file_name(data) {
        let p = std::path::Path::new(s);
        let mut comps = p.components();
        assert!(matches!(
            comps.next(),
            Some(std::path::Component::Normal(_))
        ));
        assert!(comps.next().is_none());
        assert!(!s.contains(['/', '\\', '\0', ':']));
    }
}

fn nameserver(data: &[u8]) {
    if let Ok(req) = Request::parse(data) {
        let line = req.to_string();
        assert_eq!(Request::parse(line.as_bytes()), Ok(req));
    }
    if let Ok(resp) = Response::parse(data) {
        let line = resp.to_string();
        assert_eq!(Response::parse(line.as_bytes()), Ok(resp));
    }
    if let Ok(f) = StoreFile::from_json(data) {
        assert_eq!(
            StoreFile::from_json(f.to_json().as_bytes()).ok(),
            Some(f.clone())
        );
        let mut store = RecordStore::new();
        store.load(&f, Instant::ZERO);
        let again = store.to_file();
        assert!(again.a_records.len() <= f.a_records.len());
    }
}

fn walltime(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = WallTime::parse_rfc3339(text) {
        let again = WallTime::parse_rfc3339(&t.rfc3339().to_string());
        assert_eq!(again.map(|a| a.unix_secs), Ok(t.unix_secs));
    }
}

/// Seed inputs from the services vectors, each prefixed with its selector.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut push = |sel: u8, bytes: Vec<u8>| {
        let mut v = vec![sel];
        v.extend(bytes);
        out.push(v);
    };
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    for v in crate::load("services_dataexchange.json") {
        match crate::field(&v, "kind") {
            "inbox" | "trace_ack" => push(4, text(&v, "text").unwrap_or_default().into_bytes()),
            _ => push(0, crate::unhex(crate::field(&v, "bytes"))),
        }
        if let Some(n) = text(&v, "file_name") {
            push(5, n.into_bytes());
        }
    }
    for v in crate::load("services_eventstream.json") {
        if let Some(b) = text(&v, "bytes") {
            push(1, crate::unhex(&b));
        }
    }
    for v in crate::load("services_handshake.json") {
        let sel = if crate::field(&v, "kind") == "trust_file" {
            3
        } else {
            2
        };
        push(sel, text(&v, "text").unwrap_or_default().into_bytes());
        if let Some(f) = text(&v, "trust_file") {
            push(3, f.into_bytes());
        }
    }
    for v in crate::load("services_nameserver.json") {
        for k in ["request", "response", "text"] {
            if let Some(t) = text(&v, k) {
                push(6, t.into_bytes());
            }
        }
    }
    for t in ["2026-02-27T15:03:44+02:00", "2026-01-01T00:00:00.5Z"] {
        push(7, t.as_bytes().to_vec());
    }
    out
}
