/**
 * Where to put uprobes in the x86-64 machine code of a Go function: every return instruction
 * (return probes without uretprobes, which break when Go moves a goroutine's stack), and the
 * cheapest entry site that still sees the arguments as the caller passed them. The same for C
 * functions (OpenSSL's `SSL_read` and friends), where the return sites must also see the return
 * value: see "C functions" below. Decoding is done by the iced-x86 decoder (npm `iced-x86`, Rust
 * compiled to WebAssembly).
 *
 * Pure: bytes and the address they are loaded at in, addresses out. The caller reads a function's
 * bytes from the binary (its `.symtab` entry gives the address and size; `.text` holds the
 * bytes) and turns the addresses into file offsets for the uprobe.
 *
 * iced-x86's npm entry is wasm-bindgen's `nodejs` target: CommonJS that reads
 * `iced_x86_bg.wasm` beside it with `fs.readFileSync` and instantiates it synchronously. Deno
 * runs it unchanged through its npm CommonJS support (named imports work: Deno's export analysis
 * sees the `module.exports.X =` assignments); it needs read permission on Deno's npm cache.
 * iced's objects live in WebAssembly memory and are freed explicitly here.
 *
 * ## The entry site
 *
 * A uprobe on an instruction the kernel has to execute out of line (single-step a copy of it in
 * the XOL area) costs ~20 µs per hit on this project's machines; one on an instruction the kernel
 * emulates costs ~5 µs. Linux's arch/x86/kernel/uprobes.c emulates: relative `jmp` (EB, E9),
 * `call rel32` (E8), every `jcc` (70-7F, 0F 80-8F) unless it has a 66 prefix
 * (`branch_setup_xol_ops`, which also takes `nop` 90), and, on recent kernels, `push reg`
 * (50-57 alone, or with the REX prefix 41 for r8-r15: `push_setup_xol_ops`).
 *
 * Go's prologue is a stack check and then the frame set-up:
 *
 *     cmp  rsp, [r14+0x10]              ; or: lea r12, [rsp-N]; cmp r12, [r14+0x10]
 *     jbe  morestack_path               ; emulated
 *     sub  rsp, N / push rbp ...
 *
 * {@linkcode findEntryProbeSite} walks the straight-line code from the entry and returns the first
 * instruction the kernel emulates, as long as nothing before it has changed what a probe there
 * would read: the integer argument registers (RAX, RBX, RCX, RDI, RSI, R8-R11), the closure
 * context RDX, the goroutine R14, the float argument registers, memory, or RSP (other than by a
 * `push`, whose effect it reports in `stackDelta`). Only R12, R13, RBP and the flags may change.
 * It stops at the first branch: the instructions up to it run on every call, the ones after it
 * may not. In Go code the answer is the `jbe` (entry+4, +9 or +12, after a 4-, 9- or 12-byte
 * stack check; 82% of the functions of a Go 1.19 net/http server); without one, an early `push`;
 * else the entry itself, single-stepped.
 *
 * A probe on an instruction fires before the instruction runs, so a probe on the `jbe` sees the
 * registers of the entry. The `jbe` is taken only when the goroutine's stack must grow; then
 * the function's morestack path spills the argument registers, calls `runtime.morestack`, which
 * copies the stack, reloads them and jumps back to the entry, which reaches the probe again:
 * *the entry probe fires twice for one call* (same goroutine, same argument registers, a
 * different RSP, since the stack moved). This is also true of a probe on the entry itself. The
 * BPF side must not count entries: it stores the entry state per goroutine (keyed by the `g`
 * pointer in R14 or its goid), so the second hit overwrites the first, and counts at the return
 * sites.
 *
 * Return sites have no cheap variant: the kernel does not emulate `ret`, and Go's epilogue
 * (`mov rbp, [rsp+N]; add rsp, N+8; ret`) has nothing it emulates either, so each return probe
 * is single-stepped.
 *
 * ## C functions
 *
 * For a C function (System V x86-64 ABI: integer arguments in RDI, RSI, RDX, RCX, R8, R9, the
 * result in RAX) the agent wants the same two cheap probes. The caller passes exactly the
 * function's bytes (its symbol's size; `.dynsym` has it even in a stripped library).
 *
 * {@linkcode findCEntryProbeSite} walks the straight-line code from the entry like the Go rule,
 * but the BPF side reads only the six argument registers there, so anything else may change
 * first: the stack pointer, memory, RAX, the flags. OpenSSL 3's `SSL_read` in Debian's
 * libssl.so.3 sets up its stack-protector canary and then checks `num < 0`; the `js` is the site:
 *
 *     sub rsp, 0x18 ; mov rax, fs:[0x28] ; mov [rsp+8], rax ; xor eax, eax ; test edx, edx
 *     js  error_path                    ; emulated, RDI/RSI/RDX/RCX as the caller set them
 *
 * Unlike the Go rule it also decodes the rest of the function: a branch back into the code
 * before the site (a tail-recursive call turned into a loop) would make the site fire again,
 * with other arguments, in the same call; then the entry itself is the site.
 *
 * {@linkcode findReturnValueSites} replaces a uretprobe, which costs the entry hit that hijacks
 * the return address and a second trap in the return trampoline, by one probe per `ret` on an
 * emulated instruction *before* it: one after which RAX is final and the function cannot but
 * reach that `ret`. The stack protector's check provides one in most OpenSSL functions built
 * with `-fstack-protector-strong`:
 *
 *     mov  eax, result                  ; (on every path that reaches the check)
 *     mov  rdx, [rsp+8] ; sub rdx, fs:[0x28]
 *     jne  fail                         ; emulated; fail: call __stack_chk_fail (no return)
 *     add  rsp, 0x18 ; xor edx, edx ; ... ; ret
 *
 * A probe on the `jne` fires after the result is in EAX, and if the branch is taken the program
 * dies in `__stack_chk_fail`, so every hit is followed by that `ret`. The bytes cannot show that
 * a callee never returns: a conditional branch is accepted when it leads straight to a direct
 * `call` inside the function, which in compiled C is that pattern. `push` and `nop` qualify
 * too. A function that can leave other than by `ret` (a jump table's indirect `jmp`, a tail
 * call's `jmp` out of the function, a jump to a `.cold` part) has no answer, nor has one where
 * some `ret` has no such site: an epilogue that moves the result into EAX (`mov eax, r12d; pop
 * r12; ...; ret`, as in the OpenSSL node links statically) or a `call` right before it. Then only
 * single-stepped return probes (or a uretprobe) remain.
 *
 * @module
 */
