package unwind

import (
	"fmt"
	"iter"
	"slices"
	"sort"
)

// Arch gives the DWARF register numbers the unwinder needs.
type Arch struct {
	Name    string
	SP, FP  uint8 // DWARF numbers of the stack and frame pointer
	RA      uint8 // default return-address column (CIEs name their own)
	PtrSize int
}

var (
	ArchAMD64 = Arch{Name: "amd64", SP: 7, FP: 6, RA: 16, PtrSize: 8}
	ArchARM64 = Arch{Name: "arm64", SP: 31, FP: 29, RA: 30, PtrSize: 8}
)

// CFAKind says how the canonical frame address is computed.
type CFAKind uint8

const (
	CFANone        CFAKind = iota // no CFI covers the address
	CFARegOffset                  // CFA = Reg + Offset
	CFADeref                      // CFA = *(Reg + Offset) (realigned stacks, signal frames)
	CFAPLT                        // CFA = SP + Offset + ((IP & 15) >= Threshold ? 1<<Shift : 0)
	CFAUnsupported                // any other DWARF expression
)

// CFARule is the CFA part of a Rule.
type CFARule struct {
	Kind      CFAKind
	Reg       uint8 // DWARF register number
	Offset    int32
	Threshold uint8 // CFAPLT only
	Shift     uint8 // CFAPLT only
}

// RegRuleKind says how a caller's register value is recovered.
type RegRuleKind uint8

const (
	RuleSameValue   RegRuleKind = iota // unchanged by this frame (DWARF default for callee-saved registers)
	RuleUndefined                      // not recoverable; for the RA it marks the outermost frame
	RuleOffset                         // saved at CFA + Offset
	RuleValOffset                      // value is CFA + Offset
	RuleRegister                       // value is in register Reg
	RuleAtReg                          // saved at Reg + Offset (DW_CFA_expression DW_OP_bregN)
	RuleUnsupported                    // any other expression
)

// RegRule recovers one register of the caller.
type RegRule struct {
	Kind   RegRuleKind
	Reg    uint8
	Offset int32
}

// Rule is the unwind rule in effect at one address: CFA = reg + offset (reg
// is SP or FP) or an expression; RA and FP are recovered relative to it.
type Rule struct {
	CFA    CFARule
	RA     RegRule
	FP     RegRule
	Signal bool // the frame is a signal trampoline: the caller's PC is exact, not a return address
}

// row is the packed form of Rule: 16 bytes, so a row table costs 24 bytes
// per entry with its address.
type row struct {
	cfaOff  int32
	raOff   int16
	fpOff   int16
	cfaKind CFAKind
	cfaReg  uint8
	raKind  RegRuleKind
	raReg   uint8
	fpKind  RegRuleKind
	fpReg   uint8
	aux     uint8 // CFAPLT: threshold | shift<<4
	flags   uint8
}

const rowSignal = 1

func (r row) rule() Rule {
	return Rule{
		CFA:    CFARule{Kind: r.cfaKind, Reg: r.cfaReg, Offset: r.cfaOff, Threshold: r.aux & 15, Shift: r.aux >> 4},
		RA:     RegRule{Kind: r.raKind, Reg: r.raReg, Offset: int32(r.raOff)},
		FP:     RegRule{Kind: r.fpKind, Reg: r.fpReg, Offset: int32(r.fpOff)},
		Signal: r.flags&rowSignal != 0,
	}
}

// Table is the compiled CFI of one ELF file: sorted, compact rows keyed by
// ELF virtual address. A row holds from its address up to the next row; rows
// with CFANone mark gaps between FDEs. A Table is immutable and safe for
// concurrent use.
type Table struct {
	arch    Arch
	addrs   []uint64
	rows    []row
	fdes    int // FDEs compiled
	skipped int // FDEs dropped as malformed or unsupported
}

// Arch is the architecture whose register numbers the rows use.
func (t *Table) Arch() Arch { return t.arch }

// Len is the number of rows (including gap markers).
func (t *Table) Len() int { return len(t.addrs) }

// FDEs reports how many FDEs were compiled and how many were skipped.
func (t *Table) FDEs() (compiled, skipped int) { return t.fdes, t.skipped }

func (t *Table) String() string {
	return fmt.Sprintf("unwind.Table{%s rows=%d fdes=%d skipped=%d}", t.arch.Name, len(t.addrs), t.fdes, t.skipped)
}

// lookup finds the row covering vaddr by binary search.
func (t *Table) lookup(vaddr uint64) (row, bool) {
	if t == nil {
		return row{}, false
	}
	// First index whose address is > vaddr; the row before it covers vaddr.
	// Hand-rolled to avoid sort.Search's closure call per probe on the hot path.
	i, j := 0, len(t.addrs)
	for i < j {
		h := int(uint(i+j) >> 1)
		if t.addrs[h] > vaddr {
			j = h
		} else {
			i = h + 1
		}
	}
	if i == 0 {
		return row{}, false
	}
	r := t.rows[i-1]
	return r, r.cfaKind != CFANone
}

