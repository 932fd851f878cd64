#!/usr/bin/env bash
# The code-shape rules `make test` holds (issue 17), each a grep over the sources:
#   - every function's main.rs is wiring only: at most 25 lines;
#   - SQL lives in the data layer (shared/src/db/, a module per table group): no statement in
#     a function's src/ or elsewhere in shared/src.
# Exits non-zero, naming every place that breaks a rule.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$ROOT"
bad=0

for main in functions/*/src/main.rs; do
  n=$(wc -l <"$main")
  if [ "$n" -gt 25 ]; then
    echo "checks: $main has $n lines; a main.rs is wiring only (at most 25: move the rest into the library)" >&2
    bad=1
  fi
done

# A statement keyword at the start of a string literal or of a line inside one.
sql='("|^\s*)(SELECT|INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM|WITH [a-z_]+ AS \()'
if hits=$(grep -rnE "$sql" --include='*.rs' functions/*/src shared/src | grep -v '^shared/src/db/'); then
  echo "checks: SQL outside the data layer (shared/src/db/):" >&2
  echo "$hits" >&2
  bad=1
fi

[ "$bad" = 0 ] && log "checks: every main.rs is wiring only; no SQL outside shared/src/db/"
exit "$bad"
