/**
 * kprobe-http's client side: requests made by processes that listen nowhere (curl, Python's
 * urllib and http.client, wrk) and by nginx as a reverse proxy, measured from the socket
 * tracepoints from their first request,
 * however short-lived. Each exported `http_client_duration_seconds_count` must EQUAL what the
 * client sent, per label set; a request that never got an answer is counted with status 0.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { countsByRequest, findSamples, type Sample, sumSamples } from "../support/prom_text.ts";
import { sendRequests, startNginx, startPython } from "../support/mod.ts";
import { assertWrkCounted, runClient, runWrk } from "../support/clients.ts";
import { settledSamples } from "../support/wait.ts";

type Counts = Record<string, number>;

/** http_client_duration_seconds_count per "METHOD STATUS ROUTE", for the processes `match` selects. */
function clientCounts(samples: Sample[], match: Record<string, string>): Counts {
  return countsByRequest(samples, "http_client_duration_seconds_count", match);
}

const instance = (pid: number) => ({ target_instance: `${Deno.hostname()}:${pid}` });

Deno.test({
  name: "kprobe-http counts the requests of curl, Python and wrk exactly, from their first",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent();
    await using server = await startPython();
    await agent.waitForPid(server.pid);
    const url = (path: string) => `${server.baseUrl}${path}`;

    await t.step("curl, one connection for several URLs, exits at once", async () => {
      const urls = [
        ...Array.from({ length: 5 }, () => url("/hello")),
        ...Array.from({ length: 3 }, () => url("/missing")),
        url("/users/42?x=1"),
      ];
      const curl = await runClient("curl", ["-s", ...urls.flatMap((u) => ["-o", "/dev/null", u])]);
      const samples = await agent.samples();
      assert.deepEqual(clientCounts(samples, instance(curl.pid)), {
        "GET 200 /hello": 5,
        "GET 200 /users/{id}": 1,
        "GET 404 /missing": 3,
      });
      const name = findSamples(samples, "http_client_duration_seconds_count", instance(curl.pid))[0]
        ?.labels.service_name;
      assert.equal(name, "curl");
    });

    await t.step(
      "Python urllib (a connection each) and http.client (keep-alive, POST)",
      async () => {
        const script = [
          "import urllib.request, http.client, sys",
          `base = "${server.baseUrl}"`,
          "for _ in range(4): urllib.request.urlopen(base + '/hello').read()",
          "c = http.client.HTTPConnection('127.0.0.1', " + server.port + ")",
          "for _ in range(3):",
          "    c.request('POST', '/submit', body=b'x' * 50)",
          "    c.getresponse().read()",
          "c.close()",
        ].join("\n");
        const py = await runClient("python3", ["-c", script]);
        const samples = await agent.samples();
        assert.deepEqual(clientCounts(samples, instance(py.pid)), {
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
      "wrk: every request it completed, and those in flight at its end",
      async () => {
        const wrk = await runWrk(url("/hello"));
        assertWrkCounted(
          clientCounts(await agent.samples(), instance(wrk.pid)),
          wrk.completed,
          "GET 200 /hello",
          "GET 0 /hello",
        );
      },
    );

    await t.step("nginx as a reverse proxy: its keep-alive upstream requests", async () => {
      await using proxy = await startNginx({
        workers: 1,
        keepalive: true,
        sendfile: true,
        upstreamPort: server.port,
      });
      for (const pid of await proxy.pids()) await agent.waitForPid(pid);
      const sent = await sendRequests({
        port: proxy.port,
        spec: { method: "GET", path: "/proxy/hello" },
        count: 6,
        keepAlive: true,
        concurrency: 2,
      });
      assert.deepEqual([...sent.statuses], [[200, 6]]);
      const missing = await sendRequests({
        port: proxy.port,
        spec: { method: "GET", path: "/proxy/missing" },
        count: 2,
        keepAlive: false,
        concurrency: 1,
      });
      assert.deepEqual([...missing.statuses], [[404, 2]]);
      const samples = await agent.samples();
      // nginx's workers report under the master's pid (target_instance).
      assert.deepEqual(clientCounts(samples, instance(proxy.pid)), {
        "GET 200 /hello": 6,
        "GET 404 /missing": 2,
      });
    });

    await t.step(
      "a server that never answers: the request is counted once, as an error",
      async () => {
        // Accepts, reads, never writes; curl gives up after 1 s and closes the connection.
        const silent = new Deno.Command("python3", {
          args: [
            "-c",
            "import socket, time\n" +
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n" +
            "print(s.getsockname()[1], flush=True)\n" +
            "c, _ = s.accept(); c.recv(4096); time.sleep(20)",
          ],
          stdout: "piped",
          stderr: "null",
        }).spawn();
        try {
          const reader = silent.stdout.pipeThrough(new TextDecoderStream()).getReader();
          const port = Number((await reader.read()).value?.trim());
          reader.releaseLock();
          const curl = new Deno.Command("curl", {
            args: ["-s", "--max-time", "1", `http://127.0.0.1:${port}/never`],
            stdout: "null",
            stderr: "null",
          }).spawn();
          const status = await curl.status;
          assert.equal(status.code, 28, "curl timed out");
          assert.deepEqual(clientCounts(await agent.samples(), instance(curl.pid)), {
            "GET 0 /never": 1,
          });
        } finally {
          silent.kill("SIGKILL");
          await silent.status;
          await silent.stdout.cancel().catch(() => {});
        }
      },
    );

    await t.step(
      "the agent's own requests are not measured; the server side still is",
      async () => {
        const samples = await agent.samples();
        assert.deepEqual(clientCounts(samples, instance(agent.pid)), {});
        const served = findSamples(
          samples,
          "http_server_duration_seconds_count",
          instance(server.pid),
        )
          .reduce((n, s) => n + s.value, 0);
        assert.ok(served >= 5 + 3 + 1 + 4 + 3, `server side: ${served}`);
      },
    );
  },
});

Deno.test({
  name:
    "with optional_labels, client requests carry server_address and server_port, servers client_address, both url_path",
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
    await using a = await startPython();
    await using b = await startPython();
    await agent.waitForPid(a.pid);
    await agent.waitForPid(b.pid);
    const curl = await runClient("curl", [
      "-s",
      // From another loopback address: client_address must be the client's, not the server's.
      "--interface",
      "127.0.0.2",
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
    // The servers' side: who sent the requests, and the path (the query never). curl can have
    // read b's response before b's probe counted it: wait for both servers' counts.
    const servedBy = (samples: Sample[], pid: number) =>
      sumSamples(samples, "http_server_duration_seconds_count", instance(pid));
    const all = await settledSamples(
      agent,
      (s) => servedBy(s, a.pid) >= 3 && servedBy(s, b.pid) >= 1,
    );
    for (const [server, n] of [[a, 3], [b, 1]] as const) {
      const served = findSamples(all, "http_server_duration_seconds_count", instance(server.pid));
      assert.deepEqual(
        served.map((s) => [s.labels.client_address, s.labels.url_path, s.value]),
        [["127.0.0.2", "/hello", n]],
      );
    }
  },
});
