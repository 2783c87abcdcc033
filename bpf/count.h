/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Count mode: one entry probe per call, aggregated in the kernel by
 * (process, kind, stack id). No return probe and
 * no free probe, so it costs one emulated trap per allocation; calls are
 * counted with the bytes asked, like an LD_PRELOAD counter, and frees are
 * not traced.
 *
 * Without return probes, depth cannot be tracked. In glibc the allocator
 * calls itself only by tail calls (realloc(NULL, n) jumps to malloc,
 * reallocarray to realloc), which keep the caller's stack pointer and return
 * address: an entry with the same two as the thread's previous realloc or
 * reallocarray entry is that tail call, not a new allocation. The return
 * address is the real one even under another tracer's return probe
 * (bpf/retaddr.h).
 *
 * The stack is unwound from the entry, where frame 0 is the allocator's own
 * pc: the same frames full mode takes at the return. With sampling
 * (sample.h), only the picked calls get a stack, sent to user space one by
 * one; a call whose stack needs the copy fallback is sent alone too.
 */
#pragma once

#include "memsys.h"

struct count_key {
	u32 tgid;
	u8 kind;
	u8 _pad[3];
	u64 stack; /* stack id; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct count_key);
	__type(value, struct count_val);
} counts SEC(".maps");


/* read_ret reads the return address at [sp], once: user memory reads are costly. Another
 * tracer's return probe is seen through (bpf/retaddr.h). */
static __always_inline u64 read_ret(u64 sp, u64 *ret, bool *have)
{
	if (!*have) {
		*ret = real_return(sp);
		*have = true;
	}
	return *ret;
}

/* tail_call_of reports whether this entry is the tail call the thread's last realloc-family entry
 * made; it reads the return address only when the stack pointer already matches. */
static __always_inline bool tail_call_of(struct thread_state *ts, u8 kind, u64 sp, u64 *ret, bool *have)
{
	if (kind != K_MALLOC && kind != K_REALLOC)
		return false;
	struct tail_state *t = &ts->tail;
	if (!t->kind || t->sp != sp || t->ret != read_ret(sp, ret, have))
		return false;
	if ((kind == K_MALLOC && t->kind == K_REALLOC) || (kind == K_REALLOC && t->kind == K_REALLOCARRAY)) {
		t->kind = kind; /* reallocarray -> realloc -> malloc chains on */
		return true;
	}
	return false;
}

/* count_stack_of unwinds from the entry; a call that needs the copy fallback is sent alone
 * (false): user space counts it. */
static __always_inline bool count_stack_of(struct pt_regs *ctx, struct thread_state *ts, u64 pid_tgid, u8 kind, u64 size, u64 *id)
{
	struct sys_event *hdr = &ts->hdr;
	fill_header(&hdr->a, EV_ALLOC, kind, pid_tgid, false); /* stamped only if it is sent */
	hdr->old_size = 0;
	hdr->aux = 0;
	hdr->fd = -1;
	hdr->a.flags = F_SAMPLED;
	hdr->a.size = size;
	struct start *from = &ts->from;
	from->pc = ctx->ip;
	from->sp = ctx->sp;
	from->fp = ctx->bp;
	from->alloc_ip = ctx->ip;
	from->exact = true;
	int copied = stack_and_emit(ctx, ts, SO_NO_EMIT);
	*id = hdr->a.stack;
	return !copied;
}

/* emit_sample sends a sampled call (kind, size, stack id) to user space. */
static __always_inline void emit_sample(u64 pid_tgid, u8 kind, u64 size, u64 stack)
{
	u64 queued;
	struct alloc_event *ev = reserve(sizeof(*ev), &queued);
	if (!ev)
		return;
	fill_header(ev, EV_ALLOC, kind, pid_tgid, true);
	ev->flags = F_SAMPLED;
	ev->size = size;
	ev->stack = stack;
	submit(ev, sizeof(*ev), queued);
}

SEC("uprobe")
int alloc_count(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u8 kind = bpf_get_attach_cookie(ctx);
	if (!traced(pid_tgid >> 32)) {
		untraced_count(pid_tgid >> 32, kind, ctx->sp);
		return 0;
	}
	struct thread_state *ts = thread_state(true);
	if (!ts) {
		count_lost(LOST_INFLIGHT);
		return 0;
	}
	u64 sp = ctx->sp, ret = 0;
	bool have = false;
	if (tail_call_of(ts, kind, sp, &ret, &have))
		return 0;
	if (kind == K_REALLOC || kind == K_REALLOCARRAY) {
		ts->tail.sp = sp;
		ts->tail.ret = read_ret(sp, &ret, &have);
		ts->tail.kind = kind;
	}
	u64 size = call_size(kind, ctx->di, ctx->si, ctx->dx);
	u64 id;
	if (cfg_sample_bytes) {
		if (sampled(pid_tgid >> 32, kind, size) && count_stack_of(ctx, ts, pid_tgid, kind, size, &id))
			emit_sample(pid_tgid, kind, size, id);
		return 0;
	}
	if (!count_stack_of(ctx, ts, pid_tgid, kind, size, &id))
		return 0; /* sent alone, with its copy */
	struct count_key key = { .tgid = pid_tgid >> 32, .kind = kind, .stack = id };
	struct count_val *v = bpf_map_lookup_elem(&counts, &key);
	if (!v) {
		struct count_val zero = {};
		bpf_map_update_elem(&counts, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&counts, &key);
		if (!v) {
			count_lost(LOST_COUNTS);
			return 0;
		}
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->bytes, size);
	return 0;
}
