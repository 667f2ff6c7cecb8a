//! NAT boxes: address and port translation between a private group of
//! endpoints and one public IP, with the mapping and filtering behaviours
//! of RFC 4787 (§4.1 mapping, §5 filtering).
//!
//! On send, a datagram from an inside endpoint to an outside one gets its
//! source rewritten to `public_ip:port` from a binding (created on first
//! use, refreshed by every outbound datagram, expired after `timeout`
//! without outbound traffic). On arrival, a datagram addressed to the
//! public IP is translated back to the private endpoint if a live binding
//! exists and the filter admits the sender; otherwise it is dropped as
//! [`DropReason::Filtered`]. Hairpinning (an inside host reaching another
//! inside host through the public address) works because both halves run.
//!
//! Port allocation is sequential from `first_port`, so mappings are
//! predictable in tests. Put NAT rules at the start of the chain, so the
//! other rules see translated addresses on arrival.

use core::time::Duration;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use pilot_proto::time::Instant;

use super::partition::Group;
use super::{Arrival, DropReason, FaultRule, InFlight, Verdict};
use crate::hashing::{EndpointKey, FastMap};

/// How outbound bindings are chosen (RFC 4787 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatMapping {
    /// One public port per private endpoint, whatever the destination
    /// ("cone" NATs).
    EndpointIndependent,
    /// One public port per (private endpoint, destination endpoint)
    /// ("symmetric" NATs).
    AddressAndPortDependent,
}

/// Which outside senders may use a binding (RFC 4787 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatFiltering {
    /// Anyone ("full cone").
    EndpointIndependent,
    /// Only IPs the inside host has sent to ("restricted cone").
    AddressDependent,
    /// Only endpoints the inside host has sent to ("port-restricted").
    AddressAndPortDependent,
}

#[derive(Debug)]
struct Binding {
    private: SocketAddr,
    expires: Instant,
    contacted: HashSet<SocketAddr>,
}

/// One NAT box; see the module docs.
#[derive(Debug)]
pub struct Nat {
    public_ip: IpAddr,
    inside: Group,
    mapping: NatMapping,
    filtering: NatFiltering,
    timeout: Duration,
    next_port: Option<u16>,
    by_flow: FastMap<(EndpointKey, Option<EndpointKey>), u16>,
    by_port: FastMap<u16, Binding>,
    /// Instants at which the box forgets every binding (a NAT reboot or
    /// an ISP rebinding), in order.
    rebinds: Vec<Instant>,
    /// Bindings forgotten by rebinds so far.
    pub rebound: u64,
    /// A rebind happens whenever this counter moves (set by a script).
    trigger: Option<(std::sync::Arc<std::sync::atomic::AtomicU64>, u64)>,
}

impl Nat {
    /// A NAT for the endpoints in `inside`, translating to `public_ip`,
    /// allocating ports upward from `first_port`, expiring idle bindings
    /// after `timeout`.
    pub fn new(
        public_ip: IpAddr,
        inside: Group,
        mapping: NatMapping,
        filtering: NatFiltering,
        first_port: u16,
        timeout: Duration,
    ) -> Self {
        Nat {
            public_ip,
            inside,
            mapping,
            filtering,
            timeout,
            next_port: Some(first_port),
            by_flow: FastMap::default(),
            by_port: FastMap::default(),
            rebinds: Vec::new(),
            rebound: 0,
            trigger: None,
        }
    }

    /// The box forgets every binding whenever `counter` grows (a script
    /// triggers NAT rebinding at a moment of its choice).
    pub fn with_trigger(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        let seen = counter.load(std::sync::atomic::Ordering::Relaxed);
        self.trigger = Some((counter, seen));
        self
    }

    /// The box forgets every binding at each of `at` (the next outbound
    /// datagram gets a new public port): NAT rebinding.
    pub fn with_rebinds(mut self, mut at: Vec<Instant>) -> Self {
        at.sort();
        at.reverse();
        self.rebinds = at;
        self
    }

    fn rebind_due(&mut self, now: Instant) {
        let mut forget = false;
        if let Some((c, seen)) = self.trigger.as_mut() {
            let v = c.load(std::sync::atomic::Ordering::Relaxed);
            if v != *seen {
                *seen = v;
                forget = true;
            }
        }
        if forget {
            self.rebound += self.by_port.len() as u64;
            self.by_flow.clear();
            self.by_port.clear();
        }
        while self.rebinds.last().is_some_and(|t| *t <= now) {
            self.rebinds.pop();
            self.rebound += self.by_port.len() as u64;
            self.by_flow.clear();
            self.by_port.clear();
        }
    }

    fn is_inside(&self, a: &SocketAddr) -> bool {
        a.ip() != self.public_ip && self.inside.contains(a)
    }

