//! `pilot-daemon`: one Pilot Protocol node — the UDP tunnel, the registry
//! connection, the built-in services and the IPC socket applications and
//! `pilotctl` talk to. Run `pilot-daemon --help` for usage.

use std::process::ExitCode;

use clap::Parser;
use pilot_driver_mio::daemon::{DaemonArgs, run};

/// Pilot Protocol daemon: registers with the registry, serves the IPC
/// socket, runs echo (7), data exchange (1001), event stream (1002) and
/// the trust handshake (444).
///
/// Without --registry it uses the rendezvous on 127.0.0.1:9000, or starts
/// one in-process there. State (identity.json, trust.json, received/,
/// inbox/) lives in --dir. Once registered, one line goes to stdout:
/// `ready node_id=N address=A socket=S udp=U registry=R`. SIGTERM/SIGINT
/// stop it gracefully (a second signal exits at once).
#[derive(Parser, Debug)]
#[command(name = "pilot-daemon", version, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    args: DaemonArgs,
    /// Serve Prometheus metrics (text format) at http://ADDR/metrics,
    /// read from this daemon's IPC socket at each scrape
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

const EXAMPLES: &str = "Examples:
  pilot-daemon                                   # local registry, ~/.pilot, /tmp/pilot.sock
  pilot-daemon --registry 127.0.0.1:9000 --dir /tmp/a --socket /tmp/a.sock
  pilot-daemon --config daemon.toml --log-format json --log-level debug";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _metrics = match (cli.metrics_addr, cli.args.resolve()) {
        (Some(addr), Ok(settings)) => {
            match pilot_driver_mio::daemon_metrics::start(addr, &settings.socket) {
                Ok(e) => Some(e),
                Err(e) => {
                    eprintln!("pilot-daemon: --metrics-addr {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    match run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilot-daemon: {e}");
            ExitCode::FAILURE
        }
    }
}
