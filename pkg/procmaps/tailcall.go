package procmaps

import "github.com/udstrace/udstrace/pkg/symbolize"

// TailFrame is a frame put back after a tail call: the module and the file offset just after
// the jump, which names it like a return address.
type TailFrame struct {
	Mod *Module
	Off uint64
}

// TailCalls puts back, innermost first, the frames of functions that left by a tail call
// between a frame at file offset calleeOff in callee (a pc inside the function) and its
// caller, whose call returns to file offset retOff in caller (see symbolize.TailCalls).
// A name a call site gives is looked up in the other modules t knows, too, as gdb looks it
// up in every file of the process.
func (t *Table) TailCalls(caller *Module, retOff uint64, callee *Module, calleeOff uint64) []TailFrame {
	if caller == nil || callee == nil || caller.sym == nil || callee.sym == nil {
		return nil
	}
	ret, ok := caller.vaddr(retOff)
	if !ok {
		return nil
	}
	pc, ok := callee.vaddr(calleeOff)
	if !ok {
		return nil
	}
	var others []*Module
	elsewhere := func(name string) bool {
		if others == nil {
			for _, m := range t.Modules() {
				if m != caller && m != callee && m.sym != nil {
					others = append(others, m)
				}
			}
		}
		for _, m := range others {
			if m.sym.DefinesGlobal(name) {
				return true
			}
		}
		return false
	}
	var out []TailFrame
	for _, f := range symbolize.TailCalls(caller.sym, ret, callee.sym, pc, elsewhere) {
		m := caller
		if f.InCallee {
			m = callee
		}
		off, ok := m.sym.VAddrToFileOffset(f.PC)
		if !ok {
			return nil
		}
		out = append(out, TailFrame{Mod: m, Off: off})
	}
	return out
}
