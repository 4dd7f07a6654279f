/**
 * Builds the single-file artefact: one JavaScript file with the whole agent in it (every BPF
 * object, the default configuration, the offsets tables, every npm package and the WebAssembly
 * they load), which runs with `deno run -A redprobe.js` on a machine that has Deno and libbpf1
 * and nothing else of this repository, not even Deno's npm cache. The x86 decoder runs in a
 * worker (lib/x86_decoder.ts): its module is bundled on its own and carried in the artefact as
 * a string, from which the agent starts the worker.
 *
 *   deno run -A scripts/bundle.ts                      writes dist/redprobe.js (`deno task bundle`)
 *   deno run -A scripts/bundle.ts --out /tmp/x.js      writes elsewhere
 *   deno run -A scripts/bundle.ts --entry other.ts     bundles another entry point
 *
 * ## Why `deno bundle` and not esbuild from npm
 *
 * `deno bundle` (Deno 2.4+, esbuild inside) resolves exactly like `deno run`: the deno.json
 * import map, `npm:` packages from Deno's cache, `node:` built-ins, and the raw imports of
 * deno.json's `"unstable": ["raw-imports"]`: `.bpf.o` files imported `with { type: "bytes" }`
 * become base64 in the output, `config/default.yaml` (`type: "text"`) a string,
 * `offsets.json` (`type: "json"`) an object. esbuild from npm would need a resolver for Deno's
 * import map and npm cache (the usual one, `@luca/esbuild-deno-loader`, is on JSR, which is not
 * reachable here) and a loader for the raw imports: all of it work `deno bundle` already does,
 * and it adds no dependency (Deno fetches its esbuild from npm once).
 *
 * What `deno bundle` cannot do is the one thing no bundler does by itself: a CommonJS npm module
 * that reads a file beside it at run time. iced-x86 (wasm-bindgen's `nodejs` target) does
 * `require('fs').readFileSync(require('path').join(__dirname, 'iced_x86_bg.wasm'))`, and in an
 * ES module bundle `__dirname` does not even exist. So after bundling, this script goes through
 * every CommonJS module of the output (esbuild wraps each in `__commonJS({ "<path>"(exports,
 * module) { ... } })`, the key being the module's file relative to the bundler's working
 * directory; a key that names no file is an error) that mentions `__dirname` or `__filename`,
 * and:
 *
 * - gives it a `__dirname` and `__filename` of its own, in a virtual folder
 *   (`/redprobe-bundle/npm/<package>/<version>/`), never the build machine's paths;
 * - embeds every file of its package that a string literal of the module names relative to its
 *   folder (`'iced_x86_bg.wasm'`), base64;
 * - hands it, instead of `node:fs`, a copy of `node:fs` whose `readFileSync`, `readFile`,
 *   `promises.readFile`, `existsSync` and `statSync` serve the embedded files at those virtual
 *   paths (and pass everything else to the real `node:fs`).
 *
 * Nothing here names a package: a dependency added later (the @opentelemetry/* packages) is
 * handled the same way. The script refuses to write an artefact that would still need files at
 * run time: a `require()` of anything but a Node built-in left in the output is an error, and
 * so is any remaining reference to Deno's npm cache outside comments and module keys.
 *
 * `deno compile` (`deno task compile`) makes a native executable instead, and needs no such
 * work (it embeds npm packages whole); but it downloads Deno's `denort` runtime first, which
 * only works on a machine that can reach dl.deno.land (not this project's machines).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { AGENT_RUN_FLAGS } from "./lib/agent_flags.ts";
import { BUNDLED_WORKER_SOURCE } from "../lib/x86_decoder.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const DEFAULT_OUT = join(ROOT, "dist", "redprobe.js");
/** Where embedded files appear to live, for the modules that read them. */
const VIRTUAL_ROOT = "/redprobe-bundle";
/** Files a module names but that are code the bundle already holds: never embedded. */
const CODE_FILE = /\.(?:[cm]?[jt]sx?|d\.ts)$/;
const NODE_BUILTINS = new Set(
  (await import("node:module")).builtinModules.map((m) => m.replace(/^node:/, "")),
);

