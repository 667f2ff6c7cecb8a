//! The daemon's built-in stream services as one sans-IO host
//! (`spec/services.md` §9): echo on 7, the trust-message intake on 444,
//! data exchange on 1001, the event-stream broker on 1002 and task
//! submission on 1003 (one frame per stream, `spec/services.md` §12). Each accepted
//! connection is a small state machine driven through the [`StreamIo`]
//! trait; whatever only the daemon can do (write a file, feed the trust
//! store, report an event) comes out of [`ServiceHost::poll_action`].
//!
//! The host reads no clock: `now` (monotonic) and `wall` (calendar) come in
//! as arguments. Every per-connection buffer is bounded (see
//! [`HostLimits`]), input never panics the host, and a protocol error
//! closes only the connection it happened on.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use core::time::Duration;

use bytes::Bytes;

use super::dataexchange::{DataExchangeService, FileNameError, Frame, FrameType, Reception, Store};
use super::dataexchange::{HEADER_LEN as DX_HEADER_LEN, TraceAck, max_payload};
use super::eventstream::{Broker, BrokerEffect, Event};
use super::handshake::max_message;
use super::tasks;
use super::walltime::WallTime;
use crate::addr::{Addr, PilotSockAddr, ports};
use crate::node::ConnId;
use crate::time::Instant;
use crate::wire::WireProfile;

/// Largest single read the host asks for (`spec/services.md` §9.3).
pub const READ_CHUNK: usize = 16 << 10;
/// Echo bytes read but not yet written back, at most (`spec/services.md` §9.2).
pub const ECHO_CHUNK: usize = 16 << 10;
/// How long a port-444 connection may take to deliver its message
/// (`spec/services.md` §9.4).
pub const TRUST_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time after which a data-exchange connection is closed
/// (`spec/services.md` §9.5).
pub const DATA_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections each service admits at once (`spec/services.md` §9.3).
pub const CONNS_PER_SERVICE: usize = 256;
/// Longest save-error text put into an `ERR` reply, bytes (`spec/services.md` §9.5).
pub const MAX_ERROR_TEXT: usize = 256;
/// How long a port-1003 connection may take to deliver its frame.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(30);
/// Event-stream notifications ([`HostAction::Event`]) queued at most; more
/// are counted and dropped (`spec/services.md` §9.3).
pub const QUEUED_EVENTS: usize = 1024;

/// Why a [`StreamIo`] call did not move bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    /// Nothing to read / no room to write now; the daemon calls
    /// [`ServiceHost::on_readable`] or [`ServiceHost::on_writable`] later.
    #[error("would block")]
    WouldBlock,
    /// The connection is gone (reset, unknown, or closed locally).
    #[error("connection closed")]
    Closed,
}

/// Stream access the daemon gives the host (implemented over
/// [`crate::node::Node`]).
pub trait StreamIo {
    /// Reads into `buf`; `Ok(0)` means end of stream (the peer's FIN).
    fn read(&mut self, conn: ConnId, buf: &mut [u8]) -> Result<usize, IoError>;
    /// Writes from `data`; may accept fewer bytes (even 0) than offered.
    fn write(&mut self, conn: ConnId, data: &[u8]) -> Result<usize, IoError>;
    /// Closes our sending direction (FIN after the written data).
    fn shutdown(&mut self, conn: ConnId);
    /// Closes the connection (FIN after the written data; further input
    /// discarded). The host forgets the connection afterwards.
    fn close(&mut self, conn: ConnId);
}

/// One built-in service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    /// Port 7.
    Echo,
    /// Port 444 (message intake only; the daemon's `TrustStore` decides).
    Trust,
    /// Port 1001.
    DataExchange,
    /// Port 1002.
    EventStream,
    /// Port 1003 (task submission; the daemon decides on each frame).
    Tasks,
}

impl Service {
    /// Every service, in port order.
    pub const ALL: [Service; 5] = [
        Service::Echo,
        Service::Trust,
        Service::DataExchange,
        Service::EventStream,
        Service::Tasks,
    ];

    /// The service's virtual port.
    pub const fn port(self) -> u16 {
        match self {
            Service::Echo => ports::ECHO,
            Service::Trust => ports::HANDSHAKE,
            Service::DataExchange => ports::DATA_EXCHANGE,
            Service::EventStream => ports::EVENT_STREAM,
            Service::Tasks => tasks::PORT,
        }
    }

    /// The service on `port`, if any.
    pub const fn from_port(port: u16) -> Option<Service> {
        match port {
            ports::ECHO => Some(Service::Echo),
            ports::HANDSHAKE => Some(Service::Trust),
            ports::DATA_EXCHANGE => Some(Service::DataExchange),
            ports::EVENT_STREAM => Some(Service::EventStream),
            tasks::PORT => Some(Service::Tasks),
            _ => None,
        }
    }
}