import {
  Decoder,
  DecoderError,
  DecoderOptions,
  FlowControl,
  Formatter,
  FormatterSyntax,
  type Instruction,
  InstructionInfoFactory,
  Mnemonic,
  OpAccess,
  OpKind,
  Register,
  RegisterExt,
} from "iced-x86";
import {
  type CEntryProbeSite,
  type EntryProbeSite,
  type UprobeHandling,
  X86DecodeError,
} from "./x86_types.ts";

export { type CEntryProbeSite, type EntryProbeSite, type UprobeHandling, X86DecodeError };

/**
 * Virtual addresses of every near return (`ret`, `ret imm16`, with any prefix) in the function
 * whose bytes are `code`, loaded at `address`. Decodes linearly from the entry to the end of
 * `code`: Go's compiler puts no data in `.text`, and the INT3 padding after the last instruction
 * decodes as instructions too. An incomplete instruction at the very end is accepted only if it
 * is padding (INT3 or zero bytes); anything else that does not decode throws
 * {@linkcode X86DecodeError}, since a probe placed inside an instruction would corrupt the
 * program. (Assembly can embed data: in a net/http server, `crypto/internal/boring/sig.
 * StandardCrypto` jumps over magic bytes and throws here; no function worth probing does that.)
 */
export function findReturnSites(code: Uint8Array, address: number): number[] {
  const sites: number[] = [];
  decodeLinear(code, address, (instruction) => {
    if (instruction.mnemonic === Mnemonic.Ret) sites.push(Number(instruction.ip));
    return true;
  });
  return sites;
}

/** The best entry uprobe site of the function whose bytes are `code`, loaded at `address`. */
export function findEntryProbeSite(code: Uint8Array, address: number): EntryProbeSite {
  let site: EntryProbeSite | undefined;
  let stackDelta = 0;
  let entry: EntryProbeSite | undefined;
  decodeLinear(code, address, (instruction, offset) => {
    const here = {
      address: Number(instruction.ip),
      instruction: format(instruction),
      emulated: uprobeHandling(code.subarray(offset, offset + instruction.length)) === "emulated",
      stackDelta,
    };
    entry ??= here;
    if (here.emulated) {
      site = here;
      return false;
    }
    if (instruction.flowControl !== FlowControl.Next) return false;
    const push = pushedBytes(instruction);
    if (push > 0) {
      stackDelta += push;
      return true;
    }
    return !changesWhatProbesRead(instruction);
  }, MAX_PROLOGUE_INSTRUCTIONS);
  if (site) return site;
  if (entry) return entry;
  throw new X86DecodeError(`Cannot find an entry site at 0x${address.toString(16)}: no code`);
}

