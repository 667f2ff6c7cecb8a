//! `pilot-rendezvous`: the registry (TCP) and beacon (UDP) server.
//!
//! Run `pilot-rendezvous --help` for usage; `driver-mio/README.md` has more.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pilot_driver_mio::rendezvous::cli::init_logging;
use pilot_driver_mio::rendezvous::server::wall_now;
use pilot_driver_mio::rendezvous::store::{RedbStore, Store};
use pilot_driver_mio::rendezvous::{RendezvousArgs, run_rendezvous};
use pilot_proto::registry::snapshot::Snapshot;

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
    #[command(flatten)]
    args: RendezvousArgs,
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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => run_rendezvous(cli.args).map_err(|e| e.to_string()),
        Command::Export => {
            let (cfg, format) = cli.args.resolve().map_err(|e| e.to_string())?;
            init_logging(format, "info");
            let s = RedbStore::open(&cfg.store_path, wall_now()).map_err(|e| e.to_string())?;
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
            let (cfg, format) = cli.args.resolve().map_err(|e| e.to_string())?;
            init_logging(format, "info");
            let json = std::fs::read(&snap).map_err(|e| format!("{}: {e}", snap.display()))?;
            let mut s = RedbStore::open(&cfg.store_path, wall_now()).map_err(|e| e.to_string())?;
            let state = s.import(&json, wall_now()).map_err(|e| e.to_string())?;
            tracing::info!(
                nodes = state.nodes.len(),
                networks = state.networks.len(),
                "snapshot imported"
            );
            Ok(())
        }
    }
}
