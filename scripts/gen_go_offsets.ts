/**
 * Writes `plugins/go_http/offsets.json`: the byte offsets of the net/http struct fields that the
 * go-http probes read, per Go minor version, for binaries that ship without DWARF (most do).
 * Binaries with DWARF are read directly (lib/dwarf.ts); this table is the fallback.
 *
 *   deno run -A scripts/gen_go_offsets.ts [--go /path/to/go]...           regenerate
 *   deno run -A scripts/gen_go_offsets.ts --check [--go /path/to/go]...   compare (CI)
 *
 * For each toolchain (the `go` on PATH, plus every `--go`), it builds the net/http server of
 * tests/fixtures/go_http/server (it links the server, the client and TLS) and reads the offsets
 * from the binary's DWARF. Toolchains of the same minor version (go1.19.8, go1.19.13) must agree,
 * or the script fails and names the fields that differ. Versions already in the file that no
 * toolchain here can rebuild are kept as they are (and `--check` says it could not check them).
 *
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { readStructFields } from "../lib/dwarf.ts";
import { ElfFile } from "../lib/elf.ts";
import { buildGoFixture, machineGoVersion } from "../tests/support/go_build.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
export const OFFSETS_PATH = join(ROOT, "plugins", "go_http", "offsets.json");
export const GENERATED_BY = "deno run -A scripts/gen_go_offsets.ts";
const FIXTURE = "go_http/server";

/** The struct fields the table holds, by DWARF type name. */
export const WANTED: Record<string, string[]> = {
  // Server and client requests: method, path (through URL), host, body size, TLS or not.
  "net/http.Request": [
    "Method",
    "URL",
    "ContentLength",
    "TLS",
    "Host",
    "RemoteAddr",
    "RequestURI",
  ],
  "net/url.URL": ["Scheme", "Host", "Path"],
  // The server's ResponseWriter: status (0 until WriteHeader), bytes written, its request.
  "net/http.response": ["conn", "req", "status", "wroteHeader", "contentLength", "written"],
  // The client's result.
  "net/http.Response": ["StatusCode", "ContentLength", "Request"],
  // From a connection to its socket fd, to tie requests to the kernel's view of the socket:
  // http.conn.rwc / persistConn.conn (net.Conn) -> *net.TCPConn (embeds net.conn at 0) or
  // *tls.Conn (.conn) -> net.conn.fd -> netFD.pfd -> poll.FD.Sysfd.
  "net/http.conn": ["rwc"],
  "net/http.persistConn": ["conn"],
  "crypto/tls.Conn": ["conn"],
  "net.conn": ["fd"],
  "net.netFD": ["pfd"],
  "internal/poll.FD": ["Sysfd"],
};

/** Every "type.field" of {@linkcode WANTED}, in order. */
export const FIELDS: string[] = Object.entries(WANTED).flatMap(([type, fields]) =>
  fields.map((field) => `${type}.${field}`)
);

/** The layout of offsets.json. */
export interface OffsetsFile {
  generatedBy: string;
  fields: string[];
  /** Minor version ("go1.19") to "type.field" to byte offset; fields a version lacks are absent. */
  versions: Record<string, Record<string, number>>;
  /**
   * Written by hand and kept by the script: fields known not to move over a range of Go
   * versions, so versions no toolchain here can build may use the nearest generated entry for
   * exactly these fields. `basis` says why that is safe.
   */
  stable?: { from: string; to: string; fields: string[]; basis: string };
}

/** The offsets read from one toolchain's build. */
export interface ToolchainOffsets {
  /** `go version`'s version ("go1.19.8"). */
  version: string;
  offsets: Record<string, number>;
}

/** "go1.19" of "go1.19.8" (and of "go1.21rc2", "go1.19"). */
export function minorVersion(version: string): string {
  const m = version.match(/^go(\d+)\.(\d+)/);
  if (!m) throw new Error(`Cannot read the Go version "${version}"`);
  return `go${m[1]}.${m[2]}`;
}

/** The table's offsets in one Go binary with DWARF, keyed "type.field". */
export function offsetsOfBinary(bytes: Uint8Array): Record<string, number> {
  const found = readStructFields(ElfFile.parse(bytes), WANTED);
  if (found.size === 0) throw new Error("the binary has no DWARF (or none of the types)");
  const offsets: Record<string, number> = {};
  for (const [type, fields] of Object.entries(WANTED)) {
    for (const field of fields) {
      const offset = found.get(type)?.get(field);
      if (offset !== undefined) offsets[`${type}.${field}`] = offset;
    }
  }
  return offsets;
}

