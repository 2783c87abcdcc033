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
	struct file *f = fd_file(fd);
	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return false;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk, __sk_common.skc_family) == AF_UNIX;
}

/* first_socket_call tells user space when a process makes its first AF_UNIX socket call, as it
 * happens: allocations before it need not be remembered to tell which came after (EV_SOCK). */
static __always_inline void first_socket_call(u32 tgid, u64 t)
{
	struct proc_event *ev = new_proc_event(EV_SOCK, tgid);
	if (!ev)
		return;
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
			count_lost(LOST_SOCKETS);
			return;
		}
	}
	if (call < S_COUNT)
		__sync_fetch_and_add(&st->counts[call], 1);
}

/* sock_sys_enter counts a traced process's socket syscall (call, its first argument) when it is on
 * an AF_UNIX socket: socket and socketpair by family, the others by file descriptor; true if it is. */
static __always_inline bool sock_sys_enter(u32 call, u64 arg0)
{
	bool unix_sock = call == S_SOCKET || call == S_SOCKETPAIR ? arg0 == AF_UNIX : unix_fd(arg0);
	if (unix_sock)
		count_sock(call);
	return unix_sock;
}
