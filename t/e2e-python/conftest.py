"""What the Python SDK's end-to-end tests share: `mcp-bridge serve` with two
workers bridging the fixture server, which records every process it starts
in a pid directory, and the checks that none of them is left.

MCP_BRIDGE_E2E_URL (e.g. http://127.0.0.1:9080/mcp) tests a gateway that is
already running instead (make apisix-test: APISIX), whose route bridges
`mcp-fixture --pid-dir $MCP_BRIDGE_E2E_PID_DIR` (a directory of its own,
empty when the tests start) with what `serve` is given here as route
attributes (pool_idle_timeout_ms: POOL_IDLE_MS); stopping it is left to the
caller, and the tests that do it are skipped (`stops_the_gateway`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / "target" / "release"
# Pooled (stateless) backends end after this long idle; the tests wait for it.
POOL_IDLE_MS = 1500

EXTERNAL_URL = os.environ.get("MCP_BRIDGE_E2E_URL")
EXTERNAL_PID_DIR = os.environ.get("MCP_BRIDGE_E2E_PID_DIR")
if EXTERNAL_URL and not EXTERNAL_PID_DIR:
    raise RuntimeError("MCP_BRIDGE_E2E_URL needs MCP_BRIDGE_E2E_PID_DIR (the fixture's --pid-dir)")

# For a test that stops the gateway: skipped when the gateway is not ours.
stops_the_gateway = pytest.mark.skipif(
    bool(EXTERNAL_URL), reason="the gateway is not ours to stop (MCP_BRIDGE_E2E_URL)"
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes] | None
    pid_dir: Path
    port: int
    url: str
    log: list[bytes] = field(default_factory=list)

    def stop(self) -> int:
        if self.proc is None:
            raise RuntimeError("the gateway is not ours to stop (MCP_BRIDGE_E2E_URL)")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def _records(self) -> list[dict]:
        out = []
        for p in self.pid_dir.glob("*.pid"):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                pass  # being written
        return out

    def recorded_backends(self) -> int:
        return sum(1 for r in self._records() if r["role"] == "backend")

    def leftovers(self) -> list[str]:
        """Recorded processes still running (or zombies): same pid, same start time."""
        left = []
        for r in self._records():
            try:
                stat = Path(f"/proc/{r['pid']}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(") ") + 2 :].split(" ")
            if int(fields[19]) == r["starttime"]:
                left.append(f"{r['pid']} {r['role']} {fields[0]}")
        return left

    def live(self) -> int:
        return len(self.leftovers())

    async def wait_gone(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self.leftovers():
                return []
            await anyio.sleep(0.02)
        return self.leftovers()


@pytest.fixture(scope="module")
def gateway():
    if EXTERNAL_URL:
        url = EXTERNAL_URL.rstrip("/")
        port = urlsplit(url).port or 80
        yield Gateway(proc=None, pid_dir=Path(EXTERNAL_PID_DIR), port=port, url=url)
        return
    pid_dir = Path(tempfile.mkdtemp(prefix="mcp-bridge-e2e-py-"))
    pid_dir.chmod(0o1777)
    port = free_port()
    cmd = [
        str(BIN / "mcp-bridge"), "serve", "--listen", f"127.0.0.1:{port}", "--base-uri", "/mcp",
        "--workers", "2", "--kill-grace-ms", "1000",
        "--log-level", os.environ.get("E2E_LOG_LEVEL", "warn"),
        "--pool-idle-timeout-ms", str(POOL_IDLE_MS),
        "--", str(BIN / "mcp-fixture"), "--pid-dir", str(pid_dir),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gw = Gateway(proc=proc, pid_dir=pid_dir, port=port, url=f"http://127.0.0.1:{port}/mcp")

    banner = []
    ready = threading.Event()

    def drain(stream, into: list[bytes], echo: bool) -> None:
        for line in stream:
            into.append(line)
            if echo:
                os.write(2, line)
            text = b"".join(banner)
            if b"Streamable HTTP endpoint" in text and b"SSE endpoint" in text:
                ready.set()
        ready.set()  # the gateway exited: stop waiting

    threading.Thread(target=drain, args=(proc.stdout, banner, False), daemon=True).start()
    echo = bool(os.environ.get("E2E_LOG_LEVEL"))
    threading.Thread(target=drain, args=(proc.stderr, gw.log, echo), daemon=True).start()
    ready.wait(15)
    text = b"".join(banner)
    if b"Streamable HTTP endpoint" not in text or b"SSE endpoint" not in text:
        proc.kill()
        raise RuntimeError(f"gateway did not start: {text!r} {b''.join(gw.log)!r}")
    try:
        yield gw
    finally:
        gw.stop()
        shutil.rmtree(pid_dir, ignore_errors=True)