    /// The public endpoint for `private` talking to `remote` at `now`,
    /// creating or refreshing the binding; `None` if ports ran out.
    fn outbound(&mut self, now: Instant, private: SocketAddr, remote: SocketAddr) -> Option<u16> {
        let flow = (
            EndpointKey::of(&private),
            match self.mapping {
                NatMapping::EndpointIndependent => None,
                NatMapping::AddressAndPortDependent => Some(EndpointKey::of(&remote)),
            },
        );
        let live = self
            .by_flow
            .get(&flow)
            .copied()
            .filter(|p| self.by_port.get(p).is_some_and(|b| b.expires > now));
        let port = match live {
            Some(p) => p,
            None => {
                let p = self.next_port?;
                self.next_port = p.checked_add(1);
                self.by_flow.insert(flow, p);
                self.by_port.insert(
                    p,
                    Binding {
                        private,
                        expires: now,
                        contacted: HashSet::new(),
                    },
                );
                p
            }
        };
        if let Some(b) = self.by_port.get_mut(&port) {
            b.expires = now + self.timeout;
            b.contacted.insert(remote);
        }
        Some(port)
    }

    /// The private endpoint a datagram from `remote` to our `port` goes
    /// to, if the binding is live and the filter admits it.
    fn inbound(&self, now: Instant, port: u16, remote: &SocketAddr) -> Option<SocketAddr> {
        let b = self.by_port.get(&port)?;
        if b.expires <= now {
            return None;
        }
        let admitted = match self.filtering {
            NatFiltering::EndpointIndependent => true,
            NatFiltering::AddressDependent => b.contacted.iter().any(|c| c.ip() == remote.ip()),
            NatFiltering::AddressAndPortDependent => b.contacted.contains(remote),
        };
        admitted.then_some(b.private)
    }
}

