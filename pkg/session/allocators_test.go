package session

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
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

// TestAttachJemalloc: attached to running processes whose malloc is jemalloc's (preloaded, or
// linked), udstrace probes jemalloc (the first object of the link map that exports malloc)
// and sees exactly the mallocs and frees asked for, the forked child's too.
func TestAttachJemalloc(t *testing.T) {
	testenv.NeedRoot(t)
	needFile(t, jemallocSO)
	plain := buildPattern(t)
	linked := testenv.CompileC(t, "patternje", serverSrc, "-ljemalloc")
	pre := startPatternEnv(t, plain, "LD_PRELOAD="+jemallocSO)
	lin := startPatternEnv(t, linked)
	stop := attachAsync(t, []int{pre.cmd.Process.Pid, lin.cmd.Process.Pid})
	pre.ask(t, "m 300")
	lin.ask(t, "m 120")
	pre.ask(t, "f 20")
	rep := stop()
	v, _ := decodeView(t, rep)
	for _, c := range []struct {
		pid  int
		want uint64
	}{{pre.cmd.Process.Pid, 300}, {lin.cmd.Process.Pid, 120}} {
		if got := calls(v, uint32(c.pid), "malloc"); got != c.want {
			t.Errorf("pid %d: %d mallocs, want %d", c.pid, got, c.want)
		}
		if got := calls(v, uint32(c.pid), "free"); got != c.want {
			t.Errorf("pid %d: %d frees, want %d", c.pid, got, c.want)
		}
	}
	child := false
	for _, p := range rep.Processes {
		switch {
		case p.PID == uint32(pre.cmd.Process.Pid), p.PID == uint32(lin.cmd.Process.Pid):
			checkAllocator(t, p, "jemalloc", jemallocSO)
		case calls(v, p.PID, "malloc") == 20:
			child = true
			checkAllocator(t, p, "jemalloc", jemallocSO)
		}
	}
	if !child {
		t.Errorf("the forked child's 20 mallocs are not in the report: %+v", v.Processes)
	}
}

