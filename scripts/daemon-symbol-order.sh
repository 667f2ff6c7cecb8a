#!/usr/bin/env bash
# daemon-symbol-order.sh: regenerate driver-mio/pilot-daemon.order, the
# list of functions an idle pilot-daemon has run, which the linker puts
# first in the executable's text (driver-mio/build.rs).
#
#   scripts/daemon-symbol-order.sh [IDLE_SECONDS]   (default 35)
#
# Why: the kernel maps an executable's text in 64 KiB blocks around each
# page the process touches (fault-around), so an idle daemon whose start,
# registration, one stream and timers ran ~1 MB of functions spread over
# the whole 8 MB text kept 5.5 MiB of it resident. Listed first and
# together, the same functions cost ~1.2 MiB (driver-mio/README.md,
# "Session 9: idle memory").
#
# How: builds pilot-daemon with symbols, runs a rendezvous and two
# daemons under valgrind's callgrind (both roles: each pings the other,
# the datapath bench's start-up), lets them idle past the heartbeat (30 s)
# and NAT keepalive (25 s), and lists every function of the executable
# that either daemon ran, mangled as the linker sees it. valgrind's CPU
# lacks AVX-512, VAES and SHA-NI, so ring, sha2 and crc32fast pick other
# code than on the real CPU: with perf, rounds of the same run natively
# (daemons linked with the list so far, instruction-fetch page faults
# recorded) then add the function at each fault outside the listed
# block, until a round finds none. Needs valgrind, python3, and perf for
# the rounds. Names that no longer exist after a code or toolchain change
# are skipped by the linker (the file goes stale, not wrong); rerun this
# when the bench's idle RSS row climbs.
set -euo pipefail
cd "$(dirname "$0")/.."
idle=${1:-35}
helper=scripts/daemon-symbol-order.py
for tool in valgrind callgrind_control python3; do
    command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done

work=$(mktemp -d /tmp/pilot-order.XXXXXX)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
trap 'stop_all; rm -rf "$work"' EXIT

echo "== building pilot-daemon with symbols (relinks only the binary)"
cargo build --release -p pilot-driver-mio --bin pilot-rendezvous --bin pilotctl
cargo rustc --release -p pilot-driver-mio --bin pilot-daemon -- -C strip=none
cp target/release/pilot-daemon target/release/pilot-rendezvous target/release/pilotctl "$work/"
# Leave the normal (stripped, laid out) daemon in target/release again.
trap 'stop_all; rm -rf "$work"; cargo build --release -p pilot-driver-mio --bin pilot-daemon >/dev/null 2>&1 || true' EXIT

field() { grep -o "$1=[^ ]*" "$2" | head -1 | cut -d= -f2 || true; }
wait_line() { # FILE WORD SECONDS
    for _ in $(seq $(($3 * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "timed out waiting for '$2' in $1" >&2; exit 1
}
ping() { # SOCKET ADDR
    for _ in $(seq 60); do
        "$work/pilotctl" --socket "$1" ping "$2" --count 2 --timeout 5s >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "ping $2 through $1 never answered" >&2; exit 1
}
# One run: a rendezvous, daemons a and b started through "$@" (a command
# prefix, e.g. valgrind), a ping each way, then the idle period. pids[1]
# and pids[2] are the daemons' (or their wrappers') process ids.
run_pair() {
    rm -rf "$work/a" "$work/b" "$work"/*.sock "$work"/rv.redb*
    "$work/pilot-rendezvous" --registry-addr 127.0.0.1:0 --beacon-addr 127.0.0.1:0 \
        --store "$work/rv.redb" >"$work/rv.out" 2>"$work/rv.err" &
    pids+=($!)
    wait_line "$work/rv.out" listening 10
    local registry beacon
    registry=$(field registry "$work/rv.out")
    beacon=$(field beacon "$work/rv.out")
    for n in a b; do
        "${@//@N@/$n}" "$work/pilot-daemon" --registry "$registry" --beacon "$beacon" \
            --listen 127.0.0.1:0 --dir "$work/$n" --socket "$work/$n.sock" \
            --public --log-level warn >"$work/$n.out" 2>"$work/$n.err" &
        pids+=($!)
        wait_line "$work/$n.out" "ready " 120
    done
    ping "$work/a.sock" "$(field address "$work/b.out")"
    ping "$work/b.sock" "$(field address "$work/a.out")"
    sleep "$idle"
}

echo "== callgrind: pings both ways, then ${idle} s idle"
run_pair valgrind --tool=callgrind --callgrind-out-file="$work/cg.@N@" --dump-instr=no \
    --compress-strings=no --compress-pos=no --demangle=no
callgrind_control -d "${pids[1]}" >/dev/null
callgrind_control -d "${pids[2]}" >/dev/null
sleep 3
python3 "$helper" callgrind "$work"/cg.a.* "$work"/cg.b.* >"$work/order.0"
stop_all
echo "== callgrind: $(wc -l <"$work/order.0") functions"

final="$work/order.0"
if command -v perf >/dev/null &&
    perf record -q -e exceptions:page_fault_user -o "$work/probe.data" -- true >/dev/null 2>&1; then
    for round in 1 2 3 4 5; do
        prev=$final
        # A new file name each round: cargo does not look into link-arg files.
        PILOT_PLAIN_LINK=1 cargo rustc --release -p pilot-driver-mio --bin pilot-daemon -- \
            -C strip=none -C link-arg=-Wl,--symbol-ordering-file="$prev" \
            -C link-arg=-Wl,--no-warn-symbol-ordering -C link-arg=-Wl,-z,pack-relative-relocs
        cp target/release/pilot-daemon "$work/pilot-daemon"
        rm -f "$work"/pf.*.data
        echo "== round $round: native run under perf"
        run_pair perf record -q -e exceptions:page_fault_user -o "$work/pf.@N@.data" --
        # SIGKILL the daemons under perf: their shutdown is not idle code.
        for p in "${pids[1]}" "${pids[2]}"; do
            child=$(pgrep -P "$p" || true)
            if [ -n "$child" ]; then kill -KILL "$child"; fi
            wait "$p" || true # perf writes its file once the daemon is gone
        done
        stop_all
        python3 "$helper" faults "$work/pilot-daemon" "$work"/pf.*.data |
            { grep -vxFf "$prev" || true; } >"$work/new"
        final="$work/order.$round"
        cat "$prev" "$work/new" >"$final"
        echo "== round $round: $(wc -l <"$work/new") more functions"
        [ -s "$work/new" ] || break
    done
else
    echo "== perf (exceptions:page_fault_user) unavailable: callgrind's list only" >&2
fi

out=driver-mio/pilot-daemon.order
{
    echo "# Functions an idle pilot-daemon ran (start, registration, a ping each"
    echo "# way, ${idle} s idle), listed first in its text by driver-mio/build.rs."
    echo "# Generated by scripts/daemon-symbol-order.sh with $(rustc --version); do not edit."
    cat "$final"
} >"$out"
echo "== wrote $out ($(grep -vc '^#' "$out") functions)"
