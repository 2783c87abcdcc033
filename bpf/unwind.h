/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * The in-kernel unwinder: call-frame information compiled by user space
 * (pkg/ktable) into rows sorted by file offset, each naming a rule in a
 * dictionary shared by all modules. A frame is found by binary search in its
 * module's rows; the rule says how to find the caller's stack pointer (the
 * CFA), return address and frame pointer. Frame pointers are followed only
 * where a module has no CFI, or no row covers the address.
 *
 * Rules use DWARF register numbers, so the format is the same for every
 * architecture; the walker below implements x86-64.
 */
#pragma once

#include "modules.h"

#define DW_FP 6  /* rbp */
#define DW_SP 7  /* rsp */
#define SEARCH_STEPS 17 /* rows per page: up to 2^16 */
#define PAGE_SHIFT_ROWS 12

/* enum CFAKind and RegRuleKind of pkg/unwind. */
enum cfa_kind { CFA_NONE, CFA_REG_OFFSET, CFA_DEREF, CFA_PLT, CFA_UNSUPPORTED };
enum reg_kind { R_SAME, R_UNDEFINED, R_OFFSET, R_VAL_OFFSET, R_REGISTER, R_AT_REG, R_UNSUPPORTED };

#define RULE_SIGNAL 1

struct unwind_rule {
	u8 cfa_kind;
	u8 cfa_reg;
	u8 ra_kind;
	u8 ra_reg;
	u8 fp_kind;
	u8 fp_reg;
	u8 aux; /* CFA_PLT: threshold | shift << 4 */
	u8 flags;
	s32 cfa_off;
	s16 ra_off;
	s16 fp_off;
};

/* Rows: file offset << 32 | rule index, sorted, per page a contiguous run whose first row is at
 * the page's start. Written by user space through mmap; sized at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 22);
	__type(key, u32);
	__type(value, u64);
} unwind_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, u32);
	__type(value, struct unwind_rule);
} unwind_rules SEC(".maps");

/* Pages: first row | count << 32 | state << 48, written by user space through mmap. */
enum page_state { PAGE_NONE = 0, PAGE_LOADED = 1, PAGE_ASKED = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1 << 18); /* 1 GiB of executable segments */
	__type(key, u32);
	__type(value, u64);
} unwind_pages SEC(".maps");

/* The walk in progress: the frame's registers, and the frames and hashes so far. */
struct walk {
	struct thread_state *ts; /* the rest of the walk's state is in ts->wk, off the BPF stack */
	u64 pc, sp, fp;
	u32 tgid;
	u32 n; /* frames in ts->st.frames */
	u32 limit; /* --stack fp: frames the kernel's walk returned */
	bool fp_ok;
	bool exact;   /* pc is where execution is (frame 0, or above a signal frame), not a return address */
	bool pending; /* stopped at a module whose table is not loaded: the registers are that frame's */
	bool depth;   /* stopped at the frame limit */
	u32 pending_mod;
};

static __always_inline void mix(struct walk *w, u64 f)
{
	w->ts->wk.h1 = (w->ts->wk.h1 ^ f) * 0x9e3779b97f4a7c15ULL;
	w->ts->wk.h1 ^= w->ts->wk.h1 >> 32;
	w->ts->wk.h2 = (w->ts->wk.h2 ^ f) * 0xc2b2ae3d27d4eb4fULL;
	w->ts->wk.h2 ^= w->ts->wk.h2 >> 29;
}

/* push appends an encoded frame; false once the stack is full. */
static __always_inline bool push(struct walk *w, u64 f)
{
	u32 n = w->n;
	if (n >= MAX_FRAMES) {
		w->depth = true;
		return false;
	}
	w->ts->st.frames[n & (MAX_FRAMES - 1)] = f;
	w->n = n + 1;
	mix(w, f);
	return true;
}

/* read_stack reads a word of the user stack for a walk: from the thread's window of the stack
 * when it holds the word, else reloading the window there (a walk only moves up the stack), else
 * by itself. One read of 512 bytes serves most frames of a walk, where a read per word would cost
 * ~100 ns each. A global function, so the verifier checks it once. Returns 1 on success. */