func startPatternEnv(t *testing.T, bin string, env ...string) *patternProc {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &patternProc{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	p.expect(t, "ready")
	return p
}

// muslSrc makes a known list of calls; stdout has a static buffer, so these are all of them
// (musl's startup allocates nothing). The LD_PRELOAD counter is built against glibc and does
// not load into a musl program: the program's own calls are the oracle.
const muslSrc = `#include <stdlib.h>
#include <stdio.h>
static char outbuf[BUFSIZ];
void *volatile sink;
int main(int argc, char **argv) {
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	long rounds = atol(argv[1]);
	for (long r = 0; r < rounds; r++) {
		void *volatile null = NULL; /* a literal NULL lets the compiler drop free(NULL) and make realloc(NULL, n) a malloc */
		void *p[8];
		int n = 0;
		p[n++] = malloc(24);
		p[n++] = malloc(5000);
		p[n++] = calloc(10, 100);
		void *q = realloc(null, 64);
		sink = q;
		p[n++] = realloc(q, 100000);
		p[n++] = reallocarray(null, 8, 16);
		if (posix_memalign(&p[n++], 64, 256) != 0)
			return 2;
		p[n++] = aligned_alloc(64, 512);
		p[n++] = malloc(300000);
		free(null);
		for (int i = 0; i < n; i++)
			free(p[i]);
	}
	printf("done\n");
	return 0;
}
`

// TestMuslProgram: a musl-gcc program's malloc family is probed in musl's libc (ld-musl, the
// interpreter the kernel maps): exactly the calls it makes, by kind, with their bytes.
func TestMuslProgram(t *testing.T) {
	testenv.NeedRoot(t)
	musl, err := exec.LookPath("musl-gcc")
	if err != nil {
		t.Fatalf("musl-gcc missing (make deps installs musl-tools): %v", err)
	}
	dir := t.TempDir()
	src, bin := filepath.Join(dir, "m.c"), filepath.Join(dir, "m")
	if err := os.WriteFile(src, []byte(muslSrc), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(musl, "-O1", "-g", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("musl-gcc: %v\n%s", err, out)
	}
	const rounds = 4
	o := testOptions(t)
	o.Command = []string{bin, strconv.Itoa(rounds)}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := loader.ResolveAllocators(bin, nil)
	if err != nil {
		t.Fatal(err)
	}
	as, err := loader.ReportedAs(objs)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]workload.Count{
		"malloc": {Calls: 3 * rounds, Bytes: (24 + 5000 + 300000) * rounds}, "calloc": {Calls: rounds, Bytes: 1000 * rounds},
		"realloc": {Calls: 2 * rounds, Bytes: (64 + 100000) * rounds}, "reallocarray": {Calls: rounds, Bytes: 128 * rounds},
		"posix_memalign": {Calls: rounds, Bytes: 256 * rounds}, "aligned_alloc": {Calls: rounds, Bytes: 512 * rounds},
		"free": {Calls: 9 * rounds},
	}
	want := workload.TracedAs(calls, as)
	v, _ := decodeView(t, rep)
	if len(rep.Processes) != 1 {
		t.Fatalf("report has %d processes, want 1", len(rep.Processes))
	}
	p := rep.Processes[0]
	compareCounts(t, "musl", heapOnly(v.perKind(p.PID)), want)
	if p.UnmatchedFrees != 0 {
		t.Errorf("%d unmatched frees, want 0: every block freed was allocated by a probed call", p.UnmatchedFrees)
	}
	for _, s := range v.Sites {
		if _, heap := want[s.Kind]; heap && s.OutstandingCount != 0 {
			t.Errorf("%s site of %d calls: %d blocks outstanding, want 0 (the program frees each)", s.Kind, s.Count, s.OutstandingCount)
		}
	}
	checkAllocator(t, p, "musl", "/lib/ld-musl-x86_64.so.1")
}

// ownMallocSrc defines the malloc family itself (a bump allocator over a static arena) and
// counts every call it serves, libc's own included; it prints the counts at exit: the oracle.
const ownMallocSrc = `#include <stddef.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static char arena[1 << 24];
static size_t used;
static unsigned long nmalloc, bmalloc, ncalloc, bcalloc, nrealloc, brealloc, nfree;
static void *bump(size_t n) {
	size_t off = (used + 15) & ~(size_t)15;
	if (off + n + 16 > sizeof arena) return NULL;
	used = off + 16 + n;
	*(size_t *)(arena + off) = n;
	return arena + off + 16;
}
void *malloc(size_t n) { nmalloc++; bmalloc += n; return bump(n); }
void *calloc(size_t a, size_t b) { ncalloc++; bcalloc += a * b; void *p = bump(a * b); if (p) memset(p, 0, a * b); return p; }
void *realloc(void *p, size_t n) {
	nrealloc++; brealloc += n;
	void *q = bump(n);
	if (p && q) { size_t old = *(size_t *)((char *)p - 16); memcpy(q, p, old < n ? old : n); }
	return q;
}
void free(void *p) { nfree++; (void)p; }
void *volatile sink;
int main(int argc, char **argv) {
	int rounds = atoi(argv[1]);
	for (int i = 0; i < rounds; i++) {
		void *volatile null = NULL;
		sink = malloc(100 + i);
		free(sink);
		sink = calloc(4, 25);
		sink = realloc(sink, 300);
		free(sink);
		free(null);
	}
	char buf[256];
	int k = snprintf(buf, sizeof buf, "%lu %lu %lu %lu %lu %lu %lu\n", nmalloc, bmalloc, ncalloc, bcalloc, nrealloc, brealloc, nfree);
	write(2, buf, k);
	return 0;
}
`

// TestExecutableDefinesMalloc: a program that defines malloc itself is probed in the
// executable (it is first in the search order, libc's own calls bind to it too): exactly the
// calls it counted, and the report names the executable as an unknown allocator.
func TestExecutableDefinesMalloc(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "ownmalloc", ownMallocSrc)
	var stderr strings.Builder
	o := testOptions(t)
	o.Command, o.Stderr = []string{bin, "6"}, &stderr
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var n [7]uint64
	if _, err := fmt.Sscan(stderr.String(), &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6]); err != nil {
		t.Fatalf("reading the program's own counts from %q: %v", stderr.String(), err)
	}
	want := map[string][2]uint64{"malloc": {n[0], n[1]}, "calloc": {n[2], n[3]}, "realloc": {n[4], n[5]}, "free": {n[6], 0}}
	if n[0] < 6 || n[6] < 18 {
		t.Fatalf("program counted %v: fewer calls than it makes itself", n)
	}
	v, _ := decodeView(t, rep)
	p := rep.Processes[0]
	compareCounts(t, "own malloc", heapOnly(v.perKind(p.PID)), want)
	checkAllocator(t, p, "unknown", bin)
}

