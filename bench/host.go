package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

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

func printHeader(ctx context.Context, e *env, c config, others map[string]bool) {
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
			e.threads, c.pairs, c.pairsTraced, c.repeat),
		fmt.Sprintf("udstrace probes in %s: malloc at file offset %#x, free at %#x (floor rows use the same)", e.libc, e.offsets.Malloc, e.offsets.Free),
	}
	if len(e.udsFlags) > 0 {
		lines = append(lines, "extra udstrace flags: "+strings.Join(e.udsFlags, " "))
	}
	printLines(lines, others, c.markdown)
}

// printLines prints a table's header lines (as a Markdown list with -markdown), then the warning
// about other tracers seen during the runs, if any, then a blank line.
func printLines(lines []string, others map[string]bool, markdown bool) {
	if w := warning(others); w != "" {
		lines = append(lines, w)
	}
	for _, l := range lines {
		if markdown {
			l = "- " + l
		}
		fmt.Println(l)
	}
	fmt.Println()
}

// warning names the other tracers seen during the runs, "" if none.
func warning(others map[string]bool) string {
	if len(others) == 0 {
		return ""
	}
	list := make([]string, 0, len(others))
	for o := range others {
		list = append(list, o)
	}
	sort.Strings(list)
	return "WARNING: other tracers ran during the benchmark, the figures may be inflated: " + strings.Join(list, ", ")
}
