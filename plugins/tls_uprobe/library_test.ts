import assert from "node:assert/strict";
import { ElfFile } from "../../lib/elf.ts";
import { inCi } from "../../tests/support/privileges.ts";
import { planTlsProbes, TlsFn, TlsProbePlanCache } from "./library.ts";

const LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3";

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** node on PATH, symlinks followed. */
function nodePath(): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir && exists(`${dir}/node`)) return Deno.realPathSync(`${dir}/node`);
  }
  return undefined;
}

const NODE = nodePath();

Deno.test({
  name: "libssl.so.3: cheap entry and exit sites for SSL_read/SSL_write, uretprobes for the _ex",
  ignore: !exists(LIBSSL) && !inCi(),
  fn() {
    const plan = planTlsProbes(ElfFile.parse(Deno.readFileSync(LIBSSL)), "x");
    assert.ok(plan);
    assert.deepEqual(plan.functions, {
      SSL_read: { entry: "emulated", exit: "emulated" },
      SSL_write: { entry: "emulated", exit: "emulated" },
      SSL_read_ex: { entry: "emulated", exit: "uretprobe" },
      SSL_write_ex: { entry: "emulated", exit: "uretprobe" },
    });
    // One entry per function, its cookie saying which; one exit site per RET of the two.
    assert.deepEqual(
      plan.entries.map((e) => e.cookie).sort(),
      [0n, BigInt(TlsFn.write), BigInt(TlsFn.ex), BigInt(TlsFn.write | TlsFn.ex)].sort(),
    );
    assert.equal(plan.exitSites.length, 2);
    assert.equal(plan.returnProbes.length, 2);
    assert.equal(plan.frees.length, 1);
  },
});

Deno.test({
  name: "node: OpenSSL linked in, found by its exported symbols, with its version",
  ignore: NODE === undefined && !inCi(),
  fn() {
    const plan = planTlsProbes(ElfFile.parse(Deno.readFileSync(NODE!)), "x");
    assert.ok(plan);
    assert.match(plan.version ?? "", /^OpenSSL 3\./);
    assert.deepEqual(Object.keys(plan.functions).sort(), [
      "SSL_read",
      "SSL_read_ex",
      "SSL_write",
      "SSL_write_ex",
    ]);
    for (const f of Object.values(plan.functions)) assert.equal(f.entry, "emulated");
    assert.equal(plan.entries.length, 4);
    assert.equal(plan.frees.length, 1);
  },
});

Deno.test({
  name: "a program that only imports SSL_* (nginx) or has no OpenSSL has no plan",
  ignore: !exists("/usr/sbin/nginx") && !inCi(),
  fn() {
    const cache = new TlsProbePlanCache();
    assert.equal(cache.plan("/usr/sbin/nginx"), undefined);
    assert.equal(cache.plan(Deno.execPath()), undefined);
    assert.equal(cache.plan("/nonexistent/libssl.so.3"), undefined);
    const text = Deno.makeTempFileSync();
    Deno.writeTextFileSync(text, "#!/bin/sh\n");
    assert.equal(cache.plan(text), undefined);
    Deno.removeSync(text);
  },
});

Deno.test({
  name: "plans are cached by file identity",
  ignore: !exists(LIBSSL) && !inCi(),
  fn() {
    const cache = new TlsProbePlanCache();
    const a = cache.plan(LIBSSL);
    assert.ok(a);
    assert.equal(cache.plan(LIBSSL), a);
    assert.equal(cache.plan(Deno.realPathSync(LIBSSL)), a);
  },
});
