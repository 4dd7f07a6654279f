/**
 * The one RED exporter every plugin feeds: the six RED families, the agent's own counters, and
 * the Prometheus endpoint.
 *
 * @module
 */
import client from "prom-client";
import type { RedAggregate, RedObservation } from "../plugin.ts";
import {
  DB_LABELS,
  DEFAULT_DURATION_BUCKETS,
  DEFAULT_SIZE_BUCKETS,
  HistogramFamily,
  HTTP_LABELS,
  METRIC_NAMES,
  type MetricNaming,
  OPTIONAL_CLIENT_LABELS,
  OPTIONAL_SERVER_LABELS,
  type OptionalHttpLabel,
  RPC_LABELS,
  type Series,
} from "./red_metrics.ts";

/** The identity labels of the process an observation came from. */
export interface TargetLabels {
  serviceName: string;
  serviceNamespace: string;
  instance: string;
}

export interface ExporterOptions {
  naming?: MetricNaming;
  durationBuckets?: number[];
  sizeBuckets?: number[];
  /** Hard cap on label sets per metric family. */
  maxSeriesPerMetric?: number;
  /** Optional labels to add to the HTTP client families (off by default: cardinality). */
  optionalLabels?: readonly OptionalHttpLabel[];
}

/** Where plugin hosts' counters are read from at scrape time. */
export interface PluginStatsSource {
  id: string;
  recordsRead(): number;
  instrumented(): number;
  kernel(): { lost: bigint; counters: Map<string, bigint> };
  ringFill(): number;
  /** Per BPF program: the kernel's run count and run time (0 unless bpf_stats is enabled). */
  programs?(): Map<string, { runCount: bigint; runTimeNs: bigint }>;
}

const SEP = "\u0001";

