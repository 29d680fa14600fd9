#!/usr/bin/env python3
"""Instructions per round trip: the cost figure that holds still.

Runs `mcp-bridge serve` (1 worker) with its host program and its nginx under
`valgrind --tool=callgrind`, drives it with `mcp-load steps` over HTTP+SSE,
Streamable HTTP sessions and stateless 2026-07-28 requests, and counts the
instructions the host and the nginx worker execute for a fixed number of echo
round trips (after as many unmeasured ones, so that nothing that happens once
is counted).
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
    real one, and an nginx that is callgrind running the real one. Returns
    the directory of the callgrind outputs and that nginx."""
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
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx_wrapper = os.path.join(tmp, "nginx")
    with open(nginx_wrapper, "w") as f:
        # `nginx -V` and `-t` too run under it: harmless, only slower.
        f.write("#!/bin/sh\n"
                f"exec valgrind -q --tool=callgrind --compress-strings=no --compress-pos=no "
                f"--callgrind-out-file={out}/nginx.out.%p {nginx} \"$@\"\n")
    os.chmod(nginx_wrapper, 0o755)
    return out, nginx_wrapper


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
    own, fn, after_call, obj = {}, "?", False, ""
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = os.path.basename(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
                if fn.startswith("0x"):
                    # No symbol (nginx is stripped): at least its file.
                    fn = f"{fn} in {obj}"
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


def parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def dump(pid, out, prefix):
    """Has callgrind write what it counted in `pid` since the last zeroing;
    returns the file."""
    before = set(glob.glob(f"{out}/{prefix}.{pid}*"))
    control("--dump", str(pid))
    # A process may write it a moment after callgrind_control returns.
    deadline = time.monotonic() + 30
    while not (dumps := sorted(set(glob.glob(f"{out}/{prefix}.{pid}*")) - before)):
        if time.monotonic() > deadline:
            raise Failure(f"callgrind wrote no dump for {pid}")
        time.sleep(0.05)
    # Whole once its totals line is there.
    while "totals:" not in open(dumps[-1]).read() and time.monotonic() < deadline:
        time.sleep(0.05)
    return dumps[-1]


class Gateway:
    """`mcp-bridge serve` with 1 worker, its host and its nginx under
    callgrind, for one run."""

    def __init__(self, tmp, nginx):
        self.port = free_port()
        cmd = [os.path.join(tmp, "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{self.port}", "--workers", "1",
               "--max-sessions", "1000", "--base-uri", "/mcp", "--log-level", "warn", "--nginx", nginx,
               "--", os.path.join(tmp, "mcp-fixture")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, text=True)
        for line in self.proc.stdout:
            if "SSE endpoint" in line:
                return
        raise Failure(f"mcp-bridge serve exited with {self.proc.wait()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_once(transport, tmp, out, nginx, args, count, count_host):
    """One gateway, `count` round trips per session unmeasured then as many
    measured. Returns (round trips measured, the nginx worker's instructions
    over the whole run, the host's dump of the measured ones or None)."""
    gateway = Gateway(tmp, nginx)
    worker = host_dump = None
    try:
        url = f"http://127.0.0.1:{gateway.port}/mcp" + ("/sse" if transport == "sse" else "")
        cmd = [os.path.join(BIN, "mcp-load"), "steps", "--sessions", str(args.sessions), "--count", str(count),
               "--timeout", "300", f"--{transport}", url]
        load = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        last = ""
        try:
            for line in load.stdout:
                if not line.startswith('{"phase"'):
                    last = line
                    continue
                pids = host_pids(tmp)
                if len(pids) != 1:
                    raise Failure(f"expected one host, found {pids}")
                # The host's parent is the nginx worker.
                worker = parent(pids[0])
                if count_host:
                    if json.loads(line)["phase"] == "window":
                        control("--zero", str(pids[0]))
                    else:
                        host_dump = dump(pids[0], out, "callgrind.out")
                load.stdin.write("\n")
                load.stdin.flush()
            load.wait(timeout=300)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        result = json.loads(last)
        if load.returncode != 0 or result.get("errors"):
            raise Failure(f"mcp-load: {result.get('error_samples')}")
    finally:
        gateway.stop()
    # A worker's counts are written when it exits.
    path = f"{out}/nginx.out.{worker}"
    deadline = time.monotonic() + 60
    while not (os.path.exists(path) and "totals:" in open(path).read()):
        if time.monotonic() > deadline:
            raise Failure(f"the nginx worker {worker} left no counts")
        time.sleep(0.1)
    return result["round_trips"], path, host_dump


def measure(transport, tmp, out, nginx, args):
    """The host's instructions over the measured round trips (zeroed and
    dumped around them), and the nginx worker's by difference: a run of
    twice as many round trips costs the same apart from them (callgrind
    cannot be told to zero an nginx worker, a forked process)."""
    rts, short_run, _ = run_once(transport, tmp, out, nginx, args, args.count, False)
    rts2, long_run, host_dump = run_once(transport, tmp, out, nginx, args, 2 * args.count, True)
    if not host_dump:
        raise Failure("no measured window")
    extra = 2 * (rts2 - rts)  # the longer run does twice as many, twice
    host_ir, nginx_ir = totals(host_dump), totals(long_run) - totals(short_run)
    # Functions by the difference of the two runs too.
    short_top = dict((name, ir) for ir, name in top_functions(short_run, 10_000))
    nginx_top = sorted(((ir - short_top.get(name, 0), name) for ir, name in top_functions(long_run, 10_000)),
                       reverse=True)[:args.top]
    return {"transport": transport, "sessions": args.sessions, "round_trips": rts2,
            "host_instructions": host_ir, "per_round_trip": round(host_ir / rts2),
            "nginx_per_round_trip": round(nginx_ir / extra),
            "top": [(ir * extra // rts2, name) for ir, name in top_functions(host_dump, args.top)],
            "nginx_top": nginx_top, "extra": extra}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--only", action="append", choices=TRANSPORTS)
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if not shutil.which(tool):
            raise Failure(f"{tool} is not installed (apt-get install valgrind)")

    tmp = tempfile.mkdtemp(prefix="mcp-bridge-profile-")
    results = []
    try:
        out, nginx = stage(tmp)
        for transport in args.only or TRANSPORTS:
            log(f"{transport}: {args.sessions} sessions, {args.count} and {2 * args.count} round trips each")
            results.append(measure(transport, tmp, out, nginx, args))
    finally:
        if not os.environ.get("PROFILE_KEEP"):
            shutil.rmtree(tmp, ignore_errors=True)

    print("| workload | host instructions per round trip | nginx worker instructions per round trip |")
    print("|---|--:|--:|")
    for r in results:
        print(f"| {r['transport']} echo, {r['sessions']} sessions | {r['per_round_trip']:,} | "
              f"{r['nginx_per_round_trip']:,} |")
    for r in results:
        for who, key in (("host", "top"), ("nginx worker", "nginx_top")):
            print(f"\n{r['transport']}: the {who}'s own instructions per round trip, by function")
            for ir, name in r[key]:
                print(f"  {ir / r['extra']:8,.0f}  {name[:110]}")
    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    with open(os.path.join(ROOT, ".bench", "profile.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"profile: {e}", file=sys.stderr)
        sys.exit(1)
