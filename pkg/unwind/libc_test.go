package unwind

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const libcPath = "/lib/x86_64-linux-gnu/libc.so.6"

var libc struct {
	once sync.Once
	f    *elf.File
	tab  *Table
	dur  time.Duration
	err  error
}

// loadLibc parses the system libc once per test binary.
func loadLibc(tb testing.TB) (*elf.File, *Table) {
	tb.Helper()
	libc.once.Do(func() {
		libc.f, libc.err = elf.Open(libcPath)
		if libc.err != nil {
			return
		}
		start := time.Now()
		libc.tab, libc.err = ParseELF(libc.f)
		libc.dur = time.Since(start)
	})
	if libc.f == nil {
		tb.Skipf("no %s: %v", libcPath, libc.err)
	}
	if libc.err != nil {
		tb.Fatalf("ParseELF(libc): %v", libc.err)
	}
	return libc.f, libc.tab
}

func dynSym(tb testing.TB, f *elf.File, name string) elf.Symbol {
	tb.Helper()
	syms, err := f.DynamicSymbols()
	if err != nil {
		tb.Fatal(err)
	}
	for _, s := range syms {
		if s.Name == name {
			return s
		}
	}
	tb.Fatalf("no dynamic symbol %s", name)
	return elf.Symbol{}
}

func TestParseLibc(t *testing.T) {
	f, tab := loadLibc(t)
	n, skipped := tab.FDEs()
	t.Logf("libc: parsed in %v: %d rows, %d FDEs (%d skipped), %d KiB of rows",
		libc.dur, tab.Len(), n, skipped, tab.Len()*24/1024)
	if n < 1000 || skipped != 0 {
		t.Errorf("FDEs() = %d, %d; want >1000 compiled, none skipped", n, skipped)
	}
	// Timing is informational in CI but should be far below 100 ms.
	start := time.Now()
	if _, err := ParseELF(f); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("second ParseELF(libc) took %v, want < 100ms", d)
	}
}

func TestLibcMalloc(t *testing.T) {
	f, tab := loadLibc(t)
	m := dynSym(t, f, "malloc")
	r, ok := tab.Lookup(m.Value)
	if !ok || r.CFA != rsp(8) || r.RA != at(-8) {
		t.Fatalf("Lookup(malloc) = %+v, %v; want CFA=rsp+8 RA=c-8", r, ok)
	}
	// Inside malloc the pushes and the frame allocation deepen the CFA and
	// save rbp (callee-saved, used by malloc).
	var maxOff int32
	var savedFP bool
	for a := m.Value; a < m.Value+max(m.Size, 1); a++ {
		r, ok := tab.Lookup(a)
		if !ok || r.CFA.Kind != CFARegOffset || r.CFA.Reg != 7 {
			t.Fatalf("Lookup(malloc+%#x) = %+v, %v; want rsp-based CFA", a-m.Value, r, ok)
		}
		maxOff = max(maxOff, r.CFA.Offset)
		savedFP = savedFP || r.FP.Kind == RuleOffset
	}
	if maxOff <= 24 || !savedFP {
		t.Errorf("malloc: deepest CFA rsp+%d, rbp saved %v; want deeper than rsp+24 and rbp saved", maxOff, savedFP)
	}
}

// readelfRow is one row of readelf --debug-dump=frames-interp.
type readelfRow struct {
	loc       uint64
	cfa, ra   string
	fp        string // "" when the table has no rbp column
	fdeStart  uint64
	fdeEnd    uint64
	nextLoc   uint64 // where the row stops applying
	fdeHasRow bool
}

