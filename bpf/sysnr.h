/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * The architecture's syscall facts: the numbers of the syscalls udstrace
 * watches, where a syscall's arguments are in the entry registers, and whether
 * the thread is in a compat (32-bit) syscall, whose numbers mean other calls.
 */
#pragma once

#include "udstrace.h"

#if defined(__TARGET_ARCH_x86)
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_mmap 9
#define NR_munmap 11
#define NR_brk 12
#define NR_mremap 25
#define NR_socket 41
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_bind 49
#define NR_listen 50
#define NR_socketpair 53
#define NR_accept4 288

#define TS_COMPAT 0x0002

/* sys_args reads a syscall's six arguments from its entry registers (rdi, rsi, rdx, r10, r8, r9):
 * plain loads, regs being the kernel's trusted pointer. */
static __always_inline void sys_args(struct pt_regs *regs, u64 *args)
{
	args[0] = regs->di;
	args[1] = regs->si;
	args[2] = regs->dx;
	args[3] = regs->r10;
	args[4] = regs->r8;
	args[5] = regs->r9;
}

/* sys_nr is the number of the syscall a thread is leaving (the raw sys_exit tracepoint has no id). */
static __always_inline long sys_nr(struct pt_regs *regs)
{
	return regs->orig_ax;
}

/* compat_syscall says whether the current thread is in a 32-bit syscall, numbered differently. */
static __always_inline bool compat_syscall(void)
{
	return bpf_get_current_task_btf()->thread_info.status & TS_COMPAT;
}
#else
#error "udstrace's syscall numbers are only written down for x86-64"
#endif
