#!/usr/bin/env python3
"""mcp-bridge's benchmark: every gateway side by side, in one run.

The same load client (target/release/mcp-load) drives the same MCP server
(target/release/mcp-fixture) four ways: directly over its stdio (the
baseline, the physical limit), through `mcp-bridge serve` with 1 and with
2 nginx workers, and through supergateway's stdio->SSE mode at the version
pinned in ci/bench/package.json. Prints one Markdown table on stdout, with
ratios against the baseline of the same run, and rewrites
docs/benchmarks.md with it (not in --smoke mode). Progress goes to stderr;
raw results to .bench/results.json.

Builds nothing: `make bench` builds first. Installs supergateway with
`npm ci` in ci/bench when it is missing.

Usage: ci/bench.py [--smoke] [--idle-seconds S] [--duration S] [--only NAME]...
  --smoke          tiny counts, a few seconds; leaves docs/benchmarks.md
                   alone and exits 1 if any scenario fails (make test)
  --idle-seconds   how long 1,000 idle sessions are held [30]
  --duration       measured seconds of each echo run [4]
  --only NAME      run only these gateways: direct, bridge1, bridge2,
                   supergateway (repeatable); leaves docs/benchmarks.md alone
"""
import argparse
import datetime
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
LOAD = os.path.join(BIN, "mcp-load")
FIXTURE = os.path.join(BIN, "mcp-fixture")
BRIDGE = os.path.join(BIN, "mcp-bridge")
PEERS_DIR = os.path.join(ROOT, "ci", "bench")
SUPERGATEWAY_JS = os.path.join(PEERS_DIR, "node_modules", "supergateway", "dist", "index.js")
OUT_DIR = os.path.join(ROOT, ".bench")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")

# Processes that belong to the backends, not to a gateway: the fixture, and
# the shell supergateway starts it with.
BACKEND_COMMS = {"mcp-fixture", "sh"}
CLK_TCK = os.sysconf("SC_CLK_TCK")

FULL = dict(warmup=1.0, duration=4.0, size_warmup=0.5, size_duration=3.0, setup_warmup=20, setup=200,
            teardown=100, idle_sessions=1000, idle_seconds=30.0)
SMOKE = dict(warmup=0.1, duration=0.3, size_warmup=0.05, size_duration=0.2, setup_warmup=2, setup=3,
             teardown=3, idle_sessions=20, idle_seconds=0.5)

SIZES = [("1 KiB", 1024), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024)]


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


# ---- gateways ---------------------------------------------------------------

class Gateway:
    key = ""
    name = ""
    # scenario -> why this peer cannot do it (shown instead of a number)
    cannot = {}

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.pid_dir = None
        self.log_path = os.path.join(run_dir, f"{self.key}.log")
        self.proc = None
        self.seen = {}  # pid -> starttime of every gateway process observed

    def new_pid_dir(self):
        """A fresh directory for the backends' records, for each start."""
        self.pid_dir = tempfile.mkdtemp(prefix=f"pids-{self.key}-", dir=self.run_dir)
        # Workers run as nobody when the bench runs as root: backends must
        # be able to write their records.
        os.chmod(self.pid_dir, 0o1777)

    def start(self):
        pass

    def target(self):
        raise NotImplementedError

    def processes(self):
        """{pid: stat} of the gateway's own processes (backends excluded)."""
        if not self.proc:
            return {}
        procs = {pid: st for pid, st in process_tree(self.proc.pid).items() if st[0] not in BACKEND_COMMS}
        self.seen.update((pid, st[4]) for pid, st in procs.items())
        return procs

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

    def target(self):
        return ["--stdio", "--", FIXTURE, "--pid-dir", self.pid_dir]


