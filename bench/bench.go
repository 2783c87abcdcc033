package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
)

// row is one line of a table: a tool (and mode) with its measured runs.
type row struct {
	name      string
	traced    bool   // runs -pairs-traced pairs instead of -pairs
	na        string // set when the row is not measured: "n/a (...)"
	err       error
	run       func(ctx context.Context, pairs int) (sample, error)
	samples   []sample
	yardstick bool // bpftrace's malloc+free row: the "overhead ÷ bpftrace's" denominator
	floor     int  // a trap floor row: 1 or 3 traps per pair
	vsFloor   int  // an udstrace row: the floor (1 or 3 traps) its overhead is compared with
	uds       bool // an udstrace row
}

// udstraceRows builds one row per udstrace mode; run makes a mode's runner.
func udstraceRows(ctx context.Context, e *env, traced bool, run func(flags []string) func(context.Context, int) (sample, error)) ([]*row, error) {
	var rows []*row
	for _, mode := range udstraceModes {
		r := &row{name: udstraceName(mode), traced: traced, uds: true, vsFloor: 3, run: run(mode)}
		if countMode(mode) {
			r.vsFloor = 1
		}
		na, ok := e.supported[r.name]
		if !ok {
			if na = e.udstraceSupported(ctx, mode); ctx.Err() != nil {
				return nil, ctx.Err()
			}
			e.supported[r.name] = na
		}
		r.na = na
		rows = append(rows, r)
	}
	return rows, nil
}

func bench(ctx context.Context, e *env, c config) error {
	rows := []*row{
		{name: "untraced", run: e.runUntraced},
		{name: "LD_PRELOAD allocount.so", run: e.runInterposer},
		{name: "bpftrace uprobes (count only)", traced: true, na: installed("bpftrace"), run: e.bpftraceRun("malloc", "free"), yardstick: true},
		{name: "bpftrace uprobe on malloc only", traced: true, na: installed("bpftrace"), run: e.bpftraceRun("malloc")},
		{name: "floor: 1 trap (empty uprobe, malloc entry)", traced: true, run: e.floorRun(false), floor: 1},
		{name: "floor: 3 traps (malloc entry+return, free+3)", traced: true, run: e.floorRun(true), floor: 3},
		{name: "heaptrack", traced: true, na: installed("heaptrack"), run: e.runHeaptrack},
	}
	uds, err := udstraceRows(ctx, e, true, func(mode []string) func(context.Context, int) (sample, error) {
		return func(ctx context.Context, n int) (sample, error) { return e.runUdstrace(ctx, mode, n) }
	})
	if err != nil {
		return err
	}
	rows = append(rows, uds...)

	// The interposer's counts for a traced-size run are the expected counts:
	// PAIRS pairs plus the program's few start-up and exit calls.
	ref, err := e.runInterposer(ctx, c.pairsTraced)
	if err != nil {
		return fmt.Errorf("reference interposer run: %w", err)
	}
	others := map[string]bool{}
	if err := measure(ctx, e, rows, c.repeat, others, func(r *row) int {
		if r.traced {
			return c.pairsTraced
		}
		return c.pairs
	}, func(s sample) string { return fmt.Sprintf("%10.1f ns/pair", s.ns) }); err != nil {
		return err
	}
	if rows[0].err != nil {
		return fmt.Errorf("untraced run failed: %w", rows[0].err)
	}
	printHeader(ctx, e, c, others)
	printTable(table(rows, ref, c), c.markdown)
	fmt.Println()
	floors := floorOvers(rows, ref)
	printFloorNotes(rows, floors, c.markdown)
	printGoals(rows, floors, c.markdown)
	printReportLag(rows, nsKey, c.markdown)
	printNotes(rows, c.markdown, func(s sample) float64 { return s.ns }, "%.1f–%.1f ns/pair")
	return nil
}

// measure runs every row repeat times, round-robin, so slow drift affects
// every row alike; a row that fails keeps its error and is not run again.
func measure(ctx context.Context, e *env, rows []*row, repeat int, others map[string]bool, size func(*row) int, show func(sample) string) error {
	for i := 1; i <= repeat; i++ {
		for _, r := range rows {
			if r.na != "" || r.err != nil {
				continue
			}
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			s, err := r.run(ctx, size(r))
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				r.err = err
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", r.name, oneLine(err.Error()))
				continue
			}
			otherTracers(others) // one started during the run?
			r.samples = append(r.samples, s)
			fmt.Fprintf(os.Stderr, "run %d/%d  %-46s %s\n", i, repeat, r.name, show(s))
		}
	}
	return nil
}

