/**
 * `redprobe top` end to end: the real agent measures real nginx (a server, and a client of its
 * Python upstream) and Python, a known number of requests goes to each route, and `redprobe top
 * --once`, run as its own process against the agent's endpoint, must print those rows with the
 * exact totals, routes and error percentages (server: 5xx are errors and 404 is not; client:
 * 404 is).
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { dirname, fromFileUrl, join } from "../support/paths.ts";
import { sendRequests, startNginx, startPython } from "../support/mod.ts";
import { type Sample, sumSamples } from "../support/prom_text.ts";
import { settledSamples } from "../support/wait.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");

/** What was sent through nginx: path, count, nginx's status. */
const PLAN = [
  { path: "/hello", count: 30, status: 200 },
  { path: "/users/123", count: 20, status: 200 },
  { path: "/error", count: 5, status: 500 },
  { path: "/nope", count: 4, status: 404 },
  { path: "/proxy/hello", count: 6, status: 200 },
  { path: "/proxy/missing", count: 3, status: 404 },
];

async function top(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "main.ts"), "top", ...args],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code, out: decode(stdout), err: decode(stderr) };
}

/** The table's rows, "SERVICE|KIND|ROUTE" -> the other columns by name. */
function tableRows(out: string): Map<string, Record<string, string>> {
  const lines = out.split("\n");
  const header = lines.findIndex((l) => l.startsWith("SERVICE "));
  assert.ok(header >= 0, out);
  const titles = lines[header].trim().split(/\s{2,}/);
  assert.deepEqual(titles, ["SERVICE", "KIND", "ROUTE", "RATE/s", "ERR%", "P50", "P99", "TOTAL"]);
  const rows = new Map<string, Record<string, string>>();
  for (const line of lines.slice(header + 1)) {
    if (!line.trim() || line.startsWith("…")) continue;
    const cells = line.trim().split(/\s{2,}/);
    assert.equal(cells.length, titles.length, line);
    const row = Object.fromEntries(titles.map((t, i) => [t, cells[i]]));
    rows.set(`${row.SERVICE}|${row.KIND}|${row.ROUTE}`, row);
  }
  return rows;
}

