#!/usr/bin/env bash
# The scenario of issue 23 on a 3-node cluster of real processes (127.0.0.1, HTTP 18101-18103, gRPC
# 19101-19103): 12 concurrent 1 MiB PUTs (4 through each node) and 100 sequential ones, twice, with the
# servers' CPU seconds; a paged range over them; then a clean stop (SIGTERM) of a shard's leader under
# a write loop, reporting the longest write.
#   cargo build --release -p cairn && scripts/bench-large-values.sh target/release/cairn
set -euo pipefail
BIN=$(realpath "${1:?usage: $0 path/to/cairn}")
DIR=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
start() { # start N JOIN
  "$BIN" start --log-level warn --store "$DIR/n$1" --http-addr "127.0.0.1:1810$1" \
    --grpc-addr "127.0.0.1:1910$1" --join "$2" >"$DIR/n$1.log" 2>&1 &
  PIDS+=($!)
}
ready() { until curl -sf "http://127.0.0.1:$1/health?ready=1" >/dev/null; do sleep 0.2; done; }
start 1 ""
until "$BIN" init --addr 127.0.0.1:19101 --replication-factor 3 --shards 4 --dead-after-secs 2 2>/dev/null; do sleep 0.2; done
start 2 127.0.0.1:19101
start 3 127.0.0.1:19101
for p in 18101 18102 18103; do ready $p; done
python3 "$(dirname "$0")/bench_large_values.py" "${PIDS[@]}"
