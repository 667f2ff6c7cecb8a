//! `pilot-sim`: run a registered scenario over one or more seeds.
//! See `sim/README.md` for the command-line contract.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use pilot_sim::cli::{self, EXIT_USAGE};
use pilot_sim::config::{Args, SimConfig};
use pilot_sim::scenario::Registry;

fn main() -> ExitCode {
    let registry = Registry::builtin();
    // `--help` lists the scenarios `--scenario` accepts.
    let mut list = String::from("Scenarios:\n");
    for (name, about) in registry.list() {
        list.push_str(&format!("  {name:<22} {about}\n"));
    }
    let matches = Args::command().after_help(list).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let cfg = match SimConfig::try_from(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pilot-sim: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
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
