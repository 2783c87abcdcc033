/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * The kernel's side (--kernel): slab (kmalloc, kmem_cache_alloc) and page
 * allocations the kernel makes in the context of a traced task, from the kmem
 * tracepoints (this kernel has no kprobes), each with its kernel stack (a
 * stack map id: the kernel dedups them), the cache, bytes requested and
 * allocated, the syscall the task was in (regs->orig_ax, what
 * syscall_get_nr() reads; user space confirms it from the stack) and, when
 * the syscall was on an AF_UNIX socket, which socket call. Interrupt and
 * softirq context is not the interrupted task's doing: never attributed,
 * only counted. Frees are paired here by address (kmem_live): a free of
 * anything else costs one hash lookup and sends nothing, so the reader who
 * frees what the writer allocated is reported, whoever and wherever it is.
 */
#pragma once

#include "stack.h"

const volatile bool cfg_kernel = false;

enum kmem_kind { KM_KMALLOC = 1, KM_CACHE, KM_PAGE };

/* Event types of their own, numbered apart from enum event_type. */
#define EV_KMEM 32
#define EV_KFREE 33
#define EV_KSYS 34 /* the end of an AF_UNIX socket call that made kernel allocations: its user stack */

/* kmem_event flags. */
#define KF_UNTRACKED 1 /* kmem_live was full: its free cannot be paired */
#define KF_IRQ 2       /* EV_KFREE: freed in interrupt, softirq or NMI context */
#define KF_KTHREAD 8   /* EV_KFREE: freed by a kernel thread */

/* Why a kernel allocation is missing or incomplete; indexes of the per-CPU kmem_stats counter. */
enum kmem_stat {
	KS_IRQ,       /* allocations in interrupt context while a traced task was current: left out */
	KS_LIVE_FULL, /* kmem_live full: an allocation whose free cannot be paired (sent, flagged) */
	KS_NOSTACK,   /* the kernel stack could not be taken: sent without one */
	KS_DEEP,      /* kernel stacks cut at KMEM_FRAMES frames (the event is kept) */
	KS_RINGBUF,   /* a kernel allocation or free the ring had no room for */
	KS_STATS
};

#define KMEM_FRAMES 32 /* kernel frames kept: the allocator's callers, innermost first */

/* One kernel allocation (EV_KMEM: 352 bytes) or the free of one (EV_KFREE: the first 96). Its
 * kernel stack travels inline: a stack map would cost megabytes preallocated and lose stacks to
 * bucket collisions; the few distinct kernel stacks are told apart in user space. */
struct kmem_event {
	u8 type;
	u8 kind;  /* enum kmem_kind */
	u8 sock;  /* EV_KMEM: 1 + the sock_call the task was in on an AF_UNIX socket; 0 none */
	u8 flags; /* KF_* */
	u32 pid;
	u32 tid;
	s32 sys;  /* EV_KMEM: regs->orig_ax at kernel entry; EV_KFREE: the allocating process */
	u64 ts;
	u64 addr; /* the object; a page allocation: its struct page */
	u64 bytes_req;
	u64 bytes_alloc;
	u64 call_site;
	u32 nframes; /* EV_KMEM: kernel frames in frames[] */
	u32 seq;     /* EV_KMEM in a socket call: the thread's call number, as its EV_KSYS says */
	char name[32]; /* EV_KMEM: the cache's name (truncated at 31); EV_KFREE: the freeing task's comm */
	u64 frames[KMEM_FRAMES]; /* EV_KMEM only */
};

#define KFREE_SIZE (sizeof(struct kmem_event) - KMEM_FRAMES * 8)

struct kmem_live_val {
	u32 tgid;
	u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH); /* preallocated: an insert never allocates, so never recurses */
	__uint(max_entries, 1 << 16);
	__type(key, u64);
	__type(value, struct kmem_live_val);
} kmem_live SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, KS_STATS);
	__type(key, u32);
	__type(value, u64);
} kmem_stats SEC(".maps");

/* The AF_UNIX socket call a thread is in (set at sys_enter, cleared at sys_exit). */
struct ksock_state {
	u8 call;   /* 1 + sock_call; 0: none */
	u8 allocs; /* the kernel allocated in it: its user stack goes out at sys_exit */
	u16 _pad;
	u32 seq;   /* the thread's socket calls so far */
};

/* EV_KSYS: a socket call that made kernel allocations is leaving; stack is its user stack id (the
 * frames went out as EV_STACK), under which the allocations of call seq of thread tid belong. */
struct ksys_event {
	u8 type;
	u8 flags; /* F_STACK_TRUNC, F_STACK_RAW as alloc_event's */
	u16 _pad;
	u32 pid;
	u32 tid;
	u32 seq;
	u64 stack;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct ksock_state);
} ksock_tasks SEC(".maps");

/* Local views of kernel types, with only the fields read (CO-RE relocates them). */
struct kmem_cache___kmem {
	unsigned int size;
	unsigned int object_size;
	const char *name;
} __attribute__((preserve_access_index));

