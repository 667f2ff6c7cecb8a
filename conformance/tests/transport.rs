//! Known-answer tests for the stream transport (`spec/transport.md`).

use pilot_conformance::{field, load, name, unhex, vectors_dir};
use pilot_proto::stream::sack::{self, SackBlock, SackDecodeError};
use serde_json::Value;

fn blocks_of(v: &Value) -> Vec<SackBlock> {
    v.get("blocks")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("vector {}: no blocks", name(v)))
        .iter()
        .map(|pair| {
            let n = |i: usize| pair[i].as_u64().expect("block edge") as u32;
            SackBlock::new(n(0), n(1))
        })
        .collect()
}

#[test]
fn sack_vectors_round_trip() {
    let vectors = load("transport_sack.json");
    assert!(!vectors.is_empty());
    for v in &vectors {
        let payload = unhex(field(v, "payload"));
        let blocks = blocks_of(v);
        let decoded = sack::decode(&payload).unwrap_or_else(|e| panic!("{}: {e}", name(v)));
        assert_eq!(decoded.as_slice(), blocks.as_slice(), "{}", name(v));
        let mut out = [0u8; 64];
        let n = sack::encode(&blocks, &mut out).expect("encode");
        assert_eq!(&out[..n], payload.as_slice(), "{}", name(v));
    }
}

#[test]
fn sack_invalid_payloads_are_not_sack() {
    let text = std::fs::read_to_string(vectors_dir().join("transport_sack.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let invalid = doc["invalid"].as_array().expect("invalid array");
    assert!(!invalid.is_empty());
    for v in invalid {
        let payload = unhex(field(v, "payload"));
        let err = sack::decode(&payload).expect_err(name(v));
        let kind = match err {
            SackDecodeError::TooShort => "TooShort",
            SackDecodeError::BadMagic => "BadMagic",
            SackDecodeError::BadCount(_) => "BadCount",
            SackDecodeError::Truncated { .. } => "Truncated",
        };
        assert_eq!(kind, field(v, "error"), "{}", name(v));
    }
}
