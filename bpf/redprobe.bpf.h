/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * What every redprobe BPF object shares with the core, by convention:
 *
 *   targets   array of u64: a bitmap of instrumented tgids    the core sets and clears the bits
 *   excluded  array of u64: a bitmap of tgids another plugin   the core, when a plugin replaces
 *             measures instead (the client side here)          this one for a process
 *   excluded_exes  hash {dev, ino}: executables likewise,      the core, at start
 *             for processes the core has not seen yet
 *   events    ringbuf                                      one fixed-layout record per observation
 *   stats     percpu array of u64                          index 0: records lost (ring full);
 *                                                          other indices are the plugin's own
 *   wakeup_bytes  const volatile                           see redprobe_submit()
 *
 * The core relies on these names; a plugin's own maps and counters come on top.
 */
#ifndef REDPROBE_BPF_H
#define REDPROBE_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#ifndef REDPROBE_STATS_MAX
#define REDPROBE_STATS_MAX 32
#endif

#define REDPROBE_STAT_RINGBUF_LOST 0

/*
 * Instrumented processes, one bit per tgid (word tgid / 64, bit tgid % 64). A bitmap in an
 * array map because the verifier inlines array lookups: the filter every probe hit pays costs
 * a few instructions, where a hash lookup costs ~40 ns. The core sizes it from
 * /proc/sys/kernel/pid_max before load (the default covers pid_max 32768).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u64);
} targets SEC(".maps");

/* Same layout and sizing as targets. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 512);
	__type(key, __u32);
	__type(value, __u64);
} excluded SEC(".maps");

/* An executable by its file: the kernel's s_dev of its filesystem and its inode number. */
struct redprobe_file_id {
	__u64 ino;
	__u32 dev;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct redprobe_file_id);
	__type(value, __u8);
} excluded_exes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REDPROBE_STATS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/*
 * Records are submitted without waking the reader until this many bytes are waiting: one
 * wakeup per event costs the traced process a few microseconds (irq_work + a context switch
 * in the agent); the agent also drains on a timer and before every scrape.
 */
const volatile __u64 wakeup_bytes = 256 << 10;

static __always_inline void redprobe_count(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &index);
	if (n)
		*n += 1; /* per-CPU slot: no atomics needed */
}

/* Whether the current process is instrumented. */
static __always_inline bool redprobe_is_target(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 word = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(&targets, &word);
	return bits && (*bits & (1ULL << (tgid % 64)));
}

/* Whether another plugin measures process `tgid` instead (see excluded). */
static __always_inline bool redprobe_is_excluded(__u32 tgid)
{
	__u32 word = tgid / 64;
	__u64 *bits = bpf_map_lookup_elem(&excluded, &word);
	return bits && (*bits & (1ULL << (tgid % 64)));
}

/*
 * Whether the current process runs an executable another plugin measures (excluded_exes).
 * Walks task->mm->exe_file with BTF: only for tp_btf/fentry-style programs, and only where it
 * is rare (a connection's first request), since it is a hash lookup.
 */
static __always_inline bool redprobe_exe_is_excluded(void)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct mm_struct *mm = task->mm;
	if (!mm)
		return false;
	struct file *exe = mm->exe_file;
	if (!exe)
		return false;
	struct inode *inode = exe->f_inode;
	struct redprobe_file_id id = {
		.ino = inode->i_ino,
		.dev = inode->i_sb->s_dev,
	};
	return bpf_map_lookup_elem(&excluded_exes, &id) != NULL;
}

/* Reserves a record; counts a loss when the ring is full. */
static __always_inline void *redprobe_reserve(__u64 size)
{
	void *rec = bpf_ringbuf_reserve(&events, size, 0);
	if (!rec)
		redprobe_count(REDPROBE_STAT_RINGBUF_LOST);
	return rec;
}

/*
 * Submits a record of `size` bytes. The reader is woken by the record that takes the waiting
 * data across a multiple of wakeup_bytes (256 KiB, 512 KiB, ...), not by every record once the
 * agent is behind: that charged each traced process an irq_work per record exactly when the
 * machine was busiest (the ingest benchmark's producer was held to ~1.1 M records/s by it).
 * Every further wakeup_bytes wakes it again, so a crossing missed in a race between CPUs costs
 * at most that much more waiting data, never a sleep until the reader's timer.
 */
static __always_inline void redprobe_submit_sized(void *rec, __u64 size)
{
	/* AVAIL_DATA counts this record too: its 8-byte header and size, rounded up to 8. */
	__u64 len = (size + 8 + 7) & ~7ULL;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 flags = avail >= len && avail / wakeup_bytes != (avail - len) / wakeup_bytes
			      ? BPF_RB_FORCE_WAKEUP
			      : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(rec, flags);
}

#define redprobe_submit(rec) redprobe_submit_sized((rec), sizeof(*(rec)))

#endif /* REDPROBE_BPF_H */
