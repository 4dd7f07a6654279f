/**
 * The RED metric families and their storage.
 *
 * Exposition goes through prom-client (its Registry formats, escapes and serves every family,
 * ours and the agent's own counters alike). The histograms themselves are kept here, in typed
 * arrays keyed by a precomputed series key: prom-client's `Histogram.observe()` hashes the
 * label object on every call (~0.8 µs measured here), which at tens of thousands of requests a
 * second would cost the traced machine more than the probes do. These objects implement the
 * part of prom-client's metric interface the Registry uses (`name`, `get()`).
 *
 * @module
 */

/** Which metric names to export: Beyla 1.x's, or current OpenTelemetry semantic conventions. */
export type MetricNaming = "beyla" | "otel";

export const METRIC_NAMES = {
  beyla: {
    httpServerDuration: "http_server_duration_seconds",
    httpClientDuration: "http_client_duration_seconds",
    httpServerRequestSize: "http_server_request_size_bytes",
    httpClientRequestSize: "http_client_request_size_bytes",
    rpcServerDuration: "rpc_server_duration_seconds",
    rpcClientDuration: "rpc_client_duration_seconds",
    dbClientDuration: "db_client_duration_seconds",
  },
  otel: {
    httpServerDuration: "http_server_request_duration_seconds",
    httpClientDuration: "http_client_request_duration_seconds",
    httpServerRequestSize: "http_server_request_body_size_bytes",
    httpClientRequestSize: "http_client_request_body_size_bytes",
    rpcServerDuration: "rpc_server_duration_seconds",
    rpcClientDuration: "rpc_client_duration_seconds",
    dbClientDuration: "db_client_operation_duration_seconds",
  },
} as const;

/** Default buckets (design.md). */
export const DEFAULT_DURATION_BUCKETS = [
  0,
  0.005,
  0.01,
  0.025,
  0.05,
  0.075,
  0.1,
  0.25,
  0.5,
  0.75,
  1,
  2.5,
  5,
  7.5,
  10,
];
export const DEFAULT_SIZE_BUCKETS = [0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];

/** Labels every RED series has, from the process that served or made the request. */
export const TARGET_LABELS = ["service_name", "service_namespace", "target_instance"] as const;
export const HTTP_LABELS = [
  ...TARGET_LABELS,
  "http_request_method",
  "http_response_status_code",
  "http_route",
] as const;
/**
 * Labels that are off by default (cardinality) and switched on by `metrics.optional_labels`:
 * `url_path` (both sides: the path without its query), `client_address` (server side: who sent
 * the request), `server_address` and `server_port` (client side: where it was sent).
 */
export const OPTIONAL_HTTP_LABELS = [
  "url_path",
  "client_address",
  "server_address",
  "server_port",
] as const;
export type OptionalHttpLabel = typeof OPTIONAL_HTTP_LABELS[number];
/** Which optional labels each side's families can have. */
export const OPTIONAL_SERVER_LABELS: readonly OptionalHttpLabel[] = ["url_path", "client_address"];
export const OPTIONAL_CLIENT_LABELS: readonly OptionalHttpLabel[] = [
  "url_path",
  "server_address",
  "server_port",
];

export const RPC_LABELS = [
  ...TARGET_LABELS,
  "rpc_method",
  "rpc_system",
  "rpc_grpc_status_code",
] as const;

export const DB_LABELS = [...TARGET_LABELS, "db_system", "db_operation", "error_type"] as const;

/** What prom-client's Registry reads from a metric's `get()`. */
export interface ExposedMetric {
  name: string;
  help: string;
  type: "histogram";
  aggregator: "sum";
  values: { metricName: string; labels: Record<string, string>; value: number }[];
}

/** One label set's data: non-cumulative bucket counts (last slot is +Inf), sum, count. */
export interface Series {
  labels: Record<string, string>;
  /** When it was created (ms since the epoch): the start of its cumulative OTLP points. */
  startMs: number;
  buckets: Float64Array;
  sum: number;
  count: number;
}

