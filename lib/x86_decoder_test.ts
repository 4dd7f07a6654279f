import assert from "node:assert/strict";
import { goServerPath, readElf } from "../tests/support/go_binaries.ts";
import { STT } from "./elf.ts";
import * as inWorker from "./x86_decoder.ts";
import * as inProcess from "./x86_sites.ts";

const AT = 0x401000;

Deno.test("x86_decoder answers as x86_sites does, for a sample of a Go server's functions, and releases its worker", async () => {
  const elf = readElf(await goServerPath());
  const text = elf.section(".text")!;
  let compared = 0;
  for (const { value: address, size, type } of elf.symbols()) {
    if (type !== STT.func || size === 0) continue;
    if (address < text.addr || address + size > text.addr + text.size) continue;
    if (compared++ % 50 !== 0) continue; // a sample: every 50th function
    // A view into the section, as the callers pass it.
    const code = elf.bytesAt(address, size)!;
    for (const analysis of ["findReturnSites", "findEntryProbeSite"] as const) {
      let expected: unknown, got: unknown;
      try {
        expected = inProcess[analysis](code, address);
      } catch (e) {
        expected = e;
      }
      try {
        got = inWorker[analysis](code, address);
      } catch (e) {
        got = e;
      }
      if (expected instanceof inProcess.X86DecodeError) {
        assert.ok(got instanceof inWorker.X86DecodeError, `${analysis} at ${address}`);
        assert.equal((got as Error).message, expected.message);
      } else {
        assert.deepEqual(got, expected, `${analysis} at 0x${address.toString(16)}`);
      }
    }
  }
  assert.ok(compared > 1000, `${compared} functions`);
  assert.equal(inWorker.x86DecoderRunning(), true);
  inWorker.releaseX86Decoder();
  assert.equal(inWorker.x86DecoderRunning(), false);
});

Deno.test("x86_decoder: C function analyses, undefined answers, decode errors, and a new worker after a release", () => {
  // sub rsp, 0x18 ; test edx, edx ; js +2 ; ret ; ret
  const code = new Uint8Array([0x48, 0x83, 0xec, 0x18, 0x85, 0xd2, 0x78, 0x02, 0xc3, 0xc3]);
  assert.deepEqual(
    inWorker.findCEntryProbeSite(code, AT),
    inProcess.findCEntryProbeSite(code, AT),
  );
  assert.deepEqual(
    inWorker.findReturnValueSites(code, AT),
    inProcess.findReturnValueSites(code, AT),
  );
  inWorker.releaseX86Decoder();
  // 06 (push es) does not exist in 64-bit mode: the worker's X86DecodeError is rethrown as one.
  assert.throws(
    () => inWorker.findReturnSites(new Uint8Array([0x06, 0xc3]), AT),
    (e) => e instanceof inWorker.X86DecodeError && /0x401000 \(06 c3\): invalid/.test(e.message),
  );
  assert.equal(inWorker.x86DecoderRunning(), true);
  inWorker.releaseX86Decoder();
});

Deno.test("x86_decoder: a worker that fails to load fails the calls, for a while, and never the process", () => {
  const g = globalThis as Record<string, unknown>;
  inWorker.releaseX86Decoder();
  inWorker.setX86DecoderTimeouts({ answerMs: 1500, brokenRetryMs: 60_000 });
  g[inWorker.BUNDLED_WORKER_SOURCE] = `throw new Error("no decoder here");`;
  try {
    const code = new Uint8Array([0xc3]);
    assert.throws(() => inWorker.findReturnSites(code, AT), /did not answer within 1500 ms/);
    // Then at once, without waiting for another worker.
    const t0 = performance.now();
    assert.throws(() => inWorker.findReturnSites(code, AT), /x86 decoder is unavailable/);
    assert.ok(performance.now() - t0 < 500);
    inWorker.prewarmX86Decoder();
    assert.equal(inWorker.x86DecoderRunning(), false);
  } finally {
    delete g[inWorker.BUNDLED_WORKER_SOURCE];
    inWorker.setX86DecoderTimeouts({ answerMs: 10_000, brokenRetryMs: 60_000 });
  }
  // A good worker again.
  assert.deepEqual(inWorker.findReturnSites(new Uint8Array([0xc3]), AT), [AT]);
  inWorker.releaseX86Decoder();
});
