/**
 * The function table of a Go executable, read from its pclntab: the table the Go runtime itself
 * uses for tracebacks, so it is there even in stripped binaries (`-ldflags "-s -w"`, as most Go
 * programs ship). It gives the entry address of every Go function by name, which is what a
 * uprobe on `net/http.serverHandler.ServeHTTP` needs when `.symtab` is gone.
 *
 * Layout, read from the Go sources (runtime/symtab.go `pcHeader`, `moduledata`, `functab`,
 * `_func`; cmd/link/internal/ld/pcln.go `generatePCHeader`, `writePCToFunc`, `writeFuncs`):
 *
 * ```
 * pcHeader   magic u32, 0, 0, minLC u8, ptrSize u8, nfunc int, nfiles uint,
 *            textStart uintptr (Go 1.18-1.25; always 0 since Go 1.26),
 *            funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset uintptr
 *            (offsets from the pcHeader)
 * functab    at pclnOffset: nfunc x {entryoff u32, funcoff u32}, then the end offset u32;
 *            entryoff is relative to runtime.text, funcoff to the functab's start
 * _func      at functab + funcoff: entryoff u32, nameoff i32 (into funcnametab), ...
 * ```
 *
 * Magic 0xfffffff0 is Go 1.18-1.19, 0xfffffff1 Go 1.20 and later (internal/abi/symtab.go); the
 * fields read here are the same in both. Go 1.26 stopped storing `textStart` (the header field
 * is written as 0, "unused", so that `.gopclntab` needs no relocation; the runtime uses
 * `moduledata.text`), without changing the magic. So for a table whose `textStart` is 0 this
 * module finds runtime.text the way the runtime does: from `runtime.firstmoduledata`, whose first
 * word points at the pcHeader (`.go.module` since Go 1.26, `.noptrdata` before); then from the
 * `runtime.text` symbol; then from the `.text` section's address (right for internally linked
 * programs, where runtime.text is the first byte of `.text`).
 *
 * Older tables (Go 1.2-1.17: magics 0xfffffffb, 0xfffffffa) use pointer-sized entries and are
 * refused as "unsupported", as is a magic newer than 0xfffffff1 (its layout is unknown).
 *
 * @module
 */
import { type ElfFile, type ElfProgramHeader, type ElfSection, PF, PT } from "./elf.ts";
import { symbolsOf, u64, viewOf, writableSegments } from "./go_elf.ts";
import { ReasonError } from "./reason_error.ts";

/** Why no function table could be read. */
export type GoPclntabErrorReason =
  /** No pclntab: not a Go program (or one whose pclntab was removed). */
  | "not_go"
  /**
   * A pclntab this reader does not handle: of Go before 1.18, of a Go newer than it knows (a
   * new magic), or not for x86-64. The message says which.
   */
  | "unsupported"
  /** A pclntab whose header or offsets do not hold together. */
  | "malformed";

/** No readable Go function table. */
export class GoPclntabError extends ReasonError<GoPclntabErrorReason> {}

/** One Go function: [entry, end) in virtual addresses. */
export interface GoFunction {
  name: string;
  entry: number;
  /** The next function's entry, or the end of the table for the last one. */
  end: number;
}

/**
 * Which pclntab layout a table has. "go1.26" is "go1.20" (same magic) whose header has no
 * `textStart` any more.
 */
export type GoPclntabLayout = "go1.18" | "go1.20" | "go1.26";

/** Where the base of the function entry offsets (runtime.text) came from. */
export type GoTextStartSource = "pcHeader" | "moduledata" | "symtab" | "section";

export const GO118_MAGIC = 0xfffffff0;
export const GO120_MAGIC = 0xfffffff1;
const OLD_MAGICS = new Map([[0xfffffffb, "Go 1.2-1.15"], [0xfffffffa, "Go 1.16-1.17"]]);

const PTR_SIZE = 8;
/** pcHeader: 8 bytes of magic etc., then 8 pointer-sized words. */
const HEADER_SIZE = 8 + 8 * PTR_SIZE;
/** moduledata: pcHeader pointer, six slices (funcnametab ... ftab), findfunctab, minpc, maxpc. */
const MODULEDATA_TEXT_OFFSET = PTR_SIZE + 6 * 3 * PTR_SIZE + 3 * PTR_SIZE;

const utf8 = new TextDecoder();
const utf8Encoder = new TextEncoder();

/**
 * Reads the function table of a Go executable. Throws {@link GoPclntabError} (and nothing else)
 * when `elf` is not a Go program or its table cannot be read.
 */
