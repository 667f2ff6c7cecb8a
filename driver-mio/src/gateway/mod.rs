//! The IP gateway (`spec/gateway.md`): makes Pilot peers reachable by
//! ordinary TCP clients (curl, browsers) through local IPv4 addresses.
//!
//! Mechanism: every mapped peer gets a `/32` address on the loopback
//! interface (`ip addr add … dev lo`), and the gateway listens on that
//! address for each configured port; an accepted TCP connection becomes a
//! Pilot stream to the same port of the peer, dialled through the daemon's
//! IPC socket, and bytes are copied both ways. The kernel does all TCP/IP;
//! the gateway is a plain proxy.
//!
//! * [`table`] owns the mapping rules (pure, unit-tested).
//! * [`server`] runs the gateway: aliases, listeners, proxies and the
//!   control socket through which `pilotctl gateway map|unmap|list|stop`
//!   change the running gateway.
//! * [`control`] is the control socket's one-line JSON protocol, both
//!   sides.
//! * [`dns`] is the optional DNS stub that answers `<hostname>.pilot`
//!   with the peer's gateway address (mapping it on first use).

pub mod control;
pub mod dns;
pub mod server;
pub mod table;

pub use server::{GatewayConfig, GatewayError};
pub use table::{DEFAULT_SUBNET, Subnet};

/// The ports a gateway forwards unless told otherwise (the reference's
/// defaults).
pub const DEFAULT_PORTS: [u16; 8] = [80, 443, 1000, 1001, 1002, 7, 8080, 8443];

/// The control socket of the gateway that serves the daemon at
/// `daemon_socket`: the same path with `.gateway` appended.
pub fn control_path(daemon_socket: &std::path::Path) -> std::path::PathBuf {
    let mut p = daemon_socket.as_os_str().to_owned();
    p.push(".gateway");
    p.into()
}
