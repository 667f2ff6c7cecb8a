//! `pilot-daemon`: the mio driver around the sans-IO daemon
//! (`pilot_proto::daemon`). This module owns everything the protocol core
//! cannot do itself: flags and config file ([`args`]), the state directory
//! ([`files`]), the IPC socket file ([`ipc_socket`]), the default
//! in-process registry ([`embedded`]) and the event loop ([`event_loop`]),
//! which drives the core directly ([`RealDaemon`], one output channel).
//!
//! Entry point: [`run`] (used by the `pilot-daemon` binary and by
//! `pilotctl _daemon-run`).

pub mod args;
pub mod embedded;
pub mod event_loop;
pub mod files;
pub mod ipc_socket;
pub mod task_files;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pilot_proto::crypto::identity::{Identity, TunnelKey};
use pilot_proto::crypto::provider::{RustCrypto, Selected};
use pilot_proto::daemon::{Daemon, DaemonConfig, Services};
use pilot_proto::services::handshake::TrustFile;
use pilot_proto::wire::WireProfile;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub use args::{DaemonArgs, Settings};
pub use embedded::EmbeddedRendezvous;
pub use event_loop::{EventLoop, Exit, LoopParts, LoopStop};

use crate::rendezvous::cli::init_logging_with;

/// Longest wait for a graceful stop (FINs, deregistration) after
/// SIGTERM/SIGINT before the daemon exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the daemon could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonRunError {
    /// Flags or config file are invalid.
    #[error("config: {0}")]
    Config(String),
    /// The identity file cannot be used.
    #[error("identity file {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `trust.json` cannot be used.
    #[error("trust file {path}: {reason}")]
    Trust {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The IPC socket cannot be set up.
    #[error("IPC socket {path}: {reason}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The state directory cannot be used.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The tunnel UDP socket cannot be bound.
    #[error("tunnel socket {addr}: {source}")]
    Udp {
        /// The listen address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// No registry is available and none could be started.
    #[error("rendezvous: {0}")]
    Rendezvous(String),
    /// The event loop failed.
    #[error(transparent)]
    Loop(#[from] event_loop::LoopError),
    /// Randomness from the operating system is unavailable.
    #[error("no OS randomness: {0}")]
    Random(io::Error),
}

/// 32 bytes from the operating system's random source.
pub fn os_seed() -> Result<[u8; 32], DaemonRunError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed)
        .map_err(|e| DaemonRunError::Random(io::Error::other(e.to_string())))?;
    Ok(seed)
}

/// Everything prepared before the event loop starts, handed to the code
/// that builds the engine.
#[derive(Debug)]
pub struct Startup {
    /// The resolved settings.
    pub settings: Settings,
    /// The node's long-term identity (loaded or created).
    pub identity: Identity,
    /// `<identity>.next`: a key rotation's new key that did not reach the
    /// identity file (`spec/daemon.md` §2.9).
    pub next_identity: Option<Identity>,
    /// `trust.json` as loaded (`None`: first start).
    pub trust: Option<TrustFile>,
    /// The registry address in use.
    pub registry: SocketAddr,
    /// The tunnel endpoint advertised to the registry.
    pub endpoint: SocketAddr,
    /// Wall clock (Unix milliseconds) at the engine's `Instant::ZERO`.
    pub unix_ms_at_epoch: u64,
    /// RNG for the engine, seeded from the OS.
    pub rng: ChaCha20Rng,
}

/// Runs the daemon described by `args` until SIGTERM/SIGINT (then a
/// graceful stop: FINs, deregistration, socket removed). Prints
/// `ready node_id=N address=A socket=S udp=U registry=R` on stdout once
/// registered with the IPC socket listening.
pub fn run(args: DaemonArgs) -> Result<(), DaemonRunError> {
    run_until_stopped(args).map(|_| ())
}

