import assert from "node:assert/strict";
import { goServerPath, readElf } from "../tests/support/go_binaries.ts";
import { hasTool } from "../tests/support/tools.ts";
import { type ElfFile, STT } from "./elf.ts";
import {
  describeInstruction,
  findEntryProbeSite,
  findReturnSites,
  uprobeHandling,
  X86DecodeError,
} from "./x86_sites.ts";

interface GoFunction {
  name: string;
  address: number;
  size: number;
  /** The function's bytes, from `.text`. */
  code: Uint8Array;
}

/** The functions of `.symtab` (STT_FUNC symbols with a size, inside `.text`), with their bytes. */
function textFunctions(elf: ElfFile): Map<string, GoFunction> {
  const text = elf.section(".text")!;
  const functions = new Map<string, GoFunction>();
  for (const { name, value: address, size, type } of elf.symbols()) {
    if (type !== STT.func || size === 0) continue;
    if (address < text.addr || address + size > text.addr + text.size) continue;
    functions.set(name, { name, address, size, code: elf.bytesAt(address, size)! });
  }
  return functions;
}

let fixture: Promise<{ binary: string; functions: Map<string, GoFunction> }> | undefined;

function goServer() {
  return fixture ??= goServerPath().then((binary) => ({
    binary,
    functions: textFunctions(readElf(binary)),
  }));
}

/** `objdump -d` of one function, or of the whole binary: [address, instruction text] lines. */
async function objdump(binary: string, symbol?: string): Promise<[number, string][]> {
  const args = [
    symbol ? `--disassemble=${symbol}` : "-d",
    "-M",
    "intel",
    "--no-show-raw-insn",
    binary,
  ];
  const out = await new Deno.Command("objdump", { args, stdout: "piped" }).output();
  assert.ok(out.success);
  const lines: [number, string][] = [];
  for (const line of new TextDecoder().decode(out.stdout).split("\n")) {
    const m = line.match(/^\s+([0-9a-f]+):\s+(.*)$/);
    if (m) lines.push([parseInt(m[1], 16), m[2].trim()]);
  }
  return lines;
}

/** Near returns in objdump's spelling: "ret", "ret 0x8", "repz ret", "bnd ret". */
const OBJDUMP_RET = /^(\S+ +)?ret([qw])?(\s|$)/;

const FUNCTIONS = [
  "net/http.serverHandler.ServeHTTP",
  "net/http.(*response).finishRequest",
  "net/http.(*Transport).roundTrip",
];

for (const name of FUNCTIONS) {
  Deno.test(`findReturnSites() finds the same returns as objdump in ${name}`, {
    ignore: !hasTool("objdump"),
  }, async () => {
    const { binary, functions } = await goServer();
    const fn = functions.get(name);
    assert.ok(fn, `no symbol ${name}`);
    const expected = (await objdump(binary, name))
      .filter(([, text]) => OBJDUMP_RET.test(text)).map(([address]) => address);
    assert.ok(expected.length > 0);
    assert.deepEqual(findReturnSites(fn.code, fn.address), expected);
  });

  Deno.test(`findEntryProbeSite() picks the stack check's jbe in ${name}`, {
    ignore: !hasTool("objdump"),
  }, async () => {
    const { binary, functions } = await goServer();
    const fn = functions.get(name)!;
    const lines = await objdump(binary, name);
    // The prologue: [lea r12, [rsp-N];] cmp r?, [r14+0x10]; jbe <morestack path>.
    const jbe = lines.findIndex(([, text]) => text.startsWith("jbe"));
    assert.match(lines[jbe - 1][1], /^cmp\s+(rsp|r12),QWORD PTR \[r14\+0x10\]$/);
    const site = findEntryProbeSite(fn.code, fn.address);
    assert.equal(site.address, lines[jbe][0]);
    assert.ok(
      [4, 9, 12].includes(site.address - fn.address),
      `jbe at +${site.address - fn.address}`,
    );
    assert.match(site.instruction, /^jbe 0x[0-9a-f]+$/);
    assert.equal(site.emulated, true);
    assert.equal(site.stackDelta, 0);
  });
}

Deno.test("findReturnSites() agrees with objdump on every function of the binary", {
  ignore: !hasTool("objdump"),
}, async () => {
  const { binary, functions } = await goServer();
  const ours = new Set<number>();
  const undecodable: string[] = [];
  const skipped: [number, number][] = [];
  let entrySites = 0;
  for (const fn of functions.values()) {
    try {
      for (const address of findReturnSites(fn.code, fn.address)) ours.add(address);
      if (findEntryProbeSite(fn.code, fn.address).emulated) entrySites++;
    } catch (e) {
      if (!(e instanceof X86DecodeError)) throw e;
      undecodable.push(fn.name);
      skipped.push([fn.address, fn.address + fn.size]);
    }
  }
  // The one function with data in it: an assembly marker that jumps over its magic bytes.
  assert.deepEqual(undecodable, ["crypto/internal/boring/sig.StandardCrypto.abi0"]);
  // objdump also decodes the INT3 padding between functions: no returns there.
  const theirs = (await objdump(binary)).filter(([address, text]) =>
    OBJDUMP_RET.test(text) && !skipped.some(([start, end]) => address >= start && address < end)
  ).map(([address]) => address);
  assert.deepEqual([...ours].sort(), [...new Set(theirs)].sort());
  // Nearly every Go function starts with a stack check; only NOSPLIT leaves and assembly do not.
  assert.ok(entrySites / functions.size > 0.75, `${entrySites} of ${functions.size}`);
});

// --- Hand-made code ---------------------------------------------------------------------------

