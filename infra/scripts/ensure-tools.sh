#!/usr/bin/env bash
# Installs what the tests and the local stack need and a fresh machine lacks, into the repo's
# own virtualenvs (never system-wide). Idempotent and quick when everything is there.
#   ensure-tools.sh dev    -> moto (AWS emulator) and cargo-lambda: `make dev`
#   ensure-tools.sh test   -> the above plus cfn-lint + aws-sam-cli (template lint), chromium and
#                             playwright-core (the web chat browser test): `make test`
#   ensure-tools.sh build  -> moto, SAM, cargo-lambda, zig and the arm64 Rust target: `make build`
set -euo pipefail
source "$(dirname "$0")/env.sh"
what=${1:-test}

venv() { # venv DIR PACKAGES...
  local dir=$1; shift
  if [ ! -x "$dir/bin/python" ]; then
    log "creating $dir"
    python3 -m venv "$dir"
  fi
  local missing=()
  for pkg in "$@"; do
    "$dir/bin/python" -m pip show -q "${pkg%%[=<>\[]*}" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]} into $dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}"
  fi
}

unset HTTPS_PROXY https_proxy   # pip must reach the package index
venv "$ROOT/.venv" 'moto[server]>=5.1,<6' 'cargo-lambda>=1.8'
if [ "$what" != dev ]; then
  # aws-sam-cli pins boto3 exactly; it gets its own venv so it cannot fight moto's.
  venv "$ROOT/.venv-sam" 'aws-sam-cli>=1.140' 'cfn-lint>=1.30'
fi
if [ "$what" = test ]; then
  # The web chat browser test: Debian's chromium driven by playwright-core (which brings no
  # browser of its own), under infra/browser.
  apt_install() {
    log "installing $* from Debian's packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
  command -v chromium >/dev/null || apt_install chromium
  command -v npm >/dev/null || apt_install nodejs npm
  if [ ! -f "$ROOT/infra/browser/node_modules/playwright-core/package.json" ]; then
    log "installing playwright-core into infra/browser"
    (cd "$ROOT/infra/browser" && npm ci --no-audit --no-fund --silent)
  fi
fi
if [ "$what" = build ]; then
  venv "$ROOT/.venv" 'ziglang>=0.13'
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
if [ "$what" = build ] && command -v rustup >/dev/null \
   && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  log "adding the aarch64-unknown-linux-gnu Rust target (Lambda runs arm64)"
  rustup target add aarch64-unknown-linux-gnu
fi
