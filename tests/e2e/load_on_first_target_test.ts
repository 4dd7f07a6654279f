/**
 * go-http and go-grpc load their BPF objects at their first target (`loadOnFirstTarget`), not
 * at the agent's start: on a host without Go programs the agent holds none of their programs
 * and maps (their ring buffers are not mapped), while their own metric series exist, at 0.
 * When a Go server starts, go-http loads, instruments it, and counts its requests exactly; go-grpc
 * stays unloaded as long as no gRPC program runs. With `executables`, go-http loads at start.
 *
 * Discovery is limited (`discovery.select`) to the test's Go binaries, so whatever else runs on
 * the machine (another Go program) cannot be the first target.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { countsByRequest, findSamples, type Sample, sumSamples } from "../support/prom_text.ts";
import { runGoClient, startGoServer } from "../support/go_programs.ts";
import { buildGoFixture } from "../support/go_build.ts";
import { mapsHeldBy, programsHeldBy } from "../support/bpf_held.ts";
import { countsReached, settledSamples, sleep } from "../support/wait.ts";
import { GO_HTTP_KERNEL_COUNTERS } from "../../plugins/go_http/decode.ts";
import { GO_GRPC_KERNEL_COUNTERS } from "../../plugins/go_grpc/decode.ts";

const GO_HTTP_PROGRAMS = [
  "go_client_end",
  "go_client_start",
  "go_server_end",
  "go_server_start",
  "go_server_status",
];
const GO_GRPC_PROGRAMS = [
  "grpc_client_end",
  "grpc_client_start",
  "grpc_server_end",
  "grpc_server_start",
];

const PLAN = [
  { method: "GET", path: "/users/1", count: 7, status: 200 },
  { method: "GET", path: "/status/500", count: 3, status: 500 },
  { method: "POST", path: "/echo", count: 4, status: 201 },
];
const WANT = {
  "GET 200 /users/{id}": 7,
  "GET 500 /status/{id}": 3,
  "POST 201 /echo": 4,
};

/** The agent's own series of `plugin`: every kernel counter, losses, ring fill, instrumented. */
function ownSeries(samples: Sample[], plugin: string, counters: readonly string[]) {
  const one = (name: string, labels: Record<string, string> = {}) => {
    const found = findSamples(samples, name, { plugin, ...labels });
    assert.equal(found.length, 1, `${name}{plugin="${plugin}"} exported once`);
    return found[0].value;
  };
  return {
    kernel: Object.fromEntries(
      counters.map((event) => [event, one("redprobe_kernel_events_total", { event })]),
    ),
    lost: one("redprobe_events_lost_kernel_total"),
    ringFill: one("redprobe_ring_buffer_fill_ratio"),
    instrumented: one("redprobe_instrumented_processes"),
  };
}

const zeros = (counters: readonly string[]) => Object.fromEntries(counters.map((c) => [c, 0]));