/** The url_path label: the path without its query or fragment (they never reach a label). */
function urlPath(path: string | undefined): string {
  if (path === undefined) return "";
  const end = path.search(/[?#]/);
  return end < 0 ? path : path.slice(0, end);
}

/** Why the agent drops a plugin's record (redprobe_events_dropped_total{reason}). */
export const PLUGIN_DROP_REASONS = ["decode_error", "aggregate_decode_error", "ignored"] as const;

interface HttpCell {
  duration: { family: HistogramFamily; series: Series };
  size: { family: HistogramFamily; series: Series };
}

/** target (by identity) -> route -> method -> status -> cell */
type HttpCells = Map<TargetLabels, Map<string, Map<string, Map<number, HttpCell>>>>;

export class RedExporter {
  readonly registry = new client.Registry();
  readonly httpServerDuration: HistogramFamily;
  readonly httpClientDuration: HistogramFamily;
  readonly httpServerRequestSize: HistogramFamily;
  readonly httpClientRequestSize: HistogramFamily;
  readonly rpcServerDuration: HistogramFamily;
  readonly rpcClientDuration: HistogramFamily;
  readonly dbClientDuration: HistogramFamily;
  readonly #families: HistogramFamily[];
  readonly #httpServerCells: HttpCells = new Map();
  readonly #httpClientCells: HttpCells = new Map();
  readonly #sources: PluginStatsSource[] = [];
  readonly #dropped: client.Counter<"plugin" | "reason">;
  readonly #attachFailures: client.Counter<"plugin" | "reason">;
  readonly #skipped: client.Counter<"plugin" | "reason">;
  readonly #routesIgnored: client.Counter<"service_name">;
  readonly #routeOverflow: client.Counter<"service_name">;
  /** The optional labels on, per side, in a fixed order. */
  readonly #serverExtra: OptionalHttpLabel[];
  readonly #clientExtra: OptionalHttpLabel[];
  #discovered = 0;

  constructor(options: ExporterOptions = {}) {
    const names = METRIC_NAMES[options.naming ?? "beyla"];
    const durations = options.durationBuckets ?? DEFAULT_DURATION_BUCKETS;
    const sizes = options.sizeBuckets ?? DEFAULT_SIZE_BUCKETS;
    const maxSeries = options.maxSeriesPerMetric ?? 10_000;
    const family = (name: string, help: string, labelNames: readonly string[], buckets: number[]) =>
      new HistogramFamily({ name, help, labelNames, buckets, maxSeries });
    // In a fixed order, whatever order the configuration lists them in.
    const on = (side: readonly OptionalHttpLabel[]) =>
      side.filter((l) => options.optionalLabels?.includes(l));
    this.#serverExtra = on(OPTIONAL_SERVER_LABELS);
    this.#clientExtra = on(OPTIONAL_CLIENT_LABELS);
    const serverLabels = [...HTTP_LABELS, ...this.#serverExtra];
    const clientLabels = [...HTTP_LABELS, ...this.#clientExtra];
    this.httpServerDuration = family(
      names.httpServerDuration,
      "Duration of HTTP requests served, in seconds",
      serverLabels,
      durations,
    );
    this.httpClientDuration = family(
      names.httpClientDuration,
      "Duration of HTTP requests made, in seconds",
      clientLabels,
      durations,
    );
    this.httpServerRequestSize = family(
      names.httpServerRequestSize,
      "Size of the bodies of HTTP requests served, in bytes",
      serverLabels,
      sizes,
    );
    this.httpClientRequestSize = family(
      names.httpClientRequestSize,
      "Size of the bodies of HTTP requests made, in bytes",
      clientLabels,
      sizes,
    );
    this.rpcServerDuration = family(
      names.rpcServerDuration,
      "Duration of RPCs served, in seconds",
      RPC_LABELS,
      durations,
    );
    this.rpcClientDuration = family(
      names.rpcClientDuration,
      "Duration of RPCs made, in seconds",
      RPC_LABELS,
      durations,
    );
    this.dbClientDuration = family(
      names.dbClientDuration,
      "Duration of database calls made (e.g. Redis commands), in seconds",
      DB_LABELS,
      durations,
    );
    this.#families = [
      this.httpServerDuration,
      this.httpServerRequestSize,
      this.httpClientDuration,
      this.httpClientRequestSize,
      this.rpcServerDuration,
      this.rpcClientDuration,
      this.dbClientDuration,
    ];
    // The Registry only needs `name` and `get()` from a metric.
    for (const f of this.#families) this.registry.registerMetric(f as unknown as client.Metric);
    this.#registerInternalMetrics();
    this.#dropped = new client.Counter({
      name: "redprobe_events_dropped_total",
      help: "Events read from the kernel that the agent could not record, by plugin and reason",
      labelNames: ["plugin", "reason"],
      registers: [this.registry],
    });
    this.#dropped.inc({ plugin: "agent", reason: "unknown_process" }, 0);
    this.#attachFailures = new client.Counter({
      name: "redprobe_attach_failures_total",
      help: "Failed attempts to instrument a process, by plugin and reason (errno name)",
      labelNames: ["plugin", "reason"],
      registers: [this.registry],
    });
    this.#routesIgnored = new client.Counter({
      name: "redprobe_http_requests_ignored_total",
      help: "HTTP requests not reported because their path matches routes.ignored, by service",
      labelNames: ["service_name"],
      registers: [this.registry],
    });
    this.#routeOverflow = new client.Counter({
      name: "redprobe_http_route_overflow_total",
      help: 'HTTP requests reported with http_route="{overflow}" because their service ' +
        "reached routes.max_per_service distinct routes, by service",
      labelNames: ["service_name"],
      registers: [this.registry],
    });
    this.#skipped = new client.Counter({
      name: "redprobe_processes_skipped_total",
      help: "Processes a plugin chose not to instrument, by plugin and reason " +
        "(not_go, go_too_old, no_net_http, unknown_go_version, corrupt_binary, ...)",
      labelNames: ["plugin", "reason"],
      registers: [this.registry],
    });
  }

  /**
   * Records one observation from the process labelled `target`. `target` must be the same
   * object for every observation of a process (it keys a cache); {@linkcode release} it when
   * the process is gone.
   */
  observe(o: RedObservation, target: TargetLabels): void {
    if ("method" in o) {
      const cell = this.#httpCell(o.kind === "http_server", target, o.route, o.method, o.status, o);
      if (!cell) return;
      cell.duration.family.record(cell.duration.series, o.durationSeconds);
      cell.size.family.record(cell.size.series, o.requestSizeBytes ?? 0);
    } else if ("rpcMethod" in o) {
      const series = this.#rpcSeries(o, target);
      if (series) series.family.record(series.series, o.durationSeconds);
    } else if (o.kind === "db_client") {
      const errorType = o.errorType ?? "";
      const key = [
        target.serviceName,
        target.serviceNamespace,
        target.instance,
        o.dbSystem,
        o.dbOperation,
        errorType,
      ].join(SEP);
      this.dbClientDuration.observe(key, () => ({
        service_name: target.serviceName,
        service_namespace: target.serviceNamespace,
        target_instance: target.instance,
        db_system: o.dbSystem,
        db_operation: o.dbOperation,
        error_type: errorType,
      }), o.durationSeconds);
    }
  }

  /** The RED families (OTLP export reads them). */
  get families(): readonly HistogramFamily[] {
    return this.#families;
  }

  /** The duration series of an RPC label set; undefined when the cap dropped it. */
  #rpcSeries(
    o: {
      kind: "rpc_server" | "rpc_client";
      rpcMethod: string;
      rpcSystem: string;
      grpcStatusCode: number;
    },
    target: TargetLabels,
  ): { family: HistogramFamily; series: Series } | undefined {
    const family = o.kind === "rpc_server" ? this.rpcServerDuration : this.rpcClientDuration;
    const key = [
      target.serviceName,
      target.serviceNamespace,
      target.instance,
      o.rpcMethod,
      o.rpcSystem,
      o.grpcStatusCode,
    ].join(SEP);
    const series = family.series(key, () => ({
      service_name: target.serviceName,
      service_namespace: target.serviceNamespace,
      target_instance: target.instance,
      rpc_method: o.rpcMethod,
      rpc_system: o.rpcSystem,
      rpc_grpc_status_code: String(o.grpcStatusCode),
    }));
    return series ? { family, series } : undefined;
  }

  /**
   * The two series (duration, request size) of an HTTP label set. The hot path is four Map
   * lookups on values it already has (no string building); the label set's key is built only
   * the first time it is seen. Undefined when the cap dropped it.
   */
  #httpCell(
    server: boolean,
    target: TargetLabels,
    route: string,
    method: string,
    status: number,
    peer: { serverAddress?: string; serverPort?: number; clientAddress?: string; path?: string },
  ): HttpCell | undefined {
    const byTarget = server ? this.#httpServerCells : this.#httpClientCells;
    // With optional labels on, their values are part of the label set: they ride on the
    // route's key.
    const extra: Record<string, string> = {};
    for (const name of server ? this.#serverExtra : this.#clientExtra) {
      extra[name] = name === "url_path"
        ? urlPath(peer.path)
        : name === "client_address"
        ? peer.clientAddress ?? ""
        : name === "server_address"
        ? peer.serverAddress ?? ""
        : peer.serverPort
        ? String(peer.serverPort)
        : "";
    }
    const peerKey = Object.values(extra).join(SEP);
    const routeKey = peerKey ? route + SEP + peerKey : route;
    const cached = byTarget.get(target)?.get(routeKey)?.get(method)?.get(status);
    if (cached) return cached;
    const key = [
      target.serviceName,
      target.serviceNamespace,
      target.instance,
      method,
      status,
      route,
      peerKey,
    ].join(SEP);
    const labels = () => ({
      service_name: target.serviceName,
      service_namespace: target.serviceNamespace,
      target_instance: target.instance,
      http_request_method: method,
      http_response_status_code: String(status),
      http_route: route,
      ...extra,
    });
    const durationFamily = server ? this.httpServerDuration : this.httpClientDuration;
    const sizeFamily = server ? this.httpServerRequestSize : this.httpClientRequestSize;
    const duration = durationFamily.series(key, labels);
    if (!duration) return undefined; // counted as overflow; retried next time (a slot may free)
    const size = sizeFamily.series(key, labels);
    if (!size) return undefined;
    const cell = {
      duration: { family: durationFamily, series: duration },
      size: { family: sizeFamily, series: size },
    };
    // The cache grows only with series that exist, so the label-set cap bounds it too.
    let byRoute = byTarget.get(target);
    if (!byRoute) byTarget.set(target, byRoute = new Map());
    let byMethod = byRoute.get(routeKey);
    if (!byMethod) byRoute.set(routeKey, byMethod = new Map());
    let byStatus = byMethod.get(method);
    if (!byStatus) byMethod.set(method, byStatus = new Map());
    byStatus.set(status, cell);
    return cell;
  }

  /** Records a batch of observations a plugin aggregated in the kernel. */
  observeAggregate(a: RedAggregate, target: TargetLabels): void {
    if ("rpcMethod" in a) {
      const series = this.#rpcSeries(a, target);
      if (series) {
        series.family.recordBuckets(series.series, a.durationBuckets, a.durationSumSeconds);
      }
      return;
    }
    const cell = this.#httpCell(a.kind === "http_server", target, a.route, a.method, a.status, a);
    if (!cell) return;
    cell.duration.family.recordBuckets(
      cell.duration.series,
      a.durationBuckets,
      a.durationSumSeconds,
    );
    cell.size.family.recordBuckets(cell.size.series, a.sizeBuckets, a.sizeSumBytes);
  }

  /**
   * Stops exporting every series of `instance` (a `target_instance` value whose processes are
   * all gone): `discovery.series_ttl` after they exited. Returns how many series went.
   */
  expireInstance(instance: string): number {
    let removed = 0;
    for (const family of this.#families) removed += family.removeWhere("target_instance", instance);
    return removed;
  }

  /** Forgets the cache entries of a target that went away (its series stay exported). */
  release(target: TargetLabels): void {
    this.#httpServerCells.delete(target);
    this.#httpClientCells.delete(target);
  }

  /** Counts a record the agent could not use. */
  dropped(plugin: string, reason: string): void {
    this.#dropped.inc({ plugin, reason });
  }

  /** `n` requests of `service` not reported (routes.ignored). */
  routesIgnored(service: string, n: number): void {
    this.#routesIgnored.inc({ service_name: service }, n);
  }

  /** `n` requests of `service` reported under the overflow route (routes.max_per_service). */
  routeOverflow(service: string, n: number): void {
    this.#routeOverflow.inc({ service_name: service }, n);
  }

  /** A process `plugin` left alone, for `reason` (a short snake_case word). */
  skipped(plugin: string, reason: string): void {
    this.#skipped.inc({ plugin, reason });
  }

  /** Counts a failed attempt to instrument a process. */
  attachFailed(plugin: string, reason: string): void {
    this.#attachFailures.inc({ plugin, reason });
  }

  /** Adds a plugin whose counters are exported. */
  addSource(source: PluginStatsSource): void {
    this.#sources.push(source);
    // Counters exist from the start, at 0, so a rate() over them works before the first drop.
    for (const reason of PLUGIN_DROP_REASONS) this.#dropped.inc({ plugin: source.id, reason }, 0);
  }

  setDiscoveredProcesses(n: number): void {
    this.#discovered = n;
  }

  /** The Prometheus text exposition. */
  metrics(): Promise<string> {
    return this.registry.metrics();
  }

  #registerInternalMetrics(): void {
    const sources = () => this.#sources;
    const families = () => this.#families;
    const discovered = () => this.#discovered;
    new client.Counter({
      name: "redprobe_events_read_total",
      help: "Records read from the plugins' ring buffers",
      labelNames: ["plugin"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of sources()) this.inc({ plugin: s.id }, s.recordsRead());
      },
    });
    new client.Counter({
      name: "redprobe_events_lost_kernel_total",
      help: "Records the kernel could not write because the ring buffer was full",
      labelNames: ["plugin"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of sources()) this.inc({ plugin: s.id }, Number(s.kernel().lost));
      },
    });
    new client.Counter({
      name: "redprobe_kernel_events_total",
      help: "Events counted by the plugins' BPF programs (see the plugin's documentation)",
      labelNames: ["plugin", "event"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of sources()) {
          for (const [event, n] of s.kernel().counters) {
            this.inc({ plugin: s.id, event }, Number(n));
          }
        }
      },
    });
    new client.Gauge({
      name: "redprobe_instrumented_processes",
      help: "Processes a plugin currently instruments",
      labelNames: ["plugin"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of sources()) this.set({ plugin: s.id }, s.instrumented());
      },
    });
    new client.Gauge({
      name: "redprobe_discovered_processes",
      help: "Processes discovery selected for instrumentation",
      registers: [this.registry],
      collect() {
        this.set(discovered());
      },
    });
    new client.Gauge({
      name: "redprobe_ring_buffer_fill_ratio",
      help: "Fraction of a plugin's ring buffer holding unread records at scrape time",
      labelNames: ["plugin"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const s of sources()) this.set({ plugin: s.id }, s.ringFill());
      },
    });
    // Both read each program's struct bpf_prog_info: one helper makes each counter.
    const programCounter = (
      name: string,
      help: string,
      value: (st: { runCount: bigint; runTimeNs: bigint }) => number,
    ) =>
      new client.Counter({
        name,
        help,
        labelNames: ["plugin", "program"],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const s of sources()) {
            for (const [program, st] of s.programs?.() ?? []) {
              this.inc({ plugin: s.id, program }, value(st));
            }
          }
        },
      });
    programCounter(
      "redprobe_bpf_program_runs_total",
      "Runs of each BPF program, from the kernel's BPF stats (0 unless " +
        "sysctl kernel.bpf_stats_enabled=1, which costs ~20 ns a run)",
      (st) => Number(st.runCount),
    );
    programCounter(
      "redprobe_bpf_program_run_seconds_total",
      "Time spent running each BPF program, from the kernel's BPF stats (0 unless " +
        "sysctl kernel.bpf_stats_enabled=1)",
      (st) => Number(st.runTimeNs) / 1e9,
    );
    new client.Gauge({
      name: "redprobe_agent_memory_bytes",
      help: "The agent's memory: rss (resident), heap_total and heap_used (the JavaScript " +
        "heap), external (buffers and WebAssembly memory outside it)",
      labelNames: ["area"],
      registers: [this.registry],
      collect() {
        const m = Deno.memoryUsage();
        this.set({ area: "rss" }, m.rss);
        this.set({ area: "heap_total" }, m.heapTotal);
        this.set({ area: "heap_used" }, m.heapUsed);
        this.set({ area: "external" }, m.external);
      },
    });
    new client.Counter({
      name: "redprobe_series_overflow_total",
      help: "Observations dropped because a metric reached its label-set cap",
      labelNames: ["metric"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const f of families()) this.inc({ metric: f.name }, f.overflowed);
      },
    });
  }
}
