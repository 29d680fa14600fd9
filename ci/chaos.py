#!/usr/bin/env python3
"""Chaos run: thousands of sessions and requests against `mcp-bridge serve`,
on both transports, aborted at random stages, with misbehaving backends,
worker and host kills, reloads and floods; then counts what the gateway left
behind.

Starts the standalone gateway with 2 workers bridging the fixture server (all
its test tools), with short Streamable HTTP session TTLs and a small pool for
stateless requests, and drives a few dozen clients at a time, each running a
scenario picked at random: HTTP+SSE sessions, Streamable HTTP sessions
(2025-11-25: initialize, requests answered as JSON or as event streams, the
GET stream, DELETE, TTL expiry) and stateless requests (2026-07-28, on the
pool), each aborted at some stage or misbehaving in some way; meanwhile a
chaos thread kills workers and hosts, reloads nginx and opens bursts of
sessions and requests over the limits. Every answer's status is checked
against what the endpoint documents.

Then it stops driving, closes every client connection, checks that every
backend still running belongs to a live session or pooled backend, waits
for the sessions and pools to end by their TTLs, checks that aborted
stateless calls are cancelled (their backends read notifications/cancelled)
and that the gateway still serves each transport, and measures the leaks
while it runs: live backend processes, zombies, slots held, pooled backends,
session ids still accepted, shared-dict keys left. Last it stops the gateway
and checks that nothing it started is left. Prints one table; exits 1 if any
leak or check figure is not 0 or the gateway stopped serving.

Meanwhile an HTTP fuzz (ci/httpfuzz.py) sends random requests on every
endpoint over raw sockets: random methods, headers, query strings, bodies
and chunk sizes, split and slow writes, early closes. Every status must be
one docs/mcp-bridge.md lists, the fuzz's own sessions must answer each
request they accepted exactly once, and the error log must show no worker
crash and no [alert], [crit] or [emerg] the chaos does not explain.

Every choice comes from a seeded RNG (session #i has a stream of its own), so
CHAOS_SEED=<seed> replays a run's choices; the interleaving still depends on
timing.

With --restart-on-crash the gateway restarts crashed backends (at most
MAX_RESTARTS times per session): a crash must then cost its session only the
requests in flight, warn the client, and leave the session serving, until
the crash past the bound ends it as without restarts.

Usage: ci/chaos.py [--seconds N] [--short] [--seed N] [--clients N] [--fuzz-threads N] [--no-fuzz] [--keep]
                   [--restart-on-crash]
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

import httpfuzz
from procs import all_procs, children, cmdline, read_bytes, read_proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")

WORKERS = 2
# --restart-on-crash: crashed backends of sessions are started again, this
# many times per session (then the session ends as without restarts).
RESTARTS = False
MAX_RESTARTS = 2
# Per worker and per node: low enough that the clients and the bursts meet
# them now and then (429 is not an error), with room for the Streamable
# sessions left to expire, which hold theirs for SESSION_IDLE_MS.
MAX_SESSIONS = 16
MAX_SESSIONS_PER_NODE = 28
KILL_GRACE_MS = 300
SLOW_CLIENT_MS = 1000
# Small, so that a backend that stops reading fills its inbox (twice this,
# at least 1 MiB) after a few dozen messages.
MAX_MESSAGE = 65536
KEEPALIVE_MS = 2000
BASE_URI = "/mcp"
STATUS_URI = "/-/status"
METRICS_URI = "/-/metrics"
# Streamable HTTP sessions end after this long without a request, or this
# long after they started: short, so that sessions left behind expire
# during the run and both paths run often.
SESSION_IDLE_MS = 3000
SESSION_LIFETIME_MS = 6000
# The pool of stateless requests: small, so that bursts saturate it (503
# with Retry-After), backends are recycled under load (after a few
# requests, or once idle and old), and pools shrink between bursts.
POOL_MAX_PER_KEY = 4
POOL_MAX_PER_WORKER = 3
POOL_WAIT_MS = 300
POOL_MAX_REQUESTS = 5
POOL_IDLE_MS = 1500
POOL_MAX_AGE_MS = 4000
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"
LOG_LEVEL_KEY = "io.modelcontextprotocol/logLevel"
SUBSCRIPTION_KEY = "io.modelcontextprotocol/subscriptionId"

SHORT_SECONDS = 30
# The longest any single wait on the gateway may take.
IO_TIMEOUT = 10
# The longest a request to the Streamable HTTP endpoint may wait for its
# response (the longest tool call of the chaos sleeps 4 s): keepalives do
# not count as an answer.
ANSWER_LIMIT = 10
# After the chaos: for the sessions to end (Streamable ones by their idle
# timeout or lifetime, pooled backends by theirs), and for the gateway to
# stop.
SETTLE_LIMIT = 15
STOP_LIMIT = 20
# Sessions opened at once by a burst (over both ceilings).
BURST = 40
# Normal sessions after the chaos, which must all succeed: HTTP+SSE,
# Streamable HTTP, stateless.
FINAL_SESSIONS = 8
FINAL_STREAMABLE = 6
FINAL_STATELESS = 6
# Stateless calls aborted after the chaos, whose backends must each read
# the notifications/cancelled the abort sends them.
CANCEL_PROBES = 3
# Ended session ids checked for 404 at the end (all of them if fewer).
ID_CHECKS = 1500

# Scenario name -> weight: HTTP+SSE sessions, Streamable HTTP sessions,
# stateless requests.
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
    "streamable normal": 16,
    "streamable abort": 14,
    "streamable streams": 8,
    "streamable delete race": 7,
    "streamable crash": 7,
    "streamable grandchild": 6,
    "streamable expiry": 3,
    "streamable bad input": 4,
    "stateless requests": 12,
    "stateless abort": 6,
    "stateless burst": 3,
    "stateless listen": 3,
    "stateless crash": 4,
    "stateless bad input": 3,
}

CHAOS_EVENTS = ("worker kill", "reload", "host kill", "burst", "streamable burst", "stateless burst")

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
    (re.compile(r"^\[lua\] (sse|streamable)\.lua:N: \w+\(\): mcp-bridge: host at \S+: "
                r"(closed|connection reset by peer) \["), "kills"),
    # A POST for a session of a host that was killed (its socket is left
    # behind), or that died while the POST was delivered: 404.
    (re.compile(r"^connect\(\) to unix:\S+ failed \(N: Connection refused\) \[(POST|GET|DELETE)"), "kills"),
    (re.compile(r"^send\(\) failed \(N: Broken pipe\) \[(POST|GET|DELETE)"), "kills"),
    # nginx itself, on the HTTP fuzz's malformed bodies.
    (re.compile(r"^client sent invalid chunked body"), "fuzz"),
]
# Error-log lines that are a bug whatever caused them: Lua errors, a panic,
# a process that crashed (only the chaos's SIGKILLs are expected).
BUG_LOG = re.compile(r"runtime error|lua entry thread aborted|attempt to (index|call|compare|perform|concatenate)"
                     r"|panicked|stack traceback|exited on signal (?!9$)\d+")
# Levels at which a line the chaos does not explain is a bug too.
GRAVE_LEVELS = ("emerg", "alert", "crit")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ended(Exception):
    """A session ended before the scenario was done with it. `clean`: the
    gateway ended the stream (its last chunk came), rather than it being cut.
    `status`: the HTTP status that ended it, if one did; `reported`: a
    finding says why already."""

    def __init__(self, how, clean=False, status=None, reported=False):
        super().__init__(how)
        self.how = how
        self.clean = clean
        self.status = status
        self.reported = reported


class Unanswered(Exception):
    """A request's response did not come within its deadline."""


class Stats:
    """Counters shared by every thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.count = collections.Counter()
        self.statuses = collections.Counter()
        self.findings = collections.Counter()
        self.first_session = {}
        self.session_ids = []
        self.streamable_ids = []

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

    def unexpected(self, what, session=None):
        """A status the gateway should not have answered with: a finding
        that fails the run."""
        self.add("unexpected statuses")
        self.finding(what, session)

    def session_id(self, sid):
        with self._lock:
            self.session_ids.append(sid)

    def streamable_id(self, sid):
        with self._lock:
            self.streamable_ids.append(sid)


class Exchange:
    """One HTTP/1.1 request on a raw socket of its own, then its answer: the
    head, then the body, whole (Content-Length, chunked, or up to the close)
    or event by event. The one HTTP client of the chaos run: HTTP+SSE
    streams, Streamable HTTP requests and stateless ones all use it.
    Registered with the run so that it can be cut at the end. `cut`: send
    only that many bytes of the body (a client that leaves mid-body)."""

    def __init__(self, run, method, path, headers=None, body=b"", rcvbuf=None, cut=None):
        self.run = run
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(IO_TIMEOUT)
        self.raw = b""
        self.body = b""
        # How the body is delimited, known once the head is read: "chunked",
        # "length" (self.left bytes still to come) or "close".
        self.framing = None
        self.left = 0
        # When set (monotonic), reading past it raises Unanswered.
        self.deadline = None
        self.status = None
        self.headers = {}
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{run.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body if cut is None else body[:cut])
        run.track(self)
        try:
            self.sock.connect(("127.0.0.1", run.port))
            self.sock.sendall(data)
        except OSError:
            self.close()
            raise

    def _recv(self, eof_ends=False):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Unanswered()
            self.sock.settimeout(min(left, IO_TIMEOUT))
        try:
            data = self.sock.recv(65536)
        except ConnectionError as e:
            raise Ended(f"stream cut ({type(e).__name__})") from None
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise Unanswered() from None
            raise
        if not data:
            if eof_ends:
                raise Ended("stream ended by the gateway", clean=True)
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
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self.framing = "chunked"
        elif "content-length" in headers:
            self.framing, self.left = "length", int(headers["content-length"])
        else:
            self.framing = "close"
        self.status, self.headers = status, headers
        return status, headers

    def is_event_stream(self):
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def _piece(self):
        """The next piece of the body; Ended (clean) at its end. Consumes
        nothing until a whole piece is there, so that a read timeout leaves
        the exchange as it was."""
        if self.framing == "chunked":
            while True:
                line_end = self.raw.find(b"\r\n")
                if line_end >= 0:
                    size = int(self.raw[:line_end].split(b";")[0], 16)
                    if size == 0:
                        raise Ended("stream ended by the gateway", clean=True)
                    end = line_end + 2 + size
                    if len(self.raw) >= end + 2:
                        piece, self.raw = self.raw[line_end + 2:end], self.raw[end + 2:]
                        return piece
                self._recv()
        if self.framing == "length":
            if self.left == 0:
                raise Ended("stream ended by the gateway", clean=True)
            if not self.raw:
                self._recv()
            piece, self.raw = self.raw[:self.left], self.raw[self.left:]
            self.left -= len(piece)
            return piece
        if not self.raw:
            self._recv(eof_ends=True)
        piece, self.raw = self.raw, b""
        return piece

    def read_body(self):
        """The rest of the body, whole."""
        body = self.body
        self.body = b""
        try:
            while True:
                body += self._piece()
        except Ended as e:
            if not e.clean:
                raise
        return body

    def event(self):
        """The next event's fields (comments skipped). Raises Ended at the end
        of the stream."""
        while True:
            while b"\n\n" not in self.body:
                self.body += self._piece()
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
            if ev.get("event", "message") == "message" and "data" in ev:
                try:
                    return json.loads(ev["data"])
                except ValueError:
                    raise ValueError(f"an event whose data is not JSON: {ev!r:.300}") from None

    def response(self, want):
        while True:
            msg = self.message()
            if isinstance(msg, dict) and msg.get("id") == want:
                return msg

    def message_until(self, deadline):
        """The next JSON-RPC message, or None once `deadline` (monotonic)
        has passed."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 0.25))
            try:
                return self.message()
            except TimeoutError:
                continue

    def error_text(self):
        """The `error` of a refusal's JSON body, best effort."""
        deadline = time.monotonic() + 1
        try:
            self.sock.settimeout(0.2)
            while b'"}' not in self.raw and time.monotonic() < deadline:
                self._recv()
        except (Ended, OSError):
            pass
        m = re.search(rb'"(?:error|message)":"([^"]*)"', self.raw)
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


