//! Runs the beacon-server fuzz body over a few thousand seeded scripts:
//! structured ones (discovers, punches, relays, syncs between a handful of
//! node IDs and sources, time jumps), mutated exchange vectors, and plain
//! random bytes. Checks that together they reach the interesting paths.

use pilot_conformance::fuzz::beacon_server::run_with_stats;
use pilot_conformance::{load, unhex};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde_json::Value;

/// Scripts to run.
const ROUNDS: usize = 3000;

/// Every input datagram of the exchange vectors.
fn vector_datagrams() -> Vec<Vec<u8>> {
    load("beacon_exchanges.json")
        .iter()
        .flat_map(|v| v["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.get("in").and_then(Value::as_str).map(unhex))
        .collect()
}

/// One well-formed beacon message between small node IDs.
fn message(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut node = || (rng.next_u32() % 10).to_be_bytes();
    let (a, b) = (node(), node());
    let mut m = Vec::new();
    match rng.next_u32() % 6 {
        0 => m.push(0x01),
        1 => m.push(0x08),
        2 => m.push(0x03),
        3 | 4 => m.push(0x05),
        _ => {
            m.extend_from_slice(&[0x07, 0, 0, 0, 2, 0, 2]);
            m.extend_from_slice(&a);
            m.extend_from_slice(&b);
            return m;
        }
    }
    m.extend_from_slice(&a);
    if m[0] == 0x03 || m[0] == 0x05 {
        m.extend_from_slice(&b);
    }
    if m[0] == 0x05 {
        m.extend_from_slice(b"PILS0123456789");
    }
    m
}

/// One script of records `ctl ‖ len ‖ bytes`.
fn script(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.next_u32() % 8 == 0 {
        out.resize((rng.next_u32() % 300) as usize, 0);
        rng.fill_bytes(&mut out);
        return out;
    }
    for _ in 0..1 + rng.next_u32() % 60 {
        let mut body = match rng.next_u32() % 4 {
            0 => seeds[(rng.next_u32() as usize) % seeds.len()].clone(),
            _ => message(rng),
        };
        if rng.next_u32() % 10 == 0 && !body.is_empty() {
            let i = (rng.next_u32() as usize) % body.len();
            body[i] ^= 1 << (rng.next_u32() % 8);
        }
        body.truncate(255);
        // Mostly small time steps, sometimes a jump; sometimes a timeout.
        let dt = match rng.next_u32() % 10 {
            0 => 0xf0,
            1..=3 => 0x10,
            _ => 0,
        };
        let tick = if rng.next_u32() % 8 == 0 { 8 } else { 0 };
        out.push(dt | tick | (rng.next_u32() % 8) as u8);
        out.push(body.len() as u8);
        out.extend_from_slice(&body);
    }
    out
}

#[test]
fn beacon_server_body() {
    let seeds = vector_datagrams();
    assert!(seeds.len() >= 15, "vectors went missing");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut total = pilot_proto::beacon::server::ServerStats::default();
    for _ in 0..ROUNDS {
        let s = run_with_stats(&script(&mut rng, &seeds));
        total.delivered += s.delivered;
        total.forwarded += s.forwarded;
        total.rate_limited += s.rate_limited;
        total.table_full += s.table_full;
        total.malformed += s.malformed;
        total.unknown_destination += s.unknown_destination;
    }
    for (what, n) in [
        ("delivered", total.delivered),
        ("forwarded", total.forwarded),
        ("rate_limited", total.rate_limited),
        ("table_full", total.table_full),
        ("malformed", total.malformed),
        ("unknown_destination", total.unknown_destination),
    ] {
        assert!(n > 0, "no script reached {what}");
    }
}
