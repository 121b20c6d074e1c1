# llmproxy — build, run and check. `make help` lists the targets.

CARGO  ?= cargo
CONFIG ?= config.default.yaml
BIN     = target/release/llmproxyd

.PHONY: help build release run test lint ci bench clean

help:
	@echo "make build    debug build"
	@echo "make release  optimised build ($(BIN))"
	@echo "make run      build and run the proxy on $(CONFIG) (mock upstream, no keys needed)"
	@echo "make test     all unit and integration tests"
	@echo "make lint     rustfmt --check and clippy -D warnings"
	@echo "make ci       lint + test + release build + config check (what CI runs)"
	@echo "make bench    micro benchmarks (ns/op of router, limiter, breaker, pick)"

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --release --locked

run: release
	$(BIN) -c $(CONFIG)

test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

ci: lint test release
	$(BIN) -t -c $(CONFIG)

bench:
	$(CARGO) bench --locked --bench micro

clean:
	$(CARGO) clean
