// End to end with a client nobody here wrote: the official MCP TypeScript
// SDK (Client + SSEClientTransport) through `mcp-bridge serve` with two
// workers, bridging the fixture server. Checks initialize, tools/list,
// tools/call, close, a backend crash with calls in flight, and that every
// backend process is gone afterwards.
//
// MCP_BRIDGE_E2E_URL (e.g. http://127.0.0.1:9080/mcp) tests a gateway that is
// already running instead (make apisix-test: APISIX), whose route bridges
// `mcp-fixture --pid-dir $MCP_BRIDGE_E2E_PID_DIR`; stopping it is then left
// to the caller.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = join(root, "target", "release");
const external = process.env.MCP_BRIDGE_E2E_URL;
if (external && !process.env.MCP_BRIDGE_E2E_PID_DIR) {
  throw new Error("MCP_BRIDGE_E2E_URL needs MCP_BRIDGE_E2E_PID_DIR (the fixture's --pid-dir)");
}
const pidDir = external ? process.env.MCP_BRIDGE_E2E_PID_DIR : mkdtempSync(join(tmpdir(), "mcp-bridge-e2e-"));
// Started as root, nginx runs its workers (and so the backends) as nobody.
if (!external) chmodSync(pidDir, 0o1777);
let gateway;
let baseUrl;

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

// Processes the fixture recorded, still running or zombies.
function leftovers() {
  const left = [];
  for (const name of readdirSync(pidDir)) {
    const m = name.match(/^(\d+)\.pid$/);
    if (!m) continue;
    const rec = JSON.parse(readFileSync(join(pidDir, name), "utf8"));
    const statPath = `/proc/${m[1]}/stat`;
    if (!existsSync(statPath)) continue;
    let stat;
    try { stat = readFileSync(statPath, "utf8"); } catch { continue; }
    const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
    if (Number(fields[19]) === rec.starttime) left.push(`${m[1]} ${rec.role} ${fields[0]}`);
  }
  return left;
}

async function waitGone(ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (leftovers().length === 0) return [];
    await new Promise((r) => setTimeout(r, 20));
  }
  return leftovers();
}

function recordedBackends() {
  return readdirSync(pidDir)
    .filter((n) => n.endsWith(".pid"))
    .map((n) => JSON.parse(readFileSync(join(pidDir, n), "utf8")))
    .filter((r) => r.role === "backend").length;
}

before(async () => {
  if (external) {
    baseUrl = external.replace(/\/+$/, "");
    return;
  }
  const port = await freePort();
  baseUrl = `http://127.0.0.1:${port}/mcp`;
  gateway = spawn(join(bin, "mcp-bridge"), [
    "serve", "--listen", `127.0.0.1:${port}`, "--base-uri", "/mcp", "--workers", "2",
    "--kill-grace-ms", "1000", "--log-level", "warn",
    "--", join(bin, "mcp-fixture"), "--pid-dir", pidDir,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  gateway.stderr.on("data", (d) => { log += d; });
  await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${out}\n${log}`)), 15000);
    gateway.stdout.on("data", (d) => {
      out += d;
      if (out.includes("SSE endpoint")) { clearTimeout(timer); resolve(); }
    });
    gateway.on("exit", (code) => { clearTimeout(timer); reject(new Error(`gateway exited ${code}:\n${log}`)); });
  });
});

after(async () => {
  // (A gateway killed by a signal has no exit code either, and no "exit" to come.)
  if (gateway && gateway.exitCode === null && gateway.signalCode === null) {
    const exited = new Promise((r) => gateway.on("exit", r));
    gateway.kill("SIGTERM");
    await exited;
  }
  if (!external) rmSync(pidDir, { recursive: true, force: true });
});

// A hang fails its test, by name, instead of stalling the run.
const LIMIT = { timeout: 60_000 };

async function connect(name) {
  const client = new Client({ name, version: "1.0.0" });
  const transport = new SSEClientTransport(new URL(`${baseUrl}/sse`));
  await client.connect(transport);
  return client;
}

test("initialize, tools/list, tools/call and close through the bridge", LIMIT, async () => {
  const client = await connect("e2e");
  assert.equal(client.getServerVersion().name, "mcp-fixture");
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name);
  assert.ok(names.includes("echo") && names.includes("add"), `tools: ${names}`);
  const echoed = await client.callTool({ name: "echo", arguments: { text: "hello through nginx" } });
  assert.equal(echoed.content[0].text, "hello through nginx");
  const sum = await client.callTool({ name: "add", arguments: { a: 2, b: 40 } });
  assert.equal(sum.content[0].text, "42");
  const big = "x".repeat(512 * 1024);
  const bigEcho = await client.callTool({ name: "echo", arguments: { text: big } });
  assert.equal(bigEcho.content[0].text.length, big.length);
  assert.equal(recordedBackends(), 1);
  await client.close();
  assert.deepEqual(await waitGone(3000), [], "backend left after close");
});

test("concurrent sessions each get their own backend, all gone after close", LIMIT, async () => {
  const before = recordedBackends();
  const clients = await Promise.all([1, 2, 3, 4, 5].map((i) => connect(`c${i}`)));
  const pids = await Promise.all(clients.map(async (c) => {
    const r = await c.callTool({ name: "pid", arguments: {} });
    return JSON.parse(r.content[0].text).pid;
  }));
  assert.equal(new Set(pids).size, 5, "five distinct backends");
  assert.equal(recordedBackends() - before, 5);
  const replies = await Promise.all(clients.map((c, i) =>
    c.callTool({ name: "echo", arguments: { text: `client ${i}` } })));
  replies.forEach((r, i) => assert.equal(r.content[0].text, `client ${i}`));
  await Promise.all(clients.map((c) => c.close()));
  assert.deepEqual(await waitGone(3000), [], "backends left after close");
});

test("a backend that crashes mid-call fails the pending calls instead of hanging the client", LIMIT, async () => {
  const client = await connect("crash");
  const slow = client.callTool({ name: "sleep", arguments: { ms: 60000 } }, undefined, { timeout: 30000 });
  // Let the slow call's POST reach the backend first: with two workers a
  // POST sent later can be delivered earlier.
  await new Promise((r) => setTimeout(r, 200));
  const crash = client.callTool({ name: "crash", arguments: { code: 7 } }, undefined, { timeout: 30000 });
  // Both settle, in whichever order the bridge answers them: with two
  // workers the two POSTs may reach the backend in either order.
  const outcomes = await Promise.allSettled([slow, crash]);
  for (const outcome of outcomes) {
    assert.equal(outcome.status, "rejected");
    assert.equal(outcome.reason.code, -32000);
    assert.match(outcome.reason.message, /the MCP server ended before responding \(backend exited with status 7\)/);
  }
  await client.close();
  assert.deepEqual(await waitGone(3000), [], "backend left after the crash");
});

const stopSkip = external && "the gateway is not ours to stop (MCP_BRIDGE_E2E_URL)";
test("stopping the gateway leaves no process behind", { ...LIMIT, skip: stopSkip }, async () => {
  const client = await connect("last");
  await client.callTool({ name: "spawn_grandchild", arguments: {} });
  const exited = new Promise((r) => gateway.on("exit", (code, signal) => r({ code, signal })));
  gateway.kill("SIGTERM");
  const { code } = await exited;
  assert.equal(code, 0);
  assert.deepEqual(await waitGone(3000), [], "processes left after the gateway stopped");
  await client.close().catch(() => {});
});