export interface BundleOptions {
  /** Entry point, relative to the repository root or absolute. Default `main.ts`. */
  entry?: string;
  /** Output file. Default `dist/redprobe.js`. */
  out?: string;
  /** Progress lines; default console.error. */
  log?: (line: string) => void;
}

export interface BundleReport {
  out: string;
  bytes: number;
  /** Virtual path -> size of every file embedded for CommonJS modules that read files. */
  embedded: Map<string, number>;
  /** Modules given a virtual `__dirname`, by their virtual file name. */
  patchedModules: string[];
}

/**
 * Runs `deno bundle` on the entry and on the x86 decoder's worker (lib/x86_decoder.ts starts it
 * from the source the bundle hands it), then embeds what CommonJS modules read beside them;
 * writes `out`.
 */
export async function bundle(options: BundleOptions = {}): Promise<BundleReport> {
  const log = options.log ?? ((line: string) => console.error(line));
  const entry = resolve(ROOT, options.entry ?? "main.ts");
  const out = resolve(options.out ?? DEFAULT_OUT);
  const outDir = dirname(out);
  await Deno.mkdir(outDir, { recursive: true });
  const worker = await bundleModule(join(ROOT, "lib", "x86_decoder_worker.ts"), outDir, log);
  // The worker starts from a blob: URL, which node:module's createRequire (esbuild's way to
  // reach Node built-ins) refuses; every require() left is a built-in (checkSelfContained), so
  // any file URL does.
  worker.text = worker.text.replaceAll(
    "createRequire(import.meta.url)",
    `createRequire(${JSON.stringify(`file://${VIRTUAL_ROOT}/x86_decoder_worker.js`)})`,
  );
  const main = await bundleModule(entry, outDir, log);
  const final = `#!/usr/bin/env -S MALLOC_ARENA_MAX=1 deno run -A ${AGENT_RUN_FLAGS.join(" ")}\n` +
    `// redprobe, bundled from ${relative(ROOT, entry)} by scripts/bundle.ts. ` +
    `Run: deno run -A redprobe.js [command] [flags]\n` +
    `globalThis.${BUNDLED_WORKER_SOURCE} = ${JSON.stringify(worker.text)};\n` + main.text;
  await Deno.writeTextFile(out, final);
  await Deno.chmod(out, 0o755); // runnable as ./redprobe.js too (the `#!` line)
  const bytes = new TextEncoder().encode(final).length;
  const embedded = new Map([...worker.embedded, ...main.embedded]);
  for (const [path, size] of embedded) log(`embedded ${path} (${size} bytes)`);
  log(`wrote ${out} (${(bytes / 1e6).toFixed(1)} MB)`);
  return {
    out,
    bytes,
    embedded,
    patchedModules: [...worker.patchedModules, ...main.patchedModules],
  };
}

/** One module and everything it imports, self-contained. */
async function bundleModule(
  entry: string,
  outDir: string,
  log: (line: string) => void,
): Promise<{ text: string; embedded: Map<string, number>; patchedModules: string[] }> {
  const raw = await Deno.makeTempFile({ dir: outDir, prefix: ".redprobe-bundle-", suffix: ".js" });
  try {
    const started = performance.now();
    const result = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "deno", "--format", "esm", "--output", raw, entry],
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    if (!result.success) {
      throw new Error(
        `deno bundle ${relative(ROOT, entry)} failed (exit ${result.code}):\n` +
          dec.decode(result.stdout) + dec.decode(result.stderr),
      );
    }
    const bundled = await Deno.readTextFile(raw);
    log(
      `deno bundle ${relative(ROOT, entry)}: ${(bundled.length / 1e6).toFixed(1)} MB in ${
        Math.round(performance.now() - started)
      } ms`,
    );
    const embedded = await embedModuleFiles(bundled);
    checkSelfContained(embedded.text);
    return embedded;
  } finally {
    await Deno.remove(raw).catch(() => {});
  }
}

