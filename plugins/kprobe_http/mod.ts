/**
 * `kprobe-http`: HTTP/1.x server metrics for any process (nginx, Python, Node, Java, ...),
 * measured in the kernel on the socket tracepoints. It needs no kprobes, despite its name
 * (kept for compatibility with the design card): see kprobe_http.bpf.c for how and why.
 *
 * Duration: from the end of the read that returned the request's first byte to the end of the
 * write of the response's status line. Request size: the request body (Content-Length, or the
 * sum of the chunk sizes of a chunked body).
 *
 * @module
 */
import { z } from "zod";
import { definePlugin, type MapLookup, peerLabelsOn } from "../../core/plugin.ts";
import { parseDurationMs } from "../../lib/duration.ts";
import { RouteCache } from "../../lib/route.ts";
import bpfObject from "./kprobe_http.bpf.o" with { type: "bytes" };
import {
  decodeHttpAggKey,
  decodeHttpPath,
  decodeHttpRequestEvent,
  HTTP_KERNEL_COUNTERS,
  HttpEventFlag,
  HttpEventKind,
  type HttpRequestEvent,
} from "../../lib/http1_records.ts";
import { fitsInKernel, histogramConstants, histogramDelta } from "../../lib/red_histogram.ts";

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

export const kprobeHttpOptions = z.strictObject({
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
});

export type KprobeHttpOptions = z.infer<typeof kprobeHttpOptions>;

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

export default definePlugin<HttpRequestEvent, KprobeHttpOptions>({
  id: "kprobe-http",
  description: "HTTP/1.x servers and clients in any language, from socket tracepoints",
  bpfObject,
  optionsSchema: kprobeHttpOptions,
  constants: ({ options, buckets, optionalLabels }) => {
    const inKernel = options.aggregate_in_kernel && fitsInKernel(buckets);
    return {
      request_timeout_ns: BigInt(Math.round(options.request_timeout * 1e6)),
      aggregate_in_kernel: inKernel,
      ...histogramConstants(buckets, inKernel),
      client_mode: { off: 0, targets: 1, every_process: 2 }[options.clients],
      agent_tgid: Deno.pid,
      // The peer costs key space (series): recorded only when its labels are on.
      peer_labels: peerLabelsOn(optionalLabels),
    };
  },
  maxEntries: ({ options }) => ({ conns: options.max_connections }),
  attachOnce: [
    { kind: "auto", program: "on_sock_recv" },
    { kind: "auto", program: "on_sock_send" },
    { kind: "auto", program: "on_sock_state" },
  ],
  kernelCounters: HTTP_KERNEL_COUNTERS,
  aggregates: {
    map: "aggs",
    pidOf: (key) => decodeHttpAggKey(key).tgid,
    decode(keyBytes, delta, lookup, { buckets }) {
      const key = decodeHttpAggKey(keyBytes);
      const path = lookup("paths", key.pathHash);
      if (!path) return undefined;
      const client = (key.flags & HttpEventFlag.client) !== 0;
      return {
        kind: client ? "http_client" : "http_server",
        pid: key.tgid,
        method: key.method,
        status: key.status,
        route: routes.route(decodeHttpPath(path), (key.flags & HttpEventFlag.pathTruncated) !== 0),
        ...histogramDelta(delta, buckets),
        // A client may be gone by now (curl): its name, recorded by the kernel, labels it.
        exe: client ? processName(lookup, key.tgid) : undefined,
        ...(key.serverAddress
          ? { serverAddress: key.serverAddress, serverPort: key.serverPort }
          : {}),
      };
    },
  },
  decode: decodeHttpRequestEvent,
  toObservation(e) {
    const client = e.kind === HttpEventKind.clientRequest;
    if (!client && e.kind !== HttpEventKind.serverRequest) return undefined;
    return {
      kind: client ? "http_client" : "http_server",
      pid: e.tgid,
      durationSeconds: e.durationNs / 1e9,
      method: e.method,
      status: e.status,
      route: routes.route(e.path, (e.flags & HttpEventFlag.pathTruncated) !== 0),
      requestSizeBytes: e.bodySize,
      ...(e.serverAddress ? { serverAddress: e.serverAddress, serverPort: e.serverPort } : {}),
    };
  },
});
