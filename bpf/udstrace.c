//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * udstrace's BPF programs, one header per concern:
 *   alloc.h    libc allocator uprobes (malloc family, free)
 *   count.h    count mode: calls aggregated in the kernel by stack
 *   syscalls.h the raw sys_enter/sys_exit programs, dispatching by syscall number
 *   sysnr.h    the architecture's syscall numbers and argument registers
 *   memsys.h   mmap/munmap/mremap/brk: the request at entry, the result at exit
 *   sockets.h  AF_UNIX socket syscall counters
 *   kmem.h     --kernel: the kernel's own allocations in traced tasks, their frees
 *   procs.h    exec/fork/exit: scope, mappings, cleanup
 *   thread.h   per-thread state: the call in flight, mapping cache, scratch frames
 *   modules.h  mapped files by id, the threads' mapping caches, module requests
 *   unwind.h   the in-kernel CFI unwinder over tables user space compiles
 *   stack.h    user stacks, stack ids, the copy fallback and event output
 */
#include "procs.h"
#include "syscalls.h"
#include "count.h"
#include "kmem.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Referenced so their layouts reach BTF, from which bpf2go generates the Go types. */
const struct alloc_event *unused_alloc_event __attribute__((unused));
const struct free_event *unused_free_event __attribute__((unused));
const struct sys_event *unused_sys_event __attribute__((unused));
const struct copy_event *unused_copy_event __attribute__((unused));
const struct stack_event *unused_stack_event __attribute__((unused));
const struct proc_event *unused_proc_event __attribute__((unused));
const struct count_key *unused_count_key __attribute__((unused));
const struct module_key *unused_module_key __attribute__((unused));
const struct module_info *unused_module_info __attribute__((unused));
const struct unwind_rule *unused_unwind_rule __attribute__((unused));
const struct kmem_event *unused_kmem_event __attribute__((unused));
const struct ksys_event *unused_ksys_event __attribute__((unused));
