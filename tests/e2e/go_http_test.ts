/**
 * The acceptance test of go-http: real Go programs, nobody changed, measured through uprobes.
 *
 * - The fixture server and client built with Debian's Go 1.19, with symbols and DWARF and
 *   stripped (`-ldflags "-s -w"`), over HTTP and HTTPS. The plan includes requests that run
 *   the GC and grow the goroutine stack while the probes are attached.
 * - Debian's /usr/bin/prometheus (stripped Go 1.19): its API as a server, its scrapes as a client.
 * - Debian's /usr/bin/hey (stripped Go client), short-lived: configured in `executables`.
 * - esbuild --serve from npm (Go 1.26, stripped, no .go.buildinfo).
 *
 * Each exported `_count` must EQUAL what was sent, per label set; a Go process must be counted
 * by go-http only (kprobe-http leaves it alone).
 */
import assert from "node:assert/strict";
import { type AgentHandle, startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { countsByRequest, findSamples, type Sample, sumSamples } from "../support/prom_text.ts";
import { runGoClient, startGoServer } from "../support/go_programs.ts";
import { npmBinary } from "../support/npm_binaries.ts";
import { ManagedProcess } from "../support/managed_process.ts";
import { startPrometheus } from "../support/prometheus.ts";
import { freePort } from "../support/ports.ts";
import { countsReached, pollUntil, settledSamples } from "../support/wait.ts";
import { promtoolCheck } from "../support/tools.ts";
import { startPython } from "../support/servers.ts";
import { routeOf } from "../../lib/route.ts";

interface Planned {
  method: string;
  path: string;
  count: number;
  status: number;
  bodyBytes: number;
}

const PLAN: Planned[] = [
  { method: "GET", path: "/users/1", count: 5, status: 200, bodyBytes: 0 },
  { method: "GET", path: "/users/2", count: 2, status: 200, bodyBytes: 0 },
  { method: "HEAD", path: "/users/3", count: 2, status: 200, bodyBytes: 0 },
  { method: "GET", path: "/status/404", count: 3, status: 404, bodyBytes: 0 },
  { method: "GET", path: "/status/500", count: 2, status: 500, bodyBytes: 0 },
  { method: "GET", path: "/implicit", count: 4, status: 200, bodyBytes: 0 },
  { method: "POST", path: "/echo", count: 3, status: 201, bodyBytes: 100 },
  { method: "GET", path: "/nope", count: 2, status: 404, bodyBytes: 0 },
  // GC while probes are attached, and goroutine stack growth (3000 frames of ~600 bytes).
  { method: "GET", path: "/gc", count: 3, status: 200, bodyBytes: 0 },
  { method: "GET", path: "/deep/3000", count: 3, status: 200, bodyBytes: 0 },
];

type Counts = Record<string, number>;

function expectedCounts(plan: Planned[]): { counts: Counts; bytes: Counts } {
  const counts: Counts = {};
  const bytes: Counts = {};
  for (const p of plan) {
    const key = `${p.method} ${p.status} ${routeOf(p.path)}`;
    counts[key] = (counts[key] ?? 0) + p.count;
    bytes[key] = (bytes[key] ?? 0) + p.count * p.bodyBytes;
  }
  return { counts, bytes };
}

function sorted(c: Counts): Counts {
  return Object.fromEntries(Object.entries(c).sort(([a], [b]) => a.localeCompare(b)));
}

const instanceOf = (pid: number) => `${Deno.hostname()}:${pid}`;

/** http_server_duration_seconds_count per "METHOD STATUS ROUTE" of process `pid`. */
function served(samples: Sample[], pid: number): Counts {
  return countsByRequest(samples, "http_server_duration_seconds_count", {
    target_instance: instanceOf(pid),
  });
}

/** The agent's samples once process `pid` has served at least `want` (at most a few seconds). */
function servedAtLeast(agent: AgentHandle, pid: number, want: Counts): Promise<Sample[]> {
  return settledSamples(agent, (s) => countsReached(served(s, pid), want));
}

/**
 * The agent instruments `pid` with go-http, and a server with nothing else. A client that
 * serves nothing may also get kprobe-http (for any server side it might have).
 */
async function waitForGoHttp(agent: AgentHandle, pid: number, client = false): Promise<void> {
  await agent.waitForPid(pid);
  const line = agent.logs().split("\n").find((l) => l.includes(`INFO  instrumenting pid ${pid} `));
  assert.match(
    line ?? "",
    client ? / with go-http(, kprobe-http)?$/ : / with go-http$/,
    `pid ${pid} must be instrumented by go-http${client ? "" : " only"}`,
  );
}

async function checkFixtures(
  agent: AgentHandle,
  options: { stripped: boolean; tls: boolean; http2?: boolean },
): Promise<void> {
  await using server = await startGoServer(options);
  await waitForGoHttp(agent, server.pid);
  const client = await runGoClient({
    stripped: options.stripped,
    http2: options.http2,
    baseUrl: server.baseUrl,
    requests: PLAN.map((p) => `${p.method}:${p.path}:${p.count}`),
    beforeSending: (pid) => waitForGoHttp(agent, pid, true),
  });
  const sent = new Map<number, number>();
  for (const p of PLAN) sent.set(p.status, (sent.get(p.status) ?? 0) + p.count);
  assert.deepEqual(
    [...client.statuses].sort(),
    [...sent].sort(),
    "what the client itself saw",
  );

  const { counts, bytes } = expectedCounts(PLAN);
  const serverSide = { target_instance: instanceOf(server.pid) };
  const clientSide = { target_instance: instanceOf(client.pid) };
  const samples = await settledSamples(
    agent,
    (s) =>
      countsReached(served(s, server.pid), counts) &&
      countsReached(countsByRequest(s, "http_client_duration_seconds_count", clientSide), counts),
  );
  assert.deepEqual(
    sorted(countsByRequest(samples, "http_server_duration_seconds_count", serverSide)),
    sorted(counts),
    "server counts",
  );
  assert.deepEqual(
    sorted(countsByRequest(samples, "http_client_duration_seconds_count", clientSide)),
    sorted(counts),
    "client counts",
  );
  for (
    const [metric, side] of [
      ["http_server_request_size_bytes_sum", serverSide],
      ["http_client_request_size_bytes_sum", clientSide],
    ] as const
  ) {
    assert.deepEqual(sorted(countsByRequest(samples, metric, side)), sorted(bytes), metric);
  }
  // Nothing else was measured for these processes (no kprobe-http double count, no strays).
  for (const side of [serverSide, clientSide]) {
    assert.equal(
      sumSamples(samples, "http_server_duration_seconds_count", side) +
        sumSamples(samples, "http_client_duration_seconds_count", side),
      Object.values(counts).reduce((a, b) => a + b, 0),
    );
  }
  // The server survived GC and stack growth under the probes, and says it answered them all.
  assert.equal(await server.served("/deep/3000"), 3);
  assert.equal(await server.served("/gc"), 3);
}

Deno.test({
  name: "go-http counts every request of real Go servers and clients exactly",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { plugins: { "go-http": { executables: ["/usr/bin/hey"] } } },
    });

    for (const stripped of [false, true]) {
      for (const tls of [false, true]) {
        const what = `${stripped ? "stripped" : "symbols and DWARF"}, ${tls ? "HTTPS" : "HTTP"}`;
        await t.step(`Go 1.19 fixture server and client (${what})`, async () => {
          await checkFixtures(agent, { stripped, tls });
        });
      }
    }

    await t.step(
      "HTTP/2: Go client and server (stripped, HTTPS with h2), and curl --http2",
      async () => {
        await checkFixtures(agent, { stripped: true, tls: true, http2: true });
        await using server = await startGoServer({ stripped: true, tls: true });
        await waitForGoHttp(agent, server.pid);
        const out = await new Deno.Command("curl", {
          args: [
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{response_code}\\n",
            ...Array.from({ length: 6 }, (_, i) => `${server.baseUrl}/users/${i}`),
            ...Array.from({ length: 2 }, () => `${server.baseUrl}/status/503`),
          ],
          stdout: "piped",
        }).output();
        // Bodies and -w lines interleave on stdout (-o applies to the first URL only).
        const lines = new TextDecoder().decode(out.stdout).split("\n").filter((l) =>
          /^\d \d{3}$/.test(l)
        );
        assert.deepEqual(lines, [...Array(6).fill("2 200"), ...Array(2).fill("2 503")]);
        const want = { "GET 200 /users/{id}": 6, "GET 503 /status/{id}": 2 };
        const samples = await servedAtLeast(agent, server.pid, want);
        assert.deepEqual(sorted(served(samples, server.pid)), want);
      },
    );

    await t.step("hey, a short-lived stripped Go client, configured in executables", async () => {
      await using server = await startGoServer({ stripped: true });
      await waitForGoHttp(agent, server.pid);
      const out = await new Deno.Command("hey", {
        args: ["-n", "40", "-c", "4", `${server.baseUrl}/users/77`],
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(out.success, new TextDecoder().decode(out.stderr));
      assert.match(new TextDecoder().decode(out.stdout), /\[200\]\s+40 responses/);
      const samples = await servedAtLeast(agent, server.pid, { "GET 200 /users/{id}": 40 });
      assert.deepEqual(
        countsByRequest(samples, "http_client_duration_seconds_count", { service_name: "hey" }),
        { "GET 200 /users/{id}": 40 },
      );
      assert.deepEqual(served(samples, server.pid), { "GET 200 /users/{id}": 40 });
    });

    await t.step("Debian's prometheus: its API served, its scrapes made", async () => {
      await using target = await startGoServer({ stripped: true });
      await waitForGoHttp(agent, target.pid);
      const prometheus = await startPrometheus({
        target: `127.0.0.1:${target.port}`,
        metricsPath: "/scrape",
      });
      try {
        await waitForGoHttp(agent, prometheus.pid);
        const api = prometheus.api;
        const up = await pollUntil(async () => {
          try {
            return (await fetch(`${api}/-/ready`).then((r) => r.text())).length > 0;
          } catch {
            return false;
          }
        }, { timeoutMs: 20_000, intervalMs: 200 });
        assert.ok(up, `prometheus did not start: ${prometheus.stderr()}`);
        // Requests during start-up (/-/ready) are counted too: only the routes below are compared.
        for (let i = 0; i < 6; i++) {
          await (await fetch(`${api}/api/v1/query?query=up`)).text();
        }
        for (let i = 0; i < 3; i++) await (await fetch(`${api}/api/v1/nope`)).text();
        // At least two scrapes, then stop prometheus so no scrape is in flight.
        assert.ok(
          await pollUntil(async () => (await target.served("/scrape")) >= 2, {
            timeoutMs: 10_000,
            intervalMs: 200,
          }),
        );
      } finally {
        await prometheus.stop();
      }
      const scrapes = await target.served("/scrape");
      const samples = await servedAtLeast(agent, prometheus.pid, {
        "GET 200 /api/v1/query": 6,
        "GET 404 /api/v1/nope": 3,
      });
      const server = served(samples, prometheus.pid);
      assert.equal(server["GET 200 /api/v1/query"], 6, JSON.stringify(server));
      assert.equal(server["GET 404 /api/v1/nope"], 3, JSON.stringify(server));
      const client = countsByRequest(samples, "http_client_duration_seconds_count", {
        target_instance: instanceOf(prometheus.pid),
      });
      assert.deepEqual(client, { "GET 404 /scrape": scrapes });
    });

    await t.step("esbuild --serve (Go 1.26, stripped, no .go.buildinfo)", async () => {
      const esbuild = await npmBinary("@esbuild/linux-x64", "bin/esbuild");
      const dir = await Deno.makeTempDir({ prefix: "redprobe-esbuild-" });
      await Deno.writeTextFile(`${dir}/hello.txt`, "hello\n");
      const port = freePort();
      const proc = new ManagedProcess(esbuild, [`--serve=127.0.0.1:${port}`, `--servedir=${dir}`], {
        keepStdinOpen: true,
      });
      try {
        await waitForGoHttp(agent, proc.pid);
        for (let i = 0; i < 7; i++) {
          const res = await fetch(`http://127.0.0.1:${port}/hello.txt`);
          assert.equal(await res.text(), "hello\n");
        }
        for (let i = 0; i < 4; i++) {
          const res = await fetch(`http://127.0.0.1:${port}/missing.txt`);
          await res.body?.cancel();
          assert.equal(res.status, 404);
        }
        const want = { "GET 200 /hello.txt": 7, "GET 404 /missing.txt": 4 };
        const samples = await servedAtLeast(agent, proc.pid, want);
        assert.deepEqual(sorted(served(samples, proc.pid)), want);
      } finally {
        await proc.stop();
        await Deno.remove(dir, { recursive: true });
      }
    });

    await t.step("a non-Go server is left to kprobe-http, and counted as skipped", async () => {
      await using python = await startPython();
      await agent.waitForPid(python.pid);
      const samples = await agent.samples();
      const skipped = findSamples(samples, "redprobe_processes_skipped_total", {
        plugin: "go-http",
        reason: "not_go",
      });
      assert.ok((skipped[0]?.value ?? 0) >= 1, "not_go skips");
      const line = agent.logs().split("\n").find((l) =>
        l.includes(`INFO  instrumenting pid ${python.pid} `)
      );
      // (tls-uprobe too: the test server imports Python's ssl module, which maps libssl.)
      assert.match(line ?? "", / with kprobe-http(, tls-uprobe)?$/);
      const text = await agent.metricsText();
      const check = await promtoolCheck(text);
      assert.ok(check.success, check.output);
    });
  },
});

