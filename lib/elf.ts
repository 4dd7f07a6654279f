/**
 * A reader for 64-bit little-endian x86-64 ELF files (the executables whose functions the agent
 * attaches uprobes to): headers, sections, segments and symbol tables, over the bytes of the whole
 * file. Pure: bytes in, values out.
 *
 * It is meant for large binaries (a Go server is often 50-150 MB): parsing reads the ELF header
 * and the two header tables and nothing else; section contents are `subarray` views, never
 * copies; symbol tables are decoded only when asked for, once. Every offset and size is checked
 * against the buffer when it is read, so corrupt or truncated input fails with an {@link ElfError}
 * and never with a RangeError or a wrong answer read past a table's end.
 *
 * Format: the System V ABI, "ELF-64 Object File Format" (ELF header, section header table,
 * program header table, `Elf64_Sym`), and its extended numbering (`e_shnum` = 0, `SHN_XINDEX`).
 * Addresses and offsets are JS numbers: user-space x86-64 addresses are below 2^47 and files are
 * far below 2^53 bytes.
 *
 * The same reader serves lib/btf.ts, which reads the sections of BPF objects (EM_BPF, and
 * big-endian for a big-endian target): {@link ElfParseOptions} lets a caller accept those.
 *
 * @example
 * ```ts
 * const elf = ElfFile.parse(Deno.readFileSync("/usr/sbin/nginx"));
 * const main = elf.dynamicSymbols().find((s) => s.name === "ngx_http_process_request");
 * ```
 *
 * @module
 */
import { ReasonError } from "./reason_error.ts";

/** Why an ELF input was refused. */
export type ElfErrorReason =
  /** Not an ELF file at all (wrong magic). */
  | "not_elf"
  /** Something points outside the bytes it should be in: a short file or a corrupt header. */
  | "truncated"
  /**
   * A valid ELF this reader does not handle: 32-bit, odd entry sizes; big-endian or not x86-64
   * unless {@link ElfParseOptions} accept those.
   */
  | "unsupported";

/** A malformed, truncated or unsupported ELF input. */
export class ElfError extends ReasonError<ElfErrorReason> {}

/** What {@link ElfFile.parse} accepts beyond x86-64 little-endian executables. */
export interface ElfParseOptions {
  /**
   * Any `e_machine`, not only x86-64: for files of which only the sections are read, such as
   * BPF objects (EM_BPF, 247). Segments and symbols read the same for every machine.
   */
  anyMachine?: boolean;
  /** Big-endian files too (a BPF object built for a big-endian target); default: refused. */
  bigEndian?: boolean;
}

/** `sh_type` values this module and its users care about. */
export const SHT = {
  null: 0,
  progbits: 1,
  symtab: 2,
  strtab: 3,
  nobits: 8,
  dynsym: 11,
} as const;

/** `sh_flags` bits. */
export const SHF = {
  write: 0x1,
  alloc: 0x2,
  execinstr: 0x4,
  /** The section holds an `Elf64_Chdr` and compressed data (usually `.debug_*`). */
  compressed: 0x800,
} as const;

/** `p_type` values. */
export const PT = { load: 1, dynamic: 2, interp: 3, note: 4, phdr: 6, tls: 7 } as const;

/** `p_flags` bits. */
export const PF = { x: 1, w: 2, r: 4 } as const;

/** `e_type` values. */
export const ET = { rel: 1, exec: 2, dyn: 3, core: 4 } as const;

/** `STT_*`: the low nibble of `st_info`. */
export const STT = { notype: 0, object: 1, func: 2, section: 3, file: 4, tls: 6 } as const;

/** `STB_*`: the high nibble of `st_info`. */
export const STB = { local: 0, global: 1, weak: 2 } as const;

/** `e_machine` of x86-64. */
export const EM_X86_64 = 62;

/** One entry of the section header table. */
export interface ElfSection {
  /** Its index in the section header table (what `st_shndx` and `sh_link` refer to). */
  index: number;
  name: string;
  /** `sh_type`, see {@link SHT}. */
  type: number;
  /** `sh_flags`, see {@link SHF}. */
  flags: number;
  /** Virtual address when loaded; 0 for sections that are not loaded. */
  addr: number;
  offset: number;
  /** Size in the file (for SHT_NOBITS, in memory only). */
  size: number;
  link: number;
  info: number;
  entsize: number;
  addralign: number;
  /** `SHF_COMPRESSED`: the bytes are an `Elf64_Chdr` then compressed data, not decompressed here. */
  compressed: boolean;
}

