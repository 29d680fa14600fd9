// End to end with the official MCP TypeScript SDK 2.x client
// (@modelcontextprotocol/client, StreamableHTTPClientTransport) pinned to
// protocol revision 2026-07-28: stateless Streamable HTTP through
// `mcp-bridge serve` with two workers, bridging the fixture server. The
// client connects with `server/discover` (no initialize, no session), then
// every request carries the `params._meta` envelope and runs on the
// bridge's pool of backends. Checks tools/list, tools/call with a 512 KiB
// argument, five clients calling at once, close, and that the pooled
// backends end (idle timeout) and none is left.
//
// MCP_BRIDGE_E2E_URL and MCP_BRIDGE_E2E_PID_DIR test a gateway that is
// already running (see lib/gateway.mjs).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { Client, LOG_LEVEL_META_KEY, StreamableHTTPClientTransport } from "@modelcontextprotocol/client";
import {
  startGateway, stopGateway, removePidDir, recordedBackends, waitGone, live, stopSkip, ownGatewaySkip,
} from "./lib/gateway.mjs";

const MODERN = "2026-07-28";
// Pooled backends end after this long idle: the test waits for it. (With
// MCP_BRIDGE_E2E_URL, the route's pool_idle_timeout_ms must be this.)
const POOL_IDLE_MS = 1500;

// No test may hang the suite.
const LIMIT = { timeout: 60000 };

let gw;

before(async () => { gw = await startGateway(["--pool-idle-timeout-ms", String(POOL_IDLE_MS)]); });

after(async () => {
  if (gw) {
    await stopGateway(gw);
    removePidDir(gw);
  }
});

async function connect(name) {
  const client = new Client({ name, version: "1.0.0" }, { versionNegotiation: { mode: { pin: MODERN } } });
  const transport = new StreamableHTTPClientTransport(new URL(gw.url));
  await client.connect(transport);
  return { client, transport };
}

test("server/discover, tools/list, a 512 KiB tools/call and close, stateless through the bridge", LIMIT, async () => {
  const { client, transport } = await connect("e2e-modern");
  assert.equal(client.getNegotiatedProtocolVersion(), MODERN);
  assert.equal(client.getProtocolEra(), "modern");
  const discovered = client.getDiscoverResult();
  assert.ok(discovered, "a server/discover result");
  assert.ok(discovered.supportedVersions.includes(MODERN), `versions: ${discovered.supportedVersions}`);
  assert.ok(discovered.capabilities.tools, "the backend's tools capability");
  assert.equal(transport.sessionId, undefined, "no Mcp-Session-Id in 2026-07-28");
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  assert.ok(names.includes("echo") && names.includes("add"), `tools: ${names}`);
  const sum = await client.callTool({ name: "add", arguments: { a: 2, b: 40 } });
  assert.equal(sum.content[0].text, "42");
  const big = "x".repeat(512 * 1024 - 7) + "-end-ok";
  const echoed = await client.callTool({ name: "echo", arguments: { text: big } });
  assert.equal(echoed.content[0].text.length, big.length);
  assert.ok(echoed.content[0].text === big, "512 KiB echoed intact");
  assert.ok(recordedBackends(gw) >= 1, "a pooled backend ran the calls");
  await client.close();
  assert.deepEqual(await waitGone(gw, POOL_IDLE_MS + 5000), [], "pooled backend left after its idle timeout");
});

test("a request that opts in to log messages gets them on its event stream", LIMIT, async () => {
  const { client } = await connect("e2e-modern-notify");
  const got = [];
  client.setNotificationHandler("notifications/message", (n) => { got.push(n.params.data); });
  const r = await client.callTool({
    name: "notify", arguments: { text: "note from the backend" }, _meta: { [LOG_LEVEL_META_KEY]: "info" },
  });
  assert.equal(r.content[0].text, "ok");
  assert.deepEqual(got, ["note from the backend"]);
  await client.close();
});

