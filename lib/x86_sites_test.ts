import assert from "node:assert/strict";
import { fileExists, goServerPath, readElf } from "../tests/support/go_binaries.ts";
import { inCi } from "../tests/support/privileges.ts";
import { hasTool } from "../tests/support/tools.ts";
import { type ElfFile, STT } from "./elf.ts";
import { findOpenSslFunctions } from "./openssl.ts";
import {
  describeInstruction,
  findCEntryProbeSite,
  findEntryProbeSite,
  findReturnSites,
  findReturnValueSites,
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

/**
 * `objdump -d` of one function, or of the whole binary, or of the addresses [start, stop):
 * [address, instruction text] lines.
 */
async function objdump(
  binary: string,
  symbol?: string | { start: number; stop: number },
): Promise<[number, string][]> {
  const which = symbol === undefined
    ? ["-d"]
    : typeof symbol === "string"
    ? [`--disassemble=${symbol}`]
    : ["-d", `--start-address=${symbol.start}`, `--stop-address=${symbol.stop}`];
  const args = [...which, "-M", "intel", "--no-show-raw-insn", binary];
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

// --- C functions: hand-made code ----------------------------------------------------------------

Deno.test("findCEntryProbeSite() lets the prologue change anything but the argument registers", () => {
  // Debian libssl.so.3's SSL_read: sub rsp, 0x18; mov rax, fs:[0x28]; mov [rsp+8], rax;
  // xor eax, eax; test edx, edx; js <error>: the stack, memory, RAX and flags change first.
  const sslRead = code(
    ...[0x48, 0x83, 0xec, 0x18],
    ...[0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00],
    ...[0x48, 0x89, 0x44, 0x24, 0x08],
    ...[0x31, 0xc0],
    ...[0x85, 0xd2],
    ...[0x78, 0x2f],
  );
  assert.deepEqual(findCEntryProbeSite(sslRead, AT), { address: AT + 0x16, handling: "emulated" });
  // push rbp: the entry itself is emulated.
  assert.deepEqual(findCEntryProbeSite(code(0x55, 0x48, 0x89, 0xe5, 0xc3), AT), {
    address: AT,
    handling: "emulated",
  });
  // The first branch may be the site: sub rsp, 8; call <f>.
  assert.deepEqual(
    findCEntryProbeSite(code(0x48, 0x83, 0xec, 0x08, 0xe8, 0, 0, 0, 0, 0xc3), AT),
    { address: AT + 4, handling: "emulated" },
  );
});

Deno.test("findCEntryProbeSite() falls back to the entry when an argument register changes first", () => {
  const entry = { address: AT, handling: "single-stepped" };
  const cases: [string, number[]][] = [
    ["mov rdi, [rdi]", [0x48, 0x8b, 0x3f]],
    ["mov dl, 1", [0xb2, 0x01]], // a sub-register
    ["xor r9d, r9d", [0x45, 0x31, 0xc9]],
    ["cmovs ecx, eax", [0x0f, 0x48, 0xc8]], // a conditional write
    ["cqo", [0x48, 0x99]], // an implicit write of RDX
    ["movzx esi, sil", [0x40, 0x0f, 0xb6, 0xf6]],
  ];
  for (const [what, bytes] of cases) {
    assert.deepEqual(findCEntryProbeSite(code(...bytes, 0x75, 0x00, 0xc3), AT), entry, what);
  }
  // mov r10, rdi writes no argument register: the jne is the site.
  assert.equal(findCEntryProbeSite(code(0x49, 0x89, 0xfa, 0x75, 0x00, 0xc3), AT).address, AT + 3);
  // call rax is a branch the kernel does not emulate: nothing after it is certain to run.
  assert.deepEqual(findCEntryProbeSite(code(0xff, 0xd0, 0x75, 0x00, 0xc3), AT), entry);
  // lock cmpxchg [rdx], rcx: the entry's handling is reported as it is.
  assert.deepEqual(findCEntryProbeSite(code(0xf0, 0x48, 0x0f, 0xb1, 0x0a, 0xc3), AT), {
    address: AT,
    handling: "rejected",
  });
  assert.throws(() => findCEntryProbeSite(code(), AT), X86DecodeError);
});

Deno.test("findCEntryProbeSite() falls back to the entry when a loop jumps back before the site", () => {
  // sub rsp, 8; loop: test edi, edi; je out; dec edi; jmp <back>; out: ret
  const loop = (back: number) =>
    code(0x48, 0x83, 0xec, 0x08, 0x85, 0xff, 0x74, 0x04, 0xff, 0xcf, 0xeb, back, 0xc3);
  // Back to the test at +4: the je at +6 would fire once per iteration, with another EDI.
  assert.deepEqual(findCEntryProbeSite(loop(0xf8), AT), {
    address: AT,
    handling: "single-stepped",
  });
  // Back to the entry itself: it would fire again too, so the je is no worse.
  assert.deepEqual(findCEntryProbeSite(loop(0xf4), AT), { address: AT + 6, handling: "emulated" });
});

/** A stack-protector check and epilogue, with `between` after the check's jne (at +4). */
function protectedReturn(...between: number[]): Uint8Array {
  // sub rsp, 8; jne +n; <between>; add rsp, 8; ret; call <__stack_chk_fail>
  return code(
    ...[0x48, 0x83, 0xec, 0x08],
    ...[0x75, between.length + 5],
    ...between,
    ...[0x48, 0x83, 0xc4, 0x08],
    0xc3,
    ...[0xe8, 0, 0, 0, 0],
  );
}

Deno.test("findReturnValueSites() picks the stack protector's jne before the ret", () => {
  // sub rsp, 8; jne fail; add rsp, 8; ret; fail: call <__stack_chk_fail>
  assert.deepEqual(findReturnValueSites(protectedReturn(), AT), [AT + 4]);
  // cmovs edx, eax and xor ecx, ecx leave RAX alone.
  assert.deepEqual(findReturnValueSites(protectedReturn(0x0f, 0x48, 0xd0, 0x31, 0xc9), AT), [
    AT + 4,
  ]);
  // A nop or a push is a site too, and the last one before the ret wins: nop; jne ... ret.
  assert.deepEqual(findReturnValueSites(code(0x90, 0xc3), AT), [AT]);
  assert.deepEqual(findReturnValueSites(code(0x53, 0x90, 0xc3), AT), [AT + 1]);
  // A function that never returns (it ends in a call to a noreturn function) has no sites.
  assert.deepEqual(findReturnValueSites(code(0xe8, 0, 0, 0, 0), AT), []);
  // Padding after the last instruction is no way out.
  assert.deepEqual(findReturnValueSites(code(0x90, 0xc3, 0x66, 0x90, 0xcc), AT), [AT]);
});

Deno.test("findReturnValueSites() gives up when RAX may change after the site", () => {
  const cases: [string, number[]][] = [
    ["xor eax, eax", [0x31, 0xc0]],
    ["cmovs eax, edx", [0x0f, 0x48, 0xc2]],
    ["mov al, 1", [0xb0, 0x01]],
    ["cdqe", [0x48, 0x98]],
    ["call rdx", [0xff, 0xd2]], // a branch, and the callee may change RAX
  ];
  for (const [what, bytes] of cases) {
    assert.equal(findReturnValueSites(protectedReturn(...bytes), AT), undefined, what);
  }
  // The ret of node's SSL_read: mov eax, r12d; pop r12; pop rbp; ret: nothing emulated after the mov.
  assert.equal(findReturnValueSites(code(0x44, 0x89, 0xe0, 0x41, 0x5c, 0x5d, 0xc3), AT), undefined);
});

Deno.test("findReturnValueSites() accepts only a jcc to a call, not a jmp or another jcc", () => {
  // jmp over nothing: not a site, and a branch, so the search stops there.
  assert.equal(findReturnValueSites(code(0xeb, 0x00, 0xc3), AT), undefined);
  // call <f>; ret: the call is emulated but RAX is the callee's, and it is unconditional.
  assert.equal(findReturnValueSites(code(0xe8, 0, 0, 0, 0, 0xc3), AT), undefined);
  // jne to a nop; ret: the taken path returns too, through the other ret, whose nop would
  // count the call a second time.
  assert.equal(findReturnValueSites(code(0x75, 0x01, 0xc3, 0x90, 0xc3), AT), undefined);
  // jne to call rax: only a direct call is taken for the stack protector's.
  assert.equal(findReturnValueSites(code(0x75, 0x01, 0xc3, 0xff, 0xd0), AT), undefined);
  // A jcc with a 66 prefix is rejected by the kernel, not emulated.
  assert.equal(
    findReturnValueSites(code(0x66, 0x0f, 0x85, 0x01, 0x00, 0xc3, 0xe8, 0, 0, 0, 0), AT),
    undefined,
  );
});

Deno.test("findReturnValueSites() gives up when a branch lands between the site and the ret", () => {
  // test edi, edi; je <to>; jne fail; xor edx, edx; xor ecx, ecx; ret; fail: call
  const jumpTo = (rel: number) =>
    code(0x85, 0xff, 0x74, rel, 0x75, 0x05, 0x31, 0xd2, 0x31, 0xc9, 0xc3, 0xe8, 0, 0, 0, 0);
  assert.equal(findReturnValueSites(jumpTo(0x04), AT), undefined, "to the xor ecx at +8");
  assert.equal(findReturnValueSites(jumpTo(0x06), AT), undefined, "to the ret at +10");
  // To the jne at +4 itself: every path still passes the site.
  assert.deepEqual(findReturnValueSites(jumpTo(0x00), AT), [AT + 4]);
  // A call into the block counts as a way in too.
  assert.equal(
    findReturnValueSites(code(0x90, 0x90, 0xc3, 0xe8, 0xfa, 0xff, 0xff, 0xff), AT),
    undefined,
  );
});

Deno.test("findReturnValueSites() gives up when the function can leave other than by ret", () => {
  // test edi, edi; je <tail>; nop; ret; tail: <how>
  const tail = (...how: number[]) => code(0x85, 0xff, 0x74, 0x02, 0x90, 0xc3, ...how);
  // jmp back to the entry stays inside: the nop covers the one ret.
  assert.deepEqual(findReturnValueSites(tail(0xeb, 0xf8), AT), [AT + 4]);
  assert.equal(
    findReturnValueSites(tail(0xe9, 0x00, 0x01, 0x00, 0x00), AT),
    undefined,
    "tail call",
  );
  assert.equal(findReturnValueSites(tail(0xff, 0xe0), AT), undefined, "jmp rax");
  assert.equal(findReturnValueSites(tail(0xcb), AT), undefined, "retf");
  assert.equal(findReturnValueSites(tail(0x31, 0xc0), AT), undefined, "runs off the end");
  // A conditional tail call: je <other function>; nop; ret.
  assert.equal(
    findReturnValueSites(code(0x85, 0xff, 0x0f, 0x84, 0x00, 0x01, 0x00, 0x00, 0x90, 0xc3), AT),
    undefined,
  );
});

// --- C functions: OpenSSL in real files ---------------------------------------------------------

const SSL_FUNCTIONS = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"] as const;

interface CFunctionSites {
  address: number;
  size: number;
  entry: { address: number; handling: string };
  returns: number[] | undefined;
}

/** The four functions' addresses, sizes (from `.dynsym`) and sites, as this code finds them. */
function openSslSites(elf: ElfFile): Record<string, CFunctionSites> {
  const found = findOpenSslFunctions(elf);
  const sites: Record<string, CFunctionSites> = {};
  for (const name of SSL_FUNCTIONS) {
    const fn = found[name];
    assert.ok(fn, `no ${name}`);
    const symbol = elf.dynamicSymbols().find((s) => s.name === name && s.value === fn.address);
    assert.ok(symbol && symbol.size > 0, `${name} has a size in .dynsym`);
    const bytes = elf.bytesAt(fn.address, symbol.size)!;
    sites[name] = {
      address: fn.address,
      size: symbol.size,
      entry: findCEntryProbeSite(bytes, fn.address),
      returns: findReturnValueSites(bytes, fn.address),
    };
  }
  return sites;
}

/**
 * What holds of the sites in any build: the entry site is the entry or an emulated instruction
 * after it; there is one return site per `ret`, each an emulated instruction before its `ret`,
 * and in objdump's listing a jcc to `call <__stack_chk_fail...>`, or a push or nop.
 */
async function assertSitesPlausible(path: string, name: string, fn: CFunctionSites) {
  const bytes = readElf(path).bytesAt(fn.address, fn.size)!;
  const at = (address: number) => bytes.subarray(address - fn.address);
  assert.equal(fn.entry.handling, uprobeHandling(at(fn.entry.address)), name);
  assert.ok(fn.entry.address === fn.address || fn.entry.handling === "emulated", name);
  if (fn.returns === undefined) return;
  const rets = findReturnSites(bytes, fn.address);
  assert.equal(fn.returns.length, rets.length, name);
  fn.returns.forEach((site, i) => {
    assert.ok(
      site < rets[i] && (i === 0 || site > rets[i - 1]),
      `${name}: ${site} before ${rets[i]}`,
    );
    assert.equal(uprobeHandling(at(site)), "emulated", name);
  });
  if (!hasTool("objdump")) return;
  const lines = new Map(await objdump(path, { start: fn.address, stop: fn.address + fn.size }));
  for (const site of fn.returns) {
    const text = lines.get(site) ?? "";
    const jcc = text.match(/^j(?!mp)[a-z]+\s+([0-9a-f]+)/);
    if (jcc === null) {
      assert.match(text, /^(push|nop)\b/, `${name} at 0x${site.toString(16)}`);
      continue;
    }
    const target = lines.get(parseInt(jcc[1], 16)) ?? "";
    assert.match(target, /^call\s+[0-9a-f]+ <__stack_chk_fail(@plt)?>$/, `${name}: ${text}`);
  }
}

/** Test options: skipped when `path` is missing, except in CI, where it must be there. */
function on(what: string, path: string | undefined) {
  return path === undefined && !inCi()
    ? { name: `${what} (skipped: not on this machine)`, ignore: true }
    : { name: `${what} (${path})`, ignore: false };
}

function nodeOnPath(): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir !== "" && fileExists(`${dir}/node`)) return Deno.realPathSync(`${dir}/node`);
  }
  return undefined;
}

