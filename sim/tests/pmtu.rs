//! Upward path-MTU search of streams (issue #14, `spec/transport.md`
//! §5.5) between two simulated nodes whose path drops datagrams above a
//! limit the test can change while the connection runs. The dialer sends
//! bursts of 3000 bytes with pauses, so every burst starts with nothing in
//! flight (the moment a probe may go out); the receiver reads everything.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use pilot_proto::WireProfile;
use pilot_proto::node::ConnId;
use pilot_proto::stream::consts::PMTU_RAISE_TIMER;
use pilot_proto::time::Instant;
use pilot_sim::NodeId;
use pilot_sim::Sim;
use pilot_sim::fault::{DropReason, FaultChain, FaultRule, InFlight, Latency, Verdict};
use pilot_sim::node::node_addr;
use pilot_sim::pilot::{Pilot, pilot_addr};
use pilot_sim::seed::Seed;

/// UDP payload bytes of a 1152-byte segment in the `current` profile
/// (34-byte header and PILS framing): the tunnel overhead is 70 bytes.
const OVERHEAD: usize = 1222 - 1152;
const PORT: u16 = 80;
const BURST: usize = 3000;

/// Drops datagrams longer than a limit that the test may change.
struct PathMtu(Rc<Cell<usize>>);

impl FaultRule for PathMtu {
    fn name(&self) -> &'static str {
        "path-mtu"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        if pkt.len > self.0.get() {
            Verdict::Drop(DropReason::Mtu)
        } else {
            Verdict::Continue
        }
    }
}

struct Run {
    sim: Sim<Pilot>,
    mtu: Rc<Cell<usize>>,
    dialer: NodeId,
    listener: NodeId,
    conn: ConnId,
    served: Option<ConnId>,
    sent: Vec<u8>,
    received: Vec<u8>,
}

impl Run {
    fn new(seed: u64, mtu: usize) -> Run {
        let seed = Seed::new(seed);
        let cell = Rc::new(Cell::new(mtu));
        let mut faults = FaultChain::new();
        faults.push(PathMtu(cell.clone()));
        faults.push(Latency::new(
            Duration::from_millis(10),
            Duration::ZERO,
            seed.fork("pmtu/latency", 0),
        ));
        let mut sim = Sim::new(seed, faults);
        let limits = Pilot::mesh_limits(2);
        let mut ids = (0..2).map(|i| {
            sim.add_node(
                node_addr(i),
                Pilot::mesh_member_with(seed, i, 2, 0, WireProfile::Current, Instant::ZERO, limits),
            )
            .expect("node")
        });
        let (listener, dialer) = (ids.next().unwrap(), ids.next().unwrap());
        sim.with_node(listener, |p, _| p.node.listen(PORT))
            .unwrap()
            .unwrap();
        let conn = sim
            .with_node(dialer, |p, now| p.node.connect(now, pilot_addr(0), PORT))
            .unwrap()
            .unwrap();
        let mut r = Run {
            sim,
            mtu: cell,
            dialer,
            listener,
            conn,
            served: None,
            sent: Vec::new(),
            received: Vec::new(),
        };
        r.wait(Duration::from_secs(1));
        r
    }

    fn wait(&mut self, d: Duration) {
        let until = self.sim.now() + d;
        self.sim.run_until(until, |_, _, _| Ok(())).unwrap();
        let (served, received) = (&mut self.served, &mut self.received);
        self.sim
            .with_node(self.listener, |p, _| {
                if served.is_none() {
                    *served = p.node.accept(PORT);
                }
                if let Some(id) = *served {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = p.node.read(id, &mut buf) {
                        received.extend_from_slice(&buf[..n]);
                    }
                }
            })
            .unwrap();
    }

    /// Writes one burst and lets it (and its retransmissions) arrive.
    fn burst(&mut self, round: usize) {
        let data: Vec<u8> = (0..BURST).map(|i| (i * 7 + round * 13) as u8).collect();
        let conn = self.conn;
        let n = self
            .sim
            .with_node(self.dialer, |p, now| p.node.write(now, conn, &data))
            .unwrap()
            .unwrap();
        assert_eq!(n, BURST);
        self.sent.extend_from_slice(&data);
        self.wait(Duration::from_millis(1500));
    }

    fn segment_size(&self) -> usize {
        let p = self.sim.node(self.dialer).unwrap();
        p.node.conn_info(self.conn).unwrap().segment_size
    }

    /// (probes sent, probes answered, largest segment) of the dialer.
    fn totals(&self) -> (u64, u64, usize) {
        self.sim.node(self.dialer).unwrap().node.pmtu_totals()
    }

    fn mss_reductions(&self) -> u64 {
        let p = self.sim.node(self.dialer).unwrap();
        p.node.conn_stats(self.conn).unwrap().mss_reductions
    }

    fn assert_delivered(&self) {
        assert_eq!(self.received.len(), self.sent.len());
        assert!(self.received == self.sent, "stream bytes differ");
    }
}

/// A path that carries everything: one probe, then 4096-byte segments.
#[test]
fn an_open_path_converges_to_the_receivers_maximum_in_one_probe() {
    let mut r = Run::new(1, 65_507);
    for round in 0..4 {
        r.burst(round);
    }
    r.assert_delivered();
    assert_eq!(r.segment_size(), 4096);
    assert_eq!(r.totals(), (1, 1, 4096));
}

