package session

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

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

// TestTraceSeesRunningJemalloc: a system-wide trace started while programs already run on
// jemalloc (preloaded, and linked) probes it at once: no mapping event will come for it. Their
// calls made during the trace are counted exactly, and their allocator is named.
func TestTraceSeesRunningJemalloc(t *testing.T) {
	testenv.NeedRoot(t)
	needFile(t, jemallocSO)
	plain := buildPattern(t)
	linked := testenv.CompileC(t, "patternje", serverSrc, "-ljemalloc")
	pre := startPatternEnv(t, plain, "LD_PRELOAD="+jemallocSO)
	lin := startPatternEnv(t, linked)
	o := testOptions(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tracing := make(chan struct{})
	o.OnTracing = func() { close(tracing) }
	done := make(chan *report.Report, 1)
	go func() {
		rep, err := Trace(ctx, 0, o)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	select {
	case <-tracing:
	case <-done:
		t.Fatal("trace ended before tracing")
	}
	pre.ask(t, "m 300") // 300 mallocs and their frees
	lin.ask(t, "m 120")
	time.Sleep(300 * time.Millisecond)
	cancel()
	rep := <-done
	if rep == nil {
		t.Fatal("no report")
	}
	v, _ := decodeView(t, rep)
	for _, c := range []struct {
		pid          int
		malloc, free uint64
	}{{pre.cmd.Process.Pid, 300, 300}, {lin.cmd.Process.Pid, 120, 120}} {
		if got := calls(v, uint32(c.pid), "malloc"); got != c.malloc {
			t.Errorf("pid %d: %d mallocs, want %d", c.pid, got, c.malloc)
		}
		if got := calls(v, uint32(c.pid), "free"); got != c.free {
			t.Errorf("pid %d: %d frees, want %d", c.pid, got, c.free)
		}
	}
	for _, p := range rep.Processes {
		if p.PID == uint32(pre.cmd.Process.Pid) || p.PID == uint32(lin.cmd.Process.Pid) {
			checkAllocator(t, p, "jemalloc", jemallocSO)
		}
	}
}
