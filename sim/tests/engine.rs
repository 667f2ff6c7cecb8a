//! Whole-engine tests driven by the test-only toy node in `toy.rs`.

mod toy;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use pilot_proto::time::Instant;
use pilot_sim::fault::{
    Arrival, Bandwidth, Clog, ClogWindow, DropReason, Duplicate, Group, InFlight, Latency,
    Partition, PartitionWindow, UniformLoss,
};
use pilot_sim::{
    FaultChain, FaultRule, Limits, NodeId, Seed, Sim, SimError, SimNode, Transmit, Verdict,
    node_addr,
};
use toy::{Ev, Toy};

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

/// `n` toy nodes in full mesh, each sending `rounds` rounds every 10 ms.
fn mesh(seed: u64, n: usize, rounds: u64, faults: FaultChain) -> Sim<Toy> {
    let mut sim = Sim::new(Seed::new(seed), faults);
    for i in 0..n {
        let peers = (0..n).filter(|&j| j != i).map(node_addr).collect();
        let start = Instant::from_millis(1 + i as u64);
        sim.add_node(node_addr(i), Toy::new(peers, start, ms(10), rounds))
            .unwrap();
    }
    sim
}

fn run(sim: &mut Sim<Toy>, until_ms: u64) -> Vec<(NodeId, Ev)> {
    let mut evs = Vec::new();
    sim.run_until(Instant::from_millis(until_ms), |_, id, ev| {
        evs.push((id, ev));
        Ok(())
    })
    .unwrap();
    evs
}

fn all_ok(sim: &mut Sim<Toy>) {
    for c in sim.check() {
        assert!(c.ok, "{c:?}");
    }
}

fn sent_set(n: usize, rounds: u64) -> HashSet<(SocketAddr, SocketAddr, u64)> {
    let mut s = HashSet::new();
    for i in 0..n {
        let mut k = 0;
        for j in 0..n {
            if j == i {
                continue;
            }
            for r in 0..rounds {
                s.insert((node_addr(i), node_addr(j), Toy::seq(r, k)));
            }
            k += 1;
        }
    }
    s
}

fn latency(seed: u64, base: u64, jitter: u64) -> Latency {
    Latency::new(ms(base), ms(jitter), Seed::new(seed).fork("latency", 0))
}

#[test]
fn clean_network_delivers_everything_once_in_order_with_latency() {
    let mut sim = mesh(1, 4, 20, FaultChain::new().with(latency(1, 25, 0)));
    let evs = run(&mut sim, 1000);
    assert_eq!(evs.len(), 4 * 3 * 20);
    assert_eq!(sim.stats().sent, 240);
    assert_eq!(sim.stats().delivered, 240);
    assert_eq!(sim.stats().dropped_total(), 0);
    let sent = sent_set(4, 20);
    for i in 0..4 {
        let node = sim.node(NodeId(i)).unwrap();
        let mut last: HashMap<SocketAddr, u64> = HashMap::new();
        for &(at, from, seq) in &node.received {
            assert!(sent.contains(&(from, node_addr(i), seq)));
            // Sender k sends round r at 1 + k + 10 r ms; arrives 25 ms later.
            let k = (0..4).find(|&k| node_addr(k) == from).unwrap() as u64;
            let round = seq / 1000;
            assert_eq!(at, Instant::from_millis(1 + k + 10 * round + 25));
            if let Some(prev) = last.insert(from, seq) {
                assert!(seq > prev, "in order per link");
            }
        }
    }
    assert_eq!(sim.in_flight(), 0);
    all_ok(&mut sim);
}

#[test]
fn nothing_delivered_that_was_not_sent_under_faults() {
    let s = Seed::new(7);
    let faults = FaultChain::new()
        .with(UniformLoss::new(0.2, s.fork("loss", 0)))
        .with(latency(7, 20, 15).allow_reordering())
        .with(Duplicate::new(0.2, ms(3), s.fork("dup", 0)));
    let mut sim = mesh(7, 5, 30, faults);
    run(&mut sim, 2000);
    let sent = sent_set(5, 30);
    for i in 0..5 {
        for &(_, from, seq) in &sim.node(NodeId(i)).unwrap().received {
            assert!(
                sent.contains(&(from, node_addr(i), seq)),
                "phantom {from} #{seq}"
            );
        }
    }
    let st = sim.stats().clone();
    assert_eq!(st.sent, 600);
    assert_eq!(st.sent + st.duplicated, st.delivered + st.dropped_total());
    assert!(st.dropped_for(DropReason::Loss) > 60, "{st:?}");
    all_ok(&mut sim);
}

