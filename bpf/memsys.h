/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Memory requested from the kernel: mmap, munmap, mremap and brk, seen at
 * syscall entry (the request) and exit (the result). A request made while
 * the thread is inside a traced allocator call is tagged with that call's
 * kind: it is malloc's own doing, not a second allocation by the program.
 */
#pragma once

#include "alloc.h"
#include "sysnr.h"

#define PROT_EXEC 0x4
#define MAP_ANONYMOUS 0x20

struct sys_state {
	u64 args[6];
	u64 brk_before;
	u8 kind;
	u8 inside;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32); /* tid */
	__type(value, struct sys_state);
} sysinflight SEC(".maps");

#define MAP_FIXED 0x10

static long vma_covers(struct task_struct *task, struct vm_area_struct *vma, u64 *end)
{
	/* an anonymous data mapping that holds the whole range: nothing executable goes away */
	if (!BPF_CORE_READ(vma, vm_file) && !(BPF_CORE_READ(vma, vm_flags) & VM_EXEC) && BPF_CORE_READ(vma, vm_end) >= *end)
		*end = 0;
	return 0;
}

/* may_replace_code says whether a syscall may unmap or replace an executable mapping, which makes
 * the threads' mapping caches stale. An munmap inside one anonymous data mapping (free of a large
 * malloc block) cannot; an mremap or a MAP_FIXED mmap is assumed to. */
static __always_inline bool may_replace_code(u8 kind, u64 *args)
{
	if (kind == K_MREMAP)
		return true;
	if (kind == K_MMAP)
		return args[3] & MAP_FIXED;
	if (kind != K_MUNMAP)
		return false;
	u64 end = args[0] + args[1];
	if (bpf_find_vma(bpf_get_current_task_btf(), args[0], vma_covers, &end, 0))
		return true;
	return end != 0;
}

/* mem_sys_enter remembers a traced thread's memory syscall (kind, its arguments) for its exit. */
static __always_inline void mem_sys_enter(struct pt_regs *regs, u8 kind, u64 pid_tgid)
{
	u32 tid = (u32)pid_tgid;
	struct sys_state st = { .kind = kind };
	sys_args(regs, st.args);
	st.inside = in_allocator(0);
	if (may_replace_code(kind, st.args))
		invalidate_maps(pid_tgid >> 32);
	if (kind == K_BRK) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		st.brk_before = BPF_CORE_READ(task, mm, brk);
	}
	if (bpf_map_update_elem(&sysinflight, &tid, &st, BPF_ANY))
		count_lost(LOST_SYSCALLS);
}

/* emit_map tells user space which file a mapping shows: an executable one for symbols after the
 * process is gone (PF_EXEC), any other to name the file in the report's file mappings. */
static __always_inline void emit_map(u32 pid, u64 addr, u64 len, u64 pgoff, s32 fd, bool exec)
{
	struct file *f = fd_file(fd);
	if (!f)
		return;
	struct proc_event *ev = new_proc_event(EV_MAP, pid);
	if (!ev)
		return;
	ev->addr = addr;
	ev->len = len;
	ev->pgoff = pgoff;
	ev->ino = BPF_CORE_READ(f, f_inode, i_ino);
	ev->dev = BPF_CORE_READ(f, f_inode, i_sb, s_dev);
	ev->flags = copy_path(thread_state(false), f, ev->name) | (exec ? PF_EXEC : 0);
	/* An executable file is opened while the process lives; a data file is only named. */
	bpf_ringbuf_submit(ev, exec ? BPF_RB_FORCE_WAKEUP : 0);
}

/* mem_sys_exit sends the memory syscall the thread entered (if it was traced), with its result. */
static __always_inline int mem_sys_exit(void *ctx, long ret)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tid = (u32)pid_tgid;
	struct sys_state *st = bpf_map_lookup_elem(&sysinflight, &tid);
	if (!st)
		return 0;
	bool failed = ret < 0 && ret > -4096;
	struct thread_state *ts = thread_state(true);
	if (!ts) {
		bpf_map_delete_elem(&sysinflight, &tid);
		count_lost(LOST_INFLIGHT);
		return 0;
	}
	struct sys_event *hdr = &ts->hdr;
	fill_header(&hdr->a, EV_SYS, st->kind, pid_tgid, true);
	hdr->old_size = 0;
	hdr->aux = 0;
	hdr->fd = -1;
	hdr->a.inside = st->inside;
	switch (st->kind) {
	case K_MMAP:
		hdr->a.size = st->args[1];
		hdr->a.addr = failed ? 0 : ret;
		hdr->aux = st->args[2] << 32 | (u32)st->args[3];
		hdr->fd = (s32)st->args[4];
		break;
	case K_MUNMAP:
		hdr->a.addr = st->args[0];
		hdr->a.size = st->args[1];
		failed = ret != 0;
		break;
	case K_MREMAP:
		hdr->a.old_addr = st->args[0];
		hdr->old_size = st->args[1];
		hdr->a.size = st->args[2];
		hdr->a.addr = failed ? 0 : ret;
		break;
	case K_BRK:
		/* brk returns the new break; the old one was read at entry. size is the signed growth. */
		hdr->a.old_addr = st->brk_before;
		hdr->a.addr = ret;
		hdr->a.size = (u64)ret - st->brk_before;
		failed = st->args[0] && (u64)ret != st->args[0];
		break;
	}
	if (failed)
		hdr->a.flags |= F_FAILED;
	u8 kind = st->kind, inside = st->inside;
	u64 prot = st->args[2], mflags = st->args[3], mlen = st->args[1], mpgoff = st->args[5];
	s32 mfd = (s32)st->args[4];
	bpf_map_delete_elem(&sysinflight, &tid); /* st is not read past here: the slot may be reused */
	struct start *from = &ts->from;
	__builtin_memset(from, 0, sizeof(*from));
	if (inside == K_NONE)
		user_regs(&from->pc, &from->sp, &from->fp);
	stack_and_emit(ctx, ts, SO_SYS | (inside == K_NONE ? 0 : SO_NO_STACK));
	if (kind == K_MMAP && !failed && mfd >= 0 && !(mflags & MAP_ANONYMOUS))
		emit_map(pid_tgid >> 32, ret, mlen, mpgoff, mfd, prot & PROT_EXEC);
	return 0;
}
