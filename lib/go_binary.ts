/**
 * What every plugin that probes Go programs needs of an executable, on top of the readers of
 * lib/go_pclntab.ts, lib/go_buildinfo.ts and lib/x86_sites.ts (through lib/x86_decoder.ts): open it (ELF, function table, Go
 * version) or say in one word why it cannot be used, turn a function name into a probe site,
 * tell cheaply whether a file is a Go program, and cache analyses by file identity. Pure but for
 * reading files.
 *
 * @module
 */
import { ElfError, ElfFile } from "./elf.ts";
import { type GoFunctionTable, GoPclntabError, readGoFunctions } from "./go_pclntab.ts";
import { compareGoVersions, parseGoVersion, readGoBuildInfo } from "./go_buildinfo.ts";
import { findEntryProbeSite, findReturnSites, X86DecodeError } from "./x86_decoder.ts";

/**
 * Why a binary is left alone: a `reason` label of an internal counter. The common ones, and any
 * a plugin adds (`no_net_http`, `no_grpc`, ...).
 */
export type GoSkipReason =
  | "unreadable"
  | "not_elf"
  | "corrupt_binary"
  | "not_go"
  | "go_too_old"
  | "unknown_go_version"
  | (string & Record<never, never>);

export class GoBinarySkip extends Error {
  constructor(readonly reason: GoSkipReason, message: string) {
    super(message);
    this.name = "GoBinarySkip";
  }
}

/**
 * A plugin's `appliesTo` verdict for a binary it cannot use: the reason (counted), the
 * message, and quiet (a debug log line) for the common reasons such as "not a Go program".
 */
export function skipVerdict(
  skip: GoBinarySkip,
  quietReasons: readonly string[] = ["not_go", "not_elf"],
): { skip: string; detail: string; quiet: boolean } {
  return { skip: skip.reason, detail: skip.message, quiet: quietReasons.includes(skip.reason) };
}

/** One probe: where it goes in the file, and whether the kernel emulates the instruction. */
export interface ProbeSite {
  /** Virtual address of the instruction. */
  address: number;
  /** Its offset in the file (what a uprobe is attached at). */
  fileOffset: number;
  /** Emulated (~1 µs a hit) rather than single-stepped (~20 µs). */
  emulated: boolean;
}

/** An executable opened as a Go program. */
export interface GoExecutable {
  elf: ElfFile;
  functions: GoFunctionTable;
  /** "go1.19.8". */
  goVersion: string;
}

/**
 * Go's register ABI (arguments in registers, g in R14) starts at 1.17, the pclntab layout that
 * lib/go_pclntab.ts reads at 1.18: the uprobe plugins support 1.18 and later.
 */
export const MIN_GO = "go1.18";

/** An ELF problem as the reason a plugin leaves the program alone. */
function skipOfElfError(e: ElfError): GoBinarySkip {
  return new GoBinarySkip(e.reason === "not_elf" ? "not_elf" : "corrupt_binary", e.message);
}

/**
 * Opens an executable: its bytes, or an {@linkcode ElfFile} (opened lazily by
 * {@linkcode GoBinaryCache}: only the parts the analysis looks at are read). Throws
 * {@linkcode GoBinarySkip} when it is no usable Go program.
 */
export function openGoExecutable(
  file: Uint8Array | ElfFile,
  what = "the program",
): GoExecutable {
  let elf: ElfFile;
  try {
    elf = file instanceof ElfFile ? file : ElfFile.parse(file);
  } catch (e) {
    throw e instanceof ElfError ? skipOfElfError(e) : e;
  }
  let functions: GoFunctionTable;
  try {
    functions = readGoFunctions(elf);
  } catch (e) {
    if (e instanceof GoPclntabError) {
      // "unsupported": a pre-1.18 pclntab, or a magic newer than any known (its layout too).
      const reason = e.reason === "not_go"
        ? "not_go"
        : e.reason === "malformed"
        ? "corrupt_binary"
        : /Go 1\.(2-1\.15|16-1\.17)/.test(e.message)
        ? "go_too_old"
        : "unknown_go_version";
      throw new GoBinarySkip(reason, e.message);
    }
    if (e instanceof ElfError) throw new GoBinarySkip("corrupt_binary", e.message);
    throw e;
  }
  let goVersion: string | undefined;
  try {
    goVersion = readGoBuildInfo(elf)?.goVersion;
  } catch (e) {
    if (!(e instanceof ElfError)) throw e;
  }
  if (!goVersion || !parseGoVersion(goVersion)) {
    throw new GoBinarySkip("unknown_go_version", "the Go version cannot be read");
  }
  if (compareGoVersions(goVersion, MIN_GO) < 0) {
    throw new GoBinarySkip(
      "go_too_old",
      `${goVersion} passes arguments on the stack (${what} needs ${MIN_GO} or later)`,
    );
  }
  return { elf, functions, goVersion };
}

/** The probe site at `address`; a {@linkcode GoBinarySkip} if the file does not map it. */
export function probeSite(
  elf: ElfFile,
  address: number,
  emulated: boolean,
  what: string,
): ProbeSite {
  const fileOffset = elf.fileOffsetOf(address);
  if (fileOffset === undefined) {
    throw new GoBinarySkip("corrupt_binary", `${what} at 0x${address.toString(16)} is not mapped`);
  }
  return { address, fileOffset, emulated };
}

