// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * go-grpc: gRPC server and client metrics for Go programs that use google.golang.org/grpc, from
 * uprobes on grpc-go itself (never uretprobes: they crash Go programs). Four entry probes, each
 * on the emulated `jbe` of the function's stack check (see lib/x86_sites.ts), so a call costs
 * two emulated hits on each side and no return probe at all:
 *
 *   server  (*Server).handleStream(t, stream, trInfo)   start, keyed by the *transport.Stream
 *           (*http2Server).WriteStatus(s, st)           end: the status grpc-go sends
 *   client  (*csAttempt).newStream()                    start, keyed by the *csAttempt
 *           (*csAttempt).finish(err)                    end: the stream's status, else err's
 *
 * Go's register ABI: the receiver in RAX, then the arguments in RBX, RCX, RDI, RSI, R8..R11;
 * an interface or a string takes two registers. A stream's duration is its lifetime (from the
 * server's first handling of it, or the client's creating it, to its status).
 *
 * The method name is read at the start (it is in the stream, or the client's call header) and
 * kept as a hash; the methods map names the hashes for the agent. Field offsets come in each
 * probe's cookie (go_grpc.h).
 */
#include "redprobe.bpf.h"
#include "red_histogram.h"
#include "go_grpc.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keeps struct go_grpc_event in the object's BTF for decode_test.ts (8 bytes of .bss). */
struct go_grpc_event *go_grpc_event_btf_anchor;

const volatile __u8 aggregate_in_kernel = 1;

struct call_key {
	__u64 ptr; /* *transport.Stream (server) or *csAttempt (client) */
	__u32 tgid;
	__u32 _pad;
};

struct call_start {
	__u64 start_ns;
	__u64 method_hash;
	__u16 method_len;
	__u8 flags;
	__u8 _pad[5];
};

/* In-flight calls. LRU: a call whose end is never seen ages out (see go_http.bpf.c). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct call_key);
	__type(value, struct call_start);
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct go_grpc_agg_key);
	__type(value, struct red_histogram);
} aggs SEC(".maps");

/* Method names by hash, for the agent to name the aggs keys. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct go_grpc_method);
} methods SEC(".maps");

/* A method name being read (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_grpc_method);
} method_scratch SEC(".maps");

static __always_inline __u32 cookie_byte(__u64 cookie, int byte)
{
	return (cookie >> (byte * 8)) & 0xff;
}

static __always_inline __u64 read_ptr(__u64 addr, bool *failed)
{
	__u64 v = 0;
	if (!addr || bpf_probe_read_user(&v, sizeof(v), (void *)addr)) {
		*failed = true;
		return 0;
	}
	return v;
}

/*
 * Starts a call: reads the Go string at `method_addr` (the method name), names its hash in the
 * methods map and records the start under `key`.
 */
static __always_inline int start_call(struct call_key *key, __u64 method_addr, __u32 stat)
{
	__u32 zero = 0;
	struct go_grpc_method *m = bpf_map_lookup_elem(&method_scratch, &zero);
	if (!m)
		return 0;
	redprobe_count(stat);
	struct call_start start = { .start_ns = bpf_ktime_get_ns() };
	struct {
		__u64 ptr;
		__u64 len;
	} s = {};
	bool failed = bpf_probe_read_user(&s, sizeof(s), (void *)method_addr) != 0;
	__u64 n = s.len < GO_GRPC_METHOD_MAX ? s.len : GO_GRPC_METHOD_MAX;
	__builtin_memset(m->method, 0, sizeof(m->method));
	if (n && bpf_probe_read_user(m->method, n & (GO_GRPC_METHOD_MAX * 2 - 1), (void *)s.ptr))
		failed = true;
	if (failed) {
		redprobe_count(GRPC_STAT_READ_FAILED);
		n = 0;
	}
	if (s.len > GO_GRPC_METHOD_MAX) {
		start.flags |= GO_GRPC_FLAG_METHOD_TRUNCATED;
		redprobe_count(GRPC_STAT_METHOD_TRUNCATED);
	}
	m->len = n;
	start.method_len = n;
	start.method_hash = red_path_hash(m->method, n, GO_GRPC_METHOD_MAX);
	/* Looked up first: an update, even one refused as existing, takes the bucket's lock. */
	if (!bpf_map_lookup_elem(&methods, &start.method_hash))
		bpf_map_update_elem(&methods, &start.method_hash, m, BPF_NOEXIST);
	/* NOEXIST: a client's retry starts a new attempt, a new key; the first start stays. */
	if (bpf_map_update_elem(&calls, key, &start, BPF_NOEXIST) == -7 /* E2BIG */)
		redprobe_count(GRPC_STAT_TABLE_FULL);
	return 0;
}

/* A completed call: into its histogram, or (maps full, or aggregation off) a record. */
static __always_inline void complete(struct call_key *key, __u8 kind, __u16 code, __u8 flags,
				     __u32 unpaired)
{
	struct call_start *found = bpf_map_lookup_elem(&calls, key);
	if (!found) {
		redprobe_count(unpaired);
		return;
	}
	struct call_start start = *found;
	/* Delete first: the end of a call is counted once, even if its probe fires again. */
	if (bpf_map_delete_elem(&calls, key))
		return;
	__u64 duration = bpf_ktime_get_ns() - start.start_ns;
	struct go_grpc_agg_key agg_key = {
		.method_hash = start.method_hash,
		.tgid = key->tgid,
		.code = code,
		.kind = kind,
		.flags = flags | start.flags,
	};
	if (aggregate_in_kernel) {
		struct red_histogram *agg = bpf_map_lookup_elem(&aggs, &agg_key);
		if (!agg && bpf_map_lookup_elem(&methods, &start.method_hash))
			agg = red_histogram_insert(&aggs, &agg_key);
		if (agg) {
			red_histogram_add(agg, duration, 0);
			redprobe_count(GRPC_STAT_AGGREGATED);
			return;
		}
		redprobe_count(GRPC_STAT_NOT_AGGREGATED);
	}
	struct go_grpc_event *ev = redprobe_reserve(sizeof(*ev));
	if (!ev)
		return;
	ev->start_ns = start.start_ns;
	ev->duration_ns = duration;
	ev->tgid = key->tgid;
	ev->code = code;
	ev->kind = kind;
	ev->flags = agg_key.flags;
	ev->method_len = start.method_len;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
	__builtin_memset(ev->method, 0, sizeof(ev->method));
	struct go_grpc_method *m = bpf_map_lookup_elem(&methods, &start.method_hash);
	if (m)
		__builtin_memcpy(ev->method, m->method, sizeof(ev->method));
	redprobe_submit(ev);
}

/* The code of a *spb.Status (nil: OK), the first field of a status.Status or status.Error. */
static __always_inline __u16 status_code(__u64 spb, __u32 code_offset, bool *failed)
{
	if (!spb)
		return 0;
	__s32 code = 0;
	if (bpf_probe_read_user(&code, sizeof(code), (void *)(spb + code_offset))) {
		*failed = true;
		return 2; /* UNKNOWN */
	}
	return code >= 0 && code <= 0xffff ? code : 2;
}

SEC("uprobe")
int grpc_server_start(struct pt_regs *ctx)
{
	if (!redprobe_is_target())
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	/* handleStream(s *Server, t ServerTransport, stream *transport.Stream, trInfo): RDI */
	struct call_key key = { .ptr = ctx->di, .tgid = bpf_get_current_pid_tgid() >> 32 };
	return start_call(&key, ctx->di + cookie_byte(cookie, 0) * 8, GRPC_STAT_SERVER_STARTS);
}

SEC("uprobe")
int grpc_server_end(struct pt_regs *ctx)
{
	if (!redprobe_is_target())
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	/* WriteStatus(t *http2Server, s *Stream, st *status.Status): RBX, RCX */
	struct call_key key = { .ptr = ctx->bx, .tgid = bpf_get_current_pid_tgid() >> 32 };
	bool failed = false;
	__u64 spb = ctx->cx ? read_ptr(ctx->cx, &failed) : 0;
	__u16 code = status_code(spb, cookie_byte(cookie, 2), &failed);
	if (failed)
		redprobe_count(GRPC_STAT_READ_FAILED);
	complete(&key, GO_GRPC_SERVER, code, 0, GRPC_STAT_SERVER_UNPAIRED);
	return 0;
}

SEC("uprobe")
int grpc_client_start(struct pt_regs *ctx)
{
	if (!redprobe_is_target())
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 attempt = ctx->ax;
	bool failed = false;
	__u64 cs = read_ptr(attempt + cookie_byte(cookie, 0) * 8, &failed);
	__u64 hdr = cs ? read_ptr(cs + cookie_byte(cookie, 1) * 8, &failed) : 0;
	struct call_key key = { .ptr = attempt, .tgid = bpf_get_current_pid_tgid() >> 32 };
	return start_call(&key, hdr ? hdr + cookie_byte(cookie, 2) * 8 : 0,
			  GRPC_STAT_CLIENT_STARTS);
}

SEC("uprobe")
int grpc_client_end(struct pt_regs *ctx)
{
	if (!redprobe_is_target())
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 attempt = ctx->ax;
	struct call_key key = { .ptr = attempt, .tgid = bpf_get_current_pid_tgid() >> 32 };
	if (!bpf_map_lookup_elem(&calls, &key)) {
		redprobe_count(GRPC_STAT_CLIENT_UNPAIRED);
		return 0;
	}
	bool failed = false;
	__u32 code_offset = cookie_byte(cookie, 2);
	/* The stream's status: what the server sent, or what the transport ended it with. */
	__u64 stream = read_ptr(attempt + cookie_byte(cookie, 0) * 8, &failed);
	__u64 st = stream ? read_ptr(stream + cookie_byte(cookie, 1) * 8, &failed) : 0;
	__u16 code = 0;
	__u8 flags = 0;
	if (st) {
		code = status_code(read_ptr(st, &failed), code_offset, &failed);
	} else if (ctx->bx) {
		/*
		 * No status on the stream yet (the deadline passed, the connection failed): the error
		 * passed to finish. A *status.Error is recognised by its itab's first method, Error(),
		 * whose address relative to this probe the cookie holds.
		 */
		__u64 error_fn = read_ptr(ctx->bx + 24, &failed);
		__s32 delta = cookie >> 32;
		if (error_fn && error_fn == ctx->ip + (__s64)delta) {
			code = status_code(read_ptr(ctx->cx, &failed), code_offset, &failed);
		} else {
			code = 2; /* UNKNOWN */
			flags = GO_GRPC_FLAG_NO_STATUS;
		}
	}
	if (failed)
		redprobe_count(GRPC_STAT_READ_FAILED);
	complete(&key, GO_GRPC_CLIENT, code, flags, GRPC_STAT_CLIENT_UNPAIRED);
	return 0;
}
