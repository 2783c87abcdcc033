/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Allocator uprobes, in whichever object a process's malloc binds to (glibc,
 * musl, jemalloc, tcmalloc, mimalloc...). One entry program for the whole
 * malloc family and the allocators' own entry points (the attach cookie says
 * which function), one return program, one for free.
 * Only the outermost allocator call of a thread is reported: glibc's
 * realloc(NULL, n) calls malloc, memalign calls malloc, realloc(p, 0) calls
 * free, and those inner calls are the same allocation, not new ones.
 */
#pragma once

#include "stack.h"
#include "sample.h"

SEC("uprobe")
int alloc_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 sp = ctx->sp;
	if (!traced(pid_tgid >> 32)) {
		untraced_enter(pid_tgid >> 32, sp);
		return 0;
	}
	struct thread_state *ts = thread_state(true);
	struct call_state *cur = ts ? &ts->call : 0;
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
	struct call_state st = { .sp = sp, .kind = kind, .depth = 1, .entry_ip = ctx->ip };
	st.size = call_size(kind, a, b, c);
	if (is_realloc_kind(kind) || is_free_kind(kind) || kind == K_XALLOCX)
		st.old_addr = a; /* a free kind's block; the block xallocx resizes */
	if (kind == K_POSIX_MEMALIGN)
		st.memptr = a;
	*cur = st;
	return 0;
}

/* emit_free sends a free: the block, and the caller of free (its return address). */
static __always_inline void emit_free(u64 pid_tgid, u8 kind, u64 addr, u8 flags, u64 caller)
{
	u64 queued;
	struct free_event *ev = reserve(sizeof(*ev), &queued);
	if (!ev)
		return;
	ev->type = EV_FREE;
	ev->kind = kind;
	ev->inside = K_NONE;
	ev->flags = flags;
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->_pad = 0;
	ev->ts = bpf_ktime_get_ns();
	ev->addr = addr;
	ev->caller = caller;
	submit(ev, sizeof(*ev), queued);
}

/* emit_forgotten tells user space a picked block is gone (an unpicked realloc moved or freed it). */
static __always_inline void emit_forgotten(u64 pid_tgid, u64 addr)
{
	emit_free(pid_tgid, K_FREE, addr, F_WEIGHTED, 0);
}

/* sample_return counts the call in the exact totals and reports whether it was picked; picked
 * blocks are remembered so that their frees are reported, and the rest cost nothing more. */
static __noinline bool sample_return(u64 pid_tgid, struct call_state *st, u64 ret, bool *untracked)
{
	u32 tgid = pid_tgid >> 32;
	bool realloc_kind = is_realloc_kind(st->kind);
	bool frees = (st->kind == K_REALLOC || st->kind == K_REALLOCARRAY) && st->old_addr && st->size == 0;
	bool xalloc = st->kind == K_XALLOCX; /* returns a size: the block grew in place if it is enough */
	bool failed = st->kind == K_POSIX_MEMALIGN ? (int)ret != 0 : xalloc ? ret < st->size : (!ret && !frees);
	bool pick = sampled(tgid, st->kind, st->size);
	if (frees)
		count_total(tgid, K_NONE, 0); /* realloc(p, 0): a free, but not a call of free (kind slot 0) */
	/* The old block of a realloc that moved or freed it: if it was picked, user space must hear. */
	if (realloc_kind && st->old_addr && !failed && ret != st->old_addr && forget_sampled(tgid, st->old_addr) && !pick)
		emit_forgotten(pid_tgid, st->old_addr);
	if (!pick || failed || frees)
		return pick; /* a picked failure or free is still reported, with its weight */
	u64 addr = xalloc ? st->old_addr : ret;
	if (st->kind == K_POSIX_MEMALIGN)
		bpf_probe_read_user(&addr, sizeof(addr), (void *)st->memptr);
	if (addr && !remember_sampled(tgid, addr))
		*untracked = true; /* its free could not be reported: user space must not track it */
	return true;
}

/* free_kind_return reports an allocator's own free (dallocx, sdallocx, operator delete) at its
 * return: those are probed like allocations, entry and return, so that the frees they make
 * inside (jemalloc's sized delete calls sdallocx, mimalloc's calls free) are not counted again.
 * caller is the return address. */
