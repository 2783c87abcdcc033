package symbolize

import (
	"debug/dwarf"
	"sort"
)

// DWARF call-site information as GCC emitted it before DWARF 5 (the GNU extensions).
const (
	tagGNUCallSite          dwarf.Tag  = 0x4109
	attrGNUCallSiteTarget   dwarf.Attr = 0x2113
	attrGNUTailCall         dwarf.Attr = 0x2115
	attrGNUAllTailCallSites dwarf.Attr = 0x2116
	attrGNUAllCallSites     dwarf.Attr = 0x2117
)

// maxUnitCallSites bounds the call sites one compilation unit may add, so hostile DWARF
// cannot make the index grow without limit.
const maxUnitCallSites = 1 << 20

// callSite is one DW_TAG_call_site: the address its call returns to (after a tail call's
// jump: the address after the jump) and its DIE, read again only when its target is needed.
type callSite struct {
	pc  uint64
	die dwarf.Offset
}

// callTarget is what a call site calls: function entries in its own file, or a name
// (a declaration: the function is in another unit or another file).
type callTarget struct {
	addrs []uint64
	name  string
}

// fnCtx is the subprogram a DIE is in while a unit is walked, for its tail-call list.
type fnCtx struct {
	n        *inlNode // nil: no code
	e        *dwarf.Entry
	complete int8 // 0 unknown, 1 the list of tail calls is complete, -1 it is not
}

// addCallSite records a call site DIE met while walking a unit: in the unit's table by
// return address, and, for a tail call, in its function's list when the function says that
// list is complete (DW_AT_call_all_calls and kin), as gdb's read_call_site_scope does.
func (u *unit) addCallSite(d *dwarf.Data, e *dwarf.Entry, fn *fnCtx) {
	if len(u.sites) >= maxUnitCallSites {
		return
	}
	pc, ok := e.Val(dwarf.AttrCallReturnPC).(uint64)
	if !ok {
		if pc, ok = e.Val(dwarf.AttrLowpc).(uint64); !ok {
			return
		}
	}
	cs := callSite{pc: pc, die: e.Offset}
	u.sites = append(u.sites, cs)
	if !isTrue(e.Val(dwarf.AttrCallTailCall)) && !isTrue(e.Val(attrGNUTailCall)) {
		return
	}
	if fn == nil || fn.n == nil {
		return
	}
	if fn.complete == 0 {
		fn.complete = -1
		if allCallsKnown(d, fn.e) {
			fn.complete = 1
		}
	}
	if fn.complete > 0 {
		fn.n.tails = append(fn.n.tails, cs)
	}
}

// sortSites orders the unit's call sites by return address; of two with one address the
// first in the unit is kept, as gdb keeps it.
func (u *unit) sortSites() {
	sort.SliceStable(u.sites, func(i, j int) bool { return u.sites[i].pc < u.sites[j].pc })
	out := u.sites[:0]
	for i, cs := range u.sites {
		if i == 0 || cs.pc != u.sites[i-1].pc {
			out = append(out, cs)
		}
	}
	u.sites = out
}

// siteAt returns the call site whose call returns to pc.
func (u *unit) siteAt(pc uint64) (callSite, bool) {
	i := sort.Search(len(u.sites), func(i int) bool { return u.sites[i].pc >= pc })
	if i < len(u.sites) && u.sites[i].pc == pc {
		return u.sites[i], true
	}
	return callSite{}, false
}

// allCallsKnown reports whether a subprogram's DIE (or the DIE it completes) says every
// (tail) call in it has a call site DIE.
func allCallsKnown(d *dwarf.Data, e *dwarf.Entry) bool {
	r := d.Reader()
	for hop := 0; hop < maxNameHops && e != nil; hop++ {
		for _, a := range []dwarf.Attr{dwarf.AttrCallAllCalls, dwarf.AttrCallAllTailCalls, attrGNUAllCallSites, attrGNUAllTailCallSites} {
			if isTrue(e.Val(a)) {
				return true
			}
		}
		next, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset)
		if !ok {
			if next, ok = e.Val(dwarf.AttrSpecification).(dwarf.Offset); !ok {
				return false
			}
		}
		r.Seek(next)
		var err error
		if e, err = r.Next(); err != nil {
			return false
		}
	}
	return false
}

func isTrue(v any) bool { b, ok := v.(bool); return ok && b }

