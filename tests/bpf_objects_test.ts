/**
 * The committed BPF objects are what their sources build to: rebuilding every `.bpf.c` with
 * scripts/build_bpf.ts gives the same bytes (clang 14 output is byte-stable once DWARF, which
 * holds the checkout's path, is stripped).
 */
import assert from "node:assert/strict";
import { findBpfSources, objectPathOf, staleObjects } from "../scripts/build_bpf.ts";
import { inCi } from "./support/privileges.ts";
import { hasTool } from "./support/tools.ts";

Deno.test({
  name: "every committed .bpf.o matches a fresh build of its .bpf.c",
  ignore: !hasTool("clang") && !inCi(),
  async fn() {
    const sources = await findBpfSources();
    assert.ok(sources.length >= 2, `found ${sources.join(", ")}`);
    // Example plugins' objects (examples/*/) are committed and checked like the built-ins'.
    assert.ok(sources.includes("examples/redis/redis.bpf.c"), `found ${sources.join(", ")}`);
    // The ingest benchmark's synthetic source (bench/ingest/) likewise.
    assert.ok(sources.includes("bench/ingest/ingest.bpf.c"), `found ${sources.join(", ")}`);
    for (const source of sources) assert.ok((await Deno.stat(objectPathOf(source))).isFile, source);
    assert.deepEqual(await staleObjects(), [], "run: deno task build:bpf");
  },
});