Deno.test({
  name: "redprobe top --once prints the services' routes with exact totals and error %",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using python = await startPython();
    await using nginx = await startNginx({
      workers: 1,
      keepalive: true,
      sendfile: false,
      upstreamPort: python.port,
    });
    // Only these two (the machine may run other tests' servers and clients), named.
    await using agent = await startAgent({
      config: {
        discovery: {
          select: [
            { ports: [nginx.port], name: "top-e2e-nginx" },
            { ports: [python.port], name: "top-e2e-python" },
          ],
        },
        plugins: { "kprobe-http": { clients: "targets" }, "tls-uprobe": { clients: "off" } },
      },
    });
    for (const pid of [...await nginx.pids(), python.pid]) await agent.waitForPid(pid);

    for (const { path, count, status } of PLAN) {
      const sent = await sendRequests({
        port: nginx.port,
        spec: { method: "GET", path },
        count,
        keepAlive: true,
        concurrency: 2,
      });
      assert.deepEqual([...sent.statuses], [[status, count]], path);
    }

    // `top` reads the counts itself: first wait until the agent has them all (a client can read
    // a response a moment before the probe that counts it on the server has run). nginx served
    // the plan; the /proxy/ requests are also nginx's client requests and Python's.
    const sent = PLAN.reduce((n, p) => n + p.count, 0);
    const proxied = PLAN.filter((p) => p.path.startsWith("/proxy/")).reduce(
      (n, p) => n + p.count,
      0,
    );
    const counted = (samples: Sample[]) =>
      sumSamples(samples, "http_server_duration_seconds_count", { service_name: "top-e2e-nginx" }) +
      sumSamples(samples, "http_client_duration_seconds_count", { service_name: "top-e2e-nginx" }) +
      sumSamples(samples, "http_server_duration_seconds_count", { service_name: "top-e2e-python" });
    await settledSamples(agent, (s) => counted(s) >= sent + 2 * proxied);

    const url = `http://127.0.0.1:${agent.port}/metrics`;
    const once = await top(["--once", "--interval", "0", "--url", url]);
    assert.equal(once.code, 0, once.err);
    assert.match(once.out, /since the agent started \(cumulative\); no RATE with --interval 0/);
    const rows = tableRows(once.out);
    const cells = (key: string) => {
      const row = rows.get(key);
      assert.ok(row, `no row ${key} in\n${once.out}`);
      return [row["RATE/s"], row["ERR%"], row.TOTAL];
    };
    const server = "top-e2e-nginx|http server|";
    assert.deepEqual(cells(`${server}/hello`), ["-", "0.0%", "30"]);
    assert.deepEqual(cells(`${server}/users/{id}`), ["-", "0.0%", "20"]);
    assert.deepEqual(cells(`${server}/error`), ["-", "100.0%", "5"]);
    assert.deepEqual(cells(`${server}/nope`), ["-", "0.0%", "4"], "404 is not a server error");
    assert.deepEqual(cells(`${server}/proxy/hello`), ["-", "0.0%", "6"]);
    assert.deepEqual(cells(`${server}/proxy/missing`), ["-", "0.0%", "3"]);
    // nginx's upstream requests, and the upstream's side of them.
    assert.deepEqual(cells("top-e2e-nginx|http client|/hello"), ["-", "0.0%", "6"]);
    assert.deepEqual(cells("top-e2e-nginx|http client|/missing"), ["-", "100.0%", "3"]);
    assert.deepEqual(cells("top-e2e-python|http server|/hello"), ["-", "0.0%", "6"]);
    assert.deepEqual(cells("top-e2e-python|http server|/missing"), ["-", "0.0%", "3"]);
    assert.equal(rows.size, 10, once.out);
    // The quantiles are durations (or 0: a bucket bound) on every row.
    for (const row of rows.values()) {
      for (const q of [row.P50, row.P99]) assert.match(q, /^(0|\d+(\.\d+)?(µs|ms|s))$/, q);
    }
    // Sorted by total without a rate: nginx's /hello first.
    assert.match(once.out.split("\n").find((l) => l.startsWith("top-e2e"))!, / \/hello /);

    // Over a quiet window: every rate 0; by error %, then (equal rates) by total.
    const quiet = await top(["--once", "--interval", "500ms", "--sort", "errors", "--limit", "3"]
      .concat(["--metrics-address", "127.0.0.1", "--metrics-port", String(agent.port)]));
    assert.equal(quiet.code, 0, quiet.err);
    assert.match(quiet.out, /RATE over \d+\.\d s; ERR%, P50, P99 since the agent started/);
    const lines = quiet.out.split("\n").filter((l) => l.startsWith("top-e2e"));
    assert.equal(lines.length, 3, quiet.out);
    assert.deepEqual(
      lines.map((l) => l.trim().split(/\s{2,}/)).map((c) => [c[1], c[2], c[3], c[4], c[7]]),
      [
        ["http server", "/error", "0.00", "100.0%", "5"],
        ["http client", "/missing", "0.00", "100.0%", "3"],
        ["http server", "/hello", "0.00", "0.0%", "30"],
      ],
    );
    assert.match(quiet.out, /… 7 more rows \(--limit 3\)/);
  },
});

Deno.test({
  name: "redprobe top: an endpoint nobody serves is a one-line error naming it, exit 1",
  async fn() {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (listener.addr as Deno.NetAddr).port;
    listener.close();
    const url = `http://127.0.0.1:${port}/metrics`;
    const r = await top(["--url", url]);
    assert.equal(r.code, 1);
    assert.equal(r.out, "");
    const lines = r.err.trim().split("\n");
    assert.equal(lines.length, 1, r.err);
    assert.ok(lines[0].startsWith(`redprobe top: cannot read ${url}: `), r.err);
  },
});
