#!/usr/bin/env bash
# Idle cost of many shards: starts 3 local cairn nodes, `cairn init --shards N` (4096 buckets),
# waits until every shard has a leader, then prints the nodes' CPU (utime+stime from /proc) over
# 20 s of idleness, their RSS, threads and open files. The nodes stop at the end.
#
#   scripts/many-shards.sh [SHARDS] [CAIRN_BINARY]     (defaults: 1024, target/release/cairn)
set -euo pipefail
N=${1:-1024}
BIN=${2:-${CARGO_TARGET_DIR:-target}/release/cairn}
SHARDS=$N
source "$(dirname "$0")/local-nodes.sh"
t0=$(date +%s)
led=0
for _ in $(seq 1 300); do
  led=$("$BIN" status --json --addr 127.0.0.1:18051 2>/dev/null | python3 -c '
import json, sys
try:
    print(sum(1 for s in json.load(sys.stdin)["shards"] if s["leader"]))
except Exception:
    print(0)')
  [ "$led" = "$N" ] && break
  sleep 1
done
echo "$led of $N shards led $(( $(date +%s) - t0 )) s after the nodes started"
ticks() { local t=0; for p in "${PID[@]}"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
sleep 5
c0=$(ticks); sleep 20; c1=$(ticks)
hz=$(getconf CLK_TCK)
python3 -c "print(f'idle: {($c1-$c0)/$hz:.2f} CPU s over 20 s = {($c1-$c0)/$hz/20:.3f} cores (3 nodes)')"
for p in "${PID[@]}"; do
  echo "pid $p: rss $(awk '/VmRSS/{print $2}' /proc/$p/status) kB, threads $(ls /proc/$p/task | wc -l), fds $(ls /proc/$p/fd | wc -l)"
done
