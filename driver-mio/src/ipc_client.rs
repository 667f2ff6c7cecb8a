//! A blocking client for the daemon's IPC socket (`spec/ipc.md`).
//!
//! [`IpcClient`] owns one `UnixStream` to the daemon. A background reader
//! thread parses frames with `pilot_proto::wire::ipc` and routes them:
//!
//! * **pushes** (`Accept`, `Recv`, `CloseOk`, `RecvFrom`, `spec/ipc.md`
//!   §2.3) go into per-port accept queues, per-connection receive queues and
//!   one datagram queue;
//! * every other frame is the reply to the single reply-expecting request
//!   the client keeps outstanding (a request lock serialises them), matched
//!   by command byte (`…Ok` or `Error`).
//!
//! `CloseOk` is always treated as "this connection is finished"; `Close` is
//! sent without waiting (`spec/ipc.md` §9.1). Every wait has a timeout so
//! nothing hangs forever, and every queue is bounded: a connection's receive
//! queue holds at most [`CONN_QUEUE_LIMIT`] bytes, after which the reader
//! thread stops reading the socket until the application consumes (the
//! daemon then stops reading the overlay stream: back-pressure end to end).
//!
//! All methods take `&self`, so one client may be shared between threads
//! (for example one thread sending a bulk stream while another receives the
//! echo).

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::{
    Command, EncodeError, Flag, HandshakeRequest, IpcError, IpcMessage, MAX_SEND_DATA,
    encode_frame, parse_frame,
};
use serde_json::Value;
use thiserror::Error;

/// Socket path used when neither `--socket` nor `PILOT_SOCKET` is given
/// (`spec/ipc.md` §1).
pub const DEFAULT_SOCKET_PATH: &str = "/tmp/pilot.sock";

/// Environment variable naming the IPC socket (`spec/ipc.md` §1).
pub const SOCKET_ENV: &str = "PILOT_SOCKET";

/// Default timeout of a request/reply exchange. It is longer than the
/// daemon's own dial deadline (about 29 s, `spec/ipc.md` §4 `Dial`), so a
/// dial that fails is reported with the daemon's message, not as a timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Most bytes buffered for one connection before the reader thread stops
/// reading the socket until the application consumes some.
pub const CONN_QUEUE_LIMIT: usize = 8 * 1024 * 1024;

/// Most accepted-but-not-yet-taken streams queued per bound port; further
/// ones are closed at once.
pub const ACCEPT_QUEUE_LIMIT: usize = 1024;

/// Most datagrams queued; the oldest is dropped when a new one arrives
/// (datagrams are unreliable anyway).
pub const DATAGRAM_QUEUE_LIMIT: usize = 1024;

/// How long a blocking socket write may make no progress before the client
/// gives up (a daemon that stops reading for this long is stuck).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The socket path to use: `explicit` if given, else `$PILOT_SOCKET`, else
/// [`DEFAULT_SOCKET_PATH`].
pub fn socket_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    match std::env::var_os(SOCKET_ENV) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(DEFAULT_SOCKET_PATH),
    }
}

