#!/usr/bin/env python3
"""Cluster mode end to end: three `mcp-bridge serve` nodes sharing one Redis,
behind a round-robin nginx front without affinity, so that most requests of a
session land on a node that does not own it and must be forwarded.

Starts a real redis-server on a free port (no persistence), three nodes
(`--cluster redis://... --node-address ... --cluster-lease-ms 1500
--max-sessions-per-cluster 4`, 2 workers each, bridging the fixture server,
the secret in MCP_BRIDGE_CLUSTER_SECRET, `--allowed-host 127.0.0.1` as the
front passes its own Host) and a plain nginx in front of them (HTTP/1.1
upstream, no buffering either way, long read timeouts), then runs
the tests below, one line each ("ok" or "FAILED <why>"):

  1. the official Python SDK's clients through the front (HTTP+SSE,
     Streamable HTTP sessions, stateless 2026-07-28): numbered calls and
     notifications arrive once and in order; the nodes' metrics show that
     requests were forwarded;
  2. kill -9 of one node: its sessions end (404, their streams close), the
     other nodes' sessions carry on, its `node:` key leaves Redis within the
     lease, and a live node refuses its ids at once; started again on the
     same address, it no longer counts its previous life's sessions;
  3. Redis stopped mid-run: sessions go on and new ones start; Redis back on
     the same port: the node keys return and the ceiling holds again, at
     exactly the live sessions cluster-wide;
  4. forged ids (random, a flipped MAC digit, another cluster's real id) on
     POSTs of both transports and a Streamable GET and DELETE: 404 from
     every node and the front, and no outbound connection (the forwarding
     metrics do not move and a socket listening at the address the id names
     accepts nothing);
  5. the cluster-wide ceiling: the 5th session gets 429 on every node, and a
     new one starts once one ends;
  6. a stateless (2026-07-28) call whose backend asks the client mid-call
     (the conformance fixture on two more nodes): the SDK's retries, which
     carry the requestState, go to the other node, which forwards them;
     a retry whose requestState's node tag is forged is neither answered
     nor forwarded;
  7. two nodes with serve's default Host check (loopback names on their own
     port): a request sent to one with its own Host, for a session of the
     other, is forwarded and answered;
  8. leaks: with the nodes stopped, no backend, host or nginx is left, and
     after a lease no key of the cluster is left in Redis; no node's log
     shows a Lua error, a panic or a crash (always run).

With --chaos SECONDS, instead: a dozen SDK clients of all three kinds
through the front while workers are killed, nodes reloaded and one node is
killed with SIGKILL and started again within its lease. Wrong answers
(a crossed or reordered echo or notification) fail the run; disrupted
sessions are counted, with their most common errors. Then every kind of
client must still work, the cluster's session counts in Redis must come
back to 0, every node is stopped and a leak table is printed (per node:
backends, hosts and nginx left; Redis: stale keys; bug lines in the
logs), which must be all 0.

Exit status 1 if any test fails. The run's files live in a temporary
directory, removed at the end, kept (and its path printed) on a failure.
Runs itself with the Python SDK's venv (t/e2e-python/.venv, made by
`ci/deps.sh test`).

Usage: ci/cluster.py [--chaos SECONDS] [--keep] [--only N]... [--seed N] [--plain]
"""
import argparse
import collections
import http.client
import itertools
import json
import logging
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from urllib.parse import parse_qs, urlsplit

from procs import children, cmdline, read_bytes, read_proc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
VENV_PYTHON = os.path.join(ROOT, "t", "e2e-python", ".venv", "bin", "python")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

NODES = 3
WORKERS = 2
LEASE_MS = 1500
# The cluster's ceiling (test 5); the chaos run's is higher, so that its
# clients meet it only now and then.
CEILING = 4
CHAOS_CEILING = 48
CLUSTER_NAME = "mcp-bridge"
KEY_PREFIX = f"mcp-bridge:{CLUSTER_NAME}:"
OTHER_NAME = "other-cluster"
BASE_URI = "/mcp"
STATUS_URI = "/-/status"
METRICS_URI = "/-/metrics"
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
# The longest any single wait on a node or the front may take.
IO_TIMEOUT = 10
# A node killed with SIGKILL leaves Redis within the lease; this is the
# margin on top (a loaded machine, the poll's own period).
LEASE_MARGIN_S = 1.0
# "Quickly" for a refusal by a live node: a loose bound, not a speed test.
QUICK_S = 1.0
SESSION_ID = re.compile(r"^([0-9a-f]{48})-([0-9a-f]+)-([0-9a-f]{32})$")
CEILING_NAME = re.compile(r"max-sessions-per-cluster")


