/**
 * The core against the real kernel: open a BPF object from bytes, set a load-time constant,
 * load, attach a classic tracepoint and uprobes (by symbol and by file offset, for one pid),
 * read the ring buffer, detach; and errors that say what failed.
 */
import assert from "node:assert/strict";
import { BpfObject } from "../core/bpf/object.ts";
import { attachTracepoint, attachUprobe } from "../core/bpf/link.ts";
import { RingBufferReader } from "../core/bpf/ring_buffer.ts";
import { BpfError } from "../core/ffi/libbpf.ts";
import { assertBpfAvailable, skipBpf } from "./support/privileges.ts";

const OBJECT = await Deno.readFile(new URL("./fixtures/bpf/core_probe.bpf.o", import.meta.url));
const LIBC = "/lib/x86_64-linux-gnu/libc.so.6";
const CALLS = 100;

/**
 * A python process that waits for a line on stdin, then makes CALLS calls of `call`, and
 * exits. Python never calls getpriority on its own (it does call getppid now and then), so
 * counts of the libc function and of the syscall are exact.
 */
function spawnCaller(
  call = "os.getpriority(os.PRIO_PROCESS, 0)",
): { pid: number; go: () => Promise<void> } {
  const child = new Deno.Command("python3", {
    args: ["-c", `import os,sys\nsys.stdin.readline()\nfor _ in range(${CALLS}): ${call}\n`],
    stdin: "piped",
    stdout: "null",
  }).spawn();
  return {
    pid: child.pid,
    go: async () => {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode("go\n"));
      await w.close();
      assert.ok((await child.status).success);
    },
  };
}

/** The test object, loaded to count what process `tgid` does. */
function loadFor(tgid: number): BpfObject {
  const obj = BpfObject.open(OBJECT, "core_probe");
  try {
    obj.setConstants({ target_tgid: tgid });
    obj.load();
    return obj;
  } catch (e) {
    obj.close();
    throw e;
  }
}

/** File offset of `symbol` in an ELF file, from readelf (symbol value -> its LOAD segment). */
async function fileOffsetOf(path: string, symbol: string): Promise<number> {
  const run = async (args: string[]) =>
    new TextDecoder().decode(
      (await new Deno.Command("readelf", { args, stdout: "piped" }).output()).stdout,
    );
  const sym = (await run(["-Ws", path])).split("\n").find((l) =>
    l.trim().split(/\s+/)[7]?.split("@")[0] === symbol
  );
  assert.ok(sym, `${symbol} in ${path}`);
  const value = parseInt(sym.trim().split(/\s+/)[1], 16);
  for (const line of (await run(["-lW", path])).split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f[0] !== "LOAD") continue;
    const [offset, vaddr, , , memsz] = f.slice(1, 6).map((x) => parseInt(x, 16));
    if (value >= vaddr && value < vaddr + memsz) return value - vaddr + offset;
  }
  throw new Error(`no LOAD segment holds ${symbol}`);
}

function stats(obj: BpfObject, index: number): number {
  return Number(obj.map("stats").sumPerCpuU64(index));
}

const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

Deno.test({
  ...base,
  name:
    "a classic tracepoint counts exactly one process's syscalls and the ring buffer delivers one record each",
  async fn() {
    assertBpfAvailable();
    const caller = spawnCaller();
    using obj = loadFor(caller.pid);
    const seqs: number[] = [];
    const reader = new RingBufferReader(obj.map("events"), (r) => {
      const view = new DataView(r.buffer, r.byteOffset, r.byteLength);
      assert.equal(view.getUint32(0, true), caller.pid);
      seqs.push(view.getUint32(4, true));
    });
    try {
      using link = attachTracepoint(
        obj.program("on_getpriority"),
        "syscalls",
        "sys_enter_getpriority",
      );
      assert.ok(link.attached);
      await caller.go();
      reader.drain();
      assert.equal(stats(obj, 1), CALLS);
      assert.deepEqual(seqs, Array.from({ length: CALLS }, (_, i) => i));
    } finally {
      await reader.close();
    }
  },
});