class Stream(Exchange):
    """The GET of an HTTP+SSE session's stream."""

    def __init__(self, run, rcvbuf=None):
        super().__init__(run, "GET", f"{BASE_URI}/sse", {"Accept": "text/event-stream"}, rcvbuf=rcvbuf)


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
            raise Ended(f"POST answered {status}" if status else "POST got no answer", status=status)

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

    def expect_restart(self, pending):
        """After a crash that restart_on_crash answers: each pending request
        gets an error, the client a warning, and the session serves on (an
        echo is answered). Returns whether it did."""
        got, warned = {}, False
        try:
            while not warned or any(id_ not in got for id_ in pending):
                msg = self.stream.message()
                if not isinstance(msg, dict):
                    continue
                if msg.get("id") in pending:
                    got[msg["id"]] = msg
                elif msg.get("method") == "notifications/message" and \
                        "restarted" in str((msg.get("params") or {}).get("data")):
                    warned = True
        except Ended:
            if self.run.stopping or self.disrupted():
                raise
            self.stats.finding("a session ended at a crash restart_on_crash should have answered", self.index)
            raise Ended("stream ended at a restart", reported=True)
        for id_ in pending:
            if "error" in got[id_]:
                self.stats.add("error responses received")
            else:
                self.stats.finding("a request pending at a restart got no error", self.index)
        self.stats.add("restarts: clients warned")
        if self.echo(10 + len(pending)):
            self.stats.add("restarts: sessions that served on")
            return True
        return False

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
        # While the host tears the session down (or restarts its backend)
        # and sends the last frames.
        time.sleep(s.rng.choice([0, 0.001, 0.005, 0.02]))
        s.close()
        s.stats.add("aborts: during teardown")
        return
    if not restarted(tool, args):
        s.expect_errors(pending)
        return
    if not s.expect_restart(pending) or s.rng.random() < 0.5:
        s.close()
        return
    # Crash on until the bound: the crash past it ends the session.
    for n in range(MAX_RESTARTS):
        id_ = 20 + n
        s.call(id_, "crash", {"code": 1})
        s.stats.add("backend crashes")
        if n + 1 < MAX_RESTARTS:
            if not s.expect_restart([id_]):
                s.close()
                return
        else:
            s.stats.add("restarts: sessions crashed past the bound")
            s.expect_errors([id_])


def restarted(tool, args):
    """Whether the gateway restarts a backend that this call crashes."""
    return RESTARTS and not (tool == "crash" and args.get("code", 1) == 0)


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
        if restarted("crash", {}):
            # The grandchild goes with the crashed backend's group.
            s.expect_restart([2])
            s.close()
        else:
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
            raise Ended(f"POST answered {status}" if status else "POST got no answer", status=status)
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
            raise Ended(f"POST answered {status}" if status else "POST got no answer", status=status)
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


# ---- Streamable HTTP: sessions and stateless requests ----

class Expired(Exception):
    """A Streamable session ended by its idle timeout or lifetime before the
    scenario was done with it: not an error."""


class Answer:
    """An answer of the Streamable HTTP endpoint: status, headers, and what
    its body held (the messages before the response, and the response)."""

    def __init__(self, status, headers):
        self.status = status
        self.headers = headers
        self.sse = False
        self.messages = []
        self.response = None

    @property
    def result(self):
        return (self.response or {}).get("result")

    @property
    def error(self):
        return (self.response or {}).get("error")

    def notifications(self, method="notifications/message"):
        return [m for m in self.messages if isinstance(m, dict) and m.get("method") == method]


def is_response(msg):
    return isinstance(msg, dict) and "method" not in msg and ("result" in msg or "error" in msg)


