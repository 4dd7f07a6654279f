/**
 * The agent's lifecycle as a user sees it: processes that start later are picked up within
 * about a second, processes that exit are released, SIGTERM and SIGINT leave no BPF program
 * behind, a bad configuration exits 2 before anything is attached, and traffic that is not
 * HTTP never invents requests.
 */
import assert from "node:assert/strict";
import { dirname, fromFileUrl, join } from "../support/paths.ts";
import { type AgentHandle, startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples, type Sample, sumSamples } from "../support/prom_text.ts";
import { sendRequests, type ServerHandle, startNginx, startPython } from "../support/mod.ts";
import { instanceOf } from "../support/isolated_agent.ts";
import { startPrometheus } from "../support/prometheus.ts";
import { pollUntil, settledSamples } from "../support/wait.ts";
import { idsHeldBy, loadedPrograms } from "../support/bpf_held.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");
/** The programs of the default plugins loaded at start (kprobe-http, tls-uprobe). */
const OUR_PROGRAMS = [
  ...["on_sock_recv", "on_sock_send", "on_sock_state"],
  ...["tls_enter", "tls_exit", "tls_free", "tls_sock_recv", "tls_sock_send", "tls_sock_state"],
  "tls_sweep",
];
/**
 * The programs of the plugins that load at their first target (loadOnFirstTarget): held once
 * the agent logged that they loaded (a Go program on this machine may be a target at start).
 */
const FIRST_TARGET_PROGRAMS: Record<string, string[]> = {
  "go-http": [
    ...["go_client_end", "go_client_start", "go_server_end", "go_server_start"],
    "go_server_status",
  ],
  "go-grpc": ["grpc_client_end", "grpc_client_start", "grpc_server_end", "grpc_server_start"],
};

/**
 * Sends `n` keep-alive GET /hello to `server`, asserts all were answered 200 and that the agent
 * counts exactly `n` for the server's target_instance; returns the samples that showed it.
 */
async function assertServedAndCounted(
  agent: AgentHandle,
  server: ServerHandle,
  n: number,
): Promise<Sample[]> {
  const result = await sendRequests({
    port: server.port,
    spec: { method: "GET", path: "/hello" },
    count: n,
    keepAlive: true,
  });
  assert.equal(result.statuses.get(200), n);
  const counted = (samples: Sample[]) =>
    sumSamples(samples, "http_server_duration_seconds_count", instanceOf(server));
  const samples = await settledSamples(agent, (s) => counted(s) >= n);
  assert.equal(counted(samples), n);
  return samples;
}

/** The programs the agent should hold, from what its log says has loaded so far. */
function expectedPrograms(logs: string): string[] {
  return [
    ...OUR_PROGRAMS,
    ...Object.entries(FIRST_TARGET_PROGRAMS).flatMap(([id, programs]) =>
      logs.includes(`${id}: BPF object loaded at its first target`) ? programs : []
    ),
  ].sort();
}

const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  ...base,
  name:
    "a server started after the agent is instrumented within about a second, and released when it exits",
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({ config: { discovery: { poll_interval: "250ms" } } });
    const instrumented = (samples: Sample[]) =>
      findSamples(samples, "redprobe_instrumented_processes", { plugin: "kprobe-http" })[0]
        ?.value ?? NaN;
    let during = NaN;
    const started = performance.now();
    const python = await startPython();
    try {
      await agent.waitForPid(python.pid, 5_000);
      const pickedUpMs = performance.now() - started;
      assert.ok(pickedUpMs < 2_000, `picked up after ${Math.round(pickedUpMs)} ms`);
      during = instrumented(await assertServedAndCounted(agent, python, 5));
    } finally {
      await python.stop();
    }
    await agent.waitForRelease(python.pid, 5_000);
    const after = await agent.samples();
    // Other servers on this machine are instrumented too: compare, do not assume zero.
    assert.equal(instrumented(after), during - 1, "released from redprobe_instrumented_processes");
    // Its series stay: a counter does not go away when the process does.
    assert.equal(sumSamples(after, "http_server_duration_seconds_count", instanceOf(python)), 5);
  },
});