async function run(cmd: string, args: string[], cwd = ROOT, env: Record<string, string> = {}) {
  const out = await new Deno.Command(cmd, { args, cwd, env, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return text.trim();
}

/** `go version` of a toolchain: "go1.19.8". */
export async function toolchainVersion(go: string): Promise<string> {
  const text = await run(go, ["version"]);
  const m = text.match(/^go version (go\S+) /);
  if (!m) throw new Error(`Cannot read the version of ${go}: "${text}"`);
  return m[1];
}

/**
 * Builds the fixture with one toolchain and reads its offsets. The `go` on PATH goes through
 * tests/support/go_build.ts (cached); another toolchain builds into a temporary directory.
 */
export async function offsetsOfToolchain(go: string): Promise<ToolchainOffsets> {
  const version = await toolchainVersion(go);
  if (go === "go" || version === (await machineGoVersion()).split(" ")[2]) {
    const binary = await buildGoFixture(FIXTURE);
    return { version, offsets: offsetsOfBinary(Deno.readFileSync(binary)) };
  }
  const dir = await Deno.makeTempDir({ prefix: "gen_go_offsets_" });
  try {
    const binary = join(dir, "server");
    await run(go, ["build", "-o", binary, "."], join(ROOT, "tests", "fixtures", FIXTURE), {
      GO111MODULE: "off",
      GOFLAGS: "",
      // Go 1.21+ would otherwise try to download the toolchain a go.mod asks for.
      GOTOOLCHAIN: "local",
      GOCACHE: join(ROOT, ".cache", "go-build"),
    });
    return { version, offsets: offsetsOfBinary(await Deno.readFile(binary)) };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Groups toolchains by minor version; throws if two of one minor version disagree, naming
 * the fields.
 */
export function byMinorVersion(
  results: ToolchainOffsets[],
): Map<string, { versions: string[]; offsets: Record<string, number> }> {
  const out = new Map<string, { versions: string[]; offsets: Record<string, number> }>();
  for (const result of results) {
    const minor = minorVersion(result.version);
    const seen = out.get(minor);
    if (!seen) {
      out.set(minor, { versions: [result.version], offsets: result.offsets });
      continue;
    }
    const differ = differences(seen.offsets, result.offsets);
    if (differ.length) {
      throw new Error(
        `${seen.versions[0]} and ${result.version} lay out ${minor} differently ` +
          `(${differ.join("; ")}): the table needs a key per patch release`,
      );
    }
    if (!seen.versions.includes(result.version)) seen.versions.push(result.version);
  }
  return out;
}

function differences(a: Record<string, number>, b: Record<string, number>): string[] {
  const out: string[] = [];
  for (const field of new Set([...Object.keys(a), ...Object.keys(b)])) {
    if (a[field] !== b[field]) {
      out.push(`${field}: ${a[field] ?? "absent"} vs ${b[field] ?? "absent"}`);
    }
  }
  return out;
}

/** Compares Go minor versions numerically ("go1.9" < "go1.19"). */
function compareVersions(a: string, b: string): number {
  const [am, an] = a.slice(2).split(".").map(Number);
  const [bm, bn] = b.slice(2).split(".").map(Number);
  return am - bm || an - bn;
}

/**
 * The file to write: the freshly generated versions, plus the committed versions no toolchain
 * here rebuilt, as long as they were generated for the same field list.
 */
export function mergeOffsets(
  committed: OffsetsFile | undefined,
  generated: Map<string, { offsets: Record<string, number> }>,
): { file: OffsetsFile; kept: string[]; dropped: string[] } {
  const versions: Record<string, Record<string, number>> = {};
  const kept: string[] = [];
  const dropped: string[] = [];
  const sameFields = committed !== undefined &&
    JSON.stringify(committed.fields) === JSON.stringify(FIELDS);
  for (const [minor, offsets] of Object.entries(committed?.versions ?? {})) {
    if (generated.has(minor)) continue;
    if (sameFields) {
      versions[minor] = offsets;
      kept.push(minor);
    } else {
      dropped.push(minor);
    }
  }
  for (const [minor, { offsets }] of generated) {
    versions[minor] = Object.fromEntries(
      FIELDS.filter((f) => f in offsets).map((f) => [f, offsets[f]]),
    );
  }
  const sorted = Object.fromEntries(
    Object.keys(versions).sort(compareVersions).map((minor) => [minor, versions[minor]]),
  );
  const file: OffsetsFile = { generatedBy: GENERATED_BY, fields: FIELDS, versions: sorted };
  if (committed?.stable) file.stable = committed.stable;
  return { file, kept, dropped };
}

/**
 * What is wrong with the committed file, given what the toolchains here generate: an empty
 * list when it is up to date for every version that can be checked.
 */
export function compareOffsets(
  committed: OffsetsFile,
  generated: Map<string, { versions: string[]; offsets: Record<string, number> }>,
): string[] {
  const problems: string[] = [];
  if (committed.generatedBy !== GENERATED_BY) problems.push(`generatedBy is not "${GENERATED_BY}"`);
  if (JSON.stringify(committed.fields) !== JSON.stringify(FIELDS)) {
    problems.push("fields differ from the script's list");
  }
  for (const [minor, { versions, offsets }] of generated) {
    const have = committed.versions?.[minor];
    if (!have) {
      problems.push(`${minor} (${versions.join(", ")}) is missing`);
      continue;
    }
    const differ = differences(have, offsets);
    if (differ.length) {
      problems.push(`${minor} differs from ${versions.join(", ")}: ${differ.join("; ")}`);
    }
  }
  return problems;
}

/** offsets.json as committed, or undefined if there is none yet. */
export function readOffsetsFile(path = OFFSETS_PATH): OffsetsFile | undefined {
  try {
    return JSON.parse(Deno.readTextFileSync(path)) as OffsetsFile;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** The text of offsets.json: one field per line, stable across runs. */
export function formatOffsetsFile(file: OffsetsFile): string {
  return JSON.stringify(file, null, 2) + "\n";
}

/** Runs `--check` for the given toolchains: the problems found (none: up to date). */
export async function checkOffsets(toolchains: string[]): Promise<string[]> {
  const committed = readOffsetsFile();
  if (!committed) return [`${OFFSETS_PATH} does not exist: run ${GENERATED_BY}`];
  const generated = byMinorVersion(await Promise.all(toolchains.map(offsetsOfToolchain)));
  return compareOffsets(committed, generated);
}

function parseArgs(args: string[]): { check: boolean; toolchains: string[] } {
  const toolchains = ["go"];
  let check = false;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--check") check = true;
    else if (args[i] === "--go" && args[i + 1]) toolchains.push(args[++i]);
    else if (args[i].startsWith("--go=")) toolchains.push(args[i].slice("--go=".length));
    else {throw new Error(
        `Unknown argument "${args[i]}"\nusage: ${GENERATED_BY} [--check] [--go /path/to/go]...`,
      );}
  }
  return { check, toolchains };
}

async function main(): Promise<number> {
  const { check, toolchains } = parseArgs(Deno.args);
  const generated = byMinorVersion(await Promise.all(toolchains.map(offsetsOfToolchain)));
  for (const [minor, { versions, offsets }] of generated) {
    const same = versions.length > 1 ? `, identical across ${versions.join(", ")}` : "";
    console.log(
      `${minor}: ${Object.keys(offsets).length} of ${FIELDS.length} fields from ${
        versions[0]
      }${same}`,
    );
    const missing = FIELDS.filter((f) => !(f in offsets));
    if (missing.length) console.log(`  not in ${minor}: ${missing.join(", ")}`);
  }
  const committed = readOffsetsFile();
  if (check) {
    const problems = committed
      ? compareOffsets(committed, generated)
      : [`${OFFSETS_PATH} does not exist`];
    const unchecked = Object.keys(committed?.versions ?? {}).filter((v) => !generated.has(v));
    if (unchecked.length) console.log(`not checked (no toolchain here): ${unchecked.join(", ")}`);
    if (problems.length) {
      console.error(
        `offsets.json is out of date; run ${GENERATED_BY}:\n  ${problems.join("\n  ")}`,
      );
      return 1;
    }
    console.log("offsets.json is up to date");
    return 0;
  }
  const { file, kept, dropped } = mergeOffsets(committed, generated);
  if (kept.length) console.log(`kept from the committed file: ${kept.join(", ")}`);
  if (dropped.length) {
    console.log(
      `dropped (made for another field list; regenerate with --go): ${dropped.join(", ")}`,
    );
  }
  Deno.writeTextFileSync(OFFSETS_PATH, formatOffsetsFile(file));
  console.log(`wrote ${OFFSETS_PATH}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());
