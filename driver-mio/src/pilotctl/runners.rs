//! The hidden runners `pilotctl _daemon-run` and `pilotctl _rendezvous-run`:
//! the daemon and the rendezvous server inside this executable.

use std::ffi::OsString;
use std::process::ExitCode;

/// Runs the daemon with `args` (its own flags) until SIGTERM/SIGINT.
pub fn daemon_run(args: &[OsString]) -> ExitCode {
    let _ = args;
    eprintln!("pilotctl: this build has no daemon runner yet");
    ExitCode::from(1)
}

/// Runs the rendezvous server with `args` until SIGTERM/SIGINT.
pub fn rendezvous_run(args: &[OsString]) -> ExitCode {
    let _ = args;
    eprintln!("pilotctl: this build has no rendezvous runner yet");
    ExitCode::from(1)
}
