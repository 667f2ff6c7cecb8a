//! `ping`: every node pings every other over port 0 of the control
//! protocol. Check: each RTT measured on an established session lies
//! within the simulated path, 2 × (latency ± jitter) (the upper bound is
//! relaxed by the reordering delay when reordering is on, and dropped when
//! a bandwidth queue adds delay).

use std::collections::BTreeMap;
use std::time::Duration;

use pilot_proto::node::Event;
use pilot_proto::time::Instant;
use serde_json::json;

use super::{lossy, mesh};
use crate::check::CheckResult;
use crate::config::{REORDER_MAX_FLOOR, SimConfig};
use crate::pilot::pilot_addr;
use crate::scenario::{Outcome, Scenario};

/// See the module docs.
pub struct PingScenario;

/// Time between ping rounds.
const INTERVAL: Duration = Duration::from_millis(500);

impl Scenario for PingScenario {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn about(&self) -> &'static str {
        "control ping between all nodes; RTT equals 2 x one-way latency within jitter"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let (mut sim, ids) = mesh(cfg, seed, 2);
        let n = ids.len();
        // (node index, ping id) -> whether the session existed at send.
        let mut measured: BTreeMap<(usize, u32), bool> = BTreeMap::new();
        let mut rtts: Vec<(bool, Duration)> = Vec::new();
        let mut timeouts = 0u64;
        let mut result = Ok(());
        let end = Instant::from_millis(cfg.duration_ms);
        let last_send = end.saturating_sub(Duration::from_secs(1));
        let mut t = Instant::ZERO;
        while t <= last_send && result.is_ok() {
            for (i, &nid) in ids.iter().enumerate() {
                let r = sim.with_node(nid, |p, now| {
                    let mut v = Vec::new();
                    for j in (0..n).filter(|j| *j != i) {
                        let warm = p.node.has_session(pilot_addr(j).node);
                        if let Ok(id) = p.node.ping(now, pilot_addr(j)) {
                            v.push((id, warm));
                        }
                    }
                    v
                });
                match r {
                    Ok(v) => {
                        for (id, warm) in v {
                            measured.insert((i, id), warm);
                        }
                    }
                    Err(e) => result = Err(e),
                }
            }
            t = t + INTERVAL;
            if result.is_ok() {
                result = sim.run_until(t.min(end), |_, id, ev| {
                    match ev {
                        Event::Pong { id: pid, rtt, .. } => {
                            let warm = measured.get(&(id.0, pid)).copied().unwrap_or(false);
                            rtts.push((warm, rtt));
                        }
                        Event::PingTimeout { .. } => timeouts += 1,
                        _ => {}
                    }
                    Ok(())
                });
            }
        }
        if result.is_ok() {
            result = sim.run_until(end, |_, _, ev| {
                if let Event::Pong { rtt, .. } = ev {
                    rtts.push((false, rtt));
                }
                Ok(())
            });
        }
        let mut out = Outcome::from_sim(&mut sim, result);
        let lat = cfg.latency();
        let jit = cfg.jitter();
        let lo = lat.saturating_sub(jit) * 2;
        let extra = if cfg.reorder_pct > 0.0 {
            REORDER_MAX_FLOOR.max(lat * 2) * 2
        } else {
            Duration::ZERO
        };
        let hi = (lat + jit) * 2 + extra;
        let check_hi = cfg.bandwidth_mbps.is_none();
        let warm: Vec<Duration> = rtts.iter().filter(|(w, _)| *w).map(|(_, r)| *r).collect();
        let bad = warm
            .iter()
            .filter(|r| **r < lo || (check_hi && **r > hi))
            .count();
        out.checks.push(CheckResult::new(
            "rtt-equals-path",
            bad == 0 && !warm.is_empty(),
            format!(
                "{} pongs on established sessions, {bad} outside [{lo:?}, {hi:?}]",
                warm.len()
            ),
        ));
        let must_answer = !lossy(cfg);
        out.checks.push(CheckResult::new(
            "pings-answered",
            !must_answer || timeouts == 0,
            format!("{timeouts} ping timeouts"),
        ));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        if !warm.is_empty() {
            let min = warm.iter().min().copied().unwrap_or_default();
            let max = warm.iter().max().copied().unwrap_or_default();
            let mean = warm.iter().map(|d| ms(*d)).sum::<f64>() / warm.len() as f64;
            out.figures.insert("rtt_min_ms".into(), json!(ms(min)));
            out.figures.insert("rtt_max_ms".into(), json!(ms(max)));
            out.figures.insert("rtt_mean_ms".into(), json!(mean));
        }
        out.figures.insert("pongs".into(), json!(rtts.len()));
        out.figures.insert("ping_timeouts".into(), json!(timeouts));
        out
    }
}
