/**
 * Decoder for the records and keys of the HTTP/1 engine (bpf/http1_engine.h) that kprobe-http
 * and tls-uprobe share: `struct http_request_event`, `struct http_agg_key`, `struct http_path`
 * (they must match bpf/http1.h: the offsets below are those structs', little-endian; the test
 * checks them against the header and the committed objects). Pure: bytes in, a plain object out; it copies what it
 * keeps, because the bytes are a view into the ring buffer that is reused once it returns.
 *
 * @module
 */
import { ByteStringCache } from "./byte_strings.ts";
import { KNOWN_HTTP_METHODS } from "./http_methods.ts";
import { formatIp } from "./ip.ts";

/** sizeof(struct http_request_event). */
export const HTTP_EVENT_SIZE = 168;
/** HTTP_PATH_MAX in bpf/http1.h. */
export const HTTP_PATH_MAX = 96;

const OFFSET = {
  startNs: 0,
  endNs: 8,
  bodySize: 16,
  connId: 24,
  tgid: 32,
  status: 36,
  method: 38,
  flags: 39,
  pathLen: 40,
  kind: 41,
  path: 48,
  peer: 144, // struct http_peer: addr[16], port u16, family u8
} as const;

/** http_request_event.kind values. */
export const HttpEventKind = { serverRequest: 1, clientRequest: 2 } as const;

/** http_request_event.flags bits. */
export const HttpEventFlag = {
  pathTruncated: 0x01,
  timeout: 0x02,
  closed: 0x04,
  evicted: 0x08,
  parseLost: 0x10,
  client: 0x20,
} as const;

/** enum http_method, index = value. 0 is any other token (OpenTelemetry's `_OTHER`). */
export const HTTP_METHODS = ["_OTHER", ...KNOWN_HTTP_METHODS] as const;

/** Names of the stats map indices 1.. (enum http_stat), for the agent's counters. */
export const HTTP_KERNEL_COUNTERS = [
  "connections_opened",
  "connections_not_http",
  "response_resyncs",
  "late_responses",
  "unmatched_responses",
  "requests_evicted",
  "unsupported_io",
  "parse_limit_reached",
  "requests_timed_out",
  "requests_closed_unanswered",
  "paths_truncated",
  "connection_table_full",
  "requests_aggregated",
  "requests_not_aggregated",
  "client_connections_opened",
] as const;

/**
 * One decoded event. The 64-bit fields are kept as 32-bit halves and turned into bigints only
 * when asked for: the agent decodes tens of thousands of these a second and needs only the
 * duration, which is computed exactly from the halves.
 */
export class HttpRequestEvent {
  constructor(
    readonly kind: number,
    readonly tgid: number,
    /** 0 when no response was seen (timeout, close, eviction). */
    readonly status: number,
    /** Upper-case method, or `_OTHER`. */
    readonly method: string,
    readonly path: string,
    readonly flags: number,
    /** Request body bytes. */
    readonly bodySize: number,
    /** From the end of the read that returned the request's first byte to the status line. */
    readonly durationNs: number,
    readonly halves: readonly number[], // start lo/hi, end lo/hi, conn lo/hi
    /** Client side with peer labels on: where the request went. */
    readonly serverAddress?: string,
    readonly serverPort?: number,
  ) {}

  /** CLOCK_MONOTONIC nanoseconds: the read that returned the request's first byte. */
  get startNs(): bigint {
    return join64(this.halves[0], this.halves[1]);
  }

  /** The write of the response status line, or when the request was given up on. */
  get endNs(): bigint {
    return join64(this.halves[2], this.halves[3]);
  }

  /** The socket cookie of the connection. */
  get connId(): bigint {
    return join64(this.halves[4], this.halves[5]);
  }
}

function join64(lo: number, hi: number): bigint {
  return (BigInt(hi) << 32n) | BigInt(lo);
}

const paths = new ByteStringCache();

/** Little-endian u32 at `offset`, without a DataView (a DataView per record costs ~100 ns). */
function u32(b: Uint8Array, offset: number): number {
  return (b[offset] | b[offset + 1] << 8 | b[offset + 2] << 16 | b[offset + 3] << 24) >>> 0;
}