#[test]
fn duplicates_are_visible_to_the_node() {
    let faults = FaultChain::new()
        .with(latency(3, 5, 0))
        .with(Duplicate::new(0.3, ms(2), Seed::new(3).fork("dup", 0)));
    let mut sim = mesh(3, 3, 50, faults);
    run(&mut sim, 2000);
    let mut seen_twice = 0;
    for i in 0..3 {
        let mut counts: HashMap<(SocketAddr, u64), u32> = HashMap::new();
        for &(_, from, seq) in &sim.node(NodeId(i)).unwrap().received {
            *counts.entry((from, seq)).or_default() += 1;
        }
        assert_eq!(counts.len(), 100, "every datagram arrives at least once");
        seen_twice += counts.values().filter(|&&c| c == 2).count();
        assert!(counts.values().all(|&c| c <= 2));
    }
    assert_eq!(seen_twice as u64, sim.stats().duplicated);
    assert!((60..=120).contains(&seen_twice), "{seen_twice}");
    all_ok(&mut sim);
}

#[test]
fn nothing_crosses_a_partition_during_its_window() {
    let a = Group::of([node_addr(0), node_addr(1)]);
    let b = Group::of([node_addr(2), node_addr(3)]);
    let (start, end) = (Instant::from_millis(100), Instant::from_millis(300));
    let faults = FaultChain::new()
        .with(Partition::new(vec![PartitionWindow::symmetric(
            start,
            end,
            a.clone(),
            b.clone(),
        )]))
        .with(latency(5, 15, 5));
    let mut sim = mesh(5, 4, 50, faults);
    run(&mut sim, 1000);
    let (mut crossing_before, mut crossing_after, mut same_side_during) = (0, 0, 0);
    for i in 0..4 {
        let me = node_addr(i);
        for &(at, from, _) in &sim.node(NodeId(i)).unwrap().received {
            let crosses = a.contains(&from) != a.contains(&me);
            let during = at >= start && at < end;
            assert!(!(crosses && during), "{from} -> {me} crossed at {at:?}");
            match (crosses, during) {
                (true, false) if at < start => crossing_before += 1,
                (true, false) => crossing_after += 1,
                (false, true) => same_side_during += 1,
                _ => {}
            }
        }
    }
    assert!(crossing_before > 0 && crossing_after > 0 && same_side_during > 0);
    assert!(sim.stats().dropped_for(DropReason::Partition) > 0);
    all_ok(&mut sim);
}

#[test]
fn one_way_partition_blocks_only_one_direction() {
    let a = Group::of([node_addr(0)]);
    let b = Group::of([node_addr(1)]);
    let faults = FaultChain::new().with(Partition::new(vec![PartitionWindow::one_way(
        Instant::ZERO,
        Instant::from_millis(10_000),
        a,
        b,
    )]));
    let mut sim = mesh(2, 2, 10, faults);
    run(&mut sim, 1000);
    assert!(sim.node(NodeId(1)).unwrap().received.is_empty());
    assert_eq!(sim.node(NodeId(0)).unwrap().received.len(), 10);
}

#[test]
fn clogged_link_holds_then_releases_in_order() {
    let from = Group::of([node_addr(0)]);
    let to = Group::of([node_addr(1)]);
    let (start, end) = (Instant::from_millis(50), Instant::from_millis(200));
    let faults = FaultChain::new()
        .with(latency(1, 5, 0))
        .with(Clog::new(vec![ClogWindow::new(start, end, from, to)]));
    let mut sim = mesh(1, 2, 40, faults);
    run(&mut sim, 1000);
    let got = &sim.node(NodeId(1)).unwrap().received;
    assert_eq!(got.len(), 40, "a clog loses nothing");
    assert!(got.iter().all(|&(at, _, _)| at < start || at >= end));
    let released: Vec<u64> = got.iter().filter(|r| r.0 == end).map(|r| r.2).collect();
    assert!(released.len() >= 14, "{released:?}");
    assert!(
        released.windows(2).all(|w| w[0] < w[1]),
        "released in order"
    );
    // The other direction is not clogged.
    let back = &sim.node(NodeId(0)).unwrap().received;
    assert!(back.iter().any(|&(at, _, _)| at >= start && at < end));
    assert!(sim.stats().deferred >= 14);
    all_ok(&mut sim);
}

