package symbolize

import (
	"debug/elf"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// rawSym is one ELF symbol table entry we may keep.
type rawSym struct {
	name       string
	addr, size uint64
	typ        elf.SymType
	bind       elf.SymBind
	shndx      elf.SectionIndex
	secEnd     uint64 // end address of the symbol's section, 0 if unknown
	exec       bool   // defined in an executable section
}

// symtab is a sorted, alias-deduplicated function index.
type symtab struct {
	addrs []uint64
	ends  []uint64 // exclusive; == addr when the extent is unknown
	names []string
	funcs bool // entries are typed functions, not the untyped fallback
	// byName maps every name (aliases included) to its address, a global or weak symbol
	// over a local one, for call sites that name their target (tailcall.go).
	byName map[string]namedSym
}

type namedSym struct {
	addr   uint64
	global bool
}

// lookup returns the symbol containing pc.
func (t *symtab) lookup(pc uint64) (string, uint64, bool) {
	i := sort.Search(len(t.addrs), func(i int) bool { return t.addrs[i] > pc }) - 1
	// A few earlier symbols may enclose pc when small symbols nest in big ones.
	for j := i; j >= 0 && j > i-8; j-- {
		if pc < t.ends[j] || pc == t.addrs[j] {
			return t.names[j], t.addrs[j], true
		}
	}
	return "", 0, false
}

// sectionData reads a section, refusing sizes beyond the file or the global cap.
func sectionData(s *elf.Section, fileSize int64) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, fmt.Errorf("reading section %s: no data", s.Name)
	}
	if s.Size > maxSectionSize {
		return nil, fmt.Errorf("reading section %s: size %d too large", s.Name, s.Size)
	}
	if s.FileSize > uint64(fileSize) || s.Offset > uint64(fileSize)-s.FileSize {
		return nil, fmt.Errorf("reading section %s: extends past end of file", s.Name)
	}
	if s.Flags&elf.SHF_COMPRESSED == 0 && s.Size > s.FileSize {
		return nil, fmt.Errorf("reading section %s: size exceeds file size", s.Name)
	}
	d, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf("reading section %s: %w", s.Name, err)
	}
	return d, nil
}

// readSymbols reads the function-like entries of .symtab and .dynsym.
func readSymbols(f *elf.File, fileSize int64) ([]rawSym, error) {
	var out []rawSym
	var errs []error
	for _, s := range f.Sections {
		if s.Type != elf.SHT_SYMTAB && s.Type != elf.SHT_DYNSYM {
			continue
		}
		syms, err := readSymbolSection(f, s, fileSize)
		if err != nil {
			errs = append(errs, err)
		}
		out = append(out, syms...)
	}
	return out, errors.Join(errs...)
}

func readSymbolSection(f *elf.File, s *elf.Section, fileSize int64) ([]rawSym, error) {
	if int(s.Link) <= 0 || int(s.Link) >= len(f.Sections) {
		return nil, fmt.Errorf("reading symbols %s: bad string table link %d", s.Name, s.Link)
	}
	data, err := sectionData(s, fileSize)
	if err != nil {
		return nil, fmt.Errorf("reading symbols: %w", err)
	}
	strs, err := sectionData(f.Sections[s.Link], fileSize)
	if err != nil {
		return nil, fmt.Errorf("reading symbol names: %w", err)
	}
	entSize := 24
	if f.Class == elf.ELFCLASS32 {
		entSize = 16
	}
	bo := f.ByteOrder
	var out []rawSym
	for off := entSize; off+entSize <= len(data); off += entSize {
		e := data[off : off+entSize]
		var rs rawSym
		var nameOff uint32
		var info uint8
		if entSize == 24 {
			nameOff, info = bo.Uint32(e), e[4]
			rs.shndx = elf.SectionIndex(bo.Uint16(e[6:]))
			rs.addr, rs.size = bo.Uint64(e[8:]), bo.Uint64(e[16:])
		} else {
			nameOff, info = bo.Uint32(e), e[12]
			rs.addr, rs.size = uint64(bo.Uint32(e[4:])), uint64(bo.Uint32(e[8:]))
			rs.shndx = elf.SectionIndex(bo.Uint16(e[14:]))
		}
		rs.typ, rs.bind = elf.ST_TYPE(info), elf.ST_BIND(info)
		switch rs.typ {
		case elf.STT_FUNC, elf.STT_GNU_IFUNC, elf.STT_NOTYPE, elf.STT_OBJECT:
		default:
			continue
		}
		if rs.shndx == elf.SHN_UNDEF || rs.shndx == elf.SHN_COMMON {
			continue
		}
		rs.name = cString(strs, nameOff)
		if rs.name == "" {
			continue
		}
		if i := int(rs.shndx); rs.shndx < elf.SHN_LORESERVE && i < len(f.Sections) {
			rs.secEnd = f.Sections[i].Addr + f.Sections[i].Size
			rs.exec = f.Sections[i].Flags&elf.SHF_EXECINSTR != 0
		}
		out = append(out, rs)
	}
	return out, nil
}

