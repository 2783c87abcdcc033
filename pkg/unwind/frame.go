package unwind

import (
	"errors"
	"fmt"
)

// cie is a parsed Common Information Entry.
type cie struct {
	codeAlign uint64
	dataAlign int64
	raReg     uint64
	fdeEnc    byte
	augData   bool // 'z': FDEs carry an augmentation-data length
	signal    bool // 'S'
	ptrSize   int
	arch      Arch
	initial   state // rules after the CIE's initial instructions
	err       error // non-nil: FDEs using this CIE are skipped
}

// Options controls parsing of a raw CFI section.
type Options struct {
	Arch        Arch   // register numbering; zero value = ArchAMD64
	VAddr       uint64 // ELF virtual address of data[0]
	DataBase    uint64 // base for DW_EH_PE_datarel (the GOT on i386); 0 = unknown
	DebugFrame  bool   // data is .debug_frame (CIE ids 0xffffffff, absolute CIE pointers)
	LenientTail bool   // stop quietly at the first malformed entry (data read from a segment, no exact end)
	FDEHint     int    // expected FDE count (from .eh_frame_hdr), to size buffers
}

// maxCIEs bounds the CIE cache so hostile data cannot grow it without limit.
const maxCIEs = 1 << 16

// ParseEHFrame compiles an .eh_frame section loaded at sectionVAddr. Only
// x86-64 register numbering is assumed; use Parse for others.
func ParseEHFrame(data []byte, sectionVAddr uint64, ptrSize int) (*Table, error) {
	a := ArchAMD64
	if ptrSize == 4 {
		a.PtrSize = 4
	}
	return Parse(data, Options{Arch: a, VAddr: sectionVAddr})
}

// Parse compiles an .eh_frame or .debug_frame section into a Table.
// Malformed or unsupported FDEs are skipped and counted (see Table.FDEs); an
// error means the section's framing itself is broken.
func Parse(data []byte, o Options) (*Table, error) {
	if o.Arch.PtrSize == 0 {
		o.Arch = ArchAMD64
	}
	if o.Arch.PtrSize != 4 && o.Arch.PtrSize != 8 {
		return nil, fmt.Errorf("parsing frames: bad pointer size %d", o.Arch.PtrSize)
	}
	p := parser{
		data: data,
		o:    o,
		b:    bases{sectionVAddr: o.VAddr, dataBase: o.DataBase, ptrSize: o.Arch.PtrSize},
		cies: map[uint64]*cie{},
	}
	if h := o.FDEHint; h > 0 && h <= len(data)/16 {
		p.bld.fdes = make([]fdeRows, 0, h)
		p.bld.addrs = make([]uint64, 0, 4*h)
		p.bld.rows = make([]row, 0, 4*h)
	}
	if err := p.walk(); err != nil && !o.LenientTail {
		return nil, err
	}
	return p.bld.table(o.Arch, p.skipped), nil
}

type parser struct {
	data    []byte
	o       Options
	b       bases
	cies    map[uint64]*cie
	bld     builder
	skipped int
	interp  interp
}

// entry is one length-delimited CIE or FDE.
type entry struct {
	off     int    // offset of the length field
	idOff   int    // offset of the CIE id / CIE pointer field
	body    []byte // from the id field to the end of the entry
	idSize  int
	id      uint64
	isCIE   bool
	nextOff int
}

