/**
 * tls-uprobe end to end: HTTPS served by nginx (Debian's, over libssl.so.3), Node.js (OpenSSL
 * linked into node) and Python's ssl module, and HTTPS requests made by curl, Python urllib and
 * http.client and wrk, each measured on the plaintext. Every exported count must EQUAL what was
 * sent, per label set, with kprobe-http running too (the default configuration): an HTTPS
 * request is counted once.
 *
 * The test's own requests go through Deno's TLS (rustls, not OpenSSL), so they are counted
 * only on the server side.
 */
import assert from "node:assert/strict";
import { type AgentHandle, startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { countsByRequest, findSamples, type Sample } from "../support/prom_text.ts";
import {
  sendRequests,
  type ServerHandle,
  startNginx,
  startNode,
  startPython,
  testCertificate,
} from "../support/mod.ts";
import { countsReached, pollUntil, settledSamples } from "../support/wait.ts";
import { assertWrkCounted, runClient, runWrk } from "../support/clients.ts";
import { programsHeldBy } from "../support/bpf_held.ts";
// tls-uprobe's programs that run on every socket of the machine, attached on demand.
import { SOCKET_PROGRAMS } from "../../plugins/tls_uprobe/mod.ts";

type Counts = Record<string, number>;

const instance = (pid: number) => ({ target_instance: `${Deno.hostname()}:${pid}` });

function serverCounts(samples: Sample[], pid: number): Counts {
  return countsByRequest(samples, "http_server_duration_seconds_count", instance(pid));
}

/**
 * The agent's samples once process `pid` has served at least `want` (at most a few seconds): a
 * client can read a response a moment before the probe that counts it on the server has run.
 */
function servedAtLeast(agent: AgentHandle, pid: number, want: Counts): Promise<Sample[]> {
  return settledSamples(agent, (s) => countsReached(serverCounts(s, pid), want));
}

function clientCounts(samples: Sample[], pid: number): Counts {
  return countsByRequest(samples, "http_client_duration_seconds_count", instance(pid));
}

/** The agent's kernel counter `event` of `plugin`. */
function kernelEvent(samples: Sample[], plugin: string, event: string): number {
  return findSamples(samples, "redprobe_kernel_events_total", { plugin, event })[0]?.value ?? 0;
}

/** Sends a known mix over HTTPS (Deno's TLS client) and returns what the server must report. */
async function sendMix(server: ServerHandle, keepAlive: boolean): Promise<Counts> {
  const caCert = Deno.readTextFileSync(testCertificate().ca);
  const send = async (method: string, path: string, count: number, body?: string) => {
    const result = await sendRequests({
      port: server.port,
      spec: { method, path, ...(body ? { body } : {}) },
      count,
      keepAlive,
      concurrency: 2,
      caCert,
    });
    assert.equal([...result.statuses.values()].reduce((a, b) => a + b, 0), count);
    return result.statuses;
  };
  await send("GET", "/hello", 7);
  await send("GET", "/users/123?x=1", 3);
  await send("GET", "/missing", 2);
  await send("POST", "/submit", 4, "x".repeat(100));
  return {
    "GET 200 /hello": 7,
    "GET 200 /users/{id}": 3,
    "GET 404 /missing": 2,
    "POST 200 /submit": 4,
  };
}

async function instrumented(agent: AgentHandle, server: ServerHandle): Promise<void> {
  for (const pid of await server.pids()) await agent.waitForPid(pid);
}

/** Whether the agent holds tls-uprobe's socket programs attached (all three, or none). */
async function socketProgramsAttached(agent: AgentHandle): Promise<boolean> {
  const linked = (await programsHeldBy(agent.pid, { linksOnly: true }))
    .filter((n) => (SOCKET_PROGRAMS as readonly string[]).includes(n));
  assert.ok(linked.length === 0 || linked.length === SOCKET_PROGRAMS.length, linked.join(", "));
  return linked.length > 0;
}

/**
 * Waits until the agent has attached tls-uprobe's socket programs (they come with the first SSL
 * call it sees: attachOnDemand). SSL calls made before that have no socket: a test that checks
 * what the socket gives (peer labels, a close) makes one measured SSL call first and waits here.
 */
async function waitForSocketPrograms(agent: AgentHandle): Promise<void> {
  assert.ok(
    await pollUntil(() => socketProgramsAttached(agent), { timeoutMs: 5_000, intervalMs: 10 }),
    `tls-uprobe's socket programs were not attached. Logs:\n${agent.logs()}`,
  );
}

Deno.test({
  name: "tls-uprobe counts HTTPS served by nginx, Node and Python exactly once",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent();
    const tls = testCertificate();
    const cases: [string, () => Promise<ServerHandle>, boolean][] = [
      [
        "nginx, 1 worker, keep-alive",
        () => startNginx({ workers: 1, keepalive: true, sendfile: true, tls }),
        true,
      ],
      [
        "nginx, 2 workers, a connection per request",
        () => startNginx({ workers: 2, keepalive: false, sendfile: true, tls }),
        false,
      ],
      ["Node https (OpenSSL inside node)", () => startNode({ tls: true }), true],
      ["Python http.server over ssl", () => startPython({ tls: true }), true],
    ];
    for (const [name, start, keepAlive] of cases) {
      await t.step(name, async () => {
        await using server = await start();
        await instrumented(agent, server);
        const expected = await sendMix(server, keepAlive);
        const samples = await servedAtLeast(agent, server.pid, expected);
        assert.deepEqual(serverCounts(samples, server.pid), expected);
        const sizes = findSamples(samples, "http_server_request_size_bytes_sum", {
          ...instance(server.pid),
          http_request_method: "POST",
        });
        assert.equal(sizes[0]?.value, 400);
      });
    }
    await t.step("kprobe-http saw the ciphertext and tracked none of it", async () => {
      const samples = await agent.samples();
      assert.equal(kernelEvent(samples, "kprobe-http", "connections_opened"), 0);
      assert.equal(kernelEvent(samples, "kprobe-http", "connections_not_http"), 0);
    });
  },
});