def log(msg):
    print(f"cluster: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Failed(Exception):
    """A test's assertion: the line it prints after FAILED."""


class Wrong(Failed):
    """An answer that is not the one asked for (not merely missing)."""


def check(cond, why):
    if not cond:
        raise Failed(why)


def owner_of(sid):
    """The node address a cluster session id names, or None if the id has no
    cluster suffix."""
    m = SESSION_ID.match(sid or "")
    if not m:
        return None
    try:
        return bytes.fromhex(m.group(2)).decode()
    except ValueError:
        return None


def tag(address):
    return address.encode().hex()


# ---------------------------------------------------------------- processes

def alive(pid, starttime):
    p = read_proc(pid)
    return p is not None and p.starttime == starttime and p.state != "Z"


def wait_for(pred, seconds, step=0.05):
    """Polls `pred` until it is true or `seconds` passed; its last value."""
    deadline = time.monotonic() + seconds
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(step)


# -------------------------------------------------------------------- redis

class RedisError(Exception):
    pass


class Redis:
    """redis-server on a port of its own, and a minimal RESP client."""

    def __init__(self, workdir):
        self.port = free_port()
        self.dir = os.path.join(workdir, "redis")
        os.mkdir(self.dir)
        self.proc = None

    def start(self):
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", self.dir, "--logfile", os.path.join(self.dir, "redis.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

        def ready():
            try:
                return self.command("PING") == "PONG"
            except (OSError, RedisError):
                return self.proc.poll() is not None
        wait_for(ready, 10)
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited at start (see {self.dir}/redis.log)")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def command(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            return self._reply(s.makefile("rb"))

    def _reply(self, f):
        line = f.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else f.read(n + 2)[:-2].decode("utf-8", "replace")
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(f) for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")

    def keys(self, prefix):
        found, cursor = [], "0"
        while True:
            cursor, batch = self.command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", 1000)
            found += batch
            if cursor == "0":
                return sorted(set(found))

    def node_keys(self, prefix=KEY_PREFIX):
        return {k[len(prefix) + len("node:"):] for k in self.keys(prefix + "node:")}

    def cluster_sessions(self, prefix=KEY_PREFIX):
        """{route key: {node address: count}} from the `sessions:` hashes."""
        out = {}
        for key in self.keys(prefix + "sessions:"):
            flat = self.command("HGETALL", key) or []
            out[key[len(prefix) + len("sessions:"):]] = {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return out

    def live_sessions(self):
        return sum(sum(v.values()) for v in self.cluster_sessions().values())


# --------------------------------------------------------------------- http

def http_request(port, method, path, body=None, headers=None, timeout=IO_TIMEOUT):
    """One request on a connection of its own: (status, headers with lowercase
    names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Connection": "close"}
        h.update(headers or {})
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def jsonrpc_messages(headers, body):
    """The JSON-RPC messages of a response: one JSON body, or the data of an
    event stream's events."""
    if headers.get("content-type", "").startswith("text/event-stream"):
        out = []
        for block in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
            if data:
                out.append(json.loads(data))
        return out
    if not body.strip():
        return []
    doc = json.loads(body)
    return doc if isinstance(doc, list) else [doc]


def tool_text(msg):
    result = msg.get("result") or {}
    content = result.get("content") or [{}]
    return content[0].get("text")


def initialize_params(name):
    return {"protocolVersion": LEGACY_VERSION, "capabilities": {},
            "clientInfo": {"name": name, "version": "1.0.0"}}


def short(body, n=160):
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return text if len(text) <= n else text[:n] + "..."


class Streamable:
    """A Streamable HTTP session (2025-11-25) driven with raw requests, so that
    each request can be sent to the node (or the front) of the test's choice."""

    def __init__(self, port, name="cluster"):
        self.port = port
        self.name = name
        self.sid = None
        self.next_id = 0

    def headers(self, sid=None):
        h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
             "MCP-Protocol-Version": LEGACY_VERSION}
        sid = sid or self.sid
        if sid:
            h["Mcp-Session-Id"] = sid
        return h

    def open(self, port=None):
        """initialize, then notifications/initialized: (status, body) of the
        initialize."""
        status, headers, body = http_request(port or self.port, "POST", BASE_URI, self.request("initialize", initialize_params(self.name)),
                                             self.headers())
        if status != 200:
            return status, body
        self.sid = headers.get("mcp-session-id")
        if not self.sid:
            raise Failed(f"initialize answered 200 without Mcp-Session-Id: {short(body)}")
        st, _, b = http_request(port or self.port, "POST", BASE_URI,
                                {"jsonrpc": "2.0", "method": "notifications/initialized"}, self.headers())
        if st != 202:
            raise Failed(f"notifications/initialized answered {st}: {short(b)}")
        return status, body

    def request(self, method, params):
        self.next_id += 1
        return {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}

    def call(self, tool, args, port=None, sid=None, timeout=IO_TIMEOUT):
        """(status, the tool's text or None, body)."""
        msg = self.request("tools/call", {"name": tool, "arguments": args})
        status, headers, body = http_request(port or self.port, "POST", BASE_URI, msg, self.headers(sid), timeout)
        if status != 200:
            return status, None, body
        for m in jsonrpc_messages(headers, body):
            if m.get("id") == msg["id"]:
                return status, tool_text(m), body
        return status, None, body

    def delete(self, port=None):
        status, _, _ = http_request(port or self.port, "DELETE", BASE_URI, None, self.headers())
        return status


class Sse:
    """An HTTP+SSE session with a raw GET stream read by a thread of its own;
    its POSTs go wherever the test says."""

    def __init__(self, port, name="cluster-sse"):
        self.port = port
        self.name = name
        self.conn = None
        self.sid = None
        self.path = None
        self.ended = threading.Event()
        self.endpoint = threading.Event()
        self.answers = {}
        self.cond = threading.Condition()
        self.next_id = 0

    def open(self):
        """(status, body if not 200)."""
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=IO_TIMEOUT)
        self.conn.request("GET", BASE_URI + "/sse", headers={"Accept": "text/event-stream"})
        r = self.conn.getresponse()
        if r.status != 200:
            body = r.read()
            self.conn.close()
            return r.status, body
        # The stream is read until it ends, however long it idles.
        self.conn.sock.settimeout(None)
        threading.Thread(target=self._read, args=(r,), daemon=True).start()
        if not self.endpoint.wait(IO_TIMEOUT) or not self.path:
            raise Failed("no endpoint event on the SSE stream")
        self.sid = parse_qs(urlsplit(self.path).query).get("sessionId", [None])[0]
        return 200, b""

    def _read(self, r):
        try:
            event, data = None, []
            while True:
                line = r.readline()
                if not line:
                    return
                line = line.decode("utf-8", "replace").rstrip("\r\n")
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    continue
                if event == "endpoint":
                    self.path = "\n".join(data)
                    self.endpoint.set()
                elif data:
                    msg = json.loads("\n".join(data))
                    with self.cond:
                        key = msg.get("id") if "id" in msg else ("notification", len(self.answers))
                        self.answers[key] = msg
                        self.cond.notify_all()
                event, data = None, []
        except Exception:  # noqa: BLE001 - a stream cut (or closed by close()) in any way ends it
            return
        finally:
            self.ended.set()
            with self.cond:
                self.cond.notify_all()

    def message_path(self, sid=None):
        return f"{BASE_URI}/message?sessionId={sid or self.sid}"

    def post(self, msg, port=None, sid=None):
        status, _, body = http_request(port or self.port, "POST", self.message_path(sid), msg,
                                       {"Content-Type": "application/json"})
        return status, body

    def request(self, method, params, port=None, timeout=IO_TIMEOUT):
        """(status of the POST, the answer or None)."""
        self.next_id += 1
        msg_id = self.next_id
        status, body = self.post({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}, port)
        if status != 202:
            return status, None
        with self.cond:
            self.cond.wait_for(lambda: msg_id in self.answers or self.ended.is_set(), timeout)
            return status, self.answers.get(msg_id)

    def initialize(self, port=None):
        status, answer = self.request("initialize", initialize_params(self.name), port)
        if status != 202 or not answer or "result" not in answer:
            raise Failed(f"SSE initialize: {status} {answer}")
        st, body = self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, port)
        check(st == 202, f"SSE notifications/initialized: {st} {short(body)}")

    def call(self, tool, args, port=None, timeout=IO_TIMEOUT):
        """(status of the POST, the tool's text or None)."""
        status, answer = self.request("tools/call", {"name": tool, "arguments": args}, port, timeout)
        return status, (tool_text(answer) if answer else None)

    def close(self):
        if self.conn is not None:
            try:
                self.conn.sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
            self.conn.close()
        self.ended.wait(IO_TIMEOUT)


# -------------------------------------------------------------------- nodes

