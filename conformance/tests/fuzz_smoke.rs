//! Runs every fuzz body over the wire vectors, mutations of them and seeded
//! random inputs, so stable `cargo test` exercises the fuzz targets.

use pilot_conformance::fuzz::{self, vector_inputs};
use pilot_proto::addr::Addr;
use pilot_proto::wire::WireProfile;
use pilot_proto::wire::beacon::BeaconMsg;
use pilot_proto::wire::packet::{HEADER_LEN, Packet, write_checksum};
use pilot_proto::wire::tunnel::Frame;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Random inputs per body, besides the vectors themselves.
const ROUNDS: usize = 5000;

/// Every wire vector, as seeds for all bodies (a packet is a fine input for
/// the tunnel body, and so on).
fn seeds() -> Vec<Vec<u8>> {
    let mut all = Vec::new();
    for file in [
        "wire_addr.json",
        "wire_packet.json",
        "wire_tunnel.json",
        "wire_beacon.json",
    ] {
        all.extend(vector_inputs(file));
    }
    assert!(all.len() >= 59, "vectors went missing: {}", all.len());
    all
}

/// Characters that reach every branch of the address parsers.
const ADDR_ALPHABET: &[u8] = b"0123456789abcdefABCDEFxX:.+- ";

/// One input: a mutated seed, random bytes, or random address-like text.
fn input(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let pick = |rng: &mut ChaCha8Rng, n: usize| (rng.next_u32() as usize) % n.max(1);
    match rng.next_u32() % 4 {
        0 => {
            let mut b = vec![0u8; pick(rng, 200)];
            rng.fill_bytes(&mut b);
            b
        }
        1 => address_like(rng),
        _ => {
            let mut b = seeds[pick(rng, seeds.len())].clone();
            for _ in 0..=pick(rng, 3) {
                match rng.next_u32() % 4 {
                    0 if !b.is_empty() => {
                        let i = pick(rng, b.len());
                        b[i] ^= 1 << (rng.next_u32() % 8);
                    }
                    1 => b.truncate(pick(rng, b.len() + 1)),
                    2 if !b.is_empty() => {
                        let i = pick(rng, b.len());
                        b[i] = rng.next_u32() as u8;
                    }
                    _ => b.push(rng.next_u32() as u8),
                }
            }
            if rng.next_u32() % 2 == 0 {
                fix_checksum(&mut b);
            }
            b
        }
    }
}

/// Text shaped like an address, with random slips: wrong group counts and
/// widths, odd characters, sometimes a port.
fn address_like(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut pick = |n: u32| rng.next_u32() % n;
    let random_hex = format!("{:08X}", pick(u32::MAX));
    let mut t = Vec::new();
    let net = pick(70_000);
    t.extend_from_slice(net.to_string().as_bytes());
    t.push(b':');
    let groups = if pick(4) == 0 { pick(5) } else { 3 };
    for g in 0..groups {
        if g > 0 {
            t.push(b'.');
        }
        let width = if pick(4) == 0 { pick(6) } else { 4 };
        let value = if g == 0 && pick(2) == 0 {
            format!("{net:04x}")
        } else {
            random_hex.clone()
        };
        let value = value.as_bytes();
        for i in 0..width as usize {
            let c = value.get(i).copied().unwrap_or(b'0');
            t.push(if pick(20) == 0 {
                ADDR_ALPHABET[pick(ADDR_ALPHABET.len() as u32) as usize]
            } else {
                c
            });
        }
    }
    if pick(3) == 0 {
        t.extend_from_slice(format!(":{}", pick(70_000)).as_bytes());
    }
    t
}

/// Recomputes the checksum of a packet at the start of `b` (or after a
/// `PILT` magic), so mutated packets get past the CRC check.
fn fix_checksum(b: &mut [u8]) {
    let start = usize::from(b.starts_with(b"PILT")) * 4;
    let Some(packet) = b.get_mut(start..) else {
        return;
    };
    if packet.len() < HEADER_LEN {
        return;
    }
    let end = HEADER_LEN + usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if let Some(p) = packet.get_mut(..end) {
        write_checksum(p);
    }
}

/// Runs `body` over the seeds and `ROUNDS` generated inputs, and checks
/// that enough generated inputs were `accepted` (decoded) for the
/// round-trip assertions in the body to have been exercised.
fn smoke(seed: u64, body: fn(&[u8]), accepted: fn(&[u8]) -> bool) {
    let seeds = seeds();
    for s in &seeds {
        body(s);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hits = 0;
    for _ in 0..ROUNDS {
        let data = input(&mut rng, &seeds);
        body(&data);
        hits += usize::from(accepted(&data));
    }
    assert!(
        hits >= ROUNDS / 50,
        "only {hits} of {ROUNDS} inputs decoded"
    );
}

#[test]
fn packet_body() {
    smoke(1, fuzz::packet::run, |d| {
        Packet::decode_with(d, WireProfile::Legacy).is_ok()
    });
}

#[test]
fn tunnel_body() {
    smoke(2, fuzz::tunnel::run, |d| Frame::decode(d).is_ok());
}

#[test]
fn beacon_body() {
    smoke(3, fuzz::beacon::run, |d| BeaconMsg::decode(d).is_ok());
}

#[test]
fn addr_body() {
    smoke(4, fuzz::addr::run, |d| {
        std::str::from_utf8(d).is_ok_and(|t| t.parse::<Addr>().is_ok())
    });
}
