//! Runs the IPC fuzz body over the vectors, seeded random inputs and
//! mutations of the vectors (bit flips, truncation, concatenation).

use pilot_conformance::fuzz::ipc::run;
use pilot_conformance::{field, load, unhex};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

fn vector_frames() -> Vec<Vec<u8>> {
    load("ipc.json")
        .iter()
        .map(|v| unhex(field(v, "frame")))
        .collect()
}

fn below(rng: &mut ChaCha8Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

#[test]
fn fuzz_body_survives_vectors_random_inputs_and_mutations() {
    let frames = vector_frames();
    assert!(frames.len() > 50);
    for f in &frames {
        run(f);
    }
    let whole: Vec<u8> = frames.concat();
    run(&whole);

    let mut rng = ChaCha8Rng::seed_from_u64(0x1bc_5eed);
    let mut runs = 0usize;
    for _ in 0..5000 {
        let input = match below(&mut rng, 5) {
            // Pure noise (mostly oversized prefixes).
            0 => {
                let mut v = vec![0u8; below(&mut rng, 64)];
                rng.fill_bytes(&mut v);
                v
            }
            // Small, plausible frames with random bodies.
            1 => {
                let mut v = Vec::new();
                for _ in 0..=below(&mut rng, 4) {
                    let mut body = vec![0u8; below(&mut rng, 24)];
                    rng.fill_bytes(&mut body);
                    if let Some(c) = body.first_mut() {
                        *c = (below(&mut rng, 0x40)) as u8;
                    }
                    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    v.extend_from_slice(&body);
                }
                v
            }
            // Bit flips of a vector.
            2 => {
                let mut v = frames[below(&mut rng, frames.len())].clone();
                for _ in 0..=below(&mut rng, 3) {
                    let i = below(&mut rng, v.len());
                    v[i] ^= 1 << below(&mut rng, 8);
                }
                v
            }
            // Truncation of a vector.
            3 => {
                let v = &frames[below(&mut rng, frames.len())];
                v[..below(&mut rng, v.len())].to_vec()
            }
            // Concatenation of vectors, possibly cut.
            _ => {
                let mut v = Vec::new();
                for _ in 0..=below(&mut rng, 5) {
                    v.extend_from_slice(&frames[below(&mut rng, frames.len())]);
                }
                let keep = v.len() - below(&mut rng, 4).min(v.len());
                v.truncate(keep);
                v
            }
        };
        run(&input);
        runs += 1;
    }
    assert_eq!(runs, 5000);
}
