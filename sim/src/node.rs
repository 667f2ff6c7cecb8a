//! The contract a simulated node fulfils.
//!
//! [`SimNode`] mirrors the sans-IO contract of `pilot_proto` (DESIGN §3):
//! inputs are `handle_*` calls, outputs are `poll_*` calls, and after every
//! input the engine drains `poll_transmit` and `poll_event` until they
//! return `None`, then asks `poll_timeout` when to call back. The protocol
//! node plugs in with a thin impl of this trait.

use core::fmt::Debug;
use core::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use pilot_proto::time::Instant;

/// One datagram written by [`SimNode::poll_transmit`] into the engine's
/// buffer: `len` bytes at the start of the buffer, addressed to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination UDP endpoint (a label inside the simulator).
    pub dst: SocketAddr,
    /// Number of bytes written at the start of the buffer.
    pub len: usize,
}

/// A node the simulator can drive. See the module docs for the call rules.
pub trait SimNode {
    /// What the node reports to the application. Events enter the trace
    /// hash through their [`Hash`] impl (fed to SHA-256), so that impl must
    /// depend only on the event's value (derived impls do; note they encode
    /// `usize` and enum discriminants natively, so hashes are comparable
    /// between runs on the same platform). They are shown with [`Debug`]
    /// in failure details.
    type Event: Hash + Debug;

    /// A datagram from `from` arrived at virtual time `now`.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);

    /// The timer the node asked for (or a spurious wake-up) fired.
    fn handle_timeout(&mut self, now: Instant);

    /// Writes the next outgoing datagram into `buf`, if any.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;

    /// When the node next wants [`SimNode::handle_timeout`], if ever.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The next event for the application, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;
}

/// Boxed nodes of different concrete types can share one simulation as
/// long as they report the same event type (e.g. daemons, a registry and a
/// beacon in one network).
impl<E: Hash + Debug> SimNode for Box<dyn SimNode<Event = E>> {
    type Event = E;

    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        (**self).handle_datagram(now, from, bytes)
    }

    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now)
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        (**self).poll_transmit(now, buf)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }

    fn poll_event(&mut self) -> Option<E> {
        (**self).poll_event()
    }
}

/// Index of a node inside one simulation, in the order nodes were added.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

/// UDP port every simulated node listens on (a label, never a real port).
pub const SIM_PORT: u16 = 4000;

/// The conventional endpoint of node number `index`: `10.a.b.c:4000` where
/// `a.b.c` is `index + 1` in base 256. Purely a label inside the simulator.
pub fn node_addr(index: usize) -> SocketAddr {
    let n = (index as u32).wrapping_add(1) & 0x00ff_ffff;
    let [_, a, b, c] = n.to_be_bytes();
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, a, b, c)), SIM_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_distinct_private_labels() {
        assert_eq!(node_addr(0).to_string(), "10.0.0.1:4000");
        assert_eq!(node_addr(255).to_string(), "10.0.1.0:4000");
        let set: std::collections::HashSet<_> = (0..1000).map(node_addr).collect();
        assert_eq!(set.len(), 1000);
    }
}
