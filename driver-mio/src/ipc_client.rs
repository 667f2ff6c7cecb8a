//! A blocking client for the daemon's IPC socket (`spec/ipc.md`).
//!
//! [`IpcClient`] owns one `UnixStream` to the daemon and one
//! [`ClientSession`], the sans-IO client session of `pilot-proto` that
//! decides everything about routing, buffering and bad input
//! (`spec/ipc.md` §11). This file only moves bytes and blocks: a background
//! reader thread feeds what it reads into the session (never more than the
//! session has room for, so a full connection buffer back-pressures the
//! daemon), writes the `Close` frames the session asks for, and wakes the
//! callers, which wait on a condition variable with a timeout.
//!
//! Requests that expect a reply are serialised by a lock (one outstanding,
//! `spec/ipc.md` §2.3); one whose caller times out is abandoned, and a dial
//! abandoned that way is closed when its reply comes. `Close` is sent
//! without waiting (`spec/ipc.md` §9.1).
//!
//! All methods take `&self`, so one client may be shared between threads
//! (for example one thread sending a bulk stream while another receives the
//! echo).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pilot_proto::addr::Addr;
pub use pilot_proto::wire::ipc::client::{Accepted, Datagram};
use pilot_proto::wire::ipc::client::{
    ClientSession, Read as SessionRead, ReplyError, RequestError,
};
use pilot_proto::wire::ipc::{
    EncodeError, Flag, HandshakeRequest, IpcError, IpcMessage, MAX_SEND_DATA, client,
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

/// How long a blocking socket write may make no progress before the client
/// gives up (a daemon that stops reading for this long is stuck).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest single socket read of the reader thread.
const READ_CHUNK: usize = 256 * 1024;

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

/// State shared between the reader thread and the callers.
struct State {
    session: ClientSession,
    /// Client dropped: the reader must stop waiting for input room.
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever anything in `state` changes.
    changed: Condvar,
    writer: Mutex<UnixStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &'a self,
        guard: MutexGuard<'a, State>,
        dur: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match dur {
            Some(d) => match self.changed.wait_timeout(guard, d) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            },
            None => self.changed.wait(guard).unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Writes one whole frame.
    fn write_raw(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if self.lock().session.is_closed() {
            return Err(IpcClientError::Disconnected);
        }
        w.write_all(bytes).map_err(map_write_err)
    }

    /// Wakes the waiters after a session change and sends the frames the
    /// session asked for.
    fn settle(&self, mut st: MutexGuard<'_, State>) {
        while st.session.poll_ready().is_some() {}
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| st.session.poll_transmit()).collect();
        drop(st);
        self.changed.notify_all();
        for frame in out {
            // Best effort: the daemon also closes them when we go away.
            if self.write_raw(&frame).is_err() {
                break;
            }
        }
    }
}

/// A blocking IPC client (see the module docs).
pub struct IpcClient {
    shared: Arc<Shared>,
    request_lock: Mutex<()>,
    reader: Option<JoinHandle<()>>,
    timeout: Duration,
    path: PathBuf,
}

