//! `pilot-rendezvous`: the registry (TCP) and beacon (UDP) server.
//!
//! Run `pilot-rendezvous --help` for usage; `driver-mio/README.md` has more.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use pilot_driver_mio::rendezvous::server::{Server, ServerConfig, wall_now};
use pilot_driver_mio::rendezvous::store::Store;
use pilot_proto::registry::snapshot::Snapshot;
use serde::Deserialize;

/// Pilot Protocol rendezvous server: the registry over TCP (length-prefixed
/// JSON) and the beacon over UDP, with a durable redb store.
///
/// Every acknowledged change is committed to the store before its reply is
/// sent; heartbeat times are written within about a second. On SIGTERM or
/// SIGINT the server writes what is pending and exits 0. When both sockets
/// are bound it prints one line to stdout:
/// `listening registry=ADDR beacon=ADDR` (useful with port 0).
#[derive(Parser, Debug)]
#[command(name = "pilot-rendezvous", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TCP address of the registry [default: 127.0.0.1:9000]
    #[arg(long, global = true)]
    registry_addr: Option<SocketAddr>,
    /// UDP address of the beacon [default: 127.0.0.1:9001]
    #[arg(long, global = true)]
    beacon_addr: Option<SocketAddr>,
    /// Store file (redb database; created if missing) [default: rendezvous.redb]
    #[arg(long, global = true)]
    store: Option<PathBuf>,
    /// Admin token enabling the admin-only requests (none: disabled)
    #[arg(long, global = true)]
    admin_token: Option<String>,
    /// Accept only the timestamped (strong) signature form, refusing the
    /// legacy fixed-challenge signatures (spec/registry.md §5)
    #[arg(long, global = true)]
    strict_signatures: bool,
    /// Disable the per-IP rate limits (load tests, trusted networks only)
    #[arg(long, global = true)]
    no_rate_limits: bool,
    /// Log format on stderr (level with RUST_LOG, default info)
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Most concurrent registry connections [default: 4096]
    #[arg(long, global = true)]
    max_connections: Option<usize>,
    /// Close registry connections idle this many seconds [default: 300]
    #[arg(long, global = true)]
    idle_timeout_secs: Option<u64>,
    /// Fold the change log into a snapshot after this many entries [default: 50000]
    #[arg(long, global = true)]
    compact_every: Option<u64>,
    /// Config file, JSON (`.json`) or TOML (anything else), with the same
    /// keys as the long flags in snake_case; flags take precedence
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

const EXAMPLES: &str = "Examples:
  pilot-rendezvous --store /var/lib/pilot/rv.redb --registry-addr 127.0.0.1:9000
  pilot-rendezvous export --store rv.redb > snapshot.json
  pilot-rendezvous import --store rv.redb snapshot.json";

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (the default)
    Serve,
    /// Print the stored state as the reference's JSON snapshot on stdout
    Export,
    /// Replace the stored state with a reference JSON snapshot file
    /// (run while the server is stopped)
    Import {
        /// Snapshot file (the reference implementation's registry JSON)
        file: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line
    Json,
}

/// The config file; every key optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    registry_addr: Option<SocketAddr>,
    beacon_addr: Option<SocketAddr>,
    store: Option<PathBuf>,
    admin_token: Option<String>,
    strict_signatures: Option<bool>,
    log_format: Option<LogFormat>,
    max_connections: Option<usize>,
    idle_timeout_secs: Option<u64>,
    no_rate_limits: Option<bool>,
    compact_every: Option<u64>,
}

fn read_config(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    } else {
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilot-rendezvous: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let file = match &cli.config {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    init_logging(
        cli.log_format
            .or(file.log_format)
            .unwrap_or(LogFormat::Text),
    );
    let store = cli
        .store
        .or(file.store)
        .unwrap_or_else(|| PathBuf::from("rendezvous.redb"));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Export => {
            let s = Store::open(&store).map_err(|e| e.to_string())?;
            let (state, _) = s.load(wall_now()).map_err(|e| e.to_string())?;
            let json = Snapshot::from_state(&state)
                .to_json()
                .map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            out.write_all(&json)
                .and_then(|()| out.write_all(b"\n"))
                .map_err(|e| e.to_string())
        }
        Command::Import { file: snap } => {
            let json = std::fs::read(&snap).map_err(|e| format!("{}: {e}", snap.display()))?;
            let mut s = Store::open(&store).map_err(|e| e.to_string())?;
            let state = s.import(&json, wall_now()).map_err(|e| e.to_string())?;
            tracing::info!(
                nodes = state.nodes.len(),
                networks = state.networks.len(),
                "snapshot imported"
            );
            Ok(())
        }
        Command::Serve => {
            let mut cfg = ServerConfig::new(store);
            if let Some(a) = cli.registry_addr.or(file.registry_addr) {
                cfg.registry_addr = a;
            }
            if let Some(a) = cli.beacon_addr.or(file.beacon_addr) {
                cfg.beacon_addr = a;
            }
            if let Some(n) = cli.max_connections.or(file.max_connections) {
                cfg.max_connections = n;
            }
            if let Some(s) = cli.idle_timeout_secs.or(file.idle_timeout_secs) {
                cfg.idle_timeout = Duration::from_secs(s);
            }
            cfg.registry.admin_token = cli.admin_token.or(file.admin_token);
            cfg.registry.strict_signatures =
                cli.strict_signatures || file.strict_signatures.unwrap_or(false);
            if let Some(n) = cli.compact_every.or(file.compact_every) {
                cfg.compact_every = n.max(1);
            }
            if cli.no_rate_limits || file.no_rate_limits.unwrap_or(false) {
                cfg.registry.rate_limits = false;
            }
            let server = Server::bind(cfg).map_err(|e| e.to_string())?;
            let reg = server.registry_addr().map_err(|e| e.to_string())?;
            let bea = server.beacon_addr().map_err(|e| e.to_string())?;
            tracing::info!(registry = %reg, beacon = %bea, "listening");
            println!("listening registry={reg} beacon={bea}");
            let _ = std::io::stdout().flush();
            server.run().map_err(|e| e.to_string())
        }
    }
}