struct task_struct___kmem {
	unsigned int flags;
	void *stack;
} __attribute__((preserve_access_index));

#define PF_KTHREAD 0x00200000

/* The task's kernel stack size (THREAD_SIZE: 16 KiB on x86-64 without KASAN). */
const volatile u64 cfg_thread_size = 16384;

/* Where this program's frame is, read back as a number (a pointer stored in a map value). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} kmem_sp SEC(".maps");

static __always_inline void count_kmem(u32 what)
{
	u64 *n = bpf_map_lookup_elem(&kmem_stats, &what);
	if (n)
		*n += 1;
}

/* irq_context is KF_IRQ when the CPU runs an interrupt, a softirq or an NMI, 0 in a task's own
 * context. x86-64 runs hardirqs and softirqs (those run on bottom-half enable too) on the CPU's
 * IRQ stack and NMIs on their own, never on the task's; and a tp_btf program's ctx is the
 * argument array bpf_trace_run* keeps on the stack the CPU runs on (the program's own frame may
 * be a private per-CPU stack: no use). The kernel's preempt count would say the same, but its
 * per-CPU variable is out of reach here (cilium/ebpf links no typed __ksym; kallsyms has no data
 * symbols). */
static __always_inline u8 irq_context(void *ctx)
{
	u32 zero = 0;
	u64 *slot = bpf_map_lookup_elem(&kmem_sp, &zero);
	if (!slot)
		return 0;
	*slot = (u64)ctx; /* read back as a number: no arithmetic is allowed on ctx itself */
	asm volatile("" ::: "memory");
	u64 sp = *(volatile u64 *)slot;
	struct task_struct___kmem *t = (void *)bpf_get_current_task();
	u64 base = (u64)BPF_CORE_READ(t, stack);
	return sp - base < cfg_thread_size ? 0 : KF_IRQ;
}

static __always_inline bool is_kthread(void)
{
	struct task_struct___kmem *t = (void *)bpf_get_current_task();
	return BPF_CORE_READ(t, flags) & PF_KTHREAD;
}

/* ksock_enter marks the thread as inside AF_UNIX socket call (bpf/syscalls.h, after its checks). */
static __always_inline void ksock_enter(u32 call)
{
	if (!cfg_kernel)
		return;
	struct ksock_state *k = bpf_task_storage_get(&ksock_tasks, bpf_get_current_task_btf(), 0,
						     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (k) {
		k->call = call + 1;
		k->allocs = 0;
		k->seq++;
	}
}

/* ksock_user_stack sends the user stack of the socket call seq that is leaving (bpf/syscalls.h's
 * sys_exit, which has the stack code anyway): the kernel allocations it made go below it. */
static __always_inline void ksock_user_stack(void *ctx, u32 seq)
{
	struct thread_state *ts = thread_state(true);
	if (!ts) {
		count_lost(LOST_INFLIGHT);
		return;
	}
	u64 pid_tgid = bpf_get_current_pid_tgid();
	fill_header(&ts->hdr.a, EV_SYS, K_NONE, pid_tgid, false);
	struct start *from = &ts->from;
	__builtin_memset(from, 0, sizeof(*from));
	user_regs(&from->pc, &from->sp, &from->fp);
	stack_and_emit(ctx, ts, SO_SYS | SO_ID_ONLY);
	u64 queued;
	struct ksys_event *ev = reserve(sizeof(*ev), &queued);
	if (!ev) {
		count_kmem(KS_RINGBUF);
		return;
	}
	ev->type = EV_KSYS;
	ev->flags = ts->hdr.a.flags;
	ev->_pad = 0;
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->seq = seq;
	ev->stack = ts->hdr.a.stack;
	submit(ev, sizeof(*ev), queued);
}

/* ksock_exit ends it: a socket-numbered syscall is leaving (any process; most have no mark). */
static __always_inline void ksock_exit(void *ctx)
{
	if (!cfg_kernel)
		return;
	struct ksock_state *k = bpf_task_storage_get(&ksock_tasks, bpf_get_current_task_btf(), 0, 0);
	if (!k || !k->call)
		return;
	k->call = 0;
	if (k->allocs)
		ksock_user_stack(ctx, k->seq);
}

/* kmem_traced says whether an allocation on this CPU now is a traced task's own doing; one in
 * interrupt context while a traced task is current is counted, never attributed. The scope test
 * comes first: it is what turns away nearly every allocation of the machine. */
static __always_inline bool kmem_traced(void *ctx, u32 tgid)
{
	if (!traced(tgid))
		return false;
	if (irq_context(ctx)) {
		count_kmem(KS_IRQ);
		return false;
	}
	return !is_kthread();
}

static __always_inline void kmem_alloc(void *ctx, u8 kind, u64 site, u64 ptr, u64 req, u64 alloc,
				       const char *cache)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	if (!ptr || !kmem_traced(ctx, tgid))
		return;
	u64 queued;
	struct kmem_event *ev = reserve(sizeof(*ev), &queued);
	if (!ev) {
		count_kmem(KS_RINGBUF);
		return;
	}
	__builtin_memset(ev, 0, KFREE_SIZE); /* the frames are written below */
	ev->type = EV_KMEM;
	ev->kind = kind;
	ev->pid = tgid;
	ev->tid = (u32)pid_tgid;
	ev->ts = bpf_ktime_get_ns();
	ev->addr = ptr;
	ev->bytes_req = req;
	ev->bytes_alloc = alloc;
	ev->call_site = site;
	struct task_struct *task = bpf_get_current_task_btf();
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	ev->sys = (s32)BPF_CORE_READ(regs, orig_ax);
	struct ksock_state *k = bpf_task_storage_get(&ksock_tasks, task, 0, 0);
	if (k && k->call) {
		ev->sock = k->call;
		ev->seq = k->seq;
		k->allocs = 1;
	}
	if (cache)
		bpf_probe_read_kernel_str(ev->name, sizeof(ev->name), cache);
	long got = bpf_get_stack(ctx, ev->frames, sizeof(ev->frames), 0);
	if (got <= 0)
		count_kmem(KS_NOSTACK);
	else
		ev->nframes = (u64)got / 8;
	if (ev->nframes == KMEM_FRAMES)
		count_kmem(KS_DEEP);
	struct kmem_live_val v = { .tgid = tgid };
	if (bpf_map_update_elem(&kmem_live, &ptr, &v, BPF_ANY)) {
		ev->flags |= KF_UNTRACKED;
		count_kmem(KS_LIVE_FULL);
	}
	submit(ev, sizeof(*ev), queued);
}

