package procmaps

import (
	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/unwind"
)

// MaxFrames is the deepest stack udstrace reports.
const MaxFrames = 127

// Stack is a user stack as the kernel captured it.
type Stack struct {
	IP, SP, BP uint64
	PCs        []uint64 // frame-pointer walk, innermost first (fp mode)
	Copy       []byte   // stack bytes from SP upward (copy mode)
}

// Frames turns a captured stack into file-relative frames. For heap calls, frame 0 is the
// allocator function itself (the stack was taken at its return, in the caller).
func (t *Table) Frames(pid uint32, kind event.Kind, st *Stack) []event.Frame {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.procs[pid]
	if p == nil || !p.loaded {
		_ = t.load(pid) // first sight of a process already running (attach, system-wide)
		p = t.procs[pid]
	}
	if p == nil {
		p = t.proc(pid)
	}
	var pcs []uint64
	switch {
	case st.Copy != nil:
		resolve := func(pc uint64) (*unwind.Table, uint64, bool) {
			m := t.mapping(pid, p, pc)
			if m == nil {
				return nil, 0, false
			}
			va, ok := m.mod.vaddr(pc - m.start + m.pgoff)
			cfi := m.mod.CFI()
			if !ok || cfi == nil {
				return nil, 0, false
			}
			return cfi, pc - va, true
		}
		pcs = unwind.Unwind(unwind.Regs{IP: st.IP, SP: st.SP, FP: st.BP}, st.Copy, resolve, MaxFrames)
	case st.PCs != nil:
		pcs = st.PCs
	}
	frames := make([]event.Frame, 0, len(pcs)+1)
	if kind.IsHeap() && kind != event.Free {
		if f, ok := t.allocatorFrame(p, kind); ok {
			frames = append(frames, f)
		}
	}
	for i, pc := range pcs {
		if len(frames) >= MaxFrames+1 {
			break
		}
		f := event.Frame{Addr: pc, Return: i > 0 || kind.IsHeap()}
		if m := t.mapping(pid, p, pc); m != nil {
			f.Module, f.ModuleKey, f.BuildID = m.mod.Path, m.mod.Key, m.mod.BuildID
			f.FileOffset = pc - m.start + m.pgoff
		}
		frames = append(frames, f)
	}
	return frames
}

// mapping finds the mapping of pc, re-reading /proc once if the process mapped something new.
func (t *Table) mapping(pid uint32, p *proc, pc uint64) *mapping {
	if m := p.find(pc); m != nil {
		return m
	}
	return nil
}

func (t *Table) allocatorFrame(p *proc, kind event.Kind) (event.Frame, bool) {
	for i := range p.maps {
		m := &p.maps[i]
		offs, ok := t.allocators[m.mod.Key]
		if !ok {
			continue
		}
		off, ok := offs[uint8(kind)]
		if !ok {
			continue
		}
		addr := m.start + off - m.pgoff
		return event.Frame{Addr: addr, Module: m.mod.Path, ModuleKey: m.mod.Key, BuildID: m.mod.BuildID, FileOffset: off}, true
	}
	return event.Frame{}, false
}
