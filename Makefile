# The two commands of the README, plus the checks CI runs. Each target first installs the system
# packages the build needs (libclang for RocksDB's bindings), so they work on a fresh machine.
#
# Everything builds with cargo's `test` profile (the dev settings, inherited): cargo hashes the
# profile into every unit, so `run`, `test` and `lint` share one RocksDB build (15-20 minutes from
# scratch) instead of compiling it once per profile.

CARGO ?= cargo

.PHONY: deps run test test-postgres lint bench-build

deps:
	@./scripts/install-deps

## Run the vault on its embedded default: ./privault-data, ./policies, 127.0.0.1:50051, dev key.
run: deps
	$(CARGO) run --locked --profile test -- serve

## Run every test: unit, integration (real server, RocksDB on a temp dir), and the shipped
## policies' own test cases (`privault policy test`, run by tests/it/policy_cli.rs); then the
## integration suite again on PostgreSQL (a real server the tests start on a temp directory).
test: deps
	$(CARGO) test --locked --all-targets
	$(CARGO) test --locked --doc
	PRIVAULT_TEST_STORE=postgres $(CARGO) test --locked --test it

## Only the integration suite on PostgreSQL.
test-postgres: deps
	PRIVAULT_TEST_STORE=postgres $(CARGO) test --locked --test it

## Formatting and lints, as CI checks them.
lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --profile test -- -D warnings
