/**
 * Where to put uprobes in the x86-64 machine code of a Go function: every return instruction
 * (return probes without uretprobes, which break when Go moves a goroutine's stack), and the
 * cheapest entry site that still sees the arguments as the caller passed them. Decoding is done
 * by the iced-x86 decoder (npm `iced-x86`, Rust compiled to WebAssembly).
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

/** Bytes that do not decode as x86-64 instructions where an instruction should be. */
export class X86DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "X86DecodeError";
  }
}

/** An entry uprobe site: see the module documentation for the rule that picks it. */
export interface EntryProbeSite {
  /** Virtual address of the instruction to probe. */
  address: number;
  /** The instruction there, in Intel syntax ("jbe 0x64c063"). */
  instruction: string;
  /** Whether the kernel emulates it (a cheap probe) rather than single-stepping it. */
  emulated: boolean;
  /** Bytes pushed between the entry and the site: RSP at the site is RSP at entry minus this. */
  stackDelta: number;
}

/** How Linux's x86 uprobes handle the instruction `bytes` start with. */
export type UprobeHandling = "emulated" | "single-stepped" | "rejected";

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

/** How far {@linkcode findEntryProbeSite} looks: a Go prologue is 3 to 6 instructions. */
const MAX_PROLOGUE_INSTRUCTIONS = 32;

const LEGACY_PREFIXES = new Set([0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x66, 0x67, 0xf0, 0xf2, 0xf3]);
const BAD_PREFIXES = new Set([0x26, 0x2e, 0x36, 0x3e, 0xf0]);
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
