//! The per-connection state machine (`spec/transport.md` §3–§9).
//!
//! A [`Connection`] is sans-IO: feed it received segments with
//! [`Connection::handle_segment`] and expired timers with
//! [`Connection::handle_timeout`], then drain [`Connection::poll_segment`]
//! until it returns `None` and [`Connection::poll_event`] likewise, and
//! arm one timer from [`Connection::poll_timeout`]. Spurious timeouts are
//! harmless. The connection talks in its own [`Segment`] type; the node maps
//! it to the packet header (flags, seq, ack, window, payload).
//!
//! Fixed flaws of the Go reference (all wire-compatible, see
//! `spec/transport.md` §11): the FIN is retransmitted until acknowledged; a
//! FIN takes effect only after all data before it; keepalive probes are
//! answered; a dialing connection is never reapable; the give-up rule is
//! time-based, so a lossy path survives while a dead peer is found quickly.

use std::collections::VecDeque;

use bytes::Bytes;
use core::time::Duration;

use super::cc::{AckEvent, CongestionController, NewReno, NewRenoConfig, RecoveryState};
use super::consts::{
    DELAYED_ACK, DELAYED_ACK_SEGMENTS, DUP_ACK_THRESHOLD, GIVE_UP_MIN_TIMEOUTS, KEEPALIVE_INTERVAL,
    KEEPALIVE_PROBE_INTERVAL, KEEPALIVE_PROBES, LOST_RTX_PER_EVENT, MAX_ACCEPTED_SEGMENT,
    MAX_BACKOFF_RTO, MAX_UNACKED_SEGMENTS, MIN_USER_TIMEOUT, PMTU_RAISE_TIMER,
    PROBE_ANSWER_SILENCE, QUICK_ACK_BUDGET, REORDER_WINDOW_MIN_DIVISOR, SEGMENT_SIZE_CURRENT,
    SEND_BUFFER_CAP, SYN_DIRECT_ATTEMPTS, SYN_INITIAL_RTO, SYN_MAX_RTO, TIME_WAIT, TLP_MAX,
    TLP_MIN, USER_TIMEOUT, ZWP_INITIAL, ZWP_MAX, ZWP_MAX_PROBES,
};
use super::pmtu::{MtuVerdict, SegmentSize};
use super::recv_buf::{DataOutcome, FinOutcome, RecvBuffer, RecvConfig};
use super::rtt::RttEstimator;
use super::sack::{self, MAX_SACK_BLOCKS};
use super::send_buf::{AckKind, Outgoing, SendBuffer, SendConfig};
use super::seq::Seq;
use crate::time::Instant;

/// Segment flag bits: the packet header's flag nibble, one definition
/// (`spec/wire.md` §2.1).
pub use crate::wire::packet::Flags;

/// One stream segment, as the connection sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// SYN/ACK/FIN/RST.
    pub flags: Flags,
    /// Sequence number.
    pub seq: Seq,
    /// Acknowledgement number.
    pub ack: Seq,
    /// Advertised window in segments.
    pub window: u16,
    /// Payload (data or a SACK record).
    pub payload: Bytes,
}

impl Segment {
    /// A segment with a copy of `payload`.
    pub fn with_payload(flags: Flags, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Self {
        Segment {
            flags,
            seq: Seq(seq),
            ack: Seq(ack),
            window,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// A segment without payload.
    pub fn control(flags: Flags, seq: u32, ack: u32, window: u16) -> Self {
        Segment {
            flags,
            seq: Seq(seq),
            ack: Seq(ack),
            window,
            payload: Bytes::new(),
        }
    }
}

/// Connection states (`spec/transport.md` §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// SYN sent, waiting for SYN-ACK.
    SynSent,
    /// Open in both directions.
    Established,
    /// Local close: our FIN is queued or sent.
    FinWait,
    /// The peer's FIN took effect; lingering.
    TimeWait,
    /// Finished; the owner may drop the connection.
    Closed,
}

/// Why the next timeout is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// Retransmit the SYN.
    SynRetransmit,
    /// Retransmission timeout.
    Retransmit,
    /// Delayed ACK.
    DelayedAck,
    /// A held Nagle tail must go out.
    Nagle,
    /// Zero-window probe.
    ZeroWindowProbe,
    /// Keepalive probe.
    Keepalive,
    /// FIN_WAIT linger after everything was acknowledged.
    FinLinger,
    /// TIME_WAIT ends.
    TimeWait,
}

/// Why a connection ended abnormally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// The peer sent RST (for a dial: connection refused).
    Remote,
    /// The peer stopped answering while data was outstanding.
    TimedOut,
    /// The peer kept a zero window for too long.
    ZeroWindow,
    /// The dial got no answer.
    DialTimeout,
    /// The application aborted.
    Aborted,
    /// The tunnel peer stayed silent past the peer timeout (dead peer).
    PeerUnreachable,
    /// The tunnel to the peer was closed locally (trust revoked).
    TunnelClosed,
    /// The peer process restarted (its tunnel key changed): this
    /// connection belonged to its previous incarnation.
    PeerRestarted,
    /// Even the smallest segments do not get through while the peer still
    /// answers: the path MTU is too small (`spec/transport.md` §5.4).
    PathMtu,
}

/// Something the application (or node) must know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected,
    /// New data (or end of stream) can be read.
    Readable,
    /// Send-buffer room became available.
    Writable,
    /// The dial's direct attempts are used up; the node may switch the peer
    /// to the relay path (`spec/transport.md` §4.1).
    TryRelay,
    /// Ended normally.
    Closed,
    /// Ended abnormally.
    Reset(ResetReason),
}

/// Errors of application operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// Writing needs an established connection.
    #[error("connection not established")]
    NotEstablished,
    /// No data yet; wait for [`Event::Readable`].
    #[error("no data available yet")]
    WouldBlock,
    /// The connection was reset.
    #[error("connection reset")]
    Reset,
}

/// Parameters of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnConfig {
    /// Segment size (1152 `current`, 4096 `legacy`); also the unit of the
    /// peer's window.
    pub mss: usize,
    /// Disable Nagle.
    pub nodelay: bool,
    /// Send-buffer capacity.
    pub send_capacity: usize,
    /// Receive capacities.
    pub recv: RecvConfig,
    /// Idle time before keepalive probing; `None` disables keepalive.
    pub keepalive: Option<Duration>,
    /// TIME_WAIT linger.
    pub time_wait: Duration,
    /// Seed for RTO jitter.
    pub seed: u64,
    /// User timeout (RFC 5482 spirit, `spec/transport.md` §7.3): the dial's
    /// deadline, and how long the peer may stay silent while data or our
    /// FIN is unacknowledged before the connection gives up. At least
    /// [`MIN_USER_TIMEOUT`].
    pub user_timeout: Duration,
    /// Largest window in segments, both ways: receive-window autotuning
    /// grows the ready queue up to it, and the sender keeps up to this
    /// many segments (and `mss` times as many bytes of congestion window)
    /// in flight. The default, [`MAX_UNACKED_SEGMENTS`], means no
    /// autotuning (`spec/transport.md` §6.2).
    pub window_cap_segments: usize,
    /// Largest segment the upward path-MTU search may probe
    /// (`spec/transport.md` §5.5); at or below `mss` (the default) the
    /// connection never probes and keeps `mss`.
    pub pmtu_ceiling: usize,
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            mss: SEGMENT_SIZE_CURRENT,
            nodelay: false,
            send_capacity: SEND_BUFFER_CAP,
            recv: RecvConfig::default(),
            keepalive: Some(KEEPALIVE_INTERVAL),
            time_wait: TIME_WAIT,
            seed: 0,
            user_timeout: USER_TIMEOUT,
            window_cap_segments: MAX_UNACKED_SEGMENTS,
            pmtu_ceiling: SEGMENT_SIZE_CURRENT,
        }
    }
}

/// Window figures of one connection ([`Connection::window_figures`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowFigures {
    /// Segments in the out-of-order buffer.
    pub ooo_segments: usize,
    /// The peer's advertised receive window, bytes (0 before it spoke).
    pub peer_window_bytes: usize,
    /// Our advertised receive window, bytes.
    pub recv_window_bytes: usize,
}

/// Counters and gauges of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Payload bytes sent (first transmissions only).
    pub bytes_sent: u64,
    /// Payload bytes delivered in order.
    pub bytes_received: u64,
    /// Segments sent (all kinds).
    pub segments_sent: u64,
    /// Segments received.
    pub segments_received: u64,
    /// Retransmitted segments (timeouts and fast retransmits).
    pub retransmissions: u64,
    /// Fast retransmits.
    pub fast_retransmits: u64,
    /// Retransmission timeouts.
    pub timeouts: u64,
    /// Retransmissions found to be spurious (the original arrived late).
    pub spurious_retransmits: u64,
    /// Tail loss probes sent (§7.3.3).
    pub tail_probes: u64,
    /// SACK blocks sent.
    pub sack_blocks_sent: u64,
    /// SACK blocks received.
    pub sack_blocks_received: u64,
    /// Duplicate ACKs counted.
    pub dup_acks: u64,
    /// Congestion window (bytes).
    pub cwnd: usize,
    /// Slow-start threshold (bytes).
    pub ssthresh: usize,
    /// Un-SACKed payload bytes in flight.
    pub in_flight: usize,
    /// Smoothed RTT.
    pub srtt: Option<Duration>,
    /// RTT variation.
    pub rttvar: Duration,
    /// Current RTO.
    pub rto: Duration,
    /// Recovery state.
    pub recovery: Option<RecoveryKind>,
    /// Current segment size (payload bytes), after any path-MTU reduction.
    pub segment_size: usize,
    /// Times black-hole detection shrank the segment size.
    pub mss_reductions: u64,
    /// Upward path-MTU probes sent (§5.5).
    pub pmtu_probes: u64,
    /// Probes answered, each raising the segment size.
    pub pmtu_raises: u64,
    /// Searches started again by the raise timer (§5.5).
    pub pmtu_searches: u64,
    /// Largest segment size this connection used.
    pub max_segment: usize,
}

/// Loss-recovery kind, for [`ConnStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryKind {
    /// Fast recovery.
    Fast,
    /// Timeout recovery.
    Timeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dialer,
    Acceptor,
}

/// Most events queued; older duplicates are merged.
const EVENT_CAP: usize = 16;
/// Most retransmissions waiting to be polled.
const RTX_CAP: usize = 8;

/// Zero bytes the upward path-MTU probes are padded with (§5.5).
static PMTU_PADDING: [u8; MAX_ACCEPTED_SEGMENT] = [0; MAX_ACCEPTED_SEGMENT];

/// An upward path-MTU probe waiting for its answer (§5.5).
#[derive(Clone, Copy, Debug)]
struct PmtuProbe {
    /// Payload bytes of the probe.
    size: usize,
    /// The probe's end: our oldest unacknowledged byte when it left, which
    /// the answer acknowledges.
    end: Seq,
    /// Unanswered by then: lost.
    deadline: Instant,
}

/// One stream connection.
pub struct Connection {
    cfg: ConnConfig,
    role: Role,
    state: State,
    isn: Seq,
    peer_isn: Seq,
    send: SendBuffer,
    recv: RecvBuffer,
    rtt: RttEstimator,
    cc: Box<dyn CongestionController + Send>,
    peer_window: Option<u16>,
    /// Segment size, black-hole detection and the upward search (§5.4, §5.5).
    seg_size: SegmentSize,
    /// The upward path-MTU probe in flight.
    pmtu_probe: Option<PmtuProbe>,
    /// When the ended upward search starts again (§5.5, RFC 8899's
    /// `PMTU_RAISE_TIMER`); set when it ends.
    pmtu_raise_at: Option<Instant>,
    rng: u64,

    // Output requests.
    syn_pending: bool,
    synack_pending: bool,
    fin_reply_pending: bool,
    rst_pending: bool,
    ack_now: bool,
    probe_pending: bool,
    /// A segment entirely before the cumulative ACK arrived (an upward
    /// path-MTU probe, or a needless retransmission) when the cumulative
    /// ACK was this: it is answered with exactly this ACK number even if
    /// data received in the same batch moved the cumulative ACK on, so
    /// the prober can tell its answer (§5.5).
    dup_answer: Option<Seq>,
    rtx: VecDeque<Outgoing>,
    last_adv_window: u16,

    // Delayed ACK.
    pending_acks: u32,
    quick_acks: u32,
    delayed_ack_at: Option<Instant>,

    // Timers.
    syn_retries: u32,
    syn_hold: bool,
    syn_rto: Duration,
    syn_at: Option<Instant>,
    /// A dial that has not completed by then fails (the user timeout).
    dial_deadline: Instant,
    /// When our FIN+ACK reply is itself our FIN (we had not closed and
    /// nothing of ours was outstanding): its sequence number.
    reply_fin: Option<Seq>,
    /// The peer acknowledged `reply_fin`.
    reply_fin_acked: bool,
    rto_at: Option<Instant>,
    last_heard: Instant,
    /// Retransmission timeouts since the peer was last heard.
    timeouts_unheard: u32,
    /// Holes before this were already retransmitted in this recovery.
    rtx_next: Seq,
    /// Reordering was detected: loss is judged by time (§7.3.2), not by
    /// duplicate-ACK or SACK counts.
    reordering: bool,
    /// Reordering delay learnt from spurious retransmissions.
    reo_learned: Duration,
    /// When time-based loss detection must look again.
    reo_at: Option<Instant>,
    /// When the tail loss probe fires (§7.3.3).
    tlp_at: Option<Instant>,
    /// Tail loss probes sent since something was last acknowledged or
    /// SACKed (at most `TLP_MAX`, each after twice the previous timeout).
    tlp_sent: u8,
    /// The tail loss probe sends the next new segment, past the
    /// congestion window (the peer's window permitting).
    tlp_new: bool,
    outstanding_since: Option<Instant>,
    zwp_at: Option<Instant>,
    zwp_interval: Duration,
    zwp_probes: u32,
    last_activity: Instant,
    keepalive_at: Option<Instant>,
    keepalive_unanswered: u32,
    /// The keepalive gave up on a silent peer and shut the connection
    /// down (`spec/transport.md` §9.2).
    keepalive_closed: bool,
    linger_at: Option<Instant>,
    was_writable_blocked: bool,

    /// Latest time passed in by the caller.
    now: Instant,
    /// Acknowledgement number for our FIN+ACK reply (peer FIN + 1).
    fin_reply_ack: Seq,

    events: VecDeque<Event>,
    stats: ConnStats,
    /// The sender filled our receive window (autotuning wants more).
    window_limited: bool,
    /// Creation time (the SYN or the SYN-ACK leaves about then).
    created: Instant,
    /// RTT measured by the handshake (Karn: not after a retransmitted SYN).
    hs_rtt: Option<Duration>,
    hs_retried: bool,
    /// Autotuning epoch: start and bytes delivered since.
    tune_start: Option<Instant>,
    tune_bytes: usize,
    /// Largest data segment received.
    seg_seen: usize,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.state)
            .field("snd_una", &self.send.snd_una())
            .field("snd_nxt", &self.send.snd_nxt())
            .field("rcv_nxt", &self.recv.rcv_nxt())
            .finish_non_exhaustive()
    }
}

/// Congestion control for the connection's window cap: the largest
/// congestion window is 1 MiB or the cap × segment size, whichever is
/// larger, and the initial slow-start threshold half of it (as
/// `INITIAL_SSTHRESH` is half of `MAX_CWND`). Where the upward PMTU
/// search may raise the segment size (§5.5), the largest window is the
/// cap × the search's ceiling, so the window cap in segments, not the
/// congestion cap, still binds once segments are larger.
fn cc_config(cfg: &ConnConfig) -> NewRenoConfig {
    let base = NewRenoConfig::for_segment(cfg.mss);
    let max_cwnd = base
        .max_cwnd
        .max(cfg.window_cap_segments.saturating_mul(cfg.mss));
    NewRenoConfig {
        max_cwnd: max_cwnd.max(cfg.window_cap_segments.saturating_mul(cfg.pmtu_ceiling)),
        initial_ssthresh: base.initial_ssthresh.max(max_cwnd / 2),
        ..base
    }
}

/// A receive buffer with the connection's autotuning cap.
fn recv_buffer(rcv_nxt: Seq, cfg: &ConnConfig) -> RecvBuffer {
    let mut r = RecvBuffer::new(rcv_nxt, cfg.recv);
    r.set_max_segments(cfg.window_cap_segments);
    r
}

impl Connection {
    fn new(now: Instant, mut cfg: ConnConfig, role: Role, isn: Seq, rcv_nxt: Seq) -> Self {
        cfg.mss = cfg.mss.max(1);
        cfg.user_timeout = cfg.user_timeout.max(MIN_USER_TIMEOUT);
        let mss = cfg.mss;
        let send_cfg = SendConfig {
            mss,
            capacity: cfg.send_capacity,
            nodelay: cfg.nodelay,
        };
        Connection {
            role,
            state: State::SynSent,
            isn,
            peer_isn: rcv_nxt.add(u32::MAX),
            send: SendBuffer::new(isn.add(1), send_cfg),
            recv: recv_buffer(rcv_nxt, &cfg),
            rtt: RttEstimator::new(),
            cc: Box::new(NewReno::new(cc_config(&cfg))),
            peer_window: None,
            seg_size: SegmentSize::with_ceiling(mss, cfg.pmtu_ceiling),
            pmtu_probe: None,
            pmtu_raise_at: None,
            rng: cfg.seed ^ 0x9e37_79b9_7f4a_7c15,
            syn_pending: false,
            synack_pending: false,
            fin_reply_pending: false,
            rst_pending: false,
            ack_now: false,
            probe_pending: false,
            dup_answer: None,
            rtx: VecDeque::new(),
            last_adv_window: 0,
            pending_acks: 0,
            quick_acks: QUICK_ACK_BUDGET,
            delayed_ack_at: None,
            syn_retries: 0,
            syn_hold: false,
            syn_rto: SYN_INITIAL_RTO,
            syn_at: None,
            dial_deadline: now + cfg.user_timeout,
            reply_fin: None,
            reply_fin_acked: false,
            window_limited: false,
            created: now,
            hs_rtt: None,
            hs_retried: false,
            tune_start: None,
            tune_bytes: 0,
            seg_seen: 0,
            rto_at: None,
            last_heard: now,
            timeouts_unheard: 0,
            rtx_next: isn,
            reordering: false,
            reo_learned: Duration::ZERO,
            reo_at: None,
            tlp_at: None,
            tlp_sent: 0,
            tlp_new: false,
            outstanding_since: None,
            zwp_at: None,
            zwp_interval: ZWP_INITIAL,
            zwp_probes: 0,
            last_activity: now,
            keepalive_at: None,
            keepalive_unanswered: 0,
            keepalive_closed: false,
            linger_at: None,
            was_writable_blocked: false,
            now,
            fin_reply_ack: Seq(0),
            events: VecDeque::new(),
            stats: ConnStats::default(),
            cfg,
        }
    }

