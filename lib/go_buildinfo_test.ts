import assert from "node:assert/strict";
import { machineGoVersion } from "../tests/support/go_build.ts";
import {
  bufPath,
  esbuild,
  fileExists,
  goServer,
  goServerPath,
  haveGo,
  haveNpm,
  needs,
  readElf,
  withoutSectionHeaders,
  withRandomFlips,
} from "../tests/support/go_binaries.ts";
import { ElfFile } from "./elf.ts";
import {
  compareGoVersions,
  type GoBuildInfo,
  parseGoVersion,
  readGoBuildInfo,
} from "./go_buildinfo.ts";

/** `go version -m`: the reference reader (debug/buildinfo) of the machine's Go. */
function goVersionM(path: string) {
  const out = new Deno.Command("go", { args: ["version", "-m", path], stdout: "piped" })
    .outputSync();
  assert.ok(out.success, `go version -m ${path}`);
  const lines = new TextDecoder().decode(out.stdout).trimEnd().split("\n");
  const info: Omit<GoBuildInfo, "source" | "settings"> & { settings: string[] } = {
    goVersion: lines[0].slice(lines[0].lastIndexOf(": ") + 2),
    modules: [],
    settings: [],
  };
  for (const line of lines.slice(1)) {
    const [kind, path, version] = line.slice(1).split("\t");
    if (kind === "path") info.mainPath = path;
    if (kind === "mod") info.main = { path, version };
    if (kind === "dep") info.modules.push({ path, version });
    if (kind === "=>") info.modules.at(-1)!.replace = { path, version };
    if (kind === "build") info.settings.push(path.slice(0, path.indexOf("=")));
  }
  return info;
}

/** A copy of an ELF file whose `.go.buildinfo` is renamed away, as if it had none. */
function hideBuildInfo(elf: ElfFile): ElfFile {
  const bytes = elf.bytes.slice();
  const names = elf.sections.find((s) => s.type === 3 && s.index === shstrndx(elf))!;
  const at = bytes.subarray(names.offset, names.offset + names.size)
    .findIndex((_, i, t) => new TextDecoder().decode(t.subarray(i, i + 14)) === ".go.buildinfo\0");
  assert.ok(at >= 0);
  bytes[names.offset + at + 4] = "x".charCodeAt(0); // ".go.xuildinfo"
  const hidden = ElfFile.parse(bytes);
  assert.equal(hidden.section(".go.buildinfo"), undefined);
  return hidden;
}

function shstrndx(elf: ElfFile): number {
  return new DataView(elf.bytes.buffer, elf.bytes.byteOffset).getUint16(0x3e, true);
}

// --- Real binaries ---------------------------------------------------------------------------

Deno.test("readGoBuildInfo() reads the fixture's .go.buildinfo (Go 1.19, GOPATH mode)", {
  ...needs(haveGo()),
}, async () => {
  const goVersion = (await machineGoVersion()).split(" ")[2]; // "go version go1.19.8 linux/amd64"
  for (const stripped of [false, true]) {
    const info = readGoBuildInfo(await goServer(stripped))!;
    assert.equal(info.source, "buildinfo");
    assert.equal(info.goVersion, goVersion);
    assert.ok(info.mainPath?.endsWith("tests/fixtures/go_http/server"), info.mainPath);
    assert.deepEqual(info.modules, [], "GOPATH mode: no modules");
    assert.equal(info.settings["-compiler"], "gc");
    assert.equal(info.settings["-ldflags"], stripped ? "-s -w" : undefined, "unquoted");
  }
});

for (const [name, path] of [["prometheus", "/usr/bin/prometheus"], ["hey", "/usr/bin/hey"]]) {
  Deno.test(`readGoBuildInfo() agrees with go version -m on Debian's ${name}`, {
    ...needs(fileExists(path) && haveGo()),
  }, () => {
    const info = readGoBuildInfo(readElf(path))!;
    const expected = goVersionM(path);
    assert.equal(info.source, "buildinfo");
    assert.match(info.goVersion, /^go1\.19\.\d+$/);
    assert.deepEqual(
      { ...info, source: undefined, settings: Object.keys(info.settings) },
      { ...expected, source: undefined },
    );
    // Debian builds Go programs from /usr/share/gocode, not in module mode: no module list.
    assert.deepEqual(info.modules, []);
    assert.equal(info.settings.CGO_ENABLED, "1");
  });
}

