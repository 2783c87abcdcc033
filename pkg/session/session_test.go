package session

import (
	"context"
	"fmt"
	"github.com/udstrace/udstrace/pkg/report"
	"github.com/udstrace/udstrace/workload"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udstrace/udstrace/internal/testenv"
)

func testOptions(t *testing.T) Options {
	return Options{Stack: "auto", Follow: true, Messages: 3, Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
}

// expected is what the uprobes should report for the interposer's counts of one process.
func expected(c testenv.Counts) map[string][2]uint64 { return workload.Traced(c) }

// truthOf runs argv, which must be one process, under the interposer: what the uprobes should report.
func truthOf(t *testing.T, allocount string, argv ...string) map[string][2]uint64 {
	t.Helper()
	_, truth := testenv.Interpose(t, allocount, argv)
	if len(truth) != 1 {
		t.Fatalf("interposer wrote %d count files for %v, want 1", len(truth), argv)
	}
	for _, c := range truth {
		return expected(c)
	}
	return nil
}

func heapOnly(m map[string][2]uint64) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for k, v := range m {
		switch k {
		case "mmap", "munmap", "mremap", "brk":
			continue
		}
		if k == "free" {
			v[1] = 0
		}
		out[k] = v
	}
	return out
}

func compareCounts(t *testing.T, what string, got, want map[string][2]uint64) {
	t.Helper()
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s: udstrace saw %d calls / %d bytes, the interposer %d / %d", what, k, got[k][0], got[k][1], w[0], w[1])
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: %s: udstrace saw %d calls the interposer did not", what, k, g[0])
		}
	}
}

func TestAllocPatternMatchesInterposer(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	want := truthOf(t, bins.Allocount, bins.AllocPattern, "3")
	for _, mode := range []string{"fp", "auto", "count"} {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Stack = mode
			if mode == "count" {
				o.Stack, o.Mode = "fp", "count"
			}
			o.Command = []string{bins.AllocPattern, "3"}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			v, _ := decodeView(t, rep)
			if len(v.Processes) != 1 {
				t.Fatalf("report has %d processes, want 1", len(v.Processes))
			}
			pid := v.Processes[0].PID
			wantHeap := maps.Clone(want)
			if mode == "count" {
				delete(wantHeap, "free") // count mode does not trace frees
			}
			compareCounts(t, "allocpattern", heapOnly(v.perKind(pid)), wantHeap)
			sites := heapOnly(v.siteTotals(pid))
			delete(sites, "free")
			wantSites := maps.Clone(want)
			delete(wantSites, "free")
			compareCounts(t, "allocpattern sites", sites, wantSites)
			if *v.LostEvents != 0 {
				t.Errorf("lost %d events", *v.LostEvents)
			}
			// malloc(200000) is served by mmap inside malloc: that mmap must not appear as a user allocation.
			for _, s := range v.Sites {
				if s.Kind == "mmap" && s.Bytes >= 200000 && s.Bytes < 300000 {
					t.Errorf("malloc's own mmap of %d bytes reported as a user mmap (pid %d, processes %+v)", s.Bytes, s.PID, v.Processes)
				}
			}
		})
	}
}

func TestEchoWorkload(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	truth := interposeEcho(t, bins.Server, bins.Client, bins.Allocount)

	rep, err := Run(context.Background(), func() Options { o := testOptions(t); o.Workload = "echo"; return o }())
	if err != nil {
		t.Fatal(err)
	}
	v, js := decodeView(t, rep)
	if v.Schema != "udstrace.report/v1" {
		t.Errorf("schema = %q", v.Schema)
	}
	for _, role := range []string{"server", "client-raw", "client-stdio"} {
		pid := v.pidOf(t, role)
		compareCounts(t, role, heapOnly(v.perKind(pid)), expected(truth[role]))
	}
	raw := v.perKind(v.pidOf(t, "client-raw"))
	if len(heapOnly(raw)) != 0 {
		t.Errorf("raw client made malloc-family calls: %v", raw)
	}
	if !v.SocketPath.Holds || v.SocketPath.UserAllocations != 0 || v.SocketPath.Syscalls == 0 {
		t.Errorf("socket-path verdict: %+v", v.SocketPath)
	}
	// fdopen's FILE is allocated by malloc called from fdopen called from main.
	stdio := v.pidOf(t, "client-stdio")
	found := false
	for _, s := range v.Sites {
		if s.PID != stdio || s.Kind != "malloc" || s.Bytes != 472 {
			continue
		}
		var names []string
		for _, f := range s.Stack {
			names = append(names, f.Symbol)
		}
		joined := strings.Join(names, " ")
		found = strings.Contains(joined, "fdopen") && strings.Contains(joined, "main")
		if !found {
			t.Errorf("fdopen allocation stack lacks fdopen or main: %v", names)
		}
	}
	if !found && !t.Failed() {
		t.Errorf("no 472-byte malloc site in the stdio client:\n%s", js)
	}
	var buf strings.Builder
	if err := rep.WriteText(&buf); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "Conclusion:") {
		t.Errorf("text report does not end with the conclusion: %q", last)
	}
	assertNoLeftovers(t)
}

