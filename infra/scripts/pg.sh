# Sourced: a private Postgres cluster from Debian's server binaries (installed when missing).
#   pg_start DIR PORT   initdb DIR/data if needed, start on 127.0.0.1:PORT (socket in DIR)
#   pg_stop DIR         immediate stop
#   pg_restart DIR      immediate stop and start again (the fault runs)
pg_bin() {
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    log "installing postgresql from Debian's packages"
    unguarded apt-get update -qq && DEBIAN_FRONTEND=noninteractive unguarded apt-get install -y -qq postgresql >/dev/null
  fi
  ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1
}

pg_as() { # initdb and postgres refuse to run as root
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() { # every failure returns non-zero (callers use `pg_start … || fail`, where set -e is off)
  local dir=$1 port=$2 bin
  bin=$(pg_bin) || return 1
  mkdir -p "$dir" || return 1
  if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres "$dir" || return 1
    # As root the server runs as the postgres user, which must be able to reach the directory.
    if ! runuser -u postgres -- test -x "$dir"; then
      echo "Postgres runs as the postgres user, which cannot reach $dir (a parent directory is" >&2
      echo "not searchable, e.g. made by mktemp -d): chmod o+x the parents, or run from elsewhere" >&2
      return 1
    fi
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    pg_as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null || return 1
  fi
  # fsync and full-page writes off: durable against Postgres's own crash (the fault runs'
  # restart), not the machine's, which a throwaway cluster does not need. synchronous_commit
  # stays on: off, a commit acknowledged just before the crash was lost and the turn engine,
  # which commits a send's state before writing the request, sent a reply twice.
  pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off -c max_connections=200" >/dev/null || return 1
  PG_VERSION_TEXT=$("$bin/postgres" --version)
}

pg_stop() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && pg_as "$bin/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}

pg_restart() { # a crash-like restart (immediate stop, recovery on start), same options
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  pg_as "$bin/pg_ctl" -D "$1/data" -m immediate -w -t 60 restart >/dev/null
}
