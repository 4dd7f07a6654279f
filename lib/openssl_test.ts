import assert from "node:assert/strict";
import { ElfFile, PF, PT } from "./elf.ts";
import { inCi } from "../tests/support/privileges.ts";
import {
  findOpenSslFunctions,
  OPENSSL_FUNCTIONS,
  type OpenSslFunctions,
  opensslVersion,
} from "./openssl.ts";

function output(cmd: string, args: string[]): string | undefined {
  try {
    const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "null" }).outputSync();
    return out.success ? new TextDecoder().decode(out.stdout) : undefined;
  } catch {
    return undefined;
  }
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Where the dynamic linker finds the x86-64 `name` (`ldconfig -p`), else Debian's path. */
function systemLibrary(name: string): string | undefined {
  const line = output("ldconfig", ["-p"])?.split("\n")
    .find((l) => l.trim().startsWith(`${name} (libc6,x86-64)`));
  const path = line?.split(" => ")[1]?.trim() ?? `/usr/lib/x86_64-linux-gnu/${name}`;
  return isFile(path) ? Deno.realPathSync(path) : undefined;
}

/** `which name`, symlinks followed. */
function onPath(name: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir !== "" && isFile(`${dir}/${name}`)) return Deno.realPathSync(`${dir}/${name}`);
  }
  return undefined;
}

/**
 * Test options that skip, with the reason in the test's name, when `path` is missing; in CI
 * the file must be there (scripts/test.sh installs nginx, which brings libssl3), so the test
 * runs and fails instead.
 */
function on(what: string, path: string | undefined, missing: string) {
  return path === undefined && !inCi()
    ? { name: `${what} (skipped: ${missing})`, ignore: true }
    : { name: `${what} (${path ?? missing})`, ignore: false };
}

/** Each function's code is in the file, in an executable PT_LOAD segment. */
function assertInExecutableSegment(elf: ElfFile, found: OpenSslFunctions): void {
  for (const [name, fn] of Object.entries(found)) {
    const segment = elf.programHeaders.find((p) =>
      p.type === PT.load && fn.fileOffset >= p.offset && fn.fileOffset < p.offset + p.filesz
    );
    assert.ok(segment, `${name} at file offset ${fn.fileOffset} is in a PT_LOAD segment`);
    assert.ok(segment.flags & PF.x, `${name}'s segment is executable`);
    assert.equal(fn.fileOffset - segment.offset, fn.address - segment.vaddr, name);
  }
}

/** `readelf --dyn-syms`'s defined FUNC symbols: name (version stripped) -> address. */
function readelfFunctions(path: string): Map<string, number> | undefined {
  const text = output("readelf", ["-W", "--dyn-syms", path]);
  if (text === undefined) return undefined;
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[3] !== "FUNC" || f[6] === "UND" || f[7] === undefined) continue;
    const name = f[7].replace(/@.*$/, "");
    if (!out.has(name)) out.set(name, parseInt(f[1], 16));
  }
  return out;
}

const LIBSSL = systemLibrary("libssl.so.3");
const LIBCRYPTO = systemLibrary("libcrypto.so.3");
const NODE = onPath("node");

Deno.test({
  ...on("findOpenSslFunctions() finds all six functions in libssl.so.3", LIBSSL, "no libssl.so.3"),
  fn() {
    const elf = ElfFile.parse(Deno.readFileSync(LIBSSL!));
    const found = findOpenSslFunctions(elf);
    assert.deepEqual(Object.keys(found).sort(), [...OPENSSL_FUNCTIONS].sort());
    assertInExecutableSegment(elf, found);
    const readelf = readelfFunctions(LIBSSL!);
    if (readelf !== undefined) {
      for (const [name, fn] of Object.entries(found)) {
        assert.equal(fn.address, readelf.get(name), `${name} agrees with readelf`);
      }
    }
  },
});

Deno.test({
  ...on("opensslVersion() is in libcrypto.so.3, not libssl.so.3", LIBCRYPTO, "no libcrypto.so.3"),
  fn() {
    const version = opensslVersion(ElfFile.parse(Deno.readFileSync(LIBCRYPTO!)));
    assert.match(version ?? "", /^OpenSSL 3\.\d+\.\d+ +\d{1,2} [A-Z][a-z]{2} \d{4}$/);
    if (LIBSSL !== undefined) {
      assert.equal(opensslVersion(ElfFile.parse(Deno.readFileSync(LIBSSL))), undefined);
    }
  },
});

Deno.test({
  ...on(
    "findOpenSslFunctions() finds the statically linked OpenSSL node exports",
    NODE,
    "no node on PATH",
  ),
  fn() {
    const elf = ElfFile.parse(Deno.readFileSync(NODE!));
    const found = findOpenSslFunctions(elf);
    assert.ok(found.SSL_read, "SSL_read");
    assert.ok(found.SSL_write, "SSL_write");
    assertInExecutableSegment(elf, found);
    // The version text is node's own: `process.versions.openssl` is its number.
    const version = opensslVersion(elf);
    const number = output(NODE!, ["-p", "process.versions.openssl"])?.trim();
    assert.ok(number, "node -p process.versions.openssl");
    assert.ok(version?.startsWith(`OpenSSL ${number} `), `${version} is OpenSSL ${number}`);
  },
});

const OPENSSL_CLI = onPath("openssl");

Deno.test({
  ...on(
    "findOpenSslFunctions() ignores the imports of a program linked to libssl.so.3",
    OPENSSL_CLI,
    "no openssl command on PATH",
  ),
  fn() {
    const elf = ElfFile.parse(Deno.readFileSync(OPENSSL_CLI!));
    // The `openssl` command calls SSL_read and SSL_write: undefined symbols in its .dynsym.
    assert.ok(elf.dynamicSymbols().some((s) => s.name === "SSL_read" && s.shndx === 0));
    assert.deepEqual(findOpenSslFunctions(elf), {});
  },
});

Deno.test({
  ...on(
    "findOpenSslFunctions() finds nothing in ls",
    isFile("/usr/bin/ls") ? "/usr/bin/ls" : undefined,
    "no /usr/bin/ls",
  ),
  fn() {
    const elf = ElfFile.parse(Deno.readFileSync("/usr/bin/ls"));
    assert.deepEqual(findOpenSslFunctions(elf), {});
    assert.equal(opensslVersion(elf), undefined);
  },
});
