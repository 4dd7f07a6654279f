/**
 * `redprobe top`'s arithmetic and its table: from scrapes of the agent's Prometheus endpoint,
 * one row per (service, kind, route) with the request rate, the error percentage, p50 and p99
 * (estimated from the histogram buckets as Prometheus' `histogram_quantile` does) and the total
 * count; then a fixed-width text table that fits a given width.
 *
 * Both metric namings are read (`beyla`: `http_server_duration_seconds`, `otel`:
 * `http_server_request_duration_seconds`, ...; the RPC names are the same in both). Errors follow
 * OpenTelemetry, as the README says: an HTTP server request is an error with status 5xx, an
 * HTTP client request with 4xx or 5xx, and either with status 0 (no response); an RPC on the
 * server side with gRPC code UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE or
 * DATA_LOSS, on the client side with any code but OK.
 *
 * @module
 */
import type { Sample } from "./prom_text.ts";

export type RedKind = "http server" | "http client" | "rpc server" | "rpc client";

interface Family {
  kind: RedKind;
  route: string;
  status: string;
}

const HTTP_SERVER: Family = {
  kind: "http server",
  route: "http_route",
  status: "http_response_status_code",
};
const HTTP_CLIENT: Family = { ...HTTP_SERVER, kind: "http client" };
const RPC_SERVER: Family = {
  kind: "rpc server",
  route: "rpc_method",
  status: "rpc_grpc_status_code",
};
const RPC_CLIENT: Family = { ...RPC_SERVER, kind: "rpc client" };

/** The duration histograms, by name, of both namings (core/exporter/red_metrics.ts). */
export const DURATION_FAMILIES: ReadonlyMap<string, Family> = new Map([
  ["http_server_duration_seconds", HTTP_SERVER],
  ["http_server_request_duration_seconds", HTTP_SERVER],
  ["http_client_duration_seconds", HTTP_CLIENT],
  ["http_client_request_duration_seconds", HTTP_CLIENT],
  ["rpc_server_duration_seconds", RPC_SERVER],
  ["rpc_client_duration_seconds", RPC_CLIENT],
]);

/** gRPC codes that make a server-side call an error (OpenTelemetry's rpc semantic conventions). */
const GRPC_SERVER_ERRORS = new Set([2, 4, 12, 13, 14, 15]);

/** Whether a request of `kind` with this status label value counts as an error. */
export function isError(kind: RedKind, status: string | undefined): boolean {
  if (status === undefined || !/^\d+$/.test(status)) return false;
  const code = Number(status);
  switch (kind) {
    case "http server":
      return code === 0 || (code >= 500 && code <= 599);
    case "http client":
      return code === 0 || (code >= 400 && code <= 599);
    case "rpc server":
      return GRPC_SERVER_ERRORS.has(code);
    case "rpc client":
      return code !== 0;
  }
}

/** One row's counters, summed over its series (methods, status codes, instances). */
export interface RedAggregate {
  service: string;
  kind: RedKind;
  route: string;
  count: number;
  errors: number;
  /** Bucket upper bounds, ascending; the last is Infinity. */
  bounds: number[];
  /** Cumulative counts, one per bound (what the `_bucket` samples say). */
  cumulative: number[];
}

/** A scrape reduced to its rows, keyed by {@linkcode rowKey}. */
export type RedSnapshot = Map<string, RedAggregate>;

export function rowKey(service: string, kind: RedKind, route: string): string {
  return JSON.stringify([service, kind, route]);
}

function serviceOf(labels: Record<string, string>): string {
  const name = labels.service_name ?? "";
  const ns = labels.service_namespace ?? "";
  return ns ? `${ns}/${name}` : name;
}

/** Sums the duration histograms of a scrape into rows. Other samples are ignored. */
export function aggregate(samples: readonly Sample[]): RedSnapshot {
  const rows: RedSnapshot = new Map();
  // Per row: bucket bound -> cumulative count, summed over the row's series.
  const buckets = new Map<string, Map<number, number>>();
  const rowFor = (family: Family, labels: Record<string, string>) => {
    const service = serviceOf(labels);
    const route = labels[family.route] ?? "";
    const key = rowKey(service, family.kind, route);
    let row = rows.get(key);
    if (!row) {
      row = { service, kind: family.kind, route, count: 0, errors: 0, bounds: [], cumulative: [] };
      rows.set(key, row);
      buckets.set(key, new Map());
    }
    return { key, row };
  };
  for (const s of samples) {
    const suffix = s.name.endsWith("_count")
      ? "_count"
      : s.name.endsWith("_bucket")
      ? "_bucket"
      : undefined;
    if (!suffix) continue;
    const family = DURATION_FAMILIES.get(s.name.slice(0, -suffix.length));
    if (!family) continue;
    const { key, row } = rowFor(family, s.labels);
    if (suffix === "_count") {
      row.count += s.value;
      if (isError(family.kind, s.labels[family.status])) row.errors += s.value;
    } else {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      if (Number.isNaN(le)) continue;
      const byBound = buckets.get(key)!;
      byBound.set(le, (byBound.get(le) ?? 0) + s.value);
    }
  }
  for (const [key, row] of rows) {
    const sorted = [...buckets.get(key)!].sort(([a], [b]) => a - b);
    row.bounds = sorted.map(([le]) => le);
    row.cumulative = sorted.map(([, n]) => n);
  }
  return rows;
}

