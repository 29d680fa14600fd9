"""The HTTP fuzz of the chaos run (ci/chaos.py): random requests on every
endpoint of the gateway, over raw sockets, while the chaos's clients run.

Each request is built from a seeded RNG of its own (CHAOS_SEED replays the
choices): a method (right or not), a path (each endpoint, spelt as nginx
normalizes it, or any other), a query (sessionId valid, of the other
transport, ended, unknown, huge, percent garbage, twice, missing), headers
(Host, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version,
Mcp-Method, Mcp-Name, Origin, Expect, Connection: right, missing, doubled,
oversized, garbled, not UTF-8; junk headers and malformed header lines), a
body (JSON-RPC with odd ids, batches, the stateless envelope, random bytes,
truncated, deep, huge, empty) framed by Content-Length (right, short, long,
garbled) or chunked with random chunk sizes (well-formed or not), sent whole,
split, slowly, or cut off by an early close.

Every answer's status must be one the documentation lists for that endpoint
(the table "Statuses a client can get" in docs/mcp-bridge.md, read here),
never a 500, a 502, or a 503 without Retry-After unless a kill or reload
explains it. The fuzz keeps an HTTP+SSE and a Streamable HTTP session of its
own and sends them valid requests among the garbage, with ids of odd shapes:
each request accepted must be answered exactly once, and none refused may
reach the backend. (The chaos's own sessions, which it never touches, check
the same for theirs.)
"""
import collections
import json
import os
import random
import re
import socket
import struct
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs", "mcp-bridge.md")
STATUS_SECTION = "### Statuses a client can get"

# Rows of the documentation's table, by how their first cell starts.
ROWS = {
    "streamable": "`{base_uri}`",
    "sse": "`{base_uri}/sse`",
    "message": "`{base_uri}/message`",
    "other": "any other path",
    "reports": "`--status-uri`",
    "nginx": "any request",
}

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
# How long a complete request may wait for its answer, and an incomplete one
# (a body cut short) for an early refusal.
ANSWER_LIMIT = 10
INCOMPLETE_WAIT = 0.4
# Pipelined leftovers (a Content-Length shorter than the body) may get
# answers of their own, each within this.
NEXT_ANSWER_WAIT = 1.0
# Waiting for the answers to the fuzz's own accepted requests at the end.
SETTLE_WAIT = 5


