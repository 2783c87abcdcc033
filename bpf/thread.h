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
#include "retaddr.h"

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

/*
 * A thread of a process the targets table had no room for (bpf/procs.h): not traced, but its
 * allocator calls are counted as lost, so a full table is never silent. Marked at fork, inherited
 * by its threads and children; task storage dies with the task. Outermost calls only, told as
 * the traced path tells them: by depth in full mode, by glibc's tail calls in count mode.
 */
struct untraced {
	u64 sp;    /* full mode: sp at the outermost call's entry; count mode: the last realloc-family entry's */
	u64 ret;   /* count mode: that entry's return address */
	u8 depth;  /* full mode: allocator calls nested; count mode: the kind of that entry */
	u8 _pad[7];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct untraced);
} untraced_tasks SEC(".maps");

u32 any_untraced = 0; /* set once a process could not be traced: until then none of this costs */

/* mark_untraced marks task t untraced; process: t starts a process, counted as one not traced. */
static __always_inline void mark_untraced(struct task_struct *t, bool process)
{
	any_untraced = 1;
	if (process)
		count_lost(LOST_PROCS);
	bpf_task_storage_get(&untraced_tasks, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

/* untraced_self is the current thread's mark, if its process could not be traced. */
static __always_inline struct untraced *untraced_self(u32 tgid)
{
	if (!cfg_filter || !any_untraced)
		return 0;
	struct untraced *u = bpf_task_storage_get(&untraced_tasks, bpf_get_current_task_btf(), 0, 0);
	return u && in_scope(tgid) ? u : 0;
}

/* untraced_enter counts an untraced thread's outermost allocator call (full mode, at entry). */
static __always_inline void untraced_enter(u32 tgid, u64 sp)
{
	struct untraced *u = untraced_self(tgid);
	if (!u)
		return;
	if (u->depth && sp <= u->sp) { /* nested: realloc(NULL, n) calling malloc */
		if (u->depth < 255)
			u->depth++;
		return;
	}
	u->sp = sp;
	u->depth = 1;
	count_lost(LOST_PROC_CALLS);
}

/* untraced_return ends an untraced thread's allocator call (full mode). */
static __always_inline void untraced_return(void)
{
	if (!any_untraced)
		return;
	struct untraced *u = bpf_task_storage_get(&untraced_tasks, bpf_get_current_task_btf(), 0, 0);
	if (u && u->depth)
		u->depth--;
}

/* untraced_count counts an untraced thread's call in count mode: an entry with the sp and return
 * address of its last realloc-family entry is glibc's tail call from it, not a call (bpf/count.h). */
static __always_inline void untraced_count(u32 tgid, u8 kind, u64 sp)
{
	struct untraced *u = untraced_self(tgid);
	if (!u)
		return;
	u64 ret = real_return(sp);
	bool tail = u->sp == sp && u->ret == ret &&
		    ((kind == K_MALLOC && u->depth == K_REALLOC) || (kind == K_REALLOC && u->depth == K_REALLOCARRAY));
	u->depth = kind == K_REALLOC || kind == K_REALLOCARRAY ? kind : 0;
	u->sp = sp;
	u->ret = ret;
	if (!tail)
		count_lost(LOST_PROC_CALLS);
}
