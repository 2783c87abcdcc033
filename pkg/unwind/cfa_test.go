package unwind

import (
	"strings"
	"testing"
)

func TestCIEVersionsAndAugmentations(t *testing.T) {
	e := &ehBuilder{vaddr: 0x1000}
	// zPLR: personality pcrel|indirect|sdata4, LSDA pcrel|sdata4, FDE pcrel|sdata4.
	zplr := e.cie(1, "zPLR", cat([]byte{0x9b}, le32(0x1234), []byte{0x1b, 0x1b}), cieX86)
	e.fde(zplr, e.pcrel4(0x100), le32(0x10), le32(0xabcd), []byte{cfaAdvanceLoc | 1, cfaDefCFAOffset, 16})
	v3 := e.cie(3, "zR", []byte{0x1b}, cieX86)
	e.fde(v3, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{cfaAdvanceLoc | 2, cfaDefCFAOffset, 24})
	v4 := e.cie(4, "zR", []byte{0x1b}, cieX86)
	e.fde(v4, e.pcrel4(0x300), le32(0x10), []byte{}, []byte{cfaAdvanceLoc | 3, cfaDefCFAOffset, 32})
	sig := e.cie(1, "zRS", []byte{0x1b}, cieX86)
	e.fde(sig, e.pcrel4(0x400), le32(0x10), []byte{}, nil)
	plain := e.cie(1, "", nil, cieX86) // no 'z': absptr addresses, no FDE augmentation data
	e.fde(plain, abs8(0x500), le64(0x10), nil, []byte{cfaAdvanceLoc | 4, cfaDefCFAOffset, 40})
	unknown := e.cie(1, "zRX", []byte{0x1b, 0xee}, cieX86) // unknown letter after z: data skipped by length
	e.fde(unknown, e.pcrel4(0x600), le32(0x10), []byte{}, nil)
	v2 := e.cie(2, "zR", []byte{0x1b}, cieX86) // unsupported version: FDE skipped
	e.fde(v2, e.pcrel4(0x700), le32(0x10), []byte{}, nil)
	tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
	check(t, tab, []want{
		{0x101, true, rsp(16), at(-8), same},
		{0x202, true, rsp(24), at(-8), same},
		{0x303, true, rsp(32), at(-8), same},
		{0x400, true, rsp(8), at(-8), same},
		{0x504, true, rsp(40), at(-8), same},
		{0x600, true, rsp(8), at(-8), same},
		{addr: 0x700},
	})
	if r, _ := tab.Lookup(0x400); !r.Signal {
		t.Errorf("S augmentation: Signal = false")
	}
	if r, _ := tab.Lookup(0x101); r.Signal {
		t.Errorf("zPLR: Signal = true")
	}
	if n, skipped := tab.FDEs(); n != 6 || skipped != 1 {
		t.Errorf("FDEs() = %d, %d; want 6, 1", n, skipped)
	}
}

