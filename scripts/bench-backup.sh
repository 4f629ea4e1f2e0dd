#!/usr/bin/env bash
# Backups and restores (issue 26; docs/backup.md). Three local nodes (4 shards over 4096 buckets) are
# loaded with RECORDS keys of VALUE_SIZE bytes (by default 1,000,000 x 1000 B: about 1 GB of live data),
# then, printed as it goes:
#   1. a full backup to a directory and one to the local S3 test server (scripts/s3-test-server): time,
#      bytes held and uploaded;
#   2. 1% of the keys rewritten, then an incremental backup to S3: bytes uploaded vs the backup's size;
#   3. the S3 backup restored into a second, empty 3-node cluster: time, keys, versions;
#   4. with the second cluster stopped, YCSB-A (50% reads, 50% updates, 100 clients) steady, then with
#      full backups to fresh S3 prefixes running one after another for the whole run, twice: ops/s,
#      read and update p99 (bench lines as cairn-bench prints them), each backup's time, and the
#      ratios of each round's two runs (with BACKUP_RATE=RATE: the cluster's backup_rate set to it first).
# The nodes, the S3 server and their data go at the end.
#
#   [BACKUP_RATE=4MiB] [ETCD=1] scripts/bench-backup.sh [RECORDS] [VALUE_SIZE] [BIN_DIR]
#   (defaults: 1000000, 1000, target/release)
#
# The cairn binary must be built with object storage: cargo build --release -p cairn --features s3
set -euo pipefail
RECORDS=${1:-1000000}
VALUE_SIZE=${2:-1000}
DIR=${3:-${CARGO_TARGET_DIR:-target}/release}
BIN=$DIR/cairn
BENCH=$DIR/cairn-bench
SHARDS=4
here="$(cd "$(dirname "$0")" && pwd)"
# The nodes reach the S3 server with these (the test server takes any).
export AWS_ACCESS_KEY_ID=cairn-bench AWS_SECRET_ACCESS_KEY=cairn-bench
source "$here/local-nodes.sh"
ADDRS=127.0.0.1:18081,127.0.0.1:18082,127.0.0.1:18083
S3PIPE="$D/s3.stdin"
mkfifo "$S3PIPE"
"$here/s3-test-server" cairn-bench <"$S3PIPE" >"$D/s3.out" 2>"$D/s3.err" &
S3PID=$!
exec 7>"$S3PIPE"
declare -A PID2
stop_all() {
  for p in "${PID2[@]}"; do kill "$p" 2>/dev/null || true; done
  exec 7>&- || true
  kill "$S3PID" 2>/dev/null || true
  cleanup
}
trap stop_all EXIT
for _ in $(seq 1 600); do grep -q READY "$D/s3.out" 2>/dev/null && break; sleep 0.5; done
ENDPOINT=$(sed -n 's/^READY //p' "$D/s3.out")
[ -n "$ENDPOINT" ] || { echo "the S3 test server did not start: $(cat "$D/s3.err")" >&2; exit 1; }
s3() { echo "s3://cairn-bench/$1?endpoint=$ENDPOINT&region=us-east-1&allow_http=true"; }
until "$BIN" shards list --json --addr 127.0.0.1:18051 >/dev/null 2>&1; do sleep 1; done
sleep 2

"$BENCH" http --addr "$ADDRS" --clients 100 --records "$RECORDS" --value-size "$VALUE_SIZE" --workloads "" --retry \
  | awk '/^load/ {printf "loaded %s keys of %s bytes: %s puts/s\n", "'"$RECORDS"'", "'"$VALUE_SIZE"'", $2}'
du -sh "$D/n1" | awk '{print "node 1 holds " $1}'

cat >"$D/show.py" <<'PY'
import json, sys
kind, text, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
r = json.loads(text)
if kind == "backup":
    held = sum(s["bytes"] for s in r["shards"])
    up = r["bytes_uploaded"]
    print(f"{end - start:.1f} s, {held / 1e6:.1f} MB held, {up / 1e6:.1f} MB uploaded ({100 * up / max(held, 1):.1f}%), "
          f"backup {r['id']} at {r['as_of']}")
else:
    print(f"{end - start:.1f} s, {r['keys']} keys, {r['versions']} versions")
PY
# A backup, timed: seconds, bytes held and uploaded.
backup() { # url node-grpc-port
  local start end out
  start=$(date +%s.%N)
  out=$("$BIN" backup create --to "$1" --json --addr "127.0.0.1:$2" 2>/dev/null)
  end=$(date +%s.%N)
  echo "$out" >"$D/last-backup.json"
  python3 "$D/show.py" backup "$out" "$start" "$end"
}
echo "full backup to a directory:    $(backup "file://$D/backups" 18051)"
echo "full backup to S3:             $(backup "$(s3 full)" 18052)"
CHANGED=$((RECORDS / 100))
# The load phase over the first 1% of the records writes those keys again.
"$BENCH" http --addr "$ADDRS" --clients 100 --records "$CHANGED" --value-size "$VALUE_SIZE" --workloads "" --retry >/dev/null
echo "1% of keys rewritten ($CHANGED)"
echo "incremental backup to S3:      $(backup "$(s3 full)" 18053)"
INCREMENTAL=$(python3 -c 'import json; print(json.load(open("'"$D/last-backup.json"'"))["id"])')

