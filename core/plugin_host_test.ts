/**
 * PluginHost with `loadOnFirstTarget`: what it does before the load (nothing of the kernel's,
 * every counter at 0, exclusions remembered), the load at the first target against the real
 * kernel (go-grpc's object), and a load that fails there (counted once, the plugin off for good).
 */
import assert from "node:assert/strict";
import type { AnyPlugin, TargetProcess } from "./plugin.ts";
import { loadsOnFirstTarget, PluginHost, type PluginHostSinks } from "./plugin_host.ts";
import { createLogger } from "./log.ts";
import goGrpc, { goGrpcOptions } from "../plugins/go_grpc/mod.ts";
import { GO_GRPC_KERNEL_COUNTERS } from "../plugins/go_grpc/decode.ts";
import { assertBpfAvailable, skipBpf } from "../tests/support/privileges.ts";
import { mapIdsByNameHeldBy } from "../tests/support/bpf_held.ts";

const BUCKETS = { durationSeconds: [0.1, 1], sizeBytes: [64] };
/** Against the kernel; the ring reader's poll runs on a worker thread (as in core_bpf_test). */
const bpf = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };
/** An ELF header and nothing else: libbpf cannot open it. */
const NOT_AN_OBJECT = new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0, 0, 0, 0, 0]);

function recorder() {
  const lines: string[] = [];
  const failures: [string, string][] = [];
  const skipped: [string, string][] = [];
  const sinks: PluginHostSinks = {
    observe: () => {},
    observeAggregate: () => {},
    dropped: () => {},
    attachFailed: (plugin, reason) => failures.push([plugin, reason]),
    skipped: (plugin, reason) => skipped.push([plugin, reason]),
  };
  return { lines, failures, skipped, sinks, log: createLogger("debug", (l) => lines.push(l)) };
}

function target(pid: number, exe = "/usr/bin/true"): TargetProcess {
  return {
    pid,
    startTime: 1,
    exe,
    serviceName: "t",
    serviceNamespace: "",
    instance: `h:${pid}`,
    listenPorts: [8080],
  };
}

/** A lazy plugin whose object libbpf cannot even open: loading it at all would throw. */
function unopenable(overrides: Partial<AnyPlugin> = {}): AnyPlugin {
  return {
    id: "lazy-test",
    description: "a plugin that loads at its first target",
    bpfObject: NOT_AN_OBJECT,
    loadOnFirstTarget: true,
    kernelCounters: ["calls_started", "calls_dropped"],
    appliesTo: (t) => t.pid !== 2,
    replaces: ["kprobe-http/clients"],
    selectsExecutable: (exe) => exe.endsWith("/client"),
    attachForTarget: () => [],
    decode: (b: Uint8Array) => b[0],
    toObservation: () => undefined,
    ...overrides,
  };
}

Deno.test("loadsOnFirstTarget(): the boolean, or the function's answer for the context", () => {
  const ctx = { options: { executables: [] as string[] }, buckets: BUCKETS };
  assert.equal(loadsOnFirstTarget(unopenable(), ctx), true);
  assert.equal(loadsOnFirstTarget(unopenable({ loadOnFirstTarget: false }), ctx), false);
  assert.equal(loadsOnFirstTarget(unopenable({ loadOnFirstTarget: undefined }), ctx), false);
  const byOptions = unopenable({
    loadOnFirstTarget: ({ options }) => options.executables.length === 0,
  });
  assert.equal(loadsOnFirstTarget(byOptions, ctx), true);
  assert.equal(
    loadsOnFirstTarget(byOptions, { ...ctx, options: { executables: ["/usr/bin/hey"] } }),
    false,
  );
});

