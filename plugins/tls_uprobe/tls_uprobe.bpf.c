// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * tls-uprobe: HTTP/1.x over TLS for programs that use OpenSSL (libssl.so.3, or OpenSSL linked
 * into the program as Node.js does), measured on the plaintext: what SSL_write is given before
 * encryption and what SSL_read returns after decryption. The plaintext goes through the same
 * HTTP/1 engine as kprobe-http's (bpf/http1_engine.h).
 *
 * Hooks:
 *   tls_enter   uprobe at SSL_read, SSL_write, SSL_read_ex, SSL_write_ex: the arguments
 *   tls_exit    uprobe where the function's result is known (see below), or a uretprobe
 *   tls_free    uprobe at SSL_free: the connection is over (its SSL pointer may be reused)
 *   tp_btf/sock_recv_length, sock_send_length   the socket under the SSL call
 *   tp_btf/inet_sock_set_state                  that socket closing
 *
 * The three socket programs are attached on demand: only once tls_enter has seen an SSL call of
 * a measured process (sockets_wanted), and from then on until the agent stops. They run on every
 * socket read, write and TCP state change of the machine, and their dispatch alone costs ~60-70
 * ns each time (~200 ns per request of a plain-HTTP nginx, ~1.4% of its CPU, although nginx
 * never makes an SSL call); a machine without OpenSSL traffic does not pay that. The price is a
 * gap: SSL calls made before the programs are attached (a few ms after the first one) see no
 * socket. Their connection learns its socket (peer labels, close) at its next call after the
 * attach, and a connection whose whole life falls in the gap ends at SSL_free (tls_free), as
 * Node's memory-BIO connections always do.
 *
 * Where the probes sit (the agent finds the sites with an x86 decoder, lib/x86_sites.ts): a
 * uprobe costs ~1 µs on an instruction the kernel emulates (jcc, call, push) and ~15-20 µs on
 * one it must single-step. tls_enter sits on the first emulated instruction before the
 * argument registers change (in Debian's libssl, the `js` of SSL_read's `num < 0` check);
 * tls_exit on the last emulated instruction before each `ret` once RAX holds the result (the
 * stack-protector `jne` of the epilogue), or, when a function has no such site, it is a
 * uretprobe. The cookie of each entry site says which function it is (TLS_FN_*).
 *
 * Connections are OpenSSL's: keyed by the SSL pointer and the tgid (nginx's workers are forks
 * with the same heap layout: the pointer alone is not unique), so every byte of plaintext is
 * attributed to its connection exactly, even when OpenSSL answers SSL_read from its own buffer
 * without a syscall. The socket is learnt from the socket I/O the SSL call makes on the same
 * thread; it gives the peer (server_address/server_port) and the close, which completes what
 * is still waiting with status 0. SSL_free ends the connection too, the only end seen when
 * OpenSSL does no socket I/O itself (Node.js feeds it through memory BIOs: no socket, so no
 * peer either; counted in tls_connections_without_socket).
 *
 * Request timeouts: the agent runs tls_sweep every second (see HTTP1_SWEEP in http1_engine.h).
 *
 * The ciphertext on the socket never looks like HTTP/1 to kprobe-http (a TLS record starts
 * with a byte 0x14-0x18, no method does), so an HTTPS request is counted once, here.
 */
#define HTTP1_SWEEP /* uprobe programs may not use bpf_timer: the agent runs tls_sweep */
#include "http1_engine.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Entry cookie bits. */
#define TLS_FN_WRITE 0x1 /* SSL_write / SSL_write_ex (else a read) */
#define TLS_FN_EX 0x2    /* SSL_read_ex / SSL_write_ex: returns 1/0, the byte count via arg 4 */

/* stats indices after the engine's (names in mod.ts, checked by its test). */
enum tls_stat {
	TLS_STAT_NO_SOCKET = HTTP_STAT_MAX, /* plaintext on a connection whose socket is unknown */
	TLS_STAT_CALLS_LOST = HTTP_STAT_MAX + 1, /* SSL calls whose entry state was lost (table full) */
	TLS_STAT_SSL_REUSED = HTTP_STAT_MAX + 2, /* an SSL pointer seen on a new socket: state reset */
	TLS_STAT_MAX = HTTP_STAT_MAX + 3,
};

/* One SSL_read/SSL_write in progress on a thread, from entry to exit. */
struct tls_call {
	__u64 ssl;
	__u64 buf;
	__u64 count_ptr; /* _ex: where the byte count goes */
	__u64 sock;      /* cookie of the first socket the call did I/O on; 0 none yet */
	struct http_peer peer; /* that socket's peer, when the peer labels are on */
	__u8 fn;         /* TLS_FN_* */
	__u8 client_only; /* not a target: only a client connection may be measured */
	__u8 _pad[6];
};

