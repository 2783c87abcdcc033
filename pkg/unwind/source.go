package unwind

import (
	"debug/elf"
	"slices"
	"sort"
	"sync"
)

// Source compiles a file's CFI on demand, one address range at a time: a large binary's whole
// table takes a tenth of a second (gcc's cc1: 480,000 rows), and a trace needs a small part
// of it. Safe for concurrent use.
type Source struct {
	mu      sync.Mutex
	p       parser
	index   []fdeRef // sorted by start
	skipped int
}

// fdeRef is one FDE: where it starts and where it is; its end is known once its header is read.
type fdeRef struct {
	start uint64
	off   int32
}

// maxBacktrack bounds how many FDEs before a range are checked for overlapping it: FDEs are
// functions, and only nested or overlapping ones (linker leftovers) start earlier.
const maxBacktrack = 16

// NewSourceELF indexes the CFI of f (see ParseELF for where it is found) without running it:
// from .eh_frame_hdr's search table when there is one (no FDE is read), else by framing entries.
func NewSourceELF(f *elf.File) (*Source, error) {
	c, err := elfCFI(f)
	if err != nil {
		return nil, err
	}
	if starts, offs, ok := hdrTable(c.hdr, c.hdrAddr, c.o.VAddr, len(c.data)); ok && len(starts) > 0 {
		s := newSource(c.data, c.o)
		s.index = make([]fdeRef, len(starts))
		for i := range starts {
			s.index[i] = fdeRef{start: starts[i], off: offs[i]}
		}
		return s, nil
	}
	return NewSource(c.data, c.o)
}

func newSource(data []byte, o Options) *Source {
	if o.Arch.PtrSize == 0 {
		o.Arch = ArchAMD64
	}
	return &Source{p: parser{data: data, o: o, b: bases{sectionVAddr: o.VAddr, dataBase: o.DataBase, ptrSize: o.Arch.PtrSize}, cies: map[uint64]*cie{}}}
}

// NewSource indexes a raw .eh_frame or .debug_frame section: each FDE's range, found by framing
// the entries and decoding their headers only.
func NewSource(data []byte, o Options) (*Source, error) {
	s := newSource(data, o)
	if h := o.FDEHint; h > 0 && h <= len(data)/16 {
		s.index = make([]fdeRef, 0, h)
	}
	for off := 0; ; {
		e, done, err := s.p.next(off)
		if err != nil {
			if o.LenientTail {
				break
			}
			return nil, err
		}
		if done {
			break
		}
		off = e.nextOff
		if e.isCIE {
			continue
		}
		f, err := s.p.fdeHeader(e)
		if err != nil {
			s.skipped++
			continue
		}
		if f.start < f.end {
			s.index = append(s.index, fdeRef{start: f.start, off: int32(e.off)})
		}
	}
	slices.SortStableFunc(s.index, func(a, b fdeRef) int {
		switch {
		case a.start < b.start:
			return -1
		case a.start > b.start:
			return 1
		}
		return 0
	})
	return s, nil
}

// FDEs is the number of FDEs indexed.
func (s *Source) FDEs() int { return len(s.index) }

// Range compiles the FDEs that overlap [lo, hi): its rows are exact for every address in the
// range (Parse of the whole section gives the same rule there).
func (s *Source) Range(lo, hi uint64) *Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := sort.Search(len(s.index), func(i int) bool { return s.index[i].start >= hi })
	var heads []fdeHead
	for j, before := i-1, 0; j >= 0; j-- {
		f := s.index[j]
		if f.start < lo {
			if before++; before > maxBacktrack {
				break
			}
		}
		h, ok := s.head(f)
		if ok && h.end > lo {
			heads = append(heads, h) // inside the range, or reaching into it from before
		}
	}
	for k := len(heads) - 1; k >= 0; k-- {
		if s.p.fdeRows(heads[k]) != nil {
			s.skipped++
		}
	}
	return s.p.bld.table(s.p.o.Arch, 0)
}

// head reads an FDE's header; false for one that does not parse or covers nothing.
func (s *Source) head(f fdeRef) (fdeHead, bool) {
	e, done, err := s.p.next(int(f.off))
	if err != nil || done || e.isCIE {
		return fdeHead{}, false
	}
	h, err := s.p.fdeHeader(e)
	return h, err == nil && h.start < h.end
}

// Bounds is the range of addresses the CFI covers (from the first FDE to the end of the last).
func (s *Source) Bounds() (lo, hi uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.index) == 0 {
		return 0, 0
	}
	lo = s.index[0].start
	for _, f := range s.index[max(0, len(s.index)-maxBacktrack):] {
		if h, ok := s.head(f); ok {
			hi = max(hi, h.end)
		}
	}
	return lo, hi
}
