#!/usr/bin/env bash
# Range-scan latency (YCSB-E: 95% scans of 10 rows from a zipfian key, 5% updates) against one node and
# against `cairn demo --nodes 3`, for each build given, side by side, twice (rounds back to back).
#   scripts/bench-scan.sh BIN_DIR [BIN_DIR...]      (each holds `cairn` and `cairn-bench`)
# Prints each run's output, then ops/s and scan p50/p99 per build and round, with the server's CPU
# seconds per operation. Everything binds to 127.0.0.1.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [BIN_DIR...]" >&2; exit 2; }
records="${RECORDS:-20000}"
ops="${OPS:-20000}"
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
# User+system CPU seconds of process $1 and its descendants (`cairn demo` runs its nodes as children).
cpu() {
    local pids="$1" p
    for p in $(pgrep -P "$1" 2>/dev/null); do pids="$pids $(descendants "$p")"; done
    for p in $pids; do cat "/proc/$p/stat" 2>/dev/null; done | awk '{ s += $14 + $15 } END { print s / 100 }'
}
descendants() { local p; echo "$1"; for p in $(pgrep -P "$1" 2>/dev/null); do descendants "$p"; done; }

run() { # bin label mode
    local bin="$1" label="$2" mode="$3" addr
    if [ "$mode" = one ]; then
        "$bin/cairn" start --store "$work/$label" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:23791 \
            --log-level warn >"$work/$label.log" 2>&1 &
        addr=127.0.0.1:23791
    else
        "$bin/cairn" demo --nodes 3 --store "$work/$label" --http-addr 127.0.0.1:23810 \
            --grpc-addr 127.0.0.1:23820 --log-level warn >"$work/$label.log" 2>&1 &
        addr=127.0.0.1:23820,127.0.0.1:23821,127.0.0.1:23822
    fi
    pid=$!
    for _ in $(seq 1 600); do grep -q '^cairn listening' "$work/$label.log" && break; sleep 0.1; done
    "$bin/cairn-bench" grpc --addr "$addr" --clients 10 --records "$records" --ops 1 --workloads C >/dev/null
    local before; before="$(cpu "$pid")"
    "$bin/cairn-bench" grpc --addr "$addr" --clients 10 --records "$records" --ops "$ops" --workloads E \
        --no-load | tee "$work/$label.txt"
    echo "server-cpu-per-op $(awk -v a="$before" -v b="$(cpu "$pid")" -v n="$ops" 'BEGIN { printf "%.6f", (b - a) / n }')" \
        >>"$work/$label.txt"
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

for round in 1 2; do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        for mode in one three; do
            echo "== round $round: build $i ($bin), $mode node(s)"
            run "$bin" "r$round-b$i-$mode" "$mode"
        done
    done
done

echo
echo "round  build  nodes   ops/s     scan p50 ms  scan p99 ms  server CPU s/op"
for round in 1 2; do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        for mode in one three; do
            f="$work/r$round-b$i-$mode.txt"
            printf "%-6s %-6s %-6s %9s  %11s  %11s  %s\n" "$round" "$i" "$mode" \
                "$(awk '$1 == "YCSB-E" { print $2 }' "$f")" \
                "$(awk '$1 == "scan" { print $5 }' "$f")" "$(awk '$1 == "scan" { print $8 }' "$f")" \
                "$(awk '$1 == "server-cpu-per-op" { print $2 }' "$f")"
        done
    done
done