const LIBSSL_PATH = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const LIBSSL = fileExists(LIBSSL_PATH) ? LIBSSL_PATH : undefined;
const NODE = nodeOnPath();

/**
 * The sites in the builds they were checked by hand against `objdump -d`, keyed by the
 * functions' addresses and sizes (another build of the file only gets the plausibility checks).
 */
const VERIFIED: Record<string, CFunctionSites>[] = [
  // Debian's libssl3 (OpenSSL 3): SSL_read and SSL_write check `num < 0` (js) after setting up
  // the canary, and return through the stack protector's jne. The _ex variants call the
  // internal function straight away (the call is the entry site) and end with
  // `cmovs eax, edx; add rsp, 8; xor edx, edx; ...; ret`: nothing emulated after the cmovs.
  {
    SSL_read: {
      address: 0x35430,
      size: 131,
      entry: { address: 0x35446, handling: "emulated" },
      returns: [0x35468],
    },
    SSL_write: {
      address: 0x35980,
      size: 131,
      entry: { address: 0x35996, handling: "emulated" },
      returns: [0x359b8],
    },
    SSL_read_ex: {
      address: 0x354c0,
      size: 29,
      entry: { address: 0x354c4, handling: "emulated" },
      returns: undefined,
    },
    SSL_write_ex: {
      address: 0x35a10,
      size: 29,
      entry: { address: 0x35a14, handling: "emulated" },
      returns: undefined,
    },
  },
  // Debian's node 20 (static OpenSSL, no stack protector in these): every function starts with
  // push rbp, and every ret follows `mov eax, r12d` (or r13d) and pops: nothing emulated.
  {
    SSL_read: {
      address: 0x1a6b180,
      size: 443,
      entry: { address: 0x1a6b180, handling: "emulated" },
      returns: undefined,
    },
    SSL_write: {
      address: 0x1a6b940,
      size: 479,
      entry: { address: 0x1a6b940, handling: "emulated" },
      returns: undefined,
    },
    SSL_read_ex: {
      address: 0x1a6b340,
      size: 357,
      entry: { address: 0x1a6b340, handling: "emulated" },
      returns: undefined,
    },
    SSL_write_ex: {
      address: 0x1a6bb20,
      size: 416,
      entry: { address: 0x1a6bb20, handling: "emulated" },
      returns: undefined,
    },
  },
];

