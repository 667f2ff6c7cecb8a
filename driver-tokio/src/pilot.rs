//! [`Pilot`]: one API over both modes (embedded node or daemon client).

use pilot_proto::addr::Addr;

use crate::daemon::DaemonClient;
use crate::embedded::Node;
use crate::error::Error;
use crate::stream::{DatagramSocket, Listener, Stream};

/// Either an embedded [`Node`] or a [`DaemonClient`]; the application code
/// is the same for both.
#[derive(Clone, Debug)]
pub enum Pilot {
    /// A node running inside this process.
    Embedded(Node),
    /// A running `pilot-daemon`, reached over IPC.
    Daemon(DaemonClient),
}

impl From<Node> for Pilot {
    fn from(n: Node) -> Self {
        Pilot::Embedded(n)
    }
}

impl From<DaemonClient> for Pilot {
    fn from(c: DaemonClient) -> Self {
        Pilot::Daemon(c)
    }
}

impl Pilot {
    /// Our virtual address.
    pub async fn addr(&self) -> Result<Addr, Error> {
        match self {
            Pilot::Embedded(n) => Ok(n.addr()),
            Pilot::Daemon(c) => c.addr().await,
        }
    }

    /// Opens a stream to `dst:port`.
    pub async fn connect(&self, dst: Addr, port: u16) -> Result<Stream, Error> {
        match self {
            Pilot::Embedded(n) => n.connect(dst, port).await,
            Pilot::Daemon(c) => c.connect(dst, port).await,
        }
    }

    /// Listens for streams on `port`.
    pub async fn listen(&self, port: u16) -> Result<Listener, Error> {
        match self {
            Pilot::Embedded(n) => n.listen(port),
            Pilot::Daemon(c) => c.listen(port).await,
        }
    }

    /// Binds `port` for datagrams.
    pub async fn bind_datagram(&self, port: u16) -> Result<DatagramSocket, Error> {
        match self {
            Pilot::Embedded(n) => n.bind_datagram(port),
            Pilot::Daemon(c) => c.bind_datagram(port).await,
        }
    }

    /// Sends one datagram from an ephemeral port.
    pub async fn send_datagram(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        match self {
            Pilot::Embedded(n) => n.send_datagram(dst, port, data).await,
            Pilot::Daemon(c) => c.send_datagram(dst, port, data).await,
        }
    }
}
