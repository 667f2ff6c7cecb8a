//! # pilot-proto
//!
//! The sans-IO core of Pilot Protocol. Everything that decides what goes on
//! the wire lives here: addresses, the packet header, tunnel frames, beacon
//! messages, the IPC codec, and (in later modules) key exchange, the
//! encrypted envelope, the stream transport and the registry and beacon
//! state machines.
//!
//! This crate never performs I/O, never reads a clock and never draws
//! randomness of its own: bytes and time go in, bytes, timers and events
//! come out. Decoders never panic on input and return typed errors; encoders
//! write into caller-owned buffers.
//!
//! ## Call order
//!
//! The daemon state machine is [`node::Node`]. After any input
//! (`handle_datagram`, `handle_timeout`, or an application command), drain
//! `poll_transmit` and `poll_event` until both return `None`, then re-read
//! `poll_timeout` and call `handle_timeout` at that instant. Spurious
//! timeouts are harmless.
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
pub mod services;
pub mod stream;
pub mod time;
pub mod wire;
