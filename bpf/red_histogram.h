/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * RED histograms kept in the kernel, shared by the HTTP plugins: each completed request adds to
 * a per-CPU histogram (duration and request size) keyed by the plugin's labels, and the agent
 * reads the cumulative values at each scrape (lib/red_histogram.ts is the TypeScript side). It
 * costs the traced process far less than a ring-buffer record per request, and a stalled agent
 * loses nothing: counters only grow.
 *
 * The bucket bounds are load-time constants set from the agent's configuration (the defaults
 * are design.md's). Durations are whole nanoseconds and sizes whole bytes, so a value is
 * <= a bound exactly when it is <= floor(bound): the kernel's buckets are the exporter's.
 */
#ifndef RED_HISTOGRAM_H
#define RED_HISTOGRAM_H

#define RED_HIST_BUCKETS 16 /* up to 15 configured bounds, and +Inf */

/* Per-CPU value: bucket i counts values <= bound i (the last one: +Inf). */
struct red_histogram {
	__u64 duration_sum_ns;
	__u64 size_sum;
	__u64 duration_buckets[RED_HIST_BUCKETS];
	__u64 size_buckets[RED_HIST_BUCKETS];
};

const volatile __u32 duration_bound_count = 15;
const volatile __u64 duration_bounds_ns[RED_HIST_BUCKETS - 1] = {
	0, 5000000, 10000000, 25000000, 50000000, 75000000, 100000000, 250000000, 500000000,
	750000000, 1000000000, 2500000000, 5000000000, 7500000000, 10000000000,
};
const volatile __u32 size_bound_count = 10;
const volatile __u64 size_bounds[RED_HIST_BUCKETS - 1] = {
	0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
};

/* A zeroed histogram to insert new keys from (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct red_histogram);
} agg_template SEC(".maps");

/*
 * The histogram of a new `key` in the per-CPU hash `aggs`: inserted zeroed (EEXIST: another
 * CPU inserted it first, just as good), then looked up. NULL when the map is full.
 */
static __always_inline struct red_histogram *red_histogram_insert(void *aggs, const void *key)
{
	__u32 zero = 0;
	struct red_histogram *empty = bpf_map_lookup_elem(&agg_template, &zero);
	if (!empty)
		return NULL;
	bpf_map_update_elem(aggs, key, empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(aggs, key);
}

/* Index of the histogram bucket of v: the number of bounds below it. */
static __always_inline __u32 red_bucket_of(__u64 v, const volatile __u64 *bounds, __u32 count)
{
	__u32 index = 0;
#pragma unroll
	for (int i = 0; i < RED_HIST_BUCKETS - 1; i++) {
		if (i < count && v > bounds[i])
			index = i + 1;
	}
	return index & (RED_HIST_BUCKETS - 1);
}

static __always_inline void red_histogram_add(struct red_histogram *h, __u64 duration,
					      __u64 size)
{
	/* Atomic: a timer or softirq may complete a request on this CPU meanwhile. */
	__sync_fetch_and_add(&h->duration_sum_ns, duration);
	__sync_fetch_and_add(&h->size_sum, size);
	__sync_fetch_and_add(&h->duration_buckets[red_bucket_of(duration, duration_bounds_ns,
								  duration_bound_count)], 1);
	__sync_fetch_and_add(&h->size_buckets[red_bucket_of(size, size_bounds, size_bound_count)],
			     1);
}

/*
 * A 64-bit hash of `len` bytes at `path` (a buffer of `max` bytes, max a multiple of 8), 8 at
 * a time (multiply-xorshift per word, the length mixed in): the key the agent resolves through
 * a paths map. Collisions would merge two paths; at 64 bits that takes billions of them.
 */
static __always_inline __u64 red_path_hash(const char *path, __u32 len, const int max)
{
	__u64 h = 0xcbf29ce484222325ULL ^ len;
	/* Every word, zeroed past the end: no early exit, one state for the verifier after. */
	for (int i = 0; i < max / 8; i++) {
		__u64 w = *(__u64 *)(path + i * 8);
		__s32 left = (__s32)len - i * 8;
		if (left <= 0)
			w = 0;
		else if (left < 8)
			w &= (1ULL << (left * 8)) - 1;
		h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
		h ^= h >> 32;
	}
	return h;
}

#endif /* RED_HISTOGRAM_H */
