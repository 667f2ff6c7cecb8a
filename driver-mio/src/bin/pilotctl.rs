//! `pilotctl`: the command-line client of the Pilot daemon (also hosts the
//! daemon and rendezvous runners it starts). Run `pilotctl --help`.

fn main() -> std::process::ExitCode {
    pilot_driver_mio::pilotctl::main_with_args(std::env::args_os().collect())
}
