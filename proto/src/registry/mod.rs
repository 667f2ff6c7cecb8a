//! The registry of the rendezvous service, sans-IO (`spec/registry.md`).
//!
//! * [`codec`] — the TCP framing (`[u32 length][JSON]`) and the typed
//!   request/response messages.
//! * [`messages`] — the typed requests and responses, for callers that
//!   build and read messages as values (tests, benchmarks, tools).
//! * [`framing`] — that framing for drivers: a client moves bytes through
//!   [`client::RegistryClient`], a server uses the frame helpers.
//! * [`server`] — the registry state machine: requests and time go in,
//!   replies, durable [`server::Change`]s and notifications come out.
//! * [`client`] — the node-side half: registration, heartbeats, resolves and
//!   inbox polling with retries and exponential back-off.
//! * [`snapshot`] — the reference's JSON snapshot format, for migrating state
//!   in and out of a [`server::Registry`].
//! * [`records`] — the state as keyed records and the change sets a
//!   durable store applies atomically.
//! * [`auth`] — Ed25519 request signatures (legacy fixed challenges and our
//!   timestamped strong form) and admin-token comparison.
//! * [`policy`] — network roles and the managed-network policy language.
//! * [`validate`] — hostname, tag and network-name rules.
//! * [`ratelimit`] — the per-source-IP token buckets.
//! * [`clock`] — Unix-time and RFC 3339 conversions for the registry's
//!   wall-clock fields.
//!
//! Time convention: the registry hands out wall-clock values (heartbeat
//! `time`, inbox timestamps, snapshot dates), so the server, its state,
//! records, snapshots and rate limits take a [`crate::time::UnixTime`], never a
//! node's monotonic [`crate::time::Instant`]. The node-side
//! [`client::RegistryClient`] runs on the node's `Instant` and converts
//! explicitly ([`crate::time::UnixTime::of_instant`]) where it signs a
//! timestamp.

pub mod auth;
pub mod client;
pub(crate) mod clock;
pub mod codec;
pub mod framing;
pub mod limits;
pub mod messages;
pub mod policy;
pub(crate) mod ratelimit;
pub mod records;
pub mod server;
pub mod snapshot;
pub(crate) mod validate;

/// Text form of a virtual address, `N:NNNN.HHHH.LLLL` (`spec/wire.md` §1.2).
pub fn format_addr(network: u16, node: u32) -> String {
    crate::addr::Addr::new(network, node).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_text_form() {
        assert_eq!(format_addr(0, 42), "0:0000.0000.002A");
        assert_eq!(format_addr(1, 0x00A3_F291), "1:0001.00A3.F291");
        assert_eq!(format_addr(65535, u32::MAX), "65535:FFFF.FFFF.FFFF");
    }
}