    /// Starts a dial: the connection is in SYN_SENT and its first poll
    /// yields the SYN with sequence number `isn` (`spec/transport.md` §4.1).
    pub fn connect(now: Instant, cfg: ConnConfig, isn: u32) -> Self {
        let mut c = Self::new(now, cfg, Role::Dialer, Seq(isn), Seq(0));
        c.syn_pending = true;
        c.syn_at = Some(now + SYN_INITIAL_RTO);
        c
    }

    /// Accepts a received SYN (the node has applied its admission gates):
    /// the connection is ESTABLISHED at once and its first poll yields the
    /// SYN-ACK (`spec/transport.md` §4.2).
    pub fn accept(now: Instant, cfg: ConnConfig, syn: &Segment, isn: u32) -> Self {
        let mut c = Self::new(now, cfg, Role::Acceptor, Seq(isn), syn.seq.add(1));
        c.peer_window = Some(syn.window);
        c.state = State::Established;
        c.synack_pending = true;
        c.arm_keepalive();
        c.push_event(Event::Connected);
        c.push_event(Event::Writable);
        c
    }

    /// Holds SYN retransmissions (the node calls this while the tunnel's
    /// key exchange for the peer is pending, for at most 10 s after the
    /// dial started; `spec/transport.md` §4.1). While held, SYN timer
    /// expiries neither count as retries nor send copies.
    pub fn hold_syn_retries(&mut self, hold: bool) {
        self.syn_hold = hold;
    }

