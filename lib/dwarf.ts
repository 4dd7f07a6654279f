/**
 * Struct layouts from the DWARF of an ELF binary: for each wanted struct, the byte offset of
 * each wanted member (`DW_AT_data_member_location`) and the struct's size. Enough DWARF to find
 * those and to skip everything else correctly: `.debug_abbrev`, `.debug_info` (versions 2 to 5,
 * every form of DWARF 5 and the GNU extensions), and the string sections that names may live in
 * (`.debug_str`, `.debug_line_str`, `.debug_str_offsets`). Pure: sections in, offsets out.
 *
 * Go's linker writes DWARF 4 with every name inline (`DW_FORM_string`) and compresses the debug
 * sections with zlib: Go 1.11 to 1.18 as `.zdebug_*` sections starting with `"ZLIB"` and the
 * uncompressed size (8 bytes, big-endian); since Go 1.19 (golang/go#50796; Debian's go1.19.8
 * does) as `SHF_COMPRESSED` `.debug_*` sections whose bytes start with an `Elf64_Chdr`
 * (`ch_type` 1 = zlib, `ch_size`). Both are read here, and zstd (`ch_type` 2) too. Go's linker puts every type of the program in one compile unit (the
 * `runtime` one, a third of the way into `.debug_info` of a net/http server), so the walk stops
 * as soon as every wanted struct has been seen.
 *
 * A binary without DWARF (built with `-ldflags=-w`, or stripped) gives an empty map; DWARF that
 * cannot be parsed throws {@linkcode DwarfError}.
 *
 * Formats: DWARF 5 (dwarfstd.org, sections 7.5 "Format of Debugging Information" and 7.26
 * "String Offsets Table"), the ELF gABI "Section Compression" (`Elf64_Chdr`).
 *
 * @module
 */
import { inflateSync, zstdDecompressSync } from "node:zlib";

/** DWARF (or a compressed debug section) that cannot be parsed. */
export class DwarfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DwarfError";
  }
}

/** One ELF section header, as much of it as this module reads. */
export interface DwarfElfSection {
  name: string;
  /** `sh_flags`: `SHF_COMPRESSED` (0x800) says the bytes start with an `Elf64_Chdr`. */
  flags: number;
  addr: number;
  offset: number;
  size: number;
}

/**
 * The part of an ELF reader this module needs (lib/elf.ts's `ElfFile` has it). The file is
 * taken to be little-endian ELF-64, as every x86-64 and arm64 Linux binary is.
 */
export interface DwarfElf {
  section(name: string): DwarfElfSection | undefined;
  /** The section's bytes as stored in the file (still compressed if it is). */
  sectionBytes(section: DwarfElfSection): Uint8Array;
}

/** Where the wanted members of one struct are. */
export interface StructLayout {
  /** `DW_AT_byte_size` of the struct, when DWARF gives it. */
  byteSize: number | undefined;
  /** Member name to byte offset, in the order asked for; only the members found. */
  fields: Map<string, number>;
}

/**
 * Byte offsets of struct members, e.g. `{ "net/http.Request": ["Method", "URL"] }` gives
 * `Map { "net/http.Request" => Map { "Method" => 0, "URL" => 16 } }`. Structs that are not in
 * the DWARF are absent from the result; members that are not in the struct are absent from its
 * map. An empty member list asks for every member.
 */
export function readStructFields(
  elf: DwarfElf,
  wanted: Record<string, string[]>,
): Map<string, Map<string, number>> {
  const out = new Map<string, Map<string, number>>();
  for (const [name, layout] of readStructLayouts(elf, wanted)) out.set(name, layout.fields);
  return out;
}

