//! Checkers: invariants evaluated over a whole run.
//!
//! A [`Checker`] watches every datagram record and every node event as the
//! run unfolds, and at the end returns one [`CheckResult`]. The engine
//! always installs the [standard](standard) checkers (engine-level
//! invariants); scenarios add their own (stream bytes arrive as written,
//! nonces never repeat, ...).

use std::net::SocketAddr;

use pilot_proto::time::Instant;
use serde::Serialize;

use crate::fault::DropReason;
use crate::hashing::{FastMap, digest};
use crate::node::NodeId;
use crate::trace::TraceDigest;

/// The outcome of one checker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// The checker's name.
    pub name: String,
    /// Whether the invariant held.
    pub ok: bool,
    /// A human-readable explanation (counts on success, the first
    /// violation on failure).
    pub detail: String,
}

impl CheckResult {
    /// A result for checker `name`.
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Self {
        CheckResult {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// What happened to a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A node emitted it.
    Sent,
    /// The fault chain scheduled one extra copy of it.
    Duplicated,
    /// One copy was dropped (at send or at arrival).
    Dropped(DropReason),
    /// One copy was handed to the receiving node.
    Delivered,
}

/// One step in a datagram's life. `origin` identifies the send; all
/// copies of one send share it.
#[derive(Clone, Copy, Debug)]
pub struct DatagramRecord<'a> {
    /// What happened.
    pub kind: RecordKind,
    /// Identifier of the original send.
    pub origin: u64,
    /// Virtual time it happened.
    pub at: Instant,
    /// Source endpoint at this point (after any rewriting).
    pub src: SocketAddr,
    /// Destination endpoint at this point (after any rewriting).
    pub dst: SocketAddr,
    /// The payload.
    pub bytes: &'a [u8],
}

/// Figures of a finished (or interrupted) run, given to checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's seed.
    pub seed: u64,
    /// Virtual time at the end.
    pub virtual_time: Instant,
    /// Trace hash at the end.
    pub trace_hash: TraceDigest,
    /// Engine counters.
    pub stats: crate::engine::Stats,
    /// Datagram copies still queued when the run stopped.
    pub in_flight: u64,
}

/// An invariant over a run. `E` is the node event type.
pub trait Checker<E> {
    /// Name used in reports.
    fn name(&self) -> &str;

    /// Sees every datagram record, in order.
    fn on_datagram(&mut self, _rec: &DatagramRecord<'_>) {}

    /// Sees every node event, in order.
    fn on_event(&mut self, _at: Instant, _node: NodeId, _event: &E) {}

    /// Verdict at the end of the run.
    fn finish(&mut self, summary: &RunSummary) -> CheckResult;
}

/// Stall watchdog: a stream that has data to deliver must make progress
/// (bytes acknowledged or received) or end within `bound`. Scenarios feed
/// it samples of their connections ([`StallWatchdog::observe`]) and add
/// its verdict ([`StallWatchdog::result`]) to their checks; the first
/// stall is reported with the connection's last figures and the run's
/// trace hash, so the seed can be replayed.
#[derive(Debug)]
pub struct StallWatchdog {
    bound: core::time::Duration,
    /// key → (progress figure, when it last changed, had work then).
    conns: std::collections::BTreeMap<String, (u64, Instant)>,
    samples: u64,
    longest: core::time::Duration,
    violation: Option<String>,
}

impl StallWatchdog {
    /// A watchdog that tolerates `bound` without progress.
    pub fn new(bound: core::time::Duration) -> Self {
        StallWatchdog {
            bound,
            conns: Default::default(),
            samples: 0,
            longest: core::time::Duration::ZERO,
            violation: None,
        }
    }

