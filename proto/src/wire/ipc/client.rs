//! The client side of one IPC connection to the daemon, sans-IO
//! (`spec/ipc.md` §2.3 and §11).
//!
//! [`ClientSession`] owns everything a client of the daemon must remember
//! between frames: the receive buffer and its frame parser, the requests
//! that still wait for their reply, the per-connection receive buffers,
//! the per-port accept and datagram queues, and the counters of what it
//! dropped. It performs no I/O and reads no clock: the driver feeds the
//! bytes it read ([`ClientSession::handle_input`], at most
//! [`ClientSession::input_room`] of them), writes the frames the session
//! hands out, drains [`ClientSession::poll_transmit`] and wakes whoever
//! waits on what [`ClientSession::poll_ready`] names. Timeouts belong to the
//! driver; a request it stops waiting for is
//! [abandoned](ClientSession::abandon_request).
//!
//! The blocking client in `pilot-driver-mio` and the async one in
//! `pilot-driver-tokio` are thin wrappers around this type, so both follow
//! one policy for routing, back-pressure and bad input (`spec/ipc.md` §11):
//!
//! * a frame whose command is a push (`Accept`, `Recv`, `CloseOk`,
//!   `RecvFrom`) is routed by its ids, never taken as a reply;
//! * any other assigned command completes the oldest outstanding request it
//!   answers (its `…Ok` or `Error`); one that answers none is a counted
//!   stray, as is a frame with an unassigned command byte;
//! * a push that does not decode, or a frame longer than the 1 MiB limit,
//!   ends the session with a reason: the byte stream can no longer be
//!   trusted, and dropping stream data silently would corrupt it;
//! * a well-formed push that names something the client does not have (an
//!   unknown connection, a port it does not listen on) is a counted drop;
//!   an `Accept` that cannot be queued is answered with `Close`;
//! * a connection's receive buffer never grows past its limit (or past one
//!   frame, when empty): the session stops parsing at the first `Recv` that
//!   does not fit and [`ClientSession::input_room`] becomes 0 until the
//!   application reads, so the daemon is back-pressured instead of data
//!   being dropped; full accept and datagram queues drop the newcomer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Command, EncodeError, IpcAddr, IpcError, IpcMessage, MAX_FRAME_LEN, parse_frame};

/// Default most bytes buffered for one connection before the session stops
/// reading (`spec/ipc.md` §11).
pub const CONN_BUFFER: usize = 4 * 1024 * 1024;

/// Default most accepted-but-not-taken streams queued per listening port;
/// further ones are closed (`spec/ipc.md` §11).
pub const ACCEPT_QUEUE: usize = 256;

/// Default most datagrams queued per port; further ones are dropped
/// (`spec/ipc.md` §11).
pub const DATAGRAM_QUEUE: usize = 256;

/// Most bytes the session buffers that it has not parsed yet: one frame of
/// the largest size plus one read.
pub const INPUT_BUFFER: usize = MAX_FRAME_LEN + 64 * 1024;

/// Most requests the session remembers at once (one live, the rest
/// abandoned by callers that stopped waiting).
pub const MAX_OUTSTANDING: usize = 16;

/// Most frames the session itself wants sent (`Close` for refused accepts
/// and abandoned dials) before further ones are dropped and counted.
pub const MAX_TRANSMITS: usize = 4096;

/// The bounds of one session's queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Bytes buffered per connection (see [`CONN_BUFFER`]).
    pub conn_buffer: usize,
    /// Accepted streams queued per port (see [`ACCEPT_QUEUE`]).
    pub accept_queue: usize,
    /// Datagrams queued per port (see [`DATAGRAM_QUEUE`]).
    pub datagram_queue: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            conn_buffer: CONN_BUFFER,
            accept_queue: ACCEPT_QUEUE,
            datagram_queue: DATAGRAM_QUEUE,
        }
    }
}

/// A stream accepted on a port the client listens on (`Accept` push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Local port the stream arrived on.
    pub local_port: u16,
    /// Connection id for `Send`/`Close`.
    pub conn_id: u32,
    /// Remote virtual address.
    pub remote: IpcAddr,
    /// Remote port.
    pub remote_port: u16,
}