__noinline int read_stack(struct window *win __arg_nonnull, struct thread_state *ts __arg_nonnull, u64 addr, u64 *dst __arg_nonnull)
{
	if (!(addr & 7)) {
		if (addr < win->base || addr + 8 > win->base + win->len) {
			win->len = 0;
			win->base = addr;
			if (bpf_probe_read_user(ts->win, sizeof(ts->win), (void *)addr) == 0)
				win->len = sizeof(ts->win);
			else if (bpf_probe_read_user(ts->win, 64, (void *)addr) == 0)
				win->len = 64; /* near the top of a stack */
		}
		if (addr >= win->base && addr + 8 <= win->base + win->len) {
			*dst = ts->win[((addr - win->base) >> 3) & (WIN_WORDS - 1)];
			goto got;
		}
	}
	if (bpf_probe_read_user(dst, sizeof(*dst), (void *)addr))
		return 0;
got:
	if (ts->memo.recording) {
		u32 n = ts->memo.n;
		if (n < MEMO_READS) {
			ts->memo.addr[n] = addr;
			ts->memo.val[n] = *dst;
			ts->memo.n = n + 1;
			if (addr + 8 > ts->memo.hi)
				ts->memo.hi = addr + 8;
		} else {
			ts->memo.overflow = 1;
		}
	}
	return 1;
}

/* memo_key_matches says whether the thread's last complete walk started from the same registers
 * (ts->from) in the same address space at the same generation: then memo_hit checks its words. */
static __always_inline bool memo_key_matches(struct thread_state *ts, struct mm_struct *mm, u64 seq)
{
	struct memo *m = &ts->memo;
	struct start *s = &ts->from;
	return m->valid && m->pc == s->pc && m->sp == s->sp && m->fp == s->fp && m->alloc_ip == s->alloc_ip &&
	       m->mm == (u64)mm && m->seq == seq && !(seq & 1);
}

/* memo_hit reports whether every stack word the thread's last complete walk read is unchanged
 * (its key matched). A global function: its loop is checked once. */
__noinline int memo_hit(struct thread_state *ts __arg_nonnull)
{
	struct memo *m = &ts->memo;
	u64 sp = ts->from.sp;
	/* One read of just the stack the walk read (usually well under the window). */
	u64 span = m->hi > sp ? m->hi - sp : 0;
	u32 size = (span + 63) & ~63ULL;
	if (size == 0 || size > sizeof(ts->win))
		size = sizeof(ts->win);
	if (bpf_probe_read_user(ts->win, size, (void *)sp) == 0) {
		ts->wk.win.base = sp;
		ts->wk.win.len = size;
	}
	for (int i = 0; i < MEMO_READS; i++) {
		if (i >= m->n)
			return 1;
		u64 v;
		if (!read_stack(&ts->wk.win, ts, m->addr[i], &v) || v != m->val[i])
			return 0;
	}
	return 1;
}

static __always_inline bool read_user(struct walk *w, u64 *dst, u64 addr)
{
	return read_stack(&w->ts->wk.win, w->ts, addr, dst);
}

struct search {
	u32 lo, hi; /* rows [lo, hi) still in play */
	u32 off;
};

/* search_step halves the range: afterwards lo is the first row past off. */
static long search_step(u64 i, struct search *s)
{
	if (s->lo >= s->hi)
		return 1;
	u32 mid = s->lo + (s->hi - s->lo) / 2;
	u64 *r = bpf_map_lookup_elem(&unwind_rows, &mid);
	if (!r)
		return 1;
	if ((*r >> 32) > s->off)
		s->hi = mid;
	else
		s->lo = mid + 1;
	return 0;
}

/* ask_page asks user space for a page of rows, once: the first walk to need it swaps the entry
 * from none (as it read it, e) to asked. */