/// The peer address in a `ResolveHostname` reply: its `address`, else
/// node `node_id` of network 0.
pub fn resolved_addr(reply: &Value) -> Option<Addr> {
    reply
        .get("address")
        .and_then(Value::as_str)
        .and_then(|s| s.parse::<Addr>().ok())
        .or_else(|| {
            reply
                .get("node_id")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .map(|n| Addr::new(0, n))
        })
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
            state: Mutex::new(State {
                session: ClientSession::default(),
                shutdown: false,
            }),
            changed: Condvar::new(),
            writer: Mutex::new(stream),
        });
        let thread_shared = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("pilot-ipc-reader".into())
            .spawn(move || reader_loop(reader_stream, &thread_shared))?;
        Ok(IpcClient {
            shared,
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
        self.shared.lock().session.is_closed()
    }

    /// Why the session ended, when it was not a plain hang-up (a bad frame
    /// from the daemon, a read error).
    pub fn close_reason(&self) -> Option<String> {
        self.shared.lock().session.close_reason().map(str::to_owned)
    }

    /// What the session dropped so far (`spec/ipc.md` §11).
    pub fn stats(&self) -> client::SessionStats {
        self.shared.lock().session.stats()
    }

    // ---------------------------------------------------------------
    // Low level
    // ---------------------------------------------------------------

    fn write_msg(&self, msg: &IpcMessage<'_>) -> Result<()> {
        self.shared.write_raw(&client::frame(msg)?)
    }

    /// Sends `msg` (a request with a reply) and waits up to `timeout` for
    /// the reply. Returns the reply body, or [`IpcClientError::Daemon`] for
    /// an `Error` reply.
    pub fn request_raw(&self, msg: &IpcMessage<'_>, timeout: Duration) -> Result<Vec<u8>> {
        let cmd = msg.command();
        let _guard = self.request_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = self
            .shared
            .lock()
            .session
            .request(msg)
            .map_err(|e| match e {
                RequestError::Closed => IpcClientError::Disconnected,
                RequestError::Encode(e) => IpcClientError::Encode(e),
                other => IpcClientError::Protocol(other.to_string()),
            })?;
        if let Err(e) = self.shared.write_raw(&bytes) {
            let mut st = self.shared.lock();
            st.session.abandon_request();
            self.shared.settle(st);
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(reply) = st.session.take_reply() {
                drop(st);
                return match reply.payload() {
                    Ok(_) => Ok(reply.into_body()),
                    Err(ReplyError::Daemon(m)) => Err(IpcClientError::Daemon(m)),
                    Err(e) => Err(IpcClientError::Protocol(e.to_string())),
                };
            }
            if st.session.is_closed() {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                // A late reply is then recognised and dropped (a dial's
                // connection closed) instead of being taken for the next
                // request's.
                st.session.abandon_request();
                self.shared.settle(st);
                return Err(IpcClientError::Timeout(format!("{} reply", cmd.name())));
            }
            st = self.shared.wait(st, Some(deadline - now));
        }
    }

    /// Sends `msg` and returns its JSON reply (within the client's timeout).
    pub fn request_value(&self, msg: &IpcMessage<'_>) -> Result<Value> {
        self.request_json(msg, self.timeout)
    }

    fn request_json(&self, msg: &IpcMessage<'_>, timeout: Duration) -> Result<Value> {
        let body = self.request_raw(msg, timeout)?;
        json_payload(&body)
    }

    /// Waits until `take` gives something, the session ends or `timeout`
    /// passes (`what` names it in the timeout error).
    fn wait_for<T>(
        &self,
        timeout: Duration,
        what: impl FnOnce() -> String,
        mut take: impl FnMut(&mut ClientSession) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = take(&mut st.session) {
                self.shared.settle(st);
                return r;
            }
            if st.session.is_closed() {
                return Err(IpcClientError::Disconnected);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(IpcClientError::Timeout(what()));
            }
            st = self.shared.wait(st, Some(deadline - now));
        }
    }

    // ---------------------------------------------------------------
    // Streams
    // ---------------------------------------------------------------

    /// Binds `port` for this client (`Bind`); returns the bound port. The
    /// session queues accepts and datagrams for the port from before the
    /// request, so none that follow the reply at once is lost.
    pub fn bind(&self, port: u16) -> Result<u16> {
        {
            let mut st = self.shared.lock();
            st.session.listen(port);
            st.session.open_datagrams(port);
        }
        let body = self.request_raw(&IpcMessage::Bind { port }, self.timeout)?;
        match IpcMessage::decode(&body) {
            Ok(IpcMessage::BindOk { port }) => Ok(port),
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
    /// [`IpcClientError::Timeout`]); a dial the daemon still finishes is
    /// closed as soon as its reply arrives.
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
        for chunk in data.chunks(MAX_SEND_DATA) {
            self.write_msg(&IpcMessage::Send {
                conn_id,
                data: chunk,
            })?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for data on a stream. `Ok(Some(chunk))` is data
    /// (chunk boundaries are arbitrary), `Ok(None)` is end of stream (or a
    /// connection this client does not know).
    pub fn recv(&self, conn_id: u32, timeout: Duration) -> Result<Option<Vec<u8>>> {
        self.wait_for(
            timeout,
            || format!("data on connection {conn_id}"),
            |s| match s.read_chunk(conn_id) {
                SessionRead::Data(chunk) => Some(Ok(Some(chunk))),
                SessionRead::Eof => Some(Ok(None)),
                SessionRead::Closed => Some(Err(IpcClientError::Disconnected)),
                SessionRead::Pending => None,
            },
        )
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    /// Leftover bytes of a chunk stay queued for the next call.
    pub fn recv_exact_or_eof(
        &self,
        conn_id: u32,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize> {
        let mut filled = 0;
        self.wait_for(
            timeout,
            || format!("data on connection {conn_id}"),
            |s| loop {
                if filled == buf.len() {
                    return Some(Ok(filled));
                }
                match s.read(conn_id, buf.get_mut(filled..).unwrap_or_default()) {
                    SessionRead::Data(n) => filled += n,
                    SessionRead::Eof => return Some(Ok(filled)),
                    SessionRead::Closed => return Some(Err(IpcClientError::Disconnected)),
                    SessionRead::Pending => return None,
                }
            },
        )
    }

    /// Closes a stream (`Close`, sent without waiting; `spec/ipc.md` §9.1)
    /// and forgets anything still queued for it.
    pub fn close(&self, conn_id: u32) -> Result<()> {
        let mut st = self.shared.lock();
        let frame = st.session.close(conn_id);
        self.shared.settle(st);
        self.shared.write_raw(&frame)
    }

    /// Waits up to `timeout` for a stream accepted on `port` (which this
    /// client must have bound).
    pub fn accept(&self, port: u16, timeout: Duration) -> Result<Accepted> {
        self.wait_for(
            timeout,
            || format!("a connection on port {port}"),
            |s| s.accept(port).map(Ok),
        )
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
    /// `port`. From the first call on (or [`IpcClient::bind`]), datagrams for
    /// the port are queued (bounded; the newcomer is dropped when full).
    pub fn recv_from(&self, port: u16, timeout: Duration) -> Result<Datagram> {
        self.shared.lock().session.open_datagrams(port);
        self.wait_for(
            timeout,
            || format!("a datagram on port {port}"),
            |s| s.recv_datagram(port).map(Ok),
        )
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

    /// Rotates the node's identity key (`RotateKey`, `spec/daemon.md`
    /// §2.9): the registry's `rotate_key_ok` object plus `persisted`.
    pub fn rotate_key(&self) -> Result<Value> {
        self.request_json(&IpcMessage::RotateKey, self.timeout)
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
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        if let Ok(w) = self.shared.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
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

/// Feeds the session what the socket gives, never more than it has room
/// for, until the socket ends, the session ends or the client is dropped.
fn reader_loop(mut stream: UnixStream, shared: &Shared) {
    let mut tmp = vec![0u8; READ_CHUNK];
    let reason = loop {
        let room = {
            let mut st = shared.lock();
            loop {
                if st.shutdown || st.session.is_closed() {
                    break 0;
                }
                let room = st.session.input_room();
                if room > 0 {
                    break room;
                }
                // A connection's buffer is full: wait for the application.
                st = shared.wait(st, None);
            }
        };
        if room == 0 {
            break None;
        }
        let want = room.min(tmp.len());
        match stream.read(tmp.get_mut(..want).unwrap_or_default()) {
            Ok(0) => break None,
            Ok(n) => {
                let mut st = shared.lock();
                st.session.handle_input(tmp.get(..n).unwrap_or_default());
                shared.settle(st);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    let mut st = shared.lock();
    let reason = if st.shutdown { None } else { reason };
    st.session.handle_closed(reason);
    shared.settle(st);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pilot_proto::wire::ipc::{Command, encode_frame, parse_frame};
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
                    // A push before the reply must not be taken as the
                    // reply, and is kept: the port is open from before the
                    // request. (A datagram for a port this client never
                    // opened is dropped: every client gets every datagram.)
                    s.write_all(&frame(&IpcMessage::RecvFrom {
                        src: Addr::new(0, 9),
                        src_port: 49160,
                        dst_port: 5001,
                        data: b"not ours",
                    }))
                    .expect("w");
                    s.write_all(&frame(&IpcMessage::RecvFrom {
                        src: Addr::new(0, 9),
                        src_port: 49160,
                        dst_port: port,
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
        let d = c.recv_from(1000, Duration::from_secs(5)).expect("dgram");
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
        assert_eq!(c.stats().dropped_datagrams, 1, "the one for port 5001");
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
    fn an_accept_nobody_listens_for_is_answered_with_close() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (_dir, path, h) = fake_daemon(move |body, s| match IpcMessage::decode(body) {
            Ok(IpcMessage::Bind { port }) => {
                let mut out = frame(&IpcMessage::BindOk { port });
                out.extend(frame(&IpcMessage::Accept {
                    local_port: port + 1,
                    conn_id: 21,
                    remote: Addr::new(0, 7),
                    remote_port: 49153,
                }));
                s.write_all(&out).expect("w");
            }
            Ok(IpcMessage::Close { conn_id }) => tx.send(conn_id).expect("send"),
            other => panic!("unexpected {other:?}"),
        });
        let c = IpcClient::connect(&path).expect("connect");
        c.bind(1000).expect("bind");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(21));
        assert_eq!(c.stats().refused_accepts, 1);
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
