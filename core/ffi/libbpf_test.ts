/** The libc helpers of core/ffi/libbpf.ts that need no privileges. */
import assert from "node:assert/strict";
import { pageOut } from "./libbpf.ts";
import { parseProcMaps, readOnlyMappingsOf } from "../../lib/proc_maps.ts";

/** Resident kB of the mappings of /proc/self/smaps that start at these addresses. */
function residentKb(starts: Set<number>): number {
  let kb = 0;
  let counting = false;
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const range = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line);
    if (range) counting = starts.has(parseInt(range[1], 16));
    else if (counting && line.startsWith("Rss:")) kb += Number(line.split(/\s+/)[1]);
  }
  return kb;
}

Deno.test("pageOut() gives the kernel the pages of this process's own executable, which keeps running", () => {
  const own = readOnlyMappingsOf(
    parseProcMaps(Deno.readTextFileSync("/proc/self/maps")),
    Deno.execPath(),
  );
  assert.ok(own.length > 0);
  const starts = new Set(own.map((m) => m.start));
  const before = residentKb(starts);
  const advised = pageOut(own);
  const after = residentKb(starts);
  assert.equal(advised, own.reduce((n, m) => n + m.end - m.start, 0), "every range was advised");
  // Pages another process maps too (another Deno on this machine) stay: fewer, not none.
  assert.ok(after < before, `resident ${before} kB before, ${after} kB after`);
});
