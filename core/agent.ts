/**
 * The agent's lifecycle: metrics endpoint up, plugins loaded and attached, discovery feeding
 * them targets; and on stop, everything released in reverse order.
 *
 * @module
 */
import type { AgentConfig } from "./config.ts";
import { Discovery, type ProcFs } from "./discovery.ts";
import { privileges } from "./doctor.ts";
import { RedExporter, type TargetLabels } from "./exporter/exporter.ts";
import { serveMetrics } from "./exporter/server.ts";
import {
  monotonicToWallOffsetNs,
  pageOut,
  setLibbpfLogSink,
  trimNativeHeap,
} from "./ffi/libbpf.ts";
import type { OtlpExport } from "./exporter/otlp.ts";
import type { Logger } from "./log.ts";
import type { RedAggregate, RedObservation, TargetProcess } from "./plugin.ts";
import { attachFailureReason, loadFailureHint, PluginHost } from "./plugin_host.ts";
import type { PluginModuleFailure } from "./plugin_modules.ts";
import { exePath, parseEnviron, serviceIdentity } from "../lib/proc.ts";
import { parseProcMaps, readOnlyMappingsOf } from "../lib/proc_maps.ts";
import { RouteMapper } from "../lib/route.ts";
import { Selector } from "../lib/selectors.ts";
import { prewarmX86Decoder, releaseX86Decoder } from "../lib/x86_decoder.ts";

/** The number of observations in a histogram delta. */
function sumOf(counts: ArrayLike<number>): number {
  let n = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i];
  return n;
}

/** service_name and service_namespace of a process from /proc, else from `exe` alone. */
function describeProcess(
  pid: number,
  exe: string | undefined,
  defaultNamespace: string,
): { serviceName: string; serviceNamespace: string } | undefined {
  let env = new Map<string, string>();
  try {
    const link = Deno.readLinkSync(`/proc/${pid}/exe`);
    env = parseEnviron(Deno.readTextFileSync(`/proc/${pid}/environ`));
    exe = exePath(link);
  } catch {
    // exited: fall back to the executable the plugin named
  }
  if (!exe) return undefined;
  const { name, namespace } = serviceIdentity(env, exe, defaultNamespace);
  return { serviceName: name, serviceNamespace: namespace };
}

/** A plugin module's `plugin` label: its file name (`redis/mod.ts`), short but recognisable. */
function moduleLabel(specifier: string): string {
  return specifier.split("/").slice(-2).join("/");
}

/**
 * `discovery.exclude_telemetry`: the OpenTelemetry Collector (otelcol, otelcol-contrib,
 * otelcol-k8s, ...) and Prometheus, whose traffic is the telemetry itself.
 */
const TELEMETRY_EXECUTABLES = [{ exe: "*/otelcol*" }, { exe: "*/prometheus" }];

/** How long an exited process's labels are kept, for events still in flight (close flushes). */
const RELEASED_LABELS_TTL_MS = 60_000;
/** Quiet time after the last newly instrumented process before memory is compacted. */
const COMPACT_AFTER_MS = 2_000;
/**
 * The least time between two page-outs of the Deno executable (#pageOutExecutable). The first,
 * after start, returns the pages only the start used; later ones would mostly make the agent
 * fault its working set (~30 MB) back in, so on a host where processes come and go all the time
 * they are spaced out.
 */
const PAGE_OUT_EVERY_MS = 10 * 60_000;

/** Thrown when no plugin could start: the agent cannot do anything useful. */
export class AgentStartError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "AgentStartError";
  }
}

export interface AgentOptions {
  config: AgentConfig;
  log: Logger;
  /** Discovery's view of /proc (tests). */
  procFs?: ProcFs;
  /** Called once the metrics endpoint listens. */
  onListen?: (addr: Deno.NetAddr) => void;
  /** Plugin modules that could not be loaded (counted as attach failures, `module_error`). */
  moduleFailures?: readonly PluginModuleFailure[];
}

export class Agent implements AsyncDisposable {
  readonly exporter: RedExporter;
  readonly #log: Logger;
  readonly #config: AgentConfig;
  readonly #hosts: PluginHost[] = [];
  readonly #labels = new Map<number, TargetLabels>();
  readonly #released = new Map<number, number>(); // pid -> time released
  /** target_instance -> when its last process went away (series_ttl counts from there). */
  readonly #gone = new Map<string, number>();
  /** http_route from the request paths (`routes` configuration). */
  readonly #routes: RouteMapper;
  #discovery: Discovery | undefined;
  /** The host part of target_instance. */
  readonly #host: string;
  #otlp: OtlpExport | undefined;
  #server: Deno.HttpServer<Deno.NetAddr> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #compaction: ReturnType<typeof setTimeout> | undefined;
  /** When #pageOutExecutable last ran (performance.now()); undefined: not yet. */
  #pagedOutAt: number | undefined;
  #stopped = false;
  #addr: Deno.NetAddr | undefined;

