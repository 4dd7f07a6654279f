/**
 * `go-http`: Go net/http servers and clients, HTTP and HTTPS, from uprobes on net/http itself
 * (see go_http.bpf.c for where and why). Works on stripped binaries: functions come from
 * `.gopclntab`, struct offsets from DWARF or from the committed table keyed by Go version.
 *
 * Each Go server is measured by one plugin: go-http when it can serve TLS (kprobe-http cannot
 * read HTTPS), kprobe-http otherwise, which is cheaper for plain HTTP (`servers` option,
 * bench/results/go_http.md); go-http then `replaces` kprobe-http for that process. Go clients
 * are always go-http's. Go programs it cannot handle (older than 1.18, without net/http,
 * unknown version without DWARF, unreadable) are left to kprobe-http, with a log line and
 * `redprobe_processes_skipped_total{plugin="go-http",reason}`.
 *
 * Duration: server, from `serverHandler.ServeHTTP` to `(*response).finishRequest` (the handler,
 * without reading the request head and the final flush of the response); client, the whole
 * `(*Transport).roundTrip` (connection setup, TLS handshake, request written, response head
 * read). Request size: the request's Content-Length (0 when unknown, e.g. chunked).
 *
 * @module
 */
import { z } from "zod";
import {
  type AttachSpec,
  definePlugin,
  peerLabelsOn,
  type TargetProcess,
} from "../../core/plugin.ts";
import { RouteCache } from "../../lib/route.ts";
import bpfObject from "./go_http.bpf.o" with { type: "bytes" };
import {
  aggregatesInKernel,
  eventsRingBytes,
  histogramConstants,
  histogramDelta,
} from "../../lib/red_histogram.ts";
import {
  decodeGoAggKey,
  decodeGoHttpEvent,
  decodeGoPath,
  GO_HTTP_KERNEL_COUNTERS,
  type GoHttpEvent,
  GoHttpFlag,
  GoHttpKind,
} from "./decode.ts";
import {
  GoBinarySkip,
  type GoHttpBinary,
  goHttpBinaryCache,
  type GoHttpOffsets,
  probeCookie,
  type ProbeSite,
  readsStatusAtEnd,
} from "./binary.ts";
import { looksLikeGo, skipVerdict } from "../../lib/go_binary.ts";
import { globMatcher } from "../../lib/globs.ts";

const binaries = goHttpBinaryCache();

/** Whether `skip_executables` names `exe`. */
const skipped = globMatcher((options: GoHttpOptions) => options.skip_executables);

export const goHttpOptions = z.strictObject({
  /**
   * Executables whose every process is instrumented from its first instruction, whether or
   * not discovery has seen it: for short-lived Go clients (load generators, CI jobs, cron)
   * that would finish before a /proc poll notices them. Each must be a Go program go-http can
   * instrument.
   */
  executables: z.array(z.string().min(1)).max(255).default([]).superRefine((paths, ctx) => {
    paths.forEach((path, i) => {
      const result = binaries.analyze(path);
      if (result instanceof GoBinarySkip) {
        ctx.addIssue({
          code: "custom",
          path: [i],
          message: `${path} cannot be instrumented: ${result.reason} (${result.message})`,
        });
      }
    });
  }),
  /**
   * Which Go servers go-http measures (the rest of their server traffic is kprobe-http's):
   * `auto`, those that can serve TLS (kprobe-http cannot read HTTPS; for plain HTTP it is the
   * cheaper of the two, see bench/results/go_http.md); `always`; `never` (HTTPS served by Go
   * then goes unmeasured). Go clients are go-http's in every mode.
   */
  servers: z.enum(["auto", "always", "never"]).default("auto"),
  /**
   * Go executables (paths; `*` matches any run of characters) that go-http leaves entirely to
   * kprobe-http: the per-process override.
   */
  skip_executables: z.array(z.string().min(1)).default([]),
  /**
   * Histograms kept in the kernel and read at each scrape (cheap, and nothing is lost while
   * the agent is busy), rather than one ring-buffer record per request. Both count exactly.
   */
  aggregate_in_kernel: z.boolean().default(true),
  /** Requests and calls in flight tracked at once (least recently started forgotten beyond). */
  max_in_flight: z.number().int().min(64).max(1 << 20).default(16384),
});

export type GoHttpOptions = z.infer<typeof goHttpOptions>;

const routes = new RouteCache();