/// A datagram pushed by the daemon (`RecvFrom`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Source address.
    pub src: IpcAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination (local) port.
    pub dst_port: u16,
    /// Payload.
    pub data: Vec<u8>,
}

/// Something a waiter may now make progress on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ready {
    /// The live request's reply arrived ([`ClientSession::take_reply`]).
    Reply,
    /// Data or end of stream arrived on this connection.
    Conn(u32),
    /// An accepted stream is queued on this port.
    Accept(u16),
    /// A datagram is queued on this port.
    Datagram(u16),
    /// The session ended ([`ClientSession::close_reason`]).
    Closed,
}

/// What reading a connection gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Read<T> {
    /// Data.
    Data(T),
    /// The stream ended (`CloseOk`), or the connection is unknown.
    Eof,
    /// Nothing yet.
    Pending,
    /// The session ended before the stream did.
    Closed,
}

/// Why a request could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The session has ended.
    #[error("the daemon connection is closed")]
    Closed,
    /// Another request is still waiting for its reply (one at a time,
    /// `spec/ipc.md` §2.3).
    #[error("another request is outstanding")]
    Busy,
    /// The command has no reply to wait for (`Send`, `SendTo`, `Close`, …).
    #[error("{0} expects no reply")]
    NoReply(&'static str),
    /// The request does not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Why a reply is not the success the caller wanted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The daemon answered with an `Error` frame; this is its message.
    #[error("{0}")]
    Daemon(String),
    /// The reply does not decode.
    #[error("malformed {command} reply: {error}")]
    Malformed {
        /// The reply's command name.
        command: &'static str,
        /// The decoder's error.
        error: IpcError,
    },
}

/// The reply to a request, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    request: Command,
    body: Vec<u8>,
}

impl Reply {
    /// The request this answers.
    pub fn request(&self) -> Command {
        self.request
    }

    /// The whole frame body (command byte first).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, owned.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The decoded reply, or the daemon's `Error` message.
    pub fn message(&self) -> Result<IpcMessage<'_>, ReplyError> {
        let name = || {
            self.body
                .first()
                .and_then(|b| Command::from_byte(*b))
                .map_or("unknown", Command::name)
        };
        match IpcMessage::decode(&self.body) {
            Ok(IpcMessage::Error { message, .. }) => Err(ReplyError::Daemon(message.to_owned())),
            Ok(m) => Ok(m),
            Err(error) => Err(ReplyError::Malformed {
                command: name(),
                error,
            }),
        }
    }

    /// The payload after the command byte of a success reply (JSON for most
    /// commands), or the daemon's `Error` message.
    pub fn payload(&self) -> Result<&[u8], ReplyError> {
        self.message()?;
        Ok(self.body.get(1..).unwrap_or_default())
    }
}

/// What the session dropped or ignored, by cause (`spec/ipc.md` §11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Replies that answered no outstanding request, and frames with an
    /// unassigned command byte.
    pub stray_frames: u64,
    /// Replies to requests the caller had abandoned.
    pub abandoned_replies: u64,
    /// `Recv` pushes for unknown or finished connections.
    pub discarded_recv: u64,
    /// `Accept` pushes refused: port not listening or queue full (both
    /// answered with `Close`), or a connection id already in use (ignored).
    pub refused_accepts: u64,
    /// `RecvFrom` pushes dropped (port not open for datagrams, queue full).
    pub dropped_datagrams: u64,
    /// Frames the session wanted to send but could not queue.
    pub dropped_transmits: u64,
}

/// Receive state of one connection.
#[derive(Debug, Default)]
struct Conn {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already read.
    front_off: usize,
    /// Unread bytes in `chunks`.
    bytes: usize,
    /// `CloseOk` arrived: nothing follows the queued chunks.
    eof: bool,
}

/// What the client uses a port for, and what is queued on it.
#[derive(Debug, Default)]
struct Port {
    listening: bool,
    datagrams: bool,
    accepts: VecDeque<Accepted>,
    dgrams: VecDeque<Datagram>,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    command: Command,
    abandoned: bool,
}

