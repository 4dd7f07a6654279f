/**
 * End-to-end checks that every test server answers the shared route set exactly, records one
 * timing per request, and disappears completely on stop(). Run: deno test -A tests/support/
 */

import assert from "node:assert/strict";
import {
  HttpConnection,
  PipelineIncompleteError,
  type RequestSpec,
  type Response,
  sendRequests,
} from "./http_client.ts";
import { ManagedProcess } from "./managed_process.ts";
import { isAlive } from "./procfs.ts";
import { BIG_BODY, HELLO_BODY, SUBMIT_BODY, USER_BODY } from "./routes.ts";
import { type ServerHandle, startNginx, startNode, startPython } from "./servers.ts";
import { pollUntil, sleep } from "./wait.ts";

interface RouteCase {
  name: string;
  spec: RequestSpec;
  status: number;
  /** Exact body, where all three servers agree on it. */
  body?: string;
}

const ROUTES: RouteCase[] = [
  { name: "GET /hello", spec: { method: "GET", path: "/hello" }, status: 200, body: HELLO_BODY },
  { name: "GET /missing", spec: { method: "GET", path: "/missing" }, status: 404 },
  { name: "GET /error", spec: { method: "GET", path: "/error" }, status: 500 },
  {
    name: "GET /users/N",
    spec: { method: "GET", path: "/users/42" },
    status: 200,
    body: USER_BODY,
  },
  { name: "GET /big", spec: { method: "GET", path: "/big" }, status: 200, body: BIG_BODY },
  {
    name: "POST Content-Length",
    spec: { method: "POST", path: "/submit", body: "name=redprobe&answer=42" },
    status: 200,
    body: SUBMIT_BODY,
  },
  {
    name: "POST chunked",
    spec: {
      method: "POST",
      path: "/submit",
      body: "z".repeat(10_000),
      chunked: true,
      chunkSize: 999,
    },
    status: 200,
    body: SUBMIT_BODY,
  },
  { name: "HEAD /hello", spec: { method: "HEAD", path: "/hello" }, status: 200, body: "" },
];

const MODES = [
  { name: "keep-alive", keepAlive: true, concurrency: 1 },
  { name: "connection-per-request", keepAlive: false, concurrency: 1 },
  { name: "keep-alive x3", keepAlive: true, concurrency: 3 },
];

const REQUESTS_PER_ROUTE = 7;
const decoder = new TextDecoder();
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/** What the server does to a connection after answering; decides how many connections we need. */
function serverClosesAfter(server: ServerHandle, nginxKeepalive: boolean, route: RouteCase) {
  if (server.kind !== "nginx") return false;
  // nginx turns keep-alive off for its own 500 error page (ngx_http_special_response_handler).
  return !nginxKeepalive || route.status === 500;
}

function checkBody(route: RouteCase, response: Response): void {
  if (route.body !== undefined) assert.equal(decoder.decode(response.body), route.body, route.name);
}

/** Reads the records a batch added; nginx may log a moment after the client is done. */
async function newServerSeconds(server: ServerHandle, before: number, count: number) {
  const all = await server.serverSeconds({ atLeast: before + count });
  return all.slice(before);
}

function assertServerTimeInsideClientTime(
  server: ServerHandle,
  serverSeconds: number[],
  clientSeconds: number[],
  label: string,
): void {
  if (server.kind === "nginx") {
    // $request_time is two millisecond timestamps subtracted, and the start one is nginx's
    // cached clock, updated once per event-loop turn: on a loaded VM it can lag the real start
    // by a few milliseconds, so a request can look up to ~5 ms longer than the client saw it.
    const slack = 0.005 * serverSeconds.length + 1e-9;
    assert.ok(sum(serverSeconds) <= sum(clientSeconds) + slack, `${label}: nginx time > client`);
    return;
  }
  assert.ok(
    sum(serverSeconds) <= sum(clientSeconds),
    `${label}: server ${sum(serverSeconds)} s > client ${sum(clientSeconds)} s`,
  );
}

