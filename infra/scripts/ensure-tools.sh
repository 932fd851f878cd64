#!/usr/bin/env bash
# Installs what the tests and the local stack need and a fresh machine lacks, into the repo's
# own virtualenvs (never system-wide). Idempotent and quick when everything is there.
#   ensure-tools.sh test   -> moto (AWS emulator), cfn-lint + aws-sam-cli (template lint)
#   ensure-tools.sh dev    -> the above plus cargo-lambda (and zig, for sam build)
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
venv "$ROOT/.venv" 'moto[server]>=5.1,<6'
# aws-sam-cli pins boto3 exactly; it gets its own venv so it cannot fight moto's.
venv "$ROOT/.venv-sam" 'aws-sam-cli>=1.140' 'cfn-lint>=1.30'
if [ "$what" = dev ]; then
  venv "$ROOT/.venv" 'cargo-lambda>=1.8' 'ziglang>=0.13'
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
if [ "$what" = dev ] && command -v rustup >/dev/null \
   && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  log "adding the aarch64-unknown-linux-gnu Rust target (Lambda runs arm64)"
  rustup target add aarch64-unknown-linux-gnu
fi