Deno.test("readGoBuildInfo() lists buf's modules as go version -m does", {
  ...needs(haveNpm() && haveGo()),
}, async () => {
  const path = await bufPath();
  const info = readGoBuildInfo(readElf(path))!;
  assert.equal(info.source, "buildinfo");
  assert.deepEqual(
    { ...info, source: undefined, settings: Object.keys(info.settings) },
    { ...goVersionM(path), source: undefined },
  );
  assert.equal(info.mainPath, "github.com/bufbuild/buf/cmd/buf");
  assert.ok(info.modules.length > 20);
  assert.ok(info.modules.some((m) => m.path === "google.golang.org/protobuf"));
  assert.ok(compareGoVersions(info.goVersion, "go1.26") >= 0, info.goVersion);
});

Deno.test("readGoBuildInfo() finds esbuild's version without .go.buildinfo (Go 1.26)", {
  ...needs(haveNpm()),
}, async () => {
  const elf = await esbuild();
  assert.equal(elf.section(".go.buildinfo"), undefined);
  assert.deepEqual(elf.symbols(), []);
  const info = readGoBuildInfo(elf)!;
  assert.equal(info.source, "runtime.buildVersion");
  assert.match(info.goVersion, /^go1\.26(\.\d+)?$/);
  assert.deepEqual([info.mainPath, info.modules], [undefined, []]);
});

Deno.test("runtime.buildVersion agrees with .go.buildinfo where both exist", {
  ...needs(haveGo()),
}, async () => {
  const paths = [await goServerPath(), await goServerPath(true)];
  for (const path of ["/usr/bin/prometheus", "/usr/bin/hey"]) {
    if (fileExists(path)) paths.push(path);
  }
  if (haveNpm()) paths.push(await bufPath());
  for (const path of paths) {
    const elf = readElf(path);
    const expected = readGoBuildInfo(elf)!.goVersion;
    // Without the blob: by the runtime.buildVersion symbol (full fixture) or by its string
    // header in .data (the others are stripped).
    const info = readGoBuildInfo(hideBuildInfo(elf));
    assert.deepEqual(info, {
      goVersion: expected,
      source: "runtime.buildVersion",
      modules: [],
      settings: {},
    }, path);
  }
});

Deno.test("readGoBuildInfo() works without section headers", {
  ...needs(haveGo() && haveNpm()),
}, async () => {
  // The blob is found at the start of the first writable segment, as debug/buildinfo does.
  const server = await goServer(true);
  assert.deepEqual(readGoBuildInfo(withoutSectionHeaders(server)), readGoBuildInfo(server));
  // No blob at all: the string header is searched in the writable segments.
  const noBlob = await esbuild();
  assert.deepEqual(readGoBuildInfo(withoutSectionHeaders(noBlob)), readGoBuildInfo(noBlob));
});

Deno.test("readGoBuildInfo() is undefined for C programs", () => {
  for (const path of ["/usr/bin/ls", "/usr/sbin/nginx"]) {
    if (fileExists(path)) assert.equal(readGoBuildInfo(readElf(path)), undefined, path);
  }
});

// --- Synthetic blobs -------------------------------------------------------------------------

const MAGIC = [0xff, ...new TextEncoder().encode(" Go buildinf:")];
// cmd/go/internal/modload's infoStart and infoEnd (as found in the binaries above).
const INFO_START = [
  0x30,
  0x77,
  0xaf,
  0x0c,
  0x92,
  0x74,
  0x08,
  0x02,
  0x41,
  0xe1,
  0xc1,
  0x07,
  0xe6,
  0xd6,
  0x18,
  0xe6,
];
const INFO_END = [
  0xf9,
  0x32,
  0x43,
  0x31,
  0x86,
  0x18,
  0x20,
  0x72,
  0x00,
  0x82,
  0x42,
  0x10,
  0x41,
  0x16,
  0xd8,
  0xf2,
];
const MODINFO = [
  "path\texample.com/app/cmd/app",
  "mod\texample.com/app\t(devel)\t",
  "dep\tgolang.org/x/net\tv0.1.0\th1:abc=",
  "dep\texample.com/old\tv1.0.0",
  "=>\texample.com/new\tv1.2.0\th1:xyz=",
  'build\t-ldflags="-s -w -X main.v=\\"1\\""',
  "build\tCGO_ENABLED=0",
  "",
].join("\n");
const EXPECTED_MODULES = {
  mainPath: "example.com/app/cmd/app",
  main: { path: "example.com/app", version: "(devel)" },
  modules: [
    { path: "golang.org/x/net", version: "v0.1.0" },
    {
      path: "example.com/old",
      version: "v1.0.0",
      replace: { path: "example.com/new", version: "v1.2.0" },
    },
  ],
  settings: { "-ldflags": '-s -w -X main.v="1"', CGO_ENABLED: "0" },
};

