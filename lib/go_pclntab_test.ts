import assert from "node:assert/strict";
import {
  buf,
  errorOf,
  esbuild,
  fileExists,
  goServer,
  haveGo,
  haveNpm,
  needs,
  readElf,
  withoutSectionHeaders,
  withRandomFlips,
} from "../tests/support/go_binaries.ts";
import { hasTool } from "../tests/support/tools.ts";
import { ElfError, ElfFile, STT } from "./elf.ts";
import {
  GO118_MAGIC,
  GO120_MAGIC,
  type GoFunctionTable,
  GoPclntabError,
  readGoFunctions,
} from "./go_pclntab.ts";

const SERVE = "net/http.serverHandler.ServeHTTP";
const ROUND_TRIP = "net/http.(*Transport).roundTrip";
const FINISH = "net/http.(*response).finishRequest";

/**
 * An independent check that `entry` is really a function's first instruction: every Go function
 * that can grow its stack starts with the stack-bound check against g.stackguard0 in R14,
 * `cmp 0x10(%r14),%rsp` (49 3b 66 10), or for frames over 128 bytes first
 * `lea -N(%rsp),%r12` then `cmp 0x10(%r14),%r12` (4d 3b 66 10).
 */
function assertGoPrologue(elf: ElfFile, entry: number, name: string): void {
  const code = elf.bytesAt(entry, 16);
  assert.ok(code, `${name} at 0x${entry.toString(16)} is not in the file`);
  const hex = [...code].map((b) => b.toString(16).padStart(2, "0")).join(" ");
  assert.match(
    hex,
    /^(49 3b 66 10|4c 8d 64 24 .. 4d 3b 66 10|4c 8d a4 24 .. .. .. .. 4d 3b 66 10)/,
    `${name}: ${hex}`,
  );
}

function assertInText(elf: ElfFile, table: GoFunctionTable, name: string) {
  const fn = table.lookup(name);
  assert.ok(fn, `${name} not found`);
  const text = elf.section(".text")!;
  assert.ok(fn.entry >= text.addr && fn.end <= text.addr + text.size, `${name} outside .text`);
  assert.ok(fn.end > fn.entry);
  assertGoPrologue(elf, fn.entry, name);
  return fn;
}

// --- Go 1.19 (magic 0xfffffff0) --------------------------------------------------------------

Deno.test(
  "readGoFunctions() agrees with .symtab on every function (Go 1.19)",
  needs(haveGo()),
  async () => {
    const elf = await goServer();
    const table = readGoFunctions(elf);
    assert.equal(table.layout, "go1.18");
    assert.equal(table.magic, GO118_MAGIC);
    assert.equal(table.textStartSource, "pcHeader");
    assert.equal(table.address, elf.section(".gopclntab")!.addr);

    // Symbols by address. An assembly function appears twice in the pclntab under one name: its
    // ABI0 body (".abi0" in .symtab) and the ABIInternal wrapper Go code calls.
    const byAddress = new Map<number, { name: string; size: number }[]>();
    for (const s of elf.symbols()) {
      if (s.type !== STT.func) continue;
      byAddress.set(s.value, [...byAddress.get(s.value) ?? [], s]);
    }
    let compared = 0;
    for (const fn of table.all()) {
      const symbol = byAddress.get(fn.entry)?.find((s) =>
        s.name === fn.name || s.name === `${fn.name}.abi0`
      );
      if (!symbol) continue;
      // End: the next function's entry, so the symbol's size plus alignment padding.
      assert.ok(fn.end >= fn.entry + symbol.size && fn.end - fn.entry - symbol.size < 64, fn.name);
      compared++;
    }
    assert.ok(compared > 0.95 * table.size, `only ${compared} of ${table.size} found in .symtab`);

    const symbols = new Map(elf.symbols().map((s) => [s.name, s]));
    for (const name of [SERVE, ROUND_TRIP]) {
      assert.equal(table.lookup(name)!.entry, symbols.get(name)!.value, name);
    }
  },
);

Deno.test(
  "readGoFunctions() finds functions in a stripped Go 1.19 binary",
  needs(haveGo()),
  async () => {
    const elf = await goServer(true);
    assert.deepEqual(elf.symbols(), []);
    const table = readGoFunctions(elf);
    assert.equal(table.layout, "go1.18");
    for (const name of [SERVE, ROUND_TRIP, FINISH]) assertInText(elf, table, name);
    assert.equal(table.lookup("net/http.NoSuchFunction"), undefined);
  },
);

Deno.test("lookup(), at() and all() agree", needs(haveGo()), async () => {
  const table = readGoFunctions(await goServer(true));
  const serve = table.lookup(SERVE)!;
  assert.deepEqual(table.at(serve.entry), serve);
  assert.deepEqual(table.at(serve.end - 1), serve);
  assert.notEqual(table.at(serve.end)?.name, SERVE);
  assert.equal(table.at(table.textStart - 1), undefined);
  assert.equal(table.at(0), undefined);

  const all = [...table.all()];
  assert.equal(all.length, table.size);
  for (let i = 1; i < all.length; i++) {
    assert.ok(all[i - 1].entry <= all[i].entry, "in address order");
    assert.equal(all[i - 1].end, all[i].entry, "each ends where the next starts");
  }
  assert.ok(all.every((f) => f.name !== ""));
  assert.equal(table.at(all.at(-1)!.end), undefined, "past the last function");
});

