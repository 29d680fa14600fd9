// End to end with the official MCP TypeScript SDK 1.x (Client +
// StreamableHTTPClientTransport, sessionful Streamable HTTP) through
// `mcp-bridge serve` with two workers, bridging the fixture server: initialize
// (Mcp-Session-Id), tools/list, tools/call with a 512 KiB argument, five
// sessions calling at once, close with DELETE, and no backend left; and with
// --restart-on-crash, a crashed backend replaced within the same session.
//
// MCP_BRIDGE_E2E_URL and MCP_BRIDGE_E2E_PID_DIR test a gateway that is
// already running (see lib/gateway.mjs).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { LoggingMessageNotificationSchema } from "@modelcontextprotocol/sdk/types.js";
import {
  startGateway, stopGateway, removePidDir, recordedBackends, waitGone, live, stopSkip, ownGatewaySkip,
} from "./lib/gateway.mjs";

// No test may hang the suite.
const LIMIT = { timeout: 60000 };

let gw;

before(async () => { gw = await startGateway(); });

after(async () => {
  if (gw) {
    await stopGateway(gw);
    removePidDir(gw);
  }
});

async function connect(name) {
  const client = new Client({ name, version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(gw.url));
  await client.connect(transport);
  return { client, transport };
}

// What the SDK does to end a session: DELETE with the session id, then
// close the transport (its GET stream).
async function close({ client, transport }) {
  await transport.terminateSession();
  await client.close();
}

// A raw POST with a session id: the bridge must refuse an ended session.
async function postWithSession(sessionId) {
  const res = await fetch(gw.url, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      accept: "application/json, text/event-stream",
      "mcp-session-id": sessionId,
      "mcp-protocol-version": "2025-06-18",
    },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "tools/list", params: {} }),
  });
  await res.arrayBuffer();
  return res.status;
}

test("initialize, tools/list, a 512 KiB tools/call and DELETE through the bridge", LIMIT, async () => {
  const c = await connect("e2e-streamable");
  const { client, transport } = c;
  assert.match(transport.sessionId ?? "", /^[0-9a-f]{16,}$/i, "Mcp-Session-Id from initialize");
  assert.equal(client.getServerVersion().name, "mcp-fixture");
  assert.ok(transport.protocolVersion, "a negotiated protocol version");
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  assert.ok(names.includes("echo") && names.includes("add"), `tools: ${names}`);
  const sum = await client.callTool({ name: "add", arguments: { a: 2, b: 40 } });
  assert.equal(sum.content[0].text, "42");
  const big = "x".repeat(512 * 1024 - 7) + "-end-ok";
  const echoed = await client.callTool({ name: "echo", arguments: { text: big } });
  assert.equal(echoed.content[0].text.length, big.length);
  assert.ok(echoed.content[0].text === big, "512 KiB echoed intact");
  assert.equal(recordedBackends(gw), 1);
  assert.equal(live(gw), 1, "the session's backend runs until DELETE");
  const sessionId = transport.sessionId;
  await close(c);
  assert.deepEqual(await waitGone(gw, 3000), [], "backend left after DELETE");
  assert.equal(await postWithSession(sessionId), 404, "an ended session is refused");
});

test("a notification before the response comes on the call's event stream", LIMIT, async () => {
  const c = await connect("e2e-notify");
  const got = [];
  c.client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { got.push(n.params.data); });
  const r = await c.client.callTool({ name: "notify", arguments: { text: "note from the backend" } });
  assert.equal(r.content[0].text, "ok");
  assert.deepEqual(got, ["note from the backend"]);
  await close(c);
  assert.deepEqual(await waitGone(gw, 3000), [], "backend left after DELETE");
});

test("five sessions calling at once each get their own backend, all gone after DELETE", LIMIT, async () => {
  const before = recordedBackends(gw);
  const sessions = await Promise.all([1, 2, 3, 4, 5].map((i) => connect(`c${i}`)));
  assert.equal(new Set(sessions.map((s) => s.transport.sessionId)).size, 5, "five session ids");
  const pids = await Promise.all(sessions.map(async ({ client }) => {
    const r = await client.callTool({ name: "pid", arguments: {} });
    return JSON.parse(r.content[0].text).pid;
  }));
  assert.equal(new Set(pids).size, 5, "five distinct backends");
  assert.equal(recordedBackends(gw) - before, 5);
  // Several calls in flight on every session at once, small and large.
  const rounds = await Promise.all(sessions.map(({ client }, i) => Promise.all([
    client.callTool({ name: "echo", arguments: { text: `client ${i}` } }),
    client.callTool({ name: "echo", arguments: { text: `${i}`.repeat(64 * 1024) } }),
    client.callTool({ name: "add", arguments: { a: i, b: 100 } }),
    client.listTools(),
  ])));
  rounds.forEach(([small, large, sum, list], i) => {
    assert.equal(small.content[0].text, `client ${i}`);
    assert.equal(large.content[0].text, `${i}`.repeat(64 * 1024));
    assert.equal(sum.content[0].text, String(i + 100));
    assert.ok(list.tools.some((t) => t.name === "echo"));
  });
  await Promise.all(sessions.map(close));
  assert.deepEqual(await waitGone(gw, 3000), [], "backends left after DELETE");
});

test("with --restart-on-crash a backend that crashes mid-call is replaced: the call fails, the client is warned, the session goes on", { ...LIMIT, skip: ownGatewaySkip }, async () => {
  const restarting = await startGateway(["--restart-on-crash"]);
  try {
    const client = new Client({ name: "e2e-restart", version: "1.0.0" });
    const transport = new StreamableHTTPClientTransport(new URL(restarting.url));
    await client.connect(transport);
    const warnings = [];
    client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => { warnings.push(n.params); });
    const before = JSON.parse((await client.callTool({ name: "pid", arguments: {} })).content[0].text).pid;
    await assert.rejects(client.callTool({ name: "crash", arguments: { code: 3 } }), /is being restarted/);
    const after = JSON.parse((await client.callTool({ name: "pid", arguments: {} })).content[0].text).pid;
    assert.notEqual(after, before, "a new backend");
    const echoed = await client.callTool({ name: "echo", arguments: { text: "same session" } });
    assert.equal(echoed.content[0].text, "same session");
    for (let i = 0; i < 50 && warnings.length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal(warnings.length, 1, "one warning on the GET stream");
    assert.equal(warnings[0].level, "warning");
    assert.match(warnings[0].data, /exited with status 3 and was restarted/);
    await transport.terminateSession();
    await client.close();
    assert.deepEqual(await waitGone(restarting, 3000), [], "backends left after DELETE");
  } finally {
    await stopGateway(restarting);
    removePidDir(restarting);
  }
});

test("stopping the gateway with a session open leaves no process behind", { ...LIMIT, skip: stopSkip }, async () => {
  const c = await connect("last");
  await c.client.callTool({ name: "spawn_grandchild", arguments: {} });
  assert.ok(live(gw) >= 2, "the backend and its grandchild run");
  const code = await stopGateway(gw);
  assert.equal(code, 0);
  assert.deepEqual(await waitGone(gw, 3000), [], "processes left after the gateway stopped");
  await c.client.close().catch(() => {});
});
