package main

import (
	"errors"
	"strings"

	"github.com/udstrace/udstrace/pkg/loader"
)

// btfPath is where the kernel publishes its types; cilium/ebpf reads it for CO-RE.
const btfPath = "/sys/kernel/btf/vmlinux"

// translateKernel words loader errors for users.
func translateKernel(err error, msg string) string {
	if _, cause, ok := strings.Cut(msg, "load kernel spec: "); ok {
		// cilium/ebpf could not parse the kernel's types, which every CO-RE program needs.
		return "cannot read the kernel's type information (" + btfPath + ": " + cause + "): the file is unreadable or damaged; " +
			"udstrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y and an intact " + btfPath
	}
	switch {
	case errors.Is(err, loader.ErrMissingFeature):
		return msg + " (udstrace needs Linux ≥ 5.15 with BTF, uprobes and ring buffers)"
	case errors.Is(err, loader.ErrVerifier):
		return msg
	case errors.Is(err, loader.ErrStatic):
		return msg + ": udstrace probes the allocator a program binds malloc to; a static binary exports none (if it is not stripped, name it: --allocator PROGRAM)"
	case errors.Is(err, loader.ErrGoProgram):
		return msg + " (use Go's own profiler: runtime/pprof heap profiles)"
	case errors.Is(err, loader.ErrNoLibc), errors.Is(err, loader.ErrNoAllocatorObject):
		return msg + ": udstrace probes the malloc a program binds to; this program (e.g. a Go binary) loads no object that exports one (name its allocator with --allocator FILE)"
	case strings.Contains(msg, "tracefs"):
		return msg + ": mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"
	}
	return msg
}