class Node:
    """One `mcp-bridge serve` node, and what can be learnt about its
    processes."""

    def __init__(self, workdir, index, redis_port, ceiling, name=CLUSTER_NAME, secret=None, plain=False,
                 fixture_args=(), allow_any_port=True):
        self.workdir = workdir
        self.index = index
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.redis_port = redis_port
        self.ceiling = ceiling
        self.name = name
        self.secret = secret
        self.plain = plain
        self.fixture_args = list(fixture_args)
        self.allow_any_port = allow_any_port
        self.pid_dir = os.path.join(workdir, f"pids-node{index}")
        os.mkdir(self.pid_dir)
        os.chmod(self.pid_dir, 0o1777)
        self.proc = None
        self.master = None
        self.starts = 0
        self.log_path = None
        # (pid, starttime, what) of every process of the node seen.
        self.seen = set()

    def label(self):
        return f"node {self.index} ({self.address})"

    def start(self):
        self.starts += 1
        prefix = os.path.join(self.workdir, f"node{self.index}-{self.starts}")
        self.log_path = prefix + ".log"
        cmd = [os.path.join(BIN, "mcp-bridge"), "serve", "--listen", self.address, "--workers", str(WORKERS),
               "--status-uri", STATUS_URI, "--metrics-uri", METRICS_URI, "--base-uri", BASE_URI,
               "--kill-grace-ms", "500", "--prefix", prefix, "--env", f"MCP_FIXTURE_PID_DIR={self.pid_dir}"]
        if self.allow_any_port:
            # The front passes the client's Host (its own address).
            cmd += ["--allowed-host", "127.0.0.1"]
        if not self.plain:
            cmd += ["--cluster", f"redis://127.0.0.1:{self.redis_port}", "--node-address", self.address,
                    "--cluster-lease-ms", str(LEASE_MS), "--max-sessions-per-cluster", str(self.ceiling)]
            if self.name != CLUSTER_NAME:
                cmd += ["--cluster-name", self.name]
        cmd += ["--", os.path.join(BIN, "mcp-fixture")] + self.fixture_args
        env = dict(os.environ, MCP_BRIDGE_CLUSTER_SECRET=self.secret)
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=logf, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 20
        out = b""
        while b"SSE endpoint" not in out:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.kill()
                raise RuntimeError(f"{self.label()} did not start within 20 s: {self.log_tail()}")
            chunk = os.read(self.proc.stdout.fileno(), 4096)
            if not chunk:
                self.proc.wait()
                raise RuntimeError(f"{self.label()} exited at start ({self.proc.returncode}): {self.log_tail()}")
            out += chunk
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        with open(os.path.join(prefix, "nginx.pid")) as f:
            self.master = int(f.read().strip())
        self.sample()

    @staticmethod
    def _drain(proc):
        while proc.stdout.read(4096):
            pass

    def log_tail(self, lines=4):
        """The log's first error line (with what follows it), else its end."""
        try:
            with open(self.log_path, errors="replace") as f:
                text = f.readlines()
        except OSError:
            return "(no log)"
        first = next((i for i, line in enumerate(text) if re.search(r"\[(emerg|alert|crit|error)\]", line)), None)
        picked = text[first:first + lines] if first is not None else text[-lines:]
        return " | ".join(short(line.strip(), 300) for line in picked)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def workers(self):
        if not self.master:
            return []
        return [pid for pid in children(self.master) if cmdline(pid).startswith("nginx: worker process")]

    def hosts(self):
        found = []
        parents = ([self.proc.pid] if self.proc else []) + self.workers()
        for parent in parents:
            found += [pid for pid in children(parent) if read_bytes(f"/proc/{pid}/comm").strip() == b"mcp-bridge-host"]
        return found

    def sample(self):
        """Remembers every process of the node now running."""
        for what, pids in (("serve", [self.proc.pid] if self.running() else []),
                           ("nginx", ([self.master] if self.master else []) + self.workers()),
                           ("host", self.hosts())):
            for pid in pids:
                p = read_proc(pid)
                if p and p.state != "Z":
                    self.seen.add((pid, p.starttime, what))

    def kill9(self):
        """SIGKILL to the CLI, the nginx master and its workers at once (the
        hosts are left to notice)."""
        self.sample()
        victims = ([self.proc.pid] if self.running() else []) + ([self.master] if self.master else []) + self.workers()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc:
            self.proc.wait()
        # A SIGKILL is delivered, not done: until the kernel has closed the
        # node's listening socket a load balancer's connect still succeeds,
        # and its POST is then reset (the front answers 502, not retrying a
        # POST). The test is of what follows the death.
        def dead(pid):
            p = read_proc(pid)
            return p is None or p.state == "Z"
        wait_for(lambda: all(dead(pid) for pid in victims), 5, 0.01)
        self.master = None

    def kill(self):
        if self.running():
            self.proc.kill()
            self.proc.wait()

    def stop(self):
        """SIGTERM, as a service manager would; the exit status."""
        if not self.running():
            return self.proc.returncode if self.proc else None
        self.sample()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def left(self):
        """Processes of the node seen and still running: [(pid, what)]."""
        return [(pid, what) for pid, st, what in self.seen if alive(pid, st)]

    def backends_left(self):
        """Recorded backends (and their children) still running."""
        left = []
        for name in os.listdir(self.pid_dir):
            if not name.endswith(".pid"):
                continue
            try:
                with open(os.path.join(self.pid_dir, name)) as f:
                    rec = json.load(f)
            except (OSError, ValueError):
                continue
            if alive(rec["pid"], rec["starttime"]):
                left.append(rec["pid"])
        return left

    def metrics(self):
        status, _, body = http_request(self.port, "GET", METRICS_URI)
        check(status == 200, f"{self.label()}: GET {METRICS_URI} answered {status}")
        return body.decode("utf-8", "replace")

    def metric(self, name, **labels):
        """The sum of a metric's series whose labels include `labels`."""
        total = 0.0
        for m in re.finditer(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", self.metrics(), re.M):
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def gauge(self, name):
        """A gauge without labels; None when the node does not export it."""
        m = re.search(r"^" + re.escape(name) + r"(?:\{\})? (\S+)$", self.metrics(), re.M)
        return float(m.group(1)) if m else None

    def forwarded(self, **labels):
        return self.metric("mcp_bridge_forwarded_requests_total", **labels)


class Front:
    """A plain nginx round-robin over the nodes: no affinity, nothing
    buffered, the upstream's connections kept alive, long read timeouts."""

    def __init__(self, workdir, nodes):
        self.dir = os.path.join(workdir, "front")
        os.mkdir(self.dir)
        self.port = free_port()
        self.nodes = nodes
        self.proc = None
        self.seen = set()

    def start(self):
        servers = "\n".join(f"        server {n.address} max_fails=0;" for n in self.nodes)
        conf = f"""
daemon off;
worker_processes 1;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.dir}/body;
    proxy_temp_path {self.dir}/proxy;
    fastcgi_temp_path {self.dir}/fastcgi;
    uwsgi_temp_path {self.dir}/uwsgi;
    scgi_temp_path {self.dir}/scgi;
    upstream nodes {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 0;
        location / {{
            proxy_pass http://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""
        path = os.path.join(self.dir, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        self.proc = subprocess.Popen([NGINX, "-p", self.dir, "-c", path, "-e", os.path.join(self.dir, "error.log")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening():
            if self.proc.poll() is not None:
                return True
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False
        wait_for(listening, 10)
        if self.proc.poll() is not None:
            raise RuntimeError(f"the nginx front did not start: {short(self.proc.stderr.read(), 400)}")
        self.sample()

    def sample(self):
        if self.proc and self.proc.poll() is None:
            for pid in [self.proc.pid] + children(self.proc.pid):
                p = read_proc(pid)
                if p:
                    self.seen.add((pid, p.starttime, "front nginx"))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.sample()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def left(self):
        return [(pid, what) for pid, st, what in self.seen if alive(pid, st)]


class Cluster:
    def __init__(self, workdir, ceiling, plain=False):
        self.workdir = workdir
        self.secret = secrets.token_hex(24)
        self.redis = Redis(workdir)
        self.nodes = [Node(workdir, i + 1, self.redis.port, ceiling, secret=self.secret, plain=plain)
                      for i in range(NODES)]
        self.front = Front(workdir, self.nodes)
        self.extra = []

    def start(self):
        self.redis.start()
        for n in self.nodes:
            n.start()
        self.front.start()

    def by_address(self, address):
        for n in self.nodes:
            if n.address == address:
                return n
        return None

    def sample(self):
        for n in self.nodes + self.extra:
            if n.running():
                n.sample()
        self.front.sample()

    def stop(self):
        self.front.stop()
        for n in self.nodes + self.extra:
            n.stop()
        self.redis.stop()

    def forwarded_total(self, **labels):
        return sum(n.forwarded(**labels) for n in self.nodes if n.running())

    def wait_idle(self, seconds=2 * LEASE_MS / 1000 + 1):
        """Waits until Redis counts no live session (those of the previous test
        ended); the count left (None: Redis did not answer)."""
        wait_for(lambda: self._live_or_none() == 0, seconds)
        return self._live_or_none()

    def check_idle(self):
        idle = self.wait_idle()
        if idle != 0:
            raise Failed(f"{idle} sessions of earlier tests still counted in Redis after {2 * LEASE_MS + 1000} ms "
                         f"(none is live): {self.redis.cluster_sessions()}; "
                         f"nodes {[f'{n.index}={n.address}' for n in self.nodes]}")

    def _live_or_none(self):
        try:
            return self.redis.live_sessions()
        except (OSError, RedisError):
            return None


# -------------------------------------------------------------------- tests

def describe(e):
    """An exception as one line; an exception group as its leaves'."""
    if isinstance(e, BaseExceptionGroup):
        return " / ".join(describe(x) for x in e.exceptions)
    if isinstance(e, Failed):
        return str(e)
    if isinstance(e, TimeoutError) and not str(e):
        return "no answer before the client's deadline"
    return f"{type(e).__name__}: {short(str(e), 200)}"


def sdk_modules():
    import anyio
    import httpx2
    from mcp import Client
    from mcp.client.sse import sse_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import Implementation
    return anyio, httpx2, Client, sse_client, streamable_http_client, Implementation


async def sdk_session(url, kind, label, calls, at_once=8):
    """One SDK client of `kind` (sse, streamable, stateless) through the front:
    initialize, tools/list, `calls` numbered echo calls one after another,
    `at_once` concurrent ones, and as many numbered notify calls, each
    notification checked to arrive once and in order. Returns the session
    id (None for stateless)."""
    anyio, httpx2, Client, sse_client, streamable_http_client, Implementation = sdk_modules()
    notes = []
    sids = []

    async def on_log(params):
        notes.append(params.data)

    async def on_response(response):
        sid = response.headers.get("mcp-session-id")
        if sid and sid not in sids:
            sids.append(sid)

    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(timeout=timeout, event_hooks={"response": [on_response]}, trust_env=False) as http:
        if kind == "sse":
            transport = sse_client(f"{url}/sse", on_session_created=sids.append)
            mode = "legacy"
        else:
            transport = streamable_http_client(url, http_client=http)
            mode = "legacy" if kind == "streamable" else "auto"
        info = Implementation(name=label, version="1.0.0")
        async with Client(transport, mode=mode, client_info=info, logging_callback=on_log, log_level="info") as client:
            if kind == "stateless":
                check(client.protocol_version == MODERN_VERSION,
                      f"{label}: the SDK settled on {client.protocol_version}, not {MODERN_VERSION}")
            names = [t.name for t in (await client.list_tools()).tools]
            check("echo" in names and "notify" in names, f"{label}: tools/list lacks echo/notify: {names}")

            def text(result):
                check(not result.is_error, f"{label}: tool error {result}")
                return result.content[0].text
            got = [text(await client.call_tool("echo", {"text": f"{label} #{i}"})) for i in range(calls)]
            want = [f"{label} #{i}" for i in range(calls)]
            if got != want:
                raise Wrong(f"{label}: echo sequence {got} != {want}")
            answers = {}

            async def one(i):
                answers[i] = text(await client.call_tool("echo", {"text": f"{label} at once #{i}"}))
            async with anyio.create_task_group() as tg:
                for i in range(at_once):
                    tg.start_soon(one, i)
            if answers != {i: f"{label} at once #{i}" for i in range(at_once)}:
                raise Wrong(f"{label}: concurrent echoes crossed: {answers}")
            for i in range(calls):
                check(text(await client.call_tool("notify", {"text": f"{label} note #{i}"})) == "ok",
                      f"{label}: notify #{i}")
            wanted = [f"{label} note #{i}" for i in range(calls)]
            if notes != wanted:
                raise Wrong(f"{label}: notifications {notes} != {wanted}")
            check(text(await client.call_tool("add", {"a": 2, "b": 40})) == "42", f"{label}: add")
    return sids[0] if sids else None


def test_sdk_clients(c):
    """1. The official SDK's three kinds of client through the front."""
    anyio = sdk_modules()[0]
    url = f"http://127.0.0.1:{c.front.port}{BASE_URI}"
    before = {t: c.forwarded_total(transport=t) for t in ("sse", "streamable")}
    before_all = c.forwarded_total()
    before_node = [n.forwarded() for n in c.nodes]
    errors = []
    sids = {}

    async def main():
        async def run(kind, i):
            label = f"{kind}-{i}"
            try:
                with anyio.fail_after(30):
                    sids[label] = await sdk_session(url, kind, label, calls=12)
            except Exception as e:  # noqa: BLE001 - any SDK failure is the finding
                errors.append(f"{label}: {describe(e)}")
        # Two clients of each kind at once: within the ceiling of 4 sessions
        # (the stateless ones hold none).
        async with anyio.create_task_group() as tg:
            for kind in ("sse", "streamable", "stateless"):
                for i in range(2):
                    tg.start_soon(run, kind, i)

    anyio.run(main)
    check(not errors, "; ".join(errors))
    for label, sid in sids.items():
        if label.startswith("stateless"):
            continue
        check(sid and owner_of(sid) and c.by_address(owner_of(sid)),
              f"{label}: session id {sid!r} does not name a node of the cluster")
    moved = {t: c.forwarded_total(transport=t) - before[t] for t in before}
    check(all(v > 0 for v in moved.values()),
          f"mcp_bridge_forwarded_requests_total did not move for every transport: {moved} "
          f"(all transports: {c.forwarded_total() - before_all})")
    per_node = [n.forwarded() - b for n, b in zip(c.nodes, before_node)]
    check(all(v > 0 for v in per_node), f"not every node forwarded requests: {per_node}")
    return f"forwarded: {moved}, by node {per_node}"


def open_on(node, name):
    s = Streamable(node.port, name)
    status, body = s.open()
    check(status == 200, f"initialize on {node.label()}: {status} {short(body)}")
    check(owner_of(s.sid) == node.address, f"{node.label()} minted {s.sid!r}, which does not name it")
    return s


def calls_succeed(c, s, n, what):
    """n calls through the front (round-robin: every node gets some)."""
    for i in range(n):
        status, text, body = s.call("echo", {"text": f"{what} {i}"}, port=c.front.port)
        check(status == 200 and text == f"{what} {i}", f"{what}: call {i} through the front: {status} {short(body)}")


def test_node_killed(c):
    """2. kill -9 of one node."""
    victim = c.nodes[-1]
    survivors = c.nodes[:-1]
    sessions = {n.index: open_on(n, f"kill-{n.index}") for n in c.nodes}
    sse = Sse(victim.port, "kill-sse")
    status, body = sse.open()
    check(status == 200, f"SSE GET on {victim.label()}: {status} {short(body)}")
    try:
        check(owner_of(sse.sid) == victim.address, f"SSE id {sse.sid!r} does not name {victim.label()}")
        sse.initialize(port=c.front.port)
        for s in sessions.values():
            calls_succeed(c, s, 3, f"before the kill, {s.name}")
        status, text = sse.call("echo", {"text": "before"}, port=c.front.port)
        check(status == 202 and text == "before", f"SSE call through the front before the kill: {status} {text}")

        c.sample()
        killed_at = time.monotonic()
        victim.kill9()
        for n in survivors:
            calls_succeed(c, sessions[n.index], 4, f"after the kill, {sessions[n.index].name}")
        statuses = [sessions[victim.index].call("echo", {"text": "x"}, port=c.front.port)[0] for _ in range(3)]
        check(statuses == [404] * 3, f"a session of the killed node through the front: {statuses}, not 404")
        check(sse.ended.wait(5), "the killed node's SSE stream did not end within 5 s")
        status, _ = sse.post({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}, port=c.front.port)
        check(status == 404, f"a POST for the killed node's SSE session: {status}, not 404")

        gone = wait_for(lambda: victim.address not in c.redis.node_keys(),
                        (LEASE_MS / 1000) + LEASE_MARGIN_S + 2)
        took = time.monotonic() - killed_at
        check(gone, f"node:{victim.address} still in Redis {took:.1f} s after the kill")
        check(took <= LEASE_MS / 1000 + LEASE_MARGIN_S,
              f"node:{victim.address} left Redis {took:.2f} s after the kill (lease {LEASE_MS} ms)")
        slow = []
        for n in survivors:
            started = time.monotonic()
            status, _, _ = sessions[victim.index].call("echo", {"text": "x"}, port=n.port)
            elapsed = time.monotonic() - started
            check(status == 404, f"{n.label()} answered {status} for a session of the dead node, not 404")
            if elapsed > QUICK_S:
                slow.append(f"{n.label()} {elapsed:.2f} s")
        check(not slow, f"404 for the dead node's session not quick: {slow}")
        for n in survivors:
            check(sessions[n.index].delete(port=c.front.port) == 200, f"DELETE of {sessions[n.index].name}")
            sessions[n.index].sid = None
    finally:
        sse.close()
        for n in survivors:
            if sessions[n.index].sid:
                try:
                    sessions[n.index].delete(port=n.port)
                except OSError:
                    pass
        # Back for the next tests, on the same address: its old ids stay dead.
        if not victim.running():
            victim.start()
    back = wait_for(lambda: victim.address in c.redis.node_keys(), LEASE_MS / 1000 + 2)
    check(back, f"the restarted {victim.label()} is not in Redis")
    status, _, _ = sessions[victim.index].call("echo", {"text": "x"}, port=victim.port)
    check(status == 404, f"the restarted node answered {status} for its previous life's session, not 404")
    # Its previous life's sessions (a Streamable and an SSE one) must not
    # count against the ceiling any more.

    def inherited():
        return {route: counts[victim.address] for route, counts in c.redis.cluster_sessions().items()
                if counts.get(victim.address)}
    stale = wait_for(lambda: not inherited(), 2 * LEASE_MS / 1000 + LEASE_MARGIN_S) or inherited()
    if stale is not True:
        # Repaired by hand so that the next tests measure their own things.
        for route in stale:
            c.redis.command("HDEL", f"{KEY_PREFIX}sessions:{route}", victim.address)
        raise Failed(f"the node restarted on {victim.address} still counts its previous life's sessions "
                     f"{2 * LEASE_MS + 1000} ms later: {stale} (removed from Redis by the harness for the next tests)")
    return f"node key gone {took:.2f} s after the kill"


def test_redis_down(c):
    """3. Redis stopped mid-run, then started again on the same port."""
    c.check_idle()
    # Findings that do not stop the test (the gauges); reported at its end.
    problems = []
    sessions, opened, more = [], [], []
    try:
        sessions += [open_on(n, f"redis-{n.index}") for n in c.nodes]
        up = [n.gauge("mcp_bridge_cluster_redis_up") for n in c.nodes]
        if up != [1.0] * len(c.nodes):
            problems.append(f"mcp_bridge_cluster_redis_up with Redis up: {up}")
        c.redis.stop(signal.SIGTERM)
        try:
            for s in sessions:
                calls_succeed(c, s, 4, f"Redis down, {s.name}")
            fresh = Streamable(c.front.port, "redis-down-new")
            status, body = fresh.open()
            check(status == 200, f"a new session through the front with Redis down: {status} {short(body)}")
            opened.append(fresh)
            calls_succeed(c, fresh, 3, "Redis down, new session")
            # A session that ends while Redis is down: its release is lost,
            # and the renewal after Redis returns must correct the count.
            check(sessions[0].delete(port=c.front.port) == 200, "DELETE with Redis down")
            ended = sessions.pop(0)
            down = wait_for(lambda: all(n.gauge("mcp_bridge_cluster_redis_up") == 0 for n in c.nodes),
                            2 * LEASE_MS / 1000)
            if not down:
                problems.append("mcp_bridge_cluster_redis_up with Redis down: "
                                f"{[n.gauge('mcp_bridge_cluster_redis_up') for n in c.nodes]}")
        finally:
            c.redis.start()
        restarted = time.monotonic()
        everyone = {n.address for n in c.nodes}
        back = wait_for(lambda: everyone <= c.redis.node_keys(), 2 * LEASE_MS / 1000 + LEASE_MARGIN_S)
        took = time.monotonic() - restarted
        check(back, f"node keys not back {took:.1f} s after Redis restarted: {sorted(c.redis.node_keys())}")
        # The renewal that set a node's key re-asserted its counts; one more
        # renewal period lets every node's renewal run.
        time.sleep(LEASE_MS / 3000)
        live = len(sessions) + len(opened)
        counted = c.redis.cluster_sessions()
        if sum(sum(v.values()) for v in counted.values()) != live:
            problems.append(f"Redis counts {counted} after the restart; {live} sessions are live")
        while True:
            s = Streamable(c.front.port, f"redis-fill-{len(more)}")
            status, body = s.open()
            if status != 200:
                break
            more.append(s)
            check(live + len(more) <= CEILING, f"{live + len(more)} sessions started after Redis returned, "
                  f"past the ceiling {CEILING}; {'; '.join(problems)}")
        check(status == 429, f"the session past the ceiling got {status}, not 429: {short(body)}")
        check(CEILING_NAME.search(body.decode("utf-8", "replace")),
              f"the 429 does not name max-sessions-per-cluster: {short(body)}")
        check(live + len(more) == CEILING,
              f"429 at {live + len(more)} live sessions cluster-wide, not at the ceiling {CEILING}; "
              f"{'; '.join(problems)}")
        status, _, _ = ended.call("echo", {"text": "x"}, port=c.front.port)
        check(status == 404, f"the session ended while Redis was down answers {status}, not 404")
        up = [n.gauge("mcp_bridge_cluster_redis_up") for n in c.nodes]
        if up != [1.0] * len(c.nodes):
            problems.append(f"mcp_bridge_cluster_redis_up after Redis returned: {up}")
    finally:
        for s in sessions + opened + more:
            try:
                s.delete(port=c.front.port)
            except OSError:
                pass
    check(not problems, "; ".join(problems))
    return f"node keys back {took:.2f} s after Redis restarted"


# What forged_requests sends to each port: a POST of each transport, a
# Streamable GET and DELETE.
FORGED_PER_PORT = 4


def forged_requests(c, sid, ports):
    """Requests naming `sid` on both transports to each port: what was
    answered otherwise than with 404."""
    bad = []
    s = Streamable(0)
    sse = Sse(0)
    for port in ports:
        status, _, body = s.call("echo", {"text": "forged"}, port=port, sid=sid)
        if status != 404:
            bad.append(f"Streamable on :{port} {status} {short(body, 80)}")
        status, body = sse.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, port=port, sid=sid)
        if status != 404:
            bad.append(f"SSE on :{port} {status} {short(body, 80)}")
        for method, accept in (("GET", "text/event-stream"), ("DELETE", None)):
            headers = s.headers(sid)
            if accept:
                headers["Accept"] = accept
            status, _, body = http_request(port, method, BASE_URI, None, headers)
            if status != 404:
                bad.append(f"Streamable {method} on :{port} {status} {short(body, 80)}")
    return bad