/**
 * The cheapest entry uprobe site of the C function whose bytes are exactly `code`, loaded at
 * `address`: the first instruction the kernel emulates in the straight-line code from the entry
 * (the first branch may be it), if nothing before it writes RDI, RSI, RDX, RCX, R8 or R9 (any
 * part of them) and no branch of the function leads back into the code after the entry up to
 * it; else the entry itself. Throws {@linkcode X86DecodeError} if `code` does not decode.
 */
export function findCEntryProbeSite(code: Uint8Array, address: number): CEntryProbeSite {
  const instructions = decodeFunction(code, address);
  if (instructions.length === 0) {
    throw new X86DecodeError(`Cannot find an entry site at 0x${address.toString(16)}: no code`);
  }
  const entry = { address, handling: instructions[0].handling };
  const site = instructions.find((i) =>
    i.handling === "emulated" || i.flowControl !== FlowControl.Next || i.writesArgument
  );
  if (site === undefined || site.handling !== "emulated" || site.address === address) return entry;
  const loopsBack = instructions.some((i) =>
    i.target !== undefined && i.target > address && i.target <= site.address
  );
  return loopsBack ? entry : { address: site.address, handling: site.handling };
}

/**
 * Return-value uprobe sites of the C function whose bytes are exactly `code`, loaded at
 * `address`: for each `ret`, in order, the address of the last emulated instruction before it
 * such that when a probe there fires, RAX holds the return value and the function will return
 * through that `ret` (see "C functions" in the module documentation). The site is a `push`, a
 * `nop` or a conditional branch whose taken path is a direct `call` outside the site's block (the
 * stack protector's `call __stack_chk_fail`); only straight-line instructions that leave RAX
 * alone follow it up to the `ret`, and no branch of the function lands after it up to the `ret`.
 *
 * Undefined when some `ret` has no such site, or when the function can leave other than by
 * `ret` (an indirect `jmp`, a `jmp` or `jcc` out of `code`, a far return, running off its end),
 * since then the sites would miss returns. Throws {@linkcode X86DecodeError} if `code` does not
 * decode.
 */
export function findReturnValueSites(code: Uint8Array, address: number): number[] | undefined {
  const instructions = decodeFunction(code, address);
  const end = address + code.length;
  const inside = (target: number) => target >= address && target < end;
  for (const i of instructions) {
    if (i.flowControl === FlowControl.IndirectBranch) return undefined;
    if (i.flowControl === FlowControl.Return && i.mnemonic !== Mnemonic.Ret) return undefined;
    const jumps = i.flowControl === FlowControl.UnconditionalBranch ||
      i.flowControl === FlowControl.ConditionalBranch ||
      i.flowControl === FlowControl.XbeginXabortXend;
    if (jumps && (i.target === undefined || !inside(i.target))) return undefined;
  }
  const last = instructions.findLast((i) => !PADDING_MNEMONICS.has(i.mnemonic));
  if (last?.flowControl === FlowControl.Next) return undefined;

  const targets = instructions.flatMap((i) =>
    i.target !== undefined && inside(i.target) ? [i.target] : []
  );
  const byAddress = new Map(instructions.map((i) => [i.address, i]));
  const sites: number[] = [];
  for (const [index, ret] of instructions.entries()) {
    if (ret.mnemonic !== Mnemonic.Ret) continue;
    const site = returnValueSite(instructions, index, byAddress);
    if (site === undefined) return undefined;
    if (targets.some((target) => target > site && target <= ret.address)) return undefined;
    sites.push(site);
  }
  return sites;
}

/** The instruction at the start of `code` for logs: "0x64bd09: jbe 0x64c063 (0f 86 54 03 00 00)". */
export function describeInstruction(code: Uint8Array, address: number): string {
  let text = `0x${address.toString(16)}: (no instruction)`;
  decodeLinear(code, address, (instruction) => {
    const bytes = [...code.subarray(0, instruction.length)]
      .map((b) => b.toString(16).padStart(2, "0")).join(" ");
    text = `0x${address.toString(16)}: ${format(instruction)} (${bytes})`;
    return false;
  }, 1);
  return text;
}

/**
 * How Linux's x86 uprobes handle an instruction, by its bytes: `branch_setup_xol_ops` and
 * `push_setup_xol_ops` of arch/x86/kernel/uprobes.c decide what is emulated, `is_prefix_bad`
 * and a 66 prefix on a branch make the probe fail to register. Kernels from 2025 on emulate a
 * few more (every multi-byte `nop`, `mov reg, reg`); this answers for the older rule, which they
 * keep.
 */
