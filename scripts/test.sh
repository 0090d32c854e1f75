#!/usr/bin/env bash
# The test command: every test of the workspace, on SQLite and on PostgreSQL.
# The end-to-end tests start the real binaries, so they are built first; the dashboard's run
# in Debian's headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/ensure-chromium.sh
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --workspace --bins
cargo test --workspace "$@"
