package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sample is one measured run of allocbench under one tool.
type sample struct {
	ns        float64 // ns per malloc+free pair, timed inside allocbench
	benchCPU  float64 // allocbench's own user+system CPU seconds (getrusage SELF)
	tracerCPU float64 // the tracer's user+system CPU seconds; NaN: not applicable
	rssKiB    int64   // the tracer's peak RSS; -1: not applicable
	malloc    int64   // malloc calls the tool counted; -1: not applicable
	free      int64   // free calls the tool counted; -1: not applicable
	null      int64   // free(NULL) calls (interposer only)
	lost      int64   // events the tool lost; -1: not applicable
}

func newSample() sample {
	return sample{tracerCPU: math.NaN(), rssKiB: -1, malloc: -1, free: -1, lost: -1}
}

// env holds what every runner needs.
type env struct {
	tmp       string // scratch directory, removed at exit
	bench     string // compiled allocbench
	threads   int
	udstrace  string
	allocount string
	libc      string
	timeout   time.Duration
	quiet     time.Duration // -wait-quiet
}

var benchLine = regexp.MustCompile(`ns_per_pair=([0-9.]+) pairs=(\d+) threads=\d+ cpu_s=([0-9.]+)`)

// parseBench reads allocbench's result line from a child's output.
func parseBench(out string, s *sample) error {
	m := benchLine.FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("no allocbench result line in output:\n%s", tail(out, 800))
	}
	s.ns, _ = strconv.ParseFloat(m[1], 64)
	s.benchCPU, _ = strconv.ParseFloat(m[3], 64)
	return nil
}

func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func (e *env) args(pairs int) []string {
	return []string{strconv.Itoa(pairs), strconv.Itoa(e.threads)}
}

// cpuSec is a rusage's user+system time in seconds.
func cpuSec(ru *syscall.Rusage) float64 {
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// inGroup puts a command in its own process group; cancelling ctx (timeout or
// interrupt) SIGKILLs the whole group, so no tracer or traced child survives.
func inGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
}

// runChild runs argv to completion in its own process group, bounded by the
// timeout, and returns its combined output and rusage (which covers the
// descendants it waited for).
func (e *env) runChild(ctx context.Context, dir string, extraEnv []string, argv ...string) (string, *syscall.Rusage, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	inGroup(cmd)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), extraEnv...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", e.timeout)
	}
	if err != nil {
		return out.String(), nil, fmt.Errorf("%s: %w\n%s", filepath.Base(argv[0]), err, tail(out.String(), 800))
	}
	ru, _ := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if ru == nil {
		return out.String(), nil, errors.New("no rusage")
	}
	return out.String(), ru, nil
}

func (e *env) runUntraced(ctx context.Context, pairs int) (sample, error) {
	s := newSample()
	out, _, err := e.runChild(ctx, e.tmp, nil, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	return s, parseBench(out, &s)
}

// runInterposer runs allocbench under allocount.so and reads its counts.
func (e *env) runInterposer(ctx context.Context, pairs int) (sample, error) {
	s := newSample()
	dir, err := os.MkdirTemp(e.tmp, "allocount-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	out, _, err := e.runChild(ctx, e.tmp, []string{"LD_PRELOAD=" + e.allocount, "ALLOCOUNT_DIR=" + dir},
		append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	if err := parseBench(out, &s); err != nil {
		return s, err
	}
	files, _ := filepath.Glob(filepath.Join(dir, "allocount.*"))
	if len(files) != 1 {
		return s, fmt.Errorf("allocount: want 1 count file, found %d", len(files))
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		return s, err
	}
	s.malloc, s.free = 0, 0
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue
		}
		calls, _ := strconv.ParseInt(f[1], 10, 64)
		null, _ := strconv.ParseInt(f[3], 10, 64)
		switch f[0] {
		case "malloc":
			s.malloc = calls
		case "free":
			s.free, s.null = calls, null
		}
	}
	return s, nil
}

var bpftraceCount = regexp.MustCompile(`@\[uprobe:[^\]]*:(malloc|free)\]: (\d+)`)

// runBpftrace counts malloc and free with bpftrace uprobes while allocbench runs.
// bpftraceRun counts calls of funcs (e.g. "malloc,free") with bpftrace uprobes.
func (e *env) bpftraceRun(funcs ...string) func(context.Context, int) (sample, error) {
	return func(ctx context.Context, pairs int) (sample, error) { return e.runBpftrace(ctx, pairs, funcs) }
}

