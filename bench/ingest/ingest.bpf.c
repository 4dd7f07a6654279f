/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The ingest benchmark's synthetic event source (scripts/bench_ingest.ts): one fixed 64-byte
 * record (or `records_per_call` of them) per getppid() call of an instrumented process (the targets bitmap, like every
 * plugin's programs), shaped like an HTTP server request record (start time, duration,
 * method, status, a path), written to the standard `events` ring buffer with the standard
 * wakeup policy (redprobe_submit). Not a plugin users run: bench/ingest/mod.ts loads it.
 */
#include "redprobe.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define INGEST_PATH_MAX 32

struct ingest_event {
	__u32 tgid;
	__u16 status;
	__u8 method;
	__u8 path_len;
	__u64 start_ns;
	__u64 duration_ns;
	__u64 seq;
	char path[INGEST_PATH_MAX];
};

_Static_assert(sizeof(struct ingest_event) == 64, "one 64-byte record");

/* Per-CPU sequence number: the decoder checks nothing is reordered or skipped in one CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seqs SEC(".maps");

/*
 * Records written per call (1..8), set by the plugin's option: a single generator process on
 * one core cannot make calls fast enough to saturate the agent with one record each.
 */
const volatile __u32 records_per_call = 1;

static __always_inline void write_record(void)
{
	struct ingest_event *e = redprobe_reserve(sizeof(*e));
	if (!e)
		return;
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(&seqs, &zero);
	__u64 n = 0;
	if (seq)
		n = (*seq)++;
	__u64 now = bpf_ktime_get_ns();
	e->tgid = bpf_get_current_pid_tgid() >> 32;
	e->status = (n & 63) == 0 ? 500 : 200;
	e->method = n & 1; /* 0 GET, 1 POST */
	e->start_ns = now - 1000 - (n & 0xfff) * 1000;
	e->duration_ns = now - e->start_ns;
	e->seq = n;
	/* "/api/items/<0..7>": eight distinct paths, one route after the core's ID heuristic. */
	__builtin_memcpy(e->path, "/api/items/0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", INGEST_PATH_MAX);
	e->path[11] = '0' + (n & 7);
	e->path_len = 12;
	redprobe_submit(e);
}

SEC("tp/syscalls/sys_enter_getppid")
int ingest_getppid(void *ctx)
{
	if (!redprobe_is_target())
		return 0;
	for (__u32 i = 0; i < 8; i++) {
		if (i >= records_per_call)
			break;
		write_record();
	}
	return 0;
}
