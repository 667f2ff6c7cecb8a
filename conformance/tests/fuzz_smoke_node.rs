//! Runs the `node` fuzz body (`pilot_conformance::fuzz::node`) over its seed
//! scripts and over seeded random mutations of them, and checks that the
//! scripts reach the deep paths: tunnel sessions, connected streams and
//! stream data read by the application.

use pilot_conformance::fuzz::node::{Reach, run_with_reach, seeds};
use pilot_conformance::fuzz::{TARGETS, mutate, seeds_for};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Mutated scripts to run (each runs two whole nodes with real crypto).
const ROUNDS: usize = 150;

#[test]
fn honest_seed_reaches_sessions_streams_and_data() {
    assert!(TARGETS.contains(&"node"));
    assert_eq!(seeds_for("node"), seeds());
    let honest = run_with_reach(&seeds()[0]);
    assert!(honest.sessions >= 2, "{honest:?}");
    assert!(honest.connected >= 1, "{honest:?}");
    assert_eq!(honest.bytes_read, 5, "{honest:?}");
}

#[test]
fn mutated_scripts_never_panic_and_stay_deep() {
    let seeds = seeds();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut total = Reach::default();
    for round in 0..ROUNDS {
        let mut s = seeds[round % seeds.len()].clone();
        mutate(&mut rng, &mut s);
        total.add(run_with_reach(&s));
    }
    // Random bytes too.
    for _ in 0..ROUNDS / 3 {
        let mut s = vec![0u8; (rng.next_u32() % 400) as usize];
        rng.fill_bytes(&mut s);
        total.add(run_with_reach(&s));
    }
    assert!(
        total.sessions > 0 && total.connected > 0 && total.bytes_read > 0,
        "{total:?}"
    );
}