// parseReadelf runs readelf -wF and returns every FDE row, and FDEs without rows.
func parseReadelf(t *testing.T, path string) (rows []readelfRow, bare [][2]uint64) {
	t.Helper()
	// readelf exits 1 on libc (it cannot follow .gnu_debuglink) yet prints everything.
	out, err := exec.Command("readelf", "--debug-dump=frames-interp", path).Output()
	if len(out) == 0 {
		t.Skipf("readelf: %v", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	var start, end uint64
	var cols []string
	inFDE := false
	var fdeRows []readelfRow
	flush := func() {
		for i := range fdeRows {
			fdeRows[i].nextLoc = end
			if i+1 < len(fdeRows) {
				fdeRows[i].nextLoc = fdeRows[i+1].loc
			}
		}
		if inFDE && len(fdeRows) == 0 {
			bare = append(bare, [2]uint64{start, end})
		}
		rows = append(rows, fdeRows...)
		fdeRows = nil
	}
	for sc.Scan() {
		// "r9 (r9)" names a register rule: keep just the DWARF number.
		line := regAlias.ReplaceAllString(sc.Text(), "")
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 5 && (fields[3] == "FDE" || fields[3] == "CIE"):
			flush()
			inFDE = fields[3] == "FDE"
			cols = nil
			if inFDE {
				pc := strings.TrimPrefix(fields[len(fields)-1], "pc=")
				lo, hi, _ := strings.Cut(pc, "..")
				start, _ = strconv.ParseUint(lo, 16, 64)
				end, _ = strconv.ParseUint(hi, 16, 64)
			}
		case len(fields) > 0 && fields[0] == "LOC":
			cols = fields
		case inFDE && cols != nil && len(fields) == len(cols):
			loc, err := strconv.ParseUint(fields[0], 16, 64)
			if err != nil {
				continue
			}
			r := readelfRow{loc: loc, fdeStart: start, fdeEnd: end}
			for i, c := range cols {
				switch c {
				case "CFA":
					r.cfa = fields[i]
				case "ra":
					r.ra = fields[i]
				case "rbp":
					r.fp = fields[i]
				}
			}
			fdeRows = append(fdeRows, r)
		}
	}
	flush()
	return rows, bare
}

var regAlias = regexp.MustCompile(` \([a-z0-9]+\)`)

var x86RegNames = map[string]uint8{
	"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": 6, "rsp": 7,
	"r8": 8, "r9": 9, "r10": 10, "r11": 11, "r12": 12, "r13": 13, "r14": 14, "r15": 15, "ra": 16,
}

// matchCFA compares readelf's CFA column ("rsp+8", "exp") with a rule.
func matchCFA(s string, c CFARule) bool {
	if s == "exp" {
		return c.Kind == CFAPLT || c.Kind == CFADeref || c.Kind == CFAUnsupported
	}
	i := strings.IndexAny(s, "+-")
	if i < 0 {
		return false
	}
	off, err := strconv.ParseInt(s[i:], 10, 32)
	reg, ok := x86RegNames[s[:i]]
	return err == nil && ok && c.Kind == CFARegOffset && c.Reg == reg && c.Offset == int32(off)
}

// matchReg compares a register column ("c-8", "u", "exp", "r9", "v+8") with a rule.
func matchReg(s string, r RegRule) bool {
	switch {
	case s == "u":
		return r.Kind == RuleUndefined || r.Kind == RuleSameValue
	case s == "s":
		return r.Kind == RuleSameValue
	case s == "exp":
		return r.Kind == RuleAtReg || r.Kind == RuleUnsupported
	case s == "vexp":
		return r.Kind == RuleUnsupported
	case strings.HasPrefix(s, "c"), strings.HasPrefix(s, "v"):
		off, err := strconv.ParseInt(s[1:], 10, 32)
		kind := RuleOffset
		if s[0] == 'v' {
			kind = RuleValOffset
		}
		return err == nil && r.Kind == kind && r.Offset == int32(off)
	}
	reg, err := strconv.ParseUint(strings.TrimPrefix(s, "r"), 10, 8)
	return err == nil && r.Kind == RuleRegister && r.Reg == uint8(reg)
}

// TestAgainstReadelf checks every row readelf interprets for libc and
// libstdc++ (C++: zPLR CIEs, LSDA pointers): the rule must hold from the
// row's address up to the next row.
func TestAgainstReadelf(t *testing.T) {
	for _, path := range []string{libcPath, "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			f, err := elf.Open(path)
			if err != nil {
				t.Skip(err)
			}
			defer f.Close()
			tab, err := ParseELF(f)
			if err != nil {
				t.Fatal(err)
			}
			compareReadelf(t, path, tab)
		})
	}
}