    /// The tunnel to the peer just came up (the node calls this when the
    /// key exchange completes). A dial's SYNs so far waited in the tunnel's
    /// queue and leave together now; the next retransmission comes one
    /// initial SYN RTO later and backs off from there, instead of at the
    /// back-off reached while nothing could leave (up to 4 s, which may lie
    /// past the deadline; `spec/transport.md` §4.1).
    pub fn tunnel_up(&mut self, now: Instant) {
        if self.state == State::SynSent {
            self.syn_rto = SYN_INITIAL_RTO;
            self.syn_at = Some((now + SYN_INITIAL_RTO).min(self.dial_deadline));
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the keepalive gave up on a silent peer and shut the
    /// connection down (its end then counts as an idle timeout).
    pub fn keepalive_closed(&self) -> bool {
        self.keepalive_closed
    }

    /// Until when this connection needs the tunnel to its peer to come up:
    /// a dial until its deadline, an open connection until it has not heard
    /// from the peer for its user timeout; `None` once closed. The owner
    /// keeps a pending key exchange going that long
    /// (`spec/crypto.md` §2.6).
    pub fn tunnel_needed_until(&self) -> Option<Instant> {
        match self.state {
            State::SynSent => Some(self.dial_deadline),
            State::Closed => None,
            _ => Some(self.last_heard + self.cfg.user_timeout),
        }
    }

    /// True once the owner may drop this connection (after draining
    /// [`Connection::poll_segment`], which may still hold an RST, and
    /// [`Connection::poll_event`]). A dialing connection is never reapable
    /// until its dial has failed or succeeded.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Counters and gauges.
    pub fn stats(&self) -> ConnStats {
        let mut s = self.stats;
        s.cwnd = self.cc.cwnd();
        s.ssthresh = self.cc.ssthresh();
        s.in_flight = self.send.flight_bytes(false);
        s.srtt = self.rtt.srtt();
        s.rttvar = self.rtt.rttvar();
        s.rto = self.rtt.rto();
        s.segment_size = self.seg_size.current();
        s.max_segment = self.seg_size.largest();
        s.recovery = match self.cc.recovery() {
            RecoveryState::Open => None,
            RecoveryState::Fast => Some(RecoveryKind::Fast),
            RecoveryState::Timeout => Some(RecoveryKind::Timeout),
        };
        s
    }

    /// Next queued event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: Event) {
        if self.events.contains(&e) {
            return;
        }
        if self.events.len() >= EVENT_CAP {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    fn jitter(&mut self, rto: Duration) -> Duration {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // Below a quarter of the doubled RTO.
        let limit = u64::try_from((rto / 2).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(z.checked_rem(limit.max(1)).unwrap_or(0))
    }

    // ----- application operations -------------------------------------

    /// Writes as much of `data` as fits; returns how much was accepted
    /// (0 means full: wait for [`Event::Writable`]).
    pub fn write(&mut self, now: Instant, data: &[u8]) -> Result<usize, StreamError> {
        if self.state != State::Established {
            return Err(StreamError::NotEstablished);
        }
        self.now = self.now.max(now);
        let n = self.send.write(now, data);
        if n < data.len() {
            self.was_writable_blocked = true;
        }
        Ok(n)
    }

    /// Reads delivered data. `Ok(0)` means end of stream;
    /// [`StreamError::WouldBlock`] means nothing yet.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        self.read_recycling(buf, &mut |_| {})
    }

    /// [`Connection::read`], handing each emptied segment buffer to
    /// `recycle`.
    pub fn read_recycling(
        &mut self,
        buf: &mut [u8],
        recycle: &mut dyn FnMut(Bytes),
    ) -> Result<usize, StreamError> {
        let before = self.recv.rcv_nxt();
        let had_fin = self.recv.fin_received();
        let n = self.recv.read_recycling(buf, recycle);
        let moved = self.recv.rcv_nxt().since(before);
        if moved > 0 {
            // Buffered data moved up into the freed slots: acknowledge it.
            self.stats.bytes_received += u64::from(moved);
            self.ack_now = true;
        }
        if !had_fin
            && self.recv.fin_received()
            && matches!(self.state, State::Established | State::FinWait)
        {
            let ack = self.recv.ack_number();
            self.peer_fin_effective(self.now, ack);
        }
        if n > 0 {
            self.maybe_window_update();
            return Ok(n);
        }
        if self.recv.is_eof() || self.state == State::Closed || self.recv.is_closed() {
            if self.state == State::Closed && !self.recv.fin_received() {
                return Err(StreamError::Reset);
            }
            return Ok(0);
        }
        Err(StreamError::WouldBlock)
    }

    /// Bytes ready to read.
    pub fn readable(&self) -> usize {
        self.recv.readable()
    }

    /// Window figures for status reports (`spec/daemon.md` §3.3):
    /// segments held out of order, the peer's last advertised window and
    /// the window we advertise, both in bytes (segments × MSS).
    pub fn window_figures(&self) -> WindowFigures {
        let mss = self.cfg.mss;
        WindowFigures {
            ooo_segments: self.recv.ooo_len(),
            peer_window_bytes: self
                .peer_window
                .map_or(0, |w| usize::from(w).saturating_mul(mss)),
            recv_window_bytes: usize::from(self.recv.window()).saturating_mul(mss),
        }
    }

    /// Switches Nagle off (`true`) or on.
    pub fn set_nodelay(&mut self, nodelay: bool) {
        self.send.set_nodelay(nodelay);
    }

    /// Graceful close of the sending direction: the FIN follows all written
    /// data; data from the peer is still delivered until its FIN.
    pub fn shutdown(&mut self, now: Instant) {
        match self.state {
            State::SynSent => self.enter_closed(Event::Closed),
            State::Established => {
                self.send.close();
                self.state = State::FinWait;
                self.last_activity = now;
                self.keepalive_at = None;
            }
            _ => {}
        }
    }

    /// Close: like [`Connection::shutdown`], and the receive side is closed
    /// (undelivered and later data is discarded), as in the reference.
    pub fn close(&mut self, now: Instant) {
        self.shutdown(now);
        self.recv.close();
        self.delayed_ack_at = None;
        self.pending_acks = 0;
    }

    /// Aborts with RST.
    pub fn abort(&mut self) {
        if self.state != State::Closed {
            self.rst_pending = true;
            self.enter_closed(Event::Reset(ResetReason::Aborted));
        }
    }

    /// Ends the connection at once with `reason`, sending nothing (the
    /// tunnel to the peer is gone or the peer is dead). Data already
    /// received stays readable; send buffers are released.
    pub fn fail(&mut self, reason: ResetReason) {
        if self.state != State::Closed {
            self.enter_closed(Event::Reset(reason));
        }
    }

    fn enter_closed(&mut self, ev: Event) {
        self.state = State::Closed;
        self.send.abandon();
        self.rtx.clear();
        self.syn_pending = false;
        self.synack_pending = false;
        self.fin_reply_pending = false;
        self.ack_now = false;
        self.probe_pending = false;
        self.syn_at = None;
        self.rto_at = None;
        self.reo_at = None;
        self.tlp_at = None;
        self.tlp_new = false;
        self.delayed_ack_at = None;
        self.zwp_at = None;
        self.keepalive_at = None;
        self.linger_at = None;
        self.push_event(ev);
    }

    fn reset(&mut self, reason: ResetReason) {
        self.rst_pending = true;
        self.enter_closed(Event::Reset(reason));
    }

    // ----- input -------------------------------------------------------

    /// Processes one received segment.
    pub fn handle_segment(&mut self, now: Instant, seg: Segment) {
        self.now = self.now.max(now);
        if self.state == State::Closed {
            return;
        }
        self.stats.segments_received += 1;
        let f = seg.flags;
        if f.contains(Flags::ACK) && !f.contains(Flags::SYN) {
            if let Some(fin) = self.reply_fin {
                if seg.ack == fin.add(1) {
                    self.reply_fin_acked = true;
                }
            }
        }
        if f.contains(Flags::SYN) && !f.contains(Flags::ACK) {
            self.on_syn(&seg);
        } else if f.contains(Flags::SYN) {
            self.on_synack(now, &seg);
        } else if f.contains(Flags::RST) {
            self.enter_closed(Event::Reset(ResetReason::Remote));
        } else if f.contains(Flags::FIN) {
            self.on_fin(now, &seg);
        } else if f.contains(Flags::ACK) {
            self.on_ack_segment(now, seg);
        }
    }

    fn on_syn(&mut self, seg: &Segment) {
        // A retransmitted SYN: our SYN-ACK was lost. Also after our own
        // close (the dialer cannot take our FIN before the handshake).
        if self.role == Role::Acceptor
            && seg.seq == self.peer_isn
            && matches!(self.state, State::Established | State::FinWait)
        {
            self.hs_retried = true;
            self.synack_pending = true;
        }
    }

    fn on_synack(&mut self, now: Instant, seg: &Segment) {
        match self.state {
            State::SynSent if seg.ack == self.isn.add(1) => {
                if self.syn_retries == 0 {
                    self.hs_rtt = Some(now.saturating_duration_since(self.created));
                }
                self.peer_isn = seg.seq;
                self.recv = recv_buffer(seg.seq.add(1), &self.cfg);
                self.peer_window = Some(seg.window);
                self.state = State::Established;
                self.syn_pending = false;
                self.syn_at = None;
                self.last_heard = now;
                self.last_activity = now;
                self.ack_now = true;
                self.arm_keepalive();
                self.push_event(Event::Connected);
                self.push_event(Event::Writable);
            }
            State::Established if self.role == Role::Dialer && seg.seq == self.peer_isn => {
                // Our handshake ACK was lost; confirm again.
                self.ack_now = true;
            }
            _ => {}
        }
    }

    fn on_fin(&mut self, now: Instant, seg: &Segment) {
        if self.state == State::SynSent {
            return;
        }
        self.heard(now);
        if seg.flags.contains(Flags::ACK) {
            // A FIN+ACK acknowledges our FIN (and everything before it).
            self.process_ack(now, seg.ack, false, false);
        }
        if self.state == State::TimeWait {
            // A bare FIN here is a retransmission: our FIN+ACK was lost.
            // FIN+ACK replies are never answered (no ping-pong).
            if !seg.flags.contains(Flags::ACK) {
                self.fin_reply_pending = true;
                self.linger_at = Some(now + self.cfg.time_wait);
            }
            return;
        }
        let outcome = if self.recv.is_closed() {
            FinOutcome::Eof
        } else {
            self.recv.on_fin(seg.seq)
        };
        match outcome {
            FinOutcome::Eof => {
                let ack = if self.recv.fin_received() {
                    self.recv.ack_number()
                } else {
                    seg.seq.add(1)
                };
                self.peer_fin_effective(now, ack);
            }
            FinOutcome::Pending => {
                // Data before the FIN is missing: ask for it (dup ACK + SACK).
                self.ack_now = true;
            }
            FinOutcome::Duplicate => {}
        }
    }

    fn peer_fin_effective(&mut self, now: Instant, reply_ack: Seq) {
        let we_closed = self.state == State::FinWait;
        self.fin_reply_ack = reply_ack;
        self.state = State::TimeWait;
        self.fin_reply_pending = true;
        self.last_activity = now;
        self.keepalive_at = None;
        self.keepalive_unanswered = 0;
        self.linger_at = Some(now + self.cfg.time_wait);
        self.delayed_ack_at = None;
        self.ack_now = false;
        self.zwp_at = None;
        if !we_closed {
            if self.send.unsent() > 0 || self.send.has_unacked() {
                // No half-close: writes fail from now on. What was already
                // written is still delivered, followed by our FIN, as if we
                // had shut down now; the FIN+ACK reply waits for that FIN.
                // A peer that still reads (it shut down) receives it; one
                // that closed discards it and acknowledges it with its reply
                // to our FIN; a vanished peer makes the give-up rule reset
                // us. Written data is never dropped silently.
                self.send.close();
            } else {
                // Nothing of ours is outstanding: the FIN+ACK reply is our
                // FIN, at the next sequence number.
                self.reply_fin = Some(self.send.snd_nxt());
                self.send.abandon();
                self.rtx.clear();
                self.rto_at = None;
                self.tlp_at = None;
                self.tlp_new = false;
            }
        }
        self.push_event(Event::Readable);
    }

    /// The peer acknowledged the end of our stream: our FIN (or the FIN+ACK
    /// reply that was our FIN).
    fn our_end_acked(&self) -> bool {
        match self.reply_fin {
            Some(_) => self.reply_fin_acked,
            None => self.send.fin_acked() && self.send.is_idle(),
        }
    }

    /// All our data is acknowledged and our FIN, if queued, has been sent
    /// (trivially true once the send side was abandoned).
    fn send_data_done(&self) -> bool {
        self.send.unsent() == 0
            && self.send.flight_bytes(true) == 0
            && (self.send.fin_sent() || !self.send.fin_queued())
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.last_activity = now;
        self.keepalive_unanswered = 0;
        self.timeouts_unheard = 0;
        self.arm_keepalive();
    }

    fn arm_keepalive(&mut self) {
        if self.state == State::Established {
            self.keepalive_at = self.cfg.keepalive.map(|k| self.last_activity + k);
        }
    }

    fn on_ack_segment(&mut self, now: Instant, seg: Segment) {
        if self.state == State::SynSent {
            return;
        }
        let silence = now.saturating_duration_since(self.last_heard);
        // We are waiting for an answer to our own probe: this is it.
        let probing = self.keepalive_unanswered > 0 || self.zwp_probes > 0;
        self.heard(now);
        // The window is relative to the segment's ACK number: one from an
        // ACK older than what we already hold (reordered on the way) is
        // stale and would move the right edge past what the peer allowed.
        let stale = seg.ack.before(self.send.snd_una());
        let window_changed = !stale && self.peer_window != Some(seg.window);
        if !stale {
            let old_window = self.peer_window;
            self.peer_window = Some(seg.window);
            if old_window == Some(0) && seg.window > 0 {
                self.zwp_reset();
            }
        }
        if self.is_pmtu_answer(now, &seg, stale) {
            // The peer acknowledged our padded duplicate (§5.5): it
            // repeats the cumulative ACK (its window was taken above), and
            // it is not a duplicate ACK.
            if let Some(p) = self.pmtu_probe.take() {
                if self.seg_size.on_probe_acked(p.size) {
                    self.send.set_mss(self.seg_size.current());
                    self.stats.pmtu_raises += 1;
                }
                self.pmtu_arm_raise(now);
            }
            return;
        }
        let sack_blocks = if seg.payload.is_empty() {
            None
        } else {
            sack::decode(&seg.payload).ok()
        };
        if let Some(blocks) = &sack_blocks {
            self.stats.sack_blocks_received += blocks.len() as u64;
            if !blocks.is_empty() {
                self.cc.use_sack_pipe();
            }
            if self.send.on_sack(now, blocks) > 0 {
                self.zwp_reset();
                self.tlp_sent = 0;
                self.on_new_sack(now);
            }
        }
        let pure = seg.payload.is_empty() || sack_blocks.is_some();
        self.process_ack(now, seg.ack, pure, window_changed);
        self.detect_time_loss(now);
        self.arm_tail_probe(now);
        if sack_blocks.is_some() {
            return;
        }
        if seg.payload.is_empty() {
            // Probes are answered: ours carry seq one below what we expect;
            // the reference's are duplicate pure ACKs after long silence.
            let reference_probe = !window_changed
                && seg.ack == self.send.snd_una()
                && silence >= PROBE_ANSWER_SILENCE
                && !probing;
            if seg.seq.before(self.recv.rcv_nxt()) || reference_probe {
                self.ack_now = true;
            }
            return;
        }
        if self.state == State::TimeWait {
            // The peer still retransmits data we already have: our FIN+ACK
            // (which acknowledges all of it) was lost. Send it again, and
            // linger while the peer is still trying.
            self.fin_reply_pending = true;
            self.linger_at = Some(now + self.cfg.time_wait);
            return;
        }
        if !matches!(self.state, State::Established | State::FinWait) {
            return;
        }
        let had_fin = self.recv.fin_received();
        let seg_len = seg.payload.len();
        if self.hs_rtt.is_none() && !self.hs_retried && self.role == Role::Acceptor {
            // The dialer's first data follows our SYN-ACK by about an RTT.
            self.hs_rtt = Some(now.saturating_duration_since(self.created));
        }
        let outcome = self.recv.on_data(seg.seq, seg.payload);
        if let DataOutcome::Delivered { bytes } = outcome {
            self.tune_window(now, seg_len, bytes);
        }
        match outcome {
            DataOutcome::Delivered { bytes } => {
                self.stats.bytes_received += bytes as u64;
                if self.state == State::FinWait && self.linger_at.is_some() {
                    // After shutdown the peer is still sending: keep lingering.
                    self.linger_at = Some(now + self.cfg.time_wait);
                }
                self.push_event(Event::Readable);
                self.schedule_ack(now);
            }
            DataOutcome::Duplicate => {
                self.ack_now = true;
                if self.dup_answer.is_none() {
                    self.dup_answer = Some(self.recv.ack_number());
                }
            }
            DataOutcome::Buffered | DataOutcome::Dropped => {
                self.ack_now = true;
            }
            DataOutcome::Closed => {}
        }
        if !had_fin && self.recv.fin_received() {
            let ack = self.recv.ack_number();
            self.peer_fin_effective(now, ack);
        }
    }

    /// Receive-window autotuning (`spec/transport.md` §6.2): over each
    /// RTT (SRTT, else the handshake's), the bytes delivered in order; if
    /// they reach ¾ of the window (limit × largest segment seen) while the
    /// reader keeps up, the window is what limits the sender.
    fn tune_window(&mut self, now: Instant, seg_len: usize, delivered: usize) {
        self.seg_seen = self.seg_seen.max(seg_len);
        let Some(rtt) = self.rtt.srtt().or(self.hs_rtt) else {
            return;
        };
        let start = *self.tune_start.get_or_insert(now);
        self.tune_bytes = self.tune_bytes.saturating_add(delivered);
        if now.saturating_duration_since(start) < rtt {
            return;
        }
        let window = self.recv.limit().saturating_mul(self.seg_seen.max(1));
        if self.tune_bytes.saturating_mul(4) >= window.saturating_mul(3)
            && self.recv.reader_keeps_up()
        {
            self.window_limited = true;
        }
        self.tune_start = Some(now);
        self.tune_bytes = 0;
    }

    fn schedule_ack(&mut self, now: Instant) {
        if self.recv.ooo_len() > 0 {
            self.ack_now = true;
            return;
        }
        self.pending_acks += 1;
        if self.pending_acks >= DELAYED_ACK_SEGMENTS {
            self.ack_now = true;
        } else if self.quick_acks > 0 {
            self.quick_acks -= 1;
            self.ack_now = true;
        } else if self.delayed_ack_at.is_none() {
            self.delayed_ack_at = Some(now + DELAYED_ACK);
        }
    }

    fn maybe_window_update(&mut self) {
        let w = self.recv.window();
        let quarter = u16::try_from(self.cfg.recv.queue_segments / 4).unwrap_or(u16::MAX);
        if matches!(self.state, State::Established | State::FinWait)
            && (self.last_adv_window == 0 && w > 0
                || w.saturating_sub(self.last_adv_window) >= quarter.max(1))
        {
            self.ack_now = true;
        }
    }

    fn process_ack(&mut self, now: Instant, ack: Seq, pure: bool, window_changed: bool) {
        match self.send.on_ack(now, ack) {
            AckKind::New {
                bytes_acked,
                rtt,
                fin_acked: _,
            } => {
                if let Some(r) = rtt {
                    self.rtt.on_sample(r, false);
                    self.send.set_min_rtt(self.rtt.min_rtt());
                }
                self.rtt.reset_backoff();
                self.tlp_sent = 0;
                self.seg_size.on_progress(bytes_acked);
                let out = self.cc.on_ack(
                    now,
                    AckEvent {
                        bytes_acked,
                        snd_una: ack,
                        rtt,
                    },
                );
                if out.retransmit_first_hole {
                    if !self.cc.in_fast_recovery() {
                        // Timeout recovery: everything is presumed lost.
                        self.queue_retransmit(now, false);
                    } else if !self.reordering {
                        // Partial ACK: the next segment is resent only if
                        // SACK proves it missing and it is not a fresh
                        // repair still on its way (§7.4). With reordering
                        // the time rule decides (§7.3.2).
                        let min_age = self.rtt.min_rtt().unwrap_or(Duration::ZERO);
                        if let Some(o) = self.send.retransmit_proven_head(now, min_age) {
                            self.push_rtx(o);
                        }
                    }
                }
                self.zwp_reset();
                if self.send.has_unacked() {
                    self.rto_at = Some(now + self.rtt.rto());
                    self.outstanding_since = Some(now);
                } else {
                    self.rto_at = None;
                    self.tlp_at = None;
                    self.outstanding_since = None;
                }
                if self.state == State::FinWait && self.send.is_idle() && self.linger_at.is_none() {
                    self.linger_at = Some(now + self.cfg.time_wait);
                }
                if self.was_writable_blocked && self.send.free() > 0 {
                    self.was_writable_blocked = false;
                    self.push_event(Event::Writable);
                }
            }
            AckKind::Duplicate => {
                if pure && !window_changed && self.send.flight_bytes(false) > 0 {
                    self.stats.dup_acks += 1;
                    let flight = self.send.flight_bytes(true);
                    if self.reordering {
                        // Duplicates only inflate the window in fast
                        // recovery; the time rule detects loss (§7.3.2).
                        if self.cc.in_fast_recovery() {
                            let _ = self.cc.on_dup_ack(now, flight, self.send.snd_nxt());
                        }
                    } else if self.cc.on_dup_ack(now, flight, self.send.snd_nxt()) {
                        self.stats.fast_retransmits += 1;
                        self.rtx_next = self.send.snd_una();
                        self.queue_retransmit(now, false);
                    }
                }
            }
            AckKind::Old | AckKind::Invalid => {}
        }
    }

    /// New SACK information: detect loss early, and in recovery resend the
    /// next hole SACK reveals (one per ACK, so the ACK clock paces them).
    fn on_new_sack(&mut self, now: Instant) {
        if self.reordering {
            // The time rule decides (detect_time_loss).
            return;
        }
        if self.cc.in_recovery() {
            if let Some(o) = self.send.retransmit_hole_from(now, self.rtx_next) {
                self.push_rtx(o);
            }
            return;
        }
        // Three segments' worth, fewer when fewer are outstanding (early
        // retransmit, RFC 5827).
        let segs = (DUP_ACK_THRESHOLD as usize)
            .min(self.send.unacked_segments().saturating_sub(1))
            .max(1);
        let threshold = segs.saturating_mul(self.seg_size.current());
        if self.send.sacked_above_first_hole() >= threshold {
            let flight = self.send.flight_bytes(true);
            if self.cc.on_sack_loss(now, flight, self.send.snd_nxt()) {
                self.stats.fast_retransmits += 1;
                self.rtx_next = self.send.snd_una();
                self.queue_retransmit(now, false);
            }
        }
    }

    /// The reordering window: what was learnt from spurious
    /// retransmissions, at least a quarter of the smallest RTT, at most the
    /// smoothed RTT (§7.3.2).
    fn reorder_window(&self) -> Duration {
        let min = self.rtt.min_rtt().unwrap_or(Duration::ZERO);
        let floor = min / REORDER_WINDOW_MIN_DIVISOR;
        let cap = self.rtt.srtt().unwrap_or(min).max(floor);
        self.reo_learned.max(floor).min(cap)
    }

    /// Learns from spurious retransmissions and runs time-based loss
    /// detection (§7.3.2): the only rule once reordering has been seen,
    /// beside the SACK and duplicate-ACK counts before that.
    fn detect_time_loss(&mut self, now: Instant) {
        if let Some((n, extent)) = self.send.take_spurious() {
            self.stats.spurious_retransmits += u64::from(n);
            self.reordering = true;
            // A quarter more than the delay seen, for the next one.
            self.reo_learned = self.reo_learned.max(extent.saturating_add(extent / 4));
        }
        if !matches!(
            self.state,
            State::Established | State::FinWait | State::TimeWait
        ) {
            return;
        }
        let room = RTX_CAP
            .saturating_sub(self.rtx.len())
            .min(LOST_RTX_PER_EVENT);
        let (lost, next) = self.send.retransmit_lost(now, self.reorder_window(), room);
        self.reo_at = next;
        if lost.is_empty() {
            return;
        }
        if !self.cc.in_recovery() {
            let flight = self.send.flight_bytes(true);
            self.cc.on_sack_loss(now, flight, self.send.snd_nxt());
            self.stats.fast_retransmits += 1;
        }
        for o in lost {
            self.push_rtx(o);
        }
    }

    /// Whether a tail loss probe may be armed or sent (§7.3.3): data is
    /// outstanding, fewer than `TLP_MAX` probes are unanswered, the
    /// connection carries data and is not in timeout recovery.
    fn tail_probe_allowed(&self) -> bool {
        self.tlp_sent < TLP_MAX
            && self.send.has_unacked()
            && self.cc.recovery() != RecoveryState::Timeout
            && matches!(
                self.state,
                State::Established | State::FinWait | State::TimeWait
            )
    }

    /// Arms (or disarms) the tail loss probe (§7.3.3): 2 × SRTT (at least
    /// 1 ms; plus the peer's delayed-ACK time when one segment is
    /// outstanding) after the last send or acknowledgement,
    /// while data is outstanding, no probe is unanswered, the connection
    /// is not in timeout recovery and the probe would come before the RTO.
    fn arm_tail_probe(&mut self, now: Instant) {
        self.tlp_at = None;
        if !self.tail_probe_allowed() {
            return;
        }
        let Some(srtt) = self.rtt.srtt() else {
            return;
        };
        // The peer delays its ACK only for a lone segment (§6.3).
        let mut pto = srtt.saturating_mul(2).max(TLP_MIN);
        if self.send.unacked_segments() == 1 {
            pto = pto.saturating_add(DELAYED_ACK);
        }
        let pto = pto.saturating_mul(1 << self.tlp_sent.min(TLP_MAX));
        let at = now + pto;
        if self.rto_at.is_some_and(|rto| at < rto) {
            self.tlp_at = Some(at);
        }
    }

    /// The tail loss probe fired: nothing was acknowledged or SACKed for a
    /// probe timeout. Sends the next new segment if there is one and the
    /// peer's window allows (the congestion window does not count), else
    /// resends the highest un-SACKed segment, so that the peer's answer
    /// lets time-based detection find what was lost (§7.3.3).
    fn on_tail_probe(&mut self, now: Instant) {
        if !self.tail_probe_allowed() {
            return;
        }
        if self.peer_window_room() && self.send.can_send(now) && !self.send.next_is_fin() {
            self.tlp_new = true;
        } else if let Some(o) = self.send.retransmit_last(now) {
            self.push_rtx(o);
        } else {
            return;
        }
        self.tlp_sent += 1;
        self.stats.tail_probes += 1;
        self.rto_at = Some(now + self.rtt.rto());
        self.arm_tail_probe(now);
    }

    fn push_rtx(&mut self, o: Outgoing) {
        let end = o.seq.add_len(o.data.len().max(1));
        if end.after(self.rtx_next) {
            self.rtx_next = end;
        }
        if self.rtx.len() < RTX_CAP && !self.rtx.iter().any(|r| r.seq == o.seq) {
            self.rtx.push_back(o);
        }
    }

    fn queue_retransmit(&mut self, now: Instant, fallback_to_head: bool) {
        let mut out = self.send.retransmit_first_hole(now);
        if out.is_none() && fallback_to_head && self.send.has_unacked() {
            // Everything left is SACKed yet nothing advances for a whole
            // RTO: the peer may have discarded it. Forget SACKs, resend.
            self.send.clear_sacks();
            out = self.send.retransmit_first_hole(now);
        }
        if let Some(o) = out {
            self.push_rtx(o);
        }
    }

    // ----- timers ------------------------------------------------------

    /// Processes expired timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.state == State::Closed {
            return;
        }
        if self.syn_at.is_some_and(|t| t <= now) {
            self.on_syn_timeout(now);
        }
        if self.rto_at.is_some_and(|t| t <= now) {
            self.on_rto(now);
        }
        if self.reo_at.is_some_and(|t| t <= now) {
            self.reo_at = None;
            self.detect_time_loss(now);
        }
        if self.tlp_at.is_some_and(|t| t <= now) {
            self.tlp_at = None;
            self.on_tail_probe(now);
        }
        if self.delayed_ack_at.is_some_and(|t| t <= now) {
            self.delayed_ack_at = None;
            self.quick_acks = QUICK_ACK_BUDGET;
            self.ack_now = true;
        }
        if self.zwp_at.is_some_and(|t| t <= now) {
            self.on_zwp_timeout(now);
        }
        if self.keepalive_at.is_some_and(|t| t <= now) {
            self.on_keepalive_timeout(now);
        }
        if self.linger_at.is_some_and(|t| t <= now) {
            self.linger_at = None;
            if self.state == State::TimeWait && !self.send_data_done() {
                // We closed, the peer's FIN came first, and some of our data
                // (or our FIN) is still on its way: linger on until it is
                // through; the retransmission and probe timers bound this.
                self.linger_at = Some(now + self.cfg.time_wait);
            } else if self.state == State::TimeWait
                && !self.our_end_acked()
                && now.saturating_duration_since(self.last_heard) < self.cfg.user_timeout
            {
                // Our FIN (or the FIN+ACK reply that is our FIN) was not
                // acknowledged yet: the peer may be cut off by a partition
                // and still retransmitting its FIN or data. Stay to answer
                // it until it has been silent for the user timeout
                // (spec/transport.md §8.2); leaving earlier would answer its
                // retransmission with an RST, a reset for a peer whose data
                // all arrived.
                let until = self.last_heard + self.cfg.user_timeout;
                self.linger_at = Some(until.min(now + self.cfg.time_wait).max(now));
            } else if matches!(self.state, State::TimeWait | State::FinWait) {
                self.enter_closed(Event::Closed);
            }
        }
    }

    fn on_syn_timeout(&mut self, now: Instant) {
        if self.state != State::SynSent {
            self.syn_at = None;
            return;
        }
        if now >= self.dial_deadline {
            self.enter_closed(Event::Reset(ResetReason::DialTimeout));
            return;
        }
        if self.syn_hold {
            self.syn_at = Some((now + self.syn_rto).min(self.dial_deadline));
            return;
        }
        self.syn_retries += 1;
        if self.syn_retries == SYN_DIRECT_ATTEMPTS {
            self.syn_rto = SYN_INITIAL_RTO;
            self.push_event(Event::TryRelay);
        }
        self.syn_pending = true;
        self.syn_rto = (self.syn_rto * 2).min(SYN_MAX_RTO);
        self.syn_at = Some((now + self.syn_rto).min(self.dial_deadline));
    }

    fn on_rto(&mut self, now: Instant) {
        self.rto_at = None;
        if !self.send.has_unacked() {
            return;
        }
        let since = self
            .outstanding_since
            .map_or(self.last_heard, |o| o.max(self.last_heard));
        if now.saturating_duration_since(since) >= self.cfg.user_timeout
            && self.timeouts_unheard >= self.give_up_min_timeouts()
        {
            if self.send.flight_bytes(true) == 0
                && self.state != State::Established
                && (self.recv.fin_received() || self.recv.is_closed())
            {
                // Only our FIN is unanswered, all our data arrived, and the
                // peer's stream ended (or we stopped reading it with
                // `close`): the peer has gone; nothing was lost. After
                // `shutdown` without the peer's FIN its stream is cut
                // short, which is a reset for the reader.
                self.enter_closed(Event::Closed);
            } else {
                self.reset(ResetReason::TimedOut);
            }
            return;
        }
        // Path-MTU black hole (§5.4): the peer answered our probe since the
        // previous timeout, with an open window, yet the data is still not
        // acknowledged.
        let hole_len = self.send.first_hole_len().unwrap_or(0);
        let answered = self.timeouts_unheard == 0 && self.peer_window.is_some_and(|w| w > 0);
        match self.seg_size.on_timeout(hole_len, answered) {
            MtuVerdict::Keep => {}
            MtuVerdict::Shrunk(n) => {
                self.send.set_mss(n);
                self.stats.mss_reductions += 1;
                self.pmtu_probe = None;
                self.pmtu_arm_raise(now);
            }
            MtuVerdict::TooSmall => {
                self.reset(ResetReason::PathMtu);
                return;
            }
        }
        self.stats.timeouts += 1;
        self.timeouts_unheard = self.timeouts_unheard.saturating_add(1);
        self.rtx_next = self.send.snd_una();
        let flight = self.send.flight_bytes(true);
        self.cc.on_rto(now, flight, self.send.snd_nxt());
        let rto = self.rtt.rto();
        let j = self.jitter(rto);
        self.rtt.backoff(j);
        self.rtx.clear();
        self.tlp_at = None;
        self.tlp_new = false;
        self.queue_retransmit(now, true);
        if self.seg_size.wants_probe(hole_len) {
            // A tiny probe the peer answers: tells a black hole for large
            // segments from a silent peer at the next timeout.
            self.probe_pending = true;
        }
        self.rto_at = Some(now + self.rtt.rto());
    }

    /// Timeouts since the peer was last heard before giving up: 8, or one
    /// per back-off cap of a shorter user timeout, at least 2 (§7.3).
    fn give_up_min_timeouts(&self) -> u32 {
        let per = self.cfg.user_timeout.as_millis() / MAX_BACKOFF_RTO.as_millis().max(1);
        u32::try_from(per)
            .unwrap_or(u32::MAX)
            .clamp(2, GIVE_UP_MIN_TIMEOUTS)
    }

    fn on_zwp_timeout(&mut self, now: Instant) {
        self.zwp_at = None;
        if !self.zwp_needed(now) {
            self.zwp_reset();
            return;
        }
        self.zwp_probes += 1;
        if self.zwp_probes > ZWP_MAX_PROBES {
            self.reset(ResetReason::ZeroWindow);
            return;
        }
        self.probe_pending = true;
        self.zwp_interval = (self.zwp_interval * 2).min(ZWP_MAX);
        self.zwp_at = Some(now + self.zwp_interval);
    }

    fn zwp_reset(&mut self) {
        self.zwp_at = None;
        self.zwp_probes = 0;
        self.zwp_interval = ZWP_INITIAL;
    }

    /// Data waits, nothing is in flight, and the peer's window is closed.
    fn zwp_needed(&self, now: Instant) -> bool {
        matches!(
            self.state,
            State::Established | State::FinWait | State::TimeWait
        ) && !self.send.has_unacked()
            && self.send.can_send(now)
            && !self.send.next_is_fin()
            && !self.gate_open()
    }

    fn on_keepalive_timeout(&mut self, now: Instant) {
        self.keepalive_at = None;
        if self.state != State::Established {
            return;
        }
        let idle = now.saturating_duration_since(self.last_activity);
        let Some(interval) = self.cfg.keepalive else {
            return;
        };
        if idle < interval {
            self.keepalive_at = Some(self.last_activity + interval);
            return;
        }
        if self.keepalive_unanswered >= KEEPALIVE_PROBES {
            // Our FIN, but the receive side stays open: a peer that was
            // alive after all ends its stream normally, a dead one leaves
            // it cut short, which the give-up rule reports as a reset.
            self.keepalive_closed = true;
            self.shutdown(now);
            return;
        }
        self.keepalive_unanswered += 1;
        self.probe_pending = true;
        self.keepalive_at = Some(now + KEEPALIVE_PROBE_INTERVAL);
    }

    /// The earliest pending timer and its reason.
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let nagle = if matches!(self.state, State::Established | State::FinWait) {
            self.send.nagle_deadline().filter(|t| *t > self.now)
        } else {
            None
        };
        let linger = if self.state == State::FinWait {
            TimerReason::FinLinger
        } else {
            TimerReason::TimeWait
        };
        // The earliest deadline, the first listed on a tie. Plain
        // comparisons: this runs for every packet of the connection.
        let mut best: Option<(Instant, TimerReason)> = None;
        let candidates = [
            (self.syn_at, TimerReason::SynRetransmit),
            (self.rto_at, TimerReason::Retransmit),
            (self.reo_at, TimerReason::Retransmit),
            (self.tlp_at, TimerReason::Retransmit),
            (self.delayed_ack_at, TimerReason::DelayedAck),
            (nagle, TimerReason::Nagle),
            (self.zwp_at, TimerReason::ZeroWindowProbe),
            (self.keepalive_at, TimerReason::Keepalive),
            (self.linger_at, linger),
        ];
        for (at, reason) in candidates {
            if let Some(t) = at {
                if best.is_none_or(|(b, _)| t < b) {
                    best = Some((t, reason));
                }
            }
        }
        best
    }

