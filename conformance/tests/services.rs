//! Known-answer tests of the built-in services (`spec/services.md`) against
//! `vectors/services_*.json`, in both directions: decoding the bytes gives
//! the listed fields, and encoding the listed fields gives the bytes.

use base64::Engine as _;
use pilot_conformance::{field, load, name, unhex};
use pilot_proto::addr::{Addr, PilotSockAddr};
use pilot_proto::services::dataexchange::{
    self as dx, DataExchangeService, FileBody, FileStreamBody, FileStreamMsg, Frame, FrameType,
    InboxMessage, Store, TraceAck, TracePayload,
};
use pilot_proto::services::echo;
use pilot_proto::services::eventstream::{self as es, Broker, Event};
use pilot_proto::services::handshake::{self as hs, HandshakeMessage, TrustFile};
use pilot_proto::services::nameserver::{RecordStore, Request, Response, StoreFile};
use pilot_proto::services::walltime::WallTime;
use pilot_proto::time::Instant;
use pilot_proto::wire::WireProfile;
use serde_json::Value;

fn kind(v: &Value) -> &str {
    field(v, "kind")
}

fn num(v: &Value, k: &str) -> u64 {
    v.get(k)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{}: missing number {k}", name(v)))
}

fn profile(v: &Value) -> WireProfile {
    match field(v, "profile") {
        "legacy" => WireProfile::Legacy,
        "current" => WireProfile::Current,
        p => panic!("{}: profile {p}", name(v)),
    }
}

fn encode_frame(f: Frame<'_>) -> Vec<u8> {
    let mut out = vec![0u8; f.encoded_len()];
    f.encode(&mut out).unwrap();
    out
}

#[test]
fn dataexchange_frames() {
    let vs = load("services_dataexchange.json");
    let mut seen = 0;
    for v in vs.iter().filter(|v| kind(v) == "frame") {
        let n = name(v);
        let bytes = unhex(field(v, "bytes"));
        let payload = unhex(field(v, "payload"));
        let t = FrameType::from_u32(num(v, "frame_type") as u32);
        // Decode.
        let f =
            Frame::decode(&bytes, dx::MAX_PAYLOAD_LEGACY).unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(f.frame_type, t, "{n}");
        assert_eq!(f.payload, payload.as_slice(), "{n}");
        assert_eq!(t.to_string(), field(v, "type_name"), "{n}");
        // Encode.
        let built = Frame {
            frame_type: t,
            payload: &payload,
        };
        assert_eq!(encode_frame(built), bytes, "{n}");
        // Typed payloads, both ways.
        match t {
            FrameType::File => {
                let body = FileBody::decode(&payload);
                assert_eq!(body.name(), field(v, "file_name").as_bytes(), "{n}");
                assert_eq!(body.data(), unhex(field(v, "file_data")).as_slice(), "{n}");
                let mut out = vec![0u8; body.encoded_len()];
                body.encode(&mut out).unwrap();
                assert_eq!(out, payload, "{n}");
            }
            FrameType::Trace => {
                let inner = unhex(field(v, "trace_inner"));
                let tp = TracePayload {
                    inner_type: FrameType::from_u32(num(v, "trace_inner_type") as u32),
                    sent_at_ns: num(v, "trace_sent_at_ns"),
                    inner: &inner,
                };
                assert_eq!(TracePayload::decode(&payload), Ok(tp), "{n}");
                let mut out = vec![0u8; payload.len()];
                tp.encode(&mut out).unwrap();
                assert_eq!(out, payload, "{n}");
            }
            FrameType::FileStream => {
                let id: [u8; 16] = core::array::from_fn(|i| i as u8);
                let data = v.get("fs_data").and_then(Value::as_str).map(unhex);
                let body = match num(v, "fs_kind") {
                    1 => FileStreamBody::Init {
                        size: num(v, "fs_size"),
                        sha256: [0xaa; 32],
                        chunk_size: num(v, "fs_chunk_size") as u32,
                        name: field(v, "fs_name").as_bytes(),
                    },
                    2 => FileStreamBody::Chunk {
                        offset: num(v, "fs_offset"),
                        data: data.as_deref().unwrap(),
                    },
                    3 => FileStreamBody::Ack(num(v, "fs_value")),
                    4 => FileStreamBody::Done,
                    5 => FileStreamBody::InitAck(num(v, "fs_value")),
                    k => panic!("{n}: kind {k}"),
                };
                let m = FileStreamMsg {
                    transfer_id: id,
                    body,
                };
                assert_eq!(FileStreamMsg::decode(&payload), Ok(m), "{n}");
                let mut out = vec![0u8; m.encoded_len()];
                m.encode(&mut out).unwrap();
                assert_eq!(out, payload, "{n}");
            }
            _ => {}
        }
        seen += 1;
    }
    assert!(seen >= 14, "{seen}");
}

