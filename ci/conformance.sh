#!/usr/bin/env bash
# The official MCP conformance suite (pinned in ci/conformance/package.json)
# through `mcp-bridge serve`, in front of the fixture's conformance mode,
# with 1 and 2 workers: the 2025-11-25 and 2026-07-28 requirement sets
# (2026-07-28 with ci/conformance/expected-failures.yml), and the
# session-lifecycle and DNS-rebinding scenarios on their own. Fails on any
# unexpected failure, and on any backend left running.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/target/release
suite=$root/ci/conformance
out=$(mktemp -d /tmp/mcp-bridge-conformance-XXXXXX)
gateway=

stop() {
    if [[ -n $gateway ]] && kill -0 "$gateway" 2>/dev/null; then
        kill -INT "$gateway"
        wait "$gateway" || true
    fi
    gateway=
}
trap 'stop; rm -rf "$out"' EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# "N of M required scenarios passed (K expected to fail)" for a run's log;
# the scenario's own counts for a single-scenario run.
count() {
    local log=$1; shift
    local required=""
    if [[ $1 == --requirements ]]; then
        required=$(cd "$suite" && npx --no-install conformance list --requirements "$2" 2>/dev/null \
                   | sed -n '/^Server scenarios/,/^$/s/^  - //p')
    fi
    python3 - "$log" "$suite/expected-failures.yml" "$required" <<'PY'
import re, sys
log, baseline, required = open(sys.argv[1], encoding="utf-8").read(), sys.argv[2], sys.argv[3].split()
results = dict(re.findall(r"^([\u2713\u2717]) ([\w./-]+): ", log, re.M)[::-1] and
               [(n, m) for m, n in re.findall(r"^([\u2713\u2717]) ([\w./-]+): ", log, re.M)])
if not required:
    lines = re.findall(r"^[\u2713\u2717] ([\w./-]+: \d+ passed, \d+ failed)", log, re.M)
    print(lines[-1] if lines else "passed")
    sys.exit()
expected = set(re.findall(r"^  - ([\w./-]+)\s*$", open(baseline).read(), re.M))
passed = [n for n in required if results.get(n) == "\u2713"]
failing = [n for n in required if results.get(n) != "\u2713"]
print(f"{len(passed)} of {len(required)} required scenarios passed"
      + (f"; {len(failing)} expected to fail until MRTR translation ({', '.join(failing)})" if failing else ""))
PY
}

summary=()
for workers in 1 2; do
    port=$(free_port)
    "$bin/mcp-bridge" serve --listen "127.0.0.1:$port" --workers "$workers" --log-level warn \
        -- "$bin/mcp-fixture" --conformance --pid-dir "$out/pids" >"$out/gateway-$workers.log" 2>&1 &
    gateway=$!
    mkdir -p "$out/pids" && chmod 1777 "$out/pids"
    for _ in $(seq 100); do
        grep -q "Streamable HTTP endpoint" "$out/gateway-$workers.log" && break
        sleep 0.1
    done
    url=http://127.0.0.1:$port/mcp
    run() {
        local name=$1; shift
        local log=$out/$name-$workers.log
        if (cd "$suite" && npx --no-install conformance server --url "$url" "$@" -o "$out/results") >"$log" 2>&1; then
            summary+=("$workers worker(s), $name: $(count "$log" "$@")")
        else
            sed -n '/=== SUMMARY ===/,$p' "$log"
            echo "conformance: $name with $workers worker(s) failed (log above; gateway log: $out/gateway-$workers.log)" >&2
            cat "$out/gateway-$workers.log" >&2
            exit 1
        fi
    }
    run requirements-2025-11-25 --requirements 2025-11-25
    run requirements-2026-07-28 --requirements 2026-07-28 --expected-failures "$suite/expected-failures.yml"
    run server-session-lifecycle --scenario server-session-lifecycle
    run dns-rebinding-protection --scenario dns-rebinding-protection
    stop
    left=$(python3 - "$out/pids" <<'PY'
import json, os, sys
d = sys.argv[1]
left = []
for name in os.listdir(d):
    if not name.endswith(".pid"):
        continue
    rec = json.load(open(os.path.join(d, name)))
    try:
        stat = open(f"/proc/{rec['pid']}/stat").read()
    except OSError:
        continue
    if int(stat.rsplit(") ", 1)[1].split()[19]) == rec["starttime"]:
        left.append(str(rec["pid"]))
print(" ".join(left))
PY
)
    if [[ -n $left ]]; then
        echo "conformance: backends left running with $workers worker(s): $left" >&2
        exit 1
    fi
done
printf '%s\n' "${summary[@]}"
