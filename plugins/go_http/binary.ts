/**
 * What go-http needs to know about one Go executable: whether it can be instrumented at all,
 * where each probe goes (file offsets), and the struct field offsets its probes read. Pure but
 * for reading the file; results are cached per file identity (device, inode, size, mtime), so
 * a binary run by many processes is analysed once.
 *
 * @module
 */
import { ElfError, ElfFile } from "../../lib/elf.ts";
import { type GoFunctionTable, GoPclntabError, readGoFunctions } from "../../lib/go_pclntab.ts";
import { compareGoVersions, parseGoVersion, readGoBuildInfo } from "../../lib/go_buildinfo.ts";
import { readStructFields } from "../../lib/dwarf.ts";
import { findEntryProbeSite, findReturnSites, X86DecodeError } from "../../lib/x86_sites.ts";
import offsetsTable from "./offsets.json" with { type: "json" };

/** Why a binary is left to other plugins. Each is a `reason` label of an internal counter. */
export type GoSkipReason =
  | "unreadable"
  | "not_elf"
  | "corrupt_binary"
  | "not_go"
  | "go_too_old"
  | "no_net_http"
  | "unknown_go_version";

export class GoBinarySkip extends Error {
  constructor(readonly reason: GoSkipReason, message: string) {
    super(message);
    this.name = "GoBinarySkip";
  }
}

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

/** One probe: where it goes in the file, and whether the kernel emulates the instruction. */
export interface ProbeSite {
  /** Virtual address of the instruction. */
  address: number;
  /** Its offset in the file (what a uprobe is attached at). */
  fileOffset: number;
  /** Emulated (~1 µs a hit) rather than single-stepped (~20 µs). */
  emulated: boolean;
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

/**
 * Go's register ABI (arguments in registers, g in R14) starts at 1.17, the pclntab layout that
 * lib/go_pclntab.ts reads at 1.18: go-http supports 1.18 and later.
 */
const MIN_GO = "go1.18";

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

function site(elf: ElfFile, address: number, emulated: boolean, what: string): ProbeSite {
  const fileOffset = elf.fileOffsetOf(address);
  if (fileOffset === undefined) {
    throw new GoBinarySkip("corrupt_binary", `${what} at 0x${address.toString(16)} is not mapped`);
  }
  return { address, fileOffset, emulated };
}

function functionCode(elf: ElfFile, fns: GoFunctionTable, name: string) {
  const fn = fns.lookup(name);
  if (!fn) return undefined;
  const code = elf.bytesAt(fn.entry, fn.end - fn.entry);
  if (!code) throw new GoBinarySkip("corrupt_binary", `the code of ${name} is not in the file`);
  return { fn, code };
}

function entrySite(elf: ElfFile, fns: GoFunctionTable, name: string): ProbeSite | undefined {
  const f = functionCode(elf, fns, name);
  if (!f) return undefined;
  const best = findEntryProbeSite(f.code, f.fn.entry);
  return site(elf, best.address, best.emulated, name);
}

/** Analyses the bytes of an executable. Throws {@linkcode GoBinarySkip} when go-http cannot use it. */
export function analyzeGoBinary(bytes: Uint8Array): GoHttpBinary {
  try {
    return analyze(bytes);
  } catch (e) {
    // Code that does not decode as x86-64 where a function should be: never guess a probe site.
    if (e instanceof X86DecodeError) throw new GoBinarySkip("corrupt_binary", e.message);
    throw e;
  }
}

function analyze(bytes: Uint8Array): GoHttpBinary {
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(bytes);
  } catch (e) {
    if (e instanceof ElfError) {
      throw new GoBinarySkip(e.reason === "not_elf" ? "not_elf" : "corrupt_binary", e.message);
    }
    throw e;
  }
  let fns: GoFunctionTable;
  try {
    fns = readGoFunctions(elf);
  } catch (e) {
    if (e instanceof GoPclntabError) {
      // "unsupported": a pre-1.18 pclntab, or a magic newer than any known (its layout too).
      const reason = e.reason === "not_go"
        ? "not_go"
        : e.reason === "malformed"
        ? "corrupt_binary"
        : /Go 1\.(2-1\.15|16-1\.17)/.test(e.message)
        ? "go_too_old"
        : "unknown_go_version";
      throw new GoBinarySkip(reason, e.message);
    }
    if (e instanceof ElfError) throw new GoBinarySkip("corrupt_binary", e.message);
    throw e;
  }
  let goVersion: string | undefined;
  try {
    goVersion = readGoBuildInfo(elf)?.goVersion;
  } catch (e) {
    if (!(e instanceof ElfError)) throw e;
  }
  if (!goVersion || !parseGoVersion(goVersion)) {
    throw new GoBinarySkip("unknown_go_version", "the Go version cannot be read");
  }
  if (compareGoVersions(goVersion, MIN_GO) < 0) {
    throw new GoBinarySkip(
      "go_too_old",
      `${goVersion} passes arguments on the stack (go-http needs ${MIN_GO} or later)`,
    );
  }

