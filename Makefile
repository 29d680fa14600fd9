# mcp-bridge: see README.md.
#   make run    start a gateway on 127.0.0.1:9080 bridging the demo server
#               (or CMD="any stdio MCP server command")
#   make test   every test
#   make bench  figures: mcp-bridge beside direct stdio, supergateway and
#               mcp-proxy
#               (prints a table, rewrites docs/benchmarks.md)
#   make profile  host and nginx instructions per round trip (callgrind)
#   make chaos  the chaos runs with their HTTP fuzz, without and with
#               restart_on_crash (CHAOS_SECONDS=120 each, CHAOS_SEED to replay one)
#   make cluster-test  three serve nodes with Redis behind a round-robin
#               nginx: forwarding, node and Redis failures, forged ids,
#               the cluster-wide ceiling, leaks (CLUSTER_CHAOS=SECONDS:
#               its chaos run instead)
#   make fuzz   coverage-guided fuzzing of the host's parsers, FUZZ_SECONDS=60
#               per target (needs a nightly Rust; installs cargo-fuzz)
#   make apisix-test  the plugin inside a real Apache APISIX built from source
#               (APISIX_TESTBED=/opt/apisix-testbed; make test runs it when there)

LISTEN ?= 127.0.0.1:9080
BASE_URI ?= /mcp
WORKERS ?= 1
CMD ?=
APISIX_TESTBED ?= /opt/apisix-testbed
CLUSTER_CHAOS ?=

.PHONY: all deps test-deps bench-deps build run test apisix-test lint bench profile chaos cluster-test fuzz clean

all: build

deps:
	@bash ci/deps.sh

test-deps:
	@bash ci/deps.sh test

bench-deps:
	@bash ci/deps.sh bench

build: deps
	cargo build --release --workspace

run: build
	target/release/mcp-bridge serve --listen $(LISTEN) --base-uri $(BASE_URI) --workers $(WORKERS) $(if $(strip $(CMD)),-- $(CMD))

test: test-deps
	cargo build --release --workspace
	bash ci/test.sh

apisix-test: test-deps
	cargo build --release --workspace
	APISIX_TESTBED=$(APISIX_TESTBED) python3 ci/apisix/run.py

lint: test-deps
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings
	luacheck lua t/lua

bench: bench-deps build
	python3 ci/bench.py

profile: bench-deps build
	python3 ci/profile.py

chaos: build
	python3 ci/chaos.py
	python3 ci/chaos.py --restart-on-crash

cluster-test: test-deps build
	python3 ci/cluster.py $(if $(CLUSTER_CHAOS),--chaos $(CLUSTER_CHAOS))

fuzz:
	bash ci/fuzz.sh

clean:
	cargo clean
	rm -rf t/servroot t/e2e/node_modules ci/bench/node_modules ci/bench/.venv .bench rust/fuzz/target