class Client:
    """A client of the Streamable HTTP endpoint for one scenario: a session
    of LEGACY_VERSION once `initialize` has given it an id, and stateless
    requests of MODERN_VERSION. Each HTTP request is an Exchange of its own.
    Knows when its session may have ended by itself (a kill or reload, its
    idle timeout, its lifetime), so that a 404 then is no surprise."""

    def __init__(self, run, index, rng):
        self.run = run
        self.stats = run.stats
        self.index = index
        self.rng = rng
        self.started = time.monotonic()
        self.sid = None
        self.version = None
        # When initialize went out, and the last POST of the session: its
        # end by lifetime or idle timeout cannot come earlier than that
        # plus the limit.
        self.init_sent = None
        self.last_sent = None
        self.exchanges = []
        self.next_id = 1
        self.step = "open"
        self.tried = False

    def disrupted(self):
        return self.run.disrupted_since(self.started)

    def nap(self, seconds):
        """Sleeps, unless the run stops meanwhile (then raises Ended)."""
        if self.run.stop.wait(seconds):
            raise Ended("stopped")

    def may_have_expired(self):
        now = time.monotonic()
        return ((self.last_sent is not None and now - self.last_sent >= SESSION_IDLE_MS / 1000)
                or (self.init_sent is not None and now - self.init_sent >= SESSION_LIFETIME_MS / 1000))

    def new_id(self):
        id_ = self.next_id
        self.next_id += 1
        return id_

    def exchange(self, method, message=None, headers=None, session=True, raw=None, cut=None, rcvbuf=None):
        """Sends one request to the endpoint (with the session's headers
        unless `session` is false); its answer is read with `answer`."""
        h = {}
        if method == "POST":
            h["Content-Type"] = "application/json"
            h["Accept"] = "application/json, text/event-stream"
        elif method == "GET":
            h["Accept"] = "text/event-stream"
        if session and self.sid:
            h["Mcp-Session-Id"] = self.sid
            if self.version:
                h["MCP-Protocol-Version"] = self.version
            if method == "POST":
                self.last_sent = time.monotonic()
        h.update(headers or {})
        body = raw if raw is not None else json.dumps(message).encode() if message is not None else b""
        ex = Exchange(self.run, method, BASE_URI, h, body, rcvbuf=rcvbuf, cut=cut)
        self.exchanges.append(ex)
        return ex

    def done(self, ex):
        if ex in self.exchanges:
            self.exchanges.remove(ex)
        ex.close()

    def answer(self, ex, what, want=None):
        """Reads `ex`'s answer: its head, then its JSON body, or its event
        stream up to a response (which must answer `want`) or to its end.
        Records the status. The response must come within ANSWER_LIMIT."""
        ex.deadline = time.monotonic() + ANSWER_LIMIT
        try:
            status, headers = ex.head()
        except Unanswered:
            self.done(ex)
            self.hung(what, "no response head")
        a = Answer(status, headers)
        try:
            if ex.is_event_stream():
                a.sse = True
                try:
                    while True:
                        msg = ex.message()
                        if is_response(msg):
                            a.response = msg
                            break
                        a.messages.append(msg)
                except Ended as e:
                    if not e.clean:
                        raise
            else:
                body = ex.read_body()
                if body.strip():
                    try:
                        msg = json.loads(body)
                    except ValueError:
                        raise ValueError(f"{status} {headers.get('content-type')} with a body that is not JSON: "
                                         f"{body[:300]!r}") from None
                    if is_response(msg):
                        a.response = msg
        except Unanswered:
            self.hung(what, f"{status}, {'an event stream' if a.sse else 'JSON'} without the response")
        finally:
            text = (a.error or {}).get("message") if status >= 500 else None
            self.run.record_status(what, status, headers, self.index, text=text, excused=self.disrupted())
            self.done(ex)
        got = (a.response or {}).get("id")
        # A refusal of the gateway's own (Lua does not read the body) has id null.
        if a.response is not None and want is not None and got != want and (got is not None or status == 200):
            self.stats.finding(f"{what}: a response with id {a.response.get('id')!r} to the request with id {want!r}",
                               self.index)
        return a

    def hung(self, what, how):
        """A request got no response within ANSWER_LIMIT: raises."""
        if self.disrupted():
            raise Ended(f"{what}: no answer within {ANSWER_LIMIT} s")
        self.stats.add("requests hung")
        self.stats.finding(f"{what}: no answer within {ANSWER_LIMIT} s ({how}; at {self.step})", self.index)
        raise Ended(f"{what}: hung", reported=True)

    def crash_error(self, a, what):
        """The error response a request gets when its backend ends must come
        from the backend's end, not from a TTL that ended the session later
        (the crash went unnoticed until then)."""
        message = (a.error or {}).get("message", "")
        if "(backend" in message or self.disrupted():
            return True
        self.stats.add("requests hung")
        self.stats.finding(f"{what}: the backend's end went unnoticed, the error says {message[:90]!r}", self.index)
        return False

    def ended_here(self, what, status):
        """A session request answered 404 (or, after a kill, without a
        session): explained by a kill or reload, or by a TTL; raises."""
        if self.disrupted():
            raise Ended(f"{what} answered {status}", status=status)
        if status == 404 and self.may_have_expired():
            raise Expired()

    def expect(self, a, what, wanted):
        """Checks an answer's status: another one than `wanted` is an
        unexpected status (raises), unless the session may have ended."""
        if a.status in wanted:
            return
        if self.sid:
            self.ended_here(what, a.status)
        elif a.status == 503 and a.headers.get("retry-after") and self.disrupted():
            raise Ended(f"{what} answered 503", status=503)
        self.stats.unexpected(f"{what} answered {a.status}, expected {'/'.join(map(str, wanted))}", self.index)
        raise Ended(f"{what} answered {a.status}", status=a.status, reported=True)

    def responded(self, a, what, error_ok=False):
        """A request's answer must carry its response: a result, or an error
        when `error_ok` or when the session may have ended meanwhile."""
        if a.response is None:
            if self.disrupted():
                raise Ended(f"{what}: no response")
            self.stats.unexpected(f"{what} answered {a.status} without a response", self.index)
            raise Ended(f"{what}: no response", reported=True)
        if a.error is not None and not error_ok:
            if self.sid:
                self.ended_here(what, a.status)
            if self.disrupted():
                raise Ended(f"{what}: error response")
            self.stats.finding(f"{what}: error response {a.error.get('message', '')[:80]!r}", self.index)
            raise Ended(f"{what}: error response", reported=True)

    # -- sessions --

    def initialize(self, cut=None):
        """Starts a session; False when the gateway refused it (429, or 503
        after a kill or reload)."""
        self.step = "initialize"
        self.stats.add("sessions run")
        self.stats.add("streamable: initialize sent")
        message = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                              "clientInfo": {"name": "chaos", "version": "1"}}}
        self.init_sent = time.monotonic()
        a = self.answer(self.exchange("POST", message), "POST /mcp initialize", want=0)
        if a.status == 429:
            self.stats.add("429s")
            time.sleep(self.rng.uniform(0.02, 0.2))
            return False
        self.expect(a, "POST /mcp initialize", (200,))
        self.responded(a, "POST /mcp initialize")
        sid = a.headers.get("mcp-session-id")
        if not sid:
            self.stats.unexpected("POST /mcp initialize answered 200 without Mcp-Session-Id", self.index)
            raise Ended("no session id", reported=True)
        self.sid = sid
        self.version = a.result.get("protocolVersion") if self.rng.random() < 0.9 else None
        self.last_sent = self.init_sent
        self.stats.streamable_id(sid)
        self.stats.add("streamable: sessions started")
        self.step = "initialized"
        return True

    def notify(self, method="notifications/initialized", params=None):
        self.step = method
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        a = self.answer(self.exchange("POST", message), "POST /mcp notification")
        self.expect(a, "POST /mcp notification", (202,))

    def send(self, method, params=None, id_=None, cut=None):
        """Sends a request of the session without reading its answer."""
        id_ = self.new_id() if id_ is None else id_
        message = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params or {}}
        return self.exchange("POST", message, cut=cut), id_

    def request(self, method, params=None, id_=None, error_ok=False):
        self.step = method
        ex, id_ = self.send(method, params, id_)
        return self.finish(ex, id_, method, error_ok)

    def finish(self, ex, id_, method, error_ok=False):
        """Reads the answer of a request sent with `send` and checks it."""
        what = f"POST /mcp {method}"
        a = self.answer(ex, what, want=id_)
        self.expect(a, what, (200,))
        self.responded(a, what, error_ok)
        if a.sse:
            self.stats.add("streamable: event-stream replies")
        return a

    def call(self, tool, args, id_=None, error_ok=False, meta=None):
        params = {"name": tool, "arguments": args}
        if meta:
            params["_meta"] = meta
        self.step = f"tools/call {tool}"
        ex, id_ = self.send("tools/call", params, id_)
        return self.finish(ex, id_, "tools/call", error_ok)

    def echo(self, id_=None):
        text = f"chaos {self.index} {self.rng.getrandbits(64):016x}"
        a = self.call("echo", {"text": text}, id_)
        self.check_echo(a, text)

    def check_echo(self, a, text):
        got = ((a.result or {}).get("content") or [{}])[0].get("text")
        if got != text:
            self.stats.finding(f"echo returned {str(got)[:60]!r} instead of the text sent", self.index)

    def notifying_call(self, stateless=False):
        """A call whose reply must be an event stream: notifications, then
        the result."""
        if self.rng.random() < 0.5:
            n, tool, args = 1, "notify", {"text": f"note {self.index}"}
        else:
            n = self.rng.randint(2, 60)
            tool, args = "flood", {"count": n, "size": self.rng.choice([16, 64, 1000])}
        if stateless:
            a = self.stateless("tools/call", {"name": tool, "arguments": args}, log_level="info")
            if a.status != 200:
                return a
        else:
            a = self.call(tool, args)
        got = len(a.notifications())
        if stateless and got > n:
            # A pooled backend serves one call at a time: the others were
            # an earlier call's (one its client gave up on).
            self.stats.add("stateless: replies with another call's notifications")
        if not a.sse or got != n:
            self.stats.finding(f"a {'stateless ' if stateless else ''}reply preceded by {n} notification(s) came "
                               f"{'as an event stream' if a.sse else 'as JSON'} with {got}", self.index)
        else:
            self.stats.add("stateless: event-stream replies" if stateless
                           else "streamable: notifications before a result")
        return a

    def open_get(self):
        """Opens the session's standalone stream; returns its Exchange."""
        self.step = "GET"
        ex = self.exchange("GET")
        status, headers = ex.head()
        self.run.record_status("GET /mcp", status, headers, self.index, excused=self.disrupted())
        if status != 200:
            self.done(ex)
            self.expect(Answer(status, headers), "GET /mcp", (200,))
        if not ex.is_event_stream():
            self.done(ex)
            self.stats.unexpected(f"GET /mcp answered 200 with {headers.get('content-type')}", self.index)
            raise Ended("GET not an event stream", reported=True)
        self.stats.add("streamable: GET streams opened")
        return ex

    def stream_ends(self, ex, what, limit=IO_TIMEOUT):
        """Reads a stream until the gateway ends it; records a finding if it
        is cut instead, or does not end within `limit` seconds. Returns the
        messages it carried."""
        messages = []
        deadline = time.monotonic() + limit
        try:
            while True:
                msg = ex.message_until(deadline)
                if msg is None:
                    break
                messages.append(msg)
            if not self.disrupted():
                self.stats.finding(f"{what}: the stream did not end within {limit:g} s", self.index)
        except Ended as e:
            if e.clean:
                self.stats.add(f"streamable: {what}, stream ended")
            elif self.disrupted() or self.run.stopping:
                raise
            else:
                self.stats.finding(f"{what}: the stream was cut instead of ended", self.index)
        finally:
            self.done(ex)
        return messages

    def delete(self):
        self.step = "DELETE"
        a = self.answer(self.exchange("DELETE"), "DELETE /mcp")
        self.expect(a, "DELETE /mcp", (200,))
        self.stats.add("streamable: DELETEs")

    def check_gone(self, how, certain=True):
        """A request of any kind to an ended session must get 404. `certain`:
        the session surely ended (a kill or reload cannot make it live on),
        so a 2xx is wrong whatever happened meanwhile."""
        kind = self.rng.choice(["request", "notification", "GET", "DELETE"])
        self.step = f"{kind} to a {how} session"
        if kind == "request":
            ex = self.send("tools/list")[0]
        elif kind == "notification":
            ex = self.exchange("POST", {"jsonrpc": "2.0", "method": "notifications/initialized"})
        else:
            ex = self.exchange(kind)
        status, headers = ex.head()
        self.done(ex)
        what = f"{'POST' if kind in ('request', 'notification') else kind} /mcp, ended session"
        self.run.record_status(what, status, headers, self.index, excused=self.disrupted())
        self.stats.add("streamable: ended sessions checked for 404")
        if status == 404:
            return
        if self.disrupted() and not (certain and 200 <= status < 300):
            raise Ended(f"{what} answered {status}", status=status)
        since = f", {time.monotonic() - self.last_sent:.1f} s after its last POST" if self.last_sent else ""
        self.stats.unexpected(f"a {kind} to a {how} session answered {status}, expected 404{since}", self.index)

    # -- stateless --

    def stateless_message(self, method, params=None, id_=None, log_level=None, meta=None):
        id_ = self.new_id() if id_ is None else id_
        envelope = {VERSION_KEY: MODERN_VERSION, CAPABILITIES_KEY: {}}
        if log_level:
            envelope[LOG_LEVEL_KEY] = log_level
        if meta is not None:
            envelope = meta
        params = dict(params or {})
        params["_meta"] = envelope
        return {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}, id_

    def stateless_send(self, method, params=None, log_level=None, headers=None, cut=None, meta=None):
        message, id_ = self.stateless_message(method, params, log_level=log_level, meta=meta)
        h = {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": method}
        if method == "tools/call":
            h["Mcp-Name"] = message["params"]["name"]
        h.update(headers or {})
        self.stats.add("stateless: requests sent")
        return self.exchange("POST", message, {k: v for k, v in h.items() if v is not None},
                             session=False, cut=cut), id_

    def stateless(self, method, params=None, log_level=None, error_ok=False):
        """A stateless request; its answer. A 503 with Retry-After (the pool
        is saturated) is counted and returned."""
        self.step = f"stateless {method} {(params or {}).get('name', '')}".strip()
        ex, id_ = self.stateless_send(method, params, log_level)
        return self.stateless_finish(ex, id_, method, error_ok)

    def stateless_finish(self, ex, id_, method, error_ok=False):
        what = f"POST /mcp stateless {method}"
        a = self.answer(ex, what, want=id_)
        if a.status == 503 and a.headers.get("retry-after"):
            self.stats.add("stateless: 503 on a saturated pool")
            return a
        self.expect(a, what, (200,))
        self.responded(a, what, error_ok)
        self.stats.add("stateless: answered")
        return a

    def close(self):
        for ex in self.exchanges:
            rst = self.rng.random() < 0.3
            if rst and ex.sock.fileno() >= 0:
                self.stats.add("resets")
            ex.close(rst=rst)
        self.exchanges = []


def pause(c, choices=(0, 0, 0.001, 0.005, 0.02)):
    time.sleep(c.rng.choice(choices))


def streamable_normal(c):
    if not c.initialize():
        return
    c.notify()
    if c.rng.random() < 0.3:
        a = c.request("tools/list")
        if not (a.result or {}).get("tools"):
            c.stats.finding("tools/list returned no tools", c.index)
    c.echo()
    if c.rng.random() < 0.5:
        c.notifying_call()
    if c.rng.random() < 0.2:
        c.request("ping")
    if c.rng.random() < 0.95:
        c.delete()
        if c.rng.random() < 0.7:
            c.check_gone("deleted")
    else:
        c.stats.add("streamable: left to expire")
    c.close()
    c.stats.add("streamable: completed normally")


REPLY_ROUTED = "streamable: notifications routed to the request's reply"
STREAMABLE_ABORTS = ["mid-initialize", "after initialize", "mid-request", "mid-event-stream", "with a GET open",
                     "mid-POST body"]


def streamable_abort(c):
    stage = c.rng.choice(STREAMABLE_ABORTS)
    c.step = f"abort {stage}"
    if stage == "mid-initialize":
        c.stats.add("sessions run")
        message = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                              "clientInfo": {"name": "chaos", "version": "1"}}}
        body = json.dumps(message).encode()
        cut = c.rng.choice([None, None, c.rng.randint(0, len(body) - 1)])
        ex = c.exchange("POST", raw=body, cut=cut)
        pause(c, (0, 0.001, 0.005, 0.02, 0.05))
        if c.rng.random() < 0.3:
            # Sometimes the answer has come by now: the id goes to the
            # end-of-run check (the session must expire).
            try:
                ex.sock.settimeout(0.05)
                ex.head()
                if ex.headers.get("mcp-session-id"):
                    c.stats.streamable_id(ex.headers["mcp-session-id"])
            except (Ended, OSError, ValueError, IndexError):
                pass
        c.close()
        c.stats.add("streamable aborts: mid-initialize")
        return
    if not c.initialize():
        return
    if c.rng.random() < 0.7:
        c.notify()
    if stage == "mid-request":
        tool, args = c.rng.choice([
            ("sleep", {"ms": c.rng.randint(50, 2500)}),
            ("echo", {"text": "x" * c.rng.randint(1, 20000)}),
            ("spawn_grandchild", {"setsid": c.rng.random() < 0.5}),
        ])
        c.step = f"tools/call {tool}, then abort"
        ex, _ = c.send("tools/call", {"name": tool, "arguments": args})
        pause(c, (0, 0.001, 0.01, 0.1))
        c.done(ex)
    elif stage == "mid-event-stream":
        c.step = "flood, then abort"
        ex, _ = c.send("tools/call", {"name": "flood", "arguments": {"count": c.rng.randint(50, 400), "size": 200}})
        status, headers = ex.head()
        c.run.record_status("POST /mcp tools/call", status, headers, c.index, excused=c.disrupted())
        if status != 200:
            c.done(ex)
            c.expect(Answer(status, headers), "POST /mcp tools/call", (200,))
        for _ in range(c.rng.randint(0, 5)):
            ex.message()
        c.done(ex)
    elif stage == "with a GET open":
        c.open_get()
        if c.rng.random() < 0.5:
            c.step = "sleep with a GET open, then abort"
            c.send("tools/call", {"name": "sleep", "arguments": {"ms": c.rng.randint(10, 1000)}})
            pause(c)
        c.close()
        c.stats.add(f"streamable aborts: {stage}")
        c.stats.add("streamable: left to expire")
        return
    elif stage == "mid-POST body":
        c.step = "POST cut mid-body"
        ex, _ = c.send("tools/call", {"name": "echo", "arguments": {"text": "y" * 30000}},
                       cut=c.rng.randint(0, 30000))
        pause(c)
        c.done(ex)
    c.stats.add(f"streamable aborts: {stage}")
    c.tried = True
    # The session must not have noticed: it serves on, then ends one way
    # or the other.
    if stage != "after initialize" and c.rng.random() < 0.6:
        c.echo()
    if c.rng.random() < 0.8:
        c.delete()
    else:
        c.stats.add("streamable: left to expire")
    c.close()


