/**
 * OTLP export end to end: the agent, configured only by the standard OpenTelemetry variables
 * (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_METRIC_EXPORT_INTERVAL), pushes metrics and spans for a
 * real nginx to a receiver that decodes them with the official OTLP protobuf definitions. The
 * pushed histogram counts must EQUAL the requests sent per attribute set (and match the
 * Prometheus endpoint), and there must be exactly one span per request, with the right kind,
 * name, attributes, status, and start and end times inside the test's wall-clock window.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples } from "../support/prom_text.ts";
import { type RequestSpec, sendRequests, startNginx } from "../support/mod.ts";
import { type HistogramPoint, startOtlpReceiver } from "../support/otlp_receiver.ts";
import { waitFor } from "../support/wait.ts";
import { DEFAULT_DURATION_BUCKETS } from "../../core/exporter/red_metrics.ts";

const PLAN: { spec: RequestSpec; count: number; status: number; route: string }[] = [
  { spec: { method: "GET", path: "/hello" }, count: 20, status: 200, route: "/hello" },
  { spec: { method: "GET", path: "/error" }, count: 6, status: 500, route: "/error" },
  { spec: { method: "GET", path: "/users/42?q=1" }, count: 4, status: 200, route: "/users/{id}" },
];
const TOTAL = PLAN.reduce((n, p) => n + p.count, 0);

Deno.test({
  name: "OTLP: metrics and one span per request reach a receiver, counts exact",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using receiver = startOtlpReceiver();
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    const agent = await startAgent({
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_METRIC_EXPORT_INTERVAL: "500",
      },
    });
    let stopped = false;
    try {
      // Every nginx process: the worker, which serves, is instrumented a moment after the master.
      for (const pid of await nginx.pids()) await agent.waitForPid(pid);
      assert.match(agent.logs(), /OTLP export: metrics to http:\/\/127\.0\.0\.1:\d+\/v1\/metrics/);
      assert.match(agent.logs(), /traces on: the plugins send one record per request/);
      const startWallNs = BigInt(Date.now()) * 1_000_000n;
      for (const p of PLAN) {
        const r = await sendRequests({
          port: nginx.port,
          spec: p.spec,
          count: p.count,
          keepAlive: true,
        });
        assert.equal(r.statuses.get(p.status), p.count);
      }
      const endWallNs = BigInt(Date.now()) * 1_000_000n;

      const nginxPoints = () =>
        receiver.latest("http.server.request.duration").filter((p) =>
          p.resource["service.name"] === "nginx"
        );
      const countOf = (points: HistogramPoint[], route: string) =>
        points.filter((p) => p.attributes["http.route"] === route)
          .reduce((n, p) => n + p.count, 0);
      await waitFor(
        () => PLAN.every((p) => countOf(nginxPoints(), p.route) === p.count),
        {
          timeoutMs: 15_000,
          what: "the pushed nginx counts to reach what was sent",
          detail: () =>
            `${receiver.metricPushes.length} pushes; latest: ${
              JSON.stringify(
                receiver.latest("http.server.request.duration").map((p) => [
                  p.resource["service.name"],
                  p.attributes,
                  p.count,
                ]),
              )
            }\n${agent.logs().split("\n").filter((l) => /OTLP|traces|error/i.test(l)).join("\n")}`,
        },
      );
      // Exact per attribute set, and the same numbers as the Prometheus endpoint.
      const points = nginxPoints();
      assert.equal(points.length, PLAN.length, JSON.stringify(points.map((p) => p.attributes)));
      const prom = await agent.samples();
      for (const p of PLAN) {
        const [point] = points.filter((x) => x.attributes["http.route"] === p.route);
        assert.deepEqual(point.attributes, {
          "http.request.method": "GET",
          "http.response.status_code": p.status,
          "http.route": p.route,
          ...(p.status >= 500 ? { "error.type": String(p.status) } : {}),
        });
        assert.equal(point.count, p.count);
        assert.equal(point.bucketCounts.reduce((a, b) => a + b, 0), p.count);
        assert.deepEqual(point.explicitBounds, DEFAULT_DURATION_BUCKETS);
        assert.equal(point.unit, "s");
        assert.equal(point.temporality, "AGGREGATION_TEMPORALITY_CUMULATIVE");
        assert.ok(point.sum > 0 && point.startTimeUnixNano <= point.timeUnixNano);
        const [sample] = findSamples(prom, "http_server_duration_seconds_count", {
          service_name: "nginx",
          http_route: p.route,
        });
        assert.equal(sample?.value, p.count, `Prometheus count for ${p.route}`);
      }
      assert.equal(points[0].resource["service.instance.id"], `${Deno.hostname()}:${nginx.pid}`);
      const sizes = receiver.latest("http.server.request.body.size")
        .filter((p) => p.resource["service.name"] === "nginx");
      assert.equal(sizes.reduce((n, p) => n + p.count, 0), TOTAL);
      assert.equal(sizes[0].unit, "By");

      // One server span per request.
      const serverSpans = () =>
        receiver.spans.filter((s) => s.resource["service.name"] === "nginx");
      await waitFor(() => serverSpans().length >= TOTAL, {
        timeoutMs: 10_000,
        what: "one span per nginx request",
      });
      const spans = serverSpans();
      assert.equal(spans.length, TOTAL);
      assert.equal(new Set(spans.map((s) => s.spanId)).size, TOTAL, "span ids are unique");
      for (const p of PLAN) {
        const mine = spans.filter((s) => s.attributes["http.route"] === p.route);
        assert.equal(mine.length, p.count, `spans of ${p.route}`);
        for (const s of mine) {
          assert.equal(s.kind, "SPAN_KIND_SERVER");
          assert.equal(s.name, `GET ${p.route}`);
          assert.equal(s.scope, "redprobe");
          assert.equal(s.attributes["http.response.status_code"], p.status);
          assert.equal(s.attributes["url.path"], p.spec.path.split("?")[0]);
          assert.equal(s.statusCode, p.status >= 500 ? "STATUS_CODE_ERROR" : "STATUS_CODE_UNSET");
          // From the kernel's clock, converted to wall time: inside the window the requests
          // were sent in (with a little slack for clock reading).
          assert.ok(s.startTimeUnixNano <= s.endTimeUnixNano);
          assert.ok(
            s.startTimeUnixNano >= startWallNs - 50_000_000n &&
              s.endTimeUnixNano <= endWallNs + 50_000_000n,
            `span ${s.startTimeUnixNano}..${s.endTimeUnixNano} outside ${startWallNs}..${endWallNs}`,
          );
        }
      }
      // The test's own requests are client spans of this process.
      const clientSpans = receiver.spans.filter((s) =>
        s.kind === "SPAN_KIND_CLIENT" && s.resource["service.name"] === "deno" &&
        PLAN.some((p) => s.attributes["url.path"] === p.spec.path.split("?")[0])
      );
      assert.equal(clientSpans.length, TOTAL, "one client span per request the test sent");
      assert.equal(receiver.errors.length, 0, receiver.errors.join("\n"));

      // A clean stop pushes what is left and says nothing failed.
      const { code, logs } = await agent.stop();
      stopped = true;
      assert.equal(code, 0);
      assert.doesNotMatch(logs, /OTLP \w+ export failed/);
    } finally {
      if (!stopped) await agent.stop();
    }
  },
});

Deno.test({
  name: "OTLP: a receiver that is down is counted and logged once, and Prometheus still works",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    // A port nobody listens on.
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = listener.addr.port;
    listener.close();
    await using agent = await startAgent({
      env: {
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `http://127.0.0.1:${port}/v1/metrics`,
        OTEL_TRACES_EXPORTER: "none",
        OTEL_METRIC_EXPORT_INTERVAL: "300",
      },
    });
    // Some traffic, so there is something to push.
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    // Every nginx process: the worker, which serves, is instrumented a moment after the master.
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);
    await sendRequests({
      port: nginx.port,
      spec: { method: "GET", path: "/hello" },
      count: 3,
      keepAlive: true,
    });
    await waitFor(async () => {
      const [failed] = findSamples(await agent.samples(), "redprobe_otlp_exports_total", {
        signal: "metrics",
        result: "failed",
      });
      return (failed?.value ?? 0) >= 2;
    }, {
      timeoutMs: 15_000,
      what: "failed OTLP pushes to be counted",
      detail: () => agent.logs().slice(-2000),
    });
    assert.equal((agent.logs().match(/OTLP metrics export failed/g) ?? []).length, 1);
    assert.doesNotMatch(agent.logs(), /traces on/);
  },
});

Deno.test({
  name: "OTLP metrics only (histograms kept in the kernel): pushed counts equal what was sent",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using receiver = startOtlpReceiver();
    await using nginx = await startNginx({ workers: 2, keepalive: false, sendfile: true });
    await using agent = await startAgent({
      env: {
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `${receiver.url}/v1/metrics`,
        OTEL_TRACES_EXPORTER: "none",
        OTEL_METRIC_EXPORT_INTERVAL: "300",
      },
    });
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);
    assert.doesNotMatch(agent.logs(), /traces on/);
    for (const p of PLAN) {
      await sendRequests({ port: nginx.port, spec: p.spec, count: p.count, keepAlive: false });
    }
    const nginxCount = (route: string) =>
      receiver.latest("http.server.request.duration")
        .filter((x) =>
          x.resource["service.name"] === "nginx" && x.attributes["http.route"] === route
        )
        .reduce((n, x) => n + x.count, 0);
    await waitFor(() => PLAN.every((p) => nginxCount(p.route) === p.count), {
      timeoutMs: 15_000,
      what: "the pushed counts (two workers, a connection per request) to equal what was sent",
      detail: () => PLAN.map((p) => `${p.route}: ${nginxCount(p.route)}`).join(", "),
    });
    assert.equal(receiver.spans.length, 0, "no traces when OTEL_TRACES_EXPORTER=none");
    assert.equal(receiver.errors.length, 0, receiver.errors.join("\n"));
  },
});