func (e *env) runBpftrace(ctx context.Context, pairs int, funcs []string) (sample, error) {
	s := newSample()
	// The uprobes are on libc itself, so they fire in every process on the
	// machine: the comm filter keeps other processes out of the counts.
	var probes []string
	for _, f := range funcs {
		probes = append(probes, fmt.Sprintf("uprobe:%s:%s", e.libc, f))
	}
	prog := fmt.Sprintf(`%s /comm == "allocbench"/ { @[probe] = count(); }`, strings.Join(probes, ","))
	cmd := exec.Command("bpftrace", "-e", prog)
	inGroup(cmd)
	cmd.Cancel = nil
	pr, pw, err := os.Pipe()
	if err != nil {
		return s, err
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return s, err
	}
	pw.Close()
	waited := make(chan error, 1)
	exited := false
	defer func() { // never leave bpftrace running
		if !exited {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-waited
		}
	}()

	attached := make(chan struct{})
	var out bytes.Buffer
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		seen := false
		for sc.Scan() {
			out.WriteString(sc.Text() + "\n")
			if !seen && strings.HasPrefix(sc.Text(), "Attaching ") {
				seen = true
				close(attached)
			}
		}
		io.Copy(io.Discard, pr)
		pr.Close()
	}()
	go func() { <-readDone; waited <- cmd.Wait() }()

	select {
	case <-attached:
	case err := <-waited:
		exited = true
		return s, fmt.Errorf("bpftrace exited before attaching: %v\n%s", err, tail(out.String(), 800))
	case <-time.After(e.timeout):
		return s, errors.New("bpftrace did not attach in time")
	case <-ctx.Done():
		return s, ctx.Err()
	}
	// "Attaching N probes..." is printed as attaching starts; give the two
	// uprobes a moment. The counts column shows any pair missed anyway.
	time.Sleep(500 * time.Millisecond)

	bout, _, err := e.runChild(ctx, e.tmp, nil, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	if err := parseBench(bout, &s); err != nil {
		return s, err
	}
	syscall.Kill(cmd.Process.Pid, syscall.SIGINT)
	select {
	case err = <-waited:
		exited = true
	case <-time.After(e.timeout):
		return s, errors.New("bpftrace did not exit after SIGINT")
	case <-ctx.Done():
		return s, ctx.Err()
	}
	if err != nil {
		return s, fmt.Errorf("bpftrace: %v\n%s", err, tail(out.String(), 800))
	}
	s.malloc, s.free = 0, 0
	if len(funcs) == 1 {
		s.free = -1 // not traced
	}
	for _, m := range bpftraceCount.FindAllStringSubmatch(out.String(), -1) {
		n, _ := strconv.ParseInt(m[2], 10, 64)
		if m[1] == "malloc" {
			s.malloc = n
		} else {
			s.free = n
		}
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		s.tracerCPU, s.rssKiB = cpuSec(ru), ru.Maxrss
	}
	return s, nil
}

// runHeaptrack runs allocbench under heaptrack (its output file goes to a
// scratch directory). The wrapper script waits for allocbench and its
// interpreter, so its rusage covers them; allocbench's own CPU is subtracted.
func (e *env) runHeaptrack(ctx context.Context, pairs int) (sample, error) {
	s := newSample()
	dir, err := os.MkdirTemp(e.tmp, "heaptrack-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	out, ru, err := e.runChild(ctx, dir, nil, append([]string{"heaptrack", e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	if err := parseBench(out, &s); err != nil {
		return s, err
	}
	s.tracerCPU, s.rssKiB = math.Max(0, cpuSec(ru)-s.benchCPU), ru.Maxrss
	return s, nil
}

// udsReport is the part of udstrace's JSON report the benchmark reads.
type udsReport struct {
	LostEvents int64 `json:"lost_events"`
	Processes  []struct {
		Comm  string                           `json:"comm"`
		Exe   string                           `json:"exe"`
		Calls map[string]struct{ Calls int64 } `json:"heap_calls_by_kind"`
	} `json:"processes"`
}

// udstraceSupported probes whether this udstrace accepts the mode flags: ""
// when it does, else the reason for an n/a row.
func (e *env) udstraceSupported(ctx context.Context, flags []string) string {
	// Never -o /dev/null: udstrace renames its report over the target.
	report := filepath.Join(e.tmp, "probe.json")
	defer os.Remove(report)
	argv := append(append([]string{e.udstrace, "run"}, flags...), "--format", "json", "-o", report, "--", "true")
	short := *e
	short.timeout = min(e.timeout, 30*time.Second)
	out, _, err := short.runChild(ctx, e.tmp, nil, argv...)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 &&
		(strings.Contains(out, "flag provided but not defined") || strings.Contains(out, "invalid value")) {
		return "n/a (unsupported)"
	}
	if err != nil { // not a verdict on the flags: the measured runs will tell
		fmt.Fprintf(os.Stderr, "bench: probing udstrace %s: %v\n", strings.Join(flags, " "), firstLine(err.Error()))
	}
	return ""
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// runUdstrace traces allocbench with udstrace and reads the JSON report.
func (e *env) runUdstrace(ctx context.Context, flags []string, pairs int) (sample, error) {
	s := newSample()
	report := filepath.Join(e.tmp, "udstrace.json")
	defer os.Remove(report)
	argv := append(append([]string{e.udstrace, "run"}, flags...), "--format", "json", "-o", report, "--", e.bench)
	out, ru, err := e.runChild(ctx, e.tmp, nil, append(argv, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	if err := parseBench(out, &s); err != nil {
		return s, err
	}
	// udstrace waits for allocbench, so its rusage includes allocbench's.
	s.tracerCPU, s.rssKiB = math.Max(0, cpuSec(ru)-s.benchCPU), ru.Maxrss
	data, err := os.ReadFile(report)
	if err != nil {
		return s, err
	}
	var r udsReport
	if err := json.Unmarshal(data, &r); err != nil {
		return s, fmt.Errorf("udstrace report: %w", err)
	}
	s.lost, s.malloc, s.free = r.LostEvents, 0, 0
	found := false
	for _, p := range r.Processes {
		if p.Exe == e.bench || p.Comm == "allocbench" {
			found = true
			s.malloc += p.Calls["malloc"].Calls
			s.free += p.Calls["free"].Calls
		}
	}
	if !found {
		return s, errors.New("udstrace report has no allocbench process")
	}
	return s, nil
}