async function exerciseAllRoutes(server: ServerHandle, nginxKeepalive = true): Promise<number> {
  let total = 0;
  for (const mode of MODES) {
    for (const route of ROUTES) {
      const label = `${server.kind} ${mode.name} ${route.name}`;
      const before = total;
      const result = await sendRequests({
        port: server.port,
        spec: route.spec,
        count: REQUESTS_PER_ROUTE,
        keepAlive: mode.keepAlive,
        concurrency: mode.concurrency,
        onResponse: (response) => checkBody(route, response),
      });
      total += REQUESTS_PER_ROUTE;
      assert.deepEqual(result.statuses, new Map([[route.status, REQUESTS_PER_ROUTE]]), label);
      assert.equal(result.clientSeconds.length, REQUESTS_PER_ROUTE, label);
      const expectedConnections =
        !mode.keepAlive || serverClosesAfter(server, nginxKeepalive, route)
          ? REQUESTS_PER_ROUTE
          : mode.concurrency;
      assert.equal(result.connections, expectedConnections, `${label}: connections`);

      const serverSeconds = await newServerSeconds(server, before, REQUESTS_PER_ROUTE);
      assert.equal(serverSeconds.length, REQUESTS_PER_ROUTE, `${label}: server records`);
      assertServerTimeInsideClientTime(server, serverSeconds, result.clientSeconds, label);
      if (mode.concurrency === 1 && server.kind !== "nginx") {
        // One request at a time, so the i-th record belongs to the i-th request.
        serverSeconds.forEach((s, i) =>
          assert.ok(
            s <= result.clientSeconds[i],
            `${label} #${i}: ${s} > ${result.clientSeconds[i]}`,
          )
        );
      }
    }
  }
  const all = await server.serverSeconds({ atLeast: total });
  assert.equal(all.length, total, `${server.kind}: total server records`);
  return total;
}

/** Every route once, /error last because nginx closes the connection after its 500 page. */
const PIPELINE: RouteCase[] = [...ROUTES.filter((r) => r.status !== 500), ROUTES[2]];

async function exercisePipeline(server: ServerHandle, alreadySent: number): Promise<number> {
  await using conn = await HttpConnection.open(server.port);
  const { responses, seconds } = await conn.pipeline(PIPELINE.map((r) => r.spec));
  conn.close(); // nginx logs a lingering-closed request only once the client closes
  assert.deepEqual(responses.map((r) => r.status), PIPELINE.map((r) => r.status));
  PIPELINE.forEach((route, i) => checkBody(route, responses[i]));
  const serverSeconds = await newServerSeconds(server, alreadySent, PIPELINE.length);
  assert.equal(serverSeconds.length, PIPELINE.length, `${server.kind}: pipelined records`);
  if (server.kind !== "nginx") {
    // Each request's server interval lies inside the batch window. Only python handles them
    // one after another; node emits 'request' for every parsed pipelined request at once, so
    // its intervals overlap and their SUM may exceed the window.
    assert.ok(Math.max(...serverSeconds) <= seconds, `${server.kind}: pipelined server > client`);
    if (server.kind === "python") assert.ok(sum(serverSeconds) <= seconds, "python sum > client");
  }
  return PIPELINE.length;
}

async function assertStopLeavesNothing(server: ServerHandle): Promise<void> {
  const pids = await server.pids();
  assert.ok(pids.includes(server.pid));
  await server.stop();
  await server.stop(); // idempotent
  assert.deepEqual(pids.filter(isAlive), [], `${server.kind}: processes left after stop()`);
  await assert.rejects(Deno.stat(server.dir), Deno.errors.NotFound);
}

for (const workers of [1, 2]) {
  for (const keepalive of [true, false]) {
    Deno.test(`nginx workers=${workers} keepalive=${keepalive}: exact counts`, async () => {
      await using server = await startNginx({ workers, keepalive, sendfile: true });
      assert.equal((await server.pids()).length, workers + 1, "master + workers");
      let sent = await exerciseAllRoutes(server, keepalive);
      if (keepalive) {
        sent += await exercisePipeline(server, sent);
      } else {
        // keepalive_timeout 0: nginx answers the first pipelined request, then closes and
        // silently drops the rest; only the answered one is logged.
        await using conn = await HttpConnection.open(server.port);
        const error = await conn.pipeline(PIPELINE.map((r) => r.spec)).catch((e) => e);
        assert.ok(error instanceof PipelineIncompleteError, String(error));
        assert.deepEqual(error.responses.map((r: Response) => r.status), [200]);
        sent += 1;
      }
      assert.equal((await server.serverSeconds({ atLeast: sent })).length, sent);
      await assertStopLeavesNothing(server);
    });
  }
}