export function uprobeHandling(bytes: Uint8Array): UprobeHandling {
  let i = 0;
  let operandSize = false;
  let others = false;
  for (; i < bytes.length && LEGACY_PREFIXES.has(bytes[i]); i++) {
    const prefix = bytes[i];
    // ES, CS, SS, DS overrides and LOCK: is_prefix_bad() refuses the probe.
    if (BAD_PREFIXES.has(prefix)) return "rejected";
    if (prefix === 0x66) operandSize = true;
    else others = true;
  }
  let rex = 0;
  if (i < bytes.length && (bytes[i] & 0xf0) === 0x40) rex = bytes[i++];
  if (i >= bytes.length) return "single-stepped";
  const op = bytes[i];
  const isBranch = op === 0xeb || op === 0xe9 || op === 0xe8 || (op >= 0x70 && op <= 0x7f) ||
    (op === 0x0f && i + 1 < bytes.length && bytes[i + 1] >= 0x80 && bytes[i + 1] <= 0x8f);
  if (isBranch) return operandSize ? "rejected" : "emulated";
  // "prefix* + nop": the kernel reads opcode 90 as nop whatever the prefixes, but with REX.B it
  // is `xchg r8, rax`: only claim the plain forms.
  if (op === 0x90 && (rex & 1) === 0) return "emulated";
  if (op >= 0x50 && op <= 0x57 && !operandSize && !others) {
    if (rex === 0 && i === 0) return "emulated";
    if (rex === 0x41 && i === 1) return "emulated";
  }
  return "single-stepped";
}

/**
 * The last emulated instruction before `instructions[ret]` (a `ret`) that qualifies as its
 * return-value site, ignoring branches into the block (the caller checks those); undefined if a
 * branch, a write to RAX or the function's entry comes first.
 */
function returnValueSite(
  instructions: readonly DecodedInstruction[],
  ret: number,
  byAddress: ReadonlyMap<number, DecodedInstruction>,
): number | undefined {
  const end = instructions[ret].address;
  for (let index = ret - 1; index >= 0; index--) {
    const i = instructions[index];
    if (i.handling === "emulated") {
      if (i.flowControl === FlowControl.Next) return i.address;
      if (i.flowControl !== FlowControl.ConditionalBranch || i.target === undefined) {
        return undefined;
      }
      if (i.target >= i.address && i.target <= end) return undefined;
      return byAddress.get(i.target)?.isDirectCall ? i.address : undefined;
    }
    if (i.flowControl !== FlowControl.Next || i.writesRax) return undefined;
  }
  return undefined;
}

/** How far {@linkcode findEntryProbeSite} looks: a Go prologue is 3 to 6 instructions. */
const MAX_PROLOGUE_INSTRUCTIONS = 32;

const LEGACY_PREFIXES = new Set([0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3]);
const BAD_PREFIXES = new Set([0x26, 0x2e, 0x36, 0x3e, 0xf0]);
/** The System V x86-64 ABI's integer argument registers, in order. */
const C_ARGUMENT_REGISTERS = new Set([
  Register.RDI,
  Register.RSI,
  Register.RDX,
  Register.RCX,
  Register.R8,
  Register.R9,
]);
/** What a C function's bytes may hold after its last instruction (when the caller's size has it). */
const PADDING_MNEMONICS = new Set([Mnemonic.Nop, Mnemonic.Int3]);
/** Registers a prologue may change before the entry site: Go's scratch registers and RBP. */
const FREE_REGISTERS = new Set([Register.R12, Register.R13, Register.RBP]);
const WRITES = new Set([
  OpAccess.Write,
  OpAccess.CondWrite,
  OpAccess.ReadWrite,
  OpAccess.ReadCondWrite,
]);

let formatter: Formatter | undefined;
let infoFactory: InstructionInfoFactory | undefined;

/** What the C rules need of one instruction, copied out of iced's WebAssembly memory. */
interface DecodedInstruction {
  address: number;
  mnemonic: Mnemonic;
  flowControl: FlowControl;
  handling: UprobeHandling;
  /** Where a direct near `jmp`, `jcc`, `call` or `xbegin` goes. */
  target?: number;
  /** A direct near `call`. */
  isDirectCall: boolean;
  /** Whether it writes (maybe, e.g. `cmov`) any part of RAX. */
  writesRax: boolean;
  /** Whether it writes (maybe) any part of RDI, RSI, RDX, RCX, R8 or R9. */
  writesArgument: boolean;
}

