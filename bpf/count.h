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
 * With cfg_sample_bytes = N, totals per process and function stay exact, but
 * only calls picked by a Poisson process over the bytes asked (mean interval
 * N bytes, as tcmalloc and Go's heap profiler do) get a stack: the expensive
 * part of a call (reading the user stack) is paid about once per N bytes.
 * Each sampled call goes to user space, which weighs it by the inverse of its
 * chance of being picked, 1 - exp(-size/N).
 */
#pragma once

#include "udstrace.h"

struct count_key {
	u32 tgid;
	s32 stackid; /* frame-pointer walk from the entry; < 0: none */
	u64 ret;     /* return address at [rsp]: the direct caller, which that walk skips */
	u8 kind;
	u8 _pad[7];
};

struct count_val {
	u64 count;
	u64 bytes;
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

/* sampled adds the call to its process's exact totals and reports whether it gets a stack. */
static __always_inline bool sampled(u32 tgid, u8 kind, u64 size)
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
		count_lost(LOST_INFLIGHT);
	}
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

/* emit_sample sends a sampled call (kind, size, stack id, direct caller) to user space. */
static __always_inline void emit_sample(u64 pid_tgid, u8 kind, u64 size, s64 stackid, u64 ret)
{
	struct alloc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
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
