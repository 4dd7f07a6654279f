/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The HTTP/1.x engine shared by kprobe-http (socket tracepoints: plaintext as the syscalls move
 * it) and tls-uprobe (OpenSSL uprobes: plaintext before encryption and after decryption).
 *
 * A probe hands it the bytes one call moved in one direction of one connection (struct io_desc:
 * one user buffer or an iovec array, and the byte count). Per connection it runs two HTTP/1
 * framers (requests, responses), queues parsed requests in order (pipelining), pairs the k-th
 * final response with the k-th request and completes each request once: into an in-kernel
 * histogram (bpf/red_histogram.h) or, when that is off or full, a ring-buffer record. A request
 * with no response before request_timeout_ns (a bpf_timer) or before the connection closes is
 * completed with status 0. Nothing here allocates per request except that record.
 *
 * Direction: `send` is true for bytes this process writes. On a server connection the writes
 * are responses; on a client connection (http_conn.client) they are requests.
 *
 * The including object defines nothing of this; it provides the hooks, finds the connection
 * (http_conn_create / bpf_map_lookup_elem(&conns, key)) and calls parse_io / fast_response /
 * count_only_io / http_conn_closing.
 *
 * Request timeouts: a bpf_timer per connection, unless the object defines HTTP1_SWEEP before
 * including this file. Uprobe programs may not touch a map whose values hold a bpf_timer, so
 * tls-uprobe defines it and has the agent run http1_sweep() (a SEC("syscall") program) every
 * second instead: a request then times out up to a second late.
 */
#ifndef HTTP1_ENGINE_H
#define HTTP1_ENGINE_H

#include "redprobe.bpf.h"
#include <bpf/bpf_endian.h>
#include "red_histogram.h"
#include "http1.h"

/*
 * Keeps struct http_request_event in the object's BTF (records are only reached through
 * bpf_ringbuf_reserve's void pointer otherwise): decode_test.ts checks decode.ts's offsets
 * against it. Costs one 8-byte .bss slot.
 */
struct http_request_event *http_request_event_btf_anchor;

/* A request with no response after this long is counted with status 0. */
const volatile __u64 request_timeout_ns = 30ULL * 1000 * 1000 * 1000;

/*
 * In-kernel aggregation (bpf/red_histogram.h, whose bucket bounds the agent sets);
 * aggregate_in_kernel = 0 sends every request as a record.
 */
const volatile __u8 aggregate_in_kernel = 1;

/*
 * Client connections (this process writes requests and reads responses): 0 not measured,
 * 1 of targets only, 2 of every process but the agent's own (a process that makes HTTP calls
 * need not listen anywhere: curl, a cron job).
 */
const volatile __u8 client_mode = 2;
const volatile __u32 agent_tgid = 0;
/* Whether client requests carry their peer (the server_address/server_port labels are on). */
/* Which peers are recorded (labels that are off cost nothing): */
#define PEER_SERVER 1 /* client side: server_address, server_port */
#define PEER_CLIENT 2 /* server side: client_address */
const volatile __u8 peer_labels = 0;

/* The name (comm) of each process with client connections, for labels after it exits. */
struct proc_name {
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct proc_name);
} proc_names SEC(".maps");

#define QUEUE_MASK (HTTP_QUEUE_LEN - 1)
_Static_assert((HTTP_QUEUE_LEN & QUEUE_MASK) == 0, "HTTP_QUEUE_LEN must be a power of two");

/* Bytes copied from user memory per parse window, and the per-syscall parse budget. */
#define WINDOW 256
#define WINDOW_MASK (WINDOW - 1)
#define MAX_SEGMENTS 8
/*
 * Parse steps per syscall: one window each (plus one per iovec). 256 windows read a 64 KiB head
 * in one read (Node reads 64 KiB at a time; a head of 8 KiB, the old budget, is common with
 * cookies). Only a head costs steps: a body is skipped by arithmetic in one step.
 */
#define MAX_IO_STEPS (256 + MAX_SEGMENTS)

#define CLOCK_MONOTONIC 1
#define MSG_PEEK 2
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6


enum parser_state {
	ST_IDLE = 0,       /* between messages */
	ST_METHOD,         /* request: method token */
	ST_PATH,           /* request: path, until '?' or ' ' */
	ST_QUERY,          /* request: query string, until ' ' */
	ST_REQ_PROTO,      /* request: "HTTP/1.x" then end of line */
	ST_RESP_PROTO,     /* response: "HTTP/1.x " */
	ST_STATUS,         /* response: three digits */
	ST_REASON,         /* response: reason phrase, until end of line */
	ST_HDR_LINE,       /* start of a header line (or of the empty line ending the head) */
	ST_HDR_NAME,       /* inside a header name we may care about */
	ST_HDR_SKIP,       /* rest of a header line we do not care about */
	ST_HDR_CL,         /* Content-Length value */
	ST_HDR_TE,         /* Transfer-Encoding value */
	ST_HDR_END,        /* '\r' of the empty line seen, '\n' expected */
	ST_BODY,           /* Content-Length body: skipped by arithmetic */
	ST_CHUNK_SIZE,     /* chunk-size hex digits */
	ST_CHUNK_EXT,      /* chunk extension, until end of line */
	ST_CHUNK_DATA,     /* chunk data: skipped by arithmetic */
	ST_CHUNK_DATA_END, /* CRLF after chunk data */
	ST_TRAILER_LINE,   /* start of a trailer line (or the empty line ending the body) */
	ST_TRAILER_SKIP,   /* rest of a trailer line */
	ST_TRAILER_END,    /* '\r' of the final empty line seen */
	ST_UNTIL_CLOSE,    /* response body delimited by the connection's close */
	ST_AWAIT_REQUEST,  /* response side, nothing pending: ignore writes until a request comes */
	ST_RESYNC,         /* lost track: only a syscall starting a new message resumes parsing */
	ST_DEAD,           /* not HTTP/1.x (or upgraded): stop parsing this connection */
};

/* struct h1_parser.hflags */
#define HF_HAS_CL 0x01
#define HF_CHUNKED 0x02
#define HF_NAME_CL 0x04 /* the header name being matched could be content-length */
#define HF_NAME_TE 0x08 /* ... could be transfer-encoding */

struct h1_parser {
	__u64 remaining; /* body or chunk bytes still to skip */
	__u64 number;    /* Content-Length / chunk-size accumulator */
	__u64 token;     /* request: method token bytes; response: method of the request answered */
	__u16 status;
	__u8 state;      /* enum parser_state */
	__u8 match;      /* bytes matched of a literal or header name */
	__u8 hflags;
	__u8 count;      /* method token length / status digits */
	__u8 _pad[2];
};

/* A parsed request waiting for its response. */
struct http_request {
	__u64 start_ns;
	__u64 body_size;
	__u64 path_hash; /* set when the head is complete */
	__u8 method;
	__u8 flags;
	__u8 path_len;
	__u8 _pad[5];
	char path[HTTP_PATH_MAX];
	char path_slack[8]; /* lets the parser store whole 8-byte words near the end */
};

/*
 * A connection: kprobe-http's are sockets (id: the socket cookie, unique for the life of the
 * kernel; tgid 0, since a socket can be closed where no process is current), tls-uprobe's are
 * OpenSSL connections (id: the SSL pointer, only unique within its process).
 */
struct http_conn_key {
	__u64 id;
	__u32 tgid;
	__u32 _pad;
};

struct http_conn {
#ifndef HTTP1_SWEEP
	struct bpf_timer timer; /* request timeouts */
#endif
	__u64 conn_id; /* struct http_conn_key.id */
	__u32 tgid;
	/*
	 * Requests get sequence numbers: [head, tail) wait for a response in q[seq % LEN]. head only
	 * moves by compare-and-swap, because the response path, the timer and the close path can
	 * race to complete the same request; tail is only moved by the reading thread.
	 */
	__u32 head;
	__u32 tail;
	__u32 responses;   /* final responses seen: the k-th answers request k */
	__u32 body_seq;    /* request whose (chunked) body the request parser is counting */
	__u32 timer_armed; /* 0/1, changed with atomics (see arm_timer / on_conn_timer) */
	/*
	 * Requests begun (their first byte parsed); atomic. Ahead of tail while a request's head
	 * is still being read: see response_done().
	 */
	__u32 begun;
	__u8 closed;
	__u8 client;       /* 1: this process made the requests (writes them, reads responses) */
	__u8 _pad[2];
	struct http_peer peer; /* client connections with peer labels on */
	__u64 sock;            /* tls-uprobe: cookie of the socket the connection was last seen on */
	struct h1_parser req;
	struct h1_parser resp;
	struct http_request q[HTTP_QUEUE_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct http_conn_key);
	__type(value, struct http_conn);
} conns SEC(".maps");