def refused_forged(c):
    return sum(n.metric("mcp_bridge_forward_refusals_total", reason="forged") for n in c.nodes)


def test_forged_ids(c):
    """4. Forged ids: 404 everywhere, no outbound connection."""
    ports = [n.port for n in c.nodes] + [c.front.port]
    trap = socket.socket()
    trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.setblocking(False)
    trap_address = "127.0.0.1:%d" % trap.getsockname()[1]
    other = None
    other_trap = None
    try:
        real = open_on(c.nodes[0], "forged-real")
        local, address, mac = SESSION_ID.match(real.sid).groups()
        flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
        cases = {
            "random id naming a listening socket": f"{secrets.token_hex(24)}-{tag(trap_address)}-{secrets.token_hex(16)}",
            "a real id with a flipped MAC digit": f"{local}-{address}-{flipped}",
        }
        # A real id of another cluster (its own name and secret, the same
        # Redis); then that node stops and a socket of ours takes its port.
        other = Node(c.workdir, 4, c.redis.port, CEILING, name=OTHER_NAME, secret=secrets.token_hex(24))
        c.extra.append(other)
        other.start()
        foreign = open_on(other, "forged-other")
        check(other.address in c.redis.node_keys(f"mcp-bridge:{OTHER_NAME}:"),
              f"the other cluster's node is not under mcp-bridge:{OTHER_NAME}: in Redis")
        check(foreign.delete() == 200, "DELETE on the other cluster's node")
        other.stop()
        other_trap = socket.socket()
        other_trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other_trap.bind(("127.0.0.1", other.port))
        other_trap.listen(16)
        other_trap.setblocking(False)
        cases["another cluster's real id"] = foreign.sid

        before = [n.forwarded() for n in c.nodes]
        refused_before = refused_forged(c)
        bad = []
        for what, sid in cases.items():
            bad += [f"{what}: {b}" for b in forged_requests(c, sid, ports)]
        check(not bad, "; ".join(bad))
        after = [n.forwarded() for n in c.nodes]
        check(after == before, f"forwarded_requests_total moved on forged ids: {before} -> {after}")
        for name, sock in (("the random id's", trap), ("the other cluster's node's", other_trap)):
            try:
                conn, _ = sock.accept()
                conn.close()
                raise Failed(f"a node connected to {name} address")
            except BlockingIOError:
                pass
        refused = refused_forged(c) - refused_before
        sent = len(cases) * len(ports) * FORGED_PER_PORT
        check(refused == sent, f"mcp_bridge_forward_refusals_total{{reason=\"forged\"}} rose by {refused}, "
              f"{sent} forged requests were sent")
        status, text, body = real.call("echo", {"text": "still"}, port=c.front.port)
        check(status == 200 and text == "still", f"the real session after the forgeries: {status} {short(body)}")
        check(real.delete(port=c.front.port) == 200, "DELETE of the real session")
    finally:
        trap.close()
        if other_trap:
            other_trap.close()
        if other:
            other.stop()
    return f"{len(cases)} kinds x {len(ports)} ports x {FORGED_PER_PORT} requests refused"


