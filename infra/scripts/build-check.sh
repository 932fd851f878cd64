#!/usr/bin/env bash
# build-check.sh: `make build` (sam build), then checks that every AWS::Serverless::Function of
# template.yaml got an arm64 (aarch64 ELF) bootstrap. Run by .ci/run after the tests.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
T0=$EPOCHREALTIME
make --no-print-directory build
python3 - <<'PY'
import re, sys
text = open("template.yaml").read()
functions = re.findall(r"^  (\w+):\n    Type: AWS::Serverless::Function$", text, re.M)
bad = []
for f in functions:
    path = f".aws-sam/build/{f}/bootstrap"
    try:
        head = open(path, "rb").read(20)
    except OSError:
        bad.append(f"{f}: no {path}"); continue
    # ELF magic, then e_machine (little endian u16 at offset 18): 183 = EM_AARCH64.
    if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != 183:
        bad.append(f"{f}: {path} is not an aarch64 ELF")
if not functions or bad:
    print("build-check failed:", *(bad or ["no functions found in template.yaml"]), sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"build-check: arm64 bootstrap for {len(functions)} functions: {', '.join(functions)}")
PY
log "build-check passed in $(awk -v a="$T0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}') s"