Deno.test("readGoFunctions() reads Debian's stripped, externally linked prometheus", {
  ...needs(fileExists("/usr/bin/prometheus")),
}, () => {
  const started = performance.now();
  const elf = readElf("/usr/bin/prometheus");
  const readStarted = performance.now();
  const table = readGoFunctions(elf);
  const serve = table.lookup(SERVE);
  const readMs = performance.now() - readStarted;
  assert.ok(readMs < 1000, `reading the table and a lookup took ${readMs} ms`);
  assert.ok(performance.now() - started < 5000);

  assert.equal(table.layout, "go1.18");
  assert.ok(table.size > 10_000);
  // cgo: the C linker put crt code first, so runtime.text is not where .text starts. The
  // header's textStart says where (the .text address would put every entry off).
  assert.notEqual(table.textStart, elf.section(".text")!.addr);
  assert.ok(serve);
  for (const name of [SERVE, FINISH, ROUND_TRIP]) assertInText(elf, table, name);
});

Deno.test("readGoFunctions() reads Debian's stripped hey (an HTTP client)", {
  ...needs(fileExists("/usr/bin/hey")),
}, () => {
  const elf = readElf("/usr/bin/hey");
  const table = readGoFunctions(elf);
  assertInText(elf, table, ROUND_TRIP);
  assertInText(elf, table, "main.main");
});

/** Builds the server fixture as a PIE with `ldflags` into a temporary directory. */
async function buildPie(dir: string, name: string, ldflags: string): Promise<ElfFile> {
  const out = `${dir}/${name}`;
  const root = new URL("../", import.meta.url).pathname;
  const result = await new Deno.Command("go", {
    args: ["build", "-buildmode=pie", "-ldflags", ldflags, "-o", out, "."],
    cwd: `${root}tests/fixtures/go_http/server`,
    env: { GO111MODULE: "off", GOFLAGS: "", GOCACHE: `${root}.cache/go-build` },
    stderr: "piped",
  }).output();
  assert.ok(result.success, new TextDecoder().decode(result.stderr));
  return readElf(out);
}

Deno.test("readGoFunctions() reads PIEs, internally and externally linked", {
  ...needs(haveGo() && hasTool("gcc")),
}, async () => {
  const dir = Deno.makeTempDirSync({ prefix: "go_pclntab_test_" });
  try {
    // Internal linking: the table needs relocating in a PIE (textStart), so it is in
    // .data.rel.ro.gopclntab; its symbols say where each function is.
    const internal = await buildPie(dir, "internal", "");
    assert.equal(internal.section(".gopclntab"), undefined);
    assert.ok(internal.section(".data.rel.ro.gopclntab"));
    const table = readGoFunctions(internal);
    const serve = internal.symbols().find((s) => s.name === SERVE)!;
    assert.equal(table.lookup(SERVE)!.entry, serve.value);

    // External linking (cgo's): the C linker merges the table into .data.rel.ro, so no section
    // names it and it is found by scanning; C code precedes runtime.text in .text.
    const external = await buildPie(dir, "external", "-linkmode=external -s -w");
    assert.equal(external.sections.find((s) => s.name.endsWith("gopclntab")), undefined);
    const scanned = readGoFunctions(external);
    assert.equal(scanned.textStartSource, "pcHeader");
    assert.ok(scanned.textStart > external.section(".text")!.addr);
    for (const name of [SERVE, FINISH, ROUND_TRIP]) assertInText(external, scanned, name);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

// --- Go 1.26+ (no textStart) -----------------------------------------------------------------

Deno.test("readGoFunctions() reads esbuild (Go 1.26: no textStart in the header)", {
  ...needs(haveNpm()),
}, async () => {
  const elf = await esbuild();
  const table = readGoFunctions(elf);
  assert.equal(table.magic, GO120_MAGIC, "Go 1.26 kept the Go 1.20 magic");
  assert.equal(table.layout, "go1.26");
  // The pcHeader's textStart word is 0; runtime.text comes from runtime.firstmoduledata,
  // which Go 1.26 puts in its own section.
  const header = elf.sectionBytes(elf.section(".gopclntab")!);
  assert.equal(new DataView(header.buffer, header.byteOffset).getBigUint64(24, true), 0n);
  assert.equal(table.textStartSource, "moduledata");
  assert.ok(elf.section(".go.module"));
  assert.equal(table.textStart, elf.section(".text")!.addr);
  for (const name of [SERVE, FINISH, "main.main"]) assertInText(elf, table, name);
});

Deno.test(
  "readGoFunctions() reads buf (stripped, Go newer than 1.26)",
  needs(haveNpm()),
  async () => {
    const elf = await buf();
    const table = readGoFunctions(elf);
    assert.equal(table.layout, "go1.26");
    assert.equal(table.textStartSource, "moduledata");
    for (const name of [SERVE, FINISH, ROUND_TRIP]) assertInText(elf, table, name);
  },
);

Deno.test("readGoFunctions() finds the table without section headers", {
  ...needs(haveNpm() && haveGo()),
}, async () => {
  for (const elf of [await esbuild(), await goServer(true)]) {
    const bare = withoutSectionHeaders(elf);
    assert.deepEqual(bare.sections, []);
    const expected = readGoFunctions(elf);
    const table = readGoFunctions(bare);
    assert.equal(table.address, expected.address, "found by scanning the read-only segment");
    assert.equal(table.textStart, expected.textStart);
    assert.equal(table.layout, expected.layout);
    assert.deepEqual(table.lookup(SERVE), expected.lookup(SERVE));
  }
});

// --- Refusals --------------------------------------------------------------------------------

Deno.test("readGoFunctions() says not_go for C programs", () => {
  for (const path of ["/usr/bin/ls", "/usr/sbin/nginx"]) {
    if (!fileExists(path)) continue;
    const e = errorOf(GoPclntabError, () => readGoFunctions(readElf(path)));
    assert.equal(e.reason, "not_go", path);
    assert.equal(e.name, "GoPclntabError");
  }
});

/** The stripped Go 1.19 fixture with its pcHeader altered by `edit`. */
async function withHeader(edit: (view: DataView) => void): Promise<ElfFile> {
  const elf = await goServer(true);
  const bytes = elf.bytes.slice();
  const pcln = elf.section(".gopclntab")!;
  edit(new DataView(bytes.buffer, pcln.offset, pcln.size));
  return ElfFile.parse(bytes);
}

Deno.test(
  "readGoFunctions() refuses old, unknown and foreign pclntabs",
  needs(haveGo()),
  async () => {
    const old = await withHeader((v) => v.setUint32(0, 0xfffffffa, true));
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(old)).reason, "unsupported");
    assert.match(errorOf(GoPclntabError, () => readGoFunctions(old)).message, /Go 1\.16-1\.17/);
    const future = await withHeader((v) => v.setUint32(0, 0xfffffff2, true));
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(future)).reason, "unsupported");
    const arm = await withHeader((v) => v.setUint8(6, 4)); // minLC 4: arm64
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(arm)).reason, "unsupported");
    const garbage = await withHeader((v) => v.setUint32(0, 0x12345678, true));
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(garbage)).reason, "malformed");
  },
);

