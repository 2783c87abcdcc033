//go:build ignore
/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright (c) 2026 The udstrace Authors */
/*
 * The bench's trap floor: empty uprobe programs at udstrace's own probe
 * offsets, so the cost measured is the uprobe traps and nothing else. Each
 * program only counts its hits for one process (target_tgid, set before
 * loading), so the bench can check it saw exactly the expected calls.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The traced process: the bench sets it before loading. */
volatile const __u32 target_tgid;

enum { MALLOC_ENTER, MALLOC_RETURN, FREE_ENTER, NSLOTS };

/* Hits per program, per CPU: no atomics, no shared cache line. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NSLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline int hit(__u32 slot)
{
	if ((bpf_get_current_pid_tgid() >> 32) != target_tgid)
		return 0;
	__u64 *n = bpf_map_lookup_elem(&hits, &slot);
	if (n)
		(*n)++;
	return 0;
}

SEC("uprobe")
int malloc_enter(void *ctx)
{
	return hit(MALLOC_ENTER);
}

SEC("uretprobe")
int malloc_return(void *ctx)
{
	return hit(MALLOC_RETURN);
}

SEC("uprobe")
int free_enter(void *ctx)
{
	return hit(FREE_ENTER);
}
