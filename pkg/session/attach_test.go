package session

import (
	"bufio"
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/udstrace/udstrace/internal/testenv"
	"github.com/udstrace/udstrace/pkg/report"
)

// serverSrc allocates on request, with raw syscalls only, so its allocations are exactly those asked for.
const serverSrc = `
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>
static void say(const char *s) { write(1, s, strlen(s)); }
static void burst(int n) { for (int i = 0; i < n; i++) { void *volatile p = malloc(100); free(p); } }
int main(void) {
	char line[64];
	say("ready\n");
	for (;;) {
		ssize_t k = read(0, line, sizeof line - 1);
		if (k <= 0) return 0;
		line[k] = 0;
		int n = atoi(line + 2);
		if (line[0] == 'm') burst(n);
		if (line[0] == 'f') { pid_t c = fork(); if (c == 0) { burst(n); _exit(0); } waitpid(c, 0, 0); }
		say("done\n");
	}
}
`

type patternProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startPattern(t *testing.T, bin string) *patternProc {
	t.Helper()
	cmd := exec.Command(bin)
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

func (p *patternProc) expect(t *testing.T, want string) {
	t.Helper()
	line, err := p.out.ReadString('\n')
	if strings.TrimSpace(line) != want {
		t.Fatalf("pattern program said %q (%v), want %q", line, err, want)
	}
}

func (p *patternProc) ask(t *testing.T, req string) {
	t.Helper()
	if _, err := io.WriteString(p.in, req+"\n"); err != nil {
		t.Fatal(err)
	}
	p.expect(t, "done")
}

func buildPattern(t *testing.T) string {
	t.Helper()
	return testenv.CompileC(t, "pattern", serverSrc)
}

// attachAsync runs Attach in the background; stop() ends it and returns the report.
func attachAsync(t *testing.T, pids []int) (stop func() *report.Report) {
	t.Helper()
	return attachAsyncWith(t, pids, testOptions(t))
}

// attachAsyncWith is attachAsync with options o.
func attachAsyncWith(t *testing.T, pids []int, o Options) (stop func() *report.Report) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		rep *report.Report
		err error
	}
	done := make(chan result, 1)
	tracing := make(chan struct{})
	o.OnTracing = func() { close(tracing) }
	go func() {
		rep, err := Attach(ctx, pids, 0, o)
		done <- result{rep, err}
	}()
	select {
	case <-tracing:
	case r := <-done:
		t.Fatalf("attach ended before tracing: %v", r.err)
	}
	return func() *report.Report {
		cancel()
		r := <-done
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.rep
	}
}

func calls(v *view, pid uint32, kind string) uint64 { return v.perKind(pid)[kind][0] }

func TestAttachKnownPattern(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildPattern(t)
	a, b := startPattern(t, bin), startPattern(t, bin)
	stop := attachAsync(t, []int{a.cmd.Process.Pid, b.cmd.Process.Pid})
	a.ask(t, "m 1000")
	b.ask(t, "m 250")
	a.ask(t, "f 40") // a child allocates, then exits
	v, _ := decodeView(t, stop())
	for _, c := range []struct {
		pid  int
		want uint64
	}{{a.cmd.Process.Pid, 1000}, {b.cmd.Process.Pid, 250}} {
		if got := calls(v, uint32(c.pid), "malloc"); got != c.want {
			t.Errorf("pid %d: %d mallocs, want %d", c.pid, got, c.want)
		}
		if got := calls(v, uint32(c.pid), "free"); got != c.want {
			t.Errorf("pid %d: %d frees, want %d", c.pid, got, c.want)
		}
	}
	child := false
	for _, p := range v.Processes {
		if p.PID != uint32(a.cmd.Process.Pid) && p.PID != uint32(b.cmd.Process.Pid) && calls(v, p.PID, "malloc") == 40 {
			child = true
		}
	}
	if !child {
		t.Errorf("the forked child's 40 mallocs are not in the report: %+v", v.Processes)
	}
}

func TestSystemWideSeesNewProcess(t *testing.T) {
	testenv.NeedRoot(t)
	bins := testenv.Binaries(t)
	want := truthOf(t, bins.Allocount, bins.AllocPattern, "2")
	o := testOptions(t)
	o.Comm = "allocpattern"
	v := traceWhile(t, o, []string{bins.AllocPattern, "2"})
	if len(v.Processes) != 1 {
		t.Fatalf("--comm allocpattern: %d processes in the report, want 1", len(v.Processes))
	}
	compareCounts(t, "system-wide allocpattern", heapOnly(v.perKind(v.Processes[0].PID)), want)
}

