#!/usr/bin/env bash
# Read latency while consistency checks hash a large shard. One replicated node (`--node-id 1 --peers`,
# one shard, so one Raft group holds every key) is loaded with SIZE_MB of values (4 KiB each, logical
# bytes: the bench's values compress about fivefold on disk), then serves linearizable point reads
# (YCSB-C, 16 clients) twice, each after a restart and a warm-up pass: with no periodic checks (steady),
# and with a check every 2 s (each hashes the whole shard). Twice per build, side by side; prints ops/s and read p50/p99/p999/max of each run, the
# checks that passed during the checked run (builds that log them at info), and the ratio of the p99s.
#   scripts/bench-check.sh BIN_DIR [BIN_DIR...]      (each holds `cairn` and `cairn-bench`)
# Env: SIZE_MB (default 1024), OPS (reads per run, default 300000), BENCH_BIN (one cairn-bench for
# every build: the same client, and one that prints max latencies). Binds to 127.0.0.1 only.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN_DIR [BIN_DIR...]" >&2; exit 2; }
size_mb="${SIZE_MB:-1024}"
ops="${OPS:-300000}"
value=4096
records=$((size_mb * 1024 * 1024 / value))
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start() { # bin store interval log
    "$1/cairn" start --store "$2" --http-addr 127.0.0.1:23890 --grpc-addr 127.0.0.1:23891 --shards 1 \
        --node-id 1 --peers 1=127.0.0.1:23891 --check-interval-secs "$3" --log-level info >"$4" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do grep -q '^cairn listening' "$4" && break; sleep 0.1; done
}
stop() { kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
bench() { # bin
    echo "${BENCH_BIN:-$1/cairn-bench}"
}
reads() { # bin out
    "$(bench "$1")" grpc --addr 127.0.0.1:23891 --clients 16 --records "$records" --ops "$ops" \
        --value-size "$value" --workloads C --no-load | tee "$2"
}

warm() { # bin
    "$(bench "$1")" grpc --addr 127.0.0.1:23891 --clients 16 --records "$records" --ops "$((ops / 3))" \
        --value-size "$value" --workloads C --no-load >/dev/null
}

for round in 1 2; do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        label="r$round-b$i"
        echo "== round $round: build $i ($bin): load $size_mb MB ($records x $value B)"
        start "$bin" "$work/$label" 0 "$work/$label-load.log"
        "$(bench "$bin")" grpc --addr 127.0.0.1:23891 --clients 32 --records "$records" --ops 1 \
            --value-size "$value" --workloads C >/dev/null
        stop
        # Both measured runs follow a restart and a warm-up pass (the first reads after a restart
        # find the caches cold: their p99 alone was 2.5x a warm run's).
        start "$bin" "$work/$label" 0 "$work/$label-steady.log"
        warm "$bin"
        reads "$bin" "$work/$label-steady.txt"
        stop
        start "$bin" "$work/$label" 2 "$work/$label-checked.log"
        warm "$bin"
        reads "$bin" "$work/$label-checked.txt"
        stop
        grep -c 'consistency check passed' "$work/$label-checked.log" >"$work/$label-checks" || true
        du -sm "$work/$label" | awk '{ print $1 }' >"$work/$label-mb"
    done
done

echo
echo "round  build  store MB  steady ops/s  p50    p99    p999   max      | checked ops/s  p50    p99    p999   max      checks  p99 ratio"
for round in 1 2; do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        label="r$round-b$i"
        row() { awk '$1 == "YCSB-C" { o = $2 } $1 == "read" { p50 = $5; p99 = $8; p999 = $11; max = $14 } END { printf "%12s  %-6s %-6s %-6s %-8s", o, p50, p99, p999, max }' "$1"; }
        s99="$(awk '$1 == "read" { print $8 }' "$work/$label-steady.txt")"
        c99="$(awk '$1 == "read" { print $8 }' "$work/$label-checked.txt")"
        printf "%-6s %-6s %8s  %s | %s  %6s  %s\n" "$round" "$i" "$(cat "$work/$label-mb")" \
            "$(row "$work/$label-steady.txt")" "$(row "$work/$label-checked.txt")" "$(cat "$work/$label-checks")" \
            "$(awk -v a="$c99" -v b="$s99" 'BEGIN { if (b > 0) printf "%.2f", a / b }')"
    done
done