export function readGoFunctions(elf: ElfFile): GoFunctionTable {
  const located = locatePclntab(elf);
  const header = parseHeader(located.bytes);
  const text = header.textStart !== 0
    ? { textStart: header.textStart, source: "pcHeader" as const }
    : findTextStart(elf, located.address, header);
  const layout: GoPclntabLayout = header.magic === GO118_MAGIC
    ? "go1.18"
    : header.textStart !== 0
    ? "go1.20"
    : "go1.26";
  return new GoFunctionTable(
    located.bytes,
    located.address,
    header,
    layout,
    text.textStart,
    text.source,
  );
}

interface Located {
  bytes: Uint8Array;
  address: number;
}

/**
 * The section when the section headers say where the table is (`.gopclntab`; in PIE built by
 * Go before 1.26, `.data.rel.ro.gopclntab`, as it needed relocating); else a segment scan.
 */
function locatePclntab(elf: ElfFile): Located {
  const section = elf.section(".gopclntab") ?? elf.section(".data.rel.ro.gopclntab");
  if (section !== undefined) {
    return { bytes: elf.sectionBytes(section), address: section.addr };
  }
  // Without section headers (or with .gopclntab renamed), the table is in a read-only PT_LOAD
  // segment: rodata for internally linked programs, relro for PIE and external linking.
  for (const segment of elf.programHeaders) {
    if (segment.type !== PT.load || (segment.flags & PF.x) !== 0) continue;
    const found = scanSegmentForHeader(elf, segment);
    if (found !== undefined) return found;
  }
  throw new GoPclntabError("not_go", "Not a Go program: no .gopclntab and no pclntab header");
}

/**
 * The first pointer-aligned pcHeader in a segment whose fields make sense. The magic alone
 * (4 bytes) could occur by chance; the 4 bytes after it (0, 0, minLC 1, ptrSize 8) and the
 * header's offsets fitting in the segment make a false match very unlikely.
 */
function scanSegmentForHeader(elf: ElfFile, segment: ElfProgramHeader): Located | undefined {
  const bytes = elf.segmentBytes(segment);
  // x86-64 pclntab tail: 00 00 01 08 (pads, minLC = 1, ptrSize = 8).
  const tail = [0x00, 0x00, 0x01, 0x08];
  for (let i = bytes.indexOf(0xff, 3); i >= 0; i = bytes.indexOf(0xff, i + 1)) {
    const start = i - 3; // The magic's high byte 0xff is its 4th byte (little endian).
    if (start % PTR_SIZE !== 0 || start + HEADER_SIZE > bytes.length) continue;
    const magic = bytes[start] | bytes[start + 1] << 8 | bytes[start + 2] << 16;
    if ((magic !== 0xfffff0 && magic !== 0xfffff1) || bytes[start + 3] !== 0xff) continue;
    if (tail.some((b, k) => bytes[start + 4 + k] !== b)) continue;
    const candidate = bytes.subarray(start);
    try {
      parseHeader(candidate);
      return { bytes: candidate, address: segment.vaddr + start };
    } catch (e) {
      if (!(e instanceof GoPclntabError)) throw e;
    }
  }
  return undefined;
}

interface Header {
  magic: number;
  nfunc: number;
  textStart: number;
  funcnameOffset: number;
  pclnOffset: number;
}