#[test]
fn bandwidth_limits_throughput_in_the_engine() {
    // 2 nodes, 1000-byte datagrams every 1 ms (1 MB/s offered) into 250 kB/s.
    let mut sim = Sim::new(
        Seed::new(4),
        FaultChain::new().with(Bandwidth::new(250_000, 20_000)),
    );
    let mut t = Toy::new(vec![node_addr(1)], Instant::ZERO, ms(1), 1000);
    t.size = 1000;
    sim.add_node(node_addr(0), t).unwrap();
    sim.add_node(node_addr(1), Toy::new(vec![], Instant::ZERO, ms(1), 0))
        .unwrap();
    run(&mut sim, 1100);
    let got = sim.node(NodeId(1)).unwrap().received.len() as u64;
    // ~250 in the first second plus what the 20 kB queue held.
    assert!((250..=290).contains(&got), "{got}");
    assert_eq!(got + sim.stats().dropped_for(DropReason::QueueFull), 1000);
    all_ok(&mut sim);
}

#[test]
fn same_seed_same_trace_different_seed_different_trace() {
    let build = |seed: u64| {
        let s = Seed::new(seed);
        let faults = FaultChain::new()
            .with(UniformLoss::new(0.1, s.fork("loss", 0)))
            .with(Latency::new(ms(20), ms(10), s.fork("latency", 0)));
        let mut sim = mesh(seed, 4, 30, faults);
        run(&mut sim, 2000);
        (sim.trace_hash(), sim.stats().clone())
    };
    let (h1, s1) = build(11);
    let (h2, s2) = build(11);
    assert_eq!(h1, h2);
    assert_eq!(s1, s2);
    let (h3, _) = build(12);
    assert_ne!(h1, h3);
}

