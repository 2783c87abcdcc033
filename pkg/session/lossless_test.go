package session

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
)

// The lossless tests: at default options (testOptions, no stack, ring or table flags) udstrace
// loses no event and counts, per process and per kind, exactly the calls and bytes the LD_PRELOAD
// interposer counts, five runs out of five, on real programs: a gcc compile (gcc, cc1, as), four
// threads of malloc/free pairs, one burst of 12,000 mallocs, and perl building a hash.
//
// The interposer's run is separate and untraced, so the traced run is exactly what a user runs.
// That needs workloads that allocate the same way every time, and the oracle checks it: it runs
// twice and the two runs must agree. gcc's cc1 does not on its own (it callocs a 32 KiB page-table
// block whenever its GC pages reach a new 16 MiB region: 1,784 or 1,785 callocs from one run to
// the next), so gcc runs cc1 and as through norandom (-wrapper: no address-space randomization;
// the driver is still the command udstrace starts), and perl, which seeds its hashes at random,
// runs with PERL_HASH_SEED=0. Both runs see the same variables with values of the same lengths
// (perl copies its environment): the traced run's LD_PRELOAD is blanks, which ld.so ignores.

// losslessRuns is how many traced runs each workload must pass, all of them.
const losslessRuns = 5

// losslessCase is one workload: argv, extra environment, and a floor on its allocator calls (the
// workload must really be the flood the test means).
type losslessCase struct {
	argv     []string
	env      []string
	minCalls uint64
	// callocBytes false: calloc's bytes are not compared (calls are). A new thread's TLS block is
	// calloc'd, and the interposer's own TLS makes it bigger under the interposer.
	callocBytes bool
	check       func(t *testing.T, rep *report.Report) // extra per-run checks (nil: none)
}

func TestLosslessGCC(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc is this test's workload: %v", err)
	}
	dir := t.TempDir()
	src, obj := filepath.Join(dir, "hello.c"), filepath.Join(dir, "hello.o")
	if err := os.WriteFile(src, []byte("#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	checkLossless(t, bins, losslessCase{
		argv:        []string{gcc, "-wrapper", bins.NoRandom, "-O2", "-c", src, "-o", obj},
		env:         []string{"TMPDIR=" + dir},
		minCalls:    10000,
		callocBytes: true,
		check: func(t *testing.T, rep *report.Report) {
			var comms []string
			for _, p := range rep.Processes {
				comms = append(comms, p.Comm)
			}
			for _, want := range []string{"gcc", "cc1", "as"} {
				if !slices.Contains(comms, want) {
					t.Errorf("no %s process in the report (processes %v): every child must be followed", want, comms)
				}
			}
			if st, err := os.Stat(obj); err != nil || st.Size() == 0 {
				t.Errorf("gcc wrote no object file: %v", err)
			}
			os.Remove(obj)
		},
	})
}

func TestLosslessThreads(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	checkLossless(t, bins, losslessCase{
		argv:     []string{bins.ThreadAlloc, "4", "20000"},
		minCalls: 2 * 4 * 20000,
		check: func(t *testing.T, rep *report.Report) {
			if len(rep.Processes) != 1 {
				t.Fatalf("%d processes, want 1", len(rep.Processes))
			}
			// Every 1000th block is 128 KiB or more and grows past glibc's sliding threshold:
			// malloc maps memory itself (those blocks, and the threads' arenas).
			if inside := rep.Processes[0].InsideAllocator["malloc"]; inside.Count < 8 {
				t.Errorf("malloc made %d kernel requests of its own (%+v): the big blocks must be served by mmap", inside.Count, rep.Processes[0].InsideAllocator)
			}
			// One call site, one stack, however it was unwound (in the kernel or from a copy).
			checkOneStack(t, rep, "malloc", []string{"malloc", "work"}, 4*20000)
		},
	})
}

func TestLosslessBurst(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	checkLossless(t, bins, losslessCase{
		argv:        []string{bins.Burst, "12000"},
		minCalls:    2 * 12000,
		callocBytes: true,
		check: func(t *testing.T, rep *report.Report) {
			checkOneStack(t, rep, "malloc", []string{"malloc", "main"}, 12000)
		},
	})
}

func TestLosslessPerl(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	perl, err := exec.LookPath("perl")
	if err != nil {
		t.Fatalf("perl is this test's workload: %v", err)
	}
	checkLossless(t, bins, losslessCase{
		argv:        []string{perl, "-e", `my %h; $h{$_} = "x" x ($_ % 100) for 1..20000`},
		env:         []string{"PERL_HASH_SEED=0", "PERL_PERTURB_KEYS=0"},
		minCalls:    30000,
		callocBytes: true,
	})
}