/* kmem_free sends the free of an address a traced task allocated, whoever frees it, in any context. */
static __always_inline void kmem_free(void *ctx, u64 ptr)
{
	struct kmem_live_val *v = bpf_map_lookup_elem(&kmem_live, &ptr);
	if (!v)
		return; /* nearly every free of the machine leaves here */
	u32 owner = v->tgid;
	if (bpf_map_delete_elem(&kmem_live, &ptr))
		return; /* another CPU's free of it took it first */
	u64 queued;
	struct kmem_event *ev = reserve(KFREE_SIZE, &queued);
	if (!ev) {
		count_kmem(KS_RINGBUF);
		return;
	}
	__builtin_memset(ev, 0, KFREE_SIZE);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	ev->type = EV_KFREE;
	ev->pid = pid_tgid >> 32;
	ev->tid = (u32)pid_tgid;
	ev->sys = owner;
	ev->ts = bpf_ktime_get_ns();
	ev->addr = ptr;
	ev->flags = irq_context(ctx) | (is_kthread() ? KF_KTHREAD : 0);
	bpf_get_current_comm(ev->name, sizeof(ev->name));
	submit(ev, KFREE_SIZE, queued);
}

/* Pages are keyed by their struct page | 1: never a slab object's address (those are aligned).
 * The tracepoint's page is a typed kernel pointer, on which no arithmetic is allowed: it is
 * read back as a number through a map value first. */
static __always_inline u64 page_key(u64 page)
{
	u32 one = 0;
	u64 *slot = bpf_map_lookup_elem(&kmem_sp, &one);
	if (!slot)
		return 0;
	*slot = page;
	asm volatile("" ::: "memory");
	u64 v = *(volatile u64 *)slot;
	return v ? v | 1 : 0;
}

SEC("tp_btf/kmalloc")
int kmem_kmalloc(u64 *ctx)
{
	/* (call_site, ptr, bytes_req, bytes_alloc, gfp_flags, node) */
	kmem_alloc(ctx, KM_KMALLOC, ctx[0], ctx[1], ctx[2], ctx[3], 0);
	return 0;
}

SEC("tp_btf/kmem_cache_alloc")
int kmem_slab_alloc(u64 *ctx)
{
	/* (call_site, ptr, struct kmem_cache *s, gfp_flags, node) */
	struct kmem_cache___kmem *s = (void *)ctx[2];
	if (!ctx[1])
		return 0;
	kmem_alloc(ctx, KM_CACHE, ctx[0], ctx[1], BPF_CORE_READ(s, object_size), BPF_CORE_READ(s, size),
		   BPF_CORE_READ(s, name));
	return 0;
}

SEC("tp_btf/mm_page_alloc")
int kmem_page_alloc(u64 *ctx)
{
	/* (struct page *page, unsigned int order, gfp_flags, migratetype) */
	u64 bytes = 4096ULL << (u32)ctx[1];
	kmem_alloc(ctx, KM_PAGE, 0, page_key(ctx[0]), bytes, bytes, 0);
	return 0;
}

SEC("tp_btf/kfree")
int kmem_kfree(u64 *ctx)
{
	kmem_free(ctx, ctx[1]);
	return 0;
}

SEC("tp_btf/kmem_cache_free")
int kmem_slab_free(u64 *ctx)
{
	kmem_free(ctx, ctx[1]);
	return 0;
}

SEC("tp_btf/mm_page_free")
int kmem_page_free(u64 *ctx)
{
	u64 key = page_key(ctx[0]);
	if (key)
		kmem_free(ctx, key);
	return 0;
}
