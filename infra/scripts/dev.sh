#!/usr/bin/env bash
# make dev: the product on this machine. Starts moto (the AWS emulator) on 127.0.0.1:4566 unless
# AWS_ENDPOINT_URL is already set, creates template.yaml's queues, table and secrets on it,
# starts Postgres (.local/pg, kept between runs) unless DATABASE_URL is set, migrates and seeds
# the demo tenant, starts stub OpenAI / Graph servers unless real credentials are given, runs
# the functions under `cargo lambda watch` on 127.0.0.1:9000, sends one signed sample webhook
# and one SQS event to the processor and shows the reply, then stays up until Ctrl-C, which
# stops everything it started.
set -euo pipefail
source "$(dirname "$0")/env.sh"
source "$(dirname "$0")/pg.sh"
cd "$ROOT"
STACK=${STACK:-agent-local}
WATCH_PORT=${WATCH_PORT:-9000}
MOTO_PORT=${MOTO_PORT:-4566}
PG_PORT=${PG_PORT:-54329}
STUB_PORT=${STUB_PORT:-9100}
mkdir -p .local
pids=()
pg_started=
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$pg_started" ] && pg_stop "$ROOT/.local/pg"
  log "stopped"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { STEP_T0=$EPOCHREALTIME; log "$*"; }
done_step() { log "  done in $(awk -v a="$STEP_T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}') s"; }
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

step "checking tools (Python venvs, cargo-lambda)"
"$ROOT/infra/scripts/ensure-tools.sh" dev
done_step

if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
  step "starting moto on 127.0.0.1:$MOTO_PORT"
  if port_busy "$MOTO_PORT"; then
    echo "port $MOTO_PORT is taken: stop what uses it, or run MOTO_PORT=<free port> make dev" >&2; exit 1
  fi
  .venv/bin/moto_server -H 127.0.0.1 -p "$MOTO_PORT" >.local/moto.log 2>&1 & pids+=($!)
  export AWS_ENDPOINT_URL="http://127.0.0.1:$MOTO_PORT"
  for _ in $(seq 1 100); do curl -sf -o /dev/null --noproxy '*' "$AWS_ENDPOINT_URL/moto-api/" && break; sleep 0.1; done
  curl -sf -o /dev/null --noproxy '*' "$AWS_ENDPOINT_URL/moto-api/" || { echo "moto did not start; see .local/moto.log" >&2; exit 1; }
  done_step
fi

step "building the local tools (local-aws, devstack)"
cargo build -q -p local-aws -p devstack
done_step

step "creating the queues, table and secrets of template.yaml (stack $STACK)"
target/debug/local-aws provision --template template.yaml --stack "$STACK" \
  --secret "AppSecret={\"meta_app_secret\":\"dev-app-secret\",\"meta_verify_token\":\"dev-verify-token\"}" \
  --env-file .local/dev.env
done_step

if [ -z "${DATABASE_URL:-}" ]; then
  step "starting Postgres on 127.0.0.1:$PG_PORT (data in .local/pg)"
  if port_busy "$PG_PORT"; then
    echo "port $PG_PORT is taken: stop what uses it, run PG_PORT=<free port> make dev, or set DATABASE_URL" >&2; exit 1
  fi
  pg_start "$ROOT/.local/pg" "$PG_PORT"
  pg_started=1
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  done_step
fi

step "migrating and seeding the demo tenant"
target/debug/devstack seed
done_step

upstreams="stub OpenAI and Graph API"
if [ -n "${OPENAI_API_KEY:-}" ] || [ -n "${GRAPH_ACCESS_TOKEN:-}" ]; then
  # Real upstreams wanted: let HTTPS through (env.sh blocks it by default).
  unset HTTPS_PROXY https_proxy
  upstreams="real upstreams where credentials were given"
fi
if [ -z "${OPENAI_API_KEY:-}" ] || [ -z "${GRAPH_ACCESS_TOKEN:-}" ]; then
  step "starting the stub upstreams on 127.0.0.1:$STUB_PORT"
  if port_busy "$STUB_PORT"; then
    echo "port $STUB_PORT is taken: stop what uses it, or run STUB_PORT=<free port> make dev" >&2; exit 1
  fi
  : >.local/graph-sink.jsonl
  target/debug/devstack stubs --port "$STUB_PORT" --sink .local/graph-sink.jsonl >.local/stubs.log 2>&1 & pids+=($!)
  for _ in $(seq 1 50); do port_busy "$STUB_PORT" && break; sleep 0.1; done
  done_step
fi
{
  echo "DATABASE_URL=$DATABASE_URL"
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
} >>.local/dev.env

step "starting cargo lambda watch on 127.0.0.1:$WATCH_PORT"
if port_busy "$WATCH_PORT"; then
  echo "port $WATCH_PORT is taken: stop what uses it, or run WATCH_PORT=<free port> make dev" >&2; exit 1
fi
cargo lambda watch -A 127.0.0.1 -P "$WATCH_PORT" --env-file .local/dev.env >.local/watch.log 2>&1 & pids+=($!)
for _ in $(seq 1 100); do port_busy "$WATCH_PORT" && break; sleep 0.2; done
done_step

step "sending events/wa-text.json (first request compiles the webhook; this can take a minute)"
cargo lambda invoke -A 127.0.0.1 -P "$WATCH_PORT" webhook --data-file events/wa-text.json
echo
done_step

step "sending events/sqs-inbound.json to the processor (first request compiles it)"
cargo lambda invoke -A 127.0.0.1 -P "$WATCH_PORT" processor --data-file events/sqs-inbound.json
echo
done_step
if [ -s .local/graph-sink.jsonl ]; then
  log "the Graph sink received: $(tail -n 1 .local/graph-sink.jsonl | .venv/bin/python -c 'import json,sys; m=json.loads(sys.stdin.read()); print(m["channel"], "to", m["to"] + ":", m["text"])')"
fi

inbound=$(grep '^INBOUND_QUEUE_URL=' .local/dev.env | cut -d= -f2-)
log "inbound queue now holds $(.venv/bin/python - "$inbound" <<'PY'
import sys, boto3
sqs = boto3.client("sqs")
print(sqs.get_queue_attributes(QueueUrl=sys.argv[1], AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"], "message(s)")
PY
)"

cat <<MSG

ready.
  webhook (Function URL form):  http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/
  verify:   curl 'http://127.0.0.1:$WATCH_PORT/lambda-url/webhook/?hub.mode=subscribe&hub.verify_token=dev-verify-token&hub.challenge=42'
  invoke:   make invoke EVENT=ig-text      (any file in events/)
            make invoke FUNCTION=processor EVENT=sqs-inbound
            make invoke FUNCTION=status EVENT=sqs-status
            make invoke FUNCTION=extraction EVENT=sqs-extraction
  emulator: $AWS_ENDPOINT_URL   (dev app secret: dev-app-secret)
  database: $DATABASE_URL
  upstreams: $upstreams (sends recorded in .local/graph-sink.jsonl)
  logs:     .local/watch.log
Ctrl-C stops everything started here.
MSG
tail -n 0 -f .local/watch.log & pids+=($!)
wait "${pids[0]}"