/*
 * All-zero bytes to insert a new http_conn from: the struct is too big for the BPF stack, and
 * a value typed struct http_conn could not be passed whole to a helper (it holds a bpf_timer).
 */
struct conn_bytes {
	__u8 bytes[sizeof(struct http_conn)];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_bytes);
} conn_template SEC(".maps");

/* Where the current syscall keeps its data. */
enum io_kind {
	IO_NONE = 0,        /* no user buffer (sendfile, splice): bytes can only be counted */
	IO_BUF = 1,         /* one buffer */
	IO_IOV = 2,         /* an iovec array */
	IO_UNSUPPORTED = 3, /* a path we cannot see into (io_uring, mmsg, ...) */
};

struct io_desc {
	__u64 ptr; /* buffer or iovec array */
	__u64 cnt; /* iovec count */
	__u32 kind;
	__u32 _pad;
};

/*
 * The scalar state of one syscall's parse. It lives in map memory, not on the stack, on
 * purpose: the verifier knows nothing about values loaded from a map, so every iteration of
 * the parse loops looks the same to it and is verified once. On the stack, the exact positions
 * of each iteration would be tracked and the loops verified once per position (seconds of
 * load time, or a program "too large").
 */
struct parse_state {
	struct io_desc io;
	__u64 now;
	__u64 seg_base; /* user address of the current segment */
	__u32 seg_len;
	__u32 seg_pos;
	__u32 seg_index;
	__u32 left;     /* bytes of the syscall not yet assigned to a segment */
	__u32 win_base; /* segment offset of the window's first byte */
	__u32 win_len;
	__u32 win_pos;
	__u8 win_valid;
	__u8 stop;      /* skip the rest of this syscall's data */
	__u8 at_start;  /* no byte of this syscall consumed yet */
	__u8 _pad;
};

/* The loops of fast_request_head(), in map memory like struct parse_state. */
struct scan {
	__u64 cl;      /* Content-Length */
	__u32 i;       /* window position */
	__u32 end;     /* window length */
	__u32 len;     /* path bytes */
	__u8 delim;    /* the byte that ended the path scan; 0: the window ended first */
	__u8 copying;  /* path scan: 1 the path (copied), 0 the query (skipped) */
	__u8 has_cl;
	__u8 at_line;  /* header scan: at the start of a line */
	__u8 result;   /* header scan: 0 scanning, 1 head complete, 2 give up */
	__u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct http_agg_key);
	__type(value, struct red_histogram);
} aggs SEC(".maps");

/* Path bytes by hash, for the agent to name the aggs keys. Never deleted (see README). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct http_path);
} paths SEC(".maps");

/* Where remember_path() builds a paths value (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct http_path);
} path_scratch SEC(".maps");

struct window {
	__u8 bytes[WINDOW + 16]; /* slack: two 8-byte loads may start anywhere in the window */
	struct parse_state st;
	struct scan scan;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct window);
} scratch SEC(".maps");

/* The loop state shared by the bpf_loop callbacks of one syscall. */
struct parse_ctx {
	struct http_conn *c;
	struct h1_parser *p;
	__u8 *buf;
	struct parse_state *s; /* these three point into the same per-CPU map value */
	struct window *w;
	__u8 send;             /* 0: request direction (read), 1: response direction (write) */
	__u8 _pad[7];
};

#define TOKEN3(a, b, c) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16)
#define TOKEN4(a, b, c, d) (TOKEN3(a, b, c) | (__u64)(d) << 24)
#define TOKEN5(a, b, c, d, e) (TOKEN4(a, b, c, d) | (__u64)(e) << 32)
#define TOKEN6(a, b, c, d, e, f) (TOKEN5(a, b, c, d, e) | (__u64)(f) << 40)
#define TOKEN7(a, b, c, d, e, f, g) (TOKEN6(a, b, c, d, e, f) | (__u64)(g) << 48)

static __always_inline __u8 method_of(__u64 token)
{
	switch (token) {
	case TOKEN3('G', 'E', 'T'): return HTTP_METHOD_GET;
	case TOKEN4('H', 'E', 'A', 'D'): return HTTP_METHOD_HEAD;
	case TOKEN4('P', 'O', 'S', 'T'): return HTTP_METHOD_POST;
	case TOKEN3('P', 'U', 'T'): return HTTP_METHOD_PUT;
	case TOKEN6('D', 'E', 'L', 'E', 'T', 'E'): return HTTP_METHOD_DELETE;
	case TOKEN7('C', 'O', 'N', 'N', 'E', 'C', 'T'): return HTTP_METHOD_CONNECT;
	case TOKEN7('O', 'P', 'T', 'I', 'O', 'N', 'S'): return HTTP_METHOD_OPTIONS;
	case TOKEN5('T', 'R', 'A', 'C', 'E'): return HTTP_METHOD_TRACE;
	case TOKEN5('P', 'A', 'T', 'C', 'H'): return HTTP_METHOD_PATCH;
	default: return HTTP_METHOD_OTHER;
	}
}

/*
 * Whether the first n (<= 8) bytes of a read can begin a request: a known method and a space,
 * or, when the read is shorter than that, a prefix of one (a client may split anything).
 * Only such reads create connection state, so other protocols cost one 8-byte read per recv.
 */
static __always_inline bool prefix_matches(__u64 head, __u32 n, __u64 method, __u32 method_len)
{
	__u32 len = method_len < n ? method_len : n;
	__u64 mask = len >= 8 ? ~0ULL : (1ULL << (len * 8)) - 1;
	return (head & mask) == (method & mask);
}

static __always_inline bool starts_request(__u64 head, __u32 n)
{
	return prefix_matches(head, n, TOKEN4('G', 'E', 'T', ' '), 4) ||
	       prefix_matches(head, n, TOKEN5('P', 'O', 'S', 'T', ' '), 5) ||
	       prefix_matches(head, n, TOKEN4('P', 'U', 'T', ' '), 4) ||
	       prefix_matches(head, n, TOKEN5('H', 'E', 'A', 'D', ' '), 5) ||
	       prefix_matches(head, n, TOKEN7('D', 'E', 'L', 'E', 'T', 'E', ' '), 7) ||
	       prefix_matches(head, n, TOKEN6('P', 'A', 'T', 'C', 'H', ' '), 6) ||
	       prefix_matches(head, n, TOKEN7('O', 'P', 'T', 'I', 'O', 'N', 'S') | (__u64)' ' << 56, 8) ||
	       prefix_matches(head, n, TOKEN7('C', 'O', 'N', 'N', 'E', 'C', 'T') | (__u64)' ' << 56, 8) ||
	       prefix_matches(head, n, TOKEN6('T', 'R', 'A', 'C', 'E', ' '), 6);
}

static __always_inline bool is_tcp(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	return (family == AF_INET || family == AF_INET6) && BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

/* The first (up to) 8 bytes the syscall transferred, for starts_request(). */
static __always_inline __u32 peek_head(struct io_desc *io, __u32 total, __u64 *head)
{
	__u64 base = io->ptr;
	__u64 len = total;
	if (io->kind == IO_IOV) {
		__u64 iov[2];
		if (io->cnt == 0 || bpf_probe_read_user(iov, sizeof(iov), (void *)io->ptr))
			return 0;
		base = iov[0];
		len = iov[1] < total ? iov[1] : total;
	} else if (io->kind != IO_BUF) {
		return 0;
	}
	if (len > 8)
		len = 8;
	*head = 0;
	if (len == 0 || bpf_probe_read_user(head, len & 15, (void *)base))
		return 0;
	return len;
}

/*
 * Completes request `seq` with `status` and emits its event. Returns false when another path
 * (timeout, close, response) completed it first: the compare-and-swap on head decides.
 */
/* Makes sure the agent can name this request's path hash. False when the paths map is full. */
static __always_inline bool remember_path(struct http_request *r)
{
	__u32 zero = 0;
	struct http_path *scratch_path = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!scratch_path)
		return false;
	scratch_path->len = r->path_len;
	__builtin_memcpy(scratch_path->path, r->path, HTTP_PATH_MAX);
	long err = bpf_map_update_elem(&paths, &r->path_hash, scratch_path, BPF_NOEXIST);
	return err == 0 || err == -17 /* EEXIST */;
}

