# llmproxy — build, run and check. `make help` lists the targets.

CARGO  ?= cargo
CONFIG ?= config.default.yaml
BIN     = target/release/llmproxyd

.PHONY: help build release run test lint ci bench bench-compare bench-tail compare-tools bench-instructions fuzz static install install-check clean

help:
	@echo "make build    debug build"
	@echo "make release  optimised build ($(BIN))"
	@echo "make run      build and run the proxy on $(CONFIG) (mock upstream, no keys needed)"
	@echo "make test     all unit and integration tests"
	@echo "make lint     rustfmt --check and clippy -D warnings"
	@echo "make ci       lint + test + release build + config check (what CI runs)"
	@echo "make bench    micro benchmarks (ns/op) and the latency benchmark (direct vs proxied)"
	@echo "make bench-compare  llmproxyd vs nginx, pinned cores, interleaved rounds (installs nginx)"
	@echo "make bench-tail  p99 of llmproxyd vs nginx at a fixed rate, in many short rounds (installs nginx)"
	@echo "make bench-instructions  instructions per proxied request under callgrind (installs valgrind)"
	@echo "make fuzz     run each cargo-fuzz target for FUZZ_SECONDS (nightly; installs cargo-fuzz)"
	@echo "make static   static musl binary ($(STATIC_BIN)), checked and measured"
	@echo "make install  binary, systemd unit and /etc/llmproxy/config.yaml (PREFIX, DESTDIR)"

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

ci: lint test release install-check
	$(BIN) -t -c $(CONFIG)

# Benchmarks print figures; they assert nothing. BENCH_SECONDS sets the length of each case.
bench:
	$(CARGO) bench --locked --bench micro
	ulimit -n 65536 2>/dev/null || true; $(CARGO) bench --locked --bench latency

# What the comparisons with nginx need, installed when missing.
compare-tools:
	command -v nginx >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx)
	command -v taskset >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q util-linux)

bench-compare: compare-tools
	ulimit -n 65536 2>/dev/null || true; $(CARGO) bench --locked --bench latency -- compare

# Only the open loops (both proxies together, then each alone), in many rounds (BENCH_ROUNDS,
# default 100, of BENCH_SECONDS, default 3): enough to compare tails the machine sets.
bench-tail: compare-tools
	ulimit -n 65536 2>/dev/null || true; $(CARGO) bench --locked --bench latency -- tail

# Instructions per proxied request under callgrind: deterministic where timings are noisy.
bench-instructions:
	command -v valgrind >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind)
	$(CARGO) bench --locked --bench latency -- instructions

FUZZ_SECONDS ?= 60
FUZZ_TARGETS = router config sse http1

fuzz:
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  mkdir -p work/$$t && \
	  $(CARGO) +nightly fuzz run $$t work/$$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536 || exit 1; \
	done

MUSL_TARGET = x86_64-unknown-linux-musl
STATIC_BIN  = target/$(MUSL_TARGET)/dist/llmproxyd

static:
	rustup target list --installed | grep -q '^$(MUSL_TARGET)$$' || rustup target add $(MUSL_TARGET)
	command -v musl-gcc >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q musl-tools)
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --locked --profile dist --target $(MUSL_TARGET)
	@ldd $(STATIC_BIN) 2>&1 | grep -qE 'statically linked|not a dynamic executable' || { echo "$(STATIC_BIN) is dynamically linked" >&2; exit 1; }
	@echo "static: $(STATIC_BIN) is statically linked, $$(stat -c %s $(STATIC_BIN) | awk '{printf "%.1f MiB", $$1/1048576}')"
	$(STATIC_BIN) -t -c $(CONFIG)

PREFIX  ?= /usr/local
DESTDIR ?=
UNITDIR ?= /etc/systemd/system

# Installs the newest of the static binary (`make static`) and the release build (building the
# latter when neither exists). An existing /etc/llmproxy/config.yaml is never overwritten.
install:
	@bin=$$(ls -t $(STATIC_BIN) $(BIN) 2>/dev/null | head -n 1); \
	[ -n "$$bin" ] || { $(CARGO) build --release --locked && bin=$(BIN); }; \
	echo "installing $$bin"; install -D -m 0755 "$$bin" $(DESTDIR)$(PREFIX)/bin/llmproxyd
	install -d -m 0755 $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/llmproxy $(DESTDIR)/etc/sysctl.d $(DESTDIR)$(PREFIX)/share/doc/llmproxy
	sed 's|/usr/local/|$(PREFIX)/|g' deploy/llmproxy.service > $(DESTDIR)$(UNITDIR)/llmproxy.service
	sed 's|^Description=.*|& (instance %i)|' $(DESTDIR)$(UNITDIR)/llmproxy.service > $(DESTDIR)$(UNITDIR)/llmproxy@.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/llmproxy.service $(DESTDIR)$(UNITDIR)/llmproxy@.service
	install -m 0644 deploy/sysctl.conf $(DESTDIR)/etc/sysctl.d/60-llmproxy.conf
	install -m 0644 README.md config.default.yaml $(DESTDIR)$(PREFIX)/share/doc/llmproxy/
	@if [ -e $(DESTDIR)/etc/llmproxy/config.yaml ]; then \
	  echo "keeping existing $(DESTDIR)/etc/llmproxy/config.yaml"; \
	else \
	  install -m 0644 config.default.yaml $(DESTDIR)/etc/llmproxy/config.yaml; \
	fi
	@if command -v systemd-analyze >/dev/null; then \
	  for unit in llmproxy.service llmproxy@.service; do \
	    sed 's|$(PREFIX)/bin/llmproxyd|$(abspath $(DESTDIR)$(PREFIX))/bin/llmproxyd|g' $(DESTDIR)$(UNITDIR)/$$unit > $(DESTDIR)/etc/llmproxy/verify-$$unit && \
	    systemd-analyze verify $(DESTDIR)/etc/llmproxy/verify-$$unit && echo "systemd-analyze verify $$unit: ok"; \
	    rc=$$?; rm -f $(DESTDIR)/etc/llmproxy/verify-$$unit; [ $$rc -eq 0 ] || exit $$rc; \
	  done; \
	fi

# Installs into a scratch DESTDIR twice: the unit verifies, and a changed config survives.
install-check: release
	rm -rf target/install-check
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/target/install-check
	echo "# edited" >> target/install-check/etc/llmproxy/config.yaml
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/target/install-check > target/install-check.log
	grep -q "keeping existing" target/install-check.log
	grep -q "# edited" target/install-check/etc/llmproxy/config.yaml

clean:
	$(CARGO) clean
