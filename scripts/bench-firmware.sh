#!/usr/bin/env bash
# Firmware benchmark: artifact MB/s for 1 and 100 concurrent downloads, and the server's peak
# RSS while a 1 GiB release is uploaded, against a release build of factory-server.
#   bash scripts/bench-firmware.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p server --bin factory-server
cargo build --release -p integration-tests --bin bench_firmware
exec target/release/bench_firmware "$@"
