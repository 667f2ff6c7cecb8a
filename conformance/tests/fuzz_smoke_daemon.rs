//! Runs the `daemon` fuzz body (`pilot_conformance::fuzz::daemon`) over its
//! seed scripts and over seeded random mutations of them, and checks that
//! the seeds reach the daemon's outputs: IPC replies, UDP and registry
//! messages.

use pilot_conformance::fuzz::daemon::{drive, parse, run, seeds};
use pilot_conformance::fuzz::{TARGETS, mutate, seeds_for};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// Mutated scripts to run.
const ROUNDS: usize = 200;

#[test]
fn seeds_reach_ipc_udp_and_registry_outputs() {
    assert!(TARGETS.contains(&"daemon"));
    assert_eq!(seeds_for("daemon"), seeds());
    let s = seeds();
    let (registry, steps) = parse(&s[0]);
    assert!(!registry);
    let r = drive(registry, &steps);
    assert!(r.ipc_bytes > 0, "{r:?}");
    assert!(r.transmits > 0, "the dial starts a key exchange: {r:?}");
    let (registry, steps) = parse(&s[1]);
    assert!(registry);
    let r = drive(registry, &steps);
    assert!(r.registry_msgs > 0, "{r:?}");
}

#[test]
fn mutated_scripts_never_panic() {
    let seeds = seeds();
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    for round in 0..ROUNDS {
        let mut s = seeds[round % seeds.len()].clone();
        mutate(&mut rng, &mut s);
        run(&s);
    }
    for _ in 0..ROUNDS / 4 {
        let mut s = vec![0u8; (rng.next_u32() % 400) as usize];
        rng.fill_bytes(&mut s);
        run(&s);
    }
}
