"""End to end with the official MCP Python SDK (`mcp` 2.x, `mcp.Client` over
its Streamable HTTP client) through `mcp-bridge serve` with two workers,
bridging the fixture server.

Sessionful (mode="legacy"): initialize and its Mcp-Session-Id, tools/list,
tools/call with a 512 KiB argument, five sessions calling at once, DELETE on
close, and no backend left. The SDK's default (mode="auto") probes
`server/discover` and must settle on the stateless 2026-07-28 revision the
bridge serves, with the same calls. Every HTTP exchange goes through the
SDK's own client; an httpx2 event hook only records what went out and came
back (methods, statuses, session ids).

MCP_BRIDGE_E2E_URL and MCP_BRIDGE_E2E_PID_DIR test a gateway that is already
running (see conftest.py).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import Implementation
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from conftest import POOL_IDLE_MS, stops_the_gateway

pytestmark = pytest.mark.anyio

MODERN = "2026-07-28"
BIG = "x" * (512 * 1024 - 7) + "-end-ok"
# No test may hang the suite.
DEADLINE_S = 60


@dataclass
class Exchanges:
    """What the SDK's HTTP client sent and got back, in order."""

    sent: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    got: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)

    async def on_request(self, request: httpx2.Request) -> None:
        self.sent.append((request.method, dict(request.headers)))

    async def on_response(self, response: httpx2.Response) -> None:
        self.got.append((response.request.method, response.status_code, dict(response.headers)))

    def session_ids(self) -> set[str]:
        return {h["mcp-session-id"] for _, _, h in self.got if "mcp-session-id" in h}

    def statuses(self, method: str) -> list[int]:
        return [s for m, s, _ in self.got if m == method]


@asynccontextmanager
async def connect(url: str, mode: str, name: str, **options):
    """An `mcp.Client` on the SDK's Streamable HTTP transport; the httpx2
    client is the SDK's default one (its timeouts) plus a recording hook."""
    rec = Exchanges()
    timeout = httpx2.Timeout(30, read=300)
    hooks = {"request": [rec.on_request], "response": [rec.on_response]}
    async with httpx2.AsyncClient(timeout=timeout, event_hooks=hooks, trust_env=False) as http:
        transport = streamable_http_client(url, http_client=http)
        info = Implementation(name=name, version="1.0.0")
        async with Client(transport, mode=mode, client_info=info, **options) as client:
            yield client, rec


def text_of(result) -> str:
    assert not result.is_error, result
    return result.content[0].text


