//! Command-line flags and config file of the rendezvous server, and
//! [`run_rendezvous`], the entry point shared by the `pilot-rendezvous`
//! binary, `pilotctl _rendezvous-run` and the daemon's embedded registry.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;

use super::server::{Server, ServerConfig, ServerError};

/// Log output format on stderr.
#[derive(ValueEnum, Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

/// The flags of `pilot-rendezvous` (also flattened into `pilotctl
/// _rendezvous-run`). Every value is optional; defaults come from the
/// config file, then from [`ServerConfig::new`] (loopback only).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RendezvousArgs {
    /// TCP address of the registry [default: 127.0.0.1:9000]
    #[arg(long, global = true)]
    pub registry_addr: Option<SocketAddr>,
    /// UDP address of the beacon [default: 127.0.0.1:9001]
    #[arg(long, global = true)]
    pub beacon_addr: Option<SocketAddr>,
    /// A second UDP address where the beacon answers discovers only, so
    /// daemons given it (`pilot-daemon --beacon-observer`) can tell whether
    /// their NAT's mapping depends on the destination (spec/beacon.md §3.7)
    /// [default: none]
    #[arg(long, global = true)]
    pub beacon_observer_addr: Option<SocketAddr>,
    /// Peer beacons serving the same network (UDP `host:port`, comma
    /// separated): gossip, and punches and relays for their nodes are
    /// handed to them; with a shared store each node's beacon is recorded
    /// in it (spec/beacon.md §3.8)
    #[arg(long, global = true, value_delimiter = ',')]
    pub beacon_peers: Vec<SocketAddr>,
    /// This beacon's address as its peers reach it (recorded for the nodes
    /// it serves) [default: --beacon-addr when not a wildcard]
    #[arg(long, global = true)]
    pub beacon_advertise: Option<SocketAddr>,
    /// Store: a redb file (created if missing), or a `postgres://user@host:port/db`
    /// URL shared by several frontends (spec/registry.md §11.3)
    /// [default: rendezvous.redb]
    #[arg(long, global = true)]
    pub store: Option<PathBuf>,
    /// Admin token enabling the admin-only requests (none: disabled)
    #[arg(long, global = true)]
    pub admin_token: Option<String>,
    /// Accept only the timestamped (strong) signature form, refusing the
    /// legacy fixed-challenge signatures (spec/registry.md §5)
    #[arg(long, global = true)]
    pub strict_signatures: bool,
    /// Disable the per-IP rate limits (load tests, trusted networks only)
    #[arg(long, global = true)]
    pub no_rate_limits: bool,
    /// Log format on stderr (level with RUST_LOG, default info)
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Most concurrent registry connections; when full, a source with
    /// fewer connections evicts the idlest one of the heaviest source
    /// [default: 4096]
    #[arg(long, global = true)]
    pub max_connections: Option<usize>,
    /// Most concurrent registry connections from one source address
    /// (IPv6: one /64) [default: 64]
    #[arg(long, global = true)]
    pub max_conns_per_ip: Option<usize>,
    /// Close registry connections that complete no request for this many
    /// seconds [default: 300]
    #[arg(long, global = true)]
    pub idle_timeout_secs: Option<u64>,
    /// Close a registry connection whose request frame has not arrived in
    /// full this many seconds after its first byte [default: 10]
    #[arg(long, global = true)]
    pub frame_timeout_secs: Option<u64>,
    /// Wire profile of the registry: `current`, or `legacy` to serve
    /// February-2026 ("v1.8") daemons (their error texts, networks and
    /// endpoint rule, spec/registry.md) [default: current]
    #[arg(long, global = true, value_enum)]
    pub profile: Option<ProfileArg>,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics
    #[arg(long, global = true)]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the HTML dashboard at http://ADDR/ (nodes online, networks,
    /// tags, recent activity; never a private node's endpoint)
    #[arg(long, global = true)]
    pub http_addr: Option<SocketAddr>,
    /// Serve the registry over TLS with this PEM certificate chain (leaf
    /// first); needs --tls-key
    #[arg(long, global = true, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, global = true, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Config file, JSON (`.json`) or TOML (anything else), with the same
    /// keys as the long flags in snake_case; flags take precedence
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