def documented_statuses(path=DOCS):
    """{row: set of statuses} from the documentation's table. Exits when a
    row is missing, so that the documentation and the check cannot drift
    apart unnoticed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    at = text.find(STATUS_SECTION)
    if at < 0:
        raise SystemExit(f"httpfuzz: {path} has no section \"{STATUS_SECTION}\"")
    section = text[at + len(STATUS_SECTION):].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        for key, start in ROWS.items():
            if cells[0].startswith(start) and key not in rows:
                rows[key] = {int(s) for s in re.findall(r"`(\d{3})`", cells[1])}
    missing = [k for k in ROWS if not rows.get(k)]
    if missing:
        raise SystemExit(f"httpfuzz: the table under \"{STATUS_SECTION}\" in {path} has no row for "
                         + ", ".join(ROWS[k] for k in missing))
    return rows


class NoAnswer(Exception):
    pass


class Reader:
    """Answers on a raw connection: heads, then bodies (Content-Length,
    chunked, or up to the close), or an event stream piece by piece."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.eof = False

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise NoAnswer("timeout")
        self.sock.settimeout(min(left, 2))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            if time.monotonic() >= deadline:
                raise NoAnswer("timeout") from None
            return
        except OSError as e:
            raise NoAnswer(type(e).__name__) from None
        if not data:
            self.eof = True
            raise NoAnswer("closed")
        self.buf += data

    def until(self, marker, deadline, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise NoAnswer("no end of head")
            self._fill(deadline)
        piece, self.buf = self.buf.split(marker, 1)
        return piece

    def take(self, n, deadline):
        while len(self.buf) < n:
            self._fill(deadline)
        piece, self.buf = self.buf[:n], self.buf[n:]
        return piece

    def head(self, deadline):
        """(status, {lower-case name: value}); 1xx answers skipped."""
        while True:
            lines = self.until(b"\r\n\r\n", deadline).decode("latin-1").split("\r\n")
            m = re.match(r"HTTP/1\.[01] (\d{3})(?: |$)", lines[0])
            if not m:
                raise NoAnswer(f"not an HTTP answer: {lines[0][:60]!r}")
            status = int(m.group(1))
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if status >= 200:
                return status, headers

    def chunks(self, deadline):
        """The pieces of a chunked body, up to its last chunk."""
        while True:
            size = int(self.until(b"\r\n", deadline).split(b";")[0], 16)
            if size == 0:
                self.until(b"\r\n", deadline)
                return
            piece = self.take(size + 2, deadline)
            yield piece[:-2]

    def body(self, headers, deadline, no_body=False):
        if no_body:
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return b"".join(self.chunks(deadline))
        if "content-length" in headers:
            return self.take(int(headers["content-length"]), deadline)
        data = b""
        try:
            while True:
                self._fill(deadline)
                data += self.buf
                self.buf = b""
        except NoAnswer:
            if not self.eof:
                raise
        return data


def sse_messages(data):
    """The JSON-RPC messages of event-stream text (whole events only)."""
    out = []
    for block in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [ln[5:].lstrip(b" ") for ln in block.split(b"\n") if ln.startswith(b"data:")]
        if lines:
            try:
                out.append(json.loads(b"\n".join(lines)))
            except ValueError:
                out.append(None)
    return out


def responses_in(messages):
    """Responses (with an id, without a method) of messages and batches."""
    for m in messages:
        for item in (m if isinstance(m, list) else [m]):
            if isinstance(item, dict) and "id" in item and "method" not in item:
                yield item


def key_of(id_):
    return json.dumps(id_, sort_keys=True)


class Tracker:
    """The fuzz's accepted and refused requests to one of its own sessions,
    by id, and the responses that came back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.accepted = set()
        self.refused = set()
        self.got = collections.Counter()

    def outcome(self, key, accepted):
        with self.lock:
            (self.accepted if accepted else self.refused).add(key)

    def answered(self, key):
        with self.lock:
            self.got[key] += 1

    def missing(self):
        with self.lock:
            return self.accepted - set(self.got)


class OwnSse:
    """An HTTP+SSE session of the fuzz's own, whose stream a thread reads."""

    def __init__(self, fuzz):
        self.fuzz = fuzz
        self.sid = None
        self.track = Tracker()
        self.ended = None
        self.started = time.monotonic()
        self.sock = None
        self.thread = None

    def open(self):
        f = self.fuzz
        try:
            self.sock = socket.create_connection(("127.0.0.1", f.port), timeout=5)
            self.sock.sendall(f"GET {f.base}/sse HTTP/1.1\r\nHost: 127.0.0.1:{f.port}\r\n"
                              "Accept: text/event-stream\r\n\r\n".encode())
            self.reader = Reader(self.sock)
            deadline = time.monotonic() + ANSWER_LIMIT
            status, headers = self.reader.head(deadline)
            if status != 200:
                self.close()
                return False
            self.pieces = self.reader.chunks(deadline + 3600)
            data = b""
            while b"\n\n" not in data:
                data += next(self.pieces)
            m = re.search(rb"sessionId=([0-9a-f]+)", data)
            self.sid = m.group(1).decode()
        except (OSError, NoAnswer, StopIteration, AttributeError):
            self.close()
            return False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return True

    def _read(self):
        data = b""
        try:
            for piece in self.pieces:
                data += piece
                *events, data = data.split(b"\n\n")
                for m in responses_in(sse_messages(b"\n\n".join(events) + b"\n\n")):
                    self.track.answered(key_of(m.get("id")))
            self.ended = "the gateway ended the stream"
        except (NoAnswer, ValueError, OSError) as e:
            self.ended = f"stream cut ({e})"

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass


class Fuzz:
    """The HTTP fuzz: `threads` senders until `stop` is set. `stats` is the
    chaos's (add, status, finding, unexpected); `disrupted_since(t)` tells
    whether a kill or reload may explain what happened since t."""

    def __init__(self, port, base, reports, seed, stats, stop, disrupted_since, max_message):
        self.port = port
        self.base = base
        self.reports = reports
        self.seed = seed
        self.stats = stats
        self.stop = stop
        self.disrupted_since = disrupted_since
        self.max_message = max_message
        self.allowed = documented_statuses()
        self.sent = collections.Counter()
        self.lock = threading.Lock()
        self.ended_ids = []

    # -- the fuzz's own sessions --

    def own_streamable(self):
        """A Streamable HTTP session of the fuzz's own: its id, or None."""
        body = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}}})
        status, headers, _ = self.plain("POST", self.base, body.encode())
        sid = headers.get("mcp-session-id") if status == 200 else None
        if sid:
            self.plain("POST", self.base, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', sid)
        return sid

    def plain(self, method, path, body=b"", sid=None):
        """One ordinary request: (status, headers, body), or (None, {}, b"")."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close",
                 "Content-Type: application/json", "Accept: application/json, text/event-stream",
                 f"Content-Length: {len(body)}"]
        if sid:
            lines += [f"Mcp-Session-Id: {sid}", f"MCP-Protocol-Version: {LEGACY_VERSION}"]
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
                r = Reader(s)
                deadline = time.monotonic() + ANSWER_LIMIT
                status, headers = r.head(deadline)
                return status, headers, r.body(headers, deadline)
        except (OSError, NoAnswer, ValueError):
            return None, {}, b""

    # -- the senders --

    def run(self, index):
        rng = random.Random(f"{self.seed}/fuzz/{index}")
        sse = OwnSse(self)
        streamable = None
        finished = []
        n = 0
        while not self.stop.is_set():
            if sse.sid is None or sse.ended:
                if sse.sid:
                    finished.append(sse)
                    with self.lock:
                        self.ended_ids.append(sse.sid)
                sse = OwnSse(self)
                if not sse.open():
                    sse.sid = None
                    self.stop.wait(0.2)
            if streamable is None or rng.random() < 0.01:
                if streamable:
                    self.plain("DELETE", self.base, sid=streamable)
                    with self.lock:
                        self.ended_ids.append(streamable)
                streamable = self.own_streamable()
            n += 1
            req = Request(self, random.Random(f"{self.seed}/fuzz/{index}/{n}"), index, n, sse, streamable)
            self.send(req)
        if streamable:
            self.plain("DELETE", self.base, sid=streamable)
        finished.append(sse)
        self.settle(finished)

    def settle(self, sessions):
        """Checks every own HTTP+SSE session: each accepted request answered
        once, no refused one answered."""
        deadline = time.monotonic() + SETTLE_WAIT
        while any(s.track.missing() and not s.ended for s in sessions) and time.monotonic() < deadline:
            time.sleep(0.05)
        for s in sessions:
            t = s.track
            with t.lock:
                missing = t.accepted - set(t.got)
                # (Untracked messages may share ids: only the fuzz's own
                # unique ones count.)
                twice = [k for k, n in t.got.items() if n > 1 and k in t.accepted | t.refused]
                leaked = t.refused & set(t.got)
            s.close()
            self.stats.add("fuzz: own requests accepted and answered", len(t.accepted) - len(missing))
            if missing:
                if s.ended and s.ended.startswith("stream cut") and self.disrupted_since(s.started):
                    self.stats.add("fuzz: own requests lost to a kill", len(missing))
                else:
                    self.stats.add("fuzz: accepted requests never answered", len(missing))
                    self.stats.finding(f"fuzz: {len(missing)} accepted request(s) never answered "
                                       f"({s.ended or 'stream open'})")
            for k in twice:
                self.stats.add("fuzz: requests answered twice")
                self.stats.finding(f"fuzz: request {k[:40]} answered twice")
            for k in leaked:
                self.stats.add("fuzz: refused requests that reached the backend")
                self.stats.finding(f"fuzz: refused request {k[:40]} reached the backend")

    def send(self, req):
        started = time.monotonic()
        self.stats.add("fuzz: requests sent")
        self.stats.add(f"fuzz: writes {req.style}")
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            self.stats.add("fuzz: connect failed")
            return
        try:
            self._exchange(sock, req, started)
        finally:
            try:
                if req.rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass

    def _exchange(self, sock, req, started):
        try:
            for piece, pause in req.writes:
                if pause:
                    time.sleep(pause)
                sock.sendall(piece)
        except OSError:
            # The gateway may refuse early and close (a 413 before the body).
            pass
        if req.style == "early close":
            self.stats.add("fuzz: closed early")
            return
        reader = Reader(sock)
        wait = ANSWER_LIMIT if req.complete else INCOMPLETE_WAIT
        answers = 0
        while True:
            deadline = time.monotonic() + wait
            try:
                status, headers = reader.head(deadline)
            except NoAnswer as e:
                if answers == 0:
                    self.no_answer(req, str(e), started)
                return
            where = req.endpoint if answers == 0 else None
            self.check(req, where, status, headers, started)
            answers += 1
            stream = headers.get("content-type", "").startswith("text/event-stream")
            if stream and req.method != "POST":
                return
            try:
                body = reader.body(headers, time.monotonic() + ANSWER_LIMIT,
                                   no_body=req.method == "HEAD" or status in (204, 304))
            except (NoAnswer, ValueError):
                return
            if answers == 1 and req.track:
                self.tracked(req, status, headers, body, stream)
            if headers.get("connection", "").lower() == "close" or not req.leftover:
                return
            wait = NEXT_ANSWER_WAIT

    def tracked(self, req, status, headers, body, stream):
        kind, key = req.track
        if kind == "sse":
            req.sse.track.outcome(key, status == 202)
            return
        if status != 200:
            return
        messages = sse_messages(body) if stream else [json.loads(body)] if body.strip() else []
        found = [m for m in responses_in(messages) if key_of(m.get("id")) == key]
        if len(found) == 1:
            self.stats.add("fuzz: own Streamable requests answered once")
        else:
            self.stats.add("fuzz: Streamable replies without exactly one response")
            self.stats.finding(f"fuzz: a Streamable reply ({'stream' if stream else 'JSON'}) held {len(found)} "
                               f"response(s) to request {key[:40]}")

    def no_answer(self, req, why, started):
        if not req.complete:
            self.stats.add("fuzz: incomplete requests left unanswered")
        elif self.disrupted_since(started):
            self.stats.add("fuzz: unanswered after a kill or reload")
        elif req.nginx_refuses or req.malformed_body:
            # nginx closes on some malformed requests without a word, and
            # a connection whose body it cannot parse may be reset before
            # its answer is read.
            self.stats.add("fuzz: malformed requests closed without an answer")
        else:
            self.stats.add("fuzz: complete requests without an answer")
            self.stats.finding(f"fuzz: {req.what()} got no answer ({why}; {req.note_text})")

    def check(self, req, where, status, headers, started):
        what = f"fuzz {req.what(where)}"
        self.stats.status(what, status)
        allowed = set(self.allowed["nginx"])
        for key in ([where] if where else list(self.allowed)):
            allowed |= self.allowed[key]
        excused = self.disrupted_since(started)
        if status not in allowed:
            self.stats.unexpected(f"{what} answered {status}, which docs/mcp-bridge.md does not list ({req.note_text})")
        elif status == 500 or status == 502 or (status == 503 and not headers.get("retry-after")):
            if excused:
                self.stats.finding(f"{what} answered {status}, after a kill or reload")
            else:
                self.stats.unexpected(f"{what} answered {status} ({req.note_text})")


# ---- building one random request ----

ODD_METHODS = ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "FOO", "M-SEARCH", "get", "P0ST", "DELETE\x00"]
SAFE_TOOLS = ["echo", "no_such_tool"]


def rand_text(rng, n, alphabet=None):
    if alphabet is None:
        return bytes(rng.randrange(256) for _ in range(n))
    return "".join(rng.choice(alphabet) for _ in range(n)).encode()


class Request:
    """One random request: `writes` (bytes, pause before), whether it is
    `complete` (the gateway has all it needs to answer), the endpoint it
    aims at, and `track` (("sse" or "streamable", id key)) when it is a valid
    request to one of the fuzz's own sessions."""

    def __init__(self, fuzz, rng, index, n, sse, streamable):
        self.fuzz = fuzz
        self.rng = rng
        self.sse = sse
        self.track = None
        self.complete = True
        self.leftover = False
        self.nginx_refuses = False
        self.malformed_body = False
        self.rst = False
        self.notes = []
        r = rng.random()
        self.endpoint = ("streamable" if r < 0.42 else "message" if r < 0.74 else "sse" if r < 0.79
                         else "reports" if r < 0.85 else "other")
        right = {"streamable": rng.choice(["POST", "POST", "POST", "GET", "DELETE"]), "message": "POST",
                 "sse": "GET", "reports": "GET", "other": rng.choice(["GET", "POST"])}[self.endpoint]
        self.method = right if rng.random() < 0.8 else rng.choice(["GET", "POST", "DELETE"] + ODD_METHODS)
        if not re.fullmatch(r"[A-Z_-]+", self.method):
            self.nginx_refuses = True
        target = self.path() + self.query(streamable)
        version = "HTTP/1.1"
        if rng.random() < 0.05:
            version = rng.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "HTTP/9.9", "HTTP/1.x", "HTTP/01.1"])
            self.note(version)
            self.nginx_refuses = self.nginx_refuses or version not in ("HTTP/1.0", "HTTP/1.1")
        body, self.track = self.body(index, n, streamable)
        headers = self.headers(streamable, version)
        self.data = self.frame(f"{self.method} {target} {version}".encode("latin-1"), headers, body)
        self.style, self.writes = self.schedule(self.data)

    def note(self, what):
        self.notes.append(what)

    @property
    def note_text(self):
        return ", ".join(self.notes[:6]) or "plain"

    def what(self, where="aim"):
        """What the request is, for the figures: its method and where it
        went (`where` None: answers to pipelined leftovers)."""
        names = {"streamable": "{base_uri}", "message": "{base_uri}/message", "sse": "{base_uri}/sse",
                 "reports": "status/metrics", "other": "other paths", None: "pipelined leftovers"}
        method = self.method if re.fullmatch(r"[A-Z]+", self.method) else "odd method"
        return f"{method} {names[self.endpoint if where == 'aim' else where]}"

    def path(self):
        rng, base = self.rng, self.fuzz.base
        if self.endpoint == "reports":
            return rng.choice(self.fuzz.reports)
        if self.endpoint == "other":
            choice = rng.randrange(7)
            if choice == 0:
                return base + "/" + rand_text(rng, rng.randint(1, 12), "abcxyz019_.-").decode()
            if choice == 1:
                return "/"
            if choice == 2:
                return base + "x"
            if choice == 3:
                return base + "/sse/more"
            if choice == 4:
                return base + "/message/"
            if choice == 5:
                self.nginx_refuses = True
                self.note("garbage path")
                return "/" + rand_text(rng, rng.randint(1, 20)).decode("latin-1").replace(" ", "%20")
            return "/favicon.ico"
        tail = {"streamable": "", "message": "/message", "sse": "/sse"}[self.endpoint]
        variant = rng.randrange(12)
        if variant == 0:
            return "/" + base + tail
        if variant == 1:
            return base + "/./x/.." + tail
        if variant == 2:
            return "/%6d" + base[2:] + tail
        if variant == 3:
            return f"http://127.0.0.1:{self.fuzz.port}{base}{tail}"
        return base + tail

    def query(self, streamable):
        rng, sse = self.rng, self.sse
        if self.endpoint != "message":
            if rng.random() < 0.15:
                self.note("junk query")
                return "?" + rand_text(rng, rng.randint(0, 40), "abc=&%19zZ+;?/").decode()
            return ""
        live = sse.sid or "0" * 48
        r = rng.random()
        if r < 0.55:
            sid = live
        else:
            choice = rng.randrange(12)
            self.note(f"sessionId variant {choice}")
            with self.fuzz.lock:
                ended = rng.choice(self.fuzz.ended_ids) if self.fuzz.ended_ids else "f" * 48
            sid = [
                streamable or "a" * 48, ended, f"{rng.getrandbits(192):048x}",
                live[:16] + f"{rng.getrandbits(128):032x}", "a" * rng.randint(60, 9000), "%zz" + live,
                "%" + live[1:], live.upper(), live + "&sessionId=" + live, "", live[:47],
                "%00" + live,
            ][choice]
        query = f"sessionId={sid}"
        r = rng.random()
        if r < 0.08:
            query = "&".join(f"a{i}=1" for i in range(rng.randint(30, 45))) + "&" + query
            self.note("many query args")
        elif r < 0.14:
            query = "x=%ff&" + query + "&y=%"
        elif r < 0.17:
            query = "session=" + sid
        return "?" + query

    def headers(self, streamable, version):
        rng, port = self.rng, self.fuzz.port
        h = []
        r = rng.random()
        if r < 0.92:
            h.append(("Host", f"127.0.0.1:{port}"))
        else:
            choice = rng.randrange(5)
            self.note(f"Host variant {choice}")
            if choice == 0 and version == "HTTP/1.1":
                self.nginx_refuses = True
            if choice == 1:
                h += [("Host", "127.0.0.1"), ("Host", "other.example")]
                self.nginx_refuses = True
            elif choice == 2:
                h.append(("Host", "exa mple"))
                self.nginx_refuses = True
            elif choice == 3:
                h.append(("Host", "[::1]:x"))
            elif choice == 4:
                h.append(("Host", "evil.example"))
        if self.method == "POST" or rng.random() < 0.1:
            r = rng.random()
            if r < 0.8:
                h.append(("Content-Type", "application/json"))
            else:
                ct = rng.choice(["application/json; charset=utf-8", "APPLICATION/JSON", " application/json ",
                                 "text/plain", "", "application/json, text/plain", "application/jsonx", None,
                                 "application/\xff", "multipart/form-data; boundary=x"])
                self.note(f"Content-Type {ct!r}")
                if ct is not None:
                    h.append(("Content-Type", ct))
                if rng.random() < 0.2:
                    h.append(("Content-Type", "text/html"))
        right_accept = {"streamable": "application/json, text/event-stream", "sse": "text/event-stream"}
        accept = right_accept.get(self.endpoint, "*/*")
        if self.endpoint == "streamable" and self.method == "GET":
            accept = "text/event-stream"
        if rng.random() < 0.2:
            accept = rng.choice([None, "*/*", "application/json", "text/event-stream", "text/html",
                                 "application/json;q=0.9, text/event-stream;q=0.1", "x" * 3000,
                                 "text/event-stream\xff"])
            self.note(f"Accept {str(accept)[:30]!r}")
        if accept is not None:
            h.append(("Accept", accept))
        if self.endpoint in ("streamable", "other") or rng.random() < 0.05:
            sid = self.session_header(streamable)
            if sid is not None:
                h.append(("Mcp-Session-Id", sid))
        if rng.random() < 0.6:
            v = LEGACY_VERSION if rng.random() < 0.7 else rng.choice(
                [MODERN_VERSION, "2024-11-05", "1999-01-01", "", "2025-11-25, 2025-06-18", "\xff\xfe", "x" * 200])
            if v != LEGACY_VERSION:
                self.note(f"version {v[:20]!r}")
            h.append(("MCP-Protocol-Version", v))
        if rng.random() < 0.15:
            for name in ("Mcp-Method", "Mcp-Name"):
                if rng.random() < 0.6:
                    h.append((name, rng.choice(["tools/call", "echo", "=?base64?ZWNobw==?=", "=?base64?***?=",
                                                "=?base64?=", "\xc3", " tools/list ", "x" * 500])))
        if rng.random() < 0.05:
            h.append(("Origin", rng.choice(["http://evil.example", "null", f"http://127.0.0.1:{port}", ""])))
            self.note("Origin")
        if rng.random() < 0.05:
            h.append(("Expect", rng.choice(["100-continue", "nonsense"])))
        if rng.random() < 0.1:
            h.append(("Connection", rng.choice(["close", "keep-alive", "upgrade", "\x01"])))
        if rng.random() < 0.12:
            self.junk_headers(h)
        return h

    def session_header(self, streamable):
        rng = self.rng
        if streamable and rng.random() < 0.6:
            return streamable
        choice = rng.randrange(10)
        if choice < 3:
            return None
        self.note(f"Mcp-Session-Id variant {choice}")
        with self.fuzz.lock:
            ended = rng.choice(self.fuzz.ended_ids) if self.fuzz.ended_ids else "e" * 48
        return [None, None, None, self.sse.sid or "b" * 48, ended, f"{rng.getrandbits(192):048x}",
                "abc", "a" * 5000, (streamable or "c" * 48).upper(), "\xff" * 48][choice]

    def junk_headers(self, h):
        rng = self.rng
        choice = rng.randrange(8)
        self.note(f"junk header {choice}")
        if choice == 0:
            h += [(f"X-{rand_text(rng, 6, 'abcdef').decode()}", "v" * rng.randint(0, 100)) for _ in range(50)]
        elif choice == 1:
            h.append(("X-Long", "v" * rng.randint(7000, 12000)))
            self.nginx_refuses = True
        elif choice == 2:
            h.append(("no colon here", None))
            self.nginx_refuses = True
        elif choice == 3:
            h.append(("X-Nul", "a\x00b"))
            self.nginx_refuses = True
        elif choice == 4:
            h.append(("X-Fold", "a"))
            h.append((" folded", None))
            self.nginx_refuses = True
        elif choice == 5:
            h.append(("X_Under_Score", "1"))
        elif choice == 6:
            h.append(("X-Bytes", rand_text(rng, 30).decode("latin-1").replace("\r", "").replace("\n", "")))
            self.nginx_refuses = True
        else:
            h.append(("Mcp-Session-Id", "x"))
            h.append(("Mcp-Session-Id", "y"))

    def body(self, index, n, streamable):
        """(body bytes, track or None)."""
        rng = self.rng
        if self.method in ("GET", "DELETE", "HEAD", "OPTIONS") and rng.random() < 0.9:
            return b"", None
        r = rng.random()
        if r < 0.5:
            return self.message(index, n, streamable)
        choice = rng.randrange(11)
        self.note(f"body {choice}")
        if choice == 0:
            return rand_text(rng, rng.randint(0, 300)), None
        if choice == 1:
            text, _ = self.message(index, n, streamable)
            return text[:rng.randint(0, max(0, len(text) - 1))], None
        if choice == 2:
            depth = rng.choice([50, 99, 101, 127, 128, 129, 200, 5000])
            inner = "[" * depth + "]" * depth
            return f'{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"d":{inner}}}}}'.encode(), None
        if choice == 3:
            pad = "x" * rng.choice([self.fuzz.max_message - 60, self.fuzz.max_message + 1, 3 * self.fuzz.max_message])
            return json.dumps({"jsonrpc": "2.0", "method": "notifications/fuzz", "params": {"pad": pad}}).encode(), None
        if choice == 4:
            return b"", None
        if choice == 5:
            return b'{"jsonrpc":"2.0","id":"\xff\xfe","method":"ping"}', None
        if choice == 6:
            return b"\xef\xbb\xbf" + self.message(index, n, streamable)[0], None
        if choice == 7:
            return rng.choice([b"null", b"42", b'"text"', b"[]", b"{}", b"   ", b"[1,2]", b"{} {}"]), None
        if choice == 8:
            text = b'{\n  "jsonrpc": "2.0",\r\n  "id": 7,\n  "method": "tools/list"\n}'
            return text, None
        if choice == 9:
            return json.dumps({"jsonrpc": "2.0", "id": "s", "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {}}}}).encode(), None
        return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY_VERSION, "capabilities": {},
            "clientInfo": {"name": "fuzz", "version": "1"}}}).encode(), None

    def message(self, index, n, streamable):
        """A valid JSON-RPC text with an id of an odd shape; tracked when it
        is a request to one of the fuzz's own sessions."""
        rng = self.rng
        shape = rng.randrange(8)
        serial = index * 10_000_000 + n
        id_ = [serial, -serial, f"fz{serial}", f"fz{serial} \u00e9\U0001F600 \"q\" \\", serial + 0.5,
               f"fz{serial}" + "x" * rng.choice([10, 600]), 2 ** 53 + serial, f"fz{serial}\u0000\n"][shape]
        r = rng.random()
        if r < 0.7:
            tool = rng.choice(SAFE_TOOLS)
            method, params = rng.choice([("ping", {}), ("tools/list", {}), ("prompts/list", {}), ("no/such", {}),
                                         ("tools/call", {"name": tool, "arguments": {"text": f"t{serial}"}})])
            msg = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
            if rng.random() < 0.2:
                msg["params"]["_meta"] = {"progressToken": rng.choice([serial, f"p{serial}", 1.5])}
            track = True
        elif r < 0.85:
            msg = {"jsonrpc": "2.0", "method": rng.choice(["notifications/initialized", "notifications/cancelled",
                                                            "notifications/progress"]),
                   "params": {"requestId": serial}}
            track = False
        elif r < 0.92:
            msg = [{"jsonrpc": "2.0", "id": f"b{serial}-{i}", "method": "ping"} for i in range(rng.randint(1, 4))]
            msg.append({"jsonrpc": "2.0", "method": "notifications/initialized"})
            track = False
        else:
            msg = {"jsonrpc": "2.0", "id": id_, "result": {}}
            track = False
        text = json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode()
        if not track:
            return text, None
        key = key_of(json.loads(text)["id"])
        if self.endpoint == "message" and self.sse.sid:
            return text, ("sse", key)
        if self.endpoint == "streamable" and streamable and self.method == "POST":
            return text, ("streamable", key)
        return text, None

    def frame(self, request_line, headers, body):
        """The request's bytes; sets `complete` and `leftover`."""
        rng = self.rng
        lines = [request_line]
        for name, value in headers:
            lines.append(name.encode("latin-1") if value is None else
                         f"{name}: {value}".encode("latin-1", "replace"))
        r = rng.random()
        framing = "length"
        if self.method == "GET" and not body:
            framing = "none"
        if r < 0.15:
            framing = "chunked"
        elif r < 0.2:
            framing = rng.choice(["none", "short", "long", "both", "bad length", "other encoding"])
        if framing != "length":
            self.note(f"framing {framing}")
        data = body
        if framing == "length" and (body or self.method == "POST"):
            lines.append(f"Content-Length: {len(body)}".encode())
        elif framing == "short" and body:
            cut = rng.randint(0, len(body) - 1)
            lines.append(f"Content-Length: {cut}".encode())
            self.leftover = True
            if self.track:
                self.track = None
        elif framing == "long":
            lines.append(f"Content-Length: {len(body) + rng.randint(1, 100)}".encode())
            self.complete = False
        elif framing == "both":
            lines += [f"Content-Length: {len(body)}".encode(), b"Transfer-Encoding: chunked"]
            self.nginx_refuses = True
        elif framing == "bad length":
            lines.append(rng.choice([b"Content-Length: abc", b"Content-Length: -1", b"Content-Length: 1 2",
                                     b"Content-Length: 99999999999999999999",
                                     f"Content-Length: {len(body)}\r\nContent-Length: {len(body) + 1}".encode()]))
            self.nginx_refuses = True
        elif framing == "other encoding":
            lines.append(rng.choice([b"Transfer-Encoding: gzip", b"Transfer-Encoding: chunked, gzip",
                                     b"Transfer-Encoding: identity"]))
            self.nginx_refuses = True
        elif framing == "chunked":
            lines.append(rng.choice([b"Transfer-Encoding: chunked", b"Transfer-Encoding: Chunked"]))
            data = self.chunked(body)
        if framing in ("none", "both", "bad length", "other encoding") and self.track:
            self.track = None
        return b"\r\n".join(lines) + b"\r\n\r\n" + data

    def chunked(self, body):
        rng = self.rng
        out, at = [], 0
        while at < len(body):
            size = min(len(body) - at, rng.choice([1, 2, 7, 100, 4096, 70000]))
            ext = rng.choice([b"", b"", b"", b";a=b", b" ; x"])
            digits = rng.choice(["%x", "%X", "%04x"]) % size
            out.append(digits.encode() + ext + b"\r\n" + body[at:at + size] + b"\r\n")
            at += size
        out.append(b"0\r\n" + (b"X-Trailer: 1\r\n" if rng.random() < 0.1 else b"") + b"\r\n")
        data = b"".join(out)
        if rng.random() < 0.2:
            damage = rng.randrange(6)
            self.note(f"bad chunks {damage}")
            self.track = None
            self.malformed_body = damage in (0, 1, 2, 4)
            if damage == 0:
                data = b"zz\r\n" + data
            elif damage == 1:
                data = data.replace(b"\r\n", b"\n", 1)
            elif damage == 2:
                data = b"fffffffffffffff\r\n" + data
            elif damage == 3:
                data = data[:rng.randint(0, len(data) - 1)]
                self.complete = False
            elif damage == 4:
                data = b"5\r\nabc\r\n" + data
            else:
                data = data[:-2]
                self.complete = False
        return data

    def schedule(self, data):
        """How the bytes go out: (style, [(bytes, pause before)])."""
        rng = self.rng
        r = rng.random()
        if r < 0.6 or len(data) > 200_000:
            return "whole", [(data, 0)]
        if r < 0.8:
            cuts = sorted(rng.randint(1, max(1, len(data) - 1)) for _ in range(rng.randint(1, 6)))
            return "split", [(data[a:b], 0) for a, b in zip([0] + cuts, cuts + [len(data)]) if data[a:b]]
        if r < 0.92:
            pieces, at = [], 0
            while at < len(data) and len(pieces) < 20:
                size = rng.randint(1, 64) if len(pieces) < 19 else len(data) - at
                pieces.append((data[at:at + size], rng.uniform(0.002, 0.04)))
                at += size
            return "slow", pieces
        self.complete = False
        self.rst = rng.random() < 0.3
        self.track = None
        return "early close", [(data[:rng.randint(0, max(0, len(data) - 1))], 0)]
