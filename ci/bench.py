#!/usr/bin/env python3
"""mcp-bridge's benchmark: every gateway side by side, in one run.

The same load client (target/release/mcp-load) drives the same MCP server
(target/release/mcp-fixture) five ways: directly over its stdio (the
baseline, the physical limit), through `mcp-bridge serve` with 1 and with
2 nginx workers, through supergateway (its stdio->SSE mode, its stateful
stdio->Streamable HTTP mode and its stateless one) at the version pinned in
ci/bench/package.json, and through mcp-proxy (its SSE and Streamable HTTP
endpoints) at the version pinned in ci/bench/requirements.txt. Each
transport gets its rows: HTTP+SSE, Streamable HTTP sessions, and stateless
requests of revision 2026-07-28. Every echo row also says how much CPU time
the gateway's own processes spent per round trip (from
/proc/PID/task/TID/schedstat over the measured window). Below the table,
cluster mode's rows: a Streamable HTTP echo posted to the session's own
node, and to another node of the cluster that forwards it (two nodes and a
local redis-server; one line says why not when redis-server or cluster
mode is missing). Prints one Markdown table on stdout, with ratios against the baseline of the same run, and
rewrites docs/benchmarks.md with it (not in --smoke mode). Progress goes to
stderr; raw results to .bench/results.json.

Builds nothing: `make bench` builds first. Installs supergateway with
`npm ci` in ci/bench when it is missing; mcp-proxy is installed by
`ci/deps.sh bench` (into ci/bench/.venv), which `make bench` runs.

Usage: ci/bench.py [--smoke] [--idle-seconds S] [--duration S] [--only NAME]...
  --smoke          tiny counts, a few seconds; leaves docs/benchmarks.md
                   alone and exits 1 if any scenario fails (make test)
  --idle-seconds   how long 1,000 idle sessions are held [30]
  --duration       measured seconds of each echo run [4]
  --only NAME      run only these gateways: direct, bridge1, bridge2,
                   supergateway, mcp-proxy, or the cluster rows: cluster
                   (repeatable); leaves docs/benchmarks.md alone
"""
import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
LOAD = os.path.join(BIN, "mcp-load")
FIXTURE = os.path.join(BIN, "mcp-fixture")
BRIDGE = os.path.join(BIN, "mcp-bridge")
PEERS_DIR = os.path.join(ROOT, "ci", "bench")
SUPERGATEWAY_JS = os.path.join(PEERS_DIR, "node_modules", "supergateway", "dist", "index.js")
PROXY_VENV = os.path.join(PEERS_DIR, ".venv")
PROXY_PINS = os.path.join(PEERS_DIR, "requirements.txt")
OUT_DIR = os.path.join(ROOT, ".bench")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")

# Processes that belong to the backends, not to a gateway: the fixture, and
# the shell supergateway starts it with.
BACKEND_COMMS = {"mcp-fixture", "sh"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = dict(warmup=1.0, duration=4.0, size_warmup=0.5, size_duration=3.0, setup_warmup=20, setup=200,
            teardown=100, idle_sessions=1000, idle_seconds=30.0)
SMOKE = dict(warmup=0.05, duration=0.1, size_warmup=0.05, size_duration=0.1, setup_warmup=2, setup=3,
             teardown=3, idle_sessions=20, idle_seconds=0.5, smoke=True)

SIZES = [("1 KiB", 1024), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024)]
TRANSPORTS = ("sse", "streamable", "stateless")

# Direct stdio has no transport: its figures for the Streamable HTTP and
# stateless rows are those of the same scenario in the SSE rows.
BASELINE = {"streamable setup": "setup", "streamable teardown": "teardown", "streamable echo1": "echo1",
            "streamable echo16": "echo16", "streamable echo64": "echo64", "stateless echo1": "echo1",
            "stateless echo16": "echo16"}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- processes --------------------------------------------------------------

def read_stat(pid):
    """(comm, state, ppid, cpu ticks, starttime) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return comm, fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def process_tree(root):
    """{pid: stat} of root and all its descendants."""
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(int(name))
            if st:
                stats[int(name)] = st
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(p for p, st in stats.items() if st[2] == pid)
    return tree


def alive(pid, starttime):
    """A zombie counts as gone: its parent reaps it when it likes (PID 1
    here reaps orphans lazily)."""
    st = read_stat(pid)
    return st is not None and st[4] == starttime and st[1] not in "ZX"


def wait_gone(procs, seconds):
    """Waits (on pidfds, no polling loop) until every (pid, starttime) is
    gone. Returns those still alive."""
    deadline = time.monotonic() + seconds
    left = []
    for pid, starttime in procs:
        if not alive(pid, starttime):
            continue
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if alive(pid, starttime):
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll(max(0, int((deadline - time.monotonic()) * 1000)))
            if alive(pid, starttime):
                left.append(pid)
        finally:
            os.close(fd)
    return left


def describe(pids):
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "?"
        out.append(f"{pid} {cmd}")
    return "; ".join(out)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_by_comm(procs):
    """{comm: summed Pss in KiB} of {pid: stat}."""
    out = {}
    for pid, st in procs.items():
        out[st[0]] = out.get(st[0], 0) + pss_kib(pid)
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_line(proc, seconds, what):
    """One line of a child's stdout within `seconds`."""
    buf = b""
    deadline = time.monotonic() + seconds
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise Failure(f"{what}: nothing within {seconds:.0f} s")
        chunk = os.read(fd, 1)
        if not chunk:
            raise Failure(f"{what}: output ended")
        buf += chunk
    return buf.decode(errors="replace")


def tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def task_times(pids):
    """{(pid, tid): (comm, ns on a CPU, clock ticks in user mode, in the
    kernel)} of every thread of `pids` ({pid: comm}): the first field of
    /proc/PID/task/TID/schedstat, and fields 14 and 15 of its stat."""
    out = {}
    for pid, comm in pids.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns = int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    # The name in parentheses may hold spaces: count after it.
                    fields = f.read().rsplit(")", 1)[1].split()
                out[(pid, tid)] = (comm, ns, int(fields[11]), int(fields[12]))
            except (OSError, ValueError, IndexError):
                pass
    return out


# Fewer clock ticks than this over a window divide its CPU time too coarsely
# between user mode and the kernel to be shown.
MIN_TICKS = 20


class CpuMeter:
    """The CPU time the gateway's own processes (every thread) spend over
    mcp-load's measured window, which mcp-load announces with phase lines:
    `warmup` (its sessions are open: the processes are listed), `window`
    (first reading; processes started since are added) and `end`."""

    def __init__(self, gw):
        self.gw = gw
        self.pids = {}
        self.start = self.end = None

    def phase(self, name):
        if name == "warmup":
            self.pids = {pid: st[0] for pid, st in self.gw.processes().items()}
        elif name == "window":
            self.start = task_times(self.pids)
            later = {pid: st[0] for pid, st in self.gw.processes().items() if pid not in self.pids}
            self.pids.update(later)
            self.start.update(task_times(later))
        elif name == "end":
            self.end = task_times(self.pids)

    def result(self, round_trips):
        """What goes into the scenario's result: CPU µs per round trip, in
        all, by process name, and the part spent in the kernel."""
        if not self.pids or self.start is None or self.end is None or not round_trips:
            return {}
        by_comm = {}
        user = kernel = 0
        for key, (comm, ns, utime, stime) in self.end.items():
            # A thread started within the window counts whole; one that
            # ended within it is lost (threads of these gateways live long).
            _, ns0, utime0, stime0 = self.start.get(key, (comm, 0, 0, 0))
            by_comm[comm] = by_comm.get(comm, 0) + max(0, ns - ns0)
            user += max(0, utime - utime0)
            kernel += max(0, stime - stime0)
        total = sum(by_comm.values())
        res = {
            "gateway_cpu_us": round(total / 1000, 1),
            "gateway_cpu_us_per_round_trip": round(total / 1000 / round_trips, 2),
            "gateway_cpu_us_per_round_trip_by_process": {
                comm: round(ns / 1000 / round_trips, 2) for comm, ns in sorted(by_comm.items())},
        }
        if user + kernel >= MIN_TICKS:
            # Ticks say how the time divides; schedstat says how much it is.
            res["gateway_kernel_us_per_round_trip"] = round(total * kernel / (user + kernel) / 1000 / round_trips, 2)
        return res


