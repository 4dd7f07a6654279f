// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * redis (an example third-party plugin): the duration and outcome of every Redis command any
 * process sends to a server on one of the configured ports, measured on the client's side.
 *
 * Hooks (BTF tracepoints: no kprobes, no fentry, no tracefs needed):
 *   tp_btf/sock_send_length     a socket write finished (write, writev, sendto, sendmsg)
 *   tp_btf/sock_recv_length     a socket read finished (read, readv, recvfrom, recvmsg)
 *   tp_btf/inet_sock_set_state  a TCP socket is closing (close, exit, shutdown, RST)
 *   redis_sweep                 SEC("syscall"), run by the agent every second: timeouts
 *
 * Why these rather than sys_enter/sys_exit_{connect,write,read,close,...}: they fire in the
 * syscall's context (the buffers are found in the task's saved registers, as with a syscall
 * tracepoint), but only for socket I/O, once per syscall, already knowing the socket. The
 * peer port is read from the socket, so no connect() has to be seen: connections opened
 * before the agent started are measured from their next command. Keying connections by the
 * socket cookie (unique for the life of the kernel) rather than (tgid, fd) means a reused fd
 * is never confused with the connection it replaced, and every way a socket ends is seen,
 * including exit() and close_range(), which make no close() per fd. kprobe-http does the same.
 *
 * Filter: the socket's peer port is one of `ports` (a few loads, no map lookup: what every
 * other process's socket I/O pays), TCP, and the process is not the agent (agent_tgid). A
 * connection is tracked from its first write; reads of untracked sockets are ignored.
 *
 * Per connection, two incremental RESP framers (commands written, replies read) follow the
 * byte streams across syscalls, buffers and iovecs: header lines are parsed byte by byte from
 * a 64-byte window of user memory, bulk payloads are skipped by arithmetic, aggregates by a
 * stack of element counts (RESP2 and RESP3 types). A command is recorded when its name (the
 * first bulk string of its array, or the first word of an inline command) is seen; a reply
 * when the first line of a top-level value is. Replies come back in order, so the k-th reply
 * answers the k-th command: pipelining (several commands in one write, `redis-cli --pipe`,
 * redis-py pipelines) is paired exactly. Commands are queued as runs (same name, same write:
 * one slot for a thousand pipelined SETs), at most QLEN runs; beyond that a command is
 * counted but not timed (commands_untimed), and its reply is consumed without a record.
 *
 * Duration: from the end of the write that carried the command's name to the end of the read
 * that returned the first line of its reply (an error's first word included).
 *
 * Bounded: the parse of one syscall takes at most MAX_STEPS steps (a byte of a header line, or
 * one skipped payload run) and MAX_SEGMENTS iovecs; what does not fit, bytes that are not
 * RESP, or nesting deeper than DEPTH lose the connection's framing (framing_lost): its
 * waiting commands are counted (commands_lost) and the connection is no longer measured.
 *
 * Not seen: Unix-socket connections (no port), TLS (the bytes are encrypted), io_uring and
 * sendmmsg/recvmmsg (io_unsupported, and the connection's framing is lost). Out-of-band
 * replies (RESP3 pushes `>`) are not replies; RESP2 pub/sub messages arrive with no command
 * waiting and are counted (replies_unmatched).
 */
#include "redprobe.bpf.h"
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define MAX_PORTS 8
#define NAME_LEN 16
#define NAME_MASK (NAME_LEN - 1)
#define EXE_LEN 32
#define QLEN 32 /* command runs waiting for replies, per connection */
#define QMASK (QLEN - 1)
#define DEPTH 16 /* nested aggregates (COMMAND DOCS replies nest ~6 deep) */
#define DMASK (DEPTH - 1)
#define WINDOW 64
#define WMASK (WINDOW - 1)
#define MAX_STEPS 65536 /* per syscall: ~1 step per header byte; a 64 KiB pipelined write fits */
#define MAX_SEGMENTS 16
#define FLUSH_MAX 4096 /* records emitted at once when a connection closes or times out */

#define MSG_PEEK 2
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* x86-64 syscall numbers whose buffers we know how to find. */
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47

/* Peer ports of Redis servers (host order; 0: unused slot). */
const volatile __u16 ports[MAX_PORTS] = { 6379 };
/* The agent's own process is never measured. */
const volatile __u32 agent_tgid = 0;
/* A command with no reply after this long is recorded as a timeout. */
const volatile __u64 request_timeout_ns = 30ULL * 1000 * 1000 * 1000;

/* Indices in the `stats` map (0 is ring-buffer loss); names in mod.ts's kernelCounters. */
enum redis_stat {
	STAT_CONNECTIONS = 1,  /* connections tracked */
	STAT_CONN_TABLE_FULL,  /* connections not tracked: conns was full */
	STAT_COMMANDS_UNTIMED, /* commands counted but not timed: QLEN runs were waiting */
	STAT_REPLIES_UNMATCHED, /* replies with no command waiting (pub/sub, MONITOR) */
	STAT_REPLIES_LATE,     /* replies to commands already recorded as timed out */
	STAT_FRAMING_LOST,     /* connections whose byte stream could not be followed */
	STAT_COMMANDS_LOST,    /* commands waiting on such a connection: not recorded */
	STAT_TIMEOUTS,         /* commands recorded as timed out */
	STAT_CLOSED_PENDING,   /* commands recorded as unanswered at close */
	STAT_IO_UNSUPPORTED,   /* socket I/O whose buffers cannot be found (sendmmsg, io_uring) */
	STAT_PUSHES,           /* RESP3 out-of-band pushes, not replies */
	STAT_RECORDS_DROPPED,  /* waiting at close, not recorded: untimed, or beyond FLUSH_MAX */
};

enum redis_outcome {
	OUTCOME_OK = 0,
	OUTCOME_ERROR = 1,   /* an error reply: err holds its first word */
	OUTCOME_TIMEOUT = 2, /* no reply after request_timeout_ns */
	OUTCOME_CLOSED = 3,  /* the connection closed first */
};

/* One ring-buffer record: a command and how it ended. decode.ts reads this layout. */
struct redis_event {
	__u64 start_ns;    /* bpf_ktime_get_ns() at the end of the command's write */
	__u64 duration_ns;
	__u32 tgid;
	__u32 name_total;  /* the command name's length on the wire */
	__u8 outcome;      /* enum redis_outcome */
	__u8 name_len;     /* bytes of it in name (at most NAME_LEN) */
	__u8 err_len;      /* the error word's length (saturates at 255); its first bytes in err */
	__u8 _pad[5];
	char name[NAME_LEN];
	char err[NAME_LEN];
	char exe[EXE_LEN]; /* the executable's file name (labels after the process exited) */
};

/* Keeps struct redis_event in the object's BTF (decode_test.ts checks the offsets). */
struct redis_event *redis_event_btf_anchor;

/* One direction's RESP framer. */
struct resp_framer {
	__u64 skip;         /* bulk payload bytes (with their CRLF) still to pass over */
	__u64 num;          /* the header line's number so far */
	__u32 left[DEPTH];  /* elements still expected by each open aggregate */
	__u8 depth;         /* open aggregates */
	__u8 in_line;       /* inside a header line (its type byte seen) */
	__u8 type;          /* the line's type byte */
	__u8 neg;           /* the number is negative */
	__u8 word_len;      /* the line's first word (errors, inline commands): length, saturating */
	__u8 word_state;    /* 0 no word in this line, 1 copying it, 2 ended */
	__u8 want_name;     /* commands: the next bulk string is the command's name */
	__u8 capture;       /* payload bytes still to copy into word (a command name, an error) */
	__u32 name_total;   /* the length of the bulk string being captured */
	__u32 _pad;
	char word[NAME_LEN];
};

/* Consecutive commands of one name written by one syscall, waiting for their replies. */
struct cmd_run {
	__u64 start_ns;
	__u32 count;
	__u32 name_total;
	__u8 name_len;
	__u8 _pad[7];
	char name[NAME_LEN];
};

struct redis_conn {
	struct resp_framer req;  /* what the client writes */
	struct resp_framer resp; /* what it reads */
	struct cmd_run q[QLEN];  /* runs q[head..tail) */
	__u32 head;
	__u32 tail;
	__u32 untimed;  /* commands after the queue's (queue was full): answered without a record */
	__u32 expired;  /* commands recorded as timed out whose replies are still to come */
	__u32 tgid;
	__u8 lost;      /* framing lost: the connection is no longer measured */
	__u8 _pad[3];
	char exe[EXE_LEN];
};

/* Connections by socket cookie. LRU: a connection never seen closing cannot leak a slot. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2048); /* options.max_connections */
	__type(key, __u64);
	__type(value, struct redis_conn);
} conns SEC(".maps");

/* A zeroed connection to copy from: the struct is too big for the BPF stack. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct redis_conn);
} conn_template SEC(".maps");

/*
 * Where one syscall's parse stands. In map memory, not on the stack, on purpose: the verifier
 * knows nothing of values loaded from a map, so every step of the loop looks alike to it and
 * the step function is verified once.
 */
struct parse_state {
	__u64 now;
	__u64 base;     /* the current segment's user address */
	__u64 seg_len;  /* its length */
	__u64 off;      /* position in it */
	__u64 left;     /* bytes of the syscall not parsed yet */
	__u64 iov;      /* iovec array (iovec I/O) */
	__u64 iov_cnt;
	__u64 iov_idx;
	__u64 win_off;  /* the window holds segment bytes [win_off, win_off + win_len) */
	__u64 win_len;
	__u8 win[WINDOW];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_state);
} scratch SEC(".maps");