/*
 * Completes request `seq` with `status`: adds it to its histogram, or emits its record when it
 * cannot be aggregated. Returns false when another path (timeout, close, response) completed
 * it first: the compare-and-swap on head decides. Everything read from the request's slot is
 * read before that, while the slot cannot be reused.
 */
static __always_inline bool complete_request(struct http_conn *c, __u32 seq, __u16 status,
					     __u64 end_ns, __u8 flags)
{
	struct http_request *r = &c->q[seq & QUEUE_MASK];
	__u64 duration = end_ns - r->start_ns;
	__u64 size = r->body_size;
	struct http_agg_key key = {
		.path_hash = r->path_hash,
		.tgid = c->tgid,
		.status = status,
		.method = r->method,
		.flags = (r->flags & HTTP_FLAG_PATH_TRUNCATED) | (c->client ? HTTP_FLAG_CLIENT : 0),
		.peer = c->peer,
	};
	struct red_histogram *agg = NULL;
	bool can_aggregate = aggregate_in_kernel;
	if (can_aggregate) {
		agg = bpf_map_lookup_elem(&aggs, &key);
		if (!agg)
			can_aggregate = remember_path(r);
	}
	struct http_request_event *ev = NULL;
	if (!agg) {
		/* A new key (or no aggregation): prepare the record while the slot is ours. */
		ev = redprobe_reserve(sizeof(*ev));
		if (ev) {
			ev->start_ns = r->start_ns;
			ev->end_ns = end_ns;
			ev->body_size = size;
			ev->conn_id = c->conn_id;
			ev->tgid = c->tgid;
			ev->status = status;
			ev->method = r->method;
			ev->flags = r->flags | flags | (c->client ? HTTP_FLAG_CLIENT : 0);
			ev->path_len = r->path_len;
			ev->kind = c->client ? HTTP_EVENT_CLIENT_REQUEST : HTTP_EVENT_SERVER_REQUEST;
			__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
			__builtin_memcpy(ev->path, r->path, HTTP_PATH_MAX);
			ev->peer = c->peer;
		}
	}
	if (__sync_val_compare_and_swap(&c->head, seq, seq + 1) != seq) {
		if (ev)
			bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
		return false;
	}
	if (!agg && can_aggregate)
		agg = red_histogram_insert(&aggs, &key);
	if (agg) {
		red_histogram_add(agg, duration, size);
		redprobe_count(HTTP_STAT_AGGREGATED);
		if (ev)
			bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP);
		return true;
	}
	if (aggregate_in_kernel)
		redprobe_count(HTTP_STAT_NOT_AGGREGATED);
	if (ev)
		redprobe_submit(ev);
	return true;
}

/* Completes every waiting request with status 0 (connection closing). */
/* One pass of expire_step()/flush_pending(): bpf_loop callbacks, so the verifier checks
 * complete_request() once rather than once per unrolled iteration. */
struct completion_ctx {
	struct http_conn *c;
	__u64 now;
	__u64 next;     /* expire: ns until the oldest request still waiting times out */
	__u32 stat;
	__u8 flags;
	__u8 expire;    /* 1: only requests older than the timeout */
	__u8 _pad[2];
};

static long completion_step(__u32 i, struct completion_ctx *x)
{
	struct http_conn *c = x->c;
	__u32 head = c->head;
	if (head == c->tail)
		return 1;
	if (x->expire) {
		__u64 start = c->q[head & QUEUE_MASK].start_ns;
		/*
		 * A request may have started on another CPU after `now` was read: it is the youngest
		 * there is (the unsigned difference would make it look 584 years old).
		 */
		if (start >= x->now || x->now - start < request_timeout_ns) {
			x->next = start + request_timeout_ns - x->now;
			return 1;
		}
	}
	if (complete_request(c, head, 0, x->now, x->flags))
		redprobe_count(x->stat);
	return 0;
}

/* Completes every waiting request with status 0 (connection closing). */
static __always_inline void flush_pending(struct http_conn *c, __u64 now, __u8 flags, __u32 stat)
{
	struct completion_ctx x = { .c = c, .now = now, .flags = flags, .stat = stat };
	bpf_loop(HTTP_QUEUE_LEN, completion_step, &x, 0);
}

#ifndef HTTP1_SWEEP
static int on_conn_timer(void *map, struct http_conn_key *key, struct http_conn *c)
{
	/* A client another plugin now measures: its waiting requests are that plugin's. */
	if (c->client && redprobe_is_excluded(c->tgid)) {
		c->head = c->tail;
		return 0;
	}
	struct completion_ctx x = {
		.c = c,
		.now = bpf_ktime_get_ns(),
		.flags = HTTP_FLAG_TIMEOUT,
		.stat = HTTP_STAT_TIMEOUTS,
		.expire = 1,
	};
	bpf_loop(HTTP_QUEUE_LEN, completion_step, &x, 0);
	/* Disarm first, then look again: a request queued meanwhile re-arms (see arm_timer). */
	__sync_lock_test_and_set(&c->timer_armed, 0);
	if (c->head != c->tail && __sync_val_compare_and_swap(&c->timer_armed, 0, 1) == 0)
		bpf_timer_start(&c->timer, x.next > 1000000 ? x.next : 1000000, 0);
	return 0;
}

static __always_inline void arm_timer(struct http_conn *c)
{
	if (__sync_val_compare_and_swap(&c->timer_armed, 0, 1) == 0)
		bpf_timer_start(&c->timer, request_timeout_ns, 0);
}
#else
static __always_inline void arm_timer(struct http_conn *c)
{
}

static long sweep_conn(void *map, struct http_conn_key *key, struct http_conn *c, void *unused)
{
	if (c->head == c->tail)
		return 0;
	if (c->client && redprobe_is_excluded(c->tgid)) {
		c->head = c->tail;
		return 0;
	}
	struct completion_ctx x = {
		.c = c,
		.now = bpf_ktime_get_ns(), /* per connection: the sweep takes a while */
		.flags = HTTP_FLAG_TIMEOUT,
		.stat = HTTP_STAT_TIMEOUTS,
		.expire = 1,
	};
	bpf_loop(HTTP_QUEUE_LEN, completion_step, &x, 0);
	return 0;
}

/* Completes every request older than request_timeout_ns with status 0 (see HTTP1_SWEEP). */
static __always_inline void http1_sweep(void)
{
	bpf_for_each_map_elem(&conns, sweep_conn, NULL, 0);
}
#endif

/* The request parser met the first byte of a request. */
static __always_inline void begin_request(struct parse_ctx *x)
{
	struct http_conn *c = x->c;
	if (c->tail - c->head >= HTTP_QUEUE_LEN) {
		if (complete_request(c, c->head, 0, x->s->now, HTTP_FLAG_EVICTED))
			redprobe_count(HTTP_STAT_QUEUE_EVICTED);
	}
	struct http_request *r = &c->q[c->tail & QUEUE_MASK];
	r->start_ns = x->s->now;
	r->body_size = 0;
	r->method = 0;
	r->flags = 0;
	r->path_len = 0;
	/* Atomic (a full barrier): see response_done(). */
	__sync_fetch_and_add(&c->begun, 1);
	/* The previous response is over once the client sends a new request. */
	if (c->resp.state == ST_AWAIT_REQUEST)
		c->resp.state = ST_IDLE;
}

/*
 * The response direction's state once a response is over: ST_AWAIT_REQUEST (ignore writes
 * until a request comes) when no request is waiting, else ST_IDLE. A request counts as
 * waiting from its first byte, not only once its head is published: in a multithreaded server
 * (Go) the client can have this response, send its next request, and that request's first
 * read can be parsed on another CPU, all before this write's probe runs. Without this, the
 * next response would be ignored and every later one paired with the wrong request. The
 * atomic read pairs with the atomic increment in begin_request() (each side writes, then
 * reads the other's), so one of the two always sees the other.
 */