// median returns the run with the median key (the lower middle one when the
// count is even) and the most events any run lost.
func median(ss []sample, key func(sample) float64) (sample, int64) {
	sorted := append([]sample(nil), ss...)
	sort.Slice(sorted, func(i, j int) bool { return key(sorted[i]) < key(sorted[j]) })
	lost := int64(-1)
	for _, s := range ss {
		lost = max(lost, s.lost)
	}
	return sorted[(len(sorted)-1)/2], lost
}

func nsKey(s sample) float64 { return s.ns }

var columns = []string{"tool", "pairs", "ns/pair", "× untraced", "overhead ÷ bpftrace's", "overhead ÷ floor",
	"malloc seen/expected", "free seen/expected", "lost", "B/event", "tracer CPU µs/event",
	"tracer CPU s", "allocbench CPU s", "tracer peak RSS MiB", "exit→report s"}

// overheads returns each measured row's median overhead over untraced, in ns per pair.
func overheads(rows []*row) map[*row]float64 {
	base, _ := median(rows[0].samples, nsKey)
	out := map[*row]float64{}
	for _, r := range rows {
		if len(r.samples) > 0 {
			s, _ := median(r.samples, nsKey)
			out[r] = s.ns - base.ns
		}
	}
	return out
}

// floorOvers is the overhead of each trap floor (1 and 3) by its trap count.
// A floor that did not count exactly the expected calls measured something
// else (probes not firing, or firing elsewhere): it is left out (NaN).
func floorOvers(rows []*row, ref sample) map[int]float64 {
	over := overheads(rows)
	wantMalloc, wantFree := ref.malloc, ref.free // ref ran -pairs-traced pairs, like the floors
	out := map[int]float64{1: math.NaN(), 3: math.NaN()}
	for _, r := range rows {
		if r.floor == 0 || len(r.samples) == 0 {
			continue
		}
		s, _ := median(r.samples, nsKey)
		ok := s.malloc == wantMalloc
		if r.floor == 3 {
			ok = ok && s.returns == wantMalloc && s.free == wantFree
		}
		if ok {
			out[r.floor] = over[r]
		}
	}
	return out
}

func overRatio(v, by float64) string {
	if math.IsNaN(by) || by <= 0 {
		return "—"
	}
	return ratio(v / by)
}