/// The `--profile` values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileArg {
    /// The newest wire format.
    #[default]
    Current,
    /// The February-2026 ("v1.8") wire format.
    Legacy,
}

impl From<ProfileArg> for pilot_proto::WireProfile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Current => pilot_proto::WireProfile::Current,
            ProfileArg::Legacy => pilot_proto::WireProfile::Legacy,
        }
    }
}

/// The config file; every key optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry_addr: Option<SocketAddr>,
    beacon_addr: Option<SocketAddr>,
    beacon_observer_addr: Option<SocketAddr>,
    beacon_peers: Option<Vec<SocketAddr>>,
    beacon_advertise: Option<SocketAddr>,
    store: Option<PathBuf>,
    admin_token: Option<String>,
    strict_signatures: Option<bool>,
    log_format: Option<LogFormat>,
    max_connections: Option<usize>,
    max_conns_per_ip: Option<usize>,
    idle_timeout_secs: Option<u64>,
    frame_timeout_secs: Option<u64>,
    no_rate_limits: Option<bool>,
    profile: Option<ProfileArg>,
    metrics_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// Why the rendezvous server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// The config file could not be read or parsed.
    #[error("config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// Binding, the store or the event loop failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Reads a config file: JSON when the name ends in `.json`, TOML otherwise.
pub(crate) fn read_config_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())
    } else {
        toml::from_str(&text).map_err(|e| e.to_string())
    }
}

/// Installs the global `tracing` subscriber on stderr (once per process;
/// later calls are no-ops). `level` is used when `RUST_LOG` is unset.
pub fn init_logging(format: LogFormat, level: &str) {
    init_logging_with(format, None, level);
}

/// Whether to colour what goes to stderr: only on a terminal, and never
/// when `NO_COLOR` is set (<https://no-color.org>). Log files and pipes get
/// plain text.
pub fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Like [`init_logging`], with an explicit filter (a `--log-level` flag)
/// that takes precedence over `RUST_LOG`.
pub fn init_logging_with(format: LogFormat, explicit: Option<&str>, default: &str) {
    let filter = explicit
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
        .map(Ok)
        .unwrap_or_else(tracing_subscriber::EnvFilter::try_from_default_env)
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour_on_stderr())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