Deno.test({
  name:
    "tls-uprobe attaches its socket programs at the first SSL call, not before: plain HTTP pays nothing",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    const tls = testCertificate();
    await using plain = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    await using https = await startNginx({ workers: 1, keepalive: true, sendfile: true, tls });
    // Only these two servers, and no client of any other process: an SSL call elsewhere on this
    // machine (curl, a benchmark) would attach the programs too, and this test must know when.
    await using agent = await startAgent({
      config: {
        discovery: { select: [{ ports: [plain.port, https.port] }] },
        plugins: { "tls-uprobe": { clients: "targets" } },
      },
    });
    await instrumented(agent, plain);
    await instrumented(agent, https);

    await t.step(
      "plain HTTP only (nginx maps libssl, makes no SSL call): not attached",
      async () => {
        const sent = await sendRequests({
          port: plain.port,
          spec: { method: "GET", path: "/hello" },
          count: 20,
          keepAlive: true,
        });
        assert.deepEqual([...sent.statuses], [[200, 20]]);
        const want = { "GET 200 /hello": 20 };
        assert.deepEqual(
          serverCounts(await servedAtLeast(agent, plain.pid, want), plain.pid),
          want,
        );
        assert.equal(await socketProgramsAttached(agent), false);
        assert.doesNotMatch(agent.logs(), /first SSL call seen/);
      },
    );

    await t.step(
      "the first HTTPS requests: counted exactly, and the programs attached",
      async () => {
        const started = Date.now();
        const expected = await sendMix(https, true);
        await waitForSocketPrograms(agent);
        const samples = await servedAtLeast(agent, https.pid, expected);
        assert.deepEqual(serverCounts(samples, https.pid), expected);
        const line = /^(\S+) .*tls-uprobe: first SSL call seen: attached (.*) in [\d.]+ ms$/m.exec(
          agent.logs(),
        );
        assert.ok(line, agent.logs());
        assert.equal(line[2], SOCKET_PROGRAMS.join(", "));
        // From before the first connection's handshake (Deno's, ~90 ms cold: nginx's first
        // SSL_read follows it) to the end of the attach, by the agent's clock: the BPF code wakes
        // the agent at once (measured: within 1-3 ms of the handshake's end), not at its next
        // 200 ms poll.
        const ms = Date.parse(line[1]) - started;
        assert.ok(ms < 1_000, `${ms} ms`);
      },
    );

    await t.step("once attached they stay; later connections are counted exactly", async () => {
      const again = await sendMix(https, false);
      const twice = Object.fromEntries(Object.entries(again).map(([key, n]) => [key, 2 * n]));
      const counts = serverCounts(await servedAtLeast(agent, https.pid, twice), https.pid);
      assert.deepEqual(counts, twice);
      assert.equal(await socketProgramsAttached(agent), true);
      assert.equal((agent.logs().match(/first SSL call seen/g) ?? []).length, 1);
    });

    await t.step("the agent stops cleanly, on-demand links released with the others", async () => {
      const { code, logs } = await agent.stop();
      assert.equal(code, 0, logs);
      assert.match(logs, /every probe is detached/);
    });
  },
});