/// The client side of one IPC connection (see the module docs).
#[derive(Debug)]
pub struct ClientSession {
    limits: SessionLimits,
    input: Vec<u8>,
    /// Connection whose full buffer holds up the next frame.
    stalled_on: Option<u32>,
    outstanding: VecDeque<Outstanding>,
    reply: Option<Reply>,
    conns: BTreeMap<u32, Conn>,
    ports: BTreeMap<u16, Port>,
    transmits: VecDeque<Vec<u8>>,
    ready: BTreeSet<Ready>,
    /// `Some` once ended; the inner text says why (none: the daemon hung up).
    closed: Option<Option<String>>,
    stray: Option<Vec<u8>>,
    stats: SessionStats,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new(SessionLimits::default())
    }
}

/// Encodes `msg` as one frame in a new buffer.
pub fn frame(msg: &IpcMessage<'_>) -> Result<Vec<u8>, EncodeError> {
    let mut out = vec![0u8; msg.encoded_len()];
    let n = super::encode_frame(msg, &mut out)?;
    out.truncate(n);
    Ok(out)
}

fn close_frame(conn_id: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.extend_from_slice(&5u32.to_be_bytes());
    out.push(Command::Close.byte());
    out.extend_from_slice(&conn_id.to_be_bytes());
    out
}

impl ClientSession {
    /// A fresh session with these bounds.
    pub fn new(limits: SessionLimits) -> Self {
        ClientSession {
            limits,
            input: Vec::new(),
            stalled_on: None,
            outstanding: VecDeque::new(),
            reply: None,
            conns: BTreeMap::new(),
            ports: BTreeMap::new(),
            transmits: VecDeque::new(),
            ready: BTreeSet::new(),
            closed: None,
            stray: None,
            stats: SessionStats::default(),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// What was dropped so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The last stray reply (for diagnostics: a v1.8 daemon answers a
    /// failed `Send` with an `Error` nobody waits for).
    pub fn last_stray(&self) -> Option<&[u8]> {
        self.stray.as_deref()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the session ended, when it was not a plain hang-up.
    pub fn close_reason(&self) -> Option<&str> {
        self.closed.as_ref().and_then(|r| r.as_deref())
    }

    // -----------------------------------------------------------------
    // Input
    // -----------------------------------------------------------------

    /// How many bytes [`ClientSession::handle_input`] takes now: 0 while a
    /// connection's full buffer holds up the next frame, or once closed.
    pub fn input_room(&self) -> usize {
        if self.closed.is_some() || self.stalled_on.is_some() {
            return 0;
        }
        INPUT_BUFFER.saturating_sub(self.input.len())
    }

    /// Takes bytes read from the socket (at most
    /// [`ClientSession::input_room`]; the rest is not taken) and routes
    /// every complete frame. Returns how many bytes were taken.
    pub fn handle_input(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.input_room());
        self.input
            .extend_from_slice(data.get(..n).unwrap_or_default());
        self.process();
        n
    }

    /// The socket ended: `reason` is `None` for a clean hang-up, else what
    /// failed. Every waiter is told.
    pub fn handle_closed(&mut self, reason: Option<String>) {
        self.fail(reason);
    }

    fn fail(&mut self, reason: Option<String>) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.input = Vec::new();
            self.stalled_on = None;
            self.outstanding.clear();
            self.ready.insert(Ready::Closed);
        }
    }

    /// Routes buffered frames until none is complete or one is held up.
    fn process(&mut self) {
        // Taken out so routing can borrow the bodies while it mutates the
        // rest of the session; put back (minus what was routed) below.
        let input = std::mem::take(&mut self.input);
        let mut start = 0;
        while self.closed.is_none() {
            let rest = input.get(start..).unwrap_or_default();
            match parse_frame(rest) {
                Ok(Some((body, used))) => {
                    if !self.route(body) {
                        break; // held up; the frame stays buffered
                    }
                    start += used;
                }
                Ok(None) => break,
                Err(e) => self.fail(Some(format!("bad frame from daemon: {e}"))),
            }
        }
        if self.closed.is_none() {
            let mut input = input;
            input.drain(..start.min(input.len()));
            self.input = input;
        }
    }

