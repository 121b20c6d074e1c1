# llmproxy — build, run and check. `make help` lists the targets.

CARGO  ?= cargo
CONFIG ?= config.default.yaml
BIN     = target/release/llmproxyd

.PHONY: help build release run test lint ci bench fuzz clean

help:
	@echo "make build    debug build"
	@echo "make release  optimised build ($(BIN))"
	@echo "make run      build and run the proxy on $(CONFIG) (mock upstream, no keys needed)"
	@echo "make test     all unit and integration tests"
	@echo "make lint     rustfmt --check and clippy -D warnings"
	@echo "make ci       lint + test + release build + config check (what CI runs)"
	@echo "make bench    micro benchmarks (ns/op of router, limiter, breaker, pick)"
	@echo "make fuzz     run each cargo-fuzz target for FUZZ_SECONDS (nightly; installs cargo-fuzz)"

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

FUZZ_SECONDS ?= 60
FUZZ_TARGETS = router config sse

fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p work/$$t && \
	  $(CARGO) +nightly fuzz run $$t work/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
	done

clean:
	$(CARGO) clean