function assertAsVerified(sites: Record<string, CFunctionSites>): number {
  let checked = 0;
  for (const verified of VERIFIED) {
    for (const [name, fn] of Object.entries(sites)) {
      const expected = verified[name];
      if (expected?.address !== fn.address || expected.size !== fn.size) continue;
      assert.deepEqual(fn, expected, name);
      checked++;
    }
  }
  return checked;
}

Deno.test({
  ...on("C sites of SSL_read, SSL_write and the _ex variants in libssl.so.3", LIBSSL),
  async fn() {
    const sites = openSslSites(readElf(LIBSSL!));
    for (const [name, fn] of Object.entries(sites)) await assertSitesPlausible(LIBSSL!, name, fn);
    // Built with -fstack-protector-strong: at least SSL_read has a cheap return site.
    assert.ok(sites.SSL_read.returns !== undefined, "SSL_read has return sites");
    assert.ok(sites.SSL_read.entry.address > sites.SSL_read.address, "SSL_read's entry site");
    if (assertAsVerified(sites) === 0) console.log("another libssl build than verified:", sites);
  },
});

Deno.test({
  ...on("SSL_read's bytes with the padding up to the next function give the same sites", LIBSSL),
  fn() {
    const elf = readElf(LIBSSL!);
    const sslRead = findOpenSslFunctions(elf).SSL_read!;
    if (sslRead.address !== 0x35430) return; // another build: the padding is elsewhere
    // 0x354b3..0x354c0 is `data16 cs nopw [rax+rax]; xchg ax, ax`: padding, no way out.
    const bytes = elf.bytesAt(0x35430, 0x354c0 - 0x35430)!;
    assert.deepEqual(findReturnValueSites(bytes, 0x35430), [0x35468]);
    assert.deepEqual(findCEntryProbeSite(bytes, 0x35430), {
      address: 0x35446,
      handling: "emulated",
    });
  },
});

Deno.test({
  ...on("C sites of SSL_read, SSL_write and the _ex variants in node", NODE),
  async fn() {
    const sites = openSslSites(readElf(NODE!));
    for (const [name, fn] of Object.entries(sites)) await assertSitesPlausible(NODE!, name, fn);
    if (assertAsVerified(sites) === 0) console.log("another node build than verified:", sites);
  },
});
