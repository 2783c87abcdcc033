package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strings"
	"time"
)

// udsReport is the part of udstrace's JSON report the benchmark reads.
type udsReport struct {
	LostEvents int64 `json:"lost_events"`
	Stacks     struct {
		TablePages  int  `json:"table_pages"`
		TableCached *int `json:"table_pages_from_cache"`
	} `json:"stacks"`
	Tracer *struct {
		RingBytes      uint64  `json:"ring_bytes"`
		CPUUserSeconds float64 `json:"cpu_user_seconds"`
		CPUSysSeconds  float64 `json:"cpu_sys_seconds"`
		PeakRSSBytes   uint64  `json:"peak_rss_bytes"`
	} `json:"tracer"`
	Processes []struct {
		Comm  string                           `json:"comm"`
		Exe   string                           `json:"exe"`
		Calls map[string]struct{ Calls int64 } `json:"heap_calls_by_kind"`
	} `json:"processes"`

	written time.Time // the report file's modification time: when udstrace wrote it
}

// cpu is udstrace's own CPU seconds as its report states them; NaN when the
// report has no tracer figures.
func (r *udsReport) cpu() float64 {
	if r.Tracer == nil {
		return math.NaN()
	}
	return r.Tracer.CPUUserSeconds + r.Tracer.CPUSysSeconds
}

// calls sums one kind's calls ("" for every kind, free included) over the
// processes keep selects (nil: all).
func (r *udsReport) calls(kind string, keep func(comm, exe string) bool) (n int64, found bool) {
	for _, p := range r.Processes {
		if keep != nil && !keep(p.Comm, p.Exe) {
			continue
		}
		found = true
		for k, c := range p.Calls {
			if kind == "" || k == kind {
				n += c.Calls
			}
		}
	}
	return n, found
}

// fill sets the udstrace columns of s from the report: lost events, ring bytes
// and CPU per traced call (events; the CPU above the start-up baseline, a
// `-- true` run's), peak RSS and unwind pages cached.
func (r *udsReport) fill(s *sample, baseline float64, events int64) {
	s.lost = r.LostEvents
	if t := r.Tracer; t != nil {
		s.rssKiB = int64(t.PeakRSSBytes / 1024)
		if events > 0 {
			s.perEventB = float64(t.RingBytes) / float64(events)
			s.perEventU = (r.cpu() - baseline) / float64(events) * 1e6
		}
	}
	if c := r.Stacks.TableCached; c != nil {
		s.cached = fmt.Sprintf("%d/%d", *c, r.Stacks.TablePages)
	}
}

// udstraceSupported probes whether this udstrace accepts the mode flags: ""
// when it does, else the reason for an n/a row.
func (e *env) udstraceSupported(ctx context.Context, flags []string) string {
	short := *e
	short.timeout = min(e.timeout, 30*time.Second)
	c, _, err := short.udstraceRun(ctx, flags, "true")
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 &&
		(strings.Contains(c.out, "flag provided but not defined") || strings.Contains(c.out, "unknown flag") || strings.Contains(c.out, "invalid value")) {
		return "n/a (unsupported)"
	}
	if err != nil { // not a verdict on the flags: the measured runs will tell
		fmt.Fprintf(os.Stderr, "bench: probing udstrace %s: %v\n", strings.Join(flags, " "), oneLine(err.Error()))
	}
	return ""
}

// udstraceRun runs `udstrace run FLAGS --format json -o REPORT -- argv` and
// reads the report.
func (e *env) udstraceRun(ctx context.Context, flags []string, argv ...string) (child, *udsReport, error) {
	return e.udstraceRunEnv(ctx, nil, flags, argv...)
}

// udstraceRunEnv is udstraceRun with variables added to udstrace's environment, which the
// traced command inherits (LD_PRELOAD of an allocator: udstrace probes it from the start).
func (e *env) udstraceRunEnv(ctx context.Context, extraEnv, flags []string, argv ...string) (child, *udsReport, error) {
	// Never -o /dev/null: udstrace renames its report over the target.
	f, err := os.CreateTemp(e.tmp, "udstrace-*.json")
	if err != nil {
		return child{}, nil, err
	}
	report := f.Name()
	f.Close()
	defer os.Remove(report)
	cmdline := append(append(append([]string{e.udstrace, "run"}, flags...), e.udsFlags...), "--format", "json", "-o", report, "--")
	c, err := e.launch(ctx, launch{env: extraEnv}, append(cmdline, argv...)...)
	if err != nil {
		return c, nil, err
	}
	data, err := os.ReadFile(report)
	if err != nil {
		return c, nil, err
	}
	var r udsReport
	if err := json.Unmarshal(data, &r); err != nil {
		return c, nil, fmt.Errorf("udstrace report: %w", err)
	}
	if fi, err := os.Stat(report); err == nil {
		r.written = fi.ModTime()
	}
	return c, &r, nil
}

// udstraceBaseline is udstrace's own CPU for tracing `true` with flags: its
// start-up (loading the BPF programs, the libc and loader unwind tables) and
// report, which the per-event figure leaves out.
func (e *env) udstraceBaseline(ctx context.Context, flags []string) (float64, error) {
	_, r, err := e.udstraceRun(ctx, flags, "true")
	if err != nil {
		return 0, fmt.Errorf("baseline (-- true): %w", err)
	}
	return r.cpu(), nil
}

// runUdstrace traces allocbench with udstrace and reads the JSON report. A
// baseline `-- true` run in the same mode comes first.
func (e *env) runUdstrace(ctx context.Context, flags []string, pairs int) (sample, error) {
	s := newSample()
	base, err := e.udstraceBaseline(ctx, flags)
	if err != nil {
		return s, err
	}
	c, r, err := e.udstraceRun(ctx, flags, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	done, err := parseBench(c.out, &s)
	if err != nil {
		return s, err
	}
	// udstrace waits for allocbench, so its rusage includes allocbench's.
	s.tracerCPU, s.exitLag = math.Max(0, cpuSec(c.ru)-s.benchCPU), since(done, c.exited)
	s.reportLag = since(done, r.written)
	isBench := func(comm, exe string) bool { return exe == e.bench || comm == "allocbench" }
	var found bool
	s.malloc, found = r.calls("malloc", isBench)
	if !found {
		return s, errors.New("udstrace report has no allocbench process")
	}
	s.free, _ = r.calls("free", isBench)
	events, _ := r.calls("", nil)
	r.fill(&s, base, events)
	if r.Tracer == nil {
		s.rssKiB = c.ru.Maxrss // an older udstrace: the wait4 figure
	}
	return s, nil
}

// udstraceModes are the udstrace rows, in order: default flags first.
var udstraceModes = [][]string{
	{},
	{"--stack", "fp"},
	{"--stack", "cfi"},
	{"--mode", "count"},
	{"--mode", "count", "--sample-bytes", "524288"},
	{"--sample-bytes", "524288"},
}

// udstraceName is a mode's row name.
func udstraceName(flags []string) string {
	if len(flags) == 0 {
		return "udstrace (default flags)"
	}
	return "udstrace " + strings.Join(flags, " ")
}

// countMode tells count-mode flags (one trap per call) from full mode (three).
func countMode(flags []string) bool {
	for i := 0; i+1 < len(flags); i++ {
		if flags[i] == "--mode" && flags[i+1] == "count" {
			return true
		}
	}
	return false
}