/// Everything that can go wrong talking to the daemon.
#[derive(Debug, Error)]
pub enum IpcClientError {
    /// The socket could not be connected (daemon not running?).
    #[error("cannot connect to daemon at {path}: {source}")]
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A read or write on the socket failed.
    #[error("ipc i/o: {0}")]
    Io(#[from] io::Error),
    /// The daemon answered with an `Error` frame; this is its message.
    #[error("{0}")]
    Daemon(String),
    /// No answer (or no data) within the timeout.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The daemon closed the socket (or the reader thread stopped).
    #[error("daemon closed the connection")]
    Disconnected,
    /// The daemon sent something the codec rejects or a reply of the wrong
    /// kind.
    #[error("ipc protocol error: {0}")]
    Protocol(String),
    /// A request could not be encoded (a field too long, …).
    #[error("cannot encode request: {0}")]
    Encode(#[from] EncodeError),
    /// A JSON reply did not parse.
    #[error("invalid JSON from daemon: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, IpcClientError>;

/// A stream accepted on a port this client bound (`Accept` push).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Local port the stream arrived on.
    pub local_port: u16,
    /// Connection id for `send`/`recv`/`close`.
    pub conn_id: u32,
    /// Remote virtual address.
    pub remote: Addr,
    /// Remote port.
    pub remote_port: u16,
}

/// A datagram pushed by the daemon (`RecvFrom`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Source address.
    pub src: Addr,
    /// Source port.
    pub src_port: u16,
    /// Destination port (the local port).
    pub dst_port: u16,
    /// Payload.
    pub data: Vec<u8>,
}

/// Receive state of one connection.
#[derive(Default)]
struct ConnQueue {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    /// `CloseOk` arrived: no more data after the queued chunks.
    eof: bool,
}

/// State shared between the reader thread and the callers.
#[derive(Default)]
struct State {
    /// Command of the outstanding reply-expecting request.
    pending: Option<Command>,
    /// Body of its reply (success or `Error`), once it arrived.
    reply: Option<Vec<u8>>,
    conns: HashMap<u32, ConnQueue>,
    accepts: HashMap<u16, VecDeque<Accepted>>,
    datagrams: VecDeque<Datagram>,
    /// Reader thread finished (EOF, error, or shutdown).
    closed: bool,
    /// Why the reader stopped, if it was an error.
    close_reason: Option<String>,
    /// Client dropped: the reader must stop waiting for queue space.
    shutdown: bool,
    /// Replies to requests nobody waits for (e.g. a v1.8 error for a
    /// failed `Send`); the last one is kept for diagnostics.
    stray: Option<Vec<u8>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever anything in `state` changes.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A blocking IPC client (see the module docs).
pub struct IpcClient {
    shared: Arc<Shared>,
    writer: Mutex<UnixStream>,
    request_lock: Mutex<()>,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
    path: PathBuf,
}

impl std::fmt::Debug for IpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpcClient")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl IpcClient {
    /// Connects to the daemon socket at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| IpcClientError::Connect {
            path: path.clone(),
            source,
        })?;
        let reader_stream = stream.try_clone()?;
        stream.set_write_timeout(Some(WRITE_STALL_TIMEOUT))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("pilot-ipc-reader".into())
            .spawn(move || reader_loop(reader_stream, &thread_shared))?;
        Ok(IpcClient {
            shared,
            writer: Mutex::new(stream),
            request_lock: Mutex::new(()),
            reader: Some(reader),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            path,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the timeout of request/reply exchanges.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The timeout of request/reply exchanges.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the daemon side is gone.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    // ---------------------------------------------------------------
    // Low level
    // ---------------------------------------------------------------

    fn write_msg(&self, msg: &IpcMessage<'_>) -> Result<()> {
        let mut buf = vec![0u8; msg.encoded_len()];
        let n = encode_frame(msg, &mut buf)?;
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.shared.lock().closed {
            return Err(IpcClientError::Disconnected);
        }
        w.write_all(&buf[..n]).map_err(map_write_err)?;
        Ok(())
    }

    /// Sends `msg` (a request with a reply) and waits up to `timeout` for
    /// the reply. Returns the reply body, or [`IpcClientError::Daemon`] for
    /// an `Error` reply.
    pub fn request_raw(&self, msg: &IpcMessage<'_>, timeout: Duration) -> Result<Vec<u8>> {
        let cmd = msg.command();
        if cmd.reply().is_none() {
            return Err(IpcClientError::Protocol(format!(
                "{} expects no reply",
                cmd.name()
            )));
        }
        let _guard = self.request_lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(IpcClientError::Disconnected);
            }
            st.pending = Some(cmd);
            st.reply = None;
        }
        if let Err(e) = self.write_msg(msg) {
            self.shared.lock().pending = None;
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(body) = st.reply.take() {
                st.pending = None;
                drop(st);
                return reply_result(body);
            }
            if st.closed {
                st.pending = None;
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                // Leave `pending` set: a late reply is then recognised and
                // parked instead of being mistaken for the next request's.
                // The next request overwrites it.
                return Err(IpcClientError::Timeout(format!("{} reply", cmd.name())));
            }
            st = wait(&self.shared, st, deadline - now);
        }
    }

    fn request_json(&self, msg: &IpcMessage<'_>, timeout: Duration) -> Result<Value> {
        let body = self.request_raw(msg, timeout)?;
        json_payload(&body)
    }

    // ---------------------------------------------------------------
    // Streams
    // ---------------------------------------------------------------

    /// Binds `port` for this client (`Bind`); returns the bound port.
    pub fn bind(&self, port: u16) -> Result<u16> {
        let body = self.request_raw(&IpcMessage::Bind { port }, self.timeout)?;
        match IpcMessage::decode(&body) {
            Ok(IpcMessage::BindOk { port }) => {
                self.shared.lock().accepts.entry(port).or_default();
                Ok(port)
            }
            other => Err(unexpected("bind_ok", other)),
        }
    }

    /// Opens a stream to `addr:port` (`Dial`) and returns its connection id.
    /// The daemon's own deadline (about 29 s) applies; this waits at least
    /// that long.
    pub fn dial(&self, addr: Addr, port: u16) -> Result<u32> {
        self.dial_timeout(addr, port, self.timeout)
    }

    /// Like [`IpcClient::dial`], giving up after `timeout` (a
    /// [`IpcClientError::Timeout`]); the daemon may still finish the dial,
    /// and closes it when this client goes away.
    pub fn dial_timeout(&self, addr: Addr, port: u16, timeout: Duration) -> Result<u32> {
        let body = self.request_raw(&IpcMessage::Dial { addr, port }, timeout)?;
        match IpcMessage::decode(&body) {
            Ok(IpcMessage::DialOk { conn_id }) => Ok(conn_id),
            other => Err(unexpected("dial_ok", other)),
        }
    }

    /// Writes `data` on a stream (`Send`, split into frames of at most
    /// [`MAX_SEND_DATA`] bytes). No reply is expected; a broken stream shows
    /// up as end of stream on `recv`.
    pub fn send(&self, conn_id: u32, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        for chunk in data.chunks(MAX_SEND_DATA) {
            self.write_msg(&IpcMessage::Send {
                conn_id,
                data: chunk,
            })?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for data on a stream. `Ok(Some(chunk))` is data
    /// (chunk boundaries are arbitrary), `Ok(None)` is end of stream.
    pub fn recv(&self, conn_id: u32, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            match st.conns.get_mut(&conn_id) {
                Some(q) => {
                    if let Some(chunk) = q.chunks.pop_front() {
                        q.bytes -= chunk.len();
                        self.shared.changed.notify_all();
                        return Ok(Some(chunk));
                    }
                    if q.eof {
                        return Ok(None);
                    }
                }
                // Unknown (never opened, or already closed and removed).
                None => return Ok(None),
            }
            if st.closed {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IpcClientError::Timeout(format!(
                    "data on connection {conn_id}"
                )));
            }
            st = wait(&self.shared, st, deadline - now);
        }
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    /// Leftover bytes of a chunk stay queued for the next call.
    pub fn recv_exact_or_eof(
        &self,
        conn_id: u32,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut filled = 0;
        while filled < buf.len() {
            let mut st = self.shared.lock();
            let Some(q) = st.conns.get_mut(&conn_id) else {
                return Ok(filled);
            };
            if let Some(front) = q.chunks.front_mut() {
                let n = front.len().min(buf.len() - filled);
                buf[filled..filled + n].copy_from_slice(&front[..n]);
                filled += n;
                q.bytes -= n;
                if n == front.len() {
                    q.chunks.pop_front();
                } else {
                    front.drain(..n);
                }
                self.shared.changed.notify_all();
                continue;
            }
            if q.eof {
                return Ok(filled);
            }
            if st.closed {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IpcClientError::Timeout(format!(
                    "data on connection {conn_id}"
                )));
            }
            drop(wait(&self.shared, st, deadline - now));
        }
        Ok(filled)
    }

    /// Closes a stream (`Close`, sent without waiting; `spec/ipc.md` §9.1)
    /// and forgets anything still queued for it.
    pub fn close(&self, conn_id: u32) -> Result<()> {
        self.shared.lock().conns.remove(&conn_id);
        self.shared.changed.notify_all();
        self.write_msg(&IpcMessage::Close { conn_id })
    }

    /// Waits up to `timeout` for a stream accepted on `port` (which this
    /// client must have bound).
    pub fn accept(&self, port: u16, timeout: Duration) -> Result<Accepted> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(a) = st.accepts.get_mut(&port).and_then(VecDeque::pop_front) {
                return Ok(a);
            }
            if st.closed {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IpcClientError::Timeout(format!(
                    "a connection on port {port}"
                )));
            }
            st = wait(&self.shared, st, deadline - now);
        }
    }

    // ---------------------------------------------------------------
    // Datagrams
    // ---------------------------------------------------------------

    /// Sends a datagram (`SendTo`); no reply is expected.
    pub fn send_to(&self, dst: Addr, dst_port: u16, data: &[u8]) -> Result<()> {
        self.write_msg(&IpcMessage::SendTo {
            dst,
            dst_port,
            data,
        })
    }

    /// Waits up to `timeout` for a datagram whose destination port is
    /// `port`. Datagrams for other ports stay queued (bounded, oldest
    /// dropped first).
    pub fn recv_from(&self, port: u16, timeout: Duration) -> Result<Datagram> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(i) = st.datagrams.iter().position(|d| d.dst_port == port) {
                if let Some(d) = st.datagrams.remove(i) {
                    return Ok(d);
                }
            }
            if st.closed {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IpcClientError::Timeout(format!(
                    "a datagram on port {port}"
                )));
            }
            st = wait(&self.shared, st, deadline - now);
        }
    }

    // ---------------------------------------------------------------
    // Status and registry operations
    // ---------------------------------------------------------------

    /// The daemon's status object (`Info`, `spec/ipc.md` §6).
    pub fn info(&self) -> Result<Value> {
        self.request_json(&IpcMessage::Info, self.timeout)
    }

    /// Resolves a hostname through the registry (`ResolveHostname`).
    pub fn resolve_hostname(&self, hostname: &str) -> Result<Value> {
        self.request_json(&IpcMessage::ResolveHostname(hostname), self.timeout)
    }

    /// Sets the hostname; `""` clears it (`SetHostname`).
    pub fn set_hostname(&self, hostname: &str) -> Result<Value> {
        self.request_json(&IpcMessage::SetHostname(hostname), self.timeout)
    }

    /// Makes the node public (`true`) or private (`SetVisibility`).
    pub fn set_visibility(&self, public: bool) -> Result<Value> {
        self.request_json(
            &IpcMessage::SetVisibility(Flag::from_bool(public)),
            self.timeout,
        )
    }

    /// Sets the node's tags (`SetTags`, JSON array of strings).
    pub fn set_tags(&self, tags: &[&str]) -> Result<Value> {
        let json = serde_json::to_string(tags)?;
        self.request_json(&IpcMessage::SetTags(&json), self.timeout)
    }

    /// Sets the webhook URL; `""` disables it (`SetWebhook`).
    pub fn set_webhook(&self, url: &str) -> Result<Value> {
        self.request_json(&IpcMessage::SetWebhook(url), self.timeout)
    }

    /// Removes the node from the registry (`Deregister`).
    pub fn deregister(&self) -> Result<Value> {
        self.request_json(&IpcMessage::Deregister, self.timeout)
    }

    /// Health probe (`Health`, current profile).
    pub fn health(&self) -> Result<Value> {
        self.request_json(&IpcMessage::Health, self.timeout)
    }

    // ---------------------------------------------------------------
    // Trust handshake (`spec/ipc.md` §5)
    // ---------------------------------------------------------------

    /// Any handshake sub-command; returns the `HandshakeOk` JSON.
    pub fn handshake(&self, req: HandshakeRequest<'_>) -> Result<Value> {
        let timeout = match req.effective_wait_ms() {
            Some(ms) => self
                .timeout
                .max(Duration::from_millis(u64::from(ms) + 5_000)),
            None => self.timeout,
        };
        self.request_json(&IpcMessage::Handshake(req), timeout)
    }

    /// Asks `node_id` to trust us.
    pub fn handshake_request(&self, node_id: u32, justification: &str) -> Result<Value> {
        self.handshake(HandshakeRequest::Request {
            node_id,
            justification,
        })
    }

    /// Approves a pending request from `node_id`.
    pub fn handshake_approve(&self, node_id: u32) -> Result<Value> {
        self.handshake(HandshakeRequest::Approve { node_id })
    }

    /// Rejects a pending request from `node_id`.
    pub fn handshake_reject(&self, node_id: u32, reason: &str) -> Result<Value> {
        self.handshake(HandshakeRequest::Reject { node_id, reason })
    }

    /// Lists pending requests (`{"pending":[…]}`).
    pub fn handshake_pending(&self) -> Result<Value> {
        self.handshake(HandshakeRequest::ListPending)
    }

    /// Lists trusted peers (`{"trusted":[…]}`).
    pub fn handshake_trusted(&self) -> Result<Value> {
        self.handshake(HandshakeRequest::ListTrusted)
    }

    /// Revokes trust in `node_id`.
    pub fn handshake_revoke(&self, node_id: u32) -> Result<Value> {
        self.handshake(HandshakeRequest::Revoke { node_id })
    }

    /// Waits (daemon side, at most 30 s) until `node_id` is trusted
    /// (current profile); returns `{"node_id":N,"trusted":bool}`.
    pub fn handshake_wait(&self, node_id: u32, timeout: Duration) -> Result<Value> {
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        self.handshake(HandshakeRequest::WaitForTrust {
            node_id,
            timeout_ms,
        })
    }
}

