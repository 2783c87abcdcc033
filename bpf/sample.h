/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Sampling (--sample-bytes N), for both modes: totals per process and
 * function stay exact, but only calls picked by a Poisson process over the
 * bytes asked (mean interval N bytes, as tcmalloc and Go's heap profiler do)
 * pay for a stack and, in full mode, for tracking: the costly part of a call
 * is paid about once per N bytes. User space weighs each picked call by the
 * inverse of its chance of being picked, 1 - exp(-size/N).
 */
#pragma once

#include "udstrace.h"

#define SAMPLE_DRAWS 4096

const volatile u64 cfg_sample_bytes = 0; /* 0: every call gets its stack */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SAMPLE_DRAWS);
	__type(key, u32);
	__type(value, u64); /* exponential draws of mean cfg_sample_bytes, filled by user space */
} sample_draws SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, s64); /* bytes until the thread's next sample; 0: not drawn yet */
} sample_left SEC(".maps");

/* Exact calls and bytes per process and kind; K_NONE counts realloc(p, 0)'s frees, and free's
 * bytes slot counts the frees that released a block (free(NULL) is a call, not a free). */
struct total_key {
	u32 tgid;
	u32 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct total_key);
	__type(value, struct count_val);
} totals SEC(".maps");

static __always_inline s64 sample_draw(void)
{
	u32 i = bpf_get_prandom_u32() % SAMPLE_DRAWS;
	u64 *d = bpf_map_lookup_elem(&sample_draws, &i);
	return d && *d ? (s64)*d : (s64)cfg_sample_bytes;
}

/* count_total adds calls to a process's exact totals of one function, without sampling. */
static __always_inline void count_total(u32 tgid, u8 kind, u64 size)
{
	struct total_key tk = { .tgid = tgid, .kind = kind };
	struct count_val *v = bpf_map_lookup_elem(&totals, &tk);
	if (!v) {
		struct count_val zero = {};
		bpf_map_update_elem(&totals, &tk, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&totals, &tk);
	}
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		__sync_fetch_and_add(&v->bytes, size);
	} else {
		count_lost(LOST_TOTALS);
	}
}

/* sampled adds the call to its process's exact totals and reports whether it gets a stack. */
static __always_inline bool sampled(u32 tgid, u8 kind, u64 size)
{
	count_total(tgid, kind, size);
	s64 *left = bpf_task_storage_get(&sample_left, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!left) {
		count_lost(LOST_INFLIGHT);
		return false;
	}
	if (*left == 0)
		*left = sample_draw();
	*left -= (s64)size;
	if (*left > 0)
		return false;
	*left = sample_draw(); /* memoryless: the next point is a fresh draw past this call */
	return true;
}

/*
 * A block belongs to an address space, not to a process: a child made by vfork (or clone with
 * CLONE_VM and not CLONE_THREAD) runs in its parent's until it execs, and what it allocates
 * there its parent may free. Such a child (and its threads) carries the tgid whose address
 * space it runs in; every other process's space is its own tgid. Set at fork, deleted at exec,
 * gone with the task.
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, u32);
} vm_space SEC(".maps");

u32 any_shared_vm = 0; /* set once a traced process shared its address space: until then none of this costs */

/* space_of is the address space the current thread of process tgid runs in, named by a tgid. */
static __always_inline u32 space_of(u32 tgid)
{
	if (!any_shared_vm)
		return tgid;
	u32 *s = bpf_task_storage_get(&vm_space, bpf_get_current_task_btf(), 0, 0);
	return s ? *s : tgid;
}

/* share_space gives child the address space parent runs in (tgid ptgid unless parent itself
 * shares one); only sampling's table of picked blocks needs it in the kernel. */
static __always_inline void share_space(struct task_struct *parent, struct task_struct *child, u32 ptgid)
{
	if (!cfg_sample_bytes)
		return;
	u32 *ps = any_shared_vm ? bpf_task_storage_get(&vm_space, parent, 0, 0) : 0;
	u32 space = ps ? *ps : ptgid;
	any_shared_vm = 1;
	u32 *cs = bpf_task_storage_get(&vm_space, child, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (cs)
		*cs = space;
	else
		count_lost(LOST_INFLIGHT); /* its picked blocks are keyed by its own tgid: their frees by the parent go unseen */
}

/* sampled_key names a live block that was picked, so that its free is reported. */
struct sampled_key {
	u32 space; /* the address space's tgid (space_of) */
	u32 _pad;
	u64 addr;
};

/* Not LRU: a forgotten live block would silently stay outstanding; a full table is counted as
 * lost instead, and user space deletes the entries of a process that exits or execs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sampled_key);
	__type(value, u8);
} sampled_blocks SEC(".maps");

/* forget_sampled reports whether addr was a picked block of tgid's address space, and forgets it. */
static __always_inline bool forget_sampled(u32 tgid, u64 addr)
{
	struct sampled_key k = { .space = space_of(tgid), .addr = addr };
	return bpf_map_delete_elem(&sampled_blocks, &k) == 0;
}

/* remember_sampled reports whether the table took the block; a full table is counted as lost. */
static __always_inline bool remember_sampled(u32 tgid, u64 addr)
{
	struct sampled_key k = { .space = space_of(tgid), .addr = addr };
	u8 one = 1;
	if (bpf_map_update_elem(&sampled_blocks, &k, &one, BPF_ANY)) {
		count_lost(LOST_SAMPLED);
		return false;
	}
	return true;
}

/* take_totals moves an exiting process's totals into its exit event, so the table never fills. */
static __always_inline void take_totals(u32 tgid, struct proc_event *ev)
{
	for (u32 k = K_NONE; k < HEAP_KINDS; k++) { /* K_NONE: frees by realloc(p, 0) */
		struct total_key tk = { .tgid = tgid, .kind = k };
		struct count_val *v = bpf_map_lookup_elem(&totals, &tk);
		if (!v)
			continue;
		if (ev)
			ev->totals[k] = *v;
		bpf_map_delete_elem(&totals, &tk);
	}
}