def streamable_streams(c):
    """The standalone GET stream (sometimes replaced by a second), messages
    on exactly one stream, concurrent requests with one client id."""
    if not c.initialize():
        return
    c.notify()
    get = c.open_get()
    if c.rng.random() < 0.4:
        second = c.open_get()
        c.stream_ends(get, "GET replaced by a second GET", limit=5)
        c.stats.add("streamable: GETs replaced")
        get = second
    if c.rng.random() < 0.6:
        # Two requests in flight, then a notification from a third: it goes
        # to the GET stream, or (if the third got there first) to the
        # third's own reply; never to none.
        c.step = "two sleeps and a notify"
        sleeps = [c.send("tools/call", {"name": "sleep", "arguments": {"ms": 400}}) for _ in range(2)]
        text = f"routed {c.index} {c.rng.getrandbits(32):08x}"
        a = c.call("notify", {"text": text})
        own = [m for m in a.notifications() if m.get("params", {}).get("data") == text]
        if not own:
            deadline = time.monotonic() + 5
            while True:
                msg = get.message_until(deadline)
                if msg is None:
                    if not c.disrupted():
                        c.stats.finding("a notification reached neither its request's reply nor the GET stream",
                                        c.index)
                    break
                if isinstance(msg, dict) and msg.get("params", {}).get("data") == text:
                    c.stats.add("streamable: notifications routed to the GET stream")
                    break
        else:
            c.stats.add(REPLY_ROUTED)
        for ex, id_ in sleeps:
            c.finish(ex, id_, "tools/call")
    if c.rng.random() < 0.6:
        # Several requests at once with the same client id.
        c.step = "duplicate client ids"
        id_ = c.rng.choice([1, "same", 0])
        texts = [f"dup {c.index} {i} {c.rng.getrandbits(32):08x}" for i in range(c.rng.randint(2, 5))]
        sent = [(c.send("tools/call", {"name": "echo", "arguments": {"text": t}}, id_=id_)[0], t) for t in texts]
        for ex, text in sent:
            c.check_echo(c.finish(ex, id_, "tools/call"), text)
        c.stats.add("streamable: duplicate client ids answered", len(texts))
    if c.rng.random() < 0.9:
        # The GET stream must end with the session.
        c.delete()
        c.stream_ends(get, "GET open at DELETE", limit=5)
        c.check_gone("deleted")
    else:
        c.stats.add("streamable: left to expire")
    c.close()


def streamable_delete_race(c):
    if not c.initialize():
        return
    c.notify()
    variant = c.rng.choice(["in-flight", "concurrent", "double"])
    c.step = f"DELETE race: {variant}"
    c.tried = True
    deleted = True
    if variant == "in-flight":
        ex, id_ = c.send("tools/call", {"name": "sleep", "arguments": {"ms": c.rng.randint(1000, 4000)}})
        time.sleep(c.rng.uniform(0.02, 0.3))
        c.delete()
        a = c.answer(ex, "POST /mcp tools/call (DELETE raced)", want=id_)
        if a.status == 200 and a.error is not None:
            c.stats.add("streamable: in-flight requests answered with an error at DELETE")
        elif a.status == 200 and a.response is None and not c.disrupted():
            c.stats.unexpected("an in-flight request answered 200 without a response at DELETE", c.index)
        elif a.status not in (200, 404) and not c.disrupted():
            c.stats.unexpected(f"an in-flight request answered {a.status} at DELETE", c.index)
    elif variant == "concurrent":
        ex, id_ = c.send("tools/call", {"name": "echo", "arguments": {"text": "race"}})
        c.delete()
        a = c.answer(ex, "POST /mcp tools/call (DELETE raced)", want=id_)
        if a.status not in (200, 404) and not c.disrupted():
            c.stats.unexpected(f"a request racing DELETE answered {a.status}", c.index)
    else:
        both = [c.exchange("DELETE") for _ in range(2)]
        statuses = sorted(c.answer(ex, "DELETE /mcp (two at once)").status for ex in both)
        if statuses not in ([200, 200], [200, 404]) and not c.disrupted():
            c.stats.unexpected(f"two DELETEs at once answered {statuses}", c.index)
        c.stats.add("streamable: DELETEs", 2)
        deleted = 200 in statuses
    c.stats.add("streamable: DELETE races")
    c.check_gone("deleted", certain=deleted)
    c.close()


def streamable_crash(c):
    if not c.initialize():
        return
    c.notify()
    get = c.open_get() if c.rng.random() < 0.5 else None
    pending = []
    if c.rng.random() < 0.5:
        pending.append(c.send("tools/call", {"name": "sleep", "arguments": {"ms": 60000}}))
        time.sleep(0.05)
    if c.rng.random() < 0.5:
        tool, args = "crash", {"code": c.rng.choice([0, 1, 3])}
    else:
        tool, args = "kill_self", {"signal": c.rng.choice(["SIGKILL", "SIGSEGV", "SIGABRT", "SIGTERM"])}
    c.step = f"tools/call {tool}"
    crash = c.send("tools/call", {"name": tool, "arguments": args})
    pending.append(crash)
    c.stats.add("backend crashes")
    c.tried = True
    if c.rng.random() < 0.3:
        pause(c)
        c.close()
        c.stats.add("streamable aborts: during teardown")
        return
    if restarted(tool, args):
        streamable_restarted(c, pending, get)
        return
    crashed = False
    for ex, id_ in pending:
        a = c.answer(ex, "POST /mcp tools/call (backend crashed)", want=id_)
        if a.status == 200 and a.error is not None:
            c.stats.add("error responses received")
            c.crash_error(a, "a request pending when the backend crashed")
            crashed = crashed or ex is crash[0]
        elif a.status == 404 and ex is not crash[0]:
            # Sent before the crash, it reached the host after the end.
            c.stats.add("streamable: requests that arrived after a crash (404)")
        elif c.disrupted():
            c.stats.add("error responses missing after a kill")
        elif a.status != 200:
            c.stats.unexpected(f"a request pending when the backend crashed answered {a.status}", c.index)
        else:
            c.stats.add("error responses missing")
            c.stats.finding("no error response for a pending request when the backend crashed", c.index)
    if get:
        c.stream_ends(get, "GET open at a crash", limit=5)
    c.check_gone("crashed", certain=crashed)
    c.close()


def streamable_restarted(c, pending, get):
    """restart_on_crash answered the crash: each pending request gets an
    error, the warning comes on the GET stream (or the next GET), and the
    session serves on until DELETE."""
    for ex, id_ in pending:
        a = c.answer(ex, "POST /mcp tools/call (backend restarted)", want=id_)
        if a.status == 200 and a.error is not None:
            c.stats.add("error responses received")
        elif c.disrupted():
            c.stats.add("error responses missing after a kill")
            c.close()
            return
        else:
            c.stats.finding(f"a request pending at a restart answered {a.status} without an error", c.index)
    get = get or c.open_get()
    deadline = time.monotonic() + IO_TIMEOUT
    try:
        while True:
            msg = get.message_until(deadline)
            if msg is None:
                if not c.disrupted():
                    c.stats.finding("no warning on the GET stream after a restart", c.index)
                break
            if isinstance(msg, dict) and msg.get("method") == "notifications/message":
                c.stats.add("restarts: clients warned")
                break
    except Ended:
        if not (c.disrupted() or c.run.stopping or c.may_have_expired()):
            c.stats.finding("the GET stream ended at a restart", c.index)
        c.done(get)
        c.close()
        return
    c.done(get)
    c.echo()
    c.stats.add("restarts: sessions that served on")
    c.delete()
    c.close()


def streamable_grandchild(c):
    if not c.initialize():
        return
    how = {"setsid": c.rng.random() < 0.5, "double_fork": c.rng.random() < 0.4,
           "ignore_sigterm": c.rng.random() < 0.5}
    c.call("spawn_grandchild", how)
    c.stats.add("grandchildren started")
    for flag, on in how.items():
        if on:
            c.stats.add(f"grandchildren: {flag}")
    end = c.rng.choice(["delete", "abandon", "crash", "crash"])
    if end == "delete":
        c.delete()
    elif end == "crash":
        # The grandchild holds the backend's stdout: its exit must be
        # noticed all the same.
        a = c.call("crash", {}, error_ok=True)
        c.stats.add("backend crashes")
        if restarted("crash", {}):
            # The grandchild goes with the crashed backend's group; the
            # session serves on.
            if a.error is not None:
                c.stats.add("error responses received")
            c.echo()
            c.stats.add("restarts: sessions that served on")
            c.delete()
        elif a.error is not None and c.crash_error(a, "a crash with a grandchild left"):
            c.stats.add("error responses received")
            c.check_gone("crashed")
    else:
        c.stats.add("streamable: left to expire")
    c.close()


