//! The node's single timer table: every deadline the node has (session
//! key-exchange retransmissions, keepalive sweeps, ping expiries, one per
//! stream connection) is an entry keyed by its [`TimeoutReason`]. The node
//! answers `poll_timeout` with [`TimerTable::next`] and, on
//! `handle_timeout`, handles the keys [`TimerTable::expire`] returns.

use std::collections::{BTreeMap, BTreeSet};

use crate::time::Instant;

/// Why the node wants to be woken up. Also the key of a timer entry: each
/// reason has at most one deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimeoutReason {
    /// The session table (key-exchange retransmission or give-up).
    Session,
    /// The periodic NAT-keepalive and peer-liveness sweep
    /// (`spec/node.md` §7).
    Keepalive,
    /// An outstanding ping expires (its ping id).
    Ping(u32),
    /// A stream connection's own timer (its connection id).
    Conn(u64),
}

/// A set of deadlines, one per key, ordered by time then key.
#[derive(Debug, Default, Clone)]
pub struct TimerTable {
    by_key: BTreeMap<TimeoutReason, Instant>,
    by_time: BTreeSet<(Instant, TimeoutReason)>,
}

impl TimerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or moves) the deadline of `key` to `at`.
    pub fn set(&mut self, key: TimeoutReason, at: Instant) {
        match self.by_key.get_mut(&key) {
            // Unchanged (the common case: a connection's timer is
            // refreshed on every packet): nothing to move.
            Some(old) if *old == at => return,
            Some(old) => {
                self.by_time.remove(&(*old, key));
                *old = at;
            }
            None => {
                self.by_key.insert(key, at);
            }
        }
        self.by_time.insert((at, key));
    }

    /// Sets `key` to `at`, or cancels it when `at` is `None`.
    pub fn set_opt(&mut self, key: TimeoutReason, at: Option<Instant>) {
        match at {
            Some(t) => self.set(key, t),
            None => {
                self.cancel(key);
            }
        }
    }

    /// Removes `key`; returns whether it was set.
    pub fn cancel(&mut self, key: TimeoutReason) -> bool {
        match self.by_key.remove(&key) {
            Some(at) => {
                self.by_time.remove(&(at, key));
                true
            }
            None => false,
        }
    }

    /// The deadline of `key`, if set.
    pub fn get(&self, key: TimeoutReason) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline and its reason.
    pub fn next(&self) -> Option<(Instant, TimeoutReason)> {
        self.by_time.first().copied()
    }

    /// Removes and returns every entry due at `now` (deadline ≤ `now`), in
    /// deadline order.
    pub fn expire(&mut self, now: Instant) -> Vec<TimeoutReason> {
        let mut out = Vec::new();
        while let Some(&(at, key)) = self.by_time.first() {
            if at > now {
                break;
            }
            self.by_time.remove(&(at, key));
            self.by_key.remove(&key);
            out.push(key);
        }
        out
    }

    /// Number of armed entries.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Instant {
        Instant::from_millis(n)
    }

    #[test]
    fn next_is_the_earliest_and_moves_with_set() {
        let mut t = TimerTable::new();
        assert_eq!(t.next(), None);
        t.set(TimeoutReason::Keepalive, ms(50));
        t.set(TimeoutReason::Conn(3), ms(20));
        assert_eq!(t.next(), Some((ms(20), TimeoutReason::Conn(3))));
        t.set(TimeoutReason::Conn(3), ms(80));
        assert_eq!(t.next(), Some((ms(50), TimeoutReason::Keepalive)));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn cancel_removes_only_that_key() {
        let mut t = TimerTable::new();
        t.set(TimeoutReason::Ping(1), ms(10));
        t.set(TimeoutReason::Ping(2), ms(10));
        assert!(t.cancel(TimeoutReason::Ping(1)));
        assert!(!t.cancel(TimeoutReason::Ping(1)));
        assert_eq!(t.next(), Some((ms(10), TimeoutReason::Ping(2))));
        t.set_opt(TimeoutReason::Ping(2), None);
        assert!(t.is_empty());
    }

    #[test]
    fn expire_returns_due_entries_in_order_and_keeps_the_rest() {
        let mut t = TimerTable::new();
        t.set(TimeoutReason::Session, ms(30));
        t.set(TimeoutReason::Conn(1), ms(10));
        t.set(TimeoutReason::Keepalive, ms(40));
        assert_eq!(t.expire(ms(5)), vec![]);
        assert_eq!(
            t.expire(ms(30)),
            vec![TimeoutReason::Conn(1), TimeoutReason::Session]
        );
        assert_eq!(t.get(TimeoutReason::Keepalive), Some(ms(40)));
        assert_eq!(t.len(), 1);
    }
}
