// A capturing HTTP proxy for diagnosing a failing end-to-end test: it
// forwards every request to the gateway (with the gateway's own Host, which
// its DNS-rebinding check wants) and appends each exchange, streamed bodies
// as they arrive, to a file. Bodies are cut to their first and last 300
// characters. Used when E2E_CAPTURE=FILE is set (see gateway.mjs).
import { appendFileSync } from "node:fs";
import { createServer, request } from "node:http";

function cut(text) {
  return text.length <= 700 ? text : `${text.slice(0, 300)} …(${text.length} chars)… ${text.slice(-300)}`;
}

export function startCapture(targetPort, file) {
  let n = 0;
  const t0 = Date.now();
  const log = (line) => appendFileSync(file, `${String(Date.now() - t0).padStart(6)}ms ${line}\n`);
  const server = createServer((req, res) => {
    const id = ++n;
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      log(`#${id} > ${req.method} ${req.url} ${JSON.stringify(req.headers)}${body ? `\n         #${id} > ${cut(body)}` : ""}`);
      const headers = { ...req.headers, host: `127.0.0.1:${targetPort}` };
      const up = request({ host: "127.0.0.1", port: targetPort, method: req.method, path: req.url, headers }, (ur) => {
        log(`#${id} < ${ur.statusCode} ${JSON.stringify(ur.headers)}`);
        res.writeHead(ur.statusCode, ur.headers);
        ur.on("data", (c) => {
          log(`#${id} < ${cut(c.toString("utf8"))}`);
          res.write(c);
        });
        ur.on("end", () => { log(`#${id} < (end)`); res.end(); });
        ur.on("error", (e) => { log(`#${id} < (error ${e.message})`); res.destroy(); });
      });
      up.on("error", (e) => { log(`#${id} ! ${e.message}`); res.destroy(); });
      res.on("close", () => { if (!res.writableFinished) { log(`#${id} (client closed)`); up.destroy(); } });
      up.end(body.length ? Buffer.concat(chunks) : undefined);
    });
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({
      port: server.address().port,
      close: () => new Promise((r) => { server.closeAllConnections(); server.close(() => r()); }),
    }));
  });
}
