/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/* Building alloc events: header, user stack (frame-pointer walk or raw copy), ring buffer output. */
#pragma once

#include "udstrace.h"

/* An event as laid out in the ring buffer: the header, then as much stack as was reserved. */
struct scratch {
	struct alloc_event ev;
	u8 stack[MAX_STACK_BYTES];
};

/* stack_room is the stack payload an event reserves: a constant once .rodata is frozen. */
static __always_inline u32 stack_room(void)
{
	return cfg_stack_mode == STACK_FP ? MAX_FP_FRAMES * 8 : cfg_stack_bytes;
}

/* new_event reserves an event directly in the ring buffer (the stack is copied once, straight
 * into it) and fills its header; every path must then submit it. */
static __always_inline struct scratch *new_event(u8 kind, u64 pid_tgid, bool with_stack)
{
	u64 size = sizeof(struct alloc_event);
	if (with_stack)
		size += stack_room();
	struct scratch *s = ring_has_room(size) ? bpf_ringbuf_reserve(&events, size, 0) : 0;
	if (!s) {
		count_lost(LOST_RINGBUF);
		return 0;
	}
	struct alloc_event *ev = &s->ev;
	ev->type = EV_ALLOC;
	ev->kind = kind;
	ev->inside = K_NONE;
	ev->flags = 0;
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->stack_len = 0;
	ev->ts = bpf_ktime_get_ns();
	ev->size = 0;
	ev->addr = 0;
	ev->old_addr = 0;
	ev->old_size = 0;
	ev->aux = 0;
	ev->fd = -1;
	ev->ip = 0;
	ev->sp = 0;
	ev->bp = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	return s;
}

/*
 * capture_stack records where the user stack starts and either the kernel's
 * frame-pointer walk or a raw copy of the stack for CFI unwinding in user
 * space. The copy is shortened until it stays inside mapped stack memory.
 */
static __always_inline void capture_stack(void *ctx, struct scratch *s, u64 ip, u64 sp, u64 bp)
{
	s->ev.ip = ip;
	s->ev.sp = sp;
	s->ev.bp = bp;
	if (cfg_stack_mode == STACK_FP) {
		long n = bpf_get_stack(ctx, s->stack, MAX_FP_FRAMES * 8, BPF_F_USER_STACK);
		if (n > 0 && n <= MAX_FP_FRAMES * 8) {
			s->ev.stack_len = n;
			s->ev.flags |= F_STACK_FP;
		} else {
			count_lost(LOST_STACK);
		}
		return;
	}
	u32 n = cfg_stack_bytes;
	for (int i = 0; i < 8; i++) {
		if (n < 128 || n > MAX_STACK_BYTES)
			break;
		if (bpf_probe_read_user(s->stack, n, (void *)sp) == 0) {
			s->ev.stack_len = n;
			s->ev.flags |= F_STACK_COPY;
			if (i > 0)
				s->ev.flags |= F_STACK_SHORT;
			return;
		}
		n >>= 1;
	}
	count_lost(LOST_STACK);
}

/*
 * submit wakes the reader only once a batch has piled up: a wakeup per event
 * costs the traced thread an interrupt, several microseconds in a VM. Life-cycle
 * events wake it as usual, so nothing waits longer than the next exec or exit.
 */
static __always_inline void submit(struct scratch *s)
{
	u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(s, flags);
}

/* user_regs reads the registers the current thread entered the kernel with (for syscall tracepoints). */
static __always_inline void user_regs(u64 *ip, u64 *sp, u64 *bp)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	*ip = BPF_CORE_READ(regs, ip);
	*sp = BPF_CORE_READ(regs, sp);
	*bp = BPF_CORE_READ(regs, bp);
}
