//! Partitions: during a time window, datagrams between two groups of
//! endpoints are dropped, in both directions (symmetric) or one way only.
//!
//! A datagram is dropped if its send time *or* its arrival time falls in
//! the window, so nothing crosses the cut while it is active: datagrams
//! already in flight when the partition starts are lost too.

use std::collections::HashSet;
use std::net::SocketAddr;

use pilot_proto::time::Instant;

use super::{Arrival, DropReason, FaultRule, InFlight, Verdict};

/// A set of endpoints (or every endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Group {
    /// Matches every endpoint.
    Any,
    /// Matches the listed endpoints.
    Set(HashSet<SocketAddr>),
}

impl Group {
    /// A group of the given endpoints.
    pub fn of(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        Group::Set(addrs.into_iter().collect())
    }

    /// Whether `a` belongs to the group.
    pub fn contains(&self, a: &SocketAddr) -> bool {
        match self {
            Group::Any => true,
            Group::Set(s) => s.contains(a),
        }
    }
}

/// One scheduled cut between two groups over `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionWindow {
    start: Instant,
    end: Instant,
    a: Group,
    b: Group,
    one_way: bool,
}

impl PartitionWindow {
    /// Nothing crosses between `a` and `b`, either way, during `[start, end)`.
    pub fn symmetric(start: Instant, end: Instant, a: Group, b: Group) -> Self {
        PartitionWindow {
            start,
            end,
            a,
            b,
            one_way: false,
        }
    }

    /// Nothing goes from `from` to `to` during `[start, end)`; the reverse
    /// direction still works.
    pub fn one_way(start: Instant, end: Instant, from: Group, to: Group) -> Self {
        PartitionWindow {
            start,
            end,
            a: from,
            b: to,
            one_way: true,
        }
    }

    /// Whether the window is active at `t`.
    pub fn active_at(&self, t: Instant) -> bool {
        self.start <= t && t < self.end
    }

    /// Whether a datagram from `src` to `dst` crosses this cut.
    pub fn cuts(&self, src: &SocketAddr, dst: &SocketAddr) -> bool {
        (self.a.contains(src) && self.b.contains(dst))
            || (!self.one_way && self.b.contains(src) && self.a.contains(dst))
    }
}

/// A schedule of partition windows; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    windows: Vec<PartitionWindow>,
}

impl Partition {
    /// A rule enforcing every window in `windows`.
    pub fn new(windows: Vec<PartitionWindow>) -> Self {
        Partition { windows }
    }

    fn blocked(&self, t: Instant, src: &SocketAddr, dst: &SocketAddr) -> bool {
        self.windows
            .iter()
            .any(|w| w.active_at(t) && w.cuts(src, dst))
    }
}

impl FaultRule for Partition {
    fn name(&self) -> &'static str {
        "partition"
    }

    fn on_send(&mut self, now: Instant, pkt: &mut InFlight) -> Verdict {
        if self.blocked(now, &pkt.src, &pkt.dst) {
            Verdict::Drop(DropReason::Partition)
        } else {
            Verdict::Continue
        }
    }

    fn on_deliver(&mut self, now: Instant, pkt: &mut Arrival) -> Verdict {
        if self.blocked(now, &pkt.src, &pkt.dst) {
            Verdict::Drop(DropReason::Partition)
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{arrival, pkt};
    use super::*;
    use crate::node::node_addr;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn halves() -> (Group, Group) {
        (
            Group::of([node_addr(0), node_addr(1)]),
            Group::of([node_addr(2), node_addr(3)]),
        )
    }

    fn send(p: &mut Partition, a: usize, b: usize, at: u64) -> Verdict {
        let mut x = pkt(a, b, 10, at);
        p.on_send(x.sent_at, &mut x)
    }

    #[test]
    fn symmetric_cut_only_inside_window_and_only_across() {
        let (a, b) = halves();
        let mut p = Partition::new(vec![PartitionWindow::symmetric(t(100), t(200), a, b)]);
        let cut = Verdict::Drop(DropReason::Partition);
        assert_eq!(send(&mut p, 0, 2, 99), Verdict::Continue);
        assert_eq!(send(&mut p, 0, 2, 100), cut);
        assert_eq!(send(&mut p, 3, 1, 150), cut);
        assert_eq!(send(&mut p, 0, 1, 150), Verdict::Continue, "same side");
        assert_eq!(send(&mut p, 2, 3, 150), Verdict::Continue, "same side");
        assert_eq!(
            send(&mut p, 0, 2, 200),
            Verdict::Continue,
            "end is exclusive"
        );
    }

    #[test]
    fn one_way_cut_blocks_one_direction() {
        let (a, b) = halves();
        let mut p = Partition::new(vec![PartitionWindow::one_way(t(0), t(50), a, b)]);
        assert_eq!(send(&mut p, 0, 2, 10), Verdict::Drop(DropReason::Partition));
        assert_eq!(send(&mut p, 2, 0, 10), Verdict::Continue);
    }

    #[test]
    fn in_flight_datagrams_are_cut_on_arrival() {
        let (a, b) = halves();
        let mut p = Partition::new(vec![PartitionWindow::symmetric(t(100), t(200), a, b)]);
        let mut x = pkt(0, 2, 10, 90);
        assert_eq!(p.on_send(x.sent_at, &mut x), Verdict::Continue);
        let mut arr = arrival(&x);
        assert_eq!(
            p.on_deliver(t(110), &mut arr),
            Verdict::Drop(DropReason::Partition)
        );
        assert_eq!(p.on_deliver(t(210), &mut arr), Verdict::Continue);
    }

    #[test]
    fn several_windows_and_any_group() {
        let only0 = Group::of([node_addr(0)]);
        let mut p = Partition::new(vec![
            PartitionWindow::symmetric(t(0), t(10), only0.clone(), Group::Any),
            PartitionWindow::symmetric(t(20), t(30), only0, Group::Any),
        ]);
        assert_ne!(send(&mut p, 5, 0, 5), Verdict::Continue);
        assert_eq!(send(&mut p, 5, 0, 15), Verdict::Continue);
        assert_ne!(send(&mut p, 0, 9, 25), Verdict::Continue);
        assert_eq!(send(&mut p, 4, 9, 25), Verdict::Continue);
    }
}
