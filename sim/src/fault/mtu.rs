//! Path MTU: datagrams whose UDP payload exceeds the limit are dropped
//! (no fragmentation, as with the don't-fragment bit set).

use pilot_proto::time::Instant;

use super::{DropReason, FaultRule, InFlight, Verdict};

/// Drops datagrams with a payload longer than `max_payload` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Mtu {
    max_payload: usize,
}

impl Mtu {
    /// Limit on the UDP payload size, in bytes (IP and UDP headers are not
    /// counted).
    pub fn new(max_payload: usize) -> Self {
        Mtu { max_payload }
    }
}

impl FaultRule for Mtu {
    fn name(&self) -> &'static str {
        "mtu"
    }

    fn on_send(&mut self, _now: Instant, pkt: &mut InFlight) -> Verdict {
        if pkt.len > self.max_payload {
            Verdict::Drop(DropReason::Mtu)
        } else {
            Verdict::Continue
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::pkt;
    use super::*;

    #[test]
    fn drops_only_above_the_limit() {
        let mut m = Mtu::new(1200);
        for (len, dropped) in [
            (0, false),
            (1199, false),
            (1200, false),
            (1201, true),
            (9000, true),
        ] {
            let mut p = pkt(0, 1, len, 0);
            let v = m.on_send(p.sent_at, &mut p);
            assert_eq!(v == Verdict::Drop(DropReason::Mtu), dropped, "len {len}");
        }
    }
}