/// Bounds of the host (`spec/services.md` §9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// Connections each service admits at once (the event broker also caps
    /// itself at [`super::eventstream::MAX_CONNECTIONS`]).
    pub conns_per_service: usize,
    /// Largest single read.
    pub read_chunk: usize,
    /// Echo bytes held between read and write-back.
    pub echo_chunk: usize,
    /// Largest data-exchange payload.
    pub data_max_payload: u32,
    /// Idle time after which a data-exchange connection is closed.
    pub data_idle_timeout: Option<Duration>,
    /// Largest port-444 message.
    pub trust_max_message: usize,
    /// Time a port-444 connection gets to deliver its message.
    pub trust_timeout: Duration,
    /// Event notifications queued at most.
    pub queued_events: usize,
}

impl HostLimits {
    /// The defaults for `profile`: the payload and message limits of the
    /// profile, the constants of this module for the rest.
    pub const fn for_profile(profile: WireProfile) -> HostLimits {
        HostLimits {
            conns_per_service: CONNS_PER_SERVICE,
            read_chunk: READ_CHUNK,
            echo_chunk: ECHO_CHUNK,
            data_max_payload: max_payload(profile),
            data_idle_timeout: Some(DATA_IDLE_TIMEOUT),
            trust_max_message: max_message(profile),
            trust_timeout: TRUST_TIMEOUT,
            queued_events: QUEUED_EVENTS,
        }
    }
}

/// Which services run, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// Wire profile (payload limits, inbox format, broker rules).
    pub profile: WireProfile,
    /// Run echo on 7.
    pub echo: bool,
    /// Accept trust messages on 444.
    pub trust: bool,
    /// Run data exchange on 1001.
    pub data_exchange: bool,
    /// Run the event stream on 1002.
    pub event_stream: bool,
    /// Take task frames on 1003 ([`HostAction::TaskFrame`]).
    pub tasks: bool,
    /// Bounds.
    pub limits: HostLimits,
}

impl HostConfig {
    /// Every service on, default limits for `profile`.
    pub const fn new(profile: WireProfile) -> HostConfig {
        HostConfig {
            profile,
            echo: true,
            trust: true,
            data_exchange: true,
            event_stream: true,
            tasks: false,
            limits: HostLimits::for_profile(profile),
        }
    }

    /// Whether `service` is enabled.
    pub const fn enabled(&self, service: Service) -> bool {
        match service {
            Service::Echo => self.echo,
            Service::Trust => self.trust,
            Service::DataExchange => self.data_exchange,
            Service::EventStream => self.event_stream,
            Service::Tasks => self.tasks,
        }
    }
}

/// Why [`ServiceHost::on_accept`] refused a connection; the daemon closes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No enabled service on this port.
    #[error("no built-in service on port {0}")]
    NotServed(u16),
    /// The service is at its connection limit.
    #[error("service on port {0} is at its connection limit")]
    TooManyConnections(u16),
    /// The connection ID is already in use.
    #[error("connection {0:?} is already open")]
    Duplicate(ConnId),
}

/// An event-stream notification for logs and webhooks
/// (`pubsub.subscribed`, `pubsub.published`, `pubsub.unsubscribed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A connection subscribed.
    Subscribed {
        /// The connection.
        conn: ConnId,
        /// Its remote end.
        remote: PilotSockAddr,
        /// The topic.
        topic: Bytes,
    },
    /// A publication was queued for `delivered` subscribers.
    Published {
        /// The publisher.
        conn: ConnId,
        /// Its remote end.
        remote: PilotSockAddr,
        /// The topic.
        topic: Bytes,
        /// Payload bytes.
        size: usize,
        /// Subscribers it was queued for.
        delivered: usize,
    },
    /// A connection left the broker.
    Unsubscribed {
        /// The connection.
        conn: ConnId,
        /// Its remote end.
        remote: PilotSockAddr,
        /// Its topic, if it had subscribed.
        topic: Option<Bytes>,
    },
}

/// Work only the daemon can do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostAction {
    /// Write `data` to a new file `name` in `<dir>/received/`; then call
    /// [`ServiceHost::save_finished`] for `conn` (the ACK waits for it).
    SaveReceivedFile {
        /// The data-exchange connection.
        conn: ConnId,
        /// The sender.
        from: PilotSockAddr,
        /// File name to create (sanitised, time-stamped, no directory part).
        name: String,
        /// The name the sender gave (sanitised), for `file.received`.
        original: String,
        /// File content.
        data: Vec<u8>,
    },
    /// Write `json` to a new file `name` in `<dir>/inbox/`; then call
    /// [`ServiceHost::save_finished`] for `conn`.
    SaveInbox {
        /// The data-exchange connection.
        conn: ConnId,
        /// The sender.
        from: PilotSockAddr,
        /// `TEXT`, `JSON` or `BINARY`.
        kind: FrameType,
        /// Payload bytes, for `message.received`.
        size: usize,
        /// File name to create (no directory part).
        name: String,
        /// The document.
        json: String,
    },
    /// A complete port-444 message, for the daemon's `TrustStore`
    /// (`Inbound::source` = `from.node`).
    TrustMessage {
        /// The stream's actual remote node.
        from: Addr,
        /// The message bytes (one JSON object).
        bytes: Vec<u8>,
    },
    /// A complete port-1003 frame; answer with
    /// [`ServiceHost::task_reply`] (the connection waits for it).
    TaskFrame {
        /// The connection.
        conn: ConnId,
        /// The stream's actual remote node.
        from: Addr,
        /// Frame type.
        frame_type: tasks::FrameType,
        /// JSON payload.
        payload: Vec<u8>,
    },
    /// An event-stream notification.
    Event(ServiceEvent),
}