Deno.test({
  name: "a Go server without TLS code: kprobe-http counts its requests, go-http its client calls",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent();
    await using upstream = await startGoServer({ stripped: true });
    await using plain = await startGoServer({ stripped: true, plain: true });
    await agent.waitForPid(plain.pid);
    const line = agent.logs().split("\n").find((l) =>
      l.includes(`INFO  instrumenting pid ${plain.pid} `)
    );
    assert.match(line ?? "", / with go-http, kprobe-http$/);
    for (let i = 0; i < 6; i++) await (await fetch(`${plain.baseUrl}/users/${i}`)).text();
    const target = encodeURIComponent(`${upstream.baseUrl}/status/418`);
    for (let i = 0; i < 3; i++) await (await fetch(`${plain.baseUrl}/call?url=${target}`)).text();
    const want = { "GET 200 /users/{id}": 6, "GET 418 /call": 3 };
    const samples = await servedAtLeast(agent, plain.pid, want);
    const mine = { target_instance: instanceOf(plain.pid) };
    assert.deepEqual(sorted(served(samples, plain.pid)), want);
    assert.deepEqual(countsByRequest(samples, "http_client_duration_seconds_count", mine), {
      "GET 418 /status/{id}": 3,
    });
  },
});

Deno.test({
  name: "a Go server listed in skip_executables is measured by kprobe-http instead, exactly",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { plugins: { "go-http": { skip_executables: ["*/go_http-server-*"] } } },
    });
    await using server = await startGoServer({ stripped: true });
    await agent.waitForPid(server.pid);
    const line = agent.logs().split("\n").find((l) =>
      l.includes(`INFO  instrumenting pid ${server.pid} `)
    );
    assert.match(line ?? "", / with kprobe-http$/);
    for (let i = 0; i < 9; i++) await (await fetch(`${server.baseUrl}/users/${i}`)).text();
    for (let i = 0; i < 2; i++) await (await fetch(`${server.baseUrl}/status/502`)).text();
    const want = { "GET 200 /users/{id}": 9, "GET 502 /status/{id}": 2 };
    assert.deepEqual(
      sorted(served(await servedAtLeast(agent, server.pid, want), server.pid)),
      want,
    );
  },
});