    /// Routes one body; false when it must wait for buffer space.
    fn route(&mut self, body: &[u8]) -> bool {
        let Some(&byte) = body.first() else {
            return true; // zero-length frame: nothing (spec/ipc.md §2.2)
        };
        let Some(cmd) = Command::from_byte(byte) else {
            self.stats.stray_frames += 1;
            self.stray = Some(body.to_vec());
            return true;
        };
        if !cmd.is_push() {
            self.route_reply(cmd, body);
            return true;
        }
        let msg = match IpcMessage::decode(body) {
            Ok(m) => m,
            Err(e) => {
                self.fail(Some(format!("bad {} push from daemon: {e}", cmd.name())));
                return true;
            }
        };
        match msg {
            IpcMessage::Recv { conn_id, data } => {
                let limit = self.limits.conn_buffer;
                let Some(c) = self.conns.get_mut(&conn_id).filter(|c| !c.eof) else {
                    self.stats.discarded_recv += 1;
                    return true;
                };
                if data.is_empty() {
                    return true;
                }
                if c.bytes > 0 && c.bytes.saturating_add(data.len()) > limit {
                    self.stalled_on = Some(conn_id);
                    return false;
                }
                c.bytes += data.len();
                c.chunks.push_back(data.to_vec());
                self.stalled_on = None;
                self.ready.insert(Ready::Conn(conn_id));
            }
            IpcMessage::CloseOk { conn_id } => {
                // Also the answer to our own Close (spec/ipc.md §9.1).
                if let Some(c) = self.conns.get_mut(&conn_id) {
                    c.eof = true;
                    self.ready.insert(Ready::Conn(conn_id));
                }
            }
            IpcMessage::Accept {
                local_port,
                conn_id,
                remote,
                remote_port,
            } => {
                let limit = self.limits.accept_queue;
                let fresh = !self.conns.contains_key(&conn_id);
                match self.ports.get_mut(&local_port) {
                    Some(p) if fresh && p.listening && p.accepts.len() < limit => {
                        p.accepts.push_back(Accepted {
                            local_port,
                            conn_id,
                            remote,
                            remote_port,
                        });
                        self.conns.insert(conn_id, Conn::default());
                        self.ready.insert(Ready::Accept(local_port));
                    }
                    _ => {
                        self.stats.refused_accepts += 1;
                        if fresh {
                            self.queue_transmit(close_frame(conn_id));
                        }
                    }
                }
            }
            IpcMessage::RecvFrom {
                src,
                src_port,
                dst_port,
                data,
            } => {
                let limit = self.limits.datagram_queue;
                match self.ports.get_mut(&dst_port) {
                    Some(p) if p.datagrams && p.dgrams.len() < limit => {
                        p.dgrams.push_back(Datagram {
                            src,
                            src_port,
                            dst_port,
                            data: data.to_vec(),
                        });
                        self.ready.insert(Ready::Datagram(dst_port));
                    }
                    _ => self.stats.dropped_datagrams += 1,
                }
            }
            _ => {}
        }
        true
    }

    fn route_reply(&mut self, cmd: Command, body: &[u8]) {
        let Some(i) = self
            .outstanding
            .iter()
            .position(|o| cmd.completes(o.command))
        else {
            self.stats.stray_frames += 1;
            self.stray = Some(body.to_vec());
            return;
        };
        let Some(o) = self.outstanding.remove(i) else {
            return;
        };
        let dialed = match IpcMessage::decode(body) {
            Ok(IpcMessage::DialOk { conn_id }) => Some(conn_id),
            _ => None,
        };
        if o.abandoned {
            self.stats.abandoned_replies += 1;
            if let Some(id) = dialed {
                // Nobody will use it: close it at once.
                self.queue_transmit(close_frame(id));
            }
            return;
        }
        if let Some(id) = dialed {
            // Register now, so the pushes right behind the reply are kept
            // before the caller has even seen the id.
            self.conns.entry(id).or_default();
        }
        self.reply = Some(Reply {
            request: o.command,
            body: body.to_vec(),
        });
        self.ready.insert(Ready::Reply);
    }

