//! The running gateway: loopback aliases, one TCP listener per mapped
//! address and port, one proxy per accepted connection, and the control
//! socket (`spec/gateway.md` §3–§4).
//!
//! Threads: one accept loop on the control socket (the caller's thread),
//! one accept loop per (mapping, port), two per proxied connection (one per
//! direction). Every loop wakes at least every [`POLL`] to notice a stop;
//! active connections are capped at [`MAX_CONNECTIONS`] (more are closed at
//! once and counted).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pilot_proto::addr::Addr;
use serde_json::{Value, json};
use thiserror::Error;

use super::control::{ControlError, read_json};
use super::dns::{self, DnsCounters, Lookup};
use super::table::{Mapped, Subnet, Table};
use crate::ipc_client::{IpcClient, IpcClientError, resolved_addr};

/// How often blocked loops look at their stop flag.
pub const POLL: Duration = Duration::from_millis(200);

/// Most proxied connections open at once, over all mappings.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a proxied connection waits for the Pilot dial.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the DNS stub waits for the daemon to resolve a hostname
/// (stub resolvers retry after a few seconds; answer SERVFAIL before).
pub const DNS_TIMEOUT: Duration = Duration::from_secs(4);

/// Linux capability number of `CAP_NET_ADMIN`.
const CAP_NET_ADMIN: u32 = 12;

/// Configuration of a gateway.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The daemon's IPC socket.
    pub daemon_socket: PathBuf,
    /// Where the control socket is created.
    pub control: PathBuf,
    /// Subnet of local addresses.
    pub subnet: Subnet,
    /// Ports forwarded for every mapping (same port number on the peer).
    pub ports: Vec<u16>,
    /// Interface that carries the `/32` aliases.
    pub interface: String,
    /// Where the DNS stub for `<hostname>.pilot` listens (UDP); `None`
    /// runs no stub.
    pub dns: Option<SocketAddr>,
}

/// Why the gateway cannot run. Each has the envelope code of `pilotctl`.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// Not root and no `CAP_NET_ADMIN`.
    #[error(
        "the gateway needs root or CAP_NET_ADMIN to add local addresses (running as uid {uid} without it)"
    )]
    Permission {
        /// Effective uid.
        uid: u32,
    },
    /// Not Linux, or `ip` (iproute2) missing.
    #[error("{0}")]
    Unsupported(String),
    /// The daemon does not answer.
    #[error("daemon is not running (no daemon at {0})")]
    NoDaemon(PathBuf),
    /// Another gateway holds the control socket.
    #[error("a gateway is already running (control socket {0})")]
    AlreadyRunning(PathBuf),
    /// Local I/O failed.
    #[error("{0}")]
    Io(String),
}

impl GatewayError {
    /// The `pilotctl` error (code, message, hint) of this failure.
    pub fn to_control(&self) -> ControlError {
        let m = self.to_string();
        match self {
            GatewayError::Permission { .. } => ControlError::new("permission_denied", m).hint(
                "run it as root (sudo pilotctl gateway start …), or grant the binary the capabilities once: sudo setcap cap_net_admin,cap_net_bind_service+ep $(command -v pilotctl)",
            ),
            GatewayError::Unsupported(_) => ControlError::new("unsupported", m)
                .hint("the gateway needs Linux with iproute2 (`ip`) installed"),
            GatewayError::NoDaemon(_) => {
                ControlError::new("not_running", m).hint("start it with: pilotctl daemon start")
            }
            GatewayError::AlreadyRunning(_) => ControlError::new("already_exists", m)
                .hint("change it with pilotctl gateway map/unmap, or stop it: pilotctl gateway stop"),
            GatewayError::Io(_) => ControlError::new("internal", m),
        }
    }
}

/// Whether this process may add interface addresses: `Some(false)` when
/// `/proc/self/status` says `CAP_NET_ADMIN` is not effective, `None` when
/// that cannot be read.
pub fn net_admin_capable() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_NET_ADMIN) != 0)
}

/// Checks what the gateway needs before anything is started: Linux, the
/// `ip` tool and `CAP_NET_ADMIN`.
pub fn preflight() -> Result<(), GatewayError> {
    if !cfg!(target_os = "linux") {
        return Err(GatewayError::Unsupported(
            "the IP gateway is only implemented on Linux".into(),
        ));
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err(GatewayError::Unsupported(
            "the `ip` command (iproute2) is not installed".into(),
        ));
    }
    if net_admin_capable() == Some(false) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        return Err(GatewayError::Permission { uid });
    }
    Ok(())
}

