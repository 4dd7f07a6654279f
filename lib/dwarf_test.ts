import assert from "node:assert/strict";
import { deflateSync } from "node:zlib";
import { join } from "node:path";
import { goServer, goServerPath, haveGo, readElf } from "../tests/support/go_binaries.ts";
import { hasTool } from "../tests/support/tools.ts";
import type { ElfFile } from "./elf.ts";
import {
  debugSection,
  type DwarfElf,
  DwarfError,
  readStructFields,
  readStructLayouts,
} from "./dwarf.ts";

/** An ELF stand-in whose sections are the given bytes (flags 0: stored plain). */
function fakeElf(sections: Record<string, Uint8Array>, flags = 0): DwarfElf {
  return {
    section: (name) =>
      sections[name] ? { name, flags, addr: 0, offset: 0, size: sections[name].length } : undefined,
    sectionBytes: (s) => sections[s.name],
  };
}

const HTTP_WANTED = {
  "net/http.Request": ["Method", "URL", "ContentLength", "TLS", "Host"],
  "net/url.URL": ["Path"],
  "net/http.response": ["status", "req", "conn", "wroteHeader", "written", "noSuchField"],
  "net/http.Response": ["StatusCode"],
};

Deno.test("readStructFields() reads the net/http offsets of a Go 1.19 binary", async () => {
  const elf = await goServer();
  const started = performance.now();
  const fields = readStructFields(elf, HTTP_WANTED);
  const ms = performance.now() - started;
  // Offsets as Go 1.19 lays out the structs of net/http/request.go, net/url/url.go and
  // net/http/server.go (strings and interfaces are 16 bytes, pointers 8).
  assert.deepEqual(
    fields,
    new Map([
      [
        "net/http.Request",
        new Map([["Method", 0], ["URL", 16], ["ContentLength", 88], ["TLS", 208], ["Host", 128]]),
      ],
      ["net/url.URL", new Map([["Path", 56]])],
      [
        "net/http.response",
        new Map([["status", 120], ["req", 8], ["conn", 0], ["wroteHeader", 40], ["written", 104]]),
      ],
      ["net/http.Response", new Map([["StatusCode", 16]])],
    ]),
  );
  // ~20 ms warm, ~50 ms on a cold JIT; a generous bound that still catches a quadratic walk.
  assert.ok(ms < 2000, `took ${ms.toFixed(0)} ms`);
});

Deno.test("readStructLayouts() gives struct sizes and every member for an empty list", async () => {
  const layouts = readStructLayouts(await goServer(), {
    "net/http.Request": [],
    "net/url.URL": ["Path"],
  });
  assert.equal(layouts.get("net/http.Request")?.byteSize, 248);
  assert.equal(layouts.get("net/url.URL")?.byteSize, 144);
  const request = layouts.get("net/http.Request")!.fields;
  assert.equal(request.size, 22);
  assert.equal(request.get("ctx"), 232);
  // DWARF order is declaration order: offsets never go down.
  const offsets = [...request.values()];
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b));
});

Deno.test("readStructFields() leaves out structs the binary does not have", async () => {
  const fields = readStructFields(await goServer(), {
    "net/http.Request": ["Method"],
    "no/such.Type": ["X"],
  });
  assert.deepEqual([...fields.keys()], ["net/http.Request"]);
});

