/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Per-thread state, in task storage: no table to fill, no hashing on the hot
 * path, freed with the thread. It holds the allocator call in flight, the
 * thread's cache of executable mappings, and the scratch frames of the stack
 * being unwound (per-CPU scratch would not survive a preempted probe).
 */
#pragma once

#include "udstrace.h"

struct call_state {
	u64 size;
	u64 old_addr;
	u64 memptr;   /* posix_memalign's result pointer */
	u64 sp;       /* stack pointer at entry: nested calls run below it */
	u64 entry_ip; /* where the probe fired: the allocator's own frame */
	u8 kind;
	u8 depth;
};

/* The regs a stack starts from, and whether frame 0 is the allocator (heap calls). */
struct start {
	u64 pc, sp, fp;
	u64 alloc_ip; /* heap calls: where the allocator's probe fired; 0: no allocator frame */
	bool exact;   /* pc is where execution is (an entry probe), not a return address */
};

struct thread_state {
	struct call_state call;
	/* The event being built and where its stack starts: here, not on the BPF stack, which the
	 * unwinder's nested calls need. */
	struct sys_event hdr;
	struct start from;
	/* The mapping cache is valid for one address space (mm) at one invalidation generation. */
	u64 mm;
	u64 gen;
	u32 nmaps;
	u32 victim; /* next entry to replace when the cache is full */
	struct map_entry maps[MAP_CACHE];
	struct stack_event st; /* frames being unwound, laid out as the EV_STACK record */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct thread_state);
} threads SEC(".maps");

static __always_inline struct thread_state *thread_state(bool create)
{
	return bpf_task_storage_get(&threads, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* in_allocator returns the kind of the allocator call the thread is inside, K_NONE if none. */
static __always_inline u8 in_allocator(u64 sp)
{
	struct thread_state *ts = thread_state(false);
	if (ts && ts->call.depth && (sp == 0 || sp <= ts->call.sp))
		return ts->call.kind;
	return K_NONE;
}
