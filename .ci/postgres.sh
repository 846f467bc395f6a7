#!/usr/bin/env bash
# PostgreSQL for the call log's tests: installs Debian's postgresql if missing, starts a cluster,
# creates a user and a database, and prints the URL as a shell line to eval:
#
#   eval "$(.ci/postgres.sh)"     # exports VOXROUTE_TEST_POSTGRES_URL
#
# Progress goes to stderr; stdout carries only the export line. Idempotent: run it again and it
# finds the running server, the user and the database. Needs root (apt-get, runuser).
set -euo pipefail

PG_USER=${VOXROUTE_PG_USER:-voxroute}
PG_PASSWORD=${VOXROUTE_PG_PASSWORD:-voxroute}
PG_DB=${VOXROUTE_PG_DB:-voxroute_test}

say() { echo "postgres.sh: $*" >&2; }

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    say "installing Debian postgresql"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
VERSION=$(basename "$(dirname "$BIN")")
as_postgres() { runuser -u postgres -- "$@"; }

if command -v pg_lsclusters >/dev/null 2>&1; then
    if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main"' | grep -q .; then
        say "creating cluster $VERSION/main"
        pg_createcluster "$VERSION" main >&2
    fi
    PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
    if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
        say "starting cluster $VERSION/main on port $PORT"
        pg_ctlcluster "$VERSION" main start >&2
    fi
else  # no postgresql-common: a cluster of our own
    DATA=/var/lib/postgresql/voxroute
    PORT=${VOXROUTE_PG_PORT:-5432}
    if [ ! -f "$DATA/PG_VERSION" ]; then
        install -d -o postgres -g postgres "$DATA"
        as_postgres "$BIN/initdb" -D "$DATA" -A scram-sha-256 --auth-local=peer -U postgres >&2
    fi
    if ! as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
        as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -o "-p $PORT -k /tmp" start >&2
    fi
fi

for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 0.5
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

psql_admin() { as_postgres psql -p "$PORT" -h /var/run/postgresql -v ON_ERROR_STOP=1 -qAt "$@" 2>/dev/null \
    || as_postgres psql -p "$PORT" -h /tmp -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" != "1" ]; then
    say "creating user $PG_USER"
    psql_admin -c "CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != "1" ]; then
    say "creating database $PG_DB"
    psql_admin -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >&2
fi

# Tests drop their own databases WITH (FORCE), which must end every backend on them, including an
# autovacuum worker that happens to be connected (its process has no role of ours): without
# pg_signal_backend that DROP fails with "must be a member of the role whose process is being
# terminated or member of pg_signal_backend". Granting twice only gives a notice.
psql_admin -c "GRANT pg_signal_backend TO $PG_USER" >&2

URL="postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/$PG_DB"
say "ready: postgresql+asyncpg://$PG_USER:***@127.0.0.1:$PORT/$PG_DB"
echo "export VOXROUTE_TEST_POSTGRES_URL='$URL'"
