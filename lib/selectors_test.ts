import assert from "node:assert/strict";
import { Selector } from "./selectors.ts";

const facts = (over: Partial<{ pid: number; exe: string; cmdline: string; ports: number[] }>) => ({
  pid: over.pid ?? 100,
  exe: over.exe ?? "/usr/sbin/nginx",
  cmdline: () => over.cmdline ?? "nginx: worker process",
  ports: over.ports ?? [8080],
});

Deno.test("a selector matches what it names, all of it", () => {
  assert.ok(new Selector({ ports: [8080] }).matches(facts({})));
  assert.ok(new Selector({ ports: ["8000-8099"] }).matches(facts({ ports: [9000, 8050] })));
  assert.ok(!new Selector({ ports: ["8000-8099"] }).matches(facts({ ports: [9000] })));
  assert.ok(new Selector({ exe: "/usr/*/nginx" }).matches(facts({})));
  assert.ok(!new Selector({ exe: "/usr/*/nginx", ports: [1] }).matches(facts({})), "all of it");
  assert.ok(new Selector({ cmdline: "worker" }).matches(facts({})));
  assert.ok(new Selector({ pid: 100 }).matches(facts({})));
  assert.ok(!new Selector({ pid: 7 }).matches(facts({})));
});

Deno.test("a selector reads the command line only when it names one", () => {
  let reads = 0;
  const f = { ...facts({}), cmdline: () => (reads++, "x") };
  new Selector({ ports: [8080] }).matches(f);
  assert.equal(reads, 0);
  new Selector({ cmdline: "x" }).matches(f);
  assert.equal(reads, 1);
});

Deno.test("bad selectors are RangeErrors that say what is wrong", () => {
  assert.throws(() => new Selector({}), /needs ports, exe, cmdline or pid/);
  assert.throws(() => new Selector({ ports: ["9-1"] }), /ports/);
  assert.throws(() => new Selector({ ports: [70000] }), /ports/);
  assert.throws(() => new Selector({ cmdline: "(" }), /cmdline/);
});