test("five clients calling at once, all pooled backends gone after close", LIMIT, async () => {
  const sessions = await Promise.all([1, 2, 3, 4, 5].map((i) => connect(`m${i}`)));
  const rounds = await Promise.all(sessions.map(({ client }, i) => Promise.all([
    client.callTool({ name: "echo", arguments: { text: `client ${i}` } }),
    client.callTool({ name: "echo", arguments: { text: `${i}`.repeat(64 * 1024) } }),
    client.callTool({ name: "add", arguments: { a: i, b: 100 } }),
    client.callTool({ name: "pid", arguments: {} }),
    client.listTools(),
  ])));
  const pids = new Set();
  rounds.forEach(([small, large, sum, pid, list], i) => {
    assert.equal(small.content[0].text, `client ${i}`);
    assert.equal(large.content[0].text, `${i}`.repeat(64 * 1024));
    assert.equal(sum.content[0].text, String(i + 100));
    pids.add(JSON.parse(pid.content[0].text).pid);
    assert.ok(list.tools.some((t) => t.name === "echo"));
  });
  // Two workers, at most --pool-max-per-key (4) backends each.
  assert.ok(pids.size >= 1 && pids.size <= 8, `pooled backends: ${pids.size}`);
  assert.ok(live(gw) <= 8, `live backends: ${live(gw)}`);
  await Promise.all(sessions.map(({ client }) => client.close()));
  assert.deepEqual(await waitGone(gw, POOL_IDLE_MS + 5000), [], "pooled backends left after their idle timeout");
});

test("elicitation and sampling round trips: the legacy server's mid-call requests reach the client as input_required, its answers go back", { ...LIMIT, skip: ownGatewaySkip }, async () => {
  // The fixture's conformance tools ask the client the legacy way
  // (elicitation/create, sampling/createMessage mid-call).
  const legacy = await startGateway(["--pool-idle-timeout-ms", String(POOL_IDLE_MS)], ["--conformance"]);
  try {
    const client = new Client(
      { name: "e2e-mrtr", version: "1.0.0" },
      { versionNegotiation: { mode: { pin: MODERN } }, capabilities: { elicitation: {}, sampling: {} } },
    );
    const asked = [];
    client.setRequestHandler("elicitation/create", async (request) => {
      asked.push(request.params.message);
      return { action: "accept", content: { name: "Alice" } };
    });
    client.setRequestHandler("sampling/createMessage", async (request) => {
      asked.push(request.params.messages[0].content.text);
      return { role: "assistant", content: { type: "text", text: "Paris" }, model: "e2e", stopReason: "endTurn" };
    });
    const transport = new StreamableHTTPClientTransport(new URL(legacy.url));
    await client.connect(transport);
    const elicited = await client.callTool({ name: "test_input_required_result_elicitation", arguments: {} });
    assert.equal(elicited.isError ?? false, false, JSON.stringify(elicited));
    assert.match(elicited.content[0].text, /Alice/);
    const sampled = await client.callTool({ name: "test_input_required_result_sampling", arguments: {} });
    assert.equal(sampled.isError ?? false, false, JSON.stringify(sampled));
    assert.match(sampled.content[0].text, /Paris/);
    // Two rounds of one call: a new requestState each time.
    const rounds = await client.callTool({ name: "test_input_required_result_multi_round", arguments: {} });
    assert.equal(rounds.isError ?? false, false, JSON.stringify(rounds));
    assert.equal(asked.length, 4, `the client was asked: ${JSON.stringify(asked)}`);
    await client.close();
    assert.deepEqual(await waitGone(legacy, POOL_IDLE_MS + 5000), [], "pooled backends left after the idle timeout");
  } finally {
    await stopGateway(legacy);
    removePidDir(legacy);
  }
});

test("stopping the gateway with pooled backends running leaves no process behind", { ...LIMIT, skip: stopSkip }, async () => {
  const { client } = await connect("last");
  await client.callTool({ name: "spawn_grandchild", arguments: {} });
  assert.ok(live(gw) >= 2, "a pooled backend and its grandchild run");
  const code = await stopGateway(gw);
  assert.equal(code, 0);
  assert.deepEqual(await waitGone(gw, 3000), [], "processes left after the gateway stopped");
  await client.close().catch(() => {});
});
