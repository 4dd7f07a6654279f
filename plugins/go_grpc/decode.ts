/**
 * Decoders for go_grpc.h: `struct go_grpc_event` (a ring-buffer record, 160 bytes),
 * `struct go_grpc_agg_key` (16 bytes) and `struct go_grpc_method`. Pure: bytes in, plain
 * objects out, nothing kept that points into the ring buffer.
 *
 * @module
 */
import { ByteStringCache } from "../../lib/byte_strings.ts";

/** sizeof(struct go_grpc_event). */
export const GO_GRPC_EVENT_SIZE = 160;
export const GO_GRPC_METHOD_MAX = 128;
/** sizeof(struct go_grpc_agg_key). */
export const GO_GRPC_AGG_KEY_SIZE = 16;

const OFFSET = {
  startNs: 0,
  durationNs: 8,
  tgid: 16,
  code: 20,
  kind: 22,
  flags: 23,
  methodLen: 24,
  method: 32,
} as const;

/** go_grpc_event.kind */
export const GoGrpcKind = { server: 1, client: 2 } as const;

/** go_grpc_event.flags and go_grpc_agg_key.flags */
export const GoGrpcFlag = { methodTruncated: 0x01, noStatus: 0x02 } as const;

/** Names of the stats map indices 1.. (enum go_grpc_stat). */
export const GO_GRPC_KERNEL_COUNTERS = [
  "grpc_server_starts",
  "grpc_server_ends_unpaired",
  "grpc_client_starts",
  "grpc_client_ends_unpaired",
  "grpc_start_table_full",
  "grpc_memory_read_failures",
  "grpc_methods_truncated",
  "grpc_calls_aggregated",
  "grpc_calls_not_aggregated",
] as const;

export interface GoGrpcEvent {
  kind: number;
  tgid: number;
  code: number;
  flags: number;
  /** bpf_ktime_get_ns() at the call's start (the span's start when traces are on). */
  startNs: bigint;
  durationNs: number;
  method: string;
}

const strings = new ByteStringCache();

/** `bytes` -> event; throws a RangeError on a record of the wrong size. */
export function decodeGoGrpcEvent(bytes: Uint8Array): GoGrpcEvent {
  if (bytes.length < GO_GRPC_EVENT_SIZE) {
    throw new RangeError(`go-grpc record of ${bytes.length} bytes, expected ${GO_GRPC_EVENT_SIZE}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = Math.min(view.getUint16(OFFSET.methodLen, true), GO_GRPC_METHOD_MAX);
  return {
    kind: bytes[OFFSET.kind],
    tgid: view.getUint32(OFFSET.tgid, true),
    code: view.getUint16(OFFSET.code, true),
    flags: bytes[OFFSET.flags],
    startNs: view.getBigUint64(OFFSET.startNs, true),
    durationNs: Number(view.getBigUint64(OFFSET.durationNs, true)),
    method: strings.get(bytes, OFFSET.method, OFFSET.method + len),
  };
}

/** struct go_grpc_agg_key. */
export interface GoGrpcAggKey {
  /** The method hash, as the 8 key bytes of the methods map. */
  methodHash: Uint8Array<ArrayBuffer>;
  tgid: number;
  code: number;
  kind: number;
  flags: number;
}

export function decodeGoGrpcAggKey(key: Uint8Array): GoGrpcAggKey {
  if (key.length !== GO_GRPC_AGG_KEY_SIZE) {
    throw new RangeError(
      `go_grpc_agg_key must be ${GO_GRPC_AGG_KEY_SIZE} bytes, got ${key.length}`,
    );
  }
  const view = new DataView(key.buffer, key.byteOffset, key.byteLength);
  return {
    methodHash: key.slice(0, 8),
    tgid: view.getUint32(8, true),
    code: view.getUint16(12, true),
    kind: key[14],
    flags: key[15],
  };
}

/** The name in a struct go_grpc_method (value of the methods map). */
export function decodeGoGrpcMethod(value: Uint8Array): string {
  const len = Math.min(value[0] | value[1] << 8, GO_GRPC_METHOD_MAX, value.length - 8);
  return strings.get(value, 8, 8 + len);
}

/**
 * The rpc_method label: the full method ("/package.Service/Method"); a truncated one keeps its
 * service and ends in "/*" rather than naming a method that does not exist.
 */
export function rpcMethodLabel(method: string, truncated: boolean): string {
  if (!truncated) return method;
  const slash = method.lastIndexOf("/");
  return slash > 0 ? `${method.slice(0, slash)}/*` : "_OTHER";
}