/** Decodes one record; throws a RangeError on a record of the wrong size. */
export function decodeHttpRequestEvent(bytes: Uint8Array): HttpRequestEvent {
  if (bytes.length !== HTTP_EVENT_SIZE) {
    throw new RangeError(
      `http_request_event must be ${HTTP_EVENT_SIZE} bytes, got ${bytes.length}`,
    );
  }
  const startLo = u32(bytes, OFFSET.startNs), startHi = u32(bytes, OFFSET.startNs + 4);
  const endLo = u32(bytes, OFFSET.endNs), endHi = u32(bytes, OFFSET.endNs + 4);
  const pathLen = Math.min(bytes[OFFSET.pathLen], HTTP_PATH_MAX);
  const peer = decodePeer(bytes, OFFSET.peer);
  return new HttpRequestEvent(
    bytes[OFFSET.kind],
    u32(bytes, OFFSET.tgid),
    bytes[OFFSET.status] | bytes[OFFSET.status + 1] << 8,
    HTTP_METHODS[bytes[OFFSET.method]] ?? "_OTHER",
    // Request paths are bytes: latin1 keeps each as one char (no replacement characters).
    paths.get(bytes, OFFSET.path, OFFSET.path + pathLen),
    bytes[OFFSET.flags],
    u32(bytes, OFFSET.bodySize) + u32(bytes, OFFSET.bodySize + 4) * 2 ** 32,
    (endHi - startHi) * 2 ** 32 + (endLo - startLo),
    [startLo, startHi, endLo, endHi, u32(bytes, OFFSET.connId), u32(bytes, OFFSET.connId + 4)],
    peer?.[0],
    peer?.[1],
  );
}

/** A struct http_peer at `at`: [address, port], or undefined when not recorded. */
function decodePeer(bytes: Uint8Array, at: number): [string, number] | undefined {
  const address = formatIp(bytes.subarray(at, at + 16), bytes[at + 18]);
  return address === undefined ? undefined : [address, bytes[at + 16] | bytes[at + 17] << 8];
}

/**
 * Builds the bytes of an event: the other half of the decoder, for tests and fixtures. The path
 * is written as latin1, one byte per char, as the decoder reads it (so `decode(encode(e))` gives
 * `e.path` back); a char above U+00FF is a RangeError.
 */
export function encodeHttpRequestEvent(
  e: Partial<Omit<HttpRequestEvent, "halves" | "durationNs">> & { methodIndex?: number },
): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(HTTP_EVENT_SIZE);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(OFFSET.startNs, e.startNs ?? 0n, true);
  view.setBigUint64(OFFSET.endNs, e.endNs ?? 0n, true);
  view.setBigUint64(OFFSET.bodySize, BigInt(e.bodySize ?? 0), true);
  view.setBigUint64(OFFSET.connId, e.connId ?? 0n, true);
  view.setUint32(OFFSET.tgid, e.tgid ?? 0, true);
  view.setUint16(OFFSET.status, e.status ?? 0, true);
  const methodIndex = e.methodIndex ??
    HTTP_METHODS.indexOf((e.method ?? "GET") as typeof HTTP_METHODS[number]);
  bytes[OFFSET.method] = Math.max(0, methodIndex);
  bytes[OFFSET.flags] = e.flags ?? 0;
  const path = latin1Bytes(e.path ?? "/").subarray(0, HTTP_PATH_MAX);
  bytes[OFFSET.pathLen] = path.length;
  bytes[OFFSET.kind] = e.kind ?? HttpEventKind.serverRequest;
  bytes.set(path, OFFSET.path);
  return bytes;
}

function latin1Bytes(text: string): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) {
      throw new RangeError(`path ${JSON.stringify(text)} has a char above U+00FF at ${i}`);
    }
    bytes[i] = code;
  }
  return bytes;
}

/** sizeof(struct http_agg_key). */
export const HTTP_AGG_KEY_SIZE = 40;

/** struct http_agg_key (bpf/http1.h). */
export interface HttpAggKey {
  /** The path hash, as the 8 key bytes of the paths map. */
  pathHash: Uint8Array<ArrayBuffer>;
  tgid: number;
  status: number;
  method: string;
  flags: number;
  serverAddress?: string;
  serverPort?: number;
}

export function decodeHttpAggKey(key: Uint8Array): HttpAggKey {
  if (key.length !== HTTP_AGG_KEY_SIZE) {
    throw new RangeError(`http_agg_key must be ${HTTP_AGG_KEY_SIZE} bytes, got ${key.length}`);
  }
  const peer = decodePeer(key, 16);
  return {
    pathHash: key.slice(0, 8),
    tgid: u32(key, 8),
    status: key[12] | key[13] << 8,
    method: HTTP_METHODS[key[14]] ?? "_OTHER",
    flags: key[15],
    ...(peer ? { serverAddress: peer[0], serverPort: peer[1] } : {}),
  };
}

/** The path in a struct http_path (value of the paths map). */
export function decodeHttpPath(value: Uint8Array): string {
  const len = Math.min(value[0], HTTP_PATH_MAX, value.length - 8);
  return paths.get(value, 8, 8 + len);
}
