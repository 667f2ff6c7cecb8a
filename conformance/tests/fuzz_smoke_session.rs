//! Runs the session-table fuzz body over hand-written seeds and a few
//! thousand seeded random inputs, so `cargo test` exercises it.

use pilot_conformance::fuzz::session::{run, run_reach, seeds};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

#[test]
fn seed_corpus() {
    for s in &seeds() {
        run(s);
    }
}

#[test]
fn random_inputs() {
    let mut rng = ChaCha20Rng::seed_from_u64(0x5e55_1011);
    let (mut installs, mut opened, mut dropped) = (0, 0, 0);
    for _ in 0..3000 {
        let len = (rng.next_u32() % 2048) as usize;
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let r = run_reach(&data);
        installs += r.installs;
        opened += r.opened;
        dropped += r.dropped;
    }
    println!("installs {installs} opened {opened} dropped {dropped}");
    // The no-security provider must let random inputs reach deep states.
    assert!(installs > 100, "installs {installs}");
    assert!(opened > 100, "opened {opened}");
    assert!(dropped > 0, "dropped {dropped}");
}
