package symbolize

import (
	"bufio"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const inlineSrc = `#include <stdlib.h>
volatile int sink;

static inline __attribute__((always_inline)) int inner(int x) {
	int s = 0;
	for (int i = 0; i < x; i++) {
		s += i * x;
		sink = s;
	}
	return s;
}

__attribute__((noinline)) int caller(int n) {
	int r = inner(n);
	sink = r;
	return r + 1;
}

int main(int argc, char **argv) {
	return caller(argc) & 1;
}
`

func TestInlinedC(t *testing.T) {
	for name, flags := range map[string][]string{
		"dwarf5":            {"-g", "-O2"},
		"dwarf4":            {"-gdwarf-4", "-O2"},
		"dwarf5-compressed": {"-g", "-O2", "-gz=zlib"},
	} {
		t.Run(name, func(t *testing.T) { testInlinedC(t, flags) })
	}
}

func testInlinedC(t *testing.T, flags []string) {
	dir := t.TempDir()
	bin := compile(t, "gcc", dir, "inl.c", inlineSrc, flags...)
	b := openPath(t, bin, Options{DebugDirs: []string{dir}})
	if !b.HasSymbols() {
		t.Fatal("HasSymbols = false")
	}
	start, size := elfSym(t, bin, "caller")
	var addrs, inl []uint64
	for a := start; a < start+size; a++ {
		addrs = append(addrs, a)
		fr := b.Symbolize(a)
		if len(fr) == 0 {
			t.Fatalf("%#x: no frames", a)
		}
		outer := fr[len(fr)-1]
		if outer.Function != "caller" || outer.Offset != a-start || outer.Inlined {
			t.Errorf("%#x: outer frame %+v, want caller+%#x", a, outer, a-start)
		}
		if len(fr) == 2 && fr[0].Function == "inner" && fr[0].Inlined {
			inl = append(inl, a)
			if filepath.Base(fr[0].File) != "inl.c" || fr[0].Line < 4 || fr[0].Line > 11 {
				t.Errorf("%#x: inlined frame %+v not in inner's body", a, fr[0])
			}
			if fr[1].Line != 14 {
				t.Errorf("%#x: call site line %d, want 14", a, fr[1].Line)
			}
		}
	}
	if len(inl) == 0 {
		t.Fatal("no address in caller resolved to inlined inner")
	}
	if _, err := os.Stat("/usr/bin/addr2line"); err != nil {
		t.Skip("addr2line missing: skipping oracle comparison")
	}
	want := addr2line(t, bin, addrs)
	bad := 0
	for _, a := range addrs {
		if !compareOracle(t, a, b.Symbolize(a), want[a], false) {
			if bad++; bad > 5 {
				t.Fatal("too many mismatches")
			}
		}
	}
}

const cxxSrc = `namespace ns {
__attribute__((noinline)) int func(int x) {
	volatile int y = x * 3;
	return y + 1;
}
}
int main(int argc, char **) { return ns::func(argc); }
`

func TestCPlusPlusDemangle(t *testing.T) {
	dir := t.TempDir()
	bin := compile(t, "g++", dir, "ns.cc", cxxSrc, "-g", "-O2")
	b := openPath(t, bin, Options{DebugDirs: []string{dir}})
	addr, _ := elfSym(t, bin, "_ZN2ns4funcEi")
	fr := b.Symbolize(addr + 1)
	if len(fr) != 1 || fr[0].Function != "ns::func(int)" || fr[0].Offset != 1 {
		t.Fatalf("frames %+v, want ns::func(int)+1", fr)
	}
	if filepath.Base(fr[0].File) != "ns.cc" || fr[0].Line < 2 || fr[0].Line > 5 {
		t.Errorf("line %s:%d, want ns.cc:2-5", fr[0].File, fr[0].Line)
	}
}

const debuglinkSrc = `volatile int sink;
__attribute__((noinline)) void work(int n) {
	for (int i = 0; i < n; i++)
		sink += i;
}
int main(int argc, char **argv) { work(argc); return 0; }
`

// splitDebug builds bin, moves its debug info to debugPath and strips bin
// with stripFlag, linking them by .gnu_debuglink.
func splitDebug(t *testing.T, dir, debugPath, stripFlag string) string {
	bin := compile(t, "gcc", dir, "dl.c", debuglinkSrc, "-g", "-O1")
	needTool(t, "objcopy")
	if err := os.MkdirAll(filepath.Dir(debugPath), 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, "objcopy", "--only-keep-debug", bin, debugPath)
	run(t, "objcopy", stripFlag, "--add-gnu-debuglink="+debugPath, bin)
	return bin
}

func TestDebuglink(t *testing.T) {
	for _, tc := range []struct{ name, sub, strip string }{
		{"same-dir-strip-debug", "dl.debug", "--strip-debug"},
		{"dot-debug-strip-all", ".debug/dl.debug", "--strip-all"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := splitDebug(t, dir, filepath.Join(dir, tc.sub), tc.strip)
			addr, _ := elfSym(t, filepath.Join(dir, tc.sub), "work")
			// An empty debug dir keeps the build-id lookup from finding anything.
			b := openPath(t, bin, Options{DebugDirs: []string{t.TempDir()}})
			fr := b.Symbolize(addr + 2)
			if len(fr) == 0 || fr[len(fr)-1].Function != "work" {
				t.Fatalf("frames %+v, want work", fr)
			}
			if o := fr[len(fr)-1]; filepath.Base(o.File) != "dl.c" || o.Line < 2 || o.Line > 5 {
				t.Errorf("line %s:%d, want dl.c:2-5", o.File, o.Line)
			}
			if b.DebugFile() != filepath.Join(dir, tc.sub) {
				t.Errorf("DebugFile = %q", b.DebugFile())
			}
		})
	}
}

