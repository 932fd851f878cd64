#!/usr/bin/env bash
# Lints template.yaml offline: cfn-lint, then SAM's own validation with its linter.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
log "cfn-lint template.yaml"
cfn-lint template.yaml
log "sam validate --lint"
sam validate --lint --template-file template.yaml >/dev/null
log "template.yaml: 0 errors"
