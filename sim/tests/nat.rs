//! NAT traversal in whole networks (`spec/beacon.md` §8): short runs of
//! `nat-matrix`, `nat-rebind`, `nat-idle` and `nat-upgrade` under loss,
//! duplication and reordering, their determinism, and the expectation
//! table the matrix checks against.

mod support;

use pilot_sim::config::SimConfig;
use pilot_sim::net::NatKind;
use pilot_sim::scenario::{Registry, check_determinism};

const FAULTS: &[&str] = &["--loss", "1", "--dup", "1", "--reorder", "1"];

fn with_faults<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(FAULTS);
    v
}

fn cfg(args: &[&str]) -> SimConfig {
    support::cfg(&with_faults(args))
}

fn run_ok(args: &[&str], seeds: std::ops::Range<u64>) -> Vec<pilot_sim::scenario::Outcome> {
    support::run_ok(&with_faults(args), seeds)
}

#[test]
fn expectation_table_matches_rfc4787_reasoning() {
    use NatKind::*;
    // Both endpoint-independent mappings: always direct.
    for a in [None, FullCone, Restricted, PortRestricted] {
        for b in [None, FullCone, Restricted, PortRestricted] {
            assert!(NatKind::direct_expected(a, b), "{a:?}/{b:?}");
        }
    }
    // A symmetric side needs a filter that admits its unpredictable port.
    for (other, direct) in [
        (None, true),
        (FullCone, true),
        (Restricted, true),
        (PortRestricted, false),
        (Symmetric, false),
    ] {
        assert_eq!(NatKind::direct_expected(Symmetric, other), direct);
        assert_eq!(NatKind::direct_expected(other, Symmetric), direct);
    }
}

#[test]
fn nat_matrix_every_pair_connects_on_the_expected_path() {
    for out in run_ok(&["--scenario", "nat-matrix", "--bytes", "262144"], 1..3) {
        let pairs = out.figures["pairs"].as_array().unwrap().clone();
        assert_eq!(pairs.len(), 15);
        let relayed = pairs.iter().filter(|p| p["path"] == "relay").count();
        assert_eq!(
            relayed, 2,
            "ei-apdf/symmetric and symmetric/symmetric: {pairs:?}"
        );
        for p in &pairs {
            assert_eq!(p["path"], p["expected"], "{p}");
            assert_eq!(p["bytes"], 262144, "{p}");
        }
    }
}

#[test]
fn rebind_mid_transfer_keeps_the_stream() {
    run_ok(&["--scenario", "nat-rebind", "--bytes", "1048576"], 1..3);
}

#[test]
fn idle_bindings_with_and_without_keepalives() {
    run_ok(&["--scenario", "nat-idle"], 1..3);
}

#[test]
fn relay_to_direct_upgrade_mid_transfer() {
    run_ok(&["--scenario", "nat-upgrade", "--bytes", "1048576"], 1..3);
}

#[test]
fn nat_scenarios_are_deterministic() {
    let reg = Registry::builtin();
    for (name, bytes) in [("nat-matrix", "65536"), ("nat-upgrade", "262144")] {
        let c = cfg(&["--scenario", name, "--bytes", bytes]);
        let out = check_determinism(reg.get(name).unwrap(), &c, 7);
        assert!(out.ok(), "{name}: {:#?}", out.checks);
    }
}

#[test]
fn forged_key_exchange_flood_from_the_peers_ip_does_not_delay_it() {
    // Every rate class (seed % 3); without the fix in `Paths::handle_udp`
    // the first echo after the restart took 3.1 s on every seed.
    for out in run_ok(&["--scenario", "nat-kx-flood"], 1..4) {
        let ms = out.figures["first_echo_ms"].as_f64().unwrap();
        assert!(ms <= 1500.0, "{ms} ms");
    }
}