    /// One sample of connection `key` at `now`: whether it has data to
    /// deliver (`pending`), a figure that grows with progress, and a
    /// description for the report. A connection without pending data is
    /// never stalled.
    pub fn observe(&mut self, now: Instant, key: &str, pending: bool, progress: u64, what: &str) {
        self.samples += 1;
        let e = self.conns.entry(key.to_owned()).or_insert((progress, now));
        if e.0 != progress || !pending {
            *e = (progress, now);
            return;
        }
        let stuck = now.saturating_duration_since(e.1);
        self.longest = self.longest.max(stuck);
        if stuck > self.bound && self.violation.is_none() {
            self.violation = Some(format!(
                "stream {key} made no progress for {} ms (bound {} ms) at {} ms: {what}",
                stuck.as_millis(),
                self.bound.as_millis(),
                now.as_nanos() / 1_000_000
            ));
        }
    }

    /// The connection `key` ended (closed or reset): stop watching it.
    pub fn ended(&mut self, key: &str) {
        self.conns.remove(key);
    }

    /// The verdict, as check `stall-watchdog`; `trace` names the run.
    pub fn result(&self, trace: &TraceDigest) -> CheckResult {
        match &self.violation {
            Some(v) => CheckResult::new("stall-watchdog", false, format!("{v} (trace {trace})")),
            None => CheckResult::new(
                "stall-watchdog",
                true,
                format!(
                    "{} samples, longest wait without progress {} ms (bound {} ms)",
                    self.samples,
                    self.longest.as_millis(),
                    self.bound.as_millis()
                ),
            ),
        }
    }
}

/// The checkers the engine always runs.
pub fn standard<E>() -> Vec<Box<dyn Checker<E>>> {
    vec![Box::new(Conservation::default())]
}

/// Datagram conservation: nothing is delivered or dropped that was not
/// sent (or duplicated by the fault chain), payloads arrive unmodified,
/// and at the end `copies = delivered + dropped + still in flight`.
#[derive(Debug, Default)]
pub struct Conservation {
    /// origin → (payload digest, copies not yet resolved).
    open: FastMap<u64, (u64, u64)>,
    copies: u64,
    resolved: u64,
    violation: Option<String>,
}

impl Conservation {
    fn fail(&mut self, msg: String) {
        if self.violation.is_none() {
            self.violation = Some(msg);
        }
    }

    fn resolve(&mut self, rec: &DatagramRecord<'_>, check_bytes: bool) {
        let Some(entry) = self.open.get_mut(&rec.origin) else {
            self.fail(format!(
                "{:?} of datagram #{} at {} ns that was never sent (or already resolved)",
                rec.kind,
                rec.origin,
                rec.at.as_nanos()
            ));
            return;
        };
        let corrupt = check_bytes && entry.0 != digest(rec.bytes);
        entry.1 = entry.1.saturating_sub(1);
        if entry.1 == 0 {
            self.open.remove(&rec.origin);
        }
        self.resolved += 1;
        if corrupt {
            let origin = rec.origin;
            self.fail(format!(
                "datagram #{origin} delivered with modified payload"
            ));
        }
    }
}

impl<E> Checker<E> for Conservation {
    fn name(&self) -> &str {
        "conservation"
    }

    fn on_datagram(&mut self, rec: &DatagramRecord<'_>) {
        match rec.kind {
            RecordKind::Sent => {
                if self
                    .open
                    .insert(rec.origin, (digest(rec.bytes), 1))
                    .is_some()
                {
                    self.fail(format!("datagram #{} sent twice", rec.origin));
                }
                self.copies += 1;
            }
            RecordKind::Duplicated => match self.open.get_mut(&rec.origin) {
                Some(e) => {
                    e.1 += 1;
                    self.copies += 1;
                }
                None => self.fail(format!("duplicate of unknown datagram #{}", rec.origin)),
            },
            RecordKind::Dropped(_) => self.resolve(rec, false),
            RecordKind::Delivered => self.resolve(rec, true),
        }
    }

