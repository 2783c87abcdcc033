/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Socket-path evidence: syscalls on AF_UNIX sockets counted per process in
 * the kernel (no event per call), with the time of the first one. The
 * report compares allocations made after that time with these counts.
 */
#pragma once

#include "udstrace.h"

#define AF_UNIX 1
#define S_IFMT 0170000
#define S_IFSOCK 0140000

/* unix_fd reports whether the current process's fd is an AF_UNIX socket. */
static __always_inline bool unix_fd(u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return false;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return false;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk, __sk_common.skc_family) == AF_UNIX;
}

/* first_socket_call tells user space when a process makes its first AF_UNIX socket call, as it
 * happens: allocations before it need not be remembered to tell which came after (EV_SOCK). */
static __always_inline void first_socket_call(u32 tgid, u64 t)
{
	struct proc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_lost(LOST_RINGBUF);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_SOCK;
	ev->pid = tgid;
	ev->ts = t;
	bpf_ringbuf_submit(ev, 0);
}

static __always_inline void count_sock(u32 call)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sock_stats *st = bpf_map_lookup_elem(&sockstats, &tgid);
	if (!st) {
		struct sock_stats fresh = { .first_ns = bpf_ktime_get_ns() };
		if (bpf_map_update_elem(&sockstats, &tgid, &fresh, BPF_NOEXIST) == 0)
			first_socket_call(tgid, fresh.first_ns);
		st = bpf_map_lookup_elem(&sockstats, &tgid);
		if (!st) {
			count_lost(LOST_INFLIGHT);
			return;
		}
	}
	if (call < S_COUNT)
		__sync_fetch_and_add(&st->counts[call], 1);
}

static __always_inline int on_fd_call(struct trace_event_raw_sys_enter *ctx, u32 call)
{
	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (unix_fd(ctx->args[0]))
		count_sock(call);
	return 0;
}

static __always_inline int on_family_call(struct trace_event_raw_sys_enter *ctx, u32 call)
{
	if (!traced(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (ctx->args[0] == AF_UNIX)
		count_sock(call);
	return 0;
}

#define FD_CALL(name, call)                                          \
	SEC("tracepoint/syscalls/sys_enter_" #name)                  \
	int name##_enter(struct trace_event_raw_sys_enter *ctx)      \
	{                                                            \
		return on_fd_call(ctx, call);                        \
	}

SEC("tracepoint/syscalls/sys_enter_socket")
int socket_enter(struct trace_event_raw_sys_enter *ctx) { return on_family_call(ctx, S_SOCKET); }
SEC("tracepoint/syscalls/sys_enter_socketpair")
int socketpair_enter(struct trace_event_raw_sys_enter *ctx) { return on_family_call(ctx, S_SOCKETPAIR); }
FD_CALL(bind, S_BIND)
FD_CALL(listen, S_LISTEN)
FD_CALL(accept, S_ACCEPT)
FD_CALL(accept4, S_ACCEPT4)
FD_CALL(connect, S_CONNECT)
FD_CALL(read, S_READ)
FD_CALL(write, S_WRITE)
FD_CALL(sendto, S_SENDTO)
FD_CALL(recvfrom, S_RECVFROM)
FD_CALL(sendmsg, S_SENDMSG)
FD_CALL(recvmsg, S_RECVMSG)
FD_CALL(close, S_CLOSE)