impl FaultRule for Nat {
    fn name(&self) -> &'static str {
        "nat"
    }

    fn on_send(&mut self, now: Instant, pkt: &mut InFlight) -> Verdict {
        self.rebind_due(now);
        if self.is_inside(&pkt.src) && !self.is_inside(&pkt.dst) {
            match self.outbound(now, pkt.src, pkt.dst) {
                Some(port) => pkt.src = SocketAddr::new(self.public_ip, port),
                None => return Verdict::Drop(DropReason::Filtered),
            }
        }
        Verdict::Continue
    }

    fn on_deliver(&mut self, now: Instant, pkt: &mut Arrival) -> Verdict {
        self.rebind_due(now);
        if pkt.dst.ip() != self.public_ip {
            return Verdict::Continue;
        }
        match self.inbound(now, pkt.dst.port(), &pkt.src) {
            Some(private) => {
                pkt.dst = private;
                Verdict::Continue
            }
            None => Verdict::Drop(DropReason::Filtered),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn nat(mapping: NatMapping, filtering: NatFiltering) -> Nat {
        Nat::new(
            "10.201.0.1".parse().unwrap(),
            Group::of([a("192.168.0.2:4000"), a("192.168.0.3:4000")]),
            mapping,
            filtering,
            40_000,
            Duration::from_secs(30),
        )
    }

    fn out(n: &mut Nat, t: u64, src: &str, dst: &str) -> InFlight {
        let mut p = InFlight::new(a(src), a(dst), 10, Instant::from_millis(t));
        assert_eq!(n.on_send(p.sent_at, &mut p), Verdict::Continue);
        p
    }

    fn inb(n: &mut Nat, t: u64, src: &str, dst: &str) -> Result<SocketAddr, DropReason> {
        let mut arr = Arrival {
            src: a(src),
            dst: a(dst),
            len: 10,
            sent_at: Instant::ZERO,
        };
        match n.on_deliver(Instant::from_millis(t), &mut arr) {
            Verdict::Continue => Ok(arr.dst),
            Verdict::Drop(r) => Err(r),
            v => panic!("{v:?}"),
        }
    }

    const PUB: &str = "10.201.0.1:40000";

    #[test]
    fn endpoint_independent_mapping_reuses_the_port() {
        let mut n = nat(
            NatMapping::EndpointIndependent,
            NatFiltering::EndpointIndependent,
        );
        let p1 = out(&mut n, 0, "192.168.0.2:4000", "10.100.0.1:1");
        let p2 = out(&mut n, 1, "192.168.0.2:4000", "10.100.0.2:7");
        assert_eq!(p1.src, a(PUB));
        assert_eq!(p2.src, a(PUB));
        let other = out(&mut n, 2, "192.168.0.3:4000", "10.100.0.1:1");
        assert_eq!(other.src, a("10.201.0.1:40001"));
    }

    #[test]
    fn symmetric_mapping_uses_a_port_per_destination() {
        let mut n = nat(
            NatMapping::AddressAndPortDependent,
            NatFiltering::AddressAndPortDependent,
        );
        let p1 = out(&mut n, 0, "192.168.0.2:4000", "10.100.0.1:1");
        let p2 = out(&mut n, 1, "192.168.0.2:4000", "10.100.0.2:7");
        let p3 = out(&mut n, 2, "192.168.0.2:4000", "10.100.0.1:1");
        assert_eq!(p1.src, a(PUB));
        assert_eq!(p2.src, a("10.201.0.1:40001"));
        assert_eq!(p3.src, p1.src);
    }

    #[test]
    fn filtering_modes_admit_the_right_senders() {
        let private = a("192.168.0.2:4000");
        for (f, same_ip_other_port, stranger) in [
            (NatFiltering::EndpointIndependent, true, true),
            (NatFiltering::AddressDependent, true, false),
            (NatFiltering::AddressAndPortDependent, false, false),
        ] {
            let mut n = nat(NatMapping::EndpointIndependent, f);
            assert_eq!(
                inb(&mut n, 0, "10.100.0.1:1", PUB),
                Err(DropReason::Filtered)
            );
            out(&mut n, 1, "192.168.0.2:4000", "10.100.0.1:1");
            assert_eq!(inb(&mut n, 2, "10.100.0.1:1", PUB), Ok(private), "{f:?}");
            assert_eq!(
                inb(&mut n, 2, "10.100.0.1:2", PUB).is_ok(),
                same_ip_other_port
            );
            assert_eq!(inb(&mut n, 2, "10.100.0.9:1", PUB).is_ok(), stranger);
            // Unknown public port: always filtered.
            assert!(inb(&mut n, 2, "10.100.0.1:1", "10.201.0.1:50000").is_err());
        }
    }

    #[test]
    fn bindings_expire_without_outbound_traffic_and_refresh_with_it() {
        let mut n = nat(
            NatMapping::EndpointIndependent,
            NatFiltering::AddressAndPortDependent,
        );
        out(&mut n, 0, "192.168.0.2:4000", "10.100.0.1:1");
        assert!(inb(&mut n, 29_999, "10.100.0.1:1", PUB).is_ok());
        // Inbound traffic does not refresh.
        assert!(inb(&mut n, 30_000, "10.100.0.1:1", PUB).is_err());
        // A new outbound datagram makes a fresh binding (next port).
        let p = out(&mut n, 30_001, "192.168.0.2:4000", "10.100.0.1:1");
        assert_eq!(p.src, a("10.201.0.1:40001"));
        // Refreshed by outbound traffic: still live 50 s later.
        out(&mut n, 50_000, "192.168.0.2:4000", "10.100.0.1:1");
        assert!(inb(&mut n, 79_000, "10.100.0.1:1", "10.201.0.1:40001").is_ok());
    }

    #[test]
    fn inside_to_inside_is_untouched_and_hairpin_works() {
        let mut n = nat(
            NatMapping::EndpointIndependent,
            NatFiltering::EndpointIndependent,
        );
        let p = out(&mut n, 0, "192.168.0.2:4000", "192.168.0.3:4000");
        assert_eq!(p.src, a("192.168.0.2:4000"));
        // .3 gets a binding by talking outside; .2 reaches it via the public address.
        out(&mut n, 1, "192.168.0.3:4000", "10.100.0.1:1");
        let h = out(&mut n, 2, "192.168.0.2:4000", PUB);
        assert_eq!(h.src, a("10.201.0.1:40001"));
        assert_eq!(
            inb(&mut n, 3, "10.201.0.1:40001", PUB),
            Ok(a("192.168.0.3:4000"))
        );
    }

    #[test]
    fn rebinding_forgets_bindings_and_moves_the_port() {
        let mut n = nat(
            NatMapping::EndpointIndependent,
            NatFiltering::EndpointIndependent,
        )
        .with_rebinds(vec![Instant::from_millis(1_000)]);
        let p = out(&mut n, 0, "192.168.0.2:4000", "10.100.0.1:1");
        assert_eq!(p.src, a(PUB));
        assert!(inb(&mut n, 999, "10.100.0.1:1", PUB).is_ok());
        assert!(inb(&mut n, 1_000, "10.100.0.1:1", PUB).is_err());
        let q = out(&mut n, 1_001, "192.168.0.2:4000", "10.100.0.1:1");
        assert_eq!(q.src, a("10.201.0.1:40001"));
        assert_eq!(n.rebound, 1);
    }

    #[test]
    fn port_exhaustion_filters_instead_of_wrapping() {
        let mut n = Nat::new(
            "10.201.0.1".parse().unwrap(),
            Group::of([a("192.168.0.2:4000")]),
            NatMapping::AddressAndPortDependent,
            NatFiltering::EndpointIndependent,
            u16::MAX,
            Duration::from_secs(30),
        );
        out(&mut n, 0, "192.168.0.2:4000", "10.100.0.1:1");
        let mut p = InFlight::new(a("192.168.0.2:4000"), a("10.100.0.2:1"), 10, Instant::ZERO);
        assert_eq!(
            n.on_send(Instant::ZERO, &mut p),
            Verdict::Drop(DropReason::Filtered)
        );
    }
}
