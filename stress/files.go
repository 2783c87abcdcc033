package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/udstrace/udstrace/internal/fileattack"
	"github.com/udstrace/udstrace/pkg/loader"
)

// checkFiles runs the FIFO attacks (see internal/fileattack) as nobody against a root
// `udstrace trace --duration 4s`, and the debuglink one against `udstrace run`, with a CPU hog
// on every core beside them: each trace must end within its duration plus a second, with a
// report.
func checkFiles(e *env) []*result {
	const duration = 4 * time.Second
	var rows []*result
	kit, err := fileattack.Build(e.work)
	if err != nil {
		r := newResult("files", "build the attack programs")
		r.fail("%v", err)
		return []*result{r}
	}
	stopHog := hog()
	defer stopHog()
	traced := func(name, tried string, attack func(ctx context.Context) error) {
		r := newResult("files", tried)
		rows = append(rows, r)
		out := filepath.Join(e.work, "files-"+name+".json")
		ctx, cancel := context.WithCancel(context.Background())
		attacked := make(chan error, 1)
		run := fileattack.RunTracer(e.udstrace, []string{"trace", "--debug", "--duration", duration.String(), "--format", "json", "-o", out},
			duration+90*time.Second, func() { attacked <- attack(ctx) })
		cancel()
		judge(r, run, out)
		if run.Traced && run.SinceTracing > duration+fileattack.HangSlack {
			r.fail("ended %s after tracing began, over --duration %s plus %s", run.SinceTracing.Round(time.Millisecond), duration, fileattack.HangSlack)
		}
		if run.Traced {
			if err := <-attacked; err != nil {
				r.fail("%v", err)
			}
		}
		r.note("ended %s after tracing began (--duration %s)", run.SinceTracing.Round(time.Millisecond), duration)
	}
	traced("exec", "trace while nobody's programs rename a FIFO over their own path and exit", func(ctx context.Context) error {
		return kit.Loop(ctx, kit.ExecSelf, 300)
	})
	traced("debuglink", "trace while nobody runs a binary whose .gnu_debuglink names a FIFO", func(ctx context.Context) error {
		return kit.Loop(ctx, kit.Debuglink, 200)
	})
	if libc, err := loader.ResolveLibc("/bin/true"); err != nil {
		r := newResult("files", "trace while nobody maps a fake libc.so.6 replaced by a FIFO")
		r.fail("finding libc: %v", err)
		rows = append(rows, r)
	} else if stop, err := kit.StartFakeLibc(libc); err != nil {
		r := newResult("files", "trace while nobody maps a fake libc.so.6 replaced by a FIFO")
		r.fail("%v", err)
		rows = append(rows, r)
	} else {
		traced("libc", "trace while nobody maps a fake libc.so.6 replaced by a FIFO", func(context.Context) error { return nil })
		stop()
	}
	r := newResult("files", "run a binary whose .gnu_debuglink names a FIFO")
	rows = append(rows, r)
	out := filepath.Join(e.work, "files-run.json")
	judge(r, fileattack.RunTracer(e.udstrace, []string{"run", "--debug", "--format", "json", "-o", out, "--", kit.Debuglink}, 90*time.Second, nil), out)
	return rows
}

// judge fails r unless the run ended by itself, with status 0 and a report in out.
func judge(r *result, run fileattack.Run, out string) {
	switch {
	case run.Killed:
		r.fail("still running at the hard limit (hung): killed")
	case run.Code != 0:
		r.fail("exit status %d: %s", run.Code, lastLine(run.Stderr))
	}
	if fi, err := os.Stat(out); err != nil || fi.Size() == 0 {
		r.fail("no report written to %s", out)
	}
}

func lastLine(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}

// hog keeps every core busy until stopped.
func hog() (stop func()) {
	done := make(chan struct{})
	for range runtime.NumCPU() {
		go func() {
			for {
				select {
				case <-done:
					return
				default:
					for i := 0; i < 1<<20; i++ {
					}
				}
			}
		}()
	}
	return func() { close(done) }
}