    fn finish(&mut self, summary: &RunSummary) -> CheckResult {
        if let Some(v) = &self.violation {
            return CheckResult::new("conservation", false, v.clone());
        }
        let open: u64 = self.open.values().map(|e| e.1).sum();
        if open != summary.in_flight || self.copies != self.resolved + open {
            return CheckResult::new(
                "conservation",
                false,
                format!(
                    "copies {} != resolved {} + open {} (engine reports {} in flight)",
                    self.copies, self.resolved, open, summary.in_flight
                ),
            );
        }
        CheckResult::new(
            "conservation",
            true,
            format!(
                "{} copies: {} resolved, {} in flight",
                self.copies, self.resolved, open
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::node_addr;

    fn rec(kind: RecordKind, origin: u64, bytes: &[u8]) -> DatagramRecord<'_> {
        DatagramRecord {
            kind,
            origin,
            at: Instant::ZERO,
            src: node_addr(0),
            dst: node_addr(1),
            bytes,
        }
    }

    fn summary(in_flight: u64) -> RunSummary {
        RunSummary {
            seed: 0,
            virtual_time: Instant::ZERO,
            trace_hash: crate::trace::TraceHash::new().digest(),
            stats: Default::default(),
            in_flight,
        }
    }

    fn run(recs: &[DatagramRecord<'_>], in_flight: u64) -> CheckResult {
        let mut c = Conservation::default();
        for r in recs {
            Checker::<()>::on_datagram(&mut c, r);
        }
        Checker::<()>::finish(&mut c, &summary(in_flight))
    }

    #[test]
    fn stall_watchdog_flags_only_pending_streams_without_progress() {
        let ms = Instant::from_millis;
        let mut w = StallWatchdog::new(core::time::Duration::from_secs(5));
        // Idle (nothing pending) for a long time: fine.
        w.observe(ms(0), "a", false, 0, "");
        w.observe(ms(60_000), "a", false, 0, "");
        // Pending with progress: fine.
        for i in 0..10u64 {
            w.observe(ms(i * 1000), "b", true, i, "");
        }
        // Ended before the bound: fine.
        w.observe(ms(0), "c", true, 1, "");
        w.observe(ms(4000), "c", true, 1, "");
        w.ended("c");
        w.observe(ms(9000), "c", true, 1, "");
        let trace = crate::trace::TraceHash::new().digest();
        assert!(w.result(&trace).ok, "{:?}", w.result(&trace));
        // Pending and stuck past the bound: flagged with its description.
        w.observe(ms(10_000), "d", true, 7, "");
        w.observe(ms(15_001), "d", true, 7, "in_flight=3");
        let r = w.result(&trace);
        assert!(!r.ok);
        assert!(r.detail.contains("stream d") && r.detail.contains("in_flight=3"));
    }

    #[test]
    fn accepts_a_consistent_history() {
        use RecordKind::*;
        let r = run(
            &[
                rec(Sent, 1, b"a"),
                rec(Duplicated, 1, b"a"),
                rec(Sent, 2, b"b"),
                rec(Delivered, 1, b"a"),
                rec(Delivered, 1, b"a"),
                rec(Dropped(DropReason::Loss), 2, b"b"),
                rec(Sent, 3, b"c"),
            ],
            1,
        );
        assert!(r.ok, "{r:?}");
    }

    #[test]
    fn rejects_phantoms_corruption_extra_copies_and_leaks() {
        use RecordKind::*;
        assert!(!run(&[rec(Delivered, 9, b"x")], 0).ok, "phantom");
        assert!(
            !run(&[rec(Sent, 1, b"a"), rec(Delivered, 1, b"b")], 0).ok,
            "corrupt"
        );
        assert!(
            !run(
                &[
                    rec(Sent, 1, b"a"),
                    rec(Delivered, 1, b"a"),
                    rec(Delivered, 1, b"a")
                ],
                0
            )
            .ok,
            "undeclared duplicate"
        );
        assert!(!run(&[rec(Sent, 1, b"a")], 0).ok, "leaked copy");
    }
}