func TestDebuglinkBadCRC(t *testing.T) {
	dir := t.TempDir()
	dbg := filepath.Join(dir, "dl.debug")
	bin := splitDebug(t, dir, dbg, "--strip-all")
	f, err := os.OpenFile(dbg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{1})
	f.Close()
	b := openPath(t, bin, Options{DebugDirs: []string{t.TempDir()}})
	if b.DebugFile() != "" {
		t.Fatalf("debug file with bad CRC used: %s", b.DebugFile())
	}
	// .dynsym still names nothing here, but lookups must not fail loudly.
	_ = b.Symbolize(0x1000)
}

func TestBuildIDDebugDirWithRoot(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	tmpDbg := filepath.Join(dir, "tmp.debug")
	bin := splitDebug(t, dir, tmpDbg, "--strip-all")
	id := openPath(t, bin, Options{}).BuildID()
	if len(id) < 8 {
		t.Skipf("gcc produced no build-id (%q)", id)
	}
	dst := filepath.Join(root, "dbg", ".build-id", id[:2], id[2:]+".debug")
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if err := os.Rename(tmpDbg, dst); err != nil {
		t.Fatal(err)
	}
	b := openPath(t, bin, Options{Root: root, DebugDirs: []string{"/dbg"}})
	addr, _ := elfSym(t, dst, "work")
	if fr := b.Symbolize(addr); len(fr) == 0 || fr[len(fr)-1].Function != "work" || fr[len(fr)-1].Line == 0 {
		t.Fatalf("frames %+v, want work with a line", fr)
	}
	if b.DebugFile() != dst {
		t.Errorf("DebugFile = %q, want %q", b.DebugFile(), dst)
	}
}

// readelfLoads parses `readelf -lW` LOAD lines into (offset, vaddr, filesz).
func readelfLoads(t *testing.T, path string) [][3]uint64 {
	needTool(t, "readelf")
	var out [][3]uint64
	sc := bufio.NewScanner(strings.NewReader(run(t, "readelf", "-lW", path)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[0] != "LOAD" {
			continue
		}
		var v [3]uint64
		for i, s := range []string{f[1], f[2], f[4]} {
			n, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
			if err != nil {
				t.Fatalf("parsing readelf field %q: %v", s, err)
			}
			v[i] = n
		}
		out = append(out, v)
	}
	return out
}

func TestFileOffsetToVAddr(t *testing.T) {
	dir := t.TempDir()
	bin := compile(t, "gcc", dir, "pie.c", debuglinkSrc, "-O1", "-fPIE", "-pie")
	paths := []string{bin}
	if _, err := os.Stat(libcPath); err == nil {
		paths = append(paths, libcPath)
	}
	for _, p := range paths {
		b := openPath(t, p, Options{})
		loads := readelfLoads(t, p)
		if len(loads) == 0 {
			t.Fatalf("%s: readelf shows no LOAD segments", p)
		}
		for _, l := range loads {
			off, vaddr, filesz := l[0], l[1], l[2]
			for _, d := range []uint64{0, filesz / 2, filesz - 1} {
				if got, ok := b.FileOffsetToVAddr(off + d); !ok || got != vaddr+d {
					t.Errorf("%s: FileOffsetToVAddr(%#x) = %#x, %v; want %#x", p, off+d, got, ok, vaddr+d)
				}
			}
		}
		if _, ok := b.FileOffsetToVAddr(1 << 40); ok {
			t.Errorf("%s: offset beyond file mapped", p)
		}
	}
}
