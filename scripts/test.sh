#!/usr/bin/env bash
# The test command: every test of the workspace, on SQLite and on PostgreSQL.
# The end-to-end tests start the real binaries, so they are built first; the dashboard's run
# in Debian's headless Chromium. The hostile-input suites and the fuzz targets run in a second
# pass with their output shown, so CI's log carries their counts (fuzz cases, generated
# requests by status, the fault suite's summary line).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/ensure-chromium.sh
bash scripts/ensure-deploy-tools.sh
export TEST_POSTGRES_URL="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
cargo build --workspace --bins
# deploy/ is read by systemd, sudo, nginx and the binaries themselves: check it with them.
bash scripts/check-deploy.sh
if [ "$#" -gt 0 ]; then
    cargo test --workspace "$@"
    exit
fi
cargo test --workspace -- --skip hostile:: --skip fuzz_
cargo test --workspace -- --nocapture hostile:: fuzz_
