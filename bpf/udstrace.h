/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/* Shared by every concern: event layouts, configuration, maps and helpers. */
#pragma once

#include "vmlinux_min.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Argument tags for global functions (libbpf's bpf_helpers.h has them from 1.4). */
#define __arg_ctx __attribute__((btf_decl_tag("arg:ctx")))
#define __arg_nonnull __attribute__((btf_decl_tag("arg:nonnull")))

#define MAX_STACK_BYTES 16384 /* largest user-stack copy; a power of two */

/* Kinds, numbered as pkg/event.Kind. */
enum kind {
	K_NONE, K_MALLOC, K_CALLOC, K_REALLOC, K_REALLOCARRAY, K_FREE,
	K_POSIX_MEMALIGN, K_ALIGNED_ALLOC, K_MEMALIGN, K_VALLOC, K_PVALLOC,
	K_MMAP, K_MUNMAP, K_MREMAP, K_BRK,
	/* allocators' own entry points (jemalloc, C++ operator new/delete, mimalloc) */
	K_MALLOCX, K_RALLOCX, K_DALLOCX, K_SDALLOCX,
	K_NEW, K_NEW_ARRAY, K_DELETE, K_DELETE_ARRAY,
	K_MI_ZALLOC, K_MI_MALLOCN, K_MI_REALLOCN, K_MI_MALLOC_ALIGNED, K_MI_ZALLOC_ALIGNED, K_MI_REALLOC_ALIGNED,
	K_XALLOCX, /* jemalloc's resize in place: returns the size it has, never moves the block */
};

/* is_realloc_kind: the call takes an old block (first argument) and may move it. */
static __always_inline bool is_realloc_kind(u8 k)
{
	return k == K_REALLOC || k == K_REALLOCARRAY || k == K_RALLOCX || k == K_MI_REALLOCN || k == K_MI_REALLOC_ALIGNED;
}

/* is_free_kind: an allocator's own free, probed at entry and return (bpf/alloc.h free_kind_return). */
static __always_inline bool is_free_kind(u8 k)
{
	return k == K_DALLOCX || k == K_SDALLOCX || k == K_DELETE || k == K_DELETE_ARRAY;
}

/* call_size is the bytes an allocator call asks for, from its argument registers. */
static __always_inline u64 call_size(u8 kind, u64 a, u64 b, u64 c)
{
	if (is_free_kind(kind))
		return 0;
	switch (kind) {
	case K_CALLOC:
	case K_MI_MALLOCN:
		return a * b;
	case K_REALLOC:
	case K_RALLOCX:
	case K_XALLOCX:
	case K_MI_REALLOC_ALIGNED:
	case K_ALIGNED_ALLOC:
	case K_MEMALIGN:
		return b;
	case K_REALLOCARRAY:
	case K_MI_REALLOCN:
		return b * c;
	case K_POSIX_MEMALIGN:
		return c;
	}
	return a; /* malloc, valloc, pvalloc, mallocx, operator new, mi_zalloc, mi_*_aligned */
}

enum event_type { EV_ALLOC = 1, EV_EXEC, EV_FORK, EV_EXIT, EV_MAP, EV_FREE, EV_SYS, EV_COPY, EV_STACK, EV_MODULE, EV_PAGE, EV_SOCK, EV_RENAME };

enum event_flag {
	F_FAILED = 1,      /* NULL / error returned: nothing allocated */
	F_STACK_TRUNC = 2, /* the stack stops early: a module's unwind table was still loading */
	F_STACK_RAW = 4,   /* a frame is a raw address of a mapping the kernel could not read (mmap lock held) */
	F_STACK_SHORT = 8, /* the copy had to be shortened to stay inside the stack */
	F_SAMPLED = 16,    /* count mode, sampled call: stack is its stack id */
	F_WEIGHTED = 32,   /* full mode with sampling: a picked call (or the free of a picked block) */
	F_UNTRACKED = 64   /* a picked block the full table could not hold: counted, not tracked */
};

