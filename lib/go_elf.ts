/**
 * What the readers of Go executables (lib/go_pclntab.ts, lib/go_buildinfo.ts) share on top of
 * lib/elf.ts: little-endian words of Go's data structures, the symbols when they can be read,
 * and the writable segments searched when a binary has no section headers. Pure.
 *
 * @module
 */
import { ElfError, type ElfFile, type ElfSymbol, PF, PT } from "./elf.ts";

/** A DataView over exactly `bytes`. */
export function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** A little-endian u64 (a Go pointer or int on x86-64) as a number, exact up to 2^53. */
export function u64(view: DataView, at: number): number {
  return view.getUint32(at, true) + view.getUint32(at + 4, true) * 2 ** 32;
}

/**
 * `.symtab`'s symbols; none when it cannot be read: the Go structures are found without them
 * (a damaged symbol table does not make the rest of the binary unreadable).
 */
export function symbolsOf(elf: ElfFile): readonly ElfSymbol[] {
  try {
    return elf.symbols();
  } catch (e) {
    if (e instanceof ElfError) return [];
    throw e;
  }
}

/** The file bytes of the writable PT_LOAD segments: Go's data, where no section names it. */
export function writableSegments(elf: ElfFile): Uint8Array[] {
  return elf.programHeaders
    .filter((p) => p.type === PT.load && (p.flags & PF.w) !== 0)
    .map((p) => elf.segmentBytes(p));
}
