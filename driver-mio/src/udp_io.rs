//! Batched UDP I/O of a tunnel socket (issue #14), through `quinn-udp`:
//! one `recvmmsg` fills up to [`RECV_SLOTS`] buffers, each of which may
//! hold several coalesced datagrams (GRO) of one sender; one `sendmsg`
//! sends a batch of equal-size datagrams for one destination (GSO) where
//! the kernel offers it, one datagram per call where it does not. The
//! event loop only asks for a batch buffer, queues what the node wrote
//! into it, flushes, and hands received datagrams to the node.
//!
//! This file is the one implementation of both drivers: driver-tokio
//! compiles it into its own `udp_io` (`#[path]`) and wraps `flush`/`recv`
//! in tokio's `try_io`, so it must stay generic over [`AsFd`] and use
//! nothing but `std`, `libc`, `quinn-udp` and `pilot-proto`.
//!
//! The socket keeps the kernel's default fragmentation behaviour: the
//! path MTU is found by the transport's probes (`spec/transport.md` §5.4),
//! and a legacy peer's 4096-byte segments must still cross 1500-byte
//! links as they always did.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsFd;

use pilot_proto::node::MIN_TRANSMIT_BUFFER;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Receive buffers filled by one call.
pub const RECV_SLOTS: usize = 8;
/// Size of one receive buffer: a whole coalesced (GRO) read.
const RECV_SLOT: usize = 65_536;
/// Most bytes of one send batch (the UDP payload limit of one GSO call).
const BATCH_BYTES: usize = 60_000;
/// Most datagrams in one send batch (the kernel's GSO segment limit).
const BATCH_SEGMENTS: usize = 64;
/// Quiet time after which the batch buffers are freed.
pub const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(2);

/// A queued batch not (fully) sent yet.
#[derive(Clone, Copy, Debug)]
struct Pending {
    dst: SocketAddr,
    len: usize,
    segment_size: usize,
    /// Bytes already sent one datagram at a time (after a GSO failure).
    sent: usize,
}

/// Counters of the batched I/O, for stats and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpIoStats {
    /// Send calls that carried more than one datagram (GSO).
    pub gso_sends: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Receive calls that returned data.
    pub recv_calls: u64,
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Batches whose GSO send failed and were sent one by one.
    pub gso_fallbacks: u64,
}

/// Batched I/O state of one UDP socket.
#[derive(Debug)]
pub struct UdpIo {
    state: UdpSocketState,
    rx: Vec<u8>,
    meta: Vec<RecvMeta>,
    tx: Vec<u8>,
    pending: Option<Pending>,
    stats: UdpIoStats,
    /// Last send or receive of a datagram.
    last_used: std::time::Instant,
}

