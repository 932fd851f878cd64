#!/usr/bin/env bash
# make dev: the product on this machine. Starts moto (the AWS emulator) on 127.0.0.1:4566 unless
# AWS_ENDPOINT_URL is already set, creates template.yaml's queues and secret on it, starts the
# functions under `cargo lambda watch` on 127.0.0.1:9000, sends one signed sample webhook and
# shows where it landed, then stays up until Ctrl-C, which stops everything it started.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
STACK=${STACK:-agent-local}
WATCH_PORT=${WATCH_PORT:-9000}
MOTO_PORT=${MOTO_PORT:-4566}
mkdir -p .local
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
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

step "building local-aws and creating the queues and secret of template.yaml (stack $STACK)"
cargo run -q -p local-aws -- provision --template template.yaml --stack "$STACK" \
  --secret "AppSecret={\"meta_app_secret\":\"dev-app-secret\",\"meta_verify_token\":\"dev-verify-token\"}" \
  --env-file .local/dev.env
done_step

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
  emulator: $AWS_ENDPOINT_URL   (dev app secret: dev-app-secret)
  logs:     .local/watch.log
Ctrl-C stops everything started here.
MSG
tail -n 0 -f .local/watch.log & pids+=($!)
wait "${pids[0]}"
