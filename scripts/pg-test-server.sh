#!/usr/bin/env bash
# Ensures a local PostgreSQL server for capstan's store tests is running, and prints its URL.
#
# Idempotent: installs Debian's `postgresql` only when no server binary exists, creates the
# default cluster only when there is none, starts it only when it is down, and creates the
# `capstan` role (password `capstan`, CREATEDB, so each test can make its own database) only
# when it is missing. The last line on stdout is the URL, so callers can do:
#
#   export CAPSTAN_TEST_POSTGRES_URL="$(scripts/pg-test-server.sh | tail -n1)"
#   CAPSTAN_REQUIRE_POSTGRES=1 cargo test -p capstan-store --test postgres
set -euo pipefail

port="${CAPSTAN_PG_PORT:-5432}"
cluster="main"

log() { echo "pg-test-server: $*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    log "installing postgresql"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >&2
fi

# The newest installed major version.
version="$(ls /usr/lib/postgresql | sort -n | tail -n1)"

if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$version $cluster"; then
    log "creating cluster $version/$cluster on port $port"
    as_root pg_createcluster --port "$port" "$version" "$cluster" >&2
fi

status="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}')"
if [ "$status" != "online" ]; then
    log "starting cluster $version/$cluster"
    as_root pg_ctlcluster "$version" "$cluster" start >&2
fi

port="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')"

for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$port"; then
        break
    fi
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p "$port"; then
    log "server on 127.0.0.1:$port did not become ready; see /var/log/postgresql/postgresql-$version-$cluster.log"
    exit 1
fi

psql_postgres() {
    as_root runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 -At "$@"
}

if [ "$(psql_postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'capstan'")" != "1" ]; then
    log "creating role capstan"
    psql_postgres -c "CREATE ROLE capstan LOGIN PASSWORD 'capstan' CREATEDB" >&2
else
    # Keep the documented password and rights even if the role was altered by hand.
    psql_postgres -c "ALTER ROLE capstan LOGIN PASSWORD 'capstan' CREATEDB" >&2
fi
# The tests drop their databases WITH (FORCE); an autovacuum worker busy on a fresh database
# belongs to no role, and only members of pg_signal_backend may end it.
psql_postgres -c "GRANT pg_signal_backend TO capstan" >&2

echo "postgresql://capstan:capstan@127.0.0.1:$port/postgres"
