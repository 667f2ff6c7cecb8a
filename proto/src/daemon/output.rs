//! The daemon's single output channel (`spec/daemon.md` §1.1): everything
//! the daemon asks of its driver comes out of [`super::Daemon::poll_output`]
//! as one [`Output`], and the outcome of requested disk work goes back in
//! through [`super::Daemon::disk_done`] with its [`WorkToken`].

use crate::addr::Addr;
use crate::node::Transmit;
use crate::services::handshake::TrustEvent;
use crate::time::Instant;

use super::ClientId;

/// One thing the driver must do, from [`super::Daemon::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send the first `len` bytes of the buffer given to `poll_output` as
    /// one UDP datagram to `dst`.
    Transmit(Transmit),
    /// Send the first `len` bytes of the buffer as datagrams of
    /// `segment_size` bytes (the last may be shorter), all to `dst`: one
    /// GSO send, or one send each. Only after
    /// [`super::Daemon::set_max_segments`] above 1; `buf` must then hold
    /// that many segments of the largest size.
    TransmitBatch(crate::node::TransmitBatch),
    /// Open the registry TCP connection, then report
    /// [`super::Daemon::registry_connected`] (or
    /// [`super::Daemon::registry_disconnected`]).
    DialRegistry,
    /// Close the registry connection (the daemon already counts it as
    /// closed; do not report it back).
    CloseRegistry,
    /// Write these bytes to the registry connection, in order.
    RegistryBytes(Vec<u8>),
    /// Write these bytes to IPC client `client`, in order, and report what
    /// was written with [`super::Daemon::ipc_consumed`]: until then the
    /// bytes count against the client's output bound (back-pressure).
    Ipc {
        /// The client.
        client: ClientId,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Close IPC client `client` now (all its output was written), then
    /// report [`super::Daemon::ipc_closed`].
    CloseClient(ClientId),
    /// Perform this disk write and report its outcome with
    /// [`super::Daemon::disk_done`].
    Disk(DiskWork),
    /// Something to log or act upon.
    Event(DaemonEvent),
    /// Nothing else is due: call [`super::Daemon::handle_timeout`] at this
    /// instant (`None`: no timer). Comes once at the end of every drain,
    /// just before `poll_output` returns `None`.
    Timeout(Option<Instant>),
}

/// Identifies one [`DiskWork`] until [`super::Daemon::disk_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkToken(pub u64);

/// A disk write the daemon asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWork {
    /// Report the outcome with this token.
    pub token: WorkToken,
    /// What to write.
    pub write: DiskWrite,
}

/// The content of a [`DiskWork`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskWrite {
    /// Replace `trust.json` with this text, atomically.
    Trust(String),
    /// Replace the node profile (`{"hostname","public","tags"}` JSON) so
    /// that a restart applies it again (`spec/daemon.md` §2).
    Profile(String),
    /// Store a received file under `<dir>/received/` (name already safe).
    /// The sender gets its ACK only once this succeeded; a failure is
    /// reported to it as an error.
    ReceivedFile {
        /// File name.
        name: String,
        /// Contents.
        data: Vec<u8>,
        /// The sender's address.
        from: Addr,
    },
    /// Store an inbox record under `<dir>/inbox/` (name already safe);
    /// acknowledged to the sender like [`DiskWrite::ReceivedFile`].
    Inbox {
        /// File name.
        name: String,
        /// JSON text.
        json: String,
    },
    /// A task file under `<dir>/tasks/` (`spec/services.md` §12.3);
    /// nothing waits for the outcome.
    Task(crate::services::tasks::TaskEffect),
    /// Key rotation, step 1 (`spec/daemon.md` §2.9): save this new
    /// identity as `<identity file>.next` (write a temporary file, sync,
    /// rename, sync the directory) before the registry is asked.
    IdentityNext(crate::crypto::identity::Identity),
    /// Key rotation, last step: replace the identity file with this
    /// identity the same atomic way, then remove `<identity file>.next`.
    IdentityCommit(crate::crypto::identity::Identity),
    /// The registry refused the rotation: remove `<identity file>.next`.
    IdentityNextDiscard,
}

/// Something the daemon reports (logs, readiness, exit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonEvent {
    /// The registry accepted the node (first time or again).
    Registered {
        /// Node ID.
        node_id: u32,
        /// Virtual address text.
        address: String,
    },
    /// A trust event to log (`spec/daemon.md` §6).
    Trust(TrustEvent),
    /// A line for the debug log (dropped tunnel frames, endpoint moves,
    /// dead peers, tunnels closed by a revoke). Bounded; overflow is
    /// counted in the stats.
    Diagnostic(String),
    /// [`super::Daemon::shutdown`] finished: exit.
    Stopped,
    /// Webhook work for the driver (`spec/services.md` §13).
    Webhook(WebhookOutput),
}

/// What the driver's webhook deliverer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutput {
    /// Deliver to this URL from now on (`None`: stop delivering).
    Url(Option<String>),
    /// POST this JSON document (one event).
    Event(String),
}
