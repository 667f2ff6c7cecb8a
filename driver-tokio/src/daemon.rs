//! Async client of a running `pilot-daemon` over its IPC socket
//! (`spec/ipc.md`), handing out the same [`Stream`], [`Listener`] and
//! [`DatagramSocket`] types as the embedded node.
//!
//! One reader task owns the read half of the Unix socket and routes every
//! frame: pushes (`Accept`, `Recv`, `CloseOk`, `RecvFrom`) by command byte
//! to per-connection and per-port queues, anything else as the reply to the
//! one outstanding request. Requests that expect a reply are serialised
//! (at most one outstanding, `spec/ipc.md` §2.3) and run in their own task,
//! so a cancelled caller never desynchronises the reply order; a dial whose
//! caller went away is closed as soon as its `DialOk` arrives.
//!
//! Back-pressure: each connection buffers at most [`CONN_BUFFER`] bytes of
//! received data; when one is full the reader stops reading the socket
//! until the application drains it, so the daemon pauses that client (and
//! memory stays bounded). A stream's writes go out as `Send` frames of at
//! most [`SEND_CHUNK`] bytes, one in flight per stream, and block when the
//! daemon stops reading.
//!
//! Differences from the embedded mode: IPC has no half-close, so
//! `poll_shutdown` sends `Close` (the daemon FINs; what it still delivers
//! before its `CloseOk` is readable); datagrams sent from a
//! [`DatagramSocket`] leave from an ephemeral port chosen by the daemon;
//! a bound port stays bound until the client disconnects.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::{self, IpcMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, oneshot};

use crate::error::Error;
use crate::stream::{Datagram, DatagramSocket, Listener, Stream};

/// Received bytes buffered per connection before the reader pauses.
pub const CONN_BUFFER: usize = 256 * 1024;
/// Largest `Send` frame payload a stream writes at once.
pub const SEND_CHUNK: usize = 64 * 1024;
/// Accepted connections queued per port before further ones are closed.
pub const ACCEPT_QUEUE: usize = 64;
/// Datagrams queued per port before new ones are dropped.
pub const DATAGRAM_QUEUE: usize = 256;
/// Default socket path when `PILOT_SOCKET` is not set (`spec/ipc.md` §1).
pub const DEFAULT_SOCKET: &str = "/tmp/pilot.sock";

/// A reply to a request, owned.
#[derive(Debug)]
enum Reply {
    BindOk(u16),
    DialOk(u32),
    Error(String),
    /// Any JSON-carrying reply (`InfoOk`, `HealthOk`, ...).
    Json(String),
    /// A reply with no payload of interest.
    Other,
}

#[derive(Default)]
struct DConn {
    buf: VecDeque<u8>,
    eof: bool,
    read: Option<Waker>,
}

#[derive(Default)]
struct DPort {
    listening: bool,
    datagrams: bool,
    accepts: VecDeque<(u32, Addr, u16)>,
    accept: Option<Waker>,
    dgrams: VecDeque<Datagram>,
    recv: Option<Waker>,
}

#[derive(Default)]
struct CState {
    conns: HashMap<u32, DConn>,
    ports: HashMap<u16, DPort>,
    pending: Option<oneshot::Sender<Reply>>,
    gone: bool,
}

struct Inner {
    state: Mutex<CState>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    requests: tokio::sync::Mutex<()>,
    /// Wakes the reader once a full connection buffer was drained.
    resume: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, CState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn frame(msg: &IpcMessage<'_>) -> Result<Vec<u8>, Error> {
    let mut out = vec![0u8; msg.encoded_len()];
    let n = ipc::encode_frame(msg, &mut out).map_err(|e| Error::Protocol(e.to_string()))?;
    out.truncate(n);
    Ok(out)
}

async fn write_frame(
    writer: &tokio::sync::Mutex<OwnedWriteHalf>,
    bytes: &[u8],
) -> Result<(), Error> {
    writer.lock().await.write_all(bytes).await?;
    Ok(())
}

/// A connection to a running daemon. Cloning shares the connection.
#[derive(Clone)]
pub struct DaemonClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DaemonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonClient").finish_non_exhaustive()
    }
}

