//! Runs the stream fuzz body (two connections over a scripted hostile
//! network, then healing) over seeded random operation scripts, so stable
//! `cargo test` exercises it.

use pilot_conformance::fuzz::stream;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

#[test]
fn stream_body_survives_random_scripts() {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_57ea);
    // An empty script: dial, heal, close.
    stream::run(&[]);
    for round in 0..1500 {
        let mut data = vec![0u8; (rng.next_u32() % 600) as usize];
        rng.fill_bytes(&mut data);
        // Bias some scripts towards writes and deliveries so data flows.
        if round % 3 == 0 {
            for chunk in data.chunks_mut(4) {
                chunk[0] %= 4;
            }
        }
        stream::run(&data);
    }
}
