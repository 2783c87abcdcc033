package unwind

import (
	"encoding/binary"
	"testing"
)

// ehBuilder assembles .eh_frame / .debug_frame bytes by hand.
type ehBuilder struct {
	buf   []byte
	vaddr uint64 // section address, for pcrel fields
	is64  bool   // emit 64-bit DWARF lengths
	debug bool   // .debug_frame conventions
}

func uleb(v uint64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			b = append(b, c|0x80)
			continue
		}
		return append(b, c)
	}
}

func sleb(v int64) []byte {
	var b []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }

// entry appends a length-prefixed entry whose body starts with id; body is
// built by fn given the section offset of the first body byte after the id.
func (e *ehBuilder) entry(id uint64, fn func(bodyOff int) []byte) int {
	off := len(e.buf)
	hdr, idLen := 4, 4
	if e.is64 {
		hdr, idLen = 12, 8
	}
	rest := fn(off + hdr + idLen)
	n := idLen + len(rest)
	if e.is64 {
		e.buf = append(e.buf, le32(0xffffffff)...)
		e.buf = append(e.buf, le64(uint64(n))...)
		e.buf = append(e.buf, le64(id)...)
	} else {
		e.buf = append(e.buf, le32(uint32(n))...)
		e.buf = append(e.buf, le32(uint32(id))...)
	}
	e.buf = append(e.buf, rest...)
	return off
}

// cie appends a CIE (caf=1, daf=-8, RA column 16 unless version 1 data says so).
func (e *ehBuilder) cie(version byte, aug string, augData, instrs []byte) int {
	id := uint64(0)
	if e.debug {
		id = 0xffffffff
		if e.is64 {
			id = ^uint64(0)
		}
	}
	return e.entry(id, func(int) []byte {
		b := cat([]byte{version}, []byte(aug), []byte{0})
		if version == 4 {
			b = append(b, 8, 0)
		}
		b = cat(b, uleb(1), sleb(-8))
		if version == 1 {
			b = append(b, 16)
		} else {
			b = append(b, uleb(16)...)
		}
		if len(aug) > 0 && aug[0] == 'z' {
			b = cat(b, uleb(uint64(len(augData))), augData)
		}
		return cat(b, instrs)
	})
}

// fde appends an FDE; addr encodes pc_begin given the field's section offset.
func (e *ehBuilder) fde(cieOff int, addr func(fieldOff int) []byte, size []byte, augData []byte, instrs []byte) int {
	idOff := len(e.buf) + 4
	if e.is64 {
		idOff = len(e.buf) + 12
	}
	id := uint64(idOff - cieOff)
	if e.debug {
		id = uint64(cieOff)
	}
	return e.entry(id, func(bodyOff int) []byte {
		b := cat(addr(bodyOff), size)
		if augData != nil {
			b = cat(b, uleb(uint64(len(augData))), augData)
		}
		return cat(b, instrs)
	})
}

// pcrel4 encodes target as DW_EH_PE_pcrel|sdata4 relative to the field.
func (e *ehBuilder) pcrel4(target uint64) func(int) []byte {
	return func(off int) []byte { return le32(uint32(target - (e.vaddr + uint64(off)))) }
}

func abs8(target uint64) func(int) []byte { return func(int) []byte { return le64(target) } }

// x86-64 CIE program: CFA = rsp+8, RA at CFA-8.
var cieX86 = []byte{cfaDefCFA, 7, 8, cfaOffset | 16, 1}

type want struct {
	addr uint64
	ok   bool
	cfa  CFARule
	ra   RegRule
	fp   RegRule
}

func rsp(off int32) CFARule { return CFARule{Kind: CFARegOffset, Reg: 7, Offset: off} }
func rbp(off int32) CFARule { return CFARule{Kind: CFARegOffset, Reg: 6, Offset: off} }
func at(off int32) RegRule  { return RegRule{Kind: RuleOffset, Offset: off} }

var same = RegRule{Kind: RuleSameValue}

func check(t *testing.T, tab *Table, ws []want) {
	t.Helper()
	for _, w := range ws {
		r, ok := tab.Lookup(w.addr)
		if ok != w.ok {
			t.Errorf("Lookup(%#x) ok=%v, want %v (%+v)", w.addr, ok, w.ok, r)
			continue
		}
		if !ok {
			continue
		}
		if r.CFA != w.cfa || r.RA != w.ra || r.FP != w.fp {
			t.Errorf("Lookup(%#x) = %+v, want cfa=%+v ra=%+v fp=%+v", w.addr, r, w.cfa, w.ra, w.fp)
		}
	}
}

func mustParse(t *testing.T, data []byte, o Options) *Table {
	t.Helper()
	tab, err := Parse(data, o)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return tab
}

