/**
 * Where OpenSSL's record-layer entry points are in an ELF file, for uprobes on plaintext TLS
 * traffic: in a shared libssl.so.3, or in a program that links OpenSSL statically and exports
 * its symbols (Node.js does). Pure: a parsed {@link ElfFile} in, addresses out.
 *
 * A uprobe is attached at a file offset, not an address, so each function comes with both.
 *
 * @example
 * ```ts
 * const elf = ElfFile.parse(Deno.readFileSync("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
 * const { SSL_write } = findOpenSslFunctions(elf);
 * ```
 *
 * @module
 */
import { type ElfFile, type ElfSymbol, STB, STT } from "./elf.ts";

/** The functions a TLS tracer hooks: plaintext in and out, the socket, the handshake, the end. */
export const OPENSSL_FUNCTIONS = [
  "SSL_read",
  "SSL_write",
  "SSL_read_ex",
  "SSL_write_ex",
  "SSL_get_fd",
  "SSL_do_handshake",
  "SSL_free",
] as const;

export type OpenSslFunctionName = typeof OPENSSL_FUNCTIONS[number];

/** Where one function is. */
export interface OpenSslFunction {
  /** Its virtual address in the file (`st_value`). */
  address: number;
  /** The offset in the file of its first instruction: what a uprobe attaches at. */
  fileOffset: number;
  /** Its size in bytes (`st_size`), for decoding its code. */
  size: number;
}

/** The functions found; one absent from the file is absent here. */
export type OpenSslFunctions = { [name in OpenSslFunctionName]?: OpenSslFunction };

/** `st_shndx` from here up (SHN_LORESERVE) is special (ABS, COMMON, XINDEX), not a section. */
const SHN_LORESERVE = 0xff00;

/**
 * The {@link OPENSSL_FUNCTIONS} the file defines, from `.dynsym` first (all a stripped file
 * has), then `.symtab` for those still missing. Only function symbols defined in the file's
 * code count: an undefined import (a program that links libssl.so.3 dynamically) does not, and
 * neither does a local symbol, which is some other file's static function of the same name.
 * When versioning leaves two definitions of one name, the first wins.
 */
export function findOpenSslFunctions(elf: ElfFile): OpenSslFunctions {
  const found: OpenSslFunctions = {};
  const wanted = new Set<string>(OPENSSL_FUNCTIONS);
  const take = (symbols: readonly ElfSymbol[]) => {
    for (const s of symbols) {
      if (!wanted.has(s.name) || !isDefinedFunction(s)) continue;
      const fileOffset = elf.fileOffsetOf(s.value);
      if (fileOffset === undefined) continue;
      found[s.name as OpenSslFunctionName] = { address: s.value, fileOffset, size: s.size };
      wanted.delete(s.name);
    }
  };
  // Looked up by name, not decoded whole: node's .dynsym holds ~75k symbols, its .symtab ~100k.
  take(elf.findSymbols(OPENSSL_FUNCTIONS, "dynsym"));
  if (wanted.size > 0) take(elf.findSymbols(wanted, "symtab"));
  return found;
}

function isDefinedFunction(s: ElfSymbol): boolean {
  return s.type === STT.func && s.bind !== STB.local && s.shndx !== 0 &&
    s.shndx < SHN_LORESERVE && s.value !== 0;
}

// OPENSSL_VERSION_TEXT as 3.x writes it ("OpenSSL 3.0.19 27 Jan 2026"), 1.1.1 with two spaces
// ("OpenSSL 1.1.1w  11 Sep 2023") and quictls with a suffix ("OpenSSL 3.0.8+quic 7 Feb 2023").
const VERSION_TEXT = /^OpenSSL \d+\.\d+\.\d+[a-z]*(?:[+-][\w.+-]*)? +\d{1,2} [A-Z][a-z]{2} \d{4}$/;
const PREFIX = new TextEncoder().encode("OpenSSL ");
/** Longer than any version text; a longer string is some other message. */
const MAX_TEXT = 64;

/**
 * OpenSSL's version text (`OPENSSL_VERSION_TEXT`, e.g. "OpenSSL 3.0.19 27 Jan 2026") from the
 * file's `.rodata`, for logs; undefined when there is none. It is compiled into libcrypto (or a
 * program that links OpenSSL statically), not into libssl.so.3.
 */
export function opensslVersion(elf: ElfFile): string | undefined {
  const rodata = elf.section(".rodata");
  if (rodata === undefined) return undefined;
  // node's .rodata is tens of megabytes: scanned in pieces, not kept (the overlap covers a
  // text cut at a piece's end).
  return elf.scanSection(
    rodata,
    (bytes) => {
      // indexOf on the first byte is native and fast.
      for (let at = bytes.indexOf(PREFIX[0]); at >= 0; at = bytes.indexOf(PREFIX[0], at + 1)) {
        if (!PREFIX.every((b, i) => bytes[at + i] === b)) continue;
        const length = bytes.subarray(at, at + MAX_TEXT + 1).indexOf(0);
        if (length < 0) continue;
        const text = String.fromCharCode(...bytes.subarray(at, at + length));
        if (VERSION_TEXT.test(text)) return text;
      }
      return undefined;
    },
    1 << 20,
    MAX_TEXT + 2,
  );
}