def test_ceiling(c):
    """5. The 5th concurrent session gets 429 wherever it lands."""
    c.check_idle()
    held = []
    sse = Sse(c.front.port, "ceiling-sse")
    try:
        status, body = sse.open()
        check(status == 200, f"an SSE session through the front: {status} {short(body)}")
        for i in range(CEILING - 1):
            s = Streamable(c.front.port, f"ceiling-{i}")
            status, body = s.open()
            check(status == 200, f"session {i + 2} of {CEILING} through the front: {status} {short(body)}")
            held.append(s)
        wrong = []
        for port, where in [(n.port, n.label()) for n in c.nodes] + [(c.front.port, "the front")] * NODES:
            status, body = Streamable(port, "ceiling-over").open()
            if status != 429 or not CEILING_NAME.search(body.decode("utf-8", "replace")):
                wrong.append(f"Streamable on {where}: {status} {short(body, 100)}")
            extra = Sse(port, "ceiling-over-sse")
            status, body = extra.open()
            if status == 200:
                extra.close()
            if status != 429 or not CEILING_NAME.search(body.decode("utf-8", "replace")):
                wrong.append(f"SSE on {where}: {status} {short(body, 100)}")
        check(not wrong, f"past the ceiling of {CEILING}: " + "; ".join(wrong))
        check(held[0].delete(port=c.front.port) == 200, "DELETE of one session")
        held.pop(0)
        s = Streamable(c.front.port, "ceiling-again")
        status, body = s.open()
        check(status == 200, f"a new session after one ended: {status} {short(body)}")
        held.append(s)
        calls_succeed(c, s, 3, "the new session")
    finally:
        sse.close()
        for s in held:
            s.delete(port=c.front.port)
    return ""


