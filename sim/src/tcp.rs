//! A reliable byte stream over the simulated network: the model of the
//! registry's TCP connections.
//!
//! TCP itself never loses or reorders bytes; what a lossy path does to it
//! is delay. So the registry's connections are not special-cased around
//! the fault chain: their segments travel as ordinary simulated datagrams
//! (loss, duplication, reordering, jitter and partitions all apply) and
//! this small sliding-window protocol turns what the faults do into delay,
//! as TCP would. A connection that makes no progress for
//! [`GIVE_UP`] (or whose connect gets no answer for [`CONNECT_TIMEOUT`], or
//! that receives a reset) fails, and the owner reports it as closed.
//!
//! Segments carry the sim-only prefix [`MAGIC`], so a host can tell them
//! from the tunnel datagrams that share its endpoint. The format (all
//! big-endian): `MAGIC[4] kind[1] conn[4] seq[8] payload`. `conn` is the
//! dialler's connection number; `seq` is a byte offset (`Data`) or the
//! next expected offset (`Ack`). The receiver keeps only in-order bytes
//! (go-back-N); that is enough for request/response traffic of a few KiB.

use core::time::Duration;
use std::collections::VecDeque;
use std::net::SocketAddr;

use pilot_proto::time::Instant;

/// Prefix of every simulated TCP segment (never the start of a Pilot
/// tunnel datagram, whose magic differs).
pub const MAGIC: [u8; 4] = *b"SIMT";
/// Header length: magic, kind, connection number, sequence.
pub const HEADER: usize = 4 + 1 + 4 + 8;
/// Most payload bytes per segment.
pub const MSS: usize = 1200;
/// Most unacknowledged bytes in flight.
pub const WINDOW: usize = 64 * 1024;
/// First retransmission timeout (doubles per timeout up to [`MAX_RTO`]).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Largest retransmission timeout.
pub const MAX_RTO: Duration = Duration::from_secs(2);
/// A connection with unacknowledged data and no progress for this long
/// fails.
pub const GIVE_UP: Duration = Duration::from_secs(20);
/// A connect with no answer for this long fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most received bytes a connection buffers before its owner reads them.
pub const RECV_CAP: usize = 8 * 1024 * 1024;

/// What a segment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Bytes at offset `seq`.
    Data = 0,
    /// Everything before `seq` arrived.
    Ack = 1,
    /// The connection is gone (refused, or the other side died).
    Reset = 2,
    /// Open connection `conn`.
    Syn = 3,
    /// Connection `conn` is open.
    SynAck = 4,
}

/// One decoded segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// What it is.
    pub kind: Kind,
    /// The dialler's connection number.
    pub conn: u32,
    /// Offset (data) or next expected offset (ack).
    pub seq: u64,
    /// Data bytes.
    pub payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// Decodes `bytes`; `None` if they are not a simulated TCP segment.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        let magic = bytes.get(..4)?;
        if magic != MAGIC {
            return None;
        }
        let kind = match *bytes.get(4)? {
            0 => Kind::Data,
            1 => Kind::Ack,
            2 => Kind::Reset,
            3 => Kind::Syn,
            4 => Kind::SynAck,
            _ => return None,
        };
        let conn = u32::from_be_bytes(bytes.get(5..9)?.try_into().ok()?);
        let seq = u64::from_be_bytes(bytes.get(9..17)?.try_into().ok()?);
        Some(Segment {
            kind,
            conn,
            seq,
            payload: bytes.get(HEADER..)?,
        })
    }

    /// Encodes the segment.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER + self.payload.len());
        v.extend_from_slice(&MAGIC);
        v.push(self.kind as u8);
        v.extend_from_slice(&self.conn.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(self.payload);
        v
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    /// The dialler waits for `SynAck`.
    Connecting,
    /// Bytes flow.
    Open,
    /// Reset, refused or timed out; nothing more happens.
    Failed,
}

/// One end of a simulated TCP connection.
#[derive(Debug)]
pub struct TcpEnd {
    peer: SocketAddr,
    conn: u32,
    state: TcpState,
    /// Bytes from offset `acked` on, not yet acknowledged.
    unacked: VecDeque<u8>,
    acked: u64,
    /// Next offset to send (go-back-N resets it to `acked`).
    next: u64,
    recv_next: u64,
    recv: Vec<u8>,
    rto: Duration,
    rto_at: Option<Instant>,
    last_progress: Instant,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Segments sent again after a timeout.
    pub retransmits: u64,
}