impl RendezvousArgs {
    /// Merges the flags with the config file (flags win). Returns the
    /// server configuration and the log format.
    pub fn resolve(&self) -> Result<(ServerConfig, LogFormat), RendezvousError> {
        let file: FileConfig = match &self.config {
            Some(p) => read_config_file(p).map_err(|reason| RendezvousError::Config {
                path: p.clone(),
                reason,
            })?,
            None => FileConfig::default(),
        };
        let store = self
            .store
            .clone()
            .or(file.store)
            .unwrap_or_else(|| PathBuf::from("rendezvous.redb"));
        let mut cfg = ServerConfig::new(store);
        if let Some(a) = self.registry_addr.or(file.registry_addr) {
            cfg.registry_addr = a;
        }
        if let Some(a) = self.beacon_observer_addr.or(file.beacon_observer_addr) {
            cfg.observer_addr = Some(a);
        }
        if let Some(a) = self.beacon_addr.or(file.beacon_addr) {
            cfg.beacon_addr = a;
        }
        cfg.beacon_peers = if self.beacon_peers.is_empty() {
            file.beacon_peers.unwrap_or_default()
        } else {
            self.beacon_peers.clone()
        };
        cfg.beacon_advertise = self.beacon_advertise.or(file.beacon_advertise);
        let bad = |what: &str| RendezvousError::Invalid(format!("{what} must be at least 1"));
        if let Some(n) = self.max_connections.or(file.max_connections) {
            if n == 0 {
                return Err(bad("max_connections"));
            }
            cfg.max_connections = n;
        }
        if let Some(n) = self.max_conns_per_ip.or(file.max_conns_per_ip) {
            if n == 0 {
                return Err(bad("max_conns_per_ip"));
            }
            cfg.max_conns_per_ip = n;
        }
        if let Some(s) = self.idle_timeout_secs.or(file.idle_timeout_secs) {
            if s == 0 {
                return Err(bad("idle_timeout_secs"));
            }
            cfg.idle_timeout = Duration::from_secs(s);
        }
        if let Some(s) = self.frame_timeout_secs.or(file.frame_timeout_secs) {
            if s == 0 {
                return Err(bad("frame_timeout_secs"));
            }
            cfg.frame_timeout = Duration::from_secs(s);
        }
        cfg.registry.admin_token = self.admin_token.clone().or(file.admin_token);
        cfg.registry.strict_signatures =
            self.strict_signatures || file.strict_signatures.unwrap_or(false);
        if self.no_rate_limits || file.no_rate_limits.unwrap_or(false) {
            cfg.registry.rate_limits = false;
        }
        cfg.registry.profile = self.profile.or(file.profile).unwrap_or_default().into();
        cfg.metrics_addr = self.metrics_addr.or(file.metrics_addr);
        cfg.http_addr = self.http_addr.or(file.http_addr);
        cfg.tls = match (
            self.tls_cert.clone().or(file.tls_cert),
            self.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(RendezvousError::Invalid(
                    "tls_cert and tls_key go together".into(),
                ));
            }
        };
        let format = self.log_format.or(file.log_format).unwrap_or_default();
        Ok((cfg, format))
    }
}

/// Runs the rendezvous server until SIGTERM or SIGINT: sets up logging,
/// binds both sockets, prints `listening registry=ADDR beacon=ADDR` on
/// stdout, then serves.
pub fn run_rendezvous(args: RendezvousArgs) -> Result<(), RendezvousError> {
    let (cfg, format) = args.resolve()?;
    init_logging(format, "info");
    let store = cfg.store_path.clone();
    let server = Server::bind(cfg)?;
    if !super::server::is_store_url(&store) {
        crate::daemon::embedded::restrict_store(&store);
    }
    let reg = server.registry_addr().map_err(ServerError::Io)?;
    let bea = server.beacon_addr().map_err(ServerError::Io)?;
    tracing::info!(registry = %reg, beacon = %bea, "listening");
    let mut line = format!("listening registry={reg} beacon={bea}");
    if let Some(a) = server.metrics_addr() {
        line.push_str(&format!(" metrics={a}"));
    }
    if let Some(a) = server.http_addr() {
        line.push_str(&format!(" http={a}"));
    }
    if let Some(a) = server.observer_addr() {
        line.push_str(&format!(" observer={a}"));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    server.run()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RendezvousArgs,
    }

    fn profile_of(argv: &[&str]) -> pilot_proto::WireProfile {
        let cli = Cli::try_parse_from(argv).expect("valid arguments");
        cli.args.resolve().expect("resolves").0.registry.profile
    }

    #[test]
    fn profile_flag_selects_the_registry_wire_profile() {
        use pilot_proto::WireProfile;
        assert_eq!(profile_of(&["x"]), WireProfile::Current);
        assert_eq!(
            profile_of(&["x", "--profile", "legacy"]),
            WireProfile::Legacy
        );
        assert_eq!(
            profile_of(&["x", "--profile", "current"]),
            WireProfile::Current
        );
        assert!(Cli::try_parse_from(["x", "--profile", "v1.8"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("r.toml");
        std::fs::write(&f, "profile = \"legacy\"\n").unwrap();
        let path = f.to_str().unwrap();
        assert_eq!(profile_of(&["x", "--config", path]), WireProfile::Legacy);
        // The flag wins over the file.
        assert_eq!(
            profile_of(&["x", "--config", path, "--profile", "current"]),
            WireProfile::Current
        );
    }
}
