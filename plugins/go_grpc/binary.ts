/**
 * What go-grpc needs to know about one Go executable: whether it uses grpc-go, which version,
 * where its four probes go and the struct field offsets they read (go_grpc.h). The offsets come
 * from DWARF when the binary has it, else from offsets.json by grpc-go version: the version of
 * the `google.golang.org/grpc` module in the build info (module builds, stripped or not), else
 * the `grpc-go/X.Y.Z` user-agent string grpc-go compiles into every program that dials.
 *
 * @module
 */
import { readStructFields } from "../../lib/dwarf.ts";
import { readGoBuildInfo } from "../../lib/go_buildinfo.ts";
import {
  entrySite,
  GoBinaryCache,
  GoBinarySkip,
  type GoExecutable,
  openGoExecutable,
  type ProbeSite,
} from "../../lib/go_binary.ts";
import type { ElfFile } from "../../lib/elf.ts";
import offsetsTable from "./offsets.json" with { type: "json" };

export const GRPC_FUNCTIONS = {
  serverStart: "google.golang.org/grpc.(*Server).handleStream",
  serverEnd: "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
  clientStart: "google.golang.org/grpc.(*csAttempt).newStream",
  clientEnd: "google.golang.org/grpc.(*csAttempt).finish",
  statusErrorError: "google.golang.org/grpc/internal/status.(*Error).Error",
} as const;

/** The fields the probes read (names as in offsets.json). */
export const GRPC_FIELDS: Record<string, string[]> = {
  "google.golang.org/grpc/internal/transport.Stream": ["method", "status"],
  "google.golang.org/grpc/internal/transport.CallHdr": ["Method"],
  "google.golang.org/grpc.clientStream": ["callHdr"],
  "google.golang.org/grpc.csAttempt": ["cs", "s"],
  "google.golang.org/grpc/internal/status.Status": ["s"],
  "google.golang.org/grpc/internal/status.Error": ["e"],
  "google.golang.org/genproto/googleapis/rpc/status.Status": ["Code"],
};

export interface GoGrpcOffsets {
  streamMethod: number;
  streamStatus: number;
  callHdrMethod: number;
  clientStreamCallHdr: number;
  csAttemptCs: number;
  csAttemptS: number;
  statusCode: number;
}

export interface GoGrpcBinary {
  goVersion: string;
  /** "1.33.3", when the binary tells. */
  grpcVersion?: string;
  offsetsFrom: "dwarf" | "table";
  offsets: GoGrpcOffsets;
  server?: { start: ProbeSite; end: ProbeSite };
  client?: { start: ProbeSite; end: ProbeSite; statusErrorError: number };
}

interface OffsetsTable {
  versions: Record<string, Record<string, number>>;
}

/** The offsets of grpc-go `version` ("1.33.3" or "v1.33.3") from offsets.json, or undefined. */
export function tableOffsets(version: string): GoGrpcOffsets | undefined {
  const m = /^v?(\d+)\.(\d+)\./.exec(version);
  if (!m) return undefined;
  const entry = (offsetsTable as unknown as OffsetsTable).versions[`${m[1]}.${m[2]}`];
  return entry ? fromFields((name) => entry[name]) : undefined;
}

function fromFields(get: (name: string) => number | undefined): GoGrpcOffsets | undefined {
  const t = "google.golang.org/grpc/internal/transport.";
  const offsets = {
    streamMethod: get(`${t}Stream.method`),
    streamStatus: get(`${t}Stream.status`),
    callHdrMethod: get(`${t}CallHdr.Method`),
    clientStreamCallHdr: get("google.golang.org/grpc.clientStream.callHdr"),
    csAttemptCs: get("google.golang.org/grpc.csAttempt.cs"),
    csAttemptS: get("google.golang.org/grpc.csAttempt.s"),
    statusCode: get("google.golang.org/genproto/googleapis/rpc/status.Status.Code"),
  };
  // The *spb.Status is the first field of status.Status and status.Error (go_grpc.h).
  if (get("google.golang.org/grpc/internal/status.Status.s") !== 0) return undefined;
  if (get("google.golang.org/grpc/internal/status.Error.e") !== 0) return undefined;
  return Object.values(offsets).every((n) => typeof n === "number")
    ? offsets as GoGrpcOffsets
    : undefined;
}

/** The field offsets in the binary's DWARF, by "struct.field" (all of GRPC_FIELDS found). */
export function dwarfFields(elf: ElfFile): Map<string, number> {
  const out = new Map<string, number>();
  for (const [struct, fields] of readStructFields(elf, GRPC_FIELDS)) {
    for (const [field, offset] of fields) out.set(`${struct}.${field}`, offset);
  }
  return out;
}

