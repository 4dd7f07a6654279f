/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * Shared between go_grpc.bpf.c and decode.ts (which asserts these offsets): the ring-buffer
 * record, the aggregation key, the stats indices and the layout of the attach cookies. Fixed
 * sizes, little-endian.
 */
#ifndef GO_GRPC_H
#define GO_GRPC_H

/* Bytes of a gRPC method name ("/package.Service/Method") kept. */
#define GO_GRPC_METHOD_MAX 128

/* go_grpc_event.kind */
#define GO_GRPC_SERVER 1
#define GO_GRPC_CLIENT 2

/* go_grpc_event.flags */
#define GO_GRPC_FLAG_METHOD_TRUNCATED 0x01 /* a method name longer than GO_GRPC_METHOD_MAX */
#define GO_GRPC_FLAG_NO_STATUS 0x02        /* client: an error without a gRPC status: UNKNOWN */

/*
 * Each probe's 64-bit cookie (bpf_get_attach_cookie) carries the struct field offsets its
 * program reads in this binary, so one loaded object serves every grpc-go version. "/8": the
 * byte holds the offset divided by 8 (pointer and string fields are 8-aligned).
 *
 *   server start  (*Server).handleStream         byte 0  transport.Stream.method / 8
 *   server end    (*http2Server).WriteStatus     byte 2  spb.Status.Code (bytes)
 *   client start  (*csAttempt).newStream         byte 0  csAttempt.cs / 8
 *                                                byte 1  clientStream.callHdr / 8
 *                                                byte 2  transport.CallHdr.Method / 8
 *   client end    (*csAttempt).finish            byte 0  csAttempt.s / 8
 *                                                byte 1  transport.Stream.status / 8
 *                                                byte 2  spb.Status.Code (bytes)
 *                                                bytes 4-7  (int32) address of
 *                                                  internal/status.(*Error).Error minus the
 *                                                  probe's own address: tells an error that
 *                                                  is a *status.Error by its itab
 *
 * internal/status.Status and internal/status.Error hold their *spb.Status as the first (and
 * only) field: the agent checks that in DWARF and refuses a binary where it is not.
 */

struct go_grpc_event {
	__u64 start_ns;    /* bpf_ktime_get_ns() at the start */
	__u64 duration_ns;
	__u32 tgid;
	__u16 code;        /* gRPC status code */
	__u8 kind;         /* GO_GRPC_SERVER | GO_GRPC_CLIENT */
	__u8 flags;
	__u16 method_len;  /* bytes of method[] used */
	__u8 _pad[6];
	char method[GO_GRPC_METHOD_MAX];
};

/*
 * In-kernel aggregation (the default; bpf/red_histogram.h): each completed call adds to a
 * per-CPU histogram keyed as below; a record (struct go_grpc_event) is written only when a call
 * cannot be aggregated (a new key and the maps are full).
 */
struct go_grpc_agg_key {
	__u64 method_hash; /* red_path_hash() of the method; resolved through the methods map */
	__u32 tgid;
	__u16 code;
	__u8 kind;
	__u8 flags;
};

/* Value of the methods map (key: the method hash). */
struct go_grpc_method {
	__u16 len;
	__u8 _pad[6];
	char method[GO_GRPC_METHOD_MAX];
};

enum go_grpc_stat {
	GRPC_STAT_SERVER_STARTS = 1,   /* handleStream entries */
	GRPC_STAT_SERVER_UNPAIRED = 2, /* WriteStatus with no start (attached mid-call, or twice) */
	GRPC_STAT_CLIENT_STARTS = 3,   /* csAttempt.newStream entries */
	GRPC_STAT_CLIENT_UNPAIRED = 4, /* csAttempt.finish with no start */
	GRPC_STAT_TABLE_FULL = 5,      /* starts not tracked: map insert failed */
	GRPC_STAT_READ_FAILED = 6,     /* user memory that could not be read */
	GRPC_STAT_METHOD_TRUNCATED = 7,
	GRPC_STAT_AGGREGATED = 8,
	GRPC_STAT_NOT_AGGREGATED = 9,
	GRPC_STAT_MAX = 10,
};

#endif /* GO_GRPC_H */
