//! Run configuration: the command-line contract of `pilot-sim` and the
//! fault chain it implies.
//!
//! [`Args`] is the clap definition; [`SimConfig`] is the validated form
//! (built with `SimConfig::try_from(args)`), usable by tests without the
//! binary. [`SimConfig::faults`] turns the network options into a
//! [`FaultChain`]; [`SimConfig::repro_command`] prints the exact command
//! that reruns one seed.

use core::fmt::Write as _;
use core::ops::Range;
use core::time::Duration;
use std::net::SocketAddr;

use clap::{Parser, ValueEnum};
use pilot_proto::time::Instant;
use serde::Serialize;

use crate::fault::{
    Bandwidth, Duplicate, FaultChain, GilbertElliott, Group, Latency, Mtu, Partition,
    PartitionWindow, Reorder, UniformLoss,
};
use crate::seed::Seed;

/// Mean duration of a bad (all-lost) spell of the bursty loss model behind
/// `--burst-loss`; the model moves with time, not per datagram
/// ([`GilbertElliott`]).
pub const BURST_MEAN_SPELL: Duration = Duration::from_millis(20);
/// Smallest bandwidth queue, in bytes.
pub const MIN_QUEUE_BYTES: u64 = 16 * 1024;
/// The bandwidth queue holds this much time worth of data (or
/// [`MIN_QUEUE_BYTES`], whichever is larger).
pub const QUEUE_TIME: Duration = Duration::from_millis(100);
/// Smallest extra delay of a reordered datagram.
pub const REORDER_MIN: Duration = Duration::from_millis(1);
/// Floor of the largest extra delay of a reordered datagram (the ceiling is
/// this or twice the one-way latency, whichever is larger).
pub const REORDER_MAX_FLOOR: Duration = Duration::from_millis(10);
/// Floor of the largest gap between a datagram and its duplicate (the
/// ceiling is this or the jitter, whichever is larger).
pub const DUP_GAP_FLOOR: Duration = Duration::from_millis(1);

/// Default number of nodes.
pub const DEFAULT_NODES: usize = 2;
/// Fewest nodes: every scenario needs at least one peer.
pub const MIN_NODES: usize = 2;
/// Memory the node tables of one run may take, in bytes. The built-in
/// scenarios build a full mesh (every node holds every other as a peer,
/// with a tunnel session once traffic flows), so memory grows with the
/// square of the node count; counts whose estimate exceeds this budget are
/// refused before anything is allocated.
pub const MEMORY_BUDGET_BYTES: u64 = 4 << 30;
/// Estimated bytes per (node, peer) pair of a mesh: peer-table entry,
/// tunnel session with its replay window and salvage ring, timers.
pub const MESH_BYTES_PER_PEER: u64 = 1024;
/// Most nodes a run accepts: the largest count whose mesh estimate
/// (n² × [`MESH_BYTES_PER_PEER`]) fits [`MEMORY_BUDGET_BYTES`] (2048).
pub const MAX_NODES: usize = 2048;
/// Default one-way latency in ms.
pub const DEFAULT_LATENCY_MS: u64 = 10;
/// Default payload volume for transfer scenarios.
pub const DEFAULT_BYTES: u64 = 1 << 20;
/// Default virtual run time in ms.
pub const DEFAULT_DURATION_MS: u64 = 10_000;

/// Wire profile the nodes speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The newest wire format (default).
    #[default]
    Current,
    /// The Feb-2026 ("v1.8") wire format.
    Legacy,
}

impl Profile {
    fn as_str(self) -> &'static str {
        match self {
            Profile::Current => "current",
            Profile::Legacy => "legacy",
        }
    }
}

