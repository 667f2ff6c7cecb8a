//! Every protocol constant of the stream transport, in one place. Each one
//! cites the section of `spec/transport.md` that defines it; values are those
//! of the `current` profile unless the name says otherwise.

use core::time::Duration;

/// Largest payload put in one data segment, per profile
/// (spec/transport.md §5.1); defined once, next to [`crate::WireProfile`].
pub use crate::wire::{SEGMENT_SIZE_CURRENT, SEGMENT_SIZE_LEGACY};

/// Unit of congestion-control arithmetic (IW, ABC limit, ssthresh floor,
/// post-timeout cwnd), independent of the segment size (spec/transport.md §7.4).
pub const CC_MSS: usize = 4096;

/// Initial congestion window: 10 congestion units (spec/transport.md §7.4).
pub const INITIAL_CWND: usize = 10 * CC_MSS;

/// Largest congestion window (spec/transport.md §7.4).
pub const MAX_CWND: usize = 1 << 20;

/// Initial slow-start threshold (spec/transport.md §7.4).
pub const INITIAL_SSTHRESH: usize = MAX_CWND / 2;

/// Duplicate ACKs that trigger a fast retransmit (spec/transport.md §7.4).
pub const DUP_ACK_THRESHOLD: u32 = 3;

/// Receive queue capacity in segments; the advertised window is its free
/// slots (spec/transport.md §6.2).
pub const RECV_QUEUE_SEGMENTS: usize = 512;

/// Out-of-order buffer capacity in segments: as many as the largest window
/// we advertise, so that one loss never makes us drop what the sender was
/// allowed to send after it (spec/transport.md §6.1; the reference keeps
/// 128).
pub const OOO_SEGMENTS: usize = RECV_QUEUE_SEGMENTS;

/// Largest segment a sender of either profile produces; the byte budget of
/// the receive buffers is this many bytes per slot (spec/transport.md §6.1).
pub const MAX_SEGMENT_BUDGET: usize = 4096;

/// Largest number of un-acknowledged segments a sender keeps in flight, a
/// local bound on the retransmission queue; equal to the largest window a
/// receiver advertises, enough for 100 Mbit/s at about 47 ms RTT with
/// 1152-byte segments (spec/transport.md §5.3; the reference keeps 128).
pub const MAX_UNACKED_SEGMENTS: usize = RECV_QUEUE_SEGMENTS;

/// An ACK for a retransmitted segment that arrives sooner than the
/// smallest RTT divided by this after the retransmission answered the
/// original: the retransmission was spurious (spec/transport.md §7.3.2).
pub const SPURIOUS_ACK_DIVISOR: u32 = 2;

/// The reordering window is at least the smallest RTT divided by this
/// (spec/transport.md §7.3.2).
pub const REORDER_WINDOW_MIN_DIVISOR: u32 = 4;

/// Most segments the time-based rule resends per ACK or timer expiry
/// (spec/transport.md §7.3.2).
pub const LOST_RTX_PER_EVENT: usize = 4;

/// Send buffer capacity for data not yet segmented (spec/transport.md §5.1).
pub const SEND_BUFFER_CAP: usize = 64 * 4096;

/// Longest a short (Nagle) tail is held back (spec/transport.md §5.1).
pub const NAGLE_HOLD: Duration = Duration::from_millis(40);

/// Smallest tail-loss-probe timeout (spec/transport.md §7.3.3).
pub const TLP_MIN: Duration = Duration::from_millis(1);

/// Tail loss probes without an answer before only the retransmission
/// timeout is left (spec/transport.md §7.3.3).
pub const TLP_MAX: u8 = 3;

/// Delayed-ACK timer (spec/transport.md §6.3).
pub const DELAYED_ACK: Duration = Duration::from_millis(5);

/// Segments received before an ACK is sent at once (spec/transport.md §6.3).
pub const DELAYED_ACK_SEGMENTS: u32 = 2;

/// Lone segments acknowledged at once before delaying starts
/// (spec/transport.md §6.3).
pub const QUICK_ACK_BUDGET: u32 = 32;

/// Retransmission timeout before the first RTT sample (spec/transport.md §7.1).
pub const INITIAL_RTO: Duration = Duration::from_secs(1);

/// Lower bound of the RTO (spec/transport.md §7.1).
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// Upper bound of the RTO (spec/transport.md §7.1).
pub const MAX_RTO: Duration = Duration::from_secs(10);

/// Clock granularity G of RFC 6298 (spec/transport.md §7.1).
pub const CLOCK_GRANULARITY: Duration = Duration::from_millis(10);