    // ----- output ------------------------------------------------------

    fn gate_open(&self) -> bool {
        let unacked = self.send.unacked_segments();
        let flight = self.send.flight_bytes(self.cc.counts_sacked_in_flight());
        let peer_bytes = self.peer_window.map_or(usize::MAX, |w| {
            usize::from(w).saturating_mul(self.seg_size.current())
        });
        flight < self.cc.cwnd().min(peer_bytes)
            && self.peer_window_room()
            && unacked < MAX_UNACKED_SEGMENTS.max(self.cfg.window_cap_segments)
    }

    /// Rule 2 of the window gate (§5.3): fewer un-acknowledged segments
    /// than the peer's window field, once one was received.
    fn peer_window_room(&self) -> bool {
        let unacked = self.send.unacked_segments();
        self.peer_window.is_none_or(|w| unacked < usize::from(w))
    }

    /// The receive window (in segments) autotuning asks for: the sender
    /// filled the current one while the application kept up. The node
    /// grants it, within its memory cap, with [`Connection::grow_window`].
    pub fn window_growth_wanted(&self) -> Option<usize> {
        if self.window_limited {
            self.recv.growth_wanted()
        } else {
            None
        }
    }

    /// Ready-queue slots now (the largest window this side advertises).
    pub fn window_limit(&self) -> usize {
        self.recv.limit()
    }

    /// Grows the receive window to `segments` (see
    /// [`Connection::window_growth_wanted`]); the next ACK carries it.
    pub fn grow_window(&mut self, segments: usize) {
        self.window_limited = false;
        let before = self.recv.limit();
        self.recv.grow(segments);
        if self.recv.limit() > before {
            self.ack_now = true;
        }
    }

    fn ack_fields(&mut self) -> (Seq, u16) {
        let w = self.recv.window();
        self.last_adv_window = w;
        self.ack_now = false;
        self.pending_acks = 0;
        self.delayed_ack_at = None;
        (self.recv.ack_number(), w)
    }

    fn emit(&mut self, seg: Segment) -> Option<Segment> {
        self.stats.segments_sent += 1;
        Some(seg)
    }

    fn data_segment(&mut self, now: Instant, o: Outgoing) -> Segment {
        if o.fin {
            return Segment::control(Flags::FIN, o.seq.0, 0, 0);
        }
        if o.retransmission {
            self.stats.retransmissions += 1;
        } else {
            self.stats.bytes_sent += o.data.len() as u64;
            self.last_activity = now;
        }
        let (ack, window) = self.ack_fields();
        Segment {
            flags: Flags::ACK,
            seq: o.seq,
            ack,
            window,
            payload: o.data,
        }
    }

    /// Whether `seg` answers our upward path-MTU probe (§5.5): a pure ACK
    /// (no SACK) in time, acknowledging exactly the probe's end, and not
    /// itself a probe of the peer's. (The window is not compared: a reader
    /// that caught up since the last ACK answers with a larger one. A
    /// window update crossing the probe could be taken for its answer; a
    /// size the path does not carry then ends in black-hole detection,
    /// which falls back to the base, §5.4.)
    fn is_pmtu_answer(&self, now: Instant, seg: &Segment, stale: bool) -> bool {
        let Some(p) = self.pmtu_probe else {
            return false;
        };
        !stale
            && seg.payload.is_empty()
            && seg.ack == p.end
            && !seg.seq.before(self.recv.rcv_nxt())
            && now <= p.deadline
    }

    /// Starts the re-search timer when the upward search has just ended.
    fn pmtu_arm_raise(&mut self, now: Instant) {
        if self.pmtu_raise_at.is_none() && self.seg_size.search_over() {
            self.pmtu_raise_at = Some(now + PMTU_RAISE_TIMER);
        }
    }

    /// The next upward path-MTU probe, when one is due (§5.5): the search
    /// has a candidate, written data waits to be sent and nothing is in
    /// flight. The probe is a data segment of the candidate's size, padded
    /// with zeros, lying wholly below our oldest unacknowledged byte: the
    /// receiver (any implementation) drops it as a duplicate and
    /// acknowledges it at once, so it needs no retransmission and costs
    /// the congestion window nothing.
    fn pmtu_probe_segment(&mut self, now: Instant) -> Option<Segment> {
        if let Some(p) = self.pmtu_probe {
            if now <= p.deadline {
                return None;
            }
            self.pmtu_probe = None;
            self.seg_size.on_probe_lost(p.size);
            self.pmtu_arm_raise(now);
        }
        if self.state != State::Established
            || self.send.unsent() == 0
            || self.send.has_unacked()
            || !self.rtx.is_empty()
            || self.peer_window.is_none()
        {
            return None;
        }
        if self.seg_size.search_over() {
            // The search ended: it starts again once the raise timer fired.
            self.pmtu_arm_raise(now);
            if self.pmtu_raise_at.is_some_and(|at| now < at) || !self.seg_size.restart_search() {
                return None;
            }
            self.pmtu_raise_at = None;
            self.stats.pmtu_searches += 1;
        }
        let size = self.seg_size.probe_candidate()?;
        let payload = Bytes::from_static(PMTU_PADDING.get(..size)?);
        let end = self.send.snd_una();
        self.pmtu_probe = Some(PmtuProbe {
            size,
            end,
            deadline: now + self.rtt.rto(),
        });
        self.stats.pmtu_probes += 1;
        let (ack, window) = self.ack_fields();
        Some(Segment {
            flags: Flags::ACK,
            seq: Seq(end.0.wrapping_sub(u32::try_from(size).ok()?)),
            ack,
            window,
            payload,
        })
    }

    /// The next segment to transmit, if any.
    pub fn poll_segment(&mut self, now: Instant) -> Option<Segment> {
        self.now = self.now.max(now);
        if self.rst_pending {
            self.rst_pending = false;
            return self.emit(Segment::control(Flags::RST, 0, 0, 0));
        }
        if self.state == State::Closed {
            return None;
        }
        if self.syn_pending {
            self.syn_pending = false;
            let w = self.recv.window();
            return self.emit(Segment::control(Flags::SYN, self.isn.0, 0, w));
        }
        if self.state == State::SynSent {
            return None;
        }
        if self.synack_pending {
            self.synack_pending = false;
            let (ack, w) = self.ack_fields();
            return self.emit(Segment::control(
                Flags::SYN | Flags::ACK,
                self.isn.0,
                ack.0,
                w,
            ));
        }
        if let Some(ack) = self.dup_answer.take() {
            if ack != self.recv.ack_number()
                && matches!(self.state, State::Established | State::FinWait)
            {
                // Before anything that carries the newer ACK number.
                let window = self.recv.window();
                return self.emit(Segment::control(
                    Flags::ACK,
                    self.send.snd_nxt().0,
                    ack.0,
                    window,
                ));
            }
        }
        if let Some(o) = self.rtx.pop_front() {
            if o.fin {
                // A FIN retransmission; account it too.
                self.stats.retransmissions += 1;
            }
            let seg = self.data_segment(now, o);
            return self.emit(seg);
        }
        if let Some(seg) = self.pmtu_probe_segment(now) {
            return self.emit(seg);
        }
        if core::mem::take(&mut self.tlp_new) {
            if let Some(o) = self.send.pop_segment(now) {
                let seg = self.data_segment(now, o);
                return self.emit(seg);
            }
        }
        // In TIME_WAIT only after our own close: the rest of our data and
        // our FIN still go out (otherwise the send side was abandoned).
        if matches!(
            self.state,
            State::Established | State::FinWait | State::TimeWait
        ) && (self.send.next_is_fin() || self.gate_open())
        {
            if let Some(o) = self.send.pop_segment(now) {
                if self.rto_at.is_none() {
                    self.rto_at = Some(now + self.rtt.rto());
                    self.outstanding_since = Some(now);
                }
                self.arm_tail_probe(now);
                if self.was_writable_blocked && self.send.free() > 0 {
                    self.was_writable_blocked = false;
                    self.push_event(Event::Writable);
                }
                let seg = self.data_segment(now, o);
                return self.emit(seg);
            }
        }
        if self.zwp_at.is_none() && self.zwp_needed(now) {
            self.zwp_at = Some(now + self.zwp_interval);
        }
        // The reply's seq tells the peer where our stream ends, so it waits
        // until our own FIN (queued behind data after a close) is out.
        if self.fin_reply_pending && self.send.fin_sent() {
            self.fin_reply_pending = false;
            self.ack_fields();
            return self.emit(Segment::control(
                Flags::FIN | Flags::ACK,
                self.send.snd_nxt().0,
                self.fin_reply_ack.0,
                0,
            ));
        }
        if self.state == State::TimeWait {
            // Nothing is acknowledged here (no ping-pong); only a
            // zero-window probe for our own remaining data goes out.
            self.ack_now = false;
            if !self.probe_pending {
                return None;
            }
        }
        if self.ack_now || self.probe_pending {
            // Probes carry seq one below the oldest unacknowledged byte
            // (the next byte, when nothing is in flight), which the peer
            // has always received, so that it answers them
            // (spec/transport.md §9.1, §5.4).
            let seq = if self.probe_pending && !self.ack_now {
                self.send.snd_una().add(u32::MAX)
            } else {
                self.send.snd_nxt()
            };
            self.probe_pending = false;
            let blocks = self.recv.sack_blocks();
            let (ack, window) = self.ack_fields();
            let payload = if blocks.is_empty() {
                Bytes::new()
            } else {
                let mut buf = [0u8; sack::encoded_len(MAX_SACK_BLOCKS)];
                match sack::encode(&blocks, &mut buf) {
                    Ok(n) => {
                        self.stats.sack_blocks_sent += blocks.len() as u64;
                        Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[]))
                    }
                    Err(_) => Bytes::new(),
                }
            };
            return self.emit(Segment {
                flags: Flags::ACK,
                seq,
                ack,
                window,
                payload,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Flags = Flags::ACK;

    fn t(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn seg(flags: Flags, seq: u32, ack: u32, window: u16, payload: &[u8]) -> Segment {
        Segment {
            flags,
            seq: Seq(seq),
            ack: Seq(ack),
            window,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn out(c: &mut Connection, now: Instant) -> Vec<Segment> {
        core::iter::from_fn(|| c.poll_segment(now))
            .take(1000)
            .collect()
    }

    fn events(c: &mut Connection) -> Vec<Event> {
        core::iter::from_fn(|| c.poll_event()).collect()
    }

    fn nodelay() -> ConnConfig {
        ConnConfig {
            nodelay: true,
            ..ConnConfig::default()
        }
    }

    /// Dialer with ISN 0, established against a peer with ISN 0, window 512.
    fn dialer(cfg: ConnConfig) -> Connection {
        let mut c = Connection::connect(t(0), cfg, 0);
        assert_eq!(out(&mut c, t(0)), vec![seg(Flags::SYN, 0, 0, 512, b"")]);
        c.handle_segment(t(10), seg(Flags::SYN | A, 0, 1, 512, b""));
        assert_eq!(out(&mut c, t(10)), vec![seg(A, 1, 1, 512, b"")]);
        events(&mut c);
        c
    }

    /// Acceptor with ISN 0 for a SYN with seq 0.
    fn acceptor(cfg: ConnConfig) -> Connection {
        let mut c = Connection::accept(t(0), cfg, &seg(Flags::SYN, 0, 0, 512, b""), 0);
        assert_eq!(out(&mut c, t(0)), vec![seg(Flags::SYN | A, 0, 1, 512, b"")]);
        events(&mut c);
        c
    }

    // ----- handshake -----------------------------------------------------

    #[test]
    fn handshake_dialer_side() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        assert_eq!(c.state(), State::SynSent);
        assert_eq!(c.write(t(0), b"x"), Err(StreamError::NotEstablished));
        assert_eq!(out(&mut c, t(0)), vec![seg(Flags::SYN, 0, 0, 512, b"")]);
        // A SYN-ACK acknowledging something else is ignored.
        c.handle_segment(t(5), seg(Flags::SYN | A, 0, 7, 512, b""));
        assert_eq!(c.state(), State::SynSent);
        c.handle_segment(t(10), seg(Flags::SYN | A, 0, 1, 512, b""));
        assert_eq!(c.state(), State::Established);
        assert_eq!(out(&mut c, t(10)), vec![seg(A, 1, 1, 512, b"")]);
        assert_eq!(events(&mut c), vec![Event::Connected, Event::Writable]);
        // A duplicate SYN-ACK (our ACK was lost) is confirmed again.
        c.handle_segment(t(20), seg(Flags::SYN | A, 0, 1, 512, b""));
        assert_eq!(out(&mut c, t(20)), vec![seg(A, 1, 1, 512, b"")]);
    }

    #[test]
    fn handshake_acceptor_side_and_duplicate_syn() {
        let mut c = acceptor(ConnConfig::default());
        assert_eq!(c.state(), State::Established);
        c.handle_segment(t(300), seg(Flags::SYN, 0, 0, 512, b""));
        assert_eq!(
            out(&mut c, t(300)),
            vec![seg(Flags::SYN | A, 0, 1, 512, b"")]
        );
        // A SYN with another ISN (port reuse) is not answered.
        c.handle_segment(t(301), seg(Flags::SYN, 99, 0, 512, b""));
        assert!(out(&mut c, t(301)).is_empty());
    }

    #[test]
    fn random_isns_work_across_the_wrap() {
        let isn = u32::MAX - 1;
        let mut c = Connection::connect(t(0), nodelay(), isn);
        assert_eq!(out(&mut c, t(0))[0].seq, Seq(isn));
        c.handle_segment(t(1), seg(Flags::SYN | A, 77, isn.wrapping_add(1), 512, b""));
        assert_eq!(out(&mut c, t(1)), vec![seg(A, u32::MAX, 78, 512, b"")]);
        c.write(t(2), b"abc").unwrap();
        assert_eq!(out(&mut c, t(2)), vec![seg(A, u32::MAX, 78, 512, b"abc")]);
        c.handle_segment(t(3), seg(A, 78, 2, 512, b""));
        assert_eq!(c.stats().in_flight, 0);
    }

    #[test]
    fn syn_retransmission_timeline_and_dial_timeout() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        let mut sent = vec![];
        let mut relay_at = None;
        let mut now = t(0);
        for _ in 0..20 {
            for s in out(&mut c, now) {
                assert_eq!(s, seg(Flags::SYN, 0, 0, 512, b""));
                sent.push(now.as_nanos() / 1_000_000);
            }
            for e in events(&mut c) {
                match e {
                    Event::TryRelay => relay_at = Some(now.as_nanos() / 1_000_000),
                    Event::Reset(ResetReason::DialTimeout) => {
                        // The dial's deadline is the user timeout.
                        assert_eq!(now, t(30_000));
                        assert!(c.is_closed());
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let Some((at, why)) = c.poll_timeout() else {
                break;
            };
            assert_eq!(why, TimerReason::SynRetransmit);
            now = at;
            c.handle_timeout(now);
        }
        assert_eq!(
            sent,
            vec![
                0, 250, 750, 1750, 2250, 3250, 5250, 9250, 13_250, 17_250, 21_250, 25_250, 29_250
            ]
        );
        assert_eq!(relay_at, Some(1750));
        assert!(c.is_closed());
    }

    /// Issue #21: SYNs queued behind a late tunnel leave together when it
    /// comes up; if they were lost the next copy came at the back-off
    /// reached meanwhile (4 s), past the deadline of a dial whose tunnel
    /// came up 2 s before it. The back-off now restarts at tunnel-up.
    #[test]
    fn syn_back_off_restarts_when_the_tunnel_comes_up() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        let mut now = t(0);
        loop {
            out(&mut c, now);
            let (next, _) = c.poll_timeout().expect("timer");
            if next >= t(27_000) {
                // The last SYN left at 25.25 s; the next is due at 29.25 s.
                assert!(next.saturating_duration_since(now) >= Duration::from_secs(4));
                break;
            }
            now = next;
            c.handle_timeout(now);
        }
        let up = now + Duration::from_millis(100);
        c.tunnel_up(up);
        assert_eq!(c.poll_timeout().map(|(t, _)| t), Some(up + SYN_INITIAL_RTO));
        c.handle_timeout(up + SYN_INITIAL_RTO);
        assert_eq!(out(&mut c, up + SYN_INITIAL_RTO).len(), 1, "a SYN copy");
    }

    #[test]
    fn dial_retries_until_its_own_user_timeout() {
        let cfg = ConnConfig {
            user_timeout: Duration::from_secs(5),
            ..ConnConfig::default()
        };
        let mut c = Connection::connect(t(0), cfg, 0);
        let mut now = t(0);
        let mut sent = vec![];
        while !c.is_closed() {
            if !out(&mut c, now).is_empty() {
                sent.push(now.as_nanos() / 1_000_000);
            }
            let (at, _) = c.poll_timeout().expect("a dialing connection has a timer");
            now = at;
            c.handle_timeout(now);
        }
        assert_eq!(now, t(5000));
        assert_eq!(sent, vec![0, 250, 750, 1750, 2250, 3250]);
        assert!(events(&mut c).contains(&Event::Reset(ResetReason::DialTimeout)));
        // Held retries (key exchange pending) do not move the deadline.
        let mut c = Connection::connect(t(0), cfg, 0);
        c.hold_syn_retries(true);
        let mut now = t(0);
        while !c.is_closed() {
            out(&mut c, now);
            now = c.poll_timeout().expect("timer").0;
            c.handle_timeout(now);
        }
        assert_eq!(now, t(5000));
    }

    #[test]
    fn dialing_connection_is_not_reaped_and_late_synack_completes() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        out(&mut c, t(0));
        for ms in [250, 750, 1750, 2250, 3250, 5250] {
            c.handle_timeout(t(ms));
            out(&mut c, t(ms));
        }
        // Older than the reference's 5 s reap age, still dialing.
        assert_eq!(c.state(), State::SynSent);
        assert!(!c.is_closed());
        c.handle_segment(t(6000), seg(Flags::SYN | A, 0, 1, 512, b""));
        assert_eq!(c.state(), State::Established);
    }

    #[test]
    fn rst_refuses_a_dial() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        out(&mut c, t(0));
        c.handle_segment(t(5), seg(Flags::RST, 0, 0, 0, b""));
        assert!(c.is_closed());
        assert_eq!(events(&mut c), vec![Event::Reset(ResetReason::Remote)]);
        assert!(out(&mut c, t(5)).is_empty());
        assert!(c.poll_timeout().is_none());
    }

    #[test]
    fn abort_sends_rst() {
        let mut c = dialer(ConnConfig::default());
        c.abort();
        assert_eq!(out(&mut c, t(20)), vec![seg(Flags::RST, 0, 0, 0, b"")]);
        assert!(c.is_closed());
        assert_eq!(events(&mut c), vec![Event::Reset(ResetReason::Aborted)]);
    }

    // ----- data, Nagle, delayed ACK --------------------------------------

    #[test]
    fn first_data_and_quick_ack() {
        let mut a = dialer(ConnConfig::default());
        assert_eq!(a.write(t(20), b"hello"), Ok(5));
        assert_eq!(out(&mut a, t(20)), vec![seg(A, 1, 1, 512, b"hello")]);
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(25), seg(A, 1, 1, 512, b""));
        b.handle_segment(t(30), seg(A, 1, 1, 512, b"hello"));
        assert_eq!(out(&mut b, t(30)), vec![seg(A, 1, 6, 511, b"")]);
        assert_eq!(events(&mut b), vec![Event::Readable]);
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&mut buf), Ok(5));
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(b.read(&mut buf), Err(StreamError::WouldBlock));
        // Pure ACKs are not answered.
        b.handle_segment(t(31), seg(A, 6, 1, 512, b""));
        assert!(out(&mut b, t(31)).is_empty());
    }

