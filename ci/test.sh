#!/usr/bin/env bash
# Every test of mcp-bridge: Rust unit and integration tests, lints, the
# Test::Nginx suites (with the real Test::Nginx when installed, else the
# project's runner in t/lib), the end-to-end tests with the official MCP SDKs
# (TypeScript and Python, installed by ci/deps.sh test), the official MCP
# conformance suite, a benchmark and chaos smoke run, cluster mode (three
# nodes, Redis, a round-robin front), the plugin inside Apache
# APISIX (when a testbed is built), and a final check that nothing was left
# running.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# What the suites may leave in the temporary directory if they do not clean
# up after themselves (checked at the end).
tmp_entries() { find "${TMPDIR:-/tmp}" -maxdepth 1 -name 'mcp-*' 2>/dev/null | sort; }
tmp_before=$(tmp_entries)

step "cargo test"
cargo test --release --workspace --quiet

step "lints: rustfmt, clippy, luacheck"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings
luacheck -q lua t/lua

step "Test::Nginx suites"
export TEST_NGINX_SERVROOT="${TEST_NGINX_SERVROOT:-$PWD/t/servroot}"
# A free port rather than Test::Nginx's fixed 1984, which another checkout's
# run may hold.
TEST_NGINX_PORT="${TEST_NGINX_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
export TEST_NGINX_PORT
if [[ -z "${TEST_NGINX_LOAD_MODULES:-}" && -f /usr/lib/nginx/modules/ngx_http_lua_module.so ]]; then
    export TEST_NGINX_LOAD_MODULES="/usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so"
fi
# As root, in a PID namespace of their own: a host ends what dead hosts of
# its user left behind, so hostile.t's check of that would race the hosts
# of any other mcp-bridge of this user on the machine. The namespace's
# first process (ci/reaper.py) reaps, as the suites' nginx daemonizes, and
# takes what is left in it down when the suites and the hosts' last
# clean-ups have ended.
isolated=()
if [[ $(id -u) -eq 0 ]] && command -v unshare >/dev/null && unshare --pid --fork --mount-proc true 2>/dev/null; then
    isolated=(unshare --pid --fork --mount-proc --kill-child python3 ci/reaper.py)
fi
if perl -MTest::Nginx::Socket::Lua -e 1 2>/dev/null; then
    echo "(using the installed Test::Nginx)"
    "${isolated[@]}" prove -I . t/*.t
else
    echo "(Test::Nginx is not installed: using the project's runner in t/lib)"
    "${isolated[@]}" prove -I t/lib -I . t/*.t t/runner/*.t
fi

step "end to end: MCP TypeScript SDK 1.x, HTTP+SSE"
(cd t/e2e && node --test sdk-sse.test.mjs)

step "end to end: MCP TypeScript SDK 1.x, Streamable HTTP with sessions"
(cd t/e2e && node --test sdk-streamable.test.mjs)

step "end to end: MCP TypeScript SDK 2.x client, stateless Streamable HTTP (2026-07-28)"
(cd t/e2e && node --test client-modern.test.mjs)

step "end to end: MCP Python SDK 2.x, Streamable HTTP (sessions, and 2026-07-28 by negotiation)"
t/e2e-python/.venv/bin/python -m pytest -q t/e2e-python

step "the official MCP conformance suite through serve, 1 and 2 workers"
bash ci/conformance.sh

step "benchmark (smoke run: tiny counts, no figures; make bench for those)"
python3 ci/bench.py --smoke

step "host instructions per round trip (smoke run of make profile)"
python3 ci/profile.py --sessions 2 --count 20 --top 3

step "chaos run (short; make chaos for the full run)"
python3 ci/chaos.py --short

step "chaos run with restart_on_crash (short)"
python3 ci/chaos.py --seconds 15 --restart-on-crash

step "cluster mode: three serve nodes, Redis, a round-robin nginx (ci/cluster.py)"
python3 ci/cluster.py

step "cluster chaos run (short; make cluster-test CLUSTER_CHAOS=120 for a long one)"
python3 ci/cluster.py --chaos 20

# Inside a real Apache APISIX (make apisix-test), when one is built at
# $APISIX_TESTBED (default /opt/apisix-testbed); otherwise one line says why not.
apisix_skip=$(python3 ci/apisix/run.py --why-skipped)
if [[ -n "$apisix_skip" ]]; then
    echo "$apisix_skip"
else
    step "inside Apache APISIX (make apisix-test)"
    python3 ci/apisix/run.py
fi

step "nothing left running"
# Only this checkout's processes: another checkout may be testing or
# benchmarking on the same machine.
left=$(pgrep -f "$(pwd -P)/target/release/(mcp-fixture|mcp-bridge-host)" || true)
echo "backend and host processes left after the suite: $(echo -n "$left" | grep -c . || true)"
if [[ -n "$left" ]]; then
    ps -o pid,ppid,stat,args -p $(echo $left) || true
    exit 1
fi
new_tmp=$(comm -13 <(echo "$tmp_before") <(tmp_entries))
echo "entries left in ${TMPDIR:-/tmp}: $(echo -n "$new_tmp" | grep -c . || true)"
if [[ -n "$new_tmp" ]]; then
    echo "$new_tmp"
    # Elsewhere another checkout's run may have made them meanwhile.
    [[ "${CI:-}" == true ]] && exit 1
fi
echo "all tests passed"
