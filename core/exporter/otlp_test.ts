import assert from "node:assert/strict";
import { SpanKind } from "@opentelemetry/api";
import { RedExporter } from "./exporter.ts";
import {
  labelsToAttributes,
  type OtlpConfig,
  signalUrl,
  spanShape,
  toResourceMetrics,
} from "./otlp.ts";
import { loadConfig } from "../config.ts";
import { BUILTIN_PLUGINS } from "../../plugins/registry.ts";

const OFF: OtlpConfig = {
  endpoint: "",
  metrics_endpoint: "",
  traces_endpoint: "",
  metrics: true,
  traces: true,
  export_interval: 60_000,
  headers: {},
  max_queued_spans: 10,
};

Deno.test("signalUrl: the signal's own endpoint as is, else the base one with /v1/<signal>", () => {
  assert.equal(signalUrl(OFF, "metrics"), undefined);
  const base = { ...OFF, endpoint: "http://collector:4318/" };
  assert.equal(signalUrl(base, "metrics"), "http://collector:4318/v1/metrics");
  assert.equal(signalUrl(base, "traces"), "http://collector:4318/v1/traces");
  const own = { ...base, traces_endpoint: "https://t.example/api/spans" };
  assert.equal(signalUrl(own, "traces"), "https://t.example/api/spans");
  assert.equal(signalUrl({ ...base, traces: false }, "traces"), undefined);
});

Deno.test("labelsToAttributes: semantic-convention names, integers, error.type for errors", () => {
  const labels = {
    service_name: "nginx",
    service_namespace: "",
    target_instance: "h:1",
    http_request_method: "GET",
    http_response_status_code: "503",
    http_route: "/a",
  };
  assert.deepEqual(labelsToAttributes(labels, "server"), {
    "http.request.method": "GET",
    "http.response.status_code": 503,
    "http.route": "/a",
    "error.type": "503",
  });
  assert.deepEqual(
    labelsToAttributes({ ...labels, http_response_status_code: "404" }, "server"),
    { "http.request.method": "GET", "http.response.status_code": 404, "http.route": "/a" },
  );
  assert.equal(
    labelsToAttributes({ ...labels, http_response_status_code: "404" }, "client")["error.type"],
    "404",
  );
  const none = labelsToAttributes({ ...labels, http_response_status_code: "0" }, "client");
  assert.equal(none["error.type"], "no_response");
  assert.ok(!("http.response.status_code" in none));
});

Deno.test("spanShape: names, kinds and attributes of HTTP, RPC and database spans", () => {
  const http = spanShape({
    kind: "http_server",
    pid: 1,
    durationSeconds: 0.1,
    method: "POST",
    status: 500,
    route: "/users/{id}",
    path: "/users/7?token=secret",
  });
  assert.equal(http.name, "POST /users/{id}");
  assert.equal(http.kind, SpanKind.SERVER);
  assert.equal(http.attributes["url.path"], "/users/7");
  assert.ok(http.error);
  const rpc = spanShape({
    kind: "rpc_client",
    pid: 1,
    durationSeconds: 0.1,
    rpcMethod: "/grpc.testing.TestService/UnaryCall",
    rpcSystem: "grpc",
    grpcStatusCode: 0,
  });
  assert.deepEqual(rpc, {
    name: "grpc.testing.TestService/UnaryCall",
    kind: SpanKind.CLIENT,
    attributes: {
      "rpc.system": "grpc",
      "rpc.method": "UnaryCall",
      "rpc.grpc.status_code": 0,
      "rpc.service": "grpc.testing.TestService",
    },
    error: false,
  });
  const db = spanShape({
    kind: "db_client",
    pid: 1,
    durationSeconds: 0.1,
    dbSystem: "redis",
    dbOperation: "INCR",
    errorType: "WRONGTYPE",
  });
  assert.equal(db.name, "INCR");
  assert.equal(db.attributes["error.type"], "WRONGTYPE");
  assert.ok(db.error);
});

Deno.test("toResourceMetrics: one resource per process, cumulative histograms with the buckets", () => {
  const e = new RedExporter();
  const a = { serviceName: "api", serviceNamespace: "shop", instance: "h:1" };
  const b = { serviceName: "db", serviceNamespace: "", instance: "h:2" };
  const o = {
    kind: "http_server" as const,
    pid: 1,
    durationSeconds: 0.02,
    method: "GET",
    status: 200,
    route: "/",
  };
  e.observe(o, a);
  e.observe(o, a);
  e.observe({ ...o, kind: "http_client" }, b);
  const rms = toResourceMetrics(e, 1_700_000_000_000);
  assert.equal(rms.length, 2);
  const api = rms.find((r) => r.resource.attributes["service.name"] === "api")!;
  assert.equal(api.resource.attributes["service.namespace"], "shop");
  assert.equal(api.resource.attributes["service.instance.id"], "h:1");
  const names = api.scopeMetrics[0].metrics.map((m) => m.descriptor.name).sort();
  assert.deepEqual(names, ["http.server.request.body.size", "http.server.request.duration"]);
  const duration = api.scopeMetrics[0].metrics.find((m) =>
    m.descriptor.name === "http.server.request.duration"
  )!;
  const [point] = duration.dataPoints;
  // deno-lint-ignore no-explicit-any
  const value = point.value as any;
  assert.equal(value.count, 2);
  assert.equal(value.buckets.counts.length, value.buckets.boundaries.length + 1);
  assert.deepEqual(point.endTime, [1_700_000_000, 0]);
  const db = rms.find((r) => r.resource.attributes["service.name"] === "db")!;
  assert.ok(!("service.namespace" in db.resource.attributes));
});

Deno.test("the OTEL_* variables configure OTLP export; a protocol other than http/protobuf is refused", () => {
  const config = loadConfig({
    plugins: BUILTIN_PLUGINS,
    env: {
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318",
      OTEL_METRIC_EXPORT_INTERVAL: "1500",
      OTEL_TRACES_EXPORTER: "none",
    },
  });
  assert.equal(config.otlp.endpoint, "http://127.0.0.1:4318");
  assert.equal(config.otlp.export_interval, 1500);
  assert.equal(config.otlp.traces, false);
  assert.equal(config.otlp.metrics, true);
  assert.throws(
    () =>
      loadConfig({
        plugins: BUILTIN_PLUGINS,
        env: { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" },
      }),
    /OTEL_EXPORTER_OTLP_PROTOCOL: redprobe exports OTLP over http\/protobuf only/,
  );
  assert.throws(
    () =>
      loadConfig({ plugins: BUILTIN_PLUGINS, env: { OTEL_EXPORTER_OTLP_ENDPOINT: "collector" } }),
    /otlp\.endpoint: expected an http:\/\/ or https:\/\/ URL.*\(set by OTEL_EXPORTER_OTLP_ENDPOINT\)/,
  );
  assert.throws(
    () => loadConfig({ plugins: BUILTIN_PLUGINS, env: { OTEL_METRIC_EXPORT_INTERVAL: "soon" } }),
    /OTEL_METRIC_EXPORT_INTERVAL: expected a number of milliseconds/,
  );
});