/** One entry of the program header table. */
export interface ElfProgramHeader {
  /** `p_type`, see {@link PT}. */
  type: number;
  /** `p_flags`, see {@link PF}. */
  flags: number;
  offset: number;
  vaddr: number;
  filesz: number;
  memsz: number;
}

/** One `Elf64_Sym`. */
export interface ElfSymbol {
  name: string;
  value: number;
  size: number;
  /** `STT_*`, see {@link STT}. */
  type: number;
  /** `STB_*`, see {@link STB}. */
  bind: number;
  /** Index of the section it is defined in; 0 (SHN_UNDEF) when undefined, >= 0xff00 special. */
  shndx: number;
}

const ELF_HEADER_SIZE = 64;
const SECTION_HEADER_SIZE = 64;
const PROGRAM_HEADER_SIZE = 56;
const SYMBOL_SIZE = 24;
const SHN_XINDEX = 0xffff;
const MAGIC = [0x7f, 0x45, 0x4c, 0x46]; // "\x7fELF"

const utf8 = new TextDecoder();

/** A parsed ELF-64 little-endian x86-64 file. Holds (does not copy) the bytes it was given. */
/**
 * Reads `into.length` bytes of a file at `offset` (all of them: a short read is an error). What
 * {@link ElfFile.open} loads sections with, on demand.
 */
export type RangeReader = (offset: number, into: Uint8Array) => void;

/** Loading granularity of an opened file: what one miss reads. */
const PAGE = 64 << 10;

export class ElfFile {
  readonly #bytes: Uint8Array;
  /** Opened files: which PAGEs of #bytes hold the file's bytes (parsed ones: undefined). */
  readonly #loaded: Uint8Array | undefined;
  readonly #read: RangeReader | undefined;
  /** `e_machine`: {@link EM_X86_64} unless parsed with `anyMachine`. */
  readonly machine: number;
  /** `EI_DATA`: true unless parsed with `bigEndian` and the file is big-endian. */
  readonly littleEndian: boolean;
  /** `e_type`, see {@link ET} (EXEC for a non-PIE executable, DYN for PIE and libraries). */
  readonly type: number;
  /** `e_entry`. */
  readonly entry: number;
  /** The section header table, in file order; empty when the file has none. */
  readonly sections: readonly ElfSection[];
  readonly programHeaders: readonly ElfProgramHeader[];

  readonly #view: DataView;
  readonly #byName = new Map<string, ElfSection>();
  readonly #symbolCache = new Map<string, readonly ElfSymbol[]>();

