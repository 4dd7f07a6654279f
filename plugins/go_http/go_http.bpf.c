// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * go-http: Go net/http servers and clients, from uprobes on the Go functions themselves (above
 * crypto/tls, so HTTPS is measured like HTTP).
 *
 * Where the probes sit, and why there:
 *   server start   net/http.serverHandler.ServeHTTP      rw (*response) in RCX, *Request in RDI
 *   server status  net/http.(*response).WriteHeader      w in RAX, code in RBX
 *   server end     net/http.(*response).finishRequest    w in RAX
 *   HTTP/2 status  net/http.(*http2responseWriter).WriteHeader   w in RAX, code in RBX
 *   HTTP/2 end     net/http.(*http2responseWriter).handlerDone   w in RAX
 *   client start   net/http.(*Transport).roundTrip       *Request in RBX, goroutine in R14
 *   client end     every RET of (*Transport).roundTrip   *Response in RAX, goroutine in R14
 *
 * A uprobe on an ordinary instruction costs ~20 µs a hit on these machines (the kernel
 * single-steps it out of line) but ~1 µs on one the kernel emulates (jmp, call, jcc, nop,
 * push). The agent puts start, status and end probes on the conditional jump of each function's
 * stack check (`cmp rsp,[r14+0x10]; jbe morestack`): the argument registers are still untouched
 * there, so the server side costs three cheap hits per request. When the stack must grow the
 * jump is taken, morestack runs and the function starts over, so such a probe can fire twice
 * for one call: a start simply overwrites its own entry, a second end finds none (counted).
 * The client's end has no such place and pays for single-stepped RET probes (one hit per call).
 *
 * Server requests are keyed by their ResponseWriter: *response for HTTP/1, *http2responseWriter
 * for HTTP/2, both the data word of ServeHTTP's rw argument (all server probes see it; a handler may
 * call WriteHeader from another goroutine), client calls by goroutine (entry and return run on
 * the same g; g stays put when the stack moves). Field offsets come in each probe's cookie (see
 * go_http.h), so binaries of different Go versions share this one object.
 *
 * A completed request is added to an in-kernel histogram (bpf/red_histogram.h) keyed by
 * process, kind, method, status and path hash; the agent reads them at each scrape. Only a
 * request that cannot be aggregated (maps full) goes out as a ring-buffer record, so a busy
 * agent loses nothing.
 *
 * Uretprobes are never used: they rewrite the return address on the goroutine stack, and Go's
 * stack walks (GC, stack growth) crash on it.
 */
#include "redprobe.bpf.h"
#include "red_histogram.h"
#include "go_http.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct go_key {
	__u64 ptr; /* *response (server) or g (client) */
	__u32 tgid;
	__u32 _pad;
};

/*
 * In-flight starts. LRU, so starts that never end (a handler that panics or hijacks the
 * connection) age out instead of filling the map; with per-CPU LRU lists (NO_COMMON_LRU) an
 * insert skips the shared list's lock: ~420 ns a start instead of ~520 here (bpf_stats), where
 * a plain preallocated hash measured ~550.
 */
struct go_start {
	__u64 start_ns;
	__u64 request; /* *http.Request */
	__u64 cookie;
	__u32 status; /* server: first final status passed to WriteHeader, 0 until then */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct go_key);
	__type(value, struct go_start);
} server_starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct go_key);
	__type(value, struct go_start);
} client_starts SEC(".maps");

const volatile __u8 aggregate_in_kernel = 1;
/*
 * Client requests carry their URL.Host (the server_address/server_port labels are on). url.URL
 * begins Scheme, Opaque, User, Host, Path: Host is the string just before Path, whatever the
 * Go version (the same stable prefix as Path itself, see offsets.json).
 */
const volatile __u8 peer_labels = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct go_agg_key);
	__type(value, struct red_histogram);
} aggs SEC(".maps");

/* Path bytes by hash, for the agent to name the aggs keys. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct go_path);
} paths SEC(".maps");

/* One completed request being described: its key and path (too big for the BPF stack). */
struct go_request {
	struct go_agg_key key;
	struct go_path path;
	__s64 content_length;
	__u64 method_len;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_request);
} request_scratch SEC(".maps");

static __always_inline __u32 cookie_offset(__u64 cookie, int byte)
{
	return (cookie >> (byte * 8)) & 0xff;
}

/* Instrumented: a target process, or any process of a binary attached for all processes. */
static __always_inline bool go_is_target(__u64 cookie)
{
	return (cookie >> 56) & GO_COOKIE_ANY_PROCESS || redprobe_is_target();
}

