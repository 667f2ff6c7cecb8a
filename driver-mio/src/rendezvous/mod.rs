//! The `pilot-rendezvous` server: the registry (TCP) and beacon (UDP) of
//! `pilot_proto` on one mio event loop, with a redb-backed durable store.

pub mod cli;
pub mod metrics;
pub mod pgstore;
pub mod server;
pub mod store;
pub mod tls;
pub mod wal;

pub use cli::{RendezvousArgs, RendezvousError, run_rendezvous};