/** Like {@linkcode readStructFields}, with each struct's byte size. */
export function readStructLayouts(
  elf: DwarfElf,
  wanted: Record<string, string[]>,
): Map<string, StructLayout> {
  const found = new Map<string, StructLayout>();
  const names = Object.keys(wanted);
  if (names.length === 0) return found;
  const info = debugSection(elf, ".debug_info");
  if (!info) return found;
  const abbrev = debugSection(elf, ".debug_abbrev");
  if (!abbrev) throw new DwarfError(".debug_info without .debug_abbrev");
  const walker = new InfoWalker(elf, info, abbrev, new Set(names), found);
  walker.run();
  // Members in the order they were asked for, which reads better than DWARF's order.
  for (const [name, layout] of found) {
    const asked = wanted[name];
    if (asked.length === 0) continue;
    const ordered = new Map<string, number>();
    for (const field of asked) {
      const offset = layout.fields.get(field);
      if (offset !== undefined) ordered.set(field, offset);
    }
    layout.fields = ordered;
  }
  return found;
}

const SHF_COMPRESSED = 0x800;
const ELFCOMPRESS_ZLIB = 1;
const ELFCOMPRESS_ZSTD = 2;
const ELF64_CHDR_SIZE = 24;

/**
 * The uncompressed bytes of a debug section (".debug_info"), whether it is stored plain,
 * `SHF_COMPRESSED` or as ".zdebug_info"; undefined if the binary has neither.
 */
