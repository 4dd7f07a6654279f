/**
 * What go-http needs to know about one Go executable: whether it can be instrumented at all,
 * where each probe goes (file offsets), and the struct field offsets its probes read. Pure but
 * for reading the file; results are cached per file identity (device, inode, size, mtime), so
 * a binary run by many processes is analysed once.
 *
 * @module
 */
import type { ElfFile } from "../../lib/elf.ts";
import { compareGoVersions, parseGoVersion } from "../../lib/go_buildinfo.ts";
import { readStructFields } from "../../lib/dwarf.ts";
import {
  entrySite,
  GoBinaryCache,
  GoBinarySkip,
  openGoExecutable,
  type ProbeSite,
  returnSites,
} from "../../lib/go_binary.ts";
import offsetsTable from "./offsets.json" with { type: "json" };

export { GoBinarySkip, type ProbeSite } from "../../lib/go_binary.ts";

/** The fields the probes read, in the order of the cookie bytes (go_http.h). */
export interface GoHttpOffsets {
  requestMethod: number;
  requestUrl: number;
  urlPath: number;
  requestContentLength: number;
  responseStatusCode: number;
  /**
   * `net/http.response.status` (the server's *response), when DWARF or the table knows it for
   * this exact Go version: the end probe then reads the status and no WriteHeader probe is
   * needed (one uprobe hit fewer per request). Undefined: the WriteHeader probe is attached.
   */
  responseStatus?: number;
}

export interface GoHttpBinary {
  goVersion: string;
  /**
   * Whether the program can serve TLS: Go's linker drops `crypto/tls.(*Conn).serverHandshake`
   * from a program that never serves TLS, so its presence is the test.
   */
  servesTls: boolean;
  /** Where the struct offsets came from. */
  offsetsFrom: "dwarf" | "table";
  offsets: GoHttpOffsets;
  /**
   * net/http server probes; absent when the binary has no net/http server code. `http2`: the
   * status and end of requests served over HTTP/2 (Go's bundled server), when present.
   */
  server?: {
    start: ProbeSite;
    status: ProbeSite;
    end: ProbeSite;
    http2?: { status: ProbeSite; end: ProbeSite };
  };
  /** net/http client probes; absent when the binary has no net/http client code. */
  client?: { start: ProbeSite; returns: ProbeSite[] };
}

export const GO_FUNCTIONS = {
  serverStart: "net/http.serverHandler.ServeHTTP",
  serverStatus: "net/http.(*response).WriteHeader",
  serverEnd: "net/http.(*response).finishRequest",
  http2Status: "net/http.(*http2responseWriter).WriteHeader",
  http2End: "net/http.(*http2responseWriter).handlerDone",
  tlsServerHandshake: "crypto/tls.(*Conn).serverHandshake",
  clientRoundTrip: "net/http.(*Transport).roundTrip",
} as const;

const DWARF_FIELDS = {
  "net/http.Request": ["Method", "URL", "ContentLength"],
  "net/url.URL": ["Path"],
  "net/http.Response": ["StatusCode"],
  "net/http.response": ["status"],
};

interface OffsetsTable {
  versions: Record<string, Record<string, number>>;
  stable?: { from: string; to: string; fields: string[]; basis: string };
}

/** The offsets of `goVersion` ("go1.19.8") from the committed table, or undefined. */
export function tableOffsets(goVersion: string): GoHttpOffsets | undefined {
  const v = parseGoVersion(goVersion);
  if (!v) return undefined;
  const table = offsetsTable as unknown as OffsetsTable;
  const minor = `go${v.major}.${v.minor}`;
  const exact: Record<string, number> | undefined = table.versions[minor];
  let fields = exact;
  // Versions not built here but inside the range where the fields go-http reads are known not
  // to move (offsets.json "stable", with its reasons): those fields of the nearest version.
  const stable = table.stable;
  if (!fields && stable) {
    const inRange = compareGoVersions(minor, stable.from) >= 0 &&
      compareGoVersions(minor, stable.to) <= 0;
    const nearest = Object.keys(table.versions)
      .sort((a, b) =>
        Math.abs(compareGoVersions(a, minor)) - Math.abs(compareGoVersions(b, minor))
      )[0];
    if (inRange && nearest) {
      const source = table.versions[nearest];
      fields = Object.fromEntries(stable.fields.map((f) => [f, source[f]]));
    }
  }
  if (!fields) return undefined;
  const get = (k: string) => fields[k];
  const offsets = {
    requestMethod: get("net/http.Request.Method"),
    requestUrl: get("net/http.Request.URL"),
    urlPath: get("net/url.URL.Path"),
    requestContentLength: get("net/http.Request.ContentLength"),
    responseStatusCode: get("net/http.Response.StatusCode"),
  };
  if (!Object.values(offsets).every((n) => typeof n === "number")) return undefined;
  // An unexported struct that changes between versions: only from this exact version's entry.
  const status = exact?.["net/http.response.status"];
  return status === undefined ? offsets : { ...offsets, responseStatus: status };
}

