/**
 * The x86-64 analyses of lib/x86_sites.ts (where uprobes go in a function's machine code), with
 * the same synchronous signatures, run in a worker that is let go when the agent is idle.
 *
 * Why: the decoder (iced-x86, Rust compiled to WebAssembly, and its 1.8 MB of JavaScript glue)
 * costs the process ~12 MB once loaded, and an ES module can never be unloaded. The agent needs
 * it only while it analyses a new binary (a Go program, an OpenSSL library): a burst at start
 * and then rarely. In a worker, its memory goes with the worker's isolate.
 *
 * How the calls stay synchronous (the analyses run inside plugins' synchronous planning code): the
 * caller posts the request with a `SharedArrayBuffer` and blocks in `Atomics.wait` until the
 * worker has written the answer there (lib/x86_decoder_worker.ts). The first call after a
 * release waits for the worker to start and load the decoder (~100-200 ms); later calls cost a
 * message round trip (~50 µs), against the analysis itself (~0.1-1 ms per function).
 *
 * The worker is released by {@linkcode releaseX86Decoder} (the agent calls it once a burst of new
 * processes is instrumented) and after {@linkcode IDLE_RELEASE_MS} without a call.
 *
 * The single-file bundle (scripts/bundle.ts) has no worker file beside it: it bundles the worker
 * too and sets `globalThis[BUNDLED_WORKER_SOURCE]` to its source, which is then started from a
 * `blob:` URL.
 *
 * @module
 */
import {
  type CEntryProbeSite,
  type EntryProbeSite,
  X86_ANSWER_OFFSET,
  X86DecodeError,
  type X86Request,
} from "./x86_types.ts";

export { type CEntryProbeSite, type EntryProbeSite, X86DecodeError };
export type { UprobeHandling } from "./x86_types.ts";

/** The global the bundle sets to the bundled worker's source. */
export const BUNDLED_WORKER_SOURCE = "__redprobeX86DecoderWorker";
/** A worker with no call for this long is let go. */
export const IDLE_RELEASE_MS = 10_000;
/** The waits; tests shorten them ({@linkcode setX86DecoderTimeouts}). */
const timeouts = {
  /** Longest wait for one answer (the first includes the worker's start, ~0.2 s). */
  answerMs: 10_000,
  /** After a worker that failed or did not answer, calls fail at once for this long. */
  brokenRetryMs: 60_000,
};
/** Room for one answer: a function's return sites, as JSON. */
const BUFFER_BYTES = 1 << 20;

let worker: Worker | undefined;
let buffer: SharedArrayBuffer | undefined;
let idleTimer: ReturnType<typeof setTimeout> | undefined;
let workerUrl: { source: string; url: string } | undefined;
let broken: { at: number; why: string } | undefined;

function workerScript(): string {
  const bundled = (globalThis as Record<string, unknown>)[BUNDLED_WORKER_SOURCE];
  if (typeof bundled === "string") {
    if (workerUrl?.source !== bundled) {
      if (workerUrl) URL.revokeObjectURL(workerUrl.url);
      const url = URL.createObjectURL(new Blob([bundled], { type: "text/javascript" }));
      workerUrl = { source: bundled, url };
    }
    return workerUrl.url;
  }
  return new URL("./x86_decoder_worker.ts", import.meta.url).href;
}

function startWorker(): Worker {
  const started = new Worker(workerScript(), { type: "module", name: "x86-decoder" });
  // An error in the worker (one that failed to load) must not take the agent down: the call
  // waiting for it times out, and calls fail at once for a while.
  started.onerror = (event) => {
    event.preventDefault();
    broken = { at: performance.now(), why: event.message };
    if (worker === started) releaseX86Decoder();
  };
  return started;
}

/** (Re)arms the idle release: the worker goes IDLE_RELEASE_MS after its last use. */
function armIdleRelease(): void {
  if (idleTimer !== undefined) clearTimeout(idleTimer);
  const timer = setTimeout(releaseX86Decoder, IDLE_RELEASE_MS);
  Deno.unrefTimer(timer as unknown as number); // never what keeps a process (a test) running
  idleTimer = timer;
}

/**
 * Starts the worker now, if none is running, so that it loads the decoder on its own thread
 * while the caller does something else (the agent loads its BPF objects meanwhile); the first
 * analysis then does not wait for it (~0.2-0.4 s on this project's machines).
 */
export function prewarmX86Decoder(): void {
  if (broken && performance.now() - broken.at < timeouts.brokenRetryMs) return;
  worker ??= startWorker();
  armIdleRelease();
}

function call<T>(analysis: X86Request["analysis"], code: Uint8Array, address: number): T {
  if (broken && performance.now() - broken.at < timeouts.brokenRetryMs) {
    throw new Error(`the x86 decoder is unavailable: ${broken.why}`);
  }
  worker ??= startWorker();
  buffer ??= new SharedArrayBuffer(BUFFER_BYTES);
  const state = new Int32Array(buffer, 0, 2);
  Atomics.store(state, 0, 0);
  // slice(): a view's whole ArrayBuffer would be cloned, and `code` is often a view into a
  // section read in one piece (tens of MB of node's .text).
  worker.postMessage({ buffer, analysis, code: code.slice(), address } satisfies X86Request);
  if (Atomics.wait(state, 0, 0, timeouts.answerMs) === "timed-out") {
    broken = { at: performance.now(), why: `no answer within ${timeouts.answerMs} ms` };
    releaseX86Decoder();
    buffer = undefined; // the next worker answers in a buffer this one can no longer touch
    throw new Error(`the x86 decoder worker did not answer within ${timeouts.answerMs} ms`);
  }
  broken = undefined;
  const json = new TextDecoder().decode(
    new Uint8Array(buffer, X86_ANSWER_OFFSET, state[1]).slice(),
  );
  armIdleRelease();
  const answer = JSON.parse(json) as { value: T } | { error: { name: string; message: string } };
  if ("error" in answer) {
    if (answer.error.name === "X86DecodeError") throw new X86DecodeError(answer.error.message);
    throw new Error(`x86 decoder: ${answer.error.message}`);
  }
  return answer.value;
}

/** Lets the worker (and the decoder's memory) go; the next call starts a new one. */
export function releaseX86Decoder(): void {
  if (idleTimer !== undefined) clearTimeout(idleTimer);
  idleTimer = undefined;
  worker?.terminate();
  worker = undefined;
}

/** For tests: shorter waits, and forgetting a broken worker. */
export function setX86DecoderTimeouts(waits: Partial<typeof timeouts>): void {
  Object.assign(timeouts, waits);
  broken = undefined;
}

/** Whether a worker is running (for tests). */
export function x86DecoderRunning(): boolean {
  return worker !== undefined;
}

/** See `findReturnSites` in lib/x86_sites.ts. */
export function findReturnSites(code: Uint8Array, address: number): number[] {
  return call("findReturnSites", code, address);
}

/** See `findEntryProbeSite` in lib/x86_sites.ts. */
export function findEntryProbeSite(code: Uint8Array, address: number): EntryProbeSite {
  return call("findEntryProbeSite", code, address);
}

/** See `findCEntryProbeSite` in lib/x86_sites.ts. */
export function findCEntryProbeSite(code: Uint8Array, address: number): CEntryProbeSite {
  return call("findCEntryProbeSite", code, address);
}

/** See `findReturnValueSites` in lib/x86_sites.ts. */
export function findReturnValueSites(code: Uint8Array, address: number): number[] | undefined {
  return call("findReturnValueSites", code, address);
}