const BASE = 0x400000;
const SECTION_OFFSET = 128; // After the ELF header and the one program header.

/**
 * A minimal x86-64 executable: one RW PT_LOAD mapping the whole file at 0x400000 and one
 * section, `.go.buildinfo`, at file offset 128 (so at address 0x400080) holding `blob`.
 */
function elfWithBuildInfo(blob: number[]): ElfFile {
  const names = new TextEncoder().encode("\0.go.buildinfo\0.shstrtab\0");
  const namesAt = SECTION_OFFSET + blob.length;
  const shoff = Math.ceil((namesAt + names.length) / 8) * 8;
  const bytes = new Uint8Array(shoff + 3 * 64);
  const v = new DataView(bytes.buffer);
  bytes.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1]);
  v.setUint16(0x10, 2, true); // ET_EXEC
  v.setUint16(0x12, 62, true); // x86-64
  v.setBigUint64(0x20, 64n, true); // e_phoff
  v.setBigUint64(0x28, BigInt(shoff), true);
  v.setUint16(0x36, 56, true);
  v.setUint16(0x38, 1, true);
  v.setUint16(0x3a, 64, true);
  v.setUint16(0x3c, 3, true);
  v.setUint16(0x3e, 2, true); // e_shstrndx
  // PT_LOAD, RW, the whole file.
  v.setUint32(64, 1, true);
  v.setUint32(68, 6, true);
  v.setBigUint64(64 + 16, BigInt(BASE), true);
  v.setBigUint64(64 + 32, BigInt(bytes.length), true);
  v.setBigUint64(64 + 40, BigInt(bytes.length), true);
  bytes.set(blob, SECTION_OFFSET);
  bytes.set(names, namesAt);
  const section = (i: number, name: number, type: number, offset: number, size: number) => {
    const at = shoff + i * 64;
    v.setUint32(at, name, true);
    v.setUint32(at + 4, type, true);
    if (type === 1) v.setBigUint64(at + 8, 3n, true); // SHF_WRITE | SHF_ALLOC
    if (type === 1) v.setBigUint64(at + 16, BigInt(BASE + offset), true);
    v.setBigUint64(at + 24, BigInt(offset), true);
    v.setBigUint64(at + 32, BigInt(size), true);
  };
  section(1, 1, 1, SECTION_OFFSET, blob.length);
  section(2, 15, 3, namesAt, names.length);
  return ElfFile.parse(bytes);
}

const bytesOf = (s: string) => [...new TextEncoder().encode(s)];
const u64 = (n: number) => [...new Uint8Array(new BigUint64Array([BigInt(n)]).buffer)];
const uvarint = (n: number) => {
  const out = [];
  for (; n >= 0x80; n >>>= 7) out.push((n & 0x7f) | 0x80);
  return [...out, n];
};
const framedModinfo = () => [...INFO_START, ...bytesOf(MODINFO), ...INFO_END];

Deno.test("readGoBuildInfo() reads the Go 1.18+ inline format", () => {
  const modinfo = framedModinfo();
  assert.ok(modinfo.length > 127, "a two-byte varint length");
  const version = bytesOf("go1.22.1");
  const blob = [
    ...MAGIC,
    8,
    0x2, // flags: inline strings, little endian
    ...new Array(16).fill(0),
    ...uvarint(version.length),
    ...version,
    ...uvarint(modinfo.length),
    ...modinfo,
  ];
  assert.deepEqual(readGoBuildInfo(elfWithBuildInfo(blob)), {
    goVersion: "go1.22.1",
    source: "buildinfo",
    ...EXPECTED_MODULES,
  });
});

