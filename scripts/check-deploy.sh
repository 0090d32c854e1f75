#!/usr/bin/env bash
# Checks the files under deploy/ with the tools that will read them on a plant's machines:
# systemd-analyze (unit syntax and a ceiling on each unit's exposure score), visudo, nginx -t,
# and the example settings files read by the real binaries. Needs target/debug/factory-server
# and target/debug/edge-agent (scripts/test.sh builds them first) and the tools that
# scripts/ensure-deploy-tools.sh installs.
set -euo pipefail
# visudo and nginx live in sbin, which a CI user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
cd "$(dirname "$0")/.."
root="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Each unit's exposure ceiling (systemd-analyze security, 0 = locked down, 10 = exposed). The
# agent's is higher because sudo for reboot_os needs privileges to be gainable.
declare -A ceiling=([factory-server]=2.0 [edge-agent]=6.5)

echo "check-deploy: systemd units"
for unit in factory-server edge-agent; do
    # The binaries are not installed here, so the units' ExecStart programs are pointed at a
    # stand-in; everything else is verified as written.
    sed -E "s#/usr/local/bin/(factory-server|edge-agent-launch)#/bin/true#" \
        "deploy/systemd/$unit.service" >"$work/$unit.service"
    systemd-analyze verify "$work/$unit.service"
    score="$(systemd-analyze security --offline=true "$work/$unit.service" | tail -1 |
        sed -E 's/.*: ([0-9.]+) .*/\1/')"
    echo "check-deploy: $unit.service exposure $score (ceiling ${ceiling[$unit]})"
    if ! awk -v s="$score" -v c="${ceiling[$unit]}" 'BEGIN { exit !(s <= c) }'; then
        echo "check-deploy: $unit.service is more exposed than its ceiling" >&2
        exit 1
    fi
done
for setting in User=factory NoNewPrivileges=true ProtectSystem=strict PrivateTmp=true; do
    grep -qx "$setting" deploy/systemd/factory-server.service ||
        { echo "check-deploy: factory-server.service lacks $setting" >&2; exit 1; }
done
for setting in User=edge ProtectSystem=full PrivateTmp=true; do
    grep -qx "$setting" deploy/systemd/edge-agent.service ||
        { echo "check-deploy: edge-agent.service lacks $setting" >&2; exit 1; }
done
sh -n deploy/systemd/edge-agent-launch

echo "check-deploy: sudoers"
visudo -cf deploy/sudoers/edge-agent

echo "check-deploy: nginx"
# nginx -t opens the certificate files, so a throwaway pair stands in for the plant's.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=factory.example.lan \
    -keyout "$work/privkey.pem" -out "$work/fullchain.pem" 2>/dev/null
sed -e "s#/etc/ssl/factory/#$work/#g" -e "s#/var/log/nginx/#$work/#g" \
    deploy/proxy/nginx-factory.conf >"$work/site.conf"
cat >"$work/nginx.conf" <<EOF
pid $work/nginx.pid;
error_log $work/error.log;
events {}
http {
    access_log off;
    include $work/site.conf;
}
EOF
nginx -t -q -c "$work/nginx.conf" -p "$work"
# The configuration for several replicas (issue 17), checked the same way on its own.
sed -e "s#/etc/ssl/factory/#$work/#g" -e "s#/var/log/nginx/#$work/#g" \
    deploy/proxy/nginx-replicas.conf >"$work/replicas.conf"
sed -e "s#$work/site.conf#$work/replicas.conf#" "$work/nginx.conf" >"$work/nginx-replicas.conf"
nginx -t -q -c "$work/nginx-replicas.conf" -p "$work"
for conf in deploy/proxy/nginx-factory.conf deploy/proxy/nginx-replicas.conf; do
    # Tokens sent as ?token= must not reach the access log: the log format writes \$uri, never
    # \$request or \$args.
    if grep -E '^\s*(log_format|access_log)' "$conf" | grep -qE '\$(request|args|query_string|request_uri)\b'; then
        echo "check-deploy: $conf: the access log would record query strings (tokens)" >&2
        exit 1
    fi
    # /metrics is refused at the proxy to all but the monitoring hosts (the server wants its
    # token too); a location that lost its `deny all` would open it to the whole plant network.
    if ! sed -n '/location = \/metrics {/,/}/p' "$conf" | grep -q 'deny all;'; then
        echo "check-deploy: $conf: the /metrics location does not end in deny all" >&2
        exit 1
    fi
