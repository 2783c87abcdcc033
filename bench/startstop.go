package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Start and stop costs: what a trace adds around the traced command itself, with a command that
// does nothing (`true`, through timeit so its own start and end are known). start: launching the
// tool until the command starts; stop: the command's end until the tool has exited (its report
// written). Goals (issue #14): `run -- true` ≤ 0.3 s in all, `run --workload echo` ≤ 0.5 s.

// startStop is one row: argv runs `timeit STAMP true` under a tool (stamp is timeit's file).
type startStop struct {
	name string
	na   string
	argv func(stamp, report string) []string
	goal float64 // seconds in all; 0: none
	// walls are the runs' start, stop and total seconds.
	walls [][3]float64
	err   error
}

func benchStartStop(ctx context.Context, e *env, c config) error {
	dir, err := os.MkdirTemp(e.tmp, "startstop-")
	if err != nil {
		return err
	}
	uds := func(flags ...string) func(stamp, report string) []string {
		return func(stamp, report string) []string {
			a := append(append(append([]string{e.udstrace, "run"}, flags...), e.udsFlags...), "--format", "json", "-o", report, "--")
			return append(a, e.timeit, stamp, "true")
		}
	}
	rows := []*startStop{
		{name: "untraced", argv: func(stamp, _ string) []string { return []string{e.timeit, stamp, "true"} }},
		{name: "udstrace run -- true", argv: uds(), goal: 0.3},
		{name: "udstrace run --mode count -- true", argv: uds("--mode", "count"), goal: 0.3},
		{name: "udstrace run --stack fp -- true", argv: uds("--stack", "fp")},
		{name: "bpftrace -c (uprobe on malloc, count)", na: installed("bpftrace"), argv: func(stamp, _ string) []string {
			return []string{"bpftrace", "-q", "-e", "uprobe:" + e.libc + ":malloc { @n = count(); }", "-c", e.timeit + " " + stamp + " true"}
		}},
		{name: "heaptrack", na: installed("heaptrack"), argv: func(stamp, report string) []string {
			return []string{"heaptrack", "-o", report, e.timeit, stamp, "true"}
		}},
	}
	echo := &startStop{name: "udstrace run --workload echo (in all)", goal: 0.5}
	others := map[string]bool{}
	repeat := max(c.repeat, 5) // cheap runs: more of them for a steadier median
	for i := 1; i <= repeat; i++ {
		for _, r := range rows {
			if r.na != "" || r.err != nil {
				continue
			}
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			stamp, report := filepath.Join(dir, "stamp"), filepath.Join(dir, "report")
			os.Remove(stamp)
			began := time.Now()
			ch, err := e.launch(ctx, launch{dir: dir}, r.argv(stamp, report)...)
			if err == nil {
				var start, end float64
				if start, end, err = stamps(stamp); err == nil {
					t0, t1 := float64(began.UnixNano())/1e9, float64(ch.exited.UnixNano())/1e9
					r.walls = append(r.walls, [3]float64{start - t0, t1 - end, t1 - t0})
				}
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err != nil {
				r.err = err
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", r.name, oneLine(err.Error()))
			}
		}
		if echo.err == nil {
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			began := time.Now()
			ch, err := e.launch(ctx, launch{dir: dir}, append(append([]string{e.udstrace, "run", "--workload", "echo"}, e.udsFlags...), "-o", filepath.Join(dir, "echo.txt"))...)
			if err != nil {
				echo.err = err
				fmt.Fprintf(os.Stderr, "bench: %s: %v\n", echo.name, oneLine(err.Error()))
			} else {
				echo.walls = append(echo.walls, [3]float64{-1, -1, ch.exited.Sub(began).Seconds()})
			}
		}
		fmt.Fprintf(os.Stderr, "run %d/%d  start/stop costs\n", i, repeat)
	}
	fmt.Printf("\nStart and stop costs (median of %d runs; the command is `true`; start: launch → command start, stop: command end → exit)\n\n", repeat)
	table := [][]string{{"tool", "start s", "stop s", "total s", "× untraced", "goal"}}
	var base float64
	for _, r := range append(rows, echo) {
		if r.na != "" || r.err != nil || len(r.walls) == 0 {
			why := r.na
			if why == "" {
				why = "failed"
			}
			table = append(table, []string{r.name, why, "", "", "", ""})
			continue
		}
		m := medianWall(r.walls)
		if r.name == "untraced" {
			base = m[2]
		}
		row := []string{r.name, secs(m[0]), secs(m[1]), secs(m[2]), "", ""}
		if base > 0 {
			row[4] = ratio(m[2] / base)
		}
		if r.goal > 0 {
			verdict := "met"
			if m[2] > r.goal {
				verdict = "NOT met"
			}
			row[5] = fmt.Sprintf("≤ %.1f s: %s", r.goal, verdict)
		}
		table = append(table, row)
	}
	printTable(table, c.markdown)
	if len(others) > 0 {
		fmt.Printf("- note: other tracers were running during some runs: %s\n", strings.Join(sortedKeys(others), ", "))
	}
	return nil
}

// medianWall is the run with the median total, its start and stop with it.
func medianWall(ws [][3]float64) [3]float64 {
	s := append([][3]float64(nil), ws...)
	sort.Slice(s, func(i, j int) bool { return s[i][2] < s[j][2] })
	return s[(len(s)-1)/2]
}

func secs(v float64) string {
	if v < 0 {
		return "—"
	}
	return fmt.Sprintf("%.3f", v)
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
