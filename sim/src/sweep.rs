//! `pilot-sim --sweep GRID`: runs a named grid of fault mixes over the seed
//! range and prints one summary table.
//!
//! A grid is a list of [`Cell`]s; each cell is a set of `pilot-sim` flags
//! for the `stream-transfer` scenario plus whether its fault model allows
//! success (mean loss ≤ 10 %, outages shorter than the user timeout,
//! MTU ≥ 576). Every cell runs every seed of `--seeds` (default `1..10`, both ends included);
//! a failing run is classified by the scenario's `failure_class` figure
//! (or the name of the failing check). The table has one row per cell
//! (runs, ok, failures by class) and a total; the exit code is
//! [`crate::cli::EXIT_FAILED`] when a cell that allows success has a
//! failure. Grids: `ci` (a few cells, small transfers; run by
//! `cargo test`) and `long` (every fault dimension of issue #21, for
//! release builds).

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::cli::{EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use crate::config::SimConfig;
use crate::scenario::Registry;

/// One fault mix of a grid.
#[derive(Clone, Debug)]
pub struct Cell {
    /// Row label: the flags themselves.
    pub flags: String,
    /// Whether the fault model allows every run to succeed.
    pub must_succeed: bool,
}

impl Cell {
    fn new(flags: impl Into<String>, must_succeed: bool) -> Self {
        Cell {
            flags: flags.into(),
            must_succeed,
        }
    }
}

/// Names of the built-in grids.
pub const GRIDS: [&str; 2] = ["ci", "long"];

/// The cells of grid `name`, or `None` for an unknown name.
pub fn grid(name: &str) -> Option<Vec<Cell>> {
    match name {
        "ci" => Some(ci()),
        "long" => Some(long()),
        _ => None,
    }
}

fn ci() -> Vec<Cell> {
    let b = "--bytes 65536";
    vec![
        Cell::new(b, true),
        Cell::new(format!("{b} --loss 10"), true),
        Cell::new(format!("{b} --loss 10 --burst-loss"), true),
        Cell::new(format!("{b} --dup 5 --reorder 5 --jitter-ms 5"), true),
        Cell::new(format!("{b} --latency-ms 200 --jitter-ms 20"), true),
        Cell::new(format!("{b} --partition-ms 100..5100"), true),
        Cell::new(format!("{b} --mtu 576"), true),
        Cell::new(format!("{b} --loss 35"), false),
    ]
}

fn long() -> Vec<Cell> {
    let b = "--bytes 131072";
    let mut v = Vec::new();
    for loss in [0u32, 1, 2, 5, 10, 15, 25, 35] {
        for burst in [false, true] {
            if loss == 0 && burst {
                continue;
            }
            let f = if burst { " --burst-loss" } else { "" };
            v.push(Cell::new(format!("{b} --loss {loss}{f}"), loss <= 10));
        }
    }
    for (dup, reo) in [(5u32, 0u32), (0, 5), (10, 10)] {
        v.push(Cell::new(
            format!("{b} --dup {dup} --reorder {reo} --loss 2"),
            true,
        ));
    }
    for (lat, jit) in [(1u32, 0u32), (50, 10), (200, 0), (200, 50)] {
        v.push(Cell::new(
            format!("{b} --latency-ms {lat} --jitter-ms {jit} --loss 2"),
            true,
        ));
    }
    for mtu in [576u32, 800, 1200, 1280, 1500] {
        v.push(Cell::new(format!("{b} --mtu {mtu}"), true));
    }
    for (start, len) in [
        (50u32, 500u32),
        (100, 2000),
        (100, 5000),
        (200, 10_000),
        (100, 20_000),
    ] {
        v.push(Cell::new(
            format!("{b} --partition-ms {start}..{}", start + len),
            true,
        ));
        v.push(Cell::new(
            format!(
                "{b} --partition-ms {start}..{} --loss 5 --burst-loss",
                start + len
            ),
            true,
        ));
    }
    v
}

/// Counts of one cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CellResult {
    /// Runs.
    pub runs: u64,
    /// Runs that passed every check.
    pub ok: u64,
    /// Failed runs by class.
    pub failures: BTreeMap<String, u64>,
    /// First failing seed, for a repro command.
    pub first_failed: Option<u64>,
}