/*
 * A plain hash, not an LRU: an LRU may evict a live entry to make room before the map is full,
 * and a call whose entry was evicted would lose its plaintext. An entry whose exit never came
 * (the thread died inside the call) is overwritten by the thread's next call, or stays: at most
 * one per thread. A full map is counted (tls_calls_lost).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid: the thread */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

/*
 * Entries of tls_calls: SSL calls in progress anywhere. The socket programs run for every
 * socket read and write on the machine; while no SSL call is in progress (plain HTTP, or no TLS
 * traffic at all) they return before the per-thread lookup. An entry whose exit never comes
 * keeps this above zero, which only costs those lookups again.
 */
__u64 calls_in_flight = 0;

/*
 * Whether the socket programs (tls_sock_recv, tls_sock_send, tls_sock_state) are wanted: 0 until
 * the first SSL call of a measured process, then 1 for good. The agent attaches them when it
 * sees 1 (the plugin's attachOnDemand): attached from the start, their dispatch alone costs
 * every socket read and write of every process ~60-70 ns, ~200 ns per request of a plain-HTTP
 * nginx that never makes an SSL call.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} sockets_wanted SEC(".maps");

/*
 * The first SSL call: asks for the socket programs, once (the compare-and-swap picks one caller
 * among CPUs racing here), and wakes the agent's ring reader at once so it attaches them within
 * milliseconds rather than at its next poll timeout (200 ms). The wake-up is an 8-byte record
 * discarded with BPF_RB_FORCE_WAKEUP: the reader is woken and steps over it, and no decoder or
 * counter ever sees it (a record submitted for real would reach toObservation, and an ignored
 * record counts in redprobe_events_dropped_total{reason="ignored"}: a drop that is not one). A
 * full ring only delays the attach to that next poll.
 */
static __always_inline void want_sockets(void)
{
	__u32 zero = 0;
	__u32 *wanted = bpf_map_lookup_elem(&sockets_wanted, &zero);
	if (!wanted || *(volatile __u32 *)wanted)
		return;
	if (__sync_val_compare_and_swap(wanted, 0, 1) != 0)
		return;
	void *wake = bpf_ringbuf_reserve(&events, 8, 0);
	if (wake)
		bpf_ringbuf_discard(wake, BPF_RB_FORCE_WAKEUP);
}

/* The connection on each socket the SSL calls were seen on, for its close. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* socket cookie */
	__type(value, struct http_conn_key);
} tls_socks SEC(".maps");

SEC("uprobe")
int tls_enter(struct pt_regs *ctx)
{
	bool client_only;
	if (!http_measured(&client_only))
		return 0;
	want_sockets();
	__u64 fn = bpf_get_attach_cookie(ctx);
	struct tls_call call = {
		.ssl = PT_REGS_PARM1(ctx),
		.buf = PT_REGS_PARM2(ctx),
		.count_ptr = (fn & TLS_FN_EX) ? PT_REGS_PARM4(ctx) : 0,
		.fn = fn,
		.client_only = client_only,
	};
	__u64 thread = bpf_get_current_pid_tgid();
	bool known = bpf_map_lookup_elem(&tls_calls, &thread) != NULL;
	/* Overwrites an earlier call's state whose exit never came (a longjmp, a lost exit). */
	if (bpf_map_update_elem(&tls_calls, &thread, &call, BPF_ANY))
		redprobe_count(TLS_STAT_CALLS_LOST);
	else if (!known)
		__sync_fetch_and_add(&calls_in_flight, 1);
	return 0;
}

/*
 * Socket I/O by a thread inside an SSL call: that connection's socket (the first one only:
 * a call does all its I/O on its own socket).
 */
static __always_inline void note_socket(struct sock *sk)
{
	if (!*(volatile __u64 *)&calls_in_flight)
		return;
	__u64 thread = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &thread);
	if (!call || call->sock)
		return;
	call->sock = bpf_get_socket_cookie(sk);
	if (!peer_labels)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET)
		*(__u32 *)call->peer.addr = BPF_CORE_READ(sk, __sk_common.skc_daddr);
	else if (family == AF_INET6)
		BPF_CORE_READ_INTO(&call->peer.addr, sk, __sk_common.skc_v6_daddr);
	else
		return;
	/* A client's port is ephemeral: recorded for the client side's server only. */
	call->peer.port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	call->peer.family = family;
}

