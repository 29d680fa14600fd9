#!/usr/bin/env python3
"""make apisix-test: mcp-bridge inside a real Apache APISIX.

Copies an APISIX built from source (APISIX_TESTBED, default /opt/apisix-testbed:
its OpenResty under openresty/, APISIX under apisix/) into a scratch
directory, installs the plugin there with ci/apisix/install.sh (the commands
of docs/mcp-bridge.md, Installation), starts it in standalone mode (routes in
conf/apisix.yaml) bridging the project's fixture server, and runs, over
HTTP+SSE and Streamable HTTP (sessions, and stateless 2026-07-28 requests on
the pool):

   1  the official MCP SDKs end to end through APISIX, 1 and 2 workers: the
      TypeScript SDK 1.x over HTTP+SSE (t/e2e/sdk-sse.test.mjs) and Streamable
      HTTP (sdk-streamable.test.mjs), the 2.x client in 2026-07-28
      (client-modern.test.mjs), the Python SDK (t/e2e-python), each against a
      route of its own in their external-gateway mode (MCP_BRIDGE_E2E_URL)
   2  max_sessions (1 worker) and max_sessions_per_node (2 workers): 429 +
      Retry-After, on GET {base}/sse and on a Streamable initialize
   3  POSTs of one session taken by either worker, with and without
      plugin_attr runtime_dir
   4  reload, quit, kill -9 of a worker and of the master, with live
      sessions of both transports (and pooled backends)
   5  a backend flooding a slow client; a route refused without
      lua_module_has_body_filter_fix on lua-nginx-module < 0.10.29
   6  key-auth consumers, and sessions (and pools) bound to route and consumer
   7  the control API: every worker's sessions listed, one ended
   8  the metrics, through APISIX's prometheus plugin, by transport
   9  a chunked body over max_message_bytes: 413 before it is read whole
  10  lua_check_client_abort: how fast a killed client's backend ends
  11  the t/*.t suites under the real Test::Nginx with the testbed's nginx
  12  stateless 2026-07-28 requests served by each worker's pool
  13  a route shaped as docs/mcp-bridge.md's example: both endpoints
  14  two nodes of one cluster (plugin_attr cluster, a Redis of their own):
      each serves the other's sessions, the cluster's ceiling, kill -9 of one

and checks that nothing is left running. Prints one table; exits 1 if any
scenario failed. Whatever happens, every process it started is killed and the
scratch directory removed.

Usage: ci/apisix/run.py [--why-skipped] [--keep] [--only N,N...]
  --why-skipped  only print why the run would be skipped (no testbed), if it would
  --keep        keep the scratch directory (its logs) afterwards
  --only        run only these scenarios (numbers above)
"""
import argparse
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target", "release")
INSTALL = os.path.join(ROOT, "ci", "apisix", "install.sh")
TESTBED = os.environ.get("APISIX_TESTBED", "/opt/apisix-testbed")
NGINX = os.path.join(TESTBED, "openresty", "nginx", "sbin", "nginx")
OPENRESTY_BIN = os.path.join(TESTBED, "openresty", "bin")
APISIX_SRC = os.path.join(TESTBED, "apisix")
TEST_NGINX_LIB = os.environ.get("TEST_NGINX_LIB", os.path.join(TESTBED, "test-nginx", "lib"))

IO_TIMEOUT = 10
# nginx's workers run as this user when APISIX is started as root.
WORKER_USER = "nobody"

# Error-log lines that are expected here, whatever the scenario: the
# container refuses worker_rlimit_nofile; the testbed's stand-in
# lua-resty-redis-cluster has no init() (privileged agent, once); APISIX's
# event broker at reload and quit; the workers and masters the scenarios kill.
KNOWN_LOG = [
    re.compile(r"setrlimit\(RLIMIT_NOFILE, \d+\) failed"),
    re.compile(r"rediscluster\.lua:\d+: bad argument #1 to 'rawget'"),
    re.compile(r"event worker failed to communicate with broker|lua-resty-events|events\.lua|broker\.lua:\d+: run\(\): event broker failed"),
    re.compile(r"worker process \d+ exited on signal 9"),
]
# Lines that are a bug whatever caused them.
BUG_LOG = re.compile(r"runtime error|lua entry thread aborted|attempt to (index|call|compare|perform|concatenate)"
                     r"|panicked|lost the request's phase|API disabled in the context")
LOG_LINE = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(emerg|alert|crit|error)\] (.*)$")


def say(*args):
    print(*args, flush=True)


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


# ---------------------------------------------------------------- processes

def proc_stat(pid):
    """(state, ppid, starttime) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("latin-1")
    except OSError:
        return None
    fields = stat[stat.rindex(") ") + 2:].split(" ")
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("latin-1").strip()
    except OSError:
        return ""


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def alive(pid):
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def children(ppid):
    out = []
    for pid in all_pids():
        st = proc_stat(pid)
        if st and st[1] == ppid:
            out.append(pid)
    return out


def exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def holds_file_under(pid, prefix):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            pass
    return False


def processes_of(scratch):
    """Every process this run started: programs under the scratch directory
    (hosts, fixtures), and the testbed's nginx with a file open there (every
    nginx of this run logs there, masters, workers and Test::Nginx's)."""
    prefix = scratch + "/"
    nginx = os.path.realpath(NGINX)
    found = []
    for pid in all_pids():
        if pid == os.getpid():
            continue
        path = exe(pid)
        if path.startswith(prefix) or (path == nginx and holds_file_under(pid, prefix)):
            found.append(pid)
    return found


def fixture_records(pid_dir):
    """[(pid, role, starttime)] the fixture recorded in pid_dir."""
    out = []
    try:
        names = os.listdir(pid_dir)
    except OSError:
        return out
    for name in names:
        m = re.match(r"^(\d+)\.pid$", name)
        if not m:
            continue
        try:
            with open(os.path.join(pid_dir, name)) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        out.append((int(m.group(1)), rec.get("role", "?"), rec.get("starttime")))
    return out


def fixture_left(pid_dir):
    """Recorded processes still there: running, or zombies of a parent that
    should have reaped them. A zombie inherited by PID 1 is dead (this
    machine's PID 1 reaps lazily)."""
    left = []
    for pid, role, start in fixture_records(pid_dir):
        st = proc_stat(pid)
        if st and st[2] == start and not (st[0] == "Z" and st[1] == 1):
            left.append(f"{pid} {role} {st[0]}")
    return left


def wait_for(pred, timeout, step=0.01):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(step)


def wait_fixture_gone(pid_dir, timeout):
    """Seconds until nothing recorded in pid_dir runs, or None."""
    t0 = time.monotonic()
    if wait_for(lambda: not fixture_left(pid_dir), timeout):
        return time.monotonic() - t0
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- HTTP + SSE

class Ended(Exception):
    pass


