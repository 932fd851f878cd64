# Sourced: a private Postgres cluster from Debian's server binaries (installed when missing).
#   pg_start DIR PORT   initdb DIR/data if needed, start on 127.0.0.1:PORT (socket in DIR)
#   pg_stop DIR         immediate stop
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

pg_start() {
  local dir=$1 port=$2 bin
  bin=$(pg_bin)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    pg_as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
  fi
  pg_as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 30 start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >/dev/null
  PG_VERSION_TEXT=$("$bin/postgres" --version)
}

pg_stop() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$bin" ] && pg_as "$bin/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}
