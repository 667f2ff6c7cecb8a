//! # pilot-conformance
//!
//! Known-answer test vectors for Pilot Protocol, stored as JSON files under
//! `conformance/vectors/`, and the helpers the tests in `conformance/tests/`
//! use to read them. Every vector file is a JSON object with a `"vectors"`
//! array; each entry has at least a `"name"`. Byte strings are lowercase hex
//! (spaces allowed, ignored).

pub mod fuzz;

use std::path::PathBuf;

use serde_json::Value;

/// Directory that holds the vector files.
pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Loads `vectors/<file>` and returns its `"vectors"` array.
///
/// Panics with a clear message if the file is missing or malformed: the
/// vectors are part of this repository, so that is a bug, not an input error.
pub fn load(file: &str) -> Vec<Value> {
    let path = vectors_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    match doc.get("vectors") {
        Some(Value::Array(v)) => v.clone(),
        _ => panic!("{}: no \"vectors\" array", path.display()),
    }
}

/// Decodes a hex string, ignoring ASCII white space.
pub fn unhex(s: &str) -> Vec<u8> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    hex::decode(&compact).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

/// Reads string field `key` of a vector, panicking with the vector's name if absent.
pub fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("vector {}: missing string field {key:?}", name(v)))
}

/// The `"name"` of a vector, for messages.
pub fn name(v: &Value) -> &str {
    v.get("name").and_then(Value::as_str).unwrap_or("<unnamed>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhex_ignores_spaces() {
        assert_eq!(unhex("0a 0B\n0c"), vec![0x0a, 0x0b, 0x0c]);
    }
}