func TestPrologueEpilogue(t *testing.T) {
	e := &ehBuilder{vaddr: 0x5000}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x1000), le32(0x40), []byte{}, []byte{
		cfaAdvanceLoc | 1, cfaDefCFAOffset, 16, cfaOffset | 6, 2, // push rbp
		cfaAdvanceLoc | 3, cfaDefCFARegister, 6, // mov rsp,rbp
		cfaAdvanceLoc1, 0x20, cfaDefCFA, 7, 8, cfaRestore | 6, // leave
		cfaNop, cfaNop,
	})
	e.buf = append(e.buf, 0, 0, 0, 0) // terminator
	e.buf = append(e.buf, 0xde, 0xad) // ignored after the terminator
	tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
	check(t, tab, []want{
		{addr: 0xfff},
		{0x1000, true, rsp(8), at(-8), same},
		{0x1001, true, rsp(16), at(-8), at(-16)},
		{0x1003, true, rsp(16), at(-8), at(-16)},
		{0x1004, true, rbp(16), at(-8), at(-16)},
		{0x1023, true, rbp(16), at(-8), at(-16)},
		{0x1024, true, rsp(8), at(-8), same},
		{0x103f, true, rsp(8), at(-8), same},
		{addr: 0x1040},
	})
}

func TestRememberRestoreState(t *testing.T) {
	e := &ehBuilder{vaddr: 0x400}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x2000), le32(0x100), []byte{}, []byte{
		cfaAdvanceLoc | 1, cfaDefCFAOffset, 16, cfaOffset | 3, 2,
		cfaAdvanceLoc | 4, cfaDefCFAOffset, 48,
		cfaAdvanceLoc | 10, cfaRememberState, cfaDefCFAOffset, 16,
		cfaAdvanceLoc | 1, cfaDefCFAOffset, 8,
		cfaAdvanceLoc | 1, cfaRestoreState, // back to 48 for the code after ret
		cfaAdvanceLoc | 10, cfaRememberState, cfaRememberState, cfaDefCFAOffset, 8,
		cfaAdvanceLoc | 1, cfaRestoreState, cfaRestoreState,
	})
	tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
	check(t, tab, []want{
		{0x2005, true, rsp(48), at(-8), same},
		{0x200f, true, rsp(16), at(-8), same},
		{0x2010, true, rsp(8), at(-8), same},
		{0x2011, true, rsp(48), at(-8), same},
		{0x201b, true, rsp(8), at(-8), same},
		{0x201c, true, rsp(48), at(-8), same},
		{0x20ff, true, rsp(48), at(-8), same},
	})
	// restore_state on an empty stack drops just that FDE.
	e2 := &ehBuilder{}
	c = e2.cie(1, "zR", []byte{0x1b}, cieX86)
	e2.fde(c, e2.pcrel4(0x10), le32(8), []byte{}, []byte{cfaRestoreState})
	e2.fde(c, e2.pcrel4(0x20), le32(8), []byte{}, nil)
	tab = mustParse(t, e2.buf, Options{})
	if got, skipped := tab.FDEs(); got != 1 || skipped != 1 {
		t.Errorf("FDEs() = %d, %d; want 1, 1", got, skipped)
	}
	check(t, tab, []want{{addr: 0x10}, {0x20, true, rsp(8), at(-8), same}})
}

// pltExpr is binutils' .plt CFA expression with threshold k (11 lazy, 10 IBT).
func pltExpr(k byte) []byte {
	x := []byte{opBreg0 + 7, 8, opBreg0 + 16, 0, opLit0 + 15, opAnd, opLit0 + k, opGe, opLit0 + 3, opShl, opPlus}
	return cat([]byte{cfaDefCFAExpression}, uleb(uint64(len(x))), x)
}

func TestPLTExpression(t *testing.T) {
	for _, k := range []byte{11, 10} {
		e := &ehBuilder{vaddr: 0x9000}
		c := e.cie(1, "zR", []byte{0x1b}, cieX86)
		e.fde(c, e.pcrel4(0x3000), le32(0x60), []byte{}, cat(
			[]byte{cfaDefCFAOffset, 16, cfaAdvanceLoc | 6, cfaDefCFAOffset, 24, cfaAdvanceLoc | 10},
			pltExpr(k)))
		tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
		plt := CFARule{Kind: CFAPLT, Reg: 7, Offset: 8, Threshold: k, Shift: 3}
		check(t, tab, []want{
			{0x3000, true, rsp(16), at(-8), same},
			{0x3006, true, rsp(24), at(-8), same},
			{0x3010, true, plt, at(-8), same},
			{0x305f, true, plt, at(-8), same},
		})
		// Entry instruction "jmp *GOT" at (ip&15)<k has only the RA pushed; the
		// "jmp PLT0" after pushing the index has one more word.
		res := func(uint64) (*Table, uint64, bool) { return tab, 0, true }
		stack := cat(le64(0x1111), le64(0x2222))
		for _, tc := range []struct{ ip, ra uint64 }{{0x3010, 0x1111}, {0x3010 + uint64(k), 0x2222}} {
			got := Unwind(Regs{IP: tc.ip, SP: 0x7000}, stack, res, 2)
			if len(got) != 2 || got[1] != tc.ra {
				t.Errorf("k=%d ip=%#x: Unwind = %x, want RA %#x", k, tc.ip, got, tc.ra)
			}
		}
	}
	// Any other expression is unsupported, not misread.
	e := &ehBuilder{}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	bad := []byte{cfaDefCFAExpression, 3, opBreg0 + 7, 8, opPlus}
	e.fde(c, e.pcrel4(0x10), le32(8), []byte{}, bad)
	tab := mustParse(t, e.buf, Options{})
	if r, ok := tab.Lookup(0x10); !ok || r.CFA.Kind != CFAUnsupported {
		t.Errorf("unknown expression: Lookup = %+v, %v; want CFAUnsupported", r, ok)
	}
}

