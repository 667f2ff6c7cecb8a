//! The fault model: a chain of rules every datagram passes.
//!
//! Each rule sees a datagram twice: once when it is sent
//! ([`FaultRule::on_send`], where it may add delay, add duplicate copies,
//! rewrite addresses or drop it) and once when a copy is about to be handed
//! to the receiver ([`FaultRule::on_deliver`], where it may drop it or hold
//! it longer). Rules run in chain order; the first rule that returns a
//! final verdict ([`Verdict::Drop`], [`Verdict::Deliver`] or
//! [`Verdict::Defer`]) wins and the rest are skipped. [`Verdict::Continue`]
//! means "no verdict", possibly after adjusting the datagram.
//!
//! Rules with randomness own their own [`SimRng`](crate::seed::SimRng)
//! stream, so adding a rule never perturbs the others.
//!
//! NAT boxes are ordinary rules ([`Nat`]): a rule may rewrite
//! [`InFlight::src`] / [`InFlight::dst`] on send and [`Arrival::src`] /
//! [`Arrival::dst`] on arrival (mapping a private endpoint to a public one
//! and back) and drop what its filtering refuses. The engine routes on the
//! final destination and shows the receiver the final source.

mod bandwidth;
mod clog;
mod dup;
mod latency;
mod loss;
mod mtu;
mod nat;
mod partition;
mod reorder;

pub use bandwidth::Bandwidth;
pub use clog::{Clog, ClogWindow};
pub use dup::Duplicate;
pub use latency::Latency;
pub use loss::{GilbertElliott, UniformLoss};
pub use mtu::Mtu;
pub use nat::{Nat, NatFiltering, NatMapping};
pub use partition::{Group, Partition, PartitionWindow};
pub use reorder::Reorder;

use core::time::Duration;
use std::net::SocketAddr;

use pilot_proto::time::Instant;

/// At most this many extra copies of one datagram may be scheduled.
pub const MAX_COPIES: usize = 4;

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Uniform random loss.
    Loss,
    /// Bursty (Gilbert-Elliott) loss.
    BurstLoss,
    /// Larger than the path MTU.
    Mtu,
    /// Tail drop at a full bandwidth-limited queue.
    QueueFull,
    /// A partition separates source and destination.
    Partition,
    /// No node owns the destination address.
    NoRoute,
    /// Refused by a NAT box (or another address-filtering rule).
    Filtered,
    /// The simulator's global in-flight bound was reached.
    Overload,
}

impl DropReason {
    /// Every reason, in a fixed order (for statistics).
    pub const ALL: [DropReason; 8] = [
        DropReason::Loss,
        DropReason::BurstLoss,
        DropReason::Mtu,
        DropReason::QueueFull,
        DropReason::Partition,
        DropReason::NoRoute,
        DropReason::Filtered,
        DropReason::Overload,
    ];

    /// Position in [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// A short snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Loss => "loss",
            DropReason::BurstLoss => "burst_loss",
            DropReason::Mtu => "mtu",
            DropReason::QueueFull => "queue_full",
            DropReason::Partition => "partition",
            DropReason::NoRoute => "no_route",
            DropReason::Filtered => "filtered",
            DropReason::Overload => "overload",
        }
    }
}

/// What a rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No verdict; the next rule decides (the datagram may have been adjusted).
    Continue,
    /// Final: deliver as it stands, skip the remaining rules.
    Deliver,
    /// Final: drop it.
    Drop(DropReason),
    /// Final, only meaningful from [`FaultRule::on_deliver`]: hold this copy
    /// and offer it again at the given (later) time.
    Defer(Instant),
}

/// A datagram being sent, as the rules see and shape it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Source endpoint (rules may rewrite it, e.g. NAT).
    pub src: SocketAddr,
    /// Destination endpoint (rules may rewrite it, e.g. NAT).
    pub dst: SocketAddr,
    /// Payload length in bytes.
    pub len: usize,
    /// When the sender emitted it.
    pub sent_at: Instant,
    /// Accumulated one-way delay: the copy arrives at `sent_at + delay`.
    pub delay: Duration,
    copies: [Duration; MAX_COPIES],
    n_copies: usize,
}

impl InFlight {
    /// A fresh datagram with no delay and no duplicate copies.
    pub fn new(src: SocketAddr, dst: SocketAddr, len: usize, sent_at: Instant) -> Self {
        InFlight {
            src,
            dst,
            len,
            sent_at,
            delay: Duration::ZERO,
            copies: [Duration::ZERO; MAX_COPIES],
            n_copies: 0,
        }
    }

    /// When the original copy arrives.
    pub fn arrival(&self) -> Instant {
        self.sent_at + self.delay
    }

    /// Schedules one extra copy arriving `gap` after the original; `false`
    /// if [`MAX_COPIES`] are already scheduled.
    pub fn add_copy(&mut self, gap: Duration) -> bool {
        match self.copies.get_mut(self.n_copies) {
            Some(slot) => {
                *slot = gap;
                self.n_copies += 1;
                true
            }
            None => false,
        }
    }

    /// Gaps (after the original's arrival) of the extra copies.
    pub fn copies(&self) -> &[Duration] {
        self.copies.get(..self.n_copies).unwrap_or(&[])
    }
}

