package symbolize

import (
	"debug/elf"
	"errors"
)

// A function that ends in a jump to another leaves no frame: the stack shows its caller's
// call and the function jumped to. gdb puts the missing frames back from DWARF call sites
// (dwarf2/frame-tailcall.c, call_site_find_chain in dwarf2/loc.c); TailCalls does it the
// same way, so a stack reads like gdb's bt.

// Bounds on one search, so hostile DWARF cannot make it long.
const (
	maxTailDepth  = 64   // call sites on one path
	maxTailVisits = 4096 // call sites entered in all
)

// TailFrame is a frame put back between a caller and its callee: the function that made
// the tail call, named by PC, the address after its jump (like a return address), in the
// caller's file or, when InCallee, in the callee's.
type TailFrame struct {
	InCallee bool
	PC       uint64
}

// errNoChain ends a search that cannot give a sure answer (gdb's NO_ENTRY_VALUE_ERROR).
var errNoChain = errors.New("no unambiguous tail-call chain")

// fnRef is a function entry in one of the two files.
type fnRef struct {
	b     *Binary
	entry uint64
}

// siteRef is a call site in one of the two files.
type siteRef struct {
	b  *Binary
	cs callSite
}

type siteKey struct {
	b  *Binary
	pc uint64
}

// tailSearch is call_site_find_chain_1: a depth-first walk from the caller's call site
// through tail calls to the callee's function, keeping of all paths found only the call
// sites every path starts with (callers) and ends with (callees).
type tailSearch struct {
	caller, callee *Binary
	elsewhere      func(name string) bool
	goal           fnRef
	path           []siteRef
	onPath         map[siteKey]bool
	visits         int

	result           []siteRef // the first path found
	found            bool
	callers, callees int
}

// TailCalls returns, innermost first, the frames of functions that left by a tail call
// between a callee frame at calleePC in callee (a pc inside the function: a return address
// minus one) and its caller, whose call returns to retPC in caller. Nothing when DWARF
// cannot say: no call site at retPC, a target it cannot resolve, or paths sharing no call
// site. When paths differ in the middle, the frames they agree on at both ends are given,
// as gdb gives them. elsewhere (may be nil) says whether another file of the process
// defines a name as a global symbol (see targets).
func TailCalls(caller *Binary, retPC uint64, callee *Binary, calleePC uint64, elsewhere func(name string) bool) (out []TailFrame) {
	defer func() {
		if recovered(recover()) != nil {
			out = nil
		}
	}()
	if caller == nil || callee == nil {
		return nil
	}
	caller.load()
	callee.load()
	if caller.dwarf() == nil {
		return nil
	}
	start, ok := callee.funcStart(calleePC)
	if !ok {
		return nil
	}
	cs, ok := caller.dwarf().callSiteAt(retPC)
	if !ok {
		return nil
	}
	s := &tailSearch{caller: caller, callee: callee, elsewhere: elsewhere, goal: fnRef{callee, start}, onPath: map[siteKey]bool{}}
	if s.visit(siteRef{caller, cs}) != nil || !s.found {
		return nil
	}
	n := len(s.result)
	var picked []siteRef
	if s.callers == n && s.callees == n {
		picked = s.result
	} else {
		// gdb's pretend_pc order: the callees' end, then the callers' (each outermost first here).
		picked = append(picked, s.result[:s.callers]...)
		if s.callees != n {
			picked = append(picked, s.result[n-s.callees:]...)
		} else {
			picked = s.result
		}
	}
	for i := len(picked) - 1; i >= 0; i-- {
		out = append(out, TailFrame{InCallee: picked[i].b != caller, PC: picked[i].cs.pc})
	}
	return out
}

