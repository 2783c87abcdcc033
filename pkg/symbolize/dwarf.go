package symbolize

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// maxDWARFTotal bounds the DWARF bytes kept in memory per file.
const maxDWARFTotal = 1 << 30

// maxTopNulls bounds the null entries in a row between units (see buildIndex).
const maxTopNulls = 1 << 16

// dwarfSections are the sections debug/dwarf needs for lines, ranges and
// names; location lists and CFI are never read.
var dwarfSections = []string{"abbrev", "info", "str", "line", "ranges", "addr", "line_str", "str_offsets", "rnglists"}

// dwarfInfo indexes one file's DWARF; per-unit tables are built on demand.
type dwarfInfo struct {
	d *dwarf.Data

	mu      sync.Mutex // debug/dwarf readers and our lazy maps are not concurrency-safe
	indexed bool
	cus     []cuRange
	units   map[dwarf.Offset]*unit
	names   map[dwarf.Offset]string
}

// cuRange maps an address range to its compilation unit.
type cuRange struct {
	low, high uint64
	off       dwarf.Offset
}

// unit holds one compilation unit's line index and inline tree.
type unit struct {
	lines     []lineRange // sorted by low
	lineFiles []string    // file names referenced by lines
	callFiles []string    // line-table file names, indexed like DW_AT_call_file
	root      inlNode
	sites     []callSite // by return address (callsite.go)
}

// lineRange is one line-table row covering [low, high).
type lineRange struct {
	low, high uint64
	file      int32
	line      int32
}

// dwarfLoc is the DWARF view of one address.
type dwarfLoc struct {
	inlined  []Frame // innermost first
	file     string  // location within the outermost (real) function
	line     int
	funcName string // DWARF name of the real function
	funcLow  uint64
}

// loadDWARF reads the DWARF sections with size guards; (nil, nil) if the file
// has none.
func loadDWARF(f *elf.File, size int64) (dw *dwarfInfo, err error) {
	defer func() {
		if p := recovered(recover()); p != nil {
			dw, err = nil, fmt.Errorf("loading dwarf: panic: %v", p)
		}
	}()
	dat := map[string][]byte{}
	var total uint64
	for _, s := range f.Sections {
		suffix, ok := strings.CutPrefix(s.Name, ".debug_")
		if !ok {
			suffix, ok = strings.CutPrefix(s.Name, ".zdebug_")
		}
		if !ok || s.Type == elf.SHT_NOBITS || dat[suffix] != nil || !wantSection(suffix) {
			continue
		}
		b, err := sectionData(s, size)
		if err != nil {
			return nil, fmt.Errorf("loading dwarf: %w", err)
		}
		if total += uint64(len(b)); total > maxDWARFTotal {
			return nil, fmt.Errorf("loading dwarf: sections exceed %d bytes", maxDWARFTotal)
		}
		dat[suffix] = b
	}
	if len(dat["info"]) == 0 {
		return nil, nil
	}
	d, err := dwarf.New(dat["abbrev"], nil, nil, dat["info"], dat["line"], nil, dat["ranges"], dat["str"])
	if err != nil {
		return nil, fmt.Errorf("loading dwarf: %w", err)
	}
	for _, name := range dwarfSections[5:] {
		if b := dat[name]; b != nil {
			if err := d.AddSection(".debug_"+name, b); err != nil {
				return nil, fmt.Errorf("loading dwarf section %s: %w", name, err)
			}
		}
	}
	return &dwarfInfo{d: d, units: map[dwarf.Offset]*unit{}, names: map[dwarf.Offset]string{}}, nil
}

func wantSection(suffix string) bool {
	for _, s := range dwarfSections {
		if s == suffix {
			return true
		}
	}
	return false
}

// lookup resolves pc to lines and inlined frames; nil if DWARF knows nothing.
func (w *dwarfInfo) lookup(pc uint64) (loc *dwarfLoc) {
	w.mu.Lock()
	defer w.mu.Unlock()
	defer func() {
		if recovered(recover()) != nil {
			loc = nil
		}
	}()
	u := w.unitAt(pc)
	if u == nil {
		return nil
	}
	file, line := u.lineAt(pc)
	chain := u.chain(pc)
	// The innermost non-inlined node is the real function; inlined nodes
	// below it become frames, each taking its call site from the next.
	s := -1
	for i := len(chain) - 1; i >= 0; i-- {
		if !chain[i].inlined {
			s = i
			break
		}
	}
	loc = &dwarfLoc{}
	for i := len(chain) - 1; i > s; i-- {
		n := chain[i]
		loc.inlined = append(loc.inlined, Frame{Function: w.nodeName(n), File: file, Line: line, Inlined: true})
		file, line = u.fileName(n.callFile), n.callLine
	}
	loc.file, loc.line = file, line
	if s >= 0 {
		loc.funcName = w.nodeName(chain[s])
		loc.funcLow = chain[s].lowFor(pc)
	}
	if loc.file == "" && len(loc.inlined) == 0 && loc.funcName == "" {
		return nil
	}
	return loc
}