func compareReadelf(t *testing.T, path string, tab *Table) {
	rows, bare := parseReadelf(t, path)
	if len(rows) < 1000 {
		t.Fatalf("parsed only %d readelf rows", len(rows))
	}
	bad := 0
	for _, row := range rows {
		for _, a := range []uint64{row.loc, row.nextLoc - 1} {
			r, ok := tab.Lookup(a)
			if ok && matchCFA(row.cfa, r.CFA) && matchReg(row.ra, r.RA) && (row.fp == "" || matchReg(row.fp, r.FP)) {
				continue
			}
			if bad++; bad <= 10 {
				t.Errorf("at %#x (FDE %#x..%#x): got %+v, %v; readelf CFA=%s ra=%s rbp=%s",
					a, row.fdeStart, row.fdeEnd, r, ok, row.cfa, row.ra, row.fp)
			}
		}
	}
	for _, b := range bare {
		if _, ok := tab.Lookup(b[0]); !ok {
			if bad++; bad <= 10 {
				t.Errorf("FDE %#x..%#x without instructions: no row", b[0], b[1])
			}
		}
	}
	t.Logf("compared %d readelf rows and %d instruction-less FDEs; %d mismatches", len(rows), len(bare), bad)
}

// TestParseBigBinaries parses large C++ binaries when present.
func TestParseBigBinaries(t *testing.T) {
	for _, path := range []string{"/usr/bin/gdb", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"} {
		f, err := elf.Open(path)
		if err != nil {
			continue
		}
		start := time.Now()
		tab, err := ParseELF(f)
		d := time.Since(start)
		f.Close()
		if err != nil {
			t.Errorf("ParseELF(%s): %v", path, err)
			continue
		}
		n, skipped := tab.FDEs()
		t.Logf("%s: %v, %d rows, %d FDEs, %d skipped", path, d, tab.Len(), n, skipped)
		if n == 0 || skipped > n/100 {
			t.Errorf("%s: %d FDEs, %d skipped", path, n, skipped)
		}
	}
}

// TestParseWithoutSectionHeaders finds .eh_frame through PT_GNU_EH_FRAME, as
// for binaries whose section headers were stripped.
func TestParseWithoutSectionHeaders(t *testing.T) {
	_, want := loadLibc(t)
	data, err := os.ReadFile(libcPath)
	if err != nil {
		t.Skip(err)
	}
	// Zero e_shoff, e_shnum and e_shstrndx of the ELF64 header.
	clear(data[0x28:0x30])
	clear(data[0x3c:0x40])
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Sections) != 0 {
		t.Fatalf("still %d sections", len(f.Sections))
	}
	tab, err := ParseELF(f)
	if err != nil {
		t.Fatal(err)
	}
	if tab.Len() != want.Len() || !slices.Equal(tab.addrs, want.addrs) || !slices.Equal(tab.rows, want.rows) {
		t.Errorf("via PT_GNU_EH_FRAME: %v, via sections: %v", tab, want)
	}
}

func TestLoadBias(t *testing.T) {
	f, _ := loadLibc(t)
	var text *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			text = p
		}
	}
	const base = 0x7f0000000000
	start := base + text.Vaddr&^0xfff
	bias, ok := LoadBias(f, start, text.Off&^0xfff)
	if !ok || bias != base {
		t.Errorf("LoadBias(text) = %#x, %v; want %#x", bias, ok, uint64(base))
	}
	if _, ok := LoadBias(f, start, 1<<40); ok {
		t.Errorf("LoadBias(offset past the file) ok")
	}
}
