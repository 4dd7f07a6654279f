/**
 * `go-grpc`: gRPC server and client metrics for Go programs that use google.golang.org/grpc
 * (`rpc_server_duration_seconds`, `rpc_client_duration_seconds`, labels `rpc_method`,
 * `rpc_system="grpc"`, `rpc_grpc_status_code`), stripped binaries included. See go_grpc.bpf.c
 * for where the probes sit and binary.ts for how they are found.
 *
 * gRPC calls are never also HTTP requests here: grpc-go serves and calls over its own HTTP/2
 * transport, which go-http does not probe and kprobe-http does not parse (HTTP/1 only). A Go
 * gRPC client that is not grpc-go, e.g. connect-go over net/http, is measured by go-http as the
 * HTTP/2 POST it is (`http_client_duration_seconds`, route `/package.Service/Method`).
 *
 * @module
 */
import { z } from "zod";
import { type AttachSpec, definePlugin, type TargetProcess } from "../../core/plugin.ts";
import { GoBinarySkip, looksLikeGo, skipVerdict } from "../../lib/go_binary.ts";
import { globMatcher } from "../../lib/globs.ts";
import {
  aggregatesInKernel,
  eventsRingBytes,
  histogramConstants,
  histogramDelta,
} from "../../lib/red_histogram.ts";
import bpfObject from "./go_grpc.bpf.o" with { type: "bytes" };
import { type GoGrpcBinary, goGrpcBinaryCache, probeCookies } from "./binary.ts";
import {
  decodeGoGrpcAggKey,
  decodeGoGrpcEvent,
  decodeGoGrpcMethod,
  GO_GRPC_KERNEL_COUNTERS,
  type GoGrpcEvent,
  GoGrpcFlag,
  GoGrpcKind,
  rpcMethodLabel,
} from "./decode.ts";

export const goGrpcOptions = z.strictObject({
  /**
   * Histograms kept in the kernel and read at each scrape (cheap), rather than one ring-buffer
   * record per call. Both count exactly.
   */
  aggregate_in_kernel: z.boolean().default(true),
  /** Calls in flight tracked at once (least recently started forgotten beyond). */
  max_in_flight: z.number().int().min(64).max(1 << 20).default(16384),
  /** Executables (paths; `*` matches any run of characters) go-grpc leaves alone. */
  skip_executables: z.array(z.string().min(1)).default([]),
});

export type GoGrpcOptions = z.infer<typeof goGrpcOptions>;

const binaries = goGrpcBinaryCache();

/** Whether `skip_executables` names `exe`. */
const skipped = globMatcher((options: GoGrpcOptions) => options.skip_executables);

const PROGRAMS = ["grpc_server_start", "grpc_server_end", "grpc_client_start", "grpc_client_end"];

function analysisOf(target: TargetProcess): GoGrpcBinary | GoBinarySkip {
  if (!looksLikeGo(`/proc/${target.pid}/exe`)) return new GoBinarySkip("not_go", "not Go");
  return binaries.analyze(`/proc/${target.pid}/exe`);
}

/** The uprobes of one binary (one uprobe_multi link per program), for process `pid`. */
export function probesFor(binary: GoGrpcBinary, path: string, pid?: number): AttachSpec[] {
  const cookies = probeCookies(binary);
  const spec = (program: string, fileOffset: number, cookie: bigint): AttachSpec => ({
    kind: "uprobe-multi",
    program,
    binaryPath: path,
    offsets: [fileOffset],
    cookies: [cookie],
    ...(pid ? { pid } : {}),
  });
  const specs: AttachSpec[] = [];
  if (binary.server) {
    specs.push(spec("grpc_server_start", binary.server.start.fileOffset, cookies.serverStart));
    specs.push(spec("grpc_server_end", binary.server.end.fileOffset, cookies.serverEnd));
  }
  if (binary.client) {
    specs.push(spec("grpc_client_start", binary.client.start.fileOffset, cookies.clientStart));
    specs.push(spec("grpc_client_end", binary.client.end.fileOffset, cookies.clientEnd));
  }
  return specs;
}

export default definePlugin<GoGrpcEvent, GoGrpcOptions>({
  id: "go-grpc",
  description: "gRPC servers and clients in Go (grpc-go), from uprobes",
  bpfObject,
  optionsSchema: goGrpcOptions,
  constants: (ctx) => {
    const { buckets } = ctx;
    const inKernel = aggregatesInKernel(ctx);
    return { aggregate_in_kernel: inKernel, ...histogramConstants(buckets, inKernel) };
  },
  maxEntries: (ctx) => ({
    calls: ctx.options.max_in_flight,
    events: eventsRingBytes(aggregatesInKernel(ctx)),
  }),
  uprobeMultiPrograms: PROGRAMS,
  // Only Go programs with grpc-go are measured, and every probe is per target (no attachOnce):
  // nothing to load until the first one (its 2 MiB ring and the rest: see go-http's).
  loadOnFirstTarget: true,
  kernelCounters: GO_GRPC_KERNEL_COUNTERS,
  appliesTo(target, { options }) {
    if (skipped(options, target.exe)) {
      return { skip: "configured", detail: "plugins.go-grpc.skip_executables" };
    }
    const result = analysisOf(target);
    return result instanceof GoBinarySkip
      ? skipVerdict(result, ["not_go", "not_elf", "no_grpc"])
      : true;
  },
  // gRPC clients need not listen anywhere: a Go program with grpc-go's client code is a target.
  selectsExecutable(exe, pid, { options }) {
    if (skipped(options, exe)) return false;
    const path = `/proc/${pid}/exe`;
    if (!looksLikeGo(path)) return false;
    const result = binaries.analyze(path);
    return !(result instanceof GoBinarySkip) && result.client !== undefined;
  },
  attachForTarget(target) {
    const result = analysisOf(target);
    return result instanceof GoBinarySkip
      ? []
      : probesFor(result, `/proc/${target.pid}/exe`, target.pid);
  },
  aggregates: {
    map: "aggs",
    pidOf: (key) => decodeGoGrpcAggKey(key).tgid,
    decode(keyBytes, delta, lookup, { buckets }) {
      const key = decodeGoGrpcAggKey(keyBytes);
      const method = lookup("methods", key.methodHash);
      if (!method) return undefined;
      const server = key.kind === GoGrpcKind.server;
      if (!server && key.kind !== GoGrpcKind.client) return undefined;
      const { durationBuckets, durationSumSeconds } = histogramDelta(delta, buckets);
      return {
        kind: server ? "rpc_server" : "rpc_client",
        pid: key.tgid,
        rpcMethod: rpcMethodLabel(
          decodeGoGrpcMethod(method),
          (key.flags & GoGrpcFlag.methodTruncated) !== 0,
        ),
        rpcSystem: "grpc",
        grpcStatusCode: key.code,
        durationBuckets,
        durationSumSeconds,
      };
    },
  },
  decode: decodeGoGrpcEvent,
  toObservation(e) {
    const server = e.kind === GoGrpcKind.server;
    if (!server && e.kind !== GoGrpcKind.client) return undefined;
    return {
      kind: server ? "rpc_server" : "rpc_client",
      pid: e.tgid,
      durationSeconds: e.durationNs / 1e9,
      startNs: e.startNs,
      rpcMethod: rpcMethodLabel(e.method, (e.flags & GoGrpcFlag.methodTruncated) !== 0),
      rpcSystem: "grpc",
      grpcStatusCode: e.code,
    };
  },
});
