/**
 * go-http's binary analysis on real executables: the Go 1.19 fixtures with and without symbols
 * and DWARF, Debian's prometheus and hey, esbuild (Go 1.26) and buf (Go 1.27) from npm, and the
 * bad inputs it must refuse with a reason (non-Go, too old, no net/http, corrupt, unknown
 * version). No privileges needed.
 */
import assert from "node:assert/strict";
import {
  analyzeGoBinary,
  GoBinarySkip,
  type GoHttpBinary,
  goHttpBinaryCache,
  probeCookie,
  tableOffsets,
} from "./binary.ts";
import { looksLikeGo } from "../../lib/go_binary.ts";
import { buildGoFixture } from "../../tests/support/go_build.ts";
import { npmBinary } from "../../tests/support/npm_binaries.ts";
import { hasTool } from "../../tests/support/tools.ts";

const haveGo = (() => {
  try {
    return new Deno.Command("go", { args: ["version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
})();

function analyze(path: string): GoHttpBinary {
  return analyzeGoBinary(Deno.readFileSync(path));
}

function skipReason(bytes: Uint8Array): string {
  try {
    analyzeGoBinary(bytes);
  } catch (e) {
    if (e instanceof GoBinarySkip) return e.reason;
    throw e;
  }
  return "accepted";
}

const GO19_OFFSETS = {
  requestMethod: 0,
  requestUrl: 16,
  urlPath: 56,
  requestContentLength: 88,
  responseStatusCode: 16,
};

Deno.test({
  name: "the Go 1.19 fixture: same probe sites with and without symbols; DWARF or table offsets",
  ignore: !haveGo,
  async fn() {
    const full = analyze(await buildGoFixture("go_http/server"));
    const stripped = analyze(await buildGoFixture("go_http/server", { stripped: true }));
    assert.equal(full.goVersion, stripped.goVersion);
    assert.match(full.goVersion, /^go1\.19/);
    assert.equal(full.offsetsFrom, "dwarf");
    assert.equal(stripped.offsetsFrom, "table");
    // Go 1.19 exactly: response.status is known too (DWARF, or the table's go1.19 entry).
    assert.deepEqual(full.offsets, { ...GO19_OFFSETS, responseStatus: 120 });
    assert.deepEqual(stripped.offsets, { ...GO19_OFFSETS, responseStatus: 120 });
    // The code is the same; only symbols and DWARF differ.
    assert.deepEqual(full.server, stripped.server);
    assert.deepEqual(full.client, stripped.client);
    // Every entry-type probe is on an instruction the kernel emulates (cheap).
    const server = full.server!;
    for (const site of [server.start, server.status, server.end, server.http2!.status]) {
      assert.ok(site.emulated, `0x${site.address.toString(16)} emulated`);
    }
    assert.ok(full.client!.start.emulated);
    assert.ok(full.client!.returns.length >= 1);
    for (const r of full.client!.returns) assert.equal(r.emulated, false, "RET is single-stepped");
  },
});

Deno.test({
  name: "the Go 1.19 fixture's RET sites are every ret objdump shows in (*Transport).roundTrip",
  ignore: !haveGo || !hasTool("objdump"),
  async fn() {
    const path = await buildGoFixture("go_http/server");
    const out = new TextDecoder().decode(
      (await new Deno.Command("objdump", {
        args: ["-d", "--no-show-raw-insn", path],
        stdout: "piped",
      }).output()).stdout,
    );
    const body = out.split("\n\n").find((b) => b.includes("<net/http.(*Transport).roundTrip>:"))!;
    const rets = [...body.matchAll(/^\s*([0-9a-f]+):\s+ret/gm)].map((m) => parseInt(m[1], 16));
    assert.deepEqual(analyze(path).client!.returns.map((r) => r.address), rets);
  },
});

Deno.test("Debian's prometheus (server and client) and hey (client only), stripped Go 1.19", () => {
  const prometheus = analyze("/usr/bin/prometheus");
  assert.match(prometheus.goVersion, /^go1\.19/);
  assert.equal(prometheus.offsetsFrom, "table");
  assert.ok(prometheus.server && prometheus.client);
  const hey = analyze("/usr/bin/hey");
  assert.equal(hey.server, undefined, "hey serves nothing");
  assert.ok(hey.client);
});

Deno.test("esbuild (Go 1.26, no .go.buildinfo): version from runtime.buildVersion, stable offsets", async () => {
  const esbuild = analyze(await npmBinary("@esbuild/linux-x64", "bin/esbuild"));
  assert.match(esbuild.goVersion, /^go1\.26/);
  assert.equal(esbuild.offsetsFrom, "table");
  assert.deepEqual(esbuild.offsets, GO19_OFFSETS);
  assert.ok(esbuild.server?.start.emulated);
});

Deno.test("buf (Go 1.27: newer than the offsets table knows) is refused as unknown_go_version", async () => {
  const bytes = Deno.readFileSync(await npmBinary("@bufbuild/buf-linux-x64", "bin/buf"));
  assert.equal(skipReason(bytes), "unknown_go_version");
});

Deno.test("non-Go, non-ELF and truncated files are refused with a reason, never an exception", () => {
  assert.equal(skipReason(Deno.readFileSync("/usr/bin/ls")), "not_go");
  assert.equal(skipReason(new TextEncoder().encode("#!/bin/sh\necho hi\n")), "not_elf");
  assert.equal(skipReason(new Uint8Array(0)), "not_elf");
  const hey = Deno.readFileSync("/usr/bin/hey");
  for (const length of [64, 4096, hey.length >> 1, hey.length - 4096]) {
    const reason = skipReason(hey.slice(0, length));
    assert.ok(
      ["corrupt_binary", "not_go", "unknown_go_version"].includes(reason),
      `truncated at ${length}: ${reason}`,
    );
  }
});

Deno.test("random corruption of a Go binary never escapes as an exception", () => {
  const hey = Deno.readFileSync("/usr/bin/hey");
  let seed = 12345;
  const random = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
  for (let round = 0; round < 40; round++) {
    const copy = hey.slice();
    for (let i = 0; i < 64; i++) copy[Math.floor(random() * copy.length)] = random() * 256;
    // Either accepted or a reason: anything thrown other than GoBinarySkip fails the test.
    skipReason(copy);
  }
});

Deno.test("a pre-1.18 pclntab (Go 1.16/1.17 magic) is refused as go_too_old", () => {
  const hey = Deno.readFileSync("/usr/bin/hey");
  // .gopclntab starts with the magic 0xfffffff0 (Go 1.18/1.19): make it 1.16-1.17's.
  const at = hey.findIndex((_, i) =>
    hey[i] === 0xf0 && hey[i + 1] === 0xff && hey[i + 2] === 0xff && hey[i + 3] === 0xff &&
    hey[i + 4] === 0 && hey[i + 5] === 0 && hey[i + 6] === 1 && hey[i + 7] === 8
  );
  assert.ok(at > 0, "found the pcHeader");
  const copy = hey.slice();
  copy[at] = 0xfa;
  assert.equal(skipReason(copy), "go_too_old");
});

Deno.test({
  name: "a Go program without net/http is refused as no_net_http",
  ignore: !haveGo,
  async fn() {
    const path = await buildGoFixture("go_hello", { stripped: true });
    assert.equal(skipReason(Deno.readFileSync(path)), "no_net_http");
    assert.ok(looksLikeGo(path), "it is Go, though");
  },
});

Deno.test("the offsets table covers its stable range and nothing beyond", () => {
  assert.deepEqual(tableOffsets("go1.19.8"), { ...GO19_OFFSETS, responseStatus: 120 });
  // Other versions: only the stable fields; response.status moves between versions.
  assert.deepEqual(tableOffsets("go1.22.3"), GO19_OFFSETS);
  assert.deepEqual(tableOffsets("go1.26.5"), GO19_OFFSETS);
  assert.equal(tableOffsets("go1.27.0"), undefined);
  assert.equal(tableOffsets("go1.17.13"), undefined);
  assert.equal(tableOffsets("devel +abc"), undefined);
});

Deno.test("probe cookies pack the five offsets, the executable index and the any-process flag", () => {
  const cookie = probeCookie(GO19_OFFSETS, 3, true);
  assert.equal(cookie & 0xffn, 0n);
  assert.equal((cookie >> 8n) & 0xffn, 16n);
  assert.equal((cookie >> 16n) & 0xffn, 56n);
  assert.equal((cookie >> 24n) & 0xffn, 88n);
  assert.equal((cookie >> 32n) & 0xffn, 16n);
  assert.equal((cookie >> 40n) & 0xffffn, 3n);
  assert.equal(cookie >> 56n, 1n);
  assert.equal(probeCookie(GO19_OFFSETS) >> 40n, 0n);
  const withStatus = { ...GO19_OFFSETS, responseStatus: 120 };
  assert.equal((probeCookie(withStatus, 0, false, true) >> 48n) & 0xffn, 15n, "120 / 8");
  assert.equal(probeCookie(withStatus) >> 48n, 0n, "only where asked");
});

Deno.test("looksLikeGo reads only section names: Go yes, C no, missing file no", () => {
  assert.ok(looksLikeGo("/usr/bin/hey"));
  assert.ok(!looksLikeGo("/usr/bin/ls"));
  assert.ok(!looksLikeGo("/nonexistent/redprobe"));
});

Deno.test("the cache analyses a file once and reports unreadable paths as skips", () => {
  const cache = goHttpBinaryCache();
  const first = cache.analyze("/usr/bin/hey");
  assert.equal(cache.analyze("/usr/bin/hey"), first);
  const missing = cache.analyze("/nonexistent/redprobe");
  assert.ok(missing instanceof GoBinarySkip);
  assert.equal(missing.reason, "unreadable");
});