def streamable_expiry(c):
    if not c.initialize():
        return
    c.notify()
    kind = c.rng.choice(["idle", "idle with a GET open", "lifetime"])
    c.step = f"waiting for the {kind} end"
    c.tried = True
    idle = SESSION_IDLE_MS / 1000
    if kind == "idle":
        c.nap(idle + c.rng.uniform(1.0, 1.5))
        c.check_gone("expired (idle)")
    elif kind == "idle with a GET open":
        get = c.open_get()
        began = c.last_sent
        c.stream_ends(get, "GET open at the idle timeout", limit=idle + 4)
        if time.monotonic() < began + idle and not c.disrupted():
            c.stats.finding(f"a GET stream ended {time.monotonic() - began:.1f} s after the last request, "
                            f"before the idle timeout", c.index)
        c.check_gone("expired (idle, GET open)")
    else:
        # Busy all along: only the lifetime ends it.
        life = SESSION_LIFETIME_MS / 1000
        while True:
            ex, id_ = c.send("ping")
            a = c.answer(ex, "POST /mcp ping (until the lifetime)", want=id_)
            now = time.monotonic()
            if a.status == 404 or (a.status == 200 and a.error is not None):
                if now < c.init_sent + life and not c.disrupted():
                    c.stats.finding(f"a busy session ended {now - c.init_sent:.1f} s after initialize, before "
                                    f"its lifetime ({a.status}, {(a.error or {}).get('message')})", c.index)
                break
            if a.status != 200 and not c.disrupted():
                c.stats.unexpected(f"a ping in a busy session answered {a.status}", c.index)
                break
            if now > c.init_sent + life + 4:
                if not c.disrupted():
                    c.stats.finding("a busy session outlived its lifetime by 4 s", c.index)
                break
            c.nap(0.7)
        c.check_gone("expired (lifetime)")
    c.stats.add(f"streamable: ended by {kind.split(' with')[0]}, then 404")
    c.close()


STREAMABLE_BAD_INPUTS = {
    "wrong Accept": 406,
    "wrong Content-Type": 415,
    "batch": 400,
    "malformed JSON": 400,
    "no session id": 400,
    "GET without a session id": 400,
    "GET with a wrong Accept": 406,
    "unknown session id": 404,
    "unknown session id on a live host": 404,
    "unsupported MCP-Protocol-Version": 400,
    "initialize again": 400,
    "PUT": 405,
    "oversized body": 413,
}


def streamable_bad_input(c):
    if not c.initialize():
        return
    c.notify()
    for name in c.rng.sample(sorted(STREAMABLE_BAD_INPUTS), c.rng.randint(1, 3)):
        c.step = f"bad input: {name}"
        request = {"jsonrpc": "2.0", "id": 9, "method": "tools/list", "params": {}}
        method, message, raw, headers, session = "POST", request, None, {}, True
        if name == "wrong Accept":
            headers["Accept"] = "application/json"
        elif name == "wrong Content-Type":
            headers["Content-Type"] = "text/plain"
        elif name == "batch":
            message = [request]
        elif name == "malformed JSON":
            raw = b'{"jsonrpc": "2.0", "id": 9, "method": '
        elif name == "no session id":
            session = False
        elif name == "GET without a session id":
            method, message, session = "GET", None, False
        elif name == "GET with a wrong Accept":
            method, message, headers["Accept"] = "GET", None, "application/json"
        elif name == "unknown session id":
            headers["Mcp-Session-Id"] = f"{c.rng.getrandbits(192):048x}"
        elif name == "unknown session id on a live host":
            headers["Mcp-Session-Id"] = c.sid[:16] + f"{c.rng.getrandbits(128):032x}"
        elif name == "unsupported MCP-Protocol-Version":
            method, message, headers["MCP-Protocol-Version"] = "GET", None, "1999-01-01"
        elif name == "initialize again":
            message = {"jsonrpc": "2.0", "id": 9, "method": "initialize",
                       "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                                  "clientInfo": {"name": "chaos", "version": "1"}}}
        elif name == "PUT":
            method = "PUT"
        else:
            message = {"jsonrpc": "2.0", "method": "notifications/chaos",
                       "params": {"pad": "x" * MAX_MESSAGE}}
        ex = c.exchange(method, message, headers, session=session, raw=raw)
        status, _ = ex.head()
        c.done(ex)
        expected = STREAMABLE_BAD_INPUTS[name]
        c.stats.status("POST /mcp (bad input)" if method == "POST" else f"{method} /mcp (bad input)", status)
        c.stats.add("bad input sent")
        if status == expected:
            c.stats.add("bad input answered as documented")
        elif c.disrupted() or (status == 404 and c.may_have_expired()):
            c.stats.add("interrupted by a kill or reload")
            c.stats.add("cut short: streamable bad input")
            return
        else:
            c.stats.unexpected(f"Streamable HTTP {name} answered {status}, expected {expected}", c.index)
    c.echo()
    c.delete()
    c.close()


def stateless_requests(c):
    for _ in range(c.rng.randint(1, 4)):
        kind = c.rng.choice(["server/discover", "tools/list", "echo", "add", "event stream"])
        a = None
        if kind == "server/discover":
            a = c.stateless("server/discover")
            if a.status == 200 and MODERN_VERSION not in (a.result or {}).get("supportedVersions", []):
                c.stats.finding("server/discover does not list 2026-07-28", c.index)
        elif kind == "tools/list":
            a = c.stateless("tools/list")
            if a.status == 200 and not (a.result or {}).get("tools"):
                c.stats.finding("stateless tools/list returned no tools", c.index)
        elif kind == "echo":
            text = f"stateless {c.index} {c.rng.getrandbits(64):016x}"
            a = c.stateless("tools/call", {"name": "echo", "arguments": {"text": text}})
            if a.status == 200:
                c.check_echo(a, text)
        elif kind == "add":
            x, y = c.rng.randint(-1000, 1000), c.rng.randint(-1000, 1000)
            a = c.stateless("tools/call", {"name": "add", "arguments": {"a": x, "b": y}})
            if a.status == 200 and ((a.result or {}).get("content") or [{}])[0].get("text") != str(x + y):
                c.stats.finding("stateless add returned a wrong sum", c.index)
        else:
            a = c.notifying_call(stateless=True)
        if a is not None and a.status == 503:
            # What Retry-After asks for, shortened: the chaos wants load.
            time.sleep(c.rng.uniform(0.02, 0.2))
            break
    c.stats.add("stateless: scenarios completed")


def stateless_abort(c):
    variant = c.rng.choice(["mid-call", "mid-call", "mid-event-stream", "mid-body", "at once"])
    c.step = f"stateless abort {variant}"
    if variant == "mid-event-stream":
        ex, _ = c.stateless_send("tools/call", {"name": "flood", "arguments": {"count": 300, "size": 200}},
                                 log_level="info")
        status, _ = ex.head()
        if status == 200:
            for _ in range(c.rng.randint(0, 5)):
                ex.message()
    elif variant == "mid-body":
        message, _ = c.stateless_message("tools/call", {"name": "echo", "arguments": {"text": "z" * 20000}})
        body = json.dumps(message).encode()
        ex, _ = c.stateless_send("tools/call", {"name": "echo", "arguments": {"text": "z" * 20000}},
                                 cut=c.rng.randint(0, len(body) - 1))
        pause(c)
    else:
        ms = c.rng.randint(300, 3000)
        ex, _ = c.stateless_send("tools/call", {"name": "sleep", "arguments": {"ms": ms}})
        if variant == "mid-call":
            time.sleep(c.rng.uniform(0, 0.2))
    c.close()
    c.stats.add(f"stateless aborts: {variant}")
    if variant == "mid-event-stream" and c.rng.random() < 0.5:
        # A client that gives up and asks again, often of the same pooled
        # backend (the pool lends the one freed last): its reply must hold
        # its own notifications only.
        c.notifying_call(stateless=True)


def stateless_burst(c, n=None):
    n = n or c.rng.randint(POOL_MAX_PER_WORKER * WORKERS + 1, 3 * POOL_MAX_PER_WORKER * WORKERS)
    c.step = f"burst of {n}"
    sent = [c.stateless_send("tools/call", {"name": "sleep", "arguments": {"ms": c.rng.randint(50, 400)}})
            for _ in range(n)]
    for ex, id_ in sent:
        a = c.stateless_finish(ex, id_, "tools/call")
        if a.status == 200:
            c.stats.add("stateless: burst calls served")
    c.stats.add("stateless: bursts")


def stateless_listen(c):
    c.step = "subscriptions/listen"
    ex, id_ = c.stateless_send("subscriptions/listen", {"notifications": {"toolsListChanged": True}})
    status, headers = ex.head()
    c.run.record_status("POST /mcp stateless subscriptions/listen", status, headers, c.index, excused=c.disrupted())
    if status == 503 and headers.get("retry-after"):
        c.stats.add("stateless: 503 on a saturated pool")
        c.close()
        return
    c.expect(Answer(status, headers), "POST /mcp stateless subscriptions/listen", (200,))
    first = ex.message()
    if first.get("method") != "notifications/subscriptions/acknowledged" or \
            first.get("params", {}).get("_meta", {}).get(SUBSCRIPTION_KEY) != id_:
        c.stats.finding(f"subscriptions/listen began with {json.dumps(first)[:80]}", c.index)
    c.stats.add("stateless: listen streams opened")
    c.tried = True
    hold = time.monotonic() + c.rng.uniform(0.2, 2.5)
    if c.rng.random() < 0.5:
        c.stateless("tools/call", {"name": "echo", "arguments": {"text": "meanwhile"}})
    ex.sock.settimeout(0.2)
    while ex.message_until(hold) is not None:
        pass
    c.close()
    c.stats.add("stateless: listen streams abandoned")


def stateless_crash(c):
    kind = c.rng.choice(["crash", "kill_self", "grandchild"])
    if kind == "grandchild":
        how = {"setsid": c.rng.random() < 0.5, "double_fork": c.rng.random() < 0.4,
               "ignore_sigterm": c.rng.random() < 0.5}
        a = c.stateless("tools/call", {"name": "spawn_grandchild", "arguments": how})
        if a.status == 200:
            c.stats.add("grandchildren started")
            c.stats.add("stateless: grandchildren of pooled backends")
            for flag, on in how.items():
                if on:
                    c.stats.add(f"grandchildren: {flag}")
        if a.status != 200 or c.rng.random() < 0.5:
            return
        # Often on the same pooled backend (the pool lends the one freed
        # last): it crashes while its grandchild holds its stdout.
        kind = "crash"
    args = {"code": c.rng.choice([0, 1, 3])} if kind == "crash" else \
        {"signal": c.rng.choice(["SIGKILL", "SIGSEGV", "SIGTERM"])}
    a = c.stateless("tools/call", {"name": kind, "arguments": args}, error_ok=True)
    if a.status == 200:
        c.stats.add("backend crashes")
        if a.error is not None:
            c.stats.add("stateless: crashes answered with an error")
            c.crash_error(a, "a stateless call whose backend died")
        else:
            c.stats.finding(f"a stateless call whose backend died got a result: {json.dumps(a.result)[:80]}",
                            c.index)


STATELESS_BAD_INPUTS = {
    "Mcp-Method mismatch": 400,
    "Mcp-Method missing": 400,
    "Mcp-Name mismatch": 400,
    "Mcp-Name missing": 400,
    "MCP-Protocol-Version mismatch": 400,
    "MCP-Protocol-Version missing": 400,
    "unsupported version": 400,
    "no client capabilities": 400,
    "method not served": 404,
}


def stateless_bad_input(c):
    for name in c.rng.sample(sorted(STATELESS_BAD_INPUTS), c.rng.randint(1, 3)):
        c.step = f"stateless bad input: {name}"
        method, params, headers, meta = "tools/call", {"name": "echo", "arguments": {"text": "bad"}}, {}, None
        if name == "Mcp-Method mismatch":
            headers["Mcp-Method"] = "tools/list"
        elif name == "Mcp-Method missing":
            headers["Mcp-Method"] = None
        elif name == "Mcp-Name mismatch":
            headers["Mcp-Name"] = "add"
        elif name == "Mcp-Name missing":
            headers["Mcp-Name"] = None
        elif name == "MCP-Protocol-Version mismatch":
            headers["MCP-Protocol-Version"] = LEGACY_VERSION
        elif name == "MCP-Protocol-Version missing":
            headers["MCP-Protocol-Version"] = None
        elif name == "unsupported version":
            headers["MCP-Protocol-Version"] = "2099-01-01"
            meta = {VERSION_KEY: "2099-01-01", CAPABILITIES_KEY: {}}
        elif name == "no client capabilities":
            meta = {VERSION_KEY: MODERN_VERSION}
        else:
            method, params = "resources/subscribe", {"uri": "file:///x"}
        ex, _ = c.stateless_send(method, params, headers=headers, meta=meta)
        status, _ = ex.head()
        c.done(ex)
        c.stats.status("POST /mcp stateless (bad input)", status)
        c.stats.add("bad input sent")
        expected = STATELESS_BAD_INPUTS[name]
        if status == expected:
            c.stats.add("bad input answered as documented")
        elif c.disrupted():
            c.stats.add("interrupted by a kill or reload")
            c.stats.add("cut short: stateless bad input")
            return
        else:
            c.stats.unexpected(f"stateless {name} answered {status}, expected {expected}", c.index)
    c.stateless("tools/list")


STREAMABLE_SCENARIOS = {
    "streamable normal": streamable_normal,
    "streamable abort": streamable_abort,
    "streamable streams": streamable_streams,
    "streamable delete race": streamable_delete_race,
    "streamable crash": streamable_crash,
    "streamable grandchild": streamable_grandchild,
    "streamable expiry": streamable_expiry,
    "streamable bad input": streamable_bad_input,
    "stateless requests": stateless_requests,
    "stateless abort": stateless_abort,
    "stateless burst": stateless_burst,
    "stateless listen": stateless_listen,
    "stateless crash": stateless_crash,
    "stateless bad input": stateless_bad_input,
}
SCENARIO_FUNCS.update(STREAMABLE_SCENARIOS)


# ---- processes ----

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
               "--metrics-uri", METRICS_URI,
               "--session-idle-timeout-ms", str(SESSION_IDLE_MS),
               "--session-max-lifetime-ms", str(SESSION_LIFETIME_MS),
               "--pool-max-per-key", str(POOL_MAX_PER_KEY), "--pool-max-per-worker", str(POOL_MAX_PER_WORKER),
               "--pool-wait-ms", str(POOL_WAIT_MS), "--pool-max-requests", str(POOL_MAX_REQUESTS),
               "--pool-idle-timeout-ms", str(POOL_IDLE_MS), "--pool-max-age-ms", str(POOL_MAX_AGE_MS),
               "--prefix", self.prefix, "--env", f"MCP_FIXTURE_PID_DIR={self.pid_dir}"]
        if RESTARTS:
            cmd += ["--restart-on-crash", "--max-restarts", str(MAX_RESTARTS)]
        cmd += ["--", os.path.join(BIN, "mcp-fixture")]
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
                for path in (name, f"{pid}.term", f"{pid}.cancelled", f"{pid}.lifecycle"):
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