/// Command-line arguments of `pilot-sim`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "pilot-sim",
    version,
    about = "Deterministic network simulation of Pilot Protocol nodes"
)]
pub struct Args {
    /// Scenario to run.
    #[arg(long, required_unless_present = "sweep")]
    pub scenario: Option<String>,
    /// Run the named grid of fault mixes (`ci`, `long`) over the seed
    /// range and print one summary table (see `pilot-sim --sweep help`).
    #[arg(long, value_name = "GRID", conflicts_with = "scenario")]
    pub sweep: Option<String>,
    /// Seed of a single run.
    #[arg(long, required_unless_present_any = ["seeds", "sweep"])]
    pub seed: Option<u64>,
    /// Range of seeds `A..B`, both ends included (`A..=B` is the same);
    /// overrides `--seed`.
    #[arg(long, value_name = "A..B")]
    pub seeds: Option<String>,
    /// Number of nodes.
    #[arg(long, default_value_t = DEFAULT_NODES)]
    pub nodes: usize,
    /// Loss, percent per datagram.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub loss: f64,
    /// Make `--loss` bursty (Gilbert-Elliott) with the same mean.
    #[arg(long)]
    pub burst_loss: bool,
    /// Duplication, percent per datagram.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub dup: f64,
    /// Reordering, percent of datagrams held back.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub reorder: f64,
    /// One-way latency in ms.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_LATENCY_MS)]
    pub latency_ms: u64,
    /// One-way jitter in ms (latency ± jitter, uniform).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub jitter_ms: u64,
    /// Uplink bandwidth of every node, in Mbit/s.
    #[arg(long, value_name = "M")]
    pub bandwidth_mbps: Option<f64>,
    /// Largest UDP payload the path carries, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub mtu: Option<usize>,
    /// Partition the nodes into two halves during `START..END` ms.
    #[arg(long, value_name = "START..END")]
    pub partition_ms: Option<String>,
    /// Payload volume for transfer scenarios.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BYTES)]
    pub bytes: u64,
    /// Peers each node may hold packets for while their key exchanges are
    /// pending (node `Limits::pending_peers`); default: enough for the
    /// whole mesh, at least the node default of 256.
    #[arg(long, value_name = "N")]
    pub pending_peers: Option<usize>,
    /// Ceiling of the streams' upward path-MTU search (node
    /// `Limits::pmtu_ceiling`, default 4096; 0 turns probing off).
    #[arg(long, value_name = "BYTES")]
    pub pmtu_ceiling: Option<usize>,
    /// Virtual run time in ms.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_DURATION_MS)]
    pub duration_ms: u64,
    /// Wire profile.
    #[arg(long, value_enum, default_value_t = Profile::Current)]
    pub profile: Profile,
    /// Run every seed twice and compare trace hashes.
    #[arg(long)]
    pub check_determinism: bool,
    /// One JSON object per seed per line.
    #[arg(long)]
    pub json: bool,
}

/// An invalid combination or value of arguments.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Neither `--seed` nor `--seeds` was given.
    #[error("give --seed N or --seeds A..B")]
    NoSeed,
    /// A range argument did not parse or was empty.
    #[error("bad range for --{flag}: {value:?} (expected A..B with A < B, or A..=B)")]
    BadRange {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// A percentage outside 0..=100.
    #[error("--{flag} must be a percentage in 0..=100, got {value}")]
    BadPercent {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// More nodes than fit the memory budget.
    #[error(
        "--nodes {nodes}: a mesh of that many nodes needs about {} MiB of node tables, \
         more than the {} MiB budget; use at most {max} nodes",
        (*nodes as u64).saturating_mul(*nodes as u64).saturating_mul(MESH_BYTES_PER_PEER) >> 20,
        MEMORY_BUDGET_BYTES >> 20
    )]
    TooManyNodes {
        /// What was given.
        nodes: usize,
        /// The largest accepted count.
        max: usize,
    },
    /// Another out-of-range value.
    #[error("--{flag}: {why}")]
    BadValue {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: &'static str,
    },
}