/** Every instruction of `code`, loaded at `address` (see {@linkcode findReturnSites}). */
function decodeFunction(code: Uint8Array, address: number): DecodedInstruction[] {
  const instructions: DecodedInstruction[] = [];
  decodeLinear(code, address, (instruction, offset) => {
    const direct = isNearBranch(instruction.op0Kind);
    const written = writtenRegisters(instruction);
    instructions.push({
      address: Number(instruction.ip),
      mnemonic: instruction.mnemonic,
      flowControl: instruction.flowControl,
      handling: uprobeHandling(code.subarray(offset, offset + instruction.length)),
      target: direct ? Number(instruction.nearBranchTarget) : undefined,
      isDirectCall: direct && instruction.flowControl === FlowControl.Call,
      writesRax: written.has(Register.RAX),
      writesArgument: [...written].some((r) => C_ARGUMENT_REGISTERS.has(r)),
    });
    return true;
  });
  return instructions;
}

function isNearBranch(kind: OpKind): boolean {
  return kind === OpKind.NearBranch16 || kind === OpKind.NearBranch32 ||
    kind === OpKind.NearBranch64;
}

/** The full registers (RAX for AL, AX, EAX) the instruction writes or may write. */
function writtenRegisters(instruction: Instruction): Set<Register> {
  infoFactory ??= new InstructionInfoFactory();
  const info = infoFactory.info(instruction);
  const written = new Set<Register>();
  try {
    for (const used of info.usedRegisters()) {
      const register = used.register;
      const access = used.access;
      used.free();
      if (WRITES.has(access)) written.add(RegisterExt.fullRegister(register));
    }
    return written;
  } finally {
    info.free();
  }
}

function format(instruction: Instruction): string {
  if (!formatter) {
    formatter = new Formatter(FormatterSyntax.Intel);
    formatter.hexPrefix = "0x";
    formatter.hexSuffix = "";
    formatter.uppercaseHex = false;
    formatter.branchLeadingZeros = false;
    formatter.showBranchSize = false;
    formatter.spaceAfterOperandSeparator = true;
  }
  return formatter.format(instruction);
}

/** `push reg`: the bytes it pushes (its only effects are RSP and the stack slot below it). */
function pushedBytes(instruction: Instruction): number {
  if (instruction.mnemonic !== Mnemonic.Push || instruction.op0Kind !== OpKind.Register) return 0;
  return -instruction.stackPointerIncrement;
}

/** Whether the instruction writes memory or a register other than R12, R13, RBP or flags. */
function changesWhatProbesRead(instruction: Instruction): boolean {
  infoFactory ??= new InstructionInfoFactory();
  const info = infoFactory.info(instruction);
  try {
    for (const used of info.usedMemory()) {
      const access = used.access;
      used.free();
      if (WRITES.has(access)) return true;
    }
    for (const used of info.usedRegisters()) {
      const register = used.register;
      const access = used.access;
      used.free();
      if (!WRITES.has(access)) continue;
      if (!FREE_REGISTERS.has(RegisterExt.fullRegister(register))) return true;
    }
    return false;
  } finally {
    info.free();
  }
}

/**
 * Decodes `code` from its start, calling `visit` with each instruction and its offset until it
 * returns false, `limit` instructions were seen, or the code ends.
 */
function decodeLinear(
  code: Uint8Array,
  address: number,
  visit: (instruction: Instruction, offset: number) => boolean,
  limit = Infinity,
): void {
  const decoder = new Decoder(64, code, DecoderOptions.None);
  decoder.ip = BigInt(address);
  try {
    let count = 0;
    while (decoder.canDecode && count++ < limit) {
      const offset = decoder.position;
      const instruction = decoder.decode();
      try {
        if (instruction.isInvalid) {
          if (isPadding(code.subarray(offset))) return;
          const why = decoder.lastError === DecoderError.NoMoreBytes
            ? "the code ends inside it"
            : "invalid instruction";
          const bytes = [...code.subarray(offset, offset + 8)]
            .map((b) => b.toString(16).padStart(2, "0")).join(" ");
          throw new X86DecodeError(
            `Cannot decode the instruction at 0x${
              (address + offset).toString(16)
            } (${bytes}): ${why}`,
          );
        }
        if (!visit(instruction, offset)) return;
      } finally {
        instruction.free();
      }
    }
  } finally {
    decoder.free();
  }
}

function isPadding(bytes: Uint8Array): boolean {
  return bytes.every((b) => b === 0xcc || b === 0x00);
}
