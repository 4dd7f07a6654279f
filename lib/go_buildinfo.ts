/**
 * Which Go toolchain built an executable, and with which modules: the Go struct layouts a uprobe
 * reads (`net/http.conn`, `http.Request`...) change between Go versions, so the agent needs the
 * version before it can decode anything.
 *
 * The primary source is the build info blob that cmd/link writes to `.go.buildinfo` (what
 * `go version -m` prints), read as debug/buildinfo reads it:
 *
 * ```
 * "\xff Go buildinf:" (14 bytes), ptrSize u8, flags u8, then
 *   flags & 2 (Go 1.18+): two varint-length-prefixed strings after the 32-byte header,
 *                         the version then the module info;
 *   otherwise (older):    two pointers at offset 16, each to a Go string header {data, len}.
 * The module info is framed by 16-byte sentinels (cmd/go/internal/modload infoStart/infoEnd)
 * and holds lines "path\t...", "mod\tpath\tversion\tsum", "dep\t...", "=>\t..." (a replacement
 * of the dep above it), "build\tkey=value".
 * ```
 *
 * Some binaries have no build info (esbuild's release binaries carry no `.go.buildinfo`). The
 * version is then taken from the `runtime.buildVersion` variable, which every Go program has
 * (`runtime.Version()` returns it): by its symbol when there is a `.symtab`; otherwise by looking
 * for its value. It is a `string`, so the linker puts its header {data pointer, length} in
 * `.data` (or `.noptrdata`) and the bytes in `.rodata`, without a terminating NUL. A raw search
 * of `.rodata` for /go1\.\d+/ cannot tell where such a string ends (Go packs strings back to
 * back) and also hits unrelated text; a header whose length is that of a version string and
 * whose data pointer lands on "go1." gives the exact string. Among several such headers, the
 * value most of them agree on wins, one in `.data` (where the variable is) outweighing any
 * number in `.noptrdata`.
 *
 * @module
 */
import { type ElfFile, PF, PT } from "./elf.ts";
import { symbolsOf, u64, viewOf, writableSegments } from "./go_elf.ts";

/** A module dependency, as `go version -m` lists it. */
export interface GoModule {
  path: string;
  version: string;
  /** The module that replaced it (`=>` line), if any. */
  replace?: { path: string; version: string };
}

/** What is known about how a Go executable was built. */
export interface GoBuildInfo {
  /** The toolchain version as the binary records it: "go1.19.8", "go1.22.0 X:rangefunc". */
  goVersion: string;
  /** Where the version came from. */
  source: "buildinfo" | "runtime.buildVersion";
  /** The main package's import path ("path" line), when built in module mode. */
  mainPath?: string;
  /** The main module ("mod" line), when built in module mode. */
  main?: GoModule;
  /** The dependencies ("dep" lines); empty without module info or in GOPATH mode. */
  modules: GoModule[];
  /** The "build" lines: `-trimpath`, `CGO_ENABLED`, `GOAMD64`, `vcs.revision`, ... */
  settings: Record<string, string>;
}

/** "\xff Go buildinf:" as bytes (a JS string would encode \xff as two UTF-8 bytes). */
const MAGIC = Uint8Array.from([0xff, ...new TextEncoder().encode(" Go buildinf:")]);
const HEADER_SIZE = 32;
const ALIGN = 16;
const FLAG_INLINE = 0x2;
const FLAG_BIG_ENDIAN = 0x1;
/** "go1.N", "go1.N.P", "go1.NrcK", "go1.N.P-something", and " X:experiments" after any of them. */
const VERSION = /^go1\.\d+(\.\d+)?([a-z0-9.-]*)?( X:[a-z0-9,]+)?$/;
const MAX_VERSION_LENGTH = 64;

const utf8 = new TextDecoder();
const latin1 = new TextDecoder("latin1");

/**
 * The build info of a Go executable; undefined when `elf` is not a Go program or none of its
 * sources can be read. Never throws for malformed input: a damaged blob falls back to
 * runtime.buildVersion, then to undefined.
 */
export function readGoBuildInfo(elf: ElfFile): GoBuildInfo | undefined {
  const blob = readBuildInfoBlob(elf);
  if (blob !== undefined) {
    return { ...parseModuleInfo(blob.modinfo), goVersion: blob.version, source: "buildinfo" };
  }
  const version = runtimeBuildVersion(elf);
  if (version !== undefined) {
    return { goVersion: version, source: "runtime.buildVersion", modules: [], settings: {} };
  }
  return undefined;
}

// --- .go.buildinfo ---------------------------------------------------------------------------