func table(rows []*row, ref sample, c config) [][]string {
	base, _ := median(rows[0].samples, nsKey)
	over := overheads(rows)
	floors := floorOvers(rows, ref)
	bpfOver := math.NaN()
	for _, r := range rows {
		if v, ok := over[r]; ok && r.yardstick {
			bpfOver = v
		}
	}
	// Start-up and exit calls are the same at any PAIRS.
	startMalloc, startFree := ref.malloc-int64(c.pairsTraced), ref.free-int64(c.pairsTraced)
	out := [][]string{columns}
	for _, r := range rows {
		n := c.pairs
		if r.traced {
			n = c.pairsTraced
		}
		line := []string{r.name, fmt.Sprint(n)}
		if s, ok := unmeasured(r); ok {
			line = append(line, s)
		} else {
			s, lost := median(r.samples, nsKey)
			wantFree := startFree + int64(n) // free(NULL) included: udstrace counts it too
			vsBpf, vsFloor := "—", "—"
			if r != rows[0] {
				vsBpf = overRatio(over[r], bpfOver)
			}
			if r.vsFloor > 0 {
				vsFloor = overRatio(over[r], floors[r.vsFloor])
			}
			line = append(line, fmt.Sprintf("%.1f", s.ns), ratio(s.ns/base.ns), vsBpf, vsFloor,
				seen(s.malloc, startMalloc+int64(n)), seen(s.free, wantFree), count(lost),
				bytesPer(s.perEventB), signed(s.perEventU, "%.2f"),
				num(s.tracerCPU, "%.2f"), num(s.benchCPU, "%.2f"), num(float64(s.rssKiB)/1024, "%.1f"),
				signed(s.exitLag, "%.2f"))
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

// unmeasured is the cell text of a row without a measured run: n/a, or its error.
func unmeasured(r *row) (string, bool) {
	switch {
	case r.na != "":
		return r.na, true
	case len(r.samples) == 0:
		msg := []rune(oneLine(r.err.Error()))
		if len(msg) > 40 {
			msg = append(msg[:39], '…')
		}
		return "error: " + string(msg), true
	}
	return "", false
}

// printFloorNotes says what the three-trap floor's return probe counted: the
// table's malloc column is its entry probe.
func printFloorNotes(rows []*row, floors map[int]float64, markdown bool) {
	for _, r := range rows {
		if r.floor == 0 || len(r.samples) == 0 {
			continue
		}
		if r.floor == 3 {
			s, _ := median(r.samples, nsKey)
			note(markdown, fmt.Sprintf("%s: malloc return probe counted %d, entry probe %d", r.name, s.returns, s.malloc))
		}
		if math.IsNaN(floors[r.floor]) {
			note(markdown, fmt.Sprintf("%s: did not count the expected calls: no ratio to it is given", r.name))
		}
	}
}

// printGoals prints the design goals next to the measured figures: printed,
// never asserted.
func printGoals(rows []*row, floors map[int]float64, markdown bool) {
	over := overheads(rows)
	var lines []string
	for _, r := range rows {
		if !r.uds || len(r.samples) == 0 {
			continue
		}
		if r.name == udstraceName(nil) || r.name == udstraceName([]string{"--mode", "count"}) {
			v := overRatio(over[r], floors[r.vsFloor])
			lines = append(lines, fmt.Sprintf("%s ÷ %d-trap floor: %s (goal ≤ 1.3)", r.name, r.vsFloor, v))
		}
	}
	// The per-event goals are the default mode's; other rows over them are named.
	limit := func(what string, goal float64, unit string, val func(sample) float64, format string) {
		var def string
		var over []string
		for _, r := range rows {
			if !r.uds || len(r.samples) == 0 {
				continue
			}
			s, _ := median(r.samples, nsKey)
			v := val(s)
			if math.IsNaN(v) {
				continue
			}
			if r.name == udstraceName(nil) {
				def = fmt.Sprintf(format, v)
			} else if v > goal {
				over = append(over, fmt.Sprintf("%s "+format, shortName(r.name), v))
			}
		}
		if def == "" && len(over) == 0 {
			return
		}
		l := fmt.Sprintf("%s ≤ %g%s: %s %s", what, goal, unit, udstraceName(nil), cmpOr(def, "—"))
		if len(over) > 0 {
			l += "; other rows over it: " + strings.Join(over, ", ")
		}
		lines = append(lines, l)
	}
	limit("B/event", 64, "", func(s sample) float64 { return s.perEventB }, "%.1f")
	limit("tracer peak RSS", 128, " MiB", func(s sample) float64 {
		if s.rssKiB < 0 {
			return math.NaN()
		}
		return float64(s.rssKiB) / 1024
	}, "%.1f")
	limit("exit→report", 0.3, " s", func(s sample) float64 { return s.exitLag }, "%.2f")
	for _, l := range lines {
		note(markdown, "goal: "+l)
	}
}

// printNotes flags rows whose runs disagree a lot: the table's median hides it.
func printNotes(rows []*row, markdown bool, key func(sample) float64, format string) {
	first := true
	for _, r := range rows {
		if len(r.samples) < 2 {
			continue
		}
		lo, hi := math.Inf(1), math.Inf(-1)
		for _, s := range r.samples {
			lo, hi = math.Min(lo, key(s)), math.Max(hi, key(s))
		}
		if hi <= 1.5*lo {
			continue
		}
		if first {
			fmt.Println()
			first = false
		}
		note(markdown, fmt.Sprintf("%s: runs ranged "+format+" (other load on the machine?)", r.name, lo, hi))
	}
}

// shortName is an udstrace row's flags, or "default".
func shortName(name string) string {
	if name == udstraceName(nil) {
		return "default"
	}
	return strings.TrimPrefix(name, "udstrace ")
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// printReportLag splits udstrace's exit→report: when its report file was
// written (its mtime) and when the process was gone.
func printReportLag(rows []*row, key func(sample) float64, markdown bool) {
	var parts []string
	for _, r := range rows {
		if !r.uds || len(r.samples) == 0 {
			continue
		}
		s, _ := median(r.samples, key)
		if !math.IsNaN(s.reportLag) {
			parts = append(parts, fmt.Sprintf("%s %.2f s", shortName(r.name), s.reportLag))
		}
	}
	if len(parts) > 0 {
		note(markdown, "udstrace's report file was written (mtime) this long after the traced command's end, before exit→report: "+strings.Join(parts, ", "))
	}
}

// note prints one line under a table.
func note(markdown bool, text string) {
	prefix := "note: "
	if strings.HasPrefix(text, "goal: ") {
		prefix = ""
	}
	if markdown {
		prefix = "- " + prefix
	}
	fmt.Println(prefix + text)
}