/*
 * Why an event could not be delivered or tracked, and every failed insert into a kernel table;
 * indexes of the per-CPU lost counter (pkg/loader.Lost reads them in this order). A full table
 * never drops silently: each insert that fails is counted here by table.
 */
enum lost_reason {
	LOST_RINGBUF,    /* ring buffer full */
	LOST_INFLIGHT,   /* no memory for a thread's state (task storage): the call was not traced */
	LOST_STALE,      /* a call state left behind by a missed return was discarded */
	LOST_STACK,      /* the user stack could not be read at all */
	LOST_SYSCALLS,   /* sysinflight full: a memory syscall was not traced */
	LOST_COUNTS,     /* count mode's per-site table full: the call was not counted */
	LOST_TOTALS,     /* sampling's per-process totals full: the call is missing from them */
	LOST_SAMPLED,    /* picked-block table full: the block's free cannot be reported */
	LOST_SOCKETS,    /* sockstats full: an AF_UNIX socket call was not counted */
	LOST_PROCS,      /* targets full: a process that should have been followed is not traced */
	LOST_PROC_CALLS, /* allocator calls made by those processes (none of them traced) */
	/* Failed inserts that lose no event: */
	TBL_MODULES,     /* modules full: frames in that file stay raw addresses */
	TBL_PROC_MAPS,   /* proc_maps full: a process's threads share no mapping cache (slower) */
	TBL_MAP_GENS,    /* map_gens full: every mapping cache is dropped instead of one process's */
	TBL_STACK_IDS,   /* stack_seen could not take an id: its frames are sent again next time */
	LOST_REASONS
};

/* How stacks came out; indexes of the per-CPU stack counter (none of these is a lost event). */
enum stack_stat {
	STK_EVENTS,     /* events that carry a stack */
	STK_NEW,        /* distinct stacks sent to user space */
	STK_FALLBACK,   /* events whose stack (from some frame on) is a copy unwound in user space */
	STK_TRUNC,      /* stacks cut short: a module's table was loading and no copy could be sent */
	STK_COLLISION,  /* two stacks with the same id: the second was sent inline, never merged */
	STK_BUSY,       /* a frame's mapping could not be read (mmap lock held): copied, or cut */
	STK_DEPTH,      /* stacks that hit the frame limit */
	STK_REQ_LOST,   /* module requests the ring had no room for (the module is asked for again later) */
	STK_MEMO,       /* stacks known without walking: the thread's last walk, same registers and stack words */
	STK_STATS
};

enum stack_mode { STACK_FP, STACK_COPY, STACK_TABLE };

/* Socket-path syscalls, numbered as pkg/event.SocketCall. */
enum sock_call {
	S_SOCKET, S_SOCKETPAIR, S_BIND, S_LISTEN, S_ACCEPT, S_ACCEPT4, S_CONNECT,
	S_READ, S_WRITE, S_SENDTO, S_RECVFROM, S_SENDMSG, S_RECVMSG, S_CLOSE,
	S_COUNT
};

/*
 * One allocator call (EV_ALLOC) or memory syscall (EV_SYS, with sys_event's
 * extra fields): 56 bytes. Its stack travels as an id; the frames of an id
 * come once, in an EV_STACK record, the first time the kernel sees them.
 */
struct alloc_event {
	u8 type;
	u8 kind;
	u8 inside; /* kind of the allocator call this syscall ran inside, or K_NONE */
	u8 flags;
	u32 pid;
	u32 tid;
	u32 _pad;
	u64 ts;
	u64 size;
	u64 addr;
	u64 old_addr;
	u64 stack; /* stack id; 0: none */
};

/* A free (EV_FREE): 40 bytes. caller is free's return address as an encoded frame. */
struct free_event {
	u8 type;
	u8 kind;
	u8 inside;
	u8 flags;
	u32 pid;
	u32 tid;
	u32 _pad;
	u64 ts;
	u64 addr;
	u64 caller;
};

