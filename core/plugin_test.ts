import { kernelDev } from "./plugin_host.ts";
import assert from "node:assert/strict";
import { z } from "zod";
import { type AnyPlugin, definePlugin, PluginDefinitionError, validatePlugin } from "./plugin.ts";

const ELF = new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0]);

function valid(): AnyPlugin {
  return {
    id: "my-proto2",
    description: "My protocol over TCP",
    bpfObject: ELF,
    optionsSchema: z.strictObject({ depth: z.number().default(1) }),
    constants: () => ({ enabled: true }),
    maxEntries: () => ({ conns: 1024 }),
    attachOnce: [
      { kind: "auto", program: "on_sock_recv" },
      { kind: "tracepoint", program: "on_exit", category: "sched", name: "sched_process_exit" },
    ],
    loadOnFirstTarget: true,
    attachOnDemand: {
      map: "sockets_wanted",
      specs: [{ kind: "auto", program: "on_sock_close" }],
      description: "first call seen",
    },
    appliesTo: () => true,
    attachForTarget: (t) => [
      { kind: "uprobe", program: "on_ssl_read", binaryPath: t.exe, symbol: "SSL_read", pid: t.pid },
      { kind: "uprobe", program: "on_x", binaryPath: "/bin/x", offset: 0x1234, optional: true },
    ],
    kernelCounters: ["connections_opened", "bytes_2"],
    decode: (b: Uint8Array) => ({ tgid: b[0] }),
    toObservation: () => undefined,
  };
}

/** Asserts `plugin` is rejected with a PluginDefinitionError naming `field` (and the id). */
function assertRejected(plugin: unknown, field: string, id = "my-proto2"): PluginDefinitionError {
  let error: unknown;
  try {
    validatePlugin(plugin);
  } catch (e) {
    error = e;
  }
  assert.ok(
    error instanceof PluginDefinitionError,
    `expected a PluginDefinitionError, got ${error}`,
  );
  assert.equal(error.name, "PluginDefinitionError");
  assert.ok(error.message.includes(`"${id}"`), error.message);
  assert.ok(error.message.includes(`${field}:`), `"${error.message}" should name ${field}`);
  assert.throws(() => definePlugin(plugin as AnyPlugin), PluginDefinitionError);
  return error;
}

Deno.test("validatePlugin() accepts a plugin using every part of the contract", () => {
  const plugin = valid();
  assert.equal(validatePlugin(plugin), plugin);
});

Deno.test("validatePlugin() accepts the minimal plugin: id, description, object, decode, toObservation", () => {
  const { id, description, bpfObject, decode, toObservation } = valid();
  assert.ok(validatePlugin({ id, description, bpfObject, decode, toObservation }));
});

Deno.test("definePlugin() returns the very object it was given", () => {
  const plugin = valid();
  assert.equal(definePlugin(plugin), plugin);
});

Deno.test("validatePlugin() accepts ids of lower-case words joined by '-'", () => {
  for (const id of ["http", "kprobe-http", "h2", "grpc-go-1", "a-b-c"]) {
    assert.ok(validatePlugin({ ...valid(), id }), id);
  }
});

Deno.test("validatePlugin() rejects a bad id, naming the field", () => {
  for (const id of ["", "HTTP", "kprobe_http", "-http", "http-", "a--b", "1http", "my proto"]) {
    const error = assertRejected({ ...valid(), id }, "id", id);
    assert.match(error.message, /lower-case words joined by '-'/);
  }
});

Deno.test("validatePlugin() names the plugin '?' when its id is not a string", () => {
  assertRejected({ ...valid(), id: 42 }, "id", "?");
  assertRejected({ ...valid(), id: undefined }, "id", "?");
});

Deno.test("validatePlugin() rejects a bpfObject that is not the bytes of an ELF object", () => {
  const notElf = [
    new Uint8Array([0x7f, 0x45, 0x4c, 0x47, 0, 0]), // wrong magic
    new TextEncoder().encode("int main() {}"), // a C source
    new Uint8Array([0x7f, 0x45, 0x4c, 0x46]), // the magic alone
    new Uint8Array(0),
  ];
  for (const bpfObject of notElf) {
    const error = assertRejected({ ...valid(), bpfObject }, "bpfObject");
    assert.match(error.message, /ELF/);
  }
  assertRejected({ ...valid(), bpfObject: ELF.buffer }, "bpfObject");
  assertRejected({ ...valid(), bpfObject: [...ELF] }, "bpfObject");
  assertRejected({ ...valid(), bpfObject: undefined }, "bpfObject");
});

Deno.test("validatePlugin() rejects a missing or non-function decode", () => {
  const { decode: _, ...noDecode } = valid();
  assertRejected(noDecode, "decode");
  assertRejected({ ...valid(), decode: "decodeHttpRequestEvent" }, "decode");
});

Deno.test("validatePlugin() rejects a missing toObservation", () => {
  const { toObservation: _, ...rest } = valid();
  assertRejected(rest, "toObservation");
});

