package symbolize

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const libcPath = "/lib/x86_64-linux-gnu/libc.so.6"

func openLibc(t *testing.T, opts Options) *Binary {
	t.Helper()
	if _, err := os.Stat(libcPath); err != nil {
		t.Skip("no system libc at " + libcPath)
	}
	return openPath(t, libcPath, opts)
}

// libcDebugFile returns the build-id debug file path, "" if not installed.
func libcDebugFile(b *Binary) string {
	id := b.BuildID()
	if len(id) < 3 {
		return ""
	}
	p := filepath.Join("/usr/lib/debug/.build-id", id[:2], id[2:]+".debug")
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	return p
}

func outerName(fr []Frame) string {
	if len(fr) == 0 {
		return ""
	}
	return fr[len(fr)-1].Function
}

func TestLibcAliases(t *testing.T) {
	// With and without the debug file, aliases resolve to the preferred public
	// name (memalign beats aligned_alloc: same address, shorter).
	for _, opts := range []Options{{}, {DebugDirs: []string{t.TempDir()}}} {
		b := openLibc(t, opts)
		if b.BuildID() == "" {
			t.Error("libc has no build-id")
		}
		if !b.HasSymbols() {
			t.Fatal("HasSymbols = false")
		}
		for sym, want := range map[string]string{
			"malloc": "malloc", "__libc_malloc": "malloc",
			"fdopen": "fdopen", "_IO_fdopen": "fdopen",
			"aligned_alloc": "memalign", "__libc_memalign": "memalign", "free": "free",
		} {
			addr, _ := elfSym(t, libcPath, sym)
			for _, d := range []uint64{0, 7} {
				fr := b.Symbolize(addr + d)
				if got := outerName(fr); got != want {
					t.Errorf("debugdirs=%v: Symbolize(%s+%d) = %q (%+v), want %q", opts.DebugDirs, sym, d, got, fr, want)
				} else if fr[len(fr)-1].Offset != d {
					t.Errorf("%s+%d: Offset %d", sym, d, fr[len(fr)-1].Offset)
				}
			}
		}
	}
}

func TestLibcDebugFile(t *testing.T) {
	b := openLibc(t, Options{})
	dbg := libcDebugFile(b)
	if dbg == "" {
		t.Skip("libc debug file not installed (libc6-dbg)")
	}
	addr, _ := elfSym(t, dbg, "_IO_file_doallocate")
	start := time.Now()
	fr := b.Symbolize(addr + 16)
	elapsed := time.Since(start)
	t.Logf("first lookup (debug file + DWARF unit load): %v; frames %+v", elapsed, fr)
	if elapsed > 2*time.Second {
		t.Errorf("first lookup took %v", elapsed)
	}
	if got := outerName(fr); got != "_IO_file_doallocate" {
		t.Fatalf("got %q, want _IO_file_doallocate", got)
	}
	if b.DebugFile() != dbg {
		t.Errorf("DebugFile = %q, want %q", b.DebugFile(), dbg)
	}
	if o := fr[len(fr)-1]; !strings.HasSuffix(o.File, "filedoalloc.c") || o.Line == 0 {
		t.Errorf("outer frame %s:%d, want filedoalloc.c", o.File, o.Line)
	}
	for _, name := range []string{"_IO_doallocbuf", "__libc_start_call_main"} {
		a, _ := elfSym(t, dbg, name)
		if got := outerName(b.Symbolize(a + 1)); got != name {
			t.Errorf("Symbolize(%s+1) = %q", name, got)
		}
	}
	// Second lookups in another unit hit the cached index.
	ma, _ := elfSym(t, dbg, "malloc")
	start = time.Now()
	b.Symbolize(ma + 20)
	t.Logf("lookup in malloc.c unit: %v", time.Since(start))
}

// TestLibcOracle compares DWARF lines and inlined frames inside malloc and
// _IO_file_doallocate with addr2line run on the debug file.
func TestLibcOracle(t *testing.T) {
	b := openLibc(t, Options{})
	dbg := libcDebugFile(b)
	if dbg == "" {
		t.Skip("libc debug file not installed (libc6-dbg)")
	}
	needTool(t, "addr2line")
	var addrs []uint64
	for _, name := range []string{"malloc", "_IO_file_doallocate", "free"} {
		a, size := elfSym(t, dbg, name)
		for d := uint64(0); d < size; d += 3 {
			addrs = append(addrs, a+d)
		}
	}
	want := addr2line(t, dbg, addrs)
	bad, inlined := 0, 0
	for _, a := range addrs {
		got := b.Symbolize(a)
		if len(got) > 1 {
			inlined++
		}
		if !compareOracle(t, a, got, want[a], true) {
			if bad++; bad > 5 {
				t.Fatal("too many mismatches")
			}
		}
	}
	if inlined == 0 {
		t.Error("no inlined frames found in malloc/free")
	}
	t.Logf("%d addresses compared, %d with inlined frames", len(addrs), inlined)
}