// checkLossless takes the interposer's counts of c (two untraced runs, which must agree), then
// traces c losslessRuns times, each run a subtest, and compares every one with them.
func checkLossless(t *testing.T, bins workload.Paths, c losslessCase) {
	t.Helper()
	truth, envLen := interposeTwice(t, bins.Allocount, c)
	var calls uint64
	for _, p := range truth {
		for _, n := range workload.Traced(p.Funcs) {
			calls += n[0]
		}
	}
	if calls < c.minCalls {
		t.Fatalf("the interposer counted %d allocator calls, want at least %d: the workload is not the flood this test means", calls, c.minCalls)
	}
	repeatRuns(t, func(t *testing.T) {
		o := testOptions(t)
		o.Command = c.argv
		o.Env = append([]string{"LD_PRELOAD=" + strings.Repeat(" ", envLen[0]), "ALLOCOUNT_DIR=" + strings.Repeat("x", envLen[1])}, c.env...)
		rep, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lost %d %+v; stacks %+v", rep.LostEvents, rep.LostDetail, rep.Stacks)
		if rep.LostEvents != 0 {
			t.Errorf("lost_events = %d (%+v), want 0", rep.LostEvents, rep.LostDetail)
		}
		if p := rep.Processes; len(p) == 0 || p[0].ExitCode == nil || *p[0].ExitCode != 0 {
			t.Errorf("the command did not exit 0: %+v", p)
		}
		compareWithInterposer(t, rep, truth, c.callocBytes)
		for _, g := range garbageFrames(rep) {
			t.Error(g)
		}
		if c.check != nil {
			c.check(t, rep)
		}
		if t.Failed() {
			keepReport(t, rep)
		}
	})
}

