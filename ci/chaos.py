#!/usr/bin/env python3
"""Chaos run: thousands of sessions against `mcp-bridge serve`, aborted at
random stages, with misbehaving backends, worker and host kills, reloads and
floods; then counts what the gateway left behind.

Starts the standalone gateway with 2 workers bridging the fixture server (all
its test tools) and drives a few dozen sessions at a time, each running a
scenario picked at random, while a chaos thread kills workers and hosts,
reloads nginx and opens bursts of sessions over the limits. Then it stops
driving, closes every client connection, waits for the sessions to end,
checks that the gateway still serves, and measures the leaks while it runs:
live backend processes, zombies, slots held, session ids still accepted,
shared-dict keys left. Last it stops the gateway and checks that nothing it
started is left. Prints one table; exits 1 if any leak figure is not 0 or the
gateway stopped serving.

Every choice comes from a seeded RNG (session #i has a stream of its own), so
CHAOS_SEED=<seed> replays a run's choices; the interleaving still depends on
timing.

Usage: ci/chaos.py [--seconds N] [--short] [--seed N] [--clients N] [--keep]
Environment: CHAOS_SECONDS (default 120), CHAOS_SEED.
"""
import argparse
import collections
import http.client
import itertools
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")

WORKERS = 2
# Per worker and per node: low enough that the clients and the bursts meet
# them now and then (429 is not an error).
MAX_SESSIONS = 12
MAX_SESSIONS_PER_NODE = 20
KILL_GRACE_MS = 300
SLOW_CLIENT_MS = 1000
# Small, so that a backend that stops reading fills its inbox (twice this,
# at least 1 MiB) after a few dozen messages.
MAX_MESSAGE = 65536
KEEPALIVE_MS = 2000
BASE_URI = "/mcp"
STATUS_URI = "/-/status"

SHORT_SECONDS = 30
# The longest any single wait on the gateway may take.
IO_TIMEOUT = 10
# After the chaos: for the sessions to end, and for the gateway to stop.
SETTLE_LIMIT = 10
STOP_LIMIT = 20
# Sessions opened at once by a burst (over both ceilings).
BURST = 40
# Normal sessions after the chaos, which must all succeed.
FINAL_SESSIONS = 16
# Ended session ids checked for 404 at the end (all of them if fewer).
ID_CHECKS = 1500

# Scenario name -> weight.
SCENARIOS = {
    "normal": 28,
    "abort during spawn": 10,
    "abort before endpoint": 8,
    "abort mid-message": 10,
    "crash": 10,
    "grandchild": 10,
    "slow client": 3,
    "over-long line": 3,
    "stop reading": 3,
    "bad input": 6,
}

CHAOS_EVENTS = ("worker kill", "reload", "host kill", "burst")

LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(emerg|alert|crit|error)\] \d+#\d+: (?:\*\d+ )?(.*)$")
# Error-log lines the chaos itself causes (messages after normalize_log),
# each with the counter that must be non-zero for it to be expected.
EXPECTED_LOG = [
    (re.compile(r"^worker process N exited on signal 9$"), "worker kills"),
    # The worker reaps the host we killed.
    (re.compile(r"^unknown process N exited on signal 9$"), "host kills"),
    (re.compile(r"^client intended to send too large body"), "oversized bodies"),
    # A client that resets its connection (SO_LINGER 0), seen by nginx.
    (re.compile(r"^recv\(\) failed \(N: Connection reset by peer\)"), "resets"),
    # A GET that reached a worker as it began to shut down, or a host that
    # was just killed (with its worker, or alone): 503.
    (re.compile(r"^\[lua\] sse\.lua:N: \w+\(\): mcp-bridge: worker is exiting \["), "reloads"),
    (re.compile(r"^\[lua\] sse\.lua:N: \w+\(\): mcp-bridge: host at \S+: (closed|connection reset by peer) \["),
     "kills"),
    # A POST for a session of a host that was killed (its socket is left
    # behind), or that died while the POST was delivered: 404.
    (re.compile(r"^connect\(\) to unix:\S+ failed \(N: Connection refused\) \[POST"), "kills"),
    (re.compile(r"^send\(\) failed \(N: Broken pipe\) \[POST"), "kills"),
]
# Error-log lines that are a bug whatever caused them.
BUG_LOG = re.compile(r"runtime error|lua entry thread aborted|attempt to (index|call|compare|perform|concatenate)"
                     r"|panicked|stack traceback")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ended(Exception):
    """A session ended before the scenario was done with it. `clean`: the
    gateway ended the stream (its last chunk came), rather than it being cut."""

    def __init__(self, how, clean=False):
        super().__init__(how)
        self.how = how
        self.clean = clean


