// Command bench measures what tracing malloc/free costs: one allocbench (a
// tight malloc(64)/free loop) untraced, under an LD_PRELOAD counter, under
// bpftrace count-only uprobes, under the bench's own empty uprobes (the trap
// floors), under heaptrack and under udstrace in each of its modes; then a gcc
// compile under the same tools. Run it as root from the repository root:
// go run ./bench.
package main

import (
	"context"
	_ "embed"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/udstrace/udstrace/bench/floor"
	"github.com/udstrace/udstrace/pkg/loader"
)

//go:embed allocbench.c
var allocbenchSrc []byte

//go:embed timeit.c
var timeitSrc []byte

// config is the command line.
type config struct {
	pairs, pairsTraced, threads, repeat int
	markdown, allocators                bool
	compileLines                        int
	htmlSites                           int
	socketOnly                          bool
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == holdArg {
		hold(os.Args[2:]) // the floor rows' held child: never returns
	}
	var c config
	flag.IntVar(&c.pairs, "pairs", 2000000, "malloc/free pairs for the untraced and interposer rows")
	flag.IntVar(&c.pairsTraced, "pairs-traced", 200000, "malloc/free pairs for traced rows (a traced pair costs ~1-13 µs)")
	flag.IntVar(&c.threads, "threads", 1, "allocbench threads (the pairs are split between them)")
	flag.IntVar(&c.repeat, "repeat", 3, "runs per row; the table shows the median run")
	flag.BoolVar(&c.markdown, "markdown", false, "print the tables as Markdown")
	flag.BoolVar(&c.allocators, "allocators", true, "a row per allocator udstrace probes (glibc, jemalloc, tcmalloc, mimalloc preloaded): untraced and under udstrace")
	flag.IntVar(&c.compileLines, "compile-lines", 2000, "lines of the generated C file the compile rows build with gcc -O2 -c (0: no compile rows)")
	flag.IntVar(&c.htmlSites, "html-sites", 10000, "sites of the report whose HTML page the html row draws in headless Chromium (0: no html row)")
	flag.BoolVar(&c.socketOnly, "socket-only", false, "only the socket echo loop table (what --kernel costs)")
	udstrace := flag.String("udstrace", "./udstrace", "udstrace binary (make build)")
	udsFlags := flag.String("udstrace-flags", "", "extra flags for every udstrace run, space-separated (e.g. --no-cache)")
	allocount := flag.String("allocount", "workload/bin/allocount.so", "LD_PRELOAD counting interposer (make build)")
	libc := flag.String("libc", "/lib/x86_64-linux-gnu/libc.so.6", "libc the bpftrace and floor uprobes attach to")
	cc := flag.String("cc", "cc", "C compiler for allocbench")
	gcc := flag.String("gcc", "gcc", "the compiler the compile rows measure")
	timeout := flag.Duration("timeout", 2*time.Minute, "limit for each child process")
	quiet := flag.Duration("wait-quiet", 2*time.Minute, "before each run, wait up to this long for other tracers (their libc uprobes slow every process) to exit")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: `make bench` needs root (uprobes, BPF, tracefs): run it as root or with sudo")
		os.Exit(1)
	}
	if c.pairs < 1 || c.pairsTraced < 1 || c.threads < 1 || c.repeat < 1 || c.compileLines < 0 {
		fmt.Fprintln(os.Stderr, "bench: -pairs, -pairs-traced, -threads and -repeat must be ≥ 1, -compile-lines ≥ 0")
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q (flags only; see bench/README.md)\n", flag.Arg(0))
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	e := &env{threads: c.threads, libc: *libc, gcc: *gcc, timeout: *timeout, quiet: *quiet, udsFlags: strings.Fields(*udsFlags), supported: map[string]string{}}
	err := setup(ctx, e, *cc, *udstrace, *allocount)
	if err == nil && !c.socketOnly {
		err = bench(ctx, e, c)
	}
	if err == nil && !c.socketOnly {
		err = benchStartStop(ctx, e, c)
	}
	if err == nil && c.allocators && !c.socketOnly {
		err = benchAllocators(ctx, e, c)
	}
	if err == nil && c.compileLines > 0 && !c.socketOnly {
		err = benchCompile(ctx, e, c)
	}
	if err == nil && c.htmlSites > 0 && !c.socketOnly {
		err = benchHTML(ctx, e, c)
	}
	if err == nil {
		err = benchSocket(ctx, e, c)
	}
	if e.tmp != "" {
		os.RemoveAll(e.tmp)
	}
	if err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(os.Stderr, "bench: interrupted")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "bench:", oneLine(err.Error()))
		os.Exit(1)
	}
}

// setup resolves paths, compiles allocbench and timeit, finds udstrace's probe
// offsets in libc and makes sure tracefs is mounted.
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
	if e.self, err = os.Executable(); err != nil {
		return fmt.Errorf("finding the bench's own binary: %w", err)
	}
	if e.tmp, err = os.MkdirTemp("", "udstrace-bench-"); err != nil {
		return err
	}
	for _, prog := range []struct {
		name string
		dst  *string
		src  []byte
	}{{"allocbench", &e.bench, allocbenchSrc}, {"timeit", &e.timeit, timeitSrc}} {
		src := filepath.Join(e.tmp, prog.name+".c")
		if err := os.WriteFile(src, prog.src, 0o644); err != nil {
			return err
		}
		*prog.dst = filepath.Join(e.tmp, prog.name)
		if _, _, err := e.runChild(ctx, e.tmp, nil, cc, "-O2", "-pthread", "-o", *prog.dst, src); err != nil {
			return fmt.Errorf("compiling %s: %w", prog.name, err)
		}
	}
	if e.offsets, err = probeOffsets(e.libc); err != nil {
		return err
	}
	if _, err := os.Stat("/sys/kernel/tracing/events"); err != nil {
		if err := syscall.Mount("tracefs", "/sys/kernel/tracing", "tracefs", 0, ""); err != nil {
			return fmt.Errorf("mounting tracefs on /sys/kernel/tracing: %w", err)
		}
		fmt.Fprintln(os.Stderr, "bench: mounted tracefs on /sys/kernel/tracing")
	}
	return nil
}

// probeOffsets asks udstrace's loader where it probes malloc and free in libc.
func probeOffsets(libc string) (floor.Offsets, error) {
	var off floor.Offsets
	probes, err := loader.FindAllocator(libc)
	if err != nil {
		return off, fmt.Errorf("finding udstrace's probe offsets: %w", err)
	}
	var haveMalloc, haveFree bool
	for _, p := range probes {
		for _, n := range p.Names {
			switch n {
			case "malloc":
				off.Malloc, haveMalloc = p.Offset, true
			case "free":
				off.Free, haveFree = p.Offset, true
			}
		}
	}
	if !haveMalloc || !haveFree {
		return off, fmt.Errorf("udstrace's loader found no malloc or free probe in %s", libc)
	}
	return off, nil
}

func installed(tool string) string {
	if _, err := exec.LookPath(tool); err != nil {
		return "n/a (not installed)"
	}
	return ""
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// oneLine folds a message onto one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// lastLine is the last non-empty line of a child's output: usually its error.
func lastLine(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if r := []rune(l); len(r) > 200 {
		l = string(r[:199]) + "…"
	}
	return l
}
