package safeopen

import (
	"debug/elf"
	"fmt"
	"io"
	"os"
)

// ELF is a parsed ELF file opened through Open. Lost, when not nil, says what of it could not be
// read: a runnable file whose section headers are broken (e_shoff past the end, a truncated
// table) is still parsed from its program headers, as the kernel and the dynamic loader do.
type ELF struct {
	*elf.File
	Lost error
	Size int64
	file *os.File
}

// Close closes the underlying file.
func (e *ELF) Close() error { return e.file.Close() }

// OpenELF opens path through Open and parses it as ELF (see NewELF).
func OpenELF(path string, o Options) (*ELF, error) {
	f, err := Open(path, o)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	ef, lost, err := NewELF(f, st.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &ELF{File: ef, Lost: lost, Size: st.Size(), file: f}, nil
}

// NewELF parses r (size bytes) as ELF. When the section headers cannot be read but the program
// headers can, it parses the file without sections and says so in lost: loads, PT_INTERP,
// PT_DYNAMIC, PT_NOTE and PT_GNU_EH_FRAME are all in the program headers.
func NewELF(r io.ReaderAt, size int64) (f *elf.File, lost, err error) {
	defer func() {
		if p := recover(); p != nil { // debug/elf can panic on corrupt input
			f, lost, err = nil, nil, fmt.Errorf("parsing elf: panic: %v", p)
		}
	}()
	f, err = elf.NewFile(io.NewSectionReader(r, 0, size))
	if err == nil {
		return f, nil, nil
	}
	nf, nerr := elf.NewFile(io.NewSectionReader(noSections{r}, 0, size))
	if nerr != nil || !hasLoad(nf) {
		return nil, nil, err
	}
	return nf, fmt.Errorf("section headers unreadable (%v)", err), nil
}

func hasLoad(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			return true
		}
	}
	return false
}

// noSections reads a file as if its ELF header listed no section headers (e_shoff, e_shentsize,
// e_shnum and e_shstrndx zero).
type noSections struct{ r io.ReaderAt }

func (n noSections) ReadAt(p []byte, off int64) (int, error) {
	m, err := n.r.ReadAt(p, off)
	if off >= 64 {
		return m, err
	}
	var hdr [64]byte
	k, _ := n.r.ReadAt(hdr[:], 0)
	if k < 20 || string(hdr[:4]) != elf.ELFMAG {
		return m, err
	}
	var zero [][2]int // byte ranges of the header to hide
	switch elf.Class(hdr[elf.EI_CLASS]) {
	case elf.ELFCLASS64:
		zero = [][2]int{{0x28, 0x30}, {0x3a, 0x40}}
	case elf.ELFCLASS32:
		zero = [][2]int{{0x20, 0x24}, {0x2e, 0x34}}
	}
	for _, z := range zero {
		for i := z[0]; i < z[1]; i++ {
			if j := int64(i) - off; j >= 0 && j < int64(m) {
				p[j] = 0
			}
		}
	}
	return m, err
}

// maxDynamic bounds the PT_DYNAMIC and string table read from a file without sections.
const maxDynamic = 1 << 20

// DynStrings returns the strings of a string-valued dynamic tag (DT_NEEDED, DT_RPATH,
// DT_RUNPATH, DT_SONAME): from the dynamic section, or, in a file without section headers,
// from PT_DYNAMIC and the string table it points to, as the dynamic loader reads them.
func DynStrings(f *elf.File, tag elf.DynTag) []string {
	if f.SectionByType(elf.SHT_DYNAMIC) != nil {
		v, _ := f.DynString(tag)
		return v
	}
	var dyn []byte
	for _, p := range f.Progs {
		if p.Type == elf.PT_DYNAMIC && p.Filesz > 0 && p.Filesz <= maxDynamic {
			dyn = make([]byte, p.Filesz)
			if _, err := p.ReadAt(dyn, 0); err != nil {
				return nil
			}
		}
	}
	entSize := 16
	if f.Class == elf.ELFCLASS32 {
		entSize = 8
	}
	word := func(b []byte) uint64 {
		if entSize == 8 {
			return uint64(f.ByteOrder.Uint32(b))
		}
		return f.ByteOrder.Uint64(b)
	}
	var strtab, strsz uint64
	var offs []uint64
	for i := 0; i+entSize <= len(dyn); i += entSize {
		t, v := elf.DynTag(word(dyn[i:])), word(dyn[i+entSize/2:])
		switch t {
		case elf.DT_NULL:
			i = len(dyn)
		case elf.DT_STRTAB:
			strtab = v
		case elf.DT_STRSZ:
			strsz = v
		case tag:
			offs = append(offs, v)
		}
	}
	if len(offs) == 0 || strsz == 0 || strsz > maxDynamic {
		return nil
	}
	str := readVAddr(f, strtab, strsz)
	var out []string
	for _, o := range offs {
		if o >= uint64(len(str)) {
			continue
		}
		s := str[o:]
		if n := indexZero(s); n >= 0 {
			out = append(out, string(s[:n]))
		}
	}
	return out
}

// readVAddr reads n bytes at a virtual address through the PT_LOAD holding them.
func readVAddr(f *elf.File, va, n uint64) []byte {
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && va >= p.Vaddr && va-p.Vaddr < p.Filesz && n <= p.Filesz-(va-p.Vaddr) {
			b := make([]byte, n)
			if _, err := p.ReadAt(b, int64(va-p.Vaddr)); err != nil {
				return nil
			}
			return b
		}
	}
	return nil
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