done
# Several replicas: an upstream of at least two, WebSocket upgrades passed on, and a POST
# never retried on another replica (a command must not be sent twice).
if [ "$(sed -n '/^upstream factory_replicas {/,/}/p' deploy/proxy/nginx-replicas.conf | grep -c '^\s*server ')" -lt 2 ]; then
    echo "check-deploy: nginx-replicas.conf's upstream has fewer than two replicas" >&2
    exit 1
fi
if ! sed -n '/location ~ \^\/ws\//,/}/p' deploy/proxy/nginx-replicas.conf | grep -q 'proxy_set_header Upgrade'; then
    echo "check-deploy: nginx-replicas.conf does not pass WebSocket upgrades on" >&2
    exit 1
fi
if grep -qE 'proxy_next_upstream[^;]*non_idempotent' deploy/proxy/nginx-replicas.conf; then
    echo "check-deploy: nginx-replicas.conf would send a POST to a second replica" >&2
    exit 1
fi
# The replicas' compose file: two replicas with distinct ids on one database and one volume.
compose=deploy/container/compose-replicas.yaml
if [ "$(grep -c 'FACTORY_REPLICA_ID:' "$compose")" -lt 2 ] ||
    [ "$(grep 'FACTORY_REPLICA_ID:' "$compose" | sort -u | wc -l)" -lt 2 ]; then
    echo "check-deploy: $compose does not start two replicas with distinct ids" >&2
    exit 1
fi

echo "check-deploy: container"
if ! grep -q '^HEALTHCHECK .*/healthz' deploy/container/Containerfile; then
    echo "check-deploy: the Containerfile's HEALTHCHECK does not ask /healthz" >&2
    exit 1
fi
if docker info >/dev/null 2>&1; then
    docker build -q -f deploy/container/Containerfile -t factory-server-check .
else
    echo "check-deploy: no container builder reachable here (docker info failed); image not built"
fi

echo "check-deploy: example settings, read by the real binaries"
# The server starts on its example (data dir and address overridden, as the environment
# may) and answers /healthz; the agent accepts its example and keeps trying its server.
mkdir -p "$work/server" "$work/agent"
FACTORY_DATA_DIR="$work/server" FACTORY_BIND=127.0.0.1:0 \
    "$root/target/debug/factory-server" --config deploy/config/factory-server.toml \
    >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
    url="$(sed -nE 's/^factory-server listening on (http:[^ ]+).*/\1/p' "$work/server.log")"
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "${url:-}" ] || ! curl -fsS "$url/healthz" >/dev/null; then
    cat "$work/server.log" >&2
    echo "check-deploy: factory-server did not start on deploy/config/factory-server.toml" >&2
    kill "$server_pid" 2>/dev/null || true
    exit 1
fi
kill "$server_pid"
wait "$server_pid" || true
set +e
EDGE_DATA_DIR="$work/agent" EDGE_SCANNER_LISTEN=127.0.0.1:0 EDGE_SERVER_URL=http://127.0.0.1:9 \
    EDGE_ENROLLMENT_KEY=check timeout 3 "$root/target/debug/edge-agent" \
    --config deploy/config/edge-agent.toml >"$work/agent.log" 2>&1
status=$?
set -e
if [ "$status" -ne 124 ]; then
    cat "$work/agent.log" >&2
    echo "check-deploy: edge-agent refused deploy/config/edge-agent.toml (exit $status)" >&2
    exit 1
fi
echo "check-deploy: ok"