def ends_by_reason(port):
    """{(transport, reason): sessions ended}, from the gateway's metrics."""
    ends = collections.Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        conn.request("GET", METRICS_URI, headers={"Connection": "close"})
        text = conn.getresponse().read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ends
    finally:
        conn.close()
    for m in re.finditer(r"^mcp_bridge_sessions_ended_total\{([^}]*)\} (\d+)", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        ends[(labels.get("transport"), labels.get("reason"))] += int(m.group(2))
    return ends


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
    """(slots held by the worker, sessions of its host, pooled backends of
    its host, backends its host counts live, node slots, keys held)."""
    node = doc.get("node") or {}
    worker = doc["worker"]["pid"]
    own = [h for h in doc.get("hosts") or [] if h.get("worker") == worker]
    return (sum((doc["worker"].get("slots") or {}).values()),
            sum(h.get("sessions", 0) for h in own),
            sum(h.get("pooled", 0) for h in own),
            sum(len(h.get("backends") or []) for h in own),
            sum((node.get("routes") or {}).values()),
            node.get("keys_held", 0))


def live_groups(docs):
    """Process groups of every live session and pooled backend, as the hosts
    report them."""
    groups = set()
    for doc in docs.values():
        for h in doc.get("hosts") or []:
            groups.update(h.get("backends") or [])
    return groups


def marker(pid):
    for entry in read_bytes(f"/proc/{pid}/environ").split(b"\0"):
        if entry.startswith(b"MCP_BRIDGE_SESSION="):
            return entry
    return None


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
        self.ends = collections.Counter()
        self.fuzz = None

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

    def record_status(self, what, status, headers, session=None, stream=None, text=None, excused=False):
        """Counts a status; a 5xx other than 503 with Retry-After is an
        unexpected status, unless `excused` (a kill or reload may explain
        it), which only makes it a finding."""
        self.stats.status(what, status)
        if status == 502 or (status >= 500 and not (status == 503 and headers.get("retry-after"))):
            extra = " without Retry-After" if status == 503 else ""
            if stream:
                extra += f" ({stream.error_text()})"
            elif text:
                extra += f" ({text})"
            if excused:
                self.stats.finding(f"{what} answered {status}{extra}, after a kill or reload", session)
            else:
                self.stats.unexpected(f"{what} answered {status}{extra}", session)

    def explain(self, s, name, how, status=None):
        """A session ended before its scenario was done (by an answer with
        `status`, if one ended it)."""
        if self.stopping or s.disrupted():
            self.stats.add("closed at the end" if self.stopping else "interrupted by a kill or reload")
            if s.tried:
                self.stats.add(f"cut short: {name}")
        elif status is not None:
            self.stats.unexpected(f"{name}: {how} (at {s.step})", s.index)
        else:
            self.stats.finding(f"{name}: {how} (at {s.step})", s.index)

    def drive(self):
        names, weights = list(SCENARIOS), list(SCENARIOS.values())
        while not self.stop.is_set():
            index = next(self.counter)
            rng = random.Random(f"{self.seed}/{index}")
            name = rng.choices(names, weights)[0]
            s = (Client if name in STREAMABLE_SCENARIOS else Session)(self, index, rng)
            self.stats.add(f"scenario: {name}")
            try:
                SCENARIO_FUNCS[name](s)
            except Ended as e:
                if not e.reported:
                    self.explain(s, name, e.how, e.status)
            except Expired:
                self.stats.add("streamable: sessions ended by a TTL mid-scenario")
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

    def streamable_burst(self, rng):
        """Sends BURST initializes at once; DELETEs some of the sessions
        they open and leaves the others to expire."""
        c = Client(self, 0, rng)
        message = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {},
                              "clientInfo": {"name": "chaos burst", "version": "1"}}}
        sent = []
        for _ in range(BURST):
            self.stats.add("sessions run")
            try:
                sent.append(c.exchange("POST", message))
            except OSError:
                self.stats.add("burst: connect failed")
        opened = []
        for ex in sent:
            try:
                a = c.answer(ex, "POST /mcp initialize", want=0)
                if a.status == 429:
                    self.stats.add("429s")
                elif a.status == 200 and a.headers.get("mcp-session-id"):
                    opened.append(a.headers["mcp-session-id"])
                    self.stats.streamable_id(a.headers["mcp-session-id"])
                    self.stats.add("streamable burst sessions opened")
            except (Ended, OSError, ValueError, IndexError, KeyError):
                pass
        for sid in opened:
            if rng.random() < 0.5:
                c.sid = sid
                try:
                    c.answer(c.exchange("DELETE"), "DELETE /mcp")
                except (Ended, OSError, ValueError):
                    pass
        c.close()

    def stateless_burst(self, rng):
        c = Client(self, 0, rng)
        try:
            stateless_burst(c, BURST)
        except (Ended, OSError, ValueError, Expired):
            pass
        finally:
            c.close()

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
            elif event == "streamable burst":
                self.streamable_burst(rng)
                self.stats.add("streamable bursts")
            elif event == "stateless burst":
                self.stateless_burst(rng)
                self.stats.add("stateless bursts (chaos)")
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


def final_client(run, index, kind):
    """A normal Streamable HTTP session, or a few stateless requests, after
    the chaos; None if all went as it should, else why not. Any
    unexpected status or finding meanwhile is a failure."""
    c = Client(run, index, random.Random(f"{run.seed}/final-{kind}/{index}"))
    unexpected = run.stats.count["unexpected statuses"]
    findings = sum(run.stats.findings.values())
    try:
        if kind == "streamable":
            if not c.initialize():
                return "initialize answered 429"
            c.notify()
            get = c.open_get()
            c.echo()
            c.notifying_call()
            c.delete()
            c.stream_ends(get, "GET open at DELETE", limit=5)
            c.check_gone("deleted")
        else:
            for method in ("server/discover", "tools/list"):
                if c.stateless(method).status != 200:
                    return f"{method}: 503"
            text = f"final {index}"
            a = c.stateless("tools/call", {"name": "echo", "arguments": {"text": text}})
            if a.status != 200:
                return "tools/call: 503"
            c.check_echo(a, text)
            if c.notifying_call(stateless=True).status != 200:
                return "tools/call: 503"
        if run.stats.count["unexpected statuses"] > unexpected:
            return "an unexpected status"
        if sum(run.stats.findings.values()) > findings:
            return "a finding"
        return None
    except Ended as e:
        return e.how
    except Expired:
        return "the session expired"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    finally:
        c.close()


