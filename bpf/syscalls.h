/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Every syscall udstrace watches goes through two programs on the raw
 * sys_enter and sys_exit tracepoints, which pick out the few calls it wants
 * by number before anything else. Not one per-syscall tracepoint each: those
 * are perf events, and closing each one waits for its own RCU grace period
 * (22 of them took ~0.75 s at exit), and each sys_exit copy of the stack code
 * was verified again (~150 ms each at start). A raw tracepoint link detaches
 * without waiting. The per-syscall events are themselves a hook on these two
 * tracepoints that runs on every syscall and tests the number; here the test
 * is the switch below, the first thing each program does.
 */
#pragma once

#include "memsys.h"
#include "sockets.h"
#include "kmem.h"

/* Count mode traces no memory syscalls, but the threads' mapping caches must still hear of
 * mappings going away. */
const volatile bool cfg_count_mode = false;

/* sock_call is the socket counter of syscall nr, S_COUNT if it is none. */
static __always_inline u32 sock_call(long nr)
{
	switch (nr) {
	case NR_socket: return S_SOCKET;
	case NR_socketpair: return S_SOCKETPAIR;
	case NR_bind: return S_BIND;
	case NR_listen: return S_LISTEN;
	case NR_accept: return S_ACCEPT;
	case NR_accept4: return S_ACCEPT4;
	case NR_connect: return S_CONNECT;
	case NR_read: return S_READ;
	case NR_write: return S_WRITE;
	case NR_sendto: return S_SENDTO;
	case NR_recvfrom: return S_RECVFROM;
	case NR_sendmsg: return S_SENDMSG;
	case NR_recvmsg: return S_RECVMSG;
	case NR_close: return S_CLOSE;
	default: return S_COUNT;
	}
}

/* mem_kind is the kind of memory syscall nr, K_NONE if it is none. */
static __always_inline u8 mem_kind(long nr)
{
	switch (nr) {
	case NR_mmap: return K_MMAP;
	case NR_munmap: return K_MUNMAP;
	case NR_mremap: return K_MREMAP;
	case NR_brk: return K_BRK;
	default: return K_NONE;
	}
}

SEC("tp_btf/sys_enter")
int sys_enter(u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long nr = (long)ctx[1];
	u8 kind = mem_kind(nr);
	u32 call = sock_call(nr);
	if (kind == K_NONE && call == S_COUNT)
		return 0; /* nearly every syscall of the machine leaves here */
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (compat_syscall() || !traced(pid_tgid >> 32))
		return 0;
	if (call != S_COUNT) {
		if (sock_sys_enter(call, regs->di))
			ksock_enter(call); /* --kernel: its kernel allocations are the socket path's */
		return 0;
	}
	if (!cfg_count_mode) {
		mem_sys_enter(regs, kind, pid_tgid);
		return 0;
	}
	u64 args[6];
	sys_args(regs, args);
	if (may_replace_code(kind, args))
		invalidate_maps(pid_tgid >> 32);
	return 0;
}

/* Not attached in count mode. */
SEC("tp_btf/sys_exit")
int sys_exit(u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	if (cfg_kernel && sock_call(sys_nr(regs)) != S_COUNT)
		ksock_exit(ctx);
	if (mem_kind(sys_nr(regs)) == K_NONE || compat_syscall())
		return 0;
	return mem_sys_exit(ctx, (long)ctx[1]);
}