Deno.test("a plugin that loads at its first target touches no kernel state before it", async () => {
  const { sinks, log, failures } = recorder();
  // The constructor would throw if it opened the object.
  const host = new PluginHost(unopenable(), {}, BUCKETS, log, sinks);
  assert.equal(host.isLoaded, false);
  // Its counters exist from the start, at 0.
  assert.deepEqual(host.stats.kernelCounters(), {
    lost: 0n,
    counters: new Map([["calls_started", 0n], ["calls_dropped", 0n]]),
  });
  assert.equal(host.stats.ringFill(), 0);
  assert.equal(host.stats.programs().size, 0);
  assert.equal(host.stats.instrumented, 0);
  // What needs no object answers as usual.
  assert.equal(host.appliesTo(target(1)), true);
  assert.equal(host.appliesTo(target(2)), false);
  assert.equal(host.mayReplace, true);
  assert.deepEqual(host.replacesFor(target(1)), ["kprobe-http/clients"]);
  assert.equal(host.selectsExecutable("/opt/client", 3), true);
  assert.equal(host.selectsExecutable("/opt/server", 3), false);
  assert.deepEqual(host.replacesOnExecutables(), {});
  // Exclusions are remembered for the load; a missing file is still an error now, at start.
  host.excludeClients(4242);
  host.excludeClients(4242);
  host.excludeClientsOfExecutable("/bin/sh");
  assert.throws(() => host.excludeClientsOfExecutable("/nonexistent/exe"), Deno.errors.NotFound);
  host.remove(4242);
  host.remove(999_999);
  host.drain();
  assert.deepEqual(host.instrumentedPids, []);
  assert.deepEqual(failures, []);
  await host.close(); // nothing to release
  await host.close();
  assert.equal(host.isLoaded, false);
  assert.equal(host.stats.kernelCounters().counters.size, 0);
  assert.equal(host.add(target(1)), true, "a closed host ignores targets, as before");
  assert.equal(host.isLoaded, false);
});

Deno.test("a loadOnFirstTarget function that throws fails the start, like constants()", () => {
  const { sinks, log } = recorder();
  const plugin = unopenable({
    loadOnFirstTarget: () => {
      throw new Error("no idea");
    },
  });
  assert.throws(() => new PluginHost(plugin, {}, BUCKETS, log, sinks), /no idea/);
});

Deno.test({
  name: "a load that fails at the first target is counted once, logged, and never retried",
  ...bpf,
  async fn() {
    assertBpfAvailable();
    for (
      const plugin of [
        // libbpf cannot open it.
        unopenable(),
        // The kernel refuses it: a hash map of 0 entries (EINVAL when the maps are created).
        unopenable({
          bpfObject: goGrpc.bpfObject,
          constants: goGrpc.constants,
          uprobeMultiPrograms: goGrpc.uprobeMultiPrograms,
          maxEntries: () => ({ calls: 0 }),
        }),
      ]
    ) {
      const { sinks, log, failures, lines } = recorder();
      const options = goGrpcOptions.parse({});
      const host = new PluginHost(plugin, options, BUCKETS, log, sinks);
      host.excludeClients(77);
      assert.equal(host.appliesTo(target(1)), true);
      assert.equal(host.add(target(1)), false);
      assert.equal(host.isLoaded, false);
      assert.equal(failures.length, 1, JSON.stringify(failures));
      assert.equal(failures[0][0], "lazy-test");
      const errors = lines.filter((l) => / ERROR /.test(l));
      assert.equal(errors.length, 1, lines.join("\n"));
      assert.match(
        errors[0],
        /lazy-test: cannot load its BPF object at its first target \(pid 1, \/usr\/bin\/true\): .*stays off until the agent restarts/,
      );
      // Off for good: no more targets, no second attempt, no second count.
      assert.equal(host.appliesTo(target(3)), false);
      assert.equal(host.selectsExecutable("/opt/client", 3), false);
      assert.equal(host.add(target(3)), false);
      assert.equal(failures.length, 1);
      assert.equal(lines.filter((l) => / ERROR /.test(l)).length, 1);
      // Its counters stay at 0, and nothing is left to release.
      assert.equal(host.stats.kernelCounters().counters.get("calls_started"), 0n);
      assert.equal(host.stats.programs().size, 0);
      host.excludeClients(78);
      host.remove(77);
      host.drain();
      await host.close();
    }
  },
});

Deno.test({
  name: "loadNow(): a lazy plugin loads at once (the agent's check when nothing else loaded)",
  ...bpf,
  async fn() {
    assertBpfAvailable();
    const options = goGrpcOptions.parse({});
    // One that cannot load throws, and stays unloaded and uncounted (the agent counts it).
    const broken = recorder();
    const failing = new PluginHost(unopenable(), options, BUCKETS, broken.log, broken.sinks);
    assert.throws(() => failing.loadNow());
    assert.equal(failing.isLoaded, false);
    assert.equal(broken.failures.length, 0);
    await failing.close();
    // One that can: loaded, and a second call does nothing.
    const { sinks, log } = recorder();
    const host = new PluginHost(goGrpc, options, BUCKETS, log, sinks);
    try {
      assert.equal(host.isLoaded, false);
      host.loadNow();
      assert.equal(host.isLoaded, true);
      host.loadNow();
      assert.equal(host.isLoaded, true);
    } finally {
      await host.close();
    }
  },
});