static __always_inline void ask_page(u64 *entry, u64 e, u32 mod, u32 page)
{
	u64 asked = (e & ~(0xffULL << 48)) | (u64)PAGE_ASKED << 48;
	if (__sync_val_compare_and_swap(entry, e, asked) != e)
		return; /* another thread asked, or it was loaded, meanwhile */
	struct proc_event *ev = bpf_ringbuf_reserve(&requests, sizeof(*ev), 0);
	if (!ev) {
		__sync_val_compare_and_swap(entry, asked, e); /* nobody was told: ask again next time */
		count_stack(STK_REQ_LOST);
		return;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_PAGE;
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->ts = bpf_ktime_get_ns();
	ev->mod = mod;
	ev->pgoff = page;
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP); /* stacks wait for it */
}

enum row_result { ROW_FOUND, ROW_NONE, ROW_PENDING };

/* find_row finds the rule covering file offset off of a ready module: from its page's rows, or
 * ROW_PENDING (and a request) when the page is not loaded yet. */
static __always_inline enum row_result find_row(struct module_info *m, u32 mod, u64 off, struct unwind_rule **out)
{
	u64 pg = off >> PAGE_SHIFT_ROWS;
	if (pg < m->page_base || pg - m->page_base >= m->npages)
		return ROW_NONE; /* outside the module's executable segments */
	u32 idx = m->page_first + (u32)(pg - m->page_base);
	u64 *entry = bpf_map_lookup_elem(&unwind_pages, &idx);
	if (!entry)
		return ROW_NONE;
	u64 e = *entry;
	u8 state = e >> 48;
	if (state != PAGE_LOADED) {
		if (state == PAGE_NONE)
			ask_page(entry, e, mod, (u32)pg);
		return ROW_PENDING;
	}
	u32 first = (u32)e, count = (e >> 32) & 0xffff;
	struct search s = { .lo = first, .hi = first + count, .off = off };
	bpf_loop(SEARCH_STEPS + 1, search_step, &s, 0);
	if (s.lo != s.hi || s.lo <= first)
		return ROW_NONE;
	u32 at = s.lo - 1;
	u64 *r = bpf_map_lookup_elem(&unwind_rows, &at);
	if (!r)
		return ROW_NONE;
	u32 rule = (u32)*r;
	*out = bpf_map_lookup_elem(&unwind_rules, &rule);
	return *out ? ROW_FOUND : ROW_NONE;
}

static __always_inline bool reg_value(struct walk *w, u8 reg, u64 *v)
{
	if (reg == DW_SP) {
		*v = w->sp;
		return true;
	}
	if (reg == DW_FP && w->fp_ok) {
		*v = w->fp;
		return true;
	}
	return false;
}

/* recover evaluates one register rule of the caller. */
static __always_inline bool recover(struct walk *w, u8 kind, u8 reg, s64 off, u64 cfa, u64 *v)
{
	u64 base;
	switch (kind) {
	case R_OFFSET:
		return read_user(w, v, cfa + off);
	case R_VAL_OFFSET:
		*v = cfa + off;
		return true;
	case R_AT_REG:
		return reg_value(w, reg, &base) && read_user(w, v, base + off);
	case R_REGISTER:
		return reg_value(w, reg, v);
	}
	return false;
}

/* step_cfi unwinds one frame with its rule; false ends the walk. */
static __always_inline bool step_cfi(struct walk *w, struct unwind_rule *r)
{
	u64 cfa = 0, base;
	switch (r->cfa_kind) {
	case CFA_REG_OFFSET:
		if (!reg_value(w, r->cfa_reg, &base))
			return false;
		cfa = base + (s64)r->cfa_off;
		break;
	case CFA_DEREF:
		if (!reg_value(w, r->cfa_reg, &base) || !read_user(w, &cfa, base + (s64)r->cfa_off))
			return false;
		break;
	case CFA_PLT:
		cfa = w->sp + (s64)r->cfa_off;
		if ((w->pc & 15) >= (r->aux & 15))
			cfa += 1ULL << (r->aux >> 4);
		break;
	default:
		return false;
	}
	if (r->ra_kind == R_UNDEFINED || r->ra_kind == R_SAME)
		return false; /* the outermost frame (x86-64 never keeps the return address in a register) */
	u64 ra, fp = w->fp;
	if (!recover(w, r->ra_kind, r->ra_reg, r->ra_off, cfa, &ra))
		return false;
	bool fp_ok = w->fp_ok;
	if (r->fp_kind != R_SAME)
		fp_ok = recover(w, r->fp_kind, r->fp_reg, r->fp_off, cfa, &fp);
	if (cfa <= w->sp)
		return false; /* the stack only grows down: anything else is a loop */
	w->pc = ra;
	w->sp = cfa;
	w->fp = fp;
	w->fp_ok = fp_ok;
	w->exact = r->flags & RULE_SIGNAL;
	return true;
}

