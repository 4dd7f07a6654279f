import assert from "node:assert/strict";
import {
  DEFAULT_DURATION_BUCKETS,
  DEFAULT_SIZE_BUCKETS,
  type ExposedMetric,
  HistogramFamily,
  HTTP_LABELS,
  METRIC_NAMES,
  RPC_LABELS,
} from "./red_metrics.ts";

function family(buckets: number[] = [0.1, 0.5, 1], maxSeries = 100): HistogramFamily {
  return new HistogramFamily({
    name: "test_duration_seconds",
    help: "test",
    labelNames: ["route"],
    buckets,
    maxSeries,
  });
}

/** le -> cumulative count, plus sum and count, of one series in `get()`'s output. */
function series(metric: ExposedMetric, route: string) {
  const mine = metric.values.filter((v) => v.labels.route === route);
  const buckets = Object.fromEntries(
    mine.filter((v) => v.metricName.endsWith("_bucket")).map((v) => [v.labels.le, v.value]),
  );
  return {
    buckets,
    sum: mine.find((v) => v.metricName.endsWith("_sum"))?.value,
    count: mine.find((v) => v.metricName.endsWith("_count"))?.value,
  };
}

Deno.test("HistogramFamily exposes cumulative buckets ending with +Inf, then _sum and _count", async () => {
  const f = family();
  for (const v of [0.05, 0.2, 0.3, 0.7, 3]) f.observe("a", () => ({ route: "/a" }), v);
  const metric = await f.get();
  assert.equal(metric.name, "test_duration_seconds");
  assert.equal(metric.type, "histogram");
  assert.equal(metric.help, "test");
  assert.deepEqual(
    metric.values.map((v) => [v.metricName, v.labels.le, v.value]),
    [
      ["test_duration_seconds_bucket", "0.1", 1],
      ["test_duration_seconds_bucket", "0.5", 3],
      ["test_duration_seconds_bucket", "1", 4],
      ["test_duration_seconds_bucket", "+Inf", 5],
      ["test_duration_seconds_sum", undefined, 0.05 + 0.2 + 0.3 + 0.7 + 3],
      ["test_duration_seconds_count", undefined, 5],
    ],
  );
  assert.deepEqual(metric.values[4].labels, { route: "/a" }, "_sum has no le label");
});

Deno.test("HistogramFamily counts a value equal to a bound in that bound's bucket (le)", async () => {
  const f = family([0, 0.1, 0.5, 1]);
  for (const v of [0, 0.1, 0.5, 1]) f.observe(String(v), () => ({ route: String(v) }), v);
  const metric = await f.get();
  assert.deepEqual(series(metric, "0").buckets, { "0": 1, "0.1": 1, "0.5": 1, "1": 1, "+Inf": 1 });
  assert.deepEqual(series(metric, "0.1").buckets, {
    "0": 0,
    "0.1": 1,
    "0.5": 1,
    "1": 1,
    "+Inf": 1,
  });
  assert.deepEqual(series(metric, "0.5").buckets, {
    "0": 0,
    "0.1": 0,
    "0.5": 1,
    "1": 1,
    "+Inf": 1,
  });
  assert.deepEqual(series(metric, "1").buckets, { "0": 0, "0.1": 0, "0.5": 0, "1": 1, "+Inf": 1 });
});

Deno.test("HistogramFamily counts a value above every bound only in +Inf", async () => {
  const f = family([1, 2]);
  f.observe("a", () => ({ route: "/a" }), 2.000001);
  assert.deepEqual(series(await f.get(), "/a"), {
    buckets: { "1": 0, "2": 0, "+Inf": 1 },
    sum: 2.000001,
    count: 1,
  });
});

Deno.test("HistogramFamily sorts its bucket bounds", () => {
  assert.deepEqual(family([1, 0.1, 0.5]).upperBounds, [0.1, 0.5, 1]);
});

Deno.test("HistogramFamily keeps one series per key and asks for labels once", async () => {
  const f = family();
  let calls = 0;
  const labels = (route: string) => () => {
    calls++;
    return { route };
  };
  for (let i = 0; i < 10; i++) f.observe("a", labels("/a"), 0.2);
  f.observe("b", labels("/b"), 0.7);
  assert.equal(calls, 2);
  assert.equal(f.seriesCount, 2);
  const metric = await f.get();
  assert.deepEqual(series(metric, "/a").count, 10);
  assert.ok(Math.abs(series(metric, "/a").sum! - 2) < 1e-9);
  assert.deepEqual(series(metric, "/b"), {
    buckets: { "0.1": 0, "0.5": 0, "1": 1, "+Inf": 1 },
    sum: 0.7,
    count: 1,
  });
});

