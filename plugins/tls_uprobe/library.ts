/**
 * Where tls-uprobe's probes go in one ELF file that contains OpenSSL's record-layer functions
 * (a libssl.so, or a program that links OpenSSL statically and exports its symbols, as Node.js
 * does), and the cache of those analyses by file identity.
 *
 * For each of SSL_read, SSL_write, SSL_read_ex and SSL_write_ex present in the file: the entry
 * site (tls_enter, the cheapest instruction that still sees the arguments) and the exit: plain
 * uprobes on emulated instructions where RAX already holds the result, or, when the function
 * has none, a uretprobe on its entry (see tls_uprobe.bpf.c for why and what each costs).
 *
 * @module
 */
import { ElfError, ElfFile } from "../../lib/elf.ts";
import {
  findOpenSslFunctions,
  type OpenSslFunctionName,
  opensslVersion,
} from "../../lib/openssl.ts";
import {
  findCEntryProbeSite,
  findReturnValueSites,
  type UprobeHandling,
  X86DecodeError,
} from "../../lib/x86_decoder.ts";

/** Cookie bits of an entry site (TLS_FN_* in tls_uprobe.bpf.c). */
export const TlsFn = { write: 1, ex: 2 } as const;

/** The functions probed, with their cookie. */
export const PROBED_FUNCTIONS: Readonly<Partial<Record<OpenSslFunctionName, number>>> = {
  SSL_read: 0,
  SSL_write: TlsFn.write,
  SSL_read_ex: TlsFn.ex,
  SSL_write_ex: TlsFn.write | TlsFn.ex,
};

/** Where to probe one file. Offsets are file offsets (what a uprobe attaches at). */
export interface TlsProbePlan {
  /** `dev:ino` of the file: one attachment per file, whatever the number of processes. */
  fileId: string;
  /** tls_enter sites and their cookies. */
  entries: { offset: number; cookie: bigint }[];
  /** tls_exit as plain uprobes. */
  exitSites: number[];
  /** tls_exit as uretprobes: entries of the functions without an exit site. */
  returnProbes: number[];
  /** tls_free: SSL_free, where a connection's state is dropped (its SSL pointer may be reused). */
  frees: number[];
  /** Per function, how its probes are handled (for logs and the benchmark's hit costs). */
  functions: Record<string, { entry: UprobeHandling; exit: "emulated" | "uretprobe" }>;
  /** OpenSSL's version text when the file holds it (static builds; libcrypto for a libssl). */
  version?: string;
}

/** `dev:ino` of a file, or undefined when it cannot be stat'ed. */
export function fileIdOf(path: string): string | undefined {
  try {
    const st = Deno.statSync(path);
    return `${st.dev}:${st.ino}`;
  } catch {
    return undefined;
  }
}

/**
 * The probe plan of an ELF image, or undefined when it defines neither SSL_read nor SSL_write
 * (a program that only imports them from libssl.so, or no OpenSSL at all).
 */
export function planTlsProbes(elf: ElfFile, fileId: string): TlsProbePlan | undefined {
  const found = findOpenSslFunctions(elf);
  if (!found.SSL_read && !found.SSL_write) return undefined;
  const plan: TlsProbePlan = {
    fileId,
    entries: [],
    exitSites: [],
    returnProbes: [],
    frees: [],
    functions: {},
    version: opensslVersion(elf),
  };
  if (found.SSL_free) {
    const fn = found.SSL_free;
    const code = fn.size > 0 ? elf.bytesAt(fn.address, fn.size) : undefined;
    let site = fn.address;
    try {
      if (code) site = findCEntryProbeSite(code, fn.address).address;
    } catch (e) {
      if (!(e instanceof X86DecodeError)) throw e;
    }
    const offset = elf.fileOffsetOf(site);
    if (offset !== undefined) plan.frees.push(offset);
  }
  for (const [name, cookie] of Object.entries(PROBED_FUNCTIONS)) {
    const fn = found[name as OpenSslFunctionName];
    if (!fn) continue;
    const code = fn.size > 0 ? elf.bytesAt(fn.address, fn.size) : undefined;
    let entry = { address: fn.address, handling: "single-stepped" as UprobeHandling };
    let exits: number[] | undefined;
    if (code) {
      try {
        entry = findCEntryProbeSite(code, fn.address);
        exits = findReturnValueSites(code, fn.address);
      } catch (e) {
        if (!(e instanceof X86DecodeError)) throw e;
      }
    }
    const entryOffset = elf.fileOffsetOf(entry.address);
    const exitOffsets = exits?.map((a) => elf.fileOffsetOf(a));
    if (entryOffset === undefined) continue;
    plan.entries.push({ offset: entryOffset, cookie: BigInt(cookie) });
    if (exitOffsets && exitOffsets.length > 0 && exitOffsets.every((o) => o !== undefined)) {
      plan.exitSites.push(...exitOffsets as number[]);
      plan.functions[name] = { entry: entry.handling, exit: "emulated" };
    } else {
      plan.returnProbes.push(fn.fileOffset);
      plan.functions[name] = { entry: entry.handling, exit: "uretprobe" };
    }
  }
  return plan;
}

/** Plans cached by file identity (node is ~100 MB: read each file once). */
export class TlsProbePlanCache {
  readonly #plans = new Map<string, TlsProbePlan | undefined>();

  /** The plan of the file at `path`; undefined when it has no OpenSSL or cannot be read. */
  plan(path: string): TlsProbePlan | undefined {
    const id = fileIdOf(path);
    if (id === undefined) return undefined;
    if (this.#plans.has(id)) return this.#plans.get(id);
    let plan: TlsProbePlan | undefined;
    let elf: ElfFile | undefined;
    try {
      // Lazily: node's 100 MB executable is not read whole for its symbols and a few functions;
      // and what was read is freed at once (the plan keeps nothing of the file).
      elf = ElfFile.open(path);
      plan = planTlsProbes(elf, id);
    } catch (e) {
      if (
        !(e instanceof ElfError || e instanceof Deno.errors.NotFound ||
          e instanceof Deno.errors.PermissionDenied)
      ) throw e;
    } finally {
      elf?.release();
    }
    if (this.#plans.size >= 256) this.#plans.clear();
    this.#plans.set(id, plan);
    return plan;
  }
}
