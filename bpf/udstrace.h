/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/* Shared by every concern: event layouts, configuration, maps and helpers. */
#pragma once

#include "vmlinux_min.h"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define MAX_STACK_BYTES 16384 /* largest user-stack copy; a power of two */
#define MAX_FP_FRAMES 127

/* Kinds, numbered as pkg/event.Kind. */
enum kind {
	K_NONE, K_MALLOC, K_CALLOC, K_REALLOC, K_REALLOCARRAY, K_FREE,
	K_POSIX_MEMALIGN, K_ALIGNED_ALLOC, K_MEMALIGN, K_VALLOC, K_PVALLOC,
	K_MMAP, K_MUNMAP, K_MREMAP, K_BRK,
};

enum event_type { EV_ALLOC = 1, EV_EXEC, EV_FORK, EV_EXIT, EV_MAP };

enum event_flag {
	F_FAILED = 1,     /* NULL / error returned: nothing allocated */
	F_STACK_FP = 2,   /* payload: frame-pointer walk, u64 PCs */
	F_STACK_COPY = 4, /* payload: raw user stack bytes from sp */
	F_STACK_SHORT = 8, /* the copy had to be shortened to stay inside the stack */
	F_SAMPLED = 16,    /* count mode, sampled call: aux is the stack id, ip the direct caller */
	F_WEIGHTED = 32,   /* full mode with sampling: a picked call (or the free of a picked block) */
	F_UNTRACKED = 64   /* a picked block the full table could not hold: counted, not tracked */
};

/* Why an event could not be delivered; indexes of the per-CPU lost counter. */
enum lost_reason {
	LOST_RINGBUF,  /* ring buffer full */
	LOST_INFLIGHT, /* no room for per-thread call state or a counter: the call was not traced */
	LOST_STALE,    /* a call state left behind by a missed return was discarded */
	LOST_STACK,    /* the user stack could not be read at all */
	LOST_REASONS
};

enum stack_mode { STACK_FP, STACK_COPY };

/* Socket-path syscalls, numbered as pkg/event.SocketCall. */
enum sock_call {
	S_SOCKET, S_SOCKETPAIR, S_BIND, S_LISTEN, S_ACCEPT, S_ACCEPT4, S_CONNECT,
	S_READ, S_WRITE, S_SENDTO, S_RECVFROM, S_SENDMSG, S_RECVMSG, S_CLOSE,
	S_COUNT
};

/* One allocator call, free or memory syscall; a user stack follows it in the record. */
struct alloc_event {
	u8 type;
	u8 kind;
	u8 inside; /* kind of the allocator call this syscall ran inside, or K_NONE */
	u8 flags;
	u32 pid;
	u32 tid;
	u32 stack_len; /* payload bytes after this header */
	u64 ts;
	u64 size;
	u64 addr;
	u64 old_addr;
	u64 old_size;
	u64 aux; /* mmap: prot << 32 | flags */
	s64 fd;
	u64 ip; /* user registers where the stack payload starts; free: the return address in its caller */
	u64 sp;
	u64 bp;
	char comm[16];
};

struct sock_stats {
	u64 first_ns;
	u64 counts[S_COUNT];
};

/* Process life-cycle and executable-mapping events: rare, so one roomy layout. */
struct count_val {
	u64 count;
	u64 bytes;
};

#define HEAP_KINDS (K_PVALLOC + 1)

struct proc_event {
	u8 type;
	u8 _pad[3];
	u32 pid;
	u32 ppid;
	s32 exit_code;
	u64 ts;
	u64 addr;  /* EV_EXEC: mm->start_code; EV_MAP: mapping start */
	u64 len;   /* EV_EXEC: AT_BASE (the interpreter's load address); EV_MAP: length */
	u64 pgoff; /* EV_MAP: file offset of the mapping */
	u64 ino;
	u32 dev; /* kernel encoding: major << 20 | minor */
	u32 _pad2;
	struct sock_stats sock; /* EV_EXIT */
	struct count_val totals[HEAP_KINDS]; /* EV_EXIT with sampling: exact calls and bytes by kind */
	char comm[16];
	char name[256]; /* EV_EXEC: path executed; EV_MAP: file name (last component) */
};

/* Configuration, set from Go before load. */
const volatile bool cfg_filter = false; /* trace only tgids in the targets map */
const volatile bool cfg_follow = true;  /* children of a traced process are traced */
const volatile u32 cfg_self_tgid = 0;   /* never trace the tracer */
const volatile u32 cfg_stack_mode = STACK_COPY;
const volatile u32 cfg_stack_bytes = 8192; /* power of two, <= MAX_STACK_BYTES */
const volatile u64 cfg_wakeup_bytes = 1 << 16; /* wake the reader once this much is queued */
const volatile u64 cfg_ring_reserve = 1 << 16; /* ring room only process events may use */
const volatile u64 cfg_cgroup_id = 0;      /* trace only this cgroup (v2 id), 0: any */
const volatile char cfg_comm[16] = {};     /* trace only processes of this name, "": any */

enum target_state { T_PENDING_EXEC = 1, T_TRACED = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20);
} events SEC(".maps");

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

static __always_inline void count_lost(u32 reason)
{
	u64 *n = bpf_map_lookup_elem(&lost, &reason);
	if (n)
		*n += 1;
}

/* ring_has_room says whether a data event of size bytes fits while leaving cfg_ring_reserve for
 * process events (exec, fork, exit, mappings): a flood may drop data, never a process's life. */
static __always_inline bool ring_has_room(u64 size)
{
	u64 used = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return used + size + cfg_ring_reserve <= bpf_ringbuf_query(&events, BPF_RB_RING_SIZE);
}

/* traced reports whether tgid is in scope: every process but ours, or only targets. */
static __always_inline bool traced(u32 tgid)
{
	if (tgid == cfg_self_tgid)
		return false;
	if (cfg_cgroup_id && bpf_get_current_cgroup_id() != cfg_cgroup_id)
		return false;
	if (cfg_comm[0]) {
		char comm[16];
		bpf_get_current_comm(comm, sizeof(comm));
		for (int i = 0; i < 16; i++) {
			if (comm[i] != cfg_comm[i])
				return false;
			if (!comm[i])
				break;
		}
	}
	if (!cfg_filter)
		return true;
	u8 *state = bpf_map_lookup_elem(&targets, &tgid);
	return state && *state == T_TRACED;
}
