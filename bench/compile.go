package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// compile is the realistic row set's workload: gcc -O2 -c of one generated C
// file, run through timeit so the compile's own start and end are known.
type compile struct {
	e        *env
	dir      string
	src, obj string
	lines    int      // lines of the generated file
	comms    []string // the processes' names, from the reference interposer run
	expected int64    // malloc calls the reference interposer run counted
}

func (k *compile) argv(stamp string, gccArgs ...string) []string {
	return append([]string{k.e.timeit, stamp, k.e.gcc, "-O2", "-c", k.src, "-o", k.obj}, gccArgs...)
}

var stampLine = regexp.MustCompile(`start=([0-9.]+) end=([0-9.]+)`)

// stamps reads timeit's start and end (CLOCK_REALTIME seconds).
func stamps(path string) (start, end float64, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("timeit wrote no stamps: %w", err)
	}
	m := stampLine.FindStringSubmatch(string(data))
	if m == nil {
		return 0, 0, fmt.Errorf("timeit's stamps unreadable: %q", data)
	}
	start, _ = strconv.ParseFloat(m[1], 64)
	end, _ = strconv.ParseFloat(m[2], 64)
	return start, end, nil
}

// run runs the compile under a tool: do runs the timeit command line it is
// given, the tool around it. It returns the child and the compile's end stamp,
// with s.wall set.
func (k *compile) run(s *sample, do func(argv []string) (child, error), gccArgs ...string) (child, float64, error) {
	stamp := filepath.Join(k.dir, "stamp")
	os.Remove(stamp)
	os.Remove(k.obj)
	c, err := do(k.argv(stamp, gccArgs...))
	if err != nil {
		return c, 0, err
	}
	start, end, err := stamps(stamp)
	if err != nil {
		return c, 0, err
	}
	if _, err := os.Stat(k.obj); err != nil {
		return c, 0, fmt.Errorf("the compile wrote no object file: %w", err)
	}
	s.wall = end - start
	return c, end, nil
}

// plain runs argv as it is, with l's directory and environment.
func (k *compile) plain(ctx context.Context, l launch) func([]string) (child, error) {
	return func(argv []string) (child, error) { return k.e.launch(ctx, l, argv...) }
}

func (k *compile) untraced(ctx context.Context, _ int) (sample, error) {
	s := newSample()
	_, _, err := k.run(&s, k.plain(ctx, launch{}))
	return s, err
}

// interposer runs the compile under allocount.so; the first run also sets
// comms, the processes' names.
func (k *compile) interposer(ctx context.Context, _ int) (sample, error) {
	s := newSample()
	dir, err := os.MkdirTemp(k.e.tmp, "allocount-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	if _, _, err := k.run(&s, k.plain(ctx, launch{env: k.e.allocountEnv(dir)})); err != nil {
		return s, err
	}
	counts, _, err := readAllocount(dir)
	if err != nil {
		return s, err
	}
	s.malloc = counts["malloc"][0]
	if k.comms == nil {
		paths, _ := filepath.Glob(filepath.Join(dir, "allocount.*"))
		seen := map[string]bool{"timeit": true}
		for _, p := range paths {
			data, _ := os.ReadFile(p)
			if name, ok := strings.CutPrefix(firstLine(string(data)), "#comm "); ok {
				seen[name] = true
			}
		}
		for n := range seen {
			k.comms = append(k.comms, n)
		}
		sort.Strings(k.comms)
	}
	return s, nil
}

// bpftrace counts malloc and free of the compile's processes (by name).
func (k *compile) bpftrace(ctx context.Context, _ int) (sample, error) {
	s := newSample()
	var conds []string
	for _, n := range k.comms {
		conds = append(conds, fmt.Sprintf("comm == %q", n))
	}
	counts, ru, err := k.e.underBpftrace(ctx, []string{"malloc", "free"}, strings.Join(conds, " || "), func() error {
		_, _, err := k.run(&s, k.plain(ctx, launch{}))
		return err
	})
	if err != nil {
		return s, err
	}
	s.malloc, s.rssKiB = counts["malloc"], ru.Maxrss
	return s, nil
}

// heaptrack runs cc1 and as under heaptrack with gcc's -wrapper: heaptrack
// traces only the process it starts (its preload leaves the children alone),
// so `heaptrack timeit …` would trace timeit alone. The gcc driver itself
// (some 250 calls) is not traced, and each heaptrack finishes (writes its
// file, prints its summary) before gcc goes on, inside the compile's wall time.
func (k *compile) heaptrack(ctx context.Context, _ int) (sample, error) {
	s := newSample()
	dir, err := os.MkdirTemp(k.e.tmp, "heaptrack-")
	if err != nil {
		return s, err
	}
	defer os.RemoveAll(dir)
	_, _, err = k.run(&s, k.plain(ctx, launch{dir: dir}), "-wrapper", "heaptrack")
	return s, err
}