class Lines:
    """A child's stdout, line by line, each within a deadline."""

    def __init__(self, proc, what):
        self.fd = proc.stdout.fileno()
        self.what = what
        self.buf = b""
        self.eof = False

    def next(self, deadline):
        """The next line, or None at the end of the output."""
        while b"\n" not in self.buf:
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode(errors="replace")
                return None
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise Failure(f"{self.what}: no output in time")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                self.eof = True
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


# ---- gateways ---------------------------------------------------------------

class Gateway:
    key = ""
    name = ""
    # scenario key or transport -> why this gateway cannot do it (shown
    # instead of a number)
    cannot = {}
    # (mode, transports): what one start of the gateway serves; the idle
    # scenario runs on a start of the mode that serves SSE
    launches = [("all", TRANSPORTS)]
    # the same in a smoke run, where fewer starts save time
    smoke_launches = None
    # the cell of the row "teardown after an abort" (Streamable HTTP)
    abort = ""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.pid_dir = None
        self.log_path = os.path.join(run_dir, f"{self.key}.log")
        self.proc = None
        self.seen = {}  # pid -> starttime of every gateway process observed

    def why_not(self, key, transport):
        return self.cannot.get(key) or self.cannot.get(transport)

    def new_pid_dir(self):
        """A fresh directory for the backends' records, for each start."""
        self.pid_dir = tempfile.mkdtemp(prefix=f"pids-{self.key}-", dir=self.run_dir)
        # Workers run as nobody when the bench runs as root: backends must
        # be able to write their records.
        os.chmod(self.pid_dir, 0o1777)

    def start(self, mode):
        pass

    def target(self, transport):
        raise NotImplementedError

    def processes(self):
        """{pid: stat} of the gateway's own processes (backends excluded)."""
        if not self.proc:
            return {}
        procs = {pid: st for pid, st in process_tree(self.proc.pid).items() if st[0] not in BACKEND_COMMS}
        self.seen.update((pid, st[4]) for pid, st in procs.items())
        return procs

    def wait_listening(self, port, what):
        """Waits until `port` accepts connections (or the process exits)."""
        deadline, step = time.monotonic() + 20, 0.01
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"{what} exited with {self.proc.returncode}; log: {tail(self.log_path)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure(f"{what} did not listen within 20 s; log: {tail(self.log_path)}")
            time.sleep(step)
            step = min(step * 2, 0.05)

    def stop(self):
        """Stops the gateway; returns what was left running."""
        if self.proc:
            self.processes()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return [f"{self.name} did not stop within 30 s after SIGTERM"]
        problems = []
        left = wait_gone(list(self.seen.items()), 10)
        if left:
            problems.append(f"gateway processes left: {describe(left)}")
        left = wait_gone(sorted(backend_records(self.pid_dir)), 10)
        if left:
            problems.append(f"backends left: {describe(left)}")
        shutil.rmtree(self.pid_dir, ignore_errors=True)
        if self.proc and self.proc.stdin:
            self.proc.stdin.close()
        self.proc, self.seen = None, {}
        return problems


class Direct(Gateway):
    key = "direct"
    name = "direct stdio"
    cannot = {"idle": "— (no gateway)"}
    # One run serves every transport's rows (see BASELINE).
    launches = [("all", ("sse",))]
    abort = "— (no HTTP)"

    def target(self, transport):
        return ["--stdio", "--", FIXTURE, "--pid-dir", self.pid_dir]


class Bridge(Gateway):
    abort = "n/a: a session outlives its connections: it ends on DELETE or session_idle_timeout_ms (30 min)"

    def __init__(self, run_dir, workers, max_sessions):
        self.workers = workers
        self.key = f"bridge{workers}"
        self.name = f"mcp-bridge, {workers} worker{'s' if workers > 1 else ''}"
        self.max_sessions = max_sessions
        super().__init__(run_dir)

    def start(self, mode):
        self.port = free_port()
        cmd = [BRIDGE, "serve", "--listen", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
               "--max-sessions", str(self.max_sessions), "--base-uri", "/mcp", "--log-level", "warn",
               "--", FIXTURE, "--pid-dir", self.pid_dir]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL)
        try:
            while "SSE endpoint" not in read_line(self.proc, 20, "mcp-bridge serve"):
                pass
        except Failure as e:
            raise Failure(f"{e}; log: {tail(self.log_path)}")

    def target(self, transport):
        if transport == "sse":
            return ["--sse", f"http://127.0.0.1:{self.port}/mcp/sse"]
        return [f"--{transport}", f"http://127.0.0.1:{self.port}/mcp"]


def supergateway_version():
    try:
        with open(os.path.join(PEERS_DIR, "node_modules", "supergateway", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None


def pinned_supergateway():
    with open(os.path.join(PEERS_DIR, "package.json")) as f:
        return json.load(f)["dependencies"]["supergateway"]


def node_version():
    node = shutil.which("node")
    if not node:
        return None
    try:
        return subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def install_supergateway():
    """Returns None when supergateway is ready, else why not."""
    if supergateway_version() != pinned_supergateway():
        npm = shutil.which("npm")
        if not npm:
            return "not installed: npm not found (`bash ci/deps.sh bench` installs it)"
        log(f"installing supergateway {pinned_supergateway()} (npm ci in ci/bench)")
        r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEERS_DIR,
                           capture_output=True, text=True)
        if r.returncode != 0:
            return f"not installed: npm ci failed: {' '.join(r.stderr.split())[:200]}"
    version = node_version()
    if not version:
        return "not installed: node not found"
    major = version.lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < 20:
        # supergateway declares "engines": {"node": ">=20"}; Debian 12's
        # nodejs is 18.
        return f"not run: supergateway needs node 20 or newer, found {version}"
    return None


class Supergateway(Gateway):
    key = "supergateway"
    cannot = {"teardown": "n/a: one shared backend"}
    # Its three modes are three ways of starting it.
    launches = [("sse", ("sse",)), ("streamable", ("streamable",)), ("stateless", ("stateless",))]
    # Its stateful mode answers 2026-07-28 requests with the same code as
    # its stateless mode (a backend per request): the smoke run, which
    # reports no figures, starts it once for both.
    smoke_launches = [("sse", ("sse",)), ("streamable", ("streamable", "stateless"))]
    abort = "n/a: a session outlives its connections: it ends on DELETE or --sessionTimeout (30 min)"
    MODES = {"sse": [], "streamable": ["--outputTransport", "streamableHttp", "--stateful"],
             "stateless": ["--outputTransport", "streamableHttp"]}

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.name = f"supergateway {supergateway_version() or pinned_supergateway()}"

    def start(self, mode):
        self.port = free_port()
        backend = shlex.join([FIXTURE, "--pid-dir", self.pid_dir])
        # Its per-message logging is off (--logLevel none), as a production
        # setup would have it. It exits when its stdin closes: keep a pipe.
        cmd = [shutil.which("node") or "node", SUPERGATEWAY_JS, "--stdio", backend, "--port", str(self.port),
               "--logLevel", "none"] + self.MODES[mode]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=logf)
        self.wait_listening(self.port, "supergateway")

    def target(self, transport):
        if transport == "sse":
            return ["--sse", f"http://127.0.0.1:{self.port}/sse"]
        return [f"--{transport}", f"http://127.0.0.1:{self.port}/mcp"]