    #[test]
    fn nagle_holds_tail_until_ack() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), b"hello").unwrap();
        out(&mut a, t(20));
        a.write(t(21), b"x").unwrap();
        assert!(out(&mut a, t(21)).is_empty());
        assert_eq!(a.poll_timeout().map(|(_, r)| r), Some(TimerReason::Nagle));
        a.handle_segment(t(30), seg(A, 1, 6, 511, b""));
        assert_eq!(out(&mut a, t(30)), vec![seg(A, 6, 1, 512, b"x")]);
    }

    #[test]
    fn nagle_hold_times_out_after_40ms() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), b"hello").unwrap();
        out(&mut a, t(20));
        a.write(t(21), b"x").unwrap();
        a.write(t(22), b"y").unwrap();
        assert_eq!(a.poll_timeout(), Some((t(61), TimerReason::Nagle)));
        a.handle_timeout(t(61));
        assert_eq!(out(&mut a, t(61)), vec![seg(A, 6, 1, 512, b"xy")]);
    }

    #[test]
    fn delayed_ack_after_quick_ack_budget() {
        let mut b = acceptor(ConnConfig::default());
        let mut seq = 1u32;
        let mut now = 10;
        // 32 lone segments, each ACKed at once (quick-ACK budget), each read.
        let mut buf = [0u8; 8];
        for _ in 0..32 {
            b.handle_segment(t(now), seg(A, seq, 1, 512, b"z"));
            seq += 1;
            assert_eq!(out(&mut b, t(now)), vec![seg(A, 1, seq, 511, b"")]);
            b.read(&mut buf).unwrap();
            now += 100;
            // Every other one is the 2nd pending? No: each ACK clears the count.
        }
        b.handle_segment(t(now), seg(A, seq, 1, 512, b"z"));
        seq += 1;
        assert!(out(&mut b, t(now)).is_empty(), "budget spent: delayed");
        assert_eq!(
            b.poll_timeout(),
            Some((t(now + 5), TimerReason::DelayedAck))
        );
        // A second segment forces the ACK.
        b.handle_segment(t(now + 1), seg(A, seq, 1, 512, b"z"));
        seq += 1;
        assert_eq!(out(&mut b, t(now + 1)), vec![seg(A, 1, seq, 510, b"")]);
        // A lone one again waits for the 5 ms timer, which refills the budget.
        b.handle_segment(t(now + 2), seg(A, seq, 1, 512, b"z"));
        seq += 1;
        assert!(out(&mut b, t(now + 2)).is_empty());
        b.handle_timeout(t(now + 7));
        assert_eq!(out(&mut b, t(now + 7)), vec![seg(A, 1, seq, 509, b"")]);
        b.handle_segment(t(now + 8), seg(A, seq, 1, 512, b"z"));
        assert_eq!(out(&mut b, t(now + 8)).len(), 1, "budget refilled");
    }

    #[test]
    fn outgoing_data_carries_the_pending_ack() {
        let mut b = acceptor(nodelay());
        for _ in 0..32 {
            b.handle_segment(t(1), seg(A, 1, 1, 512, b""));
        }
        // spend the budget
        for i in 0..32u32 {
            b.handle_segment(t(2), seg(A, 1 + i, 1, 512, b"q"));
            out(&mut b, t(2));
        }
        b.handle_segment(t(3), seg(A, 33, 1, 512, b"q"));
        b.write(t(3), b"reply").unwrap();
        assert_eq!(out(&mut b, t(3)), vec![seg(A, 1, 34, 479, b"reply")]);
        assert_ne!(
            b.poll_timeout().map(|(_, r)| r),
            Some(TimerReason::DelayedAck)
        );
    }

    #[test]
    fn legacy_segment_size_and_window_unit() {
        let legacy = ConnConfig {
            mss: crate::stream::consts::SEGMENT_SIZE_LEGACY,
            ..ConnConfig::default()
        };
        let mut a = dialer(legacy);
        a.handle_segment(t(15), seg(A, 1, 1, 2, b""));
        a.write(t(20), &[3u8; 10_000]).unwrap();
        let o = out(&mut a, t(20));
        let lens: Vec<usize> = o.iter().map(|s| s.payload.len()).collect();
        assert_eq!(lens, vec![4096, 4096], "peer window of 2 segments");
        a.handle_segment(t(30), seg(A, 1, 8193, 2, b""));
        let o = out(&mut a, t(30));
        assert_eq!(
            o.iter().map(|s| s.payload.len()).collect::<Vec<_>>(),
            vec![1808]
        );
    }

    fn probing() -> ConnConfig {
        ConnConfig {
            nodelay: true,
            pmtu_ceiling: MAX_ACCEPTED_SEGMENT,
            ..ConnConfig::default()
        }
    }

    /// Upward PMTU search (§5.5): with data waiting and nothing in flight
    /// the dialer sends a 4096-byte zero-padded duplicate ending at its
    /// oldest unacknowledged byte, then the data; the peer's pure ACK of
    /// exactly that byte raises the segment size for what follows.
    #[test]
    fn pmtu_probe_raises_the_segment_size_when_answered() {
        let mut a = dialer(probing());
        a.write(t(20), &[7u8; 3000]).unwrap();
        let o = out(&mut a, t(20));
        let lens: Vec<usize> = o.iter().map(|s| s.payload.len()).collect();
        assert_eq!(lens, vec![4096, 1152, 1152, 696]);
        assert_eq!(o[0].seq, Seq(1u32.wrapping_sub(4096)));
        assert!(o[0].payload.iter().all(|&b| b == 0));
        assert_eq!(o[1].seq, Seq(1));
        // The answer: ACK 1 with the window we knew (512).
        a.handle_segment(t(30), seg(A, 1, 1, 512, b""));
        assert_eq!(a.stats().pmtu_raises, 1);
        assert_eq!(a.stats().segment_size, 4096);
        assert_eq!(a.stats().dup_acks, 0, "the answer is no duplicate ACK");
        a.handle_segment(t(31), seg(A, 1, 3001, 512, b""));
        a.write(t(40), &[8u8; 9000]).unwrap();
        let lens: Vec<usize> = out(&mut a, t(40)).iter().map(|s| s.payload.len()).collect();
        assert_eq!(lens, vec![4096, 4096, 808], "search over: no more probes");
        assert_eq!(a.stats().pmtu_probes, 1);
        assert_eq!(a.stats().max_segment, 4096);
    }

    /// A probe nobody answers (a path that drops it, a peer that ignores
    /// it) is retried only after its deadline, at the next moment with
    /// nothing in flight; three losses at one size move the search down.
    #[test]
    fn unanswered_pmtu_probes_move_the_search_down() {
        let mut a = dialer(probing());
        let mut sizes = Vec::new();
        let mut ms = 20;
        let mut acked = 1u32;
        for _ in 0..6 {
            a.write(t(ms), &[1u8; 100]).unwrap();
            for s in out(&mut a, t(ms)) {
                if s.payload.len() > 100 {
                    sizes.push(s.payload.len());
                }
            }
            acked += 100;
            // The data is acknowledged (a new ACK number), the probe never.
            a.handle_segment(t(ms + 5), seg(A, 1, acked, 512, b""));
            ms += 1500;
        }
        assert_eq!(sizes, vec![4096, 4096, 4096, 2624, 2624, 2624]);
        assert_eq!(a.stats().segment_size, 1152);
        assert_eq!(a.stats().pmtu_raises, 0);
        // Before the deadline nothing is probed again.
        a.write(t(ms), &[1u8; 100]).unwrap();
        let o = out(&mut a, t(ms));
        assert_eq!(
            o.iter().map(|s| s.payload.len()).collect::<Vec<_>>(),
            vec![1888, 100]
        );
        a.handle_segment(t(ms + 5), seg(A, 1, acked + 100, 512, b""));
        a.write(t(ms + 10), &[1u8; 100]).unwrap();
        let o = out(&mut a, t(ms + 10));
        assert_eq!(
            o.iter().map(|s| s.payload.len()).collect::<Vec<_>>(),
            vec![100]
        );
    }

    /// The receiving side: a probe is a duplicate, acknowledged at once
    /// and never delivered.
    /// The probe and the first data arrive in one batch (the peer reads
    /// several datagrams before it writes): the probe still gets an ACK
    /// of its own, with the ACK number it found, ahead of the one for the
    /// data, so the prober recognises its answer (§5.5).
    #[test]
    fn a_probe_read_in_one_batch_with_data_still_gets_its_own_ack() {
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(20), seg(A, 1, 1, 512, &[7u8; 100]));
        out(&mut b, t(20));
        // The padded duplicate of bytes 1..101, then new bytes 101..201.
        b.handle_segment(t(30), seg(A, 1, 1, 512, &[0u8; 100]));
        b.handle_segment(t(30), seg(A, 101, 1, 512, &[8u8; 100]));
        let acks: Vec<u32> = out(&mut b, t(30)).iter().map(|s| s.ack.0).collect();
        assert_eq!(acks.first(), Some(&101), "{acks:?}");
        assert_eq!(acks.last(), Some(&201), "{acks:?}");
        // Without data in between, one ACK as before.
        b.handle_segment(t(40), seg(A, 1, 1, 512, &[0u8; 100]));
        let acks: Vec<u32> = out(&mut b, t(40)).iter().map(|s| s.ack.0).collect();
        assert_eq!(acks, vec![201]);
    }

    #[test]
    fn a_pmtu_probe_is_acknowledged_and_not_delivered() {
        let mut b = acceptor(ConnConfig::default());
        let probe = vec![0u8; 4096];
        b.handle_segment(t(10), seg(A, 1u32.wrapping_sub(4096), 1, 512, &probe));
        assert_eq!(out(&mut b, t(10)), vec![seg(A, 1, 1, 512, b"")]);
        assert_eq!(b.readable(), 0);
        assert_eq!(b.stats().bytes_received, 0);
    }

    #[test]
    fn window_gate_counts_peer_window_in_bytes_and_segments() {
        let mut a = dialer(nodelay());
        // Window 3: at most 3 un-ACKed segments, and bytes < 3 x 1152.
        a.handle_segment(t(15), seg(A, 1, 1, 3, b""));
        for _ in 0..5 {
            a.write(t(20), b"tiny").unwrap();
            out(&mut a, t(20));
        }
        assert_eq!(a.send.unacked_segments(), 3);
        // Cap of MAX_UNACKED_SEGMENTS (512) un-ACKed segments, even when
        // the peer window and the congestion window would allow more.
        let mut a = dialer(nodelay());
        // The peer allows 1000 segments; the congestion window allows
        // 40 960 one-byte segments.
        a.handle_segment(t(15), seg(A, 1, 1, 1000, b""));
        for _ in 0..600 {
            a.write(t(20), b"z").unwrap();
            out(&mut a, t(20));
        }
        assert_eq!(a.send.unacked_segments(), MAX_UNACKED_SEGMENTS);
        assert_eq!(MAX_UNACKED_SEGMENTS, 512);
    }

    #[test]
    fn writable_after_a_full_buffer_drains() {
        let mut a = dialer(ConnConfig {
            send_capacity: 4000,
            ..ConnConfig::default()
        });
        a.handle_segment(t(15), seg(A, 1, 1, 0, b""));
        assert_eq!(a.write(t(20), &[9u8; 5000]), Ok(4000));
        assert_eq!(a.write(t(20), &[9u8; 10]), Ok(0));
        assert!(out(&mut a, t(20)).is_empty(), "zero window");
        assert!(events(&mut a).is_empty());
        // The window opens; segments leave the buffer; the writer is told.
        a.handle_segment(t(30), seg(A, 1, 1, 8, b""));
        assert_eq!(out(&mut a, t(30)).len(), 4);
        assert_eq!(events(&mut a), vec![Event::Writable]);
        assert_eq!(a.write(t(31), &[9u8; 5000]), Ok(4000));
    }

    // ----- loss, SACK, retransmission --------------------------------------

    #[test]
    fn receiver_sacks_reference_loss_scenario() {
        let mut b = acceptor(ConnConfig::default());
        let d = [0x55u8; 1152];
        b.handle_segment(t(10), seg(A, 1, 1, 512, &d));
        assert_eq!(out(&mut b, t(10)), vec![seg(A, 1, 1153, 511, b"")]);
        b.handle_segment(t(11), seg(A, 2305, 1, 512, &d));
        let sack1 = [
            0x53, 0x41, 0x43, 0x4b, 0x01, 0, 0, 0x09, 0x01, 0, 0, 0x0d, 0x81,
        ];
        assert_eq!(out(&mut b, t(11)), vec![seg(A, 1, 1153, 511, &sack1)]);
        b.handle_segment(t(12), seg(A, 4609, 1, 512, &d));
        let wire = [
            0x53, 0x41, 0x43, 0x4b, 0x02, 0x00, 0x00, 0x09, 0x01, 0x00, 0x00, 0x0d, 0x81, 0x00,
            0x00, 0x12, 0x01, 0x00, 0x00, 0x16, 0x81,
        ];
        // The wire.md example shows window 510 (two segments unread); here
        // one delivered segment is unread.
        assert_eq!(out(&mut b, t(12)), vec![seg(A, 1, 1153, 511, &wire)]);
        assert_eq!(b.stats().sack_blocks_sent, 3);
    }

    fn sender_with_five_segments() -> Connection {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), &[1u8; 5 * 1152]).unwrap();
        let segs = out(&mut a, t(20));
        let seqs: Vec<u32> = segs.iter().map(|s| s.seq.0).collect();
        assert_eq!(seqs, vec![1, 1153, 2305, 3457, 4609]);
        a
    }

    #[test]
    fn fast_retransmit_on_third_duplicate_and_partial_ack() {
        let mut a = sender_with_five_segments();
        let sack = |blocks: &[(u32, u32)]| {
            let b: Vec<_> = blocks
                .iter()
                .map(|&(s, e)| sack::SackBlock::new(s, e))
                .collect();
            let mut buf = [0u8; 64];
            let n = sack::encode(&b, &mut buf).unwrap();
            buf[..n].to_vec()
        };
        a.handle_segment(t(30), seg(A, 1, 1153, 511, b""));
        a.handle_segment(t(31), seg(A, 1, 1153, 511, &sack(&[(2305, 3457)])));
        a.handle_segment(
            t(32),
            seg(A, 1, 1153, 511, &sack(&[(2305, 3457), (4609, 5761)])),
        );
        assert!(out(&mut a, t(32)).is_empty(), "two duplicates only");
        assert_eq!(a.stats().in_flight, 2 * 1152, "SACKed bytes leave flight");
        a.handle_segment(
            t(33),
            seg(A, 1, 1153, 511, &sack(&[(2305, 3457), (4609, 5761)])),
        );
        let rtx = out(&mut a, t(33));
        assert_eq!(rtx.len(), 1);
        assert_eq!((rtx[0].seq, rtx[0].payload.len()), (Seq(1153), 1152));
        let st = a.stats();
        assert_eq!(
            (st.dup_acks, st.fast_retransmits, st.retransmissions),
            (3, 1, 1)
        );
        assert_eq!(st.recovery, Some(RecoveryKind::Fast));
        assert_eq!(st.sack_blocks_received, 5);
        // Partial ACK: the next hole (3457), not the SACKed 2305, goes out.
        a.handle_segment(t(40), seg(A, 1, 3457, 511, &sack(&[(4609, 5761)])));
        let rtx = out(&mut a, t(40));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![3457]);
        // Full ACK ends recovery.
        a.handle_segment(t(50), seg(A, 1, 5761, 512, b""));
        assert_eq!(a.stats().recovery, None);
        assert_eq!(a.stats().in_flight, 0);
    }

    #[test]
    fn window_update_is_not_a_duplicate_ack() {
        let mut a = sender_with_five_segments();
        for (i, w) in [511u16, 510, 509, 508].iter().enumerate() {
            a.handle_segment(t(30 + i as u64), seg(A, 1, 1, *w, b""));
        }
        assert_eq!(a.stats().dup_acks, 0);
        assert!(out(&mut a, t(40)).is_empty());
    }

    #[test]
    fn rto_retransmits_with_backoff_and_gives_up_on_silence() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), b"data").unwrap();
        assert_eq!(out(&mut a, t(20)).len(), 1);
        let mut times = vec![];
        let mut now = t(20);
        while let Some((at, why)) = a.poll_timeout() {
            if why == TimerReason::Keepalive {
                break;
            }
            assert_eq!(why, TimerReason::Retransmit);
            now = at;
            a.handle_timeout(now);
            for s in out(&mut a, now) {
                if s.flags == Flags::RST {
                    times.push(u64::MAX);
                } else {
                    assert_eq!(s.payload, Bytes::from_static(b"data"));
                    times.push(now.as_nanos() / 1_000_000);
                }
            }
            if a.is_closed() {
                break;
            }
        }
        assert_eq!(times[0], 1020, "first RTO is 1 s");
        let gaps: Vec<u64> = times
            .windows(2)
            .filter(|w| w[1] != u64::MAX)
            .map(|w| w[1] - w[0])
            .collect();
        for g in gaps.windows(2) {
            assert!(g[1] >= g[0] || g[1] >= 10_000, "back-off grows: {gaps:?}");
        }
        assert_eq!(*times.last().unwrap(), u64::MAX, "ends with RST");
        let end = now.as_nanos() / 1_000_000;
        assert!((30_000..=42_000).contains(&end), "gave up at {end} ms");
        assert_eq!(
            events(&mut a).last(),
            Some(&Event::Reset(ResetReason::TimedOut))
        );
        assert!(a.stats().timeouts >= 4);
    }

    #[test]
    fn ack_progress_resets_backoff() {
        let mut a = dialer(nodelay());
        a.write(t(20), b"one").unwrap();
        out(&mut a, t(20));
        for _ in 0..2 {
            let (at, why) = a.poll_timeout().unwrap();
            assert_eq!(why, TimerReason::Retransmit);
            a.handle_timeout(at);
            assert_eq!(out(&mut a, at).len(), 1);
        }
        assert_eq!(a.stats().rto, Duration::from_secs(2), "capped back-off");
        a.handle_segment(t(3100), seg(A, 1, 4, 512, b""));
        assert_eq!(
            a.stats().rto,
            Duration::from_secs(1),
            "no sample yet: initial"
        );
        a.write(t(3200), b"two").unwrap();
        out(&mut a, t(3200));
        assert_eq!(a.poll_timeout().map(|(t, _)| t), Some(t(4200)));
    }

    // ----- close -------------------------------------------------------

    #[test]
    fn reference_close_sequence() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), b"hello").unwrap();
        out(&mut a, t(20));
        a.handle_segment(t(30), seg(A, 1, 6, 512, b""));
        a.close(t(40));
        assert_eq!(a.state(), State::FinWait);
        assert_eq!(out(&mut a, t(40)), vec![seg(Flags::FIN, 6, 0, 0, b"")]);

        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(25), seg(A, 1, 1, 512, b"hello"));
        out(&mut b, t(25));
        b.handle_segment(t(45), seg(Flags::FIN, 6, 0, 0, b""));
        assert_eq!(b.state(), State::TimeWait);
        assert_eq!(out(&mut b, t(45)), vec![seg(Flags::FIN | A, 1, 7, 0, b"")]);
        assert_eq!(b.write(t(46), b"late"), Err(StreamError::NotEstablished));
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf), Ok(5));
        assert_eq!(b.read(&mut buf), Ok(0), "EOF");

        a.handle_segment(t(50), seg(Flags::FIN | A, 1, 7, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
        assert_eq!(out(&mut a, t(50)), vec![seg(Flags::FIN | A, 7, 2, 0, b"")]);
        b.handle_segment(t(55), seg(Flags::FIN | A, 7, 2, 0, b""));
        assert!(
            out(&mut b, t(55)).is_empty(),
            "FIN+ACK in TIME_WAIT not answered"
        );
        // Both linger 10 s, then close.
        assert_eq!(a.poll_timeout(), Some((t(10_050), TimerReason::TimeWait)));
        a.handle_timeout(t(10_050));
        assert!(a.is_closed());
        assert_eq!(events(&mut a).last(), Some(&Event::Closed));
    }

    #[test]
    fn lost_fin_is_retransmitted_until_acknowledged() {
        let mut a = dialer(ConnConfig::default());
        a.close(t(20));
        assert_eq!(out(&mut a, t(20)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        // Lost. The retransmission timer brings it back, twice.
        assert_eq!(a.poll_timeout(), Some((t(1020), TimerReason::Retransmit)));
        a.handle_timeout(t(1020));
        assert_eq!(out(&mut a, t(1020)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        let (at, _) = a.poll_timeout().unwrap();
        a.handle_timeout(at);
        assert_eq!(out(&mut a, at), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        a.handle_segment(
            at + Duration::from_millis(5),
            seg(Flags::FIN | A, 1, 2, 0, b""),
        );
        assert_eq!(a.state(), State::TimeWait);
        assert_eq!(a.stats().retransmissions, 2);
        let later = at + Duration::from_millis(5);
        assert_eq!(out(&mut a, later), vec![seg(Flags::FIN | A, 2, 2, 0, b"")]);
        assert_eq!(
            a.poll_timeout().map(|(_, r)| r),
            Some(TimerReason::TimeWait)
        );
    }

    #[test]
    fn retransmitted_fin_in_time_wait_is_answered_again() {
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(10), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(out(&mut b, t(10)), vec![seg(Flags::FIN | A, 1, 2, 0, b"")]);
        // Our FIN+ACK was lost; the peer resends its FIN.
        b.handle_segment(t(1010), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(
            out(&mut b, t(1010)),
            vec![seg(Flags::FIN | A, 1, 2, 0, b"")]
        );
    }

    #[test]
    fn time_wait_outlasts_a_partition_while_its_fin_is_unacknowledged() {
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(10), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(out(&mut b, t(10)), vec![seg(Flags::FIN | A, 1, 2, 0, b"")]);
        // That reply (our FIN) is lost in a partition and the peer's
        // retransmitted FINs too: B must still be there when it lifts.
        let mut now = t(10);
        while now < t(25_000) {
            let (at, why) = b.poll_timeout().expect("lingering");
            assert_eq!(why, TimerReason::TimeWait);
            now = at.min(t(25_000));
            b.handle_timeout(now);
            assert_eq!(b.state(), State::TimeWait, "closed at {now:?}");
        }
        b.handle_segment(t(25_000), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(
            out(&mut b, t(25_000)),
            vec![seg(Flags::FIN | A, 1, 2, 0, b"")]
        );
        // The peer's FIN+ACK acknowledges our FIN: the ordinary linger.
        b.handle_segment(t(25_050), seg(Flags::FIN | A, 2, 2, 0, b""));
        assert!(out(&mut b, t(25_050)).is_empty());
        assert_eq!(b.poll_timeout(), Some((t(35_000), TimerReason::TimeWait)));
        b.handle_timeout(t(35_000));
        assert!(b.is_closed());
        assert_eq!(events(&mut b).last(), Some(&Event::Closed));
    }

    #[test]
    fn unacknowledged_time_wait_ends_after_a_user_timeout_of_silence() {
        let cfg = ConnConfig {
            user_timeout: Duration::from_secs(12),
            ..ConnConfig::default()
        };
        let mut b = acceptor(cfg);
        b.handle_segment(t(10), seg(Flags::FIN, 1, 0, 0, b""));
        out(&mut b, t(10));
        let mut now = t(10);
        while !b.is_closed() {
            now = b.poll_timeout().expect("lingering").0;
            b.handle_timeout(now);
        }
        assert_eq!(now, t(12_010), "silent peer: user timeout after last heard");
        assert_eq!(events(&mut b).last(), Some(&Event::Closed));
    }

    #[test]
    fn data_retransmitted_into_time_wait_gets_the_fin_ack_again() {
        let mut b = acceptor(nodelay());
        b.handle_segment(t(10), seg(A, 1, 1, 512, b"abc"));
        out(&mut b, t(10));
        b.handle_segment(t(12), seg(Flags::FIN, 4, 0, 0, b""));
        assert_eq!(out(&mut b, t(12)), vec![seg(Flags::FIN | A, 1, 5, 0, b"")]);
        // That FIN+ACK was lost; the peer retransmits its data.
        b.handle_segment(t(1012), seg(A, 1, 1, 512, b"abc"));
        assert_eq!(
            out(&mut b, t(1012)),
            vec![seg(Flags::FIN | A, 1, 5, 0, b"")]
        );
        // Pure ACKs in TIME_WAIT stay unanswered.
        b.handle_segment(t(1013), seg(A, 5, 2, 512, b""));
        assert!(out(&mut b, t(1013)).is_empty());
    }

    #[test]
    fn fin_waits_for_missing_data() {
        let mut b = acceptor(nodelay());
        b.handle_segment(t(10), seg(A, 1, 1, 512, b"abc"));
        out(&mut b, t(10));
        // "def" at 4 is lost; "ghi" and the FIN arrive.
        b.handle_segment(t(11), seg(A, 7, 1, 512, b"ghi"));
        out(&mut b, t(11));
        b.handle_segment(t(12), seg(Flags::FIN, 10, 0, 0, b""));
        assert_eq!(b.state(), State::Established, "FIN not yet effective");
        let dup = out(&mut b, t(12));
        assert_eq!(dup.len(), 1);
        assert_eq!((dup[0].flags, dup[0].ack), (A, Seq(4)), "asks for the hole");
        b.handle_segment(t(20), seg(A, 4, 1, 512, b"def"));
        assert_eq!(b.state(), State::TimeWait);
        assert_eq!(out(&mut b, t(20)), vec![seg(Flags::FIN | A, 1, 11, 0, b"")]);
        let mut buf = [0u8; 32];
        assert_eq!(b.read(&mut buf), Ok(9));
        assert_eq!(&buf[..9], b"abcdefghi");
        assert_eq!(b.read(&mut buf), Ok(0));
    }

    #[test]
    fn simultaneous_close() {
        let mut a = dialer(ConnConfig::default());
        let mut b = acceptor(ConnConfig::default());
        a.close(t(20));
        b.close(t(20));
        let fa = out(&mut a, t(20));
        let fb = out(&mut b, t(20));
        assert_eq!(fa, vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        assert_eq!(fb, vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        a.handle_segment(t(25), fb[0].clone());
        b.handle_segment(t(25), fa[0].clone());
        let ra = out(&mut a, t(25));
        let rb = out(&mut b, t(25));
        assert_eq!(ra, vec![seg(Flags::FIN | A, 2, 2, 0, b"")]);
        assert_eq!(rb, vec![seg(Flags::FIN | A, 2, 2, 0, b"")]);
        a.handle_segment(t(30), rb[0].clone());
        b.handle_segment(t(30), ra[0].clone());
        assert!(out(&mut a, t(30)).is_empty());
        assert!(out(&mut b, t(30)).is_empty());
        for c in [&mut a, &mut b] {
            assert_eq!(c.state(), State::TimeWait);
            assert_eq!(
                c.poll_timeout().map(|(_, r)| r),
                Some(TimerReason::TimeWait)
            );
            c.handle_timeout(t(10_025));
            assert!(c.is_closed());
        }
    }

    #[test]
    fn data_after_local_close_is_dropped_unacknowledged() {
        let mut a = dialer(ConnConfig::default());
        a.close(t(20));
        out(&mut a, t(20));
        a.handle_segment(t(25), seg(A, 1, 1, 512, b"late"));
        assert!(out(&mut a, t(25)).is_empty());
    }

    #[test]
    fn fin_to_a_dead_peer_closes_quietly() {
        let mut a = dialer(ConnConfig::default());
        a.close(t(20));
        out(&mut a, t(20));
        let mut fins = 0;
        while let Some((at, _)) = a.poll_timeout() {
            a.handle_timeout(at);
            for s in out(&mut a, at) {
                assert_eq!(s.flags, Flags::FIN, "no RST: nothing was lost");
                fins += 1;
            }
        }
        assert!(fins >= 8);
        assert!(a.is_closed());
        assert_eq!(events(&mut a), vec![Event::Closed]);
    }

    #[test]
    fn shutdown_to_a_dead_peer_is_a_reset_for_the_reader() {
        // Unlike `close`, `shutdown` still waits for the peer's stream: if
        // the peer vanishes before its FIN, that stream was cut short.
        let mut a = dialer(ConnConfig::default());
        a.shutdown(t(20));
        assert_eq!(out(&mut a, t(20)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        let mut last = Vec::new();
        while let Some((at, _)) = a.poll_timeout() {
            a.handle_timeout(at);
            last = out(&mut a, at);
        }
        assert_eq!(last, vec![seg(Flags::RST, 0, 0, 0, b"")]);
        assert_eq!(events(&mut a), vec![Event::Reset(ResetReason::TimedOut)]);
        let mut buf = [0u8; 4];
        assert_eq!(a.read(&mut buf), Err(StreamError::Reset));
    }

    #[test]
    fn peer_fin_before_our_queued_data_and_fin_does_not_cut_our_stream() {
        // Found by the stream fuzz body: we shut down while data still
        // waited for the window; the peer's FIN arrived first. Our FIN+ACK
        // reply used to claim our stream ended at snd_nxt (before the
        // queued data), the data and our FIN were never sent, and TIME_WAIT
        // closed cleanly: the peer read a short stream as complete.
        let mut a = dialer(nodelay());
        a.handle_segment(t(15), seg(A, 1, 1, 1, b""));
        a.write(t(20), b"abcdef").unwrap();
        assert_eq!(out(&mut a, t(20)), vec![seg(A, 1, 1, 512, b"abcdef")]);
        a.write(t(21), b"ghi").unwrap();
        a.shutdown(t(22));
        assert!(out(&mut a, t(22)).is_empty(), "window of one segment");
        // The peer shut down too: its FIN.
        a.handle_segment(t(30), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
        assert!(
            out(&mut a, t(30)).is_empty(),
            "no FIN+ACK (it would end our stream at 7) while data waits"
        );
        // The peer (still reading after its shutdown) acknowledges "abcdef".
        a.handle_segment(t(40), seg(A, 2, 7, 1, b""));
        assert_eq!(
            out(&mut a, t(40)),
            vec![
                seg(A, 7, 2, 512, b"ghi"),
                seg(Flags::FIN, 10, 0, 0, b""),
                seg(Flags::FIN | A, 11, 2, 0, b""),
            ]
        );
        // TIME_WAIT does not end while "ghi" is unacknowledged.
        a.handle_timeout(t(10_030));
        assert_eq!(a.state(), State::TimeWait);
        out(&mut a, t(10_030));
        a.handle_segment(t(10_040), seg(Flags::FIN | A, 2, 11, 0, b""));
        while let Some((at, _)) = a.poll_timeout() {
            a.handle_timeout(at);
            assert!(out(&mut a, at).iter().all(|s| s.flags != Flags::RST));
        }
        assert!(a.is_closed());
        assert!(events(&mut a).ends_with(&[Event::Closed]));
        let mut buf = [0u8; 4];
        assert_eq!(a.read(&mut buf), Ok(0));
    }

    #[test]
    fn written_data_is_still_delivered_after_the_peers_fin() {
        // Found by the stream fuzz body: the peer shut down while our data
        // was unacknowledged. We used to abandon it and close cleanly,
        // while the peer, still reading, got a short stream.
        let mut b = acceptor(nodelay());
        b.write(t(5), b"abc").unwrap();
        let _lost = out(&mut b, t(5));
        b.handle_segment(t(10), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(b.state(), State::TimeWait);
        assert_eq!(b.write(t(10), b"more"), Err(StreamError::NotEstablished));
        // Our FIN follows the data; the FIN+ACK reply follows our FIN.
        assert_eq!(
            out(&mut b, t(10)),
            vec![
                seg(Flags::FIN, 4, 0, 0, b""),
                seg(Flags::FIN | A, 5, 2, 0, b"")
            ]
        );
        let (at, why) = b.poll_timeout().unwrap();
        assert_eq!(why, TimerReason::Retransmit);
        b.handle_timeout(at);
        assert_eq!(out(&mut b, at), vec![seg(A, 1, 2, 512, b"abc")]);
        // The peer read it and acknowledges our FIN with its FIN+ACK.
        b.handle_segment(at, seg(Flags::FIN | A, 2, 5, 0, b""));
        while let Some((at, _)) = b.poll_timeout() {
            b.handle_timeout(at);
            assert!(out(&mut b, at).iter().all(|s| s.flags != Flags::RST));
        }
        assert!(b.is_closed());
        let ev = events(&mut b);
        assert!(ev.ends_with(&[Event::Closed]), "{ev:?}");
        assert!(!ev.iter().any(|e| matches!(e, Event::Reset(_))));
    }

    #[test]
    fn fin_ack_reply_overtaking_the_peers_fin_still_ends_the_stream() {
        // The peer closed first (FIN at 4) and answered our FIN with its
        // FIN+ACK (seq 5 = FIN + 1). The FIN was lost, the reply arrived:
        // the stream seemed to miss a byte at 4, the retransmitted FIN was
        // ignored as a duplicate, and we ended with a spurious reset.
        let mut a = dialer(ConnConfig::default());
        a.shutdown(t(20));
        assert_eq!(out(&mut a, t(20)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        a.handle_segment(t(30), seg(A, 1, 1, 512, b"abc"));
        out(&mut a, t(30));
        a.handle_segment(t(40), seg(Flags::FIN | A, 5, 2, 0, b""));
        assert_eq!(a.state(), State::FinWait, "byte 4 looks missing");
        out(&mut a, t(40));
        a.handle_segment(t(1040), seg(Flags::FIN, 4, 0, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
        assert_eq!(
            out(&mut a, t(1040)),
            vec![seg(Flags::FIN | A, 2, 5, 0, b"")]
        );
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf), Ok(3));
        assert_eq!(a.read(&mut buf), Ok(0));
    }

    #[test]
    fn data_after_the_fin_of_a_peer_that_closed_ends_cleanly() {
        // The peer used `close` (it reads no more): our data outstanding at
        // its FIN is discarded there, and its reply to our FIN acknowledges
        // it as a whole; no retransmission loop, no reset.
        let mut a = dialer(nodelay());
        let mut b = acceptor(nodelay());
        b.write(t(5), b"xyz").unwrap();
        let _lost = out(&mut b, t(5));
        a.close(t(6));
        let fin_a = out(&mut a, t(6));
        assert_eq!(fin_a, vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        b.handle_segment(t(7), fin_a[0].clone());
        let from_b = out(&mut b, t(7));
        assert_eq!(
            from_b,
            vec![
                seg(Flags::FIN, 4, 0, 0, b""),
                seg(Flags::FIN | A, 5, 2, 0, b"")
            ]
        );
        for s in from_b {
            a.handle_segment(t(8), s);
        }
        let from_a = out(&mut a, t(8));
        assert_eq!(from_a, vec![seg(Flags::FIN | A, 2, 5, 0, b"")]);
        b.handle_segment(t(9), from_a[0].clone());
        assert_eq!(
            b.poll_timeout().map(|(_, r)| r),
            Some(TimerReason::TimeWait)
        );
        let (at, _) = b.poll_timeout().unwrap();
        b.handle_timeout(at);
        assert!(b.is_closed());
        assert_eq!(events(&mut b), vec![Event::Readable, Event::Closed]);
    }

    #[test]
    fn shutdown_keeps_receiving_until_peer_fin() {
        let mut a = dialer(ConnConfig::default());
        a.shutdown(t(20));
        assert_eq!(out(&mut a, t(20)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        // The peer still sends data, then acknowledges our FIN with its own.
        a.handle_segment(t(30), seg(A, 1, 2, 512, b"tail"));
        assert_eq!(out(&mut a, t(30)), vec![seg(A, 2, 5, 511, b"")]);
        a.handle_segment(t(40), seg(Flags::FIN | A, 5, 2, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
        assert_eq!(out(&mut a, t(40)), vec![seg(Flags::FIN | A, 2, 6, 0, b"")]);
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf), Ok(4));
        assert_eq!(a.read(&mut buf), Ok(0));
    }

    #[test]
    fn lost_synack_is_recovered_by_the_retransmitted_syn() {
        let mut a = Connection::connect(t(0), nodelay(), 0);
        let syn = out(&mut a, t(0)).remove(0);
        let mut b = Connection::accept(t(10), nodelay(), &syn, 0);
        let _lost = out(&mut b, t(10));
        // The acceptor is established and already sends data.
        b.write(t(11), b"early").unwrap();
        let early = out(&mut b, t(11));
        a.handle_segment(t(21), early[0].clone());
        assert_eq!(a.state(), State::SynSent, "data before SYN-ACK ignored");
        a.handle_timeout(t(250));
        let syn2 = out(&mut a, t(250));
        b.handle_segment(t(260), syn2[0].clone());
        let synack = out(&mut b, t(260));
        assert_eq!(synack, vec![seg(Flags::SYN | A, 0, 1, 512, b"")]);
        a.handle_segment(t(270), synack[0].clone());
        assert_eq!(a.state(), State::Established);
        // The early data comes back on the acceptor's retransmission timer.
        let (at, why) = b.poll_timeout().unwrap();
        assert_eq!((at, why), (t(1011), TimerReason::Retransmit));
        b.handle_timeout(at);
        let rtx = out(&mut b, at);
        a.handle_segment(at, rtx[0].clone());
        let mut buf = [0u8; 8];
        assert_eq!(a.read(&mut buf), Ok(5));
        assert_eq!(&buf[..5], b"early");
    }

    #[test]
    fn lost_synack_is_resent_after_the_acceptor_closed() {
        // Found by the stream fuzz body: the SYN-ACK was lost and the
        // acceptor shut down at once. Retransmitted SYNs were ignored
        // outside ESTABLISHED, so the dial failed and the acceptor timed out
        // on a healthy network.
        let mut b = acceptor(ConnConfig::default());
        b.shutdown(t(5));
        assert_eq!(out(&mut b, t(5)), vec![seg(Flags::FIN, 1, 0, 0, b"")]);
        b.handle_segment(t(250), seg(Flags::SYN, 0, 0, 512, b""));
        assert_eq!(
            out(&mut b, t(250)),
            vec![seg(Flags::SYN | A, 0, 1, 512, b"")]
        );
        let mut a = Connection::connect(t(0), ConnConfig::default(), 0);
        out(&mut a, t(0));
        a.handle_segment(t(260), seg(Flags::SYN | A, 0, 1, 512, b""));
        assert_eq!(a.state(), State::Established);
        // The FIN, retransmitted, now ends the connection normally.
        a.handle_segment(t(1005), seg(Flags::FIN, 1, 0, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
    }

    #[test]
    fn held_syn_retries_do_not_count() {
        let mut c = Connection::connect(t(0), ConnConfig::default(), 0);
        out(&mut c, t(0));
        c.hold_syn_retries(true);
        for ms in [250, 500, 750, 1000] {
            c.handle_timeout(t(ms));
            assert!(out(&mut c, t(ms)).is_empty(), "held: no copies");
        }
        c.hold_syn_retries(false);
        c.handle_timeout(t(1250));
        assert_eq!(out(&mut c, t(1250)).len(), 1);
        // First real retry: the next interval is 500 ms.
        assert_eq!(
            c.poll_timeout(),
            Some((t(1750), TimerReason::SynRetransmit))
        );
    }

    fn sack_payload(blocks: &[(u32, u32)]) -> Vec<u8> {
        let b: Vec<_> = blocks
            .iter()
            .map(|&(s, e)| sack::SackBlock::new(s, e))
            .collect();
        let mut p = [0u8; 64];
        let n = sack::encode(&b, &mut p).unwrap();
        p[..n].to_vec()
    }

    /// A sender that has seen one spurious retransmission: the first of
    /// five segments sent at 50 ms arrived late, after SACK of the other
    /// four had triggered its fast retransmit at 70 ms, and its ACK came
    /// 2 ms after that retransmission (the smallest RTT is 20 ms). Then it
    /// sends five more segments at 80 ms (seq 6913..12673).
    fn sender_that_saw_reordering() -> Connection {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), &[1u8; 1152]).unwrap();
        assert_eq!(out(&mut a, t(20)).len(), 1);
        a.handle_segment(t(40), seg(A, 1, 1153, 512, b""));
        a.write(t(50), &[2u8; 5 * 1152]).unwrap();
        assert_eq!(out(&mut a, t(50)).len(), 5);
        a.handle_segment(t(70), seg(A, 1, 1153, 512, &sack_payload(&[(2305, 6913)])));
        let rtx = out(&mut a, t(70));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![1153]);
        assert_eq!(a.stats().spurious_retransmits, 0);
        // The late original fills the hole: too soon to answer the repair.
        a.handle_segment(t(72), seg(A, 1, 6913, 512, b""));
        assert_eq!(a.stats().spurious_retransmits, 1);
        assert_eq!(a.stats().recovery, None);
        a.write(t(80), &[3u8; 5 * 1152]).unwrap();
        let sent = out(&mut a, t(80));
        assert_eq!(
            sent.iter().map(|s| s.seq.0).collect::<Vec<_>>(),
            vec![6913, 8065, 9217, 10369, 11521]
        );
        a
    }

    #[test]
    fn after_reordering_sack_alone_does_not_retransmit() {
        let mut a = sender_that_saw_reordering();
        let cwnd = a.stats().cwnd;
        // Four later segments SACKed, 6913 not yet: with reordering seen,
        // it is only lost once the reordering window (a quarter of the
        // smallest RTT, 5 ms) has passed beyond the later segments' RTT.
        let sack = sack_payload(&[(8065, 12673)]);
        for i in 0..4 {
            a.handle_segment(t(100), seg(A, 1, 6913, 512, &sack));
            assert!(out(&mut a, t(100)).is_empty(), "duplicate {i}");
        }
        assert_eq!(a.stats().retransmissions, 1);
        assert_eq!(a.stats().recovery, None);
        assert_eq!(
            a.poll_timeout(),
            Some((t(105), TimerReason::Retransmit)),
            "loss detection looks again when the window has passed"
        );
        // The original arrives in time: nothing is resent, no window cut.
        a.handle_segment(t(103), seg(A, 1, 12673, 512, b""));
        a.handle_timeout(t(105));
        assert!(out(&mut a, t(105)).is_empty());
        let st = a.stats();
        assert_eq!((st.retransmissions, st.fast_retransmits), (1, 1));
        assert_eq!(st.recovery, None);
        assert!(st.cwnd >= cwnd, "no reduction for reordering");
    }

    #[test]
    fn after_reordering_real_loss_is_still_repaired_within_the_window() {
        let mut a = sender_that_saw_reordering();
        let sack = sack_payload(&[(8065, 12673)]);
        a.handle_segment(t(100), seg(A, 1, 6913, 512, &sack));
        assert!(out(&mut a, t(100)).is_empty());
        // Nothing more arrives: 6913 is lost at 80 + 20 + 5 ms, long before
        // the retransmission timeout (at least 200 ms).
        a.handle_timeout(t(104));
        assert!(out(&mut a, t(104)).is_empty());
        a.handle_timeout(t(105));
        let rtx = out(&mut a, t(105));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![6913]);
        let st = a.stats();
        assert_eq!(st.recovery, Some(RecoveryKind::Fast));
        assert_eq!((st.fast_retransmits, st.timeouts), (2, 0));
        // Its repair is acknowledged a round trip later: recovery ends.
        a.handle_segment(t(125), seg(A, 1, 12673, 512, b""));
        assert_eq!(a.stats().recovery, None);
        assert_eq!(a.stats().spurious_retransmits, 1);
    }

    #[test]
    fn without_reordering_sack_loss_is_detected_at_once() {
        // Same pattern as above on a sender that never saw reordering: the
        // SACK of three later segments retransmits at once (RFC 6675 style).
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), &[1u8; 1152]).unwrap();
        out(&mut a, t(20));
        a.handle_segment(t(40), seg(A, 1, 1153, 512, b""));
        a.write(t(50), &[2u8; 5 * 1152]).unwrap();
        out(&mut a, t(50));
        a.handle_segment(t(70), seg(A, 1, 1153, 512, &sack_payload(&[(2305, 6913)])));
        let rtx = out(&mut a, t(70));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![1153]);
        // Its repair is answered a full RTT later: not spurious.
        a.handle_segment(t(90), seg(A, 1, 6913, 512, b""));
        assert_eq!(a.stats().spurious_retransmits, 0);
    }

    #[test]
    fn partial_ack_does_not_resend_a_segment_still_in_flight() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), &[1u8; 1152]).unwrap();
        out(&mut a, t(20));
        a.handle_segment(t(40), seg(A, 1, 1153, 512, b""));
        // 1153 and 3457 lost; 2305 and 4609 arrive.
        a.write(t(50), &[2u8; 4 * 1152]).unwrap();
        out(&mut a, t(50));
        a.handle_segment(t(70), seg(A, 1, 1153, 512, &sack_payload(&[(2305, 3457)])));
        a.handle_segment(
            t(70),
            seg(
                A,
                1,
                1153,
                512,
                &sack_payload(&[(2305, 3457), (4609, 5761)]),
            ),
        );
        a.handle_segment(
            t(70),
            seg(
                A,
                1,
                1153,
                512,
                &sack_payload(&[(2305, 3457), (4609, 5761)]),
            ),
        );
        let rtx = out(&mut a, t(70));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![1153]);
        // The repair's ACK is partial: 3457, below the SACKed 4609 and sent
        // 40 ms ago, is proven missing and resent.
        a.handle_segment(t(90), seg(A, 1, 3457, 512, &sack_payload(&[(4609, 5761)])));
        let rtx = out(&mut a, t(90));
        assert_eq!(rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(), vec![3457]);
        // New data sent during recovery, then a partial ACK up to it: the
        // next segment has nothing SACKed above it and is not resent.
        a.write(t(91), &[3u8; 2 * 1152]).unwrap();
        let new: Vec<u32> = out(&mut a, t(91)).iter().map(|s| s.seq.0).collect();
        assert_eq!(new, vec![5761, 6913]);
        a.handle_segment(t(100), seg(A, 1, 5761, 512, b""));
        assert!(out(&mut a, t(100)).is_empty());
        assert_eq!(a.stats().retransmissions, 2);
    }

    #[test]
    fn window_from_a_reordered_older_ack_is_ignored() {
        let mut a = dialer(nodelay());
        a.write(t(20), &[1u8; 3 * 1152]).unwrap();
        assert_eq!(out(&mut a, t(20)).len(), 3);
        // The peer acknowledges two segments and allows one more.
        a.handle_segment(t(30), seg(A, 1, 2305, 1, b""));
        // An older ACK overtaken on the way offers 100: stale.
        a.handle_segment(t(31), seg(A, 1, 1153, 100, b""));
        a.write(t(32), &[2u8; 1152]).unwrap();
        assert!(out(&mut a, t(32)).is_empty(), "one segment outstanding");
        assert_eq!(a.send.unacked_segments(), 1);
        a.handle_segment(t(40), seg(A, 1, 3457, 2, b""));
        assert_eq!(out(&mut a, t(40)).len(), 1);
    }

    #[test]
    fn sack_alone_triggers_early_fast_retransmit() {
        let mut a = sender_with_five_segments();
        let b = [sack::SackBlock::new(2305, 5761)];
        let mut p = [0u8; 32];
        let n = sack::encode(&b, &mut p).unwrap();
        a.handle_segment(t(30), seg(A, 1, 1, 511, &p[..n]));
        let rtx = out(&mut a, t(30));
        // The SACK count resends the first hole; the time rule the second
        // too (sent with the SACKed ones, an RTT ago: §7.3.2).
        assert_eq!(
            rtx.iter().map(|s| s.seq.0).collect::<Vec<_>>(),
            vec![1, 1153]
        );
        assert_eq!(a.stats().fast_retransmits, 1);
        assert_eq!(a.stats().recovery, Some(RecoveryKind::Fast));
    }

    /// The last two of five segments are lost and nothing more is
    /// written: no later segment arrives to reveal the loss. A tail loss
    /// probe (§7.3.3) resends the last one two SRTTs after the ACK, the
    /// peer's SACK for it proves the other one lost, and both are repaired
    /// without waiting for the 200 ms retransmission timeout.
    #[test]
    fn tail_loss_is_probed_long_before_the_rto() {
        let mut a = sender_with_five_segments();
        // Segments 1..3 arrive (an RTT sample of 10 ms); 3457 and 4609 not.
        a.handle_segment(t(30), seg(A, 1, 3457, 512, b""));
        assert!(out(&mut a, t(30)).is_empty());
        let (at, why) = a.poll_timeout().unwrap();
        assert_eq!(why, TimerReason::Retransmit);
        assert!(at <= t(60), "probe at {at:?}, not the RTO");
        a.handle_timeout(at);
        let probe = out(&mut a, at);
        assert_eq!(
            probe.iter().map(|s| s.seq.0).collect::<Vec<_>>(),
            vec![4609],
            "the last segment is the probe"
        );
        assert_eq!(a.stats().tail_probes, 1);
        // The peer SACKs the probe: the time rule finds 3457 lost.
        let b = [sack::SackBlock::new(4609, 5761)];
        let mut p = [0u8; 32];
        let n = sack::encode(&b, &mut p).unwrap();
        let mut now = at + Duration::from_millis(10);
        a.handle_segment(now, seg(A, 1, 3457, 512, &p[..n]));
        let mut resent = out(&mut a, now);
        while resent.is_empty() {
            let (next, _) = a.poll_timeout().unwrap();
            assert!(next < t(100), "repair at {next:?}");
            now = next;
            a.handle_timeout(now);
            resent = out(&mut a, now);
        }
        assert_eq!(
            resent.iter().map(|s| s.seq.0).collect::<Vec<_>>(),
            vec![3457]
        );
        a.handle_segment(now + Duration::from_millis(10), seg(A, 1, 5761, 512, b""));
        assert!(!a.send.has_unacked());
        assert_eq!(a.stats().timeouts, 0);
    }

    /// Unanswered probes back off (each timeout twice the last) and stop
    /// after three; then only the RTO is left.
    #[test]
    fn unanswered_tail_probes_back_off_then_the_rto_takes_over() {
        let mut a = sender_with_five_segments();
        a.handle_segment(t(30), seg(A, 1, 3457, 512, b""));
        out(&mut a, t(30));
        let mut gaps = vec![];
        let mut last = t(30);
        loop {
            let (at, _) = a.poll_timeout().unwrap();
            a.handle_timeout(at);
            out(&mut a, at);
            if a.stats().timeouts > 0 {
                break;
            }
            gaps.push(at.saturating_duration_since(last).as_millis());
            last = at;
        }
        assert_eq!(a.stats().tail_probes, 3);
        assert_eq!(gaps.len(), 3, "{gaps:?}");
        assert!(gaps[1] == 2 * gaps[0] && gaps[2] == 2 * gaps[1], "{gaps:?}");
    }

    #[test]
    fn several_holes_are_repaired_without_waiting_for_partial_acks() {
        let mut a = dialer(ConnConfig::default());
        a.write(t(20), &[1u8; 8 * 1152]).unwrap();
        assert_eq!(out(&mut a, t(20)).len(), 8);
        let enc = |blocks: &[(u32, u32)]| {
            let b: Vec<_> = blocks
                .iter()
                .map(|&(s, e)| sack::SackBlock::new(s, e))
                .collect();
            let mut p = [0u8; 64];
            let n = sack::encode(&b, &mut p).unwrap();
            p[..n].to_vec()
        };
        // Segments at 1153 and 3457 lost; the rest arrive one by one.
        a.handle_segment(t(40), seg(A, 1, 1153, 512, b""));
        a.handle_segment(t(41), seg(A, 1, 1153, 512, &enc(&[(2305, 3457)])));
        a.handle_segment(
            t(42),
            seg(A, 1, 1153, 512, &enc(&[(2305, 3457), (4609, 5761)])),
        );
        assert!(out(&mut a, t(42)).is_empty());
        a.handle_segment(
            t(43),
            seg(A, 1, 1153, 512, &enc(&[(2305, 3457), (4609, 6913)])),
        );
        let first = out(&mut a, t(43));
        assert_eq!(
            first.iter().map(|s| s.seq.0).collect::<Vec<_>>(),
            vec![1153]
        );
        // The next SACK reveals nothing new below what was already resent
        // except the hole at 3457, which goes out at once.
        a.handle_segment(
            t(44),
            seg(A, 1, 1153, 512, &enc(&[(2305, 3457), (4609, 8065)])),
        );
        let second = out(&mut a, t(44));
        assert!(second.iter().any(|s| s.seq.0 == 3457), "{second:?}");
        assert!(
            !second.iter().any(|s| s.seq.0 == 1153),
            "no duplicate repair"
        );
    }

    // ----- windows, probes, keepalive ------------------------------------

    #[test]
    fn zero_window_probing_with_backoff_and_reopen() {
        let mut a = dialer(nodelay());
        a.handle_segment(t(15), seg(A, 1, 1, 0, b""));
        a.write(t(20), b"blocked").unwrap();
        assert!(out(&mut a, t(20)).is_empty(), "zero window: nothing sent");
        let mut probes = vec![];
        for _ in 0..4 {
            let (at, why) = a.poll_timeout().unwrap();
            assert_eq!(why, TimerReason::ZeroWindowProbe);
            a.handle_timeout(at);
            let o = out(&mut a, at);
            assert_eq!(o, vec![seg(A, 0, 1, 512, b"")], "probe: seq one below");
            probes.push(at.as_nanos() / 1_000_000);
        }
        assert_eq!(probes, vec![520, 1520, 3520, 7520]);
        // The peer answers with an open window: data flows.
        a.handle_segment(t(7530), seg(A, 1, 1, 4, b""));
        assert_eq!(out(&mut a, t(7530)), vec![seg(A, 1, 1, 512, b"blocked")]);
    }

    /// Runs a and b with instant delivery until `until`, reading on b only
    /// from `read_from` on; returns what b read.
    fn run_pair(
        a: &mut Connection,
        b: &mut Connection,
        until: Instant,
        read_from: Instant,
    ) -> Vec<u8> {
        let mut got = vec![];
        let mut now = t(0);
        let mut buf = [0u8; 4096];
        loop {
            if now >= read_from {
                while let Ok(n) = b.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            }
            loop {
                let sa = out(a, now);
                let sb = out(b, now);
                if sa.is_empty() && sb.is_empty() {
                    break;
                }
                sa.into_iter().for_each(|s| b.handle_segment(now, s));
                sb.into_iter().for_each(|s| a.handle_segment(now, s));
            }
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .map(|(t, _)| t)
                .chain((now < read_from).then_some(read_from))
                .min();
            match next {
                Some(n) if n <= until => now = n.max(now),
                _ => return got,
            }
            a.handle_timeout(now);
            b.handle_timeout(now);
        }
    }

    #[test]
    fn zero_window_with_data_in_flight_persists_while_peer_answers() {
        let mut a = dialer(ConnConfig::default());
        let mut b = Connection::accept(
            t(0),
            ConnConfig {
                recv: RecvConfig {
                    queue_segments: 4,
                    ooo_segments: 4,
                },
                ..ConnConfig::default()
            },
            &seg(Flags::SYN, 0, 0, 512, b""),
            0,
        );
        out(&mut b, t(0));
        b.handle_segment(t(10), seg(A, 1, 1, 512, b""));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        assert_eq!(a.write(t(20), &data), Ok(100_000));
        // b's application does not read for 200 s.
        let got = run_pair(&mut a, &mut b, t(400_000), t(200_000));
        assert!(!a.is_closed(), "{:?}", events(&mut a));
        assert!(
            got == data,
            "got {} bytes; {:?} {:?}",
            got.len(),
            a.stats(),
            a
        );
    }

    #[test]
    fn zero_window_gives_up_after_30_probes() {
        let mut a = dialer(nodelay());
        a.handle_segment(t(15), seg(A, 1, 1, 0, b""));
        a.write(t(20), b"blocked").unwrap();
        out(&mut a, t(20));
        let mut n = 0;
        while let Some((at, why)) = a.poll_timeout() {
            if why != TimerReason::ZeroWindowProbe {
                // keepalive would fire in between; ignore it
                a.handle_timeout(at);
                out(&mut a, at);
                continue;
            }
            a.handle_timeout(at);
            let o = out(&mut a, at);
            if a.is_closed() {
                assert_eq!(o, vec![seg(Flags::RST, 0, 0, 0, b"")]);
                break;
            }
            n += 1;
        }
        assert_eq!(n, 30);
        assert!(events(&mut a).contains(&Event::Reset(ResetReason::ZeroWindow)));
    }

    #[test]
    fn receiver_sends_window_update_when_reading_reopens() {
        let mut b = Connection::accept(
            t(0),
            ConnConfig {
                recv: RecvConfig {
                    queue_segments: 2,
                    ooo_segments: 4,
                },
                ..ConnConfig::default()
            },
            &seg(Flags::SYN, 0, 0, 512, b""),
            0,
        );
        out(&mut b, t(0));
        b.handle_segment(t(1), seg(A, 1, 1, 512, b"a"));
        b.handle_segment(t(2), seg(A, 2, 1, 512, b"b"));
        let o = out(&mut b, t(2));
        assert_eq!(o.last().map(|s| s.window), Some(0));
        let mut buf = [0u8; 1];
        b.read(&mut buf).unwrap();
        assert_eq!(out(&mut b, t(3)), vec![seg(A, 1, 3, 1, b"")]);
        // The peer's probe (seq one below) is answered.
        b.handle_segment(t(4), seg(A, 2, 1, 512, b""));
        assert_eq!(out(&mut b, t(4)), vec![seg(A, 1, 3, 1, b"")]);
    }

    #[test]
    fn keepalive_probes_are_answered_and_keep_healthy_idle_pair_alive() {
        let mut a = dialer(ConnConfig::default());
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(10), seg(A, 1, 1, 512, b""));
        let mut now = t(10);
        // Ten idle minutes, both sides exchanging only what the timers make.
        while now < t(600_000) {
            let next = [a.poll_timeout(), b.poll_timeout()]
                .into_iter()
                .flatten()
                .map(|(t, _)| t)
                .min()
                .unwrap();
            now = next;
            a.handle_timeout(now);
            b.handle_timeout(now);
            loop {
                let sa = out(&mut a, now);
                let sb = out(&mut b, now);
                if sa.is_empty() && sb.is_empty() {
                    break;
                }
                for s in sa {
                    b.handle_segment(now, s);
                }
                for s in sb {
                    a.handle_segment(now, s);
                }
            }
        }
        assert_eq!(a.state(), State::Established);
        assert_eq!(b.state(), State::Established);
    }

    #[test]
    fn reference_style_probes_are_answered_after_silence() {
        let mut b = acceptor(ConnConfig::default());
        b.handle_segment(t(5), seg(A, 1, 1, 512, b""));
        // A duplicate pure ACK soon after traffic is an ordinary ACK.
        b.handle_segment(t(2_000), seg(A, 1, 1, 512, b""));
        assert!(out(&mut b, t(2_000)).is_empty());
        // After a minute of silence the same ACK is the reference's probe.
        b.handle_segment(t(62_000), seg(A, 1, 1, 512, b""));
        assert_eq!(out(&mut b, t(62_000)), vec![seg(A, 1, 1, 512, b"")]);
        // Its next probe, 15 s later, is answered too.
        b.handle_segment(t(77_000), seg(A, 1, 1, 512, b""));
        assert_eq!(out(&mut b, t(77_000)).len(), 1);
    }

    #[test]
    fn answer_to_our_probe_is_not_answered_back() {
        let mut a = dialer(ConnConfig::default());
        a.handle_timeout(t(60_010));
        assert_eq!(out(&mut a, t(60_010)), vec![seg(A, 0, 1, 512, b"")]);
        a.handle_segment(t(60_030), seg(A, 1, 1, 512, b""));
        assert!(out(&mut a, t(60_030)).is_empty(), "no ACK ping-pong");
        assert_eq!(a.state(), State::Established);
    }

    #[test]
    fn unanswered_keepalives_close_the_connection() {
        let mut a = dialer(ConnConfig::default());
        let mut probes = vec![];
        let mut fin_at = None;
        while let Some((at, _)) = a.poll_timeout() {
            if at > t(200_000) {
                break;
            }
            a.handle_timeout(at);
            for s in out(&mut a, at) {
                if s.flags == Flags::FIN {
                    fin_at.get_or_insert(at.as_nanos() / 1_000_000);
                } else if s.payload.is_empty() && s.flags == A {
                    assert_eq!(s.seq, Seq(0), "probe seq one below");
                    probes.push(at.as_nanos() / 1_000_000);
                }
            }
        }
        assert_eq!(probes, vec![60_010, 75_010, 90_010]);
        assert_eq!(fin_at, Some(105_010));
        assert!(a.keepalive_closed(), "the end counts as an idle timeout");
    }

    #[test]
    fn keepalive_close_is_not_end_of_stream_for_the_reader() {
        // Found by the stream fuzz body: the keepalive closed the receive
        // side too, so read() said end of stream (Ok(0)) although the peer
        // never ended its stream, and then Reset once CLOSED.
        let mut a = dialer(ConnConfig::default());
        let mut buf = [0u8; 8];
        let mut fin_seen = false;
        while let Some((at, _)) = a.poll_timeout() {
            a.handle_timeout(at);
            fin_seen |= out(&mut a, at).iter().any(|s| s.flags == Flags::FIN);
            if fin_seen && a.state() == State::FinWait {
                assert_eq!(a.read(&mut buf), Err(StreamError::WouldBlock));
                break;
            }
        }
        assert!(fin_seen);
        // The peer was alive after all: its data and FIN still arrive.
        a.handle_segment(t(106_000), seg(A, 1, 2, 512, b"late"));
        a.handle_segment(t(106_001), seg(Flags::FIN | A, 5, 2, 0, b""));
        assert_eq!(a.state(), State::TimeWait);
        assert_eq!(a.read(&mut buf), Ok(4));
        assert_eq!(a.read(&mut buf), Ok(0));
        // A peer that stays silent instead: a reset, not end of stream.
        let mut b = dialer(ConnConfig::default());
        while let Some((at, _)) = b.poll_timeout() {
            b.handle_timeout(at);
            out(&mut b, at);
        }
        assert_eq!(events(&mut b), vec![Event::Reset(ResetReason::TimedOut)]);
        assert_eq!(b.read(&mut buf), Err(StreamError::Reset));
    }

    // The lossy-path transfers (loss, reordering, duplication, a slow
    // reader, both directions, a dying path) run in the simulator:
    // `sim/tests/conn_lossy.rs`.

    #[test]
    fn half_open_acceptor_is_closed_by_keepalive() {
        // The dialer vanished right after the handshake.
        let mut b = acceptor(ConnConfig::default());
        let mut fin_at = None;
        let mut end = t(0);
        while let Some((at, _)) = b.poll_timeout() {
            b.handle_timeout(at);
            end = at;
            for s in out(&mut b, at) {
                if s.flags == Flags::FIN && fin_at.is_none() {
                    fin_at = Some(at);
                }
            }
        }
        assert_eq!(fin_at, Some(t(105_000)));
        assert!(b.is_closed());
        assert!(end < t(150_000), "closed at {end:?}");
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Seg {
            flags: u8,
            seq: u32,
            ack: u32,
            window: u16,
            payload: Vec<u8>,
        },
        Sack(u32, Vec<(u32, u32)>),
        Advance(u32),
        Write(usize),
        Read,
        Shutdown,
        Close,
        Abort,
    }

    fn near() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..3000, any::<u32>(), (u32::MAX - 10)..=u32::MAX]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..16, near(), near(), any::<u16>(), prop::collection::vec(any::<u8>(), 0..1300))
                .prop_map(|(flags, seq, ack, window, payload)| Op::Seg { flags, seq, ack, window, payload }),
            2 => (near(), prop::collection::vec((near(), near()), 1..5)).prop_map(|(a, b)| Op::Sack(a, b)),
            3 => (0u32..70_000).prop_map(Op::Advance),
            2 => (0usize..20_000).prop_map(Op::Write),
            1 => Just(Op::Read),
            1 => Just(Op::Shutdown),
            1 => Just(Op::Close),
            1 => Just(Op::Abort),
        ]
    }

    fn run(c: &mut Connection, ops: &[Op]) {
        let mut now = Instant::from_millis(1);
        let mut buf = vec![0u8; 4096];
        for op in ops {
            match op {
                Op::Seg {
                    flags,
                    seq,
                    ack,
                    window,
                    payload,
                } => c.handle_segment(
                    now,
                    Segment {
                        flags: Flags::from_bits_truncate(*flags),
                        seq: Seq(*seq),
                        ack: Seq(*ack),
                        window: *window,
                        payload: Bytes::copy_from_slice(payload),
                    },
                ),
                Op::Sack(ack, blocks) => {
                    let b: Vec<_> = blocks
                        .iter()
                        .take(4)
                        .map(|&(s, e)| sack::SackBlock::new(s, e))
                        .collect();
                    let mut p = [0u8; 64];
                    let n = sack::encode(&b, &mut p).unwrap();
                    c.handle_segment(
                        now,
                        Segment {
                            flags: Flags::ACK,
                            seq: Seq(1),
                            ack: Seq(*ack),
                            window: 512,
                            payload: Bytes::copy_from_slice(&p[..n]),
                        },
                    );
                }
                Op::Advance(ms) => {
                    now = now + Duration::from_millis(u64::from(*ms));
                    c.handle_timeout(now);
                }
                Op::Write(n) => {
                    let _ = c.write(now, &vec![7u8; *n]);
                }
                Op::Read => {
                    let _ = c.read(&mut buf);
                }
                Op::Shutdown => c.shutdown(now),
                Op::Close => c.close(now),
                Op::Abort => c.abort(),
            }
            let mut n = 0;
            while c.poll_segment(now).is_some() {
                n += 1;
                assert!(n < 1000, "poll_segment does not terminate");
            }
            let mut e = 0;
            while c.poll_event().is_some() {
                e += 1;
            }
            assert!(e <= EVENT_CAP);
            let st = c.stats();
            assert!(st.cwnd <= crate::stream::consts::MAX_CWND);
            assert!(c.send.unacked_segments() <= MAX_UNACKED_SEGMENTS + 1);
            if let Some((at, _)) = c.poll_timeout() {
                // Handling the reported timeout must be harmless.
                c.handle_timeout(at.max(now));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn dialer_never_panics(ops in prop::collection::vec(op(), 0..120), synack in any::<bool>()) {
            let mut c = Connection::connect(Instant::ZERO, ConnConfig::default(), 0);
            if synack {
                // Usually get past the handshake so later input hits ESTABLISHED.
                c.handle_segment(Instant::ZERO, Segment::control(Flags::SYN | Flags::ACK, 0, 1, 512));
            }
            run(&mut c, &ops);
        }

        #[test]
        fn acceptor_never_panics(ops in prop::collection::vec(op(), 0..120), isn in any::<u32>()) {
            let syn = Segment::control(Flags::SYN, isn, 0, 512);
            let mut c = Connection::accept(Instant::ZERO, ConnConfig::default(), &syn, 0);
            run(&mut c, &ops);
        }
    }
}