/// Runs a daemon until it is stopped. Sets up logging, the state
/// directory, identity, trust, the default registry, the tunnel socket
/// and the IPC socket, then runs the loop around the sans-IO daemon.
pub fn run_until_stopped(args: DaemonArgs) -> Result<Exit, DaemonRunError> {
    let settings = args.resolve()?;
    init_logging_with(settings.log_format, settings.log_level.as_deref(), "info");
    let dir = settings.dir.clone();
    let dir_err = |e: io::Error| DaemonRunError::StateDir {
        path: dir.clone(),
        reason: e.to_string(),
    };
    files::create_private_dir(&dir).map_err(dir_err)?;
    let mut rng = ChaCha20Rng::from_seed(os_seed()?);
    let (identity, created) =
        files::load_or_create_identity(&settings.identity, &RustCrypto, &mut rng)?;
    tracing::info!(path = %settings.identity.display(), created, "identity ready");
    let next_identity = files::load_next_identity(&settings.identity, &RustCrypto);
    if next_identity.is_some() {
        tracing::warn!(path = %settings.identity.display(),
            "a key rotation did not finish: its new key is adopted if the registry retired the current one");
    }
    let identity_path = settings.identity.clone();
    let trust_path = dir.join("trust.json");
    let trust = files::load_trust(&trust_path)?;
    // What `set-hostname`, `set-public`/`set-private` and `set-tags` last
    // applied; flags given now take precedence.
    let profile_path = dir.join(files::PROFILE_FILE);
    let mut settings = settings;
    let mut task_exec = false;
    if let Some(p) = files::load_profile(&profile_path) {
        if settings.hostname.is_none() && !p.hostname.is_empty() {
            settings.hostname = Some(p.hostname);
        }
        settings.public |= p.public;
        settings.tags = p.tags;
        // `enable-tasks` and `set-webhook` of an earlier run; a
        // `--webhook` given now (flag or config file) takes precedence.
        task_exec = p.task_exec;
        if settings.webhook.is_none() && !p.webhook.is_empty() {
            settings.webhook = Some(p.webhook);
        }
    }
    let received =
        files::SaveDir::open(dir.join("received"), files::RECEIVED_QUOTA).map_err(dir_err)?;
    let inbox = files::SaveDir::open(dir.join("inbox"), files::INBOX_QUOTA).map_err(dir_err)?;

    // The embedded rendezvous (if any) lives until this function returns,
    // i.e. after the daemon has deregistered.
    let (registry, _embedded) = match settings.registry {
        Some(r) => (r, None),
        None => embedded::default_registry(&dir)?,
    };
    let udp = std::net::UdpSocket::bind(settings.listen).map_err(|source| DaemonRunError::Udp {
        addr: settings.listen,
        source,
    })?;
    udp.set_nonblocking(true)
        .map_err(|source| DaemonRunError::Udp {
            addr: settings.listen,
            source,
        })?;
    let (rcvbuf, sndbuf) = grow_udp_buffers(&udp);
    tracing::debug!(rcvbuf, sndbuf, "tunnel socket buffers");
    let bound = udp.local_addr().map_err(|source| DaemonRunError::Udp {
        addr: settings.listen,
        source,
    })?;
    let endpoint = args::advertised_endpoint(settings.endpoint, bound, registry);
    let ipc = ipc_socket::IpcSocket::bind(&settings.socket)?;
    tracing::info!(udp = %bound, %endpoint, %registry, socket = %settings.socket.display(),
        "sockets bound");

    let start = std::time::Instant::now();
    let unix_ms_at_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let startup = Startup {
        settings,
        identity,
        next_identity,
        trust,
        registry,
        endpoint,
        unix_ms_at_epoch,
        rng: ChaCha20Rng::from_seed(os_seed()?),
    };
    let webhook_url = startup.settings.webhook.clone();
    let webhook = crate::daemon::event_loop::WebhookSettings {
        allow_private: startup.settings.webhook_allow_private,
        secret: startup
            .settings
            .webhook_secret
            .clone()
            .map(String::into_bytes),
        roots: std::sync::Arc::new(
            crate::webhook::load_roots(startup.settings.webhook_ca.as_deref())
                .map_err(|e| DaemonRunError::Config(e.to_string()))?,
        ),
    };
    let mut engine = build(startup);
    if task_exec {
        engine.set_task_exec(true);
    }
    if let Some(url) = webhook_url {
        engine
            .set_webhook(&url)
            .map_err(|e| DaemonRunError::Config(format!("webhook: {e}")))?;
    }
    let parts = LoopParts {
        udp: mio::net::UdpSocket::from_std(udp),
        ipc,
        registry,
        trust_path,
        identity_path,
        profile_path,
        received,
        inbox,
        tasks_dir: dir.join("tasks"),
        webhook,
        handle_signals: true,
        print_ready: true,
        shutdown_grace: SHUTDOWN_GRACE,
    };
    let exit = EventLoop::new(engine, parts, start)?.run()?;
    tracing::info!(?exit, "daemon exited");
    Ok(exit)
}