// Lookup returns the rule in effect at ELF virtual address vaddr.
func (t *Table) Lookup(vaddr uint64) (Rule, bool) {
	r, ok := t.lookup(vaddr)
	if !ok {
		return Rule{}, false
	}
	return r.rule(), true
}

// fdeRows is one FDE's rows inside builder.addrs/rows, before sorting.
type fdeRows struct {
	start, end uint64
	first, n   int
}

// builder collects FDE rows in section order and emits them sorted.
type builder struct {
	fdes  []fdeRows
	addrs []uint64
	rows  []row
	cur   fdeRows
}

func (b *builder) beginFDE(start, end uint64) {
	b.cur = fdeRows{start: start, end: end, first: len(b.addrs)}
}

// add appends a row; a row at the same address as the previous one replaces
// it, since DWARF rows only take effect once the location advances.
func (b *builder) add(addr uint64, r row) {
	if n := len(b.addrs); n > b.cur.first && b.addrs[n-1] == addr {
		b.rows[n-1] = r
		return
	}
	b.addrs = append(b.addrs, addr)
	b.rows = append(b.rows, r)
}

func (b *builder) endFDE(ok bool) {
	if !ok || len(b.addrs) == b.cur.first {
		b.addrs, b.rows = b.addrs[:b.cur.first], b.rows[:b.cur.first]
		return
	}
	b.cur.n = len(b.addrs) - b.cur.first
	b.fdes = append(b.fdes, b.cur)
}

// table sorts FDEs by start, clips each to the next one's start (overlaps
// are linker leftovers), inserts gap rows and drops rows equal to the one
// before them.
func (b *builder) table(arch Arch, skipped int) *Table {
	sort.SliceStable(b.fdes, func(i, j int) bool { return b.fdes[i].start < b.fdes[j].start })
	t := &Table{arch: arch, fdes: len(b.fdes), skipped: skipped}
	t.addrs = make([]uint64, 0, len(b.addrs)+len(b.fdes))
	t.rows = make([]row, 0, len(b.addrs)+len(b.fdes))
	emit := func(addr uint64, r row) {
		n := len(t.addrs)
		if n > 0 && t.addrs[n-1] == addr {
			t.rows[n-1] = r
			if n > 1 && t.rows[n-2] == r {
				t.addrs, t.rows = t.addrs[:n-1], t.rows[:n-1]
			}
			return
		}
		if n > 0 && t.rows[n-1] == r {
			return
		}
		t.addrs = append(t.addrs, addr)
		t.rows = append(t.rows, r)
	}
	for i, f := range b.fdes {
		end := f.end
		if i+1 < len(b.fdes) && b.fdes[i+1].start < end {
			end = b.fdes[i+1].start
		}
		if n := len(t.addrs); n > 0 && t.addrs[n-1] > f.start {
			continue // fully shadowed by an earlier FDE with the same start
		}
		for k := f.first; k < f.first+f.n; k++ {
			if b.addrs[k] >= end {
				break
			}
			emit(b.addrs[k], b.rows[k])
		}
		emit(end, row{}) // gap marker; replaced when the next FDE starts here
	}
	b.fdes, b.addrs, b.rows = b.fdes[:0], b.addrs[:0], b.rows[:0] // capacity kept for the next range
	if len(t.addrs) < cap(t.addrs)*3/4 {
		// Deduplication left much unused capacity: keep only what Lookup needs.
		t.addrs, t.rows = slices.Clone(t.addrs), slices.Clone(t.rows)
	}
	return t
}

// Rows yields each row in address order: the rule in effect from that ELF virtual address up to
// the next row's (a rule with CFA kind CFANone marks a gap no FDE covers).
func (t *Table) Rows() iter.Seq2[uint64, Rule] {
	return func(yield func(uint64, Rule) bool) {
		if t == nil {
			return
		}
		for i, a := range t.addrs {
			if !yield(a, t.rows[i].rule()) {
				return
			}
		}
	}
}

// RowsIn yields the rows that hold somewhere in [lo, hi): the one in effect at lo (whose address
// may be before lo), then each one starting in the range.
func (t *Table) RowsIn(lo, hi uint64) iter.Seq2[uint64, Rule] {
	return func(yield func(uint64, Rule) bool) {
		if t == nil {
			return
		}
		i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > lo })
		for i = max(i-1, 0); i < len(t.addrs) && t.addrs[i] < hi; i++ {
			if !yield(t.addrs[i], t.rows[i].rule()) {
				return
			}
		}
	}
}