export function debugSection(elf: DwarfElf, name: string): Uint8Array | undefined {
  const plain = elf.section(name);
  if (plain) {
    const bytes = elf.sectionBytes(plain);
    if ((plain.flags & SHF_COMPRESSED) === 0) return bytes;
    if (bytes.length < ELF64_CHDR_SIZE) throw new DwarfError(`${name}: truncated Elf64_Chdr`);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const type = view.getUint32(0, true);
    const size = toNumber(view.getBigUint64(8, true), `${name} ch_size`);
    const data = bytes.subarray(ELF64_CHDR_SIZE);
    if (type === ELFCOMPRESS_ZLIB) return decompress(name, "zlib", data, size);
    if (type === ELFCOMPRESS_ZSTD) return decompress(name, "zstd", data, size);
    throw new DwarfError(`${name}: unknown compression type ${type}`);
  }
  const zname = ".zdebug" + name.slice(".debug".length);
  const gnu = elf.section(zname);
  if (!gnu) return undefined;
  const bytes = elf.sectionBytes(gnu);
  if (bytes.length < 12 || String.fromCharCode(...bytes.subarray(0, 4)) !== "ZLIB") {
    throw new DwarfError(`${zname}: no "ZLIB" header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = toNumber(view.getBigUint64(4, false), `${zname} size`);
  return decompress(zname, "zlib", bytes.subarray(12), size);
}

function decompress(
  name: string,
  kind: "zlib" | "zstd",
  data: Uint8Array,
  size: number,
): Uint8Array {
  let out: Uint8Array;
  try {
    out = kind === "zlib" ? inflateSync(data) : zstdDecompressSync(data);
  } catch (e) {
    throw new DwarfError(`${name}: bad ${kind} data: ${(e as Error).message}`);
  }
  if (out.length !== size) {
    throw new DwarfError(`${name}: ${out.length} bytes after ${kind}, the header says ${size}`);
  }
  return out;
}

function toNumber(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new DwarfError(`${what} too large`);
  return Number(value);
}

// Tags, attributes and forms (DWARF 5, 7.5.3 to 7.5.6).
const TAG_CLASS_TYPE = 0x02;
const TAG_MEMBER = 0x0d;
const TAG_STRUCTURE_TYPE = 0x13;
const AT_NAME = 0x03;
const AT_BYTE_SIZE = 0x0b;
const AT_DECLARATION = 0x3c;
const AT_DATA_MEMBER_LOCATION = 0x38;
const AT_STR_OFFSETS_BASE = 0x72;
const OP_PLUS_UCONST = 0x23;
const OP_CONSTU = 0x10;

const FORM_ADDR = 0x01;
const FORM_BLOCK2 = 0x03;
const FORM_BLOCK4 = 0x04;
const FORM_DATA2 = 0x05;
const FORM_DATA4 = 0x06;
const FORM_DATA8 = 0x07;
const FORM_STRING = 0x08;
const FORM_BLOCK = 0x09;
const FORM_BLOCK1 = 0x0a;
const FORM_DATA1 = 0x0b;
const FORM_FLAG = 0x0c;
const FORM_SDATA = 0x0d;
const FORM_STRP = 0x0e;
const FORM_UDATA = 0x0f;
const FORM_REF_ADDR = 0x10;
const FORM_REF1 = 0x11;
const FORM_REF2 = 0x12;
const FORM_REF4 = 0x13;
const FORM_REF8 = 0x14;
const FORM_REF_UDATA = 0x15;
const FORM_INDIRECT = 0x16;
const FORM_SEC_OFFSET = 0x17;
const FORM_EXPRLOC = 0x18;
const FORM_FLAG_PRESENT = 0x19;
const FORM_STRX = 0x1a;
const FORM_ADDRX = 0x1b;
const FORM_REF_SUP4 = 0x1c;
const FORM_STRP_SUP = 0x1d;
const FORM_DATA16 = 0x1e;
const FORM_LINE_STRP = 0x1f;
const FORM_REF_SIG8 = 0x20;
const FORM_IMPLICIT_CONST = 0x21;
const FORM_LOCLISTX = 0x22;
const FORM_RNGLISTX = 0x23;
const FORM_REF_SUP8 = 0x24;
const FORM_STRX1 = 0x25;
const FORM_STRX2 = 0x26;
const FORM_STRX3 = 0x27;
const FORM_STRX4 = 0x28;
const FORM_ADDRX1 = 0x29;
const FORM_ADDRX2 = 0x2a;
const FORM_ADDRX3 = 0x2b;
const FORM_ADDRX4 = 0x2c;
const FORM_GNU_ADDR_INDEX = 0x1f01;
const FORM_GNU_STR_INDEX = 0x1f02;
const FORM_GNU_REF_ALT = 0x1f20;
const FORM_GNU_STRP_ALT = 0x1f21;

const UT_COMPILE = 0x01;
const UT_TYPE = 0x02;
const UT_PARTIAL = 0x03;
const UT_SKELETON = 0x04;
const UT_SPLIT_COMPILE = 0x05;
const UT_SPLIT_TYPE = 0x06;

/** The forms whose value is a fixed number of bytes, and that number. */
const FIXED_SIZE: ReadonlyMap<number, number> = new Map([
  ...[FORM_DATA1, FORM_FLAG, FORM_REF1, FORM_STRX1, FORM_ADDRX1].map((f) => [f, 1] as const),
  ...[FORM_DATA2, FORM_REF2, FORM_STRX2, FORM_ADDRX2].map((f) => [f, 2] as const),
  ...[FORM_STRX3, FORM_ADDRX3].map((f) => [f, 3] as const),
  ...[FORM_DATA4, FORM_REF4, FORM_REF_SUP4, FORM_STRX4, FORM_ADDRX4].map((f) => [f, 4] as const),
  ...[FORM_DATA8, FORM_REF8, FORM_REF_SIG8, FORM_REF_SUP8].map((f) => [f, 8] as const),
  [FORM_DATA16, 16],
]);

/** The length that starts a block form's value: its own size (block1, 2, 4) or a ULEB128. */
function blockLength(r: Reader, form: number): number {
  if (form === FORM_BLOCK1) return r.u8();
  if (form === FORM_BLOCK2) return r.u16();
  if (form === FORM_BLOCK4) return r.u32();
  return r.uleb(); // DW_FORM_block, DW_FORM_exprloc
}

interface AttrSpec {
  attr: number;
  form: number;
  /** The value of a `DW_FORM_implicit_const` attribute, which lives in the abbreviation. */
  implicitConst: number;
}

interface Abbrev {
  tag: number;
  hasChildren: boolean;
  attrs: AttrSpec[];
}

/** A read-only cursor over one DWARF section, with bounds checks that throw DwarfError. */
class Reader {
  pos = 0;
  readonly bytes: Uint8Array;
  readonly view: DataView;
  readonly what: string;

  constructor(bytes: Uint8Array, what: string) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.what = what;
  }

  need(n: number): void {
    if (this.pos + n > this.bytes.length) {
      throw new DwarfError(`${this.what}: read past the end at offset 0x${this.pos.toString(16)}`);
    }
  }

  /**
   * An unsigned little-endian value of `size` bytes: 1, 2, 3, 4 or 8 (what a fixed-size form
   * holds, see FIXED_SIZE); a 64-bit value is exact up to 2^53, which every offset and size of
   * interest is.
   */
  fixed(size: number): number {
    if (size !== 8 && !(size >= 1 && size <= 4)) {
      throw new DwarfError(`${this.what}: no ${size}-byte numbers`);
    }
    this.need(size);
    const at = this.pos;
    this.pos += size;
    const b = this.bytes;
    switch (size) {
      case 1:
        return b[at];
      case 2:
        return this.view.getUint16(at, true);
      case 3:
        return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16);
      case 4:
        return this.view.getUint32(at, true);
      default:
        return this.view.getUint32(at + 4, true) * 0x1_0000_0000 + this.view.getUint32(at, true);
    }
  }

  u8(): number {
    return this.fixed(1);
  }

  u16(): number {
    return this.fixed(2);
  }

  u32(): number {
    return this.fixed(4);
  }

  u64(): number {
    return this.fixed(8);
  }

  offset(size: 4 | 8): number {
    return this.fixed(size);
  }

  uleb(): number {
    return this.#leb(false);
  }

  sleb(): number {
    return this.#leb(true);
  }

  #leb(signed: boolean): number {
    let result = 0;
    let scale = 1;
    for (;;) {
      if (this.pos >= this.bytes.length) {
        throw new DwarfError(`${this.what}: LEB128 runs past the end`);
      }
      const b = this.bytes[this.pos++];
      result += (b & 0x7f) * scale;
      scale *= 128;
      if ((b & 0x80) === 0) return signed && (b & 0x40) !== 0 ? result - scale : result;
    }
  }

  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }

  /** Skips a NUL-terminated string and returns where it started. */
  skipCString(): number {
    const start = this.pos;
    const end = this.bytes.indexOf(0, start);
    if (end < 0) {
      throw new DwarfError(`${this.what}: unterminated string at 0x${start.toString(16)}`);
    }
    this.pos = end + 1;
    return start;
  }
}

const decoder = new TextDecoder();

function cStringAt(bytes: Uint8Array, at: number, what: string): string {
  if (at >= bytes.length) {
    throw new DwarfError(`${what}: string offset 0x${at.toString(16)} out of range`);
  }
  const end = bytes.indexOf(0, at);
  if (end < 0) throw new DwarfError(`${what}: unterminated string at 0x${at.toString(16)}`);
  return decoder.decode(bytes.subarray(at, end));
}

/** What one compile unit's header says about how to read its DIEs. */
interface UnitContext {
  version: number;
  offsetSize: 4 | 8;
  addressSize: number;
  /** `DW_AT_str_offsets_base` of the unit (DWARF 5), for the `strx` forms. */
  strOffsetsBase: number;
}

/** A value read for one of the attributes this module looks at. */
type AttrValue = number | string | Uint8Array | undefined;

class InfoWalker {
  readonly #elf: DwarfElf;
  readonly #info: Reader;
  readonly #abbrevBytes: Uint8Array;
  readonly #abbrevTables = new Map<number, Map<number, Abbrev>>();
  readonly #wanted: Set<string>;
  readonly #found: Map<string, StructLayout>;
  #str: Uint8Array | undefined | null = null;
  #lineStr: Uint8Array | undefined | null = null;
  #strOffsets: Uint8Array | undefined | null = null;

  constructor(
    elf: DwarfElf,
    info: Uint8Array,
    abbrev: Uint8Array,
    wanted: Set<string>,
    found: Map<string, StructLayout>,
  ) {
    this.#elf = elf;
    this.#info = new Reader(info, ".debug_info");
    this.#abbrevBytes = abbrev;
    this.#wanted = wanted;
    this.#found = found;
  }

  run(): void {
    const r = this.#info;
    while (r.pos < r.bytes.length && this.#found.size < this.#wanted.size) {
      const unitStart = r.pos;
      let length = r.u32();
      let offsetSize: 4 | 8 = 4;
      if (length === 0xffffffff) {
        length = r.u64();
        offsetSize = 8;
      } else if (length >= 0xfffffff0) {
        throw new DwarfError(`.debug_info: reserved unit length 0x${length.toString(16)}`);
      }
      const end = r.pos + length;
      if (end > r.bytes.length) {
        throw new DwarfError(
          `.debug_info: unit at 0x${unitStart.toString(16)} runs past the end of the section`,
        );
      }
      const version = r.u16();
      let abbrevOffset: number;
      let addressSize: number;
      if (version >= 2 && version <= 4) {
        abbrevOffset = r.offset(offsetSize);
        addressSize = r.u8();
      } else if (version === 5) {
        const unitType = r.u8();
        addressSize = r.u8();
        abbrevOffset = r.offset(offsetSize);
        if (unitType === UT_SKELETON || unitType === UT_SPLIT_COMPILE) r.skip(8);
        else if (unitType === UT_TYPE || unitType === UT_SPLIT_TYPE) r.skip(8 + offsetSize);
        else if (unitType !== UT_COMPILE && unitType !== UT_PARTIAL) {
          // An unknown unit type may have a longer header: skip the unit whole.
          r.pos = end;
          continue;
        }
      } else {
        throw new DwarfError(
          `.debug_info: unit at 0x${unitStart.toString(16)} has unsupported version ${version}`,
        );
      }
      const unit: UnitContext = { version, offsetSize, addressSize, strOffsetsBase: 8 };
      this.#walkUnit(end, this.#abbrevTable(abbrevOffset), unit);
      r.pos = end;
    }
  }

  #walkUnit(end: number, abbrevs: Map<number, Abbrev>, unit: UnitContext): void {
    const r = this.#info;
    let depth = 0;
    let first = true;
    // The struct being read: its members are the DIEs at depth `memberDepth`.
    let current: StructLayout | undefined;
    let currentName = "";
    let memberDepth = -1;
    // Records the struct just read; true when every wanted struct has been found.
    const finish = (): boolean => {
      this.#found.set(currentName, current!);
      current = undefined;
      memberDepth = -1;
      return this.#found.size === this.#wanted.size;
    };
    while (r.pos < end) {
      const dieOffset = r.pos;
      const code = r.uleb();
      if (code === 0) {
        if (depth > 0) depth--;
        if (current && depth < memberDepth && finish()) return;
        continue;
      }
      const abbrev = abbrevs.get(code);
      if (!abbrev) {
        throw new DwarfError(
          `.debug_info: DIE at 0x${dieOffset.toString(16)} uses unknown abbreviation ${code}`,
        );
      }
      if (first) {
        // The unit's own DIE: it may set the base of the strx forms for the DIEs below it.
        first = false;
        const base = this.#readAttrs(abbrev, unit, AT_STR_OFFSETS_BASE).get(AT_STR_OFFSETS_BASE);
        if (typeof base === "number") unit.strOffsetsBase = base;
      } else if (
        (abbrev.tag === TAG_STRUCTURE_TYPE || abbrev.tag === TAG_CLASS_TYPE) && !current
      ) {
        const attrs = this.#readAttrs(abbrev, unit, AT_NAME, AT_BYTE_SIZE, AT_DECLARATION);
        const name = attrs.get(AT_NAME);
        if (
          typeof name === "string" && this.#wanted.has(name) && !this.#found.has(name) &&
          !attrs.get(AT_DECLARATION)
        ) {
          const size = attrs.get(AT_BYTE_SIZE);
          current = { byteSize: typeof size === "number" ? size : undefined, fields: new Map() };
          currentName = name;
          memberDepth = depth + 1;
          if (!abbrev.hasChildren && finish()) return;
        }
      } else if (current && depth === memberDepth && abbrev.tag === TAG_MEMBER) {
        const attrs = this.#readAttrs(abbrev, unit, AT_NAME, AT_DATA_MEMBER_LOCATION);
        const name = attrs.get(AT_NAME);
        const offset = memberOffset(attrs.get(AT_DATA_MEMBER_LOCATION));
        if (typeof name === "string" && offset !== undefined) current.fields.set(name, offset);
      } else {
        this.#skipAttrs(abbrev, unit);
      }
      if (abbrev.hasChildren) depth++;
    }
    if (current) throw new DwarfError(`.debug_info: struct ${currentName} is not terminated`);
  }

  #readAttrs(abbrev: Abbrev, unit: UnitContext, ...keep: number[]): Map<number, AttrValue> {
    const values = new Map<number, AttrValue>();
    for (const spec of abbrev.attrs) {
      if (keep.includes(spec.attr)) values.set(spec.attr, this.#readForm(spec, spec.form, unit));
      else this.#skipForm(spec.form, unit);
    }
    return values;
  }

  #skipAttrs(abbrev: Abbrev, unit: UnitContext): void {
    for (const spec of abbrev.attrs) this.#skipForm(spec.form, unit);
  }

  /** Reads a value: numbers for constants, offsets and references; strings; blocks as bytes. */
  #readForm(spec: AttrSpec, form: number, unit: UnitContext): AttrValue {
    const r = this.#info;
    switch (form) {
      case FORM_STRING: {
        const start = r.skipCString();
        return decoder.decode(r.bytes.subarray(start, r.pos - 1));
      }
      case FORM_STRP:
        return this.#string(".debug_str", r.offset(unit.offsetSize));
      case FORM_LINE_STRP:
        return this.#string(".debug_line_str", r.offset(unit.offsetSize));
      case FORM_STRX:
      case FORM_GNU_STR_INDEX:
        return this.#stringIndex(r.uleb(), unit);
      case FORM_STRX1:
      case FORM_STRX2:
      case FORM_STRX3:
      case FORM_STRX4:
        return this.#stringIndex(r.fixed(FIXED_SIZE.get(form)!), unit);
      case FORM_DATA1:
      case FORM_FLAG:
      case FORM_REF1:
      case FORM_DATA2:
      case FORM_REF2:
      case FORM_DATA4:
      case FORM_REF4:
      case FORM_DATA8:
      case FORM_REF8:
        return r.fixed(FIXED_SIZE.get(form)!);
      case FORM_UDATA:
      case FORM_REF_UDATA:
        return r.uleb();
      case FORM_SDATA:
        return r.sleb();
      case FORM_SEC_OFFSET:
        return r.offset(unit.offsetSize);
      case FORM_FLAG_PRESENT:
        return 1;
      case FORM_IMPLICIT_CONST:
        return spec.implicitConst;
      case FORM_BLOCK1:
      case FORM_BLOCK2:
      case FORM_BLOCK4:
      case FORM_BLOCK:
      case FORM_EXPRLOC: {
        const length = blockLength(r, form);
        const start = r.pos;
        r.skip(length);
        return r.bytes.subarray(start, r.pos);
      }
      case FORM_INDIRECT:
        return this.#readForm(spec, r.uleb(), unit);
      default:
        this.#skipForm(form, unit);
        return undefined;
    }
  }

  #skipForm(form: number, unit: UnitContext): void {
    const r = this.#info;
    const size = FIXED_SIZE.get(form);
    if (size !== undefined) {
      r.skip(size);
      return;
    }
    switch (form) {
      case FORM_STRING:
        r.skipCString();
        return;
      case FORM_FLAG_PRESENT:
      case FORM_IMPLICIT_CONST:
        return;
      case FORM_ADDR:
        r.skip(unit.addressSize);
        return;
      case FORM_REF_ADDR:
        // DWARF 2 made DW_FORM_ref_addr address-sized; later versions made it offset-sized.
        r.skip(unit.version <= 2 ? unit.addressSize : unit.offsetSize);
        return;
      case FORM_STRP:
      case FORM_LINE_STRP:
      case FORM_SEC_OFFSET:
      case FORM_STRP_SUP:
      case FORM_GNU_REF_ALT:
      case FORM_GNU_STRP_ALT:
        r.skip(unit.offsetSize);
        return;
      case FORM_UDATA:
      case FORM_SDATA:
      case FORM_REF_UDATA:
      case FORM_STRX:
      case FORM_ADDRX:
      case FORM_LOCLISTX:
      case FORM_RNGLISTX:
      case FORM_GNU_ADDR_INDEX:
      case FORM_GNU_STR_INDEX:
        r.uleb();
        return;
      case FORM_BLOCK1:
      case FORM_BLOCK2:
      case FORM_BLOCK4:
      case FORM_BLOCK:
      case FORM_EXPRLOC:
        r.skip(blockLength(r, form));
        return;
      case FORM_INDIRECT:
        this.#skipForm(r.uleb(), unit);
        return;
      default:
        throw new DwarfError(
          `.debug_info: unknown attribute form 0x${form.toString(16)} at 0x${r.pos.toString(16)}`,
        );
    }
  }

  #string(section: ".debug_str" | ".debug_line_str", offset: number): string {
    const bytes = section === ".debug_str" ? this.#strSection() : this.#lineStrSection();
    if (!bytes) throw new DwarfError(`.debug_info refers to ${section}, which is missing`);
    return cStringAt(bytes, offset, section);
  }

  #stringIndex(index: number, unit: UnitContext): string {
    if (this.#strOffsets === null) this.#strOffsets = debugSection(this.#elf, ".debug_str_offsets");
    const table = this.#strOffsets;
    if (!table) throw new DwarfError(".debug_info uses strx forms without .debug_str_offsets");
    const at = unit.strOffsetsBase + index * unit.offsetSize;
    if (at + unit.offsetSize > table.length) {
      throw new DwarfError(`.debug_str_offsets: index ${index} out of range`);
    }
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    const offset = unit.offsetSize === 4
      ? view.getUint32(at, true)
      : toNumber(view.getBigUint64(at, true), ".debug_str_offsets entry");
    return this.#string(".debug_str", offset);
  }

  #strSection(): Uint8Array | undefined {
    if (this.#str === null) this.#str = debugSection(this.#elf, ".debug_str");
    return this.#str;
  }

  #lineStrSection(): Uint8Array | undefined {
    if (this.#lineStr === null) this.#lineStr = debugSection(this.#elf, ".debug_line_str");
    return this.#lineStr;
  }

  #abbrevTable(offset: number): Map<number, Abbrev> {
    const cached = this.#abbrevTables.get(offset);
    if (cached) return cached;
    if (offset >= this.#abbrevBytes.length) {
      throw new DwarfError(`.debug_abbrev: offset 0x${offset.toString(16)} out of range`);
    }
    const r = new Reader(this.#abbrevBytes, ".debug_abbrev");
    r.pos = offset;
    const table = new Map<number, Abbrev>();
    for (;;) {
      const code = r.uleb();
      if (code === 0) break;
      const tag = r.uleb();
      const hasChildren = r.u8() !== 0;
      const attrs: AttrSpec[] = [];
      for (;;) {
        const attr = r.uleb();
        const form = r.uleb();
        if (attr === 0 && form === 0) break;
        attrs.push({ attr, form, implicitConst: form === FORM_IMPLICIT_CONST ? r.sleb() : 0 });
      }
      table.set(code, { tag, hasChildren, attrs });
    }
    this.#abbrevTables.set(offset, table);
    return table;
  }
}

/**
 * `DW_AT_data_member_location`: a constant (what Go, and DWARF 3+ compilers, write) or, in
 * DWARF 2 style, an expression `DW_OP_plus_uconst N` (or `DW_OP_constu N`). Anything else (a
 * virtual base's computed location) is not a fixed offset: undefined.
 */
function memberOffset(value: AttrValue): number | undefined {
  if (typeof value === "number") return value;
  if (value instanceof Uint8Array && value.length >= 2) {
    if (value[0] !== OP_PLUS_UCONST && value[0] !== OP_CONSTU) return undefined;
    const r = new Reader(value, "DW_AT_data_member_location");
    r.pos = 1;
    const offset = r.uleb();
    return r.pos === value.length ? offset : undefined;
  }
  return undefined;
}