Deno.test({
  ...base,
  name:
    "the agent gives Deno's start-up pages back to the kernel once its targets are instrumented, and counts exactly after",
  async fn() {
    assertBpfAvailable();
    const python = await startPython();
    try {
      await using agent = await startAgent({ args: ["--log-level", "debug"] });
      await agent.waitForPid(python.pid, 5_000);
      // The compaction runs 2 s after the last newly instrumented process (core/agent.ts).
      const returned = /returned ([\d.]+) MB of Deno's pages to the kernel/;
      assert.ok(
        await pollUntil(() => returned.test(agent.logs()), { timeoutMs: 15_000 }),
        agent.logs(),
      );
      assert.ok(Number(returned.exec(agent.logs())![1]) > 0, "the kernel took the advice");
      // The pages the agent needs come back at their next use.
      await assertServedAndCounted(agent, python, 20);
    } finally {
      await python.stop();
    }
  },
});

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.test({
    ...base,
    name: `${signal} stops the agent with status 0 and leaves no BPF program attached`,
    async fn() {
      assertBpfAvailable();
      const agent = await startAgent();
      let held = new Set<number>();
      try {
        // Read again if a plugin loaded at its first target meanwhile (the log changed).
        for (let attempt = 0; attempt < 5; attempt++) {
          const before = expectedPrograms(agent.logs());
          held = idsHeldBy(agent.pid);
          const loaded = await loadedPrograms();
          if (attempt < 4 && expectedPrograms(agent.logs()).join() !== before.join()) continue;
          assert.deepEqual([...held].map((id) => loaded.get(id)).sort(), before);
          break;
        }
      } finally {
        Deno.kill(agent.pid, signal);
      }
      const { code, logs } = await agent.stop();
      assert.equal(code, 0, logs);
      assert.match(logs, /every probe is detached/);
      // The kernel frees programs asynchronously (after an RCU grace period): allow a moment.
      let left: number[] = [];
      for (let i = 0; i < 50; i++) {
        const after = await loadedPrograms();
        left = [...held].filter((id) => after.has(id));
        if (left.length === 0) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.deepEqual(left, [], "programs still loaded 5 s after exit");
    },
  });
}

Deno.test({
  ...base,
  name: "a bad configuration exits with status 2, names the file and the key, and attaches nothing",
  async fn() {
    assertBpfAvailable();
    const file = await Deno.makeTempFile({ suffix: ".yaml" });
    try {
      await Deno.writeTextFile(file, "plugins:\n  kprobe-http:\n    request_timeout: soon\n");
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "--quiet", join(ROOT, "main.ts"), "--config", file],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 2, stderr);
      assert.ok(stderr.includes(file), stderr);
      assert.match(stderr, /plugins\.kprobe-http\.request_timeout/);
      // The configuration is checked before any plugin is loaded.
      assert.doesNotMatch(stderr, /loaded|instrumenting/);
    } finally {
      await Deno.remove(file);
    }
  },
});

Deno.test({
  ...base,
  name: "traffic that is not HTTP on a watched port invents no request and crashes nothing",
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent();
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);
    const junk = [
      new Uint8Array([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03]), // TLS hello
      new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), // HTTP/2 preface
      crypto.getRandomValues(new Uint8Array(4096)),
      new TextEncoder().encode("\r\n\r\n\r\n"),
    ];
    for (const bytes of junk) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: nginx.port });
      await conn.write(bytes).catch(() => 0);
      const buf = new Uint8Array(4096);
      await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise((r) => setTimeout(r, 300)),
      ]);
      conn.close();
    }
    // The server and the agent still work, and count exactly the real requests.
    const result = await sendRequests({
      port: nginx.port,
      spec: { method: "GET", path: "/hello" },
      count: 3,
      keepAlive: true,
    });
    assert.equal(result.statuses.get(200), 3);
    const ofNginx = instanceOf(nginx);
    const samples = await settledSamples(
      agent,
      (s) => sumSamples(s, "http_server_duration_seconds_count", ofNginx) >= 3,
    );
    const mine = findSamples(samples, "http_server_duration_seconds_count", ofNginx);
    assert.deepEqual(
      mine.map((
        s,
      ) => [
        s.labels.http_request_method,
        s.labels.http_response_status_code,
        s.labels.http_route,
        s.value,
      ]),
      [["GET", "200", "/hello", 3]],
    );
  },
});