impl UdpIo {
    /// Sets up `socket` (non-blocking, GRO where offered) for batched I/O.
    pub fn new<S: AsFd>(socket: &S) -> io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(socket))?;
        restore_fragmentation(socket);
        Ok(UdpIo {
            state,
            rx: Vec::new(),
            meta: vec![RecvMeta::default(); RECV_SLOTS],
            tx: Vec::new(),
            pending: None,
            stats: UdpIoStats::default(),
            last_used: std::time::Instant::now(),
        })
    }

    /// Datagrams one send batch may hold: 1 without GSO.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, BATCH_SEGMENTS)
    }

    /// The buffer a batch is written into (allocated on first use).
    pub fn tx_buf(&mut self) -> &mut [u8] {
        if self.tx.is_empty() {
            self.tx = vec![0u8; BATCH_BYTES + MIN_TRANSMIT_BUFFER];
        }
        &mut self.tx
    }

    /// Whether a batch waits to be flushed.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Queues the batch of `len` bytes at the start of [`Self::tx_buf`]:
    /// datagrams of `segment_size` bytes (the last may be shorter).
    pub fn queue(&mut self, dst: SocketAddr, len: usize, segment_size: usize) {
        self.pending = Some(Pending {
            dst,
            len: len.min(self.tx.len()),
            segment_size: segment_size.max(1),
            sent: 0,
        });
    }

    /// Sends the queued batch. `WouldBlock` keeps it queued; any other
    /// error drops it (UDP: the transport retransmits) and is returned.
    pub fn flush<S: AsFd>(&mut self, socket: &S) -> io::Result<()> {
        let Some(mut p) = self.pending else {
            return Ok(());
        };
        self.last_used = std::time::Instant::now();
        let bytes = self.tx.get(..p.len).unwrap_or_default();
        let segments = p.len.div_ceil(p.segment_size);
        if p.sent == 0 && segments > 1 {
            let t = Transmit {
                destination: p.dst,
                ecn: None,
                contents: bytes,
                segment_size: Some(p.segment_size),
                src_ip: None,
            };
            match self.state.try_send(UdpSockRef::from(socket), &t) {
                Ok(()) => {
                    self.pending = None;
                    self.stats.gso_sends += 1;
                    self.stats.datagrams_sent += segments as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                // The kernel refused the segmentation (EINVAL/EIO: a
                // segment above the route MTU, an offload-less device):
                // send the datagrams one by one.
                Err(_) => self.stats.gso_fallbacks += 1,
            }
        }
        while p.sent < p.len {
            let end = p.sent.saturating_add(p.segment_size).min(p.len);
            let t = Transmit {
                destination: p.dst,
                ecn: None,
                contents: bytes.get(p.sent..end).unwrap_or_default(),
                segment_size: None,
                src_ip: None,
            };
            match self.state.try_send(UdpSockRef::from(socket), &t) {
                Ok(()) => {
                    p.sent = end;
                    self.stats.datagrams_sent += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.pending = Some(p);
                    return Err(e);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.pending = Some(p);
                    return Err(e);
                }
                Err(e) => {
                    // This datagram is lost; the rest still go.
                    p.sent = end;
                    if p.sent >= p.len {
                        self.pending = None;
                        return Err(e);
                    }
                }
            }
        }
        self.pending = None;
        Ok(())
    }

    /// One batched receive: calls `f(source, datagram)` for every datagram
    /// read (coalesced reads are split at their stride) and returns how
    /// many. `WouldBlock` when nothing is waiting.
    pub fn recv<S: AsFd>(
        &mut self,
        socket: &S,
        mut f: impl FnMut(SocketAddr, &mut [u8]),
    ) -> io::Result<usize> {
        if self.rx.is_empty() {
            self.rx = vec![0u8; RECV_SLOTS * RECV_SLOT];
        }
        let n = {
            let mut slices: Vec<IoSliceMut<'_>> =
                self.rx.chunks_mut(RECV_SLOT).map(IoSliceMut::new).collect();
            self.state
                .recv(UdpSockRef::from(socket), &mut slices, &mut self.meta)?
        };
        self.stats.recv_calls += 1;
        self.last_used = std::time::Instant::now();
        let mut count = 0;
        for (meta, slot) in self.meta.iter().zip(self.rx.chunks_mut(RECV_SLOT)).take(n) {
            let Some(data) = slot.get_mut(..meta.len) else {
                continue;
            };
            let stride = if meta.stride == 0 {
                meta.len.max(1)
            } else {
                meta.stride
            };
            for d in data.chunks_mut(stride) {
                f(meta.addr, d);
                count += 1;
            }
        }
        self.stats.datagrams_received += count as u64;
        Ok(count)
    }

    /// Frees the batch buffers (about 600 KB once touched) when no
    /// datagram went either way for [`IDLE_RELEASE`] before `now`; they
    /// are allocated again by the next send or receive.
    pub fn release_if_idle(&mut self, now: std::time::Instant) {
        if now.saturating_duration_since(self.last_used) < IDLE_RELEASE {
            return;
        }
        if !self.buffers_held() {
            return;
        }
        if self.pending.is_none() {
            self.tx = Vec::new();
        }
        self.rx = Vec::new();
        give_back_free_memory();
    }

    /// When [`Self::release_if_idle`] frees the buffers if no datagram
    /// moves until then (`None` while none are held): an event loop that
    /// would otherwise sleep longer wakes up for it.
    pub fn release_due(&self) -> Option<std::time::Instant> {
        self.buffers_held().then(|| self.last_used + IDLE_RELEASE)
    }

    /// Whether the batch buffers are allocated now.
    pub fn buffers_held(&self) -> bool {
        !self.tx.is_empty() || !self.rx.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> UdpIoStats {
        self.stats
    }
}

/// Returns freed heap memory to the kernel (glibc keeps freed chunks, and
/// after the first 512 KiB receive buffer was freed it serves the next one
/// from the heap rather than a mapping of its own); elsewhere a no-op.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `quinn-udp` forbids IP fragmentation; put back the kernel default
/// (path-MTU discovery with local fragmentation above the known MTU) so
/// datagrams larger than a link's MTU still leave as before. Best effort.
fn restore_fragmentation<S: AsFd>(socket: &S) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = socket.as_fd().as_raw_fd();
        let want: libc::c_int = libc::IP_PMTUDISC_WANT;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor and a pointer to a c_int that
        // outlives the call; failure is harmless (an IPv6-only socket).
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&raw const want).cast(),
                len,
            );
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_MTU_DISCOVER,
                (&raw const want).cast(),
                len,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::{Duration, Instant};

    /// A batch of equal segments plus a short tail arrives as separate
    /// datagrams, in order, with or without GSO/GRO.
    #[test]
    fn a_batch_arrives_as_its_datagrams() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut ia = UdpIo::new(&a).unwrap();
        let mut ib = UdpIo::new(&b).unwrap();
        let seg = 1200;
        let segs = ia.max_segments().min(10);
        let len = seg * (segs - 1) + 300;
        for (i, x) in ia.tx_buf()[..len].iter_mut().enumerate() {
            *x = (i / seg) as u8;
        }
        ia.queue(b.local_addr().unwrap(), len, seg);
        ia.flush(&a).unwrap();
        assert!(!ia.has_pending());
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < segs && Instant::now() < deadline {
            match ib.recv(&b, |from, d| {
                assert_eq!(from, a.local_addr().unwrap());
                got.push(d.to_vec());
            }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), segs);
        for (i, d) in got.iter().enumerate() {
            let want = if i + 1 == segs { 300 } else { seg };
            assert_eq!(d.len(), want);
            assert!(d.iter().all(|&x| x == i as u8));
        }
        assert_eq!(ia.stats().datagrams_sent, segs as u64);
        if segs > 1 {
            // GSO offered: the whole batch left in one call.
            assert_eq!((ia.stats().gso_sends, ia.stats().gso_fallbacks), (1, 0));
        }
        eprintln!("gso segments {}, {:?}", ia.max_segments(), ib.stats());
        // Buffers go when the socket has been quiet for a while.
        assert!(ib.buffers_held());
        let due = ib.release_due().expect("buffers held");
        assert!(due > Instant::now() + IDLE_RELEASE / 2);
        ib.release_if_idle(Instant::now());
        assert!(ib.buffers_held());
        ib.release_if_idle(due);
        assert!(!ib.buffers_held());
        assert_eq!(ib.release_due(), None);
    }
}
