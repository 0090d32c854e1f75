#!/usr/bin/env bash
# Sync benchmark: /api/v1/sync ingestion (batches of 1, 100, 1000) on SQLite and PostgreSQL,
# and the cloud drain rate, against a release build of factory-server. Prints figures.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
cargo build --release -p server --bin factory-server
cargo build --release -p integration-tests --bin bench_sync
exec target/release/bench_sync "$@"