// traceWhile traces system-wide with o while the commands run one after another, started once
// the probes are in place, and returns the report.
func traceWhile(t *testing.T, o Options, commands ...[]string) *view {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *report.Report, 1)
	tracing := make(chan struct{})
	o.OnTracing = func() { close(tracing) }
	go func() {
		rep, err := Trace(ctx, 0, o)
		if err != nil {
			t.Error(err)
		}
		done <- rep
	}()
	select {
	case <-tracing:
	case rep := <-done:
		done <- rep
		t.Fatal("trace ended before tracing")
	}
	for _, argv := range commands {
		if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	rep := <-done
	if rep == nil {
		t.FailNow()
	}
	v, _ := decodeView(t, rep)
	return v
}

// TestAttachNamesProcess: a process attached to (not seen to exec) is named in processes[] and
// sites[] by its command name and executable, in both modes: count mode's calls arrive at the
// end without a name. The oracle is the file the test executed.
func TestAttachNamesProcess(t *testing.T) {
	testenv.NeedRoot(t)
	bin := buildPattern(t)
	wantExe, err := filepath.EvalSymlinks(bin)
	if err != nil {
		t.Fatal(err)
	}
	wantComm := filepath.Base(bin)
	for _, mode := range []string{"count", "full"} {
		t.Run(mode, func(t *testing.T) {
			a := startPattern(t, bin)
			o := testOptions(t)
			o.Mode = mode
			stop := attachAsyncWith(t, []int{a.cmd.Process.Pid}, o)
			a.ask(t, "m 100")
			v, _ := decodeView(t, stop())
			pid := uint32(a.cmd.Process.Pid)
			if got := calls(v, pid, "malloc"); got != 100 {
				t.Errorf("%d mallocs, want 100", got)
			}
			found := false
			for _, p := range v.Processes {
				if p.PID != pid {
					continue
				}
				found = true
				if p.Comm != wantComm || p.Exe != wantExe {
					t.Errorf("processes[]: comm %q exe %q, want %q %q", p.Comm, p.Exe, wantComm, wantExe)
				}
			}
			if !found {
				t.Fatalf("pid %d not in processes[]", pid)
			}
			n := 0
			for _, s := range v.Sites {
				if s.PID == pid {
					n++
					if s.Comm != wantComm {
						t.Errorf("site %s: comm %q, want %q", s.Kind, s.Comm, wantComm)
					}
				}
			}
			if n == 0 {
				t.Errorf("no site of pid %d", pid)
			}
		})
	}
}

// workerSrc is serverSrc's requests served by a thread that named itself before anything traced it.
const workerSrc = `#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void say(const char *s) { write(1, s, strlen(s)); }
__attribute__((noinline)) static void burst(int n) { for (int i = 0; i < n; i++) { void *volatile p = malloc(100); free(p); } }
static void *worker(void *a) {
	char line[64];
	(void)a;
	pthread_setname_np(pthread_self(), "zzworker");
	say("ready\n");
	for (;;) {
		ssize_t k = read(0, line, sizeof line - 1);
		if (k <= 0) exit(0);
		line[k] = 0;
		burst(atoi(line + 2));
		say("done\n");
	}
}
int main(void) {
	pthread_t th;
	pthread_create(&th, 0, worker, 0);
	pthread_join(th, 0);
}
`

// TestAttachThreadNames: a thread named before the attach (no rename is seen) is named on the
// sites it calls, from /proc.
func TestAttachThreadNames(t *testing.T) {
	testenv.NeedRoot(t)
	bin := testenv.CompileC(t, "worker", workerSrc, "-pthread")
	a := startPattern(t, bin)
	stop := attachAsync(t, []int{a.cmd.Process.Pid})
	a.ask(t, "m 60")
	v, _ := decodeView(t, stop())
	pid := uint32(a.cmd.Process.Pid)
	var n uint64
	for _, s := range v.Sites {
		if s.PID == pid && s.Kind == "malloc" && siteHasFunction(s.Stack, "burst") {
			n += s.Count
			if s.Thread != "zzworker" || s.TID == pid || s.TID == 0 || s.Comm != "worker" {
				t.Errorf("burst's site: comm %q thread %q tid %d (pid %d), want worker, zzworker, the worker's tid", s.Comm, s.Thread, s.TID, pid)
			}
		}
	}
	if n != 60 {
		t.Errorf("%d mallocs under burst, want 60", n)
	}
}