Deno.test("validatePlugin() rejects a bad attach spec, naming where it is", () => {
  const bad: [unknown, string][] = [
    [{ kind: "auto" }, "attachOnce.0.program"],
    [{ kind: "auto", program: "" }, "attachOnce.0.program"],
    [{ kind: "kprobe", program: "p" }, "attachOnce.0.kind"],
    [{ program: "p" }, "attachOnce.0.kind"],
    [{ kind: "tracepoint", program: "p", name: "x" }, "attachOnce.0.category"],
    [{ kind: "uprobe", program: "p" }, "attachOnce.0.binaryPath"],
    [{ kind: "uprobe", program: "p", binaryPath: "/x", offset: -1 }, "attachOnce.0.offset"],
    [{ kind: "uprobe", program: "p", binaryPath: "/x", offset: 1.5 }, "attachOnce.0.offset"],
    [{ kind: "uprobe", program: "p", binaryPath: "/x", pid: 0 }, "attachOnce.0.pid"],
    [{ kind: "uprobe", program: "p", binaryPath: "/x", optional: "yes" }, "attachOnce.0.optional"],
  ];
  for (const [spec, field] of bad) {
    assertRejected({ ...valid(), attachOnce: [spec] }, field);
  }
  assertRejected(
    { ...valid(), attachOnce: [{ kind: "auto", program: "ok" }, { kind: "auto" }] },
    "attachOnce.1.program",
  );
  assertRejected({ ...valid(), attachOnce: { kind: "auto", program: "p" } }, "attachOnce");
});

Deno.test("validatePlugin() accepts attachOnDemand with specs or a function of the context", () => {
  const specs = [{ kind: "auto", program: "on_sock_recv" }];
  for (
    const attachOnDemand of [
      { map: "wanted", specs },
      { map: "wanted", specs: () => specs, description: "first call seen" },
      { map: "wanted", specs: [] },
    ]
  ) {
    validatePlugin({ ...valid(), attachOnDemand });
  }
});

Deno.test("validatePlugin() rejects a malformed attachOnDemand, naming where", () => {
  const spec = { kind: "auto", program: "p" };
  const bad: [unknown, string][] = [
    [{ specs: [spec] }, "attachOnDemand.map"],
    [{ map: "", specs: [spec] }, "attachOnDemand.map"],
    [{ map: "wanted" }, "attachOnDemand.specs"],
    [{ map: "wanted", specs: spec }, "attachOnDemand.specs"],
    [{ map: "wanted", specs: [spec, { kind: "auto" }] }, "attachOnDemand.specs.1.program"],
    [{ map: "wanted", specs: [{ kind: "kprobe", program: "p" }] }, "attachOnDemand.specs.0.kind"],
    [{ map: "wanted", specs: [spec], description: "" }, "attachOnDemand.description"],
    [{ map: "wanted", specs: [spec], when: "later" }, "attachOnDemand"],
    [[spec], "attachOnDemand"],
    ["wanted", "attachOnDemand"],
  ];
  for (const [attachOnDemand, field] of bad) {
    assertRejected({ ...valid(), attachOnDemand }, field);
  }
});

Deno.test("validatePlugin() accepts loadOnFirstTarget as a boolean or a function of the context", () => {
  for (
    const loadOnFirstTarget of [
      true,
      false,
      () => true,
      ({ options }: { options: object }) => !options,
    ]
  ) {
    assert.ok(validatePlugin({ ...valid(), loadOnFirstTarget }));
  }
  const { loadOnFirstTarget: _, ...without } = valid();
  assert.ok(validatePlugin(without));
});

Deno.test("validatePlugin() rejects a loadOnFirstTarget that is neither a boolean nor a function", () => {
  for (const loadOnFirstTarget of ["yes", 1, 0, null, [], { at: "first target" }]) {
    assertRejected({ ...valid(), loadOnFirstTarget }, "loadOnFirstTarget");
  }
});

Deno.test("validatePlugin() rejects other malformed fields, naming each", () => {
  assertRejected({ ...valid(), description: "" }, "description");
  assertRejected({ ...valid(), kernelCounters: ["Bad-Name"] }, "kernelCounters.0");
  assertRejected({ ...valid(), optionsSchema: { parse: () => ({}) } }, "optionsSchema");
  assertRejected({ ...valid(), constants: { x: 1 } }, "constants");
  assertRejected({ ...valid(), attachForTarget: [] }, "attachForTarget");
});

Deno.test("validatePlugin() lists every problem at once", () => {
  const error = assertRejected(
    { ...valid(), bpfObject: new Uint8Array(8), decode: undefined, attachOnce: [{ kind: "auto" }] },
    "bpfObject",
  );
  assert.match(error.message, /decode:/);
  assert.match(error.message, /attachOnce\.0\.program:/);
});

Deno.test("validatePlugin() rejects what is not an object", () => {
  for (const plugin of [undefined, null, 42, "kprobe-http"]) {
    assert.throws(() => validatePlugin(plugin), PluginDefinitionError, String(plugin));
  }
});

Deno.test("kernelDev() turns stat()'s device number into the kernel's s_dev", () => {
  assert.equal(kernelDev(0x0801), (8 << 20) | 1); // sda1
  assert.equal(kernelDev(0), 0);
  // A minor above 255 (glibc keeps its high bits above the major).
  const glibc = (major: number, minor: number) =>
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12);
  assert.equal(kernelDev(glibc(259, 70000)), ((259 << 20) | 70000) >>> 0);
});