/* Reads a Go string header {ptr, len} at `addr` into dst (at most max bytes); its full length. */
static __always_inline __u64 read_go_string(void *dst, __u32 max, __u64 addr, bool *failed)
{
	struct {
		__u64 ptr;
		__u64 len;
	} s;
	if (bpf_probe_read_user(&s, sizeof(s), (void *)addr)) {
		*failed = true;
		return 0;
	}
	__u64 n = s.len < max ? s.len : max;
	/* max is a constant of each (inlined) call, so the verifier sees n <= sizeof(dst). */
	if (n && bpf_probe_read_user(dst, n, (void *)s.ptr))
		*failed = true;
	return s.len;
}

/* Reads the completed request's labels from Go's memory into the per-CPU scratch. */
static __always_inline struct go_request *describe(struct go_start *start, __u8 kind,
						   __u16 status, __u8 flags)
{
	__u32 zero = 0;
	struct go_request *r = bpf_map_lookup_elem(&request_scratch, &zero);
	if (!r)
		return NULL;
	__u64 cookie = start->cookie;
	__u64 req = start->request;
	bool failed = false;

	r->key.tgid = bpf_get_current_pid_tgid() >> 32;
	r->key.status = status;
	r->key.kind = kind;
	r->key.exe_index = (cookie >> 40) & 0xff;
	r->key._pad = 0;
	*(__u64 *)r->key.method = 0;
	r->method_len = read_go_string(r->key.method, sizeof(r->key.method),
				       req + cookie_offset(cookie, 0), &failed);
	if (r->method_len > sizeof(r->key.method))
		flags |= GO_HTTP_FLAG_LONG_METHOD;

	r->path.len = 0;
	__u64 url = 0;
	if (bpf_probe_read_user(&url, sizeof(url), (void *)(req + cookie_offset(cookie, 1))))
		failed = true;
	if (url) {
		__u64 plen = read_go_string(r->path.path, GO_HTTP_PATH_MAX,
					    url + cookie_offset(cookie, 2), &failed);
		if (plen > GO_HTTP_PATH_MAX) {
			flags |= GO_HTTP_FLAG_PATH_TRUNCATED;
			redprobe_count(GO_STAT_PATH_TRUNCATED);
			plen = GO_HTTP_PATH_MAX;
		}
		r->path.len = plen;
	}
	if (bpf_probe_read_user(&r->content_length, sizeof(r->content_length),
				(void *)(req + cookie_offset(cookie, 3)))) {
		failed = true;
		r->content_length = -1;
	}
	__builtin_memset(r->key.host, 0, sizeof(r->key.host));
	if (peer_labels && kind == GO_HTTP_CLIENT && url) {
		__u32 path_off = cookie_offset(cookie, 2);
		__u64 hlen = read_go_string(r->key.host, GO_HTTP_HOST_MAX, url + path_off - 16,
					    &failed);
		if (hlen > GO_HTTP_HOST_MAX)
			flags |= GO_HTTP_FLAG_LONG_HOST;
		/* Scheme is url.URL's first field: "https" tells the default port. */
		struct {
			__u64 ptr;
			__u64 len;
		} scheme = {};
		char first[8] = {};
		if (!bpf_probe_read_user(&scheme, sizeof(scheme), (void *)url) && scheme.len == 5 &&
		    !bpf_probe_read_user(first, 5, (void *)scheme.ptr) && first[4] == 's')
			flags |= GO_HTTP_FLAG_HTTPS;
	}
	if (failed)
		redprobe_count(GO_STAT_READ_FAILED);
	r->key.flags = flags;
	r->key.path_hash = red_path_hash(r->path.path, r->path.len, GO_HTTP_PATH_MAX);
	return r;
}

/* Adds the request to its histogram; false when its key is new and the maps are full. */
static __always_inline bool aggregate(struct go_request *r, __u64 duration)
{
	struct red_histogram *agg = bpf_map_lookup_elem(&aggs, &r->key);
	if (!agg) {
		long err = bpf_map_update_elem(&paths, &r->key.path_hash, &r->path, BPF_NOEXIST);
		if (err && err != -17 /* EEXIST */)
			return false;
		agg = red_histogram_insert(&aggs, &r->key);
		if (!agg)
			return false;
	}
	red_histogram_add(agg, duration, r->content_length > 0 ? r->content_length : 0);
	return true;
}

