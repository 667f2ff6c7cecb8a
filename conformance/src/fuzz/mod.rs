//! Fuzz-target bodies for the wire codecs (`spec/wire.md`), the IPC codec
//! (`spec/ipc.md`), the beacon server (`spec/beacon.md`; `beacon_server`
//! runs scripts, not one message), the crypto session table
//! (`spec/crypto.md`), the registry codec and state machine
//! (`spec/registry.md`), the stream transport (`spec/transport.md`;
//! `stream` runs operation scripts against two connections), one whole
//! node (`node`: datagrams, timeouts and application calls interleaved),
//! one whole daemon (`daemon`: IPC, UDP and registry bytes and timeouts)
//! and the built-in services (`spec/services.md`).
//!
//! Each submodule has `pub fn run(data: &[u8])`: it decodes the input and,
//! if that succeeds, re-encodes and asserts that the encoding reproduces the
//! bytes the format covers. It never panics except through those
//! assertions, so a panic is a found bug. `cargo-fuzz` targets call these,
//! and `tests/fuzz_smoke.rs` runs them over the vectors and random inputs.

pub mod addr;
pub mod beacon;
pub mod beacon_server;
pub mod daemon;
pub mod insecure;
pub mod ipc;
pub mod node;
pub mod packet;
pub mod registry;
pub mod services;
pub mod session;
pub mod stream;
pub mod tunnel;

use serde_json::Value;

/// Every byte string of a vector file (`"bytes"` or `"frame"` fields as hex, `"text"`
/// fields as UTF-8), as seed inputs for the bodies.
pub fn vector_inputs(file: &str) -> Vec<Vec<u8>> {
    crate::load(file)
        .iter()
        .flat_map(|v| {
            let hex = ["bytes", "frame"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str))
                .map(crate::unhex);
            let text = v
                .get("text")
                .and_then(Value::as_str)
                .map(|t| t.as_bytes().to_vec());
            hex.into_iter().chain(text)
        })
        .collect()
}

/// Every cargo-fuzz target in `fuzz/`, by name (each is a submodule here).
pub const TARGETS: &[&str] = &[
    "addr",
    "beacon",
    "beacon_server",
    "daemon",
    "ipc",
    "node",
    "packet",
    "services",
    "session",
    "registry",
    "stream",
    "tunnel",
];

/// The seed corpus of one target: the inputs of the vector files that
/// exercise it. Unknown targets get no seeds.
pub fn seeds_for(target: &str) -> Vec<Vec<u8>> {
    let files: &[&str] = match target {
        "addr" => &["wire_addr.json"],
        "packet" => &["wire_packet.json"],
        // Tunnel frames carry packets and beacon messages.
        "tunnel" => &["wire_tunnel.json", "wire_packet.json", "wire_beacon.json"],
        "beacon" => &["wire_beacon.json"],
        "ipc" => &["ipc.json"],
        // Services inputs carry a selector byte; the body builds them.
        "services" => return services::seeds(),
        "beacon_server" => &["wire_beacon.json"],
        // Operation scripts, not wire bytes: the body's own seeds.
        "session" => return session::seeds(),
        "node" => return node::seeds(),
        "daemon" => return daemon::seeds(),
        "registry" => &["registry.json"],
        _ => &[],
    };
    files.iter().flat_map(|f| vector_inputs(f)).collect()
}

/// Splits a script into its records `ctl ‖ len ‖ len bytes`, the format of
/// the state-machine bodies (`beacon_server`, `node`, `daemon`): a missing
/// length byte reads as 0, a short record takes what is left.
pub fn records(mut rest: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&ctl, tail) = rest.split_first()?;
        let (len, tail) = match tail.split_first() {
            Some((&len, tail)) => (usize::from(len), tail),
            None => (0, tail),
        };
        let (chunk, tail) = tail.split_at(len.min(tail.len()));
        rest = tail;
        Some((ctl, chunk))
    })
}

/// Appends one record (`chunk` cut to 255 bytes) to a script.
pub fn record(out: &mut Vec<u8>, ctl: u8, chunk: &[u8]) {
    let chunk = chunk.get(..255).unwrap_or(chunk);
    out.push(ctl);
    out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(chunk);
}

/// Mutates a script in place, as a fuzzer would: up to seven bit flips,
/// byte insertions or removals at places `rng` picks.
pub fn mutate(rng: &mut impl rand_core::RngCore, s: &mut Vec<u8>) {
    for _ in 0..(rng.next_u32() % 8) {
        let i = rng.next_u32() as usize % s.len().max(1);
        match rng.next_u32() % 3 {
            0 => {
                if let Some(b) = s.get_mut(i) {
                    *b ^= 1 << (rng.next_u32() % 8);
                }
            }
            1 => s.insert(i.min(s.len()), rng.next_u32() as u8),
            _ => {
                if i < s.len() {
                    s.remove(i);
                }
            }
        }
    }
}