Deno.test("HistogramFamily drops observations of new label sets at the cap and counts them", async () => {
  const f = family([1], 2);
  let labelCalls = 0;
  const labels = (route: string) => () => (labelCalls++, { route });
  assert.equal(f.observe("a", labels("/a"), 0.5), true);
  assert.equal(f.observe("b", labels("/b"), 0.5), true);
  assert.equal(f.observe("c", labels("/c"), 0.5), false);
  assert.equal(f.observe("d", labels("/d"), 0.5), false);
  assert.equal(f.observe("c", labels("/c"), 0.5), false);
  assert.equal(f.overflowed, 3);
  assert.equal(labelCalls, 2, "labels are not built for a dropped observation");
  // Existing label sets keep being recorded at the cap.
  assert.equal(f.observe("a", labels("/a"), 2), true);
  assert.equal(f.seriesCount, 2);
  const metric = await f.get();
  assert.equal(series(metric, "/a").count, 2);
  assert.equal(series(metric, "/c").count, undefined);
});

Deno.test("HistogramFamily.reset() forgets every series and the overflow count", async () => {
  const f = family([1], 1);
  f.observe("a", () => ({ route: "/a" }), 0.5);
  f.observe("b", () => ({ route: "/b" }), 0.5);
  f.reset();
  assert.equal(f.seriesCount, 0);
  assert.equal(f.overflowed, 0);
  assert.deepEqual((await f.get()).values, []);
  assert.equal(f.observe("b", () => ({ route: "/b" }), 0.5), true);
});

Deno.test("HistogramFamily with no observations exposes no values", async () => {
  const metric = await family().get();
  assert.deepEqual(metric.values, []);
  assert.equal(metric.aggregator, "sum");
});

Deno.test("the default buckets are strictly increasing and start at 0", () => {
  for (const buckets of [DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS]) {
    assert.equal(buckets[0], 0);
    assert.ok(buckets.every((b, i) => i === 0 || b > buckets[i - 1]), String(buckets));
  }
});

Deno.test("METRIC_NAMES differ between beyla and otel naming for HTTP only", () => {
  assert.equal(METRIC_NAMES.beyla.httpServerDuration, "http_server_duration_seconds");
  assert.equal(METRIC_NAMES.otel.httpServerDuration, "http_server_request_duration_seconds");
  assert.equal(METRIC_NAMES.otel.httpServerRequestSize, "http_server_request_body_size_bytes");
  assert.equal(METRIC_NAMES.beyla.rpcServerDuration, METRIC_NAMES.otel.rpcServerDuration);
  for (const names of Object.values(METRIC_NAMES)) {
    for (const name of Object.values(names)) assert.match(name, /^[a-z_]+_(seconds|bytes)$/);
  }
});

Deno.test("HTTP and RPC label names start with the target labels", () => {
  assert.deepEqual(HTTP_LABELS.slice(0, 3), [
    "service_name",
    "service_namespace",
    "target_instance",
  ]);
  assert.deepEqual(RPC_LABELS.slice(0, 3), [
    "service_name",
    "service_namespace",
    "target_instance",
  ]);
  assert.ok(HTTP_LABELS.includes("http_route") && RPC_LABELS.includes("rpc_grpc_status_code"));
});

Deno.test("HistogramFamily.removeWhere drops the series with that label value, and only them", () => {
  const f = new HistogramFamily({
    name: "x_seconds",
    help: "x",
    labelNames: ["target_instance"],
    buckets: [1],
    maxSeries: 10,
  });
  f.observe("a", () => ({ target_instance: "h:1" }), 0.5);
  f.observe("b", () => ({ target_instance: "h:2" }), 0.5);
  f.observe("c", () => ({ target_instance: "h:1" }), 2);
  assert.equal(f.removeWhere("target_instance", "h:1"), 2);
  assert.equal(f.seriesCount, 1);
  assert.equal(f.removeWhere("target_instance", "h:9"), 0);
});