/**
 * A histogram family with a hard cap on label sets. When the cap is reached, observations for
 * new label sets are dropped and counted (see `overflowed`), never silently lost.
 */
export class HistogramFamily {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  readonly upperBounds: readonly number[];
  readonly maxSeries: number;
  /** Observations dropped because the label-set cap was reached. */
  overflowed = 0;
  readonly #series = new Map<string, Series>();

  constructor(
    options: {
      name: string;
      help: string;
      labelNames: readonly string[];
      buckets: readonly number[];
      maxSeries: number;
    },
  ) {
    this.name = options.name;
    this.help = options.help;
    this.labelNames = options.labelNames;
    this.upperBounds = [...options.buckets].sort((a, b) => a - b);
    this.maxSeries = options.maxSeries;
  }

  get seriesCount(): number {
    return this.#series.size;
  }

  /**
   * Records `value` for the label set `key` identifies; `labels()` is only called the first time
   * a key is seen. Returns false when the observation was dropped by the cap.
   */
  observe(key: string, labels: () => Record<string, string>, value: number): boolean {
    const series = this.series(key, labels);
    if (!series) return false;
    this.record(series, value);
    return true;
  }

  /**
   * The series of the label set `key` identifies, created on first use (`labels()` is only
   * called then), or undefined when the cap is reached (the caller's observation is counted
   * as overflow). Callers on a hot path keep the series and {@linkcode record} into it.
   */
  series(key: string, labels: () => Record<string, string>): Series | undefined {
    let series = this.#series.get(key);
    if (!series) {
      if (this.#series.size >= this.maxSeries) {
        this.overflowed++;
        return undefined;
      }
      series = {
        labels: labels(),
        startMs: Date.now(),
        buckets: new Float64Array(this.upperBounds.length + 1),
        sum: 0,
        count: 0,
      };
      this.#series.set(key, series);
    }
    return series;
  }

  /**
   * Adds observations already sorted into this family's buckets (non-cumulative counts, the
   * last for +Inf; missing trailing counts are 0) with their sum.
   */
  recordBuckets(series: Series, counts: ArrayLike<number>, sum: number): void {
    const n = Math.min(counts.length, series.buckets.length);
    for (let i = 0; i < n; i++) {
      series.buckets[i] += counts[i];
      series.count += counts[i];
    }
    series.sum += sum;
  }

  /** Removes the series whose label `name` is `value`; returns how many. */
  removeWhere(name: string, value: string): number {
    let removed = 0;
    for (const [key, series] of this.#series) {
      if (series.labels[name] === value) {
        this.#series.delete(key);
        removed++;
      }
    }
    return removed;
  }

  /** Adds `value` to a series of this family. */
  record(series: Series, value: number): void {
    const bounds = this.upperBounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]) i++;
    series.buckets[i]++;
    series.sum += value;
    series.count++;
  }

  /** Every series, in creation order (OTLP export reads them). */
  allSeries(): IterableIterator<Series> {
    return this.#series.values();
  }

  /** prom-client's view of the family (cumulative `le` buckets, `_sum`, `_count`). */
  get(): Promise<ExposedMetric> {
    const values: ExposedMetric["values"] = [];
    for (const series of this.#series.values()) {
      let cumulative = 0;
      for (let i = 0; i <= this.upperBounds.length; i++) {
        cumulative += series.buckets[i];
        const le = i < this.upperBounds.length ? String(this.upperBounds[i]) : "+Inf";
        values.push({
          metricName: `${this.name}_bucket`,
          labels: { ...series.labels, le },
          value: cumulative,
        });
      }
      values.push({ metricName: `${this.name}_sum`, labels: series.labels, value: series.sum });
      values.push({ metricName: `${this.name}_count`, labels: series.labels, value: series.count });
    }
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: "histogram",
      values,
      aggregator: "sum",
    });
  }

  /** Forgets every series (tests). */
  reset(): void {
    this.#series.clear();
    this.overflowed = 0;
  }
}
