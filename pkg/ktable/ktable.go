// Package ktable compiles a module's call-frame information into the tables the kernel's
// unwinder searches (bpf/unwind.h): rows sorted by file offset, each naming a rule in one
// dictionary shared by every module. It is the one place that decides that format.
//
// Rows are keyed by file offset rather than virtual address, so the kernel needs nothing of
// the ELF file: a frame's file offset is pc - mapping start + mapping offset.
package ktable

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/udstrace/udstrace/pkg/unwind"
)

// Rule is one unwind rule in the kernel's layout (struct unwind_rule): DWARF register numbers,
// so the format is the same for every architecture.
type Rule struct {
	CFAKind, CFAReg uint8
	RAKind, RAReg   uint8
	FPKind, FPReg   uint8
	Aux             uint8 // CFAPLT: threshold | shift << 4
	Flags           uint8 // FlagSignal
	CFAOff          int32
	RAOff, FPOff    int16
}

// FlagSignal marks a signal trampoline's frame: the caller's pc is exact, not a return address.
const FlagSignal = 1

// FromUnwind converts a parsed rule to the kernel's layout.
func FromUnwind(r unwind.Rule) Rule {
	out := Rule{
		CFAKind: uint8(r.CFA.Kind), CFAReg: r.CFA.Reg, CFAOff: r.CFA.Offset,
		Aux:    r.CFA.Threshold&15 | r.CFA.Shift<<4,
		RAKind: uint8(r.RA.Kind), RAReg: r.RA.Reg, RAOff: int16(r.RA.Offset),
		FPKind: uint8(r.FP.Kind), FPReg: r.FP.Reg, FPOff: int16(r.FP.Offset),
	}
	if r.Signal {
		out.Flags |= FlagSignal
	}
	// unwind packs register offsets in 16 bits already; anything wider became RuleUnsupported.
	if r.RA.Offset != int32(out.RAOff) {
		out.RAKind = uint8(unwind.RuleUnsupported)
	}
	if r.FP.Offset != int32(out.FPOff) {
		out.FPKind = uint8(unwind.RuleUnsupported)
	}
	return out
}

// Dict is the rule dictionary shared by every module: few distinct rules exist (hundreds for a
// whole system), so a row needs only the rule's index. Safe for concurrent use.
type Dict struct {
	mu    sync.Mutex
	index map[Rule]uint32
	rules []Rule
	max   int
}

// NewDict returns an empty dictionary holding at most max rules.
func NewDict(max int) *Dict { return &Dict{index: map[Rule]uint32{}, max: max} }

// ErrFull means a table has no room left.
var ErrFull = errors.New("table full")

// Len is the number of rules so far.
func (d *Dict) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.rules)
}

// Rules returns rules [from, Len()), for loading the ones added since from.
func (d *Dict) Rules(from int) []Rule {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.rules[min(from, len(d.rules)):])
}

func (d *Dict) intern(r Rule) (uint32, error) {
	if i, ok := d.index[r]; ok {
		return i, nil
	}
	if len(d.rules) >= d.max {
		return 0, fmt.Errorf("interning unwind rule: %w (%d rules)", ErrFull, d.max)
	}
	i := uint32(len(d.rules))
	d.index[r] = i
	d.rules = append(d.rules, r)
	return i, nil
}

// Segment is an executable PT_LOAD of the module: where its bytes are in the file and in memory.
type Segment struct{ Vaddr, Off, Filesz uint64 }

// MaxRows is the most rows one page may have (the kernel's page entry counts them in 16 bits; a
// 4 KiB page has at most one per byte).
const MaxRows = 1<<16 - 1

// Row packs a file offset and a rule index as the kernel reads them.
func Row(off uint64, rule uint32) uint64 { return off<<32 | uint64(rule) }

// RowOffset and RowRule unpack a row.
func RowOffset(row uint64) uint64 { return row >> 32 }
func RowRule(row uint64) uint32   { return uint32(row) }

// PageShift sizes the kernel's pages of rows: each 4 KiB of a module's file has its own
// sorted run of rows, loaded when a stack first needs it.
const PageShift = 12

// Compile turns a module's CFI into kernel rows for file offsets [lo, hi), sorted by offset:
// the first row is at lo (the rule in effect there), and each row's rule holds up to the next
// row's offset. t must cover the range (a whole-file table, or unwind.Source.Range of it).
// Rules are interned in d.
func Compile(t *unwind.Table, segs []Segment, lo, hi uint64, d *Dict) ([]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	gap, err := d.intern(Rule{})
	if err != nil {
		return nil, err
	}
	rows := []uint64{Row(lo, gap)} // no segment covers lo: no CFI
	for _, s := range segs {
		if s.Off+s.Filesz > math.MaxUint32 {
			return nil, fmt.Errorf("compiling unwind rows: segment at file offset %#x is past 4 GiB", s.Off)
		}
		olo, ohi := max(lo, s.Off), min(hi, s.Off+s.Filesz)
		if olo >= ohi {
			continue
		}
		vlo, vhi := s.Vaddr+(olo-s.Off), s.Vaddr+(ohi-s.Off)
		at := Rule{} // the rule in effect at vlo
		for addr, r := range t.RowsIn(vlo, vhi) {
			if addr <= vlo {
				at = FromUnwind(r)
				continue
			}
			if err := appendRow(&rows, d, addr-s.Vaddr+s.Off, FromUnwind(r)); err != nil {
				return nil, err
			}
		}
		if err := appendRow(&rows, d, olo, at); err != nil {
			return nil, err
		}
		if ohi < hi {
			rows = append(rows, Row(ohi, gap)) // the segment ends inside the range
		}
	}
	slices.SortStableFunc(rows, func(a, b uint64) int { return cmp.Compare(RowOffset(a), RowOffset(b)) })
	// Of rows at one offset the last one holds (a segment's start over the range's gap row).
	out := rows[:0]
	for i, r := range rows {
		if i+1 < len(rows) && RowOffset(rows[i+1]) == RowOffset(r) {
			continue
		}
		if n := len(out); n > 0 && RowRule(out[n-1]) == RowRule(r) {
			continue
		}
		out = append(out, r)
	}
	if len(out) > MaxRows {
		return nil, fmt.Errorf("compiling unwind rows: %d rows: %w (a page may have %d)", len(out), ErrFull, MaxRows)
	}
	return out, nil
}

func appendRow(rows *[]uint64, d *Dict, off uint64, r Rule) error {
	i, err := d.intern(r)
	if err != nil {
		return err
	}
	*rows = append(*rows, Row(off, i))
	return nil
}

// Lookup finds the rule covering file offset off in rows, as the kernel's binary search does.
func Lookup(rows []uint64, off uint64) (rule uint32, ok bool) {
	i, _ := slices.BinarySearchFunc(rows, off+1, func(r, target uint64) int { return cmp.Compare(RowOffset(r), target) })
	if i == 0 {
		return 0, false
	}
	return RowRule(rows[i-1]), true
}