Deno.test("readStructFields() agrees with unsafe.Offsetof of the same Go", {
  ignore: !haveGo(),
}, async () => {
  const dir = Deno.makeTempDirSync({ prefix: "dwarf_test_" });
  try {
    Deno.writeTextFileSync(
      join(dir, "main.go"),
      `package main

import (
	"fmt"
	"net/http"
	"net/url"
	"unsafe"
)

func main() {
	var r http.Request
	var u url.URL
	var resp http.Response
	fmt.Println(unsafe.Offsetof(r.Method), unsafe.Offsetof(r.URL), unsafe.Offsetof(r.ContentLength),
		unsafe.Offsetof(r.TLS), unsafe.Offsetof(r.Host), unsafe.Offsetof(u.Path),
		unsafe.Offsetof(resp.StatusCode), unsafe.Sizeof(r))
}
`,
    );
    const out = await new Deno.Command("go", {
      args: ["run", "main.go"],
      cwd: dir,
      env: { GO111MODULE: "off", GOCACHE: join(dir, "cache") },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const [method, url, contentLength, tls, host, path, statusCode, size] = new TextDecoder()
      .decode(out.stdout).trim().split(" ").map(Number);
    const layouts = readStructLayouts(await goServer(), HTTP_WANTED);
    const request = layouts.get("net/http.Request")!;
    assert.deepEqual(
      [...request.fields.values()],
      [method, url, contentLength, tls, host],
    );
    assert.equal(request.byteSize, size);
    assert.equal(layouts.get("net/url.URL")!.fields.get("Path"), path);
    assert.equal(layouts.get("net/http.Response")!.fields.get("StatusCode"), statusCode);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("readStructFields() agrees with the machine code of (*response).finishRequest", {
  ignore: !hasTool("objdump"),
}, async () => {
  // finishRequest begins `w.handlerDone.setTrue(); if !w.wroteHeader { ... }`: the first byte
  // compare against zero through the receiver (RAX) reads wroteHeader, an unexported field
  // that unsafe.Offsetof cannot reach from outside net/http.
  const binary = await goServerPath();
  const out = await new Deno.Command("objdump", {
    args: [
      "-d",
      "-M",
      "intel",
      "--no-show-raw-insn",
      "--disassemble=net/http.(*response).finishRequest",
      binary,
    ],
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  const match = text.match(/cmp\s+BYTE PTR \[rax\+0x([0-9a-f]+)\],0x0/);
  assert.ok(match, text);
  const fields = readStructFields(readElf(binary), HTTP_WANTED);
  assert.equal(fields.get("net/http.response")!.get("wroteHeader"), parseInt(match[1], 16));
});

Deno.test("debugSection() inflates Go 1.19's SHF_COMPRESSED zlib sections", async () => {
  const elf = await goServer();
  const header = elf.section(".debug_info")!;
  assert.equal(header.flags & 0x800, 0x800);
  const raw = elf.sectionBytes(header);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  assert.equal(view.getUint32(0, true), 1); // ELFCOMPRESS_ZLIB
  const info = debugSection(elf, ".debug_info")!;
  assert.equal(info.length, Number(view.getBigUint64(8, true)));
  assert.equal(new DataView(info.buffer, info.byteOffset).getUint16(4, true), 4); // DWARF 4
});

Deno.test("readStructFields() of a Go binary built without DWARF is an empty map", async () => {
  const elf = await goServer(true);
  assert.equal(elf.section(".debug_info"), undefined);
  assert.deepEqual(readStructFields(elf, HTTP_WANTED), new Map());
});

// --- C binaries: DWARF 2 and 5, 64-bit DWARF, and every compression ----------------------------

const C_SOURCE = `struct point { int x; long y; char name[3]; struct point *next; };
struct point p;
int main(void) { return p.x; }
`;
const POINT = new Map([["x", 0], ["y", 8], ["name", 16], ["next", 24]]);

/** Builds the C source with `cc` and `args`, then runs `objcopy` with `objcopyArgs` if any. */
function buildC(cc: string, args: string[], objcopyArgs: string[] = []): ElfFile {
  const dir = Deno.makeTempDirSync({ prefix: "dwarf_test_" });
  try {
    Deno.writeTextFileSync(join(dir, "p.c"), C_SOURCE);
    const run = (cmd: string, cmdArgs: string[]) => {
      const out = new Deno.Command(cmd, { args: cmdArgs, cwd: dir, stderr: "piped" }).outputSync();
      assert.ok(
        out.success,
        `${cmd} ${cmdArgs.join(" ")}: ${new TextDecoder().decode(out.stderr)}`,
      );
    };
    run(cc, [...args, "-o", "p", "p.c"]);
    if (objcopyArgs.length) run("objcopy", [...objcopyArgs, "p", "p"]);
    return readElf(join(dir, "p"));
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

const C_CASES: { name: string; cc: string; args: string[]; objcopy?: string[]; section: string }[] =
  [
    {
      name: "DWARF 2 (member locations as DW_OP_plus_uconst blocks)",
      cc: "gcc",
      args: ["-gdwarf-2", "-gstrict-dwarf"],
      section: ".debug_info",
    },
    {
      name: "DWARF 4 in SHF_COMPRESSED zlib sections",
      cc: "gcc",
      args: ["-gdwarf-4", "-gz=zlib"],
      section: ".debug_info",
    },
    {
      name: "DWARF 5 (strx1, line_strp, str_offsets_base, addrx)",
      cc: "clang",
      args: ["-gdwarf-5"],
      section: ".debug_info",
    },
    {
      name: "64-bit DWARF 5",
      cc: "clang",
      args: ["-gdwarf-5", "-gdwarf64"],
      section: ".debug_info",
    },
    {
      name: "DWARF 5 in .zdebug_ sections",
      cc: "clang",
      args: ["-gdwarf-5"],
      objcopy: ["--compress-debug-sections=zlib-gnu"],
      section: ".zdebug_info",
    },
    {
      name: "DWARF 5 in SHF_COMPRESSED zstd sections",
      cc: "clang",
      args: ["-gdwarf-5"],
      objcopy: ["--compress-debug-sections=zstd"],
      section: ".debug_info",
    },
  ];

for (const c of C_CASES) {
  Deno.test(`readStructLayouts() reads ${c.name}`, {
    ignore: !hasTool(c.cc) || (c.objcopy !== undefined && !hasTool("objcopy")),
  }, () => {
    const elf = buildC(c.cc, c.args, c.objcopy);
    assert.ok(elf.section(c.section), `no ${c.section}`);
    assert.deepEqual(
      readStructLayouts(elf, { point: [] }),
      new Map([["point", { byteSize: 32, fields: POINT }]]),
    );
  });
}

// --- Corrupt input ---------------------------------------------------------------------------

/** A DWARF 4 unit: compile_unit > structure_type "s" (size 8) > member "a" at 4. */
function tinyDwarf(): { info: number[]; abbrev: number[] } {
  const abbrev = [
    ...[1, 0x11, 1, 0, 0], // 1: compile_unit, children, no attributes
    ...[2, 0x13, 1, 0x03, 0x08, 0x0b, 0x0b, 0, 0], // 2: structure_type: name string, byte_size data1
    ...[3, 0x0d, 0, 0x03, 0x08, 0x38, 0x0b, 0, 0], // 3: member: name string, location data1
    0,
  ];
  const body = [...[4, 0], ...[0, 0, 0, 0], 8, 1, 2, 0x73, 0, 8, 3, 0x61, 0, 4, 0, 0];
  return { info: [body.length, 0, 0, 0, ...body], abbrev };
}

Deno.test("readStructFields() reads a hand-made DWARF 4 unit", () => {
  const { info, abbrev } = tinyDwarf();
  const elf = fakeElf({
    ".debug_info": new Uint8Array(info),
    ".debug_abbrev": new Uint8Array(abbrev),
  });
  assert.deepEqual(readStructFields(elf, { s: ["a"] }), new Map([["s", new Map([["a", 4]])]]));
});

Deno.test("readStructFields() throws DwarfError on a unit longer than .debug_info", () => {
  const { info, abbrev } = tinyDwarf();
  info[0] += 10;
  const elf = fakeElf({
    ".debug_info": new Uint8Array(info),
    ".debug_abbrev": new Uint8Array(abbrev),
  });
  assert.throws(() => readStructFields(elf, { s: ["a"] }), DwarfError);
});

Deno.test("readStructFields() throws DwarfError on an unknown abbreviation code", () => {
  const { info, abbrev } = tinyDwarf();
  info[12] = 9; // the structure_type DIE's code
  const elf = fakeElf({
    ".debug_info": new Uint8Array(info),
    ".debug_abbrev": new Uint8Array(abbrev),
  });
  assert.throws(() => readStructFields(elf, { s: ["a"] }), /unknown abbreviation 9/);
});

Deno.test("readStructFields() throws DwarfError on an unknown form", () => {
  const { info, abbrev } = tinyDwarf();
  abbrev[11] = 0x7f; // byte_size's form
  const elf = fakeElf({
    ".debug_info": new Uint8Array(info),
    ".debug_abbrev": new Uint8Array(abbrev),
  });
  assert.throws(() => readStructFields(elf, { s: ["a"] }), /unknown attribute form 0x7f/);
});

Deno.test("readStructFields() throws DwarfError on an unsupported DWARF version", () => {
  const { info, abbrev } = tinyDwarf();
  info[4] = 6;
  const elf = fakeElf({
    ".debug_info": new Uint8Array(info),
    ".debug_abbrev": new Uint8Array(abbrev),
  });
  assert.throws(() => readStructFields(elf, { s: ["a"] }), /unsupported version 6/);
});

Deno.test("debugSection() throws DwarfError on bad compressed data", () => {
  const chdr = new Uint8Array(24 + 4);
  const view = new DataView(chdr.buffer);
  view.setUint32(0, 1, true);
  view.setBigUint64(8, 100n, true);
  chdr.set([1, 2, 3, 4], 24);
  assert.throws(
    () => debugSection(fakeElf({ ".debug_info": chdr }, 0x800), ".debug_info"),
    /bad zlib data/,
  );
  // Inflates, but not to the size the header promised.
  const gnu = new Uint8Array(
    [..."ZLIB"].map((c) => c.charCodeAt(0)).concat(0, 0, 0, 0, 0, 0, 0, 9),
  );
  const zdebug = new Uint8Array([...gnu, ...deflateSync(new Uint8Array(3))]);
  assert.throws(
    () => debugSection(fakeElf({ ".zdebug_info": zdebug }), ".debug_info"),
    (e) => e instanceof DwarfError && /3 bytes after zlib, the header says 9/.test(e.message),
  );
});