def pinned_proxy():
    with open(PROXY_PINS) as f:
        for line in f:
            name, _, version = line.split("#")[0].strip().partition("==")
            if name.strip().lower() == "mcp-proxy":
                return version.strip()
    return "?"


def proxy_version():
    """The installed mcp-proxy's version, if its venv was made from the
    pins (ci/deps.sh bench writes their hash beside it)."""
    try:
        with open(os.path.join(PROXY_VENV, ".requirements.sha256")) as f:
            stamp = f.read().strip()
        with open(PROXY_PINS, "rb") as f:
            if stamp != hashlib.sha256(f.read()).hexdigest():
                return None
    except OSError:
        return None
    found = glob.glob(os.path.join(PROXY_VENV, "lib", "python*", "site-packages", "mcp_proxy-*.dist-info"))
    if not found or not os.access(os.path.join(PROXY_VENV, "bin", "mcp-proxy"), os.X_OK):
        return None
    return os.path.basename(found[0])[len("mcp_proxy-"):-len(".dist-info")]


class McpProxy(Gateway):
    key = "mcp-proxy"
    # One backend for every session, started with the proxy. Its --stateless
    # mode is of the 2025 revisions (sessions without an id): a 2026-07-28
    # request gets 400 "Unsupported protocol version".
    cannot = {"teardown": "n/a: one shared backend", "streamable teardown": "n/a: one shared backend",
              "stateless": "n/a: no 2026-07-28 (400 Unsupported protocol version)"}
    launches = [("all", ("sse", "streamable"))]
    abort = "n/a: one shared backend"

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.name = f"mcp-proxy {proxy_version() or pinned_proxy()}"

    def start(self, mode):
        self.port = free_port()
        # WARNING: no line per request (uvicorn's access log is INFO).
        cmd = [os.path.join(PROXY_VENV, "bin", "mcp-proxy"), "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "WARNING", "--", FIXTURE, "--pid-dir", self.pid_dir]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        self.wait_listening(self.port, "mcp-proxy")

    def target(self, transport):
        if transport == "sse":
            return ["--sse", f"http://127.0.0.1:{self.port}/sse"]
        return [f"--{transport}", f"http://127.0.0.1:{self.port}/mcp"]


# ---- scenarios --------------------------------------------------------------

def run_load(gw, transport, scenario, args, seconds, on_phase=None):
    """Runs mcp-load against `gw` over `transport`; its phase lines go to
    `on_phase`. Returns its result."""
    cmd = [LOAD, scenario, "--label", gw.key] + args + gw.target(transport)
    deadline = time.monotonic() + seconds
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        last = None
        try:
            lines = Lines(proc, f"mcp-load {scenario}")
            while (line := lines.next(deadline)) is not None:
                if not line.strip():
                    continue
                last = line
                if on_phase and line.startswith('{"phase"'):
                    on_phase(json.loads(line)["phase"])
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except (Failure, subprocess.TimeoutExpired):
            raise Failure(f"mcp-load {scenario} did not finish within {seconds:.0f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    try:
        result = json.loads(last)
    except (TypeError, ValueError):
        raise Failure(f"mcp-load {scenario} exited with {proc.returncode}: {' '.join(stderr.split())[:300]}")
    if proc.returncode != 0:
        raise Failure("; ".join(result.get("error_samples") or [f"exit status {proc.returncode}"])[:300])
    return result


def backend_records(pid_dir):
    """{(pid, starttime)} of every backend that recorded its start."""
    out = set()
    for name in os.listdir(pid_dir):
        if name.endswith(".pid"):
            try:
                with open(os.path.join(pid_dir, name)) as f:
                    rec = json.load(f)
                out.add((rec["pid"], rec["starttime"]))
            except (OSError, ValueError, KeyError):
                pass
    return out


def run_idle(gw, plan):
    # Runs on a gateway of its own (see run_gateway), after a few sessions
    # that start what starts on first use (mcp-bridge's hosts): the memory
    # it measures then holds no garbage of earlier scenarios.
    run_load(gw, "sse", "setup", ["--count", "16"], 120)
    earlier = backend_records(gw.pid_dir)
    before = gw.processes()
    pss0 = pss_by_comm(before)
    rss0 = sum(rss_kib(p) for p in before)
    n = plan["idle_sessions"]
    cmd = [LOAD, "idle", "--label", gw.key, "--sessions", str(n), "--concurrency", "64"] + gw.target("sse")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = json.loads(read_line(proc, 300, "mcp-load idle"))
        if ready.get("sessions") != n:
            raise Failure(f"only {ready.get('sessions')} of {n} sessions opened")
        procs = gw.processes()
        cpu0, t0 = sum(st[3] for st in procs.values()), time.monotonic()
        # Memory has no event to wait for: sample it once a second. A
        # garbage-collected heap (node) shrinks when a collection happens
        # to run, so the peak is the figure that does not depend on luck.
        end, peak = t0 + plan["idle_seconds"], {}
        while True:
            time.sleep(max(0.0, min(1.0, end - time.monotonic())))
            pss1 = pss_by_comm(gw.processes())
            if sum(pss1.values()) > sum(peak.values()):
                peak = pss1
            if time.monotonic() >= end:
                break
        procs = gw.processes()
        cpu1, t1 = sum(st[3] for st in procs.values()), time.monotonic()
        rss1 = sum(rss_kib(p) for p in procs)
        proc.stdin.write(b"\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=300)
    except Failure as e:
        proc.kill()
        _, err = proc.communicate()
        raise Failure(f"{e}: {' '.join(err.decode(errors='replace').split())[:300]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(out.decode().strip().splitlines()[-1])
    if proc.returncode != 0:
        raise Failure("; ".join(result.get("error_samples") or [f"exit status {proc.returncode}"])[:300])
    # The scenarios after this one must not share the machine with the
    # teardown of a thousand backends.
    left = wait_gone(sorted(backend_records(gw.pid_dir) - earlier), 60)
    if left:
        raise Failure(f"{len(left)} idle backends still running 60 s after their sessions closed")
    result.update({
        "gateway_processes": len(procs),
        "gateway_cpu_s": round((cpu1 - cpu0) / CLK_TCK, 3),
        "measured_s": round(t1 - t0, 3),
        "pss_per_session_kib": round((sum(peak.values()) - sum(pss0.values())) / n, 1),
        "pss_per_session_kib_by_process": {c: round((peak[c] - pss0.get(c, 0)) / n, 1) for c in peak},
        "pss_per_session_kib_at_end": round((sum(pss1.values()) - sum(pss0.values())) / n, 1),
        "rss_per_session_kib_at_end": round((rss1 - rss0) / n, 1),
        "pss_total_kib": sum(peak.values()),
    })
    return result


def scenarios(plan):
    """(key, transport, runner) in the order they run."""
    def echo(transport, sessions, size, warmup, duration):
        args = ["--sessions", str(sessions), "--size", str(size), "--warmup", str(warmup),
                "--duration", str(duration)]

        def run(gw):
            meter = CpuMeter(gw)
            result = run_load(gw, transport, "echo", args, warmup + duration + 120, meter.phase)
            result.update(meter.result(result.get("round_trips")))
            return result
        return run

    def setup(transport):
        def run(gw):
            # Unmeasured first: what starts on first use (hosts, JIT) is not
            # what a session's setup costs.
            run_load(gw, transport, "setup", ["--count", str(plan["setup_warmup"])], 120)
            return run_load(gw, transport, "setup", ["--count", str(plan["setup"])], 300)
        return run

    def teardown(transport):
        return lambda gw: run_load(gw, transport, "teardown",
                                   ["--count", str(plan["teardown"]), "--pid-dir", gw.pid_dir], 300)

    w, d = plan["warmup"], plan["duration"]
    out = [("setup", "sse", setup("sse")),
           ("teardown", "sse", teardown("sse")),
           ("echo1", "sse", echo("sse", 1, 32, w, d)),
           ("echo16", "sse", echo("sse", 16, 32, w, d)),
           ("echo64", "sse", echo("sse", 64, 32, w, d))]
    for label, size in SIZES:
        out.append((f"size {label}", "sse", echo("sse", 1, size, plan["size_warmup"], plan["size_duration"])))
    out += [("streamable setup", "streamable", setup("streamable")),
            ("streamable teardown", "streamable", teardown("streamable")),
            ("streamable echo1", "streamable", echo("streamable", 1, 32, w, d)),
            ("streamable echo16", "streamable", echo("streamable", 16, 32, w, d)),
            ("streamable echo64", "streamable", echo("streamable", 64, 32, w, d)),
            ("stateless echo1", "stateless", echo("stateless", 1, 32, w, d)),
            ("stateless echo16", "stateless", echo("stateless", 16, 32, w, d))]
    return out


def run_instance(gw, mode, runs, results):
    """Starts the gateway in `mode`, runs `runs` [(key, transport, runner)]
    on it, stops it."""
    runs = [(key, runner) for key, transport, runner in runs if not gw.why_not(key, transport)]
    if not runs:
        return
    log(f"{gw.name}: starting" + (f" ({mode})" if mode != "all" else ""))
    gw.new_pid_dir()
    try:
        gw.start(mode)
    except Failure as e:
        for key, _ in runs:
            results[key] = f"failed: {e}"
        runs = []
    try:
        for key, runner in runs:
            log(f"{gw.name}: {key}")
            try:
                results[key] = runner(gw)
            except Failure as e:
                log(f"{gw.name}: {key} FAILED: {e}")
                results[key] = f"failed: {e}"
    finally:
        problems = gw.stop()
    for p in problems:
        log(f"{gw.name}: {p}")
        results["left_running"] = "failed: " + p


def run_gateway(gw, plan, results):
    """Runs every scenario on one gateway; results[key] is a dict, or a
    string saying why there is no number. The idle scenario gets a fresh
    gateway of its own: a thousand sessions leave the processes bigger
    than before, which would weigh on every scenario after them (not in a
    smoke run, which measures nothing: there it follows the SSE runs)."""
    runs = scenarios(plan)
    idle = ("idle", "sse", lambda g: run_idle(g, plan))
    for key, transport, _ in runs + [idle]:
        why = gw.why_not(key, transport)
        if why:
            results[key] = why
    results["streamable abort"] = gw.abort
    smoke = plan.get("smoke")
    launches = (smoke and gw.smoke_launches) or gw.launches
    for mode, transports in launches:
        extra = [idle] if smoke and "sse" in transports else []
        run_instance(gw, mode, [r for r in runs if r[1] in transports] + extra, results)
    if not smoke:
        idle_mode = next(mode for mode, transports in launches if "sse" in transports)
        run_instance(gw, idle_mode, [idle], results)


# ---- the table --------------------------------------------------------------

def fmt_us(us):
    if us is None:
        return "?"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 100_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1000:.0f} ms"


def ratio(value, base):
    if not value or not base:
        return ""
    r = value / base
    return f" ({r:.2f}×)" if r < 10 else f" ({r:.0f}×)"


def cell(res, base, get, fmt, with_ratio=True):
    """A table cell: the value (with its ratio to the baseline), or the
    reason there is none."""
    if isinstance(res, str):
        return res.replace("|", "/")[:120]
    if res is None:
        return "—"
    value = get(res)
    if value is None:
        return "—"
    text = fmt(value)
    if with_ratio and isinstance(base, dict) and get(base):
        text += ratio(value, get(base))
    return text


def latency_cell(res, base, field):
    def get(r):
        s = r.get(field)
        return s and s["median"]

    if isinstance(res, str) or res is None or not res.get(field):
        return cell(res, base, get, fmt_us)
    s = res[field]
    text = f"{fmt_us(s['median'])} / {fmt_us(s['p99'])}"
    if isinstance(base, dict) and base.get(field):
        text += ratio(s["median"], base[field]["median"])
    return text


# Short names of the gateways' processes in the CPU cells.
PROCESS_NAMES = {"mcp-bridge-host": "host", "mcp-bridge": "serve"}


def cpu_cell(res):
    if isinstance(res, str) or res is None or res.get("gateway_cpu_us_per_round_trip") is None:
        return cell(res, None, lambda r: None, str)
    parts = [(PROCESS_NAMES.get(comm, comm), us) for comm, us in
             sorted(res["gateway_cpu_us_per_round_trip_by_process"].items(), key=lambda kv: -kv[1])]
    shown = [f"{name} {us:.0f}" if len(parts) > 1 else name for name, us in parts if us >= 0.5]
    kernel = res.get("gateway_kernel_us_per_round_trip")
    in_kernel = f"; in the kernel {kernel:.0f}" if kernel is not None else ""
    return f"{res['gateway_cpu_us_per_round_trip']:.0f} µs ({' + '.join(shown)}{in_kernel})"


def idle_label(results):
    for res in results.values():
        idle = res.get("idle")
        if isinstance(idle, dict):
            return f"idle: {idle['sessions']:,} SSE sessions, {idle['measured_s']:.2g} s"
    return "idle"


def row_specs(results):
    """(scenario, metric, key, kind) of every row. kind: throughput,
    latency (of the field), cpu, endpoint, idle_cpu, idle_mem, client (the
    keys of one transport's echo runs), text."""
    rows = []

    def echo(label, key, many):
        if many:
            rows.append((label, "round trips/s", key, "throughput"))
        rows.append((label, "latency median / p99", key, ("latency", "latency_us")))
        rows.append((label, "gateway CPU per round trip", key, "cpu"))

    echo("SSE echo, 1 session", "echo1", False)
    echo("SSE echo, 16 sessions", "echo16", True)
    echo("SSE echo, 64 sessions", "echo64", True)
    for label, _ in SIZES:
        echo(f"SSE echo {label}, 1 session", f"size {label}", False)
    rows += [("SSE setup: GET → endpoint event", "median / p99", "setup", "endpoint"),
             ("SSE setup: → initialize response", "median / p99", "setup", ("latency", "initialize_us")),
             ("SSE teardown: disconnect → SIGTERM at backend", "median / p99", "teardown",
              ("latency", "sigterm_us")),
             ("SSE teardown: disconnect → backend gone", "median / p99", "teardown", ("latency", "gone_us"))]
    echo("Streamable echo, 1 session", "streamable echo1", False)
    echo("Streamable echo, 16 sessions", "streamable echo16", True)
    echo("Streamable echo, 64 sessions", "streamable echo64", True)
    rows += [("Streamable setup: → initialize response with Mcp-Session-Id", "median / p99", "streamable setup",
              ("latency", "initialize_us")),
             ("Streamable teardown: DELETE → SIGTERM at backend", "median / p99", "streamable teardown",
              ("latency", "sigterm_us")),
             ("Streamable teardown: DELETE → backend gone", "median / p99", "streamable teardown",
              ("latency", "gone_us")),
             ("Streamable teardown: abort (no DELETE) → backend gone", "", "streamable abort", "text")]
    echo("stateless (2026-07-28) echo, 1 client", "stateless echo1", False)
    echo("stateless (2026-07-28) echo, 16 clients", "stateless echo16", True)
    label = idle_label(results)
    rows += [(label, "gateway CPU time", "idle", "idle_cpu"),
             (label, "gateway memory per session (Pss, peak)", "idle", "idle_mem"),
             ("load client CPU, SSE echo, 1 / 16 / 64 sessions", "share of one core", "", ("client", (
                 "echo1", "echo16", "echo64"))),
             ("load client CPU, Streamable echo, 1 / 16 / 64 sessions", "share of one core", "", ("client", (
                 "streamable echo1", "streamable echo16", "streamable echo64"))),
             ("load client CPU, stateless echo, 1 / 16 clients", "share of one core", "", ("client", (
                 "stateless echo1", "stateless echo16")))]
    return rows


def lookup(results, col, key):
    """The result of `key` in column `col` (direct stdio: the run that
    stands for it, see BASELINE)."""
    if col == "direct":
        key = BASELINE.get(key, key)
    return results[col].get(key)


def render(kind, res, base, col, results):
    if kind == "throughput":
        return cell(res, base, lambda x: x["throughput_per_s"], lambda v: f"{v:,.0f}")
    if kind == "cpu":
        return "— (no gateway)" if col == "direct" else cpu_cell(res)
    if kind == "endpoint":
        if isinstance(res, dict) and res.get("target") == "stdio":
            return "n/a: no HTTP"
        return latency_cell(res, None, "endpoint_us")
    if kind == "idle_cpu":
        return cell(res, None, lambda x: x["gateway_cpu_s"], lambda v: f"{v:.2f} s")
    if kind == "idle_mem":
        return cell(res, None, lambda x: x["pss_per_session_kib"], lambda v: f"{v:.0f} KiB")
    if kind == "text":
        return cell(res, None, lambda r: None, str)
    if kind[0] == "latency":
        return latency_cell(res, base, kind[1])
    if kind[0] == "client":
        texts = []
        for key in kind[1]:
            r = lookup(results, col, key)
            if isinstance(r, dict) and r.get("client_cpu_share") is not None:
                texts.append(f"{r['client_cpu_share'] * 100:.0f}%")
            else:
                texts.append("—")
        return " / ".join(texts)
    raise ValueError(kind)


def table(gateways, results):
    cols = [gw.key for gw in gateways]
    rows = []
    for scenario, metric, key, kind in row_specs(results):
        base = lookup(results, "direct", key) if "direct" in results else None
        rows.append([scenario, metric] + [render(kind, lookup(results, c, key), None if c == "direct" else base,
                                                 c, results) for c in cols])
    if any("left_running" in results[c] for c in cols):
        rows.append(["left running after stop", ""] + [results[c].get("left_running", "nothing") for c in cols])

    header = ["scenario", "metric"] + [gw.name for gw in gateways]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * len(cols)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def comparable(kind, res):
    """(value, higher is better) of a row's result, for comparing
    gateways, or None."""
    if not isinstance(res, dict):
        return None
    try:
        if kind == "throughput":
            return res["throughput_per_s"], True
        if kind == "cpu":
            return res["gateway_cpu_us_per_round_trip"], False
        if kind == "endpoint":
            return res["endpoint_us"]["median"], False
        if kind == "idle_cpu":
            return res["gateway_cpu_s"], False
        if kind == "idle_mem":
            return res["pss_per_session_kib"], False
        if isinstance(kind, tuple) and kind[0] == "latency":
            return res[kind[1]]["median"], False
    except (KeyError, TypeError):
        pass
    return None


# Rows of one session, where the CPU per message is mostly waking processes.
ONE_SESSION_KEYS = ("echo1", "streamable echo1", *(f"size {label}" for label, _ in SIZES))
TWO_WORKERS_ONE_SESSION = (
    "likely: nginx spreads connections over its workers, not sessions, so with 2 workers a session's "
    "stream and the connection of its POSTs often sit on different workers, and each message then wakes "
    "both workers from sleep where one worker would wake once; at one session nothing else keeps them "
    "awake, so those wake-ups are most of the cost (see \"in the kernel\").")

# Why mcp-bridge can be behind a peer on a row, where the reason is in how
# the gateways work: (key, kind or None for any) -> explanation.
WHY_BEHIND = {
    ("setup", "endpoint"):
        "the peers run one backend for all sessions and start nothing for a new one; mcp-bridge starts the "
        "session's own backend (fork and exec, through its host) before it sends the endpoint event.",
    ("setup", ("latency", "initialize_us")):
        "the peers pass `initialize` to the one backend they already run; mcp-bridge starts a backend per "
        "session first.",
    ("streamable setup", None):
        "mcp-proxy answers `initialize` itself (its one backend was initialized when it started) and starts "
        "nothing per session; mcp-bridge starts the session's own backend and passes it the `initialize`.",
    ("teardown", ("latency", "gone_us")):
        "likely: right after the SIGTERM, mcp-bridge's host reads /proc once for the session's escaped "
        "descendants (on a thread of its own), which competes with the exiting backend for the cores; "
        "supergateway only signals the group and polls it.",
    ("streamable teardown", ("latency", "gone_us")):
        "likely: right after the SIGTERM, mcp-bridge's host reads /proc once for the session's escaped "
        "descendants (on a thread of its own), which competes with the exiting backend for the cores; "
        "supergateway only signals the group and polls it.",
    ("idle", "idle_cpu"):
        "mcp-bridge writes an SSE keepalive comment every 15 s per session, each a frame from the host to "
        "the nginx worker and a write to the client; supergateway writes none, mcp-proxy writes its own "
        "from one process.",
    ("idle", "idle_mem"):
        "a session in mcp-bridge holds a backend's pipes and buffers in the host and a request in an nginx "
        "worker; in the peers a session is a little state beside one shared backend.",
}


def why_behind(key, kind, behind_ones):
    """Why the bridges in `behind_ones` are behind on the row `key`, if
    that is known."""
    if kind == "cpu" and key in ONE_SESSION_KEYS and all(b.workers == 2 for b in behind_ones):
        return TWO_WORKERS_ONE_SESSION
    return WHY_BEHIND.get((key, kind)) or WHY_BEHIND.get((key, None))


def behind(gateways, results):
    """Rows where an mcp-bridge column is behind a peer's, as lines of text."""
    bridges = [gw for gw in gateways if isinstance(gw, Bridge)]
    peers = [gw for gw in gateways if isinstance(gw, (Supergateway, McpProxy))]
    lines = []
    for scenario, metric, key, kind in row_specs(results):
        found = []
        for b in bridges:
            mine = comparable(kind, results[b.key].get(key))
            if mine is None:
                continue
            for p in peers:
                theirs = comparable(kind, results[p.key].get(key))
                if theirs is not None and (mine[0] < theirs[0] if mine[1] else mine[0] > theirs[0]):
                    found.append((b, p, mine[0], theirs[0]))
        if not found:
            continue
        fmt = {"throughput": lambda v: f"{v:,.0f}/s", "idle_cpu": lambda v: f"{v:.2f} s",
               "idle_mem": lambda v: f"{v:.0f} KiB"}.get(kind if isinstance(kind, str) else "", fmt_us)
        what = "; ".join(f"{b.name} {fmt(m)} against {p.name} {fmt(t)}" for b, p, m, t in found)
        why = (why_behind(key, kind, [b for b, _, _, _ in found])
               or "no reason in how the gateways work is known: see the figures.")
        lines.append(f"**{scenario}** ({metric.split(' /')[0]}): {what}. Why: {why}")
    return lines


def failures(results):
    out = []
    for gw, res in results.items():
        for key, r in res.items():
            if isinstance(r, str) and r.startswith("failed"):
                out.append(f"{gw} {key}: {r}")
    return out


# ---- cluster mode: a forwarded request next to a local one ------------------

class ClusterNode:
    """A node of the cluster rows, as run_load wants a gateway: mcp-load
    opens its sessions on `opened_on`, and (`posted_to`) sends their requests
    to another node, which forwards them."""

    def __init__(self, key, opened_on, posted_to=None):
        self.key = key
        self.opened_on = opened_on
        self.posted_to = posted_to

    def target(self, transport):
        args = [f"--{transport}", f"http://127.0.0.1:{self.opened_on.port}{cluster.BASE_URI}"]
        if self.posted_to:
            args += ["--post-to", f"http://127.0.0.1:{self.posted_to.port}{cluster.BASE_URI}"]
        return args


def run_cluster(plan):
    """Two `serve` nodes sharing a Redis, one Streamable session on the first:
    its echo calls posted to it, then to the second node, which forwards
    them. (Markdown rows, or the line saying why there are none; a failure
    or None)."""
    if not os.access(cluster.REDIS_SERVER, os.X_OK):
        return "Not measured in this run: redis-server is not installed (`apt-get install redis-server`).", None
    if "--cluster" not in (command_output([BRIDGE, "serve", "--help"]) or ""):
        return "Not measured in this run: this mcp-bridge has no cluster mode (`serve --cluster`).", None
    log("cluster: two nodes and Redis, a local and a forwarded echo")
    # Not under run_dir: the nodes' socket paths must stay short.
    workdir = tempfile.mkdtemp(prefix="mcp-bench-cluster-")
    os.chmod(workdir, 0o755)
    redis = cluster.Redis(workdir)
    secret = hashlib.sha256(os.urandom(32)).hexdigest()
    nodes = [cluster.Node(workdir, i + 1, redis.port, 64, secret=secret) for i in range(2)]
    results = {}
    try:
        redis.start()
        for n in nodes:
            n.start()
        timing = ["--warmup", str(plan["warmup"]), "--duration", str(plan["duration"])]
        limit = plan["warmup"] + plan["duration"] + 60
        for key, gw in (("local", ClusterNode("cluster, local", nodes[0])),
                        ("forwarded", ClusterNode("cluster, forwarded", nodes[0], nodes[1]))):
            before = nodes[1].forwarded()
            for sessions in (1, 16):
                results[key, sessions] = run_load(gw, "streamable", "echo", ["--sessions", str(sessions)] + timing,
                                                  limit)
            moved = nodes[1].forwarded() - before
            if (key == "forwarded") != (moved > 0):
                raise Failure(f"the second node forwarded {moved:.0f} requests in the {key} runs")
    except (Failure, cluster.Failed, RuntimeError, OSError) as e:
        return f"Not measured in this run: {e}", f"cluster: {e}"
    finally:
        for n in nodes:
            n.stop()
        redis.stop()
        left = [f"{n.label()}: {n.left() + [(pid, 'backend') for pid in n.backends_left()]}"
                for n in nodes if n.left() or n.backends_left()]
        shutil.rmtree(workdir, ignore_errors=True)
    if left:
        return "Not measured in this run: processes left.", f"cluster: left running: {left}"
    rows = ["| cluster: 2 nodes, Redis, Streamable echo (32 bytes) | 1 session: median / p99 "
            "| 16 sessions: round trips/s | 16 sessions: median / p99 |",
            "|---|--:|--:|--:|"]
    for key, label in (("local", "POSTs to the session's node"),
                       ("forwarded", "POSTs to the other node, forwarded to the session's")):
        one, many = results[key, 1]["latency_us"], results[key, 16]
        rows.append(f"| {label} | {fmt_us(one['median'])} / {fmt_us(one['p99'])} "
                    f"| {many['throughput_per_s']:,.0f} "
                    f"| {fmt_us(many['latency_us']['median'])} / {fmt_us(many['latency_us']['p99'])} |")
    return "\n".join(rows), None


# ---- the machine and the document -------------------------------------------

def command_output(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine(fd_limit):
    info = {"cores": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
        with open("/proc/meminfo") as f:
            kib = next(int(l.split()[1]) for l in f if l.startswith("MemTotal:"))
            info["memory"] = f"{kib / 1024 / 1024:.1f} GiB"
        with open("/etc/os-release") as f:
            info["os"] = next((l.split("=", 1)[1].strip().strip('"') for l in f if l.startswith("PRETTY_NAME=")),
                              "?")
    except (OSError, StopIteration):
        pass
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    info["nginx"] = (command_output([nginx, "-v"]) or "?").replace("nginx version: ", "")
    info["node"] = node_version() or "not installed"
    info["supergateway"] = supergateway_version() or "not installed"
    version = proxy_version()
    if version:
        python = command_output([os.path.join(PROXY_VENV, "bin", "python"), "--version"]) or "python ?"
        info["mcp-proxy"] = f"{version} ({python})"
    else:
        info["mcp-proxy"] = "not installed"
    info["mcp-bridge"] = command_output([BRIDGE, "--version"]) or "?"
    commit = command_output(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]) or "?"
    if command_output(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with local changes)"
    info["commit"] = commit
    info["fd_limit"] = fd_limit
    return info


NOTES = """\
How to read it:

- Times are median / p99 of every sample; the ratio in parentheses is the
  median against **direct stdio** of the same run (lower is better for
  times, higher for round trips/s).
- **echo**: `tools/call` of the fixture's `echo` tool with a 32-byte text
  (and 1 KiB, 64 KiB, 1 MiB texts over SSE), each session sending its next
  request when the previous response arrived.
- **SSE** rows use the HTTP+SSE transport (2024-11-05): a round trip is a
  POST (until its `202`) and the response event on the session's stream.
- **Streamable** rows use Streamable HTTP sessions: `initialize` (asking
  for 2025-11-25) is answered with an `Mcp-Session-Id`, which every later
  request carries with the revision `initialize` agreed on in
  `MCP-Protocol-Version`. A round trip is one POST on the session's
  keep-alive connection, answered with the response as JSON (mcp-bridge,
  mcp-proxy) or as an event stream (supergateway): it ends when the JSON
  body is whole, or when the response's event is read (the next request
  still waits for the stream's end). No GET stream is opened.
- **stateless** rows send requests of revision 2026-07-28: no session, each
  a POST whose `params._meta` carries the revision and the client's
  capabilities, with the headers `MCP-Protocol-Version`, `Mcp-Method` and
  `Mcp-Name`; "16 clients" are 16 connections in a closed loop each.
  mcp-bridge runs them on its pool of warm backends (default options: up to
  4 per route and consumer in each worker, started when needed and kept);
  supergateway (its stateless mode) starts a backend per request, and asks
  it `tools/list` before each `tools/call` (to check `Mcp-Param-*` headers).
- **direct stdio** is the load client writing to the fixture's stdin and
  reading its stdout, one fixture per session: the physical limit. It has
  no transport: its figures in the Streamable and stateless rows are those
  of the same scenario in the SSE rows.
- **gateway CPU per round trip**: the CPU time of the gateway's own
  processes over the measured window (every thread's time on a CPU, the
  first field of `/proc/PID/task/TID/schedstat`, at the window's start and
  end) divided by the round trips in it; in parentheses by process: nginx
  (the workers; the master does nothing meanwhile), `host`
  (`mcp-bridge-host`), `serve` (`mcp-bridge serve`, when it shows);
  supergateway's `node`; `mcp-proxy` (its Python process). Backends are
  never counted. On a loaded machine this stays meaningful where latency
  does not: it is work done, not time waited. **In the kernel** is the part
  of it spent in system calls and the network stack on the gateway's
  behalf (the window's clock ticks, fields 14 and 15 of
  `/proc/PID/task/TID/stat`, divide it between user mode and the kernel;
  shown when at least 20 ticks fell in the window). It is the cost of the
  hops themselves, which no change to the gateway's own code cuts: only
  fewer hops or fewer system calls per hop do.
- **setup** starts a fresh session each time. SSE: connect, `GET …/sse`,
  the `endpoint` event, `initialize`. Streamable: connect, POST
  `initialize` until its response with the session's id (then, unmeasured,
  `notifications/initialized` and `DELETE`). Direct stdio: spawn, then
  `initialize`. mcp-bridge, and supergateway in its Streamable (stateful)
  mode, start a backend per session in that time; supergateway's SSE mode
  registers the session with the backend it already runs; mcp-proxy
  answers `initialize` itself (its one backend was initialized when it
  started).
- **teardown**: from the client's disconnect (SSE: shutdown of the stream's
  socket; Streamable: sending `DELETE`) until the backend's SIGTERM handler
  ran (the fixture writes the time to `<pid>.term`), and until the backend
  is gone (its pidfd becomes readable). Direct stdio: the client sends
  SIGTERM itself and closes the pipe. A Streamable session is not tied to
  a connection: a client that goes away without `DELETE` leaves it to its
  idle timeout, so the abort row has no figure.
- **idle**: CPU time used by the gateway's own processes (nginx master and
  workers, `mcp-bridge-host`, the `mcp-bridge` supervisor; supergateway's
  node process; mcp-proxy's; never the backends) while SSE sessions stay
  open and silent, and the growth of their summed proportional set size
  (Pss, from `/proc/PID/smaps_rollup`) divided by the number of sessions.
  mcp-bridge and mcp-proxy write an SSE keepalive comment every 15 s per
  session (the count is below); supergateway writes none.
- **load client CPU**: the load client (`mcp-load`, one thread) measures
  its own CPU time (`getrusage`) over the measured window; well under
  100% means it was not the bottleneck.
- supergateway runs in three modes, one per transport: stdio→SSE (one
  backend for all sessions), stateful stdio→Streamable HTTP (a backend per
  session) and stateless (a backend per request). In its SSE mode it sends
  every backend message to **every** open session (responses are not
  routed by session), so with 16 or 64 sessions each client also receives
  the other sessions' responses (the load client ignores responses to ids
  it did not send). Its `--logLevel` is `none`.
- mcp-proxy serves SSE and Streamable HTTP from one process with one
  backend for all sessions (it is an MCP server of the Python SDK in front
  of an MCP client of that backend); its `--log-level` is `WARNING`.
- Memory is sampled every second of the idle hold; the table shows the
  peak. A garbage-collected runtime (node, Python) drops what opening the
  sessions left behind only when a collection runs: its figure at the end
  of the hold (below) depends on whether one did.
- The run raises its soft limit of open files to the hard limit, for every
  process it starts. mcp-bridge needs about 4 descriptors per session in
  `mcp-bridge-host` and 2 in an nginx worker: under Debian's default soft
  limit of 1,024 a host refuses sessions beyond about 250 (`502`, "Too
  many open files"), whatever `--max-sessions` says.
"""


def run_notes(gateways, results):
    """Figures of this run that explain the table."""
    notes = []
    for gw in gateways:
        res = results[gw.key]
        for key in ("echo16", "echo64", "streamable echo16", "streamable echo64"):
            r = res.get(key)
            if isinstance(r, dict) and r.get("foreign_messages"):
                notes.append(f"{gw.name}, {key.replace('echo', 'echo, ')} sessions: the clients received "
                             f"{r['foreign_messages']:,} responses meant for other sessions.")
        idle = res.get("idle")
        if isinstance(idle, dict):
            parts = ", ".join(f"{kib:.0f} KiB in {comm}" for comm, kib in sorted(
                idle["pss_per_session_kib_by_process"].items(), key=lambda kv: -kv[1]) if abs(kib) >= 0.5)
            notes.append(f"{gw.name}, idle memory per session: {parts} at the peak; "
                         f"{idle['pss_per_session_kib_at_end']:.0f} KiB at the end of the hold; "
                         f"{idle['keepalives']:,} keepalive comments reached the clients.")
    return notes


def run_profile():
    """The host's instructions per round trip (ci/profile.py, under
    callgrind): its table, or why there is none."""
    if not shutil.which("valgrind"):
        return "Not measured in this run: valgrind is not installed (`apt-get install valgrind`)."
    log("make profile: the host under callgrind")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "ci", "profile.py")], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        return f"Not measured in this run: ci/profile.py failed: {' '.join(r.stderr.split())[:300]}"
    # Its tables come first, one blank line apart; the lists of functions follow.
    tables = []
    for line in r.stdout.splitlines():
        if not line.startswith("|") and line.strip():
            break
        tables.append(line)
    return "\n".join(tables).strip()


def write_doc(table_text, info, plan, gateways, results, duration_s, profile_text, cluster_text):
    notes = run_notes(gateways, results)
    behind_lines = behind(gateways, results)
    if behind_lines:
        behind_text = ("Where mcp-bridge is behind a peer in this run (by the median, or round trips/s; "
                       "either column of mcp-bridge against either peer):\n\n"
                       + "".join(f"- {line}\n" for line in behind_lines))
    else:
        behind_text = "In this run mcp-bridge is ahead of every peer on every row that both have.\n"
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in [
        ("CPU", f"{info.get('cpu', '?')}, {info['cores']} cores"),
        ("memory", info.get("memory", "?")),
        ("OS", f"{info.get('os', '?')}, kernel {info['kernel']}"),
        ("nginx", info["nginx"]),
        ("node", info["node"]),
        ("supergateway", info["supergateway"]),
        ("mcp-proxy", info["mcp-proxy"]),
        ("mcp-bridge", f"{info['mcp-bridge']}, commit {info['commit']}"),
        ("open files limit of the run", info["fd_limit"]),
    ])
    doc = f"""# Benchmarks

Written by `make bench` (`ci/bench.py`) on {datetime.date.today().isoformat()}; do not edit by hand.
The run took {duration_s / 60:.1f} minutes. One run measures every column on the same machine, so
the columns compare; the absolute numbers depend on the machine, and on anything else it was doing.

{table_text}

{NOTES}{"".join(f"- {n}{chr(10)}" for n in notes)}
## Cluster mode: a forwarded request

{cluster_text}

Two `mcp-bridge serve` nodes (2 workers each) in one cluster (`--cluster`, a local redis-server).
`mcp-load echo` opens its Streamable HTTP sessions on the first node and posts their `echo` calls
there (local), or, with `--post-to`, to the second node, which forwards each to the first. The
difference between the rows is what forwarding costs: one more HTTP hop, through a second nginx
worker, on the same cores.

## Instructions per round trip

{profile_text}

Written by `make profile` (`ci/profile.py`) in the same run: `mcp-bridge serve` with 1 worker and
`mcp-load steps` on 16 sessions (clients), with the host program, then nginx, run under
`valgrind --tool=callgrind` (one at a time, so the one counted is the slowest of its run every
time). The host's figure counts what it executes for 200 echo round trips per session after 200
unmeasured ones, divided by the round trips; the nginx worker's is the difference between a run of
200 + 200 and one of 400 + 400 round trips per session, divided by the difference in round trips.
Unlike the CPU times above, these figures do not move with machine noise or with what else runs,
so they are the ones to compare from one change to the next; `make profile` also lists the
functions that cost most. They count instructions in the processes' own code and libraries
(LuaJIT's included), not the kernel's work for their system calls, which is much of their CPU
time per round trip above ("in the kernel").

The second table sorts the host's instructions by what they are for, by the names of the
functions that execute them: checking JSON (the one validating pass of `scan.rs` over each
message, and serde_json where the bridge builds or parses trees), tokio's tasks, wakers and I/O
readiness, memory allocation and copies, libc's wrappers of system calls, the bridge's own code,
and the rest (the standard library, hashing, hash tables). The third sorts the nginx worker's by
the file they run in: nginx itself (parsing requests, its event loop, buffers and writing
responses: what any gateway on nginx spends), libc, the lua module, and LuaJIT (the bridge's Lua
code and OpenResty's resty.core, interpreted, with LuaJIT's runtime; and the traces it compiled).

## Where mcp-bridge is behind

{behind_text}
## Machine

{machine_lines}

## Reproduce

```sh
make bench                                # builds, then python3 ci/bench.py
python3 ci/bench.py --idle-seconds 10     # shorter idle phase
python3 ci/bench.py --only direct --only bridge1
make profile                              # instructions per round trip, by function
target/release/mcp-load --help            # the load client on its own
```

`make bench` installs supergateway {pinned_supergateway()} with `npm ci` in `ci/bench/` when it is
missing (it needs node 20 or newer), and `ci/deps.sh bench` installs mcp-proxy {pinned_proxy()}
with the packages it needs, pinned in `ci/bench/requirements.txt`, into `ci/bench/.venv`. Echo runs
warm up for {plan['warmup']:g} s and measure {plan['duration']:g} s ({plan['size_warmup']:g} s and
{plan['size_duration']:g} s for the message sizes); setup runs {plan['setup']} sessions (after
{plan['setup_warmup']} unmeasured) and teardown {plan['teardown']}, one after the other; the idle
scenario runs on a gateway started for it. Raw results of the last run are in `.bench/results.json`.
"""
    with open(DOC, "w") as f:
        f.write(doc)


# ---- main -------------------------------------------------------------------

def raise_fd_limit():
    """1,000 sessions need more descriptors than Debian's default soft limit
    of 1,024 (in the load client, the nginx workers and mcp-bridge-host):
    raise ours, which every process started here inherits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        new = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return f"{new} (raised from {soft})"
    return f"{soft}"


GATEWAYS = ["direct", "bridge1", "bridge2", "supergateway", "mcp-proxy"]
# Not a column: rows of their own, below the table.
EXTRAS = ["cluster"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny counts; does not write docs/benchmarks.md")
    ap.add_argument("--idle-seconds", type=float, help="how long the idle sessions are held [30]")
    ap.add_argument("--duration", type=float, help="measured seconds of each echo run [4]")
    ap.add_argument("--only", action="append", choices=GATEWAYS + EXTRAS,
                    help="run only these gateways, or the cluster rows (repeatable)")
    args = ap.parse_args()
    plan = dict(SMOKE if args.smoke else FULL)
    if args.idle_seconds is not None:
        plan["idle_seconds"] = args.idle_seconds
    if args.duration is not None:
        plan["duration"] = args.duration

    for binary in (LOAD, FIXTURE, BRIDGE):
        if not os.access(binary, os.X_OK):
            sys.exit(f"bench: {binary} is missing: run `make bench` (or cargo build --release --workspace)")
    fd_limit = raise_fd_limit()
    os.makedirs(OUT_DIR, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="run-", dir=OUT_DIR)
    os.chmod(run_dir, 0o755)
    started = time.monotonic()

    wanted = set(args.only or GATEWAYS + EXTRAS)
    # Headroom over the most sessions a scenario holds: a Streamable HTTP
    # session's slot is freed a moment after its DELETE is answered (when
    # the host's event reaches the worker), so the next scenario's sessions
    # can arrive while the last one's slots are still held.
    max_sessions = max(plan["idle_sessions"], 64) + 64
    gateways = [Direct(run_dir), Bridge(run_dir, 1, max_sessions), Bridge(run_dir, 2, max_sessions),
                Supergateway(run_dir), McpProxy(run_dir)]
    gateways = [gw for gw in gateways if gw.key in wanted]
    why_not = {}
    if "supergateway" in wanted:
        why_not["supergateway"] = install_supergateway()
    if "mcp-proxy" in wanted and not proxy_version():
        why_not["mcp-proxy"] = "not installed: `bash ci/deps.sh bench` installs it"
    results = {gw.key: {} for gw in gateways}
    for gw in list(gateways):
        if why_not.get(gw.key):
            log(f"{gw.name}: {why_not[gw.key]}")
            if args.smoke:
                # The smoke run checks what is there; a missing peer is no
                # failure of mcp-bridge's.
                gateways.remove(gw)
                del results[gw.key]
                continue
            keys = [key for key, _, _ in scenarios(plan)] + ["idle", "streamable abort"]
            results[gw.key] = {key: why_not[gw.key] for key in keys}
            continue
        run_gateway(gw, plan, results[gw.key])

    text = table(gateways, results) if gateways else ""
    if text:
        print(text + "\n")
    cluster_text, cluster_failure = run_cluster(plan) if "cluster" in wanted else ("", None)
    if cluster_text:
        print(cluster_text)
    duration_s = time.monotonic() - started
    info = machine(fd_limit)
    with open(os.path.join(OUT_DIR, "results.json"), "w") as f:
        json.dump({"plan": plan, "machine": info, "results": results, "seconds": duration_s}, f, indent=1)
    failed = failures(results) + ([cluster_failure] if cluster_failure else [])
    if failed:
        for f in failed:
            log(f"FAILED: {f}")
    elif not args.smoke and not args.only:
        write_doc(text, info, plan, gateways, results, duration_s, run_profile(), cluster_text)
        log(f"wrote {os.path.relpath(DOC, ROOT)}")
    if not args.smoke:
        for line in behind(gateways, results):
            log(f"behind: {line}")
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"done in {duration_s:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