Deno.test({
  name: "tls-uprobe counts the HTTPS requests of curl, Python and wrk exactly",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent();
    const { ca } = testCertificate();
    await using server = await startNginx({
      workers: 1,
      keepalive: true,
      sendfile: true,
      tls: testCertificate(),
    });
    await instrumented(agent, server);
    const url = (path: string) => `${server.baseUrl}${path}`;

    await t.step("curl, one connection for several URLs", async () => {
      const urls = [
        ...Array(5).fill(url("/hello")),
        ...Array(2).fill(url("/missing")),
        url("/users/9"),
      ];
      const curl = await runClient("curl", [
        "-s",
        "--cacert",
        ca,
        ...urls.flatMap((u) => ["-o", "/dev/null", u]),
      ]);
      assert.deepEqual(clientCounts(await agent.samples(), curl.pid), {
        "GET 200 /hello": 5,
        "GET 200 /users/{id}": 1,
        "GET 404 /missing": 2,
      });
    });

    await t.step(
      "Python urllib (a connection each) and http.client (keep-alive, POST)",
      async () => {
        const script = [
          "import ssl, urllib.request, http.client",
          `ctx = ssl.create_default_context(cafile=${JSON.stringify(ca)})`,
          `for _ in range(4): urllib.request.urlopen(${
            JSON.stringify(url("/hello"))
          }, context=ctx).read()`,
          `c = http.client.HTTPSConnection("127.0.0.1", ${server.port}, context=ctx)`,
          "for _ in range(3):",
          "    c.request('POST', '/submit', body=b'x' * 50)",
          "    c.getresponse().read()",
          "c.close()",
        ].join("\n");
        const py = await runClient("python3", ["-c", script]);
        const samples = await agent.samples();
        assert.deepEqual(clientCounts(samples, py.pid), {
          "GET 200 /hello": 4,
          "POST 200 /submit": 3,
        });
        const sizes = findSamples(samples, "http_client_request_size_bytes_sum", {
          ...instance(py.pid),
          http_request_method: "POST",
        });
        assert.equal(sizes[0]?.value, 150);
      },
    );

    await t.step(
      "wrk over https: every request it completed, and those in flight at its end",
      async () => {
        const wrk = await runWrk(url("/hello"));
        assertWrkCounted(
          clientCounts(await agent.samples(), wrk.pid),
          wrk.completed,
          "GET 200 /hello",
          "GET 0 /hello",
        );
      },
    );

    await t.step("the server side counted every one of them, once", async () => {
      const served = serverCounts(await agent.samples(), server.pid);
      assert.ok((served["GET 200 /hello"] ?? 0) >= 5 + 4, JSON.stringify(served));
      assert.equal(served["POST 200 /submit"], 3);
      assert.equal(served["GET 404 /missing"], 2);
      assert.equal(served["GET 200 /users/{id}"], 1);
    });
  },
});