static __noinline void free_kind_return(u64 pid_tgid, u8 kind, u64 ptr, u64 caller)
{
	if (cfg_sample_bytes) {
		count_total(pid_tgid >> 32, kind, ptr ? 1 : 0); /* as free's: calls, and blocks released */
		if (!ptr || !forget_sampled(pid_tgid >> 32, ptr))
			return;
	}
	emit_free(pid_tgid, kind, ptr, cfg_sample_bytes ? F_WEIGHTED : 0, ptr ? caller : 0);
}

SEC("uretprobe")
int alloc_return(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	struct thread_state *ts = thread_state(false);
	if (!ts) {
		untraced_return();
		return 0;
	}
	if (!ts->call.depth)
		return 0;
	struct call_state *cur = &ts->call;
	if (cur->depth > 1) {
		cur->depth--;
		return 0;
	}
	struct call_state st = *cur;
	cur->depth = 0;

	if (is_free_kind(st.kind)) {
		free_kind_return(pid_tgid, st.kind, st.old_addr, ctx->ip);
		return 0;
	}
	u64 ret = ctx->ax;
	u8 flags = 0;
	bool untracked = false;
	if (cfg_sample_bytes && !sample_return(pid_tgid, &st, ret, &untracked))
		return 0;
	if (cfg_sample_bytes)
		flags = untracked ? F_WEIGHTED | F_UNTRACKED : F_WEIGHTED;
	struct sys_event *hdr = &ts->hdr;
	fill_header(&hdr->a, EV_ALLOC, st.kind, pid_tgid, true);
	hdr->old_size = 0;
	hdr->aux = 0;
	hdr->fd = -1;
	hdr->a.flags = flags;
	hdr->a.size = st.size;
	hdr->a.old_addr = st.old_addr;
	if (st.kind == K_POSIX_MEMALIGN) {
		if ((int)ret == 0)
			bpf_probe_read_user(&hdr->a.addr, sizeof(hdr->a.addr), (void *)st.memptr);
		else
			hdr->a.flags |= F_FAILED;
	} else if (st.kind == K_XALLOCX) {
		/* In place or not at all: the block keeps its address, resized when the size returned
		 * reaches the size asked. */
		hdr->a.addr = ret >= st.size ? st.old_addr : 0;
		if (ret < st.size)
			hdr->a.flags |= F_FAILED;
	} else {
		hdr->a.addr = ret;
		bool frees = (st.kind == K_REALLOC || st.kind == K_REALLOCARRAY) && st.old_addr && st.size == 0;
		if (!ret && !frees)
			hdr->a.flags |= F_FAILED;
	}
	/* At a return probe ip is the caller's return address; the allocator's own frame comes first. */
	struct start *from = &ts->from;
	from->pc = ctx->ip;
	from->sp = ctx->sp;
	from->fp = ctx->bp;
	from->alloc_ip = st.entry_ip;
	from->exact = false;
	stack_and_emit(ctx, ts, 0);
	return 0;
}

SEC("uprobe")
int free_enter(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u64 ptr = ctx->di;
	if (!traced(pid_tgid >> 32))
		return 0;
	if (in_allocator(ctx->sp) != K_NONE)
		return 0; /* realloc(p, 0) freeing p: reported by realloc's return */
	if (cfg_sample_bytes) {
		/* free's totals: calls (free(NULL) too) and, in the bytes slot, blocks released */
		count_total(pid_tgid >> 32, K_FREE, ptr ? 1 : 0);
		if (!ptr || !forget_sampled(pid_tgid >> 32, ptr))
			return 0; /* not a picked block: counted, nothing to pair */
	}
	/* The probe never moves past an instruction that writes sp, so [sp] is the return address:
	 * user space names the caller of a free whose block it never saw allocated. free(NULL) is
	 * a call (counted) that releases nothing: it needs no caller. */
	u64 caller = 0;
	if (ptr)
		bpf_probe_read_user(&caller, sizeof(caller), (void *)ctx->sp);
	emit_free(pid_tgid, K_FREE, ptr, cfg_sample_bytes ? F_WEIGHTED : 0, caller);
	return 0;
}
