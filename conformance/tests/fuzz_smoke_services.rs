//! Runs the services fuzz body over the services vectors, mutations of
//! them and seeded random inputs for every selector.

use pilot_conformance::fuzz::services::{run, seeds};
use pilot_conformance::fuzz::{TARGETS, seeds_for};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// Text fragments that reach the parsers of the text and JSON codecs.
const WORDS: &[&str] = &[
    "QUERY",
    "REGISTER",
    "A",
    "N",
    "S",
    "OK",
    "ERR",
    "0:0000.0000.0005",
    "80",
    " ",
    "\n",
    "{",
    "}",
    "\"type\":",
    "\"handshake_request\"",
    "\"node_id\":",
    "1",
    ",",
    "\"trusted\":",
    "null",
    "[",
    "]",
    "2026-02-27T15:03:44+02:00",
    ".",
    "..",
    "/",
    "Z",
];

#[test]
fn services_target_is_registered_with_seeds() {
    assert!(TARGETS.contains(&"services"));
    let s = seeds_for("services");
    assert_eq!(s, seeds());
    // Every selector 0..=7 has at least one seed.
    for sel in 0u8..8 {
        assert!(s.iter().any(|x| x[0] == sel), "no seed for selector {sel}");
    }
}

#[test]
fn fuzz_body_survives_vectors_random_inputs_and_mutations() {
    let seeds = seeds();
    assert!(seeds.len() >= 40, "{}", seeds.len());
    for s in &seeds {
        run(s);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x5e41_1ce5);
    for _ in 0..6000 {
        let sel = below(&mut rng, 8) as u8;
        let input = match below(&mut rng, 4) {
            0 => {
                let mut v = vec![sel; 1 + below(&mut rng, 80)];
                rng.fill_bytes(&mut v[1..]);
                v
            }
            1 => {
                let mut v = vec![sel];
                for _ in 0..below(&mut rng, 12) {
                    v.extend_from_slice(WORDS[below(&mut rng, WORDS.len())].as_bytes());
                }
                v
            }
            2 => {
                let mut v = seeds[below(&mut rng, seeds.len())].clone();
                for _ in 0..=below(&mut rng, 3) {
                    match below(&mut rng, 4) {
                        0 if v.len() > 1 => {
                            let i = 1 + below(&mut rng, v.len() - 1);
                            v[i] ^= 1 << below(&mut rng, 8);
                        }
                        1 => v.truncate(1 + below(&mut rng, v.len())),
                        2 if v.len() > 1 => {
                            let i = 1 + below(&mut rng, v.len() - 1);
                            v[i] = rng.next_u32() as u8;
                        }
                        _ => v.push(rng.next_u32() as u8),
                    }
                }
                v
            }
            _ => {
                // Concatenated seeds of one selector (several frames per stream).
                let same: Vec<&Vec<u8>> = seeds.iter().filter(|s| s[0] == sel).collect();
                let mut v = vec![sel];
                for _ in 0..=below(&mut rng, 4) {
                    if let Some(s) = same.get(below(&mut rng, same.len())) {
                        v.extend_from_slice(&s[1..]);
                    }
                }
                v
            }
        };
        run(&input);
    }
}
