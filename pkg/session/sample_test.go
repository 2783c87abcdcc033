package session

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// sitesSrc allocates from three call sites with known calls and sizes, and a realloc(NULL, n)
// whose inner malloc must not count twice. No stdio: it would allocate.
const sitesSrc = `#include <stdlib.h>
static void *volatile sink;
__attribute__((noinline)) static void small(void) { for (int i = 0; i < 100000; i++) { void *p = malloc(64); sink = p; free(p); } }
__attribute__((noinline)) static void medium(void) { for (int i = 0; i < 20000; i++) { void *p = malloc(4096); sink = p; free(p); } }
__attribute__((noinline)) static void large(void) { for (int i = 0; i < 200; i++) { void *p = malloc(1 << 20); sink = p; free(p); } }
__attribute__((noinline)) static void viarealloc(void) { for (int i = 0; i < 1000; i++) { void *p = realloc(NULL, 100); sink = p; free(p); } }
__attribute__((noinline)) static void leaky(void) { for (int i = 0; i < 5000; i++) sink = malloc(1000); }
int main(void) { small(); medium(); large(); viarealloc(); leaky(); return 0; }
`

// TestSampled: with --sample-bytes, in count and full mode, per-process totals are exact and each site's
// estimate is within five standard deviations of the truth, the bound computed from the sampling
// rate itself. The errors are logged: README's figures come from here.
func TestSampled(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "sites", sitesSrc, "-O2", "-fno-inline")
	bins := testenv.Binaries(t)
	want := truthOf(t, bins.Allocount, bin)
	sites := map[string]siteTruth{
		"small": {100000, 64}, "medium": {20000, 4096}, "large": {200, 1 << 20}, "viarealloc": {1000, 100},
		"leaky": {5000, 1000},
	}
	for _, mode := range []string{"count", "full"} {
		t.Run(mode, func(t *testing.T) { checkSampled(t, bin, mode, want, sites) })
	}
}

type siteTruth struct{ calls, size uint64 }

func checkSampled(t *testing.T, bin, mode string, want map[string][2]uint64, sites map[string]siteTruth) {
	const mean = 16 << 10
	o := testOptions(t)
	o.Command, o.Mode, o.SampleBytes = []string{bin}, mode, mean
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.SampleBytes != mean || rep.LostEvents != 0 {
		t.Fatalf("sample_bytes %d, lost %d: want %d and 0", rep.SampleBytes, rep.LostEvents, mean)
	}
	p := rep.Processes[0]
	for kind, w := range want {
		if kind == "free" {
			if got := p.HeapByKind[kind].Calls; mode == "full" && got != w[0] {
				t.Errorf("free totals: %d calls, want the interposer's %d exactly", got, w[0])
			}
			continue // count mode does not trace free
		}
		if got := p.HeapByKind[kind]; got.Calls != w[0] || got.Bytes != w[1] {
			t.Errorf("%s totals: %d calls / %d B, want the interposer's %d / %d exactly", kind, got.Calls, got.Bytes, w[0], w[1])
		}
	}
	est := map[string]report.Site{}
	for _, s := range rep.Sites {
		for _, f := range s.Stack {
			if _, ok := sites[f.Function]; ok {
				x := est[f.Function]
				x.Count += s.Count
				x.Bytes += s.Bytes
				x.OutstandingCount += s.OutstandingCount
				est[f.Function] = x
				break
			}
		}
	}
	for name, site := range sites {
		// Each call is picked with p = 1-exp(-size/mean) and weighted 1/p: the estimate of n calls
		// has relative standard deviation sqrt((1-p)/(n p)), for calls and bytes alike.
		pk := -math.Expm1(-float64(site.size) / mean)
		sd := math.Sqrt((1 - pk) / (float64(site.calls) * pk))
		got := est[name]
		errCalls := float64(got.Count)/float64(site.calls) - 1
		errBytes := float64(got.Bytes)/float64(site.calls*site.size) - 1
		t.Logf("%-10s %6d × %7d B: estimated %7d calls (%+.1f%%), %10d B (%+.1f%%); one standard deviation %.1f%%",
			name, site.calls, site.size, got.Count, 100*errCalls, got.Bytes, 100*errBytes, 100*sd)
		if bound := 5*sd + 0.01; math.Abs(errCalls) > bound || math.Abs(errBytes) > bound {
			t.Errorf("%s: estimate off by %.1f%% calls, %.1f%% bytes; more than 5 standard deviations (%.1f%%)", name, 100*errCalls, 100*errBytes, 100*bound)
		}
		if mode != "full" {
			continue
		}
		// Every picked block's free is reported: what is freed leaves nothing outstanding, and the
		// leak's outstanding estimate is its calls estimate.
		if name != "leaky" && got.OutstandingCount != 0 {
			t.Errorf("%s: %d blocks outstanding, want 0 (every block was freed)", name, got.OutstandingCount)
		}
		if name == "leaky" && got.OutstandingCount != got.Count {
			t.Errorf("leaky: %d blocks outstanding of %d estimated calls, want all", got.OutstandingCount, got.Count)
		}
	}
}

