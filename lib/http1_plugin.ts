/**
 * The TypeScript half of the HTTP/1 engine (bpf/http1_engine.h) that kprobe-http and
 * tls-uprobe share: their common options, the load-time constants those options set, and how
 * the engine's records and in-kernel histograms become RED observations. Each plugin adds only
 * what is its own (hooks, attach points, its extra options and counters).
 *
 * @module
 */
import { z } from "zod";
import type { MapLookup, PluginContext, RedAggregate, RedObservation } from "../core/plugin.ts";
import { parseDurationMs } from "./duration.ts";
import { RouteCache } from "./route.ts";
import {
  decodeHttpAggKey,
  decodeHttpPath,
  HttpEventFlag,
  HttpEventKind,
  type HttpRequestEvent,
} from "./http1_records.ts";
import {
  aggregatesInKernel,
  eventsRingBytes,
  histogramConstants,
  histogramDelta,
} from "./red_histogram.ts";
import { peerLabelBits } from "../core/plugin.ts";
import type { ConstantValue } from "../core/bpf/object.ts";

const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = parseDurationMs(v);
  if (ms === undefined || ms <= 0) {
    ctx.addIssue({
      code: "custom",
      message: `expected a duration such as "30s" or "500ms", got ${JSON.stringify(v)}`,
    });
    return z.NEVER;
  }
  return ms;
});

/** The options of every plugin built on the engine (spread into its `z.strictObject`). */
export const http1EngineOptions = {
  /** A request with no response after this long is counted with status 0. */
  request_timeout: duration.default(30_000),
  /** Connections tracked at once (least recently used are forgotten beyond this). */
  max_connections: z.number().int().min(64).max(1 << 22).default(16384),
  /**
   * Histograms kept in the kernel and read at each scrape (cheap), rather than one
   * ring-buffer record per request read by the agent. Both count exactly.
   */
  aggregate_in_kernel: z.boolean().default(true),
  /**
   * Client connections (requests this process writes, responses it reads): `every_process`
   * (any process but the agent: curl, cron jobs and other clients that listen nowhere),
   * `targets` (only discovered processes), `off`.
   */
  clients: z.enum(["every_process", "targets", "off"]).default("every_process"),
};

const engineOptions = z.strictObject(http1EngineOptions);
export type Http1EngineOptions = z.infer<typeof engineOptions>;

/** The engine's `const volatile` values for these options. */
export function http1EngineConstants(
  ctx: PluginContext<Http1EngineOptions>,
): Record<string, ConstantValue> {
  const { options, buckets, optionalLabels } = ctx;
  const inKernel = aggregatesInKernel(ctx);
  return {
    request_timeout_ns: BigInt(Math.round(options.request_timeout * 1e6)),
    aggregate_in_kernel: inKernel,
    ...histogramConstants(buckets, inKernel),
    client_mode: { off: 0, targets: 1, every_process: 2 }[options.clients],
    agent_tgid: Deno.pid,
    // The peer costs key space (series): recorded only when its labels are on.
    peer_labels: peerLabelBits(optionalLabels),
  };
}

/** The engine's map sizes: the connection table, and the ring (small when aggregating). */
export function http1MaxEntries(ctx: PluginContext<Http1EngineOptions>): Record<string, number> {
  return { conns: ctx.options.max_connections, events: eventsRingBytes(aggregatesInKernel(ctx)) };
}

const routes = new RouteCache();

/** The comm the kernel recorded for `tgid` (proc_names map), or undefined. */
function processName(lookup: MapLookup, tgid: number): string | undefined {
  const key = new Uint8Array(4);
  new DataView(key.buffer).setUint32(0, tgid, true);
  const value = lookup("proc_names", key);
  if (!value) return undefined;
  const end = value.indexOf(0);
  return new TextDecoder().decode(value.subarray(0, end < 0 ? value.length : end)) || undefined;
}

/** The `aggregates` of a plugin on the engine: its `aggs` map, paths named by `paths`. */
export const http1Aggregates = {
  map: "aggs",
  pidOf: (key: Uint8Array) => decodeHttpAggKey(key).tgid,
  decode(
    keyBytes: Uint8Array,
    delta: Float64Array,
    lookup: MapLookup,
    { buckets }: PluginContext<unknown>,
  ): RedAggregate | undefined {
    const key = decodeHttpAggKey(keyBytes);
    const path = lookup("paths", key.pathHash);
    if (!path) return undefined;
    const client = (key.flags & HttpEventFlag.client) !== 0;
    const text = decodeHttpPath(path);
    const pathTruncated = (key.flags & HttpEventFlag.pathTruncated) !== 0;
    return {
      kind: client ? "http_client" : "http_server",
      pid: key.tgid,
      method: key.method,
      status: key.status,
      route: routes.route(text, pathTruncated),
      path: text,
      pathTruncated,
      ...histogramDelta(delta, buckets),
      // A client may be gone by now (curl): its name, recorded by the kernel, labels it.
      exe: client ? processName(lookup, key.tgid) : undefined,
      ...peerOf(client, key.serverAddress, key.serverPort),
    };
  },
};

/** One engine record (a request that could not be aggregated, or all with aggregation off). */
export function http1Observation(e: HttpRequestEvent): RedObservation | undefined {
  const client = e.kind === HttpEventKind.clientRequest;
  if (!client && e.kind !== HttpEventKind.serverRequest) return undefined;
  return {
    kind: client ? "http_client" : "http_server",
    pid: e.tgid,
    durationSeconds: e.durationNs / 1e9,
    startNs: e.startNs,
    method: e.method,
    status: e.status,
    route: routes.route(e.path, (e.flags & HttpEventFlag.pathTruncated) !== 0),
    path: e.path,
    pathTruncated: (e.flags & HttpEventFlag.pathTruncated) !== 0,
    requestSizeBytes: e.bodySize,
    ...peerOf(client, e.serverAddress, e.serverPort),
  };
}

/** The recorded peer: the server a client sent to, or the client a server answered. */
function peerOf(
  client: boolean,
  address: string | undefined,
  port: number | undefined,
): { serverAddress?: string; serverPort?: number; clientAddress?: string } {
  if (!address) return {};
  return client ? { serverAddress: address, serverPort: port } : { clientAddress: address };
}
