package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/bench/floor"
)

// sample is one measured run of allocbench (or of the compile) under one tool.
type sample struct {
	ns        float64 // ns per malloc+free pair, timed inside allocbench
	wall      float64 // compile rows: seconds the compile took (timeit's stamps)
	benchCPU  float64 // allocbench's own user+system CPU seconds (getrusage SELF)
	tracerCPU float64 // the tracer's user+system CPU seconds; NaN: not applicable
	rssKiB    int64   // the tracer's peak RSS; -1: not applicable
	malloc    int64   // malloc calls the tool counted; -1: not applicable
	free      int64   // free calls the tool counted; -1: not applicable
	returns   int64   // malloc returns the three-trap floor counted; -1: not applicable
	null      int64   // free(NULL) calls (interposer only)
	lost      int64   // events the tool lost; -1: not applicable
	perEventB float64 // udstrace: ring bytes per traced call; NaN: not applicable
	perEventU float64 // udstrace: µs of its own CPU per traced call, start-up baseline subtracted; NaN
	exitLag   float64 // seconds from the traced command's end to the tracer's exit; NaN
	reportLag float64 // udstrace: seconds from the traced command's end to its report file's mtime; NaN
	cached    string  // udstrace: unwind table pages taken from its cache, of all pages; "" unknown
}

func newSample() sample {
	nan := math.NaN()
	return sample{wall: nan, tracerCPU: nan, rssKiB: -1, malloc: -1, free: -1, returns: -1, lost: -1,
		perEventB: nan, perEventU: nan, exitLag: nan, reportLag: nan}
}

// env holds what every runner needs.
type env struct {
	tmp       string // scratch directory, removed at exit
	self      string // this binary: the floor rows' held child
	bench     string // compiled allocbench
	timeit    string // compiled timeit (the compile rows' stamps)
	threads   int
	udstrace  string
	udsFlags  []string          // -udstrace-flags
	supported map[string]string // udstrace row name: "" or why it is n/a
	allocount string
	libc      string
	gcc       string
	offsets   floor.Offsets // udstrace's probe offsets in libc
	timeout   time.Duration
	quiet     time.Duration // -wait-quiet
}

var (
	benchLine = regexp.MustCompile(`ns_per_pair=([0-9.]+) pairs=(\d+) threads=\d+ cpu_s=([0-9.]+)`)
	doneLine  = regexp.MustCompile(`done_realtime=([0-9.]+)`)
)

// parseBench reads allocbench's result lines from a child's output; done is
// when allocbench finished (CLOCK_REALTIME seconds), 0 if it did not say.
func parseBench(out string, s *sample) (done float64, err error) {
	m := benchLine.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no allocbench result line in output: %s", lastLine(out))
	}
	s.ns, _ = strconv.ParseFloat(m[1], 64)
	s.benchCPU, _ = strconv.ParseFloat(m[3], 64)
	if d := doneLine.FindStringSubmatch(out); d != nil {
		done, _ = strconv.ParseFloat(d[1], 64)
	}
	return done, nil
}

