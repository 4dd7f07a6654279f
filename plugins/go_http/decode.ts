/**
 * Decoder for `struct go_http_event` (go_http.h; the offsets below are that struct's,
 * little-endian, 184 bytes). Pure: bytes in, a plain object out, nothing kept that points into
 * the ring buffer.
 *
 * @module
 */
import { ByteStringCache } from "../../lib/byte_strings.ts";
import { httpMethodLabel } from "../../lib/http_methods.ts";

/** sizeof(struct go_http_event). */
export const GO_HTTP_EVENT_SIZE = 232;
export const GO_HTTP_METHOD_MAX = 16;
export const GO_HTTP_PATH_MAX = 128;
export const GO_HTTP_HOST_MAX = 48;

const OFFSET = {
  startNs: 0,
  durationNs: 8,
  contentLength: 16,
  tgid: 24,
  status: 28,
  kind: 30,
  flags: 31,
  methodLen: 32,
  pathLen: 34,
  exeIndex: 36,
  method: 40,
  path: 56,
  host: 184,
} as const;

/** go_http_event.kind */
export const GoHttpKind = { server: 1, client: 2 } as const;

/** go_http_event.flags and go_agg_key.flags */
export const GoHttpFlag = {
  pathTruncated: 0x01,
  noResponse: 0x02,
  longMethod: 0x04,
  https: 0x08,
  longHost: 0x10,
} as const;

/** Names of the stats map indices 1.. (enum go_http_stat). */
export const GO_HTTP_KERNEL_COUNTERS = [
  "go_server_starts",
  "go_server_ends_unpaired",
  "go_client_starts",
  "go_client_ends_unpaired",
  "go_start_table_full",
  "go_memory_read_failures",
  "go_paths_truncated",
  "go_requests_aggregated",
  "go_requests_not_aggregated",
] as const;

export interface GoHttpEvent {
  kind: number;
  tgid: number;
  status: number;
  flags: number;
  /** bpf_ktime_get_ns() at the call's start (the span's start when traces are on). */
  startNs: bigint;
  durationNs: number;
  /** Request body size from Content-Length; -1 when unknown (chunked). */
  contentLength: number;
  method: string;
  path: string;
  /** 0, or 1 + the index of the configured executable whose probe saw this request. */
  exeIndex: number;
  /** Client side with peer labels on: where the request went (from URL.Host and Scheme). */
  serverAddress?: string;
  serverPort?: number;
}

const strings = new ByteStringCache();

/** `bytes` -> event; throws a RangeError on a record of the wrong size. */
export function decodeGoHttpEvent(bytes: Uint8Array): GoHttpEvent {
  if (bytes.length < GO_HTTP_EVENT_SIZE) {
    throw new RangeError(`go-http record of ${bytes.length} bytes, expected ${GO_HTTP_EVENT_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const methodLen = Math.min(view.getUint8(OFFSET.methodLen), GO_HTTP_METHOD_MAX);
  const pathLen = Math.min(view.getUint16(OFFSET.pathLen, true), GO_HTTP_PATH_MAX);
  const method = strings.get(bytes, OFFSET.method, OFFSET.method + methodLen);
  return {
    kind: view.getUint8(OFFSET.kind),
    tgid: view.getUint32(OFFSET.tgid, true),
    status: view.getUint16(OFFSET.status, true),
    flags: view.getUint8(OFFSET.flags),
    // Durations below 2^53 ns (104 days) are exact as numbers.
    startNs: view.getBigUint64(OFFSET.startNs, true),
    durationNs: Number(view.getBigUint64(OFFSET.durationNs, true)),
    contentLength: Number(view.getBigInt64(OFFSET.contentLength, true)),
    method: httpMethodLabel(method),
    path: strings.get(bytes, OFFSET.path, OFFSET.path + pathLen),
    exeIndex: view.getUint32(OFFSET.exeIndex, true),
    ...peerOf(bytes, OFFSET.host, view.getUint8(OFFSET.flags)),
  };
}

/**
 * A URL.Host ("127.0.0.1:8080", "example.com", "[::1]:443") as server_address/server_port; the
 * port defaults from the scheme. Nothing when no host was recorded; a truncated host is left
 * out rather than reported wrong.
 */
export function peerOf(
  bytes: Uint8Array,
  at: number,
  flags: number,
): { serverAddress?: string; serverPort?: number } {
  let end = at;
  while (end < at + GO_HTTP_HOST_MAX && bytes[end] !== 0) end++;
  if (end === at || flags & GoHttpFlag.longHost) return {};
  const host = strings.get(bytes, at, end);
  const m = /^(?:\[([^\]]+)\]|([^:]+))(?::(\d+))?$/.exec(host);
  if (!m) return {};
  const defaultPort = flags & GoHttpFlag.https ? 443 : 80;
  return { serverAddress: m[1] ?? m[2], serverPort: m[3] ? Number(m[3]) : defaultPort };
}

/** sizeof(struct go_agg_key). */
export const GO_AGG_KEY_SIZE = 80;

/** struct go_agg_key (go_http.h). */
export interface GoAggKey {
  /** The path hash, as the 8 key bytes of the paths map. */
  pathHash: Uint8Array<ArrayBuffer>;
  tgid: number;
  status: number;
  kind: number;
  flags: number;
  method: string;
  exeIndex: number;
  /** Client side with peer labels on (see peerOf). */
  serverAddress?: string;
  serverPort?: number;
}

export function decodeGoAggKey(key: Uint8Array): GoAggKey {
  if (key.length !== GO_AGG_KEY_SIZE) {
    throw new RangeError(`go_agg_key must be ${GO_AGG_KEY_SIZE} bytes, got ${key.length}`);
  }
  const view = new DataView(key.buffer, key.byteOffset, key.byteLength);
  const flags = key[15];
  let end = 16;
  while (end < 24 && key[end] !== 0) end++;
  return {
    pathHash: key.slice(0, 8),
    tgid: view.getUint32(8, true),
    status: view.getUint16(12, true),
    kind: key[14],
    flags,
    method: flags & GoHttpFlag.longMethod ? "_OTHER" : httpMethodLabel(strings.get(key, 16, end)),
    exeIndex: view.getUint32(24, true),
    ...peerOf(key, 32, flags),
  };
}

/** The path in a struct go_path (value of the paths map). */
export function decodeGoPath(value: Uint8Array): string {
  const len = Math.min(value[0] | value[1] << 8, GO_HTTP_PATH_MAX, value.length - 8);
  return strings.get(value, 8, 8 + len);
}
