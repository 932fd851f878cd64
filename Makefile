# The project's commands. `make dev` runs the product locally; `make test` runs every check CI runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help
SCRIPTS := infra/scripts
# The local stack's state (make dev's DEV_STATE_DIR).
STATE := $(or $(DEV_STATE_DIR),.local)

.PHONY: help dev send redrive load test tools crates fmt clippy checks unit lint-template migrate bench bench-ordering coldstart invoke build build-check deploy clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

dev: ## Run the product locally: AWS emulator, queues from template.yaml, functions under cargo lambda watch
	@$(SCRIPTS)/dev.sh

send: ## Under `make dev`: one more signed customer message, and the reply (TEXT="…" [FROM=wa_id NAME=…])
	@test -n "$$TEXT" || { echo 'usage: make send TEXT="¿Aceptan mascotas?" [FROM=5215500000001] [NAME="Local customer"]' >&2; exit 1; }
	@test -f $(STATE)/dev.env || { echo 'start the local stack first: make dev' >&2; exit 1; }
	@source $(SCRIPTS)/env.sh && set -a && source $(STATE)/dev.env && set +a && \
	  target/debug/devstack send --text "$$TEXT" --from "$${FROM:-5215500000001}" --name "$${NAME:-Local customer}"

redrive: ## Under `make dev`: move the parked inbound records (the DLQ) back to the inbound queue, in order
	@test -f $(STATE)/dev.env || { echo 'start the local stack first: make dev' >&2; exit 1; }
	@source $(SCRIPTS)/env.sh && set -a && source $(STATE)/dev.env && set +a && \
	  target/debug/devstack redrive --template template.yaml --stack "$${STACK:-agent-local}"

load: ## The fault harness on a stack of its own: 500 conversations x 20 messages, faults, crashes, a Postgres restart (LOAD_*, ORDERING_SCOPE: infra/scripts/load.sh)
	@$(SCRIPTS)/ensure-tools.sh load
	@$(SCRIPTS)/load.sh

test: tools fmt clippy checks unit lint-template ## Every check CI runs: fmt, clippy, the code-shape checks, all tests (against the emulator), template lint
	@source $(SCRIPTS)/env.sh && log "make test: all checks passed"

tools: ## Install what the tests need and is missing (crates, Python venvs with moto, cfn-lint, SAM CLI)
	@$(SCRIPTS)/ensure-tools.sh test

crates: ## Download the crates Cargo.lock names (cargo runs offline under make; this is its one online step)
	@$(SCRIPTS)/ensure-tools.sh crates

fmt:
	@source $(SCRIPTS)/env.sh && log "cargo fmt --check" && cargo fmt --all -- --check

clippy: crates
	@source $(SCRIPTS)/env.sh && log "cargo clippy -D warnings" && cargo clippy --workspace --all-targets --locked -- -D warnings
	@# Once more as the functions are built (no test features): what only tests use shows up here.
	@source $(SCRIPTS)/env.sh && log "cargo clippy -D warnings (libraries and binaries only)" && cargo clippy --workspace --lib --bins --locked -- -D warnings

checks: ## The code-shape rules: main.rs wiring only, SQL only in shared/src/db/
	@$(SCRIPTS)/checks.sh

unit: crates ## cargo test for the whole workspace, with a throwaway Postgres (unless DATABASE_URL is set) and AWS emulator
	@$(SCRIPTS)/with-postgres.sh $(SCRIPTS)/with-emulator.sh cargo test --workspace --locked

lint-template: ## cfn-lint and sam validate --lint on template.yaml
	@$(SCRIPTS)/lint-template.sh

migrate: crates ## Apply the Postgres migrations to DATABASE_URL
	@test -n "$$DATABASE_URL" || { echo "set DATABASE_URL=postgres://…" >&2; exit 1; }
	cargo run -q -p shared --bin migrate-db

bench: crates ## Criterion benchmark of the webhook hot path, plus the Node equivalent for comparison
	cargo bench -p shared --bench ingest
	@command -v node >/dev/null && node infra/bench/node-ingest.js target/ingest-body-2kb.json || echo "node not found: comparison skipped"

EVENT ?= wa-text
bench-ordering: crates ## Ordering-scope trade: the real processor on bursts with a 1 s stub model (MODEL_MS=…)
	@$(SCRIPTS)/with-postgres.sh $(SCRIPTS)/with-emulator.sh cargo run -q -p processor --example ordering_scope

coldstart: crates ## Under `make dev`: each function's release binary size and cold start (AGAINST=dir of other binaries to compare)
	@test -f $(STATE)/dev.env || { echo 'start the local stack first: make dev' >&2; exit 1; }
	@source $(SCRIPTS)/env.sh && cargo build -q --release --locked --bins && \
	  target/debug/devstack coldstart --bins target/release --env-file $(STATE)/dev.env --runs $${RUNS:-15} $${AGAINST:+--against $$AGAINST}

invoke: ## Send events/$(EVENT).json to $(FUNCTION) (default webhook) under `make dev`
	@source $(SCRIPTS)/env.sh && cargo lambda invoke -A 127.0.0.1 -P $${WATCH_PORT:-9000} $(or $(FUNCTION),webhook) --data-file events/$(EVENT).json

build: ## sam build (cargo-lambda + zig, arm64 release binaries)
	@$(SCRIPTS)/ensure-tools.sh build
	@source $(SCRIPTS)/env.sh && sam build --parallel

build-check: ## make build, then check every function has an arm64 bootstrap (CI runs it after the tests)
	@$(SCRIPTS)/build-check.sh

deploy: build ## sam deploy (CONFIG_ENV=prod for the prod section of samconfig.toml; guided on first use)
	@# Real AWS: your own credentials, not env.sh's local dummies and proxy guard.
	@export PATH="$(CURDIR)/.venv-sam/bin:$$PATH"; \
	if [ -z "$(CONFIG_ENV)" ] && ! grep -q '^\[default.deploy' samconfig.toml; then \
	  sam deploy --guided; else sam deploy --config-env $(or $(CONFIG_ENV),default); fi

clean:
	cargo clean
	rm -rf .aws-sam .local
