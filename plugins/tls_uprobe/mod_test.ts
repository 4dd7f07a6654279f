import assert from "node:assert/strict";
import { validatePlugin } from "../../core/plugin.ts";
import { HTTP_KERNEL_COUNTERS } from "../../lib/http1_records.ts";
import { btfOfElf, findType } from "../../lib/btf.ts";
import plugin, {
  planAttachments,
  SOCKET_PROGRAMS,
  systemLibraries,
  TLS_KERNEL_COUNTERS,
  tlsUprobeOptions,
} from "./mod.ts";
import type { TlsProbePlan } from "./library.ts";

const BUCKETS = { durationSeconds: [0.005, 0.01, 0.1, 1], sizeBytes: [0, 100, 1000] };

Deno.test("tls-uprobe is a valid plugin", () => {
  validatePlugin(plugin);
  assert.equal(plugin.id, "tls-uprobe");
  assert.deepEqual(plugin.sweep, { program: "tls_sweep", intervalMs: 1000 });
});

Deno.test("tls-uprobe attaches its socket programs on demand, once its BPF code asks", async () => {
  const ctx = {
    options: tlsUprobeOptions.parse({ clients: "targets" }),
    buckets: BUCKETS,
  };
  const once = typeof plugin.attachOnce === "function"
    ? plugin.attachOnce(ctx)
    : plugin.attachOnce ?? [];
  assert.deepEqual(once, [], "clients: targets: nothing attached at start");
  const onDemand = plugin.attachOnDemand!;
  assert.equal(onDemand.map, "sockets_wanted");
  const specs = typeof onDemand.specs === "function" ? onDemand.specs(ctx) : onDemand.specs;
  assert.deepEqual(specs, [
    { kind: "auto", program: "tls_sock_recv" },
    { kind: "auto", program: "tls_sock_send" },
    { kind: "auto", program: "tls_sock_state" },
  ]);
  // The committed object has the flag map and the programs.
  const btf = btfOfElf(await Deno.readFile(new URL("./tls_uprobe.bpf.o", import.meta.url)));
  assert.ok(findType(btf, "var", "sockets_wanted"), "map sockets_wanted");
  for (const name of SOCKET_PROGRAMS) assert.ok(findType(btf, "func", name), name);
});

Deno.test("tls-uprobe options: the engine's, plus libraries; unknown keys rejected", () => {
  const o = tlsUprobeOptions.parse({});
  assert.equal(o.request_timeout, 30_000);
  assert.equal(o.clients, "every_process");
  assert.equal(o.libraries, "auto");
  assert.deepEqual(tlsUprobeOptions.parse({ libraries: ["/opt/ssl/libssl.so.3"] }).libraries, [
    "/opt/ssl/libssl.so.3",
  ]);
  assert.throws(() => tlsUprobeOptions.parse({ libraries: "all" }));
  assert.throws(() => tlsUprobeOptions.parse({ executables: [] }));
});

Deno.test("tls-uprobe sets the engine's constants from its options", () => {
  const constants = plugin.constants!({
    options: tlsUprobeOptions.parse({ request_timeout: "2s", clients: "targets" }),
    buckets: BUCKETS,
    optionalLabels: ["server_port", "client_address"],
  });
  assert.equal(constants.request_timeout_ns, 2_000_000_000n);
  assert.equal(constants.client_mode, 1);
  assert.equal(constants.agent_tgid, Deno.pid);
  // Bit 1: the client side's server; bit 2: the server side's client.
  assert.equal(constants.peer_labels, 3);
});

Deno.test("TLS_KERNEL_COUNTERS names the engine's counters, then enum tls_stat in order", async () => {
  const source = await Deno.readTextFile(new URL("./tls_uprobe.bpf.c", import.meta.url));
  const body = /enum tls_stat \{([^}]*)\}/.exec(source)?.[1];
  assert.ok(body);
  const names = [...body.matchAll(/(TLS_STAT_\w+) = HTTP_STAT_MAX(?: \+ (\d+))?/g)]
    .map((m) => [m[1], Number(m[2] ?? 0)] as const);
  const counters = names.filter(([n]) => n !== "TLS_STAT_MAX");
  assert.deepEqual(counters.map(([, i]) => i), counters.map((_, i) => i));
  assert.equal(TLS_KERNEL_COUNTERS.length, HTTP_KERNEL_COUNTERS.length + counters.length);
  assert.deepEqual(TLS_KERNEL_COUNTERS.slice(0, HTTP_KERNEL_COUNTERS.length), [
    ...HTTP_KERNEL_COUNTERS,
  ]);
});

const PLAN: TlsProbePlan = {
  fileId: "2049:77",
  entries: [{ offset: 0x100, cookie: 0n }, { offset: 0x200, cookie: 1n }],
  exitSites: [0x120],
  returnProbes: [0x200],
  frees: [0x300],
  functions: {},
};

Deno.test("planAttachments: entries with cookies, exit sites, SSL_free, uretprobes", () => {
  assert.deepEqual(planAttachments("/lib/libssl.so.3", PLAN, false), [
    {
      kind: "uprobe-multi",
      program: "tls_enter",
      binaryPath: "/lib/libssl.so.3",
      offsets: [0x100, 0x200],
      cookies: [0n, 1n],
    },
    { kind: "uprobe-multi", program: "tls_exit", binaryPath: "/lib/libssl.so.3", offsets: [0x120] },
    { kind: "uprobe-multi", program: "tls_free", binaryPath: "/lib/libssl.so.3", offsets: [0x300] },
    {
      kind: "uprobe-multi",
      program: "tls_exit",
      binaryPath: "/lib/libssl.so.3",
      offsets: [0x200],
      retprobe: true,
    },
  ]);
});

Deno.test("planAttachments: shared attachments are keyed by the file, one key per link", () => {
  const keys = planAttachments("/usr/bin/node", PLAN, true).map((s) =>
    s.kind === "uprobe-multi" ? s.shareKey : undefined
  );
  assert.deepEqual(keys, ["2049:77:enter", "2049:77:exit", "2049:77:free", "2049:77:return"]);
});

Deno.test("systemLibraries finds each libssl.so.N once, through links, and nothing else", () => {
  const dir = Deno.makeTempDirSync();
  try {
    Deno.writeTextFileSync(`${dir}/libssl.so.3`, "x");
    Deno.symlinkSync(`${dir}/libssl.so.3`, `${dir}/libssl.so`);
    Deno.writeTextFileSync(`${dir}/libssl.so.1.1`, "y");
    Deno.writeTextFileSync(`${dir}/libssl3.so`, "z"); // NSS, not OpenSSL
    Deno.writeTextFileSync(`${dir}/libcrypto.so.3`, "z");
    Deno.symlinkSync(`${dir}/gone`, `${dir}/libssl.so.9`);
    assert.deepEqual(systemLibraries([dir, `${dir}/missing`, dir]).sort(), [
      `${dir}/libssl.so.1.1`,
      `${dir}/libssl.so.3`,
    ]);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
