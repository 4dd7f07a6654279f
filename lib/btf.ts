/**
 * A small reader for the BTF (BPF Type Format) of a compiled BPF object: its `.BTF` section,
 * found by lib/elf.ts, and enough BTF to list the types, find a struct by name and lay out its
 * members (byte and bit offsets, sizes). Pure: bytes in, values out; no libbpf.
 *
 * Tests use it to check that decoders of fixed-layout records agree with the C structs they
 * decode, as the compiler laid them out.
 *
 * Format: the kernel's Documentation/bpf/btf.rst (`struct btf_header`, `struct btf_type` and
 * the data after it).
 *
 * @module
 */
import { ElfError, ElfFile, type ElfParseOptions, SHT } from "./elf.ts";

/** A malformed or unsupported ELF or BTF input. */
export class BtfError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "BtfError";
  }
}

/** BPF objects are ELF-64 of EM_BPF, big-endian when built for a big-endian target. */
const BPF_OBJECT: ElfParseOptions = { anyMachine: true, bigEndian: true };

/** BTF_KIND_* values. */
export const BtfKind = {
  int: 1,
  ptr: 2,
  array: 3,
  struct: 4,
  union: 5,
  enum: 6,
  fwd: 7,
  typedef: 8,
  volatile: 9,
  const: 10,
  restrict: 11,
  func: 12,
  funcProto: 13,
  var: 14,
  datasec: 15,
  float: 16,
  declTag: 17,
  typeTag: 18,
  enum64: 19,
} as const;

export type BtfKindName = keyof typeof BtfKind;

const KIND_NAMES = Object.fromEntries(
  Object.entries(BtfKind).map(([name, kind]) => [kind, name]),
) as Record<number, BtfKindName>;

/** A struct or union member. */
export interface BtfMember {
  name: string;
  type: number;
  /** Offset from the start of the struct, in bits. */
  bitOffset: number;
  /** Width of a bitfield member in bits; 0 for an ordinary member. */
  bitfieldSize: number;
}

/** One BTF type. Which optional fields are set depends on `kind`. */
export interface BtfType {
  id: number;
  kind: BtfKindName;
  /** Empty for anonymous types. */
  name: string;
  /** Byte size: INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC. */
  size?: number;
  /** Referenced type id: PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, ... */
  type?: number;
  /** INT: width in bits. */
  bits?: number;
  /** ARRAY. */
  array?: { type: number; indexType: number; nelems: number };
  /** STRUCT and UNION. */
  members?: BtfMember[];
  /** ENUM and ENUM64. */
  values?: { name: string; value: bigint }[];
}

/** Parsed BTF: `types[id]`, where id 0 is `void` (undefined here). */
export interface Btf {
  types: (BtfType | undefined)[];
}

const BTF_MAGIC = 0xeb9f;

