/**
 * OpenTelemetry export over OTLP/HTTP (protobuf) through the official `@opentelemetry/*`
 * exporters: the RED histograms pushed every interval (cumulative), and one span per request.
 *
 * The histograms are not re-recorded through the OTel metrics SDK: they already exist in
 * {@linkcode RedExporter} (some as bucket counts read from the kernel, which no SDK instrument
 * accepts), so each push converts them to the SDK's `ResourceMetrics` and hands that to
 * `OTLPMetricExporter`, which encodes and sends it. Spans are built the same way, as
 * `ReadableSpan`s for `OTLPTraceExporter`.
 *
 * OTLP uses OpenTelemetry's semantic-convention names and attributes whatever
 * `metrics.naming` says (that switch is for Prometheus names): one resource per service
 * (`service.name`, `service.namespace`, `service.instance.id`).
 *
 * @module
 */
import { type Attributes, type HrTime, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { ExportResultCode } from "@opentelemetry/core";
import { OTLPMetricExporter } from "@opentelemetry/exporter-metrics-otlp-proto";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { type Resource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  AggregationTemporality,
  DataPointType,
  type HistogramMetricData,
  type ResourceMetrics,
} from "@opentelemetry/sdk-metrics";
import type { ReadableSpan } from "@opentelemetry/sdk-trace";
import client from "prom-client";
import type { RedObservation } from "../plugin.ts";
import type { Logger } from "../log.ts";
import type { RedExporter, TargetLabels } from "./exporter.ts";
import type { HistogramFamily } from "./red_metrics.ts";

const SCOPE = { name: "redprobe", version: "0.1.0" };
/** How long the last push at stop may take. */
const STOP_DEADLINE_MS = 3000;

/** The `otlp` section of the configuration (durations in ms). */
export interface OtlpConfig {
  endpoint: string;
  metrics_endpoint: string;
  traces_endpoint: string;
  metrics: boolean;
  traces: boolean;
  export_interval: number;
  headers: Record<string, string>;
  max_queued_spans: number;
}

/**
 * Where a signal goes, as the OTLP exporter specification says: the signal's own endpoint as
 * is, else the base endpoint with `/v1/<signal>` appended; undefined when off.
 */
export function signalUrl(
  config: OtlpConfig,
  signal: "metrics" | "traces",
): string | undefined {
  if (!config[signal]) return undefined;
  const own = signal === "metrics" ? config.metrics_endpoint : config.traces_endpoint;
  if (own) return own;
  if (!config.endpoint) return undefined;
  return `${config.endpoint.replace(/\/+$/, "")}/v1/${signal}`;
}

/** OTLP name, unit and description of each RED family, by its role in the exporter. */
function otlpFamilies(
  e: RedExporter,
): { family: HistogramFamily; name: string; unit: string; description: string }[] {
  return [
    [e.httpServerDuration, "http.server.request.duration", "s"],
    [e.httpClientDuration, "http.client.request.duration", "s"],
    [e.httpServerRequestSize, "http.server.request.body.size", "By"],
    [e.httpClientRequestSize, "http.client.request.body.size", "By"],
    [e.rpcServerDuration, "rpc.server.call.duration", "s"],
    [e.rpcClientDuration, "rpc.client.call.duration", "s"],
    [e.dbClientDuration, "db.client.operation.duration", "s"],
  ].map(([family, name, unit]) => ({
    family: family as HistogramFamily,
    name: name as string,
    unit: unit as string,
    description: (family as HistogramFamily).help,
  }));
}

/** Prometheus label -> OTel attribute (and whether its value is an integer). */
const LABEL_ATTRIBUTES: Record<string, [string, boolean]> = {
  http_request_method: ["http.request.method", false],
  http_response_status_code: ["http.response.status_code", true],
  http_route: ["http.route", false],
  url_path: ["url.path", false],
  client_address: ["client.address", false],
  server_address: ["server.address", false],
  server_port: ["server.port", true],
  rpc_method: ["rpc.method", false],
  rpc_system: ["rpc.system", false],
  rpc_grpc_status_code: ["rpc.grpc.status_code", true],
  db_system: ["db.system.name", false],
  db_operation: ["db.operation.name", false],
  error_type: ["error.type", false],
};

/**
 * A series' labels as OTel attributes: the identity labels go to the resource; empty values
 * are left out; an HTTP status of 0 (no response) becomes `error.type="no_response"`; an error
 * status also sets `error.type` (semantic conventions: its code as a string).
 */
export function labelsToAttributes(
  labels: Record<string, string>,
  side: "server" | "client" | "other",
): Attributes {
  const out: Attributes = {};
  for (const [label, value] of Object.entries(labels)) {
    const mapped = LABEL_ATTRIBUTES[label];
    if (!mapped || value === "") continue;
    const [name, integer] = mapped;
    out[name] = integer ? Number(value) : value;
  }
  const status = out["http.response.status_code"];
  if (status === 0) {
    delete out["http.response.status_code"];
    out["error.type"] = "no_response";
  } else if (
    typeof status === "number" && (status >= 500 || (side === "client" && status >= 400))
  ) {
    out["error.type"] = String(status);
  }
  return out;
}

function hrTime(ms: number): HrTime {
  const seconds = Math.floor(ms / 1000);
  return [seconds, Math.round((ms - seconds * 1000) * 1e6)];
}

function hrTimeNs(ns: bigint): HrTime {
  return [Number(ns / 1_000_000_000n), Number(ns % 1_000_000_000n)];
}

function identityKey(labels: Record<string, string>): string {
  return `${labels.service_name}\u0001${labels.service_namespace}\u0001${labels.target_instance}`;
}

/** The OTel resource of a process. */
function resourceOf(serviceName: string, namespace: string, instance: string): Resource {
  const attributes: Attributes = {
    "service.name": serviceName,
    "service.instance.id": instance,
    "telemetry.distro.name": "redprobe",
    "telemetry.distro.version": SCOPE.version,
  };
  if (namespace) attributes["service.namespace"] = namespace;
  return resourceFromAttributes(attributes);
}

/**
 * The exporter's RED histograms as one `ResourceMetrics` per process identity (service,
 * namespace, instance), cumulative from each series' creation.
 */
export function toResourceMetrics(exporter: RedExporter, nowMs = Date.now()): ResourceMetrics[] {
  const byIdentity = new Map<string, Map<string, HistogramMetricData>>();
  const resources = new Map<string, Resource>();
  const end = hrTime(nowMs);
  for (const { family, name, unit, description } of otlpFamilies(exporter)) {
    const side = name.includes(".server.")
      ? "server"
      : name.includes(".client.")
      ? "client"
      : "other";
    for (const series of family.allSeries()) {
      if (series.count === 0) continue;
      const key = identityKey(series.labels);
      if (!resources.has(key)) {
        resources.set(
          key,
          resourceOf(
            series.labels.service_name,
            series.labels.service_namespace,
            series.labels.target_instance,
          ),
        );
        byIdentity.set(key, new Map());
      }
      const metrics = byIdentity.get(key)!;
      let metric = metrics.get(name);
      if (!metric) {
        metric = {
          descriptor: { name, unit, description, valueType: 1 /* DOUBLE */ },
          aggregationTemporality: AggregationTemporality.CUMULATIVE,
          dataPointType: DataPointType.HISTOGRAM,
          dataPoints: [],
        };
        metrics.set(name, metric);
      }
      metric.dataPoints.push({
        startTime: hrTime(series.startMs),
        endTime: end,
        attributes: labelsToAttributes(series.labels, side),
        value: {
          buckets: { boundaries: [...family.upperBounds], counts: Array.from(series.buckets) },
          sum: series.sum,
          count: series.count,
        },
      });
    }
  }
  return [...byIdentity].map(([key, metrics]) => ({
    resource: resources.get(key)!,
    scopeMetrics: [{ scope: SCOPE, metrics: [...metrics.values()] }],
  }));
}

/** 16 or 8 random bytes as lower-case hex: trace and span ids. */
function randomHex(bytes: number): string {
  const b = crypto.getRandomValues(new Uint8Array(bytes));
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Name, kind, attributes and status of the span of one observation (semantic conventions). */
export function spanShape(
  o: RedObservation,
): { name: string; kind: SpanKind; attributes: Attributes; error: boolean } {
  if ("method" in o) {
    const server = o.kind === "http_server";
    const labels: Record<string, string> = {
      http_request_method: o.method,
      http_response_status_code: String(o.status),
    };
    if (server) labels.http_route = o.route;
    if (o.serverAddress) labels.server_address = o.serverAddress;
    if (o.serverPort) labels.server_port = String(o.serverPort);
    if (o.clientAddress) labels.client_address = o.clientAddress;
    const attributes = labelsToAttributes(labels, server ? "server" : "client");
    // The path, never its query (it may hold secrets); spans have no cardinality limit.
    if (o.path !== undefined) attributes["url.path"] = o.path.split(/[?#]/)[0];
    const method = o.method === "_OTHER" ? "HTTP" : o.method;
    return {
      name: server ? `${method} ${o.route}` : method,
      kind: server ? SpanKind.SERVER : SpanKind.CLIENT,
      attributes,
      error: "error.type" in attributes,
    };
  }
  if ("rpcMethod" in o) {
    // grpc-go's method is "/package.Service/Method".
    const full = o.rpcMethod.replace(/^\//, "");
    const slash = full.lastIndexOf("/");
    const attributes: Attributes = {
      "rpc.system": o.rpcSystem,
      "rpc.method": slash >= 0 ? full.slice(slash + 1) : full,
      "rpc.grpc.status_code": o.grpcStatusCode,
    };
    if (slash >= 0) attributes["rpc.service"] = full.slice(0, slash);
    return {
      name: full || "rpc",
      kind: o.kind === "rpc_server" ? SpanKind.SERVER : SpanKind.CLIENT,
      attributes,
      error: o.grpcStatusCode !== 0,
    };
  }
  const attributes: Attributes = {
    "db.system.name": o.dbSystem,
    "db.operation.name": o.dbOperation,
  };
  if (o.errorType) attributes["error.type"] = o.errorType;
  return { name: o.dbOperation, kind: SpanKind.CLIENT, attributes, error: !!o.errorType };
}

/** Pushes metrics every interval and spans as they come, until {@linkcode stop}. */
export class OtlpExport {
  readonly #exporter: RedExporter;
  readonly #log: Logger;
  readonly #beforeCollect: () => void;
  readonly #metrics: OTLPMetricExporter | undefined;
  readonly #traces: OTLPTraceExporter | undefined;
  readonly #maxQueued: number;
  readonly #exports: client.Counter<"signal" | "result">;
  readonly #dropped: client.Counter<"signal">;
  readonly #resources = new WeakMap<TargetLabels, Resource>();
  #queue: ReadableSpan[] = [];
  #timers: ReturnType<typeof setInterval>[] = [];
  #inFlight = new Set<Promise<void>>();
  /** Wall clock minus CLOCK_MONOTONIC (ns), refreshed every minute. */
  #offsetNs: bigint;
  readonly #clockOffset: () => bigint;
  #lastFailureLog = 0;

  constructor(options: {
    exporter: RedExporter;
    config: OtlpConfig;
    log: Logger;
    /** Called before each metrics push (the agent drains the ring buffers). */
    beforeCollect: () => void;
    /** Wall clock minus CLOCK_MONOTONIC in ns (core/ffi/libbpf.ts). */
    clockOffsetNs: () => bigint;
  }) {
    this.#exporter = options.exporter;
    this.#log = options.log;
    this.#beforeCollect = options.beforeCollect;
    this.#maxQueued = options.config.max_queued_spans;
    this.#clockOffset = options.clockOffsetNs;
    this.#offsetNs = options.clockOffsetNs();
    const headers = options.config.headers;
    const metricsUrl = signalUrl(options.config, "metrics");
    const tracesUrl = signalUrl(options.config, "traces");
    if (metricsUrl) this.#metrics = new OTLPMetricExporter({ url: metricsUrl, headers });
    if (tracesUrl) this.#traces = new OTLPTraceExporter({ url: tracesUrl, headers });
    this.#exports = new client.Counter({
      name: "redprobe_otlp_exports_total",
      help: "OTLP export requests, by signal and result (ok, failed)",
      labelNames: ["signal", "result"],
      registers: [this.#exporter.registry],
    });
    this.#dropped = new client.Counter({
      name: "redprobe_otlp_dropped_total",
      help: "Spans not delivered (queue full or export failed), by signal",
      labelNames: ["signal"],
      registers: [this.#exporter.registry],
    });
    for (const signal of ["metrics", "traces"]) {
      for (const result of ["ok", "failed"]) this.#exports.inc({ signal, result }, 0);
    }
    this.#dropped.inc({ signal: "traces" }, 0);
    const intervalMs = options.config.export_interval;
    if (this.#metrics) {
      this.#timers.push(setInterval(() => this.#track(this.pushMetrics()), intervalMs));
    }
    if (this.#traces) this.#timers.push(setInterval(() => this.#track(this.flushSpans()), 1000));
    this.#timers.push(setInterval(() => this.#offsetNs = this.#clockOffset(), 60_000));
    this.#log.info(
      `OTLP export: ${
        [
          metricsUrl && `metrics to ${metricsUrl} every ${intervalMs} ms`,
          tracesUrl && `traces to ${tracesUrl}`,
        ].filter(Boolean).join(", ")
      }`,
    );
  }

  /** Whether spans are exported (the plugins must then send one record per request). */
  get tracesOn(): boolean {
    return this.#traces !== undefined;
  }

  #track(p: Promise<void>): void {
    this.#inFlight.add(p);
    p.finally(() => this.#inFlight.delete(p));
  }

  #result(signal: string, code: ExportResultCode, error?: Error, lost = 0): void {
    const ok = code === ExportResultCode.SUCCESS;
    this.#exports.inc({ signal, result: ok ? "ok" : "failed" });
    if (ok) return;
    if (lost) this.#dropped.inc({ signal }, lost);
    // One line a minute at most: a receiver that is down must not flood the log.
    if (Date.now() - this.#lastFailureLog > 60_000) {
      this.#lastFailureLog = Date.now();
      this.#log.warn(`OTLP ${signal} export failed: ${error?.message ?? "unknown error"}`);
    }
  }

  /** Sends the histograms now (one request per process identity). */
  async pushMetrics(): Promise<void> {
    if (!this.#metrics) return;
    this.#beforeCollect();
    for (const rm of toResourceMetrics(this.#exporter)) {
      const r = await new Promise<{ code: ExportResultCode; error?: Error }>((resolve) =>
        this.#metrics!.export(rm, resolve)
      );
      this.#result("metrics", r.code, r.error);
    }
  }

  /** Queues the span of one observation (dropped and counted when the queue is full). */
  addSpan(o: RedObservation, target: TargetLabels): void {
    if (!this.#traces) return;
    if (this.#queue.length >= this.#maxQueued) {
      this.#dropped.inc({ signal: "traces" });
      return;
    }
    const durationNs = BigInt(Math.max(0, Math.round(o.durationSeconds * 1e9)));
    const startNs = o.startNs !== undefined
      ? o.startNs + this.#offsetNs
      : BigInt(Date.now()) * 1_000_000n - durationNs;
    const endNs = startNs + durationNs;
    let resource = this.#resources.get(target);
    if (!resource) {
      resource = resourceOf(target.serviceName, target.serviceNamespace, target.instance);
      this.#resources.set(target, resource);
    }
    const { name, kind, attributes, error } = spanShape(o);
    const context = { traceId: randomHex(16), spanId: randomHex(8), traceFlags: 1 };
    this.#queue.push({
      name,
      kind,
      spanContext: () => context,
      startTime: hrTimeNs(startNs),
      endTime: hrTimeNs(endNs),
      duration: hrTimeNs(durationNs),
      status: { code: error ? SpanStatusCode.ERROR : SpanStatusCode.UNSET },
      attributes,
      links: [],
      events: [],
      ended: true,
      resource,
      instrumentationScope: SCOPE,
      droppedAttributesCount: 0,
      droppedEventsCount: 0,
      droppedLinksCount: 0,
    });
    if (this.#queue.length >= 512) this.#track(this.flushSpans());
  }

  /** Sends the queued spans now. */
  async flushSpans(): Promise<void> {
    if (!this.#traces || this.#queue.length === 0) return;
    const batch = this.#queue;
    this.#queue = [];
    const r = await new Promise<{ code: ExportResultCode; error?: Error }>((resolve) =>
      this.#traces!.export(batch, resolve)
    );
    this.#result("traces", r.code, r.error, batch.length);
  }

  /** A last push of both signals, then the exporters are shut down. */
  async stop(): Promise<void> {
    for (const t of this.#timers) clearInterval(t);
    this.#timers = [];
    // Bounded: a receiver that is down must not hold up the agent's stop (the exporters
    // retry with backoff).
    await withDeadline(
      (async () => {
        await Promise.allSettled([...this.#inFlight]);
        await Promise.all([this.pushMetrics(), this.flushSpans()]);
      })(),
      STOP_DEADLINE_MS,
    );
    await withDeadline(
      Promise.allSettled([this.#metrics?.shutdown(), this.#traces?.shutdown()]),
      500,
    );
  }
}

/** Waits for `work`, or `ms` at most (the work goes on; its result is not waited for). */
async function withDeadline(work: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<void>((resolve) => timer = setTimeout(resolve, ms));
  try {
    await Promise.race([work.catch(() => {}), deadline]);
  } finally {
    clearTimeout(timer);
  }
}