/* The peer the call's socket gave, as far as the connection's side has its labels on. */
static __always_inline void take_peer(struct http_conn *c, const struct http_peer *peer)
{
	if (!(peer_labels & (c->client ? PEER_SERVER : PEER_CLIENT)))
		return;
	c->peer = *peer;
	if (!c->client)
		c->peer.port = 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tls_sock_recv, struct sock *sk, int ret, int flags)
{
	note_socket(sk);
	return 0;
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tls_sock_send, struct sock *sk, int ret, int flags)
{
	note_socket(sk);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tls_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	__u64 cookie = bpf_get_socket_cookie((struct sock *)sk);
	struct http_conn_key *found = bpf_map_lookup_elem(&tls_socks, &cookie);
	if (!found)
		return 0;
	struct http_conn_key key = *found;
	struct http_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->sock == cookie)
		http_conn_closing(c, &key, newstate == TCP_CLOSE);
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&tls_socks, &cookie);
	return 0;
}

/* The connection of `call` as of now: its socket linked, a reused SSL pointer started afresh. */
static __always_inline struct http_conn *link_socket(struct http_conn *c, struct http_conn_key *key,
						     struct tls_call *call)
{
	if (!call->sock || c->sock == call->sock)
		return c;
	if (c->sock) {
		/* The SSL object was freed and its memory reused by a new connection. */
		redprobe_count(TLS_STAT_SSL_REUSED);
		http_conn_closing(c, key, true);
		return NULL;
	}
	c->sock = call->sock;
	if (!c->peer.family)
		take_peer(c, &call->peer);
	bpf_map_update_elem(&tls_socks, &call->sock, key, BPF_ANY);
	return c;
}

SEC("uprobe")
int tls_exit(struct pt_regs *ctx)
{
	__u64 thread = bpf_get_current_pid_tgid();
	struct tls_call *found = bpf_map_lookup_elem(&tls_calls, &thread);
	if (!found)
		return 0;
	struct tls_call call = *found;
	if (bpf_map_delete_elem(&tls_calls, &thread) == 0)
		__sync_fetch_and_sub(&calls_in_flight, 1);

	int ret = PT_REGS_RC(ctx);
	__u64 n = 0;
	if (call.fn & TLS_FN_EX) {
		if (ret != 1 || bpf_probe_read_user(&n, sizeof(n), (void *)call.count_ptr))
			return 0;
	} else if (ret > 0) {
		n = ret;
	}
	if (n == 0)
		return 0;
	__u32 total = n > 0x7fffffff ? 0x7fffffff : n;
	bool send = call.fn & TLS_FN_WRITE;
	__u32 tgid = thread >> 32;
	struct http_conn_key key = { .id = call.ssl, .tgid = tgid };
	struct http_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c)
		c = link_socket(c, &key, &call);
	if (c && c->client && redprobe_is_excluded(tgid)) {
		bpf_map_delete_elem(&conns, &key); /* another plugin measures this process's clients */
		return 0;
	}
	struct io_desc io = { .ptr = call.buf, .kind = IO_BUF };
	bool responding = c ? send != c->client : send;
	if (c && (c->closed || ignores_data(responding ? &c->resp : &c->req)))
		return 0;
	if (!c) {
		/* Tracked from its first request: read by a server (targets only), written by a client. */
		if (!send && call.client_only)
			return 0;
		__u64 head;
		__u32 len = peek_head(&io, total, &head);
		if (len == 0 || !starts_request(head, len))
			return 0;
		if (send && (redprobe_is_excluded(tgid) || redprobe_exe_is_excluded()))
			return 0;
		c = http_conn_create(&key, tgid, send);
		if (!c)
			return 0;
		if (call.sock) {
			c->sock = call.sock;
			take_peer(c, &call.peer);
			bpf_map_update_elem(&tls_socks, &call.sock, &key, BPF_ANY);
		} else {
			redprobe_count(TLS_STAT_NO_SOCKET);
		}
		responding = false;
	}
	if (!responding || !fast_response(c, &io, total))
		parse_io(c, &io, total, responding);
	return 0;
}

SEC("uprobe")
int tls_free(struct pt_regs *ctx)
{
	struct http_conn_key key = {
		.id = PT_REGS_PARM1(ctx),
		.tgid = bpf_get_current_pid_tgid() >> 32,
	};
	struct http_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c)
		http_conn_closing(c, &key, true);
	return 0;
}

SEC("syscall")
int tls_sweep(void *ctx)
{
	http1_sweep();
	return 0;
}