// TestSampledTotalsExact: sampling changes no per-process total: allocpattern (realloc(p, 0),
// free(NULL), posix_memalign and the rest) run with and without it, in full mode.
func TestSampledTotalsExact(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	var reps [2]*report.Report
	for i, sample := range []uint64{0, 4096} {
		o := testOptions(t)
		o.Command, o.SampleBytes = []string{bins.AllocPattern, "3"}, sample
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Processes) != 1 || rep.LostEvents != 0 {
			t.Fatalf("sample %d: %d processes, %d lost; want 1 and 0", sample, len(rep.Processes), rep.LostEvents)
		}
		reps[i] = rep
	}
	a, b := reps[0].Processes[0], reps[1].Processes[0]
	if a.Frees != b.Frees || a.Allocations != b.Allocations || a.AllocatedBytes != b.AllocatedBytes {
		t.Errorf("frees/allocations/bytes: unsampled %d/%d/%d, sampled %d/%d/%d", a.Frees, a.Allocations, a.AllocatedBytes, b.Frees, b.Allocations, b.AllocatedBytes)
	}
	if len(a.HeapByKind) != len(b.HeapByKind) {
		t.Errorf("functions: unsampled %v, sampled %v", a.HeapByKind, b.HeapByKind)
	}
	for k, c := range a.HeapByKind {
		if b.HeapByKind[k] != c {
			t.Errorf("%s: unsampled %+v, sampled %+v", k, c, b.HeapByKind[k])
		}
	}
}

// TestSampledTableCleared: picked blocks of processes that exit (or exec) leave the kernel's table:
// none may be left for a dead process, and nothing may be lost.
func TestSampledTableCleared(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	o := testOptions(t)
	o.SampleBytes = 64 // nearly every block is picked: allocpattern leaves several behind at exit
	o.Command = []string{"/bin/sh", "-c", "for i in 1 2 3 4 5 6; do " + bins.AllocPattern + " 2 >/dev/null; done"}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range rep.Warnings {
		if strings.Contains(w, "stale") {
			t.Errorf("warning: %s", w)
		}
	}
	if rep.LostEvents != 0 {
		t.Errorf("lost %+v", rep.LostDetail)
	}
	var leaked uint64
	for _, p := range rep.Processes {
		if p.Comm == "allocpattern" {
			leaked += p.OutstandingCount
		}
	}
	if leaked == 0 {
		t.Errorf("no outstanding blocks: the test needs processes that exit holding picked blocks")
	}
}

// TestFullTableIsCounted: with a table too small for what is alive, nothing is dropped silently:
// every leaked block is either tracked or counted as lost. --sample-bytes 1 picks every block.
func TestFullTableIsCounted(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "sites", sitesSrc, "-O2", "-fno-inline")
	o := testOptions(t)
	o.Command, o.SampleBytes, o.TableSize = []string{bin}, 1, 1024 // room for 4096 picked blocks
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var tracked uint64
	for _, s := range rep.Sites {
		for _, f := range s.Stack {
			if f.Function == "leaky" {
				tracked += s.OutstandingCount
				break
			}
		}
	}
	const leaked = 5000
	if lost := rep.LostDetail.Other; tracked+lost != leaked || lost == 0 {
		t.Errorf("leaky: %d blocks tracked + %d counted lost, want %d with some lost (the table holds 4096)", tracked, lost, leaked)
	}
}