// visit follows the call site on top of the path (or the caller's own, first) to its targets.
func (s *tailSearch) visit(site siteRef) error {
	if s.visits++; s.visits > maxTailVisits {
		return errNoChain
	}
	targets, err := s.targets(site)
	if err != nil {
		return err
	}
	for _, t := range targets {
		if t == s.goal {
			if !s.candidate() {
				return errNoChain // two paths with nothing in common
			}
			continue
		}
		if t.b.dwarf() == nil {
			return errNoChain
		}
		entry, tails, ok := t.b.dwarf().function(t.entry)
		if !ok || entry != t.entry {
			return errNoChain // a target that is no DWARF function's entry
		}
		for _, cs := range tails {
			k := siteKey{t.b, cs.pc}
			if s.onPath[k] {
				continue
			}
			if len(s.path) >= maxTailDepth {
				return errNoChain
			}
			s.onPath[k] = true
			s.path = append(s.path, siteRef{t.b, cs})
			err := s.visit(s.path[len(s.path)-1])
			s.path = s.path[:len(s.path)-1]
			delete(s.onPath, k)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// candidate is chain_candidate: it intersects the path found with the ones before; false
// when nothing is left in common.
func (s *tailSearch) candidate() bool {
	p := s.path
	if !s.found {
		s.found = true
		s.result = append([]siteRef(nil), p...)
		s.callers, s.callees = len(p), len(p)
		return true
	}
	n := len(s.result)
	for i := 0; i < min(s.callers, len(p)); i++ {
		if s.result[i] != p[i] {
			s.callers = i
			break
		}
	}
	s.callers = min(s.callers, len(p))
	for i := 0; i < min(s.callees, len(p)); i++ {
		if s.result[n-1-i] != p[len(p)-1-i] {
			s.callees = i
			break
		}
	}
	s.callees = min(s.callees, len(p))
	return s.callers != 0 || s.callees != 0
}

// targets resolves a call site's callee to function entries. gdb looks a name up in every
// file of the process, a global symbol anywhere before a local one: here a global symbol of
// the call site's file, the caller's or the callee's, then, unless another file defines it
// globally (glibc's ld.so calls its hidden __strdup, gdb finds libc's), a local one.
func (s *tailSearch) targets(site siteRef) ([]fnRef, error) {
	t, ok := site.b.dwarf().target(site.cs.die)
	if !ok {
		return nil, errNoChain
	}
	if t.name == "" {
		out := make([]fnRef, len(t.addrs))
		for i, a := range t.addrs {
			out[i] = fnRef{site.b, a}
		}
		return out, nil
	}
	files := []*Binary{site.b, s.caller, s.callee}
	for _, b := range files {
		if sym, ok := b.symbolAddr(t.name); ok && sym.global {
			return []fnRef{{b, sym.addr}}, nil
		}
	}
	if s.elsewhere != nil && s.elsewhere(t.name) {
		return nil, errNoChain // in a file the search does not have
	}
	for _, b := range files {
		if sym, ok := b.symbolAddr(t.name); ok {
			return []fnRef{{b, sym.addr}}, nil
		}
	}
	return nil, errNoChain
}

// funcStart is gdb's get_pc_function_start: the entry of the DWARF function holding pc,
// else the start of its symbol.
func (b *Binary) funcStart(pc uint64) (uint64, bool) {
	if b.dwarf() != nil {
		if entry, _, ok := b.dwarf().function(pc); ok {
			return entry, true
		}
	}
	if b.symbols() != nil {
		if _, start, ok := b.symbols().lookup(pc); ok {
			return start, true
		}
	}
	return 0, false
}

// symbolAddr returns the function symbol name defined in this file.
func (b *Binary) symbolAddr(name string) (namedSym, bool) {
	if b.symbols() == nil {
		return namedSym{}, false
	}
	sym, ok := b.symbols().byName[name]
	return sym, ok
}

// DefinesGlobal reports whether name is a global or weak function symbol of this file's own
// symbol tables. It loads neither DWARF nor a debug file: a search asks it of every module in
// the trace, and decompressing a large binary's DWARF for it cost 110 ms of a 0.45 s run.
func (b *Binary) DefinesGlobal(name string) bool {
	b.globalsOnce.Do(func() {
		b.closeMu.Lock()
		defer b.closeMu.Unlock()
		if b.closed {
			return // closed before any load: nothing can be read
		}
		raw, _ := readSymbols(b.f, b.size)
		b.globals = globalNames(raw)
	})
	return b.globals[name]
}

// globalNames are the defined global or weak functions among raw.
func globalNames(raw []rawSym) map[string]bool {
	out := map[string]bool{}
	for _, s := range raw {
		if isFunc(s.typ) && s.shndx != elf.SHN_UNDEF && (s.bind == elf.STB_GLOBAL || s.bind == elf.STB_WEAK) {
			out[s.name] = true
		}
	}
	return out
}

// VAddrToFileOffset maps a virtual address to its file offset via the PT_LOAD segments.
func (b *Binary) VAddrToFileOffset(va uint64) (uint64, bool) {
	for _, s := range b.loads {
		if va >= s.vaddr && va-s.vaddr < s.filesz {
			return s.off + (va - s.vaddr), true
		}
	}
	return 0, false
}
