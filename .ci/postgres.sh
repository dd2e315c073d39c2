#!/usr/bin/env bash
# Start a throw-away PostgreSQL server on loopback for the shared-study test of `otonas tune`
# (tests/tune/test_postgres.py) and print its URL. Installs Debian's postgresql if missing.
# Usage: eval "$(bash .ci/postgres.sh)"   -> exports OTONAS_TEST_POSTGRES_URL
set -euo pipefail
port="${OTONAS_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
    echo "installing PostgreSQL (Debian package postgresql)" >&2
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    else
        (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    fi
    bindir="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
fi
data="$(mktemp -d /tmp/otonas-pg.XXXXXX)"
run=()
if [ "$(id -u)" = 0 ]; then
    # the server refuses to run as root: it runs as the postgres user the package made
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    chown postgres "$data"
    run=(runuser -u postgres --)
fi
"${run[@]}" "$bindir/initdb" -D "$data/db" -U otonas --auth=trust >/dev/null
"${run[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/log" -w \
    -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2
"${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U otonas otonas_test
echo "export OTONAS_TEST_POSTGRES_URL=postgresql://otonas@127.0.0.1:$port/otonas_test"
echo "export OTONAS_TEST_POSTGRES_STOP='${run[*]} $bindir/pg_ctl -D $data/db stop -m fast'"