/// A copy about to be handed to its receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// Source endpoint the receiver will see (rules may rewrite it).
    pub src: SocketAddr,
    /// Destination endpoint used for routing (rules may rewrite it).
    pub dst: SocketAddr,
    /// Payload length in bytes.
    pub len: usize,
    /// When the sender emitted it.
    pub sent_at: Instant,
}

/// One link-level fault, applied to every datagram.
pub trait FaultRule {
    /// Short name for reports and seed labels.
    fn name(&self) -> &'static str;

    /// Called once when a datagram is sent at `now` (== `pkt.sent_at`).
    fn on_send(&mut self, now: Instant, pkt: &mut InFlight) -> Verdict;

    /// Called for each copy when it reaches its receiver at `now`.
    fn on_deliver(&mut self, _now: Instant, _pkt: &mut Arrival) -> Verdict {
        Verdict::Continue
    }
}

/// An ordered list of rules; the first final verdict wins.
#[derive(Default)]
pub struct FaultChain {
    rules: Vec<Box<dyn FaultRule>>,
}

impl core::fmt::Debug for FaultChain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.rules.iter().map(|r| r.name()))
            .finish()
    }
}

impl FaultChain {
    /// A chain that lets everything through instantly.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a rule at the end of the chain.
    pub fn push(&mut self, rule: impl FaultRule + 'static) -> &mut Self {
        self.rules.push(Box::new(rule));
        self
    }

    /// Appends a rule at the end of the chain (builder style).
    pub fn with(mut self, rule: impl FaultRule + 'static) -> Self {
        self.push(rule);
        self
    }

    /// Appends every rule of `other`, in order.
    pub fn append(&mut self, other: FaultChain) -> &mut Self {
        self.rules.extend(other.rules);
        self
    }

    /// Names of the rules, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.rules.iter().map(|r| r.name()).collect()
    }

    /// Runs the send half of the chain. Returns the winning verdict
    /// (`Continue` if no rule gave one). `Defer` is not meaningful here and
    /// is treated as `Continue` by the engine.
    pub fn on_send(&mut self, now: Instant, pkt: &mut InFlight) -> Verdict {
        for r in &mut self.rules {
            match r.on_send(now, pkt) {
                Verdict::Continue => {}
                v => return v,
            }
        }
        Verdict::Continue
    }

    /// Runs the delivery half of the chain.
    pub fn on_deliver(&mut self, now: Instant, pkt: &mut Arrival) -> Verdict {
        for r in &mut self.rules {
            match r.on_deliver(now, pkt) {
                Verdict::Continue => {}
                v => return v,
            }
        }
        Verdict::Continue
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;
    use crate::node::node_addr;

    /// A datagram from node `a` to node `b` sent at `t_ms`.
    pub fn pkt(a: usize, b: usize, len: usize, t_ms: u64) -> InFlight {
        InFlight::new(node_addr(a), node_addr(b), len, Instant::from_millis(t_ms))
    }

    /// The arrival view of a datagram.
    pub fn arrival(p: &InFlight) -> Arrival {
        Arrival {
            src: p.src,
            dst: p.dst,
            len: p.len,
            sent_at: p.sent_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::pkt;
    use super::*;

    struct Fixed(&'static str, Verdict, Duration);
    impl FaultRule for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        fn on_send(&mut self, _now: Instant, p: &mut InFlight) -> Verdict {
            p.delay += self.2;
            self.1
        }
    }

    #[test]
    fn first_final_verdict_wins() {
        let ms = Duration::from_millis;
        let mut c = FaultChain::new()
            .with(Fixed("a", Verdict::Continue, ms(1)))
            .with(Fixed("b", Verdict::Drop(DropReason::Loss), ms(10)))
            .with(Fixed("c", Verdict::Drop(DropReason::Mtu), ms(100)));
        let mut p = pkt(0, 1, 10, 0);
        assert_eq!(
            c.on_send(Instant::ZERO, &mut p),
            Verdict::Drop(DropReason::Loss)
        );
        assert_eq!(p.delay, ms(11), "rule c must not have run");
        assert_eq!(c.names(), ["a", "b", "c"]);

        let mut c = FaultChain::new()
            .with(Fixed("a", Verdict::Deliver, ms(1)))
            .with(Fixed("b", Verdict::Drop(DropReason::Loss), ms(10)));
        let mut p = pkt(0, 1, 10, 0);
        assert_eq!(c.on_send(Instant::ZERO, &mut p), Verdict::Deliver);
        assert_eq!(p.delay, ms(1));

        let mut empty = FaultChain::new();
        assert_eq!(empty.on_send(Instant::ZERO, &mut p), Verdict::Continue);
    }

    #[test]
    fn copies_are_bounded() {
        let mut p = pkt(0, 1, 10, 0);
        for i in 0..MAX_COPIES {
            assert!(p.add_copy(Duration::from_millis(i as u64)));
        }
        assert!(!p.add_copy(Duration::ZERO));
        assert_eq!(p.copies().len(), MAX_COPIES);
    }

    #[test]
    fn drop_reason_indices_match_all() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}
