# Sourced by scripts/many-shards.sh and scripts/restart-leaders.sh: three local cairn nodes (node i on
# HTTP 1808i and gRPC 1805i, data in a temporary directory) in a cluster of SHARDS shards over 4096
# buckets, stopped and deleted when the calling script exits (kept, and named on stderr, if
# CAIRN_KEEP_NODES=1: their logs are n1.out, n1.err, ...).
#
#   BIN=... SHARDS=... source scripts/local-nodes.sh     then: start_node ID JOIN, PID[ID], $D
[ -x "$BIN" ] || { echo "no cairn binary at $BIN (cargo build --release -p cairn)" >&2; exit 1; }
D=$(mktemp -d)
declare -A PID
cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${CAIRN_KEEP_NODES:-}" = 1 ]; then echo "nodes' data and logs kept in $D" >&2; else rm -rf "$D"; fi
}
trap cleanup EXIT
start_node() { # id join
  "$BIN" start --log-level "${LOG_LEVEL:-warn}" --store "$D/n$1" --http-addr "127.0.0.1:1808$1" --grpc-addr "127.0.0.1:1805$1" \
    --join "$2" >"$D/n$1.out" 2>"$D/n$1.err" &
  PID[$1]=$!
}
start_node 1 ""
sleep 1
"$BIN" init --addr 127.0.0.1:18051 --replication-factor 3 --shards "$SHARDS" --total-buckets 4096 >/dev/null
start_node 2 127.0.0.1:18051
sleep 1
start_node 3 127.0.0.1:18051
