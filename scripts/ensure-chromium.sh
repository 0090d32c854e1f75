#!/usr/bin/env bash
# Makes sure Debian's Chromium and its WebDriver are installed for the dashboard's browser
# tests (integration-tests/tests/it/dashboard_e2e.rs), installing them from Debian's packages when
# missing. Nothing downloads a browser build of its own. Exits non-zero when it cannot install
# them: the tests then fail, they are never skipped.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
echo "ensure-chromium: installing chromium and chromium-driver"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
/usr/bin/chromedriver --version