Deno.test({
  name: "tls-uprobe: failed handshakes, half-sent requests and a silent server",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { plugins: { "tls-uprobe": { request_timeout: "2s" } } },
    });
    const tls = testCertificate();
    await using server = await startNginx({ workers: 1, keepalive: true, sendfile: true, tls });
    await instrumented(agent, server);

    await t.step("a client that rejects the certificate: no request anywhere", async () => {
      const curl = new Deno.Command("curl", {
        args: ["-s", "-o", "/dev/null", `${server.baseUrl}/hello`], // no --cacert: verify fails
        stdout: "null",
        stderr: "null",
      }).spawn();
      assert.equal((await curl.status).code, 60, "curl: certificate verification failed");
      const samples = await agent.samples();
      assert.deepEqual(clientCounts(samples, curl.pid), {});
      assert.deepEqual(serverCounts(samples, server.pid), {});
    });

    await t.step(
      "garbage instead of a TLS handshake, and a half-sent request: nothing",
      async () => {
        const raw = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
        await raw.write(new Uint8Array(512).map((_, i) => (i * 37 + 11) & 0xff));
        raw.close();
        const conn = await Deno.connectTls({
          hostname: "127.0.0.1",
          port: server.port,
          caCerts: [Deno.readTextFileSync(tls.ca)],
        });
        await conn.handshake();
        await conn.write(new TextEncoder().encode("GET /hello HTTP/1.1\r\nHost: x\r\n"));
        conn.close();
        await new Promise((r) => setTimeout(r, 300));
        assert.deepEqual(serverCounts(await agent.samples(), server.pid), {});
      },
    );

    await t.step("plain HTTP sent to the HTTPS port: nginx's 400, counted once", async () => {
      const sent = await sendRequests({
        port: server.port,
        spec: { method: "GET", path: "/plain" },
        count: 1,
        keepAlive: false,
      });
      assert.deepEqual([...sent.statuses], [[400, 1]]);
      const want = { "GET 400 /plain": 1 };
      assert.deepEqual(
        serverCounts(await servedAtLeast(agent, server.pid, want), server.pid),
        want,
      );
    });

    await t.step("a server that never answers: an error on both sides, once", async () => {
      // Handshakes, reads the request, never writes; curl gives up after 1 s and closes.
      const silent = new Deno.Command("python3", {
        args: [
          "-c",
          [
            "import socket, ssl, sys, time",
            "ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)",
            `ctx.load_cert_chain(${JSON.stringify(tls.cert)}, ${JSON.stringify(tls.key)})`,
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()",
            "print(s.getsockname()[1], flush=True)",
            "c, _ = s.accept(); t = ctx.wrap_socket(c, server_side=True); t.recv(4096)",
            "time.sleep(30)",
          ].join("\n"),
        ],
        stdout: "piped",
        stderr: "null",
      }).spawn();
      try {
        const reader = silent.stdout.pipeThrough(new TextDecoderStream()).getReader();
        const port = Number((await reader.read()).value?.trim());
        reader.releaseLock();
        await agent.waitForPid(silent.pid);
        const curl = new Deno.Command("curl", {
          args: ["-s", "--cacert", tls.ca, "--max-time", "1", `https://127.0.0.1:${port}/never`],
          stdout: "null",
          stderr: "null",
        }).spawn();
        assert.equal((await curl.status).code, 28, "curl timed out");
        assert.deepEqual(clientCounts(await agent.samples(), curl.pid), { "GET 0 /never": 1 });
        // The server keeps its end open: its request times out (request_timeout 2s, swept).
        let served: Counts = {};
        await pollUntil(async () => {
          served = serverCounts(await agent.samples(), silent.pid);
          return Object.keys(served).length > 0;
        }, { timeoutMs: 6_000, intervalMs: 200 });
        assert.deepEqual(served, { "GET 0 /never": 1 });
      } finally {
        silent.kill("SIGKILL");
        await silent.status;
        await silent.stdout.cancel().catch(() => {});
      }
    });

    await t.step("the agent and the servers are still fine", async () => {
      const caCert = Deno.readTextFileSync(tls.ca);
      const sent = await sendRequests({
        port: server.port,
        spec: { method: "GET", path: "/hello" },
        count: 3,
        keepAlive: true,
        caCert,
      });
      assert.deepEqual([...sent.statuses], [[200, 3]]);
      const samples = await servedAtLeast(agent, server.pid, { "GET 200 /hello": 3 });
      assert.equal(serverCounts(samples, server.pid)["GET 200 /hello"], 3);
    });
  },
});