function dwarfOffsets(elf: ElfFile): GoHttpOffsets | undefined {
  const found = readStructFields(elf, DWARF_FIELDS);
  const request = found.get("net/http.Request");
  const url = found.get("net/url.URL");
  const response = found.get("net/http.Response");
  const offsets = {
    requestMethod: request?.get("Method"),
    requestUrl: request?.get("URL"),
    urlPath: url?.get("Path"),
    requestContentLength: request?.get("ContentLength"),
    responseStatusCode: response?.get("StatusCode"),
  };
  if (!Object.values(offsets).every((n) => n !== undefined)) return undefined;
  const status = found.get("net/http.response")?.get("status");
  return {
    ...offsets as GoHttpOffsets,
    ...(status === undefined ? {} : { responseStatus: status }),
  };
}

/** Analyses the bytes of an executable. Throws {@linkcode GoBinarySkip} when go-http cannot use it. */
export function analyzeGoBinary(file: Uint8Array | ElfFile): GoHttpBinary {
  const exe = openGoExecutable(file, "go-http");
  const { elf, functions: fns, goVersion } = exe;
  let server: GoHttpBinary["server"];
  const start = entrySite(exe, GO_FUNCTIONS.serverStart);
  const status = entrySite(exe, GO_FUNCTIONS.serverStatus);
  const end = entrySite(exe, GO_FUNCTIONS.serverEnd);
  if (start && status && end) {
    const h2Status = entrySite(exe, GO_FUNCTIONS.http2Status);
    const h2End = entrySite(exe, GO_FUNCTIONS.http2End);
    server = { start, status, end };
    if (h2Status && h2End) server.http2 = { status: h2Status, end: h2End };
  }

  let client: GoHttpBinary["client"];
  const clientStart = entrySite(exe, GO_FUNCTIONS.clientRoundTrip);
  const returns = returnSites(exe, GO_FUNCTIONS.clientRoundTrip);
  if (clientStart && returns) client = { start: clientStart, returns };
  if (!server && !client) {
    throw new GoBinarySkip("no_net_http", `${goVersion} program without net/http`);
  }

  let offsets: GoHttpOffsets | undefined;
  let offsetsFrom: GoHttpBinary["offsetsFrom"] = "dwarf";
  try {
    offsets = dwarfOffsets(elf);
  } catch {
    offsets = undefined; // corrupt DWARF: the table is as good
  }
  if (!offsets) {
    offsets = tableOffsets(goVersion);
    offsetsFrom = "table";
  }
  if (!offsets) {
    throw new GoBinarySkip(
      "unknown_go_version",
      `no DWARF and no struct offsets known for ${goVersion} (plugins/go_http/offsets.json)`,
    );
  }
  if (
    [
      offsets.requestMethod,
      offsets.requestUrl,
      offsets.urlPath,
      offsets.requestContentLength,
      offsets.responseStatusCode,
    ].some((n) => n < 0 || n > 255)
  ) {
    throw new GoBinarySkip("unknown_go_version", `struct offsets of ${goVersion} out of range`);
  }
  const servesTls = fns.lookup(GO_FUNCTIONS.tlsServerHandshake) !== undefined;
  return { goVersion, servesTls, offsetsFrom, offsets, server, client };
}

/**
 * Packs the offsets, executable index and flags into a probe cookie (go_http.h). With
 * `statusAt`, byte 6 holds response.status / 8 for the HTTP/1 end site (0: not known there).
 */
export function probeCookie(
  offsets: GoHttpOffsets,
  exeIndex = 0,
  anyProcess = false,
  statusAt = false,
): bigint {
  const bytes = [
    offsets.requestMethod,
    offsets.requestUrl,
    offsets.urlPath,
    offsets.requestContentLength,
    offsets.responseStatusCode,
  ];
  let cookie = 0n;
  bytes.forEach((b, i) => cookie |= BigInt(b) << BigInt(8 * i));
  cookie |= BigInt(exeIndex & 0xff) << 40n;
  const status = offsets.responseStatus;
  if (statusAt && status !== undefined && status % 8 === 0 && status / 8 <= 255) {
    cookie |= BigInt(status / 8) << 48n;
  }
  if (anyProcess) cookie |= 1n << 56n;
  return cookie;
}

/** Whether the end probe reads the status itself (no WriteHeader probe on HTTP/1). */
export function readsStatusAtEnd(offsets: GoHttpOffsets): boolean {
  const status = offsets.responseStatus;
  return status !== undefined && status % 8 === 0 && status > 0 && status / 8 <= 255;
}

/** go-http's analyses, cached by file identity. */
export type GoHttpBinaryCache = GoBinaryCache<GoHttpBinary>;

/** A cache of go-http's analyses. */
export function goHttpBinaryCache(max = 256): GoHttpBinaryCache {
  return new GoBinaryCache(analyzeGoBinary, max);
}
