/**
 * `ingest-bench`: the plugin scripts/bench_ingest.ts loads into the real agent through
 * `plugin_modules`, to find how many ring-buffer records per second the agent's own path
 * handles (PluginHost's reader -> decode -> toObservation -> route mapping -> exporter
 * histograms). Its BPF program (ingest.bpf.c) writes one 64-byte HTTP-server-shaped record
 * (or `records_per_call`) per getppid() call of an instrumented process; the benchmark's generator (gen.c) makes those
 * calls at a chosen rate. Not a plugin for production use.
 *
 * @module
 */
import { z } from "zod";
import { definePlugin } from "../../mod.ts";
import bpfObject from "./ingest.bpf.o" with { type: "bytes" };

/** One record of ingest.bpf.c (`struct ingest_event`, 64 bytes). */
export interface IngestEvent {
  tgid: number;
  status: number;
  method: string;
  startNs: bigint;
  durationSeconds: number;
  seq: bigint;
  path: string;
}

export const INGEST_RECORD_BYTES = 64;
const METHODS = ["GET", "POST"];
const utf8 = new TextDecoder();

/** Decodes one record, copying what it keeps (the path as a string), as real plugins do. */
export function decodeIngestEvent(bytes: Uint8Array): IngestEvent {
  if (bytes.length < INGEST_RECORD_BYTES) throw new Error(`short record (${bytes.length} bytes)`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pathLen = Math.min(view.getUint8(7), 32);
  return {
    tgid: view.getUint32(0, true),
    status: view.getUint16(4, true),
    method: METHODS[view.getUint8(6)] ?? "_OTHER",
    startNs: view.getBigUint64(8, true),
    durationSeconds: Number(view.getBigUint64(16, true)) / 1e9,
    seq: view.getBigUint64(24, true),
    path: utf8.decode(bytes.subarray(32, 32 + pathLen)),
  };
}

export const ingestOptions = z.strictObject({
  /** Records the BPF program writes per getppid() call (1..8). */
  records_per_call: z.number().int().min(1).max(8).default(1),
});

export default definePlugin<IngestEvent, z.infer<typeof ingestOptions>>({
  id: "ingest-bench",
  description: "Synthetic HTTP-shaped records, one per getppid() of a target (benchmark only)",
  bpfObject,
  optionsSchema: ingestOptions,
  constants: ({ options }) => ({ records_per_call: options.records_per_call }),
  attachOnce: [{ kind: "auto", program: "ingest_getppid" }],
  decode: decodeIngestEvent,
  toObservation: (e) => ({
    kind: "http_server",
    pid: e.tgid,
    durationSeconds: e.durationSeconds,
    startNs: e.startNs,
    method: e.method,
    status: e.status,
    route: e.path,
    path: e.path,
  }),
});