Deno.test({
  name:
    "tls-uprobe: with optional_labels, HTTPS client requests carry server_address and server_port, servers client_address, both url_path",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: {
        metrics: {
          optional_labels: ["server_address", "server_port", "client_address", "url_path"],
        },
      },
    });
    const tls = testCertificate();
    await using a = await startNginx({ workers: 1, keepalive: true, sendfile: true, tls });
    await using b = await startPython({ tls: true });
    await agent.waitForPid(a.pid);
    await agent.waitForPid(b.pid);
    // The peer comes from the socket programs, attached at the first SSL call the agent sees:
    // curl's first requests would fall in the gap before them and carry no peer. One request
    // first (server side, from 127.0.0.1, path /warmup), and the programs waited for.
    const warmup = await sendRequests({
      port: a.port,
      spec: { method: "GET", path: "/warmup" },
      count: 1,
      keepAlive: false,
      caCert: Deno.readTextFileSync(tls.ca),
    });
    assert.equal([...warmup.statuses.values()].reduce((x, y) => x + y, 0), 1);
    await waitForSocketPrograms(agent);
    const curl = await runClient("curl", [
      "-s",
      // From another loopback address: client_address must be the client's, not the server's.
      "--interface",
      "127.0.0.2",
      "--cacert",
      tls.ca,
      ...[a, a, a, b].flatMap((s) => ["-o", "/dev/null", `${s.baseUrl}/hello`]),
    ]);
    const samples = findSamples(
      await agent.samples(),
      "http_client_duration_seconds_count",
      instance(curl.pid),
    );
    const byPeer = Object.fromEntries(
      samples.map((s) => [`${s.labels.server_address}:${s.labels.server_port}`, s.value]),
    );
    assert.deepEqual(byPeer, { [`127.0.0.1:${a.port}`]: 3, [`127.0.0.1:${b.port}`]: 1 });
    assert.ok(samples.every((s) => s.labels.url_path === "/hello"));
    // The servers' side: who sent the requests, and the path (the query never).
    const all = await settledSamples(
      agent,
      (s) =>
        countsReached(serverCounts(s, a.pid), { "GET 200 /hello": 3 }) &&
        countsReached(serverCounts(s, b.pid), { "GET 200 /hello": 1 }),
    );
    for (const [server, n] of [[a, 3], [b, 1]] as const) {
      const served = findSamples(all, "http_server_duration_seconds_count", instance(server.pid))
        .filter((s) => s.labels.url_path !== "/warmup");
      assert.deepEqual(
        served.map((s) => [s.labels.client_address, s.labels.url_path, s.value]),
        [["127.0.0.2", "/hello", n]],
      );
    }
    // The warm-up request was measured too, before the socket programs were attached, and
    // learnt its peer from the socket of a later call (its response's SSL_write) or not at all.
    const warm = findSamples(all, "http_server_duration_seconds_count", instance(a.pid))
      .filter((s) => s.labels.url_path === "/warmup");
    assert.equal(warm.reduce((n, s) => n + s.value, 0), 1, JSON.stringify(warm));
  },
});

Deno.test({
  name: "tls-uprobe: two Node servers share one attachment to node's OpenSSL, until the last exits",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent();
    const first = await startNode({ tls: true });
    await using second = await startNode({ tls: true });
    try {
      await instrumented(agent, first);
      await instrumented(agent, second);
      assert.deepEqual(serverCounts(await agent.samples(), first.pid), {});
      const expectedFirst = await sendMix(first, true);
      const expectedSecond = await sendMix(second, true);
      const samples = await settledSamples(
        agent,
        (s) =>
          countsReached(serverCounts(s, first.pid), expectedFirst) &&
          countsReached(serverCounts(s, second.pid), expectedSecond),
      );
      assert.deepEqual(serverCounts(samples, first.pid), expectedFirst);
      assert.deepEqual(serverCounts(samples, second.pid), expectedSecond);
    } finally {
      await first.stop();
    }
    await agent.waitForRelease(first.pid);
    // The attachment stays for the server still running.
    const again = await sendMix(second, false);
    const twice = Object.fromEntries(Object.entries(again).map(([key, n]) => [key, 2 * n]));
    const counts = serverCounts(await servedAtLeast(agent, second.pid, twice), second.pid);
    for (const [key, n] of Object.entries(again)) assert.equal(counts[key], 2 * n, key);
  },
});
