//! # pilot-proto
//!
//! The sans-IO core of Pilot Protocol: everything that decides what goes on
//! the wire. Bytes and time go in; bytes, timers and events come out. This
//! crate never performs I/O, never reads a clock and never draws randomness
//! of its own (randomness comes in as a seeded RNG); `proto/clippy.toml`
//! forbids the clock, OS-seeded hashing and unordered std maps, and CI's
//! clippy run enforces it. Decoders never panic on input and return typed
//! errors; encoders write into caller-owned buffers; every queue is bounded.
//!
//! ## Modules
//!
//! * [`wire`]: codecs of the packet header, tunnel frames, beacon messages
//!   and the daemon IPC, the [`WireProfile`] switch, and the client side of
//!   an IPC connection ([`wire::ipc::client::ClientSession`]).
//! * [`crypto`]: key exchange, the encrypted envelope and tunnel sessions.
//! * [`stream`]: the reliable stream transport of one connection.
//! * [`node`]: [`Node`], one overlay node (tunnels, streams, datagrams).
//! * [`daemon`]: [`Daemon`], a node plus IPC clients, the registry link and
//!   the built-in services.
//! * [`registry`], [`beacon`]: the rendezvous state machines and their
//!   clients.
//! * [`resolve`]: the peer [`resolve::Resolver`] on top of the registry
//!   client (look-up, private second step, identity keys), shared by the
//!   daemon and embedders.
//! * [`services`]: the built-in port services.
//! * [`addr`], [`time`]: virtual addresses, the monotonic [`Instant`] and
//!   the registry's wall-clock [`UnixTime`].
//!
//! ## Call order
//!
//! A [`Node`] is driven like this: after any input (`handle_datagram`,
//! `handle_timeout`, or an application command), drain `poll_transmit` and
//! `poll_event` until both return `None`, then re-read `poll_timeout` and
//! call `handle_timeout` at that instant. Spurious timeouts are harmless.
//! A [`Daemon`] is driven the same way through its own inputs and outputs
//! (`spec/daemon.md`).
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod addr;
pub mod beacon;
pub mod crypto;
pub mod daemon;
pub mod node;
pub mod registry;
pub mod resolve;
pub mod services;
pub mod stream;
pub mod time;
pub mod wire;

pub use addr::Addr;
pub use daemon::{Daemon, DaemonConfig};
pub use node::{ConnId, Event, Node, NodeConfig, NodeError};
pub use time::{Instant, UnixTime};
pub use wire::{Transmit, WireProfile};
