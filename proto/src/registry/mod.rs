//! The registry of the rendezvous service, sans-IO (`spec/registry.md`).
//!
//! * [`codec`] — the TCP framing (`[u32 length][JSON]`) and the typed
//!   request/response messages.
//! * [`server`] — the registry state machine: requests and time go in,
//!   replies, durable [`server::Change`]s and notifications come out.
//! * [`auth`] — Ed25519 request signatures (legacy fixed challenges and our
//!   timestamped strong form) and admin-token comparison.
//! * [`validate`] — hostname, tag and network-name rules.
//! * [`ratelimit`] — the per-source-IP token buckets.
//! * [`clock`] — Unix-time and RFC 3339 conversions for the registry's
//!   wall-clock fields.
//!
//! Time convention: the registry hands out wall-clock values (heartbeat
//! `time`, inbox timestamps, snapshot dates), so every [`crate::time::Instant`]
//! given to this module is read as **nanoseconds since the Unix epoch**.

pub mod auth;
pub mod clock;
pub mod codec;
pub mod limits;
pub mod ratelimit;
pub mod server;
pub mod validate;

/// Which generation of the reference registry we mimic on the wire where the
/// two differ (`spec/registry.md` §9). This is the one switch for the
/// registry; it mirrors the crate-wide wire profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Profile {
    /// The newest reference behaviour (default).
    #[default]
    Current,
    /// The Feb-2026 "v1.8" registry.
    Legacy,
}

/// Formats a virtual address as text: `N:HHHH.HHHH.HHHH` (`spec/wire.md` §1).
///
/// The registry only ever needs the text form, so it keeps this small helper
/// rather than depending on the address type's parser.
pub fn format_addr(network: u16, node: u32) -> String {
    format!(
        "{}:{:04X}.{:04X}.{:04X}",
        network,
        network,
        node >> 16,
        node & 0xFFFF
    )
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
