/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Return addresses read at a function's entry, through other tracers'
 * return probes. A uretprobe (another udstrace, bpftrace, perf) replaces a
 * probed function's return address on the stack with the address of the
 * [uprobes] trampoline, the first slot of the process's xol area
 * (mm->uprobes_state.xol_area->vaddr), until the function returns; the kernel
 * keeps the real one in the thread's uprobe_task, in a list of return
 * instances, innermost first, each with the stack pointer it was taken at.
 * Count mode tells glibc's tail calls apart by return address (bpf/count.h):
 * read raw, the trampoline would make one call look like two.
 *
 * The kernel types are declared here as CO-RE flavours (name___udstrace):
 * relocated against the kernel's struct of the name before the ___, so this
 * concern stays out of vmlinux_min.h.
 */
#pragma once

#include "udstrace.h"

#define RI_WALK 8 /* return instances looked through: deeper ones belong to frames long gone */

struct return_instance___udstrace {
	unsigned long stack; /* sp at the probed function's entry: where the return address is */
	unsigned long orig_ret_vaddr;
	struct return_instance___udstrace *next;
} __attribute__((preserve_access_index));

struct uprobe_task___udstrace {
	struct return_instance___udstrace *return_instances;
} __attribute__((preserve_access_index));

struct xol_area___udstrace {
	unsigned long vaddr;
} __attribute__((preserve_access_index));

struct uprobes_state___udstrace {
	struct xol_area___udstrace *xol_area;
} __attribute__((preserve_access_index));

struct mm_struct___udstrace {
	struct uprobes_state___udstrace uprobes_state;
} __attribute__((preserve_access_index));

struct task_struct___udstrace {
	struct uprobe_task___udstrace *utask;
	struct mm_struct___udstrace *mm;
} __attribute__((preserve_access_index));

/* real_return reads the return address at a function's entry ([sp]); when another tracer's
 * return probe put its trampoline there, the address the kernel will return to instead. */
static __always_inline u64 real_return(u64 sp)
{
	u64 ret = 0;
	bpf_probe_read_user(&ret, sizeof(ret), (void *)sp);
	struct task_struct___udstrace *t = (void *)bpf_get_current_task_btf();
	struct return_instance___udstrace *ri = BPF_CORE_READ(t, utask, return_instances);
	if (!ri)
		return ret; /* no return probe pending on this thread: the common case, two reads */
	if (ret != BPF_CORE_READ(t, mm, uprobes_state.xol_area, vaddr))
		return ret;
	for (int i = 0; i < RI_WALK && ri; i++) {
		/* The instance taken at this sp: this function's, or (chained) the one its caller
		 * tail-called it from, which carries the same real return address. */
		if (BPF_CORE_READ(ri, stack) == sp)
			return BPF_CORE_READ(ri, orig_ret_vaddr);
		ri = BPF_CORE_READ(ri, next);
	}
	return ret;
}
