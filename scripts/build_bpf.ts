/**
 * Builds every `*.bpf.c` of the project into the `*.bpf.o` committed beside it.
 *
 *   deno run -A scripts/build_bpf.ts           rebuild the committed objects
 *   deno run -A scripts/build_bpf.ts --check   rebuild into a temp dir and compare (CI)
 *
 * clang -target bpf, CO-RE against the committed bpf/vmlinux.h, libbpf's headers from the
 * Debian package libbpf-dev. DWARF is stripped after compiling (BTF stays): it would embed
 * the checkout's absolute path and make objects differ between machines.
 *
 * @module
 */
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
/** Folders searched for BPF sources. */
const SOURCE_DIRS = ["plugins", "examples", "bench", "tests/fixtures/bpf"];

export const CLANG_FLAGS = [
  "-O2",
  "-g",
  "-Wall",
  "-Werror",
  "-target",
  "bpf",
  "-mcpu=v3",
  "-D__TARGET_ARCH_x86",
  "-fno-ident",
  `-fdebug-prefix-map=${ROOT}=.`,
  "-Ibpf",
];

/** Every `.bpf.c` under the source folders, relative to the repository root. */
export async function findBpfSources(): Promise<string[]> {
  const found: string[] = [];
  async function walk(dir: string): Promise<void> {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(join(ROOT, dir))];
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      const path = join(dir, entry.name);
      if (entry.isDirectory) await walk(path);
      else if (entry.name.endsWith(".bpf.c")) found.push(path);
    }
  }
  for (const dir of SOURCE_DIRS) await walk(dir);
  return found;
}

async function run(cmd: string, args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, cwd: ROOT, stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new Error(`${cmd} not found: install the Debian packages clang, llvm and libbpf-dev`);
    }
    throw e;
  }
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${err}`);
  }
}

/** Compiles `source` (relative path) into `output` (absolute path). */
export async function compileBpf(source: string, output: string): Promise<void> {
  await run("clang", [...CLANG_FLAGS, `-I${dirname(source)}`, "-c", source, "-o", output]);
  await run("llvm-strip", ["-g", output]);
}

/** The committed object of a source. */
export function objectPathOf(source: string): string {
  return join(ROOT, source.replace(/\.c$/, ".o"));
}

/** Rebuilds every source into a temp dir; returns the sources whose committed object differs. */
export async function staleObjects(): Promise<string[]> {
  const tmp = await Deno.makeTempDir({ prefix: "redprobe-bpf-" });
  try {
    const stale: string[] = [];
    for (const source of await findBpfSources()) {
      const fresh = join(tmp, source.replaceAll("/", "_") + ".o");
      await compileBpf(source, fresh);
      let committed: Uint8Array;
      try {
        committed = await Deno.readFile(objectPathOf(source));
      } catch {
        stale.push(source);
        continue;
      }
      const built = await Deno.readFile(fresh);
      if (built.length !== committed.length || built.some((b, i) => b !== committed[i])) {
        stale.push(source);
      }
    }
    return stale;
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) {
  if (Deno.args.includes("--check")) {
    const stale = await staleObjects();
    if (stale.length) {
      console.error(`Stale BPF objects (run: deno task build:bpf): ${stale.join(", ")}`);
      Deno.exit(1);
    }
    console.log("BPF objects match their sources");
  } else {
    for (const source of await findBpfSources()) {
      await compileBpf(source, objectPathOf(source));
      console.log(`built ${relative(ROOT, objectPathOf(source))}`);
    }
  }
}
