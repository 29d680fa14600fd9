#!/usr/bin/env bash
# Installs what mcp-bridge needs on Debian 12, when it is missing.
#   ci/deps.sh          run + build dependencies (nginx, its lua module)
#   ci/deps.sh test     also what the test suites use
#   ci/deps.sh bench    also what make bench uses
# As root it installs with apt-get; otherwise it prints the command to run.
set -euo pipefail

want=(nginx-core libnginx-mod-http-lua)
# Wanted, but the caller copes without them (non-root: only a note).
optional=()
if [[ "${1:-}" == "test" ]]; then
    # luajit2 (not luajit, which conflicts with the lua module's libluajit2)
    # runs the native module's loader test; lua-cjson and libtest-base-perl
    # serve the Test::Nginx suites; lua-check lints the Lua code; python3
    # runs the benchmark's smoke test.
    want+=(lua-cjson luajit2 libtest-base-perl lua-check)
    command -v node >/dev/null 2>&1 || want+=(nodejs npm)
    command -v python3 >/dev/null 2>&1 || want+=(python3)
elif [[ "${1:-}" == "bench" ]]; then
    # python3 runs ci/bench.py; node runs supergateway, the peer it
    # compares with (without node that column says why it is empty).
    command -v python3 >/dev/null 2>&1 || want+=(python3)
    command -v node >/dev/null 2>&1 || optional+=(nodejs npm)
fi

missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#optional[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        missing+=("${optional[@]}")
    else
        echo "ci/deps.sh: optional Debian packages missing: ${optional[*]} (sudo apt-get install ${optional[*]})" >&2
    fi
fi

if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "ci/deps.sh: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "ci/deps.sh: missing Debian packages; install them with:" >&2
        echo "  sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "ci/deps.sh: cargo not found: install a Rust toolchain (1.80 or newer), e.g. from https://rustup.rs" >&2
    exit 1
fi

if [[ "${1:-}" == "test" ]]; then
    # The official MCP SDK for the end-to-end test, at the locked version.
    if [[ ! -d t/e2e/node_modules/@modelcontextprotocol/sdk ]]; then
        (cd t/e2e && npm ci --no-audit --no-fund --loglevel=error)
    fi
    # The official MCP conformance suite, with the Node.js 22 it needs.
    if [[ ! -d ci/conformance/node_modules/@modelcontextprotocol/conformance ]]; then
        (cd ci/conformance && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