#[test]
fn events_reach_the_callback_and_commands_from_it_are_drained() {
    // Node 1 echoes nothing by itself; the callback makes node 1 reply to
    // every datagram through `with_node`, and the replies are delivered.
    let mut sim = mesh(2, 2, 5, FaultChain::new().with(latency(2, 3, 0)));
    let mut replies = 0;
    sim.run_until(Instant::from_millis(500), |sim, id, ev| {
        let Ev::Got { from, seq } = ev;
        if id == NodeId(1) && seq < 1_000_000 {
            sim.with_node(id, |n, _| n.out.push_back((from, seq + 1_000_000)))?;
        }
        if id == NodeId(0) && seq >= 1_000_000 {
            replies += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(replies, 5);
    assert_eq!(sim.now(), Instant::from_millis(500));
}

#[test]
fn timers_fire_at_their_deadline_and_superseded_ones_do_not() {
    let mut sim = mesh(1, 2, 5, FaultChain::new());
    run(&mut sim, 1000);
    let t = &sim.node(NodeId(0)).unwrap().timeouts;
    let want: Vec<Instant> = (0..5).map(|r| Instant::from_millis(1 + 10 * r)).collect();
    assert_eq!(*t, want);
    // Reschedule node 0 to a later time: the old entry must not fire.
    let mut sim = mesh(1, 2, 5, FaultChain::new());
    sim.with_node(NodeId(0), |n, _| n.next = Some(Instant::from_millis(500)))
        .unwrap();
    run(&mut sim, 1000);
    let t = &sim.node(NodeId(0)).unwrap().timeouts;
    assert_eq!(t.first(), Some(&Instant::from_millis(500)));
}

/// A test-only address rewriter showing the NAT hook: node 0's source is
/// rewritten to a public label, and datagrams to that label are routed back.
struct Rewrite {
    private: SocketAddr,
    public: SocketAddr,
}

impl FaultRule for Rewrite {
    fn name(&self) -> &'static str {
        "rewrite"
    }
    fn on_send(&mut self, _now: Instant, p: &mut InFlight) -> Verdict {
        if p.src == self.private {
            p.src = self.public;
        }
        if p.dst == self.public {
            p.dst = self.private;
        }
        Verdict::Continue
    }
    fn on_deliver(&mut self, _now: Instant, _p: &mut Arrival) -> Verdict {
        Verdict::Continue
    }
}

#[test]
fn rules_can_rewrite_addresses_like_a_nat() {
    let public: SocketAddr = "10.250.0.1:9999".parse().unwrap();
    let faults = FaultChain::new().with(Rewrite {
        private: node_addr(0),
        public,
    });
    let mut sim = Sim::new(Seed::new(1), faults);
    sim.add_node(
        node_addr(0),
        Toy::new(vec![node_addr(1)], Instant::ZERO, ms(1), 3),
    )
    .unwrap();
    let mut echo = Toy::new(vec![], Instant::ZERO, ms(1), 0);
    echo.echo = true;
    sim.add_node(node_addr(1), echo).unwrap();
    run(&mut sim, 100);
    let b = &sim.node(NodeId(1)).unwrap().received;
    assert_eq!(b.len(), 3);
    assert!(
        b.iter().all(|r| r.1 == public),
        "receiver sees the public side"
    );
    assert_eq!(
        sim.node(NodeId(0)).unwrap().received.len(),
        3,
        "replies routed back"
    );
}

#[test]
fn unknown_destination_is_dropped_as_no_route() {
    let mut sim = Sim::new(Seed::new(1), FaultChain::new());
    let nowhere: SocketAddr = "10.9.9.9:1".parse().unwrap();
    sim.add_node(
        node_addr(0),
        Toy::new(vec![nowhere], Instant::ZERO, ms(1), 4),
    )
    .unwrap();
    run(&mut sim, 100);
    assert_eq!(sim.stats().dropped_for(DropReason::NoRoute), 4);
    all_ok(&mut sim);
}

/// A node that transmits forever after any input.
struct Chatter;
impl SimNode for Chatter {
    type Event = ();
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
        Some(Transmit {
            dst: node_addr(0),
            len: 1,
        })
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
}

/// A node that asks to be woken at time zero forever.
struct Spinner;
impl SimNode for Spinner {
    type Event = ();
    fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(Instant::ZERO)
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
}

#[test]
fn runaway_nodes_and_step_budget_are_errors_not_hangs() {
    let mut sim = Sim::new(Seed::new(1), FaultChain::new());
    sim.set_limits(Limits {
        max_polls_per_input: 100,
        ..Limits::default()
    });
    let err = sim.add_node(node_addr(0), Chatter).unwrap_err();
    assert!(
        matches!(err, SimError::RunawayNode { node: 0, .. }),
        "{err}"
    );

    let mut sim = Sim::new(Seed::new(1), FaultChain::new());
    sim.set_limits(Limits {
        max_steps: 1000,
        ..Limits::default()
    });
    sim.add_node(node_addr(0), Spinner).unwrap();
    let err = sim
        .run_until(Instant::from_millis(10), |_, _, _| Ok(()))
        .unwrap_err();
    assert_eq!(err, SimError::StepLimit(1000));

    let mut sim: Sim<Spinner> = Sim::new(Seed::new(1), FaultChain::new());
    let far = Instant::from_millis(1_000_000_000);
    assert!(matches!(
        sim.run_until(far, |_, _, _| Ok(())),
        Err(SimError::TimeLimit { .. })
    ));
}

#[test]
fn in_flight_bound_drops_as_overload() {
    let mut sim = mesh(1, 2, 50, FaultChain::new().with(latency(1, 10_000, 0)));
    sim.set_limits(Limits {
        max_in_flight: 30,
        ..Limits::default()
    });
    run(&mut sim, 5_000);
    assert_eq!(sim.in_flight(), 30);
    assert_eq!(sim.stats().dropped_for(DropReason::Overload), 70);
    all_ok(&mut sim);
}

/// Load run: 100 nodes in full mesh for 60 s of virtual time, one round
/// every `PILOT_SIM_BENCH_MS` ms (default 1000). Not a timing assertion;
/// run by hand in release with `--ignored --nocapture` to see wall time.
#[test]
#[ignore]
fn load_mesh_100_nodes_60s() {
    let interval: u64 = std::env::var("PILOT_SIM_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let s = Seed::new(1);
    let faults = FaultChain::new()
        .with(UniformLoss::new(0.01, s.fork("loss", 0)))
        .with(Latency::new(ms(20), ms(5), s.fork("latency", 0)));
    let mut sim = Sim::new(s, faults);
    let n = 100;
    for i in 0..n {
        let peers = (0..n).filter(|&j| j != i).map(node_addr).collect();
        let mut t = Toy::new(
            peers,
            Instant::from_millis(i as u64),
            ms(interval),
            60_000 / interval,
        );
        t.size = 200;
        sim.add_node(node_addr(i), t).unwrap();
    }
    let wall = std::time::Instant::now();
    sim.run_until(Instant::from_millis(61_000), |_, _, _| Ok(()))
        .unwrap();
    let st = sim.stats().clone();
    println!(
        "100 nodes, {interval} ms rounds: {} sent, {} delivered, {} steps in {:?}",
        st.sent,
        st.delivered,
        st.steps,
        wall.elapsed()
    );
    assert_eq!(st.sent, (n * (n - 1)) as u64 * (60_000 / interval));
    all_ok(&mut sim);
}

/// A node that only listens and reports, with the toy's event type.
struct Sink(std::collections::VecDeque<Ev>);
impl SimNode for Sink {
    type Event = Ev;
    fn handle_datagram(&mut self, _: Instant, from: SocketAddr, bytes: &[u8]) {
        let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        self.0.push_back(Ev::Got { from, seq: seq + 7 });
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_event(&mut self) -> Option<Ev> {
        self.0.pop_front()
    }
}

#[test]
fn boxed_nodes_of_different_types_share_a_network() {
    let mut sim: Sim<Box<dyn SimNode<Event = Ev>>> = Sim::new(Seed::new(1), FaultChain::new());
    let toy = Toy::new(vec![node_addr(1)], Instant::ZERO, ms(1), 3);
    sim.add_node(node_addr(0), Box::new(toy)).unwrap();
    sim.add_node(node_addr(1), Box::new(Sink(Default::default())))
        .unwrap();
    let mut got = Vec::new();
    sim.run_until(Instant::from_millis(10), |_, id, ev| {
        got.push((id, ev));
        Ok(())
    })
    .unwrap();
    let want: Vec<_> = (0..3)
        .map(|r| {
            let seq = Toy::seq(r, 0) + 7;
            (
                NodeId(1),
                Ev::Got {
                    from: node_addr(0),
                    seq,
                },
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn misbehaving_setup_and_nodes_are_reported() {
    let mut sim = Sim::new(Seed::new(1), FaultChain::new());
    sim.add_node(node_addr(0), Toy::new(vec![], Instant::ZERO, ms(1), 0))
        .unwrap();
    let err = sim
        .add_node(node_addr(0), Toy::new(vec![], Instant::ZERO, ms(1), 0))
        .unwrap_err();
    assert_eq!(err, SimError::DuplicateAddr(node_addr(0)));
    assert_eq!(
        sim.with_node(NodeId(5), |_, _| ()).unwrap_err(),
        SimError::UnknownNode(5)
    );

    /// Claims a datagram longer than the buffer it was given.
    struct Liar(bool);
    impl SimNode for Liar {
        type Event = ();
        fn handle_datagram(&mut self, _: Instant, _: SocketAddr, _: &[u8]) {}
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
            let len = buf.len() + 1;
            std::mem::take(&mut self.0).then_some(Transmit {
                dst: node_addr(1),
                len,
            })
        }
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<()> {
            None
        }
    }
    let mut sim = Sim::new(Seed::new(1), FaultChain::new());
    let err = sim.add_node(node_addr(0), Liar(true)).unwrap_err();
    assert!(
        matches!(err, SimError::TransmitTooLong { node: 0, .. }),
        "{err}"
    );
}

/// Hole punching through two NATs: A behind NAT 1, B behind NAT 2, both
/// first talk to a public server S, then to the peer's public mapping as
/// S would have observed it. B starts 30 ms after A.
fn punch(b_mapping: pilot_sim::fault::NatMapping) -> (Sim<Toy>, SocketAddr) {
    use pilot_sim::fault::{Nat, NatFiltering, NatMapping};
    let s: SocketAddr = "10.100.0.10:4000".parse().unwrap();
    let a_priv: SocketAddr = "192.168.1.2:4000".parse().unwrap();
    let b_priv: SocketAddr = "192.168.2.2:4000".parse().unwrap();
    let a_pub: SocketAddr = "10.201.0.1:40000".parse().unwrap();
    let b_pub: SocketAddr = "10.202.0.1:50000".parse().unwrap();
    let faults = FaultChain::new()
        .with(Nat::new(
            a_pub.ip(),
            Group::of([a_priv]),
            NatMapping::EndpointIndependent,
            NatFiltering::AddressAndPortDependent,
            a_pub.port(),
            Duration::from_secs(30),
        ))
        .with(Nat::new(
            b_pub.ip(),
            Group::of([b_priv]),
            b_mapping,
            NatFiltering::AddressAndPortDependent,
            b_pub.port(),
            Duration::from_secs(30),
        ))
        .with(latency(1, 5, 0));
    let mut sim = Sim::new(Seed::new(1), faults);
    sim.add_node(a_priv, Toy::new(vec![s, b_pub], Instant::ZERO, ms(10), 10))
        .unwrap();
    sim.add_node(
        b_priv,
        Toy::new(vec![s, a_pub], Instant::from_millis(30), ms(10), 10),
    )
    .unwrap();
    sim.add_node(s, Toy::new(vec![], Instant::ZERO, ms(10), 0))
        .unwrap();
    run(&mut sim, 1000);
    (sim, b_pub)
}

#[test]
fn hole_punching_works_through_cone_nats_and_fails_through_a_symmetric_one() {
    use pilot_sim::fault::NatMapping;
    let (mut sim, b_pub) = punch(NatMapping::EndpointIndependent);
    let server = &sim.node(NodeId(2)).unwrap().received;
    assert_eq!(server.len(), 20, "the server hears both");
    let from_a = &sim.node(NodeId(1)).unwrap().received;
    let from_b = &sim.node(NodeId(0)).unwrap().received;
    // B hears every round of A sent after B opened its side (t >= 30 ms);
    // A's first three rounds arrive before that and are filtered.
    assert_eq!(from_a.len(), 7);
    assert_eq!(from_b.len(), 10);
    assert!(
        from_b.iter().all(|r| r.1 == b_pub),
        "A sees B's public mapping"
    );
    assert_eq!(sim.stats().dropped_for(DropReason::Filtered), 3);
    all_ok(&mut sim);

    let (mut sim, _) = punch(NatMapping::AddressAndPortDependent);
    assert_eq!(sim.node(NodeId(2)).unwrap().received.len(), 20);
    assert!(sim.node(NodeId(0)).unwrap().received.is_empty());
    assert!(sim.node(NodeId(1)).unwrap().received.is_empty());
    assert_eq!(sim.stats().dropped_for(DropReason::Filtered), 20);
    all_ok(&mut sim);
}

#[test]
fn a_replaced_node_restarts_with_fresh_state_and_timers() {
    let mut sim = mesh(1, 2, 100, FaultChain::new().with(latency(1, 5, 0)));
    run(&mut sim, 95);
    // Restart node 0 at 95 ms with a node that sends 3 rounds from 200 ms.
    let fresh = Toy::new(vec![node_addr(1)], Instant::from_millis(200), ms(10), 3);
    let old = sim.replace_node(NodeId(0), fresh).unwrap();
    assert_eq!(old.sent_rounds, 10);
    run(&mut sim, 2000);
    let new = sim.node(NodeId(0)).unwrap();
    // The old 10 ms timer never fires on the new node.
    assert_eq!(
        new.timeouts,
        [200, 210, 220].map(Instant::from_millis).to_vec()
    );
    // Datagrams from node 1 keep arriving at the endpoint (now the new node).
    assert!(new.received.len() > 50);
    let got_by_1: Vec<u64> = sim
        .node(NodeId(1))
        .unwrap()
        .received
        .iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(got_by_1.len(), 13);
    all_ok(&mut sim);
}
