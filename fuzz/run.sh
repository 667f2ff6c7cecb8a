#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS (default 60) on this machine's
# stable toolchain (RUSTC_BOOTSTRAP=1 unlocks the sanitizer flags), seeded
# with the conformance vectors. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo run -q --manifest-path ../Cargo.toml -p pilot-conformance --bin fuzz-seeds -- corpus
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 2>&1 \
        | grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|==.*ERROR|SUMMARY)' || true
    test "${PIPESTATUS[0]}" -eq 0 || { echo "fuzz $t FAILED (see fuzz/artifacts/$t)"; exit 1; }
done