impl TcpEnd {
    /// Dials connection `conn` to `peer` (sends a `Syn`).
    pub fn connect(now: Instant, peer: SocketAddr, conn: u32) -> Self {
        let mut e = Self::new(now, peer, conn, TcpState::Connecting);
        e.send_ctl(Kind::Syn, 0);
        e.rto_at = Some(now + e.rto);
        e
    }

    /// The accepting end of `conn` from `peer` (answers the `Syn`).
    pub fn accept(now: Instant, peer: SocketAddr, conn: u32) -> Self {
        let mut e = Self::new(now, peer, conn, TcpState::Open);
        e.send_ctl(Kind::SynAck, 0);
        e
    }

    fn new(now: Instant, peer: SocketAddr, conn: u32, state: TcpState) -> Self {
        TcpEnd {
            peer,
            conn,
            state,
            unacked: VecDeque::new(),
            acked: 0,
            next: 0,
            recv_next: 0,
            recv: Vec::new(),
            rto: INITIAL_RTO,
            rto_at: None,
            last_progress: now,
            out: VecDeque::new(),
            retransmits: 0,
        }
    }

    /// The connection number.
    pub fn conn(&self) -> u32 {
        self.conn
    }

    /// The other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Where the connection is.
    pub fn state(&self) -> TcpState {
        self.state
    }

    /// Queues `bytes` for sending (dropped once the connection failed).
    pub fn write(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == TcpState::Failed {
            return;
        }
        if self.unacked.is_empty() {
            self.last_progress = now;
        }
        self.unacked.extend(bytes);
        self.pump(now);
    }

    /// Takes the bytes received in order so far.
    pub fn read(&mut self) -> Vec<u8> {
        core::mem::take(&mut self.recv)
    }

    /// Resets the connection: the peer is told (best effort), nothing more
    /// is sent or accepted.
    pub fn reset(&mut self) {
        if self.state != TcpState::Failed {
            self.send_ctl(Kind::Reset, 0);
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.state = TcpState::Failed;
        self.unacked.clear();
        self.rto_at = None;
    }

    fn send_ctl(&mut self, kind: Kind, seq: u64) {
        let seg = Segment {
            kind,
            conn: self.conn,
            seq,
            payload: &[],
        };
        self.out.push_back((self.peer, seg.encode()));
    }

    fn pump(&mut self, now: Instant) {
        if self.state != TcpState::Open {
            return;
        }
        let end = self.acked + self.unacked.len() as u64;
        while self.next < end && self.next - self.acked < WINDOW as u64 {
            let off = (self.next - self.acked) as usize;
            let len = MSS.min((end - self.next) as usize);
            let chunk: Vec<u8> = self.unacked.range(off..off + len).copied().collect();
            let seg = Segment {
                kind: Kind::Data,
                conn: self.conn,
                seq: self.next,
                payload: &chunk,
            };
            self.out.push_back((self.peer, seg.encode()));
            self.next += len as u64;
        }
        if self.next > self.acked && self.rto_at.is_none() {
            self.rto_at = Some(now + self.rto);
        }
    }

    /// A segment of this connection arrived.
    pub fn handle(&mut self, now: Instant, seg: &Segment<'_>) {
        match (self.state, seg.kind) {
            (TcpState::Failed, _) => {}
            (_, Kind::Reset) => self.fail(),
            (TcpState::Connecting, Kind::SynAck) => {
                self.state = TcpState::Open;
                self.rto = INITIAL_RTO;
                self.rto_at = None;
                self.last_progress = now;
                self.pump(now);
            }
            (TcpState::Open, Kind::Syn) => self.send_ctl(Kind::SynAck, 0),
            (TcpState::Open, Kind::Data) => {
                let end = seg.seq + seg.payload.len() as u64;
                if seg.seq <= self.recv_next && end > self.recv_next {
                    let skip = (self.recv_next - seg.seq) as usize;
                    let fresh = seg.payload.get(skip..).unwrap_or(&[]);
                    if self.recv.len() + fresh.len() > RECV_CAP {
                        // The owner stopped reading: a broken peer.
                        self.reset();
                        return;
                    }
                    self.recv.extend_from_slice(fresh);
                    self.recv_next = end;
                }
                self.send_ctl(Kind::Ack, self.recv_next);
            }
            (TcpState::Open, Kind::Ack) if seg.seq > self.acked && seg.seq <= self.next => {
                let n = (seg.seq - self.acked) as usize;
                self.unacked.drain(..n.min(self.unacked.len()));
                self.acked = seg.seq;
                self.last_progress = now;
                self.rto = INITIAL_RTO;
                self.rto_at = (self.next > self.acked).then(|| now + self.rto);
                self.pump(now);
            }
            _ => {}
        }
    }

    /// When [`TcpEnd::handle_timeout`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rto_at
    }

