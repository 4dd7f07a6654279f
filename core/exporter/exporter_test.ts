import assert from "node:assert/strict";
import type { RedObservation } from "../plugin.ts";
import { hasTool, promtoolCheck } from "../../tests/support/tools.ts";
import { type PluginStatsSource, RedExporter, type TargetLabels } from "./exporter.ts";

const TARGET: TargetLabels = { serviceName: "shop", serviceNamespace: "prod", instance: "h1:400" };

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/**
 * Parses Prometheus text exposition samples (enough for these tests: escaped label values,
 * no timestamps). Comments and blank lines are skipped; TYPE lines are collected.
 */
function parseExposition(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1], type[2]);
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    const body = m[2] ?? "";
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/gy;
    let l: RegExpExecArray | null;
    let consumed = 0;
    while ((l = re.exec(body))) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === "n" ? "\n" : c));
      consumed = re.lastIndex;
    }
    assert.equal(consumed, body.length, `unparsed labels in ${line}`);
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { samples, types };
}

async function samples(exporter: RedExporter): Promise<Sample[]> {
  return parseExposition(await exporter.metrics()).samples;
}

function find(all: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return all.filter((s) =>
    s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)
  );
}

function value(all: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = find(all, name, labels);
  assert.equal(found.length, 1, `${name} ${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0].value;
}

type HttpObservation = Extract<RedObservation, { kind: "http_server" | "http_client" }>;

const httpServer = (o: Partial<HttpObservation> = {}): RedObservation => ({
  kind: "http_server",
  pid: 401,
  durationSeconds: 0.02,
  method: "GET",
  status: 200,
  route: "/users/{id}",
  requestSizeBytes: 100,
  ...o,
});

function source(over: Partial<PluginStatsSource> = {}): PluginStatsSource {
  return {
    id: "kprobe-http",
    recordsRead: () => 0,
    instrumented: () => 0,
    kernel: () => ({ lost: 0n, counters: new Map() }),
    ringFill: () => 0,
    ...over,
  };
}

const HTTP_LABELS = {
  service_name: "shop",
  service_namespace: "prod",
  target_instance: "h1:400",
  http_request_method: "GET",
  http_response_status_code: "200",
  http_route: "/users/{id}",
};

Deno.test("RedExporter records an HTTP server observation in the duration and size families", async () => {
  const e = new RedExporter();
  e.observe(httpServer({ durationSeconds: 0.02, requestSizeBytes: 100 }), TARGET);
  e.observe(httpServer({ durationSeconds: 0.3, requestSizeBytes: 5000 }), TARGET);
  const all = await samples(e);
  const duration = find(all, "http_server_duration_seconds_bucket");
  const size = find(all, "http_server_request_size_bytes_bucket");
  assert.ok(duration.length > 0 && size.length > 0);
  for (const s of [...duration, ...size]) {
    const { le: _, ...labels } = s.labels;
    assert.deepEqual(labels, HTTP_LABELS, "both families carry the same labels");
  }
  assert.equal(value(all, "http_server_duration_seconds_count", HTTP_LABELS), 2);
  assert.ok(Math.abs(value(all, "http_server_duration_seconds_sum", HTTP_LABELS) - 0.32) < 1e-9);
  assert.equal(value(all, "http_server_duration_seconds_bucket", { le: "0.025" }), 1);
  assert.equal(value(all, "http_server_duration_seconds_bucket", { le: "0.25" }), 1);
  assert.equal(value(all, "http_server_duration_seconds_bucket", { le: "0.5" }), 2);
  assert.equal(value(all, "http_server_duration_seconds_bucket", { le: "+Inf" }), 2);
  assert.equal(value(all, "http_server_request_size_bytes_count", HTTP_LABELS), 2);
  assert.equal(value(all, "http_server_request_size_bytes_sum", HTTP_LABELS), 5100);
  assert.equal(value(all, "http_server_request_size_bytes_bucket", { le: "128" }), 1);
  assert.equal(value(all, "http_server_request_size_bytes_bucket", { le: "4096" }), 1);
  assert.equal(value(all, "http_server_request_size_bytes_bucket", { le: "8192" }), 2);
  assert.equal(find(all, "http_client_duration_seconds_count").length, 0);
});

Deno.test("RedExporter buckets are cumulative and end with +Inf equal to _count", async () => {
  const e = new RedExporter({ durationBuckets: [0.01, 0.1, 1] });
  for (const d of [0.001, 0.01, 0.05, 0.1, 0.5, 2, 9]) {
    e.observe(httpServer({ durationSeconds: d }), TARGET);
  }
  const all = await samples(e);
  const buckets = find(all, "http_server_duration_seconds_bucket").map((
    s,
  ) => [s.labels.le, s.value]);
  assert.deepEqual(buckets, [["0.01", 2], ["0.1", 4], ["1", 5], ["+Inf", 7]]);
  assert.equal(value(all, "http_server_duration_seconds_count"), 7);
  assert.ok(Math.abs(value(all, "http_server_duration_seconds_sum") - 11.661) < 1e-9);
});

Deno.test("RedExporter records a missing request size as 0 bytes", async () => {
  const e = new RedExporter();
  e.observe(httpServer({ requestSizeBytes: undefined }), TARGET);
  const all = await samples(e);
  assert.equal(value(all, "http_server_request_size_bytes_bucket", { le: "0" }), 1);
  assert.equal(value(all, "http_server_request_size_bytes_sum"), 0);
});

Deno.test("RedExporter keeps separate series per status, method and route", async () => {
  const e = new RedExporter();
  e.observe(httpServer({ status: 200 }), TARGET);
  e.observe(httpServer({ status: 500 }), TARGET);
  e.observe(httpServer({ status: 0, method: "_OTHER" }), TARGET);
  e.observe(httpServer({ route: "/health" }), TARGET);
  e.observe(httpServer({}), { ...TARGET, instance: "h1:999" });
  const counts = find(await samples(e), "http_server_duration_seconds_count");
  assert.equal(counts.length, 5);
  assert.ok(counts.some((s) => s.labels.http_response_status_code === "0"));
});

Deno.test("RedExporter records HTTP client observations in the client families", async () => {
  const e = new RedExporter();
  e.observe(httpServer({ kind: "http_client" }), TARGET);
  const all = await samples(e);
  assert.equal(value(all, "http_client_duration_seconds_count", HTTP_LABELS), 1);
  assert.equal(value(all, "http_client_request_size_bytes_count", HTTP_LABELS), 1);
  assert.equal(find(all, "http_server_duration_seconds_count").length, 0);
});

Deno.test("RedExporter records RPC observations with the RPC labels", async () => {
  const e = new RedExporter();
  const rpc = {
    pid: 1,
    durationSeconds: 0.004,
    rpcMethod: "/shop.Cart/Add",
    rpcSystem: "grpc",
    grpcStatusCode: 14,
  };
  e.observe({ kind: "rpc_server", ...rpc }, TARGET);
  e.observe({ kind: "rpc_client", ...rpc, durationSeconds: 1 }, TARGET);
  const all = await samples(e);
  const labels = {
    service_name: "shop",
    service_namespace: "prod",
    target_instance: "h1:400",
    rpc_method: "/shop.Cart/Add",
    rpc_system: "grpc",
    rpc_grpc_status_code: "14",
  };
  assert.equal(value(all, "rpc_server_duration_seconds_count", labels), 1);
  assert.equal(value(all, "rpc_server_duration_seconds_sum", labels), 0.004);
  assert.equal(value(all, "rpc_server_duration_seconds_bucket", { ...labels, le: "0.005" }), 1);
  assert.equal(value(all, "rpc_client_duration_seconds_sum", labels), 1);
  const { le: _, ...rpcLabels } = find(all, "rpc_server_duration_seconds_bucket")[0].labels;
  assert.deepEqual(rpcLabels, labels);
  assert.equal(find(all, "http_server_duration_seconds_count").length, 0);
});

Deno.test('RedExporter with naming "otel" uses the OpenTelemetry metric names', async () => {
  const e = new RedExporter({ naming: "otel" });
  e.observe(httpServer(), TARGET);
  e.observe(httpServer({ kind: "http_client" }), TARGET);
  const text = await e.metrics();
  const { types } = parseExposition(text);
  for (
    const name of [
      "http_server_request_duration_seconds",
      "http_server_request_body_size_bytes",
      "http_client_request_duration_seconds",
      "http_client_request_body_size_bytes",
      "rpc_server_duration_seconds",
      "rpc_client_duration_seconds",
      "db_client_operation_duration_seconds",
    ]
  ) {
    assert.equal(types.get(name), "histogram", name);
  }
  assert.ok(!types.has("http_server_duration_seconds"));
  assert.ok(!types.has("http_server_request_size_bytes"));
  assert.equal(value(await samples(e), "http_server_request_duration_seconds_count"), 1);
  assert.deepEqual(
    find(await samples(e), "redprobe_series_overflow_total").map((s) => s.labels.metric).sort(),
    [
      "db_client_operation_duration_seconds",
      "http_client_request_body_size_bytes",
      "http_client_request_duration_seconds",
      "http_server_request_body_size_bytes",
      "http_server_request_duration_seconds",
      "rpc_client_duration_seconds",
      "rpc_server_duration_seconds",
    ],
  );
});

Deno.test("RedExporter exposes every family and its own gauges and counters from the start", async () => {
  const e = new RedExporter();
  const text = await e.metrics();
  const { samples: all, types } = parseExposition(text);
  for (
    const name of [
      "http_server_duration_seconds",
      "http_server_request_size_bytes",
      "http_client_duration_seconds",
      "http_client_request_size_bytes",
      "rpc_server_duration_seconds",
      "rpc_client_duration_seconds",
      "db_client_duration_seconds",
    ]
  ) {
    assert.equal(types.get(name), "histogram", name);
  }
  for (
    const name of [
      "redprobe_events_read_total",
      "redprobe_events_lost_kernel_total",
      "redprobe_kernel_events_total",
      "redprobe_series_overflow_total",
      "redprobe_events_dropped_total",
      "redprobe_attach_failures_total",
    ]
  ) {
    assert.equal(types.get(name), "counter", name);
  }
  assert.equal(types.get("redprobe_instrumented_processes"), "gauge");
  assert.equal(types.get("redprobe_ring_buffer_fill_ratio"), "gauge");
  assert.equal(value(all, "redprobe_discovered_processes"), 0);
  const overflow = find(all, "redprobe_series_overflow_total");
  assert.equal(overflow.length, 7, "one zero per family");
  assert.ok(overflow.every((s) => s.value === 0));
});

Deno.test("RedExporter exports a plugin's counters at 0 as soon as the plugin is added", async () => {
  const e = new RedExporter();
  e.addSource(
    source({ kernel: () => ({ lost: 0n, counters: new Map([["paths_truncated", 0n]]) }) }),
  );
  const all = await samples(e);
  const plugin = { plugin: "kprobe-http" };
  assert.equal(value(all, "redprobe_events_read_total", plugin), 0);
  assert.equal(value(all, "redprobe_events_lost_kernel_total", plugin), 0);
  assert.equal(value(all, "redprobe_instrumented_processes", plugin), 0);
  assert.equal(value(all, "redprobe_ring_buffer_fill_ratio", plugin), 0);
  assert.equal(
    value(all, "redprobe_kernel_events_total", { ...plugin, event: "paths_truncated" }),
    0,
  );
});

Deno.test("RedExporter reads a plugin's counters at each scrape", async () => {
  let read = 10;
  const e = new RedExporter();
  e.addSource(source({
    recordsRead: () => read,
    instrumented: () => 3,
    kernel: () => ({
      lost: 2n,
      counters: new Map([["connections_opened", 40n], ["late_responses", 1n]]),
    }),
    ringFill: () => 0.25,
  }));
  e.setDiscoveredProcesses(4);
  let all = await samples(e);
  const plugin = { plugin: "kprobe-http" };
  assert.equal(value(all, "redprobe_events_read_total", plugin), 10);
  assert.equal(value(all, "redprobe_events_lost_kernel_total", plugin), 2);
  assert.equal(value(all, "redprobe_instrumented_processes", plugin), 3);
  assert.equal(value(all, "redprobe_ring_buffer_fill_ratio", plugin), 0.25);
  assert.equal(value(all, "redprobe_discovered_processes"), 4);
  assert.equal(
    value(all, "redprobe_kernel_events_total", { ...plugin, event: "connections_opened" }),
    40,
  );
  read = 15;
  all = await samples(e);
  assert.equal(value(all, "redprobe_events_read_total", plugin), 15, "not added up twice");
});

Deno.test("RedExporter counts dropped events and attach failures by plugin and reason", async () => {
  const e = new RedExporter();
  e.dropped("kprobe-http", "decode_error");
  e.dropped("kprobe-http", "decode_error");
  e.dropped("kprobe-http", "unknown_pid");
  e.attachFailed("kprobe-http", "EPERM");
  const all = await samples(e);
  assert.equal(
    value(all, "redprobe_events_dropped_total", { plugin: "kprobe-http", reason: "decode_error" }),
    2,
  );
  assert.equal(
    value(all, "redprobe_events_dropped_total", { plugin: "kprobe-http", reason: "unknown_pid" }),
    1,
  );
  assert.equal(
    value(all, "redprobe_attach_failures_total", { plugin: "kprobe-http", reason: "EPERM" }),
    1,
  );
});

Deno.test("RedExporter drops label sets beyond the cap and counts them in redprobe_series_overflow_total", async () => {
  const e = new RedExporter({ maxSeriesPerMetric: 2 });
  for (const route of ["/a", "/b", "/c", "/d", "/a"]) e.observe(httpServer({ route }), TARGET);
  const all = await samples(e);
  assert.equal(find(all, "http_server_duration_seconds_count").length, 2);
  assert.equal(find(all, "http_server_request_size_bytes_count").length, 2);
  assert.equal(value(all, "http_server_duration_seconds_count", { http_route: "/a" }), 2);
  assert.equal(
    value(all, "redprobe_series_overflow_total", { metric: "http_server_duration_seconds" }),
    2,
  );
  assert.equal(
    value(all, "redprobe_series_overflow_total", { metric: "http_server_request_size_bytes" }),
    0,
    "a dropped observation is counted once, in the duration family",
  );
});

Deno.test("RedExporter escapes quotes, backslashes and newlines in label values", async () => {
  const e = new RedExporter();
  const route = '/a"b\\c\nd';
  e.observe(httpServer({ route }), { ...TARGET, serviceName: 'my "svc"\\' });
  const text = await e.metrics();
  assert.ok(
    text.includes(
      'http_server_duration_seconds_count{service_name="my \\"svc\\"\\\\",service_namespace="prod",target_instance="h1:400",http_request_method="GET",http_response_status_code="200",http_route="/a\\"b\\\\c\\nd"} 1',
    ),
    text.split("\n").find((l) => l.startsWith("http_server_duration_seconds_count")),
  );
  const count = find(parseExposition(text).samples, "http_server_duration_seconds_count")[0];
  assert.equal(count.labels.http_route, route, "parses back to the original value");
  assert.equal(count.labels.service_name, 'my "svc"\\');
  assert.ok(!text.includes('\nd"'), "no raw newline inside a label value");
});

Deno.test("RedExporter keeps UTF-8 and latin1 label values intact", async () => {
  const e = new RedExporter();
  e.observe(httpServer({ route: "/café/\xff" }), TARGET);
  const count = find(await samples(e), "http_server_duration_seconds_count")[0];
  assert.equal(count.labels.http_route, "/café/\xff");
});

// --- promtool --------------------------------------------------------------------------------

/** An exporter with every family and every internal metric holding data. */
function busyExporter(naming: "beyla" | "otel"): RedExporter {
  const e = new RedExporter({ naming, maxSeriesPerMetric: 3 });
  e.addSource(source({
    recordsRead: () => 12,
    instrumented: () => 2,
    kernel: () => ({ lost: 1n, counters: new Map([["connections_opened", 5n]]) }),
    ringFill: () => 0.5,
  }));
  e.setDiscoveredProcesses(2);
  e.dropped("kprobe-http", "decode_error");
  e.attachFailed("kprobe-http", "ENOENT");
  for (const route of ["/a", '/q"uote\\back\nline', "/c", "/overflow"]) {
    e.observe(httpServer({ route }), TARGET);
    e.observe(httpServer({ route, kind: "http_client", status: 0 }), TARGET);
  }
  const rpc = { pid: 1, durationSeconds: 0.2, rpcMethod: "/a.B/C", rpcSystem: "grpc" };
  e.observe({ kind: "rpc_server", ...rpc, grpcStatusCode: 0 }, TARGET);
  e.observe({ kind: "rpc_client", ...rpc, grpcStatusCode: 2 }, TARGET);
  return e;
}

for (const naming of ["beyla", "otel"] as const) {
  Deno.test({
    name: `the full exposition with ${naming} naming passes \`promtool check metrics\``,
    ignore: !hasTool("promtool"),
    async fn() {
      const text = await busyExporter(naming).metrics();
      const { success, output } = await promtoolCheck(text);
      assert.ok(success, `promtool failed:\n${output}`);
      assert.doesNotMatch(output, /error/i, output);
    },
  });
}

