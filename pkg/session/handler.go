package session

import (
	"fmt"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/procmaps"
	"github.com/udstrace/udstrace/pkg/report"
)

// handler turns loader events into report input, on the reading goroutine.
type handler struct{ s *Session }

func (h *handler) Alloc(a *event.Alloc, raw *loader.RawStack) {
	if a.Sampled {
		h.s.bmu.Lock()
		h.s.addSample(a)
		h.s.bmu.Unlock()
		return
	}
	if a.Weighted && a.Kind != event.Free {
		a.Weight = h.s.callWeight(a.Size)
	}
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
	h.forgetPicked(e.PID)
	h.s.builder.Proc(&e.Proc)
	h.s.bmu.Unlock()
	h.checkLibc(e.PID)
}

func (h *handler) Proc(p *event.Proc, sock *event.SocketStats, totals []loader.Total) {
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
	for _, t := range totals { // before the exit: they belong to this incarnation
		h.s.builder.Totals(t.PID, t.Kind, t.Calls, t.Bytes)
	}
	if p.Kind == event.ProcExit {
		h.forgetPicked(p.PID)
	}
	h.s.builder.Proc(p)
}

func (h *handler) Map(m *loader.Mapping) {
	h.s.maps.Map(m.PID, m.Addr, m.Len, m.Pgoff, m.Dev, m.Ino, m.Name)
	if loader.IsLibcName(m.Name) {
		h.checkLibc(m.PID)
	}
}

// forgetPicked clears the kernel's table of picked blocks of a process whose image is gone
// (full mode with sampling); the caller holds bmu.
func (h *handler) forgetPicked(pid uint32) {
	if h.s.opts.SampleBytes == 0 || h.s.opts.Mode == "count" {
		return
	}
	_ = h.s.tracer.ForgetSampled(pid, h.s.builder.LiveAddrs(pid))
}

// checkLibc attaches to a libc the process maps that was not resolved up front, and says so.
func (h *handler) checkLibc(pid uint32) {
	for key, m := range h.s.maps.Modules() {
		if !loader.IsLibcName(m.Path) || h.s.tracer.AttachedProbes(key) != nil {
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

func procRoot(pid uint32) string { return fmt.Sprintf("/proc/%d/root", pid) }

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
