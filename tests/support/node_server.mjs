// Test HTTP server for redprobe end-to-end tests (see servers.ts, routes.ts).
//
// Usage: node node_server.mjs PORT LOGFILE [CERTFILE KEYFILE]
//
// With a certificate and key it serves HTTPS (node:https, over the OpenSSL linked into node).
//
// Serves the shared route set on 127.0.0.1:PORT and appends, per request, the seconds between the
// 'request' event and just before writeHead(). The record is written synchronously BEFORE the
// response goes out, so by the time a client has read a response its record is in LOGFILE.

import { openSync, readFileSync, writeSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTlsServer } from "node:https";

const HELLO_BODY = Buffer.from("hello\n");
const USER_BODY = Buffer.from("user\n");
const SUBMIT_BODY = Buffer.from("ok\n");
const NOT_FOUND_BODY = Buffer.from("not found\n");
const ERROR_BODY = Buffer.from("error\n");
const BIG_BODY = Buffer.from("0123456789abcdef".repeat(4096));
const USER_PATH = /^\/users\/[0-9]+$/;

const [portArg, logPath, certPath, keyPath] = process.argv.slice(2);
const logFd = openSync(logPath, "a");

function route(method, url) {
  const path = url.split("?", 1)[0];
  if (method === "POST") return path === "/submit" ? [200, SUBMIT_BODY] : [404, NOT_FOUND_BODY];
  if (path === "/hello") return [200, HELLO_BODY];
  if (path === "/big") return [200, BIG_BODY];
  if (path === "/error") return [500, ERROR_BODY];
  if (USER_PATH.test(path)) return [200, USER_BODY];
  return [404, NOT_FOUND_BODY];
}

function handle(req, res) {
  const started = performance.now();
  // Draining the body (Content-Length or chunked) before answering keeps keep-alive framing sane
  // and matches what the other servers do.
  req.resume();
  req.on("end", () => {
    const [status, body] = route(req.method, req.url);
    writeSync(logFd, `${((performance.now() - started) / 1000).toFixed(9)}\n`);
    res.writeHead(status, { "Content-Type": "text/plain", "Content-Length": body.length });
    res.end(req.method === "HEAD" ? undefined : body);
  });
}

const server = certPath
  ? createTlsServer({ cert: readFileSync(certPath), key: readFileSync(keyPath) }, handle)
  : createServer(handle);

// Long enough that no test's keep-alive connection is closed under it.
server.keepAliveTimeout = 60_000;
server.listen(Number(portArg), "127.0.0.1");