/// Runs `ip -4 addr <op> <ip>/32 dev <dev>`; the error is `ip`'s message.
fn ip_addr(op: &str, ip: Ipv4Addr, dev: &str) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["-4", "addr", op, &format!("{ip}/32"), "dev", dev])
        .output()
        .map_err(|e| format!("run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// One port of a mapping that could not be bound.
#[derive(Clone, Debug)]
struct FailedPort {
    port: u16,
    error: String,
}

/// The live part of one mapping.
struct Live {
    addr: Addr,
    ports: Vec<u16>,
    failed: Vec<FailedPort>,
    /// We added the alias (it was not there before), so we remove it.
    alias_added: bool,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    connections: Arc<AtomicU64>,
}

/// Counters over the gateway's life.
#[derive(Default)]
struct Counters {
    active: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    dial_failed: AtomicU64,
}

struct State {
    table: Table,
    live: BTreeMap<Ipv4Addr, Live>,
}

/// A running gateway (shared by its threads).
pub struct Gateway {
    cfg: GatewayConfig,
    state: Mutex<State>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    dns: DnsCounters,
    dns_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Gateway {
    /// A gateway with no mappings; nothing is bound yet.
    pub fn new(cfg: GatewayConfig) -> Arc<Gateway> {
        Arc::new(Gateway {
            state: Mutex::new(State {
                table: Table::new(cfg.subnet),
                live: BTreeMap::new(),
            }),
            cfg,
            stop: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
            dns: DnsCounters::default(),
            dns_thread: Mutex::new(None),
        })
    }

    /// Binds the DNS stub (if configured) and starts its thread; it runs
    /// until the gateway stops. A bind failure is returned, not logged.
    pub fn start_dns(self: &Arc<Self>) -> Result<(), ControlError> {
        let Some(at) = self.cfg.dns else {
            return Ok(());
        };
        let socket = std::net::UdpSocket::bind(at).map_err(|e| {
            let c = ControlError::new("internal", format!("cannot bind the DNS stub on {at}: {e}"));
            if e.kind() == io::ErrorKind::PermissionDenied {
                c.hint("ports below 1024 need root or CAP_NET_BIND_SERVICE; or pick another, e.g. --dns 127.0.0.1:5353")
            } else {
                c.hint("pick a free address and port with --dns IP:PORT")
            }
        })?;
        let gw = self.clone();
        let t = std::thread::Builder::new()
            .name("gw-dns".into())
            .spawn(move || {
                let mut client: Option<IpcClient> = None;
                dns::serve(socket, &gw.stop, &gw.dns, POLL, |host| {
                    gw.dns_lookup(&mut client, host)
                });
            })
            .map_err(|e| ControlError::new("internal", format!("spawn DNS stub: {e}")))?;
        *self.dns_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        tracing::info!(%at, "DNS stub for .pilot listening");
        Ok(())
    }

    /// Resolves `host` through the daemon and maps the peer (or finds its
    /// mapping): the stub's answer. `client` is the stub's daemon
    /// connection, made again after a failure.
    fn dns_lookup(&self, client: &mut Option<IpcClient>, host: &str) -> Lookup {
        if client.is_none() {
            match IpcClient::connect(&self.cfg.daemon_socket) {
                Ok(mut c) => {
                    c.set_timeout(DNS_TIMEOUT);
                    *client = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS stub: daemon unreachable");
                    return Lookup::Failed;
                }
            }
        }
        let Some(c) = client.as_ref() else {
            return Lookup::Failed;
        };
        let v = match c.resolve_hostname(host) {
            Ok(v) => v,
            Err(IpcClientError::Daemon(m)) if m.contains("registry unreachable") => {
                return Lookup::Failed;
            }
            Err(IpcClientError::Daemon(_)) => return Lookup::NotFound,
            Err(e) => {
                tracing::warn!(%host, error = %e, "DNS stub: resolve failed");
                *client = None;
                return Lookup::Failed;
            }
        };
        let Some(addr) = resolved_addr(&v) else {
            return Lookup::NotFound;
        };
        match self.map(addr, None) {
            Ok(m) => match m["ip"].as_str().and_then(|s| s.parse().ok()) {
                Some(ip) => Lookup::Found(ip),
                None => Lookup::Failed,
            },
            Err(e) => {
                tracing::warn!(%host, %addr, error = %e.message, "DNS stub: cannot map");
                Lookup::Failed
            }
        }
    }

    /// The control socket path.
    pub fn control(&self) -> &Path {
        &self.cfg.control
    }

    /// The flag that ends [`Gateway::serve`] (set it from a signal
    /// handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mapping_json(ip: Ipv4Addr, l: &Live) -> Value {
        json!({
            "ip": ip.to_string(),
            "addr": l.addr.to_string(),
            "node_id": l.addr.node,
            "ports": l.ports,
            "failed_ports": l.failed.iter().map(|f| json!({"port": f.port, "error": f.error})).collect::<Vec<_>>(),
            "connections": l.connections.load(Ordering::Relaxed),
        })
    }

    /// The `list` answer.
    pub fn list(&self) -> Value {
        let st = self.lock();
        let mappings: Vec<Value> = st
            .live
            .iter()
            .map(|(ip, l)| Self::mapping_json(*ip, l))
            .collect();
        json!({
            "subnet": self.cfg.subnet.to_string(),
            "ports": self.cfg.ports,
            "pid": std::process::id(),
            "control": self.cfg.control.display().to_string(),
            "mappings": mappings,
            "total": mappings.len(),
            "active_connections": self.counters.active.load(Ordering::Relaxed),
            "accepted": self.counters.accepted.load(Ordering::Relaxed),
            "refused": self.counters.refused.load(Ordering::Relaxed),
            "dial_failed": self.counters.dial_failed.load(Ordering::Relaxed),
            "dns": self.cfg.dns.map(|at| json!({"listen": at.to_string(), "queries": self.dns.to_json()})),
        })
    }

    /// Maps `addr` (to `ip`, or the next free address): adds the alias and
    /// binds every port. Fails, changing nothing, if no port can be bound.
    pub fn map(&self, addr: Addr, ip: Option<Ipv4Addr>) -> Result<Value, ControlError> {
        let mut st = self.lock();
        let ip = match st.table.map(addr, ip) {
            Ok(Mapped::Existing(ip)) => {
                let mut v = Self::mapping_json(ip, &st.live[&ip]);
                v["existing"] = json!(true);
                return Ok(v);
            }
            Ok(Mapped::New(ip)) => ip,
            Err(e) => return Err(ControlError::new("invalid_argument", e.to_string())),
        };
        let undo = |st: &mut State| {
            let _ = st.table.unmap(ip);
        };
        let alias_added = match ip_addr("add", ip, &self.cfg.interface) {
            Ok(()) => true,
            Err(m) if m.contains("File exists") => false,
            Err(m) => {
                undo(&mut st);
                let e = ControlError::new(
                    "internal",
                    format!("cannot add {ip}/32 to {}: {m}", self.cfg.interface),
                );
                return Err(if m.contains("not permitted") {
                    e.hint("the gateway needs root or CAP_NET_ADMIN")
                } else {
                    e
                });
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let mut ports = Vec::new();
        let mut failed = Vec::new();
        let mut threads = Vec::new();
        for &port in &self.cfg.ports {
            match TcpListener::bind(SocketAddr::from((ip, port))) {
                Ok(l) => {
                    let ctx = ProxyCtx {
                        daemon_socket: self.cfg.daemon_socket.clone(),
                        addr,
                        port,
                        stop: stop.clone(),
                        all_stop: self.stop.clone(),
                        counters: self.counters.clone(),
                        connections: connections.clone(),
                    };
                    match std::thread::Builder::new()
                        .name(format!("gw-{ip}:{port}"))
                        .spawn(move || accept_loop(l, ctx))
                    {
                        Ok(t) => {
                            threads.push(t);
                            ports.push(port);
                        }
                        Err(e) => failed.push(FailedPort {
                            port,
                            error: format!("spawn: {e}"),
                        }),
                    }
                }
                Err(e) => failed.push(FailedPort {
                    port,
                    error: e.to_string(),
                }),
            }
        }
        if ports.is_empty() {
            undo(&mut st);
            if alias_added {
                let _ = ip_addr("del", ip, &self.cfg.interface);
            }
            let detail: Vec<String> = failed
                .iter()
                .map(|f| format!("{}: {}", f.port, f.error))
                .collect();
            return Err(ControlError::new(
                "internal",
                format!(
                    "could not listen on any port of {ip} ({})",
                    detail.join("; ")
                ),
            ));
        }
        let live = Live {
            addr,
            ports,
            failed,
            alias_added,
            stop,
            threads,
            connections,
        };
        let v = Self::mapping_json(ip, &live);
        tracing::info!(%ip, %addr, ports = ?live.ports, "mapped");
        st.live.insert(ip, live);
        Ok(v)
    }

    /// Removes the mapping of `ip`: closes its listeners and connections
    /// and removes the alias it added.
    pub fn unmap(&self, ip: Ipv4Addr) -> Result<Value, ControlError> {
        let live = {
            let mut st = self.lock();
            st.table.unmap(ip).map_err(|e| {
                ControlError::new("not_found", e.to_string())
                    .hint("`pilotctl gateway list` shows the mappings")
            })?;
            st.live.remove(&ip)
        };
        let Some(live) = live else {
            return Err(ControlError::new("internal", "mapping table out of step"));
        };
        let v = Self::mapping_json(ip, &live);
        self.teardown(ip, live);
        tracing::info!(%ip, "unmapped");
        Ok(v)
    }

    fn teardown(&self, ip: Ipv4Addr, live: Live) {
        live.stop.store(true, Ordering::SeqCst);
        for t in live.threads {
            let _ = t.join();
        }
        if live.alias_added {
            if let Err(m) = ip_addr("del", ip, &self.cfg.interface) {
                tracing::warn!(%ip, error = %m, "cannot remove alias");
            }
        }
    }

    /// Removes every mapping.
    pub fn unmap_all(&self) -> Vec<Value> {
        let all: Vec<(Ipv4Addr, Live)> = {
            let mut st = self.lock();
            let ips: Vec<Ipv4Addr> = st.live.keys().copied().collect();
            ips.into_iter()
                .filter_map(|ip| {
                    let _ = st.table.unmap(ip);
                    st.live.remove(&ip).map(|l| (ip, l))
                })
                .collect()
        };
        all.into_iter()
            .map(|(ip, l)| {
                let v = Self::mapping_json(ip, &l);
                self.teardown(ip, l);
                v
            })
            .collect()
    }

    fn handle(&self, req: &Value) -> Result<Value, ControlError> {
        let ip_field = |req: &Value| -> Result<Option<Ipv4Addr>, ControlError> {
            match req.get("ip").and_then(Value::as_str) {
                None => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| {
                    ControlError::new("invalid_argument", format!("invalid IPv4 address {s:?}"))
                }),
            }
        };
        match req["cmd"].as_str().unwrap_or("") {
            "list" => Ok(self.list()),
            "map" => {
                let a = req["addr"].as_str().unwrap_or("");
                let addr: Addr = a.parse().map_err(|_| {
                    ControlError::new("invalid_argument", format!("invalid Pilot address {a:?}"))
                })?;
                self.map(addr, ip_field(req)?)
            }
            "unmap" => {
                let ip = ip_field(req)?
                    .ok_or_else(|| ControlError::new("invalid_argument", "unmap needs an ip"))?;
                self.unmap(ip)
            }
            "stop" => {
                self.stop.store(true, Ordering::SeqCst);
                Ok(json!({"stopping": true, "pid": std::process::id()}))
            }
            other => Err(ControlError::new(
                "invalid_argument",
                format!("unknown gateway command {other:?}"),
            )),
        }
    }

    /// Binds the control socket. Fails if another gateway answers on it; a
    /// stale socket file is replaced.
    pub fn bind_control(&self) -> Result<UnixListener, GatewayError> {
        let path = &self.cfg.control;
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(GatewayError::AlreadyRunning(path.clone()));
            }
            let _ = std::fs::remove_file(path);
        }
        let l = UnixListener::bind(path)
            .map_err(|e| GatewayError::Io(format!("bind {}: {e}", path.display())))?;
        l.set_nonblocking(true)
            .map_err(|e| GatewayError::Io(e.to_string()))?;
        Ok(l)
    }

    /// Serves control requests on `listener` until the stop flag is set,
    /// then removes every mapping and the socket file.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> Vec<Value> {
        while !self.stop.load(Ordering::SeqCst) {
            if !wait_readable(listener.as_raw_fd(), POLL) {
                continue;
            }
            let Ok((s, _)) = listener.accept() else {
                continue;
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
            let reply = match read_json(&s) {
                Ok(req) => match self.handle(&req) {
                    Ok(data) => json!({"ok": true, "data": data}),
                    Err(e) => e.to_reply(),
                },
                Err(m) => ControlError::new("invalid_argument", m).to_reply(),
            };
            let mut line = reply.to_string();
            line.push('\n');
            let _ = (&s).write_all(line.as_bytes());
        }
        if let Some(t) = self
            .dns_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
        let removed = self.unmap_all();
        let _ = std::fs::remove_file(&self.cfg.control);
        removed
    }
}

/// Checks the daemon answers at `socket`.
pub fn check_daemon(socket: &Path) -> Result<(), GatewayError> {
    let mut c =
        IpcClient::connect(socket).map_err(|_| GatewayError::NoDaemon(socket.to_path_buf()))?;
    c.set_timeout(Duration::from_secs(10));
    c.info()
        .map(|_| ())
        .map_err(|_| GatewayError::NoDaemon(socket.to_path_buf()))
}

/// `poll(2)` for readability with a timeout; `true` if readable.
fn wait_readable(fd: i32, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
    n > 0
}

/// What a listener's proxies need.
#[derive(Clone)]
struct ProxyCtx {
    daemon_socket: PathBuf,
    addr: Addr,
    port: u16,
    /// This mapping is being removed.
    stop: Arc<AtomicBool>,
    /// The whole gateway is stopping.
    all_stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    connections: Arc<AtomicU64>,
}

impl ProxyCtx {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.all_stop.load(Ordering::SeqCst)
    }
}

