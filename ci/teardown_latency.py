#!/usr/bin/env python3
"""Time from a client's disconnect to SIGTERM reaching its backend.

Starts `mcp-bridge serve` bridging the fixture server, then, N times: opens an
SSE session, makes one tools/call so the backend is surely running, closes
the connection, and reads the instant the backend received SIGTERM (the
fixture records CLOCK_REALTIME in <pid>.term). Prints the median, the 99th
percentile and the maximum. Also counts processes left over at the end.

Usage: ci/teardown_latency.py [--runs N] [--workers N] [--smoke]
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sse:
    """A minimal HTTP+SSE client over a raw socket (chunked decoding)."""

    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        self.raw = b""
        self.body = b""
        head = self._until(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"stream answered {head!r}")

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        self.raw += data

    def _until(self, marker):
        while marker not in self.raw:
            self._recv()
        head, self.raw = self.raw.split(marker, 1)
        return head

    def event(self):
        while b"\n\n" not in self.body:
            size = int(self._until(b"\r\n"), 16)
            while len(self.raw) < size + 2:
                self._recv()
            self.body += self.raw[:size]
            self.raw = self.raw[size + 2:]
        ev, self.body = self.body.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in ev.decode().split("\n") if ": " in line)
        return fields


def post(port, path, message):
    body = json.dumps(message).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    if status != 202:
        raise RuntimeError(f"POST answered {reply!r}")


def percentile(sorted_values, p):
    k = (len(sorted_values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def alive(pid, starttime):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
        return int(fields[19]) == starttime
    except (OSError, IndexError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="a few runs, to keep the program working")
    args = ap.parse_args()
    runs = 5 if args.smoke else args.runs

    pid_dir = tempfile.mkdtemp(prefix="mcp-bridge-latency-")
    os.chmod(pid_dir, 0o1777)
    port = free_port()
    gateway = subprocess.Popen(
        [os.path.join(BIN, "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{port}", "--workers",
         str(args.workers), "--log-level", os.environ.get("LOG_LEVEL", "warn"), "--", os.path.join(BIN, "mcp-fixture"), "--pid-dir", pid_dir],
        stdout=subprocess.PIPE, stderr=open(os.environ.get("GATEWAY_LOG", os.devnull), "w"), text=True)
    try:
        for line in gateway.stdout:
            if "SSE endpoint" in line:
                break
        else:
            sys.exit("the gateway did not start")
        latencies_us = []
        for i in range(runs):
            stream = Sse(port, "/mcp/sse")
            endpoint = stream.event()["data"]
            post(port, endpoint, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                  "params": {"name": "pid", "arguments": {}}})
            while True:
                ev = stream.event()
                if ev.get("event") == "message" and '"id":1' in ev["data"]:
                    break
            pid = json.loads(json.loads(ev["data"])["result"]["content"][0]["text"])["pid"]
            closed_at = time.time_ns()
            stream.sock.close()
            term = os.path.join(pid_dir, f"{pid}.term")
            deadline = time.monotonic() + 5
            while not os.path.exists(term):
                if time.monotonic() > deadline:
                    sys.exit(f"run {i}: backend {pid} got no SIGTERM within 5 s")
                time.sleep(0.0005)
            with open(term) as f:
                latencies_us.append((int(f.read().strip()) - closed_at) / 1000)
        latencies_us.sort()
        time.sleep(0.5)
        left = 0
        for name in os.listdir(pid_dir):
            m = re.match(r"^(\d+)\.pid$", name)
            if m:
                with open(os.path.join(pid_dir, name)) as f:
                    rec = json.load(f)
                left += alive(int(m.group(1)), rec["starttime"])
        print(f"teardown: client disconnect -> SIGTERM at the backend, {runs} aborts, "
              f"{args.workers} worker(s)")
        print(f"  median {percentile(latencies_us, 50):9.1f} us")
        print(f"  p99    {percentile(latencies_us, 99):9.1f} us")
        print(f"  max    {latencies_us[-1]:9.1f} us")
        print(f"  backend processes left: {left}")
        if left:
            sys.exit(1)
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gateway.kill()
        shutil.rmtree(pid_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