Deno.test(
  "readGoFunctions() refuses a table whose offsets do not fit",
  needs(haveGo()),
  async () => {
    const huge = await withHeader((v) => v.setBigUint64(8, 1n << 40n, true)); // nfunc
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(huge)).reason, "malformed");
    const names = await withHeader((v) => v.setBigUint64(8 + 3 * 8, 1n << 32n, true)); // funcnameOffset
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(names)).reason, "malformed");
    const unsorted = await withHeader((v) => {
      const functab = Number(v.getBigUint64(8 + 7 * 8, true));
      v.setUint32(functab + 8, 0xffffff, true); // function 1 after function 2
    });
    assert.equal(errorOf(GoPclntabError, () => readGoFunctions(unsorted)).reason, "malformed");
  },
);

Deno.test("a truncated Go binary gives typed errors", needs(haveGo()), async () => {
  const bytes = (await goServer(true)).bytes;
  const pcln = (await goServer(true)).section(".gopclntab")!;
  // Cut inside .gopclntab: the ELF reader already sees the section run past the end.
  const cut = bytes.subarray(0, pcln.offset + 1000);
  assert.equal(errorOf(ElfError, () => readGoFunctions(ElfFile.parse(cut))).reason, "truncated");
});

Deno.test("random byte flips in the pclntab give GoPclntabError or a usable table", {
  ...needs(haveGo()),
}, async () => {
  const elf = await goServer(true);
  const bytes = elf.bytes.slice();
  const pcln = elf.section(".gopclntab")!;
  const view = new DataView(bytes.buffer);
  const functab = pcln.offset + Number(view.getBigUint64(pcln.offset + 8 + 7 * 8, true));
  // The header, the start of the functab and random places anywhere in the table.
  const regions: [number, number][] = [
    [pcln.offset, pcln.offset + 80],
    [functab, functab + 4096],
    [pcln.offset, pcln.offset + pcln.size],
  ];
  let usable = 0;
  withRandomFlips(bytes, { seed: 3, rounds: 300, maxFlips: 3, regions }, (flipped) => {
    try {
      const table = readGoFunctions(ElfFile.parse(flipped));
      table.lookup(SERVE);
      table.at(table.textStart + 0x1000);
      let n = 0;
      for (const _ of table.all()) n++;
      assert.equal(n, table.size);
      usable++;
    } catch (e) {
      if (!(e instanceof GoPclntabError)) throw e;
    }
  });
  assert.ok(usable > 0 && usable < 300, `${usable} of 300 usable: the flips should do both`);
});
