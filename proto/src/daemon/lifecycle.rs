//! The daemon's lifecycle (`spec/daemon.md` §8): which phase it is in and
//! what exists in each. The node, its address and the trust store exist
//! only from the moment the address is known ([`Lifecycle::Running`]);
//! before that the parts the node will be built from wait in
//! [`Lifecycle::Starting`]. A graceful stop drains
//! ([`Lifecycle::Draining`]: FINs sent, deregistration maybe in flight,
//! a deadline) and ends in [`Lifecycle::Stopped`], announced once.
//!
//! Transitions (the only ones): `Starting → Running` ([`Lifecycle::start`]),
//! `Starting | Running → Draining` ([`Lifecycle::drain`]),
//! `Draining → Stopped` ([`Lifecycle::finish_if`]). A stop begun before
//! the address was known drops the seed: the node never starts.
//!
//! Generic over the seed `S` and the running parts `L` so its rules are
//! tested without a node.

use crate::time::Instant;

/// The phase of the daemon and what it owns (module docs).
#[derive(Debug)]
pub(crate) enum Lifecycle<S, L> {
    /// No address yet (waiting for the registration): the node's parts.
    Starting(S),
    /// The node runs at its address.
    Running(L),
    /// A graceful stop is under way.
    Draining {
        /// The running parts, if the node had started.
        live: Option<L>,
        /// When the stop completes whatever is still open.
        deadline: Instant,
        /// The deregistration is still unanswered.
        deregistering: bool,
    },
    /// Stopped.
    Stopped {
        /// The running parts, if the node had started (diagnostics).
        live: Option<L>,
        /// [`super::DaemonEvent::Stopped`] was given.
        announced: bool,
    },
}

impl<S, L> Lifecycle<S, L> {
    /// The running parts, in any phase that has them.
    pub fn live(&self) -> Option<&L> {
        match self {
            Lifecycle::Starting(_) => None,
            Lifecycle::Running(l) => Some(l),
            Lifecycle::Draining { live, .. } | Lifecycle::Stopped { live, .. } => live.as_ref(),
        }
    }

    /// The running parts, mutably.
    pub fn live_mut(&mut self) -> Option<&mut L> {
        match self {
            Lifecycle::Starting(_) => None,
            Lifecycle::Running(l) => Some(l),
            Lifecycle::Draining { live, .. } | Lifecycle::Stopped { live, .. } => live.as_mut(),
        }
    }

    /// `Starting → Running` with what `build` makes of the seed. Returns
    /// whether it happened (in any other phase nothing changes).
    pub fn start(&mut self, build: impl FnOnce(S) -> L) -> bool {
        if !matches!(self, Lifecycle::Starting(_)) {
            return false;
        }
        let placeholder = Lifecycle::Stopped {
            live: None,
            announced: true,
        };
        match core::mem::replace(self, placeholder) {
            Lifecycle::Starting(seed) => {
                *self = Lifecycle::Running(build(seed));
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// A graceful stop was asked for (draining or stopped).
    pub fn is_stopping(&self) -> bool {
        matches!(self, Lifecycle::Draining { .. } | Lifecycle::Stopped { .. })
    }

    /// `Starting | Running → Draining` until `deadline`; `deregistering`
    /// says a deregistration is in flight. Returns whether it happened (a
    /// second stop changes nothing).
    pub fn drain(&mut self, deadline: Instant, deregistering: bool) -> bool {
        if self.is_stopping() {
            return false;
        }
        let placeholder = Lifecycle::Stopped {
            live: None,
            announced: true,
        };
        let live = match core::mem::replace(self, placeholder) {
            Lifecycle::Running(l) => Some(l),
            _ => None,
        };
        *self = Lifecycle::Draining {
            live,
            deadline,
            deregistering,
        };
        true
    }

    /// The deregistration of the drain was answered (either way).
    pub fn deregistered(&mut self) {
        if let Lifecycle::Draining { deregistering, .. } = self {
            *deregistering = false;
        }
    }

    /// When the drain ends at the latest (only while draining).
    pub fn drain_deadline(&self) -> Option<Instant> {
        match self {
            Lifecycle::Draining { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    /// `Draining → Stopped` once the deadline passed, or the
    /// deregistration is answered and `conns_done` (every connection
    /// closed) holds.
    pub fn finish_if(&mut self, now: Instant, conns_done: impl FnOnce(Option<&L>) -> bool) {
        let Lifecycle::Draining {
            live,
            deadline,
            deregistering,
        } = self
        else {
            return;
        };
        if now >= *deadline || (!*deregistering && conns_done(live.as_ref())) {
            let live = live.take();
            *self = Lifecycle::Stopped {
                live,
                announced: false,
            };
        }
    }

    /// Whether [`super::DaemonEvent::Stopped`] is due now; it is due once.
    pub fn take_stop_announcement(&mut self) -> bool {
        match self {
            Lifecycle::Stopped { announced, .. } if !*announced => {
                *announced = true;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::time::Duration;

    type L = Lifecycle<&'static str, String>;

    fn at(s: u64) -> Instant {
        Instant::ZERO + Duration::from_secs(s)
    }

    #[test]
    fn the_running_parts_exist_only_once_started() {
        let mut l: L = Lifecycle::Starting("seed");
        assert!(l.live().is_none());
        assert!(l.start(|s| format!("node from {s}")));
        assert_eq!(l.live().map(String::as_str), Some("node from seed"));
        // Started once: a second registration builds nothing.
        assert!(!l.start(|_| unreachable!("the seed is used up")));
        l.live_mut().unwrap().push('!');
        assert_eq!(l.live().map(String::as_str), Some("node from seed!"));
    }

    #[test]
    fn a_drain_keeps_the_node_until_its_conditions_hold() {
        let mut l: L = Lifecycle::Running("node".into());
        assert!(!l.is_stopping());
        assert!(l.drain(at(3), true));
        assert!(l.is_stopping());
        assert!(!l.drain(at(9), false), "a second stop changes nothing");
        assert_eq!(l.drain_deadline(), Some(at(3)));
        // Connections closed but the deregistration is unanswered.
        l.finish_if(at(1), |_| true);
        assert!(matches!(l, Lifecycle::Draining { .. }));
        l.deregistered();
        // Answered, but a connection is still open.
        l.finish_if(at(1), |live| {
            assert_eq!(live.map(String::as_str), Some("node"));
            false
        });
        assert!(!l.take_stop_announcement());
        l.finish_if(at(2), |_| true);
        assert!(matches!(l, Lifecycle::Stopped { .. }));
        assert_eq!(
            l.live().map(String::as_str),
            Some("node"),
            "kept for diagnostics"
        );
        assert_eq!(l.drain_deadline(), None);
        assert!(l.take_stop_announcement());
        assert!(!l.take_stop_announcement(), "announced once");
        assert!(!l.start(|_| unreachable!()));
    }

    #[test]
    fn the_deadline_ends_a_drain_whatever_is_open() {
        let mut l: L = Lifecycle::Running("node".into());
        l.drain(at(3), true);
        l.finish_if(at(2), |_| false);
        assert!(matches!(l, Lifecycle::Draining { .. }));
        l.finish_if(at(3), |_| false);
        assert!(l.take_stop_announcement());
    }

    #[test]
    fn a_stop_before_the_address_never_starts_the_node() {
        let mut l: L = Lifecycle::Starting("seed");
        assert!(l.drain(at(3), false));
        assert!(l.live().is_none());
        assert!(!l.start(|_| unreachable!("the seed was dropped")));
        l.finish_if(at(0), |live| live.is_none());
        assert!(l.take_stop_announcement());
    }
}
