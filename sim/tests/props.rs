//! Property tests: random fault configurations over the test-only toy mesh
//! must keep the engine's invariants.

mod toy;

use std::collections::HashSet;
use std::time::Duration;

use pilot_proto::time::Instant;
use pilot_sim::config::SimConfig;
use pilot_sim::{NodeId, Seed, Sim, node_addr};
use proptest::prelude::*;
use toy::Toy;

const INTERVAL_MS: u64 = 10;

#[derive(Debug, Clone)]
struct Net {
    seed: u64,
    nodes: usize,
    loss: f64,
    burst: bool,
    dup: f64,
    reorder: f64,
    latency: u64,
    jitter: u64,
    partition: Option<(u64, u64)>,
}

fn net() -> impl Strategy<Value = Net> {
    (
        any::<u64>(),
        2usize..6,
        0.0f64..40.0,
        any::<bool>(),
        0.0f64..30.0,
        0.0f64..30.0,
        0u64..50,
        0u64..30,
        proptest::option::of((0u64..300, 1u64..300)),
    )
        .prop_map(
            |(seed, nodes, loss, burst, dup, reorder, latency, jitter, p)| Net {
                seed,
                nodes,
                loss,
                burst,
                dup,
                reorder,
                latency,
                jitter,
                partition: p.map(|(s, len)| (s, s + len)),
            },
        )
}

fn config(n: &Net) -> SimConfig {
    let mut args = format!(
        "pilot-sim --scenario props --seed {} --nodes {} --loss {} --dup {} --reorder {} \
         --latency-ms {} --jitter-ms {} --duration-ms 300",
        n.seed, n.nodes, n.loss, n.dup, n.reorder, n.latency, n.jitter
    );
    if n.burst {
        args.push_str(" --burst-loss");
    }
    if let Some((a, b)) = n.partition {
        args.push_str(&format!(" --partition-ms {a}..{b}"));
    }
    SimConfig::parse_from(args.split_whitespace()).unwrap()
}

struct Run {
    hash: pilot_sim::TraceDigest,
    checks_ok: bool,
    sim: Sim<Toy>,
}

fn run(n: &Net) -> Run {
    let cfg = config(n);
    let addrs: Vec<_> = (0..n.nodes).map(node_addr).collect();
    let seed = Seed::new(n.seed);
    let mut sim = Sim::new(seed, cfg.faults(seed, &addrs));
    for i in 0..n.nodes {
        let peers = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
        let t = Toy::new(
            peers,
            Instant::from_millis(i as u64),
            Duration::from_millis(INTERVAL_MS),
            cfg.duration_ms / INTERVAL_MS,
        );
        sim.add_node(addrs[i], t).unwrap();
    }
    sim.run_until(Instant::from_millis(2_000), |_, _, _| Ok(()))
        .unwrap();
    let checks_ok = sim.check().iter().all(|c| c.ok);
    Run {
        hash: sim.trace_hash(),
        checks_ok,
        sim,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn invariants_hold_under_random_faults(n in net()) {
        let a = run(&n);
        prop_assert!(a.checks_ok);
        let st = a.sim.stats().clone();
        prop_assert_eq!(
            st.sent + st.duplicated,
            st.delivered + st.dropped_total() + a.sim.in_flight() as u64
        );
        // Everything settles long before the end of the run.
        prop_assert_eq!(a.sim.in_flight(), 0);

        let half = n.nodes.div_ceil(2);
        for i in 0..n.nodes {
            let me = node_addr(i);
            for &(at, from, seq) in &a.sim.node(NodeId(i)).unwrap().received {
                let k = (0..n.nodes).find(|&k| node_addr(k) == from);
                prop_assert!(k.is_some(), "unknown sender {}", from);
                let k = k.unwrap();
                let round = seq / 1000;
                // The datagram was really sent by k to i...
                let peer_index = if i < k { i } else { i - 1 } as u64;
                prop_assert_eq!(seq % 1000, peer_index);
                prop_assert!(round < 30);
                // ...and never arrives earlier than the minimum one-way delay.
                let sent = Instant::from_millis(k as u64 + round * INTERVAL_MS);
                let min = Duration::from_millis(n.latency.saturating_sub(n.jitter));
                prop_assert!(at >= sent + min);
                // Nothing crosses an active partition.
                if let Some((s, e)) = n.partition {
                    let crosses = (k < half) != (i < half);
                    let during = at >= Instant::from_millis(s) && at < Instant::from_millis(e);
                    prop_assert!(!(crosses && during), "{} -> {} at {:?}", from, me, at);
                }
            }
        }

        // Same seed and configuration: bit-for-bit the same trace.
        let b = run(&n);
        prop_assert_eq!(a.hash, b.hash);
        prop_assert_eq!(st, b.sim.stats().clone());
    }

    #[test]
    fn lossless_config_delivers_every_datagram_once(
        seed in any::<u64>(), nodes in 2usize..5, latency in 0u64..40, jitter in 0u64..20
    ) {
        let n = Net {
            seed, nodes, loss: 0.0, burst: false, dup: 0.0, reorder: 0.0,
            latency, jitter, partition: None,
        };
        let r = run(&n);
        let total = (nodes * (nodes - 1)) as u64 * 30;
        prop_assert_eq!(r.sim.stats().delivered, total);
        let mut seen = HashSet::new();
        for i in 0..nodes {
            for &(_, from, seq) in &r.sim.node(NodeId(i)).unwrap().received {
                prop_assert!(seen.insert((i, from, seq)));
            }
        }
    }
}