  private constructor(bytes: Uint8Array, options: ElfParseOptions, read?: RangeReader) {
    this.#bytes = bytes;
    this.#read = read;
    this.#loaded = read ? new Uint8Array(Math.ceil(bytes.length / PAGE)) : undefined;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#ensure(0, Math.min(bytes.length, ELF_HEADER_SIZE));
    this.littleEndian = checkIdent(bytes, options);
    this.type = this.#u16(0x10);
    this.machine = this.#u16(0x12);
    if (this.machine !== EM_X86_64 && !options.anyMachine) {
      throw new ElfError("unsupported", `Unsupported ELF machine ${this.machine}: only x86-64`);
    }
    this.entry = this.#u64(0x18, "e_entry");
    this.programHeaders = this.#readProgramHeaders();
    this.sections = this.#readSections();
    // First wins: a duplicate name (legal, rare) resolves to the earlier section, like readelf.
    for (const s of this.sections) if (!this.#byName.has(s.name)) this.#byName.set(s.name, s);
  }

  /**
   * Parses the ELF header and the section and program header tables. Throws {@link ElfError}
   * (and nothing else) when the bytes are not a readable x86-64 ELF-64 little-endian file (or,
   * with `options`, of another machine or byte order).
   */
  static parse(bytes: Uint8Array, options: ElfParseOptions = {}): ElfFile {
    return new ElfFile(bytes, options);
  }

  /**
   * Like {@link parse}, for a file of `size` bytes read through `read` only where it is looked
   * at: the headers, then the sections, segments and symbols asked for. A 100 MB executable of
   * which the analysis needs a symbol table and a few functions costs a few MB, not 100: the
   * rest of the buffer is never touched, so it takes no memory.
   */
  static lazy(size: number, read: RangeReader, options: ElfParseOptions = {}): ElfFile {
    return new ElfFile(new Uint8Array(size), options, read);
  }

  /**
   * {@link lazy} over the file at `path` (each miss opens and reads it). Throws
   * Deno.errors.NotFound / PermissionDenied when it cannot be read, and {@link ElfError}.
   */
  static open(path: string, options: ElfParseOptions = {}): ElfFile {
    const size = Deno.statSync(path).size;
    return ElfFile.lazy(size, (offset, into) => {
      using file = Deno.openSync(path);
      file.seekSync(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < into.length) {
        const n = file.readSync(into.subarray(done));
        if (n === null || n === 0) {
          throw new ElfError("truncated", `${path} ended at ${offset + done} while reading`);
        }
        done += n;
      }
    }, options);
  }

  /**
   * Frees the memory of an opened file now rather than at the garbage collector's leisure
   * (which may be long: V8 sees a small heap). The file must not be used afterwards; views
   * taken from it read as empty. A parsed file's bytes are the caller's and stay.
   */
  release(): void {
    // An opened file's buffer is ours (an ArrayBuffer made in lazy()).
    if (this.#read) (this.#bytes.buffer as ArrayBuffer).transfer(0);
  }

  /** The whole file (an opened file is read entirely first: prefer the methods below). */
  get bytes(): Uint8Array {
    this.#ensure(0, this.#bytes.length);
    return this.#bytes;
  }

  /** Makes [offset, offset + length) of an opened file present in #bytes. */
  #ensure(offset: number, length: number): void {
    const loaded = this.#loaded;
    if (!loaded || length <= 0) return;
    const end = Math.min(offset + length, this.#bytes.length);
    let page = Math.floor(offset / PAGE);
    const last = Math.floor((end - 1) / PAGE);
    while (page <= last) {
      if (loaded[page]) {
        page++;
        continue;
      }
      // One read for each run of missing pages.
      let runEnd = page;
      while (runEnd + 1 <= last && !loaded[runEnd + 1]) runEnd++;
      const from = page * PAGE;
      const to = Math.min((runEnd + 1) * PAGE, this.#bytes.length);
      this.#read!(from, this.#bytes.subarray(from, to));
      loaded.fill(1, page, runEnd + 1);
      page = runEnd + 1;
    }
  }

  /** The first section called `name`, or undefined. */
  section(name: string): ElfSection | undefined {
    return this.#byName.get(name);
  }

  /**
   * The section's bytes in the file: a view, not a copy. Empty for SHT_NOBITS (`.bss`). For a
   * compressed section (`section.compressed`) these are the raw, still compressed bytes.
   */
  sectionBytes(section: ElfSection): Uint8Array {
    if (section.type === SHT.nobits) return this.#bytes.subarray(0, 0);
    // Checked when the table was read; the bounds hold.
    this.#ensure(section.offset, section.size);
    return this.#bytes.subarray(section.offset, section.offset + section.size);
  }

  /**
   * A segment's bytes in the file (`filesz` of them from `offset`): a view, not a copy. The
   * ranges of PT_LOAD segments are checked by {@link parse}; others are cut at the end of file.
   */
  segmentBytes(segment: ElfProgramHeader): Uint8Array {
    this.#ensure(segment.offset, segment.filesz);
    return this.#bytes.subarray(segment.offset, segment.offset + segment.filesz);
  }

  /**
   * Visits a section's bytes in pieces of at most `chunk` bytes, each overlapping the previous
   * one by `overlap` bytes (so a match up to that long is never cut): for scanning a large
   * section of an opened file without keeping it in memory (parsed files pass views). `visit`
   * returns a value to stop with it, and must not keep `bytes`: the next piece overwrites them.
   */
  scanSection<T>(
    section: ElfSection,
    visit: (bytes: Uint8Array) => T | undefined,
    chunk = 1 << 20,
    overlap = 256,
  ): T | undefined {
    if (section.type === SHT.nobits || section.size === 0) return undefined;
    if (!this.#read) return visit(this.sectionBytes(section));
    const step = Math.max(chunk - overlap, 1);
    // One buffer for every piece: node's .rodata is ~15 pieces, which would otherwise all be
    // garbage (and resident) until V8 next collects.
    const buffer = new Uint8Array(Math.min(chunk, section.size));
    for (let at = 0; at < section.size; at += step) {
      const length = Math.min(chunk, section.size - at);
      const piece = buffer.subarray(0, length);
      this.#read(section.offset + at, piece);
      const found = visit(piece);
      if (found !== undefined) return found;
      if (at + length >= section.size) break;
    }
    return undefined;
  }

  /** The symbols of `.symtab`; empty when the file is stripped. Decoded once, then cached. */
  symbols(): readonly ElfSymbol[] {
    return this.#symbolTable(SHT.symtab);
  }

  /** The symbols of `.dynsym` (what the dynamic linker sees); empty when there is none. */
  dynamicSymbols(): readonly ElfSymbol[] {
    return this.#symbolTable(SHT.dynsym);
  }

  /**
   * The symbols of `.dynsym` (or `.symtab`) with one of these names, in table order: the few
   * symbols an analysis looks for in a large table without a string and an object for every
   * symbol (node's .dynsym has ~75k: decoding them all costs ~35 MB and ~80 ms, this a
   * fraction). Same errors as {@linkcode dynamicSymbols} for a malformed table.
   */
  findSymbols(names: Iterable<string>, table: "dynsym" | "symtab" = "dynsym"): ElfSymbol[] {
    const type = table === "dynsym" ? SHT.dynsym : SHT.symtab;
    const wanted = new Set(names);
    const cached = this.#symbolCache.get(String(type));
    // The empty name is no symbol's: never found (the table's first entry is the null symbol).
    if (cached) return cached.filter((s) => s.name !== "" && wanted.has(s.name));
    const section = this.sections.find((s) => s.type === type);
    if (section === undefined) return [];
    // The wanted names' bytes, by their first byte: most symbols are passed over on one compare.
    const byFirstByte = new Map<number, { name: string; bytes: Uint8Array }[]>();
    for (const name of wanted) {
      const bytes = new TextEncoder().encode(name);
      if (bytes.length === 0) continue;
      const list = byFirstByte.get(bytes[0]) ?? [];
      list.push({ name, bytes });
      byFirstByte.set(bytes[0], list);
    }
    const { entsize, count, strings } = this.#symbolTableLayout(section);
    const found: ElfSymbol[] = [];
    for (let i = 0; i < count; i++) {
      const at = section.offset + i * entsize;
      const nameAt = this.#u32(at);
      if (nameAt >= strings.length) {
        cString(strings, nameAt, `${section.name} symbol ${i} name`); // throws, as decoding does
        continue;
      }
      const candidates = byFirstByte.get(strings[nameAt]);
      const match = candidates?.find(({ bytes }) =>
        strings[nameAt + bytes.length] === 0 &&
        bytes.every((b, k) => strings[nameAt + k] === b)
      );
      if (match) found.push(this.#symbolAt(at, match.name));
    }
    return found;
  }

  /**
   * The file offset the virtual address `vaddr` is loaded from, through the PT_LOAD segments;
   * undefined when no segment maps it from the file (unmapped, or in `.bss`).
   */
  fileOffsetOf(vaddr: number): number | undefined {
    const segment = this.#loadSegmentOf(vaddr);
    return segment === undefined ? undefined : segment.offset + (vaddr - segment.vaddr);
  }

  /**
   * The `length` file bytes loaded at `vaddr` (a view); undefined unless one PT_LOAD segment
   * maps the whole range from the file.
   */
  bytesAt(vaddr: number, length: number): Uint8Array | undefined {
    if (!(length >= 0)) return undefined;
    const segment = this.#loadSegmentOf(vaddr);
    if (segment === undefined || vaddr + length > segment.vaddr + segment.filesz) return undefined;
    const start = segment.offset + (vaddr - segment.vaddr);
    this.#ensure(start, length);
    return this.#bytes.subarray(start, start + length);
  }

  #loadSegmentOf(vaddr: number): ElfProgramHeader | undefined {
    for (const p of this.programHeaders) {
      if (p.type === PT.load && vaddr >= p.vaddr && vaddr < p.vaddr + p.filesz) return p;
    }
    return undefined;
  }

  #readProgramHeaders(): ElfProgramHeader[] {
    const phoff = this.#u64(0x20, "e_phoff");
    const phentsize = this.#u16(0x36);
    const phnum = this.#u16(0x38);
    if (phnum === 0) return [];
    if (phentsize < PROGRAM_HEADER_SIZE) {
      throw new ElfError("unsupported", `Unsupported ELF e_phentsize ${phentsize}`);
    }
    this.#checkRange(phoff, phnum * phentsize, "program header table");
    this.#ensure(phoff, phnum * phentsize);
    const headers: ElfProgramHeader[] = [];
    for (let i = 0; i < phnum; i++) {
      const at = phoff + i * phentsize;
      const header = {
        type: this.#u32(at),
        flags: this.#u32(at + 4),
        offset: this.#u64(at + 8, "p_offset"),
        vaddr: this.#u64(at + 16, "p_vaddr"),
        filesz: this.#u64(at + 32, "p_filesz"),
        memsz: this.#u64(at + 40, "p_memsz"),
      };
      // A loaded segment's file bytes must be in the file, or bytesAt() would read past the end.
      if (header.type === PT.load) {
        this.#checkRange(header.offset, header.filesz, `PT_LOAD segment ${i}`);
      }
      headers.push(header);
    }
    return headers;
  }

  #readSections(): ElfSection[] {
    const shoff = this.#u64(0x28, "e_shoff");
    const shentsize = this.#u16(0x3a);
    let shnum = this.#u16(0x3c);
    let shstrndx = this.#u16(0x3e);
    if (shoff === 0) return []; // No section header table: legal for executables.
    if (shentsize < SECTION_HEADER_SIZE) {
      throw new ElfError("unsupported", `Unsupported ELF e_shentsize ${shentsize}`);
    }
    const at = (i: number) => shoff + i * shentsize;
    this.#checkRange(shoff, SECTION_HEADER_SIZE, "section header 0");
    this.#ensure(shoff, SECTION_HEADER_SIZE);
    // Extended numbering: with 0xff00 sections or more, the real count is section 0's sh_size
    // and the real name-table index its sh_link.
    if (shnum === 0) shnum = this.#u64(at(0) + 32, "section count");
    if (shstrndx === SHN_XINDEX) shstrndx = this.#u32(at(0) + 40);
    this.#checkRange(shoff, shnum * shentsize, "section header table");
    this.#ensure(shoff, shnum * shentsize);

    const raw = Array.from({ length: shnum }, (_, i) => this.#readSectionHeader(i, at(i)));
    const names = raw[shstrndx];
    if (names === undefined || names.type === SHT.nobits) {
      throw new ElfError("truncated", `ELF e_shstrndx ${shstrndx} is not a section`);
    }
    this.#ensure(names.offset, names.size);
    const nameTable = this.#bytes.subarray(names.offset, names.offset + names.size);
    return raw.map((s) => ({ ...s, name: cString(nameTable, s.nameOffset, "section name") }));
  }

  #readSectionHeader(index: number, at: number) {
    const section = {
      index,
      nameOffset: this.#u32(at),
      type: this.#u32(at + 4),
      flags: this.#u64(at + 8, "sh_flags"),
      addr: this.#u64(at + 16, "sh_addr"),
      offset: this.#u64(at + 24, "sh_offset"),
      size: this.#u64(at + 32, "sh_size"),
      link: this.#u32(at + 40),
      info: this.#u32(at + 44),
      addralign: this.#u64(at + 48, "sh_addralign"),
      entsize: this.#u64(at + 56, "sh_entsize"),
      compressed: false,
    };
    section.compressed = (section.flags & SHF.compressed) !== 0;
    // Section 0 is the reserved null entry (its size may hold the section count).
    if (index !== 0 && section.type !== SHT.nobits && section.type !== SHT.null) {
      this.#checkRange(section.offset, section.size, `section ${index}`);
    }
    return section;
  }

  #symbolTable(type: number): readonly ElfSymbol[] {
    const key = String(type);
    let symbols = this.#symbolCache.get(key);
    if (symbols === undefined) {
      const table = this.sections.find((s) => s.type === type);
      symbols = table === undefined ? [] : this.#readSymbols(table);
      this.#symbolCache.set(key, symbols);
    }
    return symbols;
  }

  /** A symbol table's entry size and count, and its string table's bytes (read, checked). */
  #symbolTableLayout(table: ElfSection): { entsize: number; count: number; strings: Uint8Array } {
    if (table.entsize !== 0 && table.entsize < SYMBOL_SIZE) {
      throw new ElfError(
        "unsupported",
        `Unsupported symbol size ${table.entsize} in ${table.name}`,
      );
    }
    const entsize = table.entsize || SYMBOL_SIZE;
    const strings = this.sections[table.link];
    if (strings === undefined || strings.type === SHT.nobits) {
      throw new ElfError("truncated", `${table.name} links to missing string table ${table.link}`);
    }
    const count = Math.floor(table.size / entsize);
    this.#ensure(table.offset, count * entsize);
    return { entsize, count, strings: this.sectionBytes(strings) };
  }