async def post_with_session(url: str, session_id: str, version: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {
        "accept": "application/json, text/event-stream",
        "mcp-session-id": session_id,
        "mcp-protocol-version": version,
    }
    async with httpx2.AsyncClient(trust_env=False) as http:
        response = await http.post(url, json=body, headers=headers)
        return response.status_code


async def test_sessionful_initialize_list_call_512k_and_delete(gateway):
    with anyio.fail_after(DEADLINE_S):
        async with connect(gateway.url, "legacy", "e2e-python") as (client, rec):
            assert client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS
            assert client.server_info is not None and client.server_info.name == "mcp-fixture"
            (session_id,) = rec.session_ids()
            tools = await client.list_tools()
            names = [t.name for t in tools.tools]
            assert "echo" in names and "add" in names, names
            assert text_of(await client.call_tool("add", {"a": 2, "b": 40})) == "42"
            echoed = text_of(await client.call_tool("echo", {"text": BIG}))
            assert len(echoed) == len(BIG)
            assert echoed == BIG, "512 KiB echoed intact"
            assert gateway.recorded_backends() == 1
            assert gateway.live() == 1, "the session's backend runs until DELETE"
            assert rec.statuses("DELETE") == []
            version = client.protocol_version
        assert rec.statuses("DELETE") == [200], rec.got
        assert await gateway.wait_gone(3) == [], "backend left after DELETE"
        assert await post_with_session(gateway.url, session_id, version) == 404, "an ended session is refused"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_a_notification_before_the_response_reaches_the_client(gateway, mode):
    """The fixture's `notify` tool sends notifications/message, then its
    result: the reply becomes an event stream. In 2026-07-28 the request opts
    in with its log level."""
    got = []

    async def on_log(params) -> None:
        got.append(params.data)

    with anyio.fail_after(DEADLINE_S):
        async with connect(gateway.url, mode, "e2e-python-notify", logging_callback=on_log, log_level="info") as (
            client,
            rec,
        ):
            assert text_of(await client.call_tool("notify", {"text": "note from the backend"})) == "ok"
            assert got == ["note from the backend"]
            streams = [h.get("content-type") for m, _, h in rec.got if m == "POST"]
            assert "text/event-stream" in streams, streams
    if mode == "legacy":
        assert await gateway.wait_gone(3) == [], "backend left after DELETE"


async def test_the_get_stream_is_answered_at_once(gateway):
    """After initialize the SDK opens the session's standalone GET stream. Its
    response (200, text/event-stream) should arrive at once, not only with
    the stream's first event or keepalive."""
    with anyio.fail_after(DEADLINE_S):
        async with connect(gateway.url, "legacy", "e2e-python-get") as (client, rec):
            await client.list_tools()
            with anyio.move_on_after(2):
                while "GET" not in [m for m, _, _ in rec.got]:
                    await anyio.sleep(0.02)
            gets = [(s, h.get("content-type")) for m, s, h in rec.got if m == "GET"]
        assert gets and gets[0] == (200, "text/event-stream"), f"no answer to the GET within 2 s: {gets}"


async def test_five_sessions_calling_at_once(gateway):
    before = gateway.recorded_backends()
    results: dict[int, tuple] = {}
    recs: dict[int, Exchanges] = {}

    async def one(i: int) -> None:
        async with connect(gateway.url, "legacy", f"py{i}") as (client, rec):
            recs[i] = rec
            pid = json.loads(text_of(await client.call_tool("pid", {})))["pid"]
            calls = {}

            async def call(key, fn):
                calls[key] = await fn()

            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "small", lambda: client.call_tool("echo", {"text": f"client {i}"}))
                tg.start_soon(call, "large", lambda: client.call_tool("echo", {"text": str(i) * 65536}))
                tg.start_soon(call, "sum", lambda: client.call_tool("add", {"a": i, "b": 100}))
                tg.start_soon(call, "list", lambda: client.list_tools(cache_mode="bypass"))
            results[i] = (pid, calls)

    with anyio.fail_after(DEADLINE_S):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
    assert len({pid for pid, _ in results.values()}) == 5, "five distinct backends"
    assert gateway.recorded_backends() - before == 5
    for i, (_, calls) in results.items():
        assert text_of(calls["small"]) == f"client {i}"
        assert text_of(calls["large"]) == str(i) * 65536
        assert text_of(calls["sum"]) == str(i + 100)
        assert any(t.name == "echo" for t in calls["list"].tools)
    assert len(set().union(*(r.session_ids() for r in recs.values()))) == 5, "five session ids"
    assert all(r.statuses("DELETE") == [200] for r in recs.values()), "every session ended with DELETE"
    assert await gateway.wait_gone(3) == [], "backends left after DELETE"


async def test_auto_mode_settles_on_stateless_2026_07_28(gateway):
    """The SDK's default connect probes server/discover; the bridge answers it,
    so the client must go modern: no initialize, no session, no DELETE."""
    with anyio.fail_after(DEADLINE_S):
        async with connect(gateway.url, "auto", "e2e-python-auto") as (client, rec):
            assert client.protocol_version == MODERN
            assert client.server_info is not None and client.server_info.name == "mcp-fixture"
            tools = await client.list_tools()
            assert "echo" in [t.name for t in tools.tools]
            echoed = text_of(await client.call_tool("echo", {"text": BIG}))
            assert echoed == BIG, "512 KiB echoed intact"

            # Five calls at once on the stateless path too.
            replies: dict[int, str] = {}

            async def call(i: int) -> None:
                replies[i] = text_of(await client.call_tool("echo", {"text": f"call {i}"}))

            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(call, i)
            assert replies == {i: f"call {i}" for i in range(5)}
        assert rec.session_ids() == set(), "no Mcp-Session-Id in 2026-07-28"
        assert rec.statuses("DELETE") == []
        assert all(s == 200 for _, s, _ in rec.got), rec.got
        assert await gateway.wait_gone(POOL_IDLE_MS / 1000 + 5) == [], "pooled backends left after their idle timeout"


@stops_the_gateway
async def test_stopping_the_gateway_leaves_no_process(gateway):
    with anyio.fail_after(DEADLINE_S):
        async with connect(gateway.url, "legacy", "last") as (client, _):
            await client.call_tool("spawn_grandchild", {})
            assert gateway.live() >= 2, "the backend and its grandchild run"
            assert await anyio.to_thread.run_sync(gateway.stop) == 0
            assert await gateway.wait_gone(3) == [], "processes left after the gateway stopped"