/// The sans-IO daemon the driver runs.
pub type RealDaemon = Daemon<Selected, ChaCha20Rng>;

/// Builds the sans-IO daemon from what the driver prepared.
pub fn build(mut s: Startup) -> RealDaemon {
    let set = &s.settings;
    let provider = set.crypto;
    let tunnel_key = TunnelKey::generate(&provider, &mut s.rng);
    let mut cfg = DaemonConfig::new(s.identity, tunnel_key, provider, s.rng);
    cfg.profile = if set.legacy {
        WireProfile::Legacy
    } else {
        WireProfile::Current
    };
    cfg.encrypt = set.encrypt;
    cfg.registry = true;
    cfg.listen_addr = s.endpoint.to_string();
    cfg.hostname = set.hostname.clone().unwrap_or_default();
    cfg.public = set.public;
    cfg.tags = set.tags.clone();
    cfg.owner = set.owner.clone().unwrap_or_default();
    cfg.admin_token = set.admin_token.clone().unwrap_or_default().into_bytes();
    cfg.services = Services {
        echo: set.echo,
        dataexchange: set.dataexchange,
        eventstream: set.eventstream,
    };
    cfg.trust = s.trust;
    cfg.identity_persisted = true;
    cfg.next_identity = s.next_identity;
    cfg.unix_ms_at_epoch = s.unix_ms_at_epoch;
    // Local time, as spec/services.md §5.4 asks (trust.json, inbox names).
    cfg.utc_offset_secs = jiff::Zoned::now().offset().seconds();
    cfg.heartbeat = set.keepalive;
    // Endpoint discovery, punching and relay through the beacon
    // (`spec/beacon.md` §6); `--endpoint` pins what is advertised.
    cfg.beacon = set.beacon;
    cfg.beacon_observer = set.beacon_observer;
    cfg.endpoint_override = set.endpoint;
    cfg.keepalive = set.nat_keepalive;
    cfg.node_limits.user_timeout = set.user_timeout;
    cfg.node_limits.pending_peers = set.pending_peers;
    // A tunnel peer silent this long is dead: its session is dropped and
    // its connections fail (`spec/crypto.md` §13).
    cfg.peer_timeout = set.idle_timeout;
    Daemon::new(pilot_proto::time::Instant::ZERO, cfg)
}

/// Receive and send buffer size asked for on the tunnel socket. The
/// default (about 208 KiB) holds under a hundred full data segments, less
/// than one congestion window of a bulk stream: bursts were dropped by the
/// kernel and every drop cost a retransmission and a halved window. The
/// kernel caps the request at `net.core.{r,w}mem_max`.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Asks for [`UDP_SOCKET_BUFFER`] bytes of receive and send buffer on
/// `udp` (best effort) and returns the sizes the kernel reports (0 if
/// unknown).
pub fn grow_udp_buffers(udp: &std::net::UdpSocket) -> (usize, usize) {
    let sock = socket2::SockRef::from(udp);
    let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    (
        sock.recv_buffer_size().unwrap_or(0),
        sock.send_buffer_size().unwrap_or(0),
    )
}

#[cfg(test)]
mod buffer_tests {
    use super::*;

    #[test]
    fn tunnel_buffers_grow_past_the_default() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = std::fs::read_to_string("/proc/sys/net/core/rmem_default")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        let (rcv, snd) = grow_udp_buffers(&udp);
        assert!(rcv > 0 && snd > 0);
        // Linux doubles the request and caps it at rmem_max; where that
        // cap is above the default the buffer must have grown.
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if let (Some(def), Some(max)) = (before, max) {
            if max > def {
                assert!(rcv > def, "rcvbuf {rcv} not above default {def}");
            }
        }
    }
}