async def mrtr_calls(first_port, retry_port):
    """A stateless (2026-07-28) SDK client whose first requests go to one node
    and whose retries (requests carrying a requestState) go to another: the
    conformance fixture's tools that ask the client mid-call. Returns (the
    tools' texts, what the client was asked, retries sent)."""
    anyio, httpx2, Client, _, streamable_http_client, Implementation = sdk_modules()
    import mcp_types

    retries = itertools.count()
    # The first retry as sent (headers, body), for the forged states.
    first_retry = {}

    async def route(request):
        retry = b'"requestState"' in request.content
        if retry:
            next(retries)
            first_retry.setdefault("headers", dict(request.headers))
            first_retry.setdefault("content", request.content)
        request.url = request.url.copy_with(port=retry_port if retry else first_port)

    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return mcp_types.ElicitResult(action="accept", content={"name": "Alice"})

    async def on_sample(context, params):
        asked.append("sampling")
        return mcp_types.CreateMessageResult.model_validate(
            {"role": "assistant", "content": {"type": "text", "text": "Paris"}, "model": "cluster",
             "stopReason": "endTurn"})

    texts = {}
    timeout = httpx2.Timeout(30, read=300)
    async with httpx2.AsyncClient(timeout=timeout, event_hooks={"request": [route]}, trust_env=False) as http:
        transport = streamable_http_client(f"http://127.0.0.1:{first_port}{BASE_URI}", http_client=http)
        info = Implementation(name="cluster-mrtr", version="1.0.0")
        async with Client(transport, mode=MODERN_VERSION, client_info=info, elicitation_callback=on_elicit,
                          sampling_callback=on_sample) as client:
            for tool in ("test_input_required_result_elicitation", "test_input_required_result_sampling",
                         "test_input_required_result_multi_round"):
                result = await client.call_tool(tool, {})
                check(not result.is_error, f"{tool}: {result}")
                texts[tool] = result.content[0].text
    return texts, asked, next(retries), first_retry


def test_mrtr(c):
    """6. A stateless call's retry (its requestState) on another node than
    the one holding the call."""
    anyio = sdk_modules()[0]
    nodes = [Node(c.workdir, 5 + i, c.redis.port, CEILING, secret=c.secret, fixture_args=["--conformance"])
             for i in range(2)]
    c.extra += nodes
    try:
        for n in nodes:
            n.start()
        before = nodes[1].forwarded()
        holder = {}

        async def main():
            with anyio.fail_after(60):
                holder["out"] = await mrtr_calls(nodes[0].port, nodes[1].port)
        try:
            anyio.run(main)
        except Exception as e:  # noqa: BLE001 - any SDK failure is the finding
            raise Failed(f"the SDK's calls: {describe(e)}") from None
        texts, asked, retries, first_retry = holder["out"]
        check("Alice" in texts["test_input_required_result_elicitation"], f"the elicitation's result: {texts}")
        check("Paris" in texts["test_input_required_result_sampling"], f"the sampling's result: {texts}")
        check(len(asked) == 4, f"the client was asked {asked}, not 4 questions")
        moved = nodes[1].forwarded() - before
        check(retries >= 4 and moved == retries,
              f"the retries' node forwarded {moved:.0f} requests; {retries} retries were sent to it")
        forged_states(nodes, first_retry)
    finally:
        for n in nodes:
            n.stop()
    return f"{retries} retries forwarded, forged requestStates refused"