def settle(gateway, port, limit):
    """Waits until no backend runs, no worker is shutting down and every
    worker reports nothing held. True if that happened within `limit`.
    Once no session or backend is left anywhere, slots still held 1 s
    later are leaked: nothing is left that could release them, so it stops
    waiting then."""
    deadline = time.monotonic() + limit
    stranded = None
    while True:
        procs = all_procs()
        busy = gateway.backends(procs, gateway.gateway_pids(procs)) or gateway.exiting_workers()
        if not busy:
            workers = gateway.workers()
            docs = status_reports(port, workers, tries=40)
            if set(workers) <= docs.keys():
                figures = [held(d) for d in docs.values()]
                if not any(any(f) for f in figures):
                    return True
                if not any(any(f[1:4]) for f in figures):
                    stranded = stranded or time.monotonic()
                    if time.monotonic() - stranded > 1:
                        return False
                else:
                    stranded = None
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


def drive_chaos(gateway, seed, seconds, clients, fuzz_threads):
    """Runs the clients, the HTTP fuzz, the chaos and the RSS sampler for
    `seconds`, then stops driving and closes every client connection."""
    run = Run(gateway, seed, clients)
    run.sampling_done = threading.Event()
    run.sampler = threading.Thread(target=run.sample, args=(run.sampling_done,), daemon=True)
    run.sampler.start()
    started = time.monotonic()
    schedule = chaos_schedule(random.Random(f"{seed}/schedule"), seconds)
    threads = [threading.Thread(target=run.chaos, args=(schedule, started), daemon=True)]
    threads += [threading.Thread(target=run.drive, daemon=True) for _ in range(clients)]
    if fuzz_threads:
        run.fuzz = httpfuzz.Fuzz(gateway.port, BASE_URI, [STATUS_URI, METRICS_URI], seed, run.stats, run.stop,
                                 run.disrupted_since, MAX_MESSAGE)
        threads += [threading.Thread(target=run.fuzz.run, args=(i,), daemon=True) for i in range(fuzz_threads)]
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


def streamable_ids_still_accepted(port, ids, rng):
    """Sends each ended Streamable session id a request of a kind picked at
    random (a POST of a request or of a notification, a GET, a DELETE): how
    many got an answer other than 404 (no answer counts too)."""
    accepted = unanswered = 0
    conn = None
    for n, sid in enumerate(ids):
        method, body = rng.choice([
            ("POST", {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}),
            ("POST", {"jsonrpc": "2.0", "method": "notifications/initialized"}),
            ("GET", None),
            ("DELETE", None),
        ])
        headers = {"Mcp-Session-Id": sid, "Accept": "application/json, text/event-stream"}
        if body is not None:
            headers["Content-Type"] = "application/json"
            body = json.dumps(body).encode()
        status = None
        for _ in range(2):
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
            try:
                conn.request(method, BASE_URI, body=body, headers=headers)
                r = conn.getresponse()
                status = r.status
                if status == 404 and not r.will_close:
                    r.read()
                    break
            except (OSError, http.client.HTTPException):
                pass
            # Not reusable (an accepted GET's stream never ends): a new one.
            conn.close()
            conn = None
            if status is not None:
                break
        if status != 404:
            accepted += 1
        unanswered += status is None
        if unanswered >= 3:
            accepted += len(ids) - 1 - n
            break
    if conn:
        conn.close()
    return accepted


def has_thread(pid, name):
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(read_bytes(f"/proc/{pid}/task/{t}/comm").strip() == name.encode() for t in tasks)


def cancel_probe(run):
    """Starts CANCEL_PROBES stateless `sleep` calls on fresh pooled
    backends and closes their connections once each backend runs its call
    (the fixture's thread named "sleep"); each backend must then receive a
    notifications/cancelled (the fixture records it in <pid>.cancelled).
    Returns (calls checked, backends not told, problem or None)."""
    gw = run.gateway
    c = Client(run, 0, random.Random(f"{run.seed}/cancel"))
    try:
        for _ in range(CANCEL_PROBES):
            c.stateless_send("tools/call", {"name": "sleep", "arguments": {"ms": 30000}})
        deadline = time.monotonic() + 5
        while True:
            procs = all_procs()
            busy = {pid for pid in gw.backends(procs, gw.gateway_pids(procs)) if has_thread(pid, "sleep")}
            if len(busy) >= CANCEL_PROBES or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        c.close()
    untold = set(busy)
    deadline = time.monotonic() + 3
    while untold and time.monotonic() < deadline:
        time.sleep(0.02)
        untold = {pid for pid in untold if not os.path.exists(os.path.join(gw.pid_dir, f"{pid}.cancelled"))}
    problem = None
    if len(busy) < CANCEL_PROBES:
        problem = f"cancel probe: {len(busy)} of {CANCEL_PROBES} calls reached a backend within 5 s"
    for pid in untold:
        run.stats.finding(f"backend {pid} got no notifications/cancelled when its stateless call was aborted", None)
    return len(busy), len(untold), problem


def unowned_backends(gateway):
    """Backend processes (and their descendants) that belong to no live
    session or pooled backend the hosts report: {pid: start time}. A
    process belongs to one when it is in its process group or carries the
    marker (MCP_BRIDGE_SESSION) of its leader."""
    docs = status_reports(gateway.port, gateway.workers(), tries=40)
    groups = live_groups(docs)
    procs = all_procs()
    markers = {marker(g) for g in groups if g in procs} - {None}
    found = {}
    for pid in gateway.backends(procs, gateway.gateway_pids(procs)):
        p = procs.get(pid)
        if p and p.pgrp not in groups and marker(pid) not in markers:
            found[pid] = p.starttime
    return found


def describe_process(pid):
    p = read_proc(pid)
    if not p:
        return f"process {pid} (gone now)"
    mark = (marker(pid) or b"no marker").decode("utf-8", "replace")
    parent = read_bytes(f"/proc/{p.ppid}/comm").strip().decode("utf-8", "replace")
    return f"process {pid} ({p.comm}, state {p.state}, ppid {p.ppid} {parent}, pgrp {p.pgrp}, {mark}) {cmdline(pid)}"


def unowned_after_run(gateway):
    """Processes that belong to no live session or pooled backend right
    after the run, and still not 2 s and 4 s later (a session's end takes
    at most the grace period to clear its processes): (their pids, what
    they were)."""
    found = unowned_backends(gateway)
    for _ in range(2):
        if not found:
            break
        time.sleep(2)
        again = unowned_backends(gateway)
        found = {pid: st for pid, st in found.items() if again.get(pid) == st}
    return set(found), [describe_process(pid) + ", belonging to no session" for pid in sorted(found)]


def measure(gateway, run):
    """Checks that every backend left right after the run is a live
    session's or a pooled one, waits for the sessions to end (by their
    clients' departure, DELETE, or their TTLs), probes that aborted
    stateless calls are cancelled, checks the gateway still serves every
    transport, and takes the leak figures while it runs; then stops it and
    looks for what is left. Returns (leak rows, other problems, final
    session failures)."""
    unowned, problems = unowned_after_run(gateway)
    settled = settle(gateway, gateway.port, SETTLE_LIMIT)
    probed, untold, problem = cancel_probe(run)
    if problem:
        problems.append(problem)
    final_failures = collections.Counter()
    finals = [("sse", i) for i in range(FINAL_SESSIONS)] + [("streamable", i) for i in range(FINAL_STREAMABLE)] \
        + [("stateless", i) for i in range(FINAL_STATELESS)]
    for n, (kind, i) in enumerate(finals):
        why = final_session(run, i) if kind == "sse" else final_client(run, i, kind)
        if why:
            final_failures[f"{kind}: {why}"] += 1
        if sum(final_failures.values()) >= 3:
            # Each failure may have waited IO_TIMEOUT: enough.
            final_failures["not run"] += len(finals) - 1 - n
            break
    settled = settle(gateway, gateway.port, SETTLE_LIMIT) and settled
    if not settled:
        problems.append(f"the gateway did not settle (sessions ended, nothing held) within {SETTLE_LIMIT} s")
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
    sids = list(run.stats.streamable_ids)
    if len(sids) > ID_CHECKS:
        sids = random.Random(f"{run.seed}/streamable-ids").sample(sids, ID_CHECKS)
    streamable_accepted = streamable_ids_still_accepted(gateway.port, sids,
                                                        random.Random(f"{run.seed}/streamable-id-checks"))
    run.ends = ends_by_reason(gateway.port)

    gateway.stop()
    if gateway.stop_seconds is None:
        problems.append(f"the gateway did not stop within {STOP_LIMIT} s")
    left = gateway.leftovers()

    leaks = [("backends of no session or pool, after the run", len(unowned)),
             ("live backend processes, after the TTLs", len(live)), ("zombies", len(zombies))]
    node = (0, 0)
    for pid in workers:
        if pid in docs:
            slots, sessions, pooled, backends, node_slots, keys = held(docs[pid])
            leaks += [(f"slots held, worker {pid}", slots), (f"host sessions, worker {pid}", sessions),
                      (f"pooled backends, worker {pid}", pooled), (f"host backends, worker {pid}", backends)]
            node = (node_slots, keys)
    leaks += [
        ("slots held, node", node[0]),
        ("shared-dict keys left", node[1]),
        ("workers not reporting status", len(set(workers) - docs.keys())),
        ("old workers still shutting down", len(exiting)),
        (f"HTTP+SSE session ids still accepted (of {len(ids)})", accepted),
        (f"Streamable session ids still accepted (of {len(sids)})", streamable_accepted),
        (f"aborted stateless calls not cancelled (of {probed})", untold),
        (f"requests hung (no response in {ANSWER_LIMIT} s, or only at a TTL)", run.stats.count["requests hung"]),
        ("stateless replies with another call's notifications",
         run.stats.count["stateless: replies with another call's notifications"]),
        ("unexpected HTTP statuses (the fuzz's included)", run.stats.count["unexpected statuses"]),
        ("fuzz: complete requests without an answer", run.stats.count["fuzz: complete requests without an answer"]),
        ("fuzz: accepted requests never answered", run.stats.count["fuzz: accepted requests never answered"]),
        ("fuzz: requests answered twice", run.stats.count["fuzz: requests answered twice"]),
        ("fuzz: refused requests that reached the backend",
         run.stats.count["fuzz: refused requests that reached the backend"]),
        ("fuzz: Streamable replies without exactly one response",
         run.stats.count["fuzz: Streamable replies without exactly one response"]),
        ("left after the gateway stopped", len(left)),
    ]
    for pid in sorted(live | zombies | left):
        problems.append(describe_process(pid))
    return leaks, problems, final_failures