/* step_fp follows the frame-pointer chain: CFA = FP + 16, RA = [FP + 8], FP = [FP]. */
static __always_inline bool step_fp(struct walk *w)
{
	if (!w->fp_ok || w->fp < w->sp || (w->fp & 7))
		return false;
	u64 next, ra;
	if (!read_user(w, &next, w->fp) || !read_user(w, &ra, w->fp + 8))
		return false;
	w->sp = w->fp + 16;
	w->fp = next;
	w->pc = ra;
	w->exact = false;
	return true;
}

/* walk_step records the frame at w->pc and moves to its caller; 1 stops bpf_loop. */
static long walk_step(u64 i, struct walk *w)
{
	if (w->pc == 0)
		return 1;
	u64 lpc = w->exact ? w->pc : w->pc - 1; /* a return address may lie past its caller's end */
	struct map_entry *e = 0;
	enum lookup lk = cache_lookup(w->ts, w->tgid, lpc, &e);
	if (lk == LK_BUSY) {
		/* Another thread holds the mmap lock for writing: user space finishes this stack from a
		 * copy, resolving the mapping from /proc instead. */
		count_stack(STK_BUSY);
		w->pending = true;
		w->pending_mod = 0;
		w->ts->wk.pending_frame = w->pc;
		return 1;
	}
	if (lk != LK_OK || !e)
		return 1; /* not code: the walk went wrong above; never report it as a frame */
	u64 frame = encode_frame(e, w->pc);
	struct module_info *m = module_info_of(e->mod);
	u8 state = m ? m->state : MOD_FP;
	struct unwind_rule *r = 0;
	enum row_result rr = ROW_NONE;
	if (state == MOD_READY && m)
		rr = find_row(m, e->mod, lpc - e->start + e->pgoff, &r);
	if (state == MOD_PENDING || state == MOD_COPY || rr == ROW_PENDING) {
		w->pending = true;
		w->pending_mod = e->mod;
		w->ts->wk.pending_frame = frame;
		return 1;
	}
	if (!push(w, frame) || state == MOD_NONE)
		return 1;
	if (rr == ROW_FOUND && r && r->cfa_kind != CFA_NONE)
		return step_cfi(w, r) ? 0 : 1;
	return step_fp(w) ? 0 : 1;
}

/* walk_init starts a walk of the current thread from the given registers. */
static __always_inline void walk_init(struct walk *w, struct thread_state *ts, u32 tgid, u64 pc, u64 sp, u64 fp, bool exact)
{
	__builtin_memset(w, 0, sizeof(*w));
	__builtin_memset(&ts->wk, 0, sizeof(ts->wk));
	w->ts = ts;
	w->tgid = tgid;
	w->pc = pc;
	w->sp = sp;
	w->fp = fp;
	w->fp_ok = true;
	w->exact = exact;
	w->ts->wk.h1 = 0x84222325cbf29ce4ULL;
	w->ts->wk.h2 = 0x27d4eb2f165667c5ULL;
}

/* walk_run unwinds until the outermost frame, a module not loaded yet, or the frame limit. */
static __always_inline void walk_run(struct walk *w)
{
	bpf_loop(MAX_FRAMES, walk_step, w, 0);
	if (w->depth)
		count_stack(STK_DEPTH);
}
