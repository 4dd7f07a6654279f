/**
 * Runs one plugin: loads its BPF object, attaches what it declares, keeps the `targets` bitmap
 * in step with the processes it instruments, reads its ring buffer and hands decoded
 * observations on. It owns every kernel resource of that plugin and frees them in `close()`.
 * A plugin with `loadOnFirstTarget` is loaded by its first `add()` instead of at construction:
 * until then the host answers for it (the plugin's own decisions, zero counters) and
 * remembers what must be written into the object once it exists (exclusions).
 *
 * A failure while attaching to one process is counted and logged; it never stops the plugin or
 * the other processes.
 *
 * @module
 */
import type {
  AnyPlugin,
  AttachSpec,
  MetricBuckets,
  PluginContext,
  RedAggregate,
  RedObservation,
  TargetProcess,
} from "./plugin.ts";
import { BpfObject } from "./bpf/object.ts";
import {
  attachBySection,
  attachTracepoint,
  attachUprobe,
  attachUprobeMulti,
  type BpfLink,
} from "./bpf/link.ts";
import { RingBufferReader } from "./bpf/ring_buffer.ts";
import type { BpfMap } from "./bpf/map.ts";
import { BpfError } from "./ffi/libbpf.ts";
import type { Logger } from "./log.ts";

/** What the host reports to the rest of the agent. */
export interface PluginHostSinks {
  observe(observation: RedObservation): void;
  observeAggregate(aggregate: RedAggregate): void;
  /** A record the agent could not use (decode error, unknown kind). */
  dropped(plugin: string, reason: string): void;
  /** An attach that failed; `reason` is an errno name or a short word. */
  attachFailed(plugin: string, reason: string): void;
  /** A process the plugin chose to leave alone, and why. */
  skipped(plugin: string, reason: string): void;
}

/** Counters the exporter reads at scrape time. */
export interface PluginHostStats {
  recordsRead: number;
  instrumented: number;
  /** The `stats` map: index 0 (ring-buffer losses) then the plugin's kernel counters. */
  kernelCounters(): { lost: bigint; counters: Map<string, bigint> };
  ringFill(): number;
  /** Per program: run count and run time (kernel.bpf_stats_enabled). */
  programs(): Map<string, { runCount: bigint; runTimeNs: bigint }>;
}

/**
 * A device number as the kernel keeps it in a superblock (`MKDEV`: major << 20 | minor) from
 * the one stat() gives (glibc's encoding: minor's low 8 bits, major's 12, minor's high 12).
 */
export function kernelDev(dev: number): number {
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | (Math.floor(dev / 4096) & 0xfff00);
  return ((major << 20) | minor) >>> 0;
}

/** Whether process `pid` still exists. */
function alive(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Largest pid the targets bitmap must cover, from the running kernel. */
export function readPidMax(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/kernel/pid_max").trim()) || 4_194_304;
  } catch {
    return 4_194_304;
  }
}

/**
 * Opens `plugin`'s BPF object, configures it for `ctx` (constants, map sizes, uprobe_multi
 * programs) and loads it (the verifier's work); `loaded` hears how long that took. The caller
 * owns the object. Throws, with nothing left open, when it cannot load on this kernel.
 */
export function loadPluginObject(
  plugin: AnyPlugin,
  ctx: PluginContext<unknown>,
  loaded?: (ms: number) => void,
): BpfObject {
  const object = BpfObject.open(plugin.bpfObject, plugin.id.replaceAll("-", "_"));
  try {
    object.setConstants(plugin.constants?.(ctx) ?? {});
    const bitmapWords = Math.ceil((readPidMax() + 1) / 64);
    object.setMaxEntries("targets", bitmapWords);
    if (object.hasMap("excluded")) object.setMaxEntries("excluded", bitmapWords);
    for (const name of plugin.uprobeMultiPrograms ?? []) {
      object.program(name).prepareForUprobeMulti();
    }
    for (const [map, entries] of Object.entries(plugin.maxEntries?.(ctx) ?? {})) {
      object.setMaxEntries(map, entries);
    }
    const started = performance.now();
    object.load();
    loaded?.(Math.round(performance.now() - started));
    return object;
  } catch (e) {
    object.close();
    throw e;
  }
}