const AT = 0x401000;
const code = (...bytes: number[]) => new Uint8Array(bytes);

Deno.test("findReturnSites() finds every form of near return", () => {
  const sites = findReturnSites(
    code(
      0xc3, // ret
      0xc2,
      0x08,
      0x00, // ret 8
      0xf3,
      0xc3, // repz ret
      0x66,
      0xc3, // ret with an operand-size prefix
      0xcb, // retf: not a return of a Go function
      0xcc,
      0xcc,
      0xcc, // INT3 padding
    ),
    AT,
  );
  assert.deepEqual(sites, [AT, AT + 1, AT + 4, AT + 6]);
});

Deno.test("findReturnSites() accepts a padding tail and rejects a cut instruction", () => {
  // 00 alone is an incomplete `add [rax], al`: zero padding, ignored.
  assert.deepEqual(findReturnSites(code(0xc3, 0x00), AT), [AT]);
  assert.throws(
    () => findReturnSites(code(0xc3, 0x0f), AT),
    (e) =>
      e instanceof X86DecodeError && /0x401001 \(0f\): the code ends inside it/.test(e.message),
  );
  // 06 (push es) does not exist in 64-bit mode.
  assert.throws(() => findReturnSites(code(0x06, 0xc3), AT), /0x401000 \(06 c3\): invalid/);
});

Deno.test("findEntryProbeSite() picks the first emulated instruction of the prologue", () => {
  // Go: cmp rsp, [r14+0x10]; jbe +0x10
  assert.deepEqual(
    findEntryProbeSite(code(0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0xc3), AT),
    { address: AT + 4, instruction: "jbe 0x401016", emulated: true, stackDelta: 0 },
  );
  // C: push rbp; mov rbp, rsp
  assert.deepEqual(
    findEntryProbeSite(code(0x55, 0x48, 0x89, 0xe5, 0xc3), AT),
    { address: AT, instruction: "push rbp", emulated: true, stackDelta: 0 },
  );
  // lea r12, [rsp-0x28] changes only a scratch register; push r12 (41 54) is emulated.
  assert.equal(
    findEntryProbeSite(code(0x4c, 0x8d, 0x64, 0x24, 0xd8, 0x41, 0x54, 0xc3), AT).address,
    AT + 5,
  );
  // A REX.W push (48 55) is single-stepped, so the jcc after it wins, 8 bytes lower.
  assert.deepEqual(
    findEntryProbeSite(code(0x48, 0x55, 0x74, 0x00, 0xc3), AT),
    { address: AT + 2, instruction: "je 0x401004", emulated: true, stackDelta: 8 },
  );
});

Deno.test("findEntryProbeSite() stops where the prologue changes what a probe reads", () => {
  const entry = (instruction: string) => ({
    address: AT,
    instruction,
    emulated: false,
    stackDelta: 0,
  });
  // mov eax, 1 changes an argument register before the jbe.
  assert.deepEqual(
    findEntryProbeSite(code(0xb8, 0x01, 0x00, 0x00, 0x00, 0x76, 0x00), AT),
    entry("mov eax, 1"),
  );
  // sub rsp, 0x18 moves the stack arguments.
  assert.deepEqual(
    findEntryProbeSite(code(0x48, 0x83, 0xec, 0x18, 0x76, 0x00), AT),
    entry("sub rsp, 0x18"),
  );
  // mov [rsp+8], rax writes memory.
  assert.deepEqual(
    findEntryProbeSite(code(0x48, 0x89, 0x44, 0x24, 0x08, 0x76, 0x00), AT),
    entry("mov [rsp+8], rax"),
  );
  // An indirect jump is a branch the kernel does not emulate: nothing after it is certain.
  assert.deepEqual(findEntryProbeSite(code(0xff, 0xe0, 0x76, 0x00), AT), entry("jmp rax"));
});

Deno.test("uprobeHandling() follows arch/x86/kernel/uprobes.c", () => {
  const cases: [number[], string][] = [
    [[0x0f, 0x86, 0, 0, 0, 0], "emulated"], // jbe rel32
    [[0x76, 0x10], "emulated"], // jbe rel8
    [[0xeb, 0x00], "emulated"], // jmp rel8
    [[0xe9, 0, 0, 0, 0], "emulated"], // jmp rel32
    [[0xe8, 0, 0, 0, 0], "emulated"], // call rel32
    [[0x90], "emulated"], // nop
    [[0x55], "emulated"], // push rbp
    [[0x41, 0x56], "emulated"], // push r14
    [[0x48, 0x55], "single-stepped"], // push rbp with REX.W
    [[0x66, 0x0f, 0x86, 0, 0], "rejected"], // jbe with a 66 prefix
    [[0xf0, 0x48, 0x0f, 0xb1, 0x0a], "rejected"], // lock cmpxchg
    [[0x48, 0x89, 0xe5], "single-stepped"], // mov rbp, rsp
    [[0x49, 0x3b, 0x66, 0x10], "single-stepped"], // cmp rsp, [r14+0x10]
    [[0xc3], "single-stepped"], // ret
    [[0x41, 0x90], "single-stepped"], // xchg r8d, eax
  ];
  for (const [bytes, expected] of cases) {
    assert.equal(uprobeHandling(new Uint8Array(bytes)), expected, bytes.join(" "));
  }
});

Deno.test("describeInstruction() shows address, instruction and bytes", () => {
  assert.equal(
    describeInstruction(code(0x0f, 0x86, 0x54, 0x03, 0x00, 0x00, 0xc3), 0x64bd09),
    "0x64bd09: jbe 0x64c063 (0f 86 54 03 00 00)",
  );
});