static __always_inline void response_done(struct http_conn *c, struct h1_parser *p)
{
	p->state = ST_AWAIT_REQUEST;
	if (c->head != c->tail || __sync_fetch_and_add(&c->begun, 0) != c->tail)
		p->state = ST_IDLE;
}

/* The key the agent resolves through the paths map (see red_path_hash()). */
static __always_inline __u64 path_hash(struct http_request *r)
{
	return red_path_hash(r->path, r->path_len, HTTP_PATH_MAX);
}

/* The request head is complete: publish the request to the response side. */
static __always_inline void publish_request(struct parse_ctx *x, struct h1_parser *p)
{
	struct http_conn *c = x->c;
	__u32 seq = c->tail;
	struct http_request *r = &c->q[seq & QUEUE_MASK];
	r->method = method_of(p->token);
	r->body_size = (p->hflags & HF_HAS_CL) ? p->number : 0;
	r->path_hash = path_hash(r);
	c->body_seq = seq;
	asm volatile("" ::: "memory"); /* the slot is written before it becomes visible */
	c->tail = seq + 1;
	arm_timer(c);
}

/* A final response's status line was written: pair it with its request. */
static __always_inline void pair_response(struct parse_ctx *x, struct h1_parser *p)
{
	struct http_conn *c = x->c;
	__u32 seq = c->responses;
	p->token = HTTP_METHOD_OTHER;
	if (seq < c->head) {
		/* Its request already timed out (or was evicted) and was counted then. */
		c->responses = seq + 1;
		redprobe_count(HTTP_STAT_LATE_RESPONSE);
	} else if (seq >= c->tail) {
		redprobe_count(HTTP_STAT_UNMATCHED_RESPONSE);
	} else {
		p->token = c->q[seq & QUEUE_MASK].method;
		c->responses = seq + 1;
		complete_request(c, seq, p->status, x->s->now, 0);
	}
}

static __always_inline __u8 lower(__u8 ch)
{
	return (ch >= 'A' && ch <= 'Z') ? ch | 0x20 : ch;
}

static __always_inline bool is_token_char(__u8 ch)
{
	return ch > 0x20 && ch < 0x7f;
}

/*
 * Literals the parser matches byte by byte, packed little-endian into u64 words (string tables
 * in .rodata trip clang 14's BTF for static arrays, and registers are cheaper anyway).
 */
#define LIT8(a, b, c, d, e, f, g, h) (TOKEN7(a, b, c, d, e, f, g) | (__u64)(h) << 56)
#define CONTENT_LENGTH_LEN 14 /* "content-length" */
#define TRANSFER_ENCODING_LEN 17 /* "transfer-encoding" */
#define CHUNKED_LEN 7 /* "chunked" */
#define HTTP1_LEN 7 /* "HTTP/1." */

static __always_inline __u8 literal_byte(__u64 w0, __u64 w1, __u64 w2, __u32 i)
{
	__u64 w = i < 8 ? w0 : i < 16 ? w1 : w2;
	return (w >> ((i & 7) * 8)) & 0xff;
}

static __always_inline __u8 content_length_at(__u32 i)
{
	return literal_byte(LIT8('c', 'o', 'n', 't', 'e', 'n', 't', '-'),
			    TOKEN6('l', 'e', 'n', 'g', 't', 'h'), 0, i);
}