const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  ...base,
  name:
    "without a Go process go-http and go-grpc are not loaded, their series exist at 0; the first Go server loads go-http and is counted exactly",
  async fn() {
    assertBpfAvailable();
    // Built before the agent starts (the first build takes a while).
    const serverBinary = await buildGoFixture("go_http/server");
    const clientBinary = await buildGoFixture("go_http/client");
    await using agent = await startAgent({
      config: {
        discovery: {
          poll_interval: "250ms",
          select: [{ exe: serverBinary }, { exe: clientBinary }],
        },
      },
    });
    const logs = () => agent.logs();
    assert.match(logs(), /plugin go-http ready: its BPF object loads at its first target/);
    assert.match(logs(), /plugin go-grpc ready: its BPF object loads at its first target/);
    assert.match(logs(), /plugin kprobe-http loaded/);
    assert.match(
      logs(),
      /plugins running: .*go-http \(loads at its first target\).*go-grpc \(loads at its first target\)/,
    );
    // A few discovery polls with nothing of theirs to instrument.
    await sleep(1_000);
    assert.doesNotMatch(logs(), /loaded at its first target/);
    const before = await programsHeldBy(agent.pid);
    for (const name of [...GO_HTTP_PROGRAMS, ...GO_GRPC_PROGRAMS]) {
      assert.ok(!before.includes(name), `${name} not loaded yet: ${before}`);
    }
    assert.ok(before.includes("on_sock_recv"), `kprobe-http's programs: ${before}`);
    // One ring buffer per loaded plugin: kprobe-http's and tls-uprobe's, not the Go plugins'.
    const ringsBefore = (await mapsHeldBy(agent.pid)).filter((m) => m.type === "ringbuf");
    assert.equal(ringsBefore.length, 2, JSON.stringify(ringsBefore));
    // The agent's own series of both exist from the start, at 0.
    let samples = await agent.samples();
    assert.deepEqual(ownSeries(samples, "go-http", GO_HTTP_KERNEL_COUNTERS), {
      kernel: zeros(GO_HTTP_KERNEL_COUNTERS),
      lost: 0,
      ringFill: 0,
      instrumented: 0,
    });
    assert.deepEqual(ownSeries(samples, "go-grpc", GO_GRPC_KERNEL_COUNTERS), {
      kernel: zeros(GO_GRPC_KERNEL_COUNTERS),
      lost: 0,
      ringFill: 0,
      instrumented: 0,
    });
    assert.equal(
      sumSamples(samples, "redprobe_attach_failures_total", { plugin: "go-http" }),
      0,
    );

    // The first Go server (HTTPS: go-http's under servers: auto).
    await using server = await startGoServer({ tls: true });
    await agent.waitForPid(server.pid);
    const lines = logs().split("\n");
    const loadedAt = lines.findIndex((l) =>
      new RegExp(
        ` INFO  go-http: BPF object loaded at its first target \\(pid ${server.pid}\\) in \\d+ ms$`,
      ).test(l)
    );
    const instrumentedAt = lines.findIndex((l) =>
      l.includes(`INFO  instrumenting pid ${server.pid} `)
    );
    assert.ok(loadedAt >= 0, logs());
    assert.ok(loadedAt < instrumentedAt, "loaded, then the target instrumented");
    assert.match(lines[instrumentedAt], / with go-http$/);
    const after = await programsHeldBy(agent.pid);
    for (const name of GO_HTTP_PROGRAMS) assert.ok(after.includes(name), `${name}: ${after}`);
    // Not a gRPC program: go-grpc is still not loaded.
    for (const name of GO_GRPC_PROGRAMS) assert.ok(!after.includes(name), `${name}: ${after}`);
    const ringsAfter = (await mapsHeldBy(agent.pid)).filter((m) => m.type === "ringbuf");
    assert.equal(ringsAfter.length, 3, JSON.stringify(ringsAfter));

    // Counted exactly, server and client (the client is the second target: no second load).
    const client = await runGoClient({
      baseUrl: server.baseUrl,
      requests: PLAN.map((p) => `${p.method}:${p.path}:${p.count}`),
      beforeSending: async (pid) => {
        await agent.waitForPid(pid);
        const line = logs().split("\n").find((l) => l.includes(`INFO  instrumenting pid ${pid} `));
        assert.match(line ?? "", / with go-http(, kprobe-http)?$/);
      },
    });
    assert.deepEqual(
      [...client.statuses].sort(),
      [[200, 7], [201, 4], [500, 3]],
      client.output,
    );
    const serverSide = { target_instance: `${Deno.hostname()}:${server.pid}` };
    const clientSide = { target_instance: `${Deno.hostname()}:${client.pid}` };
    samples = await settledSamples(
      agent,
      (s) =>
        countsReached(countsByRequest(s, "http_server_duration_seconds_count", serverSide), WANT) &&
        countsReached(countsByRequest(s, "http_client_duration_seconds_count", clientSide), WANT),
    );
    assert.deepEqual(
      countsByRequest(samples, "http_server_duration_seconds_count", serverSide),
      WANT,
    );
    assert.deepEqual(
      countsByRequest(samples, "http_client_duration_seconds_count", clientSide),
      WANT,
    );
    assert.equal(logs().match(/loaded at its first target/g)?.length, 1, "loaded once");
    // The counters now come from the loaded object; go-grpc's are still there, at 0.
    const goHttp = ownSeries(samples, "go-http", GO_HTTP_KERNEL_COUNTERS);
    assert.equal(goHttp.kernel.go_server_starts, 14, JSON.stringify(goHttp));
    assert.equal(goHttp.kernel.go_client_starts, 14, JSON.stringify(goHttp));
    assert.equal(goHttp.lost, 0);
    assert.deepEqual(
      ownSeries(samples, "go-grpc", GO_GRPC_KERNEL_COUNTERS).kernel,
      zeros(GO_GRPC_KERNEL_COUNTERS),
    );
    assert.equal(
      sumSamples(samples, "redprobe_attach_failures_total", { plugin: "go-http" }),
      0,
    );

    const { code, logs: all } = await agent.stop();
    assert.equal(code, 0, all);
    assert.match(all, /every probe is detached/);
  },
});

Deno.test({
  ...base,
  name: "with executables configured, go-http loads at start (their probes serve every process)",
  async fn() {
    assertBpfAvailable();
    const serverBinary = await buildGoFixture("go_http/server");
    await using agent = await startAgent({
      config: {
        discovery: { select: [{ exe: serverBinary }] },
        plugins: { "go-http": { executables: ["/usr/bin/hey"] } },
      },
    });
    assert.match(agent.logs(), /plugin go-http loaded/);
    assert.match(agent.logs(), /plugin go-grpc ready: its BPF object loads at its first target/);
    assert.match(agent.logs(), /plugins running: .*go-http(, |$)/m);
    const held = await programsHeldBy(agent.pid);
    for (const name of GO_HTTP_PROGRAMS) assert.ok(held.includes(name), `${name}: ${held}`);
    for (const name of GO_GRPC_PROGRAMS) assert.ok(!held.includes(name), `${name}: ${held}`);
  },
});