Deno.test({
  name: "go-http with aggregate_in_kernel: false (one record per request) counts exactly too",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { plugins: { "go-http": { aggregate_in_kernel: false } } },
    });
    await checkFixtures(agent, { stripped: true, tls: true });
    const read = findSamples(await agent.samples(), "redprobe_events_read_total", {
      plugin: "go-http",
    });
    assert.ok((read[0]?.value ?? 0) > 0, "the requests came as records");
  },
});

Deno.test({
  name: "with optional_labels, Go client requests carry server_address and server_port",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { metrics: { optional_labels: ["server_address", "server_port"] } },
    });
    await using server = await startGoServer({ stripped: true, tls: true });
    await waitForGoHttp(agent, server.pid);
    const client = await runGoClient({
      stripped: true,
      baseUrl: server.baseUrl,
      requests: ["GET:/users/1:4", "GET:/status/404:2"],
      beforeSending: (pid) => waitForGoHttp(agent, pid, true),
    });
    const samples = findSamples(
      await agent.samples(),
      "http_client_duration_seconds_count",
      { target_instance: instanceOf(client.pid) },
    );
    const byPeer = Object.fromEntries(samples.map((s) => [
      `${s.labels.http_response_status_code} ${s.labels.server_address}:${s.labels.server_port}`,
      s.value,
    ]));
    assert.deepEqual(byPeer, {
      [`200 127.0.0.1:${server.port}`]: 4,
      [`404 127.0.0.1:${server.port}`]: 2,
    });
  },
});