REQUEST_STATE = re.compile(rb'"requestState"\s*:\s*"([^"]*)"')
STATE_TAG = re.compile(r"^([0-9a-f]+)-([0-9a-f]{32})~(.+)$")


def forged_states(nodes, retry):
    """A retry replayed with a forged node tag in its requestState (a flipped
    MAC digit; an address of a listening socket of ours with a random MAC):
    no success, nothing forwarded, nothing connects to the socket."""
    m = REQUEST_STATE.search(retry.get("content") or b"")
    check(m, "no retry carried a requestState")
    state = m.group(1).decode()
    tagged = STATE_TAG.match(state)
    check(tagged and bytes.fromhex(tagged.group(1)).decode("utf-8", "replace") == nodes[0].address,
          f"the requestState {short(state, 100)} does not start with the tag of the node holding the call "
          f"({nodes[0].address})")
    address_hex, mac, rest = tagged.groups()
    trap = socket.socket()
    trap.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.setblocking(False)
    try:
        trap_address = "127.0.0.1:%d" % trap.getsockname()[1]
        forged = {"a flipped MAC digit": f"{address_hex}-{mac[:-1]}{'0' if mac[-1] != '0' else '1'}~{rest}",
                  "naming a listening socket": f"{tag(trap_address)}-{secrets.token_hex(16)}~{rest}"}
        headers = {k: v for k, v in retry["headers"].items()
                   if k.lower() not in ("host", "content-length", "connection", "accept-encoding")}
        before = [n.forwarded() for n in nodes]
        bad = []
        for what, fake in forged.items():
            body = retry["content"].replace(m.group(0), b'"requestState":' + json.dumps(fake).encode())
            status, h, answer = http_request(nodes[1].port, "POST", BASE_URI, body, headers)
            try:
                results = [x for x in jsonrpc_messages(h, answer) if "result" in x]
            except ValueError:
                results = []
            if 200 <= status < 300 and results:
                bad.append(f"{what}: {status} with a result {short(answer, 120)}")
        check(not bad, "a forged requestState was answered: " + "; ".join(bad))
        after = [n.forwarded() for n in nodes]
        check(after == before, f"forged requestStates were forwarded: {before} -> {after}")
        try:
            trap.accept()[0].close()
            raise Failed("a node connected to the address a forged requestState names")
        except BlockingIOError:
            pass
    finally:
        trap.close()


def test_default_hosts(c):
    """7. Nodes with serve's default Host check (loopback names on their own
    port): a request sent to one node with its Host reaches the owner."""
    nodes = [Node(c.workdir, 7 + i, c.redis.port, CEILING, secret=c.secret, allow_any_port=False) for i in range(2)]
    c.extra += nodes
    try:
        for n in nodes:
            n.start()
        s = open_on(nodes[0], "default-hosts")
        status, text, body = s.call("echo", {"text": "via the other node"}, port=nodes[1].port)
        check(status == 200 and text == "via the other node",
              f"a POST to {nodes[1].label()} (Host 127.0.0.1:{nodes[1].port}) for a session of "
              f"{nodes[0].label()}: {status} {short(body)}")
        s.delete()
    finally:
        for n in nodes:
            n.stop()
    return ""


def leak_report(c):
    """Stops everything but Redis; {node label: (backends, hosts, nginx)},
    front nginx left, and the stale keys after a lease."""
    c.sample()
    c.front.stop()
    exits = {}
    for n in c.nodes + c.extra:
        exits[n.label()] = n.stop()
    stopped = time.monotonic()
    table = {}
    for n in c.nodes + c.extra:
        wait_for(lambda n=n: not n.backends_left() and not n.left(), 5)
        left = n.left()
        table[n.label()] = (len(n.backends_left()), sum(1 for _, w in left if w == "host"),
                            sum(1 for _, w in left if w in ("nginx", "serve")))
    front_left = len(c.front.left())
    time.sleep(max(0.0, LEASE_MS / 1000 + 0.5 - (time.monotonic() - stopped)))
    stale = c.redis.keys("mcp-bridge:")
    return table, front_left, stale, exits


# Log lines that are a bug whatever the test did: Lua errors, a panic, a
# process that crashed (only the tests' SIGKILLs are expected), nginx's
# gravest levels.
BUG_LOG = re.compile(r"runtime error|lua entry thread aborted|attempt to (index|call|compare|perform|concatenate)"
                     r"|panicked|stack traceback|exited on signal (?!9$)\d+|\[(alert|crit|emerg)\]")


# nginx's [alert] for a worker (or a host it reaps) the chaos killed.
KILLED_LOG = re.compile(r"(worker|unknown) process \d+ exited on signal 9$")


def bug_lines(c):
    """{node log: [lines]} of every log of every node's every start."""
    found = {}
    for path in sorted(os.listdir(c.workdir)):
        if re.match(r"^node\d+-\d+\.log$", path):
            with open(os.path.join(c.workdir, path), errors="replace") as f:
                lines = [short(line.strip(), 240) for line in f
                         if BUG_LOG.search(line) and not KILLED_LOG.search(line.strip())]
            if lines:
                found[path] = lines
    return found


def test_leaks(c):
    """8. Nothing left after the nodes stop."""
    table, front_left, stale, exits = leak_report(c)
    bad = [f"{k}: {b} backends, {h} hosts, {x} nginx/serve" for k, (b, h, x) in table.items() if b or h or x]
    if front_left:
        bad.append(f"{front_left} front nginx processes")
    if stale:
        bad.append(f"Redis keys {LEASE_MS + 500} ms after the nodes stopped: {stale}")
    nonzero = {k: v for k, v in exits.items() if v not in (0, None)}
    if nonzero:
        bad.append(f"exit status on SIGTERM: {nonzero}")
    for path, lines in bug_lines(c).items():
        bad.append(f"{path}: {len(lines)} lines such as {lines[0]}")
    check(not bad, "; ".join(bad))
    return ""


TESTS = [
    (1, "SDK clients through the front (SSE, Streamable, stateless), in order, forwarded", test_sdk_clients),
    (2, "kill -9 of a node", test_node_killed),
    (3, "Redis stopped and restarted", test_redis_down),
    (4, "forged ids", test_forged_ids),
    (5, "the cluster-wide ceiling", test_ceiling),
    (6, "a stateless call's retry (requestState) on another node", test_mrtr),
    (7, "forwarding between nodes with serve's default Host check", test_default_hosts),
    (8, "leaks after stop", test_leaks),
]


def run_tests(c, only):
    failures = 0
    for number, title, fn in TESTS:
        if only and number not in only and fn is not test_leaks:
            continue
        started = time.monotonic()
        try:
            note = fn(c)
            line = "ok"
        except Failed as e:
            line, note = f"FAILED {e}", ""
            failures += 1
        except Exception as e:  # noqa: BLE001 - a harness error fails the test, with its trace
            traceback.print_exc()
            line, note = f"FAILED {type(e).__name__}: {e}", ""
            failures += 1
        took = time.monotonic() - started
        print(f"{number}. {title}: {line}" + (f" ({note}; {took:.1f} s)" if note else f" ({took:.1f} s)"),
              flush=True)
    return failures


