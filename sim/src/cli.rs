//! The `pilot-sim` command: runs a scenario over one or more seeds and
//! reports, as text or one JSON object per line.
//!
//! Output contract (`--json`): one object per seed with `scenario`, `seed`,
//! `ok`, `trace_hash` (hex), `virtual_ms`, `wall_ms`, `checks` (a list of
//! `{name, ok, detail}`), `figures` (a map) and, for a failing run,
//! `repro` (the exact command that reruns it). With `--seeds`, a final
//! line `{"seeds": K, "failed": [...]}`. Failing runs are also reported on
//! stderr with their seed and repro command. The exit code is
//! [`EXIT_OK`] only if every run is ok.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use crate::check::CheckResult;
use crate::config::SimConfig;
use crate::scenario::{Outcome, Registry, check_determinism};

/// Every run passed.
pub const EXIT_OK: i32 = 0;
/// At least one run failed a check.
pub const EXIT_FAILED: i32 = 1;
/// Bad usage (unknown scenario, invalid arguments).
pub const EXIT_USAGE: i32 = 2;

/// One line of `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// Whether every check passed.
    pub ok: bool,
    /// Trace hash, hex.
    pub trace_hash: String,
    /// Virtual time at the end, ms.
    pub virtual_ms: f64,
    /// Wall-clock time of the run, ms (informational only).
    pub wall_ms: f64,
    /// Checker results.
    pub checks: Vec<CheckResult>,
    /// Scenario figures.
    pub figures: BTreeMap<String, Value>,
    /// Command reproducing a failing run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repro: Option<String>,
}

/// The `--seeds` summary line.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds that failed.
    pub failed: Vec<u64>,
}

fn unknown(cfg: &SimConfig, registry: &Registry) -> String {
    let list = registry.list();
    let available = if list.is_empty() {
        "none are registered yet (scenarios arrive with the protocol node)".to_owned()
    } else {
        list.iter()
            .map(|(n, about)| format!("\n  {n:<24} {about}"))
            .collect::<String>()
    };
    format!(
        "pilot-sim: unknown scenario {:?}; available: {available}",
        cfg.scenario
    )
}

/// Runs `cfg` against `registry`, writing results to `out` and failures
/// to `err`. Returns the process exit code.
pub fn run(
    cfg: &SimConfig,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    if cfg.sweep.is_some() {
        return crate::sweep::run(cfg, registry, out, err);
    }
    let Some(scenario) = registry.get(&cfg.scenario) else {
        writeln!(err, "{}", unknown(cfg, registry))?;
        return Ok(EXIT_USAGE);
    };
    let mut failed = Vec::new();
    for seed in cfg.seeds.clone() {
        let wall = std::time::Instant::now();
        let outcome: Outcome = if cfg.check_determinism {
            check_determinism(scenario, cfg, seed)
        } else {
            scenario.run(cfg, seed)
        };
        let wall_ms = wall.elapsed().as_secs_f64() * 1e3;
        let ok = outcome.ok();
        let repro = (!ok).then(|| cfg.repro_command(seed));
        let rec = RunRecord {
            scenario: cfg.scenario.clone(),
            seed,
            ok,
            trace_hash: outcome.trace_hash.to_string(),
            virtual_ms: outcome.virtual_time.as_nanos() as f64 / 1e6,
            wall_ms,
            checks: outcome.checks,
            figures: outcome.figures,
            repro,
        };
        if cfg.json {
            serde_json::to_writer(&mut *out, &rec).map_err(io::Error::other)?;
            writeln!(out)?;
        } else {
            write_text(out, &rec)?;
        }
        if let Some(cmd) = &rec.repro {
            failed.push(seed);
            let bad: Vec<&str> = rec
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.name.as_str())
                .collect();
            writeln!(
                err,
                "FAILED {} seed {seed} (checks: {}); reproduce with:\n  {cmd}",
                cfg.scenario,
                bad.join(", ")
            )?;
        }
    }
    if cfg.seed_range {
        let summary = Summary {
            seeds: cfg.seeds.end - cfg.seeds.start,
            failed: failed.clone(),
        };
        if cfg.json {
            serde_json::to_writer(&mut *out, &summary).map_err(io::Error::other)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{} seeds, {} failed {:?}",
                summary.seeds,
                failed.len(),
                failed
            )?;
        }
    }
    Ok(if failed.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}

fn write_text(out: &mut dyn Write, r: &RunRecord) -> io::Result<()> {
    writeln!(
        out,
        "{} seed {}: {} trace {} virtual {:.3} ms wall {:.1} ms",
        r.scenario,
        r.seed,
        if r.ok { "ok" } else { "FAILED" },
        r.trace_hash,
        r.virtual_ms,
        r.wall_ms
    )?;
    for c in &r.checks {
        writeln!(
            out,
            "  [{}] {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        )?;
    }
    for (k, v) in &r.figures {
        writeln!(out, "  {k} = {v}")?;
    }
    Ok(())
}
