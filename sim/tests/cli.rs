//! The command-line contract, exercised through the library with TEST-ONLY
//! scenarios built on the toy node (the built-in registry is empty until
//! the protocol node exists), plus the real binary for usage errors.

mod toy;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pilot_proto::time::Instant;
use pilot_sim::check::{CheckResult, Checker, RunSummary};
use pilot_sim::cli::{self, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use pilot_sim::config::SimConfig;
use pilot_sim::scenario::{Outcome, Registry, Scenario};
use pilot_sim::{NodeId, Seed, Sim, node_addr};
use serde_json::Value;
use toy::{Ev, Toy};

/// Counts datagrams that crossed the configured partition while it was up.
struct PartitionCheck {
    window: Option<(Instant, Instant)>,
    half: usize,
    n: usize,
    crossed: u64,
}

impl Checker<Ev> for PartitionCheck {
    fn name(&self) -> &str {
        "partition-respected"
    }
    fn on_event(&mut self, at: Instant, node: NodeId, ev: &Ev) {
        let Ev::Got { from, .. } = ev;
        let Some((s, e)) = self.window else { return };
        let from_idx = (0..self.n).find(|&i| node_addr(i) == *from).unwrap();
        if at >= s && at < e && (from_idx < self.half) != (node.0 < self.half) {
            self.crossed += 1;
        }
    }
    fn finish(&mut self, _: &RunSummary) -> CheckResult {
        CheckResult::new(
            "partition-respected",
            self.crossed == 0,
            format!("{} crossed", self.crossed),
        )
    }
}

/// Full mesh of toy nodes sending a round every 10 ms for the whole run.
struct ToyMesh {
    /// Mixed into every node's start time when set, to break determinism.
    jitter_from: Option<&'static AtomicU64>,
    /// Seeds for which the scenario reports a failing check.
    fail_if: fn(u64) -> bool,
}

impl Scenario for ToyMesh {
    fn name(&self) -> &'static str {
        if self.jitter_from.is_some() {
            "toy-nondet"
        } else {
            "toy-mesh"
        }
    }
    fn about(&self) -> &'static str {
        "test-only toy mesh"
    }
    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let addrs: Vec<_> = (0..cfg.nodes).map(node_addr).collect();
        let mut sim = Sim::new(Seed::new(seed), cfg.faults(Seed::new(seed), &addrs));
        let half = cfg.nodes.div_ceil(2);
        sim.add_checker(Box::new(PartitionCheck {
            window: cfg
                .partition_ms
                .map(|(a, b)| (Instant::from_millis(a), Instant::from_millis(b))),
            half,
            n: cfg.nodes,
            crossed: 0,
        }));
        let rounds = cfg.duration_ms / 10;
        for i in 0..cfg.nodes {
            let peers = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
            let mut start = i as u64;
            if let Some(c) = self.jitter_from {
                start += c.fetch_add(1, Ordering::Relaxed) % 3;
            }
            let mut t = Toy::new(
                peers,
                Instant::from_millis(start),
                Duration::from_millis(10),
                rounds,
            );
            t.size = 100;
            sim.add_node(addrs[i], t).unwrap();
        }
        let r = sim.run_until(cfg.deadline() + Duration::from_secs(1), |_, _, _| Ok(()));
        let mut out = Outcome::from_sim(&mut sim, r);
        let mut uniq = HashSet::new();
        for i in 0..cfg.nodes {
            for &(_, from, seq) in &sim.node(NodeId(i)).unwrap().received {
                uniq.insert((i, from, seq));
            }
        }
        out.figures
            .insert("unique_received".into(), uniq.len().into());
        if (self.fail_if)(seed) {
            out.checks
                .push(CheckResult::new("flaky", false, "fails on purpose"));
        }
        out
    }
}

static NONDET: AtomicU64 = AtomicU64::new(0);

fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register(Box::new(ToyMesh {
        jitter_from: None,
        fail_if: |s| s % 3 == 0 && s >= 100,
    }));
    r.register(Box::new(ToyMesh {
        jitter_from: Some(&NONDET),
        fail_if: |_| false,
    }));
    r
}

