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
SHARDS=$N
source "$(dirname "$0")/local-nodes.sh"
leaders() {
  "$BIN" status --json --addr 127.0.0.1:18051 2>/dev/null | python3 -c '
import collections, json, sys
try:
    shards = json.load(sys.stdin)["shards"]
    print(dict(sorted(collections.Counter(s["leader"] for s in shards).items())))
except Exception as e:
    print("?", e)'
}
sleep 40
echo "leaders per node before:        $(leaders)"
kill "${PID[3]}"; wait "${PID[3]}" || true
sleep 6
echo "node 3 stopped:                 $(leaders)"
start_node 3 127.0.0.1:18053
sleep 6
echo "6 s after node 3 restarted:     $(leaders)"
sleep 10
echo "16 s after:                     $(leaders)"
