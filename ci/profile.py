#!/usr/bin/env python3
"""Instructions per round trip: the cost figures that hold still.

Runs `mcp-bridge serve` (1 worker) with its host program, then its nginx,
under `valgrind --tool=callgrind` (one of them at a time, so the one counted
is the slowest of its run every time), drives it with `mcp-load steps` over
HTTP+SSE, Streamable HTTP sessions and stateless 2026-07-28 requests, and
counts the instructions the host and the nginx worker execute per echo round
trip: for the host, over a fixed number of round trips after as many
unmeasured ones; for the worker, by the difference between two runs of which
one does twice as many (callgrind cannot zero a forked process). Wall-clock
and CPU times move with whatever else the machine does; instruction counts do
not, so these are the figures to compare from one change to the next. Prints
a table, then the functions that cost most.

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
# Outputs that callgrind_annotate-free parsing can read: names, not numbers.
NAMES = "--compress-strings=no --compress-pos=no"


class Failure(Exception):
    pass


def log(msg):
    print(f"profile: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage(tmp):
    """Two copies of the gateway: one whose host program is callgrind
    running the real one (`tmp`/counted), one as it is (`tmp`/plain); and an
    nginx that is callgrind running the real one. Each process is counted
    alone, so it is the slowest of the run every time: the same conditions
    from one run to the next. Returns the directory of the callgrind
    outputs and that nginx."""
    out = os.path.join(tmp, "out")
    os.mkdir(out)
    # The workers' user (nobody, when run as root) writes the outputs.
    os.chmod(out, 0o1777)
    os.chmod(tmp, 0o755)
    for copy in ("counted", "plain"):
        d = os.path.join(tmp, copy)
        os.mkdir(d, 0o755)
        for name in ("mcp-bridge", "libmcp_bridge_native.so", "mcp-fixture"):
            shutil.copy2(os.path.join(BIN, name), d)
    shutil.copy2(os.path.join(BIN, HOST), os.path.join(tmp, "plain", HOST))
    shutil.copy2(os.path.join(BIN, HOST), os.path.join(tmp, "counted", HOST + ".real"))
    wrapper = os.path.join(tmp, "counted", HOST)
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\n"
                f"exec valgrind -q --tool=callgrind {NAMES} --callgrind-out-file={out}/callgrind.out.%p "
                f"{tmp}/counted/{HOST}.real \"$@\"\n")
    os.chmod(wrapper, 0o755)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx_wrapper = os.path.join(tmp, "nginx")
    with open(nginx_wrapper, "w") as f:
        # `nginx -V` and `-t` too run under it: harmless, only slower.
        f.write(f"#!/bin/sh\nexec valgrind -q --tool=callgrind {NAMES} --callgrind-out-file={out}/nginx.out.%p "
                f"{nginx} \"$@\"\n")
    os.chmod(nginx_wrapper, 0o755)
    return out, nginx_wrapper


def host_pids(tmp):
    """Pids of the hosts this run started."""
    marker = f"{tmp}/".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker in cmdline and HOST.encode() in cmdline and b"--token" in cmdline:
            pids.append(int(entry))
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


def top_functions(path, n, by_object=False):
    """The `n` functions with the most instructions of their own (callees
    not included), from a callgrind output file written with uncompressed
    names: [(instructions, name)]; or, `by_object`, the same by the file
    (program or library) the functions are in."""
    own, fn, after_call, obj = {}, "?", False, ""
    with open(path) as f:
        for line in f:
            if line.startswith("ob="):
                obj = os.path.basename(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip()
                if by_object:
                    fn = obj
                elif fn.startswith("0x"):
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


# What the host's instructions go to, by the names of its functions: the
# first kind whose test a name passes.
KINDS = (
    ("checking JSON", lambda n: n.startswith(("mcp_bridge_host::scan::", "serde_json::"))),
    ("tokio: tasks, wakers, I/O readiness", lambda n: n.startswith(("tokio::", "mio::", "<tokio::", "<mio::"))),
    ("memory: allocation, copies", lambda n: n.split("'")[0] in ALLOCATION or n.startswith(
        ("__mem", "alloc::", "<alloc::", "__rust_", "_int_", "core::ptr::drop_in_place")) or "RawVec" in n),
    ("system call wrappers (libc)", lambda n: n.split("'")[0] in SYSCALL_WRAPPERS or n.startswith(
        ("__libc_", "__pthread_", "__GI_", "__internal_syscall"))),
    ("the bridge's own code", lambda n: "mcp_bridge_host::" in n),
    ("everything else: std, hashing, hash tables", lambda n: True),
)
ALLOCATION = {"malloc", "free", "realloc", "calloc", "cfree", "malloc_consolidate", "tcache_get", "tcache_put"}
SYSCALL_WRAPPERS = {"send", "sendto", "sendmsg", "recv", "recvfrom", "recvmsg", "read", "write", "writev",
                    "readv", "epoll_wait", "epoll_ctl", "syscall", "close", "fcntl", "ioctl", "clock_gettime",
                    "__clock_gettime", "__send", "__recv", "__write", "__read", "__libc_write", "__libc_read"}


def by_kind(functions):
    """[(instructions, name)] summed by KINDS, in their order."""
    sums = dict((kind, 0) for kind, _ in KINDS)
    for ir, name in functions:
        sums[next(kind for kind, test in KINDS if test(name))] += ir
    return list(sums.items())


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
    """`mcp-bridge serve` with 1 worker from `copy` (see `stage`), with
    `nginx` if given, for one run."""

    def __init__(self, copy, nginx):
        self.port = free_port()
        cmd = [os.path.join(copy, "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{self.port}", "--workers", "1",
               "--max-sessions", "1000", "--base-uri", "/mcp", "--log-level", "warn",
               *(["--nginx", nginx] if nginx else []), "--", os.path.join(copy, "mcp-fixture")]
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


def run_once(transport, tmp, out, args, count, nginx=None):
    """One gateway, `count` round trips per session unmeasured then as many
    measured: with `nginx`, the plain host and that nginx, and returns (round
    trips measured, the nginx worker's counts over the whole run); without,
    the counted host and the plain nginx, and returns (round trips
    measured, the host's counts over the measured ones)."""
    gateway = Gateway(os.path.join(tmp, "plain" if nginx else "counted"), nginx)
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
                if not nginx:
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
    if not nginx:
        if not host_dump:
            raise Failure("no measured window")
        return result["round_trips"], host_dump
    # A worker's counts are written when it exits.
    path = f"{out}/nginx.out.{worker}"
    deadline = time.monotonic() + 60
    while not (os.path.exists(path) and "totals:" in open(path).read()):
        if time.monotonic() > deadline:
            raise Failure(f"the nginx worker {worker} left no counts")
        time.sleep(0.1)
    return result["round_trips"], path


def measure(transport, tmp, out, nginx, args):
    """The host's instructions over the measured round trips (zeroed and
    dumped around them), and the nginx worker's by difference: a run of
    twice as many round trips costs the same apart from them (callgrind
    cannot be told to zero an nginx worker, a forked process)."""
    rts, host_dump = run_once(transport, tmp, out, args, args.count)
    host_ir = totals(host_dump)
    short, short_run = run_once(transport, tmp, out, args, args.count, nginx)
    long, long_run = run_once(transport, tmp, out, args, 2 * args.count, nginx)
    extra = 2 * (long - short)  # the longer run does twice as many, twice
    nginx_ir = totals(long_run) - totals(short_run)
    # Its functions by the difference of the two runs too.
    short_top = dict((name, ir) for ir, name in top_functions(short_run, 100_000))
    nginx_top = sorted(((ir - short_top.get(name, 0), name) for ir, name in top_functions(long_run, 100_000)),
                       reverse=True)[:args.top]
    return {"transport": transport, "sessions": args.sessions, "round_trips": rts,
            "host_instructions": host_ir, "per_round_trip": round(host_ir / rts),
            "nginx_per_round_trip": round(nginx_ir / extra),
            "top": [(ir / rts, name) for ir, name in top_functions(host_dump, args.top)],
            "host_by_kind": [(kind, round(ir / rts)) for kind, ir in
                             by_kind(top_functions(host_dump, 1_000_000))],
            "nginx_top": [(ir / extra, name) for ir, name in nginx_top],
            "nginx_by_part": nginx_parts(short_run, long_run, extra)}


# The parts of an nginx worker, by the file its instructions run in.
NGINX_PARTS = (
    ("nginx itself: HTTP, events, buffers", lambda obj: obj == "nginx"),
    ("libc", lambda obj: obj.startswith("libc")),
    ("the lua module (ngx_http_lua_module)", lambda obj: obj.startswith("ngx_http_lua")),
    ("LuaJIT's interpreter and runtime: the bridge's Lua, resty.core", lambda obj: obj.startswith("libluajit")),
    ("LuaJIT: compiled traces", lambda obj: obj in ("???", "")),
    ("everything else", lambda obj: True),
)


def nginx_parts(short_run, long_run, extra):
    """The nginx worker's instructions per round trip by NGINX_PARTS, by the
    difference of its two runs."""
    short = dict((obj, ir) for ir, obj in top_functions(short_run, 100_000, by_object=True))
    sums = dict((part, 0) for part, _ in NGINX_PARTS)
    for ir, obj in top_functions(long_run, 100_000, by_object=True):
        sums[next(part for part, test in NGINX_PARTS if test(obj))] += ir - short.get(obj, 0)
    return [(part, round(ir / extra)) for part, ir in sums.items()]


def print_breakdown(title, results, key):
    """A table of one row per part of `key` ([(part, instructions)] in
    each result, in the same order), one column per workload."""
    print()
    print(f"| {title} | " + " | ".join(f"{r['transport']} echo" for r in results) + " |")
    print("|---|" + "--:|" * len(results))
    for i, (part, _) in enumerate(results[0][key]):
        print(f"| {part} | " + " | ".join(f"{r[key][i][1]:,}" for r in results) + " |")


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
    print_breakdown("the host's instructions per round trip, by kind", results, "host_by_kind")
    print_breakdown("the nginx worker's instructions per round trip, by part", results, "nginx_by_part")
    for r in results:
        for who, key in (("host", "top"), ("nginx worker", "nginx_top")):
            print(f"\n{r['transport']}: the {who}'s own instructions per round trip, by function")
            for ir, name in r[key]:
                print(f"  {ir:8,.0f}  {name[:110]}")
    os.makedirs(os.path.join(ROOT, ".bench"), exist_ok=True)
    with open(os.path.join(ROOT, ".bench", "profile.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except Failure as e:
        print(f"profile: {e}", file=sys.stderr)
        sys.exit(1)
