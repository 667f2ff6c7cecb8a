//! `datagram`: every node sends numbered datagrams to every other node.
//! Checks: nothing delivered that was not sent, nothing delivered twice
//! (even when the network duplicates), and, without loss, everything
//! arrives. Datagrams a node drops itself (pending queue full while a key
//! exchange runs, transmit queue full) are counted from the nodes' own
//! statistics: figures `dg_pending_dropped` and `dg_node_dropped`, and
//! named in the `all-delivered` check.

use std::collections::{BTreeMap, BTreeSet};

use pilot_proto::node::Event;
use pilot_proto::time::Instant;
use serde_json::json;

use super::{lossy, mesh};
use crate::check::CheckResult;
use crate::config::SimConfig;
use crate::pilot::pilot_addr;
use crate::scenario::{Outcome, Scenario};

/// Destination port of the scenario's datagrams.
pub const PORT: u16 = 5000;

/// See the module docs.
pub struct DatagramScenario;

/// Payload: sender index, receiver index, round (each u32 BE).
fn payload(from: usize, to: usize, round: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&(from as u32).to_be_bytes());
    v.extend_from_slice(&(to as u32).to_be_bytes());
    v.extend_from_slice(&round.to_be_bytes());
    v
}

impl Scenario for DatagramScenario {
    fn name(&self) -> &'static str {
        "datagram"
    }

    fn about(&self) -> &'static str {
        "every node sends datagrams to every other; no phantom, no duplicate, no loss without faults"
    }

    fn run(&self, cfg: &SimConfig, seed: u64) -> Outcome {
        let (mut sim, ids) = mesh(cfg, seed, 2);
        let n = ids.len();
        let mut result = Ok(());
        for id in &ids {
            result = result.and_then(|_| sim.with_node(*id, |p, _| p.node.bind(PORT)).map(|_| ()));
        }
        // One round per second; stop 2 s before the end so the last round
        // (and key exchanges) can land.
        let end = Instant::from_millis(cfg.duration_ms);
        let rounds = (cfg.duration_ms / 1000).saturating_sub(2).max(1);
        let mut sent: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut delivered: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
        let mut phantom = 0u64;
        let mut bad_src = 0u64;
        let mut send_errors = 0u64;
        let mut on_event = |ev_node: usize, ev: Event, sent: &BTreeSet<Vec<u8>>| {
            if let Event::Datagram {
                src,
                data,
                dst_port,
                ..
            } = ev
            {
                if !sent.contains(&data) {
                    phantom += 1;
                }
                let from = data
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                let to = data
                    .get(4..8)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                if from.map(|f| pilot_addr(f as usize)) != Some(src)
                    || to != Some(ev_node as u32)
                    || dst_port != PORT
                {
                    bad_src += 1;
                }
                *delivered.entry(data).or_default() += 1;
            }
        };
        for round in 0..rounds {
            if result.is_err() {
                break;
            }
            let at = Instant::from_millis(round * 1000 + 100);
            result = sim.run_until(at, |_, id, ev| {
                on_event(id.0, ev, &sent);
                Ok(())
            });
            for (i, &nid) in ids.iter().enumerate() {
                let targets: Vec<usize> = (0..n).filter(|j| *j != i).collect();
                let pls: Vec<Vec<u8>> = targets.iter().map(|j| payload(i, *j, round)).collect();
                let r = sim.with_node(nid, |p, now| {
                    let mut errs = 0;
                    for (j, pl) in targets.iter().zip(&pls) {
                        if p.node
                            .send_datagram(now, pilot_addr(*j), PORT, None, pl)
                            .is_err()
                        {
                            errs += 1;
                        }
                    }
                    errs
                });
                match r {
                    Ok(e) => send_errors += e,
                    Err(e) => result = Err(e),
                }
                sent.extend(pls);
            }
        }
        if result.is_ok() {
            result = sim.run_until(end, |_, id, ev| {
                on_event(id.0, ev, &sent);
                Ok(())
            });
        }
        let (mut pending_dropped, mut node_dropped) = (0u64, 0u64);
        for &nid in &ids {
            if let Some(p) = sim.node(nid) {
                let st = p.node.stats();
                pending_dropped += st.pending_dropped;
                node_dropped += st.transmit_dropped;
            }
        }
        let mut out = Outcome::from_sim(&mut sim, result);
        let dups: u64 = delivered.values().filter(|c| **c > 1).count() as u64;
        let missing = sent.iter().filter(|s| !delivered.contains_key(*s)).count();
        out.checks.push(CheckResult::new(
            "no-phantom",
            phantom == 0 && bad_src == 0,
            format!("{phantom} delivered but never sent, {bad_src} with wrong source/destination"),
        ));
        out.checks.push(CheckResult::new(
            "no-duplicate",
            dups == 0,
            format!("{dups} datagrams delivered more than once"),
        ));
        let must_all = !lossy(cfg);
        out.checks.push(CheckResult::new(
            "all-delivered",
            !must_all || (missing == 0 && send_errors == 0 && node_dropped == 0),
            format!(
                "{missing} of {} missing, {send_errors} send errors, {node_dropped} dropped \
                 by the sending node ({pending_dropped} by its pending queue){}",
                sent.len(),
                if must_all {
                    ""
                } else {
                    " (lossy network: not required)"
                }
            ),
        ));
        out.figures.insert("dg_sent".into(), json!(sent.len()));
        out.figures
            .insert("dg_delivered".into(), json!(delivered.len()));
        out.figures.insert("dg_rounds".into(), json!(rounds));
        out.figures
            .insert("dg_pending_dropped".into(), json!(pending_dropped));
        out.figures
            .insert("dg_node_dropped".into(), json!(node_dropped));
        out
    }
}
