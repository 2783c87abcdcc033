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
	c, err := elfCFI(f)
	if err != nil {
		return nil, err
	}
	return Parse(c.data, c.o)
}

// cfiData is a file's CFI section, the options to parse it with, and its .eh_frame_hdr (if any).
type cfiData struct {
	data    []byte
	o       Options
	hdr     []byte
	hdrAddr uint64
}

// elfCFI reads the CFI section ParseELF and NewSourceELF use.
func elfCFI(f *elf.File) (c cfiData, err error) {
	c.data, c.o, c.hdr, c.hdrAddr, err = elfSections(f)
	return c, err
}

func elfSections(f *elf.File) (data []byte, o Options, hdr []byte, hdrAddr uint64, err error) {
	defer func() {
		// debug/elf can panic on corrupt files; one bad binary must not take the tracer down.
		if p := recover(); p != nil {
			data, hdr, err = nil, nil, fmt.Errorf("parsing elf cfi: panic: %v", p)
		}
	}()
	arch, err := elfArch(f)
	if err != nil {
		return nil, o, nil, 0, err
	}
	o = Options{Arch: arch, DataBase: dataBase(f)}
	if s := f.Section(".eh_frame"); s != nil && s.Type != elf.SHT_NOBITS && s.Size > 0 {
		data, err := sectionData(s)
		if err != nil {
			return nil, o, nil, 0, err
		}
		o.VAddr = s.Addr
		if h := f.Section(".eh_frame_hdr"); h != nil && h.Type != elf.SHT_NOBITS {
			if hd, err := sectionData(h); err == nil {
				o.FDEHint, _ = hdrInfo(hd, h.Addr)
				hdr, hdrAddr = hd, h.Addr
			}
		}
		return data, o, hdr, hdrAddr, nil
	}
	if s := f.Section(".debug_frame"); s != nil && s.Type != elf.SHT_NOBITS && s.Size > 0 {
		data, err := sectionData(s)
		if err != nil {
			return nil, o, nil, 0, err
		}
		o.DebugFrame = true
		return data, o, nil, 0, nil
	}
	return fromSegments(f, o)
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
	if s.Flags&elf.SHF_COMPRESSED == 0 && s.Type != elf.SHT_NOBITS {
		data := make([]byte, s.Size) // one read, no growing buffer: .eh_frame is megabytes
		if _, err := s.ReadAt(data, 0); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("reading section %s: %w", s.Name, err)
		}
		return data, nil
	}
	// Open().ReadAll decompresses and bounds reads by the header.
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

// fromSegments finds .eh_frame through PT_GNU_EH_FRAME and reads it from
// its PT_LOAD; its exact end is unknown, so parsing stops at the terminator
// or at the first entry that does not frame.
func fromSegments(f *elf.File, o Options) ([]byte, Options, []byte, uint64, error) {
	var hdrProg *elf.Prog
	for _, p := range f.Progs {
		if p.Type == elf.PT_GNU_EH_FRAME {
			hdrProg = p
		}
	}
	if hdrProg == nil {
		return nil, o, nil, 0, errors.New("finding cfi: no .eh_frame, .debug_frame or PT_GNU_EH_FRAME")
	}
	hdr, err := readVAddr(f, hdrProg.Vaddr, min(hdrProg.Filesz, 1<<20))
	if err != nil {
		return nil, o, nil, 0, err
	}
	count, eh := hdrInfo(hdr, hdrProg.Vaddr)
	if eh == 0 {
		return nil, o, nil, 0, errors.New("finding cfi: bad .eh_frame_hdr")
	}
	data, err := readVAddr(f, eh, maxSectionSize)
	if err != nil {
		return nil, o, nil, 0, err
	}
	o.VAddr, o.FDEHint, o.LenientTail = eh, count, true
	return data, o, hdr, hdrProg.Vaddr, nil
}

// hdrTable decodes .eh_frame_hdr's search table (the usual datarel sdata4 encoding only): each
// FDE's start address, sorted, and its offset in .eh_frame. ok=false when absent or odd.
func hdrTable(hdr []byte, hdrAddr, ehAddr uint64, ehLen int) (starts []uint64, offs []int32, ok bool) {
	r := reader{b: hdr}
	if r.u8() != 1 || r.err != nil {
		return nil, nil, false
	}
	ptrEnc, countEnc, tableEnc := r.u8(), r.u8(), r.u8()
	b := bases{sectionVAddr: hdrAddr, ptrSize: 8}
	if _, ind, err := r.encoded(ptrEnc, &b, true); err != nil || ind {
		return nil, nil, false
	}
	n, _, err := r.encoded(countEnc, &b, false)
	if err != nil || countEnc == peOmit || tableEnc != peDatarel|peSdata4 || n > uint64(r.left()/8) {
		return nil, nil, false
	}
	starts, offs = make([]uint64, n), make([]int32, n)
	for i := range starts {
		loc, fde := int32(r.u32()), int32(r.u32())
		starts[i] = hdrAddr + uint64(int64(loc))
		off := int64(hdrAddr) + int64(fde) - int64(ehAddr)
		if r.err != nil || off < 0 || off >= int64(ehLen) || (i > 0 && starts[i] < starts[i-1]) {
			return nil, nil, false
		}
		offs[i] = int32(off)
	}
	return starts, offs, true
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