fn accept_loop(listener: TcpListener, ctx: ProxyCtx) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !ctx.stopping() {
        if !wait_readable(listener.as_raw_fd(), POLL) {
            continue;
        }
        let Ok((tcp, peer)) = listener.accept() else {
            continue;
        };
        if ctx.counters.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            ctx.counters.active.fetch_sub(1, Ordering::SeqCst);
            ctx.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "too many gateway connections; closing");
            continue;
        }
        ctx.counters.accepted.fetch_add(1, Ordering::Relaxed);
        ctx.connections.fetch_add(1, Ordering::Relaxed);
        let c = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("gw-conn".into())
            .spawn(move || {
                if let Err(e) = proxy(tcp, &c) {
                    tracing::debug!(error = %e, "gateway connection ended");
                }
                c.counters.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            ctx.counters.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Copies one TCP connection to and from a Pilot stream to the same port
/// of the mapped peer; when either side ends, both are closed.
fn proxy(tcp: TcpStream, ctx: &ProxyCtx) -> io::Result<()> {
    tcp.set_nonblocking(false)?;
    let _ = tcp.set_nodelay(true);
    let mut client = IpcClient::connect(&ctx.daemon_socket).map_err(io::Error::other)?;
    client.set_timeout(DIAL_TIMEOUT);
    let conn = match client.dial(ctx.addr, ctx.port) {
        Ok(c) => c,
        Err(e) => {
            ctx.counters.dial_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(addr = %ctx.addr, port = ctx.port, error = %e, "dial failed");
            let _ = tcp.shutdown(Shutdown::Both);
            return Err(io::Error::other(e));
        }
    };
    let client = Arc::new(client);
    let done = Arc::new(AtomicBool::new(false));
    let up = {
        let client = client.clone();
        let mut tcp = tcp.try_clone()?;
        let done = done.clone();
        std::thread::Builder::new()
            .name("gw-up".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match tcp.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if client.send(conn, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                done.store(true, Ordering::SeqCst);
                let _ = client.close(conn);
                let _ = tcp.shutdown(Shutdown::Both);
            })?
    };
    let mut out = &tcp;
    loop {
        if done.load(Ordering::SeqCst) || ctx.stopping() {
            break;
        }
        match client.recv(conn, POLL) {
            Ok(Some(chunk)) => {
                if out.write_all(&chunk).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(IpcClientError::Timeout(_)) => continue,
            Err(_) => break,
        }
    }
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = client.close(conn);
    let _ = up.join();
    Ok(())
}