  private constructor(options: AgentOptions) {
    this.#config = options.config;
    this.#log = options.log;
    this.#host = options.config.discovery.instance_host || Deno.hostname();
    const r = options.config.routes;
    this.#routes = new RouteMapper({
      patterns: r.patterns,
      ignored: r.ignored,
      maxPerService: r.max_per_service,
    });
    const m = options.config.metrics;
    this.exporter = new RedExporter({
      naming: m.naming,
      durationBuckets: m.duration_buckets,
      sizeBuckets: m.size_buckets,
      maxSeriesPerMetric: m.max_series_per_metric,
      optionalLabels: m.optional_labels,
    });
  }

  /** Starts everything; on failure, releases what was started and throws. */
  static async start(options: AgentOptions): Promise<Agent> {
    const agent = new Agent(options);
    try {
      await agent.#start(options);
    } catch (e) {
      await agent.stop();
      throw e;
    }
    return agent;
  }

  /** Where the metrics endpoint listens. */
  get address(): Deno.NetAddr | undefined {
    return this.#addr;
  }

  get targets(): ReadonlyMap<number, TargetProcess> {
    return this.#discovery?.targets ?? new Map();
  }

  async #start(options: AgentOptions): Promise<void> {
    const log = this.#log;
    const { config } = this;
    // Bind the port first: a busy port is reported before anything is attached.
    const listening = Promise.withResolvers<Deno.NetAddr>();
    try {
      this.#server = serveMetrics(this.exporter, {
        hostname: config.metrics.address,
        port: config.metrics.port,
        beforeScrape: () => this.drain(),
        onListen: (addr) => listening.resolve(addr),
      });
    } catch (e) {
      throw new AgentStartError(
        `Cannot serve metrics on ${config.metrics.address}:${config.metrics.port}: ${
          (e as Error).message
        }`,
      );
    }
    this.#addr = await listening.promise;
    log.info(`metrics on http://${this.#addr.hostname}:${this.#addr.port}/metrics`);

    const otlp = config.otlp;
    if (
      (otlp.metrics || otlp.traces) &&
      (otlp.endpoint || otlp.metrics_endpoint || otlp.traces_endpoint)
    ) {
      // Loaded only when used: the OpenTelemetry SDK and exporters are ~10 MB of memory.
      const { OtlpExport } = await import("./exporter/otlp.ts");
      this.#otlp = new OtlpExport({
        exporter: this.exporter,
        config: otlp,
        log,
        beforeCollect: () => this.drain(),
        clockOffsetNs: monotonicToWallOffsetNs,
      });
    }
    const perRequestEvents = this.#otlp?.tracesOn ?? false;
    if (perRequestEvents) {
      log.info("traces on: the plugins send one record per request (no in-kernel histograms)");
    }

    // Without CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH discovery cannot read other users'
    // processes' /proc files and finds nothing; say so rather than stay silent.
    const privileged = privileges();
    if (privileged.state === "missing") log.warn(`privileges: ${privileged.detail}`);

    setLibbpfLogSink((level, line) => {
      if (level === "warn") log.warn(`libbpf: ${line}`);
      else log.debug(`libbpf: ${line}`);
    });
    const sinks = {
      observe: (o: RedObservation) => this.#observe(o),
      observeAggregate: (a: RedAggregate) => {
        const labels = this.#labelsOf(a.pid, a.exe);
        if (!labels) return;
        const routed = "method" in a ? this.#routed(a, labels, sumOf(a.durationBuckets)) : a;
        if (routed) this.exporter.observeAggregate(routed, labels);
      },
      dropped: (plugin: string, reason: string) => this.exporter.dropped(plugin, reason),
      attachFailed: (plugin: string, reason: string) => this.exporter.attachFailed(plugin, reason),
      skipped: (plugin: string, reason: string) => this.exporter.skipped(plugin, reason),
    };
    // Plugins analyse binaries as they load (tls-uprobe: the system's libssl) and as targets
    // appear: the decoder's worker starts loading now, beside the BPF objects' loading.
    prewarmX86Decoder();
    const failures: string[] = [];
    const failed = (id: string, e: unknown) => {
      this.exporter.attachFailed(id, attachFailureReason(e));
      const hint = loadFailureHint(e);
      failures.push(`${id}: ${(e as Error).message}${hint}`);
      log.error(`plugin ${id} cannot start: ${(e as Error).message}${hint}`);
    };
    for (const f of options.moduleFailures ?? []) {
      this.exporter.attachFailed(moduleLabel(f.module), "module_error");
      log.error(`plugin module ${f.module} not loaded: ${f.message}`);
    }
    for (const { plugin, options: pluginOptions } of config.plugins.values()) {
      try {
        const buckets = {
          durationSeconds: config.metrics.duration_buckets,
          sizeBytes: config.metrics.size_buckets,
        };
        const host = new PluginHost(
          plugin,
          pluginOptions,
          buckets,
          log,
          sinks,
          config.metrics.optional_labels,
          perRequestEvents,
        );
        this.#hosts.push(host);
      } catch (e) {
        failed(plugin.id, e);
      }
    }
    // Nothing loaded (every plugin that loads at start failed, or none does): the plugins that
    // would load at their first target are all that is left, so they load now, to know whether
    // the agent can measure anything at all. Without privileges they fail here as the others
    // did, and the agent stops with "No plugin could start" instead of running with nothing
    // that works.
    if (!this.#hosts.some((h) => h.isLoaded)) {
      for (const host of [...this.#hosts]) {
        try {
          host.loadNow();
        } catch (e) {
          this.#hosts.splice(this.#hosts.indexOf(host), 1);
          failed(host.plugin.id, e);
        }
      }
    }
    for (const host of this.#hosts) {
      this.exporter.addSource({
        id: host.plugin.id,
        recordsRead: () => host.stats.recordsRead,
        instrumented: () => host.stats.instrumented,
        kernel: () => host.stats.kernelCounters(),
        ringFill: () => host.stats.ringFill(),
        programs: () => host.stats.programs(),
      });
      // A plugin with loadOnFirstTarget is ready, not loaded: it loads with its first target
      // (or its load fails there, counted and logged once, and it takes no more targets).
      log.info(
        host.isLoaded
          ? `plugin ${host.plugin.id} loaded`
          : `plugin ${host.plugin.id} ready: its BPF object loads at its first target`,
      );
    }
    // Executables a plugin measures in every process: the plugins it replaces there leave them.
    for (const host of this.#hosts) {
      for (const [spec, paths] of Object.entries(host.replacesOnExecutables())) {
        const other = this.#hosts.find((h) => h.plugin.id === spec.split("/")[0]);
        for (const path of paths) {
          try {
            other?.excludeClientsOfExecutable(path);
          } catch (e) {
            log.warn(
              `${host.plugin.id}: cannot exclude ${path} from ${spec}: ${(e as Error).message}`,
            );
          }
        }
      }
    }
    if (this.#hosts.length === 0) {
      throw new AgentStartError(
        failures.length
          ? `No plugin could start. ${failures.join("; ")}`
          : "No plugin is enabled in the configuration",
      );
    }

    this.#discovery = new Discovery({
      selfPid: Deno.pid,
      hostname: this.#host,
      defaultNamespace: config.discovery.service_namespace,
      selectExecutable: (exe, pid) => this.#hosts.some((h) => h.selectsExecutable(exe, pid)),
      select: config.discovery.select.map((s) => new Selector(s)),
      exclude: [
        ...config.discovery.exclude,
        ...(config.discovery.exclude_telemetry ? TELEMETRY_EXECUTABLES : []),
      ].map((s) => new Selector(s)),
    }, options.procFs);
    trimNativeHeap();
    // Every host runs: one waiting for its first target is as ready as a loaded one.
    const running = this.#hosts.map((h) =>
      h.isLoaded ? h.plugin.id : `${h.plugin.id} (loads at its first target)`
    );
    log.info(`plugins running: ${running.join(", ")}`);
    this.#poll();
    // The start is a burst too (and the only one on a host with nothing to instrument yet).
    this.#compactSoon();
    this.#timer = setInterval(() => this.#poll(), config.discovery.poll_interval);
    options.onListen?.(this.#addr);
  }

  /**
   * Instrumenting processes is the agent's allocation burst: binaries analysed, BPF objects
   * loaded, maps filled. V8 leaves that garbage in its old generation until its memory reducer
   * runs (30 s or more), and libbpf's frees stay in the C heap, so without this the agent sits
   * ~20 MB above its working set after every burst (bench/results/footprint.md). Once a burst is
   * over (no new process for COMPACT_AFTER_MS), the x86 decoder's worker is let go (~12 MB,
   * lib/x86_decoder.ts), then one full GC (exposed by `--expose-gc`, which every launcher
   * passes; without it, V8's own schedule) and a malloc_trim give that memory back.
   * A full GC of this heap takes ~10-20 ms on the agent's thread: the rings absorb it.
   *
   * Last, the Deno executable's pages go back to the kernel (MADV_PAGEOUT on its read-only
   * mappings, #pageOutExecutable): starting Deno, compiling the agent's TypeScript and loading
   * its npm packages touch ~45 MB of the executable's code and constants, which then stay in the
   * agent's RSS although a running agent uses about half of them. Those are clean file pages,
   * which the kernel reclaims first under memory pressure anyway; this reclaims them now, and the
   * pages the agent does use come back from the page cache or the disk at their next use (its
   * file-backed RSS settles at ~30 MB, ring buffers included, within a minute: measured with
   * steady traffic, bench/results/README.md). Pages another process maps too (another Deno) stay.
   */
  #compactSoon(): void {
    if (this.#compaction !== undefined) clearTimeout(this.#compaction);
    this.#compaction = setTimeout(() => {
      this.#compaction = undefined;
      if (this.#stopped) return;
      releaseX86Decoder();
      // The worker's isolate goes away on its own thread: collect once it has.
      this.#compaction = setTimeout(() => {
        this.#compaction = undefined;
        if (this.#stopped) return;
        (globalThis as { gc?: () => void }).gc?.();
        trimNativeHeap();
        this.#pageOutExecutable();
      }, 500);
    }, COMPACT_AFTER_MS);
  }

  /**
   * See #compactSoon: at most once per PAGE_OUT_EVERY_MS. Only ever a saving: a failure is
   * logged and otherwise ignored.
   */
  #pageOutExecutable(): void {
    const now = performance.now();
    if (this.#pagedOutAt !== undefined && now - this.#pagedOutAt < PAGE_OUT_EVERY_MS) return;
    this.#pagedOutAt = now;
    try {
      const maps = parseProcMaps(Deno.readTextFileSync("/proc/self/maps"));
      const bytes = pageOut(readOnlyMappingsOf(maps, Deno.execPath()));
      this.#log.debug(`returned ${(bytes / 2 ** 20).toFixed(1)} MB of Deno's pages to the kernel`);
    } catch (e) {
      this.#log.debug(`cannot return Deno's pages to the kernel: ${(e as Error).message}`);
    }
  }

  /** Reads every plugin's ring buffer now. */
  drain(): void {
    for (const host of this.#hosts) host.drain();
  }

  #poll(): void {
    if (this.#stopped || !this.#discovery) return;
    let change;
    try {
      change = this.#discovery.poll();
    } catch (e) {
      this.#log.warn(`discovery: ${(e as Error).message}`);
      return;
    }
    for (const target of change.removed) {
      // Events already in the ring for this process still need its labels.
      this.drain();
      for (const host of this.#hosts) host.remove(target.pid);
      this.#released.set(target.pid, Date.now());
      this.#log.info(`released pid ${target.pid} (${target.serviceName})`);
    }
    for (const pid of change.excluded ?? []) {
      // Never instrumented: not as a client either (kprobe-http's every_process clients).
      for (const host of this.#hosts) host.excludeClients(pid);
      this.#log.info(`leaving pid ${pid} alone: discovery.exclude names it`);
    }
    for (const pid of change.unexcluded ?? []) {
      for (const host of this.#hosts) host.remove(pid);
    }
    for (const target of change.added) {
      this.#released.delete(target.pid);
      this.#labels.set(target.pid, {
        serviceName: target.serviceName,
        serviceNamespace: target.serviceNamespace,
        instance: target.instance,
      });
      const plugins = this.#instrument(target);
      this.#log.info(
        `instrumenting pid ${target.pid} ${target.exe} (service ${target.serviceName}, ports ${
          target.listenPorts.join(",")
        })` +
          (plugins.length ? ` with ${plugins.join(", ")}` : ": no plugin applies"),
      );
    }
    if (change.added.length > 0) this.#compactSoon();
    const now = Date.now();
    for (const [pid, at] of this.#released) {
      // A series_ttl shorter than the labels' keeps them no longer than the series.
      if (now - at > Math.min(RELEASED_LABELS_TTL_MS, this.#config.discovery.series_ttl)) {
        this.#released.delete(pid);
        const labels = this.#labels.get(pid);
        if (labels) this.exporter.release(labels);
        this.#labels.delete(pid);
        // Its instance's series go once no process of it is left (nginx's workers share the
        // master's), series_ttl after it went away.
        if (labels && ![...this.#labels.values()].some((l) => l.instance === labels.instance)) {
          this.#gone.set(labels.instance, at);
        }
      }
    }
    for (const [instance, at] of this.#gone) {
      if ([...this.#labels.values()].some((l) => l.instance === instance)) {
        this.#gone.delete(instance); // back (a pid reused by the same service's top process)
      } else if (now - at > this.#config.discovery.series_ttl) {
        this.#gone.delete(instance);
        const n = this.exporter.expireInstance(instance);
        this.#log.debug(`series of ${instance} expired (${n})`);
      }
    }
    this.exporter.setDiscoveredProcesses(this.#discovery.targets.size);
  }

  /**
   * Hands `target` to the plugins that apply to it, and returns the ids of those that took
   * it. A plugin that `replaces` others goes first; when it attaches, the plugins it replaces
   * leave the process alone (its requests must not be counted twice).
   */
  #instrument(target: TargetProcess): string[] {
    const applicable = this.#hosts.filter((h) => h.appliesTo(target));
    const replacing = applicable.filter((h) => h.mayReplace);
    const others = applicable.filter((h) => !h.mayReplace);
    const taken: string[] = [];
    const replaced = new Set<string>();
    const clientsReplaced = new Set<string>();
    for (const host of replacing) {
      if (!host.add(target)) continue;
      taken.push(host.plugin.id);
      for (const spec of host.replacesFor(target)) {
        const [id, scope] = spec.split("/");
        (scope === "clients" ? clientsReplaced : replaced).add(id);
      }
    }
    for (const host of this.#hosts) {
      const id = host.plugin.id;
      if (replaced.has(id) || clientsReplaced.has(id)) host.excludeClients(target.pid);
    }
    for (const host of others) {
      if (!replaced.has(host.plugin.id) && host.add(target)) taken.push(host.plugin.id);
    }
    return taken;
  }

  #observe(o: RedObservation): void {
    const labels = this.#labelsOf(o.pid, "exe" in o ? o.exe : undefined);
    if (!labels) return;
    const routed = "method" in o ? this.#routed(o, labels, 1) : o;
    if (!routed) return;
    this.exporter.observe(routed, labels);
    this.#otlp?.addSpan(routed, labels);
  }

  /**
   * `o` with its route as the `routes` configuration maps it (from its path when the plugin
   * gives one), or undefined when it is ignored. `n`: the requests it stands for.
   */
  #routed<T extends { route: string; path?: string; pathTruncated?: boolean }>(
    o: T,
    labels: TargetLabels,
    n: number,
  ): T | undefined {
    const result = o.path !== undefined
      ? this.#routes.route(labels.serviceName, o.path, o.pathTruncated)
      : this.#routes.capped(labels.serviceName, o.route);
    if ("ignored" in result) {
      this.exporter.routesIgnored(labels.serviceName, n);
      return undefined;
    }
    if (result.overflow) this.exporter.routeOverflow(labels.serviceName, n);
    return result.route === o.route ? o : { ...o, route: result.route };
  }

  /**
   * The labels of the process `pid`. A process discovery has not seen (a short-lived client
   * measured through probes on its executable) is described from /proc if it still runs, else
   * from the executable the plugin named; otherwise the observation is dropped and counted.
   */
  #labelsOf(pid: number, exe?: string): TargetLabels | undefined {
    const known = this.#labels.get(pid);
    if (known) return known;
    const identity = describeProcess(pid, exe, this.#config.discovery.service_namespace);
    if (!identity) {
      this.exporter.dropped("agent", "unknown_process");
      return undefined;
    }
    const labels = { ...identity, instance: `${this.#host}:${pid}` };
    this.#labels.set(pid, labels);
    // Not a target: its labels expire like those of a released one.
    this.#released.set(pid, Date.now());
    return labels;
  }

  /** Stops discovery and the endpoint, detaches and closes every plugin. Idempotent. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    if (this.#compaction !== undefined) clearTimeout(this.#compaction);
    for (const host of this.#hosts.splice(0).reverse()) {
      try {
        await host.close();
      } catch (e) {
        this.#log.warn(`closing ${host.plugin.id}: ${(e as Error).message}`);
      }
    }
    setLibbpfLogSink(undefined);
    if (this.#otlp) {
      try {
        await this.#otlp.stop();
      } catch (e) {
        this.#log.warn(`OTLP: last export: ${(e as Error).message}`);
      }
      this.#otlp = undefined;
    }
    if (this.#server) {
      await this.#server.shutdown();
      this.#server = undefined;
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }

  get config(): AgentConfig {
    return this.#config;
  }
}