impl Drop for IpcClient {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shutdown = true;
        }
        self.shared.changed.notify_all();
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn wait<'a>(
    shared: &'a Shared,
    guard: MutexGuard<'a, State>,
    dur: Duration,
) -> MutexGuard<'a, State> {
    match shared.changed.wait_timeout(guard, dur) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

fn map_write_err(e: io::Error) -> IpcClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            IpcClientError::Timeout("the daemon to read our request".into())
        }
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => IpcClientError::Disconnected,
        _ => IpcClientError::Io(e),
    }
}

fn unexpected(what: &str, got: std::result::Result<IpcMessage<'_>, IpcError>) -> IpcClientError {
    match got {
        Ok(m) => IpcClientError::Protocol(format!("expected {what}, got {}", m.command().name())),
        Err(e) => IpcClientError::Protocol(format!("expected {what}: {e}")),
    }
}

/// Turns a reply body into `Ok(body)` or the daemon's error.
fn reply_result(body: Vec<u8>) -> Result<Vec<u8>> {
    if body.first() == Some(&Command::Error.byte()) {
        return match IpcMessage::decode(&body) {
            Ok(IpcMessage::Error { message, .. }) => {
                Err(IpcClientError::Daemon(message.to_owned()))
            }
            Ok(_) => Err(IpcClientError::Protocol("malformed error frame".into())),
            Err(e) => Err(IpcClientError::Protocol(format!(
                "malformed error frame: {e}"
            ))),
        };
    }
    Ok(body)
}

