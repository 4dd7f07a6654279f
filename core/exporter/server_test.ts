import assert from "node:assert/strict";
import { RedExporter } from "./exporter.ts";
import { type MetricsServerOptions, serveMetrics } from "./server.ts";

/** Serves `exporter` on 127.0.0.1 (a free port), runs `fn`, then shuts the server down. */
async function withServer(
  exporter: RedExporter,
  options: Partial<MetricsServerOptions>,
  fn: (base: string) => Promise<void>,
): Promise<void> {
  const server = serveMetrics(exporter, { hostname: "127.0.0.1", port: 0, ...options });
  try {
    await fn(`http://127.0.0.1:${server.addr.port}`);
  } finally {
    await server.shutdown();
  }
}

Deno.test("serveMetrics() GET /metrics returns the exposition with prom-client's content type", async () => {
  const exporter = new RedExporter();
  exporter.observe({
    kind: "http_server",
    pid: 1,
    durationSeconds: 0.01,
    method: "GET",
    status: 200,
    route: "/",
  }, { serviceName: "svc", serviceNamespace: "", instance: "h:1" });
  await withServer(exporter, {}, async (base) => {
    const res = await fetch(`${base}/metrics`);
    const body = await res.text();
    assert.equal(res.status, 200);
    assert.equal(res.headers.get("content-type"), exporter.registry.contentType);
    assert.match(res.headers.get("content-type")!, /^text\/plain; version=0\.0\.4/);
    assert.match(body, /^http_server_duration_seconds_count\{.*service_name="svc".*\} 1$/m);
    // The agent's memory gauge moves between two scrapes; everything else is the same.
    const steady = (text: string) => text.replace(/^redprobe_agent_memory_bytes\{.*$/gm, "");
    assert.equal(steady(body), steady(await exporter.metrics()));
  });
});

Deno.test("serveMetrics() calls beforeScrape before rendering each scrape", async () => {
  const exporter = new RedExporter();
  let scrapes = 0;
  const beforeScrape = () => {
    scrapes++;
    // What the agent does here (draining the rings) must show in this very scrape.
    exporter.setDiscoveredProcesses(scrapes * 10);
  };
  await withServer(exporter, { beforeScrape }, async (base) => {
    for (const expected of [10, 20]) {
      const body = await (await fetch(`${base}/metrics`)).text();
      assert.match(body, new RegExp(`^redprobe_discovered_processes ${expected}$`, "m"));
    }
    assert.equal(scrapes, 2);
    await (await fetch(`${base}/healthz`)).text();
    assert.equal(scrapes, 2, "only /metrics scrapes");
  });
});

Deno.test("serveMetrics() serves /metrics with a query string too", async () => {
  await withServer(new RedExporter(), {}, async (base) => {
    const res = await fetch(`${base}/metrics?name[]=up`);
    await res.text();
    assert.equal(res.status, 200);
  });
});

Deno.test("serveMetrics() answers HEAD /metrics with 200 and no body", async () => {
  await withServer(new RedExporter(), {}, async (base) => {
    const res = await fetch(`${base}/metrics`, { method: "HEAD" });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "");
  });
});

Deno.test("serveMetrics() GET /healthz returns ok", async () => {
  await withServer(new RedExporter(), {}, async (base) => {
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok\n");
  });
});

Deno.test("serveMetrics() GET / returns an index naming the endpoints", async () => {
  await withServer(new RedExporter(), {}, async (base) => {
    const res = await fetch(`${base}/`);
    const body = await res.text();
    assert.equal(res.status, 200);
    assert.match(body, /\/metrics/);
    assert.match(body, /\/healthz/);
  });
});

Deno.test("serveMetrics() returns 404 for an unknown path", async () => {
  await withServer(new RedExporter(), {}, async (base) => {
    for (const path of ["/nope", "/metrics/", "/metricsx", "/healthz/x"]) {
      const res = await fetch(`${base}${path}`);
      await res.text();
      assert.equal(res.status, 404, path);
    }
  });
});

Deno.test("serveMetrics() returns 405 for POST and other methods, without scraping", async () => {
  let scrapes = 0;
  await withServer(new RedExporter(), { beforeScrape: () => scrapes++ }, async (base) => {
    for (const method of ["POST", "PUT", "DELETE"]) {
      const res = await fetch(`${base}/metrics`, {
        method,
        body: method === "DELETE" ? null : "x",
      });
      await res.text();
      assert.equal(res.status, 405, method);
      assert.equal(res.headers.get("allow"), "GET, HEAD");
    }
  });
  assert.equal(scrapes, 0);
});

Deno.test("serveMetrics() reports the address it listens on through onListen", async () => {
  let listened: Deno.NetAddr | undefined;
  const server = serveMetrics(new RedExporter(), {
    hostname: "127.0.0.1",
    port: 0,
    onListen: (addr) => (listened = addr),
  });
  try {
    assert.ok(listened);
    assert.equal(listened.hostname, "127.0.0.1");
    assert.equal(listened.port, server.addr.port);
    assert.ok(listened.port > 0);
  } finally {
    await server.shutdown();
  }
});