// udstrace traces the compile in one mode, after a `-- true` baseline run.
func (k *compile) udstrace(flags []string) func(context.Context, int) (sample, error) {
	return func(ctx context.Context, _ int) (sample, error) {
		s := newSample()
		base, err := k.e.udstraceBaseline(ctx, flags)
		if err != nil {
			return s, err
		}
		var r *udsReport
		c, end, err := k.run(&s, func(argv []string) (c child, err error) {
			c, r, err = k.e.udstraceRun(ctx, flags, argv...)
			return c, err
		})
		if err != nil {
			return s, err
		}
		s.malloc, _ = r.calls("malloc", nil) // every process: timeit, gcc, cc1, as
		events, _ := r.calls("", nil)
		r.fill(&s, base, events)
		s.exitLag, s.reportLag = since(end, c.exited), since(end, r.written)
		return s, nil
	}
}

func wallKey(s sample) float64 { return s.wall }

var compileColumns = []string{"tool", "wall s", "× untraced", "malloc seen/expected", "lost", "B/event",
	"tracer CPU µs/event", "tracer peak RSS MiB", "exit→report s", "unwind pages cached"}

// benchCompile measures the realistic row set: the compile untraced, under
// the interposer, bpftrace, heaptrack and each udstrace mode.
func benchCompile(ctx context.Context, e *env, c config) error {
	k := &compile{e: e}
	var err error
	if k.dir, err = os.MkdirTemp(e.tmp, "compile-"); err != nil {
		return err
	}
	k.src, k.obj = filepath.Join(k.dir, "unit.c"), filepath.Join(k.dir, "unit.o")
	src := compileSource(c.compileLines)
	k.lines = strings.Count(string(src), "\n")
	if err := os.WriteFile(k.src, src, 0o644); err != nil {
		return err
	}
	// Once untraced to warm the page cache (gcc, cc1, as, the headers), then
	// once under the interposer for the expected counts and process names.
	if _, err := k.untraced(ctx, 0); err != nil {
		return fmt.Errorf("compile (warm-up): %w", err)
	}
	ref, err := k.interposer(ctx, 0)
	if err != nil {
		return fmt.Errorf("compile (reference interposer run): %w", err)
	}
	k.expected = ref.malloc
	rows := []*row{
		{name: "untraced", run: k.untraced},
		{name: "LD_PRELOAD allocount.so", run: k.interposer},
		{name: "bpftrace uprobes (count only)", na: installed("bpftrace"), run: k.bpftrace},
		{name: "heaptrack", na: installed("heaptrack"), run: k.heaptrack},
	}
	uds, err := udstraceRows(ctx, e, false, k.udstrace)
	if err != nil {
		return err
	}
	rows = append(rows, uds...)
	others := map[string]bool{}
	if err := measure(ctx, e, rows, c.repeat, others, func(*row) int { return 0 },
		func(s sample) string { return fmt.Sprintf("%10.2f s compile", s.wall) }); err != nil {
		return err
	}
	if rows[0].err != nil {
		return fmt.Errorf("untraced compile failed: %w", rows[0].err)
	}
	gccVersion, _, _ := e.runChild(ctx, e.tmp, nil, e.gcc, "--version")
	fmt.Println()
	lines := []string{
		fmt.Sprintf("compile: %s -O2 -c of a generated %d-line C file (%s); processes: %s; median of %d runs",
			e.gcc, k.lines, strings.TrimSpace(firstLine(gccVersion)),
			strings.Join(k.comms, ", "), c.repeat),
		fmt.Sprintf("expected malloc calls (all processes, LD_PRELOAD allocount.so reference run): %d", k.expected),
	}
	printLines(lines, others, c.markdown)
	printTable(k.table(rows), c.markdown)
	fmt.Println()
	note(c.markdown, "udstrace rows: every run starts without unwind state of its own (cc1's tables are compiled cold), unless udstrace's unwind cache held them: \"unwind pages cached\" counts the pages it took from there")
	printReportLag(rows, wallKey, c.markdown)
	printNotes(rows, c.markdown, wallKey, "%.2f–%.2f s")
	return nil
}

func (k *compile) table(rows []*row) [][]string {
	base, _ := median(rows[0].samples, wallKey)
	out := [][]string{compileColumns}
	for _, r := range rows {
		line := []string{r.name}
		if s, ok := unmeasured(r); ok {
			line = append(line, s)
		} else {
			s, lost := median(r.samples, wallKey)
			cached := s.cached
			if cached == "" {
				cached = "—"
			}
			line = append(line, fmt.Sprintf("%.2f", s.wall), ratio(s.wall/base.wall), seen(s.malloc, k.expected),
				count(lost), bytesPer(s.perEventB), signed(s.perEventU, "%.2f"),
				num(float64(s.rssKiB)/1024, "%.1f"), signed(s.exitLag, "%.2f"), cached)
			if r.err != nil {
				line[0] += fmt.Sprintf(" (%d runs)", len(r.samples))
			}
		}
		for len(line) < len(compileColumns) {
			line = append(line, "—")
		}
		out = append(out, line)
	}
	return out
}