# A second cluster (HTTP 1809i, gRPC 1806i) to restore into.
start_other() { # id join
  "$BIN" start --log-level warn --store "$D/m$1" --http-addr "127.0.0.1:1809$1" --grpc-addr "127.0.0.1:1806$1" \
    --join "$2" >"$D/m$1.out" 2>"$D/m$1.err" &
  PID2[$1]=$!
}
start_other 1 ""
sleep 1
"$BIN" init --addr 127.0.0.1:18061 --replication-factor 3 --shards 4 --total-buckets 4096 >/dev/null
start_other 2 127.0.0.1:18061
sleep 1
start_other 3 127.0.0.1:18061
until curl -sf "http://127.0.0.1:18093/health?ready=1" >/dev/null 2>&1; do sleep 1; done
sleep 2
start=$(date +%s.%N)
restored=$("$BIN" restore --from "$(s3 full)" --backup "$INCREMENTAL" --json --addr 127.0.0.1:18061 2>/dev/null)
end=$(date +%s.%N)
echo "restore from S3 into a new 3-node cluster: $(python3 "$D/show.py" restore "$restored" "$start" "$end")"

# Foreground load, steady and under backups (the second cluster stopped first: it shares the cores).
for p in "${PID2[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PID2[@]}"; do wait "$p" 2>/dev/null || true; done
PID2=()
OPS=${OPS:-200000}
# BACKUP_RATE (e.g. 4MiB) sets the cluster's backup_rate for these runs (docs/backup.md).
if [ -n "${BACKUP_RATE:-}" ]; then
  "$BIN" settings set backup_rate "$BACKUP_RATE" --addr 127.0.0.1:18051 >/dev/null
  echo "backup_rate set to $BACKUP_RATE"
fi
ycsb() { # seed output
  "$BENCH" http --addr "$ADDRS" --clients 100 --records "$RECORDS" --ops "$OPS" --value-size 256 --workloads A \
    --no-load --retry --seed "$1" >"$2"
}
# Steady and under backups side by side, twice; the ratios compare each round's two runs.
for round in 1 2; do
  ycsb "$round$round" "$D/steady-$round.out"
  echo "YCSB-A steady (round $round):"
  grep -v "^workload" "$D/steady-$round.out"
  ycsb "$round$round$round" "$D/during-$round.out" &
  LOAD=$!
  n=0
  while kill -0 "$LOAD" 2>/dev/null; do
    n=$((n + 1))
    echo "full backup to S3 under load:  $(backup "$(s3 "under-load-$round-$n")" 18051)"
  done
  wait "$LOAD"
  echo "YCSB-A under backups (round $round):"
  grep -v "^workload" "$D/during-$round.out"
  python3 - "$D/steady-$round.out" "$D/during-$round.out" <<'PY'
import re, sys
def parse(path):
    out = {}
    for line in open(path):
        m = re.match(r"(\S+)\s+([\d.]+) ops/s", line)
        if m:
            out["ops/s"] = float(m.group(2))
        m = re.match(r"\s+(read|update)\s.*p99\s+([\d.]+) ms", line)
        if m:
            out[m.group(1) + " p99"] = float(m.group(2))
    return out
steady, during = parse(sys.argv[1]), parse(sys.argv[2])
print("ratios under backups: " + ", ".join(f"{k} {during[k] / steady[k]:.2f}x" for k in steady if k in during))
PY
done

# Side by side (ETCD=1; needs etcd and etcdctl, e.g. Debian's etcd-server and etcd-client): a
# single-member etcd loaded with the same keys, then `etcdctl snapshot save`, timed.
if [ "${ETCD:-0}" = 1 ]; then
  etcd --name bench --data-dir "$D/etcd" --quota-backend-bytes $((8 << 30)) \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster bench=http://127.0.0.1:23800 --log-level error --logger zap >"$D/etcd.log" 2>&1 &
  PID2[etcd]=$!
  until (exec 3<>/dev/tcp/127.0.0.1/23790) 2>/dev/null; do sleep 0.2; done
  "$BENCH" etcd --addr 127.0.0.1:23790 --clients 100 --records "$RECORDS" --value-size "$VALUE_SIZE" --workloads "" \
    | awk '/^load/ {printf "etcd loaded: %s puts/s\n", $2}'
  start=$(date +%s.%N)
  ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23790 snapshot save "$D/etcd.snapshot" >/dev/null 2>&1
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" -v b="$(stat -c %s "$D/etcd.snapshot")" \
    'BEGIN {printf "etcdctl snapshot save: %.1f s, %.1f MB\n", e - s, b / 1e6}'
fi