// cString returns the NUL-terminated string at off without its symbol version.
func cString(b []byte, off uint32) string {
	if uint64(off) >= uint64(len(b)) {
		return ""
	}
	b = b[off:]
	for i, c := range b {
		if c == 0 {
			b = b[:i]
			break
		}
		if c == '@' {
			// Strip "@VER" / "@@VER" so versioned and plain names merge.
			b = b[:i]
			break
		}
	}
	return string(b)
}

func isFunc(t elf.SymType) bool { return t == elf.STT_FUNC || t == elf.STT_GNU_IFUNC }

// buildSymtab merges symbols into a sorted index with one name per address.
func buildSymtab(raw []rawSym) *symtab {
	var syms []rawSym
	for _, s := range raw {
		if isFunc(s.typ) {
			syms = append(syms, s)
		}
	}
	funcs := len(syms) > 0
	if funcs {
		syms = append(syms, asmLabels(raw, syms)...)
	} else {
		// Hand-written assembly often leaves functions untyped.
		for _, s := range raw {
			if s.shndx != elf.SHN_ABS {
				syms = append(syms, s)
			}
		}
	}
	sort.Slice(syms, func(i, j int) bool { return syms[i].addr < syms[j].addr })
	t := &symtab{funcs: funcs && len(syms) > 0, byName: make(map[string]namedSym, len(syms))}
	for _, s := range syms {
		g := s.bind == elf.STB_GLOBAL || s.bind == elf.STB_WEAK
		if old, seen := t.byName[s.name]; !seen || (g && !old.global) {
			t.byName[s.name] = namedSym{s.addr, g}
		}
	}
	for i := 0; i < len(syms); {
		j, best, size := i, syms[i], syms[i].size
		for ; j < len(syms) && syms[j].addr == syms[i].addr; j++ {
			if betterName(syms[j], best) {
				best = syms[j]
			}
			size = max(size, syms[j].size)
		}
		t.addrs = append(t.addrs, best.addr)
		t.names = append(t.names, best.name)
		t.ends = append(t.ends, symbolEnd(best, size, syms, j))
		i = j
	}
	return t
}

// symbolEnd is addr+size, or for unsized symbols the next symbol or the end
// of the symbol's section, whichever comes first.
func symbolEnd(s rawSym, size uint64, syms []rawSym, next int) uint64 {
	if size > 0 {
		if s.addr+size < s.addr {
			return ^uint64(0)
		}
		return s.addr + size
	}
	end := s.addr
	if next < len(syms) {
		end = syms[next].addr
	}
	if s.secEnd > s.addr && (next >= len(syms) || s.secEnd < end) {
		end = s.secEnd
	}
	return end
}

// betterName prefers public names without leading underscores, then fewer
// underscores, then shorter names (malloc over __libc_malloc).
func betterName(a, b rawSym) bool {
	if ap, bp := isPublic(a), isPublic(b); ap != bp {
		return ap
	}
	if au, bu := leadingUnderscores(a.name), leadingUnderscores(b.name); au != bu {
		return au < bu
	}
	if isFunc(a.typ) != isFunc(b.typ) {
		return isFunc(a.typ)
	}
	if len(a.name) != len(b.name) {
		return len(a.name) < len(b.name)
	}
	return a.name < b.name
}

func isPublic(s rawSym) bool {
	return (s.bind == elf.STB_GLOBAL || s.bind == elf.STB_WEAK) && !strings.HasPrefix(s.name, "_")
}

func leadingUnderscores(s string) int {
	return len(s) - len(strings.TrimLeft(s, "_"))
}

// asmLabels returns untyped code symbols outside every sized function: entry points written
// in assembly (ld.so's _start, _dl_start_user) that would otherwise show as bare addresses.
func asmLabels(raw, funcs []rawSym) []rawSym {
	sorted := append([]rawSym(nil), funcs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].addr < sorted[j].addr })
	var out []rawSym
	for _, s := range raw {
		if s.typ != elf.STT_NOTYPE || !s.exec || strings.HasPrefix(s.name, ".") {
			continue
		}
		i := sort.Search(len(sorted), func(i int) bool { return sorted[i].addr > s.addr })
		covered := false
		for k := i - 1; k >= 0 && k >= i-64; k-- {
			if f := sorted[k]; f.addr == s.addr || (f.size > 0 && s.addr < f.addr+f.size) {
				covered = true
				break
			}
		}
		if !covered {
			out = append(out, s)
		}
	}
	return out
}
