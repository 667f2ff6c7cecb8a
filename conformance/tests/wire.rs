//! Known-answer tests for the wire codecs (`spec/wire.md`): every vector of
//! `vectors/wire_*.json` is checked in both directions.

use std::collections::HashSet;
use std::net::SocketAddr;

use pilot_conformance::{field, load, name, unhex};
use pilot_proto::addr::{Addr, PilotSockAddr};
use pilot_proto::wire::WireProfile;
use pilot_proto::wire::beacon::{BeaconMsg, NodeIds};
use pilot_proto::wire::packet::{Flags, Header, Packet, Protocol, checksum};
use pilot_proto::wire::tunnel::{Frame, pila_signed_message};
use serde_json::Value;

/// Number of vectors each file must hold, so none silently disappear.
const COUNTS: [(&str, usize); 4] = [
    ("wire_addr.json", 15),
    ("wire_packet.json", 18),
    ("wire_tunnel.json", 14),
    ("wire_beacon.json", 13),
];

/// The variant name of an error's `Debug` form (`NetworkMismatch { .. }`
/// → `NetworkMismatch`).
fn variant<E: std::fmt::Debug>(e: &E) -> String {
    format!("{e:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("vector {}: missing number {key:?}", name(v)))
}

fn bytes(v: &Value, key: &str) -> Vec<u8> {
    unhex(field(v, key))
}

fn arr<const N: usize>(v: &Value, key: &str) -> [u8; N] {
    bytes(v, key).try_into().unwrap()
}

fn addr(v: &Value, key: &str) -> Addr {
    field(v, key).parse().unwrap()
}

#[test]
fn vector_counts() {
    let mut total = 0;
    for (file, want) in COUNTS {
        let vectors = load(file);
        assert_eq!(vectors.len(), want, "{file}");
        let names: HashSet<&str> = vectors.iter().map(name).collect();
        assert_eq!(names.len(), vectors.len(), "{file}: duplicate names");
        total += vectors.len();
    }
    assert_eq!(total, 60);
}

#[test]
fn crc_of_34_zero_bytes() {
    assert_eq!(checksum(&[0u8; 34]), 0x4171_6c2a);
}

#[test]
fn addresses() {
    for v in load("wire_addr.json") {
        let text = field(&v, "text");
        let n = name(&v);
        match (field(&v, "kind"), v.get("error")) {
            ("addr", None) => {
                let a: Addr = text.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(a.network, num(&v, "network") as u16, "{n}");
                assert_eq!(a.node, num(&v, "node") as u32, "{n}");
                assert_eq!(a.to_bytes().as_slice(), bytes(&v, "bytes"), "{n}");
                assert_eq!(Addr::from_bytes(&bytes(&v, "bytes")), Ok(a), "{n}");
                assert_eq!(a.to_string(), field(&v, "canonical"), "{n}");
            }
            ("sockaddr", None) => {
                let s: PilotSockAddr = text.parse().unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(s.addr.to_bytes().as_slice(), bytes(&v, "bytes"), "{n}");
                assert_eq!(s.port, num(&v, "port") as u16, "{n}");
                assert_eq!(s.to_string(), field(&v, "canonical"), "{n}");
            }
            ("addr", Some(_)) => {
                let e = text.parse::<Addr>().expect_err(n);
                assert_eq!(variant(&e), field(&v, "error"), "{n}");
            }
            ("sockaddr", Some(_)) => {
                let e = text.parse::<PilotSockAddr>().expect_err(n);
                assert_eq!(variant(&e), field(&v, "error"), "{n}");
            }
            (k, _) => panic!("{n}: unknown kind {k}"),
        }
    }
}

fn header_of(v: &Value) -> Header {
    Header {
        version: num(v, "version") as u8,
        flags: Flags::from_bits(num(v, "flags") as u8).unwrap(),
        protocol: Protocol(num(v, "protocol") as u8),
        payload_len: (field(v, "payload").len() / 2) as u16,
        src: addr(v, "src"),
        dst: addr(v, "dst"),
        src_port: num(v, "src_port") as u16,
        dst_port: num(v, "dst_port") as u16,
        seq: num(v, "seq") as u32,
        ack: num(v, "ack") as u32,
        window: num(v, "window") as u16,
    }
}

#[test]
fn packets() {
    let vectors = load("wire_packet.json");
    for v in &vectors {
        let n = name(v);
        let wire = bytes(v, "bytes");
        match field(v, "kind") {
            "packet" => {
                let payload = bytes(v, "payload");
                let want = Packet::new(header_of(v), &payload).unwrap();
                let got = Packet::decode(&wire).unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(got, want, "{n}");
                assert_eq!(got.header.payload_len as usize, payload.len(), "{n}");
                let mut out = vec![0u8; want.encoded_len()];
                assert_eq!(want.encode(&mut out), Ok(wire.len()), "{n}");
                assert_eq!(out, wire, "{n}");
                assert_eq!(
                    checksum(&wire).to_be_bytes().as_slice(),
                    bytes(v, "checksum"),
                    "{n}"
                );
                assert_eq!(Packet::decode_with(&wire, WireProfile::Legacy), Ok(want));
            }
            "decode" => {
                if let Some(other) = v.get("decodes_as").and_then(Value::as_str) {
                    let base = vectors.iter().find(|w| name(w) == other).unwrap();
                    let base_bytes = bytes(base, "bytes");
                    let want = Packet::decode(&base_bytes).unwrap();
                    assert_eq!(Packet::decode(&wire), Ok(want), "{n}");
                    continue;
                }
                let e = Packet::decode(&wire).expect_err(n);
                assert_eq!(variant(&e), field(v, "error"), "{n}");
                let legacy = Packet::decode_with(&wire, WireProfile::Legacy);
                let legacy_ok = v.get("legacy_decodes").and_then(Value::as_bool);
                assert_eq!(legacy.is_ok(), legacy_ok == Some(true), "{n}: {legacy:?}");
            }
            k => panic!("{n}: unknown kind {k}"),
        }
    }
}

fn encode_frame(f: &Frame<'_>) -> Vec<u8> {
    let mut out = vec![0u8; f.encoded_len()];
    assert_eq!(f.encode(&mut out), Ok(out.len()));
    out
}

#[test]
fn tunnel_frames() {
    for v in load("wire_tunnel.json") {
        let n = name(&v);
        let wire = bytes(&v, "bytes");
        let packet;
        let sealed;
        let want = match field(&v, "kind") {
            "pilt" => {
                packet = bytes(&v, "packet");
                Frame::Pilt { packet: &packet }
            }
            "pils" => {
                sealed = bytes(&v, "sealed");
                Frame::Pils {
                    sender: num(&v, "sender") as u32,
                    nonce: arr(&v, "nonce"),
                    sealed: &sealed,
                }
            }
            "pilk" => Frame::Pilk {
                sender: num(&v, "sender") as u32,
                x25519: arr(&v, "x25519"),
            },
            "pila" => {
                let sender = num(&v, "sender") as u32;
                let x25519 = arr(&v, "x25519");
                assert_eq!(
                    pila_signed_message(sender, &x25519).as_slice(),
                    bytes(&v, "signed_message"),
                    "{n}"
                );
                Frame::Pila {
                    sender,
                    x25519,
                    ed25519: arr(&v, "ed25519"),
                    signature: arr(&v, "signature"),
                }
            }
            "pilp" => Frame::Pilp,
            "beacon" => {
                assert!(matches!(Frame::decode(&wire), Ok(Frame::Beacon(_))), "{n}");
                continue;
            }
            "prefix" => {
                let f = Frame::decode(&wire).unwrap_or_else(|e| panic!("{n}: {e}"));
                assert_eq!(encode_frame(&f), bytes(&v, "covered"), "{n}");
                continue;
            }
            "error" => {
                let e = Frame::decode(&wire).expect_err(n);
                assert_eq!(variant(&e), field(&v, "error"), "{n}");
                continue;
            }
            k => panic!("{n}: unknown kind {k}"),
        };
        assert_eq!(Frame::decode(&wire), Ok(want), "{n}");
        assert_eq!(encode_frame(&want), wire, "{n}");
        if let Frame::Pilt { packet } = want {
            assert!(Packet::decode(packet).is_ok(), "{n}");
        }
    }
}

#[test]
fn beacon_messages() {
    for v in load("wire_beacon.json") {
        let n = name(&v);
        let wire = bytes(&v, "bytes");
        if v.get("error").is_some() {
            let e = BeaconMsg::decode(&wire).expect_err(n);
            assert_eq!(variant(&e), field(&v, "error"), "{n}");
            continue;
        }
        let endpoint = || field(&v, "endpoint").parse::<SocketAddr>().unwrap();
        let inner = v.get("inner").map(|_| bytes(&v, "inner"));
        let inner = inner.as_deref().unwrap_or_default();
        let ids: Vec<u8> = v
            .get("nodes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .flat_map(|x| (x.as_u64().unwrap() as u32).to_be_bytes())
                    .collect()
            })
            .unwrap_or_default();
        let want = match field(&v, "type") {
            "discover" => BeaconMsg::Discover {
                node: num(&v, "node") as u32,
                ed25519: None,
            },
            "discover_reply" => BeaconMsg::DiscoverReply {
                endpoint: endpoint(),
            },
            "punch_request" => BeaconMsg::PunchRequest {
                requester: num(&v, "requester") as u32,
                target: num(&v, "target") as u32,
                grant: None,
            },
            "punch_command" => BeaconMsg::PunchCommand {
                endpoint: endpoint(),
            },
            "relay" => BeaconMsg::Relay {
                sender: num(&v, "sender") as u32,
                destination: num(&v, "destination") as u32,
                inner,
            },
            "relay_deliver" => BeaconMsg::RelayDeliver {
                source: num(&v, "source") as u32,
                inner,
            },
            "sync" => BeaconMsg::Sync {
                beacon_id: num(&v, "beacon_id") as u32,
                nodes: NodeIds::from_be_bytes(&ids).unwrap(),
            },
            "notify" => BeaconMsg::Notify {
                kind: num(&v, "kind_byte") as u8,
            },
            t => panic!("{n}: unknown type {t}"),
        };
        assert_eq!(BeaconMsg::decode(&wire), Ok(want), "{n}");
        let mut out = vec![0u8; want.encoded_len()];
        assert_eq!(want.encode(&mut out), Ok(wire.len()), "{n}");
        assert_eq!(out, wire, "{n}");
        assert_eq!(Frame::decode(&wire), Ok(Frame::Beacon(want)), "{n}");
        // A relayed inner frame is itself a tunnel frame.
        if !inner.is_empty() {
            assert!(Frame::decode(inner).is_ok(), "{n}");
        }
    }
}
