package session

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
)

// mixSrc makes a fixed list of malloc-family calls per round, only functions every allocator
// tested here serves itself or through libc without mixing heaps (glibc's pvalloc would hand
// jemalloc's free a block of glibc's heap).
const mixSrc = `#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
static char outbuf[BUFSIZ];
void *volatile sink;
int main(int argc, char **argv) {
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	long rounds = argc > 1 ? atol(argv[1]) : 1;
	for (long r = 0; r < rounds; r++) {
		void *live[9];
		int n = 0;
		live[n++] = malloc(24);
		live[n++] = malloc(1000);
		live[n++] = calloc(10, 100);
		void *q = realloc(NULL, 64);
		sink = q;
		live[n++] = realloc(q, 100000);
		void *pm = NULL;
		if (posix_memalign(&pm, 64, 256) != 0)
			return 2;
		live[n++] = pm;
		live[n++] = aligned_alloc(64, 512);
		live[n++] = memalign(128, 300);
		live[n++] = valloc(5000);
		live[n++] = malloc(300000);
		free(NULL);
		for (int i = 0; i < n; i++)
			free(live[i]);
	}
	printf("done\n");
	return 0;
}
`

// Debian's allocator libraries (Makefile TEST_DEPS).
const (
	jemallocSO = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
	tcmallocSO = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
	mimallocSO = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
)

// TestAllocatorsMatchInterposer: a program whose malloc binds to jemalloc, tcmalloc or mimalloc
// (LD_PRELOAD, or linked) is probed in that allocator: udstrace's counts and bytes per kind and
// its frees equal the interposer's, loaded before the allocator (it forwards to the next
// malloc), and the report names the allocator object.
func TestAllocatorsMatchInterposer(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	for _, so := range []string{jemallocSO, tcmallocSO, mimallocSO} {
		needFile(t, so)
	}
	plain := testenv.CompileC(t, "mix", mixSrc)
	linked := testenv.CompileC(t, "mixje", mixSrc, "-ljemalloc")
	cases := []struct {
		name, bin, preload, object, allocator string
	}{
		{"jemalloc-preload", plain, jemallocSO, jemallocSO, "jemalloc"},
		{"jemalloc-linked", linked, "", jemallocSO, "jemalloc"},
		{"tcmalloc-preload", plain, tcmallocSO, tcmallocSO, "tcmalloc"},
		{"mimalloc-preload", plain, mimallocSO, mimallocSO, "mimalloc"},
		{"glibc", plain, "", "", "glibc"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			argv := []string{c.bin, "5"}
			oracle := bins.Allocount
			var env []string
			if c.preload != "" {
				oracle += ":" + c.preload
				env = []string{"LD_PRELOAD=" + c.preload}
			}
			_, truth := testenv.Interpose(t, bins.Allocount, argv, "LD_PRELOAD="+oracle)
			if len(truth) != 1 {
				t.Fatalf("interposer wrote %d count files, want 1", len(truth))
			}
			var objs []string
			if c.preload != "" {
				objs = append(objs, c.preload)
			}
			objs2, err := loader.ResolveAllocators(c.bin, nil)
			if err != nil {
				t.Fatal(err)
			}
			as, err := loader.ReportedAs(append(objs, objs2...))
			if err != nil {
				t.Fatal(err)
			}
			var want map[string][2]uint64
			for _, tc := range truth {
				want = workload.TracedAs(tc, as)
			}
			if want["malloc"][0] < 5*3 {
				t.Fatalf("interposer saw %d mallocs: it did not run in front of the allocator", want["malloc"][0])
			}
			o := testOptions(t)
			o.Command, o.Env = argv, env
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			if len(rep.Processes) != 1 {
				t.Fatalf("report has %d processes, want 1", len(rep.Processes))
			}
			p := rep.Processes[0]
			compareCounts(t, c.name, ownCallsOut(t, v, p.PID, p.Allocator), want)
			if p.UnmatchedFrees != 0 {
				t.Errorf("%d unmatched frees: every block freed was allocated through a probed function", p.UnmatchedFrees)
			}
			checkAllocator(t, p, c.allocator, c.object)
		})
	}
}