/** The version and the raw module info bytes of the build info blob, or undefined. */
function readBuildInfoBlob(elf: ElfFile): { version: string; modinfo: Uint8Array } | undefined {
  const region = buildInfoRegion(elf);
  if (region === undefined) return undefined;
  const at = findMagic(region);
  if (at === undefined || at + HEADER_SIZE > region.length) return undefined;
  const header = region.subarray(at, at + HEADER_SIZE);
  const flags = header[15];
  let strings: [Uint8Array, Uint8Array] | undefined;
  if ((flags & FLAG_INLINE) !== 0) {
    strings = inlineStrings(region, at + HEADER_SIZE);
  } else if ((flags & FLAG_BIG_ENDIAN) === 0 && header[14] === 8) {
    strings = pointedStrings(elf, header);
  }
  if (strings === undefined || strings[0].length === 0) return undefined;
  return { version: utf8.decode(strings[0]), modinfo: strings[1] };
}

/**
 * Where the blob is: `.go.buildinfo`, or (no section headers) the first writable, not
 * executable PT_LOAD segment, where the linker places it first (debug/buildinfo's DataStart).
 */
function buildInfoRegion(elf: ElfFile): Uint8Array | undefined {
  const section = elf.section(".go.buildinfo");
  if (section !== undefined) return elf.sectionBytes(section);
  if (elf.sections.length > 0) return undefined;
  const data = elf.programHeaders.find((p) =>
    p.type === PT.load && (p.flags & (PF.w | PF.x)) === PF.w
  );
  return data && elf.segmentBytes(data);
}

/** Offset of the 16-byte-aligned magic in `bytes`. */
function findMagic(bytes: Uint8Array): number | undefined {
  for (let i = bytes.indexOf(MAGIC[0]); i >= 0; i = bytes.indexOf(MAGIC[0], i + 1)) {
    if (i % ALIGN === 0 && MAGIC.every((b, k) => bytes[i + k] === b)) return i;
  }
  return undefined;
}

/** Go 1.18+: two uvarint-length-prefixed strings. */
function inlineStrings(bytes: Uint8Array, at: number): [Uint8Array, Uint8Array] | undefined {
  const version = varintBytes(bytes, at);
  if (version === undefined) return undefined;
  const modinfo = varintBytes(bytes, version.next);
  if (modinfo === undefined) return undefined;
  return [version.value, modinfo.value];
}

function varintBytes(
  bytes: Uint8Array,
  at: number,
): { value: Uint8Array; next: number } | undefined {
  let length = 0;
  for (let shift = 0;; shift += 7) {
    if (at >= bytes.length || shift > 28) return undefined;
    const b = bytes[at++];
    length += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) break;
  }
  if (at + length > bytes.length) return undefined;
  return { value: bytes.subarray(at, at + length), next: at + length };
}

/** Before Go 1.18: pointers to the version's and the module info's string headers. */
function pointedStrings(elf: ElfFile, header: Uint8Array): [Uint8Array, Uint8Array] | undefined {
  const view = viewOf(header);
  const version = goStringAt(elf, u64(view, 16));
  const modinfo = goStringAt(elf, u64(view, 24));
  return version === undefined ? undefined : [version, modinfo ?? new Uint8Array()];
}

/** The bytes of the Go string whose header {data, len} is at `vaddr`. */
function goStringAt(elf: ElfFile, vaddr: number): Uint8Array | undefined {
  const header = elf.bytesAt(vaddr, 16);
  if (header === undefined) return undefined;
  const view = viewOf(header);
  return elf.bytesAt(u64(view, 0), u64(view, 8));
}

type ModuleInfo = Pick<GoBuildInfo, "mainPath" | "main" | "modules" | "settings">;

/** Parses the module info text (`runtime/debug.ParseBuildInfo`'s input), sentinels included. */
function parseModuleInfo(modinfo: Uint8Array): ModuleInfo {
  // Binary 16-byte sentinels frame the text (stripped as bytes: they are not UTF-8); without
  // them the info is empty, as debug/buildinfo decides.
  const framed = modinfo.length >= 33 && modinfo[modinfo.length - 17] === 0x0a;
  const text = framed ? utf8.decode(modinfo.subarray(16, modinfo.length - 16)) : "";
  const result: ModuleInfo = { modules: [], settings: {} };
  let last: GoModule | undefined;
  for (const line of text.split("\n")) {
    const [kind, path, version = ""] = line.split("\t");
    if (kind === "path") result.mainPath = path;
    else if (kind === "mod") last = result.main = { path, version };
    else if (kind === "dep") result.modules.push(last = { path, version });
    else if (kind === "=>" && last !== undefined) last.replace = { path, version };
    else if (kind === "build") addSetting(result.settings, path);
  }
  return result;
}

/**
 * A "build" line's `key=value`. cmd/go quotes a value holding spaces, quotes or tabs
 * (`-ldflags="-s -w"`) with strconv.Quote, whose escapes JSON mostly shares.
 */
function addSetting(settings: Record<string, string>, setting: string): void {
  const eq = setting.indexOf("=");
  if (eq <= 0) return;
  let value = setting.slice(eq + 1);
  if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) {
    try {
      value = JSON.parse(value);
    } catch { /* An escape JSON lacks (\x00, \a): keep the quoted form. */ }
  }
  settings[setting.slice(0, eq)] = value;
}

