//! Writes the seed corpus for the cargo-fuzz targets from the conformance
//! vectors: `fuzz-seeds DIR` creates `DIR/<target>/<n>` for every target.
//! `fuzz/run.sh` calls it before fuzzing.

use std::path::PathBuf;
use std::process::ExitCode;

use pilot_conformance::fuzz::{TARGETS, seeds_for};

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz-seeds DIR   (writes DIR/<target>/<n> seed files)");
        return ExitCode::from(2);
    };
    for target in TARGETS {
        let sub = dir.join(target);
        if let Err(e) = std::fs::create_dir_all(&sub) {
            eprintln!("fuzz-seeds: cannot create {}: {e}", sub.display());
            return ExitCode::FAILURE;
        }
        let seeds = seeds_for(target);
        for (i, seed) in seeds.iter().enumerate() {
            let path = sub.join(format!("vector-{i:03}"));
            if let Err(e) = std::fs::write(&path, seed) {
                eprintln!("fuzz-seeds: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        println!("{target}: {} seeds", seeds.len());
    }
    ExitCode::SUCCESS
}
