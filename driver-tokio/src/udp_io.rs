//! Batched UDP I/O of the embedded node's tunnel socket (issue #14): the
//! daemon's `udp_io` (`driver-mio/src/udp_io.rs`, `quinn-udp` with
//! `recvmmsg`/GRO and GSO batches) compiled into this crate from the same
//! source file, so the two drivers share one implementation without this
//! library depending on the daemon crate (mio, redb, PostgreSQL, TLS).
//! This module only owns the tokio side: every send and receive goes
//! through `UdpSocket::try_io`, so tokio's readiness is cleared on
//! `WouldBlock`.

use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The shared implementation (one source file for both drivers). The
/// daemon uses every item; the embedded node leaves the counters unused.
#[allow(dead_code)]
#[path = "../../driver-mio/src/udp_io.rs"]
mod shared;

/// Batched I/O state of the tunnel socket: [`shared::UdpIo`] with
/// `flush` and `recv` taking the tokio socket.
#[derive(Debug)]
pub(crate) struct UdpIo(shared::UdpIo);

impl UdpIo {
    /// Sets up `socket` for batched I/O (see [`shared::UdpIo::new`]).
    pub(crate) fn new(socket: &UdpSocket) -> io::Result<Self> {
        shared::UdpIo::new(socket).map(UdpIo)
    }

    /// Sends the queued batch; `WouldBlock` keeps it queued and clears
    /// the socket's write readiness.
    pub(crate) fn flush(&mut self, socket: &UdpSocket) -> io::Result<()> {
        socket.try_io(Interest::WRITABLE, || self.0.flush(socket))
    }

    /// One batched receive (see [`shared::UdpIo::recv`]); `WouldBlock`
    /// clears the socket's read readiness.
    pub(crate) fn recv(
        &mut self,
        socket: &UdpSocket,
        mut f: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        socket.try_io(Interest::READABLE, || self.0.recv(socket, &mut f))
    }
}

impl Deref for UdpIo {
    type Target = shared::UdpIo;
    fn deref(&self) -> &shared::UdpIo {
        &self.0
    }
}

impl DerefMut for UdpIo {
    fn deref_mut(&mut self) -> &mut shared::UdpIo {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Through tokio's readiness: a batch queued by one socket arrives as
    /// its datagrams at the other (the shared file's own test checks the
    /// same on blocking std sockets).
    #[tokio::test]
    async fn a_batch_arrives_through_tokio() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut ia = UdpIo::new(&a).unwrap();
        let mut ib = UdpIo::new(&b).unwrap();
        let seg = 1200;
        let segs = ia.max_segments().min(10);
        let len = seg * (segs - 1) + 300;
        for (i, x) in ia.tx_buf()[..len].iter_mut().enumerate() {
            *x = (i / seg) as u8;
        }
        ia.queue(b.local_addr().unwrap(), len, seg);
        a.writable().await.unwrap();
        ia.flush(&a).unwrap();
        assert!(!ia.has_pending());
        let mut got: Vec<Vec<u8>> = Vec::new();
        let from_a = a.local_addr().unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            while got.len() < segs {
                b.readable().await.unwrap();
                match ib.recv(&b, |from, d| {
                    assert_eq!(from, from_a);
                    got.push(d.to_vec());
                }) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .unwrap();
        for (i, d) in got.iter().enumerate() {
            let want = if i + 1 == segs { 300 } else { seg };
            assert_eq!(d.len(), want);
            assert!(d.iter().all(|&x| x == i as u8));
        }
    }
}
