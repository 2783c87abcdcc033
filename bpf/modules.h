/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Modules (mapped files) and where they are mapped, for the in-kernel
 * unwinder and for stacks that outlive their process.
 *
 * A module is a file identified by device and inode, shared by every process
 * that maps it; it has a small id, which frames carry instead of addresses
 * (id << 48 | file offset), so one stack has one id in every process and is
 * symbolized without the process. User space gives ids below MOD_KERNEL_IDS
 * to the modules it loads ahead (run, attach); the kernel gives the rest to
 * modules it meets first, and asks user space for them (EV_MODULE).
 *
 * Each thread caches the executable mappings its stacks pass through, filled
 * from bpf_find_vma on a miss. The cache belongs to one address space and
 * one generation: exec changes the address space, and an munmap, mremap or
 * MAP_FIXED mmap that may replace a file mapping moves the process to a new
 * generation. (Processes sharing an address space without being threads of
 * one process, clone(CLONE_VM) without CLONE_THREAD, are not told apart.)
 */
#pragma once

#include "thread.h"

#define MOD_KERNEL_IDS 0x8000 /* ids from here on are handed out by the kernel */
#define MAX_MODULES 0x10000
#define VM_EXEC 0x4
#define PAGE_SHIFT 12

enum mod_state {
	MOD_PENDING = 0, /* asked for, not loaded yet: frames in it need the copy fallback */
	MOD_READY = 1,   /* its pages of unwind rows are loaded as stacks need them */
	MOD_FP = 2,      /* no call-frame information: walk frame pointers through it */
	MOD_COPY = 3,    /* has CFI the kernel could not hold (table full): always the copy fallback */
	MOD_NONE = 4,    /* user space could not open it: the stack stops at its frame */
};

struct module_key {
	u64 ino;
	u32 dev; /* kernel encoding: major << 20 | minor */
	u32 _pad;
};

/* A ready module's rows come in pages: one entry of unwind_pages per 4 KiB of its file, from
 * page page_base on, loaded when a stack first needs it. */
struct module_info {
	u32 page_first; /* the module's first entry in unwind_pages */
	u32 npages;
	u32 page_base; /* file offset >> 12 of its first page */
	u32 fallbacks; /* events that needed the copy fallback in this module */
	u8 state;      /* enum mod_state */
	u8 _pad[7];
};

const volatile u32 cfg_fallback_max = 4096; /* copy fallbacks per module before stacks are cut instead */

u32 next_mod_id = MOD_KERNEL_IDS;
u64 next_gen = 1;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_MODULES);
	__type(key, struct module_key);
	__type(value, u32); /* module id */
} modules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_MODULES);
	__type(key, u32); /* module id */
	__type(value, struct module_info);
} mod_info SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);  /* tgid */
	__type(value, u64); /* generation of its mappings; absent: 0 */
} map_gens SEC(".maps");

/* invalidate moves a process to a new mapping generation: every thread's cache is refilled. */
static __always_inline void invalidate_maps(u32 tgid)
{
	u64 gen = __sync_fetch_and_add(&next_gen, 1) + 1;
	bpf_map_update_elem(&map_gens, &tgid, &gen, BPF_ANY);
}

/* cache_begin drops the thread's cached mappings if its address space or generation changed. */
static __always_inline void cache_begin(struct thread_state *ts, u32 tgid)
{
	u64 mm = (u64)BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), mm);
	u64 *g = bpf_map_lookup_elem(&map_gens, &tgid);
	u64 gen = g ? *g : 0;
	if (ts->mm != mm || ts->gen != gen) {
		ts->mm = mm;
		ts->gen = gen;
		ts->nmaps = 0;
		ts->victim = 0;
	}
}

struct find {
	struct thread_state *ts;
	u64 pc;
	s32 at; /* the entry holding pc; -1: none */
};

static long find_step(u64 i, struct find *f)
{
	if (i >= f->ts->nmaps || i >= MAP_CACHE)
		return 1;
	struct map_entry *e = &f->ts->maps[i];
	if (f->pc >= e->start && f->pc < e->end) {
		f->at = i;
		return 1;
	}
	return 0;
}

static __always_inline struct map_entry *cache_find(struct thread_state *ts, u64 pc)
{
	struct find f = { .ts = ts, .pc = pc, .at = -1 };
	bpf_loop(MAP_CACHE, find_step, &f, 0);
	if (f.at < 0 || f.at >= MAP_CACHE)
		return 0;
	return &ts->maps[f.at];
}

