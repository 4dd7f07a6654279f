// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/*
 * kprobe-http: HTTP/1.x server metrics for any process, from the kernel side, without kprobes.
 *
 * Hooks (all BTF tracepoints; no kprobes, no fentry, no tracefs needed):
 *   tp_btf/sock_recv_length     a socket read finished (read, readv, recvfrom, recvmsg)
 *   tp_btf/sock_send_length     a socket write finished (write, writev, sendto, sendmsg, sendfile)
 *   tp_btf/inet_sock_set_state  a TCP socket is closing (close, close_range, exit, shutdown, RST)
 *
 * Why the sock tracepoints rather than one syscall tracepoint per syscall: they fire only for
 * socket I/O (nginx's access-log write costs nothing), once per syscall, already knowing the
 * socket; the syscall's buffer arguments are still in the task's saved user registers. Keying
 * connections by the socket cookie (unique for the life of the kernel) means a reused fd can
 * never be confused with the connection it replaced, and every way a socket can be closed is
 * seen, including by exit and close_range, which make no close(2) call per fd.
 *
 * What the syscall moved goes through the HTTP/1 engine (bpf/http1_engine.h), which tls-uprobe
 * shares: framing, request/response pairing, timeouts, histograms.
 */
#include "http1_engine.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* x86-64 syscall numbers whose buffers we know how to find. */
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile 40
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_splice 275

/* Finds the current syscall's buffers from the registers saved at syscall entry. */
static __always_inline void syscall_io(bool send, struct io_desc *io)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	long nr = regs->orig_ax;
	__u64 arg2 = regs->si;

	io->kind = IO_UNSUPPORTED;
	io->cnt = 0;
	io->ptr = 0;
	if (nr == (send ? NR_write : NR_read) || nr == (send ? NR_sendto : NR_recvfrom)) {
		io->kind = IO_BUF;
		io->ptr = arg2;
	} else if (nr == (send ? NR_writev : NR_readv)) {
		io->kind = IO_IOV;
		io->ptr = arg2;
		io->cnt = regs->dx;
	} else if (nr == (send ? NR_sendmsg : NR_recvmsg)) {
		/* struct user_msghdr: msg_iov at 16, msg_iovlen at 24 */
		__u64 iov[2];
		if (bpf_probe_read_user(iov, sizeof(iov), (void *)(arg2 + 16)) == 0) {
			io->kind = IO_IOV;
			io->ptr = iov[0];
			io->cnt = iov[1];
		}
	} else if (send && (nr == NR_sendfile || nr == NR_splice)) {
		io->kind = IO_NONE;
	}
}


static __always_inline struct http_conn *create_conn(struct sock *sk, __u64 cookie, __u32 tgid,
						     bool client)
{
	if (!is_tcp(sk))
		return NULL;
	/*
	 * A socket with an upper-layer protocol is kernel TLS (kTLS, the only ULP that carries
	 * HTTP): its plaintext passes here, but the program also hands it to OpenSSL, where
	 * tls-uprobe counts it. Counted once, there. (No kernel of this project's machines has the
	 * tls module; this is not exercised by the tests.)
	 */
	if (BPF_CORE_READ((struct inet_connection_sock *)sk, icsk_ulp_ops))
		return NULL;
	struct http_conn_key key = { .id = cookie };
	struct http_conn *c = http_conn_create(&key, tgid, client);
	if (c)
		http_conn_set_peer(c, sk);
	return c;
}

static __always_inline int on_socket_io(struct sock *sk, int ret, int flags, bool send)
{
	if (ret <= 0 || (!send && (flags & MSG_PEEK)))
		return 0;
	bool client_only;
	if (!http_measured(&client_only))
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct http_conn_key key = { .id = cookie };
	struct http_conn *c = bpf_map_lookup_elem(&conns, &key);
	/*
	 * A connection is tracked from its first request: read by a server, written by a client.
	 * Without one, a read starts a server connection (targets only) and a write a client one.
	 */
	if (!c && (send ? client_mode == 0 : client_only))
		return 0;
	/* Client connections of a process another plugin measures (go-http's Go clients). */
	if (c && c->client && redprobe_is_excluded(c->tgid)) {
		bpf_map_delete_elem(&conns, &key); /* dropped uncounted: the other plugin has it */
		return 0;
	}
	/* The response direction: writes on a server connection, reads on a client one. */
	bool responding = c ? send != c->client : send;
	if (c && (c->closed || ignores_data(responding ? &c->resp : &c->req)))
		return 0; /* the common case for writes after the status line: decided cheaply */

	struct io_desc io;
	syscall_io(send, &io);
	if (!c) {
		__u64 head;
		__u32 n = peek_head(&io, ret, &head);
		if (n == 0 || !starts_request(head, n))
			return 0;
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (send && (redprobe_is_excluded(tgid) || redprobe_exe_is_excluded()))
			return 0;
		c = create_conn(sk, cookie, tgid, send);
		if (!c)
			return 0;
		responding = false;
	}
	if (io.kind == IO_NONE || io.kind == IO_UNSUPPORTED)
		count_only_io(c, ret, responding);
	else if (!responding || !fast_response(c, &io, ret))
		parse_io(c, &io, ret, responding);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_recv, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk, ret, flags, false);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(on_sock_send, struct sock *sk, int ret, int flags)
{
	return on_socket_io(sk, ret, flags, true);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	/* Closing from our side (close/exit/shutdown) or torn down (RST, end of TIME_WAIT). */
	if (newstate != TCP_FIN_WAIT1 && newstate != TCP_LAST_ACK && newstate != TCP_CLOSE)
		return 0;
	struct http_conn_key key = { .id = bpf_get_socket_cookie((struct sock *)sk) };
	struct http_conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c)
		http_conn_closing(c, &key, newstate == TCP_CLOSE);
	return 0;
}
