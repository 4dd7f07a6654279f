/**
 * `kprobe-http`: HTTP/1.x server metrics for any process (nginx, Python, Node, Java, ...),
 * measured in the kernel on the socket tracepoints. It needs no kprobes, despite its name
 * (kept for compatibility with the design card): see kprobe_http.bpf.c for how and why.
 *
 * Duration: from the end of the read that returned the request's first byte to the end of the
 * write of the response's status line. Request size: the request body (Content-Length, or the
 * sum of the chunk sizes of a chunked body).
 *
 * @module
 */
import { z } from "zod";
import { definePlugin } from "../../core/plugin.ts";
import bpfObject from "./kprobe_http.bpf.o" with { type: "bytes" };
import {
  decodeHttpRequestEvent,
  HTTP_KERNEL_COUNTERS,
  type HttpRequestEvent,
} from "../../lib/http1_records.ts";
import {
  http1Aggregates,
  http1EngineConstants,
  http1EngineOptions,
  http1MaxEntries,
  http1Observation,
} from "../../lib/http1_plugin.ts";

export const kprobeHttpOptions = z.strictObject(http1EngineOptions);

export type KprobeHttpOptions = z.infer<typeof kprobeHttpOptions>;

export default definePlugin<HttpRequestEvent, KprobeHttpOptions>({
  id: "kprobe-http",
  description: "HTTP/1.x servers and clients in any language, from socket tracepoints",
  bpfObject,
  optionsSchema: kprobeHttpOptions,
  constants: http1EngineConstants,
  maxEntries: http1MaxEntries,
  attachOnce: [
    { kind: "auto", program: "on_sock_recv" },
    { kind: "auto", program: "on_sock_send" },
    { kind: "auto", program: "on_sock_state" },
  ],
  kernelCounters: HTTP_KERNEL_COUNTERS,
  aggregates: http1Aggregates,
  decode: decodeHttpRequestEvent,
  toObservation: http1Observation,
});
