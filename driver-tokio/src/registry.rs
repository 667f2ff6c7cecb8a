//! Joining a registry: one task runs the sans-IO
//! [`RegistryClient`](pilot_proto::registry::client::RegistryClient)
//! (registration, heartbeats, reconnects) and the sans-IO
//! [`Resolver`](pilot_proto::resolve::Resolver) (look-up, the second
//! `resolve` step for private peers, identity keys of strangers, coalesced
//! requests, negative answers cached) over a tokio `TcpStream`, so
//! `connect` and `send_to` reach peers by virtual address alone. The task
//! moves bytes and events; it decodes no registry message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pilot_proto::addr::Addr;
use pilot_proto::crypto::identity::Identity;
use pilot_proto::registry::auth;
use pilot_proto::registry::client::{Call, CallId, ClientConfig, ClientEvent, RegistryClient};
use pilot_proto::resolve::{
    KeyFetch, REGISTRY_UNREACHABLE, ResolveEvent, Resolver, ResolverConfig,
};
use pilot_proto::time::Instant as PInstant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;

/// How to join a registry.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// The registry's TCP address (loopback in tests).
    pub addr: SocketAddr,
    /// Make the node public after registering, so any node may resolve it.
    /// Private nodes (the default) can only be resolved by trusted peers
    /// (`spec/registry.md`); see [`Node::report_trust`](crate::Node::report_trust).
    pub public: bool,
    /// Hostname to request; empty for none.
    pub hostname: String,
    /// How long [`Node::start`](crate::Node::start) waits for the
    /// registration.
    pub join_timeout: Duration,
    /// How long a resolve may take.
    pub resolve_timeout: Duration,
}

impl RegistryConfig {
    /// Defaults: private, no hostname, 10 s to join and to resolve.
    pub fn new(addr: SocketAddr) -> Self {
        RegistryConfig {
            addr,
            public: false,
            hostname: String::new(),
            join_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(10),
        }
    }
}

/// Where a resolved peer is: its tunnel endpoint and, if the registry gave
/// a valid one, its identity key.
pub(crate) type Found = (SocketAddr, Option<[u8; 32]>);

type ResolveReply = oneshot::Sender<Result<Found, String>>;

/// The reply channel of a key request (`Err(true)`: refused, retry later;
/// `Err(false)`: unknown).
type KeyReply = oneshot::Sender<Result<[u8; 32], bool>>;

/// A request of the node to its registry task.
enum Cmd {
    /// Resolve a peer.
    Resolve(Addr, ResolveReply),
    /// The identity key of a stranger whose key exchange is held
    /// (`Err(true)`: refused, retry later; `Err(false)`: unknown).
    /// A node's identity key; `true`: forget the cached one first (its key
    /// exchange carried another key).
    Key(u32, bool, KeyReply),
    /// A call whose answer only matters as success or failure.
    Call(Call, oneshot::Sender<Result<(), String>>),
    /// Advertise this tunnel endpoint (the beacon observed a new one):
    /// register again with it.
    ListenAddr(String),
    /// Rotate the registry's key for us to this identity.
    Rotate(auth::Identity, oneshot::Sender<Result<(), String>>),
}

/// The node's link to its registry task; dropping it stops the task.
pub(crate) struct RegistryHandle {
    tx: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
    resolve_timeout: Duration,
}

impl Drop for RegistryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The task went away.
fn stopped() -> Error {
    Error::Registry("registry task stopped".into())
}

impl RegistryHandle {
    /// The endpoint and identity key the registry gives us for `peer`
    /// (privacy-gated for a private peer).
    pub(crate) async fn resolve(&self, peer: Addr) -> Result<Found, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Resolve(peer, tx))
            .await
            .map_err(|_| stopped())?;
        // The resolver has its own deadline; this one only guards the task.
        let guard = self.resolve_timeout + Duration::from_secs(1);
        let node = peer.node;
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(Ok(a))) => Ok(a),
            Ok(Ok(Err(reason))) => Err(Error::Registry(format!("resolve node {node}: {reason}"))),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(Error::Registry(format!("resolve node {node}: timed out"))),
        }
    }

    /// The registered identity key of `peer`: `Ok(None)` when it cannot be
    /// had, `Err` when the look-up was refused (budget) or the task is gone.
    pub(crate) async fn key(&self, peer: u32, fresh: bool) -> Result<Option<[u8; 32]>, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Key(peer, fresh, tx))
            .await
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.resolve_timeout, rx).await {
            Ok(Ok(Ok(k))) => Ok(Some(k)),
            Ok(Ok(Err(false))) => Ok(None),
            Ok(Ok(Err(true))) => Err(Error::Registry(format!("key of node {peer}: refused"))),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Ok(None),
        }
    }

    /// Advertises `endpoint` as our tunnel endpoint from now on (the
    /// registration is repeated with it); never blocks: if the task's
    /// queue is full the next observation tries again.
    pub(crate) fn set_listen_addr(&self, endpoint: SocketAddr) -> bool {
        let ep = pilot_proto::beacon::wire_endpoint(endpoint).to_string();
        self.tx.try_send(Cmd::ListenAddr(ep)).is_ok()
    }

    /// Asks the registry to replace our identity key with `new`'s
    /// (`rotate_key`, signed by the current key); the registry client
    /// signs with `new` from the accepting answer on.
    pub(crate) async fn rotate_key(&self, new: &Identity) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let new = auth::Identity::from_seed(new.seed());
        self.tx
            .send(Cmd::Rotate(new, tx))
            .await
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.resolve_timeout, rx).await {
            Ok(Ok(r)) => r.map_err(|e| {
                let unknown = e == "request failed" || e.contains("answer lost");
                let what = if unknown { " (outcome unknown)" } else { "" };
                Error::Registry(format!("rotate_key{what}: {e}"))
            }),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(Error::Registry(
                "rotate_key (outcome unknown): timed out".into(),
            )),
        }
    }

    /// Makes a registry call and waits for its outcome.
    pub(crate) async fn call(&self, call: Call) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Call(call, tx))
            .await
            .map_err(|_| stopped())?;
        match tokio::time::timeout(self.resolve_timeout, rx).await {
            Ok(Ok(r)) => r.map_err(Error::Registry),
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(Error::Registry("registry call timed out".into())),
        }
    }
}