/* A completed request: into its histogram, or (maps full, or aggregation off) a record. */
static __always_inline void complete(struct go_start *start, __u8 kind, __u16 status,
				     __u8 flags)
{
	__u64 duration = bpf_ktime_get_ns() - start->start_ns;
	struct go_request *r = describe(start, kind, status, flags);
	if (!r)
		return;
	if (aggregate_in_kernel) {
		if (aggregate(r, duration)) {
			redprobe_count(GO_STAT_AGGREGATED);
			return;
		}
		redprobe_count(GO_STAT_NOT_AGGREGATED);
	}
	struct go_http_event *e = redprobe_reserve(sizeof(*e));
	if (!e)
		return;
	e->start_ns = start->start_ns;
	e->duration_ns = duration;
	e->content_length = r->content_length;
	e->tgid = r->key.tgid;
	e->status = r->key.status;
	e->kind = kind;
	e->flags = r->key.flags;
	e->method_len = r->method_len > 8 ? 255 : r->method_len;
	e->_pad0 = 0;
	e->path_len = r->path.len;
	e->exe_index = r->key.exe_index;
	__builtin_memset(e->method, 0, sizeof(e->method));
	__builtin_memcpy(e->method, r->key.method, sizeof(r->key.method));
	__builtin_memcpy(e->path, r->path.path, GO_HTTP_PATH_MAX);
	__builtin_memcpy(e->host, r->key.host, GO_HTTP_HOST_MAX);
	redprobe_submit(e);
}

static __always_inline int start_request(void *map, struct go_key *key, __u64 request,
					 __u64 cookie, __u32 stat)
{
	struct go_start start = {
		.start_ns = bpf_ktime_get_ns(),
		.request = request,
		.cookie = cookie,
	};
	redprobe_count(stat);
	if (bpf_map_update_elem(map, key, &start, BPF_ANY))
		redprobe_count(GO_STAT_TABLE_FULL);
	return 0;
}

SEC("uprobe")
int go_server_start(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	if (!go_is_target(cookie))
		return 0;
	struct go_key key = { .ptr = ctx->cx, .tgid = bpf_get_current_pid_tgid() >> 32 };
	return start_request(&server_starts, &key, ctx->di, cookie, GO_STAT_SERVER_STARTS);
}

SEC("uprobe")
int go_server_status(struct pt_regs *ctx)
{
	if (!go_is_target(bpf_get_attach_cookie(ctx)))
		return 0;
	struct go_key key = { .ptr = ctx->ax, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_start *start = bpf_map_lookup_elem(&server_starts, &key);
	__u64 code = ctx->bx;
	/* The first final status wins, as in Go (later calls are "superfluous"); 1xx are interim. */
	if (start && start->status == 0 && code >= 200 && code <= 999)
		start->status = code;
	return 0;
}

SEC("uprobe")
int go_server_end(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	if (!go_is_target(cookie))
		return 0;
	struct go_key key = { .ptr = ctx->ax, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_start *start = bpf_map_lookup_elem(&server_starts, &key);
	if (!start) {
		redprobe_count(GO_STAT_SERVER_UNPAIRED);
		return 0;
	}
	__u32 status = start->status;
	/*
	 * Where the agent knows where response.status is (cookie byte 6), read it here instead of
	 * probing WriteHeader: WriteHeader stores the first final status there (1xx are written
	 * and not stored), so 0 means it has not run yet.
	 */
	__u32 status_at = ((cookie >> 48) & 0xff) * 8;
	if (status_at) {
		__s64 code = 0;
		if (bpf_probe_read_user(&code, sizeof(code), (void *)(ctx->ax + status_at)))
			redprobe_count(GO_STAT_READ_FAILED);
		status = code >= 100 && code <= 999 ? code : 0;
	}
	/* No WriteHeader yet: Go is about to send its implicit 200 (HTTP/1 and HTTP/2 alike). */
	complete(start, GO_HTTP_SERVER, status ? status : 200, 0);
	bpf_map_delete_elem(&server_starts, &key);
	return 0;
}

SEC("uprobe")
int go_client_start(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	if (!go_is_target(cookie))
		return 0;
	struct go_key key = { .ptr = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32 };
	return start_request(&client_starts, &key, ctx->bx, cookie, GO_STAT_CLIENT_STARTS);
}

SEC("uprobe")
int go_client_end(struct pt_regs *ctx)
{
	__u64 cookie = bpf_get_attach_cookie(ctx);
	if (!go_is_target(cookie))
		return 0;
	struct go_key key = { .ptr = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32 };
	struct go_start *start = bpf_map_lookup_elem(&client_starts, &key);
	if (!start) {
		redprobe_count(GO_STAT_CLIENT_UNPAIRED);
		return 0;
	}
	__u64 response = ctx->ax;
	__s64 code = 0;
	if (response &&
	    bpf_probe_read_user(&code, sizeof(code), (void *)(response + cookie_offset(cookie, 4))))
		redprobe_count(GO_STAT_READ_FAILED);
	if (code < 0 || code > 999)
		code = 0;
	complete(start, GO_HTTP_CLIENT, code, response ? 0 : GO_HTTP_FLAG_NO_RESPONSE);
	bpf_map_delete_elem(&client_starts, &key);
	return 0;
}