/// A path that drops datagrams above 1500 bytes: the search bisects down
/// to within two search steps below the largest segment that fits, every
/// byte arrives, and the dropped probes cost no data.
#[test]
fn a_1500_byte_path_converges_below_its_limit() {
    for seed in 1..=3 {
        let mut r = Run::new(seed, 1500);
        for round in 0..40 {
            r.burst(round);
        }
        r.assert_delivered();
        let fits = 1500 - OVERHEAD;
        let size = r.segment_size();
        assert!(
            size <= fits && size + 2 * 64 > fits,
            "seed {seed}: converged to {size}, the path carries {fits}; {:?}",
            r.totals()
        );
        let (probes, raises, largest) = r.totals();
        assert!(
            raises >= 1 && probes <= 24,
            "{probes} probes, {raises} raises"
        );
        assert_eq!(largest, size);
        assert!(r.sim.stats().dropped_for(DropReason::Mtu) > 0);
        assert_eq!(r.mss_reductions(), 0, "no black hole was ever seen");
    }
}

/// A path (or a peer) that never answers a probe larger than the base:
/// the connection stays at 1152 and stops probing after a bounded number
/// of tries.
#[test]
fn a_path_that_carries_only_the_base_stays_at_1152() {
    let mut r = Run::new(4, 1152 + OVERHEAD);
    for round in 0..40 {
        r.burst(round);
    }
    r.assert_delivered();
    assert_eq!(r.segment_size(), 1152);
    let (probes, raises, largest) = r.totals();
    assert_eq!((raises, largest), (0, 1152));
    assert!((1..=24).contains(&probes), "{probes} probes");
}

/// The path's MTU falls after the search raised the segment size to 4096:
/// black-hole detection takes the connection back to the base size (not
/// by halving), the search ends, and every byte still arrives.
#[test]
fn a_black_hole_after_the_raise_falls_back_to_the_base() {
    let mut r = Run::new(5, 65_507);
    for round in 0..3 {
        r.burst(round);
    }
    assert_eq!(r.segment_size(), 4096);
    r.mtu.set(1500);
    for round in 3..12 {
        r.burst(round);
    }
    r.wait(Duration::from_secs(10));
    r.assert_delivered();
    assert_eq!(r.segment_size(), 1152);
    assert_eq!(r.mss_reductions(), 1);
    let (probes, _, largest) = r.totals();
    assert_eq!(
        (probes, largest),
        (1, 4096),
        "no probing after the fall-back"
    );
}

fn searches(r: &Run) -> u64 {
    let p = r.sim.node(r.dialer).unwrap();
    p.node.conn_stats(r.conn).unwrap().pmtu_searches
}

/// The path's MTU grows after the search converged on a 1500-byte path:
/// nothing changes until the raise timer (600 s) fires, then the search
/// starts again from the size in use, tries the ceiling first and the
/// connection moves to 4096-byte segments; every byte arrives.
#[test]
fn a_path_whose_mtu_grows_later_is_found_again() {
    for seed in 6..=8 {
        let mut r = Run::new(seed, 1500);
        for round in 0..40 {
            r.burst(round);
        }
        let converged = r.segment_size();
        assert!(
            converged <= 1500 - OVERHEAD && converged > 1152,
            "{converged}"
        );
        let (probes, _, _) = r.totals();
        r.mtu.set(65_507);
        // Before the timer: the ended search stays ended.
        for round in 40..60 {
            r.burst(round);
        }
        assert_eq!(r.segment_size(), converged, "seed {seed}");
        assert_eq!(
            r.totals().0,
            probes,
            "seed {seed}: no probe before the timer"
        );
        assert_eq!(searches(&r), 0);
        r.wait(PMTU_RAISE_TIMER);
        for round in 60..64 {
            r.burst(round);
        }
        r.assert_delivered();
        assert_eq!(searches(&r), 1, "seed {seed}");
        assert_eq!(r.segment_size(), 4096, "seed {seed}: {:?}", r.totals());
        assert_eq!(r.totals().0, probes + 1, "seed {seed}: the ceiling first");
        assert_eq!(r.mss_reductions(), 0);
    }
}

/// On a path that did not change, the re-search costs a bounded number of
/// probes, keeps the size and loses nothing.
#[test]
fn a_re_search_on_an_unchanged_path_keeps_the_size() {
    let mut r = Run::new(9, 1500);
    for round in 0..40 {
        r.burst(round);
    }
    let converged = r.segment_size();
    let (probes, _, _) = r.totals();
    r.wait(PMTU_RAISE_TIMER);
    for round in 40..80 {
        r.burst(round);
    }
    r.assert_delivered();
    assert_eq!(searches(&r), 1);
    assert_eq!(r.segment_size(), converged);
    let more = r.totals().0 - probes;
    assert!((1..=24).contains(&more), "{more} probes");
    assert_eq!(r.mss_reductions(), 0, "no black hole was ever seen");
}

/// After a black hole took the connection back to the base and ended the
/// search, a path that carries large datagrams again is found once the
/// raise timer fired.
#[test]
fn after_a_black_hole_the_raise_timer_searches_again() {
    let mut r = Run::new(10, 65_507);
    for round in 0..3 {
        r.burst(round);
    }
    assert_eq!(r.segment_size(), 4096);
    r.mtu.set(1500);
    for round in 3..12 {
        r.burst(round);
    }
    r.wait(Duration::from_secs(10));
    assert_eq!(r.segment_size(), 1152);
    r.mtu.set(65_507);
    r.wait(PMTU_RAISE_TIMER);
    for round in 12..16 {
        r.burst(round);
    }
    r.assert_delivered();
    assert_eq!(searches(&r), 1);
    assert_eq!(r.segment_size(), 4096);
    assert_eq!(r.mss_reductions(), 1);
}