class Stats:
    """Counters shared by every thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = collections.Counter()
        self.statuses = collections.Counter()
        self.findings = collections.Counter()
        self.first_session = {}
        self.session_ids = []

    def add(self, key, n=1):
        with self._lock:
            self.count[key] += n

    def status(self, what, code):
        with self._lock:
            self.statuses[(what, code)] += 1

    def finding(self, what, session=None):
        # Pids and ids would make every finding unique.
        what = re.sub(r"[0-9a-f]{16,}", "<id>", what)
        what = re.sub(r"\d{4,}", "N", what)
        with self._lock:
            self.findings[what] += 1
            self.first_session.setdefault(what, session)

    def session_id(self, sid):
        with self._lock:
            self.session_ids.append(sid)


class Stream:
    """One SSE stream over a raw socket: the GET, its head, then its events
    (chunked decoding). Registered with the run so that it can be cut at the
    end."""

    def __init__(self, run, rcvbuf=None):
        self.run = run
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(IO_TIMEOUT)
        self.raw = b""
        self.body = b""
        run.track(self)
        try:
            self.sock.connect(("127.0.0.1", run.port))
            self.sock.sendall(f"GET {BASE_URI}/sse HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\n"
                              "Accept: text/event-stream\r\n\r\n".encode())
        except OSError:
            self.close()
            raise

    def _recv(self):
        try:
            data = self.sock.recv(65536)
        except ConnectionError as e:
            raise Ended(f"stream cut ({type(e).__name__})") from None
        if not data:
            raise Ended("stream cut (EOF without the last chunk)")
        self.raw += data

    def _until(self, marker):
        while marker not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(marker, 1)
        return head

    def head(self):
        """(status, headers with lowercase names)."""
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def event(self):
        """The next event's fields (comments skipped). Raises Ended at the end
        of the stream."""
        while True:
            while b"\n\n" not in self.body:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    raise Ended("stream ended by the gateway", clean=True)
                while len(self.raw) < size + 2:
                    self._recv()
                self.body += self.raw[:size]
                self.raw = self.raw[size + 2:]
            block, self.body = self.body.split(b"\n\n", 1)
            fields = {}
            for line in block.decode("utf-8", "replace").split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if fields:
                return fields

    def message(self):
        """The next JSON-RPC message on the stream."""
        while True:
            ev = self.event()
            if ev.get("event") == "message":
                return json.loads(ev["data"])

    def response(self, want):
        while True:
            msg = self.message()
            if isinstance(msg, dict) and msg.get("id") == want:
                return msg

    def error_text(self):
        """The `error` of a refusal's JSON body, best effort."""
        deadline = time.monotonic() + 1
        try:
            self.sock.settimeout(0.2)
            while b'"}' not in self.raw and time.monotonic() < deadline:
                self._recv()
        except (Ended, OSError):
            pass
        m = re.search(rb'"error":"([^"]*)"', self.raw)
        return m.group(1).decode("utf-8", "replace") if m else "no error text"

    def session_id_seen(self):
        """The session id if the endpoint event has already arrived, unread."""
        m = re.search(rb"sessionId=([0-9a-f]+)", self.raw)
        return m.group(1).decode() if m else None

    def cut(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self, rst=False):
        self.run.untrack(self)
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass


def http_post(port, path, body, keep=None):
    """POSTs `body`; (status, headers), or (None, {}) without an answer. With
    `keep` (a one-item list holding a connection or None) the connection is
    kept alive and reused."""
    conn = keep[0] if keep else None
    if conn is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    headers = {"Content-Type": "application/json"}
    if keep is None:
        headers["Connection"] = "close"
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        result = r.status, {k.lower(): v for k, v in r.getheaders()}
        if keep is not None and not r.will_close:
            keep[0] = conn
            return result
    except (OSError, http.client.HTTPException):
        result = None, {}
    conn.close()
    if keep is not None:
        keep[0] = None
    return result


def message_path(sid):
    return f"{BASE_URI}/message?sessionId={sid}"


class Session:
    """One client session: its RNG, its stream and what it has done."""

    def __init__(self, run, index, rng):
        self.run = run
        self.stats = run.stats
        self.index = index
        self.rng = rng
        self.started = time.monotonic()
        self.stream = None
        self.sid = None
        self.step = "open"
        self.status = None
        # Set once the scenario counted itself as tried, so that a session
        # cut short afterwards is counted as such (see Run.explain).
        self.tried = False

    def connect(self, rcvbuf=None):
        self.stats.add("sessions run")
        self.stream = Stream(self.run, rcvbuf)

    def open(self, rcvbuf=None):
        """GETs a stream; True once its endpoint event is read, False when the
        gateway refused the session."""
        self.connect(rcvbuf)
        status, headers = self.stream.head()
        self.run.record_status("GET /sse", status, headers, self.index, self.stream)
        self.status = status
        if status != 200:
            self.close()
            if status == 429:
                self.stats.add("429s")
                # What Retry-After asks for, shortened: the chaos wants load.
                time.sleep(self.rng.uniform(0.02, 0.2))
            return False
        self.sid = self.stream.event()["data"].split("sessionId=", 1)[1]
        self.stats.session_id(self.sid)
        self.step = "opened"
        return True

    def post(self, body, path=None, what="POST /message"):
        status, headers = http_post(self.run.port, path or message_path(self.sid), body)
        if status is not None:
            self.run.record_status(what, status, headers, self.index)
        return status, headers

    def send(self, message):
        status, _ = self.post(json.dumps(message).encode())
        if status != 202:
            raise Ended(f"POST answered {status}" if status else "POST got no answer")

    def request(self, id_, method, params):
        self.step = method
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})

    def call(self, id_, tool, args):
        self.step = f"tools/call {tool}"
        self.send({"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": tool, "arguments": args}})

    def notify(self, method, params=None):
        self.step = method
        self.send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def result(self, id_):
        msg = self.stream.response(id_)
        if "result" not in msg:
            raise Ended(f"error response: {msg.get('error')}", clean=True)
        return msg["result"]

    def initialize(self):
        self.request(0, "initialize", {"protocolVersion": "2024-11-05", "capabilities": {},
                                       "clientInfo": {"name": "chaos", "version": "1"}})
        self.result(0)
        self.notify("notifications/initialized")

    def echo(self, id_):
        text = f"chaos {self.index} {self.rng.getrandbits(64):016x}"
        self.call(id_, "echo", {"text": text})
        got = self.result(id_)["content"][0]["text"]
        if got != text:
            self.stats.finding(f"echo returned {got[:60]!r} instead of the text sent", self.index)
            return False
        return True

    def expect_errors(self, pending):
        """Reads the stream to its end after the backend crashed: each pending
        request must get an error response."""
        got = {}
        try:
            while True:
                msg = self.stream.message()
                if isinstance(msg, dict) and msg.get("id") in pending:
                    got[msg["id"]] = msg
        except Ended as e:
            if self.run.stopping:
                raise
            clean = e.clean
        for id_ in pending:
            if "error" in got.get(id_, {}):
                self.stats.add("error responses received")
            elif not clean or self.disrupted():
                # A killed worker or host cannot answer for its backends.
                self.stats.add("error responses missing after a kill")
            else:
                self.stats.add("error responses missing")
                self.stats.finding("no error response for a pending request when the backend crashed", self.index)

    def disrupted(self):
        return self.run.disrupted_since(self.started)

    def close(self):
        if self.stream:
            rst = self.rng.random() < 0.3
            if rst and self.stream.sock.fileno() >= 0:
                self.stats.add("resets")
            self.stream.close(rst=rst)