// TestVerifyAllocators: --verify with the allocator preloaded (the counter goes in front of
// it) or linked (redis-server links Debian's jemalloc): the counts match, or differ only by
// calls explained per call site (the allocator's own, the loader's). redis-server seeds its
// hash tables from /dev/urandom and the time at every start, so two runs of it differ by a few
// calls (the interposer alone, three runs: 7,635, 7,637 and 7,637 frees): its counts must be within
// 0.1% (at least 2 calls) of the interposer's, kind by kind.
func TestVerifyAllocators(t *testing.T) {
	testenv.NeedRoot(t)
	needFile(t, "/usr/bin/redis-server")
	mix := testenv.CompileC(t, "mix", mixSrc)
	for _, c := range []struct {
		name, preload string
		argv          []string
		exact         bool
	}{
		{"jemalloc", jemallocSO, []string{mix, "3"}, true},
		{"tcmalloc", tcmallocSO, []string{mix, "3"}, false}, // TCMallocGuard's own 2 mallocs
		{"mimalloc", mimallocSO, []string{mix, "3"}, true},
		{"redis-server", "", []string{"/usr/bin/redis-server", "--version"}, false}, // linked jemalloc
	} {
		t.Run(c.name, func(t *testing.T) {
			needFile(t, cmpOr(c.preload, c.argv[0]))
			t.Setenv("LD_PRELOAD", c.preload)
			o := testOptions(t)
			o.Command, o.Env, o.NoASLR, o.MaxSites = c.argv, VerifyEnv(), true, 0
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			rows, err := Verify(context.Background(), c.argv, rep)
			if err != nil {
				t.Fatal(err)
			}
			if len(rows) != 1 {
				t.Fatalf("%d rows compared, want 1: %+v", len(rows), rows)
			}
			r := rows[0]
			var heap uint64
			for _, k := range r.Kinds {
				heap += k.Traced
			}
			if heap < 10 {
				t.Errorf("%s: %d heap calls traced: the allocator was not probed (%+v)", c.name, heap, r.Kinds)
			}
			if c.exact && !r.Match {
				t.Errorf("%s must match exactly: %+v %v", c.name, r.Kinds, r.Explanation)
			}
			if c.preload == "" {
				for _, k := range r.Kinds {
					d := max(k.Traced, k.Preload) - min(k.Traced, k.Preload)
					if d > max(2, k.Preload/1000) {
						t.Errorf("%s: %s: %d traced, %d under the interposer: more apart than two runs of it are", c.name, k.Kind, k.Traced, k.Preload)
					}
				}
				return
			}
			for _, e := range r.Explanation {
				t.Log(e)
				if strings.Contains(e, "not explained") || strings.Contains(e, "more calls than the uprobes") || strings.Contains(e, "exceed") {
					t.Errorf("%s: %s (%+v)", c.name, e, r.Kinds)
				}
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