// interposeEcho runs the echo experiment untraced under the counting interposer and returns the counts by role.
func interposeEcho(t *testing.T, server, client, so string) map[string]testenv.Counts {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	env := append(os.Environ(), "LD_PRELOAD="+so, "ALLOCOUNT_DIR="+dir)
	srv := exec.Command(server, sock, "2")
	srv.Env = env
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil {
		t.Fatalf("server not ready: %v", err)
	}
	pids := map[string]int{"server": srv.Process.Pid}
	for _, mode := range []string{"raw", "stdio"} {
		c := exec.Command(client, mode, sock, "3", "0")
		c.Env = env
		if b, err := c.CombinedOutput(); err != nil {
			t.Fatalf("%s client: %v\n%s", mode, err, b)
		}
		pids["client-"+mode] = c.Process.Pid
	}
	if err := srv.Wait(); err != nil {
		t.Fatal(err)
	}
	_, counts := testenv.ReadCounts(t, dir)
	byRole := map[string]testenv.Counts{}
	for role, pid := range pids {
		byRole[role] = counts[pid]
	}
	return byRole
}

// assertNoLeftovers checks that no udstrace program outlived its trace and no workload directory remains.
func assertNoLeftovers(t *testing.T) {
	t.Helper()
	if left := testenv.LeftPrograms(); len(left) > 0 {
		t.Errorf("BPF programs left loaded: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("udstrace-echo-%d-*", os.Getpid()))); len(left) > 0 {
		t.Errorf("workload directories left behind: %v", left)
	}
}

// TestFoldedProcessesKeepTotals: past --max-procs, exited processes fold into one entry per
// program whose figures are the sums of what each process did: n runs of allocpattern against
// n times the interposer's count for one run.
func TestFoldedProcessesKeepTotals(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	one := truthOf(t, bins.Allocount, bins.AllocPattern, "1")
	const runs, keep = 12, 3
	o := testOptions(t)
	o.MaxProcs = keep
	// The shell is the first process seen (kept), then keep-1 allocpattern runs; the rest fold.
	o.Command = []string{"/bin/sh", "-c", fmt.Sprintf("for i in %s; do %s 1 >/dev/null; done", strings.Repeat("x ", runs), bins.AllocPattern)}
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	entries, folded, procs := 0, 0, 0
	for _, p := range rep.Processes {
		if p.Comm != "allocpattern" {
			continue
		}
		entries++
		procs += max(p.FoldedProcesses, 1)
		if p.FoldedProcesses > 0 {
			folded++
			if p.PID != 0 {
				t.Errorf("folded entry has pid %d, want 0", p.PID)
			}
		}
	}
	if procs != runs || folded != 1 || entries != keep {
		t.Errorf("%d allocpattern entries (%d folded) standing for %d processes; want %d kept, 1 folded, %d processes",
			entries, folded, procs, keep-1, runs)
	}
	// Each forked child also allocates in the shell's image before its exec; the sites reached
	// from allocpattern's own code are what the interposer counts.
	got := map[string][2]uint64{}
	for _, s := range rep.Sites {
		if s.Comm != "allocpattern" {
			continue
		}
		for _, f := range s.Stack {
			if filepath.Base(f.Module) == "allocpattern" {
				x := got[s.Kind]
				got[s.Kind] = [2]uint64{x[0] + s.Count, x[1] + s.Bytes}
				break
			}
		}
	}
	want := map[string][2]uint64{}
	for k, c := range one {
		if k != "free" {
			want[k] = [2]uint64{c[0] * runs, c[1] * runs}
		}
	}
	compareCounts(t, "allocpattern × 12, sites", heapOnly(got), want)
}

// killedSrc: four threads allocate and free large blocks (malloc's own mmap and munmap) as fast
// as they can until the process is killed, so threads die inside the allocator and its syscalls.
const killedSrc = `#include <pthread.h>
#include <stdlib.h>
static void *volatile sink;
static void *spin(void *arg) {
	for (;;) {
		void *p = malloc(256 << 10); sink = p; free(p);
		p = realloc(NULL, 64); p = realloc(p, 128); sink = p; free(p);
	}
	return arg;
}
int main(void) {
	pthread_t t[4];
	for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, spin, NULL);
	pthread_join(t[0], NULL);
	return 0;
}
`

// TestThreadsKilledInsideAllocator: SIGKILL lands while threads are inside malloc, free and their
// mmap/munmap; no per-thread state may outlive them, and nothing may be reported stale or lost.
func TestThreadsKilledInsideAllocator(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "killed", killedSrc, "-pthread")
	for _, mode := range []string{"full", "count"} {
		t.Run(mode, func(t *testing.T) {
			o := testOptions(t)
			o.Mode = mode
			o.Command = []string{"/bin/sh", "-c", bin + " & sleep 0.5; kill -9 $!; wait; exit 0"}
			rep, err := Run(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			var killed *report.Process
			for i := range rep.Processes {
				if rep.Processes[i].Comm == "killed" {
					killed = &rep.Processes[i]
				}
			}
			if killed == nil || killed.ExitSignal != 9 || killed.HeapCalls < 100 {
				t.Fatalf("want the allocating process killed by SIGKILL after many calls, got %+v", killed)
			}
			for _, w := range rep.Warnings {
				if strings.Contains(w, "stale") || strings.Contains(w, "discarded") {
					t.Errorf("warning: %s", w)
				}
			}
			// Four threads flooding may fill the ring buffer (counted, and checked by make stress);
			// nothing else may be lost: no call state discarded, none left for a dead thread.
			if rep.LostDetail.Other != 0 {
				t.Errorf("lost events %+v: threads dying inside the allocator must leave no stale state", rep.LostDetail)
			}
			t.Logf("killed after %d allocator calls", killed.HeapCalls)
		})
	}
}
