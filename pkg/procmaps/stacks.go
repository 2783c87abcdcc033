package procmaps

import (
	"fmt"
	"time"

	"github.com/udstrace/udstrace/pkg/event"
	"github.com/udstrace/udstrace/pkg/kstack"
	"github.com/udstrace/udstrace/pkg/ktable"
	"github.com/udstrace/udstrace/pkg/unwind"
)

// Placed is an executable mapping as the kernel's mapping cache had it: where module Mod is.
type Placed struct {
	Start, End, Pgoff uint64
	Mod               uint32
}

// Copied is a stack the kernel could not finish: registers at one frame and the bytes above sp.
type Copied struct {
	IP, SP, BP uint64
	Exact      bool     // IP is where execution was, not a return address
	Maps       []Placed // the thread's mappings as the kernel had cached them (may be empty)
	Bytes      []byte
}

// region is one mapping an unwind may pass through, with its module.
type region struct {
	start, end, pgoff uint64
	mod               *Module
}

// Unwind finishes a copied stack in user space with the modules' CFI, returning encoded frames,
// innermost first. Mappings come from the kernel's snapshot first, then from what this table
// knows of pid. It waits for a module's CFI while it is being parsed (Module.CFI), without the
// table's lock. A frame outside any executable mapping ends the stack: it is never reported.
func (t *Table) Unwind(pid uint32, c *Copied, max int) []kstack.Frame {
	regions := t.regions(pid, c.Maps)
	find := func(pc uint64) *region {
		for i := range regions {
			if pc >= regions[i].start && pc < regions[i].end {
				return &regions[i]
			}
		}
		return nil
	}
	resolve := func(pc uint64) (*unwind.Table, uint64, bool) {
		r := find(pc)
		if r == nil || r.mod == nil {
			return nil, 0, false
		}
		off := pc - r.start + r.pgoff
		va, ok := r.mod.vaddr(off)
		pg := uint32(off >> ktable.PageShift)
		cfi := r.mod.PageTable(pg)
		if !ok || cfi == nil {
			return nil, 0, false
		}
		if t.PageUsed != nil {
			t.PageUsed(r.mod, pg)
		}
		return cfi, pc - va, true
	}
	pcs := unwind.Unwind(unwind.Regs{IP: c.IP, SP: c.SP, FP: c.BP, IPIsReturn: !c.Exact}, c.Bytes, resolve, max)
	out := make([]kstack.Frame, 0, len(pcs))
	for i, pc := range pcs {
		look := pc
		if i > 0 || !c.Exact {
			look = pc - 1
		}
		r := find(look)
		if r == nil {
			break
		}
		out = append(out, t.encode(r, pc))
	}
	return out
}

// namedWait bounds how long an unwind waits for a module the kernel named to be opened.
const namedWait = 200 * time.Millisecond

// regions lists the mappings an unwind of pid may use: the snapshot's, then the table's.
func (t *Table) regions(pid uint32, snap []Placed) []region {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]region, 0, len(snap)+16)
	for _, p := range snap {
		var m *Module
		if p.Mod != 0 {
			if m = t.byID[p.Mod]; m == nil {
				t.mu.Unlock() // the kernel's request for it is on its way
				m = t.WaitID(p.Mod, namedWait)
				t.mu.Lock()
			}
		}
		out = append(out, region{start: p.Start, end: p.End, pgoff: p.Pgoff, mod: m})
	}
	p := t.procs[pid]
	if p == nil || !p.loaded {
		_ = t.load(pid) // first sight of a process (attach, system-wide, cfi mode)
		p = t.procs[pid]
	}
	if p != nil {
		for _, m := range p.maps {
			out = append(out, region{start: m.start, end: m.end, pgoff: m.pgoff, mod: m.mod})
		}
	}
	return out
}

// encode names pc in region r: module id and file offset, or the raw address without a module.
func (t *Table) encode(r *region, pc uint64) kstack.Frame {
	if r.mod == nil {
		return kstack.Encode(0, pc)
	}
	id := r.mod.ID
	if id == 0 && t.Register != nil {
		id = t.Register(r.mod)
	}
	if id == 0 {
		return kstack.Encode(0, pc)
	}
	return kstack.Encode(id, pc-r.start+r.pgoff)
}

// ResolveRaw names the raw frames of a kernel stack of pid (ones the kernel met where it could
// not read the mapping) from what this table knows of pid; false when it changed nothing.
func (t *Table) ResolveRaw(pid uint32, frames []kstack.Frame) ([]kstack.Frame, bool) {
	var regions []region
	var out []kstack.Frame
	for i, f := range frames {
		if f.Module() != 0 {
			continue
		}
		if regions == nil {
			regions = t.regions(pid, nil)
		}
		pc, look := f.Offset(), f.Offset()
		if i > 0 {
			look = pc - 1 // a return address
		}
		for k := range regions {
			if r := &regions[k]; look >= r.start && look < r.end && r.mod != nil {
				if out == nil {
					out = append([]kstack.Frame(nil), frames...)
				}
				out[i] = t.encode(r, pc)
				break
			}
		}
	}
	if out == nil {
		return frames, false
	}
	return out, true
}

// Caller encodes the return address a free was called from, with what the table knows of pid.
func (t *Table) Caller(pid uint32, pc uint64) kstack.Frame {
	regions := t.regions(pid, nil)
	for i := range regions {
		if pc-1 >= regions[i].start && pc-1 < regions[i].end {
			return t.encode(&regions[i], pc)
		}
	}
	return kstack.Encode(0, pc)
}

// Frame decodes an encoded frame into the report's form; ret says it is a return address.
func (t *Table) Frame(f kstack.Frame, ret bool) event.Frame {
	id := f.Module()
	if id == 0 {
		return event.Frame{Addr: f.Offset(), Return: ret}
	}
	t.mu.Lock()
	m := t.byID[id]
	if m != nil && !m.Opened() {
		if real := t.mods[m.Key]; real != nil && real.Opened() {
			m = real // opened later, another way (the exec path of a process already gone)
			t.byID[id] = m
		}
	}
	t.mu.Unlock()
	if m == nil {
		return event.Frame{Module: "[unknown module]", ModuleKey: unknownKey(id), FileOffset: f.Offset(), Return: ret}
	}
	return event.Frame{Module: m.Path, ModuleKey: m.Key, BuildID: m.BuildID, FileOffset: f.Offset(), Return: ret}
}

func unknownKey(id uint32) string { return fmt.Sprintf("mod#%d", id) }
