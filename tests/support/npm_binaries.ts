/**
 * Real third-party Go executables for the binary readers' tests, from npm: esbuild (Go 1.26,
 * stripped, no `.go.buildinfo`) and buf (stripped, module mode, newer Go). Installed once at a
 * pinned version under `.cache/npm/` and reused.
 *
 * Each package gets its own npm prefix (`.cache/npm/<package>@<version>/`): `npm install
 * --no-save` into a shared prefix removes the packages it did not install this time (they are
 * "extraneous" to the empty package.json), so installing buf would delete esbuild.
 *
 * @module
 */
import { fromFileUrl, join } from "./paths.ts";

const ROOT = fromFileUrl(new URL("../../", import.meta.url).href);
const CACHE = join(ROOT, ".cache", "npm");

/** The packages, pinned: tests assert facts (Go version, sections) of these exact builds. */
const VERSIONS = {
  "@esbuild/linux-x64": "0.28.2",
  "@bufbuild/buf-linux-x64": "1.75.0",
} as const;

export type NpmBinaryPackage = keyof typeof VERSIONS;

const installs = new Map<string, Promise<string>>();

/**
 * Installs `pkg` at its pinned version (once; skipped when already there) and returns the
 * absolute path of its executable `bin` (e.g. "bin/esbuild").
 */
export async function npmBinary(pkg: NpmBinaryPackage, bin: string): Promise<string> {
  const version = VERSIONS[pkg];
  const prefix = join(CACHE, `${pkg.replace("/", "+")}@${version}`);
  const path = join(prefix, "node_modules", pkg, bin);
  let install = installs.get(prefix);
  if (install === undefined) {
    install = installOnce(`${pkg}@${version}`, prefix);
    installs.set(prefix, install);
    install.catch(() => installs.delete(prefix)); // A failed install may be retried.
  }
  await install;
  Deno.statSync(path); // A wrong `bin` fails here, naming the path.
  return path;
}

async function installOnce(spec: string, prefix: string): Promise<string> {
  if (exists(join(prefix, "node_modules"))) return prefix;
  // Into a private directory first, then renamed: a concurrent test process never sees a
  // half-installed package, and the loser of a race just discards its copy.
  const tmp = `${prefix}.${Deno.pid}.tmp`;
  Deno.mkdirSync(tmp, { recursive: true });
  const args = ["install", "--no-save", "--no-audit", "--no-fund", "--prefix", tmp, spec];
  const out = await new Deno.Command("npm", { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) {
    Deno.removeSync(tmp, { recursive: true });
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    throw new Error(`npm ${args.join(" ")} failed:\n${text}`);
  }
  try {
    Deno.renameSync(tmp, prefix);
  } catch (e) {
    Deno.removeSync(tmp, { recursive: true });
    if (!exists(join(prefix, "node_modules"))) throw e;
  }
  return prefix;
}

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
