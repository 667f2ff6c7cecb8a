//! # pilot-driver-tokio
//!
//! Pilot Protocol for tokio applications, in two modes behind one API:
//!
//! * **Embedded**: [`Node`] runs a sans-IO [`pilot_proto::node::Node`] on a
//!   tokio [`UdpSocket`](tokio::net::UdpSocket) inside one driver task.
//!   Peers are given statically ([`Node::add_peer`]) or found through a
//!   registry ([`NodeConfig::registry`]).
//! * **Daemon client**: [`daemon::DaemonClient`] talks to a running
//!   `pilot-daemon` over its IPC socket.
//!
//! Both hand out the same [`Stream`] (implements
//! [`AsyncRead`](tokio::io::AsyncRead) + [`AsyncWrite`](tokio::io::AsyncWrite))
//! and [`Listener`] types, and [`Pilot`] wraps either mode so an application
//! can pick one at run time.
//!
//! ## How the embedded driver works
//!
//! One task owns the UDP socket and the one timer; the `proto` node sits
//! behind a short-held lock shared with the handles. A stream's
//! `poll_read`/`poll_write` copy straight between the caller's buffer and
//! the node's own bounded stream buffers (no extra queue in between), and
//! park on a per-connection waker when there is nothing to read or no room
//! to write; the driver wakes exactly those wakers when the node reports
//! `Readable`/`Writable`. After every handle operation the driver is
//! nudged to drain `poll_transmit`/`poll_event` (the `proto` call order).
//!
//! ## Closing
//!
//! `poll_shutdown` sends our FIN after all written data; we keep reading
//! until the peer's FIN. Pilot has no half-close on the wire
//! (`spec/transport.md` §8): once our FIN reaches the peer, the peer reads
//! end of stream and its further writes fail with `BrokenPipe`. Dropping a
//! stream closes it (FIN; unread and later data is discarded). Every
//! future is cancellation-safe: dropping a pending `connect` abandons the
//! dial, dropping a pending `accept` or `recv_from` loses nothing.

pub mod daemon;
mod embedded;
mod error;
mod pilot;
mod registry;
pub mod secure;
mod stream;
mod udp_io;

pub use daemon::DaemonClient;
pub use embedded::{DATAGRAM_QUEUE, DriverStats, Node, NodeConfig, PathInfo};
pub use error::Error;
pub use pilot::Pilot;
pub use pilot_proto::addr::Addr;
pub use pilot_proto::crypto::provider::Selected as CryptoChoice;
pub use pilot_proto::daemon::paths::{PathKind, PathStats};
pub use pilot_proto::wire::WireProfile;
pub use registry::RegistryConfig;
pub use stream::{Datagram, DatagramSocket, Listener, Stream};
