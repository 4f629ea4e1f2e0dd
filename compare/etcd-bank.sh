#!/usr/bin/env bash
# Bank transfers as transactions: cairn (`cairn demo --nodes 3`, gRPC Txn: begin, get both accounts, put
# both, commit; serializable unless said) vs a 3-member etcd 3.4 cluster (linearizable ranges of both
# accounts, then one Txn that writes both if neither mod_revision changed), on this machine, in the same
# run, twice (rounds back to back). 100 clients spread round-robin over the three nodes of each.
# Cases: 2 accounts of 10,000 and 10 accounts (high contention: `contended` transfers each), and 1000
# accounts (little contention: `spread` transfers), for etcd and cairn (whose accounts are spread over
# the shards: transfers are cross-shard transactions); cairn also with the accounts in one shard
# (one-phase commits), and with snapshot isolation. Prints each run's output, the server processes'
# CPU seconds per transfer, then a ratio table.
#   compare/etcd-bank.sh [contended] [spread]          (defaults 300 3000)
# Installs Debian's etcd-server if etcd is missing (compare/etcd-common.sh). Everything binds to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
contended="${1:-300}"
spread="${2:-3000}"
source compare/etcd-common.sh
hz=$(getconf CLK_TCK)

# CPU ticks of processes (and their children) so far.
ticks() { local t=0 p; for p in "$@"; do for q in "$p" $(pgrep -P "$p" || true); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$q/stat" 2>/dev/null || echo 0))); done; done; echo $t; }

bench() { # label target addrs accounts [bench flags...] ; server pids in $servers
    local label="$1"; shift
    local transfers="$contended"; [ "$3" -ge 100 ] && transfers="$spread"
    # The accounts are opened first, outside the measured CPU.
    "$bin/cairn-bench" bank --target "$1" --addr "$2" --accounts "$3" --transfers 0 "${@:4}" >/dev/null
    local before; before=$(ticks $servers)
    "$bin/cairn-bench" bank --target "$1" --addr "$2" --accounts "$3" --clients 100 --transfers "$transfers" \
        --opened "${@:4}" | tee "$work/$label.txt"
    local used=$(( $(ticks $servers) - before ))
    awk -v t="$used" -v hz="$hz" -v n="$transfers" \
        'BEGIN { printf "cpu      %.3f s of server CPU, %.1f ms per transfer\n", t / hz, 1000 * t / hz / n }' \
        | tee -a "$work/$label.txt"
}

for round in 1 2; do
    echo "== round $round: etcd, 3 members"
    start_etcd3 "$round"
    servers="${etcd_pids[*]}"
    etcd_addrs=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
    bench "etcd-$round-2" etcd "$etcd_addrs" 2
    bench "etcd-$round-10" etcd "$etcd_addrs" 10
    bench "etcd-$round-1000" etcd "$etcd_addrs" 1000
    for i in 1 2 3; do kill "${pids[-$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true

    echo "== round $round: cairn demo --nodes 3"
    "$bin/cairn" demo --nodes 3 --store "$work/cairn-$round" --http-addr 127.0.0.1:23810 \
        --grpc-addr 127.0.0.1:23820 --log-level warn >"$work/cairn-$round.log" 2>&1 &
    pids+=($!); servers="$!"
    for _ in $(seq 1 600); do grep -q '^cairn listening' "$work/cairn-$round.log" && break; sleep 0.1; done
    grep -q '^cairn listening' "$work/cairn-$round.log" || { cat "$work/cairn-$round.log"; exit 1; }
    cairn_addrs=127.0.0.1:23820,127.0.0.1:23821,127.0.0.1:23822
    bench "cairn-$round-2" cairn "$cairn_addrs" 2
    bench "cairn-$round-2-one" cairn "$cairn_addrs" 2 --same-shard
    bench "cairn-$round-2-si" cairn "$cairn_addrs" 2 --isolation snapshot
    bench "cairn-$round-10" cairn "$cairn_addrs" 10
    bench "cairn-$round-1000" cairn "$cairn_addrs" 1000
    bench "cairn-$round-1000-one" cairn "$cairn_addrs" 1000 --same-shard
    bench "cairn-$round-1000-si" cairn "$cairn_addrs" 1000 --isolation snapshot
    kill -INT "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

tps() { awk '$1 == "transfers" { print $2 }' "$1"; }
p() { awk -v q="$2" '$1 == "transfer" { for (i = 1; i <= NF; i++) if ($i == q) print $(i + 1) }' "$1"; }
conflicts() { awk '$1 == "transfers" { for (i = 1; i <= NF; i++) if ($i == "attempts:") print $(i + 1) }' "$1"; }
cpu() { awk '$1 == "cpu" { print $(NF - 3) }' "$1"; }
echo
echo "round  case                                   cairn        etcd   cairn/etcd"
for round in 1 2; do
    c="$work/cairn-$round"; e="$work/etcd-$round"
    row() { printf "%-6s %-34s %10s  %10s  %10s\n" "$round" "$1" "$2" "$3" "$(ratio "$2" "$3")"; }
    for accounts in 2 10 1000; do
        row "$accounts accounts: transfers/s" "$(tps "$c-$accounts.txt")" "$(tps "$e-$accounts.txt")"
        row "$accounts accounts: p50 ms" "$(p "$c-$accounts.txt" p50)" "$(p "$e-$accounts.txt" p50)"
        row "$accounts accounts: p99 ms" "$(p "$c-$accounts.txt" p99)" "$(p "$e-$accounts.txt" p99)"
        row "$accounts accounts: conflicting attempts" "$(conflicts "$c-$accounts.txt")" "$(conflicts "$e-$accounts.txt")"
        row "$accounts accounts: server CPU ms/transfer" "$(cpu "$c-$accounts.txt")" "$(cpu "$e-$accounts.txt")"
    done
    row "2 acc. one shard: transfers/s" "$(tps "$c-2-one.txt")" "$(tps "$e-2.txt")"
    row "2 acc. one shard: p99 ms" "$(p "$c-2-one.txt" p99)" "$(p "$e-2.txt" p99)"
    row "2 acc. one shard: CPU ms/transfer" "$(cpu "$c-2-one.txt")" "$(cpu "$e-2.txt")"
    row "2 acc. snapshot isol.: transfers/s" "$(tps "$c-2-si.txt")" "$(tps "$e-2.txt")"
    row "2 acc. snapshot isol.: p99 ms" "$(p "$c-2-si.txt" p99)" "$(p "$e-2.txt" p99)"
    row "1000 acc. one shard: transfers/s" "$(tps "$c-1000-one.txt")" "$(tps "$e-1000.txt")"
    row "1000 acc. one shard: p99 ms" "$(p "$c-1000-one.txt" p99)" "$(p "$e-1000.txt" p99)"
    row "1000 acc. one shard: CPU ms/transfer" "$(cpu "$c-1000-one.txt")" "$(cpu "$e-1000.txt")"
    row "1000 acc. snapshot isol.: transfers/s" "$(tps "$c-1000-si.txt")" "$(tps "$e-1000.txt")"
done