Deno.test({
  name: "the exposition of a fresh exporter passes `promtool check metrics`",
  ignore: !hasTool("promtool"),
  async fn() {
    const { success, output } = await promtoolCheck(await new RedExporter().metrics());
    assert.ok(success, `promtool failed:\n${output}`);
    assert.doesNotMatch(output, /error/i, output);
  },
});

Deno.test("the exposition has HELP and TYPE for every family and parses back", async () => {
  const text = await busyExporter("beyla").metrics();
  const { samples: all, types } = parseExposition(text);
  assert.ok(all.length > 0);
  for (const s of all) {
    const family = s.name.replace(/_(bucket|sum|count)$/, "");
    assert.ok(types.has(s.name) || types.has(family), `no TYPE for ${s.name}`);
  }
  for (const name of types.keys()) assert.match(text, new RegExp(`# HELP ${name} \\S`));
});

Deno.test("optional_labels add server_address and server_port to the HTTP client families only", async () => {
  const on = new RedExporter({ optionalLabels: ["server_port", "server_address"] });
  const client = (serverAddress: string, serverPort: number) =>
    httpServer({ kind: "http_client", serverAddress, serverPort });
  on.observe(client("10.0.0.1", 8080), TARGET);
  on.observe(client("10.0.0.1", 8080), TARGET);
  on.observe(client("10.0.0.2", 443), TARGET);
  on.observe(httpServer(), TARGET);
  let all = await samples(on);
  const counts = find(all, "http_client_duration_seconds_count").map((s) =>
    `${s.labels.server_address}:${s.labels.server_port}=${s.value}`
  );
  assert.deepEqual(counts.sort(), ["10.0.0.1:8080=2", "10.0.0.2:443=1"]);
  const server = find(all, "http_server_duration_seconds_count")[0];
  assert.equal("server_address" in server.labels, false, "not on the server side");

  const off = new RedExporter();
  off.observe(client("10.0.0.1", 8080), TARGET);
  off.observe(client("10.0.0.2", 443), TARGET);
  all = await samples(off);
  const merged = find(all, "http_client_duration_seconds_count");
  assert.equal(merged.length, 1, "without the option the peers share one series");
  assert.equal(merged[0].value, 2);
  assert.equal("server_port" in merged[0].labels, false);
});

