/**
 * The TypeScript side of bpf/red_histogram.h: the RED histograms the HTTP plugins keep in the
 * kernel. Load-time constants for the bucket bounds, and the slots of a histogram value read
 * back (u64 counters, summed over the CPUs by the core).
 *
 * @module
 */

/** RED_HIST_BUCKETS: at most this many buckets (bounds + 1) in the kernel. */
export const RED_HIST_BUCKETS = 16;

/**
 * Slots (u64 counters) of struct red_histogram: duration sum (ns), size sum, then
 * RED_HIST_BUCKETS duration buckets and RED_HIST_BUCKETS size buckets.
 */
export const RedHistogramSlot = {
  durationSumNs: 0,
  sizeSum: 1,
  durationBuckets: 2,
  sizeBuckets: 2 + RED_HIST_BUCKETS,
} as const;

/** The exporter's buckets: duration bounds in seconds, size bounds in bytes. */
export interface HistogramBuckets {
  durationSeconds: readonly number[];
  sizeBytes: readonly number[];
}

/** Whether the configured buckets fit the kernel's fixed-size histograms. */
export function fitsInKernel(buckets: HistogramBuckets): boolean {
  return buckets.durationSeconds.length < RED_HIST_BUCKETS &&
    buckets.sizeBytes.length < RED_HIST_BUCKETS;
}

/**
 * Whether a plugin with the option `aggregate_in_kernel` keeps its histograms in the kernel:
 * when asked, when the buckets fit, and when the core does not need a record per request
 * (traces).
 */
export function aggregatesInKernel(
  ctx: {
    options: { aggregate_in_kernel: boolean };
    buckets: HistogramBuckets;
    perRequestEvents?: boolean;
  },
): boolean {
  return ctx.options.aggregate_in_kernel && !ctx.perRequestEvents && fitsInKernel(ctx.buckets);
}

/**
 * Bytes of the `events` ring buffer: 8 MiB when every request is a record (~47,000 of
 * nginx's, some seconds of a busy server while the agent is slow), 2 MiB when the histograms
 * are kept in the kernel and records are the exception: the requests that cannot be aggregated
 * (a server with more distinct paths than the path table holds; 100,000 distinct URLs in
 * tests/e2e/routes_test.ts lost records with 1 MiB). The agent maps the ring whole (the kernel
 * populates every page of the mapping), so this is its share of the agent's RSS.
 */
export function eventsRingBytes(inKernel: boolean): number {
  return inKernel ? 2 << 20 : 8 << 20;
}

/** A bucket-bound constant array, padded to the kernel's fixed length. */
function bounds(values: readonly number[], scale: number): bigint[] {
  const out = Array.from({ length: RED_HIST_BUCKETS - 1 }, () => 0n);
  values.forEach((v, i) => {
    if (i < out.length) out[i] = BigInt(Math.floor(v * scale));
  });
  return out;
}

/**
 * The `const volatile` bounds of bpf/red_histogram.h for `buckets`. Durations are whole
 * nanoseconds and sizes whole bytes, so value <= bound exactly when value <= floor(bound): the
 * kernel's buckets are the exporter's. With `enabled` false the counts are 0 (unused).
 */
export function histogramConstants(buckets: HistogramBuckets, enabled = true) {
  return {
    duration_bound_count: enabled ? buckets.durationSeconds.length : 0,
    duration_bounds_ns: bounds(buckets.durationSeconds, 1e9),
    size_bound_count: enabled ? buckets.sizeBytes.length : 0,
    size_bounds: bounds(buckets.sizeBytes, 1),
  };
}

/** What one key's counters gained: bucket counts (the last is +Inf) and sums, in exporter units. */
export function histogramDelta(delta: Float64Array, buckets: HistogramBuckets) {
  const d = RedHistogramSlot.durationBuckets;
  const s = RedHistogramSlot.sizeBuckets;
  return {
    durationBuckets: delta.subarray(d, d + buckets.durationSeconds.length + 1),
    durationSumSeconds: delta[RedHistogramSlot.durationSumNs] / 1e9,
    sizeBuckets: delta.subarray(s, s + buckets.sizeBytes.length + 1),
    sizeSumBytes: delta[RedHistogramSlot.sizeSum],
  };
}
