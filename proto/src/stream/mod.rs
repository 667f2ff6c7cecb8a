//! The reliable stream transport (protocol 0x01), as sans-IO building
//! blocks (`spec/transport.md`).
//!
//! Each submodule owns one mechanism and knows nothing about the packet
//! header: connections talk in their own small [`conn::Segment`] type, which
//! the node maps to and from the wire header.
//!
//! * [`seq`]: 32-bit serial sequence arithmetic.
//! * [`consts`]: every protocol constant of the transport, in one place.
//! * [`sack`]: the SACK payload codec and the sender's SACK scoreboard.
//! * [`rtt`]: RTT estimation and the retransmission timeout (RFC 6298).
//! * [`cc`]: the congestion-controller trait and NewReno.
//! * [`pmtu`]: the segment size and path-MTU black-hole detection.
//! * [`recv_buf`]: reassembly, flow-control window and SACK generation.
//! * [`send_buf`]: the bounded send buffer, segmentation, Nagle and the
//!   retransmission queue.
//! * [`conn`]: the per-connection state machine tying them together.

pub mod cc;
pub mod conn;

pub mod consts;
pub mod pmtu;
pub mod recv_buf;
pub mod rtt;
pub mod sack;
pub mod send_buf;
pub mod seq;