// next frames the entry at off; done is true at the end or at a zero terminator.
func (p *parser) next(off int) (e entry, done bool, err error) {
	if off >= len(p.data) {
		return e, true, nil
	}
	r := reader{b: p.data, off: off}
	length := uint64(r.u32())
	e.idSize = 4
	if length == 0xffffffff {
		length = r.u64()
		e.idSize = 8
	} else if length >= 0xfffffff0 {
		return e, false, fmt.Errorf("framing entry at %#x: reserved length %#x", off, length)
	}
	if r.err != nil {
		return e, false, fmt.Errorf("framing entry at %#x: %w", off, r.err)
	}
	if length == 0 {
		return e, true, nil
	}
	if length > uint64(r.left()) || length < uint64(e.idSize) {
		return e, false, fmt.Errorf("framing entry at %#x: length %#x exceeds section", off, length)
	}
	e.off, e.idOff = off, r.off
	e.body = p.data[r.off : r.off+int(length)]
	e.nextOff = r.off + int(length)
	br := reader{b: e.body}
	if e.idSize == 4 {
		e.id = uint64(br.u32())
	} else {
		e.id = br.u64()
	}
	if p.o.DebugFrame {
		e.isCIE = e.id == 0xffffffff || e.id == ^uint64(0)
	} else {
		e.isCIE = e.id == 0
	}
	return e, false, nil
}

func (p *parser) walk() error {
	for off := 0; ; {
		e, done, err := p.next(off)
		if err != nil || done {
			return err
		}
		off = e.nextOff
		if e.isCIE {
			continue // parsed on first use, so unused or broken CIEs cost nothing
		}
		if err := p.fde(e); err != nil {
			p.skipped++
		}
	}
}

// cieAt returns the (cached) CIE whose length field is at off.
func (p *parser) cieAt(off uint64) (*cie, error) {
	if c, ok := p.cies[off]; ok {
		return c, c.err
	}
	c := &cie{}
	if off < uint64(len(p.data)) {
		e, done, err := p.next(int(off))
		switch {
		case err != nil:
			c.err = err
		case done || !e.isCIE:
			c.err = fmt.Errorf("finding cie at %#x: not a cie", off)
		default:
			c.err = p.parseCIE(c, e)
		}
	} else {
		c.err = fmt.Errorf("finding cie at %#x: outside section", off)
	}
	if len(p.cies) < maxCIEs {
		p.cies[off] = c
	}
	return c, c.err
}

func (p *parser) parseCIE(c *cie, e entry) error {
	r := reader{b: e.body, off: e.idSize}
	version := r.u8()
	if version != 1 && version != 3 && version != 4 {
		return fmt.Errorf("parsing cie at %#x: unsupported version %d", e.off, version)
	}
	aug := r.cstring()
	c.ptrSize = p.o.Arch.PtrSize
	c.arch = p.o.Arch
	if version == 4 {
		if as := r.u8(); as == 4 || as == 8 {
			c.ptrSize = int(as)
		}
		if r.u8() != 0 {
			return fmt.Errorf("parsing cie at %#x: segment selectors unsupported", e.off)
		}
	}
	c.codeAlign = r.uleb()
	c.dataAlign = r.sleb()
	if version == 1 {
		c.raReg = uint64(r.u8())
	} else {
		c.raReg = r.uleb()
	}
	c.fdeEnc = peAbsptr
	if len(aug) > 0 && aug[0] == 'z' {
		c.augData = true
		n := r.uleb()
		if n > uint64(r.left()) {
			return fmt.Errorf("parsing cie at %#x: %w", e.off, errTruncated)
		}
		ad := reader{b: e.body[:r.off+int(n)], off: r.off}
		r.off += int(n)
		if err := p.parseAug(c, aug[1:], &ad, p.o.VAddr+uint64(e.idOff)); err != nil {
			return fmt.Errorf("parsing cie at %#x: %w", e.off, err)
		}
	} else if aug != "" {
		return fmt.Errorf("parsing cie at %#x: unsupported augmentation %q", e.off, aug)
	}
	if r.err != nil {
		return fmt.Errorf("parsing cie at %#x: %w", e.off, r.err)
	}
	if c.codeAlign == 0 {
		return fmt.Errorf("parsing cie at %#x: zero code alignment", e.off)
	}
	init := defaultState()
	p.interp.base = p.b
	p.interp.base.sectionVAddr = p.o.VAddr + uint64(e.idOff+r.off)
	if err := p.interp.run(c, e.body[r.off:], &init, nil, 0, 0); err != nil {
		return fmt.Errorf("parsing cie at %#x: %w", e.off, err)
	}
	c.initial = init
	return nil
}

