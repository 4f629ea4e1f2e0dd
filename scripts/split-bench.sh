#!/usr/bin/env bash
# Splits under load (issue 25's benchmark): 3 local nodes, 4 shards over 4096 buckets. `cairn-bench http`
# puts RECORDS keys (100 clients, 8-byte keys, 256-byte values, 503s retried) through all three nodes:
#   1. twice with 4 shards (steady);
#   2. again and again while a small `split_size` makes the cluster split on its own to 64 shards or
#      more (each run's p99 and max: a put to a bucket that moved waits out the move and its retries);
#   3. twice with the 64+ shards (steady: `split_size` back to 256 MiB first).
# Each run prints ops/s, p50/p99/max and the nodes' CPU seconds per put (utime+stime from /proc), and
# the script prints the time from the setting to 64 shards and the bytes the splits copied (from the
# nodes' logs), and how long each split's moved buckets waited for a leader and for the map. The nodes
# stop at the end.
#
#   scripts/split-bench.sh [RECORDS] [SPLIT_SIZE] [BIN_DIR]   (defaults: 30000, 96KiB, target/release)
set -euo pipefail
RECORDS=${1:-30000}
SPLIT_SIZE=${2:-96KiB}
DIR=${3:-${CARGO_TARGET_DIR:-target}/release}
BIN=$DIR/cairn
BENCH=$DIR/cairn-bench
SHARDS=4
LOG_LEVEL=info
source "$(dirname "$0")/local-nodes.sh"
ADDRS=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
count() { # shards in the map, and whether a split or merge is under way
  "$BIN" shards list --json --addr 127.0.0.1:18051 2>/dev/null | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
    shards = s["shards"] if isinstance(s, dict) else s
    busy = any(x.get("splitting") or x.get("merging") for x in shards)
    print(len(shards), int(busy))
except Exception:
    print(0, 1)'
}
for _ in $(seq 1 120); do [ "$(count)" = "4 0" ] && break; sleep 1; done
ticks() { local t=0; for p in "${PID[@]}"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
hz=$(getconf CLK_TCK)
put_run() { # label
  local c0 c1 out
  c0=$(ticks)
  out=$("$BENCH" http --addr "$ADDRS" --clients 100 --records "$RECORDS" --workloads "" --retry)
  c1=$(ticks)
  echo "$out" | awk -v label="$1" -v cpu="$(( c1 - c0 ))" -v hz="$hz" -v n="$RECORDS" '
    /^load/ {ops=$2; retried=$(NF-2)}
    /^  update/ {p50=$5; p99=$8; max=$14}
    /^  retried/ {$1=""; why=why "\n               retried" $0}
    END {printf "%-14s %8.0f puts/s  p50 %7s ms  p99 %7s ms  max %8s ms  %s retried  %.1f us CPU/put (nodes)\n",
         label, ops, p50, p99, max, retried, cpu / hz / n * 1e6; if (why != "") print substr(why, 2)}'
}
put_run "4 shards"
put_run "4 shards"
"$BIN" settings set split_size "$SPLIT_SIZE" --addr 127.0.0.1:18051 >/dev/null
t0=$(date +%s.%N)
reached=""
runs=0
while [ -z "$reached" ] && [ $runs -lt 30 ]; do
  put_run "splitting"
  runs=$((runs + 1))
  read -r n _ < <(count)
  echo "               ($n shards)"
  if [ "$n" -ge 64 ]; then reached=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.0f}')"); fi
done
echo "64 shards or more $reached s after split_size was set to $SPLIT_SIZE (the time includes the put runs'"
echo "load phases between looks)"
# No more splits (every put run adds versions: without garbage collection the shards keep growing).
"$BIN" settings set split_size 256MiB --addr 127.0.0.1:18051 >/dev/null
for _ in $(seq 1 120); do read -r n busy < <(count); [ "$busy" = 0 ] && break; sleep 1; done
echo "settled at $n shards"
put_run "$n shards"
put_run "$n shards"
echo "bytes copied by splits, per node:"
for i in 1 2 3; do
  grep -h "made a split's new shard" "$D/n$i.out" "$D/n$i.err" 2>/dev/null \
    | sed -n 's/.*copied=\([0-9]*\).*/\1/p' | awk -v i="$i" '{s+=$1; n++} END {printf "  node %d: %d splits made, %d bytes copied\n", i, n, s}'
done
percentiles() { # label: p50, p90 and max of the numbers on stdin, one a line
  sort -n | awk -v label="$1" '
    function at(q) { i = int(NR * q) + 1; if (i > NR) i = NR; return p[i] }
    {p[NR] = $1}
    END {if (NR == 0) {print "  none logged"; exit}
         printf "  %-10s %d: p50 %d ms, p90 %d ms, max %d ms\n", label, NR, at(0.5), at(0.9), p[NR]}'
}
echo "opening a split's new shard on a node (engine by reference and its log; from the nodes' logs):"
cat "$D"/n*.out "$D"/n*.err 2>/dev/null | grep -h "made a split's new shard" \
  | sed -n 's/.*opened_ms=\([0-9]*\).*/\1/p' | percentiles "opened" || true
echo "moved buckets waiting, per split, from the split's entry applying on the old shard's leader until"
echo "the new shard has a leader and its first entry committed (then nodes holding it serve them) and until"
echo "the map names it (then every node routes to it); from the leaders' logs:"
cat "$D"/n*.out "$D"/n*.err 2>/dev/null | grep -h "split's moved buckets served again" \
  | sed -n 's/.*committed_ms=\([0-9]*\) recorded_ms=\([0-9]*\).*/\1 \2/p' > "$D/pauses" || true
cut -d' ' -f1 "$D/pauses" | percentiles "committed"
cut -d' ' -f2 "$D/pauses" | percentiles "in the map"