struct step_ctx {
	struct redis_conn *c;
	struct resp_framer *f;
	struct parse_state *s;
	__u8 send;
};

static __always_inline void count_n(__u32 index, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &index);
	if (v)
		*v += n; /* per-CPU slot */
}

static __always_inline bool port_watched(__u16 port)
{
	if (port == 0)
		return false;
#pragma unroll
	for (int i = 0; i < MAX_PORTS; i++) {
		if (ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline bool is_tcp(struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	return (family == AF_INET || family == AF_INET6) &&
	       BPF_CORE_READ(sk, sk_protocol) == IPPROTO_TCP;
}

/* Emits the record of the command at the head of the queue. */
static __always_inline void emit(struct redis_conn *c, struct cmd_run *r, __u64 now, __u8 outcome,
				 const char *err, __u8 err_len)
{
	struct redis_event *e = redprobe_reserve(sizeof(*e));
	if (!e)
		return;
	e->start_ns = r->start_ns;
	/* A sweep on another CPU may have read `now` before the command was queued. */
	e->duration_ns = now > r->start_ns ? now - r->start_ns : 0;
	e->tgid = c->tgid;
	e->name_total = r->name_total;
	e->outcome = outcome;
	e->name_len = r->name_len;
	e->err_len = err_len;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	__builtin_memcpy(e->name, r->name, NAME_LEN);
	if (err)
		__builtin_memcpy(e->err, err, NAME_LEN);
	else
		__builtin_memset(e->err, 0, NAME_LEN);
	__builtin_memcpy(e->exe, c->exe, EXE_LEN);
	redprobe_submit(e);
}

/* Forgets the head command (one of its run). */
static __always_inline void pop(struct redis_conn *c, struct cmd_run *r)
{
	if (r->count > 1)
		r->count--;
	else
		c->head++;
}

/* The byte stream cannot be followed any more: stop measuring this connection. */
static __always_inline void lose(struct redis_conn *c)
{
	__u64 waiting = c->untimed;
#pragma unroll
	for (int i = 0; i < QLEN; i++) {
		if (c->head + i != c->tail)
			waiting += c->q[(c->head + i) & QMASK].count;
		else
			break;
	}
	count_n(STAT_COMMANDS_LOST, waiting);
	redprobe_count(STAT_FRAMING_LOST);
	c->head = c->tail;
	c->untimed = 0;
	c->expired = 0;
	c->lost = 1;
}

/* A command was written: queue it (a run of its own, or one more of the last run). */
static __always_inline void push_command(struct step_ctx *x, const char *name, __u8 name_len,
					 __u32 name_total)
{
	struct redis_conn *c = x->c;
	__u64 now = x->s->now;
	if (c->untimed == 0 && c->tail != c->head) {
		struct cmd_run *last = &c->q[(c->tail - 1) & QMASK];
		if (last->start_ns == now && last->name_total == name_total &&
		    last->name_len == name_len && *(__u64 *)last->name == *(__u64 *)name &&
		    *(__u64 *)(last->name + 8) == *(__u64 *)(name + 8)) {
			last->count++;
			return;
		}
	}
	if (c->untimed == 0 && c->tail - c->head < QLEN) {
		struct cmd_run *r = &c->q[c->tail & QMASK];
		r->start_ns = now;
		r->count = 1;
		r->name_total = name_total;
		r->name_len = name_len;
		__builtin_memcpy(r->name, name, NAME_LEN);
		c->tail++;
		return;
	}
	/* Behind a full queue: replies come in order, so this one stays behind it too. */
	c->untimed++;
	redprobe_count(STAT_COMMANDS_UNTIMED);
}

/* The first line of a top-level reply was read. */
static __always_inline void reply(struct step_ctx *x, __u8 outcome, const char *err, __u8 err_len)
{
	struct redis_conn *c = x->c;
	if (c->expired) {
		c->expired--;
		redprobe_count(STAT_REPLIES_LATE);
		return;
	}
	if (c->head != c->tail) {
		struct cmd_run *r = &c->q[c->head & QMASK];
		emit(c, r, x->s->now, outcome, err, err_len);
		pop(c, r);
		return;
	}
	if (c->untimed) {
		c->untimed--;
		return;
	}
	redprobe_count(STAT_REPLIES_UNMATCHED);
}

/* An element ended: close every aggregate it completes. */
static __always_inline void element_done(struct resp_framer *f)
{
#pragma unroll
	for (int i = 0; i < DEPTH; i++) {
		if (f->depth == 0)
			return;
		__u32 d = (f->depth - 1) & DMASK;
		if (f->left[d] > 1) {
			f->left[d]--;
			return;
		}
		f->left[d] = 0;
		f->depth--;
	}
}

/* An aggregate of n elements begins (n <= 0: null or empty, already complete). */
static __always_inline void open_aggregate(struct step_ctx *x, __s64 n)
{
	struct resp_framer *f = x->f;
	if (n <= 0) {
		element_done(f);
		return;
	}
	if (f->depth >= DEPTH || n > 0x7fffffff) {
		lose(x->c);
		return;
	}
	f->left[f->depth & DMASK] = n;
	f->depth++;
}

/* The payload being captured (a command's name, a bulk error's text) has been copied. */
static __always_inline void capture_done(struct step_ctx *x)
{
	struct resp_framer *f = x->f;
	if (x->send)
		push_command(x, f->word, f->word_len < NAME_LEN ? f->word_len : NAME_LEN,
			     f->name_total);
	else
		reply(x, OUTCOME_ERROR, f->word, f->word_len);
}

/*
 * Starts copying the first bytes of a bulk payload of n bytes into word: byte by byte, as the
 * stream brings them, so a name split between two writes (or iovecs) is whole. `limit`: bytes
 * wanted; one more than the word holds tells a longer error word from one that fits.
 */
static __always_inline void start_capture(struct step_ctx *x, __s64 n, __u32 limit)
{
	struct resp_framer *f = x->f;
	f->skip = n + 2;
	f->word_len = 0;
	f->word_state = 1;
	__builtin_memset(f->word, 0, NAME_LEN);
	f->name_total = n > 0xffff ? 0xffff : n;
	f->capture = n < limit ? n : limit;
	if (f->capture == 0)
		capture_done(x);
}

/* One byte of a payload being captured. */
static __always_inline void capture_byte(struct step_ctx *x, __u8 b)
{
	struct resp_framer *f = x->f;
	f->skip--;
	f->capture--;
	if (f->word_state == 1) {
		if (b == ' ') {
			f->word_state = 2; /* an error's first word ends here */
		} else {
			if (f->word_len < NAME_LEN)
				f->word[f->word_len & NAME_MASK] = b;
			if (f->word_len < 255)
				f->word_len++;
		}
	}
	if (f->capture == 0)
		capture_done(x);
}

/* A header line ended (its '\n' was just consumed). */
static __always_inline void on_line(struct step_ctx *x)
{
	struct resp_framer *f = x->f;
	__u8 t = f->type;
	bool top = f->depth == 0;
	__s64 n = f->neg ? -(__s64)f->num : (__s64)f->num;
	f->in_line = 0;
	if (x->send) {
		if (top) {
			if (t == '*') {
				/* Redis ignores an empty array: no command, no reply. */
				if (n > 0) {
					open_aggregate(x, n);
					f->want_name = 1;
				}
				return;
			}
			/* An inline command ("PING\r\n"); a blank line is ignored by Redis too. */
			if (f->word_len)
				push_command(x, f->word, f->word_len < NAME_LEN ? f->word_len : NAME_LEN,
					     f->word_len);
			return;
		}
		/* Inside a command's array: only bulk strings. */
		if (t != '$' || n < 0) {
			lose(x->c);
			return;
		}
		if (f->want_name && f->depth == 1) {
			f->want_name = 0;
			start_capture(x, n, NAME_LEN);
		} else {
			f->skip = n + 2;
		}
		return;
	}
	switch (t) {
	case '*': /* array */
	case '~': /* set */
	case '%': /* map: key and value per entry */
	case '>': /* push: out of band, not a reply */
		if (top) {
			if (t == '>')
				redprobe_count(STAT_PUSHES);
			else
				reply(x, OUTCOME_OK, NULL, 0);
		}
		open_aggregate(x, t == '%' ? 2 * n : n);
		return;
	case '$': /* bulk string */
	case '=': /* verbatim string */
	case '!': /* bulk error: its text is the payload */
		if (top && t == '!' && n >= 0) {
			start_capture(x, n, NAME_LEN + 1); /* the reply is recorded once it is copied */
			return;
		}
		if (top)
			reply(x, t == '!' ? OUTCOME_ERROR : OUTCOME_OK, NULL, 0);
		if (n < 0)
			element_done(f);
		else
			f->skip = n + 2;
		return;
	case '+': /* simple string */
	case '-': /* error: its first word was copied */
	case ':': /* integer */
	case '_': /* null */
	case ',': /* double */
	case '#': /* boolean */
	case '(': /* big number */
		if (top) {
			if (t == '-')
				reply(x, OUTCOME_ERROR, f->word, f->word_len);
			else
				reply(x, OUTCOME_OK, NULL, 0);
		}
		element_done(f);
		return;
	default: /* not RESP (or a RESP3 attribute '|', which Redis never sends unasked) */
		lose(x->c);
	}
}

static __always_inline void feed_byte(struct step_ctx *x, __u8 b)
{
	struct resp_framer *f = x->f;
	if (!f->in_line) {
		if (b == '\n') { /* an empty line: ignored between inline commands */
			if (!x->send || f->depth)
				lose(x->c);
			return;
		}
		f->in_line = 1;
		f->type = b;
		f->num = 0;
		f->neg = 0;
		f->word_len = 0;
		f->word_state = 0;
		__builtin_memset(f->word, 0, NAME_LEN);
		if (f->depth == 0) {
			if (!x->send && b == '-') {
				f->word_state = 1; /* an error reply: its first word follows */
			} else if (x->send && b != '*' && b != '\r' && b != ' ') {
				f->word_state = 1; /* an inline command: this is its first letter */
				f->word[0] = b;
				f->word_len = 1;
			}
		}
		return;
	}
	if (b == '\n') {
		on_line(x);
		return;
	}
	if (f->word_state == 1) {
		if (b == ' ' || b == '\r' || b == '\t') {
			f->word_state = 2;
		} else {
			if (f->word_len < NAME_LEN)
				f->word[f->word_len & NAME_MASK] = b;
			if (f->word_len < 255)
				f->word_len++;
		}
	}
	if (b >= '0' && b <= '9') {
		if (f->num < (1ULL << 40))
			f->num = f->num * 10 + (b - '0');
	} else if (b == '-') {
		f->neg = 1;
	}
}

/* Moves the parse to the next iovec; false when there is none to go to. */
static __always_inline bool next_segment(struct parse_state *s)
{
	if (s->iov == 0)
		return false;
	s->iov_idx++;
	if (s->iov_idx >= s->iov_cnt || s->iov_idx >= MAX_SEGMENTS)
		return false;
	__u64 iov[2];
	if (bpf_probe_read_user(iov, sizeof(iov), (void *)(s->iov + s->iov_idx * 16)))
		return false;
	s->base = iov[0];
	s->seg_len = iov[1];
	s->off = 0;
	s->win_off = 0;
	s->win_len = 0;
	return true;
}

/* One step of a syscall's parse: a byte of a header line, or a run of payload skipped. */
static long parse_step(__u32 i, struct step_ctx *x)
{
	struct parse_state *s = x->s;
	struct resp_framer *f = x->f;
	if (x->c->lost || s->left == 0)
		return 1;
	if (s->off >= s->seg_len)
		return next_segment(s) ? 0 : 1;
	__u64 avail = s->seg_len - s->off;
	if (avail > s->left)
		avail = s->left;
	if (f->skip && !f->capture) {
		__u64 n = f->skip < avail ? f->skip : avail;
		f->skip -= n;
		s->off += n;
		s->left -= n;
		if (f->skip == 0)
			element_done(f);
		return 0;
	}
	if (s->off < s->win_off || s->off >= s->win_off + s->win_len) {
		__u64 n = avail < WINDOW ? avail : WINDOW;
		if (n == 0 || n > WINDOW || bpf_probe_read_user(s->win, n, (void *)(s->base + s->off)))
			return 1;
		s->win_off = s->off;
		s->win_len = n;
	}
	__u8 b = s->win[(s->off - s->win_off) & WMASK];
	s->off++;
	s->left--;
	if (f->capture)
		capture_byte(x, b);
	else
		feed_byte(x, b);
	return 0;
}

/* Finds the current syscall's buffers from the registers saved at syscall entry. */
static __always_inline bool syscall_io(bool send, struct parse_state *s, __u64 total)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	long nr = regs->orig_ax;
	__u64 arg2 = regs->si;
	__u64 iov = 0, cnt = 0;

	if (nr == (send ? NR_write : NR_read) || nr == (send ? NR_sendto : NR_recvfrom)) {
		s->iov = 0;
		s->iov_cnt = 1;
		s->base = arg2;
		s->seg_len = total;
	} else {
		if (nr == (send ? NR_writev : NR_readv)) {
			iov = arg2;
			cnt = regs->dx;
		} else if (nr == (send ? NR_sendmsg : NR_recvmsg)) {
			/* struct user_msghdr: msg_iov at 16, msg_iovlen at 24 */
			__u64 m[2];
			if (bpf_probe_read_user(m, sizeof(m), (void *)(arg2 + 16)))
				return false;
			iov = m[0];
			cnt = m[1];
		} else {
			return false;
		}
		__u64 first[2];
		if (cnt == 0 || bpf_probe_read_user(first, sizeof(first), (void *)iov))
			return false;
		s->iov = iov;
		s->iov_cnt = cnt;
		s->base = first[0];
		s->seg_len = first[1];
	}
	s->iov_idx = 0;
	s->off = 0;
	s->left = total;
	s->win_off = 0;
	s->win_len = 0;
	return true;
}

static __always_inline struct redis_conn *create_conn(__u64 *cookie, __u32 tgid)
{
	__u32 zero = 0;
	struct redis_conn *tmpl = bpf_map_lookup_elem(&conn_template, &zero);
	if (!tmpl)
		return NULL;
	if (bpf_map_update_elem(&conns, cookie, tmpl, BPF_NOEXIST)) {
		redprobe_count(STAT_CONN_TABLE_FULL);
		return NULL;
	}
	struct redis_conn *c = bpf_map_lookup_elem(&conns, cookie);
	if (!c)
		return NULL;
	c->tgid = tgid;
	/* The executable's file name, for labels when the process has exited (redis-cli). */
	struct task_struct *task = bpf_get_current_task_btf();
	struct mm_struct *mm = task->mm;
	if (mm) {
		struct file *exe = mm->exe_file;
		if (exe)
			bpf_probe_read_kernel_str(c->exe, EXE_LEN, exe->f_path.dentry->d_name.name);
	}
	redprobe_count(STAT_CONNECTIONS);
	return c;
}

static __always_inline int on_socket_io(struct sock *sk, int ret, int flags, bool send)
{
	if (ret <= 0 || (!send && (flags & MSG_PEEK)))
		return 0;
	if (!port_watched(bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport))))
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (tgid == agent_tgid)
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct redis_conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c) {
		/* Tracked from its first command. */
		if (!send || !is_tcp(sk))
			return 0;
		c = create_conn(&cookie, tgid);
		if (!c)
			return 0;
	}
	if (c->lost)
		return 0;
	__u32 zero = 0;
	struct parse_state *s = bpf_map_lookup_elem(&scratch, &zero);
	if (!s)
		return 0;
	if (!syscall_io(send, s, ret)) {
		redprobe_count(STAT_IO_UNSUPPORTED);
		lose(c);
		return 0;
	}
	s->now = bpf_ktime_get_ns();
	struct step_ctx x = { .c = c, .f = send ? &c->req : &c->resp, .s = s, .send = send };
	bpf_loop(MAX_STEPS, parse_step, &x, 0);
	if (s->left && !c->lost)
		lose(c); /* out of steps or iovecs: the rest of the stream cannot be followed */
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(redis_send, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk, ret, flags, true);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(redis_recv, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk, ret, flags, false);
}