def print_log_groups(run, path):
    """The gateway's error-log lines at [error] and above, grouped; returns
    how many are bugs whatever caused them."""
    groups = log_groups(path)
    if not groups:
        return 0
    c = run.stats.count
    causes = {"worker kills": c["worker kills"], "host kills": c["host kills"], "reloads": c["reloads"],
              "kills": c["worker kills"] + c["host kills"], "resets": c["resets"] + c["fuzz: closed early"],
              "oversized bodies": run.stats.statuses[("POST /message (bad input)", 413)]
              + c["fuzz: requests sent"], "fuzz": c["fuzz: requests sent"]}
    bugs = 0
    print("\ngateway error log, [error] and above, grouped:")
    for (level, msg), n in sorted(groups.items(), key=lambda kv: -kv[1]):
        if BUG_LOG.search(msg):
            tag = "BUG"
            bugs += n
        elif any(p.match(msg) and causes[cause] for p, cause in EXPECTED_LOG):
            tag = "expected"
        elif level in GRAVE_LEVELS:
            tag = "BUG"
            bugs += n
        else:
            tag = "look"
        print(f"  {n:6d}  {tag:8s} [{level}] {msg}")
    # Each SIGKILL of a worker explains one such line, no more.
    crashed = sum(n for (_, msg), n in groups.items() if msg == "worker process N exited on signal 9")
    if crashed > c["worker kills"]:
        print(f"  {crashed} workers ended by SIGKILL, {c['worker kills']} killed by the chaos: BUG")
        bugs += crashed - c["worker kills"]
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


def fuzz_statuses(run):
    """Every status the HTTP fuzz got, with counts."""
    codes = collections.Counter()
    for (what, code), n in run.stats.statuses.items():
        if what.startswith("fuzz "):
            codes[code] += n
    return ", ".join(f"{code} x{n}" for code, n in sorted(codes.items())) or "none"


def print_table(run, elapsed, leaks, final_failures):
    c = run.stats.count
    gw = run.gateway

    def of(done, tried, scenario):
        cut = c[f"cut short: {scenario}"]
        return f"{done} of {tried}" + (f" ({cut} cut short by a kill, a reload or the end)" if cut else "")

    def ends(transport):
        found = sorted((reason, n) for (t, reason), n in run.ends.items() if t == transport)
        return ", ".join(f"{reason} {n}" for reason, n in found) or "none"

    def each(prefix, names):
        return ", ".join(f"{name} {c[prefix + name]}" for name in names)

    finals = FINAL_SESSIONS + FINAL_STREAMABLE + FINAL_STATELESS

    rows = [
        ("duration", f"{elapsed:.1f} s (chaos {run.chaos_seconds:.1f} s)"),
        ("seed", str(run.seed)),
        ("clients at once", str(run.clients)),
        ("sessions run (both transports)", str(c["sessions run"])),
        ("HTTP+SSE sessions completed normally", str(c["completed normally"])),
        ("  aborts: during spawn", str(c["aborts: during spawn"])),
        ("  aborts: before the endpoint event", str(c["aborts: before the endpoint event"])),
        ("  aborts: mid-message", str(c["aborts: mid-message"])),
        ("  aborts: mid-POST body", str(c["aborts: mid-POST body"])),
        ("  aborts: during teardown", str(c["aborts: during teardown"])),
        ("backend crashes (all transports)", str(c["backend crashes"])),
        *([("  restarted: clients warned, sessions that served on, crashed past the bound",
            f"{c['restarts: clients warned']}, {c['restarts: sessions that served on']}, "
            f"{c['restarts: sessions crashed past the bound']}")] if RESTARTS else []),
        ("error responses for pending requests",
         f"{c['error responses received']} received, {c['error responses missing']} missing"
         f" (+{c['error responses missing after a kill']} lost to a kill)"),
        ("grandchildren started",
         f"{c['grandchildren started']} (setsid {c['grandchildren: setsid']}, double fork "
         f"{c['grandchildren: double_fork']}, ignoring SIGTERM {c['grandchildren: ignore_sigterm']})"),
        ("slow clients ended by the gateway", of(c["slow clients ended"], c["slow clients"], "slow client")),
        ("over-long lines ending the session", of(c["over-long lines ended"], c["over-long lines"], "over-long line")),
        ("stopped readers reaching 503", of(c["stopped readers: 503"], c["stopped readers"], "stop reading")),
        ("bad input answered as documented", of(c["bad input answered as documented"], c["bad input sent"], "bad input")
         + " (all transports)"),
        ("Streamable HTTP sessions started", f"{c['streamable: sessions started']} of "
         f"{c['streamable: initialize sent']} initialize sent (+{c['streamable burst sessions opened']} by bursts)"),
        ("  completed normally", str(c["streamable: completed normally"])),
        ("  aborts", each("streamable aborts: ", STREAMABLE_ABORTS + ["during teardown"])),
        ("  event-stream replies", f"{c['streamable: event-stream replies']} (calls that notify first, with every "
         f"notification before the result: {c['streamable: notifications before a result']})"),
        ("  notifications routed", f"to the GET stream {c['streamable: notifications routed to the GET stream']}, "
         f"to the request's own reply {c[REPLY_ROUTED]}"),
        ("  GET streams", f"{c['streamable: GET streams opened']} opened, {c['streamable: GETs replaced']} replaced by "
         f"a second GET; ended by the gateway: {c['streamable: GET replaced by a second GET, stream ended']} replaced, "
         f"{c['streamable: GET open at DELETE, stream ended']} at DELETE, "
         f"{c['streamable: GET open at a crash, stream ended']} at a crash, "
         f"{c['streamable: GET open at the idle timeout, stream ended']} at the idle timeout"),
        ("  duplicate client ids answered", str(c["streamable: duplicate client ids answered"])),
        ("  DELETEs", f"{c['streamable: DELETEs']} ({c['streamable: DELETE races']} races with a request or a DELETE; "
         f"{c['streamable: in-flight requests answered with an error at DELETE']} in-flight requests answered "
         f"with an error)"),
        ("  ended by a TTL, then 404", f"idle {c['streamable: ended by idle, then 404']}, lifetime "
         f"{c['streamable: ended by lifetime, then 404']}; {c['streamable: sessions ended by a TTL mid-scenario']} "
         f"more mid-scenario"),
        ("  left to expire (never DELETEd)", str(c["streamable: left to expire"])),
        ("  ended ids answered 404 in the run", str(c["streamable: ended sessions checked for 404"])),
        ("  ends (metrics)", ends("streamable")),
        ("stateless requests", f"{c['stateless: requests sent']} sent, {c['stateless: answered']} answered, "
         f"{c['stateless: 503 on a saturated pool']} 503 with Retry-After (pool saturated)"),
        ("  event-stream replies", str(c["stateless: event-stream replies"])),
        ("  aborts", each("stateless aborts: ", ["mid-call", "mid-event-stream", "mid-body", "at once"])),
        ("  listen streams", f"{c['stateless: listen streams opened']} opened, "
         f"{c['stateless: listen streams abandoned']} held then abandoned"),
        ("  bursts past the pool", f"{c['stateless: bursts']} ({c['stateless: burst calls served']} calls served)"),
        ("  crashes answered with an error", str(c["stateless: crashes answered with an error"])),
        ("  grandchildren of pooled backends", str(c["stateless: grandchildren of pooled backends"])),
        ("  pooled backends' ends (metrics)", ends("pool")),
        ("HTTP fuzz requests", f"{c['fuzz: requests sent']} sent (whole {c['fuzz: writes whole']}, split "
         f"{c['fuzz: writes split']}, slow {c['fuzz: writes slow']}, closed early {c['fuzz: writes early close']})"
         if run.fuzz else "off"),
        ("  their statuses", fuzz_statuses(run)),
        ("  unanswered", f"{c['fuzz: incomplete requests left unanswered']} incomplete by design, "
         f"{c['fuzz: malformed requests closed without an answer']} malformed closed by nginx, "
         f"{c['fuzz: unanswered after a kill or reload']} after a kill or reload"),
        ("  own sessions", f"HTTP+SSE requests accepted and answered once {c['fuzz: own requests accepted and answered']} "
         f"(+{c['fuzz: own requests lost to a kill']} lost to a kill); Streamable requests answered once "
         f"{c['fuzz: own Streamable requests answered once']}"),
        ("429s", str(c["429s"])),
        ("worker kills", str(c["worker kills"])),
        ("host kills", str(c["host kills"])),
        ("reloads", str(c["reloads"])),
        ("bursts", f"{c['bursts']} ({c['burst sessions opened']} of {c['bursts'] * BURST} sessions opened); "
         f"Streamable {c['streamable bursts']}; stateless {c['stateless bursts (chaos)']}"),
        ("sessions interrupted by a kill or reload", str(c["interrupted by a kill or reload"])),
        ("sessions closed at the end", str(c["closed at the end"])),
        ("findings", str(sum(run.stats.findings.values()))),
        ("final normal sessions", f"{finals - sum(final_failures.values())} of {finals} succeeded "
         f"(HTTP+SSE {FINAL_SESSIONS}, Streamable {FINAL_STREAMABLE}, stateless {FINAL_STATELESS})"),
        ("gateway stopped (SIGTERM)", f"in {gw.stop_seconds:.1f} s, exit status {gw.exit_status}"
         if gw.stop_seconds is not None else "no: killed"),
    ]
    peaks = [(f"peak RSS, {kind}", f"{run.peaks.get(kind, 0) / 1024:.1f} MiB") for kind in ("nginx worker", "host")]
    width = max([len(label) for label, _ in rows + peaks] + [len(label) + 2 for label, _ in leaks]) + 2
    print("\nchaos run")
    for label, value in rows:
        print(f"  {label:<{width}}{value}")
    print("  leaks and checks (each must be 0):")
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
    ap.add_argument("--clients", type=int, default=24, help="clients driven at once (default 24)")
    ap.add_argument("--fuzz-threads", type=int, default=2, help="senders of the HTTP fuzz (default 2)")
    ap.add_argument("--no-fuzz", action="store_true", help="no HTTP fuzz")
    ap.add_argument("--keep", action="store_true", help="keep the gateway's log and files even if all went well")
    ap.add_argument("--restart-on-crash", action="store_true",
                    help=f"the gateway restarts crashed backends (at most {MAX_RESTARTS} times per session)")
    args = ap.parse_args()
    global RESTARTS
    RESTARTS = args.restart_on_crash
    seconds = SHORT_SECONDS if args.short else args.seconds
    seed = args.seed
    if seed is None:
        env = os.environ.get("CHAOS_SEED")
        seed = int(env) if env else random.SystemRandom().randrange(1, 1 << 31)

    began = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="mcp-bridge-chaos-")
    os.chmod(workdir, 0o755)
    gateway = Gateway(workdir, free_port())
    fuzz = "no HTTP fuzz" if args.no_fuzz else f"{args.fuzz_threads} HTTP fuzz senders"
    print(f"chaos: seed {seed} (CHAOS_SEED={seed} replays its choices), {seconds:g} s, {args.clients} clients, "
          f"{fuzz}, gateway on 127.0.0.1:{gateway.port}{', restart_on_crash' if RESTARTS else ''}", flush=True)
    failed = True
    try:
        gateway.start()
        run = drive_chaos(gateway, seed, seconds, args.clients, 0 if args.no_fuzz else args.fuzz_threads)
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