Deno.test({
  ...base,
  name:
    "the reader's loop calls onWake after each poll, once the records are drained; a throw goes to onError",
  async fn() {
    assertBpfAvailable();
    const caller = spawnCaller();
    using obj = loadFor(caller.pid);
    let records = 0;
    const seenAtWake: number[] = [];
    const errors: unknown[] = [];
    const reader = new RingBufferReader(obj.map("events"), () => records++, {
      pollTimeoutMs: 20,
      onError: (e) => errors.push(e),
      onWake: () => {
        seenAtWake.push(records);
        if (seenAtWake.length === 1) throw new Error("first wake throws");
      },
    });
    try {
      using _link = attachTracepoint(
        obj.program("on_getpriority"),
        "syscalls",
        "sys_enter_getpriority",
      );
      reader.start();
      await caller.go();
      const deadline = Date.now() + 2_000;
      while (seenAtWake.at(-1) !== CALLS && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 10));
      }
      // Every record was drained by the loop before a wake saw them all; the throw did not
      // stop it (the wakes went on, at least one per poll timeout).
      assert.equal(seenAtWake.at(-1), CALLS, JSON.stringify(seenAtWake));
      assert.ok(seenAtWake.length >= 2, `${seenAtWake.length} wakes`);
      assert.equal(errors.length, 1);
      assert.match((errors[0] as Error).message, /first wake throws/);
    } finally {
      await reader.close();
    }
  },
});

Deno.test({
  ...base,
  name: "uprobes attach by symbol and by file offset, for one pid, and stop counting once detached",
  async fn() {
    assertBpfAvailable();
    for (const how of ["symbol", "offset"] as const) {
      const caller = spawnCaller();
      using obj = loadFor(caller.pid);
      const where = how === "symbol"
        ? { symbol: "getpriority" }
        : { offset: await fileOffsetOf(LIBC, "getpriority") };
      const link = attachUprobe(obj.program("on_uprobe"), {
        binaryPath: LIBC,
        pid: caller.pid,
        ...where,
      });
      await caller.go();
      assert.equal(stats(obj, 2), CALLS, how);
      link.destroy();
      assert.ok(!link.attached);
      link.destroy(); // idempotent
    }
  },
});

Deno.test({
  ...base,
  name:
    "errors say what failed: unknown constant, missing tracepoint, missing symbol, unknown program",
  fn() {
    assertBpfAvailable();
    using obj = BpfObject.open(OBJECT, "core_probe");
    assert.throws(
      () => obj.setConstants({ no_such_constant: 1 }),
      /has no constant "no_such_constant"/,
    );
    assert.throws(() => obj.setConstants({ target_tgid: 2 ** 40 }), RangeError);
    obj.load();
    assert.throws(() => obj.setConstants({ target_tgid: 1 }), /already loaded/);
    assert.throws(() => obj.program("nope"), /has no program "nope"/);
    assert.throws(
      () =>
        attachTracepoint(obj.program("on_getpriority"), "syscalls", "sys_enter_no_such_syscall"),
      (e: unknown) =>
        e instanceof BpfError && e.code === "ENOENT" &&
        e.message.startsWith("Cannot attach tracepoint syscalls/sys_enter_no_such_syscall: ENOENT"),
    );
    assert.throws(
      () =>
        attachUprobe(obj.program("on_uprobe"), {
          binaryPath: LIBC,
          symbol: "no_such_function_here",
        }),
      (e: unknown) =>
        e instanceof BpfError && /Cannot attach uprobe "no_such_function_here" to/.test(e.message),
    );
  },
});

Deno.test({
  name: "opening bytes that are not a BPF object fails with a BpfError",
  fn() {
    assert.throws(
      () => BpfObject.open(new TextEncoder().encode("not an ELF file at all"), "junk"),
      (e: unknown) => e instanceof BpfError && /Cannot open BPF object "junk"/.test(e.message),
    );
  },
});