/// Writes one row of the summary table: the cell (or `TOTAL`), its runs,
/// ok count, whether it must succeed, and its failures by class.
fn write_row(out: &mut dyn Write, label: &str, r: &CellResult, must: &str) -> io::Result<()> {
    let classes = r
        .failures
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    writeln!(
        out,
        "{:<60} {:>6} {:>6} {:>5}  {}",
        label,
        r.runs,
        r.ok,
        must,
        if classes.is_empty() { "-" } else { &classes }
    )
}

/// Runs one cell over the configured seeds.
pub fn run_cell(cell: &Cell, cfg: &SimConfig, registry: &Registry) -> Result<CellResult, String> {
    let mut args = vec![
        "pilot-sim".to_owned(),
        "--scenario".to_owned(),
        "stream-transfer".to_owned(),
        "--seed".to_owned(),
        "0".to_owned(),
    ];
    args.extend(cell.flags.split_whitespace().map(str::to_owned));
    let cell_cfg =
        SimConfig::parse_from(args).map_err(|e| format!("grid cell {:?}: {e}", cell.flags))?;
    let scenario = registry
        .get("stream-transfer")
        .ok_or("the stream-transfer scenario is not registered")?;
    let mut r = CellResult::default();
    for seed in cfg.seeds.clone() {
        let out = scenario.run(&cell_cfg, seed);
        r.runs += 1;
        if out.ok() {
            r.ok += 1;
            continue;
        }
        r.first_failed.get_or_insert(seed);
        let class = out
            .figures
            .get("failure_class")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                out.checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join("+")
            });
        *r.failures.entry(class).or_default() += 1;
    }
    Ok(r)
}

/// Runs the sweep named in `cfg.sweep`, printing the table to `out`.
/// Returns the exit code.
pub fn run(
    cfg: &SimConfig,
    registry: &Registry,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<i32> {
    let name = cfg.sweep.as_deref().unwrap_or_default();
    let Some(cells) = grid(name) else {
        writeln!(
            err,
            "pilot-sim: unknown sweep grid {name:?}; available: {}",
            GRIDS.join(", ")
        )?;
        return Ok(EXIT_USAGE);
    };
    writeln!(
        out,
        "sweep {name}: {} cells x seeds {}..={} (stream-transfer)",
        cells.len(),
        cfg.seeds.start,
        cfg.seeds.end - 1
    )?;
    writeln!(
        out,
        "{:<60} {:>6} {:>6} {:>5}  failures by class",
        "cell", "runs", "ok", "must"
    )?;
    let mut total = CellResult::default();
    let mut bad_cells = Vec::new();
    for cell in &cells {
        let r = match run_cell(cell, cfg, registry) {
            Ok(r) => r,
            Err(e) => {
                writeln!(err, "pilot-sim: {e}")?;
                return Ok(EXIT_USAGE);
            }
        };
        let must = if cell.must_succeed { "yes" } else { "no" };
        write_row(out, &cell.flags, &r, must)?;
        out.flush()?;
        if cell.must_succeed && r.ok < r.runs {
            if let Some(seed) = r.first_failed {
                bad_cells.push(format!(
                    "pilot-sim --scenario stream-transfer --seed {seed} {}",
                    cell.flags
                ));
            }
        }
        total.runs += r.runs;
        total.ok += r.ok;
        for (k, v) in r.failures {
            *total.failures.entry(k).or_default() += v;
        }
    }
    write_row(out, "TOTAL", &total, "")?;
    writeln!(
        out,
        "{} cells that allow success had failures",
        bad_cells.len()
    )?;
    for c in &bad_cells {
        writeln!(err, "FAILED (must succeed); first failing seed: {c}")?;
    }
    Ok(if bad_cells.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    })
}
