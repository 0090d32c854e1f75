#!/usr/bin/env bash
# Makes sure the tools that check deploy/ are installed (scripts/check-deploy.sh): nginx for
# `nginx -t`, sudo for `visudo -cf`, openssl for a throwaway certificate and curl; installs
# them from Debian's packages when missing. systemd-analyze comes with the base system. Exits
# non-zero when it cannot install them: the checks then fail, they are never skipped.
set -euo pipefail
# visudo and nginx live in sbin, which a CI user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v visudo >/dev/null || [ -x /usr/sbin/visudo ] || missing+=(sudo)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
echo "ensure-deploy-tools: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
