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

#define WIN_WORDS 64 /* 512 bytes */
#define PATH_BYTES 256

/* A process's executable mappings as its threads found them, shared (bpf/modules.h). */
#define PROC_CACHE 32
struct proc_cache {
	u64 mm;
	u64 gen;
	u32 n;
	u32 _pad;
	struct map_entry maps[PROC_CACHE];
};

/* The part of the user stack in the thread's window (thread_state.win). */
struct window {
	u64 base; /* user address of win[0] */
	u64 len;  /* bytes of it that hold the stack (0: none) */
};

/* The unwinder's state that need not be on the BPF stack (bpf/unwind.h struct walk). */
struct walk_state {
	u64 h1, h2;        /* the stack id's hashes so far */
	u64 pending_frame; /* the frame the walk stopped at, encoded */
	struct window win;
};

/*
 * The thread's last complete walk: a walk is a function of the registers it starts from, the
 * address space and the stack words it reads, so when those are all the same again the stack
 * is the same, and its id is reused without walking (a loop allocating from one place).
 */
#define MEMO_READS 64
struct memo {
	u64 pc, sp, fp, alloc_ip, mm;
	u64 seq; /* mm->mm_lock_seq: moves on every change of the address space */
	u64 hi;  /* the end of the highest word read */
	u64 id;
	u32 n; /* words read, in addr[] and val[] */
	u8 valid;
	u8 recording;
	u8 overflow;
	u8 _pad;
	u64 addr[MEMO_READS];
	u64 val[MEMO_READS];
};

/* Count mode's last realloc-family entry, to tell glibc's internal tail calls (bpf/count.h). */
struct tail_state {
	u64 sp;
	u64 ret;
	u8 kind;
};

struct thread_state {
	struct call_state call;
	struct tail_state tail;
	struct walk_state wk;
	struct memo memo;
	/* The event being built and where its stack starts: here, not on the BPF stack, which the
	 * unwinder's nested calls need. */
	struct sys_event hdr;
	struct start from;
	/* The mapping cache is valid for one address space (mm) at one invalidation generation. */
	u64 mm;
	u64 gen;
	u32 nmaps;
	u32 victim; /* next entry to replace when the cache is full */
	u32 last;   /* the entry hit last */
	u32 _pad;
	struct map_entry maps[MAP_CACHE];
	struct stack_event st; /* frames being unwound, laid out as the EV_STACK record */
	u64 win[WIN_WORDS];    /* a window of the user stack: one read serves many frames */
	char path[2 * PATH_BYTES]; /* a file's path, as bpf/modules.h's file_path lays it out */
	struct proc_cache pc;      /* scratch for updating the process's shared cache */
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
