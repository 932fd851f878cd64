#!/usr/bin/env bash
# make load: the fault harness. Starts a local stack of its own (make dev's script, with its own
# state directory and ports) with the stub upstreams failing on purpose and the processor's
# crash points armed, drives it with `devstack load` (infra/devstack/src/load.rs), restarts its
# Postgres once mid-run, prints the table and writes the JSON and HTML reports, then stops the
# stack. Exits non-zero on any violation.
#
# The defaults are the long run of the README; the fault test in `make test` runs a short one.
#   LOAD_CONVERSATIONS (500)  LOAD_MESSAGES (20)  LOAD_DUPLICATES (0.2)  LOAD_INSTAGRAM (0.2)
#   LOAD_GAP_MS (1000)        LOAD_FAULTS (stub faults)   FAIL_POINTS (crash points)
#   ORDERING_SCOPE (channel_account | conversation)       LOAD_STATE_DIR (.local-load)
#   SQS_EMULATOR (fauxqs | moto)
#   LOAD_DRAIN_SECS (600)     LOAD_MAX_STALL_SECS (65: the processor's 60 s maximum retry
#   delay, plus 5 s to be picked up)                      LOAD_REPORT_DIR (the state dir)
#   LOAD_RESTART_POSTGRES (1: once, mid-run; 0: never)
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
STATE=${LOAD_STATE_DIR:-$ROOT/.local-load}
REPORT_DIR=${LOAD_REPORT_DIR:-$STATE}
FAULTS=${LOAD_FAULTS-openai_429=0.04,openai_500=0.04,openai_slow=0.01,openai_reset=0.01,graph_5xx=0.03,graph_accept_5xx=0.01,graph_reset=0.01}
# fauxqs keeps FIFO order on redelivery and stays fast as queues grow; moto does neither.
SQS=${SQS_EMULATOR:-fauxqs}
POINTS=${FAIL_POINTS-after_claim=0.002,after_model=0.002,before_send=0.002,after_send=0.002,before_record=0.002,after_record=0.002}
mkdir -p "$STATE"
# A fresh database and emulator each run: the checks read what this run did.
rm -rf "$STATE/pg"

stack_pid=
load_pid=
stop_stack() {
  trap '' INT TERM HUP
  if [ -n "$load_pid" ]; then kill -TERM "$load_pid" 2>/dev/null || true; fi
  if [ -n "$stack_pid" ] && kill -0 "$stack_pid" 2>/dev/null; then
    kill -TERM -- "-$stack_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$stack_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$stack_pid" 2>/dev/null || true
  fi
}
trap stop_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "make load: starting a stack in $STATE (ordering ${ORDERING_SCOPE:-channel_account}; SQS on $SQS; faults: ${FAULTS:-none}; crash points: ${POINTS:-none})"
env -u AWS_ENDPOINT_URL -u AWS_ENDPOINT_URL_SQS -u DATABASE_URL -u OPENAI_API_KEY -u OPENAI_BASE_URL -u GRAPH_ACCESS_TOKEN \
  -u MAKEFLAGS -u MFLAGS \
  DEV_STATE_DIR="$STATE" STACK="${LOAD_STACK:-agent-load}" \
  WATCH_PORT="${LOAD_WATCH_PORT:-9400}" MOTO_PORT="${LOAD_MOTO_PORT:-9401}" \
  PG_PORT="${LOAD_PG_PORT:-9402}" STUB_PORT="${LOAD_STUB_PORT:-9403}" \
  SQS_EMULATOR="$SQS" FAUXQS_PORT="${LOAD_FAUXQS_PORT:-9404}" \
  FAIL_POINTS="$POINTS" \
  setsid "$ROOT/infra/scripts/dev.sh" >"$STATE/dev.out" 2>&1 </dev/null &
stack_pid=$!
for _ in $(seq 1 1800); do
  grep -q '^ready\.' "$STATE/dev.out" 2>/dev/null && break
  kill -0 "$stack_pid" 2>/dev/null || { tail -20 "$STATE/dev.out" >&2; echo "make load: the stack did not start (see $STATE/dev.out)" >&2; exit 1; }
  sleep 0.5
done
grep -q '^ready\.' "$STATE/dev.out" || { echo "make load: the stack was not ready within 15 minutes (see $STATE/dev.out)" >&2; exit 1; }
log "make load: stack ready; driving it"
set -a
# shellcheck disable=SC1091
source "$STATE/dev.env"
set +a
export STUB_PORT="${LOAD_STUB_PORT:-9403}"
restart=()
[ "${LOAD_RESTART_POSTGRES:-1}" = 1 ] && restart=(--restart-postgres "source '$ROOT/infra/scripts/env.sh' && source '$ROOT/infra/scripts/pg.sh' && pg_restart '$STATE/pg'")
target/debug/devstack load "${restart[@]}" \
  --conversations "${LOAD_CONVERSATIONS:-500}" --messages "${LOAD_MESSAGES:-20}" \
  --duplicates "${LOAD_DUPLICATES:-0.2}" --instagram "${LOAD_INSTAGRAM:-0.2}" \
  --gap-ms "${LOAD_GAP_MS:-1000}" --faults "$FAULTS" \
  --moto-log "$STATE/moto.log" --functions-log "$STATE/pump.log" --journal "$STATE/pump-journal.jsonl" \
  $([ "$SQS" = fauxqs ] && echo --sqs-log "$STATE/fauxqs.log") \
  --drain-timeout-secs "${LOAD_DRAIN_SECS:-600}" --max-stall-secs "${LOAD_MAX_STALL_SECS:-65}" \
  --report-dir "$REPORT_DIR" &
# In the background and waited for, so a signal stops the run at once (bash defers traps while
# a foreground command runs).
load_pid=$!
wait "$load_pid"
