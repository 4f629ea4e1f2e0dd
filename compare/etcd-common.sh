# Shared by compare/etcd.sh and compare/etcd-cluster.sh (sourced after `cd` to the repository root):
# installs Debian's etcd-server if etcd is missing (needs root or sudo), builds cairn and cairn-bench
# in release (or takes them from `CAIRN_BIN_DIR`), sets `bin`, `work` (removed at exit) and `pids` (killed at exit), and defines
# `wait_port HOST PORT` and the table helpers `opsps FILE PHASE`, `lat FILE PHASE OP QUANTILE` and
# `ratio A B`.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"

if ! command -v etcd >/dev/null; then
    if [ "$(id -u)" = 0 ]; then apt-get install -y etcd-server; else sudo apt-get install -y etcd-server; fi
fi
etcd_version="$(etcd --version)"; echo "${etcd_version%%$'\n'*}"
# CAIRN_BIN_DIR=DIR runs the cairn and cairn-bench binaries in DIR (an older build, for a before/after).
if [ -n "${CAIRN_BIN_DIR:-}" ]; then
    bin="$CAIRN_BIN_DIR"
else
    cargo build --release -p cairn -p cairn-bench
    bin="$CARGO_TARGET_DIR/release"
fi
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

wait_port() { # host port
    for _ in $(seq 1 400); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listens on $1:$2" >&2
    return 1
}

# ops/s of a phase, and p50/p99 of an operation in it, from a bench output file.
opsps() { awk -v p="$2" '$1 == p { print $2 }' "$1"; }
lat() { awk -v p="$2" -v o="$3" -v q="$4" '$1 == p { inside = 1; next } /^[A-Za-z]/ { inside = 0 } inside && $1 == o { for (i = 1; i <= NF; i++) if ($i == q) print $(i + 1) }' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

# Starts a 3-member etcd cluster on 127.0.0.1 (clients on ports 23791-23793, data in
# "$work/etcd-LABEL-N") and waits until every member listens; adds the members to `pids` and sets
# `etcd_pids` to them.
start_etcd3() { # label
    local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803" i
    etcd_pids=()
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$work/etcd-$1-$i" \
            --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
            --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "bench-$1" \
            --log-level error --logger zap >"$work/etcd-$1-$i.log" 2>&1 &
        pids+=($!); etcd_pids+=($!)
    done
    for i in 1 2 3; do wait_port 127.0.0.1 "2379$i"; done
}