/// Counters of what the host did and refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused by [`ServiceHost::on_accept`].
    pub refused: u64,
    /// Connections closed for a protocol error (bad frame, oversized
    /// length or message, garbage on 444).
    pub protocol_errors: u64,
    /// Connections closed by a timeout.
    pub timeouts: u64,
    /// Data-exchange frames handled.
    pub frames: u64,
    /// Trust messages delivered.
    pub trust_messages: u64,
    /// Event notifications dropped because the queue was full.
    pub events_dropped: u64,
    /// Publications dropped for a subscriber whose queue was full.
    pub subscriber_drops: u64,
    /// Publications dropped by the broker's rate limit.
    pub rate_limited: u64,
}

/// Whether a connection goes on or must be closed and forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Keep,
    Done,
}

#[derive(Debug, Default)]
struct EchoConn {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

#[derive(Debug)]
struct TrustConn {
    buf: Vec<u8>,
    scan: JsonScan,
    deadline: Instant,
}

/// What the ACK of a frame needs once its save has finished.
#[derive(Clone, Copy, Debug)]
struct AckPlan {
    frame_type: FrameType,
    size: usize,
    refused: Option<FileNameError>,
    /// `(sent_at_ns, received_at_ns)` of a TRACE wrapper.
    trace: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct DataConn {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_off: usize,
    waiting: Option<AckPlan>,
    eof: bool,
    deadline: Option<Instant>,
}

#[derive(Debug, Default)]
struct EventConn {
    inbuf: Vec<u8>,
    cur: Option<(Bytes, usize)>,
    eof: bool,
}

#[derive(Debug)]
struct TaskConn {
    buf: Vec<u8>,
    out: Vec<u8>,
    out_off: usize,
    waiting: bool,
    /// The daemon answered: write `out`, then close.
    answered: bool,
    deadline: Instant,
}

#[derive(Debug)]
enum ConnState {
    Echo(EchoConn),
    Trust(TrustConn),
    Data(DataConn),
    Events(EventConn),
    Tasks(TaskConn),
}

impl ConnState {
    fn service(&self) -> Service {
        match self {
            ConnState::Echo(_) => Service::Echo,
            ConnState::Trust(_) => Service::Trust,
            ConnState::Data(_) => Service::DataExchange,
            ConnState::Events(_) => Service::EventStream,
            ConnState::Tasks(_) => Service::Tasks,
        }
    }