// ownCallsOut is a process's heap calls by kind less those the allocator made of its own
// functions, which no interposer sees (tcmalloc's TCMallocGuard calls its malloc directly, not
// through the PLT, and frees the blocks at once): sites whose caller is in the allocator's
// object, and the frees of their blocks.
func ownCallsOut(t *testing.T, v *view, pid uint32, a *report.Allocator) map[string][2]uint64 {
	t.Helper()
	got := heapOnly(v.perKind(pid))
	if a == nil {
		return got
	}
	base := filepath.Base(a.Object)
	for _, s := range v.Sites {
		if s.PID != pid || len(s.Stack) < 2 || filepath.Base(s.Stack[1].Module) != base {
			continue
		}
		if c, ok := got[s.Kind]; ok {
			got[s.Kind] = [2]uint64{c[0] - s.Count, c[1] - s.Bytes}
			f := got["free"]
			got["free"] = [2]uint64{f[0] - (s.Count - s.OutstandingCount), 0}
			t.Logf("%d %s calls of %d bytes made by %s itself (%s): not seen by an interposer", s.Count, s.Kind, s.Bytes, base, s.Stack[1].Symbol)
		}
	}
	for k, c := range got {
		if c[0] == 0 {
			delete(got, k)
		}
	}
	return got
}

func checkAllocator(t *testing.T, p report.Process, name, object string) {
	t.Helper()
	if p.Allocator == nil {
		t.Fatalf("processes[].allocator is null, want %s", name)
	}
	if p.Allocator.Name != name {
		t.Errorf("allocator name %q, want %q", p.Allocator.Name, name)
	}
	if object != "" {
		want, _ := filepath.EvalSymlinks(object)
		if got, _ := filepath.EvalSymlinks(p.Allocator.Object); got != want {
			t.Errorf("allocator object %q, want %q", p.Allocator.Object, object)
		}
	} else if !strings.Contains(filepath.Base(p.Allocator.Object), "libc") {
		t.Errorf("allocator object %q, want the libc", p.Allocator.Object)
	}
}

// needFile skips nothing: the allocators are test dependencies (Makefile TEST_DEPS), so a
// missing one fails.
func needFile(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s missing (make deps installs it): %v", path, err)
	}
}

// TestUntraceableChildrenWarn: children whose allocations no probe can see (a static glibc
// program, a Go program) get allocator null and a warning naming why, never a silent zero.
func TestUntraceableChildrenWarn(t *testing.T) {
	testenv.NeedRoot(t)
	static := testenv.CompileC(t, "static", mixSrc, "-static")
	gofmt := filepath.Join(runtime.GOROOT(), "bin", "gofmt")
	needFile(t, gofmt)
	o := testOptions(t)
	o.Command = []string{"/bin/dash", "-c", static + " 2; " + gofmt + " </dev/null; true"}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	why := map[string]string{static: "statically linked", gofmt: "Go program"}
	for exe, reason := range why {
		var p *report.Process
		for i := range rep.Processes {
			if rep.Processes[i].Exe == exe {
				p = &rep.Processes[i]
			}
		}
		if p == nil {
			t.Fatalf("no process runs %s in %+v", exe, rep.Processes)
		}
		if p.Allocator != nil {
			t.Errorf("%s: allocator %+v, want null", exe, *p.Allocator)
		}
		want := fmt.Sprintf("pid %d (%s): its heap allocations are not traced: ", p.PID, exe)
		found := false
		for _, w := range rep.Warnings {
			found = found || strings.HasPrefix(w, want) && strings.Contains(w, reason)
		}
		if !found {
			t.Errorf("no warning %q...%q in %q", want, reason, rep.Warnings)
		}
	}
	if dash := rep.Processes[0]; dash.Allocator == nil || dash.Allocator.Name != "glibc" {
		t.Errorf("dash (pid %d): allocator %+v, want glibc", dash.PID, dash.Allocator)
	}
}
