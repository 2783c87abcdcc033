package unwind

import (
	"testing"
)

// fuzzSeeds are hand-built sections covering each decoder path.
func fuzzSeeds() [][]byte {
	var seeds [][]byte
	e := &ehBuilder{vaddr: 0x1000}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x2000), le32(0x40), []byte{}, []byte{
		cfaAdvanceLoc | 1, cfaDefCFAOffset, 16, cfaOffset | 6, 2, cfaAdvanceLoc | 3, cfaDefCFARegister, 6,
		cfaRememberState, cfaAdvanceLoc1, 0x20, cfaDefCFA, 7, 8, cfaRestoreState,
	})
	e.fde(c, e.pcrel4(0x3000), le32(0x60), []byte{}, pltExpr(11))
	seeds = append(seeds, e.buf)

	e = &ehBuilder{vaddr: 0x1000}
	c = e.cie(1, "zPLR", cat([]byte{0x9b}, le32(0x1234), []byte{0x1b, 0x1b}), cieX86)
	e.fde(c, e.pcrel4(0x100), le32(0x10), le32(0xabcd), []byte{
		cfaDefCFAExpression, 3, opBreg0 + 6, 0x78, opDeref, cfaExpression, 6, 2, opBreg0 + 6, 0,
	})
	sig := e.cie(4, "zRS", []byte{0x1b}, nil)
	e.fde(sig, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{cfaValExpression, 6, 1, opLit0, cfaGNUArgsSize, 8})
	seeds = append(seeds, e.buf)

	e = &ehBuilder{is64: true}
	c = e.cie(3, "", nil, cieX86)
	e.fde(c, abs8(0x4000), le64(0x20), nil, []byte{cfaAdvanceLoc4, 1, 0, 0, 0, cfaDefCFASf, 7, 0x7e})
	seeds = append(seeds, e.buf)
	return seeds
}

// FuzzParseEHFrame: arbitrary bytes never panic, produce sorted rows, and
// allocate rows in proportion to the input.
func FuzzParseEHFrame(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s, uint64(0x1000), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, vaddr uint64, debug bool) {
		tab, err := Parse(data, Options{VAddr: vaddr, DebugFrame: debug, DataBase: 0x10000})
		if err != nil {
			return
		}
		// Each row needs an advance byte; each FDE adds its first row and a gap marker.
		if n := tab.Len(); n > 2*len(data)+2 {
			t.Fatalf("%d rows from %d bytes", n, len(data))
		}
		for i := 1; i < len(tab.addrs); i++ {
			if tab.addrs[i] <= tab.addrs[i-1] {
				t.Fatalf("rows unsorted at %d: %#x after %#x", i, tab.addrs[i], tab.addrs[i-1])
			}
		}
		for _, a := range tab.addrs {
			tab.Lookup(a)
			tab.Lookup(a - 1)
		}
		if _, err := ParseEHFrame(data, vaddr, 4); err != nil {
			return
		}
	})
}

// FuzzUnwind: arbitrary stacks and registers over the real libc table never
// panic and never return more than asked.
func FuzzUnwind(f *testing.F) {
	_, tab := loadLibc(f)
	regs, stack, _ := mallocChain(f, 20)
	f.Add(stack, regs.IP, regs.SP, regs.FP, 127)
	f.Add(stack, regs.IP, regs.SP, regs.SP+48, 5)
	f.Add([]byte{}, uint64(libcBias+0x26010), uint64(0x1000), uint64(0), 10)
	res := libcResolver(tab)
	f.Fuzz(func(t *testing.T, stack []byte, ip, sp, fp uint64, limit int) {
		got := Unwind(Regs{IP: ip, SP: sp, FP: fp}, stack, res, limit)
		if len(got) > max(limit, 0) || len(got) > MaxFrames {
			t.Fatalf("%d frames, limit %d", len(got), limit)
		}
		if len(got) > 0 && got[0] != ip {
			t.Fatalf("frame 0 = %#x, want ip %#x", got[0], ip)
		}
		for i, pc := range got {
			if pc == 0 {
				t.Fatalf("frame %d is zero", i)
			}
		}
	})
}
