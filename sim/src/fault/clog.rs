//! Clogging: during a window, a directed link holds every datagram that
//! reaches its far end and releases them all, in arrival order, when the
//! window closes. Nothing is lost; it is a stall, not a cut.

use pilot_proto::time::Instant;

use super::partition::Group;
use super::{Arrival, FaultRule, InFlight, Verdict};

/// One clog of the links `from → to` over `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClogWindow {
    start: Instant,
    end: Instant,
    from: Group,
    to: Group,
}

impl ClogWindow {
    /// Datagrams from `from` to `to` arriving during `[start, end)` are held
    /// until `end`.
    pub fn new(start: Instant, end: Instant, from: Group, to: Group) -> Self {
        ClogWindow {
            start,
            end,
            from,
            to,
        }
    }
}

/// A schedule of clog windows; see the module docs.
#[derive(Clone, Debug, Default)]
pub struct Clog {
    windows: Vec<ClogWindow>,
}

impl Clog {
    /// A rule enforcing every window in `windows`.
    pub fn new(windows: Vec<ClogWindow>) -> Self {
        Clog { windows }
    }
}

impl FaultRule for Clog {
    fn name(&self) -> &'static str {
        "clog"
    }

    fn on_send(&mut self, _now: Instant, _pkt: &mut InFlight) -> Verdict {
        Verdict::Continue
    }

    fn on_deliver(&mut self, now: Instant, pkt: &mut Arrival) -> Verdict {
        // Latest end among the active windows, so overlapping clogs compose.
        let release = self
            .windows
            .iter()
            .filter(|w| {
                w.start <= now
                    && now < w.end
                    && w.from.contains(&pkt.src)
                    && w.to.contains(&pkt.dst)
            })
            .map(|w| w.end)
            .max();
        match release {
            Some(end) if end > now => Verdict::Defer(end),
            _ => Verdict::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{arrival, pkt};
    use super::*;
    use crate::node::node_addr;

    #[test]
    fn holds_inside_window_then_releases() {
        let t = Instant::from_millis;
        let mut c = Clog::new(vec![ClogWindow::new(
            t(100),
            t(300),
            Group::of([node_addr(0)]),
            Group::of([node_addr(1)]),
        )]);
        let p = pkt(0, 1, 10, 0);
        let mut a = arrival(&p);
        assert_eq!(c.on_deliver(t(99), &mut a), Verdict::Continue);
        assert_eq!(c.on_deliver(t(100), &mut a), Verdict::Defer(t(300)));
        assert_eq!(c.on_deliver(t(299), &mut a), Verdict::Defer(t(300)));
        assert_eq!(c.on_deliver(t(300), &mut a), Verdict::Continue);
        // The reverse direction is not clogged.
        let mut back = arrival(&pkt(1, 0, 10, 0));
        assert_eq!(c.on_deliver(t(150), &mut back), Verdict::Continue);
    }

    #[test]
    fn overlapping_windows_hold_until_the_last_end() {
        let t = Instant::from_millis;
        let mut c = Clog::new(vec![
            ClogWindow::new(t(0), t(100), Group::Any, Group::Any),
            ClogWindow::new(t(50), t(400), Group::Any, Group::Any),
        ]);
        let mut a = arrival(&pkt(0, 1, 10, 0));
        assert_eq!(c.on_deliver(t(60), &mut a), Verdict::Defer(t(400)));
    }
}
