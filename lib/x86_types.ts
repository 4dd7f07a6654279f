/**
 * The types and the error of lib/x86_sites.ts, apart from it so that code that only handles its
 * answers (lib/x86_decoder.ts, which runs it in a worker, and its callers) does not load the
 * x86 decoder itself.
 *
 * @module
 */

/** Bytes that do not decode as x86-64 instructions where an instruction should be. */
export class X86DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "X86DecodeError";
  }
}

/** An entry uprobe site: see the module documentation for the rule that picks it. */
export interface EntryProbeSite {
  /** Virtual address of the instruction to probe. */
  address: number;
  /** The instruction there, in Intel syntax ("jbe 0x64c063"). */
  instruction: string;
  /** Whether the kernel emulates it (a cheap probe) rather than single-stepping it. */
  emulated: boolean;
  /** Bytes pushed between the entry and the site: RSP at the site is RSP at entry minus this. */
  stackDelta: number;
}

/** How Linux's x86 uprobes handle the instruction `bytes` start with. */
export type UprobeHandling = "emulated" | "single-stepped" | "rejected";

/** An entry uprobe site in a C function: see "C functions" in the module documentation. */
export interface CEntryProbeSite {
  /** Virtual address of the instruction to probe. */
  address: number;
  /** How the kernel handles the instruction there: "emulated" unless it is the entry itself. */
  handling: UprobeHandling;
}

/** The analyses lib/x86_decoder.ts asks its worker (lib/x86_decoder_worker.ts) for. */
export type X86AnalysisName =
  | "findReturnSites"
  | "findEntryProbeSite"
  | "findCEntryProbeSite"
  | "findReturnValueSites";

/**
 * One request to the worker: an analysis of `code` loaded at `address`, answered in `buffer`:
 * Int32 [0] state (0 pending, 1 answered), [1] byte length of the JSON answer, then from
 * {@linkcode X86_ANSWER_OFFSET} the JSON, `{ value }` or `{ error: { name, message } }`.
 */
export interface X86Request {
  buffer: SharedArrayBuffer;
  analysis: X86AnalysisName;
  code: Uint8Array;
  address: number;
}

/** Bytes before the JSON answer in an {@linkcode X86Request}'s buffer. */
export const X86_ANSWER_OFFSET = 8;