/**
 * The `q` quantile of a histogram given as cumulative counts per ascending upper bound (the last
 * bound Infinity), interpolated linearly inside the bucket the rank falls in, exactly as
 * Prometheus' `histogram_quantile`: the first bucket starts at 0 (or is its bound when that is
 * <= 0), and a rank in the +Inf bucket gives the highest finite bound. Undefined when the
 * histogram is empty or has no +Inf bucket.
 */
export function histogramQuantile(
  q: number,
  bounds: readonly number[],
  cumulative: readonly number[],
): number | undefined {
  const n = bounds.length;
  if (n < 2 || bounds[n - 1] !== Infinity) return undefined;
  const total = cumulative[n - 1];
  if (!(total > 0)) return undefined;
  if (q <= 0) return bounds[0] <= 0 ? bounds[0] : 0;
  if (q >= 1) return bounds[n - 2];
  let rank = q * total;
  let b = 0;
  while (b < n - 1 && cumulative[b] < rank) b++;
  if (b === n - 1) return bounds[n - 2];
  if (b === 0 && bounds[0] <= 0) return bounds[0];
  let start = 0;
  let count = cumulative[b];
  if (b > 0) {
    start = bounds[b - 1];
    count -= cumulative[b - 1];
    rank -= cumulative[b - 1];
  }
  return start + (bounds[b] - start) * (rank / count);
}

export interface RedRow {
  service: string;
  kind: RedKind;
  route: string;
  /** Requests a second over the window; undefined without a previous scrape. */
  rate?: number;
  /** Requests the error % and quantiles are computed over (the window's, or every one). */
  requests: number;
  /** Fraction (0..1) of those requests that are errors; undefined when there were none. */
  errorRatio?: number;
  /** Seconds; undefined when there were no requests. */
  p50?: number;
  p99?: number;
  /** Every request counted since the agent started. */
  total: number;
}

/** What a counter gained; a decrease means it was reset (agent restart), so it gained `now`. */
function gained(now: number, before: number): number {
  return now >= before ? now - before : now;
}

export interface RowsOptions {
  /** The scrape before `current`, and the seconds between the two. */
  previous?: { snapshot: RedSnapshot; seconds: number };
  /**
   * Compute error % and quantiles over every request since the agent started even when there
   * is a previous scrape (the rate still comes from the window).
   */
  cumulative?: boolean;
}

/**
 * One row per (service, kind, route) of `current`: the rate from the growth of the count since
 * the previous scrape, and error % and p50/p99 over that window's requests (or, without a
 * previous scrape or with `cumulative`, over every request so far).
 */
export function redRows(current: RedSnapshot, options: RowsOptions = {}): RedRow[] {
  const { previous } = options;
  const rows: RedRow[] = [];
  for (const [key, now] of current) {
    const before = previous?.snapshot.get(key);
    const windowed = previous !== undefined && !options.cumulative;
    let requests = now.count;
    let errors = now.errors;
    let cumulative = now.cumulative;
    if (windowed) {
      const reset = before !== undefined && now.count < before.count;
      const base = reset ? undefined : before;
      requests = gained(now.count, base?.count ?? 0);
      errors = Math.max(0, now.errors - (base?.errors ?? 0));
      cumulative = now.cumulative.map((n, i) =>
        base && base.bounds[i] === now.bounds[i] ? Math.max(0, n - base.cumulative[i]) : n
      );
    }
    const row: RedRow = {
      service: now.service,
      kind: now.kind,
      route: now.route,
      requests,
      total: now.count,
    };
    if (previous) {
      row.rate = previous.seconds > 0
        ? gained(now.count, before?.count ?? 0) / previous.seconds
        : undefined;
    }
    if (requests > 0) {
      row.errorRatio = errors / requests;
      row.p50 = histogramQuantile(0.5, now.bounds, cumulative);
      row.p99 = histogramQuantile(0.99, now.bounds, cumulative);
    }
    rows.push(row);
  }
  return rows;
}

export const SORT_KEYS = ["rate", "errors", "p99"] as const;
export type SortKey = typeof SORT_KEYS[number];

/**
 * Rows in display order, highest first: by rate, by error % or by p99, then by rate and by total
 * (so without rates, on a first scrape, by total). Rows without a value go after those with one;
 * the last ties go by service, kind and route.
 */
export function sortRows(rows: readonly RedRow[], by: SortKey): RedRow[] {
  const keys: ((r: RedRow) => number | undefined)[] = [
    ...(by === "errors"
      ? [(r: RedRow) => r.errorRatio]
      : by === "p99"
      ? [(r: RedRow) => r.p99]
      : []),
    (r) => r.rate,
    (r) => r.total,
  ];
  const desc = (a: number | undefined, b: number | undefined) =>
    a === b ? 0 : a === undefined ? 1 : b === undefined ? -1 : b - a;
  return [...rows].sort((a, b) => {
    for (const key of keys) {
      const order = desc(key(a), key(b));
      if (order) return order;
    }
    return a.service.localeCompare(b.service) || a.kind.localeCompare(b.kind) ||
      a.route.localeCompare(b.route);
  });
}

