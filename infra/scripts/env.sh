# Sourced by the Makefile's scripts: tool paths and a safe AWS environment for local work.
# Dummy credentials and a region keep the SDKs from probing instance metadata. Two guards keep
# every function and test on loopback:
#   NETWORK_GUARD=loopback  the product's own check (shared::netguard): a function whose AWS
#                           endpoint is not loopback stops at start-up; its HTTP clients send
#                           any non-loopback request to a dead end (refused at once);
#   HTTPS_PROXY             a dead proxy for whatever else honours it (curl, test code).
# Package managers need the registries: cargo is offline here (CARGO_NET_OFFLINE) and fetches
# only in ensure-tools.sh; pip, npm and apt run through `unguarded`.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export ROOT
export PATH="$ROOT/.venv/bin:$PATH:$ROOT/.venv-sam/bin"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true SAM_CLI_TELEMETRY=0
export NETWORK_GUARD=${NETWORK_GUARD:-loopback}
# The caller's own HTTPS proxy (kept across nested scripts) is what the package managers use.
export CALLER_HTTPS_PROXY=${CALLER_HTTPS_PROXY-${HTTPS_PROXY:-${https_proxy:-}}}
export HTTPS_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost
export CARGO_NET_OFFLINE=true

# unguarded CMD...: CMD (a program) with the registries reachable: pip, npm, apt, cargo fetch.
unguarded() {
  if [ -n "$CALLER_HTTPS_PROXY" ]; then
    env -u CARGO_NET_OFFLINE HTTPS_PROXY="$CALLER_HTTPS_PROXY" https_proxy="$CALLER_HTTPS_PROXY" "$@"
  else
    env -u CARGO_NET_OFFLINE -u HTTPS_PROXY -u https_proxy "$@"
  fi
}

log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*"; }

free_port() {
  python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'
}

# The arm64 standard library Lambda's binaries are built against (rustup target).
has_arm64_target() {
  command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu
}
