package session

import (
	"cmp"
	"fmt"
	"path/filepath"
	"slices"

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
	if m.Key == h.s.namedKey {
		name, ok = cmpOr(name, "unknown"), true // the user named it: probed whatever it exports
	}
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
// malloc: none of its allocations could be traced, which must not read as a silent zero. The
// first process of each program is named; the others running it are not said again.
func (h *handler) noteExit(pid uint32, exeKey string) {
	h.s.mu.Lock()
	_, set := h.s.meta.Allocators[pid]
	h.s.mu.Unlock()
	if set || exeKey == "" {
		return
	}
	exe := h.s.maps.Module(exeKey)
	if exe == nil || h.untraced[exeKey] {
		return // said once per program: a loop running it must not grow the warnings without bound
	}
	h.untraced[exeKey] = true
	h.s.warn("pid %d (%s): its heap allocations are not traced: %s", pid, exe.Path, loader.Untraceable(exe.FdPath()))
}

// attachAllocators probes every object a running process maps that exports malloc (its
// mappings are loaded) and names its allocator: the first of them in its link map, the order
// its dynamic linker searches; without the link map (static, or unreadable), the executable,
// then the others before libc.
func (s *Session) attachAllocators(pid int) error {
	var found []*procmaps.Module
	names := map[*procmaps.Module]string{}
	for _, m := range s.maps.ModulesOf(uint32(pid)) {
		name, ok := loader.AllocatorOf(m.FdPath())
		if m.Key == s.namedKey {
			name, ok = cmpOr(name, "unknown"), true
		}
		if ok {
			found = append(found, m)
			names[m] = name
		}
	}
	if len(found) == 0 {
		return nil
	}
	rank := map[string]int{}
	exeKey, _ := loader.FileKey(fmt.Sprintf("/proc/%d/exe", pid))
	rank[exeKey] = 0
	if lm, err := loader.LinkMap(pid); err == nil {
		for i, name := range lm {
			if name == "" {
				continue
			}
			if key, err := loader.FileKey(filepath.Join(procRoot(uint32(pid)), name)); err == nil {
				if _, seen := rank[key]; !seen {
					rank[key] = i + 1
				}
			}
		}
	}
	order := func(m *procmaps.Module) int {
		if r, ok := rank[m.Key]; ok {
			return r
		}
		if names[m] == "glibc" || names[m] == "musl" {
			return 1 << 30
		}
		return 1 << 20
	}
	slices.SortStableFunc(found, func(a, b *procmaps.Module) int { return cmp.Compare(order(a), order(b)) })
	for _, m := range found {
		if err := s.attachModule(m); err != nil {
			return fmt.Errorf("attaching to pid %d: probing %s: %w", pid, m.Path, err)
		}
	}
	s.mu.Lock()
	s.meta.Allocators[uint32(pid)] = report.Allocator{Name: names[found[0]], Object: found[0].Path}
	s.mu.Unlock()
	return nil
}

// attachNamed probes the allocator the user named (Options.Allocator), if any.
func (s *Session) attachNamed() error {
	if s.opts.Allocator == "" {
		return nil
	}
	m, err := s.maps.OpenFile(s.opts.Allocator)
	if err != nil {
		return fmt.Errorf("opening allocator %s: %w", s.opts.Allocator, err)
	}
	s.namedKey = m.Key
	s.tracer.NameAllocator(m.Key, s.opts.AllocatorPrefix)
	if err := s.attachModule(m); err != nil {
		return fmt.Errorf("probing the allocator %s: %w", s.opts.Allocator, err)
	}
	return nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
