/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Shared between go_http.bpf.c and decode.ts (which asserts these offsets): the ring-buffer
 * record, the stats indices and the layout of the attach cookie. Fixed sizes, little-endian.
 */
#ifndef GO_HTTP_H
#define GO_HTTP_H

#define GO_HTTP_METHOD_MAX 16
#define GO_HTTP_PATH_MAX 128

/* go_http_event.kind */
#define GO_HTTP_SERVER 1
#define GO_HTTP_CLIENT 2

/* go_http_event.flags */
#define GO_HTTP_FLAG_PATH_TRUNCATED 0x01
#define GO_HTTP_FLAG_NO_RESPONSE 0x02 /* client: roundTrip returned an error */
#define GO_HTTP_FLAG_LONG_METHOD 0x04 /* a method longer than 8 bytes (exported as _OTHER) */
#define GO_HTTP_FLAG_HTTPS 0x08       /* client: the URL's scheme is https (default port 443) */
#define GO_HTTP_FLAG_LONG_HOST 0x10   /* client: URL.Host longer than GO_HTTP_HOST_MAX */

/* Bytes of a client request's URL.Host kept (with peer labels on). */
#define GO_HTTP_HOST_MAX 48

/*
 * Every uprobe carries a 64-bit cookie (bpf_get_attach_cookie) with the struct field offsets of
 * the binary it is attached to, so one loaded object serves Go programs of any version:
 *
 *   byte 0  Request.Method        byte 3  Request.ContentLength
 *   byte 1  Request.URL           byte 4  Response.StatusCode
 *   byte 2  url.URL.Path          byte 5  executable index (see exe_index)
 *                                 byte 6  response.status / 8, on the HTTP/1 end site only
 *                                         (0: the status comes from the WriteHeader probe)
 *                                 byte 7  flags (GO_COOKIE_ANY_PROCESS)
 *
 * Offsets above 255 cannot be encoded: the agent refuses such a binary rather than guess.
 */
#define GO_COOKIE_ANY_PROCESS 0x01 /* attached to a binary for every process running it */

struct go_http_event {
	__u64 start_ns;       /* bpf_ktime_get_ns() at the start */
	__u64 duration_ns;
	__s64 content_length; /* request body size; -1 unknown */
	__u32 tgid;
	__u16 status;         /* 0: no response (client error) */
	__u8 kind;            /* GO_HTTP_SERVER | GO_HTTP_CLIENT */
	__u8 flags;
	__u8 method_len;
	__u8 _pad0;
	__u16 path_len;       /* bytes of path[] used */
	__u32 exe_index;      /* cookie byte 5: 1 + index into go-http's `executables`, or 0 */
	char method[GO_HTTP_METHOD_MAX];
	char path[GO_HTTP_PATH_MAX];
	char host[GO_HTTP_HOST_MAX]; /* as in go_agg_key */
};

/*
 * In-kernel aggregation (the default; bpf/red_histogram.h): each completed request adds to a
 * per-CPU histogram keyed as below; a ring-buffer record (struct go_http_event) is written only
 * when a request cannot be aggregated (a new key and the maps are full).
 */
struct go_agg_key {
	__u64 path_hash; /* red_path_hash() of the path; resolved through the paths map */
	__u32 tgid;
	__u16 status;
	__u8 kind;
	__u8 flags;      /* GO_HTTP_FLAG_* */
	char method[8];  /* zero-padded; longer methods set GO_HTTP_FLAG_LONG_METHOD */
	__u32 exe_index;
	__u32 _pad;
	char host[GO_HTTP_HOST_MAX]; /* client with peer labels on: URL.Host, zero-padded */
};

/* Value of the paths map (key: the path hash). */
struct go_path {
	__u16 len;
	__u8 _pad[6];
	char path[GO_HTTP_PATH_MAX];
};

enum go_http_stat {
	GO_STAT_SERVER_STARTS = 1,     /* serverHandler.ServeHTTP entries */
	GO_STAT_SERVER_UNPAIRED = 2,   /* finishRequest with no start (probe attached mid-request) */
	GO_STAT_CLIENT_STARTS = 3,     /* (*Transport).roundTrip entries */
	GO_STAT_CLIENT_UNPAIRED = 4,   /* roundTrip returns with no start */
	GO_STAT_TABLE_FULL = 5,        /* starts not tracked: map insert failed */
	GO_STAT_READ_FAILED = 6,       /* user memory that could not be read (fields left empty) */
	GO_STAT_PATH_TRUNCATED = 7,    /* paths longer than GO_HTTP_PATH_MAX */
	GO_STAT_AGGREGATED = 8,        /* requests added to an in-kernel histogram */
	GO_STAT_NOT_AGGREGATED = 9,    /* requests sent as records because the maps were full */
	GO_STAT_MAX = 10,
};

#endif /* GO_HTTP_H */
