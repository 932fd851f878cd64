#!/usr/bin/env bash
# with-postgres.sh CMD...: runs CMD with DATABASE_URL set. If DATABASE_URL is already set it is
# used as is; otherwise a throwaway cluster is started on a free 127.0.0.1 port (installing
# Debian's postgresql if no server binaries exist) and deleted afterwards.
set -euo pipefail
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/pg.sh"
if [ -n "${DATABASE_URL:-}" ]; then
  exec "$@"
fi
PGTMP=$(mktemp -d /tmp/pgtest.XXXXXX)
PGPORT=$(free_port)
cleanup() {
  pg_stop "$PGTMP"
  rm -rf "$PGTMP"
}
trap cleanup EXIT
pg_start "$PGTMP" "$PGPORT"
export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
log "throwaway Postgres on 127.0.0.1:$PGPORT ($PG_VERSION_TEXT)"
"$@"
