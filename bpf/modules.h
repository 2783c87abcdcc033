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

const volatile u32 cfg_fallback_max = 512; /* copy fallbacks per module before stacks are cut instead */

u32 next_mod_id = MOD_KERNEL_IDS;
u64 next_gen = 1;
u64 gen_epoch = 0; /* moves when map_gens is full: every process's mappings are then new */

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

/* Each process's mappings as any of its threads found them: a thread whose own cache misses
 * looks here before asking the kernel's VMA tree (which needs the mmap lock, often held for
 * writing in a process whose other threads mmap). Replaced whole on update: a reader sees the
 * old value or the new one, never a mix (no preallocation: elements are freed after RCU). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, u32); /* tgid */
	__type(value, struct proc_cache);
} proc_maps SEC(".maps");

/* invalidate moves a process to a new mapping generation: every thread's cache is refilled. */
static __always_inline void invalidate_maps(u32 tgid)
{
	u64 gen = __sync_fetch_and_add(&next_gen, 1) + 1;
	if (bpf_map_update_elem(&map_gens, &tgid, &gen, BPF_ANY)) {
		/* No room to move this process alone: move them all, a stale cache would name wrong frames. */
		__sync_fetch_and_add(&gen_epoch, 1);
		count_lost(TBL_MAP_GENS);
	}
}

