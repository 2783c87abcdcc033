package session

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/workload"
)

// opsSrc calls C++ operators (plain, array, aligned, nothrow, sized delete) a known number of
// times; with jemalloc, tcmalloc or mimalloc in front of libstdc++ they are the allocator's
// own and never reach malloc, so no interposer of the C functions sees them.
const opsSrc = `#include <cstdio>
#include <cstdlib>
#include <new>
struct Obj { char b[40]; };
Obj *volatile sinko;
char *volatile sinka;
void *volatile sinkp;
static char outbuf[BUFSIZ];
int main(int argc, char **argv) {
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	int n = atoi(argv[1]);
	for (int i = 0; i < n; i++) {
		Obj *o = new Obj;                            // _Znwm(40)
		sinko = o;
		delete o;                                    // _ZdlPvm
		char *a = new char[100 + i];                 // _Znam
		sinka = a;
		delete[] a;                                  // _ZdaPv
		void *p = operator new(64, std::align_val_t(64)); // _ZnwmSt11align_val_t
		sinkp = p;
		operator delete(p, std::align_val_t(64));    // _ZdlPvSt11align_val_t
		Obj *q = new (std::nothrow) Obj;             // _ZnwmRKSt9nothrow_t
		sinko = q;
		delete q;                                    // _ZdlPvm
		sinkp = malloc(10 + i);                      // the C functions still count as themselves
		free(sinkp);
	}
	printf("done\n");
	return 0;
}
`

