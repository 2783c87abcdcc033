package loader

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

const (
	jemallocSO = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
	tcmallocSO = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
	mimallocSO = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
	muslSO     = "/lib/ld-musl-x86_64.so.1"
)

func needFiles(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s missing (make deps installs it): %v", p, err)
		}
	}
}

// TestAllocatorOf names Debian's allocators from what they export; objects without malloc are none.
func TestAllocatorOf(t *testing.T) {
	libc, err := ResolveLibc("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	needFiles(t, jemallocSO, tcmallocSO, mimallocSO, muslSO)
	for path, want := range map[string]string{libc: "glibc", jemallocSO: "jemalloc", tcmallocSO: "tcmalloc", mimallocSO: "mimalloc", muslSO: "musl"} {
		if got, ok := AllocatorOf(path); !ok || got != want {
			t.Errorf("AllocatorOf(%s) = %q, %v; want %q", path, got, ok, want)
		}
	}
	for _, path := range []string{"/bin/ls", "/lib64/ld-linux-x86-64.so.2", "/nonexistent"} {
		if got, ok := AllocatorOf(path); ok {
			t.Errorf("AllocatorOf(%s) = %q: it exports no malloc", path, got)
		}
	}
}

// TestResolveAllocatorsOrder: LD_PRELOAD objects come first (the last LD_PRELOAD value counts,
// bare names are found in the system directories), then the program's own libraries, libc last.
func TestResolveAllocatorsOrder(t *testing.T) {
	needFiles(t, jemallocSO, mimallocSO)
	libc, err := ResolveLibc("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	real := func(p string) string { r, _ := filepath.EvalSymlinks(p); return r }
	got, err := ResolveAllocators("/bin/ls", []string{"LD_PRELOAD=/nonexistent.so", "LD_PRELOAD=libjemalloc.so.2 " + mimallocSO})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{real(jemallocSO), real(mimallocSO), real(libc)}; !reflect.DeepEqual(got, want) {
		t.Errorf("ResolveAllocators(ls, LD_PRELOAD) = %q, want %q", got, want)
	}
	got, err = ResolveAllocators("/bin/ls", nil)
	if err != nil || !reflect.DeepEqual(got, []string{real(libc)}) {
		t.Errorf("ResolveAllocators(ls) = %q, %v; want [%s]", got, err, libc)
	}
	if _, err := ResolveAllocators("/nonexistent", nil); err == nil {
		t.Error("ResolveAllocators of a missing file succeeded")
	}
}

// TestReportedAs: a name reports under the first name at its address in the object it binds to.
func TestReportedAs(t *testing.T) {
	needFiles(t, jemallocSO)
	libc, err := ResolveLibc("/bin/ls")
	if err != nil {
		t.Fatal(err)
	}
	glibc, err := ReportedAs([]string{libc})
	if err != nil {
		t.Fatal(err)
	}
	if glibc["aligned_alloc"] != "memalign" || glibc["malloc"] != "malloc" {
		t.Errorf("glibc: aligned_alloc as %q, malloc as %q; want memalign, malloc", glibc["aligned_alloc"], glibc["malloc"])
	}
	je, err := ReportedAs([]string{jemallocSO, libc})
	if err != nil {
		t.Fatal(err)
	}
	if je["aligned_alloc"] != "aligned_alloc" || je["reallocarray"] != "reallocarray" {
		t.Errorf("jemalloc then glibc: aligned_alloc as %q, reallocarray as %q; want themselves", je["aligned_alloc"], je["reallocarray"])
	}
}