func TestSixtyFourBitLength(t *testing.T) {
	for _, debug := range []bool{false, true} {
		e := &ehBuilder{is64: true, debug: debug, vaddr: 0x100}
		c := e.cie(4, "", nil, cieX86)
		e.fde(c, abs8(0x4000), le64(0x20), nil, []byte{cfaAdvanceLoc | 4, cfaDefCFAOffset, 32})
		tab := mustParse(t, e.buf, Options{VAddr: e.vaddr, DebugFrame: debug})
		check(t, tab, []want{
			{0x4000, true, rsp(8), at(-8), same},
			{0x4004, true, rsp(32), at(-8), same},
			{addr: 0x4020},
		})
	}
}

func TestPointerEncodings(t *testing.T) {
	const target, dataBase = 0x7000, 0x10000
	tests := []struct {
		name string
		enc  byte
		addr func(e *ehBuilder) func(int) []byte
		size []byte
	}{
		{"absptr", peAbsptr, func(*ehBuilder) func(int) []byte { return abs8(target) }, le64(0x10)},
		{"udata2", peUdata2, func(*ehBuilder) func(int) []byte {
			return func(int) []byte { return []byte{0x00, 0x70} }
		}, []byte{0x10, 0}},
		{"udata4", peUdata4, func(*ehBuilder) func(int) []byte {
			return func(int) []byte { return le32(target) }
		}, le32(0x10)},
		{"uleb128", peUleb128, func(*ehBuilder) func(int) []byte {
			return func(int) []byte { return uleb(target) }
		}, uleb(0x10)},
		{"pcrel|sdata4", pePcrel | peSdata4, func(e *ehBuilder) func(int) []byte { return e.pcrel4(target) }, le32(0x10)},
		{"pcrel|sdata8", pePcrel | peSdata8, func(e *ehBuilder) func(int) []byte {
			return func(off int) []byte { return le64(target - (e.vaddr + uint64(off))) }
		}, le64(0x10)},
		{"pcrel|sleb128", pePcrel | peSleb128, func(e *ehBuilder) func(int) []byte {
			return func(off int) []byte { return sleb(int64(target) - int64(e.vaddr+uint64(off))) }
		}, uleb(0x10)},
		{"pcrel|sdata2", pePcrel | peSdata2, func(e *ehBuilder) func(int) []byte {
			return func(off int) []byte {
				return binary.LittleEndian.AppendUint16(nil, uint16(target-(e.vaddr+uint64(off))))
			}
		}, []byte{0x10, 0}},
		{"datarel|sdata4", peDatarel | peSdata4, func(*ehBuilder) func(int) []byte {
			return func(int) []byte { d := int32(target) - int32(dataBase); return le32(uint32(d)) }
		}, le32(0x10)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := &ehBuilder{vaddr: 0x8000}
			c := e.cie(3, "zR", []byte{tc.enc}, cieX86)
			e.fde(c, tc.addr(e), tc.size, []byte{}, nil)
			tab := mustParse(t, e.buf, Options{VAddr: e.vaddr, DataBase: dataBase})
			check(t, tab, []want{{addr: target - 1}, {target, true, rsp(8), at(-8), same}, {addr: target + 0x10}})
		})
	}
	// An indirect FDE address cannot be followed without the process' memory: skipped.
	e := &ehBuilder{vaddr: 0x8000}
	c := e.cie(1, "zR", []byte{peIndirect | pePcrel | peSdata4}, cieX86)
	e.fde(c, e.pcrel4(target), le32(0x10), []byte{}, nil)
	tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
	if n, skipped := tab.FDEs(); n != 0 || skipped != 1 {
		t.Errorf("indirect: FDEs() = %d, %d; want 0, 1", n, skipped)
	}
}