    /// Retransmits (go-back-N) or gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(at) = self.rto_at else { return };
        if at > now {
            return;
        }
        let waited = now.saturating_duration_since(self.last_progress);
        match self.state {
            TcpState::Connecting if waited >= CONNECT_TIMEOUT => self.fail(),
            TcpState::Connecting => {
                self.retransmits += 1;
                self.send_ctl(Kind::Syn, 0);
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.rto_at = Some(now + self.rto);
            }
            TcpState::Open if waited >= GIVE_UP => self.reset(),
            TcpState::Open => {
                self.retransmits += 1;
                self.next = self.acked;
                self.rto = (self.rto * 2).min(MAX_RTO);
                self.rto_at = None;
                self.pump(now);
            }
            TcpState::Failed => self.rto_at = None,
        }
    }

    /// The next segment to send: destination and bytes.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }
}

/// A reset for a segment that belongs to no connection (what a host's
/// kernel answers when nothing listens or the process died).
pub fn refuse(conn: u32) -> Vec<u8> {
    Segment {
        kind: Kind::Reset,
        conn,
        seq: 0,
        payload: &[],
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    /// Moves segments between two ends, dropping every `drop_every`-th.
    fn shuttle(a: &mut TcpEnd, b: &mut TcpEnd, now: Instant, n: &mut u64, drop_every: u64) {
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some((_, s)) = a.poll_transmit() {
                moved = true;
                *n += 1;
                if *n % drop_every != 0 {
                    b.handle(now, &Segment::decode(&s).unwrap());
                }
            }
            while let Some((_, s)) = b.poll_transmit() {
                moved = true;
                *n += 1;
                if *n % drop_every != 0 {
                    a.handle(now, &Segment::decode(&s).unwrap());
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn segment_round_trips_and_rejects_other_bytes() {
        let s = Segment {
            kind: Kind::Data,
            conn: 7,
            seq: 1 << 40,
            payload: b"abc",
        };
        assert_eq!(Segment::decode(&s.encode()), Some(s));
        assert_eq!(Segment::decode(b"PILS....................."), None);
        assert_eq!(Segment::decode(b"SIMT"), None);
    }

    #[test]
    fn bytes_arrive_in_order_despite_loss() {
        let mut now = Instant::ZERO;
        let mut a = TcpEnd::connect(now, addr(2), 1);
        let (_, syn) = a.poll_transmit().unwrap();
        assert_eq!(Segment::decode(&syn).unwrap().kind, Kind::Syn);
        let mut b = TcpEnd::accept(now, addr(1), 1);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut n = 0;
        shuttle(&mut a, &mut b, now, &mut n, 1_000_000);
        assert_eq!(a.state(), TcpState::Open);
        a.write(now, &data);
        let mut got = Vec::new();
        for _ in 0..1000 {
            shuttle(&mut a, &mut b, now, &mut n, 7);
            got.extend(b.read());
            if got.len() == data.len() {
                break;
            }
            now = a.poll_timeout().unwrap();
            a.handle_timeout(now);
        }
        assert!(got == data, "{} of {} bytes", got.len(), data.len());
        assert!(a.retransmits > 0);
    }

    #[test]
    fn silence_fails_the_connection() {
        let mut a = TcpEnd::connect(Instant::ZERO, addr(2), 1);
        while let Some(t) = a.poll_timeout() {
            a.handle_timeout(t);
        }
        assert_eq!(a.state(), TcpState::Failed);
        let mut b = TcpEnd::accept(Instant::ZERO, addr(1), 1);
        b.write(Instant::ZERO, b"hello");
        let mut end = Instant::ZERO;
        while let Some(t) = b.poll_timeout() {
            b.handle_timeout(t);
            end = t;
        }
        assert_eq!(b.state(), TcpState::Failed);
        assert!(end >= Instant::ZERO + GIVE_UP);
    }
}
