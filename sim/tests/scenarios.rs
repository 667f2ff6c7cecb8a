//! Short runs of every built-in scenario over the protocol node.

mod support;

use pilot_sim::scenario::{Registry, check_determinism};
use support::{cfg, run_ok};

#[test]
fn datagram_clean_network_delivers_everything() {
    run_ok(&["--scenario", "datagram", "--nodes", "4"], 1..4);
}

#[test]
fn datagram_faulty_network_no_phantoms_no_duplicates() {
    run_ok(
        &[
            "--scenario",
            "datagram",
            "--nodes",
            "5",
            "--loss",
            "10",
            "--dup",
            "20",
            "--reorder",
            "10",
            "--jitter-ms",
            "4",
        ],
        1..4,
    );
}

#[test]
fn datagram_is_deterministic() {
    let cfg = cfg(&[
        "--scenario",
        "datagram",
        "--nodes",
        "3",
        "--dup",
        "10",
        "--loss",
        "5",
    ]);
    let reg = Registry::builtin();
    let out = check_determinism(reg.get("datagram").expect("registered"), &cfg, 7);
    assert!(out.ok(), "{:#?}", out.checks);
}

#[test]
fn ping_rtt_matches_path() {
    run_ok(
        &[
            "--scenario",
            "ping",
            "--nodes",
            "3",
            "--latency-ms",
            "15",
            "--jitter-ms",
            "3",
        ],
        1..4,
    );
    run_ok(
        &["--scenario", "ping", "--profile", "legacy", "--dup", "10"],
        1..3,
    );
}

#[test]
fn stream_transfer_is_exact_and_closes_cleanly() {
    run_ok(
        &["--scenario", "stream-transfer", "--bytes", "200000"],
        1..3,
    );
    run_ok(
        &[
            "--scenario",
            "stream-transfer",
            "--nodes",
            "3",
            "--bytes",
            "100000",
            "--loss",
            "5",
            "--dup",
            "2",
            "--reorder",
            "5",
            "--jitter-ms",
            "5",
        ],
        1..3,
    );
    run_ok(
        &[
            "--scenario",
            "stream-transfer",
            "--bytes",
            "100000",
            "--profile",
            "legacy",
            "--loss",
            "2",
        ],
        1..2,
    );
}

#[test]
fn rekey_after_restart_resumes_without_nonce_reuse() {
    run_ok(&["--scenario", "rekey", "--nodes", "3"], 1..3);
    run_ok(
        &[
            "--scenario",
            "rekey",
            "--nodes",
            "3",
            "--loss",
            "5",
            "--dup",
            "5",
            "--duration-ms",
            "20000",
        ],
        1..3,
    );
}

#[test]
fn tunnel_lifecycle_recovers_in_both_profiles_under_loss_and_reordering() {
    for profile in ["current", "legacy"] {
        run_ok(
            &[
                "--scenario",
                "tunnel-lifecycle",
                "--profile",
                profile,
                "--loss",
                "3",
                "--reorder",
                "10",
                "--jitter-ms",
                "5",
            ],
            1..4,
        );
    }
}

/// Short mode of the must-show sweep (`--seeds 1..200 --loss 3` in both
/// profiles, run with the release binary): 16 seeds per profile, plus seed
/// 53 of the legacy profile, which stalled before the merge with main (an
/// echo stream kept 4096 bytes in flight for 40 s after a lost ACK and the
/// client's FIN).
#[test]
fn tunnel_lifecycle_short_sweep_under_loss_in_both_profiles() {
    for profile in ["current", "legacy"] {
        run_ok(
            &[
                "--scenario",
                "tunnel-lifecycle",
                "--profile",
                profile,
                "--loss",
                "3",
            ],
            1..17,
        );
    }
    run_ok(
        &[
            "--scenario",
            "tunnel-lifecycle",
            "--profile",
            "legacy",
            "--loss",
            "3",
        ],
        53..54,
    );
}

