#!/bin/bash
# PostgreSQL 15 from Debian's package, configured like the official postgres image: on first start
# (an empty PGDATA) the cluster is created with superuser POSTGRES_USER (default postgres) and
# password POSTGRES_PASSWORD (required), password (scram) authentication over TCP, and database
# POSTGRES_DB (default: the user's name). PGPORT (default 5432) and POSTGRES_LISTEN_ADDRESSES
# (default '*'; tests on the host network pass 127.0.0.1) choose where it listens. The server runs
# as PID 1 under the postgres user: SIGINT (the image's stop signal) is PostgreSQL's fast shutdown.
set -euo pipefail

bin=/usr/lib/postgresql/15/bin
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGPORT="${PGPORT:-5432}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
sockets=/var/run/postgresql
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

mkdir -p "$PGDATA" "$sockets"
chown postgres:postgres "$PGDATA" "$sockets"
chmod 0700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is not set: the superuser needs a password" >&2
    exit 1
  fi
  password_file="$(mktemp)"
  trap 'rm -f "$password_file"' EXIT  # also when initdb fails
  printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
  chown postgres "$password_file"
  as_postgres "$bin/initdb" -D "$PGDATA" -U "$user" --pwfile="$password_file" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$password_file"
  trap - EXIT
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$database" != postgres ]; then
    # A server on the socket only, as the official image does, to create the database.
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$sockets" start
    as_postgres psql -h "$sockets" -U "$user" -d postgres -v ON_ERROR_STOP=1 -q \
      -c "CREATE DATABASE \"$database\" OWNER \"$user\""
    as_postgres "$bin/pg_ctl" -D "$PGDATA" -w -m fast stop
  fi
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA" \
  -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}" -c unix_socket_directories="$sockets" "$@"