// interposeTwice runs c untraced under the interposer twice and returns the counts, per process
// in start order, once both runs agree, with the lengths of the two variables' values.
func interposeTwice(t *testing.T, so string, c losslessCase) ([]workload.Counted, [2]int) {
	t.Helper()
	var runs [2][]workload.Counted
	var envLen [2]int
	for i := range runs {
		dir := t.TempDir()
		cmd := exec.Command(c.argv[0], c.argv[1:]...)
		cmd.Env = append(os.Environ(), append([]string{"LD_PRELOAD=" + so, "ALLOCOUNT_DIR=" + dir}, c.env...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("running %v under the interposer: %v\n%s", c.argv, err, out)
		}
		all, err := workload.ReadCounts(dir)
		if err != nil {
			t.Fatal(err)
		}
		runs[i], envLen = all, [2]int{len(so), len(dir)}
	}
	a, b := runs[0], runs[1]
	same := len(a) == len(b)
	for i := 0; same && i < len(a); i++ {
		same = a[i].Comm == b[i].Comm && maps.Equal(workload.Traced(a[i].Funcs), workload.Traced(b[i].Funcs))
	}
	if !same {
		t.Fatalf("the workload does not allocate the same way twice under the interposer, so it is no oracle:\n%+v\n%+v", a, b)
	}
	return a, envLen
}

// compareWithInterposer matches the report's processes with the interposer's, by name in start
// order (as --verify does), and compares calls and bytes per kind. udstrace may see more frees
// than the interposer by exactly the frees libc makes of its own memory (a dying thread's tcache,
// through its internal free, which no LD_PRELOAD can see): those must all be unmatched frees
// named inside libc.
func compareWithInterposer(t *testing.T, rep *report.Report, truth []workload.Counted, callocBytes bool) {
	t.Helper()
	used := make([]bool, len(truth))
	for _, p := range rep.Processes {
		got := map[string][2]uint64{}
		for k, c := range p.HeapByKind {
			if c.Calls > 0 {
				got[k] = [2]uint64{c.Calls, c.Bytes}
			}
		}
		got = heapOnly(got)
		name := fmt.Sprintf("%s (pid %d)", p.Comm, p.PID)
		var want map[string][2]uint64
		for i := range truth {
			if !used[i] && truth[i].Comm == p.Comm {
				used[i], want = true, workload.Traced(truth[i].Funcs)
				break
			}
		}
		if want == nil {
			if len(got) > 0 {
				t.Errorf("%s: udstrace saw %v, the interposer saw no such process", name, got)
			}
			continue
		}
		if inLibc := libcOwnFrees(rep, p.PID); inLibc > 0 {
			if got["free"][0] != want["free"][0]+inLibc || p.UnmatchedFrees != inLibc {
				t.Errorf("%s: free: udstrace %d, interposer %d, libc's own %d, unmatched %d: the extra frees must be exactly libc's own",
					name, got["free"][0], want["free"][0], inLibc, p.UnmatchedFrees)
			}
			got["free"] = want["free"]
		}
		if g, w := got["calloc"], want["calloc"]; !callocBytes && g[0] > 0 && g[0] == w[0] {
			got["calloc"] = w
		}
		compareCounts(t, name, got, want)
	}
	for i, c := range truth {
		if !used[i] && len(workload.Traced(c.Funcs)) > 0 {
			t.Errorf("the interposer counted %v in %s (pid %d), which the report does not have", workload.Traced(c.Funcs), c.Comm, c.PID)
		}
	}
}

// keepReport writes a failed run's JSON report where it outlives the test, for a closer look.
func keepReport(t *testing.T, rep *report.Report) {
	f, err := os.CreateTemp("", "udstrace-"+strings.ReplaceAll(t.Name(), "/", "-")+"-*.json")
	if err != nil {
		return
	}
	defer f.Close()
	if rep.WriteJSON(f) == nil {
		t.Logf("report kept in %s", f.Name())
	}
}

// libcOwnFrees counts pid's unmatched frees whose caller is inside libc.
func libcOwnFrees(rep *report.Report, pid uint32) uint64 {
	var n uint64
	for _, f := range rep.UnmatchedFreeSites {
		if f.PID == pid && len(f.Caller) > 0 && strings.HasPrefix(filepath.Base(f.Caller[0].Module), "libc.so") {
			n += f.Count
		}
	}
	return n
}

// garbageFrames lists the sites whose stack is empty or has an unresolved frame (no module: an
// address in no mapped file), as make stress's churn check does; at most 10, then how many more.
func garbageFrames(rep *report.Report) []string {
	var out []string
	bad := 0
	for _, s := range rep.Sites {
		var why string
		if len(s.Stack) == 0 {
			why = "empty stack"
		}
		for i, f := range s.Stack {
			if f.Module == "" && why == "" {
				why = fmt.Sprintf("frame %d (%s) has no module: unresolved", i, f.Symbol)
			}
		}
		if why == "" {
			continue
		}
		if bad++; bad <= 10 {
			out = append(out, fmt.Sprintf("pid %d %s site of %d calls: %s; stack %s", s.PID, s.Kind, s.Count, why, frameNames(s.Stack)))
		}
	}
	if bad > 10 {
		out = append(out, fmt.Sprintf("... and %d more sites with garbage frames", bad-10))
	}
	return out
}

func frameNames(st []report.StackFrame) string {
	var names []string
	for _, f := range st {
		n := f.Function
		if n == "" {
			n = f.Symbol
		}
		names = append(names, n+"@"+filepath.Base(f.Module))
	}
	return strings.Join(names, " <- ")
}

// checkOneStack asserts that the sites of kind whose stacks start with the functions want hold
// n calls: a call site's stack must come out the same whichever way it was unwound (in the
// kernel, from a copy, cut). The other sites of that kind are listed when they do not.
func checkOneStack(t *testing.T, rep *report.Report, kind string, want []string, n uint64) {
	t.Helper()
	var got uint64
	var others []string
	for _, s := range rep.Sites {
		if s.Kind != kind {
			continue
		}
		var names []string
		for _, f := range s.Stack {
			names = append(names, f.Function)
		}
		if norm := normalized(names); len(norm) >= len(want) && slices.Equal(norm[:len(want)], want) {
			got += s.Count
		} else {
			others = append(others, fmt.Sprintf("%d calls: %s", s.Count, frameNames(s.Stack)))
		}
	}
	if got != n {
		t.Errorf("%d %s calls have a stack starting %s, want %d; the other %s sites:\n  %s", got, kind, strings.Join(want, " <- "), n, kind, strings.Join(others, "\n  "))
	}
}

// repeatRuns runs check losslessRuns times as subtests and fails t, naming the runs, when any failed:
// "5 runs out of 5" is the bar.
func repeatRuns(t *testing.T, check func(t *testing.T)) {
	t.Helper()
	var failed []int
	for run := 1; run <= losslessRuns; run++ {
		if !t.Run(fmt.Sprintf("run%d", run), check) {
			failed = append(failed, run)
		}
	}
	if len(failed) > 0 {
		t.Errorf("runs %v of %d failed", failed, losslessRuns)
	}
}
