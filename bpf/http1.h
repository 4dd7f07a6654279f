/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * The HTTP/1 records and keys of kprobe-http and tls-uprobe (bpf/http1_engine.h), shared with
 * the TypeScript decoder lib/http1_records.ts (its test asserts the offsets against this file
 * and the committed objects). Fixed sizes, explicit padding, little-endian.
 */
#ifndef HTTP1_H
#define HTTP1_H

/* Bytes of the request path kept per request (longer paths are truncated and flagged). */
#define HTTP_PATH_MAX 96
/* Requests that may wait for their response on one connection (HTTP/1.1 pipelining depth). */
#define HTTP_QUEUE_LEN 8

/* http_request_event.kind */
#define HTTP_EVENT_SERVER_REQUEST 1
#define HTTP_EVENT_CLIENT_REQUEST 2

/* http_request_event.flags */
#define HTTP_FLAG_PATH_TRUNCATED 0x01 /* path longer than HTTP_PATH_MAX */
#define HTTP_FLAG_TIMEOUT 0x02        /* no response before request_timeout_ns */
#define HTTP_FLAG_CLOSED 0x04         /* connection closed before the response */
#define HTTP_FLAG_EVICTED 0x08        /* more than HTTP_QUEUE_LEN requests were waiting */
#define HTTP_FLAG_PARSE_LOST 0x10     /* the response stream could not be followed */
#define HTTP_FLAG_CLIENT 0x20         /* a request this process made (a client connection) */

/* Methods; 0 is an unknown method token (exported as "_OTHER"). */
enum http_method {
	HTTP_METHOD_OTHER = 0,
	HTTP_METHOD_GET = 1,
	HTTP_METHOD_HEAD = 2,
	HTTP_METHOD_POST = 3,
	HTTP_METHOD_PUT = 4,
	HTTP_METHOD_DELETE = 5,
	HTTP_METHOD_CONNECT = 6,
	HTTP_METHOD_OPTIONS = 7,
	HTTP_METHOD_TRACE = 8,
	HTTP_METHOD_PATCH = 9,
};

/* Indices into the stats map beyond REDPROBE_STAT_RINGBUF_LOST (0). decode.ts names them. */
enum http_stat {
	HTTP_STAT_CONN_OPENED = 1,       /* connections recognised as HTTP server connections */
	HTTP_STAT_CONN_NOT_HTTP = 2,     /* tracked connections that stopped parsing as HTTP/1.x */
	HTTP_STAT_RESPONSE_RESYNC = 3,   /* writes skipped while waiting for a status line */
	HTTP_STAT_LATE_RESPONSE = 4,     /* responses to requests already counted as timed out */
	HTTP_STAT_UNMATCHED_RESPONSE = 5, /* responses with no request waiting */
	HTTP_STAT_QUEUE_EVICTED = 6,     /* requests evicted because the queue was full */
	HTTP_STAT_UNSUPPORTED_IO = 7,    /* socket I/O through a syscall whose buffers we cannot see */
	HTTP_STAT_PARSE_LIMIT = 8,       /* data beyond the per-syscall parse budget */
	HTTP_STAT_TIMEOUTS = 9,          /* requests completed with status 0 by the timeout */
	HTTP_STAT_CLOSED_PENDING = 10,   /* requests completed with status 0 by a close */
	HTTP_STAT_PATH_TRUNCATED = 11,   /* request paths longer than HTTP_PATH_MAX */
	HTTP_STAT_CONN_TABLE_FULL = 12,  /* new connections not tracked: table insert failed */
	HTTP_STAT_AGGREGATED = 13,       /* requests added to an in-kernel histogram */
	HTTP_STAT_NOT_AGGREGATED = 14,   /* requests sent as records because the maps were full */
	HTTP_STAT_CLIENT_CONN_OPENED = 15, /* connections recognised as HTTP client connections */
	HTTP_STAT_MAX = 16,
};

/*
 * In-kernel aggregation (the default): each completed request adds to a per-CPU histogram
 * keyed by process, method, status and path; the agent reads the cumulative values at each
 * scrape. A ring-buffer record (struct http_request_event) is written only when a request
 * cannot be aggregated (a new key and the maps are full), so nothing is lost either way.
 */

/* The other end of a client connection: IPv4 in the first 4 bytes, or IPv6. */
struct http_peer {
	__u8 addr[16];
	__u16 port;   /* host byte order */
	__u8 family;  /* AF_INET (2), AF_INET6 (10), or 0: not recorded */
	__u8 _pad[5];
};

struct http_agg_key {
	__u64 path_hash; /* see path_hash() in http1_engine.h; resolved through the paths map */
	__u32 tgid;
	__u16 status;
	__u8 method;
	__u8 flags;      /* HTTP_FLAG_PATH_TRUNCATED and HTTP_FLAG_CLIENT only */
	struct http_peer peer; /* client side with peer labels on; else zero */
};

/* The aggs map's values are struct red_histogram (bpf/red_histogram.h). */

/* Value of the paths map (key: the path hash). */
struct http_path {
	__u8 len;
	__u8 _pad[7];
	char path[HTTP_PATH_MAX];
};

/* One completed (or abandoned) request. 168 bytes. */
struct http_request_event {
	__u64 start_ns;  /* CLOCK_MONOTONIC: the read that returned the request's first byte */
	__u64 end_ns;    /* the write of the response status line (or the timeout / close) */
	__u64 body_size; /* request body bytes: Content-Length, or the sum of chunk sizes */
	__u64 conn_id;   /* socket cookie */
	__u32 tgid;
	__u16 status;    /* 0: no response */
	__u8 method;     /* enum http_method */
	__u8 flags;      /* HTTP_FLAG_* */
	__u8 path_len;
	__u8 kind;       /* HTTP_EVENT_* */
	__u8 _pad[6];
	char path[HTTP_PATH_MAX];
	struct http_peer peer;
};

#endif /* HTTP1_H */