Deno.test("nginx sendfile=false serves the same routes", async () => {
  await using server = await startNginx({ workers: 1, keepalive: true, sendfile: false });
  for (const route of ROUTES) {
    const result = await sendRequests({
      port: server.port,
      spec: route.spec,
      count: 3,
      keepAlive: true,
      onResponse: (response) => checkBody(route, response),
    });
    assert.deepEqual(result.statuses, new Map([[route.status, 3]]), route.name);
  }
  assert.equal((await server.serverSeconds({ atLeast: ROUTES.length * 3 })).length, 24);
  await assertStopLeavesNothing(server);
});

/** Syscall names a process makes while `work` runs, via strace (must be installed). */
async function tracedSyscalls(pid: number, work: () => Promise<unknown>): Promise<string> {
  const out = await Deno.makeTempFile({ prefix: "redprobe-strace-" });
  const tracer = new ManagedProcess("strace", [
    "-p",
    `${pid}`,
    "-o",
    out,
    "-e",
    "trace=%network,%file,%desc",
  ]);
  try {
    const attached = await pollUntil(() => /attached/i.test(tracer.stderr), { timeoutMs: 5_000 });
    assert.ok(attached, `strace did not attach: ${tracer.stderr}`);
    await work();
    await sleep(100); // let strace flush the syscalls of the last response
  } finally {
    await tracer.stop();
  }
  try {
    return await Deno.readTextFile(out);
  } finally {
    await Deno.remove(out);
  }
}

const hasStrace = (() => {
  try {
    return Deno.statSync("/usr/bin/strace").isFile;
  } catch {
    return false;
  }
})();

for (const sendfile of [true, false]) {
  Deno.test({
    name: `nginx sendfile=${sendfile} really ${sendfile ? "uses" : "avoids"} sendfile(2) for /big`,
    ignore: !hasStrace,
    fn: async () => {
      await using server = await startNginx({ workers: 1, keepalive: true, sendfile });
      const worker = (await server.pids()).find((pid) => pid !== server.pid)!;
      const trace = await tracedSyscalls(
        worker,
        () =>
          sendRequests({
            port: server.port,
            spec: { method: "GET", path: "/big" },
            count: 1,
            keepAlive: true,
          }),
      );
      // Response headers always go out via writev; this also proves strace saw the response.
      assert.match(trace, /\bwritev\(/);
      assert.equal(/\bsendfile\(.*= 65536/.test(trace), sendfile, trace);
    },
  });
}

Deno.test("nginx logs a pipelined 500 only after the client closes (lingering close)", async () => {
  await using server = await startNginx({ workers: 1, keepalive: true, sendfile: true });
  const conn = await HttpConnection.open(server.port);
  try {
    const { responses } = await conn.pipeline([
      { method: "GET", path: "/hello" },
      { method: "GET", path: "/error" },
    ]);
    assert.deepEqual(responses.map((r) => r.status), [200, 500]);
    assert.equal(responses[1].closesConnection, true);
    await sleep(200); // well below lingering_timeout (5 s)
    assert.equal((await server.serverSeconds()).length, 1, "500 not logged while lingering");
  } finally {
    conn.close();
  }
  assert.equal((await server.serverSeconds({ atLeast: 2 })).length, 2);
});

for (const [kind, start] of [["python", startPython], ["node", startNode]] as const) {
  Deno.test(`${kind}: exact counts and server time inside client time`, async () => {
    await using server = await start();
    assert.equal(server.kind, kind);
    assert.deepEqual(await server.pids(), [server.pid]);
    let sent = await exerciseAllRoutes(server);
    sent += await exercisePipeline(server, sent);
    assert.equal((await server.serverSeconds()).length, sent);
    await assertStopLeavesNothing(server);
  });
}

Deno.test("stop() via await using also cleans up when the test body throws", async () => {
  let pids: number[] = [];
  let dir = "";
  await assert.rejects(async () => {
    await using server = await startNginx({ workers: 2, keepalive: true, sendfile: true });
    pids = await server.pids();
    dir = server.dir;
    throw new Error("boom");
  }, /boom/);
  assert.equal(pids.length, 3);
  assert.deepEqual(pids.filter(isAlive), []);
  await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
});