#[test]
fn tunnel_lifecycle_is_deterministic_and_reports_every_round() {
    let cfg = cfg(&[
        "--scenario",
        "tunnel-lifecycle",
        "--profile",
        "legacy",
        "--loss",
        "3",
    ]);
    let reg = Registry::builtin();
    let sc = reg.get(&cfg.scenario).expect("registered");
    let out = check_determinism(sc, &cfg, 7);
    assert!(out.ok(), "{:#?}", out.checks);
    // 12 steps, two dials each, every one with its time.
    let rounds = out.figures["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 24, "{rounds:?}");
    assert!(rounds.iter().all(|r| r.get("ms").is_some()), "{rounds:?}");
    assert!(
        out.checks
            .iter()
            .any(|c| c.name == "stall-watchdog" && c.ok)
    );
}

/// Every attack rate class once (seed % 5 picks 10, 100, 1 000, 10 000
/// frames/s or line rate per attacker): bytes exact, goodput and chunk
/// latency as without attackers, no session drop or rekey, only the
/// trusted peer in each peer table, drops counted. `--seeds 1..100` of
/// the binary runs the full sweep.
#[test]
fn hostile_flood_leaves_the_trusted_pair_alone() {
    run_ok(&["--scenario", "hostile"], 1..6);
}

/// The attackers replay the frames they capture. Where the network
/// reorders, a replay can arrive before the delayed original, and under
/// loss it can stand in for an original that never arrives: an authentic
/// frame from the attacker's address. Moving the peer's endpoint on any
/// such frame sent the pair's traffic to the attackers (stalls of 15 s
/// until a liveness probe, and under loss both ends hijacked at once and
/// the session dead: 21 of 40 seeds failed with `--reorder 5`, 30 of 40
/// with `--loss 5`). Now only the newest frame moves it, and only when the
/// current endpoint has sent nothing authentic for `ROAM_QUIET`.
#[test]
fn hostile_replays_do_not_move_the_endpoint_under_reordering_or_loss() {
    run_ok(&["--scenario", "hostile", "--reorder", "5"], 1..8);
    let cfg = cfg(&["--scenario", "hostile", "--loss", "5"]);
    let reg = Registry::builtin();
    let sc = reg.get("hostile").expect("registered");
    for seed in 1..8 {
        let out = sc.run(&cfg, seed);
        // Under random loss one chunk may wait for a retransmission timeout
        // in the attacked run and not in the baseline, so the per-chunk
        // latency bound of `goodput` is not asserted here; the rest is.
        for name in [
            "sha256-equal",
            "no-disturbance",
            "bounded-state",
            "drops-counted",
        ] {
            assert!(
                out.checks.iter().any(|c| c.name == name && c.ok),
                "seed {seed} --loss 5: {name}: {:#?}",
                out.checks
            );
        }
    }
}

#[test]
fn hostile_is_deterministic() {
    let cfg = cfg(&["--scenario", "hostile"]);
    let reg = Registry::builtin();
    let sc = reg.get("hostile").expect("registered");
    let out = check_determinism(sc, &cfg, 3);
    assert!(out.ok(), "{:#?}", out.checks);
}

/// `network-membership` under the fault mix: trust given by an
/// invite network ends on kick and leave and comes back on rejoin, and
/// the run is deterministic.
#[test]
fn network_membership_trust_follows_under_faults() {
    let args = [
        "--scenario",
        "network-membership",
        "--nodes",
        "4",
        "--loss",
        "5",
        "--dup",
        "2",
        "--reorder",
        "5",
        "--jitter-ms",
        "5",
    ];
    run_ok(&args, 1..3);
    let reg = Registry::builtin();
    let out = check_determinism(
        reg.get("network-membership").expect("registered"),
        &cfg(&args),
        3,
    );
    assert!(out.ok(), "{:#?}", out.checks);
}