func TestRegisterRules(t *testing.T) {
	e := &ehBuilder{vaddr: 0x1000}
	c := e.cie(3, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x1000), le32(0x100000), []byte{}, cat(
		[]byte{cfaGNUArgsSize, 16, cfaNop},
		[]byte{cfaAdvanceLoc1, 1, cfaOffsetExtendedSf, 6}, sleb(3), // rbp at cfa-24
		[]byte{cfaAdvanceLoc2, 1, 0, cfaDefCFASf, 6}, sleb(-2), // CFA = rbp+16 (factored)
		[]byte{cfaAdvanceLoc4, 1, 0, 0, 0, cfaDefCFAOffsetSf}, sleb(-4), // rbp+32
		[]byte{cfaAdvanceLoc | 1, cfaRestoreExtended, 6, cfaDefCFA}, uleb(7), uleb(64),
		[]byte{cfaAdvanceLoc | 1, cfaUndefined, 16},                          // outermost frame
		[]byte{cfaAdvanceLoc | 1, cfaSameValue, 16, cfaOffsetExtended, 6, 4}, // RA same value, rbp at cfa-32
		[]byte{cfaAdvanceLoc | 1, cfaRegister, 16, 0},                        // RA in rax
		[]byte{cfaAdvanceLoc | 1, cfaValOffset, 6, 1},                        // rbp = cfa-8
		[]byte{cfaAdvanceLoc | 1, cfaValOffsetSf, 6}, sleb(2),                // rbp = cfa-16... factored: 2*-8
		[]byte{cfaAdvanceLoc | 1, cfaRestore | 16, cfaGNUNegativeOffsetExtend, 6, 2},    // rbp at cfa+16
		[]byte{cfaAdvanceLoc | 1, cfaExpression, 6, 2, opBreg0 + 7, 40},                 // rbp at [rsp+40]
		[]byte{cfaAdvanceLoc | 1, cfaDefCFAExpression, 3, opBreg0 + 6, 0x78, opDeref},   // CFA = [rbp-8]
		[]byte{cfaAdvanceLoc | 1, cfaValExpression, 6, 1, opLit0, cfaDefCFARegister, 7}, // back to rsp+64
		[]byte{cfaAdvanceLoc | 1, cfaDefCFAOffset}, uleb(1<<20),                         // large frame
		[]byte{cfaAdvanceLoc | 1, cfaOffset | 16}, uleb(1<<20), // RA offset too large for a packed row
	))
	tab := mustParse(t, e.buf, Options{VAddr: e.vaddr})
	check(t, tab, []want{
		{0x1000, true, rsp(8), at(-8), same},
		{0x1001, true, rsp(8), at(-8), at(-24)},
		{0x1002, true, rbp(16), at(-8), at(-24)},
		{0x1003, true, rbp(32), at(-8), at(-24)},
		{0x1004, true, rsp(64), at(-8), same},
		{0x1005, true, rsp(64), RegRule{Kind: RuleUndefined}, same},
		{0x1006, true, rsp(64), same, at(-32)},
		{0x1007, true, rsp(64), RegRule{Kind: RuleRegister, Reg: 0}, at(-32)},
		{0x1008, true, rsp(64), RegRule{Kind: RuleRegister, Reg: 0}, RegRule{Kind: RuleValOffset, Offset: -8}},
		{0x1009, true, rsp(64), RegRule{Kind: RuleRegister, Reg: 0}, RegRule{Kind: RuleValOffset, Offset: -16}},
		{0x100a, true, rsp(64), at(-8), at(16)},
		{0x100b, true, rsp(64), at(-8), RegRule{Kind: RuleAtReg, Reg: 7, Offset: 40}},
		{0x100c, true, CFARule{Kind: CFADeref, Reg: 6, Offset: -8}, at(-8), RegRule{Kind: RuleAtReg, Reg: 7, Offset: 40}},
		{0x100d, true, rsp(64), at(-8), RegRule{Kind: RuleUnsupported}},
		{0x100e, true, rsp(1 << 20), at(-8), RegRule{Kind: RuleUnsupported}},
		{0x100f, true, rsp(1 << 20), RegRule{Kind: RuleUnsupported}, RegRule{Kind: RuleUnsupported}},
	})
}

func TestDebugFrame(t *testing.T) {
	e := &ehBuilder{debug: true}
	c := e.cie(4, "", nil, cieX86)
	e.fde(c, abs8(0x2000), le64(0x10), nil, []byte{cfaAdvanceLoc | 1, cfaDefCFAOffset, 16})
	e.fde(c, abs8(0x1000), le64(0x10), nil, nil)
	tab := mustParse(t, e.buf, Options{DebugFrame: true})
	check(t, tab, []want{
		{0x1000, true, rsp(8), at(-8), same},
		{0x2001, true, rsp(16), at(-8), same},
		{addr: 0x1800},
	})
}