/// A validated run configuration. Percentages are kept as given (0..=100).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimConfig {
    /// Scenario name (empty for a sweep).
    pub scenario: String,
    /// The sweep grid to run instead of one scenario.
    pub sweep: Option<String>,
    /// Seeds to run, in order.
    pub seeds: Range<u64>,
    /// Whether a seed range was asked for (prints a summary).
    pub seed_range: bool,
    /// Number of nodes.
    pub nodes: usize,
    /// Loss percentage.
    pub loss_pct: f64,
    /// Bursty instead of uniform loss.
    pub burst_loss: bool,
    /// Duplication percentage.
    pub dup_pct: f64,
    /// Reordering percentage.
    pub reorder_pct: f64,
    /// One-way latency, ms.
    pub latency_ms: u64,
    /// One-way jitter, ms.
    pub jitter_ms: u64,
    /// Uplink bandwidth, Mbit/s.
    pub bandwidth_mbps: Option<f64>,
    /// Path MTU (UDP payload bytes).
    pub mtu: Option<usize>,
    /// Partition window, ms.
    pub partition_ms: Option<(u64, u64)>,
    /// Payload volume.
    pub bytes: u64,
    /// Pending-queue peer limit of every node (`None`: sized for the mesh).
    pub pending_peers: Option<usize>,
    /// Upward path-MTU search ceiling of every node (`None`: the default).
    pub pmtu_ceiling: Option<usize>,
    /// Virtual run time, ms.
    pub duration_ms: u64,
    /// Wire profile.
    pub profile: Profile,
    /// Run each seed twice and compare.
    pub check_determinism: bool,
    /// JSON output.
    pub json: bool,
}

/// Parses `A..B` or `A..=B` into a half-open range. `A..=B` always
/// includes `B`; `A..B` includes it only when `dots_include_end` is set
/// (seed ranges read as "seeds 1 to 100", like the shell's `{1..100}`).
fn parse_range(
    flag: &'static str,
    s: &str,
    dots_include_end: bool,
) -> Result<Range<u64>, ConfigError> {
    let bad = || ConfigError::BadRange {
        flag,
        value: s.to_owned(),
    };
    let (a, b, inclusive) = if let Some((a, b)) = s.split_once("..=") {
        (a, b, true)
    } else if let Some((a, b)) = s.split_once("..") {
        (a, b, dots_include_end)
    } else {
        return Err(bad());
    };
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b.trim().parse().map_err(|_| bad())?;
    let end = if inclusive {
        b.checked_add(1).ok_or_else(bad)?
    } else {
        b
    };
    if a >= end {
        return Err(bad());
    }
    Ok(a..end)
}

fn percent(flag: &'static str, v: f64) -> Result<f64, ConfigError> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(ConfigError::BadPercent {
            flag,
            value: v.to_string(),
        })
    }
}

impl TryFrom<Args> for SimConfig {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let (seeds, seed_range) = match (&a.seeds, a.seed) {
            (Some(r), _) => (parse_range("seeds", r, true)?, true),
            (None, Some(s)) => (s..s.saturating_add(1), false),
            (None, None) if a.sweep.is_some() => (1..11, true), // seeds 1..10
            (None, None) => return Err(ConfigError::NoSeed),
        };
        if seeds.is_empty() {
            return Err(ConfigError::BadValue {
                flag: "seed",
                why: "the largest seed cannot be run alone",
            });
        }
        if a.nodes < MIN_NODES {
            return Err(ConfigError::BadValue {
                flag: "nodes",
                why: "at least 2 nodes: every scenario needs a peer",
            });
        }
        if a.nodes > MAX_NODES {
            return Err(ConfigError::TooManyNodes {
                nodes: a.nodes,
                max: MAX_NODES,
            });
        }
        if let Some(b) = a.bandwidth_mbps {
            if !(b.is_finite() && b > 0.0) {
                return Err(ConfigError::BadValue {
                    flag: "bandwidth-mbps",
                    why: "must be a positive number",
                });
            }
        }
        let partition_ms = match &a.partition_ms {
            Some(p) => {
                let r = parse_range("partition-ms", p, false)?;
                Some((r.start, r.end))
            }
            None => None,
        };
        Ok(SimConfig {
            scenario: a.scenario.unwrap_or_default(),
            sweep: a.sweep,
            seeds,
            seed_range,
            nodes: a.nodes,
            loss_pct: percent("loss", a.loss)?,
            burst_loss: a.burst_loss,
            dup_pct: percent("dup", a.dup)?,
            reorder_pct: percent("reorder", a.reorder)?,
            latency_ms: a.latency_ms,
            jitter_ms: a.jitter_ms,
            bandwidth_mbps: a.bandwidth_mbps,
            mtu: a.mtu,
            partition_ms,
            bytes: a.bytes,
            pending_peers: a.pending_peers,
            pmtu_ceiling: a.pmtu_ceiling,
            duration_ms: a.duration_ms,
            profile: a.profile,
            check_determinism: a.check_determinism,
            json: a.json,
        })
    }
}

