package unwind

import (
	"encoding/binary"
	"slices"
	"testing"
)

// stackBuf builds a stack copy whose first byte is at address base.
type stackBuf struct {
	base uint64
	b    []byte
}

func newStack(base uint64, size int) *stackBuf { return &stackBuf{base: base, b: make([]byte, size)} }

func (s *stackBuf) put(addr, v uint64) {
	binary.LittleEndian.PutUint64(s.b[addr-s.base:], v)
}

func TestUnwindFramePointers(t *testing.T) {
	s := newStack(0x1000, 0x100)
	// Three frames: FP chain 0x1010 → 0x1040 → 0x1080 → 0 (outermost).
	s.put(0x1010, 0x1040)
	s.put(0x1018, 0xaaa)
	s.put(0x1040, 0x1080)
	s.put(0x1048, 0xbbb)
	s.put(0x1080, 0)
	s.put(0x1088, 0xccc)
	got := Unwind(Regs{IP: 0x999, SP: 0x1000, FP: 0x1010}, s.b, nil, MaxFrames)
	if want := []uint64{0x999, 0xaaa, 0xbbb, 0xccc}; !slices.Equal(got, want) {
		t.Errorf("Unwind = %x, want %x", got, want)
	}
}

func TestUnwindStops(t *testing.T) {
	s := newStack(0x1000, 0x40)
	s.put(0x1000, 0x1000) // FP pointing at itself: SP must grow, so this stops
	s.put(0x1008, 0x123)
	loop := Unwind(Regs{IP: 1, SP: 0x1000, FP: 0x1000}, s.b, nil, MaxFrames)
	if len(loop) != 2 {
		t.Errorf("self-referencing FP: %x, want 2 frames", loop)
	}
	tests := []struct {
		name string
		regs Regs
		max  int
		want int
	}{
		{"max 0", Regs{IP: 1, SP: 0x1000, FP: 0x1000}, 0, 0},
		{"max 1", Regs{IP: 1, SP: 0x1000, FP: 0x1000}, 1, 1},
		{"zero ip", Regs{SP: 0x1000, FP: 0x1000}, 10, 0},
		{"fp below sp", Regs{IP: 1, SP: 0x1010, FP: 0x1000}, 10, 1},
		{"fp past copy", Regs{IP: 1, SP: 0x1000, FP: 0x1040}, 10, 1},
		{"fp misaligned", Regs{IP: 1, SP: 0x1000, FP: 0x1001}, 10, 1},
		{"fp overflow", Regs{IP: 1, SP: 0x1000, FP: ^uint64(7)}, 10, 1},
	}
	for _, tc := range tests {
		if got := Unwind(tc.regs, s.b, nil, tc.max); len(got) != tc.want {
			t.Errorf("%s: Unwind = %x, want %d frames", tc.name, got, tc.want)
		}
	}
	// A long chain is capped at MaxFrames whatever max says.
	long := newStack(0x10000, 16*300)
	for i := 0; i < 299; i++ {
		a := long.base + uint64(16*i)
		long.put(a, a+16)
		long.put(a+8, 0x5000+uint64(i))
	}
	if got := Unwind(Regs{IP: 1, SP: long.base, FP: long.base}, long.b, nil, 1000); len(got) != MaxFrames {
		t.Errorf("long chain: %d frames, want %d", len(got), MaxFrames)
	}
}

// libcBias places the libc table at a typical runtime address.
const libcBias = 0x7f0000000000

func libcResolver(tab *Table) Resolver {
	return func(pc uint64) (*Table, uint64, bool) {
		if pc >= libcBias && pc < libcBias+0x200000 {
			return tab, libcBias, true
		}
		return nil, 0, false
	}
}

func TestUnwindThroughLibcMalloc(t *testing.T) {
	f, tab := loadLibc(t)
	m := dynSym(t, f, "malloc")
	// Find a point inside malloc with its full frame: CFA=rsp+N, rbp saved.
	var pc uint64
	var r Rule
	for a := m.Value; a < m.Value+m.Size; a++ {
		if r, _ = tab.Lookup(a); r.FP.Kind == RuleOffset && r.CFA.Offset > 32 {
			pc = a
			break
		}
	}
	if pc == 0 {
		t.Fatal("no full-frame row in malloc")
	}
	// malloc's frame, then a caller without CFI that uses frame pointers.
	sp := uint64(0x7ffd0000)
	s := newStack(sp, 0x200)
	cfa := sp + uint64(r.CFA.Offset)
	callerFP := cfa + 0x20
	s.put(cfa+uint64(int64(r.RA.Offset)), 0x401234) // RA into the caller
	s.put(cfa+uint64(int64(r.FP.Offset)), callerFP) // caller's rbp saved by malloc
	s.put(callerFP, 0)                              // outermost
	s.put(callerFP+8, 0x405678)                     // caller's return address
	got := Unwind(Regs{IP: libcBias + pc, SP: sp, FP: 0xdead}, s.b, libcResolver(tab), MaxFrames)
	if want := []uint64{libcBias + pc, 0x401234, 0x405678}; !slices.Equal(got, want) {
		t.Errorf("Unwind = %x, want %x", got, want)
	}
}