    fn queue_transmit(&mut self, frame: Vec<u8>) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.stats.dropped_transmits += 1;
        } else {
            self.transmits.push_back(frame);
        }
    }

    // -----------------------------------------------------------------
    // Output
    // -----------------------------------------------------------------

    /// A frame the session wants sent (a `Close` for an accept it refused or
    /// a dial nobody waits for). Write it whole, in order, between the
    /// caller's own frames.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next thing that became ready since the last call (each at most
    /// once until it is reported).
    pub fn poll_ready(&mut self) -> Option<Ready> {
        self.ready.pop_first()
    }

    // -----------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------

    /// Starts a request that expects a reply and returns its frame to send.
    /// At most one live request at a time.
    pub fn request(&mut self, msg: &IpcMessage<'_>) -> Result<Vec<u8>, RequestError> {
        let cmd = msg.command();
        if self.closed.is_some() {
            return Err(RequestError::Closed);
        }
        if cmd.reply().is_none_or(|r| r.is_push()) {
            return Err(RequestError::NoReply(cmd.name()));
        }
        if self.outstanding.iter().any(|o| !o.abandoned) || self.reply.is_some() {
            return Err(RequestError::Busy);
        }
        let bytes = frame(msg)?;
        if self.outstanding.len() >= MAX_OUTSTANDING {
            // Only abandoned ones can be here: forget the oldest. Its reply,
            // if it ever comes, is then a stray.
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            command: cmd,
            abandoned: false,
        });
        Ok(bytes)
    }

    /// The live request's reply, once it arrived.
    pub fn take_reply(&mut self) -> Option<Reply> {
        self.reply.take()
    }

    /// Whether a live request waits for its reply.
    pub fn request_outstanding(&self) -> bool {
        self.outstanding.iter().any(|o| !o.abandoned)
    }

    /// The caller stopped waiting for the live request (timeout, cancel).
    /// A reply already here is discarded; one that comes later is counted
    /// and dropped; a dial's connection is closed either way.
    pub fn abandon_request(&mut self) {
        if let Some(o) = self.outstanding.iter_mut().find(|o| !o.abandoned) {
            o.abandoned = true;
        }
        if let Some(r) = self.reply.take() {
            self.stats.abandoned_replies += 1;
            if let Ok(IpcMessage::DialOk { conn_id }) = IpcMessage::decode(&r.body) {
                self.forget(conn_id);
                self.queue_transmit(close_frame(conn_id));
            }
        }
    }

    // -----------------------------------------------------------------
    // Connections
    // -----------------------------------------------------------------

    /// Whether `conn_id` is known and its stream has not ended (so `Send`
    /// on it makes sense).
    pub fn is_writable(&self, conn_id: u32) -> bool {
        self.closed.is_none() && self.conns.get(&conn_id).is_some_and(|c| !c.eof)
    }

    /// Unread bytes buffered for `conn_id`.
    pub fn buffered(&self, conn_id: u32) -> usize {
        self.conns.get(&conn_id).map_or(0, |c| c.bytes)
    }

    fn read_state(&self, conn_id: u32) -> Option<Read<()>> {
        match self.conns.get(&conn_id) {
            None => Some(Read::Eof),
            Some(c) if c.bytes > 0 => None,
            Some(c) if c.eof => Some(Read::Eof),
            Some(_) if self.closed.is_some() => Some(Read::Closed),
            Some(_) => Some(Read::Pending),
        }
    }

    fn map_state<T>(r: Read<()>) -> Read<T> {
        match r {
            Read::Data(()) | Read::Pending => Read::Pending,
            Read::Eof => Read::Eof,
            Read::Closed => Read::Closed,
        }
    }

    /// Copies up to `buf.len()` buffered bytes of `conn_id` into `buf`.
    pub fn read(&mut self, conn_id: u32, buf: &mut [u8]) -> Read<usize> {
        if let Some(s) = self.read_state(conn_id) {
            return Self::map_state(s);
        }
        let mut filled = 0;
        if let Some(c) = self.conns.get_mut(&conn_id) {
            while filled < buf.len() {
                let Some(front) = c.chunks.front() else { break };
                let avail = front.get(c.front_off..).unwrap_or_default();
                let n = avail.len().min(buf.len() - filled);
                if let (Some(dst), Some(src)) = (buf.get_mut(filled..filled + n), avail.get(..n)) {
                    dst.copy_from_slice(src);
                }
                filled += n;
                c.bytes -= n;
                c.front_off += n;
                if c.front_off >= front.len() {
                    c.chunks.pop_front();
                    c.front_off = 0;
                }
            }
        }
        self.resume_if(conn_id);
        Read::Data(filled)
    }

    /// Takes the next buffered chunk of `conn_id` (chunk boundaries are
    /// arbitrary).
    pub fn read_chunk(&mut self, conn_id: u32) -> Read<Vec<u8>> {
        if let Some(s) = self.read_state(conn_id) {
            return Self::map_state(s);
        }
        let mut out = Vec::new();
        if let Some(c) = self.conns.get_mut(&conn_id) {
            if let Some(mut chunk) = c.chunks.pop_front() {
                chunk.drain(..c.front_off.min(chunk.len()));
                c.front_off = 0;
                c.bytes -= chunk.len();
                out = chunk;
            }
        }
        self.resume_if(conn_id);
        Read::Data(out)
    }

    /// Resumes parsing if `conn_id` was what held it up.
    fn resume_if(&mut self, conn_id: u32) {
        if self.stalled_on == Some(conn_id) {
            self.stalled_on = None;
            self.process();
        }
    }

    /// Forgets `conn_id` (anything still buffered is dropped) and returns
    /// the `Close` frame to send after the stream's last `Send`
    /// (`spec/ipc.md` §9.1: no reply is awaited).
    pub fn close(&mut self, conn_id: u32) -> Vec<u8> {
        self.forget(conn_id);
        close_frame(conn_id)
    }

    /// Forgets `conn_id` without sending anything (its `Close` already
    /// went out).
    pub fn forget(&mut self, conn_id: u32) {
        self.conns.remove(&conn_id);
        self.resume_if(conn_id);
    }

    // -----------------------------------------------------------------
    // Ports
    // -----------------------------------------------------------------

    /// Queues the streams accepted on `port` from now on.
    pub fn listen(&mut self, port: u16) {
        self.ports.entry(port).or_default().listening = true;
    }

    /// Stops queueing accepts on `port`; the queued ones are closed.
    pub fn stop_listening(&mut self, port: u16) {
        let Some(p) = self.ports.get_mut(&port) else {
            return;
        };
        p.listening = false;
        let queued: Vec<u32> = p.accepts.drain(..).map(|a| a.conn_id).collect();
        for id in queued {
            self.forget(id);
            self.queue_transmit(close_frame(id));
        }
    }

    /// Whether accepts on `port` are queued.
    pub fn is_listening(&self, port: u16) -> bool {
        self.ports.get(&port).is_some_and(|p| p.listening)
    }

    /// Queues the datagrams sent to `port` from now on.
    pub fn open_datagrams(&mut self, port: u16) {
        self.ports.entry(port).or_default().datagrams = true;
    }

    /// Stops queueing datagrams for `port` and drops the queued ones.
    pub fn close_datagrams(&mut self, port: u16) {
        if let Some(p) = self.ports.get_mut(&port) {
            p.datagrams = false;
            p.dgrams.clear();
        }
    }

    /// Whether datagrams for `port` are queued.
    pub fn has_datagrams(&self, port: u16) -> bool {
        self.ports.get(&port).is_some_and(|p| p.datagrams)
    }

    /// The oldest stream accepted on `port` and not yet taken.
    pub fn accept(&mut self, port: u16) -> Option<Accepted> {
        self.ports.get_mut(&port)?.accepts.pop_front()
    }

    /// The oldest datagram queued for `port`.
    pub fn recv_datagram(&mut self, port: u16) -> Option<Datagram> {
        self.ports.get_mut(&port)?.dgrams.pop_front()
    }
}

#[cfg(test)]
mod tests;