/// Parses the JSON payload of a `…Ok` reply body.
fn json_payload(body: &[u8]) -> Result<Value> {
    let payload = body.get(1..).unwrap_or_default();
    if payload.is_empty() {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    Ok(serde_json::from_slice(payload)?)
}

// -------------------------------------------------------------------
// Reader thread
// -------------------------------------------------------------------

fn reader_loop(mut stream: UnixStream, shared: &Shared) {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut tmp = vec![0u8; 256 * 1024];
    let reason = 'outer: loop {
        // Route every complete frame in the buffer.
        let mut start = 0;
        loop {
            match parse_frame(&buf[start..]) {
                Ok(Some((body, used))) => {
                    if !body.is_empty() {
                        if let Err(reason) = route(shared, body) {
                            break 'outer Some(reason);
                        }
                    }
                    start += used;
                }
                Ok(None) => break,
                Err(e) => break 'outer Some(format!("bad frame from daemon: {e}")),
            }
        }
        buf.drain(..start);
        match stream.read(&mut tmp) {
            Ok(0) => break None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    let mut st = shared.lock();
    st.closed = true;
    if !st.shutdown {
        st.close_reason = reason;
    }
    drop(st);
    shared.changed.notify_all();
}

/// Routes one frame body. Blocks while the target connection's queue is
/// full. Returns an error text when the reader must stop.
fn route(shared: &Shared, body: &[u8]) -> std::result::Result<(), String> {
    let Some(&cmd_byte) = body.first() else {
        return Ok(());
    };
    let cmd = Command::from_byte(cmd_byte);
    let is_push = cmd.is_some_and(Command::is_push);
    let mut st = shared.lock();
    if !is_push {
        match (st.pending, cmd) {
            (Some(req), Some(c)) if c.completes(req) && st.reply.is_none() => {
                if req == Command::Dial && c == Command::DialOk {
                    // Register the connection now so pushes that follow the
                    // reply are kept even before the caller sees it.
                    if let Ok(IpcMessage::DialOk { conn_id }) = IpcMessage::decode(body) {
                        st.conns.entry(conn_id).or_default();
                    }
                }
                st.reply = Some(body.to_vec());
            }
            _ => st.stray = Some(body.to_vec()),
        }
        drop(st);
        shared.changed.notify_all();
        return Ok(());
    }
    let msg = IpcMessage::decode(body).map_err(|e| format!("bad push from daemon: {e}"))?;
    match msg {
        IpcMessage::Recv { conn_id, data } => {
            loop {
                if st.shutdown {
                    return Err("client dropped".into());
                }
                match st.conns.get(&conn_id) {
                    None => return Ok(()), // closed or unknown: discard
                    Some(q) if q.bytes + data.len() > CONN_QUEUE_LIMIT && q.bytes > 0 => {
                        st = match shared.changed.wait(st) {
                            Ok(g) => g,
                            Err(p) => p.into_inner(),
                        };
                    }
                    Some(_) => break,
                }
            }
            if let Some(q) = st.conns.get_mut(&conn_id) {
                if !data.is_empty() && !q.eof {
                    q.bytes += data.len();
                    q.chunks.push_back(data.to_vec());
                }
            }
        }
        IpcMessage::CloseOk { conn_id } => {
            if let Some(q) = st.conns.get_mut(&conn_id) {
                q.eof = true;
            }
        }
        IpcMessage::Accept {
            local_port,
            conn_id,
            remote,
            remote_port,
        } => {
            let q = st.accepts.entry(local_port).or_default();
            if q.len() >= ACCEPT_QUEUE_LIMIT {
                // Nobody takes them: drop this one (its data is discarded
                // and the daemon closes it when this client goes away).
                return Ok(());
            }
            q.push_back(Accepted {
                local_port,
                conn_id,
                remote,
                remote_port,
            });
            st.conns.entry(conn_id).or_default();
        }
        IpcMessage::RecvFrom {
            src,
            src_port,
            dst_port,
            data,
        } => {
            if st.datagrams.len() >= DATAGRAM_QUEUE_LIMIT {
                st.datagrams.pop_front();
            }
            st.datagrams.push_back(Datagram {
                src,
                src_port,
                dst_port,
                data: data.to_vec(),
            });
        }
        _ => {}
    }
    drop(st);
    shared.changed.notify_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A scripted fake daemon: reads frames and answers through `handler`.
    fn fake_daemon<F>(handler: F) -> (tempfile::TempDir, PathBuf, JoinHandle<()>)
    where
        F: FnMut(&[u8], &mut UnixStream) + Send + 'static,
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("d.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let h = std::thread::spawn(move || {
            let mut handler = handler;
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = Vec::new();
            let mut tmp = [0u8; 65536];
            loop {
                while let Ok(Some((body, used))) = parse_frame(&buf) {
                    let body = body.to_vec();
                    buf.drain(..used);
                    handler(&body, &mut s);
                }
                match s.read(&mut tmp) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&tmp[..n]),
                }
            }
        });
        (dir, path, h)
    }

    fn frame(msg: &IpcMessage<'_>) -> Vec<u8> {
        let mut out = vec![0u8; msg.encoded_len()];
        let n = encode_frame(msg, &mut out).expect("encode");
        out.truncate(n);
        out
    }

    #[test]
    fn bind_dial_send_recv_close_with_interleaved_pushes() {
        let (_dir, path, h) =
            fake_daemon(|body, s| match IpcMessage::decode(body).expect("decode") {
                IpcMessage::Bind { port } => {
                    // A push before the reply must not be taken as the reply.
                    s.write_all(&frame(&IpcMessage::RecvFrom {
                        src: Addr::new(0, 9),
                        src_port: 49160,
                        dst_port: 5000,
                        data: b"hi",
                    }))
                    .expect("w");
                    s.write_all(&frame(&IpcMessage::BindOk { port }))
                        .expect("w");
                }
                IpcMessage::Dial { addr, port } => {
                    assert_eq!((addr, port), (Addr::new(0, 2), 7));
                    // Reply and a data push in one write.
                    let mut out = frame(&IpcMessage::DialOk { conn_id: 5 });
                    out.extend(frame(&IpcMessage::Recv {
                        conn_id: 5,
                        data: b"hello",
                    }));
                    s.write_all(&out).expect("w");
                }
                IpcMessage::Send { conn_id, data } => {
                    s.write_all(&frame(&IpcMessage::Recv { conn_id, data }))
                        .expect("w");
                }
                IpcMessage::Close { conn_id } => {
                    s.write_all(&frame(&IpcMessage::CloseOk { conn_id }))
                        .expect("w");
                }
                IpcMessage::Info => {
                    s.write_all(&frame(&IpcMessage::InfoOk(r#"{"node_id":3}"#)))
                        .expect("w");
                }
                other => panic!("unexpected {other:?}"),
            });
        let c = IpcClient::connect(&path).expect("connect");
        assert_eq!(c.bind(1000).expect("bind"), 1000);
        let d = c.recv_from(5000, Duration::from_secs(5)).expect("dgram");
        assert_eq!(
            (d.src, d.src_port, d.data.as_slice()),
            (Addr::new(0, 9), 49160, &b"hi"[..])
        );
        let conn = c.dial(Addr::new(0, 2), 7).expect("dial");
        assert_eq!(conn, 5);
        assert_eq!(
            c.recv(conn, Duration::from_secs(5)).expect("recv"),
            Some(b"hello".to_vec())
        );
        let big = vec![7u8; MAX_SEND_DATA + 10];
        c.send(conn, &big).expect("send");
        let mut got = vec![0u8; big.len()];
        let n = c
            .recv_exact_or_eof(conn, &mut got, Duration::from_secs(5))
            .expect("recv exact");
        assert_eq!(n, big.len());
        assert_eq!(got, big);
        c.close(conn).expect("close");
        // The CloseOk answering our Close must not be mistaken for the Info reply.
        assert_eq!(c.info().expect("info")["node_id"], 3);
        drop(c);
        h.join().expect("daemon thread");
    }

    #[test]
    fn daemon_error_is_typed_and_carries_the_message() {
        let (_dir, path, h) = fake_daemon(|body, s| {
            assert_eq!(body.first(), Some(&Command::Bind.byte()));
            s.write_all(&frame(&IpcMessage::Error {
                code: 1,
                message: "port 1000 already bound",
            }))
            .expect("w");
        });
        let c = IpcClient::connect(&path).expect("connect");
        match c.bind(1000) {
            Err(IpcClientError::Daemon(m)) => assert_eq!(m, "port 1000 already bound"),
            other => panic!("unexpected {other:?}"),
        }
        drop(c);
        h.join().expect("daemon thread");
    }

    #[test]
    fn accept_push_and_remote_close_end_the_stream() {
        let (_dir, path, h) = fake_daemon(|body, s| {
            if let Ok(IpcMessage::Bind { port }) = IpcMessage::decode(body) {
                let mut out = frame(&IpcMessage::BindOk { port });
                out.extend(frame(&IpcMessage::Accept {
                    local_port: port,
                    conn_id: 11,
                    remote: Addr::new(0, 7),
                    remote_port: 49153,
                }));
                out.extend(frame(&IpcMessage::Recv {
                    conn_id: 11,
                    data: b"abc",
                }));
                out.extend(frame(&IpcMessage::CloseOk { conn_id: 11 }));
                s.write_all(&out).expect("w");
            }
        });
        let c = IpcClient::connect(&path).expect("connect");
        c.bind(1000).expect("bind");
        let a = c.accept(1000, Duration::from_secs(5)).expect("accept");
        assert_eq!(
            a,
            Accepted {
                local_port: 1000,
                conn_id: 11,
                remote: Addr::new(0, 7),
                remote_port: 49153
            }
        );
        let t = Duration::from_secs(5);
        assert_eq!(c.recv(11, t).expect("data"), Some(b"abc".to_vec()));
        assert_eq!(c.recv(11, t).expect("eof"), None);
        drop(c);
        h.join().expect("daemon thread");
    }

    #[test]
    fn silent_daemon_times_out_and_closed_daemon_disconnects() {
        let (_dir, path, h) = fake_daemon(|_, _| {});
        let mut c = IpcClient::connect(&path).expect("connect");
        c.set_timeout(Duration::from_millis(200));
        assert!(matches!(c.info(), Err(IpcClientError::Timeout(_))));
        assert!(matches!(
            c.recv(1, Duration::from_millis(50)),
            Ok(None) // unknown connection: nothing will ever come
        ));
        assert!(matches!(
            c.accept(1000, Duration::from_millis(50)),
            Err(IpcClientError::Timeout(_))
        ));
        drop(c);
        h.join().expect("daemon thread");

        // A daemon that hangs up while a request is outstanding.
        let (_dir2, path2, h2) = fake_daemon(|_, s| {
            let _ = s.shutdown(Shutdown::Both);
        });
        let c = IpcClient::connect(&path2).expect("connect");
        assert!(matches!(c.info(), Err(IpcClientError::Disconnected)));
        drop(c);
        h2.join().expect("daemon thread");
    }

    #[test]
    fn oversized_frame_from_daemon_closes_the_client() {
        let (_dir, path, h) = fake_daemon(|_, s| {
            s.write_all(&u32::MAX.to_be_bytes()).expect("w");
        });
        let c = IpcClient::connect(&path).expect("connect");
        assert!(matches!(c.info(), Err(IpcClientError::Disconnected)));
        assert!(c.is_closed());
        drop(c);
        h.join().expect("daemon thread");
    }

    #[test]
    fn handshake_and_json_commands_round_trip() {
        let (_dir, path, h) = fake_daemon(|body, s| {
            let reply = match IpcMessage::decode(body).expect("decode") {
                IpcMessage::Handshake(HandshakeRequest::Request {
                    node_id,
                    justification,
                }) => {
                    assert_eq!(justification, "hi");
                    frame(&IpcMessage::HandshakeOk(&format!(
                        r#"{{"node_id":{node_id},"status":"sent"}}"#
                    )))
                }
                IpcMessage::SetTags(json) => {
                    assert_eq!(json, r#"["a","b"]"#);
                    frame(&IpcMessage::SetTagsOk(r#"{"type":"set_tags_ok"}"#))
                }
                IpcMessage::SetVisibility(f) => {
                    assert!(f.is_set());
                    frame(&IpcMessage::SetVisibilityOk(r#"{"public":true}"#))
                }
                other => panic!("unexpected {other:?}"),
            };
            s.write_all(&reply).expect("w");
        });
        let c = IpcClient::connect(&path).expect("connect");
        let v = c.handshake_request(9, "hi").expect("handshake");
        assert_eq!(v["node_id"], 9);
        assert_eq!(v["status"], "sent");
        assert_eq!(
            c.set_tags(&["a", "b"]).expect("tags")["type"],
            "set_tags_ok"
        );
        assert_eq!(c.set_visibility(true).expect("vis")["public"], true);
        drop(c);
        h.join().expect("daemon thread");
    }

    #[test]
    fn connect_to_missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = IpcClient::connect(dir.path().join("nope.sock")).expect_err("no daemon");
        assert!(matches!(err, IpcClientError::Connect { .. }));
    }
}