  let server: GoHttpBinary["server"];
  const start = entrySite(elf, fns, GO_FUNCTIONS.serverStart);
  const status = entrySite(elf, fns, GO_FUNCTIONS.serverStatus);
  const end = entrySite(elf, fns, GO_FUNCTIONS.serverEnd);
  if (start && status && end) {
    const h2Status = entrySite(elf, fns, GO_FUNCTIONS.http2Status);
    const h2End = entrySite(elf, fns, GO_FUNCTIONS.http2End);
    server = { start, status, end };
    if (h2Status && h2End) server.http2 = { status: h2Status, end: h2End };
  }

  let client: GoHttpBinary["client"];
  const roundTrip = functionCode(elf, fns, GO_FUNCTIONS.clientRoundTrip);
  if (roundTrip) {
    const entry = findEntryProbeSite(roundTrip.code, roundTrip.fn.entry);
    const returns = findReturnSites(roundTrip.code, roundTrip.fn.entry);
    if (returns.length === 0) {
      throw new GoBinarySkip("corrupt_binary", `no RET found in ${GO_FUNCTIONS.clientRoundTrip}`);
    }
    client = {
      start: site(elf, entry.address, entry.emulated, GO_FUNCTIONS.clientRoundTrip),
      returns: returns.map((a) => site(elf, a, false, `${GO_FUNCTIONS.clientRoundTrip} RET`)),
    };
  }
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

/** A file's identity: a binary replaced on disk is analysed again. */
function identity(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}`;
  } catch {
    return undefined;
  }
}

/** Analyses cached by file identity (a Go binary is tens of MB: read each one once). */
export class GoBinaryCache {
  readonly #results = new Map<string, GoHttpBinary | GoBinarySkip>();
  readonly #max: number;

  constructor(max = 256) {
    this.#max = max;
  }

  /** The analysis of the file at `path`, or the reason it cannot be used. */
  analyze(path: string): GoHttpBinary | GoBinarySkip {
    const id = identity(path);
    if (!id) return new GoBinarySkip("unreadable", `cannot stat ${path}`);
    const known = this.#results.get(id);
    if (known) return known;
    let result: GoHttpBinary | GoBinarySkip;
    try {
      result = analyzeGoBinary(Deno.readFileSync(path));
    } catch (e) {
      if (e instanceof GoBinarySkip) result = e;
      else if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
        result = new GoBinarySkip("unreadable", `cannot read ${path}: ${(e as Error).message}`);
      } else throw e;
    }
    if (this.#results.size >= this.#max) this.#results.clear();
    this.#results.set(id, result);
    return result;
  }

  /** Whether `path` is cheaply seen to be a Go executable (ELF with Go sections). */
  static looksLikeGo(path: string): boolean {
    return looksLikeGo(path);
  }
}

/**
 * Reads only the ELF section header names: a Go executable has `.gopclntab` (or `.go.buildinfo`).
 * Cheap enough to ask for every new process's executable.
 */
function looksLikeGo(path: string): boolean {
  let file: Deno.FsFile | undefined;
  try {
    file = Deno.openSync(path);
    const header = new Uint8Array(64);
    if (file.readSync(header) !== 64) return false;
    const h = new DataView(header.buffer);
    if (h.getUint32(0) !== 0x7f454c46 || header[4] !== 2 || header[5] !== 1) return false;
    const shoff = Number(h.getBigUint64(0x28, true));
    const shentsize = h.getUint16(0x3a, true);
    const shnum = h.getUint16(0x3c, true);
    const shstrndx = h.getUint16(0x3e, true);
    if (!shoff || shentsize !== 64 || shnum === 0 || shstrndx >= shnum || shnum > 4096) {
      return false;
    }
    const table = new Uint8Array(shnum * 64);
    file.seekSync(shoff, Deno.SeekMode.Start);
    if (readFull(file, table) !== table.length) return false;
    const t = new DataView(table.buffer);
    const strOff = Number(t.getBigUint64(shstrndx * 64 + 0x18, true));
    const strSize = Math.min(Number(t.getBigUint64(shstrndx * 64 + 0x20, true)), 1 << 16);
    const names = new Uint8Array(strSize);
    file.seekSync(strOff, Deno.SeekMode.Start);
    if (readFull(file, names) !== names.length) return false;
    const text = new TextDecoder("latin1").decode(names);
    return text.includes(".gopclntab\0") || text.includes(".go.buildinfo\0");
  } catch {
    return false;
  } finally {
    file?.close();
  }
}

function readFull(file: Deno.FsFile, into: Uint8Array): number {
  let got = 0;
  while (got < into.length) {
    const n = file.readSync(into.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}