/** Reads and checks the pcHeader at the start of `bytes`. */
function parseHeader(bytes: Uint8Array): Header {
  if (bytes.length < HEADER_SIZE) {
    throw new GoPclntabError(
      "malformed",
      `pclntab is ${bytes.length} bytes, shorter than a header`,
    );
  }
  const view = viewOf(bytes);
  const magic = view.getUint32(0, true);
  const old = OLD_MAGICS.get(magic);
  if (old !== undefined) {
    throw new GoPclntabError("unsupported", `pclntab of ${old} is not supported (Go 1.18+ only)`);
  }
  if (magic !== GO118_MAGIC && magic !== GO120_MAGIC) {
    // Go has numbered its magics down from 0xfffffffb; another 0xfffffffX is a Go version
    // this reader does not know yet (newer than it), anything else is not a pclntab.
    const goLike = magic >>> 4 === 0xfffffff;
    throw new GoPclntabError(
      goLike ? "unsupported" : "malformed",
      goLike
        ? `Unknown pclntab version (magic 0x${magic.toString(16)}): newer than Go 1.20's 0xfffffff1`
        : `Not a Go pclntab (magic 0x${magic.toString(16)})`,
    );
  }
  if (bytes[4] !== 0 || bytes[5] !== 0 || bytes[6] !== 1 || bytes[7] !== PTR_SIZE) {
    throw new GoPclntabError(
      "unsupported",
      `pclntab for minLC ${bytes[6]} and pointer size ${bytes[7]}: only x86-64 (1, 8)`,
    );
  }
  const word = (i: number) => u64(view, 8 + i * PTR_SIZE);
  const header = {
    magic,
    nfunc: word(0),
    textStart: word(2),
    funcnameOffset: word(3),
    pclnOffset: word(7),
  };
  // functab: nfunc pairs of u32 and the end offset.
  const functabEnd = header.pclnOffset + (header.nfunc * 2 + 1) * 4;
  if (
    header.funcnameOffset < HEADER_SIZE || header.funcnameOffset > bytes.length ||
    header.pclnOffset < HEADER_SIZE || functabEnd > bytes.length || header.nfunc === 0
  ) {
    throw new GoPclntabError(
      "malformed",
      `pclntab header out of range: ${header.nfunc} functions, names at ` +
        `${header.funcnameOffset}, functab at ${header.pclnOffset}, table is ${bytes.length} bytes`,
    );
  }
  return header;
}

/**
 * runtime.text for a table that does not record it (Go 1.26+): `moduledata.text`, else the
 * `runtime.text` symbol, else the `.text` section's address.
 */
function findTextStart(
  elf: ElfFile,
  pcHeaderAddress: number,
  header: Header,
): { textStart: number; source: GoTextStartSource } {
  const fromModuledata = moduledataText(elf, pcHeaderAddress, header);
  if (fromModuledata !== undefined) return { textStart: fromModuledata, source: "moduledata" };
  const symbol = symbolsOf(elf).find((s) => s.name === "runtime.text");
  if (symbol !== undefined) return { textStart: symbol.value, source: "symtab" };
  const text = elf.section(".text");
  if (text !== undefined) return { textStart: text.addr, source: "section" };
  throw new GoPclntabError(
    "malformed",
    "Cannot find runtime.text: the pclntab has no textStart, and there is no moduledata, " +
      "runtime.text symbol or .text section",
  );
}

/**
 * `moduledata.text` of the moduledata that points at this pcHeader. The moduledata starts with
 * `pcHeader *pcHeader` then `funcnametab []byte` whose data pointer is pcHeader +
 * funcnameOffset: two words that identify it. Searched where the linker puts it: `.go.module`
 * (Go 1.26+), `.noptrdata`, `.data`, or the writable segments when there are no sections.
 */
function moduledataText(
  elf: ElfFile,
  pcHeaderAddress: number,
  header: Header,
): number | undefined {
  const regions = moduledataRegions(elf);
  for (const region of regions) {
    const view = viewOf(region);
    for (let at = 0; at + MODULEDATA_TEXT_OFFSET + PTR_SIZE <= region.length; at += PTR_SIZE) {
      if (view.getUint32(at, true) !== pcHeaderAddress % 2 ** 32) continue;
      if (u64(view, at) !== pcHeaderAddress) continue;
      if (u64(view, at + PTR_SIZE) !== pcHeaderAddress + header.funcnameOffset) continue;
      const text = u64(view, at + MODULEDATA_TEXT_OFFSET);
      if (isExecutable(elf, text)) return text;
    }
  }
  return undefined;
}

function moduledataRegions(elf: ElfFile): Uint8Array[] {
  const named = [".go.module", ".noptrdata", ".data"]
    .map((name) => elf.section(name))
    .filter((s): s is ElfSection => s !== undefined)
    .map((s) => elf.sectionBytes(s));
  return elf.sections.length > 0 ? named : writableSegments(elf);
}

function isExecutable(elf: ElfFile, vaddr: number): boolean {
  return elf.programHeaders.some((p) =>
    p.type === PT.load && (p.flags & PF.x) !== 0 && vaddr >= p.vaddr && vaddr < p.vaddr + p.memsz
  );
}

/**
 * The Go functions of one executable. Exported as a type only: {@link readGoFunctions} makes
 * them (the constructor checks, once, every offset the accessors follow).
 */
class GoFunctionTable {
  readonly layout: GoPclntabLayout;
  /** The pcHeader magic (0xfffffff0 or 0xfffffff1). */
  readonly magic: number;
  /** Virtual address of the pcHeader (the start of `.gopclntab`). */
  readonly address: number;
  /** runtime.text: the address function entry offsets are relative to. */
  readonly textStart: number;
  readonly textStartSource: GoTextStartSource;
  /** Number of functions. */
  readonly size: number;

  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #functab: number;
  readonly #names: number;

