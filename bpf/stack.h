/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * User stacks and event output. A stack is unwound in the kernel (unwind.h,
 * or the kernel's frame-pointer walk with --stack fp), its frames hashed into
 * a stack id, and only the id goes into the event; the frames of an id go to
 * user space once, the first time it is seen. Where a module's unwind table
 * is not loaded yet, the event carries a copy of the stack from that frame
 * on (EV_COPY), unwound in user space; with no room for a copy, the stack
 * stops at that frame and says so. Nothing here drops an event.
 */
#pragma once

#include "unwind.h"

/* Stack ids already sent, with a second hash of the frames: the same id with another second hash
 * is a collision, counted and sent on its own, never merged. LRU: an evicted id is sent again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 17);
	__type(key, u64);
	__type(value, u64);
} stack_seen SEC(".maps");

/* wake_flags wakes the reader when this record (size bytes, queued before it) makes the queue
 * cross cfg_wakeup_bytes, never on every record above it: each wakeup is an interrupt. The rest
 * is drained by the reader's timer. */
static __always_inline u64 wake_flags(u64 queued, u64 size)
{
	return queued < cfg_wakeup_bytes && queued + size >= cfg_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* reserve takes size bytes of the events ring, or counts a lost event; *queued is what was
 * queued before it, for submit's wakeup. */
static __always_inline void *reserve(u64 size, u64 *queued)
{
	*queued = ring_queued();
	void *p = ring_has_room(*queued, size) ? bpf_ringbuf_reserve(&events, size, 0) : 0;
	if (!p)
		count_lost(LOST_RINGBUF);
	return p;
}

static __always_inline void submit(void *p, u64 size, u64 queued)
{
	bpf_ringbuf_submit(p, wake_flags(queued, size));
}

/* copy_has_room says whether a stack copy may go out: only while the ring is less than half full,
 * so copies never crowd out the compact events behind them. */
static __always_inline bool copy_has_room(void)
{
	return ring_queued() + sizeof(struct copy_event) + cfg_stack_bytes + sizeof(struct stack_event) <=
	       cfg_ring_bytes / 2;
}

/* stack_id names the frames in w->ts->st, sending them to user space if the id is new; 0 when
 * there is no stack or its frames could not be sent. */
static __always_inline u64 stack_id(struct walk *w, u8 flags)
{
	u32 n = w->n;
	if (n == 0 || n > MAX_FRAMES)
		return 0;
	mix(w, (u64)n | (u64)flags << 16);
	u64 id = w->ts->wk.h1 ? w->ts->wk.h1 : 1, h2 = w->ts->wk.h2;
	bool stored = false;
	u64 *seen = bpf_map_lookup_elem(&stack_seen, &id);
	if (!seen) {
		stored = bpf_map_update_elem(&stack_seen, &id, &h2, BPF_NOEXIST) == 0;
		if (!stored) {
			seen = bpf_map_lookup_elem(&stack_seen, &id); /* another CPU stored it meanwhile */
			if (!seen)
				count_lost(TBL_STACK_IDS);
		}
	}
	if (seen) {
		if (*seen == h2)
			return id;
		count_stack(STK_COLLISION);
		id = h2 | 1ULL << 63; /* sent on its own each time, never stored */
	}
	struct stack_event *st = &w->ts->st;
	st->type = EV_STACK;
	st->flags = flags;
	st->n = n;
	st->id = id;
	u64 size = 16 + (u64)(n & (2 * MAX_FRAMES - 1)) * 8, queued = ring_queued();
	if (size > sizeof(*st) || !ring_has_room(queued, size) ||
	    bpf_ringbuf_output(&events, st, size, wake_flags(queued, size))) {
		if (stored)
			bpf_map_delete_elem(&stack_seen, &id); /* user space never got it: send it next time */
		count_lost(LOST_STACK);
		return 0;
	}
	count_stack(STK_NEW);
	return id;
}

/* fp_encode turns the kernel's raw frame-pointer walk in ts->st.frames into encoded frames. */
static long fp_encode(u64 i, struct walk *w)
{
	u32 k = w->n;
	if (k >= MAX_FRAMES)
		return 1;
	u64 pc = w->ts->st.frames[k & (MAX_FRAMES - 1)];
	u64 lpc = k == 0 && w->exact ? pc : pc - 1;
	struct map_entry *e = 0;
	enum lookup lk = cache_lookup(w->ts, w->tgid, lpc, &e);
	if (lk == LK_NOT_CODE)
		return 1; /* garbage the walk read where no frame pointer was: stop */
	u64 f = lk == LK_OK ? encode_frame(e, pc) : pc;
	w->ts->st.frames[k & (MAX_FRAMES - 1)] = f;
	w->n = k + 1;
	mix(w, f);
	return k + 1 >= w->limit ? 1 : 0;
}

/* What capture found: a stack id, or a copy to send (regs in w). */
struct captured {
	u64 id;
	u8 flags;
	bool copy;
};

/* capture_fp takes the kernel's frame-pointer walk. At an entry probe the walk misses the direct
 * caller (the allocator has not pushed rbp yet): it is at [sp]. */
static __always_inline void capture_fp(void *ctx, struct walk *w, struct start *s, struct captured *out)
{
	struct thread_state *ts = w->ts;
	long got;
	if (s->alloc_ip || s->exact)
		got = bpf_get_stack(ctx, &ts->st.frames[1], (MAX_FRAMES - 1) * 8, BPF_F_USER_STACK);
	else
		got = bpf_get_stack(ctx, &ts->st.frames[0], (MAX_FRAMES - 1) * 8, BPF_F_USER_STACK);
	if (got <= 0) {
		count_lost(LOST_STACK);
		return;
	}
	u32 n = (u64)got / 8;
	if (s->exact) { /* an entry probe: [the allocator's pc, its caller at [sp], the walk's callers] */
		ts->st.frames[0] = ts->st.frames[1];
		u64 ret = 0;
		bpf_probe_read_user(&ret, sizeof(ret), (void *)s->sp);
		ts->st.frames[1] = ret;
		n++;
	} else if (s->alloc_ip) { /* a return probe: [the allocator, the walk from its caller] */
		ts->st.frames[0] = s->alloc_ip;
		n++;
	}
	w->exact = s->exact || s->alloc_ip; /* frame 0 is the allocator's own pc, or a syscall's */
	w->limit = n;
	bpf_loop(MAX_FRAMES, fp_encode, w, 0);
	out->id = stack_id(w, 0);
}

/*
 * capture unwinds the current thread's stack. With a table it walks in the kernel; where it meets
 * a module whose table is still loading it asks for a copy of the stack from there on (out->copy,
 * the registers left in w), or, with no room or budget for one, stops and flags the stack. s is
 * ts->from (the memo compares against it).
 */
static __always_inline void capture(void *ctx, struct walk *w, struct thread_state *ts, u32 tgid,
				    struct start *s, struct captured *out)
{
	__builtin_memset(out, 0, sizeof(*out));
	/* Plain loads through the task's BTF pointer: no helper call on every event. */
	struct mm_struct *mmp = bpf_get_current_task_btf()->mm;
	u64 seq = bpf_core_field_exists(mmp->mm_lock_seq) ? mmp->mm_lock_seq.sequence : 1;
	if (cfg_stack_mode == STACK_TABLE) {
		ts->memo.recording = 0;
		ts->wk.win.len = 0;
		if (memo_key_matches(ts, mmp, seq) && memo_hit(ts)) {
			out->id = ts->memo.id;
			count_stack(STK_MEMO);
			return;
		}
	}
	cache_begin(ts, tgid, (u64)mmp);
	walk_init(w, ts, tgid, s->pc, s->sp, s->fp, s->exact);
	count_stack(STK_EVENTS);
	if (cfg_stack_mode == STACK_FP) {
		capture_fp(ctx, w, s, out);
		return;
	}
	if (cfg_stack_mode == STACK_TABLE) {
		ts->memo.valid = 0;
		ts->memo.n = 0;
		ts->memo.hi = 0;
		ts->memo.overflow = 0;
		ts->memo.recording = !(seq & 1); /* odd: the address space is being changed */
	}
	if (s->alloc_ip && !s->exact) { /* a return probe: the allocator's own frame first */
		struct map_entry *e = 0;
		enum lookup lk = cache_lookup(ts, tgid, s->alloc_ip, &e);
		if (lk == LK_OK)
			push(w, encode_frame(e, s->alloc_ip));
		else if (lk == LK_BUSY) {
			push(w, s->alloc_ip); /* raw: user space names it from the process's mappings */
			out->flags |= F_STACK_RAW;
		}
	}
	if (cfg_stack_mode == STACK_COPY) {
		out->id = stack_id(w, 0);
		out->copy = true;
		return;
	}
	walk_run(w);
	ts->memo.recording = 0;
	if (!w->pending) {
		out->id = stack_id(w, 0);
		if (out->id && !out->flags && !w->depth && !ts->memo.overflow && !(seq & 1)) {
			struct memo *m = &ts->memo;
			m->pc = s->pc;
			m->sp = s->sp;
			m->fp = s->fp;
			m->alloc_ip = s->alloc_ip;
			m->mm = (u64)mmp;
			m->seq = seq;
			m->id = out->id;
			m->valid = 1;
		}
		return;
	}
	struct module_info *m = module_info_of(w->pending_mod);
	u32 used = m ? __sync_fetch_and_add(&m->fallbacks, 1) : 0; /* no module: a busy mmap lock */
	if (used < cfg_fallback_max && copy_has_room()) {
		out->id = stack_id(w, 0);
		out->copy = true;
		count_stack(STK_FALLBACK);
		return;
	}
	push(w, w->ts->wk.pending_frame); /* at least the frame that stopped it */
	if (!w->pending_mod)
		out->flags |= F_STACK_RAW; /* a mapping it could not read: raw */
	out->flags |= F_STACK_TRUNC;
	out->id = stack_id(w, F_STACK_TRUNC);
	count_stack(STK_TRUNC);
}

/* fill_header fills the part every data event shares. */
static __always_inline void fill_header(struct alloc_event *a, u8 type, u8 kind, u64 pid_tgid, bool stamp)
{
	__builtin_memset(a, 0, sizeof(*a));
	a->type = type;
	a->kind = kind;
	a->inside = K_NONE;
	a->pid = pid_tgid >> 32;
	a->tid = (u32)pid_tgid;
	if (stamp)
		a->ts = bpf_ktime_get_ns();
}

/* emit_copy sends an event with size bytes of stack copied from the walk's frame (shortened,
 * halving, until it stays inside mapped stack). size must be a constant. */
static __always_inline void emit_copy(struct sys_event *hdr, struct walk *w, const u32 size)
{
	u64 queued;
	struct copy_event *ce = reserve(sizeof(struct copy_event) + size, &queued);
	if (!ce)
		return;
	hdr->a.type = EV_COPY;
	__builtin_memcpy(&ce->e, hdr, sizeof(*hdr));
	ce->ip = w->pc;
	ce->sp = w->sp;
	ce->bp = w->fp;
	ce->exact = w->exact;
	ce->len = 0;
	struct thread_state *ts = w->ts;
	ce->nmaps = ts->nmaps < MAP_CACHE ? ts->nmaps : MAP_CACHE;
	__builtin_memcpy(ce->maps, ts->maps, sizeof(ce->maps));
	u8 *buf = (u8 *)(ce + 1);
	u32 n = size;
	for (int i = 0; i < 8; i++) {
		if (n < 128 || n > size)
			break;
		if (bpf_probe_read_user(buf, n, (void *)w->sp) == 0) {
			ce->len = n;
			if (i > 0)
				ce->e.a.flags |= F_STACK_SHORT;
			break;
		}
		n >>= 1;
	}
	if (!ce->len)
		count_lost(LOST_STACK);
	submit(ce, sizeof(struct copy_event) + size, queued);
}

/* emit sends an allocation or syscall event with its stack: the id, or the copy capture asked for. */
static __always_inline void emit(struct sys_event *hdr, bool sys, struct walk *w, struct captured *c)
{
	hdr->a.stack = c->id;
	hdr->a.flags |= c->flags;
	if (!hdr->a.ts)
		hdr->a.ts = bpf_ktime_get_ns(); /* count mode stamps only what it sends */
	if (!c->copy) {
		u64 size = sys ? sizeof(struct sys_event) : sizeof(struct alloc_event);
		hdr->a.type = sys ? EV_SYS : EV_ALLOC;
		u64 queued;
		void *p = reserve(size, &queued);
		if (!p)
			return;
		if (sys)
			__builtin_memcpy(p, hdr, sizeof(struct sys_event));
		else
			__builtin_memcpy(p, hdr, sizeof(struct alloc_event));
		submit(p, size, queued);
		return;
	}
	/* The main thread's stack ends at start_stack: a copy need not reach past it, and a smaller
	 * record leaves the ring room for more. Other threads' stacks have no such bound here. */
	u64 need = cfg_stack_bytes;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (hdr->a.pid == hdr->a.tid) {
		u64 top = BPF_CORE_READ(task, mm, start_stack);
		if (top > w->sp && top - w->sp < need)
			need = top - w->sp + 64;
	}
	if (need <= 1024 && cfg_stack_bytes >= 1024)
		emit_copy(hdr, w, 1024);
	else if (need <= 2048 && cfg_stack_bytes >= 2048)
		emit_copy(hdr, w, 2048);
	else if (need <= 4096 && cfg_stack_bytes >= 4096)
		emit_copy(hdr, w, 4096);
	else
		emit_copy(hdr, w, cfg_stack_bytes);
}

enum stack_opts {
	SO_SYS = 1,      /* a syscall event (sys_event), else an allocator call (alloc_event) */
	SO_NO_EMIT = 2,  /* only the stack id (count mode aggregates it); a copy is still sent */
	SO_NO_STACK = 4, /* the event has no stack (a syscall made inside the allocator) */
	SO_ID_ONLY = 8,  /* only the stack id and its flags in ts->hdr, never an event (bpf/kmem.h): a
			  * stack that would need a copy is cut where the copy would start */
};

/*
 * stack_and_emit takes the current thread's stack from the registers in ts->from and sends the
 * event ts->hdr with it (or, with SO_NO_EMIT, puts only the stack id in ts->hdr.a.stack). It
 * returns 1 when the event went out with a copy of the stack. A global function: the verifier
 * checks it once, not once for every program and path that calls it.
 */
__noinline int stack_and_emit(void *ctx __arg_ctx, struct thread_state *ts __arg_nonnull, u32 opts)
{
	struct walk w;
	struct captured c = {};
	struct sys_event *hdr = &ts->hdr;
	if (!(opts & SO_NO_STACK))
		capture(ctx, &w, ts, bpf_get_current_pid_tgid() >> 32, &ts->from, &c);
	hdr->a.stack = c.id;
	if (opts & SO_ID_ONLY) {
		hdr->a.flags |= c.flags | (c.copy ? F_STACK_TRUNC : 0);
		return 0;
	}
	if ((opts & SO_NO_EMIT) && !c.copy)
		return 0;
	emit(hdr, opts & SO_SYS, &w, &c);
	return c.copy ? 1 : 0;
}

/* user_regs reads the registers the current thread entered the kernel with (for syscall tracepoints). */
static __always_inline void user_regs(u64 *ip, u64 *sp, u64 *bp)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	*ip = BPF_CORE_READ(regs, ip);
	*sp = BPF_CORE_READ(regs, sp);
	*bp = BPF_CORE_READ(regs, bp);
}