/* cache_begin drops the thread's cached mappings if its address space (mm) or generation changed. */
static __always_inline void cache_begin(struct thread_state *ts, u32 tgid, u64 mm)
{
	u64 *g = bpf_map_lookup_elem(&map_gens, &tgid);
	u64 gen = (g ? *g : 0) + (gen_epoch << 40);
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

/* cache_find returns the cached mapping holding pc: the one hit last first (consecutive frames
 * are mostly in one module), then the others. */
static __always_inline struct map_entry *cache_find(struct thread_state *ts, u64 pc)
{
	u32 last = ts->last;
	if (last < MAP_CACHE && last < ts->nmaps) {
		struct map_entry *e = &ts->maps[last];
		if (pc >= e->start && pc < e->end)
			return e;
	}
	struct find f = { .ts = ts, .pc = pc, .at = -1 };
	bpf_loop(MAP_CACHE, find_step, &f, 0);
	if (f.at < 0 || f.at >= MAP_CACHE)
		return 0;
	ts->last = f.at;
	return &ts->maps[f.at];
}

struct vma_ctx {
	u64 start, end, pgoff;
	u64 file; /* the mapped file (0: anonymous), its device and inode */
	u64 ino;
	u32 dev;
	bool exec;
	bool found;
};

#define PATH_DEPTH 24

/*
 * file_path writes f's path into ts->path as its components from the file up, each ending in a
 * NUL, then an empty one once the root of the mount tree is reached ("libc.so.6\0lib\0usr\0\0"),
 * walking dentries to their mount's root and crossing mounts: the name a file can be opened by
 * once its process is gone (the kernel's d_path is not callable from here). Returns the bytes
 * written; 0 when the path is too deep or long for PATH_BYTES, or cannot be read. A global
 * function: the verifier checks its loop once.
 */
__noinline u32 file_path(struct thread_state *ts __arg_nonnull, u64 file)
{
	struct file *f = (struct file *)file;
	struct dentry *d = BPF_CORE_READ(f, f_path.dentry);
	struct vfsmount *vm = BPF_CORE_READ(f, f_path.mnt);
	struct mount *mnt = (struct mount *)((char *)vm - bpf_core_field_offset(struct mount, mnt));
	u32 off = 0;
	for (int i = 0; i < PATH_DEPTH; i++) {
		if (off >= PATH_BYTES)
			return 0;
		if (d == BPF_CORE_READ(vm, mnt_root)) {
			struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
			if (parent == mnt) { /* the root of the tree: an empty component ends the path */
				ts->path[off & (PATH_BYTES - 1)] = 0;
				return off + 1;
			}
			d = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = parent;
			vm = (struct vfsmount *)((char *)parent + bpf_core_field_offset(struct mount, mnt));
			continue;
		}
		/* The buffer is twice PATH_BYTES so that a read of PATH_BYTES at any offset below it
		 * is in bounds; what passes PATH_BYTES makes the path too long. */
		long n = bpf_probe_read_kernel_str(&ts->path[off & (PATH_BYTES - 1)], PATH_BYTES, BPF_CORE_READ(d, d_name.name));
		if (n <= 1)
			return 0;
		off += n;
		struct dentry *up = BPF_CORE_READ(d, d_parent);
		if (up == d)
			return 0;
		d = up;
	}
	return 0;
}

/* copy_path puts f's path into an event's name as file_path lays it out (and says PF_PATH), or,
 * when it cannot be had, the file's last name alone. */
static __always_inline u8 copy_path(struct thread_state *ts, struct file *f, char *name)
{
	u32 n = ts ? file_path(ts, (u64)f) : 0;
	if (n > 0 && n <= PATH_BYTES) {
		bpf_probe_read_kernel(name, PATH_BYTES, ts->path);
		return PF_PATH;
	}
	bpf_probe_read_kernel_str(name, PATH_BYTES, BPF_CORE_READ(f, f_path.dentry, d_name.name));
	return 0;
}

/* module_of returns the id of the file a mapping shows, giving it one and asking user space for
 * it when the kernel meets it first; 0 when it cannot be named (the request had no room). It
 * runs after the mmap lock is dropped: the path it sends is a hint, which user space checks
 * against the device and inode read under the lock. */
static __always_inline u32 module_of(struct thread_state *ts, u32 tgid, struct vma_ctx *c)
{
	struct module_key key = { .ino = c->ino, .dev = c->dev };
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
		bpf_ringbuf_discard(ev, BPF_RB_NO_WAKEUP); /* another thread named it first, or the table is full */
		id = bpf_map_lookup_elem(&modules, &key);
		if (!id)
			count_lost(TBL_MODULES);
		return id ? *id : 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = EV_MODULE;
	ev->pid = tgid;
	ev->ts = bpf_ktime_get_ns();
	ev->addr = c->start;
	ev->len = c->end - c->start;
	ev->pgoff = c->pgoff;
	ev->ino = key.ino;
	ev->dev = key.dev;
	ev->mod = fresh;
	ev->flags = copy_path(ts, (struct file *)c->file, ev->name);
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
	if (c->exec && f) {
		c->file = (u64)f;
		c->ino = BPF_CORE_READ(f, f_inode, i_ino);
		c->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	}
	return 0;
}

enum lookup { LK_OK, LK_NOT_CODE, LK_BUSY };

struct pfind {
	struct proc_cache *pc;
	u64 pc_addr;
	s32 at;
};

static long pfind_step(u64 i, struct pfind *f)
{
	if (i >= f->pc->n || i >= PROC_CACHE)
		return 1;
	struct map_entry *e = &f->pc->maps[i];
	if (f->pc_addr >= e->start && f->pc_addr < e->end) {
		f->at = i;
		return 1;
	}
	return 0;
}

/* proc_find copies pc's mapping from the process's shared cache into e; false when not there
 * (e is then left as it was found). */
static __always_inline bool proc_find(struct thread_state *ts, u32 tgid, u64 pc, struct map_entry *e)
{
	struct proc_cache *p = bpf_map_lookup_elem(&proc_maps, &tgid);
	if (!p || p->mm != ts->mm || p->gen != ts->gen)
		return false;
	struct pfind f = { .pc = p, .pc_addr = pc, .at = -1 };
	bpf_loop(PROC_CACHE, pfind_step, &f, 0);
	if (f.at < 0 || f.at >= PROC_CACHE)
		return false;
	*e = p->maps[f.at];
	return true;
}

/* proc_add adds a mapping a thread found to the process's shared cache (a lost race between two
 * threads only leaves one of their entries out). */
static __always_inline void proc_add(struct thread_state *ts, u32 tgid, struct map_entry *e)
{
	struct proc_cache *old = bpf_map_lookup_elem(&proc_maps, &tgid);
	struct proc_cache *pc = &ts->pc;
	if (old && old->mm == ts->mm && old->gen == ts->gen) {
		bpf_probe_read_kernel(pc, sizeof(*pc), old); /* too big for an inline copy */
	} else {
		pc->mm = ts->mm;
		pc->gen = ts->gen;
		pc->n = 0;
	}
	u32 n = pc->n;
	if (n >= PROC_CACHE)
		return; /* full: the threads' own caches still work */
	pc->maps[n] = *e;
	pc->n = n + 1;
	if (bpf_map_update_elem(&proc_maps, &tgid, pc, BPF_ANY))
		count_lost(TBL_PROC_MAPS);
}

/*
 * cache_fill finds pc's executable mapping on a miss of the thread's cache, from the process's
 * shared cache or else the kernel's VMA tree, and puts it in the thread's cache. It returns the
 * entry's index, -LK_NOT_CODE when pc is in no executable mapping, -LK_BUSY when the VMAs could
 * not be read. A global function: the verifier checks it once, and it keeps its frame off the
 * unwinder's.
 */
__noinline int cache_fill(struct thread_state *ts __arg_nonnull, u32 tgid, u64 pc)
{
	u32 i = ts->nmaps < MAP_CACHE ? ts->nmaps : ts->victim % MAP_CACHE;
	if (i >= MAP_CACHE)
		return -LK_NOT_CODE;
	struct map_entry *e = &ts->maps[i];
	if (!proc_find(ts, tgid, pc, e)) {
		struct vma_ctx c = {};
		long err = bpf_find_vma(bpf_get_current_task_btf(), pc, vma_found, &c, 0);
		if (err == -16 /* EBUSY: the mmap lock is held for writing */)
			return -LK_BUSY;
		if (err || !c.found || !c.exec)
			return -LK_NOT_CODE;
		e->start = c.start;
		e->end = c.end;
		e->pgoff = c.pgoff;
		e->mod = c.file ? module_of(ts, tgid, &c) : 0;
		proc_add(ts, tgid, e);
	}
	if (ts->nmaps < MAP_CACHE)
		ts->nmaps = i + 1;
	else
		ts->victim = i + 1;
	ts->last = i;
	return i;
}

/* cache_lookup finds the executable mapping of pc: the thread's cache, else cache_fill. */
static __always_inline enum lookup cache_lookup(struct thread_state *ts, u32 tgid, u64 pc, struct map_entry **out)
{
	struct map_entry *e = cache_find(ts, pc);
	if (!e) {
		int i = cache_fill(ts, tgid, pc);
		if (i < 0)
			return i == -LK_BUSY ? LK_BUSY : LK_NOT_CODE;
		e = &ts->maps[i & (MAP_CACHE - 1)];
	}
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
