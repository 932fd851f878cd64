#!/usr/bin/env bash
# with-postgres.sh CMD...: runs CMD with DATABASE_URL set. If DATABASE_URL is already set it is
# used as is; otherwise a throwaway cluster is started on a free 127.0.0.1 port (installing
# Debian's postgresql if no server binaries exist) and deleted afterwards.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [ -n "${DATABASE_URL:-}" ]; then
  exec "$@"
fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  log "installing postgresql from Debian's packages"
  (unset HTTPS_PROXY https_proxy; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
PGTMP=$(mktemp -d /tmp/pgtest.XXXXXX)
PGPORT=$(free_port)
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$PGTMP"; AS=(runuser -u postgres --); fi  # initdb refuses root
"${AS[@]}" "$PGBIN/initdb" -D "$PGTMP/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
cleanup() {
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGTMP"
}
trap cleanup EXIT
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/log" -w -t 30 start \
  -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGTMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
log "throwaway Postgres on 127.0.0.1:$PGPORT ($("$PGBIN/postgres" --version))"
"$@"
