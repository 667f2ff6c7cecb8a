//! What the simulator's test files share: a configuration from command-line
//! words, and runs of a built-in scenario that must pass.

#![allow(dead_code)] // each test file uses its own subset

use pilot_sim::config::SimConfig;
use pilot_sim::scenario::{Outcome, Registry};

/// The configuration `pilot-sim --seed 1 ARGS…` would run.
pub fn cfg(args: &[&str]) -> SimConfig {
    let mut v = vec!["pilot-sim", "--seed", "1"];
    v.extend_from_slice(args);
    SimConfig::parse_from(v).expect("valid arguments")
}

/// Runs the scenario ARGS name on every seed of `seeds`; each must pass.
pub fn run_ok(args: &[&str], seeds: std::ops::Range<u64>) -> Vec<Outcome> {
    let cfg = cfg(args);
    let reg = Registry::builtin();
    let sc = reg.get(&cfg.scenario).expect("registered");
    seeds
        .map(|seed| {
            let out = sc.run(&cfg, seed);
            assert!(out.ok(), "seed {seed} {args:?}: {:#?}", out.checks);
            out
        })
        .collect()
}
