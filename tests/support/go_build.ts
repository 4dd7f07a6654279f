/**
 * Builds the Go programs of `tests/fixtures/` with the machine's Go (Debian's golang-go), once
 * per source content: the binaries are cached under `.cache/go/` by a hash of the sources and
 * the Go version, so a rerun does not rebuild. GOPATH mode (no module proxy on these machines).
 *
 * @module
 */
import { dirname, fromFileUrl, join } from "./paths.ts";

const ROOT = fromFileUrl(new URL("../../", import.meta.url).href);
const CACHE = join(ROOT, ".cache", "go");

/** A Go program of the fixtures, by directory under tests/fixtures/. */
export type GoFixture = "go_http/server" | "go_http/client" | string;

export interface GoBuildOptions {
  /** `-ldflags "-s -w"`: no symbol table and no DWARF, as Go programs usually ship. */
  stripped?: boolean;
  /** GOPATH for imports outside the standard library (e.g. /usr/share/gocode). */
  gopath?: string;
  /**
   * Build in module mode, as real programs are, with these modules (path -> version) vendored
   * from `gopath`'s sources: the binary's build info then lists them as dependencies, which a
   * GOPATH build does not. Every non-standard package the program imports must belong to one.
   */
  modules?: Record<string, string>;
}

async function run(cmd: string, args: string[], env: Record<string, string> = {}, cwd = ROOT) {
  const out = await new Deno.Command(cmd, { args, env, cwd, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text;
}

async function sourceHash(dir: string, extra: string): Promise<string> {
  const parts: string[] = [extra];
  for (const entry of [...Deno.readDirSync(dir)].sort((a, b) => a.name.localeCompare(b.name))) {
    if (entry.isFile) parts.push(entry.name, Deno.readTextFileSync(join(dir, entry.name)));
  }
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(parts.join("\0")));
  return [...new Uint8Array(digest).slice(0, 8)].map((b) => b.toString(16).padStart(2, "0"))
    .join("");
}

let goVersion: Promise<string> | undefined;

/** `go version` of the machine's Go ("go version go1.19.8 linux/amd64"). */
export function machineGoVersion(): Promise<string> {
  return goVersion ??= run("go", ["version"]).then((s) => s.trim());
}

/** Builds `tests/fixtures/<fixture>` (cached) and returns the binary's absolute path. */
export async function buildGoFixture(
  fixture: GoFixture,
  options: GoBuildOptions = {},
): Promise<string> {
  const dir = join(ROOT, "tests", "fixtures", fixture);
  const flavour = options.stripped ? "stripped" : "full";
  const hash = await sourceHash(
    dir,
    `${await machineGoVersion()}|${flavour}|${options.gopath}|${JSON.stringify(options.modules)}`,
  );
  const out = join(CACHE, `${fixture.replaceAll("/", "-")}-${flavour}-${hash}`);
  try {
    Deno.statSync(out);
    return out;
  } catch { /* not built yet */ }
  Deno.mkdirSync(CACHE, { recursive: true });
  const tmp = `${out}.${Deno.pid}.tmp`;
  const args = ["build", "-o", tmp];
  if (options.stripped) args.push("-ldflags", "-s -w");
  args.push(".");
  const gopathEnv = {
    GO111MODULE: "off",
    GOFLAGS: "",
    GOCACHE: join(ROOT, ".cache", "go-build"),
    ...(options.gopath ? { GOPATH: options.gopath } : {}),
  };
  if (options.modules) {
    const work = await vendoredTree(dir, fixture, options.modules, options.gopath ?? "", gopathEnv);
    try {
      await run("go", ["build", "-mod=vendor", "-o", tmp, ...args.slice(3)], {
        ...gopathEnv,
        GO111MODULE: "on",
        GOPROXY: "off",
        GOPATH: join(ROOT, ".cache", "gopath"),
        GOFLAGS: "-mod=vendor",
      }, work);
    } finally {
      await Deno.remove(work, { recursive: true });
    }
  } else {
    await run("go", args, gopathEnv, dir);
  }
  Deno.renameSync(tmp, out);
  return out;
}

/**
 * A module-mode copy of the fixture: its sources, a go.mod requiring `modules`, and a vendor/
 * directory whose module roots are symlinks into `gopath`'s sources, with the modules.txt the
 * go command checks against go.mod.
 */
async function vendoredTree(
  dir: string,
  fixture: string,
  modules: Record<string, string>,
  gopath: string,
  gopathEnv: Record<string, string>,
): Promise<string> {
  const listed = await run(
    "go",
    ["list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "."],
    gopathEnv,
    dir,
  );
  const packages = listed.split("\n").map((l) => l.trim()).filter((p) => p && !p.startsWith("_"));
  const byModule = new Map<string, string[]>(Object.keys(modules).map((m) => [m, []]));
  for (const pkg of packages) {
    const owner = Object.keys(modules).filter((m) => pkg === m || pkg.startsWith(`${m}/`))
      .sort((a, b) => b.length - a.length)[0];
    if (!owner) {
      throw new Error(`${fixture}: package ${pkg} belongs to none of ${Object.keys(modules)}`);
    }
    byModule.get(owner)!.push(pkg);
  }
  const work = await Deno.makeTempDir({ prefix: "redprobe-gomod-" });
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.isFile) await Deno.copyFile(join(dir, entry.name), join(work, entry.name));
  }
  const requires = Object.entries(modules).map(([m, v]) => `\t${m} ${v}`).join("\n");
  const name = `redprobe.test/${fixture}`;
  await Deno.writeTextFile(
    join(work, "go.mod"),
    `module ${name}\n\ngo 1.19\n\nrequire (\n${requires}\n)\n`,
  );
  let txt = "";
  for (const [m, v] of Object.entries(modules)) {
    txt += `# ${m} ${v}\n## explicit; go 1.19\n${
      byModule.get(m)!.sort().map((p) => `${p}\n`).join("")
    }`;
    const link = join(work, "vendor", m);
    await Deno.mkdir(dirname(link), { recursive: true });
    await Deno.symlink(join(gopath, "src", m), link);
  }
  await Deno.writeTextFile(join(work, "vendor", "modules.txt"), txt);
  return work;
}