Deno.test({
  ...base,
  name:
    "discovery.select and exclude choose the targets among real servers, and name them; instance_host names the host",
  async fn() {
    assertBpfAvailable();
    await using a = await startPython();
    await using b = await startPython();
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    await using agent = await startAgent({
      config: {
        discovery: {
          select: [{ ports: [a.port], name: "chosen" }, { ports: [b.port] }, { exe: "*/nginx" }],
          exclude: [{ ports: [b.port] }],
        },
      },
      // As the Kubernetes DaemonSet sets it (the pod's own host name is not the node's).
      env: { REDPROBE_DISCOVERY_INSTANCE_HOST: "node-7" },
    });
    await agent.waitForPid(a.pid);
    // Every nginx process: the worker, which serves, is instrumented a moment after the master.
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);
    for (const server of [a, b]) {
      await sendRequests({
        port: server.port,
        spec: { method: "GET", path: "/hello" },
        count: 2,
        keepAlive: true,
      });
    }
    const countIn = (samples: Sample[], pid: number) =>
      sumSamples(samples, "http_server_duration_seconds_count", {
        target_instance: `node-7:${pid}`,
      });
    const samples = await settledSamples(agent, (s) => countIn(s, a.pid) >= 2);
    const count = (pid: number) => countIn(samples, pid);
    assert.equal(count(a.pid), 2);
    assert.equal(count(b.pid), 0, "excluded, though a selector matches it");
    const named = findSamples(samples, "http_server_duration_seconds_count", {
      target_instance: `node-7:${a.pid}`,
    });
    assert.equal(named[0]?.labels.service_name, "chosen");
    assert.ok(!agent.logs().includes(`instrumenting pid ${b.pid} `));
  },
});

Deno.test({
  ...base,
  name: "discovery.exclude_telemetry leaves Prometheus alone, as a server and as a client",
  async fn() {
    assertBpfAvailable();
    await using python = await startPython();
    await using agent = await startAgent({ config: { discovery: { exclude_telemetry: true } } });
    await agent.waitForPid(python.pid);
    const prometheus = await startPrometheus({
      target: `127.0.0.1:${python.port}`,
      metricsPath: "/hello",
      job: "python",
    });
    try {
      await pollUntil(
        () => agent.logs().includes(`leaving pid ${prometheus.pid} alone: discovery.exclude`),
        { timeoutMs: 10_000 },
      );
      assert.match(agent.logs(), new RegExp(`leaving pid ${prometheus.pid} alone`));
      // Its scrapes reach the Python server (counted there), and its API answers.
      const scraped = await pollUntil(
        async () =>
          sumSamples(
            await agent.samples(),
            "http_server_duration_seconds_count",
            instanceOf(python),
          ) >= 2,
        { timeoutMs: 15_000, intervalMs: 200 },
      );
      assert.ok(scraped, `no scrape counted at the Python server: ${prometheus.stderr()}`);
      for (let i = 0; i < 3; i++) {
        await (await fetch(`${prometheus.api}/api/v1/query?query=up`)).text();
      }
    } finally {
      await prometheus.stop();
    }
    const samples = await agent.samples();
    const ofPrometheus = samples.filter((s) =>
      s.labels.service_name === "prometheus" && s.name.endsWith("_count")
    );
    assert.deepEqual(
      ofPrometheus.map((s) => s.name),
      [],
      "prometheus is neither server nor client",
    );
    assert.ok(!agent.logs().includes(`instrumenting pid ${prometheus.pid} `));
  },
});
