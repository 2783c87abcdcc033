/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * libc allocator uprobes. One entry program for the whole malloc family (the
 * attach cookie says which function), one return program, one for free.
 * Only the outermost allocator call of a thread is reported: glibc's
 * realloc(NULL, n) calls malloc, memalign calls malloc, realloc(p, 0) calls
 * free, and those inner calls are the same allocation, not new ones.
 */
#pragma once

#include "stack.h"
#include "sample.h"

struct call_state {
	u64 size;
	u64 old_addr;
	u64 memptr; /* posix_memalign's result pointer */
	u64 sp;     /* stack pointer at entry: nested calls run below it */
	u8 kind;
	u8 depth;
};

/* Per-thread call state in task storage: no hashing on the hot path, freed with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct call_state);
} inflight SEC(".maps");

static __always_inline struct call_state *call_state(bool create)
{
	return bpf_task_storage_get(&inflight, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* in_allocator returns the kind of the allocator call the thread is inside, K_NONE if none. */
static __always_inline u8 in_allocator(u64 sp)
{
	struct call_state *st = call_state(false);
	if (st && st->depth && (sp == 0 || sp <= st->sp))
		return st->kind;
	return K_NONE;
}

SEC("uprobe")
int alloc_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid >> 32))
		return 0;
	u64 sp = ctx->sp;
	struct call_state *cur = call_state(true);
	if (!cur) {
		count_lost(LOST_INFLIGHT);
		return 0;
	}
	if (cur->depth) {
		if (sp <= cur->sp) { /* <=: glibc tail-calls malloc from realloc(NULL, n) */
			if (cur->depth < 255)
				cur->depth++;
			return 0;
		}
		count_lost(LOST_STALE); /* a return we never saw: start afresh */
	}

	u8 kind = bpf_get_attach_cookie(ctx);
	u64 a = ctx->di, b = ctx->si, c = ctx->dx;
	struct call_state st = { .sp = sp, .kind = kind, .depth = 1 };
	switch (kind) {
	case K_CALLOC:
		st.size = a * b;
		break;
	case K_REALLOC:
		st.old_addr = a;
		st.size = b;
		break;
	case K_REALLOCARRAY:
		st.old_addr = a;
		st.size = b * c;
		break;
	case K_POSIX_MEMALIGN:
		st.memptr = a;
		st.size = c;
		break;
	case K_ALIGNED_ALLOC:
	case K_MEMALIGN:
		st.size = b;
		break;
	default: /* malloc, valloc, pvalloc */
		st.size = a;
	}
	*cur = st;
	return 0;
}

/* emit_forgotten tells user space a picked block is gone (an unpicked realloc moved or freed it). */
static __always_inline void emit_forgotten(u64 pid_tgid, u64 addr)
{
	struct scratch *s = new_event(K_FREE, pid_tgid, false);
	if (!s)
		return;
	s->ev.addr = addr;
	s->ev.flags = F_WEIGHTED;
	submit(s);
}

/* sample_return counts the call in the exact totals and reports whether it was picked; picked
 * blocks are remembered so that their frees are reported, and the rest cost nothing more. */
static __always_inline bool sample_return(u64 pid_tgid, struct call_state *st, u64 ret, bool *untracked)
{
	u32 tgid = pid_tgid >> 32;
	bool realloc_kind = st->kind == K_REALLOC || st->kind == K_REALLOCARRAY;
	bool frees = realloc_kind && st->old_addr && st->size == 0;
	bool failed = st->kind == K_POSIX_MEMALIGN ? (int)ret != 0 : (!ret && !frees);
	bool pick = sampled(tgid, st->kind, st->size);
	if (frees)
		count_total(tgid, K_NONE, 0); /* realloc(p, 0): a free, but not a call of free (kind slot 0) */
	/* The old block of a realloc that moved or freed it: if it was picked, user space must hear. */
	if (realloc_kind && st->old_addr && !failed && ret != st->old_addr && forget_sampled(tgid, st->old_addr) && !pick)
		emit_forgotten(pid_tgid, st->old_addr);
	if (!pick || failed || frees)
		return pick; /* a picked failure or free is still reported, with its weight */
	u64 addr = ret;
	if (st->kind == K_POSIX_MEMALIGN)
		bpf_probe_read_user(&addr, sizeof(addr), (void *)st->memptr);
	if (addr && !remember_sampled(tgid, addr))
		*untracked = true; /* its free could not be reported: user space must not track it */
	return true;
}

SEC("uretprobe")
int alloc_return(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct call_state *cur = call_state(false);
	if (!cur || !cur->depth)
		return 0;
	if (cur->depth > 1) {
		cur->depth--;
		return 0;
	}
	struct call_state st = *cur;
	cur->depth = 0;

	u64 ret = ctx->ax;
	u8 flags = 0;
	bool untracked = false;
	if (cfg_sample_bytes && !sample_return(pid_tgid, &st, ret, &untracked))
		return 0;
	if (cfg_sample_bytes)
		flags = untracked ? F_WEIGHTED | F_UNTRACKED : F_WEIGHTED;
	struct scratch *s = new_event(st.kind, pid_tgid, true);
	if (!s)
		return 0;
	s->ev.flags = flags;
	s->ev.size = st.size;
	s->ev.old_addr = st.old_addr;
	if (st.kind == K_POSIX_MEMALIGN) {
		if ((int)ret == 0)
			bpf_probe_read_user(&s->ev.addr, sizeof(s->ev.addr), (void *)st.memptr);
		else
			s->ev.flags |= F_FAILED;
	} else {
		s->ev.addr = ret;
		bool frees = (st.kind == K_REALLOC || st.kind == K_REALLOCARRAY) && st.old_addr && st.size == 0;
		if (!ret && !frees)
			s->ev.flags |= F_FAILED;
	}
	/* At a return probe ip is already the caller's return address: the direct caller is frame 0. */
	capture_stack(ctx, s, ctx->ip, ctx->sp, ctx->bp);
	submit(s);
	return 0;
}

SEC("uprobe")
int free_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 ptr = ctx->di;
	if (!ptr || !traced(pid_tgid >> 32))
		return 0;
	if (in_allocator(ctx->sp) != K_NONE)
		return 0; /* realloc(p, 0) freeing p: reported by realloc's return */
	if (cfg_sample_bytes) {
		count_total(pid_tgid >> 32, K_FREE, 0);
		if (!forget_sampled(pid_tgid >> 32, ptr))
			return 0; /* not a picked block: counted, nothing to pair */
	}
	struct scratch *s = new_event(K_FREE, pid_tgid, false);
	if (!s)
		return 0;
	s->ev.addr = ptr;
	if (cfg_sample_bytes)
		s->ev.flags = F_WEIGHTED;
	/* The probe never moves past an instruction that writes sp, so [sp] is the return address:
	 * user space names the caller of a free whose block it never saw allocated. */
	bpf_probe_read_user(&s->ev.ip, sizeof(s->ev.ip), (void *)ctx->sp);
	submit(s);
	return 0;
}