#[test]
fn dataexchange_reader_errors() {
    for v in load("services_dataexchange.json")
        .iter()
        .filter(|v| kind(v) == "frame_error")
    {
        let n = name(v);
        let bytes = unhex(field(v, "bytes"));
        let max = dx::max_payload(profile(v));
        let got = Frame::parse(&bytes, max);
        match field(v, "error") {
            "too_large" => assert!(matches!(got, Err(dx::DecodeError::TooLarge { .. })), "{n}"),
            "incomplete" => {
                assert_eq!(got, Ok(None), "{n}");
                assert!(Frame::decode(&bytes, max).is_err(), "{n}");
            }
            e => panic!("{n}: {e}"),
        }
    }
}

#[test]
fn dataexchange_service_decisions() {
    let mut seen = 0;
    for v in load("services_dataexchange.json")
        .iter()
        .filter(|v| kind(v) == "service")
    {
        let n = name(v);
        let mut at = WallTime::parse_rfc3339(field(v, "received_at")).unwrap();
        at.millis = num(v, "millis") as u16;
        let from: Addr = field(v, "from").parse().unwrap();
        let bytes = unhex(field(v, "bytes"));
        let frame = Frame::decode(&bytes, u32::MAX).unwrap();
        let mut svc = DataExchangeService::new(profile(v));
        let r = svc.on_frame(frame, from, at);
        assert_eq!(r.reply_text(Ok(())), field(v, "reply"), "{n}");
        assert_eq!(
            r.trace_sent_at_ns,
            v.get("trace_sent_at_ns").and_then(Value::as_u64),
            "{n}"
        );
        // The reply travels as a TEXT frame.
        let reply = field(v, "reply");
        let rf = encode_frame(Frame {
            frame_type: FrameType::Text,
            payload: reply.as_bytes(),
        });
        assert_eq!(Frame::decode(&rf, 64).unwrap().payload, reply.as_bytes());
        match (field(v, "store"), &r.store) {
            ("none", None) => {}
            (
                "file",
                Some(Store::File {
                    file_name, data, ..
                }),
            ) => {
                // `store_name` is the reference's timestamped name; we keep
                // the sender's sanitised name (spec/services.md §5.4), given
                // as `local_store_name` where the two differ.
                let want = v
                    .get("local_store_name")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| field(v, "store_name"));
                assert_eq!(file_name, want, "{n}");
                assert_eq!(*data, unhex(field(v, "store_content")).as_slice(), "{n}");
            }
            ("inbox", Some(Store::Inbox { file_name, json })) => {
                assert_eq!(file_name, field(v, "store_name"), "{n}");
                assert_eq!(json, field(v, "store_content"), "{n}");
                let m = InboxMessage::from_json(json).unwrap();
                assert_eq!(m.to_json(), *json, "{n}");
            }
            (want, got) => panic!("{n}: want {want}, got {got:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 6);
}

#[test]
fn dataexchange_trace_ack() {
    let v = load("services_dataexchange.json")
        .into_iter()
        .find(|v| kind(v) == "trace_ack")
        .unwrap();
    let text = field(&v, "text");
    let built = TraceAck {
        ack_sent_at_ns: num(&v, "ack_sent_at_ns"),
        inbox_written_at_ns: num(&v, "inbox_written_at_ns"),
        inner_ack: field(&v, "inner_ack").into(),
        received_at_ns: num(&v, "received_at_ns"),
        sent_at_ns: num(&v, "sent_at_ns"),
    };
    assert_eq!(built.to_json(), text);
    assert_eq!(TraceAck::from_json(text.as_bytes()).unwrap(), built);
}

#[test]
fn dataexchange_inbox_example() {
    let v = load("services_dataexchange.json")
        .into_iter()
        .find(|v| kind(v) == "inbox")
        .unwrap();
    let text = field(&v, "text");
    let m = InboxMessage::from_json(text).unwrap();
    assert_eq!((m.bytes, m.kind.as_str()), (5, "TEXT"));
    assert_eq!(m.to_json(), text);
    let at = WallTime::parse_rfc3339(&m.received_at).unwrap();
    let built = InboxMessage::new(
        FrameType::Text,
        m.from.parse().unwrap(),
        b"hello",
        at,
        WireProfile::Legacy,
    );
    assert_eq!(built, m);
}

#[test]
fn eventstream_frames_and_errors() {
    let mut seen = 0;
    for v in load("services_eventstream.json") {
        let n = name(&v);
        match kind(&v) {
            "event" => {
                let bytes = unhex(field(&v, "bytes"));
                let payload = unhex(field(&v, "payload"));
                let e = Event {
                    topic: field(&v, "topic").as_bytes(),
                    payload: &payload,
                };
                for p in [WireProfile::Legacy, WireProfile::Current] {
                    assert_eq!(Event::decode(&bytes, p), Ok(e), "{n}");
                }
                let mut out = vec![0u8; e.encoded_len()];
                e.encode(&mut out).unwrap();
                assert_eq!(out, bytes, "{n}");
            }
            "event_error" => {
                let bytes = unhex(field(&v, "bytes"));
                let got = Event::parse(&bytes, profile(&v));
                let ok = match field(&v, "error") {
                    "topic_too_long" => matches!(got, Err(es::DecodeError::TopicTooLong(_))),
                    "payload_too_large" => matches!(got, Err(es::DecodeError::PayloadTooLarge(_))),
                    "topic_not_utf8" => got == Err(es::DecodeError::TopicNotUtf8),
                    e => panic!("{n}: {e}"),
                };
                assert!(ok, "{n}: {got:?}");
            }
            "broker" => {
                let mut b = Broker::new(profile(&v));
                for s in v["steps"].as_array().unwrap() {
                    let conn = s["conn"].as_u64().unwrap();
                    if b.remote(conn).is_none() {
                        let remote = PilotSockAddr::new(Addr::new(0, conn as u32), 49152);
                        b.open(conn, remote, true, Instant::ZERO).unwrap();
                    }
                    b.on_frame(conn, &unhex(s["bytes"].as_str().unwrap()), Instant::ZERO);
                }
                for (conn, want) in v["delivered"].as_object().unwrap() {
                    let conn: u64 = conn.parse().unwrap();
                    let got: Vec<String> = std::iter::from_fn(|| b.pop_outgoing(conn))
                        .map(hex::encode)
                        .collect();
                    let want: Vec<String> = want
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap().to_owned())
                        .collect();
                    assert_eq!(got, want, "{n}: conn {conn}");
                }
            }
            k => panic!("{n}: kind {k}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn handshake_messages_and_trust_files() {
    let mut seen = 0;
    for v in load("services_handshake.json") {
        let n = name(&v);
        let text = field(&v, "text");
        match kind(&v) {
            "message" => {
                let m = HandshakeMessage::decode(text.as_bytes(), WireProfile::Legacy).unwrap();
                assert_eq!(m.node_id as u64, num(&v, "sender"), "{n}");
                assert_eq!(serde_json::to_value(m.kind).unwrap(), v["type"], "{n}");
                assert_eq!(m.justification, field(&v, "justification"), "{n}");
                assert_eq!(m.timestamp as u64, num(&v, "timestamp"), "{n}");
                let receiver = num(&v, "receiver") as u32;
                assert_eq!(
                    hs::challenge(m.node_id, receiver),
                    field(&v, "challenge"),
                    "{n}"
                );
                assert_eq!(m.verify(receiver), Ok(()), "{n}");
                // Build it from the key and fields: same bytes.
                let seed: [u8; 32] = unhex(field(&v, "seed")).try_into().unwrap();
                let key = hs::SigningKey::from_bytes(&seed);
                let built = HandshakeMessage {
                    kind: m.kind,
                    node_id: m.node_id,
                    public_key: base64::engine::general_purpose::STANDARD
                        .encode(key.verifying_key().as_bytes()),
                    justification: field(&v, "justification").into(),
                    signature: hs::sign(&key, m.node_id, receiver),
                    reason: field(&v, "reason").into(),
                    timestamp: num(&v, "timestamp") as i64,
                };
                let mut out = vec![0u8; 1024];
                let len = built.encode(&mut out).unwrap();
                assert_eq!(&out[..len], text.as_bytes(), "{n}");
            }
            "process" => {
                let seed = |k: &str| -> [u8; 32] { unhex(field(&v, k)).try_into().unwrap() };
                let mut store = hs::TrustStore::new(
                    WireProfile::Current,
                    num(&v, "receiver") as u32,
                    hs::SigningKey::from_bytes(&seed("receiver_seed")),
                );
                let inbound = hs::Inbound {
                    source: num(&v, "source_node") as u32,
                    registry_key: Some(
                        hs::SigningKey::from_bytes(&seed("registry_key_seed"))
                            .verifying_key()
                            .to_bytes(),
                    ),
                    shared_network: None,
                };
                let now = WallTime::new(num(&v, "now") as i64, 0);
                if v.get("repeat").is_some() {
                    store.on_message(text.as_bytes(), inbound, now);
                }
                let fx = store.on_message(text.as_bytes(), inbound, now);
                let names: Vec<&str> = fx
                    .iter()
                    .map(|e| match e {
                        hs::Effect::Persist => "persist",
                        hs::Effect::Event(hs::TrustEvent::Received { .. }) => "handshake.received",
                        hs::Effect::Event(hs::TrustEvent::Pending { .. }) => "handshake.pending",
                        other => panic!("{n}: unexpected {other:?}"),
                    })
                    .collect();
                let want: Vec<&str> = v["effects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                assert_eq!(names, want, "{n}");
                if let Some(tf) = v.get("trust_file").and_then(Value::as_str) {
                    assert_eq!(store.to_file().to_json(), tf, "{n}");
                }
            }
            "trust_file" => {
                let f = TrustFile::from_json(text.as_bytes()).unwrap();
                assert_eq!(f.to_json(), text, "{n}");
            }
            k => panic!("{n}: kind {k}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 7);
}

#[test]
fn echo_payloads() {
    for v in load("services_echo.json") {
        let n = name(&v);
        match kind(&v) {
            "ping" => assert_eq!(echo::ping_payload(num(&v, "seq") as u32), field(&v, "text")),
            "bench" => {
                let want = unhex(field(&v, "bytes"));
                let mut got = vec![0u8; want.len()];
                echo::fill_bench_chunk(num(&v, "offset"), &mut got);
                assert_eq!(got, want, "{n}");
            }
            k => panic!("{n}: kind {k}"),
        }
    }
}

#[test]
fn nameserver_exchanges() {
    let mut seen = 0;
    for v in load("services_nameserver.json") {
        let n = name(&v);
        let now = Instant::ZERO;
        let mut store = RecordStore::new();
        for step in v
            .get("setup")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let caller: Addr = step[0].as_str().unwrap().parse().unwrap();
            let r = store.handle_bytes(step[1].as_str().unwrap().as_bytes(), caller, now);
            assert_eq!(r, Response::Ok, "{n}: setup");
        }
        if kind(&v) == "store_file" {
            let text = field(&v, "text");
            assert_eq!(store.to_file().to_json(), text, "{n}");
            let f = StoreFile::from_json(text.as_bytes()).unwrap();
            let mut loaded = RecordStore::new();
            loaded.load(&f, now);
            assert_eq!(loaded.to_file(), f, "{n}");
            seen += 1;
            continue;
        }
        let caller: Addr = field(&v, "caller").parse().unwrap();
        let req = field(&v, "request");
        let want = field(&v, "response");
        let got = store.handle_bytes(req.as_bytes(), caller, now);
        // Response text, both directions.
        assert_eq!(got.to_string(), want, "{n}");
        assert_eq!(Response::parse(want.as_bytes()), Ok(got), "{n}");
        // Valid requests also re-encode canonically.
        if let Ok(r) = Request::parse(req.as_bytes()) {
            assert!(req.eq_ignore_ascii_case(&r.to_string()), "{n}");
        }
        seen += 1;
    }
    assert_eq!(seen, 14);
}
