//! The mode-independent handle types: [`Stream`], [`Listener`],
//! [`DatagramSocket`] and [`Datagram`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use pilot_proto::addr::Addr;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::daemon::{DaemonConn, DaemonDatagrams, DaemonListener};
use crate::embedded::{EmbeddedConn, EmbeddedDatagrams, EmbeddedListener};
use crate::error::Error;

/// A received datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Sender's virtual address.
    pub src: Addr,
    /// Sender's port.
    pub src_port: u16,
    /// Our port it was sent to.
    pub dst_port: u16,
    /// Payload.
    pub data: Vec<u8>,
}

enum StreamInner {
    Embedded(EmbeddedConn),
    Daemon(DaemonConn),
}

/// A reliable, ordered byte stream to a remote Pilot port.
///
/// Reads return end of stream after the peer's FIN; `poll_shutdown` sends
/// ours; dropping the stream closes it.
pub struct Stream {
    inner: StreamInner,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, p) = self.peer_addr();
        f.debug_struct("Stream")
            .field("local_port", &self.local_port())
            .field("peer", &format_args!("{a}:{p}"))
            .finish()
    }
}

impl Stream {
    pub(crate) fn from_embedded(c: EmbeddedConn) -> Self {
        Stream {
            inner: StreamInner::Embedded(c),
        }
    }

    pub(crate) fn from_daemon(c: DaemonConn) -> Self {
        Stream {
            inner: StreamInner::Daemon(c),
        }
    }

    /// The daemon's connection id, in daemon-client mode.
    pub fn daemon_conn_id(&self) -> Option<u32> {
        match &self.inner {
            StreamInner::Embedded(_) => None,
            StreamInner::Daemon(c) => Some(c.conn_id()),
        }
    }

    /// The remote address and port.
    pub fn peer_addr(&self) -> (Addr, u16) {
        match &self.inner {
            StreamInner::Embedded(c) => (c.remote, c.remote_port),
            StreamInner::Daemon(c) => (c.remote, c.remote_port),
        }
    }

    /// Our local port (0 for a stream dialled through a daemon, which
    /// does not report it).
    pub fn local_port(&self) -> u16 {
        match &self.inner {
            StreamInner::Embedded(c) => c.local_port,
            StreamInner::Daemon(c) => c.local_port,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Embedded(c) => c.poll_read(cx, buf),
            StreamInner::Daemon(c) => c.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Embedded(c) => c.poll_write(cx, buf),
            StreamInner::Daemon(c) => c.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            // Written data already sits in the node's send buffer and the
            // driver sends it as the window allows.
            StreamInner::Embedded(_) => Poll::Ready(Ok(())),
            StreamInner::Daemon(c) => c.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Embedded(c) => c.poll_shutdown(),
            StreamInner::Daemon(c) => c.poll_shutdown(cx),
        }
    }
}

enum ListenerInner {
    Embedded(EmbeddedListener),
    Daemon(DaemonListener),
}

/// Accepts incoming streams on one port. Dropping it unbinds the port.
pub struct Listener {
    inner: ListenerInner,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("port", &self.port())
            .finish()
    }
}

impl Listener {
    pub(crate) fn from_embedded(l: EmbeddedListener) -> Self {
        Listener {
            inner: ListenerInner::Embedded(l),
        }
    }

    pub(crate) fn from_daemon(l: DaemonListener) -> Self {
        Listener {
            inner: ListenerInner::Daemon(l),
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        match &self.inner {
            ListenerInner::Embedded(l) => l.port(),
            ListenerInner::Daemon(l) => l.port(),
        }
    }

    /// Waits for the next incoming stream. Cancel-safe.
    pub async fn accept(&self) -> Result<Stream, Error> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next incoming stream.
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Stream, Error>> {
        match &self.inner {
            ListenerInner::Embedded(l) => l.poll_accept(cx).map_ok(Stream::from_embedded),
            ListenerInner::Daemon(l) => l.poll_accept(cx).map_ok(Stream::from_daemon),
        }
    }
}

enum DatagramInner {
    Embedded(EmbeddedDatagrams),
    Daemon(DaemonDatagrams),
}

/// A port bound for datagrams. Dropping it unbinds the port.
pub struct DatagramSocket {
    inner: DatagramInner,
}

impl std::fmt::Debug for DatagramSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramSocket")
            .field("port", &self.port())
            .finish()
    }
}

impl DatagramSocket {
    pub(crate) fn from_embedded(d: EmbeddedDatagrams) -> Self {
        DatagramSocket {
            inner: DatagramInner::Embedded(d),
        }
    }

    pub(crate) fn from_daemon(d: DaemonDatagrams) -> Self {
        DatagramSocket {
            inner: DatagramInner::Daemon(d),
        }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        match &self.inner {
            DatagramInner::Embedded(d) => d.port(),
            DatagramInner::Daemon(d) => d.port(),
        }
    }

    /// Sends `data` to `dst:port` (embedded: from our bound port; through
    /// a daemon: from an ephemeral port it picks). Datagrams are
    /// unreliable: success means queued, not delivered.
    pub async fn send_to(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        match &self.inner {
            DatagramInner::Embedded(d) => d.send_to(dst, port, data).await,
            DatagramInner::Daemon(d) => d.send_to(dst, port, data).await,
        }
    }

    /// Waits for the next datagram. Cancel-safe.
    pub async fn recv_from(&self) -> Result<Datagram, Error> {
        std::future::poll_fn(|cx| match &self.inner {
            DatagramInner::Embedded(d) => d.poll_recv(cx),
            DatagramInner::Daemon(d) => d.poll_recv(cx),
        })
        .await
    }
}
