/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * Process life cycle: exec (what runs and where it is loaded), fork (who
 * follows whom into the trace), exit (status, socket counts, and cleanup of
 * per-thread state so a thread that dies inside malloc leaves nothing behind),
 * and thread names. A process is named by its thread-group leader; a thread
 * named otherwise (pthread_setname_np, or born of such a thread) is told by
 * an EV_RENAME, so that sites can say which thread made their calls.
 */
#pragma once

#include "memsys.h"
#include "count.h"

#define AT_NULL 0
#define AT_BASE 7

SEC("tp_btf/sched_process_exec")
int on_exec(u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx[2];
	u32 tgid = BPF_CORE_READ(p, tgid);
	u8 *state = bpf_map_lookup_elem(&targets, &tgid);
	if (state && *state == T_PENDING_EXEC)
		*state = T_TRACED; /* the command udstrace started is now itself */
	if (any_shared_vm)
		bpf_task_storage_delete(&vm_space, p); /* a vfork child's own address space from now on */
	if (!traced(tgid))
		return 0;
	struct proc_event *ev = new_proc_event(EV_EXEC, tgid);
	if (!ev)
		return 0;
	ev->ppid = BPF_CORE_READ(p, real_parent, tgid);
	struct mm_struct *mm = BPF_CORE_READ(p, mm);
	ev->addr = BPF_CORE_READ(mm, start_code);
	for (int i = 0; i < 27; i++) {
		u64 pair[2];
		if (bpf_probe_read_kernel(pair, sizeof(pair), &mm->saved_auxv[2 * i]))
			break;
		if (pair[0] == AT_NULL)
			break;
		if (pair[0] == AT_BASE) {
			ev->len = pair[1];
			break;
		}
	}
	ev->ino = BPF_CORE_READ(bprm, file, f_inode, i_ino);
	ev->dev = BPF_CORE_READ(bprm, file, f_inode, i_sb, s_dev);
	bpf_probe_read_kernel_str(ev->name, sizeof(ev->name), BPF_CORE_READ(bprm, filename));
	bpf_ringbuf_submit(ev, BPF_RB_FORCE_WAKEUP); /* its tables start loading at once */
	return 0;
}

/* emit_rename tells user space thread tid of process tgid is now called comm (a kernel string). */
static __always_inline void emit_rename(u32 tgid, u32 tid, const char *comm)
{
	struct proc_event *ev = new_proc_event(EV_RENAME, tgid);
	if (!ev)
		return;
	ev->addr = tid;
	bpf_probe_read_kernel_str(ev->comm, sizeof(ev->comm), comm);
	bpf_ringbuf_submit(ev, 0);
}

/* The task renamed may be another process's (a write to /proc/PID/task/TID/comm). */
SEC("tp_btf/task_rename")
int on_rename(u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	u32 tgid = BPF_CORE_READ(t, tgid);
	if (traced(tgid))
		emit_rename(tgid, BPF_CORE_READ(t, pid), (const char *)ctx[1]);
	return 0;
}

/* new_thread tells user space the name of a new thread of a traced process when it differs from
 * its leader's: a thread inherits the name of the thread that created it. */
static __always_inline void new_thread(struct task_struct *child, u32 tgid)
{
	char name[16], leader[16];
	struct task_struct *l = BPF_CORE_READ(child, group_leader);
	if (bpf_core_read(name, sizeof(name), &child->comm) || bpf_core_read(leader, sizeof(leader), &l->comm))
		return;
	for (int i = 0; i < 16; i++) {
		if (name[i] != leader[i]) {
			emit_rename(tgid, BPF_CORE_READ(child, pid), (const char *)&child->comm);
			return;
		}
		if (!name[i])
			return;
	}
}

SEC("tp_btf/sched_process_fork")
int on_fork(u64 *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx[0];
	struct task_struct *child = (struct task_struct *)ctx[1];
	u32 ptgid = BPF_CORE_READ(parent, tgid);
	u32 ctgid = BPF_CORE_READ(child, tgid);
	if (ptgid == ctgid) { /* a new thread: of a process that could not be traced, untraced too */
		if (any_untraced && bpf_task_storage_get(&untraced_tasks, parent, 0, 0)) {
			mark_untraced(child, false);
		} else if (traced(ptgid)) {
			new_thread(child, ctgid);
			if (any_shared_vm && bpf_task_storage_get(&vm_space, parent, 0, 0))
				share_space(parent, child, ptgid); /* a thread of a process in another's address space */
		}
		return 0;
	}
	if (!traced(ptgid)) { /* outside the trace, or a child of a process that could not be traced */
		if (cfg_follow && any_untraced && bpf_task_storage_get(&untraced_tasks, parent, 0, 0))
			mark_untraced(child, true);
		return 0;
	}
	if (cfg_filter) {
		if (!cfg_follow)
			return 0;
		u8 state = T_TRACED;
		if (bpf_map_update_elem(&targets, &ctgid, &state, BPF_ANY)) {
			mark_untraced(child, true); /* the table is full: counted, with its calls */
			return 0;
		}
	}
	struct mm_struct *mm = BPF_CORE_READ(child, mm);
	bool shared = mm && mm == BPF_CORE_READ(parent, mm);
	if (shared)
		share_space(parent, child, ptgid);
	struct proc_event *ev = new_proc_event(EV_FORK, ctgid);
	if (!ev)
		return 0;
	ev->ppid = ptgid;
	bpf_core_read_str(ev->comm, sizeof(ev->comm), &child->comm); /* the forking thread's name */
	if (shared)
		ev->flags = PF_SHARED_VM;
	bpf_ringbuf_submit(ev, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int on_exit(u64 *ctx)
{
	struct task_struct *p = (struct task_struct *)ctx[0];
	u32 tid = BPF_CORE_READ(p, pid);
	u32 tgid = BPF_CORE_READ(p, tgid);
	bpf_map_delete_elem(&sysinflight, &tid);
	if (BPF_CORE_READ(p, signal, live.counter) != 0)
		return 0; /* other threads live on */
	bool was_traced = traced(tgid);
	bpf_map_delete_elem(&targets, &tgid);
	bpf_map_delete_elem(&map_gens, &tgid);
	bpf_map_delete_elem(&proc_maps, &tgid);
	struct sock_stats *st = bpf_map_lookup_elem(&sockstats, &tgid);
	struct proc_event *ev = 0;
	if (was_traced) {
		ev = new_proc_event(EV_EXIT, tgid);
		if (ev) {
			ev->exit_code = BPF_CORE_READ(p, exit_code);
			if (st)
				ev->sock = *st;
		}
	}
	if (cfg_sample_bytes)
		take_totals(tgid, ev);
	if (ev)
		bpf_ringbuf_submit(ev, 0);
	if (st)
		bpf_map_delete_elem(&sockstats, &tgid);
	return 0;
}
