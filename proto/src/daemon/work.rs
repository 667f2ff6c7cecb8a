//! Disk work the daemon asked its driver for (`spec/daemon.md` §1.1): the
//! part that hands out [`WorkToken`]s and remembers which data-exchange
//! connection waits for which write.
//!
//! A received file or inbox record is acknowledged to its sender only after
//! the write succeeded, so its connection waits on the token until
//! [`super::Daemon::disk_done`]; other writes (trust store, profile, task
//! files) have nobody waiting. Invariants (checked by [`DiskJobs::check`]):
//! tokens are handed out once, in increasing order, and every waiting entry
//! names a token already handed out. Outcomes the driver reports twice, or
//! for tokens never handed out, find no waiter and change nothing.

use std::collections::BTreeMap;

use crate::node::ConnId;

use super::{DiskWork, DiskWrite, WorkToken};

/// Outstanding disk work (see the module docs).
#[derive(Debug)]
pub(super) struct DiskJobs {
    next: u64,
    /// Writes a data-exchange connection waits for, by token.
    waiting: BTreeMap<WorkToken, ConnId>,
}

impl DiskJobs {
    pub(super) fn new() -> Self {
        DiskJobs {
            next: 1,
            waiting: BTreeMap::new(),
        }
    }

    /// New work for `write`; `waiter` is the connection to answer once it
    /// is done (`None`: nobody waits).
    pub(super) fn request(&mut self, write: DiskWrite, waiter: Option<ConnId>) -> DiskWork {
        let token = WorkToken(self.next);
        self.next = self.next.saturating_add(1);
        if let Some(conn) = waiter {
            self.waiting.insert(token, conn);
        }
        DiskWork { token, write }
    }

    /// The driver finished `token`: the connection waiting for it, once.
    pub(super) fn finished(&mut self, token: WorkToken) -> Option<ConnId> {
        self.waiting.remove(&token)
    }

    /// Writes a connection still waits for.
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Asserts the invariants (tests and the daemon's `check_invariants`).
    #[cfg(test)]
    pub(super) fn check(&self) {
        assert!(self.next >= 1, "token 0 is never handed out");
        assert!(
            self.waiting.keys().all(|t| t.0 >= 1 && t.0 < self.next),
            "a waiter names a token not handed out: {:?} (next {})",
            self.waiting.keys().collect::<Vec<_>>(),
            self.next
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: u64) -> ConnId {
        ConnId(n)
    }

    #[test]
    fn tokens_increase_and_a_waiter_is_answered_once() {
        let mut j = DiskJobs::new();
        let a = j.request(DiskWrite::Trust("{}".into()), None);
        let b = j.request(
            DiskWrite::Inbox {
                name: "m".into(),
                json: "{}".into(),
            },
            Some(conn(7)),
        );
        let c = j.request(DiskWrite::Profile("{}".into()), None);
        assert!(a.token < b.token && b.token < c.token);
        assert_eq!(j.waiting(), 1);
        j.check();
        // Nobody waits for the trust store.
        assert_eq!(j.finished(a.token), None);
        assert_eq!(j.finished(b.token), Some(conn(7)));
        // Reported twice, or never handed out: nothing.
        assert_eq!(j.finished(b.token), None);
        assert_eq!(j.finished(WorkToken(999)), None);
        assert_eq!(j.waiting(), 0);
        j.check();
    }
}
