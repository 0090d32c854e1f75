#!/usr/bin/env bash
# Cross-replica benchmark (issue 17): command round trips through the replica holding the
# device and through another one, at 100 and 1,000 commands/s, on PostgreSQL
# (TEST_POSTGRES_URL). Prints figures.
#   bash scripts/bench-replicas.sh [--rates=100,1000]
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
cargo build --release -p server --bin factory-server
cargo build --release -p integration-tests --bin bench_replicas
exec target/release/bench_replicas "$@"
