//! Fuzz-target bodies for the wire codecs (`spec/wire.md`).
//!
//! Each submodule has `pub fn run(data: &[u8])`: it decodes the input and,
//! if that succeeds, re-encodes and asserts that the encoding reproduces the
//! bytes the format covers. It never panics except through those
//! assertions, so a panic is a found bug. `cargo-fuzz` targets call these,
//! and `tests/fuzz_smoke.rs` runs them over the vectors and random inputs.

pub mod addr;
pub mod beacon;
pub mod packet;
pub mod registry;
pub mod tunnel;

use serde_json::Value;

/// Every byte string of a vector file (`"bytes"` fields as hex, `"text"`
/// fields as UTF-8), as seed inputs for the bodies.
pub fn vector_inputs(file: &str) -> Vec<Vec<u8>> {
    crate::load(file)
        .iter()
        .flat_map(|v| {
            let hex = v.get("bytes").and_then(Value::as_str).map(crate::unhex);
            let text = v
                .get("text")
                .and_then(Value::as_str)
                .map(|t| t.as_bytes().to_vec());
            hex.into_iter().chain(text)
        })
        .collect()
}
