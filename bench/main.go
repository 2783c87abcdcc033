// Command bench measures what tracing malloc/free costs: one allocbench (a
// tight malloc(64)/free loop) untraced, under an LD_PRELOAD counter, under
// bpftrace count-only uprobes, under heaptrack and under udstrace in each of
// its modes. Run it as root from the repository root: go run ./bench.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

//go:embed allocbench.c
var allocbenchSrc []byte

// row is one line of the table: a tool (and mode) with its measured runs.
type row struct {
	name    string
	traced  bool   // runs -pairs-traced pairs instead of -pairs
	na      string // set when the row is not measured: "n/a (...)"
	err     error
	run     func(ctx context.Context, pairs int) (sample, error)
	samples []sample
}

func main() {
	pairs := flag.Int("pairs", 2000000, "malloc/free pairs for the untraced and interposer rows")
	pairsTraced := flag.Int("pairs-traced", 200000, "malloc/free pairs for traced rows (a traced pair costs ~1-13 µs)")
	threads := flag.Int("threads", 1, "allocbench threads (the pairs are split between them)")
	repeat := flag.Int("repeat", 3, "runs per row; the table shows the median run")
	markdown := flag.Bool("markdown", false, "print the table as Markdown")
	udstrace := flag.String("udstrace", "./udstrace", "udstrace binary (make build)")
	allocount := flag.String("allocount", "workload/bin/allocount.so", "LD_PRELOAD counting interposer (make build)")
	libc := flag.String("libc", "/lib/x86_64-linux-gnu/libc.so.6", "libc the bpftrace uprobes attach to")
	cc := flag.String("cc", "cc", "C compiler for allocbench")
	timeout := flag.Duration("timeout", 2*time.Minute, "limit for each child process")
	quiet := flag.Duration("wait-quiet", 2*time.Minute, "before each run, wait up to this long for other tracers (their libc uprobes slow every process) to exit")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: `make bench` needs root (uprobes, BPF, tracefs): run it as root or with sudo")
		os.Exit(1)
	}
	if *pairs < 1 || *pairsTraced < 1 || *threads < 1 || *repeat < 1 {
		fmt.Fprintln(os.Stderr, "bench: -pairs, -pairs-traced, -threads and -repeat must be ≥ 1")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{threads: *threads, libc: *libc, timeout: *timeout, quiet: *quiet}
	err := setup(ctx, e, *cc, *udstrace, *allocount)
	if e.tmp != "" {
		defer os.RemoveAll(e.tmp)
	}
	if err == nil {
		err = bench(ctx, e, *pairs, *pairsTraced, *repeat, *markdown)
	}
	if err != nil {
		os.RemoveAll(e.tmp)
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// setup resolves paths, compiles allocbench and makes sure tracefs is mounted.
func setup(ctx context.Context, e *env, cc, udstrace, allocount string) error {
	var err error
	for _, p := range []struct {
		dst *string
		src string
	}{{&e.udstrace, udstrace}, {&e.allocount, allocount}} {
		if *p.dst, err = filepath.Abs(p.src); err != nil {
			return err
		}
		if _, err := os.Stat(*p.dst); err != nil {
			return fmt.Errorf("%v (run make build from the repository root)", err)
		}
	}
	if e.tmp, err = os.MkdirTemp("", "udstrace-bench-"); err != nil {
		return err
	}
	src := filepath.Join(e.tmp, "allocbench.c")
	if err := os.WriteFile(src, allocbenchSrc, 0o644); err != nil {
		return err
	}
	e.bench = filepath.Join(e.tmp, "allocbench")
	if _, _, err := e.runChild(ctx, e.tmp, nil, cc, "-O2", "-pthread", "-o", e.bench, src); err != nil {
		return fmt.Errorf("compiling allocbench: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/tracing/events"); err != nil {
		if err := syscall.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
			return fmt.Errorf("mounting tracefs on /sys/kernel/tracing: %w", err)
		}
		fmt.Fprintln(os.Stderr, "bench: mounted tracefs on /sys/kernel/tracing")
	}
	return nil
}

func bench(ctx context.Context, e *env, pairs, pairsTraced, repeat int, markdown bool) error {
	installed := func(tool string) string {
		if _, err := exec.LookPath(tool); err != nil {
			return "n/a (not installed)"
		}
		return ""
	}
	rows := []*row{
		{name: "untraced", run: e.runUntraced},
		{name: "LD_PRELOAD allocount.so", run: e.runInterposer},
		{name: "bpftrace uprobes (count only)", traced: true, na: installed("bpftrace"), run: e.bpftraceRun("malloc", "free")},
		{name: "bpftrace uprobe on malloc only (one trap per pair: the floor)", traced: true, na: installed("bpftrace"), run: e.bpftraceRun("malloc")},
		{name: "heaptrack", traced: true, na: installed("heaptrack"), run: e.runHeaptrack},
	}
	for _, mode := range [][]string{{"--stack", "fp"}, {"--stack", "cfi"}, {"--mode", "count"}, {"--mode", "count", "--sample-bytes", "524288"}, {"--sample-bytes", "524288"}} {
		r := &row{name: "udstrace " + strings.Join(mode, " "), traced: true}
		r.run = func(ctx context.Context, n int) (sample, error) { return e.runUdstrace(ctx, mode, n) }
		if r.na = e.udstraceSupported(ctx, mode); ctx.Err() != nil {
			return ctx.Err()
		}
		rows = append(rows, r)
	}

	// The interposer's counts for a traced-size run are the expected counts:
	// PAIRS pairs plus the program's few start-up and exit calls.
	ref, err := e.runInterposer(ctx, pairsTraced)
	if err != nil {
		return fmt.Errorf("reference interposer run: %w", err)
	}
	others := map[string]bool{}
	for i := 1; i <= repeat; i++ {
		for _, r := range rows {
			if r.na != "" || r.err != nil {
				continue
			}
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			n := pairs
			if r.traced {
				n = pairsTraced
			}
			s, err := r.run(ctx, n)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				r.err = err
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", r.name, err)
				continue
			}
			otherTracers(others) // one started during the run?
			r.samples = append(r.samples, s)
			fmt.Fprintf(os.Stderr, "run %d/%d  %-30s %10.1f ns/pair\n", i, repeat, r.name, s.ns)
		}
	}
	if rows[0].err != nil {
		return fmt.Errorf("untraced run failed: %w", rows[0].err)
	}
	printHeader(ctx, e, pairs, pairsTraced, repeat, markdown, others)
	printTable(table(rows, ref, pairs, pairsTraced), markdown)
	printNotes(rows, markdown)
	return nil
}

// printNotes flags rows whose runs disagree a lot: the table's median hides it.
func printNotes(rows []*row, markdown bool) {
	first := true
	for _, r := range rows {
		if len(r.samples) < 2 {
			continue
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, s := range r.samples {
			lo, hi = math.Min(lo, s.ns), math.Max(hi, s.ns)
		}
		if hi <= 1.5*lo {
			continue
		}
		if first {
			fmt.Println()
			first = false
		}
		prefix := "note: "
		if markdown {
			prefix = "- note: "
		}
		fmt.Printf("%s%s: runs ranged %.1f–%.1f ns/pair (other load on the machine?)\n", prefix, r.name, lo, hi)
	}
}

// median returns the run with the median ns/pair (the lower middle one when
// the count is even) and the most events any run lost.
func median(ss []sample) (sample, int64) {
	sorted := append([]sample(nil), ss...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ns < sorted[j].ns })
	lost := int64(-1)
	for _, s := range ss {
		lost = max(lost, s.lost)
	}
	return sorted[(len(sorted)-1)/2], lost
}

var columns = []string{"tool", "pairs", "ns/pair", "× untraced", "overhead ÷ bpftrace's",
	"malloc seen/expected", "free seen/expected", "lost", "tracer CPU s", "allocbench CPU s", "tracer peak RSS MiB"}

func table(rows []*row, ref sample, pairs, pairsTraced int) [][]string {
	base, _ := median(rows[0].samples)
	bpfOver := math.NaN()
	if r := rows[2]; len(r.samples) > 0 {
		s, _ := median(r.samples)
		bpfOver = s.ns - base.ns
	}
	// Start-up and exit calls are the same at any PAIRS.
	startMalloc, startFree := ref.malloc-int64(pairsTraced), ref.free-int64(pairsTraced)
	out := [][]string{columns}
	for _, r := range rows {
		n := pairs
		if r.traced {
			n = pairsTraced
		}
		line := []string{r.name, fmt.Sprint(n)}
		switch {
		case r.na != "":
			line = append(line, r.na)
		case len(r.samples) == 0:
			msg := []rune(firstLine(r.err.Error()))
			if len(msg) > 40 {
				msg = append(msg[:39], '…')
			}
			line = append(line, "error: "+string(msg))
		default:
			s, lost := median(r.samples)
			wantFree := startFree + int64(n)
			if strings.HasPrefix(r.name, "udstrace") {
				wantFree -= ref.null // udstrace does not report free(NULL)
			}
			over := "—"
			if r != rows[0] && !math.IsNaN(bpfOver) && bpfOver > 0 {
				over = ratio((s.ns - base.ns) / bpfOver)
			}
			line = append(line, fmt.Sprintf("%.1f", s.ns), ratio(s.ns/base.ns), over,
				seen(s.malloc, startMalloc+int64(n)), seen(s.free, wantFree), count(lost),
				num(s.tracerCPU, "%.2f"), num(s.benchCPU, "%.2f"), num(float64(s.rssKiB)/1024, "%.1f"))
			if r.err != nil { // failed after some good runs
				line[0] += fmt.Sprintf(" (%d runs)", len(r.samples))
			}
		}
		for len(line) < len(columns) {
			line = append(line, "—")
		}
		out = append(out, line)
	}
	return out
}

func seen(got, want int64) string {
	if got < 0 {
		return "—"
	}
	return fmt.Sprintf("%d/%d", got, want)
}

// ratio prints two decimals, or two significant digits below 0.1.
func ratio(v float64) string {
	if math.Abs(v) < 0.1 {
		return fmt.Sprintf("%.2g", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func count(v int64) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprint(v)
}

// num formats v, or "—" when v is NaN or negative (not applicable).
func num(v float64, format string) string {
	if math.IsNaN(v) || v < 0 {
		return "—"
	}
	return fmt.Sprintf(format, v)
}

// otherTracers adds tracers someone else is running to seen: processes named
// like one, or holding a BPF program. Between our runs none of ours is alive,
// so any found is not ours. Their uprobes on libc can make every process's
// malloc trap, the untraced run's too.
func otherTracers(seen map[string]bool) {
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		comm, err := os.ReadFile(p + "/comm")
		c := strings.TrimSpace(string(comm))
		if err != nil || p == fmt.Sprintf("/proc/%d", os.Getpid()) {
			continue
		}
		found := strings.Contains(c, "udstrace") || strings.Contains(c, "bpftrace") || strings.Contains(c, "heaptrack")
		fds, _ := os.ReadDir(p + "/fd")
		for _, fd := range fds {
			if found {
				break
			}
			l, _ := os.Readlink(p + "/fd/" + fd.Name())
			found = strings.Contains(l, "bpf-prog") || strings.Contains(l, "bpf_link")
		}
		if found {
			seen[c+" (pid "+filepath.Base(p)+")"] = true
		}
	}
}

// waitQuiet waits up to e.quiet for other tracers to go away, then records
// any still running.
func waitQuiet(ctx context.Context, e env, others map[string]bool) error {
	deadline := time.Now().Add(e.quiet)
	for {
		now := map[string]bool{}
		otherTracers(now)
		if len(now) == 0 || time.Now().After(deadline) {
			maps.Copy(others, now)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func printHeader(ctx context.Context, e *env, pairs, pairsTraced, repeat int, markdown bool, others map[string]bool) {
	cpu := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	version := func(argv ...string) string {
		out, _, err := e.runChild(ctx, e.tmp, nil, argv...)
		if err != nil {
			return "not installed"
		}
		return strings.TrimSpace(firstLine(out))
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	lines := []string{
		"date: " + time.Now().Format("2006-01-02 15:04:05 MST"),
		"kernel: " + strings.TrimSpace(string(kernel)) + ", " + version("getconf", "GNU_LIBC_VERSION"),
		fmt.Sprintf("CPU: %s, %d cores", cpu, runtime.NumCPU()),
		"bpftrace: " + version("bpftrace", "--version") + ", heaptrack: " + version("heaptrack", "--version"),
		fmt.Sprintf("allocbench: malloc(64)+free pairs, %d thread(s), cc -O2; %d pairs untraced/interposer, %d traced; median of %d runs",
			e.threads, pairs, pairsTraced, repeat),
	}
	if len(others) > 0 {
		list := make([]string, 0, len(others))
		for o := range others {
			list = append(list, o)
		}
		sort.Strings(list)
		lines = append(lines, "WARNING: other tracers ran during the benchmark, the figures may be inflated: "+strings.Join(list, ", "))
	}
	for _, l := range lines {
		if markdown {
			l = "- " + l
		}
		fmt.Println(l)
	}
	fmt.Println()
}
