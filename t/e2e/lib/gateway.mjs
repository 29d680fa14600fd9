// What the Streamable HTTP end-to-end tests share: `mcp-bridge serve` with
// two workers bridging the fixture server (which records every process it
// starts in a pid directory), and the checks that none of them is left.
//
// E2E_CAPTURE=FILE puts a capturing proxy (lib/capture.mjs) between the
// clients and the gateway and writes every HTTP exchange to FILE.
//
// MCP_BRIDGE_E2E_URL (e.g. http://127.0.0.1:9080/mcp) tests a gateway that is
// already running instead (make apisix-test: APISIX), whose route bridges
// `mcp-fixture --pid-dir $MCP_BRIDGE_E2E_PID_DIR` (a directory of its own,
// empty when the test starts). That route sets what a test would give
// `serve` (see each test's startGateway call: --pool-idle-timeout-ms is the
// route's pool_idle_timeout_ms); stopping the gateway is left to the caller,
// and the tests that do it are skipped (`stopSkip`).
import { spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { startCapture } from "./capture.mjs";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
export const bin = join(root, "target", "release");

export const external = process.env.MCP_BRIDGE_E2E_URL;
if (external && !process.env.MCP_BRIDGE_E2E_PID_DIR) {
  throw new Error("MCP_BRIDGE_E2E_URL needs MCP_BRIDGE_E2E_PID_DIR (the fixture's --pid-dir)");
}
// Why a test that stops the gateway does not run, or false.
export const stopSkip = external ? "the gateway is not ours to stop (MCP_BRIDGE_E2E_URL)" : false;
// For a test that starts a gateway of its own with other options.
export const ownGatewaySkip = external ? "it needs a gateway of its own (MCP_BRIDGE_E2E_URL)" : false;

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

// Starts the gateway; resolves once its banner names both endpoints.
// `options` are extra `serve` options (before the `--`). With
// MCP_BRIDGE_E2E_URL, the gateway that is already there (its route has the
// same settings).
// `options` go to serve, `fixtureOptions` to the fixture it bridges.
export async function startGateway(options = [], fixtureOptions = []) {
  if (external) return externalGateway();
  const pidDir = mkdtempSync(join(tmpdir(), "mcp-bridge-e2e-"));
  // Workers and backends run as the invoking user (root in CI) by default;
  // the directory stays writable whoever they run as.
  chmodSync(pidDir, 0o1777);
  const port = await freePort();
  const proc = spawn(join(bin, "mcp-bridge"), [
    "serve", "--listen", `127.0.0.1:${port}`, "--base-uri", "/mcp", "--workers", "2",
    "--kill-grace-ms", "1000", "--log-level", process.env.E2E_LOG_LEVEL || "warn",
    ...options,
    "--", join(bin, "mcp-fixture"), "--pid-dir", pidDir, ...fixtureOptions,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  const gw = {
    proc, pidDir, port, log: "", banner: "",
    url: `http://127.0.0.1:${port}/mcp`,
    capture: null,
  };
  proc.stderr.on("data", (d) => {
    gw.log += d;
    if (process.env.E2E_LOG_LEVEL) process.stderr.write(d);
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`gateway did not start:\n${gw.banner}\n${gw.log}`)), 15000);
    proc.stdout.on("data", (d) => {
      gw.banner += d;
      if (gw.banner.includes("Streamable HTTP endpoint") && gw.banner.includes("SSE endpoint")) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.on("exit", (code) => { clearTimeout(timer); reject(new Error(`gateway exited ${code}:\n${gw.log}`)); });
  });
  if (process.env.E2E_CAPTURE) {
    gw.capture = await startCapture(port, process.env.E2E_CAPTURE);
    gw.url = `http://127.0.0.1:${gw.capture.port}/mcp`;
  }
  return gw;
}

async function externalGateway() {
  const url = new URL(external.replace(/\/+$/, ""));
  const port = Number(url.port || 80);
  const gw = {
    proc: null, pidDir: process.env.MCP_BRIDGE_E2E_PID_DIR, port, log: "", banner: "",
    url: url.href, capture: null, external: true,
  };
  if (process.env.E2E_CAPTURE) {
    gw.capture = await startCapture(port, process.env.E2E_CAPTURE);
    gw.url = `http://127.0.0.1:${gw.capture.port}${url.pathname}`;
  }
  return gw;
}

// Stops the gateway (SIGTERM) and resolves with its exit code; an external
// one is left running (null).
export async function stopGateway(gw) {
  if (gw.capture) await gw.capture.close();
  if (gw.external) return null;
  if (gw.proc.exitCode !== null || gw.proc.signalCode !== null) return gw.proc.exitCode;
  const exited = new Promise((r) => gw.proc.on("exit", (code) => r(code)));
  gw.proc.kill("SIGTERM");
  return exited;
}

export function removePidDir(gw) {
  if (gw.external) return;
  rmSync(gw.pidDir, { recursive: true, force: true });
}

function records(gw) {
  return readdirSync(gw.pidDir)
    .filter((n) => /^\d+\.pid$/.test(n))
    .map((n) => JSON.parse(readFileSync(join(gw.pidDir, n), "utf8")));
}

// Backends the fixture recorded since the gateway started.
export function recordedBackends(gw) {
  return records(gw).filter((r) => r.role === "backend").length;
}

// Processes the fixture recorded that still run (or are zombies): the same
// pid with the same start time in /proc.
export function leftovers(gw) {
  const left = [];
  for (const rec of records(gw)) {
    const statPath = `/proc/${rec.pid}/stat`;
    if (!existsSync(statPath)) continue;
    let stat;
    try { stat = readFileSync(statPath, "utf8"); } catch { continue; }
    const fields = stat.slice(stat.lastIndexOf(") ") + 2).split(" ");
    if (Number(fields[19]) === rec.starttime) left.push(`${rec.pid} ${rec.role} ${fields[0]}`);
  }
  return left;
}

export async function waitGone(gw, ms) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (leftovers(gw).length === 0) return [];
    await new Promise((r) => setTimeout(r, 20));
  }
  return leftovers(gw);
}

export function live(gw) {
  return leftovers(gw).length;
}