class Bridge(Gateway):
    def __init__(self, run_dir, workers, max_sessions):
        self.workers = workers
        self.key = f"bridge{workers}"
        self.name = f"mcp-bridge, {workers} worker{'s' if workers > 1 else ''}"
        self.max_sessions = max_sessions
        super().__init__(run_dir)

    def start(self):
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

    def target(self):
        return ["--sse", f"http://127.0.0.1:{self.port}/mcp/sse"]


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

    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.name = f"supergateway {supergateway_version() or pinned_supergateway()}"

    def start(self):
        self.port = free_port()
        backend = shlex.join([FIXTURE, "--pid-dir", self.pid_dir])
        # Its per-message logging is off (--logLevel none), as a production
        # setup would have it. It exits when its stdin closes: keep a pipe.
        cmd = [shutil.which("node") or "node", SUPERGATEWAY_JS, "--stdio", backend, "--port", str(self.port),
               "--logLevel", "none"]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=logf, stderr=logf)
        deadline, step = time.monotonic() + 20, 0.01
        while True:
            if self.proc.poll() is not None:
                raise Failure(f"supergateway exited with {self.proc.returncode}; log: {tail(self.log_path)}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failure(f"supergateway did not listen within 20 s; log: {tail(self.log_path)}")
            time.sleep(step)
            step = min(step * 2, 0.5)

    def target(self):
        return ["--sse", f"http://127.0.0.1:{self.port}/sse"]


# ---- scenarios --------------------------------------------------------------

def run_load(gw, scenario, args, seconds):
    cmd = [LOAD, scenario, "--label", gw.key] + args + gw.target()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        raise Failure(f"mcp-load {scenario} did not finish within {seconds:.0f} s")
    lines = r.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise Failure(f"mcp-load {scenario} exited with {r.returncode}: {' '.join(r.stderr.split())[:300]}")
    if r.returncode != 0:
        raise Failure("; ".join(result.get("error_samples") or [f"exit status {r.returncode}"])[:300])
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
    run_load(gw, "setup", ["--count", "16"], 120)
    earlier = backend_records(gw.pid_dir)
    before = gw.processes()
    pss0 = pss_by_comm(before)
    rss0 = sum(rss_kib(p) for p in before)
    n = plan["idle_sessions"]
    cmd = [LOAD, "idle", "--label", gw.key, "--sessions", str(n), "--concurrency", "64"] + gw.target()
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
    """(key, runner) in the order they run."""
    def echo(sessions, size, warmup, duration):
        args = ["--sessions", str(sessions), "--size", str(size), "--warmup", str(warmup),
                "--duration", str(duration)]
        return lambda gw: run_load(gw, "echo", args, warmup + duration + 120)

    def setup(gw):
        # Unmeasured first: what starts on first use (hosts, JIT) is not
        # what a session's setup costs.
        run_load(gw, "setup", ["--count", str(plan["setup_warmup"])], 120)
        return run_load(gw, "setup", ["--count", str(plan["setup"])], 300)

    out = [("setup", setup),
           ("teardown", lambda gw: run_load(
               gw, "teardown", ["--count", str(plan["teardown"]), "--pid-dir", gw.pid_dir], 300)),
           ("echo1", echo(1, 32, plan["warmup"], plan["duration"])),
           ("echo16", echo(16, 32, plan["warmup"], plan["duration"])),
           ("echo64", echo(64, 32, plan["warmup"], plan["duration"]))]
    for label, size in SIZES:
        out.append((f"size {label}", echo(1, size, plan["size_warmup"], plan["size_duration"])))
    return out


def run_instance(gw, runs, results):
    """Starts the gateway, runs `runs` [(key, runner)] on it, stops it."""
    runs = [(key, runner) for key, runner in runs if key not in gw.cannot]
    if not runs:
        return
    log(f"{gw.name}: starting")
    gw.new_pid_dir()
    try:
        gw.start()
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
    than before, which would weigh on every scenario after them."""
    results.update({key: why for key, why in gw.cannot.items()})
    run_instance(gw, scenarios(plan), results)
    run_instance(gw, [("idle", lambda g: run_idle(g, plan))], results)


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
    if with_ratio and not isinstance(base, str) and base is not None and get(base):
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
    if not isinstance(base, str) and base is not None and base.get(field):
        text += ratio(s["median"], base[field]["median"])
    return text


def table(gateways, results):
    cols = [gw.key for gw in gateways]
    base = results.get("direct", {})
    rows = []

    def row(scenario, metric, make):
        rows.append([scenario, metric] + [make(results[c], base if c != "direct" else None) for c in cols])

    def pick(key):
        return lambda get: (lambda res, b: get(res.get(key), b.get(key) if isinstance(b, dict) else b))

    for key, label in [("echo1", "echo, 1 session"), ("echo16", "echo, 16 sessions"),
                       ("echo64", "echo, 64 sessions")]:
        if key != "echo1":
            row(label, "round trips/s", pick(key)(lambda r, b: cell(
                r, b, lambda x: x["throughput_per_s"], lambda v: f"{v:,.0f}")))
        row(label, "latency median / p99", pick(key)(lambda r, b: latency_cell(r, b, "latency_us")))
    for label, _ in SIZES:
        row(f"echo {label}, 1 session", "latency median / p99",
            pick(f"size {label}")(lambda r, b: latency_cell(r, b, "latency_us")))
    row("setup: GET → endpoint event", "median / p99", pick("setup")(
        lambda r, b: "n/a: no HTTP" if r is not None and not isinstance(r, str) and r.get("target") == "stdio"
        else latency_cell(r, None, "endpoint_us")))
    row("setup: → initialize response", "median / p99", pick("setup")(
        lambda r, b: latency_cell(r, b, "initialize_us")))
    row("teardown: disconnect → SIGTERM at backend", "median / p99", pick("teardown")(
        lambda r, b: latency_cell(r, b, "sigterm_us")))
    row("teardown: disconnect → backend gone", "median / p99", pick("teardown")(
        lambda r, b: latency_cell(r, b, "gone_us")))
    idle_label = "idle"
    for res in results.values():
        idle = res.get("idle")
        if isinstance(idle, dict):
            idle_label = f"idle: {idle['sessions']:,} sessions, {idle['measured_s']:.2g} s"
            break
    row(idle_label, "gateway CPU time", pick("idle")(lambda r, b: cell(
        r, None, lambda x: x["gateway_cpu_s"], lambda v: f"{v:.2f} s")))
    row(idle_label, "gateway memory per session (Pss, peak)", pick("idle")(lambda r, b: cell(
        r, None, lambda x: x["pss_per_session_kib"], lambda v: f"{v:.0f} KiB")))
    for key, label in [("echo1", "echo, 1 session"), ("echo16", "echo, 16 sessions"),
                       ("echo64", "echo, 64 sessions")]:
        row(f"load client CPU, {label}", "share of one core", pick(key)(lambda r, b: cell(
            r, None, lambda x: x["client_cpu_share"], lambda v: f"{v * 100:.0f}%")))
    if any("left_running" in results[c] for c in cols):
        row("left running after stop", "", lambda r, b: r.get("left_running", "nothing"))

    header = ["scenario", "metric"] + [gw.name for gw in gateways]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["--:"] * len(cols)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def failures(results):
    out = []
    for gw, res in results.items():
        for key, r in res.items():
            if isinstance(r, str) and r.startswith("failed"):
                out.append(f"{gw} {key}: {r}")
    return out


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
  (and 1 KiB, 64 KiB, 1 MiB texts), each session sending its next request
  when the previous response arrived. Over SSE a round trip is: POST (until
  its `202`) and the response event on the session's stream.
- **direct stdio** is the load client writing to the fixture's stdin and
  reading its stdout, one fixture per session: the physical limit.
- **setup** starts a fresh session each time: connect, `GET …/sse`, the
  `endpoint` event, `initialize`. Direct stdio: spawn, then `initialize`.
  mcp-bridge starts a backend per session in that time; supergateway only
  registers the session with the backend it already runs.
- **teardown**: from the client's disconnect (shutdown of the stream's
  socket) until the backend's SIGTERM handler ran (the fixture writes the
  time to `<pid>.term`), and until the backend is gone (its pidfd becomes
  readable). Direct stdio: the client sends SIGTERM itself and closes the
  pipe. supergateway runs one backend for all sessions and never stops it
  when a client leaves.
- **idle**: CPU time used by the gateway's own processes (nginx master and
  workers, `mcp-bridge-host`, the `mcp-bridge` supervisor; supergateway's
  node process; never the backends) while the sessions stay open and
  silent, and the growth of their summed proportional set size (Pss, from
  `/proc/PID/smaps_rollup`) divided by the number of sessions. mcp-bridge
  writes an SSE keepalive comment every 15 s per session; supergateway
  writes none.
- **load client CPU**: the load client (`mcp-load`, one thread) measures
  its own CPU time (`getrusage`) over the measured window; well under
  100% means it was not the bottleneck.
- supergateway sends every backend message to **every** open session
  (one shared backend; responses are not routed by session), so with 16
  or 64 sessions each client also receives the other sessions' responses
  (the load client ignores responses to ids it did not send). Its
  `--logLevel` is `none`.
- Memory is sampled every second of the idle hold; the table shows the
  peak. A garbage-collected runtime (node) drops what opening the sessions
  left behind only when a collection runs: its figure at the end of the
  hold (below) depends on whether one did.
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
        for key in ("echo16", "echo64"):
            r = res.get(key)
            if isinstance(r, dict) and r.get("foreign_messages"):
                notes.append(f"{gw.name}, {key[4:]} sessions: the clients received "
                             f"{r['foreign_messages']:,} responses meant for other sessions.")
        idle = res.get("idle")
        if isinstance(idle, dict):
            parts = ", ".join(f"{kib:.0f} KiB in {comm}" for comm, kib in sorted(
                idle["pss_per_session_kib_by_process"].items(), key=lambda kv: -kv[1]) if abs(kib) >= 0.5)
            notes.append(f"{gw.name}, idle memory per session: {parts} at the peak; "
                         f"{idle['pss_per_session_kib_at_end']:.0f} KiB at the end of the hold.")
    return notes


def write_doc(table_text, info, plan, gateways, results, duration_s):
    notes = run_notes(gateways, results)
    machine_lines = "\n".join(f"- {k}: {v}" for k, v in [
        ("CPU", f"{info.get('cpu', '?')}, {info['cores']} cores"),
        ("memory", info.get("memory", "?")),
        ("OS", f"{info.get('os', '?')}, kernel {info['kernel']}"),
        ("nginx", info["nginx"]),
        ("node", info["node"]),
        ("supergateway", info["supergateway"]),
        ("mcp-bridge", f"{info['mcp-bridge']}, commit {info['commit']}"),
        ("open files limit of the run", info["fd_limit"]),
    ])
    doc = f"""# Benchmarks

Written by `make bench` (`ci/bench.py`) on {datetime.date.today().isoformat()}; do not edit by hand.
The run took {duration_s / 60:.1f} minutes. One run measures every column on the same machine, so
the columns compare; the absolute numbers depend on the machine, and on anything else it was doing.

{table_text}

{NOTES}{"".join(f"- {n}{chr(10)}" for n in notes)}
## Machine

{machine_lines}

## Reproduce

```sh
make bench                                # builds, then python3 ci/bench.py
python3 ci/bench.py --idle-seconds 10     # shorter idle phase
python3 ci/bench.py --only direct --only bridge1
target/release/mcp-load --help            # the load client on its own
```

`make bench` installs supergateway {pinned_supergateway()} with `npm ci` in `ci/bench/` when it is
missing (it needs node 20 or newer). Echo runs warm up for {plan['warmup']:g} s and measure
{plan['duration']:g} s ({plan['size_warmup']:g} s and {plan['size_duration']:g} s for the message sizes);
setup runs {plan['setup']} sessions (after {plan['setup_warmup']} unmeasured) and teardown
{plan['teardown']}, one after the other; the idle scenario runs on a gateway started for it.
Raw results of the last run are in `.bench/results.json`.
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny counts; does not write docs/benchmarks.md")
    ap.add_argument("--idle-seconds", type=float, help="how long the idle sessions are held [30]")
    ap.add_argument("--duration", type=float, help="measured seconds of each echo run [4]")
    ap.add_argument("--only", action="append", choices=["direct", "bridge1", "bridge2", "supergateway"],
                    help="run only these gateways (repeatable)")
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

    wanted = set(args.only or ["direct", "bridge1", "bridge2", "supergateway"])
    max_sessions = max(plan["idle_sessions"], 64)
    gateways = [Direct(run_dir), Bridge(run_dir, 1, max_sessions), Bridge(run_dir, 2, max_sessions)]
    why_not = install_supergateway() if "supergateway" in wanted else None
    gateways.append(Supergateway(run_dir))
    gateways = [gw for gw in gateways if gw.key in wanted]
    results = {gw.key: {} for gw in gateways}
    for gw in gateways:
        if gw.key == "supergateway" and why_not:
            log(f"supergateway: {why_not}")
            if args.smoke:
                gateways.remove(gw)
                del results[gw.key]
                break
            results[gw.key] = {key: why_not for key in [k for k, _ in scenarios(plan)] + ["idle"]}
            continue
        run_gateway(gw, plan, results[gw.key])

    text = table(gateways, results)
    print(text)
    duration_s = time.monotonic() - started
    info = machine(fd_limit)
    with open(os.path.join(OUT_DIR, "results.json"), "w") as f:
        json.dump({"plan": plan, "machine": info, "results": results, "seconds": duration_s}, f, indent=1)
    failed = failures(results)
    if failed:
        for f in failed:
            log(f"FAILED: {f}")
    elif not args.smoke and not args.only:
        write_doc(text, info, plan, gateways, results, duration_s)
        log(f"wrote {os.path.relpath(DOC, ROOT)}")
    shutil.rmtree(run_dir, ignore_errors=True)
    log(f"done in {duration_s:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
