package symbolize

import (
	"debug/dwarf"
	"sort"
)

// maxInlineDepth bounds DIE nesting we follow, so hostile DWARF cannot make
// the tree (or a lookup) arbitrarily deep.
const maxInlineDepth = 1024

// attrMIPSLinkageName is DW_AT_MIPS_linkage_name, still emitted by old compilers.
const attrMIPSLinkageName dwarf.Attr = 0x2007

// maxNameHops bounds abstract_origin/specification chains.
const maxNameHops = 8

// inlNode is a subprogram or inlined subroutine with code.
type inlNode struct {
	ranges   [][2]uint64
	inlined  bool
	nameOff  dwarf.Offset // DIE whose name (or origin's) names this node
	callFile int
	callLine int
	kids     []kidRange // sorted by low
	tails    []callSite // a subprogram's tail calls, when DWARF says it lists them all
}

// kidRange is one address range of a child node.
type kidRange struct {
	low, high uint64
	n         *inlNode
}

// loadInlines walks the unit's DIEs and keeps the subprogram/inlined tree;
// lexical blocks and the like are flattened into their parent.
func (u *unit) loadInlines(d *dwarf.Data, r *dwarf.Reader, cu *dwarf.Entry) {
	if !cu.Children {
		return
	}
	// Each level knows its node and the subprogram it is in (inlined subroutines and
	// blocks are not one): a call site belongs to that subprogram's tail-call list.
	type level struct {
		n  *inlNode
		fn *fnCtx
	}
	var all []*inlNode
	stack := []level{{n: &u.root}}
	for len(stack) > 0 && len(stack) <= maxInlineDepth {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		switch e.Tag {
		case 0:
			stack = stack[:len(stack)-1]
			continue
		case dwarf.TagCompileUnit, dwarf.TagPartialUnit, dwarf.TagTypeUnit:
			// Unterminated children ran into the next unit.
			stack = nil
			continue
		}
		parent := stack[len(stack)-1]
		cur := parent
		switch e.Tag {
		case dwarf.TagSubprogram, dwarf.TagInlinedSubroutine:
			n := newInlNode(d, e)
			if n != nil {
				for _, rg := range n.ranges {
					parent.n.kids = append(parent.n.kids, kidRange{low: rg[0], high: rg[1], n: n})
				}
				all = append(all, n)
				cur.n = n
			}
			if e.Tag == dwarf.TagSubprogram {
				cur.fn = &fnCtx{n: n, e: e}
			}
		case dwarf.TagCallSite, tagGNUCallSite:
			u.addCallSite(d, e, parent.fn)
		}
		if e.Children {
			stack = append(stack, cur)
		}
	}
	sortKids(&u.root)
	for _, n := range all {
		sortKids(n)
	}
}

func newInlNode(d *dwarf.Data, e *dwarf.Entry) *inlNode {
	rs, err := d.Ranges(e)
	if err != nil {
		return nil
	}
	n := &inlNode{inlined: e.Tag == dwarf.TagInlinedSubroutine, nameOff: e.Offset}
	for _, rg := range rs {
		if rg[0] < rg[1] {
			n.ranges = append(n.ranges, rg)
		}
	}
	if len(n.ranges) == 0 {
		return nil
	}
	if v, ok := e.Val(dwarf.AttrCallFile).(int64); ok {
		n.callFile = int(v)
	}
	if v, ok := e.Val(dwarf.AttrCallLine).(int64); ok {
		n.callLine = int(clampLine(v))
	}
	return n
}

func sortKids(n *inlNode) {
	sort.SliceStable(n.kids, func(i, j int) bool { return n.kids[i].low < n.kids[j].low })
}

// chain returns the nodes containing pc, outermost first.
func (u *unit) chain(pc uint64) []*inlNode {
	var out []*inlNode
	n := &u.root
	for len(out) < maxInlineDepth {
		k := findKid(n.kids, pc)
		if k == nil {
			break
		}
		out = append(out, k)
		n = k
	}
	return out
}

func findKid(kids []kidRange, pc uint64) *inlNode {
	i := sort.Search(len(kids), func(i int) bool { return kids[i].low > pc }) - 1
	// Look back a little in case sibling ranges overlap.
	for j := i; j >= 0 && j > i-8; j-- {
		if pc < kids[j].high {
			return kids[j].n
		}
	}
	return nil
}

// lowFor returns the start of the node's range containing pc.
func (n *inlNode) lowFor(pc uint64) uint64 {
	for _, rg := range n.ranges {
		if pc >= rg[0] && pc < rg[1] {
			return rg[0]
		}
	}
	return n.ranges[0][0]
}

// nodeName names a node, preferring a demangled linkage name found along its
// abstract_origin/specification chain over the plain DW_AT_name.
func (w *dwarfInfo) nodeName(n *inlNode) string {
	if name, ok := w.names[n.nameOff]; ok {
		return name
	}
	name := w.dieName(n.nameOff)
	w.names[n.nameOff] = name
	return name
}

func (w *dwarfInfo) dieName(off dwarf.Offset) string {
	plain := ""
	r := w.d.Reader()
	for hop := 0; hop < maxNameHops; hop++ {
		r.Seek(off)
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		for _, a := range []dwarf.Attr{dwarf.AttrLinkageName, attrMIPSLinkageName} {
			if s, ok := e.Val(a).(string); ok && s != "" {
				return demangleName(s)
			}
		}
		if s, ok := e.Val(dwarf.AttrName).(string); ok && s != "" && plain == "" {
			plain = s
		}
		next, ok := e.Val(dwarf.AttrAbstractOrigin).(dwarf.Offset)
		if !ok {
			if next, ok = e.Val(dwarf.AttrSpecification).(dwarf.Offset); !ok {
				break
			}
		}
		off = next
	}
	return plain
}
