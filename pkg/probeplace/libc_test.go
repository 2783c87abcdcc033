package probeplace

import (
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"os"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

const (
	libcPath = "/lib/x86_64-linux-gnu/libc.so.6"
	// libcBuildID is Debian 12's glibc 2.36 on the development VM; the exact
	// offsets below are only asserted for this build.
	libcBuildID = "93ac61ec5a8eb1396f9fbd350e3169a558528a40"
)

// allocSpecs are the registers udstrace's BPF programs read per function.
func allocSpecs() map[string]Spec {
	r := func(regs ...Reg) Spec { return Spec{ArgRegs: regs} }
	di, si, dx := x86asm.RDI, x86asm.RSI, x86asm.RDX
	return map[string]Spec{
		"malloc": r(di), "free": r(di), "calloc": r(di, si), "realloc": r(di, si),
		"reallocarray": r(di, si, dx), "posix_memalign": r(di, si, dx),
		"memalign": r(di, si), "aligned_alloc": r(di, si), "valloc": r(di), "pvalloc": r(di),
	}
}

// buildID reads the NT_GNU_BUILD_ID note.
func buildID(f *elf.File) string {
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOTE {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz, descsz, typ := binary.LittleEndian.Uint32(data), binary.LittleEndian.Uint32(data[4:]), binary.LittleEndian.Uint32(data[8:])
			name := 12 + (int(namesz)+3)&^3
			end := name + (int(descsz)+3)&^3
			if end > len(data) || name+int(descsz) > len(data) {
				break
			}
			if typ == 3 && namesz == 4 && string(data[12:15]) == "GNU" {
				return hex.EncodeToString(data[name : name+int(descsz)])
			}
			data = data[end:]
		}
	}
	return ""
}

func openLibc(t *testing.T) *elf.File {
	t.Helper()
	if _, err := os.Stat(libcPath); err != nil {
		t.Skipf("no glibc at %s: %v", libcPath, err)
	}
	f, err := elf.Open(libcPath)
	if err != nil {
		t.Fatalf("opening libc: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestLibc(t *testing.T) {
	f := openLibc(t)
	specs := allocSpecs()
	got, targets, err := forFile(f, specs)
	if err != nil {
		t.Fatalf("forFile: %v", err)
	}
	if len(got) != len(specs) {
		t.Errorf("found %d of %d functions", len(got), len(specs))
	}
	found, _, err := functions(f, specs)
	if err != nil {
		t.Fatal(err)
	}
	for name, p := range got {
		t.Logf("%-15s +%d emulated=%v: %s", name, p.Offset, p.Emulated, p.Reason)
		code, err := readCode(f, found[name])
		if err != nil {
			t.Fatal(err)
		}
		if targets[name] == nil {
			t.Errorf("%s: branch targets unknown for a shared object", name)
		}
		checkInvariants(t, code, specs[name], targets[name], p)
	}

	id := buildID(f)
	if id != libcBuildID {
		t.Logf("libc build-id %q is not %s; skipping the exact-offset assertions", id, libcBuildID)
		return
	}
	want := map[string]struct {
		off uint64
		emu bool
	}{
		"free": {3, true}, "malloc": {0, true}, "calloc": {0, true}, "realloc": {0, true},
		"reallocarray": {0, false}, "posix_memalign": {7, true}, "memalign": {7, true},
		"aligned_alloc": {7, true}, "valloc": {7, true}, "pvalloc": {7, true},
	}
	// The scan must see memalign's own "je +0x10" (at +7), or rule 3 would be toothless.
	if !targets["memalign"][0x10] {
		t.Errorf("branch scan missed memalign+0x10, targets %v", targets["memalign"])
	}
	for name, w := range want {
		p, ok := got[name]
		if !ok {
			t.Errorf("%s: not found", name)
			continue
		}
		if p.Offset != w.off || p.Emulated != w.emu {
			t.Errorf("%s: got +%d emulated=%v, want +%d emulated=%v (%s)", name, p.Offset, p.Emulated, w.off, w.emu, p.Reason)
		}
	}
}

// TestLibcUnknownTargets checks the blind mode still moves past compiler test/cmp.
func TestLibcUnknownTargets(t *testing.T) {
	f := openLibc(t)
	specs := allocSpecs()
	found, _, err := functions(f, specs)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range found {
		code, err := readCode(f, s)
		if err != nil {
			t.Fatal(err)
		}
		p := Choose(code, specs[name], nil)
		checkInvariants(t, code, specs[name], nil, p)
		if name == "free" && buildID(f) == libcBuildID && p.Offset != 3 {
			t.Errorf("free with unknown targets: %+v, want +3", p)
		}
	}
}

func TestForFileRejectsNonX86(t *testing.T) {
	if _, err := ForFile(&elf.File{FileHeader: elf.FileHeader{Class: elf.ELFCLASS64, Machine: elf.EM_AARCH64}}, nil); err == nil {
		t.Fatal("want an error for aarch64")
	}
}