struct vma_ctx {
	u64 start, end, pgoff;
	u32 mod;
	u32 tgid;
	bool exec;
	bool found;
};

/* module_of returns the id of the file mapped by vma, giving it one and asking user space for it
 * when the kernel meets it first; 0 when it cannot be named (the request had no room). */
static __always_inline u32 module_of(struct vm_area_struct *vma, struct file *f, struct vma_ctx *c)
{
	struct module_key key = {
		.ino = BPF_CORE_READ(f, f_inode, i_ino),
		.dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev),
	};
	u32 *id = bpf_map_lookup_elem(&modules, &key);
	if (id)
		return *id;
	u32 fresh = __sync_fetch_and_add(&next_mod_id, 1);
	if (fresh >= MAX_MODULES)
		return 0; /* ids exhausted: raw addresses from here on */
	struct module_info *info = bpf_map_lookup_elem(&mod_info, &fresh);
	if (!info)
		return 0;
	info->state = MOD_PENDING;
	/* Reserve the request before publishing the id: a module nobody was told about would stay pending. */
	struct proc_event *ev = bpf_ringbuf_reserve(&requests, sizeof(*ev), 0);
	if (!ev) {
		count_stack(STK_REQ_LOST);
		return 0;
	}
	if (bpf_map_update_elem(&modules, &key, &fresh, BPF_NOEXIST)) {
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP); /* another thread named it first */
		id = bpf_map_lookup_elem(&modules, &key);
		return id ? *id : 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_MODULE;
	ev->pid = c->tgid;
	ev->ts = bpf_ktime_get_ns();
	ev->addr = c->start;
	ev->len = c->end - c->start;
	ev->pgoff = c->pgoff;
	ev->ino = key.ino;
	ev->dev = key.dev;
	ev->mod = fresh;
	bpf_probe_read_kernel_str(ev->name, sizeof(ev->name), BPF_CORE_READ(f, f_path.dentry, d_name.name));
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP); /* a stack waits for it */
	return fresh;
}

static long vma_found(struct task_struct *task, struct vm_area_struct *vma, struct vma_ctx *c)
{
	c->found = true;
	c->start = BPF_CORE_READ(vma, vm_start);
	c->end = BPF_CORE_READ(vma, vm_end);
	c->pgoff = BPF_CORE_READ(vma, vm_pgoff) << PAGE_SHIFT;
	c->exec = BPF_CORE_READ(vma, vm_flags) & VM_EXEC;
	struct file *f = BPF_CORE_READ(vma, vm_file);
	if (c->exec && f)
		c->mod = module_of(vma, f, c);
	return 0;
}

enum lookup { LK_OK, LK_NOT_CODE, LK_BUSY };

/* cache_lookup finds the executable mapping of pc, from the cache or the kernel's VMAs. */
static __always_inline enum lookup cache_lookup(struct thread_state *ts, u32 tgid, u64 pc, struct map_entry **out)
{
	struct map_entry *e = cache_find(ts, pc);
	if (e) {
		*out = e;
		return LK_OK;
	}
	struct vma_ctx c = { .tgid = tgid };
	long err = bpf_find_vma(bpf_get_current_task_btf(), pc, vma_found, &c, 0);
	if (err == -16 /* EBUSY: the mmap lock is held for writing */)
		return LK_BUSY;
	if (err || !c.found || !c.exec)
		return LK_NOT_CODE;
	u32 i = ts->nmaps;
	if (i >= MAP_CACHE) {
		i = ts->victim % MAP_CACHE;
		ts->victim = i + 1;
	} else {
		ts->nmaps = i + 1;
	}
	if (i >= MAP_CACHE)
		return LK_NOT_CODE;
	e = &ts->maps[i];
	e->start = c.start;
	e->end = c.end;
	e->pgoff = c.pgoff;
	e->mod = c.mod;
	*out = e;
	return LK_OK;
}

/* encode_frame names pc as module id << 48 | file offset, or leaves it raw outside any file. */
static __always_inline u64 encode_frame(struct map_entry *e, u64 pc)
{
	if (!e || !e->mod)
		return pc;
	return (u64)e->mod << 48 | ((pc - e->start + e->pgoff) & 0xffffffffffffULL);
}

static __always_inline struct module_info *module_info_of(u32 mod)
{
	return mod ? bpf_map_lookup_elem(&mod_info, &mod) : 0;
}