    fn buffered(&self) -> usize {
        match self {
            ConnState::Echo(e) => e.buf.capacity(),
            ConnState::Trust(t) => t.buf.capacity(),
            ConnState::Data(d) => d.inbuf.capacity() + d.out.capacity(),
            ConnState::Events(e) => e.inbuf.capacity() + e.cur.as_ref().map_or(0, |(b, _)| b.len()),
            ConnState::Tasks(t) => t.buf.capacity() + t.out.capacity(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            ConnState::Trust(t) => Some(t.deadline),
            ConnState::Data(d) if d.waiting.is_none() => d.deadline,
            ConnState::Tasks(t) if !t.waiting => Some(t.deadline),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Conn {
    remote: PilotSockAddr,
    state: ConnState,
}

/// The built-in services (`spec/services.md` §9). Call order, like
/// [`crate::node::Node`]: after every call drain [`ServiceHost::poll_action`]
/// (carrying out saves and answering them with
/// [`ServiceHost::save_finished`]), then re-arm [`ServiceHost::poll_timeout`].
#[derive(Debug)]
pub struct ServiceHost {
    cfg: HostConfig,
    conns: BTreeMap<ConnId, Conn>,
    dx: DataExchangeService,
    broker: Broker,
    /// Event-stream connections with newly queued output.
    dirty: BTreeSet<ConnId>,
    actions: VecDeque<HostAction>,
    queued_events: usize,
    stats: HostStats,
}

fn wall_ns(w: WallTime) -> u64 {
    u64::try_from(w.unix_secs)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(w.millis.min(999)) * 1_000_000)
}

/// Writes as much of `data` as `io` takes; `Err` when the connection is gone.
fn write_some(io: &mut dyn StreamIo, conn: ConnId, data: &[u8]) -> Result<usize, ()> {
    match io.write(conn, data) {
        Ok(n) => Ok(n.min(data.len())),
        Err(IoError::WouldBlock) => Ok(0),
        Err(IoError::Closed) => Err(()),
    }
}

/// Reads at most `want` bytes onto the end of `buf`.
fn read_append(
    io: &mut dyn StreamIo,
    conn: ConnId,
    buf: &mut Vec<u8>,
    want: usize,
) -> Result<usize, IoError> {
    let len = buf.len();
    buf.resize(len.saturating_add(want), 0);
    let r = match buf.get_mut(len..) {
        Some(tail) => io.read(conn, tail),
        None => Err(IoError::WouldBlock),
    };
    let n = match r {
        Ok(n) => n.min(want),
        Err(e) => {
            buf.truncate(len);
            return Err(e);
        }
    };
    buf.truncate(len + n);
    Ok(n)
}

/// Removes the first `n` bytes of `buf`, giving memory back once a large
/// frame has gone.
fn consume(buf: &mut Vec<u8>, n: usize, chunk: usize) {
    buf.drain(..n.min(buf.len()));
    if buf.capacity() > chunk.saturating_mul(4) && buf.len() <= chunk {
        buf.shrink_to(chunk);
    }
}

/// How many bytes to read next: up to the end of the frame being
/// assembled when its length is known (so a large frame fills its buffer
/// exactly and can be handed on without a copy), else one chunk.
fn next_read(have: usize, frame_end: Option<usize>, chunk: usize) -> usize {
    match frame_end {
        Some(end) if end > have => (end - have).min(chunk),
        _ => chunk,
    }
    .max(1)
}

fn dx_frame_end(buf: &[u8]) -> Option<usize> {
    let len = u32::from_be_bytes(buf.get(4..8)?.try_into().ok()?);
    Some(DX_HEADER_LEN.saturating_add(len as usize))
}

fn event_frame_end(buf: &[u8]) -> Option<usize> {
    let t = usize::from(u16::from_be_bytes(buf.get(..2)?.try_into().ok()?));
    let p = u32::from_be_bytes(buf.get(2 + t..6 + t)?.try_into().ok()?);
    Some((6 + t).saturating_add(p as usize))
}

/// Incremental scan for the end of one JSON object (the port-444 message),
/// tracking strings and escapes so braces inside text do not count.
#[derive(Clone, Copy, Debug, Default)]
struct JsonScan {
    depth: usize,
    started: bool,
    in_string: bool,
    escape: bool,
    pos: usize,
}

/// Result of feeding bytes to a [`JsonScan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanResult {
    /// The object is still open.
    More,
    /// The object ends with the byte before this offset.
    Complete(usize),
    /// The input does not start with a JSON object.
    NotObject,
}

impl JsonScan {
    /// Scans `buf[self.pos..]`; `buf` only ever grows between calls.
    fn feed(&mut self, buf: &[u8]) -> ScanResult {
        let from = self.pos;
        for (i, &b) in buf.iter().enumerate().skip(from) {
            self.pos = i + 1;
            if !self.started {
                match b {
                    b' ' | b'\t' | b'\r' | b'\n' => continue,
                    b'{' => {
                        self.started = true;
                        self.depth = 1;
                        continue;
                    }
                    _ => return ScanResult::NotObject,
                }
            }
            if self.in_string {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return ScanResult::Complete(i + 1);
                    }
                }
                _ => {}
            }
        }
        ScanResult::More
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// Encodes the reply to one data-exchange frame into `out`
/// (`spec/services.md` §5.3): `ACK`/`ERR` text, or the TRACE JSON ack.
fn encode_ack(out: &mut Vec<u8>, plan: AckPlan, outcome: Result<(), &str>, wall: WallTime) {
    let rec = Reception {
        frame_type: plan.frame_type,
        size: plan.size,
        store: None,
        refused: plan.refused,
        trace_sent_at_ns: None,
    };
    let text = match outcome {
        Ok(()) => rec.reply_text(Ok(())),
        Err(e) => {
            let e = cut(e, MAX_ERROR_TEXT);
            rec.reply_text(Err(&e))
        }
    };
    let (frame_type, payload) = match plan.trace {
        Some((sent_at_ns, received_at_ns)) => {
            let t = wall_ns(wall);
            let ack = TraceAck {
                ack_sent_at_ns: t,
                inbox_written_at_ns: t,
                inner_ack: text,
                received_at_ns,
                sent_at_ns,
            };
            (FrameType::Json, ack.to_json().into_bytes())
        }
        None => (FrameType::Text, text.into_bytes()),
    };
    let f = Frame {
        frame_type,
        payload: &payload,
    };
    let start = out.len();
    out.resize(start + f.encoded_len(), 0);
    if let Some(tail) = out.get_mut(start..) {
        // The buffer was sized for the frame, so this cannot fail.
        let _ = f.encode(tail);
    }
}

impl ServiceHost {
    /// A host running the services `cfg` enables.
    pub fn new(cfg: HostConfig) -> Self {
        ServiceHost {
            cfg,
            conns: BTreeMap::new(),
            dx: DataExchangeService::new(cfg.profile),
            broker: Broker::new(cfg.profile),
            dirty: BTreeSet::new(),
            actions: VecDeque::new(),
            queued_events: 0,
            stats: HostStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Ports the daemon must listen on, ascending.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        Service::ALL
            .into_iter()
            .filter(|s| self.cfg.enabled(*s))
            .map(Service::port)
    }

    /// Counters.
    pub fn stats(&self) -> HostStats {
        self.stats
    }

    /// Open connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The service a connection belongs to.
    pub fn service_of(&self, conn: ConnId) -> Option<Service> {
        self.conns.get(&conn).map(|c| c.state.service())
    }

    /// Bytes of buffer memory the connections hold.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.state.buffered()).sum()
    }

    /// Publications dropped for an event-stream subscriber whose queue was full.
    pub fn subscriber_dropped(&self, conn: ConnId) -> u64 {
        self.broker.dropped(conn.0)
    }

    /// Registers a connection accepted on `port` from `remote`. `trusted`
    /// says whether the daemon trusts the remote node (the current profile
    /// admits event-stream subscriptions only from trusted peers). On `Err`
    /// the daemon closes the connection.
    pub fn on_accept(
        &mut self,
        now: Instant,
        port: u16,
        conn: ConnId,
        remote: PilotSockAddr,
        trusted: bool,
    ) -> Result<(), HostError> {
        let r = self.accept_inner(now, port, conn, remote, trusted);
        match r {
            Ok(()) => self.stats.accepted += 1,
            Err(_) => self.stats.refused += 1,
        }
        r
    }

    fn accept_inner(
        &mut self,
        now: Instant,
        port: u16,
        conn: ConnId,
        remote: PilotSockAddr,
        trusted: bool,
    ) -> Result<(), HostError> {
        let service = Service::from_port(port)
            .filter(|s| self.cfg.enabled(*s))
            .ok_or(HostError::NotServed(port))?;
        if self.conns.contains_key(&conn) {
            return Err(HostError::Duplicate(conn));
        }
        let open = self
            .conns
            .values()
            .filter(|c| c.state.service() == service)
            .count();
        if open >= self.cfg.limits.conns_per_service {
            return Err(HostError::TooManyConnections(port));
        }
        let l = &self.cfg.limits;
        let state = match service {
            Service::Echo => ConnState::Echo(EchoConn::default()),
            Service::Trust => ConnState::Trust(TrustConn {
                buf: Vec::new(),
                scan: JsonScan::default(),
                deadline: now + l.trust_timeout,
            }),
            Service::DataExchange => ConnState::Data(DataConn {
                deadline: l.data_idle_timeout.map(|d| now + d),
                ..DataConn::default()
            }),
            Service::EventStream => {
                self.broker
                    .open(conn.0, remote, trusted, now)
                    .map_err(|_| HostError::TooManyConnections(port))?;
                ConnState::Events(EventConn::default())
            }
            Service::Tasks => ConnState::Tasks(TaskConn {
                buf: Vec::new(),
                out: Vec::new(),
                out_off: 0,
                waiting: false,
                answered: false,
                deadline: now + TASK_TIMEOUT,
            }),
        };
        self.conns.insert(conn, Conn { remote, state });
        Ok(())
    }

    /// Data (or the end of stream) can be read from `conn`.
    pub fn on_readable(
        &mut self,
        io: &mut dyn StreamIo,
        conn: ConnId,
        now: Instant,
        wall: WallTime,
    ) {
        self.drive(io, conn, now, wall);
    }

    /// `conn` has room to write again (call it on `Writable` and on
    /// `Connected` of an accepted connection).
    pub fn on_writable(
        &mut self,
        io: &mut dyn StreamIo,
        conn: ConnId,
        now: Instant,
        wall: WallTime,
    ) {
        self.drive(io, conn, now, wall);
    }

    /// The daemon finished the save a [`HostAction::SaveReceivedFile`] or
    /// [`HostAction::SaveInbox`] asked for; `outcome` is `Err(text)` when
    /// it failed. The host writes the ACK and goes on with the connection.
    pub fn save_finished(
        &mut self,
        io: &mut dyn StreamIo,
        conn: ConnId,
        now: Instant,
        wall: WallTime,
        outcome: Result<(), &str>,
    ) {
        let Some(Conn {
            state: ConnState::Data(st),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        let Some(plan) = st.waiting.take() else {
            return;
        };
        encode_ack(&mut st.out, plan, outcome, wall);
        self.drive(io, conn, now, wall);
    }

    /// The daemon's answer to a [`HostAction::TaskFrame`]: `reply` is
    /// written (if any), then the connection is closed.
    pub fn task_reply(
        &mut self,
        io: &mut dyn StreamIo,
        conn: ConnId,
        now: Instant,
        wall: WallTime,
        reply: Option<Vec<u8>>,
    ) {
        let Some(Conn {
            state: ConnState::Tasks(st),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        if !st.waiting {
            return;
        }
        st.waiting = false;
        st.answered = true;
        st.out = reply.unwrap_or_default();
        st.out_off = 0;
        // Writing the reply may take a while; it gets a fresh deadline.
        st.deadline = now + TASK_TIMEOUT;
        self.drive(io, conn, now, wall);
    }

    /// `conn` is gone (closed or reset by the node); forget it.
    pub fn on_closed(&mut self, conn: ConnId) {
        self.forget(conn);
    }

    /// The next thing only the daemon can do.
    pub fn poll_action(&mut self) -> Option<HostAction> {
        let a = self.actions.pop_front()?;
        if matches!(a, HostAction::Event(_)) {
            self.queued_events = self.queued_events.saturating_sub(1);
        }
        Some(a)
    }

    /// The earliest deadline (a port-444 connection that has not delivered
    /// its message, an idle data-exchange connection).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns.values().filter_map(|c| c.state.deadline()).min()
    }

    /// Closes every connection whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, io: &mut dyn StreamIo, now: Instant) {
        let expired: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state.deadline().is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.stats.timeouts += 1;
            self.finish(io, id);
        }
    }

    /// Runs `conn`'s state machine, then delivers queued event-stream output.
    fn drive(&mut self, io: &mut dyn StreamIo, conn: ConnId, now: Instant, wall: WallTime) {
        let Some(service) = self.service_of(conn) else {
            return;
        };
        let flow = match service {
            Service::Echo => self.pump_echo(io, conn),
            Service::Trust => self.pump_trust(io, conn),
            Service::DataExchange => self.pump_data(io, conn, now, wall),
            Service::EventStream => {
                self.dirty.insert(conn);
                self.pump_events(io, conn, now)
            }
            Service::Tasks => self.pump_task(io, conn),
        };
        if flow == Flow::Done {
            self.finish(io, conn);
        }
        self.flush_dirty(io);
    }

    /// Closes and forgets a connection.
    fn finish(&mut self, io: &mut dyn StreamIo, conn: ConnId) {
        if self.conns.contains_key(&conn) {
            io.close(conn);
        }
        self.forget(conn);
    }

    fn forget(&mut self, conn: ConnId) {
        self.dirty.remove(&conn);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let ConnState::Events(_) = c.state {
            if let Some(BrokerEffect::Unsubscribed { topic, .. }) = self.broker.close(conn.0) {
                self.push_event(ServiceEvent::Unsubscribed {
                    conn,
                    remote: c.remote,
                    topic,
                });
            }
        }
    }

    fn push_event(&mut self, e: ServiceEvent) {
        if self.queued_events >= self.cfg.limits.queued_events {
            self.stats.events_dropped += 1;
            return;
        }
        self.queued_events += 1;
        self.actions.push_back(HostAction::Event(e));
    }

    /// Echo (`spec/services.md` §9.2): never reads while read bytes are
    /// still waiting to be written back, and reads at most `echo_chunk`.
    fn pump_echo(&mut self, io: &mut dyn StreamIo, conn: ConnId) -> Flow {
        let chunk = self.cfg.limits.echo_chunk.max(1);
        let Some(Conn {
            state: ConnState::Echo(st),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return Flow::Keep;
        };
        loop {
            while st.start < st.end {
                let Some(pending) = st.buf.get(st.start..st.end) else {
                    return Flow::Done;
                };
                match write_some(io, conn, pending) {
                    Err(()) => return Flow::Done,
                    Ok(0) => return Flow::Keep,
                    Ok(n) => st.start += n,
                }
            }
            st.start = 0;
            st.end = 0;
            if st.eof {
                // Everything read has been echoed: our FIN follows.
                return Flow::Done;
            }
            if st.buf.len() < chunk {
                st.buf.resize(chunk, 0);
            }
            let Some(space) = st.buf.get_mut(..chunk) else {
                return Flow::Done;
            };
            match io.read(conn, space) {
                Ok(0) => st.eof = true,
                Ok(n) => st.end = n.min(chunk),
                Err(IoError::WouldBlock) => return Flow::Keep,
                Err(IoError::Closed) => return Flow::Done,
            }
        }
    }

    /// Port 1003 (`spec/services.md` §12.2): read one frame (bounded by
    /// [`tasks::MAX_PAYLOAD`]), hand it to the daemon, write its answer,
    /// close. Anything after the first frame is ignored.
    fn pump_task(&mut self, io: &mut dyn StreamIo, conn: ConnId) -> Flow {
        let chunk = self.cfg.limits.read_chunk.max(1);
        let Some(Conn {
            state: ConnState::Tasks(st),
            remote,
        }) = self.conns.get_mut(&conn)
        else {
            return Flow::Keep;
        };
        if st.waiting {
            return Flow::Keep;
        }
        if st.answered {
            while st.out_off < st.out.len() {
                let Some(rest) = st.out.get(st.out_off..) else {
                    return Flow::Done;
                };
                match write_some(io, conn, rest) {
                    Err(()) => return Flow::Done,
                    Ok(0) => return Flow::Keep,
                    Ok(n) => st.out_off += n,
                }
            }
            return Flow::Done;
        }
        loop {
            match tasks::decode_frame(&st.buf) {
                Err(_) => {
                    self.stats.protocol_errors += 1;
                    return Flow::Done;
                }
                Ok(Some((frame_type, payload, _))) => {
                    let payload = payload.to_vec();
                    st.buf = Vec::new();
                    st.waiting = true;
                    self.stats.frames += 1;
                    self.actions.push_back(HostAction::TaskFrame {
                        conn,
                        from: remote.addr,
                        frame_type,
                        payload,
                    });
                    return Flow::Keep;
                }
                Ok(None) => {}
            }
            // Never more than one frame's worth of input.
            let room = (tasks::HEADER_LEN + tasks::MAX_PAYLOAD).saturating_sub(st.buf.len());
            match read_append(io, conn, &mut st.buf, room.min(chunk)) {
                Ok(0) | Err(IoError::Closed) => return Flow::Done,
                Err(IoError::WouldBlock) => return Flow::Keep,
                Ok(_) => {}
            }
        }
    }

    /// Port 444 (`spec/services.md` §9.4): collect one JSON object, bounded.
    fn pump_trust(&mut self, io: &mut dyn StreamIo, conn: ConnId) -> Flow {
        let max = self.cfg.limits.trust_max_message;
        let chunk = self.cfg.limits.read_chunk.max(1);
        let Some(Conn {
            state: ConnState::Trust(st),
            remote,
        }) = self.conns.get_mut(&conn)
        else {
            return Flow::Keep;
        };
        loop {
            let room = max.saturating_sub(st.buf.len());
            if room == 0 {
                self.stats.protocol_errors += 1;
                return Flow::Done;
            }
            match read_append(io, conn, &mut st.buf, room.min(chunk)) {
                Ok(0) | Err(IoError::Closed) => return Flow::Done,
                Err(IoError::WouldBlock) => return Flow::Keep,
                Ok(_) => {}
            }
            match st.scan.feed(&st.buf) {
                ScanResult::More => {}
                ScanResult::NotObject => {
                    self.stats.protocol_errors += 1;
                    return Flow::Done;
                }
                ScanResult::Complete(end) => {
                    st.buf.truncate(end);
                    let bytes = core::mem::take(&mut st.buf);
                    let from = remote.addr;
                    self.stats.trust_messages += 1;
                    self.actions
                        .push_back(HostAction::TrustMessage { from, bytes });
                    return Flow::Done;
                }
            }
        }
    }

    /// Data exchange (`spec/services.md` §9.5): one frame at a time; the
    /// next frame is not parsed (nor more input read) while a save or an
    /// ACK is outstanding.
    fn pump_data(
        &mut self,
        io: &mut dyn StreamIo,
        conn: ConnId,
        now: Instant,
        wall: WallTime,
    ) -> Flow {
        let l = self.cfg.limits;
        let chunk = l.read_chunk.max(1);
        let Some(Conn {
            state: ConnState::Data(st),
            remote,
        }) = self.conns.get_mut(&conn)
        else {
            return Flow::Keep;
        };
        let remote = *remote;
        loop {
            if st.out_off < st.out.len() {
                let Some(pending) = st.out.get(st.out_off..) else {
                    return Flow::Done;
                };
                match write_some(io, conn, pending) {
                    Err(()) => return Flow::Done,
                    Ok(n) => st.out_off += n,
                }
                if st.out_off < st.out.len() {
                    return Flow::Keep;
                }
                st.out.clear();
                st.out_off = 0;
                st.deadline = l.data_idle_timeout.map(|d| now + d);
            }
            if st.waiting.is_some() {
                return Flow::Keep;
            }
            let parsed = match Frame::parse(&st.inbuf, l.data_max_payload) {
                Err(_) => {
                    self.stats.protocol_errors += 1;
                    return Flow::Done;
                }
                Ok(p) => p,
            };
            if let Some((frame, n)) = parsed {
                self.stats.frames += 1;
                let rec = self.dx.on_frame(frame, remote.addr, wall);
                let trace = rec.trace_sent_at_ns.map(|s| (s, wall_ns(wall)));
                let plan = AckPlan {
                    frame_type: rec.frame_type,
                    size: rec.size,
                    refused: rec.refused,
                    trace,
                };
                match rec.store {
                    None => {
                        consume(&mut st.inbuf, n, chunk);
                        encode_ack(&mut st.out, plan, Ok(()), wall);
                    }
                    Some(Store::File {
                        file_name,
                        original,
                        data,
                    }) => {
                        // The file data is the tail of the frame.
                        let data_start = n.saturating_sub(data.len());
                        let data = if n == st.inbuf.len() {
                            let mut v = core::mem::take(&mut st.inbuf);
                            v.drain(..data_start);
                            v
                        } else {
                            let v = st.inbuf.get(data_start..n).unwrap_or_default().to_vec();
                            consume(&mut st.inbuf, n, chunk);
                            v
                        };
                        st.waiting = Some(plan);
                        self.actions.push_back(HostAction::SaveReceivedFile {
                            conn,
                            from: remote,
                            name: file_name,
                            original,
                            data,
                        });
                    }
                    Some(Store::Inbox { file_name, json }) => {
                        consume(&mut st.inbuf, n, chunk);
                        st.waiting = Some(plan);
                        self.actions.push_back(HostAction::SaveInbox {
                            conn,
                            from: remote,
                            kind: plan.frame_type,
                            size: plan.size,
                            name: file_name,
                            json,
                        });
                    }
                }
                continue;
            }
            if st.eof {
                return Flow::Done;
            }
            let want = next_read(st.inbuf.len(), dx_frame_end(&st.inbuf), chunk);
            match read_append(io, conn, &mut st.inbuf, want) {
                Ok(0) => st.eof = true,
                Ok(_) => st.deadline = l.data_idle_timeout.map(|d| now + d),
                Err(IoError::WouldBlock) => return Flow::Keep,
                Err(IoError::Closed) => return Flow::Done,
            }
        }
    }

    /// Event stream input (`spec/services.md` §9.6): whole frames go to
    /// the broker; its output is written by [`ServiceHost::flush_dirty`].
    fn pump_events(&mut self, io: &mut dyn StreamIo, conn: ConnId, now: Instant) -> Flow {
        let chunk = self.cfg.limits.read_chunk.max(1);
        let profile = self.cfg.profile;
        loop {
            let Some(Conn {
                state: ConnState::Events(st),
                remote,
            }) = self.conns.get_mut(&conn)
            else {
                return Flow::Keep;
            };
            let remote = *remote;
            let n = match Event::parse(&st.inbuf, profile) {
                Err(_) => {
                    self.stats.protocol_errors += 1;
                    return Flow::Done;
                }
                Ok(Some((_, n))) => n,
                Ok(None) => {
                    if st.eof {
                        return Flow::Done;
                    }
                    let want = next_read(st.inbuf.len(), event_frame_end(&st.inbuf), chunk);
                    match read_append(io, conn, &mut st.inbuf, want) {
                        Ok(0) => st.eof = true,
                        Ok(_) => {}
                        Err(IoError::WouldBlock) => return Flow::Keep,
                        Err(IoError::Closed) => return Flow::Done,
                    }
                    continue;
                }
            };
            let frame = if n == st.inbuf.len() {
                Bytes::from(core::mem::take(&mut st.inbuf))
            } else {
                let b = Bytes::copy_from_slice(st.inbuf.get(..n).unwrap_or_default());
                consume(&mut st.inbuf, n, chunk);
                b
            };
            let mut flow = Flow::Keep;
            for fx in self.broker.on_frame_bytes(conn.0, frame, now) {
                match fx {
                    BrokerEffect::Subscribed { topic, .. } => {
                        self.push_event(ServiceEvent::Subscribed {
                            conn,
                            remote,
                            topic,
                        });
                    }
                    BrokerEffect::Published {
                        topic,
                        size,
                        delivered,
                        ..
                    } => self.push_event(ServiceEvent::Published {
                        conn,
                        remote,
                        topic,
                        size,
                        delivered,
                    }),
                    BrokerEffect::Writable(id) => {
                        self.dirty.insert(ConnId(id));
                    }
                    BrokerEffect::QueueFull(_) => self.stats.subscriber_drops += 1,
                    BrokerEffect::RateLimited(_) => self.stats.rate_limited += 1,
                    BrokerEffect::Refused(id) if id == conn.0 => flow = Flow::Done,
                    BrokerEffect::Refused(_) => {}
                    BrokerEffect::Unsubscribed { conn: id, topic } => {
                        if id == conn.0 {
                            self.push_event(ServiceEvent::Unsubscribed {
                                conn,
                                remote,
                                topic,
                            });
                            flow = Flow::Done;
                        }
                    }
                }
            }
            if flow == Flow::Done {
                return Flow::Done;
            }
        }
    }

    /// Writes queued broker output to every connection marked dirty.
    fn flush_dirty(&mut self, io: &mut dyn StreamIo) {
        while let Some(id) = self.dirty.pop_first() {
            if self.flush_events(io, id) == Flow::Done {
                self.finish(io, id);
            }
        }
    }

    fn flush_events(&mut self, io: &mut dyn StreamIo, id: ConnId) -> Flow {
        let Some(Conn {
            state: ConnState::Events(st),
            ..
        }) = self.conns.get_mut(&id)
        else {
            return Flow::Keep;
        };
        loop {
            if st.cur.is_none() {
                st.cur = self.broker.pop_outgoing(id.0).map(|b| (b, 0));
            }
            let Some((b, off)) = st.cur.as_mut() else {
                return Flow::Keep;
            };
            let Some(rest) = b.get(*off..) else {
                st.cur = None;
                continue;
            };
            match write_some(io, id, rest) {
                Err(()) => return Flow::Done,
                Ok(0) if !rest.is_empty() => return Flow::Keep,
                Ok(n) => {
                    *off += n;
                    if *off >= b.len() {
                        st.cur = None;
                        self.broker.write_ok(id.0);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