/** esbuild's wrapper of one CommonJS module: `var require_x = __commonJS({\n  "key"(exports, module) {\n` */
const CJS_MODULE = /__commonJS\(\{\n\s*("(?:[^"\\\n]|\\.)*")\((exports|[\w$]+)?[^)]*\)\s*\{\n/g;
const USES_DIRNAME = /(?<![\w$.])__(?:dirname|filename)(?![\w$])/;
const STRING_LITERAL = /'((?:[^'\\\n]|\\.)*)'|"((?:[^"\\\n]|\\.)*)"|`((?:[^`\\$]|\\.)*)`/g;
const FS_REQUIRE = /__require\(\s*["'](?:node:)?fs["']\s*\)/g;
const FS_PROMISES_REQUIRE = /__require\(\s*["'](?:node:)?fs\/promises["']\s*\)/g;

/** The virtual name of a file: its npm package path, else its path in the repository. */
function virtualPath(file: string): string {
  const npm = file.split(sep).join("/").match(/\/npm\/[^/]+\/(.+)$/);
  if (npm) return `${VIRTUAL_ROOT}/npm/${npm[1]}`;
  return `${VIRTUAL_ROOT}/${relative(ROOT, file).split(sep).join("/")}`;
}

/** The end of a module body that starts at `start`: esbuild closes the wrapper with `\n});`. */
function moduleEnd(text: string, start: number): number {
  const end = text.indexOf("\n});", start);
  if (end < 0) throw new Error("cannot find the end of a CommonJS module in the bundle");
  return end;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function embedModuleFiles(
  text: string,
): Promise<{ text: string; embedded: Map<string, number>; patchedModules: string[] }> {
  const embedded = new Map<string, string>(); // virtual path -> base64
  const sizes = new Map<string, number>();
  const patchedModules: string[] = [];
  const edits: { at: number; end: number; replacement: string }[] = [];

  for (const m of text.matchAll(CJS_MODULE)) {
    const bodyStart = m.index + m[0].length;
    const bodyEnd = moduleEnd(text, bodyStart);
    const body = text.slice(bodyStart, bodyEnd);
    if (!USES_DIRNAME.test(body)) continue;
    // esbuild names the module by its path relative to its working directory (ROOT).
    const key = JSON.parse(m[1]) as string;
    const file = resolve(ROOT, key);
    if (!(await isFile(file))) {
      throw new Error(`cannot find the file of the bundled module "${key}" (looked at ${file})`);
    }
    const dir = dirname(file);
    const vFile = virtualPath(file);
    const vDir = vFile.slice(0, vFile.lastIndexOf("/"));
    for (const lit of body.matchAll(STRING_LITERAL)) {
      const name = lit[1] ?? lit[2] ?? lit[3];
      if (!name || name.length > 200 || name.includes("\\") || CODE_FILE.test(name)) continue;
      const path = resolve(dir, name);
      if (path === dir || !path.startsWith(dir + sep) || !(await isFile(path))) continue;
      const vPath = `${vDir}/${relative(dir, path).split(sep).join("/")}`;
      if (embedded.has(vPath)) continue;
      const bytes = await Deno.readFile(path);
      embedded.set(vPath, bytesToBase64(bytes));
      sizes.set(vPath, bytes.length);
    }
    const patched = body
      .replace(FS_REQUIRE, "__redprobe_fs")
      .replace(FS_PROMISES_REQUIRE, "__redprobe_fs.promises");
    const header = `var __dirname = ${JSON.stringify(vDir)}, __filename = ${
      JSON.stringify(vFile)
    };\n`;
    edits.push({ at: bodyStart, end: bodyEnd, replacement: header + patched });
    patchedModules.push(vFile);
  }
  if (edits.length === 0) return { text, embedded: sizes, patchedModules };

  let outText = "";
  let pos = 0;
  for (const e of edits) {
    outText += text.slice(pos, e.at) + e.replacement;
    pos = e.end;
  }
  outText += text.slice(pos);
  return { text: prelude(embedded) + outText, embedded: sizes, patchedModules };
}

function bytesToBase64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/**
 * The embedded files and the `node:fs` the patched modules get. ES imports are hoisted, so this
 * may stand before esbuild's own helpers; its names cannot clash with esbuild's (`__redprobe_`).
 */
function prelude(files: Map<string, string>): string {
  const entries = [...files].map(([p, b64]) => `  ${JSON.stringify(p)}: ${JSON.stringify(b64)},`);
  return `import * as __redprobe_node_fs from "node:fs";
import { Buffer as __redprobe_Buffer } from "node:buffer";
import { fileURLToPath as __redprobe_fileURLToPath } from "node:url";
// Files that bundled CommonJS modules read beside them (scripts/bundle.ts), by virtual path.
var __redprobe_files = {
${entries.join("\n")}
};
var __redprobe_fs = /* @__PURE__ */ (() => {
  const real = __redprobe_node_fs.default ?? __redprobe_node_fs;
  const decoded = new Map();
  const lookup = (p) => {
    let key = p;
    if (p instanceof URL) key = __redprobe_fileURLToPath(p);
    else if (typeof p === "string" && p.startsWith("file:")) key = __redprobe_fileURLToPath(p);
    if (typeof key !== "string" || !Object.hasOwn(__redprobe_files, key)) return undefined;
    if (!decoded.has(key)) decoded.set(key, __redprobe_Buffer.from(__redprobe_files[key], "base64"));
    return decoded.get(key);
  };
  const encodingOf = (o) => typeof o === "string" ? o : o?.encoding ?? undefined;
  const contents = (bytes, o) => {
    const enc = encodingOf(o);
    return enc ? bytes.toString(enc) : __redprobe_Buffer.from(bytes);
  };
  const stat = (bytes) => ({
    size: bytes.length, mode: 0o100444, isFile: () => true, isDirectory: () => false,
    isSymbolicLink: () => false, mtime: new Date(0), mtimeMs: 0,
  });
  const fs = { ...real };
  fs.readFileSync = (p, o) => {
    const b = lookup(p);
    return b ? contents(b, o) : real.readFileSync(p, o);
  };
  fs.existsSync = (p) => lookup(p) !== undefined || real.existsSync(p);
  fs.statSync = (p, o) => {
    const b = lookup(p);
    return b ? stat(b) : real.statSync(p, o);
  };
  fs.readFile = (p, o, cb) => {
    const b = lookup(p);
    if (!b) return real.readFile(p, o, cb);
    const callback = typeof o === "function" ? o : cb;
    queueMicrotask(() => callback(null, contents(b, typeof o === "function" ? undefined : o)));
  };
  fs.promises = {
    ...real.promises,
    readFile: (p, o) => {
      const b = lookup(p);
      return b ? Promise.resolve(contents(b, o)) : real.promises.readFile(p, o);
    },
  };
  return fs;
})();
`;
}

/** Fails when the output would still need files at run time. */
function checkSelfContained(text: string): void {
  const problems: string[] = [];
  for (const m of text.matchAll(/__require\(([^)]*)\)/g)) {
    const arg = m[1].trim();
    const name = arg.match(/^["']([^"']+)["']$/)?.[1];
    if (name === undefined) {
      problems.push(`a require() of a computed name: __require(${arg})`);
    } else if (!NODE_BUILTINS.has(name.replace(/^node:/, ""))) {
      problems.push(`a require() of a file or package left for run time: ${name}`);
    }
  }
  // Deno's npm cache may appear in esbuild's `// path` comments and module keys, nowhere else.
  const cache = /registry\.npmjs\.org\//;
  for (const line of text.split("\n")) {
    const code = line.trim();
    if (!cache.test(code) || code.startsWith("//") || /^"[^"]*"\((?:exports|module)?/.test(code)) {
      continue;
    }
    problems.push(`a reference to Deno's npm cache: ${code.slice(0, 160)}`);
  }
  if (problems.length > 0) {
    throw new Error(
      `The bundle would not be self-contained:\n  ${[...new Set(problems)].join("\n  ")}`,
    );
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      out: { type: "string" },
      entry: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log("deno run -A scripts/bundle.ts [--out dist/redprobe.js] [--entry main.ts]");
    Deno.exit(0);
  }
  try {
    await bundle({ out: values.out, entry: values.entry });
  } catch (e) {
    console.error(`bundle: ${e instanceof Error ? e.message : e}`);
    Deno.exit(1);
  }
}