/** Bit `pid` of the bitmap (array of u64 words) map `id`. */
async function bitOf(id: number, pid: number): Promise<boolean> {
  const word = Math.floor(pid / 64);
  const key = [word & 0xff, (word >> 8) & 0xff, (word >> 16) & 0xff, word >>> 24].map(String);
  const out = await new Deno.Command("bpftool", {
    args: ["map", "lookup", "id", String(id), "key", ...key, "-j"],
    stdout: "piped",
  }).output();
  const { value } = JSON.parse(new TextDecoder().decode(out.stdout)) as { value: string[] };
  const bits = value.reduce((acc, byte, i) => acc | (BigInt(Number(byte)) << BigInt(8 * i)), 0n);
  return (bits >> BigInt(pid % 64) & 1n) === 1n;
}

Deno.test({
  name: "go-grpc's object loads at the first target, with the exclusions asked for before it",
  ...bpf,
  async fn() {
    assertBpfAvailable();
    const { sinks, log, failures, lines } = recorder();
    // go-grpc itself, made to take this (non-Go) process with no probe of its own.
    const plugin: AnyPlugin = { ...goGrpc, appliesTo: () => true, attachForTarget: () => [] };
    const host = new PluginHost(plugin, goGrpcOptions.parse({}), BUCKETS, log, sinks);
    try {
      assert.equal(host.isLoaded, false);
      assert.equal((await mapIdsByNameHeldBy(Deno.pid)).size, 0, "no map before the first target");
      assert.deepEqual(
        [...host.stats.kernelCounters().counters.keys()],
        [...GO_GRPC_KERNEL_COUNTERS],
      );
      host.excludeClients(4242);
      host.excludeClients(4243);
      host.remove(4243); // forgotten before the load: never written
      const me = target(Deno.pid, Deno.execPath());
      assert.equal(host.add(me), true, lines.join("\n"));
      assert.equal(host.isLoaded, true);
      assert.deepEqual(failures, []);
      assert.ok(
        lines.some((l) =>
          new RegExp(
            ` INFO  go-grpc: BPF object loaded at its first target \\(pid ${Deno.pid}\\) in \\d+ ms$`,
          ).test(l)
        ),
        lines.join("\n"),
      );
      assert.deepEqual(host.instrumentedPids, [Deno.pid]);
      assert.deepEqual(
        [...host.stats.programs().keys()].sort(),
        ["grpc_client_end", "grpc_client_start", "grpc_server_end", "grpc_server_start"],
      );
      assert.deepEqual(
        [...host.stats.kernelCounters().counters.keys()],
        [...GO_GRPC_KERNEL_COUNTERS],
      );
      const maps = await mapIdsByNameHeldBy(Deno.pid);
      const [targets] = maps.get("targets") ?? [];
      const [excluded] = maps.get("excluded") ?? [];
      assert.ok(targets && excluded, JSON.stringify([...maps]));
      assert.equal(await bitOf(targets, Deno.pid), true, "the target's bit");
      assert.equal(await bitOf(excluded, 4242), true, "exclusion asked for before the load");
      assert.equal(await bitOf(excluded, 4243), false, "exclusion undone before the load");
      // After the load, exclusions go straight to the map, as for a plugin loaded at start.
      host.excludeClients(4244);
      assert.equal(await bitOf(excluded, 4244), true);
      host.remove(4242);
      assert.equal(await bitOf(excluded, 4242), false);
      // A second target loads nothing more.
      assert.equal(host.add(target(1)), true);
      assert.equal(lines.filter((l) => /loaded at its first target/.test(l)).length, 1);
      host.remove(1);
      host.remove(Deno.pid);
      assert.equal(await bitOf(targets, Deno.pid), false);
      host.drain();
    } finally {
      await host.close();
    }
    assert.equal(host.isLoaded, false);
    assert.equal(host.stats.programs().size, 0);
    assert.equal((await mapIdsByNameHeldBy(Deno.pid)).size, 0, "every map released");
  },
});
