/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Count mode: one entry probe per call, aggregated in the kernel by
 * (process, kind, frame-pointer stack, return address). No return probe and
 * no free probe, so it costs one emulated trap per allocation; calls are
 * counted with the bytes asked, like an LD_PRELOAD counter, and frees are
 * not traced.
 *
 * Without return probes, depth cannot be tracked. In glibc the allocator
 * calls itself only by tail calls (realloc(NULL, n) jumps to malloc,
 * reallocarray to realloc), which keep the caller's stack pointer and return
 * address: an entry with the same two as the thread's previous realloc or
 * reallocarray entry is that tail call, not a new allocation.
 *
 * With sampling (sample.h), only the picked calls get a stack, sent to user
 * space one by one.
 */
#pragma once

#include "sample.h"

struct count_key {
	u32 tgid;
	s32 stackid; /* frame-pointer walk from the entry; < 0: none */
	u64 ret;     /* return address at [rsp]: the direct caller, which that walk skips */
	u8 kind;
	u8 _pad[7];
};

struct tail_state {
	u64 sp;
	u64 ret;
	u8 kind;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct count_key);
	__type(value, struct count_val);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__type(key, u32);
	__uint(value_size, MAX_FP_FRAMES * 8);
} stacks SEC(".maps");

/* emit_sample sends a sampled call (kind, size, stack id, direct caller) to user space. */
static __always_inline void emit_sample(u64 pid_tgid, u8 kind, u64 size, s64 stackid, u64 ret)
{
	struct alloc_event *ev = ring_has_room(sizeof(*ev)) ? bpf_ringbuf_reserve(&events, sizeof(*ev), 0) : 0;
	if (!ev) {
		count_lost(LOST_RINGBUF);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_ALLOC;
	ev->kind = kind;
	ev->inside = K_NONE;
	ev->flags = F_SAMPLED;
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->ts = bpf_ktime_get_ns();
	ev->size = size;
	ev->aux = (u64)stackid;
	ev->ip = ret;
	ev->fd = -1;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, 0);
}

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u32); /* tid */
	__type(value, struct tail_state);
} tails SEC(".maps");

/* read_ret reads the return address at [sp], once: user memory reads are costly. */
static __always_inline u64 read_ret(u64 sp, u64 *ret, bool *have)
{
	if (!*have) {
		bpf_probe_read_user(ret, sizeof(*ret), (void *)sp);
		*have = true;
	}
	return *ret;
}

/* tail_call_of reports whether this entry is the tail call the thread's last realloc-family entry
 * made; it reads the return address only when the stack pointer already matches. */
static __always_inline bool tail_call_of(u32 tid, u8 kind, u64 sp, u64 *ret, bool *have)
{
	if (kind != K_MALLOC && kind != K_REALLOC)
		return false;
	struct tail_state *t = bpf_map_lookup_elem(&tails, &tid);
	if (!t || t->sp != sp || t->ret != read_ret(sp, ret, have))
		return false;
	if ((kind == K_MALLOC && t->kind == K_REALLOC) || (kind == K_REALLOC && t->kind == K_REALLOCARRAY)) {
		t->kind = kind; /* reallocarray -> realloc -> malloc chains on */
		return true;
	}
	return false;
}

SEC("uprobe")
int alloc_count(struct pt_regs *ctx)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	if (!traced(pid_tgid >> 32))
		return 0;
	u8 kind = bpf_get_attach_cookie(ctx);
	u64 sp = ctx->sp, ret = 0;
	bool have = false;
	if (tail_call_of(tid, kind, sp, &ret, &have))
		return 0;
	if (kind == K_REALLOC || kind == K_REALLOCARRAY) {
		struct tail_state t = { .sp = sp, .ret = read_ret(sp, &ret, &have), .kind = kind };
		bpf_map_update_elem(&tails, &tid, &t, BPF_ANY);
	}
	u64 a = ctx->di, b = ctx->si, c = ctx->dx, size;
	switch (kind) {
	case K_CALLOC:
		size = a * b;
		break;
	case K_REALLOC:
	case K_ALIGNED_ALLOC:
	case K_MEMALIGN:
		size = b;
		break;
	case K_REALLOCARRAY:
		size = b * c;
		break;
	case K_POSIX_MEMALIGN:
		size = c;
		break;
	default:
		size = a;
	}
	if (cfg_sample_bytes) {
		if (sampled(pid_tgid >> 32, kind, size)) {
			s64 id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
			if (id < 0)
				count_lost(LOST_STACK);
			emit_sample(pid_tgid, kind, size, id, read_ret(sp, &ret, &have));
		}
		return 0;
	}
	struct count_key key = { .tgid = pid_tgid >> 32, .kind = kind, .ret = read_ret(sp, &ret, &have) };
	key.stackid = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (key.stackid < 0)
		count_lost(LOST_STACK);
	struct count_val *v = bpf_map_lookup_elem(&counts, &key);
	if (!v) {
		struct count_val zero = {};
		bpf_map_update_elem(&counts, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&counts, &key);
		if (!v) {
			count_lost(LOST_INFLIGHT);
			return 0;
		}
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->bytes, size);
	return 0;
}