  constructor(
    bytes: Uint8Array,
    address: number,
    header: Header,
    layout: GoPclntabLayout,
    textStart: number,
    textStartSource: GoTextStartSource,
  ) {
    this.#bytes = bytes;
    this.#view = viewOf(bytes);
    this.#functab = header.pclnOffset;
    this.#names = header.funcnameOffset;
    this.layout = layout;
    this.magic = header.magic;
    this.address = address;
    this.textStart = textStart;
    this.textStartSource = textStartSource;
    this.size = header.nfunc;
    this.#validate();
  }

  /**
   * The function called `name` (as in a traceback: `net/http.(*conn).serve`), or undefined.
   * A name can occur twice (an assembly function's ABI0 body and its ABIInternal wrapper):
   * the lower address wins.
   */
  lookup(name: string): GoFunction | undefined {
    const i = this.#indexOf(utf8Encoder.encode(name));
    return i === undefined ? undefined : this.#function(i, name);
  }

  /** The function whose [entry, end) holds `pc`, or undefined. */
  at(pc: number): GoFunction | undefined {
    const off = pc - this.textStart;
    if (off < this.#entryOff(0) || off >= this.#entryOff(this.size)) return undefined;
    // Binary search for the last entry <= off.
    let lo = 0, hi = this.size - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.#entryOff(mid) <= off) lo = mid;
      else hi = mid - 1;
    }
    return this.#function(lo, this.#name(lo));
  }

  /** Every function, in address order. */
  *all(): IterableIterator<GoFunction> {
    for (let i = 0; i < this.size; i++) yield this.#function(i, this.#name(i));
  }

  #function(i: number, name: string): GoFunction {
    return {
      name,
      entry: this.textStart + this.#entryOff(i),
      end: this.textStart + this.#entryOff(i + 1),
    };
  }

  /** Entry offset of function i; i = size gives the end of the last function. */
  #entryOff(i: number): number {
    return this.#view.getUint32(this.#functab + i * 8, true);
  }

  /** Offset in the table of function i's NUL-terminated name. */
  #nameOffset(i: number): number {
    const func = this.#functab + this.#view.getUint32(this.#functab + i * 8 + 4, true);
    return this.#names + this.#view.getInt32(func + 4, true);
  }

  #name(i: number): string {
    const start = this.#nameOffset(i);
    return utf8.decode(this.#bytes.subarray(start, this.#bytes.indexOf(0, start)));
  }

  /**
   * The first function whose name is `wanted`, comparing bytes in place: a scan costs about
   * 1 ms for 60k functions, where decoding every name into a Map costs 40-60 ms and memory,
   * for the handful of names a plugin asks for.
   */
  #indexOf(wanted: Uint8Array): number | undefined {
    const bytes = this.#bytes;
    const length = wanted.length;
    next: for (let i = 0; i < this.size; i++) {
      const start = this.#nameOffset(i);
      // Same length: the name's NUL right after `length` bytes (past the end reads undefined).
      if (bytes[start + length] !== 0) continue;
      for (let k = 0; k < length; k++) if (bytes[start + k] !== wanted[k]) continue next;
      return i;
    }
    return undefined;
  }

  /**
   * Checks once, up front, every offset the accessors follow, so that they can read without
   * checks and never fail: entries sorted, each `_func` and name inside the table.
   */
  #validate(): void {
    const bytes = this.#bytes;
    let previous = 0;
    for (let i = 0; i <= this.size; i++) {
      const entry = this.#entryOff(i);
      if (entry < previous) this.#malformed(`function ${i} entry is before function ${i - 1}'s`);
      previous = entry;
      if (i === this.size) break;
      const func = this.#functab + this.#view.getUint32(this.#functab + i * 8 + 4, true);
      if (func + 8 > bytes.length) this.#malformed(`function ${i} is beyond the table`);
      if (this.#view.getUint32(func, true) !== entry) {
        this.#malformed(`function ${i}'s entry does not match its functab entry`);
      }
      const name = this.#nameOffset(i);
      if (name < this.#names || name >= bytes.length || bytes.indexOf(0, name) < 0) {
        this.#malformed(`function ${i}'s name is beyond the table`);
      }
    }
  }

  #malformed(message: string): never {
    throw new GoPclntabError("malformed", `Malformed pclntab: ${message}`);
  }
}

export type { GoFunctionTable };
