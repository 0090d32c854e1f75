#!/usr/bin/env bash
# Charts benchmark: storage per device-day of metric samples and rollups, write and rollup
# rates, and query times (7 days x 1,000 devices) on SQLite and PostgreSQL, with the server's
# store in a release build. Prints figures; BENCHMARKS.md keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
cargo build --release -p integration-tests --bin bench_charts
exec target/release/bench_charts "$@"
