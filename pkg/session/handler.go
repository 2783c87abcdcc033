package session

import (
	"path/filepath"
	"strings"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// handler turns loader events into report input, on the reading goroutine.
type handler struct{ s *Session }

func (h *handler) Alloc(a *event.Alloc, raw *loader.RawStack) {
	if min := h.s.opts.MinSize; min > 0 && a.Kind != event.Free && a.Kind != event.Munmap && a.Size < min {
		return // frees of what was left out count as unmatched, which the report explains
	}
	if raw.IP != 0 || raw.PCs != nil {
		a.Stack = h.s.maps.Frames(a.PID, a.Kind, &procmaps.Stack{IP: raw.IP, SP: raw.SP, BP: raw.BP, PCs: raw.PCs, Copy: raw.Copy})
	}
	h.s.bmu.Lock()
	h.s.builder.Alloc(a)
	h.s.bmu.Unlock()
}

func (h *handler) Exec(e *loader.Exec) {
	h.s.maps.Exec(e.PID, e.Exe, e.StartCode, e.InterpBase, procmaps.KernelDevKey(e.Dev, e.Ino))
	h.s.bmu.Lock()
	h.s.builder.Proc(&e.Proc)
	h.s.bmu.Unlock()
	h.checkLibc(e.PID)
}

func (h *handler) Proc(p *event.Proc, sock *event.SocketStats) {
	switch p.Kind {
	case event.ProcFork:
		h.s.maps.Fork(p.PPID, p.PID)
	case event.ProcExit:
		h.s.maps.Exit(p.PID)
	}
	h.s.bmu.Lock()
	defer h.s.bmu.Unlock()
	if sock != nil {
		h.s.builder.Sockets(*sock)
	}
	h.s.builder.Proc(p)
}

func (h *handler) Map(m *loader.Mapping) {
	h.s.maps.Map(m.PID, m.Addr, m.Len, m.Pgoff, m.Dev, m.Ino, m.Name)
	if isLibc(m.Name) {
		h.checkLibc(m.PID)
	}
}

func isLibc(name string) bool {
	base := filepath.Base(name)
	return strings.HasPrefix(base, "libc.so") || strings.HasPrefix(base, "libc-") || strings.HasPrefix(base, "libc.musl")
}

// checkLibc attaches to a libc the process maps that was not resolved up front, and says so.
func (h *handler) checkLibc(pid uint32) {
	for key, m := range h.s.maps.Modules() {
		if !isLibc(m.Path) || h.s.tracer.AttachedProbes(key) != nil {
			continue
		}
		path := m.Path
		if err := h.s.attachLibc(procRoot(pid) + path); err != nil {
			h.s.warn("cannot probe %s mapped by pid %d: %v", path, pid, err)
			continue
		}
		h.s.warn("libc %s (pid %d) was probed only when it was mapped: its first allocations may be missing", path, pid)
	}
}

func procRoot(pid uint32) string { return "/proc/" + itoa(pid) + "/root" }

func itoa(n uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// symbolizer serves the report's symbol lookups from the modules kept open during the trace.
type symbolizer struct{ maps *procmaps.Table }

func (y *symbolizer) Symbolize(f event.Frame) []report.SymFrame {
	m := y.maps.Module(f.ModuleKey)
	if m == nil {
		return nil
	}
	off := f.FileOffset
	if f.Return && off > 0 {
		off-- // the call instruction, not the one after it
	}
	var out []report.SymFrame
	for _, sf := range m.Symbolize(off) {
		if f.Return && !sf.Inlined && sf.Function != "" {
			sf.Offset++ // show the return address, as gdb does
		}
		out = append(out, report.SymFrame{Function: sf.Function, Offset: sf.Offset, File: sf.File, Line: sf.Line, Inlined: sf.Inlined})
	}
	return out
}
