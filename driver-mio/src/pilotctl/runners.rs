//! The hidden runners `pilotctl _daemon-run` and `pilotctl _rendezvous-run`:
//! the daemon and the rendezvous server inside this executable, with the
//! same flags as the `pilot-daemon` and `pilot-rendezvous` binaries.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;

use crate::daemon::DaemonArgs;
use crate::rendezvous::{RendezvousArgs, run_rendezvous};

#[derive(Parser, Debug)]
#[command(name = "pilotctl _daemon-run")]
struct DaemonCli {
    #[command(flatten)]
    args: DaemonArgs,
}

#[derive(Parser, Debug)]
#[command(name = "pilotctl _rendezvous-run")]
struct RendezvousCli {
    #[command(flatten)]
    args: RendezvousArgs,
}

fn parse<P: Parser>(name: &str, args: &[OsString]) -> Result<P, ExitCode> {
    let argv = std::iter::once(OsString::from(name)).chain(args.iter().cloned());
    P::try_parse_from(argv).map_err(|e| {
        let _ = e.print();
        ExitCode::from(2)
    })
}

/// Runs the daemon with `args` (its own flags) until SIGTERM/SIGINT.
pub fn daemon_run(args: &[OsString]) -> ExitCode {
    let cli: DaemonCli = match parse("pilotctl _daemon-run", args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match crate::daemon::run(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilot-daemon: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the rendezvous server with `args` until SIGTERM/SIGINT.
pub fn rendezvous_run(args: &[OsString]) -> ExitCode {
    let cli: RendezvousCli = match parse("pilotctl _rendezvous-run", args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run_rendezvous(cli.args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilot-rendezvous: {e}");
            ExitCode::from(1)
        }
    }
}