/* A memory syscall: the alloc event and what only syscalls have. */
struct sys_event {
	struct alloc_event a;
	u64 old_size; /* mremap */
	u64 aux;      /* mmap: prot << 32 | flags */
	s64 fd;       /* mmap */
};

/* One entry of a thread's mapping cache: an executable mapping and the module it maps. */
struct map_entry {
	u64 start;
	u64 end;
	u64 pgoff; /* file offset of start, in bytes */
	u32 mod;   /* module id; 0: anonymous executable memory */
	u32 _pad;
};

#define MAP_CACHE 16

/*
 * EV_COPY: an event whose stack, from some frame on, could not be unwound in
 * the kernel (a module's table was still loading, or --stack cfi): the frames
 * before it are the stack id (0: none), then the registers at that frame, the
 * thread's mapping cache (to resolve the copy after the process is gone) and
 * len bytes of stack from sp.
 */
struct copy_event {
	struct sys_event e;
	u64 ip, sp, bp;
	u32 len;
	u8 exact; /* ip is where execution is, not a return address */
	u8 nmaps;
	u8 _pad[2];
	struct map_entry maps[MAP_CACHE];
};

#define MAX_FRAMES 128 /* frames of one stack: the allocator and 127 below it */

/*
 * EV_STACK: the frames of a new stack id, innermost first, each encoded as
 * module id << 48 | file offset (module 0: a raw address outside any file).
 * Variable length: 16 + 8 * n bytes.
 */
struct stack_event {
	u8 type;
	u8 flags; /* F_STACK_TRUNC: a prefix, cut at a module whose table was loading */
	u16 n;
	u32 _pad;
	u64 id;
	u64 frames[MAX_FRAMES];
};

#define PF_PATH 1
#define PF_SHARED_VM 2 /* EV_FORK: the child runs in its parent's address space (vfork, CLONE_VM) until it execs */
#define PF_EXEC 4      /* EV_MAP: the mapping is executable (else a data file, named for the report only) */

struct sock_stats {
	u64 first_ns;
	u64 counts[S_COUNT];
};

/* Process life-cycle, mapping and module-request events: rare, so one roomy layout. */
struct count_val {
	u64 count;
	u64 bytes;
};

#define HEAP_KINDS (K_XALLOCX + 1) /* the syscall kinds' slots among them stay empty */

struct proc_event {
	u8 type;
	u8 flags; /* PF_PATH: name is a whole path, as bpf/modules.h's file_path lays it out; PF_SHARED_VM; PF_EXEC */
	u8 _pad[2];
	u32 pid;
	u32 ppid;
	s32 exit_code;
	u64 ts;
	u64 addr;  /* EV_EXEC: mm->start_code; EV_MAP, EV_MODULE: mapping start; EV_RENAME: the thread's tid */
	u64 len;   /* EV_EXEC: AT_BASE (the interpreter's load address); EV_MAP, EV_MODULE: length */
	u64 pgoff; /* EV_MAP, EV_MODULE: file offset of the mapping */
	u64 ino;
	u32 dev; /* kernel encoding: major << 20 | minor */
	u32 mod; /* EV_MODULE: the id the kernel gave the module; EV_PAGE: the module (pgoff: the page) */
	struct sock_stats sock; /* EV_EXIT */
	struct count_val totals[HEAP_KINDS]; /* EV_EXIT with sampling: exact calls and bytes by kind */
	char comm[16]; /* the process's name (its leader's); EV_RENAME: the thread's new name */
	char name[256]; /* EV_EXEC: path executed; EV_MAP, EV_MODULE: file name (last component) */
};

/* Configuration, set from Go before load. */
const volatile bool cfg_filter = false; /* trace only tgids in the targets map */
const volatile bool cfg_follow = true;  /* children of a traced process are traced */
const volatile u32 cfg_self_tgid = 0;   /* never trace the tracer */
const volatile u32 cfg_stack_mode = STACK_TABLE;
const volatile u32 cfg_stack_bytes = 8192; /* power of two, <= MAX_STACK_BYTES */
const volatile u64 cfg_wakeup_bytes = 1 << 16; /* wake the reader once this much is queued */
const volatile u64 cfg_ring_reserve = 1 << 16; /* ring room only process events may use */
const volatile u64 cfg_ring_bytes = 16 << 20;  /* the events ring's size: known, not asked */
const volatile u64 cfg_cgroup_id = 0;      /* trace only this cgroup (v2 id), 0: any */
const volatile char cfg_comm[16] = {};     /* trace only processes of this name, "": any */