fn now(epoch: tokio::time::Instant) -> PInstant {
    let d = tokio::time::Instant::now().saturating_duration_since(epoch);
    PInstant::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Registers with the registry at `rc.addr` (advertising `udp` as our
/// tunnel endpoint) and keeps the registration alive in a task. Returns
/// the node ID the registry assigned.
pub(crate) async fn join(
    rc: &RegistryConfig,
    identity: &Identity,
    udp: SocketAddr,
    epoch: tokio::time::Instant,
) -> Result<(u32, RegistryHandle), Error> {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let elapsed_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(0);
    let cfg = ClientConfig {
        listen_addr: udp.to_string(),
        hostname: rc.hostname.clone(),
        unix_ms_at_epoch: Some(unix_ms.saturating_sub(elapsed_ms)),
        ..ClientConfig::default()
    };
    let client = RegistryClient::new(cfg, auth::Identity::from_seed(identity.seed()), now(epoch));
    let (tx, rx) = mpsc::channel(64);
    let (reg_tx, reg_rx) = oneshot::channel();
    let resolver = Resolver::new(
        ResolverConfig {
            timeout: rc.resolve_timeout,
            ..ResolverConfig::default()
        },
        now(epoch),
    );
    let task = tokio::spawn(run(
        Link {
            client,
            resolver,
            epoch,
            addr: rc.addr,
            public: rc.public,
            keys: BTreeMap::new(),
            calls: BTreeMap::new(),
        },
        rx,
        reg_tx,
    ));
    let handle = RegistryHandle {
        tx,
        task,
        resolve_timeout: rc.resolve_timeout,
    };
    match tokio::time::timeout(rc.join_timeout, reg_rx).await {
        Ok(Ok(Ok(node_id))) => Ok((node_id, handle)),
        Ok(Ok(Err(reason))) => Err(Error::Registry(format!("registration refused: {reason}"))),
        Ok(Err(_)) => Err(Error::Registry("registry task stopped".into())),
        Err(_) => Err(Error::Registry("registration timed out".into())),
    }
}

async fn read_some(conn: &mut Option<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match conn.as_mut() {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// The task's state: the two sans-IO parts and who waits for what.
struct Link {
    client: RegistryClient,
    resolver: Resolver<ResolveReply>,
    epoch: tokio::time::Instant,
    addr: SocketAddr,
    public: bool,
    /// Key requests waiting for the resolver's answer, per node (the
    /// resolver makes one look-up; these are only the reply channels).
    keys: BTreeMap<u32, Vec<KeyReply>>,
    /// Plain calls waiting for their outcome.
    calls: BTreeMap<CallId, oneshot::Sender<Result<(), String>>>,
}

impl Link {
    fn now(&self) -> PInstant {
        now(self.epoch)
    }

    /// The registry connection is gone: the client re-dials; resolutions
    /// waiting for it fail at once.
    fn disconnected(&mut self) {
        let t = self.now();
        self.client.disconnected(t);
        self.resolver.fail_all(REGISTRY_UNREACHABLE);
    }

    /// Hands the resolver's outcomes to the waiting requests.
    fn deliver(&mut self) {
        while let Some(ev) = self.resolver.poll_event() {
            match ev {
                ResolveEvent::Found {
                    endpoint,
                    key,
                    waiters,
                    ..
                } => {
                    for w in waiters {
                        let _ = w.send(Ok((endpoint, key)));
                    }
                }
                ResolveEvent::Failed {
                    reason, waiters, ..
                } => {
                    for w in waiters {
                        let _ = w.send(Err(reason.clone()));
                    }
                }
                ResolveEvent::KeyFound { node, key } => {
                    for w in self.keys.remove(&node).unwrap_or_default() {
                        let _ = w.send(Ok(key));
                    }
                }
                ResolveEvent::KeyUnknown { node } => {
                    for w in self.keys.remove(&node).unwrap_or_default() {
                        let _ = w.send(Err(false));
                    }
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        let t = self.now();
        match cmd {
            Cmd::Resolve(peer, reply) => {
                if let Err((reply, reason)) =
                    self.resolver
                        .resolve(Some(&mut self.client), t, peer, reply)
                {
                    let _ = reply.send(Err(reason));
                }
            }
            Cmd::Key(node, fresh, reply) => {
                if fresh {
                    self.resolver.forget_key(node);
                }
                match self.resolver.fetch_key(Some(&mut self.client), t, node) {
                    KeyFetch::Known(k) => {
                        let _ = reply.send(Ok(k));
                    }
                    KeyFetch::Started => self.keys.entry(node).or_default().push(reply),
                    KeyFetch::Refused => {
                        let _ = reply.send(Err(true));
                    }
                }
            }
            Cmd::ListenAddr(ep) => self.client.set_listen_addr(t, ep),
            Cmd::Rotate(new, reply) => match self.client.rotate_key(t, new) {
                Ok(id) => {
                    self.calls.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            Cmd::Call(call, reply) => match self.client.call(t, call) {
                Ok(id) => {
                    self.calls.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
        }
    }
}

async fn run(
    mut l: Link,
    mut rx: mpsc::Receiver<Cmd>,
    reg_tx: oneshot::Sender<Result<u32, String>>,
) {
    let mut reg_tx = Some(reg_tx);
    let mut conn: Option<TcpStream> = None;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Drain events and requests until the client is quiet.
        loop {
            let mut progress = false;
            while let Some(ev) = l.client.poll_event() {
                progress = true;
                match ev {
                    ClientEvent::Dial => {
                        let dial = tokio::time::timeout(
                            Duration::from_secs(5),
                            TcpStream::connect(l.addr),
                        )
                        .await;
                        match dial {
                            Ok(Ok(s)) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(s);
                                let t = l.now();
                                l.client.connected(t);
                            }
                            _ => l.disconnected(),
                        }
                    }
                    ClientEvent::CloseConnection => {
                        conn = None;
                        l.resolver.fail_all(REGISTRY_UNREACHABLE);
                    }
                    ClientEvent::Registered { node_id, .. } => {
                        if let Some(tx) = reg_tx.take() {
                            let _ = tx.send(Ok(node_id));
                        }
                        if l.public {
                            let t = l.now();
                            let _ = l.client.call(t, Call::SetVisibility(true));
                        }
                    }
                    ClientEvent::RegistrationFailed { reason } => {
                        if let Some(tx) = reg_tx.take() {
                            let _ = tx.send(Err(reason));
                        }
                    }
                    ClientEvent::CallDone { id, result } if l.resolver.owns(id) => {
                        let t = l.now();
                        l.resolver.on_call_done(Some(&mut l.client), t, id, result);
                    }
                    ClientEvent::CallDone { id, result } => {
                        if let Some(reply) = l.calls.remove(&id) {
                            let _ = reply.send(result.map(|_| ()));
                        }
                    }
                    _ => {}
                }
            }
            // Answers the client decided but could not report are lost.
            let t = l.now();
            let client = &l.client;
            l.resolver.reconcile(t, |id| client.holds_call(id));
            l.calls.retain(|id, _| client.holds_call(*id));
            l.deliver();
            while let Some(bytes) = l.client.poll_bytes() {
                progress = true;
                let ok = match conn.as_mut() {
                    Some(s) => s.write_all(&bytes).await.is_ok(),
                    None => false,
                };
                if !ok {
                    conn = None;
                    l.disconnected();
                }
            }
            if !progress {
                break;
            }
        }
        let epoch = l.epoch;
        let deadline = [l.client.poll_timeout(), l.resolver.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| epoch + Duration::from_nanos(t.as_nanos()))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = read_some(&mut conn, &mut chunk) => match r {
                Ok(n) if n > 0 => {
                    // A stream that is not the registry's makes the client
                    // ask to close it (CloseConnection, handled above).
                    let t = l.now();
                    let _ = l.client.handle_bytes(t, chunk.get(..n).unwrap_or_default());
                }
                _ => {
                    conn = None;
                    l.disconnected();
                }
            },
            cmd = rx.recv() => match cmd {
                Some(cmd) => l.command(cmd),
                None => return,
            },
            () = tokio::time::sleep_until(deadline) => {
                let t = l.now();
                l.client.handle_timeout(t);
                l.resolver.handle_timeout(t);
            }
        }
    }
}
