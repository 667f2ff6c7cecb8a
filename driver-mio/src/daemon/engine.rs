//! The interface the event loop drives: the shape of
//! `proto::daemon::Daemon` (DAEMON_PLAN Seam A) as a trait, so the loop
//! does not depend on how the sans-IO daemon spells its names, and can be
//! exercised with a small stand-in in unit tests.
//!
//! Call-order contract (as `proto::node::Node`): after any input, drain
//! [`Engine::poll_transmit`], [`Engine::poll_registry_bytes`],
//! [`Engine::poll_action`] and every client's [`Engine::ipc_output`]
//! until empty, then re-arm the one timer from [`Engine::poll_timeout`].

use std::net::SocketAddr;

use pilot_proto::time::Instant;

/// Identifier of one IPC client, unique for the daemon's lifetime.
pub type ClientId = u64;

/// Something only the driver can do, requested by the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the registry TCP connection (non-blocking); report the outcome
    /// with `registry_connected` or `registry_disconnected`.
    DialRegistry,
    /// Close the registry connection.
    CloseRegistry,
    /// Replace `trust.json` with this text (atomically).
    SaveTrust(String),
    /// Save a received file into `received/` (name already sanitised).
    SaveReceivedFile {
        /// File name.
        name: String,
        /// Contents.
        data: Vec<u8>,
        /// The sender, recorded in `received.jsonl`.
        from: pilot_proto::addr::Addr,
    },
    /// Replace the node profile (`profile.json`) with this JSON text.
    SaveProfile(String),
    /// Save a message into `inbox/`.
    SaveInbox {
        /// File name.
        name: String,
        /// The JSON document.
        json: String,
    },
    /// The registry accepted us (first time or again).
    Registered {
        /// Our node ID.
        node_id: u32,
        /// Our virtual address, text form.
        address: String,
    },
    /// A trust event, logged at INFO: its name (`handshake.pending`, …),
    /// the peer and a human sentence.
    Trust {
        /// Event name.
        event: &'static str,
        /// The peer node.
        node: u32,
        /// What happened, for people.
        message: String,
    },
    /// Graceful shutdown finished; the driver exits.
    Stopped,
}

/// One UDP datagram to send: `len` bytes of the caller's buffer to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Destination.
    pub dst: SocketAddr,
    /// Bytes written into the buffer.
    pub len: usize,
}

/// The sans-IO daemon as the event loop sees it.
pub trait Engine {
    /// A datagram arrived on the tunnel socket.
    fn handle_udp(&mut self, now: Instant, from: SocketAddr, bytes: &mut [u8]);
    /// The next datagram to send, written into `buf`.
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Datagram>;
    /// Up to `max_segments` datagrams for one destination, back to back in
    /// `buf`, all of `segment_size` bytes but a shorter last one (the GSO
    /// layout); `(dst, len, segment_size)`. By default one datagram.
    fn poll_transmit_batch(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        max_segments: usize,
    ) -> Option<(SocketAddr, usize, usize)> {
        let _ = max_segments;
        self.poll_transmit(now, buf).map(|d| (d.dst, d.len, d.len))
    }
    /// The registry connection is established.
    fn registry_connected(&mut self, now: Instant);
    /// The registry connection failed or closed.
    fn registry_disconnected(&mut self, now: Instant);
    /// Bytes read from the registry connection.
    fn handle_registry_bytes(&mut self, now: Instant, bytes: &[u8]);
    /// Bytes to write to the registry connection.
    fn poll_registry_bytes(&mut self) -> Option<Vec<u8>>;
    /// A new IPC client; `None` refuses it (client limit).
    fn ipc_open(&mut self, now: Instant) -> Option<ClientId>;
    /// Bytes read from an IPC client.
    fn handle_ipc_bytes(&mut self, now: Instant, client: ClientId, bytes: &[u8]);
    /// The client disconnected (or was closed by the driver).
    fn ipc_closed(&mut self, now: Instant, client: ClientId);
    /// Back-pressure: do not read from this client now.
    fn ipc_read_paused(&self, client: ClientId) -> bool;
    /// Pending output for the client.
    fn ipc_output(&mut self, client: ClientId) -> Option<&[u8]>;
    /// The driver wrote `n` bytes of [`Engine::ipc_output`].
    fn ipc_consumed(&mut self, client: ClientId, n: usize);
    /// Close this client once its output is written.
    fn ipc_should_close(&self, client: ClientId) -> bool;
    /// When [`Engine::handle_timeout`] is next due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Runs due timers.
    fn handle_timeout(&mut self, now: Instant);
    /// The next driver action.
    fn poll_action(&mut self) -> Option<Action>;
    /// Begins a graceful stop; [`Action::Stopped`] follows.
    fn shutdown(&mut self, now: Instant);
    /// Totals of dropped unauthenticated input per reason (for the
    /// rate-limited debug log); empty if the engine does not count them.
    fn auth_drops(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
