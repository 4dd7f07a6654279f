/**
 * Builds the Go programs of `tests/fixtures/` with the machine's Go (Debian's golang-go), once
 * per source content: the binaries are cached under `.cache/go/` by a hash of the sources and
 * the Go version, so a rerun does not rebuild. GOPATH mode (no module proxy on these machines).
 *
 * @module
 */
import { fromFileUrl, join } from "./paths.ts";

const ROOT = fromFileUrl(new URL("../../", import.meta.url).href);
const CACHE = join(ROOT, ".cache", "go");

/** A Go program of the fixtures, by directory under tests/fixtures/. */
export type GoFixture = "go_http/server" | "go_http/client" | string;

export interface GoBuildOptions {
  /** `-ldflags "-s -w"`: no symbol table and no DWARF, as Go programs usually ship. */
  stripped?: boolean;
  /** GOPATH for imports outside the standard library (e.g. /usr/share/gocode). */
  gopath?: string;
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
  const hash = await sourceHash(dir, `${await machineGoVersion()}|${flavour}|${options.gopath}`);
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
  await run("go", args, {
    GO111MODULE: "off",
    GOFLAGS: "",
    GOCACHE: join(ROOT, ".cache", "go-build"),
    ...(options.gopath ? { GOPATH: options.gopath } : {}),
  }, dir);
  Deno.renameSync(tmp, out);
  return out;
}