/** Parses the contents of a `.BTF` section. */
export function parseBtf(section: Uint8Array): Btf {
  if (section.length < 24) throw new BtfError("BTF section too short for its header");
  const view = new DataView(section.buffer, section.byteOffset, section.byteLength);
  let le = true;
  if (view.getUint16(0, true) !== BTF_MAGIC) {
    if (view.getUint16(0, false) !== BTF_MAGIC) throw new BtfError("bad BTF magic");
    le = false;
  }
  const hdrLen = view.getUint32(4, le);
  const typeOff = view.getUint32(8, le);
  const typeLen = view.getUint32(12, le);
  const strOff = view.getUint32(16, le);
  const strLen = view.getUint32(20, le);
  checkRange(section, hdrLen + typeOff, typeLen, "BTF type section");
  checkRange(section, hdrLen + strOff, strLen, "BTF string section");
  const strings = section.subarray(hdrLen + strOff, hdrLen + strOff + strLen);
  const name = (off: number) => {
    if (off >= strings.length) throw new BtfError(`BTF string offset ${off} out of range`);
    return cString(strings, off);
  };

  const types: (BtfType | undefined)[] = [undefined];
  let at = hdrLen + typeOff;
  const end = at + typeLen;
  const u32 = (o: number) => view.getUint32(o, le);
  while (at < end) {
    if (at + 12 > end) throw new BtfError(`truncated BTF type at offset ${at - hdrLen - typeOff}`);
    const id = types.length;
    const info = u32(at + 4);
    const vlen = info & 0xffff;
    const kindValue = (info >>> 24) & 0x1f;
    const kindFlag = (info >>> 31) === 1;
    const kind = KIND_NAMES[kindValue];
    if (!kind) throw new BtfError(`BTF type ${id} has unknown kind ${kindValue}`);
    const sizeOrType = u32(at + 8);
    const t: BtfType = { id, kind, name: name(u32(at)) };
    let data = at + 12;
    const need = (bytes: number) => {
      if (data + bytes > end) throw new BtfError(`truncated BTF type ${id} (${kind})`);
    };
    switch (kindValue) {
      case BtfKind.int:
        need(4);
        t.size = sizeOrType;
        t.bits = u32(data) & 0xff;
        data += 4;
        break;
      case BtfKind.array:
        need(12);
        t.array = { type: u32(data), indexType: u32(data + 4), nelems: u32(data + 8) };
        data += 12;
        break;
      case BtfKind.struct:
      case BtfKind.union:
        need(12 * vlen);
        t.size = sizeOrType;
        t.members = [];
        for (let i = 0; i < vlen; i++, data += 12) {
          const offset = u32(data + 8);
          t.members.push({
            name: name(u32(data)),
            type: u32(data + 4),
            bitOffset: kindFlag ? offset & 0xffffff : offset,
            bitfieldSize: kindFlag ? offset >>> 24 : 0,
          });
        }
        break;
      case BtfKind.enum:
        need(8 * vlen);
        t.size = sizeOrType;
        t.values = [];
        for (let i = 0; i < vlen; i++, data += 8) {
          const raw = u32(data + 4);
          // kind_flag: 1 for a signed enum, 0 for an unsigned one.
          t.values.push({ name: name(u32(data)), value: BigInt(kindFlag ? raw | 0 : raw) });
        }
        break;
      case BtfKind.enum64:
        need(12 * vlen);
        t.size = sizeOrType;
        t.values = [];
        for (let i = 0; i < vlen; i++, data += 12) {
          const raw = (BigInt(u32(data + 8)) << 32n) | BigInt(u32(data + 4));
          t.values.push({ name: name(u32(data)), value: kindFlag ? BigInt.asIntN(64, raw) : raw });
        }
        break;
      case BtfKind.funcProto:
        need(8 * vlen);
        t.type = sizeOrType;
        data += 8 * vlen;
        break;
      case BtfKind.var:
      case BtfKind.declTag:
        need(4);
        t.type = sizeOrType;
        data += 4;
        break;
      case BtfKind.datasec:
        need(12 * vlen);
        t.size = sizeOrType;
        data += 12 * vlen;
        break;
      case BtfKind.float:
        t.size = sizeOrType;
        break;
      default: // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, TYPE_TAG: nothing follows
        t.type = sizeOrType;
    }
    types.push(t);
    at = data;
  }
  return { types };
}

/**
 * The BTF of an ELF object (its `.BTF` section), read with lib/elf.ts. Throws {@link BtfError}
 * for an object that is not a readable ELF-64 file (its `cause` is the {@link ElfError}).
 */
export function btfOfElf(bytes: Uint8Array): Btf {
  let elf: ElfFile;
  try {
    elf = ElfFile.parse(bytes, BPF_OBJECT);
  } catch (e) {
    if (e instanceof ElfError) throw new BtfError(e.message, { cause: e });
    throw e;
  }
  const section = elf.section(".BTF");
  if (!section || section.type === SHT.nobits) throw new BtfError("the object has no .BTF section");
  return parseBtf(elf.sectionBytes(section));
}

