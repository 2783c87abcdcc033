package unwind

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// maxSectionSize bounds the CFI we read so hostile headers cannot make us
// allocate without limit.
const maxSectionSize = 256 << 20

// ParseELF compiles the CFI of f: .eh_frame, else .debug_frame, else the
// .eh_frame found through PT_GNU_EH_FRAME (section headers stripped).
// .eh_frame_hdr is only used to size buffers and to find .eh_frame.
func ParseELF(f *elf.File) (t *Table, err error) {
	defer func() {
		// debug/elf can panic on corrupt files; one bad binary must not take the tracer down.
		if p := recover(); p != nil {
			t, err = nil, fmt.Errorf("parsing elf cfi: panic: %v", p)
		}
	}()
	arch, err := elfArch(f)
	if err != nil {
		return nil, err
	}
	o := Options{Arch: arch, DataBase: dataBase(f)}
	if s := f.Section(".eh_frame"); s != nil && s.Type != elf.SHT_NOBITS && s.Size > 0 {
		data, err := sectionData(s)
		if err != nil {
			return nil, err
		}
		o.VAddr = s.Addr
		if h := f.Section(".eh_frame_hdr"); h != nil && h.Type != elf.SHT_NOBITS {
			if hd, err := sectionData(h); err == nil {
				o.FDEHint, _ = hdrInfo(hd, h.Addr)
			}
		}
		return Parse(data, o)
	}
	if s := f.Section(".debug_frame"); s != nil && s.Type != elf.SHT_NOBITS && s.Size > 0 {
		data, err := sectionData(s)
		if err != nil {
			return nil, err
		}
		o.DebugFrame = true
		return Parse(data, o)
	}
	return parseFromSegments(f, o)
}

func elfArch(f *elf.File) (Arch, error) {
	if f.Data != elf.ELFDATA2LSB {
		return Arch{}, errors.New("parsing elf cfi: big-endian files unsupported")
	}
	switch f.Machine {
	case elf.EM_X86_64:
		return ArchAMD64, nil
	case elf.EM_AARCH64:
		return ArchARM64, nil
	}
	return Arch{}, fmt.Errorf("parsing elf cfi: unsupported machine %v", f.Machine)
}

// dataBase is what DW_EH_PE_datarel is relative to: the GOT, as libgcc uses.
func dataBase(f *elf.File) uint64 {
	for _, name := range []string{".got.plt", ".got"} {
		if s := f.Section(name); s != nil {
			return s.Addr
		}
	}
	return 0
}

func sectionData(s *elf.Section) ([]byte, error) {
	if s.Size > maxSectionSize {
		return nil, fmt.Errorf("reading section %s: size %d too large", s.Name, s.Size)
	}
	// Open().ReadAll handles SHF_COMPRESSED and bounds reads by the header.
	data, err := io.ReadAll(io.LimitReader(s.Open(), maxSectionSize))
	if err != nil {
		return nil, fmt.Errorf("reading section %s: %w", s.Name, err)
	}
	return data, nil
}

// hdrInfo decodes .eh_frame_hdr: the FDE count and .eh_frame's address.
func hdrInfo(hdr []byte, vaddr uint64) (fdeCount int, ehFrame uint64) {
	r := reader{b: hdr}
	if r.u8() != 1 || r.err != nil {
		return 0, 0
	}
	ptrEnc, countEnc := r.u8(), r.u8()
	r.u8() // table encoding
	b := bases{sectionVAddr: vaddr, ptrSize: 8}
	eh, ind, err := r.encoded(ptrEnc, &b, true)
	if err != nil || ind {
		return 0, 0
	}
	if n, _, err := r.encoded(countEnc, &b, false); err == nil && countEnc != peOmit && n < 1<<24 {
		fdeCount = int(n)
	}
	return fdeCount, eh
}

// parseFromSegments finds .eh_frame through PT_GNU_EH_FRAME and reads it from
// its PT_LOAD; its exact end is unknown, so parsing stops at the terminator
// or at the first entry that does not frame.
func parseFromSegments(f *elf.File, o Options) (*Table, error) {
	var hdrProg *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_GNU_EH_FRAME {
			hdrProg = p
		}
	}
	if hdrProg == nil {
		return nil, errors.New("finding cfi: no .eh_frame, .debug_frame or PT_GNU_EH_FRAME")
	}
	hdr, err := readVAddr(f, hdrProg.Vaddr, min(hdrProg.Filesz, 1<<20))
	if err != nil {
		return nil, err
	}
	count, eh := hdrInfo(hdr, hdrProg.Vaddr)
	if eh == 0 {
		return nil, errors.New("finding cfi: bad .eh_frame_hdr")
	}
	data, err := readVAddr(f, eh, maxSectionSize)
	if err != nil {
		return nil, err
	}
	o.VAddr, o.FDEHint, o.LenientTail = eh, count, true
	return Parse(data, o)
}

// readVAddr reads up to n bytes at vaddr from the PT_LOAD holding it.
func readVAddr(f *elf.File, vaddr, n uint64) ([]byte, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || vaddr < p.Vaddr || vaddr-p.Vaddr >= p.Filesz {
			continue
		}
		off := vaddr - p.Vaddr
		n = min(n, p.Filesz-off)
		buf := make([]byte, n)
		k, err := p.ReadAt(buf, int64(off))
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading segment at %#x: %w", vaddr, err)
		}
		return buf[:k], nil
	}
	return nil, fmt.Errorf("reading vaddr %#x: not in any PT_LOAD", vaddr)
}

// LoadBias converts a mapping to the bias Resolver returns: a file mapped at
// runtime address start from file offset off has vaddr = pc - bias. ok=false
// when no PT_LOAD covers off.
func LoadBias(f *elf.File, start, off uint64) (bias uint64, ok bool) {
	// The kernel maps each PT_LOAD from its page-aligned offset; later
	// mprotects (RELRO) split mappings inside a segment. Prefer the segment
	// that begins the mapping, since neighbours may share a page.
	const page = 0x1000
	var best *elf.Prog
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || off < p.Off&^(page-1) || off >= p.Off+max(p.Filesz, 1) {
			continue
		}
		if best == nil || off == p.Off&^(page-1) {
			best = p
		}
	}
	if best == nil {
		return 0, false
	}
	vaddr := best.Vaddr + off - best.Off // wraps correctly when off < best.Off
	return start - vaddr, true
}