# ---- scenarios: each gets a Session; raising Ended is fine (see drive) ----

def normal(s):
    if not s.open():
        return
    s.initialize()
    if not s.echo(1):
        return
    if s.rng.random() < 0.3:
        s.request(2, "tools/list", {})
        s.result(2)
    s.close()
    s.stats.add("completed normally")


def abort_during_spawn(s):
    s.connect()
    time.sleep(s.rng.choice([0, 0, 0.001, 0.005, 0.02]))
    s.close()
    s.stats.add("aborts: during spawn")


def abort_before_endpoint(s):
    s.connect()
    status, headers = s.stream.head()
    s.run.record_status("GET /sse", status, headers, s.index, s.stream)
    sid = s.stream.session_id_seen()
    if sid:
        s.stats.session_id(sid)
    s.close()
    if status == 429:
        s.stats.add("429s")
    elif status == 200:
        s.stats.add("aborts: before the endpoint event")


def abort_mid_message(s):
    if not s.open():
        return
    if s.rng.random() < 0.5:
        s.initialize()
    if s.rng.random() < 0.3:
        # A POST whose client goes away halfway through its body; the
        # session must not notice.
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "y" * 30000}}}).encode()
        with socket.create_connection(("127.0.0.1", s.run.port), timeout=IO_TIMEOUT) as c:
            c.sendall(f"POST {message_path(s.sid)} HTTP/1.1\r\nHost: 127.0.0.1:{s.run.port}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:s.rng.randint(0, len(body) - 1)])
            if s.rng.random() < 0.5:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.stats.add("aborts: mid-POST body")
        s.echo(2)
        s.close()
        return
    tool, args = s.rng.choice([
        ("sleep", {"ms": s.rng.randint(50, 3000)}),
        ("echo", {"text": "x" * s.rng.randint(1, 20000)}),
        ("flood", {"count": s.rng.randint(10, 500)}),
    ])
    s.call(1, tool, args)
    time.sleep(s.rng.choice([0, 0, 0.001, 0.01]))
    s.close()
    s.stats.add("aborts: mid-message")


def crash(s):
    if not s.open():
        return
    pending = []
    if s.rng.random() < 0.5:
        s.call(1, "sleep", {"ms": 60000})
        pending.append(1)
    if s.rng.random() < 0.5:
        tool, args = "crash", {"code": s.rng.choice([0, 1, 3])}
    else:
        tool, args = "kill_self", {"signal": s.rng.choice(["SIGKILL", "SIGSEGV", "SIGABRT", "SIGTERM"])}
    s.call(2, tool, args)
    pending.append(2)
    s.stats.add("backend crashes")
    if s.rng.random() < 0.3:
        # While the host tears the session down and sends the last frames.
        time.sleep(s.rng.choice([0, 0.001, 0.005, 0.02]))
        s.close()
        s.stats.add("aborts: during teardown")
        return
    s.expect_errors(pending)


def grandchild(s):
    if not s.open():
        return
    how = {"setsid": s.rng.random() < 0.5, "double_fork": s.rng.random() < 0.4,
           "ignore_sigterm": s.rng.random() < 0.5}
    s.call(1, "spawn_grandchild", how)
    s.result(1)
    s.stats.add("grandchildren started")
    for flag, on in how.items():
        if on:
            s.stats.add(f"grandchildren: {flag}")
    if s.rng.random() < 0.3:
        s.call(2, "crash", {})
        s.stats.add("backend crashes")
        s.expect_errors([2])
    else:
        s.close()


def slow_client(s):
    """A flood to a client that reads slowly or not at all: the gateway must
    end the session by itself after slow_client_timeout_ms."""
    if not s.open(rcvbuf=16384):
        return
    s.call(1, "flood", {"count": 3000, "size": 2000})
    s.stats.add("slow clients")
    s.tried = True
    reading = s.rng.random() < 0.5
    s.step = "slow reading" if reading else "not reading"
    started = time.monotonic()
    next_check = started + SLOW_CLIENT_MS / 1000 + 0.5
    give_up = started + 5 * SLOW_CLIENT_MS / 1000 + 2
    s.stream.sock.settimeout(0.25)
    while not s.run.stopping:
        if reading:
            # 16 KiB/s at most.
            try:
                s.stream.sock.recv(4096)
            except TimeoutError:
                pass
            except OSError:
                reading = False
        time.sleep(0.25)
        now = time.monotonic()
        if now < next_check:
            continue
        status, _ = s.post(json.dumps({"jsonrpc": "2.0", "method": "notifications/chaos"}).encode())
        if status == 404:
            s.stats.add("slow clients ended")
            break
        if status != 202:
            raise Ended(f"POST answered {status}" if status else "POST got no answer")
        if now > give_up:
            if not s.disrupted():
                s.stats.finding(f"a slow client's session still took messages after {now - started:.0f} s",
                                s.index)
            break
        next_check = now + 0.5
    else:
        raise Ended("stopped")
    s.close()


def over_long_line(s):
    if not s.open():
        return
    s.call(1, "huge_line", {"bytes": 2 * MAX_MESSAGE})
    s.step = "waiting for the end"
    s.stats.add("over-long lines")
    s.tried = True
    try:
        while True:
            s.stream.message()
    except Ended as e:
        if not e.clean:
            raise
    s.stats.add("over-long lines ended")
    s.close()


def stop_reading(s):
    if not s.open():
        return
    s.call(1, "stop_reading", {})
    s.result(1)
    s.step = "filling the inbox"
    s.stats.add("stopped readers")
    s.tried = True
    pad = json.dumps({"jsonrpc": "2.0", "method": "notifications/chaos",
                      "params": {"pad": "x" * (MAX_MESSAGE - 200)}}).encode()
    for _ in range(60):
        status, headers = s.post(pad)
        if status == 503:
            s.stats.add("stopped readers: 503")
            break
        if status != 202:
            raise Ended(f"POST answered {status}" if status else "POST got no answer")
    else:
        s.stats.finding("no 503 after 60 messages to a backend that stopped reading", s.index)
    s.close()


BAD_INPUTS = {
    "malformed JSON": 400,
    "missing sessionId": 400,
    "unknown sessionId": 404,
    "unknown sessionId on a live host": 404,
    "oversized body": 413,
}


def bad_input(s):
    if not s.open():
        return
    for name in s.rng.sample(sorted(BAD_INPUTS), s.rng.randint(1, 3)):
        path, body = message_path(s.sid), b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'
        if name == "malformed JSON":
            body = b'{"jsonrpc": "2.0", "id": 1, "method": '
        elif name == "missing sessionId":
            path = f"{BASE_URI}/message"
        elif name == "unknown sessionId":
            path = message_path(f"{s.rng.getrandbits(192):048x}")
        elif name == "unknown sessionId on a live host":
            path = message_path(s.sid[:16] + f"{s.rng.getrandbits(128):032x}")
        else:
            body = json.dumps({"jsonrpc": "2.0", "method": "notifications/chaos",
                               "params": {"pad": "x" * MAX_MESSAGE}}).encode()
        s.step = f"bad input: {name}"
        status, _ = s.post(body, path, what="POST /message (bad input)")
        expected = BAD_INPUTS[name]
        s.stats.add("bad input sent")
        if status == expected:
            s.stats.add("bad input answered as documented")
        elif s.disrupted():
            s.stats.add("interrupted by a kill or reload")
            s.stats.add("cut short: bad input")
            return
        else:
            s.stats.finding(f"{name} answered {status}, expected {expected}", s.index)
    s.echo(2)
    s.close()


SCENARIO_FUNCS = {
    "normal": normal,
    "abort during spawn": abort_during_spawn,
    "abort before endpoint": abort_before_endpoint,
    "abort mid-message": abort_mid_message,
    "crash": crash,
    "grandchild": grandchild,
    "slow client": slow_client,
    "over-long line": over_long_line,
    "stop reading": stop_reading,
    "bad input": bad_input,
}


# ---- processes ----

class Proc:
    __slots__ = ("pid", "comm", "state", "ppid", "starttime")

    def __init__(self, pid, stat):
        self.pid = pid
        self.comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        self.state = fields[0]
        self.ppid = int(fields[1])
        self.starttime = int(fields[19])


def read_proc(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return Proc(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def all_procs():
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = read_proc(int(name))
            if p:
                procs[p.pid] = p
    return procs


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def cmdline(pid):
    return read_bytes(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode("utf-8", "replace").strip()


def children(pid):
    """Children of every thread of `pid`."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        kids += [int(k) for k in read_bytes(f"/proc/{pid}/task/{task}/children").split()]
    return kids


def rss_kib(pid):
    for line in read_bytes(f"/proc/{pid}/status").decode("utf-8", "replace").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Gateway:
    """`mcp-bridge serve` with 2 workers bridging the fixture, and what can
    be learnt about its processes."""

    def __init__(self, workdir, port):
        self.port = port
        self.prefix = os.path.join(workdir, "prefix")
        self.pid_dir = os.path.join(workdir, "pids")
        self.log_path = os.path.join(workdir, "gateway.log")
        os.mkdir(self.pid_dir)
        os.chmod(self.pid_dir, 0o1777)
        self.proc = None
        self.master = None
        self.exit_status = None
        self.stop_seconds = None
        # (pid, starttime) of every gateway process seen: nginx and hosts.
        self.seen = set()
        self._records = {}
        self._gone = set()

    def start(self):
        cmd = [os.path.join(BIN, "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{self.port}",
               "--workers", str(WORKERS), "--max-sessions", str(MAX_SESSIONS),
               "--max-sessions-per-node", str(MAX_SESSIONS_PER_NODE), "--kill-grace-ms", str(KILL_GRACE_MS),
               "--slow-client-timeout-ms", str(SLOW_CLIENT_MS), "--max-message-bytes", str(MAX_MESSAGE),
               "--keepalive-interval-ms", str(KEEPALIVE_MS), "--status-uri", STATUS_URI,
               "--prefix", self.prefix, "--env", f"MCP_FIXTURE_PID_DIR={self.pid_dir}",
               "--", os.path.join(BIN, "mcp-fixture")]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        out = b""
        while b"SSE endpoint" not in out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                sys.exit("chaos: the gateway did not start within 20 s")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                sys.exit(f"chaos: the gateway exited at start; see {self.log_path}")
            out += chunk
        with open(os.path.join(self.prefix, "nginx.pid")) as f:
            self.master = int(f.read().strip())

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def workers(self, exiting=False):
        """Current workers; with `exiting`, also those shutting down."""
        found = []
        for pid in children(self.master):
            line = cmdline(pid)
            if line == "nginx: worker process" or (exiting and line.startswith("nginx: worker process")):
                found.append(pid)
        return found

    def exiting_workers(self):
        return [p for p in self.workers(exiting=True) if cmdline(p) != "nginx: worker process"]

    def hosts(self):
        found = []
        for parent in [self.proc.pid] + self.workers(exiting=True):
            found += [pid for pid in children(parent) if read_bytes(f"/proc/{pid}/comm").strip() == b"mcp-bridge-host"]
        return found

    def sample(self, peaks):
        """Peak VmRSS per kind (KiB), and every gateway process seen."""
        for kind, pids in (("nginx worker", self.workers(exiting=True)), ("host", self.hosts())):
            for pid in pids:
                p = read_proc(pid)
                if p:
                    self.seen.add((pid, p.starttime))
                peaks[kind] = max(peaks.get(kind, 0), rss_kib(pid))
        p = read_proc(self.master)
        if p:
            self.seen.add((p.pid, p.starttime))

    def gateway_pids(self, procs):
        """The CLI and every nginx and host process below it."""
        kids = collections.defaultdict(list)
        for p in procs.values():
            kids[p.ppid].append(p.pid)
        out = {self.proc.pid}
        todo = [self.proc.pid]
        while todo:
            for c in kids[todo.pop()]:
                if procs[c].comm in ("nginx", "mcp-bridge-host") and c not in out:
                    out.add(c)
                    todo.append(c)
        return out

    def backends(self, procs, gateway=frozenset()):
        """Backends and their descendants still running: processes with the
        session marker and this run's pid dir in their environment, and
        processes of the pid dir's records. A zombie counts as running only
        when a gateway process should reap it (see zombies)."""
        ours = f"MCP_FIXTURE_PID_DIR={self.pid_dir}".encode()
        found = set()
        for p in procs.values():
            if p.state == "Z":
                continue
            env = read_bytes(f"/proc/{p.pid}/environ").split(b"\0")
            if ours in env and any(e.startswith(b"MCP_BRIDGE_SESSION=") for e in env):
                found.add(p.pid)
        self._read_records()
        for name, (pid, starttime) in self._records.items():
            if name in self._gone:
                continue
            p = procs.get(pid)
            if p is None or p.starttime != starttime or (p.state == "Z" and p.ppid not in gateway):
                self._gone.add(name)
            elif p.state != "Z":
                found.add(pid)
        return found

    def _read_records(self):
        for name in os.listdir(self.pid_dir):
            if name.endswith(".pid") and name not in self._records:
                try:
                    with open(os.path.join(self.pid_dir, name)) as f:
                        rec = json.load(f)
                    self._records[name] = (rec["pid"], rec["starttime"])
                except (OSError, ValueError, KeyError):
                    continue

    def prune_records(self):
        """Deletes the pid dir's records of processes that are surely gone
        (no such pid, or another start time), so that the dir stays small."""
        self._read_records()
        for name, (pid, starttime) in list(self._records.items()):
            p = read_proc(pid)
            if p is None or p.starttime != starttime:
                for path in (name, f"{pid}.term"):
                    try:
                        os.unlink(os.path.join(self.pid_dir, path))
                    except OSError:
                        pass
                del self._records[name]
                self._gone.discard(name)

    def zombies(self, procs, gateway):
        return [p.pid for p in procs.values() if p.state == "Z" and p.ppid in gateway]

    def leftovers(self):
        """After the gateway stopped: its processes, the backends and their
        descendants still running."""
        procs = all_procs()
        left = self.backends(procs)
        for pid, starttime in self.seen:
            p = procs.get(pid)
            if p and p.starttime == starttime and p.state != "Z":
                left.add(pid)
        return left

    def stop(self):
        if not self.running():
            return
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_status = self.proc.wait(timeout=STOP_LIMIT)
            self.stop_seconds = time.monotonic() - started
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_status = self.proc.wait()


def status_reports(port, workers, tries=200):
    """GET the status report on fresh connections until every worker in
    `workers` has answered (reuseport spreads connections by source port).
    Returns {worker pid: report}."""
    seen = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
        try:
            conn.request("GET", STATUS_URI, headers={"Connection": "close"})
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            continue
        finally:
            conn.close()
        if r.status == 200:
            doc = json.loads(body)
            seen[doc["worker"]["pid"]] = doc
        if set(workers) <= seen.keys():
            break
    return seen


def held(doc):
    """(slots held by the worker, sessions of its host, node slots, keys held)."""
    node = doc.get("node") or {}
    worker = doc["worker"]["pid"]
    return (sum((doc["worker"].get("slots") or {}).values()),
            sum(h.get("sessions", 0) for h in doc.get("hosts") or [] if h.get("worker") == worker),
            sum((node.get("routes") or {}).values()),
            node.get("keys_held", 0))


class Run:
    def __init__(self, gateway, seed, clients):
        self.gateway = gateway
        self.port = gateway.port
        self.seed = seed
        self.clients = clients
        self.stats = Stats()
        self.stop = threading.Event()
        self.stopping = False
        self.counter = itertools.count(1)
        self._streams = set()
        self._lock = threading.Lock()
        self.disruptions = []
        self.peaks = {}
        self.sampler = None
        self.sampling_done = None
        self.stuck = 0
        self.chaos_seconds = 0.0

    def track(self, stream):
        with self._lock:
            self._streams.add(stream)

    def untrack(self, stream):
        with self._lock:
            self._streams.discard(stream)

    def cut_all(self):
        with self._lock:
            streams = list(self._streams)
        for st in streams:
            st.cut()

    def disrupted_since(self, t):
        # A kill or reload shortly before a session started may still hit it
        # (its GET was accepted, or its host chosen, before).
        return any(d >= t - 1.0 for d in self.disruptions)

    def record_status(self, what, status, headers, session=None, stream=None):
        self.stats.status(what, status)
        if status == 502 or (status >= 500 and not (status == 503 and headers.get("retry-after"))):
            extra = " without Retry-After" if status == 503 else ""
            if stream:
                extra += f" ({stream.error_text()})"
            self.stats.finding(f"{what} answered {status}{extra}", session)

    def explain(self, s, name, how):
        """A session ended before its scenario was done."""
        if self.stopping or s.disrupted():
            self.stats.add("closed at the end" if self.stopping else "interrupted by a kill or reload")
            if s.tried:
                self.stats.add(f"cut short: {name}")
        else:
            self.stats.finding(f"{name}: {how} (at {s.step})", s.index)

    def drive(self):
        names, weights = list(SCENARIOS), list(SCENARIOS.values())
        while not self.stop.is_set():
            index = next(self.counter)
            rng = random.Random(f"{self.seed}/{index}")
            name = rng.choices(names, weights)[0]
            s = Session(self, index, rng)
            self.stats.add(f"scenario: {name}")
            try:
                SCENARIO_FUNCS[name](s)
            except Ended as e:
                self.explain(s, name, e.how)
            except TimeoutError:
                self.explain(s, name, "timed out")
            except OSError as e:
                self.explain(s, name, f"{type(e).__name__}: {e.strerror or e}")
            except Exception as e:  # a bug here, or an answer we cannot parse
                self.stats.finding(f"{name}: client error {type(e).__name__}: {e}", index)
            finally:
                s.close()

    def burst(self, rng):
        """Opens BURST sessions at once, then drops them all."""
        streams = []
        for _ in range(BURST):
            self.stats.add("sessions run")
            try:
                streams.append(Stream(self))
            except OSError:
                self.stats.add("burst: connect failed")
        for st in streams:
            try:
                status, headers = st.head()
                self.record_status("GET /sse", status, headers, stream=st)
                if status == 429:
                    self.stats.add("429s")
                elif status == 200:
                    self.stats.add("burst sessions opened")
                    self.stats.session_id(st.event()["data"].split("sessionId=", 1)[1])
            except (Ended, OSError, ValueError, IndexError, KeyError):
                pass
        time.sleep(rng.uniform(0, 0.5))
        for st in streams:
            rst = rng.random() < 0.5
            self.stats.add("resets", rst)
            st.close(rst=rst)

    def chaos(self, schedule, started):
        rng = random.Random(f"{self.seed}/chaos")
        for at, event in schedule:
            if self.stop.wait(max(0, started + at - time.monotonic())):
                return
            if event == "worker kill":
                workers = self.gateway.workers()
                if workers:
                    self.disruptions.append(time.monotonic())
                    os.kill(rng.choice(sorted(workers)), signal.SIGKILL)
                    self.stats.add("worker kills")
            elif event == "reload":
                self.disruptions.append(time.monotonic())
                os.kill(self.gateway.master, signal.SIGHUP)
                self.stats.add("reloads")
            elif event == "host kill":
                hosts = self.gateway.hosts()
                if hosts:
                    self.disruptions.append(time.monotonic())
                    os.kill(rng.choice(sorted(hosts)), signal.SIGKILL)
                    self.stats.add("host kills")
                else:
                    self.stats.add("host kills skipped (no host)")
            else:
                self.burst(rng)
                self.stats.add("bursts")

    def sample(self, done):
        for n in itertools.count(1):
            if done.wait(0.5):
                return
            self.gateway.sample(self.peaks)
            if n % 10 == 0:
                self.gateway.prune_records()


def chaos_schedule(rng, seconds):
    """Each kind of chaos event, about every 20 s each, spread evenly with
    jitter; at least twice each."""
    per_kind = max(2, round(seconds / 20))
    events = [e for e in CHAOS_EVENTS for _ in range(per_kind)]
    rng.shuffle(events)
    first, last = 2.0, max(4.0, seconds - 3.0)
    step = (last - first) / len(events)
    return [(first + i * step + rng.uniform(0, 0.8 * step), e) for i, e in enumerate(events)]


def final_session(run, index):
    """A normal session after the chaos; None if it succeeded, else why not."""
    s = Session(run, index, random.Random(f"{run.seed}/final/{index}"))
    try:
        if not s.open():
            return f"GET /sse answered {s.status}"
        s.initialize()
        if not s.echo(1):
            return "wrong echo"
        return None
    except Ended as e:
        return e.how
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        s.close()


def settle(gateway, port, limit):
    """Waits until no backend runs, no worker is shutting down and every
    worker reports nothing held. True if that happened within `limit`."""
    deadline = time.monotonic() + limit
    while True:
        procs = all_procs()
        busy = gateway.backends(procs, gateway.gateway_pids(procs)) or gateway.exiting_workers()
        if not busy:
            workers = gateway.workers()
            docs = status_reports(port, workers, tries=40)
            if set(workers) <= docs.keys() and all(held(d) == (0, 0, 0, 0) for d in docs.values()):
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def normalize_log(message):
    request = re.search(r', request: "(\S+) ([^ ?"]*)', message)
    message = message.split(", client: ")[0]
    message = re.sub(r"[0-9a-f]{16,}", "<id>", message)
    message = re.sub(r"(?<!signal )\b\d+\b", "N", message)
    if request:
        message += f" [{request.group(1)} {request.group(2)}]"
    return message[:240]


def log_groups(path):
    groups = collections.Counter()
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = LOG_LINE.match(line.rstrip("\n"))
                if m:
                    groups[(m.group(1), normalize_log(m.group(2)))] += 1
    except OSError:
        pass
    return groups


def drive_chaos(gateway, seed, seconds, clients):
    """Runs the clients, the chaos and the RSS sampler for `seconds`, then
    stops driving and closes every client connection."""
    run = Run(gateway, seed, clients)
    run.sampling_done = threading.Event()
    run.sampler = threading.Thread(target=run.sample, args=(run.sampling_done,), daemon=True)
    run.sampler.start()
    started = time.monotonic()
    schedule = chaos_schedule(random.Random(f"{seed}/schedule"), seconds)
    threads = [threading.Thread(target=run.chaos, args=(schedule, started), daemon=True)]
    threads += [threading.Thread(target=run.drive, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    run.stop.wait(seconds)
    run.stop.set()
    run.stopping = True
    # A thread may be about to open a stream: cut again until all are done.
    deadline = time.monotonic() + IO_TIMEOUT + 5
    for t in threads:
        while t.is_alive() and time.monotonic() < deadline:
            run.cut_all()
            t.join(0.1)
    run.stuck = sum(t.is_alive() for t in threads)
    run.chaos_seconds = time.monotonic() - started
    return run


def ids_still_accepted(port, ids):
    """POSTs a notification to each ended session id: how many got an answer
    other than 404 (no answer counts too)."""
    accepted = unanswered = 0
    keep = [None]
    notification = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    for n, sid in enumerate(ids):
        status, _ = http_post(port, message_path(sid), notification, keep)
        if status is None:
            status, _ = http_post(port, message_path(sid), notification, keep)
        if status != 404:
            accepted += 1
        unanswered += status is None
        if unanswered >= 3:
            # The gateway does not answer: count the rest as accepted.
            accepted += len(ids) - 1 - n
            break
    if keep[0]:
        keep[0].close()
    return accepted


def measure(gateway, run):
    """Waits for the sessions to end, checks the gateway still serves, and
    takes the leak figures while it runs; then stops it and looks for what
    is left. Returns (leak rows, other problems, final session failures)."""
    problems = []
    settled = settle(gateway, gateway.port, SETTLE_LIMIT)
    final_failures = collections.Counter()
    for i in range(FINAL_SESSIONS):
        why = final_session(run, i)
        if why:
            final_failures[why] += 1
        if sum(final_failures.values()) >= 3:
            # Each failure may have waited IO_TIMEOUT: enough.
            final_failures["not run"] += FINAL_SESSIONS - 1 - i
            break
    settled = settle(gateway, gateway.port, SETTLE_LIMIT) and settled
    if not settled:
        problems.append(f"sessions did not all end within {SETTLE_LIMIT} s")
    run.sampling_done.set()
    run.sampler.join()
    gateway.sample(run.peaks)

    procs = all_procs()
    gw = gateway.gateway_pids(procs)
    live = gateway.backends(procs, gw)
    zombies = set(gateway.zombies(procs, gw))
    workers = sorted(gateway.workers())
    exiting = gateway.exiting_workers()
    docs = status_reports(gateway.port, workers)
    ids = list(run.stats.session_ids)
    if len(ids) > ID_CHECKS:
        ids = random.Random(f"{run.seed}/ids").sample(ids, ID_CHECKS)
    accepted = ids_still_accepted(gateway.port, ids)

    gateway.stop()
    if gateway.stop_seconds is None:
        problems.append(f"the gateway did not stop within {STOP_LIMIT} s")
    left = gateway.leftovers()

    leaks = [("live backend processes", len(live)), ("zombies", len(zombies))]
    node = (0, 0)
    for pid in workers:
        if pid in docs:
            slots, sessions, node_slots, keys = held(docs[pid])
            leaks += [(f"slots held, worker {pid}", slots), (f"host sessions, worker {pid}", sessions)]
            node = (node_slots, keys)
    leaks += [
        ("slots held, node", node[0]),
        ("shared-dict keys left", node[1]),
        ("workers not reporting status", len(set(workers) - docs.keys())),
        ("old workers still shutting down", len(exiting)),
        (f"session ids still accepted (of {len(ids)})", accepted),
        ("left after the gateway stopped", len(left)),
    ]
    for pid in sorted(live | zombies | left):
        p = read_proc(pid)
        what = f"{p.comm}, state {p.state}, ppid {p.ppid}" if p else "gone now"
        problems.append(f"process {pid} ({what}) {cmdline(pid)}".strip())
    return leaks, problems, final_failures


def print_log_groups(run, path):
    """The gateway's error-log lines at [error] and above, grouped; returns
    how many are bugs whatever caused them."""
    groups = log_groups(path)
    if not groups:
        return 0
    c = run.stats.count
    causes = {"worker kills": c["worker kills"], "host kills": c["host kills"], "reloads": c["reloads"],
              "kills": c["worker kills"] + c["host kills"], "resets": c["resets"],
              "oversized bodies": run.stats.statuses[("POST /message (bad input)", 413)]}
    bugs = 0
    print("\ngateway error log, [error] and above, grouped:")
    for (level, msg), n in sorted(groups.items(), key=lambda kv: -kv[1]):
        if BUG_LOG.search(msg):
            tag = "BUG"
            bugs += n
        elif any(p.match(msg) and causes[cause] for p, cause in EXPECTED_LOG):
            tag = "expected"
        else:
            tag = "look"
        print(f"  {n:6d}  {tag:8s} [{level}] {msg}")
    return bugs


def print_statuses_and_findings(run):
    print("\nHTTP statuses:")
    by_what = collections.defaultdict(list)
    for (what, code), n in sorted(run.stats.statuses.items()):
        by_what[what].append(f"{code} x{n}")
    for what, codes in by_what.items():
        print(f"  {what}: {', '.join(codes)}")
    if run.stats.findings:
        print(f"\nfindings (with the first session #; CHAOS_SEED={run.seed} replays its choices):")
        for what, n in run.stats.findings.most_common():
            print(f"  {n:6d}  {what}  (#{run.stats.first_session.get(what)})")


def print_table(run, elapsed, leaks, final_failures):
    c = run.stats.count
    gw = run.gateway

    def of(done, tried, scenario):
        cut = c[f"cut short: {scenario}"]
        return f"{done} of {tried}" + (f" ({cut} cut short by a kill, a reload or the end)" if cut else "")

    rows = [
        ("duration", f"{elapsed:.1f} s (chaos {run.chaos_seconds:.1f} s)"),
        ("seed", str(run.seed)),
        ("clients at once", str(run.clients)),
        ("sessions run", str(c["sessions run"])),
        ("completed normally", str(c["completed normally"])),
        ("aborts: during spawn", str(c["aborts: during spawn"])),
        ("aborts: before the endpoint event", str(c["aborts: before the endpoint event"])),
        ("aborts: mid-message", str(c["aborts: mid-message"])),
        ("aborts: mid-POST body", str(c["aborts: mid-POST body"])),
        ("aborts: during teardown", str(c["aborts: during teardown"])),
        ("backend crashes", str(c["backend crashes"])),
        ("error responses for pending requests",
         f"{c['error responses received']} received, {c['error responses missing']} missing"
         f" (+{c['error responses missing after a kill']} lost to a kill)"),
        ("grandchildren started",
         f"{c['grandchildren started']} (setsid {c['grandchildren: setsid']}, double fork "
         f"{c['grandchildren: double_fork']}, ignoring SIGTERM {c['grandchildren: ignore_sigterm']})"),
        ("slow clients ended by the gateway", of(c["slow clients ended"], c["slow clients"], "slow client")),
        ("over-long lines ending the session", of(c["over-long lines ended"], c["over-long lines"], "over-long line")),
        ("stopped readers reaching 503", of(c["stopped readers: 503"], c["stopped readers"], "stop reading")),
        ("bad input answered as documented", of(c["bad input answered as documented"], c["bad input sent"], "bad input")),
        ("429s", str(c["429s"])),
        ("worker kills", str(c["worker kills"])),
        ("host kills", str(c["host kills"])),
        ("reloads", str(c["reloads"])),
        ("bursts", f"{c['bursts']} ({c['burst sessions opened']} of {c['bursts'] * BURST} sessions opened)"),
        ("sessions interrupted by a kill or reload", str(c["interrupted by a kill or reload"])),
        ("sessions closed at the end", str(c["closed at the end"])),
        ("findings", str(sum(run.stats.findings.values()))),
        ("final normal sessions", f"{FINAL_SESSIONS - sum(final_failures.values())} of {FINAL_SESSIONS} succeeded"),
        ("gateway stopped (SIGTERM)", f"in {gw.stop_seconds:.1f} s, exit status {gw.exit_status}"
         if gw.stop_seconds is not None else "no: killed"),
    ]
    peaks = [(f"peak RSS, {kind}", f"{run.peaks.get(kind, 0) / 1024:.1f} MiB") for kind in ("nginx worker", "host")]
    width = max(len(label) for label, _ in rows + leaks + peaks) + 2
    print("\nchaos run")
    for label, value in rows:
        print(f"  {label:<{width}}{value}")
    print("  leaks (each must be 0):")
    for label, value in leaks:
        print(f"    {label:<{width - 2}}{value}")
    for label, value in peaks:
        print(f"  {label:<{width}}{value}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS") or 120),
                    help="length of the chaos (default: $CHAOS_SECONDS or 120)")
    ap.add_argument("--short", action="store_true", help=f"{SHORT_SECONDS} s of chaos, for make test")
    ap.add_argument("--seed", type=int, default=None, help="replay a run's choices (default: $CHAOS_SEED or random)")
    ap.add_argument("--clients", type=int, default=24, help="sessions driven at once (default 24)")
    ap.add_argument("--keep", action="store_true", help="keep the gateway's log and files even if all went well")
    args = ap.parse_args()
    seconds = SHORT_SECONDS if args.short else args.seconds
    seed = args.seed
    if seed is None:
        env = os.environ.get("CHAOS_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(1, 1 << 31)

    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="mcp-bridge-chaos-")
    os.chmod(workdir, 0o755)
    gateway = Gateway(workdir, free_port())
    print(f"chaos: seed {seed} (CHAOS_SEED={seed} replays its choices), {seconds:g} s, {args.clients} clients, "
          f"gateway on 127.0.0.1:{gateway.port}", flush=True)
    failed = True
    try:
        gateway.start()
        run = drive_chaos(gateway, seed, seconds, args.clients)
        print(f"chaos: driving stopped after {run.chaos_seconds:.1f} s; waiting for sessions to end", flush=True)
        leaks, problems, final_failures = measure(gateway, run)
        bugs = print_log_groups(run, gateway.log_path)
        print_statuses_and_findings(run)
        print_table(run, time.monotonic() - began, leaks, final_failures)

        problems = [f"{label}: {value}" for label, value in leaks if value] + problems
        if final_failures:
            problems.append("final sessions failed: " + ", ".join(f"{w} x{n}" for w, n in final_failures.items()))
        if run.stuck:
            problems.append(f"{run.stuck} client thread(s) did not stop")
        if bugs:
            problems.append(f"{bugs} error-log line(s) that are bugs")
        if problems:
            print("\nchaos: FAILED")
            for p in problems:
                print(f"  {p}")
        else:
            print("\nchaos: no leaks, and the gateway still served")
            failed = False
    finally:
        gateway.stop()
        if failed or args.keep:
            print(f"chaos: kept {workdir} (gateway.log, pids/)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
