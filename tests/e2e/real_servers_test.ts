/**
 * The acceptance test of kprobe-http: real nginx (one worker and several, keep-alive on and
 * off, sendfile on), python3 http.server and a Node http server that nobody changed, driven by
 * a real client with a known number of requests per route, method and status. Every exported
 * `_count` must EQUAL what was sent for its label set, the request-size `_sum` must equal the
 * bodies sent, the duration `_sum` must lie between what the server measured and what the
 * client measured, and `promtool check metrics` must accept the exposition.
 */
import assert from "node:assert/strict";
import { type AgentHandle, startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { countsByRequest, findSamples, sumSamples } from "../support/prom_text.ts";
import { countsReached, settledSamples } from "../support/wait.ts";
import { promtoolCheck } from "../support/tools.ts";
import {
  type RequestSpec,
  sendRequests,
  type ServerHandle,
  startNginx,
  startNode,
  startPython,
} from "../support/mod.ts";

interface PlanItem {
  spec: RequestSpec;
  count: number;
  status: number;
  route: string;
  bodyBytes?: number;
}

const PLAN: PlanItem[] = [
  { spec: { method: "GET", path: "/hello" }, count: 12, status: 200, route: "/hello" },
  { spec: { method: "GET", path: "/missing" }, count: 5, status: 404, route: "/missing" },
  { spec: { method: "GET", path: "/error" }, count: 4, status: 500, route: "/error" },
  { spec: { method: "GET", path: "/users/42" }, count: 3, status: 200, route: "/users/{id}" },
  {
    spec: { method: "GET", path: "/users/7?expand=1" },
    count: 2,
    status: 200,
    route: "/users/{id}",
  },
  { spec: { method: "GET", path: "/big" }, count: 3, status: 200, route: "/big" },
  { spec: { method: "HEAD", path: "/hello" }, count: 3, status: 200, route: "/hello" },
  {
    spec: { method: "POST", path: "/submit", body: "a".repeat(300) },
    count: 4,
    status: 200,
    route: "/submit",
    bodyBytes: 300,
  },
  {
    spec: {
      method: "POST",
      path: "/submit",
      body: "b".repeat(1000),
      chunked: true,
      chunkSize: 256,
    },
    count: 3,
    status: 200,
    route: "/submit",
    bodyBytes: 1000,
  },
];

/** Sends the whole plan, with keep-alive (3 connections) and then without; returns client seconds. */
async function drive(
  server: ServerHandle,
  modes: { keepAlive: boolean; concurrency: number }[],
): Promise<
  {
    expected: Map<string, { count: number; bytes: number }>;
    clientSeconds: number;
    requests: number;
  }
> {
  const expected = new Map<string, { count: number; bytes: number }>();
  let clientSeconds = 0;
  let requests = 0;
  for (const mode of modes) {
    for (const item of PLAN) {
      const result = await sendRequests({
        port: server.port,
        spec: item.spec,
        count: item.count,
        ...mode,
      });
      assert.deepEqual(
        [...result.statuses],
        [[item.status, item.count]],
        `${item.spec.method} ${item.spec.path}`,
      );
      clientSeconds += result.clientSeconds.reduce((a, b) => a + b, 0);
      requests += item.count;
      const key = `${item.spec.method} ${item.status} ${item.route}`;
      const e = expected.get(key) ?? { count: 0, bytes: 0 };
      e.count += item.count;
      e.bytes += item.count * (item.bodyBytes ?? 0);
      expected.set(key, e);
    }
  }
  return { expected, clientSeconds, requests };
}

async function checkServer(
  agent: AgentHandle,
  server: ServerHandle,
  serviceName: RegExp,
  modes: { keepAlive: boolean; concurrency: number }[],
  serverTimesMeasureInside: boolean,
): Promise<void> {
  for (const pid of await server.pids()) await agent.waitForPid(pid);
  const { expected, clientSeconds, requests } = await drive(server, modes);
  const instance = `${Deno.hostname()}:${server.pid}`;
  const mine = { target_instance: instance };
  const want = Object.fromEntries([...expected].map(([k, v]) => [k, v.count]));
  const samples = await settledSamples(
    agent,
    (s) => countsReached(countsByRequest(s, "http_server_duration_seconds_count", mine), want),
  );

  const counts = findSamples(samples, "http_server_duration_seconds_count", mine);
  const actual = new Map(counts.map((s) => [
    `${s.labels.http_request_method} ${s.labels.http_response_status_code} ${s.labels.http_route}`,
    s.value,
  ]));
  assert.deepEqual(
    Object.fromEntries([...actual].sort()),
    Object.fromEntries([...expected].map(([k, v]) => [k, v.count]).sort()),
  );
  for (const s of counts) assert.match(s.labels.service_name, serviceName);

  for (const [key, e] of expected) {
    const [method, status, route] = key.split(" ");
    const labels = {
      ...mine,
      http_request_method: method,
      http_response_status_code: status,
      http_route: route,
    };
    assert.equal(
      sumSamples(samples, "http_server_request_size_bytes_sum", labels),
      e.bytes,
      `body bytes of ${key}`,
    );
    assert.equal(
      sumSamples(samples, "http_server_request_size_bytes_count", labels),
      e.count,
      `sizes of ${key}`,
    );
    const inf = findSamples(samples, "http_server_duration_seconds_bucket", {
      ...labels,
      le: "+Inf",
    });
    assert.equal(inf[0]?.value, e.count, `+Inf bucket of ${key}`);
  }

  const measured = sumSamples(samples, "http_server_duration_seconds_sum", mine);
  assert.ok(
    measured <= clientSeconds,
    `agent's ${measured}s must not exceed the client's ${clientSeconds}s`,
  );
  const serverSeconds = (await server.serverSeconds({ atLeast: requests })).reduce(
    (a, b) => a + b,
    0,
  );
  if (serverTimesMeasureInside) {
    assert.ok(
      measured >= serverSeconds,
      `agent's ${measured}s must cover the server's own ${serverSeconds}s`,
    );
  }
  assert.ok(measured > 0);
}

const KEEPALIVE_AND_NOT = [{ keepAlive: true, concurrency: 3 }, {
  keepAlive: false,
  concurrency: 1,
}];

Deno.test({
  name: "kprobe-http counts every request to real nginx, python and node servers exactly",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent();

    // nginx's own $request_time has millisecond resolution and ends after the body is sent,
    // so for nginx only the client-side bound of the duration sum is checked.
    await t.step("nginx, 1 worker, keep-alive on, sendfile on", async () => {
      await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
      await checkServer(agent, nginx, /^nginx$/, KEEPALIVE_AND_NOT, false);
    });
    await t.step("nginx, 3 workers, keep-alive on, sendfile on", async () => {
      await using nginx = await startNginx({ workers: 3, keepalive: true, sendfile: true });
      await checkServer(agent, nginx, /^nginx$/, KEEPALIVE_AND_NOT, false);
    });
    await t.step("nginx, 2 workers, keep-alive off, sendfile on", async () => {
      await using nginx = await startNginx({ workers: 2, keepalive: false, sendfile: true });
      await checkServer(agent, nginx, /^nginx$/, [{ keepAlive: true, concurrency: 3 }], false);
    });
    await t.step("python3 http.server", async () => {
      await using python = await startPython();
      await checkServer(agent, python, /^python3(\.\d+)?$/, KEEPALIVE_AND_NOT, true);
    });
    await t.step("node http server", async () => {
      await using node = await startNode();
      await checkServer(agent, node, /^node$/, KEEPALIVE_AND_NOT, true);
    });

    await t.step("promtool accepts the exposition", async () => {
      const { success, output } = await promtoolCheck(await agent.metricsText());
      assert.ok(success, `promtool check metrics failed:\n${output}`);
    });

    await t.step("nothing was lost or dropped", async () => {
      const samples = await agent.samples();
      assert.equal(sumSamples(samples, "redprobe_events_lost_kernel_total"), 0);
      assert.equal(sumSamples(samples, "redprobe_events_dropped_total"), 0);
      assert.equal(sumSamples(samples, "redprobe_series_overflow_total"), 0);
    });
  },
});