/** The code of function `name`, or undefined when the program does not have it. */
export function functionCode(
  { elf, functions }: GoExecutable,
  name: string,
): { entry: number; code: Uint8Array } | undefined {
  const fn = functions.lookup(name);
  if (!fn) return undefined;
  const code = elf.bytesAt(fn.entry, fn.end - fn.entry);
  if (!code) throw new GoBinarySkip("corrupt_binary", `the code of ${name} is not in the file`);
  return { entry: fn.entry, code };
}

/** Where an entry probe of function `name` goes (see lib/x86_sites.ts); undefined if absent. */
export function entrySite(exe: GoExecutable, name: string): ProbeSite | undefined {
  const f = functionCode(exe, name);
  if (!f) return undefined;
  const best = wrapDecode(() => findEntryProbeSite(f.code, f.entry));
  return probeSite(exe.elf, best.address, best.emulated, name);
}

/** The RET instructions of function `name` (single-stepped probes); undefined if absent. */
export function returnSites(exe: GoExecutable, name: string): ProbeSite[] | undefined {
  const f = functionCode(exe, name);
  if (!f) return undefined;
  const returns = wrapDecode(() => findReturnSites(f.code, f.entry));
  if (returns.length === 0) throw new GoBinarySkip("corrupt_binary", `no RET found in ${name}`);
  return returns.map((a) => probeSite(exe.elf, a, false, `${name} RET`));
}

/** Code that does not decode as x86-64 where a function should be: never guess a probe site. */
function wrapDecode<T>(decode: () => T): T {
  try {
    return decode();
  } catch (e) {
    if (e instanceof X86DecodeError) throw new GoBinarySkip("corrupt_binary", e.message);
    throw e;
  }
}

/** A file's identity: a binary replaced on disk is analysed again. */
function identity(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return `${st.dev}:${st.ino}:${st.size}:${st.mtime?.getTime()}`;
  } catch {
    return undefined;
  }
}

/** Analyses cached by file identity (a Go binary is tens of MB: read each one once). */
export class GoBinaryCache<T> {
  readonly #results = new Map<string, T | GoBinarySkip>();
  readonly #analyze: (file: Uint8Array | ElfFile) => T;
  readonly #max: number;

  /** `analyze` throws {@linkcode GoBinarySkip} for a binary it cannot use. */
  constructor(analyze: (file: Uint8Array | ElfFile) => T, max = 256) {
    this.#analyze = analyze;
    this.#max = max;
  }

  /** The analysis of the file at `path`, or the reason it cannot be used. */
  analyze(path: string): T | GoBinarySkip {
    const id = identity(path);
    if (!id) return new GoBinarySkip("unreadable", `cannot stat ${path}`);
    const known = this.#results.get(id);
    if (known) return known;
    let result: T | GoBinarySkip;
    let elf: ElfFile | undefined;
    try {
      // Lazily: a 100 MB executable is not read whole to find a few functions; and what was
      // read is freed at once (the analysis keeps nothing of the file).
      elf = ElfFile.open(path);
      result = this.#analyze(elf);
    } catch (e) {
      if (e instanceof GoBinarySkip) result = e;
      else if (e instanceof ElfError) result = skipOfElfError(e);
      else if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.PermissionDenied) {
        result = new GoBinarySkip("unreadable", `cannot read ${path}: ${(e as Error).message}`);
      } else throw e;
    } finally {
      elf?.release();
    }
    if (this.#results.size >= this.#max) this.#results.clear();
    this.#results.set(id, result);
    return result;
  }
}

/**
 * Reads only the ELF section header names: a Go executable has `.gopclntab` (or `.go.buildinfo`).
 * Cheap enough to ask for every new process's executable.
 */
export function looksLikeGo(path: string): boolean {
  let file: Deno.FsFile | undefined;
  try {
    file = Deno.openSync(path);
    const header = new Uint8Array(64);
    if (file.readSync(header) !== 64) return false;
    const h = new DataView(header.buffer);
    if (h.getUint32(0) !== 0x7f454c46 || header[4] !== 2 || header[5] !== 1) return false;
    const shoff = Number(h.getBigUint64(0x28, true));
    const shentsize = h.getUint16(0x3a, true);
    const shnum = h.getUint16(0x3c, true);
    const shstrndx = h.getUint16(0x3e, true);
    if (!shoff || shentsize !== 64 || shnum === 0 || shstrndx >= shnum || shnum > 4096) {
      return false;
    }
    const table = new Uint8Array(shnum * 64);
    file.seekSync(shoff, Deno.SeekMode.Start);
    if (readFull(file, table) !== table.length) return false;
    const t = new DataView(table.buffer);
    const strOff = Number(t.getBigUint64(shstrndx * 64 + 0x18, true));
    const strSize = Math.min(Number(t.getBigUint64(shstrndx * 64 + 0x20, true)), 1 << 16);
    const names = new Uint8Array(strSize);
    file.seekSync(strOff, Deno.SeekMode.Start);
    if (readFull(file, names) !== names.length) return false;
    const text = new TextDecoder("latin1").decode(names);
    return text.includes(".gopclntab\0") || text.includes(".go.buildinfo\0");
  } catch {
    return false;
  } finally {
    file?.close();
  }
}

function readFull(file: Deno.FsFile, into: Uint8Array): number {
  let got = 0;
  while (got < into.length) {
    const n = file.readSync(into.subarray(got));
    if (n === null) break;
    got += n;
  }
  return got;
}