/** Whether `plugin` waits for its first target to load (`loadOnFirstTarget`) under `ctx`. */
export function loadsOnFirstTarget(plugin: AnyPlugin, ctx: PluginContext<unknown>): boolean {
  const lazy = plugin.loadOnFirstTarget;
  return typeof lazy === "function" ? lazy(ctx) === true : lazy === true;
}

/** The `reason` label of `redprobe_attach_failures_total` for `e`: the errno name of a BpfError. */
export function attachFailureReason(e: unknown): string {
  return e instanceof BpfError ? e.code : "error";
}

/**
 * What to add to the message of a plugin that could not load: how to grant the privileges when
 * the kernel said EPERM or EACCES, else nothing.
 */
export function loadFailureHint(e: unknown): string {
  return e instanceof BpfError && (e.errno === 1 || e.errno === 13)
    ? " (the agent needs root, or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: see `redprobe doctor`)"
    : "";
}

export class PluginHost implements AsyncDisposable {
  readonly plugin: AnyPlugin;
  /**
   * The loaded object; undefined before the load of a `loadOnFirstTarget` plugin, for good
   * after that load failed (see #loadFailed), and once closed. So are #targets, #stats and
   * #reader: each is set by #load() and read only when #object is.
   */
  #object: BpfObject | undefined;
  readonly #log: Logger;
  readonly #sinks: PluginHostSinks;
  readonly #globalLinks: BpfLink[] = [];
  readonly #targetLinks = new Map<number, BpfLink[]>();
  /** Attachments shared by targets (`shareKey`), with the number of targets using each. */
  readonly #shared = new Map<string, { link: BpfLink; users: number }>();
  /** The shared attachments each target uses. */
  readonly #targetShares = new Map<number, string[]>();
  /** Detaches under way (see #detachInBackground). */
  readonly #detaching = new Set<Promise<void>>();
  #targets: BpfMap | undefined;
  /**
   * Pids whose client side another plugin measures (the `excluded` bitmap). Before the load,
   * every pid asked for (whether the object has the map is not known yet), written at load.
   */
  readonly #excluded = new Set<number>();
  /** `excluded_exes` keys asked for before the load, written at load. */
  readonly #excludedExesPending: Uint8Array<ArrayBuffer>[] = [];
  #stats: BpfMap | undefined;
  #reader: RingBufferReader | undefined;
  /**
   * The load at the first target failed: the plugin stays unloaded and takes no more targets
   * (see PluginDefinition.loadOnFirstTarget for why it is not retried).
   */
  #loadFailed = false;
  /** Cumulative counters of each aggregate key at the last read (by key hex). */
  readonly #aggregatesSeen = new Map<string, Float64Array>();
  readonly #ctx: PluginContext<unknown>;
  #closed = false;
  #sweepTimer: ReturnType<typeof setInterval> | undefined;
  /**
   * The `attachOnDemand` flag map while its programs wait to be attached; undefined before
   * start, once they are attached, once that failed, and for plugins without any.
   */
  #onDemandFlag: BpfMap | undefined;

  /**
   * Opens, configures, loads and attaches `plugin`, unless it loads at its first target
   * (`loadOnFirstTarget`: then nothing of the kernel's is touched here). Throws (with every
   * partial resource released) when the plugin cannot run at all on this machine.
   */
  constructor(
    plugin: AnyPlugin,
    options: unknown,
    buckets: MetricBuckets,
    log: Logger,
    sinks: PluginHostSinks,
    optionalLabels: readonly string[] = [],
    /** One record per request is needed (traces): see PluginContext.perRequestEvents. */
    perRequestEvents = false,
  ) {
    this.plugin = plugin;
    this.#log = log;
    this.#sinks = sinks;
    const ctx = { options, buckets, optionalLabels, perRequestEvents };
    this.#ctx = ctx;
    // A function that throws fails the start, like constants() or attachOnce() would.
    if (loadsOnFirstTarget(plugin, ctx)) return;
    this.#load((ms) => log.debug(`${plugin.id}: BPF object loaded in ${ms} ms`));
  }

