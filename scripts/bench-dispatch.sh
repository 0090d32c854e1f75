#!/usr/bin/env bash
# Dispatch benchmark: bulk dispatch to 1,000 and 10,000 simulated devices and single-command
# round trips, against a release build of factory-server. Prints figures.
#   bash scripts/bench-dispatch.sh [--devices=1000,10000] [--db=sqlite|postgres] [--rate=50]
set -euo pipefail
cd "$(dirname "$0")/.."
# Every simulated device is a socket on both ends.
ulimit -n "$(ulimit -Hn)"
cargo build --release -p server --bin factory-server
cargo build --release -p integration-tests --bin bench_dispatch
exec target/release/bench_dispatch "$@"
