//! Scenarios: named, seeded experiments over a [`Sim`], and their registry.
//!
//! A [`Scenario`] builds a network from a [`SimConfig`] and a seed, runs
//! it, and returns an [`Outcome`]: the trace hash, the checker results and
//! scenario figures. [`Outcome::from_sim`] does the common part (runs the
//! checkers, records engine counters, turns an engine error into a failed
//! check). The [`Registry`] is what the `pilot-sim` binary looks names up
//! in.
//!
//! The built-in scenarios live in [`crate::scenarios`] and drive the
//! protocol node through [`crate::pilot::Pilot`].

use std::collections::BTreeMap;

use pilot_proto::time::Instant;
use serde_json::{Value, json};

use crate::check::CheckResult;
use crate::config::SimConfig;
use crate::engine::{Sim, SimError};
use crate::fault::DropReason;
use crate::node::SimNode;
use crate::trace::TraceDigest;

/// The result of running one scenario with one seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Virtual time at the end.
    pub virtual_time: Instant,
    /// Trace hash of the run.
    pub trace_hash: TraceDigest,
    /// Checker results (the run is ok iff all are ok).
    pub checks: Vec<CheckResult>,
    /// Scenario figures (throughput, completion times, engine counters...).
    pub figures: BTreeMap<String, Value>,
}

impl Outcome {
    /// Whether every check passed.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// Finishes a run: runs the checkers, adds an `engine` check that fails
    /// if `result` is an error, and fills engine counters into the figures.
    pub fn from_sim<N: SimNode>(sim: &mut Sim<N>, result: Result<(), SimError>) -> Self {
        let mut checks = vec![match &result {
            Ok(()) => CheckResult::new("engine", true, "run completed within its bounds"),
            Err(e) => CheckResult::new("engine", false, e.to_string()),
        }];
        checks.extend(sim.check());
        let st = sim.stats();
        let dropped: serde_json::Map<String, Value> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_owned(), json!(st.dropped_for(*r))))
            .collect();
        let mut figures = BTreeMap::new();
        figures.insert("datagrams_sent".into(), json!(st.sent));
        figures.insert("datagrams_delivered".into(), json!(st.delivered));
        figures.insert("datagrams_duplicated".into(), json!(st.duplicated));
        figures.insert("datagrams_dropped".into(), Value::Object(dropped));
        figures.insert("bytes_sent".into(), json!(st.sent_bytes));
        figures.insert("bytes_delivered".into(), json!(st.delivered_bytes));
        figures.insert("timeouts".into(), json!(st.timeouts));
        figures.insert("events".into(), json!(st.events));
        figures.insert("steps".into(), json!(st.steps));
        figures.insert("fault_rules".into(), json!(sim.fault_names()));
        Outcome {
            virtual_time: sim.now(),
            trace_hash: sim.trace_hash(),
            checks,
            figures,
        }
    }
}

/// A named, seeded experiment.
pub trait Scenario {
    /// The name used with `--scenario` (no whitespace).
    fn name(&self) -> &'static str;

    /// One line saying what it exercises.
    fn about(&self) -> &'static str;

    /// Runs once with `seed`. Must be a pure function of `(cfg, seed)`.
    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome;
}

/// Runs `scenario` twice with `seed` and compares the trace hashes. Returns
/// the first outcome with a `determinism` check appended (failing if the
/// two hashes differ).
pub fn check_determinism(scenario: &dyn Scenario, cfg: &SimConfig, seed: u64) -> Outcome {
    let mut first = scenario.run(cfg, seed);
    let second = scenario.run(cfg, seed);
    let same = first.trace_hash == second.trace_hash;
    let detail = if same {
        format!("two runs, same trace hash {}", first.trace_hash)
    } else {
        format!(
            "trace hashes differ: {} vs {}",
            first.trace_hash, second.trace_hash
        )
    };
    first
        .checks
        .push(CheckResult::new("determinism", same, detail));
    first
}

/// The scenarios the binary knows.
#[derive(Default)]
pub struct Registry {
    scenarios: Vec<Box<dyn Scenario>>,
}

impl Registry {
    /// The built-in scenarios (`crate::scenarios`).
    pub fn builtin() -> Self {
        let mut r = Registry::default();
        crate::scenarios::register(&mut r);
        r
    }

    /// Adds a scenario (a later one with the same name is unreachable, so
    /// this returns `false` and ignores it).
    pub fn register(&mut self, s: Box<dyn Scenario>) -> bool {
        if self.get(s.name()).is_some() {
            return false;
        }
        self.scenarios.push(s);
        true
    }

    /// The scenario called `name`.
    pub fn get(&self, name: &str) -> Option<&dyn Scenario> {
        self.scenarios
            .iter()
            .find(|s| s.name() == name)
            .map(|s| s.as_ref())
    }

    /// Names and descriptions, in registration order.
    pub fn list(&self) -> Vec<(&'static str, &'static str)> {
        self.scenarios
            .iter()
            .map(|s| (s.name(), s.about()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl Scenario for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn about(&self) -> &'static str {
            "test"
        }
        fn run(&self, _cfg: &SimConfig, _seed: u64) -> Outcome {
            unreachable!()
        }
    }

    #[test]
    fn registry_finds_by_name_and_refuses_duplicates() {
        let mut r = Registry::default();
        assert!(r.list().is_empty());
        assert!(r.register(Box::new(Named("a"))));
        assert!(r.register(Box::new(Named("b"))));
        assert!(!r.register(Box::new(Named("a"))));
        assert_eq!(r.get("b").map(|s| s.name()), Some("b"));
        assert!(r.get("c").is_none());
        assert_eq!(r.list().len(), 2);
    }
}