// parseAug reads the augmentation data named by the letters after 'z'.
// bodyVAddr is the address of r.b[0], for pcrel and aligned encodings.
func (p *parser) parseAug(c *cie, letters string, r *reader, bodyVAddr uint64) error {
	b := p.b
	b.sectionVAddr = bodyVAddr
	b.ptrSize = c.ptrSize
	for i := 0; i < len(letters); i++ {
		switch letters[i] {
		case 'R':
			c.fdeEnc = r.u8()
		case 'L':
			r.u8() // LSDA encoding: FDE augmentation data is skipped by length
		case 'P':
			enc := r.u8()
			// The personality routine is not needed for unwinding; read
			// (never dereference) it only to advance.
			if _, _, err := r.encoded(enc&^peIndirect, &b, false); err != nil {
				return fmt.Errorf("reading personality: %w", err)
			}
		case 'S':
			c.signal = true
		case 'B', 'G':
			// arm64 BTI / MTE markers carry no data.
		default:
			return nil // unknown letter: the 'z' length already bounds the data
		}
	}
	return r.err
}

var errIndirect = errors.New("indirect fde address")

func (p *parser) fde(e entry) error {
	f, err := p.fdeHeader(e)
	if err != nil || f.start == f.end {
		return err // an empty or wrapping range has nothing to cover
	}
	return p.fdeRows(f)
}

// fdeHead is an FDE's range and where its instructions are, before they are run.
type fdeHead struct {
	c            *cie
	start, end   uint64
	instr, limit int // the instructions are p.data[instr:limit]
	off          int // the FDE's offset in the section
}

// fdeHeader decodes an FDE's CIE, address range and augmentation.
func (p *parser) fdeHeader(e entry) (fdeHead, error) {
	var cieOff uint64
	if p.o.DebugFrame {
		cieOff = e.id
	} else {
		if e.id > uint64(e.idOff) {
			return fdeHead{}, fmt.Errorf("parsing fde at %#x: cie pointer out of range", e.off)
		}
		cieOff = uint64(e.idOff) - e.id
	}
	c, err := p.cieAt(cieOff)
	if err != nil {
		return fdeHead{}, err
	}
	// Decode with the whole section as backing so pcrel sees true offsets.
	r := reader{b: p.data[:e.nextOff], off: e.idOff + e.idSize}
	b := p.b
	b.ptrSize = c.ptrSize
	start, ind, err := r.encoded(c.fdeEnc, &b, true)
	if err != nil {
		return fdeHead{}, fmt.Errorf("parsing fde at %#x: %w", e.off, err)
	}
	if ind {
		return fdeHead{}, fmt.Errorf("parsing fde at %#x: %w", e.off, errIndirect)
	}
	size, _, err := r.encoded(c.fdeEnc&0x0f, &b, false)
	if err != nil {
		return fdeHead{}, fmt.Errorf("parsing fde at %#x: %w", e.off, err)
	}
	if c.augData {
		n := r.uleb()
		r.take(int(min(n, uint64(r.left())+1)))
	}
	if r.err != nil {
		return fdeHead{}, fmt.Errorf("parsing fde at %#x: %w", e.off, r.err)
	}
	end := start + size
	if size == 0 || end < start {
		end = start
	}
	return fdeHead{c: c, start: start, end: end, instr: r.off, limit: e.nextOff, off: e.off}, nil
}

// fdeRows runs an FDE's instructions into the builder.
func (p *parser) fdeRows(f fdeHead) error {
	p.bld.beginFDE(f.start, f.end)
	st := f.c.initial
	p.interp.base = p.b
	p.interp.base.sectionVAddr = p.o.VAddr + uint64(f.instr)
	err := p.interp.run(f.c, p.data[f.instr:f.limit], &st, &p.bld, f.start, f.end)
	p.bld.endFDE(err == nil)
	if err != nil {
		return fmt.Errorf("parsing fde at %#x: %w", f.off, err)
	}
	return nil
}