/** Identity of a file, to tell a target's executable is one of the configured ones. */
function fileId(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/** Whether go-http measures the server side of `binary` under `options.servers`. */
export function measuresServer(binary: GoHttpBinary, options: GoHttpOptions): boolean {
  if (!binary.server) return false;
  if (options.servers === "always") return true;
  return options.servers === "auto" && binary.servesTls;
}

/** The programs, each attached with one uprobe_multi link per binary (and process). */
const PROGRAMS = [
  "go_server_start",
  "go_server_status",
  "go_server_end",
  "go_client_start",
  "go_client_end",
] as const;

/**
 * The probes for one analysed binary: server (when measured) then client, one `uprobe-multi`
 * spec per program, every offset with the binary's cookie.
 */
export function probesFor(
  binary: GoHttpBinary,
  binaryPath: string,
  cookie: bigint,
  options: { server: boolean; pid?: number },
): AttachSpec[] {
  const sites: Record<typeof PROGRAMS[number], { offset: number; cookie: bigint }[]> = {
    go_server_start: [],
    go_server_status: [],
    go_server_end: [],
    go_client_start: [],
    go_client_end: [],
  };
  const at = (program: typeof PROGRAMS[number], site: ProbeSite, c = cookie) =>
    sites[program].push({ offset: site.fileOffset, cookie: c });
  const server = options.server ? binary.server : undefined;
  if (server) {
    at("go_server_start", server.start);
    // Where response.status is known, the HTTP/1 end probe reads it (its cookie says where)
    // and WriteHeader needs no probe: one uprobe hit fewer per request.
    if (readsStatusAtEnd(binary.offsets)) {
      at("go_server_end", server.end, cookie | statusCookieBits(binary.offsets));
    } else {
      at("go_server_status", server.status);
      at("go_server_end", server.end);
    }
    // HTTP/2 requests start in the same ServeHTTP, keyed by their *http2responseWriter.
    if (server.http2) {
      at("go_server_status", server.http2.status);
      at("go_server_end", server.http2.end);
    }
  }
  if (binary.client) {
    at("go_client_start", binary.client.start);
    for (const ret of binary.client.returns) at("go_client_end", ret);
  }
  return PROGRAMS.filter((program) => sites[program].length > 0).map((program) => ({
    kind: "uprobe-multi",
    program,
    binaryPath,
    offsets: sites[program].map((s) => s.offset),
    cookies: sites[program].map((s) => s.cookie),
    ...(options.pid ? { pid: options.pid } : {}),
  }));
}

/** Cookie byte 6: response.status / 8 (see go_http.h). */
function statusCookieBits(offsets: GoHttpOffsets): bigint {
  return BigInt((offsets.responseStatus ?? 0) / 8) << 48n;
}

/** Executables attached for every process, by file identity (set when the plugin starts). */
const everyProcess = new Map<string, string>();

function analysisOf(target: TargetProcess): GoHttpBinary | GoBinarySkip {
  return binaries.analyze(`/proc/${target.pid}/exe`);
}

export default definePlugin<GoHttpEvent, GoHttpOptions>({
  id: "go-http",
  description: "Go net/http servers and clients (HTTP and HTTPS), from uprobes",
  bpfObject,
  optionsSchema: goHttpOptions,
  constants: (ctx) => {
    const { buckets, optionalLabels } = ctx;
    const inKernel = aggregatesInKernel(ctx);
    return {
      aggregate_in_kernel: inKernel,
      ...histogramConstants(buckets, inKernel),
      // URL.Host costs key space (series): read only when its labels are on.
      peer_labels: peerLabelsOn(optionalLabels),
    };
  },
  aggregates: {
    map: "aggs",
    pidOf: (key) => decodeGoAggKey(key).tgid,
    decode(keyBytes, delta, lookup, { options, buckets }) {
      const key = decodeGoAggKey(keyBytes);
      const path = lookup("paths", key.pathHash);
      if (!path) return undefined;
      const server = key.kind === GoHttpKind.server;
      if (!server && key.kind !== GoHttpKind.client) return undefined;
      const text = decodeGoPath(path);
      const pathTruncated = (key.flags & GoHttpFlag.pathTruncated) !== 0;
      return {
        kind: server ? "http_server" : "http_client",
        pid: key.tgid,
        method: key.method,
        status: key.status,
        route: routes.route(text, pathTruncated),
        path: text,
        pathTruncated,
        ...histogramDelta(delta, buckets),
        exe: key.exeIndex > 0 ? options.executables[key.exeIndex - 1] : undefined,
        ...(key.serverAddress
          ? { serverAddress: key.serverAddress, serverPort: key.serverPort }
          : {}),
      };
    },
  },
  maxEntries: (ctx) => ({
    server_starts: ctx.options.max_in_flight,
    client_starts: ctx.options.max_in_flight,
    events: eventsRingBytes(aggregatesInKernel(ctx)),
  }),
  // One uprobe_multi link per program and binary (see PROGRAMS).
  uprobeMultiPrograms: PROGRAMS,
  // The server side is either go-http's or kprobe-http's, never both (see `servers`); a Go
  // program's client calls are always go-http's.
  replaces: (target, { options }) => {
    const result = analysisOf(target);
    if (result instanceof GoBinarySkip) return [];
    if (measuresServer(result, options)) return ["kprobe-http"];
    return result.client ? ["kprobe-http/clients"] : [];
  },
  replacesOnExecutables: ({ options }) => ({ "kprobe-http/clients": options.executables }),
  kernelCounters: GO_HTTP_KERNEL_COUNTERS,
  // Many hosts run no Go program: the object and its verifier run wait for the first one (its
  // 2 MiB ring is mapped by the agent: with go-grpc's, ~4 MB of settled RSS and ~10 MB of peak,
  // measured; README, Performance). Not with `executables`: their probes (attachOnce) are on
  // the files, for processes discovery may never see (a hey that runs for 50 ms), so they must
  // be there from the start.
  loadOnFirstTarget: ({ options }) => options.executables.length === 0,
  attachOnce: ({ options }) => {
    everyProcess.clear();
    return options.executables.flatMap((path, i) => {
      const result = binaries.analyze(path);
      if (result instanceof GoBinarySkip) throw result; // validated with the options
      const id = fileId(path);
      if (id) everyProcess.set(id, path);
      return probesFor(result, path, probeCookie(result.offsets, i + 1, true), {
        server: measuresServer(result, options),
      });
    });
  },
  appliesTo(target, { options }) {
    if (skipped(options, target.exe)) {
      return { skip: "configured", detail: "plugins.go-http.skip_executables" };
    }
    const result = analysisOf(target);
    if (result instanceof GoBinarySkip) return skipVerdict(result);
    if (!result.client && !measuresServer(result, options)) {
      return {
        skip: "plain_http_server",
        detail:
          `no TLS server code: kprobe-http measures it (plugins.go-http.servers: ${options.servers})`,
        quiet: true,
      };
    }
    return true;
  },
  selectsExecutable(exe, pid, { options }) {
    if (skipped(options, exe)) return false;
    const path = `/proc/${pid}/exe`;
    if (!looksLikeGo(path)) return false;
    const result = binaries.analyze(path);
    return !(result instanceof GoBinarySkip) && result.client !== undefined;
  },
  attachForTarget(target, { options }) {
    const result = analysisOf(target);
    if (result instanceof GoBinarySkip) return [];
    const path = `/proc/${target.pid}/exe`;
    // Already probed for every process of this executable: attaching again would count twice.
    const id = fileId(path);
    if (id && everyProcess.has(id)) return [];
    return probesFor(result, path, probeCookie(result.offsets), {
      server: measuresServer(result, options),
      pid: target.pid,
    });
  },
  decode: decodeGoHttpEvent,
  toObservation(e, { options }) {
    const server = e.kind === GoHttpKind.server;
    if (!server && e.kind !== GoHttpKind.client) return undefined;
    return {
      kind: server ? "http_server" : "http_client",
      pid: e.tgid,
      durationSeconds: e.durationNs / 1e9,
      startNs: e.startNs,
      method: e.method,
      status: (e.flags & GoHttpFlag.noResponse) ? 0 : e.status,
      route: routes.route(e.path, (e.flags & GoHttpFlag.pathTruncated) !== 0),
      path: e.path,
      pathTruncated: (e.flags & GoHttpFlag.pathTruncated) !== 0,
      requestSizeBytes: Math.max(0, e.contentLength),
      exe: e.exeIndex > 0 ? options.executables[e.exeIndex - 1] : undefined,
      ...(e.serverAddress ? { serverAddress: e.serverAddress, serverPort: e.serverPort } : {}),
    };
  },
});