class Stream:
    """GET {base}/sse over a raw socket; its events (chunked decoding)."""

    def __init__(self, port, path, headers=None, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{extra}\r\n"
                          .encode())
        self.raw = b""
        self.body = b""
        self.sid = None
        # (bytes, seconds): read at most that much at a time, pausing first.
        self.throttle = None
        self.status, self.headers = self._head()
        self.error = None
        if self.status != 200:
            self.error = self._error_body()
            self.close()

    def _recv(self, n=65536):
        if self.throttle:
            n = self.throttle[0]
            time.sleep(self.throttle[1])
        try:
            data = self.sock.recv(n)
        except ConnectionError as e:
            raise Ended(f"cut ({type(e).__name__})") from None
        if not data:
            raise Ended("EOF")
        self.raw += data

    def _until(self, marker):
        while marker not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(marker, 1)
        return head

    def _head(self):
        lines = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split(" ", 2)[1]), headers

    def _error_body(self):
        body = b""
        try:
            if "chunked" in self.headers.get("transfer-encoding", ""):
                while True:
                    size = int(self._until(b"\r\n").split(b";")[0], 16)
                    if size == 0:
                        break
                    while len(self.raw) < size + 2:
                        self._recv()
                    body += self.raw[:size]
                    self.raw = self.raw[size + 2:]
            else:
                n = int(self.headers.get("content-length", "0") or 0)
                while len(self.raw) < n:
                    self._recv()
                body = self.raw[:n]
        except (Ended, OSError, ValueError):
            body = body or self.raw
        return body.decode("utf-8", "replace")

    def event(self):
        while True:
            while b"\n\n" not in self.body:
                size = int(self._until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    raise Ended("last chunk")
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
        while True:
            ev = self.event()
            if ev.get("event") == "message":
                return json.loads(ev["data"])

    def response(self, want):
        while True:
            msg = self.message()
            if isinstance(msg, dict) and msg.get("id") == want and "method" not in msg:
                return msg

    def ended_within(self, timeout):
        """True if the stream ends (last chunk, EOF or reset) within timeout."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                self.event()
        except Ended:
            return True
        except socket.timeout:
            return False
        except OSError:
            return True
        finally:
            try:
                self.sock.settimeout(IO_TIMEOUT)
            except OSError:
                pass

    def close(self, rst=False):
        try:
            if rst:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            self.sock.close()
        except OSError:
            pass


def http_request(port, method, path, body=None, headers=None, timeout=IO_TIMEOUT):
    """(status, headers with lowercase names, body text) over a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Connection": "close"}
    if body is not None:
        h["Content-Type"] = "application/json"
    h.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


class Session:
    """An MCP session over HTTP+SSE: its stream, and POSTs to its endpoint."""

    def __init__(self, port, base, headers=None, rcvbuf=None):
        self.port = port
        self.base = base
        self.headers = headers or {}
        self.stream = Stream(port, f"{base}/sse", self.headers, rcvbuf)
        self.status = self.stream.status
        self.sid = None
        if self.status == 200:
            ev = self.stream.event()
            check(ev.get("event") == "endpoint", f"first event is not the endpoint: {ev}")
            self.sid = ev["data"].split("sessionId=", 1)[1]
            self.endpoint = ev["data"]
        self.next_id = 1

    def post(self, message, headers=None, base=None, sid=None):
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        path = f"{base or self.base}/message?sessionId={sid or self.sid}"
        h = dict(self.headers)
        h.update(headers or {})
        return http_request(self.port, "POST", path, body, h)

    def call(self, tool, args=None):
        """Calls a tool; its result's first text."""
        id_ = self.next_id
        self.next_id += 1
        status, _, body = self.post({"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                                     "params": {"name": tool, "arguments": args or {}}})
        check(status == 202, f"POST tools/call {tool}: {status} {body}")
        msg = self.stream.response(id_)
        check("result" in msg, f"tools/call {tool}: {msg}")
        return msg["result"]["content"][0]["text"]

    def close(self, rst=False):
        self.stream.close(rst)


# ---------------------------------------------------------------- Streamable HTTP

SESSION_VERSION = "2025-06-18"
MODERN = "2026-07-28"
ACCEPT_BOTH = "application/json, text/event-stream"


def sse_messages(text):
    """The JSON-RPC messages of an event-stream body."""
    out = []
    for block in re.split(r"\r?\n\r?\n", text):
        data = [line[5:][1:] if line[5:].startswith(" ") else line[5:]
                for line in block.splitlines() if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def rpc_messages(headers, body):
    """The messages of a Streamable HTTP reply: one JSON document or an
    event stream."""
    ctype = headers.get("content-type", "")
    if ctype.startswith("application/json"):
        return [json.loads(body)]
    if ctype.startswith("text/event-stream"):
        return sse_messages(body)
    return []


def rpc_error_text(body):
    try:
        return json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return body[:200]


class Streamable:
    """An MCP session over Streamable HTTP (revision 2025-06-18): initialize,
    then requests with its Mcp-Session-Id, each on a new connection (so on
    either worker)."""

    def __init__(self, port, base, headers=None):
        self.port = port
        self.base = base
        self.headers = dict(headers or {})
        self.sid = None
        self.next_id = 1
        self.gets = []
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                "params": {"protocolVersion": SESSION_VERSION, "capabilities": {},
                           "clientInfo": {"name": "apisix-test", "version": "1.0.0"}}}
        self.status, self.reply_headers, self.body = self.request(init, session=False)
        self.error = None
        if self.status != 200:
            self.error = rpc_error_text(self.body)
            return
        self.sid = self.reply_headers.get("mcp-session-id")
        check(self.sid and re.fullmatch(r"[0-9a-f]{48}(-[0-9a-f]+-[0-9a-f]{32})?", self.sid),
              f"initialize on {base}: Mcp-Session-Id {self.sid!r}")
        st = self.notify()
        check(st == 202, f"notifications/initialized on {base}: {st}")

    def request(self, message, method="POST", headers=None, base=None, sid=None, session=True):
        """(status, headers, body) of one request, on a new connection."""
        h = {"Accept": ACCEPT_BOTH}
        if session:
            h["Mcp-Session-Id"] = sid or self.sid
            h["MCP-Protocol-Version"] = SESSION_VERSION
        h.update(self.headers)
        h.update(headers or {})
        body = None if message is None else json.dumps(message).encode()
        return http_request(self.port, method, base or self.base, body, h)

    def notify(self, **kw):
        return self.request({"jsonrpc": "2.0", "method": "notifications/x"}, **kw)[0]

    def rpc(self, method, params=None, **kw):
        """(status, the response to a request, or the reply's body)."""
        id_ = self.next_id
        self.next_id += 1
        status, headers, body = self.request({"jsonrpc": "2.0", "id": id_, "method": method,
                                              "params": params or {}}, **kw)
        if status != 200:
            return status, body
        for msg in rpc_messages(headers, body):
            if isinstance(msg, dict) and msg.get("id") == id_ and "method" not in msg:
                return status, msg
        return status, body

    def call(self, tool, args=None, **kw):
        """Calls a tool; its result's first text."""
        status, msg = self.rpc("tools/call", {"name": tool, "arguments": args or {}}, **kw)
        check(status == 200 and isinstance(msg, dict) and "result" in msg,
              f"tools/call {tool} on {self.base}: {status} {str(msg)[:300]}")
        return msg["result"]["content"][0]["text"]

    def open_get(self):
        """The session's GET stream (a Stream)."""
        h = dict(self.headers)
        h.update({"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": SESSION_VERSION})
        g = Stream(self.port, self.base, h)
        check(g.status == 200, f"GET {self.base} with the session: {g.status} {g.error}")
        self.gets.append(g)
        return g

    def delete(self, **kw):
        return self.request(None, method="DELETE", **kw)[0]

    def close(self):
        """DELETE (if it still lives), and its GET streams closed."""
        if self.sid:
            try:
                self.delete()
            except OSError:
                pass
        for g in self.gets:
            g.close()


def stateless(port, base, method, params=None, headers=None):
    """A 2026-07-28 request, no session: (status, its response or the body)."""
    params = dict(params or {})
    params["_meta"] = {"io.modelcontextprotocol/protocolVersion": MODERN,
                       "io.modelcontextprotocol/clientCapabilities": {}}
    h = {"Accept": ACCEPT_BOTH, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method == "tools/call":
        h["Mcp-Name"] = params["name"]
    h.update(headers or {})
    status, rh, body = http_request(port, "POST", base, json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(), h)
    if status != 200:
        return status, body
    for msg in rpc_messages(rh, body):
        if isinstance(msg, dict) and msg.get("id") == 1 and "method" not in msg:
            return status, msg
    return status, body


def stateless_pid(port, base, headers=None):
    """The fixture's pid tool, stateless: (status, {pid, ppid, ...} or the body)."""
    status, msg = stateless(port, base, "tools/call", {"name": "pid", "arguments": {}}, headers)
    if status == 200 and isinstance(msg, dict) and "result" in msg:
        return status, json.loads(msg["result"]["content"][0]["text"])
    return status, msg


# ---------------------------------------------------------------- YAML

def yaml_scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v)


def to_yaml(obj, indent=0):
    """Block-style YAML of dicts, lists and scalars; strings with newlines as
    literal blocks. (APISIX reads YAML; the standard library writes none.)"""
    pad = "  " * indent
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 1))
            elif isinstance(v, str) and "\n" in v:
                lines.append(f"{pad}{k}: |")
                lines.extend(pad + "  " + line for line in v.rstrip("\n").split("\n"))
            elif isinstance(v, (dict, list)):
                lines.append(f"{pad}{k}: {'{}' if isinstance(v, dict) else '[]'}")
            else:
                lines.append(f"{pad}{k}: {yaml_scalar(v)}")
    else:
        for item in obj:
            if isinstance(item, (dict, list)):
                lines.append(f"{pad}-")
                lines.append(to_yaml(item, indent + 1))
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- APISIX

class Apisix:
    """One APISIX: a copy of the testbed's tree with the plugin installed,
    its config.yaml and apisix.yaml, its ports."""

    def __init__(self, run, name, workers, routes, consumers=None, runtime_dir=None,
                 host_program=True, body_filter_fix=True, plugins=("mcp-bridge", "key-auth", "prometheus"),
                 cluster=None):
        self.run = run
        self.name = name
        self.workers_wanted = workers
        self.home = os.path.join(run.scratch, name)
        self.port = free_port()
        self.control_port = free_port()
        self.metrics_port = free_port()
        self.runtime_dir = runtime_dir
        self.log_offset = 0
        # Error-log lines (at [error] or worse) this instance's scenarios cause.
        self.expected_log = []
        # Plain copy of the testbed's tree, without its logs.
        logs = os.path.join(APISIX_SRC, "logs")
        shutil.copytree(APISIX_SRC, self.home, symlinks=True,
                        ignore=lambda d, names: names if d == logs else [])
        os.makedirs(os.path.join(self.home, "logs"), exist_ok=True)
        subprocess.run(["sh", INSTALL, self.home, ROOT], check=True)

        attr = {}
        if runtime_dir:
            attr["runtime_dir"] = runtime_dir
        if host_program:
            attr["host_program"] = os.path.join(self.home, "deps/lib/lua/5.1/mcp-bridge-host")
        if body_filter_fix:
            # The testbed's lua-nginx-module 0.10.28 carries the fix (0581262).
            attr["lua_module_has_body_filter_fix"] = True
        if cluster:
            # As docs/mcp-bridge.md's cluster set-up says.
            attr["cluster"] = dict(cluster, node_address=f"127.0.0.1:{self.port}")
        plugin_attr = {"mcp-bridge": attr}
        if "prometheus" in plugins:
            plugin_attr["prometheus"] = {"export_addr": {"ip": "127.0.0.1", "port": self.metrics_port},
                                         # The exporter renders every 15 s by default.
                                         "refresh_interval": 1}
        config = {
            "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
            "apisix": {
                "node_listen": self.port,
                "enable_ipv6": False,
                "enable_control": True,
                "control": {"ip": "127.0.0.1", "port": self.control_port},
            },
            "plugins": list(plugins),
            "stream_plugins": [],
            "nginx_config": {
                "worker_processes": workers,
                "error_log_level": "warn",
                # The map: APISIX's log_format needs $apisix_request_id, which
                # only apisix-nginx-module (not built here) sets. The second
                # line is what docs/mcp-bridge.md asks for.
                "http_configuration_snippet": "map $request_id $apisix_request_id { default $request_id; }\n"
                                              "lua_check_client_abort on;\n",
                "http": {
                    "custom_lua_shared_dict": {
                        "mcp-bridge-slots": "1m",
                        # APISIX declares it only on apisix-base (its lua {} block).
                        "prometheus-cache": "10m",
                    },
                    # Which worker took a request ($pid), and of which
                    # Streamable session: the cross-worker checks.
                    "access_log_format": "$pid $request_method $request_uri $status $http_mcp_session_id",
                },
            },
            "plugin_attr": plugin_attr,
        }
        with open(os.path.join(self.home, "conf", "config.yaml"), "w") as f:
            f.write(to_yaml(config) + "\n")
        data = {"routes": routes}
        if consumers:
            data["consumers"] = consumers
        with open(os.path.join(self.home, "conf", "apisix.yaml"), "w") as f:
            f.write(to_yaml(data) + "\n#END\n")

    def cli(self, *args, check_rc=True):
        env = dict(os.environ, PATH=OPENRESTY_BIN + ":" + os.environ.get("PATH", ""))
        r = subprocess.run(["./bin/apisix", *args], cwd=self.home, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        if check_rc and r.returncode != 0:
            raise Failed(f"apisix {' '.join(args)} exited {r.returncode}: {r.stdout.strip()[-800:]}")
        return r

    def master(self):
        try:
            with open(os.path.join(self.home, "logs", "nginx.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def workers(self, master=None):
        """Workers serving now (not those shutting down)."""
        master = master or self.master()
        if not master:
            return []
        return sorted(p for p in children(master)
                      if cmdline(p).startswith("nginx: worker process") and "shutting" not in cmdline(p))

    def hosts(self):
        prog = os.path.join(self.home, "deps/lib/lua/5.1/mcp-bridge-host")
        return [p for p in all_pids() if exe(p) == prog and alive(p)]

    def start(self):
        self.cli("start")
        ok = wait_for(lambda: len(self.workers()) == self.workers_wanted and self._answers(), 15, 0.05)
        check(ok, f"{self.name}: APISIX did not start: {self.log_tail()}")
        self.run.started.append(self)

    def _answers(self):
        try:
            status, _, _ = http_request(self.port, "GET", "/-/nothing-here", timeout=1)
            return status == 404
        except OSError:
            return False

    def stop(self):
        if self.master():
            self.cli("stop", check_rc=False)
            wait_for(lambda: not self.master(), 10, 0.05)
            # As systemd does: the rest may end first (a host removes its
            # directory a moment after its worker exited).
            wait_for(lambda: not processes_of(self.home), 3, 0.05)
        # Without a master (killed), nothing else would stop what is left.
        for p in processes_of(self.home):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass

    def log(self):
        try:
            with open(os.path.join(self.home, "logs", "error.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def new_log(self):
        """The error log written since the last call."""
        text = self.log()
        new = text[self.log_offset:]
        self.log_offset = len(text)
        return new

    def log_tail(self, n=15):
        return "\n".join(self.log().splitlines()[-n:])

    def access_log(self):
        # nginx buffers the access log; USR1 (reopen) flushes it.
        master = self.master()
        if master:
            os.kill(master, signal.SIGUSR1)
            time.sleep(0.3)
        try:
            with open(os.path.join(self.home, "logs", "access.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def control(self, method, path):
        status, _, body = http_request(self.control_port, method, path)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body

    def sessions(self):
        status, doc = self.control("GET", "/v1/plugin/mcp-bridge/sessions")
        check(status == 200, f"control API list: {status} {doc}")
        return doc["sessions"]

    def metrics(self):
        # The exporter renders every refresh_interval (1 s): "no data
        # available" (500) before its first rendering.
        deadline = time.monotonic() + 3
        while True:
            status, _, body = http_request(self.metrics_port, "GET", "/apisix/prometheus/metrics")
            if status != 500 or "no data available" not in body or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        check(status == 200, f"metrics: {status} {body[:200]}")
        return body


def parse_metrics(text, prefix="apisix_mcp_bridge_"):
    """{name: [(labels, value)]} of the bridge's series."""
    out = {}
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out.setdefault(m.group(1)[len(prefix):], []).append((labels, float(m.group(4))))
    return out


def metric_sum(metrics, name, **labels):
    return sum(v for lab, v in metrics.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


# ---------------------------------------------------------------- the run

class Run:
    def __init__(self, keep):
        self.keep = keep
        self.scratch = tempfile.mkdtemp(prefix="mcp-bridge-apisix-")
        # Workers run as nobody: they need to reach the fixture and the
        # pid directories under here.
        os.chmod(self.scratch, 0o755)
        self.bin = os.path.join(self.scratch, "bin")
        os.makedirs(self.bin)
        self.fixture = os.path.join(self.bin, "mcp-fixture")
        shutil.copy2(os.path.join(BIN, "mcp-fixture"), self.fixture)
        os.chmod(self.fixture, 0o755)
        self.started = []
        self.results = []
        self.children = []
        self.tmp_tokens = set()
        # The backends' shared HOME in the default runtime directory: made
        # by this run unless it was there before (see cleanup).
        uid = pwd.getpwnam(WORKER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
        self.tmp_home = os.path.join(tempfile.gettempdir(), f"mcp-bridge-{uid}-home")
        self.tmp_home_existed = os.path.exists(self.tmp_home)

    def pid_dir(self, name):
        d = os.path.join(self.scratch, "pids", name)
        os.makedirs(d, exist_ok=True)
        os.chmod(os.path.dirname(d), 0o755)
        os.chmod(d, 0o1777)
        return d

    def worker_owned_dir(self, name):
        """A directory the workers' user owns, mode 0700: a runtime_dir."""
        d = os.path.join(self.scratch, name)
        os.makedirs(d, mode=0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(WORKER_USER)
            os.chown(d, pw.pw_uid, pw.pw_gid)
        return d

    def route(self, id_, base, pid_dir=None, args=(), plugins=None, **conf):
        """A route bridging the fixture at base_uri `base`."""
        c = {"base_uri": base, "command": self.fixture, "args": list(args)}
        if pid_dir:
            c["args"] += ["--pid-dir", pid_dir]
        c.update(conf)
        p = dict(plugins or {})
        p["mcp-bridge"] = c
        # {base}/* alone does not match {base}, the Streamable HTTP endpoint.
        return {"id": id_, "uris": [base, base + "/*"], "plugins": p}

    def scenario(self, number, name, fn, *args):
        t0 = time.monotonic()
        say(f"\n--- {number}. {name}")
        try:
            figures = fn(*args) or ""
            result = "ok"
        except Failed as e:
            figures, result = str(e), "FAIL"
        except Exception as e:  # a crash of the driver is a failure too
            figures, result = f"{type(e).__name__}: {e}", "FAIL"
            traceback.print_exc()
        dt = time.monotonic() - t0
        say(f"    {result} ({dt:.1f} s) {figures}")
        self.results.append((number, name, result, figures, dt))
        return result == "ok"

    def cleanup(self):
        for child in self.children:
            if child.poll() is None:
                try:
                    # Its process group (node, prove and theirs), or itself.
                    os.killpg(child.pid, signal.SIGKILL)
                except OSError:
                    child.kill()
                child.wait()
        for inst in self.started:
            inst.stop()
        for _ in range(3):
            left = processes_of(self.scratch)
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            wait_for(lambda: not [p for p in processes_of(self.scratch) if alive(p)], 5, 0.05)
        # Host directories of hosts killed outright, in the default runtime
        # directory (the system's temporary directory).
        uid = pwd.getpwnam(WORKER_USER).pw_uid if os.geteuid() == 0 else os.geteuid()
        for token in self.tmp_tokens:
            d = os.path.join(tempfile.gettempdir(), f"mcp-bridge-{uid}.{token}")
            if os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)
        if not self.tmp_home_existed and os.path.isdir(self.tmp_home):
            shutil.rmtree(self.tmp_home, ignore_errors=True)
        if self.keep:
            say(f"(kept {self.scratch})")
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)


def log_findings(inst, expected=()):
    """Error-log lines of an instance that are neither known nor expected."""
    bad = []
    for line in inst.log().splitlines():
        m = LOG_LINE.match(line)
        if not m and not BUG_LOG.search(line):
            continue
        text = m.group(2) if m else line
        if BUG_LOG.search(line):
            bad.append(line)
            continue
        if any(p.search(text) for p in KNOWN_LOG) or any(p.search(text) for p in expected):
            continue
        bad.append(line)
    return bad


# ---------------------------------------------------------------- scenarios

# The end-to-end tests with the official MCP SDKs, each against a route of
# its own (base_uri, fixture pid directory) in external-gateway mode
# (MCP_BRIDGE_E2E_URL, MCP_BRIDGE_E2E_PID_DIR): (name, base_uri, command,
# working directory). Their routes set what the tests give `serve`
# (E2E_ROUTE).
E2E_SUITES = [
    ("sdk-sse", "/e2e", ["node", "--test", "--test-reporter=tap", "sdk-sse.test.mjs"], "t/e2e"),
    ("sdk-streamable", "/e2e-streamable", ["node", "--test", "--test-reporter=tap", "sdk-streamable.test.mjs"],
     "t/e2e"),
    ("client-modern", "/e2e-modern", ["node", "--test", "--test-reporter=tap", "client-modern.test.mjs"],
     "t/e2e"),
    ("python", "/e2e-python", [os.path.join(ROOT, "t", "e2e-python", ".venv", "bin", "python"), "-m", "pytest",
                               "-q", "-rs", "t/e2e-python"], "."),
]
# --kill-grace-ms 1000 (every suite), --pool-idle-timeout-ms 1500
# (client-modern, the Python tests).
E2E_ROUTE = {"kill_grace_ms": 1000, "pool_idle_timeout_ms": 1500}


def e2e_routes(run, instance):
    """The suites' routes of an instance, and their pid directories by name."""
    routes, pid_dirs = [], {}
    for name, base, _, _ in E2E_SUITES:
        pid_dirs[name] = run.pid_dir(f"{instance}-{name}")
        routes.append(run.route(base.strip("/"), base, pid_dirs[name], **E2E_ROUTE))
    return routes, pid_dirs


def _run_suite(run, inst, name, base, cmd, cwd, pid_dir):
    """Runs one suite: (passed, skipped, its output); raises Failed if any
    test failed."""
    env = dict(os.environ, MCP_BRIDGE_E2E_URL=f"http://127.0.0.1:{inst.port}{base}",
               MCP_BRIDGE_E2E_PID_DIR=pid_dir)
    p = subprocess.Popen(cmd, cwd=os.path.join(ROOT, cwd), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run.children.append(p)
    try:
        out, _ = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        say(out[-4000:])
        raise Failed(f"{name}: did not finish in 120 s")
    if cmd[0] == "node":
        counts = {k: int(v) for k, v in re.findall(r"^# (pass|fail|skipped|cancelled|todo) (\d+)$", out, re.M)}
        passed, skipped = counts.get("pass", 0), counts.get("skipped", 0)
        failed = counts.get("fail", 0) + counts.get("cancelled", 0)
    else:
        summary = out.strip().splitlines()[-1] if out.strip() else ""
        counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|skipped|failed|errors?)\b", summary)}
        passed, skipped = counts.get("passed", 0), counts.get("skipped", 0)
        failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    if p.returncode != 0 or failed or not passed:
        say(out[-6000:])
        raise Failed(f"{name}: exit {p.returncode}, {passed} passed, {failed} failed, {skipped} skipped")
    return passed, skipped, out


def s1_sdk_e2e(run, inst, pid_dirs):
    node_modules = os.path.join(ROOT, "t", "e2e", "node_modules", "@modelcontextprotocol")
    check(os.path.isdir(os.path.join(node_modules, "sdk")) and os.path.isdir(os.path.join(node_modules, "client")),
          "t/e2e has no node_modules: run `make test-deps` (npm ci in t/e2e)")
    check(os.access(E2E_SUITES[-1][2][0], os.X_OK),
          "no t/e2e-python/.venv: run `make test-deps` (ci/deps.sh test)")
    figures = []
    for name, base, cmd, cwd in E2E_SUITES:
        pid_dir = pid_dirs[name]
        passed, skipped, out = _run_suite(run, inst, name, base, cmd, cwd, pid_dir)
        # Only the test that stops the gateway is left out here, and those
        # that need a gateway of their own (serve with other options).
        own = out.count("needs a gateway of its own")
        check(skipped == 1 + own and "not ours to stop" in out,
              f"{name}: {skipped} skipped, not just the tests that stop or start a gateway")
        check(wait_fixture_gone(pid_dir, 3) is not None, f"{name}: left {fixture_left(pid_dir)}")
        backends = sum(1 for _, role, _ in fixture_records(pid_dir) if role == "backend")
        figures.append(f"{name} {passed} passed ({backends} backends)")
    return ("; ".join(figures) + "; each skipped only the test that stops the gateway (scenario 4) "
            "and those that start one of their own; "
            "no process left")


def s3_cross_worker(run, inst, pid_dir, posts=20):
    s = Session(inst.port, "/mcp")
    check(s.status == 200, f"GET /mcp/sse: {s.status} {s.stream.error}")
    codes = {}
    for i in range(posts):
        status, _, body = s.post({"jsonrpc": "2.0", "id": 1000 + i, "method": "tools/call",
                                  "params": {"name": "echo", "arguments": {"text": f"post {i}"}}})
        codes[status] = codes.get(status, 0) + 1
    got = []
    try:
        for i in range(posts):
            if codes.get(202) != posts:
                break
            msg = s.stream.response(1000 + i)
            got.append(msg["result"]["content"][0]["text"])
    finally:
        s.close()
    log = inst.access_log()
    pids = set(re.findall(r"^(\d+) POST /mcp/message\?sessionId=" + s.sid + r" 202 -$", log, re.M))
    figures = f"{posts} POSTs: " + ", ".join(f"{n}x{c}" for c, n in sorted(codes.items()))
    figures += f"; taken by {len(pids)} workers; responses in order: {got == [f'post {i}' for i in range(posts)]}"
    check(codes.get(202) == posts, figures)
    check(got == [f"post {i}" for i in range(posts)], figures)
    check(len(pids) == 2, figures + " (the POSTs should have reached both workers)")
    if not inst.runtime_dir:
        run.tmp_tokens.add(s.sid[:16])
    return figures


def s2_node_limit(run, inst, pid_dir):
    """max_sessions_per_node 3 over 2 workers, and max_sessions 2 per worker."""
    figures = []
    live, refused = [], []
    try:
        for _ in range(7):
            s = Session(inst.port, "/node")
            (live if s.status == 200 else refused).append(s)
        statuses = sorted(s.status for s in live + refused)
        check(len(live) == 3 and all(s.status == 429 for s in refused),
              f"/node (max_sessions_per_node 3): {statuses}")
        for s in refused:
            check(s.stream.headers.get("retry-after") == "1", f"429 without Retry-After: {s.stream.headers}")
            check("on this node" in s.stream.error, f"429 body: {s.stream.error}")
        workers = {x["worker_pid"] for x in inst.sessions() if x["route"] == "node"}
        figures.append(f"node ceiling 3: 3x200 4x429 (Retry-After: 1), live on {len(workers)} worker(s)")
        live.pop().close()
        again = wait_for(lambda: _opened(inst.port, "/node", live), 3, 0.05)
        check(again, "no new session after one of the node's 3 ended")
        figures.append("slot freed on close")
    finally:
        for s in live:
            s.close()

    # max_sessions 2 per worker, 2 workers: never more than 2 per worker.
    live, codes = [], []
    try:
        for _ in range(8):
            s = Session(inst.port, "/capped")
            codes.append(s.status)
            if s.status == 200:
                live.append(s)
            else:
                check(s.status == 429 and s.stream.headers.get("retry-after") == "1",
                      f"/capped: {s.status} {s.stream.headers}")
                check("per worker" in s.stream.error, f"429 body: {s.stream.error}")
        per_worker = {}
        for x in inst.sessions():
            if x["route"] == "capped":
                per_worker[x["worker_pid"]] = per_worker.get(x["worker_pid"], 0) + 1
        check(all(n <= 2 for n in per_worker.values()) and sum(per_worker.values()) == len(live),
              f"/capped per worker: {per_worker}")
        check(codes.count(429) >= 4, f"/capped: {codes}")
        figures.append(f"max_sessions 2 x 2 workers: {len(live)}x200 {codes.count(429)}x429, "
                       f"per worker {sorted(per_worker.values())}")
    finally:
        for s in live:
            s.close()
    return "; ".join(figures)


def _opened(port, base, keep):
    s = Session(port, base)
    if s.status == 200:
        keep.append(s)
        return True
    return False


def s2_worker_limit_one(run, inst, pid_dir):
    """max_sessions 2 with 1 worker: exactly two, then 429."""
    live = []
    try:
        codes = []
        for _ in range(4):
            s = Session(inst.port, "/capped")
            codes.append(s.status)
            if s.status == 200:
                live.append(s)
            else:
                refused = s
        check(codes == [200, 200, 429, 429], f"codes {codes}")
        check(refused.stream.headers.get("retry-after") == "1", f"headers {refused.stream.headers}")
        body = json.loads(refused.stream.error)
        check("at most 2 per worker" in body.get("error", ""), f"body {body}")
        live.pop().close()
        check(wait_for(lambda: _opened(inst.port, "/capped", live), 3, 0.05), "no session after a close")
        return f"1 worker, max_sessions 2: {codes}, Retry-After: 1, \"{body['error'][:60]}...\"; freed on close"
    finally:
        for s in live:
            s.close()


def s3_plain(run, inst, pid_dir):
    return s3_cross_worker(run, inst, pid_dir)


def s6_consumers(run, inst, pid_dir):
    figures = []
    alice_h, bob_h = {"apikey": "alice-key"}, {"apikey": "bob-key"}
    check(Session(inst.port, "/auth").status == 401, "GET /auth/sse without a key is not 401")
    alice = Session(inst.port, "/auth", alice_h)
    plain = None
    try:
        check(alice.status == 200, f"alice's GET: {alice.status} {alice.stream.error}")
        consumers = {x["id_prefix"]: x["consumer"] for x in inst.sessions()}
        check(consumers.get(alice.sid[:24]) == "alice", f"control API consumers: {consumers}")
        check(alice.call("echo", {"text": "hi alice"}) == "hi alice", "alice's call")
        codes = []
        for _ in range(6):  # both workers, most likely
            codes.append(alice.post({"jsonrpc": "2.0", "method": "notifications/x"})[0])
        check(set(codes) == {202}, f"alice's POSTs: {codes}")
        bob = [alice.post({"jsonrpc": "2.0", "method": "notifications/x"}, headers=bob_h)[0] for _ in range(4)]
        check(set(bob) == {404}, f"bob's POSTs with alice's session: {bob}")
        st, _, body = http_request(inst.port, "POST", f"/auth/message?sessionId={alice.sid}", b"{}")
        check(st == 401, f"POST without a key: {st} {body}")
        figures.append("alice 202, bob 404, no key 401 (key-auth)")
        # alice's session on a route without auth, same consumer's key or not
        st = alice.post({"jsonrpc": "2.0", "method": "notifications/x"}, base="/mcp")[0]
        check(st == 404, f"alice's session POSTed on /mcp: {st}")
        # Without auth: a session of /mcp is 404 on /mcp2, 202 on /mcp.
        plain = Session(inst.port, "/mcp")
        check(plain.status == 200, f"GET /mcp/sse: {plain.status}")
        other = [plain.post({"jsonrpc": "2.0", "method": "notifications/x"}, base="/mcp2")[0] for _ in range(4)]
        own = [plain.post({"jsonrpc": "2.0", "method": "notifications/x"})[0] for _ in range(4)]
        check(set(other) == {404} and set(own) == {202}, f"/mcp session: on /mcp2 {other}, on /mcp {own}")
        check(plain.call("echo", {"text": "still here"}) == "still here", "session after foreign POSTs")
        figures.append("/auth session on /mcp 404; /mcp session on /mcp2 404, on /mcp 202")
    finally:
        alice.close()
        if plain:
            plain.close()
    return "; ".join(figures)


def s9_chunked(run, inst, pid_dir):
    s = Session(inst.port, "/small")
    check(s.status == 200, f"GET /small/sse: {s.status}")
    figures = []
    try:
        # A chunked body that is valid and small is delivered.
        st = chunked_post(inst.port, f"/small/message?sessionId={s.sid}",
                          [json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                       "params": {"name": "echo", "arguments": {"text": "chunked"}}}).encode()],
                          finish=True)
        check(st[0] == 202, f"small chunked POST: {st}")
        check(s.stream.response(7)["result"]["content"][0]["text"] == "chunked", "chunked message not delivered")
        # 2 KiB in one chunk (max_message_bytes 1024), then nothing more: the
        # answer must come although the body never ends.
        t0 = time.monotonic()
        st = chunked_post(inst.port, f"/small/message?sessionId={s.sid}", [b"[" + b" " * 2046 + b"]"],
                          finish=False)
        dt = time.monotonic() - t0
        check(st[0] == 413, f"oversized chunked POST: {st}")
        check("max_message_bytes" in st[1], f"413 body: {st[1]}")
        figures.append(f"chunked 2 KiB (limit 1 KiB), body never finished: 413 in {dt * 1000:.0f} ms")
        # Declared too long: 413 at once, also with the body unsent.
        st = raw_post(inst.port, f"/small/message?sessionId={s.sid}",
                      "Content-Length: 100000\r\n", b"{" * 100)
        check(st[0] == 413, f"Content-Length 100000: {st}")
        figures.append("Content-Length 100000: 413")
        check(s.call("echo", {"text": "after"}) == "after", "session after the 413s")
        figures.append("valid chunked POST 202 and delivered")
    finally:
        s.close()
    return "; ".join(figures)


def _read_response(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        m = re.search(rb"content-length: *(\d+)", head, re.I)
        n = int(m.group(1)) if m else 0
        while len(body) < n:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except socket.timeout:
        return None, "no answer within %.0f s" % timeout
    if not data:
        return None, "connection closed without an answer"
    return int(head.split(b" ", 2)[1]), body.decode("utf-8", "replace")


def chunked_post(port, path, chunks, finish):
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
        for c in chunks:
            sock.sendall(b"%x\r\n" % len(c) + c + b"\r\n")
        if finish:
            sock.sendall(b"0\r\n\r\n")
        return _read_response(sock, 5)


def raw_post(port, path, headers, body):
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{headers}"
                     "Connection: close\r\n\r\n".encode() + body)
        return _read_response(sock, 5)


CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /mcp/sse HTTP/1.1\r\nHost: test\r\n\r\n")
data = b""
while b"sessionId=" not in data or not data.endswith(b"\n\n\r\n"):
    data += s.recv(4096)
print(data.split(b"sessionId=")[1].split(b"\n")[0].decode(), flush=True)
time.sleep(60)
"""


def s10_client_abort(run, inst, pid_dir):
    """A client killed with SIGKILL: its backend's end, measured."""
    times = []
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CLIENT, str(inst.port)], stdout=subprocess.PIPE, text=True)
        run.children.append(p)
        sid = p.stdout.readline().strip()
        check(len(sid) == 48, f"client got no session: {sid!r}")
        backend = [x["backend_pid"] for x in inst.sessions() if sid.startswith(x["id_prefix"])]
        check(len(backend) == 1, f"session {sid[:24]} not listed")
        pid = backend[0]
        t0 = time.monotonic()
        p.kill()
        p.wait()
        gone = wait_for(lambda: not alive(pid), 5, 0.001)
        check(gone, f"backend {pid} still running 5 s after its client was killed")
        times.append((time.monotonic() - t0) * 1000)
    check(max(times) < 1000, f"backend ended {max(times):.0f} ms after its client was killed (> 1 s)")
    return "client SIGKILLed -> backend gone in " + ", ".join(f"{t:.1f}" for t in times) + " ms"


def s5_flood(run, inst, pid_dir, count=5000, size=512):
    """The backend writes `count` notifications while the client reads slowly."""
    # A fixed receive buffer (no autotuning), read 16 KiB at a time 5 ms
    # apart: a client far slower than the backend.
    s = Session(inst.port, "/flood", rcvbuf=65536)
    check(s.status == 200, f"GET /flood/sse: {s.status}")
    try:
        st = s.post({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "flood", "arguments": {"count": count, "size": size}}})[0]
        check(st == 202, f"POST flood: {st}")
        # Let every buffer on the way fill up, then read slowly: writes to
        # the client block (ngx.flush(true) waits), over and over.
        time.sleep(1.0)
        s.stream.throttle = (16384, 0.005)
        t0 = time.monotonic()
        notes, reply = 0, None
        try:
            while reply is None:
                check(time.monotonic() - t0 < 60, f"only {notes} of {count} notifications in 60 s")
                msg = s.stream.message()
                if isinstance(msg, dict) and msg.get("method") == "notifications/message":
                    notes += 1
                elif isinstance(msg, dict) and msg.get("id") == 1:
                    reply = msg
        except Ended as e:
            raise Failed(f"stream ended after {notes} of {count} notifications ({e}): "
                         + " | ".join(l for l in inst.new_log().splitlines() if "mcp-bridge" in l)[-600:])
        dt = time.monotonic() - t0
        s.stream.throttle = None
        check(notes == count, f"{notes} of {count} notifications")
        check(reply["result"]["content"][0]["text"] == f"flooded {count}", f"reply {reply}")
        check(s.call("echo", {"text": "after the flood"}) == "after the flood", "session after the flood")
        return f"{notes}/{count} notifications of {size} B and the reply, read slowly in {dt:.1f} s"
    finally:
        s.close()


def s5_refused(run, inst, pid_dir):
    """Without lua_module_has_body_filter_fix on lua-nginx-module 0.10.28."""
    log = inst.log()
    msg = "mcp-bridge needs lua-nginx-module 0.10.29 or newer"
    check(msg in log, "the refusal is not in the error log")
    check("lua_module_has_body_filter_fix: true" in log, "the log does not say how to declare the fix")
    st, _, body = http_request(inst.port, "GET", "/mcp/sse")
    check(st in (404, 503), f"GET /mcp/sse on a refused route: {st} {body[:200]}")
    check(not inst.hosts(), "a host was started for a refused route")
    line = next(l for l in log.splitlines() if msg in l)
    where = "route refused when loaded" if "failed to check" in log or "check_schema" in log else "logged"
    return f"GET /mcp/sse {st}; {where}: \"{line[line.index(msg):][:110]}...\""


def s7_control(run, inst, pid_dir):
    live = []
    try:
        # Sessions on both workers (connections land on either).
        for _ in range(12):
            s = Session(inst.port, "/mcp")
            check(s.status == 200, f"GET /mcp/sse: {s.status}")
            live.append(s)
            workers = {x["worker_pid"] for x in inst.sessions() if x["route"] == "mcp"}
            if len(live) >= 3 and len(workers) == 2:
                break
        listed = inst.sessions()
        mine = {x["id_prefix"]: x for x in listed if x["route"] == "mcp"}
        check(len(mine) == len(live), f"listed {len(mine)} of {len(live)} live sessions: {listed}")
        fields = {"route", "consumer", "transport", "id_prefix", "backend_pid", "age_s", "idle_s"}
        for x in mine.values():
            check(fields <= set(x), f"fields missing: {fields - set(x)} in {x}")
            check(x["transport"] == "sse" and len(x["id_prefix"]) == 24, f"session {x}")
        workers = {x["worker_pid"] for x in mine.values()}
        check(workers == set(inst.workers()), f"listed workers {workers}, workers {inst.workers()}")
        # sessions_live while they are live (the host reports within ~1 s).
        want = len(live)
        m = wait_for(lambda: (lambda mm: mm if metric_sum(mm, "sessions_live", route="mcp") == want else None)(
            parse_metrics(inst.metrics())), 8, 0.25)
        check(m, f"sessions_live{{route=\"mcp\"}} never reached {want}")
        # End one of each worker's by its id prefix.
        ended = []
        for w in workers:
            victim = next(s for s in live if mine[s.sid[:24]]["worker_pid"] == w)
            pid = mine[victim.sid[:24]]["backend_pid"]
            st, doc = inst.control("DELETE", f"/v1/plugin/mcp-bridge/sessions/{victim.sid[:24]}")
            check(st == 200 and doc.get("ended") == victim.sid[:24], f"DELETE: {st} {doc}")
            check(victim.stream.ended_within(2), "the stream did not end after DELETE")
            check(wait_for(lambda: not alive(pid), 2), f"backend {pid} still running after DELETE")
            st, _, _ = victim.post({"jsonrpc": "2.0", "method": "notifications/x"})
            check(st == 404, f"POST to an ended session: {st}")
            live.remove(victim)
            ended.append(victim.sid[:24])
        after = {x["id_prefix"] for x in inst.sessions()}
        check(not (set(ended) & after), "ended sessions still listed")
        for s in live:
            check(s.call("echo", {"text": "alive"}) == "alive", "another session was hurt")
        st, _ = inst.control("DELETE", f"/v1/plugin/mcp-bridge/sessions/{ended[0]}")
        check(st == 404, f"DELETE of an ended session: {st}")
        st, _ = inst.control("DELETE", "/v1/plugin/mcp-bridge/sessions/abc")
        check(st == 400, f"DELETE with a short prefix: {st}")
        return (f"{len(mine)} sessions listed over {len(workers)} workers with {sorted(fields)}; "
                f"sessions_live={want}; DELETE of one per worker: 200, stream ended, backend gone, "
                f"POST 404; again 404; short prefix 400")
    finally:
        for s in live:
            s.close()


METRIC_NAMES = ["sessions_started_total", "sessions_ended_total", "sessions_refused_total",
                "session_teardown_seconds_bucket", "session_teardown_seconds_sum",
                "session_teardown_seconds_count", "messages_total", "message_bytes_total",
                "sessions_live", "backends_live", "spawn_failures_total"]


def s8_metrics(run, inst, pid_dir, baseline):
    # Spawn failures, for spawn_failures_total: HTTP+SSE and Streamable.
    st, _, body = http_request(inst.port, "GET", "/missing/sse")
    check(st == 502, f"GET /missing/sse: {st} {body}")
    s = Streamable(inst.port, "/missing")
    check(s.status == 502 and "mcp-session-id" not in s.reply_headers,
          f"initialize on /missing: {s.status} {s.body}")

    def ready():
        m = parse_metrics(inst.metrics())
        ok = (all(name in m for name in METRIC_NAMES)
              and metric_sum(m, "sessions_refused_total", status="429") > 0
              and metric_sum(m, "spawn_failures_total", route="missing") >= 2
              and metric_sum(m, "backends_live") == 0
              and metric_sum(m, "messages_total", direction="in") > 0
              and metric_sum(m, "messages_total", direction="out") > 0
              and metric_sum(m, "sessions_live") == 0
              and metric_sum(m, "sessions_started_total") == metric_sum(m, "sessions_ended_total"))
        return m if ok else None
    m = wait_for(ready, 10, 0.25)
    if not m:
        m = parse_metrics(inst.metrics())
        missing = [n for n in METRIC_NAMES if n not in m]
        raise Failed(f"metrics incomplete: missing {missing}; "
                     f"started {metric_sum(m, 'sessions_started_total')} ended "
                     f"{metric_sum(m, 'sessions_ended_total')} live {metric_sum(m, 'sessions_live')} "
                     f"refused429 {metric_sum(m, 'sessions_refused_total', status='429')} "
                     f"spawn {metric_sum(m, 'spawn_failures_total')}")
    moved = []
    for name in ["sessions_started_total", "sessions_ended_total", "sessions_refused_total",
                 "session_teardown_seconds_count", "messages_total", "message_bytes_total",
                 "spawn_failures_total"]:
        check(metric_sum(m, name) > metric_sum(baseline, name), f"{name} did not move")
        moved.append(f"{name}={metric_sum(m, name):g}")
    reasons = sorted({lab.get("reason") for lab, _ in m["sessions_ended_total"]})
    check(all(reasons), f"sessions_ended_total without reason: {m['sessions_ended_total']}")
    # Streamable sessions and pooled backends (transport "pool") counted apart.
    by_transport = []
    for transport, why in (("streamable", ["deleted", "ended_by_operator"]), ("pool", [])):
        started = metric_sum(m, "sessions_started_total", transport=transport)
        ended = metric_sum(m, "sessions_ended_total", transport=transport)
        check(started > metric_sum(baseline, "sessions_started_total", transport=transport),
              f"sessions_started_total{{transport=\"{transport}\"}} did not move")
        check(ended == started, f"{transport}: started {started:g}, ended {ended:g}")
        ended_why = sorted({lab["reason"] for lab, v in m["sessions_ended_total"]
                            if lab.get("transport") == transport and v > 0})
        check(set(why) <= set(ended_why), f"{transport} sessions ended for {ended_why}, not for {why}")
        by_transport.append(f"{transport} {started:g} started and ended ({', '.join(ended_why)})")
    text = inst.metrics()
    check("# TYPE apisix_mcp_bridge_sessions_started_total counter" in text
          and "# HELP apisix_mcp_bridge_sessions_live" in text,
          "the exporter shows the metrics without # HELP/# TYPE lines")
    return (", ".join(moved) + f"; reasons {reasons}; " + "; ".join(by_transport)
            + f"; sessions_live and backends_live back to 0; teardown sum "
              f"{metric_sum(m, 'session_teardown_seconds_sum'):.4f} s; typed and described")


def _streamable_on_both(inst, base, least=2):
    """Streamable sessions of `base` until both workers hold some."""
    out = []
    for _ in range(12):
        s = Streamable(inst.port, base)
        check(s.status == 200, f"initialize on {base}: {s.status} {s.body[:200]}")
        out.append(s)
        ours = {s.sid[:24] for s in out}
        on = {x["worker_pid"] for x in inst.sessions() if x["id_prefix"] in ours}
        if len(out) >= least and len(on) == 2:
            break
    return out


def _pooled_on_both(inst, base):
    """Stateless requests on `base` until both workers' pools served some:
    the pooled backends' pids."""
    by_worker = {}
    for _ in range(40):
        st, ids = stateless_pid(inst.port, base)
        check(st == 200 and isinstance(ids, dict), f"stateless tools/call on {base}: {st} {str(ids)[:200]}")
        by_worker.setdefault(worker_of_backend(ids["pid"]), set()).add(ids["pid"])
        if len(by_worker) == 2:
            break
    check(len(by_worker) == 2, f"stateless requests reached the pool of {len(by_worker)} worker(s)")
    return sorted(set().union(*by_worker.values()))


def s4_reload(run, inst, pid_dir):
    sessions = [Session(inst.port, "/mcp") for _ in range(4)]
    check(all(s.status == 200 for s in sessions), "sessions not opened")
    grand = sessions[0].call("spawn_grandchild", {"setsid": True})
    sessions[1].call("spawn_grandchild", {"ignore_sigterm": True})
    streams = [Streamable(inst.port, "/mcp") for _ in range(3)]
    check(all(s.status == 200 for s in streams), f"Streamable sessions: {[s.status for s in streams]}")
    sgrand = streams[0].call("spawn_grandchild", {"setsid": True})
    streams[1].call("spawn_grandchild", {"ignore_sigterm": True})
    gets = [s.open_get() for s in streams]
    pooled = _pooled_on_both(inst, "/mcp")
    old_workers = inst.workers()
    t_cli = time.monotonic()
    inst.cli("reload")
    # From the signal (the command first writes nginx.conf and tests it).
    t0 = time.monotonic()
    t_cli = t0 - t_cli
    ended = all(s.stream.ended_within(5) for s in sessions)
    gets_ended = all(g.ended_within(5) for g in gets)
    t_end = time.monotonic() - t0
    gone = wait_fixture_gone(pid_dir, 5)
    t_gone = time.monotonic() - t0
    check(ended, "SSE streams still open 5 s after the reload")
    check(gets_ended, "Streamable GET streams still open 5 s after the reload")
    check(gone is not None, f"left after reload: {fixture_left(pid_dir)}")
    check(not alive(int(grand)) and not alive(int(sgrand)), "an escaped grandchild survived")
    check(not any(alive(p) for p in pooled), "pooled backends survived")
    check(wait_for(lambda: not any(alive(p) for p in old_workers), 10, 0.05), "old workers still running")
    t_old = time.monotonic() - t0
    after = [s.rpc("tools/list")[0] for s in streams]
    check(set(after) == {404}, f"requests of Streamable sessions from before the reload: {after}")
    for s in streams:
        s.sid = None
        s.close()
    s = Session(inst.port, "/mcp")
    fresh = Streamable(inst.port, "/mcp")
    try:
        check(s.status == 200 and s.call("echo", {"text": "new"}) == "new", "no SSE session after the reload")
        check(fresh.status == 200 and fresh.call("echo", {"text": "new"}) == "new",
              "no Streamable session after the reload")
        st, ids = stateless_pid(inst.port, "/pool")
        check(st == 200, f"no stateless request after the reload: {st} {str(ids)[:200]}")
    finally:
        s.close()
        fresh.close()
    # (/pool's pooled backend ends idle after 1 s.)
    check(wait_fixture_gone(pid_dir, 5) is not None, f"left after the new sessions: {fixture_left(pid_dir)}")
    return (f"4 SSE and 3 Streamable sessions (escaped and SIGTERM-ignoring grandchildren, GET streams open), "
            f"{len(pooled)} pooled backends over both workers; after `apisix reload` ({t_cli:.2f} s) returned: "
            f"streams ended {t_end:.2f} s, processes gone {t_gone:.2f} s, old workers gone {t_old:.2f} s; "
            f"old Streamable ids 404; new sessions and stateless requests served")


def s4_kill_worker(run, inst, pid_dir):
    live = []
    for _ in range(12):
        s = Session(inst.port, "/mcp")
        check(s.status == 200, f"GET: {s.status}")
        live.append(s)
        if len(live) >= 4 and len({x["worker_pid"] for x in inst.sessions()}) == 2:
            break
    streams = _streamable_on_both(inst, "/mcp")
    gets = {s.sid: s.open_get() for s in streams}
    listed = {x["id_prefix"]: x for x in inst.sessions()}
    victim = listed[live[0].sid[:24]]["worker_pid"]
    doomed = [s for s in live if listed[s.sid[:24]]["worker_pid"] == victim]
    spared = [s for s in live if s not in doomed]
    sdoomed = [s for s in streams if listed[s.sid[:24]]["worker_pid"] == victim]
    sspared = [s for s in streams if s not in sdoomed]
    pids = [listed[s.sid[:24]]["backend_pid"] for s in doomed + sdoomed]
    host = listed[doomed[0].sid[:24]]["host_pid"]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    ended = all(s.stream.ended_within(3) for s in doomed)
    gets_ended = all(gets[s.sid].ended_within(3) for s in sdoomed)
    gone = wait_for(lambda: not any(alive(p) for p in pids + [host]), 3, 0.005)
    dt = time.monotonic() - t0
    check(ended, "a killed worker's SSE streams did not end")
    check(gets_ended, "a killed worker's Streamable GET streams did not end")
    check(gone, "a killed worker's host or backends survived")
    for s in spared:
        check(s.call("echo", {"text": "spared"}) == "spared", "the other worker's SSE session was hurt")
    for s in sspared:
        check(s.call("echo", {"text": "spared"}) == "spared", "the other worker's Streamable session was hurt")
        # (Its GET stream ended if the killed worker had taken the GET.)
        check(not s.open_get().ended_within(0.05), "a new GET stream of the other worker's session ended")
    after = [s.rpc("tools/list")[0] for s in sdoomed for _ in range(3)]
    check(set(after) == {404}, f"requests of the killed worker's Streamable sessions: {after}")
    check(wait_for(lambda: len(inst.workers()) == 2, 5, 0.05), "no replacement worker")
    fresh = []
    try:
        for _ in range(6):
            s = Session(inst.port, "/mcp")
            fresh.append(s)
            check(s.status == 200 and s.call("echo", {"text": "new"}) == "new", "no session after the kill")
        for _ in range(4):
            s = Streamable(inst.port, "/mcp")
            fresh.append(s)
            check(s.status == 200 and s.call("echo", {"text": "new"}) == "new",
                  "no Streamable session after the kill")
        after = [s.rpc("tools/list")[0] for s in sdoomed]
        check(set(after) == {404}, f"the killed worker's Streamable sessions, later: {after}")
    finally:
        for s in fresh + spared:
            s.close()
        for s in sdoomed:
            s.sid = None
        for s in streams:
            s.close()
    check(wait_fixture_gone(pid_dir, 3) is not None, f"left: {fixture_left(pid_dir)}")
    return (f"worker with {len(doomed)} of {len(live)} SSE and {len(sdoomed)} of {len(streams)} Streamable "
            f"sessions SIGKILLed: its streams ended and its host and backends gone in {dt:.2f} s, its session "
            f"ids 404; the other worker's {len(spared)} + {len(sspared)} untouched; replacement serves")


def s4_quit(run, inst, pid_dir):
    sessions = [Session(inst.port, "/mcp") for _ in range(3)]
    check(all(s.status == 200 for s in sessions), "sessions not opened")
    sessions[0].call("spawn_grandchild", {"double_fork": True})
    streams = [Streamable(inst.port, "/mcp") for _ in range(3)]
    check(all(s.status == 200 for s in streams), f"Streamable sessions: {[s.status for s in streams]}")
    streams[0].call("spawn_grandchild", {"double_fork": True})
    gets = [s.open_get() for s in streams]
    pooled = _pooled_on_both(inst, "/mcp")
    master = inst.master()
    t_cli = time.monotonic()
    inst.cli("quit")
    t0 = time.monotonic()
    t_cli = t0 - t_cli
    ended = all(s.stream.ended_within(5) for s in sessions)
    gets_ended = all(g.ended_within(5) for g in gets)
    t_end = time.monotonic() - t0
    gone = wait_fixture_gone(pid_dir, 5)
    t_gone = time.monotonic() - t0
    check(ended, "SSE streams still open 5 s after quit")
    check(gets_ended, "Streamable GET streams still open 5 s after quit")
    check(gone is not None, f"left after quit: {fixture_left(pid_dir)}")
    check(not any(alive(p) for p in pooled), "pooled backends survived")
    check(wait_for(lambda: not alive(master), 10, 0.01), "the master is still running 10 s after quit")
    dt = time.monotonic() - t0
    left = [p for p in processes_of(inst.home) if alive(p)]
    check(not left, f"processes left after quit: {[cmdline(p) for p in left]}")
    for s in streams:
        s.sid = None
        s.close()
    return (f"3 SSE and 3 Streamable sessions (double-forked grandchildren, GET streams open), "
            f"{len(pooled)} pooled backends over both workers; after `apisix quit` ({t_cli:.2f} s) returned: "
            f"streams ended {t_end:.2f} s, processes gone {t_gone:.2f} s, APISIX exited {dt:.2f} s; "
            f"nothing left")


def s4_kill_master(run, inst, pid_dir):
    live = []
    for _ in range(12):
        s = Session(inst.port, "/mcp")
        check(s.status == 200, f"GET: {s.status}")
        live.append(s)
        run.tmp_tokens.add(s.sid[:16])
        if len(live) >= 4 and len({x["worker_pid"] for x in inst.sessions()}) == 2:
            break
    live[0].call("spawn_grandchild", {"setsid": True})
    streams = _streamable_on_both(inst, "/mcp")
    for s in streams:
        run.tmp_tokens.add(s.sid[:16])
    gets = [s.open_get() for s in streams]
    pooled = _pooled_on_both(inst, "/mcp")
    master = inst.master()
    workers = inst.workers()
    agent = [p for p in children(master) if "privileged agent" in cmdline(p)]
    hosts = inst.hosts()
    # A POST whose connection the host refuses (see below): the worker's
    # cosocket to it is reset.
    inst.expected_log.append(re.compile(r"(recv\(\) failed \(104: Connection reset by peer\)|send\(\) failed "
                                        r"\(32: Broken pipe\)).*request: \"POST /mcp/message"))
    try:
        os.kill(master, signal.SIGKILL)
        check(wait_for(lambda: not alive(master), 2), "the master survived SIGKILL")
        time.sleep(0.2)
        orphans = [p for p in workers if alive(p)]
        # nginx's workers outlive a master killed outright and serve on:
        # what happens to POSTs now, whichever worker takes them.
        codes = {}
        for s in live:
            for _ in range(5):
                st = s.post({"jsonrpc": "2.0", "method": "notifications/x"})[0]
                codes[st] = codes.get(st, 0) + 1
        scodes = {}
        for s in streams:
            for _ in range(5):
                st = s.rpc("tools/list")[0]
                scodes[st] = scodes.get(st, 0) + 1
        streams_open = sum(1 for s in live if not s.stream.ended_within(0.05))
        refused = len(re.findall(r"refused a connection from process \d+, which is not a worker",
                                 inst.log()))
        # What a supervisor does next (systemd kills the whole unit): every
        # remaining process of the instance gets SIGKILL.
        t0 = time.monotonic()
        for p in orphans + agent:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        ended = all(s.stream.ended_within(3) for s in live) and all(g.ended_within(3) for g in gets)
        gone = wait_fixture_gone(pid_dir, 3)
        # A host exits once its backends are gone, a moment after them;
        # before the sweep below, which would end it anyway.
        wait_for(lambda: not any(alive(h) for h in hosts), 3)
        hosts_left = [h for h in hosts if alive(h)]
        dt = time.monotonic() - t0
    finally:
        for s in live:
            s.close()
        for s in streams:
            s.sid = None
            s.close()
        for p in processes_of(inst.home):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    check(ended, "streams did not end once the workers were killed")
    check(gone is not None, f"left: {fixture_left(pid_dir)}")
    check(not hosts_left, f"hosts survived their workers by 3 s: {hosts_left}")
    check(not any(alive(p) for p in pooled), "pooled backends survived")
    posts = ", ".join(f"{n}x{c}" for c, n in sorted(codes.items()))
    sposts = ", ".join(f"{n}x{c}" for c, n in sorted(scodes.items()))
    check(not codes.get(404) and set(scodes) == {200},
          f"after the master's SIGKILL: SSE POSTs {posts}, Streamable requests {sposts}; a host refused the "
          f"other (orphaned) worker {refused} time(s)")
    return (f"master SIGKILLed: {len(orphans)} workers live on (nginx), {streams_open}/{len(live)} SSE streams "
            f"open, POSTs {posts}; {len(streams)} Streamable sessions' requests {sposts}; then workers "
            f"SIGKILLed: streams ended, hosts and backends ({len(pooled)} pooled, an escaped grandchild) gone "
            f"in {dt:.2f} s")


def s_logs(run):
    found = []
    for inst in run.started:
        bad = log_findings(inst, inst.expected_log)
        found += [f"{inst.name}: {line[:400]}" for line in bad]
    check(not found, "\n".join(found[:20]))
    return f"{len(run.started)} instances: nothing unexpected at [error] or worse, no Lua error"


# ---------------------------------------------------------------- Streamable HTTP scenarios

def worker_of_backend(pid):
    """The worker whose host started backend `pid` (backend -> host -> worker)."""
    st = proc_stat(pid)
    host = proc_stat(st[1]) if st else None
    return host[1] if host else None


def quiet_routes(inst, *routes):
    """Waits until no session of these routes is listed (those of earlier
    scenarios have ended and given their slots back)."""
    ok = wait_for(lambda: not any(x["route"] in routes for x in inst.sessions()), 5, 0.05)
    check(ok, f"sessions of {routes} still live from earlier scenarios")
    time.sleep(0.2)


def _initialized(port, base, keep, headers=None):
    s = Streamable(port, base, headers)
    if s.status == 200:
        keep.append(s)
        return True
    return False


def s2_streamable_limit_one(run, inst, pid_dir):
    """max_sessions 2 with 1 worker, on a Streamable initialize; both
    transports under one ceiling."""
    live, sse = [], []
    try:
        codes, refused = [], None
        for _ in range(4):
            s = Streamable(inst.port, "/capped")
            codes.append(s.status)
            if s.status == 200:
                live.append(s)
            else:
                refused = s
        check(codes == [200, 200, 429, 429], f"initialize x4: {codes}")
        check(refused.reply_headers.get("retry-after") == "1", f"429 headers {refused.reply_headers}")
        body = json.loads(refused.body)
        check(body.get("jsonrpc") == "2.0" and "at most 2 per worker" in body.get("error", {}).get("message", ""),
              f"429 body {body}")
        check("mcp-session-id" not in refused.reply_headers, "a refused initialize got a session id")
        # (The refused initialize's id is checked last, below.)
        check(live[0].call("echo", {"text": "capped"}) == "capped", "a session under the ceiling")
        # DELETE frees the slot (the host's event tells the worker).
        st = live.pop().delete()
        check(st == 200, f"DELETE: {st}")
        check(wait_for(lambda: _initialized(inst.port, "/capped", live), 3, 0.05), "no session after a DELETE")
        # One ceiling for both transports: 1 Streamable + 1 SSE, then neither.
        st = live.pop().delete()
        check(st == 200, f"DELETE: {st}")
        check(wait_for(lambda: _opened(inst.port, "/capped", sse), 3, 0.05),
              "no SSE session beside 1 Streamable session")
        third = Streamable(inst.port, "/capped")
        check(third.status == 429, f"initialize beside 1 Streamable and 1 SSE session: {third.status}")
        fourth = Session(inst.port, "/capped")
        sse.append(fourth)
        check(fourth.status == 429, f"GET /capped/sse beside 1 Streamable and 1 SSE session: {fourth.status}")
        # docs/mcp-bridge.md: errors on this endpoint are JSON-RPC error
        # responses "with the request's id when it could be read"; the
        # initialize (id 0) was read whole before it was refused.
        check(body.get("id") == 0, f"the 429's JSON-RPC error has id {json.dumps(body.get('id'))}, not the "
                                   f"initialize's id 0: {refused.body.strip()}")
        return (f"1 worker, max_sessions 2, initialize: {codes}, Retry-After: 1, JSON-RPC error "
                f"\"{body['error']['message'][:50]}...\"; freed on DELETE; one ceiling for SSE and Streamable")
    finally:
        for s in live:
            s.close()
        for s in sse:
            s.close()


def s2_streamable_node_limit(run, inst, pid_dir):
    """max_sessions_per_node 3 over 2 workers, and max_sessions 2 per worker,
    on Streamable initializes."""
    quiet_routes(inst, "node", "capped")
    figures = []
    live = []
    try:
        codes, refused = [], []
        for _ in range(7):
            s = Streamable(inst.port, "/node")
            codes.append(s.status)
            (live if s.status == 200 else refused).append(s)
        check(len(live) == 3 and all(s.status == 429 for s in refused), f"/node initialize x7: {codes}")
        for s in refused:
            check(s.reply_headers.get("retry-after") == "1", f"429 without Retry-After: {s.reply_headers}")
            check("on this node" in (s.error or ""), f"429 body: {s.body}")
        listed = [x for x in inst.sessions() if x["route"] == "node"]
        check(len(listed) == 3 and all(x["transport"] == "streamable" for x in listed), f"listed: {listed}")
        workers = {x["worker_pid"] for x in listed}
        figures.append(f"node ceiling 3: 3x200 4x429 (Retry-After: 1), live on {len(workers)} worker(s)")
        st = live.pop().delete()
        check(st == 200, f"DELETE: {st}")
        check(wait_for(lambda: _initialized(inst.port, "/node", live), 3, 0.05),
              "no new session after one of the node's 3 was deleted")
        figures.append("slot freed on DELETE")
    finally:
        for s in live:
            s.close()
    live = []
    try:
        codes = []
        for _ in range(8):
            s = Streamable(inst.port, "/capped")
            codes.append(s.status)
            if s.status == 200:
                live.append(s)
            else:
                check(s.status == 429 and s.reply_headers.get("retry-after") == "1",
                      f"/capped: {s.status} {s.reply_headers}")
                check("per worker" in (s.error or ""), f"429 body: {s.body}")
        per_worker = {}
        for x in inst.sessions():
            if x["route"] == "capped":
                per_worker[x["worker_pid"]] = per_worker.get(x["worker_pid"], 0) + 1
        check(all(n <= 2 for n in per_worker.values()) and sum(per_worker.values()) == len(live),
              f"/capped per worker: {per_worker}")
        check(codes.count(429) >= 4, f"/capped: {codes}")
        figures.append(f"max_sessions 2 x 2 workers: {len(live)}x200 {codes.count(429)}x429, "
                       f"per worker {sorted(per_worker.values())}")
    finally:
        for s in live:
            s.close()
    return "; ".join(figures)


def s3_streamable_cross_worker(run, inst, pid_dir, calls=20):
    """The requests of one Streamable session, each on a new connection:
    both workers take some, all reach the session's backend."""
    s = Streamable(inst.port, "/mcp")
    check(s.status == 200, f"initialize: {s.status} {s.body[:200]}")
    if not inst.runtime_dir:
        run.tmp_tokens.add(s.sid[:16])
    try:
        get = s.open_get()
        backend = s.call("pid")
        got = [s.call("echo", {"text": f"call {i}"}) for i in range(calls)]
        check(got == [f"call {i}" for i in range(calls)], f"replies: {got}")
        notes = [s.notify() for _ in range(6)]
        check(set(notes) == {202}, f"notifications: {notes}")
        check(s.call("pid") == backend, "the session's requests reached another backend")
        log = inst.access_log()
        pids = set(re.findall(r"^(\d+) POST /mcp 200 " + s.sid + "$", log, re.M))
        figures = (f"{calls + 2} requests 200 and {len(notes)} notifications 202, each on a new connection, "
                   f"taken by {len(pids)} workers, one backend; replies in order")
        check(len(pids) == 2, figures + " (the requests should have reached both workers)")
        check(not get.ended_within(0.05), "the session's GET stream ended")
        pid = json.loads(backend)["pid"]
        st = s.delete()
        check(st == 200, f"DELETE: {st}")
        s.sid, sid = None, s.sid
        check(get.ended_within(2), "the GET stream did not end after DELETE")
        check(wait_for(lambda: not alive(pid), 3), f"backend {pid} still running after DELETE")
        after = [s.rpc("tools/list", sid=sid)[0] for _ in range(6)]
        check(set(after) == {404}, f"requests after DELETE: {after}")
        return figures + "; DELETE 200: GET stream ended, backend gone, then 6x404"
    finally:
        s.close()


def s6_streamable_consumers(run, inst, pid_dir):
    alice_h, bob_h = {"apikey": "alice-key"}, {"apikey": "bob-key"}
    figures = []
    nokey = Streamable(inst.port, "/auth")
    check(nokey.status == 401, f"initialize on /auth without a key: {nokey.status}")
    alice = Streamable(inst.port, "/auth", alice_h)
    plain = None
    pooled = []
    try:
        check(alice.status == 200, f"alice's initialize: {alice.status} {alice.body[:200]}")
        listed = {x["id_prefix"]: x for x in inst.sessions()}
        me = listed.get(alice.sid[:24], {})
        check(me.get("consumer") == "alice" and me.get("transport") == "streamable", f"control API: {me}")
        calls = [alice.call("echo", {"text": f"alice {i}"}) for i in range(6)]  # both workers, most likely
        check(calls == [f"alice {i}" for i in range(6)], f"alice's calls: {calls}")
        bob = [alice.rpc("tools/list", headers=bob_h)[0] for _ in range(4)]
        bob += [alice.notify(headers=bob_h), alice.delete(headers=bob_h)]
        check(set(bob) == {404}, f"bob's requests (POST, notification, DELETE) with alice's session: {bob}")
        g = Stream(inst.port, "/auth", dict(bob_h, **{"Mcp-Session-Id": alice.sid}))
        check(g.status == 404, f"bob's GET with alice's session: {g.status}")
        st, _, body = http_request(inst.port, "POST", "/auth", json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(),
            {"Accept": ACCEPT_BOTH, "Mcp-Session-Id": alice.sid, "MCP-Protocol-Version": SESSION_VERSION})
        check(st == 401, f"POST with alice's session, no key: {st} {body[:200]}")
        check(alice.call("echo", {"text": "still alice"}) == "still alice", "alice's session after bob's DELETE")
        figures.append("alice 200; bob's POST, notification, DELETE and GET 404; no key 401 (key-auth)")
        other = [alice.rpc("tools/list", base=b)[0] for b in ("/mcp", "/mcp2") for _ in range(2)]
        check(set(other) == {404}, f"alice's session on /mcp and /mcp2: {other}")
        plain = Streamable(inst.port, "/mcp")
        check(plain.status == 200, f"initialize on /mcp: {plain.status}")
        other = [plain.rpc("tools/list", base="/mcp2")[0] for _ in range(4)]
        check(set(other) == {404}, f"a /mcp session on /mcp2: {other}")
        check(plain.call("echo", {"text": "own"}) == "own", "a /mcp session on /mcp")
        figures.append("alice's session on /mcp and /mcp2 404; a /mcp session on /mcp2 404, on /mcp 200")
        # Stateless requests: pooled backends per consumer.
        by = {"alice": set(), "bob": set()}
        for _ in range(4):
            for who, h in (("alice", alice_h), ("bob", bob_h)):
                st, ids = stateless_pid(inst.port, "/auth", h)
                check(st == 200 and isinstance(ids, dict), f"{who}'s stateless tools/call: {st} {ids}")
                by[who].add(ids["pid"])
        pooled = sorted(by["alice"] | by["bob"])
        check(not by["alice"] & by["bob"], f"a pooled backend served alice and bob: {by}")
        st, _ = stateless(inst.port, "/auth", "tools/list")
        check(st == 401, f"stateless request without a key: {st}")
        figures.append(f"stateless: alice's pooled backends {len(by['alice'])}, bob's {len(by['bob'])}, "
                       f"none shared; no key 401")
    finally:
        alice.close()
        if plain:
            plain.close()
    # /auth's pooled backends end idle (pool_idle_timeout_ms 1000).
    check(wait_for(lambda: not any(alive(p) for p in pooled), 5), f"pooled backends of /auth left: {pooled}")
    return "; ".join(figures)


def redis_keys(port, prefix):
    r = subprocess.run(["redis-cli", "-p", str(port), "--scan", "--pattern", prefix + "*"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=10)
    return sorted(r.stdout.split())


def s14_cluster(run, a, b, redis_port, pid_dir):
    """Two APISIX nodes in one cluster: each serves the other's sessions by
    forwarding, the ceiling is the cluster's, and a node killed outright
    leaves the registry."""
    prefix = "mcp-bridge:apisix-test:"
    ok = wait_for(lambda: len(redis_keys(redis_port, prefix + "node:")) == 2, 10, 0.1)
    check(ok, f"both nodes in the registry: {redis_keys(redis_port, prefix)}")
    # Streamable: made on A, used through B.
    s = Streamable(a.port, "/mcp")
    check(s.status == 200, f"initialize on A: {s.status} {s.error}")
    check(f"-{f'127.0.0.1:{a.port}'.encode().hex()}-" in s.sid, f"the id names A: {s.sid}")
    s.port = b.port
    texts = [s.call("echo", {"text": f"via B {i}"}) for i in range(5)]
    check(texts == [f"via B {i}" for i in range(5)], f"calls through B: {texts}")
    # HTTP+SSE: the stream on A, the POSTs through B.
    sse = Session(a.port, "/mcp")
    check(sse.status == 200, f"GET /mcp/sse on A: {sse.status}")
    sse.port = b.port
    check(sse.call("echo", {"text": "sse via B"}) == "sse via B", "an SSE call through B")
    # A forged id, and one of another cluster: 404 from B.
    forged = s.sid[:-1] + ("0" if s.sid[-1] != "0" else "1")
    st, _ = s.rpc("ping", sid=forged)
    check(st == 404, f"a forged id through B: {st}")
    # The report is the last renewal's (every third of a lease).
    wait_for(lambda: a.control("GET", "/v1/plugin/mcp-bridge/cluster")[1].get("nodes") == 2, 3, 0.1)
    status, doc = a.control("GET", "/v1/plugin/mcp-bridge/cluster")
    check(status == 200 and doc.get("nodes") == 2 and doc.get("redis") == "up"
          and doc.get("node") == f"127.0.0.1:{a.port}", f"control API on A: {status} {doc}")
    # The exporter renders every second.
    wait_for(lambda: metric_sum(parse_metrics(b.metrics()), "forwarded_requests_total") >= 6, 3, 0.2)
    forwarded = metric_sum(parse_metrics(b.metrics()), "forwarded_requests_total")
    check(forwarded == 6, f"B's forwarded requests (5 Streamable, 1 SSE): {forwarded}")
    # The cluster's ceiling (2): one session on each node, the third refused
    # on either, and a slot back once one ends.
    c1 = Streamable(a.port, "/capped")
    c2 = Streamable(b.port, "/capped")
    c3 = Streamable(a.port, "/capped")
    check(c1.status == 200 and c2.status == 200, f"two sessions: {c1.status} {c2.status}")
    check(c3.status == 429 and "max_sessions_per_cluster" in (c3.error or ""),
          f"the third: {c3.status} {c3.error}")
    check(c2.delete() == 200, "DELETE of B's session")
    c4 = wait_for(lambda: Streamable(a.port, "/capped").status == 200, 5, 0.2)
    check(c4, "a slot back after a DELETE")
    # kill -9 of A: its sessions are gone, B answers 404 at once, and A
    # leaves the registry within its lease.
    # Every process of A: master, worker, APISIX's privileged agent (which
    # renews the node's lease as the workers do), hosts and backends. Its
    # host's directory (in the default runtime directory) stays behind.
    run.tmp_tokens.add(s.sid[:16])
    for p in processes_of(a.home):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass
    s.port = b.port
    t0 = time.monotonic()
    st, _ = s.rpc("ping")
    took = time.monotonic() - t0
    check(st == 404 and took < 1, f"A's session through B after A died: {st} in {took:.2f} s")
    gone = wait_for(lambda: redis_keys(redis_port, prefix + "node:") == [f"{prefix}node:127.0.0.1:{b.port}"],
                    1.5 * 3 + 1, 0.1)
    check(gone, f"A left the registry: {redis_keys(redis_port, prefix)}")
    b.stop()
    check(wait_fixture_gone(pid_dir, 10), "every backend ended")
    empty = wait_for(lambda: not redis_keys(redis_port, prefix), 1.5 * 3 + 1, 0.1)
    check(empty, f"no key left once both nodes are gone: {redis_keys(redis_port, prefix)}")
    return f"{forwarded} forwarded by B, 429 at the ceiling, A gone from the registry, no key left"


def s7_streamable_control(run, inst, pid_dir):
    live = []
    try:
        for _ in range(12):
            s = Streamable(inst.port, "/mcp")
            check(s.status == 200, f"initialize: {s.status} {s.body[:200]}")
            live.append(s)
            workers = {x["worker_pid"] for x in inst.sessions() if x["transport"] == "streamable"}
            if len(live) >= 3 and len(workers) == 2:
                break
        listed = inst.sessions()
        mine = {x["id_prefix"]: x for x in listed if x["route"] == "mcp"}
        check({s.sid[:24] for s in live} == set(mine), f"listed {sorted(mine)} for {[s.sid for s in live]}")
        for x in mine.values():
            check(x["transport"] == "streamable" and x["consumer"] == "" and alive(x["backend_pid"]),
                  f"session {x}")
        workers = {x["worker_pid"] for x in mine.values()}
        check(workers == set(inst.workers()), f"listed workers {workers}, workers {inst.workers()}")
        ended = []
        for w in sorted(workers):
            victim = next(s for s in live if mine[s.sid[:24]]["worker_pid"] == w)
            get = victim.open_get()
            pid = mine[victim.sid[:24]]["backend_pid"]
            st, doc = inst.control("DELETE", f"/v1/plugin/mcp-bridge/sessions/{victim.sid[:24]}")
            check(st == 200 and doc.get("ended") == victim.sid[:24], f"DELETE: {st} {doc}")
            check(get.ended_within(2), "the session's GET stream did not end")
            check(wait_for(lambda: not alive(pid), 2), f"backend {pid} still running after DELETE")
            after = [victim.rpc("tools/list")[0] for _ in range(4)]
            check(set(after) == {404}, f"requests to an ended session: {after}")
            check(victim.delete() == 404, "DELETE by the client of an ended session is not 404")
            ended.append(victim.sid[:24])
            victim.sid = None
            victim.close()
            live.remove(victim)
        after = {x["id_prefix"] for x in inst.sessions()}
        check(not (set(ended) & after), "ended sessions still listed")
        for s in live:
            check(s.call("echo", {"text": "alive"}) == "alive", "another session was hurt")
        st, _ = inst.control("DELETE", f"/v1/plugin/mcp-bridge/sessions/{ended[0]}")
        check(st == 404, f"DELETE of an ended session: {st}")
        return (f"{len(mine)} sessions listed over {len(workers)} workers (transport streamable); control API "
                f"DELETE of one per worker: 200, its GET stream ended, backend gone, requests 404; again 404")
    finally:
        for s in live:
            s.close()


def doc_route_match():
    """How the example route of docs/mcp-bridge.md (Enable Plugin) matches
    paths ("uri" or "uris"), moved from its base_uri to /doc."""
    doc = open(os.path.join(ROOT, "docs", "mcp-bridge.md"), encoding="utf-8").read()
    section = doc.split("## Enable Plugin", 1)[1].split("\n## ", 1)[0]
    example = json.loads(section.split("-d '", 1)[1].split("'", 1)[0])
    base = example["plugins"]["mcp-bridge"]["base_uri"]
    moved = lambda path: "/doc" + path[len(base):] if path.startswith(base) else path
    return {k: ([moved(p) for p in v] if isinstance(v, list) else moved(v))
            for k, v in example.items() if k in ("uri", "uris")}


def s13_doc_route(run, inst, pid_dir):
    """The route matched as docs/mcp-bridge.md's Enable Plugin shows it
    (moved to /doc): both endpoints."""
    figures = []
    s = Session(inst.port, "/doc")
    try:
        check(s.status == 200 and s.call("echo", {"text": "doc"}) == "doc",
              f"GET /doc/sse: {s.status} {s.stream.error}")
        figures.append("HTTP+SSE at /doc/sse served")
    finally:
        s.close()
    t = Streamable(inst.port, "/doc")
    try:
        check(t.status == 200, f"Streamable HTTP: POST /doc (initialize) {t.status} {t.body.strip()[:120]}: the "
                               f"documented route ({doc_route_match()}) does not reach the endpoint at {{base_uri}}")
        check(t.call("echo", {"text": "doc"}) == "doc", "a call on /doc")
        figures.append("Streamable HTTP at /doc served")
    finally:
        t.close()
    return "; ".join(figures)


def s12_stateless(run, inst, pid_dir):
    """2026-07-28 requests: each worker's pool serves; pooled backends end
    when idle."""
    st, msg = stateless(inst.port, "/pool", "server/discover")
    check(st == 200 and isinstance(msg, dict) and MODERN in msg.get("result", {}).get("supportedVersions", []),
          f"server/discover: {st} {str(msg)[:300]}")
    by_worker, n = {}, 0
    for n in range(1, 41):
        st, ids = stateless_pid(inst.port, "/pool")
        check(st == 200 and isinstance(ids, dict), f"stateless tools/call: {st} {str(ids)[:300]}")
        by_worker.setdefault(worker_of_backend(ids["pid"]), set()).add(ids["pid"])
        if n >= 6 and len(by_worker) == 2:
            break
    check(set(by_worker) == set(inst.workers()), f"pooled backends by worker {by_worker}, "
                                                 f"workers {inst.workers()}")
    st, msg = stateless(inst.port, "/pool", "tools/call", {"name": "echo", "arguments": {"text": "x" * 200000}})
    check(st == 200 and msg["result"]["content"][0]["text"] == "x" * 200000, "a 200 KB stateless echo")
    listed = [x for x in inst.sessions() if x["route"] == "pool"]
    check(not listed, f"pooled backends listed as sessions: {listed}")
    pooled = sorted(set().union(*by_worker.values()))
    t0 = time.monotonic()
    gone = wait_for(lambda: not any(alive(p) for p in pooled), 6)
    dt = time.monotonic() - t0
    check(gone, f"pooled backends still running 6 s after their last request: {pooled}")
    return (f"server/discover 200; {n} stateless tools/call served by {len(pooled)} pooled backends, "
            f"{sorted(len(v) for v in by_worker.values())} per worker; a 200 KB echo; none listed as a "
            f"session; ended idle {dt:.1f} s after the last request (pool_idle_timeout_ms 1000)")


# ---------------------------------------------------------------- Test::Nginx

def start_suites(run):
    """Starts the t/*.t suites under the real Test::Nginx."""
    if not os.path.isfile(os.path.join(TEST_NGINX_LIB, "Test", "Nginx", "Socket", "Lua.pm")):
        return None
    d = os.path.join(run.scratch, "test-nginx")
    os.makedirs(d)
    os.chmod(d, 0o755)
    env = dict(os.environ,
               TEST_NGINX_BINARY=NGINX,
               # The lua module is compiled into OpenResty's nginx.
               TEST_NGINX_LOAD_MODULES="",
               TEST_NGINX_SERVROOT=os.path.join(d, "servroot"),
               TEST_NGINX_PID_DIR=os.path.join(d, "pids"),
               TEST_NGINX_RUN_DIR=os.path.join(d, "run"),
               TEST_NGINX_PORT=str(free_port()))
    suites = sorted(f"t/{n}" for n in os.listdir(os.path.join(ROOT, "t")) if n.endswith(".t"))
    cmd = ["prove", f"-I{TEST_NGINX_LIB}", "-I.", *suites]
    isolated = os.geteuid() == 0 and shutil.which("unshare") is not None
    if isolated:
        # In a PID namespace of their own: a host ends the processes that
        # hosts of its user that are gone left behind, so the suites' own
        # checks of that (hostile.t) would race the hosts of any other
        # mcp-bridge of that user on this machine (a make test in another
        # checkout). The suites' nginx daemonizes, so the namespace's init
        # must reap (ci/reaper.py); what is left in the namespace dies with it.
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", sys.executable,
               os.path.join(ROOT, "ci", "reaper.py"), *cmd]
    out = open(os.path.join(d, "prove.log"), "w")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    run.children.append(p)
    return p, os.path.join(d, "prove.log"), time.monotonic(), isolated


def s11_suites(run, started):
    if started is None:
        raise Failed(f"no Test::Nginx at {TEST_NGINX_LIB} (set TEST_NGINX_LIB)")
    p, log_path, t0, isolated = started
    try:
        p.wait(timeout=max(10, 300 - (time.monotonic() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise Failed("the suites did not finish in 300 s")
    with open(log_path, errors="replace") as f:
        log = f.read()
    m = re.search(r"^Files=(\d+), Tests=(\d+), +(\d+) wallclock", log, re.M)
    summary = f"{m.group(1)} files, {m.group(2)} tests, {m.group(3)} s" if m else "no summary"
    if p.returncode != 0:
        # A failed error-log check names the log line, newline included.
        failed = re.findall(r"^#   Failed test '(.*?)'\n#   at [^\n]*\n((?:# [^\n]*\n)*)", log, re.M | re.S)
        say(log[-6000:])
        raise Failed(f"{summary}; failed: "
                     + " | ".join(" ".join((name + " " + diff).split()) for name, diff in failed)[:1500])
    return (summary + ", all passed (TEST_NGINX_BINARY = the testbed's nginx"
            + (", in a PID namespace of their own)" if isolated else ")"))


# ---------------------------------------------------------------- main

def testbed_missing():
    for path in (NGINX, os.path.join(APISIX_SRC, "bin", "apisix")):
        if not os.access(path, os.X_OK):
            return f"no APISIX testbed at {TESTBED}: no {path}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--why-skipped", action="store_true")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--only", default="")
    opts = ap.parse_args()

    why = testbed_missing()
    if why:
        say(f"apisix-test: {'skipped: ' if opts.why_skipped else ''}{why} (set APISIX_TESTBED to an "
            "APISIX built from source with its OpenResty; see docs/mcp-bridge.md)")
        return 0 if opts.why_skipped else 2
    if opts.why_skipped:
        return 0
    for prog in ("mcp-fixture", "mcp-bridge-host", "libmcp_bridge_native.so"):
        if not os.path.exists(os.path.join(BIN, prog)):
            say(f"apisix-test: {BIN}/{prog} is missing: cargo build --release --workspace")
            return 2
    if not os.path.isfile(os.path.join(APISIX_SRC, "deps", "share", "lua", "5.1", "prometheus.lua")):
        say(f"apisix-test: the APISIX at {APISIX_SRC} lacks nginx-lua-prometheus, which its prometheus "
            "plugin needs: put prometheus.lua, prometheus_keys.lua and prometheus_resty_counter.lua (from "
            "github.com/api7/nginx-lua-prometheus) into its deps/share/lua/5.1/")
        return 2
    only = {x.strip() for x in opts.only.split(",") if x.strip()}

    def want(n):
        return not only or n in only

    run = Run(opts.keep)
    run.notes = []
    t_start = time.monotonic()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    say(f"apisix-test: APISIX from {APISIX_SRC}, nginx {NGINX}; scratch {run.scratch}")
    interrupted = False
    try:
        # --- refusal without lua_module_has_body_filter_fix (1 worker)
        if want("5"):
            pids = run.pid_dir("refuse")
            inst = Apisix(run, "refuse", 1, [run.route("mcp", "/mcp", pids)], body_filter_fix=False,
                          plugins=("mcp-bridge",))
            inst.expected_log = [re.compile(r"mcp-bridge needs lua-nginx-module 0\.10\.29 or newer")]
            inst.start()
            run.scenario("5b", "lua-nginx-module 0.10.28 without lua_module_has_body_filter_fix: refused",
                         s5_refused, run, inst, pids)
            inst.stop()

        # --- 1 worker: max_sessions exactly; the SDKs end to end
        if want("1") or want("2"):
            pids = run.pid_dir("one")
            e2e, e2e_pids = e2e_routes(run, "one")
            inst = Apisix(run, "one", 1, [run.route("capped", "/capped", pids, max_sessions=2)] + e2e)
            inst.start()
            if want("2"):
                run.scenario("2a", "max_sessions (1 worker): 429 + Retry-After", s2_worker_limit_one,
                             run, inst, pids)
                run.scenario("2c", "max_sessions (1 worker), Streamable initialize; SSE + Streamable",
                             s2_streamable_limit_one, run, inst, pids)
            if want("1"):
                run.scenario("1a", "MCP SDKs end to end (t/e2e, t/e2e-python), 1 worker", s1_sdk_e2e,
                             run, inst, e2e_pids)
            inst.stop()

        # --- the main instance: 2 workers, runtime_dir set
        main_pids = run.pid_dir("main")
        e2e, e2e_pids = e2e_routes(run, "main")
        fast = {"kill_grace_ms": 500, "keepalive_interval_ms": 1000}
        routes = e2e + [
            run.route("mcp", "/mcp", main_pids, **fast),
            run.route("mcp2", "/mcp2", main_pids, **fast),
            run.route("auth", "/auth", main_pids, plugins={"key-auth": {}}, pool_idle_timeout_ms=1000, **fast),
            run.route("node", "/node", main_pids, max_sessions_per_node=3, **fast),
            run.route("capped", "/capped", main_pids, max_sessions=2, **fast),
            run.route("small", "/small", main_pids, max_message_bytes=1024, **fast),
            run.route("flood", "/flood", main_pids, **fast),
            run.route("pool", "/pool", main_pids, pool_idle_timeout_ms=1000, **fast),
            {"id": "missing", "uris": ["/missing", "/missing/*"],
             "plugins": {"mcp-bridge": {"base_uri": "/missing", "command": "/nonexistent/mcp-server"}}},
            # Matched as docs/mcp-bridge.md's example route is (scenario 13).
            dict(doc_route_match(), id="doc",
                 plugins={"mcp-bridge": {"base_uri": "/doc", "command": run.fixture,
                                         "args": ["--pid-dir", main_pids], "max_sessions": 50}}),
        ]
        consumers = [{"username": "alice", "plugins": {"key-auth": {"key": "alice-key"}}},
                     {"username": "bob", "plugins": {"key-auth": {"key": "bob-key"}}}]
        inst = Apisix(run, "main", 2, routes, consumers, runtime_dir=run.worker_owned_dir("run"))
        # /missing's command (scenario 8): the host says why.
        inst.expected_log = [re.compile(r"/nonexistent/mcp-server")]
        inst.start()
        baseline = parse_metrics(inst.metrics())
        if want("1"):
            run.scenario("1b", "MCP SDKs end to end (t/e2e, t/e2e-python), 2 workers", s1_sdk_e2e,
                         run, inst, e2e_pids)
        if want("3"):
            run.scenario("3a", "POSTs on either worker, runtime_dir set", s3_cross_worker, run, inst, main_pids)
            run.scenario("3c", "a Streamable session's requests on either worker, runtime_dir set",
                         s3_streamable_cross_worker, run, inst, main_pids)
        if want("6"):
            run.scenario("6a", "key-auth consumers; sessions bound to route and consumer", s6_consumers,
                         run, inst, main_pids)
            run.scenario("6b", "key-auth consumers, Streamable sessions and stateless pools", s6_streamable_consumers,
                         run, inst, main_pids)
        if want("2"):
            run.scenario("2b", "max_sessions_per_node and max_sessions, 2 workers", s2_node_limit,
                         run, inst, main_pids)
            run.scenario("2d", "max_sessions_per_node and max_sessions, 2 workers, Streamable",
                         s2_streamable_node_limit, run, inst, main_pids)
        if want("9"):
            run.scenario("9", "chunked POST over max_message_bytes: 413 before it is read whole", s9_chunked,
                         run, inst, main_pids)
        if want("10"):
            run.scenario("10", "lua_check_client_abort: a killed client's backend ends", s10_client_abort,
                         run, inst, main_pids)
        if want("5"):
            run.scenario("5a", "flood to a slow client (lua_module_has_body_filter_fix: true)", s5_flood,
                         run, inst, main_pids)
        if want("7"):
            run.scenario("7a", "control API: list every worker's sessions, end one", s7_control,
                         run, inst, main_pids)
            run.scenario("7b", "control API: Streamable sessions listed, one per worker ended",
                         s7_streamable_control, run, inst, main_pids)
        if want("12"):
            run.scenario("12", "stateless 2026-07-28 requests: each worker's pool, ended when idle", s12_stateless,
                         run, inst, main_pids)
        if want("13"):
            run.scenario("13", "the route of docs/mcp-bridge.md (uri {base_uri}/*): both endpoints",
                         s13_doc_route, run, inst, main_pids)
        if want("8"):
            run.scenario("8", "metrics through APISIX's prometheus plugin", s8_metrics, run, inst, main_pids,
                         baseline)
        if want("4"):
            run.scenario("4a", "reload with live sessions", s4_reload, run, inst, main_pids)
            run.scenario("4b", "kill -9 of a worker with live sessions", s4_kill_worker, run, inst, main_pids)
            run.scenario("4c", "quit with live sessions", s4_quit, run, inst, main_pids)
        inst.stop()

        # --- 2 workers, default runtime directory, host_program not set
        if want("3") or want("4"):
            pids = run.pid_dir("plain")
            inst = Apisix(run, "plain", 2, [run.route("mcp", "/mcp", pids, kill_grace_ms=500)],
                          host_program=False)
            inst.start()
            if want("3"):
                run.scenario("3b", "POSTs on either worker, default runtime directory", s3_plain,
                             run, inst, pids)
                run.scenario("3d", "a Streamable session's requests on either worker, default runtime",
                             s3_streamable_cross_worker, run, inst, pids)
            if want("4"):
                run.scenario("4d", "kill -9 of the master with live sessions", s4_kill_master,
                             run, inst, pids)
            inst.stop()

        # --- two nodes of one cluster, with a Redis of their own
        if want("14"):
            if not shutil.which("redis-server"):
                run.notes.append(("14", "skipped", "redis-server is not installed (apt-get install redis-server)"))
            else:
                redis_port = free_port()
                redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "",
                                          "--appendonly", "no", "--dir", run.scratch],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                run.children.append(redis)
                pids = run.pid_dir("cluster")
                cluster = {"name": "apisix-test", "secret": "the secret of the apisix-test cluster",
                           "redis": f"redis://127.0.0.1:{redis_port}", "lease_ms": 1500}
                routes = [run.route("mcp", "/mcp", pids, kill_grace_ms=500),
                          run.route("capped", "/capped", pids, kill_grace_ms=500, max_sessions_per_cluster=2)]
                nodes = [Apisix(run, name, 1, routes, cluster=cluster) for name in ("node-a", "node-b")]
                # B's forward to A as A is killed may find A's socket still
                # there: nginx's core logs the reset (the client gets 404).
                nodes[1].expected_log = [re.compile(r"recv\(\) failed \(104: Connection reset by peer\)")]
                for inst in nodes:
                    inst.start()
                run.scenario("14", "two APISIX nodes of one cluster: forwarding, the ceiling, kill -9",
                             s14_cluster, run, nodes[0], nodes[1], redis_port, pids)
                for inst in nodes:
                    inst.stop()
                redis.terminate()
                redis.wait()

        # Last, alone: hosts of one user end what hosts of that user that
        # are gone left behind, so the suites' checks of that would race the
        # APISIX instances' hosts (all run as nobody).
        if want("11"):
            run.scenario("11", "t/*.t under the real Test::Nginx, the testbed's nginx", s11_suites, run,
                         start_suites(run))

        run.scenario("logs", "error logs of every APISIX: nothing unexpected", s_logs, run)
        left = [p for p in processes_of(run.scratch) if alive(p)]
        run.scenario("left", "nothing left running (nginx, hosts, fixtures)",
                     lambda: check(not left, f"{[cmdline(p) for p in left]}") or "none")
    except KeyboardInterrupt as e:
        interrupted = True
        say(f"\ninterrupted ({e}): cleaning up")
    finally:
        run.cleanup()

    total = time.monotonic() - t_start
    say("\n" + "=" * 100)
    say(f"{'#':<5} {'scenario':<66} {'result':<6} {'time':>6}")
    say("-" * 100)
    for number, name, result, figures, dt in run.results:
        say(f"{number:<5} {name[:66]:<66} {result:<6} {dt:5.1f}s")
        for chunk in wrap(figures, 92):
            say(f"      {chunk}")
    for number, what, value in run.notes:
        say(f"note  ({number}) {what}: {value}")
    failed = [r for r in run.results if r[2] != "ok"]
    say("-" * 100)
    say(f"apisix-test: {len(run.results) - len(failed)} of {len(run.results)} passed in {total:.0f} s"
        + (f"; FAILED: {', '.join(r[0] for r in failed)}" if failed else "")
        + ("; INTERRUPTED" if interrupted else ""))
    return 1 if failed or interrupted else 0


def wrap(text, width):
    out = []
    for para in str(text).split("\n"):
        while len(para) > width:
            cut = para.rfind(" ", 0, width)
            cut = cut if cut > 20 else width
            out.append(para[:cut])
            para = para[cut:].lstrip()
        out.append(para)
    return out


if __name__ == "__main__":
    sys.exit(main())