  /** The symbol whose entry is at file offset `at`, named `name`. */
  #symbolAt(at: number, name: string): ElfSymbol {
    const info = this.#bytes[at + 4];
    return {
      name,
      value: this.#u64(at + 8, "st_value"),
      size: this.#u64(at + 16, "st_size"),
      type: info & 0xf,
      bind: info >> 4,
      shndx: this.#u16(at + 6),
    };
  }

  #readSymbols(table: ElfSection): ElfSymbol[] {
    const { entsize, count, strings } = this.#symbolTableLayout(table);
    const symbols: ElfSymbol[] = new Array(count);
    for (let i = 0; i < count; i++) {
      const at = table.offset + i * entsize;
      symbols[i] = this.#symbolAt(
        at,
        cString(strings, this.#u32(at), `${table.name} symbol ${i} name`),
      );
    }
    return symbols;
  }

  #u16(at: number): number {
    return this.#view.getUint16(at, this.littleEndian);
  }

  #u32(at: number): number {
    return this.#view.getUint32(at, this.littleEndian);
  }

  /** A u64 field as a number; values above 2^53 lose precision (addresses and sizes never do). */
  #u64(at: number, what: string): number {
    if (at + 8 > this.#bytes.length) {
      throw new ElfError("truncated", `ELF ${what} at ${at} is beyond the end of the file`);
    }
    const low = this.#u32(this.littleEndian ? at : at + 4);
    const high = this.#u32(this.littleEndian ? at + 4 : at);
    return low + high * 2 ** 32;
  }

  #checkRange(offset: number, size: number, what: string): void {
    if (offset + size > this.#bytes.length) {
      throw new ElfError(
        "truncated",
        `ELF ${what} [${offset}, ${offset + size}) is beyond the end of the file ` +
          `(${this.#bytes.length} bytes)`,
      );
    }
  }
}

