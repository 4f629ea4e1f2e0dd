#!/usr/bin/env bash
# What a node restart does to the leaders of quiet shards: 3 local nodes, `cairn init --shards N`
# (4096 buckets), 40 s to settle and go quiet, then node 3 stops (SIGTERM) and starts again on its
# addresses; prints each node's count of shard leaders before, while it is down, and 6 s and 16 s
# after it is back (a restart should not elect it leader anywhere: its share comes back only through
# leadership balancing). The nodes stop at the end.
#
#   scripts/restart-leaders.sh [SHARDS] [CAIRN_BINARY]     (defaults: 256, target/release/cairn)
set -euo pipefail
N=${1:-256}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/cairn}
[ -x "$BIN" ] || { echo "no cairn binary at $BIN (cargo build --release -p cairn)" >&2; exit 1; }
D=$(mktemp -d)
declare -A PID
cleanup() { for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
start() { # id http grpc join
  "$BIN" start --log-level warn --store "$D/n$1" --http-addr "127.0.0.1:$2" --grpc-addr "127.0.0.1:$3" \
    --join "$4" >"$D/n$1.out" 2>"$D/n$1.err" &
  PID[$1]=$!
}
leaders() {
  "$BIN" status --json --addr 127.0.0.1:18051 2>/dev/null | python3 -c '
import collections, json, sys
try:
    shards = json.load(sys.stdin)["shards"]
    print(dict(sorted(collections.Counter(s["leader"] for s in shards).items())))
except Exception as e:
    print("?", e)'
}
start 1 18081 18051 ""
sleep 1
"$BIN" init --addr 127.0.0.1:18051 --replication-factor 3 --shards "$N" --total-buckets 4096 >/dev/null
start 2 18082 18052 127.0.0.1:18051
sleep 1
start 3 18083 18053 127.0.0.1:18051
sleep 40
echo "leaders per node before:        $(leaders)"
kill "${PID[3]}"; wait "${PID[3]}" || true
sleep 6
echo "node 3 stopped:                 $(leaders)"
start 3 18083 18053 127.0.0.1:18053
sleep 6
echo "6 s after node 3 restarted:     $(leaders)"
sleep 10
echo "16 s after:                     $(leaders)"