// buildIndex collects each compilation unit's address ranges.
func (w *dwarfInfo) buildIndex() {
	r := w.d.Reader()
	nulls := 0
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		// debug/dwarf reads an abbreviation code cut off by its unit's end (a last byte with
		// its continuation bit set) as 0 without moving on: that null entry would come back
		// for ever. Padding after a unit's entries is a few nulls.
		if e.Tag == 0 {
			if nulls++; nulls > maxTopNulls {
				break
			}
			continue
		}
		nulls = 0
		if e.Tag == dwarf.TagCompileUnit || e.Tag == dwarf.TagPartialUnit {
			rs, _ := w.d.Ranges(e)
			for _, rg := range rs {
				if rg[0] < rg[1] {
					w.cus = append(w.cus, cuRange{low: rg[0], high: rg[1], off: e.Offset})
				}
			}
		}
		r.SkipChildren()
	}
	sort.SliceStable(w.cus, func(i, j int) bool { return w.cus[i].low < w.cus[j].low })
}

func (w *dwarfInfo) findCU(pc uint64) (dwarf.Offset, bool) {
	i := sort.Search(len(w.cus), func(i int) bool { return w.cus[i].low > pc }) - 1
	for j := i; j >= 0 && j > i-8; j-- {
		if pc < w.cus[j].high {
			return w.cus[j].off, true
		}
	}
	return 0, false
}

// loadUnit builds the line index and inline tree of the unit at off; on
// broken DWARF it keeps whatever parsed.
func (w *dwarfInfo) loadUnit(off dwarf.Offset) (u *unit) {
	u = &unit{}
	defer func() {
		if recovered(recover()) != nil {
			u = &unit{}
		}
	}()
	r := w.d.Reader()
	r.Seek(off)
	cu, err := r.Next()
	if err != nil || cu == nil {
		return u
	}
	u.loadLines(w.d, cu)
	u.loadInlines(w.d, r, cu)
	u.sortSites()
	return u
}

func (u *unit) loadLines(d *dwarf.Data, cu *dwarf.Entry) {
	lr, err := d.LineReader(cu)
	if err != nil || lr == nil {
		return
	}
	fileIdx := map[*dwarf.LineFile]int32{}
	var files []string
	idx := func(f *dwarf.LineFile) int32 {
		if f == nil {
			return -1
		}
		i, ok := fileIdx[f]
		if !ok {
			i = int32(len(files))
			fileIdx[f] = i
			files = append(files, f.Name)
		}
		return i
	}
	var prev dwarf.LineEntry
	havePrev := false
	for {
		var le dwarf.LineEntry
		if lr.Next(&le) != nil {
			break
		}
		// Rows sharing an address have zero length; the last one wins, as in addr2line.
		if havePrev && le.Address > prev.Address {
			u.lines = append(u.lines, lineRange{low: prev.Address, high: le.Address, file: idx(prev.File), line: clampLine(int64(prev.Line))})
		}
		prev, havePrev = le, !le.EndSequence
	}
	sort.SliceStable(u.lines, func(i, j int) bool { return u.lines[i].low < u.lines[j].low })
	// Re-index files as DW_AT_call_file numbers them (the line table's order).
	callFiles := lr.Files()
	byCall := make([]string, len(callFiles))
	for i, f := range callFiles {
		if f != nil {
			byCall[i] = f.Name
		}
	}
	u.lineFiles, u.callFiles = files, byCall
}

// lineAt returns the file:line of the row covering pc.
func (u *unit) lineAt(pc uint64) (string, int) {
	i := sort.Search(len(u.lines), func(i int) bool { return u.lines[i].low > pc }) - 1
	if i < 0 || pc >= u.lines[i].high {
		return "", 0
	}
	l := u.lines[i]
	if l.file < 0 || int(l.file) >= len(u.lineFiles) {
		return "", int(l.line)
	}
	return u.lineFiles[l.file], int(l.line)
}

// fileName maps a DW_AT_call_file index to a name.
func (u *unit) fileName(i int) string {
	if i < 0 || i >= len(u.callFiles) {
		return ""
	}
	return u.callFiles[i]
}

// clampLine maps out-of-range (hostile) line numbers to 0, "unknown".
func clampLine(l int64) int32 {
	if l < 0 || l > 1<<31-1 {
		return 0
	}
	return int32(l)
}
