package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/loader"
	"github.com/udstrace/udstrace/workload"
)

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

// staticSrc makes a known list of calls per round; statically linked, it exports no malloc.
const staticSrc = `#include <stdio.h>
#include <stdlib.h>
static char outbuf[BUFSIZ];
void *volatile sink;
int main(int argc, char **argv) {
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	long rounds = atol(argv[1]);
	for (long r = 0; r < rounds; r++) {
		void *volatile null = NULL;
		void *p = malloc(24);
		sink = p;
		free(p);
		p = calloc(10, 100);
		sink = p;
		p = realloc(p, 5000);
		free(p);
		free(null);
	}
	printf("done\n");
	return 0;
}
`

// TestNamedStaticAllocator: --allocator names a static glibc program itself: its malloc family
// is found in its symbol table and probed there. Each round adds exactly the program's calls
// (static glibc's own start-up allocations are the same with 0 and 5 rounds), and the report
// names the program as the allocator. Without the flag, run refuses the static program.
func TestNamedStaticAllocator(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "static", staticSrc, "-static")
	heap := func(rounds int) map[string][2]uint64 {
		o := testOptions(t)
		o.Command, o.Allocator = []string{bin, strconv.Itoa(rounds)}, bin
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		v, _ := decodeView(t, rep)
		p := rep.Processes[0]
		checkAllocator(t, p, "unknown", bin)
		if p.UnmatchedFrees != 0 {
			t.Errorf("%d rounds: %d unmatched frees, want 0", rounds, p.UnmatchedFrees)
		}
		return heapOnly(v.perKind(p.PID))
	}
	const n = 5
	base, got := heap(0), heap(n)
	round := map[string][2]uint64{"malloc": {1, 24}, "calloc": {1, 1000}, "realloc": {1, 5000}, "free": {3, 0}}
	want := map[string][2]uint64{}
	for k, b := range base {
		want[k] = b
	}
	for k, r := range round {
		want[k] = [2]uint64{want[k][0] + n*r[0], want[k][1] + n*r[1]}
	}
	compareCounts(t, "static, named", got, want)
	o := testOptions(t)
	o.Command = []string{bin, "1"}
	if _, err := Run(context.Background(), o); !errors.Is(err, loader.ErrStatic) {
		t.Errorf("run of a static program without --allocator: %v, want ErrStatic", err)
	}
}

// prefixedSrc has its own allocator under prefixed names (xx_malloc, xx_free), which nothing
// exports: a bump arena, called a known number of times.
const prefixedSrc = `#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
static char arena[1 << 20];
static size_t used;
__attribute__((noinline)) void *xx_malloc(size_t n) { void *p = arena + used; used += (n + 15) & ~(size_t)15; return p; }
__attribute__((noinline)) void *xx_calloc(size_t a, size_t b) { return xx_malloc(a * b); }
__attribute__((noinline)) void xx_free(void *p) { (void)p; __asm__ volatile("" ::: "memory"); }
static char outbuf[BUFSIZ];
void *volatile sink;
int main(int argc, char **argv) {
	setvbuf(stdout, outbuf, _IOFBF, sizeof(outbuf));
	int n = atoi(argv[1]);
	for (int i = 0; i < n; i++) {
		sink = xx_malloc(32 + i);
		xx_free(sink);
		sink = xx_calloc(3, 16);
		xx_free(sink);
		sink = malloc(8);
		free(sink);
	}
	printf("done\n");
	return 0;
}
`

// TestNamedPrefixedAllocator: --allocator with --allocator-prefix probes an allocator whose
// functions carry a prefix (memleak's -O/--symbols-prefix), from the program's symbol table,
// beside libc: its calls (xx_calloc calls xx_malloc: the outer call only) plus libc's, which
// the interposer counts.
func TestNamedPrefixedAllocator(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	bin := testenv.CompileC(t, "prefixed", prefixedSrc)
	const n = 6
	argv := []string{bin, strconv.Itoa(n)}
	want := truthOf(t, bins.Allocount, argv...)
	var bytes uint64
	for i := range n {
		bytes += 32 + uint64(i)
	}
	m, c, f := want["malloc"], want["calloc"], want["free"]
	want["malloc"] = [2]uint64{m[0] + n, m[1] + bytes}
	want["calloc"] = [2]uint64{c[0] + n, c[1] + 48*n}
	want["free"] = [2]uint64{f[0] + 2*n, 0}
	o := testOptions(t)
	o.Command, o.Allocator, o.AllocatorPrefix = argv, bin, "xx_"
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := decodeView(t, rep)
	p := rep.Processes[0]
	compareCounts(t, "xx_ and libc", heapOnly(v.perKind(p.PID)), want)
	if p.UnmatchedFrees != 0 {
		t.Errorf("%d unmatched frees, want 0", p.UnmatchedFrees)
	}
}
