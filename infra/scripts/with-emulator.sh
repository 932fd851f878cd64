#!/usr/bin/env bash
# with-emulator.sh CMD...: runs CMD with AWS_ENDPOINT_URL pointing at a fresh moto server on a
# free 127.0.0.1 port, and stops that server (by PID) afterwards, whatever CMD did.
set -euo pipefail
source "$(dirname "$0")/env.sh"
port=$(free_port)
logfile=$(mktemp /tmp/moto.XXXXXX.log)
"$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
moto_pid=$!
cleanup() { kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; rm -f "$logfile"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf -o /dev/null --noproxy '*' "http://127.0.0.1:$port/moto-api/" && break
  if ! kill -0 "$moto_pid" 2>/dev/null; then
    echo "moto failed to start:" >&2; cat "$logfile" >&2; exit 1
  fi
  sleep 0.1
done
export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
log "AWS emulator (moto) on $AWS_ENDPOINT_URL, pid $moto_pid"
"$@"