Deno.test("readGoBuildInfo() reads the pre-1.18 pointer format", () => {
  // header | string header of the version | of the module info | their bytes
  const base = BASE + SECTION_OFFSET;
  const version = bytesOf("go1.16.15");
  const modinfo = framedModinfo();
  const blob = [
    ...MAGIC,
    8,
    0x0, // flags: pointers, little endian
    ...u64(base + 32),
    ...u64(base + 48),
    ...u64(base + 64),
    ...u64(version.length),
    ...u64(base + 64 + version.length),
    ...u64(modinfo.length),
    ...version,
    ...modinfo,
  ];
  assert.deepEqual(readGoBuildInfo(elfWithBuildInfo(blob)), {
    goVersion: "go1.16.15",
    source: "buildinfo",
    ...EXPECTED_MODULES,
  });
});

Deno.test("readGoBuildInfo() gives up on a damaged blob without throwing", () => {
  const header = [...MAGIC, 8, 0x2, ...new Array(16).fill(0)];
  const cases = {
    "version longer than the section": [...header, 100, ...bytesOf("go1.22")],
    "unterminated varint": [...header, 0x80, 0x80],
    "empty version": [...header, 0, 0],
    "no magic": [...bytesOf("not a build info blob at all....."), 0, 0],
    "misaligned magic": [0, ...header, 6, ...bytesOf("go1.22"), 0],
    "pointers to nowhere": [...MAGIC, 8, 0, ...u64(0x10), ...u64(0x7fff0000)],
    "4-byte pointers": [...MAGIC, 4, 0, ...new Array(16).fill(0)],
  };
  for (const [what, blob] of Object.entries(cases)) {
    assert.equal(readGoBuildInfo(elfWithBuildInfo(blob)), undefined, what);
  }
  // Without sentinels the module info is ignored, as debug/buildinfo does.
  const unframed = bytesOf("path\tx\n");
  const blob = [...header, 6, ...bytesOf("go1.22"), unframed.length, ...unframed];
  assert.deepEqual(readGoBuildInfo(elfWithBuildInfo(blob)), {
    goVersion: "go1.22",
    source: "buildinfo",
    modules: [],
    settings: {},
  });
});

Deno.test("random byte flips in the build info never make readGoBuildInfo() throw", {
  ...needs(haveGo()),
}, async () => {
  const elf = await goServer(true);
  const bytes = elf.bytes.slice();
  const blob = elf.section(".go.buildinfo")!;
  const regions = [[blob.offset, blob.offset + Math.min(blob.size, 64)] as const];
  withRandomFlips(bytes, { seed: 4, rounds: 300, maxFlips: 3, regions }, (flipped) => {
    const info = readGoBuildInfo(ElfFile.parse(flipped));
    if (info) assert.equal(typeof info.goVersion, "string");
  });
});

// --- Versions --------------------------------------------------------------------------------

Deno.test("parseGoVersion() reads release, pre-release and experiment versions", () => {
  assert.deepEqual(parseGoVersion("go1.19.8"), { major: 1, minor: 19, patch: 8 });
  assert.deepEqual(parseGoVersion("go1.20"), { major: 1, minor: 20, patch: 0 });
  assert.deepEqual(parseGoVersion("go1.26.5"), { major: 1, minor: 26, patch: 5 });
  assert.deepEqual(parseGoVersion("go1.21rc2"), {
    major: 1,
    minor: 21,
    patch: 0,
    prerelease: "rc2",
  });
  assert.deepEqual(parseGoVersion("go1.22.0 X:rangefunc"), { major: 1, minor: 22, patch: 0 });
  for (const bad of ["", "1.19.8", "go", "go1", "devel go1.23-abcdef Tue", "go1.x", "gopher"]) {
    assert.equal(parseGoVersion(bad), undefined, bad);
  }
});

Deno.test("compareGoVersions() orders versions as Go releases them", () => {
  const sorted = [
    "go1.9",
    "go1.18",
    "go1.19.8",
    "go1.21rc1",
    "go1.21rc2",
    "go1.21.0",
    "go1.21.1",
    "go1.26beta1",
    "go1.26",
    "go1.26.5",
    "go1.27.3",
  ];
  const shuffled = [...sorted].reverse();
  assert.deepEqual(shuffled.sort(compareGoVersions), sorted);
  assert.equal(compareGoVersions("go1.20", "go1.20.0"), 0);
  assert.ok(compareGoVersions(parseGoVersion("go1.26.5")!, "go1.26") > 0);
  assert.throws(() => compareGoVersions("go1.19", "1.19"), TypeError);
});
