/**
 * An OTLP/HTTP receiver for tests: accepts what the agent pushes to `/v1/metrics` and
 * `/v1/traces` and decodes it with the official OTLP protobuf definitions
 * (tests/fixtures/otlp_proto, copied from open-telemetry/opentelemetry-proto) through protobufjs,
 * independently of the @opentelemetry packages that encoded it.
 *
 * @module
 */
import protobuf from "protobufjs";
import { dirname, fromFileUrl, join } from "./paths.ts";

const PROTO_DIR = join(dirname(fromFileUrl(import.meta.url)), "..", "fixtures", "otlp_proto");

function loadRoot(): protobuf.Root {
  const root = new protobuf.Root();
  // The files import each other by their path under the proto root.
  root.resolvePath = (_origin, target) => join(PROTO_DIR, target);
  root.loadSync([
    "opentelemetry/proto/collector/metrics/v1/metrics_service.proto",
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
  ]);
  return root;
}

/** An OTLP KeyValue list as a plain object (int values as numbers). */
export type AttributeMap = Record<string, string | number | boolean>;

interface PbKeyValue {
  key: string;
  value?: { stringValue?: string; intValue?: string; boolValue?: boolean; doubleValue?: number };
}

export function attributeMap(kvs: PbKeyValue[] | undefined): AttributeMap {
  const out: AttributeMap = {};
  for (const { key, value } of kvs ?? []) {
    if (!value) continue;
    if (value.stringValue !== undefined) out[key] = value.stringValue;
    else if (value.intValue !== undefined) out[key] = Number(value.intValue);
    else if (value.boolValue !== undefined) out[key] = value.boolValue;
    else if (value.doubleValue !== undefined) out[key] = value.doubleValue;
  }
  return out;
}

/** One histogram data point with its metric and resource, from the latest push. */
export interface HistogramPoint {
  metric: string;
  unit: string;
  resource: AttributeMap;
  attributes: AttributeMap;
  count: number;
  sum: number;
  bucketCounts: number[];
  explicitBounds: number[];
  startTimeUnixNano: bigint;
  timeUnixNano: bigint;
  temporality: string;
}

export interface ReceivedSpan {
  name: string;
  kind: string;
  resource: AttributeMap;
  attributes: AttributeMap;
  traceId: string;
  spanId: string;
  startTimeUnixNano: bigint;
  endTimeUnixNano: bigint;
  statusCode: string;
  scope: string;
}

export interface OtlpReceiver extends AsyncDisposable {
  url: string;
  /** Every metrics request's points, in arrival order. */
  metricPushes: HistogramPoint[][];
  spans: ReceivedSpan[];
  /** Requests that could not be decoded (must stay empty). */
  errors: string[];
  /** The points of `metric` in the latest push of each process (resource) that has it. */
  latest(metric: string): HistogramPoint[];
}

export function startOtlpReceiver(): OtlpReceiver {
  const root = loadRoot();
  const MetricsRequest = root.lookupType(
    "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
  );
  const TraceRequest = root.lookupType(
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
  );
  const MetricsResponse = root.lookupType(
    "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceResponse",
  );
  const TraceResponse = root.lookupType(
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceResponse",
  );
  const toObject = (type: protobuf.Type, bytes: Uint8Array) =>
    // deno-lint-ignore no-explicit-any
    type.toObject(type.decode(bytes), { longs: String, enums: String, bytes: String }) as any;
  const metricPushes: HistogramPoint[][] = [];
  const spans: ReceivedSpan[] = [];
  const errors: string[] = [];
  const hex = (b64: string) =>
    Array.from(atob(b64), (c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");

  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    const bytes = new Uint8Array(await req.arrayBuffer());
    if (req.headers.get("content-type") !== "application/x-protobuf") {
      errors.push(`${path}: content-type ${req.headers.get("content-type")}`);
      return new Response("want protobuf", { status: 415 });
    }
    try {
      if (path === "/v1/metrics") {
        const body = toObject(MetricsRequest, bytes);
        const points: HistogramPoint[] = [];
        for (const rm of body.resourceMetrics ?? []) {
          const resource = attributeMap(rm.resource?.attributes);
          for (const sm of rm.scopeMetrics ?? []) {
            for (const m of sm.metrics ?? []) {
              if (!m.histogram) {
                errors.push(`metric ${m.name} is not a histogram`);
                continue;
              }
              for (const dp of m.histogram.dataPoints ?? []) {
                points.push({
                  metric: m.name,
                  unit: m.unit,
                  resource,
                  attributes: attributeMap(dp.attributes),
                  count: Number(dp.count),
                  sum: dp.sum,
                  bucketCounts: (dp.bucketCounts ?? []).map(Number),
                  explicitBounds: dp.explicitBounds ?? [],
                  startTimeUnixNano: BigInt(dp.startTimeUnixNano),
                  timeUnixNano: BigInt(dp.timeUnixNano),
                  temporality: m.histogram.aggregationTemporality,
                });
              }
            }
          }
        }
        metricPushes.push(points);
        return new Response(new Uint8Array(MetricsResponse.encode({}).finish()), {
          headers: { "content-type": "application/x-protobuf" },
        });
      }
      if (path === "/v1/traces") {
        const body = toObject(TraceRequest, bytes);
        for (const rs of body.resourceSpans ?? []) {
          const resource = attributeMap(rs.resource?.attributes);
          for (const ss of rs.scopeSpans ?? []) {
            for (const s of ss.spans ?? []) {
              spans.push({
                name: s.name,
                kind: s.kind,
                resource,
                attributes: attributeMap(s.attributes),
                traceId: hex(s.traceId),
                spanId: hex(s.spanId),
                startTimeUnixNano: BigInt(s.startTimeUnixNano),
                endTimeUnixNano: BigInt(s.endTimeUnixNano),
                statusCode: s.status?.code ?? "STATUS_CODE_UNSET",
                scope: ss.scope?.name,
              });
            }
          }
        }
        return new Response(new Uint8Array(TraceResponse.encode({}).finish()), {
          headers: { "content-type": "application/x-protobuf" },
        });
      }
    } catch (e) {
      errors.push(`${path}: ${(e as Error).message}`);
      return new Response("bad protobuf", { status: 400 });
    }
    return new Response("not found", { status: 404 });
  });
  const url = `http://127.0.0.1:${server.addr.port}`;
  return {
    url,
    metricPushes,
    spans,
    errors,
    latest(metric) {
      // The agent sends one request per process (resource): the latest of each.
      const seen = new Set<unknown>();
      const out: HistogramPoint[] = [];
      for (let i = metricPushes.length - 1; i >= 0; i--) {
        const points = metricPushes[i].filter((p) => p.metric === metric);
        const instance = points[0]?.resource["service.instance.id"];
        if (!points.length || seen.has(instance)) continue;
        seen.add(instance);
        out.push(...points);
      }
      return out;
    },
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}