  /**
   * Starts the plugin in the kernel: open -> set constants and sizes -> load (verifier) ->
   * write the exclusions asked for so far -> attach `attachOnce` -> sweep -> read the ring.
   * The one place that does it, at construction or at the first target. Throws with every
   * partial resource released and the host as it was (not loaded).
   */
  #load(loaded: (ms: number) => void): void {
    const plugin = this.plugin;
    const object = loadPluginObject(plugin, this.#ctx, loaded);
    this.#object = object;
    try {
      this.#targets = object.map("targets");
      this.#stats = object.map("stats");
      // Before any program is attached, so none sees a process it must leave as not excluded.
      this.#writeExclusions();
      const once = typeof plugin.attachOnce === "function"
        ? plugin.attachOnce(this.#ctx)
        : plugin.attachOnce ?? [];
      for (const spec of once) this.#globalLinks.push(this.#attach(spec));
      // A missing flag map is the plugin's mistake: the start fails, as for attachOnce.
      if (plugin.attachOnDemand) this.#onDemandFlag = object.map(plugin.attachOnDemand.map);
      // Before the reader: a sweep program that cannot run fails the start with nothing running.
      if (plugin.sweep) this.#startSweep(plugin.sweep.program, plugin.sweep.intervalMs ?? 1000);
      // Last of what may throw: a reader is never left mapped by a failed start.
      this.#reader = new RingBufferReader(
        object.map("events"),
        (record) => this.#onRecord(record),
        {
          onError: (e) => this.#log.warn(`${plugin.id}: ring buffer: ${(e as Error).message}`),
          // One array lookup per wake while the on-demand programs wait, nothing after.
          onWake: () => {
            if (this.#onDemandFlag) this.#attachOnDemandIfWanted();
          },
        },
      );
    } catch (e) {
      if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
      this.#sweepTimer = undefined;
      this.#onDemandFlag = undefined;
      for (const link of this.#globalLinks.splice(0)) link.destroy();
      this.#object = this.#targets = this.#stats = undefined;
      object.close();
      throw e;
    }
    // The BPF code may have asked between load and now (its wake-up came before the reader).
    if (this.#onDemandFlag) this.#attachOnDemandIfWanted();
    this.#reader.start();
  }

  /**
   * Loads a `loadOnFirstTarget` plugin for `target`, its first. False when that failed: counted
   * as an attach failure of the target and logged, and the plugin stays unloaded for good.
   */
  #loadAtFirstTarget(target: TargetProcess): boolean {
    if (this.#loadFailed) return false;
    let took = 0;
    try {
      this.#load((ms) => took = ms);
    } catch (e) {
      this.#loadFailed = true;
      this.#excluded.clear();
      this.#excludedExesPending.length = 0;
      this.#sinks.attachFailed(this.plugin.id, attachFailureReason(e));
      const id = this.plugin.id;
      this.#log.error(
        `${id}: cannot load its BPF object at its first target (pid ${target.pid}, ${target.exe}): ` +
          `${(e as Error).message}${loadFailureHint(e) || " (see `redprobe doctor`)"}; ` +
          `${id} stays off until the agent restarts, and leaves its processes to the other plugins`,
      );
      return false;
    }
    this.#log.info(
      `${this.plugin.id}: BPF object loaded at its first target (pid ${target.pid}) in ${took} ms`,
    );
    return true;
  }

  /**
   * Loads a `loadOnFirstTarget` plugin now (the agent does when nothing else could load).
   * Throws as the constructor would, with the host left unloaded; nothing to do if loaded.
   */
  loadNow(): void {
    if (this.#object || this.#closed) return;
    this.#load((ms) => this.#log.debug(`${this.plugin.id}: BPF object loaded in ${ms} ms`));
  }

  /** Whether the BPF object is loaded (false before the first target of a lazy plugin). */
  get isLoaded(): boolean {
    return this.#object !== undefined;
  }

  /** The loaded object, for code that runs only once it is (anything else is a bug here). */
  get #loaded(): BpfObject {
    if (!this.#object) throw new Error(`${this.plugin.id}: its BPF object is not loaded`);
    return this.#object;
  }

  /** Writes the exclusions asked for before the load into the new object. */
  #writeExclusions(): void {
    const object = this.#loaded;
    if (!object.hasMap("excluded")) this.#excluded.clear();
    for (const pid of this.#excluded) this.#setBit("excluded", pid, true);
    if (object.hasMap("excluded_exes")) {
      const exes = object.map("excluded_exes");
      for (const key of this.#excludedExesPending) exes.update(key, new Uint8Array([1]));
    }
    this.#excludedExesPending.length = 0;
  }

  get instrumentedPids(): number[] {
    return [...this.#targetLinks.keys()];
  }

  readonly stats: PluginHostStats = {
    recordsRead: 0,
    instrumented: 0,
    // Not loaded yet (or its load failed): every counter at 0, so the plugin's series exist
    // from the start like those of a loaded plugin; closed: none.
    kernelCounters: () => {
      const counters = new Map<string, bigint>();
      if (this.#closed) return { lost: 0n, counters };
      const stats = this.#stats;
      (this.plugin.kernelCounters ?? []).forEach((name: string, i: number) => {
        counters.set(name, stats?.sumPerCpuU64(i + 1) ?? 0n);
      });
      return { lost: stats?.sumPerCpuU64(0) ?? 0n, counters };
    },
    ringFill: () => {
      const reader = this.#reader;
      return this.#closed || !reader ? 0 : reader.pendingBytes / reader.size;
    },
    programs: () => {
      const out = new Map<string, { runCount: bigint; runTimeNs: bigint }>();
      if (this.#closed || !this.#object) return out;
      for (const program of this.#object.programs()) {
        const st = program.runStats();
        if (st) out.set(program.name, st);
      }
      return out;
    },
  };

  /** Whether this plugin wants `target` (no longer, once its load at a first target failed). */
  appliesTo(target: TargetProcess): boolean {
    if (this.#loadFailed) return false;
    try {
      const verdict = this.plugin.appliesTo?.(target, this.#ctx) ?? true;
      if (typeof verdict === "boolean") return verdict;
      this.#sinks.skipped(this.plugin.id, verdict.skip);
      (verdict.quiet ? this.#log.debug : this.#log.info).call(
        this.#log,
        `${this.plugin.id}: leaving pid ${target.pid} (${target.exe}) alone: ${verdict.skip}${
          verdict.detail ? ` (${verdict.detail})` : ""
        }`,
      );
      return false;
    } catch (e) {
      this.#log.warn(`${this.plugin.id}: appliesTo(${target.pid}) threw: ${(e as Error).message}`);
      return false;
    }
  }

  /**
   * Another plugin measures `pid`'s client connections: this plugin's BPF must leave them
   * (objects without an `excluded` map ignore this). Undone by remove(pid). Before the load it
   * is remembered, and written at load.
   */
  excludeClients(pid: number): void {
    if (this.#closed || this.#loadFailed || this.#excluded.has(pid)) return;
    if (!this.#object) {
      this.#excluded.add(pid);
      return;
    }
    if (!this.#object.hasMap("excluded")) return;
    this.#excluded.add(pid);
    this.#setBit("excluded", pid, true);
  }

  /**
   * Likewise for every process running the executable at `path` (excluded_exes map). The file
   * is identified now (a missing one throws now, at the agent's start), and written at load.
   */
  excludeClientsOfExecutable(path: string): void {
    if (this.#closed || this.#loadFailed || this.#object?.hasMap("excluded_exes") === false) {
      return;
    }
    const st = Deno.statSync(path);
    const key = new Uint8Array(16);
    const view = new DataView(key.buffer);
    view.setBigUint64(0, BigInt(st.ino ?? 0), true);
    view.setUint32(8, kernelDev(st.dev), true);
    if (this.#object) this.#object.map("excluded_exes").update(key, new Uint8Array([1]));
    else this.#excludedExesPending.push(key);
  }

  /** The `replacesOnExecutables` declarations of this plugin. */
  replacesOnExecutables(): Record<string, readonly string[]> {
    return this.plugin.replacesOnExecutables?.(this.#ctx) ?? {};
  }

  /** Whether this plugin may stand in for others (it declares `replaces`). */
  get mayReplace(): boolean {
    return this.plugin.replaces !== undefined;
  }

  /** The plugins this one stands in for on `target` (after it attached to it). */
  replacesFor(target: TargetProcess): readonly string[] {
    const replaces = this.plugin.replaces;
    try {
      return typeof replaces === "function" ? replaces(target, this.#ctx) : replaces ?? [];
    } catch (e) {
      this.#log.warn(`${this.plugin.id}: replaces(${target.pid}) threw: ${(e as Error).message}`);
      return [];
    }
  }

  /** Whether this plugin selects processes of `exe` that listen on nothing (clients). */
  selectsExecutable(exe: string, pid: number): boolean {
    if (this.#loadFailed) return false;
    try {
      return this.plugin.selectsExecutable?.(exe, pid, this.#ctx) ?? false;
    } catch (e) {
      this.#log.debug(
        `${this.plugin.id}: selectsExecutable(${exe}) threw: ${(e as Error).message}`,
      );
      return false;
    }
  }

  /**
   * Starts instrumenting `target`, loading the plugin first if it waited for its first target.
   * Returns false (counted, logged) when that failed.
   */
  add(target: TargetProcess): boolean {
    if (this.#closed || this.#targetLinks.has(target.pid)) return true;
    if (!this.#object && !this.#loadAtFirstTarget(target)) return false;
    const started = performance.now();
    const links: BpfLink[] = [];
    const shares: string[] = [];
    try {
      for (const spec of this.plugin.attachForTarget?.(target, this.#ctx) ?? []) {
        if (spec.kind === "uprobe-multi" && spec.shareKey !== undefined) {
          this.#share(spec.shareKey, () => this.#attach({ ...spec, pid: undefined }));
          shares.push(spec.shareKey);
          continue;
        }
        const withPid = spec.kind === "uprobe" || spec.kind === "uprobe-multi"
          ? { ...spec, pid: spec.pid ?? target.pid }
          : spec;
        try {
          links.push(this.#attach(withPid));
        } catch (e) {
          if (spec.kind === "uprobe" && spec.optional) {
            this.#log.debug(`${this.plugin.id}: optional probe skipped: ${(e as Error).message}`);
            continue;
          }
          throw e;
        }
      }
      this.#setBit("targets", target.pid, true);
    } catch (e) {
      for (const link of links) link.destroy();
      for (const key of shares) this.#unshare(key);
      const reason = attachFailureReason(e);
      this.#sinks.attachFailed(this.plugin.id, reason);
      this.#log.warn(
        `${this.plugin.id}: cannot instrument pid ${target.pid} (${target.exe}): ${
          (e as Error).message
        }`,
      );
      return false;
    }
    this.#targetLinks.set(target.pid, links);
    if (shares.length > 0) this.#targetShares.set(target.pid, shares);
    this.stats.instrumented = this.#targetLinks.size;
    this.#log.debug(
      `${this.plugin.id}: attached to pid ${target.pid} in ${
        (performance.now() - started).toFixed(1)
      } ms`,
    );
    return true;
  }

  /** One more user of the shared attachment `key` (attached by `attach` for the first). */
  #share(key: string, attach: () => BpfLink): void {
    const shared = this.#shared.get(key);
    if (shared) shared.users++;
    else this.#shared.set(key, { link: attach(), users: 1 });
  }

  /** One user fewer of `key`; the last one detaches it. */
  #unshare(key: string): void {
    const shared = this.#shared.get(key);
    if (!shared || --shared.users > 0) return;
    this.#shared.delete(key);
    this.#detachInBackground(shared.link, `shared by targets (${key})`);
  }

  /** Stops instrumenting `pid` (it exited): links closed, its bit cleared, its aggregates read
   * a last time and deleted. */
  remove(pid: number): void {
    if (this.#excluded.delete(pid) && !this.#closed && this.#object) {
      this.#setBit("excluded", pid, false);
    }
    const links = this.#targetLinks.get(pid);
    if (!links) return;
    if (!this.#closed) this.#readAggregates(pid);
    this.#targetLinks.delete(pid);
    for (const key of this.#targetShares.get(pid) ?? []) this.#unshare(key);
    this.#targetShares.delete(pid);
    this.stats.instrumented = this.#targetLinks.size;
    if (!this.#closed) this.#setBit("targets", pid, false);
    for (const link of links) this.#detachInBackground(link, `for pid ${pid}`);
  }

  /** Detaches off the event loop (uprobes take ~100 ms each); close() waits for all of them. */
  #detachInBackground(link: BpfLink, what: string): void {
    const done = link.destroyInBackground().catch((e) => {
      this.#log.debug(`${this.plugin.id}: detach ${what}: ${(e as Error).message}`);
    }).finally(() => this.#detaching.delete(done));
    this.#detaching.add(done);
  }

  /** Consumes what the kernel has recorded so far (before a scrape). */
  drain(): void {
    if (this.#closed || !this.#reader) return;
    this.#reader.drain();
    this.#readAggregates();
  }

  /**
   * Reads the plugin's in-kernel histograms and passes on what each key gained since the last
   * read. With `forget`, the keys of that pid are deleted once read (the process exited).
   */
  #readAggregates(forget?: number): void {
    const spec = this.plugin.aggregates;
    if (!spec) return;
    const object = this.#loaded;
    const map = object.map(spec.map);
    const lookup = (name: string, key: Uint8Array<ArrayBuffer>) => object.map(name).lookup(key);
    const gone: Uint8Array<ArrayBuffer>[] = [];
    const living = new Map<number, boolean>();
    const isAlive = (pid: number) => {
      let yes = living.get(pid);
      if (yes === undefined) living.set(pid, yes = alive(pid));
      return yes;
    };
    for (const key of map.keys()) {
      const total = map.lookupSummedU64(key);
      if (!total) continue;
      const id = Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
      const before = this.#aggregatesSeen.get(id);
      const delta = before ? total.map((v, i) => v - before[i]) : total;
      this.#aggregatesSeen.set(id, total);
      if (delta.some((v) => v !== 0)) {
        let aggregate: RedAggregate | undefined;
        try {
          aggregate = spec.decode(key, delta, lookup, this.#ctx);
        } catch (e) {
          this.#log.debug(`${this.plugin.id}: cannot decode an aggregate: ${(e as Error).message}`);
        }
        if (aggregate) this.#sinks.observeAggregate(aggregate);
        else this.#sinks.dropped(this.plugin.id, "aggregate_decode_error");
      }
      const pid = spec.pidOf(key);
      // A process that exited: its keys were just read a last time. Processes that were never
      // targets (probes on an executable for every process, kprobe-http's clients of any
      // process) are checked for life here, once per pass whatever their number of keys.
      if (
        pid === forget || (forget === undefined && !this.#targetLinks.has(pid) && !isAlive(pid))
      ) {
        gone.push(key);
        this.#aggregatesSeen.delete(id);
      }
    }
    for (const key of gone) map.delete(key);
  }

  /**
   * Attaches the plugin's `attachOnDemand` specs if its BPF code asked for them (the u32 at
   * key 0 of the flag map is non-zero). Tried once: a failure is logged and counted, whatever
   * attached is detached, and the agent goes on without them. A retry on a later wake would
   * most likely fail the same way (a program the kernel refuses) and log again every 200 ms.
   */
  #attachOnDemandIfWanted(): void {
    const flag = this.#onDemandFlag;
    const spec = this.plugin.attachOnDemand;
    if (!flag || !spec || this.#closed) return;
    const why = spec.description ?? "on-demand programs wanted";
    const started = performance.now();
    const links: BpfLink[] = [];
    let names: string[] = [];
    try {
      const value = flag.lookup(new Uint8Array(4));
      if (!value || (value[0] | value[1] | value[2] | value[3]) === 0) return;
      this.#onDemandFlag = undefined;
      const specs = typeof spec.specs === "function" ? spec.specs(this.#ctx) : spec.specs;
      names = specs.map((s) => s.program);
      for (const s of specs) links.push(this.#attach(s));
    } catch (e) {
      this.#onDemandFlag = undefined;
      for (const link of links) {
        try {
          link.destroy();
        } catch { /* the kernel keeps nothing of a link whose fd is closed */ }
      }
      this.#sinks.attachFailed(this.plugin.id, attachFailureReason(e));
      this.#log.warn(
        `${this.plugin.id}: ${why}: cannot attach ${names.join(", ") || "its programs"}, ` +
          `going on without them: ${(e as Error).message}`,
      );
      return;
    }
    this.#globalLinks.push(...links);
    this.#log.info(
      `${this.plugin.id}: ${why}: attached ${names.join(", ")} in ${
        (performance.now() - started).toFixed(1)
      } ms`,
    );
  }

  /** Runs the plugin's sweep program every `intervalMs`. */
  #startSweep(name: string, intervalMs: number): void {
    const program = this.#loaded.program(name);
    program.run(); // fails now, at start, if it cannot run at all
    let warned = false;
    const timer = setInterval(() => {
      try {
        program.run();
      } catch (e) {
        if (!warned) this.#log.warn(`${this.plugin.id}: sweep: ${(e as Error).message}`);
        warned = true;
      }
    }, intervalMs);
    Deno.unrefTimer(timer);
    this.#sweepTimer = timer;
  }

  /**
   * Detaches everything, drains the ring a last time and closes the object; nothing to release
   * when it was never loaded.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#excludedExesPending.length = 0;
    if (!this.#object) {
      this.#closed = true;
      this.#excluded.clear();
      return;
    }
    if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
    this.#onDemandFlag = undefined; // nothing attaches while the links below go
    for (const pid of [...this.#targetLinks.keys()]) this.remove(pid);
    for (const link of this.#globalLinks.splice(0)) this.#detachInBackground(link, "");
    // Every link is gone before the object (and its programs) is closed.
    while (this.#detaching.size > 0) await Promise.all([...this.#detaching]);
    await this.#reader?.close();
    this.#closed = true;
    this.#object.close();
    this.#object = this.#targets = this.#stats = undefined;
    this.#reader = undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #attach(spec: AttachSpec): BpfLink {
    const program = this.#loaded.program(spec.program);
    switch (spec.kind) {
      case "auto":
        return attachBySection(program);
      case "tracepoint":
        return attachTracepoint(program, spec.category, spec.name);
      case "uprobe":
        return attachUprobe(program, spec);
      case "uprobe-multi":
        return attachUprobeMulti(program, spec);
    }
  }

  #setBit(map: "targets" | "excluded", pid: number, on: boolean): void {
    const bitmap = map === "targets" && this.#targets ? this.#targets : this.#loaded.map(map);
    const key = new Uint8Array(4);
    new DataView(key.buffer).setUint32(0, Math.floor(pid / 64), true);
    const word = bitmap.lookup(key) ?? new Uint8Array(8);
    const view = new DataView(word.buffer);
    const bit = 1n << BigInt(pid % 64);
    const bits = view.getBigUint64(0, true);
    view.setBigUint64(0, on ? bits | bit : bits & ~bit, true);
    bitmap.update(key, word);
  }

  #onRecord(record: Uint8Array): void {
    this.stats.recordsRead++;
    let observation: RedObservation | undefined;
    try {
      observation = this.plugin.toObservation(this.plugin.decode(record), this.#ctx);
    } catch (e) {
      this.#sinks.dropped(this.plugin.id, "decode_error");
      this.#log.debug(
        `${this.plugin.id}: cannot decode a ${record.length}-byte record: ${(e as Error).message}`,
      );
      return;
    }
    if (observation) this.#sinks.observe(observation);
    else this.#sinks.dropped(this.plugin.id, "ignored");
  }
}
