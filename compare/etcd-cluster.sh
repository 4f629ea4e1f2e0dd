#!/usr/bin/env bash
# cairn (`cairn demo --nodes 3`: three nodes, every shard a 3-replica Raft group) vs a 3-member etcd 3.4
# cluster, on this machine, in the same run, twice (rounds back to back). cairn-bench spreads 100
# clients round-robin over the three nodes of each (8-byte keys, 256-byte values, fsync on for both)
# and measures puts (the load), linearizable gets (cairn: strong, by ReadIndex; lease; etcd: its
# default), and serializable gets (cairn: eventual; etcd: serializable); cairn also with clients that
# cache the shard map and send to the shards' leaders (--direct). Prints each run's output,
# then a ratio table.
#   compare/etcd-cluster.sh [records] [ops]          (defaults 50000 50000)
# Installs Debian's etcd-server if etcd is missing (compare/etcd-common.sh). Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-50000}"
ops="${2:-50000}"
source compare/etcd-common.sh

bench() { # target addrs label
    "$bin/cairn-bench" "$1" --addr "$2" --clients 100 --records "$records" --ops "$ops" --workloads C \
        --reads strong | tee "$work/$3-strong.txt"
    if [ "$1" = grpc ]; then
        "$bin/cairn-bench" "$1" --addr "$2" --clients 100 --records "$records" --ops "$ops" --workloads C \
            --reads lease --no-load | tee "$work/$3-lease.txt"
        # Clients that cache the shard map and send to the shards' leaders (cairn-client ClusterClient).
        "$bin/cairn-bench" "$1" --addr "$2" --clients 100 --records "$records" --ops "$ops" --workloads C \
            --reads strong --direct | tee "$work/$3-direct.txt"
    fi
    "$bin/cairn-bench" "$1" --addr "$2" --clients 100 --records "$records" --ops "$ops" --workloads C \
        --reads eventual --no-load | tee "$work/$3-eventual.txt"
}

for round in 1 2; do
    echo "== round $round: etcd, 3 members"
    start_etcd3 "$round"
    bench etcd 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 "etcd-$round"
    for i in 1 2 3; do kill "${pids[-$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true

    echo "== round $round: cairn demo --nodes 3"
    "$bin/cairn" demo --nodes 3 --store "$work/cairn-$round" --http-addr 127.0.0.1:23810 \
        --grpc-addr 127.0.0.1:23820 --log-level warn >"$work/cairn-$round.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 600); do grep -q '^cairn listening' "$work/cairn-$round.log" && break; sleep 0.1; done
    grep -q '^cairn listening' "$work/cairn-$round.log" || { cat "$work/cairn-$round.log"; exit 1; }
    bench grpc 127.0.0.1:23820,127.0.0.1:23821,127.0.0.1:23822 "cairn-$round"
    kill -INT "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done


echo
echo "round  metric                              cairn        etcd      cairn/etcd"
for round in 1 2; do
    c="$work/cairn-$round"; e="$work/etcd-$round"
    row() { printf "%-6s %-32s %10s  %10s  %10s\n" "$round" "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
    row "put ops/s (100 cl.)" "$(opsps "$c-strong.txt" load)" "$(opsps "$e-strong.txt" load)"
    row "put p99 ms" "$(lat "$c-strong.txt" load update p99)" "$(lat "$e-strong.txt" load update p99)"
    row "linearizable get ops/s" "$(opsps "$c-strong.txt" YCSB-C)" "$(opsps "$e-strong.txt" YCSB-C)"
    row "linearizable get p99 ms" "$(lat "$c-strong.txt" YCSB-C read p99)" "$(lat "$e-strong.txt" YCSB-C read p99)"
    row "lease get ops/s (vs etcd lin.)" "$(opsps "$c-lease.txt" YCSB-C)" "$(opsps "$e-strong.txt" YCSB-C)"
    row "put ops/s, direct clients" "$(opsps "$c-direct.txt" load)" "$(opsps "$e-strong.txt" load)"
    row "lin. get ops/s, direct clients" "$(opsps "$c-direct.txt" YCSB-C)" "$(opsps "$e-strong.txt" YCSB-C)"
    row "serializable get ops/s" "$(opsps "$c-eventual.txt" YCSB-C)" "$(opsps "$e-eventual.txt" YCSB-C)"
    row "serializable get p99 ms" "$(lat "$c-eventual.txt" YCSB-C read p99)" "$(lat "$e-eventual.txt" YCSB-C read p99)"
done