func TestUnwindSignalFrame(t *testing.T) {
	// A signal trampoline ('S'), like glibc's __restore_rt: CFA = [rsp+160],
	// RA = [rsp+168], rbp = [rsp+120]. The interrupted function begins exactly
	// at the interrupted PC, so looking up pc-1 would miss it.
	e := &ehBuilder{}
	sig := e.cie(1, "zRS", []byte{0x1b}, nil)
	e.fde(sig, e.pcrel4(0x100), le32(0x10), []byte{}, []byte{
		cfaDefCFAExpression, 4, opBreg0 + 7, 0xa0, 0x01, opDeref,
		cfaExpression, 16, 3, opBreg0 + 7, 0xa8, 0x01,
		cfaExpression, 6, 3, opBreg0 + 7, 0xf8, 0x00,
	})
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{cfaDefCFA, 6, 16}) // CFA = rbp+16
	tab := mustParse(t, e.buf, Options{})
	sp := uint64(0x10000)
	s := newStack(sp, 0x300)
	s.put(sp+160, sp+0x200) // interrupted rsp
	s.put(sp+168, 0x200)    // interrupted pc: first byte of the second FDE
	s.put(sp+120, sp+0x240) // interrupted rbp
	s.put(sp+0x248, 0x999)  // RA of the interrupted frame: [CFA-8] with CFA = rbp+16
	res := func(uint64) (*Table, uint64, bool) { return tab, 0, true }
	got := Unwind(Regs{IP: 0x104, SP: sp}, s.b, res, MaxFrames)
	if want := []uint64{0x104, 0x200, 0x999}; !slices.Equal(got, want) {
		t.Errorf("Unwind = %x, want %x", got, want)
	}
}

func TestUnwindUnsupportedStops(t *testing.T) {
	e := &ehBuilder{}
	c := e.cie(1, "zR", []byte{0x1b}, cieX86)
	e.fde(c, e.pcrel4(0x100), le32(0x10), []byte{}, []byte{cfaDefCFA, 10, 0}) // CFA = r10: not captured
	e.fde(c, e.pcrel4(0x200), le32(0x10), []byte{}, []byte{cfaUndefined, 16})
	tab := mustParse(t, e.buf, Options{})
	res := func(uint64) (*Table, uint64, bool) { return tab, 0, true }
	s := newStack(0x1000, 0x40)
	s.put(0x1000, 0x300)
	for _, ip := range []uint64{0x100, 0x200} {
		if got := Unwind(Regs{IP: ip, SP: 0x1000, FP: 0x1000}, s.b, res, MaxFrames); len(got) != 1 {
			t.Errorf("ip %#x: Unwind = %x, want just the IP", ip, got)
		}
	}
}

// mallocChain builds a stack of n frames, each shaped like malloc's body
// (CFA = rsp+48, RA at CFA-8), whose return addresses point back into malloc.
func mallocChain(tb testing.TB, n int) (Regs, []byte, Resolver) {
	f, tab := loadLibc(tb)
	m := dynSym(tb, f, "malloc")
	var ret uint64
	var frame uint64
	for a := m.Value + 1; a < m.Value+m.Size; a++ {
		if r, _ := tab.Lookup(a - 1); r.CFA.Offset > 32 && r.RA.Offset == -8 {
			ret, frame = a, uint64(r.CFA.Offset)
			break
		}
	}
	if ret == 0 {
		tb.Fatal("no deep frame in malloc")
	}
	sp := uint64(0x7ffc0000)
	s := newStack(sp, int(frame)*n+64)
	for i := 0; i < n; i++ {
		cfa := sp + frame*uint64(i+1)
		ra := libcBias + ret
		if i == n-1 {
			ra = 0
		}
		s.put(cfa-8, ra)
	}
	return Regs{IP: libcBias + ret, SP: sp}, s.b, libcResolver(tab)
}

func TestUnwindMallocChain(t *testing.T) {
	regs, stack, res := mallocChain(t, 50)
	if got := Unwind(regs, stack, res, MaxFrames); len(got) != 50 {
		t.Errorf("Unwind: %d frames, want 50", len(got))
	}
}

func BenchmarkUnwind(b *testing.B) {
	regs, stack, res := mallocChain(b, MaxFrames)
	var frames int
	b.Run("Unwind", func(b *testing.B) {
		for b.Loop() {
			frames = len(Unwind(regs, stack, res, MaxFrames))
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
	})
	b.Run("UnwindInto", func(b *testing.B) {
		buf := make([]uint64, 0, MaxFrames)
		for b.Loop() {
			frames = len(UnwindInto(buf[:0], regs, stack, res, MaxFrames))
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*frames), "ns/frame")
	})
}

func BenchmarkParseLibc(b *testing.B) {
	f, _ := loadLibc(b)
	for b.Loop() {
		if _, err := ParseELF(f); err != nil {
			b.Fatal(err)
		}
	}
}
