/**
 * The executables the binary readers' tests (lib/elf_test.ts, lib/go_pclntab_test.ts,
 * lib/go_buildinfo_test.ts, lib/dwarf_test.ts, lib/x86_sites_test.ts) read, and whether this
 * machine has them: the fixture server built with the machine's Go (go_build.ts), esbuild and
 * buf from npm (npm_binaries.ts), and programs a distribution installs (`/usr/bin/hey`). Plus
 * what those tests do to such a binary (strip its section headers, flip random bytes) and
 * expect of it (a typed error).
 *
 * @module
 */
import assert from "node:assert/strict";
import { ElfFile } from "../../lib/elf.ts";
import { buildGoFixture } from "./go_build.ts";
import { npmBinary } from "./npm_binaries.ts";
import { inCi } from "./privileges.ts";

function runs(cmd: string, args: string[]): boolean {
  try {
    return new Deno.Command(cmd, { args, stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
}

let go: boolean | undefined;
let npm: boolean | undefined;

/**
 * Whether Go is installed. `go version`: Go has no `--version` flag, so tools.ts's `hasTool`
 * says no even where Go is there.
 */
export function haveGo(): boolean {
  return go ??= runs("go", ["version"]);
}

/** Whether npm is installed (to fetch esbuild and buf). */
export function haveNpm(): boolean {
  return npm ??= runs("npm", ["--version"]);
}

/** Whether `path` is a file (e.g. `/usr/bin/prometheus`, a Go program Debian ships). */
export function fileExists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Test options: skipped without the tool or file, except in CI, where it must be there. */
export function needs(ok: boolean): { ignore: boolean } {
  return { ignore: !ok && !inCi() };
}

/** The fixture server (tests/fixtures/go_http/server) built with the machine's Go, cached. */
export function goServerPath(stripped = false): Promise<string> {
  return buildGoFixture("go_http/server", { stripped });
}

/** esbuild's executable: Go 1.26, stripped, no `.go.buildinfo`. */
export function esbuildPath(): Promise<string> {
  return npmBinary("@esbuild/linux-x64", "bin/esbuild");
}

/** buf's executable: stripped, module mode, a Go newer than 1.26. */
export function bufPath(): Promise<string> {
  return npmBinary("@bufbuild/buf-linux-x64", "bin/buf");
}

/** The ELF file at `path`, read whole. */
export function readElf(path: string): ElfFile {
  return ElfFile.parse(Deno.readFileSync(path));
}

/** The fixture server, parsed: with `.symtab` and DWARF, or built with `-ldflags "-s -w"`. */
export async function goServer(stripped = false): Promise<ElfFile> {
  return readElf(await goServerPath(stripped));
}

/** esbuild, parsed (see {@link esbuildPath}). */
export async function esbuild(): Promise<ElfFile> {
  return readElf(await esbuildPath());
}

/** buf, parsed (see {@link bufPath}). */
export async function buf(): Promise<ElfFile> {
  return readElf(await bufPath());
}

/** The error `f` throws, which must be a `type` (ElfError, GoPclntabError...); fails if none. */
export function errorOf<E extends Error>(type: new (...args: never[]) => E, f: () => unknown): E {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof type, `expected a ${type.name}, got ${e}`);
    return e;
  }
  assert.fail(`no error, where a ${type.name} was expected`);
}

/** A copy of an ELF file without its section header table, as some packers leave them. */
export function withoutSectionHeaders(elf: ElfFile): ElfFile {
  const copy = elf.bytes.slice();
  const view = new DataView(copy.buffer);
  view.setBigUint64(0x28, 0n, true); // e_shoff
  view.setUint16(0x3c, 0, true); // e_shnum
  view.setUint16(0x3e, 0, true); // e_shstrndx
  return ElfFile.parse(copy);
}

/** A small deterministic PRNG (mulberry32): failures reproduce. */
export function random(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** How {@link withRandomFlips} damages a binary. */
export interface FlipOptions {
  /** Of {@link random}: the same seed flips the same bytes. */
  seed: number;
  rounds: number;
  /** Each round flips 1 to `maxFlips` bytes. */
  maxFlips: number;
  /** Where the flipped bytes are: [start, end) offsets in `bytes`, one picked per flip. */
  regions: readonly (readonly [number, number])[];
}

/**
 * `rounds` times: sets a few random bytes of `bytes` (in place) to random values, calls
 * `check(bytes)`, then puts the bytes back for the next round.
 */
export function withRandomFlips(
  bytes: Uint8Array,
  options: FlipOptions,
  check: (bytes: Uint8Array) => void,
): void {
  const { regions } = options;
  const next = random(options.seed);
  for (let i = 0; i < options.rounds; i++) {
    const flips: [number, number][] = [];
    for (let k = 1 + Math.floor(next() * options.maxFlips); k > 0; k--) {
      const [start, end] = regions[Math.floor(next() * regions.length)];
      const at = start + Math.floor(next() * (end - start));
      flips.push([at, bytes[at]]);
      bytes[at] = Math.floor(next() * 256);
    }
    check(bytes);
    for (const [at, old] of flips.reverse()) bytes[at] = old; // Undo, for the next round.
  }
}