Deno.test("RedExporter records database calls in db_client_duration_seconds", async () => {
  const e = new RedExporter();
  const call = {
    kind: "db_client" as const,
    pid: 1,
    durationSeconds: 0.002,
    dbSystem: "redis",
    dbOperation: "GET",
  };
  e.observe(call, TARGET);
  e.observe(call, TARGET);
  e.observe(
    { ...call, dbOperation: "INCR", errorType: "WRONGTYPE", durationSeconds: 0.02 },
    TARGET,
  );
  const all = await samples(e);
  const counts = find(all, "db_client_duration_seconds_count");
  assert.deepEqual(
    counts.map((s) => [s.labels.db_system, s.labels.db_operation, s.labels.error_type, s.value]),
    [["redis", "GET", "", 2], ["redis", "INCR", "WRONGTYPE", 1]],
  );
  assert.equal(counts[0].labels.service_name, TARGET.serviceName);
});

Deno.test("optional labels: url_path (no query) on both sides, client_address on servers only", async () => {
  const e = new RedExporter({ optionalLabels: ["url_path", "client_address", "server_port"] });
  e.observe(httpServer({ path: "/users/7?token=x", clientAddress: "10.1.2.3" }), TARGET);
  e.observe(
    httpServer({ kind: "http_client", path: "/a#frag", serverAddress: "h", serverPort: 81 }),
    TARGET,
  );
  const all = await samples(e);
  const [server] = find(all, "http_server_duration_seconds_count");
  assert.equal(server.labels.url_path, "/users/7");
  assert.equal(server.labels.client_address, "10.1.2.3");
  assert.ok(!("server_port" in server.labels));
  const [client] = find(all, "http_client_duration_seconds_count");
  assert.equal(client.labels.url_path, "/a");
  assert.equal(client.labels.server_port, "81");
  assert.ok(!("client_address" in client.labels) && !("server_address" in client.labels));
});
