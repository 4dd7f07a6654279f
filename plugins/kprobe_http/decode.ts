/**
 * Decoder for `struct http_request_event` (must match kprobe_http.h: the offsets below are that
 * struct's, little-endian, 144 bytes). Pure: bytes in, a plain object out; it copies what it
 * keeps, because the bytes are a view into the ring buffer that is reused once it returns.
 *
 * @module
 */

/** sizeof(struct http_request_event). */
export const HTTP_EVENT_SIZE = 144;
/** HTTP_PATH_MAX in kprobe_http.h. */
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
} as const;

/** http_request_event.kind values. */
export const HttpEventKind = { serverRequest: 1 } as const;

/** http_request_event.flags bits. */
export const HttpEventFlag = {
  pathTruncated: 0x01,
  timeout: 0x02,
  closed: 0x04,
  evicted: 0x08,
  parseLost: 0x10,
} as const;

/** enum http_method, index = value. 0 is any other token (OpenTelemetry's `_OTHER`). */
export const HTTP_METHODS = [
  "_OTHER",
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "CONNECT",
  "OPTIONS",
  "TRACE",
  "PATCH",
] as const;

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
] as const;

export interface HttpRequestEvent {
  kind: number;
  tgid: number;
  connId: bigint;
  /** CLOCK_MONOTONIC nanoseconds: the read that returned the request's first byte. */
  startNs: bigint;
  /** The write of the response status line, or when the request was given up on. */
  endNs: bigint;
  /** Request body bytes. */
  bodySize: number;
  /** 0 when no response was seen (timeout, close, eviction). */
  status: number;
  method: string;
  path: string;
  flags: number;
}

/** Decodes one record; throws a RangeError on a record of the wrong size. */
export function decodeHttpRequestEvent(bytes: Uint8Array): HttpRequestEvent {
  if (bytes.length !== HTTP_EVENT_SIZE) {
    throw new RangeError(
      `http_request_event must be ${HTTP_EVENT_SIZE} bytes, got ${bytes.length}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pathLen = Math.min(bytes[OFFSET.pathLen], HTTP_PATH_MAX);
  return {
    kind: bytes[OFFSET.kind],
    tgid: view.getUint32(OFFSET.tgid, true),
    connId: view.getBigUint64(OFFSET.connId, true),
    startNs: view.getBigUint64(OFFSET.startNs, true),
    endNs: view.getBigUint64(OFFSET.endNs, true),
    bodySize: Number(view.getBigUint64(OFFSET.bodySize, true)),
    status: view.getUint16(OFFSET.status, true),
    method: HTTP_METHODS[bytes[OFFSET.method]] ?? "_OTHER",
    path: latin1(bytes, OFFSET.path, pathLen),
    flags: bytes[OFFSET.flags],
  };
}

/** Request paths are bytes; latin1 keeps every byte as one char (no replacement chars). */
function latin1(bytes: Uint8Array, start: number, length: number): string {
  let s = "";
  for (let i = start; i < start + length; i++) s += String.fromCharCode(bytes[i]);
  return s;
}

/** Builds the bytes of an event: the other half of the decoder, for tests and fixtures. */
export function encodeHttpRequestEvent(
  e: Partial<HttpRequestEvent> & { methodIndex?: number },
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
  const path = new TextEncoder().encode(e.path ?? "/").subarray(0, HTTP_PATH_MAX);
  bytes[OFFSET.pathLen] = path.length;
  bytes[OFFSET.kind] = e.kind ?? HttpEventKind.serverRequest;
  bytes.set(path, OFFSET.path);
  return bytes;
}
