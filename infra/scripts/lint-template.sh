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

# What SAM generates must not widen IAM either: translate the template (offline) and refuse
# managed policies with wildcard resources beyond the basic execution (logs) and VPC ones.
log "IAM of the transformed template"
AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 "$ROOT/.venv-sam/bin/python" - <<'PY'
import sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

text = open("template.yaml").read().replace("CodeUri: .", "CodeUri: s3://bucket/code.zip")
out = transform(yaml_parse(text), {}, NoManagedPolicies())
allowed = {"AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"}
bad = []
for rid, r in out["Resources"].items():
    if r["Type"] != "AWS::IAM::Role":
        continue
    for arn in r["Properties"].get("ManagedPolicyArns", []):
        name = str(arn).rsplit("/", 1)[-1]
        if name not in allowed:
            bad.append(f"{rid}: {name}")
if bad:
    print("managed policies with wide grants:", *bad, sep="\n  ", file=sys.stderr)
    sys.exit(1)
PY
log "IAM: only the function's own statements plus basic execution (and VPC access)"