// --- runtime.buildVersion --------------------------------------------------------------------

/** The value of runtime.buildVersion: by symbol, else by its string header (see module doc). */
function runtimeBuildVersion(elf: ElfFile): string | undefined {
  const symbol = symbolsOf(elf).find((s) => s.name === "runtime.buildVersion");
  if (symbol !== undefined) {
    const bytes = goStringAt(elf, symbol.value);
    const value = bytes && latin1.decode(bytes);
    if (value !== undefined && VERSION.test(value)) return value;
  }
  const votes = new Map<string, number>();
  for (const { bytes, weight } of dataRegions(elf)) {
    for (const value of versionStringHeaders(elf, bytes)) {
      votes.set(value, (votes.get(value) ?? 0) + weight);
    }
  }
  let best: string | undefined;
  for (const [value, count] of votes) {
    if (best === undefined || count > votes.get(best)!) best = value;
  }
  return best;
}

/**
 * Where string headers are searched, and what a header found there weighs: one in `.data`
 * (where runtime.buildVersion is) outweighs any number in `.noptrdata`. Without section
 * headers, the writable segments, all alike.
 */
function dataRegions(elf: ElfFile): { bytes: Uint8Array; weight: number }[] {
  if (elf.sections.length === 0) {
    return writableSegments(elf).map((bytes) => ({ bytes, weight: 1 }));
  }
  return ([[".data", 1_000_000], [".noptrdata", 1]] as const).flatMap(([name, weight]) => {
    const section = elf.section(name);
    return section === undefined ? [] : [{ bytes: elf.sectionBytes(section), weight }];
  });
}

/** Every aligned {ptr, len} in `region` that points at a whole Go version string. */
function* versionStringHeaders(elf: ElfFile, region: Uint8Array): Generator<string> {
  const view = viewOf(region);
  // Regions start 8-aligned in memory; the headers are 8-aligned fields.
  for (let at = 0; at + 16 <= region.length; at += 8) {
    // Cheapest test first: a small length (upper half zero), then the pointer.
    const length = view.getUint32(at + 8, true);
    if (length < 4 || length > MAX_VERSION_LENGTH || view.getUint32(at + 12, true) !== 0) continue;
    const data = elf.bytesAt(u64(view, at), length);
    if (data === undefined || data[0] !== 0x67 || data[1] !== 0x6f || data[2] !== 0x31) continue;
    const value = latin1.decode(data);
    if (VERSION.test(value)) yield value;
  }
}

// --- Versions --------------------------------------------------------------------------------

/** A Go release version: go1.19.8 is {major: 1, minor: 19, patch: 8}. */
export interface GoVersion {
  major: number;
  minor: number;
  /** 0 for "go1.20" (the first release of 1.20, before Go 1.21 named it go1.21.0). */
  patch: number;
  /** "rc2", "beta1" for pre-releases; they sort before the release. */
  prerelease?: string;
}

/**
 * Parses "go1.19.8", "go1.20", "go1.21rc2", "go1.22.0 X:rangefunc" (experiments ignored);
 * undefined for anything else ("devel go1.23-abcdef", "1.19").
 */
export function parseGoVersion(version: string): GoVersion | undefined {
  const m = /^go(\d+)\.(\d+)(?:\.(\d+))?((?:rc|beta|alpha)\d+)?(?:[ -]|$)/.exec(version);
  if (m === null) return undefined;
  const parsed: GoVersion = { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3] ?? 0) };
  if (m[4] !== undefined) parsed.prerelease = m[4];
  return parsed;
}

/**
 * Orders two Go versions (strings or parsed): negative when `a` is older, 0 when equal,
 * positive when newer. `compareGoVersions(info.goVersion, "go1.26") >= 0` asks "Go 1.26 or
 * later". Throws a TypeError for a string that {@link parseGoVersion} rejects.
 */
export function compareGoVersions(a: string | GoVersion, b: string | GoVersion): number {
  const x = typeof a === "string" ? mustParse(a) : a;
  const y = typeof b === "string" ? mustParse(b) : b;
  return x.major - y.major || x.minor - y.minor || x.patch - y.patch ||
    comparePrerelease(x.prerelease, y.prerelease);
}

function mustParse(version: string): GoVersion {
  const parsed = parseGoVersion(version);
  if (parsed === undefined) throw new TypeError(`Not a Go version: "${version}"`);
  return parsed;
}

/** A release sorts after its pre-releases; alpha < beta < rc; then by number. */
function comparePrerelease(a: string | undefined, b: string | undefined): number {
  if (a === b) return 0;
  if (a === undefined) return 1;
  if (b === undefined) return -1;
  const rank = (p: string) => ["alpha", "beta", "rc"].findIndex((k) => p.startsWith(k));
  const number = (p: string) => Number(p.replace(/^\D+/, ""));
  return rank(a) - rank(b) || number(a) - number(b);
}