// TestCxxOperatorsPerAllocator: jemalloc, tcmalloc and mimalloc define operator new and delete
// themselves; udstrace probes them there, under their own kinds ("operator new", "operator
// new[]", "operator delete", "operator delete[]", as the allocator's addresses fold them:
// tcmalloc's new[] is its new, its unsized delete its free), with the frees paired: exactly the
// program's calls. The C functions match the interposer loaded in front of the allocator.
func TestCxxOperatorsPerAllocator(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	if _, err := exec.LookPath("g++"); err != nil {
		t.Fatal("g++ builds this test's program: install it (apt-get install g++)")
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, bin := filepath.Join(dir, "ops.cc"), filepath.Join(dir, "ops")
	if err := os.WriteFile(src, []byte(opsSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("g++", "-std=c++17", "-O1", "-g", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("g++: %v\n%s", err, out)
	}
	const n = 7
	var arrayBytes uint64
	for i := range n {
		arrayBytes += 100 + uint64(i)
	}
	ops := map[string]workload.Count{
		"_Znwm": {Calls: n, Bytes: 40 * n}, "_Znam": {Calls: n, Bytes: arrayBytes},
		"_ZnwmSt11align_val_t": {Calls: n, Bytes: 64 * n}, "_ZnwmRKSt9nothrow_t": {Calls: n, Bytes: 40 * n},
		"_ZdlPvm": {Calls: 2 * n}, "_ZdaPv": {Calls: n}, "_ZdlPvSt11align_val_t": {Calls: n},
	}
	for _, so := range []string{jemallocSO, tcmallocSO, mimallocSO} {
		t.Run(filepath.Base(so), func(t *testing.T) {
			needFile(t, so)
			// The C functions' oracle: the interposer's counts of the program's start and end (it
			// run with 0 rounds), plus its own malloc and free per round. Not the interposer's
			// counts of a whole run: the allocator's operators call its C functions through the
			// PLT (jemalloc's aligned new calls aligned_alloc), which the interposer counts as
			// calls and udstrace, inside the operator, does not.
			argv := []string{bin, strconv.Itoa(n)}
			_, truth := testenv.Interpose(t, bins.Allocount, []string{bin, "0"}, "LD_PRELOAD="+bins.Allocount+":"+so)
			if len(truth) != 1 {
				t.Fatalf("interposer wrote %d count files, want 1", len(truth))
			}
			objs, err := loader.ResolveAllocators(bin, []string{"LD_PRELOAD=" + so})
			if err != nil {
				t.Fatal(err)
			}
			as, err := loader.ReportedAs(objs)
			if err != nil {
				t.Fatal(err)
			}
			var want map[string][2]uint64
			for _, c := range truth {
				all := map[string]workload.Count{}
				for k, v := range c {
					all[k] = v
				}
				for k, v := range ops { // the interposer sees none of these
					all[k] = v
				}
				m, f := all["malloc"], all["free"]
				all["malloc"] = workload.Count{Calls: m.Calls + n, Bytes: m.Bytes + arrayBytes - 90*n}
				all["free"] = workload.Count{Calls: f.Calls + n, Null: f.Null}
				want = workload.TracedAs(all, as)
			}
			o := testOptions(t)
			o.Command, o.Env = argv, []string{"LD_PRELOAD=" + so}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			if len(rep.Processes) != 1 {
				t.Fatalf("report has %d processes, want 1", len(rep.Processes))
			}
			p := rep.Processes[0]
			got := ownCallsOut(t, v, p.PID, p.Allocator)
			for k, c := range got {
				if kindIsFree(k) {
					got[k] = [2]uint64{c[0], 0}
				}
			}
			for k := range want {
				if kindIsFree(k) {
					want[k] = [2]uint64{want[k][0], 0}
				}
			}
			compareCounts(t, filepath.Base(so), got, want)
			if p.UnmatchedFrees != 0 {
				t.Errorf("%d unmatched frees: every delete frees a block its new made", p.UnmatchedFrees)
			}
			for _, s := range v.Sites {
				own := p.Allocator != nil && len(s.Stack) > 1 && filepath.Base(s.Stack[1].Module) == filepath.Base(p.Allocator.Object)
				if s.PID == p.PID && !own && (s.Kind == "operator new" || s.Kind == "operator new[]") && s.OutstandingCount != 0 {
					t.Errorf("%s site of %d calls: %d blocks outstanding, want 0: each is deleted", s.Kind, s.Count, s.OutstandingCount)
				}
			}
			checkAllocator(t, p, map[string]string{jemallocSO: "jemalloc", tcmallocSO: "tcmalloc", mimallocSO: "mimalloc"}[so], so)
		})
	}
}

func kindIsFree(k string) bool {
	return k == "free" || k == "operator delete" || k == "operator delete[]" || k == "dallocx" || k == "sdallocx"
}

// jeSrc and miSrc call jemalloc's and mimalloc's own entry points directly, a known number of
// times; they never go through malloc, and no interposer of the C functions sees them.
const jeSrc = `#include <jemalloc/jemalloc.h>
#include <stdlib.h>
void *volatile sink;
int main(int argc, char **argv) {
	int n = atoi(argv[1]);
	for (int i = 0; i < n; i++) {
		void *p = mallocx(100, 0);
		sink = p;
		p = rallocx(p, 5000, 0);
		sink = p;
		size_t u = xallocx(p, 6000, 0, 0); /* in place, or not at all (then u < 6000) */
		sdallocx(p, u >= 6000 ? 6000 : 5000, 0);
		void *q = mallocx(64, MALLOCX_ALIGN(64));
		sink = q;
		dallocx(q, 0);
	}
	return 0;
}
`

const miSrc = `#include <mimalloc.h>
#include <stdlib.h>
void *volatile sink;
int main(int argc, char **argv) {
	int n = atoi(argv[1]);
	for (int i = 0; i < n; i++) {
		void *a = mi_zalloc(100);
		sink = a;
		void *b = mi_mallocn(4, 25);
		sink = b;
		b = mi_reallocn(b, 8, 100);
		sink = b;
		void *c = mi_malloc_aligned(256, 64);
		sink = c;
		c = mi_realloc_aligned(c, 1000, 64);
		sink = c;
		void *d = mi_zalloc_aligned(128, 32);
		sink = d;
		mi_free(a);
		mi_free(b);
		mi_free(c);
		mi_free(d);
	}
	return 0;
}
`

// TestAllocatorEntryPoints: jemalloc's mallocx/rallocx/xallocx/sdallocx/dallocx and mimalloc's mi_*
// called directly are reported under their own kinds, exactly as the program calls them, and
// their frees pair with their allocations (mimalloc's mi_free is its free).
func TestAllocatorEntryPoints(t *testing.T) {
	testenv.NeedRoot(t)
	needFile(t, jemallocSO)
	needFile(t, mimallocSO)
	const n = 6
	for _, c := range []struct {
		name, src, lib string
		want           map[string][2]uint64
	}{
		{"jemalloc", jeSrc, "-ljemalloc", map[string][2]uint64{
			"mallocx": {2 * n, 164 * n}, "rallocx": {n, 5000 * n}, "xallocx": {n, 6000 * n}, "sdallocx": {n, 0}, "dallocx": {n, 0}}},
		{"mimalloc", miSrc, "-lmimalloc", map[string][2]uint64{
			"mi_zalloc": {n, 100 * n}, "mi_mallocn": {n, 100 * n}, "mi_reallocn": {n, 800 * n},
			"mi_malloc_aligned": {n, 256 * n}, "mi_realloc_aligned": {n, 1000 * n}, "mi_zalloc_aligned": {n, 128 * n}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			bin := testenv.CompileC(t, c.name, c.src, c.lib)
			o := testOptions(t)
			o.Command = []string{bin, strconv.Itoa(n)}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			p := rep.Processes[0]
			got := heapOnly(v.perKind(p.PID))
			for k, w := range c.want {
				if kindIsFree(k) {
					got[k] = [2]uint64{got[k][0], 0}
				}
				if got[k] != w {
					t.Errorf("%s: udstrace saw %d calls / %d bytes, the program made %d / %d", k, got[k][0], got[k][1], w[0], w[1])
				}
			}
			if p.UnmatchedFrees != 0 {
				t.Errorf("%d unmatched frees: every block freed was allocated by a probed call", p.UnmatchedFrees)
			}
			for _, s := range v.Sites {
				if _, own := c.want[s.Kind]; own && s.OutstandingCount != 0 {
					t.Errorf("%s site of %d calls: %d blocks outstanding, want 0 (each is freed)", s.Kind, s.Count, s.OutstandingCount)
				}
			}
			checkAllocator(t, p, c.name, map[string]string{"jemalloc": jemallocSO, "mimalloc": mimallocSO}[c.name])
		})
	}
}
