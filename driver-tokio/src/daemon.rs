//! Async client of a running `pilot-daemon` over its IPC socket
//! (`spec/ipc.md`), handing out the same [`Stream`], [`Listener`] and
//! [`DatagramSocket`] types as the embedded node.
//!
//! Everything about routing, buffering and bad input is decided by
//! [`ClientSession`], the sans-IO client session of `pilot-proto`
//! (`spec/ipc.md` §11), which this client shares with the blocking one of
//! `pilot-driver-mio`. This file moves bytes and wakes tasks: one reader
//! task feeds the session what the socket gives (never more than the
//! session has room for, so a full connection buffer pauses the reader and
//! back-pressures the daemon), and every change is settled by waking the
//! tasks waiting on what the session reports ready and writing the `Close`
//! frames it asks for.
//!
//! Requests that expect a reply are serialised (at most one outstanding,
//! `spec/ipc.md` §2.3) and their frames written by a task of their own, so
//! a cancelled caller never cuts a frame in half; a cancelled request is
//! abandoned, and a dial abandoned that way is closed as soon as its
//! `DialOk` arrives. A stream's writes go out as `Send` frames of at most
//! [`SEND_CHUNK`] bytes, one in flight per stream, and block when the
//! daemon stops reading.
//!
//! Differences from the embedded mode: IPC has no half-close, so
//! `poll_shutdown` sends `Close` (the daemon FINs; what it still delivers
//! before its `CloseOk` is readable); datagrams sent from a
//! [`DatagramSocket`] leave from an ephemeral port chosen by the daemon;
//! a bound port stays bound until the client disconnects.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use pilot_proto::addr::Addr;
use pilot_proto::wire::ipc::IpcMessage;
use pilot_proto::wire::ipc::client::{
    self, ClientSession, Read as SessionRead, Ready, Reply, ReplyError, RequestError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Notify;

use crate::error::Error;
use crate::stream::{Datagram, DatagramSocket, Listener, Stream};

/// Largest `Send` frame payload a stream writes at once.
pub const SEND_CHUNK: usize = 64 * 1024;
/// Default socket path when `PILOT_SOCKET` is not set (`spec/ipc.md` §1).
pub const DEFAULT_SOCKET: &str = "/tmp/pilot.sock";

/// Largest single socket read of the reader task.
const READ_CHUNK: usize = 64 * 1024;

/// The session and the tasks waiting on it.
#[derive(Default)]
struct CState {
    session: ClientSession,
    /// Ports this client has bound at the daemon.
    bound: BTreeSet<u16>,
    reply: Option<Waker>,
    conns: BTreeMap<u32, Waker>,
    accepts: BTreeMap<u16, Waker>,
    dgrams: BTreeMap<u16, Waker>,
}

struct Inner {
    state: Mutex<CState>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    requests: tokio::sync::Mutex<()>,
    /// Wakes the reader once the session has input room again.
    resume: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, CState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a session change: wakes whoever waits on what became ready,
    /// resumes the reader if it may read, and writes the frames the session
    /// asked for.
    fn settle(&self, mut st: MutexGuard<'_, CState>) {
        let mut wake = Vec::new();
        while let Some(r) = st.session.poll_ready() {
            match r {
                Ready::Reply => wake.extend(st.reply.take()),
                Ready::Conn(id) => wake.extend(st.conns.remove(&id)),
                Ready::Accept(port) => wake.extend(st.accepts.remove(&port)),
                Ready::Datagram(port) => wake.extend(st.dgrams.remove(&port)),
                Ready::Closed => {
                    wake.extend(st.reply.take());
                    wake.extend(std::mem::take(&mut st.conns).into_values());
                    wake.extend(std::mem::take(&mut st.accepts).into_values());
                    wake.extend(std::mem::take(&mut st.dgrams).into_values());
                }
            }
        }
        let out: Vec<Vec<u8>> = std::iter::from_fn(|| st.session.poll_transmit()).collect();
        let resume = st.session.input_room() > 0;
        drop(st);
        for w in wake {
            w.wake();
        }
        if resume {
            self.resume.notify_one();
        }
        if !out.is_empty() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let writer = self.writer.clone();
                rt.spawn(async move {
                    for f in out {
                        if write_frame(&writer, &f).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
}

fn set_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

fn set_waker_in<K: Ord>(map: &mut BTreeMap<K, Waker>, key: K, cx: &Context<'_>) {
    let mut slot = map.remove(&key);
    set_waker(&mut slot, cx);
    if let Some(w) = slot {
        map.insert(key, w);
    }
}

fn frame(msg: &IpcMessage<'_>) -> Result<Vec<u8>, Error> {
    client::frame(msg).map_err(|e| Error::Protocol(e.to_string()))
}

async fn write_frame(
    writer: &tokio::sync::Mutex<OwnedWriteHalf>,
    bytes: &[u8],
) -> Result<(), Error> {
    writer.lock().await.write_all(bytes).await?;
    Ok(())
}

fn reply_error(e: ReplyError) -> Error {
    match e {
        ReplyError::Daemon(m) => Error::Daemon(m),
        other => Error::Protocol(other.to_string()),
    }
}

fn unexpected(r: &Reply) -> Error {
    Error::Protocol(format!("unexpected reply {:?}", r.message()))
}

/// Abandons the live request unless disarmed (the caller went away).
struct AbandonOnDrop<'a> {
    inner: &'a Inner,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.inner.lock();
            st.session.abandon_request();
            self.inner.settle(st);
        }
    }
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

    /// What the session dropped so far (`spec/ipc.md` §11).
    pub fn stats(&self) -> client::SessionStats {
        self.inner.lock().session.stats()
    }

    /// Sends a reply-expecting request and waits for its reply (an `Error`
    /// reply is [`Error::Daemon`]). Cancel-safe: the frame is written by a
    /// task of its own, and a request whose caller went away is abandoned.
    async fn request(&self, msg: &IpcMessage<'_>) -> Result<Reply, Error> {
        let _turn = self.inner.requests.lock().await;
        let bytes = self
            .inner
            .lock()
            .session
            .request(msg)
            .map_err(|e| match e {
                RequestError::Closed => Error::Stopped,
                other => Error::Protocol(other.to_string()),
            })?;
        let mut guard = AbandonOnDrop {
            inner: &self.inner,
            armed: true,
        };
        let writer = self.inner.writer.clone();
        tokio::spawn(async move { write_frame(&writer, &bytes).await })
            .await
            .map_err(|_| Error::Stopped)??;
        let reply = std::future::poll_fn(|cx| {
            let mut st = self.inner.lock();
            if let Some(r) = st.session.take_reply() {
                return Poll::Ready(Ok(r));
            }
            if st.session.is_closed() {
                return Poll::Ready(Err(Error::Stopped));
            }
            set_waker(&mut st.reply, cx);
            Poll::Pending
        })
        .await;
        guard.armed = false;
        let reply = reply?;
        reply.payload().map_err(reply_error)?;
        Ok(reply)
    }

    /// The daemon's status document (`Info`).
    pub async fn info(&self) -> Result<serde_json::Value, Error> {
        let reply = self.request(&IpcMessage::Info).await?;
        let payload = reply.payload().map_err(reply_error)?;
        serde_json::from_slice(payload).map_err(|e| Error::Protocol(e.to_string()))
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
        let reply = self.request(&IpcMessage::Bind { port }).await?;
        match reply.message() {
            Ok(IpcMessage::BindOk { port: p }) if p == port => Ok(()),
            _ => Err(unexpected(&reply)),
        }
    }

    /// Claims `port` locally for one use (listening or datagrams), binding
    /// it at the daemon first if this client has not yet. The session
    /// queues for the port from before the `Bind`, so nothing that follows
    /// the reply at once is refused.
    async fn claim(&self, port: u16, listen: bool) -> Result<(), Error> {
        let fresh = {
            let mut st = self.inner.lock();
            if st.session.is_closed() {
                return Err(Error::Stopped);
            }
            let used = if listen {
                st.session.is_listening(port)
            } else {
                st.session.has_datagrams(port)
            };
            if used {
                return Err(Error::PortInUse(port));
            }
            if listen {
                st.session.listen(port);
            } else {
                st.session.open_datagrams(port);
            }
            !st.bound.contains(&port)
        };
        if fresh {
            if let Err(e) = self.bind_port(port).await {
                self.release(port, listen);
                return Err(e);
            }
            self.inner.lock().bound.insert(port);
        }
        Ok(())
    }

    /// Gives up one use of `port` (the port stays bound at the daemon: IPC
    /// has no unbind). Streams accepted but not taken are closed.
    fn release(&self, port: u16, listen: bool) {
        let mut st = self.inner.lock();
        if listen {
            st.session.stop_listening(port);
            st.accepts.remove(&port);
        } else {
            st.session.close_datagrams(port);
            st.dgrams.remove(&port);
        }
        self.inner.settle(st);
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
        let reply = self.request(&IpcMessage::Dial { addr: dst, port }).await?;
        match reply.message() {
            Ok(IpcMessage::DialOk { conn_id }) => Ok(Stream::from_daemon(DaemonConn::new(
                self.clone(),
                conn_id,
                0,
                dst,
                port,
            ))),
            _ => Err(unexpected(&reply)),
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
        let mut st = self.inner.lock();
        let f = st.session.close(id);
        st.conns.remove(&id);
        self.inner.settle(st);
        let writer = self.inner.writer.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Some(t) = before {
                    let _ = t.await;
                }
                let _ = write_frame(&writer, &f).await;
            });
        }
    }
}