enum target_state { T_PENDING_EXEC = 1, T_TRACED = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

/* Requests for unwind tables (EV_MODULE, EV_PAGE) have a ring of their own: stacks wait for them,
 * so they must not queue behind megabytes of events. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Module and page requests come in bursts (a compiler starting: ~1,500 pages at once) and a
	 * request is a whole proc_event (~850 B): room for about 1,200. One the ring has no room for is
	 * asked again, but stacks through it are cut meanwhile. */
	__uint(max_entries, 1 << 20);
} requests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_REASONS);
	__type(key, u32);
	__type(value, u64);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32); /* tgid */
	__type(value, u8); /* enum target_state */
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32); /* tgid */
	__type(value, struct sock_stats);
} sockstats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STK_STATS);
	__type(key, u32);
	__type(value, u64);
} stack_stats SEC(".maps");

static __always_inline void count_lost(u32 reason)
{
	u64 *n = bpf_map_lookup_elem(&lost, &reason);
	if (n)
		*n += 1;
}

static __always_inline void count_stack(u32 what)
{
	u64 *n = bpf_map_lookup_elem(&stack_stats, &what);
	if (n)
		*n += 1;
}

/* ring_has_room says whether a data event of size bytes fits while leaving cfg_ring_reserve for
 * process events (exec, fork, exit, mappings): a flood may drop data, never a process's life. */
static __always_inline bool ring_has_room(u64 queued, u64 size)
{
	return queued + size + cfg_ring_reserve <= cfg_ring_bytes;
}

/* ring_queued is how many bytes wait in the events ring: asked once per record (each helper call
 * counts on this path). */
static __always_inline u64 ring_queued(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
}

/* in_scope reports whether the current process passes the scope filters (not the tracer, cgroup,
 * name), whether or not it is one of the targets. */
static __always_inline bool in_scope(u32 tgid)
{
	if (tgid == cfg_self_tgid)
		return false;
	if (cfg_cgroup_id && bpf_get_current_cgroup_id() != cfg_cgroup_id)
		return false;
	if (cfg_comm[0]) { /* the process's name: its leader's, whatever the thread calls itself */
		char comm[16];
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();
		struct task_struct *leader = BPF_CORE_READ(t, group_leader);
		bpf_core_read(comm, sizeof(comm), &leader->comm);
		for (int i = 0; i < 16; i++) {
			if (comm[i] != cfg_comm[i])
				return false;
			if (!comm[i])
				break;
		}
	}
	return true;
}

/* traced reports whether tgid is in scope: every process but ours, or only targets. */
static __always_inline bool traced(u32 tgid)
{
	if (!in_scope(tgid))
		return false;
	if (!cfg_filter)
		return true;
	u8 *state = bpf_map_lookup_elem(&targets, &tgid);
	return state && *state == T_TRACED;
}

/* new_proc_event reserves a process event (exec, exit, a mapping, a socket call...) on the events
 * ring, stamped and named by the process's name, its leader's (not the calling thread's), or
 * counts it lost. */
static __always_inline struct proc_event *new_proc_event(u8 type, u32 pid)
{
	struct proc_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count_lost(LOST_RINGBUF);
		return 0;
	}
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->pid = pid;
	ev->ts = bpf_ktime_get_ns();
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct task_struct *leader = BPF_CORE_READ(t, group_leader);
	bpf_core_read_str(ev->comm, sizeof(ev->comm), &leader->comm);
	return ev;
}

/* fd_file is the current process's open file fd, or 0. */
static __always_inline struct file *fd_file(s64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (fd < 0 || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}
