#!/usr/bin/env python3
"""Host instructions per round trip: the cost figure that holds still.

Runs `mcp-bridge serve` (1 worker) with its host program under
`valgrind --tool=callgrind`, drives it with `mcp-load steps` over HTTP+SSE,
Streamable HTTP sessions and stateless 2026-07-28 requests, and counts the
instructions the host executes for a fixed number of echo round trips (after
as many unmeasured ones, so that nothing that happens once is counted).
Wall-clock and CPU times move with whatever else the machine does; an
instruction count does not, so this is the figure to compare from one change
to the next. Prints a table, then the functions that cost most.

Usage: ci/profile.py [--sessions N] [--count N] [--top N] [--only TRANSPORT]...
  --sessions N   sessions (clients) in parallel [16]
  --count N      round trips per session, measured (and as many before) [200]
  --top N        functions shown per transport, by their own instructions [8]
  --only T       sse, streamable or stateless (repeatable)
"""
import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
HOST = "mcp-bridge-host"
TRANSPORTS = ("sse", "streamable", "stateless")


class Failure(Exception):
    pass


def log(msg):
    print(f"profile: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage(tmp):
    """A copy of the gateway whose host program is callgrind running the
    real one. Returns the directory of the callgrind outputs."""
    for name in ("mcp-bridge", "libmcp_bridge_native.so", "mcp-fixture"):
        shutil.copy2(os.path.join(BIN, name), tmp)
    shutil.copy2(os.path.join(BIN, HOST), os.path.join(tmp, HOST + ".real"))
    out = os.path.join(tmp, "out")
    os.mkdir(out)
    # The workers' user (nobody, when run as root) writes the outputs.
    os.chmod(out, 0o1777)
    os.chmod(tmp, 0o755)
    wrapper = os.path.join(tmp, HOST)
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n"
                f"exec valgrind -q --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file={out}/callgrind.out.%p "
                f"{tmp}/{HOST}.real \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return out


def host_pids(tmp):
    """Pids of the hosts this run started (callgrind runs them)."""
    marker = f"{tmp}/{HOST}.real".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker in f.read():
                    pids.append(int(entry))
        except OSError:
            pass
    return pids


def control(*args):
    r = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise Failure(f"callgrind_control {' '.join(args)}: {(r.stdout + r.stderr).strip()[:300]}")


def totals(path):
    """The instructions (Ir) a callgrind output file counts."""
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise Failure(f"{path}: no totals line")


def top_functions(path, n):
    """The `n` functions with the most instructions of their own (callees
    not included), from a callgrind output file written with uncompressed
    names: [(instructions, name)]."""
    own, fn, after_call = {}, "?", False
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                after_call = True  # the next cost line is the callee's
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    own[fn] = own.get(fn, 0) + int(parts[1])
    return sorted(((ir, name) for name, ir in own.items()), reverse=True)[:n]


def measure(transport, port, tmp, out, args):
    url = f"http://127.0.0.1:{port}/mcp" + ("/sse" if transport == "sse" else "")
    cmd = [os.path.join(BIN, "mcp-load"), "steps", "--sessions", str(args.sessions), "--count", str(args.count),
           "--timeout", "120", f"--{transport}", url]
    load = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    dump = None
    try:
        for line in load.stdout:
            if not line.startswith('{"phase"'):
                last = line
                continue
            phase = json.loads(line)["phase"]
            pids = host_pids(tmp)
            if len(pids) != 1:
                raise Failure(f"expected one host, found {pids}")
            if phase == "window":
                control("--zero", str(pids[0]))
            else:
                before = set(glob.glob(f"{out}/callgrind.out.{pids[0]}*"))
                control("--dump", str(pids[0]))
                dumps = sorted(set(glob.glob(f"{out}/callgrind.out.{pids[0]}*")) - before)
                if not dumps:
                    raise Failure("callgrind wrote no dump")
                dump = dumps[-1]
            load.stdin.write("\n")
            load.stdin.flush()
        load.wait(timeout=60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    result = json.loads(last)
    if load.returncode != 0 or result.get("errors"):
        raise Failure(f"mcp-load: {result.get('error_samples')}")
    if not dump:
        raise Failure("no measured window")
    ir = totals(dump)
    return {"transport": transport, "sessions": args.sessions, "round_trips": result["round_trips"],
            "host_instructions": ir, "per_round_trip": round(ir / result["round_trips"]),
            "top": top_functions(dump, args.top)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--only", action="append", choices=TRANSPORTS)
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool):
            raise Failure(f"{tool} is not installed (apt-get install valgrind)")

    tmp = tempfile.mkdtemp(prefix="mcp-bridge-profile-")
    gateway = None
    results = []
    try:
        out = stage(tmp)
        port = free_port()
        cmd = [os.path.join(tmp, "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1",
               "--max-sessions", "1000", "--base-uri", "/mcp", "--log-level", "warn",
               "--", os.path.join(tmp, "mcp-fixture")]
        gateway = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, text=True)
        for line in gateway.stdout:
            if "SSE endpoint" in line:
                break
        else:
            raise Failure(f"mcp-bridge serve exited with {gateway.wait()}")
        for transport in args.only or TRANSPORTS:
            log(f"{transport}: {args.sessions} sessions x {args.count} round trips, twice")
            results.append(measure(transport, port, tmp, out, args))
    finally:
        if gateway and gateway.poll() is None:
            gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=60)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        if not os.environ.get("PROFILE_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print("| workload | round trips | host instructions | per round trip |")
    print("|---|--:|--:|--:|")
    for r in results:
        print(f"| {r['transport']} echo, {r['sessions']} sessions | {r['round_trips']:,} | "
              f"{r['host_instructions']:,} | {r['per_round_trip']:,} |")
    for r in results:
        print(f"\n{r['transport']}: the host's own instructions per round trip, by function")
        for ir, name in r["top"]:
            print(f"  {ir / r['round_trips']:8,.0f}  {name[:110]}")
    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    with open(os.path.join(ROOT, ".bench", "profile.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"profile: {e}", file=sys.stderr)
        sys.exit(1)