/// Feeds the session every byte from the daemon until the socket closes or
/// the session ends.
async fn read_loop(weak: std::sync::Weak<Inner>, mut r: tokio::net::unix::OwnedReadHalf) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let reason = loop {
        let room = {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            loop {
                let notified = inner.resume.notified();
                {
                    let st = inner.lock();
                    if st.session.is_closed() {
                        return;
                    }
                    let room = st.session.input_room();
                    if room > 0 {
                        break room;
                    }
                }
                // A connection's buffer is full: wait for the application.
                notified.await;
            }
        };
        let want = room.min(chunk.len());
        match r.read(chunk.get_mut(..want).unwrap_or_default()).await {
            Ok(0) => break None,
            Ok(n) => {
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let mut st = inner.lock();
                st.session.handle_input(chunk.get(..n).unwrap_or_default());
                inner.settle(st);
            }
            Err(e) => break Some(format!("read: {e}")),
        }
    };
    if let Some(inner) = weak.upgrade() {
        let mut st = inner.lock();
        st.session.handle_closed(reason);
        inner.settle(st);
    }
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
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let inner = &self.c.inner;
        let mut st = inner.lock();
        match st.session.read(self.id, buf.initialize_unfilled()) {
            SessionRead::Data(n) => {
                buf.advance(n);
                // Reading may have made room for a held-up frame.
                inner.settle(st);
                Poll::Ready(Ok(()))
            }
            // End of stream, or the daemon went away: both read as EOF.
            SessionRead::Eof | SessionRead::Closed => Poll::Ready(Ok(())),
            SessionRead::Pending => {
                set_waker_in(&mut st.conns, self.id, cx);
                Poll::Pending
            }
        }
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
            if st.session.is_closed() {
                return Poll::Ready(Err(Error::Stopped.into()));
            }
            if !st.session.is_writable(self.id) {
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
            let mut st = self.c.inner.lock();
            st.session.forget(self.id);
            st.conns.remove(&self.id);
            self.c.inner.settle(st);
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
        if let Some(a) = st.session.accept(self.port) {
            drop(st);
            return Poll::Ready(Ok(DaemonConn::new(
                self.c.clone(),
                a.conn_id,
                self.port,
                a.remote,
                a.remote_port,
            )));
        }
        if st.session.is_closed() || !st.session.is_listening(self.port) {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker_in(&mut st.accepts, self.port, cx);
        Poll::Pending
    }
}

impl Drop for DaemonListener {
    fn drop(&mut self) {
        self.c.release(self.port, true);
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
        if let Some(d) = st.session.recv_datagram(self.port) {
            return Poll::Ready(Ok(Datagram {
                src: d.src,
                src_port: d.src_port,
                dst_port: d.dst_port,
                data: d.data,
            }));
        }
        if st.session.is_closed() || !st.session.has_datagrams(self.port) {
            return Poll::Ready(Err(Error::Stopped));
        }
        set_waker_in(&mut st.dgrams, self.port, cx);
        Poll::Pending
    }
}

impl Drop for DaemonDatagrams {
    fn drop(&mut self) {
        self.c.release(self.port, false);
    }
}
