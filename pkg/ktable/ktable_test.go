package ktable

import (
	"debug/elf"
	"math/rand/v2"
	"testing"

	"github.com/udstrace/udstrace/pkg/unwind"
)

const libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"

func execSegments(t testing.TB, f *elf.File) []Segment {
	t.Helper()
	var segs []Segment
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			segs = append(segs, Segment{Vaddr: p.Vaddr, Off: p.Off, Filesz: p.Filesz})
		}
	}
	if len(segs) == 0 {
		t.Fatal("no executable segment")
	}
	return segs
}

// TestCompileMatchesUnwind: the kernel's rows for a page (compiled from the page's own range of
// CFI) give, at every sampled offset, the rule the whole file's parse gives at that address.
func TestCompileMatchesUnwind(t *testing.T) {
	f, err := elf.Open(libc)
	if err != nil {
		t.Skipf("no %s: %v", libc, err)
	}
	defer f.Close()
	whole, err := unwind.ParseELF(f)
	if err != nil {
		t.Fatal(err)
	}
	src, err := unwind.NewSourceELF(f)
	if err != nil {
		t.Fatal(err)
	}
	segs := execSegments(t, f)
	s := segs[0]
	d := NewDict(1 << 16)
	rng := rand.New(rand.NewPCG(3, 4))
	for n := 0; n < 200; n++ {
		off := (s.Off + rng.Uint64N(s.Filesz)) &^ (1<<PageShift - 1)
		vlo := off - s.Off + s.Vaddr
		rows, err := Compile(src.Range(vlo, vlo+1<<PageShift), segs, off, off+1<<PageShift, d)
		if err != nil {
			t.Fatal(err)
		}
		if RowOffset(rows[0]) != off {
			t.Fatalf("page %#x: first row at %#x", off, RowOffset(rows[0]))
		}
		rules := d.Rules(0)
		for k := 0; k < 32; k++ {
			o := off + rng.Uint64N(1<<PageShift)
			if o >= s.Off+s.Filesz {
				continue
			}
			idx, ok := Lookup(rows, o)
			if !ok {
				t.Fatalf("offset %#x: no row", o)
			}
			want := Rule{}
			if r, ok := whole.Lookup(o - s.Off + s.Vaddr); ok {
				want = FromUnwind(r)
			}
			if rules[idx] != want {
				t.Fatalf("offset %#x: kernel rule %+v, parse %+v", o, rules[idx], want)
			}
		}
	}
	if d.Len() < 10 {
		t.Errorf("only %d distinct rules in libc: the dictionary is not filling", d.Len())
	}
}

func TestDictFull(t *testing.T) {
	d := NewDict(2)
	if _, err := d.intern(Rule{}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.intern(Rule{CFAOff: 8}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.intern(Rule{CFAOff: 16}); err == nil {
		t.Error("a full dictionary took a third rule")
	}
	if i, err := d.intern(Rule{CFAOff: 8}); err != nil || i != 1 {
		t.Errorf("a known rule in a full dictionary: %d, %v", i, err)
	}
}