/**
 * Checks `e_ident`: magic, class, byte order; and that the ELF header is all there. Returns
 * whether the file is little-endian.
 */
function checkIdent(bytes: Uint8Array, options: ElfParseOptions): boolean {
  const prefix = Math.min(bytes.length, MAGIC.length);
  for (let i = 0; i < prefix; i++) {
    if (bytes[i] !== MAGIC[i]) throw new ElfError("not_elf", "Not an ELF file (bad magic)");
  }
  if (bytes.length === 0) throw new ElfError("not_elf", "Not an ELF file (empty)");
  if (bytes.length < ELF_HEADER_SIZE) {
    throw new ElfError("truncated", `ELF header truncated (${bytes.length} of 64 bytes)`);
  }
  if (bytes[4] !== 2) {
    throw new ElfError("unsupported", `Unsupported ELF class ${bytes[4]}: only ELF-64`);
  }
  if (bytes[5] === 1 || (bytes[5] === 2 && options.bigEndian)) return bytes[5] === 1;
  throw new ElfError("unsupported", `Unsupported ELF byte order ${bytes[5]}: only little-endian`);
}

/** The NUL-terminated string at `offset` of a string table. */
function cString(table: Uint8Array, offset: number, what: string): string {
  if (offset >= table.length) {
    if (offset === 0) return ""; // An empty table and the empty name: fine.
    throw new ElfError("truncated", `${what} offset ${offset} is beyond its string table`);
  }
  let end = table.indexOf(0, offset);
  if (end < 0) end = table.length;
  return utf8.decode(table.subarray(offset, end));
}