// unitAt returns the loaded unit covering pc; the caller holds w.mu.
func (w *dwarfInfo) unitAt(pc uint64) *unit {
	if !w.indexed {
		w.indexed = true
		w.buildIndex()
	}
	off, ok := w.findCU(pc)
	if !ok {
		return nil
	}
	u := w.units[off]
	if u == nil {
		u = w.loadUnit(off)
		w.units[off] = u
	}
	return u
}

// callSiteAt finds the call site whose call returns to ret, in the unit holding ret-1 (a
// tail call's return address may lie past its unit's end).
func (w *dwarfInfo) callSiteAt(ret uint64) (cs callSite, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() {
		if recovered(recover()) != nil {
			cs, ok = callSite{}, false
		}
	}()
	if ret == 0 {
		return callSite{}, false
	}
	u := w.unitAt(ret - 1)
	if u == nil {
		return callSite{}, false
	}
	return u.siteAt(ret)
}

// function returns the real (not inlined) function containing pc: its entry and, when its
// list of tail calls is complete, those calls.
func (w *dwarfInfo) function(pc uint64) (entry uint64, tails []callSite, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() {
		if recovered(recover()) != nil {
			entry, tails, ok = 0, nil, false
		}
	}()
	u := w.unitAt(pc)
	if u == nil {
		return 0, nil, false
	}
	chain := u.chain(pc)
	for i := len(chain) - 1; i >= 0; i-- {
		if n := chain[i]; !n.inlined {
			// gdb's block entry: the first range as DWARF lists it.
			return n.ranges[0][0], n.tails, true
		}
	}
	return 0, nil, false
}

// target reads what the call site DIE at off calls. A DW_AT_call_target expression needs the
// caller's registers, which a frame left by a tail call no longer has: like gdb, it is unknown.
func (w *dwarfInfo) target(off dwarf.Offset) (t callTarget, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() {
		if recovered(recover()) != nil {
			t, ok = callTarget{}, false
		}
	}()
	r := w.d.Reader()
	r.Seek(off)
	e, err := r.Next()
	if err != nil || e == nil || (e.Tag != dwarf.TagCallSite && e.Tag != tagGNUCallSite) {
		return callTarget{}, false
	}
	var ref dwarf.Offset
	found := false
	for _, a := range []dwarf.Attr{dwarf.AttrCallTarget, attrGNUCallSiteTarget, dwarf.AttrCallOrigin, dwarf.AttrAbstractOrigin} {
		if v := e.Val(a); v != nil {
			ref, found = v.(dwarf.Offset)
			break
		}
	}
	if !found {
		return callTarget{}, false
	}
	r.Seek(ref)
	te, err := r.Next()
	if err != nil || te == nil {
		return callTarget{}, false
	}
	if isTrue(te.Val(dwarf.AttrDeclaration)) && te.Val(dwarf.AttrSpecification) == nil {
		name := w.linkageName(te)
		return callTarget{name: name}, name != ""
	}
	if te.Val(dwarf.AttrRanges) != nil {
		rs, err := w.d.Ranges(te)
		if err != nil {
			return callTarget{}, false
		}
		for _, rg := range rs {
			t.addrs = append(t.addrs, rg[0])
		}
		return t, len(t.addrs) > 0
	}
	if low, ok := te.Val(dwarf.AttrLowpc).(uint64); ok {
		return callTarget{addrs: []uint64{low}}, true
	}
	return callTarget{}, false
}

// linkageName is a declaration's symbol name: its linkage name along its
// specification/abstract_origin chain, else its DW_AT_name (a C function).
func (w *dwarfInfo) linkageName(e *dwarf.Entry) string {
	plain, _ := e.Val(dwarf.AttrName).(string)
	r := w.d.Reader()
	for hop := 0; hop < maxNameHops && e != nil; hop++ {
		for _, a := range []dwarf.Attr{dwarf.AttrLinkageName, attrMIPSLinkageName} {
			if s, ok := e.Val(a).(string); ok && s != "" {
				return s
			}
		}
		next, ok := e.Val(dwarf.AttrSpecification).(dwarf.Offset)
		if !ok {
			if next, ok = e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset); !ok {
				break
			}
		}
		r.Seek(next)
		var err error
		if e, err = r.Next(); err != nil {
			break
		}
	}
	return plain
}
