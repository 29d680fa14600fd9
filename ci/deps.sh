#!/usr/bin/env bash
# Installs what mcp-bridge needs on Debian 12, when it is missing.
#   ci/deps.sh          run + build dependencies (nginx, its lua module)
#   ci/deps.sh test     also what the test suites use
#   ci/deps.sh bench    also what make bench uses
# As root it installs with apt-get; otherwise it prints the command to run.
set -euo pipefail
cd "$(dirname "$0")/.."

# lua-cjson lets the bridge put the request's id into the errors its Lua
# code writes (it works without).
want=(nginx-core libnginx-mod-http-lua lua-cjson)
# Wanted, but the caller copes without them (non-root: only a note).
optional=()
if [[ "${1:-}" == "test" ]]; then
    # luajit2 (not luajit, which conflicts with the lua module's libluajit2)
    # runs the native module's loader test; lua-cjson and libtest-base-perl
    # serve the Test::Nginx suites; lua-check lints the Lua code; python3
    # runs the benchmark's smoke test and, in a virtual environment (venv),
    # the end-to-end test with the MCP Python SDK.
    # valgrind runs make profile's smoke test.
    # redis-server: t/registry.t runs its own (the cluster registry's tests).
    want+=(lua-cjson luajit2 libtest-base-perl lua-check valgrind redis-server)
    command -v node >/dev/null 2>&1 || want+=(nodejs npm)
    command -v python3 >/dev/null 2>&1 || want+=(python3)
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
        want+=(python3-venv)
    fi
elif [[ "${1:-}" == "bench" ]]; then
    # python3 runs ci/bench.py; node runs supergateway, and python3 with
    # a virtual environment (venv) mcp-proxy, the peers it compares with
    # (without them their columns say why they are empty).
    # valgrind (callgrind) counts the host's instructions (make profile).
    want+=(valgrind)
    command -v python3 >/dev/null 2>&1 || want+=(python3)
    command -v node >/dev/null 2>&1 || optional+=(nodejs npm)
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c "import ensurepip, venv" 2>/dev/null; then
        optional+=(python3-venv)
    fi
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
    # The official MCP SDKs for the end-to-end tests, at the locked versions:
    # TypeScript (t/e2e, npm) when a pinned package is missing or at another
    # version ...
    e2e_installed() {
        (cd t/e2e && node -e '
            const deps = require("./package.json").dependencies;
            for (const [name, version] of Object.entries(deps)) {
                if (require(`./node_modules/${name}/package.json`).version !== version) process.exit(1);
            }' 2>/dev/null)
    }
    if ! e2e_installed; then
        echo "ci/deps.sh: installing the end-to-end test's npm packages (t/e2e)"
        (cd t/e2e && npm ci --no-audit --no-fund --loglevel=error)
    fi
    # ... and Python (t/e2e-python/.venv, pip; the SDK needs Python 3.10 or
    # newer) when the venv is missing or was made from other pins.
    venv=t/e2e-python/.venv
    pins=t/e2e-python/requirements.txt
    want_stamp=$(sha256sum "$pins" | cut -d' ' -f1)
    if [[ ! -x $venv/bin/python || "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want_stamp" ]]; then
        if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            echo "ci/deps.sh: the MCP Python SDK needs Python 3.10 or newer; python3 is $(python3 -V 2>&1)" >&2
            exit 1
        fi
        echo "ci/deps.sh: installing the end-to-end test's Python packages ($venv)"
        rm -rf "$venv"
        python3 -m venv "$venv"
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet --no-input -r "$pins"
        echo "$want_stamp" >"$venv/.requirements.sha256"
    fi
    # The official MCP conformance suite, with the Node.js 22 it needs.
    if [[ ! -d ci/conformance/node_modules/@modelcontextprotocol/conformance ]]; then
        (cd ci/conformance && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi

if [[ "${1:-}" == "bench" ]]; then
    # mcp-proxy, a peer of the benchmark, into ci/bench/.venv at the pinned
    # versions, when the venv is missing or was made from other pins. A
    # failure is no failure of make bench: mcp-proxy's column then says it
    # is not installed.
    venv=ci/bench/.venv
    pins=ci/bench/requirements.txt
    want_stamp=$(sha256sum "$pins" | cut -d' ' -f1)
    if [[ ! -x $venv/bin/mcp-proxy || "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want_stamp" ]]; then
        if ! python3 -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            echo "ci/deps.sh: mcp-proxy needs python3 3.10 or newer with venv; make bench runs without it" >&2
        else
            echo "ci/deps.sh: installing mcp-proxy for make bench ($venv)"
            rm -rf "$venv"
            if python3 -m venv "$venv" &&
                PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet --no-input -r "$pins"; then
                echo "$want_stamp" >"$venv/.requirements.sha256"
            else
                rm -rf "$venv"
                echo "ci/deps.sh: mcp-proxy could not be installed; make bench runs without it" >&2
            fi
        fi
    fi
fi
