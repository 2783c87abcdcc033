package kstack

import "testing"

func TestEncodeRoundTrip(t *testing.T) {
	for _, c := range []struct {
		mod uint32
		off uint64
	}{{1, 0}, {7, 0x1234}, {KernelIDs, 1<<47 - 1}, {MaxModules - 1, 0xffff_ffff}, {0, 0x7ffd_1234_5678}} {
		f := Encode(c.mod, c.off)
		if f.Module() != c.mod || f.Offset() != c.off {
			t.Errorf("Encode(%d, %#x) = %#x: module %d offset %#x", c.mod, c.off, uint64(f), f.Module(), f.Offset())
		}
	}
	// A raw user-space address never looks like a module frame.
	if f := Encode(0, 0x7fff_ffff_f000); f.Module() != 0 {
		t.Errorf("raw address decodes as module %d", f.Module())
	}
}

func TestIDs(t *testing.T) {
	a := []Frame{Encode(1, 0x100), Encode(2, 0x2000), Encode(2, 0x2100)}
	b := []Frame{Encode(1, 0x100), Encode(2, 0x2100), Encode(2, 0x2000)}
	if ID(a, 0) != ID(a, 0) {
		t.Fatal("ID is not deterministic")
	}
	if ID(a, 0) == ID(b, 0) {
		t.Error("frame order does not change the id")
	}
	if ID(a, 0) == ID(a, Truncated) {
		t.Error("a truncated stack has the id of a complete one")
	}
	if ID(a[:2], 0) == ID(a, 0) {
		t.Error("a prefix has the id of the whole stack")
	}
	if ID(nil, 0) == 0 || ID(a, 0) == 0 {
		t.Error("an id is 0")
	}
	h := NewHash()
	for _, f := range a {
		h.Add(f)
	}
	id, check := h.Sum(len(a), 0)
	if id != ID(a, 0) || check == id || CollisionID(check)>>63 != 1 {
		t.Errorf("Hash and ID disagree: %#x %#x %#x", id, check, ID(a, 0))
	}
}

// FuzzID: any frames hash without panicking, and the id depends on every frame.
func FuzzID(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(0))
	f.Fuzz(func(t *testing.T, x, y uint64, flags uint8) {
		a := []Frame{Frame(x), Frame(y)}
		if ID(a, flags) == 0 {
			t.Fatal("id 0")
		}
		if x != y && ID(a, flags) == ID([]Frame{Frame(y), Frame(x)}, flags) && ID(a, flags) == ID([]Frame{Frame(x)}, flags) {
			t.Fatal("id ignores frames")
		}
	})
}
