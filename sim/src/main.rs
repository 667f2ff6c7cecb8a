//! `pilot-sim`: run a registered scenario over one or more seeds.
//! See `sim/README.md` for the command-line contract.

use std::process::ExitCode;

use clap::Parser;
use pilot_sim::cli::{self, EXIT_USAGE};
use pilot_sim::config::{Args, SimConfig};
use pilot_sim::scenario::Registry;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match SimConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pilot-sim: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let registry = Registry::builtin();
    let code = cli::run(
        &cfg,
        &registry,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    );
    match code {
        Ok(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        Err(e) => {
            eprintln!("pilot-sim: output error: {e}");
            ExitCode::FAILURE
        }
    }
}
