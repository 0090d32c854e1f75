#!/usr/bin/env bash
# Deployment benchmark: a firmware rollout to 1,000 simulated devices in 10 % waves with a
# download cap of 100, on SQLite and PostgreSQL, and the latency of a plain write while it runs.
#   bash scripts/bench-deploy.sh [--devices=N] [--db=sqlite|postgres]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
# Every simulated device is a socket on both ends.
ulimit -n "$(ulimit -Hn)"
cargo build --release -p server --bin factory-server
cargo build --release -p integration-tests --bin bench_deploy
exec target/release/bench_deploy "$@"