/// Default user timeout (RFC 5482 spirit): a dial fails, and a connection
/// with un-acknowledged data (or FIN) gives up, once the peer has been
/// silent this long; a TIME_WAIT whose own FIN is unacknowledged lingers
/// at most this long after the peer was last heard. Configurable per
/// connection ([`crate::stream::conn::ConnConfig::user_timeout`]) with a
/// node/daemon default (spec/transport.md §7.3).
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Smallest user timeout accepted; shorter values are raised to it.
pub const MIN_USER_TIMEOUT: Duration = Duration::from_secs(1);

/// Fewest retransmission timeouts since the peer was last heard before the
/// give-up rule may fire, for user timeouts of 16 s and more; shorter user
/// timeouts need one per [`MAX_BACKOFF_RTO`] of timeout, at least 2
/// (spec/transport.md §7.3).
pub const GIVE_UP_MIN_TIMEOUTS: u32 = 8;

/// Exponential back-off stops doubling at this interval, or at the computed
/// RTO if that is larger (spec/transport.md §7.1).
pub const MAX_BACKOFF_RTO: Duration = Duration::from_secs(2);

/// First SYN retransmission interval (spec/transport.md §4.1).
pub const SYN_INITIAL_RTO: Duration = Duration::from_millis(250);

/// Largest SYN retransmission interval; the dial retries until its
/// deadline, the user timeout (spec/transport.md §4.1).
pub const SYN_MAX_RTO: Duration = Duration::from_secs(4);

/// SYNs sent on the direct path before the node may switch the peer to
/// the relay; the back-off restarts then (spec/transport.md §4.1).
pub const SYN_DIRECT_ATTEMPTS: u32 = 3;

/// First zero-window probe interval (spec/transport.md §9.1).
pub const ZWP_INITIAL: Duration = Duration::from_millis(500);

/// Largest zero-window probe interval (spec/transport.md §9.1).
pub const ZWP_MAX: Duration = Duration::from_secs(30);

/// Unanswered zero-window probes before the connection is reset
/// (spec/transport.md §9.1).
pub const ZWP_MAX_PROBES: u32 = 30;

/// Idle time before a keepalive probe is sent (spec/transport.md §9.2).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// Interval between keepalive probes once the connection is idle
/// (spec/transport.md §9.2).
pub const KEEPALIVE_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// A duplicate pure ACK arriving after at least this much silence from the
/// peer is taken for the reference's keepalive or zero-window probe and
/// answered (spec/transport.md §9.1).
pub const PROBE_ANSWER_SILENCE: Duration = Duration::from_secs(10);

/// Unanswered keepalive probes before the connection is closed
/// (spec/transport.md §9.2).
pub const KEEPALIVE_PROBES: u32 = 3;

/// TIME_WAIT (and FIN_WAIT) linger (spec/transport.md §8).
pub const TIME_WAIT: Duration = Duration::from_secs(10);

/// Smallest segment size path-MTU black-hole recovery shrinks to: with the
/// 34-byte packet header and the tunnel's overhead a 464-byte segment
/// travels in a 534-byte UDP payload, which fits the 576-byte IPv4
/// minimum MTU (spec/transport.md §5.4).
pub const SEGMENT_FLOOR: usize = 464;

/// Retransmission timeouts in a row, each answered by the peer (probe)
/// without the data being acknowledged, before the segment size halves;
/// after a first reduction one such timeout is enough (spec/transport.md
/// §5.4).
pub const BLACKHOLE_EVIDENCE: u32 = 2;

/// Such timeouts in a row at the floor before the connection ends with
/// "path MTU too small" (spec/transport.md §5.4).
pub const FLOOR_EVIDENCE: u32 = 4;

/// Largest data segment a receiver accepts (the reference's documented
/// maximum, `spec/transport.md` §1): the ceiling of upward path-MTU
/// probing (§5.5).
pub const MAX_ACCEPTED_SEGMENT: usize = 4096;

/// Unanswered probes of one size before the search takes that size as
/// too large (RFC 8899 `MAX_PROBES`; `spec/transport.md` §5.5).
pub const PMTU_MAX_PROBES: u32 = 3;

/// A finished upward search starts again after this long (RFC 8899's
/// `PMTU_RAISE_TIMER`, 600 s), so a path whose MTU grew is found again
/// (`spec/transport.md` §5.5).
pub const PMTU_RAISE_TIMER: Duration = Duration::from_secs(600);

/// The upward search stops when the next candidate would be less than
/// this many bytes above the largest confirmed size (§5.5).
pub const PMTU_SEARCH_STEP: usize = 64;
