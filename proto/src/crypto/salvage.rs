//! The salvage ring of one session (`spec/crypto.md` §6.4): the last
//! [`SALVAGE_SLOTS`] plaintexts sent, each usable for [`SALVAGE_MAX_AGE`].
//! When a key exchange replaces the session with one under a different
//! peer key, the fresh entries are sealed again and resent once.
//!
//! Slot buffers are reused, so after warm-up recording a packet does not
//! allocate.

use super::params::{SALVAGE_MAX_AGE, SALVAGE_SLOTS};
use crate::time::Instant;

#[derive(Debug, Default, Clone)]
struct Slot {
    at: Instant,
    used: bool,
    data: Vec<u8>,
}

/// A ring of recent plaintexts.
#[derive(Debug, Default, Clone)]
pub struct SalvageRing {
    slots: [Slot; SALVAGE_SLOTS],
    next: usize,
}

impl SalvageRing {
    /// An empty ring.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers a copy of `packet`, overwriting the oldest entry.
    pub fn record(&mut self, now: Instant, packet: &[u8]) {
        if let Some(slot) = self.slots.get_mut(self.next) {
            slot.data.clear();
            slot.data.extend_from_slice(packet);
            slot.at = now;
            slot.used = true;
        }
        self.next = (self.next + 1) % SALVAGE_SLOTS;
    }

    /// Removes and returns the entries at most [`SALVAGE_MAX_AGE`] old,
    /// oldest first, leaving the ring empty.
    pub fn take_fresh(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..SALVAGE_SLOTS {
            let idx = (self.next + i) % SALVAGE_SLOTS;
            if let Some(slot) = self.slots.get_mut(idx) {
                if slot.used && now.saturating_duration_since(slot.at) <= SALVAGE_MAX_AGE {
                    out.push(core::mem::take(&mut slot.data));
                }
                slot.used = false;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    #[test]
    fn keeps_last_four_fresh_in_order() {
        let mut r = SalvageRing::new();
        let t0 = Instant::from_millis(1000);
        for i in 0..6u8 {
            r.record(t0 + Duration::from_secs(u64::from(i)), &[i]);
        }
        // Entries 2..=5 remain in the ring; at t0+8 s entry 2 is 6 s old
        // (stale) and entry 3 exactly 5 s (still fresh).
        let now = t0 + Duration::from_secs(8);
        assert_eq!(r.take_fresh(now), vec![vec![3], vec![4], vec![5]]);
        assert!(r.take_fresh(now).is_empty());
        r.record(now, b"z");
        assert_eq!(r.take_fresh(now), vec![b"z".to_vec()]);
    }
}