impl SimConfig {
    /// Parses a full command line (first item is the program name).
    pub fn parse_from<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let a = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        SimConfig::try_from(a).map_err(|e| e.to_string())
    }

    /// One-way latency.
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// One-way jitter.
    pub fn jitter(&self) -> Duration {
        Duration::from_millis(self.jitter_ms)
    }

    /// The virtual instant at which a run ends.
    pub fn deadline(&self) -> Instant {
        Instant::from_millis(self.duration_ms)
    }

    /// The fault chain for one run: partition, MTU, loss, bandwidth,
    /// latency, reordering, duplication, in that order. Each randomised
    /// rule draws from its own fork of `seed`. The partition (if any)
    /// separates the first half of `nodes` (rounded up) from the rest.
    pub fn faults(&self, seed: Seed, nodes: &[SocketAddr]) -> FaultChain {
        self.faults_after(FaultChain::new(), seed, nodes)
    }

    /// The fault chain of [`Self::faults`] behind the rules already in `c`
    /// (NAT boxes go first, so later rules see translated addresses).
    pub fn faults_after(&self, mut c: FaultChain, seed: Seed, nodes: &[SocketAddr]) -> FaultChain {
        if let Some((start, end)) = self.partition_ms {
            let half = nodes.len().div_ceil(2);
            let (a, b) = nodes.split_at(half.min(nodes.len()));
            c.push(Partition::new(vec![PartitionWindow::symmetric(
                Instant::from_millis(start),
                Instant::from_millis(end),
                Group::of(a.iter().copied()),
                Group::of(b.iter().copied()),
            )]));
        }
        if let Some(m) = self.mtu {
            c.push(Mtu::new(m));
        }
        if self.loss_pct > 0.0 {
            let p = self.loss_pct / 100.0;
            if self.burst_loss {
                c.push(GilbertElliott::with_mean(
                    p,
                    BURST_MEAN_SPELL,
                    seed.fork("fault/burst-loss", 0),
                ));
            } else {
                c.push(UniformLoss::new(p, seed.fork("fault/loss", 0)));
            }
        }
        if let Some(mbps) = self.bandwidth_mbps {
            let rate = (mbps * 1e6 / 8.0).max(1.0) as u64;
            let queue = ((rate as f64 * QUEUE_TIME.as_secs_f64()) as u64).max(MIN_QUEUE_BYTES);
            c.push(Bandwidth::new(rate, queue));
        }
        if self.latency_ms > 0 || self.jitter_ms > 0 {
            c.push(Latency::new(
                self.latency(),
                self.jitter(),
                seed.fork("fault/latency", 0),
            ));
        }
        if self.reorder_pct > 0.0 {
            c.push(Reorder::new(
                self.reorder_pct / 100.0,
                REORDER_MIN,
                REORDER_MAX_FLOOR.max(self.latency() * 2),
                seed.fork("fault/reorder", 0),
            ));
        }
        if self.dup_pct > 0.0 {
            c.push(Duplicate::new(
                self.dup_pct / 100.0,
                DUP_GAP_FLOOR.max(self.jitter()),
                seed.fork("fault/dup", 0),
            ));
        }
        c
    }

    /// The exact command that reruns `seed` with this configuration
    /// (every option that differs from its default, no `--json`).
    pub fn repro_command(&self, seed: u64) -> String {
        let mut s = format!("pilot-sim --scenario {} --seed {seed}", self.scenario);
        // Writing to a String cannot fail.
        let mut add = |args: core::fmt::Arguments<'_>| {
            let _ = s.write_fmt(args);
        };
        if self.nodes != DEFAULT_NODES {
            add(format_args!(" --nodes {}", self.nodes));
        }
        if self.loss_pct != 0.0 {
            add(format_args!(" --loss {}", self.loss_pct));
        }
        if self.burst_loss {
            add(format_args!(" --burst-loss"));
        }
        if self.dup_pct != 0.0 {
            add(format_args!(" --dup {}", self.dup_pct));
        }
        if self.reorder_pct != 0.0 {
            add(format_args!(" --reorder {}", self.reorder_pct));
        }
        if self.latency_ms != DEFAULT_LATENCY_MS {
            add(format_args!(" --latency-ms {}", self.latency_ms));
        }
        if self.jitter_ms != 0 {
            add(format_args!(" --jitter-ms {}", self.jitter_ms));
        }
        if let Some(b) = self.bandwidth_mbps {
            add(format_args!(" --bandwidth-mbps {b}"));
        }
        if let Some(m) = self.mtu {
            add(format_args!(" --mtu {m}"));
        }
        if let Some((a, b)) = self.partition_ms {
            add(format_args!(" --partition-ms {a}..{b}"));
        }
        if self.bytes != DEFAULT_BYTES {
            add(format_args!(" --bytes {}", self.bytes));
        }
        if let Some(p) = self.pending_peers {
            add(format_args!(" --pending-peers {p}"));
        }
        if let Some(p) = self.pmtu_ceiling {
            add(format_args!(" --pmtu-ceiling {p}"));
        }
        if self.duration_ms != DEFAULT_DURATION_MS {
            add(format_args!(" --duration-ms {}", self.duration_ms));
        }
        if self.profile != Profile::Current {
            add(format_args!(" --profile {}", self.profile.as_str()));
        }
        if self.check_determinism {
            add(format_args!(" --check-determinism"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::node_addr;

    fn cfg(extra: &[&str]) -> Result<SimConfig, String> {
        let mut v = vec!["pilot-sim", "--scenario", "x"];
        v.extend_from_slice(extra);
        SimConfig::parse_from(v)
    }

    #[test]
    fn defaults_and_single_seed() {
        let c = cfg(&["--seed", "5"]).unwrap();
        assert_eq!(c.seeds, 5..6);
        assert!(!c.seed_range);
        assert_eq!(c.nodes, DEFAULT_NODES);
        assert_eq!(c.latency_ms, DEFAULT_LATENCY_MS);
        assert_eq!(c.profile, Profile::Current);
        assert_eq!(c.deadline(), Instant::from_millis(DEFAULT_DURATION_MS));
        assert_eq!(c.faults(Seed::new(5), &[]).names(), ["latency"]);
    }

    #[test]
    fn every_flag_maps_to_the_config() {
        let c = cfg(&[
            "--seeds",
            "3..=7",
            "--nodes",
            "9",
            "--loss",
            "12.5",
            "--burst-loss",
            "--dup",
            "3",
            "--reorder",
            "4",
            "--latency-ms",
            "40",
            "--jitter-ms",
            "6",
            "--bandwidth-mbps",
            "8",
            "--mtu",
            "1200",
            "--partition-ms",
            "100..200",
            "--bytes",
            "777",
            "--duration-ms",
            "5000",
            "--profile",
            "legacy",
            "--check-determinism",
            "--json",
        ])
        .unwrap();
        assert_eq!(c.seeds, 3..8);
        assert!(c.seed_range);
        assert_eq!(c.nodes, 9);
        assert_eq!(c.loss_pct, 12.5);
        assert!(c.burst_loss);
        assert_eq!((c.dup_pct, c.reorder_pct), (3.0, 4.0));
        assert_eq!((c.latency_ms, c.jitter_ms), (40, 6));
        assert_eq!(c.bandwidth_mbps, Some(8.0));
        assert_eq!(c.mtu, Some(1200));
        assert_eq!(c.partition_ms, Some((100, 200)));
        assert_eq!((c.bytes, c.duration_ms), (777, 5000));
        assert_eq!(c.profile, Profile::Legacy);
        assert!(c.check_determinism && c.json);
        let addrs: Vec<_> = (0..9).map(node_addr).collect();
        assert_eq!(
            c.faults(Seed::new(3), &addrs).names(),
            [
                "partition",
                "mtu",
                "burst-loss",
                "bandwidth",
                "latency",
                "reorder",
                "dup"
            ]
        );
    }

    #[test]
    fn seeds_range_overrides_seed_and_includes_its_end() {
        let c = cfg(&["--seed", "1", "--seeds", "10..13"]).unwrap();
        assert_eq!(c.seeds, 10..14);
        assert_eq!(cfg(&["--seeds", "1..100"]).unwrap().seeds.count(), 100);
        assert_eq!(cfg(&["--seeds", "5..5"]).unwrap().seeds, 5..6);
        assert_eq!(cfg(&["--seeds", "0..=1"]).unwrap().seeds, 0..2);
    }

    #[test]
    fn partition_range_excludes_its_end() {
        let c = cfg(&["--seed", "1", "--partition-ms", "100..200"]).unwrap();
        assert_eq!(c.partition_ms, Some((100, 200)));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &[][..],
            &["--seeds", "7..3"],
            &["--seeds", "a..3"],
            &["--seeds", "3"],
            &["--seed", "1", "--loss", "101"],
            &["--seed", "1", "--dup", "-1"],
            &["--seed", "1", "--reorder", "NaN"],
            &["--seed", "1", "--partition-ms", "20..10"],
            &["--seed", "1", "--nodes", "0"],
            &["--seed", "1", "--bandwidth-mbps", "0"],
            &["--seed", "1", "--profile", "v2"],
            &["--seed", "1", "--bogus"],
        ] {
            assert!(cfg(bad).is_err(), "{bad:?} accepted");
        }
        assert!(cfg(&["--seed", &u64::MAX.to_string()]).is_err());
    }

    #[test]
    fn repro_command_round_trips() {
        let c = cfg(&[
            "--seeds",
            "3..9",
            "--nodes",
            "4",
            "--loss",
            "2.5",
            "--dup",
            "1",
            "--jitter-ms",
            "3",
            "--mtu",
            "1280",
            "--partition-ms",
            "5..50",
            "--profile",
            "legacy",
            "--json",
        ])
        .unwrap();
        let cmd = c.repro_command(6);
        let back = SimConfig::parse_from(cmd.split_whitespace()).unwrap();
        let want = SimConfig {
            seeds: 6..7,
            seed_range: false,
            json: false,
            ..c
        };
        assert_eq!(back, want, "{cmd}");
        let plain = cfg(&["--seed", "2"]).unwrap();
        assert_eq!(plain.repro_command(2), "pilot-sim --scenario x --seed 2");
    }

    #[test]
    fn fault_streams_are_independent_of_other_rules() {
        // Adding duplication must not change which datagrams the loss rule drops.
        use crate::fault::{InFlight, Verdict};
        let drops = |extra: &[&str]| {
            let mut args = vec!["--seed", "9", "--loss", "30", "--latency-ms", "0"];
            args.extend_from_slice(extra);
            let c = cfg(&args).unwrap();
            let mut chain = c.faults(Seed::new(9), &[]);
            (0..500)
                .map(|i| {
                    let mut p =
                        InFlight::new(node_addr(0), node_addr(1), 10, Instant::from_millis(i));
                    matches!(chain.on_send(p.sent_at, &mut p), Verdict::Drop(_))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(drops(&[]), drops(&["--dup", "50", "--reorder", "20"]));
    }
}
