import assert from "node:assert/strict";
import {
  errorOf,
  fileExists,
  goServer,
  goServerPath,
  haveGo,
  needs,
  random,
  readElf,
  withRandomFlips,
} from "../tests/support/go_binaries.ts";
import { hasTool } from "../tests/support/tools.ts";
import { ElfError, ElfFile, ET, PF, PT, SHT, STB, STT } from "./elf.ts";

function run(cmd: string, args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

/** `readelf -SW`'s section table: name, type, address, offset, size, flags. */
function readelfSections(path: string) {
  const rows = run("readelf", ["-SW", path]).split("\n")
    .map((l) =>
      /^\s*\[\s*(\d+)\]\s+(\S*)\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([A-Za-z]*)\s/
        .exec(l)
    )
    .filter((m) => m !== null);
  return rows.map((m) => ({
    index: Number(m[1]),
    name: m[2],
    addr: parseInt(m[4], 16),
    offset: parseInt(m[5], 16),
    size: parseInt(m[6], 16),
    compressed: m[7].includes("C"),
  }));
}

// --- Real binaries ---------------------------------------------------------------------------

Deno.test("parse() reads the headers of a Go executable", needs(haveGo()), async () => {
  const elf = await goServer();
  assert.equal(elf.machine, 62);
  assert.equal(elf.type, ET.exec);
  const text = elf.section(".text")!;
  assert.equal(text.type, SHT.progbits);
  assert.ok(text.flags & 0x4, ".text is executable");
  // The entry point is code, in an executable PT_LOAD.
  const load = elf.programHeaders.find((p) =>
    p.type === PT.load && elf.entry >= p.vaddr && elf.entry < p.vaddr + p.memsz
  );
  assert.ok(load && load.flags & PF.x);
  assert.equal(elf.section("no such section"), undefined);
});

Deno.test("parse() agrees with readelf on every section", {
  ...needs(haveGo() && hasTool("readelf")),
}, async () => {
  const path = await goServerPath();
  const elf = readElf(path);
  // Section 0 (the null section, no name) is left out: readelf's row for it has no name column.
  const expected = readelfSections(path).filter((s) => s.index !== 0);
  assert.equal(elf.sections.length, expected.length + 1);
  assert.deepEqual([elf.sections[0].type, elf.sections[0].name], [SHT.null, ""]);
  for (const want of expected) {
    const got = elf.sections[want.index];
    assert.deepEqual(
      { index: got.index, name: got.name, addr: got.addr, offset: got.offset, size: got.size },
      { index: want.index, name: want.name, addr: want.addr, offset: want.offset, size: want.size },
    );
    assert.equal(got.compressed, want.compressed, got.name);
  }
});

Deno.test("sectionBytes() gives compressed sections as stored", needs(haveGo()), async () => {
  // Go compresses DWARF (SHF_COMPRESSED) when it saves space.
  const elf = await goServer();
  const info = elf.section(".debug_info")!;
  assert.ok(info.compressed);
  const bytes = elf.sectionBytes(info);
  assert.equal(bytes.length, info.size);
  assert.equal(bytes.buffer, elf.bytes.buffer, "a view, not a copy");
  const chdr = new DataView(bytes.buffer, bytes.byteOffset, 24);
  assert.equal(chdr.getUint32(0, true), 1, "ELFCOMPRESS_ZLIB");
  assert.ok(Number(chdr.getBigUint64(8, true)) > bytes.length, "ch_size: the larger raw size");
  assert.equal(elf.sectionBytes(elf.section(".bss")!).length, 0, "NOBITS has no file bytes");
});

Deno.test("symbols() agree with readelf, and are empty when stripped", {
  ...needs(haveGo() && hasTool("readelf")),
}, async () => {
  const path = await goServerPath();
  const elf = readElf(path);
  const symbols = elf.symbols();
  const line = run("readelf", ["-sW", path]).split("\n")
    .find((l) => l.endsWith(" net/http.serverHandler.ServeHTTP"))!;
  const [, value, size] = line.trim().split(/\s+/);
  const serve = symbols.find((s) => s.name === "net/http.serverHandler.ServeHTTP")!;
  assert.deepEqual(serve, {
    name: "net/http.serverHandler.ServeHTTP",
    value: parseInt(value, 16),
    size: Number(size),
    type: STT.func,
    bind: STB.global,
    shndx: elf.section(".text")!.index,
  });
  assert.equal(
    symbols.length,
    Number(
      /Symbol table '\.symtab' contains (\d+)/.exec(
        run("readelf", ["-sW", path]),
      )![1],
    ),
  );
  assert.equal(elf.symbols(), symbols, "decoded once");

  const stripped = await goServer(true);
  assert.deepEqual(stripped.symbols(), []);
});

Deno.test("dynamicSymbols() lists a C program's imports", needs(fileExists("/usr/bin/ls")), () => {
  const elf = readElf("/usr/bin/ls");
  assert.deepEqual(elf.symbols(), []);
  const imports = elf.dynamicSymbols().filter((s) => s.shndx === 0 && s.name !== "");
  assert.ok(imports.some((s) => s.name === "malloc" && s.type === STT.func), "ls calls malloc");
});

Deno.test(
  "findSymbols() finds what the decoded tables hold, without decoding them",
  needs(fileExists("/usr/bin/ls")),
  async () => {
    const libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    const names = ["malloc", "free", "read", "no_such_symbol", "", "mallo"];
    for (const path of [libc, "/usr/bin/ls"]) {
      const all = readElf(path).dynamicSymbols()
        .filter((s) => s.name !== "" && names.includes(s.name));
      // A fresh file: nothing decoded; then the same file once its table is cached.
      const opened = ElfFile.open(path);
      assert.deepEqual(opened.findSymbols(names), all, path);
      opened.dynamicSymbols();
      assert.deepEqual(opened.findSymbols(names), all, `${path}, cached`);
    }
    assert.ok(readElf(libc).findSymbols(["malloc"]).length > 0);
    if (haveGo()) {
      const elf = await goServer();
      const wanted = ["net/http.serverHandler.ServeHTTP", "main.main", "runtime.main"];
      const expected = elf.symbols().filter((s) => wanted.includes(s.name));
      assert.equal(expected.length, 3);
      assert.deepEqual(ElfFile.parse(elf.bytes).findSymbols(wanted, "symtab"), expected);
      assert.deepEqual(ElfFile.parse(elf.bytes).findSymbols(wanted, "dynsym"), []);
    }
  },
);

Deno.test(
  "fileOffsetOf() and bytesAt() map addresses through PT_LOAD",
  needs(haveGo()),
  async () => {
    const elf = await goServer();
    const serve = elf.symbols().find((s) => s.name === "net/http.serverHandler.ServeHTTP")!;
    const text = elf.section(".text")!;
    const offset = elf.fileOffsetOf(serve.value)!;
    assert.equal(offset, text.offset + (serve.value - text.addr));
    const code = elf.bytesAt(serve.value, serve.size)!;
    assert.deepEqual(code, elf.bytes.subarray(offset, offset + serve.size));
    assert.equal(code.buffer, elf.bytes.buffer, "a view, not a copy");

    const bss = elf.section(".bss")!;
    assert.equal(elf.fileOffsetOf(bss.addr + 8), undefined, "in memory only");
    assert.equal(elf.fileOffsetOf(0), undefined);
    assert.equal(elf.bytesAt(0x10, 4), undefined);
    // A range that runs past the end of its segment's file bytes.
    const load = elf.programHeaders.find((p) => p.type === PT.load)!;
    assert.equal(elf.bytesAt(load.vaddr + load.filesz - 2, 4), undefined);
    assert.equal(elf.bytesAt(load.vaddr + load.filesz - 2, 2)?.length, 2);
  },
);

// --- Refused inputs --------------------------------------------------------------------------

/** A 64-byte ELF-64 LE x86-64 header with no tables, altered by `edit`. */
function header(edit: (bytes: Uint8Array, view: DataView) => void = () => {}): Uint8Array {
  const bytes = new Uint8Array(64);
  const view = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  view.setUint16(0x10, ET.exec, true);
  view.setUint16(0x12, 62, true);
  edit(bytes, view);
  return bytes;
}

Deno.test("parse() accepts a bare header (no tables)", () => {
  const elf = ElfFile.parse(header());
  assert.deepEqual([elf.sections, elf.programHeaders, elf.symbols()], [[], [], []]);
});

Deno.test("parse() refuses what is not ELF as not_elf", () => {
  assert.equal(errorOf(ElfError, () => ElfFile.parse(new Uint8Array())).reason, "not_elf");
  assert.equal(
    errorOf(ElfError, () => ElfFile.parse(new TextEncoder().encode("#!/bin/sh\n"))).reason,
    "not_elf",
  );
  assert.equal(
    errorOf(ElfError, () => ElfFile.parse(header((b) => b[1] = 0x46))).reason,
    "not_elf",
  );
});

Deno.test("parse() refuses 32-bit, big-endian and non-x86-64 files as unsupported", () => {
  const cases = {
    "32-bit": header((b) => b[4] = 1),
    "big-endian": header((b) => b[5] = 2),
    "aarch64": header((_, v) => v.setUint16(0x12, 183, true)),
  };
  for (const [what, bytes] of Object.entries(cases)) {
    const e = errorOf(ElfError, () => ElfFile.parse(bytes));
    assert.equal(e.reason, "unsupported", what);
    assert.equal(e.name, "ElfError");
  }
});

Deno.test("parse() accepts other machines and big-endian files when asked to", () => {
  const aarch64 = header((_, v) => v.setUint16(0x12, 183, true));
  assert.equal(ElfFile.parse(aarch64, { anyMachine: true }).machine, 183);
  const bpf = header((b, v) => {
    b[5] = 2; // big-endian
    v.setUint16(0x10, ET.rel, false);
    v.setUint16(0x12, 247, false); // EM_BPF
  });
  const elf = ElfFile.parse(bpf, { anyMachine: true, bigEndian: true });
  assert.deepEqual([elf.littleEndian, elf.type, elf.machine], [false, ET.rel, 247]);
  assert.equal(
    errorOf(ElfError, () => ElfFile.parse(bpf, { bigEndian: true })).reason,
    "unsupported",
  );
});

Deno.test("parse() refuses tables beyond the end as truncated", () => {
  assert.equal(
    errorOf(ElfError, () => ElfFile.parse(header().subarray(0, 40))).reason,
    "truncated",
  );
  assert.equal(errorOf(ElfError, () => ElfFile.parse(header().subarray(0, 3))).reason, "truncated");
  const sections = header((_, v) => {
    v.setBigUint64(0x28, 1000n, true); // e_shoff
    v.setUint16(0x3a, 64, true);
    v.setUint16(0x3c, 3, true);
  });
  assert.equal(errorOf(ElfError, () => ElfFile.parse(sections)).reason, "truncated");
  const segments = header((_, v) => {
    v.setBigUint64(0x20, 64n, true); // e_phoff: right after the header, which is all there is
    v.setUint16(0x36, 56, true);
    v.setUint16(0x38, 1, true);
  });
  assert.equal(errorOf(ElfError, () => ElfFile.parse(segments)).reason, "truncated");
});

Deno.test("parse() of a truncated Go binary fails with ElfError", needs(haveGo()), async () => {
  const bytes = (await goServer(true)).bytes;
  // Half the file: the sections and segments of its second half are gone.
  const e = errorOf(ElfError, () => ElfFile.parse(bytes.subarray(0, bytes.length >> 1)));
  assert.equal(e.reason, "truncated");
  assert.match(e.message, /beyond the end of the file/);
});

// --- Fuzzing ---------------------------------------------------------------------------------

/** Parses and uses every accessor; only ElfError may come out. */
function exercise(bytes: Uint8Array): void {
  try {
    const elf = ElfFile.parse(bytes);
    for (const s of elf.sections) elf.sectionBytes(s);
    elf.symbols();
    elf.dynamicSymbols();
    for (const p of elf.programHeaders) {
      elf.fileOffsetOf(p.vaddr);
      elf.bytesAt(p.vaddr, Math.min(p.filesz, 64));
    }
  } catch (e) {
    if (!(e instanceof ElfError)) throw e;
  }
}

Deno.test(
  "a Go binary truncated anywhere gives ElfError or a valid parse",
  needs(haveGo()),
  async () => {
    const { bytes } = await goServer();
    const next = random(1);
    const lengths = [0, 1, 4, 16, 63, 64, 65, 120, 200, 4096, bytes.length - 1];
    for (let i = 0; i < 150; i++) lengths.push(Math.floor(next() * bytes.length));
    for (const length of lengths) exercise(bytes.subarray(0, length));
  },
);

Deno.test(
  "random byte flips in the headers give ElfError or a valid parse",
  needs(haveGo()),
  async () => {
    const elf = await goServer();
    const bytes = elf.bytes.slice();
    const shoff = Number(new DataView(bytes.buffer).getBigUint64(0x28, true));
    // Where a flip changes what the parser reads: the ELF and program headers, the section header
    // table, and the name and symbol tables.
    const regions: [number, number][] = [[0, 64 + 56 * elf.programHeaders.length]];
    regions.push([shoff, bytes.length]);
    for (const name of [".shstrtab", ".symtab", ".strtab", ".dynsym", ".dynstr"]) {
      const s = elf.section(name);
      if (s) regions.push([s.offset, s.offset + Math.min(s.size, 4096)]);
    }
    withRandomFlips(bytes, { seed: 2, rounds: 400, maxFlips: 4, regions }, exercise);
  },
);

Deno.test("ElfFile.lazy reads only what is looked at, and sees what parse() sees", () => {
  const path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
  const whole = Deno.readFileSync(path);
  let read = 0;
  const lazy = ElfFile.lazy(whole.length, (offset, into) => {
    read += into.length;
    into.set(whole.subarray(offset, offset + into.length));
  });
  const headers = read;
  assert.ok(headers < whole.length / 4, `headers alone read ${headers} of ${whole.length}`);
  const parsed = ElfFile.parse(whole);
  assert.deepEqual(lazy.sections, parsed.sections);
  assert.deepEqual(lazy.programHeaders, parsed.programHeaders);
  assert.deepEqual(lazy.dynamicSymbols(), parsed.dynamicSymbols());
  const fn = parsed.dynamicSymbols().find((s) => s.name === "SSL_read")!;
  assert.deepEqual(lazy.bytesAt(fn.value, 64), parsed.bytesAt(fn.value, 64));
  assert.ok(read < whole.length, `read ${read} of ${whole.length}`);
  // The whole file on demand.
  assert.deepEqual(lazy.bytes, whole);
});

Deno.test("ElfFile.open reads a file lazily; a missing one is NotFound, a text file not_elf", async () => {
  const elf = ElfFile.open("/usr/lib/x86_64-linux-gnu/libssl.so.3");
  assert.ok(elf.dynamicSymbols().some((s) => s.name === "SSL_write"));
  assert.throws(() => ElfFile.open("/nonexistent/x"), Deno.errors.NotFound);
  const text = await Deno.makeTempFile();
  try {
    await Deno.writeTextFile(text, "#!/bin/sh\necho not an ELF file at all, but long enough\n");
    assert.throws(
      () => ElfFile.open(text),
      (e: unknown) => e instanceof ElfError && e.reason === "not_elf",
    );
  } finally {
    await Deno.remove(text);
  }
});

Deno.test("ElfFile.release frees an opened file's buffer at once", () => {
  const elf = ElfFile.open("/usr/lib/x86_64-linux-gnu/libssl.so.3");
  assert.ok(elf.dynamicSymbols().length > 0);
  elf.release();
  assert.throws(() => elf.bytesAt(elf.entry, 16)?.at(0) ?? elf.bytes.length);
});
