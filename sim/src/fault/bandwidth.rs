//! Bandwidth limit with a bounded FIFO queue per sender uplink.
//!
//! Each source endpoint has one uplink of `bytes_per_sec`. A datagram
//! entering the uplink waits for the datagrams ahead of it, then takes
//! `len / rate` to serialise; its delay grows by (wait + serialisation).
//! If the bytes already queued plus this datagram exceed `queue_bytes`, it
//! is tail-dropped.

use crate::hashing::FastMap;
use core::time::Duration;
use std::net::SocketAddr;

use pilot_proto::time::Instant;

use super::{DropReason, FaultRule, InFlight, Verdict};

/// Uplink rate limit with tail drop; see the module docs.
#[derive(Debug)]
pub struct Bandwidth {
    bytes_per_sec: u64,
    queue_bytes: u64,
    busy_until: FastMap<SocketAddr, Instant>,
}

impl Bandwidth {
    /// A rate of `bytes_per_sec` (at least 1) and a queue bound in bytes.
    pub fn new(bytes_per_sec: u64, queue_bytes: u64) -> Self {
        Bandwidth {
            bytes_per_sec: bytes_per_sec.max(1),
            queue_bytes,
            busy_until: FastMap::default(),
        }
    }

    fn tx_time(&self, bytes: u64) -> Duration {
        let ns = u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    fn backlog_bytes(&self, wait: Duration) -> u64 {
        let b = wait.as_nanos() * u128::from(self.bytes_per_sec) / 1_000_000_000;
        u64::try_from(b).unwrap_or(u64::MAX)
    }
}

impl FaultRule for Bandwidth {
    fn name(&self) -> &'static str {
        "bandwidth"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        let enter = pkt.arrival();
        let busy = self
            .busy_until
            .get(&pkt.src)
            .copied()
            .unwrap_or(enter)
            .max(enter);
        let wait = busy.saturating_duration_since(enter);
        let len = pkt.len as u64;
        if self.backlog_bytes(wait).saturating_add(len) > self.queue_bytes {
            return Verdict::Drop(DropReason::QueueFull);
        }
        let done = busy + self.tx_time(len);
        self.busy_until.insert(pkt.src, done);
        pkt.delay = done.saturating_duration_since(pkt.sent_at);
        Verdict::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::pkt;
    use super::*;

    #[test]
    fn serialisation_delay_matches_rate() {
        // 1 MB/s: 1000 bytes take 1 ms.
        let mut b = Bandwidth::new(1_000_000, 1_000_000);
        let mut p = pkt(0, 1, 1000, 0);
        assert_eq!(b.on_send(p.sent_at, &mut p), Verdict::Continue);
        assert_eq!(p.delay, Duration::from_millis(1));
        // A second one at the same instant waits for the first.
        let mut q = pkt(0, 1, 1000, 0);
        b.on_send(q.sent_at, &mut q);
        assert_eq!(q.delay, Duration::from_millis(2));
        // After the link drained, no waiting again.
        let mut r = pkt(0, 2, 500, 10);
        b.on_send(r.sent_at, &mut r);
        assert_eq!(r.delay, Duration::from_micros(500));
    }

    #[test]
    fn throughput_is_capped_and_tail_drop_bounds_the_queue() {
        // 1 MB/s, 10 kB queue; offer 2 MB/s for one second.
        let mut b = Bandwidth::new(1_000_000, 10_000);
        let (mut delivered, mut dropped, mut last) = (0u64, 0u64, Instant::ZERO);
        for i in 0..2000u64 {
            let mut p = InFlight::new(
                crate::node::node_addr(0),
                crate::node::node_addr(1),
                1000,
                Instant::from_nanos(i * 500_000),
            );
            match b.on_send(p.sent_at, &mut p) {
                Verdict::Continue => {
                    delivered += 1;
                    // Queueing delay never exceeds queue size / rate (+1 packet).
                    assert!(p.delay <= Duration::from_millis(11), "{:?}", p.delay);
                    last = last.max(p.arrival());
                }
                Verdict::Drop(DropReason::QueueFull) => dropped += 1,
                v => panic!("{v:?}"),
            }
        }
        // Roughly half gets through: ~1000 kB in ~1 s.
        assert!((990..=1020).contains(&delivered), "delivered {delivered}");
        assert_eq!(delivered + dropped, 2000);
        assert!(last <= Instant::from_millis(1011));
    }

    #[test]
    fn senders_have_independent_uplinks() {
        let mut b = Bandwidth::new(1_000_000, 1_000_000);
        let mut p = pkt(0, 2, 1000, 0);
        b.on_send(p.sent_at, &mut p);
        let mut q = pkt(1, 2, 1000, 0);
        b.on_send(q.sent_at, &mut q);
        assert_eq!(q.delay, Duration::from_millis(1));
    }

    #[test]
    fn oversized_datagram_for_the_queue_is_dropped() {
        let mut b = Bandwidth::new(1_000_000, 500);
        let mut p = pkt(0, 1, 501, 0);
        assert_eq!(
            b.on_send(p.sent_at, &mut p),
            Verdict::Drop(DropReason::QueueFull)
        );
    }
}
