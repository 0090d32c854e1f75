#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers at 127.0.0.1:5432 with trust auth for `postgres`,
# and that libpq's headers are there for diesel. Starts the local cluster when it is stopped
# and installs PostgreSQL from Debian's packages when it is missing. Exits non-zero when it
# cannot get one: the tests then fail, they are never skipped.
set -euo pipefail

need_apt_update=1
apt_install() {
    if [ "$need_apt_update" = 1 ]; then
        apt-get update -qq
        need_apt_update=0
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! dpkg -s libpq-dev >/dev/null 2>&1; then
    echo "ensure-postgres: installing libpq-dev"
    apt_install libpq-dev pkg-config
fi

ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }

if ! command -v pg_isready >/dev/null 2>&1 || ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "ensure-postgres: installing PostgreSQL"
    apt_install postgresql postgresql-client
fi

if ! ready; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    # The tests connect as postgres over TCP without a password, as on the CI machines.
    if ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$hba"
    fi
    echo "ensure-postgres: starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do
        ready && break
        sleep 1
    done
fi

if ! ready; then
    echo "ensure-postgres: PostgreSQL is not reachable at 127.0.0.1:5432" >&2
    exit 1
fi
psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT 1' >/dev/null || {
    echo "ensure-postgres: cannot log in as postgres at 127.0.0.1:5432 without a password" >&2
    exit 1
}
echo "ensure-postgres: PostgreSQL ready at 127.0.0.1:5432"