static __always_inline __u8 transfer_encoding_at(__u32 i)
{
	return literal_byte(LIT8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r'),
			    LIT8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n'), 'g', i);
}

static __always_inline __u8 chunked_at(__u32 i)
{
	return literal_byte(TOKEN7('c', 'h', 'u', 'n', 'k', 'e', 'd'), 0, 0, i);
}

static __always_inline __u8 http1_at(__u32 i)
{
	return literal_byte(TOKEN7('H', 'T', 'T', 'P', '/', '1', '.'), 0, 0, i);
}

/* The head (start line + headers) of a message ended; decide how its body is framed. */
static __always_inline void end_of_head(struct parse_ctx *x, struct h1_parser *p)
{
	struct http_conn *c = x->c;
	if (!x->send) {
		publish_request(x, p);
	} else {
		__u16 status = p->status;
		if (status == 101 || (p->token == HTTP_METHOD_CONNECT && status >= 200 && status < 300)) {
			/* The connection now carries another protocol. */
			c->req.state = ST_DEAD;
			p->state = ST_DEAD;
			return;
		}
		if (status < 200) { /* interim (100 Continue, 103 Early Hints): no body */
			p->state = ST_IDLE;
			return;
		}
		if (p->token == HTTP_METHOD_HEAD || status == 204 || status == 304) {
			response_done(c, p);
			return;
		}
	}
	if (p->hflags & HF_CHUNKED) {
		p->state = ST_CHUNK_SIZE;
		p->number = 0;
	} else if (p->hflags & HF_HAS_CL) {
		p->remaining = p->number;
		p->state = p->number ? ST_BODY : ST_IDLE;
	} else {
		p->state = x->send ? ST_UNTIL_CLOSE : ST_IDLE;
	}
}

/* A message (head and body) ended. */
static __always_inline void end_of_message(struct parse_ctx *x, struct h1_parser *p)
{
	if (x->send)
		response_done(x->c, p);
	else
		p->state = ST_IDLE;
}

/* The parser cannot follow this stream any more. */
static __always_inline void lose_track(struct parse_ctx *x, struct h1_parser *p)
{
	p->state = ST_DEAD;
	x->s->stop = 1;
	redprobe_count(HTTP_STAT_CONN_NOT_HTTP);
}

/* One byte of a message head or of a chunked body's framing. */
static __always_inline void feed(struct parse_ctx *x, struct h1_parser *p, __u8 ch)
{
	__u8 l = lower(ch);
	switch (p->state) {
	case ST_IDLE:
	case ST_RESYNC:
		if (ch == '\r' || ch == '\n')
			return; /* empty lines between messages are allowed */
		if (x->send) {
			if (ch != 'H') {
				/* Not a status line: data we cannot frame. Resume at the next write. */
				if (x->c->head != x->c->tail)
					redprobe_count(HTTP_STAT_RESPONSE_RESYNC);
				x->s->stop = 1;
				return;
			}
			p->state = ST_RESP_PROTO;
			p->match = 1;
			p->status = 0;
			p->count = 0;
			p->hflags = 0;
			p->number = 0;
			return;
		}
		if (ch < 'A' || ch > 'Z') {
			if (p->state == ST_RESYNC) {
				x->s->stop = 1;
				return;
			}
			lose_track(x, p);
			return;
		}
		begin_request(x);
		p->state = ST_METHOD;
		p->token = ch;
		p->count = 1;
		p->hflags = 0;
		p->number = 0;
		return;
	case ST_METHOD:
		if (ch == ' ') {
			p->state = ST_PATH;
			return;
		}
		if (ch < 'A' || ch > 'Z' || p->count >= 16) {
			lose_track(x, p);
			return;
		}
		if (p->count < 8)
			p->token |= (__u64)ch << (p->count * 8);
		else
			p->token = ~0ULL; /* too long for a known method */
		p->count++;
		return;
	case ST_PATH: {
		if (ch == ' ') {
			p->state = ST_REQ_PROTO;
			p->match = 0;
			return;
		}
		if (ch == '?') {
			p->state = ST_QUERY;
			return;
		}
		if (!is_token_char(ch)) {
			lose_track(x, p);
			return;
		}
		struct http_request *r = &x->c->q[x->c->tail & QUEUE_MASK];
		__u32 len = r->path_len;
		if (len < HTTP_PATH_MAX) {
			r->path[len] = ch;
			r->path_len = len + 1;
		} else if (!(r->flags & HTTP_FLAG_PATH_TRUNCATED)) {
			r->flags |= HTTP_FLAG_PATH_TRUNCATED;
			redprobe_count(HTTP_STAT_PATH_TRUNCATED);
		}
		return;
	}
	case ST_QUERY:
		if (ch == ' ') {
			p->state = ST_REQ_PROTO;
			p->match = 0;
		} else if (!is_token_char(ch)) {
			lose_track(x, p);
		}
		return;
	case ST_REQ_PROTO:
		if (p->match < HTTP1_LEN) {
			if (ch != http1_at(p->match)) {
				lose_track(x, p);
				return;
			}
			p->match++;
		} else if (p->match == 7) {
			if (ch < '0' || ch > '9') {
				lose_track(x, p);
				return;
			}
			p->match++;
		} else if (ch == '\n') {
			p->state = ST_HDR_LINE;
		} else if (ch != '\r') {
			lose_track(x, p);
		}
		return;
	case ST_RESP_PROTO:
		if (p->match < HTTP1_LEN) {
			if (ch != http1_at(p->match)) {
				/* Looked like a status line but is not: resume at the next write. */
				p->state = ST_IDLE;
				x->s->stop = 1;
				return;
			}
		} else if (p->match == 7) {
			if (ch < '0' || ch > '9') {
				p->state = ST_IDLE;
				x->s->stop = 1;
				return;
			}
		} else {
			if (ch != ' ') {
				p->state = ST_IDLE;
				x->s->stop = 1;
				return;
			}
			p->state = ST_STATUS;
			return;
		}
		p->match++;
		return;
	case ST_STATUS:
		if (p->count < 3) {
			if (ch < '0' || ch > '9') {
				p->state = ST_IDLE;
				x->s->stop = 1;
				return;
			}
			p->status = p->status * 10 + (ch - '0');
			p->count++;
			return;
		}
		if (ch != ' ' && ch != '\r' && ch != '\n') {
			p->state = ST_IDLE;
			x->s->stop = 1;
			return;
		}
		if (p->status >= 200 || p->status == 101)
			pair_response(x, p);
		p->state = ch == '\n' ? ST_HDR_LINE : ST_REASON;
		/*
		 * Nothing else waits for a response: the rest of this response need not be framed,
		 * which saves parsing its headers (the common, non-pipelined case).
		 */
		if (p->status >= 200 && p->status != 101 && p->token != HTTP_METHOD_CONNECT &&
		    x->c->head == x->c->tail) {
			p->state = ST_AWAIT_REQUEST;
			x->s->stop = 1;
		}
		return;
	case ST_REASON:
	case ST_HDR_SKIP:
		if (ch == '\n')
			p->state = ST_HDR_LINE;
		return;
	case ST_HDR_LINE:
		if (ch == '\r') {
			p->state = ST_HDR_END;
		} else if (ch == '\n') {
			end_of_head(x, p);
		} else if (l == 'c' || l == 't') {
			p->state = ST_HDR_NAME;
			p->hflags = (p->hflags & (HF_HAS_CL | HF_CHUNKED)) | (l == 'c' ? HF_NAME_CL : HF_NAME_TE);
			p->match = 1;
		} else {
			p->state = ST_HDR_SKIP;
		}
		return;
	case ST_HDR_NAME: {
		bool cl = p->hflags & HF_NAME_CL;
		__u8 want_len = cl ? CONTENT_LENGTH_LEN : TRANSFER_ENCODING_LEN;
		if (ch == ':') {
			if (p->match != want_len) {
				p->state = ST_HDR_SKIP;
			} else if (cl) {
				p->state = ST_HDR_CL;
				p->number = 0;
				p->hflags &= ~HF_HAS_CL;
				p->count = 0;
			} else {
				p->state = ST_HDR_TE;
				p->match = 0;
			}
			return;
		}
		__u8 want = p->match >= want_len ? 0 :
			    cl ? content_length_at(p->match) : transfer_encoding_at(p->match);
		if (l != want) {
			p->state = ch == '\n' ? ST_HDR_LINE : ST_HDR_SKIP;
			return;
		}
		p->match++;
		return;
	}
	case ST_HDR_CL:
		if (ch >= '0' && ch <= '9') {
			if (p->number > (1ULL << 50)) {
				lose_track(x, p);
				return;
			}
			p->number = p->number * 10 + (ch - '0');
			p->count++;
		} else if (ch == '\n') {
			if (p->count)
				p->hflags |= HF_HAS_CL;
			p->state = ST_HDR_LINE;
		} else if (ch != ' ' && ch != '\t' && ch != '\r') {
			lose_track(x, p);
		}
		return;
	case ST_HDR_TE:
		if (ch == '\n') {
			if (p->match == CHUNKED_LEN)
				p->hflags |= HF_CHUNKED;
			else
				p->hflags &= ~HF_CHUNKED;
			p->state = ST_HDR_LINE;
		} else if (ch == ' ' || ch == '\t' || ch == '\r') {
			/* whitespace ends a token without resetting a complete "chunked" */
		} else if (p->match < CHUNKED_LEN && l == chunked_at(p->match)) {
			p->match++;
		} else {
			p->match = l == 'c' ? 1 : 0;
		}
		return;
	case ST_HDR_END:
		if (ch != '\n') {
			lose_track(x, p);
			return;
		}
		end_of_head(x, p);
		return;
	case ST_CHUNK_SIZE: {
		__u8 v;
		if (ch >= '0' && ch <= '9')
			v = ch - '0';
		else if (l >= 'a' && l <= 'f')
			v = l - 'a' + 10;
		else if (ch == ';' || ch == ' ' || ch == '\t') {
			p->state = ST_CHUNK_EXT;
			return;
		} else if (ch == '\r') {
			return;
		} else if (ch == '\n') {
			goto chunk_size_done;
		} else {
			lose_track(x, p);
			return;
		}
		if (p->number > (1ULL << 50)) {
			lose_track(x, p);
			return;
		}
		p->number = p->number * 16 + v;
		return;
	}
	case ST_CHUNK_EXT:
		if (ch == '\n')
			goto chunk_size_done;
		return;
	case ST_CHUNK_DATA_END:
		if (ch == '\n') {
			p->state = ST_CHUNK_SIZE;
			p->number = 0;
		}
		return;
	case ST_TRAILER_LINE:
		if (ch == '\r')
			p->state = ST_TRAILER_END;
		else if (ch == '\n')
			end_of_message(x, p);
		else
			p->state = ST_TRAILER_SKIP;
		return;
	case ST_TRAILER_SKIP:
		if (ch == '\n')
			p->state = ST_TRAILER_LINE;
		return;
	case ST_TRAILER_END:
		if (ch != '\n') {
			lose_track(x, p);
			return;
		}
		end_of_message(x, p);
		return;
	default:
		x->s->stop = 1;
		return;
	}

chunk_size_done:
	if (p->number == 0) {
		p->state = ST_TRAILER_LINE;
		return;
	}
	if (!x->send) {
		struct http_conn *c = x->c;
		__u32 seq = c->body_seq;
		if (seq >= c->head && seq < c->tail)
			c->q[seq & QUEUE_MASK].body_size += p->number;
	}
	p->remaining = p->number;
	p->state = ST_CHUNK_DATA;
}

/* Skips up to `avail` bytes of body by arithmetic; returns how many it consumed. */
static __always_inline __u32 skip_body(struct parse_ctx *x, struct h1_parser *p, __u32 avail)
{
	__u32 n = p->remaining < avail ? p->remaining : avail;
	p->remaining -= n;
	if (p->remaining == 0) {
		if (p->state == ST_BODY)
			end_of_message(x, p);
		else
			p->state = ST_CHUNK_DATA_END;
	}
	return n;
}

static __always_inline bool in_body(struct h1_parser *p)
{
	return p->state == ST_BODY || p->state == ST_CHUNK_DATA;
}

/* States where the rest of the data is ignored without looking at it. */
static __always_inline bool ignores_data(struct h1_parser *p)
{
	return p->state == ST_DEAD || p->state == ST_UNTIL_CLOSE || p->state == ST_AWAIT_REQUEST;
}

/*
 * Word-at-a-time helpers. Parsing one byte per step costs ~15 ns a byte, too much for a budget
 * of well under a microsecond per request; most bytes of a message head are skipped (header
 * lines we do not care about) or copied (the path), which these do 8 bytes per step.
 */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
#define LOWER_MASK 0x2020202020202020ULL

/* High bit set in every byte of w equal to b (exact for the lowest such byte). */
static __always_inline __u64 bytes_equal(__u64 w, __u8 b)
{
	__u64 x = w ^ (ONES * b);
	return (x - ONES) & ~x & HIGHS;
}

/* High bit set in every byte of w below n (n <= 128; exact for the lowest such byte). */
static __always_inline __u64 bytes_below(__u64 w, __u8 n)
{
	return (w - ONES * n) & ~w & HIGHS;
}

/*
 * Index of the lowest byte whose high bit is set in m (m != 0). Branch-free on purpose: the
 * isolated bit is 256^k << 7, and multiplying 256^k by 0x0001020304050607 brings byte 7-k,
 * which holds k, to the top. Branches would give the verifier 8 exact values to follow.
 */
static __always_inline __u32 lowest_byte(__u64 m)
{
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

/* Bytes to skip before the first match in m among the `valid` bytes (or all of them). */
static __always_inline __u32 skip_before(__u64 m, __u32 valid)
{
	if (valid < 8)
		m &= (1ULL << (valid * 8)) - 1;
	if (!m)
		return valid;
	return lowest_byte(m);
}

/* High bit set in every byte of w above n (n < 128; exact for the lowest such byte). */
static __always_inline __u64 bytes_above(__u64 w, __u8 n)
{
	return ((w + ONES * (127 - n)) | w) & HIGHS;
}

/*
 * The value of the first `digits` (1-8) ASCII digits of w (first digit in the lowest byte),
 * without a loop: right-align them behind '0' padding, then the classic SWAR reduction
 * (pairs, then quads, then the 8-digit number) in three multiplications.
 */
static __always_inline __u64 eight_digits(__u64 w, __u32 digits)
{
	__u32 shift = (8 - digits) * 8;
	__u64 kept = digits >= 8 ? w : w & ((1ULL << (digits * 8)) - 1);
	__u64 val = (kept << shift) | (0x3030303030303030ULL & ((1ULL << shift) - 1));
	val -= 0x3030303030303030ULL;
	val = (val * 10) + (val >> 8);
	val = (((val & 0x000000FF000000FFULL) * (100 + (1000000ULL << 32))) +
	       (((val >> 16) & 0x000000FF000000FFULL) * (1 + (10000ULL << 32)))) >> 32;
	return val;
}

static __always_inline __u64 load_word(struct parse_ctx *x, __u32 pos)
{
	return *(__u64 *)(x->buf + (pos & WINDOW_MASK));
}

/*
 * The fast path of one step: consumes several bytes when the current state allows it and
 * returns how many (0: let feed() take one byte). It never handles a delimiter itself, so
 * feed() stays the one place where states change on delimiters.
 */
static __always_inline __u32 fast_step(struct parse_ctx *x, struct h1_parser *p, __u32 pos, __u32 avail)
{
	__u64 w = load_word(x, pos);
	__u32 valid = avail < 8 ? avail : 8;
	switch (p->state) {
	case ST_REASON:
	case ST_HDR_SKIP:
	case ST_CHUNK_EXT:
	case ST_TRAILER_SKIP:
	case ST_CHUNK_DATA_END: {
		/* up to 32 bytes per step: header lines are mostly skipped */
		__u32 k = skip_before(bytes_equal(w, '\n'), valid);
		for (int i = 1; i < 4 && k == i * 8 && avail > k; i++) {
			__u32 rest = avail - k;
			k += skip_before(bytes_equal(load_word(x, pos + k), '\n'), rest < 8 ? rest : 8);
		}
		return k;
	}
	case ST_QUERY:
		return skip_before(bytes_below(w, 0x21), valid);
	case ST_PATH: {
		__u32 k = skip_before(bytes_below(w, 0x21) | bytes_equal(w, '?'), valid);
		struct http_request *r = &x->c->q[x->c->tail & QUEUE_MASK];
		__u32 len = r->path_len;
		if (k == 0 || len >= HTTP_PATH_MAX)
			return 0; /* feed() flags the truncation */
		*(__u64 *)(r->path + (len & 127)) = w; /* path_slack absorbs the overhang */
		len += k;
		if (len > HTTP_PATH_MAX) {
			len = HTTP_PATH_MAX;
			r->flags |= HTTP_FLAG_PATH_TRUNCATED;
			redprobe_count(HTTP_STAT_PATH_TRUNCATED);
		}
		r->path_len = len;
		return k;
	}
	case ST_REQ_PROTO:
		/* "HTTP/1.x" in one compare */
		if (p->match == 0 && avail >= 8 &&
		    (w & 0x00ffffffffffffffULL) == TOKEN7('H', 'T', 'T', 'P', '/', '1', '.') &&
		    (w >> 56) >= '0' && (w >> 56) <= '9') {
			p->match = 8;
			return 8;
		}
		return 0;
	case ST_IDLE:
	case ST_RESYNC:
		if (!x->send) {
			/* "GET " / "POST " ...: a known method and its space */
			__u32 k = skip_before(bytes_equal(w, ' '), valid);
			if (k < 3 || k > 7)
				return 0;
			__u64 token = w & ((1ULL << (k * 8)) - 1);
			if (method_of(token) == HTTP_METHOD_OTHER)
				return 0;
			begin_request(x);
			p->token = token;
			p->count = k;
			p->hflags = 0;
			p->number = 0;
			p->state = ST_PATH;
			return k + 1;
		}
		/* "HTTP/1.x NNN": leave the byte after the status to feed() (ST_STATUS, 3 digits) */
		if (avail >= 13 && (w & 0x00ffffffffffffffULL) == TOKEN7('H', 'T', 'T', 'P', '/', '1', '.')) {
			__u64 w2 = load_word(x, pos + 8);
			__u8 d0 = w2 >> 8, d1 = w2 >> 16, d2 = w2 >> 24;
			if ((w2 & 0xff) == ' ' && d0 >= '0' && d0 <= '9' && d1 >= '0' && d1 <= '9' &&
			    d2 >= '0' && d2 <= '9') {
				p->state = ST_STATUS;
				p->status = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
				p->count = 3;
				p->hflags = 0;
				p->number = 0;
				return 12;
			}
		}
		return 0;
	case ST_HDR_LINE: {
		__u8 first = w & 0xff;
		if (first == '\r' || first == '\n' || avail < 16)
			return 0;
		if ((first | 0x20) == 'c') {
			__u64 w2 = load_word(x, pos + 8) | LOWER_MASK;
			if ((w | LOWER_MASK) == LIT8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
			    (w2 & 0x00ffffffffffffffULL) == TOKEN7('l', 'e', 'n', 'g', 't', 'h', ':')) {
				p->state = ST_HDR_CL;
				p->number = 0;
				p->count = 0;
				p->hflags &= ~HF_HAS_CL;
				return 15;
			}
		}
		if ((first | 0x20) == 't')
			return 0; /* transfer-encoding: matched byte by byte (rare) */
		p->state = ST_HDR_SKIP;
		return 1;
	}
	default:
		return 0;
	}
}

/*
 * The common case, in one pass: a whole request head inside the window (a client writes its
 * head at once and the server reads it at once). Straight-line code and two small loops (path,
 * header lines) instead of a trip through the general state machine per few bytes: the
 * difference is most of the probe's cost per request. Returns the bytes consumed, or 0 when
 * the head is not complete in the window or has anything unusual (split lines,
 * Transfer-Encoding, odd bytes); feed() then parses it from the same position, since nothing
 * here is kept until the head is known complete. The loops' state is in map memory (struct
 * scan) for the reason given at struct parse_state.
 */
struct scan_ctx {
	struct parse_ctx *x;
	struct http_request *r;
	struct scan *sc;
};

/* One header line per call: skipped 8 bytes at a time, except Content-Length. */
static long scan_header_line(__u32 n, struct scan_ctx *cx)
{
	struct scan *h = cx->sc;
	__u32 i = h->i, end = h->end;
	if (i >= end || end > WINDOW) {
		h->result = 2;
		return 1;
	}
	__u32 avail = end - i;
	__u64 w = load_word(cx->x, i);
	if (!h->at_line) {
		__u32 k = skip_before(bytes_equal(w, '\n'), avail < 8 ? avail : 8);
		if (k < 8 && k < avail) {
			h->i = i + k + 1;
			h->at_line = 1;
		} else {
			h->i = i + k;
		}
		return 0;
	}
	__u8 first = w & 0xff;
	if (first == '\n' || (first == '\r' && avail >= 2 && ((w >> 8) & 0xff) == '\n')) {
		h->i = i + (first == '\n' ? 1 : 2);
		h->result = 1;
		return 1;
	}
	if (avail < 24 || first == '\r') {
		h->result = 2;
		return 1;
	}
	__u8 l = first | 0x20;
	if (l == 't' && (w | LOWER_MASK) == LIT8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r')) {
		h->result = 2; /* chunked bodies take the general path */
		return 1;
	}
	if (l == 'c' && (w | LOWER_MASK) == LIT8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    ((load_word(cx->x, i + 8) | LOWER_MASK) & 0x00ffffffffffffffULL) ==
		    TOKEN7('l', 'e', 'n', 'g', 't', 'h', ':')) {
		/* the value: one optional blank, then 1-7 digits (larger values: feed()) */
		__u32 at = i + 15;
		__u64 v = load_word(cx->x, at);
		if ((v & 0xff) == ' ') {
			at++;
			v = load_word(cx->x, at);
		}
		__u32 digits = skip_before(bytes_below(v, '0') | bytes_above(v, '9'), 8);
		if (digits == 0 || digits == 8 || h->has_cl || at + digits > end) {
			h->result = 2; /* odd, huge or repeated Content-Length */
			return 1;
		}
		h->cl = eight_digits(v, digits);
		h->has_cl = 1;
		h->i = at + digits;
		h->at_line = 0; /* the rest of the line (CR LF) is skipped */
		return 0;
	}
	h->at_line = 0;
	return 0;
}

/* 8 bytes of path (copied) or query (skipped) per call, up to a blank, a control byte or '?'. */
static long scan_path(__u32 n, struct scan_ctx *cx)
{
	struct scan *sc = cx->sc;
	__u32 i = sc->i, end = sc->end;
	if (i >= end || end > WINDOW)
		return 1;
	__u32 avail = end - i;
	__u64 w = load_word(cx->x, i);
	__u64 stops = bytes_below(w, 0x21) | (sc->copying ? bytes_equal(w, '?') : 0);
	__u32 d = skip_before(stops, avail < 8 ? avail : 8);
	if (sc->copying) {
		__u32 len = sc->len;
		if (len < HTTP_PATH_MAX)
			*(__u64 *)(cx->r->path + len) = w; /* path_slack absorbs the overhang */
		sc->len = len + d;
	}
	sc->i = i + d;
	if (d < 8 && d < avail) {
		sc->delim = (w >> (d * 8)) & 0xff;
		return 1;
	}
	return 0;
}

static __always_inline __u32 fast_request_head(struct parse_ctx *x, struct h1_parser *p)
{
	struct scan *sc = &x->w->scan;
	__u32 end = x->s->win_len;
	if (end > WINDOW || end < 16)
		return 0;
	__u64 w = load_word(x, 0);
	__u32 k = skip_before(bytes_equal(w, ' '), 8);
	if (k < 3 || k > 7)
		return 0;
	__u64 token = w & ((1ULL << (k * 8)) - 1);
	if (method_of(token) == HTTP_METHOD_OTHER)
		return 0;

	/* the path, 8 bytes at a time, into the queue slot; then the query string is skipped */
	struct http_conn *c = x->c;
	if (c->tail - c->head >= HTTP_QUEUE_LEN)
		return 0; /* eviction is feed()'s business */
	struct scan_ctx cx = { .x = x, .r = &c->q[c->tail & QUEUE_MASK], .sc = sc };
	__builtin_memset(sc, 0, sizeof(*sc));
	sc->i = k + 1;
	sc->end = end;
	sc->copying = 1;
	bpf_loop(WINDOW / 8 + 1, scan_path, &cx, 0);
	if (sc->delim == '?') {
		sc->copying = 0;
		sc->delim = 0;
		bpf_loop(WINDOW / 8 + 1, scan_path, &cx, 0);
	}
	__u32 i = sc->i, len = sc->len;
	if (sc->delim != ' ' || len == 0 || i > WINDOW || i + 10 > end)
		return 0;
	/* " HTTP/1.x" then CR LF or LF */
	w = load_word(x, i + 1);
	if ((w & 0x00ffffffffffffffULL) != TOKEN7('H', 'T', 'T', 'P', '/', '1', '.') ||
	    (w >> 56) < '0' || (w >> 56) > '9')
		return 0;
	i += 9;
	__u8 b = x->buf[i & WINDOW_MASK];
	if (b == '\r')
		b = x->buf[++i & WINDOW_MASK];
	if (b != '\n')
		return 0;

	sc->i = i + 1;
	sc->at_line = 1;
	bpf_loop(WINDOW, scan_header_line, &cx, 0);
	if (sc->result != 1 || sc->i > end)
		return 0;

	/* A complete head: now it counts. */
	__u8 flags = 0;
	if (len > HTTP_PATH_MAX) {
		len = HTTP_PATH_MAX;
		flags = HTTP_FLAG_PATH_TRUNCATED;
		redprobe_count(HTTP_STAT_PATH_TRUNCATED);
	}
	begin_request(x);
	cx.r->path_len = len;
	cx.r->flags = flags;
	p->token = token;
	p->number = sc->cl;
	p->hflags = sc->has_cl ? HF_HAS_CL : 0;
	end_of_head(x, p);
	return sc->i;
}

static long byte_step(__u32 i, struct parse_ctx *x)
{
	struct h1_parser *p = x->p;
	__u32 pos = x->s->win_pos;
	if (pos >= x->s->win_len || pos >= WINDOW || x->s->stop)
		return 1;
	__u32 avail = x->s->win_len - pos;
	if (in_body(p)) {
		x->s->win_pos = pos + skip_body(x, p, avail);
		return 0;
	}
	if (ignores_data(p)) {
		x->s->stop = 1;
		return 1;
	}
	if (p->state == ST_RESYNC && !x->s->at_start) {
		x->s->stop = 1;
		return 1;
	}
	__u32 used = fast_step(x, p, pos, avail);
	if (used) {
		x->s->win_pos = pos + used;
	} else {
		x->s->win_pos = pos + 1;
		feed(x, p, x->buf[pos & WINDOW_MASK]);
	}
	x->s->at_start = 0;
	return 0;
}

/* One step over the syscall's data: next segment, a body skip, or one parse window. */
static long io_step(__u32 i, struct parse_ctx *x)
{
	struct h1_parser *p = x->p;
	if (x->s->stop)
		return 1;
	if (x->s->seg_pos >= x->s->seg_len) {
		/* Move to the next iovec. */
		if (x->s->left == 0 || x->s->io.kind != IO_IOV || x->s->seg_index >= x->s->io.cnt ||
		    x->s->seg_index >= MAX_SEGMENTS)
			return 1;
		__u64 iov[2];
		if (bpf_probe_read_user(iov, sizeof(iov), (void *)(x->s->io.ptr + x->s->seg_index * 16)))
			return 1;
		x->s->seg_index++;
		x->s->seg_base = iov[0];
		x->s->seg_len = iov[1] < x->s->left ? iov[1] : x->s->left;
		x->s->seg_pos = 0;
		x->s->left -= x->s->seg_len;
		x->s->win_valid = 0;
		return 0;
	}
	__u32 avail = x->s->seg_len - x->s->seg_pos;
	if (in_body(p)) {
		x->s->seg_pos += skip_body(x, p, avail);
		return 0;
	}
	if (ignores_data(p))
		return 1;
	if (p->state == ST_RESYNC && !x->s->at_start)
		return 1;
	__u32 off = x->s->seg_pos - x->s->win_base;
	if (!x->s->win_valid || x->s->seg_pos < x->s->win_base || off >= x->s->win_len) {
		__u32 len = avail < WINDOW ? avail : WINDOW;
		/*
		 * A write that starts a response usually needs only its status line (nothing else
		 * waits for a response): copy 16 bytes, not the whole head; more windows follow if
		 * needed.
		 */
		if (x->send && x->s->at_start && p->state == ST_IDLE && len > 16)
			len = 16;
		if (bpf_probe_read_user(x->buf, len & (2 * WINDOW - 1), (void *)(x->s->seg_base + x->s->seg_pos))) {
			x->s->stop = 1;
			return 1;
		}
		x->s->win_base = x->s->seg_pos;
		x->s->win_len = len;
		x->s->win_valid = 1;
		off = 0;
	}
	x->s->win_pos = off;
	bpf_loop(WINDOW, byte_step, x, 0);
	x->s->seg_pos = x->s->win_base + x->s->win_pos;
	return 0;
}

/*
 * At the start of a read, the fast path for a whole request head in the first window. Called
 * from parse_io() itself, not from the io_step() loop: the verifier then checks its loops once.
 */
static __always_inline void try_fast_request_head(struct parse_ctx *x)
{
	if (x->s->io.kind == IO_IOV) {
		__u64 iov[2];
		if (x->s->io.cnt == 0 || bpf_probe_read_user(iov, sizeof(iov), (void *)x->s->io.ptr))
			return;
		x->s->seg_index = 1;
		x->s->seg_base = iov[0];
		x->s->seg_len = iov[1] < x->s->left ? iov[1] : x->s->left;
		x->s->left -= x->s->seg_len;
	}
	__u32 len = x->s->seg_len < WINDOW ? x->s->seg_len : WINDOW;
	if (len < 16 || bpf_probe_read_user(x->buf, len & (2 * WINDOW - 1), (void *)x->s->seg_base))
		return;
	x->s->win_base = 0;
	x->s->win_len = len;
	x->s->win_valid = 1;
	__u32 n = fast_request_head(x, x->p);
	if (n) {
		x->s->seg_pos = n;
		x->s->at_start = 0;
	}
}

/* Runs the parser of one direction over `total` bytes the current syscall moved. */
static __always_inline void parse_io(struct http_conn *c, struct io_desc *io, __u32 total, bool send)
{
	__u32 zero = 0;
	struct window *w = bpf_map_lookup_elem(&scratch, &zero);
	if (!w)
		return;
	struct parse_ctx x = {
		.c = c,
		.p = send ? &c->resp : &c->req,
		.buf = w->bytes,
		.s = &w->st,
		.w = w,
		.send = send,
	};
	__builtin_memset(&w->st, 0, sizeof(w->st));
	w->st.io = *io;
	w->st.now = bpf_ktime_get_ns();
	w->st.at_start = 1;
	if (io->kind == IO_BUF) {
		x.s->seg_base = io->ptr;
		x.s->seg_len = total;
	} else {
		x.s->left = total;
	}
	if (!send && x.p->state == ST_IDLE)
		try_fast_request_head(&x);
	bpf_loop(MAX_IO_STEPS, io_step, &x, 0);
	/* Data left over after the budget: skip it if it is body, else we lost the framing. */
	__u32 rest = x.s->left + (x.s->seg_len - x.s->seg_pos);
	if (!x.s->stop && rest > 0) {
		struct h1_parser *p = x.p;
		if (in_body(p) && p->remaining >= rest) {
			skip_body(&x, p, rest);
		} else if (!ignores_data(p)) {
			redprobe_count(HTTP_STAT_PARSE_LIMIT);
			p->state = ST_RESYNC;
		}
	}
}

/* Socket I/O we can only count (sendfile): move the framing on by arithmetic. */
static __always_inline void count_only_io(struct http_conn *c, __u32 total, bool send)
{
	struct h1_parser *p = send ? &c->resp : &c->req;
	if (in_body(p) && p->remaining >= total) {
		struct parse_ctx x = { .c = c, .p = p, .send = send };
		skip_body(&x, p, total);
	} else if (!ignores_data(p)) {
		redprobe_count(HTTP_STAT_UNSUPPORTED_IO);
		p->state = send ? ST_IDLE : ST_RESYNC;
	}
}

/*
 * The common case of a write, without the parse loop: the status line of the response to the
 * one request waiting, at the start of the data. The request is completed and the rest of
 * the response ignored, exactly as the state machine would (see ST_STATUS); anything else
 * (interim or upgrade responses, pipelined requests, a split status line) takes parse_io().
 */
static __always_inline bool fast_response(struct http_conn *c, struct io_desc *io, __u32 total)
{
	if (c->resp.state != ST_IDLE || c->tail - c->head != 1 || c->responses != c->head || total < 16)
		return false;
	__u64 base = io->ptr;
	if (io->kind == IO_IOV) {
		__u64 iov[2];
		if (io->cnt == 0 || bpf_probe_read_user(iov, sizeof(iov), (void *)io->ptr) || iov[1] < 16)
			return false;
		base = iov[0];
	}
	__u64 w[2];
	if (bpf_probe_read_user(w, sizeof(w), (void *)base))
		return false;
	__u8 d0 = w[1] >> 8, d1 = w[1] >> 16, d2 = w[1] >> 24, after = w[1] >> 32;
	if ((w[0] & 0x00ffffffffffffffULL) != TOKEN7('H', 'T', 'T', 'P', '/', '1', '.') ||
	    (w[0] >> 56) < '0' || (w[0] >> 56) > '9' || (w[1] & 0xff) != ' ' || d0 < '2' ||
	    d0 > '9' || d1 < '0' || d1 > '9' || d2 < '0' || d2 > '9' ||
	    (after != ' ' && after != '\r' && after != '\n'))
		return false; /* 1xx, or not a status line at all: the state machine decides */
	__u32 seq = c->head;
	if (c->q[seq & QUEUE_MASK].method == HTTP_METHOD_CONNECT)
		return false;
	__u16 status = (d0 - '0') * 100 + (d1 - '0') * 10 + (d2 - '0');
	c->responses = seq + 1;
	complete_request(c, seq, status, bpf_ktime_get_ns(), 0);
	response_done(c, &c->resp);
	return true;
}

/*
 * Whether this process's connections are measured: a target's (server side, and client side
 * unless client_mode is 0), or with client_mode 2 any process's client connections but the
 * agent's. `*client_only` says which.
 */
static __always_inline bool http_measured(bool *client_only)
{
	*client_only = false;
	if (redprobe_is_target())
		return true;
	if (client_mode != 2 || (bpf_get_current_pid_tgid() >> 32) == agent_tgid)
		return false;
	*client_only = true;
	return true;
}

/*
 * Starts tracking a connection at its first request; NULL when the table is full (counted).
 * The caller fills in what it knows of the peer (http_conn_set_peer).
 */
static __always_inline struct http_conn *http_conn_create(struct http_conn_key *key, __u32 tgid,
							  bool client)
{
	__u32 zero = 0;
	struct conn_bytes *tmpl = bpf_map_lookup_elem(&conn_template, &zero);
	if (!tmpl)
		return NULL;
	if (bpf_map_update_elem(&conns, key, tmpl, BPF_NOEXIST)) {
		redprobe_count(HTTP_STAT_CONN_TABLE_FULL);
		return NULL;
	}
	struct http_conn *c = bpf_map_lookup_elem(&conns, key);
	if (!c)
		return NULL;
	c->tgid = tgid;
	c->conn_id = key->id;
	c->client = client;
#ifndef HTTP1_SWEEP
	bpf_timer_init(&c->timer, &conns, CLOCK_MONOTONIC);
	bpf_timer_set_callback(&c->timer, on_conn_timer);
#endif
	redprobe_count(client ? HTTP_STAT_CLIENT_CONN_OPENED : HTTP_STAT_CONN_OPENED);
	if (client) {
		/* The process's name, for labels when it has exited before the agent reads them. */
		struct proc_name name = {};
		bpf_get_current_comm(name.comm, sizeof(name.comm));
		bpf_map_update_elem(&proc_names, &tgid, &name, BPF_ANY);
	}
	return c;
}

/*
 * The connection's peer, from its socket, when its labels are on: a client connection's server
 * (address and port) with PEER_SERVER, a server connection's client (address only: its port is
 * ephemeral, a label value per connection) with PEER_CLIENT.
 */
static __always_inline void http_conn_set_peer(struct http_conn *c, struct sock *sk)
{
	if (!(peer_labels & (c->client ? PEER_SERVER : PEER_CLIENT)))
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET) {
		*(__u32 *)c->peer.addr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		BPF_CORE_READ_INTO(&c->peer.addr, sk, __sk_common.skc_v6_daddr);
	}
	if (c->client)
		c->peer.port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	c->peer.family = family;
}

/* Completes what is waiting on a closing connection and forgets it (TCP_CLOSE) or marks it. */
static __always_inline void http_conn_closing(struct http_conn *c, struct http_conn_key *key, bool gone)
{
	if (!(c->client && redprobe_is_excluded(c->tgid)))
		flush_pending(c, bpf_ktime_get_ns(), HTTP_FLAG_CLOSED, HTTP_STAT_CLOSED_PENDING);
	if (gone) {
		bpf_map_delete_elem(&conns, key);
	} else {
		/* Lingering reads after our close are not requests we will answer. */
		c->closed = 1;
	}
}

#endif /* HTTP1_ENGINE_H */
