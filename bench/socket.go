package main

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The kernel half's cost (--kernel): a socket echo loop (sockloop: each message is two kernel
// allocations and two frees) untraced, traced without and with --kernel, and untraced while
// another process is traced with --kernel: the kmem tracepoints fire on every kernel allocation
// of the machine, so the last row is what --kernel costs everyone else.

//go:embed sockloop.c
var sockloopSrc []byte

const sockMessages = 200000

type sockRow struct {
	name string
	run  func(ctx context.Context) (float64, error)
	ns   []float64
	err  error
}

func parseSockloop(out string) (float64, error) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "ns_per_msg="); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("sockloop printed no ns_per_msg: %s", lastLine(out))
}

func benchSocket(ctx context.Context, e *env, c config) error {
	bin := filepath.Join(e.tmp, "sockloop")
	src := bin + ".c"
	if err := os.WriteFile(src, sockloopSrc, 0o644); err != nil {
		return err
	}
	if _, _, err := e.runChild(ctx, e.tmp, nil, "cc", "-O2", "-o", bin, src); err != nil {
		return fmt.Errorf("compiling sockloop: %w", err)
	}
	n := strconv.Itoa(sockMessages)
	plain := func(ctx context.Context) (float64, error) {
		out, _, err := e.runChild(ctx, e.tmp, nil, bin, n)
		if err != nil {
			return 0, err
		}
		return parseSockloop(out)
	}
	traced := func(flag string) func(ctx context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) {
			c, _, err := e.udstraceRun(ctx, []string{flag}, bin, n)
			if err != nil {
				return 0, err
			}
			return parseSockloop(c.out)
		}
	}
	bystander := func(flag string) func(ctx context.Context) (float64, error) {
		return func(ctx context.Context) (float64, error) { return e.besideTrace(ctx, flag, plain) }
	}
	rows := []*sockRow{
		{name: "untraced", run: plain},
		{name: "udstrace run --kernel=false", run: traced("--kernel=false")},
		{name: "udstrace run --kernel", run: traced("--kernel")},
		{name: "untraced, beside udstrace --kernel=false tracing another process", run: bystander("--kernel=false")},
		{name: "untraced, beside udstrace --kernel tracing another process", run: bystander("--kernel")},
	}
	others := map[string]bool{}
	for i := 0; i < c.repeat; i++ {
		for _, r := range rows {
			if r.err != nil {
				continue
			}
			if err := waitQuiet(ctx, *e, others); err != nil {
				return err
			}
			v, err := r.run(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.err = err
				continue
			}
			r.ns = append(r.ns, v)
		}
	}
	fmt.Printf("\nsocket echo loop: %d messages of 100 B over an AF_UNIX socketpair (2 kernel allocations and 2 frees each); median of %d runs\n\n", sockMessages, c.repeat)
	var base float64
	table := [][]string{{"run", "ns/message", "× untraced", "ns added per kernel allocation"}}
	for i, r := range rows {
		if r.err != nil {
			table = append(table, []string{r.name, "n/a (" + oneLine(r.err.Error()) + ")", "", ""})
			continue
		}
		sort.Float64s(r.ns)
		med := r.ns[len(r.ns)/2]
		if i == 0 {
			base = med
		}
		added := "—"
		switch i {
		case 2: // against the same trace without --kernel
			if rows[1].err == nil {
				added = fmt.Sprintf("%.0f", (med-rows[1].ns[len(rows[1].ns)/2])/2)
			}
		case 4: // against the bystander of a trace without --kernel
			if rows[3].err == nil {
				added = fmt.Sprintf("%.0f", (med-rows[3].ns[len(rows[3].ns)/2])/2)
			}
		}
		table = append(table, []string{r.name, fmt.Sprintf("%.0f", med), ratio(med / base), added})
	}
	printTable(table, c.markdown)
	return nil
}

// besideTrace runs measure while udstrace, with flag, traces a sleeping process: what a trace
// costs the processes it does not trace.
func (e *env) besideTrace(ctx context.Context, flag string, measure func(context.Context) (float64, error)) (float64, error) {
	cmd := exec.CommandContext(ctx, e.udstrace, "run", flag, "-o", filepath.Join(e.tmp, "beside.txt"), "--", "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		_ = cmd.Wait()
	}()
	time.Sleep(2 * time.Second) // loaded and attached (run -- true takes ~0.3 s here)
	return measure(ctx)
}
