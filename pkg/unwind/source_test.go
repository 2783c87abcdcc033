package unwind

import (
	"debug/elf"
	"math/rand/v2"
	"testing"
)

// TestSourceRangeMatchesParse: a range compiled on demand gives, at every address in it, the
// rule the whole section's parse gives, on the system's libc and (if present) gcc's cc1.
func TestSourceRangeMatchesParse(t *testing.T) {
	for _, path := range []string{"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/gcc/x86_64-linux-gnu/12/cc1"} {
		f, err := elf.Open(path)
		if err != nil {
			t.Logf("skipping %s: %v", path, err)
			continue
		}
		whole, err := ParseELF(f)
		if err != nil {
			t.Fatal(err)
		}
		src, err := NewSourceELF(f)
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := src.Bounds()
		if src.FDEs() == 0 || hi <= lo {
			t.Fatalf("%s: no FDEs indexed", path)
		}
		rng := rand.New(rand.NewPCG(1, 2))
		ranges := 300
		if testing.Short() {
			ranges = 50
		}
		for n := 0; n < ranges; n++ {
			page := (lo + rng.Uint64N(hi-lo)) &^ 0xfff
			part := src.Range(page, page+0x1000)
			for k := 0; k < 64; k++ {
				pc := page + rng.Uint64N(0x1000)
				want, wok := whole.Lookup(pc)
				got, gok := part.Lookup(pc)
				if wok != gok || want != got {
					t.Fatalf("%s: pc %#x in page %#x: range gives %+v (%v), whole parse %+v (%v)", path, pc, page, got, gok, want, wok)
				}
			}
		}
		f.Close()
	}
}
