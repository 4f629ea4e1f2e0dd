#!/usr/bin/env bash
# cairn vs a single-member etcd 3.4 on this machine, same workloads, same run (twice, back to back):
# cairn-bench drives cairn over gRPC and etcd over its v3 gRPC KV API (linearizable reads), 100 clients,
# 8-byte keys, 256-byte values, fsync on for both. Prints each run's output, then a ratio table.
#   compare/etcd.sh [records] [ops]          (defaults 100000 100000)
# Installs Debian's etcd-server if etcd is missing (compare/etcd-common.sh). Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-100000}"
ops="${2:-100000}"
source compare/etcd-common.sh

bench() { # target addr label
    "$bin/cairn-bench" "$1" --addr "$2" --clients 100 --records "$records" --ops "$ops" --workloads A,B,C,F \
        | tee "$work/$3.txt"
    # One client: put and linearizable get latency.
    "$bin/cairn-bench" "$1" --addr "$2" --clients 1 --records 2000 --ops 2000 --workloads C \
        | tee "$work/$3-1.txt"
}

for round in 1 2; do
    echo "== round $round: etcd"
    etcd --name bench --data-dir "$work/etcd-$round" \
        --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
        --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
        --initial-cluster bench=http://127.0.0.1:23800 --log-level error --logger zap \
        >"$work/etcd-$round.log" 2>&1 &
    pids+=($!)
    wait_port 127.0.0.1 23790
    bench etcd 127.0.0.1:23790 "etcd-$round"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

    echo "== round $round: cairn"
    "$bin/cairn" start --store "$work/cairn-$round" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:23791 \
        --log-level warn >"$work/cairn-$round.log" 2>&1 &
    pids+=($!)
    wait_port 127.0.0.1 23791
    bench grpc 127.0.0.1:23791 "cairn-$round"
    kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done


echo
echo "round  metric                          cairn        etcd      cairn/etcd"
for round in 1 2; do
    c="$work/cairn-$round.txt"; e="$work/etcd-$round.txt"; c1="$work/cairn-$round-1.txt"; e1="$work/etcd-$round-1.txt"
    row() { printf "%-6s %-28s %10s  %10s  %10s\n" "$round" "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
    row "put ops/s (load, 100 cl.)" "$(opsps "$c" load)" "$(opsps "$e" load)"
    row "get ops/s (YCSB-C, 100 cl.)" "$(opsps "$c" YCSB-C)" "$(opsps "$e" YCSB-C)"
    row "YCSB-A ops/s" "$(opsps "$c" YCSB-A)" "$(opsps "$e" YCSB-A)"
    row "YCSB-B ops/s" "$(opsps "$c" YCSB-B)" "$(opsps "$e" YCSB-B)"
    row "YCSB-F ops/s" "$(opsps "$c" YCSB-F)" "$(opsps "$e" YCSB-F)"
    row "put p99 ms (load)" "$(lat "$c" load update p99)" "$(lat "$e" load update p99)"
    row "get p99 ms (YCSB-C)" "$(lat "$c" YCSB-C read p99)" "$(lat "$e" YCSB-C read p99)"
    row "put p50 ms (1 client)" "$(lat "$c1" load update p50)" "$(lat "$e1" load update p50)"
    row "get p50 ms (1 client)" "$(lat "$c1" YCSB-C read p50)" "$(lat "$e1" YCSB-C read p50)"
done
