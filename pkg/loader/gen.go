// Package loader loads udstrace's BPF programs, attaches them to libc and the kernel, and reads their events.
package loader

//go:generate go tool bpf2go -cc clang-19 -strip llvm-strip-19 -target amd64 -type alloc_event -type free_event -type sys_event -type copy_event -type stack_event -type proc_event -type sock_stats -type count_key -type count_val -type total_key -type sampled_key -type module_key -type module_info -type unwind_rule -type map_entry -type kmem_event -type ksys_event udstrace ../../bpf/udstrace.c -- -mcpu=v3 -I../../bpf -I/usr/include/x86_64-linux-gnu -Wall -Werror