/// The socket path from `PILOT_SOCKET`, or [`DEFAULT_SOCKET`].
pub fn default_socket_path() -> PathBuf {
    std::env::var_os("PILOT_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

impl DaemonClient {
    /// Connects to the daemon's IPC socket at `path`.
    pub async fn open(path: impl AsRef<Path>) -> Result<DaemonClient, Error> {
        let sock = UnixStream::connect(path.as_ref()).await?;
        Ok(Self::from_stream(sock))
    }

    /// Uses an already connected IPC socket.
    pub fn from_stream(sock: UnixStream) -> DaemonClient {
        let (r, w) = sock.into_split();
        let inner = Arc::new(Inner {
            state: Mutex::new(CState::default()),
            writer: Arc::new(tokio::sync::Mutex::new(w)),
            requests: tokio::sync::Mutex::new(()),
            resume: Notify::new(),
        });
        tokio::spawn(read_loop(Arc::downgrade(&inner), r));
        DaemonClient { inner }
    }

    /// Sends a reply-expecting request in its own task (so a cancelled
    /// caller cannot desynchronise replies) and waits for the reply.
    async fn request(&self, bytes: Vec<u8>) -> Result<Reply, Error> {
        let inner = self.inner.clone();
        let (tx, rx) = oneshot::channel::<Result<Reply, Error>>();
        tokio::spawn(async move {
            let _turn = inner.requests.lock().await;
            let (rtx, rrx) = oneshot::channel();
            {
                let mut st = inner.lock();
                if st.gone {
                    let _ = tx.send(Err(Error::Stopped));
                    return;
                }
                st.pending = Some(rtx);
            }
            if let Err(e) = write_frame(&inner.writer, &bytes).await {
                inner.lock().pending = None;
                let _ = tx.send(Err(e));
                return;
            }
            let reply = rrx.await.map_err(|_| Error::Stopped);
            if let Err(Ok(Reply::DialOk(id))) = tx.send(reply) {
                // The caller gave up on the dial: close the connection.
                inner.lock().conns.remove(&id);
                if let Ok(f) = frame(&IpcMessage::Close { conn_id: id }) {
                    let _ = write_frame(&inner.writer, &f).await;
                }
            }
        });
        match rx.await {
            Ok(Ok(Reply::Error(m))) => Err(Error::Daemon(m)),
            Ok(r) => r,
            Err(_) => Err(Error::Stopped),
        }
    }

    /// The daemon's status document (`Info`).
    pub async fn info(&self) -> Result<serde_json::Value, Error> {
        match self.request(frame(&IpcMessage::Info)?).await? {
            Reply::Json(s) => serde_json::from_str(&s).map_err(|e| Error::Protocol(e.to_string())),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// The daemon's virtual address (from `Info`).
    pub async fn addr(&self) -> Result<Addr, Error> {
        let info = self.info().await?;
        info.get("address")
            .and_then(|a| a.as_str())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::Protocol("info without a valid address".into()))
    }

    async fn bind_port(&self, port: u16) -> Result<(), Error> {
        match self.request(frame(&IpcMessage::Bind { port })?).await? {
            Reply::BindOk(p) if p == port => Ok(()),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Claims `port` locally for one use, binding it at the daemon first
    /// if this client has not yet.
    async fn claim(&self, port: u16, listen: bool) -> Result<(), Error> {
        let fresh = {
            let st = self.inner.lock();
            if st.gone {
                return Err(Error::Stopped);
            }
            match st.ports.get(&port) {
                Some(p) if (listen && p.listening) || (!listen && p.datagrams) => {
                    return Err(Error::PortInUse(port));
                }
                Some(_) => false,
                None => true,
            }
        };
        if fresh {
            self.bind_port(port).await?;
        }
        let mut st = self.inner.lock();
        let p = st.ports.entry(port).or_default();
        let used = if listen {
            &mut p.listening
        } else {
            &mut p.datagrams
        };
        if *used {
            return Err(Error::PortInUse(port));
        }
        *used = true;
        Ok(())
    }

    /// Binds `port` at the daemon and listens for streams on it.
    pub async fn listen(&self, port: u16) -> Result<Listener, Error> {
        self.claim(port, true).await?;
        Ok(Listener::from_daemon(DaemonListener {
            c: self.clone(),
            port,
        }))
    }

    /// Binds `port` at the daemon and receives the datagrams sent to it.
    pub async fn bind_datagram(&self, port: u16) -> Result<DatagramSocket, Error> {
        self.claim(port, false).await?;
        Ok(DatagramSocket::from_daemon(DaemonDatagrams {
            c: self.clone(),
            port,
        }))
    }

    /// Opens a stream to `dst:port` through the daemon. Cancel-safe: a
    /// dial whose caller went away is closed when it completes.
    pub async fn connect(&self, dst: Addr, port: u16) -> Result<Stream, Error> {
        match self
            .request(frame(&IpcMessage::Dial { addr: dst, port })?)
            .await?
        {
            Reply::DialOk(id) => Ok(Stream::from_daemon(DaemonConn::new(
                self.clone(),
                id,
                0,
                dst,
                port,
            ))),
            r => Err(Error::Protocol(format!("unexpected reply {r:?}"))),
        }
    }

    /// Sends one datagram to `dst:port` (the daemon picks the source port;
    /// no reply, so success means handed to the daemon).
    pub async fn send_datagram(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        let f = frame(&IpcMessage::SendTo {
            dst,
            dst_port: port,
            data,
        })?;
        write_frame(&self.inner.writer, &f).await
    }

    /// Forgets connection `id` and sends `Close` for it, after `before`
    /// (the stream's last `Send`) has gone out.
    fn close_conn(&self, id: u32, before: Option<WriteTask>) {
        self.inner.lock().conns.remove(&id);
        self.inner.resume.notify_one();
        let writer = self.inner.writer.clone();
        if let (Ok(f), Ok(rt)) = (
            frame(&IpcMessage::Close { conn_id: id }),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(async move {
                if let Some(t) = before {
                    let _ = t.await;
                }
                let _ = write_frame(&writer, &f).await;
            });
        }
    }
}

/// Routes every frame from the daemon until the socket closes.
async fn read_loop(inner: std::sync::Weak<Inner>, mut r: tokio::net::unix::OwnedReadHalf) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    'outer: loop {
        // Handle every complete frame in the buffer.
        loop {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let (consumed, full_conn) = match ipc::parse_frame(&buf) {
                Ok(None) => break,
                Ok(Some((body, consumed))) => {
                    let full = if body.is_empty() {
                        None
                    } else {
                        route(&inner, body)
                    };
                    (consumed, full)
                }
                Err(_) => break 'outer,
            };
            buf.drain(..consumed);
            // Back-pressure: wait until that connection's buffer drains.
            if let Some(id) = full_conn {
                loop {
                    let notified = inner.resume.notified();
                    {
                        let st = inner.lock();
                        if st.gone || st.conns.get(&id).is_none_or(|c| c.buf.len() < CONN_BUFFER) {
                            break;
                        }
                    }
                    notified.await;
                }
            }
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
    if let Some(inner) = inner.upgrade() {
        let mut st = inner.lock();
        st.gone = true;
        st.pending = None;
        let mut wake = Vec::new();
        for c in st.conns.values_mut() {
            c.eof = true;
            wake.extend(c.read.take());
        }
        for p in st.ports.values_mut() {
            wake.extend(p.accept.take());
            wake.extend(p.recv.take());
        }
        drop(st);
        for w in wake {
            w.wake();
        }
    }
}

/// Routes one frame; returns a connection id whose buffer is now full.
fn route(inner: &Inner, body: &[u8]) -> Option<u32> {
    let msg = match IpcMessage::decode(body) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable frame from the daemon");
            return None;
        }
    };
    let mut st = inner.lock();
    let mut wake: Option<Waker> = None;
    let mut full = None;
    let mut close_extra = None;
    match msg {
        IpcMessage::Recv { conn_id, data } => {
            if let Some(c) = st.conns.get_mut(&conn_id) {
                c.buf.extend(data);
                wake = c.read.take();
                if c.buf.len() >= CONN_BUFFER {
                    full = Some(conn_id);
                }
            }
        }
        IpcMessage::CloseOk { conn_id } => {
            if let Some(c) = st.conns.get_mut(&conn_id) {
                c.eof = true;
                wake = c.read.take();
            }
        }
        IpcMessage::Accept {
            local_port,
            conn_id,
            remote,
            remote_port,
        } => match st.ports.get_mut(&local_port) {
            Some(p) if p.listening && p.accepts.len() < ACCEPT_QUEUE => {
                p.accepts.push_back((conn_id, remote, remote_port));
                wake = p.accept.take();
                st.conns.insert(conn_id, DConn::default());
            }
            _ => close_extra = Some(conn_id),
        },
        IpcMessage::RecvFrom {
            src,
            src_port,
            dst_port,
            data,
        } => {
            if let Some(p) = st.ports.get_mut(&dst_port) {
                if p.datagrams && p.dgrams.len() < DATAGRAM_QUEUE {
                    p.dgrams.push_back(Datagram {
                        src,
                        src_port,
                        dst_port,
                        data: data.to_vec(),
                    });
                    wake = p.recv.take();
                }
            }
        }
        reply => {
            let r = match reply {
                IpcMessage::BindOk { port } => Reply::BindOk(port),
                IpcMessage::DialOk { conn_id } => {
                    // Register before any Recv push for it can arrive.
                    st.conns.insert(conn_id, DConn::default());
                    Reply::DialOk(conn_id)
                }
                IpcMessage::Error { message, .. } => Reply::Error(message.to_string()),
                IpcMessage::InfoOk(s)
                | IpcMessage::HealthOk(s)
                | IpcMessage::HandshakeOk(s)
                | IpcMessage::ResolveHostnameOk(s) => Reply::Json(s.to_string()),
                _ => Reply::Other,
            };
            match st.pending.take() {
                Some(tx) => {
                    let _ = tx.send(r);
                }
                None => tracing::debug!(reply = ?r, "reply without a request"),
            }
        }
    }
    drop(st);
    if let Some(w) = wake {
        w.wake();
    }
    if let Some(id) = close_extra {
        if let Ok(f) = frame(&IpcMessage::Close { conn_id: id }) {
            let writer = inner.writer.clone();
            tokio::spawn(async move {
                let _ = write_frame(&writer, &f).await;
            });
        }
    }
    full
}

type WriteTask = tokio::task::JoinHandle<Result<(), Error>>;

/// The daemon half of a [`Stream`].
pub(crate) struct DaemonConn {
    c: DaemonClient,
    id: u32,
    pub(crate) local_port: u16,
    pub(crate) remote: Addr,
    pub(crate) remote_port: u16,
    /// The one `Send`/`Close` frame in flight (a task, so it completes
    /// even if the stream is not polled again).
    writing: Option<WriteTask>,
    closed: bool,
}

impl DaemonConn {
    fn new(c: DaemonClient, id: u32, local_port: u16, remote: Addr, remote_port: u16) -> Self {
        DaemonConn {
            c,
            id,
            local_port,
            remote,
            remote_port,
            writing: None,
            closed: false,
        }
    }

    /// The daemon's connection id.
    pub(crate) fn conn_id(&self) -> u32 {
        self.id
    }

    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.c.inner.lock();
        let Some(c) = st.conns.get_mut(&self.id) else {
            return Poll::Ready(Ok(()));
        };
        if !c.buf.is_empty() {
            let was_full = c.buf.len() >= CONN_BUFFER;
            let n = buf.remaining().min(c.buf.len());
            let (a, b) = c.buf.as_slices();
            let na = n.min(a.len());
            buf.put_slice(a.get(..na).unwrap_or_default());
            buf.put_slice(b.get(..n - na).unwrap_or_default());
            c.buf.drain(..n);
            let resume = was_full && c.buf.len() < CONN_BUFFER;
            drop(st);
            if resume {
                self.c.inner.resume.notify_one();
            }
            return Poll::Ready(Ok(()));
        }
        if c.eof {
            return Poll::Ready(Ok(()));
        }
        set_waker(&mut c.read, cx);
        Poll::Pending
    }

    fn poll_drive_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(f) = self.writing.as_mut() {
            let r = std::task::ready!(Pin::new(f).poll(cx));
            self.writing = None;
            r.map_err(|_| Error::Stopped)??;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_drive_write(cx))?;
        if self.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "stream closed for writing",
            )));
        }
        {
            let st = self.c.inner.lock();
            if st.gone {
                return Poll::Ready(Err(Error::Stopped.into()));
            }
            if st.conns.get(&self.id).is_none_or(|c| c.eof) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "stream closed by the peer",
                )));
            }
        }
        let n = buf.len().min(SEND_CHUNK);
        let data = buf.get(..n).unwrap_or_default();
        let f = frame(&IpcMessage::Send {
            conn_id: self.id,
            data,
        })?;
        let writer = self.c.inner.writer.clone();
        self.writing = Some(tokio::spawn(async move { write_frame(&writer, &f).await }));
        Poll::Ready(Ok(n))
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_drive_write(cx)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drive_write(cx))?;
        if !self.closed {
            self.closed = true;
            let f = frame(&IpcMessage::Close { conn_id: self.id })?;
            let writer = self.c.inner.writer.clone();
            self.writing = Some(tokio::spawn(async move { write_frame(&writer, &f).await }));
            std::task::ready!(self.poll_drive_write(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for DaemonConn {
    fn drop(&mut self) {
        if self.closed {
            self.c.inner.lock().conns.remove(&self.id);
            self.c.inner.resume.notify_one();
        } else {
            self.c.close_conn(self.id, self.writing.take());
        }
    }
}

/// The daemon half of a [`Listener`].
pub(crate) struct DaemonListener {
    c: DaemonClient,
    port: u16,
}

impl DaemonListener {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<DaemonConn, Error>> {
        let mut st = self.c.inner.lock();
        let gone = st.gone;
        let Some(p) = st.ports.get_mut(&self.port) else {
            return Poll::Ready(Err(Error::Stopped));
        };
        if let Some((id, remote, rport)) = p.accepts.pop_front() {
            drop(st);
            return Poll::Ready(Ok(DaemonConn::new(
                self.c.clone(),
                id,
                self.port,
                remote,
                rport,
            )));
        }
        if gone {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker(&mut p.accept, cx);
        Poll::Pending
    }
}

impl Drop for DaemonListener {
    fn drop(&mut self) {
        let queued: Vec<u32> = {
            let mut st = self.c.inner.lock();
            let Some(p) = st.ports.get_mut(&self.port) else {
                return;
            };
            p.listening = false;
            p.accept = None;
            p.accepts.drain(..).map(|a| a.0).collect()
        };
        // The port stays bound at the daemon (IPC has no unbind); streams
        // that were never accepted are closed.
        for id in queued {
            self.c.close_conn(id, None);
        }
    }
}

/// The daemon half of a [`DatagramSocket`].
pub(crate) struct DaemonDatagrams {
    c: DaemonClient,
    port: u16,
}

impl DaemonDatagrams {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) async fn send_to(&self, dst: Addr, port: u16, data: &[u8]) -> Result<(), Error> {
        self.c.send_datagram(dst, port, data).await
    }

    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<Datagram, Error>> {
        let mut st = self.c.inner.lock();
        let gone = st.gone;
        let Some(p) = st.ports.get_mut(&self.port) else {
            return Poll::Ready(Err(Error::Stopped));
        };
        if let Some(d) = p.dgrams.pop_front() {
            return Poll::Ready(Ok(d));
        }
        if gone {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker(&mut p.recv, cx);
        Poll::Pending
    }
}

impl Drop for DaemonDatagrams {
    fn drop(&mut self) {
        let mut st = self.c.inner.lock();
        if let Some(p) = st.ports.get_mut(&self.port) {
            p.datagrams = false;
            p.recv = None;
            p.dgrams.clear();
        }
    }
}