// since is the seconds from a CLOCK_REALTIME stamp to t; NaN without a stamp.
func since(stamp float64, t time.Time) float64 {
	if stamp <= 0 {
		return math.NaN()
	}
	return float64(t.UnixNano())/1e9 - stamp
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

// child is a finished child process.
type child struct {
	out    string          // stdout and stderr together
	ru     *syscall.Rusage // covers the descendants it waited for
	exited time.Time       // when the bench saw it exit
}

// runChild runs argv to completion in its own process group, bounded by the
// timeout, and returns its combined output and rusage.
func (e *env) runChild(ctx context.Context, dir string, extraEnv []string, argv ...string) (string, *syscall.Rusage, error) {
	c, err := e.launch(ctx, launch{dir: dir, env: extraEnv}, argv...)
	return c.out, c.ru, err
}

// launch is how to start a child.
type launch struct {
	dir   string          // working directory; "" for the scratch directory
	env   []string        // added to the bench's environment
	files []*os.File      // the child's fds 3, 4, …
	ready func(int) error // if set, runs with the child's PID once it started; an error kills it
}

// start runs argv like runChild, in dir, and says when it exited.
func (e *env) start(ctx context.Context, dir string, argv ...string) (child, error) {
	return e.launch(ctx, launch{dir: dir}, argv...)
}

// startWith runs argv like runChild with extra fds and a ready hook.
func (e *env) startWith(ctx context.Context, files []*os.File, ready func(int) error, argv ...string) (child, error) {
	return e.launch(ctx, launch{files: files, ready: ready}, argv...)
}

func (e *env) launch(ctx context.Context, l launch, argv ...string) (child, error) {
	var c child
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	inGroup(cmd)
	cmd.Dir = l.dir
	if cmd.Dir == "" {
		cmd.Dir = e.tmp
	}
	cmd.Env = append(os.Environ(), l.env...)
	cmd.ExtraFiles = l.files
	// Output goes to a file, not a pipe: Wait then returns when the child
	// exits, not when the last holder of a pipe closes it.
	f, err := os.CreateTemp(e.tmp, "out-")
	if err != nil {
		return c, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	if err = cmd.Start(); err == nil {
		if l.ready != nil {
			if err = l.ready(cmd.Process.Pid); err != nil {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
				cmd.Wait()
				return c, err
			}
		}
		err = cmd.Wait()
	}
	c.exited = time.Now()
	data, _ := os.ReadFile(f.Name())
	c.out = string(data)
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", e.timeout)
	}
	if err != nil {
		return c, fmt.Errorf("%s: %w: %s", filepath.Base(argv[0]), err, lastLine(c.out))
	}
	if c.ru, _ = cmd.ProcessState.SysUsage().(*syscall.Rusage); c.ru == nil {
		return c, errors.New("no rusage")
	}
	return c, nil
}

func (e *env) runUntraced(ctx context.Context, pairs int) (sample, error) {
	s := newSample()
	out, _, err := e.runChild(ctx, e.tmp, nil, append([]string{e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	_, err = parseBench(out, &s)
	return s, err
}

// runInterposer runs allocbench under allocount.so and reads its counts.
func (e *env) runInterposer(ctx context.Context, pairs int) (sample, error) {
	return e.interposeWith(ctx, "", pairs)
}

func (e *env) allocountEnv(dir string) []string {
	return []string{"LD_PRELOAD=" + e.allocount, "ALLOCOUNT_DIR=" + dir}
}

// readAllocount sums the counts of every allocount.PID (and allocount.PID.exec:
// a process's calls before an execve) file in dir, by function: calls and NULL
// results (for free, NULL pointers). files is how many processes wrote counts.
func readAllocount(dir string) (map[string][2]int64, int, error) {
	paths, _ := filepath.Glob(filepath.Join(dir, "allocount.*"))
	sum := map[string][2]int64{}
	files := 0
	for _, p := range paths {
		if !strings.HasSuffix(p, ".exec") {
			files++
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, 0, err
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) != 4 || strings.HasPrefix(f[0], "#") {
				continue
			}
			calls, _ := strconv.ParseInt(f[1], 10, 64)
			null, _ := strconv.ParseInt(f[3], 10, 64)
			c := sum[f[0]]
			sum[f[0]] = [2]int64{c[0] + calls, c[1] + null}
		}
	}
	return sum, files, nil
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
	c, err := e.start(ctx, dir, append([]string{"heaptrack", e.bench}, e.args(pairs)...)...)
	if err != nil {
		return s, err
	}
	done, err := parseBench(c.out, &s)
	if err != nil {
		return s, err
	}
	s.tracerCPU, s.rssKiB, s.exitLag = math.Max(0, cpuSec(c.ru)-s.benchCPU), c.ru.Maxrss, since(done, c.exited)
	return s, nil
}
