//! # pilot-driver-mio
//!
//! The production driver: a mio event loop around `pilot_proto` state
//! machines. It will host the `pilot-daemon`, `pilotctl` and
//! `pilot-rendezvous` binaries; protocol decisions stay in `pilot-proto`.
pub mod daemon;
pub mod daemon_metrics;
pub mod duration;
pub mod gateway;
pub mod http_endpoint;
pub mod ipc_client;
pub mod pilotctl;
pub mod rendezvous;
pub mod udp_io;
pub mod webhook;