func TestMalformed(t *testing.T) {
	good := func() *ehBuilder {
		e := &ehBuilder{}
		c := e.cie(1, "zR", []byte{0x1b}, cieX86)
		e.fde(c, e.pcrel4(0x100), le32(0x10), []byte{}, nil)
		return e
	}
	t.Run("unknown opcode skips the fde", func(t *testing.T) {
		e := good()
		e.fde(0, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{0x3f})
		tab := mustParse(t, e.buf, Options{})
		check(t, tab, []want{{0x100, true, rsp(8), at(-8), same}, {addr: 0x200}})
	})
	t.Run("bad cie pointer", func(t *testing.T) {
		e := good()
		e.entry(0x7fff0000, func(int) []byte { return make([]byte, 8) })
		tab := mustParse(t, e.buf, Options{})
		if _, skipped := tab.FDEs(); skipped != 1 {
			t.Errorf("skipped = %d, want 1", skipped)
		}
	})
	t.Run("fde pointing at an fde", func(t *testing.T) {
		e := good()
		e.fde(e.fde(0, e.pcrel4(0x300), le32(4), []byte{}, nil), e.pcrel4(0x400), le32(4), []byte{}, nil)
		tab := mustParse(t, e.buf, Options{})
		check(t, tab, []want{{0x300, true, rsp(8), at(-8), same}, {addr: 0x400}})
	})
	t.Run("length past end", func(t *testing.T) {
		e := good()
		e.buf = append(e.buf, le32(100)...)
		if _, err := Parse(e.buf, Options{}); err == nil || !strings.Contains(err.Error(), "exceeds") {
			t.Errorf("Parse err = %v, want length error", err)
		}
		tab, err := Parse(e.buf, Options{LenientTail: true})
		if err != nil || tab.Len() == 0 {
			t.Errorf("lenient Parse = %v, %v; want the good FDE", tab, err)
		}
	})
	t.Run("truncated instructions", func(t *testing.T) {
		e := good()
		e.fde(0, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{cfaDefCFA, 7})
		tab := mustParse(t, e.buf, Options{})
		check(t, tab, []want{{addr: 0x200}})
	})
	t.Run("remember overflow", func(t *testing.T) {
		e := good()
		deep := make([]byte, maxRememberDepth+1)
		for i := range deep {
			deep[i] = cfaRememberState
		}
		e.fde(0, e.pcrel4(0x200), le32(0x10), []byte{}, deep)
		tab := mustParse(t, e.buf, Options{})
		check(t, tab, []want{{addr: 0x200}})
	})
	t.Run("empty and wrapping ranges", func(t *testing.T) {
		e := good()
		e.fde(0, e.pcrel4(0x200), le32(0), []byte{}, nil)
		e.fde(0, abs8(^uint64(0)-1), le32(0x10), []byte{}, nil)
		if _, err := Parse(e.buf, Options{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestOverlappingAndUnsortedFDEs(t *testing.T) {
	e := &ehBuilder{}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x300), le32(0x10), []byte{}, []byte{cfaDefCFAOffset, 48})
	e.fde(c, e.pcrel4(0x100), le32(0x100), []byte{}, []byte{cfaAdvanceLoc | 0x20, cfaDefCFAOffset, 16})
	e.fde(c, e.pcrel4(0x180), le32(0x10), []byte{}, []byte{cfaDefCFAOffset, 32}) // overlaps the one above
	tab := mustParse(t, e.buf, Options{})
	check(t, tab, []want{
		{0x100, true, rsp(8), at(-8), same},
		{0x120, true, rsp(16), at(-8), same},
		{0x180, true, rsp(32), at(-8), same},
		{0x18f, true, rsp(32), at(-8), same},
		{addr: 0x190}, // the first FDE was clipped where the second began
		{addr: 0x2ff},
		{0x300, true, rsp(48), at(-8), same},
		{addr: 0x310},
	})
	for i := 1; i < len(tab.addrs); i++ {
		if tab.addrs[i] <= tab.addrs[i-1] {
			t.Fatalf("rows not strictly sorted at %d: %#x after %#x", i, tab.addrs[i], tab.addrs[i-1])
		}
	}
}
