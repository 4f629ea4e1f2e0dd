#!/usr/bin/env bash
# Splits of big shards under load (issue 25): 3 local nodes, 2 shards over 4096 buckets, loaded with
# RECORDS keys of VALUE_SIZE bytes (RECORDS x VALUE_SIZE / 2 of live data per shard), then a put load of
# 100 clients (8-byte keys, 256-byte values, 503s retried) runs while each shard is split by command in
# the middle of its buckets. Prints the put run (ops/s, p50/p99/max) and, from the nodes' logs, per split:
# how long each replica's shrink took, how long each node took to open the new shard by reference, and
# how long the moved buckets waited (the split's entry applying on the old shard's leader until the new
# shard's first entry commits). The nodes stop at the end.
#
#   scripts/split-big-bench.sh [RECORDS] [VALUE_SIZE] [BIN_DIR]   (defaults: 100000, 1024, target/release)
set -euo pipefail
RECORDS=${1:-100000}
VALUE_SIZE=${2:-1024}
DIR=${3:-${CARGO_TARGET_DIR:-target}/release}
BIN=$DIR/cairn
BENCH=$DIR/cairn-bench
SHARDS=2
LOG_LEVEL=info
source "$(dirname "$0")/local-nodes.sh"
ADDRS=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
shards() { "$BIN" shards list --json --addr 127.0.0.1:18051 2>/dev/null; }
for _ in $(seq 1 120); do
  [ "$(shards | python3 -c 'import json,sys; s=json.load(sys.stdin); print(len(s["shards"] if isinstance(s, dict) else s))' 2>/dev/null)" = 2 ] && break
  sleep 1
done
"$BENCH" http --addr "$ADDRS" --clients 100 --records "$RECORDS" --value-size "$VALUE_SIZE" --workloads "" --retry \
  | awk '/^load/ {printf "loaded %s keys of %s bytes: %s puts/s\n", "'"$RECORDS"'", "'"$VALUE_SIZE"'", $2}'
du -sh "$D/n1" | awk '{print "node 1 holds " $1}'
# The put load, and the splits a few seconds into it.
"$BENCH" http --addr "$ADDRS" --clients 100 --records 60000 --seed 7 --workloads "" --retry >"$D/load.out" &
LOAD=$!
sleep 3
shards | python3 -c '
import json, sys
s = json.load(sys.stdin)
for x in (s["shards"] if isinstance(s, dict) else s):
    first, last = x["ranges"][0][0], x["ranges"][-1][1]
    print(x["id"], (first + last + 1) // 2)' | while read -r id at; do
  "$BIN" shards split "$id" --at "$at" --addr 127.0.0.1:18051 >/dev/null
done
wait "$LOAD"
awk '/^load/ {ops=$2} /^  update/ {p50=$5; p99=$8; max=$14} /^load/ {retried=$(NF-2)}
  END {printf "puts during the splits: %.0f puts/s  p50 %s ms  p99 %s ms  max %s ms  %s retried\n", ops, p50, p99, max, retried}' "$D/load.out"
logs() { cat "$D"/n*.out "$D"/n*.err 2>/dev/null; }
echo "shrinks (each replica of each split shard):"
logs | grep -h "gave buckets up to a split" | sed -n 's/.*new_group=\([0-9]*\) shrink_ms=\([0-9]*\).*/  new shard \1: shrink \2 ms/p'
echo "new shards opened by reference:"
logs | grep -h "made a split's new shard" \
  | sed -n 's/.*shard=\([0-9]*\) from=.* copied=\([0-9]*\) waited_ms=\([0-9]*\) opened_ms=\([0-9]*\).*/  new shard \1: opened in \4 ms (waited \3 ms), \2 bytes copied/p'
echo "moved buckets waiting (split applied on the old shard's leader -> the new shard's first commit):"
logs | grep -h "split's moved buckets served again" \
  | sed -n 's/.*new=\([0-9]*\) committed_ms=\([0-9]*\) recorded_ms=\([0-9]*\).*/  new shard \1: \2 ms (in the map after \3 ms)/p'