/** Requests a second: 2 decimals under 10, 1 under 1000, none above. */
export function formatRate(rate: number | undefined): string {
  if (rate === undefined) return "-";
  if (rate < 10) return rate.toFixed(2);
  if (rate < 1000) return rate.toFixed(1);
  return rate.toFixed(0);
}

export function formatPercent(ratio: number | undefined): string {
  return ratio === undefined ? "-" : `${(ratio * 100).toFixed(1)}%`;
}

/** Seconds as µs, ms or s with 3 significant digits or so: `420µs`, `2.50ms`, `75.0ms`, `1.25s`. */
export function formatSeconds(seconds: number | undefined): string {
  if (seconds === undefined) return "-";
  if (seconds === 0) return "0";
  if (seconds < 1e-3) return `${(seconds * 1e6).toFixed(0)}µs`;
  if (seconds < 0.01) return `${(seconds * 1e3).toFixed(2)}ms`;
  if (seconds < 0.1) return `${(seconds * 1e3).toFixed(1)}ms`;
  if (seconds < 1) return `${(seconds * 1e3).toFixed(0)}ms`;
  return `${seconds.toFixed(2)}s`;
}

/** Cuts `text` to `width` characters, the last one an ellipsis when something was cut. */
export function truncate(text: string, width: number): string {
  const chars = [...text];
  if (chars.length <= width) return text;
  if (width <= 0) return "";
  return chars.slice(0, width - 1).join("") + "…";
}

function length(text: string): number {
  return [...text].length;
}

interface Column {
  title: string;
  right: boolean;
  cell: (r: RedRow) => string;
  /** How narrow the column may be squeezed (left columns only; others keep their width). */
  min?: number;
}

const COLUMNS: Column[] = [
  { title: "SERVICE", right: false, cell: (r) => r.service, min: 10 },
  { title: "KIND", right: false, cell: (r) => r.kind },
  { title: "ROUTE", right: false, cell: (r) => r.route, min: 12 },
  { title: "RATE/s", right: true, cell: (r) => formatRate(r.rate) },
  { title: "ERR%", right: true, cell: (r) => formatPercent(r.errorRatio) },
  { title: "P50", right: true, cell: (r) => formatSeconds(r.p50) },
  { title: "P99", right: true, cell: (r) => formatSeconds(r.p99) },
  { title: "TOTAL", right: true, cell: (r) => String(r.total) },
];
const GAP = "  ";
/** The columns left out, in this order, when squeezing ROUTE and SERVICE is not enough. */
const DROPPABLE = ["TOTAL", "P50", "KIND"];

export interface TableOptions {
  /** Characters a line may take. */
  width: number;
  /** At most this many rows (a last line then says how many were left out). */
  maxRows?: number;
}

/**
 * The table's lines: a header and one line per row, columns two spaces apart, numbers
 * right-aligned. When the natural width exceeds `width`, ROUTE is narrowed first (down to 12
 * characters), then SERVICE (down to 10), cutting long values with an ellipsis; past that,
 * TOTAL, then P50, then KIND are left out, and as a last resort lines are cut at `width`.
 */
export function renderTable(rows: readonly RedRow[], options: TableOptions): string[] {
  const limit = options.maxRows ?? Infinity;
  const shown = rows.length > limit ? rows.slice(0, Math.max(0, limit - 1)) : rows;
  const cells = shown.map((r) => COLUMNS.map((c) => c.cell(r)));
  const widths = COLUMNS.map((c, i) =>
    Math.max(length(c.title), ...cells.map((line) => length(line[i])))
  );
  let excess = widths.reduce((a, b) => a + b, 0) + GAP.length * (COLUMNS.length - 1) -
    options.width;
  for (const title of ["ROUTE", "SERVICE"]) {
    const i = COLUMNS.findIndex((c) => c.title === title);
    const cut = Math.min(Math.max(0, excess), Math.max(0, widths[i] - COLUMNS[i].min!));
    widths[i] -= cut;
    excess -= cut;
  }
  // Still too wide: leave out whole columns rather than cutting numbers.
  const shownColumns = COLUMNS.map((_, i) => i);
  for (const title of DROPPABLE) {
    if (excess <= 0) break;
    const i = COLUMNS.findIndex((c) => c.title === title);
    shownColumns.splice(shownColumns.indexOf(i), 1);
    excess -= widths[i] + GAP.length;
  }
  const line = (values: string[]) =>
    truncate(
      shownColumns.map((i) => {
        const text = truncate(values[i], widths[i]);
        const pad = " ".repeat(widths[i] - length(text));
        return COLUMNS[i].right ? pad + text : text + pad;
      }).join(GAP).trimEnd(),
      options.width,
    );
  const out = [line(COLUMNS.map((c) => c.title)), ...cells.map(line)];
  if (shown.length < rows.length) {
    out.push(truncate(`… ${rows.length - shown.length} more rows`, options.width));
  }
  return out;
}
