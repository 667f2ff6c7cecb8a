//! Joining a registry: one task runs the sans-IO
//! [`RegistryClient`](pilot_proto::registry::client::RegistryClient) over a
//! tokio `TcpStream` (registration, heartbeats, reconnects) and answers
//! the node's resolve requests, so `connect` and `send_to` reach peers by
//! virtual address alone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pilot_proto::crypto::identity::Identity;
use pilot_proto::registry::auth;
use pilot_proto::registry::client::Response;
use pilot_proto::registry::client::{Call, CallId, ClientConfig, ClientEvent, RegistryClient};
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
    /// (`spec/registry.md`).
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

/// What a lookup found: the tunnel endpoint (if the registry gives it)
/// and the registered identity key.
pub(crate) type Found = (Option<SocketAddr>, Option<[u8; 32]>);

type ResolveReply = oneshot::Sender<Result<Found, String>>;

/// The node's link to its registry task; dropping it stops the task.
pub(crate) struct RegistryHandle {
    tx: mpsc::Sender<(u32, ResolveReply)>,
    task: tokio::task::JoinHandle<()>,
    resolve_timeout: Duration,
}

impl Drop for RegistryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RegistryHandle {
    /// The endpoint and identity key the registry holds for `node`.
    pub(crate) async fn lookup(&self, node: u32) -> Result<Found, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((node, tx))
            .await
            .map_err(|_| Error::Registry("registry task stopped".into()))?;
        match tokio::time::timeout(self.resolve_timeout, rx).await {
            Ok(Ok(Ok(a))) => Ok(a),
            Ok(Ok(Err(reason))) => Err(Error::Registry(format!("look up node {node}: {reason}"))),
            Ok(Err(_)) => Err(Error::Registry("registry task stopped".into())),
            Err(_) => Err(Error::Registry(format!("look up node {node}: timed out"))),
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
    let task = tokio::spawn(run(client, epoch, rc.addr, rc.public, rx, reg_tx));
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

async fn run(
    mut client: RegistryClient,
    epoch: tokio::time::Instant,
    addr: SocketAddr,
    public: bool,
    mut rx: mpsc::Receiver<(u32, ResolveReply)>,
    reg_tx: oneshot::Sender<Result<u32, String>>,
) {
    let mut reg_tx = Some(reg_tx);
    let mut conn: Option<TcpStream> = None;
    let mut chunk = vec![0u8; 16 * 1024];
    // Lookups in flight (call id → node), and who waits for each node.
    let mut calls: HashMap<CallId, u32> = HashMap::new();
    let mut waiters: HashMap<u32, Vec<ResolveReply>> = HashMap::new();
    loop {
        // Drain events and requests until the client is quiet.
        loop {
            let mut progress = false;
            while let Some(ev) = client.poll_event() {
                progress = true;
                match ev {
                    ClientEvent::Dial => {
                        let dial =
                            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
                                .await;
                        match dial {
                            Ok(Ok(s)) => {
                                let _ = s.set_nodelay(true);
                                conn = Some(s);
                                client.connected(now(epoch));
                            }
                            _ => client.disconnected(now(epoch)),
                        }
                    }
                    ClientEvent::CloseConnection => conn = None,
                    ClientEvent::Registered { node_id, .. } => {
                        if let Some(tx) = reg_tx.take() {
                            let _ = tx.send(Ok(node_id));
                        }
                        if public {
                            let _ = client.call(now(epoch), Call::SetVisibility(true));
                        }
                    }
                    ClientEvent::RegistrationFailed { reason } => {
                        if let Some(tx) = reg_tx.take() {
                            let _ = tx.send(Err(reason));
                        }
                    }
                    ClientEvent::CallDone { id, result } => {
                        let Some(node) = calls.remove(&id) else {
                            continue;
                        };
                        let r = match result {
                            Ok(Response::LookupOk(ok)) => {
                                let key = auth::decode_public_key(&ok.public_key).ok();
                                let ep = ok
                                    .real_addr
                                    .as_deref()
                                    .or(ok.endpoint.as_deref())
                                    .and_then(|e| e.parse::<SocketAddr>().ok());
                                if ep.is_none() && key.is_none() {
                                    Err("node not visible".to_string())
                                } else {
                                    Ok((ep, key))
                                }
                            }
                            Ok(other) => Err(format!("unexpected reply {other:?}")),
                            Err(reason) => Err(reason),
                        };
                        for w in waiters.remove(&node).unwrap_or_default() {
                            let _ = w.send(r.clone());
                        }
                    }
                    _ => {}
                }
            }
            while let Some(bytes) = client.poll_bytes() {
                progress = true;
                let ok = match conn.as_mut() {
                    Some(s) => s.write_all(&bytes).await.is_ok(),
                    None => false,
                };
                if !ok {
                    conn = None;
                    client.disconnected(now(epoch));
                }
            }
            if !progress {
                break;
            }
        }
        let deadline = client
            .poll_timeout()
            .map(|t| epoch + Duration::from_nanos(t.as_nanos()))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            r = read_some(&mut conn, &mut chunk) => match r {
                Ok(n) if n > 0 => {
                    // A stream that is not the registry's makes the client
                    // ask to close it (CloseConnection, handled above).
                    let _ = client.handle_bytes(now(epoch), chunk.get(..n).unwrap_or_default());
                }
                _ => {
                    conn = None;
                    client.disconnected(now(epoch));
                }
            },
            cmd = rx.recv() => match cmd {
                Some((node, reply)) => {
                    if let Some(w) = waiters.get_mut(&node) {
                        w.push(reply);
                    } else {
                        match client.call(now(epoch), Call::Lookup(node)) {
                            Ok(id) => {
                                calls.insert(id, node);
                                waiters.insert(node, vec![reply]);
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e.to_string()));
                            }
                        }
                    }
                }
                None => return,
            },
            () = tokio::time::sleep_until(deadline) => client.handle_timeout(now(epoch)),
        }
    }
}