/** The first type of `kind` called `name`, if any. */
export function findType(btf: Btf, kind: BtfKindName, name: string): BtfType | undefined {
  return btf.types.find((t) => t?.kind === kind && t.name === name);
}

const MODIFIERS: ReadonlySet<BtfKindName> = new Set([
  "typedef",
  "volatile",
  "const",
  "restrict",
  "typeTag",
]);

function typeById(btf: Btf, id: number): BtfType {
  const t = btf.types[id];
  if (!t) throw new BtfError(id === 0 ? "void has no size" : `no BTF type ${id}`);
  return t;
}

/** Follows typedefs and qualifiers to the underlying type. */
export function resolveType(btf: Btf, id: number): BtfType {
  let t = typeById(btf, id);
  for (let depth = 0; MODIFIERS.has(t.kind); depth++) {
    if (depth > 64) throw new BtfError(`BTF type ${id}: reference loop`);
    t = typeById(btf, t.type!);
  }
  return t;
}

/** Size in bytes of type `id` (pointers are 8 bytes, as on every 64-bit BPF target). */
export function typeSize(btf: Btf, id: number): number {
  const t = resolveType(btf, id);
  switch (t.kind) {
    case "ptr":
      return 8;
    case "array":
      return t.array!.nelems * typeSize(btf, t.array!.type);
    case "var":
      return typeSize(btf, t.type!);
    default:
      if (t.size === undefined) throw new BtfError(`BTF type ${t.id} (${t.kind}) has no size`);
      return t.size;
  }
}

/** A C-like name for type `id`: `__u64`, `char[96]`, `struct sock *`, `void`. */
export function typeName(btf: Btf, id: number): string {
  if (id === 0) return "void";
  const t = typeById(btf, id);
  switch (t.kind) {
    case "ptr":
      return `${typeName(btf, t.type!)} *`;
    case "array":
      return `${typeName(btf, t.array!.type)}[${t.array!.nelems}]`;
    case "struct":
    case "union":
    case "enum":
    case "enum64":
      return `${t.kind === "enum64" ? "enum" : t.kind} ${t.name || "(anon)"}`;
    case "const":
    case "volatile":
    case "restrict":
      return `${t.kind} ${typeName(btf, t.type!)}`;
    case "typeTag": // an annotation (`__user`): the type is the one it tags
      return typeName(btf, t.type!);
    default:
      return t.name || `(anon ${t.kind})`;
  }
}

/** A struct member laid out: where it is and how big it is. */
export interface StructField {
  name: string;
  /** Byte offset (for a bitfield: of the byte holding its first bit). */
  offset: number;
  /** Byte size of the member's type. */
  size: number;
  bitOffset: number;
  bitfieldSize: number;
  /** {@linkcode typeName} of the member's type. */
  typeName: string;
}

/** The layout of `struct name`: its size and members, or undefined if BTF has no such struct. */
export function structLayout(
  btf: Btf,
  name: string,
): { size: number; fields: StructField[] } | undefined {
  const t = findType(btf, "struct", name);
  if (!t) return undefined;
  return {
    size: t.size!,
    fields: t.members!.map((m) => ({
      name: m.name,
      offset: Math.floor(m.bitOffset / 8),
      size: typeSize(btf, m.type),
      bitOffset: m.bitOffset,
      bitfieldSize: m.bitfieldSize,
      typeName: typeName(btf, m.type),
    })),
  };
}

function cString(table: Uint8Array, offset: number): string {
  let end = offset;
  while (end < table.length && table[end] !== 0) end++;
  return new TextDecoder().decode(table.subarray(offset, end));
}

function checkRange(bytes: Uint8Array, offset: number, size: number, what: string): void {
  if (offset < 0 || size < 0 || offset + size > bytes.length) {
    throw new BtfError(`${what} (${size} bytes at ${offset}) is beyond the end of the input`);
  }
}
