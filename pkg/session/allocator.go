package session

import (
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// allocatorOf says whether a module exports malloc and which allocator it is, once per file:
// the handler asks for every executable mapping.
func (h *handler) allocatorOf(m *procmaps.Module) (string, bool) {
	if a, ok := h.allocs[m.Key]; ok {
		return a, a != ""
	}
	name, ok := loader.AllocatorOf(m.FdPath())
	h.allocs[m.Key] = name
	return name, ok
}

// noteMapped handles an object a process mapped executable. The first one that exports malloc
// (the executable, then LD_PRELOAD objects, then libraries breadth first: the order the loader
// maps them and searches them) is the process's allocator. Every such object is probed: one
// not resolved up front (a child's jemalloc, a dlopen'd allocator) only from now on, which the
// report says.
func (h *handler) noteMapped(pid uint32, m *procmaps.Module) {
	name, ok := h.allocatorOf(m)
	if !ok {
		return
	}
	h.s.mu.Lock()
	if _, set := h.s.meta.Allocators[pid]; !set {
		h.s.meta.Allocators[pid] = report.Allocator{Name: name, Object: m.Path}
	}
	h.s.mu.Unlock()
	if h.s.tracer.AttachedProbes(m.Key) != nil {
		return
	}
	if err := h.s.attachModule(m); err != nil {
		h.s.warn("cannot probe the allocator %s mapped by pid %d: %v", m.Path, pid, err)
		return
	}
	h.s.warn("allocator %s (pid %d) was probed only when it was mapped: its first allocations may be missing", m.Path, pid)
}

// noteExec starts a new image's allocator afresh, from what the kernel mapped itself: the
// executable when it defines malloc, else its interpreter when that is the C library (musl's
// ld-musl). Not from the rest of the process's mappings, which may already be there by now but
// are not in load order; those come as map events, in order.
func (h *handler) noteExec(pid uint32, exeKey string) {
	h.s.mu.Lock()
	delete(h.s.meta.Allocators, pid)
	h.s.mu.Unlock()
	exe := h.s.maps.Module(exeKey)
	if exe == nil {
		return
	}
	h.noteMapped(pid, exe)
	interp := loader.InterpOf(exe.FdPath())
	if interp == "" {
		return
	}
	key, err := loader.FileKey(interp)
	if err != nil {
		return
	}
	if m := h.s.maps.Module(key); m != nil {
		h.noteMapped(pid, m)
	}
}

// noteFork gives a child its parent's allocator: the same image.
func (h *handler) noteFork(parent, child uint32) {
	h.s.mu.Lock()
	defer h.s.mu.Unlock()
	if a, ok := h.s.meta.Allocators[parent]; ok {
		h.s.meta.Allocators[child] = a
	}
}

// noteExit warns of a process that exec'd and exited without mapping any object that exports
// malloc: none of its allocations could be traced, which must not read as a silent zero.
func (h *handler) noteExit(pid uint32, exeKey string) {
	h.s.mu.Lock()
	_, set := h.s.meta.Allocators[pid]
	h.s.mu.Unlock()
	if set || exeKey == "" {
		return
	}
	exe := h.s.maps.Module(exeKey)
	if exe == nil {
		return
	}
	h.s.warn("pid %d (%s): its heap allocations are not traced: %s", pid, exe.Path, loader.Untraceable(exe.FdPath()))
}