fn run(args: &str) -> (i32, String, String) {
    let cfg = SimConfig::parse_from(format!("pilot-sim {args}").split_whitespace()).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(&cfg, &registry(), &mut out, &mut err).unwrap();
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn figure(v: &Value, path: &[&str]) -> f64 {
    let mut x = &v["figures"];
    for p in path {
        x = &x[*p];
    }
    x.as_f64().unwrap()
}

#[test]
fn json_line_has_the_contract_fields() {
    let (code, out, err) = run("--scenario toy-mesh --seed 4 --duration-ms 200 --json");
    assert_eq!(code, EXIT_OK, "{err}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "no summary without --seeds");
    let v = &lines[0];
    assert_eq!(v["scenario"], "toy-mesh");
    assert_eq!(v["seed"], 4);
    assert_eq!(v["ok"], true);
    assert_eq!(v["trace_hash"].as_str().unwrap().len(), 64);
    assert_eq!(v["virtual_ms"], 1200.0);
    assert!(v["wall_ms"].as_f64().is_some());
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["engine", "conservation", "partition-respected"]);
    assert!(v["checks"][0]["detail"].is_string());
    assert_eq!(figure(v, &["datagrams_sent"]), 40.0);
    assert_eq!(figure(v, &["datagrams_delivered"]), 40.0);
    assert_eq!(v["figures"]["fault_rules"], serde_json::json!(["latency"]));
    assert!(v.get("repro").is_none());
}

#[test]
fn seed_range_reports_each_seed_and_a_summary_with_failures() {
    let (code, out, err) =
        run("--scenario toy-mesh --seeds 98..=102 --duration-ms 50 --loss 5 --jitter-ms 5 --json");
    assert_eq!(code, EXIT_FAILED);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6);
    let seeds: Vec<u64> = lines[..5]
        .iter()
        .map(|v| v["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, [98, 99, 100, 101, 102]);
    assert_eq!(lines[5]["seeds"], 5);
    assert_eq!(lines[5]["failed"], serde_json::json!([102]));
    let bad = &lines[4];
    assert_eq!(bad["ok"], false);
    let repro = "pilot-sim --scenario toy-mesh --seed 102 --loss 5 --jitter-ms 5 --duration-ms 50";
    assert_eq!(bad["repro"], repro);
    assert!(err.contains("seed 102") && err.contains(repro), "{err}");
    // With jitter, delivery times depend on the seed, so the hashes differ.
    let hashes: HashSet<&str> = lines[..5]
        .iter()
        .map(|v| v["trace_hash"].as_str().unwrap())
        .collect();
    assert_eq!(hashes.len(), 5);
}

#[test]
fn same_seed_same_hash_and_determinism_check_passes() {
    let a = run("--scenario toy-mesh --seed 7 --loss 10 --jitter-ms 5 --dup 3 --json").1;
    let b = run("--scenario toy-mesh --seed 7 --loss 10 --jitter-ms 5 --dup 3 --json").1;
    let (ha, hb) = (
        &json_lines(&a)[0]["trace_hash"],
        &json_lines(&b)[0]["trace_hash"],
    );
    assert_eq!(ha, hb);
    let (code, out, _) =
        run("--scenario toy-mesh --seed 7 --loss 10 --jitter-ms 5 --check-determinism --json");
    assert_eq!(code, EXIT_OK);
    let v = &json_lines(&out)[0];
    let det = v["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(det["name"], "determinism");
    assert_eq!(det["ok"], true);
}

#[test]
fn determinism_check_catches_a_nondeterministic_scenario() {
    let (code, out, err) = run("--scenario toy-nondet --seed 1 --check-determinism --json");
    assert_eq!(code, EXIT_FAILED, "{out}");
    let v = &json_lines(&out)[0];
    let det = v["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(det["ok"], false);
    assert!(err.contains("determinism"), "{err}");
    assert!(
        v["repro"]
            .as_str()
            .unwrap()
            .ends_with("--check-determinism")
    );
}

#[test]
fn unknown_scenario_lists_the_available_ones() {
    let cfg = SimConfig::parse_from(["pilot-sim", "--scenario", "nope", "--seed", "1"]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run(&cfg, &registry(), &mut out, &mut err).unwrap();
    assert_eq!(code, EXIT_USAGE);
    let err = String::from_utf8(err).unwrap();
    assert!(err.contains("\"nope\"") && err.contains("toy-mesh") && err.contains("toy-nondet"));
    assert!(out.is_empty());
}

#[test]
fn loss_flag_loses_about_that_share() {
    let (_, out, _) =
        run("--scenario toy-mesh --seed 3 --loss 10 --duration-ms 50000 --latency-ms 1 --json");
    let v = &json_lines(&out)[0];
    let sent = figure(v, &["datagrams_sent"]);
    let lost = figure(v, &["datagrams_dropped", "loss"]);
    assert_eq!(sent, 10_000.0);
    assert!((800.0..=1200.0).contains(&lost), "lost {lost}");
    assert_eq!(figure(v, &["datagrams_delivered"]), sent - lost);
}

#[test]
fn burst_loss_flag_keeps_the_mean() {
    let (_, out, _) =
        run("--scenario toy-mesh --seed 3 --loss 10 --burst-loss --duration-ms 100000 --json");
    let v = &json_lines(&out)[0];
    let lost = figure(v, &["datagrams_dropped", "burst_loss"]);
    assert!((1500.0..=2500.0).contains(&lost), "lost {lost} of 20000");
    assert_eq!(figure(v, &["datagrams_dropped", "loss"]), 0.0);
}

#[test]
fn dup_flag_makes_duplicates_reach_nodes() {
    let (_, out, _) = run("--scenario toy-mesh --seed 5 --dup 5 --duration-ms 50000 --json");
    let v = &json_lines(&out)[0];
    let dups = figure(v, &["datagrams_duplicated"]);
    assert!((400.0..=600.0).contains(&dups), "{dups}");
    assert_eq!(figure(v, &["datagrams_delivered"]), 10_000.0 + dups);
    assert_eq!(figure(v, &["unique_received"]), 10_000.0);
}

#[test]
fn partition_flag_cuts_the_halves_during_the_window() {
    let (code, out, _) = run(
        "--scenario toy-mesh --seed 2 --nodes 4 --partition-ms 200..600 --duration-ms 1000 --json",
    );
    assert_eq!(code, EXIT_OK);
    let v = &json_lines(&out)[0];
    let cut = figure(v, &["datagrams_dropped", "partition"]);
    // 4 nodes, 2 per side: 8 crossing links, ~40 rounds in the window.
    assert!((300.0..=340.0).contains(&cut), "{cut}");
    let pc = &v["checks"][2];
    assert_eq!(pc["name"], "partition-respected");
    assert_eq!(pc["ok"], true);
}

#[test]
fn mtu_and_bandwidth_flags_apply() {
    let (_, out, _) = run("--scenario toy-mesh --seed 1 --mtu 99 --duration-ms 100 --json");
    let v = &json_lines(&out)[0];
    assert_eq!(figure(v, &["datagrams_dropped", "mtu"]), 20.0);
    assert_eq!(figure(v, &["datagrams_delivered"]), 0.0);

    // 100-byte datagrams every 10 ms per link = 80 kbit/s offered into 0.04 Mbit/s.
    let (_, out, _) =
        run("--scenario toy-mesh --seed 1 --bandwidth-mbps 0.04 --duration-ms 20000 --json");
    let v = &json_lines(&out)[0];
    let delivered = figure(v, &["datagrams_delivered"]);
    // 5000 B/s for ~21 s of virtual time is ~1050 datagrams per node, plus the queue.
    assert!((2000.0..=2500.0).contains(&delivered), "{delivered}");
    assert!(figure(v, &["datagrams_dropped", "queue_full"]) > 1000.0);
}

#[test]
fn text_output_names_failures() {
    let (code, out, err) = run("--scenario toy-mesh --seed 102 --duration-ms 20");
    assert_eq!(code, EXIT_FAILED);
    assert!(out.contains("toy-mesh seed 102: FAILED"), "{out}");
    assert!(out.contains("[FAIL] flaky"), "{out}");
    assert!(err.contains("pilot-sim --scenario toy-mesh --seed 102 --duration-ms 20"));
}

#[test]
fn the_binary_reports_usage_errors() {
    let bin = env!("CARGO_BIN_EXE_pilot-sim");
    let o = std::process::Command::new(bin)
        .args(["--scenario", "nope", "--seed", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(EXIT_USAGE));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown scenario \"nope\""), "{err}");
    assert!(
        err.contains("datagram"),
        "lists the available scenarios: {err}"
    );

    let o = std::process::Command::new(bin)
        .args(["--scenario", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "missing --seed is a usage error");

    let o = std::process::Command::new(bin)
        .args(["--scenario", "x", "--seed", "1", "--loss", "200"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(EXIT_USAGE));
    assert!(String::from_utf8_lossy(&o.stderr).contains("percentage"));
}

#[test]
fn help_lists_the_scenarios_and_version_works() {
    let bin = env!("CARGO_BIN_EXE_pilot-sim");
    let o = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Scenarios:"), "{help}");
    for (name, _) in pilot_sim::scenario::Registry::builtin().list() {
        assert!(help.contains(name), "--help lists {name}: {help}");
    }
    let o = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "--version exits 0");
    let v = String::from_utf8_lossy(&o.stdout);
    assert_eq!(v.trim(), format!("pilot-sim {}", env!("CARGO_PKG_VERSION")));
}