struct flush_ctx {
	struct redis_conn *c;
	__u64 now;
	__u8 outcome;
	__u8 expire; /* only commands older than request_timeout_ns */
	__u32 stat;
};

static long flush_step(__u32 i, struct flush_ctx *x)
{
	struct redis_conn *c = x->c;
	if (c->head == c->tail)
		return 1;
	struct cmd_run *r = &c->q[c->head & QMASK];
	if (x->expire) {
		if (r->start_ns >= x->now || x->now - r->start_ns < request_timeout_ns)
			return 1;
		c->expired++;
	}
	emit(c, r, x->now, x->outcome, NULL, 0);
	redprobe_count(x->stat);
	pop(c, r);
	return 0;
}

/* Records the waiting commands (all, or those older than the timeout) with `outcome`. */
static __always_inline void flush(struct redis_conn *c, __u8 outcome, __u8 expire, __u32 stat)
{
	struct flush_ctx x = {
		.c = c, .now = bpf_ktime_get_ns(), .outcome = outcome, .expire = expire, .stat = stat,
	};
	bpf_loop(FLUSH_MAX, flush_step, &x, 0);
	if (!expire) {
		__u64 left = c->untimed;
#pragma unroll
		for (int i = 0; i < QLEN; i++) {
			if (c->head + i != c->tail)
				left += c->q[(c->head + i) & QMASK].count;
			else
				break;
		}
		count_n(STAT_RECORDS_DROPPED, left);
	}
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(redis_state, const struct sock *sk, const int oldstate, const int newstate)
{
	/* Closing from our side (close, exit, shutdown) or torn down (RST, end of TIME_WAIT). */
	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	if (!port_watched(bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport))))
		return 0;
	__u64 cookie = bpf_get_socket_cookie((struct sock *)sk);
	struct redis_conn *c = bpf_map_lookup_elem(&conns, &cookie);
	if (!c)
		return 0;
	if (!c->lost)
		flush(c, OUTCOME_CLOSED, 0, STAT_CLOSED_PENDING);
	bpf_map_delete_elem(&conns, &cookie);
	return 0;
}

static long sweep_conn(void *map, __u64 *key, struct redis_conn *c, void *unused)
{
	/*
	 * Unsynchronised with the connection's own I/O on another CPU: harmless in practice, since
	 * only commands waiting longer than the timeout are touched, and a client that is still
	 * reading that connection has had its reply long before.
	 */
	if (c->head != c->tail && !c->lost)
		flush(c, OUTCOME_TIMEOUT, 1, STAT_TIMEOUTS);
	return 0;
}

/* Run by the agent every second (the plugin's `sweep`): records commands that timed out. */
SEC("syscall")
int redis_sweep(void *ctx)
{
	bpf_for_each_map_elem(&conns, sweep_conn, NULL, 0);
	return 0;
}
