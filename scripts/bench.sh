#!/usr/bin/env bash
# The benchmark of issue 19 in one command: builds release, starts a server per scenario and
# runs every scenario on both databases (and the bare actix-web-actors baseline), then prints
# one markdown table, each figure beside its goal, ready to paste into BENCHMARKS.md.
#   bash scripts/bench.sh [--quick] [--db=sqlite|postgres]
# --quick: fewer sessions and devices, shorter windows, for a check while developing.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""
dbs="sqlite postgres"
for arg in "$@"; do
    case "$arg" in
        --quick) quick="--quick" ;;
        --db=*) dbs="${arg#--db=}" ;;
        *) echo "usage: bash scripts/bench.sh [--quick] [--db=sqlite|postgres]" >&2; exit 2 ;;
    esac
done
bash scripts/ensure-postgres.sh
# Every simulated device is a socket on both ends: both processes get the hard fd limit.
ulimit -n "$(ulimit -Hn)"
# One build of both packages, so the server library is compiled once with one feature set.
# BENCH_NO_BUILD=1 runs the binaries already in target/release (another build's server).
if [ -z "${BENCH_NO_BUILD:-}" ]; then
    cargo build --release -p server --bin factory-server -p integration-tests --bin bench_fleet \
        --bin bare-ws-server --bin fleet-sim --bin bench_sync --bin bench_firmware
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
started=$(date +%s)
target/release/bench_fleet --db=bare $quick | tee "$out/bare.txt"
for db in $dbs; do
    target/release/bench_fleet --db="$db" $quick | tee "$out/$db.txt"
done
target/release/bench_sync --table $quick | tee "$out/sync.txt"
target/release/bench_firmware --table $quick | tee "$out/firmware.txt"
took=$(( $(date +%s) - started ))

# A figure from the ROW lines: `val TAG KEY`, or a dash when the run has none.
cat "$out"/*.txt | grep '^ROW ' > "$out/rows" || true
val() {
    local v
    v=$(awk -v t="$1" -v k="$2" '$1 == "ROW" && $2 == t && $3 == k { $1 = $2 = $3 = ""; sub(/^ +/, ""); print; exit }' "$out/rows")
    echo "${v:-–}"
}
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
echo
echo "Measured $(date -u +%Y-%m-%d) with \`bash scripts/bench.sh${quick:+ $quick}\` in $((took / 60)) min $((took % 60)) s:" \
    "$(nproc) cores ($cpu), $mem, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end, fd limit $(ulimit -n)."
echo
echo "| figure | goal | bare actix-web-actors | SQLite | PostgreSQL |"
echo "|---|---|---|---|---|"
echo "| server RSS per idle session, 1,000 sessions | < 10 KiB, at most the bare server's | $(val bare sessions_1k) | $(val sqlite sessions_1k) | $(val pg sessions_1k) |"
echo "| server RSS per idle session, 10,000 sessions | < 10 KiB, at most the bare server's | $(val bare sessions_10k) | $(val sqlite sessions_10k) | $(val pg sessions_10k) |"
echo "| sessions held by one process at the fd limit | the fd limit | $(val bare sessions_limit) | $(val sqlite sessions_limit) | $(val pg sessions_limit) |"
echo "| devices held for the command rows, when fewer than 10,000 | 10,000 | – | $(val sqlite devices_held) | $(val pg devices_held) |"
echo "| command round trip p50 / p99 / p99.9 at 100/s, 10,000 devices | – | – | $(val sqlite cmd_100) | $(val pg cmd_100) |"
echo "| command round trip at 1,000/s | p99 < 5 ms | – | $(val sqlite cmd_1000) | $(val pg cmd_1000) |"
echo "| command round trip at 5,000/s | p99 < 50 ms | – | $(val sqlite cmd_5000) | $(val pg cmd_5000) |"
echo "| bulk dispatch to 1,000, all results back | – | – | $(val sqlite bulk_1k) | $(val pg bulk_1k) |"
echo "| bulk dispatch to 10,000, all results back | < 1 s | – | $(val sqlite bulk_10k) | $(val pg bulk_10k) |"
echo "| telemetry events/s stored and fanned out to 10 dashboards | 50,000/s | – | $(val sqlite telemetry) | $(val pg telemetry) |"
echo "| sync ingestion, batches of 1,000 | ≥ 100,000 records/s | – | $(val sqlite sync) | $(val pg sync) |"
echo "| artifact serving, 100 concurrent downloads | ≥ 1 GB/s | – | $(val sqlite artifact) | – |"