/** grpc-go's version: from the build info's modules, else the user-agent string. */
export function grpcVersionOf(exe: GoExecutable): string | undefined {
  try {
    const dep = readGoBuildInfo(exe.elf)?.modules.find((m) => m.path === "google.golang.org/grpc");
    const version = dep?.replace?.version ?? dep?.version;
    if (version) return version.replace(/^v/, "");
  } catch { /* no build info: look for the string */ }
  // The string is a literal: in .rodata (the whole file only if there is no such section).
  const rodata = exe.elf.section(".rodata");
  return rodata
    ? exe.elf.scanSection(rodata, userAgentVersion, 1 << 20, 64)
    : userAgentVersion(exe.elf.bytes);
}

const UA = new TextEncoder().encode("grpc-go/");

/** X.Y.Z of the first "grpc-go/X.Y.Z" in `bytes`. */
export function userAgentVersion(bytes: Uint8Array): string | undefined {
  for (let at = bytes.indexOf(UA[0]); at >= 0; at = bytes.indexOf(UA[0], at + 1)) {
    if (!UA.every((b, i) => bytes[at + i] === b)) continue;
    const tail = String.fromCharCode(...bytes.subarray(at + UA.length, at + UA.length + 24));
    const m = /^(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)/.exec(tail);
    if (m) return m[1];
  }
  return undefined;
}

/** Analyses the bytes of an executable. Throws {@linkcode GoBinarySkip} when go-grpc cannot use it. */
export function analyzeGrpcBinary(file: Uint8Array | ElfFile): GoGrpcBinary {
  const exe = openGoExecutable(file, "go-grpc");
  const serverStart = entrySite(exe, GRPC_FUNCTIONS.serverStart);
  const serverEnd = entrySite(exe, GRPC_FUNCTIONS.serverEnd);
  const clientStart = entrySite(exe, GRPC_FUNCTIONS.clientStart);
  const clientEnd = entrySite(exe, GRPC_FUNCTIONS.clientEnd);
  const errorFn = exe.functions.lookup(GRPC_FUNCTIONS.statusErrorError);
  const server = serverStart && serverEnd ? { start: serverStart, end: serverEnd } : undefined;
  const client = clientStart && clientEnd && errorFn
    ? { start: clientStart, end: clientEnd, statusErrorError: errorFn.entry }
    : undefined;
  if (!server && !client) {
    throw new GoBinarySkip("no_grpc", `${exe.goVersion} program without grpc-go`);
  }
  const grpcVersion = grpcVersionOf(exe);
  let offsets: GoGrpcOffsets | undefined;
  let offsetsFrom: GoGrpcBinary["offsetsFrom"] = "dwarf";
  try {
    const fields = dwarfFields(exe.elf);
    offsets = fromFields((name) => fields.get(name));
  } catch {
    offsets = undefined; // corrupt DWARF: the table is as good
  }
  if (!offsets && grpcVersion) {
    offsets = tableOffsets(grpcVersion);
    offsetsFrom = "table";
  }
  if (!offsets) {
    throw new GoBinarySkip(
      "unknown_grpc_version",
      grpcVersion
        ? `no DWARF and no struct offsets known for grpc-go ${grpcVersion} (plugins/go_grpc/offsets.json)`
        : "no DWARF, and the grpc-go version cannot be read",
    );
  }
  const { statusCode, ...pointers } = offsets;
  if (statusCode > 255 || Object.values(pointers).some((n) => n % 8 !== 0 || n / 8 > 255)) {
    throw new GoBinarySkip("unknown_grpc_version", "struct offsets out of the cookie's range");
  }
  return { goVersion: exe.goVersion, grpcVersion, offsetsFrom, offsets, server, client };
}

/** The cookies of the four probes (go_grpc.h). */
export function probeCookies(binary: GoGrpcBinary): {
  serverStart: bigint;
  serverEnd: bigint;
  clientStart: bigint;
  clientEnd: bigint;
} {
  const o = binary.offsets;
  const bytes = (...b: number[]) =>
    b.reduce((c, v, i) => c | BigInt(v & 0xff) << BigInt(8 * i), 0n);
  let clientEnd = bytes(o.csAttemptS / 8, o.streamStatus / 8, o.statusCode);
  if (binary.client) {
    const delta = binary.client.statusErrorError - binary.client.end.address;
    clientEnd |= BigInt.asUintN(32, BigInt(delta)) << 32n;
  }
  return {
    serverStart: bytes(o.streamMethod / 8),
    serverEnd: bytes(0, 0, o.statusCode),
    clientStart: bytes(o.csAttemptCs / 8, o.clientStreamCallHdr / 8, o.callHdrMethod / 8),
    clientEnd,
  };
}

/** go-grpc's analyses, cached by file identity. */
export function goGrpcBinaryCache(max = 256): GoBinaryCache<GoGrpcBinary> {
  return new GoBinaryCache(analyzeGrpcBinary, max);
}
