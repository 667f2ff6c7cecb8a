//! # pilot-sim
//!
//! A deterministic network of sans-IO nodes in memory: one seed, virtual
//! time, and a chain of seeded fault rules.
//!
//! - [`seed`]: the master seed and its forked per-subsystem RNG streams.
//! - [`node`]: the [`SimNode`] contract (the sans-IO interface a node
//!   fulfils) and endpoint labels.
//! - [`fault`]: the fault rules (latency, loss, duplication, reordering,
//!   MTU, bandwidth, partitions, clogging, NAT boxes) and the chain they
//!   form.
//! - [`engine`]: [`Sim`], the event queue and the run loop.
//! - [`trace`]: the running trace hash that makes runs comparable.
//! - [`check`]: invariant checkers run over every scenario.
//! - [`hashing`]: a fast stable hasher for the hot per-datagram maps.
//! - [`scenario`]: named experiments and their registry.
//! - [`config`]: the command-line contract as a library value
//!   ([`config::SimConfig`]) and the fault chain it implies.
//! - [`pilot`]: the protocol node as a [`SimNode`].
//! - [`pair`]: two ends of one stream connection on a simulated path (the
//!   transport's lossy-path tests).
//! - [`tcp`]: the reliable byte stream the registry's TCP connections
//!   are modelled with (loss becomes delay).
//! - [`rendezvous`]: the registry and beacon state machines with an
//!   in-memory store, as a [`SimNode`].
//! - [`daemon_host`]: a full daemon with its disk and IPC applications,
//!   as a [`SimNode`] (the only module that drives the daemon's API).
//! - [`net`]: whole networks (a rendezvous and daemon hosts) and the
//!   harness that scripts them.
//! - [`scenarios`]: the built-in scenarios over it.
//! - [`cli`]: the `pilot-sim` runner (seeds, JSON lines, repro commands).
//!
//! ## The driving rule
//!
//! After every input to a node (`handle_datagram`, `handle_timeout`, or an
//! application command issued through [`Sim::with_node`]) the engine calls
//! `poll_transmit` and `poll_event` until each returns `None`, then reads
//! `poll_timeout`. Nodes never see wall-clock time or ambient randomness:
//! time is the engine's virtual [`Instant`](pilot_proto::time::Instant) and
//! randomness comes from [`Seed::fork`]. The same seed and configuration
//! therefore give the same trace hash, bit for bit.

pub mod check;
pub mod cli;
pub mod config;
pub mod daemon_host;
pub mod engine;
pub mod fault;
pub mod hashing;
pub mod net;
pub mod node;
pub mod pair;
pub mod pilot;
pub mod rendezvous;
pub mod scenario;
pub mod scenarios;
pub mod seed;
pub mod sweep;
pub mod tcp;
pub mod trace;

pub use check::{CheckResult, Checker};
pub use engine::{Limits, Sim, SimError, Stats};
pub use fault::{FaultChain, FaultRule, Verdict};
pub use node::{NodeId, SimNode, Transmit, node_addr};
pub use seed::{Seed, SimRng};
pub use trace::{TraceDigest, TraceHash};