# -------------------------------------------------------------------- chaos

def run_chaos(c, seconds, rng):
    """SDK clients of every kind through the front while the chaos thread
    kills workers, reloads and kills nodes; a leak table at the end."""
    anyio = sdk_modules()[0]
    url = f"http://127.0.0.1:{c.front.port}{BASE_URI}"
    counts = collections.Counter()
    wrong = []
    stop = threading.Event()
    events = collections.Counter()
    reasons = collections.Counter()

    def chaos():
        killed_node = False
        started = time.monotonic()
        while not stop.wait(rng.uniform(0.5, 1.5)):
            c.sample()
            live = [n for n in c.nodes if n.running()]
            if not killed_node and time.monotonic() - started > seconds / 3:
                victim = rng.choice(live)
                victim.kill9()
                events["node kill -9"] += 1
                killed_node = True
                # Back well within its lease, as a service manager would
                # restart it: its previous life's sessions must not count.
                if stop.wait(0.3):
                    victim.start()
                    break
                victim.start()
                events["node restart"] += 1
                continue
            node = rng.choice(live)
            if rng.random() < 0.6:
                workers = node.workers()
                if workers:
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    events["worker SIGKILL"] += 1
            elif node.master:
                os.kill(node.master, signal.SIGHUP)
                events["master SIGHUP"] += 1

    async def client(kind, i):
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            label = f"{kind}-{i}.{n}"
            try:
                with anyio.fail_after(30):
                    await sdk_session(url, kind, label, calls=rng.randint(1, 6), at_once=3)
                counts[(kind, "completed")] += 1
            except Exception as e:  # noqa: BLE001 - kills cut sessions in any way
                # A wrong answer is a bug whatever the chaos did; a missing
                # one is what a kill costs.
                if isinstance(e, Wrong):
                    wrong.append(str(e))
                counts[(kind, "disrupted")] += 1
                why = re.sub(r"[0-9a-f]{16,}", "<id>", describe(e))
                reasons[(kind, re.sub(r"\d{3,}|#\d+|\d+\.\d+", "N", why))] += 1
            await anyio.sleep(rng.uniform(0, 0.3))

    async def main():
        async with anyio.create_task_group() as tg:
            for kind in ("sse", "streamable", "stateless"):
                for i in range(4):
                    tg.start_soon(client, kind, i)

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        anyio.run(main)
    finally:
        stop.set()
        thread.join()
    elapsed = time.monotonic() - started
    # After the chaos every kind must still work through the front.
    final = []

    async def after():
        for kind in ("sse", "streamable", "stateless"):
            try:
                with anyio.fail_after(30):
                    await sdk_session(url, kind, f"final-{kind}", calls=3, at_once=3)
            except Exception as e:  # noqa: BLE001
                final.append(f"{kind}: {describe(e)}")
    anyio.run(after)
    # Every client is gone: the cluster's counts must come back to 0.
    counted = c.wait_idle()
    counts_detail = c.redis.cluster_sessions() if counted else {}
    table, front_left, stale, exits = leak_report(c)
    print(f"cluster chaos: {elapsed:.0f} s, events: {dict(events)}")
    print("sessions: " + "; ".join(f"{kind} {counts[(kind, 'completed')]} completed, "
                                   f"{counts[(kind, 'disrupted')]} disrupted"
                                   for kind in ("sse", "streamable", "stateless")))
    for (kind, why), n in reasons.most_common(6):
        print(f"  disrupted {kind} x{n}: {short(why, 200)}")
    print(f"{'':28} {'backends left':>14} {'hosts left':>11} {'nginx left':>11}")
    for label, (b, h, x) in table.items():
        print(f"{label:28} {b:14} {h:11} {x:11}")
    print(f"{'front':28} {'':14} {'':11} {front_left:11}")
    print(f"{'Redis stale keys':28} {len(stale):14}")
    print(f"{'Redis sessions, none live':28} {counted if counted is not None else '?':>14}")
    bugs = bug_lines(c)
    print(f"{'error log lines of bugs':28} {sum(len(v) for v in bugs.values()):14}")
    for path, lines in bugs.items():
        print(f"  {path}: {lines[:3]}")
    bad = (sum(b + h + x for b, h, x in table.values()) + front_left + len(stale)
           + (counted if counted is not None else 1) + sum(len(v) for v in bugs.values()))
    if counts_detail:
        print(f"Redis counts with no session live: {counts_detail}")
    failures = 0
    if bad:
        print(f"FAILED leaks: {bad}" + (f" (keys {stale})" if stale else ""))
        failures += 1
    if wrong:
        print(f"FAILED wrong answers under chaos ({len(wrong)}): {wrong[:3]}")
        failures += 1
    if final:
        print(f"FAILED after the chaos: {'; '.join(final)}")
        failures += 1
    if not any(v for (k, what), v in counts.items() if what == "completed"):
        print("FAILED no session completed during the chaos")
        failures += 1
    if not failures:
        print("ok")
    return failures


# --------------------------------------------------------------------- main

def in_venv():
    try:
        import mcp  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chaos", type=float, metavar="SECONDS", help="the chaos run, for this long")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory")
    ap.add_argument("--only", type=int, action="append", help="only these tests (the leak test always runs)")
    ap.add_argument("--seed", type=int, default=None, help="the chaos run's seed")
    ap.add_argument("--plain", action="store_true",
                    help="for debugging the harness: nodes without cluster options (most tests fail)")
    args = ap.parse_args()
    # The SDK logs every failed POST with its trace; the tests report them.
    logging.basicConfig(level=logging.CRITICAL)
    if not in_venv():
        if not os.path.exists(VENV_PYTHON):
            sys.exit("cluster: the MCP Python SDK's venv is missing: run ci/deps.sh test")
        os.execv(VENV_PYTHON, [VENV_PYTHON, os.path.abspath(__file__)] + sys.argv[1:])
    for path, what in ((REDIS_SERVER, "redis-server (apt-get install redis-server)"), (NGINX, "nginx"),
                       (os.path.join(BIN, "mcp-bridge"), "target/release/mcp-bridge (cargo build --release)")):
        if not os.access(path, os.X_OK):
            sys.exit(f"cluster: {what} is missing")

    workdir = tempfile.mkdtemp(prefix="mcp-cluster-")
    os.chmod(workdir, 0o755)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    c = Cluster(workdir, CHAOS_CEILING if args.chaos else CEILING, plain=args.plain)
    failures = 1
    started = time.monotonic()
    try:
        try:
            c.start()
        except RuntimeError as e:
            print(f"FAILED setup: {e}")
            return 1
        log(f"redis :{c.redis.port}, nodes {[n.address for n in c.nodes]}, front :{c.front.port}")
        if args.chaos:
            log(f"chaos seed {seed}")
            failures = run_chaos(c, args.chaos, random.Random(seed))
        else:
            failures = run_tests(c, set(args.only or []))
    finally:
        c.front.stop()
        for n in c.nodes + c.extra:
            if n.running():
                n.stop()
        c.redis.stop()
        print(f"cluster: {time.monotonic() - started:.0f} s, "
              + ("all ok" if not failures else f"{failures} failed"), flush=True)
        if failures or args.keep:
            print(f"cluster: the run's files are in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
