//! Known-answer tests for the registry (`spec/registry.md`): identities and
//! signatures of the reference's examples, byte-exact frames, and example
//! exchanges replayed against our state machine. Also runs the registry
//! fuzz body over the vectors and seeded random inputs.

use std::collections::HashSet;
use std::net::SocketAddr;

use pilot_conformance::fuzz::{registry as fuzz_registry, vector_inputs};
use pilot_conformance::{field, load, name, unhex};
use pilot_proto::WireProfile;
use pilot_proto::registry::auth::{self, Identity};
use pilot_proto::registry::codec::{
    Register, Request, decode_frame, decode_request, encode_request, encode_response, frame_vec,
};
use pilot_proto::registry::limits::MAX_FRAME_LEN;
use pilot_proto::registry::server::{Config, Registry};
use pilot_proto::time::UnixTime;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::Value;

const FILE: &str = "registry.json";

fn seed(v: &Value) -> [u8; 32] {
    unhex(field(v, "seed")).try_into().unwrap()
}

fn now(v: &Value) -> UnixTime {
    let secs = v.get("now_unix").and_then(Value::as_u64).unwrap();
    UnixTime::from_nanos(secs * 1_000_000_000)
}

fn profile(v: &Value) -> WireProfile {
    match field(v, "profile") {
        "legacy" => WireProfile::Legacy,
        "current" => WireProfile::Current,
        other => panic!("{}: unknown profile {other}", name(v)),
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:6000".parse().unwrap()
}

#[test]
fn vector_count_and_names() {
    let vectors = load(FILE);
    assert_eq!(vectors.len(), 15);
    let names: HashSet<&str> = vectors.iter().map(name).collect();
    assert_eq!(names.len(), vectors.len());
}

#[test]
fn identity_and_signatures() {
    let mut sigs = 0;
    for v in load(FILE) {
        if let Some(pk_hex) = v.get("public_key_hex").and_then(Value::as_str) {
            let id = Identity::from_seed(&seed(&v));
            assert_eq!(id.public_key().to_vec(), unhex(pk_hex), "{}", name(&v));
            assert_eq!(id.public_key_b64(), field(&v, "public_key"));
            assert_eq!(
                auth::decode_public_key(field(&v, "public_key")),
                Ok(id.public_key())
            );
        }
        if let Some(challenge) = v.get("challenge").and_then(Value::as_str) {
            let id = Identity::from_seed(&seed(&v));
            let sig = field(&v, "signature");
            assert_eq!(id.sign_b64(challenge.as_bytes()), sig, "{}", name(&v));
            assert_eq!(
                auth::verify(&id.public_key(), challenge.as_bytes(), sig),
                Ok(())
            );
            sigs += 1;
        }
    }
    assert_eq!(sigs, 6);
}

#[test]
fn frames_are_byte_exact() {
    let mut n = 0;
    for v in load(FILE) {
        let Some(hex) = v.get("bytes").and_then(Value::as_str) else {
            continue;
        };
        let bytes = unhex(hex);
        let text = field(&v, "text");
        let (payload, used) = decode_frame(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
        assert_eq!(
            (payload, used),
            (text.as_bytes(), bytes.len()),
            "{}",
            name(&v)
        );
        assert_eq!(frame_vec(text.as_bytes()).unwrap(), bytes);
        if v.get("direction").and_then(Value::as_str) == Some("request") {
            // Our encoder writes exactly what the reference client sends.
            let req = decode_request(payload).unwrap();
            assert_eq!(encode_request(&req).unwrap(), payload, "{}", name(&v));
        }
        n += 1;
    }
    assert_eq!(n, 6);
}

#[test]
fn example_exchanges() {
    let mut n = 0;
    for v in load(FILE) {
        let Some(request) = v.get("request").and_then(Value::as_str) else {
            continue;
        };
        let t = now(&v);
        let mut reg = Registry::new(
            Config {
                profile: profile(&v),
                ..Config::default()
            },
            t,
        );
        if v.get("setup").and_then(Value::as_str) == Some("two_private_nodes") {
            for s in [1u8, 2] {
                let r = reg.handle(
                    t,
                    peer(),
                    Request::Register(Register {
                        listen_addr: "0.0.0.0:4000".into(),
                        public_key: Identity::from_seed(&[s; 32]).public_key_b64(),
                        ..Default::default()
                    }),
                );
                assert!(r.error.is_none());
            }
        } else if name(&v) == "heartbeat_ok" {
            let r = reg.handle(
                t,
                peer(),
                Request::Register(Register {
                    listen_addr: "0.0.0.0:4000".into(),
                    public_key: Identity::from_seed(&[1; 32]).public_key_b64(),
                    ..Default::default()
                }),
            );
            assert!(r.error.is_none());
        }
        let reply = reg.handle(t, peer(), decode_request(request.as_bytes()).unwrap());
        let out = encode_response(&reply.response).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            field(&v, "text"),
            "{}",
            name(&v)
        );
        if let Some(hex) = v.get("bytes").and_then(Value::as_str) {
            assert_eq!(frame_vec(&out).unwrap(), unhex(hex), "{}", name(&v));
        }
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn replication_subscribe_is_not_served_here() {
    let v = load(FILE)
        .into_iter()
        .find(|v| name(v) == "subscribe_replication_frame")
        .unwrap();
    let bytes = unhex(field(&v, "bytes"));
    let (payload, _) = decode_frame(&bytes, MAX_FRAME_LEN).unwrap().unwrap();
    assert_eq!(
        decode_request(payload),
        Ok(Request::Unknown("subscribe_replication".into()))
    );
}

/// Printable JSON-ish bytes reach more decoder branches than raw noise.
const JSON_ALPHABET: &[u8] = b"{}[]\":,0123456789-.eEtruefalsn _abcdeghiklmnoprstuvwyz";

#[test]
fn fuzz_body_smoke() {
    let seeds = vector_inputs(FILE);
    assert!(seeds.len() >= 14);
    for s in &seeds {
        fuzz_registry::run(s);
    }
    let types: Vec<&str> = pilot_proto::registry::codec::REQUEST_TYPES.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_0e61);
    for _ in 0..3000 {
        let pick = |rng: &mut ChaCha8Rng, n: usize| (rng.next_u32() as usize) % n.max(1);
        let input: Vec<u8> = match rng.next_u32() % 4 {
            0 => {
                let mut b = vec![0u8; pick(&mut rng, 120)];
                rng.fill_bytes(&mut b);
                b
            }
            1 => (0..pick(&mut rng, 120))
                .map(|_| JSON_ALPHABET[pick(&mut rng, JSON_ALPHABET.len())])
                .collect(),
            2 => {
                // A well-formed request of a random type with random fields.
                let ty = types[pick(&mut rng, types.len())];
                let n = rng.next_u32() % 70_000;
                format!(
                    r#"{{"type":"{ty}","node_id":{n},"peer_id":{},"requester_id":1,"network_id":{},"hostname":"h{n}","tags":["a","{n}"],"public":true,"accept":true,"signature":"AAAA","public_key":"iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=","delta":-1.5}}"#,
                    n / 2,
                    n % 3
                )
                .into_bytes()
            }
            _ => {
                let mut b = seeds[pick(&mut rng, seeds.len())].clone();
                for _ in 0..=pick(&mut rng, 3) {
                    if b.is_empty() {
                        break;
                    }
                    let i = pick(&mut rng, b.len());
                    match rng.next_u32() % 3 {
                        0 => b[i] ^= 1 << (rng.next_u32() % 8),
                        1 => b.truncate(i),
                        _ => b.insert(i, JSON_ALPHABET[pick(&mut rng, JSON_ALPHABET.len())]),
                    }
                }
                b
            }
        };
        fuzz_registry::run(&input);
    }
}
