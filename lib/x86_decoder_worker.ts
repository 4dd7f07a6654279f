/**
 * The worker side of lib/x86_decoder.ts: runs one analysis of lib/x86_sites.ts per message and
 * writes the answer, as JSON, into the caller's shared buffer (the caller is blocked in
 * `Atomics.wait`, so it cannot receive a message). The layout is {@linkcode X86Request}'s.
 *
 * @module
 */
import {
  findCEntryProbeSite,
  findEntryProbeSite,
  findReturnSites,
  findReturnValueSites,
} from "./x86_sites.ts";
import { X86_ANSWER_OFFSET, type X86AnalysisName, type X86Request } from "./x86_types.ts";

const ANALYSES: Record<X86AnalysisName, (code: Uint8Array, address: number) => unknown> = {
  findReturnSites,
  findEntryProbeSite,
  findCEntryProbeSite,
  findReturnValueSites,
};

const encoder = new TextEncoder();

function answer(request: X86Request, result: unknown): void {
  const state = new Int32Array(request.buffer, 0, 2);
  let json = encoder.encode(JSON.stringify(result));
  if (json.length > request.buffer.byteLength - X86_ANSWER_OFFSET) {
    json = encoder.encode(JSON.stringify({
      error: { name: "Error", message: `x86 analysis answer of ${json.length} bytes is too large` },
    }));
  }
  new Uint8Array(request.buffer, X86_ANSWER_OFFSET).set(json);
  state[1] = json.length;
  Atomics.store(state, 0, 1);
  Atomics.notify(state, 0);
}

(self as unknown as Worker).onmessage = (event: MessageEvent<X86Request>) => {
  const request = event.data;
  try {
    answer(request, { value: ANALYSES[request.analysis](request.code, request.address) });
  } catch (e) {
    const error = e instanceof Error ? e : new Error(String(e));
    answer(request, { error: { name: error.name, message: error.message } });
  }
};
